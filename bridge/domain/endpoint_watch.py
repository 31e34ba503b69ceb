"""What the webhook sender logs about a customer's callback endpoint that fails (pure: time and
outcomes passed in, lines handed back).

A dead endpoint used to log a line for every batch it was tried with, for as long as it was down:
one customer's outage filled the operator's log. Per endpoint (account and URL) there is now one
line when it starts failing, a summary at most every `every_ms` while it keeps failing (counts
since the line before), and one line when a POST to it succeeds again. An endpoint that fails
again within `every_ms` of its recovery (a flapping one) resumes its outage silently, so it too
costs at most a line of each kind a minute.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

# Reports tracked as waiting per endpoint; past it the count reads "10000+" (memory stays flat
# through a long outage of a large customer).
WAITING_CAP = 10_000


@dataclass
class _Endpoint:
    account: str
    host: str
    since_ms: int  # when this outage began
    last_line_ms: int
    last_event_ms: int
    error: str = ""
    recovered_ms: int | None = None  # set while a recovery is fresh (flapping resumes the outage)
    flapping: bool = False  # the outage resumed soon after a recovery
    owed: bool = False  # a recovery not logged yet (a flapping endpoint's, within the minute)
    failed_posts: int = 0  # since the last line
    retried: int = 0
    dead: int = 0
    delivered: int = 0
    total_failed: int = 0  # over the whole outage
    total_dead: int = 0
    waiting: set[int] = field(default_factory=set)  # outbox ids set to retry, not yet settled
    waiting_over: bool = False


@dataclass(frozen=True)
class Line:
    level: str  # "warning" or "info"
    message: str
    fields: dict[str, Any]


def _iso(ms: int) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


class EndpointWatch:
    """State per failing endpoint; every method returns the line to log, if any."""

    def __init__(self, every_ms: int = 60_000, forget_after_ms: int = 24 * 3_600_000) -> None:
        self.every_ms = every_ms
        self.forget_after_ms = forget_after_ms  # a down endpoint nothing was tried at since
        self._eps: dict[tuple[str, str], _Endpoint] = {}
        self._pruned_ms = 0

    def __len__(self) -> int:
        return len(self._eps)

    def failed(
        self,
        account: str,
        url: str,
        host: str,
        now_ms: int,
        error: str,
        retried: list[int],
        dead: list[int],
        next_at_ms: int | None,
    ) -> Line | None:
        """A POST failed: `retried` reports go again at `next_at_ms`, `dead` were dead-lettered."""
        self._prune(now_ms)
        key = (account, url)
        ep = self._eps.get(key)
        if (
            ep is not None
            and ep.recovered_ms is not None
            and now_ms - ep.recovered_ms >= self.every_ms
        ):
            ep = None  # up for a while: a new outage, not a flap
        fresh = ep is None
        if ep is None:
            ep = self._eps[key] = _Endpoint(account, host, now_ms, now_ms, now_ms)
        elif ep.recovered_ms is not None:
            ep.flapping = True
        ep.recovered_ms, ep.owed = None, False
        ep.last_event_ms = now_ms
        ep.error = error
        ep.failed_posts += 1
        ep.retried += len(retried)
        ep.dead += len(dead)
        ep.total_failed += len(retried) + len(dead)
        ep.total_dead += len(dead)
        ep.waiting.difference_update(dead)
        if len(ep.waiting) + len(retried) <= WAITING_CAP:
            ep.waiting.update(retried)
        else:
            ep.waiting_over = True
        if fresh:
            line = Line("warning", "webhook endpoint failing", self._about(ep))
            line.fields["next"] = (
                f"retry at {_iso(next_at_ms)}"
                if next_at_ms is not None and retried
                else "dead-lettered (GET /admin/webhooks/dead)"
            )
            self._reset(ep, now_ms)
            return line
        if now_ms - ep.last_line_ms < self.every_ms:
            return None
        fields = self._about(ep)
        fields.update(
            down_s=round((now_ms - ep.since_ms) / 1000),
            failed_posts=ep.failed_posts,
            retried=ep.retried,
            dead_lettered=ep.dead,
            delivered=ep.delivered,
            waiting=self._waiting(ep),
        )
        if next_at_ms is not None and retried:
            fields["next"] = f"retry at {_iso(next_at_ms)}"
        self._reset(ep, now_ms)
        return Line("info", "webhook endpoint still failing", fields)

    def delivered(self, account: str, url: str, now_ms: int, ids: list[int]) -> Line | None:
        """A POST succeeded: the endpoint's outage, if any, is over."""
        self._prune(now_ms)
        ep = self._eps.get((account, url))
        if ep is None:
            return None
        ep.last_event_ms = now_ms
        ep.waiting.difference_update(ids)
        ep.delivered += len(ids)
        if ep.recovered_ms is None:
            ep.recovered_ms, ep.owed = now_ms, True
        if not ep.owed or (ep.flapping and now_ms - ep.last_line_ms < self.every_ms):
            return None
        ep.owed = ep.flapping = False
        fields = self._about(ep)
        fields.update(
            down_s=round((now_ms - ep.since_ms) / 1000),
            failed=ep.total_failed,
            dead_lettered=ep.total_dead,
            waiting=self._waiting(ep),
        )
        self._reset(ep, now_ms)
        ep.total_failed = ep.total_dead = 0
        ep.since_ms = now_ms
        return Line("info", "webhook endpoint recovered", fields)

    def _prune(self, now_ms: int) -> None:
        if now_ms - self._pruned_ms < self.every_ms:
            return
        self._pruned_ms = now_ms
        for key, ep in list(self._eps.items()):
            over = (
                ep.recovered_ms is not None
                and not ep.owed
                and now_ms - ep.recovered_ms >= self.every_ms
            )
            if over or now_ms - ep.last_event_ms >= self.forget_after_ms:
                del self._eps[key]

    @staticmethod
    def _about(ep: _Endpoint) -> dict[str, Any]:
        return {"account": ep.account, "url_host": ep.host, "error": ep.error}

    @staticmethod
    def _waiting(ep: _Endpoint) -> int | str:
        return f"{WAITING_CAP}+" if ep.waiting_over else len(ep.waiting)

    @staticmethod
    def _reset(ep: _Endpoint, now_ms: int) -> None:
        ep.last_line_ms = now_ms
        ep.failed_posts = ep.retried = ep.dead = ep.delivered = 0
