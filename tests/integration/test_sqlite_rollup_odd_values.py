"""SQLite: the roll-up's read of message rows as one JSON array a row (session 57) gives every
value as stored, and a row JSON cannot carry is still rolled up.

`sqlite_pipeline.rollup_messages` reads each message row as `json_array(...)`, decoded by
orjson. SQLite refuses a BLOB in a JSON array and writes an infinite REAL as `Inf`, which orjson
refuses: such a value (a hand edit, another tool's write) made every batch that rolled up its
message fail, with every other message's results or receipts in that batch, at every retry (a
refused receipt is redelivered by the SMSC, into another batch that fails). Before session 57 the
read took the columns as they were. The roll-up now reads such a chunk by its columns.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from bridge.store import rollup_rows
from bridge.store.models import ReceiptIn, SubmitResult
from bridge.store.sqlite import SqliteStore
from tests.rollup_writes import LEASE, NOW, accept

AT = NOW + 2_000


async def _sent(path: Path, mids: list[str]) -> SqliteStore:
    """A store with `mids` (one part each) accepted, claimed and sent (SMSC id x<mid>)."""
    store = SqliteStore(path)
    await store.open()
    await accept(store, mids, {})
    work = await store.claim("i1", 10, NOW + 1_000, LEASE)
    assert sorted(w.id for w in work) == mids
    await store.record_submits(
        [SubmitResult(w.id, 1, "sent", "s1", f"x{w.id}", f"x{w.id}", None, AT, AT) for w in work],
        [],
        AT,
    )
    return store


def _edit(path: Path, sql: str, args: tuple[Any, ...] = ()) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute(sql, args)
        db.commit()


@pytest.mark.parametrize(
    ("column", "value"),
    [("error_code", "X'4142'"), ("price_class", "X'4142'"), ("segments_sent", "1e999")],
)
async def test_a_row_json_cannot_carry_is_rolled_up_with_the_rest_of_its_batch(
    tmp_path: Path, column: str, value: str
) -> None:
    path = tmp_path / "bridge.db"
    store = await _sent(path, ["msg_a", "msg_b"])
    try:
        _edit(path, f"UPDATE messages SET {column}={value} WHERE id='msg_a'")
        done = AT + 5
        out = await store.apply_receipts(
            [
                ReceiptIn("s1", f"x{mid}", "undeliverable", "UNDELIV", "001", done, done)
                for mid in ("msg_a", "msg_b")
            ],
            done,
        )
        # Merged session 57: OperationalError('JSON cannot hold BLOB values') or orjson's
        # JSONDecodeError, the batch rolled back, msg_b's receipt refused with msg_a's.
        assert (out.matched, out.pending, out.reports) == (2, 0, 2)
        with closing(sqlite3.connect(path)) as db:
            rows = db.execute(
                "SELECT id, state, error_code, segments_failed, done_at FROM messages "
                "WHERE id='msg_b' OR (id='msg_a' AND typeof(error_code)='text') ORDER BY id"
            ).fetchall()
            queued = db.execute("SELECT ref_id FROM webhook_outbox ORDER BY ref_id").fetchall()
        assert rows == [
            ("msg_a", "failed", "UNDELIV:001", 1, done),
            ("msg_b", "failed", "UNDELIV:001", 1, done),
        ]
        assert queued == [("msg_a",), ("msg_b",)]
    finally:
        await store.close()


# Text values as an SMSC's receipt or a hand edit may leave them: a NUL, control characters,
# JSON's own escapes, the line and paragraph separators, a byte order mark, astral characters.
ODD = ["a\x00b", "\x01\x1f\x7f", '"\\/', "\u2028\u2029", "\ufeff", "é漢😀", "", " "]


@pytest.mark.parametrize("text", ODD)
async def test_the_roll_up_reads_each_value_as_stored(
    tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every value the roll-up decides by (rollup_rows.roll's `rows`) is the stored column's,
    type and all: odd text, integers past 2^53."""
    path = tmp_path / "bridge.db"
    store = await _sent(path, ["msg_a", "msg_b"])
    seen: list[dict[str, Any]] = []
    roll = rollup_rows.roll

    def spy(ids: Any, rows: Any, *args: Any, **kw: Any) -> Any:
        seen.append({mid: tuple(row) for mid, row in rows.items()})
        return roll(ids, rows, *args, **kw)

    monkeypatch.setattr(rollup_rows, "roll", spy)
    try:
        _edit(
            path,
            "UPDATE messages SET error_code=?, price_class=?, q_claimed_by=?, "
            "segments_failed=? WHERE id='msg_a'",
            (text, text + "x", text or None, 2**62 + 1),
        )
        cols = "rowid, " + rollup_rows.ROLLUP_COLS.split(",", 1)[1]
        with closing(sqlite3.connect(path)) as db:
            want = {
                row[0]: row[1:]
                for row in db.execute(f"SELECT id, {cols} FROM messages ORDER BY id")
            }
        done = AT + 5
        await store.apply_receipts(
            [
                ReceiptIn("s1", f"x{mid}", "delivered", "DELIVRD", None, done, done)
                for mid in ("msg_a", "msg_b")
            ],
            done,
        )
        assert seen == [want]
        assert [type(v) for v in seen[0]["msg_a"]] == [type(v) for v in want["msg_a"]]
    finally:
        await store.close()
