"""Operator-maintained word and pattern lists that screen templates at review, free text and
template parameter values at send.

A naive substring test is beaten by the tricks spammers actually use: spacing letters out
(``v i a g r a``), fullwidth forms (``ｖｉａｇｒａ``), punctuation (``vi.ag.ra``), invisible
zero-width characters, accents and combining marks (``viágra``), and look-alike Cyrillic/Greek
letters. So both the rule words and the text are *folded* (NFKC, case-fold, accents, marks and
invisible characters dropped, look-alikes mapped) and reduced to a *skeleton* of their letters and
digits before matching.

Dropping every separator would also glue innocent words together ("is expensive" contains "sex"),
so a match that crosses a separator in the text only counts when it covers whole tokens (runs of
letters/digits): ``v i a g r a`` and ``vi.ag.ra`` are whole tokens, ``is ex|pensive`` starts in the
middle of one. A match inside a single token is a plain substring match, as carriers' filters do (so
``buyviagranow`` and ``代开发票`` match). Operators who want whole-word matching for a short Latin
word write a pattern (``re:\\bass\\b``).

Words are matched with one Aho-Corasick automaton over all of them (pure Python, one pass over the
text whatever the number of words). Patterns are Python regular expressions run one by one over the
folded text (separators kept), so they suit a few dozen structural rules, not word lists.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate

# Invisible formatting (zero-width space/joiners, BOM, soft hyphen, bidi controls) and combining
# marks: dropped, not treated as separators, since nobody sees them between letters.
_DROP_CATEGORIES = frozenset({"Cf", "Mn", "Mc", "Me"})

# Lower-case Cyrillic and Greek letters that render like Latin ones. Deliberately small: only
# look-alikes spammers use; a Russian or Greek filter word still matches since both sides fold.
_CONFUSABLES = str.maketrans(
    {
        "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p",
        "с": "c", "т": "t", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s", "ԁ": "d",
        "һ": "h", "ԛ": "q", "ԝ": "w", "ӏ": "l",
        "α": "a", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t",
        "υ": "u", "χ": "x",
    }
)  # fmt: skip


class _DropTable(dict[int, int | None]):
    """str.translate table deleting the _DROP_CATEGORIES characters, filled on first sight of
    each code point: translate then runs in C over the text (a generator calling
    unicodedata.category per character was ~35 us for a 150-character Chinese message, on the
    send path of every non-ASCII text). Bounded by the distinct characters ever seen."""

    def __missing__(self, cp: int) -> int | None:
        keep = None if unicodedata.category(chr(cp)) in _DROP_CATEGORIES else cp
        if len(self) < _DROP_CACHE_MAX:  # a text of every code point must not grow it to 77 MB
            self[cp] = keep
        return keep


_DROP_CACHE_MAX = 65_536  # ~5 MB; everyday scripts (CJK included) use far fewer characters
_DROP = _DropTable()
_HAS_CONFUSABLE = re.compile("[" + re.escape("".join(chr(c) for c in _CONFUSABLES)) + "]")

# A token is a run of letters or digits (``\w`` minus the underscore).
_TOKEN = re.compile(r"[^\W_]+")


def fold(text: str) -> str:
    """NFKC, case-folded, accents and other marks and invisible characters dropped, look-alikes
    mapped to Latin ("Viágra" and "viagra" fold alike; so do "が" and "か").

    Separators (spaces, punctuation) are kept: patterns need them, the skeleton drops them.
    """
    s = unicodedata.normalize("NFKC", text).casefold()
    if s.isascii():
        return s
    s = unicodedata.normalize("NFKD", s)  # accents become combining marks, dropped below
    s = unicodedata.normalize("NFC", s.translate(_DROP))
    # translate with a dict raises and clears a KeyError per character it does not map: look
    # for a look-alike first (most texts have none).
    return s.translate(_CONFUSABLES) if _HAS_CONFUSABLE.search(s) else s


def tokens(text: str) -> list[str]:
    """The letter/digit runs of the folded text, in order."""
    return _TOKEN.findall(fold(text))


def skeleton(text: str) -> str:
    """Only the letters and digits of the folded text: what words are matched against."""
    return "".join(tokens(text))


@dataclass(frozen=True, slots=True)
class Match:
    """Which rule matched (as the operator wrote it), never the matched text itself."""

    rule: str
    kind: str  # "word" | "pattern"


class _Automaton:
    """Aho-Corasick over the distinct word skeletons: every occurrence, one pass over the text."""

    __slots__ = ("_fail", "_goto", "_out")

    def __init__(self, keys: Sequence[str]) -> None:
        goto: list[dict[str, int]] = [{}]
        out: list[tuple[int, ...]] = [()]
        for idx, key in enumerate(keys):
            state = 0
            for ch in key:
                nxt = goto[state].get(ch)
                if nxt is None:
                    nxt = len(goto)
                    goto.append({})
                    out.append(())
                    goto[state][ch] = nxt
                state = nxt
            out[state] = (*out[state], idx)
        fail = [0] * len(goto)
        queue = deque(goto[0].values())
        while queue:
            node = queue.popleft()
            for ch, child in goto[node].items():
                queue.append(child)
                f = fail[node]
                while f and ch not in goto[f]:
                    f = fail[f]
                fail[child] = goto[f].get(ch, 0)
                # Longer keys first at each end position (they were added to out first).
                out[child] = out[child] + out[fail[child]]
        self._goto = goto
        self._fail = fail
        self._out = out

    def matches(self, text: str) -> Iterator[tuple[int, int]]:
        """(end offset, key index) of every occurrence, by end offset."""
        goto, fail, out = self._goto, self._fail, self._out
        state = 0
        for i, ch in enumerate(text):
            while state and ch not in goto[state]:
                state = fail[state]
            state = goto[state].get(ch, 0)
            for idx in out[state]:
                yield i + 1, idx


def _word_key(word: str) -> str:
    key = skeleton(word)
    if not key:
        raise ValueError(f"word {word!r} has no letters or digits to match")
    return key


def _compile(pattern: str) -> re.Pattern[str]:
    if not pattern:
        raise ValueError("pattern is empty")
    try:
        rx = re.compile(pattern, re.IGNORECASE)
    except re.error as e:
        raise ValueError(f"pattern {pattern!r} is not a valid regular expression: {e}") from None
    if rx.search("") is not None:
        # It would match every text, rejecting everything.
        raise ValueError(f"pattern {pattern!r} matches empty text")
    return rx


class ContentFilter:
    """Screens text against operator word and pattern lists; build once, check many times."""

    __slots__ = ("_automaton", "_keys", "_patterns", "_rules")

    def __init__(self, words: Iterable[str] = (), patterns: Iterable[str] = ()) -> None:
        keys: list[str] = []
        rules: list[str] = []
        seen: set[str] = set()
        for word in words:
            key = _word_key(word)
            if key not in seen:  # the first spelling of a word is the one reported
                seen.add(key)
                keys.append(key)
                rules.append(word)
        self._keys = tuple(keys)
        self._rules = tuple(rules)
        self._automaton = _Automaton(keys) if keys else None
        self._patterns = tuple((p, _compile(p)) for p in patterns)

    @classmethod
    def from_lines(cls, text: str) -> ContentFilter:
        """One rule per line: a word, or ``re:`` then a regex; blank lines and ``#`` lines skipped.

        Only whole-line comments: ``#`` may be part of a word or a pattern.
        """
        words: list[str] = []
        patterns: list[str] = []
        for n, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            try:
                if line.startswith("re:"):
                    _compile(line[3:])
                    patterns.append(line[3:])
                else:
                    _word_key(line)
                    words.append(line)
            except ValueError as e:
                raise ValueError(f"line {n}: {e}") from None
        return cls(words, patterns)

    @property
    def size(self) -> tuple[int, int]:
        """(distinct words, patterns): for logs after a reload."""
        return len(self._keys), len(self._patterns)

    def check(self, text: str, skip: frozenset[str] = frozenset()) -> Match | None:
        """The first rule the text breaks, or None; rules in `skip` are not counted.

        Words come first, the one ending earliest in the text; then patterns in list order.
        """
        if self._automaton is None and not self._patterns:
            return None  # no lists configured: nothing to fold the text for
        folded = fold(text)
        if self._automaton is not None:
            toks = _TOKEN.findall(folded)
            skel = "".join(toks)
            starts: list[int] | None = None
            for end, idx in self._automaton.matches(skel):
                if starts is None:
                    starts = [0, *accumulate(len(t) for t in toks)]
                if self._rules[idx] not in skip and _whole_tokens(
                    starts, end - len(self._keys[idx]), end
                ):
                    return Match(self._rules[idx], "word")
        for rule, rx in self._patterns:
            if rule not in skip and rx.search(folded) is not None:
                return Match(rule, "pattern")
        return None

    def broken(self, text: str) -> frozenset[str]:
        """Every rule the text breaks: an approved template's own text, whose parameter values
        are screened at send for the rest (an operator approved what it says itself)."""
        found: set[str] = set()
        while (m := self.check(text, frozenset(found))) is not None:
            found.add(m.rule)
        return frozenset(found)


def _whole_tokens(starts: list[int], begin: int, end: int) -> bool:
    """Whether skeleton span [begin, end) is inside one token or covers whole tokens only.

    ``starts`` holds each token's start offset in the skeleton, then the skeleton's length.
    """
    first = bisect_right(starts, begin) - 1  # token holding the first character
    last = bisect_right(starts, end - 1) - 1  # token holding the last character
    if first == last:
        return True
    return starts[first] == begin and starts[last + 1] == end
