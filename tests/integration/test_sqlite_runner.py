"""The SQLite runner's checkpoints on a real file: the WAL stays bounded under continuous writes,
nothing committed is lost across checkpoints and a reopen, and the WAL restart waits for the
cross-process write lock (so writers in other processes wait for it off their event loops)."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sqlite3
import threading
import time
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
    # Without the restart step the WAL would hold everything written (~55 MB here: passive
    # checkpoints never catch up under continuous writes); with it, it stays within a few limits
    # (the size is looked at every 25 commits, and writes go on while a checkpoint copies).
    assert peak < 16 * sqlite_runner.WAL_MAX_BYTES, peak
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
    freed_by_timer = threading.Event()

    def free() -> None:
        freed_by_timer.set()
        fcntl.flock(holder, fcntl.LOCK_UN)

    # From a thread: a loop blocked on the lock is still freed, late. The event, not the loop's
    # clock, tells (until session 63 "20 sleeps of 10 ms within 0.8 s", the timer at 1 s: the
    # scheduler's to keep on a loaded machine): the loop ran on while the lock was held.
    release = threading.Timer(10.0, free)
    release.start()
    try:
        write = asyncio.ensure_future(runner.write(_insert(1)))
        for _ in range(20):
            await asyncio.sleep(0.01)
        assert not freed_by_timer.is_set()  # the loop ran on; blocked, only the timer freed it
        assert not write.done()
        assert runner.lock_waits >= 1
        release.cancel()
        if not freed_by_timer.is_set():
            fcntl.flock(holder, fcntl.LOCK_UN)
        await asyncio.wait_for(write, 5)
    finally:
        release.cancel()
        release.join()
        os.close(holder)
    c = sqlite3.connect(db)
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 2
    c.close()
    await runner.close()


async def test_the_write_lock_is_timed_held_and_waited_for(tmp_path: Path) -> None:
    """The counters behind smpp_bridge_store_write_lock_*: a job that sleeps 0.2 s holding the
    lock adds at least that to the time held and little to its CPU time; one that computes for
    0.1 s of CPU adds that to both; a write that waits 0.3 s for another holder adds at least
    that to the time waited, and nothing to the time held; commits and jobs count."""
    db = tmp_path / "r.db"
    runner = SqliteRunner(db)
    runner.start(_setup)
    await runner.write(_insert(0))
    assert runner.lock_held_s > 0 and runner.lock_wait_s == 0
    assert (runner.commits, runner.jobs_done) == (1, 1)

    def slow(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO t (k) VALUES ('slow')")
        time.sleep(0.2)  # off the CPU: held, not on CPU

    def busy(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO t (k) VALUES ('busy')")
        t = time.thread_time()
        while time.thread_time() - t < 0.1:  # on the CPU
            pass

    held, cpu = runner.lock_held_s, runner.lock_cpu_s
    await asyncio.gather(runner.write(slow), runner.write(_insert(2)))  # one batch of two
    assert 0.2 <= runner.lock_held_s - held < 1.0
    assert runner.lock_cpu_s - cpu < 0.1
    held, cpu = runner.lock_held_s, runner.lock_cpu_s
    await runner.write(busy)
    assert 0.1 <= runner.lock_cpu_s - cpu <= runner.lock_held_s - held
    assert (runner.commits, runner.jobs_done) == (3, 4)
    held = runner.lock_held_s
    holder = os.open(str(db) + ".writelock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process's batch
    release = threading.Timer(0.3, fcntl.flock, (holder, fcntl.LOCK_UN))
    release.start()
    try:
        await asyncio.wait_for(runner.write(_insert(3)), 5)
    finally:
        release.join()
        os.close(holder)
    # Waited until the thread took the lock: the 0.3 s, less the moment between the timer's
    # start and the write's.
    assert 0.28 <= runner.lock_wait_s < 1.5
    assert runner.lock_held_s - held < 0.2  # the wait is not counted as holding
    await runner.close()


async def test_the_lock_is_not_held_across_the_hop_from_its_thread_to_the_loop(
    tmp_path: Path,
) -> None:
    """The lock thread sees the lock come free while the loop is busy (here a 0.4 s stretch of
    synchronous work): it does not keep it for the loop meanwhile, so another process takes
    it (before session 55 the thread held it from that moment until the loop's callback ran,
    and every other process waited on a loop that was not writing). The loop then finds it
    taken, waits again, and writes once the other process lets go."""
    db = tmp_path / "r.db"
    runner = SqliteRunner(db)
    runner.start(_setup)
    await runner.write(_insert(0))
    held, waited = runner.lock_held_s, runner.lock_wait_s
    holder = os.open(str(db) + ".writelock", os.O_RDWR)
    other = os.open(str(db) + ".writelock", os.O_RDWR)  # a second other process
    fcntl.flock(holder, fcntl.LOCK_EX)  # another process's batch, released after 0.1 s
    release = threading.Timer(0.1, fcntl.flock, (holder, fcntl.LOCK_UN))
    took: list[bool] = []

    def take_meanwhile() -> None:  # at ~0.25 s, while the loop is still busy
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            took.append(False)
        else:
            took.append(True)

    probe = threading.Timer(0.25, take_meanwhile)
    let_go = threading.Timer(0.7, fcntl.flock, (other, fcntl.LOCK_UN))
    try:
        write = asyncio.ensure_future(runner.write(_insert(1)))
        await asyncio.sleep(0.02)  # the batch is waiting for the lock in its thread
        release.start()
        probe.start()
        time.sleep(0.4)  # the loop is busy: the lock comes free at ~0.1 s meanwhile
        let_go.start()
        await asyncio.wait_for(write, 5)
    finally:
        for timer in (release, probe, let_go):
            timer.join()
        os.close(holder)
        os.close(other)
    assert took == [True], "the lock was kept for a busy loop"
    assert runner.lock_retakes >= 1  # the loop's turn found it taken: it waited again
    assert runner.lock_held_s - held < 0.2  # the loop's busy stretch is not held
    assert 0.5 <= runner.lock_wait_s - waited < 2.0  # waited until the other let go
    c = sqlite3.connect(db)
    assert c.execute("SELECT count(*) FROM t").fetchone()[0] == 2
    c.close()
    await runner.close()


async def test_the_lock_cpu_time_never_exceeds_the_time_held(tmp_path: Path) -> None:
    """Batches that only compute: on a CPU the whole time held. The CPU clock was read just
    after the wall clock at both ends, so each batch added a little more CPU time than time
    held, and over ~100 batches the CPU total passed the held total (in a loaded test run, by
    9 µs), which a dashboard dividing one by the other shows as more than 100% on a CPU."""
    runner = SqliteRunner(tmp_path / "r.db", linger_ms=0, max_batch=1)
    runner.start(_setup)

    def compute(c: sqlite3.Connection) -> None:
        t = time.thread_time()
        while time.thread_time() - t < 0.0002:
            pass

    for _ in range(2000):
        await runner.write(compute, durable=False)
        assert runner.lock_cpu_s <= runner.lock_held_s, (runner.lock_cpu_s, runner.lock_held_s)
    assert runner.lock_cpu_s > 0.4  # 2000 x 0.2 ms on a CPU, all counted
    await runner.close()


async def test_a_cancelled_lock_wait_gives_the_lock_back(tmp_path: Path) -> None:
    """If the batch waiting for the write lock is cancelled while its thread is still in
    flock(), the thread gets the lock later: it must be released, or every writer waits."""
    db = tmp_path / "r.db"
    runner = SqliteRunner(db)
    runner.start(_setup)
    holder = os.open(str(db) + ".writelock", os.O_RDWR)
    fcntl.flock(holder, fcntl.LOCK_EX)
    write = asyncio.ensure_future(runner.write(_insert(0)))
    await asyncio.sleep(0.05)
    assert runner._flush_task is not None
    runner._flush_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await write
    fcntl.flock(holder, fcntl.LOCK_UN)  # now the waiting thread gets it...
    probe = os.open(str(db) + ".writelock", os.O_RDWR)
    try:
        for _ in range(100):  # ...and must hand it back
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                await asyncio.sleep(0.02)
        else:
            raise AssertionError("the cancelled wait kept the write lock")
        fcntl.flock(probe, fcntl.LOCK_UN)
    finally:
        os.close(probe)
        os.close(holder)
    await runner.close()


async def test_a_wait_left_by_a_cancelled_batch_never_frees_the_lock_under_a_batch(
    tmp_path: Path, monkeypatch
) -> None:
    """The lock thread takes the lock to see it free and gives it back. A wait left behind by
    a cancelled batch still does that later, while the loop may be writing the next batch: it
    must not give back the loop's lock. Through the loop's own description of the lock file
    (the first version of session 55's change) the loop's try succeeded while the thread had
    it, and the thread's LOCK_UN then freed the lock in the middle of the loop's batch."""
    real = sqlite_runner._wait_free

    def slow_wait_free(fd: int) -> None:  # holds it a while between the take and the give-back
        fcntl.flock(fd, fcntl.LOCK_EX)
        time.sleep(0.3)
        fcntl.flock(fd, fcntl.LOCK_UN)

    db = tmp_path / "r.db"
    runner = SqliteRunner(db)
    runner.start(_setup)
    await runner.write(_insert(0))
    holder = os.open(str(db) + ".writelock", os.O_RDWR)
    probe = os.open(str(db) + ".writelock", os.O_RDWR)
    monkeypatch.setattr(sqlite_runner, "_wait_free", slow_wait_free)
    fcntl.flock(holder, fcntl.LOCK_EX)
    stale = asyncio.ensure_future(runner.write(_insert(1)))
    await asyncio.sleep(0.05)  # its wait is in the thread
    assert runner._flush_task is not None
    runner._flush_task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stale
    monkeypatch.setattr(sqlite_runner, "_wait_free", real)
    fcntl.flock(holder, fcntl.LOCK_UN)  # the stale wait takes it, for 0.3 s
    await asyncio.sleep(0.05)
    seen: list[bool] = []

    def try_probe() -> None:
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            seen.append(False)
        else:
            seen.append(True)
            fcntl.flock(probe, fcntl.LOCK_UN)

    def long_job(c: sqlite3.Connection) -> None:  # runs holding the lock, across the give-back
        c.execute("INSERT INTO t (k) VALUES ('long')")
        timer = threading.Timer(0.4, try_probe)
        timer.start()
        time.sleep(0.6)
        timer.join()

    try:
        await asyncio.wait_for(runner.write(long_job), 5)
    finally:
        os.close(holder)
        os.close(probe)
    assert seen == [False], "another process took the lock in the middle of a batch"
    await runner.close()


async def test_no_checkpoint_runs_after_close(tmp_path: Path, monkeypatch) -> None:
    """A checkpoint started by the last batch finishes before close() returns; none starts
    after it (it would run without the write lock and leave a thread and a connection open)."""
    monkeypatch.setattr(sqlite_runner, "CHECKPOINT_EVERY", 1)
    db = tmp_path / "r.db"
    runner = SqliteRunner(db)
    runner.start(_setup)
    await runner.write(_insert(0), durable=False)  # resolves at COMMIT, before any await
    await runner.close()
    await asyncio.sleep(0.05)
    assert runner._ckpt_conn is None
    assert not any(t.name.startswith("sqlite-ckpt") for t in threading.enumerate())


async def test_close_empties_the_wal_without_holding_up_another_writer(tmp_path: Path) -> None:
    """An operator command closing its store while the daemon writes: the final checkpoint
    waits for the other writer's lock like any writer (off the loop), then empties the WAL."""
    db = tmp_path / "r.db"
    runner = SqliteRunner(db)
    runner.start(_setup)
    await asyncio.gather(*(runner.write(_insert(i)) for i in range(100)))
    daemon = sqlite3.connect(db)  # the daemon's connection: the WAL file stays while it is open
    daemon.execute("SELECT count(*) FROM t").fetchone()
    wal = str(db) + "-wal"
    assert os.stat(wal).st_size > 0
    other = os.open(str(db) + ".writelock", os.O_RDWR)
    fcntl.flock(other, fcntl.LOCK_EX)
    closing = asyncio.ensure_future(runner.close())
    await asyncio.sleep(0.3)  # the loop keeps running meanwhile
    assert not closing.done()  # the final TRUNCATE waits for the writer holding the lock
    fcntl.flock(other, fcntl.LOCK_UN)
    os.close(other)
    await asyncio.wait_for(closing, 5)
    assert os.stat(wal).st_size == 0
    assert daemon.execute("SELECT count(*) FROM t").fetchone()[0] == 100
    daemon.close()


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


async def test_a_bare_job_that_fails_halfway_leaves_nothing_and_keeps_the_batch(
    tmp_path: Path,
) -> None:
    """A bare job (no savepoint) that raises after a write: the runner takes the batch back and
    runs it again with savepoints, so the others commit and the failing job's write does not."""
    runner = SqliteRunner(tmp_path / "b.db", linger_ms=5, max_batch=50)
    runner.start(_setup)

    def ok(k: str):
        def job(c: sqlite3.Connection) -> str:
            c.execute("INSERT INTO t (k) VALUES (?)", (k,))
            return k

        return job

    def half_done(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO t (k) VALUES ('half')")
        raise RuntimeError("a fault after the first write")

    outs = await asyncio.gather(
        runner.write(ok("a"), bare=True),
        runner.write(ok("b")),
        runner.write(half_done, bare=True),
        runner.write(ok("c"), bare=True),
        runner.write(ok("d"), single=True),
        return_exceptions=True,
    )
    assert outs[:2] == ["a", "b"] and outs[3:] == ["c", "d"]
    assert isinstance(outs[2], RuntimeError)
    assert runner.reruns == 1 and runner.commits == 1
    rows = await runner.read(lambda c: sorted(k for (k,) in c.execute("SELECT k FROM t")))
    assert rows == ["a", "b", "c", "d"]
    await runner.close()


async def test_bare_jobs_that_succeed_run_once(tmp_path: Path) -> None:
    runner = SqliteRunner(tmp_path / "c.db", linger_ms=5, max_batch=50)
    runner.start(_setup)
    calls: list[int] = []

    def job(i: int):
        def run(c: sqlite3.Connection) -> None:
            calls.append(i)
            c.execute("INSERT INTO t (k) VALUES (?)", (str(i),))

        return run

    await asyncio.gather(*(runner.write(job(i), bare=True) for i in range(10)))
    assert sorted(calls) == list(range(10)) and runner.reruns == 0
    await runner.close()


# SQLite's unix VFS: the dead-man-switch byte of the -shm file, on which every connection holds
# a shared POSIX lock while it is open (sqlite3.c: UNIX_SHM_DMS = UNIX_SHM_BASE + SQLITE_SHM_NLOCK
# = 120 + 8).
_SHM_DMS = 128

_PROBE = """
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
# struct flock: l_type, l_whence, l_start, l_len, l_pid (x86_64 and aarch64 Linux)
req = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, int(sys.argv[2]), 1, 0)
l_type, _w, _s, _l, pid = struct.unpack("hhqqi4x", fcntl.fcntl(fd, fcntl.F_GETLK, req))
print(pid if l_type != fcntl.F_UNLCK else 0)
"""


def _shm_lock_holder(db: Path) -> int:
    """The pid holding a lock on the -shm's dead-man-switch byte, as another process sees it
    (F_GETLK in this process would not report this process's own locks): 0 for none."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _PROBE, f"{db}-shm", str(_SHM_DMS)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return int(out.stdout)


async def test_the_runner_never_drops_sqlites_locks_on_the_shm_file(
    tmp_path: Path, monkeypatch
) -> None:
    """POSIX locks belong to the process and the file: closing ANY descriptor of the -shm (or
    the database) drops every lock this process holds on it, SQLite's included. Session 32 read
    the WAL-index header with open()/close() after commits: another process's connection then
    found no holder of the dead-man-switch lock, reset the -shm under this one, and processes
    died of SIGBUS (the chaos soak's acceptors and owners, in CI). Here: after writes and
    checkpoints, another process still sees this one's lock."""
    monkeypatch.setattr(sqlite_runner, "WAL_MAX_BYTES", 64 * 1024)
    db = tmp_path / "r.db"
    runner = SqliteRunner(db, linger_ms=0, max_batch=20)
    runner.start(_setup)
    try:
        await runner.write(_insert(0))
        assert await asyncio.to_thread(_shm_lock_holder, db) == os.getpid()
        for start in range(0, 600, 50):  # several checkpoints' worth
            await asyncio.gather(*(runner.write(_insert(i)) for i in range(start, start + 50)))
        await _wait_checkpoint(runner)
        runner._wal_bytes()
        runner.check_files()
        assert await asyncio.to_thread(_shm_lock_holder, db) == os.getpid()
    finally:
        await runner.close()


def _size_or_none(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


def _frames_in_wal(db: Path) -> int:
    """SQLite's own count of the frames in the WAL (a passive checkpoint's second figure)."""
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as c:
        return c.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]


async def _checkpointed_with_writes(runner: SqliteRunner, db: Path) -> int:
    """Write until a checkpoint has started and finished; the WAL file's size right after."""
    for i in range(2000):
        await runner.write(_insert(i))
        if runner._checkpointing:
            break
    assert runner._checkpointing, "no checkpoint started"
    await _wait_checkpoint(runner)
    return os.stat(f"{db}-wal").st_size


async def test_what_the_wal_holds_is_read_from_its_frames_as_sqlite_counts_them(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(sqlite_runner, "WAL_MAX_BYTES", 1 << 40)  # no checkpoint here
    db = tmp_path / "r.db"
    runner = SqliteRunner(db, linger_ms=0, max_batch=20)
    runner.start(_setup)
    try:
        for i in range(50):
            await runner.write(_insert(i))
        frame = 24 + 4096
        frames = await asyncio.to_thread(_frames_in_wal, db)
        assert frames > 50 and runner._wal_bytes() == frames * frame
    finally:
        await runner.close()


async def test_a_checkpoint_reuses_the_wal_file_and_counts_only_what_it_holds(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(sqlite_runner, "WAL_MAX_BYTES", 64 * 1024)
    db = tmp_path / "r.db"
    runner = SqliteRunner(db, linger_ms=0, max_batch=20)
    runner.start(_setup)
    try:
        size = await _checkpointed_with_writes(runner, db)
        assert size > sqlite_runner.WAL_MAX_BYTES  # RESTART: the file kept, not emptied
        await runner.write(_insert(0))  # this writer starts the WAL over from its first frame
        held = runner._wal_bytes()
        assert 0 < held < size // 4, (held, size)
        assert held == await asyncio.to_thread(_frames_in_wal, db) * (24 + 4096)
        assert os.stat(f"{db}-wal").st_size == size  # written in place, not grown
    finally:
        await runner.close()
    # The final checkpoint still empties it (and the last connection's close removes it).
    assert _size_or_none(f"{db}-wal") in (None, 0)


async def test_a_wal_file_grown_past_the_shrink_size_is_emptied(
    tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(sqlite_runner, "WAL_MAX_BYTES", 64 * 1024)
    monkeypatch.setattr(sqlite_runner, "WAL_SHRINK_BYTES", 64 * 1024)
    db = tmp_path / "r.db"
    runner = SqliteRunner(db, linger_ms=0, max_batch=20)
    runner.start(_setup)
    try:
        assert await _checkpointed_with_writes(runner, db) == 0  # TRUNCATE
    finally:
        await runner.close()


def test_wal_bytes_without_a_wal_or_with_no_header_yet(tmp_path: Path) -> None:
    db = tmp_path / "r.db"
    runner = SqliteRunner(db, linger_ms=0, max_batch=20)
    assert runner._wal_bytes() == 0  # not started: no -wal open
    wal = tmp_path / "r.db-wal"
    fd = os.open(wal, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        assert sqlite_runner._wal_frames_bytes(fd) == 0  # empty
        os.write(fd, b"x" * 20)  # shorter than a header
        assert sqlite_runner._wal_frames_bytes(fd) == 0
        os.pwrite(fd, b"\0" * 5000, 0)  # no page size: not a header
        assert sqlite_runner._wal_frames_bytes(fd) == 0
    finally:
        os.close(fd)
