"""Dispatcher scheduling and recovery edge cases found by a review: a fault in the send path,
no-route back-off, validity passing while a claim holds a message, and a down route's backlog
that must not be claimed ahead of other routes (it is parked; see test_route_parking.py)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from bridge.config import SmscConfig
from bridge.pipeline.dispatcher import Dispatcher
from bridge.smpp.codec import ShortMessage
from bridge.smpp.connector import SubmitOutcome
from bridge.smpp.router import Route, Router
from bridge.store.base import Store

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from tests.connectors import BeforeFirst, Contexts, StandIn, dispatcher  # noqa: E402
from tests.integration.test_store import NOW, accept, account, get, message  # noqa: E402

engine = engines.engine
store = engines.store

WINDOW = 10


class Clock:
    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> float:
        return self.ms / 1000


class SlotWaitConnector(StandIn):
    """Holds each message as if waiting for a window slot (a throttle pause, a full window),
    then accepts every part; records the bodies that left."""

    def __init__(self, name: str = "t1", up: bool = True, clock: Clock | None = None) -> None:
        super().__init__(name, WINDOW)
        self.up = up
        self.clock = clock  # the test's clock: a jump of it is time spent waiting here
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = 0
        self.left: list[str] = []
        self.calls = 0

    async def sending(
        self,
        parts: Sequence[ShortMessage],
        before_first: BeforeFirst,
        deadline: float | None,
        contexts: Contexts,
    ) -> list[SubmitOutcome] | None:
        self.calls += 1
        self.waiting += 1
        called_ms = self.clock.ms if self.clock is not None else 0
        loop = asyncio.get_running_loop()
        try:
            await self.gate.wait()
        finally:
            self.waiting -= 1
        jumped = (self.clock.ms - called_ms) / 1000 if self.clock is not None else 0.0
        if deadline is not None and loop.time() + jumped >= deadline:
            # The connector's contract: a part whose deadline passed while it waited is not
            # sent, nor are those after it (tests/integration/test_smpp_connector.py).
            return [SubmitOutcome(0, "expired", -1, "VALIDITY_EXPIRED", None)] + [
                SubmitOutcome(i, "cancelled", -1, "CANCELLED", None) for i in range(1, len(parts))
            ]
        if before_first is not None:
            await before_first()
        self.left.extend(p.short_message.decode() for p in parts)
        return None


class RaisingConnector(SlotWaitConnector):
    async def sending(
        self,
        parts: Sequence[ShortMessage],
        before_first: BeforeFirst,
        deadline: float | None,
        contexts: Contexts,
    ) -> list[SubmitOutcome] | None:
        self.calls += 1
        raise RuntimeError("unexpected bug in the send path")


def _smsc(name: str = "t1") -> SmscConfig:
    return SmscConfig(name=name, system_id="t", password="t", window=WINDOW)


async def _until(pred: Callable[[], Awaitable[bool]], tries: int = 300) -> bool:
    for _ in range(tries):
        if await pred():
            return True
        await asyncio.sleep(0.01)
    return False


async def test_validity_passing_while_a_claim_holds_the_message_is_not_sent(
    store: Store,
) -> None:
    """A message claimed before its validity ran out waits at the connector (full window,
    throttle pause) until after it: it must end `expired`, not go out with a validity_period
    in the past (the SMSC rejects it, ESME_RINVEXPIRY -> `failed`, or accepts and bills it)."""
    await store.create_account(account())
    await accept(store, message("m0", parts=2, expires_at=NOW + 30_000))
    clock = Clock(NOW)
    conn = SlotWaitConnector(clock=clock)
    conn.gate.clear()
    d = dispatcher(store, conn, idle_s=0.01, clock=clock)
    task = asyncio.create_task(d.run())
    try:

        async def waiting() -> bool:
            return conn.waiting == 1

        assert await _until(waiting)
        clock.ms = NOW + 60_000  # validity passed while it waited for a slot
        conn.gate.set()

        async def settled() -> bool:
            return d.inflight == 0

        assert await _until(settled)
    finally:
        await d.stop(0.5)
        task.cancel()
    rec = await get(store, "m0")
    assert conn.left == [], f"sent after its validity: {conn.left}"
    assert rec.state == "expired"


async def test_an_exception_in_the_send_path_does_not_strand_the_claim(store: Store) -> None:
    """Any unexpected exception between claim and result (a bug in the connector, a callback, a
    bad stored TLV in build_parts) ends the task with nothing recorded and nothing released:
    the message stays `claimed`. On SQLite reclaim() is a no-op, so it stays claimed (and in
    queue_depth) until the process restarts; on PostgreSQL until the 5-minute lease lapses."""
    await store.create_account(account())
    await accept(store, message("m0"))
    conn = RaisingConnector()
    clock = Clock(NOW)
    d = dispatcher(store, conn, idle_s=0.01, clock=clock)
    task = asyncio.create_task(d.run())
    try:

        async def tried() -> bool:
            return conn.calls >= 1 and d.inflight == 0

        assert await _until(tried)
        await asyncio.sleep(0.1)
    finally:
        await d.stop(0.5)
        task.cancel()
    # Housekeeping of a running process, an hour later.
    later = NOW + 3_600_000
    await store.reclaim(later, frozenset())
    await store.sweep(later, 72 * 3_600_000)
    again = await store.claim("inst-1", 10, later, 300_000)
    assert [w.id for w in again] == ["m0"], "the message is stranded in 'claimed'"


async def test_a_backlog_for_a_down_route_does_not_hold_up_other_routes(store: Store) -> None:
    """One route's SMSC is down (no failover: no default route). Claimed and released, its
    backlog went ahead of a later message for a working route every time it came due (every
    other route's latency about N / churn rate, the store rewritten at that rate). Parked by the
    claims instead, it lets a0 through after a few claims, none of it claimed."""
    await store.create_account(account())
    n = 1000
    for i in range(0, n, 500):
        await accept(
            store,
            *(message(f"b{j:05d}", recipient="+4420000000", at=NOW) for j in range(i, i + 500)),
        )
    await accept(store, message("a0", recipient="+8613800138000", at=NOW + 1))
    claimed_before_a0: list[str] = []
    claim = store.claim

    async def watching_claim(*args: object, **kw: object) -> object:
        work = await claim(*args, **kw)  # type: ignore[arg-type]
        if "a0" not in claimed_before_a0:
            ids = [w.id for w in work]
            claimed_before_a0.extend(i for i in ids if i != "a0")
            if "a0" in ids:
                claimed_before_a0.append("a0")
        return work

    store.claim = watching_claim  # type: ignore[method-assign]
    up = SlotWaitConnector("up")
    down = SlotWaitConnector("down", up=False)
    router = Router([Route("+44", ("down",)), Route("+86", ("up",))], [])
    d = Dispatcher(
        store, {"up": up, "down": down}, router, {"up": _smsc("up"), "down": _smsc("down")},
        instance="inst-1", idle_s=0.01, in_flight_windows=2,
        clock=lambda: (NOW + 10) / 1000,
    )  # fmt: skip
    task = asyncio.create_task(d.run())
    try:

        async def a0_sent() -> bool:
            return "a0/1" in up.left

        assert await _until(a0_sent, tries=1000)
    finally:
        await d.stop(0.5)
        task.cancel()
        store.claim = claim  # type: ignore[method-assign]
    churned = len(claimed_before_a0) - 1
    assert churned <= 2 * WINDOW, f"{churned} unroutable claims went ahead of a0"


async def test_a_message_without_a_route_backs_off(store: Store) -> None:
    """Released for want of an up SMSC on its route: 1 s, then 2, 4, ... up to 60 s, so a
    backlog for a down route is not claimed and released every second for ever."""
    from bridge.store.models import Release, WorkMessage, WorkSegment

    down = SlotWaitConnector("down", up=False)
    router = Router([Route("+44", ("down",))], [])
    d = Dispatcher(
        store, {"down": down}, router, {"down": _smsc("down")},
        instance="inst-1", clock=lambda: NOW / 1000,
    )  # fmt: skip
    seen: list[Release] = []
    msg = WorkMessage("m", "acc_a", "+4420000000", None, 0, None, 1,
                      (WorkSegment(1, 1, 0, b"x", b"", 0),))  # fmt: skip
    for _ in range(9):
        await d._send_parts(msg, lambda *items: seen.extend(items))
    assert [r.not_before - NOW for r in seen] == [
        1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000, 60000
    ]  # fmt: skip
    assert not any(r.count_attempt for r in seen)
