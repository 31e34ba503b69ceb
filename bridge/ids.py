"""Identifiers: time-sortable, unguessable, URL-safe.

Message and batch ids sort by creation time (so cursor pagination is an index range scan) and carry
80 random bits (so one account cannot guess another's ids).
"""

from __future__ import annotations

import base64
import os
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32: no I L O U
_FROM_RFC4648 = bytes.maketrans(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET.encode())
# A random byte's low five bits -> one base32 character (256 is a multiple of 32, so each
# character is uniform): 16 random bytes become the 80-bit random part in one C call.
_LOW5 = bytes(_ALPHABET.encode()[b & 31] for b in range(256))


# The ids' random characters: os.urandom in 4 KiB draws, each byte mapped to its base32
# character (its low five bits) in one translate for the whole draw, then handed out 16 at a
# time as a slice of the string. Why: the pool's method call, the slice of bytes, a translate
# and a decode for each id were ~3,000 instructions of each of a send's two ids (session 57).
# The same characters from the same bytes as before; a forked child starts a draw of its own.
_CHARS_SIZE = 4096
_chars = ""
_chars_pos = _CHARS_SIZE


def _reset_chars() -> None:
    global _chars, _chars_pos
    _chars, _chars_pos = "", _CHARS_SIZE


os.register_at_fork(after_in_child=_reset_chars)


# The request ids' random hex digits: os.urandom in 4 KiB draws, hexed at once, handed out 16 at
# a time as a slice of the string (as `_chars` for the ids). Why: the pool's method, a slice of
# bytes and its `hex()` for each request were ~2,000 instructions of each (session 59). The same
# 64 random bits as lower-case hex; a forked child starts a draw of its own.
_HEX_SIZE = 8192  # the hex digits of one draw
_hex = ""
_hex_pos = _HEX_SIZE


def _reset_hex() -> None:
    global _hex, _hex_pos
    _hex, _hex_pos = "", _HEX_SIZE


os.register_at_fork(after_in_child=_reset_hex)


def new_request_id() -> str:
    """A request's id, in its answer's X-Request-Id and its log lines: "req_" and 16 random
    lower-case hex digits (64 bits). No call comes between the position's check and its store
    (nor, as in `new_id`, a thread switch)."""
    global _hex, _hex_pos
    pos = _hex_pos
    end = pos + 16
    if end > _HEX_SIZE:
        _hex = os.urandom(_HEX_SIZE // 2).hex()
        pos, end = 0, 16
    _hex_pos = end
    return "req_" + _hex[pos:end]


def _b32(value: int, length: int) -> str:
    # 160 bits -> 32 base32 chars; keep the low `length` chars (26 chars = 130 bits).
    raw = value.to_bytes(20, "big")
    return base64.b32encode(raw).translate(_FROM_RFC4648).decode()[-length:]


# Two base32 characters (10 bits) per entry: the low 20 bits of the time in two lookups.
_PAIRS = tuple(a + b for a in _ALPHABET for b in _ALPHABET)
_last_ms = -1
_last_time_part = ""
_last_high = -1
_last_high_part = ""
# The time part's first eight characters (`ms >> 10`, a span of 1,024 ms) as `_time_part` last
# made them: an id of a new millisecond within that span adds the last two to them in `new_id`
# itself, without `_time_part`'s call (session 63).
_last_kms = -1
_last_kms_part = ""


def _time_part(ms: int) -> str:
    """`_b32(ms, 10)`: the high 30 bits change every ~17 minutes and are kept, the low 20 come
    from `_PAIRS` (at a few hundred requests a second nearly every id starts a new millisecond,
    and `_b32` costs ~5 us). Its first eight characters are kept for `new_id` (`_last_kms`)."""
    global _last_high, _last_high_part, _last_kms, _last_kms_part
    high = ms >> 20
    if high != _last_high:
        _last_high, _last_high_part = high, _b32(high, 6)
    kms_part = _last_high_part + _PAIRS[(ms >> 10) & 1023]
    _last_kms, _last_kms_part = ms >> 10, kms_part
    return kms_part + _PAIRS[ms & 1023]


def new_id(prefix: str, now_ms: int | None = None) -> str:
    """`prefix` + 26 chars: 48-bit millisecond time then 80 random bits (ULID layout).

    The 80 random bits are exactly 16 base32 characters, so the id is the cached time part plus
    16 random bytes mapped through a table (base64.b32encode is pure Python, ~4 us per call),
    taken from a string of them mapped 4,096 at a time (`_chars`).
    """
    global _last_ms, _last_time_part, _chars, _chars_pos
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    # This id's time part is read here, beside its check, into `part`: `new_id` is called from
    # the event loop's thread and the SQLite runner's ("evt_" ids) alike, and os.urandom below
    # lets the other run, whose id of another millisecond moves `_last_time_part`; read after
    # it, an id took the other thread's time (session 57's review). No call comes between the
    # check and the read, nor between the two stores, so no thread switch does either (as for
    # `_chars_pos`); ~30 instructions an id, where an (ms, part) tuple was ~150. The same holds
    # for `_last_kms` and `_last_kms_part`, which `_time_part` stores together: a new
    # millisecond of the span they spell is their part and two characters (no call).
    if ms != _last_ms:
        if ms >> 10 == _last_kms:
            part = _last_kms_part + _PAIRS[ms & 1023]
        else:
            part = _time_part(ms)
        _last_ms, _last_time_part = ms, part
    else:
        part = _last_time_part
    pos = _chars_pos
    end = pos + 16
    if end > _CHARS_SIZE:
        _chars = os.urandom(_CHARS_SIZE).translate(_LOW5).decode("ascii")
        pos, end = 0, 16
    _chars_pos = end
    return prefix + part + _chars[pos:end]


def id_floor(prefix: str, ms: int) -> str:
    """The least id made at `ms`: `id < id_floor(p, ms)` is "made before ms", as a key range."""
    return prefix + _b32(ms, 10) + _ALPHABET[0] * 16


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
