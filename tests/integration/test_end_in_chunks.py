"""An account's many waiting messages end in chunks, each a write transaction of its own
(bridge/store/sqlite_ends.py), on a real SQLite file.

Before, a disable (or a sign or template deleted or rejected, `marketing` or `raw_text` turned
off) ended every waiting message in the one transaction that made the change: ~20 µs of the
store's write lock per message, so with a million waiting every accept of every account waited
~20 s. END_CHUNK is made small here so a few hundred messages take several chunks. What both engines
do (the ends' chunks, the claims' guard, the sweep, the boundary, the clock's marks) is tested
on both in test_end_in_pages.py; the close's chunks, SQLite's own, here.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bridge.store import sqlite_ends as ends
from bridge.store.base import RESUME_AFTER_MS
from bridge.store.models import AcceptBatch, Account, NewMessage
from bridge.store.sqlite import SqliteStore
from tests.messages import one_part

NOW = 1_700_000_000_000
CHUNK = 40
BIG = 130  # four chunks: 40 + 40 + 40 + 10


def _shrink(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ends, "END_CHUNK", CHUNK)
    monkeypatch.setattr(ends, "ERASE_CHUNK", CHUNK)


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    _shrink(monkeypatch)


def _message(mid: str, account_id: str, number: str, sign: str | None = None) -> NewMessage:
    return one_part(mid, account_id, number, NOW, sign_name=sign)


async def _store(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(tmp_path / "bridge.db")
    await store.open()
    for aid in ("acc_big", "acc_other"):
        await store.create_account(
            Account(id=aid, name=aid, webhook_secret_enc=b"sealed", created_at=NOW, updated_at=NOW)
        )
    return store


async def _queue(store: SqliteStore, n: int, sign: str | None = None, first: int = 0) -> None:
    msgs = tuple(
        _message(f"m{k:06d}", "acc_big", f"+86138{k:08d}", sign) for k in range(first, first + n)
    )
    await store.accept(AcceptBatch("acc_big", msgs, None, None), NOW)


def _rows(path: Path, sql: str) -> list[tuple]:
    c = sqlite3.connect(path)
    try:
        return c.execute(sql).fetchall()
    finally:
        c.close()


def _states(path: Path) -> dict[str, int]:
    return dict(
        _rows(
            path,
            "SELECT COALESCE(error_code, q_state), COUNT(*) FROM messages "
            "WHERE account_id='acc_big' GROUP BY 1",
        )
    )


def _interleave(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> tuple[list[int], list[int], list[str]]:
    """Count the chunked end's steps; at the first, note acc_big's status and have another
    account's accept arrive while the end goes on. (steps, the steps done when that accept
    committed, the status seen)."""
    steps: list[int] = []
    between: list[int] = []
    seen: list[str] = []
    step = ends._step

    async def accept_other() -> None:
        other = (_message("other", "acc_other", "+8613900000000"),)
        await store.accept(AcceptBatch("acc_other", other, None, None), NOW + 2)
        between.append(len(steps))

    def counted(c: sqlite3.Connection, end_id: int, *args: Any) -> int | None:
        steps.append(end_id)
        if len(steps) == 1:
            (status,) = c.execute("SELECT status FROM accounts WHERE id='acc_big'").fetchone()
            seen.append(status)
            asyncio.get_running_loop().create_task(accept_other())
        return step(c, end_id, *args)

    monkeypatch.setattr(ends, "_step", counted)
    return steps, between, seen


async def test_a_close_masks_the_account_s_messages_in_chunks_and_the_sweep_finishes_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close ends what waits first, in chunks as a disable does (their refunds are part of
    what the account is owed at its write-off, which comes after them), then masks its
    messages, every one it ever sent, in chunks: ~5 µs each of the write lock, millions for a
    large account."""
    store = await _store(tmp_path)
    try:
        await _queue(store, BIG)
        db = tmp_path / "bridge.db"
        steps: list[str] = []
        step = ends._step

        def counted(c: sqlite3.Connection, end_id: int, *args: Any) -> int | None:
            row = c.execute("SELECT scope FROM pending_ends WHERE id=?", (end_id,)).fetchone()
            steps.append(row[0] if row else "done")
            return step(c, end_id, *args)

        monkeypatch.setattr(ends, "_step", counted)
        closed = await store.close_account("acc_big", NOW + 1)
        assert closed is not None
        # The waiting ones: 40 in the first transaction, then 40 + 40 + 10 and one that found
        # none left; then the masking: 40 in the close's transaction, then 40 + 40 + 10.
        assert steps == ["account"] * 3 + ["done"] + ["erase"] * 3
        assert _states(db) == {"ERASED": BIG}
        assert _rows(
            db, "SELECT COUNT(*) FROM messages WHERE recipient <> '+***' OR text IS NOT NULL"
        ) == [(0,)]
        assert _rows(db, "SELECT COUNT(*) FROM segments WHERE length(short_message) > 0") == [(0,)]
        assert _rows(db, "SELECT COUNT(*) FROM pending_ends") == [(0,)]

        # A close whose process stopped after its transaction: the sweep masks the rest.
        monkeypatch.undo()
        _shrink(monkeypatch)
        other = tuple(_message(f"o{k:04d}", "acc_other", f"+86139{k:08d}") for k in range(BIG))
        await store.accept(AcceptBatch("acc_other", other, None, None), NOW)

        async def stopped(*_args: object) -> int:
            return 0

        monkeypatch.setattr(ends, "finish", stopped)
        await store.close_account("acc_other", NOW + 2)
        left = "SELECT COUNT(*) FROM messages WHERE account_id='acc_other' AND recipient <> '+***'"
        assert _rows(db, left) == [(BIG - CHUNK,)]
        monkeypatch.undo()
        _shrink(monkeypatch)
        await store.sweep(NOW + 3 + RESUME_AFTER_MS, 3_600_000)
        assert _rows(db, left) == [(0,)]
    finally:
        await store.close()


async def test_a_close_ends_what_waits_in_chunks_with_other_writers_in_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a close ended every waiting message in its one transaction (the write-off must
    count their refunds): an account closed with a million waiting held every writer ~20 s.
    Now it stops the account sending (disabled) and ends them in chunks, other writers' batches
    in between, and only then closes it in a transaction of its own."""
    store = await _store(tmp_path)
    try:
        await _queue(store, BIG)
        db = tmp_path / "bridge.db"
        steps, between, seen = _interleave(store, monkeypatch)
        closed = await store.close_account("acc_big", NOW + 1)
        assert closed is not None
        assert seen == ["disabled"]  # no longer sending, not closed yet
        assert between and between[0] < len(steps)  # committed between the chunks
        assert _states(db) == {"ERASED": BIG}
        account = await store.get_account("acc_big")
        assert account is not None and account.status == "closed"
        assert _rows(db, "SELECT COUNT(*) FROM pending_ends") == [(0,)]
        other = await store.get_message("acc_other", "other")
        assert other is not None and other.state == "queued"
    finally:
        await store.close()


async def test_reads_of_a_closed_account_s_messages_are_masked_while_its_masking_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close masks the account's messages ERASE_CHUNK per transaction after its own: until
    the last chunk (or, its process stopped, the sweep's), the rows past the cursor still name
    their numbers. Every read of them answers them masked as the masking will leave them: the
    message (GET /v1/messages/{id}, the webhook sender), the list and its `to` filter
    (GET /v1/messages, Alibaba's QuerySendDetails), the CDR pages (GET /v1/cdrs), and the MO
    history a reply is attributed by (a reply is no longer the closed account's)."""
    store = await _store(tmp_path)
    db = tmp_path / "bridge.db"
    try:
        await _queue(store, BIG)
        number = "+8613800000100"  # m000100: in the masking's 3rd chunk
        mine = _message("a_other", "acc_other", number)  # the other account wrote to it too
        await store.accept(AcceptBatch("acc_other", (mine,), None, None), NOW)
        assert await store.attribute_mo(number, (), NOW + 5, default=True) == ("acc_big", None)

        async def stopped(*_args: object) -> int:  # the process stops after the close's commit
            return 0

        monkeypatch.setattr(ends, "finish", stopped)
        assert await store.close_account("acc_big", NOW + 1) is not None
        # Not masked yet in the table: the masking stopped after its first chunk.
        unmasked = "SELECT COUNT(*) FROM messages WHERE account_id='acc_big' AND recipient<>'+***'"
        assert _rows(db, unmasked) == [(BIG - CHUNK,)]

        await assert_closed_reads_masked(store, number)

        # Once the sweep finished the masking, the rows themselves read the same.
        monkeypatch.undo()
        _shrink(monkeypatch)
        await store.sweep(NOW + 1 + RESUME_AFTER_MS, 3_600_000)
        assert _rows(db, unmasked) == [(0,)]
        assert _rows(db, "SELECT COUNT(*) FROM pending_ends") == [(0,)]
        again = await store.get_message("acc_big", "m000100")
        assert again is not None and is_masked(again)
        assert await store.attribute_mo(number, (), NOW + 5, default=True) == ("acc_other", None)
    finally:
        await store.close()


def is_masked(r: Any, mask: str = "+***") -> bool:
    """A message record as a close's masking leaves it."""
    return (r.recipient, r.text, r.client_ref) == (mask, None, None)


async def assert_closed_reads_masked(store: Any, number: str, mask: str = "+***") -> None:
    """acc_big closed (BIG messages to `number`, m000100 among them, expired) while its masking
    is under way: every read of its messages answers them masked, no read by the number finds
    them, a reply from it is acc_other's; acc_other's own message to the number reads as it was.
    Shared with the engine-parametrised test_end_in_pages."""
    got = await store.get_message("acc_big", "m000100")
    assert got is not None and is_masked(got, mask) and got.state == "expired"
    page = await store.list_messages("acc_big", limit=200)
    assert len(page) == BIG and all(is_masked(r, mask) for r in page)
    assert await store.list_messages("acc_big", recipient=number) == []
    cdrs = await store.cdr_page("acc_big", NOW - 1, NOW + 1, None, 500)
    assert len(cdrs) == BIG and all(is_masked(r, mask) for r in cdrs)
    assert await store.attribute_mo(number, (), NOW + 5, default=True) == ("acc_other", None)
    # Another account's reads are as they were.
    theirs = await store.get_message("acc_other", "a_other")
    assert theirs is not None and theirs.recipient == number
    assert [r.id for r in await store.list_messages("acc_other", recipient=number)] == ["a_other"]
