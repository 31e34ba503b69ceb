"""A message's submit_sm head kept per sender and SMSC (`submit_sm._HEADS`, session 61).

`submit_bodies` writes the usual message's head from two pieces kept per sender, SMSC object,
first esm_class and data_coding, around its recipient's octets, where session 59's wrote every
field again (`source_address`, `plain_sm_head`) message after message. These tests hold its
bodies to session 59's function, kept here as it was, on seeded messages (senders of every kind,
recipients at and past their limits, with NULs or beyond latin-1, parts with TLVs, other
esm_classes, short_messages at and past 254 octets, validities, SMSCs reloaded with other fields
or equal but new), check that a usual message after the first is written without
`plain_sm_head`, and that the kept heads stay bounded.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from bridge.config import SmscConfig, parse_config
from bridge.pipeline import submit_sm
from bridge.pipeline.submit_sm import (
    smpp_absolute_time,
    smpp_relative_time,
    source_address,
    submit_bodies,
)
from bridge.smpp.codec import OCTET, ShortMessage, plain_sm_head
from bridge.smpp.tlvpack import pack_tlvs, unpack_tlvs
from bridge.store.models import WorkMessage, WorkSegment

KEY = "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2s="


def _session59(msg: WorkMessage, smsc: SmscConfig) -> list[ShortMessage | bytes]:
    """submit_bodies as session 59 wrote it (the reference)."""
    ton, npi, source = source_address(msg.sender, smsc)
    dest = msg.recipient[1:] if msg.recipient.startswith("+") else msg.recipient
    if msg.expires_at is not None:
        validity = smpp_absolute_time(msg.expires_at)
    elif smsc.validity_minutes:
        validity = smpp_relative_time(smsc.validity_minutes)
    else:
        validity = ""
    service_type = smsc.service_type
    dest_ton, dest_npi = smsc.dest_ton, smsc.dest_npi
    priority, receipts, coding = smsc.priority, smsc.registered_delivery, msg.data_coding
    segs = msg.segments
    esm = segs[0].esm_class if segs else 0
    head = plain_sm_head(
        service_type, ton, npi, source, dest_ton, dest_npi, dest, esm, 0, priority, "", validity,
        receipts, 0, coding, 0,
    )  # fmt: skip
    out: list[ShortMessage | bytes] = []
    for seg in segs:
        sm = seg.short_message
        if (
            head is not None
            and seg.esm_class is esm
            and type(sm) is bytes
            and len(sm) <= 254
            and not seg.tlvs
        ):
            out.append(head + OCTET[len(sm)] + sm)
            continue
        out.append(
            ShortMessage(
                service_type, ton, npi, source, dest_ton, dest_npi, dest, seg.esm_class, 0,
                priority, "", validity, receipts, 0, coding, 0, sm,
                unpack_tlvs(seg.tlvs) if seg.tlvs else (),
            )
        )  # fmt: skip
    return out


def _smsc(rng: random.Random) -> SmscConfig:
    smsc: dict[str, Any] = {
        "name": "s", "host": "127.0.0.1", "port": 1, "system_id": "a", "password": "b",
        "source_ton": rng.choice([0, 1, 5]), "source_npi": rng.choice([0, 1, 9]),
        "dest_ton": rng.choice([0, 1, 2]), "dest_npi": rng.choice([0, 1]),
        "service_type": rng.choice(["", "CMT", "WAP", "ab\u00e9"]),
        "registered_delivery": rng.choice([0, 1, 17]), "priority": rng.choice([0, 3]),
        "default_source": rng.choice(["BRIDGE", "12345", "+4915112345678"]),
    }  # fmt: skip
    if rng.random() < 0.3:
        smsc["validity_minutes"] = rng.choice([1, 90, 1440 * 40])
    cfg = parse_config({"security": {"master_key": KEY}, "smscs": [smsc]}, env={})
    return cfg.smscs[0]


def _message(rng: random.Random, n: int) -> WorkMessage:
    sender = rng.choice(
        [None, "BRIDGE", "Shop", "+4915112345678", "4915112345678", "+12ab", "x" * 21,
         "\u00e9t\u00e9", "\u4e2d\u6587", "a\0b", "", "+"]
    )  # fmt: skip
    recipient = rng.choice(
        ["+8613800138000", "8613800138000", "+" + "9" * 20, "9" * 20, "9" * 21, "+" + "9" * 21,
         "+12\0" + "3", "\u00e91", "\u4e2d1", "+", "", f"+4917{rng.randrange(10**8):08d}"]
    )  # fmt: skip
    esm = rng.choice([0, 0x40])
    segs = []
    for i in range(rng.choice([0, 1, 1, 1, 2, 3, 4])):
        size = rng.choice([0, 1, 70, 140, 153, 254, 255, 300])
        tlvs = pack_tlvs([(0x020C, b"\x00\x01")]) if rng.random() < 0.1 else b""
        seg_esm = esm if rng.random() < 0.9 else esm ^ 0x40
        segs.append(WorkSegment(i + 1, 3, seg_esm, rng.randbytes(size), tlvs, 0))
    expires = None if rng.random() < 0.8 else 1_800_000_000_000 + rng.randrange(10**6)
    return WorkMessage(
        f"m{n}", "acc", recipient, sender, rng.choice([0, 3, 8]), expires, 0, tuple(segs)
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_same_bodies_as_session_59(seed: int) -> None:
    rng = random.Random(seed)
    smscs = [_smsc(rng) for _ in range(4)]
    for n in range(2500):
        if rng.random() < 0.02:  # a reload: a new object, other fields, or equal to the old
            k = rng.randrange(len(smscs))
            smscs[k] = _smsc(rng) if rng.random() < 0.5 else _smsc(random.Random(seed * 7 + k))
        if rng.random() < 0.01:
            submit_sm._HEADS.clear()
        smsc = rng.choice(smscs)
        msg = _message(rng, n)
        try:
            want: Any = _session59(msg, smsc)
        except Exception as exc:  # what it raised, compared
            want = type(exc)
        try:
            got: Any = submit_bodies(msg, smsc)
        except Exception as exc:
            got = type(exc)
        assert got == want, (n, msg, smsc)
        if isinstance(got, list):
            assert [type(b) for b in got] == [type(b) for b in want]


def test_a_usual_message_after_the_first_writes_no_head(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(61)
    smsc = _smsc(rng)
    seg = WorkSegment(1, 1, 0, b"hello", b"", 0)
    first = WorkMessage("m0", "acc", "+8613800138000", "BRIDGE", 0, None, 0, (seg,))
    submit_bodies(first, smsc)

    def refused(*_a: Any) -> None:
        raise AssertionError("plain_sm_head called")

    monkeypatch.setattr(submit_sm, "plain_sm_head", refused)
    monkeypatch.setattr(submit_sm, "source_address", refused)
    for k in range(20):
        msg = WorkMessage(f"m{k}", "acc", f"+86139000000{k:02d}", "BRIDGE", 0, None, 0, (seg,))
        body = submit_bodies(msg, smsc)
        monkeypatch.undo()
        assert body == _session59(msg, smsc)
        monkeypatch.setattr(submit_sm, "plain_sm_head", refused)
        monkeypatch.setattr(submit_sm, "source_address", refused)


def test_the_kept_heads_are_bounded() -> None:
    smsc = _smsc(random.Random(5))
    seg = WorkSegment(1, 1, 0, b"hi", b"", 0)
    for k in range(submit_sm._HEADS_MAX + 100):
        submit_bodies(WorkMessage("m", "a", "+491", f"S{k}", 0, None, 0, (seg,)), smsc)
        assert len(submit_sm._HEADS) <= submit_sm._HEADS_MAX
