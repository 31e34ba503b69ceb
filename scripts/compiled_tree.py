#!/usr/bin/env python3
"""Copy this checkout's tracked files to DEST and compile its hot modules there with Cython.

Usage: python scripts/compiled_tree.py DEST [--groups accept,owner] [--annotation-typing]

Why: to measure whether compiling our pure-Python hot paths pays, against the same tree
uncompiled, with the benchmarks that take another tree (`bench_accept_inproc.py --callgrind` run
from DEST, `bench_owner.py --tree DEST`, `bench_parts.py --tree DEST`, `bench.py` run from DEST
with `PYTHONPATH=DEST`). Each module is compiled unchanged (Cython 3's pure-Python mode,
`cythonize -i`), its `.so` left beside its `.py` in DEST only: a `.so` wins the import, so an
edited `.py` would silently not run, which is why this never touches the checkout itself.
Cython (`pip install cython`) and a C compiler are needed; the 59 modules take 13-23 minutes on
two shared cores. Annotations are not used for typing unless `--annotation-typing`: with them,
an argument annotated `int` refuses a str with a TypeError before the function's own check,
and accepts 1.0 where the code refuses it (7 unit tests fail).

Session 50 (README "Benchmarks"): 6-7% fewer instructions per accept, 5% fewer for the owner's
store steps, but 25-45% more CPU per accept in `bench_accept_inproc.py` and more daemon CPU per
message end to end. Not shipped.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The accept: handler, authentication, the send's checks, the text, the store's accept job.
ACCEPT = """api/app api/auth api/signing api/submit api/v1 api/sending api/bodies api/idempotency
api/context api/errors api/key_use store/sqlite store/sqlite_rules store/sqlite_runner
store/rules_rows store/models store/key_warmup store/account_rows domain/admission domain/ledger
domain/phone domain/tariffs domain/frequency domain/skew_window domain/templates domain/signs
domain/content_filter text/split text/units text/gsm text/smart rules billing ids jsonio metrics
fastinit smpp/router smpp/tlvpack assignments""".split()
# The owner: the dispatcher's send path, the binds, the codec, receipts, results, roll-ups.
OWNER = """pipeline/dispatcher pipeline/batcher pipeline/inbound pipeline/submit_sm pipeline/wake
smpp/connector smpp/protocol smpp/session smpp/codec smpp/framing smpp/receipt smpp/msgid
smpp/persecond smpp/turns store/sqlite_pipeline store/rollup_rows domain/lifecycle aio
store/mo_rows""".split()
GROUPS = {"accept": ACCEPT, "owner": OWNER}
# Written into DEST: the mark of a tree this script built, which a later run may replace.
MARK = ".compiled_tree"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dest", type=Path)
    ap.add_argument("--groups", default="accept,owner", help="accept, owner or module paths")
    ap.add_argument("--annotation-typing", action="store_true")
    ap.add_argument("--jobs", type=int, default=2)
    args = ap.parse_args()
    mods: list[str] = []
    for group in args.groups.split(","):
        mods += GROUPS.get(group, [group])
    dest: Path = args.dest.resolve()
    if dest == ROOT or ROOT in dest.parents:
        sys.exit("DEST must be outside this checkout: a .so beside a .py wins its import")
    if dest in ROOT.parents:
        sys.exit(f"DEST {dest} holds this checkout: it is emptied first, the checkout with it")
    if dest.exists():
        # Emptied first: only a tree this script built (its mark), or an empty directory. Any
        # other was deleted whole, a home directory or a parent of the checkout given by a slip.
        if not (dest / MARK).is_file() and (not dest.is_dir() or any(dest.iterdir())):
            sys.exit(f"DEST {dest} exists and is not a tree compiled_tree.py built: not removed")
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    (dest / MARK).write_text("built by scripts/compiled_tree.py: replaced by its next run\n")
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True
    ).stdout.split()
    for name in listed:
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    cmd = ["cythonize", "-i", "-j", str(args.jobs), "-3", "-q"]
    if not args.annotation_typing:
        cmd += ["-X", "annotation_typing=False"]
    t0 = time.monotonic()
    done = subprocess.run([*cmd, *(f"bridge/{m}.py" for m in dict.fromkeys(mods))], cwd=dest)
    if done.returncode:
        sys.exit(done.returncode)
    built = len(list(dest.glob("bridge/**/*.so")))
    print(f"{built} modules compiled in {time.monotonic() - t0:.0f} s into {dest}")


if __name__ == "__main__":
    main()
