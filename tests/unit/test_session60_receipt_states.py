"""A receipt read without its ShortMessage (session 60, `read_receipts`) in the session's other
states and reads: the same events, answers and octets as the general path (session 60's review).

`test_session60_receipt_frame.py` and codec_differential.py's `bind` kind feed one frame to a
bound session. What they do not reach, and what this holds: a receipt before the bind completed
(refused with ESME_RINVBNDSTS), after our unbind was sent (still taken and answered), in the same
read as the SMSC's unbind (not read: the session is closed), ahead of a frame with a broken
command_length (the FrameError path), a short receipt frame (<= 81 octets: the session's
submit_sm_resp branch reads its header), and a deliver_sm whose header's command_status is not
zero. Each sequence runs on a session with `read_receipts` and one without, and every event
(a ReceiptReceived read as the DeliverReceived it replaces: seq, command_id and the receipt's
fields), the state and the octets written must be the same.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from bridge.smpp import constants as C
from bridge.smpp.codec import Bind, BindResp, Pdu, encode
from bridge.smpp.session import BindMode, BindSession, DeliverReceived, ReceiptReceived

_RECEIPT_TAGS = (C.RECEIPTED_MESSAGE_ID, C.MESSAGE_STATE, C.NETWORK_ERROR_CODE, C.MESSAGE_PAYLOAD)


def _frame(body: bytes, seq: int, cid: int = C.DELIVER_SM, status: int = 0) -> bytes:
    return struct.pack(">IIII", 16 + len(body), cid, status, seq) + body


def _receipt_body(text: bytes, tlvs: list[tuple[int, bytes]], esm: int = 0x04) -> bytes:
    return b"".join(
        [b"\0\x01\x01", b"447700900123\0", b"\x05\x00", b"BRIDGE\0", bytes([esm, 0, 0]),
         b"\0\0", b"\0\0\0\0", bytes([len(text)]), text]
        + [struct.pack(">HH", t, len(v)) + v for t, v in tlvs]
    )  # fmt: skip


_TEXT = (
    b"id:0012D687 sub:001 dlvrd:001 submit date:2612051400 done date:2612051401 stat:DELIVRD "
    b"err:000 text:hi"
)
_RECEIPT = _frame(_receipt_body(_TEXT, [(C.MESSAGE_STATE, b"\x02")]), 41)
# 16 + 52 octets: read first by the branch for a submit_sm_resp of at most 81 octets.
_SHORT = _frame(_receipt_body(b"id:7 stat:DELIVRD err:0", [(C.RECEIPTED_MESSAGE_ID, b"7\0")]), 42)
_STATUS = _frame(_receipt_body(_TEXT, []), 43, status=C.ESME_RSYSERR)
_INTERMEDIATE = _frame(_receipt_body(b"id:8 stat:ENROUTE err:0", [], esm=0x20), 44)
_UNBIND = encode(Pdu(C.UNBIND, 0, 90, None))
_BAD_LENGTH = struct.pack(">IIII", 12, C.ENQUIRE_LINK, 0, 91)


def _session(read_receipts: bool, bound: bool = True) -> BindSession:
    s = BindSession(Bind("t", "t"), BindMode.TRANSCEIVER, window=10)
    s.read_receipts = read_receipts
    s.start(0.0)
    s.data_to_send()
    if bound:
        s.receive_data(encode(Pdu(C.BIND_TRANSCEIVER_RESP, 0, 1, BindResp("smsc"))), 0.0)
    return s


def _seen(ev: Any) -> Any:
    """An event as compared: a deliver by its seq, command_id and the receipt's fields (what
    Inbound reads of it), whichever event carries it."""
    if isinstance(ev, ReceiptReceived):
        return ("deliver", ev.seq, ev.command_id, ev.fields)
    if isinstance(ev, DeliverReceived):
        body = ev.body
        first: dict[int, bytes] = {}
        for tag, value in body.tlvs:
            if tag in _RECEIPT_TAGS:
                first.setdefault(tag, value)
        fields = (body.esm_class, body.short_message, *(first.get(t) for t in _RECEIPT_TAGS))
        return ("deliver", ev.seq, ev.command_id, fields)
    return repr(ev)


def _run(read_receipts: bool, steps: list[Any], bound: bool = True) -> list[Any]:
    s = _session(read_receipts, bound)
    out: list[Any] = []
    for step in steps:
        if step == "unbind":
            s.unbind(1.0)
            out.append(("unbind", s.state))
            continue
        for ev in s.receive_data(step, 1.0):
            out.append(_seen(ev))
            if isinstance(ev, DeliverReceived | ReceiptReceived):
                s.ack_deliver(ev.seq, C.ESME_ROK, ev.command_id)
        out.append((s.state, s.data_to_send()))
    return out


_CASES = {
    "bound, one a read and three in one": [_RECEIPT, _SHORT, _RECEIPT + _STATUS + _INTERMEDIATE],
    "a short receipt cut across reads": [_SHORT[:20], _SHORT[20:50], _SHORT[50:]],
    "after our unbind": ["unbind", _RECEIPT, _SHORT],
    "in the read of the SMSC's unbind": [_RECEIPT + _UNBIND + _SHORT],
    "ahead of a broken command_length": [_RECEIPT + _SHORT + _BAD_LENGTH],
}


@pytest.mark.parametrize("case", list(_CASES))
def test_a_receipt_reads_as_the_general_path_in_every_state(case: str) -> None:
    steps = _CASES[case]
    fast = _run(True, steps)
    assert fast == _run(False, steps)
    assert any(isinstance(x, tuple) and x[0] == "deliver" for x in fast) or "unbind" in case


def test_a_receipt_before_the_bind_is_refused_as_before() -> None:
    fast = _run(True, [_RECEIPT, _SHORT], bound=False)
    assert fast == _run(False, [_RECEIPT, _SHORT], bound=False)
    # ESME_RINVBNDSTS in a deliver_sm_resp for each, no deliver handed on
    assert not any(isinstance(x, tuple) and x[0] == "deliver" for x in fast)
    written = b"".join(x[1] for x in fast if isinstance(x, tuple))
    for seq in (41, 42):
        assert struct.pack(">IIII", 17, C.DELIVER_SM_RESP, C.ESME_RINVBNDSTS, seq) in written


def test_the_fast_read_takes_these_frames() -> None:
    """The cases reach the receipt read (else they compare the general path with itself)."""
    for f in (_RECEIPT, _SHORT, _STATUS, _INTERMEDIATE):
        (ev,) = _session(True).receive_data(f, 1.0)
        assert type(ev) is ReceiptReceived, f.hex()
    assert len(_SHORT) <= 81
