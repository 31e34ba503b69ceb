"""`smpp-bridge db backup DEST`: a checked copy of the SQLite store, taken under traffic, that a
daemon can start from. Real daemon (HTTP API, the simulator over TCP), real SQLite files, the
real CLI (`bridge.cli.main`, and once as a process)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.app import Daemon
from bridge.cli import main as cli_main
from bridge.store import sqlite_backup

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.e2e.harness import (  # noqa: E402
    client_for,
    config_dict,
    create_account,
    make_config,
    wait_until,
)


def _config_file(tmp: Path, **overrides: Any) -> Path:
    path = tmp / "bridge.yaml"
    path.write_text(yaml.safe_dump(config_dict(tmp, **overrides)))
    return path


def _backup(capsys: pytest.CaptureFixture[str], cfg: Path, dest: Path) -> tuple[int, Any, str]:
    code = cli_main(["db", "backup", str(dest), "--config", str(cfg)])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else out), err


def _ids(db: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return {r[0] for r in conn.execute("SELECT id FROM messages")}
    finally:
        conn.close()


async def test_a_backup_taken_under_traffic_is_whole_checked_and_starts_a_daemon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg_path = _config_file(tmp_path)
    cfg = make_config(tmp_path)  # the same store file as the YAML's
    assert str(cfg.store.path) == yaml.safe_load(cfg_path.read_text())["store"]["path"]
    d = Daemon(cfg)
    await d.start()
    accepted: list[str] = []
    try:
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        creds = await create_account(d)
        async with client_for(d.http_port, creds) as c:
            for i in range(20):  # before the backup
                sent = await c.send(f"+4477009{i:05d}", text=f"before {i}")
                accepted.append(sent["messages"][0]["id"])
            stop = asyncio.Event()

            async def traffic() -> None:
                n = 0
                while not stop.is_set():
                    sent = await c.send(f"+4477008{n:05d}", text=f"during {n}")
                    accepted.append(sent["messages"][0]["id"])
                    n += 1

            load = asyncio.ensure_future(traffic())
            await wait_until(lambda: len(accepted) > 40, 10)
            dest = tmp_path / "backups" / "bridge-1.db"
            dest.parent.mkdir()
            code, result, err = await asyncio.to_thread(_backup, capsys, cfg_path, dest)
            # At least one accepted after the copy was made, which it cannot hold (on a loaded
            # machine the copy could finish before the next send was answered: CI, session 46).
            after = len(accepted)
            await wait_until(lambda: len(accepted) > after, 10)
            stop.set()
            await load
        assert code == 0, err
        assert result["backup"] == str(dest) and result["integrity"] == "ok"
        assert result["bytes"] == dest.stat().st_size > 0
        assert isinstance(result["schema_version"], int) and result["schema_version"] > 0
        assert not dest.with_name(dest.name + ".partial").exists()
        in_backup = _ids(dest)
        # Everything accepted before the backup began is in it; whatever it holds was accepted.
        assert set(accepted[:20]) <= in_backup <= set(accepted)
        assert len(accepted) > len(in_backup) > 20, (len(accepted), len(in_backup))
    finally:
        await d.stop()
    # A restore: the backup in place of the store (README, Backups), then a daemon on it.
    restored = tmp_path / "restored"
    restored.mkdir()
    os.replace(dest, restored / "bridge.db")
    d2 = Daemon(replace(cfg, store=replace(cfg.store, path=restored / "bridge.db")))
    await d2.start()
    try:
        async with client_for(d2.http_port, creds) as c:
            m = await c.message(accepted[0])
            assert m["text"] == "before 0"
    finally:
        await d2.stop()


def test_refusals_leave_everything_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config_file(tmp_path)
    store = tmp_path / "bridge.db"
    # No store yet: refused, and none is created.
    code, _out, err = _backup(capsys, cfg, tmp_path / "b.db")
    assert code != 0 and "STORE_NOT_FOUND" in err
    assert not store.exists() and not (tmp_path / "b.db").exists()
    assert cli_main(["account", "create", "acme", "--config", str(cfg)]) == 0
    capsys.readouterr()
    # The destination exists: refused, the file untouched.
    taken = tmp_path / "taken.db"
    taken.write_bytes(b"an older backup")
    code, _out, err = _backup(capsys, cfg, taken)
    assert code != 0 and "BACKUP_EXISTS" in err
    assert taken.read_bytes() == b"an older backup"
    # No such directory.
    code, _out, err = _backup(capsys, cfg, tmp_path / "nowhere" / "b.db")
    assert code != 0 and "BACKUP_DIR_MISSING" in err
    # PostgreSQL: pointed at pg_dump.
    pg = tmp_path / "pg"
    pg.mkdir()
    pg_cfg = _config_file(pg, store={"engine": "postgres", "dsn": "postgresql://127.0.0.1:1/x"})
    code, _out, err = _backup(capsys, pg_cfg, tmp_path / "pg.db")
    assert code != 0 and "pg_dump" in err
    assert not (tmp_path / "pg.db").exists()


def test_a_copy_failing_its_check_is_not_left_under_the_backup_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config_file(tmp_path)
    assert cli_main(["account", "create", "acme", "--config", str(cfg)]) == 0
    capsys.readouterr()
    monkeypatch.setattr(sqlite_backup, "_check", lambda path: (1, ["page 7: btreeInitPage error"]))
    dest = tmp_path / "b.db"
    code, _out, err = _backup(capsys, cfg, dest)
    assert code != 0 and "BACKUP_CORRUPT" in err and "page 7" in err
    assert not dest.exists() and not dest.with_name("b.db.partial").exists()


def test_a_stopped_daemons_store_is_left_without_wal_files_and_unmigrated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run on a stopped daemon's store, the copy leaves no -wal/-shm behind and migrates
    nothing: a backup before an upgrade is of the old schema."""
    cfg = _config_file(tmp_path)
    assert cli_main(["account", "create", "acme", "--config", str(cfg)]) == 0
    capsys.readouterr()
    store = tmp_path / "bridge.db"
    conn = sqlite3.connect(store)
    conn.execute(
        "DELETE FROM schema_version WHERE version=(SELECT MAX(version) FROM schema_version)"
    )
    conn.commit()
    conn.close()
    before = store.read_bytes()
    [(older,)] = sqlite3.connect(store).execute("SELECT MAX(version) FROM schema_version")
    code, result, err = _backup(capsys, cfg, tmp_path / "b.db")
    assert code == 0, err
    assert result["schema_version"] == older
    assert not Path(f"{store}-wal").exists() and not Path(f"{store}-shm").exists()
    assert store.read_bytes() == before


def test_the_command_as_a_process_prints_one_json_line(tmp_path: Path) -> None:
    cfg = _config_file(tmp_path)
    env = {**os.environ, "PYTHONPATH": _ROOT}
    run = [sys.executable, "-m", "bridge.cli"]
    subprocess.run(
        [*run, "account", "create", "acme", "--config", str(cfg)],
        env=env,
        check=True,
        capture_output=True,
    )
    p = subprocess.run(
        [*run, "db", "backup", str(tmp_path / "b.db"), "--config", str(cfg)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["integrity"] == "ok"
    assert "acme" in {
        r[0] for r in sqlite3.connect(tmp_path / "b.db").execute("SELECT name FROM accounts")
    }


def test_the_backup_is_no_more_readable_than_the_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Run with root's umask (022), the copy of a store only its owner reads was readable by
    every user of the machine (texts and numbers)."""
    cfg = _config_file(tmp_path)
    assert cli_main(["account", "create", "acme", "--config", str(cfg)]) == 0
    capsys.readouterr()
    store = tmp_path / "bridge.db"
    old = os.umask(0o022)
    try:
        for mode in (0o600, 0o640):
            os.chmod(store, mode)
            dest = tmp_path / f"b-{mode:o}.db"
            code, _result, err = _backup(capsys, cfg, dest)
            assert code == 0, err
            assert dest.stat().st_mode & 0o777 == mode
    finally:
        os.umask(old)


# -- the systemd units that run it daily ----------------------------------------------------------

UNITS = Path(_ROOT) / "config"


def _unit_values(name: str) -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (UNITS / name).read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def _as_here(command: str, tmp: Path, cfg: Path) -> list[str]:
    """A unit's command line with its paths pointed here (and systemd's %% unescaped)."""
    exe = shutil.which("smpp-bridge") or f"{sys.executable} -m bridge.cli"
    command = (
        command.replace("/opt/smpp-bridge/bin/smpp-bridge", exe)
        .replace("/var/backups/smpp-bridge", str(tmp / "backups"))
        .replace("/etc/smpp-bridge/bridge.yaml", str(cfg))
        .replace("%%", "%")
    )
    return shlex.split(command)


def test_the_backup_units_command_lines_back_up_and_prune(tmp_path: Path) -> None:
    """What the timer's service runs, run here: a backup named by the date, then only backups
    past 14 days removed."""
    cfg = _config_file(tmp_path)
    env = {**os.environ, "PYTHONPATH": _ROOT}
    subprocess.run(
        [sys.executable, "-m", "bridge.cli", "account", "create", "acme", "--config", str(cfg)],
        env=env,
        check=True,
        capture_output=True,
    )
    backups = tmp_path / "backups"
    backups.mkdir()
    old = backups / "bridge-2026-01-01-0300.db"
    old.write_bytes(b"a backup from long ago")
    os.utime(old, (time.time() - 20 * 86400,) * 2)
    unrelated = backups / "notes.txt"
    unrelated.write_text("kept")
    os.utime(unrelated, (time.time() - 20 * 86400,) * 2)
    unit = _unit_values("smpp-bridge-backup.service")
    assert unit["User"] == ["smpp-bridge"] and unit["Type"] == ["oneshot"]
    [start] = unit["ExecStart"]
    [post] = unit["ExecStartPost"]
    r = subprocess.run(_as_here(start, tmp_path, cfg), env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)["backup"]
    assert re.fullmatch(r"bridge-\d{4}-\d\d-\d\d-\d{4}\.db", Path(made).name), made
    r = subprocess.run(_as_here(post, tmp_path, cfg), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in backups.iterdir()) == sorted([Path(made).name, "notes.txt"])


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_accepts_the_backup_units(tmp_path: Path) -> None:
    exe = shutil.which("smpp-bridge") or sys.executable
    for name in ("smpp-bridge-backup.service", "smpp-bridge-backup.timer"):
        text = (UNITS / name).read_text().replace("/opt/smpp-bridge/bin/smpp-bridge", exe)
        (tmp_path / name).write_text(text)
    r = subprocess.run(
        ["systemd-analyze", "verify", str(tmp_path / "smpp-bridge-backup.timer")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [line for line in r.stderr.splitlines() if "smpp-bridge-backup" in line]
    assert r.returncode == 0 and not problems, r.stderr
    assert _unit_values("smpp-bridge-backup.timer")["OnCalendar"] == ["*-*-* 03:00:00"]
