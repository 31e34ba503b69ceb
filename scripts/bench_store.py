#!/usr/bin/env python3
"""Time the SQLite store's write lock takes per accepted request, in one process.

Usage: python scripts/bench_store.py [--requests 20000] [--batch 20] [--kind gsm1|ucs3]
                                     [--shared] [--wal] [--preload N] [--ordered-keys]
                                     [--random-recipients] [--store FILE]

Why: end to end, `scripts/bench.py` shows the write lock held 80-85% of a 1-part run with two
acceptors, so the lock's time per message bounds the daemon; but the machine's noise (±15%, and
more between hours) hides a cut of a few microseconds there. This drives the real `SqliteStore`
with the accepts `bench.py`'s requests make (one recipient, a nonce, an idempotency key, the
prepaid charge under the default tariff), `--batch` of them per commit as the group commit forms
them, and prints the lock's time per accept from the store's own counter (`write_lock_stats`,
behind `smpp_bridge_store_write_lock_seconds_total`), the part of it the holding thread spent on
the CPU (the rest waited: for the disk, say, a page read while the lock was held), and the
process's CPU per accept. `--shared` commits a row from a second connection between batches, as
another process of a `--workers` daemon does: each batch then starts with SQLite's page cache
emptied, as it does there. That commit comes after the batch's accepts were submitted, before the
batch runs, as another process's commit comes while a request waits for the lock: what an accept
read before the lock (its nonce and key) is then in the OS's cache, no longer in SQLite's. Compare
two trees by running this script from each (it imports the `bridge` beside it).

`--wal` also prints the WAL frames (pages) the accepts wrote, per accept, by the table or index
each page belongs to (SQLite's `dbstat`): what a commit costs in pages, and which b-trees a
random key makes it write. The WAL is not checkpointed during such a run (its frames are read
back at the end), so its lock and CPU figures are not comparable with a run without `--wal`.
`--preload N` first stores N live nonces and N live idempotency records under random keys, as a
store under steady traffic holds (601 s of nonces, 24 h of keys): their random inserts then land
in b-trees of that size. `--ordered-keys` sends nonces and idempotency keys that sort by time
(ULIDs, as `bridge/client.py` makes them) instead of random ones: their inserts then append.
`--store FILE` runs against that store, in place, instead of a new one, and keeps it: a store
holding a day of keys (86 million at 1,000/s) takes many minutes to build, so it is built once and
reused (each run adds its accepts). Missing, it is built with `--preload N` idempotency records and
601,000 nonces (601 s of nonces at 1,000/s), in bulk (`bulk_preload`).
`--tps N` gives the account a rate (`tps`, never reached at 10**6): each accept then takes from
its token bucket (a reused --store file's account is set to it, 0 without it).
`--random-recipients` draws each request's number at random (the same each run), as real
traffic's are: each entry of an index on the recipient then lands on a page of its own.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import sqlite3
import struct
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge import ids, jsonio
from bridge.api.submit import Submitter, parse_send_request
from bridge.app import make_router
from bridge.billing import tariff_from_config
from bridge.config import parse_config
from bridge.domain.admission import Rules
from bridge.domain.ledger import topup
from bridge.store import sqlite_runner
from bridge.store.models import (
    AcceptBatch,
    Account,
    AppKey,
    IdempotencyRecord,
)
from bridge.store.sqlite import SqliteStore

GSM1 = {"to": "+8613800000000", "text": "Your verification code is 123456."}
UCS3 = {"to": "+8613800000000", "text": "【示例】您的验证码是123456，五分钟内有效。" * 6}
KEY = "ak_bench0123456789"


def wal_pages(wal: Path, start: int) -> tuple[list[int], int]:
    """The page numbers of the WAL's frames from byte `start` (0: the first frame) and the byte
    where they end: the frames whose salts are the header's (a restart of the WAL changes them,
    and a `--wal` run makes none)."""
    data = wal.read_bytes() if wal.exists() else b""
    if len(data) < 32:
        return [], 32
    page_size = struct.unpack(">I", data[8:12])[0]
    salts = data[16:24]
    at, pages = max(start, 32), []
    while at + 24 + page_size <= len(data) and data[at + 8 : at + 16] == salts:
        pages.append(struct.unpack(">I", data[at : at + 4])[0])
        at += 24 + page_size
    return pages, at


def preload(path: Path, n: int, now: int) -> None:
    """`n` live nonces and `n` live idempotency records under random keys (see --preload)."""
    rnd = random.Random(46)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    answer = b'{"batch_id":"bat_01KBQ1M4TDS8AVWXWDX3JE2DBR","count":1}'
    expiry = now + 86_400_000
    for first in range(0, n, 100_000):
        k = min(100_000, n - first)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO nonces (key_id, nonce, expires_at) VALUES (?,?,?)",
            ((KEY, f"{rnd.getrandbits(160):040x}", now + 601_000) for _ in range(k)),
        )
        conn.executemany(
            "INSERT INTO idempotency (account_id, key, request_hash, status_code, response, "
            "expires_at) VALUES (?,?,?,?,?,?)",
            (
                ("acc_bench", f"{rnd.getrandbits(128):032x}", "0" * 64, 202, answer, expiry)
                for _ in range(k)
            ),
        )
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def bulk_preload(path: Path, n: int, now: int) -> None:
    """`n` live idempotency records and 601,000 live nonces under random keys, inserted in random
    order as traffic inserts them (a sorted build would pack every page full, and each accept
    would then split one: SQLite's random inserts leave index pages ~90% full), but in minutes:
    no journal, an INSERT ... SELECT from a recursive CTE, and a page cache larger than the
    indexes, so the random inserts never wait for the disk. Expiries spread over the 24 h after
    a 4 h grace, so the records stay live for runs in the hours after the build."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute(f"PRAGMA cache_size={-max(100_000, n // 6)}")  # KiB: ~170 bytes a record
    live_from = now + 4 * 3_600_000
    count = "WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i<?) "
    answer = '{"batch_id":"bat_01KBQ1M4TDS8AVWXWDX3JE2DBR","count":1}'
    for first in range(0, n, 2_000_000):
        conn.execute(
            count + "INSERT INTO idempotency (account_id, key, request_hash, status_code, "
            "response, expires_at) SELECT 'acc_bench', lower(hex(randomblob(16))), "
            "lower(hex(randomblob(32))), 202, CAST(? AS BLOB), ? + abs(random()) % 86400000 FROM s",
            (min(2_000_000, n - first), answer, live_from),
        )
    conn.execute(
        count + "INSERT INTO nonces (key_id, nonce, expires_at) "
        "SELECT ?, lower(hex(randomblob(20))), ? + abs(random()) % 601000 FROM s",
        (601_000, KEY, live_from),
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()


async def run(args: argparse.Namespace, path: Path) -> dict[str, Any]:
    cfg = parse_config(
        {"security": {"generate_master_key": True}, "smscs": [{"name": "a", "system_id": "s"}]},
        env={},
        base_dir=path.parent,
    )
    submitter = Submitter(cfg, make_router(cfg))
    tariff = tariff_from_config(cfg.billing.tariff, 0)
    now = int(time.time() * 1000)
    if args.wal:  # no checkpoint restarts the WAL: its frames are read back at the end
        sqlite_runner.CHECKPOINT_EVERY = sqlite_runner.WAL_MAX_BYTES = 2**62
    if args.preload and not path.exists():
        made = SqliteStore(path)
        await made.open()  # the schema
        await made.close()
        (bulk_preload if args.store else preload)(path, args.preload, now)
    store = SqliteStore(path)
    await store.open()
    account = Account(
        id="acc_bench", name="bench", raw_text=True, tps=args.tps, created_at=now, updated_at=now
    )
    if await store.get_account(account.id) is None:  # a --store file reused has it
        await store.create_account(account)
        await store.add_key(AppKey(KEY, account.id, b"sealed", "active", now), max_active=2)
        await store.append_ledger(account.id, topup(10**15, now, "bench"))
    else:
        found = await store.get_account(account.id)
        assert found is not None
        # The rate this run asks for, not the one the file was built with: `--tps` against a
        # file built without it measured no bucket, and a file built with it kept one.
        if found.tps != args.tps:
            found = await store.update_account(account.id, {"tps": args.tps}, now)
            assert found is not None
        account = found
    body = UCS3 if args.kind == "ucs3" else GSM1
    other = sqlite3.connect(path, isolation_level=None) if args.shared else None
    if other is not None:
        if args.wal:  # its own automatic checkpoints would restart the WAL too
            other.execute("PRAGMA wal_autocheckpoint=0")
        other.execute("CREATE TABLE IF NOT EXISTS bench_other (x INTEGER)")

    def key(random_hex: str) -> str:
        # Ordered: a ULID (the time, then random bits), as bridge/client.py makes them.
        return ids.new_id("") if args.ordered_keys else random_hex

    draw = random.Random(20261205)

    def batch_of(i: int) -> AcceptBatch:
        at = now + i
        one = dict(body)
        if args.random_recipients:
            one["to"] = f"+86138{draw.randrange(10**8):08d}"
        req = parse_send_request(one, account, max_recipients=100, now_ms=at)
        batch_id, messages, charges = submitter.build(req, account, at, tariff=tariff)
        payload = jsonio.dumps({"batch_id": batch_id})
        return AcceptBatch(
            account_id=account.id,
            messages=tuple(messages),
            idempotency_key=key(uuid.uuid4().hex),
            idempotency=IdempotencyRecord(uuid.uuid4().hex, 202, payload),
            idempotency_expires_at=at + 86_400_000,
            tps=account.tps,
            key_id=KEY,
            nonce=key(uuid.uuid4().hex + uuid.uuid4().hex[:8]),
            nonce_expires_at=at + 601_000,
            account_version=account.updated_at,
            rules=Rules(charges=charges, billing=True, tz="Asia/Shanghai"),
        )

    held0, held_cpu, cpu_s, done, commits = 0.0, 0.0, 0.0, 0, 0
    warm = min(2_000, args.requests // 5)
    wal = Path(f"{path}-wal")
    wal_start: int | None = None
    for first in range(0, args.requests + warm, args.batch):
        batches = [batch_of(first + j) for j in range(args.batch)]  # built outside the timing
        if args.wal and wal_start is None and first >= warm:
            wal_start = wal_pages(wal, 0)[1]
        c0, s0 = time.process_time(), store.write_lock_stats()
        accepts = asyncio.gather(*(store.accept(b, now + first) for b in batches))
        other_cpu = 0.0
        if other is not None:  # after the accepts' first steps, before their batch's turn

            def commit_other() -> None:
                nonlocal other_cpu
                assert other is not None
                o0 = time.process_time()
                other.execute("INSERT INTO bench_other VALUES (1)")
                other_cpu = time.process_time() - o0

            asyncio.get_running_loop().call_soon(commit_other)
        outs = await accepts
        if first >= warm:
            cpu_s += time.process_time() - c0 - other_cpu
            s1 = store.write_lock_stats()
            assert s0 is not None and s1 is not None  # a SQLite store has the lock
            held0 += s1.held_s - s0.held_s
            held_cpu += s1.cpu_s - s0.cpu_s
            done += len(batches)
            commits += s1.commits - s0.commits
        assert all(o.accepted for o in outs), [o for o in outs if not o.accepted][:1]
    by_tree: collections.Counter[str] = collections.Counter()
    if args.wal:
        pages, _end = wal_pages(wal, wal_start or 0)
        reader = sqlite3.connect(path)
        names = dict(reader.execute("SELECT pageno, name FROM dbstat"))
        reader.close()
        by_tree.update(names.get(p, "(free list)") for p in pages)
        del by_tree["bench_other"]  # the other connection's, not the accepts'
    await store.close()
    if other is not None:
        other.close()
    return {
        "lock_us": held0 / done * 1e6,
        "lock_cpu_us": held_cpu / done * 1e6,
        "cpu_us": cpu_s / done * 1e6,
        "per_commit": done / max(1, commits),
        "wal": {name: n / done for name, n in by_tree.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=20, help="accepts per commit")
    ap.add_argument("--kind", choices=["gsm1", "ucs3"], default="gsm1")
    ap.add_argument("--shared", action="store_true", help="another connection commits between")
    ap.add_argument("--wal", action="store_true", help="WAL frames per accept, by b-tree")
    ap.add_argument("--preload", type=int, default=0, help="live nonces and keys stored first")
    ap.add_argument("--ordered-keys", action="store_true", help="nonces and keys sort by time")
    ap.add_argument(
        "--random-recipients", action="store_true", help="each request's number drawn at random"
    )
    ap.add_argument("--store", type=Path, help="an existing store to run against, in place")
    ap.add_argument(
        "--tps", type=int, default=0, help="the account's rate (high enough never to refuse)"
    )
    args = ap.parse_args()
    if args.store is not None:
        r = asyncio.run(run(args, args.store))
    else:
        with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
            r = asyncio.run(run(args, Path(tmp) / "bridge.db"))
    print(f"options: {vars(args)}")
    print(f"  write lock per accept (us)      {r['lock_us']:8.1f}")
    print(f"  ... of it on the CPU (us)       {r['lock_cpu_us']:8.1f}")
    print(f"  CPU per accept, all (us)        {r['cpu_us']:8.1f}")
    print(f"  accepts per commit              {r['per_commit']:8.1f}")
    if args.wal:
        wal = r["wal"]
        print(f"WAL frames per accept             {sum(wal.values()):8.2f}, by b-tree:")
        for name, per in sorted(wal.items(), key=lambda kv: -kv[1]):
            print(f"    {name:34s}{per:6.3f}")


if __name__ == "__main__":
    main()
