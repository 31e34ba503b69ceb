"""The simulated SMSC over real TCP, driven by a minimal ESME built from the codec in this file.

The client deliberately does not use bridge.smpp.session: the simulator is what the engine is tested
against, so it must be checked by something independent of the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import random
import struct
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.cli import build_parser
from bridge.config import SimConfig
from bridge.sim import SimError, SimSmsc, mo_command, run_sim
from bridge.smpp import constants as C
from bridge.smpp.codec import (
    Bind,
    BindResp,
    MessageIdResp,
    Pdu,
    ShortMessage,
    decode,
    encode,
    tlv_get,
    tlv_int,
)
from bridge.smpp.reassembly import Reassembler, parse_segment
from bridge.smpp.receipt import ReceiptState, receipt_from_fields
from bridge.text.split import EncodeOptions, SplitMode, encode_message
from tests.sched_clock import Stopwatch

# What a wait that is not the promise gives a loaded machine before it fails: a PDU, a receipt,
# a counter the simulator moves (CI's `-n 3` on 2 cores beside other work took seconds).
GUARD_S = 30.0
GSM_EXT_TEXT = "Price: 10€ [promo] {code|x} ~tilde^ back\\slash " * 7  # 3 parts in GSM-7
UCS2_EMOJI_TEXT = "Привет 👋 мир! Emoji 😀🎉 straddle parts 🚀 " * 5  # 4 parts in UCS-2

BIND_CIDS = {
    "transmitter": C.BIND_TRANSMITTER,
    "receiver": C.BIND_RECEIVER,
    "transceiver": C.BIND_TRANSCEIVER,
}


class Esme:
    """A tiny SMPP client: pipelined requests matched by seq; deliver_sm queued and auto-acked."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.seq = 0
        self.pending: dict[int, asyncio.Future[Pdu]] = {}
        self.delivers: asyncio.Queue[Pdu] = asyncio.Queue()
        self.others: list[Pdu] = []
        self.ack_status: int | None = 0  # None: never answer deliver_sm
        self.closed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    @classmethod
    async def connect(cls, port: int) -> Esme:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def _read(self) -> None:
        try:
            while True:
                head = await self.reader.readexactly(4)
                (length,) = struct.unpack(">I", head)
                pdu = decode(head + await self.reader.readexactly(length - 4))
                fut = self.pending.pop(pdu.seq, None) if pdu.command_id & C.RESP_BIT else None
                if fut is not None:
                    fut.set_result(pdu)
                elif pdu.command_id == C.DELIVER_SM:
                    await self.delivers.put(pdu)
                    if self.ack_status is not None:
                        self.send(Pdu(C.DELIVER_SM_RESP, self.ack_status, pdu.seq, MessageIdResp()))
                else:
                    self.others.append(pdu)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.closed.set()

    def send(self, pdu: Pdu) -> None:
        self.writer.write(encode(pdu))

    def request(self, cid: int, body: Any = None) -> asyncio.Future[Pdu]:
        self.seq += 1
        fut: asyncio.Future[Pdu] = asyncio.get_running_loop().create_future()
        self.pending[self.seq] = fut
        self.send(Pdu(cid, 0, self.seq, body))
        return fut

    async def call(self, cid: int, body: Any = None) -> Pdu:
        return await asyncio.wait_for(self.request(cid, body), GUARD_S)

    async def bind(self, mode: str = "transceiver", system_id: str = "bridge", pw: str = "secret"):
        return await self.call(BIND_CIDS[mode], Bind(system_id, pw))

    async def submit(self, sm: ShortMessage) -> Pdu:
        return await self.call(C.SUBMIT_SM, sm)

    async def submit_many(self, sms: list[ShortMessage]) -> list[Pdu]:
        futs = [self.request(C.SUBMIT_SM, sm) for sm in sms]
        return list(await asyncio.wait_for(asyncio.gather(*futs), GUARD_S))

    async def deliver(self, wait: float = GUARD_S) -> Pdu:
        return await asyncio.wait_for(self.delivers.get(), wait)

    async def delivers_n(self, n: int, wait: float = GUARD_S) -> list[Pdu]:
        return [await self.deliver(wait) for _ in range(n)]

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def sm(text: str = "hello", rd: int = 1, dest: str = "4915112345678", **kw: Any) -> ShortMessage:
    return ShortMessage(
        source_addr="SENDER",
        source_addr_ton=5,
        destination_addr=dest,
        dest_addr_ton=1,
        dest_addr_npi=1,
        registered_delivery=rd,
        short_message=text.encode("ascii"),
        **kw,
    )


def parts_of(text: str, opts: EncodeOptions, ref: int = 42, **kw: Any) -> list[ShortMessage]:
    enc = encode_message(text, opts, ref)
    return [
        ShortMessage(
            source_addr="SENDER",
            destination_addr="4915112345678",
            esm_class=p.esm_class,
            data_coding=enc.data_coding,
            short_message=p.short_message,
            tlvs=p.tlvs,
            **kw,
        )
        for p in enc.parts
    ]


def cfg(**kw: Any) -> SimConfig:
    base: dict[str, Any] = {
        "port": 0,
        "password": "secret",
        "receipt_delay_ms": 0,
        "control_port": None,
    }
    base.update(kw)
    return dataclasses.replace(SimConfig(), **base)


@pytest.fixture
async def sim_factory():
    sims: list[SimSmsc] = []
    clients: list[Esme] = []

    async def make(seed: int = 1, **kw: Any) -> SimSmsc:
        s = SimSmsc(cfg(**kw), rng=random.Random(seed))
        await s.start()
        sims.append(s)
        return s

    async def connect(s: SimSmsc, mode: str | None = "transceiver", **kw: Any) -> Esme:
        e = await Esme.connect(s.port)
        clients.append(e)
        if mode is not None:
            resp = await e.bind(mode, **kw)
            assert resp.status == 0
        return e

    make.connect = connect  # type: ignore[attr-defined]
    yield make
    for e in clients:
        await e.close()
    for s in sims:
        await s.stop()


@pytest.fixture
async def sim(sim_factory) -> SimSmsc:
    return await sim_factory()


@pytest.fixture
def connect(sim_factory):
    return sim_factory.connect


def receipt_of(pdu: Pdu):
    body = pdu.body
    assert isinstance(body, ShortMessage)
    rid = tlv_get(body.tlvs, C.RECEIPTED_MESSAGE_ID)
    return receipt_from_fields(
        body.short_message.decode("ascii"),
        rid.rstrip(b"\0").decode() if rid is not None else None,
        tlv_int(body.tlvs, C.MESSAGE_STATE),
        tlv_get(body.tlvs, C.NETWORK_ERROR_CODE),
    )


# --- binds ------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["transmitter", "receiver", "transceiver"])
async def test_bind_each_mode(sim: SimSmsc, mode: str) -> None:
    e = await Esme.connect(sim.port)
    try:
        resp = await e.bind(mode)
        assert resp.command_id == BIND_CIDS[mode] | C.RESP_BIT
        assert resp.status == C.ESME_ROK
        assert isinstance(resp.body, BindResp) and resp.body.system_id == "smpp-sim"
        assert tlv_get(resp.body.tlvs, C.SC_INTERFACE_VERSION) == b"\x34"
        assert sim.counters["binds"] == 1
        assert sim.binds()[0]["mode"] == mode
        again = await e.bind(mode)
        assert again.status == C.ESME_RALYBND
    finally:
        await e.close()


async def test_bad_credentials(sim: SimSmsc) -> None:
    e = await Esme.connect(sim.port)
    try:
        assert (await e.bind(system_id="nobody")).status == C.ESME_RINVSYSID
        assert (await e.bind(pw="wrong")).status == C.ESME_RINVPASWD
        sim.bind_fail_status = "ESME_RBINDFAIL"
        assert (await e.bind(system_id="nobody")).status == C.ESME_RBINDFAIL
        assert sim.counters["bind_failed"] == 3 and sim.counters["binds"] == 0
        # a refused bind leaves the connection usable, unbound
        assert (await e.submit(sm())).status == C.ESME_RINVBNDSTS
        assert (await e.bind()).status == C.ESME_ROK
    finally:
        await e.close()


async def test_no_password_configured_accepts_any(sim_factory) -> None:
    s = await sim_factory(password=None)
    e = await Esme.connect(s.port)
    try:
        assert (await e.bind(pw="whatever")).status == 0
    finally:
        await e.close()


async def test_submit_needs_a_transmit_capable_bind(sim: SimSmsc, connect) -> None:
    rx = await connect(sim, "receiver")
    resp = await rx.submit(sm())
    assert resp.status == C.ESME_RINVBNDSTS
    assert sim.counters["submit_ok"] == 0 and not sim.messages


async def test_enquire_link_unknown_command_and_unbind(sim: SimSmsc, connect) -> None:
    e = await connect(sim)
    assert (await e.call(C.ENQUIRE_LINK)).command_id == C.ENQUIRE_LINK_RESP
    nack = await e.call(0x00000077, b"")
    assert (nack.command_id, nack.status) == (C.GENERIC_NACK, C.ESME_RINVCMDID)
    qresp = await e.call(C.CANCEL_SM, b"\0" * 8)  # defined but not simulated
    assert (qresp.command_id, qresp.status) == (C.CANCEL_SM_RESP, C.ESME_RINVCMDID)
    bad = await e.call(C.SUBMIT_SM, b"\0\0")  # truncated body: its own resp, not a crash
    assert bad.command_id == C.SUBMIT_SM_RESP and bad.status != 0
    unb = await e.call(C.UNBIND)
    assert unb.command_id == C.UNBIND_RESP
    await asyncio.wait_for(e.closed.wait(), GUARD_S)


async def test_bad_command_length_nacks_and_closes(sim: SimSmsc, connect) -> None:
    e = await connect(sim)
    e.writer.write(encode(Pdu(C.ENQUIRE_LINK, 0, 900)) + struct.pack(">IIII", 8, 0x15, 0, 901))
    await asyncio.wait_for(e.closed.wait(), GUARD_S)
    kinds = [(p.command_id, p.status) for p in e.others]
    assert kinds == [(C.ENQUIRE_LINK_RESP, 0), (C.GENERIC_NACK, C.ESME_RINVCMDLEN)]


# --- submit_sm and ids --------------------------------------------------------------------------
async def test_submit_resp_ids_hex_then_dec(sim: SimSmsc, connect) -> None:
    e = await connect(sim)
    resps = await e.submit_many([sm(rd=0) for _ in range(3)])
    ids = [r.body.message_id for r in resps]
    for i in ids:
        assert len(i) >= 8 and i == i.upper() and int(i, 16) >= 0
    assert ids[0].startswith("00")  # leading zeros kept, the classic normalisation trap
    assert [int(i, 16) for i in ids] == [int(ids[0], 16) + k for k in range(3)]
    sim.id_format = "dec"
    dec = (await e.submit(sm(rd=0))).body.message_id
    assert dec.isdigit() and int(dec) == int(ids[2], 16) + 1
    assert sim.counters["submit_sm"] == 4 and sim.counters["submit_ok"] == 4


async def test_empty_destination_is_refused(sim: SimSmsc, connect) -> None:
    e = await connect(sim)
    resp = await e.submit(sm(dest=""))
    assert resp.status == C.ESME_RINVDSTADR


# --- receipts ---------------------------------------------------------------------------------
async def test_receipt_after_delay_with_text_and_tlvs(sim_factory) -> None:
    s = await sim_factory(receipt_delay_ms=300)
    e = await sim_factory.connect(s)
    clock = Stopwatch()
    resp = await e.submit(sm("Hello there, this is a longish text"))
    mid = resp.body.message_id
    pdu = await e.deliver()
    # At its delay (the wall: a loaded machine only adds), and not much later where the
    # process had a CPU when it asked (not 10x the delay, not a retry's second).
    assert clock.wall() >= 0.28 and clock.unloaded() < 2.0, clock
    body = pdu.body
    assert body.esm_class == C.ESM_DELIVERY_RECEIPT
    assert (body.source_addr, body.source_addr_ton, body.source_addr_npi) == ("4915112345678", 1, 1)
    assert (body.destination_addr, body.dest_addr_ton) == ("SENDER", 5)
    text = body.short_message.decode("ascii")
    assert text.startswith(f"id:{mid} sub:001 dlvrd:001 submit date:")
    assert text.endswith("stat:DELIVRD err:000 text:Hello there, this is")
    assert tlv_get(body.tlvs, C.RECEIPTED_MESSAGE_ID) == mid.encode() + b"\0"
    assert tlv_int(body.tlvs, C.MESSAGE_STATE) == C.MSG_STATE_DELIVERED
    assert tlv_get(body.tlvs, C.NETWORK_ERROR_CODE) is None
    r = receipt_of(pdu)
    assert r is not None and r.message_id == mid and r.state is ReceiptState.DELIVERED
    assert await s.wait_for(lambda x: x.counters["receipts_acked"] == 1, GUARD_S)
    assert s.counters["receipts_sent"] == 1


async def test_answer_delay_holds_each_resp_in_order_and_a_receipt_may_come_first(
    sim_factory,
) -> None:
    """A carrier's latency: each submit_sm_resp `answer_delay_ms` after its submit_sm, in the
    order they came, and a receipt due sooner arrives before the answer (the case the bridge
    must match receipts for before it knows the id)."""
    s = await sim_factory(answer_delay_ms=250, receipt_delay_ms=0)
    e = await sim_factory.connect(s)
    clock = Stopwatch()
    futs = [e.request(C.SUBMIT_SM, sm(f"m{i}")) for i in range(3)]
    receipt = await e.deliver()
    assert not any(f.done() for f in futs)  # the receipt came first
    resps = await asyncio.wait_for(asyncio.gather(*futs), GUARD_S)
    assert clock.wall() >= 0.24 and clock.unloaded() < 1.5, clock
    assert [r.status for r in resps] == [0, 0, 0]
    assert receipt_of(receipt).message_id == resps[0].body.message_id
    # Undelayed again: at once.
    s.answer_delay_ms = 0
    clock = Stopwatch()
    assert (await e.submit(sm("now"))).status == 0
    assert clock.unloaded() < 0.2, clock
    assert s.counters["answers_lost"] == 0


async def test_an_answer_due_on_a_closed_connection_is_lost_and_counted(sim_factory) -> None:
    """The client closes while its submit_sm's answer is delayed: when it falls due, the answer
    is not written and is counted lost. That needs the simulator to have seen the close before
    the answer fell due; a close slower than the delay (200 ms, on a loaded machine) let the
    answer out on the still open connection, counted nothing and failed the test. So the close
    is awaited, and if the answer may have fallen due by then, the test starts over on a new
    simulator with a longer delay."""
    loop = asyncio.get_running_loop()
    for delay_ms in (200, 1_000, 5_000):
        s = await sim_factory(answer_delay_ms=delay_ms)
        e = await sim_factory.connect(s)
        submitted = loop.time()  # the answer falls due delay_ms after this, or later
        answer = e.request(C.SUBMIT_SM, sm("gone"))
        assert await s.wait_for(lambda x: x.counters["submit_ok"] == 1, GUARD_S)
        await e.close()
        assert await s.wait_for(lambda x: not x.binds(), GUARD_S)  # the close seen
        if loop.time() - submitted < delay_ms / 1000:
            break
    else:
        pytest.fail("the simulator never saw the close within 5 s of the submit")
    assert not answer.done(), f"answered before the close, not {delay_ms} ms after the submit"
    assert await s.wait_for(lambda x: x.counters["answers_lost"] == 1, GUARD_S), s.counters


async def test_receipts_as_text_tlv_and_decimal_text_id(sim: SimSmsc, connect) -> None:
    e = await connect(sim)
    sim.receipts_as = "text"
    mid = (await e.submit(sm())).body.message_id
    body = (await e.deliver()).body
    assert body.tlvs == () and f"id:{mid} " in body.short_message.decode()

    sim.receipts_as = "tlv"
    mid = (await e.submit(sm())).body.message_id
    body = (await e.deliver()).body
    assert body.short_message == b""
    assert tlv_get(body.tlvs, C.RECEIPTED_MESSAGE_ID) == mid.encode() + b"\0"

    sim.receipts_as = "both"
    sim.receipt_text_id = "dec"
    mid = (await e.submit(sm())).body.message_id
    body = (await e.deliver()).body
    assert f"id:{int(mid, 16)} " in body.short_message.decode()
    assert tlv_get(body.tlvs, C.RECEIPTED_MESSAGE_ID) == mid.encode() + b"\0"

    sim.id_format = "dec"
    sim.receipt_text_id = "hex"
    mid = (await e.submit(sm())).body.message_id
    body = (await e.deliver()).body
    assert f"id:{int(mid):08X} " in body.short_message.decode()


async def test_outcome_mix_is_honoured_and_seeded(sim_factory) -> None:
    mixes = []
    for _ in range(2):
        s = await sim_factory(seed=7, outcomes={"DELIVRD": 2, "UNDELIV": 1, "EXPIRED": 1})
        e = await sim_factory.connect(s)
        resps = await e.submit_many([sm() for _ in range(400)])
        assert all(r.status == 0 for r in resps)
        receipts = await e.delivers_n(400)
        by_id = {receipt_of(p).message_id: p for p in receipts}
        mixes.append([receipt_of(by_id[r.body.message_id]).stat for r in resps])
    assert mixes[0] == mixes[1]  # same seed, same outcomes, message for message
    count = Counter(mixes[0])
    assert set(count) == {"DELIVRD", "UNDELIV", "EXPIRED"}
    assert 160 <= count["DELIVRD"] <= 240
    assert 60 <= count["UNDELIV"] <= 140 and 60 <= count["EXPIRED"] <= 140


async def test_failure_receipt_fields(sim: SimSmsc, connect) -> None:
    sim.outcomes = {"REJECTD": 1}
    e = await connect(sim)
    await e.submit(sm())
    pdu = await e.deliver()
    text = pdu.body.short_message.decode()
    assert "dlvrd:000" in text and "stat:REJECTD err:011" in text
    assert tlv_int(pdu.body.tlvs, C.MESSAGE_STATE) == C.MSG_STATE_REJECTED
    assert tlv_get(pdu.body.tlvs, C.NETWORK_ERROR_CODE) == bytes((3, 0, 11))
    r = receipt_of(pdu)
    assert r.state is ReceiptState.REJECTED and r.network_error == 11


async def test_registered_delivery_none_and_failure_only(sim: SimSmsc, connect) -> None:
    e = await connect(sim)
    await e.submit_many([sm(rd=0), sm(rd=2)])  # DELIVRD outcome: no receipt for either
    sim.outcomes = {"UNDELIV": 1}
    await e.submit(sm(rd=2))
    pdu = await e.deliver()
    assert receipt_of(pdu).stat == "UNDELIV"
    await asyncio.sleep(0.1)
    assert e.delivers.empty() and sim.counters["receipts_scheduled"] == 1


async def test_receipt_per_segment_of_a_long_message(sim: SimSmsc, connect) -> None:
    e = await connect(sim)
    resps = await e.submit_many(parts_of(GSM_EXT_TEXT, EncodeOptions(), registered_delivery=1))
    receipts = await e.delivers_n(3)
    assert sorted(receipt_of(p).message_id for p in receipts) == sorted(
        r.body.message_id for r in resps
    )


@pytest.mark.parametrize(
    ("which", "split"),
    [("first", SplitMode.UDH8), ("last", SplitMode.UDH16), ("first", SplitMode.SAR),
     ("last", SplitMode.SAR)],
)  # fmt: skip
async def test_receipt_parts_first_or_last_reports_a_long_message_once(
    sim_factory, which: str, split: SplitMode
) -> None:
    """sim.receipt_parts: a carrier that sends one receipt per long message, for the part its
    UDH or SAR header numbers first or last; a message of one part still gets its receipt."""
    s = await sim_factory(receipt_parts=which)
    e = await sim_factory.connect(s)
    parts = parts_of(GSM_EXT_TEXT, EncodeOptions(split=split), registered_delivery=1)
    resps = await e.submit_many(parts)
    receipt = receipt_of(await e.deliver())
    assert receipt.message_id == resps[0 if which == "first" else -1].body.message_id
    await e.submit(sm("short"))
    assert receipt_of(await e.deliver()).message_id != receipt.message_id
    await asyncio.sleep(0.1)
    assert e.delivers.empty() and s.counters["receipts_scheduled"] == 2


async def test_receipt_waits_for_a_receiver_and_goes_to_the_same_system_id(sim_factory) -> None:
    s = await sim_factory()
    s.accounts["other"] = "pw"
    tx = await sim_factory.connect(s, "transmitter")
    other = await sim_factory.connect(s, "receiver", system_id="other", pw="pw")
    mid = (await tx.submit(sm())).body.message_id
    await asyncio.sleep(0.1)
    assert other.delivers.empty()  # another system_id never sees it
    rx = await sim_factory.connect(s, "receiver")
    assert receipt_of(await rx.deliver()).message_id == mid


async def test_receipts_round_robin_over_receivers(sim_factory) -> None:
    s = await sim_factory()
    tx = await sim_factory.connect(s, "transmitter")
    rx1 = await sim_factory.connect(s, "receiver")
    rx2 = await sim_factory.connect(s, "receiver")
    await tx.submit_many([sm() for _ in range(10)])
    assert await s.wait_for(lambda x: x.counters["receipts_acked"] == 10, GUARD_S)
    assert rx1.delivers.qsize() == 5 and rx2.delivers.qsize() == 5


async def test_receipt_resent_after_a_failed_resp_then_given_up(sim: SimSmsc, connect) -> None:
    sim.receipt_retry_delay_ms = 20
    sim.receipt_max_attempts = 3
    e = await connect(sim)
    e.ack_status = C.ESME_RX_T_APPN
    mid = (await e.submit(sm())).body.message_id
    got = await e.delivers_n(3)
    assert {receipt_of(p).message_id for p in got} == {mid}
    assert await sim.wait_for(lambda x: x.counters["receipts_given_up"] == 1, GUARD_S)
    assert sim.counters["receipts_nacked"] == 3 and sim.counters["receipts_resent"] == 2
    await asyncio.sleep(0.1)
    assert e.delivers.empty()


async def test_receipt_resent_when_the_resp_never_comes(sim: SimSmsc, connect) -> None:
    sim.receipt_ack_timeout_s = 0.2
    e = await connect(sim)
    e.ack_status = None
    mid = (await e.submit(sm())).body.message_id
    first = await e.deliver()
    e.ack_status = 0
    clock = Stopwatch()
    second = await e.deliver()
    assert clock.unloaded() < 3, clock  # the sweep runs every second
    assert receipt_of(first).message_id == receipt_of(second).message_id == mid
    assert second.seq != first.seq
    assert await sim.wait_for(lambda x: x.counters["receipts_acked"] == 1, GUARD_S)


async def test_unacked_receipt_moves_to_the_next_bind_when_a_connection_drops(
    sim_factory,
) -> None:
    s = await sim_factory()
    tx = await sim_factory.connect(s, "transmitter")
    rx1 = await sim_factory.connect(s, "receiver")
    rx1.ack_status = None
    mid = (await tx.submit(sm())).body.message_id
    await rx1.deliver()
    await rx1.close()
    rx2 = await sim_factory.connect(s, "receiver")
    assert receipt_of(await rx2.deliver()).message_id == mid


async def test_deliver_window_holds_receipts_until_acked(sim: SimSmsc, connect) -> None:
    sim.deliver_window = 2
    e = await connect(sim)
    e.ack_status = None
    await e.submit_many([sm() for _ in range(5)])
    first = await e.delivers_n(2)
    await asyncio.sleep(0.1)
    assert e.delivers.empty() and sim.binds()[0]["outstanding"] == 2
    for p in first:
        e.send(Pdu(C.DELIVER_SM_RESP, 0, p.seq, MessageIdResp()))
    second = await e.delivers_n(2)
    e.ack_status = 0
    for p in second:
        e.send(Pdu(C.DELIVER_SM_RESP, 0, p.seq, MessageIdResp()))
    await e.deliver()
    assert await sim.wait_for(lambda x: x.counters["receipts_acked"] == 5, GUARD_S)


async def test_owed_receipts_survive_a_restart(sim_factory) -> None:
    s = await sim_factory()
    tx = await sim_factory.connect(s, "transmitter")
    mid = (await tx.submit(sm())).body.message_id
    await s.stop()
    await s.start()
    rx = await sim_factory.connect(s, "receiver")
    assert receipt_of(await rx.deliver()).message_id == mid


# --- faults -----------------------------------------------------------------------------------
async def test_throttle_and_syserr_ratios(sim_factory) -> None:
    s = await sim_factory(seed=3, throttle_ratio=0.2, syserr_ratio=0.1)
    e = await sim_factory.connect(s)
    resps = await e.submit_many([sm() for _ in range(500)])
    st = Counter(r.status for r in resps)
    assert set(st) == {0, C.ESME_RTHROTTLED, C.ESME_RSYSERR}
    assert 65 <= st[C.ESME_RTHROTTLED] <= 135 and 25 <= st[C.ESME_RSYSERR] <= 75
    assert all(r.body.message_id == "" for r in resps if r.status)
    c = s.counters
    assert (c["throttled"], c["syserr"], c["submit_ok"]) == (
        st[C.ESME_RTHROTTLED],
        st[C.ESME_RSYSERR],
        st[0],
    )
    assert await s.wait_for(lambda x: x.counters["receipts_acked"] == st[0], GUARD_S)
    assert len(s.messages) == st[0]
    # seeded: a second simulator with the same seed answers the same statuses in the same order
    s2 = await sim_factory(seed=3, throttle_ratio=0.2, syserr_ratio=0.1)
    e2 = await sim_factory.connect(s2)
    resps2 = await e2.submit_many([sm() for _ in range(500)])
    assert [r.status for r in resps2] == [r.status for r in resps]


class SimClock:
    """The time the simulator's PDUs are handled at (SimSmsc._loop_time), moved only by the
    test: from the event loop's time when it is set, so the bucket the simulator filled at its
    start (from the loop's time) is not read as emptied by a step back. On the wall, a burst
    read over more than one pass of the loop, or a sleep overslept on a loaded machine, gave
    back tokens and moved the counts (a count in one wall second failed under load)."""

    def __init__(self, sim: SimSmsc, monkeypatch: pytest.MonkeyPatch) -> None:
        self.t = asyncio.get_running_loop().time()
        monkeypatch.setattr(sim, "_loop_time", self)

    def __call__(self) -> float:
        return self.t


async def test_tps_limit(sim_factory, monkeypatch: pytest.MonkeyPatch) -> None:
    """tps_limit 5: a bucket of 5 tokens, full at the start, 5 back a second, never above 5."""
    s = await sim_factory(tps_limit=5)
    e = await sim_factory.connect(s)
    clock = SimClock(s, monkeypatch)
    resps = await e.submit_many([sm(rd=0) for _ in range(20)])
    assert [r.status for r in resps] == [0] * 5 + [C.ESME_RTHROTTLED] * 15
    assert s.counters["tps_throttled"] == 15
    clock.t += 0.45  # 2.25 tokens back at 5/s
    resps = await e.submit_many([sm(rd=0) for _ in range(4)])
    assert [r.status for r in resps] == [0, 0, C.ESME_RTHROTTLED, C.ESME_RTHROTTLED]
    clock.t += 10  # 50 tokens' worth, the bucket holds 5
    resps = await e.submit_many([sm(rd=0) for _ in range(8)])
    assert [r.status for r in resps] == [0] * 5 + [C.ESME_RTHROTTLED] * 3
    assert s.counters["tps_throttled"] == 15 + 2 + 3


async def test_tps_limit_is_shared_by_all_binds(
    sim_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = await sim_factory(tps_limit=4)
    a = await sim_factory.connect(s)
    b = await sim_factory.connect(s)
    SimClock(s, monkeypatch)  # no token back between the two binds' submits
    ra = await a.submit_many([sm(rd=0) for _ in range(3)])
    rb = await b.submit_many([sm(rd=0) for _ in range(3)])
    assert [r.status for r in ra + rb] == [0, 0, 0, 0] + [C.ESME_RTHROTTLED] * 2


async def test_drop_after_n_pdus(sim_factory) -> None:
    s = await sim_factory(drop_after_pdus=3)
    e = await sim_factory.connect(s)  # PDU 1: the bind
    futs = [e.request(C.SUBMIT_SM, sm(rd=0)) for _ in range(5)]  # 2 answered, 3 never
    await asyncio.wait_for(e.closed.wait(), GUARD_S)
    done = [f for f in futs if f.done()]
    assert len(done) == 2 and all(f.result().status == 0 for f in done)
    assert s.counters["dropped_connections"] == 1
    assert await s.wait_for(lambda x: not x.binds(), GUARD_S)
    e2 = await sim_factory.connect(s)  # the counter is per connection
    assert (await e2.submit(sm(rd=0))).status == 0


# --- MO ---------------------------------------------------------------------------------------
async def test_mo_single(sim: SimSmsc, connect) -> None:
    e = await connect(sim, "receiver")
    n = await sim.inject_mo("4917000000", "12345", "Hi there €")
    assert n == 1
    pdu = await e.deliver()
    b = pdu.body
    assert (b.source_addr, b.destination_addr, b.esm_class, b.data_coding) == (
        "4917000000",
        "12345",
        0,
        0,
    )
    assert b.short_message == b"Hi there " + b"\x1b\x65"
    assert await sim.wait_for(lambda x: x.counters["mo_acked"] == 1, GUARD_S)
    assert sim.counters["mo_sent"] == 1


@pytest.mark.parametrize("split", ["udh8", "udh16", "sar", "payload", None])
@pytest.mark.parametrize("text", [GSM_EXT_TEXT, UCS2_EMOJI_TEXT])
async def test_mo_concatenated_decoded_back(sim: SimSmsc, connect, split, text) -> None:
    e = await connect(sim)
    n = await sim.inject_mo("4917000000", "12345", text, split=split)
    expected = 1 if split in ("payload", None) else (3 if text is GSM_EXT_TEXT else 4)
    assert n == expected
    pdus = await e.delivers_n(n)
    bodies = [p.body for p in pdus]
    refs = set()
    for i, b in enumerate(bodies, 1):
        if split in ("udh8", "udh16"):
            assert b.esm_class == C.ESM_UDHI
            udh = b.short_message[: b.short_message[0] + 1]
            if split == "udh8":
                assert udh[1:3] == b"\x00\x03" and udh[4:6] == bytes((n, i))
                refs.add(udh[3])
            else:
                assert udh[1:3] == b"\x08\x04" and udh[5:7] == bytes((n, i))
                refs.add(udh[3:5])
        elif split == "sar":
            assert b.esm_class == 0
            assert tlv_int(b.tlvs, C.SAR_TOTAL_SEGMENTS) == n
            assert tlv_int(b.tlvs, C.SAR_SEGMENT_SEQNUM) == i
            refs.add(tlv_int(b.tlvs, C.SAR_MSG_REF_NUM))
        else:
            assert tlv_get(b.tlvs, C.MESSAGE_PAYLOAD) is not None and b.short_message == b""
    assert len(refs) <= 1
    r = Reassembler()
    msgs = [r.add("x", b.source_addr, b.destination_addr, parse_segment(b), "-", 0) for b in bodies]
    assert msgs[-1] is not None and msgs[-1].text == text


async def test_mo_needs_a_receiver(sim: SimSmsc, connect) -> None:
    with pytest.raises(SimError) as ei:
        await sim.inject_mo("1", "2", "x")
    assert ei.value.code == "NO_RECEIVER"
    await connect(sim, "transmitter")
    with pytest.raises(SimError):
        await sim.inject_mo("1", "2", "x")
    rx = await connect(sim, "receiver")
    with pytest.raises(SimError):
        await sim.inject_mo("1", "2", "x", system_id="other")
    assert await sim.inject_mo("1", "2", "x", system_id="bridge") == 1
    assert (await rx.deliver()).body.short_message == b"x"


# --- reassembly of submitted messages, over TCP --------------------------------------------------
@pytest.mark.parametrize("split", ["udh8", "udh16", "sar", "payload"])
@pytest.mark.parametrize(
    ("text", "packed", "parts"),
    [(GSM_EXT_TEXT, False, 3), (GSM_EXT_TEXT, True, 3), (UCS2_EMOJI_TEXT, False, 4)],
)
async def test_reassembly_over_tcp(sim: SimSmsc, connect, split, text, packed, parts) -> None:
    sim.packed_gsm = packed
    e = await connect(sim)
    pdus = parts_of(text, EncodeOptions(split=SplitMode(split), packed_gsm=packed))
    assert len(pdus) == (1 if split == "payload" else parts)
    resps = await e.submit_many(pdus)
    assert await sim.wait_for(lambda x: len(x.messages) == 1, GUARD_S)
    msg = sim.messages[-1]
    assert msg.text == text
    assert msg.parts == len(pdus)
    assert msg.message_ids == [r.body.message_id for r in resps]
    assert (msg.system_id, msg.source, msg.destination) == ("bridge", "SENDER", "4915112345678")
    assert msg.data_coding == (8 if text is UCS2_EMOJI_TEXT else 0)


async def test_jsonl_record(sim_factory, tmp_path: Path) -> None:
    path = tmp_path / "record.jsonl"
    s = await sim_factory(record_file=path)
    e = await sim_factory.connect(s)
    await e.submit_many(parts_of(UCS2_EMOJI_TEXT, EncodeOptions(split=SplitMode.SAR)))
    await e.submit(sm("short one", rd=0))
    await s.stop()
    lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]
    assert [x["text"] for x in lines] == [UCS2_EMOJI_TEXT, "short one"]
    assert lines[0]["parts"] == 4 and len(lines[0]["message_ids"]) == 4
    assert set(lines[0]) == {
        "system_id",
        "source",
        "destination",
        "data_coding",
        "text",
        "parts",
        "message_ids",
        "received_at",
    }
    assert s.counters["records_written"] == 2


async def test_stop_unbinds_clients(sim: SimSmsc, connect) -> None:
    e = await connect(sim)
    await sim.stop()
    await asyncio.wait_for(e.closed.wait(), GUARD_S)
    assert [p.command_id for p in e.others] == [C.UNBIND]


# --- control endpoint -------------------------------------------------------------------------
@pytest.fixture
async def ctl(sim_factory):
    s = await sim_factory(control_port=0)
    assert s.control_port
    async with aiohttp.ClientSession(f"http://127.0.0.1:{s.control_port}") as http:
        yield s, http


async def test_control_stats_and_messages(ctl, connect) -> None:
    s, http = ctl
    e = await connect(s)
    await e.submit(sm("one", rd=0))
    await e.submit(sm("two", rd=0))
    async with http.get("/stats") as r:
        data = await r.json()
    assert r.status == 200
    assert data["counters"]["submit_ok"] == 2 and data["counters"]["binds"] == 1
    assert data["knobs"]["id_format"] == "hex" and data["knobs"]["outcomes"] == {"DELIVRD": 1.0}
    assert data["binds"][0]["mode"] == "transceiver" and data["port"] == s.port
    async with http.get("/messages", params={"limit": "1"}) as r:
        msgs = (await r.json())["messages"]
    assert [m["text"] for m in msgs] == ["two"]
    async with http.get("/messages", params={"limit": "0"}) as r:
        assert r.status == 400 and (await r.json())["error"] == "INVALID_QUERY"


async def test_control_mo(ctl, connect) -> None:
    s, http = ctl
    async with http.post("/mo", json={"source": "1", "destination": "2", "text": "x"}) as r:
        assert r.status == 409 and (await r.json())["error"] == "NO_RECEIVER"
    e = await connect(s, "receiver")
    body = {"source": "491", "destination": "777", "text": UCS2_EMOJI_TEXT, "split": "udh16"}
    async with http.post("/mo", json=body) as r:
        assert r.status == 200 and await r.json() == {"parts": 4}
    assert len(await e.delivers_n(4)) == 4
    for bad, field in (
        ({"source": "1", "destination": "2"}, "text"),
        ({"source": "", "destination": "2", "text": "x"}, "source"),
        ({"source": "1", "destination": "2", "text": "x", "split": "udh7"}, "split"),
    ):
        async with http.post("/mo", json=bad) as r:
            assert r.status == 400
            assert (await r.json())["message"].startswith(f"{field}:")
    async with http.post("/mo", data=b"{nope") as r:
        assert r.status == 400 and (await r.json())["error"] == "INVALID_JSON"


async def test_control_mo_with_a_reference_and_some_parts(ctl, connect) -> None:
    """A handset reusing a concatenation reference, a network losing or reordering parts."""
    s, http = ctl
    e = await connect(s, "receiver")
    body = {"source": "491", "destination": "777", "text": "x" * 400, "ref": 200,
            "parts": [3, 1]}  # fmt: skip
    async with http.post("/mo", json=body) as r:
        assert r.status == 200 and await r.json() == {"parts": 2}
    got = [(await e.deliver()).body.short_message[:6] for _ in range(2)]
    assert got == [bytes([5, 0, 3, 200, 3, 3]), bytes([5, 0, 3, 200, 3, 1])]
    for bad, prefix in (
        ({"ref": 256}, "ref: must be between 0 and 255 for udh8"),
        ({"ref": "7"}, "ref: must be an integer"),
        ({"parts": [4]}, "parts: must list parts between 1 and 3"),
        ({"parts": []}, "parts: must list parts"),
        ({"parts": "1"}, "parts: must be a list"),
    ):
        async with http.post("/mo", json={**body, **bad}) as r:
            assert r.status == 400, bad
            assert (await r.json())["message"].startswith(prefix), bad
    async with http.post("/mo", json={**body, "split": "udh16", "ref": 40000}) as r:
        assert r.status == 200


async def test_control_config(ctl, connect) -> None:
    s, http = ctl
    change = {"id_format": "dec", "outcomes": {"UNDELIV": 1}, "receipt_delay_ms": 5}
    change["answer_delay_ms"] = 20
    async with http.post("/config", json=change) as r:
        assert r.status == 200
        knobs = (await r.json())["knobs"]
    assert knobs["id_format"] == "dec" and knobs["outcomes"] == {"UNDELIV": 1.0}
    assert s.id_format == "dec" and s.receipt_delay_ms == 5 and s.answer_delay_ms == 20
    e = await connect(s)
    mid = (await e.submit(sm())).body.message_id
    assert mid.isdigit() and receipt_of(await e.deliver()).stat == "UNDELIV"
    for bad, prefix in (
        ({"throttle_ratio": 1.5}, "throttle_ratio: must be between 0 and 1"),
        ({"throttle_ratio": 0.6, "syserr_ratio": 0.6}, "syserr_ratio: throttle_ratio"),
        ({"outcomes": {"DELIVERED": 1}}, "outcomes.DELIVERED: unknown stat"),
        ({"outcomes": {"DELIVRD": 0}}, "outcomes: weights must add up"),
        ({"receipt_delay_ms": 1.5}, "receipt_delay_ms: must be an integer"),
        ({"answer_delay_ms": 60_001}, "answer_delay_ms: must be between 0 and 60000"),
        ({"receipts_as": "xml"}, "receipts_as: must be one of both, text, tlv"),
        ({"receipt_pdu": "submit_sm"}, "receipt_pdu: must be one of deliver_sm, data_sm"),
        ({"receipt_parts": "middle"}, "receipt_parts: must be one of every, first, last"),
        ({"packed_gsm": "yes"}, "packed_gsm: must be true or false"),
        ({"nope": 1}, "nope: unknown knob"),
        ([], "body: must be a non-empty JSON object"),
    ):
        async with http.post("/config", json=bad) as r:
            assert r.status == 400, bad
            assert (await r.json())["message"].startswith(prefix), bad
    assert s.throttle_ratio == 0.0 and s.syserr_ratio == 0.0  # nothing half-applied
    async with http.post("/config", json={"receipt_pdu": "data_sm"}) as r:
        assert r.status == 200 and (await r.json())["knobs"]["receipt_pdu"] == "data_sm"
    assert s.receipt_pdu == "data_sm"
    async with http.post("/config", json={"receipt_parts": "last"}) as r:
        assert r.status == 200 and (await r.json())["knobs"]["receipt_parts"] == "last"
    assert s.receipt_parts == "last"


async def test_mo_command_cli(ctl, connect, capsys) -> None:
    s, _ = ctl
    e = await connect(s, "receiver")
    url = f"http://127.0.0.1:{s.control_port}"
    code = await asyncio.to_thread(mo_command, url, "491", "777", "hello", None)
    assert code == 0
    assert json.loads(capsys.readouterr().out) == {"parts": 1}
    assert (await e.deliver()).body.short_message == b"hello"
    bad = await asyncio.to_thread(mo_command, url, "491", "777", "hello", "udh7")
    assert bad == 1 and "split" in capsys.readouterr().err
    down = await asyncio.to_thread(mo_command, "http://127.0.0.1:1", "1", "2", "x", None)
    assert down == 2


async def test_mo_command_with_a_reference_and_parts(ctl, connect, capsys) -> None:
    s, _ = ctl
    e = await connect(s, "receiver")
    url = f"http://127.0.0.1:{s.control_port}"
    code = await asyncio.to_thread(
        mo_command, url, "491", "777", "y" * 200, "udh8", ref=9, parts=[2]
    )
    assert code == 0 and json.loads(capsys.readouterr().out) == {"parts": 1}
    assert (await e.deliver()).body.short_message[:6] == bytes([5, 0, 3, 9, 2, 2])
    args = build_parser().parse_args(
        ["sim-mo", "--from", "1", "--to", "2", "--text", "x", "--ref", "9", "--parts", "3,1"]
    )
    assert (args.ref, args.parts) == (9, [3, 1])


async def test_run_sim_until_cancelled() -> None:
    task = asyncio.create_task(run_sim(cfg(control_port=0)))
    await asyncio.sleep(0.2)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
