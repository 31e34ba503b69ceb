"""Session 43's adversarial review of its PostgreSQL changes: each test here failed on the code
as it landed.

The planner statistics' ANALYZE (bridge/store/postgres_stats.py) waited for its table's lock. A
ShareUpdateExclusiveLock held elsewhere (an operator's VACUUM of a big table, CREATE INDEX
CONCURRENTLY, an autovacuum against wraparound, which does not yield) held the sweeper's step for
asyncpg's command timeout, 60 s, every round while it lasted: the lease renewals, expiry sweep,
reclaim and receipt timeouts of that instance ran once a minute instead of every 5 s."""

from __future__ import annotations

import asyncio

import asyncpg

from bridge.store.models import Account
from bridge.store.postgres import PostgresStore
from tests import pg_walks
from tests.integration.test_pg_young_stats import NOW, _live_rows, _store_messages

pg = pg_walks.pg


async def test_a_table_locked_elsewhere_is_skipped_not_waited_for(
    pg: PostgresStore, pg_dsn: str
) -> None:
    await pg.create_account(Account(id="acc", name="acc", created_at=NOW, updated_at=NOW))
    await _store_messages(pg_dsn, 0, 1_500)
    conn = await asyncpg.connect(pg_dsn)
    try:
        await _live_rows(conn, "segments", 1_500)
        async with conn.transaction():  # what a VACUUM of `segments` holds while it runs
            await conn.execute("LOCK TABLE segments IN SHARE UPDATE EXCLUSIVE MODE")
            done = await asyncio.wait_for(pg.refresh_stats(), 3.0)
            assert done == ["messages"]  # the other one is not held up
        assert await pg.refresh_stats() == ["segments"]  # the next round, once it is free
    finally:
        await conn.close()
