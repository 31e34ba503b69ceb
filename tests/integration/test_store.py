"""The Store contract, against a real database file, through the `Store` protocol only.

Every test here must pass unchanged on every engine in tests/store_engines.py (SQLite today,
PostgreSQL later), so nothing below reaches into engine internals except via `EngineHandle`.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from bridge.domain import lifecycle as lc
from bridge.store import migrate
from bridge.store.base import Store, StoreError
from bridge.store.models import (
    AcceptBatch,
    AcceptOutcome,
    Account,
    AppKey,
    IdempotencyRecord,
    MessageRecord,
    MoMessage,
    MoPart,
    NewMessage,
    NewSegment,
    ReceiptIn,
    Release,
    SubmitResult,
    WorkMessage,
)

# tests/integration has no __init__.py, so pytest does not put the repository root on sys.path
# before importing this module; the shared engine fixtures live in the `tests` package there.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from tests.store_engines import EngineHandle, schema_before  # noqa: E402

# Bound here, in the module, on purpose: a module's fixtures take precedence over conftest ones,
# and tests/integration/conftest.py has an API-server `store` of its own.
engine = engines.engine
store = engines.store

NOW = 1_700_000_000_000
SEC = 1_000
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR
LEASE = 5 * MIN
TIMEOUT = 72 * HOUR


# ---------------------------------------------------------------- builders


def account(
    aid: str = "acc_a", *, status_url: str | None = None, mo_url: str | None = None
) -> Account:
    return Account(
        id=aid,
        name=f"name-{aid}",
        status_callback_url=status_url,
        mo_callback_url=mo_url,
        webhook_secret_enc=b"sealed",
        created_at=NOW,
        updated_at=NOW,
    )


def message(
    mid: str,
    account_id: str = "acc_a",
    *,
    parts: int = 1,
    at: int = NOW,
    recipient: str = "+8613800138000",
    sender: str | None = None,
    scheduled_at: int | None = None,
    expires_at: int | None = None,
) -> NewMessage:
    return NewMessage(
        id=mid,
        account_id=account_id,
        batch_id="b_" + mid,
        recipient=recipient,
        encoding="gsm7",
        data_coding=0,
        billable_units=parts,
        segments=tuple(
            NewSegment(
                seq=i,
                total=parts,
                esm_class=0x40 if parts > 1 else 0,
                short_message=f"{mid}/{i}".encode(),
                tlvs=b"",
            )
            for i in range(1, parts + 1)
        ),
        accepted_at=at,
        text=f"text of {mid}",
        client_ref="ref-" + mid,
        sender=sender,
        scheduled_at=scheduled_at,
        expires_at=expires_at,
    )


def batch(
    *msgs: NewMessage,
    account_id: str = "acc_a",
    key: str | None = None,
    expires_at: int = NOW + DAY,
) -> AcceptBatch:
    return AcceptBatch(
        account_id=account_id,
        messages=tuple(msgs),
        idempotency_key=key,
        idempotency=IdempotencyRecord(f"hash-{key}", 202, f"resp-{key}".encode()) if key else None,
        idempotency_expires_at=expires_at,
    )


async def accept(store: Store, *msgs: NewMessage, key: str | None = None, now: int = NOW) -> None:
    out = await store.accept(batch(*msgs, key=key), now)
    assert out == AcceptOutcome(accepted=True)


async def claim_all(store: Store, now: int = NOW, limit: int = 1000) -> list[WorkMessage]:
    return await store.claim("inst-1", limit, now, LEASE)


def sent(mid: str, seq: int = 1, smsc: str = "smscA", msg_id: str | None = None) -> SubmitResult:
    ident = msg_id or f"{mid}-{seq}"
    return SubmitResult(mid, seq, "sent", smsc, ident, ident.upper(), at=NOW)


def rcpt(
    smsc: str,
    msg_id: str,
    state: str = "delivered",
    *,
    stat: str | None = None,
    err: str | None = None,
    at: int = NOW + MIN,
) -> ReceiptIn:
    return ReceiptIn(smsc, msg_id, state, stat, err, None, at, raw=f"id:{msg_id}")


async def get(store: Store, mid: str, account_id: str = "acc_a") -> MessageRecord:
    rec = await store.get_message(account_id, mid)
    assert rec is not None
    return rec


async def seg_states(store: Store, mid: str) -> list[str]:
    return [s.state for s in (await get(store, mid)).segment_rows]


async def sent_message(store: Store, mid: str, parts: int = 1, smsc: str = "smscA") -> None:
    """Accept, claim and record every part as sent on `smsc` (ids '<mid>-<seq>')."""
    await accept(store, message(mid, parts=parts))
    work = await claim_all(store)
    assert [w.id for w in work] == [mid]
    await store.record_submits([sent(mid, s, smsc) for s in range(1, parts + 1)], [], NOW)
    assert (await get(store, mid)).state == "sent"


async def status_jobs(store: Store, now: int = NOW + 100 * DAY) -> list[str]:
    """Message ids of status webhooks due by `now` (claims them: call once per test)."""
    jobs = await store.claim_webhooks(now, 1000, LEASE)
    return sorted(j.payload for j in jobs if j.kind == "status")


# ---------------------------------------------------------------- migrations


async def test_open_applies_all_migrations(store: Store, engine: EngineHandle) -> None:
    assert await store.schema_version() == migrate.latest(engine.name)
    assert migrate.latest(engine.name) >= 1
    assert await store.ping() is True


async def test_reopen_is_a_noop_and_keeps_data(engine: EngineHandle) -> None:
    first = engine.new_store()
    await first.open()
    await first.create_account(account())
    await first.close()
    second = engine.new_store()
    await second.open()
    try:
        assert await second.schema_version() == migrate.latest(engine.name)
        assert [a.id for a in await second.list_accounts()] == ["acc_a"]
    finally:
        await second.close()


async def test_database_newer_than_code_is_refused(engine: EngineHandle) -> None:
    first = engine.new_store()
    await first.open()
    await first.close()
    engine.force_schema_version(migrate.latest(engine.name) + 1)
    newer = engine.new_store()
    with pytest.raises(migrate.SchemaTooNew, match="newer than this release"):
        await newer.open()
    await newer.close()


# ---------------------------------------------------------------- accounts, keys, nonces


async def test_account_create_get_list(store: Store) -> None:
    a = account("acc_a", status_url="https://a.example/st")
    b = account("acc_b")
    await store.create_account(a)
    await store.create_account(b)
    assert await store.get_account("acc_a") == a
    assert await store.get_account_by_name("name-acc_b") == b
    assert await store.get_account("nope") is None
    assert await store.get_account_by_name("nope") is None
    assert [x.id for x in await store.list_accounts()] == ["acc_a", "acc_b"]


async def test_duplicate_account_name_is_refused(store: Store) -> None:
    await store.create_account(account("acc_a"))
    dup = Account(id="acc_other", name="name-acc_a", created_at=NOW, updated_at=NOW)
    with pytest.raises(StoreError) as err:
        await store.create_account(dup)
    assert err.value.code == "ACCOUNT_EXISTS"
    assert "name-acc_a" in err.value.message
    assert [x.id for x in await store.list_accounts()] == ["acc_a"]


async def test_update_account_allowed_fields(store: Store) -> None:
    await store.create_account(account())
    got = await store.update_account(
        "acc_a", {"tps": 50, "marketing": True, "status_callback_url": "https://x/y"}, NOW + 5
    )
    assert got is not None
    assert (got.tps, got.marketing, got.status_callback_url) == (50, True, "https://x/y")
    assert (got.created_at, got.updated_at) == (NOW, NOW + 5)
    assert await store.get_account("acc_a") == got
    assert await store.update_account("missing", {"tps": 1}, NOW) is None


@pytest.mark.parametrize("field", ["name", "id", "created_at", "bogus"])
async def test_update_account_refuses_other_fields(store: Store, field: str) -> None:
    await store.create_account(account())
    with pytest.raises(StoreError) as err:
        await store.update_account("acc_a", {field: "x", "tps": 9}, NOW + 5)
    assert err.value.code == "INVALID_FIELD"
    assert field in err.value.message
    # Nothing of the refused change was applied, not even the valid part.
    assert await store.get_account("acc_a") == account()


def key(kid: str, aid: str = "acc_a") -> AppKey:
    return AppKey(kid, aid, b"sealed-" + kid.encode(), "active", NOW)


async def test_keys_max_active_and_revoke(store: Store) -> None:
    await store.create_account(account())
    await store.add_key(key("K1"), max_active=2)
    await store.add_key(key("K2"), max_active=2)
    with pytest.raises(StoreError) as err:
        await store.add_key(key("K3"), max_active=2)
    assert err.value.code == "TOO_MANY_KEYS"
    assert await store.get_key("K3") is None
    assert await store.revoke_key("K1", NOW + 7) is True
    assert await store.revoke_key("K1", NOW + 8) is False
    assert await store.revoke_key("nope", NOW) is False
    k1 = await store.get_key("K1")
    assert k1 is not None and (k1.status, k1.revoked_at) == ("revoked", NOW + 7)
    await store.add_key(key("K3"), max_active=2)  # a revoked key frees its slot
    assert [k.key_id for k in await store.list_keys("acc_a")] == ["K1", "K2", "K3"]
    assert await store.get_key("K2") == key("K2")


async def test_nonce_replay_and_expiry(store: Store) -> None:
    exp = NOW + 5 * MIN
    assert await store.use_nonce("K1", "n1", exp, NOW) is True
    assert await store.use_nonce("K1", "n1", exp, NOW + 1) is False
    assert await store.use_nonce("K1", "n1", exp, exp - 1) is False
    assert await store.use_nonce("K2", "n1", exp, NOW) is True  # nonces are per key
    # At its expiry the nonce is forgotten (the signature's time window has closed anyway).
    assert await store.use_nonce("K1", "n1", exp + 5 * MIN, exp) is True
    assert await store.use_nonce("K1", "n1", exp + 5 * MIN, exp + 1) is False


# ---------------------------------------------------------------- accept


async def test_accept_writes_messages_segments_and_idempotency(store: Store) -> None:
    out = await store.accept(batch(message("m1"), message("m2", parts=3), key="k1"), NOW)
    assert out == AcceptOutcome(accepted=True, existing=None)
    m2 = await get(store, "m2")
    assert (m2.state, m2.segments, m2.billable_units, m2.client_ref) == ("queued", 3, 3, "ref-m2")
    assert (m2.accepted_at, m2.sent_at, m2.done_at, m2.error_code) == (NOW, None, None, None)
    assert [(s.seq, s.total, s.state) for s in m2.segment_rows] == [
        (1, 3, "queued"),
        (2, 3, "queued"),
        (3, 3, "queued"),
    ]
    assert (await get(store, "m1")).segments == 1
    assert await store.get_message("other_account", "m1") is None
    assert await store.get_idempotency("acc_a", "k1", NOW) == IdempotencyRecord(
        "hash-k1", 202, b"resp-k1"
    )
    assert await store.queue_depth() == 4


async def test_accept_with_stored_idempotency_key_writes_nothing(store: Store) -> None:
    await accept(store, message("m1"), key="k1")
    out = await store.accept(batch(message("m2", parts=2), key="k1"), NOW + 1)
    assert out.accepted is False
    assert out.existing == IdempotencyRecord("hash-k1", 202, b"resp-k1")
    assert await store.get_message("acc_a", "m2") is None
    assert await store.queue_depth() == 1
    # The same key on another account is another request.
    other = AcceptBatch("acc_b", (message("m3", "acc_b"),), "k1", IdempotencyRecord("h", 202, b"r"))
    assert (await store.accept(other, NOW)).accepted is True


async def test_concurrent_requests_with_one_key_accept_once(store: Store) -> None:
    outs = await asyncio.gather(
        *(store.accept(batch(message(f"r{i}"), key="same"), NOW) for i in range(10))
    )
    winners = [i for i, o in enumerate(outs) if o.accepted]
    assert len(winners) == 1
    assert all(
        o.existing == IdempotencyRecord("hash-same", 202, b"resp-same")
        for o in outs
        if not o.accepted
    )
    assert [m.id for m in await store.list_messages("acc_a")] == [f"r{winners[0]}"]


async def test_expired_idempotency_key_can_be_used_again(store: Store) -> None:
    await store.accept(batch(message("m1"), key="k1", expires_at=NOW + HOUR), NOW)
    assert await store.get_idempotency("acc_a", "k1", NOW + HOUR - 1) is not None
    assert await store.get_idempotency("acc_a", "k1", NOW + HOUR) is None
    out = await store.accept(batch(message("m2"), key="k1", expires_at=NOW + 3 * HOUR), NOW + HOUR)
    assert out.accepted is True
    assert await store.get_message("acc_a", "m2") is not None


async def test_concurrent_accepts_share_commits(store: Store, engine: EngineHandle) -> None:
    before = engine.commits(store) if engine.commits else 0
    outs = await asyncio.gather(
        *(store.accept(batch(message(f"m{i:04d}", parts=2), key=f"k{i}"), NOW) for i in range(200))
    )
    assert all(o.accepted for o in outs)
    listed = await store.list_messages("acc_a", limit=1000)
    assert len(listed) == 200
    assert await store.queue_depth() == 400
    if engine.commits is not None:  # an engine that groups commits in the client (SQLite)
        commits = engine.commits(store) - before
        assert 1 <= commits <= 40, f"group commit: {commits} commits for 200 accepts"


async def test_failing_job_in_a_batch_does_not_undo_the_others(
    store: Store, engine: EngineHandle
) -> None:
    await accept(store, message("taken"))
    before = engine.commits(store) if engine.commits else 0
    # The bad request writes its idempotency row and first message, then hits a duplicate id.
    bad = batch(message("bad-first"), message("taken"), key="kbad")
    jobs = [store.accept(batch(message(f"ok{i:03d}"), key=f"k{i}"), NOW) for i in range(100)]
    jobs.insert(50, store.accept(bad, NOW))
    outs = await asyncio.gather(*jobs, return_exceptions=True)
    assert isinstance(outs[50], Exception) and not isinstance(outs[50], AssertionError)
    rest = outs[:50] + outs[51:]
    assert all(o == AcceptOutcome(accepted=True) for o in rest)
    if engine.commits is not None:  # some of them did share a transaction
        assert engine.commits(store) - before < 101
    assert len(await store.list_messages("acc_a", limit=1000)) == 101
    assert await store.get_message("acc_a", "bad-first") is None
    assert await store.get_idempotency("acc_a", "kbad", NOW) is None
    assert await store.get_idempotency("acc_a", "k99", NOW) is not None


CHILD = """
import asyncio, os, signal, sys
{setup}
from bridge.store.models import AcceptBatch, IdempotencyRecord, NewMessage, NewSegment

def msg(i):
    segs = tuple(NewSegment(s, 3, 0x40, b"c%d/%d" % (i, s), b"") for s in (1, 2, 3))
    return NewMessage(id="c%04d" % i, account_id="acc_a", batch_id="b", recipient="+8613800138000",
                      encoding="gsm7", data_coding=0, billable_units=3, segments=segs,
                      accepted_at={now})

async def main():
    await store.open()
    outs = await asyncio.gather(*(
        store.accept(AcceptBatch("acc_a", (msg(i),), "k%d" % i,
                                 IdempotencyRecord("h", 202, b"r"), {now} + 3600000), {now})
        for i in range({n})))
    assert all(o.accepted for o in outs)
    print("ok", flush=True)
    if sys.argv[1] == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(0)

asyncio.run(main())
"""


@pytest.mark.parametrize("death", ["sigkill", "os_exit"])
async def test_accepted_messages_survive_a_crash(engine: EngineHandle, death: str) -> None:
    n = 150
    code = CHILD.format(setup=engine.child_setup, now=NOW, n=n)
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", textwrap.dedent(code), death],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    assert proc.stdout == "ok\n", proc.stderr
    assert proc.returncode == (-9 if death == "sigkill" else 0)
    store = engine.new_store()
    await store.open()
    try:
        msgs = await store.list_messages("acc_a", limit=1000)
        assert sorted(m.id for m in msgs) == [f"c{i:04d}" for i in range(n)]
        assert await store.queue_depth() == 3 * n
        work = await claim_all(store, limit=1000)
        assert len(work) == n
        assert all([s.seq for s in w.segments] == [1, 2, 3] for w in work)
        assert work[7].segments[1].short_message == f"c{int(work[7].id[1:])}/2".encode()
        assert await store.get_idempotency("acc_a", f"k{n - 1}", NOW) is not None
    finally:
        await store.close()


async def test_list_messages_filters_and_cursor(store: Store) -> None:
    from bridge.ids import new_id

    # Real ids: an id starts with its accepted_at, so newest first is the same by either.
    ids = {f"m{i}": new_id("msg_", NOW + i * MIN) for i in range(6)}
    ids["x0"] = new_id("msg_", NOW + 6 * MIN)
    name = {v: k for k, v in ids.items()}
    msgs = [
        message(ids[f"m{i}"], at=NOW + i * MIN, recipient="+861" if i % 2 else "+862")
        for i in range(6)
    ]
    await store.accept(AcceptBatch("acc_a", tuple(msgs), None, None), NOW)
    await accept(store, message(ids["x0"], at=NOW + 6 * MIN))
    await store.accept(AcceptBatch("acc_b", (message("other", "acc_b"),), None, None), NOW)
    page1 = await store.list_messages("acc_a", limit=3)
    assert [name[m.id] for m in page1] == ["x0", "m5", "m4"]  # newest first
    page2 = await store.list_messages("acc_a", before_id=page1[-1].id, limit=3)
    assert [name[m.id] for m in page2] == ["m3", "m2", "m1"]
    got = await store.list_messages("acc_a", recipient="+861")
    assert [name[m.id] for m in got] == ["m5", "m3", "m1"]
    got = await store.list_messages("acc_a", since=NOW + MIN, until=NOW + 3 * MIN)
    assert [name[m.id] for m in got] == ["m2", "m1"]
    # Two accepted in the same millisecond: the id decides, and the cursor does not skip one.
    twins = sorted(new_id("msg_", NOW + 7 * MIN) for _ in range(3))
    for t in twins:
        await accept(store, message(t, at=NOW + 7 * MIN))
    first = await store.list_messages("acc_a", limit=2)
    rest = await store.list_messages("acc_a", before_id=first[-1].id, limit=2)
    assert [m.id for m in first + rest] == [*reversed(twins), ids["x0"]]
    assert await store.list_messages("acc_a", state="sent") == []
    assert len(await store.list_messages("acc_a", state="queued")) == 10


# ---------------------------------------------------------------- the send path


def send(
    mid: str,
    nonce: str,
    *,
    key: str | None = None,
    kid: str = "K1",
    version: int | None = NOW,
    tps: float = 0.0,
) -> AcceptBatch:
    """What the API commits for POST /v1/messages: the nonce and key/account checks ride in the
    accept transaction (a deferred authorisation)."""
    idem = key or f"idem-{mid}"
    return AcceptBatch(
        "acc_a",
        (message(mid),),
        idem,
        IdempotencyRecord(f"hash-{idem}", 202, f"resp-{idem}".encode()),
        NOW + DAY,
        tps=tps,
        key_id=kid,
        nonce=nonce,
        nonce_expires_at=NOW + 5 * MIN,
        account_version=version,
    )


async def test_send_path_checks_key_account_and_nonce_in_the_accept(store: Store) -> None:
    await store.create_account(account())
    await store.add_key(key("K1"), max_active=2)
    assert (await store.accept(send("m1", "n1"), NOW)).accepted
    replay = await store.accept(send("m2", "n1"), NOW + 1)
    assert (replay.accepted, replay.auth_refusal) == (False, "nonce_reused")
    unknown = await store.accept(send("m3", "n3", kid="nope"), NOW)
    assert (unknown.accepted, unknown.auth_refusal) == (False, "unknown_key")
    # A second request with the first one's idempotency key: its nonce is spent, nothing else.
    dup = await store.accept(send("m4", "n4", key="idem-m1"), NOW)
    assert dup.existing == IdempotencyRecord("hash-idem-m1", 202, b"resp-idem-m1")
    assert (await store.accept(send("m5", "n4"), NOW)).auth_refusal == "nonce_reused"
    # The account changed since the request was checked: nothing written, the fresh account
    # comes back, and the same nonce passes once the request is checked again.
    await store.update_account("acc_a", {"marketing": True}, NOW + 7)
    stale = await store.accept(send("m6", "n6"), NOW)
    assert (stale.auth_refusal, stale.account and stale.account.updated_at) == ("stale", NOW + 7)
    assert (await store.accept(send("m6", "n6", version=NOW + 7), NOW)).accepted
    await store.update_account("acc_a", {"status": "disabled"}, NOW + 8)
    off = await store.accept(send("m7", "n7", version=NOW + 8), NOW)
    assert (off.accepted, off.auth_refusal) == (False, "disabled")
    await store.update_account("acc_a", {"status": "active"}, NOW + 9)
    await store.revoke_key("K1", NOW + 9)
    gone = await store.accept(send("m8", "n8", version=NOW + 9), NOW)
    assert (gone.accepted, gone.auth_refusal) == (False, "revoked")
    assert sorted(m.id for m in await store.list_messages("acc_a")) == ["m1", "m6"]
    assert await store.get_idempotency("acc_a", "idem-m7", NOW) is None
    # Refused requests did not spend their nonces (a replay check happens after the others).
    assert await store.use_nonce("K1", "n7", NOW + 5 * MIN, NOW) is True
    assert await store.use_nonce("K1", "n8", NOW + 5 * MIN, NOW) is True
    # Several recipients in one request.
    await store.add_key(key("K2"), max_active=2)
    many = replace(
        send("x", "n9", kid="K2", version=NOW + 9),
        messages=(message("b1", parts=2), message("b2", parts=3, at=NOW + 1)),
    )
    assert (await store.accept(many, NOW)).accepted
    # m1 and m6 were still queued when the account was disabled: they ended then.
    for mid in ("m1", "m6"):
        rec = await store.get_message("acc_a", mid)
        assert rec is not None and (rec.state, rec.error_code) == ("expired", "ACCOUNT_DISABLED")
    assert [(w.id, len(w.segments)) for w in await claim_all(store, NOW + 1)] == [
        ("b1", 2),
        ("b2", 3),
    ]


async def test_send_path_enforces_the_accounts_live_rate(store: Store) -> None:
    await store.create_account(account())
    await store.add_key(key("K1"), max_active=2)
    # The change's version is its time (session 56: one later than the version before when
    # that is not earlier, as here, the account created in the same millisecond).
    await store.update_account("acc_a", {"tps": 2}, NOW)
    v = NOW + 1
    outs = [await store.accept(send(f"r{i}", f"n{i}", version=v), NOW) for i in range(3)]
    assert [o.accepted for o in outs] == [True, True, False]
    assert outs[2].retry_after == pytest.approx(0.5)
    # Refused by the rate: its nonce and idempotency record are not kept, so a retry passes.
    assert await store.get_idempotency("acc_a", "idem-r2", NOW) is None
    assert (await store.accept(send("r2", "n2", version=v), NOW + 500)).accepted


# ---------------------------------------------------------------- claim


async def test_claim_oldest_first_and_only_once(store: Store) -> None:
    await accept(store, message("m_new", at=NOW + 2), message("m_old", at=NOW))
    await accept(store, message("m_mid", at=NOW + 1))
    first = await store.claim("i", 2, NOW + 10, LEASE)
    assert [w.id for w in first] == ["m_old", "m_mid"]
    assert [w.id for w in await store.claim("i", 2, NOW + 10, LEASE)] == ["m_new"]
    assert await store.claim("i", 2, NOW + 10, LEASE) == []
    assert await store.claim("i", 2, NOW + 10 + 10 * LEASE, LEASE) == []


async def test_claim_is_fair_across_accounts(store: Store) -> None:
    big = [message(f"a{i:04d}", "acc_a", at=NOW + i) for i in range(1000)]
    await store.accept(AcceptBatch("acc_a", tuple(big), None, None), NOW)
    small = [message(f"b{i}", "acc_b", at=NOW + 5000 + i) for i in range(5)]
    await store.accept(AcceptBatch("acc_b", tuple(small), None, None), NOW)
    work = await store.claim("i", 100, NOW + HOUR, LEASE)
    ids = [w.id for w in work]
    assert len(ids) == 100 and len(set(ids)) == 100
    assert {f"b{i}" for i in range(5)} <= set(ids)
    a_ids = sorted(i for i in ids if i.startswith("a"))
    assert a_ids == [f"a{i:04d}" for i in range(95)]  # A's share is still its oldest work


async def test_scheduled_message_waits_for_its_time(store: Store) -> None:
    await accept(store, message("later", scheduled_at=NOW + HOUR), message("now"))
    assert [w.id for w in await claim_all(store, NOW)] == ["now"]
    assert await claim_all(store, NOW + HOUR - 1) == []
    assert [w.id for w in await claim_all(store, NOW + HOUR)] == ["later"]


async def test_claim_returns_work_in_seq_order(store: Store) -> None:
    await accept(store, message("m", parts=3, sender="1069", expires_at=NOW + DAY))
    (w,) = await claim_all(store)
    assert (w.id, w.account_id, w.recipient, w.sender, w.expires_at) == (
        "m",
        "acc_a",
        "+8613800138000",
        "1069",
        NOW + DAY,
    )
    assert w.attempts == 1
    assert [(s.seq, s.total, s.short_message, s.esm_class) for s in w.segments] == [
        (1, 3, b"m/1", 0x40),
        (2, 3, b"m/2", 0x40),
        (3, 3, b"m/3", 0x40),
    ]


async def test_claim_after_partial_send_returns_only_queued_parts(store: Store) -> None:
    await accept(store, message("m", parts=3))
    await claim_all(store)
    await store.record_submits([sent("m", 1)], [Release("m", NOW + 10 * SEC)], NOW)
    assert await claim_all(store, NOW + 10 * SEC - 1) == []
    (w,) = await claim_all(store, NOW + 10 * SEC)
    assert [s.seq for s in w.segments] == [2, 3]
    assert w.attempts == 2
    assert (await get(store, "m")).segments_sent == 1
    assert await store.queue_depth() == 2


# ---------------------------------------------------------------- record_submits


async def test_all_parts_sent_makes_message_sent(store: Store) -> None:
    await accept(store, message("m", parts=2))
    await claim_all(store)
    await store.record_submits([sent("m", 1)], [], NOW + 1)
    assert (await get(store, "m")).state == "queued"  # one part still to go
    await store.record_submits([sent("m", 2, msg_id="ab12")], [], NOW + 2)
    rec = await get(store, "m")
    assert (rec.state, rec.smsc, rec.segments_sent, rec.sent_at, rec.done_at) == (
        "sent",
        "smscA",
        2,
        NOW + 2,
        None,
    )
    assert [(s.state, s.smsc, s.smsc_msg_id, s.submitted_at) for s in rec.segment_rows] == [
        ("sent", "smscA", "M-1", NOW),
        ("sent", "smscA", "AB12", NOW),
    ]
    assert await store.queue_depth() == 0
    assert await claim_all(store, NOW + DAY) == []


async def test_duplicate_sent_result_is_counted_once(store: Store) -> None:
    await accept(store, message("m", parts=2))
    await claim_all(store)
    await store.record_submits([sent("m", 1)], [], NOW)
    await store.record_submits([sent("m", 1)], [], NOW)
    rec = await get(store, "m")
    assert rec.segments_sent == 1
    assert await store.queue_depth() == 1


async def test_failed_part_fails_later_parts_and_the_message(store: Store) -> None:
    await store.create_account(account(status_url="https://cb.example/st"))
    await accept(store, message("m", parts=3))
    await claim_all(store)
    failed = SubmitResult("m", 1, "failed", "smscA", error_code="ESME_RINVDSTADR", at=NOW)
    await store.record_submits([failed], [], NOW + 3)
    rec = await get(store, "m")
    assert (rec.state, rec.error_code, rec.done_at, rec.segments_failed) == (
        "failed",
        "ESME_RINVDSTADR",
        NOW + 3,
        3,
    )
    assert [(s.state, s.error_code) for s in rec.segment_rows] == [
        ("failed", "ESME_RINVDSTADR"),
        ("failed", "PREVIOUS_PART_FAILED"),
        ("failed", "PREVIOUS_PART_FAILED"),
    ]
    assert await store.queue_depth() == 0
    assert await claim_all(store, NOW + DAY) == []
    assert await status_jobs(store) == ["m"]


async def test_failed_middle_part_is_final_once_earlier_parts_are(store: Store) -> None:
    await accept(store, message("m", parts=3))
    await claim_all(store)
    failed = SubmitResult("m", 2, "failed", "smscA", error_code="ESME_RSUBMITFAIL", at=NOW)
    await store.record_submits([sent("m", 1), failed], [], NOW)
    assert await seg_states(store, "m") == ["sent", "failed", "failed"]
    assert (await get(store, "m")).state == "sent"  # part 1 may still be delivered: not final
    assert await claim_all(store, NOW + DAY) == []
    await store.apply_receipts([rcpt("smscA", "m-1")], NOW + MIN)
    rec = await get(store, "m")
    assert (rec.state, rec.error_code, rec.segments_delivered) == ("failed", "ESME_RSUBMITFAIL", 1)


@pytest.mark.parametrize("count_attempt", [True, False])
async def test_release_requeues_after_not_before(store: Store, count_attempt: bool) -> None:
    await accept(store, message("m"))
    await claim_all(store)
    await store.record_submits([], [Release("m", NOW + MIN, count_attempt)], NOW)
    rec = await get(store, "m")
    assert rec.state == "queued"
    assert await claim_all(store, NOW + MIN - 1) == []
    (w,) = await claim_all(store, NOW + MIN)
    assert w.attempts == (2 if count_attempt else 1)


async def test_expired_result_expires_the_message(store: Store) -> None:
    await accept(store, message("m", parts=2, expires_at=NOW))
    await claim_all(store)
    results = [SubmitResult("m", s, "expired", "", at=NOW) for s in (1, 2)]
    await store.record_submits(results, [], NOW + 1)
    rec = await get(store, "m")
    assert (rec.state, rec.error_code, rec.done_at) == ("expired", "VALIDITY_EXPIRED", NOW + 1)
    assert await store.queue_depth() == 0
    assert await claim_all(store, NOW + DAY) == []


async def test_expired_results_split_over_two_flushes_do_not_finish_early(store: Store) -> None:
    await accept(store, message("m", parts=2, expires_at=NOW))
    await claim_all(store)
    await store.record_submits([SubmitResult("m", 1, "expired", "", at=NOW)], [], NOW + 1)
    assert (await get(store, "m")).state == "queued"  # part 2 not settled: not final yet
    await store.record_submits([SubmitResult("m", 2, "expired", "", at=NOW)], [], NOW + 2)
    rec = await get(store, "m")
    assert (rec.state, rec.done_at) == ("expired", NOW + 2)


# ---------------------------------------------------------------- receipts


async def test_receipt_matches_by_smsc_and_id_only(store: Store) -> None:
    await sent_message(store, "m1", smsc="smscA")
    await accept(store, message("m2"))
    await claim_all(store)
    await store.record_submits([sent("m2", 1, "smscB", msg_id="m1-1")], [], NOW)  # same id, B
    out = await store.apply_receipts([rcpt("smscC", "m1-1")], NOW + MIN)
    assert (out.matched, out.pending) == (0, 1)
    assert (await get(store, "m1")).state == "sent"
    out = await store.apply_receipts([rcpt("smscB", "m1-1", "undeliverable")], NOW + MIN)
    assert (out.matched, out.pending) == (1, 0)
    assert (await get(store, "m2")).state == "failed"
    assert (await get(store, "m1")).state == "sent"
    await store.apply_receipts([rcpt("smscA", "m1-1", at=NOW + 2 * MIN)], NOW + 2 * MIN)
    rec = await get(store, "m1")
    assert (rec.state, rec.segments_delivered, rec.done_at) == ("delivered", 1, NOW + 2 * MIN)
    assert rec.segment_rows[0].done_at == NOW + 2 * MIN


async def test_receipts_count_the_status_reports_they_queue(store: Store) -> None:
    """The owner wakes its webhook sender on this count: one per message a receipt ended, for
    an account with a status URL; none for a part that leaves its message open, for an account
    without a URL, or for a receipt repeated."""
    await store.create_account(account(status_url="https://cb.example/st"))
    await store.create_account(account("acc_b"))
    await accept(store, message("m1", parts=2), message("m2"))
    await store.accept(batch(message("m3", "acc_b"), account_id="acc_b"), NOW)
    assert len(await claim_all(store)) == 3
    await store.record_submits([sent("m1", 1), sent("m1", 2), sent("m2"), sent("m3")], [], NOW)
    out = await store.apply_receipts([rcpt("smscA", "m1-1"), rcpt("smscA", "m3-1")], NOW + MIN)
    assert (out.matched, out.reports) == (2, 0)  # m1 half done; m3's account has no URL
    out = await store.apply_receipts([rcpt("smscA", "m1-2"), rcpt("smscA", "m2-1")], NOW + MIN)
    assert (out.matched, out.reports) == (2, 2)
    out = await store.apply_receipts([rcpt("smscA", "m2-1")], NOW + 2 * MIN)
    assert out.reports == 0
    assert await status_jobs(store) == ["m1", "m2"]


async def test_submit_results_count_the_status_reports_they_queue(store: Store) -> None:
    """As receipts do: a refusal at submit ends its message, and the owner wakes its webhook
    sender on this count. None for a part accepted, for a refusal that leaves its message open
    (another part still waits for its receipt), for an account without a URL, or for a result
    recorded twice."""
    await store.create_account(account(status_url="https://cb.example/st"))
    await store.create_account(account("acc_b"))
    await accept(store, message("m1", parts=2), message("m2"))
    await store.accept(batch(message("m3", "acc_b"), account_id="acc_b"), NOW)
    assert len(await claim_all(store)) == 3

    def refused(mid: str, seq: int = 1) -> SubmitResult:
        return SubmitResult(mid, seq, "failed", "smscA", error_code="ESME_RINVDSTADR", at=NOW)

    assert await store.record_submits([sent("m1", 1), refused("m3")], [], NOW) == 0
    assert await store.record_submits([refused("m1", 2)], [], NOW + 1) == 0  # part 1 is out
    assert await store.record_submits([refused("m2")], [], NOW + 1) == 1
    assert await store.record_submits([refused("m2")], [], NOW + 2) == 0
    assert [(await get(store, m)).state for m in ("m1", "m2")] == ["sent", "failed"]
    assert (await get(store, "m3", "acc_b")).state == "failed"
    out = await store.apply_receipts([rcpt("smscA", "m1-1")], NOW + MIN)
    assert (out.matched, out.reports) == (1, 1)  # now m1 ends too
    assert await status_jobs(store) == ["m1", "m2"]


async def test_receipt_before_submit_result_is_kept_and_applied(store: Store) -> None:
    await accept(store, message("m"))
    await claim_all(store)
    out = await store.apply_receipts([rcpt("smscA", "early", at=NOW + 5)], NOW + 5)
    assert (out.matched, out.pending) == (0, 1)
    (pending,) = await store.unmatched_receipts(NOW + 5, 10)
    assert (pending["smsc"], pending["smsc_msg_id"], pending["state"]) == (
        "smscA",
        "early",
        "delivered",
    )
    await store.record_submits([sent("m", 1, msg_id="early")], [], NOW + 10)
    rec = await get(store, "m")
    assert (rec.state, rec.segments_delivered, rec.done_at) == ("delivered", 1, NOW + 10)
    assert await store.unmatched_receipts(NOW + DAY, 10) == []


async def test_a_receipt_kept_from_before_the_part_left_is_not_applied_to_it(store: Store) -> None:
    """An SMSC whose counter ids started over gives a new part the id of a receipt kept long
    before (for a message this gateway never sent, say): that receipt is not the part's. One
    that came after the part left, before its submit_sm_resp was recorded, still is."""
    await accept(store, message("m1"))
    await accept(store, message("m2"))
    await claim_all(store)
    await store.apply_receipts([rcpt("smscA", "7", "undeliverable", at=NOW + 5)], NOW + 5)
    await store.apply_receipts([rcpt("smscA", "8", at=NOW + 2 * MIN)], NOW + 2 * MIN)
    stale = replace(sent("m1", 1, msg_id="7"), at=NOW + 3 * MIN, sent_at=NOW + MIN)
    early = replace(sent("m2", 1, msg_id="8"), at=NOW + 3 * MIN, sent_at=NOW + MIN)
    await store.record_submits([stale, early], [], NOW + 3 * MIN)
    assert (await get(store, "m1")).state == "sent"
    assert (await get(store, "m2")).state == "delivered"
    (kept,) = await store.unmatched_receipts(NOW + DAY, 10)
    assert (kept["smsc_msg_id"], kept["state"]) == ("7", "undeliverable")
    await store.apply_receipts([rcpt("smscA", "7", at=NOW + 4 * MIN)], NOW + 4 * MIN)
    assert (await get(store, "m1")).state == "delivered"


async def test_unmatched_receipt_is_listed_for_inspection(store: Store) -> None:
    await store.apply_receipts([rcpt("smscA", "ghost", at=NOW)], NOW)
    assert await store.unmatched_receipts(NOW - 1, 10) == []
    (row,) = await store.unmatched_receipts(NOW, 10)
    assert (row["smsc_msg_id"], row["received_at"], row["raw"]) == ("ghost", NOW, "id:ghost")


async def test_duplicate_and_late_receipts_do_not_change_a_final_state(store: Store) -> None:
    await store.create_account(account(status_url="https://cb.example/st"))
    await sent_message(store, "m")
    await store.apply_receipts([rcpt("smscA", "m-1", at=NOW + MIN)], NOW + MIN)
    await store.apply_receipts(
        [rcpt("smscA", "m-1", at=NOW + 2 * MIN), rcpt("smscA", "m-1", "undeliverable")],
        NOW + 2 * MIN,
    )
    rec = await get(store, "m")
    assert (rec.state, rec.done_at, rec.segments_delivered, rec.segments_failed) == (
        "delivered",
        NOW + MIN,
        1,
        0,
    )
    assert rec.error_code is None
    assert await status_jobs(store) == ["m"]


async def test_enroute_is_intermediate(store: Store) -> None:
    await sent_message(store, "m")
    out = await store.apply_receipts([rcpt("smscA", "m-1", "enroute", stat="ACCEPTD")], NOW + 1)
    assert out.matched == 1
    assert await seg_states(store, "m") == ["sent"]
    assert (await get(store, "m")).state == "sent"
    await store.apply_receipts([rcpt("smscA", "m-1")], NOW + 2)
    assert (await get(store, "m")).state == "delivered"


async def test_long_message_delivered_only_when_every_part_is(store: Store) -> None:
    await store.create_account(account(status_url="https://cb.example/st"))
    await sent_message(store, "m", parts=3)
    await store.apply_receipts([rcpt("smscA", "m-3"), rcpt("smscA", "m-1")], NOW + MIN)
    rec = await get(store, "m")
    assert (rec.state, rec.segments_delivered, rec.done_at) == ("sent", 2, None)
    await store.apply_receipts([rcpt("smscA", "m-2")], NOW + 2 * MIN)
    rec = await get(store, "m")
    assert (rec.state, rec.segments_delivered, rec.done_at) == ("delivered", 3, NOW + 2 * MIN)
    assert rec.billable_units == 3
    assert await status_jobs(store) == ["m"]


async def test_one_negative_part_fails_the_message_with_its_code(store: Store) -> None:
    await sent_message(store, "m", parts=3)
    await store.apply_receipts(
        [rcpt("smscA", "m-1"), rcpt("smscA", "m-2", "undeliverable", stat="UNDELIV", err="001")],
        NOW + MIN,
    )
    assert (await get(store, "m")).state == "sent"  # part 3 still open
    await store.apply_receipts([rcpt("smscA", "m-3")], NOW + 2 * MIN)
    rec = await get(store, "m")
    assert (rec.state, rec.error_code) == ("failed", "UNDELIV:001")
    assert (rec.segments_delivered, rec.segments_failed) == (2, 1)
    assert [s.error_code for s in rec.segment_rows] == [None, "UNDELIV:001", None]


async def test_no_status_webhook_without_callback_url(store: Store) -> None:
    await store.create_account(account())
    await sent_message(store, "m")
    await store.apply_receipts([rcpt("smscA", "m-1")], NOW + MIN)
    assert (await get(store, "m")).state == "delivered"
    assert await status_jobs(store) == []


# ---------------------------------------------------------------- sweep


async def test_sweep_expires_queued_messages_at_validity(store: Store) -> None:
    await store.create_account(account(status_url="https://cb.example/st"))
    await accept(store, message("m", parts=2, expires_at=NOW + HOUR), message("keep"))
    assert (await store.sweep(NOW + HOUR - 1, TIMEOUT))["expired"] == 0
    assert (await store.sweep(NOW + HOUR, TIMEOUT))["expired"] == 1
    rec = await get(store, "m")
    assert (rec.state, rec.error_code, rec.done_at) == ("expired", "VALIDITY_EXPIRED", NOW + HOUR)
    assert [w.id for w in await claim_all(store, NOW + HOUR)] == ["keep"]
    assert (await store.sweep(NOW + 2 * HOUR, TIMEOUT))["expired"] == 0
    assert await status_jobs(store) == ["m"]


async def test_sweep_expiry_after_partial_send_leaves_nothing_to_claim(store: Store) -> None:
    await accept(store, message("m", parts=2, expires_at=NOW + HOUR))
    await claim_all(store)
    await store.record_submits([sent("m", 1)], [Release("m", NOW + MIN)], NOW)
    assert (await store.sweep(NOW + HOUR, TIMEOUT))["expired"] == 1
    assert await seg_states(store, "m") == ["sent", "expired_unsent"]
    assert await store.queue_depth() == 0
    assert await claim_all(store, NOW + HOUR) == []
    assert (await store.sweep(NOW + HOUR + 1, TIMEOUT))["expired"] == 0
    await store.apply_receipts([rcpt("smscA", "m-1")], NOW + 2 * HOUR)
    assert (await get(store, "m")).state == "expired"


async def test_sweep_receipt_timeout_makes_message_unknown(store: Store) -> None:
    await sent_message(store, "m", parts=2)
    await store.apply_receipts([rcpt("smscA", "m-1")], NOW + MIN)
    assert (await store.sweep(NOW + TIMEOUT - 1, TIMEOUT))["timed_out"] == 0
    assert (await store.sweep(NOW + TIMEOUT, TIMEOUT))["timed_out"] == 1
    rec = await get(store, "m")
    assert (rec.state, rec.error_code, rec.done_at) == ("unknown", "NO_RECEIPT", NOW + TIMEOUT)
    assert await seg_states(store, "m") == ["delivered", "timeout"]
    # A receipt after the timeout does not reopen the outcome.
    await store.apply_receipts([rcpt("smscA", "m-2")], NOW + TIMEOUT + 1)
    assert (await get(store, "m")).state == "unknown"


async def test_a_validity_beyond_the_receipt_timeout_keeps_the_message_sent(store: Store) -> None:
    """Session 48: a 5-day validity outlasts the 72 h receipt timeout. The carrier may deliver
    on day 4: the message stays `sent` until its validity's end plus the margin, and that
    receipt makes it `delivered` (reported once), not a late receipt on an `unknown` one."""
    await store.create_account(account(status_url="https://cb.example/st"))
    ends = NOW + 5 * DAY
    for mid in ("day4", "never"):
        await accept(store, message(mid, expires_at=ends))
    assert {w.id for w in await claim_all(store)} == {"day4", "never"}
    await store.record_submits([sent("day4"), sent("never")], [], NOW)
    assert (await store.sweep(NOW + TIMEOUT, TIMEOUT))["timed_out"] == 0
    assert (await store.sweep(NOW + 4 * DAY, TIMEOUT))["timed_out"] == 0
    await store.apply_receipts([rcpt("smscA", "day4-1", at=NOW + 4 * DAY)], NOW + 4 * DAY)
    rec = await get(store, "day4")
    assert (rec.state, rec.done_at, rec.error_code) == ("delivered", NOW + 4 * DAY, None)
    margin = lc.VALIDITY_RECEIPT_MARGIN_MS
    assert (await store.sweep(ends + margin - 1, TIMEOUT))["timed_out"] == 0
    assert (await get(store, "never")).state == "sent"
    assert (await store.sweep(ends + margin, TIMEOUT))["timed_out"] == 1
    rec = await get(store, "never")
    assert (rec.state, rec.error_code, rec.done_at) == ("unknown", "NO_RECEIPT", ends + margin)
    assert await status_jobs(store) == ["day4", "never"]


async def test_a_short_validity_still_times_out_at_the_receipt_timeout(store: Store) -> None:
    await accept(store, message("m", expires_at=NOW + HOUR))
    await claim_all(store)
    await store.record_submits([sent("m")], [], NOW)
    assert (await store.sweep(NOW + TIMEOUT - 1, TIMEOUT))["timed_out"] == 0
    assert (await store.sweep(NOW + TIMEOUT, TIMEOUT))["timed_out"] == 1
    assert (await get(store, "m")).state == "unknown"


async def test_an_smscs_validity_beyond_the_timeout_keeps_its_messages_sent(store: Store) -> None:
    """smscs[].validity_minutes (relative, from the send) applies to messages without their
    own validity; another SMSC's messages time out as before."""
    await sent_message(store, "long", smsc="smscA")
    await sent_message(store, "other", smsc="smscB")
    validity = {"smscA": 4 * DAY, "smscB": HOUR}
    out = await store.sweep(NOW + TIMEOUT, TIMEOUT, smsc_validity_ms=validity)
    assert out["timed_out"] == 1
    assert [(await get(store, m)).state for m in ("long", "other")] == ["sent", "unknown"]
    due = NOW + 4 * DAY + lc.VALIDITY_RECEIPT_MARGIN_MS
    assert (await store.sweep(due - 1, TIMEOUT, smsc_validity_ms=validity))["timed_out"] == 0
    assert (await store.sweep(due, TIMEOUT, smsc_validity_ms=validity))["timed_out"] == 1
    assert (await get(store, "long")).state == "unknown"


async def test_an_smsc_asked_for_no_final_receipt_ends_its_messages_at_the_timeout(
    store: Store,
) -> None:
    """registered_delivery 0: no receipt comes at the validity's end either, so a message with
    a long validity (its own or its SMSC's) on such an SMSC ends at the timeout; another
    SMSC's still waits for its validity."""
    ends = NOW + 5 * DAY
    for mid in ("own", "waits"):
        await accept(store, message(mid, expires_at=ends))
    await claim_all(store)
    await store.record_submits([sent("own", smsc="quiet"), sent("waits")], [], NOW)
    await sent_message(store, "smscs", smsc="quiet")
    validity = {"quiet": 4 * DAY}
    out = await store.sweep(
        NOW + TIMEOUT, TIMEOUT, smsc_validity_ms=validity, silent_smscs=["quiet"]
    )
    assert out["timed_out"] == 2
    states = [(await get(store, m)).state for m in ("own", "smscs", "waits")]
    assert states == ["unknown", "unknown", "sent"]


async def test_receipts_after_the_timeout_are_counted_and_change_nothing(store: Store) -> None:
    """Session 48: a final receipt for a part the receipt timeout ended is told apart (the
    smpp_bridge_receipts_after_timeout metric): the outcome stays, the carrier reports late."""
    await sent_message(store, "m", parts=2)
    await store.apply_receipts([rcpt("smscA", "m-1")], NOW + MIN)
    await store.sweep(NOW + TIMEOUT, TIMEOUT)
    late = [rcpt("smscA", "m-2", "undeliverable", at=NOW + TIMEOUT + 1)]
    out = await store.apply_receipts(late, NOW + TIMEOUT + 1)
    assert (out.matched, out.pending, out.reports, dict(out.after_timeout)) == (
        1,
        0,
        0,
        {"smscA": 1},
    )
    rec = await get(store, "m")
    assert (rec.state, rec.error_code) == ("unknown", "NO_RECEIPT")
    # Neither an intermediate one, nor one for a part that had its own outcome, nor one unknown.
    again = [
        rcpt("smscA", "m-2", "enroute", at=NOW + TIMEOUT + 2),
        rcpt("smscA", "m-1", at=NOW + TIMEOUT + 2),
        rcpt("smscA", "ghost", at=NOW + TIMEOUT + 2),
    ]
    out = await store.apply_receipts(again, NOW + TIMEOUT + 2)
    assert (out.matched, out.pending, dict(out.after_timeout)) == (2, 1, {})


async def test_sweep_deletes_expired_nonces_and_idempotency(store: Store) -> None:
    assert await store.use_nonce("K", "n", NOW + 10, NOW) is True
    await store.accept(batch(message("m"), key="k1", expires_at=NOW + 10), NOW)
    await store.accept(batch(message("m2"), key="k2", expires_at=NOW + 11), NOW)
    await store.sweep(NOW + 10, TIMEOUT)
    # Asked "as of" an earlier time, only rows that were really deleted are missing.
    assert await store.use_nonce("K", "n", NOW + 10, NOW) is True
    assert await store.get_idempotency("acc_a", "k1", NOW) is None
    assert await store.get_idempotency("acc_a", "k2", NOW) is not None


# ---------------------------------------------------------------- recover


async def test_recover_requeues_claimed_messages(store: Store) -> None:
    await accept(store, message("m1", parts=2), message("m2", at=NOW + 1))
    await claim_all(store, NOW + 1)
    out = await store.recover("inst-1", NOW + 1, frozenset({"smscX"}))
    assert out == {"requeued": 2, "marked_unknown": 0}
    work = await claim_all(store, NOW + 1)
    assert [(w.id, len(w.segments)) for w in work] == [("m1", 2), ("m2", 1)]
    assert await store.recover("inst-1", NOW + 2, frozenset()) == {
        "requeued": 2,
        "marked_unknown": 0,
    }
    assert await store.recover("inst-1", NOW + 3, frozenset()) == {
        "requeued": 0,
        "marked_unknown": 0,
    }


async def test_recover_and_other_instances_claims(store: Store, engine: EngineHandle) -> None:
    """One SQLite process owns every claim, so its restart gives them all back; on a shared
    database another live instance's claims stay its own until their lease runs out."""
    await accept(store, message("mine"), message("theirs", at=NOW + 1))
    await store.claim("inst-1", 1, NOW + 1, LEASE)
    await store.claim("inst-2", 1, NOW + 1, LEASE)
    await store.heartbeat("inst-2", "all", NOW + 1, "{}")
    out = await store.recover("inst-1", NOW + 2, frozenset())
    assert out == {"requeued": 1 if engine.multi_instance else 2, "marked_unknown": 0}
    assert await store.reclaim(NOW + 2, frozenset()) == {"requeued": 0, "marked_unknown": 0}
    if engine.multi_instance:
        assert [w.id for w in await claim_all(store, NOW + 2)] == ["mine"]
        # The lease of inst-2's claim ran out (it stopped renewing its work): taken back.
        await store.heartbeat("inst-2", "all", NOW + 1 + LEASE, "{}")
        out = await store.reclaim(NOW + 1 + LEASE, frozenset())
        assert out == {"requeued": 2, "marked_unknown": 0}


async def test_recover_marks_in_flight_parts_unknown_for_configured_smscs(store: Store) -> None:
    await accept(store, message("m", parts=2), message("other", parts=2, at=NOW + 1))
    await claim_all(store)
    await store.record_submits(
        [sent("m", 1, "smscA"), sent("other", 1, "smscB")],
        [Release("m", NOW), Release("other", NOW)],
        NOW,
    )
    assert len(await claim_all(store, NOW + 1)) == 2  # in flight again when the process dies
    # Their next parts left (the dispatcher records the route as a first part takes its slot).
    await store.record_routes("inst-1", [("m", "smscA"), ("other", "smscB")])
    out = await store.recover("inst-1", NOW + 2, frozenset({"smscA"}))
    assert out == {"requeued": 1, "marked_unknown": 1}
    rec = await get(store, "m")
    assert [(s.state, s.error_code) for s in rec.segment_rows] == [
        ("sent", None),
        ("timeout", "IN_FLIGHT_AT_RESTART"),
    ]
    assert [w.id for w in await claim_all(store, NOW + 3)] == ["other"]
    assert await store.queue_depth() == 1  # only other's part 2, now claimed again
    assert (await store.recover("inst-1", NOW + 4, frozenset({"smscA"})))["marked_unknown"] == 0
    await store.apply_receipts([rcpt("smscA", "m-1")], NOW + 5)
    rec = await get(store, "m")
    assert (rec.state, rec.error_code) == ("unknown", "IN_FLIGHT_AT_RESTART")


async def test_recover_requeues_what_had_not_left_in_this_claim(store: Store) -> None:
    """An earlier claim sent part 1 to an unknown-mode SMSC; the message is claimed again, but
    its next part never took a window slot (no route recorded for this claim): requeued, not
    written off as possibly sent."""
    await accept(store, message("m", parts=2))
    await claim_all(store)
    await store.record_submits([sent("m", 1, "smscA")], [Release("m", NOW)], NOW)
    assert len(await claim_all(store, NOW + 1)) == 1
    out = await store.recover("inst-1", NOW + 2, frozenset({"smscA"}))
    assert out == {"requeued": 1, "marked_unknown": 0}
    assert [w.id for w in await claim_all(store, NOW + 3)] == ["m"]
    # Routed in this claim now, then the process dies: unknown, never resent.
    await store.record_routes("inst-1", [("m", "smscA")])
    out = await store.recover("inst-1", NOW + 4, frozenset({"smscA"}))
    assert out == {"requeued": 0, "marked_unknown": 1}


async def test_a_release_by_an_instance_that_lost_the_claim_changes_nothing(store: Store) -> None:
    """inst-1's claim was taken back and m is inst-2's now: inst-1's late release (with its
    instance) must not requeue it under inst-2, which would let a third claim send it again."""
    await accept(store, message("m"))
    assert [w.id for w in await store.claim("inst-1", 10, NOW, LEASE)] == ["m"]
    await store.recover("inst-1", NOW + 1, frozenset())  # given back (as a reclaim would)
    assert [w.id for w in await store.claim("inst-2", 10, NOW + 2, LEASE)] == ["m"]
    await store.record_submits([], [Release("m", NOW + 3)], NOW + 3, instance="inst-1")
    assert await store.claim("inst-3", 10, NOW + 4, LEASE) == []  # still inst-2's
    await store.record_submits([], [Release("m", NOW + 5)], NOW + 5, instance="inst-2")
    assert [w.id for w in await store.claim("inst-3", 10, NOW + 6, LEASE)] == ["m"]


async def test_upgrade_keeps_the_restart_decision_for_claims_left_by_the_old_release(
    engine: EngineHandle,
) -> None:
    """The release before the claim route (q_route) decided by the last answered SMSC. A stop
    past its grace (or a crash) right before the upgrade leaves m claimed, part 1 answered by
    smscA (unknown mode), part 2 on the wire: after the migration it is still marked, not
    resent."""
    s = engine.new_store()
    await s.open()
    await s.create_account(account())
    await accept(s, message("m", parts=2))
    assert [w.id for w in await s.claim("inst-1", 10, NOW, LEASE)] == ["m"]
    await s.record_submits([sent("m", 1, "smscA")], [], NOW)
    await s.close()
    # The schema as the previous release left it.
    await schema_before(engine, 5, 4)
    upgraded = engine.new_store()
    await upgraded.open()  # the migration runs
    try:
        out = await upgraded.recover("inst-1", NOW + 1, frozenset({"smscA"}))
        assert out == {"requeued": 0, "marked_unknown": 1}
    finally:
        await upgraded.close()


# ---------------------------------------------------------------- webhooks


async def test_webhook_lease_and_done(store: Store) -> None:
    await store.create_account(account(status_url="https://cb/st", mo_url="https://cb/mo"))
    await store.enqueue_event("acc_a", "event", '{"e":1}', "ev_1", NOW)
    await store.enqueue_event("acc_a", "event", '{"e":1}', "ev_1", NOW)  # same id: once
    (job,) = await store.claim_webhooks(NOW, 10, LEASE)
    assert (job.webhook_id, job.kind, job.url, job.payload, job.attempts, job.created_at) == (
        "ev_1",
        "event",
        "https://cb/st",
        '{"e":1}',
        0,
        NOW,
    )
    assert await store.claim_webhooks(NOW + LEASE - 1, 10, LEASE) == []
    (again,) = await store.claim_webhooks(NOW + LEASE, 10, LEASE)
    assert again.id == job.id
    await store.webhook_done([job.id], NOW + LEASE + 1)
    assert await store.claim_webhooks(NOW + 100 * DAY, 10, LEASE) == []
    assert await store.dead_webhooks(None, 10) == []


async def test_webhook_retry_dead_and_replay(store: Store) -> None:
    await store.create_account(account(status_url="https://cb/st"))
    await store.create_account(account("acc_b", status_url="https://b/st"))
    await store.enqueue_event("acc_a", "event", "{}", "ev_1", NOW)
    await store.enqueue_event("acc_b", "event", "{}", "ev_2", NOW)
    jobs = await store.claim_webhooks(NOW, 10, LEASE)
    ids = {j.webhook_id: j.id for j in jobs}
    await store.webhook_retry([ids["ev_2"]], NOW + MIN, "HTTP 503", dead=False)
    await store.webhook_retry([ids["ev_1"]], NOW + MIN, "HTTP 404 " + "x" * 900, dead=True)
    assert await store.claim_webhooks(NOW + MIN - 1, 10, LEASE) == []
    (retry,) = await store.claim_webhooks(NOW + MIN, 10, LEASE)
    assert (retry.webhook_id, retry.attempts) == ("ev_2", 1)
    (dead,) = await store.dead_webhooks(None, 10)
    assert (dead["webhook_id"], dead["account_id"], dead["attempts"]) == ("ev_1", "acc_a", 1)
    assert dead["last_error"].startswith("HTTP 404") and len(dead["last_error"]) <= 500
    assert await store.dead_webhooks("acc_b", 10) == []
    assert len(await store.dead_webhooks("acc_a", 10)) == 1
    assert await store.replay_webhooks([ids["ev_1"], ids["ev_2"]], NOW + 2 * MIN) == 1
    assert await store.dead_webhooks(None, 10) == []
    (replayed,) = await store.claim_webhooks(NOW + 2 * MIN, 10, LEASE)
    assert (replayed.webhook_id, replayed.attempts) == ("ev_1", 0)
    assert (replayed.created_at, replayed.retry_from) == (NOW, NOW + 2 * MIN)  # a new window
    assert await store.replay_webhooks([ids["ev_1"]], NOW + 3 * MIN) == 0


async def test_webhook_backlog_counts_pending_and_dead_and_the_oldest_pending(
    store: Store,
) -> None:
    assert await store.webhook_backlog() == (0, 0, None)
    await store.create_account(account(status_url="https://cb/st"))
    for i, at in enumerate((NOW + 5, NOW, NOW + 9)):
        await store.enqueue_event("acc_a", "event", "{}", f"ev_{i}", at)
    jobs = {j.webhook_id: j for j in await store.claim_webhooks(NOW + 10, 10, LEASE)}
    await store.webhook_retry([jobs["ev_1"].id], NOW + MIN, "HTTP 404", True, jobs["ev_1"].lease)
    await store.webhook_done([jobs["ev_2"].id], NOW + 11, jobs["ev_2"].lease)
    assert await store.webhook_backlog() == (1, 1, NOW + 5)  # ev_0 leased, still pending
    # A replayed dead letter is as old as its replay (its retry window's start), not its
    # creation: replaying old reports must not read as an endpoint late for that long.
    await store.webhook_done([jobs["ev_0"].id], NOW + 12, jobs["ev_0"].lease)
    assert await store.replay_webhooks([jobs["ev_1"].id], NOW + 2 * MIN) == 1
    assert await store.webhook_backlog() == (1, 0, NOW + 2 * MIN)


async def test_a_dead_senders_webhook_leases_are_given_back(
    store: Store, engine: EngineHandle
) -> None:
    """Leases of a sender that died mid-POST: due at once (the report is sent again), not after
    the lease; a retry's back-off, a delivered report and a report never claimed are left."""
    await store.create_account(account(status_url="https://cb/st"))
    for i in range(1, 5):
        await store.enqueue_event("acc_a", "event", "{}", f"ev_{i}", NOW)
    jobs = {j.webhook_id: j for j in await store.claim_webhooks(NOW, 3, LEASE, holder="gone:1")}
    assert sorted(jobs) == ["ev_1", "ev_2", "ev_3"]
    await store.webhook_retry([jobs["ev_2"].id], NOW + MIN, "HTTP 503", False, jobs["ev_2"].lease)
    await store.webhook_done([jobs["ev_3"].id], NOW + 1, jobs["ev_3"].lease)
    if not engine.multi_instance:  # SQLite: the only sender is this daemon, alive
        assert await store.free_webhook_leases(NOW + 2, at_start=False) == 0
    # At start-up (SQLite), or as "gone:1" is no instance alive (PostgreSQL: no heartbeat, no
    # instance lock): only ev_1's lease was a dead sender's.
    assert await store.free_webhook_leases(NOW + 2, at_start=True) == 1
    assert await store.free_webhook_leases(NOW + 2, at_start=True) == 0
    # The dead sender's late result no longer matches the row (its lease was moved).
    await store.webhook_done([jobs["ev_1"].id], NOW + 3, jobs["ev_1"].lease)
    again = await store.claim_webhooks(NOW + 3, 10, LEASE, holder="new:2")
    assert sorted(j.webhook_id for j in again) == ["ev_1", "ev_4"]
    assert await store.claim_webhooks(NOW + MIN - 1, 10, LEASE) == []  # ev_2 backs off still
    (retry,) = await store.claim_webhooks(NOW + MIN, 10, LEASE)
    assert (retry.webhook_id, retry.attempts) == ("ev_2", 1)
    if not engine.multi_instance:
        return
    # PostgreSQL: "new:2" heartbeats, so its leases are its own, not given back.
    await store.heartbeat("new:2", "all", NOW + 3, "{}")
    assert await store.free_webhook_leases(NOW + 4, at_start=False) == 0
    assert await store.claim_webhooks(NOW + 4, 10, LEASE) == []


# ---------------------------------------------------------------- MO


def part(seq: int, total: int = 3, *, ref: int = 7, source: str = "+861", at: int = NOW) -> MoPart:
    return MoPart("smscA", source, "1069", ref, total, seq, 8, f"p{seq}".encode(), at)


async def test_mo_parts_reassemble_in_seq_order(store: Store) -> None:
    assert await store.add_mo_part(part(3)) is None
    assert await store.add_mo_part(part(1)) is None
    assert await store.add_mo_part(part(1, ref=8)) is None  # another message
    assert await store.add_mo_part(part(1, source="+862")) is None  # another sender
    assert await store.add_mo_part(part(3)) is None  # a resent part does not count twice
    got = await store.add_mo_part(part(2))
    assert got is not None
    assert [(p.seq, p.payload) for p in got] == [(1, b"p1"), (2, b"p2"), (3, b"p3")]
    assert all((p.ref, p.total, p.data_coding) == (7, 3, 8) for p in got)
    # Parts stay until the MO is stored, then the caller drops them: the same reference then
    # starts a new message.
    await store.drop_mo_parts("smscA", "+861", "1069", 7)
    assert await store.add_mo_part(part(2)) is None
    # The other message's parts were left alone.
    assert await store.add_mo_part(part(2, ref=8)) is None
    groups = await store.stale_mo_groups(NOW + 1, 10)
    assert sorted((g[0].source, g[0].ref, [p.seq for p in g]) for g in groups) == [
        ("+861", 7, [2]),
        ("+861", 8, [1, 2]),
        ("+862", 7, [1]),
    ]


async def test_mo_part_of_another_total_does_not_mix(store: Store) -> None:
    """A leftover part of an earlier message that used the same reference (another total) is
    not joined to the new one, nor discarded: it waits in a set of its own, for the
    incomplete-MO rule."""
    assert await store.add_mo_part(part(3, total=3)) is None  # stale, from an old 3-part message
    assert await store.add_mo_part(part(1, total=2)) is None
    got = await store.add_mo_part(part(2, total=2))
    assert got is not None and [(p.seq, p.total) for p in got] == [(1, 2), (2, 2)]
    await store.drop_mo_parts("smscA", "+861", "1069", 7, got[0].set_no)
    (left,) = await store.stale_mo_groups(NOW + 1, 10)
    assert [(p.ref, p.seq, p.total, p.payload) for p in left] == [(7, 3, 3, b"p3")]


async def test_a_reused_reference_keeps_two_messages_apart(store: Store) -> None:
    """Two messages under one reference: a seq already held starts another set (never an
    overwrite), a part goes to the set it completes, the very part again is kept once."""

    def p(seq: int, payload: bytes, at: int) -> MoPart:
        return MoPart("smscA", "+861", "1069", 7, 3, seq, 8, payload, at)

    assert await store.add_mo_part(p(1, b"A1", NOW)) is None
    assert await store.add_mo_part(p(2, b"A2", NOW + 1)) is None
    assert await store.add_mo_part(p(1, b"B1", NOW + 2)) is None  # B: another set
    assert await store.add_mo_part(p(2, b"A2", NOW + 3)) is None  # A2 resent: kept once
    a = await store.add_mo_part(p(3, b"A3", NOW + 4))  # completes A, not {B1, A3}
    assert a is not None and [x.payload for x in a] == [b"A1", b"A2", b"A3"]
    await store.drop_mo_parts("smscA", "+861", "1069", 7, a[0].set_no)
    assert await store.add_mo_part(p(2, b"B2", NOW + 5)) is None
    b = await store.add_mo_part(p(3, b"B3", NOW + 6))
    assert b is not None and [x.payload for x in b] == [b"B1", b"B2", b"B3"]
    assert a[0].set_no != b[0].set_no
    await store.drop_mo_parts("smscA", "+861", "1069", 7, b[0].set_no)
    assert await store.stale_mo_groups(NOW + HOUR, 10) == []


async def test_stale_mo_parts_are_listed_until_dropped(store: Store) -> None:
    await store.add_mo_part(part(1, 2, at=NOW))
    await store.add_mo_part(part(1, 2, ref=9, at=NOW + MIN))
    assert await store.stale_mo_groups(NOW, 10) == []
    (group,) = await store.stale_mo_groups(NOW + 1, 10)
    assert [(p.ref, p.seq) for p in group] == [(7, 1)]
    assert await store.stale_mo_groups(NOW + 1, 10) == [group]  # read only
    await store.drop_mo_parts("smscA", "+861", "1069", 7)
    assert await store.add_mo_part(part(2, 2, at=NOW + 2)) is None  # its part 1 was dropped
    got = await store.add_mo_part(part(2, 2, ref=9, at=NOW + 2))
    assert got is not None and [p.seq for p in got] == [1, 2]


async def test_mo_attribution_and_storage(store: Store) -> None:
    await store.create_account(account("acc_a", mo_url="https://a/mo"))
    await store.create_account(account("acc_b"))
    phone = "+8613900000000"
    old = NOW - 10 * DAY
    await store.accept(
        AcceptBatch(
            "acc_a", (message("a1", "acc_a", at=old, recipient=phone, sender="106A"),), None, None
        ),
        old,
    )
    await store.accept(
        AcceptBatch(
            "acc_b",
            (message("b1", "acc_b", at=NOW - DAY, recipient=phone, sender="106B"),),
            None,
            None,
        ),
        NOW,
    )
    assert await store.attribute_mo(phone, ["106A"], NOW) == ("acc_a", None)  # by the address
    assert await store.attribute_mo(phone, ["106B"], NOW) == ("acc_b", None)
    # No message went out from 999: nobody's reply (never the latest sender from elsewhere).
    assert await store.attribute_mo(phone, ["999"], NOW) is None
    assert await store.attribute_mo(phone, ["999"], NOW, default=True) is None  # none unsigned
    assert await store.attribute_mo("+8613000000000", ["106A"], NOW) is None
    assert await store.attribute_mo(phone, ["106A"], NOW + 29 * DAY) is None  # a1 too old
    assert await store.attribute_mo(phone, ["106A"], old + 30 * DAY) == ("acc_a", None)
    assert await store.attribute_mo(phone, ["106B"], NOW - DAY + 30 * DAY + 1) is None

    mo = MoMessage("mo_1", "acc_a", "smscA", phone, "106A", "STOP 你好", NOW)
    await store.store_mo(mo)
    await store.store_mo(mo)  # redelivered by the SMSC: stored once
    await store.store_mo(MoMessage("mo_2", "acc_b", "smscA", phone, "106B", "hi", NOW))
    await store.store_mo(MoMessage("mo_3", None, "smscA", phone, "1", "who?", NOW))
    assert await store.get_mo("mo_1") == mo
    assert await store.get_mo("mo_3") is not None
    assert await store.get_mo("mo_9") is None
    jobs = await store.claim_webhooks(NOW, 10, LEASE)  # only acc_a has an MO URL
    assert [(j.kind, j.payload, j.url) for j in jobs] == [("mo", "mo_1", "https://a/mo")]


# ---------------------------------------------------------------- queue depth and stats


async def test_queue_depth_counts_unsent_segments(store: Store) -> None:
    assert await store.queue_depth() == 0
    await accept(store, message("m1", parts=3), message("m2", parts=2, at=NOW + 1))
    assert await store.queue_depth() == 5
    await claim_all(store)
    assert await store.queue_depth() == 5  # claimed but not yet sent still counts
    await store.record_submits([sent("m1", 1), sent("m1", 2)], [], NOW)
    assert await store.queue_depth() == 3
    await store.record_submits([sent("m1", 3), sent("m2", 1), sent("m2", 2)], [], NOW)
    assert await store.queue_depth() == 0


async def test_stats_per_day(store: Store) -> None:
    day0 = 19_000 * DAY  # a UTC midnight
    tz = 8 * HOUR
    # Local day 0 (UTC+8) starts at day0 - 8h.
    msgs = [
        message("d0a", at=day0 - 8 * HOUR, parts=2),  # local day 0, first ms
        message("d0b", at=day0 + 15 * HOUR, parts=1),  # local day 0, 23:00
        message("d1a", at=day0 + 16 * HOUR, parts=3),  # local day 1, 00:00
        message("d1b", at=day0 + 20 * HOUR, parts=1),
        message("d1c", at=day0 + 21 * HOUR, parts=1, expires_at=day0),
        message("d1d", at=day0 + 22 * HOUR, parts=1),
    ]
    await store.accept(AcceptBatch("acc_a", tuple(msgs), None, None), day0)
    now = day0 + DAY
    await store.claim("i", 10, now, LEASE)
    await store.record_submits(
        [
            sent("d0a", 1),
            sent("d0a", 2),
            sent("d1a", 1),
            sent("d1a", 2),
            sent("d1a", 3),
            SubmitResult("d1b", 1, "failed", "smscA", error_code="ESME_RX", at=now),
            SubmitResult("d1c", 1, "expired", "", at=now),
        ],
        [Release("d0b", now + DAY), Release("d1d", now + DAY)],
        now,
    )
    await store.apply_receipts([rcpt("smscA", "d0a-1"), rcpt("smscA", "d0a-2")], now)
    got = await store.stats("acc_a", day0 - 8 * HOUR, day0 + 2 * DAY, tz)
    assert got == [
        {
            "day_index": 19_000,
            "submitted": 2,
            "delivered": 1,
            "failed": 0,
            "canceled": 0,
            "withdrawn": 0,
            "pending": 1,
            "unknown": 0,
            "segments": 3,
            "units": 3,
        },
        {
            "day_index": 19_001,
            "submitted": 4,
            "delivered": 0,
            "failed": 2,  # a submit refused, and one expired (validity) as before
            "canceled": 0,
            "withdrawn": 0,
            "pending": 2,
            "unknown": 0,
            "segments": 6,
            "units": 6,
        },
    ]
    # The range is on acceptance time, half-open.
    got = await store.stats("acc_a", day0 - 8 * HOUR + 1, day0 + 16 * HOUR, tz)
    assert [(d["day_index"], d["submitted"]) for d in got] == [(19_000, 1)]
    assert await store.stats("acc_b", 0, day0 * 2, tz) == []


async def test_renew_claims_extends_only_this_instances_live_claims(store: Store) -> None:
    """A sender that is slow (throttled for minutes) renews its claims, so its lease never
    expires under it; another instance's claims and released messages are not touched."""
    await store.create_account(account())
    await accept(store, message("m1", at=NOW - 2))
    await accept(store, message("m2", at=NOW - 1))
    claimed = await store.claim("inst-1", 1, NOW, 1000)
    assert [m.id for m in claimed] == ["m1"]
    assert await store.renew_claims("inst-2", ["m1"], NOW + 10 * MIN) == 0
    assert await store.renew_claims("inst-1", ["m1", "m2"], NOW + 10 * MIN) == 1
    # m1 stays inst-1's (renewed); m2 was never claimed and is still free for anyone.
    assert [m.id for m in await store.claim("inst-2", 10, NOW + 5 * SEC, 1000)] == ["m2"]
    assert await store.renew_claims("inst-1", [], NOW) == 0


async def test_unknown_part_stops_the_rest_and_releases_the_message(store: Store) -> None:
    """No answer to part 2 of 3 (and the SMSC says do not resend): part 3 is not sent either, the
    message leaves the queue and ends 'unknown' once part 1's receipt is in."""
    await store.create_account(account())
    await accept(store, message("m", parts=3))
    [_work] = await store.claim("inst", 10, NOW, MIN)
    await store.record_submits(
        [sent("m", 1), SubmitResult("m", 2, "unknown", "smscA", error_code="SUBMIT_TIMEOUT")],
        [],
        NOW,
    )
    assert await store.queue_depth() == 0
    assert await store.claim("inst", 10, NOW + MIN, MIN) == []
    await store.apply_receipts([rcpt("smscA", "m-1", "delivered")], NOW)
    rec = await store.get_message("acc_a", "m")
    assert rec is not None and rec.state == "unknown"
    assert [s.state for s in rec.segment_rows] == ["delivered", "timeout", "timeout"]
