"""GSM 03.38 (3GPP TS 23.038) default alphabet, extension table and septet packing.

Everything here is table-driven so the hot path runs in C (``bytes.translate``, ``str.translate``,
``re``) instead of a Python loop per character: the gateway encodes every accepted message at least
once (preview/pricing) and again when it builds PDUs.

Why not smpplib's table: it puts a backtick where ``§`` belongs (0x5F), so it encodes `` ` `` (not a
GSM character) as ``§`` and refuses ``§``; it also lacks the form-feed extension.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Mapping

ESC = 0x1B

# The 128 entries of the default alphabet, by septet value. 0x1B is the escape to the extension
# table; it is not a character a text can contain, so it is represented by "\x1b" here but never
# accepted by the encoder.
BASE_TABLE = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ"
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
assert len(BASE_TABLE) == 128

# Extension table: character -> code that follows ESC (each costs two septets).
EXTENSION_TABLE: dict[str, int] = {
    "\f": 0x0A,
    "^": 0x14,
    "{": 0x28,
    "}": 0x29,
    "\\": 0x2F,
    "[": 0x3C,
    "~": 0x3D,
    "]": 0x3E,
    "|": 0x40,
    "€": 0x65,
}

_BASE_CODE: dict[str, int] = {ch: i for i, ch in enumerate(BASE_TABLE) if i != ESC}
_EXT_DECODE: dict[int, str] = {code: ch for ch, code in EXTENSION_TABLE.items()}

GSM_CHARS: frozenset[str] = frozenset(_BASE_CODE) | frozenset(EXTENSION_TABLE)

# str.translate table: GSM character -> its septet(s) as a str of code points < 0x80 (only used
# once a regex has established that every character is GSM).
_SEPTET_MAP: dict[int, str] = {ord(ch): chr(code) for ch, code in _BASE_CODE.items()}
_SEPTET_MAP.update({ord(ch): "\x1b" + chr(code) for ch, code in EXTENSION_TABLE.items()})

# bytes.translate table for the fast path. Input bytes are ASCII characters, plus, for the few
# non-ASCII GSM characters, a stand-in byte 0x90 + j produced by the "bridge-gsm7" encode error
# handler below. Output: the septet for a single-septet character; a placeholder 0x80 + i for an
# extension character (expanded to "ESC code" afterwards, only for the placeholders present);
# 0xFF for anything that is not GSM.
_EXT_CHARS = list(EXTENSION_TABLE)
_NON_ASCII_GSM = sorted(ch for ch in GSM_CHARS if not ch.isascii())
assert len(_EXT_CHARS) <= 0x10 and 0x90 + len(_NON_ASCII_GSM) < 0xFF


def _fast_entry(b: int) -> int:
    if b < 0x80:
        ch = chr(b)
    elif 0x90 <= b < 0x90 + len(_NON_ASCII_GSM):
        ch = _NON_ASCII_GSM[b - 0x90]
    else:
        return 0xFF
    if ch in EXTENSION_TABLE:
        return 0x80 + _EXT_CHARS.index(ch)
    return _BASE_CODE.get(ch, 0xFF)


_FAST = bytes(_fast_entry(b) for b in range(256))
_PLACEHOLDERS = tuple(
    (bytes((0x80 + i,)), bytes((ESC, EXTENSION_TABLE[ch]))) for i, ch in enumerate(_EXT_CHARS)
)
_STAND_IN: dict[str, bytes] = {ch: bytes((0x90 + j,)) for j, ch in enumerate(_NON_ASCII_GSM)}
_ERRORS = "bridge-gsm7"


def _stand_in_handler(exc: UnicodeError) -> tuple[bytes, int]:
    """Encode error handler: a run of non-ASCII characters -> stand-in bytes (0xFF if not GSM).

    Called once per run, so a mostly-ASCII text with a "€" or an "é" stays in C code otherwise.
    """
    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    text = exc.object
    out = []
    for ch in text[exc.start : exc.end]:
        b = _STAND_IN.get(ch)
        if b is None:
            return b"\xff", len(text)  # not GSM: stop here, the caller sees 0xFF
        out.append(b)
    return b"".join(out), exc.end


codecs.register_error(_ERRORS, _stand_in_handler)

# Beyond this many non-ASCII characters one str.translate beats a handler call per run.
_MAX_STAND_INS = 12
# How many characters of a non-ASCII text are first searched for one that is not GSM.
_HEAD = 16
# The last text refused by that search: a UCS-2 send asks of its text twice (the build's
# `split.one_gsm_part`, then the encoder's `_resolve_text`). Asked by identity, so only that
# very object answers from it; one string held.
_not_gsm: list[str | None] = [None]

# Decoding: bytes (latin-1 view) -> base-table char; the high bit is ignored (tolerant decoding of
# SMSCs that leave it set).
_DECODE_MAP: dict[int, str] = {b: BASE_TABLE[b & 0x7F] for b in range(256)}

_NON_GSM_RE = re.compile("[^" + re.escape("".join(sorted(GSM_CHARS))) + "]")


class TextError(Exception):
    """A text cannot be sent as asked. ``code`` is stable for machines, ``message`` for humans.

    Codes: ``EMPTY_MESSAGE``, ``MESSAGE_TOO_LONG``, ``UNENCODABLE``.
    Defined here (and re-exported by ``split``) so that the codec can raise it without an import
    cycle.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def is_gsm_char(ch: str) -> bool:
    return ch in GSM_CHARS


def gsm_septets(text: str) -> bytes | None:
    """Unpacked septets of ``text`` (as ``gsm_encode``), or None if a character is not GSM.

    The hot path of the gateway: all-ASCII texts never leave C code (encode, translate, isascii,
    and a few ``replace`` calls when extension characters are present); texts with a few non-ASCII
    characters add one error-handler call per run of them; others are rejected by one regex
    search or mapped by one ``str.translate``.
    """
    if text.isascii():
        raw = text.encode("ascii")
    elif _not_gsm[0] is text:  # the very text found not GSM last (a str never changes)
        return None
    elif _NON_GSM_RE.search(text, 0, _HEAD) is not None:
        # A non-GSM character near the start (a CJK or Cyrillic text, nearly every UCS-2 one):
        # refused without the whole text's UTF-8 encoding below (~4,000 instructions for 141
        # CJK characters, this ~2,000; each UCS-2 send asks twice: session 57).
        _not_gsm[0] = text
        return None
    elif len(text.encode("utf-8", "surrogatepass")) - len(text) <= _MAX_STAND_INS:
        raw = text.encode("ascii", _ERRORS)
    elif _NON_GSM_RE.search(text) is not None:
        return None
    else:
        return text.translate(_SEPTET_MAP).encode("ascii")
    fast = raw.translate(_FAST)
    if fast.isascii():
        return fast
    if 0xFF in fast:
        return None
    for placeholder, pair in _PLACEHOLDERS:
        if placeholder in fast:
            fast = fast.replace(placeholder, pair)
    return fast


def septet_count(text: str) -> int | None:
    septets = gsm_septets(text)
    return None if septets is None else len(septets)


def first_non_gsm(text: str) -> int:
    """Index of the first non-GSM character, or -1."""
    m = _NON_GSM_RE.search(text)
    return -1 if m is None else m.start()


def gsm_encode(text: str) -> bytes:
    """Unpacked GSM-7: one septet per octet, extension characters as ``0x1B code``."""
    septets = gsm_septets(text)
    if septets is not None:
        return septets
    pos = first_non_gsm(text)
    ch = text[pos]
    raise TextError(
        "UNENCODABLE",
        f"text: character {ch!r} (U+{ord(ch):04X}) at position {pos} is not in the GSM 03.38 "
        "alphabet",
    )


def gsm_decode(data: bytes) -> str:
    """Decode unpacked GSM-7, tolerantly.

    An escape followed by a code the extension table does not define shows the base-table
    character (TS 23.038: "display the character shown in the main default alphabet table");
    ``ESC ESC`` (reserved for a further table) shows a space; a trailing lone ESC is dropped.
    """
    if ESC not in data:
        return data.decode("latin-1").translate(_DECODE_MAP)
    return decode_escapes(data, _DECODE_MAP, _escaped_default)[0]


def _escaped_default(septet: int) -> str:
    code = septet & 0x7F
    if code == ESC:
        return " "
    return _EXT_DECODE.get(code) or BASE_TABLE[code]


def decode_escapes(
    data: bytes, translate: Mapping[int, str], escaped: Callable[[int], str]
) -> tuple[str, bool]:
    """Unpacked septets (one per octet) holding ESC (0x1B): the runs between escapes through
    `translate`, each ``ESC septet`` through `escaped(septet)`; and whether the data ends in a
    lone ESC (dropped). Shared by the default alphabet and the national tables (national.py)."""
    out: list[str] = []
    i = 0
    n = len(data)
    while True:
        j = data.find(b"\x1b", i)
        if j < 0:
            out.append(data[i:].decode("latin-1").translate(translate))
            return "".join(out), False
        out.append(data[i:j].decode("latin-1").translate(translate))
        if j + 1 >= n:
            return "".join(out), True
        out.append(escaped(data[j + 1]))
        i = j + 2


def pack_septets(septets: bytes, fill_bits: int = 0) -> bytes:
    """Pack septets LSB-first into octets, after ``fill_bits`` zero bits (to align after a UDH).

    Length is exactly ceil((7 * len + fill_bits) / 8) octets.
    """
    if not 0 <= fill_bits <= 6:
        raise ValueError(f"fill_bits: must be between 0 and 6, got {fill_bits}")
    n = len(septets)
    acc = 0
    # Build the bit string as one big int: septet i occupies bits [7*i, 7*i + 7).
    for s in reversed(septets):
        acc = (acc << 7) | (s & 0x7F)
    acc <<= fill_bits
    return acc.to_bytes((7 * n + fill_bits + 7) // 8, "little")


def unpack_septets(data: bytes, count: int, fill_bits: int = 0) -> bytes:
    """Inverse of ``pack_septets``: ``count`` septets starting after ``fill_bits`` bits."""
    if not 0 <= fill_bits <= 6:
        raise ValueError(f"fill_bits: must be between 0 and 6, got {fill_bits}")
    if count < 0 or 7 * count + fill_bits > 8 * len(data):
        raise ValueError(f"count: {count} septets do not fit in {len(data)} octets")
    acc = int.from_bytes(data, "little") >> fill_bits
    out = bytearray(count)
    for i in range(count):
        out[i] = acc & 0x7F
        acc >>= 7
    return bytes(out)
