"""Encoding choice and splitting: exact boundaries, every split mode byte for byte, properties."""

from __future__ import annotations

from dataclasses import replace

import pytest
import smpplib.command
import smpplib.consts
import smpplib.gsm
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from bridge.text.gsm import BASE_TABLE, EXTENSION_TABLE, gsm_decode, pack_septets, unpack_septets
from bridge.text.smart import smart_map
from bridge.text.split import (
    EncodedMessage,
    EncodeOptions,
    Encoding,
    Part,
    RefCounter,
    SplitMode,
    TextError,
    choose_encoding,
    encode_message,
)

PROPS = settings(max_examples=150, deadline=None)

UDH8 = EncodeOptions(split=SplitMode.UDH8)
UDH16 = EncodeOptions(split=SplitMode.UDH16)
SAR = EncodeOptions(split=SplitMode.SAR)
PAYLOAD = EncodeOptions(split=SplitMode.PAYLOAD)


def sizes(msg: EncodedMessage) -> list[int]:
    return [p.size for p in msg.parts]


def chars(msg: EncodedMessage) -> list[int]:
    return [p.chars for p in msg.parts]


# --- encoding choice ----------------------------------------------------------------------------


def test_choose_encoding() -> None:
    assert choose_encoding("hello {world} €") is Encoding.GSM7
    assert choose_encoding("Ação") is Encoding.UCS2
    assert choose_encoding("Ação", allow_latin1=True) is Encoding.LATIN1
    assert choose_encoding("Ação €", allow_latin1=True) is Encoding.UCS2  # € is not Latin-1
    assert choose_encoding("中文") is Encoding.UCS2
    assert choose_encoding("`") is Encoding.UCS2


def test_data_coding_per_encoding_and_option() -> None:
    assert encode_message("hi").data_coding == 0
    assert encode_message("hi", EncodeOptions(gsm_data_coding=1)).data_coding == 1
    assert encode_message("中").data_coding == 8
    assert encode_message("ã", EncodeOptions(allow_latin1=True)).data_coding == 3


def test_empty_refused() -> None:
    with pytest.raises(TextError) as ei:
        encode_message("")
    assert ei.value.code == "EMPTY_MESSAGE"


def test_lone_surrogate_refused() -> None:
    with pytest.raises(TextError) as ei:
        encode_message("ab\ud83d")
    assert ei.value.code == "UNENCODABLE"
    assert "position 2" in ei.value.message


def test_bad_options_and_refs() -> None:
    with pytest.raises(ValueError):
        EncodeOptions(max_parts=256)
    with pytest.raises(ValueError):
        EncodeOptions(gsm_data_coding=3)
    with pytest.raises(ValueError):
        encode_message("a" * 161, UDH8, ref=256)
    with pytest.raises(ValueError):
        encode_message("a" * 161, UDH16, ref=65536)
    assert EncodeOptions(split="sar").split is SplitMode.SAR  # type: ignore[arg-type]


# --- GSM-7 boundaries ---------------------------------------------------------------------------


def test_gsm_160_is_one_part_without_udh() -> None:
    msg = encode_message("a" * 160)
    assert msg.encoding is Encoding.GSM7
    assert msg.segments == 1
    (p,) = msg.parts
    assert p == Part(1, 1, b"a" * 160, 0, (), 160, 160)


def test_gsm_161_is_two_parts() -> None:
    msg = encode_message("a" * 161, ref=7)
    assert msg.segments == 2
    assert sizes(msg) == [153, 8]
    assert msg.parts[0].short_message == bytes.fromhex("050003070201") + b"a" * 153
    assert msg.parts[1].short_message == bytes.fromhex("050003070202") + b"a" * 8
    assert all(p.esm_class == 0x40 and p.tlvs == () for p in msg.parts)


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        (153, [153]),
        (154, [154]),  # the 153 per-part limit only applies once the text is split
        (306, [153, 153]),
        (307, [153, 153, 1]),
        (459, [153] * 3),
        (460, [153, 153, 153, 1]),
    ],
)
def test_gsm_udh8_boundaries(n: int, expected: list[int]) -> None:
    assert sizes(encode_message("x" * n)) == expected


def test_extension_char_at_position_153_moves_to_next_part() -> None:
    # "€" occupies septets 153 and 154 (1-based): the pair may not be split.
    msg = encode_message("a" * 152 + "€" + "b" * 20)
    assert sizes(msg) == [152, 22]
    assert chars(msg) == [152, 21]
    assert msg.parts[0].short_message[6:] == b"a" * 152
    assert msg.parts[1].short_message[6:] == b"\x1b\x65" + b"b" * 20


def test_extension_char_at_positions_152_153_stays() -> None:
    msg = encode_message("a" * 151 + "€" + "b" * 20)
    assert sizes(msg) == [153, 20]
    assert chars(msg) == [152, 20]


@pytest.mark.parametrize("ch", list(EXTENSION_TABLE))
def test_every_extension_char_at_the_boundary(ch: str) -> None:
    code = EXTENSION_TABLE[ch]
    single = encode_message("a" * 158 + ch)  # 160 septets: one part
    assert sizes(single) == [160]
    assert single.parts[0].short_message == b"a" * 158 + bytes([0x1B, code])
    msg = encode_message("a" * 152 + ch + "z" * 10)
    assert sizes(msg) == [152, 12]
    assert msg.parts[1].short_message[6:] == bytes([0x1B, code]) + b"z" * 10


def test_extension_char_pushes_single_part_over() -> None:
    msg = encode_message("a" * 159 + "€")  # 161 septets
    assert sizes(msg) == [153, 8]
    assert chars(msg) == [153, 7]


def test_udh16_boundaries_and_bytes() -> None:
    assert sizes(encode_message("a" * 160, UDH16)) == [160]
    msg = encode_message("a" * 161, UDH16, ref=0x1234)
    assert sizes(msg) == [152, 9]
    assert msg.parts[0].short_message == bytes.fromhex("06080412340201") + b"a" * 152
    assert msg.parts[1].short_message == bytes.fromhex("06080412340202") + b"a" * 9
    assert sizes(encode_message("a" * 305, UDH16)) == [152, 152, 1]


def test_sar_parts_and_tlvs() -> None:
    msg = encode_message("a" * 307, SAR, ref=0xABCD)
    assert sizes(msg) == [153, 153, 1]
    for seq, p in enumerate(msg.parts, 1):
        assert p.esm_class == 0
        assert p.tlvs == ((0x020C, b"\xab\xcd"), (0x020E, b"\x03"), (0x020F, bytes([seq])))
        assert p.seq == seq and p.total == 3
    assert msg.parts[2].short_message == b"a"
    assert [t for t, _ in msg.parts[0].tlvs] == [
        smpplib.command.get_optional_code(n)
        for n in ("sar_msg_ref_num", "sar_total_segments", "sar_segment_seqnum")
    ]


def test_single_part_never_carries_udh_or_sar() -> None:
    for opts in (UDH8, UDH16, SAR):
        (p,) = encode_message("hello", opts, ref=9).parts
        assert p.short_message == b"hello" and p.esm_class == 0 and p.tlvs == ()


def test_payload_mode() -> None:
    msg = encode_message("a" * 400, PAYLOAD)
    (p,) = msg.parts
    assert p.short_message == b""
    assert p.esm_class == 0
    assert p.tlvs == ((0x0424, b"a" * 400),)
    assert (p.chars, p.size) == (400, 400)
    assert msg.segments == 3  # what the SMSC will send on the air (153+153+94)
    assert encode_message("a" * 160, PAYLOAD).segments == 1
    assert encode_message("a" * 161, PAYLOAD).segments == 2
    ucs = encode_message("中" * 71, PAYLOAD)
    assert ucs.parts[0].tlvs == ((0x0424, ("中" * 71).encode("utf-16-be")),)
    assert ucs.segments == 2


def test_payload_limits() -> None:
    with pytest.raises(TextError) as ei:
        encode_message("中" * 40000, PAYLOAD)
    assert ei.value.code == "MESSAGE_TOO_LONG"
    with pytest.raises(TextError):
        encode_message("a" * (153 * 255 + 1), PAYLOAD)  # > 255 segments on the air
    assert encode_message("a" * (153 * 255), PAYLOAD).segments == 255


# --- UCS-2 boundaries ---------------------------------------------------------------------------


def test_ucs2_70_and_71() -> None:
    one = encode_message("中" * 70)
    assert one.encoding is Encoding.UCS2
    assert sizes(one) == [140] and chars(one) == [70]
    assert one.parts[0].short_message == ("中" * 70).encode("utf-16-be")
    two = encode_message("中" * 71, ref=1)
    assert sizes(two) == [134, 8] and chars(two) == [67, 4]
    assert two.parts[0].short_message[:6] == bytes.fromhex("050003010201")


@pytest.mark.parametrize(
    ("n", "expected"), [(134, [67, 67]), (135, [67, 67, 1]), (136, [67, 67, 2])]
)
def test_ucs2_134_135_136(n: int, expected: list[int]) -> None:
    assert chars(encode_message("中" * n)) == expected
    assert sizes(encode_message("中" * n)) == [2 * c for c in expected]


def test_ucs2_udh16_66() -> None:
    assert chars(encode_message("中" * 133, UDH16)) == [66, 66, 1]


def test_emoji_at_part_boundary_not_split() -> None:
    # the emoji's high surrogate would be unit 67: the pair moves to part 2
    msg = encode_message("中" * 66 + "😀" + "中" * 10)
    assert sizes(msg) == [132, 24]
    assert chars(msg) == [66, 11]
    assert msg.parts[1].short_message[6:10] == "😀".encode("utf-16-be")
    # emoji in units 66-67: stays
    msg = encode_message("中" * 65 + "😀" + "中" * 10)
    assert sizes(msg) == [134, 20]
    assert chars(msg) == [66, 10]


def test_emoji_single_part_limit() -> None:
    assert sizes(encode_message("中" * 68 + "😀")) == [140]
    assert chars(encode_message("中" * 68 + "😀")) == [69]
    assert chars(encode_message("中" * 69 + "😀")) == [67, 3]


def test_ucs2_chars_reported_in_order() -> None:
    msg = encode_message("Hello “world” 😀 “again”")
    assert msg.ucs2_chars == ("“", "”", "😀")
    assert encode_message("hello").ucs2_chars == ()
    assert encode_message("ã中ã", EncodeOptions(allow_latin1=True)).ucs2_chars == ("中",)
    assert encode_message("ã中ã").ucs2_chars == ("ã", "中")
    # neither alphabet covers the mix: report the non-GSM characters
    assert encode_message("€ã", EncodeOptions(allow_latin1=True)).ucs2_chars == ("ã",)


IA5 = EncodeOptions(gsm_data_coding=1)


def test_ucs2_chars_on_an_ia5_smsc_name_the_gsm_letters_outside_ascii() -> None:
    # data_coding 1 carries ASCII octets: é, £ and € are GSM but cannot go so, and they are what
    # forced UCS-2 (tested against the GSM table alone, nothing was named).
    msg = encode_message("Your café order: £5", IA5)
    assert (msg.encoding, msg.ucs2_chars) == (Encoding.UCS2, ("é", "£"))
    assert encode_message("Preis 5€ {ok}", IA5).ucs2_chars == ("€",)
    assert encode_message("Preis 5€ {ok}").encoding is Encoding.GSM7
    assert encode_message("Preis 5€ {ok} 中", IA5).ucs2_chars == ("€", "中")
    assert encode_message("`", IA5).ucs2_chars == ("`",)  # ASCII, not GSM: IA5 is no help
    # Several parts, or one PDU the SMSC splits: the same characters.
    assert encode_message("é" * 100, IA5).ucs2_chars == ("é",)
    assert encode_message("é" * 100, replace(IA5, split=SplitMode.PAYLOAD)).ucs2_chars == ("é",)
    # With Latin-1 allowed, only what Latin-1 cannot carry forced UCS-2.
    ia5_latin1 = replace(IA5, allow_latin1=True)
    assert encode_message("café £5", ia5_latin1).encoding is Encoding.LATIN1
    assert encode_message("café £5 €", ia5_latin1).ucs2_chars == ("€",)
    assert encode_message("café £5 中", ia5_latin1).ucs2_chars == ("中",)


# --- Latin-1 ------------------------------------------------------------------------------------


def test_latin1_option() -> None:
    opts = EncodeOptions(allow_latin1=True)
    msg = encode_message("Ação", opts)
    assert msg.encoding is Encoding.LATIN1
    assert msg.parts[0].short_message == "Ação".encode("latin-1")
    assert sizes(encode_message("ã" * 140, opts)) == [140]
    assert sizes(encode_message("ã" * 141, opts)) == [134, 7]
    udh16 = EncodeOptions(allow_latin1=True, split=SplitMode.UDH16)
    assert sizes(encode_message("ã" * 141, udh16)) == [133, 8]
    assert encode_message("Ação").encoding is Encoding.UCS2
    assert encode_message("é", opts).encoding is Encoding.GSM7  # GSM still preferred


# --- part-count limits --------------------------------------------------------------------------


def test_255_parts_ok_256_refused() -> None:
    assert encode_message("a" * (153 * 255)).segments == 255
    with pytest.raises(TextError) as ei:
        encode_message("a" * (153 * 255 + 1))
    assert ei.value.code == "MESSAGE_TOO_LONG"
    assert "39016 septets" in ei.value.message
    assert "255 parts" in ei.value.message


def test_256_parts_because_of_escape_pairs() -> None:
    # 76 "€" (152 septets) fit a part; 19380 fill 255 parts, one more needs part 256 even though
    # the septet total is below 255 * 153.
    assert encode_message("€" * 19380).segments == 255
    with pytest.raises(TextError) as ei:
        encode_message("€" * 19381)
    assert ei.value.code == "MESSAGE_TOO_LONG"
    assert "38762 septets" in ei.value.message and "256 parts" in ei.value.message


def test_ucs2_255_and_256_parts() -> None:
    assert encode_message("中" * (67 * 255)).segments == 255
    with pytest.raises(TextError) as ei:
        encode_message("中" * (67 * 255 + 1))
    assert "17086 UTF-16 units" in ei.value.message


def test_max_parts_option() -> None:
    opts = EncodeOptions(max_parts=3)
    assert encode_message("a" * 459, opts).segments == 3
    with pytest.raises(TextError):
        encode_message("a" * 460, opts)


# --- packed GSM ---------------------------------------------------------------------------------


def test_packed_single_part_vector() -> None:
    msg = encode_message("hellohello", EncodeOptions(packed_gsm=True))
    assert msg.parts[0].short_message.hex() == "e8329bfd4697d9ec37"
    assert msg.parts[0].size == 10


def test_packed_udh8_fill_bit() -> None:
    msg = encode_message("a" * 161, EncodeOptions(packed_gsm=True), ref=5)
    p1, p2 = msg.parts
    assert p1.short_message == bytes.fromhex("050003050201") + pack_septets(b"a" * 153, 1)
    assert len(p1.short_message) == 140
    # 1 fill bit + 8 septets = 57 bits: 7 spare bits in the 8th octet, padded with CR
    assert p2.short_message[6:] == pack_septets(b"a" * 8 + b"\r", 1)
    assert len(p2.short_message[6:]) == len(pack_septets(b"a" * 8, 1)) == 8


def test_packed_udh16_no_fill() -> None:
    msg = encode_message("a" * 161, EncodeOptions(packed_gsm=True, split=SplitMode.UDH16))
    assert msg.parts[0].short_message[7:] == pack_septets(b"a" * 152)
    assert len(msg.parts[0].short_message) == 7 + 133


def test_packed_pads_seven_spare_bits_with_cr() -> None:
    # 7 septets = 49 bits -> 7 octets with 7 spare bits; an SMSC would read 8 septets: the 8th
    # must be CR, not "@".
    sm = encode_message("abcdefg", EncodeOptions(packed_gsm=True)).parts[0].short_message
    assert len(sm) == 7
    assert unpack_septets(sm, 8) == b"abcdefg\r"
    sm8 = encode_message("abcdefgh", EncodeOptions(packed_gsm=True)).parts[0].short_message
    assert sm8 == pack_septets(b"abcdefgh")


def test_packed_ignored_for_ucs2() -> None:
    msg = encode_message("中", EncodeOptions(packed_gsm=True))
    assert msg.parts[0].short_message == "中".encode("utf-16-be")


# --- smart mapping in encode_message ------------------------------------------------------------


def test_smart_keeps_message_gsm() -> None:
    text = "It’s “fine” — really…"
    assert encode_message(text).encoding is Encoding.UCS2
    msg = encode_message(text, EncodeOptions(smart=True))
    assert msg.encoding is Encoding.GSM7
    assert msg.text == 'It\'s "fine" - really...'


def test_smart_leaves_text_alone_when_it_does_not_help() -> None:
    text = "中文“引号”"
    msg = encode_message(text, EncodeOptions(smart=True))
    assert msg.encoding is Encoding.UCS2
    assert msg.text == text


def test_smart_to_latin1() -> None:
    opts = EncodeOptions(smart=True, allow_latin1=True)
    msg = encode_message("Ação “x”", opts)
    assert msg.encoding is Encoding.LATIN1
    assert msg.text == 'Ação "x"'
    # already Latin-1: not rewritten; rewriting to GSM-7 is still preferred
    assert encode_message("«ã»", opts).text == "«ã»"
    assert encode_message("« a »", opts).text == '" a "'


# --- references ---------------------------------------------------------------------------------


class Draws:
    """A reference source that records its calls."""

    def __init__(self, ref: int = 7) -> None:
        self.ref = ref
        self.calls = 0

    def __call__(self) -> int:
        self.calls += 1
        return self.ref


@pytest.mark.parametrize(
    ("text", "opts"),
    [
        ("a" * 160, UDH8),  # 71 to 160 GSM characters: one part, no reference
        ("a" * 71, UDH16),
        ("中" * 70, SAR),
        ("😀" * 35, UDH8),  # 70 UTF-16 units
        ("a" * 1000, PAYLOAD),  # the SMSC splits it and numbers the parts
        ("…" * 70, EncodeOptions(smart=True)),  # "..." x 70 would be two: kept as given
    ],
)
def test_a_single_part_message_draws_no_reference(text: str, opts: EncodeOptions) -> None:
    draw = Draws()
    assert len(encode_message(text, opts, draw).parts) == 1
    assert draw.calls == 0


def test_a_message_of_several_parts_draws_its_reference_once() -> None:
    for text, opts in [
        ("中" * 69 + "😀", UDH8),  # 70 code points, 71 UTF-16 units: two parts
        ("a" * 161, UDH16),
        ("a" * 200 + "…", EncodeOptions(smart=True)),  # mapped and plain both encoded
        ("a" * 300 + "…", EncodeOptions(smart=True)),  # the mapped one kept
    ]:
        draw = Draws(ref=201)
        msg = encode_message(text, opts, draw)
        assert len(msg.parts) > 1 and draw.calls == 1, text[:5]
        assert msg == encode_message(text, opts, 201)
    sar = encode_message("a" * 161, SAR, Draws(ref=40_000))
    assert all(p.tlvs[0] == (0x020C, (40_000).to_bytes(2, "big")) for p in sar.parts)


def test_a_refused_text_draws_no_reference() -> None:
    draw = Draws()
    with pytest.raises(TextError) as exc:
        encode_message("中" * 20_000, UDH8, draw)
    assert exc.value.code == "MESSAGE_TOO_LONG" and draw.calls == 0


def test_ref_counter_per_destination_wraps() -> None:
    rc = RefCounter(start=lambda: 0)
    assert [rc.next("A", 8) for _ in range(3)] == [0, 1, 2]
    assert rc.next("B", 8) == 0
    for _ in range(253):
        rc.next("A", 8)
    assert rc.next("A", 8) == 0  # 257th reference wraps to 0
    rc16 = RefCounter(start=lambda: 0)
    vals = [rc16.next("A", 16) for _ in range(65537)]
    assert vals[255] == 255 and vals[256] == 256 and vals[65535] == 65535 and vals[65536] == 0


def test_ref_counter_starts_at_random_per_destination() -> None:
    # Two counters (two worker processes, or before and after a restart) rarely agree.
    a, b = RefCounter(), RefCounter()
    firsts = [(a.next(f"+86{i}", 16), b.next(f"+86{i}", 16)) for i in range(50)]
    assert sum(x == y for x, y in firsts) < 3
    seq = [a.next("+8613800000000", 8) for _ in range(3)]
    assert seq[1] == (seq[0] + 1) % 256 and seq[2] == (seq[1] + 1) % 256


@settings(max_examples=200, deadline=None)
@given(
    lanes=st.integers(2, 64),
    bits=st.sampled_from([8, 16]),
    starts=st.lists(st.integers(0, 0xFFFF), min_size=64, max_size=64),
    draws=st.integers(1, 300),
)
def test_ref_counter_lanes_never_share_a_reference(
    lanes: int, bits: int, starts: list[int], draws: int
) -> None:
    """Acceptor workers (one lane each) never hand the same reference out, whatever their random
    starts; each lane walks all of its own references before it repeats one."""
    seen: dict[int, int] = {}
    for lane in range(lanes):
        rc = RefCounter(start=lambda lane=lane: starts[lane], lane=lane, lanes=lanes)
        refs = [rc.next("+8613800138000", bits) for _ in range(draws)]
        assert all(0 <= r < (1 << bits) and r % lanes == lane for r in refs)
        slots = len(range(lane, 1 << bits, lanes))
        assert len(set(refs[:slots])) == min(draws, slots)
        for r in set(refs):
            assert seen.setdefault(r, lane) == lane


def test_ref_counter_lane_must_fit() -> None:
    for lane, lanes in ((2, 2), (-1, 2), (0, 0), (0, 257)):
        with pytest.raises(ValueError):
            RefCounter(lane=lane, lanes=lanes)


def test_ref_counter_bounded_lru() -> None:
    rc = RefCounter(max_destinations=2, start=lambda: 0)
    rc.next("A", 8)
    rc.next("A", 8)
    rc.next("B", 8)
    rc.next("A", 8)  # A is now most recent
    rc.next("C", 8)  # evicts B
    assert len(rc) == 2
    assert rc.next("A", 8) == 3
    assert rc.next("B", 8) == 0
    with pytest.raises(ValueError):
        rc.next("A", 12)


# --- smpplib cross-check (single part, where smpplib is right) -----------------------------------

SMPPLIB_GSM = "".join(c for c in BASE_TABLE if c not in "\x1b§") + "^{}\\[~]|€"
SMPPLIB_DC = {
    Encoding.GSM7: smpplib.consts.SMPP_ENCODING_DEFAULT,
    Encoding.UCS2: smpplib.consts.SMPP_ENCODING_ISO10646,
    Encoding.LATIN1: smpplib.consts.SMPP_ENCODING_ISO88591,
}


@PROPS
@given(st.text(alphabet=st.sampled_from(SMPPLIB_GSM + "中文ãç😀“"), min_size=1, max_size=160))
def test_single_part_agrees_with_smpplib(text: str) -> None:
    msg = encode_message(text)
    if msg.segments != 1:
        return
    parts, encoding, esm_class = smpplib.gsm.make_parts(text)
    assert parts == [msg.parts[0].short_message]
    assert encoding == SMPPLIB_DC[msg.encoding] == msg.data_coding
    assert esm_class == msg.parts[0].esm_class


@PROPS
@given(st.text(alphabet=st.sampled_from("ãçÀ ÿab"), min_size=1, max_size=140))
def test_latin1_single_part_agrees_with_smpplib(text: str) -> None:
    msg = encode_message(text, EncodeOptions(allow_latin1=True))
    parts, encoding, _ = smpplib.gsm.make_parts(text, smpplib.consts.SMPP_ENCODING_ISO88591)
    if msg.encoding is Encoding.LATIN1:
        assert parts == [msg.parts[0].short_message]
        assert encoding == msg.data_coding == 3


@PROPS
@given(st.text(alphabet=st.sampled_from("abc 12@£Δ中"), min_size=161, max_size=700))
def test_multipart_without_pairs_agrees_with_smpplib_except_ref(text: str) -> None:
    # smpplib splits escape/surrogate pairs and draws a random ref; with neither, only ref differs.
    msg = encode_message(text, ref=0)
    parts, _, esm_class = smpplib.gsm.make_parts(text)
    if msg.segments == 1:
        return
    assert esm_class == 0x40
    assert [p[:3] + b"\x00" + p[4:] for p in parts] == [p.short_message for p in msg.parts]


# --- properties ---------------------------------------------------------------------------------

POOL = (
    "".join(c for c in BASE_TABLE if c != "\x1b")
    + "".join(EXTENSION_TABLE) * 3
    + "ãçÿ«"  # Latin-1, not GSM
    + "中文字【】"
    + "😀🎉𝄞"
)
gsm_pool = "".join(c for c in BASE_TABLE if c != "\x1b") + "".join(EXTENSION_TABLE) * 4


def text_of(alphabet: str, max_len: int) -> st.SearchStrategy[str]:
    """Lengths drawn uniformly first: plain st.text favours short strings, i.e. single parts."""
    return st.integers(1, max_len).flatmap(
        lambda n: st.text(alphabet=st.sampled_from(alphabet), min_size=n, max_size=n)
    )


texts = st.one_of(
    text_of(gsm_pool, 1300),
    text_of(POOL, 600),
    text_of("ãçÿ«abé", 600),  # Latin-1 when allowed
    text_of("ãçab€", 400),  # neither Latin-1 nor GSM
    text_of("中😀a", 600),
    st.text(alphabet=st.sampled_from(POOL), min_size=1, max_size=200),
)
options = st.builds(
    EncodeOptions,
    split=st.sampled_from(list(SplitMode)),
    allow_latin1=st.booleans(),
    packed_gsm=st.booleans(),
)

SINGLE = {Encoding.GSM7: 160, Encoding.LATIN1: 140, Encoding.UCS2: 140}
PER = {
    (Encoding.GSM7, 8): 153,
    (Encoding.GSM7, 16): 152,
    (Encoding.LATIN1, 8): 134,
    (Encoding.LATIN1, 16): 133,
    (Encoding.UCS2, 8): 134,
    (Encoding.UCS2, 16): 132,
}


def fill_bits(udh_len: int) -> int:
    return (7 - (udh_len * 8) % 7) % 7


def part_payload(p: Part, msg: EncodedMessage, opts: EncodeOptions) -> bytes:
    """The encoded text carried by a part (UDH stripped, septets unpacked)."""
    if opts.split is SplitMode.PAYLOAD:
        ((tag, raw),) = p.tlvs
        assert tag == 0x0424
        udh = 0
    else:
        raw = p.short_message
        udh = raw[0] + 1 if p.esm_class & 0x40 else 0
        raw = raw[udh:]
    if msg.encoding is Encoding.GSM7 and opts.packed_gsm:
        return unpack_septets(raw, p.size, fill_bits(udh))
    return raw


def decode(data: bytes, encoding: Encoding) -> str:
    if encoding is Encoding.GSM7:
        return gsm_decode(data)
    if encoding is Encoding.UCS2:
        return data.decode("utf-16-be")  # strict: fails on a split surrogate pair
    return data.decode("latin-1")


def unit_costs(text: str, encoding: Encoding) -> list[int]:
    """Independent per-character cost in septets/octets."""
    if encoding is Encoding.GSM7:
        return [2 if c in EXTENSION_TABLE else 1 for c in text]
    if encoding is Encoding.UCS2:
        return [4 if ord(c) > 0xFFFF else 2 for c in text]
    return [1] * len(text)


def greedy_count(costs: list[int], limit: int) -> int:
    count, used = 1, 0
    for c in costs:
        if used + c > limit:
            count, used = count + 1, 0
        used += c
    return count


def greedy_parts(text: str, costs: list[int], limit: int, full_cr: bool) -> list[int]:
    """Characters per part, each as full as it can be. With `full_cr` (packed GSM with a UDH): a
    part that would end full on a CR ends before it, and the CR opens the next part (a CR
    ending on an octet boundary is doubled, an octet such a part has no room for)."""
    parts, start, used, i = [], 0, 0, 0
    while i < len(costs):
        if used + costs[i] > limit:
            parts.append(i - start)
            start, used = i, 0
            continue
        used += costs[i]
        i += 1
        if full_cr and used == limit and text[i - 1] == "\r":
            parts.append(i - 1 - start)
            start, used = i - 1, costs[i - 1]
    parts.append(len(costs) - start)
    return parts


# Found by hypothesis in CI: a full packed UDH8 part that would end on a CR ends before it.
_FULL_CR_TAIL = "\x0c" * 19 + "{" * 15 + "€" * 4 + "\r"
_PACKED_UDH8 = EncodeOptions(split=SplitMode.UDH8, packed_gsm=True)


@settings(max_examples=400, deadline=None)
@given(texts, options, st.integers(0, 255))
@example("0" * 382 + _FULL_CR_TAIL + "0", _PACKED_UDH8, 0)
@example("0" * 382 + _FULL_CR_TAIL, _PACKED_UDH8, 0)
def test_parts_reassemble_within_limits_minimal(text: str, opts: EncodeOptions, ref: int) -> None:
    check_message(text, opts, ref)


@PROPS
@given(
    text_of("ãçÿ«abé ", 700).map(lambda t: t + "ã"),
    st.sampled_from(list(SplitMode)),
    st.booleans(),
    st.integers(0, 255),
)
def test_latin1_parts_reassemble(text: str, split: SplitMode, smart: bool, ref: int) -> None:
    opts = EncodeOptions(split=split, allow_latin1=True, smart=smart)
    assert encode_message(text, opts).encoding is Encoding.LATIN1
    check_message(text, opts, ref)


def check_message(text: str, opts: EncodeOptions, ref: int) -> None:
    """Reassembly, per-part limits, greedy-minimal count, no split pairs, headers/TLVs."""
    try:
        msg = encode_message(text, opts, ref)
    except TextError as e:  # only legitimately too long
        assert e.code == "MESSAGE_TOO_LONG"
        return
    enc = msg.encoding
    event(f"{enc.value} {opts.split.value} {'multi' if msg.segments > 1 else 'single'}")
    assert msg.text == text
    assert enc is choose_encoding(text, opts.allow_latin1)
    payloads = [part_payload(p, msg, opts) for p in msg.parts]
    # reassembly, per part (so a split pair would fail to decode or not round-trip)
    pieces = [decode(b, enc) for b in payloads]
    assert "".join(pieces) == text
    assert [len(s) for s in pieces] == [p.chars for p in msg.parts]
    assert sum(p.chars for p in msg.parts) == len(text)
    costs = unit_costs(text, enc)
    total_cost = sum(costs)
    assert [len(b) for b in payloads] == [p.size for p in msg.parts]
    n = len(msg.parts)
    for seq, (p, raw) in enumerate(zip(msg.parts, payloads, strict=True), 1):
        assert (p.seq, p.total) == (seq, n)
        if enc is Encoding.GSM7:
            assert not raw.endswith(b"\x1b")  # no escape split
        if enc is Encoding.UCS2:
            assert not 0xD8 <= raw[-2] <= 0xDB and not 0xDC <= raw[0] <= 0xDF
        # byte limits of short_message
        sm = len(p.short_message)
        if opts.packed_gsm or enc is not Encoding.GSM7:
            assert sm <= 140
        else:  # unpacked septets: 160, or UDH + 153/152 = 159
            assert sm <= 160
    if opts.split is SplitMode.PAYLOAD:
        assert n == 1 and msg.parts[0].short_message == b""
        expected = 1 if total_cost <= SINGLE[enc] else greedy_count(costs, PER[(enc, 8)])
        assert msg.segments == expected
        return
    assert msg.segments == n
    if total_cost <= SINGLE[enc]:
        assert n == 1
        (p,) = msg.parts
        assert p.esm_class == 0 and p.tlvs == ()
        return
    limit = PER[(enc, 16 if opts.split is SplitMode.UDH16 else 8)]
    full_cr = enc is Encoding.GSM7 and opts.packed_gsm and opts.split is not SplitMode.SAR
    # greedy maximality: each part holds what fits (a full part's final CR excepted, see above)
    assert [p.chars for p in msg.parts] == greedy_parts(text, costs, limit, full_cr)
    if not full_cr or "\r" not in text:
        assert n == greedy_count(costs, limit)
        offset = 0
        for p in msg.parts[:-1]:
            offset += p.chars
            assert p.size + costs[offset] > limit
    for p in msg.parts:
        assert p.size <= limit
        if opts.split is SplitMode.SAR:
            assert p.esm_class == 0
            assert p.tlvs == (
                (0x020C, ref.to_bytes(2, "big")),
                (0x020E, bytes([n])),
                (0x020F, bytes([p.seq])),
            )
        else:
            assert p.esm_class == 0x40 and p.tlvs == ()
            head = p.short_message[: p.short_message[0] + 1]
            if opts.split is SplitMode.UDH8:
                assert head == bytes([5, 0, 3, ref, n, p.seq])
            else:
                assert head == bytes([6, 8, 4, 0, ref, n, p.seq])


@PROPS
@given(st.text(alphabet=st.sampled_from(POOL + "‘’“”–—…\u00a0"), min_size=1, max_size=300))
def test_smart_only_applied_when_it_avoids_ucs2(text: str) -> None:
    msg = encode_message(text, EncodeOptions(smart=True))
    plain = encode_message(text)
    if plain.encoding is Encoding.GSM7:
        assert msg == plain
    elif msg.text != text:
        assert msg.text == smart_map(text)
        assert msg.encoding is Encoding.GSM7
    else:
        assert msg == plain


forcing_options = st.builds(
    EncodeOptions,
    split=st.sampled_from(list(SplitMode)),
    gsm_data_coding=st.sampled_from([0, 1]),
    allow_latin1=st.booleans(),
    smart=st.booleans(),
)
FORCING_POOL = "".join(c for c in BASE_TABLE if c != "\x1b") + "{}€^`ãçÿ«中【😀‘’“”…"


@PROPS
@given(
    st.one_of(
        text_of(FORCING_POOL, 300),
        text_of("abc 1$@_", 200),  # ASCII that IA5 carries
        text_of("ab éà£Ä€", 200),  # GSM, but not all ASCII: IA5 cannot carry it
        text_of("ab é£ãçÿ«", 200),  # Latin-1, where it is allowed
    ),
    forcing_options,
)
@example("Your café order: £5", IA5)
@example("€ã", EncodeOptions(allow_latin1=True))
def test_forcing_chars_are_named_exactly_when_ucs2_and_are_its_cause(
    text: str, opts: EncodeOptions
) -> None:
    """For any text and SMSC options: characters are named iff the encoding is UCS-2, each
    once, each in the text, and they are the cause as `_encode` judges it (IA5 and Latin-1
    included): every character left would go without UCS-2 on its own, and the rest as a whole
    does but where Latin-1 is allowed without IA5 (GSM Γ beside Latin-1 ÿ is neither)."""
    msg = encode_message(text, opts)
    forcing = msg.ucs2_chars
    assert bool(forcing) == (msg.encoding is Encoding.UCS2), (msg.encoding, forcing)
    event(f"{msg.encoding.value} ia5={opts.gsm_data_coding == 1} latin1={opts.allow_latin1}")
    assert len(set(forcing)) == len(forcing)
    assert all(c in msg.text for c in forcing)
    plain = replace(opts, smart=False)
    rest = "".join(c for c in msg.text if c not in forcing)
    if forcing and rest:
        assert all(encode_message(c, plain).encoding is not Encoding.UCS2 for c in set(rest))
        if not opts.allow_latin1 or opts.gsm_data_coding == 1:
            assert encode_message(rest, plain).encoding is not Encoding.UCS2


@PROPS
@given(texts, options, st.booleans(), st.integers(0, 255))
def test_a_drawn_reference_is_as_a_given_one_and_only_for_several_parts(
    text: str, opts: EncodeOptions, smart: bool, ref: int
) -> None:
    opts = replace(opts, smart=smart)
    draw = Draws(ref)
    try:
        msg = encode_message(text, opts, draw)
    except TextError:
        assert draw.calls == 0
        return
    assert draw.calls == (len(msg.parts) > 1)
    assert msg == encode_message(text, opts, ref)
