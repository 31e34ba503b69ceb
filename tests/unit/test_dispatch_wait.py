"""The dispatcher's wait for a message's results future (`dispatcher._settled`): as
`asyncio.gather(fut, return_exceptions=True)` waited, without gather's wrapping future."""

from __future__ import annotations

import asyncio

import pytest

from bridge.pipeline.dispatcher import _settled


async def test_a_failed_or_cancelled_flush_ends_the_wait_quietly() -> None:
    loop = asyncio.get_running_loop()
    failed: asyncio.Future[None] = loop.create_future()
    cancelled: asyncio.Future[None] = loop.create_future()
    waits = [asyncio.create_task(_settled(f)) for f in (failed, cancelled)]
    await asyncio.sleep(0)
    failed.set_exception(OSError("disk I/O error"))
    cancelled.cancel()  # the batcher cancels its waiters when its flush is cancelled
    await asyncio.wait_for(asyncio.gather(*waits), 1.0)
    assert [w.result() for w in waits] == [None, None]


async def test_a_cancel_of_the_waiting_task_propagates_and_cancels_the_future() -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    wait = asyncio.create_task(_settled(fut))
    await asyncio.sleep(0)
    wait.cancel()
    with pytest.raises(asyncio.CancelledError):
        await wait
    assert fut.cancelled()


async def test_a_cancel_that_comes_with_the_result_still_propagates() -> None:
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    wait = asyncio.create_task(_settled(fut))
    await asyncio.sleep(0)
    fut.set_result(None)
    wait.cancel()  # in the same loop iteration as the wake-up
    with pytest.raises(asyncio.CancelledError):
        await wait


async def test_the_task_ends_one_loop_hop_after_its_results() -> None:
    """Gather took two (its done-callback, then the task's wake-up): a slot freed later."""
    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    wait = asyncio.create_task(_settled(fut))
    await asyncio.sleep(0)
    fut.set_result(None)
    await asyncio.sleep(0)
    assert wait.done()
