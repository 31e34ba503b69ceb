"""PostgreSQL's do-not-contact import ends the waiting messages it blocks a chunk at a time
(bridge/store/postgres_dnc.py), on a real PostgreSQL.

Before, its second transaction read every waiting message of every account into the daemon at
once: a million waiting was a memory spike and one transaction as long as the whole walk. The
chunk is made 3 here, so 13 waiting messages (10 queued, 3 on a bind) take several pages; the
outcome must be what it was: the same count, each blocked message ended (or held) once, each
refunded exactly once, the others untouched.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from bridge.domain.admission import Priced, Rules
from bridge.domain.ledger import topup
from bridge.store import postgres_dnc
from bridge.store.models import AcceptBatch, Account, DncInfo
from bridge.store.postgres import PostgresStore
from tests import pg_reuse, pg_walks
from tests.messages import one_part
from tests.pg_walks import cash, refunds

pg_dsn = pg_reuse.migrated_pg_dsn  # a store on the worker's migrated database (tests/pg_reuse.py)

pg = pg_walks.pg  # the store fixture

NOW = 1_700_000_000_000
DAY = 86_400_000
PRICE = 45_000
CASH = 10_000_000


def _msg(mid: str, aid: str, number: str, **fields: Any) -> Any:
    return one_part(mid, aid, number, NOW, price_class="D", **fields)


def _number(k: int) -> str:
    return f"+86138{k:08d}"


async def _account(store: PostgresStore, aid: str) -> None:
    await store.create_account(Account(id=aid, name=aid, created_at=NOW, updated_at=NOW))
    await store.append_ledger(aid, topup(CASH, NOW - 1_000, "funds"))


async def _accept(store: PostgresStore, aid: str, msgs: list[Any]) -> None:
    charges = tuple(Priced(m.id, PRICE, False) for m in msgs)
    rules = Rules(charges=charges, billing=True)
    out = await store.accept(AcceptBatch(aid, tuple(msgs), None, None, rules=rules), NOW)
    assert out.accepted, out


async def _queue(store: PostgresStore) -> None:
    """acc_a: 10 queued (even k blocked; k 8, 9 scheduled a day out) and 3 on a bind (k 10-12,
    10 and 12 blocked); acc_b: 2 queued, one blocked by prefix. The claimed ones first, so the
    claim takes them."""
    await _account(store, "acc_a")
    await _account(store, "acc_b")
    await _accept(store, "acc_a", [_msg(f"c{k:02d}", "acc_a", _number(k)) for k in (10, 11, 12)])
    assert len(await store.claim("inst-1", 3, NOW, 300_000)) == 3
    msgs = [
        _msg(f"q{k:02d}", "acc_a", _number(k), scheduled_at=NOW + DAY if k >= 8 else None)
        for k in range(10)
    ]
    await _accept(store, "acc_a", msgs)
    await _accept(
        store,
        "acc_b",
        [
            _msg("b_in", "acc_b", "+8617000000001"),
            _msg("b_out", "acc_b", "+8613900000001"),
        ],
    )


BLOCKED_NUMBERS = [_number(k) for k in (0, 2, 4, 6, 8, 10, 12)] + [
    f"+86137{k:08d}" for k in range(50)
]
ENDED = {f"q{k:02d}" for k in (0, 2, 4, 6, 8)} | {"b_in"}
HELD = {"c10", "c12"}


async def _messages(dsn: str) -> dict[str, tuple[str, str | None, int | None]]:
    c = await asyncpg.connect(dsn)
    try:
        rows = await c.fetch(
            "SELECT m.id, m.q_state, m.end_error, m.expires_at, "
            "(SELECT string_agg(s.state || ':' || COALESCE(s.error_code, ''), ',') "
            " FROM segments s WHERE s.message_id = m.id) FROM messages m"
        )
        return {r[0]: (r[1], r[4], r[3] if r[2] else None) for r in rows}
    finally:
        await c.close()


def _info(at: int = NOW + 1) -> DncInfo:
    return DncInfo("national", "national", "CN", len(BLOCKED_NUMBERS), 1, at)


async def test_the_walk_in_chunks_ends_what_it_blocks_once_and_refunds_once(
    pg: PostgresStore, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(postgres_dnc, "WALK_CHUNK", 3)
    await _queue(pg)
    assert await pg.import_dnc(_info(), BLOCKED_NUMBERS, ["+86170"]) == len(ENDED)
    rows = await _messages(pg_dsn)
    for mid, (q_state, segs, held_error) in rows.items():
        if mid in ENDED:
            assert (q_state, segs) == ("done", "expired_unsent:RECIPIENT_BLOCKED"), mid
        elif mid in HELD:  # on a bind: not recalled, its validity ends now (_hold_tried)
            assert (q_state, held_error) == ("claimed", NOW + 1), mid
        else:
            assert q_state in ("queued", "claimed") and "expired" not in segs, mid
    assert await refunds(pg, "acc_a") == sorted(m for m in ENDED if m.startswith("q"))
    assert await refunds(pg, "acc_b") == ["b_in"]
    # 15 charged at accept; the 6 ended given back, exactly once.
    assert await cash(pg, "acc_a") == CASH - 13 * PRICE + 5 * PRICE
    assert await cash(pg, "acc_b") == CASH - 2 * PRICE + PRICE
    # The same list again: nothing more to end, nothing refunded twice.
    assert await pg.import_dnc(_info(NOW + 2), BLOCKED_NUMBERS, ["+86170"]) == 0
    assert await refunds(pg, "acc_a") == sorted(m for m in ENDED if m.startswith("q"))
    assert await cash(pg, "acc_a") == CASH - 8 * PRICE


async def test_no_statement_reads_more_than_a_chunk_of_the_waiting_messages(
    pg: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every read of the messages during the walk answers at most WALK_CHUNK rows, and the walk
    commits page by page (before: one read of all 15 waiting, in one transaction)."""
    monkeypatch.setattr(postgres_dnc, "WALK_CHUNK", 3)
    await _queue(pg)
    reads: list[tuple[str, int]] = []
    commits: list[str] = []
    fetch = asyncpg.connection.Connection.fetch
    execute = asyncpg.connection.Connection.execute

    async def spy_fetch(self: Any, query: str, *args: Any, **kw: Any) -> Any:
        rows = await fetch(self, query, *args, **kw)
        if "FROM messages" in query:
            reads.append((query, len(rows)))
        return rows

    async def spy_execute(self: Any, query: str, *args: Any, **kw: Any) -> Any:
        if query.strip().upper() == "COMMIT":
            commits.append(query)
        return await execute(self, query, *args, **kw)

    monkeypatch.setattr(asyncpg.connection.Connection, "fetch", spy_fetch)
    monkeypatch.setattr(asyncpg.connection.Connection, "execute", spy_execute)
    assert await pg.import_dnc(_info(), BLOCKED_NUMBERS, ["+86170"]) == len(ENDED)
    assert reads, "the walk read no messages"
    assert max(n for _, n in reads) <= 3, reads
    # The list's transaction, then the pages: 2 of those on a bind (3, 0), 5 of the queue (12
    # rows: 3, 3, 3, 3, 0).
    assert len(commits) >= 1 + 2 + 5, commits
