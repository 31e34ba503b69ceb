"""Monthly settlement: price a month at the tier its total reached (pure).

Pure and order-free, so `bill settle --month` run twice (or on two hosts) computes the same bill;
the store makes it take effect once (one SETTLEMENT_ADJUSTMENT / INVOICE per month, ref = month).

Decisions (the lead documents these):
- Month boundaries are local midnight on the 1st in the deployment time zone `tz`; a line belongs to
  the month containing its `at` (acceptance time, unix ms). Lines outside the month are ignored, so
  the caller may pass a padded UTC range.
- Tier: chosen by the month's TOTAL billable domestic units. Each line is priced by the tariff
  version in force at its `at`, at the tier that total reaches in that version's table (all-units).
- A month is settled only when its outcome is known: a line still queued or sent (awaiting its
  receipt, what /v1/stats counts as pending) raises SettlementNotReady (awaiting_outcome), whatever
  its bill-on rule. International traffic is billed on submission, yet a message with a part the
  SMSC refused gets that part's refund with its final receipt: settled before it, the bill kept
  the whole pre-charge as charged and the refund fell in no bill. Messages become final at the
  latest 72 h after sending (no receipt => "unknown"; domestic billed), so schedule the automatic
  run after the month end + 72 h + the receipt sweep's margin.
- `charged` on a line is the money actually taken from the balance for that message and not given
  back (net of plan_refund), so a failed message already refunded at its receipt carries 0 and a
  failed message whose refund was missed is refunded here instead of being lost.
- Prepaid refund = domestic charged - domestic amount when positive (never a claw-back). Each
  voucher gets back what it was charged above the month's price (refund_split; void if it has
  expired, like a failed message's refund), cash the rest. International is
  paid by its pre-charge at submission: shown on the bill, no refund path.
- Postpaid invoice = invoice_round(what is priced but was not taken from the balance).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from fractions import Fraction
from typing import Literal, NamedTuple
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bridge.domain.ledger import POCKET_CASH, POCKET_INVOICE, Entry, EntryKind, voucher_pocket
from bridge.domain.lifecycle import (
    MSG_DELIVERED,
    MSG_EXPIRED,
    MSG_FAILED,
    MSG_QUEUED,
    MSG_SENT,
    MSG_UNKNOWN,
)
from bridge.domain.tariffs import BillingError, PriceNotFound, Tariff, tariff_at, tier_for

__all__ = [
    "FEN",
    "DomesticGroup",
    "IntlLine",
    "MonthBill",
    "RefundSplit",
    "SettlementNotReady",
    "UsageLine",
    "VoucherCharge",
    "VoucherShare",
    "awaiting_outcome",
    "billable",
    "chained_bounds",
    "invoice_round",
    "month_before",
    "month_bounds",
    "refund_split",
    "settle_month",
    "settlement_entries",
]

FEN = 10_000  # micro-units in 0.01 CNY, the smallest amount an invoice shows
AccountKind = Literal["prepaid", "postpaid"]
_MONTH = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_STATES = frozenset({MSG_QUEUED, MSG_SENT, MSG_DELIVERED, MSG_FAILED, MSG_EXPIRED, MSG_UNKNOWN})
# Billed when the bill-on rule is "delivered" (domestic, always: validate_tariff): no receipt
# within 72 h ("unknown") is billed too.
BILLED_ON_DELIVERY = frozenset({MSG_DELIVERED, MSG_UNKNOWN})


class SettlementNotReady(BillingError):
    """Some of the month's messages have no billable outcome yet; settle later. `pending`
    counts those messages (UsageLine.messages), not the usage lines they were grouped into."""

    code = "SETTLEMENT_NOT_READY"

    def __init__(self, pending: int, month: str) -> None:
        super().__init__(f"month: {pending} message(s) of {month} still await their outcome")
        self.pending = pending


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True, slots=True)
class UsageLine:
    """One message as settlement sees it."""

    at: int  # acceptance time, unix ms: decides the month and the tariff version
    units: int  # billable units by the tariff's counting rule (domestic)
    charged: int  # micro taken from the balance for this message, net of refunds already made
    domestic: bool
    country_prefix: str | None  # international: the tariff prefix matched at acceptance
    segments: int  # international: segments the SMSC accepted (submitted)
    final_state: str  # lifecycle MSG_* state
    from_vouchers: int = 0  # the part of `charged` paid by vouchers (net), for "vouchers used"
    # How many messages the line stands for: the store sums a group of them (same traffic,
    # state and tariff period) into one line, and a month not ready reports messages, not lines.
    messages: int = 1

    def __post_init__(self) -> None:
        for name in ("at", "units", "charged", "segments", "from_vouchers", "messages"):
            v = getattr(self, name)
            if not _is_int(v) or (name != "at" and v < 0):
                raise ValueError(f"{name}: must be a non-negative integer, got {v!r}")
        if self.final_state not in _STATES:
            raise ValueError(f"final_state: unknown message state {self.final_state!r}")
        if not self.domestic and not self.country_prefix:
            raise ValueError("country_prefix: required on an international line")


class DomesticGroup(NamedTuple):
    """Domestic usage under one tariff version (one group unless the price changed mid-month)."""

    version: str
    units: int
    tier: int
    price: int
    amount: int


class IntlLine(NamedTuple):
    country_prefix: str
    segments: int
    price: int
    amount: int


@dataclass(frozen=True, slots=True)
class MonthBill:
    month: str  # "YYYY-MM"
    account_kind: str
    units: int  # billable domestic units in the month (the total that picks the tier)
    tier: int  # 1-based tier reached, in the version in force at the last domestic line
    tier_price: int  # that version's price at that tier (see `domestic` for every version)
    domestic_amount: int  # exact micro: sum of units x tier price per version
    charged: int  # domestic micro taken from the balance (net)
    refund: int  # prepaid (and any pre-charged postpaid): max(0, charged - domestic_amount)
    invoice_total: int  # postpaid: invoice_round(priced - taken from balance); prepaid: 0
    international: tuple[IntlLine, ...]  # per (prefix, price), by prefix then time
    vouchers_used: int  # micro paid by vouchers in the month (net of refunds)
    domestic: tuple[DomesticGroup, ...] = ()  # per tariff version, by effective time
    international_amount: int = 0
    international_charged: int = 0

    @property
    def amount(self) -> int:
        """Exact value of the month's usage in micro (domestic + international), unrounded."""
        return self.domestic_amount + self.international_amount


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise BillingError(f"tz: unknown time zone {tz!r}", code="INVALID_TIME_ZONE") from None


def month_bounds(month: str, tz: str) -> tuple[int, int]:
    """[start, end) of `month` in unix ms: local midnight on the 1st to that of the next month."""
    m = _MONTH.fullmatch(month) if isinstance(month, str) else None
    if m is None:
        raise BillingError(f"month: must be YYYY-MM, got {month!r}", code="INVALID_MONTH")
    year, mon = int(m.group(1)), int(m.group(2))
    zone = _zone(tz)
    start = datetime(year, mon, 1, tzinfo=zone)
    end = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=zone)
    return (start - _EPOCH) // _MS, (end - _EPOCH) // _MS


def day_bounds(day: date, tz: str) -> tuple[int, int]:
    """[start, end) of the calendar `day` in `tz`, in unix ms: 23 or 25 hours across a DST
    change (an aware datetime plus a day is the next local midnight). OverflowError for the
    last day a datetime holds."""
    start = datetime(day.year, day.month, day.day, tzinfo=_zone(tz))
    return (start - _EPOCH) // _MS, (start + timedelta(days=1) - _EPOCH) // _MS


def month_of(ms: int, tz: str) -> str:
    """The month (YYYY-MM, in `tz`) that the instant `ms` falls in."""
    local = datetime.fromtimestamp(ms / 1000, _zone(tz))
    return f"{local.year:04d}-{local.month:02d}"


def next_month(month: str) -> str:
    year, mon = int(month[:4]), int(month[5:7])
    return f"{year + mon // 12:04d}-{mon % 12 + 1:02d}"


# Not final yet: what a receipt (or the receipt timeout) may still change the charge of.
AWAITING_OUTCOME = frozenset({MSG_QUEUED, MSG_SENT})


def awaiting_outcome(line: UsageLine) -> bool:
    """Whether the message may still change its month's bill: queued, or sent and awaiting its
    final receipt. Sent counts for international traffic too, though it is billed on
    submission: a part the SMSC refused is refunded when the message ends (with its final
    receipt), so a bill made before would keep that part as charged for good. One rule for
    both traffics, the one /v1/stats calls pending and the README's settlement rule states."""
    return line.final_state in AWAITING_OUTCOME


def billable(line: UsageLine, tariff: Tariff) -> bool:
    """Whether the message is billed under `tariff`'s bill-on rule for its traffic.

    On delivery (domestic): delivered, or "unknown" (no receipt within 72 h is billed); failed and
    expired (never sent) are not. On submission (international): billed once the SMSC accepted at
    least one segment, whatever the delivery outcome. A message still pending is not (yet) billable.
    """
    bill_on = tariff.domestic_bill_on if line.domestic else tariff.international_bill_on
    if bill_on == "delivered":
        return line.final_state in BILLED_ON_DELIVERY
    return line.final_state != MSG_QUEUED and line.segments > 0


def month_before(month: str) -> str:
    year, mon = int(month[:4]), int(month[5:7])
    return f"{year - (mon == 1):04d}-{(mon - 2) % 12 + 1:02d}"


def chained_bounds(
    month: str, tz: str, previous_end: int | None, next_start: int | None = None
) -> tuple[int, int]:
    """[start, end) a bill for `month` covers: the month in `tz`, starting where the previous
    month's bill ended and ending where the next month's began, for those that exist.

    Why: after a change of `rules.timezone` the months' bounds move. Without the chain, the
    first month settled under the new zone overlapped the last bill (Shanghai to UTC: 8 hours
    of messages billed twice) or left a gap after it (UTC to Shanghai: 8 hours never billed).
    The next month's bill counts too: a month settled late (not ready in time, filled in by the
    look-back) may be settled after its successor. Chained, every message falls in exactly one
    bill; such a month is a few hours longer or shorter."""
    start, end = month_bounds(month, tz)
    if previous_end is not None:
        start = previous_end
    if next_start is not None:
        end = next_start
    return start, max(start, end)  # never inverted: empty at worst


def settle_month(
    month: str,
    lines: Sequence[UsageLine],
    tariffs: Sequence[Tariff],
    tz: str,
    account_kind: AccountKind,
    bounds: tuple[int, int] | None = None,
) -> MonthBill:
    """The month's bill. Pure: the same inputs in any order give the same bill. `bounds`
    (chained_bounds) replace the month's own in `tz`."""
    if account_kind not in ("prepaid", "postpaid"):
        raise ValueError(f"account_kind: must be prepaid or postpaid, got {account_kind!r}")
    start, end = bounds if bounds is not None else month_bounds(month, tz)
    inside = [ln for ln in lines if start <= ln.at < end]

    pending = 0
    dom_units: dict[str, int] = {}
    versions: dict[str, Tariff] = {}
    intl: dict[tuple[str, int], int] = {}  # (prefix, price) -> segments
    intl_since: dict[tuple[str, int], int] = {}  # (prefix, price) -> earliest version in force
    charged = intl_charged = vouchers = 0
    for ln in inside:
        t = tariff_at(tariffs, ln.at)
        if awaiting_outcome(ln):
            pending += ln.messages
            continue
        vouchers += ln.from_vouchers
        if ln.domestic:
            charged += ln.charged
        else:
            intl_charged += ln.charged
        if not billable(ln, t):
            continue
        if ln.domestic:
            if versions.setdefault(t.version, t) != t:
                raise BillingError(
                    f"tariff: two different tariffs share version {t.version!r}",
                    code="TARIFF_AMBIGUOUS",
                )
            dom_units[t.version] = dom_units.get(t.version, 0) + ln.units
        else:
            prefix = ln.country_prefix or ""
            price = t.international.get(prefix)
            if price is None:
                raise PriceNotFound(f"country_prefix: {prefix} has no price in tariff {t.version}")
            intl[(prefix, price)] = intl.get((prefix, price), 0) + ln.segments
            since = intl_since.get((prefix, price))
            if since is None or t.effective_at < since:
                intl_since[(prefix, price)] = t.effective_at
    if pending:
        raise SettlementNotReady(pending, month)

    total_units = sum(dom_units.values())
    groups: list[DomesticGroup] = []
    for version in sorted(dom_units, key=lambda v: (versions[v].effective_at, v)):
        t = versions[version]
        idx, tier = tier_for(total_units, t.tiers)
        groups.append(
            DomesticGroup(
                version, dom_units[version], idx, tier.price, dom_units[version] * tier.price
            )
        )
    if groups:
        tier_idx, tier_price = groups[-1].tier, groups[-1].price
    else:
        tier_idx, last = tier_for(0, tariff_at(tariffs, end - 1).tiers)
        tier_price = last.price
    domestic_amount = sum(g.amount for g in groups)
    # Per country, then in the order the prices were in force (then by price, for determinism).
    keys = sorted(intl, key=lambda k: (k[0], intl_since[k], k[1]))
    intl_lines = tuple(IntlLine(p, intl[(p, pr)], pr, intl[(p, pr)] * pr) for p, pr in keys)
    intl_amount = sum(line.amount for line in intl_lines)

    # Both sides for every account, whatever its kind now: an account switched from postpaid to
    # prepaid within the month owes its postpaid traffic (nothing was charged for it at send),
    # and one switched the other way gets back what prepaid took above the tier price. For an
    # account that was prepaid all month `owed` is 0 (everything was charged at send, at or
    # above the tier price); for one postpaid all month `refund` is 0 unless it was pre-charged.
    refund = max(0, charged - domestic_amount)
    owed = max(0, domestic_amount - charged) + max(0, intl_amount - intl_charged)
    invoice_total = invoice_round(owed)
    return MonthBill(
        month=month,
        account_kind=account_kind,
        units=total_units,
        tier=tier_idx,
        tier_price=tier_price,
        domestic_amount=domestic_amount,
        charged=charged,
        refund=refund,
        invoice_total=invoice_total,
        international=intl_lines,
        vouchers_used=vouchers,
        domestic=tuple(groups),
        international_amount=intl_amount,
        international_charged=intl_charged,
    )


class VoucherCharge(NamedTuple):
    """What one voucher paid, net, for a bill's domestic messages of one outcome under one tariff
    version (Store.voucher_charges: one row per voucher, final state and tariff period)."""

    voucher_id: str
    at: int  # an acceptance time inside the tariff period: decides the version
    final_state: str
    charged: int  # micro
    expires_at: int | None  # None: never expires


class VoucherShare(NamedTuple):
    """A voucher's share of a settlement refund."""

    voucher_id: str
    amount: int  # micro given back to it
    expires_at: int | None


class RefundSplit(NamedTuple):
    """Where a settlement refund goes: cash, and each paying voucher's share of it."""

    cash: int
    vouchers: tuple[VoucherShare, ...]  # amount > 0 only, by voucher id

    def returned(self, now: int) -> int:
        """Micro returned to vouchers still valid at `now` (spendable again)."""
        return sum(v.amount for v in self.vouchers if v.expires_at is None or now < v.expires_at)

    def void(self, now: int) -> int:
        """Micro of the shares of vouchers expired at `now`: recorded, then written off."""
        return sum(v.amount for v in self.vouchers) - self.returned(now)


def refund_split(
    bill: MonthBill, tariffs: Sequence[Tariff], charges: Sequence[VoucherCharge]
) -> RefundSplit:
    """Give each voucher back what it was charged above the month's price; cash gets the rest of
    `bill.refund` (so also every sub-micro remainder).

    A billed message was charged the starting price of the tariff version in force when it was
    accepted and costs that version's price at the tier the month reached, so a voucher gets
    charged x (start - tier price) / start of what it paid for such messages, per version; for a
    message not billed (failed or expired, its refund missed at the receipt) all it paid. Per
    version, not in proportion to the month: the over-charge ratio differs between versions.
    When the refund is smaller than those shares (the month also had traffic sent while the
    account was postpaid, which it nets), each is scaled down alike.

    Why not all to cash: a voucher is spent before cash and its remainder is void once it
    expires. Returning a voucher-paid message's tier difference as cash turned promotional
    credit into money (even credit already void), where a failed message's refund goes back to
    the pocket it came from.
    """
    refund = bill.refund
    over: dict[str, Fraction] = {}
    expiry: dict[str, int | None] = {}
    for c in charges:
        if c.charged <= 0:
            continue
        t = tariff_at(tariffs, c.at)
        if c.final_state in BILLED_ON_DELIVERY:  # domestic is always billed on delivery
            start = t.starting_price
            price = tier_for(bill.units, t.tiers)[1].price
            part = Fraction(c.charged * max(0, start - price), start) if start > 0 else Fraction()
        else:
            part = Fraction(c.charged)
        over[c.voucher_id] = over.get(c.voucher_id, Fraction()) + part
        expiry[c.voucher_id] = c.expires_at
    shares = {v: math.floor(x) for v, x in over.items()}
    total = sum(shares.values())
    if total > refund:
        shares = {v: n * refund // total for v, n in shares.items()}
    out = tuple(VoucherShare(v, shares[v], expiry[v]) for v in sorted(shares) if shares[v] > 0)
    return RefundSplit(refund - sum(v.amount for v in out), out)


def settlement_entries(
    bill: MonthBill, account_kind: AccountKind, now: int, split: RefundSplit | None = None
) -> list[Entry]:
    """Ledger entries recording the settlement, ref = the month (the store keeps one per month).

    Prepaid: always exactly one SETTLEMENT_ADJUSTMENT (its cash part, possibly 0) to cash, so the
    ledger itself shows the month was settled. Postpaid: one INVOICE (+invoice_total, possibly 0)
    to the "invoice" receivable pocket, plus a cash adjustment only if something was pre-charged
    above the tier price. Either way each voucher's share of the refund (`split`, all cash when
    None) is a VOUCHER_REFUND to it, followed by a VOUCHER_EXPIRE of the same amount when the
    voucher has expired at `now`.
    """
    if split is None:
        split = RefundSplit(bill.refund, ())
    if split.cash + sum(v.amount for v in split.vouchers) != bill.refund:
        raise ValueError("split: its parts must add up to the bill's refund")
    month = bill.month
    if account_kind == "prepaid":
        out = [Entry(EntryKind.SETTLEMENT_ADJUSTMENT, split.cash, POCKET_CASH, now, month)]
        if bill.invoice_total:  # traffic sent while the account was postpaid this month
            out.append(Entry(EntryKind.INVOICE, bill.invoice_total, POCKET_INVOICE, now, month))
    elif account_kind == "postpaid":
        out = [Entry(EntryKind.INVOICE, bill.invoice_total, POCKET_INVOICE, now, month)]
        if split.cash:
            out.append(Entry(EntryKind.SETTLEMENT_ADJUSTMENT, split.cash, POCKET_CASH, now, month))
    else:
        raise ValueError(f"account_kind: must be prepaid or postpaid, got {account_kind!r}")
    for v in split.vouchers:
        pocket = voucher_pocket(v.voucher_id)
        out.append(Entry(EntryKind.VOUCHER_REFUND, v.amount, pocket, now, month, v.expires_at))
        if v.expires_at is not None and now >= v.expires_at:
            out.append(Entry(EntryKind.VOUCHER_EXPIRE, -v.amount, pocket, now, month, v.expires_at))
    return out


def invoice_round(micro: int) -> int:
    """`micro` rounded to whole fen (10,000 micro), half-up: 45,000 (4.5 fen) -> 50,000.

    Half away from zero for negative amounts (a credit note mirrors an invoice). Integer-only.
    """
    if not _is_int(micro):
        raise ValueError(f"micro: must be an integer, got {micro!r}")
    whole, rest = divmod(abs(micro), FEN)
    if rest * 2 >= FEN:
        whole += 1
    return (whole * FEN) if micro >= 0 else -(whole * FEN)
