"""A submit re-arms the bind's timer only when its deadline is earlier than the armed one
(SmppProtocol.submit, session 57), over real TCP against the tests' fake SMSC.

Every request shares one response time-out, so a submit's deadline is the latest of all: with
a timer armed no later, asking the session for its next deadline (a call a part sent) changes
nothing. The first submit after an idle spell is the exception (the timer waits for the
keep-alive's deadline, 30 s here): it must re-arm, or its time-out would come 30 s late.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from bridge.smpp.codec import Bind, ShortMessage
from bridge.smpp.protocol import NO_STATUS, open_bind
from bridge.smpp.session import BindMode, BindSession
from tests.integration.test_smpp_connector import PASSWORD, FakeSmsc


@pytest.mark.parametrize("way", ["submit", "submit_to"])
async def test_only_a_submit_due_before_the_armed_timer_asks_for_the_next_deadline(
    monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    """Both ways in: `submit` (a part of a longer message) and `submit_to` (a one-part message's
    own waiter, Connector.send_one)."""
    smsc = FakeSmsc()
    await smsc.start()
    smsc.on_submit = lambda conn, pdu: None  # never answered: each times out
    asked: list[float] = []
    real = BindSession.next_deadline

    def counted(self: BindSession) -> float | None:
        got = real(self)
        asked.append(time.monotonic())
        return got

    monkeypatch.setattr(BindSession, "next_deadline", counted)
    session = BindSession(
        Bind("esme", PASSWORD), BindMode.TRANSCEIVER, window=10, response_timeout_s=0.3,
        enquire_link_s=30,
    )  # fmt: skip
    proto = await open_bind("127.0.0.1", smsc.port, session, None)

    def send(part: ShortMessage) -> asyncio.Future[Any]:
        if way == "submit":
            return proto.submit(part)
        waiter: asyncio.Future[Any] = proto._loop.create_future()  # done/cancelled/set_result
        proto.submit_to(part, waiter)
        return waiter

    try:
        await asyncio.wait_for(proto.wait_bound(), 5)
        # The bind's own time-out armed the timer; once it fired (early: harmless) the timer
        # waits for the keep-alive's deadline.
        await asyncio.sleep(0.5)
        assert proto._timer is not None and proto._timer_at > proto._loop.time() + 20
        part = ShortMessage(source_addr="SRC", destination_addr="861380013800", short_message=b"a")
        before = len(asked)
        t0 = time.monotonic()
        first = send(part)
        # The first after the bind: due in 0.3 s, before the keep-alive's 30 s: re-armed.
        assert len(asked) == before + 1
        rest: list[Any] = [send(part) for _ in range(5)]
        assert len(asked) == before + 1  # due after the first: the armed timer stands
        results = await asyncio.wait_for(asyncio.gather(first, *rest), 5)
        elapsed = time.monotonic() - t0
        assert [(r.status, r.error) for r in results] == [(NO_STATUS, "TIMEOUT")] * 6
        assert 0.3 <= elapsed < 2.0, elapsed  # not the keep-alive's 30 s
        # With nothing in flight the timer waits for the keep-alive again; a submit then is
        # due first and re-arms it.
        again = send(part)
        r = await asyncio.wait_for(again, 5)
        assert (r.status, r.error) == (NO_STATUS, "TIMEOUT")
    finally:
        proto.abort("test over")
        await smsc.kill()
