"""SQLite: the keyed accept's one-column head (session 62, h2) against another process's writes
(session 62's review, r1).

`test_session62_key_row.py` holds the new key statement's row equal to the ten columns of the
statement before, over `_authorize` itself. Held here, end to end through `SqliteStore.accept`
over a real SQLite file, with the accepting store's caches warm (its Account held at the row's
version by an accept just before): between that accept and the next ones, a second store on the
same file (the bridge's own writes: a key revoked, an account disabled) and a plain connection
(an operator's sqlite3: a key's status typed "Active" or "active ", a key moved to another
account, an account renamed with spaces, quotes and non-ASCII, its `updated_at` moved, its
`row_version` set to a REAL, a TEXT with a space, NULL, or left to the trigger) change the row
the head is made of, for every number (opted out, blocked exactly or by prefix, both, neither)
and send (billed or not, a frequency rule's history read or not), alone or as the second accept
of a write batch (today's count and the pockets then not read: `HeldSums.base`). Each outcome is
the one the rows give (checked against an oracle written here, not the code), the money and the
count moved are the accepted ones', and the Account the store keeps for the account's version
is never another row's: the head's "F V J" split must not take a version or a status from the
JSON (a name with spaces), nor keep a version that is not the row's.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge.domain.admission import FrequencyRule  # noqa: E402
from bridge.domain.frequency import Limits  # noqa: E402
from bridge.domain.ledger import topup  # noqa: E402
from bridge.store import account_rows  # noqa: E402
from bridge.store.models import AcceptBatch, AcceptOutcome, AppKey  # noqa: E402
from bridge.store.sqlite import SqliteStore  # noqa: E402
from tests.integration.test_store_rules import NOW, account, billed, message, sign  # noqa: E402

WARM = "+8613800000009"  # the accept that warms the caches: nobody lists it
# Each number: (opted out, blocked).
NUMBERS = {
    "+8613800000001": (False, False),
    "+8613800000002": (True, False),
    "+8613800000003": (False, True),  # exact do-not-contact entry
    "+8613800000004": (True, True),
    "+8613811100005": (False, True),  # by the prefix +86138111
}
# The key the accept under test names, and what is done to K1 first: None for a status typed
# by an operator (the text given).
KEYS: dict[str, str | None] = {
    "active": "active",
    "revoked": None,  # the bridge's revoke_key, on the second store
    "Active": "Active",
    "active ": "active ",
    "other": "active",  # moved to acc_b by the operator
    "unknown": "active",  # the accept names K404
}
# What the operator does to the account's row, and to its row_version in the same UPDATE
# ("trigger": left to migration 0037's trigger, which sets a new random integer).
CONTENTS = ("none", "name", "disabled", "stale")
VERSIONS = ("trigger", "real", "text", "null", "integer")
_VERSION_SQL = {"real": "1.5", "text": "'7 0 x'", "null": "NULL", "integer": "4242"}
NAME = ' two  words "q" \\ 中文 '


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[SqliteStore, SqliteStore, Any]]:
    path = tmp_path / "bridge.db"
    a = SqliteStore(path)
    await a.open()
    await a.create_account(account())
    await a.create_account(account("acc_b"))
    await sign(a)
    await a.append_ledger("acc_a", topup(10**12, NOW, "funds"))
    for key in ("K1", "K2"):
        await a.add_key(AppKey(key, "acc_a", b"sealed", "active", NOW), max_active=4)
    other = SqliteStore(path)  # another process's store on the same file
    await other.open()
    op = sqlite3.connect(path, isolation_level=None)  # an operator's sqlite3
    account_rows._BY_VERSION.clear()
    try:
        yield a, other, op
    finally:
        op.close()
        await other.close()
        await a.close()


def _batch(n: int, key: str, number: str, billed_: bool, history: bool) -> AcceptBatch:
    m = message(f"m{n}", number)
    fr = (
        FrequencyRule("raw", "Acme", None, Limits(10**6, 10**6, 10**6), "UTC", (number,), ())
        if history
        else None
    )
    rules = billed(m, amount=100, frequency=fr)
    if not billed_:
        rules = billed(m, amount=100, frequency=fr, billing=False, charges=())
    return AcceptBatch(
        "acc_a",
        (m,),
        None,
        None,
        key_id=key,
        nonce=f"n{n}",
        nonce_expires_at=NOW + 10**6,
        account_version=NOW,
        rules=rules,
    )


def _sums(op: sqlite3.Connection) -> tuple[int, int]:
    cash = op.execute("SELECT amount FROM pockets WHERE account_id='acc_a' AND pocket='cash'")
    count = op.execute("SELECT coalesce(sum(messages), 0) FROM daily_counts")
    return cash.fetchone()[0], count.fetchone()[0]


def _want(key: str, status: str, content: str, number: str) -> tuple[Any, ...]:
    """The outcome the rows give: (accepted, auth refusal, refusal code)."""
    if key in ("other", "unknown"):
        return (False, "unknown_key", None)
    if status != "active":
        return (False, "revoked", None)
    if content == "disabled":
        return (False, "disabled", None)
    if content == "stale":
        return (False, "stale", None)
    opted, blocked = NUMBERS.get(number, (False, False))
    if opted:
        return (False, None, "RECIPIENT_OPTED_OUT")
    if blocked:
        return (False, None, "RECIPIENT_BLOCKED")
    return (True, None, None)


def _got(out: AcceptOutcome) -> tuple[Any, ...]:
    return (out.accepted, out.auth_refusal, None if out.refusal is None else out.refusal.code)


async def _reset(a: SqliteStore, op: sqlite3.Connection, n: int) -> None:
    """Every row as the fixture made it, then an accept that leaves the store's Account held at
    the row's version (so the next accept's head is NULL unless something changed)."""
    op.execute("UPDATE app_keys SET status='active', revoked_at=NULL, account_id='acc_a'")
    op.execute(
        "UPDATE accounts SET name='name-acc_a', status='active', updated_at=? WHERE id='acc_a'",
        (NOW,),
    )
    op.execute("DELETE FROM optouts")
    op.execute("DELETE FROM dnc_entries")
    op.executescript(
        f"""
        INSERT INTO optouts VALUES ('acc_a', '+8613800000002', 'api', {NOW}),
                                   ('acc_a', '+8613800000004', 'api', {NOW});
        INSERT INTO dnc_entries VALUES ('+8613800000003', 'L1', 1),
                                       ('=+8613800000004', 'L1', 1),
                                       ('+86138111', 'L1', 1);
        """
    )
    assert (await a.accept(_batch(n, "K2", WARM, True, False), NOW)).accepted
    version = op.execute("SELECT row_version FROM accounts WHERE id='acc_a'").fetchone()[0]
    held = account_rows.account_at_version("acc_a")
    assert held is not None and held[0] == version and held[1].name == "name-acc_a"


async def _change(
    other: SqliteStore, op: sqlite3.Connection, key: str, content: str, version: str
) -> None:
    status = KEYS[key]
    if status is None:
        assert await other.revoke_key("K1", NOW)
    elif status != "active":
        op.execute("UPDATE app_keys SET status=? WHERE key_id='K1'", (status,))
    if key == "other":
        op.execute("UPDATE app_keys SET account_id='acc_b' WHERE key_id='K1'")
    sets = {
        "none": [],
        "name": ["name=:name"],
        "disabled": ["status='disabled'"],
        "stale": [f"updated_at={NOW + 1}"],
    }[content]
    if version != "trigger":
        sets.append(f"row_version={_VERSION_SQL[version]}")
    if sets:
        op.execute(f"UPDATE accounts SET {', '.join(sets)} WHERE id='acc_a'", {"name": NAME})


async def _check_held(other: SqliteStore, op: sqlite3.Connection) -> None:
    """The Account kept for the account's row version is that row's, whenever the versions
    are equal as SQLite compares them (an accept's head would take it)."""
    held = account_rows.account_at_version("acc_a")
    if held is None:
        return
    same = op.execute(
        "SELECT row_version = ? FROM accounts WHERE id='acc_a'", (held[0],)
    ).fetchone()[0]
    if same:
        assert held[1] == await other.get_account("acc_a")


async def test_the_head_answers_what_another_process_left(
    stores: tuple[SqliteStore, SqliteStore, Any],
) -> None:
    a, other, op = stores
    n = 0
    checked = 0
    combos = [
        *itertools.product(KEYS, CONTENTS, VERSIONS, ["+8613800000001"], [True], [False]),
        *itertools.product(
            ["active", "revoked"], ["none", "name"], ["trigger", "text"], NUMBERS,
            [True, False], [True, False],
        ),
    ]  # fmt: skip
    for key, content, version, number, billed_, history in combos:
        for paired in (False, True):
            n += 3
            await _reset(a, op, n)
            await _change(other, op, key, content, version)
            before = _sums(op)
            status = KEYS[key] or "revoked"
            name = {"other": "K1", "unknown": "K404"}.get(key, "K1")
            last = _batch(n + 2, name, number, billed_, history)
            if paired:  # first an accept that reads today's count and the pockets for both
                commits = a._runner.commits
                outs = list(
                    await asyncio.gather(
                        a.accept(_batch(n + 1, "K2", WARM, billed_, history), NOW),
                        a.accept(last, NOW),
                    )
                )
                assert a._runner.commits == commits + 1, "not one write batch"
                wants = [
                    _want("active", "active", content, WARM),
                    _want(key, status, content, number),
                ]
            else:
                outs = [await a.accept(last, NOW)]
                wants = [_want(key, status, content, number)]
            case = (key, content, version, number, billed_, history, paired)
            assert [_got(o) for o in outs] == wants, case
            accepted = sum(o.accepted for o in outs)
            assert _sums(op) == (before[0] - 100 * accepted * billed_, before[1] + accepted), case
            if outs[-1].auth_refusal == "stale":  # the row's Account, its name and all
                assert outs[-1].account == await other.get_account("acc_a"), case
            await _check_held(other, op)
            checked += 1
    assert checked == 2 * (6 * 4 * 5 + 2 * 2 * 2 * 5 * 2 * 2)
