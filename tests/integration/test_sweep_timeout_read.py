"""SQLite: the sweep's receipt-timeout read runs outside the write lock, and its candidates are
checked again inside it.

Since session 48 a message waits for its receipt until its validity has ended (lifecycle.
receipt_deadline), so the read by sent_at steps over every message waiting past the timeout for
a long validity: 18-59 ms per 100,000 (scripts/bench_receipt_sweep.py), which in the write job
held every writer that long at each sweep (every 5 s).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from bridge.store.sqlite import SqliteStore
from tests.integration.test_store import (
    DAY,
    NOW,
    TIMEOUT,
    accept,
    account,
    claim_all,
    get,
    message,
    rcpt,
    sent,
)


@pytest.fixture
async def store(tmp_path: Path) -> Any:
    s = SqliteStore(tmp_path / "bridge.db")
    await s.open()
    await s.create_account(account())
    try:
        yield s
    finally:
        await s.close()


async def _sent(store: SqliteStore, *mids: str, expires_at: int | None = None) -> None:
    for mid in mids:
        await accept(store, message(mid, expires_at=expires_at))
    await claim_all(store)
    await store.record_submits([sent(mid) for mid in mids], [], NOW)


async def test_the_timeout_read_is_not_run_on_the_writer_connection(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _sent(store, "waits", expires_at=NOW + 5 * DAY)
    await _sent(store, "due")
    writer = store._runner._conn
    assert writer is not None
    on_writer: list[str] = []
    writer.set_trace_callback(on_writer.append)
    try:
        out = await store.sweep(NOW + TIMEOUT, TIMEOUT)
    finally:
        writer.set_trace_callback(None)
    assert out["timed_out"] == 1
    assert (await get(store, "due")).state == "unknown"
    assert (await get(store, "waits")).state == "sent"
    # The writer only checked the candidates by id; the walk by sent_at ran elsewhere.
    walks = [s for s in on_writer if "state = 'sent' AND sent_at" in s]
    assert walks and all("json_each" in s for s in walks)


async def test_a_candidate_whose_receipt_came_after_the_read_is_not_timed_out(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _sent(store, "late", "due")
    runner = store._runner
    real = runner.read_heavy

    async def read_then_receipt(job: Any, lane: str = "report") -> Any:
        out = await real(job, lane)
        # Between the read (off the lock) and the write, "late"'s receipt is applied.
        await store.apply_receipts([rcpt("smscA", "late-1", at=NOW + TIMEOUT)], NOW + TIMEOUT)
        return out

    monkeypatch.setattr(runner, "read_heavy", read_then_receipt)
    out = await store.sweep(NOW + TIMEOUT, TIMEOUT)
    assert out["timed_out"] == 1
    assert (await get(store, "late")).state == "delivered"
    rec = await get(store, "due")
    assert (rec.state, rec.error_code) == ("unknown", "NO_RECEIPT")


async def test_the_sweep_does_not_wait_behind_a_long_report(store: SqliteStore) -> None:
    """The read runs on a lane of its own: behind a report of minutes on the report thread,
    the sweeper (receipt timeouts, validity expiries) waited as long."""
    await _sent(store, "due")
    release = threading.Event()
    report = asyncio.ensure_future(store._runner.read_heavy(lambda _c: release.wait(30)))
    await asyncio.sleep(0.05)  # the report holds its thread
    try:
        out = await asyncio.wait_for(store.sweep(NOW + TIMEOUT, TIMEOUT), 5)
        assert out["timed_out"] == 1
        assert not report.done()
    finally:
        release.set()
        await report
