"""The PostgreSQL engine's side of retention (bridge/retention.py decides the cut-offs)."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import asyncpg

from bridge.domain.lifecycle import MSG_FINAL
from bridge.ids import id_floor, id_time_ms
from bridge.store.base import PURGE_CHUNK, RETENTION_CHUNK
from bridge.store.postgres_tx import run_tx
from bridge.store.purge import purge, window_bounds

# Finished messages in id order (ids sort by acceptance time: a primary-key range scan), after
# the previous chunk's last id. Rows another instance holds are skipped, never waited for.
_FINISHED = (
    "SELECT id FROM messages WHERE id > $1 AND id < $2 AND accepted_at <= $3 "
    "AND done_at <= $6 AND q_state = 'done' AND state = ANY($4::text[]) "
    "ORDER BY id LIMIT $5 FOR UPDATE SKIP LOCKED"
)
# One account's finished messages accepted in [$2, $3), by its (account_id, accepted_at) index:
# the purge around the months other accounts have no bill for (purge.purge's `window`).
_WINDOW = (
    "SELECT id FROM messages WHERE account_id = $1 AND accepted_at >= $2 AND accepted_at < $3 "
    "AND done_at <= $4 AND q_state = 'done' AND state = ANY($5::text[]) "
    "LIMIT $6 FOR UPDATE SKIP LOCKED"
)
_PURGE_MO = (
    "DELETE FROM mo_inbox WHERE id IN (SELECT id FROM mo_inbox WHERE received_at <= $1 "
    "LIMIT $2 FOR UPDATE SKIP LOCKED) RETURNING id"
)
# A dead letter goes with what it reports on: replayed after, it would be booked delivered
# with nothing sent (the sender finds no message to render).
_DEAD_OF = "DELETE FROM webhook_outbox WHERE state = 'dead' AND ref_id = ANY($1::text[])"
# A dead letter's next_attempt_at is when it was given up (the webhook_dead_age index).
_PURGE_DEAD_WEBHOOKS = (
    "DELETE FROM webhook_outbox WHERE id IN (SELECT id FROM webhook_outbox "
    "WHERE state = 'dead' AND next_attempt_at <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"
)
_FINAL = sorted(MSG_FINAL)


async def _purge_messages(
    after: str, below: str, cutoff: int, done_by: int, c: asyncpg.Connection
) -> tuple[list[str], int]:
    args = (after, below, cutoff, _FINAL, RETENTION_CHUNK, done_by)
    return await _delete_messages([r[0] for r in await c.fetch(_FINISHED, *args)], c)


async def _purge_window(
    lo: int, bounds: dict[str, int], done_by: int, account: str, c: asyncpg.Connection
) -> tuple[list[str], int]:
    args = (account, lo, bounds[account], done_by, _FINAL, RETENTION_CHUNK)
    return await _delete_messages([r[0] for r in await c.fetch(_WINDOW, *args)], c)


async def _delete_messages(ids: list[str], c: asyncpg.Connection) -> tuple[list[str], int]:
    if not ids:
        return [], 0
    await c.execute("DELETE FROM segments WHERE message_id = ANY($1::text[])", ids)
    await c.execute("DELETE FROM messages WHERE id = ANY($1::text[])", ids)
    return ids, await _count(_DEAD_OF, (ids,), c)


async def _purge_mo(before: int, c: asyncpg.Connection) -> tuple[int, int]:
    ids = [r[0] for r in await c.fetch(_PURGE_MO, before, PURGE_CHUNK)]
    return len(ids), (await _count(_DEAD_OF, (ids,), c) if ids else 0)


async def _count(sql: str, args: tuple[Any, ...], c: asyncpg.Connection) -> int:
    status = await c.execute(sql, *args)  # "DELETE n"
    return int(status.split()[-1])


class RetentionMixin:
    """A transaction per chunk: no long-held locks, each chunk done once it commits."""

    pool: asyncpg.Pool

    async def oldest_message_at(self) -> int | None:
        first = await self.pool.fetchval("SELECT MIN(id) FROM messages")
        return None if first is None else id_time_ms(first, "msg_")

    async def unbilled_accounts(self, month: str, end: int) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT a.id FROM accounts a WHERE a.created_at < $1 AND NOT EXISTS "
            "(SELECT 1 FROM bills b WHERE b.account_id = a.id AND b.month = $2) ORDER BY a.id",
            end,
            month,
        )
        return [r[0] for r in rows]

    async def purge_history(
        self,
        messages_before: int,
        before: int,
        day: str,
        held: Mapping[str, int] | None = None,
    ) -> dict[str, int]:
        pool = self.pool
        below = id_floor("msg_", messages_before)
        bounds: dict[str, int] = {}
        if held:
            accounts = [r[0] for r in await pool.fetch("SELECT id FROM accounts ORDER BY id")]
            bounds = window_bounds(accounts, held, messages_before, before)
        return await purge(
            lambda after: run_tx(
                pool,
                partial(_purge_messages, after, below, messages_before, before),
                durable=False,
            ),
            lambda: run_tx(pool, partial(_purge_mo, before), durable=False),
            lambda: run_tx(
                pool, partial(_count, _PURGE_DEAD_WEBHOOKS, (before, PURGE_CHUNK)), durable=False
            ),
            lambda: run_tx(
                pool,
                partial(_count, "DELETE FROM daily_counts WHERE day < $1", (day,)),
                durable=False,
            ),
            message_chunk=RETENTION_CHUNK,
            chunk=PURGE_CHUNK,
            window=lambda account: run_tx(
                pool,
                partial(_purge_window, messages_before, bounds, before, account),
                durable=False,
            ),
            accounts=list(bounds),
        )
