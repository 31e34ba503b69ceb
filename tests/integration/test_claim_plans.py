"""A claim on SQLite reads the queue in its index's own order: it never sorts the waiting rows.

Session 40 found two claims that did, each holding the store's write lock for the whole
backlog at every claim (measured with 100,000-200,000 waiting: ~27 ms a claim of 100, against
~1.2-1.5 ms now):

- messages due at one time (a campaign scheduled for one moment, the recipients of one request)
  were ordered by (due time, id), which the queue index (q_state, account_id, q_not_before,
  rowid) does not hold: SQLite sorted every row of that due time to take the first hundred;
- the claim's fill from "the oldest work of anyone", once more than one account had work, was
  one query over every account's queue, which SQLite sorted whole.

The tests trace every statement a claim runs on a real SQLite file and check each one's plan;
and check that the fill still takes the oldest work of anyone, as before.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from bridge.store.models import AcceptBatch, Account, NewMessage, NewSegment
from bridge.store.sqlite import SqliteStore

NOW = 1_700_000_000_000
LEASE = 60_000


def _message(mid: str, account: str, at: int) -> NewMessage:
    return NewMessage(
        id=mid,
        account_id=account,
        batch_id="b_" + mid,
        recipient="+8613800138000",
        encoding="gsm7",
        data_coding=0,
        billable_units=1,
        segments=(NewSegment(1, 1, 0, mid.encode(), b""),),
        accepted_at=at,
        text="t",
    )


async def _store(tmp_path: Path, accounts: tuple[str, ...]) -> SqliteStore:
    store = SqliteStore(tmp_path / "bridge.db")
    await store.open()
    for aid in accounts:
        await store.create_account(
            Account(id=aid, name=aid, webhook_secret_enc=b"sealed", created_at=NOW, updated_at=NOW)
        )
    return store


async def _queue(store: SqliteStore, account: str, n: int, at: int, step: int = 0) -> None:
    msgs = tuple(_message(f"{account}-{k:04d}", account, at + k * step) for k in range(n))
    await store.accept(AcceptBatch(account, msgs, None, None), NOW)


async def _claim_plans(store: SqliteStore, limit: int) -> tuple[list[str], list[str]]:
    """Claim `limit` as the dispatcher does, tracing its statements: (ids claimed, the plan of
    every statement that read the messages table)."""
    statements: list[str] = []
    runner = store._runner
    conn: sqlite3.Connection = runner._conn  # type: ignore[attr-defined]
    conn.set_trace_callback(statements.append)
    try:
        work = await store.claim("inst", limit, NOW + 3_600_000, LEASE)
    finally:
        conn.set_trace_callback(None)
    plans = []
    for sql in statements:
        if "FROM messages" in sql and sql.lstrip().upper().startswith("SELECT"):
            plans.append(" / ".join(r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql)))
    return [w.id for w in work], plans


async def test_a_claim_of_messages_due_at_one_time_sorts_none(tmp_path: Path) -> None:
    store = await _store(tmp_path, ("acc_a",))
    try:
        await _queue(store, "acc_a", 300, NOW)  # one request's recipients: one due time
        ids, plans = await _claim_plans(store, 20)
        assert ids == [f"acc_a-{k:04d}" for k in range(20)]  # in the order accepted
        assert plans
        assert not [p for p in plans if "TEMP B-TREE" in p], plans
    finally:
        await store.close()


async def test_the_fill_from_several_accounts_sorts_none_and_takes_the_oldest(
    tmp_path: Path,
) -> None:
    """Three accounts with work: 20 // 3 each (round robin), then the 2 left from the oldest
    work of anyone, which is acc_b's (its due times are the earliest after those taken)."""
    store = await _store(tmp_path, ("acc_a", "acc_b", "acc_c"))
    try:
        await _queue(store, "acc_a", 100, NOW + 1_000, step=10)
        await _queue(store, "acc_b", 100, NOW, step=1)
        await _queue(store, "acc_c", 100, NOW + 2_000, step=10)
        ids, plans = await _claim_plans(store, 20)
        assert len(ids) == len(set(ids)) == 20
        assert sorted(i for i in ids if i.startswith("acc_a")) == [
            f"acc_a-{k:04d}" for k in range(6)
        ]
        assert sorted(i for i in ids if i.startswith("acc_c")) == [
            f"acc_c-{k:04d}" for k in range(6)
        ]
        assert sorted(i for i in ids if i.startswith("acc_b")) == [
            f"acc_b-{k:04d}" for k in range(8)
        ]
        assert not [p for p in plans if "TEMP B-TREE" in p or "SCAN messages" in p], plans
    finally:
        await store.close()


async def test_the_fill_merges_due_times_across_accounts(tmp_path: Path) -> None:
    """The fill's rows are the oldest of all, interleaved across accounts by due time: with
    two accounts whose due times alternate, the claim takes each one's oldest, nobody's later
    rows first."""
    store = await _store(tmp_path, ("acc_a", "acc_b", "acc_c"))
    try:
        await _queue(store, "acc_a", 50, NOW, step=2)  # NOW, +2, +4 ...
        await _queue(store, "acc_b", 50, NOW + 1, step=2)  # +1, +3, +5 ...
        await _queue(store, "acc_c", 1, NOW)  # one message: its account is done at once
        ids, _plans = await _claim_plans(store, 21)
        # c gives its one; a and b 21 // 3 = 7 each; the 6 left, oldest of anyone: 3 and 3.
        assert "acc_c-0000" in ids
        assert sorted(i for i in ids if i.startswith("acc_a")) == [
            f"acc_a-{k:04d}" for k in range(10)
        ]
        assert sorted(i for i in ids if i.startswith("acc_b")) == [
            f"acc_b-{k:04d}" for k in range(10)
        ]
    finally:
        await store.close()


async def test_the_claim_writes_and_reads_its_rows_by_the_rowids_its_scan_read(
    tmp_path: Path,
) -> None:
    """The claim's UPDATE and its read of the claimed rows find each row by the rowid the
    scan read with its id, not by a seek of the id's index (session 56); the rows claimed are
    exactly the ids handed out, from every account the claim took from."""
    store = await _store(tmp_path, ("acc_a", "acc_b"))
    try:
        await _queue(store, "acc_a", 30, NOW, step=2)
        await _queue(store, "acc_b", 5, NOW + 1, step=2)
        statements: list[str] = []
        conn: sqlite3.Connection = store._runner._conn  # type: ignore[attr-defined]
        conn.set_trace_callback(statements.append)
        try:
            work = await store.claim("inst", 20, NOW + 3_600_000, LEASE)
        finally:
            conn.set_trace_callback(None)
        claimed = [s for s in statements if s.startswith("UPDATE messages SET q_state='claimed'")]
        assert len(claimed) == 1, statements
        # Packed (pipe.packed_rows, session 59): one JSON value of the same columns.
        read = [
            s
            for s in statements
            if s.startswith("SELECT json_group_array(json_array(m.id, m.account_id, m.recipient")
        ]
        assert len(read) == 1, statements
        for sql in claimed + read:
            plan = [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql)]
            assert any("USING INTEGER PRIMARY KEY (rowid=?)" in p for p in plan), plan
            assert not any("INDEX sqlite_autoindex_messages" in p for p in plan), plan
        ids = [w.id for w in work]
        assert len(ids) == 20 and {i[:5] for i in ids} == {"acc_a", "acc_b"}
        rows = dict(
            conn.execute("SELECT id, q_state || ':' || IFNULL(q_claimed_by, '') FROM messages")
        )
        assert {m for m, v in rows.items() if v == "claimed:inst"} == set(ids)
        assert {v for m, v in rows.items() if m not in ids} == {"queued:"}
        assert [w.recipient for w in work] == ["+8613800138000"] * 20
        assert all(w.segments[0].short_message == w.id.encode() for w in work)
    finally:
        await store.close()
