"""Session 59's review of postgres_tx._Deadline: the statements its connection's wrappers do
not note (`executemany`, in a transaction and as the pool's call) are bounded as the merged
tests bound a cursor's FETCHes: one past the bound times out (TimeoutError, the session back
in the pool with its bound), and such statements each within the bound, between noted ones,
are not cut however long the transaction. Fails with a deadline that judges by the last noted
statement alone (the protocol's count of queries ignored in `_due`). The bound is 1 s here."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import asyncpg
import pytest

from bridge.store import postgres_tx
from bridge.store.postgres_tx import create_pool, run_tx

BOUND_S = 1.0


@pytest.fixture
async def pool(pg_dsn: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[asyncpg.Pool]:
    monkeypatch.setattr(postgres_tx, "COMMAND_TIMEOUT_S", BOUND_S)
    p = await create_pool(pg_dsn, min_size=1, max_size=1, quota_zone=lambda: "UTC")
    try:
        yield p
    finally:
        await p.close()


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
