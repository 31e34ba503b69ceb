"""SQLite: the owner's submit results and receipts bind no None (session 54).

Each None bound goes through the sqlite3 module's adaptation protocol (~1,200 instructions a
value) inside the write lock. A one-part message's roll-ups bound two each (the error code and
the sent_at or done_at it does not set), its receipt's part update two more (no error code, its
own receipt): six a message. The roll-up's UPDATE and the receipts' part UPDATE now write those
as NULL in their text (`sqlite_pipeline._rollup_sql`, `_settle`). These tests count the
adaptations of real submit results and receipts, and hold what they store: the rows' NULLs, the
first sent time kept, error codes where a receipt has one, the order of a batch's updates.
"""

from __future__ import annotations

import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

from bridge.store.models import ReceiptIn, SubmitResult
from bridge.store.sqlite import SqliteStore
from tests.integration.test_sqlite_accept_binds import adaptations
from tests.integration.test_sqlite_owner_statements import LEASE, NOW, _store


def _rows(store: SqliteStore, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(store.path)) as db:
        return db.execute(sql).fetchall()


def _sent(mid: str, at: int) -> SubmitResult:
    return SubmitResult(mid, 1, "sent", "smsc1", f"x{mid}", f"x{mid}", at=at, sent_at=at)


def _receipt(mid: str, state: str, stat: str, err: str | None, at: int) -> ReceiptIn:
    return ReceiptIn("smsc1", f"x{mid}", state, stat, err, at, at)


_MESSAGE = (
    "SELECT id, state, segments_sent, segments_delivered, segments_failed, error_code, "
    "sent_at, done_at, q_state FROM messages ORDER BY id"
)
_PARTS = (
    "SELECT message_id, state, error_code, typeof(error_code), receipt_inferred_from, "
    "typeof(receipt_inferred_from), done_at FROM segments ORDER BY message_id"
)


async def test_results_and_receipts_adapt_no_value(tmp_path: Path) -> None:
    store = await _store(tmp_path / "bridge.db", 4)
    try:
        work = await store.claim("i1", 4, NOW + 1_000, LEASE)
        assert len(work) == 4
        sent, done = NOW + 2_000, NOW + 3_000
        with adaptations() as counts:
            await store.record_submits([_sent(w.id, sent) for w in work], [], sent)
            submits = +counts
            out = await store.apply_receipts(
                [_receipt(w.id, "delivered", "DELIVRD", None, done) for w in work], done
            )
        assert (out.matched, out.pending) == (4, 0)
        # Before: 2 a message's submit roll-up, 4 its receipt's (2 in the part's update).
        assert submits == Counter(), submits
        assert counts == Counter(), counts
        ids = sorted(w.id for w in work)
        assert _rows(store, _MESSAGE) == [
            (mid, "delivered", 1, 1, 0, None, sent, done, "done") for mid in ids
        ]
        assert _rows(store, _PARTS) == [
            (mid, "delivered", None, "null", None, "null", done) for mid in ids
        ]
    finally:
        await store.close()


async def test_a_mixed_batch_stores_each_receipts_outcome(tmp_path: Path) -> None:
    """Receipts with and without an error code alternate in one batch (each run of one shape
    is one executemany): every part takes its own receipt's state and code, and a second
    receipt for a part settled earlier in the batch changes nothing (the first stands)."""
    store = await _store(tmp_path / "bridge.db", 6)
    try:
        work = await store.claim("i1", 6, NOW + 1_000, LEASE)
        ids = sorted(w.id for w in work)
        sent, done = NOW + 2_000, NOW + 3_000
        await store.record_submits([_sent(mid, sent) for mid in ids], [], sent)
        assert _rows(store, _MESSAGE) == [
            (mid, "sent", 1, 0, 0, None, sent, None, "done") for mid in ids
        ]
        receipts = [
            _receipt(mid, "delivered", "DELIVRD", None, done)
            if k % 2 == 0
            else _receipt(mid, "undeliverable", "UNDELIV", "001", done)
            for k, mid in enumerate(ids)
        ]
        receipts.append(_receipt(ids[0], "undeliverable", "UNDELIV", "002", done + 5))
        receipts.append(_receipt(ids[1], "delivered", "DELIVRD", None, done + 5))
        out = await store.apply_receipts(receipts, done)
        assert (out.matched, out.pending) == (8, 0)
        parts = {r[0]: r[1:] for r in _rows(store, _PARTS)}
        messages = {r[0]: r[1:] for r in _rows(store, _MESSAGE)}
        for k, mid in enumerate(ids):
            if k % 2 == 0:
                assert parts[mid] == ("delivered", None, "null", None, "null", done), mid
                assert messages[mid] == ("delivered", 1, 1, 0, None, sent, done, "done"), mid
            else:
                code = parts[mid][1]
                assert code is not None and parts[mid][0] == "undeliverable", (mid, parts[mid])
                assert parts[mid][2:] == ("text", None, "null", done), (mid, parts[mid])
                assert messages[mid] == ("failed", 1, 0, 1, code, sent, done, "done"), mid
    finally:
        await store.close()
