"""Encoding a waiting message again after a reload (bridge/pipeline/reencode.py): the pure part.

The references a message's stored parts carry are read back from every concatenation scheme we
write, a message already encoded as its SMSC now reads is left alone (so an instance reading
another's new parts changes nothing), and one that was a single part draws a reference only
when it needs several now.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.pipeline.reencode import reencoded, stored_reference
from bridge.smpp.tlvpack import pack_tlvs
from bridge.store.models import NewSegment, WaitingText
from bridge.text.split import EncodeOptions, SplitMode, encode_message


def stored(text: str, opts: EncodeOptions, ref: int = 0) -> WaitingText:
    enc = encode_message(text, opts, ref)
    parts = tuple(
        NewSegment(p.seq, p.total, p.esm_class, p.short_message, pack_tlvs(p.tlvs))
        for p in enc.parts
    )
    return WaitingText("msg_1", "+8613800138000", enc.text, enc.data_coding, parts)


def no_draw() -> int:
    raise AssertionError("a reference was drawn for a message that had one")


LONG = "Your parcel is waiting at the depot; collect it with code 4411 before Friday. " * 3


@pytest.mark.parametrize(
    ("split", "ref"), [("udh8", 0xA7), ("udh16", 0xBEEF), ("sar", 0x1234), ("udh8", 0)]
)
def test_the_stored_reference_is_read_back_from_each_scheme(split: str, ref: int) -> None:
    msg = stored(LONG, EncodeOptions(split=SplitMode(split)), ref)
    assert len(msg.parts) > 1
    assert stored_reference(msg.parts) == ref


def test_a_single_part_or_a_payload_has_no_reference() -> None:
    assert stored_reference(stored("short", EncodeOptions()).parts) is None
    assert stored_reference(stored(LONG, EncodeOptions(split=SplitMode.PAYLOAD)).parts) is None


def test_latin1_to_an_smsc_without_it_becomes_gsm_or_ucs2() -> None:
    text = "Garçon, ça coûte 5 francs: réponds vite!"
    was = stored(text, EncodeOptions(allow_latin1=True))
    assert was.data_coding == 3
    change = reencoded(was, EncodeOptions(), no_draw)
    assert change is not None and change.data_coding in (0, 8)
    assert (change.was_data_coding, change.was_first) == (3, was.parts[0].short_message)
    assert change.segments == len(change.parts)


def test_packed_gsm_set_packs_the_waiting_text() -> None:
    was = stored("Hello world", EncodeOptions())
    change = reencoded(was, EncodeOptions(packed_gsm=True), no_draw)
    assert change is not None
    assert change.parts == stored("Hello world", EncodeOptions(packed_gsm=True)).parts
    assert len(change.parts[0].short_message) == 10  # 11 septets packed


def test_one_part_that_needs_several_now_draws_a_reference() -> None:
    """One `payload` PDU each; under UDH8 now 153 characters still fit one part (no reference
    drawn), 200 take two (one drawn)."""
    was = stored("x" * 153, EncodeOptions(split=SplitMode.PAYLOAD))
    drawn: list[int] = []
    change = reencoded(was, EncodeOptions(), lambda: drawn.append(77) or 77)
    assert drawn == [] and change is not None
    assert len(change.parts) == 1
    was = stored("x" * 200, EncodeOptions(split=SplitMode.PAYLOAD))
    change = reencoded(was, EncodeOptions(), lambda: drawn.append(78) or 78)
    assert change is not None and len(change.parts) == 2
    assert stored_reference(change.parts) == 78


def test_a_16_bit_reference_going_udh8_draws_an_8_bit_one() -> None:
    was = stored(LONG, EncodeOptions(split=SplitMode.UDH16), 0x1234)
    change = reencoded(was, EncodeOptions(split=SplitMode.UDH8), lambda: 0x42)
    assert change is not None and stored_reference(change.parts) == 0x42


options = st.builds(
    EncodeOptions,
    split=st.sampled_from(list(SplitMode)),
    gsm_data_coding=st.sampled_from([0, 1]),
    allow_latin1=st.booleans(),
    packed_gsm=st.booleans(),
)
texts = st.text(
    st.sampled_from("abcXYZ 019.,€[]^{}|~\\éçüñ£¥§中文短信😀\n"), min_size=1, max_size=400
)


@settings(max_examples=300, deadline=None)
@given(text=texts, was=options, now=options, ref=st.integers(0, 0xFF))
def test_encoding_again_is_idempotent_and_matches_a_fresh_send(
    text: str, was: EncodeOptions, now: EncodeOptions, ref: int
) -> None:
    """Whatever the options before and after: the new parts are what a send accepted under the
    new options would store (the reference aside), and encoding them again changes nothing."""
    msg = stored(text, was, ref)
    change = reencoded(msg, now, lambda: ref)
    fresh = stored(msg.text, now, ref)
    if change is None:
        assert (msg.parts, msg.data_coding) == (fresh.parts, fresh.data_coding)
        return
    assert (change.parts, change.data_coding) == (fresh.parts, fresh.data_coding)
    again = WaitingText(msg.id, msg.recipient, msg.text, change.data_coding, change.parts)
    assert reencoded(again, now, no_draw) is None
