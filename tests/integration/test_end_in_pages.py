"""An account's many waiting messages end in chunks, each a transaction of its own, on both
engines: SQLite (bridge/store/sqlite_ends.py, a real file) and PostgreSQL
(bridge/store/postgres_pending_ends.py, a real server: SMPP_BRIDGE_CI=1).

Before, on PostgreSQL, a disable (or a sign or template deleted or rejected, `marketing` or
`raw_text` turned off) ended every waiting message in the one transaction that made the change:
with a million waiting, minutes, 2 GB of WAL, and every account's claims seconds each, skipping
the rows it held. END_CHUNK is made small here so a few hundred messages take several chunks.
An account's close goes the same way on both since session 47 (its waiting messages ended in
pages, then the close's transaction, then its history masked in pages, reads masked meanwhile);
before, PostgreSQL's was one transaction holding every message the account ever had.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Any

import asyncpg
import pytest

from bridge.domain.admission import Priced, Rules
from bridge.domain.ledger import topup
from bridge.store import (
    postgres_clock,
    postgres_ends,
    postgres_pending_ends,
    sqlite_clock,
    sqlite_ends,
)
from bridge.store.base import RESUME_AFTER_MS, Store
from bridge.store.models import AcceptBatch, Account, MoMessage, NewMessage, Sign, SubmitResult
from tests import store_engines
from tests.integration.test_end_in_chunks import assert_closed_reads_masked, is_masked
from tests.messages import one_part
from tests.pg_walks import cash, refunds
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
    # A close's masking of the account's history (SQLite: sqlite_ends; PostgreSQL: postgres_ends).
    erasing = sqlite_ends if engine.name == "sqlite" else postgres_ends
    monkeypatch.setattr(erasing, "ERASE_CHUNK", CHUNK)
    monkeypatch.setattr(erasing, "MO_CHUNK", CHUNK)  # ... and of its MO inbox


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


# -- an account's close -----------------------------------------------------------------------

HISTORY = 90  # messages sent before the close: masked with the rest (220 in all: six pages)
PRICE = 45_000
CASH = 100_000_000
MASK = "+***"
_UNMASKED = (
    "SELECT COUNT(*) FROM messages WHERE account_id='acc_big' "
    "AND (recipient <> '+***' OR text IS NOT NULL OR client_ref IS NOT NULL)"
)
_UNBLANKED = (
    "SELECT COUNT(*) FROM segments s JOIN messages m ON m.id = s.message_id "
    "WHERE m.account_id='acc_big' AND (length(s.short_message) > 0 OR length(s.tlvs) > 0)"
)
_MO = "SELECT source, text FROM mo_inbox WHERE account_id='acc_big'"
WAITING = [f"m{k:06d}" for k in range(BIG)]


async def _charged_history(store: Store) -> None:
    """acc_big: HISTORY messages sent, then BIG waiting, each charged PRICE, and an MO."""
    await store.append_ledger("acc_big", topup(CASH, NOW - 1_000, "funds"))

    async def accept(prefix: str, n: int) -> None:
        msgs = tuple(
            one_part(f"{prefix}{k:06d}", "acc_big", f"+8613{prefix == 'h':d}{k:08d}", NOW,
                     price_class="D", client_ref=f"ref-{prefix}{k}")
            for k in range(n)
        )  # fmt: skip
        rules = Rules(charges=tuple(Priced(m.id, PRICE, False) for m in msgs), billing=True)
        assert (
            await store.accept(AcceptBatch("acc_big", msgs, None, None, rules=rules), NOW)
        ).accepted

    await accept("h", HISTORY)
    taken = [w.id for w in await store.claim("inst", 500, NOW, 60_000)]
    assert len(taken) == HISTORY
    sent = [SubmitResult(m, 1, "sent", "smscA", f"x{m}", f"x{m}", at=NOW) for m in taken]
    await store.record_submits(sent, [], NOW)
    await accept("m", BIG)
    await store.store_mo(
        MoMessage("mo_big", "acc_big", "smscA", "+8613700000001", "1069", "hi", NOW)
    )


def _scopes(engine: EngineHandle, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The scope of the end each page (chunk) of its own worked ("done": its row gone)."""
    seen: list[str] = []
    mod = _ends(engine)
    step = mod._step
    if engine.name == "sqlite":

        def counted(c: sqlite3.Connection, end_id: int, *args: Any) -> int | None:
            row = c.execute("SELECT scope FROM pending_ends WHERE id=?", (end_id,)).fetchone()
            seen.append(row[0] if row else "done")
            return step(c, end_id, *args)

        monkeypatch.setattr(mod, "_step", counted)
    else:

        async def counted_pg(c: Any, end_id: int, *args: Any, **kw: Any) -> int | None:
            scope = await c.fetchval("SELECT scope FROM pending_ends WHERE id = $1", end_id)
            seen.append(scope or "done")
            return await step(c, end_id, *args, **kw)

        monkeypatch.setattr(mod, "_step", counted_pg)
    return seen


async def _all_masked(engine: EngineHandle) -> None:
    assert await _rows(engine, _UNMASKED) == [(0,)]
    assert await _rows(engine, _UNBLANKED) == [(0,)]
    assert await _rows(engine, _MO) == [(MASK, None)]


async def test_a_close_ends_and_masks_in_pages_refunding_each_waiting_message_once(
    engine: EngineHandle, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's close was one transaction: every message the account ever had locked (and
    every claim skipping them) to its commit. Now its waiting ones end in pages (ERASED,
    refunded), its transaction writes the pockets off once their refunds are in, and its
    history is masked in pages after it, as on SQLite."""
    await _charged_history(store)
    scopes = _scopes(engine, monkeypatch)
    closed = await store.close_account("acc_big", NOW + 1)
    assert closed is not None
    assert scopes.count("account") >= 3, scopes  # 130 waiting: pages of 40
    assert scopes.count("erase") >= 5, scopes  # 220 messages: pages of 40
    assert await _states(engine) == {"ERASED": BIG, "done": HISTORY}
    await _all_masked(engine)
    assert await _pending(engine) == 0
    # Refunded once each, then what it held written off (close_plan): the refunds were in.
    assert await refunds(store, "acc_big") == WAITING
    assert [e.amount for e in closed.entries] == [-(CASH - HISTORY * PRICE)]
    assert await cash(store, "acc_big") == 0
    account = await store.get_account("acc_big")
    assert account is not None and account.status == "closed"

    # Closed again: nothing more ended, refunded or written off; the rows as they were.
    rows = await _rows(engine, "SELECT id, recipient, q_state, error_code FROM messages")
    again = await store.close_account("acc_big", NOW + 2)
    assert again is not None and again.entries == ()
    assert await refunds(store, "acc_big") == WAITING
    assert await _rows(engine, "SELECT id, recipient, q_state, error_code FROM messages") == rows
    assert await _pending(engine) == 0


async def test_reads_of_a_closed_account_s_messages_are_masked_while_its_masking_runs(
    engine: EngineHandle, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Until the masking's last page (or, its process stopped, the sweep's), the rows past its
    cursor still name their numbers. Every read of them answers them masked as the masking will
    leave them: the message (GET /v1/messages/{id}, the webhook sender), the list and its `to`
    filter (GET /v1/messages, Alibaba's QuerySendDetails), the CDR pages (GET /v1/cdrs), and the
    MO history a reply is attributed by (a reply is no longer the closed account's)."""
    await _queue(store, BIG)
    number = "+8613800000100"  # m000100: past the masking's first page
    mine = _message("a_other", "acc_other", number)  # the other account wrote to it too
    await store.accept(AcceptBatch("acc_other", (mine,), None, None), NOW)
    assert await store.attribute_mo(number, (), NOW + 5, default=True) == ("acc_big", None)

    _stop_after_first(engine, monkeypatch)  # the process stops after each commit of the close
    assert await store.close_account("acc_big", NOW + 1) is not None
    # Not masked yet in the table (SQLite's close masked its first chunk itself).
    unmasked = "SELECT COUNT(*) FROM messages WHERE account_id='acc_big' AND recipient<>'+***'"
    assert await _rows(engine, unmasked) == [(BIG - _first(engine),)]

    await assert_closed_reads_masked(store, number, MASK)
    # Counted on /metrics, both engines: the masking, and the end of what waited (the close's
    # transaction ended the rest; the sweep finds it done).
    assert (await store.chunked_work())["ends"][0] == 2

    # Once the sweep finished the masking, the rows themselves read the same.
    _restart(engine, monkeypatch)
    await store.sweep(NOW + 1 + RESUME_AFTER_MS, 3_600_000)
    assert await _rows(engine, unmasked) == [(0,)]
    assert await _pending(engine) == 0
    again = await store.get_message("acc_big", "m000100")
    assert again is not None and is_masked(again, MASK)
    assert await store.attribute_mo(number, (), NOW + 5, default=True) == ("acc_other", None)


def _fail_at(engine: EngineHandle, monkeypatch: pytest.MonkeyPatch, scope: str, n: int) -> None:
    """The process stops (an exception) at the `n`th page of an end of `scope`, after the ones
    before it committed."""
    seen: list[str] = []
    mod = _ends(engine)
    step = mod._step

    def check(found: str | None) -> None:
        seen.append(found or "done")
        if seen.count(scope) == n and found == scope:
            raise RuntimeError("the process stopped")

    if engine.name == "sqlite":

        def failing(c: sqlite3.Connection, end_id: int, *args: Any) -> int | None:
            row = c.execute("SELECT scope FROM pending_ends WHERE id=?", (end_id,)).fetchone()
            check(row[0] if row else None)
            return step(c, end_id, *args)

        monkeypatch.setattr(mod, "_step", failing)
    else:

        async def failing_pg(c: Any, end_id: int, *args: Any, **kw: Any) -> int | None:
            check(await c.fetchval("SELECT scope FROM pending_ends WHERE id = $1", end_id))
            return await step(c, end_id, *args, **kw)

        monkeypatch.setattr(mod, "_step", failing_pg)


async def test_a_close_stopped_while_it_ends_what_waits_is_finished_by_the_sweep_and_again(
    engine: EngineHandle, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped after its first page of waiting messages: the account sends nothing (disabled,
    its end recorded), the sweep ends the rest, and the close made again closes it: each waiting
    message refunded once, the pockets written off after them, everything masked."""
    await _charged_history(store)
    _fail_at(engine, monkeypatch, "account", 2)
    with pytest.raises(RuntimeError):
        await store.close_account("acc_big", NOW + 1)
    _restart(engine, monkeypatch)
    account = await store.get_account("acc_big")
    assert account is not None and account.status == "disabled"
    left = (await _states(engine)).get("queued", 0)
    assert 0 < left < BIG
    assert [w.id for w in await store.claim("inst", 500, NOW + 2, 60_000)] == []  # none sent

    await store.sweep(NOW + 60_000 + RESUME_AFTER_MS, 3_600_000)
    assert await _states(engine) == {"ERASED": BIG, "done": HISTORY}
    assert await refunds(store, "acc_big") == WAITING
    closed = await store.close_account("acc_big", NOW + 3)
    assert closed is not None
    assert [e.amount for e in closed.entries] == [-(CASH - HISTORY * PRICE)]
    await _all_masked(engine)
    assert await refunds(store, "acc_big") == WAITING
    assert await _pending(engine) == 0


@pytest.mark.parametrize("then", ["sweep", "close again"])
async def test_a_close_stopped_while_it_masks_is_finished_by_the_sweep_or_a_close_again(
    engine: EngineHandle, store: Store, monkeypatch: pytest.MonkeyPatch, then: str
) -> None:
    """Stopped after its first page of masking (the close itself committed): the sweep masks the
    rest once nobody has worked it for RESUME_AFTER_MS, and so does the close made again,
    nothing refunded or written off twice."""
    await _charged_history(store)
    _fail_at(engine, monkeypatch, "erase", 2)
    with pytest.raises(RuntimeError):
        await store.close_account("acc_big", NOW + 1)
    _restart(engine, monkeypatch)
    account = await store.get_account("acc_big")
    assert account is not None and account.status == "closed"
    ((unmasked,),) = await _rows(engine, _UNMASKED)
    assert 0 < unmasked < BIG + HISTORY
    assert await _pending(engine) == 1
    page = await store.list_messages("acc_big", limit=500)  # read masked meanwhile
    assert len(page) == BIG + HISTORY and {r.recipient for r in page} == {MASK}

    await store.sweep(NOW + 2, 3_600_000)  # worked a moment ago: left to its worker
    assert await _rows(engine, _UNMASKED) == [(unmasked,)]
    if then == "sweep":
        await store.sweep(NOW + 60_000 + RESUME_AFTER_MS, 3_600_000)
    else:
        again = await store.close_account("acc_big", NOW + 3)
        assert again is not None and again.entries == ()
        if engine.name == "sqlite":  # SQLite's close masks afresh; the old masking is the sweep's
            await store.sweep(NOW + 60_000 + RESUME_AFTER_MS, 3_600_000)
    await _all_masked(engine)
    assert await _pending(engine) == 0
    assert await refunds(store, "acc_big") == WAITING
    assert await cash(store, "acc_big") == 0
    assert await _states(engine) == {"ERASED": BIG, "done": HISTORY}


async def test_other_accounts_send_and_the_closing_account_accepts_nothing_while_it_closes(
    engine: EngineHandle, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between the close's pages another account's messages are claimed (in its one
    transaction on PostgreSQL, every claim skipped the rows it held: 74 a second of the other
    account's claimed, against ~5,000, at 200,000 waiting); the closing account's accept is
    refused from its first commit on, and after its answer."""
    await _charged_history(store)
    other = tuple(_message(f"o{k:04d}", "acc_other", f"+86139{k:08d}") for k in range(5))
    await store.accept(AcceptBatch("acc_other", other, None, None), NOW)
    claimed: list[str] = []
    refused: list[str | None] = []

    async def meanwhile() -> None:
        claimed.extend(w.id for w in await store.claim("inst", 500, NOW + 2, 60_000))
        acc = await store.get_account("acc_big")
        assert acc is not None
        late = (_message("late", "acc_big", "+8613600000000"),)
        batch = AcceptBatch("acc_big", late, None, None, account_version=acc.updated_at)
        out = await store.accept(batch, NOW + 2)
        refused.append(None if out.accepted else out.auth_refusal)

    steps = _between_pages(engine, monkeypatch, meanwhile)
    assert await store.close_account("acc_big", NOW + 1) is not None
    await asyncio.sleep(0)
    assert steps and claimed == [f"o{k:04d}" for k in range(5)]
    assert refused == ["disabled"]
    account = await store.get_account("acc_big")
    assert account is not None and account.status == "closed"
    late = (_message("late", "acc_big", "+8613600000000"),)
    out = await store.accept(
        AcceptBatch("acc_big", late, None, None, account_version=account.updated_at), NOW + 3
    )
    assert not out.accepted and out.auth_refusal is not None
    assert await store.get_message("acc_big", "late") is None


async def test_a_close_deletes_the_stored_answers_in_pages_and_the_sweep_finishes(
    engine: EngineHandle, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: the close deleted the account's stored idempotent answers in its one
    statement (an account sending 100 keyed requests a second keeps 8.6 million). Now they go
    DROP_CHUNK per transaction after the masking, counted on /metrics as `erasures` (SQLite's
    own: test_erasure_in_chunks.py)."""
    if engine.name != "postgres":
        pytest.skip("SQLite deletes them in chunks of sqlite_erase: test_erasure_in_chunks.py")
    monkeypatch.setattr(postgres_ends, "DROP_CHUNK", CHUNK)
    for aid, n in (("acc_big", BIG), ("acc_other", 2)):
        for k in range(n):
            assert (
                await store.take_idempotency(aid, f"key-{k:04d}", "h", NOW + 86_400_000, NOW)
                is None
            )
    mine = "SELECT COUNT(*) FROM idempotency WHERE account_id='acc_big'"
    _fail_at(engine, monkeypatch, "answers", 2)
    with pytest.raises(RuntimeError):
        await store.close_account("acc_big", NOW + 1)
    _restart(engine, monkeypatch)
    assert await _rows(engine, mine) == [(BIG - CHUNK,)]
    work = await store.chunked_work()
    assert work["erasures"][0] == 1 and work["ends"] == (0, None)

    await store.sweep(NOW + 60_000 + RESUME_AFTER_MS, 3_600_000)
    assert await _rows(engine, mine) == [(0,)]
    assert await _rows(engine, "SELECT COUNT(*) FROM idempotency WHERE account_id='acc_other'") == [
        (2,)
    ]
    assert await _pending(engine) == 0
    assert (await store.chunked_work()).get("erasures", (0, None)) == (0, None)


# -- a close's masking of the MO inbox, and the statistics by number prefix meanwhile ----------

_MO_UNMASKED = (
    "SELECT COUNT(*) FROM mo_inbox WHERE account_id='acc_big' "
    "AND (source <> '+***' OR text IS NOT NULL)"
)


async def _inbox(store: Store, n: int) -> None:
    """n replies to acc_big, ten to a millisecond (a page's boundary falls inside one), and one
    to acc_other."""
    for k in range(n):
        mo = MoMessage(f"mo{k:06d}", "acc_big", "smscA", f"+86137{k:08d}", "1069", f"hi {k}",
                       NOW - 1_000 + k // 10)  # fmt: skip
        assert await store.store_mo(mo)
    theirs = MoMessage("mo_other", "acc_other", "smscA", "+8613700000001", "1069", "yo", NOW)
    assert await store.store_mo(theirs)


async def test_a_close_masks_the_mo_inbox_in_pages_read_masked_meanwhile_and_resumed(
    engine: EngineHandle, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close masked the account's MO inbox in one statement on both engines: with millions
    of replies, one long hold of SQLite's write lock, one long transaction on PostgreSQL. Now it
    goes in pages of its own transactions after the close's, as the messages' masking does;
    until the last, a read of a reply (get_mo: the webhook sender, the inbound repeat checks)
    answers it as the masking will leave it; a process stopped part-way leaves it to the sweep."""
    await _inbox(store, BIG)
    _stop_after_first(engine, monkeypatch)  # the process stops after each commit of the close
    assert await store.close_account("acc_big", NOW + 1) is not None
    # In the table, only what the close's own transaction masked (SQLite's first chunk).
    assert await _rows(engine, _MO_UNMASKED) == [(BIG - _first(engine),)]
    for mo_id in ("mo000000", "mo000100", f"mo{BIG - 1:06d}"):
        got = await store.get_mo(mo_id)
        assert got is not None and (got.source, got.text) == (MASK, None), got
        assert got.account_id == "acc_big" and got.received_at == NOW - 1_000 + int(mo_id[2:]) // 10
    theirs = await store.get_mo("mo_other")
    assert theirs is not None and (theirs.source, theirs.text) == ("+8613700000001", "yo")
    assert (await store.chunked_work())["ends"][0] >= 1  # counted on /metrics

    _restart(engine, monkeypatch)
    scopes = _scopes(engine, monkeypatch)
    await store.sweep(NOW + 1 + RESUME_AFTER_MS, 3_600_000)
    assert scopes.count("mo") >= 3, scopes  # 130 (SQLite: 90 left) in pages of 40
    assert await _rows(engine, _MO_UNMASKED) == [(0,)]
    assert await _pending(engine) == 0
    got = await store.get_mo("mo000100")
    assert got is not None and (got.source, got.text) == (MASK, None)
    theirs = await store.get_mo("mo_other")
    assert theirs is not None and (theirs.source, theirs.text) == ("+8613700000001", "yo")


async def test_a_close_stopped_while_it_masks_the_inbox_is_finished_by_the_sweep(
    engine: EngineHandle, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped at its second page of the inbox (its first committed): what the first masked
    stays masked, nobody else's reply is touched, and the sweep masks the rest, then the
    account's messages."""
    await _inbox(store, BIG)
    await _queue(store, 50)
    _fail_at(engine, monkeypatch, "mo", 2)
    with pytest.raises(RuntimeError):
        await store.close_account("acc_big", NOW + 1)
    _restart(engine, monkeypatch)
    ((left,),) = await _rows(engine, _MO_UNMASKED)
    assert 0 < left < BIG
    await store.sweep(NOW + 60_000 + RESUME_AFTER_MS, 3_600_000)
    assert await _rows(engine, _MO_UNMASKED) == [(0,)]
    assert await _rows(engine, _UNMASKED) == [(0,)]
    assert await _pending(engine) == 0
    assert await _rows(engine, "SELECT source, text FROM mo_inbox WHERE id='mo_other'") == [
        ("+8613700000001", "yo")
    ]


async def test_statistics_by_number_prefix_of_a_closed_account_read_masked_while_it_masks(
    engine: EngineHandle, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The statistics filtered by a number prefix (Alibaba's QuerySendStatistics, IsGlobe 1 or
    2) read the recipients as they were while the close's masking ran: a closed account's counts
    by number prefix stayed queryable, and changed page by page, until the last. They answer as
    the masking will leave them (every number the mask), as the reads of its messages do."""
    await _queue(store, BIG)  # all to +86 numbers
    day = (NOW // 86_400_000) * 86_400_000
    span = (day, day + 86_400_000, 0)
    before = await store.stats("acc_big", *span, prefix="+86", within=True)
    assert [r["submitted"] for r in before] == [BIG]
    _stop_after_first(engine, monkeypatch)
    assert await store.close_account("acc_big", NOW + 1) is not None
    assert await _rows(engine, _UNMASKED) == [(BIG - _first(engine),)]  # still under way

    async def counts() -> tuple[list[int], list[int], list[int]]:
        inside = await store.stats("acc_big", *span, prefix="+86", within=True)
        outside = await store.stats("acc_big", *span, prefix="+86", within=False)
        every = await store.stats("acc_big", *span)
        return ([r["submitted"] for r in inside], [r["submitted"] for r in outside],
                [r["submitted"] for r in every])  # fmt: skip

    assert await counts() == ([], [BIG], [BIG])
    # Another account's counts by prefix are its own.
    mine = _message("a_other", "acc_other", "+8613800000001")
    await store.accept(AcceptBatch("acc_other", (mine,), None, None), NOW)
    theirs = await store.stats("acc_other", *span, prefix="+86", within=True)
    assert [r["submitted"] for r in theirs] == [1]

    _restart(engine, monkeypatch)
    await store.sweep(NOW + 1 + RESUME_AFTER_MS, 3_600_000)
    assert await _pending(engine) == 0
    assert await counts() == ([], [BIG], [BIG])  # the same once the rows are masked


async def test_the_sweep_leaves_an_end_of_a_scope_this_release_does_not_know(
    engine: EngineHandle, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An end a newer release recorded (a rolling upgrade on PostgreSQL, a downgrade on SQLite)
    is left to the instances that know its scope: before, the sweep's step failed on it at every
    sweep, and the stale ends listed after it were never finished."""
    later = (
        "INSERT INTO pending_ends (account_id, scope, value, error, ended_at, {max}, after_nb, "
        "{after}, worked_at) VALUES ('acc_other', 'a_later_scope', NULL, 'ERASED', {now}, 0, 0, "
        "{start}, {now})"
    )
    if engine.name == "sqlite":
        c = sqlite3.connect(engine.location)
        with c:
            c.execute(later.format(max="max_rowid", after="after_rowid", now=NOW, start=0))
        c.close()
    else:
        pc = await asyncpg.connect(engine.location)
        try:
            await pc.execute(later.format(max="max_seq", after="after_id", now=NOW, start="''"))
        finally:
            await pc.close()
    await _queue(store, BIG)
    _stop_after_first(engine, monkeypatch)
    await store.update_account("acc_big", {"status": "disabled"}, NOW + 1)
    _restart(engine, monkeypatch)
    assert await _pending(engine) == 2

    await store.sweep(NOW + 2 + RESUME_AFTER_MS, 3_600_000)
    # The disable's end, listed after the unknown one, is finished; the unknown one is kept.
    assert await _states(engine) == {"ACCOUNT_DISABLED": BIG}
    assert await _rows(engine, "SELECT scope FROM pending_ends") == [("a_later_scope",)]
