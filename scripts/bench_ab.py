#!/usr/bin/env python3
"""Compare this checkout with another commit in alternating benchmark runs: medians and ratios.

Usage: python scripts/bench_ab.py [--base REF] [--base-python PY] [--python PY] [--pairs 3]
                                  [--script bench.py] [--all] [-- ARGS for the script]

Why: on these machines one run of `scripts/bench.py` differs from the next by 15-35%, and the
machine has slow minutes, so a figure measured before a change and one measured after it say
little. Runs that alternate between the two trees, in the same quarter hour, and their medians do.
This checks REF out into a temporary git worktree, runs the same benchmark script from each tree
in turn (base first in odd pairs, this tree first in even ones, so a drift of the machine weighs
on both alike), and prints each run's figures, then the median of each tree and this tree's over
the base's. Each tree runs its own copy of the script, with its own directory as the working
directory: the daemons the script starts (`python -m bridge.cli`) then import that tree's
`bridge`. The script's options must therefore exist in both trees.

    python scripts/bench_ab.py --base HEAD~1 -- --messages 20000 --workers 2
    python scripts/bench_ab.py --base main --script bench_store.py --pairs 5

`--base-python` and `--python` compare interpreters instead (or as well): each side's script
runs under its own (a virtual environment's `bin/python` with the package's dependencies), so
the daemons it starts (`sys.executable -m bridge.cli`) do too. Without `--base` both sides run
this tree:

    python scripts/bench_ab.py --base-python /venv311/bin/python --python /venv313/bin/python \
        -- --messages 20000 --workers 2
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from children import Children  # scripts/ is the script's own folder

ROOT = Path(__file__).resolve().parents[1]
# The script measured, with what it started: ended with this script (children.py).
CHILDREN = Children()

# The figures compared by default, per script: (line label, which number on the line, name).
DEFAULTS: dict[str, list[tuple[str, int, str]]] = {
    "bench.py": [
        ("end-to-end messages/s (with receipts)", 0, "messages/s"),
        ("daemon CPU per message, all / owner process (us)", 0, "daemon CPU/msg (us)"),
        ("daemon CPU per message, all / owner process (us)", 1, "owner CPU/msg (us)"),
        ("accept latency p50 / p99 (ms)", 1, "accept p99 (ms)"),
        ("accept -> final receipt p50 / p99 (ms)", 1, "receipt p99 (ms)"),
        ("store write lock per message (us), on CPU %, writes per commit", 0, "lock/msg (us)"),
    ],
    "bench_store.py": [
        ("write lock per accept (us)", 0, "lock/accept (us)"),
        ("CPU per accept, all (us)", 0, "CPU/accept (us)"),
    ],
}
# A figure line: a label, two or more spaces, then numbers separated by "/" or ",".
_LINE = re.compile(r"^\s*(\S.*?\S)\s{2,}(-?[\d,]*\.?\d+(?:\s*[/,]\s*-?[\d,]*\.?\d+)*)\b")
_NUM = re.compile(r"-?\d[\d,]*\.?\d*|-?\.\d+")


def figures(output: str) -> dict[str, list[float]]:
    """Every figure line of a benchmark's output: label -> its numbers."""
    out: dict[str, list[float]] = {}
    for line in output.splitlines():
        m = _LINE.match(line)
        if m:
            nums = [float(n.replace(",", "")) for n in _NUM.findall(m.group(2))]
            if nums:
                out.setdefault(m.group(1), nums)
    return out


def pick(found: dict[str, list[float]], wanted: list[tuple[str, int, str]]) -> dict[str, float]:
    out = {}
    for label, index, name in wanted:
        nums = found.get(label)
        if nums is not None and index < len(nums):
            out[name] = nums[index]
    return out


def run_once(tree: Path, script: str, args: list[str], python: str = sys.executable) -> str:
    try:
        code, stdout, stderr = CHILDREN.run(
            [python, str(tree / "scripts" / script), *args], None, cwd=tree
        )
    finally:
        CHILDREN.end()
    if code not in (0, 1):  # 1: a script's "target missed", still a measurement
        raise SystemExit(f"{script} in {tree} failed ({code}):\n{stderr[-3000:]}")
    return stdout


def summary(runs: dict[str, list[dict[str, float]]]) -> list[str]:
    names = list(runs["this"][0]) if runs["this"] else []
    lines = [f"{'figure':24} {'base':>10} {'this':>10} {'this/base':>10}"]
    for name in names:
        med = {}
        for tree in ("base", "this"):
            values = [r[name] for r in runs[tree] if name in r]
            med[tree] = statistics.median(values) if values else float("nan")
        ratio = med["this"] / med["base"] if med["base"] else float("nan")
        lines.append(f"{name:24} {med['base']:10.1f} {med['this']:10.1f} {ratio:10.3f}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="the commit to compare with (any git ref; default: this tree)")
    ap.add_argument("--base-python", default=sys.executable, help="the base side's interpreter")
    ap.add_argument("--python", default=sys.executable, help="this side's interpreter")
    ap.add_argument("--pairs", type=int, default=3, help="runs of each tree")
    ap.add_argument("--script", default="bench.py", help="a script in scripts/")
    ap.add_argument("--all", action="store_true", help="compare every figure line, by label")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="-- then the script's own options")
    a = ap.parse_args()
    CHILDREN.on_signals()
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    if a.base is None and a.base_python == a.python:
        ap.error("nothing to compare: give --base, or --base-python and --python that differ")
    pythons = {"base": a.base_python, "this": a.python}
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        base = Path(tmp) / "base" if a.base else ROOT
        if a.base:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), a.base],
                check=True,
            )
        try:
            runs: dict[str, list[dict[str, float]]] = {"base": [], "this": []}
            chosen = None if a.all else DEFAULTS.get(a.script)  # None: every line, by label
            for i in range(a.pairs):
                order = [("base", base), ("this", ROOT)]
                for name, tree in order if i % 2 == 0 else order[::-1]:
                    found = figures(run_once(tree, a.script, args, pythons[name]))
                    wanted = chosen or [(label, 0, label[:24]) for label in found]
                    got = pick(found, wanted)
                    runs[name].append(got)
                    shown = ", ".join(f"{k} {v:g}" for k, v in got.items())
                    print(f"pair {i + 1} {name}: {shown}", flush=True)
        finally:
            if a.base:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)],
                    check=False,
                )
    print(f"options: base {a.base or 'this tree'}, {a.pairs} pairs, {a.script} {' '.join(args)}")
    if a.base_python != a.python:
        print(f"interpreters: base {a.base_python}, this {a.python}")
    print("\n".join(summary(runs)))


if __name__ == "__main__":
    main()
