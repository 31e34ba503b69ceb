"""Session 60 review (r1) of StorePool's own release, acquire and idle sweep (merge 00a6868):
callers under contention (more tasks than connections, time-outs given, a task cancelled while
waiting or releasing) served in asyncpg's own pool's order; a connection released through
asyncpg's release (an open transaction rolled back there) not closed by a sweep falling between
the holder's release and the releasing task's return."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import asyncpg
import pytest

from bridge.store import postgres_tx
from bridge.store.postgres_tx import create_pool
from tests.ports import free_port

pytestmark = pytest.mark.postgres


async def _contended(pool: asyncpg.Pool, seed: int) -> list[object]:
    """Seven tasks taking the pool's connections four times each (some with a time-out, some
    holding it a few loop turns), one of them cancelled a few turns in: who had which
    connection when, how each task ended, and the pool's holders after. No statements: their
    answers' timing is the network's, the rest is the loop's turns only."""
    rnd = random.Random(seed)
    order: list[object] = []
    names: dict[int, int] = {}

    def name(con: Any) -> int:
        return names.setdefault(id(con._con), len(names))

    async def user(k: int) -> None:
        for i in range(4):
            timeout = rnd.choice([None, None, 5.0])
            async with pool.acquire(timeout=timeout) as con:
                order.append((k, i, name(con)))
                for _ in range(rnd.randrange(3)):
                    await asyncio.sleep(0)
            order.append((k, i, "back"))

    tasks = [asyncio.ensure_future(user(k)) for k in range(7)]
    for _ in range(rnd.randrange(3, 12)):
        await asyncio.sleep(0)
    tasks[rnd.randrange(len(tasks))].cancel()
    ended = await asyncio.gather(*tasks, return_exceptions=True)
    order.append([type(r).__name__ for r in ended])
    order.append((pool.get_size(), [h._in_use is None for h in pool._holders]))
    order.append(pool._queue.qsize())
    return order


@pytest.mark.parametrize("size", [1, 2, 3])
async def test_contended_callers_are_served_in_asyncpgs_order(pg_dsn: str, size: int) -> None:
    ours = await create_pool(pg_dsn, min_size=size, max_size=size, quota_zone=lambda: "UTC")
    theirs = await asyncpg.create_pool(
        pg_dsn, min_size=size, max_size=size, reset=postgres_tx._no_reset
    )
    try:
        for seed in range(30):
            assert await _contended(ours, seed) == await _contended(theirs, seed), seed
    finally:
        await asyncio.wait_for(ours.close(), 10)
        await asyncio.wait_for(theirs.close(), 10)


async def test_a_sweep_right_after_asyncpgs_release_keeps_the_connection(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection held past IDLE_LIFETIME_S in an open transaction goes back through
    asyncpg's release (the ROLLBACK); a sweep in the loop turn where the holder is back but the
    release not yet returned must count its idle time from this release, not the one before
    (the merged version closed it there: a connection just used, closed as idle)."""
    monkeypatch.setattr(postgres_tx, "IDLE_LIFETIME_S", 0.2)
    pool = await create_pool(pg_dsn, min_size=0, max_size=2, quota_zone=lambda: "UTC")
    pool._loop.set_exception_handler(lambda _loop, _ctx: None)  # asyncpg's "active transaction"
    try:
        pool._stop_sweep()  # the sweep run by hand below, at the turn in question
        con = await pool.acquire()
        holder, raw = con._holder, con._con
        await con.execute("BEGIN")
        await asyncio.sleep(0.3)  # held past the lifetime
        swept: list[bool] = []

        async def sweep_when_back() -> None:
            # Each loop turn until the holder is back: polled, as no event tells it.
            while holder._in_use is not None:  # noqa: ASYNC110
                await asyncio.sleep(0)
            pool._sweep()
            swept.append(raw.is_closed())

        watch = asyncio.ensure_future(sweep_when_back())
        await pool.release(con)
        await watch
        assert swept == [False]
        assert holder._con is raw and not raw.is_closed()
        async with pool.acquire() as again:
            assert again._con is raw
            assert await again.fetchval("SELECT 1") == 1
    finally:
        await asyncio.wait_for(pool.close(), 10)


async def test_a_holder_that_cannot_reconnect_fails_the_acquire_with_the_connect_error(
    pg_dsn: str,
) -> None:
    """StorePool._acquire's own branch for a popped holder to reconnect, the server away: the
    caller sees the connect's error (an OSError: the store unavailable), the holder back in the
    queue. On asyncpg 0.30/0.31 (which pyproject allowed) the branch's
    `_schedule_min_size_maintenance`, new in 0.32, raised AttributeError in its place."""
    pool = await create_pool(pg_dsn, min_size=1, max_size=1, quota_zone=lambda: "UTC")
    try:
        async with pool.acquire() as con:
            raw = con._con
        raw.terminate()  # idle in the queue, closed
        pool.set_connect_args(dsn=f"postgresql://bridge@127.0.0.1:{free_port()}/x")
        with pytest.raises(OSError):
            await pool.acquire()
        assert pool._queue.qsize() == 1
        assert all(h._in_use is None for h in pool._holders)
    finally:
        await asyncio.wait_for(pool.close(), 10)


async def test_the_sweep_goes_on_after_a_close_that_raised(
    pg_dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A close that raised in the sweep (logged) keeps neither the other idle connections from
    theirs nor the sweep from its next round: asyncpg's timer a connection lost that one
    connection's check; the merged version's one sweep of the pool stopped for good, no
    connection past the floor closed as idle again."""
    monkeypatch.setattr(postgres_tx, "IDLE_LIFETIME_S", 0.1)
    pool = await create_pool(pg_dsn, min_size=0, max_size=2, quota_zone=lambda: "UTC")
    pool._loop.set_exception_handler(lambda _loop, _ctx: None)
    a, b = await pool.acquire(), await pool.acquire()
    bad, good = a._con, b._con
    try:
        await pool.release(a)  # the older: swept first
        await pool.release(b)

        def boom() -> None:
            raise RuntimeError("close failed")

        bad.terminate = boom  # type: ignore[method-assign]
        await asyncio.sleep(0.5)
        assert pool._sweep_handle is not None
        assert good.is_closed()
        assert "closing an idle connection failed" in caplog.text
    finally:
        del bad.terminate
        await asyncio.wait_for(pool.close(), 10)


async def test_a_double_release_and_a_terminate_between_release_and_its_turn(pg_dsn: str) -> None:
    """Two releases of one connection in a turn put its holder back once (the second's turn
    runs right after the first's, as asyncpg's two tasks did, and finds it free: swallowed); a
    pool terminated between a release and its turn: nothing raised, the holder free, close
    quick."""
    pool = await create_pool(pg_dsn, min_size=2, max_size=2, quota_zone=lambda: "UTC")
    try:
        con = await pool.acquire()
        other = asyncio.ensure_future(pool.acquire())  # takes the other connection at once
        await asyncio.gather(pool.release(con), pool.release(con))
        assert pool._queue.qsize() == 1
        assert sorted(h._in_use is None for h in pool._holders) == [False, True]
        await pool.release(await other)
        assert pool._queue.qsize() == 2
        con = await pool.acquire()
        releasing = asyncio.ensure_future(pool.release(con))
        await asyncio.sleep(0)  # release's part done, the holder's turn next
        pool.terminate()
        await releasing
        assert all(h._in_use is None for h in pool._holders)
    finally:
        await asyncio.wait_for(pool.close(), 10)
