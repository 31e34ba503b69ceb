#!/usr/bin/env python3
"""Time a number's erasure with N stored idempotent answers of the account (SQLite).

Usage: python scripts/bench_erase.py [--records 200000] [--others 0] [--erasures 3] [--tree PATH]

Why: an erasure masks the number in the account's stored answers of idempotent requests (kept
`server.idempotency_hours` for replays). In one transaction that read every record of the
account, ~1.2 µs each, while every writer of every process waited; since session 41 it goes in
chunks (bridge/store/sqlite_erase.py). This writes --records answers of one account (one message
each, to distinct numbers) straight into a real store, erases a few of those numbers and prints,
per erasure, the wall time, the write lock's time held, the longest single write transaction,
and how long another writer (an empty write every 2 ms) waited for the lock meanwhile.
`--tree` runs another checkout's bridge package (the old code, for a before/after).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NOW = 1_900_000_000_000


def _answer(k: int) -> bytes:
    entry = {
        "id": f"msg_{k:026d}",
        "to": f"+86138{k:08d}",
        "status": "queued",
        "segments": 1,
        "billable_units": 1,
        "encoding": "GSM7",
        "client_ref": None,
    }
    return json.dumps({"batch_id": f"bat_{k:026d}", "count": 1, "messages": [entry]}).encode()


def _seed(path: Path, n: int, others: int = 0) -> None:
    """`n` answers of acc_a (key-k, to +86138 k) and `others` of acc_b, spread among them in id
    order (a store of many accounts: a walk by id would read theirs too)."""
    total = n + others
    c = sqlite3.connect(path)
    with c:
        k = 0
        for base in range(0, total, 100_000):
            rows = []
            for i in range(base, min(total, base + 100_000)):
                if (i * n) // total != ((i + 1) * n) // total:  # n of the total, evenly
                    rows.append(("acc_a", f"key-{k}", "h" * 64, 202, _answer(k), NOW + 86_400_000))
                    k += 1
                else:
                    rows.append(("acc_b", f"key-{i}", "h" * 64, 202, _answer(i), NOW + 86_400_000))
            c.executemany(
                "INSERT INTO idempotency (account_id, key, request_hash, status_code, response, "
                "expires_at) VALUES (?,?,?,?,?,?)",
                rows,
            )
    c.close()


def _nothing(_c: object) -> None:
    return None


async def run(args: argparse.Namespace, path: Path) -> list[dict[str, float]]:
    from bridge.store.sqlite import SqliteStore

    store = SqliteStore(path)
    await store.open()
    await store.close()
    _seed(path, args.records, args.others)
    store = SqliteStore(path)
    await store.open()
    out: list[dict[str, float]] = []
    try:
        runner: Any = store._runner
        holds: list[float] = []
        run_batch = runner._run_batch

        def timed(batch: Any) -> None:
            t = time.perf_counter()
            try:
                run_batch(batch)
            finally:
                holds.append(time.perf_counter() - t)

        runner._run_batch = timed
        for i in range(args.erasures):
            waits: list[float] = []
            done = asyncio.Event()

            async def probe(waits: list[float] = waits, done: asyncio.Event = done) -> None:
                while not done.is_set():
                    t = time.perf_counter()
                    await runner.write(_nothing)
                    waits.append(time.perf_counter() - t)
                    await asyncio.sleep(0.002)

            prober = asyncio.create_task(probe())
            await asyncio.sleep(0.01)
            holds.clear()
            held = runner.lock_held_s
            began = time.perf_counter()
            number = f"+86138{i * 7:08d}"
            await store.erase_recipient("acc_a", number, "+86138****", NOW)
            wall = time.perf_counter() - began
            held = runner.lock_held_s - held
            done.set()
            await prober
            record = await store.get_idempotency("acc_a", f"key-{i * 7}", NOW + 1)
            assert record is not None and number.encode() not in record.response
            out.append(
                {
                    "wall_s": wall,
                    "lock_s": held,
                    "longest_s": max(holds),
                    "transactions": len(holds),
                    "wait_max_s": max(waits) if waits else 0.0,
                }
            )
    finally:
        await store.close()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--records", type=int, default=200_000)
    p.add_argument("--erasures", type=int, default=3)
    p.add_argument("--others", type=int, default=0, help="answers of another account, spread in")
    p.add_argument("--tree", type=Path, default=Path(__file__).resolve().parents[1])
    args = p.parse_args()
    sys.path.insert(0, str(args.tree))
    with tempfile.TemporaryDirectory(prefix="bridge-bench-erase-") as tmp:
        out = asyncio.run(run(args, Path(tmp) / "bench.db"))
    print(f"options: records {args.records}, others {args.others}, tree {args.tree}")
    for i, o in enumerate(out):
        print(
            f"erasure {i}: wall / write lock held (ms) {o['wall_s'] * 1e3:.0f} / "
            f"{o['lock_s'] * 1e3:.0f}, longest transaction {o['longest_s'] * 1e3:.1f} ms "
            f"({o['transactions']:.0f} transactions, the other writer's included), another "
            f"writer's longest wait {o['wait_max_s'] * 1e3:.1f} ms"
        )


if __name__ == "__main__":
    main()
