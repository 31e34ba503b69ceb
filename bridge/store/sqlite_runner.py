"""Run SQLite work on the event loop with group commit, and fsync off the loop.

Why not a writer thread: SQLite releases the GIL inside every call and must take it back between
statements, so a writer thread and the event loop hand the GIL back and forth hundreds of times per
batch, each hand-over waiting up to the switch interval (the convoy effect). Measured here that cost
more than the SQL itself. So the SQL runs on the loop thread, where it is a few microseconds per
statement, and only the fsync, pure I/O that needs no GIL, goes to a thread.

Group commit: jobs queued while a batch is being written or synced are run together in the next
transaction (each in its own SAVEPOINT, so one failing job does not undo the others). A batch is
acknowledged only after an fsync of the WAL that started after its COMMIT: the same guarantee as
`synchronous=FULL` (a commit survives power loss), with one fsync for many requests, and the next
batch's SQL runs while the previous one syncs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from bridge import aio, logs
from bridge.store import (
    sqlite_binds,  # noqa: F401  (registers the sqlite3 adapters)
    sqlite_library,
)
from bridge.store.base import (
    StoreClosedError,
    StoreInUseError,
    StoreUnusableError,
    is_unavailable,
)

log = logging.getLogger("bridge.store")
_commit_failures = logs.Throttled(log)
# Free space at which a store refused for a full disk counts as writable again (/readyz).
FREE_AGAIN_BYTES = 1 << 20


def _is_full(exc: BaseException) -> bool:
    return isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "disk is full" in str(exc)
    )


# Commits between WAL checkpoints ...
CHECKPOINT_EVERY = int(os.environ.get("SMPP_BRIDGE_CHECKPOINT_EVERY", "1000"))
# ... or sooner when the WAL holds this much since it last started over (every commit writes
# whole pages, so under load it grows by tens of MB a second). Small and frequent: each
# checkpoint is then a few ms of copying in a thread.
WAL_MAX_BYTES = 8 * 1024 * 1024
# The WAL file is emptied (TRUNCATE) only past this size, which it reaches when a long reader kept
# checkpoints from starting it over; otherwise it is reused in place (RESTART), which holds the
# writers 2-4 ms against TRUNCATE's 6-10 (`scripts/bench_store.py`; end to end, the accept p99
# at 50 concurrent requests 43-51 ms against 50-66).
WAL_SHRINK_BYTES = 4 * WAL_MAX_BYTES
# How long the WAL restart (writers blocked) may wait for readers of an old snapshot.
CHECKPOINT_WAIT_MS = 200

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], Any]


def open_beside(store: Path, suffix: str) -> int:
    """A lock file beside the store, owned like the store. Made by a command run as root (`db
    after-restore`, `account create` from a root shell), it was root's, and the daemon's user
    could not open it at its next start. (SQLite does the same for the -wal and -shm.)"""
    fd = os.open(str(store) + suffix, os.O_RDWR | os.O_CREAT, 0o600)
    if os.geteuid() == 0:
        try:
            want, have = os.stat(store), os.fstat(fd)
            if (have.st_uid, have.st_gid) != (want.st_uid, want.st_gid):
                os.fchown(fd, want.st_uid, want.st_gid)
        except OSError:
            pass  # no store yet: root makes a new one, and owns its lock files too
    return fd


def owner_lock(store: Path, advice: str) -> int:
    """The lock that says one daemon owns `store`, taken: its descriptor, held until closed.
    StoreInUseError (naming the holder's pid, then `advice`) while another process holds it:
    a daemon (SqliteRunner.hold_ownership) or `db restore` (sqlite_backup.restore)."""
    fd = open_beside(store, ".owner")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise StoreInUseError(
            f"store {store} is in use by another smpp-bridge daemon (pid {holder}): {advice}"
        ) from None
    return fd


# Prepared statements a connection keeps (the sqlite3 module's default is 128): the accept's
# statements are a text per pattern of absent values (sqlite_binds, session 53), ~100 for a mix
# of optional fields alone, and with the owner's own a single-process daemon passed 128 and
# prepared them again inside the write lock (scripts/bench_accept_texts.py).
CACHED_STATEMENTS = 512


def connect(path: str | Path) -> sqlite3.Connection:
    # Before the process's first connection: SQLite's memory statistics off (sqlite_library).
    if sqlite_library.state is None:
        sqlite_library.memstatus_off()
    conn = sqlite3.connect(
        str(path),
        isolation_level=None,
        check_same_thread=False,
        timeout=30,
        cached_statements=CACHED_STATEMENTS,
    )
    conn.execute("PRAGMA journal_mode=WAL")
    # NORMAL: SQLite itself does not sync on commit; we fsync the WAL before acknowledging.
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA cache_size=-65536")
    conn.execute("PRAGMA temp_store=MEMORY")
    # Checkpoints copy the WAL into the database and fsync it: done off the loop (checkpoint()).
    conn.execute("PRAGMA wal_autocheckpoint=0")
    return conn


class SqliteRunner:
    def __init__(
        self,
        path: str | Path,
        *,
        linger_ms: float = 0.0,
        max_batch: int = 500,
        fsync: bool = True,
    ) -> None:
        self._path = Path(path)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._linger = linger_ms / 1000.0
        self._max_batch = max_batch
        self._fsync = fsync
        self._conn: sqlite3.Connection | None = None
        # The -wal, open from start() on: fsynced (in a thread), read by _wal_bytes (pread),
        # and watched by check_files. Never closed while the connection is open.
        self._wal_fd: int | None = None
        self._jobs: list[tuple[Job, asyncio.Future[Any], int, bool]] = []
        self._scheduled: asyncio.Handle | None = None
        self._unsynced: list[tuple[asyncio.Future[Any], bool, Any]] = []
        self._sync_task: asyncio.Task[None] | None = None
        self._closed = False
        # Reads run aside, each lane a thread with its own read-only connection (_ReadLane).
        self._lanes: dict[str, _ReadLane] = {}
        self._checkpointing = False
        # One thread and one connection for all the checkpoints: they run every few MB of WAL,
        # and a connection per checkpoint on whichever default-executor thread was free cost a
        # schema read each time and left memory in several threads' malloc arenas.
        self._ckpt_exec: ThreadPoolExecutor | None = None
        self._ckpt_conn: sqlite3.Connection | None = None
        self._ckpt_task: asyncio.Task[None] | None = None
        self._commits_at_checkpoint = 0
        self.commits = 0
        self.jobs_done = 0
        self.fsyncs = 0
        # Seconds from handing a WAL fsync to its thread to its end, hop included: what the
        # durable commits of a group waited for past their COMMIT (3-5 ms a sync on this kind of
        # VM's disk, against ~10 ms of an accept's whole latency under load).
        self.fsync_s = 0.0
        # Cross-process write lock (an flock beside the database): with several processes on
        # one file (server.workers, the owner and its acceptors), SQLite's own busy handler
        # sleeps 1-100 ms on the event loop thread whenever another process holds the write
        # lock. Instead a contended batch waits for the flock in a thread, off the loop, and
        # runs as soon as the other process's commit releases it.
        self._lock_fd: int | None = None
        # The lock thread's own description of the lock file: it takes the lock only to see it
        # free and gives it back (_flush_when_locked). Through the loop's description, the
        # loop's own try succeeds while the thread has it (a wait left behind by a cancelled
        # batch), and the thread's LOCK_UN would then release the lock under the loop's batch.
        self._wait_fd: int | None = None
        self._lock_waiter: ThreadPoolExecutor | None = None
        self._flush_task: asyncio.Task[None] | None = None
        self.lock_waits = 0
        # Waits that saw the lock free and found it taken again by the loop's turn (another
        # process's loop took it first): waited for once more (see _flush_when_locked).
        self.lock_retakes = 0
        # Where the one writer's time goes (smpp_bridge_store_write_lock_*): seconds this process
        # held the write lock writing batches, and, from its checkpoint thread (which alone adds
        # to the second), finishing a WAL checkpoint; seconds its batches waited while another
        # held it.
        self.lock_held_s = 0.0
        self.ckpt_lock_held_s = 0.0
        self.lock_wait_s = 0.0
        # CPU time the holding thread used meanwhile: the rest of the time held it was waiting,
        # for a CPU (the cores are full: every other process waits for the lock meanwhile) or for
        # the disk. Measured at 25-30% of the time held under the benchmark with two acceptors.
        self.lock_cpu_s = 0.0
        self.ckpt_lock_cpu_s = 0.0
        self.reruns = 0  # batches run again with savepoints after a bare job raised
        # What the bare jobs (the accepts) of the open batch left to write at its end, under
        # keys of their own, and the function that writes it (SqliteStore's running sums of
        # accounts: session 53): written before any other job of the batch runs and before
        # its COMMIT, so no other job reads around it; emptied at each BEGIN (a rollback drops
        # it with the rest).
        self.held: dict[Any, Any] = {}
        self.write_held: Callable[[sqlite3.Connection, dict[Any, Any]], None] | None = None
        # True while the open batch runs its bare jobs without savepoints: they may leave rows
        # to `held` (SqliteStore's accepts: sqlite_rows), since a failure writing them reruns
        # the batch with savepoints (`_write_held`). False in that rerun: each job writes its
        # own, so a failure is its own caller's.
        self.deferring = False
        self.defer_min_jobs = DEFER_MIN_JOBS
        self._sync_failed: OSError | None = None  # a WAL fsync failed: no durable write since
        # The last write failed for a full disk, and none has committed since (see disk_full).
        self._full = False
        self._owner_fd: int | None = None  # see hold_ownership
        # The file the connection opened (device, inode), and why it is no longer the store on
        # disk, once seen (see check_files).
        self._identity: tuple[int, int] | None = None
        self._lost: str | None = None
        self._checked_at = 0.0

    def start(self, setup: Callable[[sqlite3.Connection], None]) -> None:
        """Open the connection and run `setup` (migrations) on it."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        _check_usable(self._path)
        _create_private(self._path)
        self._lock_fd = open_beside(self._path, ".writelock")
        try:
            self._conn = connect(self._path)
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX)  # migrations: one process at a time
            try:
                setup(self._conn)
            finally:
                fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        except sqlite3.Error as exc:
            if not isinstance(exc, sqlite3.OperationalError):
                raise
            # sqlite3 names no file ("unable to open database file"): the operator needs it.
            raise StoreUnusableError(f"store {self._path}: {exc}") from None
        st = os.stat(self._path)
        self._identity = (st.st_dev, st.st_ino)
        with contextlib.suppress(FileNotFoundError):  # else the first fsync opens it
            self._wal_fd = os.open(str(self._path) + "-wal", os.O_RDONLY)

    def check_files(self) -> str | None:
        """Why the file this store writes is no longer the store on disk (deleted, replaced, its
        -wal file deleted), or None. Once seen, every write is refused and the final checkpoint
        skipped, until a restart.

        Why: SQLite keeps writing to the files it opened. A store deleted or replaced under a
        running daemon (a restore without stopping, a cleanup script) went on answering 202 and
        ready, into an unlinked file no restart reads; a replaced one was corrupted at shutdown
        by the checkpoint of the old WAL into the new file."""
        if self._lost is not None or self._identity is None:
            return self._lost
        why = None
        try:
            st = os.stat(self._path)
            if (st.st_dev, st.st_ino) != self._identity:
                why = "the store file was replaced"
            elif self._wal_fd is not None and os.fstat(self._wal_fd).st_nlink == 0:
                why = "the store's -wal file was deleted"
        except FileNotFoundError:
            why = "the store file was deleted"
        except OSError:
            return None  # cannot tell (a transient error): the writes themselves will say
        if why is not None:
            self._lost = why
            log.critical(
                "%s (%s) under the running daemon: writes refused until a restart; what was "
                "committed since is in a file a restart does not read",
                why,
                self._path,
            )
        return self._lost

    @property
    def lost(self) -> str | None:
        return self._lost

    def hold_ownership(
        self, refusal: str = "one daemon per SQLite store; several instances need PostgreSQL"
    ) -> None:
        """Take, for this process's lifetime, the lock that says one daemon owns this store.

        Why: a SQLite store has one owner, which gives back every claim at start-up (no other
        instance can hold one). A second daemon started on the same file by mistake (a manual
        run beside the service, two containers on one volume) took back the live one's claims
        and sent them again over its own binds: measured, a quarter of the messages in flight
        reached the SMSC twice. Acceptor processes share the store without owning it."""
        if self._owner_fd is not None:
            return  # held already (a second recovery by the same daemon)
        fd = owner_lock(self._path, refusal)
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._owner_fd = fd

    # -- public -----------------------------------------------------------------------------------

    async def write(
        self,
        job: Callable[[sqlite3.Connection], T],
        *,
        single: bool = False,
        bare: bool = False,
        durable: bool = True,
    ) -> T:
        """Run `job` in the next group commit. `single=True` promises the job makes at most one
        write statement, which SQLite makes atomic by itself: no savepoint needed around it.

        `bare=True` promises the job takes back its own writes before it returns a refusal, so
        it runs without a savepoint (SAVEPOINT + RELEASE were ~9 µs of each accept, inside the
        write lock). If it raises anyway (a fault nobody planned for), its writes may be half
        done: the whole batch is rolled back and run again with a savepoint per job, so the
        fault stays with its own caller. A bare job may also leave writes to the batch's end in
        `held` (the accepts' running sums), which `write_held` writes before any job that is
        not bare and before the COMMIT.

        `durable=False` returns once committed, without waiting for the fsync: for writes that a
        power cut may lose without breaking a promise (claims and submit results are redone after
        a restart; heartbeats and webhook bookkeeping repeat). A process crash loses nothing
        committed either way: the WAL is in the OS page cache."""
        if self._closed:
            raise StoreClosedError("store is closed")
        if self._sync_failed is not None and durable:
            raise StoreClosedError(f"the store's fsync failed, restart it: {self._sync_failed}")
        now = time.monotonic()
        if now - self._checked_at >= 1.0:  # a stat a second, not one per write
            self._checked_at = now
            self.check_files()
        if self._lost is not None:
            raise StoreClosedError(f"{self._lost}: restart the daemon")
        loop = self._loop = aio.running(self._loop)
        fut: asyncio.Future[T] = loop.create_future()
        self._jobs.append((job, fut, _SINGLE if single else _BARE if bare else _GUARDED, durable))
        if len(self._jobs) >= self._max_batch:
            self._run_now()
        elif self._scheduled is None:
            self._scheduled = (
                loop.call_later(self._linger, self._run_now)
                if self._linger > 0
                else loop.call_soon(self._run_now)
            )
        return await fut

    def disk_full(self) -> bool:
        """Writes fail for a full disk: set by a write refused with SQLITE_FULL, cleared here
        once the file system has FREE_AGAIN_BYTES free (asked at each commit meanwhile, and by
        /readyz: an acceptor it keeps out of traffic would otherwise never write to find out)."""
        if self._full:
            try:
                st = os.statvfs(self._path.parent)
            except OSError:
                return True
            if st.f_bavail * st.f_frsize >= FREE_AGAIN_BYTES:
                self._full = False
        return self._full

    @property
    def sync_failed(self) -> bool:
        """A WAL fsync failed: durable writes are refused until a restart."""
        return self._sync_failed is not None

    async def read(self, job: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed or self._conn is None:
            raise StoreClosedError("store is closed")
        return job(self._conn)

    async def read_heavy(self, job: Callable[[sqlite3.Connection], T], lane: str = "report") -> T:
        """A read that may take milliseconds (reports, exports, operator views): run it on a
        thread with its own read-only connection so the event loop keeps serving. WAL lets it
        read a consistent snapshot while the loop keeps writing.

        `lane`: reads of another lane do not queue behind these. The sweep's reads go on
        "sweep": behind a report of minutes on the one thread, the sweeper (every 5 s, the
        receipt timeouts and validity expiries with it) waited as long."""
        if self._closed:
            raise StoreClosedError("store is closed")
        runs = self._lanes.get(lane)
        if runs is None:
            runs = self._lanes[lane] = _ReadLane(self._path, lane)
        return await runs.run(job)

    async def close(self) -> None:
        if self._closed:
            return
        if self._jobs:
            self._run_now()
        while self._flush_task is not None and not self._flush_task.done():
            await asyncio.shield(self._flush_task)
        while self._sync_task is not None and not self._sync_task.done():
            await asyncio.shield(self._sync_task)
        self._closed = True
        if self._ckpt_task is not None and not self._ckpt_task.done():
            await asyncio.shield(self._ckpt_task)  # it holds the write lock for its last step
        for runs in self._lanes.values():
            runs.close()
        self._lanes = {}
        if self._lock_waiter is not None:
            self._lock_waiter.shutdown(wait=True)
            self._lock_waiter = None
        if self._ckpt_exec is not None:
            self._ckpt_exec.shutdown(wait=True)
            self._ckpt_exec = None
        if self._ckpt_conn is not None:
            self._ckpt_conn.close()
            self._ckpt_conn = None
        if self._conn is not None:
            # Empty the WAL on the way out, the same two steps under the write lock, from a
            # thread: an operator command closing its store must not stall a running daemon.
            try:
                await asyncio.get_running_loop().run_in_executor(
                    None, partial(self._checkpoint_sync, final=True)
                )
            except (sqlite3.Error, OSError) as exc:
                log.warning(
                    "final WAL checkpoint failed (%s); the WAL is replayed at next open", exc
                )
        if self._wal_fd is not None:
            os.close(self._wal_fd)
            self._wal_fd = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._wait_fd is not None:
            os.close(self._wait_fd)
            self._wait_fd = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._owner_fd is not None:  # last: nothing of ours touches the file after it
            os.close(self._owner_fd)
            self._owner_fd = None

    # -- batches ----------------------------------------------------------------------------------

    def _run_now(self) -> None:
        if self._scheduled is not None:
            self._scheduled.cancel()
            self._scheduled = None
        if self._flush_task is not None:
            return  # a batch is waiting for the write lock: it takes these jobs too
        if self._lock_fd is None:
            self._flush()
            return
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.lock_waits += 1
            self._flush_task = aio.running(self._loop).create_task(self._flush_when_locked())
            return
        try:
            self._flush()
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    async def _flush_when_locked(self) -> None:
        """Wait in a thread until the write lock is free, then take it on the loop, without
        blocking, and write the batch there; if another process took it meanwhile, wait again.

        The thread takes the lock only to see it free and gives it back at once: it does not
        hold it across the hop to the loop. Handed over held (sessions 31-54), the lock stayed
        taken from the thread's flock until the loop's callback ran, while the loop finished
        what it was running or, asleep, waited to be woken and for a CPU: under `bench.py
        --workers 2` on two cores, 23-208 µs of every message's lock time, mostly with nobody
        writing (`scripts/bench_lock_sched.py`, README note 30), and every other process
        waited. Now a process whose loop is running takes the lock meanwhile. Resuming a task
        after the thread (a wrapped future, then the task's step) took two hops: the callback
        the thread schedules runs one hop later, ahead of the I/O callbacks of the loop's next
        round."""
        assert self._lock_fd is not None
        if self._lock_waiter is None:
            self._lock_waiter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-lock")
        if self._wait_fd is None:
            self._wait_fd = open_beside(self._path, ".writelock")
        fd, wait_fd = self._lock_fd, self._wait_fd
        loop = self._loop = aio.running(self._loop)
        written: asyncio.Future[None] = loop.create_future()
        since = time.perf_counter()

        def wait() -> None:
            self._lock_waiter.submit(_wait_free, wait_fd).add_done_callback(  # type: ignore[union-attr]
                lambda w: loop.call_soon_threadsafe(free, w)
            )

        def free(waiting: Future[None]) -> None:  # on the loop, once the thread saw it free
            if written.cancelled():  # no longer waited for: nothing taken, nothing to give back
                return
            try:
                waiting.result()
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:  # another process took it first: wait for it again
                    self.lock_retakes += 1
                    wait()
                    return
                self.lock_wait_s += time.perf_counter() - since
                try:
                    self._flush()
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            except BaseException as exc:  # the task below resolves the callers with it
                written.set_exception(exc)
            else:
                written.set_result(None)

        try:
            wait()
            # Cancelled here, `written` is cancelled with it: `free` then takes nothing.
            await written
        except BaseException as exc:  # never strand the waiting callers
            _resolve([(fut, False, exc) for _job, fut, _k, _d in self._jobs])
            self._jobs = []
            if not isinstance(exc, Exception):
                raise
        finally:
            self._flush_task = None
            if self._jobs:
                self._run_now()

    def _flush(self) -> None:
        while self._jobs:
            batch, self._jobs = self._jobs[: self._max_batch], self._jobs[self._max_batch :]
            self._run_batch(batch)

    def _run_batch(self, batch: list[tuple[Job, asyncio.Future[Any], int, bool]]) -> None:
        began, cpu = time.perf_counter(), time.thread_time()
        try:
            self._write_batch(batch)
        finally:
            # The CPU clock is read after the wall clock, at both ends: capped at the time held,
            # or the sum ran ~0.1 µs a batch ahead of it (the CPU time exceeded the held time by
            # 9 µs over one test's ~100 batches in a loaded run).
            held = time.perf_counter() - began
            self.lock_held_s += held
            self.lock_cpu_s += min(time.thread_time() - cpu, held)

    def _write_batch(self, batch: list[tuple[Job, asyncio.Future[Any], int, bool]]) -> None:
        conn = self._conn
        assert conn is not None
        guard_all = False
        while True:
            try:
                try:
                    results, at_once = self._run_jobs(conn, batch, guard_all=guard_all)
                except _RerunGuarded:
                    self.reruns += 1
                    guard_all = True
                    continue
                conn.execute("COMMIT")
                self.commits += 1
                self.jobs_done += len(batch)
                _commit_failures.ok()
                if self._full:
                    # Only room clears it, not any commit: an idle claim that writes nothing
                    # new commits on a full disk too, and /readyz said ready again within a
                    # second while every send was refused (readiness flapped, its alert never
                    # fired, the load balancer kept sending).
                    self.disk_full()
                break
            except _TransactionLost as lost:
                self._full = self._full or _is_full(lost.error)
                # SQLite rolled the whole transaction back (a disk full or I/O error inside a
                # statement): that job fails with its own error, the others run again in a new
                # transaction. Carried on, the next jobs ran in autocommit (committed behind
                # callers told they failed) and our ROLLBACK's "no transaction is active" hid
                # the disk-full error (a 500 instead of a 503).
                _resolve([(batch[lost.index][1], False, lost.error)])
                batch = batch[: lost.index] + batch[lost.index + 1 :]
                if not batch:
                    return
            except Exception as exc:  # the commit itself failed: nothing landed
                self._full = self._full or _is_full(exc)
                if is_unavailable(exc):
                    _commit_failures.error("store commit failed", exc)
                else:
                    log.exception("store commit failed")
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                _resolve([(fut, False, exc) for _job, fut, _kind, _durable in batch])
                return
        _resolve(at_once)
        since = self.commits - self._commits_at_checkpoint
        due = since >= CHECKPOINT_EVERY or (since % 25 == 0 and self._wal_bytes() > WAL_MAX_BYTES)
        if due and not self._checkpointing:
            self._commits_at_checkpoint = self.commits
            self._checkpointing = True
            self._ckpt_task = aio.running(self._loop).create_task(self.checkpoint())
        if not self._fsync:
            _resolve(results)
            return
        if not results:
            return
        self._unsynced.extend(results)
        if self._sync_task is None or self._sync_task.done():
            self._sync_task = aio.running(self._loop).create_task(self._sync_loop())

    def _run_jobs(
        self,
        conn: sqlite3.Connection,
        batch: list[tuple[Job, asyncio.Future[Any], int, bool]],
        *,
        guard_all: bool,
    ) -> tuple[
        list[tuple[asyncio.Future[Any], bool, Any]], list[tuple[asyncio.Future[Any], bool, Any]]
    ]:
        """Run the batch's jobs in one open transaction: (durable results, the others)."""
        results: list[tuple[asyncio.Future[Any], bool, Any]] = []
        at_once: list[tuple[asyncio.Future[Any], bool, Any]] = []
        conn.execute("BEGIN IMMEDIATE")
        held = self.held
        held.clear()
        # Only in a batch of `defer_min_jobs` jobs or more: writing the held rows costs ~45 k
        # instructions of Python a batch, and multi-row statements save ~7 k a row of each
        # table (1-part, counted: 4 accepts a batch even, 2 worse by 18 k an accept, 8 better
        # by 14 k).
        self.deferring = not guard_all and len(batch) >= self.defer_min_jobs
        for i, (job, fut, kind, durable) in enumerate(batch):
            out = results if durable else at_once
            if held and kind != _BARE:
                self._write_held(conn, guard_all)
            if kind == _SINGLE or (kind == _BARE and not guard_all):
                try:
                    out.append((fut, True, job(conn)))
                except Exception as exc:
                    if not conn.in_transaction:
                        raise _TransactionLost(i, exc) from exc
                    if kind == _BARE:  # its writes may be half done: take the batch back
                        conn.execute("ROLLBACK")
                        raise _RerunGuarded from exc
                    out.append((fut, False, exc))  # the one statement failed: nothing landed
                continue
            conn.execute("SAVEPOINT job")
            try:
                value = job(conn)
            except Exception as exc:  # handed to the awaiting caller
                if not conn.in_transaction:
                    raise _TransactionLost(i, exc) from exc
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                out.append((fut, False, exc))
            else:
                conn.execute("RELEASE job")
                out.append((fut, True, value))
        if held:
            self._write_held(conn, guard_all)
        return results, at_once

    def _write_held(self, conn: sqlite3.Connection, guard_all: bool) -> None:
        """What the batch's bare jobs left to write (`held`), written now. A failure in a batch
        run bare rolls it back and runs it again with savepoints (`_RerunGuarded`), where the
        bare jobs write their own rows at once (`deferring` false): a row that cannot be written
        (a constraint, a full disk) fails its own caller, not the batch (session 63). There, a
        failure fails the whole batch (the caller's rollback): what is still held then is every
        holder's (the running sums)."""
        assert self.write_held is not None, "a job held writes with no writer set"
        try:
            self.write_held(conn, self.held)
        except Exception as exc:
            if guard_all:
                raise
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise _RerunGuarded from exc
        finally:
            self.held.clear()

    def _wal_bytes(self) -> int:
        """Bytes in the WAL since it last started over: what the next checkpoint copies.

        Once the file is reused in place its size says nothing, so this counts the frames at its
        start whose salts are the WAL header's (a restart changes the salts, so the frames of
        earlier rounds further on never match): a binary search, a dozen 16-byte reads
        (sqlite.org/fileformat2.html#walformat). From the -wal file, never the -shm: SQLite
        takes no locks on the -wal, while opening and closing the -shm dropped this process's
        POSIX locks on it, SQLite's own (session 32: processes died of SIGBUS)."""
        fd = self._wal_fd
        if fd is None:
            return 0
        try:
            return _wal_frames_bytes(fd)
        except OSError:
            return 0

    def _wal_file_bytes(self) -> int:
        try:
            return os.stat(str(self._path) + "-wal").st_size
        except OSError:
            return 0

    async def checkpoint(self) -> None:
        """Copy the WAL into the database from a thread with its own connection, so the WAL stays
        small and the loop never waits for the database fsync itself."""
        if self._closed:
            self._checkpointing = False
            return
        loop = asyncio.get_running_loop()
        if self._ckpt_exec is None:
            self._ckpt_exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-ckpt")
        try:
            await loop.run_in_executor(self._ckpt_exec, self._checkpoint_sync)
        except sqlite3.Error:
            log.exception("WAL checkpoint failed")
        finally:
            self._checkpointing = False

    def _checkpoint_sync(self, *, final: bool = False) -> None:
        """Two steps, so writers never wait for the bulk of it, and never on their event loop.

        PASSIVE first: copies the WAL into the database and syncs it without blocking writers.
        On its own it never catches up under continuous writes (the WAL is only reused once
        everything in it was copied and no reader uses it), and the WAL grows without bound
        (measured: 12.8 GB after 700k messages with an acceptor process). So RESTART follows:
        it copies the little written meanwhile and makes the next writer start the WAL over, and
        TRUNCATE (the same, plus emptying the file) only when the file grew past
        WAL_SHRINK_BYTES. Both block writers while they run, so they run
        holding the cross-process write lock (own file description, so the lock also excludes
        this process's loop): writers then wait for the flock in their lock-waiter threads while
        the loop keeps serving. Before, they waited in SQLite's busy handler on the loop thread,
        and each checkpoint (20-50 ms) stalled every process: that was the accept p99.
        `final` (at close): always TRUNCATE, so a stopped daemon leaves an empty WAL behind.
        """
        if self._lock_fd is None:
            return  # not started, or closed: no write lock to hold the restart under
        if self.check_files() is not None:
            return  # the path names another file now (or none): copying our WAL there breaks it
        conn: sqlite3.Connection | None = None
        lock_fd: int | None = None
        locked_at = locked_cpu = 0.0
        try:
            if final:
                conn = _checkpoint_connection(self._path)
            else:
                if self._ckpt_conn is None:
                    self._ckpt_conn = _checkpoint_connection(self._path)
                conn = self._ckpt_conn
            conn.execute("PRAGMA busy_timeout=5000")
            _busy, in_wal, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            if not final and copied < in_wal:
                # A reader still uses an older snapshot (a report, an export): the restart would
                # hold every writer up for CHECKPOINT_WAIT_MS and then give up. Try next time.
                return
            lock_fd = open_beside(self._path, ".writelock")
            fcntl.flock(lock_fd, fcntl.LOCK_EX)
            locked_at, locked_cpu = time.perf_counter(), time.thread_time()
            # Bounded: a long report holding an old snapshot must not keep every writer waiting;
            # the WAL is then restarted at the next checkpoint.
            conn.execute(f"PRAGMA busy_timeout={CHECKPOINT_WAIT_MS}")
            # A file grown past WAL_SHRINK_BYTES is emptied here, under the lock, so no commit on
            # a loop ever cuts it (journal_size_limit would: ~20 ms on the loop for a 66 MB WAL);
            # below it RESTART reuses the file in place.
            big = final or self._wal_file_bytes() > WAL_SHRINK_BYTES
            mode = "TRUNCATE" if big else "RESTART"
            busy, _log, _done = conn.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
            if busy:
                log.info("WAL restart deferred: a reader held an old snapshot")
        except sqlite3.Error as exc:  # busy beyond the timeout: next time (or at next open)
            log.warning("WAL checkpoint deferred: %s", exc)
        finally:
            if lock_fd is not None:
                os.close(lock_fd)  # releases the flock
                if locked_at:
                    held = time.perf_counter() - locked_at
                    self.ckpt_lock_held_s += held
                    self.ckpt_lock_cpu_s += min(time.thread_time() - locked_cpu, held)
            if final and conn is not None:
                conn.close()

    async def _sync_loop(self) -> None:
        loop = self._loop = aio.running(self._loop)
        while self._unsynced:
            waiting, self._unsynced = self._unsynced, []
            began = time.perf_counter()
            try:
                await loop.run_in_executor(None, self._sync_wal)
                self.fsyncs += 1
                self.fsync_s += time.perf_counter() - began
            except OSError as exc:
                # Fatal, as in PostgreSQL: the kernel reports a write-back error once and marks
                # the pages clean, so the failed group's WAL frames may never reach the disk,
                # and recovery stops at the first missing frame: every later commit would be
                # acknowledged and lost with them at a power cut. Durable writes are refused
                # (503) from here on; a restart's WAL recovery shows what is really on disk.
                log.critical("fsync of the store failed: durable writes refused until a restart")
                self._sync_failed = exc
                _resolve([(fut, False, exc) for fut, _ok, _v in waiting])
                for fut, _ok, _v in self._unsynced:
                    if not fut.done():
                        fut.set_exception(StoreClosedError(f"the store's fsync failed: {exc}"))
                self._unsynced = []
                return
            _resolve(waiting)

    def _sync_wal(self) -> None:
        if self._wal_fd is None:
            wal = Path(str(self._path) + "-wal")
            self._wal_fd = os.open(wal, os.O_RDONLY)
        os.fsync(self._wal_fd)


class _ReadLane:
    """A thread and its own read-only connection, for reads kept off the event loop."""

    def __init__(self, path: Path, name: str) -> None:
        self._path = path
        self._exec = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{name}")
        self._conn: sqlite3.Connection | None = None

    async def run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._exec, self._run, job)

    def _run(self, job: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            self._conn = sqlite3.connect(
                str(self._path), isolation_level=None, check_same_thread=False, timeout=30
            )
            self._conn.execute("PRAGMA query_only=ON")
        self._conn.execute("BEGIN")
        try:
            return job(self._conn)
        finally:
            self._conn.execute("COMMIT")

    def close(self) -> None:
        self._exec.shutdown(wait=True)
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _wal_frames_bytes(fd: int) -> int:
    """The frames at the start of a WAL file that belong to its current round, in bytes."""
    head = os.pread(fd, 32, 0)
    if len(head) < 32:
        return 0
    page = int.from_bytes(head[8:12], "big")
    if page < 512:
        return 0  # not a WAL header (yet)
    salts = head[16:24]
    frame = 24 + page
    lo, hi = 0, max(0, (os.fstat(fd).st_size - 32) // frame)
    while lo < hi:  # frames [0, lo) are this round's; the first of another round ends it
        mid = (lo + hi) // 2
        if os.pread(fd, 16, 32 + mid * frame)[8:16] == salts:
            lo = mid + 1
        else:
            hi = mid
    return lo * frame


def _create_private(path: Path) -> None:
    """Make a new store file readable by its owner only (SQLite gives the -wal and -shm its mode).

    Why: sqlite3 created it with the umask's mode, 0644 under the usual 022, so every local user
    could read the numbers, texts (verification codes) and replies it holds. An existing file
    keeps its mode: the operator's to choose."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _check_usable(path: Path) -> None:
    """Refuse, naming it, a store file this process cannot read and write (or whose directory
    it cannot write: the -wal and -shm files go there). sqlite3 opens an unwritable file read-only
    without a word: the daemon then started, answered ready, and refused every send."""
    if path.exists():
        for need, what in ((os.R_OK, "read"), (os.W_OK, "write")):
            if not os.access(path, need):
                raise StoreUnusableError(
                    f"store {path}: this process (uid {os.getuid()}) cannot {what} it; check its "
                    "owner and mode (a restored copy keeps the owner of whoever copied it)"
                )
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise StoreUnusableError(
            f"store {path}: this process (uid {os.getuid()}) cannot write its directory "
            f"{path.parent} (the -wal and -shm files go there)"
        )


# The fewest jobs a batch runs bare with its accepts' rows held to its end (`deferring`).
DEFER_MIN_JOBS = 8

# How a job is kept apart from the others of its batch (see write()).
_GUARDED, _SINGLE, _BARE = 0, 1, 2


class _RerunGuarded(Exception):
    """A bare job raised: the batch was rolled back and runs again with savepoints."""


class _TransactionLost(Exception):
    """SQLite rolled the batch's transaction back by itself when job `index` failed."""

    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error


def _wait_free(fd: int) -> None:
    """Wait until the write lock is free (on the lock thread): take it, and give it back."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    fcntl.flock(fd, fcntl.LOCK_UN)


def _checkpoint_connection(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=5)
    conn.execute("PRAGMA synchronous=FULL")
    return conn


def _resolve(items: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    for fut, ok, value in items:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
