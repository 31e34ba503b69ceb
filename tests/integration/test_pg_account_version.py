"""PostgreSQL: the accept's account held by its row version (session 56, migration 0037).

Every write of an account row gives it a new random `row_version` (a trigger); an accept under
the sending rules passes the version whose Account its store holds, and its first statement
answers NULL for the account's columns while the row keeps it (postgres._HEAD_COLS). Here: each
kind of write changes the version and a lock does not; an unchanged account is not built again;
a change made by another instance (another store, or plain SQL) is seen by the next accept; and
a differential over random plans (accepts of two accounts grouped or alone, keyed or not,
refusals by sign, balance and quota, replays; between them top-ups and account changes made by
a second store on the same database) answers and writes alike with the versions held and with
none held (every head reads the row, as before).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine
from dataclasses import replace
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.domain.ledger import grant_voucher, topup
from bridge.store import postgres as pg_mod
from bridge.store.models import AcceptBatch, AppKey, IdempotencyRecord
from bridge.store.postgres import PostgresStore
from tests.conftest import run_async
from tests.integration.test_store_rules import NOW, account, billed, message, sign

MIN = 60_000
DAY = 24 * 60 * MIN


async def _version(c: asyncpg.Connection | asyncpg.Pool, aid: str = "acc_a") -> int:
    v = await c.fetchval("SELECT row_version FROM accounts WHERE id = $1", aid)
    assert isinstance(v, int)
    return v


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_dsn, min_size=1, max_size=4)
    await s.open()
    try:
        await s.create_account(account("acc_a", daily_quota=100))
        await sign(s)
        await s.append_ledger("acc_a", topup(10_000, NOW, "funds"))
        await s.add_key(AppKey("KA", "acc_a", b"sealed", "active", NOW), max_active=2)
        yield s
    finally:
        await s.close()


def _keyed(n: int, aid: str = "acc_a", *, version: int | None = None) -> AcceptBatch:
    m = message(f"m{n}", f"+86138{n:08d}", account_id=aid)
    return AcceptBatch(
        aid,
        (m,),
        f"i{n}",
        IdempotencyRecord(f"h{n}", 202, b"{}"),
        NOW + DAY,
        key_id="KA" if aid == "acc_a" else "KB",
        nonce=f"n{n}",
        nonce_expires_at=NOW + 10 * MIN,
        account_version=version,
        rules=billed(m),
    )


async def test_every_write_of_an_account_changes_its_version_and_a_lock_does_not(
    store: PostgresStore,
) -> None:
    pool = store.pool
    seen = {await _version(pool)}
    await store.update_account("acc_a", {"daily_quota": 7}, NOW + 1)
    seen.add(await _version(pool))
    # plain SQL of another session, a value left as it was and updated_at untouched too
    await pool.execute("UPDATE accounts SET daily_quota = daily_quota WHERE id = 'acc_a'")
    seen.add(await _version(pool))
    await pool.execute("UPDATE accounts SET low_warned_at = 5 WHERE id = 'acc_a'")
    seen.add(await _version(pool))
    assert len(seen) == 4
    before = await _version(pool)
    async with pool.acquire() as c, c.transaction():
        await c.execute("SELECT 1 FROM accounts WHERE id = 'acc_a' FOR NO KEY UPDATE")
        await c.execute("SELECT 1 FROM accounts WHERE id = 'acc_a' FOR SHARE")
    assert await _version(pool) == before
    # a statement that sets the version keeps the value it sets
    await pool.execute("UPDATE accounts SET row_version = 42 WHERE id = 'acc_a'")
    assert await _version(pool) == 42
    await store.create_account(account("acc_new"))
    assert await pool.fetchval("SELECT row_version FROM accounts WHERE id = 'acc_new'") is not None


async def test_an_unchanged_account_is_built_once(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    real = pg_mod._account

    def counting(row: Any) -> Any:
        built.append(row[0])
        return real(row)

    monkeypatch.setattr(pg_mod, "_account", counting)
    for n in range(4):  # one at a time: each a group of one, its own head
        out = await store.accept(_keyed(n, version=NOW), NOW)
        assert out.accepted, out
    assert built == ["acc_a"]
    # a group: its later accepts' heads read the facts too (_RULES_HEAD_AUTH_FACTS)
    outs = await asyncio.gather(*(store.accept(_keyed(n, version=NOW), NOW) for n in range(4, 9)))
    assert all(o.accepted for o in outs), outs
    assert built == ["acc_a"]
    # changed: built again, once
    await store.pool.execute("UPDATE accounts SET tps = 0 WHERE id = 'acc_a'")
    for n in range(9, 12):
        assert (await store.accept(_keyed(n, version=NOW), NOW)).accepted
    assert built == ["acc_a", "acc_a"]


async def test_a_change_by_another_instance_is_seen_by_the_next_accept(
    store: PostgresStore, pg_dsn: str
) -> None:
    assert (await store.accept(_keyed(1, version=NOW), NOW)).accepted
    other = PostgresStore(pg_dsn, min_size=1, max_size=2)
    await other.open()
    try:
        await other.update_account("acc_a", {"status": "disabled"}, NOW + 5)
        out = await store.accept(_keyed(2, version=NOW), NOW)
        assert not out.accepted and out.auth_refusal == "disabled", out
        await other.update_account("acc_a", {"status": "active"}, NOW + 6)
        out = await store.accept(_keyed(3, version=NOW), NOW)  # updated_at moved: stale
        assert out.auth_refusal == "stale" and out.account is not None, out
        assert out.account.updated_at == NOW + 6
        assert (await store.accept(_keyed(4, version=NOW + 6), NOW)).accepted
        # plain SQL that leaves updated_at as it was: the next accept has the new value
        await store.pool.execute("UPDATE accounts SET daily_quota = 6 WHERE id = 'acc_a'")
        await store.accept(_keyed(5, version=NOW + 6), NOW)
        held = store._by_version["acc_a"]
        assert held[0] == await _version(store.pool) and held[1].daily_quota == 6
    finally:
        await other.close()


# -- the differential --------------------------------------------------------------------------


class _Forgetful(OrderedDict[str, Any]):
    """A `_by_version` that keeps nothing: every head reads the account (the reference)."""

    def __setitem__(self, key: str, value: Any) -> None:
        pass


accepts = st.fixed_dictionaries(
    {
        "op": st.just("accept"),
        "aid": st.sampled_from(("acc_a", "acc_b")),
        "keyed": st.sampled_from((True, True, True, False)),
        "sign": st.sampled_from(("Acme",) * 5 + ("Pending",)),
        "amount": st.sampled_from((100, 200, 500, 0)),
        "replay": st.sampled_from((None,) * 6 + (1, 2)),
        "stale": st.sampled_from((False,) * 5 + (True,)),
    }
)
others = st.one_of(
    st.fixed_dictionaries(
        {
            "op": st.just("topup"),
            "aid": st.sampled_from(("acc_a", "acc_b")),
            "amount": st.sampled_from((50, 300)),
        }
    ),
    st.fixed_dictionaries(
        {
            "op": st.just("update"),
            "aid": st.sampled_from(("acc_a", "acc_b")),
            "changes": st.sampled_from(
                (
                    {"daily_quota": 2},
                    {"daily_quota": 20},
                    {"low_balance_threshold": 5_000},
                    {"low_balance_threshold": 0},
                    {"status": "disabled"},
                    {"status": "active"},
                    {"tps": 0},
                )
            ),
        }
    ),
    st.fixed_dictionaries({"op": st.just("sql"), "aid": st.sampled_from(("acc_a", "acc_b"))}),
)
plans = st.lists(
    st.lists(st.one_of(accepts, accepts, others), min_size=2, max_size=8), min_size=2, max_size=4
)


def _accept(op: dict[str, Any], n: int, versions: dict[str, int]) -> AcceptBatch:
    aid = op["aid"]
    m = message(f"m{n}", f"+86139{n:08d}", account_id=aid, sign=op["sign"])
    key = f"i{op['replay']}" if op["replay"] is not None else f"i{n}"
    rules = replace(billed(m, amount=op["amount"]), sign_name=op["sign"])
    batch = AcceptBatch(
        aid,
        (m,),
        key,
        IdempotencyRecord(f"hash-{key}", 202, b""),
        NOW + DAY,
        account_version=versions[aid] - (1 if op["stale"] else 0),
        rules=rules,
    )
    if op["keyed"]:
        batch = replace(
            batch,
            key_id="KA" if aid == "acc_a" else "KB",
            nonce=f"n{n}",
            nonce_expires_at=NOW + 10 * MIN,
        )
    return batch


def _answer(out: Any) -> Any:
    if out is None or isinstance(out, (bool, BaseException)):
        return repr(out)
    if not hasattr(out, "accepted"):  # an account change's answer
        return (out.daily_quota, out.low_balance_threshold, out.status, out.updated_at)
    return (
        out.accepted,
        None if out.refusal is None else (out.refusal.code, out.refusal.message),
        None if out.existing is None else out.existing.response,
        None if out.plan is None else (out.plan.day, out.plan.entries, out.plan.low_balance),
        out.auth_refusal,
        out.retry_after,
        None if out.account is None else (out.account.updated_at, out.account.status),
    )


_ROWS = {
    "pockets": "SELECT account_id, pocket, amount, expires_at FROM pockets ORDER BY 1, 2",
    "daily_counts": "SELECT account_id, day, messages FROM daily_counts ORDER BY 1, 2",
    "ledger": "SELECT account_id, kind, amount, pocket, at, ref, expires_at FROM ledger "
    "ORDER BY account_id, at, ref, pocket, amount",
    "messages": "SELECT id, account_id, recipient, state, sign_name, billable_units FROM messages "
    "ORDER BY 1",
    "segments": "SELECT message_id, seq, total, esm_class, short_message, tlvs FROM segments "
    "ORDER BY 1, 2",
    "accounts": "SELECT id, status, daily_quota, low_balance_threshold, low_warned_at, tps "
    "FROM accounts ORDER BY 1",
    "nonces": "SELECT key_id, nonce, expires_at FROM nonces ORDER BY 1, 2",
    "idempotency": "SELECT account_id, key, request_hash FROM idempotency ORDER BY 1, 2",
    "events": "SELECT account_id, kind, payload FROM webhook_outbox ORDER BY 1, 3",
}


async def _run(dsn: str, plan: list[list[dict[str, Any]]]) -> tuple[list[Any], dict[str, Any]]:
    s = PostgresStore(dsn, min_size=1, max_size=4)
    other = PostgresStore(dsn, min_size=1, max_size=2)  # another instance
    await s.open()
    await other.open()
    try:
        await s.create_account(
            account("acc_a", status_url="https://hook.example/a", threshold=1_150, daily_quota=4)
        )
        await s.create_account(account("acc_b", kind="postpaid", daily_quota=3))
        for aid in ("acc_a", "acc_b"):
            await sign(s, aid=aid)
        await sign(s, "Pending", "pending", aid="acc_a")
        await s.append_ledger("acc_a", topup(1_000, NOW, "funds"))
        await s.append_ledger("acc_a", grant_voucher(500, NOW, "v1", NOW + DAY))
        await s.add_key(AppKey("KA", "acc_a", b"sealed", "active", NOW), max_active=2)
        await s.add_key(AppKey("KB", "acc_b", b"sealed", "active", NOW), max_active=2)
        versions = {"acc_a": NOW, "acc_b": NOW}  # the updated_at each send was validated at
        answers: list[Any] = []
        n = 0
        for ops in plan:
            calls: list[Coroutine[Any, Any, Any]] = []
            for op in ops:
                n += 1
                if op["op"] == "accept":
                    calls.append(s.accept(_accept(op, n, versions), NOW + n))
            # the accepts of a step together (one account's grouped), then the other instance
            answers.extend(_answer(o) for o in await asyncio.gather(*calls, return_exceptions=True))
            for op in ops:
                n += 1
                if op["op"] == "topup":
                    await other.append_ledger(op["aid"], topup(op["amount"], NOW, f"t{n}"))
                elif op["op"] == "update":
                    got = await other.update_account(op["aid"], op["changes"], NOW + n)
                    answers.append(_answer(got))
                    if got is not None:
                        versions[op["aid"]] = got.updated_at
                elif op["op"] == "sql":  # behind every store's back, updated_at untouched
                    await other.pool.execute(
                        "UPDATE accounts SET daily_quota = daily_quota + 1 WHERE id = $1", op["aid"]
                    )
        rows = {}
        for name, sql in _ROWS.items():
            rows[name] = [tuple(r) for r in await s.pool.fetch(sql)]
        return answers, rows
    finally:
        await other.close()
        await s.close()


@pytest.fixture(scope="module")
def databases(pg_cluster: Any) -> Any:
    from tests.pg_cluster import create_database, drop_database, new_database_name

    made: list[str] = []

    def fresh() -> str:
        name = new_database_name()
        made.append(name)
        return str(run_async(create_database(pg_cluster, name)))

    yield fresh
    for name in made:
        run_async(drop_database(pg_cluster, name))


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plan=plans)
def test_random_plans_answer_and_write_as_without_the_versions(
    databases: Any, plan: list[list[dict[str, Any]]]
) -> None:
    mp = pytest.MonkeyPatch()
    real_init = PostgresStore.__init__

    def forgetful(self: PostgresStore, *a: Any, **kw: Any) -> None:
        real_init(self, *a, **kw)
        self._by_version = _Forgetful()

    mp.setattr(PostgresStore, "__init__", forgetful)
    try:
        ref = run_async(_run(databases(), plan))
    finally:
        mp.undo()
    new = run_async(_run(databases(), plan))
    assert new[0] == ref[0]
    assert new[1] == ref[1]
