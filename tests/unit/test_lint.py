"""The tree is as ruff's lint and formatter (pyproject.toml's [tool.ruff]) want it.

Why a test: the guide asks for `ruff` clean, and until session 51 only the sessions' own runs
checked it; CI runs the suite alone (`.ci/run`), so a commit that broke either landed. Each
check is a subprocess of about a second.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TREES = ["bridge", "scripts", "tests"]


def _ruff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ruff", *args, *TREES],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_ruff_lint_finds_nothing() -> None:
    done = _ruff("check", "--no-cache", "--output-format", "concise")
    if done.returncode != 0:
        pytest.fail(f"ruff check:\n{done.stdout}{done.stderr}", pytrace=False)


def test_ruff_format_would_change_nothing() -> None:
    done = _ruff("format", "--check", "--no-cache")
    if done.returncode != 0:
        pytest.fail(f"ruff format --check:\n{done.stdout}{done.stderr}", pytrace=False)
