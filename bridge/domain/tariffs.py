"""Versioned tariffs: the domestic tier table, international prices by prefix (pure).

Money is integer micro-units (1 CNY = 1,000,000) everywhere, so a price like 0.0450 CNY is the exact
integer 45_000 and no sum of prices can drift; rounding happens only on invoices (settlement.py).
A tariff is a value with an effective time, never edited in place: the month that straddles a price
change is billed partly under each version, which is only possible if old versions stay intact.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from bridge.text.units import CountingRule

__all__ = [
    "BILL_ON",
    "DOMESTIC_TIERS",
    "MICRO_PER_CNY",
    "STARTING_PRICE",
    "BillingError",
    "PriceNotFound",
    "Tariff",
    "TariffNotFound",
    "Tier",
    "format_micro",
    "international_price",
    "is_domestic",
    "tariff_at",
    "tier_for",
    "validate_tariff",
]

MICRO_PER_CNY = 1_000_000
MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z: times beyond are typos, not dates
MAX_MONEY = 10**15  # one billion CNY in micro-units: far above any price, well inside 64 bits
STARTING_PRICE = 45_000  # 0.0450 CNY: the prepaid pre-charge / postpaid accrual price per unit
BILL_ON = ("delivered", "submitted")
_PREFIX = re.compile(r"\+[1-9][0-9]{0,14}")


class BillingError(Exception):
    """A billing refusal with a stable machine `code` and a human `message` naming the field."""

    code = "BILLING_ERROR"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class PriceNotFound(BillingError):
    """No international price matches the destination: the send must be refused, not given away."""

    code = "PRICE_NOT_FOUND"


class TariffNotFound(BillingError):
    """No tariff version is in force at the instant asked (or two are, ambiguously)."""

    code = "TARIFF_NOT_FOUND"


@dataclass(frozen=True, slots=True)
class Tier:
    up_to: int | None  # inclusive upper bound of the month's units; None = unbounded (last tier)
    price: int  # micro-units per billable unit


DOMESTIC_TIERS: tuple[Tier, ...] = (
    Tier(100_000, 45_000),
    Tier(300_000, 40_000),
    Tier(500_000, 39_000),
    Tier(1_000_000, 38_000),
    Tier(3_000_000, 37_000),
    Tier(None, 36_000),
)


@dataclass(frozen=True, slots=True)
class Tariff:
    """One version of the price sheet, in force from `effective_at` (unix ms) until the next one."""

    version: str
    effective_at: int
    tiers: tuple[Tier, ...] = DOMESTIC_TIERS
    starting_price: int = STARTING_PRICE
    counting_rule: str = CountingRule.CHARS_70_67.value
    domestic_bill_on: str = "delivered"
    international_bill_on: str = "submitted"
    # E.164 country prefix ("+1", "+44", "+852") -> micro-units per transmitted segment.
    international: Mapping[str, int] = field(default_factory=dict)
    domestic_prefix: str = "+86"


def format_micro(micro: int) -> str:
    """`micro` as a decimal CNY string without floats: 45_000 -> "0.045", 12_000_000 -> "12.00"."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO_PER_CNY)
    digits = f"{frac:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}{whole}.{digits}"


def _is_int(v: object) -> bool:
    # bool is an int subclass; True as a price is a bug, not 1 micro-unit.
    return isinstance(v, int) and not isinstance(v, bool)


def tier_for(units: int, tiers: Sequence[Tier] = DOMESTIC_TIERS) -> tuple[int, Tier]:
    """(1-based index, tier) that a month total of `units` reaches.

    All-units pricing: the caller prices the WHOLE month at this tier's price, so 100,001 units cost
    100,001 x 0.040, not 100,000 x 0.045 + 1 x 0.040. Zero units is tier 1.
    """
    if not _is_int(units) or units < 0:
        raise ValueError(f"units: must be a non-negative integer, got {units!r}")
    for i, tier in enumerate(tiers, start=1):
        if tier.up_to is None or units <= tier.up_to:
            return i, tier
    raise ValueError("tiers: the last tier must be unbounded (up_to=None)")


def tariff_at(tariffs: Sequence[Tariff], at_ms: int) -> Tariff:
    """The version in force at `at_ms`: the latest `effective_at <= at_ms`.

    Effective exactly at `effective_at` (a message accepted at that millisecond pays the new price).
    Two versions with the same effective time are refused rather than picked by list order, because
    list order comes from a query and must not decide a price.
    """
    if len(tariffs) == 1 and tariffs[0].effective_at <= at_ms:
        return tariffs[0]  # one version in force: the loop's answer (nearly every send)
    best: Tariff | None = None
    tie = False
    for t in tariffs:
        if t.effective_at > at_ms:
            continue
        if best is None or t.effective_at > best.effective_at:
            best, tie = t, False
        elif t.effective_at == best.effective_at and t != best:
            tie = True
    if best is None:
        raise TariffNotFound(f"tariff: no tariff version is in force at {at_ms} ms")
    if tie:
        raise TariffNotFound(
            f"tariff: several versions take effect at {best.effective_at} ms",
            code="TARIFF_AMBIGUOUS",
        )
    return best


def is_domestic(e164: str, tariff: Tariff) -> bool:
    """Whether `e164` is billed by the domestic table (country codes are prefix-free)."""
    return e164.startswith(tariff.domestic_prefix)


def international_price(e164: str, tariff: Tariff) -> tuple[str, int]:
    """(prefix, micro per segment) of the longest prefix of `e164` in the tariff.

    Longest wins so a tariff can price "+1" and override "+1242" (Bahamas) inside the NANP zone.
    """
    best: str | None = None
    for prefix in tariff.international:
        if e164.startswith(prefix) and (best is None or len(prefix) > len(best)):
            best = prefix
    if best is None:
        raise PriceNotFound(
            f"to: no international price for destination {e164[:4]}... in tariff {tariff.version}"
        )
    return best, tariff.international[best]


def validate_tariff(t: Tariff) -> list[str]:
    """Problems with `t`, each naming its field; empty when the tariff is usable."""
    problems: list[str] = []
    if not isinstance(t.version, str) or not t.version.strip():
        problems.append("version: must be a non-empty string")
    if not _is_int(t.effective_at) or not 0 <= t.effective_at <= MAX_MS:
        problems.append("effective_at: must be unix ms between 0 and 9999-12-31")
    if not t.tiers:
        problems.append("tiers: at least one tier is required")
    prev: int | None = None
    for i, tier in enumerate(t.tiers, start=1):
        last = i == len(t.tiers)
        if not _is_int(tier.price) or not 0 < tier.price <= MAX_MONEY:
            problems.append(f"tiers[{i}].price: must be a positive integer (micro-units)")
        if tier.up_to is None:
            if not last:
                problems.append(f"tiers[{i}].up_to: only the last tier may be unbounded")
            continue
        if last:
            problems.append(f"tiers[{i}].up_to: the last tier must be unbounded (None)")
        if not _is_int(tier.up_to) or not 0 < tier.up_to <= MAX_MONEY:
            problems.append(f"tiers[{i}].up_to: must be a positive integer or None")
            continue
        if prev is not None and tier.up_to <= prev:
            problems.append(f"tiers[{i}].up_to: must be greater than the tier before ({prev})")
        prev = tier.up_to
    if not _is_int(t.starting_price) or not 0 < t.starting_price <= MAX_MONEY:
        problems.append("starting_price: must be a positive integer (micro-units)")
    else:
        # Prepaid charges the starting price and refunds down to the tier price at settlement; a
        # tier dearer than the starting price would leave a debt that prepaid cannot collect.
        dear = [
            i
            for i, tier in enumerate(t.tiers, start=1)
            if _is_int(tier.price) and tier.price > t.starting_price
        ]
        if dear:
            problems.append(
                f"starting_price: below the price of tier(s) {dear}; it must be >= every tier price"
            )
    if not isinstance(t.counting_rule, str) or t.counting_rule not in {
        r.value for r in CountingRule
    }:
        problems.append(
            f"counting_rule: must be one of {sorted(r.value for r in CountingRule)}, "
            f"got {t.counting_rule!r}"
        )
    # The service rules fix when traffic is billed, and the refunds at final receipts
    # (admission.refund_share) follow them: a tariff saying otherwise would bill at settlement
    # what a receipt already gave back, or the reverse.
    if t.domestic_bill_on != "delivered":
        problems.append("domestic_bill_on: must be 'delivered' (domestic is billed on delivery)")
    if t.international_bill_on != "submitted":
        problems.append(
            "international_bill_on: must be 'submitted' (international is billed on submission)"
        )
    if not isinstance(t.domestic_prefix, str) or not _PREFIX.fullmatch(t.domestic_prefix):
        problems.append("domestic_prefix: must be '+' followed by digits, e.g. '+86'")
    for prefix, price in t.international.items():
        if not isinstance(prefix, str) or not _PREFIX.fullmatch(prefix):
            problems.append(f"international[{prefix!r}]: prefix must be '+' followed by digits")
        elif isinstance(t.domestic_prefix, str) and prefix.startswith(t.domestic_prefix):
            problems.append(f"international[{prefix!r}]: inside the domestic prefix")
        if not _is_int(price) or not 0 < price <= MAX_MONEY:
            problems.append(f"international[{prefix!r}]: price must be a positive integer")
    return problems
