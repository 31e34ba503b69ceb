"""Money over real HTTP and the real store: racing sends, refunds on receipts, monthly settlement,
tariff versions, the low-balance event and vouchers. The clock is frozen inside one month; the
pipeline is driven through the store the way the dispatcher and receipt handler drive it."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bridge.domain.settlement import invoice_round
from bridge.store.models import ReceiptIn, SubmitResult
from tests.sending import TEST_INTERNATIONAL

SH = ZoneInfo("Asia/Shanghai")  # the shipped rules.timezone: months and days are local
SMSC = "main"  # the one SMSC of the test config
LEASE = 300_000
PRICE = 45_000  # starting price per unit
US = "+12025550123"
CHEAP_TIERS = {
    "billing": {
        "tariff": {
            "tiers": [{"up_to": 2, "price": 40_000}, {"up_to": 4, "price": 30_000},
                      {"price": 20_000}],
            "starting_price": PRICE,
        }
    }
}  # fmt: skip


def local(*args: int) -> float:
    """Unix seconds of a wall time in Shanghai."""
    return datetime(*args, tzinfo=SH).timestamp()  # type: ignore[misc]


MARCH = local(2026, 3, 10, 12, 0, 0)  # inside "2026-03"
APRIL = local(2026, 4, 1, 9, 0, 0)  # after it


def number(i: int) -> str:
    return f"+86138{i:08d}"


# ---- helpers -------------------------------------------------------------------------------------


async def funded(api: Any, cash: int = 0, **settings: Any) -> Any:
    """A bare account (no sign) with exactly `cash` micro on it, topped up over the admin API."""
    creds = await api.create_account(ready=False, **settings)
    if cash:
        r = await api.admin(
            "POST", f"/admin/accounts/{creds.account.id}/topups", json={"amount_micro": cash}
        )
        assert r.status == 201, r.json
    return creds


async def balance(api: Any, creds: Any) -> dict[str, Any]:
    r = await api.request("GET", "/v1/balance", creds=creds)
    assert r.status == 200, r.json
    return r.json


async def ledger(api: Any, creds: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    after = "0"
    while True:
        r = await api.request("GET", "/v1/ledger", creds=creds, query=f"after={after}&limit=1000")
        assert r.status == 200, r.json
        out += r.json["entries"]
        if r.json["next_cursor"] is None:
            return out
        after = r.json["next_cursor"]


async def assert_books_balance(api: Any, creds: Any) -> None:
    """The running pocket sums the accept transaction reads equal the ledger's own sums."""
    sums = await api.store.ledger_sums(creds.account.id)
    pockets = {p.pocket: p.amount for p in await api.store.get_pockets(creds.account.id)}
    assert {k: v for k, v in sums.items() if v} == {k: v for k, v in pockets.items() if v}


async def send_ok(api: Any, creds: Any, to: str | list[str], text: str = "hi") -> list[str]:
    r = await api.send(creds, {"to": to, "text": text})
    assert r.status == 202, r.json
    return [m["id"] for m in r.json["messages"]]


async def submit(api: Any, outcome: str = "sent") -> dict[str, str]:
    """Claim everything due and record each part's submit `outcome`: message id -> SMSC id."""
    now = api.ctx.now_ms()
    work = await api.store.claim("test-dispatcher", 1000, now, LEASE)
    results = []
    ids: dict[str, str] = {}
    for w in work:
        for s in w.segments:
            if outcome == "sent":
                ident = f"smsc-{w.id}-{s.seq}"
                ids[w.id] = ident
                results.append(SubmitResult(w.id, s.seq, "sent", SMSC, ident, ident, at=now))
            else:
                results.append(
                    SubmitResult(w.id, s.seq, outcome, SMSC, error_code="ESME_RINVDSTADR", at=now)
                )
    await api.store.record_submits(results, [], now)
    return ids


async def receipt(api: Any, smsc_id: str, state: str) -> None:
    now = api.ctx.now_ms()
    stat = {"delivered": "DELIVRD", "undeliverable": "UNDELIV"}[state]
    await api.store.apply_receipts(
        [ReceiptIn(SMSC, smsc_id, state, stat, None, now, now, raw=f"id:{smsc_id}")], now
    )


async def status(api: Any, creds: Any, mid: str) -> str:
    r = await api.request("GET", f"/v1/messages/{mid}", creds=creds)
    assert r.status == 200, r.json
    return r.json["status"]


async def settle(api: Any, month: str, creds: Any | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"month": month}
    if creds is not None:
        body["account"] = creds.account.id
    r = await api.admin("POST", "/admin/bills/settle", json=body)
    assert r.status == 200, r.json
    return r.json


def result_for(answer: dict[str, Any], creds: Any) -> dict[str, Any]:
    (row,) = [x for x in answer["results"] if x["account"] == creds.account.id]
    return row


# ---- racing the last of a balance ----------------------------------------------------------------


async def test_concurrent_sends_take_exactly_the_affordable_ones(make_api, clock):
    clock.freeze(MARCH)
    api = await make_api()
    creds = await funded(api, 17 * PRICE)
    replies = await asyncio.gather(
        *(api.send(creds, {"to": number(i), "text": f"race {i}"}) for i in range(30))
    )
    statuses = sorted(r.status for r in replies)
    assert statuses.count(202) == 17, statuses
    assert statuses.count(402) == 13, statuses
    assert {r.code for r in replies if r.status == 402} == {"INSUFFICIENT_BALANCE"}
    bal = await balance(api, creds)
    assert (bal["cash_micro"], bal["available_domestic_micro"]) == (0, 0)
    listed = await api.request("GET", "/v1/messages", creds=creds, query="limit=100")
    assert len(listed.json["messages"]) == 17
    charges = [e for e in await ledger(api, creds) if e["kind"] == "charge"]
    assert len(charges) == 17 and sum(e["amount_micro"] for e in charges) == -17 * PRICE
    assert await api.store.queue_depth() == 17
    await assert_books_balance(api, creds)


async def test_concurrent_batches_never_overdraw(make_api, clock):
    """Batches of 3 racing for 10 units: at most 3 batches fit; never a partial batch."""
    clock.freeze(MARCH)
    api = await make_api()
    creds = await funded(api, 10 * PRICE)
    replies = await asyncio.gather(
        *(
            api.send(creds, {"to": [number(3 * i + k) for k in range(3)], "text": "batch"})
            for i in range(8)
        )
    )
    assert sorted(r.status for r in replies) == [202] * 3 + [402] * 5
    assert (await balance(api, creds))["cash_micro"] == PRICE
    await assert_books_balance(api, creds)


# ---- frequency Retry-After over HTTP -------------------------------------------------------------


async def test_frequency_refusals_carry_retry_after_for_their_window(make_api, clock):
    limits = {"per_minute": 1, "per_hour": 2, "per_day": 3}
    api = await make_api({"rules": {"frequency": {"raw_text": limits}}})
    clock.freeze(local(2026, 3, 10, 12, 10, 15))
    creds = await funded(api, 1_000_000)
    to = number(7)

    async def refused(code: str) -> int:
        r = await api.send(creds, {"to": to, "text": "hi"})
        assert (r.status, r.code) == (429, code), r.json
        return int(r.headers["Retry-After"])

    await send_ok(api, creds, to)
    assert await refused("FREQUENCY_LIMIT_MINUTE") == 45  # 12:10:15 -> 12:11:00
    clock.freeze(local(2026, 3, 10, 12, 11, 30))
    await send_ok(api, creds, to)
    clock.freeze(local(2026, 3, 10, 12, 40, 0))
    assert await refused("FREQUENCY_LIMIT_HOUR") == 20 * 60  # -> 13:00:00
    clock.freeze(local(2026, 3, 10, 13, 0, 0))
    await send_ok(api, creds, to)
    clock.freeze(local(2026, 3, 10, 15, 0, 0))
    # Three in the rolling 24 h; room again when the first (12:10:15) leaves it.
    wait = await refused("FREQUENCY_LIMIT_DAY")
    assert wait == 21 * 3600 + 10 * 60 + 15
    clock.advance(wait - 1)
    await refused("FREQUENCY_LIMIT_DAY")
    clock.advance(1)
    await send_ok(api, creds, to)


# ---- refunds on receipts -------------------------------------------------------------------------


async def test_failed_domestic_message_is_refunded_once_delivered_is_not(make_api, clock):
    clock.freeze(MARCH)
    api = await make_api()
    creds = await funded(api, 1_000_000)
    failed, delivered = await send_ok(api, creds, [number(1), number(2)])
    assert (await balance(api, creds))["cash_micro"] == 1_000_000 - 2 * PRICE
    ids = await submit(api)
    clock.advance(5)
    await receipt(api, ids[failed], "undeliverable")
    await receipt(api, ids[delivered], "delivered")
    assert await status(api, creds, failed) == "failed"
    assert await status(api, creds, delivered) == "delivered"
    assert (await balance(api, creds))["cash_micro"] == 1_000_000 - PRICE
    # The same receipt again (an SMSC re-delivering it): no second refund.
    clock.advance(5)
    await receipt(api, ids[failed], "undeliverable")
    await receipt(api, ids[delivered], "delivered")
    assert (await balance(api, creds))["cash_micro"] == 1_000_000 - PRICE
    refunds = [e for e in await ledger(api, creds) if e["kind"] == "refund"]
    assert [(e["ref"], e["amount_micro"]) for e in refunds] == [(failed, PRICE)]
    await assert_books_balance(api, creds)


async def test_international_refunded_only_when_never_submitted(make_api, clock):
    clock.freeze(MARCH)
    api = await make_api()
    start = 1_000_000
    creds = await funded(api, start)
    intl_price = TEST_INTERNATIONAL["+1"]
    (rejected,) = await send_ok(api, creds, US)
    await submit(api, outcome="failed")  # the SMSC refused it permanently: never submitted
    assert await status(api, creds, rejected) == "failed"
    assert (await balance(api, creds))["cash_micro"] == start
    (accepted,) = await send_ok(api, creds, "+12025550124")
    ids = await submit(api)
    clock.advance(5)
    await receipt(api, ids[accepted], "undeliverable")
    assert await status(api, creds, accepted) == "failed"
    # Billed on submission: a failed delivery of a submitted message is still paid.
    assert (await balance(api, creds))["cash_micro"] == start - intl_price
    refunds = [e for e in await ledger(api, creds) if e["kind"] == "refund"]
    assert [(e["ref"], e["amount_micro"]) for e in refunds] == [(rejected, intl_price)]
    await assert_books_balance(api, creds)


async def test_no_receipt_in_72_hours_is_billed_validity_expiry_is_refunded(make_api, clock):
    clock.freeze(MARCH)
    api = await make_api()
    start = 1_000_000
    creds = await funded(api, start)
    (silent,) = await send_ok(api, creds, number(1))
    await submit(api)
    r = await api.send(creds, {"to": [number(2), US], "text": "hi", "validity_minutes": 1})
    assert r.status == 202, r.json
    late_dom, late_intl = (m["id"] for m in r.json["messages"])
    intl_price = TEST_INTERNATIONAL["+1"]
    assert (await balance(api, creds))["cash_micro"] == start - 2 * PRICE - intl_price
    clock.advance(72 * 3600 + 1)
    await api.store.sweep(api.ctx.now_ms(), 72 * 3_600_000)
    assert await status(api, creds, silent) == "unknown"
    assert await status(api, creds, late_dom) == "expired"
    assert await status(api, creds, late_intl) == "expired"
    # The silent one is billed; the two never sent are given back.
    assert (await balance(api, creds))["cash_micro"] == start - PRICE
    await assert_books_balance(api, creds)


async def test_international_pays_only_the_segments_submitted(make_api, clock):
    clock.freeze(MARCH)
    api = await make_api()
    start = 1_000_000
    creds = await funded(api, start)
    intl_price = TEST_INTERNATIONAL["+1"]
    r = await api.send(creds, {"to": US, "text": "x" * 200})  # GSM-7: 2 parts of 153
    assert r.status == 202 and r.json["messages"][0]["segments"] == 2, r.json
    mid = r.json["messages"][0]["id"]
    assert (await balance(api, creds))["cash_micro"] == start - 2 * intl_price
    now = api.ctx.now_ms()
    (work,) = await api.store.claim("test-dispatcher", 10, now, LEASE)
    assert [s.seq for s in work.segments] == [1, 2]
    await api.store.record_submits(
        [
            SubmitResult(mid, 1, "sent", SMSC, "p1", "p1", at=now),
            SubmitResult(mid, 2, "failed", SMSC, error_code="ESME_RSUBMITFAIL", at=now),
        ],
        [],
        now,
    )
    await receipt(api, "p1", "delivered")
    assert await status(api, creds, mid) == "failed"
    assert (await balance(api, creds))["cash_micro"] == start - intl_price


# ---- monthly settlement --------------------------------------------------------------------------


TIER = {1: (1, 40_000), 2: (1, 40_000), 3: (2, 30_000), 4: (2, 30_000), 5: (3, 20_000)}


async def deliver_all(api: Any) -> list[str]:
    ids = await submit(api)
    for smsc_id in ids.values():
        await receipt(api, smsc_id, "delivered")
    return list(ids)


@pytest.mark.parametrize("n", [2, 3, 4, 5])
async def test_prepaid_settlement_refunds_down_to_the_tier_reached(make_api, clock, n):
    clock.freeze(MARCH)
    api = await make_api(CHEAP_TIERS)
    creds = await funded(api, 1_000_000)
    for i in range(n):
        await send_ok(api, creds, number(i))
        clock.advance(60)
    await deliver_all(api)
    clock.freeze(APRIL)
    tier, price = TIER[n]
    refund = n * (PRICE - price)
    first = result_for(await settle(api, "2026-03", creds), creds)
    assert first == {
        "account": creds.account.id,
        "status": "settled",
        "units": n,
        "tier": tier,
        "refund_micro": refund,
        "refund_cash_micro": refund,
        "refund_vouchers_micro": 0,
        "refund_void_micro": 0,
        "invoice_total_micro": 0,
    }
    after = (await balance(api, creds))["cash_micro"]
    assert after == 1_000_000 - n * PRICE + refund == 1_000_000 - n * price
    # Again, for this account and for everyone: nothing changes.
    again = result_for(await settle(api, "2026-03", creds), creds)
    assert again["status"] == "already_settled" and again["refund_micro"] == refund
    assert result_for(await settle(api, "2026-03"), creds)["status"] == "already_settled"
    assert (await balance(api, creds))["cash_micro"] == after
    adjustments = [e for e in await ledger(api, creds) if e["kind"] == "settlement_adjustment"]
    assert [(e["ref"], e["amount_micro"]) for e in adjustments] == [("2026-03", refund)]
    bill = await api.request("GET", "/v1/bills/2026-03", creds=creds)
    assert bill.status == 200, bill.json
    b = bill.json
    assert (b["status"], b["units"], b["tier"], b["tier_price_micro"]) == (
        "settled", n, tier, price,
    )  # fmt: skip
    assert (b["refund_micro"], b["charged_micro"], b["domestic_amount_micro"]) == (
        refund, n * PRICE, n * price,
    )  # fmt: skip
    await assert_books_balance(api, creds)


async def test_settlement_before_the_month_ends_is_refused(make_api, clock):
    clock.freeze(MARCH)
    api = await make_api(CHEAP_TIERS)
    creds = await funded(api, 1_000_000)
    await send_ok(api, creds, number(1))
    r = await api.admin("POST", "/admin/bills/settle", json={"month": "2026-03"})
    assert (r.status, r.code) == (409, "SETTLEMENT_NOT_READY"), r.json
    open_bill = await api.request("GET", "/v1/bills/2026-03", creds=creds)
    assert open_bill.json["status"] == "open"
    assert open_bill.json["pending_messages_units"] == 1


async def test_failed_messages_are_not_billed_and_do_not_count_for_the_tier(make_api, clock):
    clock.freeze(MARCH)
    api = await make_api(CHEAP_TIERS)
    creds = await funded(api, 1_000_000)
    mids = await send_ok(api, creds, [number(i) for i in range(4)])
    ids = await submit(api)
    for mid in mids[:3]:
        await receipt(api, ids[mid], "delivered")
    await receipt(api, ids[mids[3]], "undeliverable")  # refunded at once
    clock.freeze(APRIL)
    row = result_for(await settle(api, "2026-03", creds), creds)
    assert (row["units"], row["tier"], row["refund_micro"]) == (3, 2, 3 * (PRICE - 30_000))
    assert (await balance(api, creds))["cash_micro"] == 1_000_000 - 3 * 30_000
    await assert_books_balance(api, creds)


HALF_FEN_TIERS = {
    "billing": {
        "tariff": {
            "tiers": [{"up_to": 2, "price": 42_500}, {"up_to": 4, "price": 31_250},
                      {"price": 20_001}],
            "starting_price": PRICE,
        }
    }
}  # fmt: skip


@pytest.mark.parametrize(
    ("n", "exact"),
    [(1, 42_500), (2, 85_000), (3, 93_750), (5, 100_005)],
)
async def test_postpaid_month_is_invoiced_at_the_tier_rounded_to_fen(make_api, clock, n, exact):
    clock.freeze(MARCH)
    api = await make_api(HALF_FEN_TIERS)
    creds = await funded(api, 0, kind="postpaid")
    for i in range(n):
        await send_ok(api, creds, number(i))  # accrues with no funds at all
    await deliver_all(api)
    clock.freeze(APRIL)
    row = result_for(await settle(api, "2026-03", creds), creds)
    assert row["status"] == "settled" and row["units"] == n
    assert row["invoice_total_micro"] == invoice_round(exact)
    bill = (await api.request("GET", "/v1/bills/2026-03", creds=creds)).json
    assert bill["account_kind"] == "postpaid"
    assert bill["domestic_amount_micro"] == exact
    assert bill["invoice_total_micro"] == invoice_round(exact)
    invoices = [e for e in await ledger(api, creds) if e["kind"] == "invoice"]
    assert [(e["ref"], e["amount_micro"]) for e in invoices] == [("2026-03", invoice_round(exact))]
    # Whatever the books look like, the account must owe exactly the invoice, not twice.
    bal = await balance(api, creds)
    owed = bal["invoiced_micro"] - min(bal["cash_micro"], 0)
    assert owed == invoice_round(exact), bal
    await assert_books_balance(api, creds)


async def test_a_tariff_version_mid_month_prices_each_message_by_its_own_version(make_api, clock):
    clock.freeze(MARCH)  # 2026-03-10 12:00
    api = await make_api(CHEAP_TIERS)
    switch_at = int(local(2026, 3, 15, 0, 0, 0) * 1000)
    v2 = {
        "version": "v2",
        "effective_at": switch_at,
        "tiers": [{"up_to": 2, "price": 42_000}, {"up_to": 4, "price": 33_000}, {"price": 25_000}],
        "starting_price": 50_000,
        "international": TEST_INTERNATIONAL,
    }
    # Daemon.start seeds billing.tariff before serving; the test server does not, so do it here
    # (a version added first would otherwise be the only one: the CLI loads first for this).
    await api.ctx.tariff_book.load(api.ctx.now_ms())
    r = await api.admin("POST", "/admin/tariffs", json=v2)
    assert r.status == 201, r.json
    listed = await api.admin("GET", "/admin/tariffs")
    assert [t["version"] for t in listed.json["tariffs"]] == ["initial", "v2"]
    creds = await funded(api, 1_000_000)
    await send_ok(api, creds, number(1))
    await send_ok(api, creds, number(2))
    clock.freeze(switch_at / 1000 - 0.001)  # the last millisecond of v1
    await send_ok(api, creds, number(3))
    clock.freeze(switch_at / 1000)  # the first of v2
    await send_ok(api, creds, number(4))
    charges = [e["amount_micro"] for e in await ledger(api, creds) if e["kind"] == "charge"]
    assert charges == [-PRICE, -PRICE, -PRICE, -50_000]
    await deliver_all(api)
    clock.freeze(APRIL)
    row = result_for(await settle(api, "2026-03", creds), creds)
    # Four units in the month: tier 2 of each version; three at v1's 0.030, one at v2's 0.033.
    assert (row["units"], row["tier"]) == (4, 2)
    assert row["refund_micro"] == (3 * PRICE + 50_000) - (3 * 30_000 + 33_000)
    bill = (await api.request("GET", "/v1/bills/2026-03", creds=creds)).json
    groups = [(g["version"], g["units"], g["tier"], g["price"]) for g in bill["domestic"]]
    assert groups == [("initial", 3, 2, 30_000), ("v2", 1, 2, 33_000)]
    assert bill["domestic_amount_micro"] == 3 * 30_000 + 33_000
    await assert_books_balance(api, creds)


async def test_a_message_still_awaiting_its_receipt_makes_the_month_not_ready(make_api, clock):
    clock.freeze(MARCH)
    api = await make_api(CHEAP_TIERS)
    waiting = await funded(api, 1_000_000)
    done = await funded(api, 1_000_000)
    (w,) = await send_ok(api, waiting, number(1))
    (d,) = await send_ok(api, done, number(2))
    ids = await submit(api)
    await receipt(api, ids[d], "delivered")
    assert await status(api, waiting, w) == "sent"
    clock.freeze(APRIL)
    answer = await settle(api, "2026-03")
    assert result_for(answer, waiting)["status"] == "not_ready"
    assert result_for(answer, done)["status"] == "settled"
    assert (await api.store.get_bill(waiting.account.id, "2026-03")) is None
    assert not [e for e in await ledger(api, waiting) if e["kind"] == "settlement_adjustment"]
    # Its receipt arrives: the next run settles it.
    await receipt(api, ids[w], "delivered")
    answer = await settle(api, "2026-03")
    assert result_for(answer, waiting)["status"] == "settled"
    assert result_for(answer, done)["status"] == "already_settled"


# ---- the low-balance event -----------------------------------------------------------------------


async def low_balance_events(api: Any, creds: Any) -> list[dict[str, Any]]:
    """Event webhooks of this account due now (claimed: each is returned once)."""
    jobs = await api.store.claim_webhooks(api.ctx.now_ms(), 1000, LEASE)
    return [
        json.loads(j.payload)
        for j in jobs
        if j.kind == "event" and j.account_id == creds.account.id
    ]


async def test_low_balance_crossing_enqueues_one_event_and_a_topup_rearms_it(make_api, clock):
    clock.freeze(MARCH)
    api = await make_api()
    creds = await funded(
        api, 200_000, low_balance_threshold=100_000, status_callback_url="https://example.com/hook"
    )
    await send_ok(api, creds, number(1))  # 155_000
    await send_ok(api, creds, number(2))  # 110_000
    assert await low_balance_events(api, creds) == []
    await send_ok(api, creds, number(3))  # 65_000: crossed
    await send_ok(api, creds, number(4))  # 20_000: still below, silent
    events = await low_balance_events(api, creds)
    assert len(events) == 1, events
    ev = events[0]
    assert ev["event"] == "balance.low" and ev["account"] == creds.account.id
    assert (ev["previous_micro"], ev["available_micro"]) == (110_000, 65_000)
    assert await low_balance_events(api, creds) == []
    r = await api.admin(
        "POST", f"/admin/accounts/{creds.account.id}/topups", json={"amount_micro": 100_000}
    )
    assert r.status == 201  # 120_000: above the threshold again
    await send_ok(api, creds, number(5))  # 75_000: crossed again
    await send_ok(api, creds, number(6))  # 30_000
    events = await low_balance_events(api, creds)
    assert [(e["previous_micro"], e["available_micro"]) for e in events] == [(120_000, 75_000)]
    await assert_books_balance(api, creds)


async def test_low_balance_without_a_callback_enqueues_nothing(make_api, clock):
    clock.freeze(MARCH)
    api = await make_api()
    creds = await funded(api, 100_000, low_balance_threshold=100_000)
    await send_ok(api, creds, number(1))
    assert await low_balance_events(api, creds) == []


# ---- vouchers ------------------------------------------------------------------------------------


async def grant(api: Any, creds: Any, amount: int, expires_at: int | None) -> dict[str, Any]:
    r = await api.admin(
        "POST",
        f"/admin/accounts/{creds.account.id}/vouchers",
        json={"amount_micro": amount, "expires_at": expires_at},
    )
    assert r.status == 201, r.json
    return r.json


async def test_vouchers_are_spent_before_cash_and_void_after_expiry(make_api, clock):
    clock.freeze(MARCH)
    api = await make_api()
    creds = await funded(api, 1_000_000)
    now = api.ctx.now_ms()
    expires = now + 86_400_000
    granted = await grant(api, creds, 100_000, expires)
    assert [v["remaining_micro"] for v in granted["vouchers"]] == [100_000]
    await send_ok(api, creds, number(1))
    bal = await balance(api, creds)
    assert bal["cash_micro"] == 1_000_000
    assert [(v["remaining_micro"], v["expires_at"]) for v in bal["vouchers"]] == [(55_000, expires)]
    await send_ok(api, creds, number(2))  # 45_000 from the voucher, 10_000 left
    await send_ok(api, creds, number(3))  # 10_000 voucher + 35_000 cash
    bal = await balance(api, creds)
    assert (bal["cash_micro"], bal["vouchers"]) == (1_000_000 - 35_000, [])
    # A new voucher, then past its expiry instant: not spendable.
    await grant(api, creds, 100_000, expires)
    clock.freeze(expires / 1000)
    bal = await balance(api, creds)
    assert (bal["vouchers"], bal["available_domestic_micro"]) == ([], 1_000_000 - 35_000)
    await send_ok(api, creds, number(4))
    bal = await balance(api, creds)
    assert bal["cash_micro"] == 1_000_000 - 35_000 - PRICE
    await assert_books_balance(api, creds)


async def test_voucher_only_balance_is_refused_after_expiry(make_api, clock):
    clock.freeze(MARCH)
    api = await make_api()
    creds = await funded(api, 0)
    expires = api.ctx.now_ms() + 3_600_000
    await grant(api, creds, PRICE, expires)
    clock.freeze(expires / 1000)
    r = await api.send(creds, {"to": number(1), "text": "hi"})
    assert (r.status, r.code) == (402, "INSUFFICIENT_BALANCE")
    clock.freeze(expires / 1000 - 0.001)
    assert (await api.send(creds, {"to": number(1), "text": "hi"})).status == 202


async def test_a_voucher_must_expire_after_its_grant(make_api, clock):
    clock.freeze(MARCH)
    api = await make_api()
    creds = await funded(api, 0)
    now = api.ctx.now_ms()
    for expires in (now, now - 1):
        r = await api.admin(
            "POST",
            f"/admin/accounts/{creds.account.id}/vouchers",
            json={"amount_micro": PRICE, "expires_at": expires},
        )
        assert (r.status, r.code) == (400, "INVALID_FIELD"), r.json
        assert "expires_at" in r.message
    never = await grant(api, creds, PRICE, None)
    assert [v["expires_at"] for v in never["vouchers"]] == [None]


async def test_refund_to_an_expired_voucher_is_void(make_api, clock):
    clock.freeze(MARCH)
    api = await make_api()
    creds = await funded(api, 1_000_000)
    expires = api.ctx.now_ms() + 3_600_000
    await grant(api, creds, PRICE, expires)
    (mid,) = await send_ok(api, creds, number(1))  # paid by the voucher entirely
    ids = await submit(api)
    before = await balance(api, creds)
    assert (before["cash_micro"], before["vouchers"]) == (1_000_000, [])
    clock.freeze(expires / 1000 + 60)  # the voucher expired while the message was out
    await receipt(api, ids[mid], "undeliverable")
    assert await status(api, creds, mid) == "failed"
    after = await balance(api, creds)
    assert (after["cash_micro"], after["vouchers"]) == (1_000_000, [])
    assert after["available_domestic_micro"] == before["available_domestic_micro"]
    kinds = [(e["kind"], e["amount_micro"]) for e in await ledger(api, creds) if e["ref"] == mid]
    assert kinds == [("voucher_spend", -PRICE), ("voucher_refund", PRICE),
                     ("voucher_expire", -PRICE)]  # fmt: skip
    await assert_books_balance(api, creds)


async def test_refund_to_a_still_valid_voucher_restores_it(make_api, clock):
    clock.freeze(MARCH)
    api = await make_api()
    creds = await funded(api, 1_000_000)
    expires = api.ctx.now_ms() + 3_600_000
    await grant(api, creds, PRICE, expires)
    (mid,) = await send_ok(api, creds, number(1))
    ids = await submit(api)
    clock.advance(60)
    await receipt(api, ids[mid], "undeliverable")
    bal = await balance(api, creds)
    assert [(v["remaining_micro"], v["expires_at"]) for v in bal["vouchers"]] == [(PRICE, expires)]
    assert bal["cash_micro"] == 1_000_000
    await assert_books_balance(api, creds)
