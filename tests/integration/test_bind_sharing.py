"""Bind ownership across instances: the connector's bind gate (against the real simulator) and the
PostgreSQL coordinator that implements it with advisory locks (against a real server).

The guarantee under test: across every instance, no more binds of an SMSC are open than its
configured count; a slot held by an instance that stops or dies goes to another within a poll;
slots spread out again when an instance joins.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import asyncpg
import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge.sim.server import SimSmsc  # noqa: E402
from bridge.smpp import constants as C  # noqa: E402
from bridge.smpp.codec import ShortMessage  # noqa: E402
from bridge.smpp.connector import Connector  # noqa: E402
from bridge.store.postgres import PostgresStore  # noqa: E402
from bridge.store.postgres_coord import Coordinator, slot_groups  # noqa: E402
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


async def no_deliver(name: str, body: ShortMessage) -> int:
    return C.ESME_ROK


class Gate:
    """A gate the test steers: the slots in `allowed` may be bound."""

    def __init__(self, allowed: set[int]) -> None:
        self.allowed = allowed
        self.asked: Counter[int] = Counter()

    async def acquire(self, slot: int) -> bool:
        self.asked[slot] += 1
        return slot in self.allowed

    def keep(self, slot: int) -> bool:
        return slot in self.allowed


def bound(sim: SimSmsc) -> int:
    return sum(1 for b in sim.binds() if b["mode"] != "unbound")


async def test_connector_opens_only_the_slots_its_gate_grants(tmp_path: Path) -> None:
    sim_port = free_port()
    cfg = make_config(
        tmp_path,
        sim={"port": sim_port, "control_port": free_port(), "receipt_delay_ms": 0},
        smscs=[{"port": sim_port, "binds": 3, "window": 5, "reconnect_min_s": 0.1}],
    )
    sim = SimSmsc(replace(cfg.sim, port=sim_port))
    await sim.start()
    connector = Connector(cfg.smscs[0], no_deliver)
    gate = Gate({0, 2})
    connector.bind_gate = gate
    await connector.start()
    try:
        await eventually(lambda: bound(sim) == 2)
        await asyncio.sleep(1.2)  # slot 1 asked again at its poll, still refused
        assert bound(sim) == 2 and gate.asked[1] >= 2
        assert connector.snapshot()["binds"]["transceiver"] == {"configured": 3, "up": 2}

        # Slot 2 is taken away while messages are in flight: the bind drains and unbinds, and
        # every message still goes out (on the bind that stays).
        def sm(i: int) -> list[ShortMessage]:
            return [ShortMessage(source_addr="S", destination_addr="861", short_message=b"%d" % i)]

        sends = [asyncio.create_task(connector.send_message(sm(i))) for i in range(200)]
        await asyncio.sleep(0.01)
        gate.allowed.discard(2)
        outcomes = await asyncio.gather(*sends)
        assert Counter(o[0].kind for o in outcomes) == {"ok": 200}
        await eventually(lambda: bound(sim) == 1, 3)
        # A planned hand-over, not a fault: no reconnect counted, no last error (an operator
        # saw RECONNECTS 1 and "bind 2 lost: unbound" each time another instance started).
        await asyncio.sleep(0.2)
        snap = connector.snapshot()
        assert (snap["reconnects"], snap["last_error"]) == (0, None), snap
        gate.allowed |= {1, 2}
        await eventually(lambda: bound(sim) == 3, 5)
    finally:
        await connector.stop(1)
        await sim.stop()


async def test_the_tps_limit_follows_the_binds_an_instance_holds(tmp_path: Path) -> None:
    """`tps` is the SMSC's limit for the fleet, like `binds`: an instance holding one of two
    binds sends at half of it, and at all of it once it holds both (measured at the SMSC)."""
    sim_port = free_port()
    cfg = make_config(
        tmp_path,
        sim={"port": sim_port, "control_port": free_port(), "receipt_delay_ms": 0},
        smscs=[{"port": sim_port, "binds": 2, "window": 10, "tps": 40, "reconnect_min_s": 0.1}],
    )
    sim = SimSmsc(replace(cfg.sim, port=sim_port))
    await sim.start()
    connector = Connector(cfg.smscs[0], no_deliver)
    gate = Gate({0})
    connector.bind_gate = gate
    await connector.start()

    def sm(i: int) -> list[ShortMessage]:
        return [ShortMessage(source_addr="S", destination_addr="861", short_message=b"%d" % i)]

    async def rate(n: int) -> tuple[float, float]:
        """(at most, at least) the rate n messages went at: by the wall, and by the time the
        loop had a CPU when it asked (the pacer grants nothing for the windows a loaded machine
        keeps it from running: 26/s of a 40/s share by the wall at load ~20)."""
        clock = Stopwatch()
        outcomes = await asyncio.gather(*(connector.send_message(sm(i)) for i in range(n)))
        assert {o[0].kind for o in outcomes} == {"ok"}
        return n / clock.wall(), n / clock.unloaded()

    try:
        await eventually(lambda: bound(sim) == 1)
        await eventually(lambda: connector.snapshot()["tps_limit"] == 20)
        assert connector.snapshot()["tps_configured"] == 40  # the fleet's, beside this share
        await rate(20)  # the throttler's first period starts full: measure the steady pace
        half, half_unloaded = await rate(40)
        assert 14 < half_unloaded and half < 24, (half, half_unloaded)
        gate.allowed.add(1)
        await eventually(lambda: bound(sim) == 2)
        # The SMSC counts a bind once it answers; the connector counts it once it reads that
        # answer, a moment later.
        await eventually(lambda: connector.snapshot()["tps_limit"] == 40)
        await rate(40)
        full, full_unloaded = await rate(80)
        assert 30 < full_unloaded and full < 48, (full, full_unloaded)
        # Without a gate (one instance) the whole limit, whatever is bound.
        gate.allowed.discard(1)
        await eventually(lambda: bound(sim) == 1, 5)
        await eventually(lambda: connector.snapshot()["tps_limit"] == 20)
        connector.bind_gate = None
        assert connector.tps_share() == 40
    finally:
        await connector.stop(1)
        await sim.stop()


def test_slot_groups_share_transmitters_and_receivers_separately() -> None:
    assert slot_groups("transceiver", 3) == [[0, 1, 2]]
    assert slot_groups("transmitter", 1) == [[0]]
    assert slot_groups("transmitter_receiver", 2) == [[0, 1], [2, 3]]


@pytest.fixture
async def dsn(pg_dsn: str) -> str:
    store = PostgresStore(pg_dsn, min_size=1, max_size=1)
    await store.open()  # the schema, as a daemon would have it
    await store.close()
    return pg_dsn


def coord(dsn: str, name: str) -> Coordinator:
    # No background rebalancing during a test (a long poll): the test calls rebalance() itself.
    # A slot whose holder's session died is taken 1 s after it was seen free (orphan_s).
    return Coordinator(dsn, name, poll_s=60, grace_s=0.6, orphan_s=1.0)


async def test_slots_are_shared_fairly_and_never_twice(dsn: str) -> None:
    a, b = coord(dsn, "a"), coord(dsn, "b")
    await a.start()
    ga = a.gate("s", "transceiver", 2)
    assert [await ga.acquire(0), await ga.acquire(1)] == [True, True]  # alone: both
    await b.start()
    gb = b.gate("s", "transceiver", 2)
    try:
        assert [await gb.acquire(0), await gb.acquire(1)] == [False, False]  # held by a
        # a is over its share while b has none: a gives one slot up, after its bind closed.
        await a.rebalance()
        assert (ga.keep(0), ga.keep(1)) == (True, False)
        assert await gb.acquire(1) is False  # still locked until a's bind is down
        assert await ga.acquire(1) is False  # a's connector asks again: the lock goes
        assert await gb.acquire(1) is True
        assert await ga.acquire(1) is False  # within its share now: not taken back
        await a.rebalance()
        await b.rebalance()
        assert (ga.keep(0), ga.keep(1), gb.keep(0), gb.keep(1)) == (True, False, False, True)
    finally:
        await a.stop()
        await b.stop()


async def test_a_stopped_or_dead_instance_releases_its_slots(dsn: str) -> None:
    a, b, c = coord(dsn, "a"), coord(dsn, "b"), coord(dsn, "c")
    await a.start()
    await b.start()
    ga, gb = a.gate("s", "transceiver", 2), b.gate("s", "transceiver", 2)
    assert await ga.acquire(0) is True
    assert await ga.acquire(1) is False  # b is live: a's share is one (grace not yet over)
    assert await gb.acquire(1) is True
    await a.stop()  # a stops: its slot is free at once, and b is alone
    assert await gb.acquire(0) is True
    await c.start()
    gc = c.gate("s", "transceiver", 2)
    try:
        assert await gc.acquire(0) is False
        # b's coordination connection is killed server-side (as if its process died).
        admin = await asyncpg.connect(dsn)
        try:
            pids = [
                r[0]
                for r in await admin.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = 'smpp-bridge b'"
                )
            ]
            assert len(pids) == 1
            await admin.execute("SELECT pg_terminate_backend($1)", pids[0])
        finally:
            await admin.close()
        await eventually(lambda: not gb.keep(0) and not gb.keep(1), 2)
        await eventually(lambda: b.healthy, 5)  # b reconnects with back-off ...
        assert b.held("s") == []  # ... holding nothing until its connectors ask again,
        assert await gb.acquire(0) is False  # and nothing at all for a while (a server restart
        # drops every instance's locks at once: all must have unbound before anyone rebinds)
        assert await gc.acquire(0) is False  # c saw b hold it: b's process may still be bound
        await asyncio.sleep(1.1)  # orphan_s: b has unbound by now
        assert await gc.acquire(0) is True
        assert await gc.acquire(1) is False  # b is live again: c's share is one ...
        await asyncio.sleep(0.7)
        assert await gc.acquire(1) is True  # ... until nobody took the other within the grace
        assert await gb.acquire(0) is False and await gb.acquire(1) is False
    finally:
        await b.stop()
        await c.stop()


async def test_a_released_smsc_frees_its_slots_at_once(dsn: str) -> None:
    a, b = coord(dsn, "a"), coord(dsn, "b")
    await a.start()
    ga = a.gate("s", "transmitter_receiver", 1)
    assert [await ga.acquire(0), await ga.acquire(1)] == [True, True]  # one tx, one rx group
    await b.start()
    try:
        gb = b.gate("s", "transmitter_receiver", 1)
        assert await gb.acquire(0) is False
        await a.release("s")  # a reload removed the SMSC from a's configuration
        assert (ga.keep(0), ga.keep(1)) == (False, False)
        assert [await gb.acquire(0), await gb.acquire(1)] == [True, True]
    finally:
        await a.stop()
        await b.stop()


async def test_grace_lets_an_instance_take_more_than_its_share(dsn: str) -> None:
    a, b = coord(dsn, "a"), coord(dsn, "b")
    await a.start()
    await b.start()
    try:
        ga = a.gate("s", "transceiver", 2)
        assert await ga.acquire(0) is True
        assert await ga.acquire(1) is False  # b might want it ...
        await asyncio.sleep(0.7)
        assert await ga.acquire(1) is True  # ... but did not take it within the grace
    finally:
        await a.stop()
        await b.stop()


async def test_work_notifications_wake_the_other_instances(dsn: str) -> None:
    woken: Counter[str] = Counter()
    a = Coordinator(dsn, "a", on_work=lambda: woken.update(["a"]))
    b = Coordinator(dsn, "b", on_work=lambda: woken.update(["b"]))
    await a.start()
    await b.start()
    try:
        for _ in range(50):
            a.notify_work()  # coalesced: a burst of accepts is a few notifications
        await eventually(lambda: woken["b"] >= 1, 2)
        await asyncio.sleep(0.1)
        assert woken["a"] == 0  # not its own
        assert 1 <= woken["b"] <= 3
    finally:
        await a.stop()
        await b.stop()
