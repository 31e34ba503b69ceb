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
from bridge.store.base import StoreError
from bridge.store.models import AcceptBatch, DncInfo
from bridge.store.rules_rows import dnc_entry_for_number
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


# -- two imports of one list at once ---------------------------------------------------------------

A_ONLY = "+86137"  # 500 numbers only the earlier import lists
B_ONLY = "+86135"  # 300 numbers only the later import lists


def _list_a() -> list[str]:
    """The earlier import: 500 numbers nobody writes to and every even waiting number."""
    return sorted(
        [f"{A_ONLY}{k:08d}" for k in range(500)] + [_number(k) for k in range(0, WAITING, 2)]
    )


def _list_b() -> list[str]:
    """The later import: 300 others and every third waiting number (some even ones too)."""
    return sorted(
        [f"{B_ONLY}{k:08d}" for k in range(300)] + [_number(k) for k in range(0, WAITING, 3)]
    )


def _ended(db: Path) -> set[str]:
    return {
        r[0]
        for r in _rows(db, "SELECT recipient FROM messages WHERE error_code='RECIPIENT_BLOCKED'")
    }


class _Two:
    """Two imports of the list "national" at once: the earlier one runs, and at its `when`-th
    call of `step` (inside that transaction) the later one starts beside it."""

    def __init__(self, store: SqliteStore, monkeypatch: pytest.MonkeyPatch, step: str, when: int):
        self.store = store
        self.chunks: list[int] = []  # the generations of the entry chunks, in commit order
        self.at_b: set[str] = set()  # what had ended when the later one's 1st chunk was written
        self._later: list[asyncio.Task[int]] = []
        self._calls = 0
        self._step = getattr(dnc, step)
        self._write_entries = dnc._write_entries
        if step != "_write_entries":
            monkeypatch.setattr(dnc, step, self._counted)
        monkeypatch.setattr(dnc, "_write_entries", self._entries)
        self._when = when

    def _tick(self) -> None:
        self._calls += 1
        if self._calls == self._when:
            b = _list_b()
            self._later.append(asyncio.ensure_future(self.store.import_dnc(_info(len(b)), b, [])))

    def _counted(self, c: sqlite3.Connection, *args: Any) -> Any:
        self._tick()
        return self._step(c, *args)

    def _entries(self, c: sqlite3.Connection, list_id: str, gen: int, chunk: Any) -> None:
        if self._step is self._write_entries:
            self._tick()
        self._write_entries(c, list_id, gen, chunk)
        if self.chunks and gen != self.chunks[0] and gen not in self.chunks:
            sql = "SELECT recipient FROM messages WHERE error_code='RECIPIENT_BLOCKED'"
            self.at_b = {r[0] for r in c.execute(sql)}  # this transaction sees the earlier's
        self.chunks.append(gen)

    async def run(self) -> tuple[BaseException | int, int]:
        """What the earlier one came to (its count, or what it raised), the later one's count."""
        a = _list_a()
        earlier: BaseException | int
        try:
            earlier = await self.store.import_dnc(_info(len(a)), a, [])
        except Exception as exc:  # returned for the test to look at
            earlier = exc
        assert self._later, "the later import never started"
        return earlier, await self._later[0]


async def _assert_list_is_b(store: SqliteStore, db: Path) -> None:
    b = _list_b()
    stored = {r[0] for r in _rows(db, "SELECT prefix FROM dnc_entries WHERE list_id='national'")}
    assert stored == {dnc_entry_for_number(n) for n in b}  # exactly the later list
    assert [x.numbers for x in await store.list_dnc()] == [len(b)]
    for k in (1, 2, 4, 499):  # only the earlier list's
        assert not await store.dnc_blocks(f"{A_ONLY}{k:08d}")
    assert not await store.dnc_blocks(_number(2)) and await store.dnc_blocks(_number(3))
    assert await store.dnc_blocks(f"{B_ONLY}00000299")


async def test_a_later_import_of_a_list_wins_over_one_still_writing_its_entries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: both wrote their chunks and the list blocked the union (the earlier one's 500
    numbers too) until the next import. Now the earlier one stops at its next step, answered
    DNC_IMPORT_SUPERSEDED, and the later one's clean-up removes what it wrote."""
    store = await _store(tmp_path)
    db = tmp_path / "bridge.db"
    try:
        await _queue(store)
        # The later import starts while the earlier writes its 2nd chunk of entries (of 6).
        earlier, later = await _Two(store, monkeypatch, "_write_entries", 2).run()
        monkeypatch.undo()

        assert isinstance(earlier, StoreError) and earlier.code == "DNC_IMPORT_SUPERSEDED"
        assert "imported again or deleted" in earlier.message
        await _assert_list_is_b(store, db)
        # The earlier one's walk never ran: what ended is exactly what the later list blocks.
        b_waiting = {_number(k) for k in range(0, WAITING, 3)}
        assert later == len(b_waiting)
        assert _ended(db) == b_waiting
    finally:
        await store.close()


async def test_a_later_import_stops_an_earlier_one_in_its_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The later import starts during the earlier one's walk of the waiting messages: the earlier
    walk stops at its next chunk. What it ended before the later import started stays ended (the
    list blocked those numbers then); nothing only the earlier list blocks is ended after."""
    store = await _store(tmp_path)
    db = tmp_path / "bridge.db"
    try:
        await _queue(store)
        # The later one starts inside the earlier one's 2nd chunk of the walk (of 4).
        two = _Two(store, monkeypatch, "_walk", 2)
        earlier, later = await two.run()
        monkeypatch.undo()
        chunks = two.chunks

        assert isinstance(earlier, StoreError) and earlier.code == "DNC_IMPORT_SUPERSEDED"
        assert len(set(chunks)) == 2 and chunks == sorted(chunks)  # 6 of A's, then B's 4
        await _assert_list_is_b(store, db)
        b_waiting = {_number(k) for k in range(0, WAITING, 3)}
        before_b = two.at_b - b_waiting  # ended by the earlier list only, before B started
        assert before_b and before_b <= {_number(k) for k in range(0, 80, 2)}
        assert len(before_b) < len({_number(k) for k in range(0, WAITING, 2)} - b_waiting)
        # After, only what the later list blocks ended.
        assert _ended(db) - b_waiting == before_b
        assert later == len(b_waiting - two.at_b)
    finally:
        await store.close()


async def test_a_delete_stops_an_import_under_way(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await _store(tmp_path)
    db = tmp_path / "bridge.db"
    try:
        write_entries = dnc._write_entries
        deleted: list[asyncio.Task[bool]] = []

        def entries(c: sqlite3.Connection, *args: Any) -> None:
            write_entries(c, *args)
            if not deleted:
                deleted.append(asyncio.ensure_future(store.delete_dnc("national")))

        monkeypatch.setattr(dnc, "_write_entries", entries)
        a = _list_a()
        with pytest.raises(StoreError) as exc:
            await store.import_dnc(_info(len(a)), a, [])
        assert exc.value.code == "DNC_IMPORT_SUPERSEDED"
        assert await deleted[0] is False  # the list's row was not written yet
        assert _rows(db, "SELECT COUNT(*) FROM dnc_entries") == [(0,)]
        assert await store.list_dnc() == []
        monkeypatch.undo()
        # An import after the delete is the list.
        await store.import_dnc(_info(len(a)), a, [])
        assert _rows(db, "SELECT COUNT(*) FROM dnc_entries") == [(len(a),)]
    finally:
        await store.close()


async def test_ending_blocked_messages_reads_them_by_key_not_the_whole_queue(
    tmp_path: Path,
) -> None:
    """The walk's and the claim's check end blocked messages by id (`_settle`). Written as
    `id IN (...) AND q_state='queued'`, SQLite took the queue index for the state and read every
    waiting message per call: with a million queued, each claim that met a blocked message held
    the write lock for the whole queue. Every statement it runs must search by the message's
    key instead."""
    store = await _store(tmp_path)
    try:
        await _queue(store)

        def job(c: sqlite3.Connection) -> list[tuple[str, str]]:
            statements: list[str] = []
            c.set_trace_callback(statements.append)
            try:
                dnc._settle(c, [f"m{k:06d}" for k in range(0, WAITING, 7)], NOW + 1)
            finally:
                c.set_trace_callback(None)
            return [
                (sql, " ".join(r[3] for r in c.execute("EXPLAIN QUERY PLAN " + sql)))
                for sql in statements
                if "FROM messages" in sql or "UPDATE messages" in sql
            ]

        plans = await store._runner.write(job)
        assert plans
        for sql, plan in plans:
            assert "messages_queue" not in plan and "SCAN messages" not in plan, (sql, plan)
        assert _states(tmp_path / "bridge.db")[dnc.ERROR] == len(range(0, WAITING, 7))
    finally:
        await store.close()
