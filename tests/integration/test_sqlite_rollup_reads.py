"""The SQLite roll-up of a one-part message takes its part from the write that just set it.

A one-part message's submit result and each of its receipts read its one part row before
writing it, and the roll-up after them read that row once more, twice a message inside the
owner's write lock (`sqlite_pipeline.rollup_messages`, `known`). These tests run the owner's
writes on a real SQLite file, trace the statements, and check that no roll-up reads a
one-part message's parts, that a message of more parts still has them read, and that every
message row says what its stored parts say (lifecycle.summarize), as when they were read.
"""

from __future__ import annotations

import sqlite3
from dataclasses import replace
from pathlib import Path

from bridge.domain import lifecycle as lc
from bridge.store.models import AcceptBatch, Account, NewSegment, ReceiptIn, SubmitResult
from bridge.store.sqlite import SqliteStore
from tests.integration.test_sqlite_recipient_index import _store, traced  # noqa: F401
from tests.messages import one_part

NOW = 1_700_000_000_000
LEASE = 60_000
ROLLUP_READ = "SELECT message_id, seq, state, error_code FROM segments WHERE message_id IN ("


async def _accept(store: SqliteStore, mids: list[str], two_parts: set[str]) -> None:
    await store.create_account(Account(id="acc", name="acc", created_at=NOW, updated_at=NOW))
    for k, mid in enumerate(mids):
        msg = one_part(mid, "acc", f"+4479{k:08d}", NOW, sender="1069")
        if mid in two_parts:
            msg = replace(
                msg,
                segments=(NewSegment(1, 2, 0x40, b"a", b""), NewSegment(2, 2, 0x40, b"b", b"")),
                billable_units=2,
            )
        await store.accept(AcceptBatch("acc", (msg,), None, None), NOW)


def _rows_match_parts(path: Path) -> dict[str, tuple[object, ...]]:
    """Each message's (state, delivered, failed, error, q_state); asserted to be what its
    stored parts roll up to."""
    c = sqlite3.connect(path)
    try:
        out = {}
        for mid, state, delivered, failed, error, q_state, nseg in c.execute(
            "SELECT id, state, segments_delivered, segments_failed, error_code, q_state, "
            "segments FROM messages ORDER BY id"
        ):
            parts = c.execute(
                "SELECT state, error_code FROM segments WHERE message_id=? ORDER BY seq", (mid,)
            ).fetchall()
            s = lc.summarize(parts, nseg)
            assert (state, delivered, failed, error) == (s.state, s.delivered, s.failed, s.error)
            out[mid] = (state, delivered, failed, error, q_state)
        return out
    finally:
        c.close()


def _rollup_reads(statements: list[str]) -> list[str]:
    return [s for s in statements if s.startswith(ROLLUP_READ)]


async def test_a_one_part_message_is_rolled_up_without_reading_its_part_again(
    tmp_path: Path,
    traced: list[str],  # noqa: F811 (the fixture)
) -> None:
    path = tmp_path / "bridge.db"
    store = await _store(path)
    # msg_a: delivered; msg_b: two parts; msg_c: its receipt before its result (kept, then
    # matched by the result's write); msg_d: undeliverable with an error code; msg_e: two
    # receipts in one batch, delivered then undeliverable (the row follows its stored part).
    mids = ["msg_a", "msg_b", "msg_c", "msg_d", "msg_e"]
    try:
        await _accept(store, mids, {"msg_b"})
        work = await store.claim("i1", 10, NOW + 1_000, LEASE)
        assert sorted(w.id for w in work) == mids
        at = NOW + 2_000

        def receipt(
            mid: str, seq: int, state: str = "delivered", stat: str = "DELIVRD"
        ) -> ReceiptIn:
            err = None if state == "delivered" else "001"
            return ReceiptIn("smsc1", f"x{mid}-{seq}", state, stat, err, at, at)

        early = await store.apply_receipts([receipt("msg_c", 1)], at)
        assert (early.matched, early.pending) == (0, 1)
        traced.clear()
        await store.record_submits(
            [
                SubmitResult(
                    w.id,
                    g.seq,
                    "sent",
                    "smsc1",
                    f"x{w.id}-{g.seq}",
                    f"x{w.id}-{g.seq}",
                    at=at,
                    sent_at=at,
                )
                for w in work
                for g in w.segments
            ],
            [],
            at,
        )
        after_submits = _rows_match_parts(path)
        assert {m: r[0] for m, r in after_submits.items()} == {
            "msg_a": "sent",
            "msg_b": "sent",
            "msg_c": "delivered",
            "msg_d": "sent",
            "msg_e": "sent",
        }
        assert all(r[4] == "done" for r in after_submits.values())  # every claim given back
        out = await store.apply_receipts(
            [
                receipt("msg_a", 1),
                receipt("msg_b", 1),
                receipt("msg_b", 2),
                receipt("msg_d", 1, "undeliverable", "UNDELIV"),
                receipt("msg_e", 1),
                receipt("msg_e", 1, "undeliverable", "UNDELIV"),
            ],
            at,
        )
        assert out.pending == 0
        rows = _rows_match_parts(path)
        assert rows["msg_a"][:4] == ("delivered", 1, 0, None)
        assert rows["msg_b"][:4] == ("delivered", 2, 0, None)
        assert rows["msg_c"][:4] == ("delivered", 1, 0, None)
        code = lc.receipt_error_code("undeliverable", "UNDELIV", "001")
        assert rows["msg_d"][:4] == ("failed", 0, 1, code)
        assert rows["msg_e"][:4] == ("delivered", 1, 0, None)  # the first final receipt stands
        # The two-part message's parts were read for its roll-ups; no one-part message's were.
        reads = _rollup_reads(traced)
        assert reads and all("'msg_b'" in s for s in reads), reads
        assert not [s for s in reads for m in mids if m != "msg_b" and f"'{m}'" in s], reads
    finally:
        await store.close()


async def test_a_one_part_message_with_another_outcome_is_read_as_before(
    tmp_path: Path,
    traced: list[str],  # noqa: F811 (the fixture)
) -> None:
    """A failed or unknown submit writes its part only if still queued: its roll-up reads it."""
    path = tmp_path / "bridge.db"
    store = await _store(path)
    try:
        await _accept(store, ["msg_f", "msg_u"], set())
        work = await store.claim("i1", 10, NOW + 1_000, LEASE)
        assert len(work) == 2
        traced.clear()
        at = NOW + 2_000
        await store.record_submits(
            [
                SubmitResult("msg_f", 1, "failed", "smsc1", error_code="ESME_RINVDSTADR", at=at),
                SubmitResult("msg_u", 1, "unknown", "smsc1", at=at),
            ],
            [],
            at,
        )
        rows = _rows_match_parts(path)
        assert rows["msg_f"][0] == "failed" and rows["msg_f"][3] == "ESME_RINVDSTADR"
        assert rows["msg_u"][0] == "unknown"
        reads = _rollup_reads(traced)
        assert len(reads) == 1 and "'msg_f'" in reads[0] and "'msg_u'" in reads[0], reads
    finally:
        await store.close()
