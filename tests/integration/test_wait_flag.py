"""The owner's "waiting" flag (bridge/pipeline/wake.py): acceptors wake the owner's dispatcher
only while it claims or waits for a wake, not while it is busy with work it claimed.

Real store, a real dispatcher, the flag in a real memfd mapped twice (the owner's mapping and an
acceptor's, from a duplicated descriptor as a child inherits it) and real datagrams on an
abstract Unix socket. The dispatcher's idle poll is seconds long here, so anything sent within
a fraction of that was woken (or claimed again after a freed slot), not found by the poll.

Why: under load the acceptors' datagram after every commit (their costliest line, ~2.6% of an
acceptor's samples) woke a dispatcher that was waiting for window slots, not for work.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from bridge.pipeline import wake
from bridge.pipeline.dispatcher import Dispatcher
from bridge.pipeline.wake import (
    WAIT_FLAG_FD_ENV,
    WaitFlag,
    WakeListener,
    WakeSender,
    channel_name,
)
from bridge.smpp.codec import ShortMessage
from bridge.smpp.connector import SubmitOutcome
from bridge.store.base import Store

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from tests.connectors import BeforeFirst, Contexts, StandIn, dispatcher  # noqa: E402
from tests.e2e.harness import wait_until  # noqa: E402
from tests.integration.test_store import accept, account, message  # noqa: E402

engine = engines.engine
store = engines.store

pytestmark = pytest.mark.skipif(
    not (wake.supported() and hasattr(os, "memfd_create")), reason="memfd, abstract sockets"
)

IDLE_S = 10.0  # the dispatcher's idle poll: never what sends a message in these tests
# "At once": well inside the idle poll, so a send within it was woken (or claimed again after a
# freed slot), not polled, however loaded the machine (CI at load 24 took 1.2 s for five sends
# one after another through PostgreSQL, past the 1.0 s this was).
AT_ONCE = IDLE_S / 2


class Gated(StandIn):
    """An SMSC stand-in with a window of one whose sends wait for `release`."""

    def __init__(self) -> None:
        super().__init__("t1", 1)
        self.release = asyncio.Event()
        self.sends: list[float] = []

    def refuse_new(self) -> None:
        self.release.set()

    async def sending(
        self,
        parts: Sequence[ShortMessage],
        before_first: BeforeFirst,
        deadline: float | None,
        contexts: Contexts,
    ) -> list[SubmitOutcome] | None:
        self.sends.append(time.monotonic())
        await self.release.wait()
        return None


def now_ms() -> int:
    return int(time.time() * 1000)


@contextlib.asynccontextmanager
async def owner_and_acceptor(
    store: Store, conn: Any, tmp_path: Path
) -> AsyncIterator[tuple[Dispatcher, WaitFlag, WakeSender, WakeListener]]:
    """The owner's dispatcher publishing its flag and listening for wakes, and an acceptor's
    sender reading the flag through its own mapping."""
    await store.create_account(account())
    d = dispatcher(store, conn, in_flight_windows=1, idle_s=IDLE_S, idle_max_s=IDLE_S)
    flag = WaitFlag.create()
    assert flag is not None and flag.fd is not None
    d.wait_flag = flag
    name = channel_name(tmp_path / "bridge.db", os.getpid())
    listener = WakeListener(name, d.wake)
    listener.start()
    seen = WaitFlag.attach({WAIT_FLAG_FD_ENV: str(os.dup(flag.fd))})
    assert seen is not None
    sender = WakeSender(name, flag=seen)
    task = asyncio.create_task(d.run())
    try:
        yield d, flag, sender, listener
    finally:
        sender.close()
        listener.close()
        await d.stop(1.0)
        task.cancel()
        flag.close()


async def test_a_busy_owner_is_not_woken_and_an_idle_one_is_at_once(
    store: Store, tmp_path: Path
) -> None:
    conn = Gated()
    async with owner_and_acceptor(store, conn, tmp_path) as (_d, flag, sender, listener):
        # Idle: its first claim found nothing, and it waits for a wake with the flag set.
        await wait_until(flag.is_set, AT_ONCE, 0.005)
        await accept(store, message("m1", at=now_ms()))
        sender.wake()  # after the commit, as an acceptor does
        await wait_until(lambda: len(conn.sends) == 1, AT_ONCE, 0.005)
        assert sender.counts["sent"] == 1
        await wait_until(lambda: listener.received == 1, AT_ONCE, 0.005)
        # Busy: m1 holds the only slot, the dispatcher waits for it to free, flag cleared.
        await wait_until(lambda: not flag.is_set(), AT_ONCE, 0.005)
        for i in range(5):
            await accept(store, message(f"m{i + 2}", at=now_ms()), key=f"k{i}")
            sender.wake()
        assert sender.counts == {"sent": 1, "not_waiting": 5, "throttled": 0}
        await asyncio.sleep(0.1)
        assert listener.received == 1  # no datagram while it was busy
        # The freed slot is claimed at once: no wake was needed for m2..m6.
        t = time.monotonic()
        conn.release.set()
        await wait_until(lambda: len(conn.sends) == 6, AT_ONCE, 0.005)
        assert conn.sends[-1] - t < AT_ONCE
        # Idle again: the flag is set, and the next accept wakes it at once.
        await wait_until(flag.is_set, AT_ONCE, 0.005)
        await asyncio.sleep(0.1)
        await accept(store, message("m7", at=now_ms()), key="k7")
        t = time.monotonic()
        sender.wake()
        await wait_until(lambda: len(conn.sends) == 7, AT_ONCE, 0.005)
        assert conn.sends[-1] - t < AT_ONCE
        assert sender.counts["sent"] == 2 and listener.received == 2


async def test_a_wake_during_an_empty_claim_is_kept(store: Store, tmp_path: Path) -> None:
    """An acceptor commits after the claim's snapshot and its datagram arrives before the claim
    returns empty: the dispatcher claims again at once. The event used to be cleared after an
    empty claim, and that message waited for the idle poll."""
    conn = Gated()
    conn.release.set()
    raced: list[float] = []
    claim = store.claim

    async def racing(*args: Any, **kw: Any) -> Any:
        work = await claim(*args, **kw)
        if not work and not raced:
            await accept(store, message("late", at=now_ms()))
            raced.append(time.monotonic())
            d.wake()  # the datagram, read while this claim is still under way
        return work

    store.claim = racing  # type: ignore[method-assign]
    async with owner_and_acceptor(store, conn, tmp_path) as (d, _flag, _sender, _listener):
        await wait_until(lambda: len(conn.sends) == 1, AT_ONCE, 0.005)
        assert conn.sends[0] - raced[0] < AT_ONCE


async def test_an_acceptor_without_the_flag_always_wakes(tmp_path: Path) -> None:
    """No memfd passed (an acceptor started by an older owner, or none could be made): every
    commit sends, as before the flag existed."""
    assert WaitFlag.attach({}) is None
    assert WaitFlag.attach({WAIT_FLAG_FD_ENV: "not-a-number"}) is None
    # A number open on something else (a stale variable) is neither mapped nor closed.
    with open(tmp_path / "other", "wb") as other:
        assert WaitFlag.attach({WAIT_FLAG_FD_ENV: str(other.fileno())}) is None
        os.fstat(other.fileno())  # still open
    name = channel_name(tmp_path / "bridge.db", os.getpid())
    got: list[int] = []
    listener = WakeListener(name, lambda: got.append(1))
    listener.start()
    sender = WakeSender(name, min_interval_s=0)
    try:
        for _ in range(3):
            sender.wake()
            await asyncio.sleep(0.01)
        await wait_until(lambda: listener.received == 3, 1.0, 0.005)
        assert sender.counts["sent"] == 3
    finally:
        sender.close()
        listener.close()
