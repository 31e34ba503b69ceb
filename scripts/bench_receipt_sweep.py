#!/usr/bin/env python3
"""The sweep's receipt-timeout read when messages wait past the timeout for a long validity.

A message whose validity ends after `pipeline.receipt_timeout_hours` stays `sent` until its end
plus an hour (lifecycle.receipt_deadline). The sweep (every 5 s; on SQLite in a thread of
its own, outside the write lock) reads the open messages by sent_at and steps over those still
waiting: this prints the read's time with 0 and `--waiting` of them beside `--recent` messages
sent within the timeout, on a SQLite file of the real schema (the read alone; nothing is ended:
none is due).

    python scripts/bench_receipt_sweep.py --waiting 100000 --recent 200000

`--order` times the read as the engine makes it since session 50 (in the index's order, `ORDER
BY sent_at, rowid`: the sweep pages on after a full page of messages held back) against the
read without the ORDER BY, alternated, on the file with `--waiting` messages.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
from pathlib import Path

from bridge.domain import lifecycle as lc
from bridge.store import migrate

H = 3_600_000
NOW = 1_800_000_000_000
TIMEOUT = 72 * H


def fill(path: Path, waiting: int, recent: int) -> sqlite3.Connection:
    db = sqlite3.connect(path)
    for _v, _name, sql in migrate.migrations("sqlite"):
        db.executescript(sql)
    cols = db.execute("PRAGMA table_info(messages)").fetchall()
    row = dict.fromkeys((r[1] for r in cols if r[3] and r[4] is None), 0)
    rng = random.Random(1)
    rows = []
    for i in range(waiting + recent):
        long = i < waiting  # sent 80 h ago, its 5-day validity 2 more days to run
        sent_at = NOW - (80 * H if long else rng.randint(0, 70 * H))
        rows.append(
            {
                **row,
                "id": f"msg_{i:012d}",
                "account_id": "acc",
                "batch_id": "b",
                "recipient": "+8613800138000",
                "encoding": "gsm7",
                "state": "sent",
                "sent_at": sent_at,
                "expires_at": NOW + 48 * H if long else None,
                "q_state": "done",
                "accepted_at": sent_at,
                "smsc": "a",
            }
        )
    keys = list(rows[0]) if rows else []
    if rows:
        db.executemany(
            f"INSERT INTO messages ({', '.join(keys)}) VALUES ({', '.join('?' * len(keys))})",
            [tuple(r[k] for k in keys) for r in rows],
        )
    db.commit()
    return db


def timed(db: sqlite3.Connection, runs: int, order: str = "") -> list[float]:
    where, params = lc.timed_out_where(NOW, TIMEOUT, {}, lambda _i: "?")
    sql = f"SELECT id FROM messages WHERE {where}{order} LIMIT 10000"
    out = []
    for _ in range(runs):
        t = time.perf_counter()
        assert db.execute(sql, params).fetchall() == []
        out.append((time.perf_counter() - t) * 1000)
    return sorted(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--waiting", type=int, default=100_000)
    ap.add_argument("--recent", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--order", action="store_true", help="ORDER BY sent_at, rowid against none")
    args = ap.parse_args()
    if args.order:
        with tempfile.TemporaryDirectory() as tmp:
            db = fill(Path(tmp) / "w.db", args.waiting, args.recent)
            forms = {"unordered": "", "ordered": " ORDER BY sent_at, rowid"}
            got: dict[str, list[float]] = {f: [] for f in forms}
            for _ in range(args.runs):
                for name, order in forms.items():
                    got[name] += timed(db, 1, order)
            med = {f: sorted(ms)[len(ms) // 2] for f, ms in got.items()}
            for f, m in med.items():
                print(f"{f:>9}: read median {m:.2f} ms, min {min(got[f]):.2f} ms")
            print(f"ordered / unordered (medians): {med['ordered'] / med['unordered']:.2f}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        dbs = {n: fill(Path(tmp) / f"{n}.db", n, args.recent) for n in (0, args.waiting)}
        res: dict[int, list[float]] = {n: [] for n in dbs}
        for _ in range(args.runs):  # alternated, one run each at a time
            for n, db in dbs.items():
                res[n] += timed(db, 1)
        for n, ms in res.items():
            ms.sort()
            print(
                f"{n:>9,} waiting beside {args.recent:,} recent: read median "
                f"{ms[len(ms) // 2]:.2f} ms, min {ms[0]:.2f} ms"
            )


if __name__ == "__main__":
    main()
