"""Adversarial review of cancel (POST /v1/messages/{id}/cancel, /v1/batches/{batch_id}/cancel)
and of the PostgreSQL clock offset (leases and heartbeats in the database's clock).

The review's defects, each pinned by a test that failed before its fix: a message already handed
to an SMSC (a part accepted, or a submit unanswered and awaiting its retry) is no longer
canceled; on PostgreSQL a cancel waits for a row a claim scan holds a moment instead of skipping
it; cancelBatch is tagged with the messages; an instance far from its database still measures its
clock offset. Two more it found are documented limits, not fixed (README, scale-out): the webhook
outbox's leases and a retry's hold stay in each instance's clock. The other tests cover behaviour
checked during the review. A real HTTP server on each store engine (tests/store_engines.py), as
in test_cancel.py; PostgreSQL-only tests use `pg_dsn` as test_store_multi.py does.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.api.openapi import openapi_document  # noqa: E402
from bridge.config import WebhooksConfig  # noqa: E402
from bridge.pipeline.webhooks import WebhookSender  # noqa: E402
from bridge.store.models import (  # noqa: E402
    Account,
    LateAccept,
    ReceiptIn,
    Release,
    SubmitResult,
)
from bridge.store.postgres import PostgresStore  # noqa: E402
from tests import pg_reuse  # noqa: E402
from tests.integration.conftest import ApiServer, Clock, Creds, start_api  # noqa: E402
from tests.integration.test_cancel import _cash, _tomorrow  # noqa: E402

pg_dsn = pg_reuse.migrated_pg_dsn  # a store on the worker's migrated database (tests/pg_reuse.py)

engine = engines.engine

CN = ["+8613800138000", "+8613800138001", "+8613800138002"]
LONG = "Sale tomorrow at every shop of ours, all day long. " * 4  # 204 GSM chars: 2 parts
LEASE = 60_000


@pytest.fixture
def api(engine_api: ApiServer) -> ApiServer:
    return engine_api  # the conftest's server on each store engine


async def _send(
    api: ApiServer, creds: Creds, to: Any, text: str = "Sale tomorrow", **extra: Any
) -> dict[str, Any]:
    r = await api.send(creds, {"to": to, "text": text, **extra})
    assert r.status == 202, r.json
    return r.json


# -- cancel: messages an SMSC may already have -------------------------------------------------


async def test_a_message_with_a_part_already_accepted_is_not_cancelable(api: ApiServer) -> None:
    """A 2-part message: part 1 accepted by the SMSC, then the bind dropped and the dispatcher
    released the message (q_state claimed -> queued, no attempt counted). Part 1 cannot be
    called back: canceling part 2 leaves the recipient half a concatenated message, and the
    cancel answers 200 with status "sent" (not "expired", not refunded, no report), contrary to
    the documented contract. Worse for money: when part 1's receipt says delivered the message
    rolls up to expired/CANCELED and a domestic message is refunded in full although a part was
    delivered (billed by the carrier). It must be 409 NOT_CANCELABLE and part 2 go on."""
    creds = await api.create_account()
    (m,) = (await _send(api, creds, CN[0], LONG))["messages"]
    assert m["segments"] == 2
    mid, now = m["id"], api.ctx.now_ms()
    (work,) = await api.store.claim("inst", 10, now, LEASE)
    assert [s.seq for s in work.segments] == [1, 2]
    await api.store.record_submits(
        [SubmitResult(mid, 1, "sent", "main", "P1", "P1", at=now)],
        [Release(mid, now + 1_000, count_attempt=False)],  # no bind for part 2
        now,
        instance="inst",
    )
    r = await api.request("POST", f"/v1/messages/{mid}/cancel", creds=creds)
    assert (r.status, r.code) == (409, "NOT_CANCELABLE"), (r.status, r.json)
    record = await api.store.get_message(creds.account_id, mid)
    assert record is not None
    assert [s.state for s in record.segment_rows] == ["sent", "queued"]
    assert record.error_code is None


async def test_a_cancel_after_an_unanswered_submit_does_not_refund_what_the_smsc_took(
    api: ApiServer,
) -> None:
    """The submit_sm got no answer (TIMEOUT): the dispatcher releases the message for a retry
    after UNANSWERED_WAIT_MS, exactly so that a late submit_sm_resp can still be recorded. A
    cancel in that window ends it expired/CANCELED and refunds it; the SMSC's late acceptance
    then finds no queued part and is dropped: the message goes to the handset, its receipt
    never matches, the customer is told "canceled" and is not charged. A message whose submit
    is in doubt must not be canceled (or the late acceptance must still count)."""
    creds = await api.create_account()
    before = await _cash(api, creds)
    (m,) = (await _send(api, creds, CN[0]))["messages"]
    mid, now = m["id"], api.ctx.now_ms()
    charged = before - await _cash(api, creds)
    assert charged > 0
    assert [w.id for w in await api.store.claim("inst", 10, now, LEASE)] == [mid]
    # What the dispatcher records for a TIMEOUT: a counted, unanswered attempt, due again in 30 s.
    await api.store.record_submits(
        [], [Release(mid, now + 30_000, unanswered=True)], now, instance="inst"
    )
    await api.request("POST", f"/v1/messages/{mid}/cancel", creds=creds)
    late = LateAccept(mid, 1, "main", "LATE1", "LATE1")
    await api.store.record_late_submits([late], now + 2_000)
    record = await api.store.get_message(creds.account_id, mid)
    assert record is not None
    assert (record.state, record.segments_sent) == ("sent", 1), (record.state, record.error_code)
    assert record.segment_rows[0].smsc_msg_id == "LATE1"
    assert before - await _cash(api, creds) == charged  # still charged: it went out


async def test_refused_with_an_error_is_cancelable_in_flight_at_a_crash_is_not(
    api: ApiServer,
) -> None:
    """Session 35's campaign review: a submit answered ESME_RSYSERR was not taken (the bridge
    itself resends it), yet the counted attempt made the message NOT_CANCELABLE and a campaign
    canceled after a carrier incident went out. One whose claim was taken back at a restart may
    have been on the wire: still not cancelable."""
    creds = await api.create_account()
    refused, crashed = (m["id"] for m in (await _send(api, creds, CN[:2]))["messages"])
    now = api.ctx.now_ms()
    assert sorted(w.id for w in await api.store.claim("inst", 10, now, LEASE)) == sorted(
        [refused, crashed]
    )
    # The dispatcher after an error answer: a counted attempt, answered.
    await api.store.record_submits([], [Release(refused, now + 5_000)], now, instance="inst")
    await api.store.recover("inst", now + 1, frozenset())  # a restart takes the other back
    ok = await api.request("POST", f"/v1/messages/{refused}/cancel", creds=creds)
    assert ok.status == 200 and ok.json["error_code"] == "CANCELED", ok.json
    no = await api.request("POST", f"/v1/messages/{crashed}/cancel", creds=creds)
    assert (no.status, no.code) == (409, "NOT_CANCELABLE"), no.json


async def test_a_batch_lists_its_own_messages_after_a_cancel(api: ApiServer) -> None:
    """Session 35's campaign review: a batch cancel answers counts only, and finding which of a
    campaign's messages went out took a request per message id. GET /v1/messages?batch_id=
    lists them, paginated like any list, on both engines."""
    creds = await api.create_account()
    batch = await _send(api, creds, CN[:3])
    other = await _send(api, creds, CN[0])
    bid = batch["batch_id"]
    r = await api.request("POST", f"/v1/batches/{bid}/cancel", creds=creds)
    assert r.status == 200 and r.json["canceled"] == 3, r.json
    seen: list[dict[str, Any]] = []
    cursor = ""
    for _ in range(5):
        page = await api.request(
            "GET", "/v1/messages", creds=creds, query=f"batch_id={bid}&limit=2&cursor={cursor}"
        )
        assert page.status == 200, page.json
        seen += page.json["messages"]
        cursor = page.json["next_cursor"]
        if cursor is None:
            break
    assert sorted(m["id"] for m in seen) == sorted(m["id"] for m in batch["messages"])
    assert {(m["batch_id"], m["status"], m["error_code"]) for m in seen} == {
        (bid, "expired", "CANCELED")
    }
    assert other["messages"][0]["id"] not in {m["id"] for m in seen}
    nobody = "bat_" + "0" * 26
    empty = await api.request("GET", "/v1/messages", creds=creds, query=f"batch_id={nobody}")
    assert (empty.status, empty.json["messages"]) == (200, [])
    bad = await api.request("GET", "/v1/messages", creds=creds, query="batch_id=bat_1")
    assert (bad.status, bad.code) == (400, "INVALID_FIELD"), bad.json


# -- cancel: PostgreSQL row locks ---------------------------------------------------------------


async def test_pg_a_queued_message_locked_for_a_moment_is_still_canceled(
    pg_dsn: str, tmp_path: Path, clock: Clock
) -> None:
    """cancel_queued takes its rows FOR UPDATE SKIP LOCKED: a queued message that another
    transaction holds at that instant (a claim's scan that parks it or does not take it, an
    un-park, a late acceptance that finds nothing to record) is skipped and answered 409
    NOT_CANCELABLE "message ... is queued", and it stays queued and is sent later; in a batch it
    is counted not_cancelable and the campaign is not stopped. Such holders commit within
    milliseconds: the cancel must wait for the lock (and re-check q_state) instead."""
    api = await start_api(tmp_path, clock, store=PostgresStore(pg_dsn, min_size=1, max_size=10))
    locker = await asyncpg.connect(pg_dsn)
    try:
        creds = await api.create_account()
        sent = await _send(api, creds, CN[:2], scheduled_at=_tomorrow(api))
        ids = sorted(m["id"] for m in sent["messages"])
        tx = locker.transaction()
        await tx.start()
        # What a claim's scan holds on a row it parks (q_state stays 'queued').
        await locker.fetch("SELECT id FROM messages WHERE id = $1 FOR UPDATE", ids[0])
        one = asyncio.create_task(api.request("POST", f"/v1/messages/{ids[0]}/cancel", creds=creds))
        await asyncio.sleep(0.3)
        await tx.rollback()  # the holder leaves it queued
        r = await asyncio.wait_for(one, 10)
        assert r.status == 200, r.json
        assert (r.json["status"], r.json["error_code"]) == ("expired", "CANCELED")
        # The batch: its other message is held the same way while the batch is canceled.
        tx = locker.transaction()
        await tx.start()
        await locker.fetch("SELECT id FROM messages WHERE id = $1 FOR UPDATE", ids[1])
        batch = asyncio.create_task(
            api.request("POST", f"/v1/batches/{sent['batch_id']}/cancel", creds=creds)
        )
        await asyncio.sleep(0.3)
        await tx.rollback()
        rb = await asyncio.wait_for(batch, 10)
        assert rb.json == {"batch_id": sent["batch_id"], "canceled": 1, "not_cancelable": 1}
        record = await api.store.get_message(creds.account_id, ids[1])
        assert record is not None and (record.state, record.error_code) == ("expired", "CANCELED")
    finally:
        await locker.close()
        await api.close()


async def test_pg_a_claim_in_flight_wins_and_the_cancel_says_so(
    pg_dsn: str, tmp_path: Path, clock: Clock
) -> None:
    """Passing: a claim that takes the message while the cancel runs: the message is the
    dispatcher's (409), never canceled and sent both, and its pre-charge is kept."""
    api = await start_api(tmp_path, clock, store=PostgresStore(pg_dsn, min_size=1, max_size=10))
    try:
        creds = await api.create_account()
        before = await _cash(api, creds)
        ids = [m["id"] for m in (await _send(api, creds, CN))["messages"]]
        charged = before - await _cash(api, creds)
        now = api.ctx.now_ms()
        claims = [api.store.claim(f"i{k}", 1, now, LEASE) for k in range(3)]
        cancels = [api.request("POST", f"/v1/messages/{mid}/cancel", creds=creds) for mid in ids]
        out = await asyncio.gather(*claims, *cancels)
        taken = {w.id for got in out[:3] for w in got}
        answers = {mid: r for mid, r in zip(ids, out[3:], strict=True)}
        for mid, r in answers.items():
            if mid in taken:
                assert (r.status, r.code) == (409, "NOT_CANCELABLE")
            else:
                assert r.status == 200 and r.json["error_code"] == "CANCELED"
        kept = before - await _cash(api, creds)
        assert kept * 3 == charged * len(taken)
        for mid in ids:
            record = await api.store.get_message(creds.account_id, mid)
            assert record is not None
            assert (record.error_code == "CANCELED") == (mid not in taken)
    finally:
        await api.close()


# -- cancel: behaviour checked, both engines -----------------------------------------------------


async def test_a_canceled_international_message_is_refunded_once_whatever_runs_after(
    api: ApiServer,
) -> None:
    """Passing: international (billed on submission), nothing submitted: a full refund, once;
    then an opt-out of the same number, the expiry sweep, a stray late acceptance and a second
    cancel change nothing (no second refund, no second status report)."""
    creds = await api.create_account(status_callback_url="https://acme/status")
    before = await _cash(api, creds)
    (m,) = (await _send(api, creds, "+12025550123", scheduled_at=_tomorrow(api)))["messages"]
    mid = m["id"]
    assert await _cash(api, creds) < before
    r = await api.request("POST", f"/v1/messages/{mid}/cancel", creds=creds)
    assert (r.status, r.json["status"], r.json["error_code"]) == (200, "expired", "CANCELED")
    assert await _cash(api, creds) == before
    now = api.ctx.now_ms()
    await api.store.add_optouts(creds.account_id, ["+12025550123"], "api", now)
    await api.store.sweep(now + 3 * 86_400_000, 3_600_000)
    assert await api.store.record_late_submits([LateAccept(mid, 1, "main", "X", "X")], now) == 0
    again = await api.request("POST", f"/v1/messages/{mid}/cancel", creds=creds)
    assert (again.status, again.code) == (409, "NOT_CANCELABLE")
    assert await _cash(api, creds) == before
    jobs = await api.store.claim_webhooks(now + 3 * 86_400_000, 100, LEASE)
    assert [j.payload for j in jobs if j.kind == "status"] == [mid]


async def test_a_canceled_batch_is_reported_in_aliyun_shape(
    api: ApiServer,
) -> None:
    """Passing: an account with report_format "aliyun": each canceled message of the batch
    gets one status report, rendered as an Alibaba SmsReport (success false, err_code
    CANCELED, biz_id the batch id, report_time set)."""
    creds = await api.create_account(
        status_callback_url="https://acme/status", report_format="aliyun"
    )
    sent = await _send(api, creds, CN, scheduled_at=_tomorrow(api))
    batch = sent["batch_id"]
    r = await api.request("POST", f"/v1/batches/{batch}/cancel", creds=creds)
    assert r.json == {"batch_id": batch, "canceled": 3, "not_cancelable": 0}
    jobs = await api.store.claim_webhooks(api.ctx.now_ms(), 100, LEASE)
    status = [j for j in jobs if j.kind == "status"]
    assert len(status) == 3
    sender = WebhookSender(api.store, api.ctx.accounts, WebhooksConfig())
    body = await sender.render(status[0])
    assert body is not None
    assert body["success"] is False and body["err_code"] == "CANCELED"
    assert body["biz_id"] == batch and body["phone_number"] in {n[3:] for n in CN}
    assert body["report_time"] is not None


async def test_a_partly_delivered_batch_cancel_refunds_only_the_unsent(api: ApiServer) -> None:
    """Passing: a batch with one message delivered and two scheduled: the two are canceled and
    refunded, the delivered one stays billed; the counts say so."""
    creds = await api.create_account()
    before = await _cash(api, creds)
    sent = await _send(api, creds, CN)
    charged = before - await _cash(api, creds)
    now = api.ctx.now_ms()
    (w,) = await api.store.claim("inst", 1, now, LEASE)
    await api.store.record_submits(
        [SubmitResult(w.id, 1, "sent", "main", "D1", "D1", at=now)], [], now
    )
    await api.store.apply_receipts(
        [ReceiptIn("main", "D1", "delivered", "DELIVRD", "000", None, now + 1)], now + 1
    )
    r = await api.request("POST", f"/v1/batches/{sent['batch_id']}/cancel", creds=creds)
    assert r.json == {"batch_id": sent["batch_id"], "canceled": 2, "not_cancelable": 1}
    assert (before - await _cash(api, creds)) * 3 == charged


# -- OpenAPI --------------------------------------------------------------------------------------


def test_cancel_batch_is_documented_with_the_messages() -> None:
    """cancelBatch is tagged "account" (the tag rule keys on "essage" in the operation id), so
    the document lists the batch cancel among the account's operations, away from
    cancelMessage and the sends it stops."""
    doc = openapi_document()
    cancel_message = doc["paths"]["/v1/messages/{id}/cancel"]["post"]
    cancel_batch = doc["paths"]["/v1/batches/{batch_id}/cancel"]["post"]
    assert cancel_batch["tags"] == cancel_message["tags"] == ["messages"]


# -- PostgreSQL clock offset -----------------------------------------------------------------------


def _account(aid: str) -> Account:
    now = int(time.time() * 1000)
    return Account(
        id=aid,
        name=f"name-{aid}",
        tps=0,
        status_callback_url="https://cb.example/st",
        webhook_secret_enc=b"s",
        created_at=now,
        updated_at=now,
    )


class _SlowReadingClock:
    """A host clock 10 minutes ahead whose two readings around each query are 80 ms apart: what
    an instance sees of a database 80 ms away (another region, or a loaded server)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return time.time() + 600 + 0.08 * self.calls


async def test_pg_an_instance_far_from_the_database_still_measures_its_offset(pg_dsn: str) -> None:
    """_measure_offset drops every reading whose round trip is over 50 ms, and the offset starts
    at 0: an instance whose database is more than 50 ms away never measures it, silently, and
    runs with the very defect the commit fixes (its clock 10 minutes ahead: the others' live
    leases look expired to its reclaim/recover). A reading 80 ms wide is still within 40 ms: use
    it while none better was taken (or the best of several), never keep 0 for lack of one."""
    b = PostgresStore(pg_dsn, min_size=1, max_size=2, local_clock=_SlowReadingClock())
    await b.open()
    try:
        real = int(time.time() * 1000)
        await b.heartbeat("inst-b", "all", real + 600_000, "{}")
        assert abs(b.clock_offset_ms + 600_000) < 1_000, b.clock_offset_ms
    finally:
        await b.close()


async def test_pg_offset_readings_convert_both_ways(pg_dsn: str) -> None:
    """Passing: an instance behind the database (negative skew) as well as one ahead: claims,
    renewals, heartbeats and instances() agree across the two; the reclaim of a dead instance's
    claims waits for its heartbeat to be DEAD_AFTER_MS old in the database's clock."""
    behind = PostgresStore(pg_dsn, min_size=1, max_size=4, local_clock=lambda: time.time() - 300)
    ahead = PostgresStore(pg_dsn, min_size=1, max_size=4, local_clock=lambda: time.time() + 300)
    await asyncio.gather(behind.open(), ahead.open())
    try:
        assert abs(behind.clock_offset_ms - 300_000) < 1_000
        assert abs(ahead.clock_offset_ms + 300_000) < 1_000
        real = int(time.time() * 1000)
        t_behind, t_ahead = real - 300_000, real + 300_000
        await behind.heartbeat("i-behind", "all", t_behind, "{}")
        await ahead.heartbeat("i-ahead", "all", t_ahead, "{}")
        seen = {i: at for i, _r, at, _s in await ahead.instances(t_ahead - 5_000)}
        assert set(seen) == {"i-behind", "i-ahead"}
        assert abs(seen["i-behind"] - t_ahead) < 1_000
        seen = {i: at for i, _r, at, _s in await behind.instances(t_behind - 5_000)}
        assert abs(seen["i-ahead"] - t_behind) < 1_000
    finally:
        await behind.close()
        await ahead.close()
