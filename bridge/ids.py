"""Identifiers: time-sortable, unguessable, URL-safe.

Message and batch ids sort by creation time (so cursor pagination is an index range scan) and carry
80 random bits (so one account cannot guess another's ids).
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I L O U


def _b32(value: int, length: int) -> str:
    out = []
    for _ in range(length):
        out.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(out))


def new_id(prefix: str, now_ms: int | None = None) -> str:
    """`prefix` + 26 chars: 48-bit millisecond time then 80 random bits (ULID layout)."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")
    return prefix + _b32((ms << 80) | rand, 26)


def id_time_ms(ident: str, prefix: str) -> int | None:
    body = ident[len(prefix) :]
    if len(body) != 26:
        return None
    value = 0
    for ch in body:
        idx = _ALPHABET.find(ch)
        if idx < 0:
            return None
        value = (value << 5) | idx
    return value >> 80
