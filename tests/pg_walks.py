"""What the tests of PostgreSQL's paged walks share (the do-not-contact import's, the account-wide
ends', the close's): a store on the test database, the ledger's refunds and the pockets' cash of
an account, and a spy on every read of the messages table."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from bridge.store.postgres import PostgresStore


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    # Six: a test may hold a claim's transaction open while a walk takes its own connections.
    s = PostgresStore(pg_dsn, min_size=1, max_size=6)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def refunds(store: PostgresStore, aid: str) -> list[str]:
    return sorted(r.ref for r in await store.ledger_page(aid, limit=1000) if r.kind == "refund")


async def cash(store: PostgresStore, aid: str) -> int:
    return sum(p.amount for p in await store.get_pockets(aid))


def spy_reads(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every read of the messages table on any connection: (query, rows answered), cursor
    pages included."""
    reads: list[tuple[str, int]] = []
    fetch = asyncpg.connection.Connection.fetch
    page = asyncpg.cursor.Cursor.fetch

    async def spy_fetch(self: Any, query: str, *args: Any, **kw: Any) -> Any:
        rows = await fetch(self, query, *args, **kw)
        if "FROM messages" in query:
            reads.append((query, len(rows)))
        return rows

    async def spy_page(self: Any, n: int, **kw: Any) -> Any:
        rows = await page(self, n, **kw)
        if "FROM messages" in self._query:
            reads.append((self._query, len(rows)))
        return rows

    monkeypatch.setattr(asyncpg.connection.Connection, "fetch", spy_fetch)
    monkeypatch.setattr(asyncpg.cursor.Cursor, "fetch", spy_page)
    return reads


def claim_after_first_page(
    monkeypatch: pytest.MonkeyPatch, other: PostgresStore, now: int, lease_ms: int
) -> list[str]:
    """After the first cursor page of a walk, `other` (another instance) claims everything due
    at `now`: the ids it took, then "-"."""
    taken: list[str] = []
    page = asyncpg.cursor.Cursor.fetch

    async def claim_between(self: Any, n: int, **kw: Any) -> Any:
        rows = await page(self, n, **kw)
        if not taken:
            taken.extend(w.id for w in await other.claim("inst-2", 50, now, lease_ms))
            taken.append("-")
        return rows

    monkeypatch.setattr(asyncpg.cursor.Cursor, "fetch", claim_between)
    return taken
