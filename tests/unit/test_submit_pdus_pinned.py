"""The submit_sm PDUs of multi-part messages, byte for byte, as the dispatcher builds them.

Pinned in session 48 (h6) from the code before that session's per-part savings in
build_parts and the codec: a 3-part UCS-2 text (UDH8), a 3-part GSM-7 text with extension
characters (escape pairs, a relative validity, priority, an international sender) and a UCS-2
text split with SAR TLVs (a service type, an absolute validity, a numeric sender). Each goes
through the real path: encode_message, the stored segments (TLVs packed as the store keeps
them), build_parts for a configured SMSC, codec.encode with consecutive sequence numbers.
"""

from __future__ import annotations

from typing import Any

import pytest

from bridge.config import parse_config
from bridge.pipeline.submit_sm import build_parts
from bridge.smpp import constants as C
from bridge.smpp.codec import Pdu, encode
from bridge.smpp.tlvpack import pack_tlvs
from bridge.store.models import WorkMessage, WorkSegment
from bridge.text import EncodeOptions, encode_message
from bridge.text.split import SplitMode

KEY = "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2s="
UCS2_TEXT = (
    "【示例】您的验证码是123456，五分钟内有效。请勿泄露给他人。如非本人操作，请忽略本短信。" * 3
)
GSM_TEXT = (
    "Order #A-1042 confirmed: total €129.90 [incl. VAT]. Track at example.com/t?id={42}. "
    "Questions? Reply HELP | STOP to opt out ~ thanks! "
) * 3


def _pdus(
    text: str, split: SplitMode, smsc_extra: dict[str, Any], sender: str, expires_at: int | None
) -> list[str]:
    smsc = {"name": "s", "host": "127.0.0.1", "port": 1, "system_id": "a", "password": "b"}
    cfg = parse_config({"security": {"master_key": KEY}, "smscs": [smsc | smsc_extra]}, env={})
    ref = 0x42 if split is SplitMode.UDH8 else 0x1234
    enc = encode_message(text, EncodeOptions(split=split), ref)
    segments = tuple(
        WorkSegment(p.seq, p.total, p.esm_class, p.short_message, pack_tlvs(p.tlvs), 0)
        for p in enc.parts
    )
    msg = WorkMessage(
        "msg_1", "acc", "+8613800138000", sender, enc.data_coding, expires_at, 0, segments
    )
    parts = build_parts(msg, cfg.smscs[0])
    return [encode(Pdu(C.SUBMIT_SM, 0, 7 + i, sm)).hex() for i, sm in enumerate(parts)]


UCS2_UDH8 = (
    (
        "000000c000000004000000000000000700050042524944474500010138363133383030313338303030004000"
        "000000010008008c0500034203013010793a4f8b301160a876849a8c8bc17801662f00310032003300340035"
        "0036ff0c4e945206949f51856709654830028bf752ff6cc497327ed94ed64eba30025982975e672c4eba64cd"
        "4f5cff0c8bf75ffd7565672c77ed4fe130023010793a4f8b301160a876849a8c8bc17801662f003100320033"
        "003400350036ff0c4e945206949f5185"
    ),
    (
        "000000c000000004000000000000000800050042524944474500010138363133383030313338303030004000"
        "000000010008008c0500034203026709654830028bf752ff6cc497327ed94ed64eba30025982975e672c4eba"
        "64cd4f5cff0c8bf75ffd7565672c77ed4fe130023010793a4f8b301160a876849a8c8bc17801662f00310032"
        "0033003400350036ff0c4e945206949f51856709654830028bf752ff6cc497327ed94ed64eba30025982975e"
        "672c4eba64cd4f5cff0c8bf75ffd7565"
    ),
    (
        "0000004200000004000000000000000900050042524944474500010138363133383030313338303030004000"
        "000000010008000e050003420303672c77ed4fe13002"
    ),
)

GSM_UDH8 = (
    (
        "000000ea00000004000000000000000700010134393135313132333435363738000101383631333830303133"
        "3830303000400001003030303030313031303030303030305200010000009f0500034203014f726465722023"
        "412d3130343220636f6e6669726d65643a20746f74616c201b653132392e3930201b3c696e636c2e20564154"
        "1b3e2e20547261636b206174206578616d706c652e636f6d2f743f69643d1b2834321b292e20517565737469"
        "6f6e733f205265706c792048454c50201b402053544f5020746f206f7074206f7574201b3d207468616e6b73"
        "21204f726465722023412d313034"
    ),
    (
        "000000ea00000004000000000000000800010134393135313132333435363738000101383631333830303133"
        "3830303000400001003030303030313031303030303030305200010000009f0500034203023220636f6e6669"
        "726d65643a20746f74616c201b653132392e3930201b3c696e636c2e205641541b3e2e20547261636b206174"
        "206578616d706c652e636f6d2f743f69643d1b2834321b292e205175657374696f6e733f205265706c792048"
        "454c50201b402053544f5020746f206f7074206f7574201b3d207468616e6b7321204f726465722023412d31"
        "30343220636f6e6669726d65643a"
    ),
    (
        "000000c600000004000000000000000900010134393135313132333435363738000101383631333830303133"
        "3830303000400001003030303030313031303030303030305200010000007b05000342030320746f74616c20"
        "1b653132392e3930201b3c696e636c2e205641541b3e2e20547261636b206174206578616d706c652e636f6d"
        "2f743f69643d1b2834321b292e205175657374696f6e733f205265706c792048454c50201b402053544f5020"
        "746f206f7074206f7574201b3d207468616e6b732120"
    ),
)

UCS2_SAR = (
    (
        "000000dc000000040000000000000007434d5400000031323334350001013836313338303031333830303000"
        "000000003236313133303030353332303130302b0001000800863010793a4f8b301160a876849a8c8bc17801"
        "662f003100320033003400350036ff0c4e945206949f51856709654830028bf752ff6cc497327ed94ed64eba"
        "30025982975e672c4eba64cd4f5cff0c8bf75ffd7565672c77ed4fe130023010793a4f8b301160a876849a8c"
        "8bc17801662f003100320033003400350036ff0c4e945206949f5185020c00021234020e000103020f000101"
    ),
    (
        "000000dc000000040000000000000008434d5400000031323334350001013836313338303031333830303000"
        "000000003236313133303030353332303130302b0001000800866709654830028bf752ff6cc497327ed94ed6"
        "4eba30025982975e672c4eba64cd4f5cff0c8bf75ffd7565672c77ed4fe130023010793a4f8b301160a87684"
        "9a8c8bc17801662f003100320033003400350036ff0c4e945206949f51856709654830028bf752ff6cc49732"
        "7ed94ed64eba30025982975e672c4eba64cd4f5cff0c8bf75ffd7565020c00021234020e000103020f000102"
    ),
    (
        "0000005e000000040000000000000009434d5400000031323334350001013836313338303031333830303000"
        "000000003236313133303030353332303130302b000100080008672c77ed4fe13002020c00021234020e0001"
        "03020f000103"
    ),
)


@pytest.mark.parametrize(
    ("text", "split", "smsc_extra", "sender", "expires_at", "expected"),
    [
        (UCS2_TEXT, SplitMode.UDH8, {}, "BRIDGE", None, UCS2_UDH8),
        (
            GSM_TEXT,
            SplitMode.UDH8,
            {"validity_minutes": 1500, "priority": 1},
            "+4915112345678",
            None,
            GSM_UDH8,
        ),
        (UCS2_TEXT, SplitMode.SAR, {"service_type": "CMT"}, "12345", 1_796_000_000_123, UCS2_SAR),
    ],
    ids=["ucs2-udh8", "gsm7-escapes-udh8", "ucs2-sar"],
)
def test_multipart_submit_sm_bytes_unchanged(
    text: str,
    split: SplitMode,
    smsc_extra: dict[str, Any],
    sender: str,
    expires_at: int | None,
    expected: tuple[str, ...],
) -> None:
    assert _pdus(text, split, smsc_extra, sender, expires_at) == list(expected)
