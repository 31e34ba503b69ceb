"""Framer: PDUs split across reads, many per read, bad lengths, and linear cost."""

from __future__ import annotations

import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.smpp import constants as C
from bridge.smpp.codec import MessageIdResp, Pdu, ShortMessage, decode, encode
from bridge.smpp.framing import MAX_PDU, FrameError, Framer


def pdu(length: int, cid: int = C.SUBMIT_SM, seq: int = 1) -> bytes:
    """A frame of exactly ``length`` octets (the body is filler; framing does not parse it)."""
    filler = bytes((seq + i) & 0xFF for i in range(length - 16))
    return struct.pack(">IIII", length, cid, 0, seq) + filler


STREAM = [
    encode(Pdu(C.ENQUIRE_LINK, 0, 1)),
    encode(Pdu(C.SUBMIT_SM, 0, 2, ShortMessage(destination_addr="86138", short_message=b"hi"))),
    encode(Pdu(C.SUBMIT_SM_RESP, 0, 3, MessageIdResp("0A1B2C"))),
]


def feed_all(framer: Framer, chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return out


def test_whole_frames_in_one_read() -> None:
    framer = Framer()
    frames = framer.feed(b"".join(STREAM))
    assert frames == STREAM
    assert all(type(f) is bytes for f in frames)
    assert [decode(f).seq for f in frames] == [1, 2, 3]
    assert framer.buffered == 0


def test_split_at_every_byte_position() -> None:
    data = b"".join(STREAM)
    for cut in range(len(data) + 1):
        framer = Framer()
        first = framer.feed(data[:cut])
        second = framer.feed(data[cut:])
        assert first + second == STREAM, cut
        complete = sum(1 for i in range(len(STREAM)) if len(b"".join(STREAM[: i + 1])) <= cut)
        assert len(first) == complete, cut
        assert framer.buffered == 0


def test_split_twice_at_every_pair_of_positions_in_one_pdu() -> None:
    one = STREAM[1]
    for i in range(len(one) + 1):
        for j in range(i, len(one) + 1):
            framer = Framer()
            assert feed_all(framer, [one[:i], one[i:j], one[j:]]) == [one], (i, j)


def test_one_octet_at_a_time() -> None:
    data = b"".join(STREAM) * 3
    framer = Framer()
    assert feed_all(framer, [data[i : i + 1] for i in range(len(data))]) == STREAM * 3


@settings(max_examples=200, deadline=None)
@given(
    lengths=st.lists(st.integers(16, 400), min_size=1, max_size=30),
    cuts=st.lists(st.integers(0, 20_000), max_size=40),
)
def test_random_chunking_preserves_frames_and_order(lengths: list[int], cuts: list[int]) -> None:
    frames = [pdu(n, seq=i) for i, n in enumerate(lengths)]
    data = b"".join(frames)
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    framer = Framer()
    assert feed_all(framer, chunks) == frames
    assert framer.buffered == 0


def test_many_pdus_per_read_with_a_partial_tail() -> None:
    link = encode(Pdu(C.ENQUIRE_LINK_RESP, 0, 9))
    framer = Framer()
    frames = framer.feed(link * 5000 + link[:7])
    assert len(frames) == 5000
    assert framer.buffered == 7
    assert framer.feed(link[7:]) == [link]


def test_partial_then_many() -> None:
    big = pdu(1000, seq=5)
    framer = Framer()
    assert framer.feed(big[:10]) == []
    assert framer.feed(big[10:] + big * 3 + big[:999]) == [big] * 4
    assert framer.buffered == 999
    assert framer.feed(big[999:]) == [big]


def test_bytearray_and_memoryview_input() -> None:
    data = b"".join(STREAM)
    framer = Framer()
    assert framer.feed(bytearray(data[:10])) == []
    assert framer.feed(memoryview(data)[10:30]) == STREAM[:1]
    assert framer.feed(bytearray(data[30:])) == STREAM[1:]
    assert Framer().feed(memoryview(data)) == STREAM


def test_empty_feed() -> None:
    framer = Framer()
    assert framer.feed(b"") == []
    assert framer.feed(STREAM[0][:3]) == []
    assert framer.feed(b"") == []
    assert framer.feed(STREAM[0][3:]) == [STREAM[0]]


@pytest.mark.parametrize("length", [0, 1, 15])
def test_length_below_header_fails_at_once(length: int) -> None:
    framer = Framer()
    with pytest.raises(FrameError) as info:
        framer.feed(struct.pack(">I", length))  # no need to wait for more
    err = info.value
    assert (err.status, err.seq, err.frames) == (C.ESME_RINVCMDLEN, 0, [])
    assert err.code == "ESME_RINVCMDLEN"


def test_length_of_exactly_16_and_max_are_accepted() -> None:
    framer = Framer()
    assert framer.feed(pdu(16)) == [pdu(16)]
    biggest = pdu(MAX_PDU)
    assert framer.feed(biggest[:40000]) == []
    assert framer.feed(biggest[40000:]) == [biggest]


def test_length_above_max_waits_for_the_header_then_fails_with_its_seq() -> None:
    header = struct.pack(">IIII", MAX_PDU + 1, C.SUBMIT_SM, 0, 4242)
    framer = Framer()
    assert framer.feed(header[:15]) == []
    with pytest.raises(FrameError) as info:
        framer.feed(header[15:])
    assert (info.value.seq, info.value.command_id) == (4242, C.SUBMIT_SM)
    assert info.value.status == C.ESME_RINVCMDLEN


def test_frames_before_a_bad_header_are_kept_on_the_error() -> None:
    bad = struct.pack(">IIII", 0xFFFFFFFF, C.DELIVER_SM, 0, 77)
    framer = Framer()
    with pytest.raises(FrameError) as info:
        framer.feed(b"".join(STREAM) + bad)
    assert info.value.frames == STREAM
    assert info.value.seq == 77


def test_framer_stays_broken_after_an_error() -> None:
    framer = Framer()
    with pytest.raises(FrameError):
        framer.feed(struct.pack(">I", 3))
    with pytest.raises(FrameError):
        framer.feed(STREAM[0])


def test_custom_max_pdu() -> None:
    framer = Framer(max_pdu=100)
    assert framer.feed(pdu(100)) == [pdu(100)]
    with pytest.raises(FrameError):
        framer.feed(pdu(101))


def test_max_pdu_octet_by_octet_is_linear() -> None:
    # A quadratic buffer (bytes concatenation, or re-slicing the whole buffer per read) would take
    # seconds here; the bytearray + offset framer takes a few tens of milliseconds.
    biggest = pdu(MAX_PDU)
    framer = Framer()
    start = time.perf_counter()
    out: list[bytes] = []
    for i in range(MAX_PDU):
        out.extend(framer.feed(biggest[i : i + 1]))
    elapsed = time.perf_counter() - start
    assert out == [biggest]
    assert elapsed < 2.0


def test_mixed_sizes_in_odd_chunks_are_exact_and_linear() -> None:
    # Reads that end inside a large PDU after many small ones exercise the kept offset and its
    # occasional compaction; the result must still be exact and the cost linear.
    small = pdu(16)
    big = pdu(30_000, seq=3)
    unit = [small] * 200 + [big]
    data = b"".join(unit) * 20
    framer = Framer()
    start = time.perf_counter()
    out = feed_all(framer, [data[i : i + 997] for i in range(0, len(data), 997)])
    assert time.perf_counter() - start < 2.0
    assert out == unit * 20
    assert framer.buffered == 0
