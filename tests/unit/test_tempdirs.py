"""Stale private directories (the acceptors' configuration copy, multi-process metric files) of a
daemon killed with -9 are removed by the next start; those of live processes stay."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bridge import tempdirs


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_only_directories_of_processes_that_are_gone_are_removed(tmp_path: Path) -> None:
    dead, live = _dead_pid(), os.getppid()
    gone = tmp_path / f"smpp-bridge-{dead}-abc123"
    gone.mkdir()
    (gone / "config.yaml").write_text("server: {admin_token: secret}\n")
    kept = [
        tmp_path / f"smpp-bridge-{live}-xyz",  # its daemon still runs
        tmp_path / f"smpp-bridge-{os.getpid()}-mine",  # this process's own
        tmp_path / f"smpp-bridge-metrics-{dead}-q1",  # another prefix
        tmp_path / "smpp-bridge-pg-4f2a",  # not stamped
        tmp_path / "smpp-bridge-k3j_9x2a",  # an older release's copy (no pid: left alone)
    ]
    for d in kept:
        d.mkdir()
    stray_file = tmp_path / f"smpp-bridge-{dead}-file"
    stray_file.write_text("not a directory")

    removed = tempdirs.remove_stale("smpp-bridge-", str(tmp_path))

    assert removed == [gone] and not gone.exists()
    assert all(d.is_dir() for d in kept) and stray_file.exists()
    assert tempdirs.remove_stale("smpp-bridge-metrics-", str(tmp_path)) == [kept[2]]


def test_made_directories_carry_the_pid_and_are_private(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    made = Path(tempdirs.make("smpp-bridge-"))
    assert made.parent == tmp_path and made.name.startswith(f"smpp-bridge-{os.getpid()}-")
    assert made.stat().st_mode & 0o777 == 0o700
    assert tempdirs.remove_stale("smpp-bridge-", str(tmp_path)) == []  # ours: alive
