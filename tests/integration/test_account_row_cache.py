"""The key check's account, built once per distinct row (account_rows.account_json_cached): a
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
    def row(i: int) -> str:
        return (f'["acc_{i}", "n", "prepaid", 1, 0, null, 0, 0, null, null, "73", "active", '
                '1, 2, 0, "native", null, null, null, null]')  # fmt: skip

    account_rows.set_account_cache(64)
    try:
        first = account_rows.account_json_cached(row(0))
        assert account_rows.account_json_cached(row(0)) is first
        assert first.webhook_secret_enc == b"s" and first.prev_webhook_secret_enc is None
        for i in range(1, 64 + 10):
            account_rows.account_json_cached(row(i))
        assert len(account_rows._BUILT) <= 64
        assert account_rows.account_json_cached(row(0)) == first
    finally:
        account_rows.set_account_cache(account_rows.ACCOUNT_CACHE_DEFAULT)


async def test_the_json_column_reads_the_account_as_its_columns_do(tmp_path: Path) -> None:
    """Every column, blobs (hex in the JSON) and NULLs included, as account_row reads them."""
    store = SqliteStore(str(tmp_path / "bridge.db"))
    await store.open()
    try:
        creds = await AccountService(store, Sealer(os.urandom(32))).create(
            "a", {"raw_text": True, "status_callback_url": "https://h/s", "tps": 3}, NOW
        )
        aid = creds.account.id
        with sqlite3.connect(tmp_path / "bridge.db", timeout=10) as other:
            other.execute(
                "UPDATE accounts SET prev_webhook_secret_enc=x'00ff10', senders='[\"106\"]', "
                "prev_webhook_secret_until=9, low_warned_at=4 WHERE id=?",
                (aid,),
            )
            sql = f"SELECT {account_rows.ACCOUNT_JSON_SQLITE.format(t='a')} FROM accounts a"
            text = other.execute(sql).fetchone()[0]
            columns = other.execute(f"SELECT {account_rows.ACCOUNT_COLS} FROM accounts").fetchone()
        other.close()
        got = account_rows.account_json_cached(text)
        assert got == account_rows.account_row(columns)
        assert got.prev_webhook_secret_enc == b"\x00\xff\x10" and got.senders == ("106",)
        assert got == await store.get_account(aid)
        outcome, checked = await store.authorize_request(creds.app_key, "n" * 17, EXPIRES, NOW)
        assert outcome == "ok" and checked == got
    finally:
        await store.close()
