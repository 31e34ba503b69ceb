"""The owner's per-part work kept to what it needs (session 63, README note 23).

The claim's read of the parts names each part's message by its place in the claim's list
(`j.key` of the JSON list, an INTEGER, in place of the text id: the sqlite3 module makes an int
a part, not a str, and `_work` sorts and groups by it). What that must keep: each message
handed out has its own parts, all of them and in seq order, when messages of different part
counts are claimed together and one between them has nothing left to send (rolled up in the
claim, not handed out: the places are the listed ids', not those handed out). A place taken
from the ids handed out gives the later messages another one's parts: the first test fails.

The submit results count a longer message's parts accepted now and take its SMSC (its last
result's) once a message, after their pass, not a part at a time. What that must keep: the
message row's SMSC and `segments_sent` as before, when its parts went through two SMSCs and
when its results come in two batches, and for a message whose part rows disagree on its part
count (a hand edit: one of total 1 beside longer ones), which is counted a part in order as
before (`_odd_air`). Each test here fails with the first part's SMSC taken, or with the hand
edit counted by the new way.
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
    """Message `mid` of `parts` parts, each PDU naming its message (`k`) and part."""
    segments = tuple(
        NewSegment(q, parts, 0x40 if parts > 1 else 0, bytes((k, q)) * 8, bytes((q,)))
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


async def test_each_claimed_message_has_its_own_parts_around_an_idle_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "bridge.db"
    store = SqliteStore(path)
    await store.open()
    try:
        await store.create_account(Account(id="acc", name="acc", created_at=NOW, updated_at=NOW))
        shape = {"msg_a": 1, "msg_b": 3, "msg_c": 2, "msg_d": 3, "msg_e": 1, "msg_f": 2}
        for k, (mid, parts) in enumerate(shape.items()):
            await store.accept(AcceptBatch("acc", (_message(mid, parts, k),), None, None), NOW)
        with closing(sqlite3.connect(path)) as db:  # nothing left to send: rolled up
            db.execute("UPDATE segments SET state='sent' WHERE message_id IN ('msg_b', 'msg_c')")
            db.commit()
        work = await store.claim("i1", 50, NOW + 1_000, LEASE)
    finally:
        await store.close()
    got = {w.id: [(s.seq, s.total, s.short_message, s.tlvs) for s in w.segments] for w in work}
    want = {
        mid: [(q, parts, bytes((k, q)) * 8, bytes((q,))) for q in range(1, parts + 1)]
        for k, (mid, parts) in enumerate(shape.items())
        if mid not in ("msg_b", "msg_c")
    }
    assert got == want
    assert [w.id for w in work] == ["msg_a", "msg_d", "msg_e", "msg_f"]  # claim order


async def _claimed(path: Path, shape: dict[str, int]) -> tuple[SqliteStore, list[str]]:
    store = SqliteStore(path)
    await store.open()
    await store.create_account(Account(id="acc", name="acc", created_at=NOW, updated_at=NOW))
    for k, (mid, parts) in enumerate(shape.items()):
        await store.accept(AcceptBatch("acc", (_message(mid, parts, k),), None, None), NOW)
    return store, list(shape)


def _sent(mid: str, seq: int, smsc: str, at: int) -> SubmitResult:
    sid = f"{smsc}-{mid}-{seq}"
    return SubmitResult(mid, seq, "sent", smsc, sid, sid, at=at, sent_at=at)


def _rows(path: Path) -> dict[str, tuple[object, ...]]:
    with closing(sqlite3.connect(path)) as db:
        return {
            r[0]: tuple(r[1:])
            for r in db.execute("SELECT id, smsc, segments_sent, state, q_state FROM messages")
        }


async def test_a_longer_messages_smsc_and_parts_on_air_are_its_results(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    store, _ids = await _claimed(path, {"m1": 3, "m2": 3, "m3": 1})
    try:
        work = await store.claim("i1", 50, NOW + 1_000, LEASE)
        assert sorted(w.id for w in work) == ["m1", "m2", "m3"]
        at = NOW + 2_000
        # m1's parts through two SMSCs (its last part's is the message's); m2's in two batches.
        await store.record_submits(
            [
                _sent("m1", 1, "smsc1", at),
                _sent("m2", 1, "smsc1", at),
                _sent("m1", 2, "smsc1", at),
                _sent("m3", 1, "smsc2", at),
                _sent("m2", 2, "smsc1", at),
                _sent("m1", 3, "smsc2", at),
                _sent("m1", 3, "smsc1", at),  # a repeated result: counted once, not taken
            ],
            [],
            at,
        )
        first = _rows(path)
        await store.record_submits([_sent("m2", 3, "smsc2", at + 1)], [], at + 1)
        second = _rows(path)
    finally:
        await store.close()
    assert first["m1"] == ("smsc2", 3, "sent", "done")
    assert first["m2"] == ("smsc1", 2, "queued", "claimed")
    assert first["m3"] == ("smsc2", 1, "sent", "done")
    assert second["m2"] == ("smsc2", 3, "sent", "done")


async def test_part_rows_that_disagree_on_the_count_are_counted_as_before(
    tmp_path: Path,
) -> None:
    """Part rows of total 1 beside total 2 (hand edits) in 3-part messages: before session 63
    a part of total 1 started the message's count of parts on air again at 1 and any other
    added 1, in the results' order (m1: 1, 2, 3; m2: 1, 1, 2; m3: 1, 2, 1), and the count is
    what the row takes when the other parts make a whole message of two."""
    path = tmp_path / "bridge.db"
    store, _ids = await _claimed(path, {"m1": 3, "m2": 3, "m3": 3})
    try:
        with closing(sqlite3.connect(path)) as db:
            db.execute("UPDATE segments SET total=2")
            db.execute("UPDATE segments SET total=1 WHERE (message_id, seq) IN "
                       "(VALUES ('m1', 1), ('m2', 2), ('m3', 3))")  # fmt: skip
            db.commit()
        work = await store.claim("i1", 50, NOW + 1_000, LEASE)
        assert sorted(w.id for w in work) == ["m1", "m2", "m3"]
        at = NOW + 2_000
        await store.record_submits(
            [_sent(mid, q, "smsc1", at) for mid in ("m1", "m2", "m3") for q in (1, 2, 3)], [], at
        )
        rows = _rows(path)
    finally:
        await store.close()
    assert {mid: row[:2] for mid, row in rows.items()} == {
        "m1": ("smsc1", 3),
        "m2": ("smsc1", 2),
        "m3": ("smsc1", 1),
    }
