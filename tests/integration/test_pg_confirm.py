"""Submit results on PostgreSQL are committed without the WAL flush and held until a flush
confirms them (bridge/store/postgres_confirm.py). A crash of the server is in
test_session16_review3.py (test_a_crash_loses_no_acknowledged_submit_result); here the parts:
what a flush covers, a failed flush, close."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg
import pytest

from bridge.store.models import AcceptBatch, SubmitResult
from bridge.store.postgres import PostgresStore
from bridge.store.postgres_confirm import Confirmer
from bridge.store.postgres_tx import run_tx
from tests import pg_reuse
from tests.e2e.harness import wait_until
from tests.integration import test_session18_review1 as review1
from tests.integration.test_store_multi import LEASE, NOW, account, message

pg_dsn = pg_reuse.migrated_pg_dsn  # a store on the worker's migrated database (tests/pg_reuse.py)

pg = review1.pg  # the fixture: a PostgresStore on this test's database


async def sent_one(pg: PostgresStore, mid: str) -> None:
    """Accept, claim and record the submit result of one 1-part message."""
    await pg.accept(AcceptBatch("acc_a", (message(mid),), None, None), NOW)
    assert [w.id for w in await pg.claim("inst-a", 1, NOW, LEASE)] == [mid]
    await pg.record_submits([SubmitResult(mid, 1, "sent", "smscU", mid, mid, at=NOW)], [], NOW)


async def test_a_result_batch_is_held_until_a_flush_on_the_watch_covers_it(
    pg: PostgresStore, pg_dsn: str
) -> None:
    await pg.create_account(account())
    confirm: Confirmer = pg._confirm
    await sent_one(pg, "m0")  # the watch opens before the first batch commits
    await wait_until(lambda: confirm.flushes == 1, 5, 0.01)
    assert confirm.rewritten == 0 and confirm.held == 0
    probe = await asyncpg.connect(pg_dsn)
    try:
        await sent_one(pg, "m1")
        committed = await probe.fetchval("SELECT pg_current_wal_insert_lsn()")
        assert confirm.held == 1  # committed, not yet known to be on disk
        await wait_until(lambda: confirm.held == 0, 5, 0.01)
        assert confirm.rewritten == 0  # under the watch: the flush is enough
        assert await probe.fetchval("SELECT pg_current_wal_flush_lsn()") >= committed
        ids = await probe.fetch("SELECT message_id, smsc_msg_id FROM segments ORDER BY 1")
        assert [tuple(r) for r in ids] == [("m0", "m0"), ("m1", "m1")]
    finally:
        await probe.close()


async def test_a_batch_whose_watch_ended_is_written_again_before_the_next_claim(
    pg: PostgresStore, pg_dsn: str
) -> None:
    """Any crash, restart or failover of the server ends the watch; a flush on a new one would
    prove nothing about a batch committed before. Ending the watch's backend stands in for it
    (the crash itself is in test_session16_review3.py)."""
    await pg.create_account(account())
    confirm: Confirmer = pg._confirm
    await sent_one(pg, "m0")
    await wait_until(lambda: confirm.flushes == 1, 5, 0.01)  # the watch is up
    confirm._interval = 60.0  # no flush of its own: the claim must do it
    await asyncio.sleep(0.2)  # the loop is asleep on the new interval
    await sent_one(pg, "m1")
    assert confirm.held == 1 and not confirm.unsure()
    watch = confirm._watch
    assert watch is not None
    admin = await asyncpg.connect(pg_dsn)
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", watch.get_server_pid())
    finally:
        await admin.close()
    await wait_until(watch.is_closed, 5, 0.01)  # asyncpg sees the server end it, without a query
    assert confirm.unsure()
    before = confirm.rewritten
    await pg.accept(AcceptBatch("acc_a", (message("m2"),), None, None), NOW)
    # A watch lost fences claims for FENCE_S (the other instances write theirs again first).
    assert await pg.claim("inst-a", 1, NOW, LEASE) == []
    assert confirm.rewritten == before + 1 and confirm.held == 0  # before the claim
    assert confirm._watch is not watch and not confirm.unsure()
    await wait_until(lambda: time.monotonic() >= confirm._fence_until, 5, 0.05)
    assert [w.id for w in await pg.claim("inst-a", 1, NOW, LEASE)] == ["m2"]


async def test_after_a_failed_flush_the_held_batches_are_written_again_in_order(
    pg_dsn: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=2)
    assert pool is not None
    await pool.execute("CREATE TABLE written (n SERIAL PRIMARY KEY, what TEXT)")
    real_connect = asyncpg.connect
    refusals = [ConnectionRefusedError(111, "Connect call failed")]

    async def connect(*args: Any, **kw: Any) -> Any:
        if refusals:  # the server is away for the first try
            raise refusals.pop()
        return await real_connect(*args, **kw)

    monkeypatch.setattr(asyncpg, "connect", connect)

    def writer(what: str) -> Any:
        async def write(c: asyncpg.Connection) -> None:
            await c.execute("INSERT INTO written (what) VALUES ($1)", what)

        return lambda: run_tx(pool, write)

    confirm = Confirmer(pg_dsn, interval_s=0.01)
    try:
        caplog.set_level(logging.INFO, "bridge.store")
        confirm.hold(writer("first"))
        confirm.hold(writer("second"))
        # No watch to flush on: each is written again durably (then needs no flush).
        await wait_until(lambda: confirm.held == 0, 10, 0.01)
        rows = await pool.fetch("SELECT what FROM written ORDER BY n")
        assert [r["what"] for r in rows] == ["first", "second"]
        assert confirm.rewritten == 2 and confirm.flushes == 0
        # Both written again durably: nothing is at risk, so no warning; one line says so.
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        again = [r for r in caplog.records if "wrote 2 submit-result" in r.getMessage()]
        assert len(again) == 1 and again[0].exc_info is None
        confirm._retry_at = 0.0  # the next watch is tried now (a second after a failed one)
        confirm.hold(writer("third"))  # held before any watch: written again, then a flush
        await wait_until(lambda: confirm.flushes == 1, 5, 0.01)
        assert confirm.rewritten == 3 and confirm.held == 0
        confirm.hold(writer("fourth"))  # under the watch: only flushed, not written again
        await wait_until(lambda: confirm.flushes == 2, 5, 0.01)
        assert confirm.rewritten == 3 and confirm.held == 0
        rows = await pool.fetch("SELECT what FROM written ORDER BY n")
        assert [r["what"] for r in rows] == ["first", "second", "third"]
    finally:
        await confirm.close()
        await pool.close()


async def test_close_flushes_what_is_held_and_ends_the_watch(pg: PostgresStore) -> None:
    await pg.create_account(account())
    confirm: Confirmer = pg._confirm
    await sent_one(pg, "m0")
    await wait_until(lambda: confirm.flushes == 1, 5, 0.01)  # the watch is up
    confirm._interval = 60.0  # no flush of its own before the close
    await asyncio.sleep(0.2)
    await sent_one(pg, "m1")
    flushes = confirm.flushes
    assert confirm.held == 1
    watch = confirm._watch
    await pg.close()
    assert confirm.held == 0 and confirm.flushes == flushes + 1
    assert watch is not None and watch.is_closed() and confirm._watch is None


async def test_claims_go_on_when_the_watch_cannot_connect_but_the_pool_works(
    pg: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server refuses one more connection (max_connections) while the pool's are open:
    every held batch is written again durably instead, and sending goes on."""
    await pg.create_account(account())

    async def refused(*args: Any, **kw: Any) -> Any:
        raise asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already")

    monkeypatch.setattr(asyncpg, "connect", refused)
    confirm: Confirmer = pg._confirm
    confirm._interval = 60.0  # the claim meets the held batch first
    await sent_one(pg, "m0")
    assert confirm.held == 1 and confirm.unsure()
    await pg.accept(AcceptBatch("acc_a", (message("m1"),), None, None), NOW)
    assert [w.id for w in await pg.claim("inst-a", 1, NOW, LEASE)] == ["m1"]
    assert confirm.held == 0 and confirm.rewritten == 1 and confirm.flushes == 0
    assert not confirm.unsure()
