"""The planner statistics of PostgreSQL's busy tables while they are young
(bridge/store/postgres_stats.py): a generic plan made while `segments` was nearly empty read every
part of every message for each batch of the roll-up, for as long as the connection lived."""

from __future__ import annotations

import asyncio
import time

import asyncpg

from bridge.store.models import AcceptBatch, Account
from bridge.store.postgres import PostgresStore
from bridge.store.postgres_arrays import literal_form
from bridge.store.postgres_stats import MIN_ROWS, NS_STATS
from tests import pg_walks
from tests.messages import one_part

pg = pg_walks.pg

NOW = 1_700_000_000_000
# The roll-up's read of a batch's parts (postgres_pipeline.rollup_messages).
PARTS_OF = (
    "SELECT message_id, state, error_code FROM segments WHERE message_id = ANY($1::text[]) "
    "ORDER BY message_id, seq"
)


async def _store_messages(dsn: str, first: int, n: int) -> None:
    """From a store of its own, closed after: a backend reports its counts as it ends, where an
    idle one may wait 10 s."""
    store = PostgresStore(dsn, min_size=1, max_size=1)
    await store.open()
    try:
        for at in range(first, first + n, 500):
            msgs = tuple(
                one_part(f"m{k:07d}", "acc", f"+86138{k:08d}", NOW)
                for k in range(at, min(first + n, at + 500))
            )
            out = await store.accept(AcceptBatch("acc", msgs, None, None), NOW)
            assert out.accepted, out
    finally:
        await store.close()


async def _live_rows(conn: asyncpg.Connection, table: str, at_least: int) -> None:
    """Wait for the statistics collector to count the rows (backends report within ~1 s)."""
    deadline = time.monotonic() + 20
    while True:
        n = await conn.fetchval(
            "SELECT n_live_tup FROM pg_stat_user_tables WHERE relname = $1 "
            "AND schemaname = current_schema()",
            table,
        )
        if n is not None and n >= at_least:
            return
        assert time.monotonic() < deadline, f"{table}: {n} rows counted, {at_least} stored"
        await asyncio.sleep(0.2)


async def _generic_plans(conn: asyncpg.Connection) -> list[str]:
    """The plans a connection keeps for the parts read once it stops planning each call: as
    written, and as the store sends it since session 57 (its list as an array literal in a text
    parameter, postgres_arrays.literal_form)."""
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    plans = []
    for name, sql, kind in (
        ("parts_of", PARTS_OF, "text[]"),
        ("parts_lit", literal_form(PARTS_OF)[0], "text"),
    ):
        await conn.execute(f"PREPARE {name}({kind}) AS {sql}")
        try:
            rows = await conn.fetch(f"EXPLAIN EXECUTE {name}('{{m0000001,m0000002}}')")
        finally:
            await conn.execute(f"DEALLOCATE {name}")
        plans.append("\n".join(r[0] for r in rows))
    return plans


async def test_a_young_table_is_analysed_once_it_doubles(pg: PostgresStore, pg_dsn: str) -> None:
    await pg.create_account(Account(id="acc", name="acc", created_at=NOW, updated_at=NOW))
    await _store_messages(pg_dsn, 0, 1_500)
    conn = await asyncpg.connect(pg_dsn, statement_cache_size=0)
    try:
        await _live_rows(conn, "segments", 1_500)
        for before in await _generic_plans(conn):
            assert "Seq Scan on segments" in before, before  # the defect's condition, as it was

        assert await pg.refresh_stats() == ["messages", "segments"]
        for after in await _generic_plans(conn):
            assert "Seq Scan" not in after and "Index" in after, after
        assert await pg.refresh_stats() == []  # not doubled since

        # Doubled again (1,500 -> 3,000): analysed again; below that, left alone.
        await _store_messages(pg_dsn, 1_500, 1_400)
        await _live_rows(conn, "segments", 2_900)
        assert await pg.refresh_stats() == []
        await _store_messages(pg_dsn, 2_900, 100)
        await _live_rows(conn, "segments", 3_000)
        assert await pg.refresh_stats() == ["messages", "segments"]
        analysed = await conn.fetchval(
            "SELECT reltuples FROM pg_class WHERE relname = 'segments' "
            "AND relnamespace = current_schema()::regnamespace"
        )
        assert analysed == 3_000
    finally:
        await conn.close()


async def test_another_instance_analysing_meanwhile_is_left_to_it(
    pg: PostgresStore, pg_dsn: str
) -> None:
    await pg.create_account(Account(id="acc", name="acc", created_at=NOW, updated_at=NOW))
    await _store_messages(pg_dsn, 0, MIN_ROWS)
    conn = await asyncpg.connect(pg_dsn)
    try:
        await _live_rows(conn, "segments", MIN_ROWS)
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1, 0)", NS_STATS)
            assert await pg.refresh_stats() == []  # the lock is taken: not waited for
        assert await pg.refresh_stats() == ["messages", "segments"]
    finally:
        await conn.close()
