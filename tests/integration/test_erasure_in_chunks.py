"""An erasure masks the account's stored idempotent answers in chunks, on a real SQLite file
(bridge/store/sqlite_erase.py).

Before, the erasure's one transaction read every idempotency record of the account (two UPDATEs
over its (account_id, key) index) while every writer of every process waited: ~1.2 µs a record,
~10 s for an account keeping 8.6 million answers. CHUNK is made small here so a few hundred
records take several chunks.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from bridge.domain.erasure import masked_answer
from bridge.store import sqlite_erase
from bridge.store.base import RESUME_AFTER_MS
from bridge.store.models import AcceptBatch, Account, IdempotencyRecord, NewMessage
from bridge.store.sqlite import SqliteStore
from tests.messages import one_part

NOW = 1_700_000_000_000
DAY = 86_400_000
CHUNK = 40
BIG = 130  # records of the account: four chunks
# The last key to the number in the masking's order (the account's keys, as text: k98 after
# k129): past the first chunk.
LATE = max((k for k in range(BIG) if k % 2 == 0), key=lambda k: f"k{k}")
CN, OTHER = "+8613800138000", "+8613900139000"
MASK = "+86138****000"


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    _shrink(monkeypatch)


def _shrink(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite_erase, "CHUNK", CHUNK)
    monkeypatch.setattr(sqlite_erase, "DROP_CHUNK", CHUNK)


def answer(k: int, number: str) -> bytes:
    """An accept's answer as the bridge stores it (compact; client_ref: the customer's)."""
    entry = {"id": f"m{k}", "to": number, "client_ref": f"ref-{k}", "status": "queued"}
    return json.dumps({"batch_id": f"b{k}", "count": 1, "messages": [entry]}).encode()


def _numbers(k: int) -> str:
    return CN if k % 2 == 0 else OTHER


def _seed(path: Path, n: int, account_id: str = "acc_a") -> None:
    """`n` live records of `account_id`, half naming CN (written before the store opens: a
    large account's hours of keys), and two of acc_b naming CN."""
    c = sqlite3.connect(path)
    with c:
        rows = [
            (account_id, f"k{k}", "h", 202, answer(k, _numbers(k)), NOW + DAY) for k in range(n)
        ]
        rows += [("acc_b", f"k{k}", "h", 202, answer(k, CN), NOW + DAY) for k in range(2)]
        c.executemany(
            "INSERT INTO idempotency (account_id, key, request_hash, status_code, response, "
            "expires_at) VALUES (?,?,?,?,?,?)",
            rows,
        )
    c.close()


async def _store(tmp_path: Path, n: int = BIG) -> SqliteStore:
    path = tmp_path / "bridge.db"
    store = SqliteStore(path)
    await store.open()
    for aid in ("acc_a", "acc_b"):
        await store.create_account(
            Account(id=aid, name=aid, webhook_secret_enc=b"sealed", created_at=NOW, updated_at=NOW)
        )
    await store.close()
    _seed(path, n)
    store = SqliteStore(path)
    await store.open()
    return store


def _message(mid: str, number: str) -> NewMessage:
    return one_part(mid, "acc_a", number, NOW)


def _accept(mid: str, number: str, key: str, response: bytes) -> AcceptBatch:
    return AcceptBatch(
        account_id="acc_a",
        messages=(_message(mid, number),),
        idempotency_key=key,
        idempotency=IdempotencyRecord("h", 202, response),
        idempotency_expires_at=NOW + DAY,
    )


def _rows(path: Path, sql: str, args: Sequence[Any] = ()) -> list[tuple]:
    c = sqlite3.connect(path)
    try:
        return c.execute(sql, args).fetchall()
    finally:
        c.close()


def _stored(path: Path, account_id: str, key: str) -> bytes:
    return bytes(
        _rows(
            path,
            "SELECT response FROM idempotency WHERE account_id=? AND key=?",
            (account_id, key),
        )[0][0]
    )


async def test_the_masking_goes_in_chunks_with_other_writers_in_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An accept of the same account commits between two chunks; the record it writes, to the
    erased number, is new data (written after the erasure began) and is left alone."""
    store = await _store(tmp_path)
    db = tmp_path / "bridge.db"
    try:
        await store.accept(_accept("old", CN, "sent-before", answer(900, CN)), NOW)
        steps: list[int] = []
        between: list[int] = []
        step = sqlite_erase._step

        async def accept_same_account() -> None:
            batch = _accept("new", CN, "sent-after", answer(901, CN))
            await store.accept(batch, NOW + 2)
            between.append(len(steps))

        def counted(c: sqlite3.Connection, *args: Any) -> bool:
            steps.append(1)
            if len(steps) == 1:
                asyncio.get_running_loop().create_task(accept_same_account())
            return step(c, *args)

        monkeypatch.setattr(sqlite_erase, "_step", counted)
        assert await store.erase_recipient("acc_a", CN, MASK, NOW + 1) == 1  # as before

        assert len(steps) == 4  # 131 records of the account: 40 + 40 + 40 + 11
        assert between and between[0] < len(steps)  # committed between two chunks
        for k in range(BIG):
            assert _stored(db, "acc_a", f"k{k}") == masked_answer(answer(k, _numbers(k)), CN, MASK)
        assert CN.encode() not in _stored(db, "acc_a", "sent-before")
        assert _stored(db, "acc_a", "sent-after") == answer(901, CN)  # new data, left alone
        assert _stored(db, "acc_b", "k0") == answer(0, CN)  # another account's
        assert _rows(db, "SELECT COUNT(*) FROM pending_erasures") == [(0,)]
    finally:
        await store.close()


async def test_reads_answer_masked_until_the_sweep_finishes_a_stopped_masking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process stops after the masking's first chunk: its records past it still
    name the number in the table, yet a replay, a key taken again, and an accept's duplicate
    check answer them as the masking will leave them; the sweep finishes it once nobody has
    worked it for RESUME_AFTER_MS."""
    store = await _store(tmp_path)
    db = tmp_path / "bridge.db"
    try:
        step = sqlite_erase._step

        async def one_chunk(write: Any, ids: Sequence[int], now: int, *_a: object) -> None:
            for i in ids:
                await write(lambda c, i=i: step(c, i, now, now))

        monkeypatch.setattr(sqlite_erase, "finish", one_chunk)
        await store.erase_recipient("acc_a", CN, MASK, NOW + 1)
        monkeypatch.undo()
        _shrink(monkeypatch)

        late = f"k{LATE}"  # past the first chunk: not masked in the table yet
        raw = answer(LATE, CN)
        assert _stored(db, "acc_a", late) == raw
        want = masked_answer(raw, CN, MASK)
        assert CN.encode() not in want
        got = await store.get_idempotency("acc_a", late, NOW + 2)
        assert got is not None and got.response == want
        taken = await store.take_idempotency("acc_a", late, "h", NOW + 60_000, NOW + 2)
        assert taken is not None and taken.response == want
        duplicate = await store.accept(_accept("dup", CN, late, b"{}"), NOW + 2)
        assert not duplicate.accepted
        assert duplicate.existing is not None and duplicate.existing.response == want
        # Another account's record, and one the masking passed, read as they are stored.
        other = await store.get_idempotency("acc_b", "k0", NOW + 2)
        assert other is not None and other.response == answer(0, CN)
        first = await store.get_idempotency("acc_a", "k0", NOW + 2)
        assert first is not None and first.response == _stored(db, "acc_a", "k0")
        assert CN.encode() not in first.response

        # The sweep leaves a masking its process may still be working ...
        await store.sweep(NOW + 3, 3_600_000)
        assert _stored(db, "acc_a", late) == raw
        # ... and finishes one nobody has worked for RESUME_AFTER_MS.
        await store.sweep(NOW + 1 + RESUME_AFTER_MS, 3_600_000)
        assert _stored(db, "acc_a", late) == want
        assert _rows(db, "SELECT COUNT(*) FROM pending_erasures") == [(0,)]
        again = await store.get_idempotency("acc_a", late, NOW + 2)
        assert again is not None and again.response == want  # the same bytes as before
    finally:
        await store.close()


async def test_a_step_back_of_the_clock_moves_the_mark_of_a_stopped_masking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As pending_ends' marks (sqlite_clock._MARKS): marked on a clock S ahead, a stopped
    masking was finished by the sweep S late."""
    step_ms = 10 * 60_000
    store = await _store(tmp_path)
    db = tmp_path / "bridge.db"
    try:

        async def stopped(*_args: object) -> None:
            return None

        monkeypatch.setattr(sqlite_erase, "finish", stopped)
        await store.erase_recipient("acc_a", CN, MASK, NOW + step_ms - 1_000)
        monkeypatch.undo()
        _shrink(monkeypatch)
        await store.clock_stepped_back(step_ms, NOW, ())
        assert _rows(db, "SELECT worked_at FROM pending_erasures") == [(NOW - 1_000,)]
        await store.sweep(NOW - 1_000 + RESUME_AFTER_MS, 3_600_000)
        assert _rows(db, "SELECT COUNT(*) FROM pending_erasures") == [(0,)]
        assert CN.encode() not in _stored(db, "acc_a", f"k{LATE}")
    finally:
        await store.close()


async def _longest_transaction(tmp_path: Path, n: int, close: bool) -> int:
    """The most SQLite VM steps (in hundreds) any one write transaction of an erasure (or the
    account's close) took, with `n` records of the account."""
    store = await _store(tmp_path, n)
    try:
        runner = store._runner
        conn = runner._conn
        assert conn is not None
        count = [0]
        per_batch: list[int] = []
        run_batch = runner._run_batch

        def counted(batch: Any) -> None:
            count[0] = 0
            try:
                run_batch(batch)
            finally:
                per_batch.append(count[0])

        def tick() -> int:
            count[0] += 1
            return 0

        conn.set_progress_handler(tick, 100)
        runner._run_batch = counted  # type: ignore[method-assign]
        if close:
            assert await store.close_account("acc_a", NOW + 1) is not None
            assert _rows(tmp_path / "bridge.db", "SELECT COUNT(*) FROM idempotency") == [(2,)]
        else:
            await store.erase_recipient("acc_a", CN, MASK, NOW + 1)
        conn.set_progress_handler(None, 0)
        return max(per_batch)
    finally:
        await store.close()


@pytest.mark.parametrize("close", [False, True], ids=["erasure", "close"])
async def test_no_transaction_grows_with_the_account_s_records(tmp_path: Path, close: bool) -> None:
    """The longest write transaction with 4,000 records of the account is no longer than with
    400 (one chunk's work each); in the one transaction it was ten times as long. A close
    deleted them all in its transaction (~3 µs each: 1,000,000 held every writer 2.8-4.0 s)."""
    (tmp_path / "small").mkdir()
    (tmp_path / "large").mkdir()
    small = await _longest_transaction(tmp_path / "small", 10 * CHUNK, close)
    large = await _longest_transaction(tmp_path / "large", 100 * CHUNK, close)
    assert large < 1.5 * small, (small, large)


async def test_a_close_deletes_the_account_s_records_in_chunks_and_the_sweep_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await _store(tmp_path)
    db = tmp_path / "bridge.db"
    mine = "SELECT COUNT(*) FROM idempotency WHERE account_id='acc_a'"
    try:

        async def stopped(*_args: object) -> None:  # the process stops after the close's commit
            return None

        monkeypatch.setattr(sqlite_erase, "finish", stopped)
        assert await store.close_account("acc_a", NOW + 1) is not None
        assert _rows(db, mine) == [(BIG,)]
        monkeypatch.undo()
        _shrink(monkeypatch)
        await store.sweep(NOW + 2, 3_600_000)
        assert _rows(db, mine) == [(BIG,)]  # its process may still be working it
        await store.sweep(NOW + 1 + RESUME_AFTER_MS, 3_600_000)
        assert _rows(db, mine) == [(0,)]
        assert _rows(db, "SELECT COUNT(*) FROM idempotency WHERE account_id='acc_b'") == [(2,)]
        assert _rows(db, "SELECT COUNT(*) FROM pending_erasures") == [(0,)]
        # Another account's close goes to its end in chunks of its own.
        steps: list[int] = []
        step = sqlite_erase._step

        def counted(c: sqlite3.Connection, *args: Any) -> bool:
            steps.append(1)
            return step(c, *args)

        monkeypatch.setattr(sqlite_erase, "_step", counted)
        assert await store.close_account("acc_b", NOW + 2) is not None
        assert steps == [1]  # 2 records: one chunk
        assert _rows(db, "SELECT COUNT(*) FROM idempotency") == [(0,)]
    finally:
        await store.close()
