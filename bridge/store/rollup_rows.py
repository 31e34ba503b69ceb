"""The roll-up's decision per message, shared by both engines: what a message row becomes from
its parts and the submit results just recorded, and what follows from it (status reports,
refunds, daily places given back). Only the SQL around it differs between the engines."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from bridge.domain import lifecycle as lc

# The message columns the roll-up reads, in this order, on both engines.
ROLLUP_COLS = (
    "id, state, account_id, q_state, segments_delivered, segments_failed, error_code, "
    "price_class, segments_sent, segments, q_claimed_by"
)

# The code of a message that has no part row at all (none written, or lost: a restore, a hand
# edit), ended unsent by the roll-up that finds it to be released: nothing can be sent. Claimed
# with nothing to send, it was released and claimed again, for ever.
NO_PARTS = lc.NO_PARTS


class Rolled(NamedTuple):
    """One message row's new values; None where a column keeps its value. `roll` gives each as
    a plain tuple in this order, its `update` lifecycle.row_values' tuple in RowUpdate's
    order (the engines take them apart once: a NamedTuple and a RowUpdate built for that were
    ~7.4 k instructions a roll-up, twice a message in the owner's write lock; session 55).
    `named` gives this view of one."""

    id: str
    smsc: str | None  # the SMSC that accepted parts now (no submit result: None)
    segments_sent: int | None
    route: str | None  # that SMSC, while the message is claimed by the results' instance
    update: lc.RowUpdate | None  # the roll-up proper (None: its parts changed nothing)


# What roll gives a row: Rolled's fields in order, the update as lifecycle.row_values' tuple.
RolledValues = tuple[str, str | None, int | None, str | None, lc.RowValues | None]


def named(r: RolledValues) -> Rolled:
    """`r` as a Rolled with a RowUpdate: for reading by field (tests, tools), not the hot path."""
    u = r[4]
    return Rolled(r[0], r[1], r[2], r[3], None if u is None else lc.RowUpdate(*u))


@dataclass
class Followups:
    finals: list[tuple[str, str]] = field(default_factory=list)  # (account, id): just final
    # (account, id, final state, price class, segments sent, segments): refunds to work out
    billed: list[tuple[str, str, str, str, int, int]] = field(default_factory=list)
    sent: list[tuple[str, str]] = field(default_factory=list)  # (account, id): just sent
    unsent: list[str] = field(default_factory=list)  # ended unsent: their daily places


def roll(
    ids: Iterable[str],
    rows: Mapping[str, Sequence[Any]],
    parts: Mapping[str, Sequence[tuple[str, str | None]]],
    many: set[str],
    touched: Mapping[str, bool],
    air: Mapping[str, tuple[str, int]],
    now: int,
    *,
    intermediate: bool = False,
    instance: str | None = None,
) -> tuple[list[RolledValues], Followups]:
    """The rows of `ids` that change (Rolled's fields, as tuples), and what follows.

    `rows`: each message's ROLLUP_COLS (the first, the id, is not read: SQLite gives the rowid
    there, by which its UPDATE finds the row again); `parts`: its parts' (state, error code) in
    seq order; `many`: the messages with a second part row (not one message_payload PDU);
    `touched`: the messages to roll up (id -> release the claim once nothing is left to send);
    `air`: the submit results' (SMSC, PDUs accepted now) per message (lifecycle.on_air), written
    with the roll-up so a submit rewrites its message's row once, not twice; `instance`: the one
    whose submit results those are (None: anyone's). Its SMSC becomes the claim's route
    (q_route) only while that instance holds the message: a late result of a claim whose lease
    ran out wrote it on the row of the instance that holds the message now, whose restart then
    decided its parts in flight by the old holder's SMSC's in_flight_on_restart.

    A message to release (`touched`) with no part row at all ends unsent (NO_PARTS).
    """
    out: list[RolledValues] = []
    row_values = lc.row_values
    f = Followups()
    for mid in ids:
        row = rows.get(mid)
        if row is None:
            continue
        (_id, old, account_id, q_state, old_delivered, old_failed, old_error, pclass, nsent, nseg,
         holder) = row  # fmt: skip
        rows_of = parts.get(mid)
        if not rows_of:
            if not touched.get(mid) or q_state == "done" or old in lc.MSG_FINAL:
                continue
            rows_of = [(lc.SEG_EXPIRED_UNSENT, NO_PARTS)]  # nothing to send: ended unsent
        smsc = route = new_sent = None
        if mid in air:
            smsc, pdus = air[mid]
            nsent = new_sent = lc.on_air(nsent, nseg, pdus, mid not in many)
            if q_state == "claimed" and (instance is None or holder == instance):
                route = smsc
        u = None
        if mid in touched:
            u = row_values(
                rows_of, old, q_state, old_delivered, old_failed, old_error, touched[mid], now,
                nseg,
            )  # fmt: skip
        if u is None and smsc is None:
            continue
        out.append((mid, smsc, new_sent, route, u))
        if u is None:
            continue
        if u[8]:  # became_final
            state = u[0]
            f.finals.append((account_id, mid))
            if pclass is not None:
                f.billed.append((account_id, mid, state, pclass, nsent, nseg))
            if state == lc.MSG_EXPIRED and not nsent:
                f.unsent.append(mid)
        elif u[7] and intermediate:  # became_sent
            f.sent.append((account_id, mid))
    return out, f
