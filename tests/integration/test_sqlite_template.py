"""tests/sqlite_template.py: the migrated file tests copy to their store path is a whole store
as a fresh migration leaves it (the store's first open finds nothing to migrate, the schema and
its rows are a new file's), with the mode SQLite gives a file it makes; a file a test put there
first is kept."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bridge.store import migrate
from bridge.store.sqlite import SqliteStore
from tests.sqlite_template import migrated_copy


def _schema(path: Path) -> list[tuple[object, ...]]:
    conn = sqlite3.connect(path)
    try:
        return sorted(
            [
                *conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master"),
                *conn.execute("SELECT 'version', version, '', '' FROM schema_version"),
                *conn.execute("PRAGMA journal_mode"),
                *conn.execute("PRAGMA page_size"),
                *conn.execute("PRAGMA auto_vacuum"),
                *conn.execute("PRAGMA user_version"),
            ],
            key=repr,
        )
    finally:
        conn.close()


async def test_a_copy_opens_migrated_as_a_new_file_would_be_and_a_file_there_is_kept(
    tmp_path: Path,
) -> None:
    newest = max(v for v, _name, _sql in migrate.pending("sqlite", 0))
    fresh = tmp_path / "fresh" / "bridge.db"
    fresh.parent.mkdir()
    store = SqliteStore(fresh)
    await store.open()
    await store.close()
    assert store.migrated_from == 0

    copy = tmp_path / "copy" / "bridge.db"
    copy.parent.mkdir()
    migrated_copy(copy)
    assert copy.stat().st_mode == fresh.stat().st_mode
    store = SqliteStore(copy)
    await store.open()
    await store.close()
    assert store.migrated_from == newest  # nothing left to migrate
    assert _schema(copy) == _schema(fresh)

    kept = tmp_path / "kept.db"
    kept.write_bytes(b"an old release's file")
    migrated_copy(kept)
    assert kept.read_bytes() == b"an old release's file"
    migrated_copy(tmp_path / "absent" / "bridge.db")  # no folder: left to the store's open
    assert not (tmp_path / "absent").exists()
