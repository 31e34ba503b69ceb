"""Submit results of a claim that is no longer theirs, and messages claimed with nothing to send
(session 49's second look at record_submits and the claims, both engines).

1. A part's end (failed, unknown) ended the parts after it (PREVIOUS_PART_FAILED / _UNKNOWN)
   even when its own part was no longer queued, and whoever held the message: a late result
   from an instance whose lease ran out, its message requeued and taken by another instance
   that is sending the parts now, ended them under that one. Its accepted parts then counted
   for nothing (each a part left queued no more), their receipts matched nothing: billed by
   the carrier, never delivered as far as we knew. The message row took the late result's SMSC
   too. Now a part's end is recorded only while no other instance holds the message, and ends
   the parts after it only when its own part was still queued; a part accepted is recorded
   whoever holds the message (it did leave, and its receipt must match).
2. A queued message with no part left queued (left by the defect of test_result_batches.py, or
   any other way) was claimed, released by the dispatcher ("nothing left to send") and claimed
   again at once, for ever; one whose validity had passed was handed in as nothing and stayed
   claimed until its lease ran out, whose requeue counted a submit unanswered that never was
   (its daily place then kept). Now a claim rolls such a message up from its parts instead of
   handing it out (final, refunded, one status report), and so does a requeue of an expired
   lease, without counting an unanswered submit.

The store functions on each engine; on PostgreSQL the late results come from a second store
instance, as from a second daemon.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import ReceiptIn, Release, SubmitResult  # noqa: E402
from tests.integration.test_billing_edges import START, accept, cash, make_account  # noqa: E402
from tests.integration.test_result_batches import LEASE, NOW, three_parts  # noqa: E402
from tests.store_engines import EngineHandle  # noqa: E402

engine = engines.engine
store = engines.store

LATER = NOW + LEASE + 1  # A's lease has run out


@pytest.fixture
async def other(engine: EngineHandle, store: Store) -> AsyncIterator[Store]:
    """The second daemon's store: a store of its own on PostgreSQL; on SQLite (one daemon a
    file) the same store under another instance name."""
    if not engine.multi_instance:
        yield store
        return
    s = engine.new_store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def _sql(engine: EngineHandle, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """A statement on the test's database from a connection of its own (SQLite's ? marks are
    written $1, $2 ... here for both)."""
    if engine.name == "sqlite":
        for i in range(len(args), 0, -1):
            sql = sql.replace(f"${i}", f"?{i}")
        c = sqlite3.connect(engine.location)
        try:
            with c:
                return c.execute(sql, args).fetchall()
        finally:
            c.close()
    pc = await asyncpg.connect(engine.location)
    try:
        return [tuple(r) for r in await pc.fetch(sql, *args)]
    finally:
        await pc.close()


def sent(mid: str, seq: int, msg_id: str, at: int) -> SubmitResult:
    return SubmitResult(mid, seq, "sent", "smscA", msg_id, msg_id, at=at)


def ended(mid: str, seq: int, outcome: str, at: int) -> SubmitResult:
    return SubmitResult(mid, seq, outcome, "smscB", error_code="ESME_RSYSERR", at=at)


async def _taken_over(store: Store, other: Store) -> list[int]:
    """m3 claimed by A, its lease run out, taken back and claimed by B: B's parts to send."""
    await make_account(store)
    await accept(store, three_parts("m3"), amount=3 * START)
    assert [w.id for w in await store.claim("inst-A", 10, NOW, LEASE)] == ["m3"]
    assert (await other.reclaim(LATER, frozenset()))["requeued"] == 1
    work = await other.claim("inst-B", 10, LATER, LEASE)
    assert [w.id for w in work] == ["m3"]
    return [s.seq for s in work[0].segments]


async def _parts(store: Store) -> list[tuple[str, str | None]]:
    m = await store.get_message("acc_a", "m3")
    assert m is not None
    return [(s.state, s.error_code) for s in m.segment_rows]


async def _delivered(store: Store, ids: list[str], at: int) -> int:
    out = await store.apply_receipts(
        [ReceiptIn("smscA", i, "delivered", "DELIVRD", None, at, at, raw="x") for i in ids], at
    )
    return out.matched


@pytest.mark.parametrize("outcome", ["failed", "unknown"])
async def test_a_late_end_of_a_part_no_longer_queued_ends_no_later_part(
    store: Store, other: Store, outcome: str
) -> None:
    """B sent part 1 and was throttled at part 2 (the message back in the queue, parts 2 and 3
    to send); then A's late answer for part 1, an end. It ended parts 2 and 3 under B."""
    assert await _taken_over(store, other) == [1, 2, 3]
    b1 = sent("m3", 1, "b1", LATER)
    release = Release("m3", LATER + 1_000, count_attempt=False)
    await other.record_submits([b1], [release], LATER, instance="inst-B")
    await store.record_submits([ended("m3", 1, outcome, LATER)], [], LATER, instance="inst-A")
    assert await _parts(store) == [("sent", None), ("queued", None), ("queued", None)]
    m = await store.get_message("acc_a", "m3")
    assert m is not None
    assert (m.state, m.smsc) == ("queued", "smscA"), "the late result's SMSC on the row"
    # The rest goes out, and the message is delivered.
    work = await other.claim("inst-B", 10, LATER + 1_000, LEASE)
    assert [(w.id, [s.seq for s in w.segments]) for w in work] == [("m3", [2, 3])]
    at = LATER + 2_000
    results = [sent("m3", 2, "b2", at), sent("m3", 3, "b3", at)]
    await other.record_submits(results, [], at, instance="inst-B")
    assert await _delivered(other, ["b1", "b2", "b3"], at) == 3
    m = await store.get_message("acc_a", "m3")
    assert m is not None and m.state == "delivered"


@pytest.mark.parametrize("outcome", ["failed", "unknown"])
async def test_a_late_end_from_a_lost_claim_leaves_the_new_holders_parts(
    engine: EngineHandle, store: Store, other: Store, outcome: str
) -> None:
    """A sent part 1 and got an end for part 2 after its lease ran out, while B, holding the
    message now, sends all three parts. A's accepted part is recorded (it left); its end is not:
    part 2 and 3 are B's to send, and B's results and receipts count."""
    assert await _taken_over(store, other) == [1, 2, 3]
    charged = await cash(store)
    late = [sent("m3", 1, "a1", LATER), ended("m3", 2, outcome, LATER)]
    await store.record_submits(late, [], LATER, instance="inst-A")
    assert await _parts(store) == [("sent", None), ("queued", None), ("queued", None)]
    (claim,) = await _sql(engine, "SELECT q_state, q_claimed_by FROM messages")
    assert claim == ("claimed", "inst-B"), "B's claim was ended under it"
    at = LATER + 1_000
    b = [sent("m3", 1, "b1", at), sent("m3", 2, "b2", at), sent("m3", 3, "b3", at)]
    await other.record_submits(b, [], at, instance="inst-B")
    m = await store.get_message("acc_a", "m3")
    assert m is not None
    assert (m.state, m.segments_sent, m.smsc) == ("sent", 3, "smscA")
    # A's part 1 (the one recorded) and B's parts 2 and 3 are matched: delivered.
    assert await _delivered(other, ["a1", "b2", "b3"], at) == 3
    m = await store.get_message("acc_a", "m3")
    assert m is not None and m.state == "delivered"
    assert await cash(store) == charged, "a delivered message keeps its charge"


# -- claimed with nothing to send ------------------------------------------------------------------


async def _left_queued(engine: EngineHandle, store: Store, parts: list[tuple[str, str]]) -> None:
    """m3 accepted, then its parts ended as `parts` (state, error code) with the message left
    queued, as the defect of test_result_batches.py left such messages."""
    store.quota_tz = "UTC"  # the day test_billing_edges.accept counts the message in
    await make_account(store)
    await store.update_account("acc_a", {"status_callback_url": "https://cb.example/s"}, NOW)
    await accept(store, three_parts("m3"), amount=3 * START)
    for seq, (state, error) in enumerate(parts, 1):
        await _sql(
            engine,
            "UPDATE segments SET state=$1, error_code=$2, done_at=$3 "
            "WHERE message_id='m3' AND seq=$4",
            state,
            error,
            NOW,
            seq,
        )


async def _day_count(engine: EngineHandle) -> int:
    return sum(r[0] for r in await _sql(engine, "SELECT messages FROM daily_counts"))


async def _reports(store: Store) -> list[tuple[str, str | None]]:
    return [(j.kind, j.payload) for j in await store.claim_webhooks(NOW + 10_000, 100, LEASE)]


async def test_a_queued_message_with_no_part_to_send_ends_at_its_first_claim(
    engine: EngineHandle, store: Store
) -> None:
    failed = ("failed", "ESME_RINVDSTADR")
    await _left_queued(engine, store, [failed] + [("failed", "PREVIOUS_PART_FAILED")] * 2)
    charged = await cash(store)
    assert await store.claim("inst-1", 10, NOW, LEASE) == [], "handed out with nothing to send"
    m = await store.get_message("acc_a", "m3")
    assert m is not None
    assert (m.state, m.error_code, m.done_at) == ("failed", "ESME_RINVDSTADR", NOW)
    assert await cash(store) == charged + 3 * START, "a failed domestic message is refunded"
    assert await _reports(store) == [("status", "m3")]
    assert await store.queue_depth() == 0
    assert await store.claim("inst-1", 10, NOW + 60_000, LEASE) == []
    # Not counted as an unanswered submit, nor as an attempt that sent anything.
    assert await _sql(engine, "SELECT q_state, q_unanswered FROM messages") == [("done", 0)]


async def test_one_that_never_went_out_gives_back_its_place_at_its_first_claim(
    engine: EngineHandle, store: Store
) -> None:
    await _left_queued(engine, store, [("expired_unsent", "VALIDITY_EXPIRED")] * 3)
    assert await _day_count(engine) == 1
    assert await store.claim("inst-1", 10, NOW, LEASE) == []
    m = await store.get_message("acc_a", "m3")
    assert m is not None and m.state == "expired"
    assert await _day_count(engine) == 0, "its daily place kept"
    assert await _reports(store) == [("status", "m3")]


async def test_one_whose_parts_all_went_out_leaves_the_queue_and_takes_its_receipts(
    engine: EngineHandle, store: Store
) -> None:
    await _left_queued(engine, store, [("sent", None)] * 3)
    for seq in (1, 2, 3):
        await _sql(
            engine,
            "UPDATE segments SET smsc='smscA', smsc_msg_id=$1, done_at=NULL "
            "WHERE message_id='m3' AND seq=$2",
            f"x{seq}",
            seq,
        )
    assert await store.claim("inst-1", 10, NOW, LEASE) == []
    m = await store.get_message("acc_a", "m3")
    assert m is not None and m.state == "sent"
    assert await store.queue_depth() == 0
    assert await _delivered(store, ["x1", "x2", "x3"], NOW + 1_000) == 3
    m = await store.get_message("acc_a", "m3")
    assert m is not None and m.state == "delivered"


async def test_a_lease_run_out_with_no_part_queued_counts_no_unanswered_submit(
    engine: EngineHandle, store: Store
) -> None:
    """A claimed message whose parts all ended meanwhile: its lease's end rolls it up, and
    counts no unanswered submit (none was made: nothing was left to send), so one that never
    went out gives back its daily place."""
    store.quota_tz = "UTC"  # the day test_billing_edges.accept counts the message in
    await make_account(store)
    await accept(store, three_parts("m3"), amount=3 * START)
    assert [w.id for w in await store.claim("inst-1", 10, NOW, LEASE)] == ["m3"]
    await _sql(
        engine,
        "UPDATE segments SET state='expired_unsent', error_code='VALIDITY_EXPIRED', done_at=$1",
        NOW,
    )
    out = await store.reclaim(LATER, frozenset())
    assert out["requeued"] + out["marked_unknown"] <= 1
    m = await store.get_message("acc_a", "m3")
    assert m is not None and m.state == "expired", "left queued with nothing to send"
    assert await _sql(engine, "SELECT q_state, q_unanswered FROM messages") == [("done", 0)]
    assert await _day_count(engine) == 0


@pytest.mark.parametrize("how", ["claim", "lease"])
async def test_one_whose_parts_all_went_out_reports_sent_either_way(
    engine: EngineHandle, store: Store, how: str
) -> None:
    """With webhooks.send_intermediate, such a message's roll-up to "sent" queues its "sent"
    report whether a claim or a lease's end finds it (session 49's review: the lease's end
    rolled it up without the setting, and the report was never sent)."""
    store.send_intermediate = True
    await _left_queued(engine, store, [("sent", None)] * 3)
    await _sql(engine, "UPDATE segments SET smsc='smscA', done_at=NULL")
    if how == "claim":
        assert await store.claim("inst-1", 10, NOW, LEASE) == []
    else:
        await _sql(
            engine,
            "UPDATE messages SET q_state='claimed', q_claimed_by='inst-1', q_lease_until=$1",
            NOW + LEASE,
        )
        await store.reclaim(LATER, frozenset())
    m = await store.get_message("acc_a", "m3")
    assert m is not None and m.state == "sent"
    jobs = await store.claim_webhooks(LATER + 10_000, 100, LEASE)
    assert [(j.kind, j.payload) for j in jobs] == [("event", "m3")], "no sent report"
