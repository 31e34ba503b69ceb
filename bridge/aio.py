"""asyncio helpers: waiting with a time limit that never swallows a cancellation, a FIFO lock
per key, and the running loop without a system call.

Python 3.11's `asyncio.wait_for` returns the inner result when its task is cancelled in the
same loop iteration as the awaited thing completes (CPython gh-86296, fixed in 3.12 by
rebuilding it on `asyncio.timeout`). A loop such as the heartbeat then goes round again with
its cancellation spent, and `Daemon.stop()`, gathering its tasks, waits forever: CI hung twice
on it (a bind going down at shutdown sets the event the heartbeat waits on just as it is
cancelled). `asyncio.timeout` counts cancellations, so a cancel that arrives with a wake-up or
a time-out still ends the task. `asyncio.wait_for` is banned in `bridge/` (ruff TID251).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Collection
from typing import Any


def running(loop: asyncio.AbstractEventLoop | None) -> asyncio.AbstractEventLoop:
    """`loop` while it runs, else the running loop: callers keep the answer and pass it back
    (`loop = self._loop = running(self._loop)`).

    Why: on Python 3.11 every `asyncio.get_running_loop()` (and `asyncio.current_task()`
    without a loop) makes a getpid() system call, its check against a fork (gone in 3.12).
    The owner process made 12.7 of them per one-part message (counted with `perf stat` on
    `sys_enter_getpid`: the batchers, the dispatcher's send path, the connector's window, the
    receipts' futures), each ~0.4 µs on this VM. A kept loop that no longer runs (an object
    used again under a later loop, as tests do) is asked for again, so a stale one is never
    handed out; the objects keeping one are each used from one loop's thread."""
    if loop is not None and loop.is_running():
        return loop
    return asyncio.get_running_loop()


async def sleep_on(loop: asyncio.AbstractEventLoop, delay_s: float) -> None:
    """`asyncio.sleep(delay_s)` on a loop the caller kept (the same timer and future, cancelled
    alike). Why: `asyncio.sleep` asks for the running loop at every call, a getpid() system
    call on Python 3.11 (see `running`); the loop-lag sampler sleeps ten times a second in
    every process, the metrics' flush once a second."""
    future: asyncio.Future[None] = loop.create_future()
    handle = loop.call_later(delay_s, _wake, future)
    try:
        await future
    finally:
        handle.cancel()


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():  # cancelled meanwhile: nothing to wake
        future.set_result(None)


async def wait_event(event: asyncio.Event, timeout_s: float) -> bool:
    """True when `event` is set within `timeout_s`, False when the time ran out; a cancel
    of the waiting task always propagates."""
    if event.is_set():
        return True
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True


def idle_wait_s(poll_s: float, max_s: float, empty: int) -> float:
    """How long a poller waits for a wake after `empty` polls in a row found nothing and were
    not woken: `poll_s`, doubled for each, up to `max_s` (never below `poll_s`). Idle, the
    dispatcher and the webhook sender polled at a fixed 50 and 200 ms for ever."""
    return min(poll_s * 2 ** min(empty, 20), max(poll_s, max_s))


async def cancel_and_wait(
    tasks: Collection[asyncio.Task[Any]], wait_s: float | None = None
) -> set[asyncio.Task[Any]]:
    """Cancel the tasks and wait for them to end, at most `wait_s` (None: as long as it takes);
    returns those still running. The outcome of each that ended is retrieved, as
    `gather(return_exceptions=True)` does. Unlike `suppress(CancelledError): await task`, a
    cancel of the caller arriving meanwhile propagates."""
    for t in tasks:
        t.cancel()
    if not tasks:
        return set()
    done, pending = await asyncio.wait(tasks, timeout=wait_s)
    for t in done:
        if not t.cancelled():
            t.exception()  # retrieved: a task that failed has logged it already
    return pending


class KeyedLocks:
    """A FIFO lock per key, kept only while held or awaited: the coroutines that ask for one
    key get it in the order they asked."""

    def __init__(self) -> None:
        self._locks: dict[Any, asyncio.Lock] = {}
        self._users: dict[Any, int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: Any) -> AsyncIterator[None]:
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]
