"""Session 19, review 1: the settlement refund split between vouchers and cash (commit c6fd0ae).

A prepaid month's settlement refund (the tier difference) goes back to the pockets that paid:
each voucher what it was charged above its messages' price, per tariff version (`voucher_refund`,
ref = the month; void at once with a `voucher_expire` if the voucher has expired by then), the
rest to cash (`settlement_adjustment`). The review found that the first version split the refund
in proportion to the whole month, wrong when the month had two tariff versions; fixed.
Each test pins one behaviour, on every store engine (tests/store_engines.py) unless it is about
one engine; a test marked xfail(strict) pins a defect found by this review.

Most tests drive the store directly (messages accepted, submitted and ended the way the pipeline
does, then billing.settle); a few go through the real HTTP API, whose every reply the conftest's
client checks against /openapi.json.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.integration.test_settlement_vouchers as vouchers  # noqa: E402
import tests.store_engines as engines  # noqa: E402
from bridge import billing  # noqa: E402
from bridge.cli_ops import Ops, _bill_show, _check  # noqa: E402
from bridge.domain import settlement  # noqa: E402
from bridge.domain.ledger import grant_voucher  # noqa: E402
from bridge.domain.tariffs import Tariff, Tier  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import BillRow, SubmitResult  # noqa: E402
from bridge.store.rules_rows import voucher_charges_sql  # noqa: E402
from bridge.store.sqlite import SqliteStore  # noqa: E402
from tests.integration.conftest import ApiServer, Clock  # noqa: E402
from tests.integration.test_billing_edges import (  # noqa: E402
    CN,
    LEASE,
    SMSC,
    UK,
    accept,
    make_account,
    ms,
    msg,
    receipt,
)
from tests.integration.test_billing_flow import (  # noqa: E402
    APRIL,
    MARCH,
    PRICE,
    assert_books_balance,
    balance,
    funded,
    grant,
    ledger,
    local,
    number,
    send_ok,
    submit,
)
from tests.integration.test_billing_flow import receipt as api_receipt  # noqa: E402
from tests.integration.test_billing_flow import settle as api_settle  # noqa: E402

engine = engines.engine
store = engines.store
api = vouchers.api  # the server on each engine, with the cheap tiers

TZ = "UTC"
SH = "Asia/Shanghai"
ACC = "acc_a"
FUNDS = 1_000_000
# Tier 1 up to 2 units at 0.040, tier 2 up to 4 at 0.030, then 0.020; pre-charged at 0.045.
CHEAP = Tariff(
    "v1",
    0,
    tiers=(Tier(2, 40_000), Tier(4, 30_000), Tier(None, 20_000)),
    starting_price=PRICE,
    international={"+44": 60_000},
)
SETTLE_AT = ms(2026, 4, 5)  # well after March's end (UTC) and its receipts
JUNE = ms(2026, 6, 1)


# ---- helpers (store level) -----------------------------------------------------------------------


async def send(
    s: Store,
    mid: str,
    at: int,
    *,
    amount: int = PRICE,
    state: str = "delivered",
    to: str = CN,
    pclass: str = "D",
    end_at: int | None = None,
) -> None:
    """Accept one message at `at` (charged `amount`, vouchers first), submit it, and end it with
    a receipt in `state` at `end_at` (default a minute later)."""
    await accept(s, msg(mid, at, to=to, pclass=pclass), amount)
    work = await s.claim("inst-1", 1000, at + 1_000, LEASE)
    results = [
        SubmitResult(w.id, seg.seq, "sent", SMSC, w.id, w.id, at=at + 1_000)
        for w in work
        for seg in w.segments
    ]
    await s.record_submits(results, [], at + 1_000)
    await receipt(s, mid, state, end_at if end_at is not None else at + 60_000)


async def give(s: Store, vid: str, amount: int, at: int, expires: int | None) -> None:
    await s.append_ledger(ACC, grant_voucher(amount, at, vid, expires))


async def settle(
    s: Store, month: str, now: int = SETTLE_AT, tz: str = TZ, tariffs: Any = (CHEAP,)
) -> dict[str, Any]:
    acc = await s.get_account(ACC)
    assert acc is not None
    view, recorded = await billing.settle(s, acc, month, list(tariffs), tz, "CNY", now)
    assert recorded
    return view


async def entries_of(s: Store, ref: str) -> list[tuple[str, str, int]]:
    rows, after = [], 0
    while True:
        page = await s.ledger_page(ACC, after, 1000)
        if not page:
            break
        rows += page
        after = page[-1].id
    return sorted((r.kind, r.pocket, r.amount) for r in rows if r.ref == ref)


async def pockets(s: Store) -> dict[str, int]:
    return {p.pocket: p.amount for p in await s.get_pockets(ACC) if p.amount}


async def books_balance(s: Store) -> None:
    """The running pocket sums (what sends are checked against) equal the ledger's own sums."""
    sums = {k: int(v) for k, v in (await s.ledger_sums(ACC)).items() if v}
    assert sums == await pockets(s)


def split_of(view: dict[str, Any]) -> tuple[int, int, int, int]:
    return (
        view["refund_micro"],
        view["refund_cash_micro"],
        view["refund_vouchers_micro"],
        view["refund_void_micro"],
    )


# ---- the entries add up ------------------------------------------------------------------------


async def test_the_entries_add_up_to_the_refund_and_the_pockets_agree_with_the_ledger(
    store: Store,
) -> None:
    """Three vouchers (one expired by settlement, one never expiring, one valid) and cash paid
    the month, two vouchers split across messages: each voucher gets floor(refund x paid /
    charged), cash the rest with the sub-micro remainder; the refund and void entries add up to
    the bill's split, and every pocket's running sum still equals its ledger."""
    await make_account(store)
    await give(store, "vA", 100_000, ms(2026, 3, 1), ms(2026, 3, 20))  # gone by settlement
    await give(store, "vB", 45_000, ms(2026, 3, 1), None)
    await give(store, "vC", 45_000, ms(2026, 3, 1), JUNE)
    # Earliest expiry first: vA 45+45+10, vC 35+10, vB 35+10, cash 35.
    for i in range(5):
        await send(store, f"msg_{i}", ms(2026, 3, 5, 10, i))
    view = await settle(store, "2026-03")
    assert (view["units"], view["charged_micro"]) == (5, 5 * PRICE)
    refund = 5 * (PRICE - 20_000)  # 125,000
    a, b, c = refund * 100_000 // 225_000, refund * 45_000 // 225_000, refund * 45_000 // 225_000
    assert (a, b, c) == (55_555, 25_000, 25_000)
    assert split_of(view) == (refund, refund - a - b - c, b + c, a)
    assert await entries_of(store, "2026-03") == sorted(
        [
            ("settlement_adjustment", "cash", refund - a - b - c),
            ("voucher_refund", "voucher:vA", a),
            ("voucher_expire", "voucher:vA", -a),
            ("voucher_refund", "voucher:vB", b),
            ("voucher_refund", "voucher:vC", c),
        ]
    )
    month = await entries_of(store, "2026-03")
    assert sum(n for k, _p, n in month if k != "voucher_expire") == view["refund_micro"]
    assert -sum(n for k, _p, n in month if k == "voucher_expire") == view["refund_void_micro"]
    assert await pockets(store) == {
        "cash": FUNDS - 35_000 + refund - a - b - c,
        "voucher:vB": b,
        "voucher:vC": c,
    }
    await books_balance(store)


@settings(max_examples=300, deadline=None)
@given(
    units=st.integers(1, 600_000),
    paid=st.lists(
        st.tuples(st.integers(-5, 10**12), st.sampled_from(["delivered", "unknown", "failed"])),
        max_size=6,
    ),
    expiries=st.lists(st.one_of(st.none(), st.integers(0, 10)), min_size=6, max_size=6),
)
def test_refund_split_never_gives_a_voucher_more_than_its_due_and_always_adds_up(
    units: int, paid: list[tuple[int, str]], expiries: list[int | None]
) -> None:
    """Pure: cash + shares == refund; 0 < share <= what the voucher paid above the tier price
    (all of it for a message not billed); each voucher at most once, by id; returned + void ==
    the shares. Since the fix of this review's defect, the split is per tariff version."""
    v = Tariff("v", 0)
    at = ms(2026, 3, 10)
    bill = settlement.settle_month(
        "2026-03",
        [settlement.UsageLine(at, units, units * PRICE, True, None, 1, "delivered")],
        [v],
        TZ,
        "prepaid",
    )
    charges = [
        settlement.VoucherCharge(f"v{i}", at, state, n, expiries[i])
        for i, (n, state) in enumerate(paid)
    ]
    split = settlement.refund_split(bill, [v], charges)
    shares = [x.amount for x in split.vouchers]
    assert split.cash + sum(shares) == bill.refund and split.cash >= 0
    assert [x.voucher_id for x in split.vouchers] == sorted({x.voucher_id for x in split.vouchers})
    price = bill.tier_price
    for x in split.vouchers:
        n, state = paid[int(x.voucher_id[1:])]
        due = n if state == "failed" else n * (PRICE - price) // PRICE
        assert 0 < x.amount <= due
    for now in (0, 5, 11):
        assert split.returned(now) + split.void(now) == sum(shares)


# ---- who takes a share ---------------------------------------------------------------------------


async def test_a_voucher_that_paid_international_traffic_takes_no_share(store: Store) -> None:
    """Vouchers pay international traffic too (before cards and cash); the refund is domestic
    only, so a voucher that paid only an international message gets nothing back."""
    await make_account(store)
    await give(store, "vI", 60_000, ms(2026, 3, 1), JUNE)
    await send(store, "msg_uk", ms(2026, 3, 5), amount=60_000, to=UK, pclass="+44")
    for i in range(4):
        await send(store, f"msg_{i}", ms(2026, 3, 6, 10, i))  # cash
    assert await store.voucher_charges(ACC, *settlement.month_bounds("2026-03", TZ)) == []
    view = await settle(store, "2026-03")
    assert (view["units"], view["international_amount_micro"]) == (4, 60_000)
    assert split_of(view) == (60_000, 60_000, 0, 0)
    assert await entries_of(store, "2026-03") == [("settlement_adjustment", "cash", 60_000)]
    await books_balance(store)


async def test_failed_messages_given_back_to_a_voucher_count_for_nothing(store: Store) -> None:
    """A voucher whose message failed after it expired (refund + void) paid nothing net: no
    share. A valid voucher that paid a failed message (given back) and then a delivered one has
    paid one message: its share is of that one only."""
    await make_account(store)
    await give(store, "vF", PRICE, ms(2026, 3, 1), ms(2026, 3, 5, 1))
    await give(store, "vG", PRICE, ms(2026, 3, 1), JUNE)
    # vF pays (earliest expiry); its failure receipt comes after vF expired: refund + void.
    await send(store, "msg_f", ms(2026, 3, 5), state="undeliverable", end_at=ms(2026, 3, 5, 2))
    assert ("voucher_expire", "voucher:vF", -PRICE) in await entries_of(store, "msg_f")
    await send(store, "msg_g1", ms(2026, 3, 6), state="undeliverable")  # vG, given back
    await send(store, "msg_g2", ms(2026, 3, 6, 1))  # vG again, delivered
    for i in range(3):
        await send(store, f"msg_{i}", ms(2026, 3, 7, 10, i))  # cash
    view = await settle(store, "2026-03")
    assert (view["units"], view["charged_micro"]) == (4, 4 * PRICE)
    refund = 4 * (PRICE - 30_000)
    assert split_of(view) == (refund, refund - refund // 4, refund // 4, 0)
    assert await entries_of(store, "2026-03") == sorted(
        [
            ("settlement_adjustment", "cash", refund - refund // 4),
            ("voucher_refund", "voucher:vG", refund // 4),
        ]
    )
    await books_balance(store)


async def test_a_voucher_used_in_two_months_gets_each_months_share_once(store: Store) -> None:
    """The voucher's March share (ref "2026-03", not a message) neither counts as a negative
    charge in April nor is given twice; April's share is of April's spends only."""
    await make_account(store)
    await give(store, "vM", 3 * PRICE, ms(2026, 3, 1), None)
    await send(store, "msg_m1", ms(2026, 3, 5))
    await send(store, "msg_m2", ms(2026, 3, 6))  # March: vM paid both
    await send(store, "msg_a1", ms(2026, 4, 2))  # vM's last 45,000
    await send(store, "msg_a2", ms(2026, 4, 2, 1))  # cash
    march = await settle(store, "2026-03")
    assert split_of(march) == (2 * 5_000, 0, 2 * 5_000, 0)  # 2 units: tier 1 (0.040)
    await send(store, "msg_a3", ms(2026, 4, 6))  # vM's restored 10,000 + 35,000 cash
    april = await settle(store, "2026-04", now=ms(2026, 5, 5))
    assert (april["units"], april["charged_micro"]) == (3, 3 * PRICE)
    refund = 3 * (PRICE - 30_000)
    share = refund * 55_000 // (3 * PRICE)
    assert split_of(april) == (refund, refund - share, share, 0)
    assert await entries_of(store, "2026-03") == [
        ("settlement_adjustment", "cash", 0),
        ("voucher_refund", "voucher:vM", 10_000),
    ]
    assert await entries_of(store, "2026-04") == [
        ("settlement_adjustment", "cash", refund - share),
        ("voucher_refund", "voucher:vM", share),
    ]
    await books_balance(store)


async def test_a_chained_bill_after_a_time_zone_change_shares_by_its_own_period(
    store: Store,
) -> None:
    """February settled in Shanghai ends 28 Feb 16:00 UTC; March settled in UTC starts there.
    A voucher that paid a message between the two zones' midnights paid for March's bill: it
    gets its share (the voucher read uses the bill's chained period, not the month's)."""
    await make_account(store)
    await send(store, "msg_feb", ms(2026, 2, 10))  # cash
    await give(store, "vZ", PRICE, ms(2026, 2, 28, 19), JUNE)
    await send(store, "msg_gap", ms(2026, 2, 28, 20))  # vZ; Shanghai's March, UTC's February
    feb = await settle(store, "2026-02", now=ms(2026, 3, 5), tz=SH)
    assert (feb["units"], feb["period_end"]) == (1, ms(2026, 2, 28, 16))
    for i in range(3):
        await send(store, f"msg_{i}", ms(2026, 3, 10, 10, i))  # cash
    march = await settle(store, "2026-03", tz=TZ)
    assert (march["period_start"], march["units"]) == (ms(2026, 2, 28, 16), 4)
    refund = 4 * (PRICE - 30_000)
    assert split_of(march) == (refund, refund - refund // 4, refund // 4, 0)
    assert ("voucher_refund", "voucher:vZ", refund // 4) in await entries_of(store, "2026-03")
    await books_balance(store)


# Found by this review and fixed (refund_split per tariff version): with two tariff versions in
# the month the refund was split in proportion to what each pocket paid, not to what each pocket
# paid above its messages' tier price.


async def test_with_two_tariff_versions_a_voucher_gets_back_what_it_paid_above_the_tier(
    store: Store,
) -> None:
    v1 = Tariff("v1", 0, tiers=(Tier(None, PRICE),), starting_price=PRICE)
    v2 = Tariff("v2", ms(2026, 3, 15), tiers=(Tier(None, 30_000),), starting_price=60_000)
    await make_account(store)
    await send(store, "msg_c1", ms(2026, 3, 10))  # cash, v1: charged at its own tier price
    await send(store, "msg_c2", ms(2026, 3, 10, 1))
    await give(store, "vV", 2 * 60_000, ms(2026, 3, 15, 1), JUNE)
    await send(store, "msg_v1", ms(2026, 3, 16), amount=60_000)  # vV, v2: 30,000 above the tier
    await send(store, "msg_v2", ms(2026, 3, 16, 1), amount=60_000)
    view = await settle(store, "2026-03", tariffs=(v1, v2))
    groups = [(g["version"], g["units"], g["price"]) for g in view["domestic"]]
    assert groups == [("v1", 2, PRICE), ("v2", 2, 30_000)]
    assert view["refund_micro"] == 2 * 30_000  # all of it over-charged on vV's messages
    # Before the fix: vV 60,000 x 120,000 / 210,000 = 34,285; cash 25,715.
    assert split_of(view) == (60_000, 0, 60_000, 0)


async def test_with_two_tariff_versions_cash_over_charge_is_not_voided_on_a_voucher(
    store: Store,
) -> None:
    v1 = Tariff("v1", 0, tiers=(Tier(None, 30_000),), starting_price=PRICE)
    v2 = Tariff("v2", ms(2026, 3, 15), tiers=(Tier(None, 60_000),), starting_price=60_000)
    await make_account(store)
    await send(store, "msg_c1", ms(2026, 3, 10))  # cash, v1: 15,000 above the tier each
    await send(store, "msg_c2", ms(2026, 3, 10, 1))
    await give(store, "vX", 2 * 60_000, ms(2026, 3, 15, 1), ms(2026, 3, 31))
    await send(store, "msg_v1", ms(2026, 3, 16), amount=60_000)  # vX, v2: at its tier price
    await send(store, "msg_v2", ms(2026, 3, 16, 1), amount=60_000)
    view = await settle(store, "2026-03", tariffs=(v1, v2))
    assert view["refund_micro"] == 2 * 15_000  # all of it over-charged on cash's messages
    # Before the fix: vX 30,000 x 120,000 / 210,000 = 17,142, void; cash 12,858.
    assert split_of(view) == (30_000, 30_000, 0, 0)


@pytest.mark.parametrize("first", ["prepaid", "postpaid"])
async def test_a_switch_of_kind_mid_month_returns_the_voucher_its_over_charge(
    store: Store, first: str
) -> None:
    """4 units paid by a voucher while prepaid and 1 accrued while postpaid (either order): 5
    units at 0.020 cost 100,000 and 180,000 was taken from the voucher, so 80,000 goes back to
    it, nothing is invoiced, and the books balance whichever kind the account has at the end."""
    await make_account(store, first, funds=0)
    if first == "prepaid":
        await give(store, "vP", 4 * PRICE, ms(2026, 3, 1), None)
        for i in range(4):
            await send(store, f"msg_{i}", ms(2026, 3, 5, 10, i))
        await store.update_account(ACC, {"kind": "postpaid"}, ms(2026, 3, 10))
        await send(store, "msg_post", ms(2026, 3, 11))
    else:
        await send(store, "msg_post", ms(2026, 3, 5))
        await store.update_account(ACC, {"kind": "prepaid"}, ms(2026, 3, 10))
        await give(store, "vP", 4 * PRICE, ms(2026, 3, 10), None)
        for i in range(4):
            await send(store, f"msg_{i}", ms(2026, 3, 11, 10, i))
    view = await settle(store, "2026-03")
    assert (view["units"], view["charged_micro"], view["invoice_total_micro"]) == (5, 180_000, 0)
    assert split_of(view) == (80_000, 0, 80_000, 0)
    month = await entries_of(store, "2026-03")
    assert ("voucher_refund", "voucher:vP", 80_000) in month
    assert sum(n for k, p, n in month if p == "cash") == 0
    assert await pockets(store) == {"voucher:vP": 80_000}
    await books_balance(store)


# ---- expiry at the settlement instant ------------------------------------------------------------


@pytest.mark.parametrize(("offset", "void"), [(0, True), (1, False)])
async def test_a_voucher_expiring_at_the_settlement_instant_is_void(
    store: Store, offset: int, void: bool
) -> None:
    """now == expires_at is expired (ledger.py): the share is recorded and voided at once; a
    millisecond later the voucher is still valid and its share spendable, with its expiry."""
    await make_account(store)
    await give(store, "vE", 2 * PRICE, ms(2026, 3, 1), SETTLE_AT + offset)
    for i in range(4):
        await send(store, f"msg_{i}", ms(2026, 3, 5, 10, i))  # vE, vE, cash, cash
    view = await settle(store, "2026-03")
    share = 30_000
    assert split_of(view) == (60_000, 30_000, 0 if void else share, share if void else 0)
    expected = [("settlement_adjustment", "cash", 30_000), ("voucher_refund", "voucher:vE", share)]
    if void:
        expected.append(("voucher_expire", "voucher:vE", -share))
    assert await entries_of(store, "2026-03") == sorted(expected)
    left = {p.pocket: (p.amount, p.expires_at) for p in await store.get_pockets(ACC)}
    assert left["voucher:vE"] == (0 if void else share, SETTLE_AT + offset)
    await books_balance(store)
    # Once the voucher has expired the sweep writes off what the share restored, at its expiry.
    await store.sweep(SETTLE_AT + 60_000, 72 * 3_600_000)
    assert "voucher:vE" not in await pockets(store)
    written_off = [e for e in await entries_of(store, "vE") if e[0] == "voucher_expire"]
    assert written_off == ([] if void else [("voucher_expire", "voucher:vE", -share)])
    await books_balance(store)


# ---- settled once --------------------------------------------------------------------------------


async def test_two_settlements_racing_write_the_split_once(engine: Any, store: Store) -> None:
    """Two settlements of one month at once (two instances on PostgreSQL; on SQLite, the one
    store twice): one records the bill and its entries, the other returns the stored bill."""
    await make_account(store)
    await give(store, "vR", 2 * PRICE, ms(2026, 3, 1), JUNE)
    for i in range(4):
        await send(store, f"msg_{i}", ms(2026, 3, 5, 10, i))
    other = engine.new_store() if engine.multi_instance else store
    if other is not store:
        await other.open()
    try:
        acc = await store.get_account(ACC)
        assert acc is not None
        results = await asyncio.gather(
            *(
                billing.settle(s, acc, "2026-03", [CHEAP], TZ, "CNY", SETTLE_AT)
                for s in (store, other, store, other)
            )
        )
    finally:
        if other is not store:
            await other.close()
    assert sorted(r for _v, r in results) == [False, False, False, True]
    assert {json.dumps(v, sort_keys=True) for v, _r in results} == {
        json.dumps(results[[r for _v, r in results].index(True)][0], sort_keys=True)
    }
    assert await entries_of(store, "2026-03") == [
        ("settlement_adjustment", "cash", 30_000),
        ("voucher_refund", "voucher:vR", 30_000),
    ]
    await books_balance(store)


# ---- the store read ------------------------------------------------------------------------------


async def test_voucher_charges_are_plain_integers_for_large_amounts(store: Store) -> None:
    """PostgreSQL's SUM of BIGINT is numeric: the read gives Python ints (never Decimal), and
    amounts near the money cap (10^15 micro) split exactly."""
    big = 3 * 10**14
    await make_account(store)
    await give(store, "vBig", 10**15, ms(2026, 3, 1), JUNE)
    for i in range(3):
        await send(store, f"msg_{i}", ms(2026, 3, 5, 10, i), amount=big)
    rows = await store.voucher_charges(ACC, *settlement.month_bounds("2026-03", TZ))
    assert rows == [("vBig", ms(2026, 3, 5, 10, 0), "delivered", 3 * big, JUNE)]
    assert [type(x) for x in rows[0]] == [str, int, str, int, int]
    # A tariff whose starting price is what each message was charged (the pre-charge is the
    # starting price of the version in force: what the split takes as the price paid).
    dear = Tariff("dear", 0, tiers=(Tier(None, 30_000),), starting_price=big)
    view = await settle(store, "2026-03", tariffs=(dear,))
    refund = 3 * big - 3 * 30_000
    assert split_of(view) == (refund, 0, refund, 0)
    assert all(type(view[k]) is int for k in ("refund_cash_micro", "refund_vouchers_micro"))
    assert await pockets(store) == {"cash": FUNDS, "voucher:vBig": 10**15 - 3 * big + refund}
    await books_balance(store)


async def test_the_sqlite_voucher_read_searches_by_index_never_scans(tmp_path: Path) -> None:
    """EXPLAIN QUERY PLAN of Store.voucher_charges: the account's messages by (account_id,
    accepted_at) and their ledger rows by (account_id, ref), or the account's ledger by index;
    no table is scanned whole."""
    s = SqliteStore(tmp_path / "plan.db")
    await s.open()
    await s.close()
    c = sqlite3.connect(tmp_path / "plan.db")
    try:
        plan = [
            r[3]
            for r in c.execute(
                "EXPLAIN QUERY PLAN " + voucher_charges_sql([5], postgres=False), (ACC, 0, 10)
            )
        ]
    finally:
        c.close()
    tables = {d.split()[1]: d for d in plan if d.startswith(("SCAN", "SEARCH"))}
    assert set(tables) == {"m", "l"} and all(d.startswith("SEARCH") for d in tables.values()), plan
    assert "account_id=?" in tables["l"], plan  # never another account's ledger rows
    m = tables["m"]
    assert "account_id=? AND accepted_at>?" in m or "(id=?)" in m, plan


# ---- over HTTP: balance, bills, the CLI ----------------------------------------------------------


async def _send_and_end(api: ApiServer, creds: Any, i: int, state: str = "delivered") -> str:
    (mid,) = await send_ok(api, creds, number(i))
    ids = await submit(api)
    await api_receipt(api, ids[mid], state)
    return mid


def _voucher_id(granted: dict[str, Any]) -> str:
    return str(granted["added"][0]["pocket"].split(":", 1)[1])


async def test_the_balance_shows_the_restored_voucher_and_the_next_send_spends_it_first(
    api: ApiServer, clock: Clock
) -> None:
    """After settlement GET /v1/balance lists the voucher's restored share with its expiry, and
    the next send takes it before a voucher that expires later (earliest expiry first)."""
    clock.freeze(MARCH)
    creds = await funded(api, 1_000_000)
    may = int(local(2026, 5, 1, 0, 0, 0) * 1000)
    june = int(local(2026, 6, 1, 0, 0, 0) * 1000)
    early = _voucher_id(await grant(api, creds, 2 * PRICE, may))
    for i in range(4):
        clock.advance(60)
        await _send_and_end(api, creds, i)  # early, early, cash, cash
    clock.freeze(APRIL)
    late = _voucher_id(await grant(api, creds, PRICE, june))
    await api_settle(api, "2026-03", creds)
    bal = await balance(api, creds)
    assert [(v["id"], v["remaining_micro"], v["expires_at"]) for v in bal["vouchers"]] == sorted(
        [(early, 30_000, may), (late, PRICE, june)]
    )
    assert bal["cash_micro"] == 1_000_000 - 2 * PRICE + 30_000
    clock.advance(60)
    mid = await _send_and_end(api, creds, 9)
    spent = sorted(
        (e["pocket"], e["amount_micro"]) for e in await ledger(api, creds) if e["ref"] == mid
    )
    assert spent == sorted([(f"voucher:{early}", -30_000), (f"voucher:{late}", -15_000)])
    await assert_books_balance(api, creds)


async def test_bill_views_open_settled_and_from_before_the_split_and_the_cli(
    api: ApiServer, clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    """GET /v1/bills (checked against /openapi.json) and `bill show`: null split while open;
    the split once settled; a bill stored before the split shows its refund as cash. `bill
    check` finds no pocket off its ledger after the settlement."""
    clock.freeze(MARCH)
    creds = await funded(api, 1_000_000)
    soon = int(local(2026, 3, 31, 12, 0, 0) * 1000)
    await grant(api, creds, 2 * PRICE, soon)
    for i in range(4):
        clock.advance(60)
        await _send_and_end(api, creds, i)
    opened = await api.request("GET", "/v1/bills/2026-03", creds=creds)
    assert opened.status == 200, opened.json
    assert (opened.json["status"], opened.json["refund_micro"]) == ("open", 60_000)
    assert split_of(opened.json)[1:] == (None, None, None)
    clock.freeze(APRIL)
    await api_settle(api, "2026-03", creds)
    settled = await api.request("GET", "/v1/bills/2026-03", creds=creds)
    assert settled.status == 200, settled.json
    assert split_of(settled.json) == (60_000, 30_000, 0, 30_000)
    # A February bill as a release before the split stored it (no split, no period).
    old = {k: v for k, v in settled.json.items() if not k.startswith(("refund_", "period_"))}
    for key in ("timezone", "pending_messages_units"):
        old.pop(key, None)
    old.update(month="2026-02", refund_micro=12_345, settled_at=api.ctx.now_ms())
    acc = creds.account.id
    body = json.dumps(old)
    assert await api.store.save_bill(BillRow(acc, "2026-02", body, api.ctx.now_ms()), [])
    before = await api.request("GET", "/v1/bills/2026-02", creds=creds)
    assert before.status == 200, before.json
    assert split_of(before.json) == (12_345, 12_345, 0, 0)
    admin = await api.admin("GET", f"/admin/accounts/{acc}/bills/2026-02")
    assert admin.status == 200, admin.json
    assert split_of(admin.json) == (12_345, 12_345, 0, 0)

    ops = Ops(api.config, api.ctx.accounts, api.ctx.now_ms())
    shown = await _bill_show(ops, acc, "2026-03")
    assert split_of(shown) == (60_000, 30_000, 0, 30_000)
    assert split_of(await _bill_show(ops, acc, "2026-02")) == (12_345, 12_345, 0, 0)
    capsys.readouterr()
    assert await _check(ops, acc) == 0
    checked = json.loads(capsys.readouterr().out)
    assert (checked["ok"], checked["differences"]) == (True, [])
    await assert_books_balance(api, creds)
