"""The simulator's octet paths (session 60) against the object paths they stand in for.

Session 60 made the simulated SMSC build a receipt's deliver_sm as octets when the submit is
taken (`_receipt_octets`, its dates' text cached per second and delay), read single parts and
the 8-bit UDH concatenation IE without `parse_segment`, and read a deliver_sm_resp from its
header when `decode` would accept it. Its differential (`scripts/bench_sim.py --compare`) runs
with a fixed wall clock and the ESME's fields; these check the same claims on random fields and
on a clock that moves: the object path (`_receipt` encoded, `parse_segment`, `segment_text`,
`decode`) is the oracle, unchanged by that session.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bridge.config import SimConfig
from bridge.sim import server
from bridge.smpp.codec import Pdu, PduError, ShortMessage, decode, encode
from bridge.smpp.constants import DELIVER_SM, DELIVER_SM_RESP
from bridge.smpp.reassembly import parse_segment, segment_text


def _sim(seed: int = 1) -> server.SimSmsc:
    return server.SimSmsc(
        SimConfig(enabled=True, port=0, system_id="a", password="b"), rng=random.Random(seed)
    )


def _text(rng: random.Random, most: int) -> str:
    return "".join(
        chr(rng.choice((rng.randrange(1, 256), rng.randrange(0x30, 0x7B))))
        for _ in range(rng.randrange(most + 1))
    )


def _submit(rng: random.Random) -> ShortMessage:
    return ShortMessage(
        service_type=_text(rng, 5),
        source_addr_ton=rng.randrange(256),
        source_addr_npi=rng.randrange(256),
        source_addr=_text(rng, 21),
        dest_addr_ton=rng.randrange(256),
        dest_addr_npi=rng.randrange(256),
        destination_addr=_text(rng, 21),
        esm_class=rng.randrange(256),
        registered_delivery=rng.randrange(256),
        data_coding=rng.choice((0, 0, 8, 8, 1, 3, 4, 0x18, 0xF0)),
        short_message=rng.choice(
            (
                bytes(rng.randrange(256) for _ in range(rng.randrange(40))),
                b"\x05\x00\x03" + bytes(rng.randrange(4) for _ in range(3)) + b"hi\x1b",
                b"\x06\x08\x04\x01\x02\x02\x01ab",
                b"",
            )
        ),
        tlvs=rng.choice(
            (
                (),
                ((0x0424, b"payload"),),
                ((0x020C, b"\0\1"), (0x020E, b"\2"), (0x020F, b"\1")),
            )
        ),
    )


@pytest.mark.parametrize("seed", range(4))
def test_receipt_octets_are_the_encoded_receipt_on_random_fields(seed: int) -> None:
    rng = random.Random(seed)
    sim = _sim()
    stats = list(server._STAT_ERR)
    built = 0
    for _ in range(3000):
        sm = _submit(rng)
        sim.receipts_as = rng.choice(("text", "tlv", "both"))
        sim.receipt_text_id = rng.choice(("dec", "hex", "same"))
        n = rng.randrange(1, 2**40)
        mid = f"{n:08X}" if rng.random() < 0.5 else str(n)
        stat = rng.choice(stats)
        text = _text(rng, 30) + rng.choice(("", "😀", "中文"))
        octets = sim._receipt_octets(sm, n, mid, stat, text, 1.0)
        try:
            want: bytes | None = encode(
                Pdu(DELIVER_SM, 0, 1, sim._receipt(sm, n, mid, stat, text, 1.0))
            )[16:]
        except Exception:  # the old path could not send it either: the octets path must refuse
            want = None
        if octets is not None:
            built += 1
            assert octets == want, (sm, stat, sim.receipts_as)
    assert built > 1000  # most took the octet path


class _Clock(datetime):
    """datetime.now at the simulator's loop time (`at`): both simulators read the same."""

    at = 0.0
    base = datetime(2026, 12, 31, 23, 59, 58, 500000, tzinfo=UTC)

    @classmethod
    def now(cls, tz: Any = None) -> Any:
        return cls.base + timedelta(seconds=cls.at)


def test_receipt_dates_follow_the_clock_and_the_delay_as_the_object_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Receipts built at loop times crossing seconds (and a year's end), the delay changed
    between them: the cached dates' text is what `_receipt` formats at each submit."""
    monkeypatch.setattr(server, "datetime", _Clock)
    rng = random.Random(7)
    new, old = _sim(), _sim()
    sm = ShortMessage(source_addr="447700900123", destination_addr="8613800138000")
    now = 0.0
    for i in range(2000):
        now += rng.choice((0.0, 0.001, 0.2, 0.6, 0.999, 1.0, 1.5, 61.0))
        _Clock.at = now + rng.random() * 0.01
        if rng.random() < 0.05:
            new.receipt_delay_ms = old.receipt_delay_ms = rng.choice((0, 5, 59_999, 86_400_000))
        stat = rng.choice(("DELIVRD", "UNDELIV", "EXPIRED"))
        got = new._receipt_octets(sm, i, str(i), stat, "text", now)
        want = encode(Pdu(DELIVER_SM, 0, 1, old._receipt(sm, i, str(i), stat, "text", now)))[16:]
        assert got == want, (i, now)


def test_single_parts_and_udh8_read_as_parse_segment_reads_them() -> None:
    rng = random.Random(3)
    for _ in range(20000):
        sm = _submit(rng)
        packed = rng.random() < 0.2
        seg = server._parse_segment(sm, packed)
        assert seg == parse_segment(sm, packed), sm
        assert server._segment_text(seg) == segment_text(seg), seg


class _Writer:
    def get_extra_info(self, name: str) -> Any:
        return None

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        pass


def test_deliver_sm_resp_read_from_its_header_exactly_when_decode_accepts_it() -> None:
    """A deliver_sm_resp answers its deliver_sm when decode would have read it (a bare header,
    an error with any body, an id with its NUL however long, octets after it), and is dropped
    when decode refused it (status 0, a body without NUL)."""
    rng = random.Random(5)
    sim = _sim()
    sess = server._Session(sim, _Writer())  # type: ignore[arg-type]
    sess.mode = "transceiver"
    sess.system_id = "a"
    for i in range(5000):
        body = bytes(
            rng.choice((0, 0x41, rng.randrange(256)))
            for _ in range(rng.choice((0, 1, 2, 5, 64, 65, 66, 80)))
        )
        status = rng.choice((0, 0, 8, 0x45))
        seq = i + 1
        frame = (16 + len(body)).to_bytes(4, "big") + DELIVER_SM_RESP.to_bytes(4, "big")
        frame += status.to_bytes(4, "big") + seq.to_bytes(4, "big") + body
        try:
            decode(frame)
            accepted = True
        except PduError:
            accepted = False
        sess.outstanding[seq] = server._Job("a", b"x", "receipt", 1, 0.0, DELIVER_SM)
        sim.receipt_max_attempts = 1  # a nack is given up, not rescheduled (no loop here)
        out: list[bytes] = []
        sim._dispatch(sess, frame, out, 0.0)
        assert (seq not in sess.outstanding) == accepted, frame
        assert out == []
        sess.outstanding.clear()


class _Capture(_Writer):
    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def test_a_job_made_again_from_a_receipt_s_octets_goes_out_as_a_deliver_sm() -> None:
    """Hooks and tests hold a scheduled receipt and schedule `_Job(sid, job.body, "receipt")`
    again (tests/integration/test_retention_review.py: an SMSC repeating a receipt). With the
    body its octets, the job's command defaulted to 0: the simulator wrote command_id 0, which
    the ESME answers with generic_nack, and the receipt never arrived."""
    sim = _sim()
    sm = ShortMessage(source_addr="447700900123", destination_addr="8613800138000")
    octets = sim._receipt_octets(sm, 1, "00000001", "DELIVRD", "hello", 1.0)
    assert octets is not None
    writer = _Capture()
    sess = server._Session(sim, writer)  # type: ignore[arg-type]
    sess.mode = "transceiver"
    sess.system_id = "a"
    sim._receivers["a"] = [sess]
    job = server._Job("a", octets, "receipt")
    assert job.command_id == DELIVER_SM
    sim._schedule(job, 0.0)
    sim._fire()
    pdu = decode(writer.data)
    assert pdu.command_id == DELIVER_SM
    want = encode(Pdu(DELIVER_SM, 0, 1, sim._receipt(sm, 1, "00000001", "DELIVRD", "hello", 1.0)))
    assert writer.data == want
