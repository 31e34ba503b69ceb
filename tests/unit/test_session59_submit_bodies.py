"""Session 59: a message's parts handed to the connector as the bodies their submit_sm carry.

`pipeline.submit_sm.submit_bodies` writes the fields a message's parts share once
(`codec.plain_sm_head`) and each part's body as that head, its sm_length octet and its
short_message, where `build_parts` built a ShortMessage a part that `codec._plain_sm` wrote whole
again as it left. A part the head alone does not give (TLVs, a short_message not bytes or over
254 octets, an esm_class not the first part's, a head refused) stays `build_parts`' ShortMessage.
What goes on the wire must not move: every part's submit_sm (or its EncodeError) is checked here
against `build_parts`' on seeded random messages and SMSC settings, strange ones included.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import pytest

from bridge.pipeline.submit_sm import build_parts, submit_bodies
from bridge.smpp import codec
from bridge.smpp import constants as C
from bridge.smpp.codec import EncodeError, Pdu, ShortMessage, encode, encode_sm_request
from bridge.smpp.tlvpack import pack_tlvs
from bridge.store.models import WorkMessage, WorkSegment


def _outcome(f: Any, *args: Any) -> Any:
    try:
        return f(*args)
    except Exception as e:
        return (type(e), str(e))


def _text(rng: random.Random, n: int) -> str:
    alphabet = "0123456789ABCxyz +é"
    if rng.random() < 0.05:
        alphabet += "\0验"
    return "".join(rng.choice(alphabet) for _ in range(n))


def _smsc(rng: random.Random) -> Any:
    return SimpleNamespace(
        service_type=rng.choice(["", "CMT", "WAP", "TOOLONG", _text(rng, 3)]),
        source_ton=rng.choice([0, 1, 5]),
        source_npi=rng.choice([0, 1, 9]),
        dest_ton=rng.choice([0, 1, 2, 300]) if rng.random() < 0.1 else rng.choice([0, 1]),
        dest_npi=rng.choice([0, 1]),
        priority=rng.choice([0, 1, 3]),
        registered_delivery=rng.choice([0, 1, 17, -1]) if rng.random() < 0.1 else 1,
        validity_minutes=rng.choice([None, None, 1, 1440, 525_600]),
        default_source=rng.choice(["BRIDGE", "12345", "+4915100000"]),
    )


def _segment(rng: random.Random, seq: int, total: int, esm: Any) -> WorkSegment:
    r = rng.random()
    if r < 0.05:
        sm: Any = bytearray(rng.randbytes(rng.randrange(0, 40)))
    elif r < 0.1:
        sm = rng.randbytes(rng.choice([254, 255, 300]))
    else:
        sm = rng.randbytes(rng.randrange(0, 160))
    tlvs = b""
    if rng.random() < 0.15:
        tlvs = pack_tlvs([(0x020C, rng.randbytes(2)), (0x020E, bytes([total]))])
    return WorkSegment(seq, total, esm, sm, tlvs, 0)


def _message(rng: random.Random) -> WorkMessage:
    total = rng.choice([1, 1, 2, 3, 4])
    esm: Any = rng.choice([0, 0x40]) if total > 1 else 0
    segments = []
    for seq in range(1, total + 1):
        e = esm
        if rng.random() < 0.05:
            e = rng.choice([0, 0x40, 0x43, 300, 1.0, 64.0, 0.0, True, False, -1])
        segments.append(_segment(rng, seq, total, e))
    sender = rng.choice([None, "BRIDGE", "+4915112345678", "12345", _text(rng, 8)])
    if rng.random() < 0.05:
        sender = _text(rng, 25)
    recipient = rng.choice(["+8613800138000", "4915112345678", "+" + _text(rng, 9)])
    if rng.random() < 0.03:
        recipient = "+" + "1" * 24
    expires_at = rng.choice([None, None, 1_800_000_000_000 + rng.randrange(10**6)])
    coding = rng.choice([0, 8, 0x42, 3])
    return WorkMessage("msg_1", "acc", recipient, sender, coding, expires_at, 0, tuple(segments))


def test_every_parts_submit_sm_is_build_parts_one() -> None:
    rng = random.Random(59)
    kinds = {"bytes": 0, "short_message": 0, "refused": 0}
    for _ in range(3000):
        msg, smsc = _message(rng), _smsc(rng)
        old = build_parts(msg, smsc)
        new = submit_bodies(msg, smsc)
        assert len(new) == len(old)
        for i, (o, n) in enumerate(zip(old, new, strict=True)):
            if isinstance(n, ShortMessage):
                assert n == o  # the same part built, for the same encode
                kinds["short_message"] += 1
            else:
                kinds["bytes"] += 1
            seq = 7 + i
            got = _outcome(encode_sm_request, C.SUBMIT_SM, seq, n)
            assert got == _outcome(encode_sm_request, C.SUBMIT_SM, seq, o)
            assert _outcome(encode, Pdu(C.SUBMIT_SM, 0, seq, n)) == got
            if not isinstance(got, bytes):
                assert got[0] is EncodeError
                kinds["refused"] += 1
    # Every kind drawn, many of each.
    assert kinds["bytes"] > 1000 and kinds["short_message"] > 1000 and kinds["refused"] > 100


def test_the_usual_parts_are_written_once_per_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """The head is written once a message and no part takes `_plain_sm` (nor the general path):
    3-part UDH messages and one-part ones, as the benchmarks send."""
    heads: list[int] = []
    real = codec.plain_sm_head

    def counted(*args: Any) -> bytes | None:
        heads.append(1)
        return real(*args)

    def refused(*args: Any) -> Any:
        raise AssertionError("a part written whole")

    import bridge.pipeline.submit_sm as submit_sm

    monkeypatch.setattr(submit_sm, "plain_sm_head", counted)
    monkeypatch.setattr(codec, "_plain_sm", refused)
    monkeypatch.setattr(codec, "_encode_sm_general", refused)
    smsc = SimpleNamespace(
        service_type="", source_ton=5, source_npi=0, dest_ton=1, dest_npi=1, priority=0,
        registered_delivery=1, validity_minutes=None, default_source="BRIDGE",
    )  # fmt: skip
    udh = [b"\x05\x00\x03\x2a\x03" + bytes([k]) + b"x" * 134 for k in (1, 2, 3)]
    long = WorkMessage(
        "m3", "a", "+8613800138000", "BRIDGE", 8, None, 0,
        tuple(WorkSegment(k, 3, 0x40, sm, b"", 0) for k, sm in enumerate(udh, 1)),
    )  # fmt: skip
    short = WorkMessage(
        "m1", "a", "+8613800138000", None, 0, None, 0, (WorkSegment(1, 1, 0, b"hi", b"", 0),)
    )
    for msg in (long, short):
        heads.clear()
        bodies = submit_bodies(msg, smsc)  # type: ignore[arg-type]  # the attributes it reads
        assert all(type(b) is bytes for b in bodies) and heads == [1]
        pdus = [encode_sm_request(C.SUBMIT_SM, 9, b) for b in bodies]
        monkeypatch.undo()
        expected = [encode(Pdu(C.SUBMIT_SM, 0, 9, p)) for p in build_parts(msg, smsc)]  # type: ignore[arg-type]
        assert pdus == expected
        monkeypatch.setattr(submit_sm, "plain_sm_head", counted)
        monkeypatch.setattr(codec, "_plain_sm", refused)
        monkeypatch.setattr(codec, "_encode_sm_general", refused)
