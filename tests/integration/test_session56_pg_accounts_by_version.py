"""Session 56 review: the PostgreSQL store's accounts held by row version follow
`server.account_cache`, as SQLite's do.

h6 kept the Account built for each account with its row's version (`PostgresStore._by_version`:
an accept's first statement then answers NULL for the account's columns while the row keeps
that version) in a dict of 256, emptied when full; h5 sized SQLite's caches by
`server.account_cache` (default 10,000, least recently used dropped) but not this one. An
instance taking sends from more than 256 accounts round-robin built the Account again on nearly
every accept (the row encoded, decoded and built: what the cache is for).

A real PostgreSQL (the tests' throwaway cluster), 300 accounts each with its key and sign:
- a second round of one signed accept per account builds no Account (merged tree: 256 built
  again, the dict emptied at 256);
- with the bound at 16 it holds the 16 most recently used, and an account that changed between
  its sends is still seen (its next accept reads the row: another version).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from bridge.domain.ledger import topup
from bridge.store import account_rows
from bridge.store import postgres as pg_mod
from bridge.store.models import AcceptBatch, AppKey, IdempotencyRecord
from bridge.store.postgres import PostgresStore
from tests.integration.test_store_rules import NOW, account, billed, message, sign

ACCOUNTS = 300  # more than the 256 the dict held
DAY = 24 * 3_600_000


@pytest.fixture(autouse=True)
def _default_size() -> Iterator[None]:
    yield
    account_rows.set_account_cache(account_rows.ACCOUNT_CACHE_DEFAULT)


def _aid(i: int) -> str:
    return f"acc_{i:04d}"


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_dsn, min_size=1, max_size=8)
    await s.open()
    try:

        async def one(i: int) -> None:
            aid = _aid(i)
            await s.create_account(account(aid))
            await sign(s, aid=aid)
            await s.append_ledger(aid, topup(1_000_000, NOW, "funds"))
            await s.add_key(AppKey(f"K{i:04d}", aid, b"sealed", "active", NOW), max_active=2)

        for k in range(0, ACCOUNTS, 50):
            await asyncio.gather(*(one(i) for i in range(k, min(ACCOUNTS, k + 50))))
        yield s
    finally:
        await s.close()


_sends = iter(range(10**8))


def _signed(i: int) -> AcceptBatch:
    """A signed one-part accept of account `i`, to a new number (nonce and key its own)."""
    n = next(_sends)
    aid = _aid(i)
    m = message(f"m{n:08d}", f"+86138{n:08d}", account_id=aid)
    return AcceptBatch(
        aid,
        (m,),
        f"i{n}",
        IdempotencyRecord(f"h{n}", 202, b"{}"),
        NOW + DAY,
        key_id=f"K{i:04d}",
        nonce=f"n{n:016d}",
        nonce_expires_at=NOW + 600_000,
        rules=billed(m),
    )


async def _round(store: PostgresStore, accounts: range) -> None:
    for i in accounts:
        outcome = await store.accept(_signed(i), NOW)
        assert outcome.accepted, (i, outcome)


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The accounts whose Account the store built from a row."""
    out: list[str] = []
    real = pg_mod._account

    def counting(row: Any) -> Any:
        account = real(row)
        out.append(account.id)
        return account

    monkeypatch.setattr(pg_mod, "_account", counting)
    return out


async def test_a_second_round_over_300_accounts_builds_no_account(
    store: PostgresStore, built: list[str]
) -> None:
    await _round(store, range(ACCOUNTS))
    assert len(set(built)) == ACCOUNTS
    built.clear()
    await _round(store, range(ACCOUNTS))
    assert built == [], f"{len(built)} Accounts built again"
    assert len(store._by_version) == ACCOUNTS


async def test_the_bound_keeps_the_most_recent_and_a_change_is_seen(
    store: PostgresStore, built: list[str]
) -> None:
    account_rows.set_account_cache(16)
    await _round(store, range(ACCOUNTS))
    assert list(store._by_version) == [_aid(i) for i in range(ACCOUNTS - 16, ACCOUNTS)]
    built.clear()
    await _round(store, range(ACCOUNTS - 16, ACCOUNTS))  # all held: none built
    assert built == []
    # A hit is a use: the oldest held is used again, then one new account pushes out the
    # next oldest, not it.
    await _round(store, range(ACCOUNTS - 16, ACCOUNTS - 15))
    await _round(store, range(0, 1))
    assert _aid(ACCOUNTS - 16) in store._by_version
    assert _aid(ACCOUNTS - 15) not in store._by_version
    assert len(store._by_version) == 16
    # Changed between two of its sends: the next accept reads the row again (a new version).
    last = ACCOUNTS - 1
    await store.update_account(_aid(last), {"status": "disabled"}, NOW + 1)
    outcome = await store.accept(_signed(last), NOW)
    assert not outcome.accepted and outcome.auth_refusal == "disabled", outcome
    await store.update_account(_aid(last), {"status": "active"}, NOW + 2)
    built.clear()
    await _round(store, range(last, last + 1))
    assert built == [_aid(last)]
