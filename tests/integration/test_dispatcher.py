"""The dispatcher against a real store: how many messages it keeps in flight per window slot.

The connector is a stand-in that holds every message until the test lets it go, so what is
measured is the dispatcher's own claiming, not an SMSC's speed.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from bridge.config import THROTTLE_PART_RETRIES, THROTTLE_REQUEUE_S, PipelineConfig, SmscConfig
from bridge.pipeline.dispatcher import Dispatcher
from bridge.smpp import constants as C
from bridge.smpp.codec import ShortMessage
from bridge.smpp.connector import SubmitOutcome
from bridge.smpp.router import Router
from bridge.store.base import Store
from bridge.store.models import Release

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from tests.connectors import BeforeFirst, Contexts, StandIn, dispatcher  # noqa: E402
from tests.integration.test_smpp_connector import FakeSmsc, running, smsc_cfg  # noqa: E402
from tests.integration.test_store import (  # noqa: E402
    LEASE,
    NOW,
    accept,
    account,
    get,
    message,
    sent,
)

engine = engines.engine
store = engines.store

WINDOW = 10


class HeldConnector(StandIn):
    """Accepts every part but answers only when released; counts messages held at once."""

    def __init__(self) -> None:
        super().__init__("smscA", WINDOW)
        self.release = asyncio.Event()
        self.held = 0
        self.most_held = 0

    async def sending(
        self,
        parts: Sequence[ShortMessage],
        before_first: BeforeFirst,
        deadline: float | None,
        contexts: Contexts,
    ) -> list[SubmitOutcome] | None:
        if before_first is not None:
            await before_first()
        self.held += 1
        self.most_held = max(self.most_held, self.held)
        try:
            await self.release.wait()
        finally:
            self.held -= 1
        return None


async def _in_flight(store: Store, n_messages: int, windows: int) -> tuple[int, HeldConnector]:
    await store.create_account(account())
    for i in range(n_messages):
        await accept(store, message(f"m{i:03d}", parts=3))
    conn = HeldConnector()
    d = dispatcher(
        store,
        conn,
        key="smscA",
        in_flight_windows=windows,
        idle_s=0.01,
        clock=lambda: NOW / 1000,
    )
    task = asyncio.create_task(d.run())
    try:
        for _ in range(200):  # until the dispatcher stops claiming
            await asyncio.sleep(0.01)
            if conn.held == min(n_messages, windows * WINDOW) and d.inflight == conn.held:
                break
        await asyncio.sleep(0.05)  # a further claim would land here
        most = conn.most_held
        conn.release.set()
        for _ in range(500):
            await asyncio.sleep(0.01)
            states = {(await get(store, f"m{i:03d}")).state for i in range(n_messages)}
            if states == {"sent"}:
                break
        assert states == {"sent"}, states
        return most, conn
    finally:
        await d.stop(1.0)
        task.cancel()


@pytest.mark.parametrize("windows", [1, 2, 3])
async def test_messages_in_flight_are_windows_times_the_window(store: Store, windows: int) -> None:
    most, _conn = await _in_flight(store, 45, windows)
    assert most == windows * WINDOW


async def test_fewer_messages_than_the_limit_all_go_at_once(store: Store) -> None:
    most, _conn = await _in_flight(store, 7, 2)
    assert most == 7


def _dispatcher(store: Store, connector: object, windows: int, **smsc: object) -> Dispatcher:
    return dispatcher(
        store,
        connector,
        smsc=smsc,
        in_flight_windows=windows,
        idle_s=0.01,
        clock=lambda: NOW / 1000,
    )


async def _two_on_the_wire_then(store: Store, *, stop: bool) -> set[str]:
    """Runs the dispatcher (two windows of 2, `in_flight_on_restart: unknown`) against an SMSC
    that never answers, until two messages are on the wire and two wait for a window slot; then
    a SIGTERM whose grace runs out (`stop`) or a kill -9 (nothing more reaches the store).
    Returns the ids whose first part reached the SMSC."""
    smsc = FakeSmsc()
    await smsc.start()
    smsc.on_submit = lambda conn, pdu: None
    try:
        async with running(smsc_cfg(smsc.port, window=2)) as conn:
            assert await conn.wait_up(30.0)
            d = _dispatcher(store, conn, 2, window=2, in_flight_on_restart="unknown")
            task = asyncio.create_task(d.run())
            for _ in range(300):
                await asyncio.sleep(0.01)
                if d.inflight == 4 and len(smsc.held) == 2:
                    break
            assert (d.inflight, len(smsc.held)) == (4, 2)
            if stop:
                await d.stop(0.2)
            task.cancel()
            if not stop:
                for t in list(d._tasks.values()):
                    t.cancel()
                await asyncio.sleep(0.05)
        return {p.body.short_message.decode().split("/")[0] for _c, p in smsc.received(4)}
    finally:
        await smsc.kill()


async def test_stop_hands_back_the_messages_waiting_for_a_slot(store: Store) -> None:
    """SIGTERM with two windows in flight: the messages on the wire get the grace, the ones still
    waiting for a window slot go back to the queue at once. They must not stay claimed: a
    restart would resend them, or on an `in_flight_on_restart: unknown` SMSC mark them unknown
    though they never left (z9 below was partly sent by an earlier claim, so its SMSC is set)."""
    await store.create_account(account())
    await accept(store, message("z9", parts=3))
    assert [w.id for w in await store.claim("inst-1", 10, NOW, LEASE)] == ["z9"]
    await store.record_submits(
        [sent("z9", 1, smsc="t1")], [Release("z9", NOW, count_attempt=True)], NOW
    )
    # With z9, the two windows' worth: all claimed, two on the wire. Due before z9's retry
    # (claims go oldest first: by due time, then acceptance order), so z9 waits.
    for i in range(3):
        await accept(store, message(f"m{i}", at=NOW - 1))
    on_wire = await _two_on_the_wire_then(store, stop=True)
    assert len(on_wire) == 2 and "z9" not in on_wire  # z9 waited
    out = await store.recover("inst-1", NOW + 1, frozenset({"t1"}))
    assert sum(out.values()) == 2  # only the two that may have left were still claimed
    for mid in ("z9", "m0", "m1", "m2"):
        rec = await get(store, mid)
        unknown = [s.seq for s in rec.segment_rows if s.error_code == "IN_FLIGHT_AT_RESTART"]
        assert mid in on_wire or not unknown, (mid, unknown, on_wire)
    again = {w.id for w in await store.claim("inst-2", 10, NOW + 10_000, LEASE)}
    assert again >= {"z9", "m0", "m1", "m2"} - on_wire  # all sendable again


async def test_a_claim_under_way_at_stop_is_handed_back(store: Store) -> None:
    """stop() while the dispatcher waits for its claim: the claimed messages are released, not
    sent after stop() returned."""
    await store.create_account(account())
    for i in range(5):
        await accept(store, message(f"m{i}"))
    claim = store.claim

    async def slow_claim(*args: object, **kw: object) -> object:
        await asyncio.sleep(0.1)
        return await claim(*args, **kw)  # type: ignore[arg-type]

    store.claim = slow_claim  # type: ignore[method-assign]
    conn = HeldConnector()
    d = _dispatcher(store, conn, 2, window=WINDOW)
    task = asyncio.create_task(d.run())
    await asyncio.sleep(0.05)  # the claim is under way
    await d.stop(1.0)
    await asyncio.sleep(0.2)
    task.cancel()
    assert conn.most_held == 0 and d.inflight == 0
    store.claim = claim  # type: ignore[method-assign]
    assert len(await store.claim("inst-2", 10, NOW + 10_000, LEASE)) == 5


async def test_a_reload_applies_the_pipeline_knobs(store: Store) -> None:
    conn = HeldConnector()
    d = _dispatcher(store, conn, 1, window=WINDOW)
    assert d.capacity() == WINDOW
    smscs = {"t1": SmscConfig(name="t1", system_id="t", password="t", window=WINDOW)}
    d.reconfigure(
        Router([], ["t1"]),
        smscs,
        PipelineConfig(in_flight_windows=3, claim_batch=7, dispatch_idle_ms=20),
    )
    assert (d.capacity(), d.claim_batch, d.idle_s) == (3 * WINDOW, 7, 0.02)


async def test_a_crash_never_resends_to_an_unknown_smsc_what_may_have_left(store: Store) -> None:
    """`in_flight_on_restart: unknown`: a part that may have reached the SMSC is never resent,
    on a message's first attempt too (the route is recorded as its first part leaves, since no
    answer was recorded yet), while a message that was still waiting for a window slot was
    never sent and is requeued, not written off."""
    await store.create_account(account())
    for i in range(4):
        await accept(store, message(f"m{i}"))
    on_wire = await _two_on_the_wire_then(store, stop=False)
    assert len(on_wire) == 2
    out = await store.recover("inst-1", NOW + 1, frozenset({"t1"}))
    assert out == {"requeued": 2, "marked_unknown": 2}
    for mid in ("m0", "m1", "m2", "m3"):
        rec = await get(store, mid)
        unknown = [s.seq for s in rec.segment_rows if s.error_code == "IN_FLIGHT_AT_RESTART"]
        assert bool(unknown) == (mid in on_wire), (mid, unknown, on_wire)
    again = {w.id for w in await store.claim("inst-2", 10, NOW + 10_000, LEASE)}
    assert again == {"m0", "m1", "m2", "m3"} - on_wire


def _unanswered_first(smsc: FakeSmsc) -> None:
    seen: list[int] = []

    def hook(conn: object, pdu: object) -> int | None:
        seen.append(1)
        return None if len(seen) == 1 else 0  # the first submit_sm gets no answer

    smsc.on_submit = hook  # type: ignore[assignment]


async def test_an_unknown_mode_smsc_never_gets_an_unanswered_part_twice(store: Store) -> None:
    """No answer to a submit (timeout): the SMSC may have it. The connector's quick retry would
    send it again; to an `in_flight_on_restart: unknown` SMSC the part is marked unknown."""
    await store.create_account(account())
    await accept(store, message("m0"))
    smsc = FakeSmsc()
    await smsc.start()
    _unanswered_first(smsc)
    try:
        cfg = smsc_cfg(smsc.port, response_timeout_s=0.2, in_flight_on_restart="unknown")
        async with running(cfg, transient_backoff_s=(0.01, 0.02)) as conn:
            assert await conn.wait_up(30.0)
            d = _dispatcher(store, conn, 2, window=10, in_flight_on_restart="unknown")
            task = asyncio.create_task(d.run())
            for _ in range(300):
                await asyncio.sleep(0.01)
                if (await get(store, "m0")).state != "queued":
                    break
            await d.stop(0.5)
            task.cancel()
    finally:
        await smsc.kill()
    assert smsc.submits() == [b"m0/1"]
    rec = await get(store, "m0")
    # Marked, not resent: the segment's "timeout" makes the message status "unknown".
    assert [(s.state, s.error_code) for s in rec.segment_rows] == [("timeout", "SUBMIT_TIMEOUT")]
    assert rec.state == "unknown"


async def test_stop_after_an_unanswered_first_part_counts_the_attempt(store: Store) -> None:
    """A first part that got no answer may have reached the SMSC: that attempt is reported
    (counted, resent later at most MAX_UNANSWERED_ATTEMPTS times), not a message that never
    left, also when a stop comes right after it."""
    await store.create_account(account())
    await accept(store, message("m0"))
    smsc = FakeSmsc()
    await smsc.start()
    smsc.on_submit = lambda conn, pdu: None  # never answered
    try:
        cfg = smsc_cfg(smsc.port, response_timeout_s=0.1)
        async with running(cfg, transient_backoff_s=(1.0, 1.0)) as conn:  # stop lands in it
            assert await conn.wait_up(30.0)
            d = _dispatcher(store, conn, 2, window=10)
            task = asyncio.create_task(d.run())
            for _ in range(300):
                await asyncio.sleep(0.01)
                if smsc.submits() and conn.snapshot()["submits"]["failed"].get("TIMEOUT"):
                    break
            assert conn.snapshot()["submits"]["failed"] == {"TIMEOUT": 1}
            await d.stop(1.0)
            task.cancel()
    finally:
        await smsc.kill()
    assert smsc.submits() == [b"m0/1"]
    (again,) = await store.claim("inst-2", 10, NOW + 3_600_000, LEASE)
    assert again.attempts == 2  # the unanswered one counted (a no_bind would not count)


class GatedConnector(HeldConnector):
    """Waits (as for a window slot) before calling before_first; records what left."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.waiting = 0
        self.left: list[str] = []

    async def sending(
        self,
        parts: Sequence[ShortMessage],
        before_first: BeforeFirst,
        deadline: float | None,
        contexts: Contexts,
    ) -> list[SubmitOutcome] | None:
        self.waiting += 1
        await self.gate.wait()
        if before_first is not None:
            await before_first()
        self.left.append(parts[0].short_message.decode())
        return None


@pytest.mark.parametrize("engine", ["postgres"], indirect=True)  # several instances
async def test_a_route_the_store_did_not_take_keeps_the_part_back(store: Store) -> None:
    """PostgreSQL: another instance took the claim back (a partition, stalled lease renewals)
    while this one waited for a window slot. The route write matches no row: the part must
    not leave (the new owner sends it), nor be released (not ours)."""
    await store.create_account(account())
    await accept(store, message("m0"))
    conn = GatedConnector()
    d = _dispatcher(store, conn, 1, window=WINDOW, in_flight_on_restart="unknown")
    d.lease_ms = 1000
    task = asyncio.create_task(d.run())
    for _ in range(300):
        await asyncio.sleep(0.01)
        if conn.waiting == 1:
            break
    task.cancel()
    assert await store.reclaim(NOW + 1000, frozenset({"t1"})) == {
        "requeued": 1,
        "marked_unknown": 0,
    }
    assert [w.id for w in await store.claim("inst-2", 10, NOW + 1000, LEASE)] == ["m0"]
    conn.gate.set()
    await asyncio.sleep(0.2)
    await d.stop(0.5)
    assert conn.left == []
    assert await store.claim("inst-3", 10, NOW + 2000, LEASE) == []  # still inst-2's


async def test_stop_is_bounded_while_a_claim_hangs(store: Store) -> None:
    await store.create_account(account())
    await accept(store, message("m0"))
    claim = store.claim

    async def hanging_claim(*args: object, **kw: object) -> object:
        await asyncio.sleep(3.0)  # e.g. PostgreSQL unreachable: pool acquire, command_timeout
        return await claim(*args, **kw)  # type: ignore[arg-type]

    store.claim = hanging_claim  # type: ignore[method-assign]
    d = _dispatcher(store, HeldConnector(), 2, window=WINDOW)
    task = asyncio.create_task(d.run())
    await asyncio.sleep(0.05)
    t0 = time.monotonic()
    await d.stop(0.2)
    elapsed = time.monotonic() - t0
    task.cancel()
    store.claim = claim  # type: ignore[method-assign]
    assert elapsed < 1.0, f"stop(grace=0.2) took {elapsed:.2f}s"


@pytest.mark.parametrize(
    ("retries", "requeue_s"), [(None, None), (2, 3.5)], ids=["defaults", "per-smsc"]
)
async def test_a_part_the_smsc_keeps_throttling_is_requeued_without_counting(
    store: Store, retries: int | None, requeue_s: float | None
) -> None:
    """The SMSC answers every submit of m0's second part ESME_RMSGQFUL (that destination's
    queue is full): after THROTTLE_PART_RETRIES throttles the connector gives the part back,
    and the message goes back to the queue for THROTTLE_REQUEUE_S, its first part recorded as sent,
    no attempt counted (a throttle is never a failure), while the bind carries m1. Both are the
    SMSC's settings (throttle_part_retries, throttle_requeue_s): carriers differ in how long a
    destination's queue stays full."""
    tries = retries or THROTTLE_PART_RETRIES
    wait_ms = int((requeue_s or THROTTLE_REQUEUE_S) * 1000)
    per_smsc = {} if retries is None else {"throttle_part_retries": retries}
    connector_cfg = {} if retries is None else {"throttle_part_retries": retries}
    if requeue_s is not None:
        per_smsc["throttle_requeue_s"] = requeue_s
    await store.create_account(account())
    await accept(store, message("m0", parts=2))
    await accept(store, message("m1"))
    smsc = FakeSmsc()
    await smsc.start()
    smsc.on_submit = lambda conn, pdu: C.ESME_RMSGQFUL if pdu.body.short_message == b"m0/2" else 0
    try:
        async with running(smsc_cfg(smsc.port, **connector_cfg)) as conn:
            assert await conn.wait_up(30.0)
            d = _dispatcher(store, conn, 2, window=10, **per_smsc)
            task = asyncio.create_task(d.run())
            for _ in range(300):
                await asyncio.sleep(0.01)
                rec = await get(store, "m0")
                if (await get(store, "m1")).state == "sent" and rec.segment_rows[0].state == "sent":
                    if smsc.submits().count(b"m0/2") == tries:
                        break
            await d.stop(1.0)
            task.cancel()
    finally:
        await smsc.kill()
    assert smsc.submits().count(b"m0/2") == tries
    assert [s.state for s in (await get(store, "m0")).segment_rows] == ["sent", "queued"]
    assert await store.claim("inst-2", 10, NOW + wait_ms - 1, LEASE) == []
    (again,) = await store.claim("inst-2", 10, NOW + wait_ms, LEASE)
    assert (again.id, again.attempts) == ("m0", 1)
