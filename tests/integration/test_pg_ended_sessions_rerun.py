"""The store's last transactions and multi-statement reads that took a pooled connection
themselves (session 48): a session the server ended while it sat idle in the pool (a shutdown,
pg_terminate_backend, an idle time-out) failed them with asyncpg's "cannot switch to state ...;
another operation is in progress". Now they run through run_tx / run_reads (or, for `db
after-restore`'s lock, on another session), as session 47 made every other transaction do.

Each test kills the pool's one idle session through the test proxy (its FATAL read, its close
held back: tests/integration/test_pg_fatal_between_statements.py), then calls the operation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from bridge.store import postgres_restore, postgres_stats
from bridge.store.models import AuditEntry
from bridge.store.postgres import PostgresStore
from tests.integration.test_pg_fatal_between_statements import (  # noqa: F401  (fixtures)
    CloseHeld,
    _kill,
    proxy,
)
from tests.integration.test_store import NOW, accept, account, message

pytestmark = pytest.mark.postgres


class Killer:
    def __init__(self, admin: asyncpg.Connection) -> None:
        self.admin = admin

    async def idle_sessions(self) -> None:
        """End every idle session of the store's pool (the FATAL read, the close not yet)."""
        rows = await self.admin.fetch(
            "SELECT pid FROM pg_stat_activity WHERE application_name = 'smpp-bridge' "
            "AND datname = current_database() AND state = 'idle'"
        )
        assert rows
        for r in rows:
            await _kill(self.admin, r["pid"])


@pytest.fixture
async def opened(
    pg_dsn: str,
    proxy: CloseHeld,  # noqa: F811
) -> AsyncIterator[tuple[PostgresStore, Killer]]:
    store = PostgresStore(proxy.dsn(pg_dsn), min_size=1, max_size=2)
    await store.open()
    admin = await asyncpg.connect(pg_dsn)
    try:
        yield store, Killer(admin)
    finally:
        await admin.close()
        await store.close()


async def test_skew_window(opened: tuple[PostgresStore, Killer]) -> None:
    store, kill = opened
    await kill.idle_sessions()
    window = await store.skew_window("v1", 300, NOW)
    assert window.skew_s == 300


async def test_audit_entry_written_once(opened: tuple[PostgresStore, Killer]) -> None:
    store, kill = opened
    await kill.idle_sessions()
    await store.audit_add(AuditEntry(NOW, "cli:ops", "cli account disable", "acc_a", 0, None))
    entries = await store.audit_page(0, 10)
    assert [e.action for e in entries] == ["cli account disable"]


async def test_get_message(opened: tuple[PostgresStore, Killer]) -> None:
    store, kill = opened
    await store.create_account(account())
    await accept(store, message("m1", parts=2))
    await kill.idle_sessions()
    got = await store.get_message("acc_a", "m1")
    assert got is not None and len(got.segment_rows) == 2


async def test_planner_statistics(opened: tuple[PostgresStore, Killer]) -> None:
    store, kill = opened
    await kill.idle_sessions()
    done = await postgres_stats.refresh(store.pool, min_rows=0)  # every busy table: never analysed
    assert done == sorted(postgres_stats.BUSY_TABLES)


async def test_after_restore_gate_taken_on_a_live_session(
    opened: tuple[PostgresStore, Killer],
) -> None:
    store, kill = opened
    await kill.idle_sessions()
    assert await store.after_restore(NOW, dry_run=True) == {"ended_unknown": 0, "scheduled_kept": 0}


async def test_after_restore_gate_ended_during_the_run(
    opened: tuple[PostgresStore, Killer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock's session ended once held: the run goes on (each page refuses a live instance),
    and the unlock on the ended session is no error for a run that finished."""
    store, kill = opened
    await store.create_account(account())
    await accept(store, message("m1"))
    pages = postgres_restore._pages

    async def gate_ended_first(pool: asyncpg.Pool, now: int, dry_run: bool) -> dict[str, int]:
        holder = await kill.admin.fetchval(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = $1::bigint::oid",
            postgres_restore.pipe.NS_MIGRATE,
        )
        await _kill(kill.admin, holder)
        return await pages(pool, now, dry_run)

    monkeypatch.setattr(postgres_restore, "_pages", gate_ended_first)
    assert await store.after_restore(NOW + 1) == {"ended_unknown": 1, "scheduled_kept": 0}
    got = await store.get_message("acc_a", "m1")
    assert got is not None and got.state == "unknown"
