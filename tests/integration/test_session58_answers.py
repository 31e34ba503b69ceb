"""Session 58, the per-part answers on the bind (README note 27).

- A receipt's deliver_sm_resp is queued inside the receipts' flush that committed it: the
  receipt path hands the bind a `DeliverAnswer`, which the bind answers by a call once set,
  where a future's done-callback ran a loop round after the commit (the tree before: the
  bind still counted the receipt pending one loop round after the commit).
- A submit_sm_resp accepting a submit_sm with its id alone is read by the session without
  the codec's MessageIdResp (the tree before decoded every submit_sm_resp into one), and
  every other response the general path reads gives the same events and state as before
  (`_SUBMIT_RESP_MAX` set to 0 turns the session's own read off).

Over real TCP: an SMSC written here (bind, one receipt deliver_sm, the ESME's answers
recorded), the real `SmppProtocol` and `BindSession` through `open_bind`, the real `Inbound`
with a store whose commit is a stub.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from bridge.config import SmscConfig
from bridge.pipeline.inbound import Inbound
from bridge.smpp import codec
from bridge.smpp import constants as C
from bridge.smpp import session as session_mod
from bridge.smpp.codec import Bind, BindResp, Pdu, ShortMessage, encode
from bridge.smpp.framing import Framer
from bridge.smpp.protocol import open_bind
from bridge.smpp.receipt import format_receipt_text
from bridge.smpp.session import BindMode, BindSession, SubmitResponse
from bridge.store.models import ReceiptOutcome

AT = datetime(2026, 12, 6, 11, 0, tzinfo=UTC)


def _receipt(mid: str) -> ShortMessage:
    text = format_receipt_text(mid, "DELIVRD", submit_date=AT, done_date=AT, text="hello")
    return ShortMessage(
        source_addr="8613800138000",
        destination_addr="BRIDGE",
        esm_class=C.ESM_DELIVERY_RECEIPT,
        short_message=text.encode(),
    )


class _Smsc:
    """Answers the bind, then (with `greet`) sends one receipt deliver_sm (seq 77); sends one
    (seq 100 + i) on `send(i)`; records the ESME's PDUs."""

    def __init__(self, greet: bool = True) -> None:
        self.greet = greet
        self.received: list[tuple[int, int, int]] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def send(self, i: int) -> None:
        self._writers[0].write(encode(Pdu(C.DELIVER_SM, 0, 100 + i, _receipt(f"{i:X}"))))

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for w in self._writers:
            w.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        self._writers.append(w)
        framer = Framer()
        while data := await reader.read(65536):
            for frame in framer.feed(data):
                _len, cid, status, seq = struct.unpack(">IIII", frame[:16])
                self.received.append((cid, status, seq))
                if cid == C.BIND_TRANSCEIVER:
                    w.write(encode(Pdu(C.BIND_TRANSCEIVER_RESP, 0, seq, BindResp("smsc"))))
                    if self.greet:
                        w.write(encode(Pdu(C.DELIVER_SM, 0, 77, _receipt("0A1B"))))


async def _until(cond: Callable[[], bool], within_s: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within_s
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_a_receipts_answer_is_queued_inside_the_flush_that_committed_it() -> None:
    loop = asyncio.get_running_loop()
    pending_after_commit: list[int] = []
    proto_box: list[Any] = []

    class Store:
        commits_in_order = True

        async def apply_receipts(self, items: list[Any], now: int) -> ReceiptOutcome:
            # Runs one loop round after this commit returns (before any callback the commit's
            # answers schedule): the bind's count of receipts it has not answered by then.
            loop.call_soon(lambda: pending_after_commit.append(proto_box[0].pending_delivers))
            return ReceiptOutcome(len(items), 0)

    smsc = _Smsc()
    await smsc.start()
    cfg = SmscConfig(name="s", system_id="t", password="t", port=smsc.port)
    inbound = Inbound(Store(), {"s": cfg}, batch_delay_s=0.0)  # type: ignore[arg-type]
    session = BindSession(Bind("t", "t"), BindMode.TRANSCEIVER, window=10)
    proto = await open_bind(
        "127.0.0.1", smsc.port, session, lambda body, _s: inbound.on_deliver("s", body)
    )
    proto_box.append(proto)
    try:
        await proto.wait_bound()
        await _until(lambda: (C.DELIVER_SM_RESP, 0, 77) in smsc.received)
        # Answered inside the commit's flush: nothing pending one loop round later (the tree
        # before: 1, its future's done-callback not yet run).
        assert pending_after_commit == [0]
        assert proto.pending_delivers == 0
        assert [r for r in smsc.received if r[0] == C.DELIVER_SM_RESP] == [
            (C.DELIVER_SM_RESP, 0, 77)
        ]
        assert inbound.receipts == 1
    finally:
        proto.abort("test over")
        await smsc.close()
        await inbound.drain()


async def test_an_answer_set_before_the_bind_takes_it_is_written_and_drain_waits_for_one() -> None:
    """An answer the handler set before returning (an unparsable receipt's ESME_ROK) is written
    at once; one set later is what drain_delivers waits for, bounded."""
    from bridge.smpp.protocol import DeliverAnswer

    smsc = _Smsc()
    await smsc.start()
    answers: list[DeliverAnswer] = []

    def handler(body: ShortMessage, _salvaged: bool) -> DeliverAnswer:
        answer = DeliverAnswer()
        answers.append(answer)
        return answer

    session = BindSession(Bind("t", "t"), BindMode.TRANSCEIVER, window=10)
    proto = await open_bind("127.0.0.1", smsc.port, session, handler)
    try:
        await proto.wait_bound()
        await _until(lambda: len(answers) == 1)
        assert proto.pending_delivers == 1
        await proto.drain_delivers(timeout_s=0.05)  # bounded: the answer is not set
        assert proto.pending_delivers == 1
        asyncio.get_running_loop().call_later(0.05, answers[0].set_result, C.ESME_RX_T_APPN)
        await proto.drain_delivers(timeout_s=2.0)
        assert proto.pending_delivers == 0
        await _until(lambda: (C.DELIVER_SM_RESP, C.ESME_RX_T_APPN, 77) in smsc.received)
        assert await answers[0] == C.ESME_RX_T_APPN
        with pytest.raises(asyncio.InvalidStateError):
            answers[0].set_result(0)
    finally:
        proto.abort("test over")
        await smsc.close()


async def test_a_deliver_answer_awaited_outside_a_bind() -> None:
    from bridge.smpp.protocol import DeliverAnswer

    answer = DeliverAnswer()
    assert not answer.done() and not answer.cancelled()
    with pytest.raises(asyncio.InvalidStateError):
        answer.result()
    asyncio.get_running_loop().call_soon(answer.set_result, C.ESME_ROK)
    assert await answer == C.ESME_ROK
    assert answer.done() and answer.result() == C.ESME_ROK
    assert await answer == C.ESME_ROK  # again, as a done future


# --- the session's submit_sm_resp ---------------------------------------------------------------
def _bound(seqs: int = 4) -> BindSession:
    s = BindSession(Bind("t", "t"), BindMode.TRANSCEIVER, window=10, response_timeout_s=5)
    s.start(0.0)
    s.data_to_send()
    s.receive_data(encode(Pdu(C.BIND_TRANSCEIVER_RESP, 0, 1, BindResp("smsc"))), 0.0)
    for i in range(seqs):
        s.submit(ShortMessage(destination_addr="1", short_message=b"x"), 0.5, ("ctx", i))
    s.on_timer(1.0)  # (nothing is due: the time-outs are at 5.5)
    return s


def _state(s: BindSession) -> tuple[Any, ...]:
    return (
        s.in_flight,
        sorted(s._pending),
        sorted(s._late),
        s._last_rx,
        s.state,
        s.data_to_send(),
    )


def test_a_plain_acceptance_is_read_without_a_message_id_resp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refused(f: bytes, status: int) -> Any:
        raise AssertionError("a MessageIdResp was decoded")

    s = _bound()
    monkeypatch.setitem(codec._DECODERS, C.SUBMIT_SM_RESP, refused)
    resp = struct.pack(">IIII", 16 + 9, C.SUBMIT_SM_RESP, 0, 2) + b"0012D687\0"
    assert s.receive_data(resp, 1.5) == [SubmitResponse(2, 0, "0012D687", ("ctx", 0))]
    assert s.in_flight == 3 and s._last_rx == 1.5


def _frames(rnd: random.Random) -> list[bytes]:
    """submit_sm_resp (and generic_nack, enquire_link_resp) frames of every shape near the
    session's own read: ids of 0-70 octets, NULs inside, none, TLVs or stray octets after,
    error statuses, seqs waited on, unknown, of the enquire_link, repeated."""
    out = []
    for _ in range(rnd.randint(1, 4)):
        seq = rnd.choice([2, 3, 4, 5, 9, 2])
        cid = rnd.choice([C.SUBMIT_SM_RESP] * 6 + [C.GENERIC_NACK, C.ENQUIRE_LINK_RESP])
        status = rnd.choice([0, 0, 0, C.ESME_RTHROTTLED, C.ESME_RSYSERR])
        n = rnd.choice([0, 1, 8, 20, 63, 64, 65, 66, 70, rnd.randint(0, 80)])
        mid = bytes(rnd.choice(b"0123456789ABCDEFabc \x00-") for _ in range(n))
        body = rnd.choice(
            [
                mid + b"\0",
                mid + b"\0",
                mid,
                mid + b"\0" + struct.pack(">HH", 0x1403, 1) + b"\x01",
                mid + b"\0\0\0",
                b"",
            ]
        )
        out.append(struct.pack(">IIII", 16 + len(body), cid, status, seq) + body)
    return out


def test_every_response_gives_the_events_and_state_of_the_general_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    rnd = random.Random(58)
    for _case in range(1500):
        frames = _frames(rnd)
        late = rnd.random() < 0.3
        data = b"".join(frames)
        got = []
        for general in (False, True):
            with monkeypatch.context() as m:
                if general:
                    m.setattr(session_mod, "_SUBMIT_RESP_MAX", 0)
                s = _bound()
                if late:
                    s.on_timer(6.0)  # every submit timed out: their answers come late
                events = s.receive_data(data, 7.0 if late else 1.5)
                got.append((events, _state(s)))
        assert got[0] == got[1], (frames, late)
