"""The cap on open HTTP connections of one process's public ports (server.max_connections).

Why: nothing bounded them. A client that opened connections until the process ran out of file
descriptors got every other client refused, the operator's /admin, /metrics and /readyz
included, and the store and the SMSC binds could open nothing either. At the cap a connection
is closed as it comes, unread (the cheapest answer there is), counted, and logged once a while;
the admin listener (server.admin_port) has no cap, so the operator still gets in.
"""

from __future__ import annotations

import logging
import math
import resource
import time

log = logging.getLogger("bridge.api")

WARN_EVERY_S = 60.0
# Descriptors the process needs besides HTTP connections: the store's files or connections, the
# SMPP binds, webhook connections, the admin listener's connections, logs, the wake socket.
FD_RESERVE = 256


class ConnectionCap:
    """Open connections against `limit`; shared by the public faces of one process."""

    __slots__ = ("_refused_at_warning", "_warned_at", "limit", "open", "refused")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.refused = 0  # since start: the counter metric
        self._warned_at = -math.inf
        self._refused_at_warning = 0

    def admit(self) -> bool:
        """Count a new connection in, or say it is one too many (it is counted as refused)."""
        if self.open < self.limit:
            self.open += 1
            return True
        self.refused += 1
        now = time.monotonic()
        if now - self._warned_at >= WARN_EVERY_S:
            # One line while the cap is hit, not one per connection: a flood would fill the log.
            more = self.refused - self._refused_at_warning - 1
            self._warned_at, self._refused_at_warning = now, self.refused
            log.warning(
                "HTTP connections at server.max_connections (%d open): new ones are closed "
                "unread%s",
                self.limit,
                f" ({more} more refused since the last report)" if more > 0 else "",
            )
        return False

    def release(self) -> None:
        """An admitted connection closed."""
        self.open -= 1


def fit_fd_limit(connections: int) -> tuple[int, int]:
    """Raise this process's soft limit on open files, within its hard limit, so `connections`
    fit beside what the rest of the daemon opens; the (soft, hard) limits now. A cap above the
    soft limit would bound nothing: the process would run out of descriptors first."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "the open-files limit (%d) is below server.max_connections (%d) plus %d for the "
            "rest of the daemon: raise LimitNOFILE (systemd) or ulimit -n, or lower "
            "max_connections, else descriptors run out before the cap applies",
            soft,
            connections,
            FD_RESERVE,
        )
    return soft, hard
