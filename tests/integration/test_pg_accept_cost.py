"""What PostgreSQL spends on an accept under the sending rules (session 44).

The facts' statement, the second of an accept's transaction, was planned again at every
execution: its generic plan (arrays of unknown length) is costed above the custom plan of each
accept's arrays, so the plan cache never settled on it (~350 us of planning for ~45 us of
execution, each transaction). And the write statement's upserts of the day's count and of the
charged pocket locked the row before updating it: a WAL record more each."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge.domain.admission import Priced, Rules
from bridge.domain.ledger import topup
from bridge.jsonio import loads
from bridge.store import postgres_rules as rules_sql
from bridge.store.models import AcceptBatch, Account, AppKey, IdempotencyRecord
from bridge.store.postgres import PostgresStore
from tests.messages import one_part

NOW = 1_700_000_000_000
AID = "acc"
FACTS = "%sg.names AS sign_names%"


@pytest.fixture
async def one_conn(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    """One connection: every accept's statements are prepared on it, where its plan counts
    (pg_prepared_statements) can be read."""
    s = PostgresStore(pg_dsn, min_size=1, max_size=1)
    await s.open()
    try:
        await s.create_account(Account(id=AID, name=AID, created_at=NOW, updated_at=NOW))
        await s.add_key(AppKey("K", AID, b"sealed", "active", NOW), max_active=2)
        await s.append_ledger(AID, topup(100_000, NOW, "funds"))
        yield s
    finally:
        await s.close()


def _batch(i: int) -> AcceptBatch:
    m = one_part(f"m{i:04d}", AID, f"+86138{i:08d}", NOW + i)
    return AcceptBatch(
        AID,
        (m,),
        f"idem-{i}",
        IdempotencyRecord(f"h{i}", 202, b"{}"),
        NOW + 86_400_000,
        key_id="K",
        nonce=f"n{i}",
        nonce_expires_at=NOW + 300_000,
        account_version=NOW,
        rules=Rules(charges=(Priced(m.id, 30, False),), billing=True),
    )


async def test_the_facts_are_not_planned_again_at_each_accept(one_conn: PostgresStore) -> None:
    for i in range(12):  # one at a time: each its own transaction, the facts a statement alone
        out = await one_conn.accept(_batch(i), NOW + i)
        assert out.accepted, out
    async with one_conn.pool.acquire() as c:
        custom, generic = await c.fetchrow(
            "SELECT custom_plans, generic_plans FROM pg_prepared_statements "
            "WHERE statement LIKE $1 AND statement NOT LIKE '%INSERT%'",
            FACTS,
        )
        # Only for the accepts' transactions: the connection's own statements plan as before.
        assert await c.fetchval("SHOW plan_cache_mode") == "auto"
    assert (custom, generic) == (0, 12)
    assert sum(p.amount for p in await one_conn.get_pockets(AID)) == 100_000 - 12 * 30


def _wal_by_table(plan: dict[str, Any], out: dict[str, int]) -> dict[str, int]:
    """The WAL records of each table's writes. A node's count includes what ran inside it: the
    insert that follows an UPDATE reads that CTE, which runs then, so the larger is the table's."""
    if plan.get("Node Type") == "ModifyTable":
        table = plan["Relation Name"]
        out[table] = max(out.get(table, 0), plan["WAL Records"])
    for sub in plan.get("Plans", ()):
        _wal_by_table(sub, out)
    return out


async def test_the_count_and_the_pocket_are_updated_without_a_lock_record(
    one_conn: PostgresStore,
) -> None:
    first = await one_conn.accept(_batch(0), NOW)  # the day's row and the pocket exist now
    assert first.accepted and first.plan is not None
    w = rules_sql.Writes()
    rules_sql.add_plan(w, AID, first.plan, 1)
    async with one_conn.pool.acquire() as c:
        tx = c.transaction()
        await tx.start()
        try:
            raw = await c.fetchval(f"EXPLAIN (ANALYZE, WAL, FORMAT JSON) {w.sql()}", *w.args)
            count = await c.fetchval("SELECT messages FROM daily_counts WHERE account_id = $1", AID)
            cash = await c.fetchval("SELECT SUM(amount) FROM pockets WHERE account_id = $1", AID)
        finally:
            await tx.rollback()  # the writes were a measurement only
    assert (count, cash) == (2, 100_000 - 2 * 30)  # moved once each, as the upserts did
    wal = _wal_by_table(loads(raw)[0]["Plan"], {})
    # An upsert's DO UPDATE wrote two each: a lock, then the update.
    assert (wal["daily_counts"], wal["pockets"]) == (1, 1), wal
