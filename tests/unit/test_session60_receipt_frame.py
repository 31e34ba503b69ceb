"""A receipt's deliver_sm read without its ShortMessage (session 60, README note 27).

A bind with a receipt handler (`on_receipt`: the daemon's `Inbound.on_receipt`) sets its
session's `read_receipts`; the session then reads a deliver_sm whose esm_class marks a receipt
with `codec.read_receipt_sm` (esm_class, short_message and the four TLVs a receipt may carry,
in the pass that checks the TLV stream) and hands a `ReceiptReceived`, not a `DeliverReceived`
with a decoded ShortMessage; `Inbound.on_receipt` stores it with the same core `_receipt` runs
(`_receipt_read`). What must hold: `read_receipt_sm` gives what the general decode's body gives
`_receipt` for every frame it takes, and takes every frame the general path would decode as a
receipt by its esm_class (None for the rest, which then go the general way); the items queued,
their commit's arguments, the answers and the unparsable count the same either way.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.config import SmscConfig
from bridge.pipeline.inbound import Inbound
from bridge.smpp import codec
from bridge.smpp import constants as C
from bridge.smpp import session as session_mod
from bridge.smpp.codec import Bind, BindResp, Pdu, PduError, decode_fields, encode, read_receipt_sm
from bridge.smpp.protocol import DeliverAnswer
from bridge.smpp.session import BindMode, BindSession, DeliverReceived, ReceiptReceived
from tests.unit.test_receipt_fast import _carrier_texts
from tests.unit.test_receipt_outcome import texts

_SMSCS = {
    "plain": SmscConfig(name="plain", system_id="t", password="t"),
    "hexdec": SmscConfig(
        name="hexdec", system_id="t", password="t", resp_id_base="hex", receipt_id_base="dec"
    ),
    "asis": SmscConfig(
        name="asis", system_id="t", password="t", id_case_insensitive=False,
        id_strip_leading_zeros=False, tlv_id_base="receipt", receipt_id_base="hex",
    ),
}  # fmt: skip
_TAGS = (C.RECEIPTED_MESSAGE_ID, C.MESSAGE_STATE, C.NETWORK_ERROR_CODE, C.MESSAGE_PAYLOAD)
_ESMS = [0x04, 0x08, 0x10, 0x20, 0x24, 0x44, 0x3C, 0x00, 0x40, 0x01, 0x0C, 0x14, 0xFF]


def _frame(body: bytes, seq: int = 7, cid: int = C.DELIVER_SM) -> bytes:
    return struct.pack(">IIII", 16 + len(body), cid, 0, seq) + body


def _body(
    esm: int, sm: bytes, tlvs: list[tuple[int, bytes]], strings: tuple[bytes, ...] = ()
) -> bytes:
    st_, sa, da, sdt, vp = strings or (b"", b"8613800138000", b"BRIDGE", b"", b"")
    return b"".join(
        [st_, b"\0\x01\x01", sa, b"\0\x05\x00", da, b"\0", bytes([esm, 0, 0]), sdt, b"\0", vp,
         b"\0\x00\x00\x00\x00", bytes([len(sm) & 0xFF]), sm]
        + [struct.pack(">HH", t, len(v)) + v for t, v in tlvs]
    )  # fmt: skip


def _general(f: bytes) -> Any:
    """What the general path gives `_receipt` of a frame it takes as a receipt by esm_class:
    the ShortMessage's esm_class, short_message and first value of each receipt TLV; None for a
    frame it refuses or an esm_class that is no receipt's."""
    try:
        cid, _status, _seq, body = decode_fields(f)
    except PduError:
        return None
    if cid != C.DELIVER_SM or (body.esm_class & 0x3C) not in (0x04, 0x08, 0x10, 0x20):
        return None
    first: dict[int, bytes] = {}
    for tag, value in body.tlvs:
        if tag in _TAGS:
            first.setdefault(tag, value)
    return (body.esm_class, body.short_message, *(first.get(t) for t in _TAGS))


def _mutated(r: random.Random, f: bytes) -> bytes:
    b = bytearray(f)
    for _ in range(r.randrange(4)):
        op = r.randrange(6)
        if op == 0 and len(b) > 16:
            b[r.randrange(16, len(b))] = r.randrange(256)
        elif op == 1 and len(b) > 16:
            b[r.randrange(16, len(b))] = 0
        elif op == 2 and len(b) > 16:
            del b[r.randrange(16, len(b)) :]
        elif op == 3:
            b += bytes(r.randrange(256) for _ in range(r.randrange(1, 8)))
        elif op == 4 and len(b) > 16:
            del b[r.randrange(16, len(b))]
        else:
            b += struct.pack(">HH", r.choice(_TAGS), r.randrange(5)) + b"\x02" * r.randrange(5)
    struct.pack_into(">I", b, 0, len(b))
    return bytes(b)


def _random_body(r: random.Random) -> bytes:
    def cs(most: int) -> bytes:
        n = r.choice([0, 0, r.randrange(most + 1), most, most + 1])
        return bytes(r.randrange(1, 256) for _ in range(n))

    tlvs = [
        (r.choice([*_TAGS, 0x1400, 0x0204]), bytes(r.randrange(256) for _ in range(r.randrange(9))))
        for _ in range(r.randrange(5))
    ]
    sm = bytes(r.randrange(256) for _ in range(r.choice([0, r.randrange(80), 254, 255])))
    return _body(r.choice(_ESMS), sm, tlvs, (cs(5), cs(20), cs(20), cs(16), cs(16)))


def test_the_frame_read_is_the_general_decodes() -> None:
    """25,000 seeded deliver_sm bodies (C-strings at and past their maxima, every esm_class
    kind, sm_length 0-255, TLVs repeated, unknown, empty), mutated most of the time (octets
    changed, zeroed, cut, dropped, appended, a TLV appended, maybe cut short): read_receipt_sm
    gives the general decode's receipt fields exactly when that decode takes it as a receipt
    by its esm_class, else None."""
    r = random.Random(60)
    taken = 0
    for _ in range(25_000):
        f = _frame(_random_body(r))
        if r.random() < 0.7:
            f = _mutated(r, f)
        want = _general(f)
        got = read_receipt_sm(f)
        assert got == want, f.hex()
        assert got is None or all(type(v) is bytes for v in got[1:] if v is not None)
        taken += got is not None
    assert taken > 1_500  # the cases reach the receipt path (1,796)


class _Items:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any]] = []

    def add_call(self, item: Any, call: Any) -> None:
        self.calls.append((item, call))


def _inbound() -> tuple[Inbound, _Items]:
    inbound = Inbound(object(), _SMSCS, clock=lambda: 1_000.0)  # type: ignore[arg-type]
    batch = _Items()
    inbound._receipts = batch  # type: ignore[assignment]
    return inbound, batch


def _bound(read_receipts: bool) -> BindSession:
    s = BindSession(Bind("t", "t"), BindMode.TRANSCEIVER, window=10)
    s.read_receipts = read_receipts
    s.start(0.0)
    s.data_to_send()
    s.receive_data(encode(Pdu(C.BIND_TRANSCEIVER_RESP, 0, 1, BindResp("smsc"))), 0.0)
    return s


def _through(read_receipts: bool, smsc: str, f: bytes) -> list[Any]:
    """The frame through a bound session and the handler the daemon's bind gives it: what each
    deliver queued (items, the commit's arguments), its answer, the unparsable count, and the
    session's other events and octets."""
    s = _bound(read_receipts)
    inbound, batch = _inbound()
    out: list[Any] = []
    for ev in s.receive_data(f, 0.5):
        if isinstance(ev, ReceiptReceived):
            got: Any = inbound.on_receipt(smsc, ev)
        elif isinstance(ev, DeliverReceived):
            got = inbound.on_deliver(smsc, ev.body)
        else:
            out.append(repr(ev))
            continue
        if not isinstance(got, DeliverAnswer):
            got.close()  # an MO's coroutine
            out.append(("mo", ev.seq))
            continue
        out.append((ev.seq, ev.command_id, got.result() if got.done() else None))
        out.append([(item, call[2:]) for item, call in batch.calls])  # its tuple (session 64)
        out.append(inbound.unparsable)
    out.append(s.data_to_send())
    return out


_TLV_ID = st.one_of(
    st.none(),
    st.sampled_from(
        [b"0012D687\x00", b"0012d687", b" 77 \x00", b"\x00", b"", b"ab c", b"0x1F", b"\xe9"]
    ),
)
_STATE = st.one_of(st.none(), st.sampled_from([b"\x02", b"\x05", b"\x00\x01", b"", b"\x09"]))
_NET = st.one_of(st.none(), st.sampled_from([b"\x03\x00\x22", b"\x00\x05", b"\x01", b""]))


@settings(max_examples=1500, deadline=None)
@given(
    st.one_of(texts(), _carrier_texts()), _TLV_ID, _STATE, _NET, st.sampled_from(_ESMS),
    st.sampled_from([*_SMSCS, "unknown"]), st.booleans(), st.booleans(),
)  # fmt: skip
def test_a_receipt_stores_and_answers_as_through_the_general_decode(
    text: str, tlv_id: bytes | None, state: bytes | None, network: bytes | None, esm: int,
    smsc: str, as_payload: bool, twice: bool,
) -> None:  # fmt: skip
    """Receipt texts (the standard layout, tolerant ones, carriers' variations, free text), the
    receipt's TLVs present, absent, odd or given twice, the text in message_payload, every esm
    kind, three SMSCs' id rules and an unknown one: the session with `read_receipts` and
    `on_receipt` queue, answer and count what the general decode and `on_deliver` did, and
    write the same octets."""
    octets = text.encode("latin-1", "replace")[:254]
    tlvs: list[tuple[int, bytes]] = []
    for tag, v in ((C.RECEIPTED_MESSAGE_ID, tlv_id), (C.MESSAGE_STATE, state),
                   (C.NETWORK_ERROR_CODE, network)):  # fmt: skip
        if v is not None:
            tlvs.append((tag, v))
            if twice:
                tlvs.append((tag, v + b"9"))
    if as_payload:
        tlvs.append((C.MESSAGE_PAYLOAD, octets))
    f = _frame(_body(esm, b"" if as_payload else octets, tlvs))
    fast = _through(True, smsc, f)
    assert fast == _through(False, smsc, f)
    if (esm & 0x3C) in (0x04, 0x08, 0x10, 0x20):
        assert isinstance(_bound(True).receive_data(f, 0.5)[0], ReceiptReceived)


def test_a_receipt_is_read_without_the_general_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """The simulator's receipt, its session with `read_receipts`: a ReceiptReceived with its
    fields, decode_fields made unusable; its answer is a deliver_sm_resp. An MO, a receipt
    marked by its TLV alone, a deliver_sm before the bind and a session without
    `read_receipts` take the general path."""
    text = (
        b"id:0012D687 sub:001 dlvrd:001 submit date:2612051400 done date:2612051401 "
        b"stat:DELIVRD err:000 text:??????????"
    )
    tlvs = [(C.RECEIPTED_MESSAGE_ID, b"0012D687\x00"), (C.MESSAGE_STATE, b"\x02")]
    receipt = _frame(_body(C.ESM_DELIVERY_RECEIPT, text, tlvs), seq=41)
    s = _bound(True)

    def refused(_f: bytes) -> Any:
        raise AssertionError("decode_fields called for a receipt")

    monkeypatch.setattr(session_mod, "decode_fields", refused)
    (ev,) = s.receive_data(receipt, 1.0)
    assert ev == ReceiptReceived(41, (4, text, b"0012D687\x00", b"\x02", None, None))
    assert ev.command_id == C.DELIVER_SM
    s.ack_deliver(ev.seq, C.ESME_ROK, ev.command_id)
    assert s.data_to_send() == struct.pack(">IIIIB", 17, C.DELIVER_SM_RESP, 0, 41, 0)
    monkeypatch.undo()
    mo = _frame(_body(0, b"hello", []), seq=42)
    tlv_only = _frame(_body(0, text, tlvs), seq=43)
    for f in (mo, tlv_only):
        (ev,) = s.receive_data(f, 1.0)
        assert type(ev) is DeliverReceived
    (ev,) = _bound(False).receive_data(receipt, 1.0)
    assert type(ev) is DeliverReceived and ev.body.short_message == text
    early = BindSession(Bind("t", "t"), BindMode.TRANSCEIVER)
    early.read_receipts = True
    early.start(0.0)
    early.data_to_send()
    (ev,) = early.receive_data(receipt, 1.0)
    assert "before bound" in ev.message  # type: ignore[union-attr]
    assert early.data_to_send()[4:8] == struct.pack(">I", C.DELIVER_SM_RESP)


def test_the_receipt_handler_is_wired_in_the_daemon() -> None:
    """app.py hands the connectors `Inbound.on_receipt`: the daemon's binds read receipts so."""
    import inspect

    from bridge import app

    assert "on_receipt=self.inbound.on_receipt" in inspect.getsource(app)
    assert codec.read_receipt_sm is read_receipt_sm
