#!/usr/bin/env python3
"""Time the SQLite store's write lock the owner's steps take per message, in one process.

Usage: python scripts/bench_owner.py [--messages 20000] [--batch 50] [--history 200000]
                                     [--early 0.33] [--parts 3] [--vary] [--tree DIR]
                                     [--callgrind] [--wal]

Why: `scripts/bench_store.py` isolates the accept's part of the write lock; the owner's part
(claim, submit results, receipts and the roll-ups they make) was only seen end to end, where the
machine's noise hides a cut of a few microseconds. This accepts `--messages` one-part messages
(not timed), then drives them through the real `SqliteStore` as the owner does, `--batch` at a
time: a claim, the batch's submit results, the batch's receipts, each step a commit of its own
after another connection's commit (as in a `--workers` daemon, each then starts with SQLite's
page cache emptied). It prints the lock's time and CPU per message from the store's own counters
(`write_lock_stats`) and the process's CPU per message. `--history` first stores that many
finished messages (a store in service holds its retention period's). `--early F` applies that
share of the receipts before their submit results, as under load (kept unmatched, then matched
when the results come: `bench.py`'s "matched again"); compare 0 with 1, each one receipts
commit per batch (a share between makes two). `--parts N` sends N-part UCS-2 messages (a
result and a receipt per part; `--early` then counts whole messages). `--tree` imports `bridge`
from another checkout, to compare two trees in alternating runs of this one script.
`--vary` claims a count drawn (seeded: the same in every run) between 1 and `--batch` each
time, as the dispatcher claims its binds' free window slots: each step's statements then list
that many ids, as in a daemon, where a fixed batch reuses one SQL text per statement.
`--callgrind` reruns it under valgrind's callgrind, counting the owner's steps only (from the
first claim to the last receipts, the other connection's commits between them included:
`callgrind_control -i on|off`, as `bench_accept_inproc.py` does), and prints instructions per
message: load-independent, where the lock's CPU on a shared machine is not. `--wal` turns the
store's checkpoints off (and the other connection's) and prints the WAL frames (pages) the owner's
steps wrote per message, by step and b-tree (`dbstat` names each page at the end): the pages each
commit dirties, which every process's next transaction reads again (README note 29), counted
without the daemon's noise.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import random
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--messages", type=int, default=20_000)
ap.add_argument("--batch", type=int, default=50, help="messages per claim (and per step)")
ap.add_argument("--history", type=int, default=200_000, help="finished messages stored first")
ap.add_argument("--runs", type=int, default=1)
ap.add_argument("--early", type=float, default=0.0, help="share of receipts before their result")
ap.add_argument("--parts", type=int, default=1, help="parts per message (UCS-2 when > 1)")
ap.add_argument("--vary", action="store_true", help="claim 1 to --batch messages at a time")
ap.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]))
ap.add_argument("--callgrind", action="store_true", help="count instructions under callgrind")
ap.add_argument("--wal", action="store_true", help="WAL frames per message, by step and b-tree")
ap.add_argument("--counting", action="store_true", help=argparse.SUPPRESS)  # under callgrind
ARGS = ap.parse_args()
sys.path.insert(0, str(Path(__file__).resolve().parent))  # children.py, owner_messages.py
sys.path.insert(0, ARGS.tree)

from children import Children  # noqa: E402

# valgrind with this script under it (--callgrind): ended with this script (children.py).
CHILDREN = Children()

from owner_messages import NOW, message  # noqa: E402  (after --tree: it imports bridge)

from bridge.store import sqlite_runner  # noqa: E402
from bridge.store.models import (  # noqa: E402
    AcceptBatch,
    Account,
    ReceiptIn,
    SubmitResult,
)
from bridge.store.sqlite import SqliteStore  # noqa: E402

COLS = (
    "id, account_id, batch_id, recipient, encoding, data_coding, segments, billable_units, "
    "accepted_at, q_not_before, state, q_state, segments_sent, segments_delivered, sent_at, "
    "done_at"
)


def history(path: Path, n: int) -> None:
    c = sqlite3.connect(path, isolation_level=None)
    c.execute("BEGIN")
    for k in range(0, n, 10_000):
        c.executemany(
            f"INSERT INTO messages ({COLS}) VALUES ({','.join('?' * 16)})",
            (
                (f"msg_h{i:012d}", "acc", "b", f"+86138{i % 10**8:08d}", "gsm7", 0, 1, 1, *times)
                for i in range(k, min(n, k + 10_000))
                for at in (NOW - n + i,)
                for times in ((at, at, "delivered", "done", 1, 1, at, at),)
            ),
        )
    c.execute("COMMIT")
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()


async def run(path: Path) -> dict[str, float]:
    made = SqliteStore(path)
    await made.open()
    await made.create_account(Account(id="acc", name="acc", created_at=NOW, updated_at=NOW))
    await made.close()
    history(path, ARGS.history)
    if ARGS.wal:  # no checkpoint restarts the WAL: its frames are read back at the end
        sqlite_runner.CHECKPOINT_EVERY = sqlite_runner.WAL_MAX_BYTES = 2**62
    store = SqliteStore(path)
    await store.open()
    n, b = ARGS.messages, ARGS.batch
    for first in range(0, n, 100):
        batch = [message(k, ARGS.parts) for k in range(first, min(n, first + 100))]
        await asyncio.gather(
            *(store.accept(AcceptBatch("acc", (m,), None, None), NOW) for m in batch)
        )
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("PRAGMA synchronous=OFF")  # its commits only empty the store's page cache
    other.execute("PRAGMA wal_autocheckpoint=0")  # nor do its checkpoints (--wal)
    other.execute("CREATE TABLE IF NOT EXISTS bench_other (x INTEGER)")
    held = lock_cpu = cpu = 0.0
    steps = dict.fromkeys(("claim", "submit results", "receipts"), 0.0)  # lock CPU by step
    wal = Path(f"{path}-wal")
    spans: list[tuple[str, int, int]] = []  # (step, WAL byte it began at, where it ended): --wal
    at = wal.stat().st_size if ARGS.wal else 0
    done = 0
    now = NOW + 1_000  # every message due
    sizes = random.Random(53)
    if ARGS.counting:
        subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True,
                       capture_output=True)  # fmt: skip

    def step(name: str, before: Any) -> Any:
        nonlocal at
        after = store.write_lock_stats()
        assert after is not None  # a SQLite store has the lock
        steps[name] += after.cpu_s - before.cpu_s
        if ARGS.wal:
            end = wal.stat().st_size
            spans.append((name, at, end))
            at = end
        other.execute("INSERT INTO bench_other VALUES (1)")
        return store.write_lock_stats()

    while True:
        other.execute("INSERT INTO bench_other VALUES (1)")
        at = wal.stat().st_size if ARGS.wal else 0
        s0, c0 = store.write_lock_stats(), time.process_time()
        want = sizes.randint(1, b) if ARGS.vary else b
        work = await store.claim("i1", want, now, 60_000)
        if not work:
            break
        s = step("claim", s0)
        at = wal.stat().st_size if ARGS.wal else 0
        receipts = [
            ReceiptIn("a", f"x{w.id}-{g.seq}", "delivered", "DELIVRD", None, now, now)
            for w in work
            for g in w.segments
        ]
        assert len(receipts) == len(work) * ARGS.parts, len(receipts)
        early = receipts[: round(len(work) * ARGS.early) * ARGS.parts]  # whole messages
        if early:  # before their submit results: kept unmatched, matched by the results' step
            out = await store.apply_receipts(early, now)
            assert out.pending == len(early), out
        s = step("receipts", s)
        at = wal.stat().st_size if ARGS.wal else 0
        await store.record_submits(
            [
                SubmitResult(
                    w.id,
                    g.seq,
                    "sent",
                    "a",
                    f"x{w.id}-{g.seq}",
                    f"x{w.id}-{g.seq}",
                    at=now,
                    sent_at=now,
                )
                for w in work
                for g in w.segments
            ],
            [],
            now,
        )
        s = step("submit results", s)
        at = wal.stat().st_size if ARGS.wal else 0
        if len(early) < len(receipts):
            out = await store.apply_receipts(receipts[len(early) :], now)
            assert out.matched == len(receipts) - len(early), out
        step("receipts", s)
        s1, c1 = store.write_lock_stats(), time.process_time()
        assert s0 is not None and s1 is not None
        held += s1.held_s - s0.held_s
        lock_cpu += s1.cpu_s - s0.cpu_s
        cpu += c1 - c0
        done += len(work)
        now += 1
    if ARGS.counting:
        subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], check=True,
                       capture_output=True)  # fmt: skip
    frames = wal_frames(path, spans) if ARGS.wal else {}
    other.close()
    await store.close()
    assert done == n, done
    per = {"held": held / done * 1e6, "lock_cpu": lock_cpu / done * 1e6, "cpu": cpu / done * 1e6}
    return (
        per
        | {name: v / done * 1e6 for name, v in steps.items()}
        | {f"wal {k}": v / done for k, v in frames.items()}
    )


def wal_frames(path: Path, spans: list[tuple[str, int, int]]) -> dict[str, int]:
    """The WAL frames the owner's steps wrote (the other connection's between them left out),
    counted by "step/b-tree" (the page's b-tree named by `dbstat` at the end)."""
    reader = sqlite3.connect(path)
    names = dict(reader.execute("SELECT pageno, name FROM dbstat"))
    reader.close()
    data = Path(f"{path}-wal").read_bytes()
    page = 24 + struct.unpack(">I", data[8:12])[0]
    out: collections.Counter[str] = collections.Counter()
    for name, begin, end in spans:
        for off in range(begin, end, page):
            pageno = struct.unpack(">I", data[off : off + 4])[0]
            out[f"{name}/{names.get(pageno, '(free list)')}"] += 1
    return dict(out)


def under_callgrind() -> None:
    """Reruns this script under callgrind (one run), counting the owner's steps only, and
    prints the instructions per message."""
    out = tempfile.mktemp(prefix="callgrind.owner.")
    cmd = [
        sys.executable, __file__, "--counting", "--messages", str(ARGS.messages),
        "--batch", str(ARGS.batch), "--history", str(ARGS.history), "--early", str(ARGS.early),
        "--parts", str(ARGS.parts), "--tree", ARGS.tree, *(["--vary"] if ARGS.vary else []),
    ]  # fmt: skip
    stdout, total = CHILDREN.callgrind(cmd, out)
    print(stdout.strip())
    print(f"instructions per message                 {total / ARGS.messages:,.0f}"
          f"  (profile in {out})")  # fmt: skip


def main() -> None:
    # SIGTERM and SIGINT end valgrind (--callgrind), and in the copy under it run the
    # `finally` blocks (its store's temporary directory), before the script exits.
    CHILDREN.on_signals()
    if ARGS.callgrind:
        under_callgrind()
        return
    outs: list[dict[str, Any]] = []
    for _ in range(ARGS.runs):
        with tempfile.TemporaryDirectory() as d:
            outs.append(CHILDREN.asyncio_run(run(Path(d) / "bench.db")))
    med = {k: statistics.median(o[k] for o in outs) for k in outs[0]}
    print(f"tree                                     {ARGS.tree}")
    print(f"parts per message                        {ARGS.parts}")
    print(f"owner write lock per message (us)        {med['held']:.1f}")
    print(f"owner lock CPU per message (us)          {med['lock_cpu']:.1f}")
    print(f"owner CPU per message, all (us)          {med['cpu']:.1f}")
    print(
        "lock CPU per message by step (us)        "
        + " / ".join(f"{med[k]:.1f}" for k in ("claim", "submit results", "receipts"))
        + "  (claim / submit results / receipts)"
    )
    if ARGS.wal:
        frames = {k[4:]: v for k, v in med.items() if k.startswith("wal ")}
        total = sum(frames.values())
        print(f"WAL frames per message                   {total:.3f}, by step/b-tree:")
        for name, per in sorted(frames.items(), key=lambda kv: -kv[1]):
            print(f"  {name:38s} {per:.3f}")


if __name__ == "__main__":
    main()
