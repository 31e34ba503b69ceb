"""The steady state asks asyncio for the running loop no more: on Python 3.11 each
`asyncio.get_running_loop()` (and each `asyncio.sleep`, which asks for it) is a getpid() system
call. A real SQLite runner on a file (group commit, the WAL's fsync in a thread, the write lock
waited for while another description holds it), a batcher fed as receipts feed it, and the
loop-lag sampler: once each has its loop, none asks again (session 58, README note 32)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from bridge import aio
from bridge.metrics import Metrics
from bridge.pipeline.batcher import Batcher
from bridge.store.sqlite_runner import SqliteRunner


@contextmanager
def _lookups(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the running-loop lookups made through asyncio's module attributes (what
    `asyncio.get_running_loop()`, `asyncio.sleep` and `bridge.aio.running` call)."""
    calls = [0]
    real = asyncio.events.get_running_loop

    def counted() -> asyncio.AbstractEventLoop:
        calls[0] += 1
        return real()

    monkeypatch.setattr(asyncio, "get_running_loop", counted)
    monkeypatch.setattr(asyncio.events, "get_running_loop", counted)
    monkeypatch.setattr(asyncio.tasks.events, "get_running_loop", counted)
    try:
        yield calls
    finally:
        monkeypatch.undo()


def _setup(c: sqlite3.Connection) -> None:
    c.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, v TEXT)")


def _insert(c: sqlite3.Connection) -> None:
    c.execute("INSERT INTO t (v) VALUES (hex(randomblob(8)))")


async def test_runner_commits_fsyncs_and_lock_waits_ask_for_no_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "r.db"
    runner = SqliteRunner(db, linger_ms=0, max_batch=10)
    runner.start(_setup)
    try:
        await runner.write(_insert)  # the runner keeps its loop from here
        fsyncs = runner.fsyncs
        with _lookups(monkeypatch) as calls:
            for _ in range(5):  # several group commits, each durable: an fsync round each
                await asyncio.gather(*(runner.write(_insert) for _ in range(25)))
            assert runner.fsyncs > fsyncs
            # Another process's writer (a description of its own) holds the write lock: the
            # batch waits for it in the lock thread, then writes on the loop.
            other = os.open(str(db) + ".writelock", os.O_RDWR)
            fcntl.flock(other, fcntl.LOCK_EX)
            try:
                pending = asyncio.gather(*(runner.write(_insert) for _ in range(5)))
                await asyncio.sleep(0.05)
                assert not pending.done()
            finally:
                fcntl.flock(other, fcntl.LOCK_UN)
                os.close(other)
            await pending
            asked = calls[0]
        # asyncio.sleep(0.05) above asks once; the runner never.
        assert asked == 1, asked
    finally:
        await runner.close()
    c = sqlite3.connect(db)
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 1 + 125 + 5
    c.close()


async def test_batcher_fed_by_calls_asks_for_its_loop_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flushed: list[list[int]] = []

    async def sink(items: list[int]) -> None:
        flushed.append(items)

    b: Batcher[int] = Batcher(sink, max_items=4, max_delay_s=0.001)
    done: list[object] = []
    sleeps = 0
    with _lookups(monkeypatch) as calls:
        for round_ in range(5):
            for i in range(3):  # under max_items: each round's flush starts from the timer
                b.add_call(round_ * 10 + i, done.append)
            while len(done) < 3 * (round_ + 1):
                await asyncio.sleep(0.002)
                sleeps += 1
        asked = calls[0]
    assert [len(x) for x in flushed] == [3] * 5
    assert done == [None] * 15
    # The test's own sleeps ask once each; the batcher once, at its first timer (before: at
    # every timer and every flush's task, ten here).
    assert asked == sleeps + 1, (asked, sleeps)


async def test_loop_lag_sampler_asks_for_its_loop_once(monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = Metrics()
    loop = asyncio.get_running_loop()
    with _lookups(monkeypatch) as calls:
        task = loop.create_task(metrics.watch_loop("owner", 0.001))
        before = calls[0]
        for _ in range(30):  # the test's own waits ask for nothing
            tick = loop.create_future()
            loop.call_later(0.001, tick.set_result, None)
            await tick
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        asked = calls[0] - before
    assert asked == 1, asked  # watch_loop's own get_running_loop; its ~30 sleeps none
    assert task.cancelled()


async def test_sleep_on_sleeps_and_cancels_like_asyncio_sleep() -> None:
    loop = asyncio.get_running_loop()
    t = loop.time()
    await aio.sleep_on(loop, 0.02)
    assert loop.time() - t >= 0.019
    task = loop.create_task(aio.sleep_on(loop, 10))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
