"""A receipt's deliver_sm_resp status is set inside the flush that committed it (the receipts'
batcher calls `Inbound._receipt_committed`, `Batcher.add_call`), not by a done-callback of a
future per receipt one loop iteration later (session 50)."""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.config import SmscConfig
from bridge.pipeline.inbound import Inbound
from bridge.smpp import constants as C
from bridge.smpp.codec import ShortMessage
from bridge.store.models import ReceiptOutcome


class _Store:
    commits_in_order = True

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.answers: list[asyncio.Future[int]] = []
        self.seen: list[bool] = []  # whether each answer was set, one loop iteration on

    async def apply_receipts(self, items: list[Any], now: int) -> ReceiptOutcome:
        answers = list(self.answers)
        asyncio.get_running_loop().call_soon(lambda: self.seen.extend(a.done() for a in answers))
        if self.fail:
            raise ValueError("not stored")
        return ReceiptOutcome(len(items), 0)


def _receipt(mid: str) -> ShortMessage:
    text = f"id:{mid} sub:001 dlvrd:001 submit date:2612051400 done date:2612051400 stat:DELIVRD"
    return ShortMessage(
        source_addr="8613800138000",
        destination_addr="BRIDGE",
        esm_class=C.ESM_DELIVERY_RECEIPT,
        short_message=(text + " err:000 text:x").encode(),
    )


async def _answers(store: _Store) -> list[int]:
    smsc = SmscConfig(name="t1", system_id="t", password="t")
    inbound = Inbound(store, {"t1": smsc}, batch_delay_s=0.0)  # type: ignore[arg-type]
    store.answers = [inbound.on_deliver("t1", _receipt(m)) for m in ("0A", "0B")]  # type: ignore[misc]
    assert not any(a.done() for a in store.answers)  # nothing answered before the commit
    await inbound.drain()
    for _ in range(3):
        await asyncio.sleep(0)
    return [a.result() for a in store.answers]


async def test_a_receipt_is_answered_inside_the_flush_that_committed_it() -> None:
    store = _Store()
    assert await _answers(store) == [C.ESME_ROK, C.ESME_ROK]
    assert store.seen == [True, True]


async def test_a_failed_flush_asks_for_redelivery_as_it_fails() -> None:
    store = _Store(fail=True)
    assert await _answers(store) == [C.ESME_RX_T_APPN, C.ESME_RX_T_APPN]
    assert store.seen == [True, True]
