"""PostgreSQL webhook claims that the server committed and the sender never learned of
(session 46).

Found through the PostgreSQL chaos soak (tests/e2e/test_pg_chaos_soak.py, seed 1622247583): after
the server's crash one status report stayed `pending` while the receiver had all of them.
- A webhook claim whose COMMIT the server carried out as the connection broke raised in the
  sender, which held nothing, while the server had the reports leased by this live instance:
  nobody posted them until the lease (3 x webhooks.timeout_s + 10 s) ran out. Now they are due
  again before the sender's next claim, and at a clean stop (bridge/store/postgres_webhooks.py),
  as the dispatcher's message claims are since session 43 (test_pg_claim_unanswered.py).

The fault is real: a TCP proxy forwards the claim's COMMIT and drops its answer.
"""

from __future__ import annotations

import asyncio
import os
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
from tests.e2e.harness import WebhookReceiver, wait_until
from tests.integration.test_pg_claim_unanswered import CommitAnswerLost
from tests.integration.test_store import NOW, account

pytestmark = pytest.mark.postgres

# The webhook claim's own statement.
CLAIM_SQL = b"UPDATE webhook_outbox o SET next_attempt_at = $3, leased_by = $5"
WLEASE = 16_000  # the daemon's lease at webhooks.timeout_s 2: 3 x 2 s + 10 s
HOOK = "http://127.0.0.1:9/hook"  # never posted to here


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
