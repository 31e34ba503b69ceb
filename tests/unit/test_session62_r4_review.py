"""Session 62's review (r4) of the owner's send path per part (merge 83979f9, helper h3).

`BindSession.receive_data` frames a read itself since that merge: `Framer.take` hands it the
stream's octets from the first not yet framed, the octets held for a frame not whole joined
in front of the read in a new bytes object (the buffer emptied), and `_read` gives what it
cannot take whole back to `Framer.feed`, which copies it into the buffer again. A frame
arriving a few octets a read was so copied twice at every read: quadratic in its length
(65,536 octets an octet a read: ~4.3 G octets copied, ~6x the CPU of the tree before at the
session, 0.24 against 0.04 s), where `Framer.feed` alone, which every read went through
before, is linear (`framing.py`'s docstring; `test_smpp_framing.py` holds it for `feed`
only). `take` now keeps a frame it can tell is still not whole (its command_length read from
the held octets) in the buffer, appended as `feed` appends, and hands nothing to read.
"""

from __future__ import annotations

import struct

import pytest

from bridge.smpp import constants as C
from bridge.smpp.codec import Bind, BindResp, Pdu, encode
from bridge.smpp.framing import MAX_PDU, Framer
from bridge.smpp.session import BindMode, BindSession, DeliverReceived, SubmitResponse


def _bound() -> BindSession:
    s = BindSession(Bind("t", "t"), BindMode.TRANSCEIVER, window=10)
    s.read_receipts = True
    s.start(0.0)
    s.data_to_send()
    s.receive_data(encode(Pdu(C.BIND_TRANSCEIVER_RESP, 0, 1, BindResp("smsc"))), 0.0)
    return s


_HEAD = b"\0\x01\x018613800138000\0\x05\x00BRIDGE\0\x00\x00\x00\0\0\x00\x00\x00\x00\x00"
# The longest message_payload a PDU of MAX_PDU octets holds after that head.
_LONGEST = MAX_PDU - 16 - len(_HEAD) - 4


def _mo(seq: int, payload: bytes) -> bytes:
    """A deliver_sm (an MO) with its text in message_payload: as long as one may be."""
    body = _HEAD + struct.pack(">HH", C.MESSAGE_PAYLOAD, len(payload)) + payload
    return struct.pack(">IIII", 16 + len(body), C.DELIVER_SM, 0, seq) + body


def _taken(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The length of each `Framer.take` answer: the octets handed to the session's walk."""
    sizes: list[int] = []
    real = Framer.take

    def counted(self: Framer, data: bytes) -> bytes:
        got = real(self, data)
        sizes.append(len(got))
        return got

    monkeypatch.setattr(Framer, "take", counted)
    return sizes


@pytest.mark.parametrize("step", [1, 7, 1000])
def test_a_long_pdu_arriving_in_small_reads_is_read_in_linear_work(
    monkeypatch: pytest.MonkeyPatch, step: int
) -> None:
    """A 64 KiB deliver_sm, then a submit_sm_resp, in reads of `step` octets: the same events
    as one read gives, and the octets handed to the walk (each a copy of the held frame on the
    merged tree: ~2.1 G at an octet a read) at most the stream's twice. Fails on the merged
    tree for every step (1: 2,147,516,606 octets; 7: 306,862,993; 1,000: 2,210,555)."""
    s = _bound()
    seq = s.submit(b"body", 0.0, "ctx")
    s.data_to_send()
    payload = (bytes(range(256)) * 256)[:_LONGEST]
    mo = _mo(77, payload)
    assert len(mo) == MAX_PDU
    resp = struct.pack(">IIII", 19, C.SUBMIT_SM_RESP, 0, seq) + b"m1\0"
    stream = mo + resp
    sizes = _taken(monkeypatch)
    events: list[object] = []
    for i in range(0, len(stream), step):
        events += s.receive_data(stream[i : i + step], 1.0)
    assert [type(e) for e in events] == [DeliverReceived, SubmitResponse]
    assert events[0].seq == 77 and events[0].body.tlvs == ((C.MESSAGE_PAYLOAD, payload),)
    assert events[1] == SubmitResponse(seq, 0, "m1", "ctx")
    assert s._framer.buffered == 0
    assert sum(sizes) <= 2 * len(stream), sum(sizes)


def test_a_frame_held_is_still_read_whole_with_what_follows_it() -> None:
    """The held frame kept in the buffer (`take`'s new step) is read whole by the read that
    ends it, with the frames after it in that read, and a read ending in the next frame's
    header keeps that part: every split of three frames, at every pair of offsets."""
    a = _mo(5, b"hello")
    b = struct.pack(">IIII", 16, C.ENQUIRE_LINK, 0, 6)
    c = _mo(7, b"x" * 40)
    stream = a + b + c
    whole = _bound()
    want = whole.receive_data(stream, 1.0)
    want_out = whole.data_to_send()
    for i in range(1, len(stream)):
        for j in range(i, len(stream), 5):
            s = _bound()
            got = s.receive_data(stream[:i], 1.0)
            got += s.receive_data(stream[i:j], 1.0)
            got += s.receive_data(stream[j:], 1.0)
            assert got == want, (i, j)
            assert s.data_to_send() == want_out
            assert s._framer.buffered == 0
