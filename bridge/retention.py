"""Retention: what the store forgets, and when (`store.retention_days`).

Finished messages (with their parts), MO, and dead-lettered webhook reports are deleted once
they are older than the retention; so are daily counters of days before it. The ledger, the
pockets and the bills are never deleted: they are the money. With billing on, a message is
also kept until its account's month is settled, because the bill is computed from the month's
messages: purged first, a message would be missing from its bill for good. An account's month
without a bill (automatic settlement off, billing turned on after the month, a message of it
still waiting) holds the purge of that account's messages from that month on, not the other
accounts' (one account's stuck month used to keep every account's history); a warning each
hour names the month.
"""

from __future__ import annotations

import logging
from typing import Any

from bridge.billing import bill_bounds
from bridge.domain import admission
from bridge.domain.settlement import month_bounds, month_of, next_month

log = logging.getLogger("bridge.store.retention")

DAY_MS = 86_400_000
RUN_EVERY_MS = 60_000
WARN_EVERY_MS = 3_600_000
ZONE_SPAN_MS = 26 * 3_600_000  # UTC-12 to UTC+14: the most a month's bill can start early


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
        held: dict[str, int] = {}
        if billing:
            held, month = await self.holds(before, tz)
            if month is not None and (
                self._last_warn is None or not 0 <= now - self._last_warn < WARN_EVERY_MS
            ):
                self._last_warn = now
                first = month_bounds(month, tz)[0]
                log.warning(
                    "retention: %d account(s) have no bill for %s: their messages from that "
                    "month on are kept until it is settled (smpp-bridge bill settle --month %s)",
                    # max: a chained start lies before its month's (see holds).
                    sum(1 for start in held.values() if month_of(max(start, first), tz) == month),
                    month,
                    month,
                )
        day = admission.day_key(before, tz)
        messages_before = min([before, *held.values()])
        return await self.store.purge_history(messages_before, before, day, held)

    async def holds(self, before: int, tz: str) -> tuple[dict[str, int], str | None]:
        """account -> where the bill of its oldest month with messages to purge that it has no
        bill for will start, and the oldest such month of all (None when all are settled)."""
        held: dict[str, int] = {}
        first: str | None = None
        oldest = await self.store.oldest_message_at()
        if oldest is None or oldest >= before:
            return held, first
        month = month_of(oldest, tz)
        while True:
            start, end = month_bounds(month, tz)
            # A month's bill may start up to ZONE_SPAN_MS before the month itself (chained
            # after a change of rules.timezone): such a month may hold messages before the cut.
            if start - ZONE_SPAN_MS >= before:
                return held, first
            if (tz, month) not in self._settled:
                unbilled = await self.store.unbilled_accounts(month, end)
                if not unbilled:
                    self._settled.add((tz, month))
                elif first is None:
                    first = month
                for account in unbilled:
                    if account not in held:
                        # Where its bill will start: after a change of rules.timezone, where
                        # the bill before ended, which may be before the month's start.
                        chained, _end = await bill_bounds(self.store, account, month, tz)
                        held[account] = chained
            month = next_month(month)

    async def unsettled(self, before: int, tz: str) -> tuple[str, int] | None:
        """(month, its start) of the oldest month with messages to purge that some account has
        no bill for; None when every such month is settled."""
        _held, month = await self.holds(before, tz)
        return None if month is None else (month, month_bounds(month, tz)[0])
