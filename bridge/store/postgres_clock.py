"""The wall clock stepped back: stored retry times brought back by as much (PostgreSQL).

As bridge/store/sqlite_clock.py. Each host has its own clock: the instance whose host stepped
shifts every instance's rows, so the others' retries come S early (sooner, never stuck). A
keyset on (next try, id) over the queued rows visits each row once, a chunk a transaction;
rows another instance holds locked (being claimed) are left as they are.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import asyncpg

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
"""
_WEBHOOKS = """
UPDATE webhook_outbox SET next_attempt_at = next_attempt_at - $1
WHERE state = 'pending' AND next_attempt_at > $2 AND NOT (id = ANY($3::bigint[]))
"""


async def shift_back(
    pool: asyncpg.Pool, by_ms: int, now: int, leased_webhooks: Collection[int]
) -> tuple[int, int]:
    """(messages, webhook reports) whose next try moved `by_ms` earlier."""
    moved = 0
    # (now, NULL): a row due exactly now compares NULL, so only rows due after now.
    cursor: tuple[int, str | None] | None = (now, None)
    while cursor is not None:

        async def page(c: asyncpg.Connection, after: tuple[int, Any] = cursor) -> tuple[int, Any]:
            rows = await c.fetch(_PAGE, after[0], after[1], CHUNK)
            if not rows:
                return 0, None
            done = await c.execute(_SHIFT, by_ms, [r["id"] for r in rows])
            last = rows[-1]
            return int(done.split()[-1]), (
                (last["q_not_before"], last["id"]) if len(rows) == CHUNK else None
            )

        n, cursor = await run_tx(pool, page, durable=False)
        moved += n

    async def hooks(c: asyncpg.Connection) -> int:
        done = await c.execute(_WEBHOOKS, by_ms, now, sorted(set(leased_webhooks)))
        return int(done.split()[-1])

    return moved, await run_tx(pool, hooks, durable=False)
