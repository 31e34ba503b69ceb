"""The SQLite walks over the queue index seek their whole cursor, on a real SQLite file.

SQLite seeks a row value such as `(q_not_before, rowid) > (?, ?)` on the index's column for
its first element only, then filters: each page of a walk read again every row of the cursor's
due time behind it, so a walk over a campaign due at one moment (a million scheduled for one
time, a big request's recipients) was quadratic. The walks now seek the rest of the cursor's
due time by rowid, then what follows (sqlite_pipeline.seek_after).

The seek tests count SQLite's VM steps (`set_progress_handler`) for a page from the middle of
one large due-time group against a page of the same size from its start: before, the middle
page cost several steps per row behind the cursor. The order tests walk groups split across
small pages, over several accounts, with rows each walk skips, and check every row is visited
once, in the queue index's order.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from bridge.store import sqlite_clock, sqlite_ends
from bridge.store import sqlite_pipeline as pipe
from bridge.store.models import AcceptBatch, Account, ClockShift, NewMessage, NewSegment
from bridge.store.sqlite import SqliteStore, _Scan

NOW = 1_700_000_000_000
GROUP = 8_000  # one due time
PAGE = 50
ACCOUNTS = ("acc_a", "acc_b", "acc_c")


def _message(
    mid: str, account: str, at: int, recipient: str = "+8613800138000", **kw: Any
) -> NewMessage:
    return NewMessage(
        id=mid,
        account_id=account,
        batch_id="b_" + account,
        recipient=recipient,
        encoding="gsm7",
        data_coding=0,
        billable_units=1,
        segments=(NewSegment(1, 1, 0, mid.encode(), b""),),
        accepted_at=at,
        text="t",
        **kw,
    )


async def _store(tmp_path: Path) -> SqliteStore:
    store = SqliteStore(tmp_path / "bridge.db")
    await store.open()
    for aid in ACCOUNTS:
        await store.create_account(
            Account(id=aid, name=aid, webhook_secret_enc=b"sealed", created_at=NOW, updated_at=NOW)
        )
    return store


async def _accept(store: SqliteStore, account: str, msgs: Sequence[NewMessage]) -> None:
    for i in range(0, len(msgs), 2_000):
        await store.accept(AcceptBatch(account, tuple(msgs[i : i + 2_000]), None, None), NOW)


async def _group(store: SqliteStore, scheduled: bool = False) -> list[int]:
    """GROUP messages of acc_a, due at one time (scheduled for it, or accepted at it); their
    rowids in the queue index's order."""
    at = NOW + 3_600_000 if scheduled else NOW
    msgs = [
        _message(f"g{k:06d}", "acc_a", NOW, scheduled_at=at if scheduled else None)
        for k in range(GROUP)
    ]
    await _accept(store, "acc_a", msgs)
    return [r[0] for r in _sql(store, "SELECT rowid FROM messages ORDER BY rowid")]


def _sql(store: SqliteStore, sql: str, args: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    c = sqlite3.connect(store._runner._path)  # type: ignore[attr-defined]
    try:
        with c:
            return c.execute(sql, args).fetchall()
    finally:
        c.close()


def _counting(job: Callable[[sqlite3.Connection], Any], steps: list[int]) -> Callable[..., Any]:
    """`job`, counting the VM steps of the statements it runs into `steps`."""

    def counted(c: sqlite3.Connection) -> Any:
        n = [0]

        def tick() -> int:
            n[0] += 1
            return 0

        c.set_progress_handler(tick, 1)
        try:
            return job(c)
        finally:
            c.set_progress_handler(None, 0)
            steps.append(n[0])

    return counted


async def _write_steps(store: SqliteStore, job: Callable[[sqlite3.Connection], Any]) -> int:
    steps: list[int] = []
    await store._runner.write(_counting(job, steps), durable=False)
    return steps[0]


def _no_reread(start: int, middle: int) -> None:
    """A page from the middle of the group costs about what one from its start does: reading
    again the GROUP // 2 rows behind the cursor cost more than 5 steps each."""
    assert middle < start + GROUP, (start, middle)


# -- seeks ---------------------------------------------------------------------------------------


async def test_a_page_of_the_waiting_texts_from_the_middle_of_a_group_reads_no_row_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = await _store(tmp_path)
    try:
        rowids = await _group(store)
        steps: list[int] = []
        read = store._runner.read

        async def counted_read(job: Callable[[sqlite3.Connection], Any]) -> Any:
            return await read(_counting(job, steps))

        monkeypatch.setattr(store._runner, "read", counted_read)
        pages = []
        for at in (0, GROUP // 2, GROUP - 2 * PAGE):
            rows, after = await store.waiting_texts(("acc_a", NOW, rowids[at]), PAGE)
            assert [r.id for r in rows] == [f"g{k:06d}" for k in range(at + 1, at + 1 + PAGE)]
            assert after == ("acc_a", NOW, rowids[at + PAGE])
            pages.append(steps[-1])
        _no_reread(pages[0], pages[1])
        _no_reread(pages[0], pages[2])
    finally:
        await store.close()


async def test_a_clock_shift_chunk_from_the_middle_of_a_scheduled_campaign_reads_no_row_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Scheduled messages keep their time: a campaign for one moment stays one group behind the
    shift's cursor."""
    monkeypatch.setattr(sqlite_clock, "CHUNK", PAGE)
    store = await _store(tmp_path)
    try:
        rowids = await _group(store, scheduled=True)
        at_time = NOW + 3_600_000
        pages = []
        for at in (0, GROUP // 2, GROUP - 2 * PAGE):
            got: list[Any] = []

            def page(c: sqlite3.Connection, at: int = at, got: list[Any] = got) -> None:
                got.append(sqlite_clock._page(c, "acc_a", (at_time, rowids[at]), 60_000, 10**9))

            pages.append(await _write_steps(store, page))
            assert got == [(0, (at_time, rowids[at + PAGE]))]  # nothing moved: all scheduled
        _no_reread(pages[0], pages[1])
        _no_reread(pages[0], pages[2])
        # Nor does its update read the queue beyond the page: it took the queue index over the
        # page's rowids, 9 steps per waiting row at each chunk.
        assert max(pages) < GROUP, pages
    finally:
        await store.close()


async def test_an_end_chunk_from_the_middle_of_a_group_reads_no_row_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows an end passes over stay in the queue index (tried ones, other signs, those
    accepted since it began): here the cursor is put past rows it did not end."""
    monkeypatch.setattr(sqlite_ends, "END_CHUNK", PAGE)
    store = await _store(tmp_path)
    try:
        rowids = await _group(store)
        pages = []
        for at in (0, GROUP // 2, GROUP - 2 * PAGE):
            end = sqlite_ends._End(
                0, "acc_a", "account", None, "ENDED", NOW, rowids[-1], (NOW, rowids[at])
            )
            got: list[Any] = []

            def chunk(c: sqlite3.Connection, end: Any = end, got: list[Any] = got) -> None:
                got.append(sqlite_ends._chunk(c, end))

            pages.append(await _write_steps(store, chunk))
            assert got == [(PAGE, (NOW, rowids[at + PAGE]))]
        _no_reread(pages[0], pages[1])
        _no_reread(pages[0], pages[2])
    finally:
        await store.close()


async def test_an_erase_chunk_from_the_middle_of_one_acceptance_time_reads_no_row_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A close masks the account's messages in its (account, accepted_at) index's order, which
    masking does not change: a request's recipients share their acceptance time."""
    monkeypatch.setattr(sqlite_ends, "ERASE_CHUNK", PAGE)
    store = await _store(tmp_path)
    try:
        rowids = await _group(store)
        pages = []
        for at in (0, GROUP // 2, GROUP - 2 * PAGE):
            end = sqlite_ends._End(
                0, "acc_a", "erase", "***", "ERASED", NOW, rowids[-1], (NOW, rowids[at])
            )
            got: list[Any] = []

            def chunk(c: sqlite3.Connection, end: Any = end, got: list[Any] = got) -> None:
                got.append(sqlite_ends._chunk(c, end))

            pages.append(await _write_steps(store, chunk))
            assert got == [(0, (NOW, rowids[at + PAGE]))]
        _no_reread(pages[0], pages[1])
        _no_reread(pages[0], pages[2])
    finally:
        await store.close()


async def test_a_claim_s_later_round_from_the_middle_of_a_group_reads_no_row_behind(
    tmp_path: Path,
) -> None:
    store = await _store(tmp_path)
    try:
        rowids = await _group(store)
        pages = []
        for at in (0, GROUP // 2, GROUP - 2 * PAGE):
            got: list[Any] = []

            def due(c: sqlite3.Connection, at: int = at, got: list[Any] = got) -> None:
                got.extend(_Scan(None, NOW, 10**6)._due(c, "acc_a", (NOW, rowids[at]), PAGE))

            pages.append(await _write_steps(store, due))
            assert [r[2] for r in got] == rowids[
                at + 1 : at + 1 + PAGE
            ]  # _DUE_COLS: the rowid third
        _no_reread(pages[0], pages[1])
        _no_reread(pages[0], pages[2])
    finally:
        await store.close()


# -- every row once, in order --------------------------------------------------------------------


async def _mixed(store: SqliteStore) -> list[tuple[str, int, int, str]]:
    """Messages over three accounts, groups of 1-9 sharing a due time, accepted interleaved
    (rowids of one group not adjacent), every 5th scheduled (it keeps its time in a clock
    shift), every 7th tried, every 4th of sign "x": (account, due time, rowid, id) of each
    in the queue index's order."""
    k = 0
    for rnd in range(3):
        for a, account in enumerate(ACCOUNTS):
            msgs = []
            for g in range(6):
                due = NOW + 1_000 * g + a
                for _ in range((g * 7 + rnd * 3 + a) % 9 + 1):
                    k += 1
                    sched = {"scheduled_at": due} if k % 5 == 0 else {}
                    at = NOW if sched else due
                    sign = "x" if k % 4 == 0 else "y"
                    msgs.append(_message(f"m{k:05d}", account, at, sign_name=sign, **sched))
            await _accept(store, account, msgs)
    _sql(store, "UPDATE messages SET segments_sent=1 WHERE CAST(substr(id, 2) AS INT) % 7 = 0")
    return sorted(
        _sql(store, "SELECT account_id, q_not_before, rowid, id FROM messages"),
        key=lambda r: (r[0], r[1], r[2]),
    )


async def test_the_waiting_texts_visit_every_waiting_text_once_in_order(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        rows = await _mixed(store)
        tried = {r[0] for r in _sql(store, "SELECT id FROM messages WHERE segments_sent>0")}
        want = [r[3] for r in rows if r[3] not in tried]
        seen: list[str] = []
        after = None
        while True:
            page, after = await store.waiting_texts(after, 7)
            seen += [t.id for t in page]
            if after is None:
                break
        assert seen == want
    finally:
        await store.close()


async def test_walk_queue_visits_every_waiting_row_once_in_order(tmp_path: Path) -> None:
    """The senders and do-not-contact walks' pages: across accounts, from the start cursor."""
    store = await _store(tmp_path)
    try:
        rows = await _mixed(store)
        xs = {r[0] for r in _sql(store, "SELECT id FROM messages WHERE sign_name='x'")}
        for where, want in (("", rows), ("sign_name='x'", [r for r in rows if r[3] in xs])):
            seen: list[tuple[Any, ...]] = []
            after: tuple[Any, ...] = ("", -(1 << 62), 0)
            while True:

                def job(
                    c: sqlite3.Connection, after: Any = after, where: str = where
                ) -> list[tuple[Any, ...]]:
                    return pipe.walk_queue(c, "id", after, 7, where)

                page = await store._runner.read(job)
                seen += page
                if len(page) < 7:
                    break
                after = page[-1][:3]
            assert seen == want
    finally:
        await store.close()


async def test_a_clock_shift_moves_every_row_once_and_keeps_the_scheduled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_clock, "CHUNK", 7)
    store = await _store(tmp_path)
    try:
        await _mixed(store)
        before = dict(_sql(store, "SELECT id, q_not_before FROM messages"))
        scheduled = {r[0] for r in _sql(store, "SELECT id FROM messages WHERE scheduled_at>0")}
        moved, _hooks = await store.clock_stepped_back(60_000, NOW, (), ClockShift(60_000, NOW))
        after = dict(_sql(store, "SELECT id, q_not_before FROM messages"))
        assert moved == len(before) - len(scheduled)
        assert after == {mid: at if mid in scheduled else at - 60_000 for mid, at in before.items()}
    finally:
        await store.close()


async def test_an_end_in_chunks_ends_every_never_tried_message_of_its_scope_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_ends, "END_CHUNK", 7)
    store = await _store(tmp_path)
    try:
        await _mixed(store)
        want = {
            r[0]
            for r in _sql(
                store,
                "SELECT id FROM messages WHERE account_id='acc_b' AND sign_name='x' "
                "AND segments_sent=0",
            )
        }
        pending: list[int] = []

        def begin(c: sqlite3.Connection) -> int:
            return sqlite_ends._begin(c, "acc_b", "sign", "x", "ENDED", NOW, pending)

        ended = await store._runner.write(begin)
        assert pending  # more than a chunk: the rest in chunks of their own
        ended += await sqlite_ends.finish(store._runner.write, pending, NOW)
        assert ended == len(want)
        got = {
            r[0] for r in _sql(store, "SELECT message_id FROM segments WHERE error_code='ENDED'")
        }
        assert got == want
    finally:
        await store.close()


async def test_an_erase_in_chunks_masks_every_message_of_the_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_ends, "ERASE_CHUNK", 7)
    store = await _store(tmp_path)
    try:
        await _mixed(store)
        pending: list[int] = []

        def begin(c: sqlite3.Connection) -> None:
            sqlite_ends.start_erase(c, "acc_c", "***", NOW, pending)

        await store._runner.write(begin)
        assert pending
        await sqlite_ends.finish(store._runner.write, pending, NOW)
        kept = _sql(store, "SELECT account_id, recipient, text IS NULL FROM messages")
        assert {r for r in kept if r[0] == "acc_c"} == {("acc_c", "***", 1)}
        assert {r for r in kept if r[0] != "acc_c"} == {
            ("acc_a", "+8613800138000", 0),
            ("acc_b", "+8613800138000", 0),
        }
    finally:
        await store.close()


async def test_a_claim_that_parks_takes_the_routable_in_order_over_its_rounds(
    tmp_path: Path,
) -> None:
    """Most of one account's group parked (its route down): the claim's later rounds go on
    after the last row each looked at and take the routable ones, oldest first."""
    store = await _store(tmp_path)
    try:
        msgs = [
            _message(f"p{k:04d}", "acc_a", NOW, recipient="+86111" if k % 10 == 0 else "+86999")
            for k in range(300)
        ]
        await _accept(store, "acc_a", msgs)

        def park(recipient: str) -> str | None:
            return "down" if recipient == "+86999" else None

        work = await store.claim("inst", 8, NOW + 1, 60_000, park=park)
        assert [w.id for w in work] == [f"p{k:04d}" for k in range(0, 80, 10)]
    finally:
        await store.close()
