"""An account's many waiting messages end in chunks, each a transaction of its own, on both
engines: SQLite (bridge/store/sqlite_ends.py, a real file) and PostgreSQL
(bridge/store/postgres_pending_ends.py, a real server: SMPP_BRIDGE_CI=1).

Before, on PostgreSQL, a disable (or a sign or template deleted or rejected, `marketing` or
`raw_text` turned off) ended every waiting message in the one transaction that made the change:
with a million waiting, minutes, 2 GB of WAL, and every account's claims seconds each, skipping
the rows it held. END_CHUNK is made small here so a few hundred messages take several chunks.
The close's chunks and the reads masked meanwhile are SQLite's own: test_end_in_chunks.py.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import asyncpg
import pytest

from bridge.store import postgres_clock, postgres_pending_ends, sqlite_clock, sqlite_ends
from bridge.store.base import RESUME_AFTER_MS, Store
from bridge.store.models import AcceptBatch, Account, NewMessage, Sign
from tests import store_engines
from tests.messages import one_part
from tests.store_engines import EngineHandle

engine = store_engines.engine

NOW = 1_700_000_000_000
CHUNK = 40
BIG = 130  # four chunks: 40 + 40 + 40 + 10


def _ends(engine: EngineHandle) -> ModuleType:
    return sqlite_ends if engine.name == "sqlite" else postgres_pending_ends


def _first(engine: EngineHandle) -> int:
    """What the change's own transaction ends: SQLite's first chunk; none on PostgreSQL, whose
    claims run meanwhile and see the end's row only once it committed (postgres_pending_ends)."""
    return CHUNK if engine.name == "sqlite" else 0


def _after_first(engine: EngineHandle, error: str) -> dict[str, int]:
    first = _first(engine)
    return {error: first, "queued": BIG - first} if first else {"queued": BIG}


def _shrink(engine: EngineHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_ends(engine), "END_CHUNK", CHUNK)


@pytest.fixture(autouse=True)
def _small_chunks(engine: EngineHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    _shrink(engine, monkeypatch)


@pytest.fixture
async def store(engine: EngineHandle) -> AsyncIterator[Store]:
    s = engine.new_store()
    await s.open()
    try:
        for aid in ("acc_big", "acc_other"):
            await s.create_account(
                Account(
                    id=aid, name=aid, webhook_secret_enc=b"sealed", created_at=NOW, updated_at=NOW
                )
            )
        yield s
    finally:
        await s.close()


def _message(mid: str, account_id: str, number: str, sign: str | None = None) -> NewMessage:
    return one_part(mid, account_id, number, NOW, sign_name=sign)


async def _queue(store: Store, n: int, sign: str | None = None, first: int = 0) -> None:
    msgs = tuple(
        _message(f"m{k:06d}", "acc_big", f"+86138{k:08d}", sign) for k in range(first, first + n)
    )
    await store.accept(AcceptBatch("acc_big", msgs, None, None), NOW)


async def _rows(engine: EngineHandle, sql: str) -> list[tuple[Any, ...]]:
    if engine.name == "sqlite":
        c = sqlite3.connect(engine.location)
        try:
            return c.execute(sql).fetchall()
        finally:
            c.close()
    pc = await asyncpg.connect(engine.location)
    try:
        return [tuple(r) for r in await pc.fetch(sql)]
    finally:
        await pc.close()


async def _states(engine: EngineHandle) -> dict[str, int]:
    return dict(
        await _rows(
            engine,
            "SELECT COALESCE(error_code, q_state), COUNT(*) FROM messages "
            "WHERE account_id='acc_big' GROUP BY 1",
        )
    )


async def _pending(engine: EngineHandle) -> int:
    return int((await _rows(engine, "SELECT COUNT(*) FROM pending_ends"))[0][0])


def _stop_after_first(engine: EngineHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process stops after the change's commit: none of the end's own pages run."""

    async def stopped(*_args: object, **_kw: object) -> int:
        return 0

    monkeypatch.setattr(_ends(engine), "finish", stopped)


def _restart(engine: EngineHandle, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()
    _shrink(engine, monkeypatch)


def _between_pages(
    engine: EngineHandle, monkeypatch: pytest.MonkeyPatch, between: Any
) -> list[int]:
    """Run `between()` (a coroutine function) once, before the end's first page of its own:
    on PostgreSQL awaited there, on SQLite (whose chunks are writes of the one writer) as a task
    that runs between two chunks. The steps counted."""
    steps: list[int] = []
    mod = _ends(engine)
    step = mod._step
    if engine.name == "sqlite":

        def counted(c: sqlite3.Connection, end_id: int, *args: Any) -> int | None:
            steps.append(end_id)
            if len(steps) == 1:
                asyncio.get_running_loop().create_task(between())
            return step(c, end_id, *args)

        monkeypatch.setattr(mod, "_step", counted)
    else:

        async def counted_pg(c: Any, end_id: int, *args: Any, **kw: Any) -> int | None:
            steps.append(end_id)
            if len(steps) == 1:
                await between()
            return await step(c, end_id, *args, **kw)

        monkeypatch.setattr(mod, "_step", counted_pg)
    return steps


async def test_a_disable_ends_in_chunks_and_other_writers_go_in_between(
    engine: EngineHandle, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _queue(store, BIG)
    between: list[int] = []

    async def accept_other() -> None:
        other = (_message("other", "acc_other", "+8613900000000"),)
        await store.accept(AcceptBatch("acc_other", other, None, None), NOW + 2)
        between.append(len(steps))

    steps = _between_pages(engine, monkeypatch, accept_other)
    await store.update_account("acc_big", {"status": "disabled"}, NOW + 1)

    # The first transaction ended one chunk (none on PostgreSQL); the rest (and one that found
    # none left) followed.
    assert len(steps) == (4 if engine.name == "sqlite" else 5)
    # The other account's accept committed between them, not after the whole end.
    assert between and between[0] < len(steps)
    assert await _states(engine) == {"ACCOUNT_DISABLED": BIG}
    assert await _pending(engine) == 0
    other = await store.get_message("acc_other", "other")
    assert other is not None and other.state == "queued"


async def test_a_claim_ends_what_an_unfinished_end_covers_and_the_sweep_finishes_it(
    engine: EngineHandle, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _queue(store, BIG)
    other = (_message("other", "acc_other", "+8613900000000"),)
    await store.accept(AcceptBatch("acc_other", other, None, None), NOW)

    _stop_after_first(engine, monkeypatch)
    await store.update_account("acc_big", {"status": "disabled"}, NOW + 1)
    assert await _states(engine) == _after_first(engine, "ACCOUNT_DISABLED")
    _restart(engine, monkeypatch)
    # Counted on /metrics (smpp_bridge_store_chunked_*), PostgreSQL's too.
    assert (await store.chunked_work())["ends"] == (1, NOW + 1)

    # A claim sends none of the disabled account's messages: it ends those it found.
    work = await store.claim("inst", 50, NOW + 2, 60_000)
    assert [w.id for w in work] == ["other"]
    left = (await _states(engine)).get("queued", 0)
    assert left < BIG - _first(engine)

    # The sweep leaves an end its process may still be working ...
    await store.sweep(NOW + 3, 3_600_000)
    assert (await _states(engine)).get("queued", 0) == left
    assert await _pending(engine) == 1
    # ... and finishes one nobody has worked for RESUME_AFTER_MS.
    await store.sweep(NOW + 2 + RESUME_AFTER_MS, 3_600_000)
    assert await _states(engine) == {"ACCOUNT_DISABLED": BIG}
    assert await _pending(engine) == 0
    assert (await store.chunked_work())["ends"] == (0, None)


async def test_an_end_covers_only_the_messages_that_existed_when_it_started(
    engine: EngineHandle, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    sign = Sign("acc_big", "Acme", "Acme", "company", "", "approved", None, None, NOW)
    await store.add_sign(sign)
    await _queue(store, BIG, sign="Acme")

    _stop_after_first(engine, monkeypatch)
    assert await store.delete_sign("acc_big", "Acme", NOW + 1) == _first(engine)
    _restart(engine, monkeypatch)

    # The sign is created again and a message sent with it: the old end does not cover it.
    await store.add_sign(sign)
    await _queue(store, 1, sign="Acme", first=BIG)
    await store.sweep(NOW + 2 + RESUME_AFTER_MS, 3_600_000)
    assert await _states(engine) == {"SIGN_DELETED": BIG, "queued": 1}
    work = await store.claim("inst", 500, NOW + 3, 60_000)
    assert [w.id for w in work] == [f"m{BIG:06d}"]


async def test_an_account_enabled_again_sends_its_new_messages_while_the_old_end_runs(
    engine: EngineHandle, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _queue(store, BIG)
    _stop_after_first(engine, monkeypatch)
    await store.update_account("acc_big", {"status": "disabled"}, NOW + 1)
    _restart(engine, monkeypatch)
    await store.update_account("acc_big", {"status": "active"}, NOW + 2)
    await _queue(store, 1, first=BIG)

    # The claims meanwhile end the old ones they meet and send the new one.
    sent: list[str] = []
    for _ in range(10):
        sent += [w.id for w in await store.claim("inst", 50, NOW + 3, 60_000)]
    assert sent == [f"m{BIG:06d}"]
    await store.sweep(NOW + 2 + RESUME_AFTER_MS, 3_600_000)
    assert await _states(engine) == {"ACCOUNT_DISABLED": BIG, "claimed": 1}
    assert await _pending(engine) == 0


async def test_a_delete_counts_every_message_its_chunks_and_the_claims_between_them_ended(
    engine: EngineHandle, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    sign = Sign("acc_big", "Acme", "Acme", "company", "", "approved", None, None, NOW)
    await store.add_sign(sign)
    await _queue(store, BIG, sign="Acme")
    await _queue(store, 5, first=BIG)  # without the sign: not ended
    taken: list[str] = []

    async def claim() -> None:
        taken.extend(w.id for w in await store.claim("inst", 500, NOW + 2, 60_000))
        taken.append("-")

    steps = _between_pages(engine, monkeypatch, claim)
    assert await store.delete_sign("acc_big", "Acme", NOW + 1) == BIG
    await asyncio.sleep(0)
    assert steps and taken, "no claim between the chunks"
    # The claim took only the messages without the sign; it ended the others it found.
    assert sorted(taken[:-1]) == [f"m{k:06d}" for k in range(BIG, BIG + 5)]
    assert await _states(engine) == {"SIGN_DELETED": BIG, "claimed": 5}


async def test_a_step_back_of_the_clock_moves_the_marks_of_ends_a_stopped_process_left(
    engine: EngineHandle, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Store.clock_stepped_back moves `pending_ends.worked_at` as it moves the queue's times:
    an end marked on the old clock, S ahead, was finished by the sweep S late. A mark made
    after the step (at or before the shift's `now`) stays: moved, a live end would look
    stopped and be worked twice."""
    step = 10 * 60_000  # the old clock was this far ahead
    old = NOW + step
    await _queue(store, BIG)
    other = tuple(_message(f"o{k:04d}", "acc_other", f"+86139{k:08d}") for k in range(BIG))
    await store.accept(AcceptBatch("acc_other", other, None, None), NOW)

    _stop_after_first(engine, monkeypatch)
    await store.update_account("acc_big", {"status": "disabled"}, old - 1_000)  # before
    await store.update_account("acc_other", {"status": "disabled"}, NOW)  # after the step
    _restart(engine, monkeypatch)
    marks = "SELECT account_id, worked_at FROM pending_ends ORDER BY account_id"
    assert await _rows(engine, marks) == [("acc_big", old - 1_000), ("acc_other", NOW)]

    moved = 2 * (BIG - _first(engine))
    assert await store.clock_stepped_back(step, NOW, ()) == (moved, 0)
    assert await _rows(engine, marks) == [("acc_big", NOW - 1_000), ("acc_other", NOW)]

    # The old clock's end is stale RESUME_AFTER_MS after it was marked, on the new clock.
    resume = RESUME_AFTER_MS
    await store.sweep(NOW - 1_000 + resume - 1, 3_600_000)
    assert await _states(engine) == _after_first(engine, "ACCOUNT_DISABLED")
    await store.sweep(NOW - 1_000 + resume, 3_600_000)
    assert await _states(engine) == {"ACCOUNT_DISABLED": BIG}
    assert await _rows(engine, marks) == [("acc_other", NOW)]


async def test_an_end_worked_across_a_step_back_keeps_the_moved_mark(
    engine: EngineHandle, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process working an end counts its marks on from the clock of its start: after the
    shift moved its mark back, its next chunks follow the moved mark instead of writing the old
    clock's time again; stopped then, the sweep finishes it RESUME_AFTER_MS after its last
    chunk, not the step later."""
    step = 10 * 60_000
    old = NOW + step
    await _queue(store, BIG)
    mod = _ends(engine)
    real = mod._step
    calls: list[int] = []

    if engine.name == "sqlite":

        def stepped(c: sqlite3.Connection, end_id: int, *args: Any) -> int | None:
            calls.append(end_id)
            if len(calls) == 2:  # the clock's shift committed between the 1st and 2nd chunks
                sqlite_clock._start(c, by_ms=step, now=NOW)
            if len(calls) == 3:
                raise RuntimeError("the process stopped")
            return real(c, end_id, *args)

        monkeypatch.setattr(mod, "_step", stepped)
    else:

        async def stepped_pg(c: Any, end_id: int, *args: Any, **kw: Any) -> int | None:
            calls.append(end_id)
            if len(calls) == 2:
                await c.execute(postgres_clock._MARKS, step, NOW)
            if len(calls) == 3:
                raise RuntimeError("the process stopped")
            return await real(c, end_id, *args, **kw)

        monkeypatch.setattr(mod, "_step", stepped_pg)
    with pytest.raises(RuntimeError):
        await store.update_account("acc_big", {"status": "disabled"}, old - 1_000)
    _restart(engine, monkeypatch)
    done = _first(engine) + 2 * CHUNK  # the change's, then two chunks of their own
    assert await _states(engine) == {"ACCOUNT_DISABLED": done, "queued": BIG - done}
    ((mark,),) = await _rows(engine, "SELECT worked_at FROM pending_ends")
    assert NOW - 1_000 <= mark < NOW + 5_000  # the new clock's, not old's

    await store.sweep(mark + RESUME_AFTER_MS, 3_600_000)
    assert await _states(engine) == {"ACCOUNT_DISABLED": BIG}


async def test_another_accounts_claim_is_not_held_up_by_a_page_under_way(
    engine: EngineHandle, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: while a page's transaction holds its end's row and its messages, another
    instance's claim (whose guard ends what the end covers) returns the other account's
    messages: the guard counts in a table of its own, not in the end's row the page holds
    (a claim waiting for it, its candidates locked, would deadlock with the page)."""
    if engine.name != "postgres":
        pytest.skip("SQLite's chunks are writes of its one writer: nothing runs inside one")
    await _queue(store, BIG)
    other = tuple(_message(f"o{k:04d}", "acc_other", f"+86139{k:08d}") for k in range(5))
    await store.accept(AcceptBatch("acc_other", other, None, None), NOW)
    second = engine.new_store()
    await second.open()
    got: list[list[str]] = []
    page = postgres_pending_ends._page

    async def claim_mid_page(c: Any, end: Any) -> Any:
        out = await page(c, end)  # this page's messages ended, locked till its commit
        if not got:
            async with asyncio.timeout(20):
                got.append([w.id for w in await second.claim("inst-2", 50, NOW + 2, 60_000)])
        return out

    monkeypatch.setattr(postgres_pending_ends, "_page", claim_mid_page)
    try:
        await store.update_account("acc_big", {"status": "disabled"}, NOW + 1)
    finally:
        await second.close()
    assert got and sorted(got[0]) == [f"o{k:04d}" for k in range(5)]
    assert await _states(engine) == {"ACCOUNT_DISABLED": BIG}


async def test_messages_queued_before_the_boundary_existed_are_covered(
    engine: EngineHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's boundary is the messages' sequence number (migration 33): rows from before
    it have none (NULL, no table rewrite) and are older than any end."""
    s = engine.new_store()
    await s.open()
    for aid in ("acc_big", "acc_other"):
        await s.create_account(Account(id=aid, name=aid, created_at=NOW, updated_at=NOW))
    await _queue(s, BIG)
    await s.close()
    await store_engines.schema_before(engine, 34, 33)  # the release before: no seq
    s = engine.new_store()
    await s.open()  # migrated again: the old rows' seq NULL
    try:
        if engine.name == "postgres":
            assert await _rows(engine, "SELECT COUNT(*) FROM messages WHERE seq IS NULL") == [
                (BIG,)
            ]
        _stop_after_first(engine, monkeypatch)
        await s.update_account("acc_big", {"status": "disabled"}, NOW + 1)
        _restart(engine, monkeypatch)
        await s.update_account("acc_big", {"status": "active"}, NOW + 2)
        await _queue(s, 1, first=BIG)
        await s.sweep(NOW + 2 + RESUME_AFTER_MS, 3_600_000)
        assert await _states(engine) == {"ACCOUNT_DISABLED": BIG, "queued": 1}
        assert [w.id for w in await s.claim("inst", 500, NOW + 3, 60_000)] == [f"m{BIG:06d}"]
    finally:
        await s.close()


async def test_a_disabled_account_under_an_end_takes_no_share_of_the_claims(
    engine: EngineHandle, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: a claim of 50 took 25 of the disabled account's (ended by its guard) and 25
    of the other's; at a million waiting the other accounts got ~390 messages claimed a second
    against ~5,000. Now the other accounts share the claim; the oldest-first rest still meets
    (and ends) the disabled account's messages when they do not fill it."""
    if engine.name != "postgres":
        pytest.skip("SQLite's claim shares as before: its end is chunks of its one writer")
    await _queue(store, BIG)
    other = tuple(_message(f"o{k:04d}", "acc_other", f"+86139{k:08d}") for k in range(60))
    await store.accept(AcceptBatch("acc_other", other, None, None), NOW)
    _stop_after_first(engine, monkeypatch)
    await store.update_account("acc_big", {"status": "disabled"}, NOW + 1)
    _restart(engine, monkeypatch)

    work = await store.claim("inst", 50, NOW + 2, 60_000)
    assert [w.account_id for w in work] == ["acc_other"] * 50
    assert await _states(engine) == {"queued": BIG}  # none of its candidates: none ended
    # The other account's last 10 leave room: the rest of the claim meets acc_big's, and ends them.
    work = await store.claim("inst", 50, NOW + 2, 60_000)
    assert [w.account_id for w in work] == ["acc_other"] * 10
    assert await _states(engine) == {"ACCOUNT_DISABLED": 40, "queued": BIG - 40}
