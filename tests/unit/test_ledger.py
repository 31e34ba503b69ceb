"""bridge/domain/ledger.py: derived balances, spend order, refunds, expiry, cards, low balance."""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.domain.ledger import (
    CARD_FACE_VALUES,
    PAYMENT_KINDS,
    Balances,
    Entry,
    EntryKind,
    InsufficientFunds,
    LedgerError,
    RefundPosition,
    balances,
    card_expiry,
    card_purchase,
    expire_entries,
    grant_voucher,
    plan_charge,
    plan_refund,
    ref_conflict,
    refund_payment,
    topup,
    warns_low_balance,
)

CNY = 1_000_000
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAY = 86_400_000
K = EntryKind


def ms(iso: str) -> int:
    return int(datetime.fromisoformat(iso).timestamp()) * 1000


def apply(entries: list[Entry], plan: list[Entry]) -> list[Entry]:
    return entries + plan


# ---- balances and expiry -------------------------------------------------------------------------


def test_balances_derived_from_entries() -> None:
    ledger = [
        *topup(10 * CNY, T0, "pay-1"),
        *grant_voucher(3 * CNY, T0, "v1", T0 + DAY),
        *card_purchase(999_000_000, T0, "c1"),
        Entry(K.CHARGE, -45_000, "cash", T0 + 1, "m1"),
        Entry(K.VOUCHER_SPEND, -45_000, "voucher:v1", T0 + 1, "m2", T0 + DAY),
        Entry(K.INVOICE, 5 * CNY, "invoice", T0 + 2, "2026-01"),  # a receivable: not spendable
    ]
    b = balances(ledger, T0 + 10)
    assert b.cash == 10 * CNY - 45_000
    assert dict(b.vouchers) == {"v1": 3 * CNY - 45_000}
    assert dict(b.cards) == {"c1": 999 * CNY}
    assert b.available_domestic == 10 * CNY - 45_000 + 3 * CNY - 45_000
    assert b.available_international == b.available_domestic + 999 * CNY


def test_voucher_expiry_at_the_exact_instant() -> None:
    exp = T0 + DAY
    ledger = [*topup(1 * CNY, T0), *grant_voucher(2 * CNY, T0, "v1", exp)]
    # One millisecond before: spendable, and spent before cash.
    before = balances(ledger, exp - 1)
    assert dict(before.vouchers) == {"v1": 2 * CNY}
    plan = plan_charge(before, 45_000, international=False, now=exp - 1, ref="m1")
    assert plan == [Entry(K.VOUCHER_SPEND, -45_000, "voucher:v1", exp - 1, "m1", exp)]
    # At exactly expires_at: void. Not in balances, not spent, cash pays.
    at = balances(ledger, exp)
    assert dict(at.vouchers) == {}
    assert at.available_domestic == 1 * CNY
    plan = plan_charge(at, 45_000, international=False, now=exp, ref="m2")
    assert plan == [Entry(K.CHARGE, -45_000, "cash", exp, "m2")]
    # Balances computed earlier but used at the expiry instant: plan_charge re-checks expiry.
    plan = plan_charge(before, 45_000, international=False, now=exp, ref="m3")
    assert [e.pocket for e in plan] == ["cash"]


def test_voucher_without_expiry_never_expires_and_is_spent_last_among_vouchers() -> None:
    ledger = [
        *grant_voucher(1 * CNY, T0, "forever", None),
        *grant_voucher(1 * CNY, T0, "soon", T0 + DAY),
    ]
    b = balances(ledger, T0 + 100 * 365 * DAY)
    assert dict(b.vouchers) == {"forever": 1 * CNY}
    b = balances(ledger, T0)
    plan = plan_charge(b, 1_500_000, international=False, now=T0, ref="m")
    assert [(e.pocket, e.amount) for e in plan] == [
        ("voucher:soon", -1_000_000),
        ("voucher:forever", -500_000),
    ]


def test_used_up_voucher_is_not_listed() -> None:
    ledger = [
        *grant_voucher(45_000, T0, "v1", T0 + DAY),
        Entry(K.VOUCHER_SPEND, -45_000, "voucher:v1", T0, "m", T0 + DAY),
    ]
    assert dict(balances(ledger, T0).vouchers) == {}


def test_card_expiry_is_one_calendar_year() -> None:
    bought = ms("2026-03-15T10:20:30.123+00:00") + 123
    [e] = card_purchase(1_999_000_000, bought, "c1")
    assert e.kind == K.CARD_PURCHASE and e.amount == 1_999 * CNY and e.pocket == "card:c1"
    assert e.expires_at == ms("2027-03-15T10:20:30+00:00") + 123
    # Across a leap day the year is 366 days; 29 February expires on 1 March.
    assert card_expiry(ms("2027-06-01T00:00:00+00:00")) == ms("2028-06-01T00:00:00+00:00")
    assert card_expiry(ms("2028-02-29T08:00:00+00:00")) == ms("2029-03-01T08:00:00+00:00")
    # In the deployment zone: bought 01:00 on 15 March in Shanghai (still the 14th in UTC).
    sh = ms("2026-03-15T01:00:00+08:00")
    assert card_expiry(sh, "Asia/Shanghai") == ms("2027-03-15T01:00:00+08:00")
    # A DST zone keeps the wall clock: 09:00 in winter, 09:00 in winter next year.
    ny = ms("2026-01-10T09:00:00-05:00")
    assert card_expiry(ny, "America/New_York") == ms("2027-01-10T09:00:00-05:00")


def test_card_expiry_unknown_zone() -> None:
    with pytest.raises(Exception) as e:
        card_expiry(T0, "Mars/Olympus")
    assert getattr(e.value, "code", None) == "INVALID_TIME_ZONE"


def test_card_expires_at_the_instant() -> None:
    [c] = card_purchase(999_000_000, T0, "c1")
    assert c.expires_at is not None
    ledger = [*topup(1 * CNY, T0), c]
    b = balances(ledger, c.expires_at - 1)
    assert dict(b.cards) == {"c1": 999 * CNY}
    b = balances(ledger, c.expires_at)
    assert dict(b.cards) == {}
    with pytest.raises(InsufficientFunds):
        plan_charge(b, 2 * CNY, international=True, now=c.expires_at, ref="m")


@pytest.mark.parametrize("face", [0, 998_999_999, 1_000_000_000, 999, 999_000_000.0])
def test_card_face_values_are_fixed(face: object) -> None:
    with pytest.raises(ValueError, match="face_value"):
        card_purchase(face, T0, "c")  # type: ignore[arg-type]
    assert CARD_FACE_VALUES == (999_000_000, 1_999_000_000, 4_999_000_000)


# ---- spend order ---------------------------------------------------------------------------------


def wallet() -> list[Entry]:
    return [
        *topup(5 * CNY, T0),
        *grant_voucher(1 * CNY, T0, "late", T0 + 30 * DAY),
        *grant_voucher(1 * CNY, T0, "early", T0 + 10 * DAY),
        *card_purchase(999_000_000, T0, "c-new", tz="UTC"),
        *card_purchase(999_000_000, T0 - 200 * DAY, "c-old", tz="UTC"),
    ]


def test_domestic_vouchers_before_cash_earliest_expiry_first_never_cards() -> None:
    b = balances(wallet(), T0)
    plan = plan_charge(b, 2_500_000, international=False, now=T0, ref="m")
    assert [(e.kind, e.pocket, e.amount) for e in plan] == [
        (K.VOUCHER_SPEND, "voucher:early", -1_000_000),
        (K.VOUCHER_SPEND, "voucher:late", -1_000_000),
        (K.CHARGE, "cash", -500_000),
    ]
    assert all(e.ref == "m" and e.at == T0 for e in plan)
    # Domestic cannot reach the cards even when cash runs out: 7 CNY available, not 2005.
    with pytest.raises(InsufficientFunds) as e:
        plan_charge(b, 7 * CNY + 1, international=False, now=T0, ref="m")
    assert (e.value.needed, e.value.available) == (7 * CNY + 1, 7 * CNY)


def test_international_vouchers_then_cards_then_cash() -> None:
    b = balances(wallet(), T0)
    plan = plan_charge(b, 2 * CNY + 1_998 * CNY + 1, international=True, now=T0, ref="m")
    assert [(e.kind, e.pocket, e.amount) for e in plan] == [
        (K.VOUCHER_SPEND, "voucher:early", -1 * CNY),
        (K.VOUCHER_SPEND, "voucher:late", -1 * CNY),
        (K.CARD_SPEND, "card:c-old", -999 * CNY),  # expires first
        (K.CARD_SPEND, "card:c-new", -999 * CNY),
        (K.CHARGE, "cash", -1),
    ]
    # Spends carry the pocket's expiry so a refund knows whether it has expired since.
    assert plan[0].expires_at == T0 + 10 * DAY and plan[4].expires_at is None


def test_international_small_charge_uses_card_not_cash() -> None:
    ledger = [*topup(5 * CNY, T0), *card_purchase(999_000_000, T0, "c")]
    plan = plan_charge(balances(ledger, T0), 350_000, international=True, now=T0, ref="m")
    assert [(e.kind, e.amount) for e in plan] == [(K.CARD_SPEND, -350_000)]


def test_insufficient_funds_raises_before_any_entry() -> None:
    b = Balances(cash=40_000, vouchers={"v": 4_000}, cards={}, voucher_expiry={"v": None})
    with pytest.raises(InsufficientFunds) as e:
        plan_charge(b, 45_000, international=False, now=T0, ref="m")
    assert e.value.code == "INSUFFICIENT_BALANCE"
    assert (e.value.needed, e.value.available) == (45_000, 44_000)
    assert e.value.message == "balance: 0.045 CNY needed, 0.044 available"
    # Exactly enough is fine and empties everything.
    plan = plan_charge(b, 44_000, international=False, now=T0, ref="m")
    assert sum(p.amount for p in plan) == -44_000


def test_zero_and_negative_charges() -> None:
    b = Balances(cash=0, vouchers={}, cards={})
    assert plan_charge(b, 0, international=False, now=T0, ref="m") == []
    with pytest.raises(ValueError, match="amount"):
        plan_charge(b, -1, international=False, now=T0, ref="m")
    with pytest.raises(ValueError, match="amount"):
        plan_charge(b, 0.5, international=False, now=T0, ref="m")  # type: ignore[arg-type]


def test_overdraft_lets_postpaid_accrue_on_cash_after_vouchers() -> None:
    b = Balances(cash=-100, vouchers={"v": 10_000}, cards={}, voucher_expiry={"v": None})
    assert b.available_domestic == 10_000  # a debt does not reduce what vouchers can pay
    plan = plan_charge(b, 45_000, international=False, now=T0, ref="m", overdraft=True)
    assert [(e.pocket, e.amount) for e in plan] == [("voucher:v", -10_000), ("cash", -35_000)]


# ---- refunds -------------------------------------------------------------------------------------


def test_refund_of_failed_domestic_returns_to_each_pocket() -> None:
    ledger = [*topup(1 * CNY, T0), *grant_voucher(20_000, T0, "v", T0 + DAY)]
    before = balances(ledger, T0)
    charge = plan_charge(before, 90_000, international=False, now=T0, ref="m1")
    ledger += charge
    assert balances(ledger, T0).available_domestic == before.available_domestic - 90_000
    refund = plan_refund(charge, T0 + 5, "m1")
    assert [(e.kind, e.pocket, e.amount) for e in refund] == [
        (K.VOUCHER_REFUND, "voucher:v", 20_000),
        (K.REFUND, "cash", 70_000),
    ]
    ledger += refund
    after = balances(ledger, T0 + 5)
    assert after == balances(ledger[:2], T0 + 5)  # exactly as before the charge
    # A duplicated receipt refunds nothing more.
    assert plan_refund([*charge, *refund], T0 + 6, "m1") == []


def test_refund_to_a_voucher_that_expired_meanwhile_is_void() -> None:
    exp = T0 + DAY
    ledger = [*topup(1 * CNY, T0), *grant_voucher(20_000, T0, "v", exp)]
    charge = plan_charge(balances(ledger, T0), 45_000, international=False, now=T0, ref="m")
    ledger += charge
    refund = plan_refund(charge, exp, "m")  # receipt arrives at the expiry instant
    assert [(e.kind, e.pocket, e.amount) for e in refund] == [
        (K.VOUCHER_REFUND, "voucher:v", 20_000),
        (K.VOUCHER_EXPIRE, "voucher:v", -20_000),
        (K.REFUND, "cash", 25_000),
    ]
    ledger += refund
    b = balances(ledger, exp)
    assert b.cash == 1 * CNY and dict(b.vouchers) == {}
    # Still idempotent: the void pair counts as refunded.
    assert plan_refund([*charge, *refund], exp + 1, "m") == []


def test_refund_of_a_card_portion_goes_back_to_the_card_never_cash() -> None:
    ledger = [*topup(1 * CNY, T0), *card_purchase(999_000_000, T0, "c")]
    charge = plan_charge(balances(ledger, T0), 350_000, international=True, now=T0, ref="m")
    refund = plan_refund(charge, T0 + 1, "m")
    assert [(e.kind, e.pocket, e.amount) for e in refund] == [(K.CARD_REFUND, "card:c", 350_000)]
    b = balances([*ledger, *charge, *refund], T0 + 1)
    assert b.cash == 1 * CNY and dict(b.cards) == {"c": 999 * CNY}


def test_refund_refuses_foreign_entries_and_over_refunds() -> None:
    with pytest.raises(LedgerError):
        plan_refund(topup(5, T0), T0, "m")
    with pytest.raises(LedgerError, match="more than"):
        plan_refund([Entry(K.REFUND, 5, "cash", T0, "m")], T0, "m")


# ---- housekeeping, entries, low balance ----------------------------------------------------------


def test_expire_entries_write_off_remainders_once() -> None:
    exp = T0 + DAY
    ledger = [
        *grant_voucher(20_000, T0, "v", exp),
        Entry(K.VOUCHER_SPEND, -5_000, "voucher:v", T0, "m", exp),
        *grant_voucher(7, T0, "live", exp + 1),
    ]
    assert expire_entries(ledger, exp - 1) == []
    w = expire_entries(ledger, exp)
    assert w == [Entry(K.VOUCHER_EXPIRE, -15_000, "voucher:v", exp, "v", exp)]
    assert balances(ledger + w, exp) == balances(ledger, exp)
    assert expire_entries(ledger + w, exp) == []  # idempotent
    assert [e.pocket for e in expire_entries(ledger + w, exp + 1)] == ["voucher:live"]


@pytest.mark.parametrize(
    ("kind", "amount", "pocket"),
    [
        (K.CHARGE, 5, "cash"),  # a charge adds nothing
        (K.TOPUP, -5, "cash"),
        (K.VOUCHER_SPEND, -5, "cash"),  # wrong pocket family
        (K.CHARGE, -5, "voucher:v"),
        (K.CHARGE, -5, "wallet"),
        (K.CHARGE, -5, "voucher:"),
        (K.CHARGE, -5.0, "cash"),
        (K.TOPUP, True, "cash"),
        ("bogus", 5, "cash"),
        (K.INVOICE, -5, "invoice"),
    ],
)
def test_entry_validation(kind: object, amount: object, pocket: str) -> None:
    with pytest.raises(LedgerError):
        Entry(kind, amount, pocket, T0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ((K.TOPUP, 5, "cash", True), "at:"),
        ((K.TOPUP, 5, "cash", float(T0)), "at:"),
        ((K.VOUCHER_GRANT, 5, "voucher:v", T0, "v", True), "expires_at:"),
        ((K.VOUCHER_GRANT, 5, "voucher:v", T0, "v", 1.5), "expires_at:"),
        ((K.VOUCHER_GRANT, 5, "voucher", T0), "unknown pocket"),
        ((K.CHARGE, -5, "invoice", T0), "pocket:"),
        ((K.TOPUP, False, "cash", T0), "amount:"),
        (("topup ", 5, "cash", T0), "kind:"),
    ],
)
def test_entry_validation_messages(fields: tuple[object, ...], match: str) -> None:
    """Each field's own refusal, whatever fast path the checks take for plain values (h11)."""
    with pytest.raises(LedgerError, match=match):
        Entry(*fields)  # type: ignore[arg-type]


def test_entry_accepts_int_subclasses_and_keeps_kind_members() -> None:
    class Micro(int):
        pass

    e = Entry(K.VOUCHER_SPEND, Micro(-5), "voucher:v", Micro(T0), "m", Micro(T0 + 1))
    assert (e.amount, e.at, e.expires_at) == (-5, T0, T0 + 1)
    assert Entry(K.CHARGE, -1, "cash", T0).kind is K.CHARGE
    assert Entry(K.INVOICE, 1, "invoice", T0) == Entry("invoice", 1, "invoice", T0)  # type: ignore[arg-type]


def test_entry_kind_from_stored_string_and_card_needs_expiry() -> None:
    assert Entry("charge", -1, "cash", T0).kind is K.CHARGE  # type: ignore[arg-type]
    with pytest.raises(LedgerError, match="expires"):
        Entry(K.CARD_PURCHASE, 999_000_000, "card:c", T0)


def test_balances_detects_inconsistent_ledgers() -> None:
    with pytest.raises(LedgerError, match="never granted"):
        balances([Entry(K.VOUCHER_SPEND, -1, "voucher:x", T0)], T0)
    with pytest.raises(LedgerError, match="twice"):
        balances([*grant_voucher(1, T0, "x", None), *grant_voucher(1, T0, "x", None)], T0)
    with pytest.raises(LedgerError, match="overdrawn"):
        balances(
            [*grant_voucher(1, T0, "x", None), Entry(K.VOUCHER_SPEND, -2, "voucher:x", T0)], T0
        )


def crossed_low_balance(before: int, after: int, threshold: int) -> bool:
    """warns_low_balance of an account already warned: only a crossing warns (session 36
    folded the crossing rule, then its only use, into it)."""
    return warns_low_balance(before, after, threshold, warned=True)


def test_low_balance_crossing_fires_once() -> None:
    threshold = 10 * CNY
    levels = [12 * CNY, 10 * CNY, 10 * CNY - 1, 9 * CNY, 5 * CNY, 11 * CNY, 9 * CNY, 8 * CNY]
    fired = [crossed_low_balance(a, b, threshold) for a, b in pairwise(levels)]
    # 12->10 stays at the threshold (not below); 10->9.999999 crosses; further drops are silent;
    # a top-up re-arms; 11->9 crosses again.
    assert fired == [False, True, False, False, False, True, False]
    assert crossed_low_balance(threshold, threshold - 1, threshold)
    assert not crossed_low_balance(threshold + 1, threshold, threshold)
    assert not crossed_low_balance(threshold - 1, threshold - 2, threshold)


# ---- properties ----------------------------------------------------------------------------------

pockets = st.dictionaries(
    st.sampled_from(["a", "b", "c", "d"]), st.integers(min_value=1, max_value=5 * CNY), max_size=4
)
expiries = st.one_of(st.none(), st.integers(min_value=T0 - 10, max_value=T0 + 10))


@settings(max_examples=300, deadline=None)
@given(
    cash=st.integers(min_value=-CNY, max_value=5 * CNY),
    vouchers=pockets,
    cards=pockets,
    v_exp=st.lists(expiries, min_size=4, max_size=4),
    c_exp=st.lists(st.integers(min_value=T0 - 10, max_value=T0 + 10), min_size=4, max_size=4),
    amount=st.integers(min_value=0, max_value=30 * CNY),
    international=st.booleans(),
)
def test_plan_charge_properties(
    cash: int,
    vouchers: dict[str, int],
    cards: dict[str, int],
    v_exp: list[int | None],
    c_exp: list[int],
    amount: int,
    international: bool,
) -> None:
    ids = ["a", "b", "c", "d"]
    v_at = dict(zip(ids, v_exp, strict=True))
    c_at = dict(zip(ids, c_exp, strict=True))
    b = Balances(cash, vouchers, cards, v_at, c_at)
    valid_v = {k: v for k, v in vouchers.items() if (x := v_at[k]) is None or T0 < x}
    valid_c = {k: v for k, v in cards.items() if T0 < c_at[k]}
    spendable = max(cash, 0) + sum(valid_v.values())
    if international:
        spendable += sum(valid_c.values())
    try:
        plan = plan_charge(b, amount, international=international, now=T0, ref="m")
    except InsufficientFunds as e:
        assert amount > spendable
        assert (e.needed, e.available) == (amount, spendable)
        return
    assert amount <= spendable
    assert sum(e.amount for e in plan) == -amount
    assert all(e.amount < 0 for e in plan)
    taken: dict[str, int] = {}
    for e in plan:
        assert e.pocket not in taken  # each pocket at most once
        taken[e.pocket] = -e.amount
    for vid, amt in valid_v.items():
        assert taken.get(f"voucher:{vid}", 0) <= amt
    for cid, amt in valid_c.items():
        assert taken.get(f"card:{cid}", 0) <= amt
    assert taken.get("cash", 0) <= max(cash, 0)
    # Nothing from expired pockets, no cards for domestic.
    for p in taken:
        if p.startswith("voucher:"):
            assert p[8:] in valid_v
        if p.startswith("card:"):
            assert international and p[5:] in valid_c
    # Order: cash only once every valid voucher (and card, internationally) is exhausted.
    if "cash" in taken:
        assert all(taken.get(f"voucher:{k}") == v for k, v in valid_v.items())
        if international:
            assert all(taken.get(f"card:{k}") == v for k, v in valid_c.items())
    if international and any(p.startswith("card:") for p in taken):
        assert all(taken.get(f"voucher:{k}") == v for k, v in valid_v.items())


ops = st.lists(
    st.one_of(
        st.tuples(st.just("topup"), st.integers(min_value=1, max_value=3 * CNY)),
        st.tuples(
            st.just("voucher"),
            st.integers(min_value=1, max_value=CNY),
            st.integers(min_value=1, max_value=50),
        ),
        st.tuples(st.just("card"), st.sampled_from(CARD_FACE_VALUES)),
        st.tuples(st.just("charge"), st.integers(min_value=1, max_value=CNY), st.booleans()),
        st.tuples(st.just("refund"), st.integers(min_value=0, max_value=100)),
        st.tuples(st.just("tick"), st.integers(min_value=1, max_value=40)),
    ),
    min_size=8,
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_ledger_built_by_plans_never_goes_negative(script: list[tuple]) -> None:
    now = T0
    ledger: list[Entry] = []
    charges: list[tuple[str, list[Entry]]] = []
    refunded: set[str] = set()
    n = 0
    for op in script:
        n += 1
        if op[0] == "topup":
            ledger += topup(op[1], now)
        elif op[0] == "voucher":
            ledger += grant_voucher(op[1], now, f"v{n}", now + op[2])
        elif op[0] == "card":
            ledger += card_purchase(op[1], now, f"c{n}")
        elif op[0] == "charge":
            before = balances(ledger, now)
            avail = before.available_international if op[2] else before.available_domestic
            try:
                plan = plan_charge(before, op[1], international=op[2], now=now, ref=f"m{n}")
            except InsufficientFunds:
                assert op[1] > avail
                continue
            ledger += plan
            charges.append((f"m{n}", plan))
            after = balances(ledger, now)
            avail_after = after.available_international if op[2] else after.available_domestic
            assert avail_after == avail - op[1]
        elif op[0] == "refund" and charges:
            ref, plan = charges[op[1] % len(charges)]
            back = plan_refund([e for e in ledger if e.ref == ref], now, ref)
            if ref in refunded:
                assert back == []
            refunded.add(ref)
            ledger += back
        elif op[0] == "tick":
            now += op[1]
        b = balances(ledger, now)  # raises LedgerError on any overdrawn pocket
        assert b.cash >= 0
        assert all(v > 0 for v in b.vouchers.values())
        assert all(v > 0 for v in b.cards.values())


# ---- money in naming its payment (session 35 finance review 3 and 4) -----------------------------


def test_a_voucher_or_card_names_its_payment_or_else_itself() -> None:
    [v] = grant_voucher(2 * CNY, T0, "v1", T0 + DAY, "PROMO-7")
    [c] = card_purchase(999_000_000, T0, "c1", ref="SHOP-88")
    assert (v.ref, v.pocket, c.ref, c.pocket) == ("PROMO-7", "voucher:v1", "SHOP-88", "card:c1")
    [v0] = grant_voucher(2 * CNY, T0, "v1", None)
    [c0] = card_purchase(999_000_000, T0, "c1")
    assert (v0.ref, c0.ref) == ("v1", "c1")  # as before: the id
    # The pocket, not the ref, is what balances go by.
    assert balances([v, c], T0).vouchers == {"v1": 2 * CNY}
    assert balances([v, c], T0).cards == {"c1": 999_000_000}
    assert {str(e.kind) for e in (*topup(1, T0), v, c)} == PAYMENT_KINDS


def test_a_write_off_names_the_voucher_not_the_payment() -> None:
    ledger = [*grant_voucher(2 * CNY, T0, "v1", T0 + DAY, "PROMO-7")]
    [off] = expire_entries(ledger, T0 + DAY)
    assert (off.kind, off.amount, off.pocket, off.ref) == (
        K.VOUCHER_EXPIRE,
        -2 * CNY,
        "voucher:v1",
        "v1",
    )


def test_a_ref_credited_again_with_the_same_kind_and_amount_is_a_retry() -> None:
    [again] = topup(500 * CNY, T0 + DAY, "BANK-7731")
    assert ref_conflict("topup", 500 * CNY, again) is None
    [card] = card_purchase(999_000_000, T0 + DAY, "c2", ref="SHOP-88")
    assert ref_conflict("card_purchase", 999_000_000, card) is None  # a new card id: a retry


def test_a_ref_reused_with_another_amount_or_kind_is_refused_naming_both_amounts() -> None:
    [other] = topup(1_000 * CNY, T0, "BANK-7731")
    why = ref_conflict("topup", 500 * CNY, other)
    assert why is not None
    for part in ("'BANK-7731'", "topup of 500.00 (500000000 micro-units)", "1000.00"):
        assert part in why, why
    [card] = card_purchase(999_000_000, T0, "c1", ref="BANK-7731")
    why = ref_conflict("topup", 999_000_000, card)  # the same amount, as another kind
    assert why is not None and "as a topup of 999.00" in why and "this card_purchase" in why


def test_a_payout_ref_reused_is_refused_in_a_payouts_words() -> None:
    """Money paid out is recorded, not credited: the refusal of a refund payout's reused ref
    said it was "already credited ... as a refund_paid"."""
    [payout] = refund_payment(5 * CNY, RefundPosition(10 * CNY, 0), T0, "WIRE-1")
    why = ref_conflict("refund_paid", 4 * CNY, payout)
    assert why is not None
    for part in (
        "'WIRE-1' already names a refund payout of 4.00 (4000000 micro-units)",
        "this payout is of 5.00 (5000000 micro-units)",
        "nothing was recorded",
    ):
        assert part in why, why
    assert "credited" not in why and "refund_paid" not in why
    why = ref_conflict("topup", 5 * CNY, payout)  # the same amount, money in before the close
    assert why is not None
    assert "'WIRE-1' already names a topup of 5.00 (5000000 micro-units) credited" in why
    assert "not a refund payout" in why and "nothing was recorded" in why
    assert ref_conflict("refund_paid", 5 * CNY, payout) is None  # a retry
