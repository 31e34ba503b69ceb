"""The dispatcher against a real store: how many messages it keeps in flight per window slot.

The connector is a stand-in that holds every message until the test lets it go, so what is
measured is the dispatcher's own claiming, not an SMSC's speed.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from bridge.config import SmscConfig
from bridge.pipeline.dispatcher import Dispatcher
from bridge.smpp.codec import ShortMessage
from bridge.smpp.connector import SubmitOutcome
from bridge.smpp.router import Router
from bridge.store.base import Store

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from tests.integration.test_store import NOW, accept, account, get, message  # noqa: E402

engine = engines.engine
store = engines.store

WINDOW = 10


class HeldConnector:
    """Accepts every part but answers only when released; counts messages held at once."""

    name = "smscA"

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.held = 0
        self.most_held = 0

    @property
    def is_up(self) -> bool:
        return True

    def free_slots(self) -> int:
        return WINDOW

    def window_size(self) -> int:
        return WINDOW

    async def send_message(self, parts: Sequence[ShortMessage]) -> list[SubmitOutcome]:
        self.held += 1
        self.most_held = max(self.most_held, self.held)
        try:
            await self.release.wait()
        finally:
            self.held -= 1
        return [SubmitOutcome(i, "ok", 0, "ESME_ROK", f"id{i}") for i in range(len(parts))]


async def _in_flight(store: Store, n_messages: int, windows: int) -> tuple[int, HeldConnector]:
    await store.create_account(account())
    for i in range(n_messages):
        await accept(store, message(f"m{i:03d}", parts=3))
    conn = HeldConnector()
    d = Dispatcher(
        store,
        {"smscA": conn},
        Router([], ["smscA"]),
        {"smscA": SmscConfig(name="smscA", system_id="t", password="t", window=WINDOW)},
        instance="inst-1",
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
