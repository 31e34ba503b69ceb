"""Webhook delivery edge cases found by a review (each failed before its fix): redirects,
per-report retry decisions, leases outliving queued POSTs, a stale sender overwriting another's
outcome, a claim error ending delivery, reloaded settings, one hanging customer delaying others.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bridge.accounts import AccountService
from bridge.config import WebhooksConfig
from bridge.crypto import Sealer
from bridge.pipeline.webhooks import WebhookSender
from bridge.store.base import Store
from bridge.store.sqlite import SqliteStore

# tests/integration has no __init__.py: put the repository root on sys.path for tests.store_engines.
_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402

# Module-level on purpose: tests/integration/conftest.py has an API-server `store` of its own.
engine = engines.engine
store = engines.store

SEC = 1_000
MIN = 60 * SEC
HOUR = 60 * MIN
T0 = 1_800_000_000.0  # a fixed fake "now", unix seconds


# -- clocks ------------------------------------------------------------------------------------


class FrozenClock:
    """A clock that only moves when told to."""

    def __init__(self, at: float = T0) -> None:
        self.t = at

    def __call__(self) -> float:
        return self.t

    def ms(self) -> int:
        return int(self.t * 1000)


class FastClock:
    """Real time, `factor` times faster, from T0: lets a test model receivers that take seconds
    (well inside webhooks.timeout_s) without waiting those seconds."""

    def __init__(self, factor: float) -> None:
        self.factor = factor
        self.start = time.monotonic()

    def __call__(self) -> float:
        return T0 + (time.monotonic() - self.start) * self.factor

    def ms(self) -> int:
        return int(self() * 1000)


# -- receiver ----------------------------------------------------------------------------------


class Receiver:
    """A customer endpoint on 127.0.0.1 (or another loopback address). `routes` maps a path to a
    coroutine(request, body) -> Response; every request (any method) is recorded."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.routes: dict[str, Callable[[web.Request, bytes], Awaitable[web.StreamResponse]]] = {}
        self.seen: list[dict[str, Any]] = []
        self.in_flight: Counter[str] = Counter()
        self.max_in_flight: Counter[str] = Counter()
        self.posts_per_id: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        ids: list[str] = []
        if request.method == "POST" and body:
            try:
                ids = [item.get("webhook_id", "") for item in json.loads(body)]
            except ValueError:
                ids = []
        self.seen.append(
            {
                "method": request.method,
                "path": request.path,
                "headers": dict(request.headers),
                "body": body,
                "ids": ids,
            }
        )
        for i in ids:
            self.posts_per_id[i] += 1
            self.in_flight[i] += 1
            self.max_in_flight[i] = max(self.max_in_flight[i], self.in_flight[i])
        try:
            handler = self.routes.get(request.path)
            if handler is None:
                return web.Response(status=404)
            return await handler(request, body)
        finally:
            for i in ids:
                self.in_flight[i] -= 1

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def ok(_request: web.Request, _body: bytes) -> web.Response:
    return web.Response(status=200)


async def unavailable(_request: web.Request, _body: bytes) -> web.Response:
    return web.Response(status=503)


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "bridge.db")
    await s.open()
    yield s
    await s.close()


def sealer() -> Sealer:
    return Sealer(os.urandom(32))


async def make_account(accounts: AccountService, name: str, url: str, now_ms: int) -> str:
    creds = await accounts.create(name, {"status_callback_url": url}, now_ms)
    return creds.account.id


async def event(store: Store, account_id: str, webhook_id: str, at_ms: int) -> None:
    payload = json.dumps({"event": "test", "n": webhook_id})
    await store.enqueue_event(account_id, "event", payload, webhook_id, at_ms)


def config(**kw: Any) -> WebhooksConfig:
    return WebhooksConfig(**kw)


async def run_until(
    sender: WebhookSender, done: Callable[[], Awaitable[bool]], limit_s: float = 8.0
) -> None:
    task = asyncio.create_task(sender.run())
    try:
        async with asyncio.timeout(limit_s):
            while not await done():  # noqa: ASYNC110 (polls the store)
                await asyncio.sleep(0.02)
    finally:
        await sender.stop()
        await task


async def dead_ids(store: Store) -> set[str]:
    return {r["webhook_id"] for r in await store.dead_webhooks(None, 1000)}


async def counts(store: Store) -> dict[str, int]:
    return await store.webhook_counts()


# -- 1. redirects --------------------------------------------------------------------------------

# A 301/302/303 answer makes aiohttp (allow_redirects defaults to True) repeat the request as a
# GET without the body; if that GET answers 2xx the report is booked as delivered although no
# receiver ever got it: a silent loss. A customer moving its endpoint (http -> https, a renamed
# path) triggers exactly this.


async def test_redirect_to_get_is_not_booked_as_delivered(
    sqlite_store: SqliteStore, receiver: Receiver
) -> None:
    clock = FrozenClock()
    accounts = AccountService(sqlite_store, sealer())

    async def moved(_request: web.Request, _body: bytes) -> web.Response:
        raise web.HTTPFound(receiver.url("/new-home"))

    receiver.routes["/hook"] = moved
    receiver.routes["/new-home"] = ok  # a page that answers GET with 200
    acc = await make_account(accounts, "redir302", receiver.url("/hook"), clock.ms())
    await event(sqlite_store, acc, "ev_redirect", clock.ms())
    sender = WebhookSender(sqlite_store, accounts, config(), clock=clock, poll_s=0.02)

    async def settled() -> bool:
        return (await counts(sqlite_store)).get("pending", 0) == 0 or len(receiver.seen) >= 2

    await run_until(sender, settled)
    await asyncio.sleep(0.1)
    got_body = [s for s in receiver.seen if b"ev_redirect" in s["body"]]
    assert not [s for s in receiver.seen if s["path"] == "/new-home"]  # not followed
    # The only request that carried the report was answered 302: a dead letter naming the
    # redirect, for the operator to fix the URL and replay; never booked as delivered.
    assert [s["path"] for s in got_body] == ["/hook"]
    (dead,) = await sqlite_store.dead_webhooks(None, 10)
    assert "HTTP 302 redirect to 127.0.0.1" in dead["last_error"]
    assert (await counts(sqlite_store)).get("delivered", 0) == 0, (
        "a report whose POST was answered 302 (then GET 200 elsewhere) is booked as delivered"
    )


async def test_a_claim_with_nothing_startable_and_nothing_running_does_not_end_the_sender(
    sqlite_store: SqliteStore, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim whose reports all stay spare while no POST is in flight (the stores leave capped
    accounts out, so a plan with nothing to start needs something running; a session 64 helper
    reached it with a store ignoring that) waits a poll and claims again: it ended the sender
    with asyncio.wait's ValueError on an empty set, and no report was sent again until a restart."""
    import bridge.pipeline.webhooks as webhooks_mod

    real = webhooks_mod.plan_chunks
    plans: list[int] = []

    def nothing_first(jobs: Any, *args: Any) -> Any:
        plans.append(len(jobs))
        if len(plans) == 1:
            return [], list(jobs)  # nothing startable, everything given back
        return real(jobs, *args)

    monkeypatch.setattr(webhooks_mod, "plan_chunks", nothing_first)
    clock = FrozenClock()
    accounts = AccountService(sqlite_store, sealer())
    receiver.routes["/hook"] = ok
    acc = await make_account(accounts, "spare", receiver.url("/hook"), clock.ms())
    await event(sqlite_store, acc, "ev_spare", clock.ms())
    sender = WebhookSender(sqlite_store, accounts, config(), clock=clock, poll_s=0.02)

    async def settled() -> bool:
        return (await counts(sqlite_store)).get("delivered", 0) == 1

    await run_until(sender, settled)
    assert len(plans) >= 2 and [s for s in receiver.seen if b"ev_spare" in s["body"]]


# A 307/308 makes aiohttp re-POST the signed body (phone numbers, MO text) to whatever host the
# receiver names, internal addresses included (SSRF from the daemon's network position).


async def test_redirect_does_not_post_body_to_another_host(
    sqlite_store: SqliteStore, receiver: Receiver
) -> None:
    other = Receiver(host="127.0.0.2")
    await other.start()
    try:
        clock = FrozenClock()
        accounts = AccountService(sqlite_store, sealer())

        async def elsewhere(_request: web.Request, _body: bytes) -> web.Response:
            raise web.HTTPTemporaryRedirect(other.url("/internal"))

        receiver.routes["/hook"] = elsewhere
        other.routes["/internal"] = ok
        acc = await make_account(accounts, "redir307", receiver.url("/hook"), clock.ms())
        await event(sqlite_store, acc, "ev_307", clock.ms())
        sender = WebhookSender(sqlite_store, accounts, config(), clock=clock, poll_s=0.02)

        async def settled() -> bool:
            return (await counts(sqlite_store)).get("pending", 0) == 0 and bool(receiver.seen)

        await run_until(sender, settled)
        leaked = [s for s in other.seen if b"ev_307" in s["body"]]
        assert leaked == [], (
            f"the signed report was re-POSTed to {other.host} "
            f"(X-Bridge-Signature sent along: {'X-Bridge-Signature' in leaked[0]['headers']})"
        )
    finally:
        await other.stop()


# -- 2. batches mixing reports of different ages --------------------------------------------------

# The retry decision of a batch uses the *oldest* report's age and the *highest* attempt count,
# so a fresh report that happens to share a POST with an old one inherits its schedule: it can be
# dead-lettered on its very first failure, or wait an hour instead of a minute.


async def _age_report(store: Store, clock: FrozenClock, times: int) -> None:
    """Book `times` failed attempts for every due report, each due again at `clock` now."""
    for _ in range(times):
        jobs = await store.claim_webhooks(clock.ms(), 100, MIN)
        assert jobs
        await store.webhook_retry([j.id for j in jobs], clock.ms(), "HTTP 503", dead=False)


async def test_fresh_report_batched_with_expiring_one_is_not_dead_on_first_failure(
    sqlite_store: SqliteStore, receiver: Receiver
) -> None:
    clock = FrozenClock()
    accounts = AccountService(sqlite_store, sealer())
    receiver.routes["/hook"] = unavailable
    acc = await make_account(accounts, "mixedage", receiver.url("/hook"), clock.ms())
    # A report created 23 h 30 min ago, five attempts so far (1, 5, 10, 30, 60 min, then hourly).
    await event(sqlite_store, acc, "ev_old", clock.ms() - 23 * HOUR - 30 * MIN)
    await _age_report(sqlite_store, clock, 5)
    await event(sqlite_store, acc, "ev_new", clock.ms())  # a brand-new final status
    sender = WebhookSender(
        sqlite_store, accounts, config(), clock=clock, poll_s=0.02, rng=random.Random(1)
    )

    async def settled() -> bool:
        return "ev_old" in await dead_ids(sqlite_store)

    await run_until(sender, settled)
    assert receiver.posts_per_id == Counter({"ev_old": 1, "ev_new": 1})  # one POST, both inside
    assert "ev_new" not in await dead_ids(sqlite_store), (
        "a report 0 s old was dead-lettered after its first attempt because it shared a batch "
        "with a report whose 24 h retry window was spent"
    )


async def test_fresh_report_batched_with_retried_one_is_retried_after_one_minute(
    sqlite_store: SqliteStore, receiver: Receiver
) -> None:
    clock = FrozenClock()
    accounts = AccountService(sqlite_store, sealer())
    receiver.routes["/hook"] = unavailable
    acc = await make_account(accounts, "mixedsched", receiver.url("/hook"), clock.ms())
    await event(sqlite_store, acc, "ev_old", clock.ms() - 2 * HOUR)
    await _age_report(sqlite_store, clock, 5)
    await event(sqlite_store, acc, "ev_new", clock.ms())
    sender = WebhookSender(
        sqlite_store, accounts, config(), clock=clock, poll_s=0.02, rng=random.Random(1)
    )

    await run_until(sender, lambda: _after_first_post(receiver))
    await asyncio.sleep(0.2)  # the retry bookkeeping
    # Schedule: first retry 1 min (+-10%) after the first failure.
    due = {j.webhook_id for j in await sqlite_store.claim_webhooks(clock.ms() + 66 * SEC, 10, MIN)}
    assert "ev_new" in due, (
        "a report that failed once waits the 6th step of the schedule (1 h), not 1 min, because "
        "it shared a POST with a report on its 6th attempt"
    )


async def _after_first_post(receiver: Receiver) -> bool:
    return sum(receiver.posts_per_id.values()) >= 1


# -- 4. leases shorter than the wait in the sender's own queue ----------------------------------

# claim_webhooks leases up to batch_max * free rows (1000 by default) for 3 * timeout_s + 10 s,
# then makes one task per (account, url, kind) chunk, all waiting on a semaphore of `concurrency`.
# With many accounts the tail of that queue waits longer than the lease; its rows come due again
# and are claimed a second time (by this instance or another) while the first claim still holds
# them: the same webhook is POSTed twice, possibly at the same time.


def _nine_second_receiver(receiver: Receiver, factor: float) -> None:
    async def slow(_request: web.Request, _body: bytes) -> web.Response:
        await asyncio.sleep(9 / factor)  # 9 s of the sender's clock: under timeout_s=10
        return web.Response(status=200)

    receiver.routes["/hook"] = slow


async def test_single_instance_never_posts_a_webhook_twice_when_receivers_are_slow(
    sqlite_store: SqliteStore, receiver: Receiver
) -> None:
    factor = 40.0
    clock = FastClock(factor)
    accounts = AccountService(sqlite_store, sealer())
    _nine_second_receiver(receiver, factor)
    for i in range(9):  # nine customers, one final status each, every receiver takes 9 s
        acc = await make_account(accounts, f"slow{i}", receiver.url("/hook"), clock.ms())
        await event(sqlite_store, acc, f"ev_{i}", clock.ms())
    # timeout_s=10 -> lease 40 s; concurrency 2 -> the 9th POST starts 36 s after the claim.
    sender = WebhookSender(
        sqlite_store,
        accounts,
        config(timeout_s=10.0, concurrency=2),
        clock=clock,
        poll_s=3 / factor,
    )

    async def settled() -> bool:
        return (await counts(sqlite_store)).get("delivered", 0) == 9 and not any(
            receiver.in_flight.values()
        )

    await run_until(sender, settled, limit_s=10)
    twice = {i: n for i, n in receiver.posts_per_id.items() if n > 1}
    assert twice == {}, (
        f"webhooks POSTed more than once with every receiver answering 200: {twice}; "
        f"overlapping: {[i for i, n in receiver.max_in_flight.items() if n > 1]}"
    )


@pytest.mark.postgres
async def test_two_instances_never_post_the_same_webhook(pg_dsn: str, receiver: Receiver) -> None:
    from bridge.store.postgres import PostgresStore

    factor = 40.0
    clock = FastClock(factor)
    a = PostgresStore(pg_dsn, min_size=1, max_size=4)
    b = PostgresStore(pg_dsn, min_size=1, max_size=4)
    await a.open()
    await b.open()
    try:
        key = sealer()
        acc_a, acc_b = AccountService(a, key), AccountService(b, key)
        _nine_second_receiver(receiver, factor)
        for i in range(6):
            acc = await make_account(acc_a, f"slow{i}", receiver.url("/hook"), clock.ms())
            await event(a, acc, f"ev_{i}", clock.ms())
        cfg = config(timeout_s=10.0, concurrency=1)
        first = WebhookSender(a, acc_a, cfg, clock=clock, poll_s=3 / factor)
        # Instance A claims all six and works through them one at a time (9 s each).
        task_a = asyncio.create_task(first.run())
        async with asyncio.timeout(5):
            while not receiver.seen:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        second = WebhookSender(b, acc_b, cfg, clock=clock, poll_s=3 / factor)

        async def settled() -> bool:
            return (await counts(a)).get("delivered", 0) == 6 and not any(
                receiver.in_flight.values()
            )

        try:
            await run_until(second, settled, limit_s=10)
        finally:
            await first.stop()
            await task_a
        twice = {i: n for i, n in receiver.posts_per_id.items() if n > 1}
        assert twice == {}, f"two instances both POSTed: {twice}"
    finally:
        await a.close()
        await b.close()


# -- 5. bookkeeping of a holder whose lease ran out ---------------------------------------------

# webhook_done / webhook_retry update by id alone: a sender whose lease expired (see 4) still
# writes its outcome over the row another sender already finished. A delivered report turns into
# a dead letter (an operator replay then sends it again) or back into pending (sent again).


async def test_stale_holder_cannot_turn_a_delivered_report_into_a_dead_letter(
    store: Store,
) -> None:
    clock = FrozenClock()
    accounts = AccountService(store, sealer())
    acc = await make_account(accounts, "stale", "http://127.0.0.1:9/hook", clock.ms())
    await event(store, acc, "ev_s", clock.ms())
    lease = 40 * SEC
    (first,) = await store.claim_webhooks(clock.ms(), 10, lease)  # sender A, slow
    (second,) = await store.claim_webhooks(clock.ms() + lease, 10, lease)  # sender B
    assert first.id == second.id
    await store.webhook_done([second.id], clock.ms() + lease + SEC, second.lease)  # B: 200
    await store.webhook_retry(
        [first.id], clock.ms() + lease + 2 * SEC, "HTTP 410", True, first.lease
    )
    c = await counts(store)
    assert c.get("dead", 0) == 0 and c.get("delivered", 0) == 1, (
        f"a delivered report was overwritten by the stale holder's outcome: {c}"
    )


# -- 6. a store error in the claim ends the sender for good --------------------------------------

# WebhookSender.run() does not guard claim_webhooks (the dispatcher's claim loop does): one
# transient store error (a PostgreSQL failover, which the README promises to ride out; SQLite busy
# past its timeout; a full disk) ends the task. Daemon.start creates it bare and nothing watches
# it: no log line until shutdown, and no webhook leaves this instance until a restart.


class FlakyClaimStore(SqliteStore):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.failures = 1

    async def claim_webhooks(
        self, now: int, limit: int, lease_ms: int, exclude: Any = (), **kw: Any
    ) -> list[Any]:
        if self.failures:
            self.failures -= 1
            raise sqlite3.OperationalError("database is locked")
        return await super().claim_webhooks(now, limit, lease_ms, exclude, **kw)


async def test_sender_survives_one_failed_claim(tmp_path: Path, receiver: Receiver) -> None:
    flaky = FlakyClaimStore(tmp_path / "bridge.db")
    await flaky.open()
    try:
        clock = FrozenClock()
        accounts = AccountService(flaky, sealer())
        receiver.routes["/hook"] = ok
        acc = await make_account(accounts, "flaky", receiver.url("/hook"), clock.ms())
        await event(flaky, acc, "ev_after_blip", clock.ms())
        sender = WebhookSender(flaky, accounts, config(), clock=clock, poll_s=0.02)
        task = asyncio.create_task(sender.run())
        try:
            async with asyncio.timeout(3):
                while not receiver.seen and not task.done():  # noqa: ASYNC110
                    await asyncio.sleep(0.02)
            assert not task.done(), f"the sender task ended: {task.exception()!r}"
        finally:
            await sender.stop()
            await asyncio.gather(task, return_exceptions=True)
        assert receiver.posts_per_id["ev_after_blip"] == 1
    finally:
        await flaky.close()


class WatchedClaimStore(SqliteStore):
    """Notes what the sender counts as leased in the loop turn right after a claim, before any
    POST task has started: the moment a clock shift (Store.clock_stepped_back, which leaves the
    sender's `leased` alone) could run."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.sender: WebhookSender | None = None
        self.claimed: set[int] = set()
        self.seen_leased: list[set[int]] = []

    async def claim_webhooks(
        self, now: int, limit: int, lease_ms: int, exclude: Any = (), **kw: Any
    ) -> list[Any]:
        jobs = await super().claim_webhooks(now, limit, lease_ms, exclude, **kw)
        if jobs and self.sender is not None:
            self.claimed.update(j.id for j in jobs)
            sender = self.sender
            asyncio.get_running_loop().call_soon(
                lambda: self.seen_leased.append(set(sender.leased))
            )
        return jobs


async def test_claimed_reports_count_as_leased_before_their_post_starts(
    tmp_path: Path, receiver: Receiver
) -> None:
    """Review 2 of session 18 (read, not run): `leased` gained a report only when its task
    started, so a clock shift in between moved the lease its result is written under; the
    result then matched nothing and the report was posted a second time."""
    store = WatchedClaimStore(tmp_path / "bridge.db")
    await store.open()
    try:
        clock = FrozenClock()
        accounts = AccountService(store, sealer())
        receiver.routes["/hook"] = ok
        acc = await make_account(accounts, "watched", receiver.url("/hook"), clock.ms())
        for n in range(3):
            await event(store, acc, f"ev_{n}", clock.ms())
        sender = WebhookSender(store, accounts, config(), clock=clock, poll_s=0.02)
        store.sender = sender

        async def delivered() -> bool:
            return (await counts(store)).get("delivered", 0) == 3

        await run_until(sender, delivered)
        assert store.claimed and store.seen_leased
        assert store.claimed <= store.seen_leased[0]
        assert sender.leased == set()  # and given up once done
    finally:
        await store.close()


# -- 7. a configuration reload half-applied -------------------------------------------------------

# Daemon.reload sets sender.config, and the README says webhook settings are applied live; but
# run() built the ClientSession timeout and the semaphore from the config it started with. The
# lease (3 * timeout_s + 10 s) follows the new timeout_s while requests still run to the old one:
# lower timeout_s from 60 to 5 and a 40 s POST outlives its 25 s lease (a second claim, a second
# POST); raise concurrency and free slots are computed from the new value against the old semaphore
# (more claimed rows queue behind it, see 4).


async def test_reloaded_timeout_applies_to_requests(
    sqlite_store: SqliteStore, receiver: Receiver
) -> None:
    clock = FrozenClock()
    accounts = AccountService(sqlite_store, sealer())

    async def slow(_request: web.Request, _body: bytes) -> web.Response:
        await asyncio.sleep(1.5)
        return web.Response(status=200)

    receiver.routes["/hook"] = slow
    acc = await make_account(accounts, "reload", receiver.url("/hook"), clock.ms())
    sender = WebhookSender(sqlite_store, accounts, config(timeout_s=30.0), clock=clock, poll_s=0.02)
    task = asyncio.create_task(sender.run())
    try:
        await asyncio.sleep(0.1)
        sender.config = config(timeout_s=0.5)  # what Daemon.reload does
        await event(sqlite_store, acc, "ev_reload", clock.ms())
        sender.wake()
        async with asyncio.timeout(5):
            while sender.delivered + sender.failed_attempts == 0:  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    finally:
        await sender.stop()
        await task
    assert sender.failed_attempts == 1 and sender.delivered == 0, (
        "a POST answered after 1.5 s counted as delivered although timeout_s was reloaded to 0.5"
    )


# -- 8. one hanging customer holds back everyone else ---------------------------------------------

# The docstring of run() promises that a hanging callback of one customer never holds back
# another's; but rows are claimed oldest first and every chunk of the hanging customer takes a
# semaphore slot for timeout_s. Another customer's report waits behind the whole due backlog:
# with the defaults (20 slots, 100 per POST, 10 s) ~8 min per 100 000 reports of a customer whose
# endpoint hangs during a campaign, again at every retry step.


async def test_hanging_customer_does_not_delay_another(
    sqlite_store: SqliteStore, receiver: Receiver
) -> None:
    clock = FrozenClock()
    accounts = AccountService(sqlite_store, sealer())

    async def hang(_request: web.Request, _body: bytes) -> web.Response:
        await asyncio.sleep(1.0)
        return web.Response(status=200)

    receiver.routes["/hang"] = hang
    receiver.routes["/fine"] = ok
    big = await make_account(accounts, "big", receiver.url("/hang"), clock.ms())
    small = await make_account(accounts, "small", receiver.url("/fine"), clock.ms())
    for i in range(10):
        await event(sqlite_store, big, f"ev_big_{i}", clock.ms() - 1000 + i)
    await event(sqlite_store, small, "ev_small", clock.ms())
    sender = WebhookSender(
        sqlite_store,
        accounts,
        config(timeout_s=0.3, concurrency=2, batch_max=1),
        clock=clock,
        poll_s=0.02,
    )
    started = time.monotonic()
    await run_until(sender, lambda: _posted(receiver, "ev_small"), limit_s=10)
    waited = time.monotonic() - started
    assert waited < 0.6, (
        f"a healthy customer's report waited {waited:.2f} s (timeout_s 0.3) behind another "
        "customer's hanging endpoint"
    )


async def _posted(receiver: Receiver, webhook_id: str) -> bool:
    return receiver.posts_per_id[webhook_id] > 0


# The cap itself, counted where it is felt: the receiver holds every POST open and counts them per
# account, so nothing finishes while the sender fills its senders, and the test reads the peak once
# the sender can start nothing more (every sender busy, or its last claim found nothing it may
# start and every POST it holds has arrived). The test above and test_webhooks_review.py's
# quarter test time a healthy customer's report behind hanging ones and count nothing per account;
# at their concurrency (2 and 4) a quarter is the floor, 1, so a cap one less is the same there,
# and the review's test passed with the POSTs in flight not counted against their account.

CAP_CONCURRENCY = 10  # a quarter, rounded down: 2 (a rounded-up or +1 cap is 3, a -1 cap is 1)
CAP = 2


async def test_each_account_holds_exactly_its_quarter_of_the_senders(
    store: Store, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README, Webhooks: at most `webhooks.concurrency` POSTs in flight, at most a quarter of them
    (at least one) to one account. Account "a" has the oldest backlog (12 reports, one per POST),
    then b..e have 4 each: "a" holds 2 senders, not every one the oldest-first claim would give
    it, and b..e take the rest, 2 each, until every sender is busy. Then the receiver answers:
    every report is POSTed once, none of the accounts ever above 2."""
    clock = FrozenClock()
    accounts = AccountService(store, sealer())
    release = asyncio.Event()  # the held POSTs answer when the test has read the peak
    changed = asyncio.Event()  # a POST arrived or ended, or the sender claimed
    held: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    claims: list[int] = []  # reports each claim returned

    def holding(name: str) -> Callable[[web.Request, bytes], Awaitable[web.Response]]:
        async def handle(_request: web.Request, _body: bytes) -> web.Response:
            held[name] += 1
            peak[name] = max(peak[name], held[name])
            changed.set()
            try:
                await release.wait()
            finally:
                held[name] -= 1
                changed.set()
            return web.Response(status=200)

        return handle

    backlog = {"a": 12, "b": 4, "c": 4, "d": 4, "e": 4}
    at = clock.ms() - 60 * SEC  # all due, "a"'s oldest, then b's...: the claim's order
    for name, n in backlog.items():
        receiver.routes[f"/hold/{name}"] = holding(name)
        acc = await make_account(accounts, f"cap_{name}", receiver.url(f"/hold/{name}"), at)
        for i in range(n):
            at += 1
            await event(store, acc, f"ev_{name}_{i}", at)
    total = sum(backlog.values())

    claim = store.claim_webhooks

    async def counted_claim(*a: Any, **kw: Any) -> list[Any]:
        jobs = await claim(*a, **kw)
        claims.append(len(jobs))
        changed.set()
        return jobs

    monkeypatch.setattr(store, "claim_webhooks", counted_claim)
    sender = WebhookSender(
        store,
        accounts,
        # timeout_s far above the test's waits: no held POST ends on its own
        config(timeout_s=120, concurrency=CAP_CONCURRENCY, batch_max=1),
        clock=clock,
        poll_s=0.02,
    )

    async def until(done: Callable[[], bool]) -> None:
        async with asyncio.timeout(30):  # a guard: each wait ends on an event
            while not done():
                await changed.wait()
                changed.clear()

    def settled() -> bool:
        """The sender can start nothing more: every sender busy, or its last claim came back
        empty (every account with reports left is at its cap) with all it holds arrived."""
        in_flight = sum(held.values())
        if in_flight >= CAP_CONCURRENCY:
            return True
        return bool(claims) and claims[-1] == 0 and in_flight == len(sender.leased)

    task = asyncio.create_task(sender.run())
    try:
        await until(settled)
        at_peak = dict(peak)
        release.set()
        await until(lambda: sum(receiver.posts_per_id.values()) >= total and not any(held.values()))
    finally:
        release.set()
        await sender.stop()
        await task
    assert at_peak == {"a": CAP, "b": CAP, "c": CAP, "d": CAP, "e": CAP}, (
        f"POSTs held per account when the sender could start no more: {at_peak} (concurrency "
        f"{CAP_CONCURRENCY}, a quarter is {CAP}: each account {CAP}, all senders busy)"
    )
    assert max(peak.values()) == CAP, f"POSTs in flight per account at most: {dict(peak)}"
    assert set(receiver.posts_per_id.values()) == {1} and len(receiver.posts_per_id) == total
    assert await counts(store) == {"delivered": total}


class BlinkingStore(SqliteStore):
    """The store unreachable for the next `fail[name]` calls of each named method: a blip of
    the store while reports are in flight."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.fail: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()

    def _blink(self, name: str) -> None:
        self.calls[name] += 1
        if self.fail[name] > 0:
            self.fail[name] -= 1
            raise ConnectionError("the store is unreachable")

    async def webhook_done(self, *a: Any, **kw: Any) -> None:
        self._blink("webhook_done")
        await super().webhook_done(*a, **kw)

    async def webhook_retry(self, *a: Any, **kw: Any) -> None:
        self._blink("webhook_retry")
        await super().webhook_retry(*a, **kw)

    async def get_account(self, *a: Any, **kw: Any) -> Any:
        self._blink("get_account")
        return await super().get_account(*a, **kw)


async def _through_a_blip(
    tmp_path: Path,
    receiver: Receiver,
    handler: Any,
    done: Callable[[BlinkingStore], Awaitable[bool]],
    **fail: int,
) -> tuple[BlinkingStore, WebhookSender]:
    """One report sent through a blip (`fail`), until `done`; the store is left open."""
    store = BlinkingStore(tmp_path / "bridge.db")
    await store.open()
    clock = FrozenClock()
    accounts = AccountService(store, sealer())
    receiver.routes["/hook"] = handler
    acc = await make_account(accounts, "blip", receiver.url("/hook"), clock.ms())
    await event(store, acc, "ev_blip", clock.ms())
    store.fail.update(fail)
    sender = WebhookSender(store, accounts, config(), clock=clock, poll_s=0.02)
    try:
        await run_until(sender, lambda: done(store))
    except BaseException:
        await store.close()
        raise
    return store, sender


async def _delivered(store: BlinkingStore) -> bool:
    return await counts(store) == {"delivered": 1}


async def test_a_delivered_report_is_booked_through_a_store_blip_not_posted_again(
    tmp_path: Path, receiver: Receiver
) -> None:
    """The POST succeeded and the store refused the bookkeeping twice: the write is tried again
    while the lease holds, so the report is booked delivered after one POST. (It stayed leased
    and was POSTed again when the lease ran out: found by the PostgreSQL chaos soak.)"""
    store, sender = await _through_a_blip(tmp_path, receiver, ok, _delivered, webhook_done=2)
    try:
        assert receiver.posts_per_id["ev_blip"] == 1
        assert store.calls["webhook_done"] == 3 and sender.delivered == 1
    finally:
        await store.close()


async def test_a_failed_attempt_is_booked_through_a_store_blip(
    tmp_path: Path, receiver: Receiver
) -> None:
    async def booked(store: BlinkingStore) -> bool:
        return store.calls["webhook_retry"] == 3

    store, sender = await _through_a_blip(tmp_path, receiver, unavailable, booked, webhook_retry=2)
    try:
        await asyncio.sleep(0.1)  # the loop's next claims: the retry is not due yet
        assert await counts(store) == {"pending": 1}
        assert await store.dead_webhooks(None, 10) == []
        assert receiver.posts_per_id["ev_blip"] == 1 and sender.failed_attempts == 1
    finally:
        await store.close()


async def test_reports_whose_delivery_the_store_broke_are_handed_back_not_left_leased(
    tmp_path: Path, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """A store outage while a batch was being prepared (its account could not be read): the
    reports are handed back once the store answers, due at once, instead of waiting out their
    lease (40 s by default, and the clock here is frozen), and the outage is one line without
    a traceback."""
    store, _sender = await _through_a_blip(tmp_path, receiver, ok, _delivered, get_account=1)
    try:
        assert receiver.posts_per_id["ev_blip"] == 1
        lines = [r for r in caplog.records if "delivering webhooks failed" in r.getMessage()]
        assert len(lines) == 1 and lines[0].exc_info is None, lines
    finally:
        await store.close()
