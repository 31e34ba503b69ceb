"""The key check's account, built once per distinct row (account_rows.account_row_cached): a
row changed in any column is read as changed, its version (updated_at) the same or not.

Why these: the accept and the key check read the account inside the write lock and, since
session 48, answer the account value built before from an identical row. A cache keyed by
anything less than the whole row (the id, or the id and its version) would answer an account
another process changed without touching its version as it was: a disabled account taking
sends, an old rate."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from bridge.accounts import AccountService
from bridge.crypto import Sealer
from bridge.store import account_rows
from bridge.store.sqlite import SqliteStore

NOW = 1_800_000_000_000
EXPIRES = NOW + 601_000


async def test_an_account_changed_in_place_is_read_changed(tmp_path: Path) -> None:
    path = tmp_path / "bridge.db"
    store = SqliteStore(str(path))
    await store.open()
    try:
        creds = await AccountService(store, Sealer(os.urandom(32))).create(
            "a", {"raw_text": True}, NOW
        )
        outcome, before = await store.authorize_request(creds.app_key, "n" * 16 + "1", EXPIRES, NOW)
        assert outcome == "ok" and before is not None
        assert before.active and before.tps == 0
        # Another process's change, the version left as it was (an operator's SQL, a restore).
        with sqlite3.connect(path, timeout=10) as other:
            other.execute(
                "UPDATE accounts SET status='disabled', tps=7, low_warned_at=5 WHERE id=?",
                (creds.account.id,),
            )
        other.close()
        outcome, after = await store.authorize_request(creds.app_key, "n" * 16 + "2", EXPIRES, NOW)
        assert outcome == "ok" and after is not None
        assert after.updated_at == before.updated_at
        assert not after.active
        assert after.tps == 7
        assert after.low_balance_warned_at == 5
        # And back: the first row's account again, equal to the one read first.
        with sqlite3.connect(path, timeout=10) as other:
            other.execute(
                "UPDATE accounts SET status='active', tps=0, low_warned_at=NULL WHERE id=?",
                (creds.account.id,),
            )
        other.close()
        outcome, again = await store.authorize_request(creds.app_key, "n" * 16 + "3", EXPIRES, NOW)
        assert outcome == "ok" and again == before
    finally:
        await store.close()


def test_the_cache_is_bounded_and_answers_equal_rows_alike() -> None:
    def row(i: int) -> tuple[object, ...]:
        return (f"acc_{i}", "n", "prepaid", 1, 0, None, 0, 0, None, None, b"s", "active",
                1, 2, 0, "native", None, None, None, None)  # fmt: skip

    first = account_rows.account_row_cached(row(0))
    assert account_rows.account_row_cached(row(0)) is first
    assert first == account_rows.account_row(row(0))
    for i in range(1, account_rows._BUILT_MAX + 10):
        account_rows.account_row_cached(row(i))
    assert len(account_rows._BUILT) <= account_rows._BUILT_MAX
    assert account_rows.account_row_cached(row(0)) == first
