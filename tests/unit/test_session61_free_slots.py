"""`BindSession.free_slots` kept as an attribute (session 61), not computed by a property.

The connector reads it about twice a part sent; a property was a Python call each. The session
keeps it in step wherever its state or its submits in flight change. These runs drive sessions
of each mode through seeded steps (submits, accepting and refusing answers, generic_nack, late
and unknown answers, time-outs, enquire_link, our unbind, the SMSC's unbind, an unbind in the
middle of a read, the connection's loss, binds refused) and check after every step that it is
what the property computed: the window less the submits in flight while bound and able to
transmit, else 0.
"""

from __future__ import annotations

import random

import pytest

from bridge.smpp import constants as C
from bridge.smpp.codec import Bind, BindResp, MessageIdResp, Pdu, ShortMessage, encode
from bridge.smpp.framing import Framer
from bridge.smpp.session import BindMode, BindSession, NotBound, SessionState, WindowFull

BIND = Bind("esme", "secret", system_type="bridge", address_range="")
MSG = ShortMessage(source_addr="SRC", destination_addr="8613800138000", short_message=b"hi")


def _property(s: BindSession) -> int:
    """The property as session 60 computed it."""
    if s.state is not SessionState.BOUND or not s.mode.can_transmit:
        return 0
    return s.window - s.in_flight


def _frames(s: BindSession) -> list[tuple[int, int]]:
    out = []
    for f in Framer().feed(s.data_to_send()):
        cid, seq = int.from_bytes(f[4:8], "big"), int.from_bytes(f[12:16], "big")
        out.append((cid, seq))
    return out


@pytest.mark.parametrize("seed", range(12))
def test_free_slots_is_the_propertys_after_every_step(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(60):
        mode = rng.choice(list(BindMode))
        s = BindSession(BIND, mode, window=rng.choice([1, 2, 5]), response_timeout_s=5)
        assert s.free_slots == _property(s) == 0
        now = 0.0
        s.start(now)
        (bind,) = _frames(s)
        status = 0 if rng.random() < 0.9 else C.ESME_RBINDFAIL
        s.receive_data(encode(Pdu(bind[0] | C.RESP_BIT, status, bind[1], BindResp("S"))), now)
        assert s.free_slots == _property(s)
        waiting: list[int] = []
        for _step in range(40):
            now += rng.random()
            r = rng.random()
            if r < 0.35:
                try:
                    waiting.append(s.submit(MSG if rng.random() < 0.5 else b"\0" * 30, now, "c"))
                except (NotBound, WindowFull):
                    pass
                _frames(s)
            elif r < 0.65 and waiting:
                seq = waiting.pop(rng.randrange(len(waiting)))
                status = rng.choice([0, 0, 0, C.ESME_RTHROTTLED, C.ESME_RSYSERR])
                cid = C.SUBMIT_SM_RESP if rng.random() < 0.9 else C.GENERIC_NACK
                body = MessageIdResp(f"id{seq}") if cid == C.SUBMIT_SM_RESP else None
                data = encode(Pdu(cid, status, seq, body))
                if rng.random() < 0.2:  # the SMSC's unbind in the same read
                    data += encode(Pdu(C.UNBIND, 0, 900 + seq, None))
                s.receive_data(data, now)
            elif r < 0.7:  # an answer to nothing we wait for
                s.receive_data(encode(Pdu(C.SUBMIT_SM_RESP, 0, 7777, MessageIdResp("x"))), now)
            elif r < 0.78:
                now += rng.choice([1.0, 6.0])
                s.on_timer(now)
                _frames(s)
            elif r < 0.82:
                s.receive_data(encode(Pdu(C.ENQUIRE_LINK, 0, 555, None)), now)
            elif r < 0.86:
                s.unbind(now)
            elif r < 0.88:
                s.receive_data(encode(Pdu(C.UNBIND, 0, 556, None)), now)
            elif r < 0.9:
                s.connection_lost("gone")
            assert s.free_slots == _property(s), (seed, _step, s.state, s.in_flight)
