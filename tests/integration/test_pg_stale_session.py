"""PostgreSQL sessions a vanished client leaves behind.

- Every session the daemon opens asks the server for TCP keepalives and a send time-out: without
  them the server keeps a session whose client vanished (no FIN, no RST) for about two hours, with
  its locks.
- A coordinator that reconnects after a partition ends its own previous session, which the
  server still keeps: that session holds the instance lock and the bind slots, so before, the
  instance could not reconnect (it gave up after 30 s, and again, and again) and no instance could
  bind those slots until the server noticed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from urllib.parse import urlparse

import asyncpg
import pytest

from bridge.store.postgres import PostgresStore
from bridge.store.postgres_coord import Coordinator
from tests import pg_reuse
from tests.e2e.harness import free_port

pg_dsn = pg_reuse.migrated_pg_dsn  # a store on the worker's migrated database (tests/pg_reuse.py)


async def eventually(cond: Callable[[], bool], within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class CutProxy:
    """TCP to PostgreSQL whose current connections can be cut silently (their bytes dropped, their
    sockets left open: the server sees a live peer), while new connections pass: a partition that
    healed by the time the client reconnects, or a firewall that forgot the flow."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.listen_port = free_port()
        self._server: asyncio.Server | None = None
        self._live: list[dict[str, bool]] = []
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.listen_port)

    def cut(self) -> None:
        for flow in self._live:
            flow["dead"] = True

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection(self.host, self.port)
        self._writers += [cw, sw]
        flow = {"dead": False}
        self._live.append(flow)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    if not flow["dead"]:
                        w.write(data)
                        await w.drain()
                if not flow["dead"]:  # a close passes a live flow; a cut one tells nobody
                    w.close()

        await asyncio.gather(pump(cr, sw), pump(sr, cw))

    async def stop(self) -> None:
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def dsn(pg_dsn: str) -> str:
    store = PostgresStore(pg_dsn, min_size=1, max_size=1)
    await store.open()
    await store.close()
    return pg_dsn


async def _setting(conn: asyncpg.Connection, name: str) -> str:
    return await conn.fetchval("SELECT setting FROM pg_settings WHERE name=$1", name)


async def test_every_session_asks_for_keepalives(dsn: str) -> None:
    assert urlparse(dsn).hostname  # over TCP: on a Unix socket the server ignores them
    store = PostgresStore(dsn, min_size=1, max_size=1)
    await store.open()
    coord = Coordinator(dsn, "k", poll_s=60)
    await coord.start()
    try:
        assert store._pool is not None
        async with store._pool.acquire() as conn:
            pooled = [await _setting(conn, n) for n in ("tcp_keepalives_idle", "tcp_user_timeout")]
        assert coord._conn is not None
        own = [await _setting(coord._conn, n) for n in ("tcp_keepalives_idle", "tcp_user_timeout")]
        assert pooled == own == ["30", "60000"]
        plain = await asyncpg.connect(dsn)  # the server's default, for contrast
        try:
            assert await _setting(plain, "tcp_keepalives_idle") != "30"
        finally:
            await plain.close()
    finally:
        await coord.stop()
        await store.close()


async def _sessions(dsn: str, name: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE application_name=$1", name
        )
    finally:
        await conn.close()


async def test_a_reconnect_ends_the_session_the_server_still_keeps(dsn: str) -> None:
    u = urlparse(dsn)
    proxy = CutProxy(u.hostname or "127.0.0.1", u.port or 5432)
    await proxy.start()
    via = dsn.replace(f"{u.hostname}:{u.port}", f"127.0.0.1:{proxy.listen_port}")
    a = Coordinator(via, "a", poll_s=0.3, grace_s=0.3, op_timeout_s=1.0)
    await a.start()
    try:
        ga = a.gate("s", "transceiver", 1)
        assert await ga.acquire(0) is True
        proxy.cut()
        await eventually(lambda: not ga.keep(0), 5)
        assert await _sessions(dsn, "smpp-bridge a") >= 1  # the old one, kept by the server
        # Reconnected, with the instance lock: the old session, which held it, was ended.
        await eventually(lambda: a.losses == 1 and a._healthy, 10)
        assert await _sessions(dsn, "smpp-bridge a") == 1
        got = False
        # After the reconnect's grace, and orphan_s (~5.3 s here) after the slot was seen free:
        # its holder's session is gone, and the holder (a itself) may still have been bound.
        deadline = time.monotonic() + a.orphan_s + a.grace_s + 8
        while not got and time.monotonic() < deadline:
            got = await ga.acquire(0)
            await asyncio.sleep(0.1)
        assert got, "the slot the old session held could not be taken back"
    finally:
        await a.stop()
        await proxy.stop()


async def test_a_partition_while_waiting_for_the_instance_lock_fails_the_attempt(
    dsn: str,
) -> None:
    """A coordinator whose instance name is held waits (up to 30 s) for the lock, polling it. Cut
    off meanwhile, the poll never answered (no time-out on it) and the attempt hung for good: no
    retry, and a stop waited on the graceful close of the dead connection too. Each step is
    bounded now, and a failed attempt drops its connection at once."""
    u = urlparse(dsn)
    proxy = CutProxy(u.hostname or "127.0.0.1", u.port or 5432)
    await proxy.start()
    via = dsn.replace(f"{u.hostname}:{u.port}", f"127.0.0.1:{proxy.listen_port}")
    holder = Coordinator(dsn, "same", poll_s=60)
    await holder.start()
    second = Coordinator(via, "same", poll_s=60, op_timeout_s=1.0)
    starting = asyncio.create_task(second.start())
    try:
        await asyncio.sleep(1.5)  # connected, polling the held lock
        assert not starting.done()
        proxy.cut()
        done, _ = await asyncio.wait({starting}, timeout=5)
        assert done, "the attempt hung on a dead link"
        assert isinstance(starting.exception(), TimeoutError)
    finally:
        if not starting.done():
            starting.cancel()
        await holder.stop()
        await proxy.stop()
