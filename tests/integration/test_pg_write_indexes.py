"""The indexes each message costs PostgreSQL (migration 32, README Architecture note 21).

Every update of a message row changes an indexed column, so each of its versions (the insert,
the claim, the submit results, the receipt) is an entry in every index whose condition it meets:
one index by recipient instead of two is an entry fewer per version. The ledger's key leads with
the account, so an entry is written to two indexes, not three. And the reads those indexes
served are served still, on tables of 100,000 rows."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from bridge.domain import frequency as freq
from bridge.domain.admission import FrequencyRule, Rules
from bridge.domain.ledger import topup
from bridge.jsonio import loads
from bridge.store import postgres_pipeline as pipe
from bridge.store import postgres_rules as rules_sql
from bridge.store.models import AcceptBatch, Account
from bridge.store.postgres import PostgresStore
from tests.integration.test_pg_accept_cost import _wal_by_table
from tests.messages import one_part

NOW = 1_700_000_000_000
DAY = 86_400_000
MONITOR = "+8613900000000"  # a number every account sends to, many times


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_dsn, min_size=1, max_size=2)
    await s.open()
    try:
        await s.create_account(Account(id="acc", name="acc", created_at=NOW, updated_at=NOW))
        yield s
    finally:
        await s.close()


async def _wal(store: PostgresStore, sql: str, *args: Any) -> dict[str, int]:
    """The WAL records `sql` writes per table, measured in a transaction rolled back after."""
    async with store.pool.acquire() as c:
        tx = c.transaction()
        await tx.start()
        try:
            raw = await c.fetchval(f"EXPLAIN (ANALYZE, WAL, FORMAT JSON) {sql}", *args)
        finally:
            await tx.rollback()
    return _wal_by_table(loads(raw)[0]["Plan"], {})


async def test_a_message_row_version_is_an_entry_in_one_index_fewer(pg: PostgresStore) -> None:
    # Two messages, the first claimed: every index the measured writes go to has its root
    # (the first entry of an empty index writes more than its own record).
    for mid in ("m0", "m1"):
        batch = AcceptBatch("acc", (one_part(mid, "acc", "+86138000000" + mid, NOW),), None, None)
        assert (await pg.accept(batch, NOW)).accepted
    assert [w.id for w in await pg.claim("inst", 1, NOW, 60_000)] == ["m0"]
    inserted = await _wal(
        pg,
        "INSERT INTO messages (id, account_id, batch_id, recipient, encoding, data_coding, "
        "segments, billable_units, accepted_at, q_not_before) "
        "VALUES ('m2', 'acc', 'b2', '+8613800000002', 'gsm7', 0, 1, 1, $1, $1)",
        NOW,
    )
    # The row, then its key, the queue's two indexes, (account, time), (recipient, account,
    # time): the two recipient indexes were one more.
    assert inserted == {"messages": 6}, inserted
    claimed = await _wal(pg, pipe._CLAIM, ["m1"], "inst", NOW + 60_000)
    # The new version, then its key, the claims' index, (account, time), (recipient, ...).
    assert claimed == {"messages": 5}, claimed


async def test_a_ledger_entry_is_written_to_two_indexes(pg: PostgresStore) -> None:
    await pg.append_ledger("acc", topup(1_000, NOW, "funds"))
    wal = await _wal(
        pg,
        "INSERT INTO ledger (account_id, kind, amount, pocket, at, ref) "
        "VALUES ('acc', 'charge', -30, 'cash', $1, 'msg_1')",
        NOW,
    )
    assert wal == {"ledger": 3}, wal  # the row, its key (account, id), (account, ref)
    page = await pg.ledger_page("acc")
    assert [r.amount for r in page] == [1_000]


async def _fill(c: asyncpg.Connection) -> None:
    """100,000 messages of 20 accounts, each number written to about twice, and one number
    every account wrote to 2,000 times; 100,000 ledger entries; then ANALYZE, as autovacuum
    would have by then."""
    await c.execute(
        "INSERT INTO messages (id, account_id, batch_id, recipient, sender, sign_name, encoding, "
        "data_coding, segments, billable_units, accepted_at, q_not_before, state, q_state, "
        "segments_sent, sent_at, price_class) "
        "SELECT 'msg_' || lpad(g::text, 8, '0'), 'acc' || (g % 20), 'b' || g, "
        "CASE WHEN g % 50 = 0 THEN $2 ELSE '+86138' || lpad((g % 50000)::text, 8, '0') END, "
        "'1069', 'sign', 'gsm7', 0, 1, 1, $1::bigint - (100000 - g) * 1000, $1, 'delivered', "
        "'done', 1, $1::bigint - (100000 - g) * 1000, 'D' FROM generate_series(1, 100000) g",
        NOW,
        MONITOR,
    )
    await c.execute(
        "INSERT INTO ledger (account_id, kind, amount, pocket, at, ref) "
        "SELECT 'acc' || (g % 20), 'charge', -30, 'cash', $1::bigint, "
        "'msg_' || lpad(g::text, 8, '0') FROM generate_series(1, 100000) g",
        NOW,
    )
    await c.execute("ANALYZE messages; ANALYZE ledger")


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    """Every read of messages or ledger the store runs, with its arguments."""
    seen: list[tuple[str, tuple[Any, ...]]] = []
    conn = asyncpg.connection.Connection
    for name in ("fetch", "fetchrow", "fetchval"):
        real = getattr(conn, name)

        def spy(self: Any, query: str, *args: Any, _real: Any = real, **kw: Any) -> Any:
            if "FROM messages" in query or "FROM ledger" in query:
                seen.append((query, args))
            return _real(self, query, *args, **kw)

        monkeypatch.setattr(conn, name, spy)
    return seen


async def test_the_reads_the_dropped_indexes_served_still_use_an_index(
    pg: PostgresStore, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with pg.pool.acquire() as c:
        await _fill(c)
    seen = _spy(monkeypatch)
    # A reply's attribution: by recipient alone (what messages_recipient served).
    assert await pg.attribute_mo(MONITOR, ["1069"], NOW) is not None
    assert await pg.attribute_mo("+8613800000007", ["1069"], NOW) is not None
    # By account and recipient (messages_account_recipient): the `to` filter, the frequency
    # history of an accept, on a number of few messages and on the one every account writes to.
    assert await pg.list_messages("acc7", recipient="+8613800000007", limit=5)
    numbers = ("+8613800000007", MONITOR)
    rule = FrequencyRule("raw", "sign", None, freq.Limits(0, 0, 5), "UTC", numbers)
    async with pg.pool.acquire() as c:
        await rules_sql.read_facts(c, "acc7", Rules(sign_name="sign", frequency=rule), numbers, NOW)
    # The ledger by account: its pages by id, its sums, a message's charges by ref.
    assert await pg.ledger_page("acc7", after_id=500, limit=10)
    assert await pg.ledger_sums("acc7")
    await pg.usage_groups("acc7", NOW - 30 * DAY, NOW + 1, [])
    async with pg.pool.acquire() as c:
        await rules_sql.refund_finals(c, [("acc7", "msg_00000007", "failed", "D", 0, 1)], NOW)
    monkeypatch.undo()
    reads = {q for q, _ in seen}
    assert len(reads) >= 7, reads
    conn = await asyncpg.connect(pg_dsn)
    try:
        for query, args in seen:
            plan = "\n".join(r[0] for r in await conn.fetch(f"EXPLAIN {query}", *args))
            for table in ("messages", "ledger"):
                assert f"Seq Scan on {table}" not in plan, (query, plan)
            if "recipient = " in query:  # by the recipient index, the account a key too
                assert "messages_recipient_account" in plan, (query, plan)
                after = plan.split("messages_recipient_account", 1)[1]
                cond = after.split("Index Cond: ", 1)[1].split("\n", 1)[0]
                assert "recipient = " in cond, (query, plan)
                if "account_id = $1" in query:
                    assert "account_id = " in cond, (query, plan)
    finally:
        await conn.close()
