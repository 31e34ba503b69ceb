"""SQLite's memory statistics off in a process that opens a store (session 59, sqlite_library).

With them on (Debian's build), every allocation a statement makes takes SQLite's global memory
mutex: ~18 k instructions of a one-part accept's ~225 k inside the store's write lock. The store's
first connection turns them off, once, when no connection is open yet. Each case runs in a fresh
interpreter (the setting is the process's, and the library can be shut down only before any
connection): a store opened first has them off and still accepts and reads as before; a
connection opened before the store keeps them on and keeps working; the environment variable
keeps them on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]

_CHILD = r"""
import asyncio, ctypes, json, sqlite3, sys
import _sqlite3
sys.path.insert(0, sys.argv[1])
lib = ctypes.CDLL(_sqlite3.__file__)
lib.sqlite3_memory_used.restype = ctypes.c_int64
early = sqlite3.connect(sys.argv[2] + ".other") if sys.argv[3] == "early" else None
from tests.integration.test_sqlite_accept_cursor import account, send, sign
from tests.integration.test_store_rules import NOW
from bridge.domain.ledger import topup
from bridge.store.models import AppKey
from bridge.store.sqlite import SqliteStore

async def main():
    s = SqliteStore(sys.argv[2])
    await s.open()
    await s.create_account(account())
    await sign(s)
    await s.append_ledger("acc_a", topup(1000, NOW, "funds"))
    await s.add_key(AppKey("K1", "acc_a", b"sealed", "active", NOW), max_active=2)
    outs = [await s.accept(send(i, f"n{i}", f"k{i}"), NOW) for i in range(3)]
    used = lib.sqlite3_memory_used()
    if early is not None:
        early.execute("CREATE TABLE t (a TEXT)")
        early.execute("INSERT INTO t VALUES ('still works')")
    await s.close()
    print(json.dumps({
        "state": getattr(sys.modules.get("bridge.store.sqlite_library"), "state", None),
        "used": used,
        "accepted": [o.accepted for o in outs],
        "early": None if early is None else early.execute("SELECT a FROM t").fetchone()[0],
    }))

asyncio.run(main())
"""


def _run(tmp_path: Path, early: bool, env: dict[str, str] | None = None) -> dict[str, object]:
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _CHILD,
            str(_ROOT),
            str(tmp_path / "bridge.db"),
            "early" if early else "late",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def test_a_store_opened_first_turns_the_statistics_off(tmp_path: Path) -> None:
    got = _run(tmp_path, early=False)
    assert got["state"] == "off"
    assert got["used"] == 0  # nothing counted (main: the store's connections' memory)
    assert got["accepted"] == [True, True, True]
    rows = _sql(tmp_path / "bridge.db", "SELECT COUNT(*) FROM messages")
    assert rows == [(3,)]


def test_a_connection_open_before_keeps_them_on_and_working(tmp_path: Path) -> None:
    got = _run(tmp_path, early=True)
    assert got["state"] == "in use"
    assert isinstance(got["used"], int) and got["used"] > 0
    assert got["accepted"] == [True, True, True]
    assert got["early"] == "still works"


def test_the_environment_keeps_them_on(tmp_path: Path) -> None:
    got = _run(tmp_path, early=False, env={"SMPP_BRIDGE_SQLITE_MEMSTATUS": "1"})
    assert got["state"] == "kept"
    assert isinstance(got["used"], int) and got["used"] > 0
    assert got["accepted"] == [True, True, True]


def _sql(path: Path, sql: str) -> list[tuple[object, ...]]:
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(path)) as db:
        return db.execute(sql).fetchall()
