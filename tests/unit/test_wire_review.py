"""Adversarial review of what goes on the wire (submit_sm built per part) and inbound decoding.

Each test below FAILS on the code as reviewed, for the reason named. Findings:

1. ``gsm_data_coding: 1`` labels GSM 03.38 septets as IA5/ASCII. SMPP 3.4 5.2.19 (and smpplib's
   ``SMPP_ENCODING_IA5``): data_coding 1 is "IA5 (CCITT T.50)/ASCII (ANSI X3.4)", but the octets
   sent are still GSM septets: "@" goes out as 0x00 (NUL), "$" as 0x02, "_" as 0x11, "{" as
   ESC 0x28, "é" as 0x05. An SMSC reading IA5 shows garbage (or stops at the NUL).
   (bridge/text/split.py ``_data_coding`` / ``_encode``.)
2. Inbound: a deliver_sm (MO) with data_coding 1 is decoded with the GSM table, not ASCII:
   "user_1@example.com $5" is stored as "user§1¡example.com ¤5".
   (bridge/smpp/reassembly.py ``_alphabet``: ``dc in (0, 1)`` -> "gsm".)
3. Failover sends bytes encoded for another SMSC's wire options. Text is encoded at acceptance
   with the options of the route's FIRST SMSC (even when it is down), and the dispatcher sends
   the stored bytes to whichever SMSC of the route is up: a Latin-1 (data_coding 3) message goes
   to an SMSC configured ``allow_latin1: false``; unpacked septets go to one configured
   ``packed_gsm: true`` (it unpacks them into garbage). (bridge/api/submit.py ``build``
   ``candidates[0]``; bridge/pipeline/dispatcher.py ``_send_parts`` ``router.pick`` +
   bridge/pipeline/submit_sm.py ``build_parts``.)
4. SAR references are drawn from an 8-bit space although sar_msg_ref_num is 16 bits: a
   destination's SAR reference repeats after 255 long messages instead of 65,535.
   (bridge/api/submit.py ``bits = 16 if opts.split is SplitMode.UDH16 else 8``.)
5. ``Submitter(..., refs=counter)`` silently drops the counter it is given: ``refs or
   RefCounter()`` and RefCounter defines ``__len__`` (an empty counter is falsy). Together with
   the SIGHUP path building a new Submitter without its counter (bridge/app.py reload), every
   reload restarts each destination's concatenation reference at random.
6. Packed GSM: a wanted trailing <CR> that ends exactly on an octet boundary is not doubled
   (TS 23.038 6.1.2.3.1), so the receiver takes it for the padding <CR> and drops it. Fixing it
   costs an octet, which the splitter must count (160 septets ending in CR no longer fit 140).
   (bridge/text/split.py ``_pack``.)
7. An alphanumeric ``default_source`` longer than 11 characters (the config accepts 20) goes out
   as TON 5; GSM TP-OA carries at most 11 alphanumeric characters, so carriers reject or cut it.
   (bridge/config.py ``default_source`` ``length(1, 20)``; bridge/pipeline/submit_sm.py
   ``source_address``.)

Fixed: 1 and 2 (data_coding 1 carries ASCII octets, and is read as ASCII), 3 (a route's SMSCs
must share the wire options: refused by config check), 4, 5 (the reload keeps the counters), 7.
6 was marked xfail, then fixed a session later (the CR doubled, a full part ending in CR cut one
septet earlier, the receiver dropping the doubling CR).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridge.api.submit import SendRequest, Submitter
from bridge.app import make_router
from bridge.config import ConfigError, SmscConfig, parse_config
from bridge.pipeline.dispatcher import Dispatcher
from bridge.pipeline.inbound import decoded_mo
from bridge.pipeline.submit_sm import build_parts, source_address
from bridge.smpp.codec import ShortMessage, tlv_get
from bridge.smpp.reassembly import decode_payload, parse_segment
from bridge.smpp.tlvpack import unpack_tlvs
from bridge.store.models import Account, NewMessage, WorkMessage, WorkSegment
from bridge.text.split import EncodedMessage, EncodeOptions, RefCounter, SplitMode, encode_message
from tests.connectors import BeforeFirst, Contexts, StandIn

PROPS = settings(max_examples=200, deadline=None)
NOW_MS = 1_700_000_000_000
TO = "+8613800138000"
SAR_MSG_REF_NUM = 0x020C
MESSAGE_PAYLOAD = 0x0424


def _config(*smscs: dict[str, Any], default_route: list[str] | None = None) -> Any:
    data: dict[str, Any] = {
        "security": {"generate_master_key": True},
        "smscs": [{"system_id": "sys", **s} for s in smscs],
    }
    if default_route is not None:
        data["default_route"] = default_route
    return parse_config(data, env={}, base_dir=Path("/srv/bridge"))


def _request(text: str, sender: str | None = None) -> SendRequest:
    return SendRequest(
        to=(TO,), text=text, template=None, params={}, sign_name=None, client_ref=None,
        sender=sender, validity_minutes=None, scheduled_at=None, smart_encoding=None,
    )  # fmt: skip


ACCOUNT = Account(id="acc_1", name="wire", raw_text=True)


def _accept(submitter: Submitter, text: str) -> NewMessage:
    _batch, messages, _charges = submitter.build(_request(text), ACCOUNT, NOW_MS)
    return messages[0]


def _work(m: NewMessage) -> WorkMessage:
    return WorkMessage(
        id=m.id, account_id=m.account_id, recipient=m.recipient, sender=m.sender,
        data_coding=m.data_coding, expires_at=m.expires_at, attempts=0,
        segments=tuple(
            WorkSegment(s.seq, s.total, s.esm_class, s.short_message, s.tlvs, 0)
            for s in m.segments
        ),
    )  # fmt: skip


def _user_data(msg: EncodedMessage) -> bytes:
    """The payload octets of all parts joined, without UDH (unpacked encoding only)."""
    out = b""
    for p in msg.parts:
        if not p.short_message:
            out += tlv_get(p.tlvs, MESSAGE_PAYLOAD) or b""
        elif p.esm_class & 0x40:
            out += p.short_message[1 + p.short_message[0] :]
        else:
            out += p.short_message
    return out


# --- 1. data_coding 1 (IA5/ASCII) must carry ASCII octets ----------------------------------------


def test_ia5_data_coding_sends_ascii_not_gsm_septets() -> None:
    text = "Pay $5 to shop_1@example.com {ref}"
    msg = encode_message(text, EncodeOptions(gsm_data_coding=1))
    assert msg.data_coding == 1
    # As reviewed: b"Pay \x025 to shop\x111\x00example.com \x1b(ref\x1b)".
    assert msg.parts[0].short_message == text.encode("ascii")


@PROPS
@given(st.text(alphabet=st.characters(max_codepoint=0x24F), min_size=1, max_size=400))
@example("user@example.com")
@example("caf\u00e9")  # é is GSM (0x05) but not IA5: must not go out labelled data_coding 1
@example("x" * 150 + "[]")
def test_ia5_labelled_parts_decode_as_ascii(text: str) -> None:
    opts = EncodeOptions(gsm_data_coding=1, split=SplitMode.UDH8)
    try:
        msg = encode_message(text, opts, ref=7)
    except Exception:
        return  # too long / unencodable: not this finding
    if msg.data_coding != 1:
        return
    data = _user_data(msg)
    assert all(b < 0x80 for b in data)
    assert data.decode("ascii") == text


# --- 2. inbound data_coding 1 is ASCII ------------------------------------------------------------


def test_inbound_ia5_mo_decodes_as_ascii() -> None:
    raw = b"user_1@example.com costs $5 {ok}"
    assert decode_payload(1, raw) == raw.decode("ascii")
    sm = ShortMessage(source_addr="447700900123", destination_addr="ACME", data_coding=1,
                      short_message=raw)  # fmt: skip
    seg = parse_segment(sm)
    assert decoded_mo(seg.data_coding, ((seg.payload, 0, 0),))[0] == raw.decode("ascii")


# --- 3. failover sends bytes made for another SMSC's options -------------------------------------


class _Store:
    async def record_submits(self, *_a: Any, **_k: Any) -> None:
        return None


class _Conn(StandIn):
    """Takes every part at once (without the route's durable write: `_Store` has none), and
    keeps them."""

    def __init__(self, name: str, up: bool) -> None:
        super().__init__(name)
        self.up = up
        self.sent: list[ShortMessage] = []

    async def sending(
        self,
        parts: Sequence[ShortMessage],
        before_first: BeforeFirst,
        deadline: float | None,
        contexts: Contexts,
    ) -> None:
        self.sent.extend(parts)


def _received_text(parts: list[ShortMessage], smsc: SmscConfig) -> str:
    segs = [parse_segment(sm, smsc.packed_gsm) for sm in parts]
    return decode_payload(segs[0].data_coding, b"".join(s.payload for s in segs))


@pytest.mark.parametrize(
    "text",
    [
        "Ol\u00e1, voc\u00ea recebeu o c\u00f3digo 1234",  # Latin-1 on a: data_coding 3
        "Your code is 1234",  # GSM on a: unpacked septets
    ],
)
def test_failover_sends_parts_in_the_wire_format_of_the_smsc_that_takes_them(text: str) -> None:
    try:
        cfg = _config(
            {"name": "a", "allow_latin1": True, "packed_gsm": False},
            {"name": "b", "allow_latin1": False, "packed_gsm": True},
            default_route=["a", "b"],
        )
    except ConfigError:
        return  # refusing a route over SMSCs with different wire options is a fix too
    smscs = {s.name: s for s in cfg.smscs}
    submitter = Submitter(cfg, make_router(cfg))
    # "a" is down: both messages fail over to "b", as the README promises.
    conns = {"a": _Conn("a", up=False), "b": _Conn("b", up=True)}
    d = Dispatcher(_Store(), conns, make_router(cfg), smscs, instance="i1",  # type: ignore[arg-type]
                   clock=lambda: NOW_MS / 1000)  # fmt: skip
    asyncio.run(d._send(_work(_accept(submitter, text))))
    parts = conns["b"].sent
    assert parts, "the message was not dispatched to the SMSC that is up"
    # b takes GSM (data_coding 0, packed) and UCS-2 only: no Latin-1.
    assert {p.data_coding for p in parts} <= {0, 8}
    # As reviewed, b unpacks the unpacked septets of "Your code is 1234" into garbage.
    assert _received_text(parts, smscs["b"]) == text


# --- 4. SAR references are 16-bit ----------------------------------------------------------------


def test_sar_reference_does_not_repeat_within_65536_messages() -> None:
    cfg = _config({"name": "a", "split": "sar"})
    submitter = Submitter(cfg, make_router(cfg))
    refs = []
    for _ in range(300):
        m = _accept(submitter, "x" * 200)
        assert len(m.segments) == 2
        ref = tlv_get(unpack_tlvs(m.segments[0].tlvs), SAR_MSG_REF_NUM)
        assert ref is not None
        refs.append(int.from_bytes(ref, "big"))
    # As reviewed the 256th message to the number reuses the first one's reference (< 256 each).
    assert len(set(refs)) == len(refs)


# --- 5. the reference counter handed to the Submitter is used -----------------------------------


def test_submitter_keeps_the_reference_counter_it_is_given() -> None:
    cfg = _config({"name": "a"})
    counter = RefCounter(start=lambda: 40)
    submitter = Submitter(cfg, make_router(cfg), refs=counter)
    assert submitter.refs is counter
    m = _accept(submitter, "y" * 200)
    assert m.segments[0].short_message[:6] == bytes((5, 0, 3, 40, 2, 1))


# --- 6. packed GSM: a wanted trailing CR survives the padding rule --------------------------------


def test_packed_trailing_cr_on_octet_boundary_is_kept() -> None:
    text = "1234567\r"  # 8 septets: exactly 7 octets, the shape of 7 septets + CR padding
    msg = encode_message(text, EncodeOptions(packed_gsm=True))
    (part,) = msg.parts
    seg = parse_segment(ShortMessage(data_coding=0, short_message=part.short_message), True)
    # As reviewed the receiver drops the CR as padding and shows "1234567".
    assert decode_payload(0, seg.payload) == text


def test_packed_trailing_cr_every_length_and_split_fits_and_survives() -> None:
    bad = []
    for split in (SplitMode.UDH8, SplitMode.UDH16):
        opts = EncodeOptions(packed_gsm=True, split=split)
        for n in range(1, 330):
            text = "a" * (n - 1) + "\r"
            msg = encode_message(text, opts, ref=9)
            sms = [ShortMessage(data_coding=0, esm_class=p.esm_class, short_message=p.short_message)
                   for p in msg.parts]  # fmt: skip
            assert all(len(s.short_message) <= 140 for s in sms), (split, n)
            got = "".join(decode_payload(0, parse_segment(s, True).payload) for s in sms)
            if got != text:
                bad.append((split.value, n))
    assert bad == []


# --- 7. alphanumeric source addresses fit TP-OA ---------------------------------------------------


def test_long_alphanumeric_default_source_is_not_sent_as_ton5() -> None:
    try:
        cfg = _config({"name": "a", "default_source": "my-company-name"})
    except ConfigError:
        return  # refused at load: fixed
    ton, _npi, addr = source_address(None, cfg.smscs[0])
    assert not (ton == 5 and len(addr) > 11), (ton, addr)
    # and it is what goes out on a submit_sm
    m = _accept(Submitter(cfg, make_router(cfg)), "hi")
    (sm,) = build_parts(_work(m), cfg.smscs[0])
    assert not (sm.source_addr_ton == 5 and len(sm.source_addr) > 11)
