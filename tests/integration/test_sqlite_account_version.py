"""SQLite: an account row's version (migration 0037), and the accept that reads the row only when
it changed (session 55).

Every signed send reads its key's account inside the store's write lock. The statement built the
row as one JSON text each time (~24 k instructions of the lock's ~275 k a one-part accept). Now a
trigger gives the row a new random `row_version` at every insert and update, whoever writes it,
and an accept passes the version whose Account its process holds: the statement answers NULL for
an unchanged row. These tests hold the version to every kind of write (the store's own, those
that leave `updated_at` alone, another connection's), count that an unchanged account is not
built again, and check that a row changed behind the daemon (an operator's sqlite3) is seen by
the very next accept, as it was when every accept read the whole row.
"""

from __future__ import annotations

import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge.domain.ledger import topup  # noqa: E402
from bridge.store import migrate  # noqa: E402
from bridge.store import sqlite as engine  # noqa: E402
from bridge.store.sqlite import SqliteStore  # noqa: E402
from tests.integration.test_sqlite_accept_cursor import send  # noqa: E402
from tests.integration.test_sqlite_accept_cursor import store as store  # noqa: E402
from tests.integration.test_store_rules import NOW  # noqa: E402


def _sql(store: SqliteStore, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """`sql` on a connection of its own (another writer than the daemon's), committed."""
    with closing(sqlite3.connect(store.path)) as db:
        rows = db.execute(sql, args).fetchall()
        db.commit()
        return rows


def _version(store: SqliteStore) -> int:
    (v,) = _sql(store, "SELECT row_version FROM accounts WHERE id='acc_a'")[0]
    return int(v)


async def test_every_write_of_an_account_row_changes_its_version(store: SqliteStore) -> None:
    seen = {_version(store)}  # set at the insert
    # The store's own writes: a setting (updated_at moves), the low-balance mark and a
    # webhook secret's reseal (updated_at stays), then another connection's.
    await store.update_account("acc_a", {"tps": 5}, NOW + 1)
    seen.add(_version(store))
    _sql(store, "UPDATE accounts SET low_warned_at=? WHERE id='acc_a'", (NOW,))
    seen.add(_version(store))
    (secret,) = _sql(store, "SELECT webhook_secret_enc FROM accounts WHERE id='acc_a'")[0]
    assert await store.reseal("account", "acc_a", bytes(secret), b"resealed")
    seen.add(_version(store))
    assert len(seen) == 4, seen
    # The trigger's own write is not counted as the statement's.
    with closing(sqlite3.connect(store.path)) as db:
        cur = db.execute("UPDATE accounts SET marketing=1 WHERE id='acc_a'")
        assert cur.rowcount == 1
        db.commit()


async def test_an_unchanged_account_is_not_built_again(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    real = engine.account_json_cached

    def counting(text: str) -> Any:
        built.append(text)
        return real(text)

    monkeypatch.setattr(engine, "account_json_cached", counting)
    await store.append_ledger("acc_a", topup(10_000, NOW, "more"))
    assert (await store.accept(send(1, "n1", "k1"), NOW)).accepted
    before = len(built)
    for n in range(2, 5):
        assert (await store.accept(send(n, f"n{n}", f"k{n}"), NOW)).accepted
    # Read once at most (the first accept of this process may hold it already), then answered
    # by the version alone.
    assert before <= 1 and len(built) == before, built


async def test_a_row_changed_behind_the_daemon_is_seen_at_once(store: SqliteStore) -> None:
    await store.append_ledger("acc_a", topup(10_000, NOW, "more"))
    assert (await store.accept(send(1, "n1", "k1"), NOW)).accepted
    assert (await store.accept(send(2, "n2", "k2"), NOW)).accepted  # from the version
    # An operator's sqlite3 disables the account and leaves updated_at alone: a cache keyed
    # by updated_at would still accept.
    _sql(store, "UPDATE accounts SET status='disabled' WHERE id='acc_a'")
    out = await store.accept(send(3, "n3", "k3"), NOW)
    assert not out.accepted and out.auth_refusal == "disabled"
    _sql(store, "UPDATE accounts SET status='active' WHERE id='acc_a'")
    assert (await store.accept(send(4, "n4", "k4"), NOW)).accepted
    # A rate set behind it: the next accept takes from the account's bucket.
    _sql(store, "UPDATE accounts SET tps=1000 WHERE id='acc_a'")
    assert (await store.accept(send(5, "n5", "k5"), NOW)).accepted
    assert _sql(store, "SELECT COUNT(*) FROM rate_buckets WHERE account_id='acc_a'") == [(1,)]


async def test_the_migration_gives_existing_accounts_a_version(store: SqliteStore) -> None:
    # The store as schema 36 left it: no column, no triggers, one account.
    from types import SimpleNamespace

    from tests.store_engines import schema_before

    await store.close()
    engine_ = SimpleNamespace(name="sqlite", location=str(store.path))
    await schema_before(engine_, 37, 10_000)  # type: ignore[arg-type]
    assert _sql(store, "SELECT name FROM sqlite_master WHERE type='trigger'") == []
    reopened = SqliteStore(store.path)
    await reopened.open()
    try:
        assert await reopened.schema_version() == migrate.latest("sqlite") >= 37
        assert _version(reopened) is not None
        triggers = _sql(reopened, "SELECT name FROM sqlite_master WHERE type='trigger'")
        assert sorted(triggers) == [("accounts_version_insert",), ("accounts_version_update",)]
        assert (await reopened.accept(send(1, "n1", "k1"), NOW)).accepted
    finally:
        await reopened.close()
