"""The check of a SQLite store's file modes (bridge/store/sqlite_modes.py), on real files."""

from __future__ import annotations

from pathlib import Path

from bridge.store.sqlite_modes import open_to_others, warning


def _files(tmp: Path, **modes: int) -> Path:
    db = tmp / "my store.db"
    for suffix, mode in modes.items():
        f = Path(f"{db}{'' if suffix == 'db' else '-' + suffix}")
        f.write_bytes(b"")
        f.chmod(mode)
    return db


def test_a_private_store_says_nothing(tmp_path: Path) -> None:
    db = _files(tmp_path, db=0o600, wal=0o600, shm=0o600)
    assert open_to_others(db) == []
    assert warning(db) is None
    assert warning(tmp_path / "none.db") is None  # no store yet


def test_every_file_open_to_group_or_others_is_named_with_its_chmod(tmp_path: Path) -> None:
    db = _files(tmp_path, db=0o640, wal=0o600, shm=0o604)
    assert open_to_others(db) == [(db, 0o640), (Path(f"{db}-shm"), 0o604)]
    line = warning(db)
    assert line is not None
    assert f"{db} (0640), {db}-shm (0604)" in line
    assert f"`chmod 600 '{db}' '{db}-shm'`" in line  # quoted: the path has a space
    assert "-wal" not in line


def test_a_wal_left_open_is_named_alone(tmp_path: Path) -> None:
    db = _files(tmp_path, db=0o600, wal=0o644)
    assert open_to_others(db) == [(Path(f"{db}-wal"), 0o644)]
