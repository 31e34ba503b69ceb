"""Session 57: the UCS-2 send's text steps made cheaper answer as before.

- `gsm_septets` refuses a text with a non-GSM character among its first 16 (`_HEAD`) by one
  bounded regex search, before the whole text's UTF-8 length: wherever the character stands
  (inside the head, at its edge, past it, last) the answer is the reference's;
- `tariff_chars` calls the UTF-16 codec's function, not `str.encode`: the same count;
- `encode_message` cuts a UCS-2 text without surrogate pairs with plain slices: the parts the
  surrogate-aware cut made, and with a pair anywhere, that cut still.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.text import split
from bridge.text.gsm import gsm_septets
from bridge.text.split import EncodeOptions, SplitMode, encode_message
from bridge.text.units import tariff_chars
from tests.unit.test_text_gsm import ref_septets

ALPHABET = "aZ9 @£€Δé{中😀\u00a0\ud800"


@pytest.mark.parametrize("at", [0, 1, 14, 15, 16, 17, 40, 159])
@pytest.mark.parametrize("char", ["中", "ç", "\u00a0", "😀"])
@pytest.mark.parametrize("filler", ["a", "é", "€", "Δ"])
def test_a_non_gsm_character_anywhere_refuses_the_text(at: int, char: str, filler: str) -> None:
    text = filler * at + char + filler * (159 - at)
    assert gsm_septets(text) is None
    assert gsm_septets(text) == ref_septets(text)
    gsm_only = filler * 160
    assert gsm_septets(gsm_only) == ref_septets(gsm_only) is not None


@settings(max_examples=400, deadline=None)
@given(st.text(alphabet=st.sampled_from(ALPHABET), max_size=200))
def test_septets_and_tariff_chars_match_their_references(text: str) -> None:
    assert gsm_septets(text) == ref_septets(text)
    assert tariff_chars(text) == len(text.encode("utf-16-le", "surrogatepass")) // 2


def _old_parts(text: str, opts: EncodeOptions, ref: int) -> list[tuple[bytes, int, int]]:
    """The parts as the surrogate-aware cut makes them (the code before session 57)."""
    data = text.encode("utf-16-be")
    per = 132 if opts.split is SplitMode.UDH16 else 134
    chunks = [data] if len(data) <= 140 else split._cut_ucs2(data, per)
    return [(c, len(c.decode("utf-16-be")), len(c)) for c in chunks]


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet=st.sampled_from("中文ab1😀“"), min_size=60, max_size=600).map(
        lambda t: "中" + t
    ),
    st.sampled_from([SplitMode.UDH8, SplitMode.UDH16, SplitMode.SAR]),
    st.integers(0, 255),
)
def test_ucs2_parts_are_cut_where_the_surrogate_aware_cut_cuts(
    text: str, mode: SplitMode, ref: int
) -> None:
    opts = EncodeOptions(split=mode)
    enc = encode_message(text, opts, ref)
    assert enc.encoding is split.Encoding.UCS2
    udh = {SplitMode.UDH8: 6, SplitMode.UDH16: 7, SplitMode.SAR: 0}[mode]
    payloads = [p.short_message[udh if p.esm_class else 0 :] for p in enc.parts]
    old = _old_parts(text, opts, ref)
    assert payloads == [c for c, _, _ in old]
    assert [(p.chars, p.size) for p in enc.parts] == [(n, s) for _, n, s in old]
    assert b"".join(payloads).decode("utf-16-be") == text


@pytest.mark.parametrize("at", range(60, 72))
@pytest.mark.parametrize("mode", [SplitMode.UDH8, SplitMode.UDH16, SplitMode.SAR])
def test_a_surrogate_pair_at_a_part_boundary_stays_whole(at: int, mode: SplitMode) -> None:
    text = "中" * at + "😀" + "中" * 150
    enc = encode_message(text, EncodeOptions(split=mode), 7)
    udh = {SplitMode.UDH8: 6, SplitMode.UDH16: 7, SplitMode.SAR: 0}[mode]
    payloads = [p.short_message[udh:] for p in enc.parts]
    assert payloads == [c for c, _, _ in _old_parts(text, EncodeOptions(split=mode), 7)]
    for p in payloads:
        p.decode("utf-16-be")  # no part ends in half a pair


def test_the_plain_cut_equals_the_surrogate_aware_one_without_pairs() -> None:
    data = ("中文" * 300).encode("utf-16-be")
    for per in (132, 134):
        assert split._cut_plain(data, per) == split._cut_ucs2(data, per)
    assert split._cut_plain(b"", 134) == []


def test_the_last_answer_kept_is_only_that_very_texts() -> None:
    # gsm_septets and tariff_chars keep their last non-ASCII answer for the same str object (a
    # send asks twice of its text): any other text, equal or not, is answered for itself.
    cjk = "中文" * 50 + "😀"
    gsm = "é" * 100
    for _ in range(2):
        assert gsm_septets(cjk) is None
        assert tariff_chars(cjk) == 102
        assert gsm_septets(gsm) == ref_septets(gsm) is not None
        assert tariff_chars(gsm) == 100
        other = "".join(["中文" * 50, "😀😀"])  # a new object each time
        assert tariff_chars(other) == 104
        assert tariff_chars(cjk) == 102
        assert gsm_septets("".join(["é" * 99, "e"])) == ref_septets("é" * 99 + "e")
