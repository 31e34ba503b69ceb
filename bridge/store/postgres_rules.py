"""PostgreSQL side of the sending rules and billing, the twin of `sqlite_rules.py` (same methods,
same results, same StoreError codes; tests/integration/test_store_rules.py holds both to them).

What differs is the cost model: a round trip to the server costs far more than an SQLite statement,
so where the SQLite engine loops, this engine sends arrays. The facts of an accept are one
statement (opt-outs, do-not-contact prefixes of every recipient, the frequency history of every
recipient, the day's count, the pockets, the rate bucket), and everything the accept writes is
another (`Writes`: data-modifying CTEs folded into one statement).

Race-freedom of the balance and frequency decisions comes from the caller: the accept locks the
account row before `read_facts` runs, in an earlier statement, because under READ COMMITTED a
statement reads the snapshot taken when it starts, not when its locks were granted. (A
transaction that already holds the lock waits for nothing: its later accepts read the facts in
their first statement, `facts_sql`.)
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

import asyncpg

from bridge.domain import admission as adm
from bridge.domain.frequency import DAY_MS
from bridge.domain.ledger import Entry
from bridge.domain.lifecycle import STILL_COUNTS_SQL
from bridge.domain.phone import mo_source_forms, mo_source_numbers, reply_destinations
from bridge.domain.senders import held_alone
from bridge.ids import new_id
from bridge.store import postgres_pending_ends as pending_ends
from bridge.store.account_rows import ASSIGNMENTS_SQL, senders_of
from bridge.store.base import AccountClosed, StoreError
from bridge.store.models import BillRow, DncInfo, LedgerRow, OptOut, Sign, TariffRow, Template
from bridge.store.postgres_arrays import int_array, text_array
from bridge.store.postgres_ends import start_erase
from bridge.store.postgres_tx import run_tx
from bridge.store.rules_rows import (
    CHARGE_KINDS_SQL,
    CLOSED_AMONG,
    DNC_EXACT,
    EDIT_SIGN_PG,
    EDIT_TEMPLATE_PG,
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
    number_prefixes,
    pg_marks,
    plan_refund_paid,
    refuse_unless_open,
    sign_row,
    sign_values,
    tariff_period_sql,
    template_row,
    template_values,
    voucher_charges_sql,
)

# How long a DNC import waits for the accepts in progress (see import_dnc), in waits of
# DNC_LOCK_TRY_MS with DNC_LOCK_PAUSE_S between them.
DNC_LOCK_WAIT_MS = 10_000
DNC_LOCK_TRY_MS = 500
DNC_LOCK_PAUSE_S = 0.2
_DNC_CHUNK = 50_000  # entries per INSERT when importing a list (bounded message size)

# Everything `decide` needs, read after the account lock in one statement. $10 (rate) also locks
# the account's rate bucket, so accepts without sending rules (which do not take the account
# lock) still share one bucket with these.
_FACTS = """
SELECT
    sg.names AS sign_names, sg.statuses AS sign_statuses,
    (SELECT CASE WHEN $14::int IS NULL OR revision = $14::int THEN status ELSE 'changed' END
     FROM templates WHERE code = $3 AND account_id = $1) AS template_status,
    ARRAY(SELECT recipient FROM optouts
          WHERE account_id = $1 AND recipient = ANY($4::text::text[])) AS opted,
    ARRAY(SELECT DISTINCT prefix FROM dnc_entries WHERE prefix = ANY($5::text::text[])) AS dnc,
    h.numbers AS h_numbers, h.times AS h_times,
    a.daily_quota, a.kind, a.low_balance_threshold,
    COALESCE(a.low_warned_at IS NOT NULL, false) AS low_warned,
    (SELECT messages FROM daily_counts WHERE account_id = $1 AND day = $6) AS day_count,
    p.pockets, p.amounts, p.expiries,
    b.tokens, b.at
FROM (SELECT 1) one
LEFT JOIN accounts a ON a.id = $1
CROSS JOIN (
    SELECT array_agg(name) AS names, array_agg(status) AS statuses FROM signs
    WHERE account_id = $1 AND name = ANY($2::text::text[])
) sg
CROSS JOIN (
    -- One index probe per recipient on messages(account_id, recipient, accepted_at). As a join
    -- (and a generic plan with young statistics) the planner scanned all of the account's
    -- messages of the last 24 h through (account_id, accepted_at) for every accept: quadratic
    -- in the day's traffic (measured: 219 instead of ~1,400 messages/s in scripts/bench.py).
    SELECT array_agg(u.number) AS numbers, array_agg(x.at) AS times
    FROM unnest($7::text::text[], $11::text::text[]) AS u(number, sign)
    CROSS JOIN LATERAL (
        SELECT m.accepted_at AS at FROM messages m
        WHERE m.account_id = $1 AND m.recipient = u.number AND m.accepted_at > $8
            AND m.sign_name IS NOT DISTINCT FROM u.sign
            AND @STILL_COUNTS@
            AND CASE $12::text WHEN 'verification' THEN m.kind = 'verification'
                               WHEN 'template' THEN m.template = $13::text
                               ELSE m.template IS NULL END
        OFFSET 0  -- keeps the lateral subquery a per-recipient probe (no pull-up into a join)
    ) x
) h
CROSS JOIN (
    SELECT array_agg(pocket ORDER BY pocket) AS pockets,
        array_agg(amount ORDER BY pocket) AS amounts,
        array_agg(expires_at ORDER BY pocket) AS expiries
    FROM pockets WHERE account_id = $1 AND $9::bool
) p
LEFT JOIN LATERAL (
    SELECT tokens, at FROM rate_buckets WHERE account_id = $1 AND $10::bool FOR UPDATE
) b ON true
""".replace("@STILL_COUNTS@", STILL_COUNTS_SQL.format(m="m."))  # canceled, ended unsent: gone
FACT_COLS = (
    "sign_names", "sign_statuses", "template_status", "opted", "dnc", "h_numbers", "h_times",
    "daily_quota", "kind", "low_balance_threshold", "low_warned", "day_count", "pockets",
    "amounts", "expiries", "tokens", "at",
)  # fmt: skip
_N_FACT_COLS = len(FACT_COLS)
# read_facts' statement, for a caller that reads its row itself (PostgresStore._accept_one:
# facts_from_row or decide_one_of_row its row).
FACTS = _FACTS
_NOBODY: frozenset[str] = frozenset()


def facts_sql(first_param: int) -> str:
    """_FACTS inside a larger statement: $1 stays the account, $2.. become $first_param.., so
    its parameters (facts_args()[1:]) can follow that statement's own."""
    return shift_params(_FACTS, first_param - 2, keep=1)


def shift_params(sql: str, shift: int, *, keep: int = 0) -> str:
    """`sql` with its parameters $n renumbered $n+shift (those up to $keep left as they are),
    to run it behind another statement's parameters."""
    return re.sub(r"\$(\d+)", lambda m: m[0] if int(m[1]) <= keep else f"${int(m[1]) + shift}", sql)


_LEDGER_INSERT = (
    "INSERT INTO ledger (account_id, kind, amount, pocket, at, ref, expires_at) "
    "SELECT e.acc, e.kind, e.amount, e.pocket, e.at, e.ref, e.exp FROM unnest({}::text::text[], "
    "{}::text::text[], {}::text::bigint[], {}::text::text[], {}::text::bigint[], "
    "{}::text::text[], {}::text::bigint[]) "
    "WITH ORDINALITY AS e(acc, kind, amount, pocket, at, ref, exp, ord) {} ORDER BY e.ord"
)
# One entry (an accept's charge, session 59): its columns as values, which asyncpg encodes in C,
# where the seven one-element literals above cost ~30 k instructions an accept (a None expiry
# makes int_array's fast form raise, then go element by element). The same row.
_LEDGER_INSERT_ONE = (
    "INSERT INTO ledger (account_id, kind, amount, pocket, at, ref, expires_at) "
    "SELECT {}::text, {}::text, {}::bigint, {}::text, {}::bigint, {}::text, {}::bigint {}"
)
# Pocket rows are updated in (account, pocket) order by every writer, so two transactions moving
# the same pockets (an accept and a refund) wait for each other instead of deadlocking.
_POCKETS_UPSERT = (
    "INSERT INTO pockets (account_id, pocket, amount, expires_at) "
    "SELECT p.acc, p.pocket, p.amount, p.exp FROM unnest({}::text::text[], {}::text::text[], "
    "{}::text::bigint[], {}::text::bigint[]) AS p(acc, pocket, amount, exp) {} "
    "ORDER BY p.acc, p.pocket "
    "ON CONFLICT (account_id, pocket) DO UPDATE SET amount = pockets.amount + EXCLUDED.amount, "
    "expires_at = COALESCE(pockets.expires_at, EXCLUDED.expires_at)"
)
# One pocket (an accept's charge): an UPDATE, and the insert only when it found no row. The
# upsert's DO UPDATE locks the row before it updates it, a WAL record of its own (measured on
# the accept: 25 records per message, 2 of them such locks, with daily_counts'). The insert
# keeps a pocket that is new, or committed since this statement's snapshot, counted once.
_POCKET_UPDATE = (
    "UPDATE pockets SET amount = amount + {2}::bigint, "
    "expires_at = COALESCE(expires_at, {3}::bigint) WHERE account_id = {0} AND pocket = {1} {4}"
    "RETURNING 1"
)
_POCKET_INSERT = (
    "INSERT INTO pockets (account_id, pocket, amount, expires_at) "
    "SELECT {0}, {1}, {2}::bigint, {3}::bigint WHERE NOT EXISTS (SELECT 1 FROM {5}) {4}"
    "ON CONFLICT (account_id, pocket) DO UPDATE SET amount = pockets.amount + EXCLUDED.amount, "
    "expires_at = COALESCE(pockets.expires_at, EXCLUDED.expires_at)"
)


# "$1".."$511" (session 58): a parameter's placeholder made by an f-string at every
# Writes.param cost ~1,000 instructions more, ~20 of them an accept.
_PLACEHOLDERS = tuple(f"${n}" for n in range(512))
_CTE_NAMES = tuple(f"w{n}" for n in range(512))


@lru_cache(maxsize=512)
def _formatted(template: str, *values: str) -> str:
    """`template.format(*values)`, kept (session 58): str.format parses its template every call
    (~16 k instructions for the ledger's insert), and an accept's statement is made of the same
    few templates with the same placeholders, accept after accept."""
    return template.format(*values)


@lru_cache(maxsize=512)
def _cte(name: str, sql: str) -> str:
    return f"{name} AS ({sql})"


@lru_cache(maxsize=256)
def _joined(ctes: tuple[str, ...]) -> str:
    """The CTEs' text, the same str object for the same pieces (session 58): asyncpg's
    statement cache, the literal-form cache (postgres_arrays.literal_form) and _after_writes
    look the statement up by its text, and a new str of several KB is hashed at each lookup,
    where a kept one has its hash stored. The pieces, mostly kept strs themselves, hash cheaply."""
    return ",\n".join(ctes)


@lru_cache(maxsize=256)
def _statement(ctes: str, final: str) -> str:
    return "WITH " + ctes + "\n" + final


class Writes:
    """Data-modifying CTEs run as one statement: one round trip for everything an accept (or a
    settlement) writes. Parameters are numbered in the order they are added."""

    def __init__(self, args: Sequence[Any] = ()) -> None:
        self.args: list[Any] = list(args)
        self._ctes: list[str] = []
        self._text: str | None = None

    @classmethod
    def fixed(cls, args: list[Any], ctes: str) -> Writes:
        """Writes whose CTEs' text is already made (`ctes`, what ctes() gave for the same
        shape: PostgresStore's usual accept, session 61), with `args` (taken, not copied) for
        its parameters; no more may be added."""
        w = cls.__new__(cls)
        w.args, w._ctes, w._text = args, [], ctes
        return w

    def param(self, value: Any) -> str:
        args = self.args
        args.append(value)
        n = len(args)
        return _PLACEHOLDERS[n] if n < 512 else f"${n}"

    def add(self, sql: str, name: str | None = None) -> str:
        if self._text is not None:  # not an assert: `python -O` would drop it, and the CTE
            raise RuntimeError("a fixed Writes takes no more CTEs")  # with it (session 61, r2)
        if not name:
            k = len(self._ctes)
            name = _CTE_NAMES[k] if k < 512 else f"w{k}"
        self._ctes.append(_cte(name, sql))
        return name

    def sql(self, final: str = "SELECT 1") -> str:
        return _statement(self.ctes(), final)

    def ctes(self) -> str:
        """The CTEs alone, for a statement that adds its own (PostgresStore's deferred writes)."""
        if self._text is not None:
            return self._text
        return _joined(tuple(self._ctes))

    async def run(self, c: asyncpg.Connection | asyncpg.Pool, final: str = "SELECT 1") -> Any:
        if not self._ctes and self._text is None:
            return None
        return await c.fetchval(self.sql(final), *self.args)


# -- inside the accept transaction ----------------------------------------------------------------


async def read_facts(
    c: asyncpg.Connection,
    account_id: str,
    rules: adm.Rules,
    recipients: tuple[str, ...],
    now: int,
    *,
    rate: bool = False,
) -> tuple[adm.Facts, tuple[float | None, float | None]]:
    """The facts of `decide` (and, with `rate`, the account's rate bucket (tokens, at), locked)
    in one statement. Call it after locking the account row, in a later statement."""
    row = await c.fetchrow(_FACTS, *facts_args(account_id, rules, recipients, now, rate=rate))
    assert row is not None  # FROM (SELECT 1): always one row
    return facts_from_row(row, rules, recipients)


def facts_args(
    account_id: str, rules: adm.Rules, recipients: tuple[str, ...], now: int, *, rate: bool
) -> list[Any]:
    """The parameters of _FACTS, $1 (the account) first."""
    if len(recipients) == 1:
        fast = _one_number_facts_args(account_id, rules, recipients[0], now, rate)
        if fast is not None:
            return fast
    fr = rules.frequency
    # Each number counted under one sign (the last given, as the SQLite engine's loop leaves it).
    sign_of = dict(fr.sign_of()) if fr is not None else {}
    signs = [n for n in (rules.sign_name, *rules.more_signs) if n is not None]
    # The arrays as literals in text parameters (postgres_arrays: asyncpg's lists cost ~13 k
    # instructions each, five here).
    return [
        account_id,
        text_array(dict.fromkeys(signs)),
        rules.template_code,
        text_array(dict.fromkeys(recipients)),
        text_array(sorted({p for n in recipients for p in number_prefixes(n)})),
        adm.day_key(now, rules.tz),
        text_array(sign_of),
        now - DAY_MS,
        bool(rules.billing and rules.charges),
        rate,
        text_array(sign_of.values()),
        fr.kind if fr is not None else None,
        fr.template if fr is not None else None,
        rules.template_revision,
    ]


def _plain(v: str) -> bool:
    """`v` needs no escape in an array literal (no quote, no backslash): two C scans."""
    return '"' not in v and "\\" not in v


# A number's do-not-contact prefixes as one array literal by printf-style formatting (session
# 63): "%.5s" of the number is its first five characters, so one `%` over the number repeated
# writes every prefix from five characters, then the exact entry (DNC_EXACT + number), in C: the
# prefixes made one str each by `accumulate` and then joined were ~12 k instructions of the
# usual accept's ~25 k here (callgrind, Python 3.11), this ~7 k. By length, up to
# _PREFIX_FORMS (an E.164 number is at most 16 characters); a longer one the general way.
_PREFIX_FORMS = 40
_PREFIXES_LITERAL = tuple(
    '{"' + "".join(f'%.{i}s","' for i in range(5, n + 1)) + DNC_EXACT + '%s"}'
    for n in range(_PREFIX_FORMS)
)
_PREFIXES_REPEAT = tuple(max(n - 4, 0) + 1 for n in range(_PREFIX_FORMS))


def _one_number_facts_args(
    account_id: str, rules: adm.Rules, number: str, now: int, rate: bool
) -> list[Any] | None:
    """facts_args for the usual send (session 61): one recipient, at most one sign, its
    frequency rule (if any) over that number alone; None for anything else, or for a text that
    needs escaping (facts_args' general form then). The same literals as the general form,
    written directly: that form's five text_array calls, its dict.fromkeys, set and sort of the
    number's prefixes and the rule's (number, sign) dict were ~68 k instructions an accept
    (callgrind, Python 3.11), most of facts_args. One number's prefixes (number_prefixes) are
    distinct, so sorting the list gives the sorted set: already in order when the number sorts
    before the exact entry's "=" (every E.164 number: "+" or a digit first), which the prefixes'
    one format (_PREFIXES_LITERAL) takes; any other number goes the general way. The number's
    literal is one str for $4 and the rule's $7, the sign's for $2 and the rule's $11."""
    fr = rules.frequency
    sign = rules.sign_name
    size = len(number)
    if (
        rules.more_signs
        or size >= _PREFIX_FORMS
        or number[:1] >= DNC_EXACT
        or not _plain(number)
        or (sign is not None and not _plain(sign))
    ):
        return None
    numbers = '{"' + number + '"}'
    signs = "{}" if sign is None else '{"' + sign + '"}'
    if fr is None:
        counted = values = "{}"
    else:
        if fr.numbers != (number,):
            return None
        one = fr.signs[0] if fr.signs else fr.sign
        if len(fr.signs) > 1:
            return None
        counted = numbers
        if one is None:
            values = "{NULL}"
        elif one == sign:
            values = signs
        elif _plain(one):
            values = '{"' + one + '"}'
        else:
            return None
    return [
        account_id,
        signs,
        rules.template_code,
        numbers,
        _PREFIXES_LITERAL[size] % ((number,) * _PREFIXES_REPEAT[size]),
        adm.day_key(now, rules.tz),
        counted,
        now - DAY_MS,
        bool(rules.billing and rules.charges),
        rate,
        values,
        fr.kind if fr is not None else None,
        fr.template if fr is not None else None,
        rules.template_revision,
    ]


def facts_from_row(
    row: Any, rules: adm.Rules, recipients: tuple[str, ...], at: int = 0
) -> tuple[adm.Facts, tuple[float | None, float | None]]:
    """Facts (and the rate bucket) from _FACTS's columns, FACT_COLS in order from `at`.

    By position (session 56): a column by name cost asyncpg's Record a lookup of its name and
    the name itself a new str ("f_" + name) each, and the frozen Facts built with keywords
    ~500 instructions a field more than by position (tests/unit/test_session51_positional.py
    holds the class's order); this runs in every accept under the sending rules."""
    (sign_names, sign_statuses, template_status, opted, dnc, h_numbers, h_times, quota, kind,
     threshold, warned, day_count, pockets, amounts, expiries, tokens, at_) = (
        row[at : at + _N_FACT_COLS]
    )  # fmt: skip
    fr = rules.frequency
    if dnc:
        found = set(dnc)
        blocked = frozenset(n for n in recipients if any(p in found for p in number_prefixes(n)))
    else:
        blocked = _NOBODY
    status = dict(zip(sign_names, sign_statuses, strict=True)) if sign_names else {}
    # The rule's numbers as sign_of() gives them (its per-number signs zipped in: a length
    # that differs raised there, and does here), without its list of pairs when it has none.
    history: dict[str, list[int]] = (
        {} if fr is None else {n: [] for n in (fr.numbers if not fr.signs else dict(fr.sign_of()))}
    )
    if h_numbers:
        for number, t in zip(h_numbers, h_times, strict=True):
            history[number].append(t)
    read = (
        [adm.Pocket(p, a, e) for p, a, e in zip(pockets, amounts, expiries, strict=True)]
        if pockets
        else []
    )
    facts = adm.Facts(
        recipients,  # recipients
        status.get(rules.sign_name) if rules.sign_name is not None else None,  # sign_status
        {name: status.get(name) for name in rules.more_signs} if rules.more_signs else {},
        template_status,  # template_status
        frozenset(opted) if opted else _NOBODY,  # opted_out
        blocked,  # blocked
        history,  # history
        day_count or 0,  # day_count
        quota if quota is not None else 0,  # daily_quota
        kind if kind is not None else "prepaid",  # account_kind
        threshold or 0,  # low_balance_threshold
        bool(warned),  # low_warned
        read,  # pockets
    )
    return facts, (tokens, at_)


def decide_one_of_row(
    one: adm.OneSend,
    rules: adm.Rules,
    row: Any,
    at: int = 0,
    before: tuple[adm.Plan, int, Iterable[str]] | None = None,
) -> adm.Plan | None:
    """`adm.decide_one` over _FACTS's columns (FACT_COLS from `at`) of a one-recipient send
    whose facts `facts_args` read for `rules` (`one`: adm.one_send of them, the facts' day):
    the Plan `decide` gives the Facts `facts_from_row` builds, moved by `before` (the plan,
    message count and recipients of the group's earlier accept whose writes share the
    statement, as adm.facts_after moves them), or None when `decide` must answer.

    Why (session 62): facts_from_row, the Facts, facts_after and `decide` were most of a
    grouped accept's own Python; this reads the row and calls the pure function SQLite's
    accept calls. Only the usual row is answered: no opt-out, do-not-contact entry or history
    (nor an earlier accept to a number the rule counts), one cash pocket (beside pockets at 0,
    as sqlite_rules.decide_one_of), an earlier accept's entries all cash. Anything else is
    None. Held equal to the general form by tests/unit/test_session62_pg_one.py."""
    (sign_names, sign_statuses, template_status, opted, dnc, h_numbers, _times, quota, kind,
     threshold, warned, day_count, pockets, amounts, _expiries) = row[at : at + 15]  # fmt: skip
    if opted or dnc or h_numbers:
        return None  # listed or sent to before: decide answers (it refuses or counts)
    cash = None
    if pockets:
        if len(pockets) == 1:
            if pockets[0] == "cash":
                cash = amounts[0]
        else:  # pockets at 0 beside the cash one do nothing in decide (adm.lone_cash's loop,
            # written again here: called with the columns zipped, 1.3-1.6 k more a send)
            for name, amount in zip(pockets, amounts, strict=True):
                if name == "cash":
                    cash = amount
                elif amount != 0:
                    cash = None
                    break
    day_count = day_count or 0
    warned = bool(warned)
    if before is not None:
        plan, count, sent_to = before
        fr = rules.frequency
        if fr is not None and fr.numbers:
            for r in sent_to:
                if r in fr.numbers:
                    return None  # its history may have grown (facts_after): decide answers
        if plan.day == one[5].day:  # the facts' day (adm.OneSend's Plan)
            day_count += count
        if plan.low_balance is not None:
            warned = True
        if cash is not None and plan.entries:
            for _m, e in plan.entries:  # apply_entries' sums, the cash pocket's only
                if e.pocket != "cash":
                    return None
                cash += e.amount
    # The statuses by name as facts_from_row's dict gives them (the last row of a name): the
    # statement reads only `sign`'s rows, so a last row of another name is never there (and
    # would only send the accept to decide).
    sign = rules.sign_name
    status = (
        sign_statuses[-1] if sign is not None and sign_names and sign_names[-1] == sign else None
    )
    return adm.decide_one(
        one,
        status,
        template_status,
        False,
        False,
        day_count,
        quota if quota is not None else 0,
        kind if kind is not None else "prepaid",
        threshold or 0,
        warned,
        cash,
    )


def add_plan(w: Writes, account_id: str, plan: adm.Plan, count: int) -> None:
    """The day's count and the plan's ledger entries, as CTEs of the accept's write statement."""
    # An UPDATE, the insert only for the day's first accept: as _POCKET_UPDATE.
    acc, day, n = w.param(account_id), w.param(plan.day), w.param(count)
    counted = w.add(
        f"UPDATE daily_counts SET messages = messages + {n}::bigint "
        f"WHERE account_id = {acc} AND day = {day} RETURNING 1"
    )
    w.add(
        "INSERT INTO daily_counts (account_id, day, messages) "
        f"SELECT {acc}, {day}, {n}::bigint WHERE NOT EXISTS (SELECT 1 FROM {counted}) "
        "ON CONFLICT (account_id, day) DO UPDATE SET "
        "messages = daily_counts.messages + EXCLUDED.messages"
    )
    if plan.entries:
        add_entries(w, [(account_id, e) for _m, e in plan.entries], account=acc)


async def write_plan(c: asyncpg.Connection, account_id: str, plan: adm.Plan, count: int) -> None:
    w = Writes()
    add_plan(w, account_id, plan, count)
    await w.run(c)


def add_low_balance_event(w: Writes, account_id: str, crossing: tuple[int, int], now: int) -> None:
    """The balance.low event in the outbox (for accounts with a status URL) and the account
    marked warned (admission.Facts.low_warned), as CTEs."""
    t = w.param(now)
    w.add(LOW_WARNED_SET.format(t, w.param(account_id)))
    w.add(
        "INSERT INTO webhook_outbox (webhook_id, account_id, kind, ref_id, payload, "
        f"next_attempt_at, created_at) SELECT {w.param(new_id('evt_', now))}, id, "
        f"'event', NULL, {w.param(adm.low_balance_event(account_id, crossing, now))}, {t}, "
        f"{t} FROM accounts WHERE id = {w.param(account_id)} AND status_callback_url <> '' "
        "ON CONFLICT (webhook_id) DO NOTHING"
    )


def add_entries(
    w: Writes,
    entries: Sequence[tuple[str, Entry]],
    guard: str | None = None,
    *,
    account: str | None = None,
) -> None:
    """Append (account, entry) pairs to the ledger and move the running pocket sums, as two CTEs
    (`guard`: an SQL condition both run under, e.g. that a bill row was inserted). `account`:
    a placeholder `w` already holds every entry's account in (add_plan's), used for it.

    One entry (session 64): the pocket's CTEs name the ledger row's own placeholders for the
    account, pocket, amount and expiry (the same values), and the account's is `account` when
    given: an accept's charge sent the account three times, the pocket, amount and expiry twice
    each, ~480 instructions a parameter in asyncpg's encoding (callgrind, Python 3.11)."""
    if not entries:
        return
    where = f"WHERE {guard}" if guard else ""
    if len(entries) == 1:
        ((account_id, e),) = entries
        one = (str(e.kind), e.amount, e.pocket, e.at, e.ref, e.expires_at)
        p = (account if account is not None else w.param(account_id), *map(w.param, one))
        w.add(_formatted(_LEDGER_INSERT_ONE, *p, where))
        args = (p[0], p[3], p[2], p[6])  # the account, pocket, amount and expiry
        cond = f"AND ({guard}) " if guard else ""
        moved = w.add(_formatted(_POCKET_UPDATE, *args, cond))
        w.add(_formatted(_POCKET_INSERT, *args, cond, moved))
        return
    # Array literals in text parameters (postgres_arrays: asyncpg's lists cost ~13 k
    # instructions each).
    cols = [
        text_array([a for a, _e in entries]),
        text_array([str(e.kind) for _a, e in entries]),
        int_array([e.amount for _a, e in entries]),
        text_array([e.pocket for _a, e in entries]),
        int_array([e.at for _a, e in entries]),
        text_array([e.ref for _a, e in entries]),
        int_array([e.expires_at for _a, e in entries]),
    ]
    w.add(_formatted(_LEDGER_INSERT, *[w.param(col) for col in cols], where))
    sums: dict[tuple[str, str], tuple[int, int | None]] = {}
    for account_id, e in entries:
        key = (account_id, e.pocket)
        old = sums.get(key, (0, e.expires_at))
        sums[key] = (old[0] + e.amount, old[1] if old[1] is not None else e.expires_at)
    keys = sorted(sums)
    if len(keys) == 1:  # no order of rows to keep: the UPDATE form (_POCKET_UPDATE)
        ((account_id, pocket),) = keys
        amount, expires_at = sums[keys[0]]
        args = (w.param(account_id), w.param(pocket), w.param(amount), w.param(expires_at))
        cond = f"AND ({guard}) " if guard else ""
        moved = w.add(_formatted(_POCKET_UPDATE, *args, cond))
        w.add(_formatted(_POCKET_INSERT, *args, cond, moved))
        return
    pcols = [
        text_array([a for a, _p in keys]),
        text_array([p for _a, p in keys]),
        int_array([sums[k][0] for k in keys]),
        int_array([sums[k][1] for k in keys]),
    ]
    w.add(_formatted(_POCKETS_UPSERT, *[w.param(col) for col in pcols], where))


async def append_entries(c: asyncpg.Connection, account_id: str, entries: Sequence[Entry]) -> None:
    """Append to the ledger and move the running pocket sums: one statement."""
    w = Writes()
    add_entries(w, [(account_id, e) for e in entries])
    await w.run(c)


async def read_pockets(c: asyncpg.Connection | asyncpg.Pool, account_id: str) -> list[adm.Pocket]:
    return [
        adm.Pocket(r[0], r[1], r[2])
        for r in await c.fetch(
            "SELECT pocket, amount, expires_at FROM pockets WHERE account_id = $1 ORDER BY pocket",
            account_id,
        )
    ]


async def rearm_low_balance(
    c: asyncpg.Connection, account_id: str, entries: Sequence[Entry]
) -> None:
    """After a credit, in its transaction (which holds the account's lock): clear the
    low-balance mark when the balance is back at or above the threshold (one statement, none for
    an account that is not marked)."""
    at = credited_at(entries)
    if at is None:
        return
    threshold = await c.fetchval(LOW_WARNED_READ.format("$1"), account_id)
    if threshold is not None and adm.rearms_low_balance(
        await read_pockets(c, account_id), threshold, at
    ):
        await c.execute(LOW_WARNED_CLEAR.format("$1"), account_id)


async def write_off_closed(c: asyncpg.Connection, account_ids: Iterable[str], now: int) -> int:
    """The SQLite engine's write_off_closed: empty the pockets of the closed ones among
    `account_ids` in the transaction that credited them (one statement when none is closed).
    A closed account's row takes no lock here: its status never changes again, and no accept
    or top-up of it can run."""
    ids = sorted(set(account_ids))
    closed = [r[0] for r in await c.fetch(CLOSED_AMONG.format("SELECT unnest($1::text[])"), ids)]
    out: list[tuple[str, Entry]] = []
    for account_id in closed:
        out.extend((account_id, e) for e in adm.close_plan(await read_pockets(c, account_id), now))
    if out:
        w = Writes()
        add_entries(w, out)
        await w.run(c)
    return len(out)


# -- refunds when a message ends unbilled ----------------------------------------------------------


async def refund_finals(
    c: asyncpg.Connection, finals: Iterable[tuple[str, str, str, Any, int, int]], now: int
) -> int:
    """finals: (account_id, message_id, final state, price_class, segments_sent, segments).

    Returns the number of messages refunded (fully or, international, for unsent parts). The
    callers hold the message rows locked and pass each message once, when it becomes final;
    `plan_final_refund` over every entry of the message makes a repeat a no-op anyway. Two
    statements for the whole batch: read the charges, write the refunds.
    """
    due = [f for f in finals if adm.refund_share(f[3], f[2], f[5], f[4])[0] != 0]
    if not due:
        return 0
    rows = await c.fetch(
        f"SELECT {', '.join('l.' + col for col in LEDGER_COLS.split(', '))} FROM ledger l "
        "JOIN unnest($1::text[], $2::text[]) AS u(acc, ref) "
        f"ON l.account_id = u.acc AND l.ref = u.ref WHERE l.kind IN ({MESSAGE_KINDS_SQL}) "
        "ORDER BY l.id",
        [f[0] for f in due],
        [f[1] for f in due],
    )
    held: dict[tuple[str, str], list[Entry]] = {}
    for r in rows:
        held.setdefault((r[1], r[6]), []).append(entry_row(r))
    out: list[tuple[str, Entry]] = []
    done = 0
    for account_id, mid, state, price_class, sent, segments in due:
        entries = held.get((account_id, mid), [])
        refund = adm.plan_final_refund(entries, price_class, state, segments, sent, now, mid)
        if refund:
            out.extend((account_id, e) for e in refund)
            done += 1
    if out:
        w = Writes()
        add_entries(w, out)
        await w.run(c)
        await write_off_closed(c, (a for a, _e in out), now)
    return done


def _filters(account_id: str | None, status: str | None) -> tuple[str, list[Any]]:
    where, args = ["TRUE"], []
    for col, value in (("account_id", account_id), ("status", status)):
        if value is not None:
            args.append(value)
            where.append(f"{col} = ${len(args)}")
    return " AND ".join(where), args


class RulesStoreMixin:
    """The PostgresStore methods for rules and billing (`pool` is the store's asyncpg pool)."""

    @property
    def pool(self) -> asyncpg.Pool:  # provided by PostgresStore
        raise NotImplementedError

    # -- signs -------------------------------------------------------------------------------------

    async def add_sign(self, sign: Sign) -> None:
        try:
            await self.pool.execute(
                f"INSERT INTO signs ({SIGN_COLS}) VALUES ({pg_marks(SIGN_COLS)})",
                *sign_values(sign),
            )
        except asyncpg.UniqueViolationError as exc:
            raise StoreError(
                "SIGN_NAME_EXISTS", f"name: {sign.name!r} is already registered by you"
            ) from exc

    async def get_sign(self, account_id: str, name: str) -> Sign | None:
        r = await self.pool.fetchrow(
            f"SELECT {SIGN_COLS} FROM signs WHERE account_id = $1 AND name = $2", account_id, name
        )
        return sign_row(r) if r else None

    async def list_signs(
        self, account_id: str | None = None, status: str | None = None, limit: int = 500
    ) -> list[Sign]:
        where, args = _filters(account_id, status)
        rows = await self.pool.fetch(
            f"SELECT {SIGN_COLS} FROM signs WHERE {where} "
            f"ORDER BY created_at, account_id, name LIMIT ${len(args) + 1}",
            *args,
            limit,
        )
        return [sign_row(r) for r in rows]

    async def review_sign(
        self, account_id: str, name: str, status: str, reason: str | None, now: int
    ) -> Sign | None:
        pending: list[int] = []  # ends that go on in pages of their own (postgres_pending_ends)

        async def job(c: asyncpg.Connection) -> Sign | None:
            if status == "rejected":
                await lock_account(c, account_id)
            r = await c.fetchrow(
                "UPDATE signs SET status = $1, reason = $2, reviewed_at = $3 "
                f"WHERE account_id = $4 AND name = $5 RETURNING {SIGN_COLS}",
                status,
                reason,
                now,
                account_id,
                name,
            )
            if status == "rejected":  # what waits ends unsent (see the SQLite engine)
                await pending_ends.start(c, account_id, "sign", name, "SIGN_REJECTED", now, pending)
            return sign_row(r) if r else None

        sign, _more = await pending_ends.run(self.pool, job, pending, now)
        return sign

    async def edit_sign(self, sign: Sign) -> bool:
        done = await self.pool.execute(EDIT_SIGN_PG, *edit_sign_args(sign))
        return done.endswith(" 1")

    async def delete_sign(self, account_id: str, name: str, now: int) -> int | None:
        pending: list[int] = []  # ends that go on in pages of their own (postgres_pending_ends)

        async def job(c: asyncpg.Connection) -> int | None:
            await lock_account(c, account_id)
            gone = await c.fetchval(
                "DELETE FROM signs WHERE account_id = $1 AND name = $2 RETURNING 1",
                account_id,
                name,
            )
            if gone is None:
                return None
            return await pending_ends.start(
                c, account_id, "sign", name, "SIGN_DELETED", now, pending
            )

        ended, more = await pending_ends.run(self.pool, job, pending, now)
        return None if ended is None else ended + more

    # -- templates ---------------------------------------------------------------------------------

    async def add_template(self, t: Template) -> None:
        await self.pool.execute(
            f"INSERT INTO templates ({TEMPLATE_COLS}) VALUES ({pg_marks(TEMPLATE_COLS)})",
            *template_values(t),
        )

    async def get_template(self, code: str) -> Template | None:
        r = await self.pool.fetchrow(f"SELECT {TEMPLATE_COLS} FROM templates WHERE code = $1", code)
        return template_row(r) if r else None

    async def list_templates(
        self, account_id: str | None = None, status: str | None = None, limit: int = 500
    ) -> list[Template]:
        where, args = _filters(account_id, status)
        rows = await self.pool.fetch(
            f"SELECT {TEMPLATE_COLS} FROM templates WHERE {where} "
            f"ORDER BY created_at, code LIMIT ${len(args) + 1}",
            *args,
            limit,
        )
        return [template_row(r) for r in rows]

    async def review_template(
        self, code: str, status: str, reason: str | None, now: int, revision: int | None = None
    ) -> Template | None:
        pending: list[int] = []  # ends that go on in pages of their own (postgres_pending_ends)

        async def job(c: asyncpg.Connection) -> Template | None:
            if status == "rejected":
                owner = await c.fetchval("SELECT account_id FROM templates WHERE code = $1", code)
                if owner is not None:
                    await lock_account(c, owner)
            r = await c.fetchrow(
                "UPDATE templates SET status = $1, reason = $2, reviewed_at = $3 "
                "WHERE code = $4 AND ($5::int IS NULL OR revision = $5::int) "
                f"RETURNING {TEMPLATE_COLS}",
                status,
                reason,
                now,
                code,
                revision,
            )
            if r is None:  # unknown, or corrected since the reviewer read it: as it is now
                r = await c.fetchrow(f"SELECT {TEMPLATE_COLS} FROM templates WHERE code = $1", code)
            elif status == "rejected":  # what waits ends unsent (see the SQLite engine)
                # The owner's messages only: an accept takes a template of its own account.
                owner = template_row(r).account_id
                await pending_ends.start(
                    c, owner, "template", code, "TEMPLATE_REJECTED", now, pending
                )
            return template_row(r) if r else None

        template, _more = await pending_ends.run(self.pool, job, pending, now)
        return template

    async def edit_template(self, t: Template) -> bool:
        done = await self.pool.execute(EDIT_TEMPLATE_PG, *edit_template_args(t))
        return done.endswith(" 1")

    async def delete_template(self, account_id: str, code: str, now: int) -> int | None:
        pending: list[int] = []  # ends that go on in pages of their own (postgres_pending_ends)

        async def job(c: asyncpg.Connection) -> int | None:
            await lock_account(c, account_id)
            gone = await c.fetchval(
                "DELETE FROM templates WHERE code = $1 AND account_id = $2 RETURNING 1",
                code,
                account_id,
            )
            if gone is None:
                return None
            return await pending_ends.start(
                c, account_id, "template", code, "TEMPLATE_DELETED", now, pending
            )

        ended, more = await pending_ends.run(self.pool, job, pending, now)
        return None if ended is None else ended + more

    # -- opt-outs and do-not-contact lists ---------------------------------------------------------

    async def add_optouts(
        self, account_id: str, numbers: Sequence[str], source: str, now: int
    ) -> int:
        # A reply outranks the customer's own entry: left `api`, the customer could delete it and
        # message a recipient who replied STOP. DO UPDATE rather than DO NOTHING and an UPDATE
        # after: DO NOTHING saw an entry a customer's delete was removing, the UPDATE then found
        # nothing, and the reply was lost; DO UPDATE waits for that delete and then inserts.
        # Distinct numbers: DO UPDATE may not touch one row twice in a statement.
        # xmax = 0 tells an inserted row from one taken over (counted as added: not).
        on_conflict = (
            "DO UPDATE SET source = 'mo' WHERE optouts.source <> 'mo' RETURNING xmax = 0"
            if source == "mo"
            else "DO NOTHING RETURNING true"
        )

        async def job(c: asyncpg.Connection) -> int:
            # After the accepts of the account in progress (lock_account): read past, one of
            # them queued its message after _end_queued looked, and it was sent.
            await lock_account(c, account_id)
            rows = await c.fetch(
                "INSERT INTO optouts (account_id, recipient, source, created_at) "
                "SELECT $1, n, $3, $4 FROM unnest($2::text[]) WITH ORDINALITY AS u(n, ord) "
                f"ORDER BY ord ON CONFLICT (account_id, recipient) {on_conflict}",
                account_id,
                list(dict.fromkeys(numbers)),
                source,
                now,
            )
            # What the account queued or scheduled to them earlier is not sent either.
            await _end_queued(c, account_id, list(numbers), "RECIPIENT_OPTED_OUT", now)
            return sum(1 for r in rows if r[0])

        return await run_tx(self.pool, job)

    async def remove_optout(
        self, account_id: str, number: str, *, sources: Collection[str] | None
    ) -> str | None:
        allowed = None if sources is None else frozenset(sources)

        async def job(c: asyncpg.Connection) -> str | None:
            # FOR UPDATE: a reply taking the entry over (add_optouts, `mo`) waits for this
            # transaction, or this one reads the source the reply committed.
            source: str | None = await c.fetchval(
                "SELECT source FROM optouts WHERE account_id = $1 AND recipient = $2 FOR UPDATE",
                account_id,
                number,
            )
            if source is not None and (allowed is None or source in allowed):
                await c.execute(
                    "DELETE FROM optouts WHERE account_id = $1 AND recipient = $2",
                    account_id,
                    number,
                )
            return source

        return await run_tx(self.pool, job)

    async def list_optouts(
        self, account_id: str, after: str | None = None, limit: int = 100
    ) -> list[OptOut]:
        rows = await self.pool.fetch(
            "SELECT recipient, source, created_at FROM optouts WHERE account_id = $1 "
            "AND recipient > $2 ORDER BY recipient LIMIT $3",
            account_id,
            after or "",
            limit,
        )
        return [OptOut(*r) for r in rows]

    async def import_dnc(
        self, info: DncInfo, numbers: Iterable[str], prefixes: Iterable[str]
    ) -> int:
        """Replace the list `info.id` (entries and all) in one transaction, then end the queued
        and scheduled messages it now blocks (see the SQLite engine), WALK_CHUNK per
        transaction (postgres_dnc.py).

        The first waits for the accepts in progress before it commits (they hold the DNC lock
        shared from their first statement, postgres._LOCKED_ACCOUNT): their messages are then
        committed for the scan, and every accept after the commit reads the new entries. Held
        to the commit only: held through the scan as well, it stopped every account's sends for
        ~3 µs per waiting message (3.3 s at a million). Bounded (DNC_LOCK_WAIT_MS): one accept
        transaction stuck between two statements would otherwise hold the import, and every
        accept queued behind the import, for as long as it is stuck. If the walk fails part-way,
        the claims still end what it blocks, and running the import again ends the rest."""
        from bridge.store import postgres_dnc
        from bridge.store.postgres_pipeline import NS_DNC

        # Read once, 8 bytes a number: run_tx runs `replace` again after a serialization failure.
        entries = DncEntries(numbers, prefixes)

        row = (info.id, info.name, info.country, info.numbers, info.prefixes, info.imported_at)

        async def replace(c: asyncpg.Connection) -> None:
            # The list's row first: it locks the list (a new one too: a second insert of the id
            # waits for the first), so another import of it waits for this one's commit. The
            # entries are emptied by a statement of its own after that wait: emptied in the same
            # statement, under a snapshot taken before the other import committed, the other's
            # entries were left beside this one's, the list blocking both until imported again.
            await c.execute(
                "INSERT INTO dnc_lists (id, name, country, numbers, prefixes, imported_at) "
                "VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET "
                "name = EXCLUDED.name, country = EXCLUDED.country, numbers = EXCLUDED.numbers, "
                "prefixes = EXCLUDED.prefixes, imported_at = EXCLUDED.imported_at",
                *row,
            )
            await c.execute("DELETE FROM dnc_entries WHERE list_id = $1", info.id)
            for chunk in entries.chunks(_DNC_CHUNK):
                await c.execute(
                    "INSERT INTO dnc_entries (prefix, list_id) "
                    "SELECT p, $2 FROM unnest($1::text[]) AS u(p) ON CONFLICT DO NOTHING",
                    chunk,
                    info.id,
                )
            # In short waits with pauses between: while the import waits, PostgreSQL queues
            # every accept that asks for the lock after it, so one wait as long as the whole
            # bound stopped every account's sends for that long behind a stuck one.
            deadline = time.monotonic() + DNC_LOCK_WAIT_MS / 1000
            while True:
                await c.execute("SAVEPOINT dnc_lock")
                try:
                    await c.execute(f"SET LOCAL lock_timeout = {DNC_LOCK_TRY_MS}")
                    await c.execute("SELECT pg_advisory_xact_lock($1, 0)", NS_DNC)
                except asyncpg.LockNotAvailableError:
                    await c.execute("ROLLBACK TO SAVEPOINT dnc_lock")
                    if time.monotonic() >= deadline:
                        raise StoreError(
                            "STORE_BUSY",
                            f"sends in progress did not finish within "
                            f"{DNC_LOCK_WAIT_MS // 1000} s (one may be stuck: see "
                            "pg_stat_activity); nothing was imported, try again",
                        ) from None
                    await asyncio.sleep(DNC_LOCK_PAUSE_S)
                    continue
                await c.execute("RELEASE SAVEPOINT dnc_lock")
                break

        await run_tx(self.pool, replace)
        return await postgres_dnc.end_blocked(self.pool, info, entries)

    async def list_dnc(self) -> list[DncInfo]:
        rows = await self.pool.fetch(
            "SELECT id, name, country, numbers, prefixes, imported_at FROM dnc_lists ORDER BY id"
        )
        return [DncInfo(*r) for r in rows]

    async def delete_dnc(self, list_id: str) -> bool:
        async def drop(c: asyncpg.Connection) -> bool:
            # The row first, waiting for an import of the list under way; then its entries, in a
            # statement of its own that sees what that import wrote (import_dnc).
            found = await c.fetchval("DELETE FROM dnc_lists WHERE id = $1 RETURNING 1", list_id)
            await c.execute("DELETE FROM dnc_entries WHERE list_id = $1", list_id)
            return found is not None

        return bool(await run_tx(self.pool, drop))

    async def dnc_blocks(self, number: str) -> bool:
        return bool(
            await self.pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM dnc_entries WHERE prefix = ANY($1::text[]))",
                number_prefixes(number),
            )
        )

    # -- tariffs -----------------------------------------------------------------------------------

    async def add_tariff(self, row: TariffRow) -> None:
        try:
            await self.pool.execute(
                "INSERT INTO tariffs (version, effective_at, body, created_at) "
                "VALUES ($1, $2, $3, $4)",
                row.version,
                row.effective_at,
                row.body,
                row.created_at,
            )
        except asyncpg.UniqueViolationError as exc:
            raise StoreError(
                "TARIFF_EXISTS",
                f"a tariff with version {row.version!r} or effective time "
                f"{row.effective_at} already exists; versions are never edited",
            ) from exc

    async def list_tariffs(self) -> list[TariffRow]:
        rows = await self.pool.fetch(
            "SELECT version, effective_at, body, created_at FROM tariffs ORDER BY effective_at"
        )
        return [TariffRow(*r) for r in rows]

    # -- ledger ------------------------------------------------------------------------------------

    async def append_ledger(
        self, account_id: str, entries: Sequence[Entry], *, once: bool = False
    ) -> bool:
        """Operator entries (top-ups, vouchers, cards, adjustments) under the account lock, like an
        accept: an entry that lowers a balance can never slip between an accept's check and its
        charge, nor a credit after the account's close (ACCOUNT_CLOSED: the locked row is the
        latest version, so a close committed meanwhile is seen)."""
        first = entries[0] if entries else None
        if once and first is not None and first.ref is not None:
            return await self._append_once(account_id, entries, first)
        w = Writes([account_id])
        w.add("SELECT status FROM accounts WHERE id = $1 FOR NO KEY UPDATE", "a")
        open_ = "EXISTS (SELECT 1 FROM a WHERE status <> 'closed')"
        add_entries(w, [(account_id, e) for e in entries], open_)
        if credited_at(entries) is None:  # nothing can end a dip: the one statement
            refuse_unless_open(account_id, await w.run(self.pool, "SELECT (SELECT status FROM a)"))
            return True

        async def job(c: asyncpg.Connection) -> None:
            refuse_unless_open(account_id, await w.run(c, "SELECT (SELECT status FROM a)"))
            await rearm_low_balance(c, account_id, entries)  # a later statement: sees the credit

        await run_tx(self.pool, job)
        return True

    async def _append_once(self, account_id: str, entries: Sequence[Entry], first: Entry) -> bool:
        """append_ledger(once=True): the account locked first, then the check in a later
        statement (a fresh snapshot), so two retries of one payment cannot both append."""

        async def job(c: asyncpg.Connection) -> bool:
            refuse_unless_open(
                account_id,
                await c.fetchval(
                    "SELECT status FROM accounts WHERE id = $1 FOR NO KEY UPDATE", account_id
                ),
            )
            seen = await c.fetchrow(PAYMENT_SEEN.format("$1", "$2"), account_id, first.ref)
            if already_credited(seen, first):
                return False
            w = Writes()
            add_entries(w, [(account_id, e) for e in entries])
            await w.run(c)
            await rearm_low_balance(c, account_id, entries)
            return True

        return await run_tx(self.pool, job)

    async def pay_refund(
        self, account_id: str, amount: int, ref: str, now: int
    ) -> list[Entry] | None:
        """The account's row locked first (as _append_once), so two payouts of one refund read
        each other's entry: together they never pay more than is owed."""

        async def job(c: asyncpg.Connection) -> list[Entry] | None:
            status = await c.fetchval(
                "SELECT status FROM accounts WHERE id = $1 FOR NO KEY UPDATE", account_id
            )
            seen = await c.fetchrow(REFUND_SEEN.format("$1", "$2"), account_id, ref)
            sums = {
                r[0]: int(r[1]) for r in await c.fetch(LEDGER_KIND_SUMS.format("$1"), account_id)
            }
            entries = plan_refund_paid(account_id, status, seen, sums, amount, ref, now)
            if entries:
                w = Writes()
                add_entries(w, [(account_id, e) for e in entries])
                await w.run(c)
            return entries

        return await run_tx(self.pool, job)

    async def get_pockets(self, account_id: str) -> list[adm.Pocket]:
        return await read_pockets(self.pool, account_id)

    async def ledger_page(
        self, account_id: str, after_id: int = 0, limit: int = 100
    ) -> list[LedgerRow]:
        rows = await self.pool.fetch(
            f"SELECT {LEDGER_COLS} FROM ledger WHERE account_id = $1 AND id > $2 "
            "ORDER BY id LIMIT $3",
            account_id,
            after_id,
            limit,
        )
        return [LedgerRow(*r) for r in rows]

    async def ledger_kind_sums(self, account_id: str) -> dict[str, int]:
        rows = await self.pool.fetch(LEDGER_KIND_SUMS.format("$1"), account_id)
        return {r[0]: int(r[1]) for r in rows}

    async def ledger_sums(self, account_id: str) -> dict[str, int]:
        rows = await self.pool.fetch(
            "SELECT pocket, SUM(amount) FROM ledger WHERE account_id = $1 GROUP BY pocket",
            account_id,
        )
        return {r[0]: int(r[1]) for r in rows}

    # -- settlement --------------------------------------------------------------------------------

    async def usage_groups(
        self, account_id: str, start: int, end: int, boundaries: Sequence[int]
    ) -> list[tuple[int, int, int, str, int, str, int, int]]:
        """The month's billed messages grouped by (price class, state, tariff period): the rows of
        the SQLite engine's usage_groups, in the order of those keys."""
        # The tariff period (0, 1, ...); no term without boundaries (GROUP BY 0 names a position).
        bucket = tariff_period_sql(boundaries, postgres=True)
        rows = await self.pool.fetch(
            "SELECT MIN(m.accepted_at), SUM(m.billable_units), SUM(COALESCE(l.charged, 0)), "
            "m.price_class, SUM(m.segments_sent), m.state, SUM(COALESCE(l.vouchers, 0)), "
            "COUNT(*) FROM messages m LEFT JOIN ("
            "  SELECT ref, -SUM(amount) AS charged, "
            "  -SUM(CASE WHEN pocket LIKE 'voucher:%' THEN amount ELSE 0 END) AS vouchers "
            "  FROM ledger WHERE account_id = $1 "
            f"  AND kind IN ({CHARGE_KINDS_SQL}) AND ref LIKE 'msg_%' GROUP BY ref"
            ") l ON l.ref = m.id "
            "WHERE m.account_id = $1 AND m.accepted_at >= $2 AND m.accepted_at < $3 "
            f"AND m.price_class IS NOT NULL GROUP BY m.price_class, m.state{bucket} "
            f"ORDER BY m.price_class, m.state{bucket}",
            account_id,
            start,
            end,
        )
        return [
            (int(r[0]), int(r[1]), int(r[2]), r[3], int(r[4]), r[5], int(r[6]), int(r[7]))
            for r in rows
        ]

    async def voucher_charges(
        self, account_id: str, start: int, end: int, boundaries: Sequence[int] = ()
    ) -> list[tuple[str, int, str, int, int | None]]:
        """The SQLite engine's voucher_charges: what each voucher paid for a bill's messages."""
        sql = voucher_charges_sql(boundaries, postgres=True)
        rows = await self.pool.fetch(sql, account_id, start, end)
        return [
            (r[0], int(r[1]), r[2], int(r[3]), None if r[4] is None else int(r[4])) for r in rows
        ]

    async def save_bill(self, bill: BillRow, entries: Sequence[Entry]) -> bool:
        """Record a settled month and its ledger entries once, in one statement; False if it was
        already settled (a concurrent second settlement waits for the first, then does nothing)."""
        w = Writes([bill.account_id, bill.month, bill.body, bill.settled_at])
        w.add("SELECT 1 FROM accounts WHERE id = $1 FOR NO KEY UPDATE", "a")
        w.add(
            "INSERT INTO bills (account_id, month, body, settled_at) "
            "SELECT $1, $2, $3, $4 FROM (SELECT COUNT(*) FROM a) x "
            "ON CONFLICT (account_id, month) DO NOTHING RETURNING 1",
            "b",
        )
        add_entries(w, [(bill.account_id, e) for e in entries], "EXISTS (SELECT 1 FROM b)")
        if credited_at(entries) is None:
            return bool(await w.run(self.pool, "SELECT EXISTS (SELECT 1 FROM b)"))

        async def job(c: asyncpg.Connection) -> bool:
            stored = bool(await w.run(c, "SELECT EXISTS (SELECT 1 FROM b)"))
            if stored:  # a refund to the pockets may end a low-balance dip, or need a write-off
                await rearm_low_balance(c, bill.account_id, entries)
                await write_off_closed(c, (bill.account_id,), bill.settled_at)
            return stored

        return await run_tx(self.pool, job)

    async def get_bill(self, account_id: str, month: str) -> BillRow | None:
        r = await self.pool.fetchrow(
            "SELECT account_id, month, body, settled_at FROM bills "
            "WHERE account_id = $1 AND month = $2",
            account_id,
            month,
        )
        return BillRow(*r) if r else None

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
        MOs from the number still waiting for the others are dropped too (see the SQLite
        engine), under the lock add_mo_part and store_mo_from_parts take (_drop_mo_groups).
        """
        sources = list(mo_sources) if mo_sources else list(mo_source_forms(number))
        defaults = dict(mo_defaults or {})

        async def job(c: asyncpg.Connection) -> int:
            # First, while the messages still name the number: whose replies the parts may be.
            assigned = await _assigned(c)
            keys = await _waiting_mo_keys(c, account_id, number, sources)
            keys += await _held_waiting_mo_keys(c, account_id, sources, assigned, defaults)
            await _drop_mo_groups(c, keys)
            n = await _erase(c, account_id, number, masked, now)
            # The stored answers of idempotent sends name the number too (see the SQLite engine).
            quoted = f'"{number}"'
            await c.execute(
                "UPDATE idempotency SET response = convert_to(jsonb_set(convert_from(response, "
                "'UTF8')::jsonb, '{messages}', (SELECT jsonb_agg(CASE WHEN t.e->>'to' = $2 "
                "THEN jsonb_set(t.e, '{client_ref}', 'null') ELSE t.e END ORDER BY t.i) "
                "FROM jsonb_array_elements(convert_from(response, 'UTF8')::jsonb->'messages') "
                "WITH ORDINALITY t(e, i)))::text, 'UTF8') WHERE account_id = $1 "
                # CASE: the JSON cast only on answers that name the number and are objects.
                "AND CASE WHEN position(convert_to($3, 'UTF8') IN response) > 0 "
                "AND convert_from(response, 'UTF8') LIKE '{%' THEN jsonb_typeof("
                "convert_from(response, 'UTF8')::jsonb->'messages') = 'array' ELSE false END",
                account_id,
                number,
                quoted,
            )
            await c.execute(
                "UPDATE idempotency SET response = convert_to(replace(convert_from(response, "
                "'UTF8'), $2, $3), 'UTF8') WHERE account_id = $1 "
                "AND position(convert_to($2, 'UTF8') IN response) > 0",
                account_id,
                quoted,
                f'"{masked}"',
            )
            return n

        return await run_tx(self.pool, job)

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
            where, args = "account_id = $1 AND id = $2", (account_id, message_id)
        elif batch is not None:  # accepted_at first: the (account_id, accepted_at) index
            where = "account_id = $1 AND accepted_at = $2 AND batch_id = $3"
            args = (account_id, batch[1], batch[0])
        else:
            raise ValueError("cancel_queued: a message id or a batch")

        async def job(c: asyncpg.Connection) -> tuple[int, int]:
            found = await c.fetchval(f"SELECT COUNT(*) FROM messages WHERE {where}", *args)
            # Waiting for rows a claim scan holds a moment (not skipping them): PostgreSQL then
            # reads them again, so a message the claim did not take is still canceled.
            ended = await end_queued_where(
                c,
                f"{where} AND {NEVER_TRIED}",
                args,
                "CANCELED",
                now,
                in_flight=False,
            )
            return ended, int(found)

        return await run_tx(self.pool, job)

    async def close_account(
        self,
        account_id: str,
        now: int,
        mo_prefixes: Sequence[str] = (),
        *,
        mo_defaults: Mapping[str, str] | None = None,
    ) -> AccountClosed | None:
        defaults = dict(mo_defaults or {})
        pending: list[int] = []  # the end and the masking that go on in pages (pending_ends)

        async def stop_sending(c: asyncpg.Connection) -> bool:
            """First, as a disable does (and as on SQLite): the account stops sending, and its
            waiting messages end (ERASED, refunded) in pages of their own transactions, before
            the close's, whose write-off counts their refunds. In the close's one transaction
            they were locked (with every message the account ever had) to its commit."""
            status = await lock_account(c, account_id)  # after the accepts in progress
            if status is None:
                return False
            if status == "active":
                # updated_at moves on, as every change's (PostgresStore.update_account).
                await c.execute(
                    "UPDATE accounts SET status = 'disabled', "
                    "updated_at = GREATEST($2, updated_at + 1) WHERE id = $1",
                    account_id,
                    now,
                )
            if status != "closed":
                # Nothing is posted from here on, as in the close's one transaction: the pages'
                # ends queue no report without a URL (committed per page and posted, they named
                # the numbers of an account being erased). A close stopped part-way leaves the
                # account disabled without its URLs: close it again.
                await c.execute(
                    "UPDATE accounts SET status_callback_url = NULL, mo_callback_url = NULL "
                    "WHERE id = $1",
                    account_id,
                )
                await pending_ends.start(c, account_id, "account", None, "ERASED", now, pending)
            return True

        if not (await pending_ends.run(self.pool, stop_sending, pending, now))[0]:
            return None

        async def job(c: asyncpg.Connection) -> AccountClosed | None:
            # The account lock first, as an accept takes it: no send slips in while closing.
            found = await c.fetchval(
                "SELECT 1 FROM accounts WHERE id = $1 FOR NO KEY UPDATE", account_id
            )
            if found is None:
                return None
            # First, while the messages still name the numbers (as an erasure does), and while
            # the account still holds its addresses (a closed one holds none).
            keys = await _account_waiting_mo_keys(c, account_id, mo_prefixes)
            keys += await _held_waiting_mo_keys(c, account_id, None, await _assigned(c), defaults)
            await _drop_mo_groups(c, keys)
            # What still waits (a message back from a bind, one an accept taking no lock
            # committed after the pages' boundary) ends here, before the pockets are read: its
            # refund is part of what the account is owed. Few: by the queue's partial indexes.
            for state in ("queued", "claimed"):
                where = f"q_state = '{state}' AND account_id = $1"
                await end_queued_ids(c, where, (account_id,), "ERASED", now)
            # Its MO inbox, then every message it ever had: masked in pages after this
            # (postgres_ends.mask_mo_page, erase_page), reads answering them masked meanwhile
            # (postgres_ends.MO_MASKING, masking); then its stored answers deleted in pages
            # (drop_answers_page).
            await start_erase(c, account_id, "+***", now, pending)
            # After the refunds: what the account holds now is what it is owed or loses.
            entries = adm.close_plan(await read_pockets(c, account_id), now)
            await append_entries(c, account_id, entries)
            # updated_at never back (the first step moved it on; closed, it stays closed).
            await c.execute(
                "WITH a AS (UPDATE accounts SET status = 'closed', closed_at = $2, "
                "updated_at = GREATEST($2, updated_at), status_callback_url = NULL, "
                "mo_callback_url = NULL "
                "WHERE id = $1), "
                "k AS (UPDATE app_keys SET status = 'revoked', revoked_at = $2 "
                "WHERE account_id = $1 AND status = 'active'), "
                "o AS (DELETE FROM optouts WHERE account_id = $1), "
                "d AS (DELETE FROM daily_counts WHERE account_id = $1), "
                "r AS (DELETE FROM rate_buckets WHERE account_id = $1) "
                "DELETE FROM webhook_outbox WHERE account_id = $1 AND state = 'pending'",
                account_id,
                now,
            )
            return AccountClosed(tuple(entries))

        closed, _masked = await pending_ends.run(self.pool, job, pending, now)
        return closed


async def _end_queued(
    c: asyncpg.Connection,
    account_id: str,
    numbers: list[str],
    error: str,
    now: int,
) -> None:
    """End this account's messages to `numbers` that still wait in the queue (scheduled ones
    included) as expired unsent with `error`, refunded like any message that ends unsent."""
    where = "account_id = $1 AND recipient = ANY($2::text[])"
    await end_queued_where(c, where, (account_id, numbers), error, now)


async def lock_account(c: asyncpg.Connection, account_id: str) -> str | None:
    """Take the account's row lock, and read its status (None: no such account), before a
    change that must come after the accepts in progress: one that ends its waiting messages (a
    disable, a template or sign deleted or rejected), or a key added (not after a close). An
    accept holds that lock while it reads the template's and sign's status and inserts its
    messages: without it the change read past an accept in progress (READ COMMITTED), whose
    message then stayed queued, went out and stayed charged."""
    return await c.fetchval("SELECT status FROM accounts WHERE id = $1 FOR UPDATE", account_id)


async def end_queued_where(
    c: asyncpg.Connection,
    where: str,
    args: Sequence[Any],
    error: str,
    now: int,
    *,
    in_flight: bool = True,
) -> int:
    """The messages `where` finds that still wait in the queue, ended as
    sqlite_rules.end_queued says (their places given back in the store's quota days), those on a
    bind included with `in_flight`; how many ended (end_queued_ids)."""
    return len(await end_queued_ids(c, where, args, error, now, in_flight=in_flight))


async def end_queued_ids(
    c: asyncpg.Connection,
    where: str,
    args: Sequence[Any],
    error: str,
    now: int,
    *,
    in_flight: bool = True,
    later: Any = None,
) -> list[str]:
    """end_queued_where, answering the ids it ended (never tried; the others found are held).
    The rows are locked in id order (the pipeline's order).

    Rows a claim scan holds a moment are waited for, not skipped: PostgreSQL then reads them
    again, so one the claim passed over or parked is still ended. Skipped, an opted-out number's
    queued message was sent (and charged) once its route came back."""
    from bridge.domain import lifecycle as lc
    from bridge.store import postgres_pipeline as pipe

    states = "('queued', 'claimed')" if in_flight else "('queued')"
    rows = await c.fetch(
        f"SELECT id, q_state = 'queued' AND {NEVER_TRIED} FROM messages WHERE {where} "
        f"AND q_state IN {states} ORDER BY id FOR UPDATE",
        *args,
    )
    queued = [r[0] for r in rows if r[1]]
    held = [r[0] for r in rows if not r[1]]
    if held:  # see _hold_tried
        await _hold_tried(c, held, now, error)
    if queued:
        await c.execute(
            "UPDATE segments SET state = $2, done_at = $3, error_code = $4 "
            "WHERE message_id = ANY($1::text[]) AND state = 'queued'",
            queued,
            lc.SEG_EXPIRED_UNSENT,
            now,
            error,
        )
        await pipe.rollup_messages(c, dict.fromkeys(queued, True), now, later=later)
    return queued


async def _hold_tried(c: asyncpg.Connection, ids: list[str], now: int, error: str) -> None:
    """Messages on a bind, or queued after one (a submit unanswered, released to wait for its
    late answer; a part accepted before the message came back), are not ended here: ended and
    refunded now, a late acceptance would find nothing to record and the SMSC deliver for free.
    Their validity ends now instead: past their hold the next claim or sweep ends them unsent
    with `error` (end_error), unless the late answer came."""
    await c.execute(
        "UPDATE messages SET expires_at = LEAST(COALESCE(expires_at, $2), $2), "
        # Unless its own validity ran out first (SET reads the row as it was).
        "end_error = CASE WHEN COALESCE(expires_at, $2 + 1) > $2 THEN COALESCE(end_error, $3) "
        "ELSE end_error END WHERE id = ANY($1::text[])",
        ids,
        now,
        error,
    )


async def _erase(
    c: asyncpg.Connection,
    account_id: str,
    number: str,
    masked: str,
    now: int,
) -> int:
    """One number's erasure: the account's messages to it read into the daemon, locked, their
    ids passed back as an array. They are one recipient's, few; an account's close, whose
    messages are its whole history, are masked in pages (postgres_ends.erase_page)."""
    from bridge.domain import lifecycle as lc
    from bridge.store import postgres_pipeline as pipe

    args: list[Any] = [account_id, number]
    where = "account_id = $1 AND recipient = $2"
    # Every row to be rewritten, locked in id order (the pipeline's lock order); the queued ones
    # as they are once the lock is held.
    rows = await c.fetch(
        f"SELECT id, q_state, {NEVER_TRIED} FROM messages WHERE {where} ORDER BY id FOR UPDATE",
        *args,
    )
    if not rows:
        await c.execute(
            f"UPDATE mo_inbox SET source = ${len(args) + 1}, text = NULL "
            f"WHERE {where.replace('recipient', 'source')}",
            *args,
            masked,
        )
        return 0
    queued = [r[0] for r in rows if r[1] == "queued" and r[2]]
    # In flight, or queued after a try (_hold_tried): not recalled, but if it comes back to the
    # queue (a timeout, a throttle) its next claim finds it expired instead of sending the
    # blanked parts to the mask.
    held = [r[0] for r in rows if r[1] == "claimed" or (r[1] == "queued" and not r[2])]
    if held:
        await _hold_tried(c, held, now, "ERASED")
    if queued:
        await c.execute(
            "UPDATE segments SET state = $2, done_at = $3, error_code = 'ERASED' "
            "WHERE message_id = ANY($1::text[]) AND state = 'queued'",
            queued,
            lc.SEG_EXPIRED_UNSENT,
            now,
        )
        await pipe.rollup_messages(c, dict.fromkeys(queued, True), now)
    m = len(args) + 1
    # The locked rows only: a message accepted meanwhile is not half-erased (text kept, parts
    # blanked); the next erasure gets it.
    n = await c.fetchval(
        f"WITH s AS (UPDATE segments SET short_message = ''::bytea, tlvs = ''::bytea "
        f"WHERE message_id = ANY(${m + 1}::text[])), "
        f"mo AS (UPDATE mo_inbox SET source = ${m}, text = NULL "
        f"WHERE {where.replace('recipient', 'source')}), "
        f"u AS (UPDATE messages SET recipient = ${m}, text = NULL, client_ref = NULL "
        f"WHERE id = ANY(${m + 1}::text[]) RETURNING 1) "
        "SELECT COUNT(*) FROM u",
        *args,
        masked,
        [r[0] for r in rows],
    )
    return int(n)


# A long MO's reference, as add_mo_part and store_mo_from_parts lock it (NS_MO).
MoKey = tuple[str, str, str, int]


async def _drop_mo_groups(c: asyncpg.Connection, keys: Sequence[MoKey]) -> int:
    """Drop the waiting parts of these references, under the lock add_mo_part and
    store_mo_from_parts take, all of them in one sorted take (no deadlock between two erasures).

    Without it, a part being added read the earlier parts before the erasure dropped them and
    completed the message with them after it; and an assembly's check that its parts are still
    kept read them while the erasure's delete was not committed, stored the MO after the
    erasure masked the inbox, and brought the erased text back. With it, the part's transaction
    commits first (its part is then dropped too) or comes after (its reference's parts gone);
    an MO stored first is masked by the erasure's later statements, which see it."""
    from bridge.store import postgres_pipeline as pipe

    keys = list(dict.fromkeys(keys))
    if not keys:
        return 0
    await pipe.lock_keys(c, pipe.NS_MO, ["\x1f".join(map(str, k)) for k in keys])
    # Read committed: this statement sees what the lock's holders committed.
    status = await c.execute(
        "DELETE FROM mo_parts WHERE (smsc, source, destination, ref) IN "
        "(SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[]))",
        *(list(col) for col in zip(*keys, strict=True)),
    )
    return int(status.split()[-1])


async def _assigned(c: asyncpg.Connection) -> list[tuple[str, tuple[str, ...]]]:
    return [(r[0], senders_of(r[1])) for r in await c.fetch(ASSIGNMENTS_SQL)]


async def _held_waiting_mo_keys(
    c: asyncpg.Connection,
    account_id: str,
    sources: Sequence[str] | None,
    assigned: Sequence[tuple[str, Sequence[str]]],
    defaults: Mapping[str, str],
) -> list[MoKey]:
    """The references of waiting parts (from `sources`; anyone's when None) to an address the
    account holds alone (see the SQLite engine's _drop_held_waiting_mo)."""
    if not any(a == account_id for a, _ in assigned):
        return []
    rows = await c.fetch(
        "SELECT DISTINCT smsc, source, destination, ref FROM mo_parts "
        "WHERE $1::text[] IS NULL OR source = ANY($1::text[])",
        None if sources is None else list(sources),
    )
    held = set(held_alone(account_id, assigned, [(r[0], r[2]) for r in rows], defaults))
    return [(r[0], r[1], r[2], r[3]) for r in rows if (r[0], r[2]) in held]


async def _account_waiting_mo_keys(
    c: asyncpg.Connection, account_id: str, prefixes: Sequence[str]
) -> list[MoKey]:
    """The references of the waiting parts that an erasure of any number the account wrote to
    would drop (see the SQLite engine)."""
    sources = [r[0] for r in await c.fetch("SELECT DISTINCT source FROM mo_parts")]
    candidates = list(dict.fromkeys(n for s in sources for n in mo_source_numbers(s, prefixes)))
    if not candidates:
        return []
    rows = await c.fetch(
        "SELECT DISTINCT recipient FROM messages WHERE account_id = $1 "
        "AND recipient = ANY($2::text[])",
        account_id,
        candidates,
    )
    keys: list[MoKey] = []
    for (number,) in rows:
        keys += await _waiting_mo_keys(
            c, account_id, number, list(mo_source_forms(number, prefixes))
        )
    return keys


async def _waiting_mo_keys(
    c: asyncpg.Connection, account_id: str, number: str, sources: list[str]
) -> list[MoKey]:
    """The references of the waiting parts from `number` (as `sources`) of long MOs that are
    replies to this account (see the SQLite engine's _drop_waiting_mo)."""
    senders = [
        r[0]
        for r in await c.fetch(
            "SELECT DISTINCT sender FROM messages WHERE account_id = $1 AND recipient = $2",
            account_id,
            number,
        )
    ]
    if not senders:
        return []  # it never wrote to the number: no reply from it is this account's by history
    dests = reply_destinations(senders)
    rows = await c.fetch(
        "SELECT DISTINCT smsc, source, destination, ref FROM mo_parts "
        "WHERE source = ANY($1::text[]) AND ($2::text[] IS NULL OR destination = ANY($2::text[]))",
        sources,
        None if dests is None else list(dests),
    )
    return [(r[0], r[1], r[2], r[3]) for r in rows]
