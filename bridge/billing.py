"""Billing service: tariffs from the store, prices at acceptance, ledger operations, settlement.

The thin shell around bridge.domain.{tariffs,ledger,settlement}: it loads and caches the stored
tariff versions, turns a message into its charge, records operator money movements, and runs the
monthly settlement (engine-neutral: the store only fetches grouped usage and records the bill once).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any

from bridge import logs
from bridge.accounts import public_account
from bridge.config import BillingConfig, TariffConfig
from bridge.domain import admission as adm
from bridge.domain import ledger, settlement
from bridge.domain.tariffs import (
    MAX_MONEY,
    MAX_MS,
    BillingError,
    PriceNotFound,
    Tariff,
    Tier,
    format_micro,
    international_price,
    tariff_at,
    validate_tariff,
)
from bridge.ids import new_id
from bridge.store.base import is_unavailable
from bridge.store.models import Account, BillRow, TariffRow

log = logging.getLogger("bridge.billing")


def warn_low_balance(
    logger: logging.Logger, metrics: Any, account_id: str, before: int, after: int
) -> None:
    """A prepaid balance crossed its low-balance threshold (its balance.low event is queued by
    the store): one WARNING in the same words and fields whatever took it there (a send, a
    voucher's expiry), so an alert on the line catches both, and the metric counted. `logger`:
    the caller's, so each component keeps its own name and level."""
    logger.warning(
        "balance below the low-balance threshold",
        extra={"account": account_id, "available_micro": after, "previous_micro": before},
    )
    metrics.balance_warning()


# -- tariffs as stored JSON ------------------------------------------------------------------------


def tariff_to_json(t: Tariff) -> str:
    return json.dumps(
        {
            "version": t.version,
            "effective_at": t.effective_at,
            "tiers": [{"up_to": x.up_to, "price": x.price} for x in t.tiers],
            "starting_price": t.starting_price,
            "counting_rule": t.counting_rule,
            "domestic_bill_on": t.domestic_bill_on,
            "international_bill_on": t.international_bill_on,
            "international": dict(sorted(t.international.items())),
            "domestic_prefix": t.domestic_prefix,
        },
        separators=(",", ":"),
    )


def tariff_from_dict(d: Any) -> Tariff:
    """A tariff from JSON/YAML (the admin API and `tariff add`); BillingError naming the field."""
    if not isinstance(d, dict):
        raise BillingError("tariff: expected an object", code="INVALID_TARIFF")
    allowed = {
        "version",
        "effective_at",
        "tiers",
        "starting_price",
        "counting_rule",
        "domestic_bill_on",
        "international_bill_on",
        "international",
        "domestic_prefix",
    }
    if not all(isinstance(k, str) for k in d):  # YAML: `1:` or `null:` as a key
        raise BillingError("tariff: field names must be strings", code="INVALID_TARIFF")
    unknown = sorted(set(d) - allowed)
    if unknown:
        # The code every body endpoint gives an unknown field (README, Errors).
        raise BillingError(f"{unknown[0]}: unknown tariff field", code="UNKNOWN_FIELD")
    missing = [name for name in ("version", "effective_at") if name not in d]
    if missing:
        raise BillingError(f"{missing[0]}: required", code="INVALID_TARIFF")
    if isinstance(d["version"], str) and not _encodable(d["version"]):
        raise BillingError("version: not valid text (a lone surrogate)", code="INVALID_TARIFF")
    try:
        tiers_raw = d.get("tiers")
        kwargs: dict[str, Any] = {k: d[k] for k in allowed - {"tiers"} if k in d}
        if tiers_raw is not None:
            if not isinstance(tiers_raw, list) or not all(isinstance(x, dict) for x in tiers_raw):
                raise BillingError(
                    "tiers: expected a list of {up_to, price}", code="INVALID_TARIFF"
                )
            kwargs["tiers"] = tuple(Tier(x.get("up_to"), x.get("price")) for x in tiers_raw)
        if "international" in kwargs and not isinstance(kwargs["international"], dict):
            raise BillingError("international: expected an object", code="INVALID_TARIFF")
        t = Tariff(**kwargs)
    except TypeError:  # never the interpreter's words ("Tariff.__init__() missing ...")
        raise BillingError("tariff: a field has the wrong type", code="INVALID_TARIFF") from None
    problems = validate_tariff(t)
    if problems:
        raise BillingError("; ".join(problems), code="INVALID_TARIFF")
    return t


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Values releases before 4ebb699 stored that the service rules do not allow: domestic traffic is
# billed on delivery and international on submission (the refunds at final receipts follow
# that). Stored versions are never edited, so a version an older release accepted with another
# value failed validation at load and kept the upgraded daemon (and `bill settle`) from starting.
_RULED_BILL_ON = {"domestic_bill_on": "delivered", "international_bill_on": "submitted"}
_warned_versions: set[str] = set()


def stored_tariff(d: Any) -> Tariff:
    """A tariff version as read back from the store: a retired bill_on value is read as the
    rules' own, with one warning per version (each process)."""
    if isinstance(d, dict):
        fixed = {k: v for k, v in _RULED_BILL_ON.items() if k in d and d[k] != v}
        if fixed:
            version = str(d.get("version"))
            if version not in _warned_versions:
                _warned_versions.add(version)
                log.warning(
                    "tariff version %r was stored with %s, which this release does not bill by: "
                    "read as %s (domestic billed on delivery, international on submission)",
                    version,
                    {k: d[k] for k in fixed},
                    fixed,
                )
            d = {**d, **fixed}
    return tariff_from_dict(d)


def tariff_from_config(cfg: TariffConfig, effective_at: int = 0) -> Tariff:
    return Tariff(
        version=cfg.version,
        effective_at=effective_at,
        tiers=tuple(Tier(x.up_to, x.price) for x in cfg.tiers),
        starting_price=cfg.starting_price,
        international=dict(cfg.international),
        domestic_prefix=cfg.domestic_prefix,
    )


def tariff_view(t: Tariff) -> dict[str, Any]:
    out = json.loads(tariff_to_json(t))
    out["starting_price_display"] = format_micro(t.starting_price)
    return out


class Tariffs:
    """The stored tariff versions, cached per process (they change rarely and only by append).

    A version added in this process is visible at once; one added by another process within
    `refresh()` (called by the daemon every few seconds).
    """

    def __init__(self, store: Any, config: BillingConfig) -> None:
        self.store = store
        self.config = config
        self.versions: tuple[Tariff, ...] = ()
        self._failures = logs.Failures(log, is_unavailable)

    async def load(self, now: int, *, store_first: bool = True) -> None:
        """The stored versions; none stored yet, the configured tariff is the first, from time
        0, and is stored (`store_first`). A command that changes nothing (`tariff list`, `bill
        show`) passes False and prices with it as it would be stored: its store may be opened
        for reads only, where the write was refused, swallowed as another instance's seeding,
        and left no tariff (`tariff list` printed [], `bill show` said TARIFF_NOT_FOUND)."""
        rows = await self.store.list_tariffs()
        if not rows and self.config.enabled:
            first = tariff_from_config(self.config.tariff, 0)
            problems = validate_tariff(first)
            if problems:
                raise BillingError("billing.tariff: " + "; ".join(problems), code="INVALID_TARIFF")
            if not store_first:
                self.versions = (stored_tariff(json.loads(tariff_to_json(first))),)
                return
            try:
                await self.store.add_tariff(TariffRow(first.version, 0, tariff_to_json(first), now))
            except Exception:  # another instance seeded it first
                pass
            rows = await self.store.list_tariffs()
        self.versions = tuple(stored_tariff(json.loads(r.body)) for r in rows)

    async def refresh(self, now: int) -> None:
        try:
            await self.load(now)
        except Exception as exc:  # the versions loaded before stay in force
            self._failures.failed("tariff refresh", exc)
        else:
            self._failures.ok("tariff refresh")

    async def add(self, t: Tariff, now: int) -> None:
        """Store a new version. It may only take effect from now on and after every version
        already stored: an earlier date would re-price messages already accepted and charged,
        and versions are never edited (a correction is a new version)."""
        problems = validate_tariff(t)
        if problems:
            raise BillingError("; ".join(problems), code="INVALID_TARIFF")
        if not self.versions:
            await self.load(now)  # the configured first version is stored before a later one
        # A repeated version or effective time is the store's TARIFF_EXISTS, which names it.
        clash = any(
            v.version == t.version or v.effective_at == t.effective_at for v in self.versions
        )
        latest = max((v.effective_at for v in self.versions), default=0)
        if not clash and t.effective_at < now + TARIFF_LEAD_MS:
            # Every process loads new versions at its next refresh (every 10 s): one taking
            # effect sooner would be charged at the old price there after it is in force.
            when = "in the past" if t.effective_at < now else "too soon"
            raise BillingError(
                f"effective_at: {t.effective_at} is {when} (now {now}); a version takes effect "
                f"at least {TARIFF_LEAD_MS // 1000} s after it is added, so that every instance "
                "has loaded it",
                code="INVALID_TARIFF",
            )
        if not clash and t.effective_at < latest:
            raise BillingError(
                f"effective_at: must be later than the latest version's ({latest})",
                code="INVALID_TARIFF",
            )
        await self.store.add_tariff(TariffRow(t.version, t.effective_at, tariff_to_json(t), now))
        await self.load(now)

    def at(self, now: int) -> Tariff:
        return tariff_at(self.versions, now)


def price(tariff: Tariff, recipient: str, units: int, segments: int) -> tuple[str, int, bool]:
    """(price class, micro-units, international) of one message at acceptance.

    Domestic: the starting price per billable unit (prepaid pre-charge / postpaid accrual; the
    tier price is applied at settlement). International: the destination's price per segment.
    """
    # is_domestic's test inline: every accepted message is priced here (a call, ~600
    # instructions, session 62).
    if recipient.startswith(tariff.domestic_prefix):
        return adm.DOMESTIC, tariff.starting_price * units, False
    prefix, per_segment = international_price(recipient, tariff)
    return prefix, per_segment * segments, True


__all__ = ["PriceNotFound", "price"]


# -- balances and operator money movements ---------------------------------------------------------


def balance_view(pockets: Sequence[adm.Pocket], now: int, currency: str) -> dict[str, Any]:
    bal = adm.balances_of(pockets, now)
    invoice = sum(p.amount for p in pockets if p.pocket == ledger.POCKET_INVOICE)
    return {
        "currency": currency,
        "cash_micro": bal.cash,
        "cash": format_micro(bal.cash),
        "vouchers": [
            {
                "id": vid,
                "remaining_micro": amount,
                "remaining": format_micro(amount),
                "expires_at": bal.voucher_expiry.get(vid),
            }
            for vid, amount in sorted(bal.vouchers.items())
        ],
        "cards": [
            {
                "id": cid,
                "remaining_micro": amount,
                "remaining": format_micro(amount),
                "expires_at": bal.card_expiry.get(cid),
            }
            for cid, amount in sorted(bal.cards.items())
        ],
        "available_domestic_micro": bal.available_domestic,
        "available_international_micro": bal.available_international,
        "invoiced_micro": invoice,
    }


async def account_balance(store: Any, account: Account, now: int, currency: str) -> dict[str, Any]:
    """GET /v1/balance, /admin/accounts/{ref}/balance and `bill balance`: the pockets as
    balances, with the account's kind, low-balance threshold and whether (since when) the
    current dip below it was warned of (null: not warned)."""
    view = balance_view(await store.get_pockets(account.id), now, currency)
    view["account_kind"] = account.kind
    view["low_balance_threshold_micro"] = account.low_balance_threshold
    view["low_balance_warned_at"] = account.low_balance_warned_at
    return view


def credited_once(body: Any) -> bool:
    """Whether the `money_entries` made from `body` (one they accepted) are appended at most
    once (`append_ledger(once=True)`): a top-up, voucher or card sale naming its payment
    (`ref`), so a payment system, a shop or an operator retrying after a lost answer (a crash,
    a timeout) gets the balance back instead of a second credit (a second 999 CNY card for one
    payment), and a ref reused with another amount is refused (ledger.ref_conflict)."""
    return isinstance(body, dict) and body.get("ref") is not None


def added_view(entries: Sequence[ledger.Entry]) -> list[dict[str, Any]]:
    """The `added` list of a top-up, voucher or card sale answer (the admin API's and the CLI's
    alike). Each names its `ref`: the payment it was recorded under, else the voucher's or
    card's id (null for a top-up without one), which is what the ledger export and a later
    `duplicate_ref` answer show, so a payment system can match the answer to its record."""
    return [
        {
            "kind": str(e.kind),
            "amount_micro": e.amount,
            "pocket": e.pocket,
            "ref": e.ref,
            "expires_at": e.expires_at,
        }
        for e in entries
    ]


async def refund_fields(store: Any, account_id: str) -> dict[str, Any]:
    """What the account's customer is owed back (its `closed` entries), what an operator
    recorded as paid back (`refund_paid`), and the difference still to pay: every account
    answer of the admin API and the CLI shows them (zeros for an account never closed)."""
    pos = ledger.refund_position(await store.ledger_kind_sums(account_id))
    return {
        "refund_owed_micro": pos.owed,
        "refund_owed": format_micro(pos.owed),
        "refund_paid_micro": pos.paid,
        "refund_outstanding_micro": pos.outstanding,
    }


def refund_body(body: Any) -> tuple[int, str]:
    """(amount, ref) of a refund payout (POST /admin/accounts/{ref}/refunds, `bill refund`):
    the ref is required, as the payout's own reference, so a retry after a lost answer is
    recognised and never recorded twice."""
    if not isinstance(body, dict):
        raise BillingError("the body must be a JSON object", code="INVALID_REQUEST")
    unknown = sorted(set(body) - {"amount_micro", "ref"})
    if unknown:
        raise BillingError(f"{unknown[0]}: unknown field", code="UNKNOWN_FIELD")
    ref = body.get("ref")
    if ref is None:
        raise BillingError("ref: required (the payout's reference)", code="MISSING_FIELD")
    if not isinstance(ref, str) or not 0 < len(ref) <= 64:
        raise BillingError("ref: a string of 1 to 64 characters", code="INVALID_FIELD")
    amount = body.get("amount_micro")
    if isinstance(amount, bool) or not isinstance(amount, int) or not 0 < amount <= MAX_MONEY:
        raise BillingError(
            f"amount_micro: required integer, between 1 and {MAX_MONEY} micro-units",
            code="INVALID_FIELD",
        )
    return amount, ref


async def pay_refund(
    store: Any, account: Account, body: Any, now: int, currency: str
) -> tuple[dict[str, Any], bool]:
    """A refund payout recorded (the admin API's and the CLI's): the answer, and whether
    anything was recorded (False: the same payout again, `duplicate_ref`)."""
    amount, ref = refund_body(body)
    entries = await store.pay_refund(account.id, amount, ref, now)
    view: dict[str, Any] = {"account": account.id, "currency": currency}
    view.update(await refund_fields(store, account.id))
    view["added"] = added_view(entries or [])
    if entries is None:
        view["duplicate_ref"] = ref
    return view, entries is not None


async def closed_view(
    store: Any, account: Account, written_off: Sequence[ledger.Entry], currency: str
) -> dict[str, Any]:
    """The answer of an account's close (the admin API's and the CLI's): the closed account,
    the cash owed back to the customer (every `closed` entry to date: the close's and those of
    credits after it, a late refund or a settlement), what this close made void, and its
    entries. The operator pays `refund_owed_micro` back; the ledger export shows the same."""
    _owed_now, voided = adm.owed_at_close(written_off)
    view = public_account(account)
    view["currency"] = currency
    view.update(await refund_fields(store, account.id))
    view["voided_micro"] = voided
    view["written_off"] = added_view(written_off)
    return view


def money_entries(kind: str, body: Any, now: int, tz: str) -> list[ledger.Entry]:
    """Ledger entries for an operator's top-up, voucher grant or card purchase (validated)."""
    if not isinstance(body, dict):
        raise BillingError("the body must be a JSON object", code="INVALID_REQUEST")
    allowed = {
        "topup": {"amount_micro", "ref"},
        "voucher": {"amount_micro", "expires_at", "ref"},
        "card": {"face_value_micro", "ref"},
    }[kind]
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BillingError(f"{unknown[0]}: unknown field", code="UNKNOWN_FIELD")
    ref = body.get("ref")
    # Empty names no payment, and as a once-only key it would match every other empty one.
    if ref is not None and (not isinstance(ref, str) or not 0 < len(ref) <= 64):
        raise BillingError("ref: a string of 1 to 64 characters", code="INVALID_FIELD")

    def integer(name: str) -> int:
        v = body.get(name)
        if isinstance(v, bool) or not isinstance(v, int):
            raise BillingError(f"{name}: required integer (micro-units)", code="INVALID_FIELD")
        if not 0 < v <= MAX_MONEY:
            raise BillingError(
                f"{name}: between 1 and {MAX_MONEY} micro-units", code="INVALID_FIELD"
            )
        return v

    try:
        if kind == "topup":
            return ledger.topup(integer("amount_micro"), now, ref)
        if kind == "voucher":
            expires = body.get("expires_at")
            if expires is not None and (
                isinstance(expires, bool)
                or not isinstance(expires, int)
                or not 0 < expires <= MAX_MS
            ):
                raise BillingError(
                    "expires_at: unix milliseconds (up to 9999-12-31) or null", code="INVALID_FIELD"
                )
            voucher_id = new_id("vch_", now)
            return ledger.grant_voucher(integer("amount_micro"), now, voucher_id, expires, ref)
        card_id = new_id("crd_", now)
        return ledger.card_purchase(integer("face_value_micro"), now, card_id, tz=tz, ref=ref)
    except ValueError as exc:
        raise BillingError(str(exc), code="INVALID_FIELD") from None


# -- settlement ------------------------------------------------------------------------------------


def bill_view(bill: settlement.MonthBill, currency: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "month": bill.month,
        "currency": currency,
        "account_kind": bill.account_kind,
        "units": bill.units,
        "tier": bill.tier,
        "tier_price_micro": bill.tier_price,
        "tier_price": format_micro(bill.tier_price),
        "domestic_amount_micro": bill.domestic_amount,
        "charged_micro": bill.charged,
        "refund_micro": bill.refund,
        # Where the refund goes is decided at settlement (a voucher may expire before then).
        "refund_cash_micro": None,
        "refund_vouchers_micro": None,
        "refund_void_micro": None,
        "invoice_total_micro": bill.invoice_total,
        "vouchers_used_micro": bill.vouchers_used,
        "international_amount_micro": bill.international_amount,
        "international_charged_micro": bill.international_charged,
        "domestic": [g._asdict() for g in bill.domestic],
        "international": [
            {
                "country_prefix": line.country_prefix,
                "segments": line.segments,
                "price_micro": line.price,
                "amount_micro": line.amount,
            }
            for line in bill.international
        ],
    }
    return out


def _periods(tariffs: Sequence[Tariff], start: int, end: int) -> list[int]:
    """The tariff effective times inside [start, end): the store groups by the periods between
    them, so a group never straddles a price change."""
    return sorted({t.effective_at for t in tariffs if start < t.effective_at < end})


async def usage_lines(
    store: Any, account_id: str, start: int, end: int, tariffs: Sequence[Tariff]
) -> list[settlement.UsageLine]:
    rows = await store.usage_groups(account_id, start, end, _periods(tariffs, start, end))
    return [
        settlement.UsageLine(
            at=int(at),
            units=int(units or 0),
            charged=max(0, int(charged or 0)),
            domestic=pclass == adm.DOMESTIC,
            country_prefix=None if pclass == adm.DOMESTIC else pclass,
            segments=int(segs or 0),
            final_state=state,
            from_vouchers=max(0, int(vouchers or 0)),
            messages=int(count),
        )
        for at, units, charged, pclass, segs, state, vouchers, count in rows
    ]


async def bill_bounds(store: Any, account_id: str, month: str, tz: str) -> tuple[int, int]:
    """[start, end) of `month`'s bill: the month in `tz`, from where the account's bill for the
    month before ended to where the one for the month after began (settlement.chained_bounds).
    Bills settled before bills recorded their period are not chained to."""
    before = await store.get_bill(account_id, settlement.month_before(month))
    after = await store.get_bill(account_id, settlement.next_month(month))
    return settlement.chained_bounds(
        month, tz, _period_field(before, "period_end"), _period_field(after, "period_start")
    )


def _period_field(bill: BillRow | None, name: str) -> int | None:
    if bill is None:
        return None
    value = json.loads(bill.body).get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


async def compute_bill(
    store: Any, account: Account, month: str, tariffs: Sequence[Tariff], tz: str
) -> tuple[settlement.MonthBill, tuple[int, int]]:
    bounds = await bill_bounds(store, account.id, month, tz)
    lines = await usage_lines(store, account.id, *bounds, tariffs)
    kind: settlement.AccountKind = "postpaid" if account.kind == "postpaid" else "prepaid"
    return settlement.settle_month(month, lines, tariffs, tz, kind, bounds), bounds


async def refund_split(
    store: Any,
    account_id: str,
    bill: settlement.MonthBill,
    bounds: tuple[int, int],
    tariffs: Sequence[Tariff],
) -> settlement.RefundSplit:
    """Where the bill's refund goes: to each voucher what it was charged above the month's
    price, the rest to cash (settlement.refund_split)."""
    if bill.refund == 0:
        return settlement.RefundSplit(0, ())
    start, end = bounds
    rows = await store.voucher_charges(account_id, start, end, _periods(tariffs, start, end))
    charges = [settlement.VoucherCharge(*row) for row in rows]
    return settlement.refund_split(bill, tariffs, charges)


def _period(view: dict[str, Any], bounds: tuple[int, int], tz: str) -> None:
    """What the bill covers, so the next month's chains on (and an auditor can see it)."""
    view["period_start"], view["period_end"] = bounds
    view["timezone"] = tz


async def settle(
    store: Any,
    account: Account,
    month: str,
    tariffs: Sequence[Tariff],
    tz: str,
    currency: str,
    now: int,
) -> tuple[dict[str, Any], bool]:
    """Settle one account's month: (bill view, True if recorded now / False if it already was).

    Idempotent: the store records the bill and its ledger entries only if no bill exists for the
    month, in one transaction, so a second run (or a second instance) changes nothing.
    """
    existing = await store.get_bill(account.id, month)
    if existing is not None:
        return stored_view(existing), False
    bill, bounds = await compute_bill(store, account, month, tariffs, tz)
    kind: settlement.AccountKind = "postpaid" if account.kind == "postpaid" else "prepaid"
    view = bill_view(bill, currency)
    _period(view, bounds, tz)
    view["status"] = "settled"
    view["settled_at"] = now
    split = await refund_split(store, account.id, bill, bounds, tariffs)
    view["refund_cash_micro"] = split.cash
    view["refund_vouchers_micro"] = split.returned(now)
    view["refund_void_micro"] = split.void(now)
    entries = settlement.settlement_entries(bill, kind, now, split)
    body = json.dumps(view, separators=(",", ":"), sort_keys=True)
    row = BillRow(account.id, month, body, now)
    recorded = await store.save_bill(row, entries)
    if not recorded:
        stored = await store.get_bill(account.id, month)
        return stored_view(stored or row), False
    log.info(
        "month settled",
        extra={
            "account": account.id,
            "month": month,
            "units": bill.units,
            "tier": bill.tier,
            "refund_micro": bill.refund,
            "invoice_micro": bill.invoice_total,
        },
    )
    return stored_view(row), True  # the shape GET /v1/bills answers


def stored_view(stored: BillRow) -> dict[str, Any]:
    """A settled bill as recorded, in today's shape (fields added since, filled in)."""
    settled: dict[str, Any] = json.loads(stored.body)
    settled.setdefault("pending_messages_units", 0)  # one shape for open and settled bills
    # Bills settled before refunds went back to vouchers returned all of it to cash.
    settled.setdefault("refund_cash_micro", settled.get("refund_micro"))
    settled.setdefault("refund_vouchers_micro", 0)
    settled.setdefault("refund_void_micro", 0)
    return settled


async def month_view(
    store: Any, account: Account, month: str, tariffs: Sequence[Tariff], config: Any
) -> dict[str, Any]:
    """The settled bill of `month`, or the month so far (status "open") priced the same way;
    messages still awaiting their outcome are left out of the price and counted apart. One
    implementation for GET /v1/bills/{month} and `smpp-bridge bill show`."""
    stored = await store.get_bill(account.id, month)
    if stored is not None:
        return stored_view(stored)
    tz = config.rules.timezone
    bounds = await bill_bounds(store, account.id, month, tz)
    lines = await usage_lines(store, account.id, *bounds, tariffs)
    kind: settlement.AccountKind = "postpaid" if account.kind == "postpaid" else "prepaid"
    # Still awaiting an outcome (queued, or sent: its final receipt may still refund a part, of
    # international traffic too): shown, not priced, as settlement leaves the month unsettled.
    pending = [ln for ln in lines if settlement.awaiting_outcome(ln)]
    done = [ln for ln in lines if ln not in pending]
    bill = settlement.settle_month(month, done, tariffs, tz, kind, bounds)
    view = bill_view(bill, config.billing.currency)
    _period(view, bounds, tz)
    view["status"] = "open"
    view["settled_at"] = None
    view["pending_messages_units"] = sum(ln.units for ln in pending)
    return view


async def settle_accounts(
    store: Any,
    accounts: Sequence[Account],
    month: str,
    tariffs: Sequence[Tariff],
    config: Any,
    now: int,
) -> list[dict[str, Any]]:
    """Settle `month` for each account: one result per account, never an exception per account
    (a month still awaiting receipts is reported as not_ready and retried later)."""
    tz = config.rules.timezone
    _start, end = settlement.month_bounds(month, tz)
    if now < end + SETTLE_GRACE_MS:
        # A send that read the clock before midnight (a request in flight, an instance whose
        # clock is a little behind) may commit just after: settled at midnight, its month's bill
        # would miss it for good (a bill is never redone).
        raise BillingError(
            f"month: {month} can be settled {SETTLE_GRACE_MS // 60_000} minutes after it ends, "
            "when no send still in flight can belong to it",
            code="SETTLEMENT_NOT_READY",
        )
    out: list[dict[str, Any]] = []
    for account in accounts:
        try:
            view, recorded = await settle(
                store, account, month, tariffs, tz, config.billing.currency, now
            )
        except settlement.SettlementNotReady as exc:
            out.append(
                {
                    "account": account.id,
                    "status": "not_ready",
                    "message": exc.message,
                    "pending_messages": exc.pending,
                }
            )
            continue
        except BillingError as exc:
            out.append({"account": account.id, "status": "error", "message": exc.message})
            continue
        out.append(
            {
                "account": account.id,
                "status": "settled" if recorded else "already_settled",
                "units": view.get("units"),
                "tier": view.get("tier"),
                "refund_micro": view.get("refund_micro"),
                "refund_cash_micro": view.get("refund_cash_micro"),
                "refund_vouchers_micro": view.get("refund_vouchers_micro"),
                "refund_void_micro": view.get("refund_void_micro"),
                "invoice_total_micro": view.get("invoice_total_micro"),
            }
        )
    return out


def previous_month(now: int, tz: str) -> str:
    """The month before the one `now` falls in, in `tz`."""
    return settlement.month_before(settlement.month_of(now, tz))


TARIFF_LEAD_MS = 60_000  # a new tariff version's effective time is at least this far ahead
SETTLE_AFTER_MS = 72 * 3_600_000 + 3_600_000  # receipts are final 72 h after sending, plus margin
SETTLE_GRACE_MS = 10 * 60_000  # the earliest an operator may settle a month, after its end


# How many ended months auto_settle looks back for one still without a bill. A month is ready
# once its last message is final: a message scheduled up to 30 days ahead, then up to 30 days
# (receipt_timeout_hours max, and lifecycle.MAX_RECEIPT_WAIT_MS however long its validity) for its
# receipt, ends at most about two months after its month.
SETTLE_LOOKBACK_MONTHS = 3


async def auto_settle(store: Any, tariffs: Tariffs, config: Any, now: int) -> list[dict[str, Any]]:
    """The daemon's periodic job: settle each of the last few ended months once its messages
    are final, for every account that has no bill for it yet.

    Not only last month: a month still awaiting receipts when the next one starts (a message
    scheduled late in the month, a long receipt timeout, the daemon down) is settled by a later
    run instead of never. Accounts already settled are skipped by the store (one bill per month),
    so running this every hour from every instance is harmless.
    """
    if not (config.billing.enabled and config.billing.auto_settle):
        return []
    tz = config.rules.timezone
    months = []
    at = now
    for _ in range(SETTLE_LOOKBACK_MONTHS):
        month = previous_month(at, tz)
        start, end = settlement.month_bounds(month, tz)
        if now >= end + SETTLE_AFTER_MS:
            months.append((month, end))
        at = start
    if not months:
        return []
    await tariffs.refresh(now)
    accounts = await store.list_accounts()
    out: list[dict[str, Any]] = []
    for month, end in reversed(months):  # oldest first
        # One query (the retention's hold asks the same), not a bill read per account.
        unbilled = set(await store.unbilled_accounts(month, end))
        pending = [a for a in accounts if a.id in unbilled]
        if pending:
            out += [
                {**r, "month": month}
                for r in await settle_accounts(store, pending, month, tariffs.versions, config, now)
            ]
    return out
