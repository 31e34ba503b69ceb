"""`smpp-bridge db restore BACKUP`: a backup put back as the SQLite store, on a stopped daemon.

Found by session 46's trial: by hand, a restore that copied the backup over the store and left
the old store's `-wal` beside it had SQLite replay the old store's latest commits into the
backup's file (a mixture of both; the README said to delete it, nothing stopped the mistake).
Real SQLite files, the real CLI (`bridge.cli.main`), a real store holding the owner lock."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.cli import main as cli_main
from bridge.store.migrate import latest
from bridge.store.models import AcceptBatch, Account
from bridge.store.sqlite import SqliteStore
from bridge.store.sqlite_backup import backup
from tests.e2e.harness import config_dict
from tests.messages import one_part

NOW = 1_700_000_000_000


def _config_file(tmp: Path) -> tuple[Path, Path]:
    path = tmp / "bridge.yaml"
    data = config_dict(tmp)
    path.write_text(yaml.safe_dump(data))
    return path, Path(data["store"]["path"])


async def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    code = await asyncio.to_thread(cli_main, list(argv))  # it runs its own event loop
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and out.strip() else out), err


def _exists(path: str) -> bool:
    return os.path.exists(path)


def _rows(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {r[0]: r[1] for r in conn.execute("SELECT id, state FROM messages")}
    finally:
        conn.close()


async def _accept(store: SqliteStore, first: int, n: int) -> None:
    for k in range(first, first + n):
        mid = f"msg_{k:04d}"
        batch = AcceptBatch("acc", (one_part(mid, "acc", "+447700900123", NOW + k),), None, None)
        await store.accept(batch, NOW + k)


async def _store_with(db: Path, n: int) -> SqliteStore:
    store = SqliteStore(db)
    await store.open()
    await store.create_account(Account(id="acc", name="acc", created_at=NOW, updated_at=NOW))
    await _accept(store, 0, n)
    return store


async def test_a_crashed_stores_wal_is_not_replayed_into_the_backup(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, db = _config_file(tmp_path)
    # The live store: one message, backed up; 199 more after the backup; then the machine
    # "crashes": the files as they are on disk, the last commits still in the -wal.
    live = tmp_path / "live" / "bridge.db"
    live.parent.mkdir()
    store = await _store_with(live, 1)
    backup(live, tmp_path / "b.db")
    await _accept(store, 1, 199)
    shutil.copyfile(live, db)
    shutil.copyfile(str(live) + "-wal", str(db) + "-wal")
    await store.close()
    os.chmod(db, 0o640)
    assert len(_rows(tmp_path / "b.db")) == 1

    code, out, err = await _run(
        capsys, "db", "restore", str(tmp_path / "b.db"), "--config", str(cfg)
    )
    assert code == 0, err
    assert out["restored"] == str(db) and out["schema_version"] == latest("sqlite")
    # The restored store is the backup's: one message, ended as the backup's waiting ones are
    # (after-restore's RESTORED_FROM_BACKUP), not the crashed store's 200.
    rows = _rows(db)
    assert list(rows) == ["msg_0000"], len(rows)
    assert out["after_restore"] is not None
    assert rows["msg_0000"] == "unknown"
    assert os.stat(db).st_mode & 0o777 == 0o640  # the replaced store's mode
    # The store it replaced is kept whole, its -wal beside it: all 200.
    previous = Path(out["previous"])
    assert previous.name.startswith("bridge.db.before-restore-")
    assert _exists(str(previous) + "-wal")
    assert len(_rows(previous)) == 200
    assert not _exists(str(db) + ".restoring")


async def test_no_after_restore_leaves_the_backups_waiting_messages_to_be_sent(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, db = _config_file(tmp_path)
    db.parent.mkdir(parents=True, exist_ok=True)
    store = await _store_with(db, 3)
    await store.close()
    code, out, err = await _run(
        capsys, "db", "backup", str(tmp_path / "b.db"), "--config", str(cfg)
    )
    assert code == 0, err
    code, out, err = await _run(
        capsys, "db", "restore", str(tmp_path / "b.db"), "--no-after-restore", "-c", str(cfg)
    )
    assert code == 0, err
    assert out["after_restore"] is None
    assert set(_rows(db).values()) == {"queued"}


async def test_refused_while_a_daemon_owns_the_store_and_nothing_is_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg, db = _config_file(tmp_path)
    db.parent.mkdir(parents=True, exist_ok=True)
    backup_store = await _store_with(tmp_path / "b.db", 1)
    await backup_store.close()
    store = await _store_with(db, 5)
    store._runner.hold_ownership()  # as a running daemon's owner does
    try:
        code, _, err = await _run(capsys, "db", "restore", str(tmp_path / "b.db"), "-c", str(cfg))
        assert code != 0 and "STORE_IN_USE" in err and "stop it first" in err
        assert len(_rows(db)) == 5
        assert not list(db.parent.glob("bridge.db.before-restore-*"))
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("content", "code_name"),
    [
        (b"not a database, just text\n" * 200, "BACKUP_UNREADABLE"),
        (None, "NOT_A_STORE"),  # a SQLite file that is not ours
        ("newer", "SCHEMA_TOO_NEW"),
        ("missing", "BACKUP_NOT_FOUND"),
    ],
)
async def test_a_bad_backup_is_refused_by_name_and_the_store_kept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: Any, code_name: str
) -> None:
    cfg, db = _config_file(tmp_path)
    db.parent.mkdir(parents=True, exist_ok=True)
    store = await _store_with(db, 2)
    await store.close()
    src = tmp_path / "b.db"
    if isinstance(content, bytes):
        src.write_bytes(content)
    elif content is None:
        conn = sqlite3.connect(src)
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
        conn.close()
    elif content == "newer":
        shutil.copyfile(db, src)
        conn = sqlite3.connect(src)
        conn.execute("INSERT INTO schema_version (version) VALUES (9999)")
        conn.commit()
        conn.close()
    code, _, err = await _run(capsys, "db", "restore", str(src), "-c", str(cfg))
    assert code != 0 and code_name in err, err
    assert len(_rows(db)) == 2
    assert not list(db.parent.glob("bridge.db.before-restore-*"))
    assert not _exists(str(db) + ".restoring")
