"""SQLite's queue index holds only the waiting and claimed messages (migration 36, README
Architecture note 22).

Every message ends 'done', and its entry used to stay in `messages_queue`, moved by the
roll-up's UPDATE into a 'done' range no read uses: an index insert per message in the owner's
write lock, and an index as big as the history. The tests drive real messages through the
store (accept, claim, submit result, receipt) on a real SQLite file and count the index's
entries from its pages (`dbstat`), check that every read of the queue the store runs still
seeks the index, and that a store made before the migration loses its finished messages' entries
and claims as before."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from types import SimpleNamespace

from bridge.store.account_rows import WAITING_SENDERS_SQL
from bridge.store.models import AcceptBatch, Account, ReceiptIn, SubmitResult
from bridge.store.sqlite import SqliteStore
from tests.integration.test_sqlite_recipient_index import _store, traced  # noqa: F401
from tests.messages import one_part

NOW = 1_700_000_000_000
LEASE = 60_000


def _queue_entries(path: Path) -> int:
    """The entries of messages_queue, counted from its leaf pages (not through a query the
    planner could answer from the table)."""
    c = sqlite3.connect(path)
    try:
        (n,) = c.execute(
            "SELECT COALESCE(SUM(ncell), 0) FROM dbstat "
            "WHERE name='messages_queue' AND pagetype='leaf'"
        ).fetchone()
        return int(n)
    finally:
        c.close()


async def _accept(store: SqliteStore, n: int, start: int = 0) -> None:
    for k in range(start, start + n):
        msg = one_part(f"msg_{k:05d}", "acc", f"+4479{k:08d}", NOW + k, sender="1069")
        await store.accept(AcceptBatch("acc", (msg,), None, None), NOW + k)


async def _deliver(store: SqliteStore, claimed: int, now: int) -> list[str]:
    """Claim `claimed` messages, record their parts sent and their receipts delivered."""
    work = await store.claim("i1", claimed, now, LEASE)
    assert len(work) == claimed
    results = [
        SubmitResult(w.id, 1, "sent", "smsc1", f"x{w.id}", f"x{w.id}", at=now, sent_at=now)
        for w in work
    ]
    await store.record_submits(results, [], now)
    receipts = [
        ReceiptIn("smsc1", f"x{w.id}", "delivered", "DELIVRD", None, now, now + 1) for w in work
    ]
    out = await store.apply_receipts(receipts, now + 1)
    assert out.matched == claimed and out.pending == 0
    return [w.id for w in work]


async def test_a_finished_message_leaves_the_queue_index(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    store = await _store(path)
    try:
        await store.create_account(Account(id="acc", name="acc", created_at=NOW, updated_at=NOW))
        await _accept(store, 30)
        assert _queue_entries(path) == 30
        done = await _deliver(store, 20, NOW + 1_000)
        c = sqlite3.connect(path)
        states = dict(c.execute("SELECT q_state, COUNT(*) FROM messages GROUP BY q_state"))
        c.close()
        assert states == {"done": 20, "queued": 10}
        # Only the 10 still waiting; before migration 36 the 20 delivered stayed (30 entries).
        assert _queue_entries(path) == 10
        # Claimed ones are in it: the lease renewal and the restart's requeue find them by it.
        work = await store.claim("i1", 4, NOW + 2_000, LEASE)
        assert len(work) == 4 and not {w.id for w in work} & set(done)
        assert _queue_entries(path) == 10
        assert await store.queue_depth() == 10
    finally:
        await store.close()


async def test_the_reads_of_the_queue_still_seek_the_index(
    tmp_path: Path,
    traced: list[str],  # noqa: F811 (the fixture)
) -> None:
    """The reads that name both states said `q_state IN (...)`, which SQLite cannot prove
    inside the partial index's condition (it scanned the table); as an OR of the two it can."""
    path = tmp_path / "bridge.db"
    store = await _store(path)
    try:
        await store.create_account(Account(id="acc", name="acc", created_at=NOW, updated_at=NOW))
        await _accept(store, 40)
        await _deliver(store, 30, NOW + 1_000)
        traced.clear()
        assert len(await store.claim("i1", 5, NOW + 2_000, LEASE)) == 5
        assert await store.queue_depth() == 10
        assert await store.queue_depth(NOW + 5_000) == 10
        groups = await store.queue_groups(NOW + 2_000, [])
        assert sum(g.messages for g in groups) == 10
    finally:
        await store.close()
    reads = [
        s
        for s in traced
        if s.lstrip().upper().startswith("SELECT")
        and "FROM messages" in s
        and ("q_state='queued'" in s or "q_state='claimed'" in s)
    ]
    c = sqlite3.connect(path)
    try:
        reads.append(WAITING_SENDERS_SQL)
        assert len(reads) >= 4, reads
        for sql in reads:
            plan = " / ".join(r[3] for r in c.execute("EXPLAIN QUERY PLAN " + sql))
            assert "messages_queue" in plan, (sql, plan)
            assert "SCAN messages" not in plan, (sql, plan)
    finally:
        c.close()


async def test_a_store_made_before_the_migration_keeps_only_the_waiting(tmp_path: Path) -> None:
    from tests.store_engines import schema_before

    path = tmp_path / "bridge.db"
    store = await _store(path)
    await store.create_account(Account(id="acc", name="acc", created_at=NOW, updated_at=NOW))
    await store.close()
    engine = SimpleNamespace(name="sqlite", location=str(path))
    await schema_before(engine, 36, 10_000)  # type: ignore[arg-type]
    # Rows as the old schema held them: 25 finished, 5 waiting.
    c = sqlite3.connect(path)
    with c:
        c.executemany(
            "INSERT INTO messages (id, account_id, batch_id, recipient, encoding, data_coding, "
            "segments, billable_units, accepted_at, q_not_before, state, q_state) "
            "VALUES (?,'acc','b',?,'gsm7',0,1,1,?,?,?,?)",
            [
                (
                    f"msg_{k:05d}",
                    f"+4479{k:08d}",
                    NOW + k,
                    NOW + k,
                    "delivered" if k < 25 else "queued",
                    "done" if k < 25 else "queued",
                )
                for k in range(30)
            ],
        )
        c.executemany(
            "INSERT INTO segments (message_id, seq, total, esm_class, short_message, tlvs) "
            "VALUES (?,1,1,0,x'41',x'')",
            [(f"msg_{k:05d}",) for k in range(30)],
        )
    c.close()
    assert _queue_entries(path) == 30
    store = await _store(path)  # migrates
    try:
        assert _queue_entries(path) == 5
        assert await store.queue_depth() == 5
        work = await store.claim("i1", 10, NOW + 1_000, LEASE)
        assert sorted(w.id for w in work) == [f"msg_{k:05d}" for k in range(25, 30)]
    finally:
        await store.close()
