"""Abandoned private directories (the acceptors' configuration copy, multi-process metric files)
of a daemon killed with -9 are removed by the next start; those of live processes, and any
directory the daemon did not make, stay."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge import tempdirs

ROOT = str(Path(__file__).resolve().parents[2])


def _made_by_a_process_that_is_gone(base: Path, prefix: str) -> Path:
    """tempdirs.make in a child that then dies with SIGKILL (no clean-up of any kind)."""
    code = (
        "import os, sys, tempfile; sys.path.insert(0, sys.argv[1]); tempfile.tempdir = sys.argv[2]"
        "\nfrom bridge import tempdirs\nprint(tempdirs.make(sys.argv[3]), flush=True)"
        "\nos.kill(os.getpid(), 9)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, ROOT, str(base), prefix], capture_output=True, text=True
    )
    assert done.returncode == -9, done.stderr
    path = Path(done.stdout.strip())
    (path / "config.yaml").write_text("server: {admin_token: secret}\n")
    return path


@pytest.fixture
def tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_only_abandoned_directories_of_the_prefix_are_removed(tmp: Path) -> None:
    gone = _made_by_a_process_that_is_gone(tmp, "smpp-bridge-")
    mine = Path(tempdirs.make("smpp-bridge-"))  # this process lives
    other_prefix = _made_by_a_process_that_is_gone(tmp, "smpp-bridge-metrics-")
    not_ours = [tmp / "smpp-bridge-2024-06-01", tmp / "smpp-bridge-99999999999999-x"]
    for d in not_ours:  # an operator's, and a name past the pid range: no lock file
        d.mkdir()
    (tmp / "smpp-bridge-file").write_text("not a directory")

    removed = tempdirs.remove_stale("smpp-bridge-", str(tmp))

    # The prefix "smpp-bridge-" also matches the metrics prefix: both abandoned ones go.
    assert sorted(removed) == sorted([gone, other_prefix])
    assert not gone.exists() and not other_prefix.exists()
    assert mine.is_dir() and all(d.is_dir() for d in not_ours)
    assert (tmp / "smpp-bridge-file").exists()


def test_a_symlink_or_an_unlocked_lookalike_outside_is_not_followed(tmp: Path) -> None:
    outside = tmp / "outside"
    outside.mkdir()
    (outside / tempdirs.LOCK_NAME).write_text("")
    (outside / "precious").write_text("keep me")
    (tmp / "smpp-bridge-1-link").symlink_to(outside, target_is_directory=True)
    assert tempdirs.remove_stale("smpp-bridge-", str(tmp)) == []
    assert (outside / "precious").exists()


def test_made_directories_are_private_and_locked_while_this_process_lives(tmp: Path) -> None:
    made = Path(tempdirs.make("smpp-bridge-"))
    assert made.parent == tmp and made.name.startswith(f"smpp-bridge-{os.getpid()}-")
    assert made.stat().st_mode & 0o777 == 0o700
    assert (made / tempdirs.LOCK_NAME).is_file()
    assert tempdirs.remove_stale("smpp-bridge-", str(tmp)) == []  # ours: held


def test_age_based_cleaners_cannot_lock_a_made_directory(tmp: Path) -> None:
    """systemd-tmpfiles takes LOCK_EX | LOCK_NB on each directory under /tmp before it ages out
    its contents, and skips one it cannot lock: a made directory holds a shared lock for life
    (before, the acceptors' configuration copy went after 10 days without a reload)."""
    made = tempdirs.make("smpp-bridge-")
    fd = os.open(made, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # readers are not kept out
    finally:
        os.close(fd)
    # What the lock is for, as such a cleaner walks /tmp: a directory it cannot lock is left.
    cleaner = (
        "import fcntl, os, sys\n"
        "fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY)\n"
        "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
        "except BlockingIOError:\n    sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", cleaner, made], capture_output=True)
    assert done.returncode == 3, done.stderr


def test_the_start_sweeps_every_kind_once(
    tmp: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The supervisor (configuration copies) and the metrics (metric files) both call
    sweep_once at start: one listing of $TMPDIR removes both kinds, the second call none."""
    from bridge.metrics import METRICS_DIR_PREFIX
    from bridge.supervisor import CONFIG_COPY_PREFIX

    monkeypatch.setattr(tempdirs, "_swept", False)
    copy = _made_by_a_process_that_is_gone(tmp, CONFIG_COPY_PREFIX)
    metric_files = _made_by_a_process_that_is_gone(tmp, METRICS_DIR_PREFIX)
    listings = []
    real = tempdirs.remove_stale
    monkeypatch.setattr(tempdirs, "remove_stale", lambda *a: listings.append(a) or real(*a))
    with caplog.at_level("INFO", logger="bridge.tempdirs"):
        tempdirs.sweep_once()
        later = _made_by_a_process_that_is_gone(tmp, CONFIG_COPY_PREFIX)
        tempdirs.sweep_once()
    assert listings == [(tempdirs.PREFIX,)]
    assert not copy.exists() and not metric_files.exists() and later.exists()
    assert sorted(r.getMessage().rsplit(" ", 1)[1] for r in caplog.records) == sorted(
        [str(copy), str(metric_files)]
    )
