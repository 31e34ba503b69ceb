"""The parts of a longer message: each part's submit_sm written in one piece (codec._plain_sm).

Until session 57 a part with a UDH (esm_class UDHI) or TLVs (SAR, message_payload) was refused
by the plain path and written by the general one, its fixed fields' octets kept per message
(`_SM_SHARED`, session 51: five C-strings encoded for the first part, reused by the next). Now
every part takes the plain path: no C-string is encoded alone, for any split. These tests
check that, and that whatever order parts of several messages come in (fields shared, equal
but not the same objects, or invalid), each PDU is smpplib's byte for byte.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.config import parse_config
from bridge.pipeline.submit_sm import build_parts
from bridge.smpp import codec
from bridge.smpp import constants as C
from bridge.smpp.codec import EncodeError, Pdu, ShortMessage, encode, encode_sm_request
from bridge.smpp.tlvpack import pack_tlvs
from bridge.store.models import WorkMessage, WorkSegment
from bridge.text import EncodeOptions, encode_message
from bridge.text.split import SplitMode
from tests.unit.test_smpp_codec import SETTINGS, cstr, sl_make

KEY = "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2s="


def _parts(split: SplitMode, recipient: str) -> list[ShortMessage]:
    smsc = {"name": "s", "host": "127.0.0.1", "port": 1, "system_id": "a", "password": "b"}
    cfg = parse_config({"security": {"master_key": KEY}, "smscs": [smsc]}, env={})
    enc = encode_message("验" * (67 * 3 - 9), EncodeOptions(split=split), 0x42)
    segments = tuple(
        WorkSegment(p.seq, p.total, p.esm_class, p.short_message, pack_tlvs(p.tlvs), 0)
        for p in enc.parts
    )
    msg = WorkMessage("msg_1", "acc", recipient, "BRIDGE", enc.data_coding, 0, 0, segments)
    return build_parts(msg, cfg.smscs[0])


@pytest.mark.parametrize("split", list(SplitMode))
def test_a_messages_parts_encode_no_c_string_alone(
    split: SplitMode, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    real = codec._ecs

    def counted(value: str, maxlen: int, field: str) -> bytes:
        calls.append(field)
        return real(value, maxlen, field)

    monkeypatch.setattr(codec, "_ecs", counted)
    parts = _parts(split, "+8613800138000")
    assert len(parts) == (1 if split is SplitMode.PAYLOAD else 3)
    pdus = [encode(Pdu(C.SUBMIT_SM, 0, 7 + i, p)) for i, p in enumerate(parts)]
    # The session's own call (encode_sm_request) writes the same octets.
    assert [encode_sm_request(C.SUBMIT_SM, 7 + i, p) for i, p in enumerate(parts)] == pdus
    # Messages in flight together interleave their parts on a bind (part k+1 leaves once part
    # k is answered): none encodes a C-string alone either (5 a message before session 57,
    # 15 before session 51).
    many = [_parts(split, f"+86139000000{k:02d}") for k in range(40)]
    for seq in range(len(parts)):
        for k, msg_parts in enumerate(many):
            encode(Pdu(C.SUBMIT_SM, 0, 100 * k + seq, msg_parts[seq]))
    assert calls == []
    for i, (p, pdu) in enumerate(zip(parts, pdus, strict=True)):
        fields = {
            k: getattr(p, k)
            for k in (
                "service_type", "source_addr_ton", "source_addr_npi", "source_addr",
                "dest_addr_ton", "dest_addr_npi", "destination_addr", "esm_class",
                "protocol_id", "priority_flag", "schedule_delivery_time", "validity_period",
                "registered_delivery", "replace_if_present_flag", "data_coding",
                "sm_default_msg_id", "short_message",
            )
        }  # fmt: skip
        tlvs: dict[str, Any] = {}
        if split is SplitMode.PAYLOAD:
            tlvs = {"message_payload": dict(p.tlvs)[C.MESSAGE_PAYLOAD]}
        elif p.tlvs:
            tlvs = {
                "sar_msg_ref_num": int.from_bytes(dict(p.tlvs)[C.SAR_MSG_REF_NUM], "big"),
                "sar_total_segments": dict(p.tlvs)[C.SAR_TOTAL_SEGMENTS][0],
                "sar_segment_seqnum": dict(p.tlvs)[C.SAR_SEGMENT_SEQNUM][0],
            }
        assert pdu == sl_make("submit_sm", 7 + i, **fields, **tlvs).generate()


def _copy(s: str) -> str:
    """An equal str that is another object (a cache by identity must not take it for `s`)."""
    return (s + "\0")[:-1] if len(s) > 1 else s


@SETTINGS
@given(data=st.data())
def test_parts_of_interleaved_messages_match_smpplib(data: st.DataObject) -> None:
    # A few objects per field, drawn once and used again, so the same objects recur
    pools: dict[str, list[Any]] = {
        "service_type": data.draw(st.lists(cstr(6), min_size=1, max_size=2)),
        "source_addr": data.draw(st.lists(cstr(21), min_size=1, max_size=2)),
        "destination_addr": data.draw(st.lists(cstr(21), min_size=1, max_size=3)),
        "schedule_delivery_time": data.draw(st.lists(cstr(17), min_size=1, max_size=2)),
        "validity_period": data.draw(st.lists(cstr(17), min_size=1, max_size=2)),
        "source_addr_ton": [0, 1, 5],
        "source_addr_npi": [0, 1],
        "dest_addr_ton": [1, 2],
        "dest_addr_npi": [1, 9],
    }
    for _ in range(data.draw(st.integers(1, 12))):
        fields = {k: data.draw(st.sampled_from(v)) for k, v in pools.items()}
        if data.draw(st.booleans()):
            key = data.draw(st.sampled_from(["destination_addr", "source_addr", "service_type"]))
            fields[key] = _copy(fields[key])
        bad = data.draw(st.sampled_from([None, None, None, "destination_addr", "dest_addr_ton"]))
        if bad == "destination_addr":
            fields[bad] = "1" * 21  # one octet too long
        elif bad == "dest_addr_ton":
            fields[bad] = 256
        sar = data.draw(st.booleans())
        esm = 0x00 if sar else data.draw(st.sampled_from([0x40, 0x43]))
        sm = data.draw(st.binary(max_size=140))
        tlvs = (
            ((C.SAR_MSG_REF_NUM, b"\x00\x07"), (C.SAR_TOTAL_SEGMENTS, b"\x03"),
             (C.SAR_SEGMENT_SEQNUM, b"\x01"))
            if sar else ()
        )  # fmt: skip
        ours = ShortMessage(**fields, esm_class=esm, short_message=sm, tlvs=tlvs)
        if bad is not None:
            with pytest.raises(EncodeError):
                encode(Pdu(C.SUBMIT_SM, 0, 3, ours))
            continue
        sar_fields = (
            {"sar_msg_ref_num": 7, "sar_total_segments": 3, "sar_segment_seqnum": 1} if sar else {}
        )
        oracle = sl_make(
            "submit_sm", 3, **fields, esm_class=esm, short_message=sm, **sar_fields
        ).generate()
        assert encode(Pdu(C.SUBMIT_SM, 0, 3, ours)) == oracle
