"""BindSession's late map: a submit_sm_resp that comes after its request timed out is reported
(LateSubmitResponse) for a grace period, not dropped as a stray response."""

from __future__ import annotations

import struct

import pytest

from bridge.smpp import constants as C
from bridge.smpp.codec import Bind, BindResp, MessageIdResp, Pdu, ShortMessage, decode, encode
from bridge.smpp.framing import Framer
from bridge.smpp.session import (
    MAX_SEQ,
    BindMode,
    BindSession,
    Bound,
    Closed,
    LateSubmitResponse,
    PeerUnbound,
    ProtocolError,
    RequestAborted,
    RequestTimedOut,
    SessionState,
)

BIND = Bind("esme", "secret")
MSG = ShortMessage(source_addr="SRC", destination_addr="8613800138000", short_message=b"hi")


def sent(s: BindSession) -> list[Pdu]:
    return [decode(f) for f in Framer().feed(s.data_to_send())]


def pdu(cid: int, seq: int, status: int = 0, body: object = None) -> bytes:
    return encode(Pdu(cid, status, seq, body))


def bound_session(**kw: object) -> BindSession:
    """Bound at t=0."""
    s = BindSession(BIND, BindMode.TRANSCEIVER, **kw)  # type: ignore[arg-type]
    s.start(0.0)
    (req,) = sent(s)
    ev = s.receive_data(pdu(req.command_id | C.RESP_BIT, req.seq, 0, BindResp("SMSC")), 0.0)
    assert ev == [Bound("SMSC")]
    return s


def timed_out(s: BindSession, n: int, at: float = 0.0) -> list[int]:
    """Submit `n` PDUs at `at` and let them all time out; their seqs, oldest first."""
    seqs = [s.submit(MSG, at, context=f"c{i}") for i in range(n)]
    sent(s)
    ev = s.on_timer(at + s.response_timeout_s)
    assert [e.seq for e in ev if isinstance(e, RequestTimedOut)] == seqs
    return seqs


def resp(seq: int, status: int = 0, mid: str = "X1") -> bytes:
    return pdu(C.SUBMIT_SM_RESP, seq, status, MessageIdResp(mid if not status else ""))


def is_stray(events: list[object]) -> bool:
    return len(events) == 1 and isinstance(events[0], ProtocolError) and not events[0].fatal


@pytest.mark.parametrize(("timeout", "grace"), [(1, 60.0), (12, 60.0), (12.5, 62.5), (30, 150.0)])
def test_default_grace_is_60_s_or_5_response_timeouts(timeout: float, grace: float) -> None:
    assert BindSession(BIND, BindMode.TRANSCEIVER, response_timeout_s=timeout).late_grace_s == grace


def test_late_ok_is_reported_once_with_its_context_and_id() -> None:
    s = bound_session(response_timeout_s=5, enquire_link_s=1000)
    (a,) = timed_out(s, 1)
    assert s.late_count == 1
    ev = s.receive_data(resp(a, mid="00B8BE19"), 30.0)
    assert ev == [LateSubmitResponse(a, C.ESME_ROK, "00B8BE19", "c0")]
    assert s.late_count == 0
    assert s.in_flight == 0 and s.free_slots == 50  # the slot was given back once, at the timeout
    assert is_stray(s.receive_data(resp(a), 31.0))  # a second answer matches nothing


def test_late_error_status_is_reported_without_an_id() -> None:
    s = bound_session(response_timeout_s=5)
    (a,) = timed_out(s, 1)
    ev = s.receive_data(pdu(C.SUBMIT_SM_RESP, a, C.ESME_RSYSERR, MessageIdResp("ignored")), 6.0)
    assert ev == [LateSubmitResponse(a, C.ESME_RSYSERR, "", "c0")]


def test_late_generic_nack_just_ends_the_wait() -> None:
    s = bound_session(response_timeout_s=5)
    (a,) = timed_out(s, 1)
    assert s.receive_data(pdu(C.GENERIC_NACK, a, C.ESME_RSYSERR), 6.0) == []
    assert s.late_count == 0
    assert is_stray(s.receive_data(resp(a), 7.0))


def test_a_late_response_of_another_type_is_stray_and_keeps_the_entry() -> None:
    s = bound_session(response_timeout_s=5)
    (a,) = timed_out(s, 1)
    assert is_stray(s.receive_data(pdu(C.ENQUIRE_LINK_RESP, a), 6.0))
    assert s.receive_data(resp(a), 7.0) == [LateSubmitResponse(a, 0, "X1", "c0")]


def test_grace_boundary_on_lookup_and_on_timer() -> None:
    s = bound_session(response_timeout_s=5, enquire_link_s=1000, late_grace_s=10)
    a, b = timed_out(s, 2)  # timed out at 5.0: remembered until 15.0 (exclusive)
    assert s.receive_data(resp(a), 14.999) == [LateSubmitResponse(a, 0, "X1", "c0")]
    assert is_stray(s.receive_data(resp(b), 15.0))  # exactly at the expiry: too late
    c, _d = timed_out(s, 2, at=20.0)  # remembered until 35.0
    assert s.on_timer(34.999) == [] and s.late_count == 2
    assert s.on_timer(35.0) == [] and s.late_count == 0  # pruned by the timer
    assert is_stray(s.receive_data(resp(c), 35.0))


def test_the_oldest_entries_are_evicted_past_late_max() -> None:
    s = bound_session(window=10, response_timeout_s=5, late_max=3)
    seqs = timed_out(s, 5)
    assert s.late_count == 3
    for old in seqs[:2]:
        assert is_stray(s.receive_data(resp(old), 6.0))
    for i, seq in enumerate(seqs[2:], start=2):
        assert s.receive_data(resp(seq), 6.0) == [LateSubmitResponse(seq, 0, "X1", f"c{i}")]


def test_late_max_zero_remembers_nothing() -> None:
    s = bound_session(response_timeout_s=5, late_max=0)
    (a,) = timed_out(s, 1)
    assert s.late_count == 0
    assert is_stray(s.receive_data(resp(a), 6.0))


def test_a_late_answer_counts_for_the_keep_alive() -> None:
    s = bound_session(response_timeout_s=5, enquire_link_s=30)
    (a,) = timed_out(s, 1)
    assert s.next_deadline() == 30.0  # bound at 0: enquire_link due at 30
    s.receive_data(resp(a), 20.0)
    assert s.next_deadline() == 50.0


def test_a_malformed_late_resp_is_reported_without_an_id_and_not_nacked() -> None:
    s = bound_session(response_timeout_s=5)
    (a,) = timed_out(s, 1)
    # A message_id with no NUL terminator: the body does not parse, the header does.
    body = b"abc"
    frame = struct.pack(">IIII", 16 + len(body), C.SUBMIT_SM_RESP, 0, a) + body
    ev = s.receive_data(frame, 6.0)
    assert LateSubmitResponse(a, 0, "", "c0") in ev
    assert sent(s) == []


def test_connection_lost_clears_the_late_map() -> None:
    s = bound_session(response_timeout_s=5)
    (_a,) = timed_out(s, 1)
    b = s.submit(MSG, 6.0, context="b")
    assert s.connection_lost("reset") == [RequestAborted(b, C.SUBMIT_SM, "b"), Closed("reset")]
    assert s.late_count == 0


def test_a_close_clears_the_late_map() -> None:
    s = bound_session(response_timeout_s=5, enquire_link_s=10)
    timed_out(s, 1)
    s.on_timer(10.0)  # enquire_link sent
    ev = s.on_timer(15.0)
    assert isinstance(ev[-1], Closed) and s.state is SessionState.CLOSED
    assert s.late_count == 0


def test_a_late_answer_behind_the_smscs_unbind_in_one_read_is_reported_then_cleared() -> None:
    s = bound_session(response_timeout_s=5)
    a, _b = timed_out(s, 2)
    ev = s.receive_data(pdu(C.UNBIND, 77) + resp(a, mid="last"), 6.0)
    assert ev == [
        PeerUnbound(),
        LateSubmitResponse(a, 0, "last", "c0"),
        Closed("unbound by the SMSC"),
    ]
    assert s.late_count == 0  # b's entry went with the session


def test_our_unbind_still_takes_late_answers_until_unbind_resp() -> None:
    s = bound_session(response_timeout_s=5)
    (a,) = timed_out(s, 1)
    s.unbind(6.0)
    (req,) = sent(s)
    assert s.receive_data(resp(a), 6.5) == [LateSubmitResponse(a, 0, "X1", "c0")]
    assert s.late_count == 0
    assert s.receive_data(pdu(C.UNBIND_RESP, req.seq), 7.0) == [Closed("unbound")]


def test_a_seq_reused_after_a_wrap_forgets_the_old_entry() -> None:
    s = bound_session(response_timeout_s=5, initial_seq=MAX_SEQ)  # the bind takes MAX_SEQ
    (a,) = timed_out(s, 1)
    assert a == 1 and s.late_count == 1
    s._seq = 1  # 2**31 requests later (within the grace: only a test can do that)
    again = s.submit(MSG, 6.0, context="new")
    assert again == 1 and s.late_count == 0
    # its answer is the new request's, not a late one
    ev = s.receive_data(resp(again, mid="N"), 6.5)
    assert [type(e).__name__ for e in ev] == ["SubmitResponse"]


def test_a_pause_in_reading_postpones_the_late_grace_too() -> None:
    """Reading paused for back-pressure (deliver handlers behind) leaves the SMSC's answers
    unread in the socket: that time is not the answer's. A late acceptance read after the pause
    must still be reported, or its receipt is unmatched and the part may be sent again."""
    s = bound_session(response_timeout_s=5, enquire_link_s=1000)
    (a,) = timed_out(s, 1)  # timed out at 5.0: late until 65.0
    s.postpone(30.0)  # 30 s unread
    s.on_timer(80.0)  # past the old expiry, within the postponed one
    assert s.late_count == 1
    assert s.receive_data(resp(a, mid="4F"), 80.0) == [LateSubmitResponse(a, 0, "4F", "c0")]
    s2 = bound_session(response_timeout_s=5, enquire_link_s=1000)
    timed_out(s2, 1)
    s2.postpone(30.0)
    s2.on_timer(95.0)  # past the postponed expiry too
    assert s2.late_count == 0
