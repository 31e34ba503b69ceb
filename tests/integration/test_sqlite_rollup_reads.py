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
import re
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.store import sqlite_pipeline
from bridge.store.models import SubmitResult
from tests.integration.test_sqlite_recipient_index import _store, traced  # noqa: F401
from tests.rollup_writes import (
    DUMPED,
    LEASE,
    NOW,
    accept,
    parts_written_in_the_batch,
    random_run,
    summarized,
)

ROLLUP_READ = "SELECT message_id, seq, state, error_code FROM segments WHERE message_id IN ("


def _rows_match_parts(path: Path) -> dict[str, tuple[object, ...]]:
    """Each message's (state, delivered, failed, error, q_state); asserted to be what its
    stored parts roll up to."""
    c = sqlite3.connect(path)
    try:
        return {
            mid: summarized(
                row,
                c.execute(
                    "SELECT state, error_code FROM segments WHERE message_id=? ORDER BY seq",
                    (mid,),
                ).fetchall(),
            )
            for mid, *row in c.execute(
                "SELECT id, state, segments_delivered, segments_failed, error_code, q_state, "
                "segments FROM messages ORDER BY id"
            ).fetchall()
        }
    finally:
        c.close()


def _rollup_reads(statements: list[str]) -> list[list[str]]:
    """The message ids each roll-up read the parts of (inlined in the traced statement)."""
    return [sorted(re.findall(r"'(msg_\w+)'", s)) for s in statements if s.startswith(ROLLUP_READ)]


async def test_parts_written_in_the_batch_are_not_read_again_for_the_roll_up(
    tmp_path: Path,
    traced: list[str],  # noqa: F811 (the fixture)
) -> None:
    """The scenario of rollup_writes.parts_written_in_the_batch, on SQLite."""
    path = tmp_path / "bridge.db"
    store = await _store(path)

    async def rows() -> dict[str, tuple[Any, ...]]:
        return _rows_match_parts(path)

    try:
        await parts_written_in_the_batch(store, rows, lambda: _rollup_reads(traced), traced.clear)
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
        await accept(store, ["msg_f", "msg_u"], {})
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
        assert _rollup_reads(traced) == [["msg_f", "msg_u"]]
    finally:
        await store.close()


async def _run(path: Path, seed: int, reread: bool) -> tuple[list[Any], dict[str, Any]]:
    """The owner's writes of `seed` on a new store at `path`; what each returned and the rows.
    `reread`: every roll-up reads its parts again, as before `known`."""
    real = sqlite_pipeline.rollup_messages

    def rollup(c: sqlite3.Connection, touched: dict[str, bool], now: int, **kw: Any) -> int:
        if reread:
            kw.pop("known", None)
        return real(c, touched, now, **kw)

    store = await _store(path)
    sqlite_pipeline.rollup_messages = rollup  # type: ignore[assignment]
    try:
        returned = await random_run(store, seed)
    finally:
        sqlite_pipeline.rollup_messages = real  # type: ignore[assignment]
        await store.close()
    c = sqlite3.connect(path)
    try:
        rows = {
            table: c.execute(f"SELECT {cols} FROM {table} ORDER BY 1, 2").fetchall()
            for table, cols in DUMPED
        }
    finally:
        c.close()
    return returned, rows


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
