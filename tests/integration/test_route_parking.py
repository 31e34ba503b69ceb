"""Parking: a queued message whose route has no SMSC up is parked by the claim that meets it
(`q_park`, q_not_before pushed out by PARK_MS) instead of being claimed and released ahead of
later messages for working routes; the dispatcher un-parks a route when a bind of it comes up,
every UNPARK_EVERY_MS, and after a reload that re-routes it. On both store engines."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

from bridge.pipeline.dispatcher import UNPARK_EVERY_MS, Dispatcher
from bridge.smpp.router import DEFAULT_KEY, Route, Router
from bridge.store.base import CLAIM_SCAN_FACTOR, PARK_MS, Store
from bridge.store.models import Release

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from tests.integration.test_dispatch_edges import (  # noqa: E402
    Clock,
    SlotWaitConnector,
    _smsc,
    _until,
)
from tests.integration.test_store import (  # noqa: E402
    HOUR,
    LEASE,
    NOW,
    TIMEOUT,
    accept,
    account,
    get,
    message,
)

engine = engines.engine
store = engines.store

UK = "+4420000000"  # the down route's numbers
CN = "+8613800138000"  # the working route's


def park_uk(recipient: str) -> str | None:
    return "+44" if recipient.startswith("+44") else None


async def _backlog(store: Store, n: int, prefix: str = "b", *, at: int = NOW, **kw: object) -> None:
    for i in range(0, n, 500):
        await accept(
            store,
            *(
                message(f"{prefix}{j:05d}", recipient=UK, at=at, **kw)  # type: ignore[arg-type]
                for j in range(i, min(n, i + 500))
            ),
        )


async def until(pred: Callable[[], bool]) -> bool:
    async def check() -> bool:
        return pred()

    return await _until(check)


async def _ids(store: Store, limit: int, now: int, park: Callable[[str], str | None] | None = None):
    return [w.id for w in await store.claim("inst-1", limit, now, LEASE, park=park)]


# -------------------------------------------------------------------------- the store


async def test_a_claim_parks_what_it_cannot_route_and_returns_the_rest(store: Store) -> None:
    await store.create_account(account())
    await _backlog(store, 5)
    await accept(store, message("z0", at=NOW + 1))
    assert await _ids(store, 10, NOW + 1, park_uk) == ["z0"]
    # Parked: not claimed again while the route is down, nor without a park function.
    assert await _ids(store, 10, NOW + 2, park_uk) == []
    assert await _ids(store, 10, NOW + 1 + PARK_MS - 1) == []
    # Still queued: counted in the queue depth (5 parked + the claimed z0).
    assert await store.queue_depth() == 6
    assert {(await get(store, f"b{i:05d}")).state for i in range(5)} == {"queued"}


async def test_parked_messages_come_back_after_park_ms_and_lose_their_key(store: Store) -> None:
    """The safety valve: PARK_MS after it was parked a message is claimed once more (and parked
    again if its route is still down). A claimed message is no longer parked."""
    await store.create_account(account())
    await _backlog(store, 3)
    assert await _ids(store, 10, NOW, park_uk) == []
    assert await _ids(store, 10, NOW + PARK_MS, park_uk) == []  # still down: parked again
    assert await _ids(store, 10, NOW + 2 * PARK_MS - 1) == []
    claimed = await _ids(store, 10, NOW + 2 * PARK_MS)
    assert claimed == ["b00000", "b00001", "b00002"]
    at = NOW + 2 * PARK_MS + 1
    await store.record_submits([], [Release(m, at, count_attempt=False) for m in claimed], at)
    assert await store.unpark(["+44"], at) == 0  # the claim cleared q_park


async def test_unpark_makes_a_key_due_now(store: Store) -> None:
    await store.create_account(account())
    await _backlog(store, 4)
    await accept(store, message("c0", recipient="+12125550000"))
    assert await _ids(store, 10, NOW, lambda r: "+44" if r.startswith("+44") else "+1") == []
    assert await store.unpark([], NOW + 5) == 0
    assert await store.unpark(["+33", DEFAULT_KEY], NOW + 5) == 0
    assert await store.unpark(["+44"], NOW + 5) == 4
    assert await store.unpark(["+44"], NOW + 5) == 0
    assert await _ids(store, 10, NOW + 4) == []  # due at the un-park's `now`, not before
    assert await _ids(store, 10, NOW + 5) == ["b00000", "b00001", "b00002", "b00003"]
    assert await store.unpark(["+1", "+44"], NOW + 6) == 1
    assert await _ids(store, 10, NOW + 6) == ["c0"]


async def test_a_parked_message_still_expires_at_its_validity(store: Store) -> None:
    await store.create_account(account(status_url="https://cb.example/st"))
    await _backlog(store, 2, expires_at=NOW + HOUR)
    assert await _ids(store, 10, NOW, park_uk) == []
    assert (await store.sweep(NOW + HOUR - 1, TIMEOUT))["expired"] == 0
    assert (await store.sweep(NOW + HOUR, TIMEOUT))["expired"] == 2
    rec = await get(store, "b00000")
    assert (rec.state, rec.error_code) == ("expired", "VALIDITY_EXPIRED")
    assert await store.queue_depth() == 0
    assert await store.unpark(["+44"], NOW + HOUR) == 0  # out of the queue: nothing to un-park
    assert await _ids(store, 10, NOW + 2 * HOUR) == []


async def test_one_claim_examines_at_most_the_scan_cap(store: Store) -> None:
    """A huge down backlog ahead of one routable message: each claim parks at most
    CLAIM_SCAN_FACTOR x limit rows and returns; the claims after it park the rest, then find
    the routable message."""
    limit = 5
    cap = CLAIM_SCAN_FACTOR * limit
    n = 7 * cap + 30
    await store.create_account(account())
    await _backlog(store, n)
    await accept(store, message("z0", at=NOW + 1))

    def park(recipient: str) -> str | None:
        return "+44" if recipient.startswith("+44") else None

    claims = 0
    while (got := await _ids(store, limit, NOW + 2, park)) == []:
        claims += 1
        assert claims <= 8
    assert got == ["z0"]
    assert claims == 7  # 7 full caps parked; the 8th parks the last 30 and finds z0
    assert await store.unpark(["+44"], NOW + 3) == n


async def test_a_claim_with_nothing_to_park_examines_only_its_limit(store: Store) -> None:
    await store.create_account(account())
    await _backlog(store, 50)
    looked: list[str] = []

    def park(recipient: str) -> str | None:
        looked.append(recipient)
        return None

    assert len(await _ids(store, 10, NOW, park)) == 10
    assert len(looked) == 10


async def test_an_account_with_a_down_backlog_does_not_take_another_accounts_turn(
    store: Store,
) -> None:
    """Round-robin survives parking: account A's backlog (all down) is parked, account B's
    share and A's own routable messages behind its backlog are claimed in the same claim."""
    await store.create_account(account("acc_a"))
    await store.create_account(account("acc_b"))
    await accept(store, *(message(f"a{i:03d}", "acc_a", recipient=UK) for i in range(60)))
    await accept(store, message("a900", "acc_a", at=NOW + 1))
    await accept(store, *(message(f"b{i:03d}", "acc_b", at=NOW + 2) for i in range(5)))
    await accept(store, *(message(f"c{i:03d}", "acc_b", at=NOW + 3) for i in range(20)))
    got = await _ids(store, 10, NOW + 5, park_uk)
    assert sorted(got) == [
        "a900",
        *(f"b{i:03d}" for i in range(5)),
        *(f"c{i:03d}" for i in range(4)),
    ]
    assert await store.unpark(["+44"], NOW + 6) == 60


# -------------------------------------------------------------------------- the dispatcher


def _dispatcher(store: Store, conns: dict[str, SlotWaitConnector], router: Router, clock: Clock):
    return Dispatcher(
        store, conns, router, {n: _smsc(n) for n in conns},  # type: ignore[arg-type]
        instance="inst-1", idle_s=0.01, in_flight_windows=2, clock=clock,
    )  # fmt: skip


class _Claims:
    """Wraps a store's claim: records what each claim returned."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.real = store.claim
        self.returned: list[str] = []
        self.calls = 0
        self.before: Callable[[int], object] | None = None
        store.claim = self  # type: ignore[method-assign]

    async def __call__(self, *args: object, **kw: object) -> object:
        self.calls += 1
        if self.before is not None:
            await self.before(self.calls)  # type: ignore[misc]
        work = await self.real(*args, **kw)  # type: ignore[arg-type]
        self.returned += [w.id for w in work]
        return work

    def restore(self) -> None:
        self.store.claim = self.real  # type: ignore[method-assign]


async def test_parked_until_a_bind_comes_up_then_sent_at_once(store: Store) -> None:
    """While "down" is down its backlog is parked, never claimed; when it binds, the next pass
    un-parks its route and the backlog goes out (the clock stands still: neither PARK_MS nor
    the periodic un-park can be what freed it)."""
    await store.create_account(account())
    await _backlog(store, 30)
    await accept(store, message("z0", at=NOW + 1))
    claims = _Claims(store)
    up, down = SlotWaitConnector("up"), SlotWaitConnector("down", up=False)
    router = Router([Route("+44", ("down",)), Route("+86", ("up",))], [])
    clock = Clock(NOW + 10)
    d = _dispatcher(store, {"up": up, "down": down}, router, clock)
    task = asyncio.create_task(d.run())
    try:

        async def z0_sent() -> bool:
            return "z0/1" in up.left

        assert await _until(z0_sent)
        calls = claims.calls
        assert await until(lambda: claims.calls >= calls + 20)  # many claims later
        assert claims.returned == ["z0"] and down.calls == 0
        down.up = True

        async def backlog_sent() -> bool:
            return len(down.left) == 30

        assert await _until(backlog_sent)
        assert sorted(down.left) == [f"b{i:05d}/1" for i in range(30)]
    finally:
        await d.stop(0.5)
        task.cancel()
        claims.restore()


async def test_the_periodic_unpark_frees_what_another_instance_parked(store: Store) -> None:
    """On PostgreSQL another instance without a bind to "up" parks its messages; this instance,
    which has one, un-parks them within UNPARK_EVERY_MS though no bind of its own came up."""
    await store.create_account(account())
    claims = _Claims(store)
    clock = Clock(NOW)
    other: list[list[str]] = []

    async def other_instance_parks(call: int) -> None:
        if call == 3:  # after the dispatcher's first passes (and its first un-park)
            await accept(store, *(message(f"o{i}", at=clock.ms) for i in range(3)))
            work = await claims.real("inst-2", 10, clock.ms, LEASE, park=lambda r: "+86")
            other.append([w.id for w in work])

    claims.before = other_instance_parks
    up = SlotWaitConnector("up")
    d = _dispatcher(store, {"up": up}, Router([Route("+86", ("up",))], []), clock)
    task = asyncio.create_task(d.run())
    try:
        assert await until(lambda: claims.calls >= 30)
        assert other == [[]]
        assert up.left == []  # parked, and no un-park due yet
        clock.ms += UNPARK_EVERY_MS - 1
        calls = claims.calls
        assert await until(lambda: claims.calls >= calls + 10)
        assert up.left == []
        clock.ms += 1

        async def sent() -> bool:
            return sorted(up.left) == ["o0/1", "o1/1", "o2/1"]

        assert await _until(sent)
        assert clock.ms - NOW < PARK_MS
    finally:
        await d.stop(0.5)
        task.cancel()
        claims.restore()


async def test_a_reload_that_reroutes_a_parked_route_unparks_it(store: Store) -> None:
    """Parked under "+44" (its SMSC down); a reload adds "+4420" on a live SMSC: those numbers
    go out at once; the rest of "+44" is parked again."""
    await store.create_account(account())
    await _backlog(store, 3)
    await accept(store, message("u0", recipient="+4477000000"))
    up, down = SlotWaitConnector("up"), SlotWaitConnector("down", up=False)
    clock = Clock(NOW + 10)
    router = Router([Route("+44", ("down",)), Route("+86", ("up",))], [])
    d = _dispatcher(store, {"up": up, "down": down}, router, clock)
    claims = _Claims(store)
    task = asyncio.create_task(d.run())
    try:
        assert await until(lambda: claims.calls >= 10)
        assert claims.returned == [] and up.left == []
        d.reconfigure(Router([Route("+44", ("down",)), Route("+4420", ("up",))], []), d.smscs)

        async def sent() -> bool:
            return sorted(up.left) == ["b00000/1", "b00001/1", "b00002/1"]

        assert await _until(sent)
        calls = claims.calls
        assert await until(lambda: claims.calls >= calls + 10)
        assert "u0" not in claims.returned  # re-parked under "+44"
    finally:
        await d.stop(0.5)
        task.cancel()
        claims.restore()


# -------------------------------------------------------------------------- the park keys (pure)


def _router() -> Router:
    return Router(
        [Route("+44", ("uk1", "uk2")), Route("+4420", ("ldn",)), Route("+86", ("cn",))],
        ["dflt"],
    )


def test_route_key_is_the_longest_matching_prefix_or_default() -> None:
    r = _router()
    assert r.route_key("+442012345678") == "+4420"
    assert r.route_key("+447700900000") == "+44"
    assert r.route_key("+4") == DEFAULT_KEY
    assert r.route_key("+12125550000") == DEFAULT_KEY
    assert r.keys() == ["+44", "+4420", "+86", DEFAULT_KEY]


def test_park_key_only_when_every_candidate_is_down() -> None:
    r = _router()
    assert r.park_key("+447700900000", lambda s: False) == "+44"
    assert r.park_key("+447700900000", {"uk2"}.__contains__) is None
    assert r.park_key("+447700900000", {"dflt"}.__contains__) is None  # fails over to default
    assert r.park_key("+442012345678", {"uk1"}.__contains__) == "+4420"  # no shorter fallback
    assert r.park_key("+12125550000", {"uk1", "ldn", "cn"}.__contains__) == DEFAULT_KEY
    assert Router([], []).park_key("+12125550000", lambda s: True) == DEFAULT_KEY  # no SMSC


def test_parker_snapshots_the_live_smscs() -> None:
    r = _router()
    assert r.parker(frozenset({"dflt"})) is None  # every route fails over to the default
    assert r.parker(frozenset({"uk1", "ldn", "cn", "dflt"})) is None
    park = r.parker(frozenset({"cn"}))
    assert park is not None
    assert park("+447700900000") == "+44"
    assert park("+442012345678") == "+4420"
    assert park("+8613800138000") is None
    assert park("+12125550000") == DEFAULT_KEY


def test_routable_keys() -> None:
    r = _router()
    assert r.routable_keys(lambda s: False) == []
    assert r.routable_keys({"uk1"}.__contains__) == ["+44"]
    assert r.routable_keys({"dflt"}.__contains__) == ["+44", "+4420", "+86", DEFAULT_KEY]


def test_changed_keys_after_a_reload() -> None:
    old = _router()
    assert Router.changed_keys(old, _router()) == set()
    same_but_reordered = Router(
        [Route("+86", ("cn",)), Route("+4420", ("ldn",)), Route("+44", ("uk1", "uk2"))], ["dflt"]
    )
    assert Router.changed_keys(old, same_but_reordered) == set()
    # A new longer prefix takes numbers of "+44" (and a new prefix may take numbers that went
    # to the default route).
    added = Router(
        [
            Route("+44", ("uk1", "uk2")),
            Route("+4420", ("ldn",)),
            Route("+86", ("cn",)),
            Route("+447", ("m",)),
        ],
        ["dflt"],
    )
    assert Router.changed_keys(old, added) == {"+44", DEFAULT_KEY}
    removed = Router([Route("+44", ("uk1", "uk2")), Route("+86", ("cn",))], ["dflt"])
    assert Router.changed_keys(old, removed) == {"+4420"}
    reordered_smscs = Router(
        [Route("+44", ("uk2", "uk1")), Route("+4420", ("ldn",)), Route("+86", ("cn",))], ["dflt"]
    )
    assert Router.changed_keys(old, reordered_smscs) == {"+44"}
    new_default = Router(
        [Route("+44", ("uk1", "uk2")), Route("+4420", ("ldn",)), Route("+86", ("cn",))], ["d2"]
    )
    assert Router.changed_keys(old, new_default) == {"+44", "+4420", "+86", DEFAULT_KEY}
