"""Session 63: `receipt.LATIN1_OUTCOME_RE`, the receipt text's pattern `Inbound` matches its
latin-1 decoded text with, is `STANDARD_OUTCOME_RE` made cheaper (`[0-9]` for `\\d`, possessive
runs: README note 27). Both must take exactly the same texts with the same four groups, for any
latin-1 text: a text one takes and the other does not would be stored differently (or read by
the tolerant path instead). Checked over every latin-1 character put into, over or out of each
place of a standard text, over mutated texts, over hypothesis texts built of the layout's pieces
and hostile ones, and over every receipt text the tests hold (real carriers' layouts among them).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.pipeline import inbound as inbound_module
from bridge.smpp.receipt import LATIN1_OUTCOME_RE, STANDARD_OUTCOME_RE

_BASE = (
    "id:0012D687 sub:001 dlvrd:001 submit date:2612051400 done date:261205140059 "
    "stat:DELIVRD err:000 text:hi there"
)
_LATIN1 = "".join(chr(c) for c in range(256))


def _same(text: str) -> bool:
    """Both patterns' answer for `text`, asserted equal; True when they match."""
    old = STANDARD_OUTCOME_RE.fullmatch(text)
    new = LATIN1_OUTCOME_RE.fullmatch(text)
    assert (old is None) == (new is None), repr(text)
    if old is not None and new is not None:
        assert new.groups() == old.groups(), repr(text)
        return True
    return False


def test_inbound_matches_with_the_latin1_pattern() -> None:
    assert inbound_module._standard_outcome == LATIN1_OUTCOME_RE.fullmatch


def test_every_latin1_character_at_every_place() -> None:
    """Each of the 256 characters put in before, put over and each place's character taken
    out, at every place of a standard text (and of one with 10-digit dates and no text)."""
    short = "id:x sub:1 dlvrd:1 submit date:2612051400 done date:2612051401 stat:A err:0"
    matched = 0
    for base in (_BASE, short):
        for i in range(len(base) + 1):
            matched += _same(base[:i] + base[i + 1 :])
            for ch in _LATIN1:
                matched += _same(base[:i] + ch + base[i:])
                if i < len(base):
                    matched += _same(base[:i] + ch + base[i + 1 :])
    assert matched > 10_000  # the checks saw both answers


def test_dates_of_every_length_and_digit() -> None:
    """Dates of 0-14 characters of latin-1 digits and near-digits (superscripts and other
    numerics are not decimal digits), in either date."""
    rng = random.Random(63)
    near = "0123456789²³¹¼½¾ \t"
    for _ in range(20_000):
        dates = [
            "".join(rng.choice("0123456789" if rng.random() < 0.9 else near) for _ in range(n))
            for n in (rng.randrange(8, 15), rng.randrange(8, 15))
        ]
        _same(
            f"id:a sub:1 dlvrd:1 submit date:{dates[0]} done date:{dates[1]} stat:X err:0"
            + rng.choice(["", " text:", " text:x y", "\ttext:x", " text:\n"])
        )


def test_mutated_texts() -> None:
    """100,000 standard texts with up to four characters changed, dropped or added."""
    rng = random.Random(6363)
    alphabet = "0123456789aZ:_ \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0é²³ÿ\x00x"
    matched = 0
    for _ in range(100_000):
        t = list(_BASE[: rng.randrange(60, len(_BASE) + 1)])
        for _ in range(rng.randrange(0, 5)):
            i = rng.randrange(len(t))
            op = rng.randrange(3)
            if op == 0:
                t[i] = rng.choice(alphabet)
            elif op == 1:
                del t[i]
            else:
                t.insert(i, rng.choice(alphabet))
        matched += _same("".join(t))
    assert matched > 1_000


_PIECES = [
    "id:", " sub:", " dlvrd:", " submit date:", " done date:", " stat:", " err:", " text:",
    "submit_date:", "done_date:", "ID:", "Stat:", " ", "  ", "\t", "\n", "\x85", "\xa0", "\x1c",
    "0", "00", "1234567890", "12", "123", "261205140059", "2612051400", "DELIVRD", "UNDELIV",
    ":", "x", "é", "²", "\x00", "\xff",
]  # fmt: skip


@settings(max_examples=3_000, deadline=None, derandomize=True)
@given(st.lists(st.sampled_from(_PIECES), max_size=24))
def test_hypothesis_texts_of_the_layout_pieces(pieces: list[str]) -> None:
    _same("".join(pieces))


@settings(max_examples=1_500, deadline=None, derandomize=True)
@given(
    st.lists(
        st.text(alphabet=st.characters(max_codepoint=255), max_size=14), min_size=8, max_size=8
    ),
    st.booleans(),
)
def test_hypothesis_hostile_fields(fields: list[str], with_text: bool) -> None:
    """The layout's labels with any latin-1 text in each of its eight places."""
    i, sub, dlvrd, sd, dd, stat, err, text = fields
    body = f"id:{i} sub:{sub} dlvrd:{dlvrd} submit date:{sd} done date:{dd} stat:{stat} err:{err}"
    _same(body + (f" text:{text}" if with_text else text))


@settings(max_examples=1_500, deadline=None, derandomize=True)
@given(st.text(alphabet=st.characters(max_codepoint=255), max_size=200))
def test_hypothesis_any_latin1_text(text: str) -> None:
    _same(text)
    _same(_BASE[:60] + text)


def test_every_receipt_text_the_tests_hold() -> None:
    """The receipt texts written in the tests (the simulator's, carriers' layouts: extra
    fields, other order, lower case, 10- and 12-digit dates, NUL-padded), whole and cut."""
    found: set[str] = set()
    pattern = re.compile(r"id:[^\"'\n]*?stat:[^\"'\n]*")
    root = Path(__file__).resolve().parents[1]
    for path in root.rglob("*.py"):
        found.update(pattern.findall(path.read_text(encoding="utf-8", errors="replace")))
    assert len(found) > 30
    matched = 0
    for text in sorted(found):
        for variant in (text, text.replace("\\x00", "\x00"), text + " text:abc", text[:-1]):
            matched += _same(variant)
    assert matched  # some match, most take the tolerant path
