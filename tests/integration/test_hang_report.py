"""tests/conftest.py's hang report: a test still running shortly before pytest-timeout ends its
worker has its event loop's task stacks and every thread's stack written to the run's stderr,
under xdist too (where pytest-timeout's own report is lost). CI once hung 90 minutes in a
daemon's stop with nothing to say where; this is how it is found next time."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HANGING = """
import asyncio

async def _parked(event):
    await event.wait()

async def test_hangs():
    await asyncio.create_task(_parked(asyncio.Event()), name="parked-forever")

def test_after():
    pass
"""


@pytest.mark.parametrize("workers", [[], ["-n", "1"]], ids=["plain", "xdist"])
def test_a_hung_test_fails_by_name_with_its_tasks_stacks(
    tmp_path: Path, workers: list[str]
) -> None:
    (tmp_path / "test_hanging.py").write_text(HANGING)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "SMPP_BRIDGE_TEST_DUMP_BEFORE_S": "4"}
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.conftest",
         "-o", "timeout=6", "-o", "timeout_method=thread", "-o", "asyncio_mode=auto",
         *workers, str(tmp_path / "test_hanging.py")],
        cwd=root, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = p.stdout + p.stderr
    assert p.returncode != 0, out
    assert "test_hanging.py::test_hangs still running after" in out, out
    assert "name='parked-forever'" in out and "await event.wait()" in out, out
    assert "selectors.py" in out, out  # the main thread's stack: parked in the loop's select
    if workers:
        assert "worker 'gw0' crashed while running" in out and "1 passed" in out, out
    else:
        assert "Timeout" in out, out
