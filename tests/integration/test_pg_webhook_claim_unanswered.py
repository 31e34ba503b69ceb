"""PostgreSQL webhook bookkeeping that the server did and the sender never learned of, or that the
server lost (session 46).

Found through the PostgreSQL chaos soak (tests/e2e/test_pg_chaos_soak.py, seed 1622247583): after
the server's crash one status report stayed `pending` while the receiver had all of them.
- A webhook claim whose COMMIT the server carried out as the connection broke raised in the
  sender, which held nothing, while the server had the reports leased by this live instance:
  nobody posted them until the lease (3 x webhooks.timeout_s + 10 s) ran out. Now they are due
  again before the sender's next claim, and at a clean stop (bridge/store/postgres_webhooks.py),
  as the dispatcher's message claims are since session 43 (test_pg_claim_unanswered.py).
- A `webhook_done` committed without the flush and lost in the crash left its delivered reports
  leased until their lease ran out, then posted them again. The likelier of the two in the soak:
  under its mix (durable accepts at ~80/s, marks at ~20/s, a flush every 100 ms) a crash lost an
  acknowledged mark in 4 of 85 `immediate` stops and 5 of 40 killed backends, where session 43
  saw an unanswered (message) claim in 0 of 65 and 2 of 465; and the soak stops ~50 s in, about
  when the lease of a report marked just before a crash at ~32 s runs out. A mark that failed on
  the store away, its retries past the lease, did the same. Now the confirmer holds the sender's
  marks as it holds submit results, and writes again what may not have landed (fenced by the
  lease).

The faults are real: a TCP proxy forwards a COMMIT and drops its answer (or drops the COMMIT),
and the crash is the server's own (SIGQUIT to the postmaster, `pg_ctl stop -m immediate`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest

from bridge.accounts import AccountService
from bridge.config import WebhooksConfig
from bridge.crypto import Sealer
from bridge.pipeline.webhooks import WebhookSender
from bridge.store.base import is_unavailable
from bridge.store.postgres import PostgresStore
from tests import pg_reuse
from tests.e2e.harness import WebhookReceiver, wait_until
from tests.integration import test_session16_review3 as review3
from tests.integration.test_pg_claim_unanswered import CommitAnswerLost
from tests.integration.test_store import NOW, account
from tests.pg_cluster import Cluster

pg_dsn = pg_reuse.migrated_pg_dsn  # a store on the worker's migrated database (tests/pg_reuse.py)

pytestmark = pytest.mark.postgres

# The webhook claim's own statement, and the delivered mark's.
CLAIM_SQL = b"UPDATE webhook_outbox o SET next_attempt_at = $3, leased_by = $5"
DONE_SQL = b"UPDATE webhook_outbox SET state = 'delivered'"
WLEASE = 16_000  # the daemon's lease at webhooks.timeout_s 2: 3 x 2 s + 10 s
HOOK = "http://127.0.0.1:9/hook"  # never posted to here

# Review3's module cluster (a server of this module's own, crashed here), its dsn and pg_start.
cluster = review3.cluster
dsn = review3.dsn


@pytest.fixture
async def proxy(pg_dsn: str) -> AsyncIterator[CommitAnswerLost]:
    u = urlsplit(pg_dsn)
    assert u.hostname and u.port  # over TCP
    p = CommitAnswerLost(u.hostname, u.port, CLAIM_SQL)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def opened(dsn_: str, now_ms: int = NOW) -> PostgresStore:
    s = PostgresStore(dsn_, min_size=1, max_size=4, local_clock=lambda: now_ms / 1000)
    await s.open()
    return s


@pytest.fixture
async def store(pg_dsn: str, proxy: CommitAnswerLost) -> AsyncIterator[PostgresStore]:
    s = await opened(proxy.dsn(pg_dsn))
    try:
        await s.create_account(account(status_url=HOOK))
        yield s
    finally:
        await s.close()


async def outbox(dsn_: str) -> list[tuple[str, str, str | None, int]]:
    """(webhook_id, state, leased_by, next_attempt_at) of every report, read past the proxy."""
    conn = await asyncpg.connect(dsn_)
    try:
        rows = await conn.fetch(
            "SELECT webhook_id, state, leased_by, next_attempt_at FROM webhook_outbox "
            "ORDER BY webhook_id"
        )
    finally:
        await conn.close()
    return [tuple(r) for r in rows]  # type: ignore[misc]


IDS = ["ev_0", "ev_1", "ev_2"]


async def events(store: PostgresStore, account_id: str = "acc_a", at: int = NOW) -> None:
    for wid in IDS:
        await store.enqueue_event(account_id, "event", '{"type": "test"}', wid, at)


async def unanswered_claim(store: PostgresStore, proxy: CommitAnswerLost, pg_dsn: str) -> None:
    proxy.armed = True
    with pytest.raises(Exception) as failed:
        await store.claim_webhooks(NOW, 10, WLEASE, holder="inst-a")
    assert is_unavailable(failed.value), failed.value  # what the sender retries in a second
    # The server did lease them, to this instance, for the whole lease.
    assert proxy.cuts == 1
    assert await outbox(pg_dsn) == [(w, "pending", "inst-a", NOW + WLEASE) for w in IDS]


async def test_a_webhook_claim_whose_commit_answer_was_lost_gives_its_reports_back(
    store: PostgresStore, proxy: CommitAnswerLost, pg_dsn: str
) -> None:
    await events(store)
    await unanswered_claim(store, proxy, pg_dsn)
    # The sender's next claim, a second later, takes them (they waited 16 s).
    jobs = await store.claim_webhooks(NOW + 1000, 10, WLEASE, holder="inst-a")
    assert sorted(j.webhook_id for j in jobs) == IDS
    assert {j.lease for j in jobs} == {NOW + 1000 + WLEASE}
    assert len(store._unsure_webhooks) == 0


async def test_a_clean_close_gives_them_back(proxy: CommitAnswerLost, pg_dsn: str) -> None:
    """A stop (SIGTERM) after such a claim: due at once, not leased by a stopped instance until
    another one counts it gone (~20 s), its restart, or the lease."""
    s = await opened(proxy.dsn(pg_dsn), NOW + 500)
    try:
        await s.create_account(account(status_url=HOOK))
        await events(s)
        await unanswered_claim(s, proxy, pg_dsn)
    finally:
        await s.close()
    assert await outbox(pg_dsn) == [(w, "pending", None, NOW + 500) for w in IDS]


async def test_a_claim_cancelled_by_a_stop_gives_its_reports_back_at_close(
    proxy: CommitAnswerLost, pg_dsn: str
) -> None:
    """A stop cancels the sender's loop, perhaps inside a claim: its COMMIT is seen through
    (postgres_tx.end_tx) and lands, the caller gets the cancel and never the reports. They were
    left leased by the stopped instance until another one counted it gone or the lease ran out."""
    s = await opened(proxy.dsn(pg_dsn), NOW + 500)
    try:
        await s.create_account(account(status_url=HOOK))
        await events(s)
        proxy.answer_delay_s, proxy.armed = 0.5, True
        task = asyncio.create_task(s.claim_webhooks(NOW, 10, WLEASE, holder="inst-a"))
        await wait_until(lambda: proxy.commits == 1, 5, 0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await outbox(pg_dsn) == [(w, "pending", "inst-a", NOW + WLEASE) for w in IDS]
    finally:
        await s.close()
    assert await outbox(pg_dsn) == [(w, "pending", None, NOW + 500) for w in IDS]


async def test_the_give_back_leaves_a_later_claim_alone(pg_dsn: str) -> None:
    """A claim that raised without committing leased nothing; a later claim (another
    instance's, or this one's with its own lease) is not undone by the give-back."""
    s = await opened(pg_dsn)
    other = await opened(pg_dsn)
    try:
        await s.create_account(account(status_url=HOOK))
        await events(s)
        # What the store holds after a claim whose outcome it could not learn, which did not land.
        s._unsure_webhooks.add([1, 2, 3], "inst-a", NOW + WLEASE)
        taken = await other.claim_webhooks(NOW + 5, 2, WLEASE, holder="inst-b")
        mine = await s.claim_webhooks(NOW + 10, 10, WLEASE, holder="inst-a")
        assert [j.webhook_id for j in taken] == IDS[:2]
        assert [j.webhook_id for j in mine] == IDS[2:]
        # Its own later claim, same holder: the lease tells it apart.
        s._unsure_webhooks.add([1, 2, 3], "inst-a", NOW + WLEASE)
        assert await s.claim_webhooks(NOW + 20, 10, WLEASE, holder="inst-a") == []
        assert await outbox(pg_dsn) == [
            ("ev_0", "pending", "inst-b", NOW + 5 + WLEASE),
            ("ev_1", "pending", "inst-b", NOW + 5 + WLEASE),
            ("ev_2", "pending", "inst-a", NOW + 10 + WLEASE),
        ]
        assert len(s._unsure_webhooks) == 0
    finally:
        await other.close()
        await s.close()


async def test_the_sender_posts_them_within_seconds(proxy: CommitAnswerLost, pg_dsn: str) -> None:
    """The daemon's view: the sender's first claim loses its answer; every report still reaches
    the receiver once, in about a second (it waited out the 16 s lease)."""
    receiver = WebhookReceiver()
    await receiver.start()
    s = PostgresStore(proxy.dsn(pg_dsn), min_size=1, max_size=4)
    await s.open()
    try:
        accounts = AccountService(s, Sealer(os.urandom(32)))
        now = int(time.time() * 1000)
        creds = await accounts.create("hooks", {"status_callback_url": receiver.url}, now)
        receiver.secret = creds.webhook_secret
        await events(s, creds.account.id, now)
        sender = WebhookSender(
            s, accounts, WebhooksConfig(timeout_s=2), poll_s=0.02, instance="inst-a"
        )
        proxy.armed = True
        began = time.monotonic()
        task = asyncio.create_task(sender.run())
        try:
            await wait_until(lambda: proxy.cuts == 1, 5, 0.01)
            got = lambda: sorted(r["webhook_id"] for r in receiver.reports)  # noqa: E731
            await wait_until(lambda: got() == IDS, 8, 0.05)
            took = time.monotonic() - began
            assert took < 5, took
            await wait_until(lambda: sender.leased == set(), 5, 0.01)
        finally:
            await sender.stop()
            await task
        assert [r[1] for r in await outbox(pg_dsn)] == ["delivered"] * 3
        assert got() == IDS  # once each
    finally:
        await s.close()
        await receiver.stop()


async def test_a_delivered_mark_that_did_not_land_is_written_once_the_store_answers(
    store: PostgresStore, proxy: CommitAnswerLost, pg_dsn: str
) -> None:
    """`webhook_done` whose COMMIT never reached the server (the link cut). The sender retries
    it only while the lease holds (another sender may lease the reports after); an outage
    longer than that had the reports posted again. The mark, fenced by the lease (not by the
    time), is written once the store answers, and lands if no sender leased them since."""
    await events(store)
    jobs = await store.claim_webhooks(NOW, 10, WLEASE, holder="inst-a")
    proxy.trigger, proxy.forward_commit, proxy.armed = DONE_SQL, False, True
    with pytest.raises(Exception) as failed:
        await store.webhook_done([j.id for j in jobs], NOW + 100, NOW + WLEASE)
    assert is_unavailable(failed.value), failed.value
    assert proxy.cuts == 1
    # Written again by the confirmer's loop (it runs while anything is held; no claim needed).
    await wait_until(lambda: store._confirm.held == 0, 5, 0.02)
    assert [r[1] for r in await outbox(pg_dsn)] == ["delivered"] * 3


async def test_a_delivered_mark_lost_in_a_crash_is_written_again(
    cluster: Cluster, dsn: str
) -> None:
    """The server crashes (SIGQUIT: `pg_ctl stop -m immediate`) just after it acknowledged a
    `webhook_done` committed without the flush. The WAL writer is slowed (10 s) so that the
    commit is surely not on disk; the claim before it is flushed on purpose."""
    admin = await asyncpg.connect(cluster.admin_dsn)
    try:
        await admin.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
        await admin.execute("SELECT pg_reload_conf()")
    finally:
        await admin.close()
    s = await opened(dsn)
    try:
        await s.create_account(account(status_url=HOOK))
        await events(s)
        jobs = await s.claim_webhooks(NOW, 10, WLEASE, holder="inst-a")
        flush = await asyncpg.connect(dsn)
        try:  # the claim on disk: a durable commit flushes the WAL before it
            await flush.execute(
                "BEGIN; SET LOCAL synchronous_commit TO on; "
                "SELECT pg_logical_emit_message(true, 'test', 'flush'); COMMIT"
            )
        finally:
            await flush.close()
        s._confirm._interval = 60.0  # its loop waits: the loss is seen before the rewrite
        await s.webhook_done([j.id for j in jobs], NOW + 100, NOW + WLEASE)
        review3.pg_signal(cluster, signal.SIGQUIT)
        await wait_until(lambda: not review3._running(cluster), 15, 0.01)
        await review3.pg_start(cluster)
        assert await outbox(dsn) == [(w, "pending", "inst-a", NOW + WLEASE) for w in IDS]
        # What the next message claim does first (the confirmer's loop does it within 0.2 s
        # of the server's return): the batch whose watch the crash ended is written again.
        await s._confirm.settle()
        assert [r[1] for r in await outbox(dsn)] == ["delivered"] * 3
    finally:
        await s.close()
        admin = await asyncpg.connect(cluster.admin_dsn)
        try:
            await admin.execute("ALTER SYSTEM RESET wal_writer_delay")
            await admin.execute("SELECT pg_reload_conf()")
        finally:
            await admin.close()
