"""Status reports and MO in Alibaba Cloud's push shapes (SmsReport, SmsUp), for accounts whose
`report_format` is "aliyun": their receivers were written for the cloud service (pure).

The cloud service pushes a JSON array of objects with snake_case fields and local ("2017-02-02
22:23:24", China time on the real service) timestamps; domestic numbers carry no country code.
Receivers answer {"code": 0}; any 2xx counts as delivered here, as for native webhooks.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from bridge.store.models import MessageRecord, MoMessage

_ERR_MSG = {
    "DELIVERED": "用户接收成功",
    "UNDELIV": "用户接收失败",
    "EXPIRED": "短信已过期",
    "REJECTD": "短信被拒绝",
    "UNKNOWN": "状态未知",
}


@lru_cache(maxsize=16)
def _zone(tz: str) -> ZoneInfo:
    return ZoneInfo(tz)


def local_time(ms: int | None, tz: str) -> str | None:
    """unix ms -> "YYYY-MM-DD HH:MM:SS" in `tz` (the cloud service's report time format)."""
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, _zone(tz)).strftime("%Y-%m-%d %H:%M:%S")


# Alibaba's domestic numbers: mainland China (IsGlobe 1, PhoneNum without a country code).
DOMESTIC_PREFIX = "+86"


def phone(e164: str, domestic_prefix: str = DOMESTIC_PREFIX) -> str:
    """The number as the cloud service shows it: national for domestic, digits otherwise."""
    if e164.startswith(domestic_prefix):
        return e164[len(domestic_prefix) :]
    return e164.lstrip("+")


def err_code(m: MessageRecord) -> str:
    if m.state == "delivered":
        return "DELIVERED"
    return (m.error_code or m.state.upper())[:32]


def sms_report(m: MessageRecord, tz: str, domestic_prefix: str = DOMESTIC_PREFIX) -> dict[str, Any]:
    code = err_code(m)
    return {
        "phone_number": phone(m.recipient, domestic_prefix),
        "send_time": local_time(m.sent_at or m.accepted_at, tz),
        "report_time": local_time(m.done_at, tz),
        "success": m.state == "delivered",
        "err_code": code,
        "err_msg": _ERR_MSG.get(code, m.error_text or code),
        "sms_size": str(m.segments),
        "biz_id": m.batch_id,
        "out_id": m.client_ref or "",
    }


def sms_up(
    mo: MoMessage,
    tz: str,
    sign_name: str | None = None,
    domestic_prefix: str = "+86",
    extension_base: str | None = None,
) -> dict[str, Any]:
    """`dest_code` is the extension code (what SmsUpExtendCode set, by which Alibaba-written
    receivers match a reply to its send): the address the reply went to past the account's
    extension base, or the whole address when it is not under it."""
    return {
        "phone_number": phone(mo.source, domestic_prefix),
        "send_time": local_time(mo.received_at, tz),
        "content": mo.text,
        "sign_name": sign_name or "",
        "dest_code": _dest_code(mo.destination, extension_base),
        "sequence_id": sequence_id(mo.id),
    }


def _dest_code(destination: str, base: str | None) -> str:
    if base is None:
        return destination
    digits, base_digits = destination.lstrip("+"), base.lstrip("+")
    return digits[len(base_digits) :] if digits.startswith(base_digits) else destination


def sequence_id(mo_id: str) -> int:
    """SmsUp's sequence_id: unique per MO and the same in every push of it, so receivers may
    de-duplicate by it. Its arrival millisecond (as before) is shared by two replies that arrive
    together, and one of them would be dropped. 52 bits of the MO id's hash: exact in every JSON
    reader (JavaScript's numbers included)."""
    return int.from_bytes(hashlib.blake2b(mo_id.encode(), digest_size=8).digest()) >> 12
