"""The decision at acceptance: may this batch be queued, and what does it cost (pure).

The API prices and renders a request with what it can know alone (templates, tariffs, config); the
rest of the rules depend on state other requests change at the same moment: approvals, opt-outs,
the frequency history, today's count and the balance. Each engine reads those *facts* inside the
accept transaction and calls `decide`; the answer is a refusal or the ledger entries to append.
Reading and deciding in the transaction that writes is what makes two concurrent sends unable to
both take the last of a balance or both pass a 1-per-minute limit, on either engine.

Checks run in a fixed order, so a request failing several rules gets the same answer every time:
sign name, template, opt-out, do-not-contact, frequency, daily quota, balance.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from bridge.domain import frequency as freq
from bridge.domain.ledger import (
    CHARGE,
    Balances,
    Entry,
    EntryKind,
    InsufficientFunds,
    LedgerError,
    plan_charge,
    plan_refund,
    warns_low_balance,
)
from bridge.domain.tariffs import format_micro
from bridge.fastinit import fast_init, maker

DOMESTIC = "D"  # messages.price_class of domestic traffic; international carries its prefix
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_VOIDS = frozenset({EntryKind.VOUCHER_EXPIRE, EntryKind.CARD_EXPIRE})
_SPEND_KINDS = frozenset({EntryKind.CHARGE, EntryKind.VOUCHER_SPEND, EntryKind.CARD_SPEND})
_REFUND_KINDS = frozenset({EntryKind.REFUND, EntryKind.VOUCHER_REFUND, EntryKind.CARD_REFUND})
_MS = timedelta(milliseconds=1)


@fast_init
@dataclass(frozen=True, slots=True)
class Priced:
    """One message's price at acceptance, decided by the API from the tariff in force."""

    message_id: str
    amount: int  # micro-units
    international: bool


@fast_init
@dataclass(frozen=True, slots=True)
class FrequencyRule:
    """Which earlier sends count against this request's recipients, and how many are allowed.

    kind "verification" counts per (sign, number) over every verification template; "template"
    per (sign, template, number); "raw" (free text) per (sign, number) among free-text sends.
    """

    kind: str
    sign: str | None
    template: str | None
    limits: freq.Limits
    tz: str
    numbers: tuple[str, ...]  # the recipients subject to the limit (exempt numbers left out)
    # Per-number sign names when they differ (SendBatchSms); empty: `sign` for every number.
    signs: tuple[str | None, ...] = ()

    def sign_of(self) -> list[tuple[str, str | None]]:
        """(number, the sign its sends are counted under)."""
        if self.signs:
            return list(zip(self.numbers, self.signs, strict=True))
        return [(n, self.sign) for n in self.numbers]


@fast_init
@dataclass(frozen=True, slots=True)
class Rules:
    """What the store must check inside the accept transaction."""

    sign_name: str | None = None  # must be this account's, approved
    more_signs: tuple[str, ...] = ()  # further sign names of the batch (SendBatchSms), likewise
    template_code: str | None = None  # must be approved
    # The revision the request was rendered from: another stored revision (the template was
    # corrected since this process cached it) refuses TEMPLATE_CHANGED, and the caller renders
    # the request again. None: not checked.
    template_revision: int | None = None
    frequency: FrequencyRule | None = None
    charges: tuple[Priced, ...] = ()
    billing: bool = False
    tz: str = "UTC"  # the day of the daily quota


@fast_init
@dataclass(frozen=True, slots=True)
class Pocket:
    """A running sum of the ledger for one pocket (the store keeps it with the entries)."""

    pocket: str
    amount: int
    expires_at: int | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Facts:
    """What the transaction read. Statuses are None when the row does not exist."""

    recipients: tuple[str, ...]
    sign_status: str | None = None
    more_sign_status: Mapping[str, str | None] = field(default_factory=dict)
    template_status: str | None = None  # "changed": not Rules.template_revision any more
    opted_out: frozenset[str] = frozenset()
    blocked: frozenset[str] = frozenset()
    history: Mapping[str, Sequence[int]] = field(default_factory=dict)
    day_count: int = 0
    daily_quota: int = 0
    account_kind: str = "prepaid"
    low_balance_threshold: int = 0
    # Warned of a low balance since it was last at or above the threshold (accounts.low_warned_at
    # is set): a further charge in the same dip stays silent.
    low_warned: bool = False
    pockets: Sequence[Pocket] = ()


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str
    message: str
    retry_after: float | None = None
    # Machine-readable particulars of the refusal (the error body's `details`): for a refusal
    # of recipients, every one refused and why (refused_details).
    details: Mapping[str, Any] | None = None


# The most refused recipients one refusal lists (refused_details): a native batch
# (server.max_recipients, default 1000) is listed whole, in about 80 bytes each; a larger one
# (server.max_recipients up to 10,000) lists its first 1000 by position, never a megabyte.
MAX_LISTED_REFUSALS = 1000


@dataclass(frozen=True, slots=True)
class RecipientRefusal:
    """Why one recipient of a batch is refused: `index` is its first position in `to`."""

    index: int
    to: str
    code: str
    message: str
    retry_after: float | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Plan:
    entries: tuple[tuple[str, Entry], ...]  # (account pocket key unused) message id, entry
    # (before, after) when this batch warns of a low balance (ledger.warns_low_balance): the
    # engine queues the event and marks the account warned in the same transaction.
    low_balance: tuple[int, int] | None
    day: str  # the daily-quota day this batch counts in


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


# The last (minute, zone, day) `day_key` answered, replaced whole (one global store: a thread
# reading it sees one answer or the other, never a mix). At first no minute (None equals none):
# not (-1, "", ""), which answered "" for the last minute of 1969 in a zone "", where the cache
# raises (ZoneInfo's ValueError), as it does for any zone no ZoneInfo names (r5).
_last_day: tuple[int | None, str, str] = (None, "", "")


def day_key(now_ms: int, tz: str) -> str:
    """The local calendar day of `now_ms` ("YYYY-MM-DD"), the unit of the daily quota.

    The last answer is kept beside the lru_cache (session 62): the accepts of one minute ask the
    same, and the cache's call (its key tuple hashed, its list moved) was ~1.7 k instructions of
    every accept's ~2.3 k here."""
    global _last_day
    minute = now_ms // 60_000
    last = _last_day
    if last[0] == minute and last[1] == tz:
        return last[2]
    day = _day_of_minute(minute, tz)
    _last_day = (minute, tz, day)
    return day


@lru_cache(maxsize=256)
def _day_of_minute(minute: int, tz: str) -> str:
    # Every zone's midnight falls on a whole minute, so the day is a function of the minute.
    return datetime.fromtimestamp(minute * 60, _zone(tz)).strftime("%Y-%m-%d")


def quota_returns(ended: Iterable[tuple[str, int]], tz: str) -> dict[tuple[str, str], int]:
    """The places messages that never reached anyone (lifecycle.never_reached) give back in the
    daily counts: (account id, accepted_at) of each -> {(account id, day): how many}. A message
    was counted in the day it was accepted, so that day gets the place back: today's count
    frees room for a new send, a past day's only reads right."""
    out: dict[tuple[str, str], int] = {}
    for account_id, accepted_at in ended:
        k = (account_id, day_key(accepted_at, tz))
        out[k] = out.get(k, 0) + 1
    return out


def seconds_to_midnight(now_ms: int, tz: str) -> float:
    local = datetime.fromtimestamp(now_ms / 1000, _zone(tz))
    nxt = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    nxt = nxt.replace(tzinfo=_zone(tz), fold=0)
    return max(1.0, (nxt - _EPOCH) / _MS / 1000 - now_ms / 1000)


def balances_of(pockets: Iterable[Pocket], now: int) -> Balances:
    """Balances from running pocket sums: the same answer as `ledger.balances` over the entries
    (computed directly: it runs in every accept transaction)."""
    cash = 0
    vouchers: dict[str, int] = {}
    cards: dict[str, int] = {}
    v_exp: dict[str, int | None] = {}
    c_exp: dict[str, int | None] = {}
    for p in pockets:
        name = p.pocket
        if name == "cash":
            cash += p.amount
            continue
        if name.startswith("voucher:"):
            target, expiry, key = vouchers, v_exp, name[8:]
        elif name.startswith("card:") and p.expires_at is not None:  # a card always expires
            target, expiry, key = cards, c_exp, name[5:]
        else:
            continue  # the postpaid receivable (and a malformed card) is never spendable
        if p.amount < 0:
            raise LedgerError(f"pocket: {name} is overdrawn ({p.amount})")
        if p.amount == 0 or not (p.expires_at is None or now < p.expires_at):
            continue
        target[key] = p.amount
        expiry[key] = p.expires_at
    return Balances(cash, vouchers, cards, v_exp, c_exp)


def apply_entries(pockets: Mapping[str, Pocket], entries: Iterable[Entry]) -> dict[str, Pocket]:
    """The running sums after appending `entries` (what the store writes back)."""
    out = dict(pockets)
    for e in entries:
        old = out.get(e.pocket)
        # An expiry kept, else the entry's (the stores' upsert: COALESCE(kept, new)).
        expires = old.expires_at if old is not None and old.expires_at is not None else e.expires_at
        out[e.pocket] = Pocket(e.pocket, (old.amount if old else 0) + e.amount, expires)
    return out


def recipient_refusals(rules: Rules, facts: Facts, now: int) -> list[RecipientRefusal]:
    """Every recipient of the batch refused for itself (an opt-out, a do-not-contact list, a
    frequency limit), each once with its first reason in that order; opt-outs first, then
    do-not-contact, then frequency, each in recipient order. A campaign then learns all of
    them from one refusal instead of one per retry."""
    recipients = facts.recipients
    position: dict[str, int]
    if len(recipients) == 1:  # the usual send: no loop
        position = {recipients[0]: 0}
    else:
        position = {}
        for i, number in enumerate(recipients):
            position.setdefault(number, i)
    found: dict[str, RecipientRefusal] = {}

    def name(number: str) -> str:  # `to`, or `to[i]` by the position found once
        return "to" if len(recipients) == 1 else f"to[{position[number]}]"

    listed = (
        (
            (facts.opted_out, "RECIPIENT_OPTED_OUT", "has opted out of this account's messages"),
            (facts.blocked, "RECIPIENT_BLOCKED", "is on a do-not-contact list"),
        )
        if facts.opted_out or facts.blocked
        else ()  # the usual send: nobody listed, nothing to loop over
    )
    for numbers, code, why in listed:
        if not numbers:
            continue
        for number in recipients:
            if number in numbers and number not in found:
                found[number] = RecipientRefusal(
                    position[number], number, code, f"{name(number)}: {number} {why}"
                )
    fr = rules.frequency
    if fr is not None:
        for number in fr.numbers:
            if number in found:
                continue
            sent = facts.history.get(number, ())
            window = freq.exceeded(sent, now, fr.tz, fr.limits)
            if window is not None:
                found[number] = RecipientRefusal(
                    position.get(number, 0),
                    number,
                    freq.error_code(window),
                    freq.error_message(window, fr.limits).replace(
                        "to:", f"{name(number) if number in position else 'to'} ({number}):", 1
                    ),
                    retry_after=_frequency_wait(sent, now, fr),
                )
    return list(found.values())


def refused_details(refused: Sequence[RecipientRefusal]) -> dict[str, Any]:
    """The error body's `details` of a refusal of recipients: `recipients`, each refused one
    (`index` in `to`, `to` as normalised, `code`, and for a frequency limit `retry_after`, the
    seconds until that number may be sent to), by position, at most MAX_LISTED_REFUSALS;
    `refused`, how many in all; `truncated`, whether some were left out."""
    listed = sorted(refused, key=lambda r: r.index)[:MAX_LISTED_REFUSALS]
    entries: list[dict[str, Any]] = []
    for r in listed:
        entry: dict[str, Any] = {"index": r.index, "to": r.to, "code": r.code}
        if r.retry_after is not None:
            entry["retry_after"] = max(1, math.ceil(r.retry_after))
        entries.append(entry)
    return {
        "recipients": entries,
        "refused": len(refused),
        "truncated": len(refused) > len(listed),
    }


def decide(rules: Rules, facts: Facts, now: int, day: str | None = None) -> Refusal | Plan:
    """The send's Refusal, or its Plan. `day`: `day_key(now, rules.tz)` when the caller has it
    already (the SQLite accept computes it before its write lock; session 57)."""
    if facts.template_status == "changed":  # before any other refusal: it is ours, not theirs
        return Refusal(
            "TEMPLATE_CHANGED",
            f"template: {rules.template_code!r} was corrected while this request was checked; "
            "send it again",
        )
    signs = [(rules.sign_name, facts.sign_status)] if rules.sign_name is not None else []
    if rules.more_signs:
        signs += [(name, facts.more_sign_status.get(name)) for name in rules.more_signs]
    for name, status in signs:
        if status != "approved":
            return Refusal(
                "SIGN_NAME_NOT_APPROVED",
                f"sign_name: {name!r} is {status or 'not registered'} for this account; only an "
                "approved sign name can be used",
            )
    if rules.template_code is not None and facts.template_status != "approved":
        if facts.template_status is None:
            return Refusal("TEMPLATE_NOT_FOUND", f"template: {rules.template_code!r} is not known")
        return Refusal(
            "TEMPLATE_NOT_APPROVED",
            f"template: {rules.template_code!r} is {facts.template_status}; only approved "
            "templates can be sent",
        )
    recipients = facts.recipients
    refused = () if _nobody_refusable(rules, facts) else recipient_refusals(rules, facts, now)
    if refused:
        # The code and message of the first, as before this listed them all: opt-outs first,
        # then do-not-contact lists, then frequency limits, each in recipient order.
        first = refused[0]
        return Refusal(
            first.code, first.message, first.retry_after, details=refused_details(refused)
        )
    if day is None:
        day = day_key(now, rules.tz)
    n = len(recipients)
    if facts.daily_quota > 0 and facts.day_count + n > facts.daily_quota:
        left = max(0, facts.daily_quota - facts.day_count)
        return Refusal(
            "DAILY_QUOTA_EXCEEDED",
            f"to: {n} message(s) would pass the daily quota of {facts.daily_quota} "
            f"({left} left today)",
            retry_after=seconds_to_midnight(now, rules.tz),
        )
    if not rules.billing or not rules.charges:
        return Plan((), None, day)
    if len(rules.charges) == 1 and len(facts.pockets) == 1:
        plan = _one_cash_charge(rules.charges[0], facts, now, day, n)
        if plan is not None:
            return plan
    pockets = {p.pocket: p for p in facts.pockets}
    bal = balances_of(pockets.values(), now)
    before = bal.available_domestic
    planned: list[tuple[str, Entry]] = []
    # Postpaid domestic traffic accrues: it is invoiced at the month's tier price and never taken
    # from the balance, which stays for international pre-charges (needed even when postpaid).
    postpaid = facts.account_kind == "postpaid"
    # Domestic charges are planned first: vouchers pay either kind but cards only international
    # traffic, so an international charge planned first could take the voucher a domestic one
    # needed while a card could have paid for it (a batch refused or not by recipient order).
    if len(rules.charges) == 1:  # a one-recipient send: nothing to sort or add up
        only = rules.charges[0]
        charges: Sequence[Priced] = (only,) if only.international or not postpaid else ()
        needed = only.amount if charges else 0
    else:
        charges = sorted(
            (c for c in rules.charges if c.international or not postpaid),
            key=lambda c: c.international,
        )
        needed = sum(c.amount for c in charges)
    for c in charges:
        try:
            entries = plan_charge(
                bal, c.amount, international=c.international, now=now, ref=c.message_id
            )
        except InsufficientFunds as exc:
            return Refusal(
                "INSUFFICIENT_BALANCE",
                f"balance: {format_micro(needed)} CNY needed for {n} message(s), "
                f"{format_micro(exc.available + _spent(planned))} available",
            )
        planned.extend((c.message_id, e) for e in entries)
        if len(charges) > 1:  # the next charge plans against what this one left
            pockets = apply_entries(pockets, entries)
            bal = balances_of(pockets.values(), now)
    # plan_charge never takes cash below zero, so what left the domestic pockets (vouchers and
    # cash) is exactly how far the available domestic balance fell.
    after = before + sum(e.amount for _m, e in planned if not e.pocket.startswith("card:"))
    # Vouchers that expired since the last send still hold their remainder in the running sums
    # (balances skip them). Counted in `before`, a fall under the threshold that an expiry caused
    # is a crossing too: without it the account ran dry (402) with no warning. Written off here,
    # once, dated at their expiry, so the next send does not see the same crossing again.
    lapsed = _lapsed_vouchers(facts.pockets, now)
    # Only vouchers were domestic money; an expiring card (international only) is written off
    # too, but its remainder was never in the domestic balance the threshold watches.
    nominal = before + sum(p.amount for p in lapsed if p.pocket.startswith("voucher:"))
    low = None
    # Only money that moved warns: a postpaid account's domestic send took nothing.
    if (planned or lapsed) and warns_low_balance(
        nominal, after, facts.low_balance_threshold, warned=facts.low_warned
    ):
        low = (nominal, after)
    planned.extend(("", _write_off(p)) for p in lapsed)
    return Plan(tuple(planned), low, day)


def _nobody_refusable(rules: Rules, facts: Facts) -> bool:
    """Nobody listed and no frequency history for the one number the rule counts (the usual
    send: a new number): recipient_refusals would find no one, so `decide` does not call it.
    With no earlier send `freq.exceeded` never finds a window (one send fits any limit >= 1,
    and 0 is none). Held equal to the general code by tests/unit/test_admission_fast.py."""
    if facts.opted_out or facts.blocked:
        return False
    fr = rules.frequency
    return (
        fr is None
        or not fr.numbers
        or (len(fr.numbers) == 1 and not facts.history.get(fr.numbers[0]))
    )


def _one_cash_charge(
    only: Priced, facts: Facts, now: int, day: str, n: int
) -> Refusal | Plan | None:
    """`decide`'s answer for one charge against an account whose one pocket is cash (the usual
    send), or None for the general code: the same Plan or Refusal, without balances_of's
    Balances and dicts, plan_charge's sources and sorts, or the lapsed-voucher scan (a cash
    pocket never lapses). Held equal to the general code by tests/unit/test_admission_fast.py.
    """
    (pocket,) = facts.pockets
    amount = only.amount
    if pocket.pocket != "cash" or type(amount) is not int or amount <= 0:
        return None  # a voucher or card, or nothing to take (or plan_charge's ValueError)
    if not only.international and facts.account_kind == "postpaid":
        return Plan((), None, day)  # accrued, never taken from the balance
    cash = pocket.amount
    before = cash if cash > 0 else 0  # available_domestic: max(cash, 0), no voucher
    if amount > before:  # plan_charge's InsufficientFunds, nothing planned before it
        return Refusal(
            "INSUFFICIENT_BALANCE",
            f"balance: {format_micro(amount)} CNY needed for {n} message(s), "
            f"{format_micro(before)} available",
        )
    ref = only.message_id
    after = before - amount
    threshold = facts.low_balance_threshold
    low = (
        (before, after)
        if threshold > 0 and warns_low_balance(before, after, threshold, warned=facts.low_warned)
        else None
    )
    # Built by `maker`'s functions, not the classes' calls: ~1.5 k instructions less each, in
    # every billed accept's write lock (session 58).
    return _new_plan(((ref, _new_entry(CHARGE, -amount, "cash", now, ref)),), low, day)


_new_plan = maker(Plan)
_new_entry = maker(Entry)


# An Entry built without its checks (`maker(..., checked=False)`): only for values proved
# already where it is built (`one_send`'s cash charge).
_proved_entry = maker(Entry, checked=False)

# What `decide_one` needs of a one-recipient send's rules, and its cash charge's Plan made before
# the write lock (`one_send`): the store's lock then only checks what it read against them
# (session 61). (sign, template, billed, amount, international, plan): a sign name to find
# approved (rules.sign_name is not None), a template to find approved (rules.template_code is
# not None), rules.billing and rules.charges (the one charge: its amount, 0 when not billed, and
# whether international), and the Plan `decide` makes when the charge is taken from a lone cash
# pocket with no low-balance warning (its day the facts'; no entries when not billed).
# A tuple, not a class (session 62): a frozen dataclass's instance, even by `maker`, was ~2.2 k
# instructions of every accept before the lock (the call, `_Alloc()`, the class assignment, its
# release), the tuple ~0.1 k; `decide_one` unpacks it at once, no attribute read in the lock.
OneSend = tuple[bool, bool, bool, int, bool, Plan]


def one_send(rules: Rules, now: int, day: str) -> OneSend | None:
    """The usual send's rules taken before the write lock, for `decide_one`; None for what only
    `decide` decides: more signs, a frequency rule over more than one number, several charges,
    a charge not a positive int (plan_charge's ValueError).

    The charge's Entry is built without its checks when `now` is an int (session 62): every one
    holds then. Its kind is CHARGE (a member), its amount `-amount` an int below 0 (`amount` an
    int over 0, checked here: a charge's sign), its pocket "cash" (a charge's family), `at` an
    int, no expiry (an int or None either way). `now` of another type is built checked, raising
    as before."""
    if rules.more_signs:
        return None
    fr = rules.frequency
    if fr is not None and len(fr.numbers) > 1:
        return None
    charges = rules.charges
    if rules.billing and charges:
        if len(charges) != 1:
            return None
        only = charges[0]
        amount = only.amount
        if type(amount) is not int or amount <= 0:
            return None
        ref = only.message_id
        entry = (
            _proved_entry(CHARGE, -amount, "cash", now, ref)
            if type(now) is int
            else _new_entry(CHARGE, -amount, "cash", now, ref)
        )
        return (
            rules.sign_name is not None,
            rules.template_code is not None,
            True,
            amount,
            only.international,
            _new_plan(((ref, entry),), None, day),
        )
    return (
        rules.sign_name is not None,
        rules.template_code is not None,
        False,
        0,
        False,
        _new_plan((), None, day),
    )


def decide_one(
    one: OneSend,
    sign_status: str | None,
    template_status: str | None,
    listed: bool,
    sent_before: bool,
    day_count: int,
    quota: int,
    kind: str,
    threshold: int,
    warned: bool,
    cash: int | None,
) -> Plan | None:
    """`decide`'s Plan for a one-recipient send of `one`'s rules over what the accept read, or
    None when `decide` must answer (any refusal, a number listed or with a history the rule
    counts, pockets other than one cash pocket: `cash` None). The facts are those `decide`
    would be given: the sign's and template's statuses, the number opted out or blocked
    (`listed`), sent to in the frequency rule's window (`sent_before`), today's count, the
    account's quota, kind, threshold and mark, the lone cash pocket's amount. Why: `decide`
    over a `Facts` built for it was ~25 k instructions of every accept's write lock, this is
    a few (session 61). Held equal to `decide` by tests/unit/test_admission_one.py."""
    sign, template, billed, amount, international, plan = one
    if template_status == "changed":
        return None
    if sign and sign_status != "approved":
        return None
    if template and template_status != "approved":
        return None
    if listed or sent_before:
        return None
    if quota > 0 and day_count + 1 > quota:
        return None
    if not billed:
        return plan
    if cash is None:
        return None
    if not international and kind == "postpaid":
        return _new_plan((), None, plan.day)  # accrued, never taken from the balance
    before = cash if cash > 0 else 0  # available_domestic: max(cash, 0), no voucher
    if amount > before:
        return None  # INSUFFICIENT_BALANCE: decide's refusal
    if threshold > 0:
        after = before - amount
        if warns_low_balance(before, after, threshold, warned=warned):
            return _new_plan(plan.entries, (before, after), plan.day)
    return plan


def lone_cash(pockets: Iterable[Sequence[Any]]) -> int | None:
    """The cash pocket's amount when every other pocket is at 0, else None (no cash pocket, or
    another one holding something, or owing): `decide_one`'s `cash`. Each pocket a row whose
    first two values are its name and amount: the JSON rows SQLite's statement reads (name,
    amount, expiry), or PostgreSQL's columns zipped. A cash pocket named twice: the last.

    Why pockets at 0 count as none: pocket rows are never deleted, so an account that once held
    a voucher or a card keeps it at 0 for ever, and every later accept went to `decide` (r1 of
    session 61 noticed); `decide` does nothing with a pocket at 0 (its balances skip it, a
    lapsed pocket's write-off needs an amount over 0, and only a negative one is an error).
    SQLite's accept (sqlite_rules.decide_one_of) calls it where there are several pockets, a
    lone pocket's test inline (the call, ~0.6 k instructions, would be in the write lock on
    every send). PostgreSQL's (postgres_rules.decide_one_of_row) keeps its own loop over the two
    columns: called with them zipped, this cost its accept 1.3-1.6 k instructions a send
    (session 63; the bench's account has pockets at 0 beside its cash). Held equal to both
    loops by tests/unit/test_session63_lone_cash.py."""
    cash = None
    for p in pockets:
        if p[0] == "cash":
            cash = p[1]
        elif p[1] != 0:
            return None
    return cash


@fast_init
@dataclass(frozen=True, slots=True)
class Sent:
    """A message an earlier accept of the same transaction wrote, as the frequency history
    reads it back (see facts_after)."""

    recipient: str
    accepted_at: int
    sign_name: str | None
    template: str | None
    kind: str | None


def counts_against(fr: FrequencyRule, sign: str | None, m: Sent) -> bool:
    """Whether `m` is in the history `fr` counts for a number sent under `sign`: the condition
    the engines' history queries apply (equal signs, None equal to None; then by kind)."""
    if m.sign_name != sign:
        return False
    if fr.kind == "verification":
        return m.kind == "verification"
    if fr.kind == "template":
        return fr.template is not None and m.template == fr.template  # SQL: NULL = x is not true
    return m.template is None


def facts_after(
    facts: Facts,
    plan: Plan,
    count: int,
    sent: Sequence[Sent],
    rules: Rules,
    now: int,
) -> Facts:
    """The facts as a read would find them once an earlier accept's writes (`plan`, `count`
    messages, `sent`) are in: for a read that shares a statement with those writes, and so
    cannot see them (PostgreSQL: every part of a statement reads the snapshot it started with).

    Only what an accept writes moves: today's count, the pockets (when this decision reads
    them), the frequency history and the low-balance mark (set when it warned). Approvals,
    opt-outs and do-not-contact lists are written by other transactions, which the account lock
    keeps out until this one commits."""
    day_count = facts.day_count + (count if plan.day == day_key(now, rules.tz) else 0)
    pockets = facts.pockets
    if rules.billing and rules.charges and plan.entries:
        moved = apply_entries({p.pocket: p for p in pockets}, [e for _m, e in plan.entries])
        pockets = [moved[k] for k in sorted(moved)]  # by name, as the stores read them
    history = facts.history
    fr = rules.frequency
    if fr is not None and fr.numbers and sent:
        since = now - freq.DAY_MS
        by_number: dict[str, list[Sent]] = {}
        for m in sent:  # by number first: two 1,000-recipient batches are not 10^6 comparisons
            if m.accepted_at > since:
                by_number.setdefault(m.recipient, []).append(m)
        grown = {n: list(times) for n, times in facts.history.items()}
        for number, sign in dict(fr.sign_of()).items():  # the last sign given counts, as read
            for m in by_number.get(number, ()):
                if counts_against(fr, sign, m):
                    grown.setdefault(number, []).append(m.accepted_at)
        history = grown
    warned = facts.low_warned or plan.low_balance is not None
    return replace(facts, day_count=day_count, pockets=pockets, history=history, low_warned=warned)


def lapse_plan(
    pockets: Sequence[Pocket], threshold: int, now: int, *, warned: bool = False
) -> tuple[list[Entry], tuple[int, int] | None]:
    """The sweep's write-off of vouchers and stored-value cards that expired with a remainder,
    and the low-balance warning it makes (before, after), if any (ledger.warns_low_balance;
    `warned`: the account's mark, as in `Facts.low_warned`). Without it,
    an account whose next send was refused for balance (the voucher gone) got a 402 and never a
    warning: only an accepted send looked at lapsed vouchers. Cards (international only) are
    written off too, so the pockets hold what the account can still spend (before session 14 an
    expired card's remainder stayed in its pocket for good)."""
    lapsed = _lapsed_vouchers(pockets, now)
    if not lapsed:
        return [], None
    after = balances_of(pockets, now).available_domestic
    before = after + sum(p.amount for p in lapsed if p.pocket.startswith("voucher:"))
    low = (before, after) if warns_low_balance(before, after, threshold, warned=warned) else None
    return [_write_off(p) for p in lapsed], low


def rearms_low_balance(pockets: Iterable[Pocket], threshold: int, now: int) -> bool:
    """Whether a credit (a top-up, a voucher, a settlement refund) ended the dip an account was
    warned for: its domestic balance is back at or above the threshold, so the next fall under
    it warns again. A credit that leaves it below keeps the mark: one warning per dip."""
    return balances_of(pockets, now).available_domestic >= threshold


def close_plan(pockets: Sequence[Pocket], now: int) -> list[Entry]:
    """The entries that empty a closed account's pockets, in the close's transaction (and in
    that of any credit it gets after, a late refund or a settlement refund).

    Without them the cash stayed on an account that can take and spend nothing, with no entry
    saying where it went. Cash left is `closed`: owed back to the customer (the close's answer
    names it). A voucher or card that expired with a remainder is written off as the sweep
    does (dated at its expiry); any other remainder is void now (`voucher_void`, `card_void`:
    non-refundable). A negative cash sum (an old postpaid accrual) is a debt: kept, invoiced.
    The postpaid receivable (`invoice`) is a record of what is owed, not money: kept."""
    lapsed = {p.pocket for p in _lapsed_vouchers(pockets, now)}
    out: list[Entry] = []
    for p in sorted(pockets, key=lambda p: p.pocket):
        if p.amount <= 0:
            continue
        if p.pocket in lapsed:
            out.append(_write_off(p))
        elif p.pocket == "cash":
            out.append(Entry(EntryKind.CLOSED, -p.amount, p.pocket, now))
        elif p.pocket.startswith(("voucher:", "card:")):
            family, _, ref = p.pocket.partition(":")
            kind = EntryKind.VOUCHER_VOID if family == "voucher" else EntryKind.CARD_VOID
            out.append(Entry(kind, -p.amount, p.pocket, now, ref, p.expires_at))
    return out


def owed_at_close(entries: Iterable[Entry]) -> tuple[int, int]:
    """(cash owed back to the customer, vouchers' and cards' remainders void) of close
    entries (close_plan's)."""
    owed = voided = 0
    for e in entries:
        if e.kind == EntryKind.CLOSED:
            owed -= e.amount
        elif e.amount < 0:
            voided -= e.amount
    return owed, voided


def _lapsed_vouchers(pockets: Sequence[Pocket], now: int) -> list[Pocket]:
    return [
        p
        for p in pockets
        if p.pocket.startswith(("voucher:", "card:"))
        and p.amount > 0
        and p.expires_at is not None
        and now >= p.expires_at
    ]


def _write_off(p: Pocket) -> Entry:
    assert p.expires_at is not None
    family, _, ref = p.pocket.partition(":")
    kind = EntryKind.VOUCHER_EXPIRE if family == "voucher" else EntryKind.CARD_EXPIRE
    return Entry(kind, -p.amount, p.pocket, p.expires_at, ref, p.expires_at)


def _frequency_wait(sent: Sequence[int], now: int, fr: FrequencyRule) -> float:
    """Seconds until one more send fits every window (a hint for Retry-After): a minute
    refusal's retry once the minute has passed was refused again by the hour, when that was
    full too.

    A send dated after now (the clock stepped back since) counts in every window until its own
    has passed, so room comes with the first window after the limit-th latest send, not always
    the next one: the hint said "the next minute" and the retry then was refused again, every
    minute for the size of the step.
    """
    latest = sorted(sent, reverse=True)
    minute, hour, day = freq.window_starts(now, fr.tz)
    opens = now
    for limit, start, after in (
        (fr.limits.per_minute, minute, lambda t: freq.window_starts(t, fr.tz)[0] + freq.MINUTE_MS),
        (fr.limits.per_hour, hour, lambda t: freq.next_hour_start(t, fr.tz)),
    ):
        if 0 < limit <= len(latest) and latest[limit - 1] >= start:  # the window is full
            opens = max(opens, after(max(now, latest[limit - 1])))
    inside = [t for t in latest if t > day]
    if 0 < fr.limits.per_day <= len(inside):
        # The day window rolls: room appears when the oldest send counted in it leaves.
        opens = max(opens, inside[fr.limits.per_day - 1] + freq.DAY_MS)
    return max(1.0, (opens - now) / 1000)


def _spent(planned: Sequence[tuple[str, Entry]]) -> int:
    return -sum(e.amount for _m, e in planned)


def refund_share(
    price_class: str | None, state: str, segments: int, segments_submitted: int
) -> tuple[int, int]:
    """(numerator, denominator) of a message's pre-charge given back when it becomes final.

    Domestic (billed on delivery): all of it for failed and expired, none otherwise.
    International (billed per submitted segment): the share of the segments the SMSC never
    accepted, so a 3-part message with 2 parts submitted keeps 2/3 of its charge.
    """
    if price_class is None:
        return 0, 1
    if price_class == DOMESTIC:
        return (1, 1) if state in ("failed", "expired") else (0, 1)
    if segments <= 0:
        return (1, 1) if segments_submitted == 0 else (0, 1)
    return max(0, segments - segments_submitted), segments


def plan_final_refund(
    entries: Sequence[Entry],
    price_class: str | None,
    state: str,
    segments: int,
    segments_submitted: int,
    now: int,
    ref: str,
) -> list[Entry]:
    """The refund entries for a message that just became final (none when nothing is due).

    `entries` are every ledger entry of the message (charges and earlier refunds), so a repeated
    call returns [] for a full refund. A partial refund (international) takes back cash first,
    then cards, then vouchers; a portion whose voucher or card expired meanwhile is void (refund
    immediately followed by an expiry, as `plan_refund` records it).
    """
    num, den = refund_share(price_class, state, segments, segments_submitted)
    if num == 0 or not entries:
        return []
    full = plan_refund([e for e in entries if e.kind not in _VOIDS], now, ref)
    if num >= den:
        return full
    if any(e.kind in _REFUND_KINDS for e in entries):
        return []  # a partial refund is made once, when the message becomes final
    charged = -sum(e.amount for e in entries if e.kind in _SPEND_KINDS)
    left = charged * num // den
    by_pocket: dict[str, list[Entry]] = {}
    for e in full:
        by_pocket.setdefault(e.pocket, []).append(e)

    def order(pocket: str) -> tuple[int, str]:
        return (0 if pocket == "cash" else 1 if pocket.startswith("card:") else 2, pocket)

    out: list[Entry] = []
    for pocket in sorted(by_pocket, key=order):
        if left <= 0:
            break
        refund, *void = by_pocket[pocket]
        take = min(left, refund.amount)
        out.append(Entry(refund.kind, take, pocket, now, ref, refund.expires_at))
        out.extend(Entry(v.kind, -take, pocket, now, ref, v.expires_at) for v in void)
        left -= take
    return out


def refund_due(price_class: str | None, state: str, segments_submitted: int) -> bool:
    """Whether a message that just became final gives its pre-charge back.

    Domestic traffic is billed on delivery: failed and expired messages are refunded, delivered
    and unknown (no receipt in time) are billed. International is billed on submission: refunded
    only when the SMSC never accepted a part. Unbilled messages (no price class) have no charge.
    """
    if price_class is None:
        return False
    if price_class == DOMESTIC:
        return state in ("failed", "expired")
    return state in ("failed", "expired", "unknown", "delivered") and segments_submitted == 0


def low_balance_event(account_id: str, crossing: tuple[int, int], now: int) -> str:
    """The webhook body of a low-balance warning (one per dip under the threshold)."""
    import json

    before, after = crossing
    return json.dumps(
        {
            "event": "balance.low",
            "account": account_id,
            "available_micro": after,
            "available": format_micro(after),
            "previous_micro": before,
            "at": now,
        },
        separators=(",", ":"),
    )
