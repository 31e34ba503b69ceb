"""SQLite: a signed one-recipient send takes the account's own facts from the key's account.

The accept's key statement (`sqlite._authorize`) reads the key's account whole, and read the
account's daily quota, kind, low-balance threshold and warning mark a second time among the
send's facts (`sqlite_rules._one_cols`): four more columns for the sqlite3 module to describe
and convert inside the write lock. Now those four come from the account that statement read
(`sqlite_rules.one_facts_of`). These tests run the key path on a real store and hold each of
the four to the account's current row: the quota refuses, a postpaid account's domestic send
takes no money, the threshold warns once, the mark stops a second warning and a top-up's
re-arming clears it, and a change to any of them applies to the very next send.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge.domain.ledger import topup  # noqa: E402
from bridge.store.models import AcceptBatch, AcceptOutcome, AppKey  # noqa: E402
from bridge.store.sqlite import SqliteStore  # noqa: E402
from tests.integration.test_store_rules import (  # noqa: E402
    NOW,
    account,
    billed,
    message,
    sign,
)

MIN = 60_000


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = SqliteStore(tmp_path / "bridge.db")
    await s.open()
    await s.create_account(account(threshold=500, status_url="https://cb.example/st"))
    await sign(s)
    await s.append_ledger("acc_a", topup(1000, NOW, "funds"))
    await s.add_key(AppKey("K1", "acc_a", b"sealed", "active", NOW), max_active=2)
    yield s
    await s.close()


async def send(s: SqliteStore, n: int, amount: int, *, at: int = NOW) -> AcceptOutcome:
    """POST /v1/messages as the API hands it over: the key, a nonce, no version to check."""
    m = message(f"m{n}", f"+86138001380{n:02d}")
    batch = AcceptBatch(
        "acc_a",
        (m,),
        None,
        None,
        0,
        key_id="K1",
        nonce=f"n{n}",
        nonce_expires_at=NOW + 10 * MIN,
        rules=billed(m, amount=amount),
    )
    return await s.accept(batch, at)


async def cash(s: SqliteStore) -> int:
    return {p.pocket: p.amount for p in await s.get_pockets("acc_a")}["cash"]


async def test_the_key_statement_reads_the_accounts_facts_once(store: SqliteStore) -> None:
    conn = store._runner._conn
    assert conn is not None
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    assert (await send(store, 1, 100)).accepted
    (head,) = [s for s in seen if s.startswith("SELECT CASE WHEN k.status")]
    for column in ("daily_quota", "low_balance_threshold", "low_warned_at"):
        assert head.count(f"a.{column}") == 1, column  # in the account's JSON array only
    assert "EXISTS(SELECT 1 FROM optouts" in head  # the send's facts are still read there


async def test_quota_kind_threshold_and_mark_are_the_accounts_current_ones(
    store: SqliteStore,
) -> None:
    # The threshold (500): 1000 -> 700 no warning, -> 400 warns, -> 300 warned already.
    outs = [await send(store, i, 300 if i < 2 else 100) for i in range(3)]
    assert [o.accepted for o in outs] == [True, True, True]
    assert [o.plan.low_balance for o in outs if o.plan] == [None, (700, 400), None]
    # The quota, set a moment ago: refused at once, the place counted from today's sends.
    await store.update_account("acc_a", {"daily_quota": 4}, NOW)
    assert (await send(store, 3, 100)).accepted
    over = await send(store, 4, 100)
    assert over.refusal is not None and over.refusal.code == "DAILY_QUOTA_EXCEEDED"
    await store.update_account("acc_a", {"daily_quota": 0}, NOW)
    # Postpaid: the domestic send accrues, the balance (200) stays.
    await store.update_account("acc_a", {"kind": "postpaid"}, NOW)
    before = await cash(store)
    postpaid = await send(store, 5, 100)
    assert postpaid.accepted and postpaid.plan is not None and postpaid.plan.entries == ()
    assert await cash(store) == before == 200
    # Prepaid again; a top-up re-arms the warning (the mark cleared in the account's row):
    # the next crossing warns again.
    await store.update_account("acc_a", {"kind": "prepaid"}, NOW)
    await store.append_ledger("acc_a", topup(1000, NOW + MIN))  # 1200
    crossed = await send(store, 6, 800, at=NOW + 2 * MIN)  # 1200 -> 400
    assert crossed.plan is not None and crossed.plan.low_balance == (1200, 400)
    quiet = await send(store, 7, 100, at=NOW + 3 * MIN)
    assert quiet.accepted and quiet.plan is not None and quiet.plan.low_balance is None
