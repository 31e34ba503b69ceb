"""Run SQLite work off the event loop with group commit.

One writer thread owns the only write connection. Jobs that arrive while a commit is in progress
are run together in the next transaction (each inside its own SAVEPOINT, so one failing job does not
undo the others), which turns N fsyncs into one: throughput does not hinge on one fsync per request.
Readers use their own connections on a small thread pool; WAL lets them run beside the writer.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("bridge.store")

T = TypeVar("T")
Job = Callable[[sqlite3.Connection], Any]

_STOP = object()


def connect(path: str | Path, *, synchronous: str = "FULL") -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    # FULL: a commit survives power loss, not only a process crash ("accepted means durable").
    conn.execute(f"PRAGMA synchronous={synchronous}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA busy_timeout=30000")
    conn.execute("PRAGMA cache_size=-65536")
    return conn


class SqliteRunner:
    def __init__(
        self,
        path: str | Path,
        *,
        linger_ms: float = 0.0,
        max_batch: int = 500,
        readers: int = 2,
        synchronous: str = "FULL",
    ) -> None:
        self._path = Path(path)
        self._linger = linger_ms / 1000.0
        self._max_batch = max_batch
        self._synchronous = synchronous
        self._jobs: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="sqlite-read")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.commits = 0
        self.jobs_done = 0

    def start(self, setup: Callable[[sqlite3.Connection], None]) -> None:
        """Open the writer connection, run `setup` (migrations) on it, start the writer thread."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self._path, synchronous=self._synchronous)
        setup(conn)
        self._thread = threading.Thread(
            target=self._writer, args=(conn,), name="sqlite-writer", daemon=True
        )
        self._thread.start()

    async def write(self, job: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._jobs.put((job, fut, loop))
        return await fut

    async def read(self, job: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._readers, self._run_read, job)

    def _run_read(self, job: Callable[[sqlite3.Connection], T]) -> T:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self._path, synchronous=self._synchronous)
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._lock:
                self._reader_conns.append(conn)
        conn.execute("BEGIN")
        try:
            return job(conn)
        finally:
            conn.execute("COMMIT")

    async def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(_STOP)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join)
            self._thread = None
        self._readers.shutdown(wait=True)
        with self._lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    # -- writer thread -------------------------------------------------------------------------

    def _writer(self, conn: sqlite3.Connection) -> None:
        try:
            while True:
                first = self._jobs.get()
                if first is _STOP:
                    return
                batch = [first]
                stop = self._collect(batch)
                self._run_batch(conn, batch)
                if stop:
                    return
        finally:
            conn.close()

    def _collect(self, batch: list[Any]) -> bool:
        deadline = time.monotonic() + self._linger
        while len(batch) < self._max_batch:
            try:
                item = self._jobs.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                try:
                    item = self._jobs.get(timeout=remaining)
                except queue.Empty:
                    return False
            if item is _STOP:
                return True
            batch.append(item)
        return False

    def _run_batch(self, conn: sqlite3.Connection, batch: list[Any]) -> None:
        results: list[tuple[asyncio.Future[Any], asyncio.AbstractEventLoop, bool, Any]] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for job, fut, loop in batch:
                conn.execute("SAVEPOINT job")
                try:
                    value = job(conn)
                except BaseException as exc:
                    conn.execute("ROLLBACK TO job")
                    conn.execute("RELEASE job")
                    results.append((fut, loop, False, exc))
                else:
                    conn.execute("RELEASE job")
                    results.append((fut, loop, True, value))
            conn.execute("COMMIT")
            self.commits += 1
            self.jobs_done += len(batch)
        except BaseException as exc:
            log.exception("store commit failed")
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            results = [(fut, loop, False, exc) for _job, fut, loop in batch]
        by_loop: dict[asyncio.AbstractEventLoop, list[Any]] = {}
        for item in results:
            by_loop.setdefault(item[1], []).append(item)
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_resolve_all, items)
            except RuntimeError:  # loop closed: nobody is waiting any more
                pass


def _resolve_all(items: list[Any]) -> None:
    for fut, _loop, ok, value in items:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)
