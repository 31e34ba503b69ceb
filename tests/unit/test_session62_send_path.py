"""Session 62 (h3): a part's submit_sm_resp and receipt on the owner's send path with fewer
Python calls (README note 27).

What must hold: the bind's session frames a read itself (`Framer.take`, `BindSession._read`),
handing `Framer.feed` only a frame not whole or a bad command_length, with the events, answers
and closes the framer-first path gave (an unbind's read: the answers after it; a bad length:
the frames before it, then the generic_nack, unless one of them closed the session); a
committed batch of receipts is answered in one call (the receipts' `Batcher`'s `committed`),
in order, each counted, and a failed one answered ESME_RX_T_APPN each; the bind counts the
receipts it hands to its handler in its `receipt_tally` (the connector's `delivers`).
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from bridge.config import SmscConfig
from bridge.pipeline.batcher import Batcher
from bridge.pipeline.inbound import Inbound
from bridge.smpp import constants as C
from bridge.smpp.codec import Bind, BindResp, Pdu, encode
from bridge.smpp.framing import Framer
from bridge.smpp.protocol import DeliverAnswer, SmppProtocol
from bridge.smpp.session import (
    BindMode,
    BindSession,
    Closed,
    PeerUnbound,
    ProtocolError,
    ReceiptReceived,
    SubmitResponse,
)
from bridge.store.models import ReceiptOutcome

TEXT = (
    b"id:0012D687 sub:001 dlvrd:001 submit date:2612051400 done date:2612051401 "
    b"stat:DELIVRD err:000 text:hello"
)


def _frame(body: bytes, seq: int, cid: int = C.DELIVER_SM, status: int = 0) -> bytes:
    return struct.pack(">IIII", 16 + len(body), cid, status, seq) + body


def _receipt(seq: int, mid: bytes = b"0012D687") -> bytes:
    body = b"".join(
        [b"\0\x01\x01", b"8613800138000", b"\0\x05\x00", b"BRIDGE", b"\0",
         bytes([C.ESM_DELIVERY_RECEIPT, 0, 0]), b"\0", b"\0\x00\x00\x00\x00",
         bytes([len(TEXT)]), TEXT, struct.pack(">HH", C.RECEIPTED_MESSAGE_ID, len(mid) + 1),
         mid, b"\0"]
    )  # fmt: skip
    return _frame(body, seq)


def _resp(seq: int, mid: bytes) -> bytes:
    return _frame(mid + b"\0", seq, C.SUBMIT_SM_RESP)


def _bound(submits: int = 3) -> tuple[BindSession, list[int]]:
    """A bound transceiver session reading receipts, `submits` submit_sm outstanding."""
    s = BindSession(Bind("t", "t"), BindMode.TRANSCEIVER, window=10)
    s.read_receipts = True
    s.start(0.0)
    s.data_to_send()
    s.receive_data(encode(Pdu(C.BIND_TRANSCEIVER_RESP, 0, 1, BindResp("smsc"))), 0.0)
    seqs = [s.submit(b"body", 0.0, ("ctx", k)) for k in range(submits)]
    s.data_to_send()
    return s, seqs


def test_a_read_of_whole_frames_is_framed_without_feed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole frames are read in place (no list of frames from `Framer.feed`); a read ending
    in a frame's middle leaves it to `feed`, which keeps it, and the next read has it in front
    (`take`). Fails on the tree before (feed framed every read)."""
    calls: list[int] = []
    real = Framer.feed

    def counted(self: Framer, data: bytes) -> list[bytes]:
        calls.append(len(data))
        return real(self, data)

    monkeypatch.setattr(Framer, "feed", counted)
    s, (a, b, c) = _bound()
    data = _resp(a, b"m1") + _receipt(90) + _resp(b, b"m2")
    events = s.receive_data(data, 1.0)
    assert calls == []
    assert [type(e) for e in events] == [SubmitResponse, ReceiptReceived, SubmitResponse]
    assert (events[0].message_id, events[2].message_id) == ("m1", "m2")
    assert events[1].seq == 90 and events[1].fields[1] == TEXT
    assert s.free_slots == 10 - 1 and s.in_flight == 1
    last = _resp(c, b"m3") + _receipt(91)
    assert s.receive_data(last[:30], 2.0) == [SubmitResponse(c, 0, "m3", ("ctx", 2))]
    assert calls == [30 - len(_resp(c, b"m3"))]  # the receipt's first octets kept
    assert s._framer.buffered == calls[0]
    (ev,) = s.receive_data(last[30:], 3.0)
    assert ev == ReceiptReceived(91, ev.fields) and ev.fields[1] == TEXT
    assert s._framer.buffered == 0 and len(calls) == 1


def test_the_answers_read_with_the_smsc_s_unbind_and_a_bad_length_after_it() -> None:
    """The SMSC's unbind closes the session: the submit_sm_resps after it in the read still
    answer their submits (`_answers_after_unbind`), the close reported last; with a bad
    command_length later in that read, nothing after the unbind is read and no generic_nack
    goes out (the framer-first path handled only the frames before the bad length, up to
    the close)."""
    unbind = _frame(b"", 55, C.UNBIND)
    bad = struct.pack(">IIII", 8, C.DELIVER_SM, 0, 77)
    for tail, answered in ((b"", True), (bad, False)):
        s, (a, b, _c) = _bound()
        events = s.receive_data(_resp(a, b"m1") + unbind + _resp(b, b"m2") + tail, 1.0)
        kinds = [type(e) for e in events]
        if answered:
            assert kinds == [SubmitResponse, PeerUnbound, SubmitResponse, Closed]
        else:
            assert kinds == [SubmitResponse, PeerUnbound, Closed]
        assert s.data_to_send() == _frame(b"", 55, C.UNBIND_RESP)  # no generic_nack
        assert s.receive_data(_resp(b, b"m2"), 2.0) == []  # closed


def test_a_bad_length_after_frames_read_them_then_nacks_and_closes() -> None:
    s, (a, _b, _c) = _bound()
    bad = struct.pack(">IIII", 70_000, C.DELIVER_SM, 0, 77)
    events = s.receive_data(_resp(a, b"m1") + _receipt(90) + bad, 1.0)
    assert [type(e) for e in events] == [SubmitResponse, ReceiptReceived, ProtocolError, Closed]
    assert s.data_to_send() == struct.pack(">IIII", 16, C.GENERIC_NACK, C.ESME_RINVCMDLEN, 77)
    assert s.receive_data(_receipt(91), 2.0) == []


async def test_a_batcher_s_committed_call_takes_a_batch_at_once() -> None:
    """`committed`: one call with the batch's callables in order, none of them called; a failed
    batch calls each with its exception; futures are refused. Fails on the tree before (no
    `committed`)."""
    told: list[Any] = []
    fail = False

    async def flush(items: list[int]) -> None:
        if fail:
            raise RuntimeError("down")

    b: Batcher[int] = Batcher(flush, max_delay_s=0.0, committed=told.append)
    calls = [lambda e, k=k: told.append((k, e)) for k in range(3)]
    for k, call in enumerate(calls):
        b.add_call(k, call)
    await b.drain()
    assert told == [calls]
    told.clear()
    fail = True
    b.add_call(7, calls[0])
    await b.drain()
    assert len(told) == 1 and told[0][0] == 0 and isinstance(told[0][1], RuntimeError)
    for add in (lambda: b.add(1), lambda: b.add_many([1]), lambda: b.add_many_call([1], print)):
        with pytest.raises(ValueError, match="committed"):
            add()


def _fields(mid: bytes) -> Any:
    return (C.ESM_DELIVERY_RECEIPT, TEXT.replace(b"0012D687", mid), mid + b"\0", None, None, None)


async def test_a_committed_batch_s_receipts_are_answered_and_counted_in_order(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each receipt's answer set ESME_ROK, counted, and told to the metrics in the batch's
    order, without a call of `_receipts_failed` (made to record here; the tree before called
    each receipt's `_receipt_committed`, its `partial`, since session 64 a tuple); a failed
    batch answers each ESME_RX_T_APPN and counts none."""
    fail = False

    class Store:
        commits_in_order = True

        async def apply_receipts(self, items: list[Any], now: int) -> ReceiptOutcome:
            if fail:
                raise RuntimeError("down")
            return ReceiptOutcome(len(items), 0)

    class Metrics:
        def __init__(self) -> None:
            self.seen: list[tuple[str, str]] = []

        def receipt(self, smsc: str, state: str) -> None:
            self.seen.append((smsc, state))

        def receipts_counted(self, counts: dict[tuple[str, str], int]) -> None:
            # Session 63: a batch's counts told in one call (by SMSC and state, in the order
            # first seen).
            for (smsc, state), n in counts.items():
                self.seen.extend([(smsc, str(state))] * n)

        def unmatched(self, n: int) -> None:
            pass

    committed: list[Any] = []
    real = Inbound._receipts_failed

    def recorded(self: Inbound, told: list[Any], failed: BaseException) -> None:
        committed.append(failed)
        real(self, told, failed)

    monkeypatch.setattr(Inbound, "_receipts_failed", recorded)
    metrics = Metrics()
    cfg = SmscConfig(name="s", system_id="t", password="t")
    inbound = Inbound(Store(), {"s": cfg}, batch_delay_s=0.0, metrics=metrics)  # type: ignore[arg-type]
    mids = [b"0000000A", b"0000000B", b"0000000C"]
    answers = [inbound.on_receipt("s", ReceiptReceived(k, _fields(m))) for k, m in enumerate(mids)]
    await inbound.drain()
    assert [await a for a in answers] == [C.ESME_ROK] * 3
    assert committed == [] and inbound.receipts == 3
    assert metrics.seen == [("s", "delivered")] * 3
    fail = True
    answer = inbound.on_receipt("s", ReceiptReceived(9, _fields(b"0000000D")))
    await inbound.drain()
    assert await answer == C.ESME_RX_T_APPN
    assert len(committed) == 1 and isinstance(committed[0], RuntimeError)
    assert inbound.receipts == 3 and len(metrics.seen) == 3


async def test_the_bind_counts_the_receipts_it_hands_over_in_its_tally() -> None:
    """`receipt_tally[0]` counts each receipt handed to `on_receipt` (the connector's share of
    `delivers`), beside the protocol's own `delivers`. Fails on the tree before (no
    `receipt_tally`)."""
    s, _ = _bound(0)
    tally = [5]
    got: list[Any] = []

    def on_receipt(ev: ReceiptReceived) -> DeliverAnswer:
        got.append(ev.seq)
        return DeliverAnswer()

    proto = SmppProtocol(s, None, on_receipt=on_receipt, receipt_tally=tally)  # type: ignore[arg-type]
    proto._handle(s.receive_data(_receipt(90) + _receipt(91), 1.0))
    assert got == [90, 91] and tally == [7] and proto.delivers == 2
    assert proto.pending_delivers == 2
