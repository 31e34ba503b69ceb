"""SQLite: a write batch of accepts ends as the same accepts run one batch each (session 53's
held sums, reviewed).

The accepts of one batch leave each account's daily count and pocket sums to the batch's end
(`sqlite_rules.HeldSums`); each reads the rows and adds what the earlier ones hold. These tests
run one mix of accepts (two accounts, prepaid with cash and an expiring voucher and a
low-balance warning, postpaid; with a key, without, several recipients; refused by quota, by
balance, by sign; an idempotent replay) twice on real SQLite files: all in one write batch,
and one after another, each its own batch; and compare every answer and every money row.
"""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

from bridge.domain.ledger import grant_voucher, topup
from bridge.store.models import AcceptBatch, AppKey, IdempotencyRecord
from bridge.store.sqlite import SqliteStore
from tests.integration.test_store_rules import NOW, account, billed, message, sign

MIN = 60_000
DAY = 24 * 60 * MIN


async def _store(path: Path) -> SqliteStore:
    s = SqliteStore(path)
    await s.open()
    await s.create_account(
        account("acc_a", status_url="https://hook.example/a", threshold=1_150, daily_quota=7)
    )
    await s.create_account(account("acc_b", kind="postpaid", daily_quota=3))
    for aid in ("acc_a", "acc_b"):
        await sign(s, aid=aid)
    await sign(s, "Pending", "pending", aid="acc_a")
    await s.append_ledger("acc_a", topup(1_000, NOW, "funds"))
    await s.append_ledger("acc_a", grant_voucher(500, NOW, "v1", NOW + DAY))
    await s.add_key(AppKey("KA", "acc_a", b"sealed", "active", NOW), max_active=2)
    await s.add_key(AppKey("KB", "acc_b", b"sealed", "active", NOW), max_active=2)
    return s


_n = 0


def _accept(
    aid: str,
    recipients: int = 1,
    *,
    keyed: bool = True,
    sign_name: str = "Acme",
    idem: str | None = None,
    amount: int = 200,
) -> AcceptBatch:
    global _n
    msgs = []
    for _ in range(recipients):
        _n += 1
        msgs.append(message(f"m{_n}", f"+86138{_n:08d}", account_id=aid, sign=sign_name))
    key = idem or f"i{_n}"
    rules = replace(billed(*msgs, amount=amount), sign_name=sign_name)
    base = AcceptBatch(
        aid,
        tuple(msgs),
        key,
        IdempotencyRecord(f"hash-{key}", 202, b""),  # a zero-length blob
        NOW + DAY,
        rules=rules,
        account_version=NOW,
    )
    if not keyed:
        return base
    return replace(
        base,
        key_id="KA" if aid == "acc_a" else "KB",
        nonce=f"n{_n}",
        nonce_expires_at=NOW + 10 * MIN,
    )


def _mix() -> list[AcceptBatch]:
    global _n
    _n = 0
    return [
        _accept("acc_a"),  # 200 from the voucher (expires first)
        _accept("acc_b"),
        _accept("acc_a", keyed=False),  # read_one: 200 more of the voucher
        _accept("acc_a", 2),  # read_facts: the voucher's last 100, then cash
        _accept("acc_b", 2, keyed=False),
        _accept("acc_a", sign_name="Pending"),  # refused by its sign: holds nothing
        _accept("acc_a", idem="i1"),  # a replay of the first
        _accept("acc_a", 2, keyed=False),  # falls under the warning's threshold
        _accept("acc_b"),  # the quota's fourth: refused
        _accept("acc_a", amount=500),  # the quota's seventh; 500 of cash
        _accept("acc_a", amount=500),  # 8th: quota
        _accept("acc_b", keyed=False),
    ]


def _answer(out: Any) -> tuple[Any, ...]:
    return (
        out.accepted,
        None if out.refusal is None else (out.refusal.code, out.refusal.message),
        None if out.existing is None else out.existing.response,
        None if out.plan is None else (out.plan.day, out.plan.entries, out.plan.low_balance),
        out.auth_refusal,
    )


def _rows(path: Path) -> dict[str, list[Any]]:
    with closing(sqlite3.connect(path)) as db:
        return {
            "pockets": db.execute(
                "SELECT account_id, pocket, amount, expires_at FROM pockets ORDER BY 1, 2"
            ).fetchall(),
            "daily_counts": db.execute("SELECT * FROM daily_counts ORDER BY 1, 2").fetchall(),
            "ledger": db.execute(
                "SELECT account_id, kind, amount, pocket, at, ref, expires_at FROM ledger "
                "ORDER BY account_id, at, ref, pocket, amount"
            ).fetchall(),
            "warned": db.execute("SELECT id, low_warned_at FROM accounts ORDER BY 1").fetchall(),
            "events": db.execute(
                "SELECT account_id, count(*) FROM webhook_outbox GROUP BY 1 ORDER BY 1"
            ).fetchall(),
        }


async def test_one_batch_of_accepts_ends_as_the_accepts_one_by_one(tmp_path: Path) -> None:
    together = await _store(tmp_path / "together.db")
    apart = await _store(tmp_path / "apart.db")
    try:
        commits = together._runner.commits
        outs = await asyncio.gather(*(together.accept(b, NOW) for b in _mix()))
        assert together._runner.commits == commits + 1, "not one batch"
        one_by_one = [await apart.accept(b, NOW) for b in _mix()]
        assert [_answer(o) for o in outs] == [_answer(o) for o in one_by_one]
        # The mix refuses by quota, balance or sign and replays, or it would test less.
        assert [o.accepted for o in outs].count(False) >= 4
        assert _rows(together.path) == _rows(apart.path)
    finally:
        await together.close()
        await apart.close()
