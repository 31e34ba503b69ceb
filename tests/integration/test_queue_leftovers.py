"""Session 50's look at what session 49's review left of the queue (both engines):

1. A queued message with no part row at all (none was ever written, or they were lost: a
   restore, a hand edit) was handed out by every claim with nothing to send; the dispatcher
   released it, due at once, and the next claim took it again, for ever (session 49's claim
   roll-up could not decide such a message: the roll-up skipped a message without parts). Now
   it ends unsent (`expired`, NO_PARTS): refunded, its daily place given back, one report.
2. A submit accepted for an instance whose lease ran out is recorded (the part left), but its
   roll-up also wrote the claim's route (q_route) on the row another instance holds now: that
   holder's restart then took its in-flight parts for sent on the old holder's SMSC
   (`in_flight_on_restart: unknown`) or resent parts its own SMSC may have delivered.
3. The receipt-timeout sweep read at most 10,000 candidates (store.base.SWEEP_CANDIDATES), the
   same first ones each time: when all of them were split messages waiting longer for another
   SMSC (lifecycle.split_deadline), the due messages behind them were never swept. Now a sweep
   whose page was full and held messages back goes on after it at the next sweep.
4. A batch with two ends for parts of one message (the dispatcher makes none): SQLite recorded
   them in the batch's order, PostgreSQL by kind (every refusal, then expiries, then unknowns),
   so the engines disagreed, and neither followed the parts' order. Now both record a
   message's ends in part order, as the parts go out: the first end of a part still queued
   stands and ends the parts after it; an end for a part that ended so records nothing.
5. The reports a claim's roll-up queues (session 49) waited for the webhook sender's next poll
   (up to `idle_max_s`, 1 s by default, when idle): the other roll-ups wake it. Now the
   dispatcher wakes it when a claim queued reports (Store.claim_reports).
"""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from bridge.accounts import AccountService
from bridge.config import WebhooksConfig
from bridge.crypto import Sealer
from bridge.pipeline.webhooks import WebhookSender
from bridge.store import base
from bridge.store.models import SubmitResult

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from tests.connectors import StandIn, dispatcher  # noqa: E402
from tests.e2e.harness import wait_until  # noqa: E402
from tests.integration.test_billing_edges import (  # noqa: E402
    START,
    accept,
    cash,
    make_account,
    msg,
)
from tests.integration.test_late_results import (  # noqa: E402
    LATER,
    _day_count,
    _reports,
    _sql,
    other,
    sent,
)
from tests.integration.test_result_batches import LEASE, NOW, three_parts  # noqa: E402
from tests.integration.test_split_receipt_wait import (  # noqa: E402
    DAY,
    HOUR,
    MARGIN,
    SENT,
    TIMEOUT,
    split,
    state,
)
from tests.store_engines import EngineHandle  # noqa: E402

engine = engines.engine
store = engines.store
__all__ = ["other"]  # the fixture, imported for the tests below


async def _without_parts(engine: EngineHandle, store: Store) -> int:
    """m3 accepted and its part rows gone; the account's cash after the charge."""
    store.quota_tz = "UTC"  # the day test_billing_edges.accept counts the message in
    await make_account(store)
    await store.update_account("acc_a", {"status_callback_url": "https://cb.example/s"}, NOW)
    await accept(store, three_parts("m3"), amount=3 * START)
    await _sql(engine, "DELETE FROM segments WHERE message_id = 'm3'")
    return await cash(store)


async def test_a_queued_message_with_no_part_row_ends_unsent_at_its_first_claim(
    engine: EngineHandle, store: Store
) -> None:
    charged = await _without_parts(engine, store)
    assert await _day_count(engine) == 1
    work = await store.claim("inst-1", 10, NOW, LEASE)
    assert [w.id for w in work] == [], "handed out with nothing to send"
    m = await store.get_message("acc_a", "m3")
    assert m is not None
    assert (m.state, m.error_code, m.done_at) == ("expired", "NO_PARTS", NOW)
    assert await cash(store) == charged + 3 * START, "not refunded"
    assert await _day_count(engine) == 0, "its daily place kept"
    assert await _reports(store) == [("status", "m3")]
    assert await store.queue_depth() == 0
    assert await store.claim("inst-1", 10, NOW + 60_000, LEASE) == []
    assert await _sql(engine, "SELECT q_state, q_unanswered FROM messages") == [("done", 0)]
    assert await _reports(store) == [], "reported twice"


async def test_one_ended_for_want_of_parts_counts_withdrawn_in_the_stats(
    engine: EngineHandle, store: Store
) -> None:
    """NO_PARTS ends a message unsent by the system's doing, refunded, its place given back: the
    `withdrawn` of /v1/stats, as an opt-out's, not `failed` (what carriers failed or what
    expired waiting), where session 50 counted it."""
    await _without_parts(engine, store)
    assert await store.claim("inst-1", 10, NOW, LEASE) == []
    (day,) = await store.stats("acc_a", 0, NOW + DAY, 0)
    assert {k: day[k] for k in ("submitted", "failed", "withdrawn", "pending")} == {
        "submitted": 1,
        "failed": 0,
        "withdrawn": 1,
        "pending": 0,
    }


async def test_a_claimed_one_without_parts_ends_at_its_leases_end(
    engine: EngineHandle, store: Store
) -> None:
    """Claimed while it had its parts, which are gone when its lease runs out."""
    store.quota_tz = "UTC"
    await make_account(store)
    await accept(store, three_parts("m3"), amount=3 * START)
    assert [w.id for w in await store.claim("inst-1", 10, NOW, LEASE)] == ["m3"]
    await _sql(engine, "DELETE FROM segments WHERE message_id = 'm3'")
    await store.reclaim(LATER, frozenset())
    m = await store.get_message("acc_a", "m3")
    assert m is not None and (m.state, m.error_code) == ("expired", "NO_PARTS")
    assert await _sql(engine, "SELECT q_state, q_unanswered FROM messages") == [("done", 0)]


@pytest.mark.parametrize("mode", ["unknown", "resend"])
async def test_a_late_submit_of_a_lost_claim_leaves_the_new_holders_route(
    engine: EngineHandle, store: Store, other: Store, mode: str
) -> None:
    """A's lease ran out, B claimed m3 and routed it to smscB (its first part took a slot);
    then A's late submit_sm_resp for part 1 (smscA). Recorded (it left), but B's route stays
    B's: B's restart decides by smscB's in_flight_on_restart, not smscA's."""
    await make_account(store)
    await accept(store, three_parts("m3"), amount=3 * START)
    assert [w.id for w in await store.claim("inst-A", 10, NOW, LEASE)] == ["m3"]
    assert (await other.reclaim(LATER, frozenset()))["requeued"] == 1
    assert [w.id for w in await other.claim("inst-B", 10, LATER, LEASE)] == ["m3"]
    assert await other.record_routes("inst-B", [("m3", "smscB")]) == {"m3"}
    assert await store.record_routes("inst-A", [("m3", "smscA")]) == set()
    await store.record_submits([sent("m3", 1, "a1", LATER)], [], LATER, instance="inst-A")
    assert await _sql(engine, "SELECT q_claimed_by, q_route FROM messages") == [("inst-B", "smscB")]
    # B dies with parts 2 and 3 in flight on smscB.
    unknown = frozenset({"smscB"} if mode == "unknown" else {"smscA"})
    out = await other.recover("inst-B", LATER + 1, unknown)
    if mode == "unknown":  # smscB's parts may have left: written off, never sent twice
        assert out == {"requeued": 0, "marked_unknown": 1}
    else:  # smscB resends: back in the queue with parts 2 and 3 to send
        assert out == {"requeued": 1, "marked_unknown": 0}
        work = await other.claim("inst-B", 10, LATER + 2, LEASE)
        assert [(w.id, [s.seq for s in w.segments]) for w in work] == [("m3", [2, 3])]


async def test_a_claims_roll_up_wakes_the_webhook_sender(
    engine: EngineHandle, store: Store
) -> None:
    """An idle sender polls every 5 s here; the report of a message a claim ended (no part to
    send) is claimed for sending well within that: the dispatcher woke the sender."""
    await _without_parts(engine, store)
    loop = asyncio.get_running_loop()
    claimed: list[tuple[float, list[str | None]]] = []  # the sender's claims: when, which
    claim_webhooks = store.claim_webhooks

    async def watched(*args: Any, **kw: Any) -> Any:
        jobs = await claim_webhooks(*args, **kw)
        claimed.append((loop.time(), [j.payload for j in jobs]))
        return jobs

    store.claim_webhooks = watched  # type: ignore[method-assign]
    accounts = AccountService(store, Sealer(os.urandom(32)))
    sender = WebhookSender(
        store, accounts, WebhooksConfig(), poll_s=5.0, idle_max_s=5.0, gather_s=0.0
    )
    sending = asyncio.create_task(sender.run())
    d = dispatcher(store, StandIn("t1", 10), idle_s=5.0, idle_max_s=5.0)
    d.on_reports = sender.wake
    dispatching = None
    try:
        await wait_until(lambda: len(claimed) >= 1, 5.0, 0.005)  # idle: the next poll in 5 s
        began = loop.time()
        dispatching = asyncio.create_task(d.run())  # its first claim ends m3
        await wait_until(lambda: any(ids for _t, ids in claimed), 3.0, 0.005)
        at, ids = next((t, ids) for t, ids in claimed if ids)
        assert ids == ["m3"]
        assert at - began < 1.0, at - began
    finally:
        await d.stop(1.0)
        if dispatching is not None:
            dispatching.cancel()
        await sender.stop()
        await sending


async def test_due_messages_behind_a_full_page_of_split_ones_are_swept(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two candidates a sweep here (10,000 in production): the first two by the sweep's order
    (sent first, smaller ids) are split messages whose first part's SMSC waits 5 days; the one
    behind them is due. It ended unknown at no sweep."""
    monkeypatch.setattr(base, "SWEEP_CANDIDATES", 2)
    await make_account(store)
    await split(store, "a1", "smscA", "smscB")
    await split(store, "a2", "smscA", "smscB")
    await accept(store, replace(msg("z1", NOW), billable_units=1))
    assert [w.id for w in await store.claim("inst-1", 10, NOW + 2000, LEASE)] == ["z1"]
    one = SubmitResult("z1", 1, "sent", "smscB", "z1-1", "z1-1", at=NOW + 2000)
    await store.record_submits([one], [], NOW + 2000, instance="inst-1")
    validity = {"smscA": 5 * DAY}
    at = NOW + 2000 + TIMEOUT + HOUR
    swept = [(await store.sweep(at + i, TIMEOUT, smsc_validity_ms=validity))["timed_out"]
             for i in range(3)]  # fmt: skip
    assert sum(swept) == 1, swept
    assert [await state(store, m) for m in ("a1", "a2", "z1")] == ["sent", "sent", "unknown"]
    # And the held-back ones are swept at their time.
    end = SENT + 5 * DAY + MARGIN
    swept = [(await store.sweep(end + i, TIMEOUT, smsc_validity_ms=validity))["timed_out"]
             for i in range(2)]  # fmt: skip
    assert sum(swept) == 2, swept


E1, E2 = "ESME_RINVDSTADR", "ESME_RX_R_APPN"
FAILED_AFTER = ("failed", "PREVIOUS_PART_FAILED")
UNKNOWN_AFTER = ("timeout", "PREVIOUS_PART_UNKNOWN")


def _end(seq: int, outcome: str, error: str | None = None) -> SubmitResult:
    return SubmitResult("m3", seq, outcome, "smscA", error_code=error, at=NOW)


@pytest.mark.parametrize(
    ("batch", "parts", "final"),
    [
        (
            [_end(2, "failed", E2), _end(1, "failed", E1)],
            [("failed", E1), FAILED_AFTER, FAILED_AFTER],
            ("failed", E1),
        ),
        (
            [_end(2, "failed", E2), _end(1, "unknown", "TIMEOUT")],
            [("timeout", "TIMEOUT"), UNKNOWN_AFTER, UNKNOWN_AFTER],
            ("unknown", "TIMEOUT"),
        ),
        (
            [_end(1, "unknown", "TIMEOUT"), _end(2, "failed", E2)],
            [("timeout", "TIMEOUT"), UNKNOWN_AFTER, UNKNOWN_AFTER],
            ("unknown", "TIMEOUT"),
        ),
        (
            [_end(3, "expired"), _end(1, "failed", E1)],
            [("failed", E1), FAILED_AFTER, FAILED_AFTER],
            ("failed", E1),
        ),
        (
            [_end(2, "unknown", "TIMEOUT"), _end(1, "expired")],
            [("expired_unsent", "VALIDITY_EXPIRED"), ("timeout", "TIMEOUT"), UNKNOWN_AFTER],
            ("expired", "VALIDITY_EXPIRED"),
        ),
        (
            [_end(1, "failed", E1), _end(1, "failed", E2)],
            [("failed", E1), FAILED_AFTER, FAILED_AFTER],
            ("failed", E1),
        ),
    ],
    ids=["failed-2-1", "failed-2-unknown-1", "unknown-1-failed-2", "expired-3-failed-1",
         "unknown-2-expired-1", "failed-1-twice"],
)  # fmt: skip
async def test_a_batch_with_two_ends_of_one_message_is_recorded_in_part_order(
    store: Store, batch: list[SubmitResult], parts: list[tuple[str, str]], final: tuple[str, str]
) -> None:
    await make_account(store)
    await accept(store, three_parts("m3"), amount=3 * START)
    assert [w.id for w in await store.claim("inst-1", 10, NOW, LEASE)] == ["m3"]
    await store.record_submits(batch, [], NOW, instance="inst-1")
    m = await store.get_message("acc_a", "m3")
    assert m is not None
    assert [(s.state, s.error_code) for s in m.segment_rows] == parts
    assert (m.state, m.error_code) == final
