"""The codec's fast paths for the PDUs of a one-part message (session 55).

`codec._plain_sm` writes a submit_sm's body without UDH or TLVs as one latin-1 text encoded
once; `codec.encode_sm_request` writes the whole submit_sm without a `Pdu` dispatched on its
body's type; `codec._decode_sm` reads the C-strings inline. Each must give what the general
path gives, for every value: the same octets, or the same refusal (`EncodeError` naming the
same field, with the same message) for a value the general path refuses. The random fields
here are mostly valid and often strange (NULs, characters beyond latin-1, over-long strings,
negative, large, bool and float integers, bytearray and str bodies, UDH flags, TLVs).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.smpp import codec
from bridge.smpp import constants as C
from bridge.smpp.codec import (
    EncodeError,
    Pdu,
    PduError,
    ShortMessage,
    decode,
    encode,
    encode_sm_request,
)
from bridge.smpp.session import BindMode, BindSession
from tests.unit.test_smpp_codec import SETTINGS, sl_make

# Twenty-odd fields, each of which may be the odd one: more examples than the codec tests'.
MANY = settings(SETTINGS, max_examples=600)

_STR_FIELDS = (
    ("service_type", 6),
    ("source_addr", 21),
    ("destination_addr", 21),
    ("schedule_delivery_time", 17),
    ("validity_period", 17),
)
_INT_FIELDS = codec._SM_INT_FIELDS


_ODD_TEXT = st.one_of(
    st.text(st.characters(min_codepoint=0, max_codepoint=0x2FF), max_size=24),
    st.binary(max_size=4),
    st.none(),
)
_ODD_INT = st.one_of(
    st.integers(-300, -1),
    st.integers(256, 300),
    st.sampled_from([True, False, 1.0, 2**70, -(2**70), "1", None]),
)
_ODD_BODY = st.one_of(
    st.binary(min_size=250, max_size=260), st.binary(max_size=8).map(bytearray), st.just("text")
)
_SAR = (
    (C.SAR_MSG_REF_NUM, b"\x00\x07"),
    (C.SAR_TOTAL_SEGMENTS, b"\x03"),
    (C.SAR_SEGMENT_SEQNUM, b"\x02"),
)
# The TLVs a part carries (SAR's three, a payload's message_payload), and odd ones the general
# path refuses (a tag or a value out of range, a value not bytes) or whose PDU would exceed
# MAX_PDU (refused by encode; session 57's plain path takes TLVs).
_TLVS = st.one_of(
    st.just(()),
    st.just(()),
    st.just(((C.USER_MESSAGE_REFERENCE, b"\x00\x07"),)),
    st.just(_SAR),
    st.binary(max_size=300).map(lambda b: ((C.MESSAGE_PAYLOAD, b),)),
    st.sampled_from(
        [
            ((0x10000, b"x"),),
            ((-1, b"x"),),
            ((C.MESSAGE_PAYLOAD, "text"),),
            ((C.MESSAGE_PAYLOAD, b"x" * 65536),),
            ((C.MESSAGE_PAYLOAD, b"x" * 65495),),
            ((C.MESSAGE_PAYLOAD, b"x" * 65530),),
            (C.MESSAGE_PAYLOAD, b"x"),
            ((C.MESSAGE_PAYLOAD,),),
        ]
    ),
)


@st.composite
def short_messages(draw: st.DrawFn) -> ShortMessage:
    """Valid fields (latin-1 strings of any length they may have, octets), then up to two
    of them made odd: one odd value among valid ones is what a fast path may miss."""
    text = st.characters(min_codepoint=1, max_codepoint=255)
    fields: dict[str, Any] = {name: draw(st.text(text, max_size=n - 1)) for name, n in _STR_FIELDS}
    fields.update({name: draw(st.integers(0, 255)) for name in _INT_FIELDS})
    fields["short_message"] = draw(st.binary(max_size=254))
    fields["tlvs"] = draw(_TLVS)
    names = [name for name, _n in _STR_FIELDS] + list(_INT_FIELDS) + ["short_message"]
    for name in draw(st.lists(st.sampled_from(names), max_size=2)):
        if name == "short_message":
            fields[name] = draw(_ODD_BODY)
        elif name in _INT_FIELDS:
            fields[name] = draw(_ODD_INT)
        else:
            fields[name] = draw(_ODD_TEXT)
    return ShortMessage(**fields)


def _outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", fn(*args)
    except EncodeError as e:
        return "EncodeError", (e.field, e.message)
    except Exception as e:  # what the general path raised before, raised the same
        return type(e).__name__, str(e)


@MANY
@given(short_messages())
def test_the_plain_path_writes_what_the_general_path_writes(m: ShortMessage) -> None:
    plain = codec._plain_sm(m)
    general = _outcome(codec._encode_sm_general, m)
    if plain is not None:
        assert general == ("ok", plain)
    assert _outcome(codec._encode_sm, m) == general


@MANY
@given(short_messages(), st.sampled_from([C.SUBMIT_SM, C.DELIVER_SM]), st.integers(-1, 2**32))
def test_a_request_is_what_encode_makes_of_its_pdu(m: ShortMessage, cid: int, seq: int) -> None:
    assert _outcome(encode_sm_request, cid, seq, m) == _outcome(encode, Pdu(cid, 0, seq, m))


@SETTINGS
@given(short_messages())
def test_a_valid_body_reads_back_as_written(m: ShortMessage) -> None:
    try:
        frame = encode(Pdu(C.DELIVER_SM, 0, 9, m))
    except (EncodeError, TypeError):  # TypeError: a float esm_class, as before
        return
    got = decode(frame).body
    assert isinstance(got, ShortMessage)
    assert encode(Pdu(C.DELIVER_SM, 0, 9, got)) == frame
    for name, _n in _STR_FIELDS:
        assert getattr(got, name) == getattr(m, name)
    assert got.short_message == bytes(m.short_message)


def _read(fn: Any, *args: Any) -> tuple[Any, ...]:
    try:
        return "ok", fn(*args)
    except PduError as e:
        return "PduError", e.status, str(e)
    except Exception as e:  # IndexError, struct.error: decode names them truncated
        return (type(e).__name__,)


@st.composite
def sm_bodies(draw: st.DrawFn) -> bytes:
    """A submit_sm or deliver_sm frame field by field: each C-string up to one octet past its
    maximum (its NUL then out of reach) or without its NUL, the integers any octets, the
    sm_length right or not, and the frame maybe cut short."""
    out = bytearray(b"\0" * 16)
    octet = st.integers(1, 255)
    odd = draw(st.sampled_from([None, 0, 1, 2, 3, 4]))  # the C-string made odd, if one
    for k, (maxlen, ints) in enumerate(((6, 2), (21, 2), (21, 3), (17, 0), (17, 5))):
        if k == odd:
            size = draw(st.sampled_from([maxlen - 1, maxlen, maxlen + 1]))
        else:
            size = draw(st.integers(0, maxlen - 1))
        out += bytes(draw(st.lists(octet, min_size=size, max_size=size)))
        if k != odd or draw(st.booleans()):
            out += b"\0"
        out += bytes(draw(st.lists(st.integers(0, 255), min_size=ints, max_size=ints)))
    sm = draw(st.binary(max_size=40))
    if len(out) >= 1:
        out[-1] = draw(st.sampled_from([len(sm), len(sm) + 1, 0, 255]))
    out += sm + draw(st.sampled_from([b"", b"\x04\x1e\x00\x02ab", b"\x04"]))
    if draw(st.integers(0, 4)) == 0:
        del out[draw(st.integers(16, len(out))) :]
    return bytes(out)


@MANY
@given(st.one_of(sm_bodies(), short_messages()))
def test_one_match_reads_the_c_strings_the_finds_read(got: bytes | ShortMessage) -> None:
    """`_decode_sm` reads the five C-strings with one match (session 57), the body it does not
    match with the finds (`_decode_sm_checked`): the same body or the same refusal for every
    frame, valid ones and ones with a C-string at or past its maximum, without its NUL, or cut
    short."""
    if isinstance(got, ShortMessage):
        try:
            got = encode(Pdu(C.DELIVER_SM, 0, 9, got))
        except (EncodeError, TypeError):
            return
    assert _read(codec._decode_sm, got, 0) == _read(codec._decode_sm_checked, got)


def test_the_usual_submit_sm_encodes_no_c_string_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A one-part message's submit_sm takes the plain path (no `_ecs` per C-string), and is
    smpplib's octets for octets."""
    part = ShortMessage(
        "", 5, 0, "BRIDGE", 1, 1, "8613800138000", 0, 0, 0, "", "", 1, 0, 0, 0,
        b"Your verification code is 123456.",
    )  # fmt: skip
    oracle = sl_make(
        "submit_sm", 3, source_addr_ton=5, source_addr_npi=0, source_addr="BRIDGE",
        dest_addr_ton=1, dest_addr_npi=1, destination_addr="8613800138000",
        registered_delivery=1, short_message=part.short_message,
    ).generate()  # fmt: skip

    def refused(*_a: Any) -> bytes:
        raise AssertionError("a C-string encoded alone")

    session = BindSession(codec.Bind("a", "b"), BindMode.TRANSCEIVER)
    session.start(0.0)
    session.data_to_send()
    session.receive_data(encode(Pdu(C.BIND_TRANSCEIVER_RESP, 0, 1, codec.BindResp("s"))), 0.0)
    monkeypatch.setattr(codec, "_ecs", refused)
    assert session.submit(part, 0.0) == 2
    assert session.data_to_send()[16:] == oracle[16:]
    assert encode(Pdu(C.SUBMIT_SM, 0, 3, part)) == oracle


def test_a_receipt_is_read_without_a_call_per_c_string(monkeypatch: pytest.MonkeyPatch) -> None:
    """A deliver_sm's C-strings are read inline (no `_dcs` each), with the same refusals."""
    body = ShortMessage(
        "", 1, 1, "8613800138000", 5, 0, "BRIDGE", C.ESM_DELIVERY_RECEIPT,
        short_message=b"id:0012D687 stat:DELIVRD err:000",
    )  # fmt: skip
    frame = encode(Pdu(C.DELIVER_SM, 0, 4, body))

    def refused(*_a: Any) -> Any:
        raise AssertionError("a C-string read by a call")

    monkeypatch.setattr(codec, "_dcs", refused)
    assert decode(frame).body == body
    # An address without its NUL within 21 octets: refused as before, naming it.
    bad = frame[:19] + b"8" * 30 + frame[19 + len("8613800138000") :]
    bad = len(bad).to_bytes(4, "big") + bad[4:]
    with pytest.raises(PduError) as e:
        decode(bad)
    assert e.value.status == C.ESME_RINVSRCADR
