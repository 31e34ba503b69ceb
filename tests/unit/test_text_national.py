"""National language shift tables (TS 23.038 Annex A): the tables against the spec's facts, and
decoding with them (round trips through a test-only encoder, parts, unknown ids)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.text.gsm import BASE_TABLE, EXTENSION_TABLE, gsm_decode
from bridge.text.national import (
    EMPTY,
    LANGUAGES,
    LOCKING_TABLES,
    NONE,
    SINGLE_SHIFT_TABLES,
    decode_parts,
    decode_septets,
    tables_for,
)

FAST = settings(max_examples=200, deadline=None)

INDIAN = (4, 5, 6, 7, 8, 9, 10, 11, 12, 13)
PAIRS = [(lock, single) for lock in LOCKING_TABLES for single in SINGLE_SHIFT_TABLES]


def encode(text: str, locking: int, single: int) -> bytes:
    """Test-only encoder: a character of the locking table is its septet, else ESC and its code
    in the single shift table (the first, where the table lists one twice)."""
    base = LOCKING_TABLES[locking]
    shift = SINGLE_SHIFT_TABLES[single]
    out = bytearray()
    for ch in text:
        code = base.find(ch)
        if code >= 0 and ch not in ("\x1b", EMPTY):
            out.append(code)
        else:
            code = shift.index(ch)
            out += bytes((0x1B, code))
    return bytes(out)


def alphabet(locking: int, single: int) -> str:
    chars = set(LOCKING_TABLES[locking]) | set(SINGLE_SHIFT_TABLES[single])
    return "".join(sorted(chars - {"\x1b", EMPTY, NONE}))


# --- the tables -------------------------------------------------------------------------------


def test_every_language_has_its_tables():
    assert set(LANGUAGES) == set(range(1, 14))
    assert set(SINGLE_SHIFT_TABLES) == set(range(14))
    # Spanish has no locking shift table (TS 23.038 A.3.2 is "void").
    assert set(LOCKING_TABLES) == set(range(14)) - {2}
    assert LOCKING_TABLES[0] == BASE_TABLE


@pytest.mark.parametrize("lang", sorted(LOCKING_TABLES))
def test_locking_table_structure(lang):
    table = LOCKING_TABLES[lang]
    assert len(table) == 128
    assert table[0x1B] == "\x1b"  # the escape to the single shift table
    assert (table[0x0A], table[0x0D], table[0x20]) == ("\n", "\r", " ")
    assert table[0x30:0x3A] == "0123456789"
    assert table[0x61:0x7B] == "abcdefghijklmnopqrstuvwxyz"
    assert all(table[code] in "!?.:;)(" for code in (0x21, 0x3F, 0x2E, 0x3A, 0x3B))
    chars = [ch for ch in table if ch not in ("\x1b", EMPTY)]
    assert len(chars) == len(set(chars)), "a locking table names each character once"


@pytest.mark.parametrize("lang", sorted(SINGLE_SHIFT_TABLES))
def test_single_shift_table_structure(lang):
    table = SINGLE_SHIFT_TABLES[lang]
    assert len(table) == 128
    assert table[0x1B] == NONE  # ESC ESC is reserved, not a character
    # What every single shift table keeps from the default extension table (TS 23.038 A.2).
    for ch, code in EXTENSION_TABLE.items():
        assert table[code] == ch, (lang, hex(code))
    chars = [ch for ch in table if ch != NONE]
    doubled = {ch for ch in chars if chars.count(ch) > 1}
    # The spec lists "¡" (0x13, 0x15) and "*" (0x0B, 0x18) twice in the Indian tables, no other.
    assert doubled == ({"¡", "*"} if lang in INDIAN else set())


def test_default_single_shift_is_the_extension_table():
    table = SINGLE_SHIFT_TABLES[0]
    assert {ch: code for code, ch in enumerate(table) if ch != NONE} == EXTENSION_TABLE


# Positions as the spec's tables print them (TS 23.038 V16 Annex A, as transcribed by another
# implementation than the one our tables were checked against): septet -> code point.
TURKISH_LOCKING = {0x04: 0x20AC, 0x07: 0x0131, 0x09: 0x00C7, 0x0B: 0x011E, 0x0C: 0x011F,
                   0x1C: 0x015E, 0x1D: 0x015F, 0x40: 0x0130, 0x60: 0x00E7}  # fmt: skip
TURKISH_SINGLE = {0x47: 0x011E, 0x49: 0x0130, 0x53: 0x015E, 0x63: 0x00E7, 0x67: 0x011F,
                  0x69: 0x0131, 0x73: 0x015F, 0x65: 0x20AC}  # fmt: skip
SPANISH_SINGLE = {0x09: 0x00E7, 0x41: 0x00C1, 0x49: 0x00CD, 0x4F: 0x00D3, 0x55: 0x00DA,
                  0x61: 0x00E1, 0x69: 0x00ED, 0x6F: 0x00F3, 0x75: 0x00FA}  # fmt: skip
PORTUGUESE_LOCKING = {0x04: 0x00EA, 0x09: 0x00E7, 0x12: 0x00AA, 0x13: 0x00C7, 0x15: 0x221E,
                      0x16: ord("^"), 0x17: ord("\\"), 0x1A: ord("|"), 0x24: 0x00BA,
                      0x40: 0x00CD, 0x5B: 0x00C3, 0x5C: 0x00D5, 0x60: ord("~"), 0x7B: 0x00E3,
                      0x7C: 0x00F5, 0x7D: ord("`")}  # fmt: skip
PORTUGUESE_SINGLE = {0x05: 0x00EA, 0x0B: 0x00D4, 0x0C: 0x00F4, 0x12: 0x03A6, 0x1F: 0x00CA,
                     0x41: 0x00C0, 0x5B: 0x00C3, 0x5C: 0x00D5, 0x61: 0x00C2, 0x7B: 0x00E3,
                     0x7C: 0x00F5, 0x7F: 0x00E2}  # fmt: skip

# Rows 4, D and F of each Indian locking table (0 where the spec leaves the cell empty), and
# column 2 (0x20-0x27) of each single shift table.
INDIAN_LOCKING_ROWS = {
    4: (
        "0986 0994 09A1 09B0 09C2",
        "099C 09A7 09AA 09B9 09CB 09DD",
        "098F 099E 09A8 09BD 09CD 09F1",
    ),
    5: (
        "0A86 0A94 0AA1 0AB0 0AC2",
        "0A9C 0AA7 0AAA 0AB9 0ACB 0AE2",
        "0A8F 0A9E 0AA8 0ABD 0ACD 0AF1",
    ),
    6: (
        "0906 0914 0921 0930 0942",
        "091C 0927 092A 0939 094B 097C",
        "090F 091E 0928 093D 094D 097F",
    ),
    7: (
        "0C86 0C94 0CA1 0CB0 0CC2",  # 0x24: the spec prints 0CAA, a misprint (national.py)
        "0C9C 0CA7 0CAA 0CB9 0CCB 0CE1",
        "0C8F 0C9E 0CA8 0CBD 0CCD 0CE3",
    ),
    8: (
        "0D06 0D14 0D21 0D30 0D42",
        "0D1C 0D27 0D2A 0D39 0D4B 0D62",
        "0D0F 0D1E 0D28 0D3D 0D4D 0D79",
    ),
    9: (
        "0B06 0B14 0B21 0B30 0B42",
        "0B1C 0B27 0B2A 0B39 0B4B 0B61",
        "0B0F 0B1E 0B28 0B3D 0B4D 0B63",
    ),
    10: (
        "0A06 0A14 0A21 0A30 0A42",
        "0A1C 0A27 0A2A 0A39 0A4B 0A72",
        "0A0F 0A1E 0A28 0 0A4D 0A74",
    ),
    11: (
        "0B86 0B94 0 0BB0 0BC2",
        "0B9C 0 0BAA 0BB9 0BCB 0BF1",
        "0B8F 0B9E 0BA8 0 0BCD 0BF9",
    ),
    12: (
        "0C06 0C14 0C21 0C30 0C42",
        "0C1C 0C27 0C2A 0C39 0C4B 0C61",
        "0C0F 0C1E 0C28 0C3D 0C4D 0C63",
    ),
    13: (
        "0680 0683 0630 0639 06C4",
        "0688 0696 0633 0644 0650 0653",
        "067C 068A 0698 0646 0657 0670",
    ),
}
INDIAN_SINGLE_COLUMN_2 = {
    4: "09EC 09ED 09EE 09EF 09DF 09E0 09E1 09E2",
    5: "0AEA 0AEB 0AEC 0AED 0AEE 0AEF 0 0",
    6: "096A 096B 096C 096D 096E 096F 0951 0952",
    7: "0CEA 0CEB 0CEC 0CED 0CEE 0CEF 0CDE 0CF1",
    8: "0D6A 0D6B 0D6C 0D6D 0D6E 0D6F 0D70 0D71",
    9: "0B6A 0B6B 0B6C 0B6D 0B6E 0B6F 0B5C 0B5D",
    10: "0A6A 0A6B 0A6C 0A6D 0A6E 0A6F 0A59 0A5A",
    11: "0BEA 0BEB 0BEC 0BED 0BEE 0BEF 0BF3 0BF4",
    12: "0C6A 0C6B 0C6C 0C6D 0C6E 0C6F 0C58 0C59",
    13: "06F4 06F5 06F6 06F7 06F8 06F9 060C 060D",
}


def _expect(table: str, positions: dict[int, int], empty: str) -> None:
    for code, cp in positions.items():
        assert table[code] == (chr(cp) if cp else empty), (hex(code), table[code], hex(cp))


def test_latin_tables_at_the_spec_positions():
    _expect(LOCKING_TABLES[1], TURKISH_LOCKING, EMPTY)
    _expect(SINGLE_SHIFT_TABLES[1], TURKISH_SINGLE, NONE)
    _expect(SINGLE_SHIFT_TABLES[2], SPANISH_SINGLE, NONE)
    _expect(LOCKING_TABLES[3], PORTUGUESE_LOCKING, EMPTY)
    _expect(SINGLE_SHIFT_TABLES[3], PORTUGUESE_SINGLE, NONE)
    # Turkish locking is the default alphabet but for its national letters.
    changed = {i for i in range(128) if LOCKING_TABLES[1][i] != BASE_TABLE[i]}
    assert changed == set(TURKISH_LOCKING) - {0x09}  # Ç is at 0x09 in both


@pytest.mark.parametrize("lang", INDIAN)
def test_indian_tables_at_the_spec_positions(lang):
    locking = LOCKING_TABLES[lang]
    row4, row_d, row_f = INDIAN_LOCKING_ROWS[lang]
    # Columns 0, 1, 2, 4, 5 of rows 4 and F, column 3 being a digit or "?"; columns 1-5 and 7 of
    # row D (0x0D is CR, 0x6D "m").
    _expect(locking, dict(zip((0x04, 0x14, 0x24, 0x44, 0x54), _cps(row4), strict=True)), EMPTY)
    _expect(locking, dict(zip((0x1D, 0x2D, 0x3D, 0x4D, 0x5D, 0x7D), _cps(row_d), strict=True)),
            EMPTY)  # fmt: skip
    _expect(locking, dict(zip((0x0F, 0x1F, 0x2F, 0x4F, 0x5F, 0x7F), _cps(row_f), strict=True)),
            EMPTY)  # fmt: skip
    assert (locking[0x34], locking[0x3F], locking[0x2C], locking[0x2E]) == ("4", "?", ",", ".")
    single = SINGLE_SHIFT_TABLES[lang]
    column = _cps(INDIAN_SINGLE_COLUMN_2[lang])
    _expect(single, dict(zip(range(0x20, 0x28), column, strict=True)), NONE)
    # The Latin capitals and the common symbols every Indian single shift table carries.
    assert single[0x41:0x5B] == "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    assert single[0x00:0x0A] == "@£$¥¿\"¤%&'"


def _cps(row: str) -> list[int]:
    return [int(x, 16) for x in row.split()]


def test_hindi_letters():
    hindi = LOCKING_TABLES[6]
    assert hindi[0x04:0x08] == "आइईउ"
    assert hindi[0x15:0x1B] == "कखगघङच"
    assert hindi[0x40:0x44] == "बभमय"
    assert decode_septets(encode("नमस्ते", 6, 0), 6, 0) == ("नमस्ते", False)


# --- decoding ---------------------------------------------------------------------------------


def test_turkish_locking_shift_decodes_the_national_letters():
    # "Işık ağacı çiçek" with the Turkish locking table: ı is 0x07, ş 0x1D, ğ 0x0C, ç 0x60.
    septets = encode("Işık ağacı çiçek", 1, 0)
    assert decode_septets(septets, 1, 0) == ("Işık ağacı çiçek", False)
    # Read with the default table, the same septets are what customers received before.
    assert gsm_decode(septets) == "Iæìk aøacì ¿i¿ek"


def test_turkish_single_shift_decodes_the_escaped_letters():
    septets = encode("Işık", 0, 1)
    assert septets == b"I\x1bs\x1bik"
    assert decode_septets(septets, 0, 1) == ("Işık", False)
    assert gsm_decode(septets) == "Isik"  # the default extension table has no ş or ı


def test_escape_rules():
    # A code the single shift table leaves empty shows the locking table's character.
    assert decode_septets(b"\x1b\x07", 1, 1) == ("ı", False)
    assert decode_septets(b"\x1b\x60", 3, 0) == ("~", False)
    # ESC ESC shows a space; a trailing lone ESC is dropped; the high bit is ignored.
    assert decode_septets(b"a\x1b\x1bb\x1b", 1, 1) == ("a b", False)
    assert decode_septets(bytes((0x87, 0x1B, 0xE9)), 1, 1) == ("ıı", False)
    # An empty locking cell is U+FFFD, not a character of another script.
    assert decode_septets(b"\x11", 4, 0) == ("\ufffd", False)


def test_unknown_ids_fall_back_to_the_default_table_and_say_so():
    septets = encode("Iaç", 1, 0)
    assert tables_for(14, 2) == (0, 2, True)
    assert tables_for(2, 99) == (0, 0, True)  # Spanish has no locking table
    assert tables_for(6, 6) == (6, 6, False)
    assert decode_septets(septets, 2, 0) == (gsm_decode(septets), True)
    assert decode_septets(septets, 0, 200) == (gsm_decode(septets), True)
    assert decode_septets(b"\x1bi", 1, 77) == ("i", True)  # Turkish locking, default extension


@FAST
@given(st.binary(max_size=200))
def test_default_pair_is_the_default_codec(data):
    assert decode_septets(data, 0, 0) == (gsm_decode(data), False)


@FAST
@given(st.binary(max_size=200), st.integers(0, 255), st.integers(0, 255))
def test_never_raises(data, locking, single):
    text, unknown = decode_septets(data, locking, single)
    assert isinstance(text, str)
    assert unknown == (locking not in LOCKING_TABLES or single not in SINGLE_SHIFT_TABLES)


@st.composite
def text_for_pair(draw):
    locking, single = draw(st.sampled_from(PAIRS))
    text = draw(st.text(alphabet=alphabet(locking, single), max_size=120))
    return locking, single, text


@FAST
@given(text_for_pair())
def test_round_trip_every_table_pair(case):
    locking, single, text = case
    assert decode_septets(encode(text, locking, single), locking, single) == (text, False)


@pytest.mark.parametrize(("locking", "single"), PAIRS)
def test_round_trip_every_character(locking, single):
    text = alphabet(locking, single)
    assert decode_septets(encode(text, locking, single), locking, single) == (text, False)


@FAST
@given(text_for_pair(), st.lists(st.integers(0, 300), max_size=4))
def test_parts_of_one_run_decode_as_the_whole(case, cuts):
    """Cut anywhere, an escape pair included, the parts read as the joined septets do."""
    locking, single, text = case
    septets = encode(text, locking, single)
    bounds = sorted({0, len(septets), *(c for c in cuts if c < len(septets))})
    parts = [(septets[a:b], locking, single) for a, b in itertools.pairwise(bounds)]
    assert decode_parts(parts) == (text, False)


@FAST
@given(st.lists(text_for_pair(), min_size=1, max_size=4))
def test_each_part_is_read_with_its_own_tables(cases):
    parts = [(encode(text, locking, single), locking, single) for locking, single, text in cases]
    assert decode_parts(parts) == ("".join(text for _, _, text in cases), False)


def test_an_escape_cut_across_parts_uses_the_tables_of_the_part_holding_it():
    # Part 1 (Turkish single shift) ends with ESC; part 2 (default tables) starts with 0x73: ş.
    parts = [(b"a\x1b", 0, 1), (b"\x73b", 0, 0)]
    assert decode_parts(parts) == ("aşb", False)
    assert decode_parts([(b"a\x1b", 0, 0), (b"\x73b", 0, 1)]) == ("asb", False)
