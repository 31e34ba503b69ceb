"""asyncpg's "cannot switch to state 12; another operation is in progress" in an outage (h3's trial
in session 47: PostgreSQL stopped under load, ERROR lines in the receipts flush and the claim).

Not two operations on one connection: the server ended a session (a shutdown, a
pg_terminate_backend) while no statement was under way on it, between two statements of a
transaction or while it sat idle in the pool. Its FATAL was read, its close not yet (the loop
reads the close at a later turn; under load that is after the next statement began): asyncpg
then refuses the statement before sending it, and aborts the connection. run_tx now takes that
for what it is: the transaction was rolled back with the session, so it runs again on another
connection (a killed backend fails nothing; at most once per session of the pool, then on a new
one), and if that fails too, the caller is told the connection was lost (the store unavailable),
not asyncpg's internal state.

The window is made deterministic with a TCP proxy that holds the server's close for a while
after forwarding everything before it (the FATAL).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from bridge.store import postgres_tx
from bridge.store.base import is_unavailable
from bridge.store.postgres import PostgresStore
from bridge.store.postgres_tx import create_pool, run_tx
from tests.integration.test_store import LEASE, NOW, accept, account, message
from tests.ports import free_port

pytestmark = pytest.mark.postgres

HOLD_S = 1.0  # the server's close, held back this long after its last bytes


class CloseHeld:
    """TCP to PostgreSQL; the server's side closing is passed on HOLD_S late."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.listen_port = free_port()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.served = 0
        self.stalled: set[int] = set()  # connections (by order) whose answers are dropped

    def dsn(self, dsn: str) -> str:
        u = urlsplit(dsn)
        auth = u.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.listen_port}"
        return urlunsplit(u._replace(netloc=f"{auth[0]}@{host}" if len(auth) > 1 else host))

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.listen_port)

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self._tasks.add(t := asyncio.current_task())  # type: ignore[arg-type]
        sr, sw = await asyncio.open_connection(self.host, self.port)
        n, self.served = self.served, self.served + 1

        async def up() -> None:
            with contextlib.suppress(Exception):
                while data := await cr.read(65536):
                    sw.write(data)
                    await sw.drain()
            sw.close()

        async def down() -> None:
            with contextlib.suppress(Exception):
                while data := await sr.read(65536):
                    if n in self.stalled:
                        continue
                    cw.write(data)
                    await cw.drain()
            await asyncio.sleep(HOLD_S)
            cw.close()

        try:
            await asyncio.gather(up(), down())
        except asyncio.CancelledError:  # stop(): ended, not failed (asyncio would log it)
            cw.transport.abort()
            sw.transport.abort()
        finally:
            self._tasks.discard(t)  # type: ignore[arg-type]

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def proxy(pg_dsn: str) -> AsyncIterator[CloseHeld]:
    u = urlsplit(pg_dsn)
    assert u.hostname and u.port
    p = CloseHeld(u.hostname, u.port)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


@pytest.fixture
async def proxied(
    pg_dsn: str, proxy: CloseHeld
) -> AsyncIterator[tuple[asyncpg.Pool, asyncpg.Connection]]:
    """A one-connection pool through the proxy, and an admin connection straight to the server."""
    pool = await create_pool(proxy.dsn(pg_dsn), min_size=1, max_size=1, quota_zone=lambda: "UTC")
    admin = await asyncpg.connect(pg_dsn)
    try:
        yield pool, admin
    finally:
        await admin.close()
        pool.terminate()


async def _kill(admin: asyncpg.Connection, pid: int) -> None:
    """End the session as a shutdown does (FATAL, then close), and let its FATAL be read."""
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    await asyncio.sleep(0.3)


async def test_session_ended_between_two_statements_is_run_again(
    proxied: tuple[asyncpg.Pool, asyncpg.Connection],
) -> None:
    pool, admin = proxied
    runs: list[int] = []

    async def job(c: asyncpg.Connection) -> int:
        pid = await c.fetchval("SELECT pg_backend_pid()")
        runs.append(pid)
        if len(runs) == 1:
            await _kill(admin, pid)
        return await c.fetchval("SELECT $1::int + 1", 41)  # the claim's next statement

    assert await run_tx(pool, job) == 42
    assert len(runs) == 2 and runs[0] != runs[1]  # on a new session


async def test_idle_pooled_session_ended_is_replaced(
    proxied: tuple[asyncpg.Pool, asyncpg.Connection],
) -> None:
    pool, admin = proxied

    async def pid(c: asyncpg.Connection) -> int:
        return await c.fetchval("SELECT pg_backend_pid()")

    first = await run_tx(pool, pid)
    await _kill(admin, first)  # idle in the pool, its close not read yet
    assert await run_tx(pool, pid, durable=False) not in (None, first)


async def test_lost_again_is_the_store_unavailable_not_an_internal_error(
    proxied: tuple[asyncpg.Pool, asyncpg.Connection],
) -> None:
    pool, admin = proxied
    runs = 0

    async def job(c: asyncpg.Connection) -> int:
        nonlocal runs
        runs += 1
        await _kill(admin, await c.fetchval("SELECT pg_backend_pid()"))
        return await c.fetchval("SELECT 1")

    with pytest.raises(asyncpg.ConnectionDoesNotExistError) as caught:
        await run_tx(pool, job)
    assert runs == 2  # a pool of one: once on it, once on a new one, not in a loop
    assert is_unavailable(caught.value)
    assert "another operation" not in str(caught.value).split("(")[0]
    # The pool goes on with a working session: nothing of the ended ones was kept.
    assert await run_tx(pool, lambda c: c.fetchval("SELECT 7")) == 7


async def test_a_pool_statement_on_an_ended_idle_session_is_run_again(
    proxied: tuple[asyncpg.Pool, asyncpg.Connection],
) -> None:
    """The store's one-statement reads and writes (pool.fetch...), outside run_tx."""
    pool, admin = proxied
    first = await pool.fetchval("SELECT pg_backend_pid()")
    await _kill(admin, first)
    assert await pool.fetchval("SELECT pg_backend_pid()") not in (None, first)
    await _kill(admin, await pool.fetchval("SELECT pg_backend_pid()"))
    assert await pool.execute("SELECT 1") == "SELECT 1"


async def test_the_claim_after_a_killed_idle_session_takes_its_messages(
    pg_dsn: str, proxy: CloseHeld
) -> None:
    """h3's trial: the claim (and the receipts flush) failed with the internal error."""
    store = PostgresStore(proxy.dsn(pg_dsn), min_size=1, max_size=1)
    await store.open()
    admin = await asyncpg.connect(pg_dsn)
    try:
        await store.create_account(account())
        for mid in ("m0", "m1", "m2"):
            await accept(store, message(mid))
        pids = await admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'smpp-bridge' "
            "AND datname = current_database()"
        )
        assert len(pids) == 1  # the pool's one session, idle
        await _kill(admin, pids[0]["pid"])
        work = await store.claim("inst-a", 10, NOW, LEASE)
        assert sorted(w.id for w in work) == ["m0", "m1", "m2"]
    finally:
        await admin.close()
        await store.close()


async def test_a_rollback_the_server_never_answers_ends_the_session(
    proxy: CloseHeld, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """end_tx gives up on a ROLLBACK after END_AFTER_CANCEL_S: the connection, mid-statement,
    is terminated, not left for the pool's release (which waited on the server for as long as
    it did not answer, the pool's only connection neither back nor closed)."""
    monkeypatch.setattr(postgres_tx, "END_AFTER_CANCEL_S", 0.3)
    pool = await create_pool(proxy.dsn(pg_dsn), min_size=1, max_size=1, quota_zone=lambda: "UTC")
    loop = asyncio.get_running_loop()
    reported: list[str] = []
    loop.set_exception_handler(lambda _l, ctx: reported.append(str(ctx.get("message"))))
    try:
        started = asyncio.Event()

        async def job(c: asyncpg.Connection) -> None:
            await c.fetchval("SELECT 1")
            started.set()
            await asyncio.sleep(30)  # the stop comes here; its ROLLBACK goes unanswered

        task = asyncio.create_task(run_tx(pool, job))
        await started.wait()
        proxy.stalled.add(0)

        def again() -> None:  # a stop's cancels, again and again
            if not task.done():
                task.cancel()
                loop.call_later(0.05, again)

        again()
        with pytest.raises(asyncio.CancelledError):
            await task
        async with asyncio.timeout(3):  # the server answers new sessions
            assert await run_tx(pool, lambda c: c.fetchval("SELECT 7")) == 7
        await asyncio.sleep(0.1)
        assert reported == []
    finally:
        loop.set_exception_handler(None)
        pool.terminate()


async def test_every_session_of_the_pool_ended_at_once(proxy: CloseHeld, pg_dsn: str) -> None:
    """A shutdown ends them all: each is tried (nothing sent), then a new one, which works
    here (the sessions were killed, the server stays up)."""
    pool = await create_pool(proxy.dsn(pg_dsn), min_size=3, max_size=3, quota_zone=lambda: "UTC")
    admin = await asyncpg.connect(pg_dsn)
    try:
        killed = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity " + (
            "WHERE application_name = 'smpp-bridge' AND datname = current_database()"
        )
        assert len(await admin.fetch(killed)) == 3
        await asyncio.sleep(0.3)
        assert await run_tx(pool, lambda c: c.fetchval("SELECT 5")) == 5
        assert await admin.fetch(killed)  # again, whichever the pool holds now
        await asyncio.sleep(0.3)
        assert await pool.fetchval("SELECT 6") == 6
    finally:
        await admin.close()
        pool.terminate()


async def test_a_session_whose_close_was_read_between_two_statements(pg_dsn: str) -> None:
    """No proxy: the close read as well, asyncpg hands the connection back to the pool under
    the job's feet ("connection has been released back to the pool"): run again too."""
    pool = await create_pool(pg_dsn, min_size=1, max_size=1, quota_zone=lambda: "UTC")
    admin = await asyncpg.connect(pg_dsn)
    runs: list[int] = []
    try:

        async def job(c: asyncpg.Connection) -> int:
            runs.append(await c.fetchval("SELECT pg_backend_pid()"))
            if len(runs) == 1:
                await _kill(admin, runs[0])
            return await c.fetchval("SELECT $1::int + 1", 1)

        assert await run_tx(pool, job) == 2
        assert len(runs) == 2 and runs[0] != runs[1]
    finally:
        await admin.close()
        pool.terminate()
