"""What a text will cost and how it will travel, as one JSON-able dict (API and CLI ``preview``)."""

from __future__ import annotations

from typing import Any

from bridge.text.split import EncodeOptions, encode_message
from bridge.text.units import CountingRule, billable_units, tariff_chars

_DEFAULT_OPTIONS = EncodeOptions()


def with_sign(text: str, sign: str | None, sign_format: str = "【{sign}】") -> str:
    """Prefix the sign name as the carrier shows it; the tariff counts it as part of the text."""
    if not sign:
        return text
    # replace, not str.format: a brace in the sign name or the format must not raise.
    return sign_format.replace("{sign}", sign) + text


def preview(
    text: str,
    opts: EncodeOptions = _DEFAULT_OPTIONS,
    sign: str | None = None,
    sign_format: str = "【{sign}】",
    rule: CountingRule = CountingRule.CHARS_70_67,
) -> dict[str, Any]:
    """Encoding, segments, billable units and per-part sizes of ``text`` (raises ``TextError``)."""
    msg = encode_message(with_sign(text, sign, sign_format), opts)
    final = msg.text
    segments = msg.segments
    return {
        "text": final,
        "encoding": msg.encoding.value,
        "data_coding": msg.data_coding,
        "segments": segments,
        "billable_units": billable_units(final, rule, segments),
        "chars": tariff_chars(final),
        "parts": [{"chars": p.chars, "septets_or_octets": p.size} for p in msg.parts],
        "ucs2_chars": list(msg.ucs2_chars),
    }
