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
    grouped: dict[tuple[Any, ...], list[Any]] | None = None,
) -> tuple[list[RolledValues], Followups]:
    """The rows of `ids` that change (Rolled's fields, as tuples), and what follows.

    `grouped`, when given, takes the rows that change in place of that list (which is then
    empty): each distinct (SMSC, segments sent, route, the update's first seven fields: what
    the row's UPDATE writes) -> the first values (`rows`' first column) of the rows taking it,
    in `ids`' order: the SQLite roll-up writes each group by one statement (session 58: the
    pass that built those groups from the list was a key a row).

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
    # What a row with the same values before (those _roll_one reads), parts, results and
    # roll-up flags became: (SMSC, segments sent, route, update, segments sent after). A
    # batch's rows mostly share them all (its one-part messages sent through one SMSC, or
    # delivered), and the values depend on nothing else (`now`, `instance` and `intermediate`
    # are the call's): worked out once, not once a row (session 58).
    seen: dict[tuple[Any, ...], tuple[Any, ...]] = {}
    for mid in ids:
        row = rows.get(mid)
        if row is None:
            continue
        (_id, old, account_id, q_state, old_delivered, old_failed, old_error, pclass, nsent, nseg,
         holder) = row  # fmt: skip
        rows_of = parts.get(mid)
        on_air = air.get(mid)  # (SMSC, PDUs): never None in `air`
        release_when = touched.get(mid)  # None: not to roll up
        key: tuple[Any, ...] | None = None
        got = None
        # Counts the roll-up writes back (segments sent, and the delivered and failed counts
        # it scales by the segments) shared only as ints: 1 and 1.0 (a REAL written by hand)
        # are one key, not one value written.
        if type(nsent) is int and type(nseg) is int:
            try:
                key = (
                    old, q_state, old_delivered, old_failed, old_error, nsent, nseg, holder,
                    on_air, release_when, mid in many, *(rows_of or ()),
                )  # fmt: skip
                got = seen.get(key)
            except TypeError:  # a value that does not hash (a part given as a list): not kept
                key = None
        if got is None:
            got = _roll_one(
                row, rows_of, on_air, release_when, mid in many, now, instance, row_values
            )
            if grouped is not None and (got[0] is not None or got[3] is not None):
                smsc, new_sent, route, u, nsent = got
                values = (smsc, new_sent, route, None if u is None else u[:7])
                if (group := grouped.get(values)) is None:
                    group = grouped[values] = []
                got = (*got, group)
            if key is not None:
                seen[key] = got
        smsc, new_sent, route, u, nsent = got[:5]
        if u is None and smsc is None:
            continue
        if grouped is None:
            out.append((mid, smsc, new_sent, route, u))
        else:
            got[5].append(row[0])
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


def _roll_one(
    row: Sequence[Any],
    rows_of: Sequence[tuple[str, str | None]] | None,
    on_air: tuple[str, int] | None,
    release_when: bool | None,
    one_of_many: bool,
    now: int,
    instance: str | None,
    row_values: Any,
) -> tuple[Any, ...]:
    """One row's roll (roll): (SMSC, segments sent written, route, update, segments sent after);
    the SMSC and the update None (nothing to write) for a row that keeps its values."""
    (_id, old, _account, q_state, old_delivered, old_failed, old_error, _pclass, nsent, nseg,
     holder) = row  # fmt: skip
    if not rows_of:
        if not release_when or q_state == "done" or old in lc.MSG_FINAL:
            return (None, None, None, None, nsent)
        rows_of = [(lc.SEG_EXPIRED_UNSENT, NO_PARTS)]  # nothing to send: ended unsent
    smsc = route = new_sent = None
    if on_air is not None:
        smsc, pdus = on_air
        nsent = new_sent = lc.on_air(nsent, nseg, pdus, not one_of_many)
        if q_state == "claimed" and (instance is None or holder == instance):
            route = smsc
    u = None
    if release_when is not None:
        u = row_values(
            rows_of, old, q_state, old_delivered, old_failed, old_error, release_when, now, nseg
        )
    return (smsc, new_sent, route, u, nsent)
