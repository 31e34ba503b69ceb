"""Two imports of one do-not-contact list at once, and a delete during an import, on every
engine: the later operation's list stands whole, never a merge of both.

PostgreSQL imports in one transaction, which waits for the accepts in progress before it commits
(it takes the DNC lock they share). An import that began while another of the same list waited
there emptied the list in a statement whose snapshot was taken before the other committed: the
other's entries stayed beside its own, and the list blocked both until imported again. Here an
"accept in progress" (the lock held shared) keeps the first import waiting while the second
starts. SQLite's chunked imports: tests/integration/test_dnc_in_chunks.py.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import DncInfo  # noqa: E402
from tests.store_engines import EngineHandle  # noqa: E402

engine = engines.engine
store = engines.store

NOW = 1_700_000_000_000
FIRST = [f"+86137{k:08d}" for k in range(300)]
SECOND = [f"+86136{k:08d}" for k in range(200)]


def _info(numbers: list[str], at: int) -> DncInfo:
    return DncInfo("national", "national", "CN", len(numbers), 0, at)


async def _held_dnc_lock(engine: EngineHandle) -> Any:
    """A PostgreSQL connection holding the DNC lock shared, as an accept in progress does."""
    import asyncpg

    from bridge.store.postgres_pipeline import NS_DNC

    c = await asyncpg.connect(engine.location)
    await c.execute("BEGIN")
    await c.execute("SELECT pg_advisory_xact_lock_shared($1, 0)", NS_DNC)
    return c


async def _waiting_on_locks(engine: EngineHandle, n: int) -> None:
    """Until `n` other sessions wait for a lock (the imports have reached their waits)."""
    import asyncpg

    c = await asyncpg.connect(engine.location)
    try:
        for _ in range(200):
            waiting = await c.fetchval("SELECT COUNT(*) FROM pg_locks WHERE NOT granted")
            if waiting >= n:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"fewer than {n} sessions ever waited for a lock")
    finally:
        await c.close()


@pytest.mark.parametrize("first_exists", [False, True], ids=["new-list", "replaced-list"])
async def test_the_later_of_two_imports_of_a_list_stands_whole(
    store: Store, engine: EngineHandle, first_exists: bool
) -> None:
    if engine.name != "postgres":
        pytest.skip("SQLite's chunked imports: test_dnc_in_chunks.py")
    if first_exists:  # an earlier version of the list, which both imports replace
        await store.import_dnc(_info(["+8613500000001"], NOW), ["+8613500000001"], [])
    holder = await _held_dnc_lock(engine)
    try:
        first = asyncio.ensure_future(store.import_dnc(_info(FIRST, NOW + 1), FIRST, []))
        await _waiting_on_locks(engine, 1)  # the first waits for the accept in progress
        second = asyncio.ensure_future(store.import_dnc(_info(SECOND, NOW + 2), SECOND, []))
        await _waiting_on_locks(engine, 2)  # the second waits for the first
    finally:
        await holder.execute("COMMIT")
        await holder.close()
    await first
    await second
    assert [(x.numbers, x.imported_at) for x in await store.list_dnc()] == [(200, NOW + 2)]
    assert await store.dnc_blocks(SECOND[17])
    assert not await store.dnc_blocks(FIRST[17])  # before: blocked until the next import
    assert not await store.dnc_blocks("+8613500000001")


async def test_a_delete_during_an_import_leaves_no_entry_behind(
    store: Store, engine: EngineHandle
) -> None:
    if engine.name != "postgres":
        pytest.skip("SQLite's chunked imports: test_dnc_in_chunks.py")
    await store.import_dnc(_info(["+8613500000001"], NOW), ["+8613500000001"], [])
    holder = await _held_dnc_lock(engine)
    try:
        imported = asyncio.ensure_future(store.import_dnc(_info(FIRST, NOW + 1), FIRST, []))
        await _waiting_on_locks(engine, 1)
        deleted = asyncio.ensure_future(store.delete_dnc("national"))
        await _waiting_on_locks(engine, 2)  # the delete waits for the import
    finally:
        await holder.execute("COMMIT")
        await holder.close()
    await imported
    assert await deleted
    assert await store.list_dnc() == []
    assert not await store.dnc_blocks(FIRST[17])  # before: an entry with no list left


async def test_an_import_replaced_before_its_end_step_ends_nothing_its_list_no_longer_blocks(
    store: Store, engine: EngineHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL's import ends what its list blocks in a second transaction: a later import
    committed between the two ended, before, the first list's messages after it stood no more.
    (SQLite: each chunk of the walk checks it is still the latest, test_dnc_in_chunks.py.)"""
    if engine.name != "postgres":
        pytest.skip("SQLite's chunked imports: test_dnc_in_chunks.py")
    from bridge.store import postgres_dnc, postgres_rules
    from tests.integration.test_store import accept, account, get, message

    await store.create_account(account())
    await accept(
        store,
        message("first_only", recipient=FIRST[3]),
        message("both", recipient="+8613400000001"),
    )
    real = postgres_rules.run_tx
    calls: list[int] = []

    async def run_tx(pool: Any, job: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == 2:  # the first import's first end step: the later import runs before it
            later = [*SECOND, "+8613400000001"]
            assert await store.import_dnc(_info(later, NOW + 2), later, []) == 1
        return await real(pool, job, **kw)

    monkeypatch.setattr(postgres_rules, "run_tx", run_tx)
    monkeypatch.setattr(postgres_dnc, "run_tx", run_tx)  # the end steps (its walk)
    first = [*FIRST, "+8613400000001"]
    assert await store.import_dnc(_info(first, NOW + 1), first, []) == 0
    assert (await get(store, "first_only")).state == "queued"  # the list does not block it
    assert (await get(store, "both")).error_code == "RECIPIENT_BLOCKED"
    assert [x.numbers for x in await store.list_dnc()] == [201]
