"""Session 59: an accept under the sending rules of one message of one part, charged one ledger
entry, sends the part's columns and the entry's as values, not as one-element array literals
(~55 k instructions an accept of asyncpg-free Python), and writes the same rows: the part's
bytes, the entry's NULL reference and expiry, the pocket moved once. The literal forms stay for
a message of several parts and for several entries (a top-up with a voucher, refunds)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge.domain.admission import Priced, Rules
from bridge.domain.ledger import Entry, EntryKind, topup
from bridge.store import postgres_rules as rules_sql
from bridge.store.models import AcceptBatch, Account, AppKey, IdempotencyRecord
from bridge.store.postgres import PostgresStore
from tests.messages import one_part

pytestmark = pytest.mark.postgres

NOW = 1_700_000_000_000
AID = "acc"


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_dsn, min_size=1, max_size=1)
    await s.open()
    try:
        await s.create_account(Account(id=AID, name=AID, created_at=NOW, updated_at=NOW))
        await s.create_account(Account(id="other", name="other", created_at=NOW, updated_at=NOW))
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


async def test_a_one_part_charged_accept_sends_values_and_writes_the_rows(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []
    conn_class = store.pool._connection_class  # StoreConnection: every statement passes here
    seen = conn_class.fetchrow, conn_class.fetchval

    def spy(orig: Any) -> Any:
        def call(self: Any, query: str, *args: Any, **kw: Any) -> Any:
            sent.append(query)
            return orig(self, query, *args, **kw)

        return call

    monkeypatch.setattr(conn_class, "fetchrow", spy(seen[0]))
    monkeypatch.setattr(conn_class, "fetchval", spy(seen[1]))
    batches = [_batch(i) for i in range(3)]
    for b in batches:  # each its own transaction: the writes go in the group's last statement
        out = await store.accept(b, NOW)
        assert out.accepted, out
    writes = [q for q in sent if "INSERT INTO ledger" in q]
    assert writes, sent
    for q in writes:
        assert "::text::text[]" not in q and "::text::int[]" not in q, q
        assert "::text::bytea[]" not in q, q
    parts = await store.pool.fetch(
        "SELECT message_id, seq, total, esm_class, short_message, tlvs FROM segments "
        "ORDER BY message_id"
    )
    want = [
        (m.id, s.seq, s.total, s.esm_class, s.short_message, s.tlvs)
        for b in batches
        for m in b.messages
        for s in m.segments
    ]
    assert [tuple(r) for r in parts] == want
    ledger = await store.pool.fetch(
        "SELECT account_id, kind, amount, pocket, at, ref, expires_at FROM ledger "
        "WHERE kind = 'charge' ORDER BY id"
    )
    assert [tuple(r) for r in ledger] == [
        (AID, "charge", -30, "cash", NOW, b.messages[0].id, None) for b in batches
    ]
    assert sum(p.amount for p in await store.get_pockets(AID)) == 100_000 - 3 * 30


@pytest.mark.parametrize("guard", [None, "true", "false"])
@pytest.mark.parametrize(
    "entry",
    [
        Entry(EntryKind.CHARGE, -7, "cash", NOW, "m\"a'\\b", None),
        Entry(EntryKind.VOUCHER_GRANT, 500, "voucher:v1", NOW, None, NOW + 86_400_000),
        Entry(EntryKind.TOPUP, 2**62, "cash", NOW, None, None),
    ],
)
async def test_one_entry_as_values_writes_what_the_literals_wrote(
    store: PostgresStore, entry: Entry, guard: str | None
) -> None:
    """One entry by its values, beside the same entry in the literal form (two entries of two
    accounts, the other one's rows then left aside): the same ledger row, the same pocket."""
    async with store.pool.acquire() as c:
        rows: list[Any] = []
        for form in ("one", "literals"):
            tx = c.transaction()
            await tx.start()
            try:
                w = rules_sql.Writes()
                entries = [(AID, entry)] if form == "one" else [(AID, entry), ("other", entry)]
                rules_sql.add_entries(w, entries, guard)
                assert ("::text::text[]" in w.sql()) is (form == "literals")
                await w.run(c)
                rows.append(
                    (
                        [
                            tuple(r)
                            for r in await c.fetch(
                                "SELECT account_id, kind, amount, pocket, at, ref, expires_at "
                                "FROM ledger WHERE account_id = $1 AND at = $2 "
                                "AND (kind <> 'topup' OR amount = $3) ORDER BY id",
                                AID,
                                NOW,
                                2**62,
                            )
                        ],
                        [
                            tuple(r)
                            for r in await c.fetch(
                                "SELECT account_id, pocket, amount, expires_at FROM pockets "
                                "WHERE account_id = $1 ORDER BY pocket",
                                AID,
                            )
                        ],
                    )
                )
            finally:
                await tx.rollback()
    assert rows[0] == rows[1]
