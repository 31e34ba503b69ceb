"""Store.clock_stepped_back: after the host's clock stepped back, stored retry times move back
by as much (bridge/clockstep.py, Daemon._watch_clock), on every engine."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.store import postgres_clock, sqlite_clock  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import AcceptBatch, ClockShift, Release  # noqa: E402
from tests.integration.test_store import (  # noqa: E402
    DAY,
    HOUR,
    LEASE,
    MIN,
    NOW,
    SEC,
    accept,
    account,
    batch,
    message,
)
from tests.store_engines import EngineHandle  # noqa: E402

engine = engines.engine
store = engines.store

STEP = 10 * MIN  # the old clock was this far ahead: times stored before the step are too


async def claimed(store: Store, at: int) -> list[str]:
    return sorted(w.id for w in await store.claim("inst-1", 1000, at, LEASE))


async def test_queued_messages_move_back_scheduled_and_claimed_ones_stay(store: Store) -> None:
    await store.create_account(account())
    old = NOW + STEP  # the old clock at the step
    await accept(store, message("m_due", at=NOW - MIN), now=NOW - MIN)  # due on either clock
    await accept(store, message("m_recent", at=old - SEC), now=old - SEC)
    await accept(store, message("m_sched", at=old - SEC, scheduled_at=old + HOUR), now=old - SEC)
    await accept(store, message("m_claimed", at=old - 2 * SEC), now=old - 2 * SEC)
    await accept(store, message("m_retry", at=old - 3 * SEC), now=old - 3 * SEC)
    assert await claimed(store, old - SEC // 2) == ["m_claimed", "m_due", "m_recent", "m_retry"]
    # m_due and m_recent go back to the queue as they were; m_retry waits 30 s after a failure.
    await store.record_submits(
        [],
        [
            Release("m_due", NOW - MIN, count_attempt=False),
            Release("m_recent", old - SEC, count_attempt=False),
            Release("m_retry", old + 30 * SEC),
        ],
        old,
    )

    moved, hooks = await store.clock_stepped_back(STEP, NOW, ())
    # m_recent, m_retry, and m_due too (due either way, it stays ahead of those after it);
    # m_claimed is claimed, m_sched keeps the customer's time.
    assert (moved, hooks) == (3, 0)

    assert await claimed(store, NOW) == ["m_due", "m_recent"]  # not 10 minutes from now
    assert await claimed(store, NOW + 30 * SEC - 1) == []
    assert await claimed(store, NOW + 30 * SEC) == ["m_retry"]
    assert await claimed(store, old + HOUR - 1) == []  # the customer's wall time is kept
    assert await claimed(store, old + HOUR) == ["m_sched"]


async def test_each_row_moves_once_across_chunks(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_clock, "CHUNK", 3)
    monkeypatch.setattr(postgres_clock, "CHUNK", 3)
    await store.create_account(account())
    await store.create_account(account("acc_b"))
    ids = []
    for i in range(11):  # accepted over the last 11 s of the old clock, in two accounts
        at = NOW + STEP - (11 - i) * SEC
        aid = "acc_a" if i % 3 else "acc_b"
        ids.append(f"m{i:02d}")
        await store.accept(batch(message(ids[-1], aid, at=at), account_id=aid), at)
    assert await store.clock_stepped_back(STEP, NOW, ()) == (11, 0)
    assert await claimed(store, NOW - 11 * SEC - 1) == []
    assert await claimed(store, NOW - 6 * SEC) == ids[:6]  # each exactly STEP earlier
    assert await claimed(store, NOW) == ids[6:]


async def test_a_shift_failing_mid_way_goes_on_from_its_last_chunk(
    store: Store, engine: EngineHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon hands the same ClockShift back after a failure (a lost connection, a disk
    error): the chunks written stay moved once, the rest move when it goes on."""
    monkeypatch.setattr(sqlite_clock, "CHUNK", 3)
    monkeypatch.setattr(postgres_clock, "CHUNK", 3)
    await store.create_account(account())
    for i in range(8):
        at = NOW + STEP - (8 - i) * SEC
        await store.accept(batch(message(f"m{i}", at=at)), at)
    chunks = 0

    def second_chunk_fails() -> None:
        nonlocal chunks
        chunks += 1
        if chunks == 2:
            raise ConnectionResetError("the database went away")

    if engine.name == "sqlite":
        real_page = sqlite_clock._page

        def page(*a: Any, **kw: Any) -> Any:
            second_chunk_fails()
            return real_page(*a, **kw)

        monkeypatch.setattr(sqlite_clock, "_page", page)
    else:
        real_tx = postgres_clock.run_tx

        async def run_tx(pool: Any, fn: Any, **kw: Any) -> Any:
            if fn.__name__ == "page":
                second_chunk_fails()
            return await real_tx(pool, fn, **kw)

        monkeypatch.setattr(postgres_clock, "run_tx", run_tx)
    shift = ClockShift(STEP, NOW)
    with pytest.raises(ConnectionResetError):
        await store.clock_stepped_back(STEP, NOW, (), shift)
    assert (shift.messages, shift.messages_done) == (3, False)
    assert await store.clock_stepped_back(STEP, NOW, (), shift) == (5, 0)
    assert (shift.messages, shift.messages_done, shift.webhooks_done) == (8, True, True)
    assert await claimed(store, NOW - 8 * SEC - 1) == []
    assert await claimed(store, NOW - SEC) == [f"m{i}" for i in range(8)]  # each STEP earlier


async def test_webhook_retries_move_back_but_a_lease_in_flight_is_kept(store: Store) -> None:
    await store.create_account(account(status_url="https://cb/st"))
    old = NOW + STEP
    for ev in ("ev_retry", "ev_inflight", "ev_orphan"):
        await store.enqueue_event("acc_a", "event", "{}", ev, old - MIN)
    jobs = {j.webhook_id: j for j in await store.claim_webhooks(old - MIN, 10, LEASE)}
    await store.webhook_retry([jobs["ev_retry"].id], old + 2 * SEC, "HTTP 503", dead=False)
    # ev_inflight: its POST is running here (leased); ev_orphan: leased by a process gone.
    moved, hooks = await store.clock_stepped_back(STEP, NOW, [jobs["ev_inflight"].id])
    assert (moved, hooks) == (0, 2)
    due = await store.claim_webhooks(NOW + 2 * SEC, 10, LEASE)
    assert [j.webhook_id for j in due] == ["ev_retry"]  # 2 s after the failure, not 10 min
    # The lease in flight still matches: its result is recorded, and nothing is sent twice.
    await store.webhook_done(
        [jobs["ev_inflight"].id], NOW + 3 * SEC, lease=jobs["ev_inflight"].lease
    )
    later = await store.claim_webhooks(old - MIN + LEASE - STEP, 10, LEASE)
    assert [j.webhook_id for j in later] == ["ev_orphan"]  # its lease ran out on the new clock
    # ev_inflight was booked delivered under its lease; the other two are leased again.
    last = await store.claim_webhooks(NOW + DAY, 10, LEASE)
    assert sorted(j.webhook_id for j in last) == ["ev_orphan", "ev_retry"]


async def test_a_lease_another_sender_holds_is_kept(store: Store) -> None:
    """A report leased by another instance (PostgreSQL: another host's clock did not step) is
    not moved: its sender's result still matches the lease, so it is not POSTed twice. Before
    session 22 only this sender's own leases (in memory) were kept. A dead sender's leases are
    given back by free_webhook_leases instead."""
    await store.create_account(account(status_url="https://cb/st"))
    old = NOW + STEP
    await store.enqueue_event("acc_a", "event", "{}", "ev_b", old - MIN)
    (job,) = await store.claim_webhooks(old - MIN, 10, LEASE, holder="inst-b")
    assert await store.clock_stepped_back(STEP, NOW, ()) == (0, 0)
    assert await store.claim_webhooks(old - MIN + LEASE - 1, 10, LEASE) == []
    await store.webhook_done([job.id], NOW + SEC, lease=job.lease)
    assert await store.claim_webhooks(NOW + DAY, 10, LEASE) == []  # booked delivered


async def test_a_rate_bucket_moves_back_with_the_clock(store: Store, engine: EngineHandle) -> None:
    """A bucket's time ahead of an accept's is taken as no time passed (another process's
    accept committed first), so after a step back of 30 s a 2-TPS account's drained bucket
    would refuse every send for 30 s: the shift moves its time back with the queue's. (On
    PostgreSQL the buckets are on the database's clock, which a host's step does not move.)"""
    if engine.name != "sqlite":
        pytest.skip("PostgreSQL's buckets are on the database's clock: nothing to move")
    await store.create_account(account())
    step = 30 * SEC
    old = NOW + step

    def rated(mid: str, at: int) -> AcceptBatch:
        return replace(batch(message(mid, at=at)), tps=2)

    for mid in ("r1", "r2"):  # drains it: two tokens, a second's worth
        assert (await store.accept(rated(mid, old), old)).accepted
    refused = await store.accept(rated("r3", NOW + SEC), NOW + SEC)  # the clock stepped back
    assert not refused.accepted and refused.retry_after == pytest.approx(29.5)
    await store.clock_stepped_back(step, NOW + SEC, ())
    assert (await store.accept(rated("r3", NOW + SEC), NOW + SEC)).accepted  # a second refilled
