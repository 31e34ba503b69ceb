"""Reassembly of submitted parts into the text a handset would show (bridge.smpp.reassembly)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.smpp.codec import ShortMessage
from bridge.smpp.reassembly import (
    Reassembler,
    Segment,
    decode_payload,
    parse_segment,
    segment_text,
)
from bridge.text.gsm import BASE_TABLE, EXTENSION_TABLE, pack_septets
from bridge.text.split import EncodeOptions, SplitMode, encode_message

GSM_EXT_TEXT = "Price: 10€ [promo] {code|x} ~tilde^ back\\slash " * 7  # 3 parts in GSM-7
UCS2_EMOJI_TEXT = "Привет 👋 мир! Emoji 😀🎉 straddle parts 🚀 " * 5  # 4 parts in UCS-2


def _sms(part, data_coding: int) -> ShortMessage:
    return ShortMessage(
        source_addr="SENDER",
        destination_addr="4915112345678",
        esm_class=part.esm_class,
        data_coding=data_coding,
        short_message=part.short_message,
        tlvs=part.tlvs,
    )


def _reassemble(text: str, opts: EncodeOptions, ref: int = 7, order=None):
    enc = encode_message(text, opts, ref)
    r = Reassembler()
    parts = list(enc.parts)
    if order is not None:
        parts = [parts[i] for i in order]
    done = []
    for i, part in enumerate(parts):
        seg = parse_segment(_sms(part, enc.data_coding), opts.packed_gsm)
        msg = r.add("sys", "SENDER", "4915112345678", seg, f"id{part.seq}", float(i))
        done.append(msg)
    return enc, done, r


@pytest.mark.parametrize("split", ["udh8", "udh16", "sar"])
@pytest.mark.parametrize("packed", [False, True])
def test_three_part_gsm_with_extension_chars(split: str, packed: bool) -> None:
    opts = EncodeOptions(split=SplitMode(split), packed_gsm=packed)
    enc, done, r = _reassemble(GSM_EXT_TEXT, opts)
    assert len(enc.parts) == 3
    assert done[:2] == [None, None]
    msg = done[2]
    assert msg is not None
    assert msg.text == GSM_EXT_TEXT
    assert msg.parts == 3
    assert msg.message_ids == ["id1", "id2", "id3"]
    assert msg.data_coding == 0
    assert msg.received_at == 2.0
    assert len(r) == 0


@pytest.mark.parametrize("split", ["udh8", "udh16", "sar"])
def test_four_part_ucs2_with_emoji(split: str) -> None:
    enc, done, _ = _reassemble(UCS2_EMOJI_TEXT, EncodeOptions(split=SplitMode(split)))
    assert len(enc.parts) == 4
    msg = done[-1]
    assert msg is not None and msg.text == UCS2_EMOJI_TEXT and msg.data_coding == 8


def test_ucs2_surrogate_pair_cut_across_parts_still_joins() -> None:
    """A sender that cuts a surrogate pair in two: joined octets decode, like a handset."""
    data = "ab😀cd".encode("utf-16-be")  # the emoji is units 2..3
    first, second = data[:6], data[6:]  # high surrogate ends part 1
    r = Reassembler()
    for seq, chunk in ((1, first), (2, second)):
        udh = bytes((5, 0, 3, 9, 2, seq))
        seg = parse_segment(ShortMessage(esm_class=0x40, data_coding=8, short_message=udh + chunk))
        msg = r.add("s", "a", "b", seg, str(seq), 0.0)
    assert msg is not None and msg.text == "ab😀cd"


@pytest.mark.parametrize("packed", [False, True])
def test_payload_mode(packed: bool) -> None:
    opts = EncodeOptions(split=SplitMode.PAYLOAD, packed_gsm=packed)
    enc, done, _ = _reassemble(GSM_EXT_TEXT, opts)
    assert len(enc.parts) == 1
    assert done[0] is not None and done[0].text == GSM_EXT_TEXT and done[0].parts == 1


def test_latin1_multipart() -> None:
    text = "Grüße aus Köln, très élégant ¿qué? «quoted» " * 5
    opts = EncodeOptions(split=SplitMode.UDH8, allow_latin1=True)
    enc, done, _ = _reassemble(text + "\u00ad", opts)  # soft hyphen: Latin-1, not GSM
    assert enc.data_coding == 3 and len(enc.parts) > 1
    assert done[-1] is not None and done[-1].text == text + "\u00ad"


def test_parts_out_of_order_and_repeated() -> None:
    _, done, _ = _reassemble(GSM_EXT_TEXT, EncodeOptions(), order=[2, 0, 0, 1])
    assert done[:3] == [None, None, None]  # the repeated part 1 replaces itself
    assert done[3] is not None and done[3].text == GSM_EXT_TEXT
    assert done[3].message_ids == ["id1", "id2", "id3"]


def test_keys_do_not_mix() -> None:
    enc = encode_message(GSM_EXT_TEXT, EncodeOptions(), 5)
    r = Reassembler()
    p1, p2, p3 = (parse_segment(_sms(p, 0)) for p in enc.parts)
    assert r.add("sys", "A", "B", p1, "1", 0) is None
    assert r.add("other", "A", "B", p2, "2", 0) is None  # other system_id
    assert r.add("sys", "A", "C", p2, "2", 0) is None  # other destination
    assert r.add("sys", "X", "B", p2, "2", 0) is None  # other source
    assert r.add("sys", "A", "B", p3, "3", 0) is None
    assert len(r) == 4
    msg = r.add("sys", "A", "B", p2, "2", 0)
    assert msg is not None and msg.text == GSM_EXT_TEXT


def test_total_change_restarts_the_message() -> None:
    r = Reassembler()
    a = Segment(0, b"AAA", "udh8", 1, 3, 1)
    b = Segment(0, b"BBB", "udh8", 1, 2, 2)
    c = Segment(0, b"CCC", "udh8", 1, 2, 1)
    assert r.add("s", "a", "b", a, "1", 0) is None
    assert r.add("s", "a", "b", b, "2", 0) is None
    assert r.abandoned == 1
    msg = r.add("s", "a", "b", c, "3", 0)
    assert msg is not None and msg.text == "CCCBBB" and msg.message_ids == ["3", "2"]


def test_ttl_and_max_pending() -> None:
    r = Reassembler(ttl_s=10, max_pending=2)
    seg = Segment(0, b"x", "sar", 1, 2, 1)
    r.add("s", "a", "b", seg, "1", 0.0)
    r.add("s", "a", "c", seg, "1", 5.0)
    r.add("s", "a", "d", seg, "1", 6.0)  # evicts the oldest (a->b)
    assert len(r) == 2 and r.abandoned == 1
    r.add("s", "a", "e", seg, "1", 15.5)  # a->c (5.0) is older than 10 s now
    assert len(r) == 2 and r.abandoned == 2
    # the evicted message's second part now starts a new incomplete entry
    assert r.add("s", "a", "b", Segment(0, b"y", "sar", 1, 2, 2), "2", 15.6) is None


def test_udh_parsing_edge_cases() -> None:
    # Other IEs before the concatenation IE are skipped (here a port-addressing IE 0x05).
    udh = bytes((11, 0x05, 4, 0x0B, 0x84, 0x23, 0xF0, 0x00, 3, 0x42, 2, 1))
    seg = parse_segment(ShortMessage(esm_class=0x40, short_message=udh + b"Hi"))
    assert (seg.scheme, seg.ref, seg.total, seg.seq, seg.payload) == ("udh8", 0x42, 2, 1, b"Hi")
    # UDH16
    seg = parse_segment(
        ShortMessage(esm_class=0x40, short_message=bytes((6, 8, 4, 0x12, 0x34, 3, 3)) + b"x")
    )
    assert (seg.scheme, seg.ref, seg.total, seg.seq) == ("udh16", 0x1234, 3, 3)
    # seq 0 / seq > total / total 1: not a concatenation, treated as single
    for bad in ((5, 0, 3, 1, 2, 0), (5, 0, 3, 1, 2, 3), (5, 0, 3, 1, 1, 1)):
        seg = parse_segment(ShortMessage(esm_class=0x40, short_message=bytes(bad) + b"x"))
        assert seg.scheme == "" and seg.payload == b"x"
    # UDH length beyond the data: octets are kept, nothing dropped
    seg = parse_segment(ShortMessage(esm_class=0x40, short_message=bytes((9, 0, 3)) + b"x"))
    assert seg.scheme == "" and seg.payload == bytes((9, 0, 3)) + b"x"
    # UDHI without any UDH octets
    assert parse_segment(ShortMessage(esm_class=0x40)).payload == b""


def test_sar_needs_all_three_tlvs() -> None:
    tlvs = ((0x020C, b"\x00\x07"), (0x020E, b"\x02"))
    seg = parse_segment(ShortMessage(short_message=b"abc", tlvs=tlvs))
    assert seg.scheme == ""


def test_message_payload_replaces_short_message_only_when_it_is_empty() -> None:
    sm = ShortMessage(tlvs=((0x0424, b"long text"),))
    assert parse_segment(sm).payload == b"long text"


@pytest.mark.parametrize(
    ("dc", "payload", "text"),
    [
        (0, bytes((0x00, 0x1B, 0x65, 0x11)), "@€_"),
        (1, b"Hello", "Hello"),
        (3, "é£".encode("latin-1"), "é£"),
        (8, "😀".encode("utf-16-be"), "😀"),
        (8, b"\xd8\x3d", "\ufffd"),  # lone high surrogate: replaced, no error
        (2, b"\x01\xff", "01ff"),  # binary shown as hex
        (6, "Ж".encode("iso8859_5"), "Ж"),
        (0xF0, b"Hi", "Hi"),  # GSM with message class
        (0xF4, b"\x01", "01"),  # 8-bit with message class
        (0x18, "й".encode("utf-16-be"), "й"),  # general group, UCS2 alphabet
    ],
)
def test_decode_payload(dc: int, payload: bytes, text: str) -> None:
    assert decode_payload(dc, payload) == text


def test_packed_padding_cr_is_dropped_but_a_wanted_cr_is_kept() -> None:
    opts = EncodeOptions(packed_gsm=True)
    for text in ("1234567", "abcdef\r", "x" * 15, "x" * 153 * 2):
        enc = encode_message(text, opts)
        got = "".join(segment_text(parse_segment(_sms(p, 0), True)) for p in enc.parts)
        assert got == text, text
    assert segment_text(parse_segment(ShortMessage(short_message=pack_septets(b"abc")), True)) == (
        "abc"
    )
    # 7 septets in 7 octets without the CR pad: the 7 spare zero bits read as '@' (as on a handset)
    assert (
        segment_text(parse_segment(ShortMessage(short_message=pack_septets(b"1234567")), True))
        == "1234567@"
    )
    assert (
        segment_text(parse_segment(ShortMessage(short_message=pack_septets(b"1234567\r")), True))
        == "1234567"
    )


_GSM_ALPHABET = [c for c in BASE_TABLE if c not in "\x1b\r"] + list(EXTENSION_TABLE)


@settings(max_examples=150, deadline=None)
@given(
    text=st.text(alphabet=st.sampled_from(_GSM_ALPHABET), min_size=1, max_size=700),
    split=st.sampled_from(["udh8", "udh16", "sar", "payload"]),
    packed=st.booleans(),
    ref=st.integers(0, 255),
)
def test_gsm_round_trip(text: str, split: str, packed: bool, ref: int) -> None:
    opts = EncodeOptions(split=SplitMode(split), packed_gsm=packed)
    _, done, _ = _reassemble(text, opts, ref)
    assert done[-1] is not None and done[-1].text == text
    assert all(d is None for d in done[:-1])


@settings(max_examples=100, deadline=None)
@given(
    text=st.text(
        alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=400
    ).filter(lambda t: any(ord(c) > 0xFF for c in t)),
    split=st.sampled_from(["udh8", "udh16", "sar", "payload"]),
)
def test_ucs2_round_trip(text: str, split: str) -> None:
    _, done, _ = _reassemble(text, EncodeOptions(split=SplitMode(split)), 3)
    assert done[-1] is not None and done[-1].text == text
