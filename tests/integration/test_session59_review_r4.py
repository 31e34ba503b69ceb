"""Review r4 of session 59's merges h1 (packed_rows) and h2 (sqlite_library).

1. `pipe.packed_rows` read a statement's rows again by their columns after any
   OperationalError of the packed read, for the values JSON cannot carry (a BLOB, an infinite
   REAL). An I/O error reading a page is an OperationalError too, and SQLite answers it, even in
   a SELECT, by rolling the whole transaction back: read again (the error gone), the job went on
   in autocommit, each of its later writes committed on its own, and the runner, finding no
   savepoint to release, failed every job of the batch. Half a job on disk (its writes after
   the read), the other half and the batch's other jobs lost, every caller told it failed with
   "no such savepoint" (a 500, not the store's unavailability). The I/O error here is real: the
   store file's descriptors are swapped for a write-only one for the packed read alone (pread
   fails with EBADF, SQLite's SQLITE_IOERR_READ) and put back before the next statement.
2. `sqlite_library.memstatus_off` shut SQLite down whenever `sqlite3_memory_used()` was 0, taken
   as "no connection open". With the statistics already off (a build with
   SQLITE_DEFAULT_MEMSTATUS=0, one of SQLite's recommended options; here set so before anything
   else, as such a build starts) nothing is counted: the 0 held with a connection open, and the
   library was shut down and started again under it (SQLite requires every connection closed
   first), for no gain.
3. `sqlite_library` imported ctypes at its top: a Python without ctypes could not import the
   store at all.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from bridge.store import sqlite_pipeline as pipe
from bridge.store.base import is_unavailable
from bridge.store.sqlite_runner import SqliteRunner

_ROOT = Path(__file__).resolve().parents[2]


def _setup(c: sqlite3.Connection) -> None:
    c.execute("CREATE TABLE IF NOT EXISTS rows (k INTEGER PRIMARY KEY, v TEXT)")
    c.execute("CREATE TABLE IF NOT EXISTS counter (id INTEGER PRIMARY KEY, n INTEGER)")
    c.execute("INSERT OR IGNORE INTO counter (id, n) VALUES (1, 0)")


def _fds_of(path: Path) -> list[int]:
    out = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{name}") == str(path):
                out.append(int(name))
        except OSError:
            continue
    return out


def _counter(path: Path) -> int:
    c = sqlite3.connect(path)
    try:
        return int(c.execute("SELECT n FROM counter WHERE id=1").fetchone()[0])
    finally:
        c.close()


async def test_an_io_error_in_a_packed_read_fails_its_job_not_half_of_it(tmp_path: Path) -> None:
    db = tmp_path / "io.db"
    runner = SqliteRunner(db, linger_ms=20, max_batch=50)
    runner.start(_setup)
    # Rows the runner's connection has not read: written by another, checkpointed into the
    # file (its reads go to the store file, not the WAL or its cache).
    other = sqlite3.connect(db, isolation_level=None)
    other.execute("BEGIN")
    other.executemany("INSERT INTO rows VALUES (?, ?)", [(i, "x" * 500) for i in range(2000)])
    other.execute("COMMIT")
    other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    other.close()
    fds = _fds_of(db)
    assert fds
    bad = os.open(db, os.O_WRONLY)
    saved = {fd: os.dup(fd) for fd in fds}

    def put_back() -> None:
        for fd in fds:
            os.dup2(saved[fd], fd)

    def trace(sql: str) -> None:
        if "json_group_array" in sql:  # the packed read alone fails
            for fd in fds:
                os.dup2(bad, fd)
        else:
            put_back()

    def read_between_writes(c: sqlite3.Connection) -> int:
        c.execute("UPDATE counter SET n=n+100 WHERE id=1")
        c.set_trace_callback(trace)
        try:
            rows = pipe.packed_rows(c, "k, v", "FROM rows", ())
        finally:
            c.set_trace_callback(None)
            put_back()
        c.execute("UPDATE counter SET n=n+1000 WHERE id=1")
        return len(rows)

    def bump(c: sqlite3.Connection) -> str:
        c.execute("UPDATE counter SET n=n+1 WHERE id=1")
        return "bumped"

    try:
        read, bumped = await asyncio.gather(
            runner.write(read_between_writes), runner.write(bump), return_exceptions=True
        )
        on_disk = _counter(db)
        # A job is all or nothing: never its second write without its first.
        assert on_disk % 1000 // 100 == on_disk // 1000, f"half a job on disk: {on_disk}"
        # Each caller told what is on disk.
        assert (read == 2000) == (on_disk // 1000 == 1), (read, on_disk)
        assert (bumped == "bumped") == (on_disk % 10 == 1), (bumped, on_disk)
        # The failure says what it was: the store's I/O, not "no such savepoint".
        assert isinstance(read, sqlite3.OperationalError) and is_unavailable(read), read
        assert bumped == "bumped" and on_disk == 1
        # The store still reads and writes.
        assert await runner.write(lambda c: len(pipe.packed_rows(c, "k", "FROM rows", ()))) == 2000
    finally:
        put_back()
        os.close(bad)
        for fd in saved.values():
            os.close(fd)
        await runner.close()


_CHILD = r"""
import ctypes, json, sqlite3, sys
import _sqlite3
sys.path.insert(0, sys.argv[1])
lib = ctypes.CDLL(_sqlite3.__file__)
lib.sqlite3_memory_used.restype = ctypes.c_int64
# As a build with SQLITE_DEFAULT_MEMSTATUS=0 starts: the statistics off before any connection.
assert lib.sqlite3_shutdown() == 0
assert lib.sqlite3_config(ctypes.c_int(9), ctypes.c_int(0)) == 0
assert lib.sqlite3_initialize() == 0
early = sqlite3.connect(sys.argv[2] + ".other")
early.execute("CREATE TABLE t (a TEXT)")
used = lib.sqlite3_memory_used()

from bridge.store import sqlite_library
calls = []
found = sqlite_library._library


class Spy:
    def __init__(self, api):
        self.api = api

    def __getattr__(self, name):
        fn = getattr(self.api, name)

        def call(*args):
            calls.append(name)
            return fn(*args)

        return call


sqlite_library._library = lambda: (lambda api: None if api is None else Spy(api))(found())
from bridge.store.sqlite_runner import connect
conn = connect(sys.argv[2])
conn.execute("CREATE TABLE s (b TEXT)")
early.execute("INSERT INTO t VALUES ('still works')")
print(json.dumps({
    "used": used,
    "state": sqlite_library.state,
    "calls": calls,
    "early": early.execute("SELECT a FROM t").fetchone()[0],
}))
"""


def test_statistics_already_off_leave_the_library_running(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(_ROOT), str(tmp_path / "bridge.db")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["used"] == 0  # a connection open, and nothing counted
    assert "sqlite3_shutdown" not in got["calls"], got
    assert got["state"] == "already off"
    assert got["early"] == "still works"


_NO_CTYPES = r"""
import asyncio, json, sys
sys.modules["ctypes"] = None  # a Python built without it (libffi missing): import fails
sys.path.insert(0, sys.argv[1])
from bridge.store.sqlite import SqliteStore
from bridge.store import sqlite_library


async def main():
    s = SqliteStore(sys.argv[2])
    await s.open()
    version = await s.schema_version()
    await s.close()
    print(json.dumps({"state": sqlite_library.state, "version": version}))

asyncio.run(main())
"""


def test_a_python_without_ctypes_still_opens_the_store(tmp_path: Path) -> None:
    """3. The module imported ctypes at its top: in a Python without it, importing the store
    failed (every store command, the daemon), though its docstring says such a process keeps
    the statistics on and works as before, as it did before session 59."""
    out = subprocess.run(
        [sys.executable, "-c", _NO_CTYPES, str(_ROOT), str(tmp_path / "bridge.db")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["state"] == "unreachable"
    assert got["version"] >= 38
