"""Column lists and row mappers of the rules and billing tables, shared by both engines (their
SELECTs name the same columns in the same order; only the SQL around them differs)."""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

from bridge.domain import ledger
from bridge.domain.admission import DOMESTIC
from bridge.domain.dnc_numbers import sorted_numbers
from bridge.domain.ledger import CHARGE_KINDS, MESSAGE_KINDS, Entry
from bridge.domain.tariffs import BillingError
from bridge.store.base import StoreError
from bridge.store.models import LedgerRow, Sign, Template

SIGN_COLS = (
    "account_id, name, canonical, source, remark, status, reason, flag, created_at, reviewed_at, "
    "updated_at"
)
TEMPLATE_COLS = (
    "code, account_id, kind, name, content, remark, allow_urls, status, reason, created_at, "
    "reviewed_at, revision, updated_at, international"
)
LEDGER_COLS = "id, account_id, kind, amount, pocket, at, ref, expires_at"


def sqlite_marks(cols: str) -> str:
    """The ?-placeholders for every column of `cols` (an INSERT of all of them)."""
    return ",".join("?" * (cols.count(",") + 1))


def pg_marks(cols: str) -> str:
    """The $n placeholders for every column of `cols`."""
    return ",".join(f"${i}" for i in range(1, cols.count(",") + 2))


# Cancelable (both engines): queued and never handed to an SMSC. A part accepted before the
# message came back to the queue (a bind lost), or a submit whose answer never came (released to
# retry, its late acceptance still awaited; or in flight when its process died: the requeue at
# start counts it), may reach the recipient: canceling then would leave half a message, or a
# delivery refunded and its receipt unmatched. A submit the SMSC answered with an error (a
# carrier incident's ESME_RSYSERR) was not taken: cancelable (q_attempts counted it, and a
# campaign retried after a carrier's errors could not be canceled).
NEVER_TRIED = "segments_sent = 0 AND q_unanswered = 0"

# The code a part ends with once its message's validity ran out: why the message was ended while
# it was on a bind (messages.end_error: an opt-out, a disabled account, a deleted template or
# sign, an erasure), else VALIDITY_EXPIRED. {seg}: the name or alias of segments in the UPDATE.
END_ERROR = (
    "COALESCE((SELECT m.end_error FROM messages m WHERE m.id = {seg}.message_id), "
    "'VALIDITY_EXPIRED')"
)

# A do-not-contact entry for one exact number is stored with this mark before it; one without is
# a prefix. Without the mark a listed number also blocked every longer one (countries with
# numbers of several lengths: +491701234567 blocked +4917012345678). Entries imported before the
# mark stay prefixes until their list is imported again.
DNC_EXACT = "="


def dnc_entry_for_number(e164: str) -> str:
    return DNC_EXACT + e164


def number_prefixes(e164: str) -> list[str]:
    """The do-not-contact entries that block this number: every prefix of it (the whole number
    included, as a prefix) and the number itself as an exact entry."""
    # A list comprehension, not a generator unpacked into a list: once per accept (~0.5 µs).
    out = [e164[:n] for n in range(5, len(e164) + 1)]
    out.append(DNC_EXACT + e164)
    return out


class DncEntries:
    """An import's entries, as the store writes them and matches the waiting messages against
    them: its numbers (sorted_numbers: 8 bytes each; a list of ten million held as str entries
    in a list and a frozenset took ~2 GB) marked DNC_EXACT, then its prefixes. Read once from
    the numbers given (an iterator is fine), iterated as often as needed: PostgreSQL's run_tx
    runs a transaction again after a serialization failure."""

    __slots__ = ("numbers", "prefixes")

    def __init__(self, numbers: Iterable[str], prefixes: Iterable[str]) -> None:
        self.numbers = sorted_numbers(numbers)
        self.prefixes = frozenset(prefixes)

    def __len__(self) -> int:
        return len(self.numbers) + len(self.prefixes)

    def __iter__(self) -> Iterator[str]:
        yield from map(dnc_entry_for_number, self.numbers)
        yield from sorted(self.prefixes)

    def __contains__(self, entry: object) -> bool:
        if not isinstance(entry, str):
            return False
        if entry.startswith(DNC_EXACT):
            return entry[len(DNC_EXACT) :] in self.numbers
        return entry in self.prefixes

    def chunks(self, size: int) -> Iterator[list[str]]:
        it = iter(self)
        while chunk := list(islice(it, size)):
            yield chunk


def blocked_ids(rows: Iterable[tuple[str, str]], entries: Container[str]) -> list[str]:
    """The ids of the (id, recipient) rows that do-not-contact `entries` block."""
    return [mid for mid, number in rows if any(p in entries for p in number_prefixes(number))]


def sign_row(r: Sequence[Any]) -> Sign:
    return Sign(*r)


def sign_values(s: Sign) -> tuple[Any, ...]:
    """A sign as the values of SIGN_COLS, in order (the inverse of sign_row)."""
    return (
        s.account_id,
        s.name,
        s.canonical,
        s.source,
        s.remark,
        s.status,
        s.reason,
        s.flag,
        s.created_at,
        s.reviewed_at,
        s.updated_at,
    )


def template_values(t: Template) -> tuple[Any, ...]:
    """A template as the values of TEMPLATE_COLS, in order (the inverse of template_row)."""
    return (
        t.code,
        t.account_id,
        t.kind,
        t.name,
        t.content,
        t.remark,
        bool(t.allow_urls),
        t.status,
        t.reason,
        t.created_at,
        t.reviewed_at,
        t.revision,
        t.updated_at,
        bool(t.international),
    )


def template_row(r: Sequence[Any]) -> Template:
    return Template(
        code=r[0],
        account_id=r[1],
        kind=r[2],
        name=r[3],
        content=r[4],
        remark=r[5],
        allow_urls=bool(r[6]),
        status=r[7],
        reason=r[8],
        created_at=r[9],
        reviewed_at=r[10],
        revision=r[11],
        updated_at=r[12],
        international=bool(r[13]),
    )


def entry_row(r: Sequence[Any]) -> Entry:
    """A ledger row (LEDGER_COLS order) as the domain's Entry."""
    return Entry(r[2], r[3], r[4], r[5], r[6], r[7])


def ledger_row(r: Sequence[Any]) -> LedgerRow:
    return LedgerRow(*r)


def kinds_sql(kinds: Iterable[str]) -> str:
    """`'a','b'` for an SQL IN list of ledger kinds (fixed names, never user input)."""
    return ",".join(f"'{k}'" for k in sorted(kinds))


# The IN lists of the reads of one message's charge (see bridge.domain.ledger.MESSAGE_KINDS).
MESSAGE_KINDS_SQL = kinds_sql(MESSAGE_KINDS)
# The kinds a payment ref is looked up among (append_ledger(once=True)).
PAYMENT_KINDS_SQL = kinds_sql(ledger.PAYMENT_KINDS)
# append_ledger(once=True)'s look-up of the first money in named by a ref ($1/? placeholders
# are the engine's: account_id, then ref).
PAYMENT_SEEN = (
    "SELECT kind, amount FROM ledger WHERE account_id = {} AND ref = {} "
    f"AND kind IN ({PAYMENT_KINDS_SQL}) ORDER BY id LIMIT 1"
)


# A refund payout's ref: the first money entry (in or back out) the account has under it.
REFUND_SEEN = (
    "SELECT kind, amount FROM ledger WHERE account_id = {} AND ref = {} "
    f"AND kind IN ({kinds_sql(ledger.PAYMENT_KINDS | {ledger.EntryKind.REFUND_PAID.value})}) "
    "ORDER BY id LIMIT 1"
)
ACCOUNT_NOT_CLOSED = (
    "the account is not closed: only a closed account's cash is owed back (a close writes it "
    "off as `closed`); nothing was recorded"
)


def plan_refund_paid(
    account_id: str,
    status: str | None,
    seen: Sequence[Any] | None,
    kind_sums: dict[str, int],
    amount: int,
    ref: str,
    now: int,
) -> list[Entry] | None:
    """Store.pay_refund's decision, both engines, from what its transaction read: the account's
    status, the first money entry under `ref` (REFUND_SEEN) and the ledger's sums by kind. The
    entries to append; None for a retry of a payout already recorded (the same ref, kind and
    amount). Refused: NOT_FOUND, ACCOUNT_NOT_CLOSED, PAYMENT_REF_REUSED (the ref names other
    money), REFUND_NOT_OWED (more than is still owed)."""
    if status is None:
        raise StoreError("NOT_FOUND", f"no account {account_id!r}")
    if status != "closed":
        raise StoreError("ACCOUNT_NOT_CLOSED", ACCOUNT_NOT_CLOSED)
    entries = [ledger.Entry(ledger.EntryKind.REFUND_PAID, amount, ledger.POCKET_REFUNDED, now, ref)]
    if already_credited(seen, entries[0]):
        return None
    try:
        return ledger.refund_payment(amount, ledger.refund_position(kind_sums), now, ref)
    except BillingError as exc:
        raise StoreError(exc.code, exc.message) from None


def refuse_unless_open(account_id: str, status: str | None) -> None:
    """append_ledger's refusals, both engines, from the account's status read in the write's
    transaction (None: no such account)."""
    if status is None:
        raise StoreError("NOT_FOUND", f"no account {account_id!r}")
    if status == "closed":
        raise StoreError("ACCOUNT_CLOSED", ledger.CLOSED_ACCOUNT)


def already_credited(seen: Sequence[Any] | None, first: Entry) -> bool:
    """Whether the money in `first` names was credited already (PAYMENT_SEEN's row `seen`): a
    retry, appended nothing. A ref credited with another amount or kind is refused."""
    if seen is None:
        return False
    conflict = ledger.ref_conflict(seen[0], seen[1], first)
    if conflict is not None:
        raise StoreError(ledger.PAYMENT_REF_REUSED, conflict)
    return True


# The low-balance mark (accounts.low_warned_at: the time of the warning of the current dip;
# NULL once the balance is back at or above the threshold, or the threshold changed). Set in
# the transaction that queues the warning; cleared by a credit that ends the dip (the pure
# admission.rearms_low_balance decides) and by a change of the threshold ({}: the engine's
# placeholder of the new threshold in the account's UPDATE, which reads the old value).
LOW_WARNED_SET = "UPDATE accounts SET low_warned_at = {} WHERE id = {}"
LOW_WARNED_READ = (
    "SELECT low_balance_threshold FROM accounts WHERE id = {} AND low_warned_at IS NOT NULL"
)
LOW_WARNED_CLEAR = "UPDATE accounts SET low_warned_at = NULL WHERE id = {}"
LOW_WARNED_ON_THRESHOLD = (
    "low_warned_at = CASE WHEN low_balance_threshold = {} THEN low_warned_at ELSE NULL END"
)


def credited_at(entries: Sequence[Entry]) -> int | None:
    """When `entries` put domestic money in (cash or a voucher), the latest entry's time (the
    instant a voucher's validity is judged at for the re-arm); None when none did, so a debit
    or a card's money never reads the mark."""
    records = ("card:", ledger.POCKET_INVOICE, ledger.POCKET_REFUNDED)
    if not any(e.amount > 0 and not e.pocket.startswith(records) for e in entries):
        return None
    return max(e.at for e in entries)


# Of the accounts a write credited ({}: the engine's list of them), the closed ones: what
# they get (a late refund, a settlement's) is written off at once (admission.close_plan).
CLOSED_AMONG = "SELECT id FROM accounts WHERE status = 'closed' AND id IN ({})"
LEDGER_KIND_SUMS = "SELECT kind, SUM(amount) FROM ledger WHERE account_id = {} GROUP BY kind"


CHARGE_KINDS_SQL = kinds_sql(CHARGE_KINDS)


def tariff_period_sql(boundaries: Sequence[int], *, postgres: bool) -> str:
    """A GROUP BY term numbering the tariff period of m.accepted_at (0, 1, ...; `boundaries`:
    the tariff effective times inside the range read), with its leading comma; empty without
    boundaries, where a bare `0` in GROUP BY would name a column position."""
    cast = "::int" if postgres else ""
    period = "".join(f" + (m.accepted_at >= {int(b)}){cast}" for b in boundaries)
    return f", 0{period}" if period else ""


def voucher_charges_sql(boundaries: Sequence[int], *, postgres: bool) -> str:
    """Store.voucher_charges: what each voucher paid net for an account's domestic messages
    accepted in [$2, $3), per final state and tariff period (`boundaries`: the tariff effective
    times inside, as usage_groups takes them). Rows: (voucher id, first accepted_at, state, net
    micro, expiry). Vouchers that paid nothing net (every spend given back) are left out.
    $n placeholders; SQLite's are ?n."""
    period = tariff_period_sql(boundaries, postgres=postgres)
    sql = (
        "SELECT substr(l.pocket, 9), MIN(m.accepted_at), m.state, -SUM(l.amount), "
        "MAX(l.expires_at) "
        "FROM messages m JOIN ledger l ON l.account_id = m.account_id AND l.ref = m.id "
        "WHERE m.account_id = $1 AND m.accepted_at >= $2 AND m.accepted_at < $3 "
        f"AND m.price_class = '{DOMESTIC}' AND l.kind IN ({CHARGE_KINDS_SQL}) "
        "AND l.pocket LIKE 'voucher:%' "
        f"GROUP BY l.pocket, m.state{period} HAVING SUM(l.amount) < 0 "
        f"ORDER BY l.pocket, m.state{period}"
    )
    return sql if postgres else sql.replace("$", "?")


# A correction (edit_template / edit_sign): only of a rejected submission, and of a template only
# of the revision the correction was made from (two corrections at once: one wins). The review
# starts over: the status and reason the automatic review gave, no operator's decision yet.
_EDIT_TEMPLATE = (
    "UPDATE templates SET kind={0}, name={1}, content={2}, remark={3}, allow_urls={4}, "
    "status={5}, reason={6}, reviewed_at=NULL, revision={7}, updated_at={8}, "
    "international={11} "
    "WHERE code={9} AND account_id={10} AND status='rejected' AND revision={7} - 1"
)
EDIT_TEMPLATE_SQLITE = _EDIT_TEMPLATE.format(*(f"?{i}" for i in range(1, 13)))
EDIT_TEMPLATE_PG = _EDIT_TEMPLATE.format(*(f"${i}" for i in range(1, 13)))
_EDIT_SIGN = (
    "UPDATE signs SET source={0}, remark={1}, status='pending', reason=NULL, flag={2}, "
    "reviewed_at=NULL, updated_at={3} WHERE account_id={4} AND name={5} AND status='rejected'"
)
EDIT_SIGN_SQLITE = _EDIT_SIGN.format(*(f"?{i}" for i in range(1, 7)))
EDIT_SIGN_PG = _EDIT_SIGN.format(*(f"${i}" for i in range(1, 7)))


def edit_template_args(t: Template) -> tuple[Any, ...]:
    """The parameters of EDIT_TEMPLATE_*: `t` is the correction, its revision already counted."""
    return (
        t.kind,
        t.name,
        t.content,
        t.remark,
        bool(t.allow_urls),
        t.status,
        t.reason,
        t.revision,
        t.updated_at,
        t.code,
        t.account_id,
        bool(t.international),
    )


def edit_sign_args(s: Sign) -> tuple[Any, ...]:
    return (s.source, s.remark, s.flag, s.updated_at, s.account_id, s.name)
