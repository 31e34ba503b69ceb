#!/usr/bin/env python3
"""Instructions per request of chosen steps of the accept, each counted alone under callgrind.

Usage: python scripts/bench_accept_steps.py [--requests 500] [--store] [--kind gsm1|ucs3]
                                            [--out FILE] module:attr [module:Class.attr ...]

Why (session 55): the stubbed accept's profile is flat, and callgrind names C functions only (a
Python function is `_PyEval_EvalFrameDefault` like any other). This runs
`bench_accept_inproc.py --wire` (`--stub` unless `--store`) with each named function or method
called through a C function of its own (that script's TRAMPOLINES: map's, filter's, ...), and
prints each one's inclusive count per request, calls included (`callgrind_annotate
--inclusive=yes`), and the run's total. Up to 13 steps a run; plain functions and methods
(`bridge.api.signing:verify_checked`, `bridge.api.submit:Submitter.build`); a coroutine function
would count only its coroutine's creation. A name another module imported by itself
(`from m import f`) is replaced there too. The wrapping adds its own instructions to the total
(a few hundred a call), not to the rows.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_accept_inproc as inproc


def _wrap(targets: list[str]) -> list[tuple[str, str]]:
    """Each target replaced by a call through its trampoline: (target, the C function's name)."""
    names: list[tuple[str, str]] = []
    tramps = iter(inproc.TRAMPOLINES)
    for target in targets:
        module_name, _, attr = target.partition(":")
        module = importlib.import_module(module_name)
        owner: Any = module
        *path, last = attr.split(".")
        for part in path:
            owner = getattr(owner, part)
        real = getattr(owner, last)
        tramp, cname = next(tramps)

        def stepped(*a: Any, _real: Any = real, _tramp: Any = tramp, **kw: Any) -> Any:
            return _tramp(functools.partial(_real, **kw) if kw else _real, a)

        setattr(owner, last, stepped)
        if not path:  # `from module import name` elsewhere: the same function, replaced there
            for other in list(sys.modules.values()):
                if other is not None and other is not module and vars(other).get(last) is real:
                    setattr(other, last, stepped)
        names.append((target, cname))
    return names


def _table(profile: str, names: list[tuple[str, str]], requests: int) -> None:
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", profile],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    incl: dict[str, int] = {}
    total = 0
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S+)", line)
        if m:
            n = int(m.group(1).replace(",", ""))
            if m.group(2) == "PROGRAM":
                total = n
            fn = m.group(2).rsplit(":", 1)[-1].split("'")[0]
            incl[fn] = max(n, incl.get(fn, 0))
    for target, cname in names:
        print(f"{target:55} {incl.get(cname, 0) / requests:10,.0f}")
    print(f"{'total (wrapped)':55} {total / requests:10,.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("targets", nargs="*", help="module:function or module:Class.method")
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--store", action="store_true", help="the real store, not --stub")
    ap.add_argument("--kind", choices=sorted(inproc.TEXTS), default="gsm1", help="bench.py's texts")
    ap.add_argument("--out", help="the profile's file (a temporary one, removed, if not given)")
    ap.add_argument("--counting", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if not 0 < len(args.targets) <= len(inproc.TRAMPOLINES):
        ap.error(f"name 1 to {len(inproc.TRAMPOLINES)} steps")
    if args.counting:  # under valgrind: wrap, then run the accept loop
        names = _wrap(args.targets)
        Path(os.environ["BENCH_STEPS_OUT"]).write_text(json.dumps(names))
        sys.argv = [inproc.__file__, "--requests", str(args.requests), "--counting", "--wire"]
        sys.argv += ["--kind", args.kind]
        if not args.store:
            sys.argv.append("--stub")
        inproc.main()
        return
    out = args.out or tempfile.mktemp(prefix="callgrind.steps.")
    os.environ["BENCH_STEPS_OUT"] = names_file = tempfile.mktemp(prefix="steps.")
    cmd = [sys.executable, __file__, "--counting", "--requests", str(args.requests)]
    cmd += ["--kind", args.kind]
    cmd += ["--store"] if args.store else []
    inproc.CHILDREN.on_signals()
    try:
        inproc.CHILDREN.callgrind([*cmd, *args.targets], out, keep=bool(args.out))
        _table(out, json.loads(Path(names_file).read_text()), args.requests)
    finally:
        Path(names_file).unlink(missing_ok=True)
        if not args.out:
            Path(out).unlink(missing_ok=True)


if __name__ == "__main__":
    main()
