"""Several instances on one PostgreSQL database: two Store objects (two pools, as two daemon
processes would have) racing on the same rows.

Each test is a guarantee the scale-out engine makes that a single SQLite process gets for free:
claims never overlap, dead instances' claims come back, one idempotency key accepts one batch, a
nonce is accepted once, a webhook is handed out once, a receipt racing its submit result is never
stranded, a rate is shared, migrations run once. The instances open on the worker's migrated
database (`pg_migrated_dsn`, tests/pg_reuse.py says why), but for the migrating ones: on an
empty one (`pg_dsn`).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge.store import migrate  # noqa: E402
from bridge.store.models import (  # noqa: E402
    AcceptBatch,
    Account,
    AppKey,
    IdempotencyRecord,
    MoPart,
    NewMessage,
    NewSegment,
    ReceiptIn,
    SubmitResult,
)
from bridge.store.postgres import PostgresStore  # noqa: E402
from bridge.store.postgres_pipeline import DEAD_AFTER_MS, NS_INSTANCE  # noqa: E402

NOW = 1_700_000_000_000
MIN = 60_000
LEASE = 5 * MIN
DAY = 86_400_000


def message(mid: str, account_id: str = "acc_a", *, parts: int = 1, at: int = NOW) -> NewMessage:
    return NewMessage(
        id=mid,
        account_id=account_id,
        batch_id="b_" + mid,
        recipient="+8613800138000",
        encoding="gsm7",
        data_coding=0,
        billable_units=parts,
        segments=tuple(
            NewSegment(i, parts, 0x40 if parts > 1 else 0, f"{mid}/{i}".encode(), b"")
            for i in range(1, parts + 1)
        ),
        accepted_at=at,
    )


def account(aid: str = "acc_a", *, tps: int = 0, status_url: str | None = None) -> Account:
    return Account(
        id=aid,
        name=f"name-{aid}",
        tps=tps,
        status_callback_url=status_url,
        webhook_secret_enc=b"s",
        created_at=NOW,
        updated_at=NOW,
    )


@pytest.fixture
async def pair(pg_migrated_dsn: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    a = PostgresStore(pg_migrated_dsn, min_size=1, max_size=8)
    b = PostgresStore(pg_migrated_dsn, min_size=1, max_size=8)
    await asyncio.gather(a.open(), b.open())
    try:
        yield a, b
    finally:
        await a.close()
        await b.close()


async def test_instances_starting_together_migrate_once(pg_dsn: str) -> None:
    stores = [PostgresStore(pg_dsn, min_size=1, max_size=2) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert {await s.schema_version() for s in stores} == {migrate.latest("postgres")}
        rows = await stores[0].pool.fetch("SELECT version FROM schema_version ORDER BY version")
        assert [r[0] for r in rows] == list(range(1, migrate.latest("postgres") + 1))
    finally:
        for s in stores:
            await s.close()


async def test_concurrent_claims_never_overlap(pair: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = pair
    n = 1500
    for acc in ("acc_a", "acc_b", "acc_c"):
        msgs = tuple(message(f"{acc}-{i:04d}", acc, at=NOW + i) for i in range(n // 3))
        await a.accept(AcceptBatch(acc, msgs, None, None), NOW)

    # Six claimers, three per instance. Each waits for the others' first claim before its
    # second: the whole queue drains in ~100 ms, and a claimer whose first claim waited that
    # long (a pool connection opened under CI load) found nothing left, so "every claimer got
    # work" failed once although nothing overlapped. Those first six claims start together,
    # each holding its rows while the others skip them.
    claimers = [(s, f"inst-{i}") for i in range(3) for s in (a, b)]
    first_round = asyncio.Barrier(len(claimers))
    spans: list[tuple[float, float]] = []
    firsts: list[int] = []

    async def drain(store: PostgresStore, name: str) -> list[str]:
        got: list[str] = []
        while True:
            began = time.monotonic()
            work = await store.claim(name, 37, NOW + DAY, LEASE)
            if not got:
                spans.append((began, time.monotonic()))
                firsts.append(len(work))
                await first_round.wait()
            if not work:
                return got
            got += [w.id for w in work]

    claimed = await asyncio.gather(*(drain(s, name) for s, name in claimers))
    everything = Counter(mid for got in claimed for mid in got)
    assert len(everything) == n
    assert set(everything.values()) == {1}, "a message was claimed twice"
    # Claims running at the same time skip each other's rows, they do not come back short.
    assert firsts == [37] * len(claimers)
    assert max(s for s, _ in spans) < min(e for _, e in spans), "the first claims overlapped"
    assert await a.queue_depth() == n  # claimed, not yet sent


async def test_expired_lease_is_reclaimed_by_another_instance(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = pair
    await a.accept(AcceptBatch("acc_a", (message("m1"), message("m2")), None, None), NOW)
    assert len(await a.claim("inst-a", 10, NOW, LEASE)) == 2
    # inst-a stays alive (fresh heartbeat) but stops renewing: only the lease frees its work.
    await a.heartbeat("inst-a", "all", NOW + LEASE - 1, "{}")
    assert await b.reclaim(NOW + LEASE - 1, frozenset()) == {"requeued": 0, "marked_unknown": 0}
    assert await b.claim("inst-b", 10, NOW + LEASE - 1, LEASE) == []
    await a.heartbeat("inst-a", "all", NOW + LEASE, "{}")
    assert await b.reclaim(NOW + LEASE, frozenset()) == {"requeued": 2, "marked_unknown": 0}
    work = await b.claim("inst-b", 10, NOW + LEASE, LEASE)
    assert sorted(w.id for w in work) == ["m1", "m2"]
    assert all(w.attempts == 2 for w in work)


async def test_dead_instance_claims_come_back_before_the_lease(
    pair: tuple[PostgresStore, PostgresStore], pg_migrated_dsn: str
) -> None:
    a, b = pair
    await a.accept(AcceptBatch("acc_a", (message("m1", parts=2),), None, None), NOW)
    await a.accept(AcceptBatch("acc_a", (message("m2"),), None, None), NOW)
    await a.claim("inst-a", 1, NOW, LEASE)  # m1
    await b.claim("inst-b", 1, NOW, LEASE)  # m2
    await a.record_submits([SubmitResult("m1", 1, "sent", "smscU", "x1", "X1", at=NOW)], [], NOW)
    await a.heartbeat("inst-a", "all", NOW, "{}")
    await b.heartbeat("inst-b", "all", NOW, "{}")
    # Both alive by heartbeat: nothing moves.
    assert (await b.reclaim(NOW + DEAD_AFTER_MS - 1, frozenset()))["requeued"] == 0
    # inst-b holds its instance lock (a live process whose heartbeat is late): kept.
    # inst-a holds none and is silent: its claim comes back, its unsent part marked unknown
    # because its SMSC is configured so.
    holder = await asyncpg.connect(pg_migrated_dsn)
    try:
        await holder.execute("SELECT pg_advisory_lock($1, hashtext($2))", NS_INSTANCE, "inst-b")
        out = await b.reclaim(NOW + DEAD_AFTER_MS + 1, frozenset({"smscU"}))
        assert out == {"requeued": 0, "marked_unknown": 1}
        rec = await b.get_message("acc_a", "m1")
        assert rec is not None
        assert [(s.state, s.error_code) for s in rec.segment_rows] == [
            ("sent", None),
            ("timeout", "IN_FLIGHT_AT_RESTART"),
        ]
    finally:
        await holder.close()  # inst-b "dies": its lock goes with its connection
    assert await b.reclaim(NOW + DEAD_AFTER_MS + 2, frozenset({"smscU"})) == {
        "requeued": 1,
        "marked_unknown": 0,
    }
    assert [w.id for w in await a.claim("inst-c", 10, NOW + DEAD_AFTER_MS + 2, LEASE)] == ["m2"]


async def test_webhook_leases_of_a_live_instance_stay_theirs(
    pair: tuple[PostgresStore, PostgresStore], pg_migrated_dsn: str
) -> None:
    """An instance's report leases are given back only once it is gone by the claims' test:
    a late heartbeat alone (its instance lock held) keeps them."""
    a, b = pair
    await a.create_account(account(status_url="https://cb/st"))
    await a.enqueue_event("acc_a", "event", "{}", "ev_1", NOW)
    (job,) = await a.claim_webhooks(NOW, 10, 10 * DEAD_AFTER_MS, holder="inst-a")
    await a.heartbeat("inst-a", "all", NOW, "{}")
    assert await b.free_webhook_leases(NOW + DEAD_AFTER_MS - 1, at_start=False) == 0
    holder = await asyncpg.connect(pg_migrated_dsn)
    try:
        await holder.execute("SELECT pg_advisory_lock($1, hashtext($2))", NS_INSTANCE, "inst-a")
        assert await b.free_webhook_leases(NOW + DEAD_AFTER_MS + 1, at_start=False) == 0
    finally:
        await holder.close()  # inst-a "dies": its lock goes with its connection
    assert await b.free_webhook_leases(NOW + DEAD_AFTER_MS + 2, at_start=False) == 1
    (again,) = await b.claim_webhooks(NOW + DEAD_AFTER_MS + 2, 10, LEASE, holder="inst-b")
    assert (again.id, again.webhook_id) == (job.id, "ev_1")


async def test_recover_takes_back_only_own_and_expired_claims(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = pair
    await a.accept(AcceptBatch("acc_a", (message("m1"), message("m2")), None, None), NOW)
    await a.claim("inst-a", 1, NOW, LEASE)
    await b.claim("inst-b", 1, NOW, 2 * LEASE)
    # A restart of inst-a: its own claim only; inst-b is another live instance.
    assert await a.recover("inst-a", NOW + 1, frozenset()) == {"requeued": 1, "marked_unknown": 0}
    assert [w.id for w in await a.claim("inst-a", 10, NOW + 1, LEASE)] == ["m1"]
    # inst-b's lease ran out: a restarting instance takes that back too.
    out = await a.recover("inst-x", NOW + 2 * LEASE, frozenset())
    assert out == {"requeued": 2, "marked_unknown": 0}


async def test_one_idempotency_key_accepts_one_batch_across_instances(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = pair

    def req(i: int) -> AcceptBatch:
        return AcceptBatch(
            "acc_a",
            (message(f"r{i}", parts=2),),
            "same-key",
            IdempotencyRecord("hash", 202, f"resp-{i}".encode()),
            NOW + DAY,
        )

    outs = await asyncio.gather(*((a if i % 2 else b).accept(req(i), NOW) for i in range(20)))
    winners = [i for i, o in enumerate(outs) if o.accepted]
    assert len(winners) == 1
    first = IdempotencyRecord("hash", 202, f"resp-{winners[0]}".encode())
    assert all(o.existing == first for o in outs if not o.accepted)
    assert [m.id for m in await b.list_messages("acc_a")] == [f"r{winners[0]}"]
    assert await a.queue_depth() == 2


async def test_a_raced_nonce_is_accepted_once(pair: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = pair
    await a.create_account(account())
    await a.add_key(AppKey("K1", "acc_a", b"s", "active", NOW), 2)
    outs = await asyncio.gather(
        *((a if i % 2 else b).authorize_request("K1", "n-1", NOW + MIN, NOW) for i in range(10))
    )
    assert sorted(o for o, _acc in outs) == ["nonce_reused"] * 9 + ["ok"]
    raw = await asyncio.gather(
        *((a if i % 2 else b).use_nonce("K1", "n-2", NOW + MIN, NOW) for i in range(10))
    )
    assert sorted(raw) == [False] * 9 + [True]

    def send(i: int) -> AcceptBatch:  # the send path: nonce checked inside the accept
        return AcceptBatch(
            "acc_a",
            (message(f"s{i}"),),
            f"k{i}",
            IdempotencyRecord("h", 202, b"r"),
            NOW + DAY,
            key_id="K1",
            nonce="n-3",
            nonce_expires_at=NOW + MIN,
        )

    outs2 = await asyncio.gather(*((a if i % 2 else b).accept(send(i), NOW) for i in range(10)))
    assert sum(o.accepted for o in outs2) == 1
    assert sorted(o.auth_refusal or "" for o in outs2) == [""] + ["nonce_reused"] * 9
    assert len(await a.list_messages("acc_a")) == 1


async def test_a_webhook_is_handed_to_one_instance(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = pair
    await a.create_account(account(status_url="https://cb.example/st"))
    for i in range(300):
        await a.enqueue_event("acc_a", "event", "{}", f"ev_{i:03d}", NOW)

    async def drain(store: PostgresStore) -> list[str]:
        got: list[str] = []
        while jobs := await store.claim_webhooks(NOW, 17, LEASE):
            got += [j.webhook_id for j in jobs]
        return got

    results = await asyncio.gather(*(drain(s) for s in (a, b, a, b)))
    seen = Counter(w for r in results for w in r)
    assert len(seen) == 300 and set(seen.values()) == {1}
    assert sum(1 for r in results if r) >= 2


async def test_receipt_racing_its_submit_result_is_never_stranded(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    """Instance A records submit results while instance B applies the receipts for the very same
    ids at the same moment: each receipt matches, or waits and is applied with its result."""
    a, b = pair
    await a.create_account(account(status_url="https://cb.example/st"))
    n = 400
    msgs = tuple(message(f"m{i:04d}", parts=2, at=NOW + i) for i in range(n))
    await a.accept(AcceptBatch("acc_a", msgs, None, None), NOW)
    assert len(await a.claim("inst-a", n, NOW + DAY, LEASE)) == n

    def result(i: int, seq: int) -> SubmitResult:
        ident = f"id{i}-{seq}"
        return SubmitResult(f"m{i:04d}", seq, "sent", "smscA", ident, ident, at=NOW)

    def receipt(i: int, seq: int) -> ReceiptIn:
        return ReceiptIn("smscA", f"id{i}-{seq}", "delivered", "DELIVRD", "000", None, NOW + 1)

    async def submits() -> None:
        for start in range(0, n, 20):
            batch = [result(i, s) for i in range(start, start + 20) for s in (1, 2)]
            await a.record_submits(batch, [], NOW)

    async def receipts(seq: int) -> None:
        for start in range(0, n, 25):
            await b.apply_receipts([receipt(i, seq) for i in range(start, start + 25)], NOW + 1)

    await asyncio.gather(submits(), receipts(1), receipts(2))
    assert await a.pending_receipt_count() == 0
    states = Counter(m.state for m in await a.list_messages("acc_a", limit=1000))
    assert states == {"delivered": n}
    rec = await a.get_message("acc_a", "m0007")
    assert rec is not None and (rec.segments_delivered, rec.segments_sent) == (2, 2)
    jobs = await b.claim_webhooks(NOW + DAY, 1000, LEASE)
    assert len(jobs) == n and len({j.webhook_id for j in jobs}) == n


async def test_parts_receipts_on_two_instances_roll_up_once(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = pair
    await a.create_account(account(status_url="https://cb.example/st"))
    n = 200
    msgs = tuple(message(f"m{i:04d}", parts=3, at=NOW + i) for i in range(n))
    await a.accept(AcceptBatch("acc_a", msgs, None, None), NOW)
    assert len(await a.claim("inst-a", n, NOW + DAY, LEASE)) == n
    await a.record_submits(
        [
            SubmitResult(f"m{i:04d}", s, "sent", "smscA", f"{i}-{s}", f"{i}-{s}", at=NOW)
            for i in range(n)
            for s in (1, 2, 3)
        ],
        [],
        NOW,
    )

    reports = 0

    async def apply(store: PostgresStore, seqs: tuple[int, ...]) -> None:
        nonlocal reports
        for start in range(0, n, 10):
            out = await store.apply_receipts(
                [
                    ReceiptIn("smscA", f"{i}-{s}", "delivered", None, None, None, NOW + 5)
                    for i in range(start, start + 10)
                    for s in seqs
                ],
                NOW + 5,
            )
            reports += out.reports

    # Part 1 on A, part 2 on B, part 3 (and a duplicate of part 2) on a second B worker.
    await asyncio.gather(apply(a, (1,)), apply(b, (2,)), apply(b, (3, 2)))
    assert reports == n  # each message's report queued once, and counted by the batch that did
    recs = await a.list_messages("acc_a", limit=1000)
    assert Counter((m.state, m.segments_delivered) for m in recs) == {("delivered", 3): n}
    assert all(m.done_at == NOW + 5 for m in recs)
    jobs = await a.claim_webhooks(NOW + DAY, 1000, LEASE)
    assert sorted(j.payload for j in jobs) == sorted(m.id for m in recs)


async def test_account_rate_is_shared_by_instances(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = pair
    await a.create_account(account())

    def req(i: int) -> AcceptBatch:
        return AcceptBatch("acc_a", (message(f"t{i}"),), None, None, tps=10)

    outs = await asyncio.gather(*((a if i % 2 else b).accept(req(i), NOW) for i in range(40)))
    assert sum(o.accepted for o in outs) == 10  # a full bucket of one second at 10/s
    assert all(o.retry_after > 0 for o in outs if not o.accepted)
    later = await b.accept(req(99), NOW + 200)  # 0.2 s later: two tokens back
    assert later.accepted


async def test_mo_parts_arriving_on_two_instances_complete_once(
    pair: tuple[PostgresStore, PostgresStore],
) -> None:
    a, b = pair

    def part(ref: int, seq: int) -> MoPart:
        return MoPart("smscA", "+861", "1069", ref, 2, seq, 0, b"p%d" % seq, NOW)

    outs = await asyncio.gather(
        *(s.add_mo_part(part(ref, seq)) for ref in range(50) for s, seq in ((a, 1), (b, 2)))
    )
    done = [o for o in outs if o is not None]
    assert len(done) == 50
    assert all([p.seq for p in o] == [1, 2] for o in done)
    for o in done:  # the inbound handler drops the parts once the MO is stored
        await a.drop_mo_parts("smscA", "+861", "1069", o[0].ref)
    assert await a.stale_mo_groups(NOW + 1, 100) == []


async def test_leases_and_heartbeats_are_kept_in_the_databases_clock(pg_migrated_dsn: str) -> None:
    """Instances on hosts whose clocks disagree: one 10 minutes ahead neither finds the other's
    live claims expired (and sends them again) nor its heartbeat stale; the leases still run out
    when the database's clock says so."""
    ahead_ms = 600_000
    a = PostgresStore(pg_migrated_dsn, min_size=1, max_size=4)
    b = PostgresStore(
        pg_migrated_dsn, min_size=1, max_size=4, local_clock=lambda: time.time() + 600
    )
    await asyncio.gather(a.open(), b.open())
    try:
        assert a.clock_offset_ms == 0  # same host as the database: below the 250 ms step
        assert abs(b.clock_offset_ms + ahead_ms) < 1_000
        real = int(time.time() * 1000)
        b_now = real + ahead_ms  # what b's clock says, and what its callers pass
        await a.accept(AcceptBatch("acc_a", (message("m1"), message("m2")), None, None), real)
        assert len(await a.claim("inst-a", 10, real, LEASE)) == 2
        await a.heartbeat("inst-a", "all", real, "{}")
        await b.heartbeat("inst-b", "all", b_now, "{}")
        # By b's own clock inst-a's lease ran out 5 minutes ago and its heartbeat is 10 minutes
        # old; by the database's, neither.
        assert await b.reclaim(b_now, frozenset()) == {"requeued": 0, "marked_unknown": 0}
        seen_by_a = {i: at for i, _r, at, _s in await a.instances(real - 5_000)}
        seen_by_b = {i: at for i, _r, at, _s in await b.instances(b_now - 5_000)}
        assert set(seen_by_a) == set(seen_by_b) == {"inst-a", "inst-b"}
        assert abs(seen_by_a["inst-b"] - real) < 1_000  # in each reader's own clock
        assert abs(seen_by_b["inst-a"] - b_now) < 1_000
        # b's claims and renewals are in the database's clock too: a does not take them early.
        await a.accept(AcceptBatch("acc_a", (message("m3"),), None, None), real)
        assert [w.id for w in await b.claim("inst-b", 10, b_now, LEASE)] == ["m3"]
        assert await b.renew_claims("inst-b", ["m3"], b_now + LEASE) == 1
        for at in (LEASE - 2_000, LEASE + 2_000):  # both instances alive throughout
            await a.heartbeat("inst-a", "all", real + at, "{}")
            await b.heartbeat("inst-b", "all", b_now + at, "{}")
            # Only the leases free the claims, when the database's clock passes them: all three
            # at once (b's lease, in its own clock, would have run 10 minutes longer).
            expected = 0 if at < LEASE else 3
            assert (await a.reclaim(real + at, frozenset()))["requeued"] == expected
    finally:
        await a.close()
        await b.close()
