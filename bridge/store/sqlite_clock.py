"""The wall clock stepped back: stored retry times brought back by as much (SQLite).

After a step back of S every time stored before it is S ahead of the new clock: messages
accepted just before (their next try is their acceptance), retries and parked routes waited S
more, while sends accepted after the step overtook them. Scheduled messages waiting for their
time keep it: the customer asked for that wall time. Chunked, each chunk a write of its own, so
the API writes in between; a keyset on the queue index (account, next try, rowid) visits each
row once, since a shifted row moves below the cursor.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Collection
from functools import partial
from typing import Any

from bridge.store.sqlite_runner import SqliteRunner

CHUNK = 5_000

_PAGE = (
    "SELECT rowid, q_not_before FROM messages INDEXED BY messages_queue "
    "WHERE q_state='queued' AND account_id=? AND (q_not_before, rowid) > (?, ?) "
    "ORDER BY q_not_before, rowid LIMIT ?"
)
# The row is re-checked: claimed since the page was read, or a scheduled one, it stays.
_SHIFT = (
    "UPDATE messages SET q_not_before = q_not_before - ? WHERE rowid IN ({marks}) "
    "AND q_state='queued' AND (scheduled_at IS NULL OR q_not_before <> scheduled_at)"
)
# Leased rows (a POST in flight: next_attempt_at is the lease) keep it, or the sender's result
# would no longer match its lease and the report went out twice.
_WEBHOOKS = (
    "UPDATE webhook_outbox SET next_attempt_at = next_attempt_at - ? "
    "WHERE state='pending' AND next_attempt_at > ? AND id NOT IN ({marks})"
)


async def shift_back(
    runner: SqliteRunner, by_ms: int, now: int, leased_webhooks: Collection[int]
) -> tuple[int, int]:
    """(messages, webhook reports) whose next try moved `by_ms` earlier."""
    accounts = await runner.read(lambda c: [r[0] for r in c.execute("SELECT id FROM accounts")])
    moved = 0
    for account in accounts:
        cursor: tuple[int, int] | None = (now, 2**63 - 1)  # the rows due after now

        def page(c: sqlite3.Connection, after: tuple[int, int], account: str = account) -> Any:
            rows = c.execute(_PAGE, (account, *after, CHUNK)).fetchall()
            if not rows:
                return 0, None
            ids = [r[0] for r in rows]
            n = c.execute(_SHIFT.format(marks=",".join("?" * len(ids))), (by_ms, *ids)).rowcount
            return n, (rows[-1][1], rows[-1][0]) if len(rows) == CHUNK else None

        while cursor is not None:
            n, cursor = await runner.write(partial(page, after=cursor), durable=False)
            moved += n
    leased = sorted(set(leased_webhooks))
    sql = _WEBHOOKS.format(marks=",".join("?" * len(leased)))
    hooks = await runner.write(
        lambda c: c.execute(sql, (by_ms, now, *leased)).rowcount, single=True, durable=False
    )
    return moved, hooks
