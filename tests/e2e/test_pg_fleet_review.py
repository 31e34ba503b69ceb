"""Review of several `smpp-bridge run` instances on one PostgreSQL database, with real daemon
processes, a real throw-away cluster (tests/pg_cluster.py) and the simulated SMSC in this process
(it outlives the instances and counts the binds of the system_id per instance).

Findings (each test fails on the code as reviewed):

1. test_workers_mode_instance_is_ready_while_another_instance_holds_the_bind: an instance run
   with `server.workers` (acceptor processes serve its HTTP) answers /readyz 503 "no SMSC bound"
   for as long as another instance holds the SMSC's binds, although that instance sends what it
   accepts (README: "/readyz of an instance without binds is ready while another live instance
   has the SMSC bound"). The acceptor reads the SMSC status of the newest heartbeat row whose
   role is "owner" in the whole fleet (app.py `_read_owner_status`), never the other instances'
   binds (`_cluster_status` runs only where a coordinator is, never in an acceptor); with two
   workers-mode instances it even reads the other instance's owner, so readiness and
   /metrics follow whichever owner heartbeated last.
2. test_readyz_answers_not_ready_during_a_partition_from_the_database: an instance cut off from
   the database without a reset (a partition) does not answer /readyz at all: its store ping is
   sent into the void and waits for asyncpg's command_timeout (60 s), although the coordinator
   has known for ~4 s that the database is gone and the binds are being given up. A load
   balancer's check times out instead of reading "not ready", and every API request hangs the
   same 60 s instead of the retryable 503 README choice 12 promises.

The partition is a TCP proxy between one instance and PostgreSQL that stops passing bytes and
never closes the instance's side (only time-outs tell), and closes the server's side, as the
server does once its TCP keepalives fire.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiohttp
import pytest

from bridge.sim.server import SimSmsc
from tests.e2e.harness import DaemonProcess, config_dict, free_port, make_config, wait_until

SYSTEM_ID = "bridge"


class FleetSim(SimSmsc):
    """The simulator, counting the binds of the system_id open at once (by instance)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.owner: dict[object, str] = {}
        self.max_binds = 0

    def _open(self) -> list[Any]:
        return [s for s in self._sessions if s.mode and not s.closing and s.system_id == SYSTEM_ID]

    def _on_bind(self, sess: Any, pdu: Any, out: list[bytes], now: float) -> None:
        super()._on_bind(sess, pdu, out, now)
        if sess.mode:
            self.owner[sess] = pdu.body.system_type
            self.max_binds = max(self.max_binds, len(self._open()))

    def binds_by_owner(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for s in self._open():
            name = self.owner.get(s, "?")
            out[name] = out.get(name, 0) + 1
        return out


async def start_sim(tmp: Path) -> FleetSim:
    sim = FleetSim(
        replace(make_config(tmp).sim, port=free_port(), control_port=free_port(),
                receipt_delay_ms=20)
    )  # fmt: skip
    await sim.start()
    return sim


def instance(
    tmp: Path, name: str, dsn: str, sim: SimSmsc, *, binds: int = 1, **overrides: Any
) -> DaemonProcess:
    home = tmp / name
    home.mkdir()
    cfg = config_dict(
        home,
        store={"engine": "postgres", "dsn": dsn},
        sim={"enabled": False, "port": sim.port},
        smscs=[{"port": sim.port, "window": 10, "binds": binds, "system_type": name}],
        **overrides,
    )
    return DaemonProcess(home, cfg)


async def migrate(d: DaemonProcess) -> None:
    """`smpp-bridge db migrate` (off the event loop: a proxy in this process may carry it)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "db", "migrate", "--config", str(d.path),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:  # bounded: a daemon a failed test left behind may hold the migration lock
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
    except TimeoutError:
        proc.kill()
        raise AssertionError("db migrate did not finish within 60 s") from None
    assert proc.returncode == 0, out.decode()


async def readyz(port: int, timeout: float = 3.0) -> tuple[int, dict[str, Any]] | None:
    """(status, body) of GET /readyz, or None when it did not answer within `timeout`."""
    try:
        async with (
            aiohttp.ClientSession() as s,
            s.get(
                f"http://127.0.0.1:{port}/readyz", timeout=aiohttp.ClientTimeout(total=timeout)
            ) as r,
        ):
            return r.status, await r.json()
    except (TimeoutError, aiohttp.ClientError, OSError):
        return None


async def wait_http(d: DaemonProcess, timeout: float = 30.0) -> None:
    async def up() -> bool:
        assert d.proc is not None and d.proc.poll() is None, d.log.read_text()[-3000:]
        return await readyz(d.port, 1.0) is not None

    await wait_until(up, timeout, 0.1)


class PartitionProxy:
    """TCP between one instance and PostgreSQL. `cut()` is a network partition: nothing passes
    either way and the instance's side is never closed (no RST, no FIN: only time-outs tell);
    with `server_notices`, the server's side is closed, as the server does once its TCP
    keepalives fire (what the README asks operators to configure). `heal()` lets new
    connections through again."""

    def __init__(self, dsn: str) -> None:
        u = urlparse(dsn)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 5432
        self.listen_port = free_port()
        self.dsn = dsn.replace(f"{u.hostname}:{u.port}", f"127.0.0.1:{self.listen_port}")
        self.cut_off = False
        self._server: asyncio.Server | None = None
        self._pairs: list[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.listen_port)

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        if self.cut_off:  # a connect during the partition: never answered
            self._pairs.append((cw, cw))
            return
        sr, sw = await asyncio.open_connection(self.host, self.port)
        self._pairs.append((cw, sw))

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    if self.cut_off:
                        continue
                    w.write(data)
                    await w.drain()
                if not self.cut_off:  # a close passes through, as on a working network
                    w.close()

        await asyncio.gather(pump(cr, sw), pump(sr, cw))

    def cut(self, *, server_notices: bool = False) -> None:
        self.cut_off = True
        if server_notices:
            for _cw, sw in self._pairs:
                sw.close()

    def heal(self) -> None:
        self.cut_off = False
        for cw, _sw in self._pairs:  # the instance's old sockets are dead for good
            cw.transport.abort()
        self._pairs.clear()

    async def stop(self) -> None:
        for cw, sw in self._pairs:
            cw.close()
            sw.close()
        if self._server is not None:
            self._server.close()


# -- findings -------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_workers_mode_instance_is_ready_while_another_instance_holds_the_bind(
    tmp_path: Path, pg_dsn: str
) -> None:
    """One bind for the fleet, held by B; A runs one acceptor process. Before: A's /readyz said
    503 "no SMSC bound" for ever, from its own owner's row alone."""
    sim = await start_sim(tmp_path)
    b = instance(tmp_path, "inst-b", pg_dsn, sim)
    a = instance(tmp_path, "inst-a", pg_dsn, sim, server={"workers": 1})
    try:
        await migrate(b)
        b.start()
        await b.wait_ready(30)
        await wait_until(lambda: sim.binds_by_owner() == {"inst-b": 1}, 20)
        a.start()
        await wait_http(a)
        await asyncio.sleep(2.5)  # the acceptor has read the fleet's heartbeats
        seen = [await readyz(a.port) for _ in range(10)]
        assert sim.binds_by_owner() == {"inst-b": 1}
        assert all(r is not None and r[0] == 200 for r in seen), seen
    finally:
        a.stop()
        b.stop()
        await sim.stop()


@pytest.mark.slow
async def test_readyz_answers_not_ready_during_a_partition_from_the_database(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Before: no answer within 10 s (the ping waits out command_timeout=60 s)."""
    sim = await start_sim(tmp_path)
    proxy = PartitionProxy(pg_dsn)
    await proxy.start()
    a = instance(tmp_path, "inst-a", proxy.dsn, sim)
    try:
        await migrate(a)
        a.start()
        await a.wait_ready(30)
        proxy.cut(server_notices=True)
        started = time.monotonic()
        # The coordinator knows within poll + op time-out (~4 s) and unbinds; /readyz must say
        # so, not hang on a store ping sent into the void.
        answer = await readyz(a.port, 10.0)
        took = time.monotonic() - started
        assert answer is not None and answer[0] == 503, (answer, took)
    finally:
        proxy.heal()
        a.stop()
        await proxy.stop()
        await sim.stop()


async def test_two_instances_left_at_one_number_are_told_in_the_log(
    tmp_path: Path, pg_dsn: str
) -> None:
    """server.instances 2, and SMPP_BRIDGE_INSTANCE forgotten on both: each draws from lane 0
    of 2, and the one that started second says so."""
    sim = await start_sim(tmp_path)
    fleet = {"server": {"instances": 2, "instance": 0}}
    a = instance(tmp_path, "inst-a", pg_dsn, sim, **fleet)
    b = instance(tmp_path, "inst-b", pg_dsn, sim, **fleet)
    try:
        await migrate(a)
        a.start()
        await a.wait_ready(30)
        b.start()
        await wait_http(b)
        warning = "server.instance 0 (SMPP_BRIDGE_INSTANCE) is also used by another live instance"
        await wait_until(lambda: warning in b.log.read_text(), 10)
        for d in (a, b):
            assert "concatenation references: lane 0 of 2" in d.log.read_text()
        assert warning not in a.log.read_text()
    finally:
        a.stop()
        b.stop()
        await sim.stop()
