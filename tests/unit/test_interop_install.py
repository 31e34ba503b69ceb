"""tests/interop_install.py: node-smpp's install for the interop test, tried once a run by all of
pytest's workers, and a timeout that leaves no `npm ci` running (fake install scripts here)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from tests import interop_install


def _script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "install.sh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return script


def test_a_failed_install_is_tried_once_a_run_by_all_workers(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    script = _script(tmp_path, f"echo run >> {runs}\necho 'npm error 404' >&2\nexit 1\n")
    lock, missing = tmp_path / "lock", tmp_path / "node_modules" / "smpp"
    whys = [interop_install.install(script, missing, lock, "run-1") for _ in range(3)]
    assert whys == ["install.sh failed: npm error 404"] * 3
    assert runs.read_text() == "run\n", "the other workers waited out an install of their own"
    # Another run tries again (the registry may be back); one process alone, each time.
    assert interop_install.install(script, missing, lock, "run-2") == whys[0]
    assert interop_install.install(script, missing, lock, None) == whys[0]
    assert runs.read_text() == "run\n" * 3


def test_an_install_that_succeeds_is_not_run_again(tmp_path: Path) -> None:
    installed = tmp_path / "node_modules" / "smpp"
    runs = tmp_path / "runs"
    body = f"echo run >> {runs}\nmkdir -p {installed}\necho '{{}}' > {installed}/package.json\n"
    script = _script(tmp_path, body)
    for _ in range(2):
        assert interop_install.install(script, installed, tmp_path / "lock", "run-1") == ""
    assert runs.read_text() == "run\n"


def test_a_timeout_ends_the_install_and_what_it_started(tmp_path: Path) -> None:
    """install.sh runs `npm ci` as a child: killed with the script alone, it ran on (beside the
    next worker's, in the same node_modules)."""
    pid_file = tmp_path / "child"
    script = _script(tmp_path, f"sleep 60 &\necho $! > {pid_file}\nwait\n")
    missing = tmp_path / "node_modules" / "smpp"
    why = interop_install.install(script, missing, tmp_path / "lock", "run-1", timeout_s=1)
    assert why == "install.sh took over 1 s (no registry?)"
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _alive(child):
        assert time.monotonic() < deadline, "the install's child still runs"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}").exists() else ""
    return " Z " not in stat  # a zombie (not reaped yet by its adopter) has ended
