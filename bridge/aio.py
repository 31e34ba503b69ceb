"""Waiting with a time limit that never swallows a cancellation.

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
