"""Which callback URLs the webhook sender may POST to (pure).

Checked when an operator sets a URL, and again before each POST (a URL stored before these checks,
a DNS name): a URL no HTTP client can use (no host, a port past 65535, a label IDNA cannot encode)
used to crash the sender or be retried for 48 h, and a link-local address (169.254.169.254, the
cloud metadata service, in any spelling) would receive signed reports with phone numbers and
inbound texts. Loopback and private ranges stay allowed: on-premise receivers live there.
"""

from __future__ import annotations

import ipaddress
import re
import socket

from yarl import URL

# Digits, hex digits with 0x, dots: a candidate for inet_aton's forms (never a host name: a
# name's top label is not all digits).
_NUMERIC_V4 = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)(?:\.(?:0[xX][0-9a-fA-F]*|[0-9]+)){0,3}")


# Cloud metadata services outside the link-local ranges: Alibaba Cloud's (in the shared
# 100.64/10 space) and AWS's IPv6 one. The others (AWS, GCP, Azure, Huawei, Tencent, Oracle) are
# at link-local addresses.
_METADATA = frozenset(
    {ipaddress.ip_address("100.100.100.200"), ipaddress.ip_address("fd00:ec2::254")}
)


def forbidden(address: str) -> bool:
    """An IP address that is link-local or a cloud metadata service (_METADATA): v4, v6,
    v4-mapped v6, or v4 in any spelling the C resolver reads as an address (one decimal number,
    hex 0xa9fea9fe, octal 0251.0376.0251.0376, the short 169.254.43518): getaddrinfo, which the
    webhook client uses, takes them all."""
    text = address.strip("[]")
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(text)
    except ValueError:
        if not _NUMERIC_V4.fullmatch(text):
            return False
        try:
            ip = ipaddress.IPv4Address(socket.inet_aton(text))
        except OSError:
            return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        ip = ipaddress.IPv6Address(str(ip).split("%")[0])
    return ip.is_link_local or ip in _METADATA


def problem(url: str) -> str | None:
    """Why `url` cannot be a callback URL, or None."""
    try:
        parsed = URL(url)
        host, port = parsed.host, parsed.port
        if parsed.scheme not in ("http", "https"):
            return "must be an http(s) URL"
        if not host:
            return "has no host"
        if port is None or not 0 < port < 65536:
            return "has no valid port"
        host.encode("idna")  # a label over 63 characters, or one IDNA refuses
    except (ValueError, UnicodeError) as exc:
        return f"is not a usable URL ({type(exc).__name__})"
    if forbidden(host):
        return "points at a link-local or cloud metadata address"
    return None
