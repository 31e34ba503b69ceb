"""A prepaid month's settlement refund goes back to the pockets that paid: each voucher's share to
that voucher (void when it has expired by then), the rest to cash. Before, all of it went to
cash, which turned voucher credit into money, even credit already void.

A real HTTP server on each store engine of tests/store_engines.py; every reply is checked
against /openapi.json by the conftest's client.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from tests.integration.conftest import ApiServer, Clock, start_api  # noqa: E402
from tests.integration.test_billing_flow import (  # noqa: E402
    APRIL,
    CHEAP_TIERS,
    MARCH,
    PRICE,
    assert_books_balance,
    balance,
    funded,
    grant,
    ledger,
    local,
    number,
    receipt,
    result_for,
    send_ok,
    settle,
    submit,
)

engine = engines.engine


@pytest.fixture
async def api(engine: Any, tmp_path: Path, clock: Clock) -> Any:
    served = await start_api(tmp_path, clock, CHEAP_TIERS, store=engine.new_store())
    try:
        yield served
    finally:
        await served.close()


async def _send_and_end(api: ApiServer, creds: Any, i: int, state: str) -> str:
    (mid,) = await send_ok(api, creds, number(i))
    ids = await submit(api)
    await receipt(api, ids[mid], state)
    return mid


async def test_the_refund_returns_to_the_vouchers_that_paid_and_an_expired_ones_share_is_void(
    api: ApiServer, clock: Clock
) -> None:
    clock.freeze(MARCH)
    creds = await funded(api, 1_000_000)
    soon = int(local(2026, 3, 31, 12, 0, 0) * 1000)  # gone by the settlement on 1 April
    later = int(local(2026, 5, 1, 0, 0, 0) * 1000)
    short = (await grant(api, creds, PRICE, soon))["added"][0]["pocket"].split(":", 1)[1]
    long = (await grant(api, creds, 2 * PRICE, later))["added"][0]["pocket"].split(":", 1)[1]
    # Earliest expiry first: `short` pays the failed message (given back at its receipt) and
    # then the first delivered one; `long` the next two; cash the last.
    await _send_and_end(api, creds, 0, "undeliverable")
    for i in range(1, 5):
        clock.advance(60)
        await _send_and_end(api, creds, i, "delivered")
    before = await balance(api, creds)
    assert before["cash_micro"] == 1_000_000 - PRICE and before["vouchers"] == []

    open_bill = await api.request("GET", "/v1/bills/2026-03", creds=creds)
    assert open_bill.status == 200, open_bill.json
    assert (open_bill.json["status"], open_bill.json["refund_micro"]) == ("open", 60_000)
    assert open_bill.json["refund_cash_micro"] is None  # decided at settlement

    clock.freeze(APRIL)
    # 4 units reach the second tier (30,000): 4 x 15,000 back. Paid 45,000 by `short`,
    # 90,000 by `long`, 45,000 in cash: a quarter, a half, a quarter.
    row = result_for(await settle(api, "2026-03", creds), creds)
    assert (row["status"], row["units"], row["refund_micro"]) == ("settled", 4, 60_000)
    split = (row["refund_cash_micro"], row["refund_vouchers_micro"], row["refund_void_micro"])
    assert split == (15_000, 30_000, 15_000)
    after = await balance(api, creds)
    assert after["cash_micro"] == 1_000_000 - PRICE + 15_000
    assert [(v["id"], v["remaining_micro"], v["expires_at"]) for v in after["vouchers"]] == [
        (long, 30_000, later)
    ]
    month = [
        (e["kind"], e["pocket"], e["amount_micro"])
        for e in await ledger(api, creds)
        if e["ref"] == "2026-03"
    ]
    assert sorted(month) == sorted(
        [
            ("settlement_adjustment", "cash", 15_000),
            ("voucher_refund", f"voucher:{long}", 30_000),
            ("voucher_refund", f"voucher:{short}", 15_000),
            ("voucher_expire", f"voucher:{short}", -15_000),
        ]
    )
    bill = await api.request("GET", "/v1/bills/2026-03", creds=creds)
    assert bill.status == 200, bill.json
    b = bill.json
    assert (b["refund_micro"], b["refund_cash_micro"]) == (60_000, 15_000)
    assert (b["refund_vouchers_micro"], b["refund_void_micro"]) == (30_000, 15_000)
    await assert_books_balance(api, creds)
    # Settled once: again, nothing moves.
    again = result_for(await settle(api, "2026-03", creds), creds)
    assert again["status"] == "already_settled"
    assert await balance(api, creds) == after


async def test_a_month_paid_in_cash_refunds_to_cash_only(api: ApiServer, clock: Clock) -> None:
    """Vouchers that paid nothing net in the month, or paid in another month, take no share."""
    clock.freeze(MARCH)
    creds = await funded(api, 1_000_000)
    await grant(api, creds, PRICE, int((MARCH + 1800) * 1000))
    await _send_and_end(api, creds, 0, "undeliverable")  # the voucher paid, then got it back
    clock.advance(3600)  # the voucher has expired: cash pays the rest of March
    for i in range(1, 4):
        clock.advance(60)
        await _send_and_end(api, creds, i, "delivered")
    clock.freeze(APRIL)
    await grant(api, creds, PRICE, int((APRIL + 86_400) * 1000))
    await _send_and_end(api, creds, 9, "delivered")  # April's, paid by April's voucher
    assert (await balance(api, creds))["vouchers"] == []
    row = result_for(await settle(api, "2026-03", creds), creds)
    assert (row["units"], row["refund_micro"]) == (3, 3 * 15_000)
    kinds = {(e["kind"], e["pocket"]) for e in await ledger(api, creds) if e["ref"] == "2026-03"}
    assert kinds == {("settlement_adjustment", "cash")}
    b = (await api.request("GET", "/v1/bills/2026-03", creds=creds)).json
    assert (b["refund_cash_micro"], b["refund_vouchers_micro"], b["refund_void_micro"]) == (
        45_000, 0, 0,
    )  # fmt: skip
    await assert_books_balance(api, creds)
