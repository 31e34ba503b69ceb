"""An account's many waiting messages end in chunks, each a write transaction of its own
(bridge/store/sqlite_ends.py), on a real SQLite file.

Before, a disable (or a sign or template deleted or rejected, `marketing` or `raw_text` turned
off) ended every waiting message in the one transaction that made the change: ~20 µs of the
store's write lock per message, so with a million waiting every accept of every account waited
~20 s. END_CHUNK is made small here so a few hundred messages take several chunks.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bridge.store import sqlite_ends as ends
from bridge.store.models import AcceptBatch, Account, NewMessage, Sign
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


async def test_a_disable_ends_in_chunks_and_other_writers_go_in_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await _store(tmp_path)
    try:
        await _queue(store, BIG)
        steps, between, _seen = _interleave(store, monkeypatch)
        await store.update_account("acc_big", {"status": "disabled"}, NOW + 1)

        # The first transaction ended one chunk; three more (and one that found none left) followed.
        assert len(steps) == 4
        # The other account's accept committed between them, not after the whole end.
        assert between and between[0] < len(steps)
        assert _states(tmp_path / "bridge.db") == {"ACCOUNT_DISABLED": BIG}
        assert _rows(tmp_path / "bridge.db", "SELECT COUNT(*) FROM pending_ends") == [(0,)]
        other = await store.get_message("acc_other", "other")
        assert other is not None and other.state == "queued"
    finally:
        await store.close()


async def test_a_claim_ends_what_an_unfinished_end_covers_and_the_sweep_finishes_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await _store(tmp_path)
    try:
        await _queue(store, BIG)
        other = (_message("other", "acc_other", "+8613900000000"),)
        await store.accept(AcceptBatch("acc_other", other, None, None), NOW)

        async def stopped(*_args: object) -> int:  # the process stops after the first commit
            return 0

        monkeypatch.setattr(ends, "finish", stopped)
        await store.update_account("acc_big", {"status": "disabled"}, NOW + 1)
        db = tmp_path / "bridge.db"
        assert _states(db) == {"ACCOUNT_DISABLED": CHUNK, "queued": BIG - CHUNK}
        monkeypatch.undo()
        _shrink(monkeypatch)

        # A claim sends none of the disabled account's messages: it ends those it found.
        work = await store.claim("inst", 500, NOW + 2, 60_000)
        assert [w.id for w in work] == ["other"]
        left = _states(db).get("queued", 0)
        assert left < BIG - CHUNK

        # The sweep leaves an end its process may still be working ...
        await store.sweep(NOW + 3, 3_600_000)
        assert _states(db).get("queued", 0) == left
        # ... and finishes one nobody has worked for RESUME_AFTER_MS.
        await store.sweep(NOW + 2 + ends.RESUME_AFTER_MS, 3_600_000)
        assert _states(db) == {"ACCOUNT_DISABLED": BIG}
        assert _rows(db, "SELECT COUNT(*) FROM pending_ends") == [(0,)]
    finally:
        await store.close()


async def test_an_end_covers_only_the_messages_that_existed_when_it_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await _store(tmp_path)
    try:
        sign = Sign("acc_big", "Acme", "Acme", "company", "", "approved", None, None, NOW)
        await store.add_sign(sign)
        await _queue(store, BIG, sign="Acme")

        async def stopped(*_args: object) -> int:
            return 0

        monkeypatch.setattr(ends, "finish", stopped)
        assert await store.delete_sign("acc_big", "Acme", NOW + 1) == CHUNK
        monkeypatch.undo()
        _shrink(monkeypatch)

        # The sign is created again and a message sent with it: the old end does not cover it.
        await store.add_sign(sign)
        await _queue(store, 1, sign="Acme", first=BIG)
        await store.sweep(NOW + 2 + ends.RESUME_AFTER_MS, 3_600_000)
        db = tmp_path / "bridge.db"
        assert _states(db) == {"SIGN_DELETED": BIG, "queued": 1}
        work = await store.claim("inst", 500, NOW + 3, 60_000)
        assert [w.id for w in work] == [f"m{BIG:06d}"]
    finally:
        await store.close()


async def test_a_delete_counts_every_message_its_chunks_ended(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        sign = Sign("acc_big", "Acme", "Acme", "company", "", "approved", None, None, NOW)
        await store.add_sign(sign)
        await _queue(store, BIG, sign="Acme")
        await _queue(store, 5, first=BIG)  # without the sign: not ended
        assert await store.delete_sign("acc_big", "Acme", NOW + 1) == BIG
        assert _states(tmp_path / "bridge.db") == {"SIGN_DELETED": BIG, "queued": 5}
    finally:
        await store.close()


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
        await store.sweep(NOW + 3 + ends.RESUME_AFTER_MS, 3_600_000)
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


async def test_a_step_back_of_the_clock_moves_the_marks_of_ends_a_stopped_process_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Store.clock_stepped_back moves `pending_ends.worked_at` as it moves the queue's times:
    an end marked on the old clock, S ahead, was finished by the sweep S late. A mark made
    after the step (at or before the shift's `now`) stays: moved, a live end would look
    stopped and be worked twice."""
    step = 10 * 60_000  # the old clock was this far ahead
    old = NOW + step
    store = await _store(tmp_path)
    db = tmp_path / "bridge.db"
    try:
        await _queue(store, BIG)
        other = tuple(_message(f"o{k:04d}", "acc_other", f"+86139{k:08d}") for k in range(BIG))
        await store.accept(AcceptBatch("acc_other", other, None, None), NOW)

        async def stopped(*_args: object) -> int:  # each process stops after the first commit
            return 0

        monkeypatch.setattr(ends, "finish", stopped)
        await store.update_account("acc_big", {"status": "disabled"}, old - 1_000)  # before
        await store.update_account("acc_other", {"status": "disabled"}, NOW)  # after the step
        monkeypatch.undo()
        _shrink(monkeypatch)
        marks = "SELECT account_id, worked_at FROM pending_ends ORDER BY account_id"
        assert _rows(db, marks) == [("acc_big", old - 1_000), ("acc_other", NOW)]

        assert await store.clock_stepped_back(step, NOW, ()) == (2 * (BIG - CHUNK), 0)
        assert _rows(db, marks) == [("acc_big", NOW - 1_000), ("acc_other", NOW)]

        # The old clock's end is stale RESUME_AFTER_MS after it was marked, on the new clock.
        await store.sweep(NOW - 1_000 + ends.RESUME_AFTER_MS - 1, 3_600_000)
        assert _states(db) == {"ACCOUNT_DISABLED": CHUNK, "queued": BIG - CHUNK}
        await store.sweep(NOW - 1_000 + ends.RESUME_AFTER_MS, 3_600_000)
        assert _states(db) == {"ACCOUNT_DISABLED": BIG}
        assert _rows(db, marks) == [("acc_other", NOW)]
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

        def is_masked(r: object) -> bool:
            return (r.recipient, r.text, r.client_ref) == ("+***", None, None)  # type: ignore[attr-defined]

        got = await store.get_message("acc_big", "m000100")
        assert got is not None and is_masked(got) and got.state == "expired"
        page = await store.list_messages("acc_big", limit=200)
        assert len(page) == BIG and all(is_masked(r) for r in page)
        assert await store.list_messages("acc_big", recipient=number) == []
        cdrs = await store.cdr_page("acc_big", NOW - 1, NOW + 1, None, 500)
        assert len(cdrs) == BIG and all(is_masked(r) for r in cdrs)
        assert await store.attribute_mo(number, (), NOW + 5, default=True) == ("acc_other", None)
        # Another account's reads are as they were.
        theirs = await store.get_message("acc_other", "a_other")
        assert theirs is not None and theirs.recipient == number
        assert [r.id for r in await store.list_messages("acc_other", recipient=number)] == [
            "a_other"
        ]

        # Once the sweep finished the masking, the rows themselves read the same.
        monkeypatch.undo()
        _shrink(monkeypatch)
        await store.sweep(NOW + 1 + ends.RESUME_AFTER_MS, 3_600_000)
        assert _rows(db, unmasked) == [(0,)]
        assert _rows(db, "SELECT COUNT(*) FROM pending_ends") == [(0,)]
        again = await store.get_message("acc_big", "m000100")
        assert again is not None and is_masked(again)
        assert await store.attribute_mo(number, (), NOW + 5, default=True) == ("acc_other", None)
    finally:
        await store.close()


async def test_an_end_worked_across_a_step_back_keeps_the_moved_mark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process working an end counts its marks on from the clock of its start: after the
    shift moved its mark back, its next chunks follow the moved mark instead of writing the old
    clock's time again; stopped then, the sweep finishes it RESUME_AFTER_MS after its last
    chunk, not the step later."""
    from bridge.store import sqlite_clock

    step = 10 * 60_000
    old = NOW + step
    store = await _store(tmp_path)
    db = tmp_path / "bridge.db"
    try:
        await _queue(store, BIG)
        real = ends._step
        calls: list[int] = []

        def stepped(c: sqlite3.Connection, end_id: int, *args: Any) -> int | None:
            calls.append(end_id)
            if len(calls) == 2:  # the clock's shift committed between the 1st and 2nd chunks
                sqlite_clock._start(c, by_ms=step, now=NOW)
            if len(calls) == 3:
                raise RuntimeError("the process stopped")
            return real(c, end_id, *args)

        monkeypatch.setattr(ends, "_step", stepped)
        with pytest.raises(RuntimeError):
            await store.update_account("acc_big", {"status": "disabled"}, old - 1_000)
        monkeypatch.undo()
        _shrink(monkeypatch)
        assert _states(db) == {"ACCOUNT_DISABLED": 3 * CHUNK, "queued": BIG - 3 * CHUNK}
        ((mark,),) = _rows(db, "SELECT worked_at FROM pending_ends")
        assert NOW - 1_000 <= mark < NOW + 5_000  # the new clock's, not old's

        await store.sweep(mark + ends.RESUME_AFTER_MS, 3_600_000)
        assert _states(db) == {"ACCOUNT_DISABLED": BIG}
    finally:
        await store.close()
