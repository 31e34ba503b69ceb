"""Billable units under a tariff's counting rule (README, "Sending rules and billing").

Separate from the wire split because tariffs do not count what is sent: the domestic rule counts
characters of the text including the sign name (70, then 67 per unit) whatever the encoding, while
international tariffs count the segments actually transmitted.
"""

from __future__ import annotations

from codecs import utf_16_le_encode
from enum import StrEnum


class CountingRule(StrEnum):
    CHARS_70_67 = "chars_70_67"
    WIRE_SEGMENTS = "wire_segments"


# Module constants: a member read off its class costs ~10 times a global's read on Python 3.11
# (~1,000 instructions; bridge/text/split.py), and every accepted message is counted.
_CHARS_70_67, _WIRE_SEGMENTS = CountingRule.CHARS_70_67, CountingRule.WIRE_SEGMENTS


def tariff_chars(text: str) -> int:
    """Characters as the tariff counts them: one each, two for a character outside the BMP.

    A non-BMP character takes two UTF-16 units on the carrier link, hence two.
    """
    global _last
    if text.isascii():
        return len(text)
    last = _last
    if last[0] is text:  # the same string object: the same count (a str never changes)
        return last[1]
    # The codec's function itself, not str.encode("utf-16-le", ...): that looks the name up in
    # the codec registry on every call (~2,400 of its ~4,800 instructions for 141 CJK
    # characters; session 57). The same bytes.
    n = len(utf_16_le_encode(text, "surrogatepass")[0]) // 2
    _last = (text, n)
    return n


# The last non-ASCII text counted and its count: a send counts its text twice (its length
# check, `submit.signed_text`, and its units, `billable_units`), ~3,300 instructions each for
# a 3-part UCS-2 text. Asked by identity, so only that very object answers from it.
_last: tuple[str | None, int] = (None, 0)


def units_of_chars(n: int) -> int:
    """Units of a text of `n` characters (`tariff_chars`) under CHARS_70_67: one up to 70, then
    one per 67. Apart from `billable_units` for a caller that has counted the text already
    (`Submitter.build`'s usual send)."""
    return 1 if n <= 70 else -(-n // 67)


def billable_units(text: str, rule: CountingRule, wire_segments: int) -> int:
    """Units billed for ``text`` (which already includes the sign name)."""
    if rule == _CHARS_70_67:
        return units_of_chars(tariff_chars(text))
    if rule == _WIRE_SEGMENTS:
        return wire_segments
    raise ValueError(f"rule: unknown counting rule {rule!r}")
