"""SQLite: the owner's hot reads come as one JSON value a statement (session 59), with every
value as stored.

`sqlite_pipeline.packed_rows` reads the rows of the claim's message and part reads, the submit
results' read of the queued parts, the receipts' match and the roll-up's read of the message
rows as `json_group_array(json_array(...))`: one step and one value a statement, where the
sqlite3 module stepped (handing the GIL over) and built a tuple a row and a value a column
(`bench_owner.py --callgrind`: one-part 274.6 -> 260.0 k instructions a message, 3-part
525.0 -> 502.3 k). The claim's read of the parts, whose PDUs are BLOBs, stays by its columns.
A value JSON cannot carry (a BLOB or an infinite REAL written by hand) reads that statement's
rows by their columns.
"""

from __future__ import annotations

import random
import sqlite3
from contextlib import closing
from pathlib import Path

from bridge.store.models import ReceiptIn, SubmitResult
from bridge.store.sqlite import SqliteStore
from tests.integration.test_sqlite_recipient_index import traced  # noqa: F401
from tests.rollup_writes import LEASE, NOW, accept

AT = NOW + 2_000
PACKED = "SELECT json_group_array(json_array("


def _edit(path: Path, sql: str, args: tuple[object, ...] = ()) -> None:
    with closing(sqlite3.connect(path)) as db:
        db.execute(sql, args)
        db.commit()


async def _store(path: Path, mids: list[str], longer: dict[str, int]) -> SqliteStore:
    store = SqliteStore(path)
    await store.open()
    await accept(store, mids, longer)
    return store


async def _through(store: SqliteStore, n: int) -> tuple[list[object], object, object]:
    """Claim, send and receipt every waiting message: (the claim, the results' and the
    receipts' answers)."""
    work = await store.claim("i1", 50, NOW + 1_000, LEASE)
    assert len(work) == n
    parts = [(w.id, g.seq) for w in work for g in w.segments]
    sent = await store.record_submits(
        [
            SubmitResult(m, q, "sent", "s1", f"x{m}-{q}", f"x{m}-{q}", None, AT, AT)
            for m, q in parts
        ],
        [],
        AT,
    )
    done = AT + 5
    got = await store.apply_receipts(
        [ReceiptIn("s1", f"x{m}-{q}", "delivered", "DELIVRD", None, done, done) for m, q in parts],
        done,
    )
    return list(work), sent, got


async def test_the_owner_hot_reads_are_one_json_value_a_statement(
    tmp_path: Path,
    traced: list[str],  # noqa: F811 (the fixture)
) -> None:
    path = tmp_path / "bridge.db"
    mids = [f"msg_{k}" for k in range(6)]
    store = await _store(path, mids, {"msg_5": 3})
    try:
        traced.clear()
        _work, _sent, got = await _through(store, 6)
        assert got.matched == 8
    finally:
        await store.close()
    reads = [s for s in traced if s.startswith("SELECT") and "json_each(" in s]
    # The claim's read of the parts stays by its columns: its PDUs as hex text in the JSON
    # counted 3-part 531.4 k against 525.0 k (the rows' steps it spared, 1.5 k one-part).
    parts = "SELECT j.key, s.seq, s.total, s.esm_class, s.short_message, s.tlvs"
    assert sum(s.startswith(parts) for s in reads) == 1, reads
    reads = [s for s in reads if not s.startswith(parts)]
    # The claim's message read, the queued parts', the match, the two roll-ups' reads.
    assert len(reads) == 5, reads
    # Merged session 59; before, each was a plain SELECT of its columns, a step a row.
    assert all(s.startswith(PACKED) for s in reads), reads


async def test_claimed_values_and_pdus_are_as_stored(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    mids = [f"msg_{k}" for k in range(5)]
    store = await _store(path, mids, {"msg_3": 3})
    rnd = random.Random(59)
    odd = ['a"b\\c', "nul\x00x", "line\u2028sep", "astral \U0001f600", "  spaced  "]
    pdus: dict[tuple[str, int], tuple[bytes, bytes]] = {}
    try:
        with closing(sqlite3.connect(path)) as db:
            for mid, seq in db.execute("SELECT message_id, seq FROM segments").fetchall():
                sm = bytes(rnd.randrange(256) for _ in range(rnd.randrange(0, 141)))
                tlvs = b"\x00\xff" + bytes(rnd.randrange(256) for _ in range(rnd.randrange(9)))
                pdus[mid, seq] = (sm, tlvs)
                db.execute(
                    "UPDATE segments SET short_message=?, tlvs=? WHERE message_id=? AND seq=?",
                    (sm, tlvs, mid, seq),
                )
            for mid, sender in zip(mids, odd, strict=True):
                db.execute("UPDATE messages SET sender=? WHERE id=?", (sender, mid))
            db.commit()
        work = await store.claim("i1", 50, NOW + 1_000, LEASE)
    finally:
        await store.close()
    assert {w.id: w.sender for w in work} == dict(zip(mids, odd, strict=True))
    got = {(w.id, g.seq): (g.short_message, g.tlvs) for w in work for g in w.segments}
    assert got == pdus
    assert all(type(v) is bytes for pair in got.values() for v in pair)
    assert [g.seq for w in work for g in w.segments if w.id == "msg_3"] == [1, 2, 3]


async def test_values_json_cannot_carry_are_read_by_their_columns(tmp_path: Path) -> None:
    """A BLOB sender and an infinite REAL count (the claim's read of the messages), a BLOB
    error code on a queued part (the submit results' read): the statements that meet them are
    read by their columns, as before."""
    path = tmp_path / "bridge.db"
    mids = ["msg_a", "msg_b"]
    store = await _store(path, mids, {})
    try:
        _edit(path, "UPDATE messages SET sender=X'4142' WHERE id='msg_a'")
        _edit(path, "UPDATE segments SET error_code=X'4344' WHERE message_id='msg_b'")
        _edit(path, "UPDATE messages SET q_unanswered=1e999 WHERE id='msg_b'")
        work, _sent, got = await _through(store, 2)
        assert {w.id: w.sender for w in work}["msg_a"] == b"AB"
        assert (got.matched, got.pending) == (2, 0)
        with closing(sqlite3.connect(path)) as db:
            rows = db.execute("SELECT id, state FROM messages ORDER BY id").fetchall()
        assert rows == [("msg_a", "delivered"), ("msg_b", "delivered")]
    finally:
        await store.close()
