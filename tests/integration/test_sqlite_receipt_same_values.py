"""SQLite: a receipts batch writes its parts of equal values by one statement (session 57).

A receipts batch updated each part it settled by an `executemany` row (`_settle`): a step, a
reset, four values bound and the GIL handed over per part, ~25 k instructions a part row in the
owner's write lock. The parts that take the same values (state, done time, error code, the
receipt they took: a batch's receipts of one millisecond) are now written by one UPDATE listing
their messages (`sqlite_pipeline._settle_same`): a message whose every part takes them once for
all its parts, others by seq. These tests trace the statements of a real batch, and hold random
batches (mixed outcomes and times, repeats, unknown ids, longer messages receipted in part)
against the per-row path: every part row and message row equal.
"""

from __future__ import annotations

import random
import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from bridge.store import sqlite_pipeline
from bridge.store.models import ReceiptIn, SubmitResult
from bridge.store.sqlite import SqliteStore
from tests.integration.test_sqlite_recipient_index import traced  # noqa: F401
from tests.rollup_writes import LEASE, NOW, accept

PER_ROW = "UPDATE segments SET state="
LISTED = "IN (SELECT value FROM json_each("


async def _claimed_and_sent(
    path: Path, mids: list[str], longer: dict[str, int]
) -> tuple[SqliteStore, dict[str, int]]:
    """A store with `mids` accepted, claimed and every part sent (SMSC id x<mid>-<seq>);
    each message's part count."""
    store = SqliteStore(path)
    await store.open()
    await accept(store, mids, longer)
    work = await store.claim("i1", len(mids), NOW + 1_000, LEASE)
    assert sorted(w.id for w in work) == sorted(mids)
    at = NOW + 2_000
    await store.record_submits(
        [
            SubmitResult(w.id, g.seq, "sent", "s1", f"x{w.id}-{g.seq}", f"x{w.id}-{g.seq}", at, at)
            for w in work
            for g in w.segments
        ],
        [],
        at,
    )
    return store, {w.id: len(w.segments) for w in work}


def _dump(path: Path) -> list[list[tuple[Any, ...]]]:
    with closing(sqlite3.connect(path)) as db:
        return [
            db.execute("SELECT * FROM segments ORDER BY message_id, seq").fetchall(),
            db.execute("SELECT * FROM messages ORDER BY id").fetchall(),
            db.execute(
                "SELECT smsc, smsc_msg_id, state FROM pending_receipts ORDER BY id"
            ).fetchall(),
        ]


async def test_a_batch_of_equal_receipts_writes_its_parts_by_one_statement(
    tmp_path: Path,
    traced: list[str],  # noqa: F811 (the fixture)
) -> None:
    mids = [f"msg_{k:04d}" for k in range(12)]
    longer = {mid: 3 for mid in mids[8:]}  # 8 one-part messages, 4 of three parts
    store, parts = await _claimed_and_sent(tmp_path / "bridge.db", mids, longer)
    try:
        done = NOW + 3_000
        receipts = [
            ReceiptIn("s1", f"x{mid}-{q}", "delivered", "DELIVRD", None, done, done)
            for mid in mids
            for q in range(1, parts[mid] + 1)
        ]
        traced.clear()
        out = await store.apply_receipts(receipts, done)
        assert (out.matched, out.pending) == (20, 0)
        writes = [s for s in traced if s.startswith(PER_ROW)]
        # Before: 20 UPDATEs, one a part row; now one, its 12 messages listed.
        assert len(writes) == 1, writes
        assert LISTED in writes[0] and "seq" not in writes[0], writes[0]
        assert sorted(re.findall(r"msg_\d{4}", writes[0])) == mids
        with closing(sqlite3.connect(store.path)) as db:
            assert db.execute(
                "SELECT DISTINCT state, done_at, error_code FROM segments"
            ).fetchall() == [("delivered", done, None)]
            assert db.execute("SELECT DISTINCT state, done_at FROM messages").fetchall() == [
                ("delivered", done)
            ]
    finally:
        await store.close()


async def test_parts_of_a_longer_message_taking_different_values_are_listed_by_seq(
    tmp_path: Path,
    traced: list[str],  # noqa: F811 (the fixture)
) -> None:
    mids = [f"msg_{k:04d}" for k in range(6)]
    store, _parts = await _claimed_and_sent(tmp_path / "bridge.db", mids, dict.fromkeys(mids, 3))
    try:
        done = NOW + 3_000
        # Parts 1 and 2 received at one time, part 3 a millisecond later: no message's parts
        # take equal values, so each seq is a statement of its six rows.
        receipts = [
            ReceiptIn("s1", f"x{mid}-{q}", "delivered", "DELIVRD", None, at, at)
            for mid in mids
            for q in (1, 2, 3)
            for at in (done + (q == 3),)
        ]
        traced.clear()
        out = await store.apply_receipts(receipts, done + 1)
        assert out.matched == 18
        writes = [s for s in traced if s.startswith(PER_ROW)]
        assert len(writes) == 3 and all("WHERE seq=" in w for w in writes), writes
        with closing(sqlite3.connect(store.path)) as db:
            assert db.execute(
                "SELECT seq, done_at, count(*) FROM segments GROUP BY seq, done_at"
            ).fetchall() == [(1, done, 6), (2, done, 6), (3, done + 1, 6)]
    finally:
        await store.close()


_OUTCOMES = (
    ("delivered", "DELIVRD", None),
    ("undeliverable", "UNDELIV", "001"),
    ("rejected", "REJECTD", "045"),
    ("enroute", "ENROUTE", None),
    ("expired", "EXPIRED", None),
)


def _batch(rnd: random.Random, parts: dict[str, int]) -> list[ReceiptIn]:
    """A random receipts batch: most parts once, some twice (the first final stands), some
    not at all, ids no part has, outcomes and times drawn from a few."""
    out = []
    times = [NOW + 3_000 + rnd.randrange(3) for _ in range(2)]
    for mid, n in parts.items():
        for q in range(1, n + 1):
            for _ in range(rnd.choice((0, 1, 1, 1, 1, 2))):
                state, stat, err = rnd.choice(_OUTCOMES[:2] if rnd.random() < 0.7 else _OUTCOMES)
                at = rnd.choice(times)
                out.append(ReceiptIn("s1", f"x{mid}-{q}", state, stat, err, at, at))
        if rnd.random() < 0.1:
            out.append(ReceiptIn("s1", f"y{mid}", "delivered", "DELIVRD", None, NOW, NOW))
    rnd.shuffle(out)
    return out


@pytest.mark.parametrize("seed", range(12))
async def test_random_batches_store_what_the_per_row_path_stores(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    rnd = random.Random(seed)
    mids = [f"msg_{k:04d}" for k in range(rnd.randrange(4, 30))]
    longer = {mid: rnd.choice((2, 3, 6)) for mid in mids if rnd.random() < 0.4}
    batches = [_batch(rnd, {mid: longer.get(mid, 1) for mid in mids}) for _ in range(2)]
    dumps = []
    for same_min in (sqlite_pipeline._SAME_MIN, 10**9):  # grouped, then per row only
        monkeypatch.setattr(sqlite_pipeline, "_SAME_MIN", same_min)
        path = tmp_path / f"bridge{same_min}.db"
        store, _parts = await _claimed_and_sent(path, mids, longer)
        try:
            outs = []
            for k, batch in enumerate(batches):
                out = await store.apply_receipts(batch, NOW + 5_000 + k)
                outs.append((out.matched, out.pending, out.reports))
                outs.append(_dump(path))
        finally:
            await store.close()
        dumps.append(outs)
    assert dumps[0] == dumps[1]
