"""bridge.aio.wait_event: a cancel that arrives in the same loop iteration as the wake-up or the
time-out still ends the waiting task (Python 3.11's asyncio.wait_for returns instead: CI hung on
it at Daemon.stop, its heartbeat looping on with its cancel spent)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Awaitable, Callable

import pytest

from bridge.aio import cancel_and_wait, idle_wait_s, running, wait_event


async def _loop_until_cancelled(
    wait: Callable[[asyncio.Event], Awaitable[object]], event: asyncio.Event
) -> None:
    """A loop shaped as the daemon's: wait for a wake-up or a time-out, then go round again."""
    while True:
        await wait(event)
        event.clear()
        await asyncio.sleep(0.01)


async def _cancel_as_the_event_is_set(wait: Callable[[asyncio.Event], Awaitable[object]]) -> bool:
    """Whether the loop ended when cancelled one iteration after its event was set: the waiting
    task has been woken and not yet run, the moment asyncio.wait_for mishandles."""
    event = asyncio.Event()
    task = asyncio.create_task(_loop_until_cancelled(wait, event))
    await asyncio.sleep(0.05)  # parked in the wait
    event.set()
    await asyncio.sleep(0)
    task.cancel()
    done, _ = await asyncio.wait([task], timeout=1.0)
    if not done:
        task.cancel()  # once more, to clean up
        await asyncio.wait([task], timeout=1.0)
        return False
    return task.cancelled()


async def test_a_cancel_with_the_wake_up_ends_the_loop() -> None:
    assert await _cancel_as_the_event_is_set(lambda e: wait_event(e, 10.0))


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="wait_for is built on timeout since 3.12")
async def test_the_same_moment_loses_the_cancel_with_wait_for() -> None:
    """The scenario above is the race: with 3.11's wait_for the loop runs on."""

    async def old(e: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(e.wait(), 10.0)
        except TimeoutError:
            pass

    assert not await _cancel_as_the_event_is_set(old)


async def test_a_cancel_with_the_time_out_ends_the_wait() -> None:
    event = asyncio.Event()
    task = asyncio.create_task(wait_event(event, 0.05))
    await asyncio.sleep(0.03)
    # Spin until the time-out has fired (the task is woken to raise it), then cancel.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 0.05
    while loop.time() < deadline:
        pass
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_it_says_whether_the_event_came() -> None:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert await wait_event(event, 0.05) is False
    assert loop.time() - t0 >= 0.05
    loop.call_later(0.02, event.set)
    t0 = loop.time()
    assert await wait_event(event, 5.0) is True
    assert loop.time() - t0 < 1.0
    assert await wait_event(event, 0) is True  # already set: no wait at all
    event.clear()
    assert await wait_event(event, 0) is False


async def test_cancel_and_wait_returns_what_did_not_end_and_passes_a_cancel_on() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    async def failed() -> None:
        raise ValueError("already failed")

    quick, stuck, bad = (asyncio.create_task(c()) for c in (asyncio.Event().wait, stubborn, failed))
    await asyncio.sleep(0)
    assert await cancel_and_wait([quick, stuck, bad], 0.05) == {stuck}
    assert quick.cancelled() and isinstance(bad.exception(), ValueError)
    # The caller cancelled while it waits without a limit: the cancel reaches it.
    waiting = asyncio.create_task(cancel_and_wait([stuck]))
    await asyncio.sleep(0.01)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    release.set()
    stuck.cancel()
    await asyncio.wait([stuck], timeout=1)
    assert stuck.done()


def test_idle_wait_doubles_from_the_poll_up_to_the_ceiling() -> None:
    assert [idle_wait_s(0.05, 1.0, n) for n in range(7)] == [
        0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0
    ]  # fmt: skip
    assert idle_wait_s(0.05, 1.0, 10_000) == 1.0  # no overflow however long it idles
    assert idle_wait_s(2.0, 1.0, 0) == idle_wait_s(2.0, 1.0, 5) == 2.0  # never below the poll


def test_running_keeps_a_running_loop_and_never_hands_out_an_ended_one() -> None:
    """`running(kept)`: the kept loop while it runs (no getpid() per call on Python 3.11),
    else the running loop, so an object used again under a later loop gets that one."""

    async def first() -> tuple[asyncio.AbstractEventLoop, asyncio.AbstractEventLoop]:
        loop = running(None)
        return loop, running(loop)

    loop1, again = asyncio.run(first())
    assert loop1 is again

    async def second() -> asyncio.AbstractEventLoop:
        return running(loop1)  # loop1 has ended

    loop2 = asyncio.run(second())
    assert loop2 is not loop1
    with pytest.raises(RuntimeError):
        running(loop1)  # no loop runs here: as asyncio.get_running_loop()
