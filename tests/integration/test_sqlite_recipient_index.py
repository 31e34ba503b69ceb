"""One index by recipient on SQLite (migration 34, README Architecture note 21), as on PostgreSQL.

Each message's insert wrote an entry into `messages_account_recipient` (account, recipient,
time) and `messages_recipient` (recipient, time); with real traffic's recipients each entry
lands on a page of its own, and each page is written whole to the WAL under the store's write
lock. `messages_recipient_account` (recipient, account, time) serves both kinds of reads. The
tests trace every statement the reads by recipient run on a real SQLite file of 20,000
messages and check each plan seeks that index (no scan of the table), and that a store
made before the migration keeps answering the same after it."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.domain import frequency as freq
from bridge.domain.admission import FrequencyRule, Rules
from bridge.store import sqlite_rules
from bridge.store.models import AcceptBatch, Account
from bridge.store.sqlite import SqliteStore
from tests.messages import one_part

NOW = 1_700_000_000_000
MONITOR = "+8613900000000"  # a number every account writes to, many times
ACCOUNTS = 20


def _fill(path: Path) -> None:
    """20,000 sent messages over 20 accounts and 5,000 numbers, one in 50 to MONITOR."""
    c = sqlite3.connect(path)
    with c:
        c.executemany(
            "INSERT INTO messages (id, account_id, batch_id, recipient, sender, sign_name, "
            "encoding, data_coding, segments, billable_units, accepted_at, q_not_before, state, "
            "q_state, sent_at) VALUES (?,?,?,?,'1069','sign','gsm7',0,1,1,?,?,'delivered',"
            "'done',?)",
            (
                (
                    f"msg_{g:08d}",
                    f"acc{g % ACCOUNTS}",
                    f"b_{g}",
                    MONITOR if g % 50 == 0 else f"+86138{g % 5000:08d}",
                    NOW - (20_000 - g) * 1000,
                    NOW,
                    NOW - (20_000 - g) * 1000,
                )
                for g in range(1, 20_001)
            ),
        )
        c.execute("ANALYZE")
    c.close()


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Every statement any connection the store opens runs, its arguments inlined."""
    statements: list[str] = []
    real = sqlite3.connect

    def connect(*args: Any, **kw: Any) -> sqlite3.Connection:
        conn = real(*args, **kw)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    yield statements


async def _store(path: Path) -> SqliteStore:
    store = SqliteStore(path)
    await store.open()
    return store


async def test_one_index_by_recipient_and_the_reads_by_recipient_seek_it(
    tmp_path: Path, traced: list[str]
) -> None:
    path = tmp_path / "bridge.db"
    store = await _store(path)
    try:
        for i in range(ACCOUNTS):
            aid = f"acc{i}"
            await store.create_account(Account(id=aid, name=aid, created_at=NOW, updated_at=NOW))
        _fill(path)
        c = sqlite3.connect(path)
        indexes = {
            r[0]: r[1]
            for r in c.execute(
                "SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name='messages'"
            )
        }
        c.close()
        by_recipient = sorted(n for n, sql in indexes.items() if sql and "recipient" in sql)
        assert by_recipient == ["messages_recipient_account"], indexes
        traced.clear()
        # A reply's attribution: by recipient alone (what messages_recipient served).
        assert await store.attribute_mo(MONITOR, ["1069"], NOW) is not None
        assert await store.attribute_mo("+8613800000007", ["1069"], NOW) is not None
        # By account and recipient (messages_account_recipient): the `to` filter, an accept's
        # frequency history, an erasure's senders and numbers.
        page = await store.list_messages("acc7", recipient="+8613800000007", limit=5)
        assert page and all(m.recipient == "+8613800000007" for m in page)
        numbers = ("+8613800000007", MONITOR)
        rule = FrequencyRule("raw", "sign", None, freq.Limits(0, 0, 5), "UTC", numbers)
        facts = await store._runner.read(  # type: ignore[attr-defined]
            lambda c: sqlite_rules.read_facts(
                c, "acc7", Rules(sign_name="sign", frequency=rule), numbers, NOW
            )
        )
        assert facts is not None
        assert await store.erase_recipient("acc10", MONITOR, "+86139****0000", NOW + 1) > 0
    finally:
        await store.close()
    reads = [
        s
        for s in traced
        if s.lstrip().upper().startswith("SELECT") and "FROM messages" in s and "recipient" in s
    ]
    assert len(reads) >= 5, reads
    c = sqlite3.connect(path)
    try:
        for sql in reads:
            plan = " / ".join(r[3] for r in c.execute("EXPLAIN QUERY PLAN " + sql))
            assert "messages_recipient_account" in plan, (sql, plan)
            # (A reply's attribution sorts the number's own rows, as it did by the old index.)
            assert "SCAN messages" not in plan, (sql, plan)
    finally:
        c.close()


async def test_a_store_made_before_the_migration_answers_the_same_after_it(
    tmp_path: Path,
) -> None:
    from types import SimpleNamespace

    from tests.store_engines import schema_before

    path = tmp_path / "bridge.db"
    store = await _store(path)
    for i in range(2):
        aid = f"acc{i}"
        await store.create_account(Account(id=aid, name=aid, created_at=NOW, updated_at=NOW))
    for k in range(6):
        batch = AcceptBatch(
            f"acc{k % 2}", (one_part(f"msg_{k:04d}", f"acc{k % 2}", MONITOR, NOW + k),), None, None
        )
        await store.accept(batch, NOW + k)
    await store.close()
    engine = SimpleNamespace(name="sqlite", location=str(path))
    await schema_before(engine, 34, 10_000)  # type: ignore[arg-type]
    c = sqlite3.connect(path)
    names = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    c.close()
    assert {"messages_account_recipient", "messages_recipient"} <= names
    assert "messages_recipient_account" not in names
    store = await _store(path)  # migrates
    try:
        page = await store.list_messages("acc1", recipient=MONITOR, limit=10)
        assert sorted(m.id for m in page) == ["msg_0001", "msg_0003", "msg_0005"]
        assert await store.attribute_mo(MONITOR, [], NOW + 10, default=True) == ("acc1", None)
    finally:
        await store.close()
    c = sqlite3.connect(path)
    names = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='index'")}
    c.close()
    assert "messages_recipient_account" in names
    assert not names & {"messages_account_recipient", "messages_recipient"}
