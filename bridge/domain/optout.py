"""Opt-out: recognising an opt-out reply (MO), and opt-out instructions in marketing templates.

An opt-out reply is honoured when the *whole* reply is a keyword, give or take what phones and
people add around it: width and case (``ＴＤ``, ``td``), whitespace anywhere (``T D``, ``退 订``),
punctuation or symbols at either end (``td.``, ``"STOP"``, ``TD!``), and the instruction echoed
back: an optional reply verb before it (``回复TD``, ``回T``, ``Reply STOP``) and an optional
``退订`` after it (``TD退订``, ``回T退订``). A keyword inside a longer reply (``Thanks``,
``stop sending me offers please``, ``我不想退订``) is *not* an opt-out: a false positive silently
stops a customer's messages to a person who never asked for it.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from functools import lru_cache

from bridge.domain.content_filter import skeleton

DEFAULT_KEYWORDS: tuple[str, ...] = ("TD", "T", "R", "STOP", "UNSUBSCRIBE", "退订")

# Echoed instruction around a keyword ("回复TD", "TD退订", "回T退订"); compared after normalising.
REPLY_PREFIXES: tuple[str, ...] = ("回复", "回", "reply")
REPLY_SUFFIXES: tuple[str, ...] = ("退订",)

# Wording that tells a recipient how to opt out. Matched on letters and digits only (spacing,
# punctuation, width and case ignored), so "回 T 退订" and "reply 'STOP'" count. Each phrase is
# specific enough not to occur by accident ("Reply T" alone would match "Reply today").
DEFAULT_OPTOUT_PHRASES: tuple[str, ...] = (
    "回T退订",
    "退订回T",
    "回TD退订",
    "退订回TD",
    "回复T退订",
    "回复TD退订",
    "退订请回复T",
    "退订请回复TD",
    "拒收请回复R",
    "Reply STOP",
    "Reply TD",  # "to opt out", "to unsubscribe", "to stop": TD is a keyword in every case
    "Text TD",
    "Reply T to unsubscribe",
    "Reply T to opt out",
    "Reply UNSUBSCRIBE",
    "Text STOP to opt out",
    "Text STOP to unsubscribe",
)


def _normalise_reply(text: str) -> str:
    """NFKC, case-folded, without whitespace or invisible characters, ends stripped of P*/S*."""
    s = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())
    s = "".join(ch for ch in s if not ch.isspace() and unicodedata.category(ch) != "Cf")
    start, end = 0, len(s)
    while start < end and unicodedata.category(s[start])[0] in "PS":
        start += 1
    while end > start and unicodedata.category(s[end - 1])[0] in "PS":
        end -= 1
    return s[start:end]


@lru_cache(maxsize=32)
def _accepted_forms(keywords: tuple[str, ...]) -> frozenset[str]:
    prefixes = ("", *(_normalise_reply(p) for p in REPLY_PREFIXES))
    suffixes = ("", *(_normalise_reply(s) for s in REPLY_SUFFIXES))
    forms: set[str] = set()
    for kw in keywords:
        core = _normalise_reply(kw)
        if not core:  # an empty keyword would opt out every blank reply
            continue
        forms.update(p + core + s for p in prefixes for s in suffixes)
    return frozenset(forms)


def is_optout(text: str, keywords: Sequence[str] = DEFAULT_KEYWORDS) -> bool:
    """Whether an inbound reply asks to opt out (see the module docstring for the exact rule)."""
    core = _normalise_reply(text)
    return bool(core) and core in _accepted_forms(tuple(keywords))


@lru_cache(maxsize=32)
def _phrase_keys(phrases: tuple[str, ...]) -> tuple[str, ...]:
    keys = []
    for phrase in phrases:
        key = skeleton(phrase)
        if not key:
            # "" is in every text: it would approve every marketing template.
            raise ValueError(f"opt-out phrase {phrase!r} has no letters or digits")
        keys.append(key)
    return tuple(keys)


def has_optout_wording(content: str, phrases: Sequence[str] = DEFAULT_OPTOUT_PHRASES) -> bool:
    """Whether ``content`` contains one of ``phrases`` (letters and digits compared, folded)."""
    text = skeleton(content)
    return any(key in text for key in _phrase_keys(tuple(phrases)))
