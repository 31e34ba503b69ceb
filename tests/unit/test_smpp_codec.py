"""SMPP codec: byte-for-byte against smpplib (the oracle), every error path, salvage, constants."""

from __future__ import annotations

import logging
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from smpplib import command as sl_command
from smpplib import command_codes as sl_codes
from smpplib import consts as sl_consts
from smpplib import smpp as sl_smpp
from smpplib.ptypes import ostr as sl_ostr

from bridge.smpp import constants as C
from bridge.smpp.codec import (
    MAX_PDU,
    Bind,
    BindResp,
    EncodeError,
    MessageIdResp,
    Pdu,
    PduError,
    ShortMessage,
    decode,
    encode,
    make_command,
    salvage_deliver_sm,
    tlv_get,
    tlv_int,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies -----------------------------------------------------------------------------------
LATIN1_NO_NUL = st.characters(min_codepoint=1, max_codepoint=255)
ASCII_NO_NUL = st.characters(min_codepoint=1, max_codepoint=127)
u8 = st.integers(0, 255)
u32 = st.integers(0, 0xFFFFFFFF)


def cstr(maxlen: int) -> st.SearchStrategy[str]:
    """A C-Octet String value that fits ``maxlen`` octets including its NUL."""
    return st.text(alphabet=LATIN1_NO_NUL, max_size=maxlen - 1)


def header(length: int, cid: int, status: int = 0, seq: int = 1) -> bytes:
    return struct.pack(">IIII", length, cid, status, seq)


def frame(cid: int, body: bytes, status: int = 0, seq: int = 1) -> bytes:
    return header(16 + len(body), cid, status, seq) + body


def sl_make(name: str, seq: int, status: int = 0, **fields: Any) -> Any:
    """An smpplib command as a user of smpplib would build it (its sequence kwarg is ignored)."""
    cmd = sl_smpp.make_pdu(name, sequence=seq, status=status, **fields)
    cmd.sequence = seq
    return cmd


def sl_parse(data: bytes) -> Any:
    return sl_smpp.parse_pdu(data, sequence=0, allow_unknown_opt_params=True)


@st.composite
def sl_tlvs(draw: st.DrawFn, cls: type, exclude: frozenset[str] = frozenset()) -> dict[str, Any]:
    """A random set of the TLVs smpplib's ``cls`` lists, with values smpplib encodes faithfully."""
    probe = cls(cls.__name__, sequence=0)
    out: dict[str, Any] = {}
    for field in cls.params_order:
        param = cls.params[field]
        if not probe.field_is_optional(field) or field in exclude:
            continue
        if param.type not in (int, str, sl_ostr) or not draw(st.booleans()):
            continue
        if param.type is int:
            out[field] = draw(st.integers(0, 256**param.size - 1))
        elif param.type is str:
            limit = getattr(param, "max", 20) - 2
            out[field] = draw(st.text(alphabet=ASCII_NO_NUL, min_size=1, max_size=limit))
        else:
            size = getattr(param, "size", None)
            out[field] = draw(
                st.binary(min_size=size or 1, max_size=size or getattr(param, "max", 40))
            )
    return out


def tlvs_as_wire(cls: type, values: dict[str, Any]) -> tuple[tuple[int, bytes], ...]:
    """The (tag, raw) tuple our codec uses, in smpplib's emission order."""
    out = []
    for field in cls.params_order:
        if field not in values:
            continue
        v = values[field]
        param = cls.params[field]
        tag = sl_consts.OPTIONAL_PARAMS[field]
        if param.type is int:
            out.append((tag, v.to_bytes(param.size, "big")))
        elif param.type is str:
            out.append((tag, v.encode() + b"\0"))
        else:
            out.append((tag, v))
    return tuple(out)


SM_FIELDS = (
    "service_type", "source_addr_ton", "source_addr_npi", "source_addr", "dest_addr_ton",
    "dest_addr_npi", "destination_addr", "esm_class", "protocol_id", "priority_flag",
    "schedule_delivery_time", "validity_period", "registered_delivery",
    "replace_if_present_flag", "data_coding", "sm_default_msg_id",
)  # fmt: skip


@st.composite
def sm_fields(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "service_type": draw(cstr(6)),
        "source_addr_ton": draw(u8),
        "source_addr_npi": draw(u8),
        "source_addr": draw(cstr(21)),
        "dest_addr_ton": draw(u8),
        "dest_addr_npi": draw(u8),
        "destination_addr": draw(cstr(21)),
        "esm_class": draw(u8),
        "protocol_id": draw(u8),
        "priority_flag": draw(u8),
        "schedule_delivery_time": draw(cstr(17)),
        "validity_period": draw(cstr(17)),
        "registered_delivery": draw(u8),
        "replace_if_present_flag": draw(u8),
        "data_coding": draw(u8),
        "sm_default_msg_id": draw(u8),
    }


# --- hot path against smpplib, both directions ----------------------------------------------------
@pytest.mark.parametrize(
    ("name", "cid", "cls"),
    [
        ("submit_sm", C.SUBMIT_SM, sl_command.SubmitSM),
        ("deliver_sm", C.DELIVER_SM, sl_command.DeliverSM),
    ],
)
@SETTINGS
@given(data=st.data(), seq=u32)
def test_short_message_pdus_match_smpplib_byte_for_byte(
    name: str, cid: int, cls: type, data: st.DataObject, seq: int
) -> None:
    fields = data.draw(sm_fields())
    tlv_values = data.draw(sl_tlvs(cls))
    sm = b"" if "message_payload" in tlv_values else data.draw(st.binary(max_size=254))
    ours = ShortMessage(**fields, short_message=sm, tlvs=tlvs_as_wire(cls, tlv_values))
    oracle = sl_make(name, seq, **fields, short_message=sm, **tlv_values).generate()

    assert encode(Pdu(cid, 0, seq, ours)) == oracle
    assert decode(oracle) == Pdu(cid, 0, seq, ours)


def test_realistic_receipt_matches_smpplib() -> None:
    text = (
        b"id:0123456789 sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 "
        b"stat:DELIVRD err:000 text:Hello"
    )
    oracle = sl_make(
        "deliver_sm", 77, source_addr="8613800138000", destination_addr="SENDER",
        esm_class=C.ESM_DELIVERY_RECEIPT, short_message=text,
        receipted_message_id="0123456789", message_state=2, network_error_code=b"\x03\x00\x00",
    ).generate()  # fmt: skip
    pdu = decode(oracle)
    body = pdu.body
    assert isinstance(body, ShortMessage)
    assert (pdu.command_id, pdu.seq) == (C.DELIVER_SM, 77)
    assert C.is_delivery_receipt(body.esm_class)
    assert body.short_message == text
    assert tlv_get(body.tlvs, C.RECEIPTED_MESSAGE_ID) == b"0123456789\0"
    assert tlv_int(body.tlvs, C.MESSAGE_STATE) == 2
    assert tlv_get(body.tlvs, C.NETWORK_ERROR_CODE) == b"\x03\x00\x00"
    assert encode(pdu) == oracle


@pytest.mark.parametrize(
    ("name", "cid"),
    [
        ("submit_sm_resp", C.SUBMIT_SM_RESP),
        ("deliver_sm_resp", C.DELIVER_SM_RESP),
        ("data_sm_resp", C.DATA_SM_RESP),
    ],
)
@SETTINGS
@given(message_id=cstr(65), seq=u32, status=u32)
def test_message_id_resps_match_smpplib(
    name: str, cid: int, message_id: str, seq: int, status: int
) -> None:
    oracle = sl_make(name, seq, status=status, message_id=message_id).generate()
    assert encode(Pdu(cid, status, seq, MessageIdResp(message_id))) == oracle
    assert decode(oracle) == Pdu(cid, status, seq, MessageIdResp(message_id))


@pytest.mark.parametrize(
    ("name", "cid"),
    [
        ("enquire_link", C.ENQUIRE_LINK),
        ("enquire_link_resp", C.ENQUIRE_LINK_RESP),
        ("unbind", C.UNBIND),
        ("unbind_resp", C.UNBIND_RESP),
        ("generic_nack", C.GENERIC_NACK),
    ],
)
@SETTINGS
@given(seq=u32, status=u32)
def test_header_only_pdus_match_smpplib(name: str, cid: int, seq: int, status: int) -> None:
    oracle = sl_make(name, seq, status=status).generate()
    assert len(oracle) == 16
    assert encode(Pdu(cid, status, seq)) == oracle
    assert decode(oracle) == Pdu(cid, status, seq, None)


@pytest.mark.parametrize(
    ("name", "cid"),
    [
        ("bind_transmitter", C.BIND_TRANSMITTER),
        ("bind_receiver", C.BIND_RECEIVER),
        ("bind_transceiver", C.BIND_TRANSCEIVER),
    ],
)
@SETTINGS
@given(
    seq=u32,
    system_id=cstr(16),
    password=cstr(9),
    system_type=cstr(13),
    version=u8,
    ton=u8,
    npi=u8,
    address_range=cstr(41),
)
def test_binds_match_smpplib(
    name: str, cid: int, seq: int, system_id: str, password: str, system_type: str,
    version: int, ton: int, npi: int, address_range: str,
) -> None:  # fmt: skip
    cmd = sl_make(
        name, seq, system_id=system_id, password=password, system_type=system_type,
        addr_ton=ton, addr_npi=npi, address_range=address_range,
    )  # fmt: skip
    cmd.interface_version = version  # smpplib's constructor forces 0x34
    oracle = cmd.generate()
    ours = Bind(system_id, password, system_type, version, ton, npi, address_range)
    assert encode(Pdu(cid, 0, seq, ours)) == oracle
    assert decode(oracle) == Pdu(cid, 0, seq, ours)


@pytest.mark.parametrize(
    ("name", "cid"),
    [
        ("bind_transmitter_resp", C.BIND_TRANSMITTER_RESP),
        ("bind_receiver_resp", C.BIND_RECEIVER_RESP),
        ("bind_transceiver_resp", C.BIND_TRANSCEIVER_RESP),
    ],
)
@SETTINGS
@given(seq=u32, system_id=cstr(16), version=st.none() | u8)
def test_bind_resps_match_smpplib(
    name: str, cid: int, seq: int, system_id: str, version: int | None
) -> None:
    oracle = sl_make(name, seq, system_id=system_id, sc_interface_version=version).generate()
    tlvs = () if version is None else ((C.SC_INTERFACE_VERSION, bytes([version])),)
    assert encode(Pdu(cid, 0, seq, BindResp(system_id, tlvs))) == oracle
    assert decode(oracle) == Pdu(cid, 0, seq, BindResp(system_id, tlvs))


def test_default_bind_is_version_34_like_smpplib() -> None:
    cmd = sl_make("bind_transceiver", 1, system_id="esme", password="secret")
    assert encode(Pdu(C.BIND_TRANSCEIVER, 0, 1, Bind("esme", "secret"))) == cmd.generate()


# --- round trips beyond what smpplib can express --------------------------------------------------
any_tlvs = st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=300)), max_size=6).map(
    tuple
)


@SETTINGS
@given(fields=sm_fields(), sm=st.binary(max_size=254), tlvs=any_tlvs, seq=u32, status=u32)
def test_short_message_round_trip_keeps_unknown_tlvs_in_order(
    fields: dict[str, Any], sm: bytes, tlvs: tuple[tuple[int, bytes], ...], seq: int, status: int
) -> None:
    pdu = Pdu(C.DELIVER_SM, status, seq, ShortMessage(**fields, short_message=sm, tlvs=tlvs))
    assert decode(encode(pdu)) == pdu


@SETTINGS
@given(message_id=cstr(65), tlvs=any_tlvs)
def test_message_id_resp_round_trip_with_tlvs(
    message_id: str, tlvs: tuple[tuple[int, bytes], ...]
) -> None:
    pdu = Pdu(C.SUBMIT_SM_RESP, 0, 9, MessageIdResp(message_id, tlvs))
    assert decode(encode(pdu)) == pdu


def test_decode_accepts_bytearray_and_memoryview() -> None:
    raw = encode(Pdu(C.SUBMIT_SM_RESP, 0, 3, MessageIdResp("abc")))
    assert decode(bytearray(raw)) == decode(memoryview(raw)) == decode(raw)


# --- decode errors --------------------------------------------------------------------------------
def sm_body(**overrides: Any) -> bytes:
    m = ShortMessage(source_addr="SRC", destination_addr="8613800138000", short_message=b"hi")
    for k, v in overrides.items():
        setattr(m, k, v)
    return encode(Pdu(C.SUBMIT_SM, 0, 1, m))[16:]


def raises(data: bytes) -> PduError:
    with pytest.raises(PduError) as info:
        decode(data)
    return info.value


def test_frame_shorter_than_header() -> None:
    err = raises(b"\x00\x00\x00\x0f" + bytes(11))
    assert (err.status, err.command_id, err.seq) == (C.ESME_RINVCMDLEN, 0, 0)
    assert err.code == "ESME_RINVCMDLEN"


@pytest.mark.parametrize("delta", [-1, 1, 1000])
def test_command_length_must_match_the_frame(delta: int) -> None:
    good = encode(Pdu(C.ENQUIRE_LINK, 0, 42))
    err = raises(struct.pack(">I", 16 + delta) + good[4:])
    assert (err.status, err.command_id, err.seq) == (C.ESME_RINVCMDLEN, C.ENQUIRE_LINK, 42)


@pytest.mark.parametrize("cid", [0x0, 0x0A, 0x16, 0x80000016, 0x00010200, 0xFFFFFFFF])
def test_unknown_command_id_carries_id_and_seq(cid: int) -> None:
    err = raises(frame(cid, b"", seq=1234))
    assert (err.status, err.command_id, err.seq) == (C.ESME_RINVCMDID, cid, 1234)
    assert "ESME_RINVCMDID" in str(err)


@pytest.mark.parametrize(
    ("field", "maxlen", "status"),
    [
        ("service_type", 6, C.ESME_RINVSERTYP),
        ("source_addr", 21, C.ESME_RINVSRCADR),
        ("destination_addr", 21, C.ESME_RINVDSTADR),
        ("schedule_delivery_time", 17, C.ESME_RINVSCHED),
        ("validity_period", 17, C.ESME_RINVEXPIRY),
    ],
)
def test_over_long_c_string_gets_the_field_status(field: str, maxlen: int, status: int) -> None:
    ok = ShortMessage(**{field: "1" * (maxlen - 1)})  # type: ignore[arg-type]
    assert getattr(decode(encode(Pdu(C.SUBMIT_SM, 0, 1, ok))).body, field) == "1" * (maxlen - 1)
    # Hand-build the same PDU with one more octet before the NUL.
    body = bytearray(encode(Pdu(C.SUBMIT_SM, 0, 5, ok))[16:])
    at = body.index(b"1" * (maxlen - 1))
    body[at:at] = b"1"
    err = raises(frame(C.SUBMIT_SM, bytes(body), seq=5))
    assert (err.status, err.command_id, err.seq) == (status, C.SUBMIT_SM, 5)
    assert field in err.message


def test_unterminated_string_at_end_of_frame_is_a_length_error() -> None:
    err = raises(frame(C.SUBMIT_SM, b"\0\x01\x01SRC"))  # source_addr runs into the end
    assert err.status == C.ESME_RINVCMDLEN
    assert "source_addr" in err.message


@pytest.mark.parametrize(
    ("field", "maxlen", "status"),
    [
        ("system_id", 16, C.ESME_RINVSYSID),
        ("password", 9, C.ESME_RINVPASWD),
        ("system_type", 13, C.ESME_RINVSYSTYP),
        ("address_range", 41, C.ESME_RINVMSGLEN),
    ],
)
def test_bind_field_limits(field: str, maxlen: int, status: int) -> None:
    values = {"system_id": "a", "password": "b", "system_type": "", "address_range": ""}
    values[field] = "x" * (maxlen - 1)
    ok = encode(Pdu(C.BIND_TRANSMITTER, 0, 3, Bind(**values)))
    assert getattr(decode(ok).body, field) == "x" * (maxlen - 1)
    body = bytearray(ok[16:])
    at = body.index(b"x" * (maxlen - 1))
    body[at:at] = b"x"
    err = raises(frame(C.BIND_TRANSMITTER, bytes(body), seq=3))
    assert (err.status, err.seq) == (status, 3)


def test_message_id_over_64_octets() -> None:
    """SMPP 3.4 allows 64; some SMSCs send more, and their receipts carry the whole id: kept
    (the session warns). Without its NUL it is still malformed."""
    assert decode(frame(C.SUBMIT_SM_RESP, b"9" * 64 + b"\0")).body == MessageIdResp("9" * 64)
    assert decode(frame(C.SUBMIT_SM_RESP, b"9" * 65 + b"\0")).body == MessageIdResp("9" * 65)
    err = raises(frame(C.SUBMIT_SM_RESP, b"9" * 65))
    assert err.status == C.ESME_RINVMSGID


def test_sm_length_longer_than_the_rest() -> None:
    body = sm_body()
    broken = body[:-3] + bytes([3]) + body[-2:]  # claims 3 octets, 2 follow
    err = raises(frame(C.SUBMIT_SM, broken))
    assert err.status == C.ESME_RINVMSGLEN
    assert "sm_length 3" in err.message


def test_sm_length_shorter_than_the_rest_leaves_garbage() -> None:
    body = sm_body()
    broken = body[:-3] + bytes([0]) + body[-2:]  # claims 0, 2 octets follow
    err = raises(frame(C.SUBMIT_SM, broken))
    assert err.status == C.ESME_RINVOPTPARSTREAM


def test_sm_length_255_is_accepted_on_decode_refused_on_encode() -> None:
    body = sm_body()[:-3] + bytes([255]) + b"x" * 255
    assert decode(frame(C.SUBMIT_SM, body)).body.short_message == b"x" * 255
    with pytest.raises(EncodeError) as info:
        encode(Pdu(C.SUBMIT_SM, 0, 1, ShortMessage(short_message=b"x" * 255)))
    assert info.value.field == "short_message"
    encode(Pdu(C.SUBMIT_SM, 0, 1, ShortMessage(short_message=b"x" * 254)))


def test_every_truncation_of_a_submit_sm_is_refused() -> None:
    body = sm_body(short_message=b"hello world")
    for cut in range(len(body)):
        err = raises(frame(C.SUBMIT_SM, body[:cut]))
        expected = C.ESME_RINVMSGLEN if cut >= len(body) - 11 else C.ESME_RINVCMDLEN
        assert err.status == expected, cut
        assert err.command_id == C.SUBMIT_SM


@pytest.mark.parametrize(
    "tail",
    [b"\x02", b"\x02\x0c\x00", b"\x02\x0c\x00\x02\x00", b"\x04\x24\xff\xff" + b"x" * 10],
)
def test_broken_tlv_stream(tail: bytes) -> None:
    err = raises(frame(C.DELIVER_SM, sm_body() + tail, seq=8))
    assert (err.status, err.seq) == (C.ESME_RINVOPTPARSTREAM, 8)


def test_zero_length_tlv_is_valid() -> None:
    body = decode(frame(C.SUBMIT_SM, sm_body() + b"\x13\x0c\x00\x00")).body
    assert body.tlvs == ((C.ALERT_ON_MESSAGE_DELIVERY, b""),)


@pytest.mark.parametrize("cid", [C.ENQUIRE_LINK, C.UNBIND_RESP, C.GENERIC_NACK])
def test_header_only_pdu_with_a_body_is_refused(cid: int) -> None:
    err = raises(frame(cid, b"\0"))
    assert (err.status, err.command_id) == (C.ESME_RINVCMDLEN, cid)


def test_bind_with_trailing_garbage() -> None:
    good = encode(Pdu(C.BIND_RECEIVER, 0, 1, Bind("a", "b")))[16:]
    assert raises(frame(C.BIND_RECEIVER, good + b"\0")).status == C.ESME_RINVCMDLEN


def test_error_resp_without_body_is_accepted() -> None:
    pdu = decode(header(16, C.SUBMIT_SM_RESP, C.ESME_RTHROTTLED, 7))
    assert pdu == Pdu(C.SUBMIT_SM_RESP, C.ESME_RTHROTTLED, 7, MessageIdResp(""))
    assert decode(header(16, C.BIND_TRANSCEIVER_RESP, C.ESME_RBINDFAIL)).body == BindResp()


def test_error_resp_with_broken_body_still_yields_its_status() -> None:
    pdu = decode(frame(C.SUBMIT_SM_RESP, b"no-nul", status=C.ESME_RSYSERR))
    assert (pdu.status, pdu.body) == (C.ESME_RSYSERR, MessageIdResp(""))


def test_ok_submit_sm_resp_without_message_id_is_refused() -> None:
    assert raises(header(16, C.SUBMIT_SM_RESP, 0, 7)).status == C.ESME_RINVCMDLEN
    assert raises(frame(C.SUBMIT_SM_RESP, b"abc")).status == C.ESME_RINVCMDLEN


def test_deliver_sm_resp_without_body_is_accepted() -> None:
    assert decode(header(16, C.DELIVER_SM_RESP, 0, 7)).body == MessageIdResp("")


ALL_CIDS = sorted(C.COMMAND_NAMES)


@settings(max_examples=600, deadline=None)
@given(cid=st.sampled_from(ALL_CIDS), status=st.sampled_from([0, 8]), body=st.binary(max_size=80))
def test_decode_raises_only_pdu_error_on_garbage(cid: int, status: int, body: bytes) -> None:
    try:
        pdu = decode(frame(cid, body, status=status))
    except PduError as e:
        assert e.command_id == cid
        assert e.status in C.STATUS_NAMES
    else:
        assert pdu.command_id == cid


# --- integer TLVs and TLV helpers -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (b"", None),
        (b"\x07", 7),
        (b"\x00\x07", 7),
        (b"\x01\x00\x07", 0x010007),
        (b"\xff\xff\xff\xff", 0xFFFFFFFF),
        (b"\x00\x00\x00\x00\x00\x09", 9),
        (b"\x01\x00\x00\x00\x00", None),
    ],
)
def test_tlv_int(value: bytes | None, expected: int | None) -> None:
    tlvs = () if value is None else ((C.MESSAGE_STATE, value),)
    assert tlv_int(tlvs, C.MESSAGE_STATE) == expected


def test_tlv_get_first_wins_and_missing_is_none() -> None:
    tlvs = ((1, b"a"), (2, b"b"), (1, b"c"))
    assert tlv_get(tlvs, 1) == b"a"
    assert tlv_get(tlvs, 3) is None


def test_odd_length_integer_tlv_on_the_hot_path() -> None:
    # sar_msg_ref_num is 2 octets by the book; an SMSC sends 3. We keep it raw and read it.
    body = sm_body() + b"\x02\x0c\x00\x03\x00\x01\x02" + b"\x02\x0e\x00\x01\x03"
    tlvs = decode(frame(C.DELIVER_SM, body)).body.tlvs
    assert tlv_int(tlvs, C.SAR_MSG_REF_NUM) == 0x000102
    assert tlv_int(tlvs, C.SAR_TOTAL_SEGMENTS) == 3


# --- data_sm: our decoder; smpplib objects still encode --------------------------------------
def data_sm_frame(tlvs: bytes, seq: int = 4) -> bytes:
    cmd = make_command("data_sm", source_addr="SRC", destination_addr="DST", esm_class=0)
    return frame(C.DATA_SM, encode(Pdu(C.DATA_SM, 0, seq, cmd))[16:] + tlvs, seq=seq)


def test_data_sm_odd_length_integer_tlv_does_not_corrupt_the_next_one() -> None:
    tail = b"\x04\x27\x00\x02\x00\x02" + b"\x04\x24\x00\x03abc"  # message_state as 2 octets
    raw = data_sm_frame(tail)
    try:  # the trap: smpplib reads 1 octet and misparses (or chokes on) what follows
        assert sl_parse(raw).message_payload != b"abc"
    except struct.error:
        pass
    body = decode(raw).body
    assert tlv_get(body.tlvs, C.MESSAGE_PAYLOAD) == b"abc"
    assert tlv_get(body.tlvs, C.MESSAGE_STATE) == b"\x00\x02"  # kept as sent


def test_data_sm_tlv_smpplib_knows_but_does_not_list(caplog: pytest.LogCaptureFixture) -> None:
    tail = b"\x02\x10\x00\x01\x34" + b"\xfe\xed\x00\x02hi" + b"\x04\x24\x00\x01z"
    raw = data_sm_frame(tail)
    with pytest.raises(KeyError):
        sl_parse(raw)  # sc_interface_version is not a data_sm parameter in smpplib
    with caplog.at_level(logging.WARNING):
        pdu = decode(raw)
    assert pdu.body.tlvs == (
        (C.SC_INTERFACE_VERSION, b"\x34"), (0xFEED, b"hi"), (C.MESSAGE_PAYLOAD, b"z"),
    )  # fmt: skip
    assert pdu.body.destination_addr == "DST"
    assert not [r for r in caplog.records if r.name.startswith("smpplib")]


def test_data_sm_round_trip_and_errors() -> None:
    cmd = make_command("data_sm", source_addr="S", destination_addr="D", message_payload=b"p")
    raw = encode(Pdu(C.DATA_SM, 0, 11, cmd))
    assert (
        raw
        == sl_make(
            "data_sm", 11, source_addr="S", destination_addr="D", message_payload=b"p"
        ).generate()
    )
    back = decode(raw)
    assert back.seq == 11 and encode(back) == raw  # ours decodes what smpplib built, byte for byte
    assert raises(raw[:-5] + b"\x04").status == C.ESME_RINVCMDLEN  # length mismatch
    assert raises(data_sm_frame(b"\x04\x24\x00")).status == C.ESME_RINVOPTPARSTREAM
    unterminated = frame(C.DATA_SM, b"\0\0\0" + b"S" * 70 + b"\0")
    assert raises(unterminated).status == C.ESME_RINVSRCADR


def test_query_sm_and_resp_through_smpplib() -> None:
    q = make_command("query_sm", message_id="ab12", source_addr="SENDER")
    raw = encode(Pdu(C.QUERY_SM, 0, 21, q))
    assert raw == sl_make("query_sm", 21, message_id="ab12", source_addr="SENDER").generate()
    back = decode(raw)
    assert (back.command_id, back.seq, back.body.message_id) == (C.QUERY_SM, 21, b"ab12")
    resp = frame(C.QUERY_SM_RESP, b"ab12\0" + b"\0" + b"\x02" + b"\x00", seq=21)
    body = decode(resp).body
    assert (body.message_id, body.message_state, body.error_code) == (b"ab12", 2, 0)
    extra = frame(C.QUERY_SM_RESP, b"ab12\0\0\x02\x00\x99")
    assert raises(extra).status == C.ESME_RINVCMDLEN
    assert decode(header(16, C.QUERY_SM_RESP, C.ESME_RQUERYFAIL)).status == C.ESME_RQUERYFAIL


def test_alert_notification_through_smpplib() -> None:
    body = b"\x01\x01123\0\x01\x01456\0" + b"\x04\x22\x00\x01\x00"
    cmd = decode(frame(C.ALERT_NOTIFICATION, body)).body
    assert (cmd.source_addr, cmd.esme_addr, cmd.ms_availability_status) == (b"123", b"456", 0)


@pytest.mark.parametrize(
    "cid", [C.OUTBIND, C.REPLACE_SM, C.CANCEL_SM, C.SUBMIT_MULTI, C.SUBMIT_MULTI_RESP]
)
def test_pdus_smpplib_cannot_build_are_raw(cid: int) -> None:
    pdu = decode(frame(cid, b"\x01\x02\x03", seq=5))
    assert pdu == Pdu(cid, 0, 5, b"\x01\x02\x03")
    assert encode(pdu) == frame(cid, b"\x01\x02\x03", seq=5)


def test_cancel_and_replace_resps_are_header_only() -> None:
    for cid in (C.CANCEL_SM_RESP, C.REPLACE_SM_RESP):
        assert decode(header(16, cid, C.ESME_RCANCELFAIL, 2)).body is None
        assert encode(Pdu(cid, C.ESME_RCANCELFAIL, 2)) == header(16, cid, C.ESME_RCANCELFAIL, 2)


def test_smpplib_command_must_match_the_command_id() -> None:
    with pytest.raises(EncodeError) as info:
        encode(Pdu(C.DATA_SM, 0, 1, make_command("query_sm", message_id="1")))
    assert info.value.field == "body"
    with pytest.raises(EncodeError):
        encode(Pdu(C.QUERY_SM, 0, 1, make_command("query_sm")))  # smpplib: message_id mandatory


# --- encode errors --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "field"),
    [
        (ShortMessage(source_addr="1" * 21), "source_addr"),
        (ShortMessage(destination_addr="1" * 21), "destination_addr"),
        (ShortMessage(service_type="CMTXYZ"), "service_type"),
        (ShortMessage(validity_period="0" * 17), "validity_period"),
        (ShortMessage(source_addr="a\0b"), "source_addr"),
        (ShortMessage(source_addr="☃"), "source_addr"),
        (ShortMessage(data_coding=256), "data_coding"),
        (ShortMessage(esm_class=-1), "esm_class"),
        (ShortMessage(short_message="text"), "short_message"),  # type: ignore[arg-type]
        (ShortMessage(tlvs=((0x10000, b""),)), "tlvs"),
        (ShortMessage(tlvs=((1, b"x" * 65536),)), "tlvs"),
        (ShortMessage(tlvs=((1, "str"),)), "tlvs"),  # type: ignore[arg-type]
    ],
)
def test_encode_refuses_bad_fields(body: ShortMessage, field: str) -> None:
    with pytest.raises(EncodeError) as info:
        encode(Pdu(C.SUBMIT_SM, 0, 1, body))
    assert info.value.field == field
    assert info.value.code == "SMPP_ENCODE_INVALID"


def test_encode_boundaries_are_exact() -> None:
    raw = encode(Pdu(C.SUBMIT_SM, 0, 1, ShortMessage(source_addr="1" * 20, service_type="CMTXY")))
    assert decode(raw).body.source_addr == "1" * 20
    with pytest.raises(EncodeError):
        encode(Pdu(C.BIND_TRANSMITTER, 0, 1, Bind("s" * 16, "p")))
    with pytest.raises(EncodeError):
        encode(Pdu(C.BIND_TRANSMITTER, 0, 1, Bind("s", "p" * 9)))
    encode(Pdu(C.BIND_TRANSMITTER, 0, 1, Bind("s" * 15, "p" * 8)))
    with pytest.raises(EncodeError) as info:
        encode(Pdu(C.BIND_TRANSMITTER, 0, 1, Bind("s", "p", interface_version=0x100)))
    assert info.value.field == "interface_version"


def test_encode_refuses_oversize_pdu() -> None:
    big = ((0x1400, b"x" * 65000), (0x1401, b"y" * 1000))
    with pytest.raises(EncodeError):
        encode(Pdu(C.SUBMIT_SM, 0, 1, ShortMessage(tlvs=big)))
    limit = MAX_PDU - 16 - len(encode(Pdu(C.SUBMIT_SM, 0, 1, ShortMessage()))[16:]) - 4
    ok = encode(Pdu(C.SUBMIT_SM, 0, 1, ShortMessage(tlvs=((0x1400, b"x" * limit),))))
    assert len(ok) == MAX_PDU


@pytest.mark.parametrize(
    ("cid", "body"),
    [
        (C.SUBMIT_SM, None),
        (C.BIND_TRANSMITTER, None),
        (C.DELIVER_SM, MessageIdResp("x")),
        (C.SUBMIT_SM_RESP, ShortMessage()),
        (C.BIND_RECEIVER, BindResp()),
        (C.SUBMIT_SM, {"short_message": b"x"}),
    ],
)
def test_encode_refuses_body_that_does_not_fit_the_command(cid: int, body: Any) -> None:
    with pytest.raises(EncodeError):
        encode(Pdu(cid, 0, 1, body))


def test_encode_refuses_out_of_range_header() -> None:
    with pytest.raises(EncodeError) as info:
        encode(Pdu(C.ENQUIRE_LINK, 0, 2**32))
    assert info.value.field == "header"


def test_resp_without_body_encodes_header_only() -> None:
    raw = encode(Pdu(C.SUBMIT_SM_RESP, C.ESME_RTHROTTLED, 9))
    assert raw == header(16, C.SUBMIT_SM_RESP, C.ESME_RTHROTTLED, 9)


# --- salvage --------------------------------------------------------------------------------------
RECEIPT_TEXT = (
    b"id:B8BE19 sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 stat:DELIVRD"
)


def test_salvage_returns_a_valid_deliver_sm_as_decoded() -> None:
    m = ShortMessage(esm_class=4, short_message=b"hello MO")
    assert salvage_deliver_sm(encode(Pdu(C.DELIVER_SM, 0, 1, m))) == m


def test_salvage_over_long_address_keeps_everything_after_it() -> None:
    m = ShortMessage(
        source_addr="8613800138000", destination_addr="SENDER", esm_class=4,
        short_message=RECEIPT_TEXT, tlvs=((C.RECEIPTED_MESSAGE_ID, b"B8BE19\0"),),
    )  # fmt: skip
    body = bytearray(encode(Pdu(C.DELIVER_SM, 0, 1, m))[16:])
    body[body.index(b"SENDER") : body.index(b"SENDER")] = b"X" * 30  # destination_addr of 36
    broken = frame(C.DELIVER_SM, bytes(body))
    assert raises(broken).status == C.ESME_RINVDSTADR
    got = salvage_deliver_sm(broken)
    assert got is not None
    assert got.destination_addr == "X" * 30 + "SENDER"
    assert (got.esm_class, got.short_message) == (4, RECEIPT_TEXT)
    assert tlv_get(got.tlvs, C.RECEIPTED_MESSAGE_ID) == b"B8BE19\0"


def test_salvage_broken_tlv_tail_keeps_the_good_tlvs() -> None:
    tlvs = ((C.RECEIPTED_MESSAGE_ID, b"77\0"), (C.MESSAGE_STATE, b"\2"))
    m = ShortMessage(esm_class=4, tlvs=tlvs)
    broken = frame(C.DELIVER_SM, encode(Pdu(C.DELIVER_SM, 0, 1, m))[16:] + b"\x04\x27\x00")
    got = salvage_deliver_sm(broken)
    assert got is not None
    assert got.tlvs == m.tlvs


def test_salvage_finds_receipt_text_when_the_walk_breaks_early() -> None:
    # sm_length is missing and the text is not where it should be: the walk stops early.
    broken = frame(C.DELIVER_SM, b"\0\x01\x01123\0\x01\x01" + RECEIPT_TEXT)
    got = salvage_deliver_sm(broken)
    assert got is not None
    assert got.short_message == RECEIPT_TEXT
    assert got.source_addr == "123"
    assert C.is_delivery_receipt(got.esm_class)


def test_salvage_without_receipt_fields_is_none() -> None:
    m = ShortMessage(short_message=b"an ordinary MO")
    body = encode(Pdu(C.DELIVER_SM, 0, 1, m))[16:]
    assert salvage_deliver_sm(frame(C.DELIVER_SM, body + b"\x01")) is None
    assert salvage_deliver_sm(frame(C.SUBMIT_SM, b"id:123 stat:DELIVRD")) is None
    assert salvage_deliver_sm(b"\x00\x00") is None


# --- constants ------------------------------------------------------------------------------------
def test_status_codes_match_smpplib() -> None:
    for name in dir(sl_consts):
        if name.startswith("SMPP_ESME_"):
            assert getattr(C, name[5:]) == getattr(sl_consts, name), name
    smpp34 = [code for code in C.STATUS_NAMES if code < 0x100]
    assert len(smpp34) == len([n for n in dir(sl_consts) if n.startswith("SMPP_ESME_")])
    assert (C.ESME_RINVDCS, C.status_name(0x104)) == (0x104, "ESME_RINVDCS")  # SMPP 5.0


def test_command_ids_match_smpplib() -> None:
    assert dict(sl_codes.commands) == {v: k for k, v in C.COMMAND_NAMES.items()}
    for cid, name in C.COMMAND_NAMES.items():
        assert getattr(C, name.upper()) == cid
        if not cid & C.RESP_BIT and name + "_resp" in sl_codes.commands:
            assert getattr(C, name.upper() + "_RESP") == cid | 0x80000000


def test_tlv_tags_match_smpplib() -> None:
    assert {v: k for k, v in sl_consts.OPTIONAL_PARAMS.items()} == C.TLV_NAMES
    assert C.DEST_PORT == C.DESTINATION_PORT == 0x020B
    assert C.tlv_name(0x0424) == "message_payload"
    assert C.tlv_name(0x1400) == "0x1400"


def test_names() -> None:
    assert C.status_name(0x0B) == "ESME_RINVDSTADR"
    assert C.status_name(0) == "ESME_ROK"
    assert C.status_name(0x400) == "0x00000400"
    assert C.status_name(0x09) == "0x00000009"
    assert C.command_name(C.DELIVER_SM_RESP) == "deliver_sm_resp"
    assert C.command_name(0x16) == "0x00000016"


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (C.ESME_ROK, "ok"),
        (C.ESME_RTHROTTLED, "throttled"),
        (C.ESME_RMSGQFUL, "throttled"),
        (C.ESME_RSYSERR, "transient"),
        (C.ESME_RX_T_APPN, "transient"),
        (C.ESME_RUNKNOWNERR, "transient"),
        (C.ESME_RSUBMITFAIL, "transient"),
        (C.ESME_RINVBNDSTS, "transient"),
        (C.ESME_RDELIVERYFAILURE, "transient"),
        (C.ESME_RINVDSTADR, "permanent"),
        (C.ESME_RINVSRCADR, "permanent"),
        (C.ESME_RX_P_APPN, "permanent"),
        (C.ESME_RX_R_APPN, "permanent"),
        (C.ESME_RINVDCS, "permanent"),
        (C.ESME_RSERTYPUNAVAIL, "transient"),
        (C.ESME_RSERTYPDENIED, "permanent"),
        (C.ESME_RINVMSGLEN, "permanent"),
        (0x400, "permanent"),
        (0x12345678, "permanent"),
    ],
)
def test_classify_submit_status(code: int, outcome: str) -> None:
    assert C.classify_submit_status(code) == outcome


@pytest.mark.parametrize(
    ("esm", "receipt"),
    [(0x04, True), (0x44, True), (0x84 | 0x03, True), (0x00, False), (0x08, False),
     (0x24, False), (0x40, False), (0x20, False)],
)  # fmt: skip
def test_is_delivery_receipt(esm: int, receipt: bool) -> None:
    assert C.is_delivery_receipt(esm) is receipt
