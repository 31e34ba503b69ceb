"""The prepaid ledger: append-only entries, balances derived from them, charge/refund plans (pure).

Balances are never stored, only derived, so there is no second number that can disagree with the
history. Functions here only *plan* entries; the store appends them in the same transaction that
read the entries the plan was made from (that is what makes concurrent sends unable to overdraw).

Conventions (the lead documents these):
- `amount` is signed micro-units: + adds to the entry's pocket, - takes from it.
- Pockets: "cash", "voucher:<id>", "card:<id>", "invoice" (a postpaid receivable: a record of
  what is owed, never spendable, ignored by `balances`) and "refunded" (a record of the cash paid
  back to the customer of a closed account, `refund_paid`; never spendable, ignored alike).
- A voucher or card is valid while `now < expires_at`; at exactly `expires_at` it is expired and its
  remainder is void. A voucher granted with `expires_at=None` never expires; a card always expires.
- `now` decides expiry only: every entry counts whatever its `at`, so an entry written by a process
  whose clock runs ahead can never be hidden from the next balance check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bridge.domain.tariffs import BillingError, format_micro
from bridge.fastinit import fast_init

__all__ = [
    "CARD_FACE_VALUES",
    "CLOSED_ACCOUNT",
    "PAYMENT_KINDS",
    "PAYMENT_REF_REUSED",
    "POCKET_CASH",
    "POCKET_INVOICE",
    "POCKET_REFUNDED",
    "Balances",
    "Entry",
    "EntryKind",
    "InsufficientFunds",
    "LedgerError",
    "balances",
    "card_expiry",
    "card_pocket",
    "card_purchase",
    "expire_entries",
    "grant_voucher",
    "plan_charge",
    "plan_refund",
    "ref_conflict",
    "refund_payment",
    "refund_position",
    "topup",
    "voucher_pocket",
    "warns_low_balance",
]

POCKET_CASH = "cash"
POCKET_INVOICE = "invoice"
POCKET_REFUNDED = "refunded"
_VOUCHER = "voucher:"
_CARD = "card:"
CARD_FACE_VALUES = (999_000_000, 1_999_000_000, 4_999_000_000)  # 999 / 1999 / 4999 CNY
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class EntryKind(StrEnum):
    TOPUP = "topup"
    CHARGE = "charge"
    REFUND = "refund"
    VOUCHER_GRANT = "voucher_grant"
    VOUCHER_SPEND = "voucher_spend"
    VOUCHER_REFUND = "voucher_refund"
    VOUCHER_EXPIRE = "voucher_expire"
    CARD_PURCHASE = "card_purchase"
    CARD_SPEND = "card_spend"
    CARD_REFUND = "card_refund"  # a card portion returned to the card (never to cash)
    CARD_EXPIRE = "card_expire"
    SETTLEMENT_ADJUSTMENT = "settlement_adjustment"
    INVOICE = "invoice"
    # At an account's close (and on any credit it gets after: a late refund, a settlement):
    # the cash it held leaves the books as owed back to the customer; a voucher's or card's
    # remainder is void (non-refundable), so the pockets of a closed account sum to zero.
    CLOSED = "closed"
    VOUCHER_VOID = "voucher_void"
    CARD_VOID = "card_void"
    # The operator paid back (part of) what `closed` entries owe the customer: a record in the
    # "refunded" pocket, so what is still owed is the `closed` sum less these.
    REFUND_PAID = "refund_paid"


# The members the hot paths name, as module constants (the same objects): on Python 3.11 reading
# a member off its class costs ~900 instructions, a module global ~25 (session 54's split.py and
# session.py), and an Entry is made and checked inside the store's write lock for every charge
# (plan_charge, admission's one-cash-charge path) and every refund of a roll-up (plan_refund).
CHARGE = EntryKind.CHARGE
_CARD_PURCHASE = EntryKind.CARD_PURCHASE
_VOUCHER_SPEND = EntryKind.VOUCHER_SPEND
_CARD_SPEND = EntryKind.CARD_SPEND
_REFUND = EntryKind.REFUND
_VOUCHER_REFUND = EntryKind.VOUCHER_REFUND
_VOUCHER_EXPIRE = EntryKind.VOUCHER_EXPIRE
_CARD_REFUND = EntryKind.CARD_REFUND
_CARD_EXPIRE = EntryKind.CARD_EXPIRE

# kind -> (pocket family, sign): +1 credit (amount >= 0), -1 debit (amount <= 0), 0 either.
_RULES: dict[EntryKind, tuple[str, int]] = {
    EntryKind.TOPUP: ("cash", 1),
    EntryKind.CHARGE: ("cash", -1),
    EntryKind.REFUND: ("cash", 1),
    EntryKind.SETTLEMENT_ADJUSTMENT: ("cash", 0),
    EntryKind.VOUCHER_GRANT: ("voucher", 1),
    EntryKind.VOUCHER_SPEND: ("voucher", -1),
    EntryKind.VOUCHER_REFUND: ("voucher", 1),
    EntryKind.VOUCHER_EXPIRE: ("voucher", -1),
    EntryKind.CARD_PURCHASE: ("card", 1),
    EntryKind.CARD_SPEND: ("card", -1),
    EntryKind.CARD_REFUND: ("card", 1),
    EntryKind.CARD_EXPIRE: ("card", -1),
    EntryKind.INVOICE: ("invoice", 1),
    EntryKind.CLOSED: ("cash", -1),
    EntryKind.VOUCHER_VOID: ("voucher", -1),
    EntryKind.CARD_VOID: ("card", -1),
    EntryKind.REFUND_PAID: ("refunded", 1),
}
_SPENDS = {EntryKind.CHARGE, EntryKind.VOUCHER_SPEND, EntryKind.CARD_SPEND}
_REFUNDS = {EntryKind.REFUND, EntryKind.VOUCHER_REFUND, EntryKind.CARD_REFUND}
_EXPIRES = {EntryKind.VOUCHER_EXPIRE, EntryKind.CARD_EXPIRE}
_GRANTS = {EntryKind.VOUCHER_GRANT, EntryKind.CARD_PURCHASE}
# The kinds a message's id is the ref of: what its sending took and gave back (and the void of a
# give-back to a pocket that had expired). Other entries may carry any ref an operator typed,
# a message id included (a goodwill top-up naming the message): reads of a message's charge
# must select by these kinds, not by ref alone.
CHARGE_KINDS = frozenset(k.value for k in _SPENDS | _REFUNDS)
MESSAGE_KINDS = frozenset(k.value for k in _SPENDS | _REFUNDS | _EXPIRES)


# The money an operator records as coming in (a payment received, a promotion granted, a card
# sold): what a payment `ref` names, once per account whatever the kind (one bank transfer is a
# top-up or a card sale, never both).
PAYMENT_KINDS = frozenset(
    {EntryKind.TOPUP.value, EntryKind.VOUCHER_GRANT.value, EntryKind.CARD_PURCHASE.value}
)
PAYMENT_REF_REUSED = "PAYMENT_REF_REUSED"
# Why a closed account's money in is refused (ACCOUNT_CLOSED): its keys are revoked and it can
# never be enabled again, so whatever it were credited could never be spent.
CLOSED_ACCOUNT = (
    "the account is closed: it takes no top-ups, vouchers or cards (it can never send again); "
    "nothing was credited"
)


class LedgerError(BillingError):
    """Entries that contradict each other (spend before grant, negative pocket, bad sign...)."""

    code = "LEDGER_INCONSISTENT"


class InsufficientFunds(BillingError):
    """The charge exceeds what the account can spend on this traffic; nothing was planned."""

    code = "INSUFFICIENT_BALANCE"

    def __init__(self, needed: int, available: int) -> None:
        super().__init__(
            f"balance: {format_micro(needed)} CNY needed, {format_micro(available)} available"
        )
        self.needed = needed
        self.available = available


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _family(pocket: str) -> str:
    if pocket in (POCKET_CASH, POCKET_INVOICE, POCKET_REFUNDED):
        return pocket
    for prefix, fam in ((_VOUCHER, "voucher"), (_CARD, "card")):
        if pocket.startswith(prefix) and len(pocket) > len(prefix):
            return fam
    raise LedgerError(f"pocket: unknown pocket {pocket!r}")


def voucher_pocket(voucher_id: str) -> str:
    if not voucher_id:
        raise ValueError("voucher_id: must be non-empty")
    return _VOUCHER + voucher_id


def card_pocket(card_id: str) -> str:
    if not card_id:
        raise ValueError("card_id: must be non-empty")
    return _CARD + card_id


@fast_init
@dataclass(frozen=True, slots=True)
class Entry:
    """One ledger row. Validated on construction so a bad row fails where it is made or read."""

    kind: EntryKind
    amount: int
    pocket: str
    at: int
    ref: str | None = None  # message id, "YYYY-MM", grant/card id
    expires_at: int | None = None  # grants and cards; copied onto spends so refunds know it

    def __post_init__(self) -> None:
        # Fast paths first, the same checks: every accept's charge makes one of these inside the
        # write lock, and EntryKind(member) or `_is_int` calls cost more than the checks (h11).
        kind = self.kind
        if type(kind) is not EntryKind:
            try:
                kind = EntryKind(kind)
            except ValueError:
                raise LedgerError(f"kind: unknown entry kind {self.kind!r}") from None
            object.__setattr__(self, "kind", kind)
        if type(self.amount) is not int and not _is_int(self.amount):
            raise LedgerError(f"amount: must be an integer of micro-units, got {self.amount!r}")
        if type(self.at) is not int and not _is_int(self.at):
            raise LedgerError(f"at: must be an integer (unix ms), got {self.at!r}")
        expires_at = self.expires_at
        if expires_at is not None and type(expires_at) is not int and not _is_int(expires_at):
            raise LedgerError(f"expires_at: must be an integer (unix ms), got {expires_at!r}")
        family, sign = _RULES[kind]
        pocket = self.pocket
        if not (pocket == POCKET_CASH == family) and _family(pocket) != family:
            raise LedgerError(f"pocket: {kind} goes to a {family} pocket, not {self.pocket!r}")
        if sign * self.amount < 0:
            raise LedgerError(f"amount: {kind} must be {'>= 0' if sign > 0 else '<= 0'}")
        if kind == _CARD_PURCHASE and self.expires_at is None:
            raise LedgerError("expires_at: a stored-value card always expires")


@fast_init
@dataclass(frozen=True, slots=True)
class Balances:
    """What an account holds at an instant. Only valid, non-empty vouchers and cards are listed."""

    cash: int  # may be negative only through postpaid accrual (plan_charge(overdraft=True))
    vouchers: Mapping[str, int]  # voucher id -> remainder
    cards: Mapping[str, int]  # card id -> remainder
    voucher_expiry: Mapping[str, int | None] = field(default_factory=dict)
    card_expiry: Mapping[str, int | None] = field(default_factory=dict)

    @property
    def available_domestic(self) -> int:
        """Spendable on domestic traffic: vouchers and cash (a postpaid debt does not eat them)."""
        return max(self.cash, 0) + sum(self.vouchers.values())

    @property
    def available_international(self) -> int:
        """Spendable on international traffic: vouchers, stored-value cards and cash."""
        return self.available_domestic + sum(self.cards.values())


def _valid(expiry: int | None, now: int) -> bool:
    return expiry is None or now < expiry


def balances(entries: Iterable[Entry], now: int) -> Balances:
    """Balances derived from the whole history; vouchers and cards expired at `now` count as 0."""
    cash = 0
    sums: dict[str, int] = {}
    expiry: dict[str, int | None] = {}
    for e in entries:
        family = _family(e.pocket)
        if family == POCKET_CASH:
            cash += e.amount
            continue
        if family in (POCKET_INVOICE, POCKET_REFUNDED):
            continue
        if e.kind in _GRANTS:
            if e.pocket in expiry:
                raise LedgerError(f"pocket: {e.pocket} was granted twice")
            expiry[e.pocket] = e.expires_at
        sums[e.pocket] = sums.get(e.pocket, 0) + e.amount
    vouchers: dict[str, int] = {}
    cards: dict[str, int] = {}
    v_exp: dict[str, int | None] = {}
    c_exp: dict[str, int | None] = {}
    for pocket, total in sums.items():
        if pocket not in expiry:
            raise LedgerError(f"pocket: {pocket} has entries but was never granted")
        if total < 0:
            raise LedgerError(f"pocket: {pocket} is overdrawn ({total})")
        if total == 0 or not _valid(expiry[pocket], now):
            continue
        if pocket.startswith(_VOUCHER):
            vouchers[pocket[len(_VOUCHER) :]] = total
            v_exp[pocket[len(_VOUCHER) :]] = expiry[pocket]
        else:
            cards[pocket[len(_CARD) :]] = total
            c_exp[pocket[len(_CARD) :]] = expiry[pocket]
    return Balances(cash, vouchers, cards, v_exp, c_exp)


def _spend_order(
    amounts: Mapping[str, int], expiry: Mapping[str, int | None], now: int
) -> list[tuple[str, int, int | None]]:
    """Valid non-empty pockets, earliest expiry first (never-expiring last), then by id."""
    rows = [
        (pid, amt, expiry.get(pid))
        for pid, amt in amounts.items()
        if amt > 0 and _valid(expiry.get(pid), now)
    ]
    rows.sort(key=lambda r: (r[2] is None, r[2] or 0, r[0]))
    return rows


def plan_charge(
    bal: Balances,
    amount: int,
    *,
    international: bool,
    now: int,
    ref: str,
    overdraft: bool = False,
) -> list[Entry]:
    """Entries taking `amount` from `bal`: vouchers, then (international only) cards, then cash.

    Vouchers and cards go earliest-expiry first, so money about to become void is used first.
    Cards never pay domestic traffic. Raises InsufficientFunds before planning anything when the
    spendable total is short. `overdraft=True` (postpaid accrual) lets cash go negative instead.
    """
    if not _is_int(amount) or amount < 0:
        raise ValueError(f"amount: must be a non-negative integer, got {amount!r}")
    if amount == 0:
        return []
    sources = [(_VOUCHER_SPEND, _VOUCHER, _spend_order(bal.vouchers, bal.voucher_expiry, now))]
    if international:
        sources.append((_CARD_SPEND, _CARD, _spend_order(bal.cards, bal.card_expiry, now)))
    available = max(bal.cash, 0) + sum(amt for _k, _p, rows in sources for _i, amt, _e in rows)
    if amount > available and not overdraft:
        raise InsufficientFunds(needed=amount, available=available)
    out: list[Entry] = []
    left = amount
    for kind, prefix, rows in sources:
        for pid, amt, exp in rows:
            if left == 0:
                return out
            take = min(left, amt)
            out.append(Entry(kind, -take, prefix + pid, now, ref, exp))
            left -= take
    if left:
        out.append(Entry(CHARGE, -left, POCKET_CASH, now, ref))
    return out


def plan_refund(charge_entries: Sequence[Entry], now: int, ref: str) -> list[Entry]:
    """Entries returning a message's pre-charge to the pockets it came from.

    Pass every entry recorded for the message (its spends and any refunds already made): only what
    is still held is returned, so a second call returns [] and a duplicated receipt cannot refund
    twice. A portion whose voucher or card has expired meanwhile is void: it is recorded as a refund
    immediately followed by an EXPIRE of the same amount, so the history shows where the money went
    and the pocket stays at zero.
    """
    held: dict[str, int] = {}
    expiry: dict[str, int | None] = {}
    for e in charge_entries:
        if e.kind in _EXPIRES:
            continue
        if e.kind not in _SPENDS and e.kind not in _REFUNDS:
            raise LedgerError(f"kind: {e.kind} is not part of a message charge")
        held[e.pocket] = held.get(e.pocket, 0) - e.amount
        if e.expires_at is not None:
            expiry[e.pocket] = e.expires_at
    out: list[Entry] = []
    for pocket, amt in held.items():
        if amt < 0:
            raise LedgerError(f"pocket: {pocket} refunded more than was charged ({-amt})")
        if amt == 0:
            continue
        family = _family(pocket)
        if family == POCKET_CASH:
            out.append(Entry(_REFUND, amt, pocket, now, ref))
            continue
        refund, void = (
            (_VOUCHER_REFUND, _VOUCHER_EXPIRE)
            if family == "voucher"
            else (_CARD_REFUND, _CARD_EXPIRE)
        )
        exp = expiry.get(pocket)
        out.append(Entry(refund, amt, pocket, now, ref, exp))
        if not _valid(exp, now):
            out.append(Entry(void, -amt, pocket, now, ref, exp))
    return out


def expire_entries(entries: Iterable[Entry], now: int) -> list[Entry]:
    """EXPIRE entries writing off the remainder of every voucher/card expired at `now`.

    Optional housekeeping: balances() already ignores expired remainders; writing them off makes
    the ledger sum to what the account really holds. Dated at the expiry instant; idempotent.
    """
    entries = list(entries)
    sums: dict[str, int] = {}
    grant: dict[str, Entry] = {}
    for e in entries:
        if _family(e.pocket) in ("voucher", "card"):
            sums[e.pocket] = sums.get(e.pocket, 0) + e.amount
            if e.kind in _GRANTS:
                grant[e.pocket] = e
    out: list[Entry] = []
    for pocket, total in sums.items():
        g = grant.get(pocket)
        if g is None or total <= 0 or _valid(g.expires_at, now):
            continue
        kind = _VOUCHER_EXPIRE if pocket.startswith(_VOUCHER) else _CARD_EXPIRE
        assert g.expires_at is not None  # not valid => has an expiry
        # Named by the voucher's or card's id, as the sweep's write-off is
        # (admission.lapse_plan), not by the grant's ref: that may name the payment.
        ref = pocket.partition(":")[2]
        out.append(Entry(kind, -total, pocket, g.expires_at, ref, g.expires_at))
    return out


def warns_low_balance(before: int, after: int, threshold: int, *, warned: bool) -> bool:
    """Whether a charge or expiry that took the domestic balance from `before` to `after` warns.

    One warning per dip: it fires when the balance ends below the threshold and the account has
    not been warned since it was last at or above it (`warned`, kept on the account). A
    crossing alone missed an account that was never above its threshold (created below it, its
    threshold raised over its balance, topped up to a level still under it): it was never
    warned, however low it went. A crossing always warns, whatever `warned` says: a balance at
    or above the threshold is itself proof the dip it was warned for is over (a credit that did
    not clear the mark, a refund, is then not needed for the next dip to warn).

    Only a fall warns (`after < before`): what took nothing from the domestic balance (a charge
    a stored-value card paid alone, an expired card written off: international money, never in
    this balance) warned an account below its threshold and never warned, `previous` equal to
    `available`, and set the mark, so the domestic charge that did lower it was then silent.
    """
    if threshold <= 0 or after >= threshold or after >= before:
        return False
    return before >= threshold or not warned


def ref_conflict(credited_kind: str, credited_amount: int, entry: Entry) -> str | None:
    """None when `entry` is the money in its `ref` already credited to the account (the same
    kind and amount: a retry after a lost answer, answered as a duplicate and not credited
    again); otherwise why it is refused (PAYMENT_REF_REUSED), naming the ref and both amounts.

    Why not every reuse a duplicate: a second, different payment carrying a reused reference
    (a typo, a bank's reference recycled) was answered as a success and credited nothing, the
    money gone from the books; a send's Idempotency-Key reused with another body is refused
    alike. `credited_*`: the first entry of a PAYMENT_KINDS kind the account has with the ref."""
    if credited_kind == str(entry.kind) and credited_amount == entry.amount:
        return None
    if entry.kind == EntryKind.REFUND_PAID:
        return _payout_ref_conflict(credited_kind, credited_amount, entry)
    what = str(entry.kind)
    return (
        f"ref: {entry.ref!r} was already credited to this account as a {credited_kind} of "
        f"{format_micro(credited_amount)} ({credited_amount} micro-units); this {what} is of "
        f"{format_micro(entry.amount)} ({entry.amount} micro-units): another payment needs a "
        "ref of its own (a retry repeats the same amount); nothing was credited"
    )


def _payout_ref_conflict(seen_kind: str, seen_amount: int, payout: Entry) -> str:
    """ref_conflict for a refund payout: money paid out is recorded, not credited, and its ref
    may name an earlier payout or a payment the account received before its close."""
    seen = f"{format_micro(seen_amount)} ({seen_amount} micro-units)"
    this = f"{format_micro(payout.amount)} ({payout.amount} micro-units)"
    if seen_kind == EntryKind.REFUND_PAID:
        return (
            f"ref: {payout.ref!r} already names a refund payout of {seen} recorded for this "
            f"account; this payout is of {this}: another payout needs a ref of its own (a "
            "retry repeats the same amount); nothing was recorded"
        )
    return (
        f"ref: {payout.ref!r} already names a {seen_kind} of {seen} credited to this account, "
        f"not a refund payout; this payout of {this} needs a ref of its own; nothing was "
        "recorded"
    )


@dataclass(frozen=True, slots=True)
class RefundPosition:
    """What a closed account's customer is owed back: `owed`, the cash its `closed` entries
    wrote off (the close's and any credit's after it), and `paid`, the refunds an operator
    recorded as paid (`refund_paid`)."""

    owed: int
    paid: int

    @property
    def outstanding(self) -> int:
        return self.owed - self.paid


def refund_position(kind_sums: Mapping[str, int]) -> RefundPosition:
    """From an account's ledger sums by kind (Store.ledger_kind_sums)."""
    owed = -int(kind_sums.get(EntryKind.CLOSED.value) or 0)
    return RefundPosition(owed, int(kind_sums.get(EntryKind.REFUND_PAID.value) or 0))


REFUND_NOT_OWED = "REFUND_NOT_OWED"


def refund_payment(amount: int, position: RefundPosition, now: int, ref: str) -> list[Entry]:
    """The entry recording that `amount` of what a closed account is owed was paid back,
    under the payout's `ref`. Part of it may be paid (instalments, or a bank's fee the customer
    agreed to), never more than is still outstanding: an overpayment is money the books could
    not account for. Refused with REFUND_NOT_OWED, naming what is still owed."""
    if not _is_int(amount) or amount <= 0:
        raise ValueError(f"amount: must be a positive integer of micro-units, got {amount!r}")
    if amount > position.outstanding:
        raise BillingError(
            f"amount_micro: {amount} ({format_micro(amount)}) is more than the "
            f"{position.outstanding} micro-units ({format_micro(position.outstanding)}) still "
            f"owed back to this account (owed {position.owed}, paid {position.paid}); "
            "nothing was recorded",
            code=REFUND_NOT_OWED,
        )
    return [Entry(EntryKind.REFUND_PAID, amount, POCKET_REFUNDED, now, ref)]


def topup(amount: int, now: int, ref: str | None = None) -> list[Entry]:
    if not _is_int(amount) or amount <= 0:
        raise ValueError(f"amount: must be a positive integer of micro-units, got {amount!r}")
    return [Entry(EntryKind.TOPUP, amount, POCKET_CASH, now, ref)]


def grant_voucher(
    amount: int, now: int, voucher_id: str, expires_at: int | None, ref: str | None = None
) -> list[Entry]:
    """An operator's voucher grant; `expires_at=None` grants one that never expires. `ref`: what
    the grant names (a promotion, an order), else the voucher's own id; the pocket names the
    voucher either way."""
    if not _is_int(amount) or amount <= 0:
        raise ValueError(f"amount: must be a positive integer of micro-units, got {amount!r}")
    if expires_at is not None and expires_at <= now:
        raise ValueError("expires_at: must be after the grant time")
    pocket = voucher_pocket(voucher_id)
    entry_ref = voucher_id if ref is None else ref
    return [Entry(EntryKind.VOUCHER_GRANT, amount, pocket, now, entry_ref, expires_at)]


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise BillingError(f"tz: unknown time zone {tz!r}", code="INVALID_TIME_ZONE") from None


def card_expiry(now: int, tz: str = "UTC") -> int:
    """The instant one calendar year after `now` in `tz` (same wall-clock time next year).

    A calendar year, not 365 days, because "valid one year" is read off a calendar by customers.
    A card bought on 29 February expires on 1 March (never shorter than a year). Integer ms only.
    """
    local = (_EPOCH + now * _MS).astimezone(_zone(tz))
    try:
        nxt = local.replace(year=local.year + 1)
    except ValueError:  # 29 February -> 1 March, same time of day
        nxt = local.replace(year=local.year + 1, month=3, day=1)
    # Re-attach the zone so the offset is the one in force next year (DST), then to UTC ms.
    nxt = nxt.replace(tzinfo=_zone(tz), fold=0)
    return (nxt - _EPOCH) // _MS


def card_purchase(
    face_value: int, now: int, card_id: str, *, tz: str = "UTC", ref: str | None = None
) -> list[Entry]:
    """A stored-value card (international only, non-refundable, valid one year).

    Paid outside the ledger (like a top-up), so the only entry credits the card's own pocket;
    it is never converted back to cash. `ref`: the payment the sale names (as a top-up's), else
    the card's own id; the pocket names the card either way.
    """
    if face_value not in CARD_FACE_VALUES or not _is_int(face_value):
        raise ValueError(f"face_value: must be one of {CARD_FACE_VALUES}, got {face_value!r}")
    return [
        Entry(
            EntryKind.CARD_PURCHASE,
            face_value,
            card_pocket(card_id),
            now,
            card_id if ref is None else ref,
            card_expiry(now, tz),
        )
    ]
