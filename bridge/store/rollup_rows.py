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
    """One message row's new values; None where a column keeps its value."""

    id: str
    smsc: str | None  # the SMSC that accepted parts now (no submit result: None)
    segments_sent: int | None
    route: str | None  # that SMSC, while the message is claimed by the results' instance
    update: lc.RowUpdate | None  # the roll-up proper (None: its parts changed nothing)


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
) -> tuple[list[Rolled], Followups]:
    """The rows of `ids` that change, and what follows.

    `rows`: each message's ROLLUP_COLS; `parts`: its parts' (state, error code) in seq order;
    `many`: the messages with a second part row (not one message_payload PDU); `touched`: the
    messages to roll up (id -> release the claim once nothing is left to send); `air`: the
    submit results' (SMSC, PDUs accepted now) per message (lifecycle.on_air), written with the
    roll-up so a submit rewrites its message's row once, not twice; `instance`: the one whose
    submit results those are (None: anyone's). Its SMSC becomes the claim's route (q_route) only
    while that instance holds the message: a late result of a claim whose lease ran out wrote
    it on the row of the instance that holds the message now, whose restart then decided its
    parts in flight by the old holder's SMSC's in_flight_on_restart.

    A message to release (`touched`) with no part row at all ends unsent (NO_PARTS).
    """
    out: list[Rolled] = []
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
            u = lc.row_update(
                rows_of,
                old_state=old,
                q_state=q_state,
                old_delivered=old_delivered,
                old_failed=old_failed,
                old_error=old_error,
                release_when_dispatched=touched[mid],
                now=now,
                segments=nseg,
            )
        if u is None and smsc is None:
            continue
        out.append(Rolled(mid, smsc, new_sent, route, u))
        if u is None:
            continue
        if u.became_final:
            f.finals.append((account_id, mid))
            if pclass is not None:
                f.billed.append((account_id, mid, u.state, pclass, nsent, nseg))
            if u.state == lc.MSG_EXPIRED and not nsent:
                f.unsent.append(mid)
        elif u.became_sent and intermediate:
            f.sent.append((account_id, mid))
    return out, f
