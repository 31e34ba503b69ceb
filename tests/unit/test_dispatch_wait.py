"""A claimed message holds its dispatch slot until its results are committed (the crash bound,
`Dispatcher._send`), and frees it from inside the flush that committed them: its task does not
wait for that commit (session 50; it awaited a future, `_settled`, and before that gather)."""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.config import SmscConfig
from bridge.pipeline.batcher import Batcher
from bridge.pipeline.dispatcher import Dispatcher, _Flight
from bridge.smpp.router import Router
from bridge.store.models import Release, SubmitResult, WorkMessage, WorkSegment
from tests.connectors import StandIn

NOW = 1_800_000_000_000


class _Store:
    """Claims hand out `messages` once; record_submits notes, at its commit, how many messages
    the dispatcher had in flight one loop iteration later."""

    def __init__(self, messages: list[WorkMessage]) -> None:
        self.messages = messages
        self.recorded: list[SubmitResult] = []
        self.inflight_after: list[int] = []
        self.d: Dispatcher | None = None
        self.claim_reports = 0  # Store.claim_reports: no claim here rolls anything up

    async def claim(self, *_a: Any, **_kw: Any) -> list[WorkMessage]:
        out, self.messages = self.messages, []
        return out

    async def keep_route_table(self, *_a: Any) -> None:
        return None

    async def record_submits(self, results: list[Any], *_a: Any, **_kw: Any) -> int:
        self.recorded.extend(results)
        d = self.d
        assert d is not None
        asyncio.get_running_loop().call_soon(lambda: self.inflight_after.append(d.inflight))
        return 0


def _msg(mid: str) -> WorkMessage:
    return WorkMessage(mid, "acc", "+8613800138000", None, 0, None, 0,
                       (WorkSegment(1, 1, 0, b"x", b"", 0),))  # fmt: skip


async def test_a_message_holds_its_slot_until_the_commit_and_frees_it_in_that_flush() -> None:
    store = _Store([_msg("m0"), _msg("m1")])
    cfg = SmscConfig(name="t1", system_id="t", password="t", window=10)
    d = Dispatcher(store, {"t1": StandIn()}, Router([], ["t1"]), {"t1": cfg},  # type: ignore[arg-type]
                   instance="inst-1", idle_s=0.01, clock=lambda: NOW / 1000)  # fmt: skip
    store.d = d
    gate = asyncio.Event()

    async def held_flush(items: list[Any]) -> None:
        await gate.wait()
        await Dispatcher._flush_results(d, items)

    d._results = Batcher(held_flush, max_items=1000, max_delay_s=0.0)
    task = asyncio.create_task(d.run())
    try:
        for _ in range(100):
            await asyncio.sleep(0.005)
            if not d._tasks:
                break
        # Both sent, their tasks ended: still in flight (and renewed) until the commit.
        assert (d._tasks, d.inflight, sorted(d._inflight)) == ({}, 2, ["m0", "m1"])
        assert d.capacity() == 2 * 10 - 2
        gate.set()
        for _ in range(100):
            await asyncio.sleep(0.005)
            if store.inflight_after:
                break
        # Freed inside the commit's flush: one loop iteration later none is in flight (the
        # task's wake-up and its done-callback took two more).
        assert store.inflight_after == [0]
        assert {r.message_id for r in store.recorded} == {"m0", "m1"}
    finally:
        await d.stop(0.5)
        task.cancel()


async def test_a_failed_results_flush_frees_the_slot() -> None:
    """As the wait for the results did (gather's return_exceptions): the batcher logged it."""
    cfg = SmscConfig(name="t1", system_id="t", password="t")
    d = Dispatcher(_Store([]), {}, Router([], ["t1"]), {"t1": cfg}, instance="inst-1")  # type: ignore[arg-type]

    async def failing(_items: list[Any]) -> None:
        raise ValueError("not recorded")

    d._results = Batcher(failing, max_items=1000, max_delay_s=0.0)
    d._inflight["m0"], d._flying = 1, 1  # as run() counts a claimed message
    flight = _Flight(d, "m0")
    flight.add(Release("m0", NOW, count_attempt=False))
    flight.add(SubmitResult("m0", 1, "sent", "t1", "a", "a", at=NOW),
               SubmitResult("m0", 2, "sent", "t1", "b", "b", at=NOW))  # fmt: skip
    flight.settled(None)  # the task's share
    assert d.inflight == 1
    await d._results.drain()
    assert (d.inflight, d._inflight) == (0, {})
