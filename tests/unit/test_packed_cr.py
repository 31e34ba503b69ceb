"""Packed GSM and CR (TS 23.038 6.1.2.3.1): the padding CR, and a wanted final CR kept.

A receiver drops a final CR whose septets fill the last octet exactly (it is the padding for 7
spare bits). A CR the text wants there is therefore doubled, which costs an octet: a full part
ending in CR is cut one septet earlier, and 160 septets ending in CR are two parts.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.smpp.codec import ShortMessage
from bridge.smpp.reassembly import decode_payload, parse_segment
from bridge.text.gsm import EXTENSION_TABLE
from bridge.text.split import EncodedMessage, EncodeOptions, SplitMode, encode_message


def _received(msg: EncodedMessage) -> str:
    """The text a receiver reading packed GSM puts together from the parts."""
    out = []
    for p in msg.parts:
        sm = ShortMessage(
            data_coding=0, esm_class=p.esm_class, short_message=p.short_message, tlvs=p.tlvs
        )
        out.append(decode_payload(0, parse_segment(sm, True).payload))
    return "".join(out)


def test_160_septets_ending_in_cr_are_two_packed_parts_and_one_unpacked() -> None:
    text = "a" * 159 + "\r"
    packed = encode_message(text, EncodeOptions(packed_gsm=True), ref=3)
    # 153 septets in 134 octets, then 7 (1 fill bit + 49 bits)
    assert [len(p.short_message) for p in packed.parts] == [6 + 134, 6 + 7]
    assert packed.segments == 2
    assert _received(packed) == text
    assert encode_message(text, EncodeOptions(), ref=3).segments == 1  # 160 octets, no padding


def test_159_septets_ending_in_cr_stay_one_part_with_the_padding_cr() -> None:
    text = "a" * 158 + "\r"  # 159 x 7 = 1113 bits: 7 spare bits, padded with a CR
    (part,) = encode_message(text, EncodeOptions(packed_gsm=True)).parts
    assert len(part.short_message) == 140
    assert _received(encode_message(text, EncodeOptions(packed_gsm=True))) == text


def test_a_full_udh_part_ending_in_cr_is_cut_one_earlier() -> None:
    for split, per in ((SplitMode.UDH8, 153), (SplitMode.UDH16, 152)):
        text = "b" * (per - 1) + "\r" + "c" * 10
        msg = encode_message(text, EncodeOptions(packed_gsm=True, split=split), ref=5)
        assert [p.chars for p in msg.parts] == [per - 1, 11], split
        assert all(len(p.short_message) <= 140 for p in msg.parts)
        assert _received(msg) == text


def test_sar_parts_do_not_end_on_an_octet_boundary_and_are_not_cut_earlier() -> None:
    text = "d" * 152 + "\r" + "e" * 10  # 153 x 7 = 1071 bits: one spare bit, no doubling
    msg = encode_message(text, EncodeOptions(packed_gsm=True, split=SplitMode.SAR), ref=5)
    assert [p.chars for p in msg.parts] == [153, 10]
    assert _received(msg) == text


def test_an_escape_pair_ending_a_full_part_is_not_taken_for_a_cr() -> None:
    text = "f" * 158 + "€"  # ESC 0x65: 160 septets, no CR
    assert encode_message(text, EncodeOptions(packed_gsm=True)).segments == 1


_ALPHABET = "aZ0 @\r\n" + "".join(EXTENSION_TABLE)


@settings(max_examples=400, deadline=None)
@given(
    text=st.text(alphabet=_ALPHABET, min_size=1, max_size=480).filter(lambda t: "\r\r" not in t),
    split=st.sampled_from([SplitMode.UDH8, SplitMode.UDH16, SplitMode.SAR]),
)
def test_packed_text_with_crs_survives_every_split(text: str, split: SplitMode) -> None:
    """Any GSM text (without a CR pair: CR CR is defined to display as one CR, so a receiver
    cannot tell a wanted pair from a doubled one) comes back as sent, every part within 140."""
    msg = encode_message(text, EncodeOptions(packed_gsm=True, split=split, max_parts=10), ref=7)
    assert all(len(p.short_message) <= 140 for p in msg.parts)
    assert _received(msg) == text
