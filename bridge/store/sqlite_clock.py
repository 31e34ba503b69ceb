"""The wall clock stepped back: stored retry times brought back by as much (SQLite).

After a step back of S every time stored before it is S ahead of the new clock: messages
accepted just before (their next try is their acceptance), retries and parked routes waited S
more, while sends accepted after the step overtook them. So every queued message stored before
the shift began moves, due or not (moving only those due after now let the last S of a due
backlog overtake older ones); scheduled messages waiting for their time keep it (the customer
asked for that wall time), and so do messages accepted while the shift runs (rowid above the
highest at its start). Chunked, each chunk a write of its own, so the API writes in between; a
keyset on the queue index (account, next try, rowid) visits each row once, since a shifted row
moves below the cursor, and each page seeks the whole cursor (sqlite_pipeline.walk_account);
the position is kept in the ClockShift, so a shift tried again after a failure goes on from
there.

The chunked ends' marks (`pending_ends.worked_at`, sqlite_ends.py, and a senders change's walk,
`sender_walk.worked_at`, sqlite_senders.py) move too, in the shift's first
write: the sweep finishes an end nobody marked for RESUME_AFTER_MS, and one a stopped process
left, marked on the old clock, waited S more. Only marks after the shift's `now` move (only the
step makes a mark later than now; as for webhook retries): a mark made after the step, by a
process working its end, moved S earlier would make a live end look stopped. A process still
working an end it began before the step counts on from that clock; its next marks follow the
moved one (sqlite_ends._step), so it does not put the mark S ahead again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from functools import partial
from typing import Any

from bridge.store import sqlite_pipeline as pipe
from bridge.store import sqlite_senders
from bridge.store.models import ClockShift
from bridge.store.sqlite_chunked import CHUNKED
from bridge.store.sqlite_runner import SqliteRunner

CHUNK = 5_000
_START = (-(2**63), -(2**63))  # below every (q_not_before, rowid)

# The row is re-checked: claimed since the page was read, or a scheduled one, it stays.
# `+q_state`: without statistics SQLite took the queue index for `q_state='queued'` over the
# rowids and read every waiting row at each chunk.
_SHIFT = (
    "UPDATE messages SET q_not_before = q_not_before - ? WHERE rowid IN ({marks}) "
    "AND +q_state='queued' AND (scheduled_at IS NULL OR q_not_before <> scheduled_at)"
)
# Leased rows (a POST in flight: next_attempt_at is the lease) keep it, or the sender's result
# would no longer match its lease and the report went out twice.
_WEBHOOKS = (
    "UPDATE webhook_outbox SET next_attempt_at = next_attempt_at - ? "
    "WHERE state='pending' AND next_attempt_at > ? AND id NOT IN ({marks}) "
    "AND leased_by IS NULL"
)


_MARKS = tuple(
    f"UPDATE {table} SET worked_at = worked_at - ? WHERE worked_at > ?"
    for table in CHUNKED.values()  # sqlite_ends, sqlite_senders, sqlite_erase
)


# The accounts' rate buckets: a time ahead of now is taken as no time passed (bridge.domain.rate),
# so a drained bucket would refuse every send for the size of the step.
_BUCKETS = "UPDATE rate_buckets SET at = at - ? WHERE at > ?"


def _start(c: sqlite3.Connection, by_ms: int, now: int) -> tuple[int, list[str]]:
    for sql in _MARKS:
        c.execute(sql, (by_ms, now))
    c.execute(_BUCKETS, (by_ms / 1000, now / 1000))
    bound = c.execute("SELECT MAX(rowid) FROM messages").fetchone()[0] or 0
    return bound, [r[0] for r in c.execute("SELECT id FROM accounts ORDER BY id")]


def _page(
    c: sqlite3.Connection, account: str, after: tuple[int, int], by_ms: int, bound: int
) -> tuple[int, tuple[int, int] | None]:
    """One chunk of `account`'s queue: (rows moved, the cursor after it or None at the end)."""
    # The whole cursor sought (walk_account): scheduled rows keep their time, and a campaign
    # of them due at one moment was read again up to the cursor at each chunk.
    rows = pipe.walk_account(c, "rowid, q_not_before", account, after, CHUNK)
    ids = [r[0] for r in rows if r[0] <= bound]
    n = 0
    if ids:
        n = c.execute(_SHIFT.format(marks=",".join("?" * len(ids))), (by_ms, *ids)).rowcount
    if n:  # earlier in the queue index: a senders walk may have passed them
        sqlite_senders.moved(c)
    return n, (rows[-1][1], rows[-1][0]) if len(rows) == CHUNK else None


async def shift_back(
    runner: SqliteRunner, shift: ClockShift, leased_webhooks: Collection[int]
) -> tuple[int, int]:
    """(messages, webhook reports) this call moved `shift.by_ms` earlier; `shift` records the
    progress as each chunk is written."""
    moved = 0
    if not shift.messages_done:
        if shift.accounts is None:
            # A write: the ends' marks move with it, once (a failure rolls both back).
            job0 = partial(_start, by_ms=shift.by_ms, now=shift.now)
            shift.bound, accounts = await runner.write(job0, durable=False)
            shift.accounts = accounts
        while shift.accounts:
            after: Any = shift.cursor or _START
            job = partial(_page, account=shift.accounts[0], after=after, by_ms=shift.by_ms,
                          bound=shift.bound)  # fmt: skip
            n, shift.cursor = await runner.write(job, durable=False)
            moved += n
            shift.messages += n
            if shift.cursor is None:
                shift.accounts.pop(0)
        shift.messages_done = True
    hooks = 0
    if not shift.webhooks_done:
        leased = sorted(set(leased_webhooks))
        sql = _WEBHOOKS.format(marks=",".join("?" * len(leased)))
        hooks = await runner.write(
            lambda c: c.execute(sql, (shift.by_ms, shift.now, *leased)).rowcount,
            single=True,
            durable=False,
        )
        shift.webhooks_done = True
        shift.webhooks = hooks
    return moved, hooks
