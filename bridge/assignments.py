"""The accounts' assigned senders, as the send check and reply attribution read them: from the
store at most every `ttl_s`, one read at a time.

Replies come in storms (a vote), sends by thousands a second, and assignments change seldom: each
caller reading the accounts table would make a storm a scan per message. A change is seen within
`ttl_s` (5 s); an account's own list is always read fresh with the account (bridge/api/auth.py),
so only what it may not use because another holds it can lag that much.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bridge.store.base import Store

Assigned = list[tuple[str, tuple[str, ...]]]
TTL_S = 5.0  # how long a read of the assignments is used before the next


class Assignments:
    def __init__(
        self, store: Store, *, clock: Callable[[], float] = time.time, ttl_s: float = TTL_S
    ) -> None:
        self._store = store
        self._clock = clock
        self._ttl = ttl_s
        self._rows: Assigned = []
        self._at: float | None = None
        self._loading: asyncio.Future[Assigned] | None = None
        self.reads = 0  # store reads so far (tests, metrics)

    async def all(self) -> Assigned:
        """(account, senders) of every open account that has some."""
        at = self._at
        if at is not None and 0 <= self._clock() - at < self._ttl:
            return self._rows
        if self._loading is None:  # the first caller reads; the others wait for its answer
            self._loading = asyncio.ensure_future(self._load())
        return await asyncio.shield(self._loading)

    async def _load(self) -> Assigned:
        try:
            self.reads += 1
            rows = await self._store.sender_assignments()
            self._rows, self._at = rows, self._clock()
            return rows
        finally:
            self._loading = None

    def forget(self) -> None:
        """Read again at the next call (after this process changed an assignment)."""
        self._at = None
