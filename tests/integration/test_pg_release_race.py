"""asyncpg's "PoolConnectionHolder.release() called on a free connection holder", seen once in a
kill/restart trial (session 47).

Not a connection released twice by our code: asyncpg's Pool.release checks that the connection
is still handed out, then runs the holder's release as a task of its own (asyncio.shield), which
starts at the loop's next turn. A server's close read in between (a shutdown or a killed backend
just after a COMMIT: the EOF closes the transport, whose connection_lost runs asyncpg's cleanup)
hands the holder back to the pool first; the release task then finds it free and raises. The
caller saw an InternalClientError for a transaction that had committed, or a statement that had
answered (a 503, a background step's ERROR line).

The server ends the session (its FATAL read, its close held back by the test proxy); its close
then arrives as the connection is released: the transport closed as the loop closes it on
reading the EOF, its connection_lost at the next turn, before the release task's.
"""

from __future__ import annotations

import asyncpg
import pytest

from bridge.store import postgres_tx
from bridge.store.postgres_tx import run_tx
from tests.integration.test_pg_fatal_between_statements import (  # noqa: F401  (fixtures)
    _kill,
    proxied,
    proxy,
)

pytestmark = pytest.mark.postgres


def _close_arrives(conn: asyncpg.Connection) -> None:
    """The server's close (held by the proxy), read now: the loop closes the transport as on
    an EOF; its connection_lost (asyncpg's cleanup) runs at the next turn, before the task of
    the release that follows at once."""
    conn._con._transport.abort()  # type: ignore[attr-defined]  # the proxy's connection


async def test_a_transaction_whose_session_ends_as_it_is_released_committed(
    proxied: tuple[asyncpg.Pool, asyncpg.Connection],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pool, admin = proxied
    await admin.execute("CREATE TABLE kept (x int)")
    end_tx = postgres_tx.end_tx

    async def end_then_killed(conn: asyncpg.Connection, sql: str) -> None:
        await end_tx(conn, sql)
        if sql == "COMMIT":  # the session ends after its COMMIT, its close read at the release
            await _kill(admin, conn.get_server_pid())
            _close_arrives(conn)

    monkeypatch.setattr(postgres_tx, "end_tx", end_then_killed)

    async def job(c: asyncpg.Connection) -> None:
        await c.execute("INSERT INTO kept VALUES (1)")

    await run_tx(pool, job)  # committed: no error
    assert await admin.fetchval("SELECT count(*) FROM kept") == 1
    assert await pool.fetchval("SELECT 1") == 1


async def test_a_session_ending_as_it_is_released_is_no_error(
    proxied: tuple[asyncpg.Pool, asyncpg.Connection],  # noqa: F811
) -> None:
    pool, admin = proxied
    async with pool.acquire() as c:
        await _kill(admin, c.get_server_pid())
        _close_arrives(c)
    # Released once, by the close: the pool goes on, on a new session.
    assert await pool.fetchval("SELECT 1") == 1
