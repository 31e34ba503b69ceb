"""SMSC message-id normalisation: one canonical key for the id in submit_sm_resp and in receipts.

The most reported gateway bug is the receipt for an "unknown message id": the SMSC answers
submit_sm with `00B8BE19` (hex) and its receipt says `id:12107289` (decimal), or the case or the
leading zeros differ. Each SMSC's config says in which base each side comes; both sides are turned
into the same key here, and ids are looked up only by that key. Never raises: an id that does not
parse in its configured base is still a usable (string-normalised) key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "IdBase",
    "MsgIdRule",
    "normalize_id",
    "normalize_receipt_id",
    "normalize_resp_id",
    "normalize_tlv_id",
]


class IdBase(StrEnum):
    STR = "str"  # opaque string: only whitespace, case and leading zeros are normalised
    HEX = "hex"  # hexadecimal number (an optional 0x prefix is accepted)
    DEC = "dec"  # decimal number


# Read once: normalize_id runs twice per part sent (its resp's id, its receipt's), and a member
# read off its enum class costs ~900 instructions on Python 3.11 (session.py's _BOUND).
_STR, _HEX, _DEC = IdBase.STR, IdBase.HEX, IdBase.DEC


@dataclass(frozen=True, slots=True)
class MsgIdRule:
    resp_base: IdBase = IdBase.STR
    receipt_base: IdBase = IdBase.STR
    case_insensitive: bool = True
    strip_leading_zeros: bool = True
    tlv_as_receipt: bool = False  # receipted_message_id in receipt_base, not resp_base


# ASCII only: int() would also take "１２", "1_000", "+5" and " 5", none of them a real SMSC id.
_HEX_RE = re.compile(r"(?:0[xX])?([0-9A-Fa-f]+)")
_DEC_RE = re.compile(r"[0-9]+")
# Above this many digits int <-> str conversion may refuse (CPython's 4300-digit limit).
_MAX_NUMERIC_LEN = 1000


def _trim(value: str) -> str:
    return value.strip().strip("\x00").strip()


def _as_string(value: str, rule: MsgIdRule) -> str:
    if rule.case_insensitive:
        value = value.upper()
    if rule.strip_leading_zeros and value:
        # Until nothing changes: zeros stripped can bare blanks ("0 0" -> " 0"), and a key
        # must normalise to itself, or the resp side and the receipt side could differ.
        while (trimmed := _trim(value.lstrip("0"))) != value:
            value = trimmed
        value = value or "0"
    return value


def normalize_id(raw: str, base: IdBase, rule: MsgIdRule) -> str:
    """Canonical key of `raw` read in `base`: numbers become their decimal string, so that the
    hex and the decimal spelling of one id meet; anything else falls back to the string rules."""
    if base is _STR and raw.isascii() and raw.isalnum():
        # The usual id, letters and digits only (two per part sent: the resp's, the receipt's):
        # nothing to trim before or after its leading zeros go, so no loop of trims.
        value = raw.upper() if rule.case_insensitive else raw
        return (value.lstrip("0") or "0") if rule.strip_leading_zeros else value
    value = _trim(raw)
    if len(value) <= _MAX_NUMERIC_LEN:
        if base is _HEX:
            match = _HEX_RE.fullmatch(value)
            if match:
                return str(int(match.group(1), 16))
        elif base is _DEC and _DEC_RE.fullmatch(value):
            return str(int(value))
    return _as_string(value, rule)


def normalize_resp_id(raw: str, rule: MsgIdRule) -> str:
    """Key for the message_id of a submit_sm_resp."""
    return normalize_id(raw, rule.resp_base, rule)


def normalize_tlv_id(raw: str, rule: MsgIdRule) -> str:
    """Key for a receipt's receipted_message_id TLV: SMPP 3.4 (5.3.2.12) puts the submit_sm_resp
    id there, in its format; some carriers write the receipt text's id instead (decimal beside
    a hex response), which the SMSC's tlv_id_base says. Not guessed from what matches: a hex id
    read as decimal can be another part's id."""
    return normalize_id(raw, rule.receipt_base if rule.tlv_as_receipt else rule.resp_base, rule)


def normalize_receipt_id(raw: str, rule: MsgIdRule) -> str:
    """Key for the `id:` in a delivery receipt's text. A receipted_message_id TLV carries the
    submit_sm_resp's id in its format (SMPP 3.4 5.3.2.12): normalise it with
    normalize_resp_id."""
    return normalize_id(raw, rule.receipt_base, rule)
