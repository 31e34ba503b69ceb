"""The client's address behind trusted reverse proxies (server.trusted_proxies), pure.

Why: behind nginx every request's peer is the proxy, so the audit trail's `remote` and the
request logs named the proxy for every operator and every client. X-Forwarded-For carries the
chain, but its entries are only as good as whoever wrote them: each proxy appends the peer it
saw, on the right, after whatever the client sent. So the client is the right-most address that
is not a trusted proxy, found by walking from the right while the hops are trusted; never the
left-most, which the client writes itself (a spoofed `X-Forwarded-For: 1.2.3.4`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def network_problem(entry: str) -> str | None:
    """What is wrong with a trusted_proxies entry (None: nothing): an address or a CIDR block
    whose host bits are zero (`10.0.0.1/8` is refused as the likely typo it is)."""
    try:
        ipaddress.ip_network(entry.strip(), strict=True)
    except ValueError as exc:
        return f"must be an IP address or a CIDR network (10.0.0.0/8, ::1), got {entry!r}: {exc}"
    return None


@lru_cache(maxsize=8)
def networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    """The parsed list (checked at config load), cached: one configuration has one list."""
    return tuple(ipaddress.ip_network(e.strip(), strict=True) for e in entries)


def _address(text: str) -> Address | None:
    """An X-Forwarded-For entry as an address: `1.2.3.4`, `1.2.3.4:5678`, `::1`, `[::1]:80`."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else text
    elif text.count(":") == 1:  # IPv4 with a port; an IPv6 address has several colons
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(addr: Address, trusted: tuple[Network, ...]) -> bool:
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped  # ::ffff:10.0.0.1 from a dual-stack listener
    return any(addr in net for net in trusted)


def client_address(
    peer: str | None, forwarded_for: Iterable[str], trusted: tuple[Network, ...]
) -> str | None:
    """The client's address: `peer` unless it is a trusted proxy; then the right-most entry of
    X-Forwarded-For (every header of that name, in order) that is not a trusted proxy. An entry
    that is not an address ends the walk at the last trusted hop (a proxy writes addresses: the
    entry came from further out, and nothing left of it can be believed); a chain of trusted
    proxies only gives its left-most."""
    if not trusted or peer is None:
        return peer
    peer_addr = _address(peer)
    if peer_addr is None or not _trusted(peer_addr, trusted):
        return peer
    hops = [h for value in forwarded_for for h in value.split(",") if h.strip()]
    last = peer
    for hop in reversed(hops):
        addr = _address(hop)
        if addr is None:
            return last
        last = str(addr)
        if not _trusted(addr, trusted):
            return last
    return last
