"""Replies in every character set SMPP 3.4 5.2.19 names are stored as the handset showed them
(pure: inbound.decoded_mo, what `Inbound` stores and pushes). Before, KS C 5601 (0x0E) and
ISO-2022-JP (0x0A) were stored as hex, JIS X 0208 (5) and JIS X 0212 (0x0D) were read as
Shift_JIS only (ISO-2022-JP and EUC-JP octets became mojibake), GSM septets under IA5 (1) became
control characters and U+FFFD, and octets a character set could not read became U+FFFD, the
sender's octets lost and nobody told."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.pipeline.inbound import decoded_mo
from bridge.smpp.reassembly import Decoded, decode_payload
from bridge.text.charsets import decode_octets, ia5_holds_gsm
from bridge.text.gsm import gsm_encode

CYRILLIC = "Привет, как дела? Ёж №5"
HEBREW = "שלום, מה שלומך?"
JAPANESE = "日本語のテキスト、カタカナ"
KOREAN = "안녕하세요, 잘 지내요?"


def mo(dc: int, payload: bytes) -> Decoded:
    return decoded_mo(dc, ((payload, 0, 0),))


@pytest.mark.parametrize(
    ("dc", "payload", "text"),
    [
        (1, b"user_1@example.com costs $5", "user_1@example.com costs $5"),  # IA5 proper
        (1, b"caf\xe9 cr\xe8me", "café crème"),  # octets IA5 lacks: Latin-1, not hex
        (7, "שָׁלוֹם".encode("cp1255"), "שָׁלוֹם"),  # vowel points: Windows-1255, not hex
        (1, b"line\r\nfeed", "line\r\nfeed"),
        (3, "café £5".encode("latin-1"), "café £5"),
        (6, CYRILLIC.encode("iso8859_5"), CYRILLIC),
        (7, HEBREW.encode("iso8859_8"), HEBREW),
        (5, JAPANESE.encode("shift_jis"), JAPANESE),
        (5, "①番".encode("cp932"), "①番"),  # NEC special characters handsets write
        (5, JAPANESE.encode("iso2022_jp"), JAPANESE),
        (5, JAPANESE.encode("euc_jp"), JAPANESE),
        (0x0A, JAPANESE.encode("iso2022_jp"), JAPANESE),
        (0x0A, "ｶﾀｶﾅ".encode("iso2022_jp_ext"), "ｶﾀｶﾅ"),
        (0x0D, "丂亍".encode("euc_jp"), "丂亍"),  # JIS X 0212 (SS3 0x8F in EUC-JP)
        (0x0D, "丂 日本".encode("iso2022_jp_2"), "丂 日本"),  # ESC $ ( D
        (0x0D, JAPANESE.encode("shift_jis"), JAPANESE),  # mislabelled Shift_JIS, as read before
        (0x0E, KOREAN.encode("euc_kr"), KOREAN),
        (0x0E, "똠방각하".encode("cp949"), "똠방각하"),  # Hangul KS C 5601 lacks (UHC)
        (0x0E, KOREAN.encode("iso2022_kr"), KOREAN),
        (0xF0, gsm_encode("Hi @ £5_"), "Hi @ £5_"),  # GSM with message class 0..3
        (0xF3, gsm_encode("Hi"), "Hi"),
        (0xF4, b"\x01\xff", "01ff"),  # 8-bit data with message class: hex, rightly
        (0xF7, b"ab", "6162"),
        (0xC0, gsm_encode("Voicemail @"), "Voicemail @"),  # message waiting, discard
        (0xD8, gsm_encode("Fax"), "Fax"),  # message waiting, store
        (0xE0, "Щ".encode("utf-16-be"), "Щ"),  # message waiting, store, UCS2
        (2, b"\x00\xff", "00ff"),
        (4, b"\x01", "01"),
    ],
)
def test_each_coding_reads_as_the_handset_showed_it(dc: int, payload: bytes, text: str) -> None:
    got = mo(dc, payload)
    assert got[:3] == (text, False, False)
    assert got.hex == (text == payload.hex())  # binary data: its hex, and said so
    assert decode_payload(dc, payload) == text  # the simulator's reading of what it receives


@pytest.mark.parametrize(
    ("dc", "payload"),
    [
        (7, b"\xd7\xe9\xff"),  # 0xFF is not ISO-8859-8
        (5, b"\x81\x20\xff\xff"),  # neither Shift_JIS nor EUC-JP
        (0x0E, b"\xff\xfe\x80\x80"),
        (9, b"\x01\x02"),  # pictograms: no character set here
        (0x0B, b"\x41"),  # reserved
        (0x30, b"\x41"),  # compressed (TS 23.038 general group, bit 5)
        (0x90, b"\x41"),  # reserved group
    ],
)
def test_octets_not_text_in_their_coding_are_kept_as_hex_and_flagged(
    dc: int, payload: bytes
) -> None:
    assert mo(dc, payload) == (payload.hex(), False, True, True)  # text_hex: said so


def test_gsm_septets_under_ia5_are_read_as_gsm() -> None:
    """Some SMSCs send unpacked GSM under data_coding 1: "@" is 0x00 and "_" 0x11 there, which
    IA5 text never holds (it read as U+FFFD and a control character). IA5 text with "@" and "_"
    of its own (0x40, 0x5F) still reads as IA5."""
    septets = gsm_encode("Meet @ 5_6, Ø £2 {ok}")
    assert ia5_holds_gsm(septets)
    assert mo(1, septets) == ("Meet @ 5_6, Ø £2 {ok}", False, False, False)
    assert not ia5_holds_gsm(b"a@b_c$\r\n\f")
    assert not ia5_holds_gsm(b"Hello\x00\x00")  # NUL padding is not GSM
    assert mo(1, b"Hello\x00") == ("Hello\ufffd", False, False, False)  # as before


def test_a_character_cut_at_the_end_is_a_replacement_character_not_hex() -> None:
    """A long reply's run before a missing part may end inside a double-byte character: as a
    cut UCS-2 surrogate pair, it ends in U+FFFD and the rest stays readable."""
    cut = "日本".encode("shift_jis")[:-1]
    assert mo(5, cut) == ("日\ufffd", False, False, False)
    assert mo(0x0E, "안녕".encode("euc_kr")[:-1]) == ("안\ufffd", False, False, False)
    assert decode_octets(0x0D, "丂".encode("euc_jp")[:-1]) == ("\ufffd", False)


@given(st.integers(0, 255), st.binary(max_size=300))
def test_any_coding_and_octets_decode_without_an_error(dc: int, payload: bytes) -> None:
    got = mo(dc, payload)
    assert "\x00" not in got.text  # PostgreSQL's text refuses NUL
    assert not got.unknown_language
    if got.undecodable:
        assert got.text == payload.hex()  # nothing the sender sent is lost
