"""GSM 03.38 codec: tables, tolerant decoding, septet packing, smpplib cross-check."""

from __future__ import annotations

import pytest
import smpplib.gsm
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.text.gsm import (
    BASE_TABLE,
    EXTENSION_TABLE,
    GSM_CHARS,
    TextError,
    gsm_decode,
    gsm_encode,
    gsm_septets,
    is_gsm_char,
    pack_septets,
    septet_count,
    unpack_septets,
)
from bridge.text.smart import smart_map

FAST = settings(max_examples=300, deadline=None)

EXT_CHARS = "^{}\\[~]|€\f"
BASE_CHARS = "".join(ch for ch in BASE_TABLE if ch != "\x1b")
GSM_ALPHABET = BASE_CHARS + EXT_CHARS


def ref_pack(septets: bytes, fill_bits: int = 0) -> bytes:
    """Bit-by-bit reference: septets LSB first after fill_bits zero bits, octets LSB first."""
    bits = [0] * fill_bits
    for s in septets:
        bits.extend((s >> k) & 1 for k in range(7))
    while len(bits) % 8:
        bits.append(0)
    return bytes(sum(bits[i + k] << k for k in range(8)) for i in range(0, len(bits), 8))


# --- the tables -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ch", "code"),
    [
        ("@", 0x00),
        ("£", 0x01),
        ("$", 0x02),
        ("¥", 0x03),
        ("è", 0x04),
        ("Ç", 0x09),
        ("\n", 0x0A),
        ("\r", 0x0D),
        ("Δ", 0x10),
        ("_", 0x11),
        ("Ξ", 0x1A),
        ("Æ", 0x1C),
        ("É", 0x1F),
        (" ", 0x20),
        ("¤", 0x24),
        ("0", 0x30),
        ("¡", 0x40),
        ("A", 0x41),
        ("Ü", 0x5E),
        ("§", 0x5F),
        ("¿", 0x60),
        ("a", 0x61),
        ("ü", 0x7E),
        ("à", 0x7F),
    ],
)
def test_base_table_code_points(ch: str, code: int) -> None:
    assert gsm_encode(ch) == bytes([code])
    assert gsm_decode(bytes([code])) == ch
    assert septet_count(ch) == 1


def test_base_table_has_128_entries_with_escape_at_0x1b() -> None:
    assert len(BASE_TABLE) == 128
    assert BASE_TABLE[0x1B] == "\x1b"
    assert len(set(BASE_CHARS)) == 127


@pytest.mark.parametrize(
    ("ch", "code"),
    [
        ("\f", 0x0A),
        ("^", 0x14),
        ("{", 0x28),
        ("}", 0x29),
        ("\\", 0x2F),
        ("[", 0x3C),
        ("~", 0x3D),
        ("]", 0x3E),
        ("|", 0x40),
        ("€", 0x65),
    ],
)
def test_every_extension_character(ch: str, code: int) -> None:
    assert EXTENSION_TABLE[ch] == code
    assert is_gsm_char(ch)
    assert gsm_encode(ch) == bytes([0x1B, code])
    assert septet_count(ch) == 2
    assert septet_count("a" + ch + "b") == 4
    assert gsm_decode(bytes([0x1B, code])) == ch
    assert gsm_encode("x" + ch) == b"x\x1b" + bytes([code])


@pytest.mark.parametrize(
    "ch", ["`", "\x1b", "\t", "\x00", "\x7f", "ç", "ã", "中", "😀", "“", "\u00a0"]
)
def test_not_gsm(ch: str) -> None:
    assert not is_gsm_char(ch)
    assert septet_count("abc" + ch) is None
    assert gsm_septets(ch) is None
    with pytest.raises(TextError) as ei:
        gsm_encode("abc" + ch)
    assert ei.value.code == "UNENCODABLE"
    assert "position 3" in ei.value.message
    assert f"U+{ord(ch):04X}" in ei.value.message


def test_gsm_charset_size() -> None:
    assert len(GSM_CHARS) == 127 + 10
    assert GSM_CHARS == set(GSM_ALPHABET)


def test_ascii_fast_path_with_extension_chars() -> None:
    assert gsm_encode("a{b}c") == b"a\x1b\x28b\x1b\x29c"
    assert gsm_encode("[]") == b"\x1b\x3c\x1b\x3e"
    assert septet_count("{}" * 10) == 40
    assert gsm_septets("a{b`") is None  # backtick after an extension char


def test_non_ascii_path() -> None:
    assert gsm_encode("Δ€é") == b"\x10\x1b\x65\x05"
    assert gsm_encode("£5 {x}") == b"\x015 \x1b\x28x\x1b\x29"


@pytest.mark.parametrize("n_non_ascii", [1, 5, 6, 7, 12, 13, 40])
def test_few_and_many_non_ascii_paths_agree(n_non_ascii: int) -> None:
    # few non-ASCII characters go through the encode error handler, many through str.translate
    text = "a{b" + "é€Ä" * n_non_ascii + "z" * 50
    expected = b"a\x1b\x28b" + b"\x05\x1b\x65\x5b" * n_non_ascii + b"z" * 50
    assert gsm_septets(text) == expected
    assert gsm_septets(text + "中") is None
    assert gsm_septets("é" * n_non_ascii + "ã") is None
    assert gsm_septets("é" * n_non_ascii + "`") is None
    assert gsm_septets("é\ud800") is None


# --- tolerant decoding --------------------------------------------------------------------------


def test_decode_unknown_escape_gives_base_char() -> None:
    assert gsm_decode(b"\x1b\x41") == "A"
    assert gsm_decode(b"a\x1b\x0db") == "a\rb"  # CR2 shows as CR


def test_decode_escape_escape_is_space() -> None:
    assert gsm_decode(b"a\x1b\x1bb") == "a b"


def test_decode_trailing_lone_escape_dropped() -> None:
    assert gsm_decode(b"ab\x1b") == "ab"
    assert gsm_decode(b"\x1b") == ""


def test_decode_ignores_high_bit() -> None:
    assert gsm_decode(b"\xe1\x80") == "a@"


# --- packing ------------------------------------------------------------------------------------


def test_pack_known_vectors() -> None:
    assert pack_septets(gsm_encode("hellohello")).hex() == "e8329bfd4697d9ec37"
    assert pack_septets(gsm_encode("Hello")).hex() == "c8329bfd06"
    assert pack_septets(b"") == b""
    assert pack_septets(b"\x01", 1) == b"\x02"
    assert pack_septets(b"\x7f", 1) == b"\xfe"
    assert pack_septets(b"\x7f\x7f", 1) == b"\xfe\x7f"
    # 8 septets fill exactly 7 octets
    assert len(pack_septets(b"a" * 8)) == 7
    assert len(pack_septets(b"a" * 153, 1)) == 134
    assert len(pack_septets(b"a" * 160)) == 140


def test_unpack_known_vector() -> None:
    assert unpack_septets(bytes.fromhex("e8329bfd4697d9ec37"), 10) == b"hellohello"
    assert unpack_septets(b"\xfe\x7f", 2, 1) == b"\x7f\x7f"


def test_pack_rejects_bad_fill_and_unpack_bad_count() -> None:
    with pytest.raises(ValueError):
        pack_septets(b"a", 7)
    with pytest.raises(ValueError):
        unpack_septets(b"\x00", 2)


septets_st = st.binary(max_size=400).map(lambda b: bytes(x & 0x7F for x in b))


@FAST
@given(septets_st, st.integers(0, 6))
def test_pack_matches_bitwise_reference(septets: bytes, fill: int) -> None:
    packed = pack_septets(septets, fill)
    assert packed == ref_pack(septets, fill)
    assert len(packed) == (7 * len(septets) + fill + 7) // 8


@FAST
@given(septets_st, st.integers(0, 6))
def test_unpack_inverts_pack(septets: bytes, fill: int) -> None:
    assert unpack_septets(pack_septets(septets, fill), len(septets), fill) == septets


gsm_text_st = st.text(alphabet=st.sampled_from(GSM_ALPHABET), max_size=400)


@FAST
@given(gsm_text_st)
def test_decode_inverts_encode(text: str) -> None:
    encoded = gsm_encode(text)
    assert gsm_decode(encoded) == text
    assert septet_count(text) == len(encoded)
    assert all(b < 0x80 for b in encoded)


def ref_septets(text: str) -> bytes | None:
    out = bytearray()
    for ch in text:
        if ch in EXTENSION_TABLE:
            out += bytes((0x1B, EXTENSION_TABLE[ch]))
        elif ch in BASE_CHARS:
            out.append(BASE_TABLE.index(ch))
        else:
            return None
    return bytes(out)


@settings(max_examples=500, deadline=None)
@given(
    st.text(
        alphabet=st.one_of(
            st.sampled_from(GSM_ALPHABET),
            st.sampled_from("`\x1b\tçã中😀“\u00a0\x7f"),
            st.characters(codec="utf-8"),
        ),
        max_size=300,
    )
)
def test_septets_match_reference_on_any_text(text: str) -> None:
    assert gsm_septets(text) == ref_septets(text)


@FAST
@given(st.binary(max_size=300))
def test_decode_never_fails(data: bytes) -> None:
    assert isinstance(gsm_decode(data), str)


# --- smpplib agrees where its table is right ------------------------------------------------------
# smpplib puts "`" at 0x5F instead of "§" and has no form feed: leave those two out.
SMPPLIB_OK = GSM_ALPHABET.replace("§", "").replace("\f", "")


@FAST
@given(st.text(alphabet=st.sampled_from(SMPPLIB_OK), max_size=300))
def test_encode_agrees_with_smpplib(text: str) -> None:
    assert gsm_encode(text) == smpplib.gsm.gsm_encode(text)


def test_smpplib_backtick_bug_is_not_ours() -> None:
    assert smpplib.gsm.gsm_encode("`") == b"\x5f"  # smpplib: wrong, 0x5F is "§"
    assert gsm_encode("§") == b"\x5f"
    assert septet_count("`") is None


# --- smart mapping ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        ("‘single’ ‚low‛", "'single' 'low'"),
        ("“double” „low‟", '"double" "low"'),
        ("«guillemets»", '"guillemets"'),
        ("en–dash em—dash minus−5 ‐‑‒―", "en-dash em-dash minus-5 ----"),
        ("a\u00a0b\u2002c\u2009d\u202fe\u205ff\u2003g\th", "a b c d e f g h"),
        ("wait…", "wait..."),
        ("• one ‣ two ◦ three", "- one - two - three"),
        ("5′ 10″", "5' 10\""),
        ("zero\u200bwidth\ufeff", "zerowidth"),
        ("`code´", "'code'"),
        ("line\u2028break", "line\nbreak"),
    ],
)
def test_smart_map(src: str, dst: str) -> None:
    assert smart_map(src) == dst
    assert septet_count(dst) is not None


def test_smart_map_leaves_gsm_and_letters_alone() -> None:
    text = BASE_CHARS + EXT_CHARS + "çãñÿ"
    assert smart_map(text) == text


CJK_AND_FULLWIDTH = (
    "中文字【】「」『』《》〈〉、。・〜\u3000"  # CJK ideographs, punctuation, ideographic space
    "，．：；！？（）［］｛｝＂＇～－＿"  # fullwidth forms
    "ｱｲｳ한국어ひらがなカタカナ"
)


def test_smart_map_never_touches_cjk_or_fullwidth() -> None:
    assert smart_map(CJK_AND_FULLWIDTH) == CJK_AND_FULLWIDTH


@FAST
@given(
    st.text(
        alphabet=st.one_of(
            st.characters(min_codepoint=0x2E80, max_codepoint=0x9FFF),  # CJK, kana, punctuation
            st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3),  # Hangul
            st.characters(min_codepoint=0xFF00, max_codepoint=0xFFEF),  # half/fullwidth forms
        ),
        max_size=200,
    )
)
def test_smart_map_cjk_property(text: str) -> None:
    assert smart_map(text) == text


@FAST
@given(st.text(max_size=200))
def test_smart_map_only_shrinks_the_non_gsm_set(text: str) -> None:
    mapped = smart_map(text)
    before = {c for c in text if not is_gsm_char(c)}
    after = {c for c in mapped if not is_gsm_char(c)}
    assert after <= before
