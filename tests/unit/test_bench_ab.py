"""scripts/bench_ab.py on a throwaway git repository: a stand-in benchmark prints a figure read
from its own tree, so the medians, the ratio, the alternation and the worktree's removal can be
checked without a real (minutes-long, noisy) benchmark run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_ab  # noqa: E402

FAKE = """\
import sys
from pathlib import Path
tree = Path(__file__).resolve().parents[1]
value = float((tree / "value.txt").read_text())
with open(sys.argv[2], "a") as log:
    log.write(("this" if (tree / "THIS").exists() else "base") + "\\n")
print("options: whatever")
print(f"messages per second      {value:,.0f}")
print(f"latency p50 / p99 (ms)   {value / 100} / {value / 10}")
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def test_two_trees_alternate_and_their_medians_compare(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("bench_ab.py", "children.py"):  # bench_ab ends its children through the other
        shutil.copy(ROOT / "scripts" / name, repo / "scripts" / name)
    (repo / "scripts" / "fake.py").write_text(FAKE)
    (repo / "value.txt").write_text("1000")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "base")
    (repo / "value.txt").write_text("1500")  # this tree: uncommitted, 1.5x the base
    (repo / "THIS").write_text("")
    log = tmp_path / "order.log"
    done = subprocess.run(
        [sys.executable, str(repo / "scripts" / "bench_ab.py"), "--base", "HEAD",
         "--pairs", "2", "--script", "fake.py", "--", "--log", str(log)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert log.read_text().split() == ["base", "this", "this", "base"]
    lines = done.stdout.splitlines()
    assert "pair 1 base: messages per second 1000, latency p50 / p99 (ms) 10" in lines
    summary = {line[:24].strip(): line[24:].split() for line in lines[-2:]}
    assert summary["messages per second"] == ["1000.0", "1500.0", "1.500"]
    assert summary["latency p50 / p99 (ms)"] == ["10.0", "15.0", "1.500"]
    assert _git(repo, "worktree", "list").count("\n") == 1  # the base's worktree is gone


def test_two_interpreters_run_this_tree_in_turn(tmp_path: Path) -> None:
    """--base-python / --python: each side's script (and what it starts) runs under its own
    interpreter, both from this tree; no worktree is made."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("bench_ab.py", "children.py"):  # bench_ab ends its children through the other
        shutil.copy(ROOT / "scripts" / name, repo / "scripts" / name)
    (repo / "scripts" / "fake.py").write_text(
        FAKE.replace('float((tree / "value.txt").read_text())', 'float(os.environ["FAKE_V"])')
        .replace("import sys", "import os, sys")
        .replace('("this" if (tree / "THIS").exists() else "base")', 'os.environ["FAKE_V"]')
    )
    pythons = []
    for value in ("1000", "800"):
        py = tmp_path / f"python-{value}"
        py.write_text(f'#!/bin/sh\nFAKE_V={value} exec "{sys.executable}" "$@"\n')
        py.chmod(0o755)
        pythons.append(str(py))
    log = tmp_path / "order.log"
    done = subprocess.run(
        [sys.executable, str(repo / "scripts" / "bench_ab.py"), "--base-python", pythons[0],
         "--python", pythons[1], "--pairs", "2", "--script", "fake.py", "--", "--log", str(log)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert log.read_text().split() == ["1000", "800", "800", "1000"]
    lines = done.stdout.splitlines()
    assert f"interpreters: base {pythons[0]}, this {pythons[1]}" in lines
    summary = {line[:24].strip(): line[24:].split() for line in lines[-2:]}
    assert summary["messages per second"] == ["1000.0", "800.0", "0.800"]
    refused = subprocess.run(
        [sys.executable, str(repo / "scripts" / "bench_ab.py"), "--script", "fake.py"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode == 2 and "nothing to compare" in refused.stderr


def test_figure_lines_are_read_with_all_their_numbers() -> None:
    out = "\n".join(
        [
            "options: {'messages': 20000}",
            "end-to-end messages/s (with receipts)        1,844",
            "accept latency p50 / p99 (ms)                22.6 / 174.4",
            "store write lock per message (us), on CPU %, writes per commit   431, 64, 11.2",
            "final statuses      {'delivered': 20001}",
        ]
    )
    found = bench_ab.figures(out)
    assert found == {
        "end-to-end messages/s (with receipts)": [1844.0],
        "accept latency p50 / p99 (ms)": [22.6, 174.4],
        "store write lock per message (us), on CPU %, writes per commit": [431.0, 64.0, 11.2],
    }
    wanted = bench_ab.DEFAULTS["bench.py"]
    assert bench_ab.pick(found, wanted) == {
        "messages/s": 1844.0,
        "accept p99 (ms)": 174.4,
        "lock/msg (us)": 431.0,
    }
