"""Adversarial review of the dispatch side (dispatcher, connector, claims, parking, expiry,
retries, shutdown). Each test pins one defect and fails on the code as reviewed.

Findings:

1. test_a_slow_smsc_does_not_starve_another_smscs_route: the dispatcher's in-flight limit is
   one pool for all SMSCs (`in_flight_windows` x the sum of the live windows), and a claim takes
   the oldest due messages whatever their route. A backlog for a slow SMSC (its contracted `tps`,
   or one pausing on throttles) fills the whole pool while it waits at that SMSC's connector, so
   another route's messages are not even claimed: every carrier runs at the slowest one's rate
   (Connector.window_size says "the dispatcher keeps at most this many messages in flight on
   this SMSC"; it does not).
2. test_sigterm_mid_message_records_the_parts_already_accepted: a multi-part message whose later
   part is still unanswered when the shutdown grace ends is cancelled with the results of its
   earlier, *accepted* parts unrecorded (they are written only after the whole message). After
   the restart those parts are queued again and resent (the handset gets them twice; their first
   receipts match nothing).
3. test_a_parked_message_that_was_tried_before_still_expires: the expiry sweep skips a message
   with q_attempts > 0 until its q_not_before (meant for the hold after a try), and parking moves
   q_not_before 60 s / 10 min out. The claims (every 50 ms) re-park such a message the moment it
   is due, well before the 5 s sweep sees it: while its route stays down it never expires.
4. test_unanswered_attempts_are_counted_apart_from_other_errors: MAX_UNANSWERED_ATTEMPTS
   ("resend them at most this many claims") is compared with the message's claim count, so two
   ESME_RSYSERR tries and then one timeout write the message off as `unknown` after its first
   unanswered submit (the Jasmin flaw lessons-from-peers warns about: one budget across error
   types).
5. test_a_claim_whose_results_could_not_be_written_is_taken_back: when writing a message's
   results fails past the dispatcher's retries (~9 s of a busy / full disk), the items are
   dropped and the message stays `claimed`. On SQLite nothing ever takes an expired lease back
   (`reclaim` is a no-op): it is never sent, never expires, stays in the queue depth until a
   restart, which then resends parts that were accepted.
6. test_the_rest_of_a_message_follows_its_first_parts_smsc: a message whose part 1 was accepted
   by SMSC A and whose part 2 was lost with A's link is claimed again and its remaining parts go
   to the route's next SMSC B: one concatenated message split over two carriers (README note 2:
   "a message's parts always go out in order on one bind").

Fixed: 1 (an SMSC holding its share of messages in flight is left out of claims like a down
one), 2 (send_message fills the caller's outcome list as answers come), 3 (the sweep expires
parked messages), 4 (q_unanswered, its own count), 5 (SQLite's reclaim takes back expired
leases), 6 (WorkMessage.smsc).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import types
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

import bridge.pipeline.dispatcher as dispatcher_mod
from bridge.config import SimConfig, SmscConfig
from bridge.pipeline.dispatcher import Dispatcher
from bridge.sim.server import SimSmsc
from bridge.smpp import constants as C
from bridge.smpp.codec import Pdu
from bridge.smpp.connector import Connector
from bridge.smpp.router import Route, Router
from bridge.store.base import PARK_AGAIN_MS, PARK_MS, Store
from bridge.store.models import Release

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from tests.integration.test_smpp_connector import (  # noqa: E402
    Conn,
    FakeSmsc,
    no_deliver,
    smsc_cfg,
)
from tests.integration.test_store import (  # noqa: E402
    LEASE,
    MIN,
    NOW,
    TIMEOUT,
    accept,
    account,
    get,
    message,
)

engine = engines.engine
store = engines.store

sqlite_only = pytest.mark.parametrize("engine", ["sqlite"], indirect=True)

UK = "+4420000000"
CN = "+8613800138000"


class StepClock:
    """A clock that moves `step_s` on every reading: every back-off is over by the next claim."""

    def __init__(self, start_ms: int, step_s: float) -> None:
        self.t = start_ms / 1000
        self.step = step_s

    def __call__(self) -> float:
        self.t += self.step
        return self.t


@contextlib.asynccontextmanager
async def connector(cfg: SmscConfig, **kw: Any) -> AsyncIterator[Connector]:
    conn = Connector(cfg, no_deliver, **kw)
    await conn.start()
    try:
        yield conn
    finally:
        await conn.stop(grace_s=0.2)


async def until(pred: Callable[[], Any], within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return True
        await asyncio.sleep(0.02)
    return False


async def state(store: Store, mid: str) -> str:
    return (await get(store, mid)).state


# -------------------------------------------------------------------------------------- 1


@sqlite_only
async def test_a_slow_smsc_does_not_starve_another_smscs_route(store: Store) -> None:
    """Two carriers, each on its own route, both simulated over TCP: `slow` may take 2
    submits a second (its contract), `fast` has no limit. A backlog for `slow` accepted a moment
    before ten messages for `fast` must not hold those ten up for the 30 s the backlog takes."""
    await store.create_account(account())
    await accept(store, *(message(f"uk{i:03d}", recipient=UK, at=NOW) for i in range(60)))
    await accept(store, *(message(f"cn{i:03d}", recipient=CN, at=NOW + 1) for i in range(10)))
    sims = [SimSmsc(SimConfig(port=0, control_port=0, system_id="esme", password=None,
                              receipt_delay_ms=0)) for _ in range(2)]  # fmt: skip
    for s in sims:
        await s.start()
    slow_cfg = smsc_cfg(sims[0].port, name="slow", window=5, tps=2)
    fast_cfg = smsc_cfg(sims[1].port, name="fast", window=5)
    try:
        async with connector(slow_cfg) as slow, connector(fast_cfg) as fast:
            assert await slow.wait_up(30.0) and await fast.wait_up(30.0)
            d = Dispatcher(
                store,
                {"slow": slow, "fast": fast},
                Router([Route("+44", ("slow",)), Route("+86", ("fast",))], []),
                {"slow": slow_cfg, "fast": fast_cfg},
                instance="inst-1",
                idle_s=0.01,
            )
            task = asyncio.create_task(d.run())
            try:

                async def fast_done() -> bool:
                    return all([await state(store, f"cn{i:03d}") == "sent" for i in range(10)])

                done = await until(fast_done, 4.0)
                uk_sent = sum([await state(store, f"uk{i:03d}") == "sent" for i in range(60)])
            finally:
                await d.stop(0.2)
                task.cancel()
    finally:
        for s in sims:
            await s.stop()
    assert done, (
        f"the fast route's 10 messages were not sent within 4 s "
        f"(fast SMSC got {sims[1].counters['submit_ok']} submits, the slow one "
        f"{sims[0].counters['submit_ok']}; {uk_sent} slow-route messages sent)"
    )


# -------------------------------------------------------------------------------------- 2


@sqlite_only
async def test_sigterm_mid_message_records_the_parts_already_accepted(store: Store) -> None:
    """Part 1 of 2 is accepted (with its id); part 2 is on the wire, unanswered, when the grace
    ends. Part 1 reached the SMSC and its receipt will come with that id: it must be recorded
    `sent`, not queued again to be resent after the restart."""
    await store.create_account(account())
    await accept(store, message("m0", parts=2))
    smsc = FakeSmsc()
    await smsc.start()

    def hook(conn: Conn, pdu: Pdu) -> int | None:
        return 0 if pdu.body.short_message.endswith(b"/1") else None  # part 2: held

    smsc.on_submit = hook  # type: ignore[assignment]
    try:
        cfg = smsc_cfg(smsc.port, response_timeout_s=5.0)
        async with connector(cfg) as conn:
            assert await conn.wait_up(30.0)
            d = Dispatcher(
                store, {"t1": conn}, Router([], ["t1"]), {"t1": cfg},
                instance="inst-1", idle_s=0.01,
            )  # fmt: skip
            task = asyncio.create_task(d.run())
            assert await until(lambda: len(smsc.submits()) == 2, 3.0)
            await d.stop(0.3)  # SIGTERM: the grace passes with part 2 unanswered
            task.cancel()
    finally:
        await smsc.kill()
    rec = await get(store, "m0")
    part1 = rec.segment_rows[0]
    # The restart's recovery then hands part 1 out again:
    await store.recover("inst-2", NOW + MIN, frozenset())
    (again,) = await store.claim("inst-2", 10, NOW + 2 * MIN, LEASE)
    resent = [s.seq for s in again.segments]
    assert part1.state == "sent" and part1.smsc_msg_id, (
        f"part 1 was accepted with an id but is recorded {part1.state!r}; "
        f"after the restart parts {resent} are sent again"
    )
    assert resent == [2]


# -------------------------------------------------------------------------------------- 3


async def test_a_parked_message_that_was_tried_before_still_expires(store: Store) -> None:
    """A message tried once (a transient error), then parked because its route went down. Its
    validity (5 min) passes while parked; the daemon claims every 50 ms and sweeps every 5 s,
    so the claims meet it first each time it comes due. It must still end `expired`."""

    def park_uk(recipient: str) -> str | None:
        return "+44" if recipient.startswith("+44") else None

    await store.create_account(account(status_url="https://cb.example/st"))
    await accept(store, message("m0", recipient=UK, expires_at=NOW + 5 * MIN))
    (work,) = await store.claim("inst-1", 10, NOW, LEASE)
    assert work.attempts == 1
    # ESME_RSYSERR after the connector's quick retries: released for 5 s, the attempt counted.
    await store.record_submits([], [Release("m0", NOW + 5_000, count_attempt=True)], NOW)
    # The route is down now: the claim at NOW+10s parks it for PARK_MS.
    t = NOW + 10_000
    assert await store.claim("inst-1", 10, t, LEASE, park=park_uk) == []
    # Due again at t+PARK_MS: a claim (not the sweep) meets it first and parks it for longer.
    t += PARK_MS
    assert await store.claim("inst-1", 10, t, LEASE, park=park_uk) == []
    # Past its validity: the sweep runs.
    await store.sweep(NOW + 6 * MIN, TIMEOUT)
    await store.sweep(t + PARK_AGAIN_MS - 1, TIMEOUT)
    rec = await get(store, "m0")
    assert (rec.state, rec.error_code) == ("expired", "VALIDITY_EXPIRED"), (
        f"validity ended at +5 min; at +{(t + PARK_AGAIN_MS - 1 - NOW) // MIN} min the message "
        f"is still {rec.state!r} (parked again each time it came due)"
    )


# -------------------------------------------------------------------------------------- 4


@sqlite_only
async def test_unanswered_attempts_are_counted_apart_from_other_errors(store: Store) -> None:
    """The SMSC answers ESME_RSYSERR twice, then does not answer once (timeout), then accepts.
    "A submit left unanswered ... the dispatcher resends it after a pause ... three attempts at
    most": one unanswered attempt must not use up a budget spent on other errors."""
    await store.create_account(account())
    await accept(store, message("m0"))
    smsc = FakeSmsc()
    await smsc.start()
    n = [0]

    def hook(conn: Conn, pdu: Pdu) -> int | None:
        n[0] += 1
        if n[0] <= 2:
            return C.ESME_RSYSERR
        if n[0] == 3:
            return None  # never answered: a timeout
        return 0

    smsc.on_submit = hook  # type: ignore[assignment]
    try:
        cfg = smsc_cfg(smsc.port, response_timeout_s=0.2, max_transient_retries=0)
        async with connector(cfg) as conn:
            assert await conn.wait_up(30.0)
            d = Dispatcher(
                store, {"t1": conn}, Router([], ["t1"]), {"t1": cfg},
                instance="inst-1", idle_s=0.01, clock=StepClock(NOW, 60.0),
            )  # fmt: skip
            task = asyncio.create_task(d.run())

            async def settled() -> bool:
                return n[0] >= 4 or await state(store, "m0") in ("sent", "unknown", "failed")

            await until(settled, 5.0)
            await asyncio.sleep(0.1)
            await d.stop(0.3)
            task.cancel()
    finally:
        await smsc.kill()
    rec = await get(store, "m0")
    assert rec.state == "sent", (
        f"after 2 x ESME_RSYSERR and 1 timeout the message is {rec.state!r} "
        f"({[(s.state, s.error_code) for s in rec.segment_rows]}), {n[0]} submits"
    )
    assert n[0] == 4


# -------------------------------------------------------------------------------------- 5


@sqlite_only
async def test_a_claim_whose_results_could_not_be_written_is_taken_back(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store refuses writes (disk full, locked past the busy timeout) just as a message's
    result is to be written, and the daemon stops before it is back. Once the store is back,
    the message must not stay `claimed` for ever: after its lease it goes back to the queue (as
    PostgreSQL's reclaim does), here through the daemon's 5-second reclaim step."""
    real_sleep = asyncio.sleep

    async def quick_sleep(delay: float, result: Any = None) -> Any:
        return await real_sleep(0, result)  # the dispatcher's retry delays (~9 s), shortened

    fast = types.SimpleNamespace(**{k: getattr(asyncio, k) for k in dir(asyncio) if k[0] != "_"})
    fast.sleep = quick_sleep
    monkeypatch.setattr(dispatcher_mod, "asyncio", fast)

    await store.create_account(account())
    await accept(store, message("m0"))
    real_record = store.record_submits
    failing = [True]

    async def record_submits(*a: Any, **kw: Any) -> int:
        if failing[0]:
            raise OSError(28, "No space left on device")
        return await real_record(*a, **kw)

    store.record_submits = record_submits  # type: ignore[method-assign]
    smsc = FakeSmsc()
    await smsc.start()
    try:
        cfg = smsc_cfg(smsc.port)
        async with connector(cfg) as conn:
            assert await conn.wait_up(30.0)
            d = Dispatcher(
                store, {"t1": conn}, Router([], ["t1"]), {"t1": cfg},
                instance="inst-1", idle_s=0.01, clock=lambda: NOW / 1000,
            )  # fmt: skip
            task = asyncio.create_task(d.run())
            assert await until(lambda: bool(smsc.submits()), 3.0)
            await real_sleep(0.2)
            # Session 16: while the store refuses, the result waits for it (dropped after ~9 s,
            # the SMSC's id was lost and the part went out again after the lease).
            assert d.inflight == 1
            await d.stop(0.3)  # stopping with the store still down: now the wait ends
            task.cancel()
    finally:
        await smsc.kill()
    failing[0] = False  # the store is back
    assert await state(store, "m0") == "queued"
    later = NOW + LEASE + 10_000
    await store.reclaim(later, frozenset())  # what the daemon's sweeper runs every 5 s
    await store.sweep(later, TIMEOUT)
    again = await store.claim("inst-1", 10, later, LEASE)
    depth = await store.queue_depth()
    assert [w.id for w in again] == ["m0"], (
        f"the message is still claimed by a dispatcher that forgot it, past its lease "
        f"(queue depth {depth}): never sent nor ended until a restart"
    )


# -------------------------------------------------------------------------------------- 6


@sqlite_only
async def test_the_rest_of_a_message_follows_its_first_parts_smsc(store: Store) -> None:
    """Route: A, then B. A accepts part 1 of 3, then dies with part 2 on the wire. Parts 2 and 3
    must not go to B: the handset would get one message cut over two carriers."""
    await store.create_account(account())
    await accept(store, message("m0", parts=3))
    a, b = FakeSmsc(), FakeSmsc()
    await a.start()
    await b.start()

    def a_hook(conn: Conn, pdu: Pdu) -> int | None:
        if pdu.body.short_message.endswith(b"/1"):
            return 0
        asyncio.get_running_loop().create_task(a.kill())  # A crashes with part 2 on its link
        return None

    a.on_submit = a_hook  # type: ignore[assignment]
    cfg_a = smsc_cfg(a.port, name="A", response_timeout_s=5.0)
    cfg_b = smsc_cfg(b.port, name="B")
    try:
        async with connector(cfg_a) as ca, connector(cfg_b) as cb:
            assert await ca.wait_up(30.0) and await cb.wait_up(30.0)
            d = Dispatcher(
                store, {"A": ca, "B": cb}, Router([], ["A", "B"]), {"A": cfg_a, "B": cfg_b},
                instance="inst-1", idle_s=0.01, clock=StepClock(NOW, 60.0),
            )  # fmt: skip
            task = asyncio.create_task(d.run())

            async def settled() -> bool:
                return await state(store, "m0") != "queued" or len(b.submits()) >= 2

            await until(settled, 4.0)
            await d.stop(0.3)
            task.cancel()
    finally:
        await a.kill()
        await b.kill()
    rec = await get(store, "m0")
    where = [(s.seq, s.state, s.smsc) for s in rec.segment_rows]
    assert b.submits() == [], f"parts {b.submits()} of m0 went to B after part 1 went to A: {where}"
