"""The SQLite roll-up takes a message's parts from the writes that just set them.

A message's submit results and its receipts read its part rows before writing them, and the
roll-up after them read those rows once more, twice a message inside the owner's write lock
(`sqlite_pipeline.rollup_messages`, `known`): a one-part message's since session 48, a longer
one's whose every part was answered, or receipted, in the batch since session 51. These tests
run the owner's writes on a real SQLite file, trace the statements, and check that no such
roll-up reads the parts, that a message with a part the batch did not read still has them
read, and that every message row says what its stored parts say (lifecycle.summarize), as
when they were read.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.domain import lifecycle as lc
from bridge.store import sqlite_pipeline
from bridge.store.models import (
    AcceptBatch,
    Account,
    NewSegment,
    ReceiptIn,
    Release,
    SubmitResult,
)
from bridge.store.sqlite import SqliteStore
from tests.integration.test_sqlite_recipient_index import _store, traced  # noqa: F401
from tests.messages import one_part

NOW = 1_700_000_000_000
LEASE = 60_000
ROLLUP_READ = "SELECT message_id, seq, state, error_code FROM segments WHERE message_id IN ("


async def _accept(store: SqliteStore, mids: list[str], longer: dict[str, int]) -> None:
    """`longer`: the messages of more than one part, and how many."""
    await store.create_account(Account(id="acc", name="acc", created_at=NOW, updated_at=NOW))
    for k, mid in enumerate(mids):
        msg = one_part(mid, "acc", f"+4479{k:08d}", NOW, sender="1069")
        n = longer.get(mid, 1)
        if n > 1:
            segs = tuple(NewSegment(q, n, 0x40, bytes([96 + q]), b"") for q in range(1, n + 1))
            msg = replace(msg, segments=segs, billable_units=n)
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


async def test_parts_written_in_the_batch_are_not_read_again_for_the_roll_up(
    tmp_path: Path,
    traced: list[str],  # noqa: F811 (the fixture)
) -> None:
    path = tmp_path / "bridge.db"
    store = await _store(path)
    # msg_a: delivered; msg_b: two parts, their receipts in two batches; msg_c: its receipt
    # before its result (kept, then matched by the result's write); msg_d: undeliverable with
    # an error code; msg_e: two receipts in one batch, delivered then undeliverable (the row
    # follows its stored part); msg_g: three parts, their results and receipts in one batch
    # each, the second part's undeliverable.
    mids = ["msg_a", "msg_b", "msg_c", "msg_d", "msg_e", "msg_g"]
    try:
        await _accept(store, mids, {"msg_b": 2, "msg_g": 3})
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
            "msg_g": "sent",
        }
        assert all(r[4] == "done" for r in after_submits.values())  # every claim given back
        # Every part of every message was queued and is sent now: no roll-up read its parts.
        assert _rollup_reads(traced) == []
        out = await store.apply_receipts(
            [
                receipt("msg_a", 1),
                receipt("msg_b", 1),
                receipt("msg_g", 3),
                receipt("msg_d", 1, "undeliverable", "UNDELIV"),
                receipt("msg_g", 1),
                receipt("msg_e", 1),
                receipt("msg_g", 2, "undeliverable", "UNDELIV"),
                receipt("msg_e", 1, "undeliverable", "UNDELIV"),
            ],
            at,
        )
        assert out.pending == 0
        rows = _rows_match_parts(path)
        assert rows["msg_a"][:4] == ("delivered", 1, 0, None)
        assert rows["msg_b"][:4] == ("sent", 1, 0, None)
        assert rows["msg_c"][:4] == ("delivered", 1, 0, None)
        code = lc.receipt_error_code("undeliverable", "UNDELIV", "001")
        assert rows["msg_d"][:4] == ("failed", 0, 1, code)
        assert rows["msg_e"][:4] == ("delivered", 1, 0, None)  # the first final receipt stands
        assert rows["msg_g"][:4] == ("failed", 2, 1, code)
        # Only msg_b's parts were read: its second part's row was not among this batch's.
        reads = _rollup_reads(traced)
        assert reads and all("'msg_b'" in s for s in reads), reads
        assert not [s for s in reads for m in mids if m != "msg_b" and f"'{m}'" in s], reads
        traced.clear()
        out = await store.apply_receipts([receipt("msg_b", 2)], at)
        assert out.matched == 1
        assert _rows_match_parts(path)["msg_b"][:4] == ("delivered", 2, 0, None)
        reads = _rollup_reads(traced)
        assert len(reads) == 1 and "'msg_b'" in reads[0], reads
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
        await _accept(store, ["msg_f", "msg_u"], {})
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


_RECEIPT_STATES = {
    "delivered": "DELIVRD",
    "undeliverable": "UNDELIV",
    "expired": "EXPIRED",
    "unknown": "UNKNOWN",
    "enroute": "ENROUTE",
}


def _owner_writes(rnd: random.Random, mids: list[str], parts: dict[str, int]) -> list[Any]:
    """A random run of the owner's writes: submit results of every outcome (repeated ones too),
    releases, receipts (some before their part's result: kept, then applied by it; two for one
    part in a batch), claims and sweeps past the receipt timeout."""
    ops: list[Any] = []
    at = NOW + 2_000
    for _ in range(rnd.randint(3, 12)):
        at += rnd.randint(0, 5_000)
        kind = rnd.choice(["results", "receipts", "receipts", "whole", "claim", "sweep"])
        if kind == "whole":
            # As the dispatcher hands them in: every part's result of a message, or (the
            # receipts) every part's, in one batch, with another message's besides.
            mid, other = rnd.choice(mids), rnd.choice(mids)
            if rnd.random() < 0.5:
                results = []
                for m, seq in [(mid, q) for q in range(1, parts[mid] + 1)] + [(other, 1)]:
                    ref = f"x{m}-{seq}-{int(rnd.random() < 0.1)}"
                    results.append(SubmitResult(m, seq, "sent", "smsc1", ref, ref, None, at, at))
                ops.append(("results", results, [], at))
            else:
                receipts = []
                for m, seq in [(mid, q) for q in range(1, parts[mid] + 1)] + [(other, 1)]:
                    state = rnd.choice(list(_RECEIPT_STATES))
                    err = None if state == "delivered" else "001"
                    ref = f"x{m}-{seq}-{int(rnd.random() < 0.1)}"
                    receipts.append(
                        ReceiptIn("smsc1", ref, state, _RECEIPT_STATES[state], err, at, at)
                    )
                ops.append(("receipts", receipts, None, at))
        elif kind == "results":
            results, releases = [], []
            for _ in range(rnd.randint(1, 5)):
                mid = rnd.choice(mids)
                seq = rnd.randint(1, parts[mid])
                out = rnd.choice(["sent", "sent", "sent", "failed", "unknown", "expired"])
                ref = f"x{mid}-{seq}-{int(rnd.random() < 0.1)}" if out == "sent" else None
                err = None if out == "sent" else "ESME_RSYSERR"
                sent_at = at - rnd.randint(0, 3_000)
                results.append(SubmitResult(mid, seq, out, "smsc1", ref, ref, err, at, sent_at))
            # A claim ends in a final result or a release, not both, and a release leaves a
            # part unsent (_send_on).
            ended = {r.message_id for r in results if r.outcome != "sent"}
            sent = {(r.message_id, r.seq) for r in results}
            free = [
                mid
                for mid in mids
                if mid not in ended and any((mid, q) not in sent for q in range(1, parts[mid] + 1))
            ]
            if free and rnd.random() < 0.3:
                releases.append(Release(rnd.choice(free), at + 1_000, rnd.random() < 0.5))
            ops.append(("results", results, releases, at))
        elif kind == "receipts":
            receipts = []
            for _ in range(rnd.randint(1, 5)):
                mid = rnd.choice(mids)
                seq = rnd.randint(1, parts[mid])
                state = rnd.choice(list(_RECEIPT_STATES))
                ref = f"x{mid}-{seq}-{int(rnd.random() < 0.1)}"
                err = None if state == "delivered" else "001"
                got = at - rnd.randint(0, 2_000)
                receipts.append(
                    ReceiptIn("smsc1", ref, state, _RECEIPT_STATES[state], err, at, got)
                )
            ops.append(("receipts", receipts, None, at))
        else:
            ops.append((kind, None, None, at + (80 * 3_600_000 if rnd.random() < 0.5 else 0)))
    return ops


async def _run(path: Path, seed: int, reread: bool) -> tuple[list[Any], dict[str, Any]]:
    """The owner's writes of `seed` on a new store at `path`; what each returned and the rows.
    `reread`: every roll-up reads its parts again, as before `known`."""
    rnd = random.Random(seed)
    mids = [f"msg_{k}" for k in range(rnd.randint(1, 6))]
    parts = {mid: rnd.choice([1, 1, 2, 3]) for mid in mids}
    one_per_message = rnd.random() < 0.3
    ops = _owner_writes(rnd, mids, parts)
    real = sqlite_pipeline.rollup_messages

    def rollup(c: sqlite3.Connection, touched: dict[str, bool], now: int, **kw: Any) -> int:
        if reread:
            kw.pop("known", None)
        return real(c, touched, now, **kw)

    store = await _store(path)
    try:
        if one_per_message:
            store.one_receipt_smscs = frozenset({"smsc1"})
        await store.create_account(
            Account(id="acc", name="acc", created_at=NOW, updated_at=NOW, status_callback_url=URL)
        )
        for k, mid in enumerate(mids):
            msg = one_part(mid, "acc", f"+4479{k:08d}", NOW, sender="1069")
            if parts[mid] > 1:
                n = parts[mid]
                segs = tuple(NewSegment(q, n, 0x40, b"a", b"") for q in range(1, n + 1))
                msg = replace(msg, segments=segs, billable_units=n)
            await store.accept(AcceptBatch("acc", (msg,), None, None), NOW)
        await store.claim("i1", 10, NOW + 1_000, LEASE)
        returned: list[Any] = []
        sqlite_pipeline.rollup_messages = rollup  # type: ignore[assignment]
        try:
            for kind, items, releases, at in ops:
                if kind == "results":
                    returned.append(await store.record_submits(items, releases, at, instance="i1"))
                elif kind == "receipts":
                    returned.append(await store.apply_receipts(items, at))
                elif kind == "claim":
                    returned.append([w.id for w in await store.claim("i1", 10, at, LEASE)])
                else:
                    returned.append(await store.sweep(at, 72 * 3_600_000))
        finally:
            sqlite_pipeline.rollup_messages = real  # type: ignore[assignment]
    finally:
        await store.close()
    c = sqlite3.connect(path)
    try:
        rows = {
            table: c.execute(f"SELECT {cols} FROM {table} ORDER BY 1, 2").fetchall()
            for table, cols in (
                ("messages", "*"),
                ("segments", "*"),
                ("pending_receipts", "id, smsc, smsc_msg_id, state, received_at"),
                ("webhook_outbox", "webhook_id, kind, ref_id"),
            )
        }
    finally:
        c.close()
    return returned, rows


URL = "http://127.0.0.1:9/status"


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32 - 1))
def test_random_owner_writes_roll_up_as_when_every_part_was_read(tmp_path: Path, seed: int) -> None:
    """A failed, unknown or expired result beside a receipt, two receipts for one part in a
    batch, a receipt kept and applied at its part's result, one receipt for a whole message,
    releases and sweeps: every row, report and count as when each roll-up read its parts."""
    run = Path(tempfile.mkdtemp(dir=tmp_path))  # hypothesis may draw a seed twice
    got = asyncio.run(_run(run / "known.db", seed, reread=False))
    want = asyncio.run(_run(run / "reread.db", seed, reread=True))
    assert got == want
