"""The UDH's national language IEs (TS 23.040 9.2.3.24.15-16) as parse_segment reads them, how
mo_parts keeps them beside the data_coding, and the simulator's reassembly with them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.smpp.codec import ShortMessage
from bridge.smpp.reassembly import Reassembler, decode_segments, parse_segment, segment_text
from bridge.store.mo_rows import mo_part, mo_part_values
from bridge.store.models import MoPart
from bridge.text.gsm import pack_septets
from bridge.text.national import LOCKING_TABLES

FAST = settings(max_examples=300, deadline=None)


def sm(udh: bytes, user_data: bytes, dc: int = 0, esm: int = 0x40) -> ShortMessage:
    return ShortMessage(esm_class=esm, data_coding=dc, short_message=bytes((len(udh),)) + udh
                        + user_data)  # fmt: skip


def turkish(text: str) -> bytes:
    return bytes(LOCKING_TABLES[1].index(ch) for ch in text)


def test_language_ies_with_and_without_concatenation():
    seg = parse_segment(sm(b"\x25\x01\x01\x24\x01\x03", turkish("ığ")))
    assert (seg.scheme, seg.locking, seg.single, seg.payload) == ("", 1, 3, b"\x07\x0c")
    assert segment_text(seg) == "ığ"
    for udh in (b"\x00\x03\x05\x02\x01\x25\x01\x01", b"\x25\x01\x01\x00\x03\x05\x02\x01"):
        seg = parse_segment(sm(udh, b"x"))
        assert (seg.scheme, seg.ref, seg.total, seg.seq, seg.locking, seg.single) == (
            "udh8", 5, 2, 1, 1, 0,
        )  # fmt: skip
    # A repeated IE: the last counts.
    assert parse_segment(sm(b"\x25\x01\x01\x25\x01\x03", b"x")).locking == 3


def test_language_ies_only_for_gsm_7_bit_codings():
    for dc in (0, 0x11, 0xF0):  # default, general group GSM, message class GSM
        assert parse_segment(sm(b"\x25\x01\x01", b"x", dc)).locking == 1, dc
    for dc in (1, 3, 4, 8, 0x19):  # IA5, Latin-1, 8-bit, UCS-2, general group UCS-2
        assert parse_segment(sm(b"\x25\x01\x01", b"x", dc)).locking == 0, dc
    # Without UDHI the octets are text, not a header.
    assert parse_segment(sm(b"\x25\x01\x01", b"x", esm=0)).locking == 0


def test_packed_user_data_after_language_ies():
    udh = b"\x00\x03\x09\x02\x02\x25\x01\x01"  # 9 octets with its length: 5 fill bits
    data = pack_septets(turkish("çiş Ğ"), 5)
    seg = parse_segment(sm(udh, data), packed_gsm=True)
    assert (seg.seq, seg.locking) == (2, 1)
    assert segment_text(seg) == "çiş Ğ"


@FAST
@given(st.binary(max_size=40), st.binary(max_size=40), st.booleans(), st.integers(0, 255))
def test_any_udh_parses_without_raising(udh, user_data, packed, dc):
    data = bytes((len(udh),)) + udh + user_data
    seg = parse_segment(ShortMessage(esm_class=0x40, data_coding=dc, short_message=data), packed)
    assert 0 <= seg.locking <= 255 and 0 <= seg.single <= 255
    segment_text(seg)  # never raises


def test_mo_part_row_round_trip():
    part = MoPart("s", "1", "2", 7, 2, 1, 0, b"\x07", 5, 1, 2, locking=1, single=13)
    row = list(mo_part_values(part))
    assert row[6] == 0 and row[-2:] == [1, 13]  # data_coding as sent; the tables in columns
    assert mo_part(row) == part
    old = list(mo_part_values(MoPart("s", "1", "2", 7, 2, 1, 8, b"x", 5, 1)))
    assert old[6] == 8 and mo_part(old).locking == mo_part(old).single == 0


def test_simulator_reassembles_parts_with_their_tables():
    r = Reassembler()
    p1 = parse_segment(sm(b"\x00\x03\x01\x02\x01\x25\x01\x01", turkish("ığ") + b"\x1b"))
    p2 = parse_segment(sm(b"\x00\x03\x01\x02\x02", b"\x65"))
    assert r.add("sys", "a", "b", p1, "id1", 0.0) is None
    msg = r.add("sys", "a", "b", p2, "id2", 1.0)
    assert msg is not None and msg.text == "ığ€"
    assert decode_segments(8, [("ı".encode("utf-16-be"), 1, 1)]) == ("ı", False, False, False)
