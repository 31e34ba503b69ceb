"""bridge/domain/tariffs.py: tier table (all-units), versions by effective time, prefix prices."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.domain.tariffs import (
    DOMESTIC_TIERS,
    PriceNotFound,
    Tariff,
    TariffNotFound,
    Tier,
    format_micro,
    international_price,
    is_domestic,
    tariff_at,
    tier_for,
    validate_tariff,
)

INTL = {"+1": 350_000, "+1242": 600_000, "+44": 400_000, "+852": 300_000, "+85366": 280_000}

# (units in the month, expected tier, expected whole-month amount in micro, by hand)
BOUNDARIES = [
    (0, 1, 0),
    (1, 1, 45_000),
    (100_000, 1, 4_500_000_000),  # 100,000 x 0.045 = 4,500.00 CNY
    (100_001, 2, 4_000_040_000),  # 100,001 x 0.040 = 4,000.04 CNY
    (300_000, 2, 12_000_000_000),  # 300,000 x 0.040 = 12,000.00
    (300_001, 3, 11_700_039_000),  # 300,001 x 0.039 = 11,700.039
    (500_000, 3, 19_500_000_000),  # 500,000 x 0.039 = 19,500.00
    (500_001, 4, 19_000_038_000),  # 500,001 x 0.038 = 19,000.038
    (1_000_000, 4, 38_000_000_000),  # 1,000,000 x 0.038 = 38,000.00
    (1_000_001, 5, 37_000_037_000),  # 1,000,001 x 0.037 = 37,000.037
    (3_000_000, 5, 111_000_000_000),  # 3,000,000 x 0.037 = 111,000.00
    (3_000_001, 6, 108_000_036_000),  # 3,000,001 x 0.036 = 108,000.036
    (50_000_000, 6, 1_800_000_000_000),
]


@pytest.mark.parametrize(("units", "tier", "amount"), BOUNDARIES)
def test_every_tier_boundary(units: int, tier: int, amount: int) -> None:
    idx, t = tier_for(units, DOMESTIC_TIERS)
    assert idx == tier
    assert t is DOMESTIC_TIERS[tier - 1]
    assert units * t.price == amount


def test_all_units_not_graduated() -> None:
    # Graduated pricing would charge the first 100,000 at 0.045 and only the excess at 0.040.
    _, t = tier_for(100_001)
    all_units = 100_001 * t.price
    graduated = 100_000 * 45_000 + 1 * 40_000
    assert all_units == 4_000_040_000
    assert graduated == 4_500_040_000
    assert all_units != graduated
    # The consequence all-units pricing is known for: one more unit makes the month cheaper.
    assert tier_for(100_001)[1].price * 100_001 < tier_for(100_000)[1].price * 100_000


@settings(max_examples=300, deadline=None)
@given(st.integers(min_value=0, max_value=10**9), st.integers(min_value=0, max_value=10**9))
def test_tier_is_monotonic(a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    (i_lo, t_lo), (i_hi, t_hi) = tier_for(lo), tier_for(hi)
    assert i_lo <= i_hi
    assert t_lo.price >= t_hi.price
    # The tier reached is the first whose bound holds the total.
    assert t_hi.up_to is None or hi <= t_hi.up_to
    if i_hi > 1:
        prev = DOMESTIC_TIERS[i_hi - 2].up_to
        assert prev is not None and hi > prev


@pytest.mark.parametrize("bad", [-1, 1.0, True, "5"])
def test_tier_for_refuses_non_integers(bad: object) -> None:
    with pytest.raises(ValueError, match="units"):
        tier_for(bad)  # type: ignore[arg-type]


def test_tier_for_needs_an_unbounded_last_tier() -> None:
    with pytest.raises(ValueError, match="unbounded"):
        tier_for(11, (Tier(10, 5),))


V1 = Tariff("2026-01", 1_000)
V2 = Tariff("2026-03", 5_000, tiers=tuple(Tier(t.up_to, t.price - 1_000) for t in DOMESTIC_TIERS))


def test_tariff_at_picks_latest_in_force() -> None:
    ts = [V2, V1]  # order must not matter
    assert tariff_at(ts, 1_000) is V1  # effective at exactly effective_at
    assert tariff_at(ts, 4_999) is V1
    assert tariff_at(ts, 5_000) is V2
    assert tariff_at(ts, 10**13) is V2


def test_tariff_at_none_in_force() -> None:
    with pytest.raises(TariffNotFound) as e:
        tariff_at([V1, V2], 999)
    assert e.value.code == "TARIFF_NOT_FOUND"
    with pytest.raises(TariffNotFound):
        tariff_at([], 10**12)


def test_tariff_at_refuses_two_versions_at_one_instant() -> None:
    other = Tariff("2026-01b", 1_000, starting_price=50_000)
    with pytest.raises(TariffNotFound) as e:
        tariff_at([V1, other], 2_000)
    assert e.value.code == "TARIFF_AMBIGUOUS"
    # The same version listed twice (a duplicated row) is not ambiguous.
    assert tariff_at([V1, Tariff("2026-01", 1_000)], 2_000) == V1
    # An ambiguity superseded by a later version no longer matters.
    assert tariff_at([V1, other, V2], 6_000) is V2


def test_is_domestic() -> None:
    t = Tariff("v", 0, international=INTL)
    assert is_domestic("+8613800138000", t)
    assert not is_domestic("+85291234567", t)
    assert not is_domestic("+12025550123", t)


@pytest.mark.parametrize(
    ("number", "prefix", "price"),
    [
        ("+12025550123", "+1", 350_000),
        ("+12425550123", "+1242", 600_000),  # longest prefix wins over "+1"
        ("+447700900123", "+44", 400_000),
        ("+85291234567", "+852", 300_000),
        ("+85366123456", "+85366", 280_000),
    ],
)
def test_international_price_longest_prefix(number: str, prefix: str, price: int) -> None:
    assert international_price(number, Tariff("v", 0, international=INTL)) == (prefix, price)


def test_international_price_not_found() -> None:
    with pytest.raises(PriceNotFound) as e:
        international_price("+33612345678", Tariff("v", 0, international=INTL))
    assert e.value.code == "PRICE_NOT_FOUND"
    assert e.value.message.startswith("to:")
    assert "612345678" not in e.value.message  # the full number is not echoed


def test_default_tariff_is_valid() -> None:
    t = Tariff("2026-01", 0, international=INTL)
    assert validate_tariff(t) == []
    assert t.starting_price == 45_000
    assert t.counting_rule == "chars_70_67"
    assert (t.domestic_bill_on, t.international_bill_on) == ("delivered", "submitted")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"version": ""}, "version"),
        ({"effective_at": -1}, "effective_at"),
        ({"effective_at": 1.5}, "effective_at"),
        ({"tiers": ()}, "tiers"),
        ({"tiers": (Tier(10, 5), Tier(10, 4), Tier(None, 3))}, "tiers[2].up_to"),
        ({"tiers": (Tier(10, 5), Tier(5, 4), Tier(None, 3))}, "tiers[2].up_to"),
        ({"tiers": (Tier(10, 5), Tier(20, 4))}, "tiers[2].up_to"),
        ({"tiers": (Tier(None, 5), Tier(None, 4))}, "tiers[1].up_to"),
        ({"tiers": (Tier(0, 5), Tier(None, 4))}, "tiers[1].up_to"),
        ({"tiers": (Tier(10, 0), Tier(None, 4))}, "tiers[1].price"),
        ({"tiers": (Tier(10, 5), Tier(None, 4.5))}, "tiers[2].price"),
        ({"tiers": (Tier(10, True), Tier(None, 4))}, "tiers[1].price"),
        ({"starting_price": 0}, "starting_price"),
        ({"starting_price": 44_999}, "starting_price"),  # below tier 1: prepaid would owe
        ({"counting_rule": "words"}, "counting_rule"),
        ({"domestic_bill_on": "sent"}, "domestic_bill_on"),
        ({"international_bill_on": "delivery"}, "international_bill_on"),
        ({"domestic_prefix": "86"}, "domestic_prefix"),
        ({"international": {"44": 1}}, "international['44']"),
        ({"international": {"+4a": 1}}, "international['+4a']"),
        ({"international": {"+44": 0}}, "international['+44']"),
        ({"international": {"+44": 0.4}}, "international['+44']"),
        ({"international": {"+8613": 1}}, "international['+8613']"),
    ],
)
def test_validate_tariff_names_the_field(changes: dict[str, object], field: str) -> None:
    base: dict[str, object] = {"version": "v", "effective_at": 0, "international": {"+44": 1}}
    base.update(changes)
    problems = validate_tariff(Tariff(**base))  # type: ignore[arg-type]
    assert problems, changes
    assert any(p.startswith(field + ":") for p in problems), problems


@pytest.mark.parametrize(
    ("micro", "text"),
    [(0, "0.00"), (45_000, "0.045"), (12_000_000, "12.00"), (-1, "-0.000001"), (10_000, "0.01")],
)
def test_format_micro(micro: int, text: str) -> None:
    assert format_micro(micro) == text
