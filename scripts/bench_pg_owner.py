#!/usr/bin/env python3
"""The PostgreSQL store's cost of the owner's steps per message, in one process.

Usage: python scripts/bench_pg_owner.py [--messages 20000] [--batch 50] [--parts 1]
                                        [--early 0] [--runs 1] [--tree DIR] [--json]
                                        [--callgrind]

Why: `bench.py --store postgres` shows the owner's steps (claim, submit results, receipts and
their roll-ups) only inside the whole daemon's and the server's CPU, where a shared machine's
noise hides a cut of a round trip a batch. This is `bench_owner.py`'s drive for PostgreSQL: it
starts a throw-away cluster (tests/pg_cluster.py; fsync off), accepts `--messages` messages (not
counted), then drives them through the real `PostgresStore` as the owner does, `--batch` at a
time: a claim, the batch's submit results, the batch's receipts, each a transaction of its own.
It prints per message: the statements sent to the server (round trips, BEGIN and COMMIT not
counted), the rows they returned, this process's CPU, the server's CPU (every process of the
cluster, from /proc: on one machine) and the wall time, each by step; `--early F` applies that
share of the receipts before their submit results (kept, matched by the results' step). `--tree`
imports `bridge` from another checkout: run the script alternately on two trees to compare them.

`--callgrind` (session 57) reruns the steps under valgrind's callgrind (`--instr-atstart=no`,
counting switched on around the steps' loop with `callgrind_control -i`, as `bench_pg_accept.py`
does) and prints this process's instructions per message for the three steps together: the
owner's side of its PostgreSQL work, which does not move with the machine's load. Under it the
server's CPU is not read (a /proc scan a step would be counted): 0.
The cluster is stopped at the end and on SIGTERM or SIGINT (children.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--messages", type=int, default=20_000)
ap.add_argument("--batch", type=int, default=50, help="messages per claim (and per step)")
ap.add_argument("--parts", type=int, default=1, help="parts per message (UCS-2 when > 1)")
ap.add_argument("--early", type=float, default=0.0, help="share of receipts before their result")
ap.add_argument("--runs", type=int, default=1, help="runs, each on a fresh database")
ap.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]))
ap.add_argument("--json", action="store_true", help="one JSON line a run")
ap.add_argument("--callgrind", action="store_true", help="count instructions under callgrind")
ap.add_argument("--counting", action="store_true", help=argparse.SUPPRESS)  # under callgrind
ap.add_argument("--dsn", help=argparse.SUPPRESS)  # under callgrind: the caller's database
ap.add_argument("--postmaster", type=int, default=0, help=argparse.SUPPRESS)
ARGS = ap.parse_args()
sys.path.insert(0, str(Path(__file__).resolve().parent))  # children.py, owner_messages.py
sys.path.insert(0, ARGS.tree)
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests.pg_cluster: this tree's

from children import Children  # noqa: E402
from pg_counting import Counted, server_cpu  # noqa: E402

# No child of its own; the cluster (pg_ctl's daemon) is stopped when main's block ends, SIGTERM
# and SIGINT included (Children.started, Children.on_signals).
CHILDREN = Children()

from owner_messages import NOW, message  # noqa: E402  (after --tree: it imports bridge)

from bridge.store.models import (  # noqa: E402
    AcceptBatch,
    Account,
    ReceiptIn,
    SubmitResult,
)

STEPS = ("claim", "submit results", "receipts")


def _callgrind(on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
                   check=True, capture_output=True)  # fmt: skip


async def run(dsn: str, postmaster: int, counted: Counted) -> dict[str, Any]:
    from bridge.store.postgres import PostgresStore

    store = PostgresStore(dsn, min_size=1, max_size=4)
    await store.open()
    try:
        await store.create_account(Account(id="acc", name="acc", created_at=NOW, updated_at=NOW))
        n, b = ARGS.messages, ARGS.batch
        for first in range(0, n, 100):
            batch = [message(k, ARGS.parts) for k in range(first, min(n, first + 100))]
            await asyncio.gather(
                *(store.accept(AcceptBatch("acc", (m,), None, None), NOW) for m in batch)
            )
        async with store.pool.acquire() as c:  # a young server's claims wait (FENCE_S)
            age = await c.fetchval(
                "SELECT extract(epoch FROM now() - pg_postmaster_start_time())::float8"
            )
        await asyncio.sleep(max(0.0, 2.5 - age))  # postgres_confirm.FENCE_S and a margin
        per: dict[str, dict[str, float]] = {
            s: dict.fromkeys(("statements", "rows", "cpu", "server", "wall"), 0.0) for s in STEPS
        }
        now = NOW + 1_000  # every message due
        done = 0

        scans = [0.0, 0.0]  # this process's CPU and wall time reading /proc: not the steps'

        def mark() -> tuple[float, ...]:
            c0, w0 = time.process_time(), time.perf_counter()
            server = 0.0 if ARGS.counting else server_cpu(postmaster)
            c1, w1 = time.process_time(), time.perf_counter()
            scans[0] += c1 - c0
            scans[1] += w1 - w0
            return (counted.statements, counted.rows, c1 - scans[0], server, w1 - scans[1])

        def step(name: str, before: tuple[float, ...]) -> tuple[float, ...]:
            after = mark()
            for key, a, z in zip(per[name], before, after, strict=True):
                per[name][key] += z - a
            return mark()

        if ARGS.counting:
            _callgrind(True)
        while True:
            s = mark()
            work = await store.claim("i1", b, now, 60_000)
            if not work:
                break
            s = step("claim", s)
            refs = [(w.id, g.seq, f"x{w.id}-{g.seq}") for w in work for g in w.segments]
            receipts = [
                ReceiptIn("a", ref, "delivered", "DELIVRD", None, now, now) for _m, _q, ref in refs
            ]
            early = receipts[: round(len(work) * ARGS.early) * ARGS.parts]  # whole messages
            if early:
                got = await store.apply_receipts(early, now)
                assert got.pending == len(early), got
                s = step("receipts", s)
            await store.record_submits(
                [
                    SubmitResult(mid, seq, "sent", "a", ref, ref, at=now, sent_at=now)
                    for mid, seq, ref in refs
                ],
                [],
                now,
                instance="i1",
            )
            s = step("submit results", s)
            if len(early) < len(receipts):
                got = await store.apply_receipts(receipts[len(early) :], now)
                assert got.matched == len(receipts) - len(early), got
            step("receipts", s)
            done += len(work)
            now += 1
        if ARGS.counting:
            _callgrind(False)
        assert done == n, done
        async with store.pool.acquire() as c:
            left = await c.fetchval("SELECT count(*) FROM messages WHERE state <> 'delivered'")
        assert left == 0, f"{left} messages not delivered"
    finally:
        await store.close()
    import bridge

    out: dict[str, Any] = {"code": str(Path(bridge.__file__).parents[1]), "messages": done}
    for key, scale in (("statements", 1), ("rows", 1), ("cpu", 1e6), ("server", 1e6)):
        out[key] = round(sum(v[key] for v in per.values()) / done * scale, 2)
    out["wall_ms"] = round(sum(v["wall"] for v in per.values()) / (done / ARGS.batch) * 1e3, 2)
    out["by_step"] = {
        name: {
            "statements": round(v["statements"] / done, 2),
            "rows": round(v["rows"] / done, 2),
            "cpu_us": round(v["cpu"] / done * 1e6, 1),
            "server_us": round(v["server"] / done * 1e6, 1),
        }
        for name, v in per.items()
    }
    return out


def main() -> None:
    from tests import pg_cluster as pgc

    CHILDREN.on_signals()
    counted = Counted()
    if ARGS.counting:  # under callgrind: the caller's database and cluster
        print(json.dumps(CHILDREN.asyncio_run(run(ARGS.dsn, ARGS.postmaster, counted))))
        return
    with CHILDREN.started(pgc.start_cluster, pgc.Cluster.stop) as cluster:
        assert cluster.datadir is not None, "a throw-away cluster: its CPU is read from /proc"
        postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
        for k in range(ARGS.runs):
            name = pgc.new_database_name("owner")
            dsn = CHILDREN.asyncio_run(pgc.create_database(cluster, name))
            try:
                if ARGS.callgrind:
                    prof = tempfile.mktemp(prefix="callgrind.pg-owner.")
                    cmd = [
                        sys.executable, __file__, "--counting", "--dsn", dsn,
                        "--postmaster", str(postmaster), "--messages", str(ARGS.messages),
                        "--batch", str(ARGS.batch), "--parts", str(ARGS.parts),
                        "--early", str(ARGS.early), "--tree", ARGS.tree,
                    ]  # fmt: skip
                    stdout, total = CHILDREN.callgrind(cmd, prof)
                    res = json.loads(stdout.strip().splitlines()[-1])
                    res["instructions"] = round(total / res["messages"])
                    res["profile"] = prof
                else:
                    res = CHILDREN.asyncio_run(run(dsn, postmaster, counted))
            finally:
                CHILDREN.asyncio_run(pgc.drop_database(cluster, name))
            if ARGS.json:
                print(json.dumps(res), flush=True)
                continue
            print(f"run {k + 1}, bridge from {res['code']}: {ARGS.messages} messages of "
                  f"{ARGS.parts} part(s), {ARGS.batch} a step, early {ARGS.early}")  # fmt: skip
            print(f"  per message: {res['statements']} statements, {res['rows']} rows back, "
                  f"this process {res['cpu']} us CPU, server {res['server']} us CPU; "
                  f"{res['wall_ms']} ms a batch (wall)")  # fmt: skip
            for step_name, v in res["by_step"].items():
                print(f"    {step_name:15s} {json.dumps(v)}")
            if "instructions" in res:
                print(f"  {res['instructions']:,} instructions per message, the three steps "
                      f"(this process; profile in {res['profile']})")  # fmt: skip


if __name__ == "__main__":
    main()
