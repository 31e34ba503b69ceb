"""Daemon.stop when a bind change wakes the heartbeat just as it is cancelled: found as CI hanging
for 90 minutes in Daemon.stop (an upgrade test on PostgreSQL, then the fleet dashboard test), the
heartbeat still looping after its cancel. Python 3.11's asyncio.wait_for returned the wake-up and
dropped the cancel; the daemon's waits are bridge.aio.wait_event now."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bridge.app import Daemon
from tests.e2e.harness import make_config, wait_until

WAITS = ("wait_event", "wait_for")


def _parked_in_wait_event(task: asyncio.Task[Any]) -> bool:
    """Whether the task waits for a wake-up: its coroutines include wait_event (or wait_for,
    as before the fix, so that this test fails on that code instead of never starting)."""
    coro: Any = task.get_coro()
    while coro is not None:
        if getattr(coro, "cr_code", None) is not None and coro.cr_code.co_name in WAITS:
            return True
        coro = getattr(coro, "cr_await", None)
    return False


async def test_the_heartbeat_ends_when_cancelled_as_a_bind_change_wakes_it(
    tmp_path: Path, pg_dsn: str
) -> None:
    # A heartbeat runs where other processes or instances read it: PostgreSQL, or workers.
    d = Daemon(make_config(tmp_path, store={"engine": "postgres", "dsn": pg_dsn}))
    await d.start()
    try:
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        (beat,) = [t for t in d._tasks if t.get_name() == "heartbeat"]
        await wait_until(lambda: _parked_in_wait_event(beat), 5, 0.001)
        d._binds_changed.set()  # as a bind going down does
        await asyncio.sleep(0)  # woken, not yet run: the moment wait_for lost the cancel
        beat.cancel()
        done, _ = await asyncio.wait([beat], timeout=3.0)
        assert done, "the heartbeat ran on after its cancel: Daemon.stop would wait forever"
        assert beat.cancelled()
    finally:
        async with asyncio.timeout(30):
            await d.stop()
