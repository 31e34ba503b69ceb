"""Sign names: what a sign name may contain, and which ones look like another company's.

The sign is shown to the recipient as the sender's identity (``【Acme】``), so it is kept plain:
letters and digits of any script, single spaces between words, nothing the format adds (brackets)
and nothing that can hide or disguise characters (control, invisible, emoji). Impersonation is
judged on a canonical form that ignores width, case, spacing, punctuation, invisible characters and
Cyrillic/Greek look-alikes, because those are exactly what a copycat varies.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable

from bridge.domain.content_filter import skeleton

SIGN_NAME_INVALID = "SIGN_NAME_INVALID"
SIGN_NAME_TAKEN = "SIGN_NAME_TAKEN"

MIN_CHARS = 2
MAX_CHARS = 12
CONTAINS_MIN = 4  # names this long or longer are compared by containment, not only equality
_BRACKETS = frozenset("【】[]〖〗〔〕（）()<>《》「」『』{}")


class SignError(Exception):
    def __init__(self, code: str, message: str, field: str = "name") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


def _invalid(why: str) -> SignError:
    return SignError(SIGN_NAME_INVALID, f"name: {why}")


def validate_sign_name(name: str) -> str:
    """The NFKC-normalised name, or SignError(SIGN_NAME_INVALID) saying what is wrong.

    Rules, on the NFKC form (fullwidth Latin becomes ASCII): 2 to 12 characters; letters (any
    script, CJK included) and decimal digits, plus combining marks after a letter and single
    spaces between words; no leading or trailing space; no brackets (the sign format adds them);
    nothing outside the Basic Multilingual Plane (emoji, and it keeps one character = one tariff
    character, which the review's length check relies on).
    """
    if not isinstance(name, str) or not name:
        raise _invalid("must not be empty")
    s = unicodedata.normalize("NFKC", name)
    if s != s.strip():
        raise _invalid("must not start or end with a space")
    if not MIN_CHARS <= len(s) <= MAX_CHARS:
        raise _invalid(f"must be {MIN_CHARS} to {MAX_CHARS} characters, not {len(s)}")
    prev = ""
    for ch in s:
        cat = unicodedata.category(ch)
        if ch in _BRACKETS:
            raise _invalid(f"must not contain brackets ({ch!r}): the sign format adds them")
        if ord(ch) > 0xFFFF:
            raise _invalid(f"must not contain emoji or characters outside the BMP (U+{ord(ch):X})")
        if cat[0] == "C" or cat in ("Zl", "Zp"):
            raise _invalid(f"must not contain control or invisible characters (U+{ord(ch):04X})")
        if ch == " ":
            if prev == " ":
                raise _invalid("must not contain two spaces in a row")
        elif cat[0] == "M":
            if not prev or prev == " ":
                raise _invalid(f"a combining mark (U+{ord(ch):04X}) must follow a letter")
        elif not (cat[0] == "L" or cat == "Nd"):
            raise _invalid(
                f"may contain only letters, digits and spaces, not {ch!r} (U+{ord(ch):04X})"
            )
        prev = ch
    return s


def canonical(name: str) -> str:
    """The form compared for impersonation: NFKC, case-folded, letters and digits only.

    Invisible characters and combining marks are dropped and Cyrillic/Greek look-alikes read as
    Latin (content_filter.skeleton), so "ＡＣＭＥ", "A C M E" and "Асме" (Cyrillic) are all "acme".
    """
    return skeleton(name)


def impersonates(name: str, approved_names_of_others: Iterable[str]) -> str | None:
    """The other account's approved sign this name collides with, or None.

    A collision is an equal canonical form, or, when both canonical forms have at least
    CONTAINS_MIN (4) characters, one containing the other ("阿里巴巴" in "阿里巴巴集团"). Shorter
    names only collide when equal: two-character CJK names are substrings of each other too often
    to flag. Equal forms are reported before containment. Advisory: operators decide at review.
    """
    mine = canonical(name)
    if not mine:
        return None
    containing: str | None = None
    for other in approved_names_of_others:
        theirs = canonical(other)
        if not theirs:
            continue
        if theirs == mine:
            return other
        if (
            containing is None
            and min(len(mine), len(theirs)) >= CONTAINS_MIN
            and (mine in theirs or theirs in mine)
        ):
            containing = other
    return containing


def ensure_not_taken(name: str, approved_names_of_others: Iterable[str]) -> None:
    """SignError(SIGN_NAME_TAKEN) when another account already has this name (canonically equal).

    Containment is not refused here: it goes to the operator as an impersonation flag.
    """
    mine = canonical(name)
    for other in approved_names_of_others:
        if canonical(other) == mine:
            raise SignError(
                SIGN_NAME_TAKEN, f"name: {name!r} is already registered by another account"
            )
