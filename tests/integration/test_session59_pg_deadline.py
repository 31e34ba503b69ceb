"""Session 59: the PostgreSQL store bounds its statements with one timer a transaction, read or
pool call (postgres_tx._Deadline), not asyncpg's timer a statement (`command_timeout`), and
keeps what that bound did: a statement older than the bound is cancelled on the server and its
caller gets TimeoutError (the store unavailable), the transaction rolled back and the session
back in the pool, usable; statements each within the bound are not cut however long their
transaction (a cursor's FETCHes, which the connection does not note, included); a cancel of the
caller's own stays a cancel. The bound is made 1 s here (COMMAND_TIMEOUT_S, read by the pool as
it is made and by each deadline)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from bridge.store import postgres_tx
from bridge.store.base import is_unavailable
from bridge.store.postgres_tx import create_pool, run_reads, run_tx

pytestmark = pytest.mark.postgres

BOUND_S = 1.0


@pytest.fixture
async def pool(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[asyncpg.Pool]:
    monkeypatch.setattr(postgres_tx, "COMMAND_TIMEOUT_S", BOUND_S)
    p = await create_pool(pg_dsn, min_size=1, max_size=1, quota_zone=lambda: "UTC")
    try:
        yield p
    finally:
        await p.close()


async def sleeps_running(pool: asyncpg.Pool) -> int:
    return int(
        await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(%'"
        )
    )


async def usable_after(pool: asyncpg.Pool) -> None:
    """The session is back in the pool (one session), out of any transaction, its statement
    cancelled on the server, and the bound back on it."""
    assert await pool.fetchval("SELECT 1") == 1
    for _ in range(100):  # the cancel request travels on a connection of its own
        if not await sleeps_running(pool):
            break
        await asyncio.sleep(0.05)
    assert await sleeps_running(pool) == 0
    async with pool.acquire() as conn:
        assert not conn.is_in_transaction()
        assert conn._con._config.command_timeout == BOUND_S


async def test_a_statement_past_the_bound_times_out_and_the_session_stays(
    pool: asyncpg.Pool,
) -> None:
    async def job(c: asyncpg.Connection) -> Any:
        await c.execute("SELECT 1")
        return await c.fetchval("SELECT pg_sleep(5)")

    t0 = time.monotonic()
    with pytest.raises(TimeoutError) as caught:
        await run_tx(pool, job)
    assert time.monotonic() - t0 < 4.0
    assert is_unavailable(caught.value)  # a 503 with Retry-After, as asyncpg's was
    await usable_after(pool)


async def test_pool_calls_and_reads_time_out(pool: asyncpg.Pool) -> None:
    with pytest.raises(TimeoutError):
        await pool.fetchval("SELECT pg_sleep(5)")
    await usable_after(pool)
    with pytest.raises(TimeoutError):
        await run_reads(pool, lambda c: c.fetch("SELECT pg_sleep(5)"))
    await usable_after(pool)


async def test_statements_each_within_the_bound_are_not_cut(pool: asyncpg.Pool) -> None:
    async def job(c: asyncpg.Connection) -> int:
        for _ in range(4):  # 2.4 s in all, each 0.6 s
            await c.execute("SELECT pg_sleep(0.6)")
        return 1

    assert await run_tx(pool, job) == 1

    async def walk(c: asyncpg.Connection) -> int:
        # A cursor's FETCHes (not noted by the connection's wrappers), each 0.6 s.
        cursor = await c.cursor("SELECT pg_sleep(0.6), g FROM generate_series(1, 4) g")
        n = 0
        while rows := await cursor.fetch(1):
            n += len(rows)
        return n

    assert await run_tx(pool, walk) == 4
    await usable_after(pool)


async def test_a_cancel_of_the_callers_own_stays_a_cancel(pool: asyncpg.Pool) -> None:
    task = asyncio.ensure_future(run_tx(pool, lambda c: c.fetchval("SELECT pg_sleep(5)")))
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await usable_after(pool)


async def test_one_timer_a_transaction(pg_dsn: str) -> None:
    """The point of it: asyncpg's timer for each of the 12 round trips (BEGIN, ten statements,
    COMMIT) was ~30 k instructions each under asyncio's loop; one now."""
    p = await create_pool(pg_dsn, min_size=1, max_size=1, quota_zone=lambda: "UTC")
    try:
        loop = asyncio.get_running_loop()
        armed: list[float] = []
        call_at = loop.call_at

        def counting(when: float, *args: Any, **kw: Any) -> asyncio.TimerHandle:
            armed.append(when)
            return call_at(when, *args, **kw)

        async def job(c: asyncpg.Connection) -> int:
            return sum([await c.fetchval("SELECT $1::int", i) for i in range(10)])

        loop.call_at = counting  # type: ignore[method-assign]  # call_later goes through it
        try:
            t0 = loop.time()
            assert await run_tx(p, job) == 45
        finally:
            del loop.call_at
        # The bound's timers (the pool's own, for an idle connection's lifetime, not counted).
        bound = [w for w in armed if 50 < w - t0 < 70]
        assert len(bound) == 1, bound
    finally:
        await p.close()


# Session 59's review (r5) of postgres_tx._Deadline: the statements its connection's wrappers do
# not note (`executemany`, in a transaction and as the pool's call) are bounded as the merged
# tests bound a cursor's FETCHes: one past the bound times out (TimeoutError, the session back
# in the pool with its bound), and such statements each within the bound, between noted ones,
# are not cut however long the transaction. Fails with a deadline that judges by the last noted
# statement alone (the protocol's count of queries ignored in `_due`). The bound is 1 s here.


async def _bound_back(pool: asyncpg.Pool) -> None:
    assert await pool.fetchval("SELECT 1") == 1
    async with pool.acquire() as conn:
        assert not conn.is_in_transaction()
        assert conn._con._config.command_timeout == BOUND_S


async def test_an_unnoted_statement_past_the_bound_times_out(pool: asyncpg.Pool) -> None:
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        await pool.executemany("SELECT pg_sleep($1)", [(5,)])
    assert time.monotonic() - t0 < 3.0
    await _bound_back(pool)

    async def job(c: asyncpg.Connection) -> None:
        await c.execute("SELECT 1")
        await c.executemany("SELECT pg_sleep($1)", [(5,)])

    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        await run_tx(pool, job)
    assert time.monotonic() - t0 < 4.0  # at most twice the bound, then the cancel's round trip
    await _bound_back(pool)


async def test_unnoted_statements_each_within_the_bound_are_not_cut(pool: asyncpg.Pool) -> None:
    async def job(c: asyncpg.Connection) -> int:
        await c.execute("SELECT pg_sleep(0.7)")
        await c.executemany("SELECT pg_sleep($1)", [(0.7,)])
        await c.executemany("SELECT pg_sleep($1)", [(0.7,)])
        await c.execute("SELECT pg_sleep(0.7)")
        return 1

    assert await run_tx(pool, job) == 1
    await _bound_back(pool)
