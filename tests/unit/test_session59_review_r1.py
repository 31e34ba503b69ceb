"""Session 59's review of the written submit_sm bodies (`submit_bodies`): the session's
bookkeeping for a body queued inline as octets (`BindSession.submit`'s own steps, not
`_request`'s) must be what a ShortMessage's was, in the cases the inline steps copy by hand.

`test_session59_submit_bodies.py` compares the octets each part encodes to; this drives two
bound sessions side by side, one given `submit_bodies`' parts and one `build_parts`', through
what a bind sees between two submits: answers, generic_nacks, response time-outs and their late
answers, a sequence number wrapping past MAX_SEQ onto one still pending (skipped) and onto one
that timed out (its late entry dropped: an answer to the new request is that request's, not a
late one). Both must write the same PDUs and report the same events, window counts and next
deadline. Planted slips caught: the inline path without `seq not in pending`, without the late
entry's pop, with the seq not wrapping, with the deadline not `now + response_timeout_s`.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

from bridge.pipeline.submit_sm import build_parts, submit_bodies
from bridge.smpp import constants as C
from bridge.smpp.codec import Bind, BindResp, MessageIdResp, Pdu, decode, encode
from bridge.smpp.framing import Framer
from bridge.smpp.session import MAX_SEQ, BindMode, BindSession, Bound
from bridge.store.models import WorkMessage, WorkSegment

SMSC: Any = SimpleNamespace(
    service_type="", source_ton=5, source_npi=0, dest_ton=1, dest_npi=1, priority=0,
    registered_delivery=1, validity_minutes=None, default_source="BRIDGE",
)  # fmt: skip


def _bound(initial_seq: int) -> BindSession:
    s = BindSession(
        Bind("esme", "pw"), BindMode.TRANSCEIVER, window=3, initial_seq=initial_seq,
        response_timeout_s=10.0,
    )  # fmt: skip
    s.start(0.0)
    (req,) = [decode(f) for f in Framer().feed(s.data_to_send())]
    answer = encode(Pdu(req.command_id | C.RESP_BIT, 0, req.seq, BindResp("SMSC")))
    assert s.receive_data(answer, 0.0) == [Bound("SMSC")]
    return s


def _message(rng: random.Random, n: int) -> WorkMessage:
    total = rng.choice([1, 2, 3])
    segs = tuple(
        WorkSegment(
            k, total, 0x40 if total > 1 else 0, rng.randbytes(rng.randrange(1, 140)), b"", 0
        )
        for k in range(1, total + 1)
    )
    return WorkMessage(f"m{n}", "acc", "+8613800138000", None, 8, None, 0, segs)


def _answer(seq: int, how: str) -> bytes:
    if how == "ok":
        return encode(Pdu(C.SUBMIT_SM_RESP, 0, seq, MessageIdResp(f"id{seq}")))
    if how == "throttled":
        return encode(Pdu(C.SUBMIT_SM_RESP, C.ESME_RTHROTTLED, seq, None))
    return encode(Pdu(C.GENERIC_NACK, C.ESME_RINVCMDID, seq, None))


def _state(s: BindSession) -> tuple[Any, ...]:
    return (s.in_flight, s.free_slots, s.next_deadline(), sorted(s._pending), sorted(s._late))


def _pair(initial_seq: int) -> tuple[BindSession, BindSession]:
    return _bound(initial_seq), _bound(initial_seq)


def test_a_written_body_keeps_the_sessions_bookkeeping() -> None:
    """Seeded messages, answered, refused, nacked or timed out (some answered late), across
    a wrap of the sequence numbers: the same PDUs, events and counts either way."""
    rng = random.Random(591)
    old, new = _pair(MAX_SEQ - 40)
    now = 1.0
    bodies = 0
    seqs: list[int] = []
    for n in range(300):
        msg = _message(rng, n)
        pairs = zip(build_parts(msg, SMSC), submit_bodies(msg, SMSC), strict=True)
        for i, (o, b) in enumerate(pairs):
            bodies += type(b) is bytes
            now += 0.25
            seq = old.submit(o, now, (n, i))
            assert new.submit(b, now, (n, i)) == seq
            seqs.append(seq)
            assert old.data_to_send() == new.data_to_send(), (n, i)
            assert _state(old) == _state(new), (n, i)
            how = rng.choice(["ok"] * 6 + ["throttled", "nack", "timeout"])
            if how == "timeout":
                now += 10.0
                ev = old.on_timer(now)
                assert ev and new.on_timer(now) == ev, (n, i)
                if rng.random() < 0.5:
                    continue  # its late answer never comes
                how = "ok"  # a late acceptance
            ev = old.receive_data(_answer(seq, how), now)
            assert ev and new.receive_data(_answer(seq, how), now) == ev, (n, i, how)
            assert (old.data_to_send(), _state(old)) == (new.data_to_send(), _state(new))
    assert bodies > 400 and MAX_SEQ in seqs and 1 in seqs  # the written bodies, the wrap


def test_a_wrapped_seq_skips_a_pending_one_and_takes_a_timed_out_one_back() -> None:
    """After a wrap (`_seq` set back here, as 2**31 submits would) the next seq is skipped
    while its request is still pending, and taken again once it timed out: its late entry
    goes, and the answer that comes is the new request's (SubmitResponse), not a late one."""
    msg = WorkMessage(
        "m", "acc", "+8613800138000", None, 0, None, 0, (WorkSegment(1, 1, 0, b"hi", b"", 0),)
    )
    (o,), (b,) = build_parts(msg, SMSC), submit_bodies(msg, SMSC)
    assert type(b) is bytes
    runs = []
    for s, body in ((_bound(100), o), (_bound(100), b)):
        timed = s.submit(body, 0.0, "timed")  # 101
        s.data_to_send()
        assert [type(e).__name__ for e in s.on_timer(10.0)] == ["RequestTimedOut"]
        pending = s.submit(body, 10.0, "pending")  # 102, pending until 20
        s._seq = pending  # wrapped onto it: skipped
        skipped = s.submit(body, 11.0, "next")
        s._seq = timed  # wrapped onto the timed-out one: taken again
        again = s.submit(body, 12.0, "again")
        events = s.receive_data(_answer(again, "ok"), 12.5)
        runs.append((timed, pending, skipped, again, s.data_to_send(), events, _state(s)))
    assert runs[0] == runs[1]
    timed, pending, skipped, again, _, events, _ = runs[1]
    assert (skipped, again) == (pending + 1, timed)
    assert [(type(e).__name__, e.context) for e in events] == [("SubmitResponse", "again")]
