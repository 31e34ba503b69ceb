"""Daemon.stop when a bind change wakes the heartbeat just as it is cancelled: found as CI hanging
for 90 minutes in Daemon.stop (an upgrade test on PostgreSQL, then the fleet dashboard test), the
heartbeat still looping after its cancel. Python 3.11's asyncio.wait_for returned the wake-up and
dropped the cancel; the daemon's waits are bridge.aio.wait_event now."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import pytest

from bridge import app
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


async def test_a_task_that_ignores_its_cancel_is_named_and_the_stop_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Defence in depth: any background task that lost its cancel (a bug like the above, in
    this code or a library's) is logged by name, and stop() still closes the store and returns,
    instead of the process hanging until systemd kills it without a clean unbind."""
    monkeypatch.setattr(app, "TASK_STOP_S", 0.5)
    caplog.set_level(logging.INFO, logger="bridge.app")
    d = Daemon(make_config(tmp_path))
    await d.start()
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(3600)

    task = asyncio.get_running_loop().create_task(stubborn(), name="stubborn")
    d._tasks.append(task)
    try:
        async with asyncio.timeout(30):
            await d.stop()
        assert d.store is not None and not task.done()
        assert "task stubborn did not end within 0.5 s of its cancel" in caplog.text
        assert "smpp-bridge stopped" in caplog.text
    finally:
        release.set()
        task.cancel()
        await asyncio.wait([task], timeout=5)
