"""SQLite: the accept's key statement carries only what the accept cannot know (session 62).

The keyed accept reads its key, its account and the send's facts in one statement inside the
write lock (`sqlite._authorize`). Its row was ten columns: the key's status, the account as JSON
(NULL at the version held), the row's version, and `sqlite_rules._one_cols`' seven. The sqlite3
module describes and converts every column at each execute (3.11's `fetchone` hands the GIL over
around each one's type), ~1.5 k instructions a column, NULL or not. Now the first three are one
head column (NULL in the usual case: an active key, the account at the version held), a fact
whose value is NULL whatever the store holds is not a column (the sign's and the template's
status without them, the history without a rule over the number, today's count and the pockets
when an earlier accept of the batch read them or the send is not billed), and the opted-out and
blocked values are one column (1 and 2).

Held here, over a real SQLite file: for every pattern of the send (sign, template and revision,
each frequency rule's history, billed or not, the account's version held, current, stale or
none, the count and pockets read or not), every key (active, revoked, another account's,
unknown) and number (opted out, blocked, both, neither, with a history or not), and account
rows with a version and without one, the outcome, the Account and the seven values the accept
takes from the new statement are those the statement before it gave (its text rebuilt here from
`_one_cols`); and the usual send's statement has two or three columns.
"""

from __future__ import annotations

import itertools
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge.domain.admission import FrequencyRule, Priced, Rules  # noqa: E402
from bridge.domain.frequency import Limits  # noqa: E402
from bridge.domain.ledger import topup  # noqa: E402
from bridge.store import account_rows, sqlite_rules  # noqa: E402
from bridge.store import sqlite as sqlite_store  # noqa: E402
from bridge.store.account_rows import ACCOUNT_JSON_SQLITE, account_json_cached  # noqa: E402
from bridge.store.models import AppKey  # noqa: E402
from bridge.store.sqlite import SqliteStore  # noqa: E402
from tests.integration.test_store_rules import NOW, account  # noqa: E402

NUMBERS = {
    "+8613800000001": "neither",
    "+8613800000002": "opted",
    "+8613800000003": "blocked",
    "+8613800000004": "both",
    "+8613800000005": "history",
}

# The statement before session 62, as `_authorize_facts_sql` made it over `_one_cols`.
_OLD_HEAD = (
    "SELECT k.status, CASE WHEN a.row_version=:aver AND a.id=:acc THEN NULL "
    f"ELSE {ACCOUNT_JSON_SQLITE.format(t='a')} END AS account_json, a.row_version"
)


def _old_sql(cols: str) -> str:
    return (
        f"{_OLD_HEAD}, {cols} FROM app_keys k JOIN accounts a "
        "ON a.id = k.account_id WHERE k.key_id=:key_id"
    )


@pytest.fixture
async def db(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = SqliteStore(tmp_path / "bridge.db")
    await s.open()
    await s.create_account(account())
    await s.create_account(account("acc_b"))
    await s.append_ledger("acc_a", topup(1000, NOW, "funds"))
    await s.add_key(AppKey("K1", "acc_a", b"sealed", "active", NOW), max_active=4)
    await s.add_key(AppKey("K2", "acc_a", b"sealed", "active", NOW), max_active=4)
    await s.revoke_key("K2", NOW)
    await s.add_key(AppKey("KB", "acc_b", b"sealed", "active", NOW), max_active=4)
    await s.close()
    c = sqlite3.connect(tmp_path / "bridge.db", isolation_level=None)
    c.executescript(
        f"""
        INSERT INTO signs (account_id, name, canonical, source, status, created_at)
            VALUES ('acc_a', 'Acme', 'acme', 'x', 'approved', {NOW}),
                   ('acc_a', 'Beta', 'beta', 'x', 'pending', {NOW});
        INSERT INTO templates (code, account_id, kind, name, content, status, created_at,
                               revision)
            VALUES ('T1', 'acc_a', 'verification', 't', 'c', 'approved', {NOW}, 3);
        INSERT INTO optouts VALUES ('acc_a', '+8613800000002', 'api', {NOW}),
                                   ('acc_a', '+8613800000004', 'api', {NOW});
        INSERT INTO dnc_entries VALUES ('+8613800000003', 'L1', 1),
                                       ('=+8613800000004', 'L1', 1);
        INSERT INTO daily_counts VALUES ('acc_a', '2023-11-15', 7);
        INSERT INTO pockets VALUES ('acc_a', 'voucher', 0, {NOW + 10**9});
        """
    )
    for sign_name, template, kind in (("Acme", None, None), (None, None, "verification"),
                                      ("Acme", "T1", None), (None, None, None)):  # fmt: skip
        c.execute(
            "INSERT INTO messages (id, account_id, batch_id, recipient, sign_name, template, "
            "text, encoding, data_coding, segments, billable_units, accepted_at, q_not_before, "
            "kind) VALUES (?, 'acc_a', 'b', '+8613800000005', ?, ?, 'x', 'gsm7', 0, 1, 1, ?, ?, ?)",
            (f"m{sign_name}{template}{kind}", sign_name, template, NOW - 1000, NOW - 1000, kind),
        )
    yield c
    c.close()


FREQUENCIES: list[Any] = [
    None,
    FrequencyRule("verification", None, None, Limits(1, 5, 10), "UTC", tuple(NUMBERS), (None,) * 5),
    FrequencyRule("template", "Acme", "T1", Limits(1, 5, 10), "UTC", tuple(NUMBERS), ()),
    FrequencyRule("raw", "Acme", None, Limits(1, 5, 10), "UTC", tuple(NUMBERS), ()),
]


def _rules(sign: str | None, template: str | None, rev: int | None, fr: Any, billed: bool) -> Rules:
    return Rules(
        sign_name=sign,
        template_code=template,
        template_revision=rev,
        frequency=fr,
        charges=(Priced("m1", 300, False),) if billed else (),
        billing=billed,
        tz="Asia/Shanghai",
    )


def _old(
    c: sqlite3.Connection, cols: str, args: dict[str, Any], key: str, known: Any, reads: bool
) -> tuple[str, Any, list[Any], Any]:
    """The outcome, Account, seven values and version kept, as the statement before gave them."""
    aver = None if known is None else known[0]
    row = c.execute(
        _old_sql(cols), {**args, "reads": int(reads), "key_id": key, "aver": aver}
    ).fetchone()
    if row is None:
        return "unknown_key", None, [], None
    if row[1] is None and known is not None:
        account, kept = known[1], None
    else:
        account, kept = account_json_cached(row[1]), row[2]
    return ("revoked" if row[0] != "active" else "ok"), account, list(row[3:]), kept


def _new(
    c: sqlite3.Connection, cols: str, values: tuple[Any, ...], key: str, known: Any, reads: bool
) -> tuple[str, Any, list[Any], Any, int]:
    """The same from the new statement, as the accept reads it (`SqliteStore.accept`)."""
    aver = None if known is None else known[0]
    nones = (*(values[i] is None for i in (1, 2, 3, 8, 9, 10)), aver is None)
    plans = sqlite_store._key_plan(cols, nones, values[6] == 1)
    sql, pick, row_of = plans[0] if reads else plans[1]
    got: list[Any] = []
    account_rows._BY_VERSION.clear()
    c.execute("BEGIN")
    try:
        outcome, account = sqlite_store._authorize(
            c, key, "n1", NOW + 1, NOW, [],
            (sql, pick((*values, key, aver)), known, got),
        )  # fmt: skip
        width = len(c.execute(sql, pick((*values, key, aver))).description or ())
    finally:
        c.execute("ROLLBACK")
    kept = None if account is None else account_rows._BY_VERSION.get(account.id, (None,))[0]
    if not got:
        return outcome, account, [], kept, width
    facts = sqlite_rules.key_facts(got[0], row_of)
    return outcome, account, facts, kept, width


@pytest.mark.parametrize("version", ["integer", "null"])
async def test_the_key_row_gives_what_the_ten_columns_gave(
    db: sqlite3.Connection, version: str
) -> None:
    if version == "null":
        # A row without a version (an operator's UPDATE): read as JSON every time, not kept.
        db.execute("UPDATE accounts SET row_version = NULL WHERE id = 'acc_a'")
    current = db.execute("SELECT row_version FROM accounts WHERE id='acc_a'").fetchone()[0]
    built = account_json_cached(
        db.execute(
            f"SELECT {ACCOUNT_JSON_SQLITE.format(t='a')} FROM accounts a WHERE id='acc_a'"
        ).fetchone()[0]
    )
    knowns = [None, (current, built), (12345, built)] if current is not None else [None]
    compared = 0
    for sign, template, rev, fr, billed in itertools.product(
        (None, "Acme", "Beta", "Nope"), (None, "T1", "T9"), (None, 3, 2), FREQUENCIES,
        (True, False),
    ):  # fmt: skip
        rules = _rules(sign, template, rev, fr, billed)
        for number, key, known, reads in itertools.product(
            NUMBERS, ("K1", "K2", "KB", "K404"), knowns, (True, False)
        ):
            got = sqlite_rules.one_facts_values("acc_a", rules, (number,), NOW)
            assert got is not None
            cols, values = got
            args = sqlite_rules.facts_query(got)[1]
            old = _old(db, cols, args, key, known, reads)
            new = _new(db, cols, values, key, known, reads)
            assert new[:4] == old, (sign, template, rev, fr, billed, number, key, known, reads)
            compared += 1
    assert compared == 4 * 3 * 3 * 4 * 2 * 5 * 4 * len(knowns) * 2


async def test_the_usual_sends_key_row_is_two_or_three_columns(db: sqlite3.Connection) -> None:
    current = db.execute("SELECT row_version FROM accounts WHERE id='acc_a'").fetchone()[0]
    built = account_json_cached(
        db.execute(
            f"SELECT {ACCOUNT_JSON_SQLITE.format(t='a')} FROM accounts a WHERE id='acc_a'"
        ).fetchone()[0]
    )
    known = (current, built)
    for fr, reads, want in (
        (None, False, 2),  # the head and the opted-out and blocked flags
        (FREQUENCIES[3], False, 3),  # and the history
        (FREQUENCIES[3], True, 5),  # and today's count and the pockets
    ):
        rules = _rules(None, None, None, fr, True)
        got = sqlite_rules.one_facts_values("acc_a", rules, ("+8613800000001",), NOW)
        assert got is not None
        outcome, account, facts, _kept, width = _new(db, got[0], got[1], "K1", known, reads)
        assert (outcome, account, width) == ("ok", built, want)
        assert facts == [7 if reads else None, None, None, 0, 0, "[]" if fr else None, facts[6]]
