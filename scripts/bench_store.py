#!/usr/bin/env python3
"""Time the SQLite store's write lock takes per accepted request, in one process.

Usage: python scripts/bench_store.py [--requests 20000] [--batch 20] [--kind gsm1|ucs3]
                                     [--shared]

Why: end to end, `scripts/bench.py` shows the write lock held 80-85% of a 1-part run with two
acceptors, so the lock's time per message bounds the daemon; but the machine's noise (±15%, and
more between hours) hides a cut of a few microseconds there. This drives the real `SqliteStore`
with the accepts `bench.py`'s requests make (one recipient, a nonce, an idempotency key, the
prepaid charge under the default tariff), `--batch` of them per commit as the group commit forms
them, and prints the lock's time per accept from the store's own counter (`write_lock_stats`,
behind `smpp_bridge_store_write_lock_seconds_total`) and the process's CPU per accept. `--shared`
commits a row from a second connection between batches, as another process of a `--workers`
daemon does: each batch then starts with SQLite's page cache emptied, as it does there. Compare
two trees by running this script from each (it imports the `bridge` beside it).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge import jsonio
from bridge.api.submit import Submitter, parse_send_request
from bridge.app import make_router
from bridge.billing import tariff_from_config
from bridge.config import parse_config
from bridge.domain.admission import Rules
from bridge.domain.ledger import topup
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


async def run(args: argparse.Namespace, path: Path) -> dict[str, float]:
    cfg = parse_config(
        {"security": {"generate_master_key": True}, "smscs": [{"name": "a", "system_id": "s"}]},
        env={},
        base_dir=path.parent,
    )
    submitter = Submitter(cfg, make_router(cfg))
    tariff = tariff_from_config(cfg.billing.tariff, 0)
    store = SqliteStore(path)
    await store.open()
    now = int(time.time() * 1000)
    account = Account(id="acc_bench", name="bench", raw_text=True, created_at=now, updated_at=now)
    await store.create_account(account)
    await store.add_key(AppKey(KEY, account.id, b"sealed", "active", now), max_active=2)
    await store.append_ledger(account.id, topup(10**15, now, "bench"))
    body = UCS3 if args.kind == "ucs3" else GSM1
    other = sqlite3.connect(path, isolation_level=None) if args.shared else None
    if other is not None:
        other.execute("CREATE TABLE IF NOT EXISTS bench_other (x INTEGER)")

    def batch_of(i: int) -> AcceptBatch:
        at = now + i
        req = parse_send_request(dict(body), account, max_recipients=100, now_ms=at)
        batch_id, messages, charges = submitter.build(req, account, at, tariff=tariff)
        payload = jsonio.dumps({"batch_id": batch_id})
        return AcceptBatch(
            account_id=account.id,
            messages=tuple(messages),
            idempotency_key=uuid.uuid4().hex,
            idempotency=IdempotencyRecord(uuid.uuid4().hex, 202, payload),
            idempotency_expires_at=at + 86_400_000,
            tps=0,
            key_id=KEY,
            nonce=uuid.uuid4().hex + uuid.uuid4().hex[:8],
            nonce_expires_at=at + 601_000,
            account_version=account.updated_at,
            rules=Rules(charges=charges, billing=True, tz="Asia/Shanghai"),
        )

    held0, cpu_s, done, commits = 0.0, 0.0, 0, 0
    warm = min(2_000, args.requests // 5)
    for first in range(0, args.requests + warm, args.batch):
        batches = [batch_of(first + j) for j in range(args.batch)]  # built outside the timing
        if other is not None:
            other.execute("INSERT INTO bench_other VALUES (1)")
        c0, s0 = time.process_time(), store.write_lock_stats()
        outs = await asyncio.gather(*(store.accept(b, now + first) for b in batches))
        if first >= warm:
            cpu_s += time.process_time() - c0
            s1 = store.write_lock_stats()
            held0 += s1.held_s - s0.held_s
            done += len(batches)
            commits += s1.commits - s0.commits
        assert all(o.accepted for o in outs), [o for o in outs if not o.accepted][:1]
    await store.close()
    if other is not None:
        other.close()
    return {
        "lock_us": held0 / done * 1e6,
        "cpu_us": cpu_s / done * 1e6,
        "per_commit": done / max(1, commits),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--batch", type=int, default=20, help="accepts per commit")
    ap.add_argument("--kind", choices=["gsm1", "ucs3"], default="gsm1")
    ap.add_argument("--shared", action="store_true", help="another connection commits between")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        r = asyncio.run(run(args, Path(tmp) / "bridge.db"))
    print(f"options: {vars(args)}")
    print(f"  write lock per accept (us)      {r['lock_us']:8.1f}")
    print(f"  CPU per accept, all (us)        {r['cpu_us']:8.1f}")
    print(f"  accepts per commit              {r['per_commit']:8.1f}")


if __name__ == "__main__":
    main()
