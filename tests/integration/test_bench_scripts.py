"""The quick benchmark scripts still run and print their figures (the long ones, bench.py and
bench_backlog.py, are run by hand: see the README's Benchmarks section)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_bench_retention_purges_everything_it_filled() -> None:
    out = _run("scripts/bench_retention.py", "--messages", "3000")
    assert "store: 3000 finished messages" in out
    m = re.search(r"purged (\d+) messages in [0-9.]+ s: [0-9,]+/s", out)
    assert m is not None and int(m.group(1)) == 3000, out
    assert re.search(r"p50 / p99 / max: [0-9.]+ / [0-9.]+ / [0-9.]+ ms", out), out


@pytest.mark.parametrize(
    ("script", "args", "expect"),
    [
        ("scripts/bench_text.py", ("--seconds", "0.05"), r"4-part CJK +[0-9,]+ msg/s"),
        ("scripts/bench_codec.py", ("--duration", "0.4"), r"smpplib"),
    ],
)
def test_quick_benchmarks_print_their_figures(
    script: str, args: tuple[str, ...], expect: str
) -> None:
    assert re.search(expect, _run(script, *args)), script
