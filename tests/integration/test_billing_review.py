"""Adversarial review of the money path: charges, refunds on final states, vouchers, cards,
tariff versions and monthly settlement, on each store engine (tests/store_engines.py) behind the
real HTTP API (tests/integration/conftest.py start_api).

The review's defects, each pinned by a test that failed before its fix:
- a `message_payload` SMSC: an international message split by the SMSC into N segments was
  billed for 1 (its one PDU counted as one submitted segment; the rest refunded at the receipt);
- a message whose submit_sm went unanswered (released, its late acceptance awaited) and that an
  opt-out, an erasure or its validity ended was refunded, and the SMSC's late acceptance then
  dropped: a submitted international message ended up free;
- a tariff version stored by another process could take effect before this one loaded it (now
  at least 60 s after it is added);
- a month settled the moment it ended missed a send that read the clock before midnight (now
  10 minutes after);
- a batch an account's voucher (domestic) and card (international) cover was refused when the
  international recipient came first (domestic charges are now planned first).
Two more are documented limits, not fixed (README): a part given up as unknown is not reopened by
a late acceptance, and a settlement refund goes to cash even for what an expired voucher paid.
The passing tests pin behaviour checked during the review.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge import billing  # noqa: E402
from bridge.domain.settlement import invoice_round  # noqa: E402
from bridge.domain.tariffs import BillingError, Tariff  # noqa: E402
from bridge.store.models import LateAccept, ReceiptIn, Release, SubmitResult  # noqa: E402
from tests.integration.conftest import ApiServer, Clock, Creds, start_api  # noqa: E402
from tests.sending import TEST_INTERNATIONAL  # noqa: E402

engine = engines.engine

SH = ZoneInfo("Asia/Shanghai")  # the shipped rules.timezone
SMSC = "main"
LEASE = 300_000
PRICE = 45_000
CN = "+8613800138000"
US = "+12025550123"
INTL = TEST_INTERNATIONAL["+1"]


def local(*args: int) -> float:
    return datetime(*args, tzinfo=SH).timestamp()  # type: ignore[misc]


MARCH = local(2026, 3, 10, 12, 0, 0)
APRIL = local(2026, 4, 10, 9, 0, 0)  # after March and its 72 h

Factory = Callable[..., Awaitable[ApiServer]]


@pytest.fixture
async def mk(engine: Any, tmp_path: Path, clock: Clock) -> AsyncIterator[Factory]:
    """One server on this test's store engine, with config overrides."""
    started: list[ApiServer] = []

    async def factory(overrides: Mapping[str, Any] | None = None) -> ApiServer:
        assert not started, "one server per test (one database)"
        api = await start_api(tmp_path, clock, overrides, store=engine.new_store())
        started.append(api)
        return api

    yield factory
    for api in started:
        await api.close()


async def cash(api: ApiServer, creds: Creds) -> int:
    pockets = {p.pocket: p.amount for p in await api.store.get_pockets(creds.account_id)}
    return pockets.get("cash", 0)


async def send(api: ApiServer, creds: Creds, to: Any, text: str = "hi", **kw: Any) -> list[str]:
    r = await api.send(creds, {"to": to, "text": text, **kw})
    assert r.status == 202, r.json
    return [m["id"] for m in r.json["messages"]]


async def submit_all(api: ApiServer) -> dict[tuple[str, int], str]:
    now = api.ctx.now_ms()
    work = await api.store.claim("inst", 1000, now, LEASE)
    results, ids = [], {}
    for w in work:
        for s in w.segments:
            ident = f"S-{w.id}-{s.seq}"
            ids[(w.id, s.seq)] = ident
            results.append(SubmitResult(w.id, s.seq, "sent", SMSC, ident, ident, at=now))
    await api.store.record_submits(results, [], now, instance="inst")
    return ids


async def receipt(api: ApiServer, smsc_id: str, state: str = "delivered") -> None:
    now = api.ctx.now_ms()
    stat = {"delivered": "DELIVRD", "undeliverable": "UNDELIV"}[state]
    await api.store.apply_receipts(
        [ReceiptIn(SMSC, smsc_id, state, stat, None, now, now, raw=f"id:{smsc_id}")], now
    )


async def books_balance(api: ApiServer, creds: Creds) -> None:
    """What `smpp-bridge bill check` checks: the running pocket sums equal the ledger's sums."""
    sums = await api.store.ledger_sums(creds.account_id)
    pockets = {p.pocket: p.amount for p in await api.store.get_pockets(creds.account_id)}
    assert {k: v for k, v in sums.items() if v} == {k: v for k, v in pockets.items() if v}


async def settle(api: ApiServer, month: str, creds: Creds) -> dict[str, Any]:
    r = await api.admin(
        "POST", "/admin/bills/settle", json={"month": month, "account": creds.account_id}
    )
    assert r.status == 200, r.json
    (row,) = r.json["results"]
    return row


# -- international: a payload PDU carries every air segment --------------------------------------


async def test_payload_split_international_is_billed_for_every_segment(
    mk: Factory, clock: Clock
) -> None:
    """split: payload sends a 200-character text as one submit_sm whose message_payload the
    SMSC splits into 2 segments (messages.segments = 2, the price taken at acceptance 2 x 0.05).
    segments_sent counts the PDU (1), so the delivered message's final refund gives back 1/2
    (refund_share: segments 2, submitted 1) and the bill shows 1 segment: 0.05 CNY collected for
    2 transmitted segments (service rules: international is charged per transmitted segment)."""
    clock.freeze(MARCH)
    api = await mk({"smscs": [{"name": SMSC, "system_id": "bridge", "split": "payload"}]})
    creds = await api.create_account()
    before = await cash(api, creds)
    r = await api.send(creds, {"to": US, "text": "x" * 200})
    assert r.status == 202, r.json
    (m,) = r.json["messages"]
    assert m["segments"] == 2
    assert before - await cash(api, creds) == 2 * INTL
    ids = await submit_all(api)
    assert len(ids) == 1  # one PDU
    clock.advance(5)
    await receipt(api, ids[(m["id"], 1)])
    rec = await api.store.get_message(creds.account_id, m["id"])
    assert rec is not None and rec.state == "delivered"
    assert before - await cash(api, creds) == 2 * INTL
    clock.freeze(APRIL)
    await settle(api, "2026-03", creds)
    bill = (await api.request("GET", "/v1/bills/2026-03", creds=creds)).json
    assert [(x["country_prefix"], x["segments"]) for x in bill["international"]] == [("+1", 2)]


# -- a message whose submit is in doubt, ended by an opt-out or an erasure -----------------------


@pytest.mark.parametrize("how", ["optout", "erase", "validity"])
async def test_message_in_doubt_is_not_refunded_when_ended(
    mk: Factory, clock: Clock, how: str
) -> None:
    """The submit_sm got no answer: the dispatcher released the message for 30 s so that a late
    submit_sm_resp can still be recorded (README). Meanwhile the recipient replies STOP, the
    customer erases the recipient, or the message's validity passes: _end_queued / the sweep end
    it expired and refund it (the cancel path refuses exactly this case: NEVER_TRIED). The late
    ESME_ROK then finds no queued part and is dropped, the delivery receipt never matches:
    the SMSC took (and delivered) the message, and the customer paid nothing for it
    (international is billed once submitted)."""
    clock.freeze(MARCH)
    api = await mk()
    creds = await api.create_account()
    before = await cash(api, creds)
    extra = {"validity_minutes": 1} if how == "validity" else {}
    (mid,) = await send(api, creds, US, **extra)
    assert before - await cash(api, creds) == INTL
    clock.advance(20)
    now = api.ctx.now_ms()
    assert [w.id for w in await api.store.claim("inst", 10, now, LEASE)] == [mid]
    clock.advance(30)  # no submit_sm_resp within response_timeout_s: released for 30 s
    now = api.ctx.now_ms()
    await api.store.record_submits(
        [], [Release(mid, now + 30_000, unanswered=True)], now, instance="inst"
    )
    clock.advance(12)
    now = api.ctx.now_ms()
    if how == "optout":
        await api.store.add_optouts(creds.account_id, [US], "mo", now)
    elif how == "erase":
        await api.store.erase_recipient(creds.account_id, US, "+1202555****", now)
    else:
        await api.store.sweep(now, 72 * 3_600_000)
    clock.advance(3)  # the late submit_sm_resp: the SMSC took it
    await api.store.record_late_submits(
        [LateAccept(mid, 1, SMSC, "LATE1", "LATE1")], api.ctx.now_ms()
    )
    clock.advance(5)
    await receipt(api, "LATE1")
    rec = await api.store.get_message(creds.account_id, mid)
    assert rec is not None
    assert (rec.state, rec.segments_sent) == ("delivered", 1), (rec.state, rec.error_code)
    assert before - await cash(api, creds) == INTL


# -- a tariff version added by another process --------------------------------------------------


async def test_a_version_added_elsewhere_prices_messages_after_its_effective_time(
    mk: Factory, clock: Clock
) -> None:
    """Service rules: units sent after a version's effective time are billed at its price.
    A version stored by another process (the CLI's `tariff add`, another instance's admin API)
    reaches this instance's Tariffs cache only at its next refresh (every 10 s, or never while
    refreshes fail), and Tariffs.add accepts an effective time 1 ms ahead. A message accepted
    after v2 took effect is charged v1's 0.05; settlement prices it at v2's 0.03 but only refunds
    domestic over-charges, so the customer keeps paying 0.05. (Refusing a version that takes
    effect before every instance can have loaded it is an acceptable fix too.)"""
    clock.freeze(MARCH)
    api = await mk()
    await api.ctx.tariff_book.load(api.ctx.now_ms())
    creds = await api.create_account()
    before = await cash(api, creds)
    cli = billing.Tariffs(api.store, api.config.billing)  # `smpp-bridge tariff add` elsewhere
    await cli.load(api.ctx.now_ms())
    cheaper = {**TEST_INTERNATIONAL, "+1": 30_000}
    effective = api.ctx.now_ms() + 1_000
    try:
        await cli.add(Tariff("v2", effective, international=cheaper), api.ctx.now_ms())
    except BillingError:
        return  # a version taking effect before every instance can know it is refused: fine
    clock.advance(2)  # v2 is in force
    (mid,) = await send(api, creds, US)
    ids = await submit_all(api)
    await receipt(api, ids[(mid, 1)])
    clock.freeze(APRIL)
    row = await settle(api, "2026-03", creds)
    assert row["status"] == "settled"
    assert before - await cash(api, creds) == 30_000


# A tariff whose second tier starts at the third unit: a two-message month reaches 0.04.
CHEAP = {
    "billing": {
        "tariff": {
            "tiers": [{"up_to": 2, "price": 40_000}, {"price": 30_000}],
            "starting_price": PRICE,
        }
    }
}


# -- a month settled the moment it ends --------------------------------------------------------


async def test_a_month_settled_at_midnight_still_bills_a_send_accepted_before_it(
    mk: Factory, clock: Clock
) -> None:
    """settle_accounts only requires now >= month end. A send that read the clock before
    midnight (a request in flight, an instance whose clock is half a second behind) commits a
    message accepted in March after March was settled: the bill is never re-done, so this
    postpaid message is never invoiced (nor would a prepaid one get its tier refund)."""
    clock.freeze(MARCH)
    api = await mk()
    creds = await api.create_account(ready=False, kind="postpaid")
    await send(api, creds, CN)
    for smsc_id in (await submit_all(api)).values():
        await receipt(api, smsc_id)
    end = local(2026, 4, 1)
    clock.freeze(end + 1)  # `bill settle --month 2026-03` one second after midnight
    r = await api.admin(
        "POST", "/admin/bills/settle", json={"month": "2026-03", "account": creds.account_id}
    )
    assert r.status in (200, 409), r.json
    # A send that took its time before midnight (an instance whose clock is a second behind,
    # or a request that read the clock before midnight and commits now).
    clock.freeze(end - 0.5)
    late = await api.send(creds, {"to": "+8613800138001", "text": "hi"})
    clock.freeze(end + 60)
    for smsc_id in (await submit_all(api)).values():
        await receipt(api, smsc_id)
    clock.freeze(APRIL)
    await settle(api, "2026-03", creds)
    march = 1 + (late.status == 202)
    bill = (await api.request("GET", "/v1/bills/2026-03", creds=creds)).json
    assert (bill["units"], bill["invoice_total_micro"]) == (march, invoice_round(march * PRICE))


# -- a batch of domestic and international traffic, paid by a voucher and a card ----------------


@pytest.mark.parametrize("order", ["domestic_first", "international_first"])
async def test_a_batch_the_voucher_and_card_cover_is_accepted_in_any_order(
    mk: Factory, clock: Clock, order: str
) -> None:
    """A voucher of 0.045 (the only money domestic traffic may use) and a 999 CNY card: a batch
    to one Chinese and one US number is covered. decide() plans the charges in recipient order
    and an international charge takes vouchers before cards, so with the US number first the
    voucher goes to the US message and the Chinese one is refused: 402 "0.095 needed, 0.05
    available" with 999.045 CNY spendable. The same batch in the other order is accepted."""
    clock.freeze(MARCH)
    api = await mk()
    creds = await api.create_account(ready=False)
    acc = creds.account_id
    r = await api.admin("POST", f"/admin/accounts/{acc}/vouchers", json={"amount_micro": PRICE})
    assert r.status == 201, r.json
    r = await api.admin(
        "POST", f"/admin/accounts/{acc}/cards", json={"face_value_micro": 999_000_000}
    )
    assert r.status == 201, r.json
    to = [CN, US] if order == "domestic_first" else [US, CN]
    r = await api.send(creds, {"to": to, "text": "hi"})
    assert r.status == 202, (r.status, r.json)
    bal = (await api.request("GET", "/v1/balance", creds=creds)).json
    assert (bal["cash_micro"], bal["vouchers"]) == (0, [])
    assert [c["remaining_micro"] for c in bal["cards"]] == [999_000_000 - INTL]


# -- passing: behaviour checked during the review ------------------------------------------------


async def test_a_failure_receipt_racing_the_72_hour_sweep_counts_once(
    mk: Factory, clock: Clock
) -> None:
    """Passing: failure receipts applied concurrently with the sweep that bills messages without
    a receipt after exactly 72 h: each message ends either failed (refunded once) or unknown
    (billed), never both; pockets agree with the ledger."""
    clock.freeze(MARCH)
    api = await mk()
    creds = await api.create_account()
    before = await cash(api, creds)
    mids = await send(api, creds, [f"+86138000001{i:02d}" for i in range(8)])
    ids = await submit_all(api)
    clock.advance(72 * 3600)  # exactly 72 h after sending: the sweep bills them as unknown
    now = api.ctx.now_ms()
    late = [
        ReceiptIn(SMSC, ids[(m, 1)], "undeliverable", "UNDELIV", None, now, now, raw="x")
        for m in mids
    ]
    await asyncio.gather(
        api.store.sweep(now, 72 * 3_600_000),
        *(api.store.apply_receipts([r], now) for r in late),
    )
    states = []
    for m in mids:
        rec = await api.store.get_message(creds.account_id, m)
        assert rec is not None
        states.append(rec.state)
    assert set(states) <= {"failed", "unknown"}
    rows = await api.store.ledger_page(creds.account_id, 0, 1000)
    refunds = [r.ref for r in rows if r.kind == "refund"]
    assert sorted(refunds) == sorted(m for m, s in zip(mids, states, strict=True) if s == "failed")
    assert before - await cash(api, creds) == states.count("unknown") * PRICE
    await books_balance(api, creds)


async def test_prepaid_to_postpaid_mid_month_collects_the_tier_price_once(
    mk: Factory, clock: Clock
) -> None:
    """Passing: prepaid sends charged at 0.045, a failure refunded after the switch to postpaid,
    postpaid sends accrued; the month (4 units, tier 0.030) costs exactly 4 x 0.030: the
    pre-charges count against the invoice, nothing is refunded twice or invoiced twice."""
    clock.freeze(MARCH)
    api = await mk(CHEAP)
    creds = await api.create_account(ready=False)
    acc = creds.account_id
    r = await api.admin("POST", f"/admin/accounts/{acc}/topups", json={"amount_micro": 1_000_000})
    assert r.status == 201, r.json
    prepaid = await send(api, creds, [CN, "+8613800138001", "+8613800138002"])
    ids = await submit_all(api)
    assert await cash(api, creds) == 1_000_000 - 3 * PRICE
    await api.store.update_account(acc, {"kind": "postpaid"}, api.ctx.now_ms())
    clock.advance(60)
    await receipt(api, ids[(prepaid[0], 1)])
    await receipt(api, ids[(prepaid[1], 1)])
    await receipt(api, ids[(prepaid[2], 1)], "undeliverable")  # refunded after the switch
    assert await cash(api, creds) == 1_000_000 - 2 * PRICE
    await send(api, creds, ["+8613800138003", "+8613800138004"])  # accrued, not charged
    assert await cash(api, creds) == 1_000_000 - 2 * PRICE
    for smsc_id in (await submit_all(api)).values():
        await receipt(api, smsc_id)
    clock.freeze(APRIL)
    row = await settle(api, "2026-03", creds)
    # 4 billed units: tier 2 (0.030) for all; 2 x 0.045 was pre-charged.
    assert (row["status"], row["units"], row["tier"]) == ("settled", 4, 2)
    assert (row["refund_micro"], row["invoice_total_micro"]) == (0, 4 * 30_000 - 2 * PRICE)
    again = await settle(api, "2026-03", creds)
    assert again["status"] == "already_settled"
    assert await cash(api, creds) == 1_000_000 - 2 * PRICE
    await books_balance(api, creds)


@pytest.mark.parametrize(
    "body",
    [
        b'{"amount_micro": 1e3}',
        b'{"amount_micro": 1000.0}',
        b'{"amount_micro": 1000000000000001}',
        b'{"amount_micro": 100000000000000000000000000000}',
        b'{"amount_micro": -0}',
        b'{"amount_micro": 1E+3}',
    ],
)
async def test_topup_amounts_that_are_not_micro_integers_are_refused(
    mk: Factory, clock: Clock, body: bytes
) -> None:
    """Passing: JSON numbers that are floats (1e3, 1000.0), above the 10^15 cap or -0 are refused
    and write nothing; exactly the cap is taken."""
    clock.freeze(MARCH)
    api = await mk()
    creds = await api.create_account(ready=False)
    path = f"/admin/accounts/{creds.account_id}/topups"
    r = await api.admin("POST", path, body=body, content_type="application/json")
    assert (r.status, r.code) == (400, "INVALID_FIELD"), r.json
    assert await api.store.ledger_sums(creds.account_id) == {}
    ok = await api.admin("POST", path, json={"amount_micro": 10**15})
    assert ok.status == 201 and ok.json["cash_micro"] == 10**15


LONG = "Sale tomorrow at every shop of ours, all day long. " * 4  # 204 GSM-7 chars: 2 parts


async def test_domestic_two_parts_one_failed_is_refunded_once_whatever_comes_next(
    mk: Factory, clock: Clock
) -> None:
    """Passing: a 2-part domestic message, part 1 delivered and part 2 failed, is failed and
    refunded in full once; contradicting repeated receipts and the 72 h sweep change nothing."""
    clock.freeze(MARCH)
    api = await mk()
    creds = await api.create_account()
    before = await cash(api, creds)
    (mid,) = await send(api, creds, CN, LONG)
    units = before - await cash(api, creds)
    assert units == 4 * PRICE  # 204 characters: ceil(204 / 67) units
    ids = await submit_all(api)
    await receipt(api, ids[(mid, 1)])
    await receipt(api, ids[(mid, 2)], "undeliverable")
    await receipt(api, ids[(mid, 2)], "delivered")  # a contradicting repeat
    await receipt(api, ids[(mid, 1)], "undeliverable")
    clock.advance(73 * 3600)
    await api.store.sweep(api.ctx.now_ms(), 72 * 3_600_000)
    rec = await api.store.get_message(creds.account_id, mid)
    assert rec is not None and rec.state == "failed"
    assert await cash(api, creds) == before
    rows = await api.store.ledger_page(creds.account_id, 0, 1000)
    assert [(r.kind, r.amount) for r in rows if r.ref == mid] == [
        ("charge", -units),
        ("refund", units),
    ]
    await books_balance(api, creds)


async def test_month_boundary_is_local_midnight_in_a_dst_zone(mk: Factory, clock: Clock) -> None:
    """Passing: rules.timezone Europe/London: April starts at 23:00 UTC on 31 March (BST); the
    message a millisecond before is March's, the one at 23:00 April's, on both engines' SQL."""
    api = await mk({"rules": {"timezone": "Europe/London"}})
    clock.freeze(datetime(2026, 3, 31, 22, 59, 59, tzinfo=UTC).timestamp() + 0.999)
    creds = await api.create_account(ready=False, kind="postpaid")
    await send(api, creds, CN)
    clock.freeze(datetime(2026, 3, 31, 23, 0, 0, tzinfo=UTC).timestamp())
    await send(api, creds, "+8613800138001")
    for smsc_id in (await submit_all(api)).values():
        await receipt(api, smsc_id)
    clock.freeze(datetime(2026, 4, 10, tzinfo=UTC).timestamp())
    row = await settle(api, "2026-03", creds)
    assert (row["units"], row["invoice_total_micro"]) == (1, invoice_round(PRICE))
    april = (await api.request("GET", "/v1/bills/2026-04", creds=creds)).json
    assert (april["status"], april["units"]) == ("open", 1)


async def test_card_pays_international_only_and_takes_back_its_own_refunds(
    mk: Factory, clock: Clock
) -> None:
    """Passing: a card never pays domestic traffic; the unsent segment of an international
    message goes back to the card (not cash); a refund after the card expired is void."""
    clock.freeze(MARCH)
    api = await mk()
    creds = await api.create_account(ready=False)
    acc = creds.account_id
    r = await api.admin(
        "POST", f"/admin/accounts/{acc}/cards", json={"face_value_micro": 999_000_000}
    )
    assert r.status == 201, r.json
    (card,) = r.json["cards"]
    refused = await api.send(creds, {"to": CN, "text": "hi"})
    assert (refused.status, refused.code) == (402, "INSUFFICIENT_BALANCE")
    r = await api.send(creds, {"to": US, "text": "x" * 200})  # 2 segments
    assert r.status == 202, r.json
    (half,) = [m["id"] for m in r.json["messages"]]
    now = api.ctx.now_ms()
    await api.store.claim("inst", 10, now, LEASE)
    await api.store.record_submits(
        [
            SubmitResult(half, 1, "sent", SMSC, "H1", "H1", at=now),
            SubmitResult(half, 2, "failed", SMSC, error_code="ESME_RSUBMITFAIL", at=now),
        ],
        [],
        now,
        instance="inst",
    )
    await receipt(api, "H1")
    bal = (await api.request("GET", "/v1/balance", creds=creds)).json
    assert bal["cash_micro"] == 0
    assert [c["remaining_micro"] for c in bal["cards"]] == [999_000_000 - INTL]
    # One more, still queued when the card expires: its refund is void, never cash.
    (late,) = await send(api, creds, "+12025550124")
    clock.freeze(card["expires_at"] / 1000)
    now = api.ctx.now_ms()
    await api.store.claim("inst", 10, now, LEASE)
    await api.store.record_submits(
        [SubmitResult(late, 1, "failed", SMSC, error_code="ESME_RINVDSTADR", at=now)],
        [],
        now,
        instance="inst",
    )
    bal = (await api.request("GET", "/v1/balance", creds=creds)).json
    assert (bal["cash_micro"], bal["cards"], bal["available_international_micro"]) == (0, [], 0)
    rows = await api.store.ledger_page(acc, 0, 1000)
    assert [(r.kind, r.amount) for r in rows if r.ref == late] == [
        ("card_spend", -INTL),
        ("card_refund", INTL),
        ("card_expire", -INTL),
    ]
    await books_balance(api, creds)
