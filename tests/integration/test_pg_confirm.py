"""Submit results on PostgreSQL are committed without the WAL flush and held until a flush
confirms them (bridge/store/postgres_confirm.py). A crash of the server is in
test_session16_review3.py (test_a_crash_loses_no_acknowledged_submit_result); here the parts:
what a flush covers, a failed flush, close."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from bridge.store.models import AcceptBatch, SubmitResult
from bridge.store.postgres import PostgresStore
from bridge.store.postgres_confirm import Confirmer
from bridge.store.postgres_tx import run_tx
from tests.integration.test_store_multi import LEASE, NOW, account, message


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_dsn, min_size=1, max_size=4)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def _wait(cond: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        assert loop.time() < end, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_result_batch_is_held_until_a_flush_covers_its_commit(
    store: PostgresStore, pg_dsn: str
) -> None:
    await store.create_account(account())
    await store.accept(AcceptBatch("acc_a", (message("m1"),), None, None), NOW)
    assert [w.id for w in await store.claim("inst-a", 1, NOW, LEASE)] == ["m1"]
    confirm: Confirmer = store._confirm
    probe = await asyncpg.connect(pg_dsn)
    try:
        await store.record_submits(
            [SubmitResult("m1", 1, "sent", "smscU", "x1", "X1", at=NOW)], [], NOW
        )
        committed = await probe.fetchval("SELECT pg_current_wal_insert_lsn()")
        assert confirm.held == 1  # committed, not yet known to be on disk
        await _wait(lambda: confirm.held == 0)
        assert confirm.flushes >= 1 and confirm.rewritten == 0
        assert await probe.fetchval("SELECT pg_current_wal_flush_lsn()") >= committed
        row = await probe.fetchrow("SELECT smsc_msg_id FROM segments WHERE message_id='m1'")
        assert row is not None and row["smsc_msg_id"] is not None
    finally:
        await probe.close()


async def test_after_a_failed_flush_the_held_batches_are_written_again_in_order(
    pg_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    assert pool is not None
    await pool.execute("CREATE TABLE written (n SERIAL PRIMARY KEY, what TEXT)")
    failures = [ConnectionRefusedError(111, "Connect call failed")]

    def pool_of() -> asyncpg.Pool:
        if failures:  # the server is away for the first try
            raise failures.pop()
        return pool

    def writer(what: str) -> Any:
        async def write(c: asyncpg.Connection) -> None:
            await c.execute("INSERT INTO written (what) VALUES ($1)", what)

        return lambda: run_tx(pool, write)

    confirm = Confirmer(pool_of, interval_s=0.01)
    try:
        caplog.set_level(logging.INFO, "bridge.store")
        confirm.hold(writer("first"))
        confirm.hold(writer("second"))
        await _wait(lambda: confirm.held == 0, 10)
        rows = await pool.fetch("SELECT what FROM written ORDER BY n")
        assert [r["what"] for r in rows] == ["first", "second"]
        assert confirm.rewritten == 2 and confirm.flushes == 1
        failed = [r for r in caplog.records if "confirming 2 submit-result" in r.getMessage()]
        assert len(failed) == 1 and failed[0].levelno == logging.WARNING  # once, no traceback
        assert failed[0].exc_info is None
        confirm.hold(writer("third"))  # the next batch is only flushed, not written again
        await _wait(lambda: confirm.held == 0)
        assert confirm.rewritten == 2 and confirm.flushes == 2
        assert await pool.fetchval("SELECT COUNT(*) FROM written") == 2
    finally:
        await confirm.close()
        await pool.close()


async def test_close_flushes_what_is_held(store: PostgresStore) -> None:
    await store.create_account(account())
    await store.accept(AcceptBatch("acc_a", (message("m1"),), None, None), NOW)
    await store.claim("inst-a", 1, NOW, LEASE)
    confirm: Confirmer = store._confirm
    confirm._interval = 60.0  # no flush of its own before the close
    await store.record_submits(
        [SubmitResult("m1", 1, "sent", "smscU", "x1", "X1", at=NOW)], [], NOW
    )
    assert confirm.held == 1 and confirm.flushes == 0
    await store.close()
    assert confirm.held == 0 and confirm.flushes == 1
