"""Session 60: the store's pool puts a connection back without asyncpg's release task and arms no
timer a release (`max_inactive_connection_lifetime`); one sweep for the pool closes connections
idle for IDLE_LIFETIME_S past the pool's floor, as asyncpg's timer a connection did, and keeps
the floor's. Anything unusual at release (an open transaction, a closed session) still goes
through asyncpg's release."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from bridge.store import postgres_tx
from bridge.store.postgres_tx import create_pool, run_tx

pytestmark = pytest.mark.postgres

LIFE_S = 1.0


@pytest.fixture
async def pool(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[asyncpg.Pool]:
    monkeypatch.setattr(postgres_tx, "IDLE_LIFETIME_S", LIFE_S)
    p = await create_pool(pg_dsn, min_size=1, max_size=3, quota_zone=lambda: "UTC")
    try:
        yield p
    finally:
        await p.close()


def _timers(pool: asyncpg.Pool) -> list[asyncio.TimerHandle]:
    """The live timers of the pool's loop (the sweep's one among them)."""
    return [h for h in pool._loop._scheduled if not h.cancelled()]


async def test_release_arms_no_timer_and_puts_back_at_once(pool: asyncpg.Pool) -> None:
    await pool.fetchval("SELECT 1")  # warm
    before = len(_timers(pool))
    for _ in range(20):
        await run_tx(pool, lambda c: c.fetchval("SELECT 1"))
        await pool.execute("SELECT 1")
    assert len(_timers(pool)) == before
    assert all(h._inactive_callback is None for h in pool._holders)
    con = await pool.acquire()
    holder = con._holder
    await pool.release(con)
    # Back in the pool when release returns: no task left to run a loop turn later.
    assert holder._in_use is None
    assert holder in pool._queue._queue


async def test_unusual_releases_still_go_through_asyncpg(pool: asyncpg.Pool) -> None:
    con = await pool.acquire()
    await con.execute("BEGIN")
    await con.execute("CREATE TEMP TABLE t60 (x int)")
    # An open transaction: rolled back by asyncpg's release (it logs its error line).
    pool._loop.set_exception_handler(lambda _loop, _ctx: None)
    await pool.release(con)
    async with pool.acquire() as again:
        assert not again._con._protocol.is_in_transaction()
        assert await again.fetchval("SELECT to_regclass('pg_temp.t60') IS NULL")
    con = await pool.acquire()
    raw = con._con
    raw.terminate()
    await pool.release(con)
    assert pool.get_size() >= 0  # no error; the holder is free again
    assert all(h._in_use is None for h in pool._holders)


async def test_idle_connections_past_the_floor_are_closed_after_their_lifetime(
    pool: asyncpg.Pool,
) -> None:
    held = [await pool.acquire() for _ in range(3)]
    for con in held:
        await pool.release(con)
    assert pool.get_size() == 3
    await asyncio.sleep(LIFE_S / 2)
    async with pool.acquire() as busy:  # used again: its lifetime starts over
        await busy.fetchval("SELECT 1")
        kept = busy._con
    await asyncio.sleep(LIFE_S * 0.75)  # the two others are past theirs, it is not
    await asyncio.sleep(0.05)
    assert pool.get_size() == 1
    assert any(h._con is kept for h in pool._holders)
    await asyncio.sleep(LIFE_S)
    # The floor's connection: kept however long it idles, and still usable.
    assert pool.get_size() == 1
    assert await pool.fetchval("SELECT 2") == 2


async def test_sweep_ends_with_the_pool(pool: asyncpg.Pool) -> None:
    assert pool._sweep_handle is not None
    await pool.close()
    assert pool._sweep_handle is None


async def test_acquire_falls_back_to_asyncpg_for_a_holder_to_reconnect(pool: asyncpg.Pool) -> None:
    """A closed or expired connection in the queue, or a time-out given: asyncpg's own acquire
    (a new connection opened), the same answers."""
    async with pool.acquire() as con:
        first = con._con
    first.terminate()  # idle in the queue, closed
    async with pool.acquire() as con:
        assert con._con is not first
        assert await con.fetchval("SELECT 3") == 3
        second = con._con
    await pool.expire_connections()  # the next acquire reconnects the holder
    async with pool.acquire(timeout=5) as con:
        assert await con.fetchval("SELECT 4") == 4
        assert con._con is not second
    assert await run_tx(pool, lambda c: c.fetchval("SELECT 5")) == 5


async def _turns(pool: asyncpg.Pool) -> list[int]:
    """Which of five tasks, each taking the one connection three times in a row, had it when."""
    order: list[int] = []

    async def user(k: int) -> None:
        for _ in range(3):
            async with pool.acquire() as con:
                order.append(k)
                await con.fetchval("SELECT 1")
            order.append(-1)  # back from the release

    await asyncio.gather(*(user(k) for k in range(5)))
    return order


async def test_callers_get_the_connection_in_asyncpgs_order(pg_dsn: str) -> None:
    """A release hands the connection to the task waiting for it, not back to the releasing
    task that asks again at once (a first version did: the differentials' pool of one then
    served its callers in another order)."""
    ours = await create_pool(pg_dsn, min_size=1, max_size=1, quota_zone=lambda: "UTC")
    theirs = await asyncpg.create_pool(pg_dsn, min_size=1, max_size=1, reset=postgres_tx._no_reset)
    try:
        assert await _turns(ours) == await _turns(theirs)
    finally:
        await ours.close()
        await theirs.close()
