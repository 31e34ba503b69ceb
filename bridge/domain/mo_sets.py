"""Which kept set a part of a long MO joins: pure, so both store engines place parts alike.

Parts are kept per (SMSC, source, destination, concatenation reference). A reference is one
octet with UDH 8-bit: a sender's counter comes round to it again, and some handsets and SMSCs
use one fixed reference for every long message. Two long messages from one number can then be
held under one reference at once (the first still missing a part, or their parts interleaved),
and overwriting a held part or filling a gap with the other message's part joined two replies
into one text. So each message is its own set, and a part only joins a set it fits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, TypeVar


class PartContent(Protocol):
    """A part's content: its octets and the national language tables its UDH named (the same
    septets under other tables are another text). What an MO's ids take of it too
    (bridge.pipeline.inbound.content)."""

    @property
    def payload(self) -> bytes: ...
    @property
    def locking(self) -> int: ...
    @property
    def single(self) -> int: ...


class HeldPart(PartContent, Protocol):
    """What placing a part reads of it (bridge.store.models.MoPart has these)."""

    @property
    def set_no(self) -> int: ...
    @property
    def total(self) -> int: ...
    @property
    def seq(self) -> int: ...
    @property
    def data_coding(self) -> int: ...
    @property
    def received_at(self) -> int: ...


def place_part(held: Sequence[HeldPart], part: HeldPart) -> int:
    """The set number `part` is kept under, among the `held` parts of its reference.

    - The very part again (same seq, total, coding, octets and national language tables: the
      SMSC resending it after a lost deliver_sm_resp): the set that holds it, kept once. The
      same septets under other tables are another text, not a resend.
    - Else a set of the same total and coding that lacks its seq, preferring one it continues
      (its highest seq is this seq - 1: a sender sends a message's parts in order, so part 3
      after part 2 of the first message, with a second one started meanwhile, is the first's),
      and among those the set that got a part most recently (a message's parts come together:
      an older set missing this seq is most likely a message whose part was lost).
    - Else a new set: a seq already held there is another message under the same reference,
      never an overwrite. An older set takes no part it already holds and, if nothing completes
      it, is delivered incomplete by the incomplete-MO rule when its time runs out.

    Order is the signal, so the caller places one sender's parts in the order they came. What
    stays ambiguous: two messages whose parts fully interleave, or a new message's part arriving
    when an older set lacks that seq and nothing else tells them apart (an older message that
    lost its first part takes the next message's first part). Such parts may still be mixed,
    never lost or overwritten; a set left incomplete is flagged so.
    """
    sets: dict[int, list[HeldPart]] = {}
    for p in held:
        sets.setdefault(p.set_no, []).append(p)
    for no, members in sets.items():
        if any(_same(p, part) for p in members):
            return no
    fits = [
        (no, members)
        for no, members in sets.items()
        if members[0].total == part.total
        and members[0].data_coding == part.data_coding
        and all(p.seq != part.seq for p in members)
    ]
    if not fits:
        return _free(sets)
    continued = [(no, m) for no, m in fits if max(p.seq for p in m) == part.seq - 1]
    return max(continued or fits, key=lambda f: (max(p.received_at for p in f[1]), f[0]))[0]


P = TypeVar("P", bound=HeldPart)


def completed(held: Sequence[P], placed: P) -> list[P] | None:
    """The whole message, in seq order, when `placed` (kept under its set number) completes its
    set among `held`; None while parts are missing."""
    members = [p for p in held if p.set_no == placed.set_no and p.seq != placed.seq]
    members = sorted([*members, placed], key=lambda p: p.seq)
    if [p.seq for p in members] != list(range(1, placed.total + 1)):
        return None
    return members


def _same(a: HeldPart, b: HeldPart) -> bool:
    return (a.seq, a.total, a.data_coding, bytes(a.payload), a.locking, a.single) == (
        b.seq,
        b.total,
        b.data_coding,
        bytes(b.payload),
        b.locking,
        b.single,
    )


def _free(sets: dict[int, list[HeldPart]]) -> int:
    """The lowest set number not in use (sets are dropped as they are delivered, so numbers
    stay small)."""
    no = 0
    while no in sets:
        no += 1
    return no
