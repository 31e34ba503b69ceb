"""Batcher: flush by size or delay; waiters hear only after their own flush commits or fails."""

from __future__ import annotations

import asyncio
import gc
import subprocess
import sys
import time
from typing import Any

import pytest

from bridge.pipeline.batcher import Batcher


class Sink:
    """A flush target that records batches and can be held or made to fail."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.done: list[list[Any]] = []
        self.gate: asyncio.Event | None = None
        self.fail_if: Any = None

    async def __call__(self, items: list[Any]) -> None:
        self.batches.append(list(items))
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_if is not None and self.fail_if in items:
            raise ValueError(f"bad item in {items}")
        self.done.append(list(items))


async def test_flush_by_size() -> None:
    sink = Sink()
    b: Batcher[int] = Batcher(sink, max_items=3, max_delay_s=10.0)
    futs = [b.add(i) for i in range(3)]
    assert b.pending == 0  # the third add started the flush at once
    await asyncio.wait_for(asyncio.gather(*futs), 1.0)
    assert sink.batches == [[0, 1, 2]]
    assert (b.flushes, b.items) == (1, 3)
    fut = b.add(3)
    await asyncio.sleep(0.02)
    assert not fut.done() and b.pending == 1  # below the size: waits for the (long) delay
    await b.drain()
    assert fut.done() and sink.batches == [[0, 1, 2], [3]]


async def test_flush_by_delay() -> None:
    sink = Sink()
    b: Batcher[str] = Batcher(sink, max_items=100, max_delay_s=0.03)
    t0 = time.monotonic()
    futs = [b.add("a"), b.add("b")]
    await asyncio.sleep(0)
    assert sink.batches == []
    await asyncio.wait_for(asyncio.gather(*futs), 1.0)
    assert time.monotonic() - t0 >= 0.025
    assert sink.batches == [["a", "b"]]
    # A new item after a flush starts a new timer.
    await asyncio.wait_for(b.submit("c"), 1.0)
    assert sink.batches == [["a", "b"], ["c"]]


async def test_size_flush_cancels_the_timer() -> None:
    sink = Sink()
    b: Batcher[int] = Batcher(sink, max_items=2, max_delay_s=0.01)
    first = b.add(1)
    await asyncio.wait_for(asyncio.gather(first, b.add(2)), 1.0)
    await asyncio.sleep(0.03)  # the old timer must not fire an empty or duplicate flush
    assert sink.batches == [[1, 2]]
    assert b.flushes == 1


async def test_waiters_resolve_only_after_their_flush_completes() -> None:
    sink = Sink()
    sink.gate = asyncio.Event()
    b: Batcher[int] = Batcher(sink, max_items=2, max_delay_s=10.0)
    futs = [b.add(1), b.add(2)]
    await asyncio.sleep(0.02)
    assert sink.batches == [[1, 2]]  # flush started ...
    assert not any(f.done() for f in futs)  # ... but not committed: nobody is told yet
    sink.gate.set()
    await asyncio.wait_for(asyncio.gather(*futs), 1.0)
    assert sink.done == [[1, 2]]


async def test_exception_goes_to_each_waiter_of_that_batch_only() -> None:
    sink = Sink()
    sink.fail_if = "bad"
    b: Batcher[str] = Batcher(sink, max_items=2, max_delay_s=10.0)
    bad_batch = [b.add("x"), b.add("bad")]
    good_batch = [b.add("y"), b.add("z")]
    results = await asyncio.wait_for(
        asyncio.gather(*bad_batch, *good_batch, return_exceptions=True), 1.0
    )
    assert isinstance(results[0], ValueError) and results[0] is results[1]
    assert results[2:] == [None, None]
    assert sink.done == [["y", "z"]]
    assert (b.flushes, b.items) == (1, 2)  # only committed batches count
    # The batcher keeps working after a failed flush.
    await asyncio.wait_for(asyncio.gather(b.add("p"), b.add("q")), 1.0)
    assert sink.done[-1] == ["p", "q"]


async def test_fire_and_forget_failures_are_not_reported_as_unretrieved(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
    try:
        sink = Sink()
        sink.fail_if = 1
        b: Batcher[int] = Batcher(sink, max_items=1, max_delay_s=10.0, name="receipts")
        b.add(1)  # nobody awaits this
        await b.drain()
        gc.collect()
        await asyncio.sleep(0)
        assert unhandled == []
        assert "receipts flush of 1 items failed" in caplog.text
    finally:
        loop.set_exception_handler(None)


async def test_drain_flushes_pending_and_waits_for_flushes_in_progress() -> None:
    sink = Sink()
    sink.gate = asyncio.Event()
    b: Batcher[int] = Batcher(sink, max_items=2, max_delay_s=10.0)
    in_progress = [b.add(1), b.add(2)]
    queued = b.add(3)
    drain = asyncio.create_task(b.drain())
    await asyncio.sleep(0.02)
    assert not drain.done()  # the held flush is still running
    assert sink.batches == [[1, 2], [3]]
    sink.gate.set()
    await asyncio.wait_for(drain, 1.0)
    assert all(f.done() for f in [*in_progress, queued])
    assert b.pending == 0 and b.flushes == 2
    await asyncio.wait_for(b.drain(), 1.0)  # nothing to do: returns at once
    assert len(sink.batches) == 2


async def test_batches_keep_arrival_order() -> None:
    sink = Sink()
    b: Batcher[int] = Batcher(sink, max_items=7, max_delay_s=0.001)
    for i in range(50):
        b.add(i)
        if i % 9 == 0:
            await asyncio.sleep(0)
    await b.drain()
    assert [x for batch in sink.batches for x in batch] == list(range(50))
    assert all(len(batch) <= 7 for batch in sink.batches)


async def test_ordered_runs_one_flush_at_a_time_and_gathers_what_came_meanwhile() -> None:
    """Receipts: a batch must not start before the one before it has ended (on PostgreSQL two in
    flight could commit out of order); what arrives meanwhile goes out together, in order,
    split at the size."""
    sink = Sink()
    sink.gate = asyncio.Event()
    b: Batcher[int] = Batcher(sink, max_items=3, max_delay_s=0.001, ordered=True)
    first = b.add(0)
    await asyncio.sleep(0.01)
    assert sink.batches == [[0]]  # in flight, held
    later = [b.add(i) for i in range(1, 6)]
    await asyncio.sleep(0.01)
    assert sink.batches == [[0]] and b.pending == 5  # none started beside it
    sink.gate.set()
    await asyncio.wait_for(asyncio.gather(first, *later), 1.0)
    assert sink.batches == [[0], [1, 2, 3], [4, 5]]


async def test_ordered_goes_on_after_a_failed_flush() -> None:
    sink = Sink()
    sink.gate = asyncio.Event()
    sink.fail_if = 0
    b: Batcher[int] = Batcher(sink, max_items=10, max_delay_s=0.001, ordered=True)
    bad = b.add(0)
    await asyncio.sleep(0.01)
    good = b.add(1)
    sink.gate.set()
    with pytest.raises(ValueError):
        await asyncio.wait_for(bad, 1.0)
    await asyncio.wait_for(good, 1.0)
    assert sink.done == [[1]]
    await b.drain()
    assert b.pending == 0


@pytest.mark.parametrize(("in_order", "ordered"), [(True, False), (False, True)])
def test_receipts_are_kept_in_order_where_the_store_could_commit_them_out_of_it(
    in_order: bool, ordered: bool
) -> None:
    """PostgreSQL (commits_in_order False) gets one receipts batch at a time; SQLite, whose
    group commit keeps the order, keeps several in flight (ordered cost it receipt latency)."""
    from bridge.pipeline.inbound import Inbound

    class Store:
        commits_in_order = in_order

    assert Inbound(Store(), {})._receipts._ordered is ordered  # type: ignore[arg-type]


async def test_add_many_shares_one_future_resolved_by_the_flush_that_carries_them() -> None:
    """A message's results go in with one call and one future (session 48): it resolves only
    once their batch has committed, and carries the batch's failure like add's futures."""
    sink = Sink()
    sink.gate = asyncio.Event()
    b: Batcher[int] = Batcher(sink, max_items=100, max_delay_s=0.001)
    one = b.add(0)
    many = b.add_many([1, 2, 3])
    await asyncio.sleep(0.02)
    assert sink.batches == [[0, 1, 2, 3]]  # in arrival order, in one flush
    assert not many.done()  # the flush has not committed yet
    sink.gate.set()
    await asyncio.wait_for(asyncio.gather(one, many), 1.0)
    assert (b.flushes, b.items) == (1, 4)

    sink.fail_if = 5
    failed = b.add_many([4, 5])
    with pytest.raises(ValueError, match="bad item"):
        await asyncio.wait_for(failed, 1.0)
    assert b.add_many([]).done()


async def test_add_many_on_an_ordered_batcher_resolves_after_every_slice() -> None:
    """An ordered batcher may cut the items over two flushes: the future waits for both."""
    sink = Sink()
    b: Batcher[int] = Batcher(sink, max_items=2, max_delay_s=0.001, ordered=True)
    sink.gate = asyncio.Event()
    fut = b.add_many([1, 2, 3])
    await asyncio.sleep(0.02)
    assert sink.batches == [[1, 2]] and not fut.done()
    sink.gate.set()
    await asyncio.wait_for(fut, 1.0)
    assert sink.done == [[1, 2], [3]]


async def test_items_do_not_ask_for_the_running_loop_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each `asyncio.get_running_loop()` is a getpid() system call on Python 3.11: the batcher
    keeps the loop (`aio.running`) instead of asking for it per item (the owner's results and
    receipts batchers took several per message)."""
    calls = 0
    real = asyncio.get_running_loop

    def counting() -> asyncio.AbstractEventLoop:
        nonlocal calls
        calls += 1
        return real()

    sink = Sink()
    b: Batcher[int] = Batcher(sink, max_items=1000, max_delay_s=0.001)
    monkeypatch.setattr(asyncio, "get_running_loop", counting)
    futs = [b.add(i) for i in range(50)] + [b.add_many([100, 101])]
    await asyncio.wait_for(asyncio.gather(*futs), 1.0)
    futs = [b.add(i) for i in range(50)]
    await asyncio.wait_for(asyncio.gather(*futs), 1.0)
    assert sink.done == [[*range(50), 100, 101], list(range(50))]
    assert calls <= 1


def test_a_batcher_used_again_under_a_later_loop_takes_that_loop() -> None:
    """The kept loop is checked to be running: a batcher used under a loop that has ended (a
    test's, a restart in process) makes its futures, timers and flushes on the new one."""
    sink = Sink()
    b: Batcher[int] = Batcher(sink, max_items=1000, max_delay_s=0.001)

    async def one_round(item: int) -> None:
        await asyncio.wait_for(b.add(item), 1.0)
        await asyncio.wait_for(b.add_many([item + 1]), 1.0)

    asyncio.run(one_round(1))
    asyncio.run(one_round(10))
    assert sink.done == [[1], [2], [10], [11]]


async def test_add_call_is_told_inside_the_flush_that_committed_its_item() -> None:
    """No future and no loop hop per item: the call comes before anything the flush's commit
    scheduled (a future's done-callback ran one loop iteration later)."""
    told: list[tuple[str, BaseException | None]] = []
    loop = asyncio.get_running_loop()

    async def flush(items: list[str]) -> None:
        loop.call_soon(told.append, ("next iteration", None))

    b: Batcher[str] = Batcher(flush, max_items=100, max_delay_s=0.0)
    b.add_call("a", lambda exc: told.append(("a", exc)))
    b.add_many_call(["b", "c"], lambda exc: told.append(("bc", exc)))  # one call for both
    await b.drain()
    await asyncio.sleep(0)
    assert told == [("a", None), ("bc", None), ("next iteration", None)]
    assert (b.flushes, b.items) == (1, 3)


async def test_add_call_is_told_a_failed_or_cancelled_flush() -> None:
    sink = Sink()
    sink.fail_if = 2
    b: Batcher[int] = Batcher(sink, max_items=100, max_delay_s=0.0)
    told: list[BaseException | None] = []
    b.add_call(1, told.append)
    b.add_many_call([2, 3], told.append)
    await b.drain()
    assert len(told) == 2 and all(isinstance(e, ValueError) for e in told)

    sink.fail_if, sink.gate = None, asyncio.Event()
    b.add_call(4, told.append)
    await asyncio.sleep(0.01)  # the flush waits at its gate
    for task in list(b._inflight):
        task.cancel()
    await asyncio.sleep(0.01)
    assert isinstance(told[-1], asyncio.CancelledError)


async def test_a_failing_call_does_not_keep_the_others_from_being_told() -> None:
    b: Batcher[int] = Batcher(Sink(), max_items=100, max_delay_s=0.0)
    told: list[int] = []

    def bad(_exc: BaseException | None) -> None:
        raise RuntimeError("a callback's fault")

    b.add_call(1, bad)
    b.add_call(2, lambda _exc: told.append(2))
    fut = b.add(3)
    await b.drain()
    assert told == [2] and fut.done() and fut.exception() is None


def test_add_many_call_refuses_an_ordered_batcher() -> None:
    b: Batcher[int] = Batcher(Sink(), ordered=True)
    with pytest.raises(ValueError, match="ordered"):
        b.add_many_call([1, 2], lambda _exc: None)


DRAIN_AFTER_A_FLUSH_ENDED = """
import asyncio
from bridge.pipeline.batcher import Batcher

async def main():
    async def flush(items):
        pass
    b = Batcher(flush, max_items=1, max_delay_s=1.0)
    await b.add(0)  # the flush ended in the step that woke us: its done callback still queued
    await b.drain()
    print("drained", b.pending)

asyncio.run(main())
"""


def test_drain_returns_when_a_flush_ended_in_the_step_that_woke_the_caller() -> None:
    """From Python 3.12, `gather` of ended tasks completes without yielding to the loop, so a
    drain that looped until the tasks' done callbacks emptied the set spun for ever, holding
    the event loop (a daemon's stop hung on it). In a child interpreter: a spinning loop
    cannot be cancelled, a process can be ended."""
    out = subprocess.run(
        [sys.executable, "-c", DRAIN_AFTER_A_FLUSH_ENDED],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0 and out.stdout.strip() == "drained 0", out
