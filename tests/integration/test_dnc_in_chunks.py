"""A do-not-contact list imported and deleted in chunks, each a write transaction of its own, and
the claim's check of every list (bridge/store/sqlite_dnc.py), on a real SQLite file.

Before, an import replaced the list and ended what it blocks in one transaction: ~3.3 µs of the
store's write lock per entry, a 1,000,000-number registry stalled every writer 3.4 s. The chunk
sizes are made small here so a few hundred entries take several transactions.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bridge.store import sqlite_dnc as dnc
from bridge.store.models import AcceptBatch, DncInfo
from bridge.store.sqlite import SqliteStore
from tests.integration.test_end_in_chunks import NOW, _message, _rows, _states, _store

WAITING = 130  # +8613800000000 ... +8613800000129, account acc_big


@pytest.fixture(autouse=True)
def _small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dnc, "ENTRY_CHUNK", 100)
    monkeypatch.setattr(dnc, "WALK_CHUNK", 40)


def _number(k: int) -> str:
    return f"+86138{k:08d}"


async def _queue(store: SqliteStore) -> None:
    msgs = tuple(_message(f"m{k:06d}", "acc_big", _number(k)) for k in range(WAITING))
    await store.accept(AcceptBatch("acc_big", msgs, None, None), NOW)


def _info(n: int, at: int = NOW + 1) -> DncInfo:
    return DncInfo("national", "national", "CN", n, 0, at)


def _registry(blocked: range) -> list[str]:
    """500 numbers nobody writes to, and the waiting numbers of `blocked`."""
    return sorted([f"+86137{k:08d}" for k in range(500)] + [_number(k) for k in blocked])


async def test_an_import_goes_in_chunks_and_other_writers_go_in_between(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await _store(tmp_path)
    try:
        await _queue(store)
        writes: list[str] = []
        between: list[int] = []
        runner_write = store._runner.write

        async def accept_other() -> None:
            other = (_message("other", "acc_other", "+8613900000000"),)
            await store.accept(AcceptBatch("acc_other", other, None, None), NOW + 2)
            between.append(len(writes))

        async def counted(job: Any, **kw: Any) -> Any:
            writes.append(getattr(job, "__name__", "job"))
            if len(writes) == 2:  # another account's accept arrives while the import goes on
                asyncio.get_running_loop().create_task(accept_other())
            return await runner_write(job, **kw)

        monkeypatch.setattr(store._runner, "write", counted)
        numbers = _registry(range(0, WAITING, 5))  # 500 + 26 numbers, 26 of them waiting
        ended = await store.import_dnc(_info(len(numbers)), numbers, [])
        monkeypatch.undo()

        assert ended == 26
        # The generation read, 6 chunks of entries, the list's row, 4 chunks of the walk, the
        # older entries' removal: each a transaction of its own ...
        assert writes.count("<lambda>") == 1 + 6 + 1 + 4 + 1
        # ... and the other account's accept (its job) committed between them, not after.
        assert writes.index("job") < len(writes) - 1
        assert between and between[0] < len(writes)
        db = tmp_path / "bridge.db"
        assert _states(db) == {"RECIPIENT_BLOCKED": 26, "queued": WAITING - 26}
        assert await store.dnc_blocks(_number(5)) and not await store.dnc_blocks(_number(6))
        lists = await store.list_dnc()
        assert [(x.id, x.numbers) for x in lists] == [("national", len(numbers))]
    finally:
        await store.close()


async def test_a_new_import_replaces_the_list_and_a_delete_empties_it_in_chunks(
    tmp_path: Path,
) -> None:
    store = await _store(tmp_path)
    try:
        first = _registry(range(0))
        await store.import_dnc(_info(len(first)), first, [])
        # The same millisecond again (a script, a frozen clock): a generation of its own.
        second = sorted(f"+86136{k:08d}" for k in range(250))
        await store.import_dnc(_info(len(second)), second, [])
        db = tmp_path / "bridge.db"
        assert _rows(db, "SELECT COUNT(*) FROM dnc_entries") == [(250,)]
        assert not await store.dnc_blocks("+8613700000001")
        assert await store.dnc_blocks("+8613600000001")
        assert await store.delete_dnc("national")
        assert _rows(db, "SELECT COUNT(*) FROM dnc_entries") == [(0,)]
        assert await store.list_dnc() == []
        assert not await store.delete_dnc("national")
    finally:
        await store.close()


async def test_an_import_that_stopped_blocks_the_old_and_the_new_until_imported_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await _store(tmp_path)
    try:
        old = sorted(f"+86136{k:08d}" for k in range(50))
        await store.import_dnc(_info(len(old)), old, [])
        new = _registry(range(0))

        def stopped(*_args: object) -> None:
            raise RuntimeError("the process stopped")

        monkeypatch.setattr(dnc, "_record", stopped)
        with pytest.raises(RuntimeError):
            await store.import_dnc(_info(len(new), NOW + 5), new, [])
        monkeypatch.undo()
        # Never fewer numbers blocked than before or after it.
        assert await store.dnc_blocks("+8613600000001") and await store.dnc_blocks("+8613700000001")
        assert [x.numbers for x in await store.list_dnc()] == [50]  # the list's row as it was
        await store.import_dnc(_info(len(new), NOW + 6), new, [])
        assert not await store.dnc_blocks("+8613600000001")
        assert [x.numbers for x in await store.list_dnc()] == [len(new)]
    finally:
        await store.close()


async def test_a_claim_ends_what_a_list_blocks_that_the_walk_did_not_reach(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await _store(tmp_path)
    try:
        await _queue(store)
        other = (_message("other", "acc_other", "+8613900000000"),)
        await store.accept(AcceptBatch("acc_other", other, None, None), NOW)

        def nothing(*_args: object) -> tuple[int, None]:  # the process stopped before the walk
            return 0, None

        monkeypatch.setattr(dnc, "_walk", nothing)
        numbers = _registry(range(WAITING))  # every waiting number of acc_big
        assert await store.import_dnc(_info(len(numbers)), numbers, []) == 0
        db = tmp_path / "bridge.db"
        assert _states(db) == {"queued": WAITING}

        work = await store.claim("inst", 500, NOW + 2, 60_000)
        assert [w.id for w in work] == ["other"]
        assert _states(db) == {"RECIPIENT_BLOCKED": WAITING}
        rec = await store.get_message("acc_big", "m000007")
        assert rec is not None and rec.state == "expired" and rec.error_code == "RECIPIENT_BLOCKED"
    finally:
        await store.close()


def test_the_claims_check_costs_nothing_without_a_list(tmp_path: Path) -> None:
    """Without any list the check is one probe of an empty table: no message row is read."""
    c = sqlite3.connect(":memory:")
    c.execute("CREATE TABLE dnc_entries (prefix TEXT, list_id TEXT)")
    c.execute("CREATE TABLE messages (id TEXT)")  # no column the check would read: it does not
    assert dnc.guard(c, ["m1", "m2"], NOW) == ["m1", "m2"]
