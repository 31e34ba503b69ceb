"""The client's address behind trusted reverse proxies (server.trusted_proxies), pure.

Why: behind nginx every request's peer is the proxy, so the audit trail's `remote` and the
request logs named the proxy for every operator and every client. X-Forwarded-For carries the
chain, but its entries are only as good as whoever wrote them: each proxy appends the peer it
saw, on the right, after whatever the client sent. So the client is the right-most address that
is not a trusted proxy, found by walking from the right while the hops are trusted; never the
left-most, which the client writes itself (a spoofed `X-Forwarded-For: 1.2.3.4`).

RFC 7239's `Forwarded` header is read by the same rule (server.forwarded_header says which of the
two the proxies write; the other is ignored: a proxy passes on, untouched, whichever header it
does not write itself, so the client would choose what the daemon believes). Its `for=` node may
also be `unknown` or an obfuscated identifier (`_hidden`): neither names an address, so, like an
element without `for=` or one that is malformed, it ends the walk at the proxy that wrote it.

The walk is bounded (MAX_HOPS hops, the right-most MAX_BYTES characters of the headers): a header
of 600 trusted hops (8 KB, the client's to write when it names trusted addresses) cost ~4 ms per
request walked whole. A bound reached ends the walk like an entry that is not an address: at the
last trusted hop reached, never at an address further left, which the client may have written.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from functools import lru_cache

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# No real chain of proxies is near 30 hops long, nor its header near 4 KB (30 Forwarded elements
# with for=, by=, proto= and host= of 100 characters each is 3 KB).
MAX_HOPS = 30
MAX_BYTES = 4096

# The headers server.forwarded_header may name (config values, as operators write them).
X_FORWARDED_FOR = "X-Forwarded-For"
FORWARDED = "Forwarded"
HEADERS = (X_FORWARDED_FOR, FORWARDED)


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
    return _walk(peer, (_address(hop) for hop in _right_hops(forwarded_for)), trusted)


def client_from_forwarded(
    peer: str | None, forwarded: Iterable[str], trusted: tuple[Network, ...]
) -> str | None:
    """client_address, from RFC 7239 `Forwarded` headers (every one, in order; each a list of
    elements, one per proxy): the hops are the elements' `for=` nodes."""
    if not trusted or peer is None:
        return peer
    return _walk(peer, (_for_node(e) for e in _right_hops(forwarded)), trusted)


def client_from_headers(
    peer: str | None, values: Iterable[str], header: str, trusted: tuple[Network, ...]
) -> str | None:
    """The client's address from the values of `header` (one of HEADERS)."""
    if header == FORWARDED:
        return client_from_forwarded(peer, values, trusted)
    return client_address(peer, values, trusted)


def _right_hops(values: Iterable[str]) -> list[str]:
    """The non-empty comma-separated items of the header values, right-most first: at most
    MAX_HOPS of them, from the right-most MAX_BYTES characters. An item the byte bound cuts in
    two is left out (its right part may read as another address: `11.2.3.4` cut to `1.2.3.4`).

    Split at every comma, quoted or not (a Forwarded element too): the grammar lets a quoted
    value hold one, but no node, port or protocol does, and the left part of the list is the
    client's to write. A quote it leaves open, or a comma inside one, spoils its own elements
    only (they parse as malformed), never the ones the proxies appended to its right, which are
    all the walk reads. A quoted comma in a proxy's own element makes that element malformed:
    the walk stops there (safe)."""
    out: list[str] = []
    budget = MAX_BYTES
    for value in reversed(list(values)):
        if budget <= 0:
            break
        cut = len(value) - budget  # > 0: the characters left of the bound
        items = value[max(cut, 0) :].split(",")
        if cut > 0 and value[cut - 1] != ",":
            items = items[1:]
        for item in reversed(items):
            if item.strip():
                out.append(item)
                if len(out) == MAX_HOPS:
                    return out
        budget -= len(value) + 1  # the values read as one list
    return out


def _walk(peer: str, hops: Iterable[Address | None], trusted: tuple[Network, ...]) -> str:
    """The walk from the right: `hops` right-most first, None for a hop that names no address."""
    peer_addr = _address(peer)
    if peer_addr is None or not _trusted(peer_addr, trusted):
        return peer
    last = peer
    for addr in hops:
        if addr is None:
            return last
        last = str(addr)
        if not _trusted(addr, trusted):
            return last
    return last


# RFC 7230 token and quoted-string; a forwarded-pair is `token "=" value`. Whitespace around
# `;` and `=` is tolerated (the grammar has none, proxies write some).
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PAIR = re.compile(
    rf"[ \t]*(?:({_TOKEN})[ \t]*=[ \t]*({_TOKEN}|{_QUOTED}))?[ \t]*(;|\Z)", re.DOTALL
)
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)
_PORT = re.compile(r"[0-9]{1,5}|_[0-9A-Za-z._-]+")


def _for_node(element: str) -> Address | None:
    """The address an element's `for=` parameter names; None when it names none (no `for=`,
    `unknown`, an obfuscated identifier, two of them, or an element that is not well-formed)."""
    found: str | None = None
    pos, end = 0, len(element)
    while True:
        m = _PAIR.match(element, pos)
        if m is None:
            return None
        name, value, sep = m.groups()
        if name is not None and name.lower() == "for":
            if found is not None:  # "MUST NOT occur more than once"
                return None
            found = value
        if not sep:
            break
        pos = m.end()
    if m.end() != end or found is None:
        return None
    if found.startswith('"'):
        found = _UNESCAPE.sub(r"\1", found[1:-1])
    return _node(found)


def _node(node: str) -> Address | None:
    """`192.0.2.60`, `192.0.2.60:4711`, `[2001:db8::1]`, `[2001:db8::1]:4711` (ports, obfuscated
    ones too, are dropped) as an address; `unknown` and `_obfuscated` names are none."""
    if node.startswith("["):
        close = node.find("]")
        if close < 0:
            return None
        host, rest = node[1:close], node[close + 1 :]
        if rest and not (rest.startswith(":") and _PORT.fullmatch(rest[1:])):
            return None
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    host, colon, port = node.partition(":")
    if colon and not _PORT.fullmatch(port):
        # An IPv6 address written without its brackets: unambiguous when it parses whole.
        try:
            return ipaddress.IPv6Address(node)
        except ValueError:
            return None
    try:
        return ipaddress.IPv4Address(host)
    except ValueError:
        return None
