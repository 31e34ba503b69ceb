"""The cap on open HTTP connections of one process's public ports (server.max_connections).

Why: nothing bounded them. A client that opened connections until the process ran out of file
descriptors got every other client refused, the operator's /admin, /metrics and /readyz
included, and the store and the SMSC binds could open nothing either. At the cap a connection
is closed as it comes, unread (the cheapest answer there is), counted, and logged once a while;
the admin listener (server.admin_port) has no cap, so the operator still gets in.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import resource
import time

from bridge.domain.forwarded import Network

log = logging.getLogger("bridge.api")

WARN_EVERY_S = 60.0
# Descriptors the process needs besides HTTP connections: the store's files or connections, the
# SMPP binds, webhook connections, the admin listener's connections, logs, the wake socket.
FD_RESERVE = 256


# The `reason` label of smpp_bridge_http_connections_refused_total.
GLOBAL = "max_connections"
PER_IP = "max_connections_per_ip"
REASONS = (GLOBAL, PER_IP)


def peer_key(address: str) -> str:
    """The address a peer is counted under: `::ffff:10.0.0.1` from a dual-stack listener is
    10.0.0.1, so one client is one count whichever way it connects."""
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


class ConnectionCap:
    """Open connections against `limit`, and each peer address's against `per_ip` (0: none;
    `exempt` peers, the trusted proxies, have none); shared by the public faces of one process.

    Why per peer: one client opening connections took all `limit` of them, and every other
    client was refused with it."""

    __slots__ = ("_exempt", "_warned_at", "by_peer", "limit", "open", "per_ip", "refused")

    def __init__(self, limit: int, per_ip: int = 0, exempt: tuple[Network, ...] = ()) -> None:
        self.limit = limit
        self.per_ip = per_ip
        self._exempt = exempt
        self.open = 0
        self.by_peer: dict[str, int] = {}  # only peers with connections open: bounded by `limit`
        self.refused = dict.fromkeys(REASONS, 0)  # since start, by reason: the counter metric
        # reason -> (when last logged, refused count then)
        self._warned_at: dict[str, tuple[float, int]] = dict.fromkeys(REASONS, (-math.inf, 0))

    def admit(self, peer: str | None = None) -> str | bool:
        """Count a new connection in (its peer address's key, or True when it is not counted
        per peer), or say it is one too many (False; it is counted as refused). The key goes
        back to `release`."""
        if self.open >= self.limit:
            self._refuse(GLOBAL, peer)
            return False
        if self.per_ip and peer is not None:
            key = peer_key(peer)
            if not self._is_exempt(key):
                held = self.by_peer.get(key, 0)
                if held >= self.per_ip:
                    self._refuse(PER_IP, key)
                    return False
                self.by_peer[key] = held + 1
                self.open += 1
                return key
        self.open += 1
        return True

    def release(self, admitted: str | bool = True) -> None:
        """An admitted connection closed; `admitted` is what admit answered."""
        self.open -= 1
        if isinstance(admitted, str):
            left = self.by_peer.get(admitted, 0) - 1
            if left > 0:
                self.by_peer[admitted] = left
            else:
                self.by_peer.pop(admitted, None)

    def _is_exempt(self, key: str) -> bool:
        if not self._exempt:
            return False
        try:
            addr = ipaddress.ip_address(key)
        except ValueError:
            return False
        return any(addr in net for net in self._exempt)

    def _refuse(self, reason: str, peer: str | None) -> None:
        self.refused[reason] += 1
        now = time.monotonic()
        warned_at, refused_then = self._warned_at[reason]
        if now - warned_at < WARN_EVERY_S:
            return
        # One line a minute per reason while a cap is hit, not one per connection: a flood
        # would fill the log. The address is the one refused now; others may be refused too.
        more = self.refused[reason] - refused_then - 1
        self._warned_at[reason] = (now, self.refused[reason])
        since = f" ({more} more refused since the last report)" if more > 0 else ""
        if reason == GLOBAL:
            log.warning(
                "HTTP connections at server.max_connections (%d open): new ones are closed "
                "unread%s",
                self.limit,
                since,
                extra={"remote": peer},
            )
        else:
            log.warning(
                "HTTP connections from %s at server.max_connections_per_ip (%d open): its new "
                "ones are closed unread%s",
                peer,
                self.per_ip,
                since,
                extra={"remote": peer},
            )


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
