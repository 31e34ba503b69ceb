"""A PostgreSQL claim whose COMMIT reached the server but whose answer never came back.

Found in the PostgreSQL chaos soak (tests/e2e/test_pg_chaos_soak.py, one run in ~9): after the
server's crash, accepted messages were still queued when the 90 s settle ran out. A claim's COMMIT
that the server carried out just as the connection broke (the crash, a cut link) raised in the
dispatcher, which retried in a second and never saw those messages; the server had them claimed by
the instance, which was alive and heartbeating, so neither the sweeper nor another instance took
them back before the lease (5 minutes) ran out. Now the store remembers what such a claim took and
gives back what the server did claim (never sent) before its next claim or reclaim.

The fault here is real and exact: a TCP proxy between the store and the server forwards the claim
transaction's COMMIT, lets the server carry it out and answer, drops the answer and closes the
client's side; nothing else is cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from bridge.config import SmscConfig
from bridge.pipeline.dispatcher import Dispatcher
from bridge.smpp.codec import ShortMessage
from bridge.smpp.router import Router
from bridge.store.base import is_unavailable
from bridge.store.postgres import PostgresStore
from tests import pg_reuse
from tests.connectors import BeforeFirst, Contexts, StandIn
from tests.e2e.harness import free_port, wait_until
from tests.integration.test_store import LEASE, NOW, accept, account, message

pg_dsn = pg_reuse.migrated_pg_dsn  # a store on the worker's migrated database (tests/pg_reuse.py)

pytestmark = pytest.mark.postgres

# The claim's own statement (asyncpg sends its text with the first Parse on a connection).
CLAIM_SQL = b"UPDATE messages SET q_state = 'claimed'"
# run_tx's COMMIT: a simple Query message of its own.
COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"


class CommitAnswerLost:
    """TCP to PostgreSQL. Armed, the first connection that sends the claim's statement (or
    `trigger`'s) has its next COMMIT forwarded, the server's answer to it read and dropped, and
    then the client's side closed: the transaction committed, the client told only that the
    connection broke."""

    def __init__(self, host: str, port: int, trigger: bytes = CLAIM_SQL) -> None:
        self.host, self.port = host, port
        self.trigger = trigger
        # False: the COMMIT itself is dropped and both sides closed (the server rolls back).
        self.forward_commit = True
        # Above 0: the COMMIT's answer is not dropped but held this long (a slow link).
        self.answer_delay_s = 0.0
        self.commits = 0  # armed COMMITs that reached the proxy
        self.listen_port = free_port()
        self.armed = False
        self.cuts = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.listen_port)

    def dsn(self, dsn: str) -> str:
        u = urlsplit(dsn)
        netloc = u.netloc.rsplit("@", 1)
        host = f"127.0.0.1:{self.listen_port}"
        return urlunsplit(u._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) > 1 else host))

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection(self.host, self.port)
        self._writers += [cw, sw]
        flow = {"claiming": False, "committing": False}
        answered = asyncio.Event()

        async def up() -> None:  # client -> server
            with contextlib.suppress(Exception):
                while data := await cr.read(65536):
                    if self.armed and self.trigger in data:
                        flow["claiming"] = True
                    if flow["claiming"] and COMMIT in data:
                        self.armed, flow["claiming"], flow["committing"] = False, False, True
                        self.commits += 1
                        if not self.forward_commit:
                            self.cuts += 1
                            cw.transport.abort()
                            break
                    sw.write(data)
                    await sw.drain()
            sw.close()

        async def down() -> None:  # server -> client
            with contextlib.suppress(Exception):
                while data := await sr.read(65536):
                    if flow["committing"] and self.answer_delay_s > 0:
                        flow["committing"] = False
                        await asyncio.sleep(self.answer_delay_s)
                    elif flow["committing"]:  # the COMMIT's answer: dropped, and the link with it
                        self.cuts += 1
                        answered.set()
                        cw.transport.abort()
                        return
                    cw.write(data)
                    await cw.drain()
            cw.close()

        await asyncio.gather(up(), down())
        if answered.is_set():
            sw.close()

    async def stop(self) -> None:
        for w in self._writers:
            w.close()
        if self._server is not None:
            self._server.close()


@pytest.fixture
async def proxy(pg_dsn: str) -> AsyncIterator[CommitAnswerLost]:
    u = urlsplit(pg_dsn)
    assert u.hostname and u.port  # over TCP
    p = CommitAnswerLost(u.hostname, u.port)
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


@pytest.fixture
async def store(pg_dsn: str, proxy: CommitAnswerLost) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(proxy.dsn(pg_dsn), min_size=1, max_size=4)
    await s.open()
    try:
        await s.create_account(account())
        yield s
    finally:
        await s.close()


async def claims(pg_dsn: str) -> list[tuple[str, str, str | None, int]]:
    """(id, q_state, q_claimed_by, q_attempts) of every message, read past the proxy."""
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            "SELECT id, q_state, q_claimed_by, q_attempts FROM messages ORDER BY id"
        )
    finally:
        await conn.close()
    return [tuple(r) for r in rows]  # type: ignore[misc]


IDS = ["m0", "m1", "m2"]


async def test_a_claim_whose_commit_answer_was_lost_gives_its_messages_back(
    store: PostgresStore, proxy: CommitAnswerLost, pg_dsn: str
) -> None:
    for mid in IDS:
        await accept(store, message(mid))
    proxy.armed = True
    with pytest.raises(Exception) as failed:
        await store.claim("inst-a", 10, NOW, LEASE)
    assert is_unavailable(failed.value), failed.value  # what the dispatcher retries in a second
    # The server did claim them, for this instance, for the whole lease.
    assert proxy.cuts == 1
    assert await claims(pg_dsn) == [(m, "claimed", "inst-a", 1) for m in IDS]
    # The next claim gives them back first and takes them (the attempt counted once).
    work = await store.claim("inst-a", 10, NOW, LEASE)
    assert sorted(w.id for w in work) == IDS
    assert all(w.attempts == 1 for w in work)
    assert await claims(pg_dsn) == [(m, "claimed", "inst-a", 1) for m in IDS]


async def test_the_reclaim_gives_them_back_without_a_claim(
    store: PostgresStore, proxy: CommitAnswerLost, pg_dsn: str
) -> None:
    """An instance with no bind up claims nothing (no window): its sweeper's reclaim gives
    back what such a claim took, for the instances that can send."""
    for mid in IDS:
        await accept(store, message(mid))
    await store.heartbeat("inst-a", "owner", NOW, "{}")  # alive: its claims are its own
    proxy.armed = True
    with pytest.raises(Exception) as failed:
        await store.claim("inst-a", 10, NOW, LEASE)
    assert is_unavailable(failed.value), failed.value
    assert await claims(pg_dsn) == [(m, "claimed", "inst-a", 1) for m in IDS]
    await store.reclaim(NOW, frozenset())
    assert await claims(pg_dsn) == [(m, "queued", None, 0) for m in IDS]
    other = PostgresStore(pg_dsn, min_size=1, max_size=2)
    await other.open()
    try:
        assert sorted(w.id for w in await other.claim("inst-b", 10, NOW, LEASE)) == IDS
    finally:
        await other.close()


async def test_a_claim_that_did_not_land_gives_back_nothing_claimed_since(
    store: PostgresStore, pg_dsn: str
) -> None:
    """A claim that raised without committing (here: before its COMMIT) leaves the messages
    queued; another instance claims them; the give-back must leave that claim alone."""
    for mid in IDS:
        await accept(store, message(mid))
    # What the store holds after a claim whose outcome it could not learn, which did not land.
    store._unsure_claims = dict.fromkeys(IDS, "inst-a")
    other = PostgresStore(pg_dsn, min_size=1, max_size=2)
    await other.open()
    try:
        await other.heartbeat("inst-b", "owner", NOW, "{}")
        assert sorted(w.id for w in await other.claim("inst-b", 10, NOW, LEASE)) == IDS
        await store.reclaim(NOW, frozenset())
        assert await claims(pg_dsn) == [(m, "claimed", "inst-b", 1) for m in IDS]
        assert store._unsure_claims == {}
    finally:
        await other.close()


class Smsc(StandIn):
    """Accepts every part at once; keeps every part sent, in order, so a message sent twice
    shows twice."""

    def __init__(self) -> None:
        super().__init__("t1")
        self.parts: list[bytes] = []

    async def sending(
        self,
        parts: Sequence[ShortMessage],
        before_first: BeforeFirst,
        deadline: float | None,
        contexts: Contexts,
    ) -> None:
        self.parts += [p.short_message for p in parts]


def _dispatcher(store: PostgresStore, smsc: Smsc) -> Dispatcher:
    """Instance inst-a's dispatcher, sending through `smsc` alone, on the tests' clock."""
    return Dispatcher(
        store,
        {"t1": smsc},
        Router([], ["t1"]),
        {"t1": SmscConfig(name="t1", system_id="t", password="t")},
        instance="inst-a",
        idle_s=0.01,
        clock=lambda: NOW / 1000,
    )


async def test_the_dispatcher_sends_them_within_seconds(
    store: PostgresStore, proxy: CommitAnswerLost, pg_dsn: str
) -> None:
    """The daemon's view: the dispatcher's first claim loses its answer; every message still
    goes out once, in seconds (it stayed claimed and unsent for the 5-minute lease)."""
    for mid in IDS:
        await accept(store, message(mid))
    smsc = Smsc()
    d = _dispatcher(store, smsc)
    proxy.armed = True
    began = time.monotonic()
    task = asyncio.create_task(d.run())
    try:
        await wait_until(lambda: proxy.cuts == 1, 5, 0.01)
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: len(smsc.parts) == len(IDS), 10, 0.05)
        took = time.monotonic() - began
        assert sorted(smsc.parts) == sorted(f"{m}/1".encode() for m in IDS), (took, smsc.parts)
        await wait_until(lambda: d.inflight == 0, 5, 0.01)
        assert {r[1] for r in await claims(pg_dsn)} == {"done"}
    finally:
        await d.stop(1.0)
        task.cancel()


async def test_a_clean_close_gives_them_back(proxy: CommitAnswerLost, pg_dsn: str) -> None:
    """A stop (SIGTERM) after such a claim: the messages are queued again as the store closes,
    not left claimed by a stopped instance until another one's takeover (~20 s) or a restart."""
    s = PostgresStore(proxy.dsn(pg_dsn), min_size=1, max_size=4, local_clock=lambda: NOW / 1000)
    await s.open()
    try:
        await s.create_account(account())
        for mid in IDS:
            await accept(s, message(mid))
        proxy.armed = True
        with pytest.raises(Exception) as failed:
            await s.claim("inst-a", 10, NOW, LEASE)
        assert is_unavailable(failed.value), failed.value
        assert await claims(pg_dsn) == [(m, "claimed", "inst-a", 1) for m in IDS]
    finally:
        await s.close()
    assert await claims(pg_dsn) == [(m, "queued", None, 0) for m in IDS]


async def test_a_close_with_the_server_away_does_not_hang_or_raise(
    proxy: CommitAnswerLost, pg_dsn: str
) -> None:
    s = PostgresStore(proxy.dsn(pg_dsn), min_size=1, max_size=4)
    await s.open()
    s._unsure_claims = dict.fromkeys(IDS, "inst-a")
    await proxy.stop()  # the server unreachable: every connection cut, none accepted
    async with asyncio.timeout(15):
        await s.close()
    assert sorted(s._unsure_claims) == IDS  # kept: nothing was given back


async def _one_without_parts(store: PostgresStore, pg_dsn: str) -> None:
    """m0 and m1 queued with their parts; m9 queued with none (it ends NO_PARTS at its claim,
    a status report queued by the claim's roll-up); the account with a status callback."""
    await store.update_account("acc_a", {"status_callback_url": "https://cb.example/s"}, NOW)
    for mid in ("m0", "m1", "m9"):
        await accept(store, message(mid))
    conn = await asyncpg.connect(pg_dsn)
    try:
        await conn.execute("DELETE FROM segments WHERE message_id = 'm9'")
    finally:
        await conn.close()


async def test_a_claim_whose_commit_answer_was_lost_counts_its_reports(
    store: PostgresStore, proxy: CommitAnswerLost, pg_dsn: str
) -> None:
    """Its roll-up's reports are in the outbox if the COMMIT landed (here it did): counted in
    Store.claim_reports, which the dispatcher reads to wake the webhook sender. Session 50
    counted them only for a claim that returned."""
    await _one_without_parts(store, pg_dsn)
    proxy.armed = True
    with pytest.raises(Exception) as failed:
        await store.claim("inst-a", 10, NOW, LEASE)
    assert is_unavailable(failed.value), failed.value
    assert proxy.cuts == 1
    assert ("m9", "done", None, 1) in await claims(pg_dsn)  # it landed: m9 ended NO_PARTS
    assert store.claim_reports == 1
    jobs = await store.claim_webhooks(NOW + 10_000, 100, LEASE)
    assert [(j.kind, j.payload) for j in jobs] == [("status", "m9")]


async def test_a_claim_whose_commit_was_lost_on_the_way_counts_them_too(
    store: PostgresStore, proxy: CommitAnswerLost, pg_dsn: str
) -> None:
    """The COMMIT itself dropped and the link cut: the server rolled the claim back, but the
    client cannot tell that from a lost answer. Counted all the same: a spurious wake of the
    webhook sender costs one poll of an empty outbox; a missed one, a wait for its poll."""
    await _one_without_parts(store, pg_dsn)
    proxy.forward_commit = False
    proxy.armed = True
    with pytest.raises(Exception) as failed:
        await store.claim("inst-a", 10, NOW, LEASE)
    assert is_unavailable(failed.value), failed.value
    assert await claims(pg_dsn) == [(m, "queued", None, 0) for m in ("m0", "m1", "m9")]
    assert await store.claim_webhooks(NOW + 10_000, 100, LEASE) == []
    assert store.claim_reports == 1


async def test_the_dispatcher_wakes_the_webhook_sender_after_it(
    store: PostgresStore, proxy: CommitAnswerLost, pg_dsn: str
) -> None:
    """The daemon's view: the dispatcher's first claim loses its answer after queuing m9's
    report; the webhook sender is woken at once (it waited for its next poll: up to a second
    idle, and for ever here, where nothing else wakes it)."""
    await _one_without_parts(store, pg_dsn)
    smsc = Smsc()
    d = _dispatcher(store, smsc)
    woken: list[int] = []
    d.on_reports = lambda: woken.append(proxy.cuts)
    proxy.armed = True
    task = asyncio.create_task(d.run())
    try:
        await wait_until(lambda: proxy.cuts == 1, 5, 0.01)
        await wait_until(lambda: len(smsc.parts) == 2, 10, 0.05)  # m0 and m1, given back
        assert woken and woken[0] == 1, woken  # after the cut, by the failed claim
    finally:
        await d.stop(1.0)
        task.cancel()
