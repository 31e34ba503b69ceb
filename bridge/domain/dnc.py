"""Do-not-contact lists operators import (a national do-not-call register, a carrier's blocklist).

They block a number for every account, so the import is forgiving about format (CSV or one entry
per line, a header, national numbers in the list's country) but strict about meaning: a line that is
not clearly a number or a prefix is reported, never guessed, and a prefix must be long enough not
to block a whole country by a typo.

Lookup is what runs on every send: an exact frozenset hit, then one set lookup per distinct prefix
length (at most 15), so it stays O(1) with a million entries.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from bridge.domain.dnc_numbers import NumberSorter, SortedNumbers
from bridge.domain.phone import PLANS, PhoneError, normalize

PREFIX_MIN_DIGITS = 4  # "+86*" or "+1*" would block a country: refused as a likely mistake
_SEPARATORS = re.compile(r"[\s\-().]")
_E164_PREFIX = re.compile(r"\+[1-9][0-9]{0,14}")
_DIGITS = re.compile(r"[0-9]+")


@dataclass(frozen=True, slots=True)
class DncList:
    numbers: frozenset[str]  # E.164
    prefixes: tuple[str, ...]  # E.164 prefixes ("+86138"), sorted
    _by_length: dict[int, frozenset[str]] = field(
        init=False, repr=False, compare=False, hash=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        buckets: dict[int, set[str]] = {}
        for prefix in self.prefixes:
            buckets.setdefault(len(prefix), set()).add(prefix)
        self._by_length.update({n: frozenset(b) for n, b in sorted(buckets.items())})

    def blocks(self, e164: str) -> bool:
        if e164 in self.numbers:
            return True
        return any(e164[:n] in bucket for n, bucket in self._by_length.items())


def blocked(e164: str, lists: Iterable[DncList]) -> bool:
    """Whether any list has the number itself or a prefix of it."""
    return any(lst.blocks(e164) for lst in lists)


def _prefix(raw: str, default_country: str | None) -> str:
    s = _SEPARATORS.sub("", raw)
    if s.startswith("00"):
        s = "+" + s[2:]
    if s.startswith("+"):
        if not _E164_PREFIX.fullmatch(s):
            raise PhoneError(f"{raw + '*'!r} is not an E.164 prefix (+ then up to 15 digits)")
    else:
        if not _DIGITS.fullmatch(s):
            raise PhoneError(f"{raw + '*'!r} contains characters that are not digits")
        plan = PLANS.get(default_country.upper()) if default_country else None
        if plan is None:
            raise PhoneError(
                f"{raw + '*'!r} has no country code and the list has no supported default country"
            )
        if plan.trunk and s.startswith(plan.trunk):
            s = s[len(plan.trunk) :]
        s = f"+{plan.code}{s}"
        if len(s) > 16:
            raise PhoneError(f"{raw + '*'!r} is longer than an E.164 number")
    if len(s) - 1 < PREFIX_MIN_DIGITS:
        raise PhoneError(
            f"prefix {s}* is too short (at least {PREFIX_MIN_DIGITS} digits with the country code)"
        )
    return s


@dataclass(frozen=True, slots=True)
class DncImport:
    """A parsed list: what the store imports, and the bad lines (the first BAD_KEPT, all counted:
    a file of ten million bad lines must not hold ten million messages)."""

    numbers: SortedNumbers  # E.164, sorted, unique: 8 bytes each (dnc_numbers)
    prefixes: tuple[str, ...]  # E.164 prefixes ("+86138"), sorted, unique
    bad: tuple[str, ...]  # "line N: reason"
    bad_count: int


BAD_KEPT = 100


def _first_column(line: str) -> str:
    if '"' in line:
        row = next(csv.reader([line]), [])
        return row[0] if row else ""
    return line.split(",", 1)[0]  # csv.reader's column when nothing is quoted: 0.08 µs, not 0.5


def parse_dnc_lines(lines: Iterable[str], default_country: str | None) -> DncImport:
    """The list read from `lines` (pieces of text, each one or more lines, line ends kept or not:
    a file iterated, a body split at its newlines), streamed: memory per number is the 8 bytes
    of SortedNumbers. Lines are numbered as ``str.splitlines`` numbers the whole text.

    Each line's first CSV column is the entry: an E.164 or ``00`` number, a national number of
    ``default_country`` (phone.normalize), or a prefix marked with a trailing ``*`` (``+86138*``;
    a national prefix is read in ``default_country``, trunk prefix dropped: GB ``07700*`` ->
    ``+447700``). Blank lines and ``#`` comments are skipped; so is the first non-blank line when
    its first column has no digit (a header). Later lines without a digit are reported as bad.
    """
    numbers = NumberSorter()
    prefixes: set[str] = set()
    bad: list[str] = []
    bad_count = 0
    seen_content = False
    n = 0
    for i, piece in enumerate(lines):
        # An empty piece is a blank line whose end was not kept (lines split without ends).
        for line in (piece.lstrip("\ufeff") if i == 0 else piece).splitlines() or ("",):
            n += 1
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            entry = _first_column(line).strip()
            is_first, seen_content = not seen_content, True
            reason = None
            if not any(ch.isdigit() for ch in entry):
                if is_first:
                    continue  # header
                reason = "no number in the first column"
            else:
                try:
                    if entry.endswith("*"):
                        prefixes.add(_prefix(entry[:-1].strip(), default_country))
                    else:
                        numbers.add(normalize(entry, default_country))
                except PhoneError as e:
                    reason = e.message
            if reason is not None:
                bad_count += 1
                if len(bad) < BAD_KEPT:
                    bad.append(f"line {n}: {reason}")
    return DncImport(numbers.build(), tuple(sorted(prefixes)), tuple(bad), bad_count)
