"""The wake-up datagram channel between an owner and its acceptors, on real abstract Unix
sockets: two owners on one host with the same store.path (a PostgreSQL fleet's configurations
in one directory: the path is unused there) each get their own channel. The second could not
listen before ("Address already in use"), and its acceptors woke the first owner."""

from __future__ import annotations

import asyncio

import pytest

from bridge.pipeline import wake
from bridge.pipeline.wake import WakeListener, WakeSender, channel_name

pytestmark = pytest.mark.skipif(not wake.supported(), reason="abstract sockets: Linux only")


async def _until(pred, timeout: float = 2.0) -> bool:
    for _ in range(int(timeout / 0.01)):
        if pred():
            return True
        await asyncio.sleep(0.01)
    return pred()


async def test_two_owners_on_one_store_path_each_get_their_own_wakes(tmp_path) -> None:
    path = tmp_path / "bridge.db"
    woken: dict[str, int] = {"a": 0, "b": 0}
    a = WakeListener(channel_name(path, 1001), lambda: woken.__setitem__("a", woken["a"] + 1))
    b = WakeListener(channel_name(path, 1002), lambda: woken.__setitem__("b", woken["b"] + 1))
    a.start()
    b.start()
    sender = WakeSender(channel_name(path, 1002), min_interval_s=0)
    try:
        assert a._sock is not None and b._sock is not None  # both listen
        sender.wake()
        assert await _until(lambda: woken["b"] == 1)
        await asyncio.sleep(0.05)
        assert woken["a"] == 0  # the other owner was not woken
    finally:
        sender.close()
        a.close()
        b.close()
    assert channel_name(path, 1001) == channel_name(path, 1001)
    assert channel_name(path, 1001) != channel_name(tmp_path / "other.db", 1001)
