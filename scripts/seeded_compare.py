"""The two trees' children of a seeded differential script side by side, their lines compared
(`store_differential.py`, `accept_differential.py`). Each child is the script itself run with
`--child TREE`; it prints one JSON line a seed, `[seed, [step, ...]]`: a seed whose line differs
between the trees is a differing scenario."""

from __future__ import annotations

import json
import sys
import tempfile

from children import Children


def compare(script: str, base: str, tree: str, more: list[str], children: Children) -> None:
    """Runs `script --child base` and `script --child tree` with `more`, prints the summary and
    exits 1 naming the differing seeds (or if a child failed)."""
    outs = []
    with tempfile.TemporaryFile("w+") as a, tempfile.TemporaryFile("w+") as b:
        procs = [
            children.popen(
                [sys.executable, script, "--base", base, "--child", t, *more],
                stdout=f,
            )
            for t, f in ((base, a), (tree, b))
        ]
        try:
            for p, f in zip(procs, (a, b), strict=True):
                if p.wait():
                    sys.exit(f"a child failed ({p.args!r})")
                f.seek(0)
                outs.append([json.loads(line) for line in f.read().splitlines()])
        finally:
            children.end()
    old, new = outs
    differ = [o[0] for o, n in zip(old, new, strict=True) if o != n]
    steps = sum(len(o[1]) for o in old)
    print(f"scenarios {len(old)}, steps dumped {steps}, differing scenarios {len(differ)}")
    if differ:
        print("differing seeds:", differ[:20])
        sys.exit(1)
