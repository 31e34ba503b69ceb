"""The owner's per-part work kept to what it needs (session 60, README note 23).

A part whose SMSC id is its raw id binds it once (`sqlite_pipeline._SUBMITTED_SAME_RAW`); the
claim's parts take their PDUs as the sqlite3 module read them (bytes), not through `bytes()`;
a positive receipt does not call `receipt_error_code` to learn it has no error code. Each is
held against what it replaced: the rows written, the values built and the codes given are the
same, and each test fails on the tree before (the statement text, the calls counted).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.domain import lifecycle as lc
from bridge.store import sqlite as sqlite_store
from bridge.store import sqlite_pipeline as pipe
from bridge.store.models import AcceptBatch, Account, ReceiptIn, SubmitResult
from bridge.store.sqlite import SqliteStore
from tests.messages import one_part

NOW = 1_700_000_000_000


class _Recording(sqlite3.Connection):
    texts: list[str]

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        self.texts.append(sql)
        return super().execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        self.texts.append(sql)
        return super().executemany(sql, *args)


@pytest.fixture
def texts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The SQL text of every statement the store's connections run."""
    seen: list[str] = []
    real = sqlite3.connect

    def connect(*args: Any, **kw: Any) -> sqlite3.Connection:
        conn = real(*args, factory=_Recording, **kw)
        conn.texts = seen
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    yield seen


async def test_a_part_whose_smsc_id_is_its_raw_id_binds_it_once(
    tmp_path: Path, texts: list[str]
) -> None:
    """Results with the raw id equal to the SMSC id, different (case, padding), and None for
    both, in one batch: each part's row as the one UPDATE wrote it, the equal ones by the
    statement that binds the id once (absent before: fails on the tree before)."""
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    try:
        await store.create_account(Account(id="acc", name="acc", created_at=NOW, updated_at=NOW))
        ids = [f"msg_{k:02d}" for k in range(6)]
        for k, mid in enumerate(ids):
            msg = one_part(mid, "acc", f"+4479{k:08d}", NOW, sender="1069")
            await store.accept(AcceptBatch("acc", (msg,), None, None), NOW)
        work = await store.claim("i1", 10, NOW + 1_000, 60_000)
        assert sorted(w.id for w in work) == ids
        given = {
            ids[0]: ("abc1", "abc1"),
            ids[1]: ("abc2", "ABC2"),
            ids[2]: ("3", "0003"),
            ids[3]: ("x'4\"\\", "x'4\"\\"),
            ids[4]: ("\u4f60\u597d", "\u4f60\u597d"),
            ids[5]: ("6", " 6"),
        }
        texts.clear()
        await store.record_submits(
            [
                SubmitResult(mid, 1, "sent", "smsc1", sid, raw, at=NOW + 5 + k, sent_at=NOW + 5)
                for k, (mid, (sid, raw)) in enumerate(given.items())
            ],
            [],
            NOW + 10,
        )
        assert texts.count(pipe._SUBMITTED_SAME_RAW) == 1
        assert texts.count(pipe._SUBMITTED) == 1
        c = sqlite3.connect(tmp_path / "s.db")
        try:
            rows = {
                r[0]: r[1:]
                for r in c.execute(
                    "SELECT message_id, state, smsc, smsc_msg_id, smsc_msg_id_raw, "
                    "typeof(smsc_msg_id_raw), submitted_at, attempts FROM segments"
                )
            }
        finally:
            c.close()
        for k, (mid, (sid, raw)) in enumerate(given.items()):
            assert rows[mid] == ("sent", "smsc1", sid, raw, "text", NOW + 5 + k, 1), mid
    finally:
        await store.close()


def test_the_claims_parts_take_their_pdus_as_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """bytes as the sqlite3 module reads a BLOB go into the part as they are (no bytes() call:
    two a part before); any other value (a hand edit) goes through bytes() as before: a
    bytearray is copied, a text raises TypeError."""
    calls: list[object] = []
    real = bytes

    def counting(value: Any) -> bytes:
        calls.append(value)
        return real(value)

    monkeypatch.setattr(sqlite_store, "bytes", counting, raising=False)
    msgs = {"m1": ("m1", "acc", "+1", None, 8, None, 0, None, 0, None)}
    sm, tlvs = b"\x05\x00\x03\x01\x02\x01" + b"\x4f\x60" * 64, b""
    # A part's message by its place in the claim's list (session 63).
    rows: list[tuple[Any, ...]] = [(0, 2, 2, 0x40, sm, tlvs, 0), (0, 1, 2, 0x40, sm, tlvs, 1)]
    (work,) = sqlite_store._work(["m1"], ["m1"], msgs, rows)
    assert calls == []
    assert [(s.seq, s.attempts) for s in work.segments] == [(1, 1), (2, 0)]
    assert all(s.short_message is sm and s.tlvs is tlvs for s in work.segments)
    odd = [(0, 1, 1, 0, bytearray(b"ab"), b"", 0)]
    (work,) = sqlite_store._work(["m1"], ["m1"], msgs, odd)
    assert calls == [bytearray(b"ab")]
    assert work.segments[0].short_message == b"ab"
    assert type(work.segments[0].short_message) is bytes
    with pytest.raises(TypeError):
        sqlite_store._work(["m1"], ["m1"], msgs, [(0, 1, 1, 0, "text", b"", 0)])


def test_a_positive_receipt_does_not_ask_for_its_error_code(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`receipt_error_code` is asked only for the states that have one (one call a receipt
    before: fails there); every receipt's update is what it was."""
    real = lc.receipt_error_code
    asked: list[str] = []

    def counting(state: str, stat: str | None, err: str | None) -> str | None:
        asked.append(state)
        return real(state, stat, err)

    states = ["delivered", "undeliverable", "expired", "rejected", "unknown", "deleted", "accepted"]
    receipts = [
        ReceiptIn("s", f"id{k}", state, stat, err, NOW, NOW + k)
        for k, (state, stat, err) in enumerate(
            (state, stat, err)
            for state in states
            for stat, err in ((None, None), ("DELIVRD", "000"), ("undeliv", "0a1"))
        )
    ]

    def parts() -> dict[tuple[str, str], list[tuple[str, int, str]]]:
        return {("s", r.smsc_msg_id): [(f"m{r.smsc_msg_id}", 1, "sent")] for r in receipts}

    monkeypatch.setattr(lc, "receipt_error_code", counting)
    updates, unmatched = lc.settle_receipts(receipts, parts())
    assert unmatched == []
    assert asked == [r.state for r in receipts if r.state in lc._RECEIPT_ERROR]
    assert [u[4] for u in updates] == [real(r.state, r.stat, r.err) for r in receipts]
    assert [u[2] for u in updates] == [
        lc.SEG_DELIVERED if r.state == "delivered" else r.state for r in receipts
    ]
