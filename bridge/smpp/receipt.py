"""Delivery receipts: parse the SMPP 3.4 Appendix B text and the receipt TLVs (pure).

SMSCs disagree on spacing, case, field order, date length and which fields they send at all, so
parsing is tolerant and never raises; the one thing a receipt cannot do without is a message id.
When the TLVs (receipted_message_id, message_state, network_error_code) are present they win over
the text: they are typed, while the text is free-form and sometimes truncated.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

from bridge.fastinit import fast_init

__all__ = [
    "LATIN1_OUTCOME_RE",
    "MESSAGE_STATE_STAT",
    "STANDARD_OUTCOME_RE",
    "STAT_STATES",
    "Receipt",
    "ReceiptState",
    "format_receipt_text",
    "format_smpp_date",
    "network_error",
    "parse_done_date",
    "parse_receipt_text",
    "parse_smpp_date",
    "receipt_from_fields",
    "receipt_outcome",
    "receipt_values",
    "state_for_stat",
]


class ReceiptState(StrEnum):
    DELIVERED = "delivered"
    UNDELIVERABLE = "undeliverable"
    EXPIRED = "expired"
    REJECTED = "rejected"
    UNKNOWN = "unknown"
    ENROUTE = "enroute"  # intermediate: the SMSC still holds the message; a final receipt follows


# Read once: each receipt read one or two, and a member read off its enum class costs ~900
# instructions on Python 3.11 (session.py's _BOUND).
_UNKNOWN, _ENROUTE = ReceiptState.UNKNOWN, ReceiptState.ENROUTE


STAT_STATES: dict[str, ReceiptState] = {
    "DELIVRD": ReceiptState.DELIVERED,
    "UNDELIV": ReceiptState.UNDELIVERABLE,
    "DELETED": ReceiptState.UNDELIVERABLE,
    "EXPIRED": ReceiptState.EXPIRED,
    "REJECTD": ReceiptState.REJECTED,
    "UNKNOWN": ReceiptState.UNKNOWN,
    "ACCEPTD": ReceiptState.ENROUTE,
    "ENROUTE": ReceiptState.ENROUTE,
    "BUFFRED": ReceiptState.ENROUTE,
    "BUFFERD": ReceiptState.ENROUTE,
    "ACKED": ReceiptState.ENROUTE,
    # The message_state names of SMPP 3.4 table 5-6 in full, which some SMSCs write instead of
    # the 7-letter abbreviations (the same states, not a guess): read as unknown, every message
    # of such a carrier ended failed and refunded although delivered.
    "DELIVERED": ReceiptState.DELIVERED,
    "UNDELIVERABLE": ReceiptState.UNDELIVERABLE,
    "REJECTED": ReceiptState.REJECTED,
    "ACCEPTED": ReceiptState.ENROUTE,
}

# message_state TLV values (SMPP 3.4, 5.2.28) and the stat word each stands for.
MESSAGE_STATE_STAT: dict[int, str] = {
    1: "ENROUTE",
    2: "DELIVRD",
    3: "EXPIRED",
    4: "DELETED",
    5: "UNDELIV",
    6: "ACCEPTD",
    7: "UNKNOWN",
    8: "REJECTD",
}

# A field name starts the text or follows whitespace; "submit date" also comes as "submit_date".
_FIELD_RE = re.compile(
    r"(?:^|(?<=\s))(id|sub|dlvrd|submit[ _]*date|done[ _]*date|stat|err|text)\s*:",
    re.IGNORECASE,
)
_DATE_RE = re.compile(r"[0-9]{10}(?:[0-9]{2})?")


def _field_key(name: str) -> str:
    lowered = name.lower()
    if lowered.startswith("submit"):
        return "submit_date"
    if lowered.startswith("done"):
        return "done_date"
    return lowered


# The layout nearly every SMSC sends (SMPP 3.4 Appendix B), parsed by one match; anything else
# takes the tolerant path below.
_STANDARD_RE = re.compile(
    r"id:(\S+) sub:(\S+) dlvrd:(\S+) submit date:(\d{10}(?:\d{2})?) "
    r"done date:(\d{10}(?:\d{2})?) stat:(\S+) err:(\S+)(?: text:(.*))?",
    re.DOTALL,
)
_STANDARD_KEYS = ("id", "sub", "dlvrd", "submit_date", "done_date", "stat", "err")
# _STANDARD_RE with only the four groups receipt_outcome reads (id, done date, stat, err): the
# same texts match (the other groups made non-capturing), and the match records and m.groups()
# builds half as many (~2 k instructions a receipt, session 59). Inbound._receipt matches with it.
STANDARD_OUTCOME_RE = re.compile(
    r"id:(\S+) sub:\S+ dlvrd:\S+ submit date:\d{10}(?:\d{2})? "
    r"done date:(\d{10}(?:\d{2})?) stat:(\S+) err:(\S+)(?: text:.*)?",
    re.DOTALL,
)
# STANDARD_OUTCOME_RE for a latin-1 text (Inbound's: the receipt's octets decoded as latin-1), at
# ~1.7 k instructions less a match (7.3 k -> 5.5 k, counted alone under callgrind; session 63):
# `[0-9]` for `\d`, which asks Unicode's decimal-digit table a character where the only decimal
# digits of latin-1 are 0-9; each run possessive (`++`, `?+`, `.*+`), which the engine then does
# not record positions in for a backtrack that could not help: a `\S` run is followed by a space,
# a date's optional two digits by a space, the text's `.*` by the end. The same texts match with
# the same groups (tests/unit/test_session63_receipt_re.py, over every latin-1 character in each
# field and hypothesis texts); for a str beyond latin-1 (`receipt_outcome`'s callers may give
# one) `\d` matches other scripts' digits, so that keeps STANDARD_OUTCOME_RE.
LATIN1_OUTCOME_RE = re.compile(
    r"id:(\S++) sub:\S++ dlvrd:\S++ submit date:[0-9]{10}(?:[0-9][0-9])?+ "
    r"done date:([0-9]{10}(?:[0-9][0-9])?+) stat:(\S++) err:(\S++)(?: text:.*+)?",
    re.DOTALL,
)


def parse_receipt_text(text: str) -> dict[str, str]:
    """Return the fields found, keyed `id sub dlvrd submit_date done_date stat err text`.

    Each value is the first word after its `name:` (so a vendor's unknown `foo:bar` field cannot
    bleed into a known one), except `text`, which takes the rest of the message verbatim because
    it quotes the user's text, spaces, colons and all. The first occurrence of a field wins.
    """
    m = _STANDARD_RE.fullmatch(text)
    if m is not None:
        fields = dict(zip(_STANDARD_KEYS, m.groups(), strict=False))
        if m.group(8) is not None:
            fields["text"] = m.group(8).strip()
        return fields
    fields = {}
    matches = list(_FIELD_RE.finditer(text))
    for index, match in enumerate(matches):
        key = _field_key(match.group(1))
        if key == "text":
            fields.setdefault("text", text[match.end() :].strip())
            break
        end = matches[index + 1].start() if index + 1 < len(matches) else len(text)
        words = text[match.end() : end].split()
        fields.setdefault(key, words[0] if words else "")
    return fields


def parse_smpp_date(value: str) -> datetime | None:
    """`YYMMDDhhmm` or `YYMMDDhhmmss`, read as UTC (receipts carry no zone); None if unparsable."""
    return _parse_smpp_date(value.strip() if value else "")


@functools.lru_cache(maxsize=1024)
def _parse_smpp_date(value: str) -> datetime | None:
    # Cached: receipts of the same minute (or second) carry the same text, two dates each.
    if not _DATE_RE.fullmatch(value):
        return None
    parts = [int(value[i : i + 2]) for i in range(0, len(value), 2)]
    year, month, day, hour, minute = parts[:5]
    second = parts[5] if len(parts) == 6 else 0
    try:
        return datetime(2000 + year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None


def format_smpp_date(value: datetime) -> str:
    """`YYMMDDhhmm` in UTC (naive datetimes are taken as UTC), as most SMSCs send it."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).strftime("%y%m%d%H%M")


def state_for_stat(stat: str) -> ReceiptState:
    """Map a stat word; one we do not recognise is UNKNOWN (final), never a guess at success."""
    return STAT_STATES.get(stat.strip().upper(), _UNKNOWN)


@fast_init
@dataclass(frozen=True, slots=True)
class Receipt:
    message_id: str
    state: ReceiptState
    stat: str  # the stat word upper-cased, or the one derived from message_state; "" when neither
    err: str | None
    submit_date: datetime | None
    done_date: datetime | None
    sub: int | None
    dlvrd: int | None
    text: str
    network_error: int | None

    @property
    def final(self) -> bool:
        return self.state is not _ENROUTE


def _clean(value: str | None) -> str:
    """C-octet strings sometimes arrive with their NUL terminator still attached."""
    return value.strip().strip("\x00").strip() if value else ""


def _int_or_none(value: str | None) -> int | None:
    return int(value) if value and value.isascii() and value.isdigit() else None


def _network_error(raw: bytes | None) -> int | None:
    """network_error_code is 3 octets: network type, then the 2-octet error code we keep.

    A 2-octet value (a known SMSC mistake) is taken as the code alone; anything else is dropped.
    """
    if raw is None:
        return None
    if len(raw) == 3:
        return int.from_bytes(raw[1:3], "big")
    if len(raw) == 2:
        return int.from_bytes(raw, "big")
    return None


# Receipt's fields in its order, as receipt_values gives them.
ReceiptValues = tuple[
    str, ReceiptState, str, str | None, datetime | None, datetime | None, int | None, int | None,
    str, int | None,
]  # fmt: skip


def receipt_from_fields(
    short_message_text: str,
    tlv_receipted_id: str | None,
    tlv_message_state: int | None,
    tlv_network_error: bytes | None,
) -> Receipt | None:
    """Combine the text and the TLVs of a deliver_sm receipt; None when no message id is found.

    A message_state outside 1..8 says nothing usable, so the text's stat is used instead.
    """
    got = receipt_values(short_message_text, tlv_receipted_id, tlv_message_state, tlv_network_error)
    return None if got is None else Receipt(*got)


def receipt_values(
    short_message_text: str,
    tlv_receipted_id: str | None,
    tlv_message_state: int | None,
    tlv_network_error: bytes | None,
) -> ReceiptValues | None:
    """receipt_from_fields' Receipt as a plain tuple of its fields, in their order. The owner's
    receipt path (Inbound, one per part sent) reads six of them into a ReceiptIn at once: the
    frozen Receipt it built and dropped was ~7.4 k of the ~66 k instructions a receipt costs
    there (session 51, counted under callgrind)."""
    text = short_message_text or ""
    m = _STANDARD_RE.fullmatch(text) if "\x00" not in text else None
    if m is not None:
        # The standard layout (every receipt of most SMSCs, one per part sent): its fields are
        # whole words without NULs, already what the tolerant path below makes of them, so they
        # are used as matched (the dict and the clean-up of each field cost ~40% of a receipt).
        text_id, sub, dlvrd, submit_date, done_date, text_stat, err, quoted = m.groups()
        quoted = quoted.strip() if quoted is not None else ""
    else:
        # A NUL after a field (sm_length counting the C string's terminator) must not stick to
        # it: "DELIVRD\0" is not a stat we know, and a delivered message was read as failed.
        # The quoted text is kept as it came.
        fields = {
            k: v if k == "text" else v.replace("\x00", "").strip()
            for k, v in parse_receipt_text(text).items()
        }
        text_id = fields.get("id")
        sub = fields.get("sub")
        dlvrd = fields.get("dlvrd")
        submit_date = fields.get("submit_date", "")
        done_date = fields.get("done_date", "")
        text_stat = fields.get("stat", "")
        err = fields.get("err") or None
        quoted = fields.get("text", "")
    message_id = _clean(tlv_receipted_id) or _clean(text_id)
    if not message_id:
        return None
    if tlv_message_state in MESSAGE_STATE_STAT:
        stat = MESSAGE_STATE_STAT[tlv_message_state]
    else:
        stat = text_stat.upper()
    state = state_for_stat(stat) if stat else _UNKNOWN
    return (
        message_id,
        state,
        stat,
        err,
        _parse_smpp_date(submit_date.strip()),
        _parse_smpp_date(done_date.strip()),
        _int_or_none(sub),
        _int_or_none(dlvrd),
        quoted,
        _network_error(tlv_network_error),
    )


# receipt_values' message_id, state, stat, err, done_date and network_error, in that order.
ReceiptOutcome = tuple[str, ReceiptState, str, str | None, datetime | None, int | None]


# For Inbound._receipt's standard layout (STANDARD_OUTCOME_RE: a date of 10 or 12 digits as
# matched, nothing to strip; a network_error_code TLV's value): the functions themselves, not
# wrappers (a Python call each, a receipt).
parse_done_date = _parse_smpp_date
network_error = _network_error


def receipt_outcome(
    short_message_text: str,
    tlv_receipted_id: str | None,
    tlv_message_state: int | None,
    tlv_network_error: bytes | None,
) -> ReceiptOutcome | None:
    """receipt_values' six fields the owner stores (Inbound._receipt, one per part sent), without
    the four it dropped: the submit date read, sub and dlvrd made ints and the quoted text
    stripped, ~6 k of the ~26 k instructions receipt_values cost a receipt (session 57, counted
    under callgrind). The same values: tests/unit/test_receipt_outcome.py checks them against
    receipt_values' on random and odd receipts."""
    text = short_message_text or ""
    m = STANDARD_OUTCOME_RE.fullmatch(text) if "\x00" not in text else None
    if m is not None:
        # receipt_values' standard layout: its id, stat and done date are whole words already
        # (no space, no NUL: _clean and the date's strip would leave them as they are).
        text_id, done_date, text_stat, err = m.groups()
        message_id = (_clean(tlv_receipted_id) if tlv_receipted_id else "") or text_id
    else:
        got = receipt_values(text, tlv_receipted_id, tlv_message_state, tlv_network_error)
        if got is None:
            return None
        return got[0], got[1], got[2], got[3], got[5], got[9]
    if tlv_message_state in MESSAGE_STATE_STAT:
        stat = MESSAGE_STATE_STAT[tlv_message_state]
    else:
        stat = text_stat.upper()
    # state_for_stat's lookup without its strip and upper: both words are upper case (the
    # table's, or upper() of one without spaces: \S+) and upper() of upper() is itself for
    # latin-1 text; an empty stat is not a key (UNKNOWN, as receipt_values gives it).
    return (
        message_id,
        STAT_STATES.get(stat, _UNKNOWN),
        stat,
        err,
        _parse_smpp_date(done_date),
        _network_error(tlv_network_error) if tlv_network_error is not None else None,
    )


def format_receipt_text(
    message_id: str,
    stat: str,
    err: str = "000",
    sub: int = 1,
    dlvrd: int = 1,
    *,
    submit_date: datetime,
    done_date: datetime,
    text: str = "",
) -> str:
    """The SMPP 3.4 Appendix B receipt text, as the simulator sends it.

    `text` is written as given; the convention is the first 20 characters of the message, and
    trimming it is the caller's choice.
    """
    return (
        f"id:{message_id} sub:{sub:03d} dlvrd:{dlvrd:03d} "
        f"submit date:{format_smpp_date(submit_date)} done date:{format_smpp_date(done_date)} "
        f"stat:{stat} err:{err} text:{text}"
    )
