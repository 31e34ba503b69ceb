"""Planner statistics of the busy tables while they are young (PostgreSQL).

Why: asyncpg prepares every statement, and after five runs PostgreSQL keeps one generic plan per
connection, costed from the table statistics of that moment. On a fresh database those say the
tables are nearly empty, so the batch statements that look messages and parts up by id
(`message_id = ANY($1)`) were planned as sequential scans, and kept so while the tables grew:
measured in `scripts/bench.py --store postgres` (10,000 messages), the roll-up's read of the
parts went from 2.6 ms at 1,500 stored parts to 10 ms at 10,000, a full scan per batch. Nothing
replans them until the statistics change, and autovacuum looks at a table at most once a minute
(`autovacuum_naptime`), then only after 10% of it changed: a new deployment's first burst, or a
benchmark, ran on those plans for a minute or more. An ANALYZE invalidates every session's cached
plans of the table.

So the owner's sweeper ANALYZEs a busy table once it holds at least MIN_ROWS rows and twice as
many as at its last analysis (or was never analysed). Growth, not churn: a table whose rows come
and go at the same pace keeps its plans. Doubling bounds the work: a table reaching 10,000,000
rows is analysed about 14 times in its life by this, each a sample of at most 30,000 rows; past
its first minutes autovacuum's own 10% rule comes first.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import NamedTuple

import asyncpg

from bridge.store.postgres_tx import run_tx

log = logging.getLogger("bridge.store")

# The tables that the send path's batch statements read by key, and that grow with the traffic.
BUSY_TABLES = ("messages", "segments", "webhook_outbox", "ledger")
MIN_ROWS = 1_000
NS_STATS = 0x5B1D0009  # transaction lock: one instance analyses at a time


class TableStats(NamedTuple):
    name: str
    live_rows: int  # the statistics collector's count now (n_live_tup)
    rows_at_analysis: float  # pg_class.reltuples: -1 before the first analysis
    may_analyze: bool  # this role owns the table (else ANALYZE skips it with a warning)


def stale_tables(stats: Iterable[TableStats], min_rows: int = MIN_ROWS) -> list[str]:
    """The tables to analyse now, by name order."""
    return sorted(
        t.name
        for t in stats
        if t.may_analyze and t.live_rows >= max(min_rows, 2 * t.rows_at_analysis)
    )


_STATS = """
SELECT s.relname, s.n_live_tup, c.reltuples,
       pg_has_role(current_user, c.relowner, 'USAGE')
FROM pg_stat_user_tables s JOIN pg_class c ON c.oid = s.relid
WHERE s.schemaname = current_schema() AND s.relname = ANY($1::text[])
"""


async def refresh(pool: asyncpg.Pool, min_rows: int = MIN_ROWS) -> list[str]:
    """ANALYZE the busy tables that need it; their names. Another instance doing it meanwhile
    (the lock is taken): nothing, it is done. A session the server ended on the way runs the
    read or the transaction again on another (StorePool, run_tx): ANALYZE twice is harmless."""
    rows = await pool.fetch(_STATS, list(BUSY_TABLES))
    due = stale_tables((TableStats(*r) for r in rows), min_rows)
    if not due:
        return []

    async def job(c: asyncpg.Connection) -> list[str]:
        if not await c.fetchval("SELECT pg_try_advisory_xact_lock($1, 0)", NS_STATS):
            return []
        # Read again under the lock: the instance that held it may have just done them.
        rows = await c.fetch(_STATS, due)
        done = [
            n for n in stale_tables((TableStats(*r) for r in rows), min_rows) if await _lock(c, n)
        ]
        for name in done:
            await c.execute(f'ANALYZE "{name}"')  # names from BUSY_TABLES only
        return done

    due = await run_tx(pool, job)
    if due:
        log.info("planner statistics refreshed for %s (they had doubled)", ", ".join(due))
    return due


async def _lock(c: asyncpg.Connection, name: str) -> bool:
    """ANALYZE's own lock on the table, if nobody holds a conflicting one: else the table waits
    for a later round. Waited for, a VACUUM or CREATE INDEX CONCURRENTLY of a big table (or an
    autovacuum against wraparound, which does not yield) held the sweeper's every step for the
    command timeout (60 s) each round. In a savepoint: a refusal aborts only that."""
    await c.execute("SAVEPOINT analyze_lock")
    try:
        await c.execute(f'LOCK TABLE "{name}" IN SHARE UPDATE EXCLUSIVE MODE NOWAIT')
    except asyncpg.LockNotAvailableError:
        await c.execute("ROLLBACK TO SAVEPOINT analyze_lock")
        return False
    await c.execute("RELEASE SAVEPOINT analyze_lock")
    return True
