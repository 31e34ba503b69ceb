"""BindSession, the sans-IO bind state machine: driven with bytes and a fake clock, no sockets."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.smpp import constants as C
from bridge.smpp.codec import (
    Bind,
    BindResp,
    EncodeError,
    MessageIdResp,
    Pdu,
    ShortMessage,
    decode,
    encode,
)
from bridge.smpp.framing import Framer
from bridge.smpp.session import (
    MAX_SEQ,
    BindMode,
    BindRefused,
    BindSession,
    Bound,
    Closed,
    DeliverReceived,
    EnquireLinkMissed,
    LateSubmitResponse,
    NotBound,
    PeerUnbound,
    ProtocolError,
    RequestAborted,
    RequestTimedOut,
    SessionState,
    SubmitResponse,
    WindowFull,
)

BIND = Bind("esme", "secret", system_type="bridge", address_range="")
MSG = ShortMessage(source_addr="SRC", destination_addr="8613800138000", short_message=b"hi")


def sent(s: BindSession) -> list[Pdu]:
    """Decode everything the session queued for the wire."""
    return [decode(f) for f in Framer().feed(s.data_to_send())]


def pdu(cid: int, seq: int, status: int = 0, body: object = None) -> bytes:
    return encode(Pdu(cid, status, seq, body))


def bound_session(mode: BindMode = BindMode.TRANSCEIVER, **kw: object) -> BindSession:
    s = BindSession(BIND, mode, **kw)  # type: ignore[arg-type]
    s.start(0.0)
    (req,) = sent(s)
    ev = s.receive_data(pdu(req.command_id | C.RESP_BIT, req.seq, 0, BindResp("SMSC")), 0.0)
    assert ev == [Bound("SMSC")]
    return s


def receipt(seq: int) -> bytes:
    body = ShortMessage(
        source_addr="8613800138000",
        destination_addr="SRC",
        esm_class=C.ESM_DELIVERY_RECEIPT,
        short_message=b"id:ab12 sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 "
        b"stat:DELIVRD err:000 text:hi",
    )
    return pdu(C.DELIVER_SM, seq, 0, body)


# --- binding --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "cid"),
    [
        (BindMode.TRANSCEIVER, C.BIND_TRANSCEIVER),
        (BindMode.TRANSMITTER, C.BIND_TRANSMITTER),
        (BindMode.RECEIVER, C.BIND_RECEIVER),
    ],
)
def test_start_sends_the_bind_for_the_mode(mode: BindMode, cid: int) -> None:
    s = BindSession(BIND, mode)
    assert s.state is SessionState.OPEN
    s.start(5.0)
    assert s.state is SessionState.BINDING
    (req,) = sent(s)
    assert req.command_id == cid
    assert req.seq == 1
    assert req.body == BIND
    assert s.data_to_send() == b""  # drained


def test_bind_ok_then_bound() -> None:
    s = bound_session()
    assert s.state is SessionState.BOUND
    assert s.peer_system_id == "SMSC"
    assert s.free_slots == 50


@pytest.mark.parametrize("status", [C.ESME_RBINDFAIL, C.ESME_RINVPASWD, C.ESME_RINVSYSID])
def test_bind_refused_closes(status: int) -> None:
    s = BindSession(BIND, BindMode.TRANSMITTER)
    s.start(0.0)
    (req,) = sent(s)
    ev = s.receive_data(pdu(C.BIND_TRANSMITTER_RESP, req.seq, status), 0.1)
    assert ev == [BindRefused(status), Closed(f"bind refused: {C.status_name(status)}")]
    assert s.state is SessionState.CLOSED
    assert s.next_deadline() is None


def test_generic_nack_to_bind_is_a_refusal() -> None:
    s = BindSession(BIND, BindMode.TRANSCEIVER)
    s.start(0.0)
    (req,) = sent(s)
    ev = s.receive_data(pdu(C.GENERIC_NACK, req.seq, C.ESME_RINVCMDID), 0.1)
    assert ev[0] == BindRefused(C.ESME_RINVCMDID)
    assert isinstance(ev[1], Closed)


def test_bind_timeout_closes() -> None:
    s = BindSession(BIND, BindMode.TRANSCEIVER, response_timeout_s=10)
    s.start(100.0)
    assert s.next_deadline() == 110.0
    assert s.on_timer(109.999) == []
    ev = s.on_timer(110.0)
    assert ev == [RequestTimedOut(1, C.BIND_TRANSCEIVER, None), Closed("bind_resp timed out")]


def test_submit_refused_before_bound_and_on_receiver() -> None:
    s = BindSession(BIND, BindMode.TRANSCEIVER)
    with pytest.raises(NotBound):
        s.submit(MSG, 0.0)
    s.start(0.0)
    with pytest.raises(NotBound):
        s.submit(MSG, 0.0)
    r = bound_session(BindMode.RECEIVER)
    assert r.free_slots == 0
    with pytest.raises(NotBound) as ei:
        r.submit(MSG, 0.0)
    assert ei.value.code == "NOT_BOUND"


# --- window and responses -------------------------------------------------------------------------
def test_window_fills_to_exactly_n_then_window_full() -> None:
    s = bound_session(window=5)
    seqs = [s.submit(MSG, 1.0, context=i) for i in range(5)]
    assert seqs == [2, 3, 4, 5, 6]  # seq 1 was the bind
    assert s.in_flight == 5
    assert s.free_slots == 0
    with pytest.raises(WindowFull) as ei:
        s.submit(MSG, 1.0)
    assert ei.value.code == "WINDOW_FULL"
    reqs = sent(s)
    assert [p.command_id for p in reqs] == [C.SUBMIT_SM] * 5
    assert reqs[0].body == MSG
    # one response frees exactly one slot
    ev = s.receive_data(pdu(C.SUBMIT_SM_RESP, 4, 0, MessageIdResp("m4")), 1.5)
    assert ev == [SubmitResponse(4, 0, "m4", 2)]
    assert (s.in_flight, s.free_slots) == (4, 1)
    s.submit(MSG, 1.6)
    with pytest.raises(WindowFull):
        s.submit(MSG, 1.6)


def test_responses_matched_out_of_order_in_one_read() -> None:
    s = bound_session()
    seqs = [s.submit(MSG, 0.0, context=f"c{i}") for i in range(3)]
    data = b"".join(
        pdu(C.SUBMIT_SM_RESP, seq, 0, MessageIdResp(f"id{seq}")) for seq in reversed(seqs)
    )
    ev = s.receive_data(data, 0.2)
    assert ev == [
        SubmitResponse(seqs[2], 0, f"id{seqs[2]}", "c2"),
        SubmitResponse(seqs[1], 0, f"id{seqs[1]}", "c1"),
        SubmitResponse(seqs[0], 0, f"id{seqs[0]}", "c0"),
    ]
    assert s.in_flight == 0


def test_response_split_across_reads() -> None:
    s = bound_session()
    seq = s.submit(MSG, 0.0, context="x")
    frame = pdu(C.SUBMIT_SM_RESP, seq, 0, MessageIdResp("abc"))
    assert s.receive_data(frame[:7], 0.1) == []
    assert s.receive_data(frame[7:], 0.1) == [SubmitResponse(seq, 0, "abc", "x")]


def test_error_status_response_has_no_message_id() -> None:
    s = bound_session()
    seq = s.submit(MSG, 0.0, context="x")
    ev = s.receive_data(pdu(C.SUBMIT_SM_RESP, seq, C.ESME_RINVDSTADR), 0.1)
    assert ev == [SubmitResponse(seq, C.ESME_RINVDSTADR, "", "x")]


def test_response_for_unknown_seq_is_ignored() -> None:
    s = bound_session()
    seq = s.submit(MSG, 0.0)
    ev = s.receive_data(pdu(C.SUBMIT_SM_RESP, 999, 0, MessageIdResp("zz")), 0.1)
    assert len(ev) == 1 and isinstance(ev[0], ProtocolError) and not ev[0].fatal
    assert s.in_flight == 1
    assert s.state is SessionState.BOUND
    assert sent(s)[-1].seq == seq  # nothing was answered to the stray response


def test_response_of_the_wrong_type_does_not_resolve_the_request() -> None:
    s = bound_session()
    seq = s.submit(MSG, 0.0)
    sent(s)
    ev = s.receive_data(pdu(C.ENQUIRE_LINK_RESP, seq), 0.1)
    assert isinstance(ev[0], ProtocolError)
    assert s.in_flight == 1


def test_generic_nack_for_our_submit_fails_it_with_its_status() -> None:
    s = bound_session()
    seq = s.submit(MSG, 0.0, context="ctx")
    ev = s.receive_data(pdu(C.GENERIC_NACK, seq, C.ESME_RINVCMDLEN), 0.1)
    assert ev == [SubmitResponse(seq, C.ESME_RINVCMDLEN, "", "ctx")]
    assert s.in_flight == 0


def test_generic_nack_with_ok_status_is_still_a_failure() -> None:
    s = bound_session()
    seq = s.submit(MSG, 0.0)
    (ev,) = s.receive_data(pdu(C.GENERIC_NACK, seq, 0), 0.1)
    assert isinstance(ev, SubmitResponse) and ev.status == C.ESME_RUNKNOWNERR


def test_malformed_submit_resp_still_resolves_its_request() -> None:
    """status 0 with an unterminated message_id: the SMSC did accept it, so it must not look like a
    failure (a retry would duplicate the message); the id is unknown."""
    s = bound_session()
    seq = s.submit(MSG, 0.0, context="c")
    sent(s)
    bad = struct.pack(">IIII", 16 + 3, C.SUBMIT_SM_RESP, 0, seq) + b"abc"
    ev = s.receive_data(bad, 0.1)
    assert isinstance(ev[0], ProtocolError)
    assert ev[1] == SubmitResponse(seq, 0, "", "c")
    assert sent(s) == []  # a response is never nacked


# --- sequence numbers -----------------------------------------------------------------------------
def test_seq_wraps_from_max_to_one() -> None:
    s = BindSession(BIND, BindMode.TRANSCEIVER, initial_seq=MAX_SEQ - 1)
    s.start(0.0)
    (req,) = sent(s)
    assert req.seq == MAX_SEQ - 1
    s.receive_data(pdu(C.BIND_TRANSCEIVER_RESP, req.seq, 0, BindResp("x")), 0.0)
    assert s.submit(MSG, 0.0) == MAX_SEQ
    assert s.submit(MSG, 0.0) == 1
    assert s.submit(MSG, 0.0) == 2
    assert [p.seq for p in sent(s)] == [MAX_SEQ, 1, 2]


def test_seq_skips_numbers_still_outstanding_after_a_wrap() -> None:
    s = BindSession(BIND, BindMode.TRANSCEIVER, initial_seq=MAX_SEQ)
    s.start(0.0)  # bind uses MAX_SEQ
    s.receive_data(pdu(C.BIND_TRANSCEIVER_RESP, MAX_SEQ, 0, BindResp("x")), 0.0)
    a = s.submit(MSG, 0.0)  # 1
    s._seq = 1  # simulate a full cycle while seq 1 is still outstanding
    assert s.submit(MSG, 0.0) == 2
    assert a == 1


@settings(max_examples=60, deadline=None)
@given(st.integers(1, MAX_SEQ), st.integers(1, 40))
def test_seqs_are_always_in_range_and_distinct(start: int, n: int) -> None:
    s = BindSession(BIND, BindMode.TRANSCEIVER, initial_seq=start, window=64)
    s.start(0.0)
    s.receive_data(pdu(C.BIND_TRANSCEIVER_RESP, start, 0, BindResp("x")), 0.0)
    seqs = [s.submit(MSG, 0.0) for _ in range(n)]
    assert all(1 <= q <= MAX_SEQ for q in seqs)
    assert len(set(seqs)) == n
    assert start not in seqs or n >= MAX_SEQ


# --- timeouts -------------------------------------------------------------------------------------
def test_submit_times_out_and_frees_its_slot() -> None:
    s = bound_session(window=2, response_timeout_s=5, enquire_link_s=100)
    a = s.submit(MSG, 10.0, context="a")
    b = s.submit(MSG, 12.0, context="b")
    assert s.next_deadline() == 15.0
    assert s.on_timer(14.99) == []
    assert s.on_timer(15.0) == [RequestTimedOut(a, C.SUBMIT_SM, "a")]
    assert s.in_flight == 1
    assert s.next_deadline() == 17.0
    assert s.on_timer(20.0) == [RequestTimedOut(b, C.SUBMIT_SM, "b")]
    assert s.in_flight == 0
    # a late answer is reported as such (tests/unit/test_smpp_session_late.py), not a crash
    (late,) = s.receive_data(pdu(C.SUBMIT_SM_RESP, a, 0, MessageIdResp("late")), 21.0)
    assert late == LateSubmitResponse(a, 0, "late", "a")
    assert s.in_flight == 0  # its slot was freed at the timeout, not a second time
    assert s.state is SessionState.BOUND


# --- enquire_link ---------------------------------------------------------------------------------
def test_answers_the_smscs_enquire_link() -> None:
    s = bound_session()
    sent(s)
    assert s.receive_data(pdu(C.ENQUIRE_LINK, 77), 1.0) == []
    (resp,) = sent(s)
    assert (resp.command_id, resp.status, resp.seq) == (C.ENQUIRE_LINK_RESP, 0, 77)


def test_sends_enquire_link_when_idle_and_accepts_its_resp() -> None:
    s = bound_session(enquire_link_s=30, response_timeout_s=10)
    assert s.next_deadline() == 30.0  # bound at t=0
    assert s.on_timer(29.9) == []
    assert sent(s) == []
    assert s.on_timer(30.0) == []
    (el,) = sent(s)
    assert el.command_id == C.ENQUIRE_LINK
    assert s.next_deadline() == 40.0  # its response deadline
    assert s.in_flight == 0  # keep-alives do not use the submit window
    assert s.receive_data(pdu(C.ENQUIRE_LINK_RESP, el.seq), 31.0) == []
    assert s.next_deadline() == 61.0
    s.on_timer(61.0)
    assert [p.command_id for p in sent(s)] == [C.ENQUIRE_LINK]


def test_answers_postpone_enquire_link_and_the_smscs_own_pings_do_not() -> None:
    """The keep-alive clock runs from the SMSC's last answer to one of our requests: an SMSC
    that still pings us but answers nothing else is hung, and must be found out."""
    s = bound_session(enquire_link_s=30)
    s.receive_data(pdu(C.ENQUIRE_LINK, 5), 20.0)  # its ping, answered, postpones nothing
    sent(s)
    assert s.next_deadline() == 30.0
    seq = s.submit(ShortMessage(short_message=b"x"), 25.0)
    sent(s)
    s.receive_data(pdu(C.SUBMIT_SM_RESP, seq, 0, MessageIdResp("m1")), 26.0)
    assert s.next_deadline() == 56.0  # an answer does
    s.on_timer(30.0)
    assert sent(s) == []
    s.on_timer(56.0)
    assert [p.command_id for p in sent(s)] == [C.ENQUIRE_LINK]


def test_missed_enquire_link_resp_closes() -> None:
    s = bound_session(enquire_link_s=30, response_timeout_s=10)
    s.on_timer(30.0)
    sent(s)
    ev = s.on_timer(40.0)
    assert ev == [EnquireLinkMissed(), Closed("enquire_link_resp missed")]
    assert s.state is SessionState.CLOSED


def test_an_enquire_link_refused_as_an_unknown_bind_closes_an_idle_bind() -> None:
    """A receiver bind the SMSC forgot (a failover) has no submit to be refused: only the
    enquire_link answer tells. Any other error status leaves the bind alone."""
    s = bound_session(BindMode.RECEIVER, enquire_link_s=30, response_timeout_s=10)
    s.on_timer(30.0)
    (el,) = sent(s)
    assert s.receive_data(pdu(C.ENQUIRE_LINK_RESP, el.seq, C.ESME_RSYSERR), 31.0) == []
    s.on_timer(61.0)
    (el,) = sent(s)
    ev = s.receive_data(pdu(C.ENQUIRE_LINK_RESP, el.seq, C.ESME_RINVBNDSTS), 62.0)
    assert ev == [
        Closed("enquire_link answered ESME_RINVBNDSTS: the SMSC no longer knows this bind")
    ]
    assert s.state is SessionState.CLOSED


def test_with_submits_in_flight_their_answers_decide_not_the_enquire_link() -> None:
    s = bound_session(enquire_link_s=30, response_timeout_s=60)
    seq = s.submit(ShortMessage(short_message=b"x"), 1.0)
    s.on_timer(31.0)
    el = next(p for p in sent(s) if p.command_id == C.ENQUIRE_LINK)
    assert s.receive_data(pdu(C.ENQUIRE_LINK_RESP, el.seq, C.ESME_RINVBNDSTS), 31.5) == []
    assert s.state is SessionState.BOUND
    ev = s.receive_data(pdu(C.SUBMIT_SM_RESP, seq, C.ESME_RINVBNDSTS), 32.0)
    assert [type(e).__name__ for e in ev] == ["SubmitResponse"]


# --- unbind ---------------------------------------------------------------------------------------
def test_peer_unbind_is_answered_then_closed() -> None:
    s = bound_session()
    s.submit(MSG, 0.0, context="x")
    sent(s)
    ev = s.receive_data(pdu(C.UNBIND, 9), 1.0)
    assert ev == [PeerUnbound(), Closed("unbound by the SMSC")]
    (resp,) = sent(s)
    assert (resp.command_id, resp.seq) == (C.UNBIND_RESP, 9)
    assert s.receive_data(pdu(C.SUBMIT_SM_RESP, 2, 0, MessageIdResp("a")), 1.1) == []
    # the transport then goes away: the submit in flight is reported aborted
    assert s.connection_lost() == [RequestAborted(2, C.SUBMIT_SM, "x")]


def test_our_unbind() -> None:
    s = bound_session()
    seq = s.submit(MSG, 0.0, context="x")
    s.unbind(1.0)
    assert s.state is SessionState.UNBINDING
    with pytest.raises(NotBound):
        s.submit(MSG, 1.0)
    reqs = sent(s)
    assert reqs[-1].command_id == C.UNBIND
    # responses to earlier requests are still delivered while unbinding
    ev = s.receive_data(pdu(C.SUBMIT_SM_RESP, seq, 0, MessageIdResp("m")), 1.1)
    assert ev == [SubmitResponse(seq, 0, "m", "x")]
    assert s.receive_data(pdu(C.UNBIND_RESP, reqs[-1].seq), 1.2) == [Closed("unbound")]


def test_unbind_timeout_closes() -> None:
    s = bound_session(response_timeout_s=3)
    s.unbind(1.0)
    assert s.on_timer(4.0) == [Closed("unbind_resp timed out")]


def test_unbind_before_bound_just_closes() -> None:
    s = BindSession(BIND, BindMode.TRANSCEIVER)
    s.start(0.0)
    sent(s)
    s.unbind(0.5)
    assert s.state is SessionState.CLOSED
    assert sent(s) == []


# --- deliver_sm -----------------------------------------------------------------------------------
def test_deliver_is_reported_and_acked_only_on_request() -> None:
    s = bound_session()
    sent(s)
    (ev,) = s.receive_data(receipt(42), 1.0)
    assert isinstance(ev, DeliverReceived)
    assert (ev.seq, ev.salvaged) == (42, False)
    assert ev.body.short_message.startswith(b"id:ab12")
    assert sent(s) == []  # no deliver_sm_resp until the pipeline has committed it
    s.ack_deliver(42, C.ESME_RX_T_APPN)
    (resp,) = sent(s)
    assert (resp.command_id, resp.status, resp.seq) == (C.DELIVER_SM_RESP, C.ESME_RX_T_APPN, 42)


@pytest.mark.parametrize("command_id", [C.DELIVER_SM, C.DATA_SM])
@pytest.mark.parametrize(
    ("seq", "status"), [(1, C.ESME_ROK), (42, C.ESME_RX_T_APPN), (0x7FFFFFFF, 0xFFFFFFFF)]
)
def test_ack_bytes_are_the_encoded_resp(command_id: int, seq: int, status: int) -> None:
    """ack_deliver writes its resp directly (session 48): the bytes encode() makes of it."""
    s = bound_session()
    sent(s)
    s.ack_deliver(seq, status, command_id)
    resp = C.DATA_SM_RESP if command_id == C.DATA_SM else C.DELIVER_SM_RESP
    assert s.data_to_send() == encode(Pdu(resp, status, seq, MessageIdResp()))


def test_ack_with_a_status_out_of_range_is_refused_as_before() -> None:
    s = bound_session()
    sent(s)
    with pytest.raises(EncodeError, match="header"):
        s.ack_deliver(5, 1 << 32)
    assert s.data_to_send() == b""


def test_deliver_before_bound_is_a_protocol_error() -> None:
    s = BindSession(BIND, BindMode.TRANSCEIVER)
    s.start(0.0)
    sent(s)
    (ev,) = s.receive_data(receipt(3), 0.1)
    assert isinstance(ev, ProtocolError) and not ev.fatal
    (resp,) = sent(s)
    assert (resp.command_id, resp.status, resp.seq) == (C.DELIVER_SM_RESP, C.ESME_RINVBNDSTS, 3)
    assert s.state is SessionState.BINDING


def test_salvaged_deliver_is_reported_for_acking() -> None:
    s = bound_session()
    sent(s)
    text = b"id:77 sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 stat:DELIVRD"
    # destination_addr runs past its 21-octet limit: strict decode refuses the PDU
    body = b"\x00" + b"\x01\x011234\x00" + b"\x00\x00" + b"9" * 30 + b"\x00"
    body += b"\x04\x00\x00" + b"\x00\x00" + b"\x00\x00\x00\x00" + bytes([len(text)]) + text
    frame = struct.pack(">IIII", 16 + len(body), C.DELIVER_SM, 0, 8) + body
    ev = s.receive_data(frame, 1.0)
    assert isinstance(ev[0], DeliverReceived)
    assert ev[0].salvaged and ev[0].seq == 8
    assert ev[0].body.short_message == text
    assert sent(s) == []  # acked by the caller, not nacked


def test_unparseable_deliver_without_receipt_gets_its_own_resp_with_the_error() -> None:
    # SMPP 3.4 4.3.1: generic_nack only for a bad length or an unknown command.
    s = bound_session()
    sent(s)
    body = b"\x00\x01\x01" + b"9" * 30 + b"\x00"
    frame = struct.pack(">IIII", 16 + len(body), C.DELIVER_SM, 0, 12) + body
    (ev,) = s.receive_data(frame, 1.0)
    assert isinstance(ev, ProtocolError) and not ev.fatal
    (resp,) = sent(s)
    assert (resp.command_id, resp.seq) == (C.DELIVER_SM_RESP, 12)
    assert resp.status == C.ESME_RINVSRCADR
    assert s.state is SessionState.BOUND


# --- bad input ------------------------------------------------------------------------------------
def test_unknown_command_gets_generic_nack_and_the_session_goes_on() -> None:
    s = bound_session()
    sent(s)
    unknown = struct.pack(">IIII", 16, 0x00000099, 0, 31)
    ev = s.receive_data(unknown + pdu(C.ENQUIRE_LINK, 32), 1.0)
    assert len(ev) == 1 and isinstance(ev[0], ProtocolError) and not ev[0].fatal
    nack, el = sent(s)
    assert (nack.command_id, nack.status, nack.seq) == (C.GENERIC_NACK, C.ESME_RINVCMDID, 31)
    assert (el.command_id, el.seq) == (C.ENQUIRE_LINK_RESP, 32)
    assert s.state is SessionState.BOUND


def test_request_we_do_not_serve_is_refused() -> None:
    s = bound_session()
    sent(s)
    s.receive_data(pdu(C.SUBMIT_SM, 5, 0, MSG), 1.0)
    (nack,) = sent(s)
    assert (nack.command_id, nack.status, nack.seq) == (C.GENERIC_NACK, C.ESME_RINVCMDID, 5)


@pytest.mark.parametrize("length", [0, 15, 65537, 0xFFFFFFFF])
def test_bad_command_length_nacks_and_closes(length: int) -> None:
    s = bound_session()
    seq = s.submit(MSG, 0.0, context="x")
    sent(s)
    good = pdu(C.SUBMIT_SM_RESP, seq, 0, MessageIdResp("first"))
    bad = struct.pack(">IIII", length, C.DELIVER_SM, 0, 66) + b"\x00" * 16
    ev = s.receive_data(good + bad, 1.0)
    # the good frame before the bad header is still handled
    assert ev[0] == SubmitResponse(seq, 0, "first", "x")
    assert isinstance(ev[1], ProtocolError) and ev[1].fatal
    assert ev[2] == Closed("bad command_length")
    (nack,) = sent(s)
    assert (nack.command_id, nack.status) == (C.GENERIC_NACK, C.ESME_RINVCMDLEN)
    assert nack.seq == (66 if length > 16 else 0)
    assert s.state is SessionState.CLOSED
    assert s.receive_data(pdu(C.ENQUIRE_LINK, 1), 2.0) == []


def test_connection_lost_aborts_everything_outstanding() -> None:
    s = bound_session(response_timeout_s=60)
    a = s.submit(MSG, 0.0, context="a")
    b = s.submit(MSG, 0.0, context="b")
    s.on_timer(30.0)  # an enquire_link is outstanding too
    ev = s.connection_lost("reset")
    assert ev[:2] == [RequestAborted(a, C.SUBMIT_SM, "a"), RequestAborted(b, C.SUBMIT_SM, "b")]
    assert ev[-1] == Closed("reset")
    assert s.in_flight == 0
    assert s.state is SessionState.CLOSED
    assert s.connection_lost() == []
