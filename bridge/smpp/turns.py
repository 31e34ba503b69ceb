"""Turns: a lock handed on in order, priority waiters first, first come first served within each.

Why: the connector's TPS limit is asyncio-throttle, whose waiters each poll every 10 ms, and
whoever wakes first after a slot frees goes next. A bind's whole window (50 parts by default)
waiting on a 40/s limit cost ~5% of a core in wake-ups (200 waiters ~12%), and a 3-part message's
later parts queued behind the first parts of up to a window of other messages, so its parts left
a second or more apart. Taking turns at the throttler, only the holder waits there (sleeping
until the next slot: connector._Pacer), and resends and a started message's next part go before
new messages.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

__all__ = ["Turns"]


class Turns:
    """`await take(priority)`, then `give()` exactly once, in a `finally`."""

    __slots__ = ("_held", "_hi", "_lo")

    def __init__(self) -> None:
        self._held = False
        self._hi: deque[asyncio.Future[None]] = deque()
        self._lo: deque[asyncio.Future[None]] = deque()

    @property
    def held(self) -> bool:
        """Someone holds the turn (and others may wait for it): `take` would wait."""
        return self._held

    @property
    def waiting(self) -> int:
        return sum(1 for q in (self._hi, self._lo) for f in q if not f.done())

    async def take(self, priority: bool = False) -> None:
        if not self._held:
            self._held = True
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._hi if priority else self._lo
        queue.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.give()  # handed the turn as it was cancelled: on to the next
            else:
                with contextlib.suppress(ValueError):
                    queue.remove(fut)
            raise

    def give(self) -> None:
        for queue in (self._hi, self._lo):
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    fut.set_result(None)
                    return
        self._held = False
