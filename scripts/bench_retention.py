#!/usr/bin/env python3
"""The retention purge on SQLite: messages purged per second, and how long it holds the event loop.

Usage: python scripts/bench_retention.py [--messages 200000]

Fills a fresh store with finished one-part messages (rows written directly, as many as asked),
then runs `purge_history` over all of them while a probe measures how late a 10 ms timer fires on
the same event loop (what an HTTP request waiting behind a purge chunk would see).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sqlite3
import tempfile
import time

from bridge.ids import new_id
from bridge.store.sqlite import SqliteStore

START = 1_700_000_000_000

_MESSAGE = (
    "INSERT INTO messages (id, account_id, batch_id, recipient, encoding, data_coding, segments, "
    "billable_units, state, accepted_at, done_at, q_not_before, q_state) "
    "VALUES (?, 'acc_bench', 'bat_bench', ?, 'GSM7', 0, 1, 1, 'delivered', ?, ?, ?, 'done')"
)
_SEGMENT = (
    "INSERT INTO segments (message_id, seq, total, state, esm_class, short_message, tlvs) "
    "VALUES (?, 1, 1, 'delivered', 0, ?, X'')"
)


async def fill(path: str, n: int) -> None:
    store = SqliteStore(path)
    await store.open()  # the schema
    await store.close()
    ids = [new_id("msg_", START + i) for i in range(n)]
    with sqlite3.connect(path) as c:
        c.executemany(
            _MESSAGE,
            ((mid, f"+86138{i:08d}", START + i, START + i + 5000, START + i)
             for i, mid in enumerate(ids)),
        )  # fmt: skip
        c.executemany(_SEGMENT, ((mid, b"x" * 60) for mid in ids))


async def run(n: int) -> None:
    folder = tempfile.mkdtemp(prefix="bench-retention-")
    try:
        await measure(os.path.join(folder, "bridge.db"), n)
    finally:
        shutil.rmtree(folder)  # a 200,000-message store is ~100 MB; CI runs this each time


async def measure(path: str, n: int) -> None:
    await fill(path, n)
    print(f"store: {n} finished messages, {os.path.getsize(path) / 1e6:.0f} MB")
    store = SqliteStore(path)
    await store.open()
    late: list[float] = []

    async def probe() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            late.append(time.perf_counter() - t - 0.01)

    task = asyncio.create_task(probe())
    t0 = time.perf_counter()
    cutoff = START + n + 10_000  # every message accepted and ended before it
    out = await store.purge_history(cutoff, cutoff, "2000-01-01")
    took = time.perf_counter() - t0
    task.cancel()
    await store.close()
    late.sort()
    late = late or [0.0]  # a purge faster than one 10 ms tick
    print(f"purged {out['messages']} messages in {took:.2f} s: {out['messages'] / took:,.0f}/s")
    print(
        "event loop held (10 ms timer fired late by) p50 / p99 / max: "
        f"{1000 * late[len(late) // 2]:.1f} / {1000 * late[int(len(late) * 0.99)]:.1f} / "
        f"{1000 * late[-1]:.1f} ms"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=200_000)
    asyncio.run(run(p.parse_args().messages))


if __name__ == "__main__":
    main()
