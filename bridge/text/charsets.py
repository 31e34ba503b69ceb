"""The single- and double-byte character sets SMPP 3.4 (5.2.19) names for data_coding, read as
text (pure).

An MO comes in whatever its SMSC chose; the gateway never sends these (it sends GSM, Latin-1 or
UCS-2). Where the specification names a character set and not its encoding (JIS X 0208, JIS X
0212, KS C 5601), the encodings SMSCs and handsets use are tried in turn, and the first that
reads every octet wins:

- 5, JIS X 0208: ISO-2022-JP when the octets hold its escape sequences (Shift_JIS and EUC-JP
  never contain ESC); otherwise Shift_JIS, as Japanese handsets and most SMSCs send it, read as
  Windows-31J (cp932: Shift_JIS and the NEC/IBM characters handsets write, such as circled
  digits), then EUC-JP. The bare 7-bit row/cell form (no escapes) is indistinguishable from
  ASCII and is read as Shift_JIS reads ASCII.
- 0x0D, JIS X 0212: its characters exist only in EUC-JP (after SS3, 0x8F) and ISO-2022-JP-1 and
  later (ESC $ ( D); so ISO-2022-JP's extended decoder when escapes are present, else EUC-JP, and
  Shift_JIS last (what this gateway read before, and what a sender mislabelling Shift_JIS
  means).
- 0x0A, ISO-2022-JP: itself (the extended decoder, which also reads half-width katakana).
- 0x0E, KS C 5601: ISO-2022-KR when its designator (ESC $ ) C) is present, else EUC-KR, then
  cp949 (Unified Hangul Code, the superset Korean handsets write; the same for EUC-KR octets).
- 1, IA5: ASCII; but some SMSCs put unpacked GSM 7-bit septets under it. An IA5 text holds no
  control octet besides tab, line feed, form feed and carriage return (the gateway itself sends
  no others under data_coding 1), while GSM text uses 0x00-0x1F for 29 of its letters and signs
  ("@" is 0x00, "_" 0x11, "É" 0x1F) and for the escape. So octets with such a control (NUL
  padding at the end aside) are read as GSM; the rest as ASCII (a GSM text whose only such sign
  is "Ç", 0x09, reads as a tab, as every GSM text under IA5 did before), where "@", "_" and "$" are
  IA5's, as an SMSC that labels GSM text IA5 (the gateway's `gsm_data_coding: 1`) sends them.
  Octets above 0x7F, which IA5 lacks, are read as Latin-1 (senders that put them there mean it).
- 3, 6, 7: ISO-8859-1, -5 (Cyrillic), -8 (Latin/Hebrew; then Windows-1255, its superset with
  the vowel points).

Octets the coding's encodings cannot read are kept as hex, as for a coding without a text
decoder (pictograms, reserved values), and reported `undecodable`: a replacement character
would lose what the sender sent. A multi-byte character cut off at the very end (a long
message's part missing after it) is a replacement character, as a cut UCS-2 surrogate pair is.
"""

from __future__ import annotations

import codecs
import re

_ISO2022_JP = ("iso2022_jp_ext",)

# data_coding -> the encodings tried, in order, for octets without ISO-2022 escapes.
_CANDIDATES: dict[int, tuple[str, ...]] = {
    # IA5 has no octet above 0x7F; one there is read as Latin-1 (a sender's "é" is still "é"),
    # not the whole text turned into hex for one letter.
    1: ("ascii", "latin-1"),
    3: ("latin-1",),
    5: ("cp932", "euc_jp"),
    6: ("iso8859_5",),
    # Windows-1255 after it: ISO-8859-8 plus the vowel points (niqqud) Hebrew handsets write;
    # one of those turned the whole reply into hex.
    7: ("iso8859_8", "cp1255"),
    0x0A: _ISO2022_JP,
    0x0D: ("euc_jp", "cp932"),
    0x0E: ("euc_kr", "cp949"),
}

# data_coding -> (escape sequence prefix, the encodings tried when the octets hold it).
_ESCAPED: dict[int, tuple[bytes, tuple[str, ...]]] = {
    5: (b"\x1b$", _ISO2022_JP),
    0x0D: (b"\x1b$", _ISO2022_JP),
    0x0E: (b"\x1b$)C", ("iso2022_kr",)),
}

# An octet below 0x20 but the IA5 controls a text may hold (tab, line feed, form feed,
# carriage return): GSM septets.
_GSM_ONLY = re.compile(rb"[\x00-\x08\x0b\x0e-\x1f]")


def has_charset(data_coding: int) -> bool:
    """Whether data_coding names a character set decoded here (else: binary or unknown)."""
    return data_coding in _CANDIDATES


def ia5_holds_gsm(payload: bytes) -> bool:
    """Whether octets labelled IA5 (data_coding 1) are unpacked GSM septets instead: they hold a
    control octet no IA5 text does (trailing NUL padding aside)."""
    return _GSM_ONLY.search(payload.rstrip(b"\x00")) is not None


def decode_octets(data_coding: int, payload: bytes) -> tuple[str, bool]:
    """(text, undecodable) of octets in one of the character sets `has_charset` names: the first
    encoding of the coding that reads them; when none does, their hex and True."""
    candidates = _CANDIDATES.get(data_coding, ())
    escaped = _ESCAPED.get(data_coding)
    if escaped is not None and escaped[0] in payload:
        candidates = escaped[1]
    for name in candidates:
        text = _strict(name, payload)
        if text is not None:
            return text, False
    return payload.hex(), True


def _strict(name: str, payload: bytes) -> str | None:
    """The octets read with one encoding; a character cut off at the end as U+FFFD; None when
    an octet is not of this encoding."""
    try:
        return codecs.decode(payload, name)
    except UnicodeDecodeError as e:
        if e.end != len(payload) or not e.reason.startswith("incomplete"):
            return None
        try:
            return codecs.decode(payload[: e.start], name) + "\ufffd"
        except UnicodeDecodeError:
            return None
