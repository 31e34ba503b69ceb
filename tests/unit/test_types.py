"""The type hints hold: mypy, as pyproject.toml's [tool.mypy] configures it, finds nothing in
`bridge/` and `scripts/` (the benchmarks since session 54: 95 errors then, among them a submit
result built with its time as its error code, and a benchmark's Protocol the real settings could
not satisfy).

Why a test: nothing else checked them, and by session 51 84 had gone untrue (a Protocol
without a method the dispatcher calls, a narrowing only the reader could see, a Literal
computed as a plain str). Run in a subprocess with mypy's default cache (`.mypy_cache` at the
root, ignored by git): 9-16 s cold on two busy cores (a fresh clone: CI), under a second warm.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_mypy_finds_nothing_in_the_package_and_the_scripts() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    if done.returncode != 0 or errors:
        pytest.fail(
            f"mypy found {len(errors)} error(s) (`mypy` at the root shows them with their notes):\n"
            + "\n".join(errors or [done.stdout, done.stderr]),
            pytrace=False,
        )
