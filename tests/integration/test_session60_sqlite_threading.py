"""SQLite stays in its serialized threading mode in a process that opens a store (session 60).

Why a test of something left alone: `SQLITE_CONFIG_MULTITHREAD`, which `sqlite_library` could set
in the same window as the memory statistics (session 59), drops the connection's own mutex from
every API call: 85 mutex enters an accept inside the write lock, 206.4 k -> 199.4 k instructions
(3.4%). It is safe only if no connection is ever used by two threads at once, and the sqlite3
module breaks that by itself: a cursor left in cyclic garbage is reset (`sqlite3_reset` on its
connection) by whichever thread runs the collector. The store's own accept leaves its job's
cursor there when it refuses (held by the refusal's traceback; its statements are finished by
then), and a job that raises between the rows of a cursor it holds leaves a stepped statement
there (the first test's read). The collector runs on the thread whose allocation crosses its
threshold: a read lane's building a report's rows, while the loop steps its batches on the same
connection.

The first test shows that reset on another thread with a real store; the second that the store
leaves the process's connections with their mutex (a connection opened as the sqlite3 module
opens one has `sqlite3_db_mutex`): it fails with the multi-thread mode set at the store's open.
"""

from __future__ import annotations

import gc
import json
import os
import sqlite3
import subprocess
import sys
import threading
import weakref
from contextlib import closing
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge.store.sqlite import SqliteStore  # noqa: E402
from tests.integration.test_sqlite_accept_cursor import send, store  # noqa: E402,F401
from tests.integration.test_store_rules import NOW  # noqa: E402


class _Unreadable(Exception):
    """A row a read's code cannot turn into a value (a corrupt row, a bug)."""


async def _read_failing_midway(s: SqliteStore) -> None:
    def job(c: sqlite3.Connection) -> list[str]:
        rows = c.execute("SELECT id FROM messages ORDER BY id")  # two rows
        first = rows.fetchone()
        if first[0] == "m1":
            raise _Unreadable(first[0])  # `rows` stays in the traceback's frame, stepped once
        return [first[0], *(r[0] for r in rows)]

    try:
        await s._runner.read(job)
    except _Unreadable as exc:
        failed = exc  # noqa: F841  (the exception, its traceback and this frame: a cycle)


async def test_a_cursor_in_cyclic_garbage_is_reset_by_the_thread_that_collects(
    store: SqliteStore,  # noqa: F811
    tmp_path: Path,
) -> None:
    for n in (1, 2):
        assert (await store.accept(send(n, f"n{n}", key=f"k{n}"), NOW + n)).accepted
    conn = store._runner._conn
    assert conn is not None
    gc.collect()
    gc.disable()  # the cyclic garbage stays until the other thread collects it
    try:
        await _read_failing_midway(store)
        collected_on: list[str] = []
        for cur in [o for o in gc.get_objects() if type(o) is sqlite3.Cursor]:
            if cur.connection is conn:
                weakref.finalize(cur, lambda: collected_on.append(threading.current_thread().name))
        del cur
        with closing(sqlite3.connect(tmp_path / "bridge.db", timeout=0)) as other:
            # The read's statement, stepped and not reset, holds a read snapshot of the store's
            # connection after the read's end: the WAL cannot start over.
            assert other.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0] == 1
            collector = threading.Thread(target=gc.collect, name="collector")
            collector.start()
            collector.join()
            assert collected_on == ["collector"]
            # Reset there: sqlite3_reset on the store's connection, from the collecting thread.
            assert other.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()[0] == 0
    finally:
        gc.enable()


_CHILD = r"""
import asyncio, ctypes, json, sys
import _sqlite3
sys.path.insert(0, sys.argv[1])
from bridge.store.sqlite import SqliteStore

def has_mutex():
    # A connection opened as the sqlite3 module opens one (READWRITE | CREATE, no mutex flag):
    # the library's threading mode decides whether it gets its own mutex.
    lib = ctypes.CDLL(_sqlite3.__file__)
    lib.sqlite3_db_mutex.restype = ctypes.c_void_p
    db = ctypes.c_void_p()
    assert lib.sqlite3_open_v2(b":memory:", ctypes.byref(db), 0x2 | 0x4, None) == 0
    try:
        return lib.sqlite3_db_mutex(db) is not None
    finally:
        lib.sqlite3_close(db)

async def main():
    s = SqliteStore(sys.argv[2])
    await s.open()
    mutex = has_mutex()
    await s.close()
    library = sys.modules["bridge.store.sqlite_library"]
    print(json.dumps({"state": library.state, "mutex": mutex}))

asyncio.run(main())
"""


def test_the_store_leaves_every_connection_its_mutex(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, _ROOT, str(tmp_path / "bridge.db")],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "SMPP_BRIDGE_SQLITE_MEMSTATUS"},
        check=True,
    )
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # The library was shut down and configured at the store's open (the memory statistics off),
    # and started again serialized.
    assert got == {"state": "off", "mutex": True}
