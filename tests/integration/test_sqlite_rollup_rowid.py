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

import json
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
    # The results' two (msg_a and msg_c, one part each, take the same values: one statement),
    # the receipts' two (msg_a's and msg_b's values differ).
    assert len(updates) == 4, updates
    c = sqlite3.connect(path)
    try:
        rowids = dict(c.execute("SELECT id, rowid FROM messages").fetchall())
        written: list[int] = []
        for sql in updates:
            m = re.fullmatch(r"(UPDATE messages SET .*) WHERE rowid=(\d+)", sql)
            if m is not None:
                written.append(int(m.group(2)))
            else:
                m = re.fullmatch(
                    r"(UPDATE messages SET .*) WHERE rowid IN "
                    r"\(SELECT value FROM json_each\('(\[[0-9,]+\])'\)\)",
                    sql,
                )
                assert m is not None, sql
                listed = json.loads(m.group(2))
                assert len(listed) > 1, sql  # one row: by its rowid alone
                written += listed
            plan = [r[3] for r in c.execute(f"EXPLAIN QUERY PLAN {sql}")]
            assert plan[0] == "SEARCH messages USING INTEGER PRIMARY KEY (rowid=?)", plan
            # Nothing else but the list itself (json_each's own "INDEX 1" is its argument).
            assert all("messages" not in step for step in plan[1:]), plan
        by_id = {rowid: mid for mid, rowid in rowids.items()}
        assert sorted(by_id[r] for r in written) == ["msg_a", "msg_a", "msg_b", "msg_b", "msg_c"]
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


async def test_rows_given_the_same_values_are_written_by_one_statement(
    tmp_path: Path,
    traced: list[str],  # noqa: F811 (the fixture)
) -> None:
    """A batch's roll-up writes the rows that take the same values (every one-part message
    sent through one SMSC, every one delivered) with one UPDATE listing their rowids, not one
    UPDATE each (session 56: ~14 k instructions a row less in the owner's write lock); a row
    whose values are its own (another SMSC, an error code) is written alone, by its rowid.
    Each row is what its own parts roll up to."""
    mids = [f"msg_{k:02d}" for k in range(40)]
    path = tmp_path / "bridge.db"
    store = await _store(path)
    try:
        await accept(store, mids, {})
        work = await store.claim("i1", 50, NOW + 1, LEASE)
        assert len(work) == 40
        traced.clear()
        # msg_39 through SMSC "b"; the others through "a".
        await store.record_submits(
            [
                SubmitResult(w.id, 1, "sent", "b" if w.id == "msg_39" else "a", f"x-{w.id}",
                             None, at=NOW + 2)
                for w in work
            ],
            [],
            NOW + 2,
            instance="i1",
        )  # fmt: skip
        results = [s for s in traced if s.startswith("UPDATE messages SET")]
        traced.clear()
        # msg_00 to msg_09 undeliverable with code 001, msg_10 with 002, the rest delivered.
        receipts = []
        for k, mid in enumerate(mids[:-1]):
            state, stat, err = ("delivered", "DELIVRD", None)
            if k < 11:
                state, stat, err = ("undeliverable", "UNDELIV", "001" if k < 10 else "002")
            receipts.append(ReceiptIn("a", f"x-{mid}", state, stat, err, NOW + 3, NOW + 3))
        out = await store.apply_receipts(receipts, NOW + 3)
        assert out.matched == 39
        settled = [s for s in traced if s.startswith("UPDATE messages SET")]
    finally:
        await store.close()
    grouped = re.compile(r".* WHERE rowid IN \(SELECT value FROM json_each\('(\[[0-9,]+\])'\)\)")
    alone = re.compile(r".* WHERE rowid=\d+")
    # The results: "a"'s 39 in one statement, "b"'s one alone.
    assert len(results) == 2, results
    assert sorted(len(json.loads(m.group(1))) for s in results if (m := grouped.fullmatch(s))) == [
        39
    ]
    assert sum(1 for s in results if alone.fullmatch(s)) == 1
    # The receipts: the 28 delivered, the 10 with 001, msg_10 alone.
    assert len(settled) == 3, settled
    assert sorted(len(json.loads(m.group(1))) for s in settled if (m := grouped.fullmatch(s))) == [
        10,
        28,
    ]
    assert sum(1 for s in settled if alone.fullmatch(s)) == 1
    rows = _rows(path)
    for k, mid in enumerate(mids):
        state, _sent, delivered, q_state, smsc, done_at = rows[mid]
        assert q_state == "done" and smsc == ("b" if k == 39 else "a")
        if k == 39:
            assert (state, delivered, done_at) == ("sent", 0, None)
        elif k < 11:
            assert (state, delivered, done_at) == ("failed", 0, NOW + 3)
        else:
            assert (state, delivered, done_at) == ("delivered", 1, NOW + 3)
    c = sqlite3.connect(path)
    try:
        errors = dict(c.execute("SELECT id, error_code FROM messages").fetchall())
    finally:
        c.close()
    assert {errors[m] for m in mids[:10]} == {errors["msg_00"]} and errors["msg_00"] is not None
    assert errors["msg_10"] not in (None, errors["msg_00"])
    assert {errors[m] for m in mids[11:]} == {None}
