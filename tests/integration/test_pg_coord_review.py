"""Review of the PostgreSQL scale-out coordination: the failure modes that let more binds (or more
submits per second) reach a carrier than it allows.

- An instance cut off from the database (no RST: a partition) while one of its coordination
  queries is on the wire must still notice within its ping budget and give its slots up; a
  query that never answers must not hold the coordination lock (and so the ping) forever.
- A slot freed because its holder's *session* died (its process may be alive, still bound, and
  needs seconds to notice and unbind) is not bound by another instance before that holder had
  time to unbind; a slot freed by a clean stop (connectors already unbound) is taken at once.
- A connector's TPS share that shrinks (a bind handed over) applies to the submits of the last
  period too: the new limit does not start from an empty history, and submits already waiting
  do not keep the old rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

import asyncpg
import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge.smpp.connector import Connector  # noqa: E402
from bridge.store.postgres import PostgresStore  # noqa: E402
from bridge.store.postgres_coord import Coordinator  # noqa: E402
from bridge.store.postgres_pipeline import NS_LANE  # noqa: E402
from tests import pg_reuse  # noqa: E402
from tests.e2e.harness import free_port, make_config  # noqa: E402
from tests.sched_clock import Stopwatch  # noqa: E402

pg_dsn = pg_reuse.migrated_pg_dsn  # a store on the worker's migrated database (tests/pg_reuse.py)


async def eventually(cond: Callable[[], bool], within_s: float = 5.0) -> None:
    deadline = time.monotonic() + within_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class BlackholeProxy:
    """TCP between a client and PostgreSQL that can drop everything without closing (a network
    partition: no RST, no FIN; only time-outs tell)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.blackhole = False
        self.listen_port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._stopped = False

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.listen_port)

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self._writers.append(cw)
        sr, sw = await asyncio.open_connection(self.host, self.port)
        self._writers.append(sw)
        if self._stopped:  # stop() ran while this connection was being opened
            sw.close()
            cw.close()
            return

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    if not self.blackhole:
                        w.write(data)
                        await w.drain()

        await asyncio.gather(pump(cr, sw), pump(sr, cw))

    async def stop(self) -> None:
        # Every socket closed and waited for: one left to the garbage collector raised
        # "Exception ignored in: <socket.socket ...>" in a later test (a failure under -W error).
        self._stopped = True
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.close()
        for w in self._writers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(w.wait_closed(), 2)
        if self._server is not None:
            await self._server.wait_closed()


@pytest.fixture
async def dsn(pg_dsn: str) -> str:
    store = PostgresStore(pg_dsn, min_size=1, max_size=1)
    await store.open()
    await store.close()
    return pg_dsn


async def kill_session(dsn: str, instance: str) -> None:
    admin = await asyncpg.connect(dsn)
    try:
        n = await admin.fetchval(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1",
            f"smpp-bridge {instance}",
        )
        assert n == 1
    finally:
        await admin.close()


async def test_a_partition_during_a_coordination_query_still_gives_the_slots_up(
    dsn: str,
) -> None:
    """Before: the NOTIFY (sent on every accept) hung on the dead link holding the coordination
    lock, so the ping never ran and the binds stayed up for good, while the server (keepalives)
    freed the locks for the other instances."""
    u = urlparse(dsn)
    proxy = BlackholeProxy(u.hostname or "127.0.0.1", u.port or 5432)
    await proxy.start()
    via = dsn.replace(f"{u.hostname}:{u.port}", f"127.0.0.1:{proxy.listen_port}")
    a = Coordinator(via, "a", poll_s=0.5, grace_s=0.5)
    await a.start()
    try:
        ga = a.gate("s", "transceiver", 1)
        assert await ga.acquire(0) is True
        proxy.blackhole = True
        a.notify_work()  # on the wire when the link dies
        await asyncio.sleep(0)
        started = time.monotonic()
        await eventually(lambda: not ga.keep(0), 4.0)
        # poll (0.5 s) + query time-out (1 s), with slack for a loaded machine
        assert time.monotonic() - started < 3.0
        assert await ga.acquire(0) is False  # and nothing while cut off
    finally:
        proxy.blackhole = False
        await a.stop()
        await proxy.stop()


async def test_a_slot_whose_holder_session_died_waits_for_the_holder_to_unbind(dsn: str) -> None:
    """Before: b bound the slot at its next poll after a's session was killed, while a (alive,
    bound) needed up to its detection time plus ~4 s to unbind: two binds on a one-bind SMSC."""
    clock = Clock()
    a = Coordinator(dsn, "a", poll_s=60, grace_s=0.5)
    b = Coordinator(dsn, "b", poll_s=60, grace_s=0.5, orphan_s=10.0, clock=clock)
    await a.start()
    await b.start()
    try:
        ga, gb = a.gate("s", "transceiver", 1), b.gate("s", "transceiver", 1)
        assert await ga.acquire(0) is True
        assert await gb.acquire(0) is False  # b's connector polls: held by a
        await kill_session(dsn, "a")
        await eventually(lambda: not ga.keep(0), 2)
        assert await gb.acquire(0) is False  # free, but its holder may still be bound
        clock.t += 9.9
        assert await gb.acquire(0) is False
        clock.t += 0.2
        assert await gb.acquire(0) is True  # the holder has unbound by now
    finally:
        await a.stop()
        await b.stop()


async def test_a_cleanly_stopped_holder_hands_its_slot_over_at_once(dsn: str) -> None:
    clock = Clock()
    a = Coordinator(dsn, "a", poll_s=60, grace_s=0.5)
    b = Coordinator(dsn, "b", poll_s=60, grace_s=0.5, orphan_s=10.0, clock=clock)
    await a.start()
    await b.start()
    try:
        ga, gb = a.gate("s", "transceiver", 1), b.gate("s", "transceiver", 1)
        assert await ga.acquire(0) is True
        assert await gb.acquire(0) is False
        await a.stop()  # its connectors stopped first: nothing of a's is bound
        got = False
        # 30 s (was 2, short for a loaded machine): under poll_s, and the clock of orphan_s stands
        deadline = time.monotonic() + 30
        while not got and time.monotonic() < deadline:  # the release notice is asynchronous
            got = await gb.acquire(0)
            await asyncio.sleep(0.05)
        assert got
    finally:
        await b.stop()


def test_a_shrinking_tps_share_counts_the_submits_already_sent(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, smscs=[{"port": free_port(), "binds": 2, "tps": 40}])
    connector = Connector(cfg.smscs[0], lambda *_: asyncio.sleep(0, 0))  # type: ignore[arg-type]

    class Up:
        is_bound = True

    class Gate:
        async def acquire(self, slot: int) -> bool:
            return True

        def keep(self, slot: int) -> bool:
            return True

    async def go() -> int:
        connector.bind_gate = Gate()
        b0, b1 = connector._tx
        b0.proto = b1.proto = Up()  # type: ignore[assignment]
        connector._share_tps()
        assert connector.tps_share() == 40
        throttler = connector._throttler
        assert throttler is not None
        for _ in range(8):  # the whole rate, a moment (two windows of 0.1 s)
            await throttler.acquire()
        clock = Stopwatch()
        waiting = [asyncio.create_task(throttler.acquire()) for _ in range(40)]  # queued
        await asyncio.sleep(0.05)
        b1.proto = None  # bind 1 handed over to another instance: half the rate
        connector._share_tps()
        assert connector.tps_share() == 20
        current = connector._throttler
        assert current is throttler
        later = [asyncio.create_task(current.acquire()) for _ in range(40)]
        # 1.7 s in the time the loop had a CPU when it asked: the pacer grants nothing for
        # the windows a loaded machine kept it from running (26 of 35 in a wall 1.7 s at load
        # ~15), so the count is the rate's only where those are not counted.
        while (left := 1.7 - clock.unloaded()) > 0:  # noqa: ASYNC110 (a clock, not an event)
            await asyncio.sleep(left)
        sent = sum(t.done() for t in waiting + later)
        for t in waiting + later:
            t.cancel()
        return sent

    # The submits of the last window count against the new limit, and the waiters already
    # queued get the new rate too: ~2 in the first 0.05 s at 40/s, then 20/s, ~35 in 1.7 s. A
    # fresh limiter beside the old waiters sent ~70 (the old rate plus the new one).
    assert 28 <= asyncio.run(go()) <= 38


def test_claims_are_taken_back_only_after_a_cut_off_instance_has_unbound() -> None:
    """A live instance cut off from the database stops heartbeating at once, notices within a
    poll plus a query time-out and has unbound by `orphan_s` after its last heartbeat; the others
    take its claims back DEAD_AFTER_MS after that heartbeat. The second must come later, or a
    message is resent while the first copy may still be going out (it was 5 s, against ~10)."""
    from bridge.store.postgres_pipeline import DEAD_AFTER_MS

    coord = Coordinator("postgresql://unused", "inst-a")  # the daemon's defaults
    assert coord.orphan_s * 1000 < DEAD_AFTER_MS


async def test_a_cancel_of_stop_while_it_waits_for_its_watcher_is_passed_on(dsn: str) -> None:
    """stop() awaited its cancelled watcher under suppress(CancelledError), which also swallowed
    a cancel of the stop itself arriving meanwhile: the caller's cancel was lost and the stop
    went on. Now the cancel ends the stop, and a second stop finishes the job."""
    a = Coordinator(dsn, "a", poll_s=60, grace_s=0.5)
    await a.start()
    stopping = asyncio.create_task(a.stop())
    await asyncio.sleep(0)  # inside stop(): the watcher cancelled, stop waiting for it to end
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    await a.stop()  # the rest of the stop: the connection closed, the locks released
    assert a._conn is None


async def lane_locks(dsn: str) -> list[int]:
    """The server.instance numbers whose lane lock some session holds."""
    admin = await asyncpg.connect(dsn)
    try:
        rows = await admin.fetch(
            "SELECT objid FROM pg_locks WHERE locktype='advisory' AND classid=$1::oid "
            "AND granted ORDER BY objid",
            NS_LANE,
        )
    finally:
        await admin.close()
    return [int(r[0]) for r in rows]


async def test_a_second_live_instance_with_the_same_number_is_told_in_its_log(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Two fleet instances left at one server.instance (SMPP_BRIDGE_INSTANCE forgotten on one)
    draw concatenation references from one lane: worse than no lanes. Nothing used to notice.
    The second says so, and again when the first has gone: then the number is its own."""
    a = Coordinator(dsn, "a", poll_s=0.2, lane=1)
    b = Coordinator(dsn, "b", poll_s=0.2, lane=1)
    c = Coordinator(dsn, "c", poll_s=0.2, lane=2)
    await a.start()
    caplog.set_level("INFO", logger="bridge.coord")
    await b.start()
    await c.start()
    try:
        assert a.lane_held and not b.lane_held and c.lane_held
        assert await lane_locks(dsn) == [1, 2]
        shared = [r for r in caplog.records if "server.instance 1 " in r.getMessage()]
        assert len(shared) == 1 and shared[0].levelname == "WARNING"
        assert "also used by another live instance" in shared[0].getMessage()
        assert not any("server.instance 2" in r.getMessage() for r in caplog.records)
        await asyncio.sleep(0.6)  # polls go by: warned once, not at every poll
        assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1
        await a.stop()
        await eventually(lambda: b.lane_held)
        assert "now used by this instance alone" in caplog.records[-1].getMessage()
    finally:
        await b.stop()
        await c.stop()
        if a.healthy:
            await a.stop()


async def test_without_lanes_no_number_is_locked(dsn: str) -> None:
    a = Coordinator(dsn, "a", poll_s=0.2)
    b = Coordinator(dsn, "b", poll_s=0.2)
    await a.start()
    await b.start()
    try:
        assert a.lane_held and b.lane_held
        assert await lane_locks(dsn) == []
    finally:
        await a.stop()
        await b.stop()
