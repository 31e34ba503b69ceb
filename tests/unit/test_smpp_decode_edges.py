"""The SMPP engine against unusual SMSCs, without sockets (cases found by a review): the
session, the receipt parser and the id normalisation as the inbound pipeline applies it.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from bridge.config import SmscConfig
from bridge.pipeline.dispatcher import msgid_rule
from bridge.pipeline.inbound import Inbound
from bridge.smpp import constants as C
from bridge.smpp.codec import Bind, BindResp, Pdu, ShortMessage, encode
from bridge.smpp.msgid import normalize_resp_id
from bridge.smpp.receipt import ReceiptState, receipt_from_fields
from bridge.smpp.session import BindMode, BindSession, ProtocolError, SubmitResponse
from bridge.store.models import ReceiptOutcome


def _bound_session() -> BindSession:
    s = BindSession(Bind("esme", "pw"), BindMode.TRANSCEIVER)
    s.start(0.0)
    s.data_to_send()
    s.receive_data(encode(Pdu(C.BIND_TRANSCEIVER_RESP, 0, 1, BindResp("SMSC"))), 0.1)
    assert s.is_bound
    return s


@pytest.mark.parametrize(
    "body",
    [
        b"ABC123\x00\x00",  # message_id padded with a second NUL
        b"ABC123\x00\x00\x00",  # ... or a few stray octets after it
    ],
)
def test_submit_sm_resp_keeps_its_message_id_despite_trailing_octets(body: bytes) -> None:
    """An SMSC that pads submit_sm_resp after a well-formed message_id: the session reports the
    submit accepted (status 0) but with message_id "", so the segment is recorded 'sent' under an
    empty id and its receipt (id:ABC123) can never be matched."""
    s = _bound_session()
    seq = s.submit(ShortMessage(short_message=b"hi"), 1.0)
    frame = struct.pack(">IIII", 16 + len(body), C.SUBMIT_SM_RESP, 0, seq) + body
    events = s.receive_data(frame, 1.1)
    (resp,) = [e for e in events if isinstance(e, SubmitResponse)]
    assert resp.status == 0
    assert resp.message_id == "ABC123"


def test_a_submit_sm_resp_id_longer_than_64_octets_is_kept_whole_with_a_warning() -> None:
    """Some SMSCs send longer ids (a vendor prefix on a UUID): dropped, the part was recorded
    'sent' with no id and its receipts never matched. An id with no NUL before the PDU's end is
    still malformed: the part is accepted with no id, as before."""
    s = _bound_session()
    long_id = "SMSC-" + "0123456789abcdef" * 5
    seq = s.submit(ShortMessage(short_message=b"hi"), 1.0)
    body = long_id.encode() + b"\x00"
    events = s.receive_data(
        struct.pack(">IIII", 16 + len(body), C.SUBMIT_SM_RESP, 0, seq) + body, 1.1
    )
    (resp,) = [e for e in events if isinstance(e, SubmitResponse)]
    assert (resp.status, resp.message_id) == (0, long_id)
    (warning,) = [e for e in events if isinstance(e, ProtocolError)]
    assert "message_id of 85 octets" in warning.message and not warning.fatal
    seq = s.submit(ShortMessage(short_message=b"hi"), 2.0)
    body = long_id.encode()  # no NUL
    events = s.receive_data(
        struct.pack(">IIII", 16 + len(body), C.SUBMIT_SM_RESP, 0, seq) + body, 2.1
    )
    (resp,) = [e for e in events if isinstance(e, SubmitResponse)]
    assert (resp.status, resp.message_id) == (0, "")


def test_receipt_stat_with_a_trailing_nul_is_delivered() -> None:
    """Receipt text that carries its C-string NUL inside short_message (sm_length counts it) and
    ends at `stat:`: the stat word keeps the NUL, is not recognised and the delivered message is
    reported UNKNOWN (a final failure). The id is cleaned of the NUL, the stat is not."""
    text = "id:1A2B sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 stat:DELIVRD\x00"
    r = receipt_from_fields(text, None, None, None)
    assert r is not None
    assert r.message_id == "1A2B"
    assert r.state is ReceiptState.DELIVERED


class _CapturingStore:
    def __init__(self) -> None:
        self.items: list[Any] = []

    async def apply_receipts(self, items: list[Any], now: int) -> ReceiptOutcome:
        self.items.extend(items)
        return ReceiptOutcome(0, len(items))


async def test_receipted_message_id_tlv_is_normalised_like_the_submit_sm_resp_id() -> None:
    """The lesson's classic SMSC: submit_sm_resp id in hex, receipt text `id:` in decimal, and the
    receipted_message_id TLV (SMPP 3.4 5.3.2.12: the id *returned in submit_sm_resp*) in hex too,
    exactly as bridge/sim sends with receipt_text_id=dec. Configured resp_id_base=hex,
    receipt_id_base=dec. Inbound prefers the TLV (right) but normalises it with receipt_id_base
    (wrong): the hex id 00000012 (= 18) is read as decimal 12, so the receipt is filed under
    message 0x0C's key instead of 0x12's -- another message gets this message's status."""
    cfg = SmscConfig(
        name="s1",
        host="127.0.0.1",
        port=2775,
        system_id="esme",
        resp_id_base="hex",
        receipt_id_base="dec",
    )
    store = _CapturingStore()
    inbound = Inbound(store, {"s1": cfg})  # type: ignore[arg-type]
    resp_id = "00000012"  # submit_sm_resp message_id (hex) of message #18
    resp_key = normalize_resp_id(resp_id, msgid_rule(cfg))
    assert resp_key == "18"
    body = ShortMessage(
        esm_class=C.ESM_DELIVERY_RECEIPT,
        short_message=(
            b"id:18 sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 "
            b"stat:DELIVRD err:000 text:hi"
        ),
        tlvs=((C.RECEIPTED_MESSAGE_ID, resp_id.encode() + b"\x00"), (C.MESSAGE_STATE, b"\x02")),
    )
    assert await inbound.on_deliver("s1", body) == C.ESME_ROK
    (item,) = store.items
    assert item.smsc_msg_id == resp_key  # actual: "12", the key of message 0x0C


async def test_a_receipt_carried_in_message_payload_is_not_dropped() -> None:
    """SMPP 3.4 5.3.2.32: deliver_sm may carry its text in message_payload with sm_length 0
    (short_message and message_payload are mutually exclusive). A receipt sent that way without
    the receipted_message_id TLV: Inbound reads short_message only, finds no id, counts it
    'unparsable' -- and answers ESME_ROK, so the SMSC never resends it: the receipt is lost."""
    cfg = SmscConfig(name="s1", host="127.0.0.1", port=2775, system_id="esme")
    store = _CapturingStore()
    inbound = Inbound(store, {"s1": cfg})  # type: ignore[arg-type]
    text = (
        b"id:B8BE19 sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 "
        b"stat:DELIVRD err:000 text:hello"
    )
    body = ShortMessage(
        esm_class=C.ESM_DELIVERY_RECEIPT,
        short_message=b"",
        tlvs=((C.MESSAGE_PAYLOAD, text),),
    )
    status = await inbound.on_deliver("s1", body)
    assert inbound.unparsable == 0 and len(store.items) == 1, (
        f"receipt dropped (status {status:#x}, unparsable={inbound.unparsable})"
    )
    assert store.items[0].smsc_msg_id == "B8BE19"


def test_a_malformed_deliver_sm_is_answered_with_deliver_sm_resp_not_generic_nack() -> None:
    """SMPP 3.4 4.3.1: generic_nack answers only an invalid command_length or an unknown
    command_id. A deliver_sm whose header is fine but whose body breaks a field limit (here an MO
    from a 25-character alphanumeric sender, which some SMSCs do send) is answered generic_nack
    ESME_RINVSRCADR, not deliver_sm_resp: the SMSC's deliver_sm stays unanswered in its window
    (or is failed outright), and the MO is lost."""
    s = _bound_session()
    sender = b"A-VERY-LONG-SENDER-NAME-X"  # 25 octets, no NUL within the 21 allowed
    body = (
        b"\x00"
        + b"\x05\x00"
        + sender
        + b"\x00"
        + b"\x01\x01"
        + b"10086\x00"
        + b"\x00\x00\x00"
        + b"\x00"
        + b"\x00"
        + b"\x00\x00\x00\x00"
        + b"\x02"
        + b"hi"
    )
    frame = struct.pack(">IIII", 16 + len(body), C.DELIVER_SM, 0, 4242) + body
    s.receive_data(frame, 1.0)
    out = s.data_to_send()
    _length, cid, status, seq = struct.unpack(">IIII", out[:16])
    assert seq == 4242 and status != 0
    assert cid == C.DELIVER_SM_RESP, f"answered {C.command_name(cid)}"
