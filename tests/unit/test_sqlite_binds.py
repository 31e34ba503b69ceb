"""bridge/store/sqlite_binds.py: None, bool and bytes bound through registered adapters (one
dict lookup), not the sqlite3 module's failed `__adapt__` lookup, and stored as before."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bridge.store import sqlite_runner


def test_the_store_registers_an_adapter_for_each() -> None:
    # What the store's runner imports: the adapters are there for every connection it opens.
    assert sqlite_runner.sqlite_binds is not None
    for kind in (type(None), bool, bytes):
        assert (kind, sqlite3.PrepareProtocol) in sqlite3.adapters, kind


def test_the_values_are_stored_as_without_adapters(tmp_path: Path) -> None:
    c = sqlite_runner.connect(tmp_path / "binds.db")
    try:
        c.execute("CREATE TABLE t (a, b, c, d, e, f)")
        c.execute("INSERT INTO t VALUES (?,?,?,?,?,?)", (None, True, False, b"\x00x", b"", 7))
        row = c.execute(
            "SELECT a, b, c, d, e, f, typeof(a), typeof(b), typeof(d), typeof(e) FROM t"
        ).fetchone()
        assert row == (None, 1, 0, b"\x00x", b"", 7, "null", "integer", "blob", "blob")
        assert type(row[1]) is int
        # Named arguments and executemany take the same path.
        c.executemany("INSERT INTO t (a, b) VALUES (:a, :b)", [{"a": None, "b": b"y"}] * 2)
        assert c.execute("SELECT count(*) FROM t WHERE a IS NULL AND b = x'79'").fetchone() == (2,)
    finally:
        c.close()
