"""The SQLite owner's submit results carry their message's rowid (session 62).

A claim hands each message out with the rowid it found it by (`WorkMessage.key`), the
dispatcher puts it in the message's results (`SubmitResult.key`), and the results' roll-up reads
those message rows by it (`m.rowid = j.value`, the id checked in the same join), not through
the id's index. A rowid is a hint: SQLite gives a deleted message's rowid to the next message
when it was the largest, and a VACUUM (the backup's `VACUUM INTO`, put back by a restore) may
number the rows again, so a row the rowid does not find with its id is read by the id, as every
row was before. These tests run the owner's writes on real SQLite files and compare every row
with the same steps run without the rowids.
"""

from __future__ import annotations

import asyncio
import dataclasses
import sqlite3
from pathlib import Path
from typing import Any

from bridge.store.models import AcceptBatch, ReceiptIn, SubmitResult, WorkMessage
from tests.connectors import StandIn, dispatcher
from tests.integration.test_sqlite_recipient_index import _store, traced  # noqa: F401
from tests.messages import one_part
from tests.rollup_writes import DUMPED, LEASE, NOW, accept

MIDS = ["msg_a", "msg_b", "msg_c", "msg_d"]
LONGER = {"msg_b": 3, "msg_d": 2}


def _dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    c = sqlite3.connect(path)
    try:
        return {
            table: c.execute(f"SELECT {cols} FROM {table} ORDER BY 1, 2").fetchall()
            for table, cols in DUMPED
        }
    finally:
        c.close()


def _rowids(path: Path) -> dict[str, int]:
    c = sqlite3.connect(path)
    try:
        return dict(c.execute("SELECT id, rowid FROM messages").fetchall())
    finally:
        c.close()


def _results(work: list[WorkMessage], keys: dict[str, int | None]) -> list[SubmitResult]:
    """Every part sent, but msg_c's, which fails; each carrying its message's `keys` entry."""
    out = []
    for w in work:
        for g in w.segments:
            if w.id == "msg_c":
                out.append(
                    SubmitResult(w.id, g.seq, "failed", "a", error_code="X", at=NOW + 2,
                                 key=keys[w.id])
                )  # fmt: skip
            else:
                sid = f"x-{w.id}-{g.seq}"
                out.append(
                    SubmitResult(w.id, g.seq, "sent", "a", sid, sid, at=NOW + 2, sent_at=NOW + 2,
                                 key=keys[w.id])
                )  # fmt: skip
    return out


async def _run(path: Path, keys_of: Any, traced: list[str]) -> list[str]:
    """Accept, claim, record the results (each carrying `keys_of(work, rowids)`), then the
    receipts; returns the statements the results' step ran."""
    store = await _store(path)
    try:
        await accept(store, MIDS, LONGER)
        work = await store.claim("i1", 10, NOW + 1, LEASE)
        assert sorted(w.id for w in work) == MIDS
        traced.clear()
        await store.record_submits(
            _results(work, keys_of(work, _rowids(path))), [], NOW + 2, instance="i1"
        )
        statements = list(traced)
        await store.apply_receipts(
            [
                ReceiptIn("a", f"x-{w.id}-{g.seq}", "delivered", "DELIVRD", None, NOW + 3, NOW + 3)
                for w in work
                for g in w.segments
                if w.id != "msg_c"
            ],
            NOW + 3,
        )
        return statements
    finally:
        await store.close()


def _roll_up_reads(statements: list[str]) -> list[str]:
    return [s for s in statements if "json_group_array" in s and "JOIN messages m" in s]


async def test_a_claim_hands_each_message_out_with_its_rowid(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    store = await _store(path)
    try:
        await accept(store, MIDS, LONGER)
        work = await store.claim("i1", 10, NOW + 1, LEASE)
    finally:
        await store.close()
    rowids = _rowids(path)
    assert {w.id: w.key for w in work} == rowids
    # A hint, not part of the value: equal, hashed and shown as the same message without it.
    w = work[0]
    bare = dataclasses.replace(w, key=None)
    assert w == bare and hash(w) == hash(bare) and repr(w) == repr(bare)


async def test_the_results_roll_up_reads_their_rows_by_rowid_and_writes_the_same(
    tmp_path: Path,
    traced: list[str],  # noqa: F811 (the fixture)
) -> None:
    keyed = await _run(tmp_path / "keyed.db", lambda work, rowids: rowids, traced)
    plain = await _run(tmp_path / "plain.db", lambda work, rowids: dict.fromkeys(rowids), traced)
    reads = _roll_up_reads(keyed)
    assert len(reads) == 1, reads
    assert "m.rowid = j.value AND m.id = j.key" in reads[0], reads[0]
    plain_reads = _roll_up_reads(plain)
    assert len(plain_reads) == 1 and "m.id = j.value" in plain_reads[0], plain_reads
    assert _dump(tmp_path / "keyed.db") == _dump(tmp_path / "plain.db")


async def test_a_rowid_that_names_another_message_or_none_reads_the_row_by_its_id(
    tmp_path: Path,
    traced: list[str],  # noqa: F811 (the fixture)
) -> None:
    """msg_a's results carry msg_b's rowid (as if msg_a's row had been deleted and its rowid
    given to another), msg_b's a rowid no row has, msg_d's a rowid that is a text: each row is
    read again by its id and rolls up as without any rowid; msg_c's is right."""

    def wrong(work: list[WorkMessage], rowids: dict[str, int]) -> dict[str, Any]:
        return {
            "msg_a": rowids["msg_b"],
            "msg_b": max(rowids.values()) + 100,
            "msg_c": rowids["msg_c"],
            "msg_d": -1,
        }

    keyed = await _run(tmp_path / "wrong.db", wrong, traced)
    await _run(tmp_path / "plain.db", lambda work, rowids: dict.fromkeys(rowids), traced)
    reads = _roll_up_reads(keyed)
    assert len(reads) == 2, reads  # by the rowids, then the three not found so by their ids
    assert "m.rowid = j.value" in reads[0] and "m.id = j.value" in reads[1], reads
    assert all(mid in reads[1] for mid in ("msg_a", "msg_b", "msg_d")), reads[1]
    assert "msg_c" not in reads[1], reads[1]
    assert _dump(tmp_path / "wrong.db") == _dump(tmp_path / "plain.db")


async def test_a_purged_message_s_rowid_given_to_a_new_one_rolls_up_neither_wrongly(
    tmp_path: Path,
    traced: list[str],  # noqa: F811 (the fixture)
) -> None:
    """The largest rowid's message row deleted while its results are in flight and a new
    message accepted, taking that rowid: the late results name the deleted message, whose
    parts they write, and roll no row up; the new message's row is left as accepted (read by
    the rowid alone, its results wrote it)."""
    path = tmp_path / "bridge.db"
    store = await _store(path)
    try:
        await accept(store, ["msg_a", "msg_b"], {})
        work = await store.claim("i1", 10, NOW + 1, LEASE)
        last = max(work, key=lambda w: w.key or 0)
        c = sqlite3.connect(path, isolation_level=None)
        try:
            # Its row only: its parts stay, so its results find them queued and roll it up
            # (a purge takes both; a row gone alone is the case where only the id tells).
            c.execute("DELETE FROM messages WHERE id=?", (last.id,))
        finally:
            c.close()
        await store.accept(
            AcceptBatch("acc", (one_part("msg_z", "acc", "+447900000009", NOW),), None, None), NOW
        )
        assert _rowids(path)["msg_z"] == last.key  # SQLite gave the rowid again
        before = _dump(path)["messages"]
        new_row = [r for r in before if r[0] == "msg_z"]
        traced.clear()
        await store.record_submits(
            [SubmitResult(last.id, 1, "sent", "a", "x-1", "x-1", at=NOW + 2, key=last.key)],
            [],
            NOW + 2,
            instance="i1",
        )
    finally:
        await store.close()
    after = _dump(path)["messages"]
    assert [r for r in after if r[0] == "msg_z"] == new_row
    assert not [s for s in traced if s.startswith("UPDATE messages")], traced


async def test_the_dispatcher_carries_the_claim_s_rowid_into_every_result(tmp_path: Path) -> None:
    """A real dispatcher on a real SQLite store: each result (sent, and the failed part of a
    message the SMSC refuses) names its message's rowid."""
    from bridge.smpp.connector import SubmitOutcome

    class Refusing(StandIn):
        async def sending(self, parts: Any, before_first: Any, deadline: Any, contexts: Any) -> Any:
            if before_first is not None:
                await before_first()
            if contexts and contexts[0][0] == "msg_c":
                return [SubmitOutcome(0, "permanent", 0x45, "ESME_RSUBMITFAIL", None)]
            return None

    path = tmp_path / "bridge.db"
    store = await _store(path)
    got: list[SubmitResult] = []
    real = store.record_submits

    async def recording(results: list[SubmitResult], *args: Any, **kw: Any) -> int:
        got.extend(results)
        return await real(results, *args, **kw)

    store.record_submits = recording  # type: ignore[method-assign]
    try:
        await accept(store, MIDS, LONGER)
        d = dispatcher(store, Refusing(), idle_s=0.01, clock=lambda: (NOW + 1) / 1000)
        task = asyncio.create_task(d.run())
        try:
            for _ in range(500):
                await asyncio.sleep(0.01)
                if {r.message_id for r in got} == set(MIDS):
                    break
        finally:
            await d.stop(1.0)
            task.cancel()
    finally:
        await store.close()
    rowids = _rowids(path)
    assert {r.message_id for r in got} == set(MIDS)
    assert {r.outcome for r in got} == {"sent", "failed"}
    assert all(r.key == rowids[r.message_id] for r in got), got
