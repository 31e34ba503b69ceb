"""Session 35 review: the reseller's finance controller reconciling a month (ledger, balances,
bills, messages, refunds, top-ups, the low-balance warning) against a real HTTP server
(conftest.make_api: a real SQLite file behind the real aiohttp app) and, where the daemon's own
loops matter, a real in-process daemon on the built-in simulator (tests/e2e/harness.py). The
dispatcher's side is played through the store's pipeline calls (claim, record_submits,
apply_receipts), as test_billing_flow does, with a frozen clock.

Findings (each a test asserting the correct behaviour; each failed on the code as reviewed for
the reason given, and all five were fixed in session 35, their xfail markers removed):

1. A month is settled while one of its international messages still awaits its receipt (its
   status `sent`, counted `pending` by /v1/stats): settlement._ready treats only `queued` as
   pending for traffic billed on submission. When that message has a part the SMSC refused,
   its refund for that part comes with the final receipt, after the bill was recorded: the
   settled bill says `international_charged_micro` 100,000 for a message whose net charge ends
   at 50,000, and the 50,000 refund appears in no bill. README (Settlement): "a month is settled
   only when none of its messages is still pending".
   -> test_a_month_is_not_billed_before_its_international_refunds_are_known
   Fixed: settlement.awaiting_outcome counts every queued or sent message as pending, whatever
   its traffic (settle_month and billing.month_view).
2. A low-balance crossing caused by a voucher's expiry (the sweep) is not logged as a warning:
   the only line is INFO `sweep {... 'balance_warnings': 1}`, naming no account, where a send's
   crossing logs WARNING "balance below the low-balance threshold" with the account. README
   (Webhooks): "sends one event ... per crossing (and logs a warning), whether a send took it
   there or a voucher that expired".
   -> test_a_voucher_expiry_that_crosses_the_threshold_logs_a_warning
   Fixed: Store.sweep returns the crossings (`low_balance`: account, before, after) and the
   daemon's sweep logs each as a send's is, the same words and fields.
3. A top-up whose `ref` was already used with another amount is answered 200 `duplicate_ref`
   and not credited: a second, different payment carrying a reused reference disappears from
   the books behind a success status (a send's Idempotency-Key reused with another body is
   refused, 422). billing.credited_once / store.append_ledger(once=True) compare the ref only.
   -> test_a_payment_ref_reused_with_another_amount_is_refused
   Fixed: append_ledger(once=True) compares the credit the ref names (ledger.ref_conflict):
   the same kind and amount is a duplicate (200), anything else 409 PAYMENT_REF_REUSED naming
   the ref and both amounts; the CLI exits 1 with it.
4. A stored-value card sale cannot be retried safely: `POST .../cards` takes no payment ref
   (400 UNKNOWN_FIELD), so an operator or a shop whose request timed out either gives up or
   sells a second 999 CNY card for one payment (two `card_purchase` entries). Top-ups got a ref
   for exactly this (4956c1f).
   -> test_a_card_sale_names_its_payment_and_is_credited_once
   Fixed: cards and vouchers take an optional `ref` (the CLI's --ref), credited once as a
   top-up's, recorded as the ledger entry's ref.
5. A closed account still takes money: `POST /admin/accounts/{ref}/topups|vouchers|cards` answer
   201 and credit an account whose keys are revoked and which can never be enabled again (its
   settings and keys are refused with 409 ACCOUNT_CLOSED). A payment or a 999 CNY card sold to
   a closed account is money taken for nothing (admin_rules._money resolves the account without
   checking its status; store.append_ledger does not either).
   -> test_a_closed_account_takes_no_money
   Fixed: append_ledger refuses a closed account (409 ACCOUNT_CLOSED) in its transaction, on
   both engines, for the admin API and the CLI alike.

Checked and right (plain tests): an international message with one part accepted and one
refused is charged for the accepted segment only and the domestic one refunded whole, the bill
counting exactly the submitted segments; a multi-recipient request the balance covers only in
part is refused whole (402 naming needed and available), with no ledger entry and the balance
untouched.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.app import Daemon
from bridge.store.models import ReceiptIn, SubmitResult
from tests.e2e.harness import ADMIN_TOKEN, WebhookReceiver, create_account, make_config, wait_until
from tests.integration.conftest import ApiServer, Clock, Creds
from tests.integration.test_billing_flow import (
    APRIL,
    MARCH,
    PRICE,
    US,
    assert_books_balance,
    balance,
    funded,
    ledger,
    number,
    result_for,
    settle,
)

SMSC = "main"  # the one SMSC of the integration config
INTL_PRICE = 50_000  # tests.sending.TEST_INTERNATIONAL["+1"], per segment
LONG = "x" * 300  # GSM-7: two segments on the air (153 + 147)


async def _first_part_only(api: ApiServer, ids: list[str]) -> None:
    """Claim the messages; the SMSC accepts part 1 of each and refuses part 2 for good."""
    now = api.ctx.now_ms()
    work = await api.store.claim("finance-review", 1000, now, 300_000)
    assert sorted(w.id for w in work) == sorted(ids)
    results = []
    for w in work:
        assert [s.seq for s in w.segments] == [1, 2]
        results.append(SubmitResult(w.id, 1, "sent", SMSC, f"id-{w.id}", f"id-{w.id}", at=now))
        results.append(SubmitResult(w.id, 2, "failed", SMSC, error_code="ESME_RSUBMITFAIL", at=now))
    await api.store.record_submits(results, [], now)


async def _delivered(api: ApiServer, mid: str) -> None:
    now = api.ctx.now_ms()
    receipt = ReceiptIn(SMSC, f"id-{mid}", "delivered", "DELIVRD", None, now, now, raw="x")
    await api.store.apply_receipts([receipt], now)


async def _net_charge(api: ApiServer, creds: Creds, mid: str) -> int:
    return -sum(e["amount_micro"] for e in await ledger(api, creds) if e["ref"] == mid)


# -- 1. settled before an international refund is known ---------------------------------------


async def test_a_month_is_not_billed_before_its_international_refunds_are_known(
    make_api: Any, clock: Clock
) -> None:
    clock.freeze(MARCH)
    api = await make_api()
    creds = await funded(api, 10_000_000)
    r = await api.send(creds, {"to": US, "text": LONG})
    assert r.status == 202, r.json
    (mid,) = [m["id"] for m in r.json["messages"]]
    await _first_part_only(api, [mid])
    stats = await api.request(
        "GET", "/v1/stats", creds=creds, query="from=2026-03-10&to=2026-03-10"
    )
    assert stats.json["totals"]["pending"] == 1  # the API itself calls it pending

    clock.freeze(APRIL)  # nine hours after the month's end in Shanghai
    first = result_for(await settle(api, "2026-03", creds), creds)
    await _delivered(api, mid)  # part 1's receipt: the message ends, part 2 refunded
    if first["status"] != "settled":
        assert result_for(await settle(api, "2026-03", creds), creds)["status"] == "settled"

    net = await _net_charge(api, creds, mid)
    assert net == INTL_PRICE  # one segment on the air, one refunded
    bill = (await api.request("GET", "/v1/bills/2026-03", creds=creds)).json
    assert bill["status"] == "settled"
    assert bill["international"] == [
        {"country_prefix": "+1", "segments": 1, "price_micro": INTL_PRICE, "amount_micro": net}
    ]
    # Observed: 100,000 (settled before the refund of part 2; the refund is in no bill).
    assert bill["international_charged_micro"] == net
    await assert_books_balance(api, creds)


# -- 2. the sweep's low-balance crossing is not logged as a warning ----------------------------


async def test_a_voucher_expiry_that_crosses_the_threshold_logs_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    hook = WebhookReceiver()
    await hook.start()
    daemon = Daemon(make_config(tmp_path))
    await daemon.start()
    try:
        creds = await create_account(
            daemon, ready=False, low_balance_threshold=500_000, status_callback_url=hook.url
        )
        account = creds["account"]
        base = f"http://127.0.0.1:{daemon.config.server.port}/admin/accounts/{account}"
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with aiohttp.ClientSession() as s:
            r = await s.post(f"{base}/topups", json={"amount_micro": 100_000}, headers=auth)
            assert r.status == 201, await r.text()
            expires = int(time.time() * 1000) + 1_500
            voucher = {"amount_micro": 1_000_000, "expires_at": expires}
            r = await s.post(f"{base}/vouchers", json=voucher, headers=auth)
            assert r.status == 201, await r.text()
        # 1.10 CNY available, then 0.10 once the voucher lapses: under 0.50, one crossing.
        await wait_until(lambda: any(x.get("event") == "balance.low" for x in hook.reports), 15)
        (event,) = [x for x in hook.reports if x.get("event") == "balance.low"]
        assert (event["previous_micro"], event["available_micro"]) == (1_100_000, 100_000)
    finally:
        await daemon.stop()
        await hook.stop()
    warnings = [
        rec
        for rec in caplog.records
        if rec.name.startswith("bridge")
        and rec.levelno >= logging.WARNING
        and "low-balance" in rec.getMessage()
    ]
    # Observed: only INFO "sweep {'expired': 0, 'timed_out': 0, 'vouchers_lapsed': 1,
    # 'balance_warnings': 1}".
    assert [getattr(rec, "account", None) for rec in warnings] == [account]


# -- 3. a reused payment ref with another amount --------------------------------------------


async def test_a_payment_ref_reused_with_another_amount_is_refused(
    make_api: Any, clock: Clock
) -> None:
    clock.freeze(MARCH)
    api = await make_api()
    creds = await funded(api, 0)
    path = f"/admin/accounts/{creds.account.id}/topups"
    first = await api.admin("POST", path, json={"amount_micro": 500_000_000, "ref": "BANK-7731"})
    assert first.status == 201, first.json
    retry = await api.admin("POST", path, json={"amount_micro": 500_000_000, "ref": "BANK-7731"})
    assert (retry.status, retry.json["duplicate_ref"]) == (200, "BANK-7731")  # a true retry
    other = await api.admin("POST", path, json={"amount_micro": 1_000_000_000, "ref": "BANK-7731"})
    # Observed: 200 {"duplicate_ref": "BANK-7731", "added": [], ...}: 1,000 CNY not credited,
    # answered like the retry of the 500 CNY payment.
    assert other.status == 409, other.json
    assert (await balance(api, creds))["cash_micro"] == 500_000_000


# -- 4. a card sale cannot be retried --------------------------------------------------------


async def test_a_card_sale_names_its_payment_and_is_credited_once(
    make_api: Any, clock: Clock
) -> None:
    clock.freeze(MARCH)
    api = await make_api()
    creds = await funded(api, 0)
    path = f"/admin/accounts/{creds.account.id}/cards"
    sale = {"face_value_micro": 999_000_000, "ref": "SHOP-ORDER-88"}
    first = await api.admin("POST", path, json=sale)
    # Observed: 400 UNKNOWN_FIELD "ref: unknown field"; without the ref, the retry of a sale
    # whose answer was lost makes a second card (two card_purchase entries, 1,998 CNY).
    assert first.status == 201, first.json
    again = await api.admin("POST", path, json=sale)
    assert again.status == 200, again.json
    cards = (await balance(api, creds))["cards"]
    assert [c["remaining_micro"] for c in cards] == [999_000_000]


# -- 5. money credited to a closed account -----------------------------------------------------


async def test_a_closed_account_takes_no_money(make_api: Any, clock: Clock) -> None:
    clock.freeze(MARCH)
    api = await make_api()
    creds = await funded(api, 1_000_000)
    account = creds.account.id
    closed = await api.admin("POST", f"/admin/accounts/{account}/close")
    assert (closed.status, closed.json["status"]) == (200, "closed")
    patch = await api.admin("PATCH", f"/admin/accounts/{account}", json={"tps": 5})
    assert (patch.status, patch.code) == (409, "ACCOUNT_CLOSED")  # settings: refused
    before = await api.store.ledger_sums(account)  # the account's own keys are revoked
    answers = {}
    for kind, body in (
        ("topups", {"amount_micro": 5_000_000, "ref": "BANK-9"}),
        ("vouchers", {"amount_micro": 1_000_000}),
        ("cards", {"face_value_micro": 999_000_000}),
    ):
        r = await api.admin("POST", f"/admin/accounts/{account}/{kind}", json=body)
        answers[kind] = (r.status, r.code)
    # Observed: 201 each; the balance then reads 6.00 cash, a 1.00 voucher and a 999.00 card
    # on an account that can never send again.
    assert answers == {k: (409, "ACCOUNT_CLOSED") for k in ("topups", "vouchers", "cards")}
    assert await api.store.ledger_sums(account) == before


# -- checked and right -----------------------------------------------------------------------


async def test_refused_parts_are_refunded_and_the_bill_counts_submitted_segments(
    make_api: Any, clock: Clock
) -> None:
    """Domestic is billed on delivery: a message one of whose parts the SMSC refused is refunded
    whole. International is billed per submitted segment: the refused part is refunded, the
    accepted one kept, and the settled bill counts that one segment."""
    clock.freeze(MARCH)
    api = await make_api()
    creds = await funded(api, 10_000_000)
    r = await api.send(creds, {"to": [US, number(1)], "text": LONG})
    assert r.status == 202, r.json
    by_to = {m["to"]: m for m in r.json["messages"]}
    intl, dom = by_to[US], by_to[number(1)]
    assert (intl["segments"], intl["billable_units"]) == (2, 2)
    assert (dom["segments"], dom["billable_units"]) == (2, 5)  # 300 characters: ceil(300/67)
    await _first_part_only(api, [intl["id"], dom["id"]])
    for m in (intl, dom):
        await _delivered(api, m["id"])
    assert await _net_charge(api, creds, intl["id"]) == INTL_PRICE
    assert await _net_charge(api, creds, dom["id"]) == 0
    refunds = [e for e in await ledger(api, creds) if e["kind"] == "refund"]
    assert sorted(e["amount_micro"] for e in refunds) == [INTL_PRICE, 5 * PRICE]
    clock.freeze(APRIL)
    assert result_for(await settle(api, "2026-03", creds), creds)["status"] == "settled"
    bill = (await api.request("GET", "/v1/bills/2026-03", creds=creds)).json
    assert (bill["units"], bill["charged_micro"], bill["refund_micro"]) == (0, 0, 0)
    assert bill["international"] == [
        {"country_prefix": "+1", "segments": 1, "price_micro": INTL_PRICE, "amount_micro": 50_000}
    ]
    assert bill["international_charged_micro"] == INTL_PRICE
    assert (await balance(api, creds))["cash_micro"] == 10_000_000 - INTL_PRICE
    await assert_books_balance(api, creds)


async def test_a_batch_the_balance_covers_in_part_is_refused_whole(
    make_api: Any, clock: Clock
) -> None:
    clock.freeze(MARCH)
    api = await make_api()
    creds = await funded(api, 2 * PRICE + PRICE // 2)  # two and a half messages
    before = await ledger(api, creds)
    r = await api.send(creds, {"to": [number(i) for i in range(3)], "text": "hi"})
    assert (r.status, r.code) == (402, "INSUFFICIENT_BALANCE"), r.json
    assert "0.135 CNY needed for 3 message(s), 0.1125 available" in r.message
    assert await ledger(api, creds) == before
    assert (await balance(api, creds))["cash_micro"] == 2 * PRICE + PRICE // 2
    listed = await api.request("GET", "/v1/messages", creds=creds)
    assert listed.json["messages"] == []
    await assert_books_balance(api, creds)
