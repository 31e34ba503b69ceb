"""Session 47's review (h7): a read of a closed account's message while its masking ends in
another process (SQLite, a real store file).

SQLite's GET /v1/messages/{id} read the row first and probed the masking after, in statements
of their own (the loop's connection reads without a transaction). An acceptor's read that
straddled the owner's last masking chunk read the row unmasked, then found no masking under
way, and answered the number and the text of an account whose close had answered. The probe
now comes first, as the list's: a masking it misses had not begun, so the close had not
answered yet. PostgreSQL reads both in one statement.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bridge.store import sqlite_ends
from bridge.store.models import AcceptBatch, Account
from bridge.store.sqlite import SqliteStore
from tests.messages import one_part

NOW = 1_700_000_000_000
MASK = "+***"


async def test_a_message_read_while_another_process_ends_the_masking_is_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "bridge.db"
    store = SqliteStore(path)
    await store.open()
    try:
        await store.create_account(Account(id="acc", name="acc", created_at=NOW, updated_at=NOW))
        msgs = tuple(
            one_part(f"m{k:03d}", "acc", f"+86138{k:08d}", NOW, client_ref=f"ref{k}")
            for k in range(100)
        )
        assert (await store.accept(AcceptBatch("acc", msgs, None, None), NOW)).accepted
        monkeypatch.setattr(sqlite_ends, "ERASE_CHUNK", 10)

        async def stopped(*_args: object, **_kw: object) -> int:
            return 0

        monkeypatch.setattr(sqlite_ends, "finish", stopped)  # the close's chunks: elsewhere
        assert await store.close_account("acc", NOW + 1) is not None
        monkeypatch.undo()

        def end_masking_elsewhere() -> None:
            """The owner's last chunks commit: every row masked, the masking's row gone."""
            other = sqlite3.connect(path)
            try:
                other.execute(
                    "UPDATE messages SET recipient=?, text=NULL, client_ref=NULL "
                    "WHERE account_id='acc'",
                    (MASK,),
                )
                other.execute("DELETE FROM pending_ends WHERE scope='erase'")
                other.commit()
            finally:
                other.close()

        probe = sqlite_ends.masking
        calls: list[int] = []

        def masking(c: sqlite3.Connection, account_id: str) -> Any:
            if not calls:
                end_masking_elsewhere()
            calls.append(1)
            return probe(c, account_id)

        monkeypatch.setattr(sqlite_ends, "masking", masking)
        got = await store.get_message("acc", "m090")
        assert calls
        assert got is not None
        assert (got.recipient, got.text, got.client_ref) == (MASK, None, None)
    finally:
        await store.close()
