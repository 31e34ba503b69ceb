"""A submit_sm_resp that arrives after its response timeout is used, not thrown away.

A congested SMSC answers late: by then the part was reported TIMEOUT and its message released for
a retry. If the late answer is an acceptance, the handset gets (or got) the message, so the retry
must not send it again, and the receipt must match the id of that acceptance. Store contract on
both engines, then the whole path (session -> protocol -> connector -> dispatcher -> store) over
real TCP against an SMSC that answers late.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from bridge.config import SmscConfig
from bridge.pipeline.dispatcher import Dispatcher, msgid_rule, unanswered_wait_ms
from bridge.smpp import constants as C
from bridge.smpp.codec import MessageIdResp, Pdu, ShortMessage
from bridge.smpp.connector import LateSubmit
from bridge.smpp.msgid import normalize_receipt_id
from bridge.smpp.receipt import parse_receipt_text, state_for_stat
from bridge.smpp.router import Router
from bridge.store.base import Store
from bridge.store.models import LateAccept, ReceiptIn, Release

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from tests.integration.test_dispatch_edges import Clock  # noqa: E402
from tests.integration.test_smpp_connector import (  # noqa: E402
    Conn,
    FakeSmsc,
    eventually,
    part,
    running,
    smsc_cfg,
)
from tests.integration.test_store import (  # noqa: E402
    LEASE,
    NOW,
    accept,
    account,
    get,
    message,
    rcpt,
    sent,
)

engine = engines.engine
store = engines.store

SMSC = "smscA"
# An unanswered attempt's resend waits this long (the late-answer window of an SMSC whose
# response_timeout_s is at most 12 s: 60 s).
RETRY_MS = unanswered_wait_ms(1.0)


def late(mid: str, seq: int = 1, msg_id: str = "X1", smsc: str = SMSC) -> LateAccept:
    return LateAccept(mid, seq, smsc, msg_id, msg_id.lower())


async def released_after_timeout(store: Store, mid: str, parts: int = 1) -> None:
    """Accept, claim, and give the message back as the dispatcher does after a TIMEOUT."""
    await accept(store, message(mid, parts=parts))
    assert [w.id for w in await store.claim("inst-1", 10, NOW, LEASE)] == [mid]
    await store.record_submits(
        [], [Release(mid, NOW + RETRY_MS, count_attempt=True, unanswered=True)], NOW
    )


# ------------------------------------------------------------------------- store contract


async def test_a_late_acceptance_of_a_released_message_is_recorded_sent(store: Store) -> None:
    await store.create_account(account())
    await released_after_timeout(store, "m0")
    assert await store.record_late_submits([late("m0")], NOW + 100) == 1
    rec = await get(store, "m0")
    assert rec.state == "sent" and rec.smsc == SMSC and rec.segments_sent == 1
    (seg,) = rec.segment_rows  # its smsc_msg_id is the raw id, as the SMSC wrote it
    assert (seg.state, seg.smsc, seg.smsc_msg_id) == ("sent", SMSC, "x1")
    assert seg.submitted_at == NOW + 100
    # nothing left to send: out of the queue, so the retry never comes
    assert await store.queue_depth() == 0
    assert await store.claim("inst-1", 10, NOW + 10 * RETRY_MS, LEASE) == []
    # and the receipt for the late id matches
    out = await store.apply_receipts([rcpt(SMSC, "X1")], NOW + 200)
    assert (out.matched, out.pending) == (1, 0)
    assert (await get(store, "m0")).state == "delivered"


async def test_a_receipt_that_came_first_is_applied(store: Store) -> None:
    await store.create_account(account())
    await released_after_timeout(store, "m0")
    out = await store.apply_receipts([rcpt(SMSC, "X1")], NOW + 50)
    assert (out.matched, out.pending) == (0, 1)
    assert await store.record_late_submits([late("m0")], NOW + 100) == 1
    rec = await get(store, "m0")
    assert rec.state == "delivered" and rec.segments_delivered == 1
    assert await store.count_unmatched_receipts(NOW + 10**9) == (0, 0)


async def test_a_message_claimed_again_is_left_to_its_resend(store: Store) -> None:
    """The retry already holds it: its part may be on the wire, nothing can call it back."""
    await store.create_account(account())
    await released_after_timeout(store, "m0")
    again = await store.claim("inst-1", 10, NOW + RETRY_MS, LEASE)
    assert [w.id for w in again] == ["m0"]
    assert await store.record_late_submits([late("m0")], NOW + RETRY_MS + 1) == 0
    rec = await get(store, "m0")
    assert rec.state == "queued" and [s.state for s in rec.segment_rows] == ["queued"]
    # the resend's own result still lands
    await store.record_submits([sent("m0", 1, SMSC, "y2")], [], NOW + RETRY_MS + 2)
    assert [s.smsc_msg_id for s in (await get(store, "m0")).segment_rows] == ["Y2"]
    # and a late answer after the resend was recorded changes nothing
    assert await store.record_late_submits([late("m0")], NOW + RETRY_MS + 3) == 0
    assert [s.smsc_msg_id for s in (await get(store, "m0")).segment_rows] == ["Y2"]


async def test_each_part_once_and_unknown_parts_ignored(store: Store) -> None:
    await store.create_account(account())
    await released_after_timeout(store, "m0")
    items = [late("m0"), late("m0", msg_id="X2"), late("m0", seq=2), late("nope")]
    assert await store.record_late_submits(items, NOW + 100) == 1
    assert [s.smsc_msg_id for s in (await get(store, "m0")).segment_rows] == ["x1"]
    assert await store.record_late_submits([late("m0")], NOW + 101) == 0
    assert await store.record_late_submits([], NOW + 102) == 0


async def test_a_late_middle_part_leaves_the_rest_queued(store: Store) -> None:
    """Part 1 accepted in time, part 2 timed out (part 3 not sent): the late acceptance of part
    2 leaves only part 3 for the retry."""
    await store.create_account(account())
    await accept(store, message("m0", parts=3))
    assert [w.id for w in await store.claim("inst-1", 10, NOW, LEASE)] == ["m0"]
    await store.record_submits(
        [sent("m0", 1, SMSC, "p1")],
        [Release("m0", NOW + RETRY_MS, count_attempt=True, unanswered=True)],
        NOW,
    )
    assert await store.record_late_submits([late("m0", seq=2, msg_id="P2")], NOW + 100) == 1
    rec = await get(store, "m0")
    assert [s.state for s in rec.segment_rows] == ["sent", "sent", "queued"]
    (work,) = await store.claim("inst-1", 10, NOW + RETRY_MS, LEASE)
    assert [s.seq for s in work.segments] == [3]


# ------------------------------------------------------------------------- over TCP


def _receipt_handler(store: Store, cfg: SmscConfig, clock: Clock) -> Callable[..., Awaitable[int]]:
    """The receipt half of the pipeline, reduced to what these tests need."""
    rule = msgid_rule(cfg)

    async def on_deliver(name: str, body: ShortMessage) -> int:
        text = body.short_message.decode()
        fields = parse_receipt_text(text)
        key = normalize_receipt_id(fields["id"], rule)
        state = str(state_for_stat(fields["stat"]))
        r = ReceiptIn(name, key, state, fields["stat"], fields.get("err"), None, clock.ms, text)
        await store.apply_receipts([r], clock.ms)
        return C.ESME_ROK

    return on_deliver


def _receipt(msg_id: str) -> ShortMessage:
    text = f"id:{msg_id} sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 "
    return ShortMessage(
        source_addr="8613800138000",
        destination_addr="SRC",
        esm_class=C.ESM_DELIVERY_RECEIPT,
        short_message=(text + "stat:DELIVRD err:000 text:m0").encode(),
    )


def _hold_all(smsc: FakeSmsc) -> None:
    smsc.on_submit = lambda conn, pdu: None  # every submit_sm waits for the test to answer


def _answer(smsc: FakeSmsc, index: int, msg_id: str) -> None:
    """Answer the `index`th held submit_sm with ESME_ROK and `msg_id`."""
    conn, seq = smsc.held[index]
    assert isinstance(conn, Conn)
    conn.send(Pdu(C.SUBMIT_SM_RESP, 0, seq, MessageIdResp(msg_id)))


async def _until(pred: Callable[[], Awaitable[bool]], within_s: float = 5.0) -> None:
    for _ in range(int(within_s / 0.01)):
        if await pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


@contextlib.asynccontextmanager
async def _timing_out(
    store: Store, response_timeout_s: float
) -> AsyncIterator[tuple[FakeSmsc, Clock, Dispatcher]]:
    """m0 accepted, a dispatcher sending it to an SMSC that holds every submit_sm unanswered,
    past the first TIMEOUT (released for its retry); stopped and killed afterwards."""
    await store.create_account(account())
    await accept(store, message("m0"))
    smsc = FakeSmsc()
    await smsc.start()
    _hold_all(smsc)
    clock = Clock(NOW)
    cfg = smsc_cfg(smsc.port, name=SMSC, response_timeout_s=response_timeout_s)
    d: Dispatcher | None = None
    task = None
    try:
        async with running(cfg, _receipt_handler(store, cfg, clock)) as conn:
            assert await conn.wait_up(30.0)
            d = Dispatcher(store, {SMSC: conn}, Router([], [SMSC]), {SMSC: cfg},
                           instance="inst-1", idle_s=0.01, clock=clock)  # fmt: skip
            task = asyncio.create_task(d.run())
            disp = d
            await eventually(lambda: disp.retried == 1 and disp.inflight == 0, 3.0)
            yield smsc, clock, d
    finally:
        if d is not None:
            await d.stop(0.5)
        if task is not None:
            task.cancel()
        await smsc.kill()


async def test_a_late_acceptance_ends_delivered_without_a_resend(store: Store) -> None:
    async with _timing_out(store, 0.3) as (smsc, clock, disp):
        assert len(smsc.held) == 1  # sent once, TIMEOUT, released for a retry in 60 s
        # Not due before the late answer has had its time (a 5 s back-off resent it first).
        waits = [(r.bucket, r.messages) for r in await store.queue_groups(clock.ms, [])]
        assert waits == [("retry_wait", 1)]
        due_at = [r.bucket for r in await store.queue_groups(clock.ms + RETRY_MS, [])]
        assert [r.bucket for r in await store.queue_groups(clock.ms + RETRY_MS - 1_000, [])] == [
            "retry_wait"
        ] and due_at == ["ready"]
        _answer(smsc, 0, "x77")  # the SMSC accepts it after all
        await eventually(lambda: disp.late_accepted == 1, 3.0)
        rec = await get(store, "m0")
        assert rec.state == "sent" and rec.segment_rows[0].smsc_msg_id == "x77"
        assert await (await smsc.deliver(_receipt("x77"))) == C.ESME_ROK
        clock.ms += 60 * RETRY_MS  # the retry is long due: nothing is claimed
        await asyncio.sleep(0.3)
        assert len(smsc.received(C.SUBMIT_SM)) == 1, "the part was sent again"
    rec = await get(store, "m0")
    assert rec.state == "delivered"
    assert [(s.state, s.smsc_msg_id) for s in rec.segment_rows] == [("delivered", "x77")]


async def test_a_late_acceptance_after_the_resend_was_claimed_changes_nothing(
    store: Store,
) -> None:
    """The retry is already on the wire when the first copy's acceptance arrives: it is too late
    to save the duplicate, and recording it must not disturb the resend (whose answer and
    receipt settle the message)."""
    async with _timing_out(store, 1.0) as (smsc, clock, disp):
        clock.ms += RETRY_MS  # the retry comes due
        await eventually(lambda: len(smsc.held) == 2, 3.0)
        assert disp.inflight == 1
        _answer(smsc, 0, "x1")  # the first copy's acceptance, while the resend is out
        await asyncio.sleep(0.05)
        _answer(smsc, 1, "y2")
        await eventually(lambda: disp.inflight == 0 and disp.sent == 1, 3.0)
        await eventually(lambda: disp._late.flushes == 1, 3.0)
        assert disp.late_accepted == 0
        rec = await get(store, "m0")
        assert rec.state == "sent"
        assert [s.smsc_msg_id for s in rec.segment_rows] == ["y2"]
        assert await (await smsc.deliver(_receipt("y2"))) == C.ESME_ROK
        assert await (await smsc.deliver(_receipt("x1"))) == C.ESME_ROK  # kept unmatched
    assert len(smsc.received(C.SUBMIT_SM)) == 2
    rec = await get(store, "m0")
    assert rec.state == "delivered"
    assert [(s.state, s.smsc_msg_id) for s in rec.segment_rows] == [("delivered", "y2")]


async def test_the_connector_reports_only_late_acceptances_with_the_parts_context() -> None:
    smsc = FakeSmsc()
    await smsc.start()
    _hold_all(smsc)
    seen: list[LateSubmit] = []
    try:
        async with running(smsc_cfg(smsc.port, response_timeout_s=0.2)) as c:
            c.on_late_submit = seen.append
            assert await c.wait_up(30.0)
            out = await c.send_message([part("a")], contexts=[("mA", 1)])
            assert [o.status_name for o in out] == ["TIMEOUT"]
            out = await c.send_message([part("b")], contexts=[("mB", 1)])
            assert [o.status_name for o in out] == ["TIMEOUT"]
            (conn_a, seq_a), (conn_b, seq_b) = smsc.held
            conn_b.send(Pdu(C.SUBMIT_SM_RESP, C.ESME_RSYSERR, seq_b))  # a late error: dropped
            conn_a.send(Pdu(C.SUBMIT_SM_RESP, 0, seq_a, MessageIdResp("00ab")))
            await eventually(lambda: len(seen) >= 1)
            await asyncio.sleep(0.05)
            assert seen == [LateSubmit("t1", ("mA", 1), C.ESME_ROK, "00ab")]
            assert c.is_up  # a late answer is no protocol fault
    finally:
        await smsc.kill()


class _LateOnlyStore:
    def __init__(self) -> None:
        self.recorded: list[list[LateAccept]] = []
        self.answer: int | None = None  # parts recorded; None: all of them

    async def record_late_submits(self, items: list[LateAccept], now: int) -> int:
        self.recorded.append(items)
        return len(items) if self.answer is None else self.answer


async def test_the_dispatcher_normalises_and_waits_for_the_messages_own_results() -> None:
    """The id is normalised with the SMSC's rule (as a timely one is); a late acceptance for a
    message still in flight (its release not committed yet) waits until it lands."""
    cfg = SmscConfig(name=SMSC, system_id="t", password="t", resp_id_base="hex")
    fake = _LateOnlyStore()
    d = Dispatcher(fake, {}, Router([], [SMSC]), {SMSC: cfg}, instance="inst-1")  # type: ignore[arg-type]
    recorded = fake.recorded
    d._inflight["m0"], d._flying = 1, 1  # as run() counts a claimed message
    d._on_late(LateSubmit(SMSC, ("m0", 2), C.ESME_ROK, "00B8BE19"))
    d._on_late(LateSubmit(SMSC, None, C.ESME_ROK, "1"))  # no part known: ignored
    d._on_late(LateSubmit("gone", ("m1", 1), C.ESME_ROK, "1"))  # SMSC removed by a reload
    await asyncio.sleep(0.05)
    assert recorded == []
    d._landed("m0")  # its results committed (the batcher's call, _Flight.settled)
    await d._late.drain()
    assert recorded == [[LateAccept("m0", 2, SMSC, "12107289", "00B8BE19")]]
    assert d.late_accepted == 1


async def test_recorded_late_parts_wake_the_webhook_sender_and_none_recorded_do_not() -> None:
    """A recorded late part can queue a report ("sent" with webhooks.send_intermediate, or the
    final one when its receipt came first): the sender is woken for it, as after
    record_submits, instead of finding it at its idle poll (up to a second later)."""
    cfg = SmscConfig(name=SMSC, system_id="t", password="t")
    fake = _LateOnlyStore()
    d = Dispatcher(fake, {}, Router([], [SMSC]), {SMSC: cfg}, instance="inst-1")  # type: ignore[arg-type]
    woken: list[int] = []
    d.on_reports = lambda: woken.append(d.late_accepted)
    d._on_late(LateSubmit(SMSC, ("m0", 1), C.ESME_ROK, "a1"))
    await d._late.drain()
    assert woken == [1]
    fake.answer = 0  # the message was claimed again: nothing recorded, nothing to push
    d._on_late(LateSubmit(SMSC, ("m1", 1), C.ESME_ROK, "a2"))
    await d._late.drain()
    assert len(fake.recorded) == 2 and woken == [1]


# ------------------------------------------------------------------------- review: edges


async def test_a_message_in_its_hold_waits_for_its_late_answer_before_it_ends(
    store: Store,
) -> None:
    """Released after its TIMEOUT, the message's validity passes or the recipient opts out
    while it waits out its hold: it is not ended then (ended and refunded, a late acceptance
    would find nothing to record and the SMSC deliver it for free). A late answer within the
    hold is recorded; without one, the message ends unsent once the hold is over."""
    await store.create_account(account())
    await accept(store, message("m0", expires_at=NOW + 2_000))
    assert [w.id for w in await store.claim("inst-1", 10, NOW, LEASE)] == ["m0"]
    await store.record_submits(
        [], [Release("m0", NOW + RETRY_MS, count_attempt=True, unanswered=True)], NOW
    )
    assert (await store.sweep(NOW + 2_000, 3_600_000))["expired"] == 0  # in its hold
    await released_after_timeout(store, "m1")
    await store.add_optouts("acc_a", ["+8613800138000"], "api", NOW + 10)
    assert (await get(store, "m1")).state == "queued"
    assert await store.record_late_submits([late("m0"), late("m1", msg_id="X2")], NOW + 3_000) == 2
    for mid, smsc_id in (("m0", "x1"), ("m1", "x2")):  # as the SMSC wrote it
        rec = await get(store, mid)
        assert (rec.state, rec.segments_sent) == ("sent", 1)
        assert [s.smsc_msg_id for s in rec.segment_rows] == [smsc_id]
    # Without a late answer: ended unsent by the first sweep after the hold.
    await released_after_timeout(store, "m2")
    await store.add_optouts("acc_a", ["+8613800138000"], "api", NOW + 20)
    assert (await store.sweep(NOW + RETRY_MS - 1, 3_600_000))["expired"] == 0
    assert (await store.sweep(NOW + RETRY_MS, 3_600_000))["expired"] == 1
    assert (await get(store, "m2")).state == "expired"


async def test_a_late_acceptance_of_a_parked_message_ends_its_parking(store: Store) -> None:
    """Released for its retry, the message was parked (its route went down); the late answer
    records its only part sent: it leaves the queue and the parked set."""
    await store.create_account(account())
    await released_after_timeout(store, "m0")
    assert await store.claim("inst-1", 10, NOW + RETRY_MS, LEASE, park=lambda r: "+86") == []
    assert await store.record_late_submits([late("m0")], NOW + RETRY_MS + 1) == 1
    assert (await get(store, "m0")).state == "sent"
    assert await store.queue_depth() == 0
    assert await store.unpark(["+86"], NOW + RETRY_MS + 2) == 0
    assert await store.claim("inst-1", 10, NOW + RETRY_MS + 2, LEASE, routable=["+86"]) == []
