"""`db after-restore` in pages (bridge/store/sqlite_restore.py, postgres_restore.py): a bounded
number of messages per transaction, so a million waiting take flat memory, and a run stopped
part-way is finished by the next one, each message ended, refunded and reported once. On every
engine (CI=1 needs PostgreSQL), the page made 3: 4 messages on a bind and 8 queued take two and
three pages.
"""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest

import tests.store_engines as engines
from bridge.domain.admission import Priced, Rules
from bridge.domain.ledger import topup
from bridge.store import postgres_pipeline, postgres_restore, sqlite_pipeline, sqlite_restore
from bridge.store.base import Store
from bridge.store.models import AcceptBatch, Account
from tests.messages import one_part

engine = engines.engine
store = engines.store

NOW = 1_700_000_000_000
AT = NOW + 60_000  # when the command runs
DAY = 86_400_000
PRICE = 45_000
ACC = "acc_r"
ON_BIND = [f"c{k}" for k in range(4)]
QUEUED = [f"q{k}" for k in range(8)]
LATER = ["s0", "s1"]  # scheduled after the command: kept
DUE = ON_BIND + QUEUED


async def _accept(store: Store, mids: list[str], **fields: Any) -> None:
    msgs = tuple(
        one_part(m, ACC, f"+4477009{k:05d}", NOW, price_class="44", **fields)
        for k, m in enumerate(mids)
    )
    rules = Rules(charges=tuple(Priced(m.id, PRICE, False) for m in msgs), billing=True)
    out = await store.accept(AcceptBatch(ACC, msgs, None, None, rules=rules), NOW)
    assert out.accepted, out


async def _restored(store: Store) -> None:
    """What the backup held: 4 messages on a bind, 8 queued and due, 2 scheduled for tomorrow;
    charged (international: an unsent part is refunded), their account with a status callback."""
    acc = Account(
        id=ACC, name=ACC, status_callback_url="https://x.invalid/st", created_at=NOW, updated_at=NOW
    )
    await store.create_account(acc)
    await store.append_ledger(ACC, topup(10**9, NOW - 1, "funds"))
    await _accept(store, ON_BIND)
    assert sorted(w.id for w in await store.claim("inst-1", 10, NOW, 300_000)) == ON_BIND
    await _accept(store, QUEUED)
    await _accept(store, LATER, scheduled_at=NOW + DAY)


@pytest.fixture
def pages(engine: engines.EngineHandle, monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The page made 3; the ids of each roll-up the command makes, as it makes it."""
    mod: Any = sqlite_restore if engine.name == "sqlite" else postgres_restore
    monkeypatch.setattr(mod, "PAGE", 3)
    pipe: Any = sqlite_pipeline if engine.name == "sqlite" else postgres_pipeline
    made: list[list[str]] = []
    rollup = pipe.rollup_messages

    def spy(c: Any, touched: dict[str, bool], now: int, **kw: Any) -> Any:
        made.append(list(touched))
        if len(made) == fail_at[0]:
            raise Interrupted
        return rollup(c, touched, now, **kw)

    monkeypatch.setattr(pipe, "rollup_messages", spy)
    fail_at[0] = 0
    return made


fail_at = [0]  # the roll-up (1-based) that raises: the run stopped part-way; 0: none


class Interrupted(Exception):
    """The command stopped part-way (a kill, a lost connection)."""


async def _outbox(engine: engines.EngineHandle) -> list[str]:
    """The status webhooks queued, by message (one row each, or a repeat shows)."""
    sql = "SELECT ref_id FROM webhook_outbox WHERE kind = 'status'"
    if engine.name == "sqlite":
        conn = sqlite3.connect(engine.location)
        try:
            return sorted(r[0] for r in conn.execute(sql))
        finally:
            conn.close()
    import asyncpg

    pc = await asyncpg.connect(engine.location)
    try:
        return sorted(r[0] for r in await pc.fetch(sql))
    finally:
        await pc.close()


async def _refunds(store: Store) -> list[str]:
    return sorted(r.ref for r in await store.ledger_page(ACC, limit=1000) if r.kind == "refund")


async def _states(store: Store, mids: list[str]) -> dict[str, tuple[str, str | None]]:
    out = {}
    for mid in mids:
        m = await store.get_message(ACC, mid)
        assert m is not None
        out[mid] = (m.state, m.error_code)
    return out


async def test_pages_cross_their_boundary(
    engine: engines.EngineHandle, store: Store, pages: list[list[str]]
) -> None:
    await _restored(store)
    assert await store.after_restore(AT, dry_run=True) == {"ended_unknown": 12, "scheduled_kept": 2}
    assert pages == []  # a dry run counts only
    assert await store.after_restore(AT) == {"ended_unknown": 12, "scheduled_kept": 2}
    # On a bind first (3 + 1), then the queue (3 + 3 + 2): no transaction ended more than 3.
    assert [len(p) for p in pages] == [3, 1, 3, 3, 2]
    assert sorted(m for p in pages for m in p) == sorted(DUE)
    unknown = ("unknown", "RESTORED_FROM_BACKUP")
    assert await _states(store, DUE) == dict.fromkeys(DUE, unknown)
    assert {s for s, _e in (await _states(store, LATER)).values()} == {"queued"}
    assert await _refunds(store) == sorted(DUE)
    assert await _outbox(engine) == sorted(DUE)
    assert await store.queue_depth() == 2
    assert await store.after_restore(AT) == {"ended_unknown": 0, "scheduled_kept": 2}


@pytest.mark.parametrize("stop_at", [2, 4])  # among the claimed pages; among the queued ones
async def test_a_run_stopped_part_way_is_finished_by_the_next_once_each(
    engine: engines.EngineHandle, store: Store, pages: list[list[str]], stop_at: int
) -> None:
    await _restored(store)
    fail_at[0] = stop_at
    with pytest.raises(Interrupted):
        await store.after_restore(AT)
    done = [m for p in pages[: stop_at - 1] for m in p]  # the pages committed before the stop
    assert len(done) == {2: 3, 4: 3 + 1 + 3}[stop_at]
    waiting = sorted(set(DUE) - set(done))
    assert await _refunds(store) == sorted(done)
    assert await _outbox(engine) == sorted(done)
    assert {s for s, _e in (await _states(store, waiting)).values()} == {"queued"}
    # The next run selects what is left: the counts say so, a dry run's too.
    left = {"ended_unknown": len(waiting), "scheduled_kept": 2}
    assert await store.after_restore(AT + 1, dry_run=True) == left
    fail_at[0] = 0
    pages.clear()
    assert await store.after_restore(AT + 1) == left
    assert sorted(m for p in pages for m in p) == waiting
    unknown = ("unknown", "RESTORED_FROM_BACKUP")
    assert await _states(store, DUE) == dict.fromkeys(DUE, unknown)
    assert await _refunds(store) == sorted(DUE)  # each once
    assert await _outbox(engine) == sorted(DUE)
    assert await store.queue_depth() == 2


async def test_postgres_a_daemon_started_meanwhile_waits_for_the_end(
    engine: engines.EngineHandle,
    store: Store,
    pages: list[list[str]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Between two pages nothing holds the messages a page has not reached: a daemon that
    opened the store then would claim and send them. Its open waits (the migrations' lock)."""
    if engine.name != "postgres":
        pytest.skip("SQLite: the command holds the store's owner lock, which a daemon's takes")
    await _restored(store)
    daemon = engine.new_store()
    opening: list[asyncio.Task[None]] = []
    seen: list[bool] = []
    page = postgres_restore.queued_page

    async def watched(c: Any, now: int, after: Any) -> Any:
        if not opening:
            opening.append(asyncio.create_task(daemon.open()))
        await asyncio.sleep(0.3)  # the open's chance to get past its migrations
        seen.append(opening[0].done())
        return await page(c, now, after)

    monkeypatch.setattr(postgres_restore, "queued_page", watched)
    assert (await store.after_restore(AT))["ended_unknown"] == 12
    assert seen == [False, False, False]  # the daemon still opening at each page
    await asyncio.wait_for(opening[0], 10)  # and open once the run is over
    try:
        assert await daemon.claim("inst-2", 10, AT + 1, 300_000) == []
    finally:
        await daemon.close()
