"""The submit results' part rows of a longer message written by one UPDATE (session 64, README
note 23).

A longer message whose parts are all answered in one batch, all of them still queued, through
one SMSC at one time, each with its SMSC id as its raw id, has its part rows written by one
UPDATE listing the messages (`sqlite_pipeline._SUBMITTED_SET_*`), each part's SMSC id (and its
message's time, when the listed messages' differ) read from the connection's SQL functions by
`message_id || '/' || seq`. Any other part row is written per row, as before. What that must
keep: every part row's columns as the per-row UPDATE wrote them (SMSC, both ids, submitted at,
attempts, state), whichever path each message takes in a batch that mixes them, and no row the
results do not name: a part row still queued beside them (a hand edit: a row past the
message's part count) stays queued, and a message with a row of total 1 beside longer ones (a
hand edit, `_odd_air`) is written per row. Each test fails with a planted defect: the ids keyed
by seq - 1, the times of the first message taken for all, the leftover check dropped, the hand
edit's message sent to the set (the function finds no value for its total-1 row), or the set
not used at all (the statement trace).
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from bridge.store.models import AcceptBatch, Account, NewMessage, NewSegment, SubmitResult
from bridge.store.sqlite import SqliteStore

NOW = 1_700_000_000_000
LEASE = 60_000


def _message(mid: str, parts: int, k: int) -> NewMessage:
    segments = tuple(
        NewSegment(q, parts, 0x40 if parts > 1 else 0, bytes((k, q)) * 8, b"")
        for q in range(1, parts + 1)
    )
    return NewMessage(
        id=mid,
        account_id="acc",
        batch_id="b_" + mid,
        recipient=f"+8613900000{k:03d}",
        encoding="ucs2",
        data_coding=8,
        billable_units=parts,
        segments=segments,
        accepted_at=NOW,
        text="x",
    )


async def _store(path: Path, shape: dict[str, int]) -> SqliteStore:
    store = SqliteStore(path)
    await store.open()
    await store.create_account(Account(id="acc", name="acc", created_at=NOW, updated_at=NOW))
    for k, (mid, parts) in enumerate(shape.items()):
        await store.accept(AcceptBatch("acc", (_message(mid, parts, k),), None, None), NOW)
    return store


def _sent(mid: str, seq: int, smsc: str, at: int, raw: str | None = None) -> SubmitResult:
    sid = f"{smsc}-{mid}-{seq}"
    return SubmitResult(mid, seq, "sent", smsc, sid, sid if raw is None else raw, at=at)


def _parts(path: Path) -> dict[tuple[str, int], tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return {
            (r[0], r[1]): tuple(r[2:])
            for r in db.execute(
                "SELECT message_id, seq, state, smsc, smsc_msg_id, smsc_msg_id_raw, "
                "submitted_at, attempts FROM segments"
            )
        }


def _want(r: SubmitResult) -> tuple[object, ...]:
    return ("sent", r.smsc, r.smsc_msg_id, r.smsc_msg_id_raw, r.at, 1)


async def test_each_part_row_as_its_result_whichever_path(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    shape = {"m1": 3, "m2": 3, "m3": 2, "m4": 3, "m5": 1, "m6": 6, "m7": 3, "m8": 2}
    store = await _store(path, shape)
    at, later = NOW + 2_000, NOW + 2_007
    results = [
        *(_sent("m1", q, "smsc1", at) for q in (1, 2, 3)),  # the set, one time
        *(_sent("m2", q, "smsc1", later) for q in (1, 2, 3)),  # the set, another time
        _sent("m3", 1, "smsc1", at),  # per row: its parts at two times
        _sent("m3", 2, "smsc1", later),
        _sent("m4", 1, "smsc2", at),  # per row: its parts through two SMSCs
        _sent("m4", 2, "smsc1", at),
        _sent("m4", 3, "smsc1", at),
        _sent("m5", 1, "smsc1", at),  # one part: per row
        *(_sent("m6", q, "smsc2", at) for q in (4, 2, 6, 1, 3, 5)),  # the set of smsc2
        _sent("m7", 1, "smsc1", at),  # per row: a raw id of its own
        _sent("m7", 2, "smsc1", at, raw="RAW-2"),
        _sent("m7", 3, "smsc1", at),
        _sent("m8", 2, "smsc1", at),  # part 1 answered in a later batch: per row, both
    ]
    try:
        work = await store.claim("i1", 50, NOW + 1_000, LEASE)
        assert sorted(w.id for w in work) == sorted(shape)
        before = _parts(path)
        await store.record_submits(results, [], NOW + 3_000)
        first = _parts(path)
        m8 = _sent("m8", 1, "smsc1", later)
        await store.record_submits([m8], [], NOW + 3_000)
        got = _parts(path)
    finally:
        await store.close()
    want = dict(before)
    for r in results:
        want[r.message_id, r.seq] = _want(r)
    assert first == want
    want["m8", 1] = _want(m8)
    assert got == want


async def test_a_queued_row_no_result_names_stays_queued(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    store = await _store(path, {"m1": 3, "m2": 3})
    try:
        work = await store.claim("i1", 50, NOW + 1_000, LEASE)
        assert len(work) == 2
        with closing(sqlite3.connect(path)) as db:  # a row past m1's part count (a hand edit)
            db.execute(
                "INSERT INTO segments (message_id, seq, total, esm_class, short_message, tlvs) "
                "VALUES ('m1', 4, 3, 64, x'00', x'')"
            )
            db.commit()
        at = NOW + 2_000
        results = [_sent(m, q, "smsc1", at) for m in ("m1", "m2") for q in (1, 2, 3)]
        await store.record_submits(results, [], NOW + 3_000)
        got = _parts(path)
    finally:
        await store.close()
    assert got["m1", 4] == ("queued", None, None, None, None, 0)
    for r in results:
        assert got[r.message_id, r.seq] == _want(r)


async def test_a_message_with_a_row_of_total_one_beside_longer_ones(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    store = await _store(path, {"m1": 3, "m2": 3})
    try:
        work = await store.claim("i1", 50, NOW + 1_000, LEASE)
        assert len(work) == 2
        with closing(sqlite3.connect(path)) as db:  # a hand edit: _odd_air's case
            db.execute("UPDATE segments SET total=1 WHERE message_id='m1' AND seq=1")
            db.commit()
        at = NOW + 2_000
        results = [_sent(m, q, "smsc1", at) for m in ("m1", "m2") for q in (1, 2, 3)]
        await store.record_submits(results, [], NOW + 3_000)
        got = _parts(path)
    finally:
        await store.close()
    for r in results:
        assert got[r.message_id, r.seq] == _want(r)


async def test_a_batch_of_longer_messages_is_one_statement(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    shape = {f"m{k}": 3 for k in range(10)}
    store = await _store(path, shape)
    traced: list[str] = []
    try:
        work = await store.claim("i1", 50, NOW + 1_000, LEASE)
        assert len(work) == 10
        # The store's owner connection: its statements as they run.
        conn = store._runner._conn
        assert conn is not None
        conn.set_trace_callback(traced.append)
        at = NOW + 2_000
        results = [_sent(m, q, "smsc1", at + k) for k, m in enumerate(shape) for q in (1, 2, 3)]
        await store.record_submits(results, [], NOW + 3_000)
        conn.set_trace_callback(None)
        got = _parts(path)
    finally:
        await store.close()
    parts = [t for t in traced if t.startswith("UPDATE segments")]
    assert len(parts) == 1, parts  # one UPDATE for the 30 part rows, not one a row
    for r in results:
        assert got[r.message_id, r.seq] == _want(r)
