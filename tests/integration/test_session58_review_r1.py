"""Session 58 review (r1) of the receipts' `DeliverAnswer` (README note 27).

`drain_delivers` waits for the deliver handlers running when it is called, so their answers go
out before the unbind: a snapshot. With the receipts' answers counted instead of kept as futures
(session 58), the drain waited until no receipt at all was unanswered, counting those that came
after it began; under a steady stream of receipts (reading goes on until the unbind) that is
never, and every stop waited its whole `unbind_timeout_s` (5 s by default) a bind.

Over real TCP: an SMSC written here (bind, a receipt deliver_sm when told), the real
`SmppProtocol` and `BindSession` through `open_bind`, the real `Inbound` with a store whose
commits wait for the test.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.config import SmscConfig
from bridge.pipeline.inbound import Inbound
from bridge.smpp import constants as C
from bridge.smpp.codec import Bind
from bridge.smpp.protocol import open_bind
from bridge.smpp.session import BindMode, BindSession
from bridge.store.models import ReceiptOutcome
from tests.integration.test_session58_answers import _Smsc, _until


async def test_drain_waits_for_the_receipts_it_found_not_for_those_after_it() -> None:
    gates: list[asyncio.Event] = []

    class Store:
        commits_in_order = True

        async def apply_receipts(self, items: list[Any], now: int) -> ReceiptOutcome:
            gate = asyncio.Event()
            gates.append(gate)
            await gate.wait()
            return ReceiptOutcome(len(items), 0)

    smsc = _Smsc(greet=False)
    await smsc.start()
    cfg = SmscConfig(name="s", system_id="t", password="t", port=smsc.port)
    inbound = Inbound(Store(), {"s": cfg}, batch_delay_s=0.0)  # type: ignore[arg-type]
    session = BindSession(Bind("t", "t"), BindMode.TRANSCEIVER, window=10)
    proto = await open_bind(
        "127.0.0.1", smsc.port, session, lambda body, _s: inbound.on_deliver("s", body)
    )
    drain: asyncio.Task[None] | None = None
    try:
        await proto.wait_bound()
        smsc.send(0)
        await _until(lambda: len(gates) == 1)  # receipt 0's commit under way
        drain = asyncio.ensure_future(proto.drain_delivers(timeout_s=60.0))
        await asyncio.sleep(0)
        smsc.send(1)  # a receipt after the drain began: its commit waits for the test
        await _until(lambda: proto.delivers == 2)
        assert proto.pending_delivers == 2
        gates[0].set()  # receipt 0 committed and answered
        await _until(lambda: (C.DELIVER_SM_RESP, 0, 100) in smsc.received)
        # The drain ends with the receipt it found (the tree after session 58's merge waited
        # for receipt 1 too: here for the whole 60 s).
        await _until(drain.done, within_s=3.0)
        assert proto.pending_delivers == 1
        # Receipt 1 still answered once committed, and a later drain waits for it.
        late = asyncio.ensure_future(proto.drain_delivers(timeout_s=60.0))
        await _until(lambda: len(gates) == 2)
        await asyncio.sleep(0.02)
        assert not late.done()
        gates[1].set()
        await _until(late.done)
        await _until(lambda: (C.DELIVER_SM_RESP, 0, 101) in smsc.received)
        assert proto.pending_delivers == 0
        assert [r for r in smsc.received if r[0] == C.DELIVER_SM_RESP] == [
            (C.DELIVER_SM_RESP, 0, 100),
            (C.DELIVER_SM_RESP, 0, 101),
        ]
    finally:
        if drain is not None:
            drain.cancel()
        for gate in gates:
            gate.set()
        proto.abort("test over")
        await smsc.close()
        await inbound.drain()


async def test_a_deliver_answer_awaited_again_after_a_timed_out_wait() -> None:
    """A wait that timed out cancels the future it waited on, not the answer: awaited again,
    the answer is waited for (the merged tree raised CancelledError at once, in a task nobody
    cancelled), and set, it is the status."""
    from bridge.smpp.protocol import DeliverAnswer

    answer = DeliverAnswer()
    try:
        async with asyncio.timeout(0.01):
            await answer
    except TimeoutError:
        pass
    assert not answer.done() and not answer.cancelled()
    asyncio.get_running_loop().call_later(0.01, answer.set_result, C.ESME_RX_T_APPN)
    assert await answer == C.ESME_RX_T_APPN
