"""Parking: a queued message whose route has no SMSC up is parked by the claim that meets it
(`q_park`, q_not_before pushed out by PARK_MS, PARK_AGAIN_MS when found still down) instead of
being claimed and released ahead of later messages for working routes; a claim takes what is
parked under the routes with an SMSC up on its instance, and the dispatcher un-parks the routes a
reload changed. On both store engines."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge.pipeline.dispatcher import Dispatcher
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
    again, for PARK_AGAIN_MS, if its route is still down). A claimed message is no longer
    parked."""
    from bridge.store.base import PARK_AGAIN_MS

    await store.create_account(account())
    await _backlog(store, 3)
    assert await _ids(store, 10, NOW, park_uk) == []
    assert await _ids(store, 10, NOW + PARK_MS, park_uk) == []  # still down: parked again
    assert await _ids(store, 10, NOW + PARK_MS + PARK_AGAIN_MS - 1) == []
    claimed = await _ids(store, 10, NOW + PARK_MS + PARK_AGAIN_MS)
    assert claimed == ["b00000", "b00001", "b00002"]
    at = NOW + PARK_MS + PARK_AGAIN_MS + 1
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
    # A steady 10 ms poll (idle_max_s): these tests count claims, and flip a connector up
    # without the daemon's wake on a bind change (test_dispatcher_idle covers the backoff).
    return Dispatcher(
        store, conns, router, {n: _smsc(n) for n in conns},  # type: ignore[arg-type]
        instance="inst-1", idle_s=0.01, idle_max_s=0.01, in_flight_windows=2, clock=clock,
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
    """While "down" is down its backlog is parked, never claimed; when it binds, the next claims
    take what is parked under its route and the backlog goes out (the clock stands still:
    PARK_MS cannot be what freed it)."""
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


async def test_what_another_instance_parked_is_claimed_at_once(store: Store) -> None:
    """On PostgreSQL another instance without a bind to "up" parks its messages; this instance,
    which has one, claims them at once though no bind of its own came up (the clock stands
    still: neither PARK_MS nor an un-park frees them)."""
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

        async def sent() -> bool:
            return sorted(up.left) == ["o0/1", "o1/1", "o2/1"]

        assert await _until(sent)
        assert other == [[]]
        assert clock.ms == NOW
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


# -------------------------------------------------------------------------- review fixes


async def test_what_another_instance_keeps_parking_is_sent_by_the_one_with_the_bind(
    store: Store,
) -> None:
    """PostgreSQL, two instances: "+44"'s only bind is here, the other instance has none for it
    and claims as often as this one. Whatever this instance un-parks, the other's next claim
    parks again before this one's claim can take it: the backlog went out only in the few rows
    this instance's claim got first, then waited for the next un-park (5 s), and each un-park
    rewrote every parked row. A claim takes what is parked under a route it can send on."""
    await store.create_account(account())
    await _backlog(store, 200)
    claims = _Claims(store)
    clock = Clock(NOW + 10)

    async def other_instance_claims(_call: int) -> None:
        clock.ms += 100  # time passes: periodic un-parks come due, and so does PARK_MS
        work = await claims.real("inst-2", 10, clock.ms, LEASE, park=park_uk)
        assert work == []

    claims.before = other_instance_claims
    uk = SlotWaitConnector("uk")
    d = _dispatcher(store, {"uk": uk}, Router([Route("+44", ("uk",))], []), clock)
    task = asyncio.create_task(d.run())
    try:

        async def sent() -> bool:
            return len(uk.left) == 200

        assert await _until(sent), f"{len(uk.left)} of 200 sent"
        assert sorted(uk.left) == [f"b{i:05d}/1" for i in range(200)]
    finally:
        await d.stop(0.5)
        task.cancel()
        claims.restore()


async def test_a_claim_takes_what_is_parked_under_a_route_it_can_send_on(store: Store) -> None:
    await store.create_account(account())
    await _backlog(store, 6)
    await accept(store, message("c0", recipient="+12125550000", at=NOW + 1))
    assert await _ids(store, 10, NOW + 2, lambda r: "+44" if r.startswith("+44") else "+1") == []
    # Parked (due again only at NOW + 2 + PARK_MS), yet a claim that can send on "+44" takes
    # them, and not those of a route it cannot send on.
    # (Parked ones come in the parked index's order: by key, then as stored.)
    got = await store.claim("inst-1", 4, NOW + 3, LEASE, park=None, routable=["+44", "+33"])
    first = {w.id for w in got}
    assert len(first) == 4
    got = await store.claim("inst-1", 10, NOW + 3, LEASE, park=None, routable=["+44"])
    assert first | {w.id for w in got} == {f"b{i:05d}" for i in range(6)}
    assert await store.claim("inst-1", 10, NOW + 3, LEASE, routable=["+44"]) == []
    # one whose route changed meanwhile is parked under its route's key when that is down
    got = await store.claim("inst-1", 10, NOW + 3, LEASE, park=lambda r: "+12", routable=["+1"])
    assert got == []
    assert await store.unpark(["+1"], NOW + 4) == 0
    assert await store.unpark(["+12"], NOW + 4) == 1


async def test_parked_messages_of_a_live_route_get_half_a_busy_claim(store: Store) -> None:
    """Taken before the due ones, parked messages would hold up every account's newer messages
    until the backlog is gone; taken after them only, they would wait as long as newer ones
    keep the claims full. Half of a claim each, the rest to whichever has more."""
    await store.create_account(account())
    await _backlog(store, 20)
    assert await _ids(store, 10, NOW, park_uk) == []
    await accept(store, *(message(f"n{i:02d}", at=NOW + 1) for i in range(8)))
    taken: set[str] = set()

    async def claim(limit: int, now: int) -> tuple[list[str], list[str]]:
        got = [w.id for w in await store.claim("inst-1", limit, now, LEASE, routable=["+44"])]
        assert not taken & set(got)
        taken.update(got)
        return sorted(m for m in got if m[0] == "b"), sorted(m for m in got if m[0] != "b")

    parked, due = await claim(10, NOW + 2)
    assert len(parked) == 5 and due == [f"n{i:02d}" for i in range(5)]
    # fewer due messages than half: parked ones fill the rest
    parked, due = await claim(10, NOW + 2)
    assert len(parked) == 7 and due == ["n05", "n06", "n07"]
    # fewer parked than half: due ones fill the rest (a claim of one takes a due one)
    await accept(store, *(message(f"m{i:02d}", at=NOW + 3) for i in range(8)))
    assert await claim(1, NOW + 4) == ([], ["m00"])
    parked, due = await claim(20, NOW + 4)
    assert len(parked) == 8 and due == [f"m{i:02d}" for i in range(1, 8)]
    assert taken >= {f"b{i:05d}" for i in range(20)}


async def test_a_route_still_down_is_parked_again_for_longer(store: Store) -> None:
    """The safety valve brings a parked message back after PARK_MS; found still down under the
    same key it is parked for PARK_AGAIN_MS. Each parked row came back every PARK_MS before: a
    million-row backlog for a route down for hours was rewritten ~17,000 rows a second, and
    claims spent their scan on it instead of on messages for working routes."""
    from bridge.store.base import PARK_AGAIN_MS as again

    assert again >= 10 * PARK_MS
    await store.create_account(account())
    await _backlog(store, 3)
    await accept(store, message("u0", recipient="+4477000000"))
    assert await _ids(store, 10, NOW, park_uk) == []
    t = NOW + PARK_MS
    # "+4477" has its own route now (down too): u0 is parked under a new key, for PARK_MS

    def park(recipient: str) -> str | None:
        return "+4477" if recipient.startswith("+4477") else park_uk(recipient)

    assert await _ids(store, 10, t, park) == []
    assert await _ids(store, 10, t + PARK_MS - 1) == []
    assert await _ids(store, 10, t + PARK_MS) == ["u0"]
    assert await _ids(store, 10, t + again - 1) == []
    assert await _ids(store, 10, t + again) == ["b00000", "b00001", "b00002"]


async def test_unpark_changes_a_chunk_per_transaction(
    store: Store, engine: engines.EngineHandle, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reload un-parking a large backlog: one UPDATE of a million rows held SQLite's write
    lock (every accept) for seconds; a chunk per transaction lets the others in between."""
    from bridge.store import postgres, sqlite

    for module in (sqlite, postgres):  # where each engine's un-park reads it
        monkeypatch.setattr(module, "UNPARK_CHUNK", 7)
    await store.create_account(account())
    await _backlog(store, 30)
    assert await _ids(store, 100, NOW, park_uk) == []
    before = engine.commits(store) if engine.commits is not None else 0
    assert await store.unpark(["+44"], NOW + 1) == 30
    if engine.commits is not None:
        assert engine.commits(store) - before == 5  # 7 + 7 + 7 + 7 + 2
    assert await store.unpark(["+44"], NOW + 1) == 0
    assert len(await _ids(store, 100, NOW + 1)) == 30
