"""The SQLite roll-up writes each message row by its rowid (session 55).

The roll-up's read of the message rows gives each row's rowid in place of its id (in the list's
order, a LEFT JOIN: a message not found is a row of NULLs), and its UPDATE finds the row by that
rowid instead of seeking the id's index again, twice a message in the owner's write lock. These
tests run the owner's writes on a real SQLite file, trace the statements, and check that every
roll-up UPDATE names a rowid and SQLite's plan for it seeks no index, that each row is the one
its message's parts roll up to, and that a roll-up listing a message that is not there (erased
meanwhile) writes the others' rows, each its own.
"""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

from bridge.store import sqlite_pipeline
from bridge.store.models import ReceiptIn, SubmitResult
from tests.integration.test_sqlite_recipient_index import _store, traced  # noqa: F401
from tests.rollup_writes import LEASE, NOW, accept

MIDS = ["msg_a", "msg_b", "msg_c"]


def _rows(path: Path) -> dict[str, tuple[object, ...]]:
    c = sqlite3.connect(path)
    try:
        return {
            r[0]: r[1:]
            for r in c.execute(
                "SELECT id, state, segments_sent, segments_delivered, q_state, smsc, done_at "
                "FROM messages ORDER BY id"
            )
        }
    finally:
        c.close()


async def test_the_roll_up_writes_each_row_by_its_rowid(
    tmp_path: Path,
    traced: list[str],  # noqa: F811 (the fixture)
) -> None:
    path = tmp_path / "bridge.db"
    store = await _store(path)
    try:
        await accept(store, MIDS, {"msg_b": 2})
        work = await store.claim("i1", 10, NOW + 1, LEASE)
        assert sorted(w.id for w in work) == MIDS
        traced.clear()
        await store.record_submits(
            [
                SubmitResult(w.id, g.seq, "sent", "a", f"x-{w.id}-{g.seq}", None, at=NOW + 2)
                for w in work
                for g in w.segments
            ],
            [],
            NOW + 2,
        )
        await store.apply_receipts(
            [
                ReceiptIn("a", f"x-{mid}-{q}", "delivered", "DELIVRD", None, NOW + 3, NOW + 3)
                for mid, n in (("msg_a", 1), ("msg_b", 2))
                for q in range(1, n + 1)
            ],
            NOW + 3,
        )
    finally:
        await store.close()
    updates = [s for s in traced if s.startswith("UPDATE messages SET")]
    assert len(updates) == 5, updates  # the results' three, the receipts' two
    c = sqlite3.connect(path)
    try:
        rowids = dict(c.execute("SELECT id, rowid FROM messages").fetchall())
        for sql in updates:
            m = re.fullmatch(r"(UPDATE messages SET .*) WHERE rowid=(\d+)", sql)
            assert m is not None, sql
            assert int(m.group(2)) in rowids.values()
            plan = " ".join(r[3] for r in c.execute(f"EXPLAIN QUERY PLAN {sql}"))
            assert "INTEGER PRIMARY KEY" in plan and "INDEX" not in plan, plan
    finally:
        c.close()
    assert _rows(path) == {
        "msg_a": ("delivered", 1, 1, "done", "a", NOW + 3),
        "msg_b": ("delivered", 2, 2, "done", "a", NOW + 3),
        "msg_c": ("sent", 1, 0, "done", "a", None),
    }


async def test_a_message_not_there_leaves_the_others_rows_their_own(tmp_path: Path) -> None:
    """A roll-up listing an id with no message row between two that have one (the list's
    order is the read's): each of those gets its own parts' outcome, the missing one nothing."""
    path = tmp_path / "bridge.db"
    store = await _store(path)
    try:
        await accept(store, MIDS, {})
        await store.claim("i1", 10, NOW + 1, LEASE)
    finally:
        await store.close()
    c = sqlite3.connect(path, isolation_level=None)
    try:
        c.execute("UPDATE segments SET state='delivered' WHERE message_id='msg_a'")
        c.execute(
            "UPDATE segments SET state='undeliverable', error_code='X' WHERE message_id='msg_c'"
        )
        c.execute("BEGIN")
        sqlite_pipeline.rollup_messages(
            c, {"msg_a": True, "msg_gone": True, "msg_c": True}, NOW + 5
        )
        c.execute("COMMIT")
    finally:
        c.close()
    rows = _rows(path)
    assert sorted(rows) == MIDS
    assert rows["msg_a"][0] == "delivered" and rows["msg_a"][3] == "done"
    assert rows["msg_c"][0] == "failed" and rows["msg_c"][3] == "done"
    assert rows["msg_b"][0] == "queued" and rows["msg_b"][3] == "claimed"
