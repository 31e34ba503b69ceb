"""The wall clock stepped back: stored retry times brought back by as much (PostgreSQL).

As bridge/store/sqlite_clock.py. Each host has its own clock: the instance whose host stepped
shifts every instance's rows, so the others' retries come S early (sooner, never stuck). A
keyset on (next try, id) over the queued rows visits each row once, a chunk a transaction;
rows another instance holds locked (being claimed) are left as they are. A message accepted
while the shift runs keeps its time, as SQLite's rowid bound keeps it: the shift moves only
the rows whose `seq` (migration 33's sequence, drawn at the accept's insert) is at most the
sequence's value when the shift began, or NULL (stored before that migration). Text ids and
several hosts' clocks could not tell them: one accepted in the window of a shift's chunks
moved too, ahead of up to S of older sends (a strict xfail until session 46).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import asyncpg

from bridge.store.models import ClockShift
from bridge.store.postgres_tx import run_tx

CHUNK = 5_000

_PAGE = """
SELECT id, q_not_before FROM messages
WHERE q_state = 'queued' AND (q_not_before, id) > ($1, $2)
ORDER BY q_not_before, id LIMIT $3
FOR UPDATE SKIP LOCKED
"""
_SHIFT = """
UPDATE messages SET q_not_before = q_not_before - $1
WHERE id = ANY($2::text[]) AND q_state = 'queued'
AND (scheduled_at IS NULL OR q_not_before <> scheduled_at)
AND (seq IS NULL OR seq <= $3)
"""
# The last sequence number handed out (0: none yet): the messages accepted before the shift.
_BOUND = "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM messages_seq"
# The account-wide ends' marks (postgres_pending_ends), as sqlite_clock's: the sweep finishes an
# end nobody marked for RESUME_AFTER_MS, and one marked on the old clock waited S more. Only marks
# after the shift's `now` (a mark made after the step, by a live worker, stays).
_MARKS = "UPDATE pending_ends SET worked_at = worked_at - $1 WHERE worked_at > $2"
_WEBHOOKS = """
UPDATE webhook_outbox SET next_attempt_at = next_attempt_at - $1
WHERE state = 'pending' AND next_attempt_at > $2 AND NOT (id = ANY($3::bigint[]))
AND leased_by IS NULL
"""


async def shift_back(
    pool: asyncpg.Pool, shift: ClockShift, leased_webhooks: Collection[int]
) -> tuple[int, int]:
    """(messages, webhook reports) this call moved `shift.by_ms` earlier; `shift` records the
    progress as each chunk commits."""
    moved = 0
    if not shift.messages_done and shift.cursor is None and not shift.messages:
        # Read before the first chunk (again if that chunk failed: it moved nothing); a shift
        # handed back part-way keeps the bound it began with.
        shift.bound = int(await pool.fetchval(_BOUND))
    while not shift.messages_done:
        # ('', ...) from the lowest: every queued row, due or not, keeps its place in the order.
        after: tuple[int, Any] = shift.cursor or (-(2**63), "")

        async def page(c: asyncpg.Connection, after: tuple[int, Any] = after) -> tuple[int, Any]:
            if shift.cursor is None:  # the first page: the ends' marks move with it, once
                await c.execute(_MARKS, shift.by_ms, shift.now)
            rows = await c.fetch(_PAGE, after[0], after[1], CHUNK)
            if not rows:
                return 0, None
            done = await c.execute(_SHIFT, shift.by_ms, [r["id"] for r in rows], shift.bound)
            last = rows[-1]
            return int(done.split()[-1]), (
                (last["q_not_before"], last["id"]) if len(rows) == CHUNK else None
            )

        n, shift.cursor = await run_tx(pool, page, durable=False)
        moved += n
        shift.messages += n
        shift.messages_done = shift.cursor is None

    async def hooks(c: asyncpg.Connection) -> int:
        done = await c.execute(_WEBHOOKS, shift.by_ms, shift.now, sorted(set(leased_webhooks)))
        return int(done.split()[-1])

    if shift.webhooks_done:
        return moved, 0
    shift.webhooks = await run_tx(pool, hooks, durable=False)
    shift.webhooks_done = True
    return moved, shift.webhooks
