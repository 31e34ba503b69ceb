"""node-smpp for tests/e2e/test_interop_node_smpp.py, installed where it is missing: once for
all of pytest's workers, and tried once a run.

Each worker imports the test module, so each asked for the install in turn (under a lock): where
the registry cannot be reached, every worker waited out an `npm ci` of its own before a test
ran (73 s each to fail with the connection refused, up to the 180 s timeout where packets are
dropped: minutes of `pytest -n 3` spent before the first test). A timeout killed install.sh but
not its `npm ci`, which ran on beside the next worker's in the same node_modules. Now the first
worker's failure is written in the lock file for the run (pytest-xdist's run id), and the
others skip with it; a timeout kills the install's whole process group."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
from pathlib import Path


def install(
    script: Path, installed: Path, lock: Path, run_id: str | None, timeout_s: float = 180
) -> str:
    """Run `script` unless `installed` (a package's directory) has its package.json; returns
    why the test skips, or "". `run_id` names the test run (None: one process, no other
    worker to spare the wait)."""
    with open(lock, "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        if (installed / "package.json").exists():
            return ""
        held.seek(0)
        tried = held.read()
        if run_id and tried.startswith(run_id + "\n"):
            return tried.split("\n", 1)[1]  # failed already in this run, in another worker
        why = _run(script, timeout_s)
        if why and run_id:
            held.seek(0)
            held.truncate()
            held.write(f"{run_id}\n{why}")
        return why


def _run(script: Path, timeout_s: float) -> str:
    proc = subprocess.Popen(
        [str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: npm with it
    )
    try:
        _out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"{script.name} took over {timeout_s:g} s (no registry?)"
    if proc.returncode != 0:
        return f"{script.name} failed: {err.strip()[-300:]}"
    return ""
