"""SQLite side of the sending rules and billing: facts read in the accept transaction, ledger
writes, refunds on final receipts, and the operator/customer tables (signs, templates, opt-outs,
DNC, tariffs, bills). The decisions are in bridge.domain (admission, ledger, settlement): SQL here.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from functools import lru_cache
from itertools import zip_longest
from typing import Any

from bridge import jsonio
from bridge.domain import admission as adm
from bridge.domain.frequency import DAY_MS
from bridge.domain.ledger import Entry
from bridge.domain.lifecycle import STILL_COUNTS_SQL
from bridge.domain.phone import mo_source_forms, mo_source_numbers, reply_destinations
from bridge.domain.senders import held_alone
from bridge.fastinit import maker
from bridge.store import sqlite_dnc, sqlite_erase
from bridge.store import sqlite_ends as ends
from bridge.store.account_rows import ASSIGNMENTS_SQL, senders_of
from bridge.store.base import AccountClosed, StoreError
from bridge.store.models import (
    BillRow,
    DncInfo,
    LedgerRow,
    OptOut,
    Sign,
    TariffRow,
    Template,
)
from bridge.store.rules_rows import (
    CHARGE_KINDS_SQL,
    CLOSED_AMONG,
    DNC_EXACT,
    EDIT_SIGN_SQLITE,
    EDIT_TEMPLATE_SQLITE,
    LEDGER_COLS,
    LEDGER_KIND_SUMS,
    LOW_WARNED_CLEAR,
    LOW_WARNED_READ,
    LOW_WARNED_SET,
    MESSAGE_KINDS_SQL,
    NEVER_TRIED,
    PAYMENT_SEEN,
    REFUND_SEEN,
    SIGN_COLS,
    TEMPLATE_COLS,
    DncEntries,
    already_credited,
    credited_at,
    edit_sign_args,
    edit_template_args,
    entry_row,
    ledger_row,
    number_prefixes,
    plan_refund_paid,
    refuse_unless_open,
    sign_row,
    sign_values,
    sqlite_marks,
    tariff_period_sql,
    template_row,
    template_values,
    voucher_charges_sql,
)

# An `mo` opt-out for a number the customer had already listed (`api`) takes the entry over:
# left `api`, the customer could delete it and message a recipient who replied STOP.
_CLAIM_BY_REPLY = (
    "UPDATE optouts SET source='mo' WHERE account_id=? AND recipient IN ({}) AND source<>'mo'"
)


def _marks(n: int) -> str:
    return ",".join("?" * n)


# -- inside the accept transaction ----------------------------------------------------------------


# Messages that never reached anyone (canceled, ended unsent) are no longer in the history.
_STILL_COUNTS = STILL_COUNTS_SQL.format(m="")
_HISTORY_COND = {
    "verification": "kind='verification' AND sign_name IS :fsign",
    "template": "sign_name IS :fsign AND template=:ftpl",
    "raw": "sign_name IS :fsign AND template IS NULL",
}


# The template's status, or "changed" when its contents are no longer the revision the request
# was rendered from (a process's cached copy of a template corrected since: admission refuses
# TEMPLATE_CHANGED and the send path renders it again).
_TEMPLATE_STATUS = (
    "SELECT CASE WHEN {rev} IS NULL OR revision={rev} THEN status ELSE 'changed' END "
    "FROM templates WHERE code={code} AND account_id=a.id"
)


# The longest recipient whose prefixes `_one_cols` spells in SQL: E.164's 15 digits and "+".
_LONGEST = 16
# Every prefix `number_prefixes` gives a number of 5 to _LONGEST characters, and its exact entry,
# from the one :to argument: SQLite's substr of a prefix longer than the number is the number
# (repeated in the list: no harm). Session 50: 12 named arguments bound per accept (a str made
# for each name by the sqlite3 module) and the list built in Python, for a probe that runs only
# with a list loaded; the expressions cost nothing without one (the CASE skips them).
_PREFIXES_SQL = ", ".join(
    [f"substr(:to, 1, {n})" for n in range(5, _LONGEST + 1)] + [f"'{DNC_EXACT}' || :to"]
)


# The account's own facts: read alone (`_one_sql`) they lead the statement; read with the key
# (`sqlite._authorize`) they come from the account that statement reads anyway
# (`one_facts_of`): session 51, 4 columns fewer for the sqlite3 module to describe and
# convert inside the write lock.
_ACCOUNT_FACTS = "a.daily_quota, a.kind, a.low_balance_threshold, a.low_warned_at IS NOT NULL, "


@lru_cache(maxsize=64)
def _one_cols(history: str | None) -> str:
    """Everything else a one-recipient send needs, as the columns of one statement over the
    account `a` (the usual request): read alone (`_one_sql`, after `_ACCOUNT_FACTS`) or with
    the key (`sqlite._authorize`)."""
    hist = (
        "(SELECT json_group_array(accepted_at) FROM messages WHERE account_id=a.id "
        f"AND recipient=:to AND accepted_at>:since AND {_HISTORY_COND[history]} "
        f"AND {_STILL_COUNTS})"
        if history is not None
        else "NULL"
    )
    # `:reads` 0: today's count and the pockets are not read, the accept has them from an
    # earlier accept of its write batch (HeldSums.base); CASE skips the subqueries whole.
    cols = (
        "CASE WHEN :reads THEN "
        "(SELECT messages FROM daily_counts WHERE account_id=a.id AND day=:day) END",
        "(SELECT status FROM signs WHERE account_id=a.id AND name=:sign)",
        f"({_TEMPLATE_STATUS.format(code=':tpl', rev=':trev')})",
        "EXISTS(SELECT 1 FROM optouts WHERE account_id=a.id AND recipient=:to)",
        # Only with a list loaded: one probe per prefix of the number (11 for a Chinese
        # mobile) cost 5.7 of this statement's 15.6 µs with no list at all.
        "CASE WHEN EXISTS(SELECT 1 FROM dnc_entries) THEN "
        f"EXISTS(SELECT 1 FROM dnc_entries WHERE prefix IN ({_PREFIXES_SQL})) ELSE 0 END",
        hist,
        "CASE WHEN :pockets AND :reads THEN "
        "(SELECT json_group_array(json_array(pocket, amount, expires_at)) FROM pockets "
        "WHERE account_id=a.id) END",
    )
    # Each named (`AS`): the sqlite3 module makes a str of every column's name at each
    # execution (the cursor's description), and an expression's name is its text, ~1,300
    # characters here (session 58).
    return ", ".join(f"{col} AS facts_{i}" for i, col in enumerate(cols))


# The place in `_one_cols`' row of the opted-out value, which `key_cols`' row gives with the
# blocked one as one number (opted out 1, blocked 2), at both places: the caller splits it when
# not 0, `opted, blocked = flags & 1, flags >> 1` (each 0 or 1, as `_one_cols` gives them).
KEY_FLAGS = 3
# The history kind each `_one_cols` text was made for (`key_cols` takes the text), and the
# text of each kind (`one_facts_values`: a dict's lookup, not the lru_cache's call).
_KIND_OF_COLS = {_one_cols(kind): kind for kind in (None, *_HISTORY_COND)}
_COLS_OF = {kind: cols for cols, kind in _KIND_OF_COLS.items()}
# The values of `_one_cols`' row, in its order, that `key_cols` may leave out.
_ONE_WIDTH = 7


@lru_cache(maxsize=256)
def key_cols(
    cols: str, sign: bool, template: bool, reads: bool, pockets: bool
) -> tuple[str, tuple[int, ...]]:
    """The columns of `_one_cols` (`cols`, the text `one_facts_values` gave) that the key's
    statement reads (`sqlite._authorize`), and where each of `_one_cols`' seven values is in
    that statement's row (its head column first, then these): only the columns whose value the
    accept cannot know before the lock. A column whose value is NULL whatever the store holds is
    left out, its place the one after the row's last (the caller appends a None there): the
    sign's status without a sign (`name=NULL` finds none), the template's without a template,
    the history without a frequency rule over the number, today's count and the pockets when
    not read (`reads` false: an earlier accept of the batch read them, HeldSums.base) and the
    pockets when not billed. Each column cost ~1.5 k instructions of the write lock as a NULL
    (the sqlite3 module describes and converts it, 3.11's `fetchone` hands the GIL over around
    its type), and a subquery's cursor more (session 62). The values are those of `_one_cols`'
    columns: a subquery under a CASE that is true, or a NULL the CASE or the `=NULL` gave; the
    opted-out and blocked ones in one column (`KEY_FLAGS`)."""
    kind = _KIND_OF_COLS[cols]
    chosen: list[tuple[int, str]] = []
    if reads:
        chosen.append((0, "(SELECT messages FROM daily_counts WHERE account_id=a.id AND day=:day)"))
    if sign:
        chosen.append((1, "(SELECT status FROM signs WHERE account_id=a.id AND name=:sign)"))
    if template:
        chosen.append((2, f"({_TEMPLATE_STATUS.format(code=':tpl', rev=':trev')})"))
    # Opted out and blocked in one column, 1 and 2 (`KEY_FLAGS`: the caller splits it).
    chosen.append(
        (
            3,
            "EXISTS(SELECT 1 FROM optouts WHERE account_id=a.id AND recipient=:to) + 2 * "
            "(CASE WHEN EXISTS(SELECT 1 FROM dnc_entries) THEN "
            f"EXISTS(SELECT 1 FROM dnc_entries WHERE prefix IN ({_PREFIXES_SQL})) ELSE 0 END)",
        )
    )
    if kind is not None:
        chosen.append(
            (
                5,
                "(SELECT json_group_array(accepted_at) FROM messages WHERE account_id=a.id "
                f"AND recipient=:to AND accepted_at>:since AND {_HISTORY_COND[kind]} "
                f"AND {_STILL_COUNTS})",
            )
        )
    if reads and pockets:
        chosen.append(
            (
                6,
                "(SELECT json_group_array(json_array(pocket, amount, expires_at)) FROM pockets "
                "WHERE account_id=a.id)",
            )
        )
    places = [len(chosen) + 1] * _ONE_WIDTH  # absent: the None after the row's last column
    for at, (value, _col) in enumerate(chosen, 1):
        places[value] = at
    places[KEY_FLAGS + 1] = places[KEY_FLAGS]  # blocked: the flags too
    # Named (`AS`) as `_one_cols` names its own (session 58).
    return ", ".join(f"{col} AS facts_{v}" for v, col in chosen), tuple(places)


# Appended to a key statement's row: the value of the facts' columns it leaves out.
_ROW_END = (None,)


def key_facts(row: tuple[Any, ...], at: Callable[[Any], Any]) -> list[Any]:
    """`_one_cols`' seven values from a key statement's `row`, `at` the getter of `key_cols`'
    places: the columns left out None, the opted-out and blocked flags split (`KEY_FLAGS`)."""
    facts = [*at(row + _ROW_END)]
    flags = facts[KEY_FLAGS]
    if flags:
        facts[KEY_FLAGS] = flags & 1
        facts[KEY_FLAGS + 1] = flags >> 1
    return facts


@lru_cache(maxsize=64)
def _one_sql(cols: str) -> str:
    return f"SELECT {_ACCOUNT_FACTS}{cols} FROM accounts a WHERE a.id=:acc"


# The named arguments of `_one_cols` (and `_one_sql`'s `:acc`), in the order `one_facts_values`
# gives their values: the history's three (`since`, `fsign`, `ftpl`) are None, and absent from
# the statement, when the send has no frequency history to read.
FACTS_NAMES = (
    "day",
    "sign",
    "tpl",
    "trev",
    "to",
    "acc",
    "pockets",
    "reads",
    "since",
    "fsign",
    "ftpl",
)
_HISTORY_NAMES = frozenset(("since", "fsign", "ftpl"))


def one_facts_values(
    account_id: str, rules: adm.Rules, recipients: tuple[str, ...], now: int
) -> tuple[str, tuple[Any, ...]] | None:
    """`one_facts_query`'s columns and its arguments' values as a tuple in `FACTS_NAMES`' order
    (no dict: session 58, the accept's key statement takes them by position, `sqlite._KeyFacts`),
    or None for the same sends."""
    if len(recipients) != 1 or rules.more_signs:
        return None
    number = recipients[0]
    if not 5 <= len(number) <= _LONGEST:
        return None
    fr = rules.frequency
    kind = since = fsign = ftpl = None
    if fr is not None and number in fr.numbers:
        kind = fr.kind
        # One number limited (the usual send): its sign without the list and dict of sign_of.
        if len(fr.numbers) == 1 and len(fr.signs) <= 1:
            fsign = fr.signs[0] if fr.signs else fr.sign
        else:
            fsign = dict(fr.sign_of())[number]
        since = now - DAY_MS
        ftpl = fr.template
    return _COLS_OF[kind], (
        adm.day_key(now, rules.tz),
        rules.sign_name,
        rules.template_code,
        rules.template_revision,
        number,
        account_id,
        # An int, not a bool: the sqlite3 module binds an exact int without its adapters.
        1 if rules.billing and rules.charges else 0,
        1,  # reads: today's count and the pockets (`_one_cols`)
        since,
        fsign,
        ftpl,
    )


def one_facts_query(
    account_id: str, rules: adm.Rules, recipients: tuple[str, ...], now: int
) -> tuple[str, dict[str, Any]] | None:
    """The columns (over the account `a`) and named arguments that read a one-recipient send's
    facts in one statement; None for a send `read_facts` reads otherwise (several recipients,
    or signs, or a number outside the lengths `_one_cols` spells the prefixes of).
    `facts_of_row` reads the row those columns give."""
    got = one_facts_values(account_id, rules, recipients, now)
    return None if got is None else facts_query(got)


def facts_query(got: tuple[str, tuple[Any, ...]]) -> tuple[str, dict[str, Any]]:
    """`one_facts_values`' answer as `one_facts_query`'s: the arguments by name, the history's
    only when the columns read it."""
    cols, values = got
    args = dict(zip(FACTS_NAMES, values, strict=True))
    if values[8] is None:  # no history read: no `since`, `fsign`, `ftpl` in the statement
        for name in _HISTORY_NAMES:
            del args[name]
    return cols, args


_NOBODY: frozenset[str] = frozenset()
# The values a one-recipient accept builds inside the write lock, by `maker`'s functions rather
# than the classes' calls (the same instances, ~1.5 k instructions less each: session 58).
_new_facts = maker(adm.Facts)
_new_pocket = maker(adm.Pocket)


def facts_of_row(number: str, row: Sequence[Any] | None) -> adm.Facts:
    """The facts of a one-recipient send from the columns of `_one_sql` (None: the account is
    gone)."""
    if row is None:
        row = (0, "prepaid", 0, 0, 0, None, None, 0, 0, None, None)
    return one_facts_of(number, row[0], row[1], row[2], bool(row[3]), row[4:])


def one_facts_of(
    number: str,
    quota: int,
    kind: str,
    threshold: int,
    warned: bool,
    row: Sequence[Any],
    day_held: int = 0,
    held: HeldSums | None = None,
) -> adm.Facts:
    """The facts of a one-recipient send from the account's own (`_ACCOUNT_FACTS`: its row's
    values, or those of the account the key's statement read, `sqlite._authorize`) and the
    columns of `one_facts_query`; moved by what earlier accepts of the write batch hold: today's
    count by `day_held`, the pockets by `held`'s (given when the query read them). The pockets'
    column is its JSON text, or the rows parsed from it (`HeldSums.base` keeps them parsed:
    the batch's later accepts of the account do not parse them again, session 57); neither is
    changed."""
    day_count, sign, template, opted, blocked, hist, pockets = row
    if not pockets:
        read = []
    else:
        if type(pockets) is str:  # the column's JSON; parsed already when a batch's base
            pockets = jsonio.loads(pockets)
        read = [_new_pocket(*p) for p in pockets] if held is None else held_pockets(pockets, held)
    # By position, in the class's field order (held by tests/unit/test_session51_positional.py):
    # a frozen class called with keywords gets them as a dict its init unpacks again, ~500
    # instructions a field, and this runs in every one-recipient accept inside the write lock.
    return _new_facts(
        (number,),  # recipients
        sign,  # sign_status
        {},  # more_sign_status (its default's dict)
        template,  # template_status
        frozenset((number,)) if opted else _NOBODY,  # opted_out
        frozenset((number,)) if blocked else _NOBODY,  # blocked
        # history: "[]" (nothing sent in the window, the usual) without a parse.
        ({number: []} if hist == "[]" else {number: jsonio.loads(hist)}) if hist else {},
        (day_count or 0) + day_held,  # day_count
        quota,  # daily_quota
        kind,  # account_kind
        threshold,  # low_balance_threshold
        warned,  # low_warned
        read,  # pockets
    )


def decide_one_of(
    one: adm.OneSend,
    quota: int,
    kind: str,
    threshold: int,
    warned: bool,
    row: Sequence[Any],
    day_held: int = 0,
    held: HeldSums | None = None,
) -> adm.Plan | None:
    """`adm.decide_one` over what `one_facts_of` takes (the same arguments, `one` for the
    number): the Plan `decide` gives the `Facts` `one_facts_of` builds, or None when `decide`
    must answer. Neither the Facts nor its Pockets are built, nor the history parsed: a history
    other than "[]" (nothing sent in the window) and pockets other than a cash pocket beside
    pockets at 0 (with the held sums: none, or the cash one's) go to `decide`. Held equal by
    tests/unit/test_admission_one.py (session 61).

    Pockets at 0 beside the cash one: pocket rows are never deleted, so an account that once
    held a voucher or a card keeps it at 0 for ever, and every later accept went to `decide`
    (r1 noticed): `adm.lone_cash` reads them, as PostgreSQL's accept does."""
    day_count, sign, template, opted, blocked, hist, pockets = row
    cash = None
    if pockets:
        if type(pockets) is str:
            pockets = jsonio.loads(pockets)
        if len(pockets) == 1:  # the usual: inline, a call less in the write lock (~0.6 k)
            name, cash, _expires = pockets[0]
            if name != "cash":
                cash = None
        else:
            cash = adm.lone_cash(pockets)
        if cash is not None and held is not None and held.pockets:
            sums = held.pockets
            moved = sums.get("cash")
            cash = None if moved is None or len(sums) != 1 else cash + moved[0]
    return adm.decide_one(
        one,
        sign,
        template,
        bool(opted or blocked),
        bool(hist) and hist != "[]",
        (day_count or 0) + day_held,
        quota,
        kind,
        threshold,
        warned,
        cash,
    )


def read_one(c: sqlite3.Connection, query: tuple[str, dict[str, Any]], number: str) -> adm.Facts:
    """The facts of a one-recipient send, `query` as `one_facts_query` made it."""
    cols, args = query
    return facts_of_row(number, c.execute(_one_sql(cols), args).fetchone())


def read_facts(
    c: sqlite3.Connection,
    account_id: str,
    rules: adm.Rules,
    recipients: tuple[str, ...],
    now: int,
) -> adm.Facts:
    one = one_facts_query(account_id, rules, recipients, now)
    if one is not None:
        return read_one(c, one, recipients[0])
    day = adm.day_key(now, rules.tz)
    # The account's live settings, today's count and the two statuses in one statement.
    acc = c.execute(
        "SELECT a.daily_quota, a.kind, a.low_balance_threshold, a.low_warned_at IS NOT NULL, "
        "(SELECT messages FROM daily_counts WHERE account_id=a.id AND day=?), "
        "(SELECT status FROM signs WHERE account_id=a.id AND name=?), "
        f"({_TEMPLATE_STATUS.format(code='?', rev='?')}) "
        "FROM accounts a WHERE a.id=?",
        (
            day,
            rules.sign_name,
            rules.template_revision,
            rules.template_revision,
            rules.template_code,
            account_id,
        ),
    ).fetchone()
    quota, kind, threshold, warned, day_count, sign_status, template_status = acc or (
        0,
        "prepaid",
        0,
        0,
        0,
        None,
        None,
    )
    more: dict[str, str | None] = {}
    for name in rules.more_signs:
        row = c.execute(
            "SELECT status FROM signs WHERE account_id=? AND name=?", (account_id, name)
        ).fetchone()
        more[name] = row[0] if row else None
    # Opt-outs and do-not-contact prefixes of every recipient, one statement per chunk.
    opted: set[str] = set()
    matched: set[str] = set()
    prefixes = sorted({p for n in recipients for p in number_prefixes(n)})
    for nums, pres in zip_longest(_chunks(recipients, 400), _chunks(prefixes, 400), fillvalue=()):
        for which, value in c.execute(
            f"SELECT 1, recipient FROM optouts WHERE account_id=? AND recipient IN "
            f"({_marks(len(nums))}) UNION ALL "
            f"SELECT 2, prefix FROM dnc_entries WHERE prefix IN ({_marks(len(pres))})",
            (account_id, *nums, *pres),
        ):
            (opted if which == 1 else matched).add(value)
    blocked = (
        {n for n in recipients if any(p in matched for p in number_prefixes(n))}
        if matched
        else set()
    )
    history: dict[str, list[int]] = {}
    fr = rules.frequency
    if fr is not None and fr.numbers:
        extra: tuple[str | None, ...]
        if fr.kind == "verification":
            cond, extra = "kind='verification' AND sign_name IS ?", ()
        elif fr.kind == "template":
            cond, extra = "sign_name IS ? AND template=?", (fr.template,)
        else:
            cond, extra = "sign_name IS ? AND template IS NULL", ()
        sql = (
            "SELECT accepted_at FROM messages WHERE account_id=? AND recipient=? "
            f"AND accepted_at>? AND {cond} AND {_STILL_COUNTS}"
        )
        for number, sign in fr.sign_of():
            history[number] = [
                r[0] for r in c.execute(sql, (account_id, number, now - DAY_MS, sign, *extra))
            ]
    pockets: list[adm.Pocket] = []
    if rules.billing and rules.charges:
        pockets = read_pockets(c, account_id)
    return adm.Facts(
        recipients=recipients,
        sign_status=sign_status,
        more_sign_status=more,
        template_status=template_status,
        opted_out=frozenset(opted),
        blocked=frozenset(blocked),
        history=history,
        day_count=day_count or 0,
        daily_quota=quota,
        account_kind=kind,
        low_balance_threshold=threshold,
        low_warned=bool(warned),
        pockets=pockets,
    )


class HeldSums:
    """An account's running sums that the accepts of one write batch moved, written once at the
    batch's end (`write_held`) instead of by each accept (session 53): today's count by day and
    the pockets' net amounts, each with the expiry its upsert keeps (the first one given), as
    [amount, expiry] lists changed in place (no value built per accept)."""

    __slots__ = ("base", "days", "pockets")

    def __init__(self) -> None:
        self.days: dict[str, int] = {}
        self.pockets: dict[str, list[Any]] = {}
        # What an accept of the batch read of the account's stored sums (the day, its count
        # column and the pockets' rows parsed from the JSON column of `_one_cols`, None when not
        # read), which
        # nothing but `write_held` writes within the batch, and that empties `held`: the
        # account's later accepts of the batch take them from here, not the store (session 55).
        self.base: tuple[str | None, Any, Any] | None = None


def hold_plan(held: dict[Any, Any], account_id: str, plan: adm.Plan, count: int) -> None:
    """An accepted `plan`'s daily count (`count` messages) and pocket sums, added to the
    account's in `held` (the runner's: written before any other job and at COMMIT); its ledger
    rows are the accept's own (`write_ledger`)."""
    sums = held.get(account_id)
    if sums is None:
        sums = held[account_id] = HeldSums()
    days = sums.days
    days[plan.day] = days.get(plan.day, 0) + count
    pockets = sums.pockets
    for _m, e in plan.entries:
        sum_ = pockets.get(e.pocket)
        if sum_ is None:
            pockets[e.pocket] = [e.amount, e.expires_at]
        else:
            sum_[0] += e.amount
            if sum_[1] is None:  # as the upsert: the kept expiry, else the entry's
                sum_[1] = e.expires_at


def hold_cash(held: dict[Any, Any], account_id: str, day: str, count: int, amount: int) -> None:
    """`hold_plan` of a plan whose one entry moves the cash pocket by `amount` (no expiry): the
    same sums, without the loop over its entries (session 61)."""
    sums = held.get(account_id)
    if sums is None:
        sums = held[account_id] = HeldSums()
    days = sums.days
    days[day] = days.get(day, 0) + count
    sum_ = sums.pockets.get("cash")
    if sum_ is None:
        sums.pockets["cash"] = [amount, None]
    else:
        sum_[0] += amount


def write_held(c: sqlite3.Connection, held: dict[Any, Any]) -> None:
    """The sums `hold_plan` gathered, written: an upsert of each daily count and pocket (the
    pockets' as `append_entries` writes them), each kind in one call for every account of the
    batch. Why one call: with many accounts sending, a batch's accepts are of as many accounts,
    and a call of each kind per account (an executemany of its one day, an execute of each
    pocket) was ~1.5-2.5 k instructions more of the write lock per accept and account than the
    rows' own (session 56). Both tables are WITHOUT ROWID: the order of the upserts changes
    nothing stored."""
    days: list[tuple[Any, ...]] = []
    cash: list[tuple[Any, ...]] = []
    expiring: list[tuple[Any, ...]] = []
    for account_id, sums in held.items():
        for day, n in sums.days.items():
            days.append((account_id, day, n))
        for p, (amt, exp) in sums.pockets.items():
            if exp is None:  # cash: its NULL in the text (sqlite_binds)
                cash.append((account_id, p, amt))
            else:
                expiring.append((account_id, p, amt, exp))
    if days:
        c.executemany(_DAY_COUNT_ADD, days)
    if cash:
        c.executemany(_POCKET_ONE_NO_EXPIRY, cash)
    if expiring:
        c.executemany(_POCKET_ONE, expiring)


_DAY_COUNT_ADD = (
    "INSERT INTO daily_counts (account_id, day, messages) VALUES (?,?,?) "
    "ON CONFLICT (account_id, day) DO UPDATE SET messages=messages+excluded.messages"
)
_POCKET_ONE = (
    "INSERT INTO pockets (account_id, pocket, amount, expires_at) "
    "VALUES (?,?,?,?) ON CONFLICT (account_id, pocket) DO UPDATE SET "
    "amount=amount+excluded.amount, "
    "expires_at=COALESCE(pockets.expires_at, excluded.expires_at)"
)


def held_pockets(read: Sequence[Sequence[Any]], sums: HeldSums) -> list[adm.Pocket]:
    """The pockets a read of (pocket, amount, expiry) rows finds once the held sums are written
    (by name, as the reads order them)."""
    held = sums.pockets
    out = []
    moved = 0
    for name, amount, expires in read:
        sum_ = held.get(name)
        if sum_ is not None:
            moved += 1
            amount += sum_[0]
            if expires is None:
                expires = sum_[1]
        out.append(_new_pocket(name, amount, expires))
    if moved < len(held):  # a pocket the held sums make (no row yet)
        names = {p.pocket for p in out}
        out.extend(adm.Pocket(n, a, e) for n, (a, e) in held.items() if n not in names)
        out.sort(key=lambda p: p.pocket)
    return out


def write_ledger(c: sqlite3.Cursor, account_id: str, plan: adm.Plan) -> None:
    """The ledger rows of `plan` (their sums held: `hold_plan`)."""
    if len(plan.entries) == 1:
        e = plan.entries[0][1]
        if e.expires_at is None:  # a cash charge: the NULL in the text (sqlite_binds)
            c.execute(
                LEDGER_ONE_NO_EXPIRY, (account_id, str(e.kind), e.amount, e.pocket, e.at, e.ref)
            )
            return
    c.executemany(
        "INSERT INTO ledger (account_id, kind, amount, pocket, at, ref, expires_at) "
        "VALUES (?,?,?,?,?,?,?)",
        [
            (account_id, str(e.kind), e.amount, e.pocket, e.at, e.ref, e.expires_at)
            for _m, e in plan.entries
        ],
    )


_LEDGER_ROW = (
    "INSERT INTO ledger (account_id, kind, amount, pocket, at, ref, expires_at) "
    "VALUES (?,?,?,?,?,?,?)"
)


def ledger_rows(account_id: str, plan: adm.Plan) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    """`write_ledger`'s rows of `plan` as (statement, values) pairs, in its order, for an
    accept's rows held to its batch's end (`sqlite_rows`, session 63): the same values stored
    (an entry without an expiry has its NULL in the text, as `write_ledger` writes a lone one;
    bound, as it binds them in a plan of several, it is the same NULL)."""
    return tuple(
        (LEDGER_ONE_NO_EXPIRY, (account_id, str(e.kind), e.amount, e.pocket, e.at, e.ref))
        if e.expires_at is None
        else (
            _LEDGER_ROW,
            (account_id, str(e.kind), e.amount, e.pocket, e.at, e.ref, e.expires_at),
        )
        for _m, e in plan.entries
    )


def read_pockets(c: sqlite3.Connection, account_id: str) -> list[adm.Pocket]:
    return [
        adm.Pocket(r[0], r[1], r[2])
        for r in c.execute(
            "SELECT pocket, amount, expires_at FROM pockets WHERE account_id=?", (account_id,)
        )
    ]


# One entry without an expiry (a cash charge, the usual accept's): as below, the NULL written.
LEDGER_ONE_NO_EXPIRY = (
    "INSERT INTO ledger (account_id, kind, amount, pocket, at, ref, expires_at) "
    "VALUES (?,?,?,?,?,?,NULL)"
)
# A cash charge (the usual accept's): its kind and pocket in the text as well.
LEDGER_CASH_CHARGE = (
    "INSERT INTO ledger (account_id, kind, amount, pocket, at, ref, expires_at) "
    "VALUES (?,'charge',?,'cash',?,?,NULL)"
)
_POCKET_ONE_NO_EXPIRY = (
    "INSERT INTO pockets (account_id, pocket, amount, expires_at) VALUES (?,?,?,NULL) "
    "ON CONFLICT (account_id, pocket) DO UPDATE SET amount=amount+excluded.amount, "
    "expires_at=COALESCE(pockets.expires_at, excluded.expires_at)"
)


def append_entries(
    c: sqlite3.Connection | sqlite3.Cursor, account_id: str, entries: Sequence[Entry]
) -> None:
    """Append to the ledger and move the running pocket sums in the same transaction."""
    if len(entries) == 1:  # the usual charge: two plain statements
        e = entries[0]
        if e.expires_at is None:  # cash: the NULL in the text, not bound (sqlite_binds)
            c.execute(
                LEDGER_ONE_NO_EXPIRY, (account_id, str(e.kind), e.amount, e.pocket, e.at, e.ref)
            )
            c.execute(_POCKET_ONE_NO_EXPIRY, (account_id, e.pocket, e.amount))
            return
        c.execute(
            "INSERT INTO ledger (account_id, kind, amount, pocket, at, ref, expires_at) "
            "VALUES (?,?,?,?,?,?,?)",
            (account_id, str(e.kind), e.amount, e.pocket, e.at, e.ref, e.expires_at),
        )
        c.execute(
            "INSERT INTO pockets (account_id, pocket, amount, expires_at) VALUES (?,?,?,?) "
            "ON CONFLICT (account_id, pocket) DO UPDATE SET amount=amount+excluded.amount, "
            "expires_at=COALESCE(pockets.expires_at, excluded.expires_at)",
            (account_id, e.pocket, e.amount, e.expires_at),
        )
        return
    c.executemany(
        "INSERT INTO ledger (account_id, kind, amount, pocket, at, ref, expires_at) "
        "VALUES (?,?,?,?,?,?,?)",
        [(account_id, str(e.kind), e.amount, e.pocket, e.at, e.ref, e.expires_at) for e in entries],
    )
    sums: dict[str, tuple[int, int | None]] = {}
    for e in entries:
        old = sums.get(e.pocket, (0, e.expires_at))
        sums[e.pocket] = (old[0] + e.amount, old[1] if old[1] is not None else e.expires_at)
    c.executemany(
        "INSERT INTO pockets (account_id, pocket, amount, expires_at) VALUES (?,?,?,?) "
        "ON CONFLICT (account_id, pocket) DO UPDATE SET amount=amount+excluded.amount, "
        "expires_at=COALESCE(pockets.expires_at, excluded.expires_at)",
        [(account_id, p, amt, exp) for p, (amt, exp) in sums.items()],
    )


def mark_low_warned(c: sqlite3.Connection, account_id: str, now: int) -> None:
    """The account warned of its low balance, in the warning's transaction."""
    c.execute(LOW_WARNED_SET.format("?", "?"), (now, account_id))


def rearm_low_balance(c: sqlite3.Connection, account_id: str, entries: Sequence[Entry]) -> None:
    """After a credit, in its transaction: clear the low-balance mark when the balance is back
    at or above the threshold (one statement, none for an account that is not marked)."""
    at = credited_at(entries)
    if at is None:
        return
    row = c.execute(LOW_WARNED_READ.format("?"), (account_id,)).fetchone()
    if row is not None and adm.rearms_low_balance(read_pockets(c, account_id), row[0], at):
        c.execute(LOW_WARNED_CLEAR.format("?"), (account_id,))


def write_off_closed(c: sqlite3.Connection, account_ids: Collection[str], now: int) -> int:
    """Empty the pockets of those of `account_ids` that are closed (admission.close_plan), in
    the transaction that credited them: a message still on a bind at the close that fails later
    is refunded, and a month settled after the close refunds its pre-charge, to an account that
    can spend nothing. Entries written."""
    written = 0
    for chunk in _chunks(sorted(account_ids), 400):
        sql = CLOSED_AMONG.format(_marks(len(chunk)))
        for (account_id,) in c.execute(sql, chunk).fetchall():
            entries = adm.close_plan(read_pockets(c, account_id), now)
            if entries:
                append_entries(c, account_id, entries)
                written += len(entries)
    return written


# -- refunds when a message ends unbilled ----------------------------------------------------------


def refund_finals(
    c: sqlite3.Connection, finals: Iterable[tuple[str, str, str, Any, int, int]], now: int
) -> int:
    """finals: (account_id, message_id, final state, price_class, segments_sent, segments).

    Returns the number of messages refunded (fully or, international, for unsent parts)."""
    done = 0
    credited: set[str] = set()
    for account_id, mid, state, price_class, sent, segments in finals:
        if adm.refund_share(price_class, state, segments, sent)[0] == 0:
            continue
        rows = c.execute(
            f"SELECT {LEDGER_COLS} FROM ledger WHERE account_id=? AND ref=? "
            f"AND kind IN ({MESSAGE_KINDS_SQL})",
            (account_id, mid),
        ).fetchall()
        entries = [entry_row(r) for r in rows]
        refund = adm.plan_final_refund(entries, price_class, state, segments, sent, now, mid)
        if refund:
            append_entries(c, account_id, refund)
            credited.add(account_id)
            done += 1
    if credited:
        write_off_closed(c, credited, now)
    return done


def _chunks(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _filters(account_id: str | None, status: str | None) -> tuple[str, list[Any]]:
    """The WHERE clause of the review lists: by account, by status, both or neither."""
    where, args = ["1=1"], []
    for col, value in (("account_id", account_id), ("status", status)):
        if value is not None:
            where.append(f"{col}=?")
            args.append(value)
    return " AND ".join(where), args


class RulesStoreMixin:
    """The SqliteStore methods for rules and billing (self._runner is the store's runner)."""

    _runner: Any

    # -- signs -------------------------------------------------------------------------------------

    async def add_sign(self, sign: Sign) -> None:
        def job(c: sqlite3.Connection) -> None:
            try:
                c.execute(
                    f"INSERT INTO signs ({SIGN_COLS}) VALUES ({sqlite_marks(SIGN_COLS)})",
                    sign_values(sign),
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(
                    "SIGN_NAME_EXISTS", f"name: {sign.name!r} is already registered by you"
                ) from exc

        await self._runner.write(job)

    async def get_sign(self, account_id: str, name: str) -> Sign | None:
        def job(c: sqlite3.Connection) -> Sign | None:
            r = c.execute(
                f"SELECT {SIGN_COLS} FROM signs WHERE account_id=? AND name=?", (account_id, name)
            ).fetchone()
            return sign_row(r) if r else None

        return await self._runner.read(job)

    async def list_signs(
        self, account_id: str | None = None, status: str | None = None, limit: int = 500
    ) -> list[Sign]:
        def job(c: sqlite3.Connection) -> list[Sign]:
            where, args = _filters(account_id, status)
            sql = f"SELECT {SIGN_COLS} FROM signs WHERE {where} "
            sql += "ORDER BY created_at, account_id, name LIMIT ?"
            return [sign_row(r) for r in c.execute(sql, (*args, limit))]

        return await self._runner.read(job)

    async def review_sign(
        self, account_id: str, name: str, status: str, reason: str | None, now: int
    ) -> Sign | None:
        pending: list[int] = []  # ends that go on in chunks of their own (sqlite_ends)

        def job(c: sqlite3.Connection) -> Sign | None:
            c.execute(
                "UPDATE signs SET status=?, reason=?, reviewed_at=? WHERE account_id=? AND name=?",
                (status, reason, now, account_id, name),
            )
            if status == "rejected":  # only approved signs are sent: what waits ends unsent
                ends.start(c, account_id, "sign", name, "SIGN_REJECTED", now, pending)
            r = c.execute(
                f"SELECT {SIGN_COLS} FROM signs WHERE account_id=? AND name=?", (account_id, name)
            ).fetchone()
            return sign_row(r) if r else None

        sign, _more = await ends.run(self._runner.write, job, pending, now)
        return sign

    async def edit_sign(self, sign: Sign) -> bool:
        def job(c: sqlite3.Connection) -> bool:
            return bool(c.execute(EDIT_SIGN_SQLITE, edit_sign_args(sign)).rowcount)

        return await self._runner.write(job)

    async def delete_sign(self, account_id: str, name: str, now: int) -> int | None:
        pending: list[int] = []  # ends that go on in chunks of their own (sqlite_ends)

        def job(c: sqlite3.Connection) -> int | None:
            gone = c.execute(
                "DELETE FROM signs WHERE account_id=? AND name=?", (account_id, name)
            ).rowcount
            if not gone:
                return None
            return ends.start(c, account_id, "sign", name, "SIGN_DELETED", now, pending)

        ended, more = await ends.run(self._runner.write, job, pending, now)
        return None if ended is None else ended + more

    # -- templates ---------------------------------------------------------------------------------

    async def add_template(self, t: Template) -> None:
        def job(c: sqlite3.Connection) -> None:
            c.execute(
                f"INSERT INTO templates ({TEMPLATE_COLS}) VALUES ({sqlite_marks(TEMPLATE_COLS)})",
                template_values(t),
            )

        await self._runner.write(job)

    async def get_template(self, code: str) -> Template | None:
        def job(c: sqlite3.Connection) -> Template | None:
            r = c.execute(f"SELECT {TEMPLATE_COLS} FROM templates WHERE code=?", (code,)).fetchone()
            return template_row(r) if r else None

        return await self._runner.read(job)

    async def list_templates(
        self, account_id: str | None = None, status: str | None = None, limit: int = 500
    ) -> list[Template]:
        def job(c: sqlite3.Connection) -> list[Template]:
            where, args = _filters(account_id, status)
            sql = f"SELECT {TEMPLATE_COLS} FROM templates WHERE {where} ORDER BY created_at, code "
            sql += "LIMIT ?"
            return [template_row(r) for r in c.execute(sql, (*args, limit))]

        return await self._runner.read(job)

    async def review_template(
        self, code: str, status: str, reason: str | None, now: int, revision: int | None = None
    ) -> Template | None:
        pending: list[int] = []  # ends that go on in chunks of their own (sqlite_ends)

        def job(c: sqlite3.Connection) -> Template | None:
            done = c.execute(
                "UPDATE templates SET status=?, reason=?, reviewed_at=? "
                "WHERE code=? AND (? IS NULL OR revision=?)",
                (status, reason, now, code, revision, revision),
            ).rowcount
            r = c.execute(f"SELECT {TEMPLATE_COLS} FROM templates WHERE code=?", (code,)).fetchone()
            t = template_row(r) if r else None
            if done and t is not None and status == "rejected":
                # Only approved templates are sent: queued and scheduled messages of a template
                # rejected since (fraud found at a second look) end unsent and are refunded.
                ends.start(c, t.account_id, "template", code, "TEMPLATE_REJECTED", now, pending)
            return t

        template, _more = await ends.run(self._runner.write, job, pending, now)
        return template

    async def edit_template(self, t: Template) -> bool:
        def job(c: sqlite3.Connection) -> bool:
            return bool(c.execute(EDIT_TEMPLATE_SQLITE, edit_template_args(t)).rowcount)

        return await self._runner.write(job)

    async def delete_template(self, account_id: str, code: str, now: int) -> int | None:
        pending: list[int] = []  # ends that go on in chunks of their own (sqlite_ends)

        def job(c: sqlite3.Connection) -> int | None:
            gone = c.execute(
                "DELETE FROM templates WHERE code=? AND account_id=?", (code, account_id)
            ).rowcount
            if not gone:
                return None
            return ends.start(c, account_id, "template", code, "TEMPLATE_DELETED", now, pending)

        ended, more = await ends.run(self._runner.write, job, pending, now)
        return None if ended is None else ended + more

    # -- opt-outs and do-not-contact lists ---------------------------------------------------------

    async def add_optouts(
        self, account_id: str, numbers: Sequence[str], source: str, now: int
    ) -> int:
        def job(c: sqlite3.Connection) -> int:
            added = c.executemany(
                "INSERT OR IGNORE INTO optouts (account_id, recipient, source, created_at) "
                "VALUES (?,?,?,?)",
                [(account_id, n, source, now) for n in numbers],
            ).rowcount
            if source == "mo":  # a reply outranks the customer's own entry: _CLAIM_BY_REPLY
                for chunk in _chunks(list(numbers), 400):
                    c.execute(_CLAIM_BY_REPLY.format(_marks(len(chunk))), (account_id, *chunk))
            # What the account queued or scheduled to them earlier is not sent either.
            for chunk in _chunks(list(numbers), 400):
                end_queued(
                    c,
                    f"account_id=? AND recipient IN ({_marks(len(chunk))})",
                    (account_id, *chunk),
                    "RECIPIENT_OPTED_OUT",
                    now,
                )
            return added

        return await self._runner.write(job)

    async def remove_optout(
        self, account_id: str, number: str, *, sources: Collection[str] | None
    ) -> str | None:
        allowed = None if sources is None else frozenset(sources)

        def job(c: sqlite3.Connection) -> str | None:
            # One write transaction (the runner's single writer): nothing changes the entry
            # between reading its source and deleting it.
            row = c.execute(
                "SELECT source FROM optouts WHERE account_id=? AND recipient=?",
                (account_id, number),
            ).fetchone()
            if row is None:
                return None
            if allowed is None or row[0] in allowed:
                c.execute(
                    "DELETE FROM optouts WHERE account_id=? AND recipient=?", (account_id, number)
                )
            return str(row[0])

        return await self._runner.write(job)

    async def list_optouts(
        self, account_id: str, after: str | None = None, limit: int = 100
    ) -> list[OptOut]:
        def job(c: sqlite3.Connection) -> list[OptOut]:
            return [
                OptOut(*r)
                for r in c.execute(
                    "SELECT recipient, source, created_at FROM optouts WHERE account_id=? "
                    "AND recipient>? ORDER BY recipient LIMIT ?",
                    (account_id, after or "", limit),
                )
            ]

        return await self._runner.read(job)

    async def import_dnc(
        self, info: DncInfo, numbers: Iterable[str], prefixes: Iterable[str]
    ) -> int:
        """Replace the list `info.id`, and end the queued and scheduled messages it now blocks,
        as an opt-out does (the lists "block sends for all accounts": a message accepted before
        the import was sent all the same). In chunks: sqlite_dnc.py."""
        return await sqlite_dnc.import_list(self._runner.write, info, DncEntries(numbers, prefixes))

    async def list_dnc(self) -> list[DncInfo]:
        def job(c: sqlite3.Connection) -> list[DncInfo]:
            return [
                DncInfo(*r)
                for r in c.execute(
                    "SELECT id, name, country, numbers, prefixes, imported_at FROM dnc_lists "
                    "ORDER BY id"
                )
            ]

        return await self._runner.read(job)

    async def delete_dnc(self, list_id: str) -> bool:
        return await sqlite_dnc.delete_list(self._runner.write, list_id)

    async def dnc_blocks(self, number: str) -> bool:
        def job(c: sqlite3.Connection) -> bool:
            prefixes = number_prefixes(number)
            return (
                c.execute(
                    f"SELECT 1 FROM dnc_entries WHERE prefix IN ({_marks(len(prefixes))}) LIMIT 1",
                    prefixes,
                ).fetchone()
                is not None
            )

        return await self._runner.read(job)

    # -- tariffs -----------------------------------------------------------------------------------

    async def add_tariff(self, row: TariffRow) -> None:
        def job(c: sqlite3.Connection) -> None:
            try:
                c.execute(
                    "INSERT INTO tariffs (version, effective_at, body, created_at) "
                    "VALUES (?,?,?,?)",
                    (row.version, row.effective_at, row.body, row.created_at),
                )
            except sqlite3.IntegrityError as exc:
                raise StoreError(
                    "TARIFF_EXISTS",
                    f"a tariff with version {row.version!r} or effective time "
                    f"{row.effective_at} already exists; versions are never edited",
                ) from exc

        await self._runner.write(job)

    async def list_tariffs(self) -> list[TariffRow]:
        def job(c: sqlite3.Connection) -> list[TariffRow]:
            return [
                TariffRow(*r)
                for r in c.execute(
                    "SELECT version, effective_at, body, created_at FROM tariffs "
                    "ORDER BY effective_at"
                )
            ]

        return await self._runner.read(job)

    # -- ledger ------------------------------------------------------------------------------------

    async def append_ledger(
        self, account_id: str, entries: Sequence[Entry], *, once: bool = False
    ) -> bool:
        def job(c: sqlite3.Connection) -> bool:
            row = c.execute("SELECT status FROM accounts WHERE id=?", (account_id,)).fetchone()
            # Checked in the write's transaction: no close slips between.
            refuse_unless_open(account_id, row[0] if row else None)
            first = entries[0] if entries else None
            if once and first is not None and first.ref is not None:
                seen = c.execute(PAYMENT_SEEN.format("?", "?"), (account_id, first.ref)).fetchone()
                if already_credited(seen, first):
                    return False
            append_entries(c, account_id, entries)
            rearm_low_balance(c, account_id, entries)
            return True

        return await self._runner.write(job)

    async def pay_refund(
        self, account_id: str, amount: int, ref: str, now: int
    ) -> list[Entry] | None:
        def job(c: sqlite3.Connection) -> list[Entry] | None:
            row = c.execute("SELECT status FROM accounts WHERE id=?", (account_id,)).fetchone()
            seen = c.execute(REFUND_SEEN.format("?", "?"), (account_id, ref)).fetchone()
            sums = dict(c.execute(LEDGER_KIND_SUMS.format("?"), (account_id,)).fetchall())
            entries = plan_refund_paid(
                account_id, row[0] if row else None, seen, sums, amount, ref, now
            )
            if entries:
                append_entries(c, account_id, entries)
            return entries

        return await self._runner.write(job)

    async def get_pockets(self, account_id: str) -> list[adm.Pocket]:
        return await self._runner.read(lambda c: read_pockets(c, account_id))

    async def ledger_page(
        self, account_id: str, after_id: int = 0, limit: int = 100
    ) -> list[LedgerRow]:
        def job(c: sqlite3.Connection) -> list[LedgerRow]:
            return [
                ledger_row(r)
                for r in c.execute(
                    f"SELECT {LEDGER_COLS} FROM ledger WHERE account_id=? AND id>? "
                    "ORDER BY id LIMIT ?",
                    (account_id, after_id, limit),
                )
            ]

        return await self._runner.read(job)

    async def ledger_kind_sums(self, account_id: str) -> dict[str, int]:
        sql = LEDGER_KIND_SUMS.format("?")
        return await self._runner.read(lambda c: dict(c.execute(sql, (account_id,)).fetchall()))

    async def ledger_sums(self, account_id: str) -> dict[str, int]:
        def job(c: sqlite3.Connection) -> dict[str, int]:
            return dict(
                c.execute(
                    "SELECT pocket, SUM(amount) FROM ledger WHERE account_id=? GROUP BY pocket",
                    (account_id,),
                ).fetchall()
            )

        return await self._runner.read(job)

    # -- settlement --------------------------------------------------------------------------------

    async def usage_groups(
        self, account_id: str, start: int, end: int, boundaries: Sequence[int]
    ) -> list[tuple[int, int, int, str, int, str, int, int]]:
        """The month's billed messages grouped by (price class, state, tariff period).

        Rows: (first accepted_at, units, net charged, price_class, segments submitted, state,
        net paid by vouchers, messages). The count is what settlement reports as still
        awaiting an outcome (a group is no message). `boundaries` are the tariff effective times
        inside the month, so a group never straddles a price change.
        """

        def job(c: sqlite3.Connection) -> list[tuple[int, int, int, str, int, str, int, int]]:
            bucket = tariff_period_sql(boundaries, postgres=False)
            sql = (
                "SELECT MIN(m.accepted_at), SUM(m.billable_units), SUM(COALESCE(l.charged, 0)), "
                "m.price_class, SUM(m.segments_sent), m.state, SUM(COALESCE(l.vouchers, 0)), "
                "COUNT(*) "
                "FROM messages m LEFT JOIN ("
                "  SELECT ref, -SUM(amount) AS charged, "
                "  -SUM(CASE WHEN pocket LIKE 'voucher:%' THEN amount ELSE 0 END) AS vouchers "
                "  FROM ledger WHERE account_id=?1 "
                f"  AND kind IN ({CHARGE_KINDS_SQL}) "
                "  AND ref LIKE 'msg_%' GROUP BY ref"
                ") l ON l.ref = m.id "
                "WHERE m.account_id=?1 AND m.accepted_at>=?2 AND m.accepted_at<?3 "
                f"AND m.price_class IS NOT NULL GROUP BY m.price_class, m.state{bucket}"
            )
            return [tuple(r) for r in c.execute(sql, (account_id, start, end))]

        return await self._runner.read(job)

    async def voucher_charges(
        self, account_id: str, start: int, end: int, boundaries: Sequence[int] = ()
    ) -> list[tuple[str, int, str, int, int | None]]:
        """What each voucher paid for a bill's domestic messages (rules_rows.voucher_charges_sql):
        where a settlement refund goes back (settlement.refund_split)."""
        sql = voucher_charges_sql(boundaries, postgres=False)

        def job(c: sqlite3.Connection) -> list[tuple[str, int, str, int, int | None]]:
            return [tuple(r) for r in c.execute(sql, (account_id, start, end))]

        return await self._runner.read(job)

    async def save_bill(self, bill: BillRow, entries: Sequence[Entry]) -> bool:
        """Record a settled month and its ledger entries once; False if it was already settled."""

        def job(c: sqlite3.Connection) -> bool:
            stored = c.execute(
                "INSERT OR IGNORE INTO bills (account_id, month, body, settled_at) "
                "VALUES (?,?,?,?)",
                (bill.account_id, bill.month, bill.body, bill.settled_at),
            ).rowcount
            if stored != 1:
                return False
            append_entries(c, bill.account_id, entries)
            rearm_low_balance(c, bill.account_id, entries)
            write_off_closed(c, (bill.account_id,), bill.settled_at)
            return True

        return await self._runner.write(job)

    async def get_bill(self, account_id: str, month: str) -> BillRow | None:
        def job(c: sqlite3.Connection) -> BillRow | None:
            r = c.execute(
                "SELECT account_id, month, body, settled_at FROM bills "
                "WHERE account_id=? AND month=?",
                (account_id, month),
            ).fetchone()
            return BillRow(*r) if r else None

        return await self._runner.read(job)

    # -- erasure -----------------------------------------------------------------------------------

    async def erase_recipient(
        self,
        account_id: str,
        number: str,
        masked: str,
        now: int,
        mo_sources: Sequence[str] | None = None,
        *,
        mo_defaults: Mapping[str, str] | None = None,
    ) -> int:
        """Mask the number and drop the text of every message (and MO) of this account to it.

        Messages still waiting in the queue are ended as expired (error ERASED) and refunded:
        their text is gone, so they can no longer be sent. Billing amounts stay. Parts of long
        MOs from the number still waiting for the others (mo_parts, kept under `mo_sources`, the
        addresses it arrives from: phone.mo_source_forms) are dropped too: one writer at a time,
        an MO being assembled from them stores itself before this (and is masked here) or finds
        them gone after (store_mo_from_parts).
        """
        sources = tuple(mo_sources) if mo_sources else mo_source_forms(number)
        defaults = dict(mo_defaults or {})

        def job(c: sqlite3.Connection) -> int:
            # First, while the messages still name the number: whose replies the parts may be.
            _drop_waiting_mo(c, account_id, number, sources)
            _drop_held_waiting_mo(c, account_id, sources, defaults)
            erased = _erase(
                c,
                "account_id=? AND recipient=?",
                (account_id, number),
                masked,
                now,
            )
            # The stored answers of idempotent sends name the number too (kept for the key's
            # hours, for replays): masked as well, the replay still answered, in chunks of
            # their own (sqlite_erase: an account may keep millions).
            pending[:] = []
            masking = sqlite_erase.start(c, account_id, number, masked, now)
            if masking is not None:
                pending.append(masking)
            return erased

        pending: list[int] = []
        erased = await self._runner.write(job)
        await sqlite_erase.finish(self._runner.write, pending, now, now)
        return erased

    async def cancel_queued(
        self,
        account_id: str,
        now: int,
        *,
        message_id: str | None = None,
        batch: tuple[str, int] | None = None,
    ) -> tuple[int, int]:
        args: tuple[str | int, ...]
        if message_id is not None:
            where, args = "account_id=? AND id=?", (account_id, message_id)
        elif batch is not None:  # accepted_at first: the (account_id, accepted_at) index
            where, args = (
                "account_id=? AND accepted_at=? AND batch_id=?",
                (account_id, batch[1], batch[0]),
            )
        else:
            raise ValueError("cancel_queued: a message id or a batch")

        def job(c: sqlite3.Connection) -> tuple[int, int]:
            found = c.execute(f"SELECT COUNT(*) FROM messages WHERE {where}", args).fetchone()[0]
            ended = end_queued(
                c,
                f"{where} AND {NEVER_TRIED}",
                args,
                "CANCELED",
                now,
                in_flight=False,
            )
            return ended, found

        return await self._runner.write(job)

    async def close_account(
        self,
        account_id: str,
        now: int,
        mo_prefixes: Sequence[str] = (),
        *,
        mo_defaults: Mapping[str, str] | None = None,
    ) -> AccountClosed | None:
        defaults = dict(mo_defaults or {})
        pending: list[int] = []  # the ends and masking that go on in chunks (sqlite_ends)

        def stop_sending(c: sqlite3.Connection) -> bool:
            """First, as a disable does: the account stops sending, and its waiting messages end
            (ERASED, refunded) in chunks, each a transaction of its own, before the close's. In
            the close's one transaction, a million waiting held every writer ~20 s."""
            row = c.execute("SELECT status FROM accounts WHERE id=?", (account_id,)).fetchone()
            if row is None:
                return False
            status = row[0]
            if status == "active":
                # updated_at moves on, as every change's (SqliteStore.update_account): set to
                # `now` it could go back to a version a cached copy was validated against.
                c.execute(
                    "UPDATE accounts SET status='disabled', updated_at=MAX(?, updated_at + 1) "
                    "WHERE id=?",
                    (now, account_id),
                )
            if status != "closed":
                # Nothing more is posted from here on, as in the close's one transaction: the
                # messages its chunks end, and those held below ended later (a claim, the
                # sweep), queue no report without a URL; committed per chunk and posted, they
                # named the numbers of an account being erased. A close that stops part-way
                # leaves the account disabled without its URLs: close it again.
                c.execute(
                    "UPDATE accounts SET status_callback_url=NULL, mo_callback_url=NULL WHERE id=?",
                    (account_id,),
                )
                ends.start(c, account_id, "account", None, "ERASED", now, pending)
            return True

        if not (await ends.run(self._runner.write, stop_sending, pending, now))[0]:
            return None
        pending.clear()

        def job(c: sqlite3.Connection) -> tuple[AccountClosed | None, int | None]:
            if c.execute("SELECT 1 FROM accounts WHERE id=?", (account_id,)).fetchone() is None:
                return None, None
            # First, while the messages still name the numbers (as an erasure does), and while
            # the account still holds its addresses (a closed one holds none).
            _drop_account_waiting_mo(c, account_id, mo_prefixes)
            _drop_held_waiting_mo(c, account_id, None, defaults)
            # The waiting messages end here, before the pockets are read for the write-off:
            # their refunds are part of what the account is owed. Only the masking of its
            # messages, no money in it, goes on in chunks (every message it ever sent).
            end_queued(c, "account_id=?", (account_id,), "ERASED", now)
            # Its MO inbox, then its messages: masked in chunks (sqlite_ends), the first of
            # each here, reads answering the rest masked meanwhile.
            ends.start_mo(c, account_id, "+***", now, pending)
            ends.start_erase(c, account_id, "+***", now, pending)
            # After the refunds: what the account holds now is what it is owed or loses.
            entries = adm.close_plan(read_pockets(c, account_id), now)
            append_entries(c, account_id, entries)
            # updated_at never back (the first step moved it on; closed, it stays closed).
            c.execute(
                "UPDATE accounts SET status='closed', closed_at=?, updated_at=MAX(?, updated_at), "
                "status_callback_url=NULL, mo_callback_url=NULL WHERE id=?",
                (now, now, account_id),
            )
            c.execute(
                "UPDATE app_keys SET status='revoked', revoked_at=? WHERE account_id=? "
                "AND status='active'",
                (now, account_id),
            )
            for table in ("optouts", "daily_counts", "rate_buckets"):
                c.execute(f"DELETE FROM {table} WHERE account_id=?", (account_id,))
            # Its stored idempotent answers: in chunks after this (sqlite_erase), millions for
            # an account sending with keys (~3 µs each to delete in the write lock).
            dropping = sqlite_erase.start_drop(c, account_id, now)
            c.execute(
                "DELETE FROM webhook_outbox WHERE account_id=? AND state='pending'", (account_id,)
            )
            return AccountClosed(tuple(entries)), dropping

        (closed, dropping), _ = await ends.run(self._runner.write, job, pending, now)
        if dropping is not None:
            await sqlite_erase.finish(self._runner.write, [dropping], now, now)
        return closed


# The reason a held message ends with (?2 at ?1), unless its own validity ran out first (the
# SET expressions read the row as it was).
_END = (
    "end_error=CASE WHEN COALESCE(expires_at, ?1 + 1) > ?1 THEN COALESCE(end_error, ?2) "
    "ELSE end_error END"
)


def end_queued(
    c: sqlite3.Connection,
    where: str,
    args: tuple[Any, ...],
    error: str,
    now: int,
    *,
    in_flight: bool = True,
    by_key: bool = False,
) -> int:
    """End the messages `where` finds that still wait in the queue (scheduled ones included) as
    expired unsent with `error`, refunded like any message that ends unsent, their places in the
    daily count (of the store's quota_tz days) and frequency history given back: they never
    reached anyone (lifecycle.never_reached).

    Those already handed to an SMSC (a submit unanswered, released to wait for its late answer;
    a part accepted before the message came back) are not ended here: ended and refunded now, a
    late acceptance would find nothing to record and the SMSC deliver for free. Their validity
    ends now instead: past their hold the next claim or sweep ends them unsent with `error`
    (end_error), unless the late answer came. With `in_flight`, so do those on a bind now: not
    recalled, but one that comes back to the queue (a throttle, a timeout) is not sent again to
    a number that opted out, for an account disabled, or with a template deleted.

    `by_key`: `where` names the messages by their key (`rowid IN (...)`, `id IN (...)`): the
    state is then tested row by row, for without statistics SQLite takes the queue index for it
    over a list of keys, even of five, and reads every waiting message per call (~20 ms per 400
    with 100,000)."""
    from bridge.store import sqlite_pipeline as pipe

    hold_tried(c, where, args, error, now, in_flight=in_flight, by_key=by_key)
    state = "+q_state" if by_key else "q_state"
    queued = [
        r[0]
        for r in c.execute(
            f"SELECT id FROM messages WHERE {where} AND {state}='queued' AND {NEVER_TRIED}", args
        )
    ]
    pipe.end_unsent(c, queued, error, now)
    return len(queued)


def end_by_key(
    c: sqlite3.Connection, column: str, keys: Sequence[Any], error: str, now: int
) -> int:
    """end_queued for the messages whose `column` ('id' or 'rowid') is one of `keys`, 400 a
    statement, their state tested row by row (`by_key`): how many ended. One place owns both,
    since a caller that wrote `id IN (...)` without `by_key` got SQLite's search of the whole
    queue index per statement (the do-not-contact walk and claim check did, session 40)."""
    from bridge.store import sqlite_pipeline as pipe

    return sum(
        end_queued(
            c, f"{column} IN ({pipe._marks(len(chunk))})", tuple(chunk), error, now, by_key=True
        )
        for chunk in pipe._chunks(keys, 400)
    )


def hold_tried(
    c: sqlite3.Connection,
    where: str,
    args: tuple[Any, ...],
    error: str,
    now: int,
    *,
    in_flight: bool = True,
    by_key: bool = False,
) -> None:
    """end_queued's part for the messages `where` finds that were handed to an SMSC (waiting
    after a try, and with `in_flight` those on a bind): their validity ends now, with `error`."""
    state = "+q_state" if by_key else "q_state"
    tried = [
        r[0]
        for r in c.execute(
            f"SELECT id FROM messages WHERE {where} AND {state}='queued' AND NOT ({NEVER_TRIED})",
            args,
        )
    ]
    if tried:
        c.executemany(
            f"UPDATE messages SET expires_at=MIN(COALESCE(expires_at, ?1), ?1), {_END} WHERE id=?3",
            [(now, error, mid) for mid in tried],
        )
    if in_flight:
        c.execute(
            f"UPDATE messages SET expires_at=MIN(COALESCE(expires_at, ?1), ?1), {_END} "
            f"WHERE {where} AND {state}='claimed'",
            (now, error, *args),
        )


def _erase(
    c: sqlite3.Connection,
    where: str,
    args: tuple[Any, ...],
    masked: str,
    now: int,
) -> int:
    # In flight: not recalled, but if it comes back to the queue (a timeout, a throttle) its
    # next claim ends it instead of sending the blanked parts to the mask.
    end_queued(c, where, args, "ERASED", now)
    ids = [r[0] for r in c.execute(f"SELECT id FROM messages WHERE {where}", args).fetchall()]
    n = mask_messages(c, ids, masked)
    mo_where = where.replace("recipient", "source")
    c.execute(f"UPDATE mo_inbox SET source=?, text=NULL WHERE {mo_where}", (masked, *args))
    return n


def mask_messages(c: sqlite3.Connection, ids: Sequence[str], masked: str) -> int:
    """An erasure's part for the messages `ids`: their parts' bytes blanked, their number
    `masked`, text and client reference dropped (amounts stay). Returns how many."""
    n = 0
    for chunk in _chunks(ids, 400):
        marks = _marks(len(chunk))
        c.execute(
            f"UPDATE segments SET short_message=X'', tlvs=X'' WHERE message_id IN ({marks})",
            chunk,
        )
        n += c.execute(
            f"UPDATE messages SET recipient=?, text=NULL, client_ref=NULL WHERE id IN ({marks})",
            (masked, *chunk),
        ).rowcount
    return n


def _drop_account_waiting_mo(
    c: sqlite3.Connection, account_id: str, prefixes: Sequence[str]
) -> int:
    """Drop the waiting parts of long MOs that an erasure of any number the account wrote to
    would (_drop_waiting_mo). Found from the parts' sources, read back into numbers: the
    waiting parts are few, the numbers an account wrote to may be a million."""
    sources = [r[0] for r in c.execute("SELECT DISTINCT source FROM mo_parts")]
    candidates = list(dict.fromkeys(n for s in sources for n in mo_source_numbers(s, prefixes)))
    numbers: list[str] = []
    for i in range(0, len(candidates), 500):
        chunk = candidates[i : i + 500]
        numbers += [
            r[0]
            for r in c.execute(
                f"SELECT DISTINCT recipient FROM messages WHERE account_id=? "
                f"AND recipient IN ({_marks(len(chunk))})",
                (account_id, *chunk),
            )
        ]
    return sum(_drop_waiting_mo(c, account_id, n, mo_source_forms(n, prefixes)) for n in numbers)


def _drop_held_waiting_mo(
    c: sqlite3.Connection,
    account_id: str,
    sources: Sequence[str] | None,
    defaults: Mapping[str, str],
) -> int:
    """Drop the waiting parts of long MOs (from one of `sources`; from anyone when None, as a
    close erases every number) to an address the account holds alone (senders.held_alone):
    replies to it are the account's whether or not it ever wrote to the sender, as the inbound
    attribution decides. Returns how many parts went."""
    assigned = [(r[0], senders_of(r[1])) for r in c.execute(ASSIGNMENTS_SQL)]
    if not any(a == account_id for a, _ in assigned):
        return 0
    where, args = "1", tuple(sources or ())
    if sources is not None:
        where = f"source IN ({_marks(len(sources))})"
    pairs = c.execute(f"SELECT DISTINCT smsc, destination FROM mo_parts WHERE {where}", args)
    held = held_alone(account_id, assigned, [(r[0], r[1]) for r in pairs], defaults)
    sql = f"DELETE FROM mo_parts WHERE {where} AND smsc=? AND destination=?"
    return sum(c.execute(sql, (*args, smsc, dest)).rowcount for smsc, dest in held)


def _drop_waiting_mo(
    c: sqlite3.Connection, account_id: str, number: str, sources: Sequence[str]
) -> int:
    """Drop the parts from `number` (as `sources`) of long MOs still waiting for the others
    that are replies to this account: to an address it wrote to the number from (any address
    when it wrote from the SMSC's default source). Returns how many parts went."""
    senders = [
        r[0]
        for r in c.execute(
            "SELECT DISTINCT sender FROM messages WHERE account_id=? AND recipient=?",
            (account_id, number),
        )
    ]
    if not senders:
        return 0  # it never wrote to the number: no reply from it is this account's
    where = f"source IN ({_marks(len(sources))})"
    dests = reply_destinations(senders)
    if dests is not None:
        where += f" AND destination IN ({_marks(len(dests))})"
    return c.execute(f"DELETE FROM mo_parts WHERE {where}", (*sources, *(dests or ()))).rowcount
