"""Session 43's adversarial review of its PostgreSQL changes: each test here failed on the code
as it landed.

The planner statistics' ANALYZE (bridge/store/postgres_stats.py) waited for its table's lock. A
ShareUpdateExclusiveLock held elsewhere (an operator's VACUUM of a big table, CREATE INDEX
CONCURRENTLY, an autovacuum against wraparound, which does not yield) held the sweeper's step for
asyncpg's command timeout, 60 s, every round while it lasted: the lease renewals, expiry sweep,
reclaim and receipt timeouts of that instance ran once a minute instead of every 5 s."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from bridge.store.models import Account
from bridge.store.postgres import PostgresStore
from tests import pg_walks
from tests.integration.test_pg_claim_unanswered import claims
from tests.integration.test_pg_young_stats import NOW, _live_rows, _store_messages
from tests.integration.test_store import LEASE, accept, account, message

pg = pg_walks.pg


async def test_a_table_locked_elsewhere_is_skipped_not_waited_for(
    pg: PostgresStore, pg_dsn: str
) -> None:
    await pg.create_account(Account(id="acc", name="acc", created_at=NOW, updated_at=NOW))
    await _store_messages(pg_dsn, 0, 1_500)
    conn = await asyncpg.connect(pg_dsn)
    try:
        await _live_rows(conn, "segments", 1_500)
        async with conn.transaction():  # what a VACUUM of `segments` holds while it runs
            await conn.execute("LOCK TABLE segments IN SHARE UPDATE EXCLUSIVE MODE")
            done = await asyncio.wait_for(pg.refresh_stats(), 3.0)
            assert done == ["messages"]  # the other one is not held up
        assert await pg.refresh_stats() == ["segments"]  # the next round, once it is free
    finally:
        await conn.close()


# The give-back of a claim whose COMMIT went unanswered (PostgresStore._give_back_unsure) read
# the rows' committed state: a claim whose COMMIT the server was still carrying out (a server
# stalled on its I/O while the client's side of the link was cut: the chaos soak's conditions)
# had its rows locked, still queued to every other reader, so its ids were forgotten; the COMMIT
# landed after, and the messages stayed claimed by the live instance, unsent, for the 5-minute
# lease: the defect the give-back was made for. A row held is now kept to try again, and its
# instance does not claim it meanwhile.

UNSURE = ["m0", "m1", "m2"]


async def _orphan(pg_dsn: str) -> asyncpg.Connection:
    """The broken claim's session as the server still has it: its UPDATE made, its COMMIT not
    carried out yet."""
    conn = await asyncpg.connect(pg_dsn)
    await conn.execute("BEGIN")
    await conn.execute(
        "UPDATE messages SET q_state = 'claimed', q_claimed_by = 'inst-a', "
        "q_lease_until = $2, q_attempts = q_attempts + 1 WHERE id = ANY($1::text[])",
        UNSURE,
        NOW + LEASE,
    )
    return conn


async def test_a_claim_whose_commit_is_still_under_way_is_given_back_once_it_lands(
    pg: PostgresStore, pg_dsn: str
) -> None:
    await pg.create_account(account())
    await pg.heartbeat("inst-a", "owner", NOW, "{}")  # alive: its claims are its own
    for mid in [*UNSURE, "m3"]:
        await accept(pg, message(mid))
    orphan = await _orphan(pg_dsn)
    try:
        pg._unsure_claims = dict.fromkeys(UNSURE, "inst-a")  # what its claim left
        work = await asyncio.wait_for(pg.claim("inst-a", 10, NOW, LEASE), 3.0)
        assert [w.id for w in work] == ["m3"]  # the others are not held up (not waited for)
        await asyncio.wait_for(pg.reclaim(NOW, frozenset()), 3.0)  # nor the sweeper
        await orphan.execute("COMMIT")  # it lands: claimed by the instance, unsent
        work = await pg.claim("inst-a", 10, NOW, LEASE)  # given back first, then taken
        assert sorted(w.id for w in work) == UNSURE
        assert all(w.attempts == 1 for w in work)
        assert pg._unsure_claims == {}
    finally:
        await orphan.close()


async def test_what_is_still_unsure_is_not_claimed_again_by_its_instance(
    pg: PostgresStore, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows were held when the give-back looked, and freed (never claimed) before the claim's
    scan: the claim must leave them, else the next give-back takes back a message being sent."""
    await pg.create_account(account())
    await pg.heartbeat("inst-a", "owner", NOW, "{}")  # alive: its claims are its own
    for mid in UNSURE:
        await accept(pg, message(mid))
    orphan = await _orphan(pg_dsn)
    try:
        pg._unsure_claims = dict.fromkeys(UNSURE, "inst-a")
        await asyncio.wait_for(pg.reclaim(NOW, frozenset()), 3.0)  # held: kept to try again
        assert sorted(pg._unsure_claims) == UNSURE
        await orphan.execute("ROLLBACK")
    finally:
        await orphan.close()
    give_back = pg._give_back_unsure

    async def looked_before(now: int) -> None:  # this claim's give-back ran before the ROLLBACK
        pass

    monkeypatch.setattr(pg, "_give_back_unsure", looked_before)
    assert await pg.claim("inst-a", 10, NOW, LEASE) == []  # still unsure: not taken
    monkeypatch.setattr(pg, "_give_back_unsure", give_back)
    work = await pg.claim("inst-a", 10, NOW, LEASE)
    assert sorted(w.id for w in work) == UNSURE
    await pg.reclaim(NOW, frozenset())  # being sent: left claimed
    assert await claims(pg_dsn) == [(m, "claimed", "inst-a", 1) for m in UNSURE]
