"""data_sm from the SMSC (SMPP 3.4 4.7): our own codec for it, the session turning it into the
same event as a deliver_sm and answering data_sm_resp, and receipts made of TLVs only."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from smpplib import smpp as sl_smpp

from bridge.pipeline.inbound import is_receipt
from bridge.smpp import constants as C
from bridge.smpp.codec import (
    Bind,
    BindResp,
    DataSm,
    EncodeError,
    MessageIdResp,
    Pdu,
    PduError,
    ShortMessage,
    decode,
    encode,
    make_command,
    salvage_data_sm,
)
from bridge.smpp.framing import Framer
from bridge.smpp.receipt import MESSAGE_STATE_STAT, ReceiptState, receipt_from_fields
from bridge.smpp.session import (
    BindMode,
    BindSession,
    Bound,
    DeliverReceived,
    ProtocolError,
    SessionState,
)

LATIN1_NO_NUL = st.characters(min_codepoint=1, max_codepoint=255)
u8 = st.integers(0, 255)


def cstr(maxlen: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=LATIN1_NO_NUL, max_size=maxlen - 1)


def frame(cid: int, body: bytes, seq: int = 1, status: int = 0) -> bytes:
    return struct.pack(">IIII", 16 + len(body), cid, status, seq) + body


def tlv(tag: int, value: bytes) -> bytes:
    return struct.pack(">HH", tag, len(value)) + value


def mandatory(st_: bytes = b"", src: bytes = b"123", dst: bytes = b"SRC") -> bytes:
    """data_sm mandatory part: service_type, src ton/npi/addr, dst ton/npi/addr, esm, rd, dc."""
    return st_ + b"\0" + b"\x01\x01" + src + b"\0" + b"\x00\x00" + dst + b"\0" + b"\x04\x00\x00"


RECEIPT_TLVS = (
    (C.RECEIPTED_MESSAGE_ID, b"0A1B2C3D\0"),
    (C.MESSAGE_STATE, b"\x02"),
)


def raises(data: bytes) -> PduError:
    with pytest.raises(PduError) as info:
        decode(data)
    return info.value


# --- codec ----------------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(
    service_type=cstr(6),
    src=cstr(65),
    dst=cstr(65),
    ints=st.tuples(u8, u8, u8, u8, u8, u8, u8),
    tlvs=st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)), max_size=5),
    seq=st.integers(1, 0x7FFFFFFF),
)
def test_round_trip(
    service_type: str,
    src: str,
    dst: str,
    ints: tuple[int, ...],
    tlvs: list[tuple[int, bytes]],
    seq: int,
) -> None:
    ston, snpi, dton, dnpi, esm, rd, dc = ints
    body = DataSm(service_type, ston, snpi, src, dton, dnpi, dst, esm, rd, dc, tuple(tlvs))
    raw = encode(Pdu(C.DATA_SM, 0, seq, body))
    assert decode(raw) == Pdu(C.DATA_SM, 0, seq, body)


def test_bytes_match_smpplib_and_smpplib_reads_ours() -> None:
    """smpplib is the oracle: same octets for the mandatory part plus one TLV, same fields."""
    body = DataSm(
        "CMT", 1, 1, "8613800138000", 5, 0, "bridge", 0x04, 1, 8,
        ((C.MESSAGE_PAYLOAD, b"\x00h\x00i"),),
    )  # fmt: skip
    cmd = make_command(
        "data_sm", service_type="CMT", source_addr_ton=1, source_addr_npi=1,
        source_addr="8613800138000", dest_addr_ton=5, dest_addr_npi=0, destination_addr="bridge",
        esm_class=0x04, registered_delivery=1, data_coding=8, message_payload=b"\x00h\x00i",
    )  # fmt: skip
    ours = encode(Pdu(C.DATA_SM, 0, 7, body))
    assert ours == encode(Pdu(C.DATA_SM, 0, 7, cmd))
    theirs = sl_smpp.parse_pdu(
        ours, sequence=0, allow_unknown_opt_params=True
    )  # smpplib reads ours
    assert (theirs.source_addr, theirs.destination_addr) == (b"8613800138000", b"bridge")
    assert (theirs.esm_class, theirs.registered_delivery, theirs.data_coding) == (4, 1, 8)
    assert theirs.message_payload == b"\x00h\x00i"
    assert decode(ours).body == body


def test_addresses_up_to_64_octets_unlike_smpplib() -> None:
    """SMPP 3.4 4.7.1: data_sm addresses are Var. max 65 (21 in deliver_sm)."""
    raw = frame(C.DATA_SM, mandatory(src=b"A" * 64, dst=b"B" * 64))
    body = decode(raw).body
    assert isinstance(body, DataSm)
    assert (body.source_addr, body.destination_addr) == ("A" * 64, "B" * 64)
    assert (body.esm_class, body.tlvs) == (0x04, ())


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (mandatory(st_=b"CMTXYZ"), C.ESME_RINVSERTYP),  # 6 octets + NUL > 6
        (mandatory(src=b"A" * 65), C.ESME_RINVSRCADR),
        (mandatory(dst=b"B" * 65), C.ESME_RINVDSTADR),
        (mandatory()[:-1], C.ESME_RINVCMDLEN),  # ends inside data_coding
        (mandatory()[:5], C.ESME_RINVCMDLEN),  # ends inside source_addr
        (mandatory()[:8], C.ESME_RINVCMDLEN),  # ends inside dest_addr_npi
        (b"", C.ESME_RINVCMDLEN),
        (mandatory() + b"\x04\x24\x00", C.ESME_RINVOPTPARSTREAM),  # 3 octets: not a TLV
        (mandatory() + b"\x04\x24\x00\x05abc", C.ESME_RINVOPTPARSTREAM),  # value cut short
    ],
)
def test_malformed_bodies_name_their_status(body: bytes, status: int) -> None:
    e = raises(frame(C.DATA_SM, body, seq=77))
    assert (e.status, e.command_id, e.seq) == (status, C.DATA_SM, 77)


def test_length_mismatch_and_other_commands() -> None:
    raw = frame(C.DATA_SM, mandatory(), seq=3)
    e = raises(raw + b"\x00")
    assert (e.status, e.command_id, e.seq) == (C.ESME_RINVCMDLEN, C.DATA_SM, 3)


def test_encode_refuses_what_does_not_fit() -> None:
    with pytest.raises(EncodeError) as info:
        encode(Pdu(C.DATA_SM, 0, 1, DataSm(source_addr="1" * 65)))
    assert info.value.field == "source_addr"
    with pytest.raises(EncodeError) as info:
        encode(Pdu(C.DATA_SM, 0, 1, DataSm(data_coding=256)))
    assert info.value.field == "data_coding"
    with pytest.raises(EncodeError):
        encode(Pdu(C.DELIVER_SM, 0, 1, DataSm()))  # a DataSm is only ever a data_sm


def test_as_short_message_keeps_every_field_and_the_tlvs() -> None:
    ds = DataSm("CMT", 1, 2, "491", 3, 4, "777", 0x04, 1, 8, RECEIPT_TLVS)
    sm = ds.as_short_message()
    assert sm == ShortMessage(
        service_type="CMT", source_addr_ton=1, source_addr_npi=2, source_addr="491",
        dest_addr_ton=3, dest_addr_npi=4, destination_addr="777", esm_class=0x04,
        registered_delivery=1, data_coding=8, short_message=b"", tlvs=RECEIPT_TLVS,
    )  # fmt: skip


# --- salvage --------------------------------------------------------------------------------------
def test_salvage_keeps_the_tlvs_before_a_broken_one() -> None:
    tail = b"".join(tlv(t, v) for t, v in RECEIPT_TLVS) + b"\x04\x23\x00\x09\x03"
    raw = frame(C.DATA_SM, mandatory(src=b"9" * 70) + tail)
    assert raises(raw).status == C.ESME_RINVSRCADR
    ds = salvage_data_sm(raw)
    assert ds is not None and ds.source_addr == "9" * 70 and ds.tlvs == RECEIPT_TLVS


def test_salvage_needs_a_receipted_message_id() -> None:
    raw = frame(C.DATA_SM, mandatory() + tlv(C.MESSAGE_STATE, b"\x02") + b"\x00\x1e\x00")
    assert salvage_data_sm(raw) is None
    assert salvage_data_sm(frame(C.DATA_SM, b"\x00\x01")) is None  # breaks in the mandatory part
    assert salvage_data_sm(frame(C.DELIVER_SM, mandatory())) is None
    good = frame(C.DATA_SM, mandatory() + tlv(C.MESSAGE_PAYLOAD, b"hi"))
    assert salvage_data_sm(good) == decode(good).body


# --- session --------------------------------------------------------------------------------------
BIND = Bind("esme", "secret")


def sent(s: BindSession) -> list[Pdu]:
    return [decode(f) for f in Framer().feed(s.data_to_send())]


def bound_session() -> BindSession:
    s = BindSession(BIND, BindMode.TRANSCEIVER)
    s.start(0.0)
    (req,) = sent(s)
    ev = s.receive_data(encode(Pdu(req.command_id | C.RESP_BIT, 0, req.seq, BindResp("S"))), 0)
    assert ev == [Bound("S")]
    return s


def data_sm(seq: int, tlvs: tuple[tuple[int, bytes], ...] = RECEIPT_TLVS, esm: int = 4) -> bytes:
    body = DataSm(source_addr="8613800138000", destination_addr="SRC", esm_class=esm, tlvs=tlvs)
    return encode(Pdu(C.DATA_SM, 0, seq, body))


def test_data_sm_becomes_a_deliver_event_answered_by_data_sm_resp() -> None:
    s = bound_session()
    (ev,) = s.receive_data(data_sm(42), 1.0)
    assert isinstance(ev, DeliverReceived)
    assert (ev.seq, ev.salvaged, ev.command_id) == (42, False, C.DATA_SM)
    assert ev.body.short_message == b"" and ev.body.tlvs == RECEIPT_TLVS
    assert (ev.body.source_addr, ev.body.esm_class) == ("8613800138000", 0x04)
    assert sent(s) == []  # nothing until the pipeline has committed it
    s.ack_deliver(ev.seq, C.ESME_RX_T_APPN, ev.command_id)
    (resp,) = sent(s)
    assert (resp.command_id, resp.status, resp.seq) == (C.DATA_SM_RESP, C.ESME_RX_T_APPN, 42)
    assert resp.body == MessageIdResp("")


def test_deliver_sm_and_data_sm_interleaved_get_their_own_resps() -> None:
    s = bound_session()
    dsm = encode(Pdu(C.DELIVER_SM, 0, 5, ShortMessage(source_addr="1", short_message=b"hi")))
    evs = s.receive_data(data_sm(4) + dsm + data_sm(6), 1.0)
    assert [(e.seq, e.command_id) for e in evs if isinstance(e, DeliverReceived)] == [
        (4, C.DATA_SM), (5, C.DELIVER_SM), (6, C.DATA_SM),
    ]  # fmt: skip
    for e in reversed(evs):
        assert isinstance(e, DeliverReceived)
        s.ack_deliver(e.seq, C.ESME_ROK, e.command_id)
    assert [(p.seq, p.command_id) for p in sent(s)] == [
        (6, C.DATA_SM_RESP), (5, C.DELIVER_SM_RESP), (4, C.DATA_SM_RESP),
    ]  # fmt: skip


def test_data_sm_while_unbinding_is_still_delivered() -> None:
    s = bound_session()
    s.unbind(1.0)
    sent(s)
    (ev,) = s.receive_data(data_sm(9), 1.1)
    assert isinstance(ev, DeliverReceived) and ev.command_id == C.DATA_SM


def test_data_sm_before_bound_gets_data_sm_resp_rinvbndsts() -> None:
    s = BindSession(BIND, BindMode.TRANSCEIVER)
    s.start(0.0)
    sent(s)
    (ev,) = s.receive_data(data_sm(3), 0.1)
    assert isinstance(ev, ProtocolError) and not ev.fatal and "data_sm" in ev.message
    (resp,) = sent(s)
    assert (resp.command_id, resp.status, resp.seq) == (C.DATA_SM_RESP, C.ESME_RINVBNDSTS, 3)
    assert s.state is SessionState.BINDING


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (mandatory(src=b"A" * 65), C.ESME_RINVSRCADR),
        (mandatory(st_=b"TOOLONG"), C.ESME_RINVSERTYP),
        (mandatory()[:-2], C.ESME_RINVCMDLEN),
        (mandatory() + tlv(C.MESSAGE_PAYLOAD, b"x")[:-2], C.ESME_RINVOPTPARSTREAM),
    ],
)
def test_malformed_data_sm_gets_data_sm_resp_with_the_status(body: bytes, status: int) -> None:
    """SMPP 3.4 4.3.1: generic_nack only for a bad length or an unknown command."""
    s = bound_session()
    (ev,) = s.receive_data(frame(C.DATA_SM, body, seq=12), 1.0)
    assert isinstance(ev, ProtocolError) and not ev.fatal
    (resp,) = sent(s)
    assert (resp.command_id, resp.status, resp.seq) == (C.DATA_SM_RESP, status, 12)
    assert s.state is SessionState.BOUND


def test_malformed_data_sm_receipt_is_salvaged_for_acking() -> None:
    s = bound_session()
    tail = b"".join(tlv(t, v) for t, v in RECEIPT_TLVS) + b"\xff"
    ev = s.receive_data(frame(C.DATA_SM, mandatory() + tail, seq=8), 1.0)
    assert isinstance(ev[0], DeliverReceived) and isinstance(ev[1], ProtocolError)
    assert (ev[0].seq, ev[0].salvaged, ev[0].command_id) == (8, True, C.DATA_SM)
    assert ev[0].body.tlvs == RECEIPT_TLVS
    assert sent(s) == []  # acked by the caller once committed, not refused
    s.ack_deliver(8, C.ESME_ROK, C.DATA_SM)
    assert [(p.command_id, p.status) for p in sent(s)] == [(C.DATA_SM_RESP, C.ESME_ROK)]


def test_ack_deliver_defaults_to_deliver_sm_and_refuses_other_commands() -> None:
    s = bound_session()
    s.ack_deliver(1)
    (resp,) = sent(s)
    assert resp.command_id == C.DELIVER_SM_RESP
    with pytest.raises(ValueError, match="command_id"):
        s.ack_deliver(2, C.ESME_ROK, C.SUBMIT_SM)


def test_is_receipt_for_a_data_sm_with_receipt_tlvs_and_no_esm_bit() -> None:
    body = DataSm(esm_class=0, tlvs=RECEIPT_TLVS).as_short_message()
    assert is_receipt(body)
    mo = DataSm(tlvs=((C.MESSAGE_PAYLOAD, b"hello"),)).as_short_message()
    assert not is_receipt(mo)


# --- receipts from TLVs only ----------------------------------------------------------------------
# SMPP 3.4 5.3.2.35 message_state -> (stat word, our state). ACCEPTED is read as ENROUTE, as
# Kannel does (DLR "buffered"): manual acceptance by customer service is not a delivery.
EXPECTED_STATES = {
    1: ("ENROUTE", ReceiptState.ENROUTE),
    2: ("DELIVRD", ReceiptState.DELIVERED),
    3: ("EXPIRED", ReceiptState.EXPIRED),
    4: ("DELETED", ReceiptState.UNDELIVERABLE),
    5: ("UNDELIV", ReceiptState.UNDELIVERABLE),
    6: ("ACCEPTD", ReceiptState.ENROUTE),
    7: ("UNKNOWN", ReceiptState.UNKNOWN),
    8: ("REJECTD", ReceiptState.REJECTED),
}


def test_every_message_state_value_is_covered() -> None:
    assert set(MESSAGE_STATE_STAT) == set(EXPECTED_STATES)


@pytest.mark.parametrize(("state", "expected"), sorted(EXPECTED_STATES.items()))
def test_receipt_from_tlvs_only(state: int, expected: tuple[str, ReceiptState]) -> None:
    r = receipt_from_fields("", "0A1B2C3D", state, b"\x03\x00\x01")
    assert r is not None
    assert (r.message_id, r.stat, r.state) == ("0A1B2C3D", *expected)
    assert r.final is (expected[1] is not ReceiptState.ENROUTE)
    assert (r.network_error, r.err, r.text, r.sub, r.done_date) == (1, None, "", None, None)


@pytest.mark.parametrize("state", [None, 0, 9, 255])
def test_message_state_outside_1_to_8_without_text_is_unknown(state: int | None) -> None:
    r = receipt_from_fields("", "abc", state, None)
    assert r is not None and (r.state, r.stat, r.network_error) == (ReceiptState.UNKNOWN, "", None)


def test_tlv_only_receipt_needs_the_id_and_tlvs_win_over_text() -> None:
    assert receipt_from_fields("", None, 2, None) is None
    assert receipt_from_fields("", "  \x00", 2, None) is None
    r = receipt_from_fields("id:zz stat:UNDELIV err:001", "abc", 2, b"\x00\x05")
    assert r is not None
    assert (r.message_id, r.state, r.err, r.network_error) == (
        "abc", ReceiptState.DELIVERED, "001", 5,
    )  # fmt: skip


# --- intermediate delivery notifications (SMPP 3.4 2.11.2, esm_class 0x20) -----------------------
class _Receipts:
    """The one store call the receipt path makes, recording what it is given."""

    def __init__(self) -> None:
        self.items: list[object] = []

    async def apply_receipts(self, items: list[object], now: int) -> object:
        from bridge.store.models import ReceiptOutcome

        self.items.extend(items)
        return ReceiptOutcome(len(items), 0)


@pytest.mark.parametrize(
    ("esm", "state", "expected"),
    [
        (C.ESM_INTERMEDIATE_NOTIFICATION, C.MSG_STATE_UNDELIVERABLE, "enroute"),
        (C.ESM_INTERMEDIATE_NOTIFICATION, C.MSG_STATE_DELIVERED, "enroute"),
        (C.ESM_INTERMEDIATE_NOTIFICATION | C.ESM_UDHI, C.MSG_STATE_EXPIRED, "enroute"),
        (C.ESM_DELIVERY_RECEIPT, C.MSG_STATE_UNDELIVERABLE, "undeliverable"),
        (0, C.MSG_STATE_DELIVERED, "delivered"),  # a receipt by its TLV alone
    ],
)
async def test_an_intermediate_notification_never_settles_the_part(
    esm: int, state: int, expected: str
) -> None:
    """An intermediate notification reports one delivery attempt while the SMSC keeps retrying
    ("Mobile Unavailable", 2.11.2): its message_state or stat is that attempt's. Taken as the
    outcome, it settled the part (the first final outcome stands) and the delivery that
    followed was ignored."""
    from bridge.pipeline.inbound import Inbound

    store = _Receipts()
    inbound = Inbound(store, {}, clock=lambda: 1_700_000_000.0)  # type: ignore[arg-type]
    tlvs = ((C.RECEIPTED_MESSAGE_ID, b"0A1B2C3D\0"), (C.MESSAGE_STATE, bytes([state])))
    body = DataSm(source_addr="8613800138000", destination_addr="SRC", esm_class=esm, tlvs=tlvs)
    assert await inbound.on_deliver("smsc", body.as_short_message()) == C.ESME_ROK
    await inbound.drain()
    (r,) = store.items
    assert (r.smsc_msg_id, r.state, r.stat) == (  # type: ignore[attr-defined]
        "0A1B2C3D", expected, MESSAGE_STATE_STAT[state],
    )  # fmt: skip


async def test_an_intermediate_deliver_sm_with_receipt_text_is_enroute_too() -> None:
    from bridge.pipeline.inbound import Inbound

    store = _Receipts()
    inbound = Inbound(store, {}, clock=lambda: 1_700_000_000.0)  # type: ignore[arg-type]
    text = b"id:0A1B2C3D sub:001 dlvrd:000 submit date:2401011200 done date:2401011201 stat:UNDELIV"
    sm = ShortMessage(
        source_addr="1", esm_class=C.ESM_INTERMEDIATE_NOTIFICATION, short_message=text
    )
    assert await inbound.on_deliver("smsc", sm) == C.ESME_ROK
    await inbound.drain()
    (r,) = store.items
    assert (r.state, r.stat) == ("enroute", "UNDELIV")  # type: ignore[attr-defined]
