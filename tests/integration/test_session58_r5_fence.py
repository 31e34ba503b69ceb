"""Session 58 review (r5): `store_differential.py --store postgres` now waits until the server
is 2.5 s old before its children run (postgres_confirm.FENCE_S: no claims that soon after the
server's start). Checked that the wait hides no defect of the store: the fence runs from the
server's (re)start, never from an instance's, so one instance of two restarted on a server that
is long up claims at once, as the other one does, and the one that kept running is not fenced
by the other's restart either. (A new instance on a server younger than FENCE_S claiming nothing
is the fence's point: tests/integration/test_session21_review1.py.)"""

from __future__ import annotations

import pytest

from bridge.store.models import AcceptBatch
from bridge.store.postgres import PostgresStore
from tests.integration.test_store_multi import LEASE, NOW, account, message
from tests.pg_cluster import settled

pytestmark = [pytest.mark.postgres]


async def _accept(pg: PostgresStore, mid: str) -> None:
    await pg.accept(AcceptBatch("acc_a", (message(mid),), None, None), NOW)


async def test_one_instance_of_two_restarted_claims_at_once(pg_migrated_dsn: str) -> None:
    dsn = pg_migrated_dsn
    await settled(dsn)  # the session's cluster may be younger than the fence
    a = PostgresStore(dsn, min_size=1, max_size=4)
    b = PostgresStore(dsn, min_size=1, max_size=4)
    await a.open()
    await b.open()
    try:
        await a.create_account(account())
        assert await a.claim("inst-a", 1, NOW, LEASE) == []  # both keep a watch, as running
        assert await b.claim("inst-b", 1, NOW, LEASE) == []
        await _accept(a, "m1")
        assert [w.id for w in await b.claim("inst-b", 1, NOW, LEASE)] == ["m1"]
        await b.close()  # B restarts: a new process, a new store and watch, the server as it was
        b = PostgresStore(dsn, min_size=1, max_size=4)
        await b.open()
        await _accept(a, "m2")
        assert [w.id for w in await b.claim("inst-b2", 1, NOW, LEASE)] == ["m2"]
        await _accept(a, "m3")
        assert [w.id for w in await a.claim("inst-a", 1, NOW, LEASE)] == ["m3"]
    finally:
        await a.close()
        await b.close()
