"""A signal that comes as `Children.end()` begins, before its `signals_held` block holds
signals (scripts/children.py; review r1 of session 53).

`end()` marked itself under way (`_ending`) and then entered its `signals_held` block. The
signal handler acts at once when no block holds (`_holding` 0), and its own end returned at
once, taking `_ending` for an end under way: the script exited (143) with its children still
running in their own process groups, which that end had not signalled yet. Forced here by
sending the signal from inside `signals_held`, before it counts the block: the moment a signal
of a `kill` or a Ctrl-C can find."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"

SCRIPT = """
import contextlib, os, signal, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
import children
from children import Children

KIDS = Children()
real = Children.signals_held

@contextlib.contextmanager
def late_hold(self):
    if not getattr(self, "_signalled_once", False):
        self._signalled_once = True
        os.kill(os.getpid(), signal.SIGTERM)  # before the block counts: handled at once
        time.sleep(0.05)
    with real(self):
        yield

Children.signals_held = late_hold
KIDS.on_signals()
child = KIDS.popen(
    [sys.executable, "-c", "import time; time.sleep(30)"],
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
)
print(child.pid, flush=True)
time.sleep(0.2)
KIDS.end()
print("ended", flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def test_a_signal_as_end_begins_still_ends_the_children(tmp_path: Path) -> None:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(SCRIPTS)],
        capture_output=True,
        text=True,
        timeout=20,
    )
    child = int(proc.stdout.split()[0])
    try:
        assert proc.returncode == 143, proc.stderr
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the script exited with its child still running"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child, signal.SIGKILL)
