"""Retention: what the store forgets, and when (`store.retention_days`).

Finished messages (with their parts), MO, and dead-lettered webhook reports are deleted once
they are older than the retention; so are daily counters of days before it. The ledger, the
pockets and the bills are never deleted: they are the money. With billing on, a message is
also kept until its account's month is settled, because the bill is computed from the month's
messages: purged first, a message would be missing from its bill for good. A month nobody
settles (automatic settlement off, or billing turned on after the month) holds the purge of
messages from that month on; a warning each hour names it.
"""

from __future__ import annotations

import logging
from typing import Any

from bridge.domain import admission
from bridge.domain.settlement import month_bounds, month_of, next_month

log = logging.getLogger("bridge.store.retention")

DAY_MS = 86_400_000
RUN_EVERY_MS = 60_000
WARN_EVERY_MS = 3_600_000


class Retention:
    """The owner's periodic purge. Settled months are remembered (a bill is never undone), so
    each run asks the store about the months not yet seen settled only."""

    def __init__(self, store: Any, days: int) -> None:
        self.store = store
        self.days = days
        self._settled: set[tuple[str, str]] = set()  # (time zone, month)
        self._last_run: int | None = None
        self._last_warn: int | None = None

    async def run(self, now: int, *, billing: bool, tz: str) -> dict[str, int]:
        if self.days <= 0:
            return {}
        # 0 <= ...: a clock stepped back (NTP correcting a clock that ran ahead) does not skip
        # every run until it passes its old reading again.
        if self._last_run is not None and 0 <= now - self._last_run < RUN_EVERY_MS:
            return {}
        self._last_run = now
        before = now - self.days * DAY_MS
        if before <= 0:
            return {}
        messages_before = before
        if billing:
            held = await self.unsettled(before, tz)
            if held is not None:
                month, start = held
                messages_before = min(before, start)
                if self._last_warn is None or not 0 <= now - self._last_warn < WARN_EVERY_MS:
                    self._last_warn = now
                    log.warning(
                        "retention: messages from %s on are kept until that month is settled "
                        "for every account (smpp-bridge bill settle --month %s)",
                        month,
                        month,
                    )
        day = admission.day_key(before, tz)
        return await self.store.purge_history(messages_before, before, day)

    async def unsettled(self, before: int, tz: str) -> tuple[str, int] | None:
        """(month, its start) of the oldest month with messages to purge that some account has
        no bill for; None when every such month is settled."""
        oldest = await self.store.oldest_message_at()
        if oldest is None or oldest >= before:
            return None
        month = month_of(oldest, tz)
        while True:
            start, end = month_bounds(month, tz)
            if start >= before:
                return None
            if (tz, month) not in self._settled:
                if await self.store.unbilled_accounts(month, end):
                    return month, start
                self._settled.add((tz, month))
            month = next_month(month)
