"""The SQLite runner's checkpoints on a real file: the WAL stays bounded under continuous writes,
nothing committed is lost across checkpoints and a reopen, and the WAL restart waits for the
cross-process write lock (so writers in other processes wait for it off their event loops)."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import threading
from pathlib import Path

from bridge.store import sqlite_runner
from bridge.store.sqlite_runner import SqliteRunner


def _setup(c: sqlite3.Connection) -> None:
    c.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, k TEXT UNIQUE, v BLOB)")


def _insert(i: int):
    def job(c: sqlite3.Connection) -> None:
        # A random key spreads writes over the index like message ids and nonces do.
        c.execute("INSERT INTO t (k, v) VALUES (hex(randomblob(16)), randomblob(900))")

    return job


async def _wait_checkpoint(runner: SqliteRunner) -> None:
    for _ in range(500):
        if not runner._checkpointing:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("checkpoint did not finish")


async def test_wal_stays_bounded_and_rows_survive(tmp_path: Path, monkeypatch) -> None:
    # A small limit so the test writes several times the limit in a second or two.
    monkeypatch.setattr(sqlite_runner, "WAL_MAX_BYTES", 512 * 1024)
    db = tmp_path / "r.db"
    runner = SqliteRunner(db, linger_ms=0, max_batch=20)
    runner.start(_setup)
    peak = 0
    n = 10000
    for start in range(0, n, 100):
        await asyncio.gather(*(runner.write(_insert(i)) for i in range(start, start + 100)))
        peak = max(peak, runner._wal_bytes())
    await _wait_checkpoint(runner)
    written = n * 1000  # at least this much page data went through the WAL
    assert written > 16 * sqlite_runner.WAL_MAX_BYTES
    # Without the restart step the WAL would hold everything ever written (passive checkpoints
    # never catch up under continuous writes); with it, it stays within a few limits (the size
    # is looked at every 25 commits, and writes go on while a checkpoint copies).
    assert peak < 8 * sqlite_runner.WAL_MAX_BYTES, peak
    await runner.close()
    c = sqlite3.connect(db)
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == n
    assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    c.close()


async def test_wal_restart_waits_for_the_cross_process_write_lock(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    runner = SqliteRunner(db)
    runner.start(_setup)
    await asyncio.gather(*(runner.write(_insert(i)) for i in range(200)))
    # Another process's writer holds the lock (its own file description, as another process's).
    other = os.open(str(db) + ".writelock", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)
    done = threading.Event()
    thread = threading.Thread(target=lambda: (runner._checkpoint_sync(), done.set()))
    thread.start()
    try:
        assert not done.wait(0.5), "the WAL restart ran while another writer held the lock"
    finally:
        fcntl.flock(other, fcntl.LOCK_UN)
        os.close(other)
    assert done.wait(10)
    thread.join()
    # It restarted the WAL: the next commit starts at its beginning, so the WAL holds one
    # transaction's frames, not the 200 before.
    await runner.write(_insert(0))
    c = sqlite3.connect(db)
    _busy, frames, _copied = c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
    c.close()
    assert 0 < frames < 20, frames
    await runner.close()


async def test_loop_keeps_running_while_a_checkpoint_holds_the_lock(tmp_path: Path) -> None:
    """A write queued while the WAL restart holds the write lock waits in a thread: the event
    loop keeps running other callbacks meanwhile, and the write lands once the lock is free."""
    db = tmp_path / "r.db"
    runner = SqliteRunner(db)
    runner.start(_setup)
    await runner.write(_insert(0))
    holder = os.open(str(db) + ".writelock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # as the checkpoint thread does during RESTART
    write = asyncio.ensure_future(runner.write(_insert(1)))
    ticks = 0
    for _ in range(20):
        await asyncio.sleep(0.01)
        ticks += 1
    assert not write.done()
    assert ticks == 20
    assert runner.lock_waits >= 1
    fcntl.flock(holder, fcntl.LOCK_UN)
    os.close(holder)
    await asyncio.wait_for(write, 5)
    c = sqlite3.connect(db)
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 2
    c.close()
    await runner.close()


async def test_close_empties_the_wal_without_holding_up_another_writer(tmp_path: Path) -> None:
    """An operator command closing its store while the daemon writes: the final checkpoint
    waits for the other writer's lock like any writer, then leaves an empty WAL."""
    db = tmp_path / "r.db"
    runner = SqliteRunner(db)
    runner.start(_setup)
    await asyncio.gather(*(runner.write(_insert(i)) for i in range(100)))
    assert runner._wal_bytes() > 0
    other = os.open(str(db) + ".writelock", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)
    closing = asyncio.get_running_loop().run_in_executor(None, runner._checkpoint_sync)
    await asyncio.sleep(0.3)
    assert not closing.done()  # the restart step waits for the writer holding the lock
    fcntl.flock(other, fcntl.LOCK_UN)
    os.close(other)
    await asyncio.wait_for(closing, 5)
    await runner.close()
    assert runner._wal_bytes() == 0  # emptied (or removed with the last connection)
    c = sqlite3.connect(db)
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 100
    c.close()


async def test_a_long_reader_does_not_make_the_checkpoint_hold_up_writers(tmp_path: Path) -> None:
    """A report reading an old snapshot pins the WAL: the checkpoint copies what it can and
    skips the restart instead of holding the write lock while it waits for the reader."""
    db = tmp_path / "r.db"
    runner = SqliteRunner(db)
    runner.start(_setup)
    await asyncio.gather(*(runner.write(_insert(i)) for i in range(50)))
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM t").fetchone()  # snapshot taken, transaction open
    await asyncio.gather(*(runner.write(_insert(i)) for i in range(50)))  # beyond the snapshot
    # Another writer holds the write lock: a checkpoint that went on to the restart would wait
    # for it; this one copies what it can and returns without taking the lock.
    other = os.open(str(db) + ".writelock", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)
    try:
        await asyncio.wait_for(
            asyncio.get_running_loop().run_in_executor(None, runner._checkpoint_sync), 5
        )
    finally:
        fcntl.flock(other, fcntl.LOCK_UN)
        os.close(other)
    # the WAL was not restarted: the next commit appends instead of starting over
    before = runner._wal_bytes()
    await runner.write(_insert(0))
    assert runner._wal_bytes() > before
    reader.execute("COMMIT")
    reader.close()
    await runner.close()
