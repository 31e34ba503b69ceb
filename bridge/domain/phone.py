"""Phone numbers to E.164 (pure).

Internally every number is E.164 (`+8613800138000`). National forms are accepted only where the
account's default country makes them unambiguous; anything else is refused with a reason, because a
wrongly guessed country code sends a paid message to a stranger.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

_SEPARATORS = re.compile(r"[\s\-().]")
# ASCII digits only: `\d` and str.isdigit() also accept "١٣٨" (Arabic-Indic) and "²", which
# would reach the SMSC as a destination address no network can route.
_E164 = re.compile(r"\+[1-9][0-9]{6,14}")
# `normalize`'s first check, for a caller that takes a number already in E.164 its own way
# (bridge/api/submit.py's usual send): the number is its own E.164 form when this matches.
E164_FULLMATCH = _E164.fullmatch
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class CountryPlan:
    code: str  # calling code without "+"
    national: re.Pattern[str]  # significant national number (after the trunk prefix)
    trunk: str = ""  # national trunk prefix, e.g. "0"


# A deliberately small table of well-understood numbering plans; a country not listed here can
# still send in E.164 form.
PLANS: dict[str, CountryPlan] = {
    "CN": CountryPlan("86", re.compile(r"^1[3-9]\d{9}$")),  # mobiles only: SMS goes to mobiles
    "HK": CountryPlan("852", re.compile(r"^[4-9]\d{7}$")),
    "MO": CountryPlan("853", re.compile(r"^6\d{7}$")),
    "TW": CountryPlan("886", re.compile(r"^9\d{8}$"), "0"),
    "SG": CountryPlan("65", re.compile(r"^[89]\d{7}$")),
    "US": CountryPlan("1", re.compile(r"^[2-9]\d{2}[2-9]\d{6}$"), "1"),
    "CA": CountryPlan("1", re.compile(r"^[2-9]\d{2}[2-9]\d{6}$"), "1"),
    "GB": CountryPlan("44", re.compile(r"^7\d{9}$"), "0"),
    "DE": CountryPlan("49", re.compile(r"^1[5-7]\d{8,9}$"), "0"),
    "FR": CountryPlan("33", re.compile(r"^[67]\d{8}$"), "0"),
    "IN": CountryPlan("91", re.compile(r"^[6-9]\d{9}$"), "0"),
    "JP": CountryPlan("81", re.compile(r"^[789]0\d{8}$"), "0"),
    "AU": CountryPlan("61", re.compile(r"^4\d{8}$"), "0"),
}


class PhoneError(ValueError):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def normalize(raw: str, default_country: str | None = None) -> str:
    """E.164 for `raw`, or PhoneError saying why it is refused."""
    if isinstance(raw, str) and _E164.fullmatch(raw):
        # Already E.164 (nearly every number an API sends): what the steps below return for it
        # (no blank, no separator, no "00"), without their copies and their regex substitution
        # (~5,000 instructions a number, session 53).
        return raw
    if not isinstance(raw, str) or not raw.strip():
        raise PhoneError("phone number is empty")
    s = _SEPARATORS.sub("", raw.strip())
    if s.startswith("00"):
        s = "+" + s[2:]
    if s.startswith("+"):
        if not _E164.fullmatch(s):
            raise PhoneError(f"{raw!r} is not a valid E.164 number (+ then 7 to 15 digits)")
        return s
    if not _DIGITS.fullmatch(s):
        raise PhoneError(f"{raw!r} contains characters that are not digits")
    if default_country is None:
        raise PhoneError(
            f"{raw!r} has no country code; send E.164 (+country code) or set the account's "
            "default country"
        )
    plan = PLANS.get(default_country.upper())
    if plan is None:
        raise PhoneError(
            f"{raw!r} has no country code and national numbers of {default_country} are not "
            "supported; send E.164"
        )
    national = s
    if plan.trunk and national.startswith(plan.trunk) and not plan.national.fullmatch(national):
        national = national[len(plan.trunk) :]
    if not plan.national.fullmatch(national):
        raise PhoneError(
            f"{raw!r} is not an unambiguous {default_country} mobile number; send E.164"
        )
    return f"+{plan.code}{national}"


def mask(e164: str) -> str:
    """Keep the country code and the last 4 digits: enough to recognise, not to dial."""
    if len(e164) <= 7:
        return "*" * len(e164)
    return e164[:3] + "*" * (len(e164) - 7) + e164[-4:]


def is_national_mobile(digits: str, calling_code: str) -> bool:
    """Whether `digits`, as written, is a mobile number of the country `calling_code` ("+86")
    in its national form (no trunk prefix), by PLANS: China's 13800138000, not 8613800138000.
    A country PLANS does not list has none."""
    code = calling_code.removeprefix("+")
    return any(p.code == code and p.national.fullmatch(digits) for p in PLANS.values())


def mo_source_forms(e164: str, national_prefixes: Iterable[str] = ()) -> tuple[str, ...]:
    """The source addresses an SMSC may deliver an MO from `e164` with, as the inbound reading
    (bridge.pipeline.inbound._e164) turns them into it: the number with or without its "+" or
    with the international prefix 00, and, for an SMSC whose `national_prefix` is the number's
    country code, the national number with and without its trunk 0 (the latter sent with TON
    2). Long MOs waiting for their other parts are kept under the address as received: an
    erasure finds the person's by these."""
    digits = e164[1:]
    forms = [e164, digits, "00" + digits]
    for prefix in dict.fromkeys(national_prefixes):
        if prefix.startswith("+") and e164.startswith(prefix) and len(e164) > len(prefix):
            rest = e164[len(prefix) :]
            forms += ["0" + rest, rest]
    return tuple(dict.fromkeys(forms))


def mo_source_numbers(source: str, national_prefixes: Iterable[str] = ()) -> tuple[str, ...]:
    """The numbers whose mo_source_forms include `source`: the inverse, so a store can find
    whose waiting parts a whole account's numbers hold by reading the (few) waiting parts, not
    every number the account ever wrote to."""
    prefixes = tuple(dict.fromkeys(national_prefixes))
    candidates = [source, "+" + source]
    if source.startswith("00"):
        candidates.append("+" + source[2:])
    for prefix in prefixes:
        candidates += [prefix + source, prefix + source[1:]]
    # Each candidate checked by the forward rule itself: the two can never disagree.
    return tuple(
        n
        for n in dict.fromkeys(candidates)
        if n[:1] == "+" and n[1:].isdigit() and source in mo_source_forms(n, prefixes)
    )


def reply_destinations(senders: Iterable[str | None]) -> tuple[str, ...] | None:
    """The addresses a reply to messages sent from `senders` may be delivered to (a number is
    stored as given, "+44..." or "44...", and a reply names it either way, as the inbound
    attribution reads it); None when one went out without a sender of its own: from the SMSC's
    default source, which any address may then be, as far as the store knows."""
    out: list[str] = []
    for s in senders:
        if s is None:
            return None
        digits = s.lstrip("+")
        out += [digits, "+" + digits] if digits.isdigit() else [s]
    return tuple(dict.fromkeys(out))
