"""A parsed Alibaba Cloud signed call and its clock checks (pure: the caller supplies `now`)."""

from __future__ import annotations

import calendar
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from bridge.compat.aliyun_canon import acs3_signature, rpc_v1_signature
from bridge.compat.aliyun_errors import protocol_error, signature_mismatch

__all__ = [
    "API_VERSION",
    "DEFAULT_MAX_SKEW_S",
    "Scheme",
    "SignedCall",
    "check_timestamp",
    "parse_timestamp",
]

API_VERSION = "2017-05-25"
DEFAULT_MAX_SKEW_S = 900  # Alibaba accepts 15 minutes either way
_TIMESTAMP_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})Z", re.ASCII)

Scheme = Literal["rpc_v1", "acs3"]


@dataclass(frozen=True, slots=True)
class SignedCall:
    """A well-formed signed call, not yet authenticated: `verify(secret)` does that.

    `params` are the business arguments (query then form body, last value wins), without the
    authentication ones (`AUTH_PARAMS`). `string_to_sign` is what the server signs; it is safe to
    log and is returned to the client on a mismatch, as Alibaba does.
    """

    scheme: Scheme
    algorithm: str
    access_key_id: str
    nonce: str
    timestamp: int
    action: str
    version: str
    format: Literal["JSON", "XML"]
    params: Mapping[str, str] = field(hash=False)
    string_to_sign: str
    signature: str
    canonical_request: str = ""

    def expected_signature(self, secret: str) -> str:
        if self.scheme == "rpc_v1":
            return rpc_v1_signature(self.string_to_sign, secret)
        return acs3_signature(self.string_to_sign, secret, self.algorithm)

    def verify(self, secret: str) -> None:
        """Raise SignatureDoesNotMatch (400) unless the call was signed with `secret`."""
        expected = self.expected_signature(secret)
        given = self.signature if self.scheme == "rpc_v1" else self.signature.lower()
        if not hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8")):
            raise signature_mismatch(self.string_to_sign)


def parse_timestamp(value: str) -> int:
    """`2026-11-29T15:54:47Z` (UTC, whole seconds, `Z`) -> unix seconds.

    Anything else (fractions, offsets, impossible dates) is InvalidTimeStamp.Format, as Alibaba
    answers for fractional seconds.
    """
    match = _TIMESTAMP_RE.fullmatch(value)
    if match is None:
        raise protocol_error("InvalidTimeStamp.Format", f"Got {value[:40]!r}.")
    year, month, day, hour, minute, second = (int(g) for g in match.groups())
    # Year 0000 matches the pattern but no calendar function takes it (a 500 before this check).
    if not (
        year >= 1
        and 1 <= month <= 12
        and 1 <= day <= 31
        and hour < 24
        and minute < 60
        and second < 60
    ):
        raise protocol_error("InvalidTimeStamp.Format", f"Got {value!r}.")
    if day > calendar.monthrange(year, month)[1]:
        raise protocol_error("InvalidTimeStamp.Format", f"Got {value!r}.")
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))


def check_timestamp(
    ts: int, now: float, max_skew_s: float = DEFAULT_MAX_SKEW_S, late_s: float | None = None
) -> None:
    """Refuse a call signed more than `max_skew_s` seconds away from `now` (either way), or more
    than `late_s` in the past while a raise of the skew settles (bridge/domain/skew_window.py)."""
    late = max_skew_s if late_s is None else min(late_s, max_skew_s)
    if ts - now > max_skew_s or now - ts > late:
        allowed = f"{max_skew_s:g} s" if late == max_skew_s else f"-{late:g} s to +{max_skew_s:g} s"
        raise protocol_error(
            "InvalidTimeStamp.Expired",
            f"Allowed skew is {allowed}; the call is {now - ts:+.0f} s from server time.",
        )
