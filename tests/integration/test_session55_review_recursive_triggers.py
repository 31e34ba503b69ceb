"""SQLite: the account row's version triggers (migration 0037) with recursive triggers on.

Migration 0037's AFTER UPDATE trigger updates the row it fires for. As first written it ended
only because SQLite's `recursive_triggers` is off by default: a connection that turns it on (an
operator's `sqlite3` with `PRAGMA recursive_triggers=ON` in ~/.sqliterc, a tool or SQLite build
that defaults it on, which SQLite's documentation allows a future release to do) fired it again
for its own UPDATE until "too many levels of trigger recursion": every insert and update of an
account failed there, though the README's Upgrades entry says an operator's writes keep working
(session 55's review). It now fires only while the statement left `row_version` as it was.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from bridge.store.sqlite import SqliteStore
from tests.integration.test_sqlite_accept_cursor import send
from tests.integration.test_sqlite_accept_cursor import store as store
from tests.integration.test_store_rules import NOW, account


def _recursive(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA recursive_triggers=ON")
    return db


def _version(db: sqlite3.Connection, aid: str = "acc_a") -> int:
    (v,) = db.execute("SELECT row_version FROM accounts WHERE id=?", (aid,)).fetchone()
    return int(v)


async def test_account_writes_work_and_change_the_version_with_recursive_triggers_on(
    store: SqliteStore,
) -> None:
    first = await store.accept(send(1, "n1", "k1"), NOW)  # the Account held with its version
    assert first.accepted
    with closing(_recursive(store.path)) as db:
        before = _version(db)
        db.execute("UPDATE accounts SET status='disabled', updated_at=? WHERE id='acc_a'", (NOW,))
        disabled = _version(db)
        assert disabled != before
        # An update that names row_version but leaves it as it was still gets a new one.
        db.execute("UPDATE accounts SET tps=7, row_version=row_version WHERE id='acc_a'")
        assert _version(db) not in (before, disabled)
        # An insert (the CLI's create, a re-import) gets one too, once.
        a = account("acc_r")
        db.execute(
            "INSERT INTO accounts (id, name, kind, raw_text, marketing, default_country, tps, "
            "daily_quota, webhook_secret_enc, status, created_at, updated_at, "
            "low_balance_threshold, report_format) "
            "VALUES (?,?,?,0,0,?,0,0,?,'active',?,?,0,?)",
            (a.id, a.name, a.kind, a.default_country, a.webhook_secret_enc, NOW, NOW,
             a.report_format),
        )  # fmt: skip
        assert isinstance(_version(db, "acc_r"), int)
    # The daemon's next accept sees the account disabled behind it.
    out = await store.accept(send(2, "n2", "k2"), NOW)
    assert not out.accepted and out.auth_refusal == "disabled"
