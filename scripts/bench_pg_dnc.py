#!/usr/bin/env python3
"""Memory and time of a do-not-contact import's end on PostgreSQL with many messages waiting, of
an account's disable or `senders` change, or of its close (`--op`).

Usage: python scripts/bench_pg_dnc.py [--waiting 200000] [--blocked-every 10] [--runs 3]
                                      [--op dnc|disable|senders|close] [--old TREE]

Why: the import's second step read every waiting message (id, number) into the daemon at once,
in one transaction (session 42 walks them 2,000 at a time: bridge/store/postgres_dnc.py); so did
a disable (every waiting id of the account, locked) and a `senders` change (every waiting
message with a sender of every account), read 2,000 at a time through a cursor since
(bridge/store/postgres_ends.py). This starts a throw-away cluster (tests/pg_cluster.py), queues
`--waiting` one-part messages of one account into a template database, then per run clones it
and, in a child process, imports a list that blocks every `--blocked-every`th number (`dnc`),
disables the account (`disable`: every one ends), takes from it the first of the two senders
its messages alternate between (`senders`: half end), or closes it (`close`: its history; every
`--blocked-every`th message waits, the others were delivered, so its waiting ones end and all
are masked; it read every one's id into the daemon, held on the server since), printing the
operation's wall time, its peak of Python allocations (tracemalloc, a second child) and of the
child's RSS above what it had before. With `--old TREE` (a checkout of the code before, e.g.
`git archive`), the runs alternate between TREE and this tree, so both see the same load on a
shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # children.py, beside this script
from children import Children

ROOT = Path(__file__).resolve().parents[1]
CHILDREN = Children()
NOW = 1_700_000_000_000
SENDERS = ("10690077", "10690099")  # --op senders: the messages alternate; the first is taken


def _number(k: int) -> str:
    return f"+86138{k:08d}"


async def _fill(dsn: str, waiting: int, op: str, every: int) -> None:
    from bridge.store.models import AcceptBatch, Account, NewMessage, NewSegment
    from bridge.store.postgres import PostgresStore

    store = PostgresStore(dsn, min_size=1, max_size=4)
    await store.open()
    try:
        senders = SENDERS if op == "senders" else ()
        await store.create_account(
            Account(id="acc", name="acc", created_at=NOW, updated_at=NOW, senders=senders)
        )
        for start in range(0, waiting, 1_000):
            msgs = tuple(
                NewMessage(
                    id=f"m{k:08d}",
                    account_id="acc",
                    batch_id="b",
                    recipient=_number(k),
                    encoding="gsm7",
                    data_coding=0,
                    billable_units=1,
                    segments=(NewSegment(1, 1, 0, b"hello", b""),),
                    accepted_at=NOW,
                    text="hello",
                    sender=SENDERS[k % 2] if senders else None,
                )
                for k in range(start, min(start + 1_000, waiting))
            )
            await store.accept(AcceptBatch("acc", msgs, None, None), NOW)
        if op == "close":  # history: all but every `every`th delivered (as a receipt leaves it)
            await store.pool.execute(
                "WITH m AS (UPDATE messages SET q_state = 'done', state = 'delivered', "
                "segments_sent = 1, segments_delivered = 1, sent_at = $1, done_at = $1 "
                "WHERE substr(id, 2)::int % $2 <> 0 RETURNING id) "
                "UPDATE segments SET state = 'delivered', done_at = $1, smsc = 'smscA', "
                "smsc_msg_id = message_id, submitted_at = $1 FROM m WHERE message_id = m.id",
                NOW,
                every,
            )
    finally:
        await store.close()


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


async def _op(store: Any, op: str, waiting: int, every: int) -> int:
    """What the operation ended (a disable and a senders change answer the account: counted)."""
    from bridge.store.models import DncInfo

    if op == "dnc":
        numbers = [_number(k) for k in range(0, waiting, every)]
        info = DncInfo("registry", "registry", "CN", len(numbers), 0, NOW + 1)
        return int(await store.import_dnc(info, numbers, []))
    if op == "close":
        assert await store.close_account("acc", NOW + 1) is not None
        return -1
    if op == "disable":
        await store.update_account("acc", {"status": "disabled"}, NOW + 1)
    else:
        await store.update_account("acc", {"senders": [SENDERS[1]]}, NOW + 1)
    return -1


async def _ended(store: Any) -> int:
    return int(
        await store.pool.fetchval(
            "SELECT COUNT(*) FROM messages WHERE q_state = 'done' AND state <> 'delivered'"
        )
    )


async def _measure(dsn: str, waiting: int, every: int, trace: bool, op: str) -> dict[str, Any]:
    from bridge.store.postgres import PostgresStore

    store = PostgresStore(dsn, min_size=1, max_size=4)
    await store.open()
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_kb())
            time.sleep(0.005)

    try:
        base = _rss_kb()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        if trace:
            tracemalloc.start()
        t0 = time.perf_counter()
        ended = await _op(store, op, waiting, every)
        seconds = time.perf_counter() - t0
        traced = tracemalloc.get_traced_memory()[1] if trace else 0
        stop.set()
        sampler.join()
        if ended < 0:
            ended = await _ended(store)
    finally:
        await store.close()
    import bridge

    return {
        "code": str(Path(bridge.__file__).parents[1]),
        "ended": ended,
        "seconds": round(seconds, 2),
        "rss_mb": round((peak[0] - base) / 1024, 1),
        "traced_mb": round(traced / 2**20, 1),
    }


def _child(tree: Path, dsn: str, args: argparse.Namespace, trace: bool) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--measure", dsn, "--tree", str(tree)]
    cmd += ["--waiting", str(args.waiting), "--blocked-every", str(args.blocked_every)]
    cmd += ["--op", args.op]
    if trace:
        cmd.append("--trace")
    code, out, err = CHILDREN.run(cmd, None)
    if code:
        raise SystemExit(f"the measuring child failed ({code}): {err[-3000:]}")
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--waiting", type=int, default=200_000)
    p.add_argument("--blocked-every", type=int, default=10)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--op", choices=("dnc", "disable", "senders", "close"), default="dnc")
    p.add_argument("--old", type=Path, help="a tree of the code before, run alternately")
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--tree", type=Path, default=ROOT, help=argparse.SUPPRESS)
    p.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, str(args.tree))
    if args.measure:
        print(
            json.dumps(
                asyncio.run(
                    _measure(args.measure, args.waiting, args.blocked_every, args.trace, args.op)
                )
            )
        )
        return
    sys.path.insert(1, str(ROOT))
    from tests import pg_cluster as pgc

    # The cluster is pg_ctl's daemon, not a child: stopped when the block ends, after the
    # measuring child, SIGTERM and SIGINT included (Children.started, Children.on_signals).
    CHILDREN.on_signals()
    run = CHILDREN.asyncio_run
    with CHILDREN.started(pgc.start_cluster, pgc.Cluster.stop) as cluster:
        template = run(pgc.create_database(cluster, "bench_template"))
        t0 = time.perf_counter()
        run(_fill(template, args.waiting, args.op, args.blocked_every))
        print(f"stored {args.waiting} messages in {time.perf_counter() - t0:.1f} s", flush=True)
        trees = [("new", ROOT)] + ([("old", args.old)] if args.old else [])
        for k in range(args.runs):
            for name, tree in trees if k % 2 == 0 else trees[::-1]:
                for trace in (False, True):
                    db = pgc.new_database_name("bench")
                    dsn = run(pgc.create_database(cluster, db, "bench_template"))
                    try:
                        res = _child(tree, dsn, args, trace)
                    finally:
                        run(pgc.drop_database(cluster, db))
                    print(f"run {k} {name} {'traced' if trace else 'timed '} {res}", flush=True)


if __name__ == "__main__":
    main()
