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


async def test_a_receipt_is_read_into_its_row_without_a_receipt_value(monkeypatch: Any) -> None:
    """The owner's receipt path takes the parsed fields as values (`receipt_values`), not a
    frozen `Receipt` built to be read once per part sent (session 51): with `Receipt` unusable
    the receipt is still stored, as it was parsed, and answered ESME_ROK."""
    from bridge.smpp import receipt as receipt_module

    class Unusable:
        def __init__(self, *_a: Any, **_k: Any) -> None:
            raise AssertionError("a Receipt was built")

    monkeypatch.setattr(receipt_module, "Receipt", Unusable)
    stored: list[Any] = []

    class Store(_Store):
        async def apply_receipts(self, items: list[Any], now: int) -> ReceiptOutcome:
            stored.extend(items)
            return ReceiptOutcome(len(items), 0)

    network = ShortMessage(
        source_addr="8613800138000",
        destination_addr="BRIDGE",
        esm_class=C.ESM_DELIVERY_RECEIPT,
        short_message=b"id:0C sub:001 dlvrd:000 submit date:2612051400 done date:2612051401 "
        b"stat:UNDELIV err:000 text:x",
        tlvs=((C.NETWORK_ERROR_CODE, b"\x03\x00\x22"),),
    )
    smsc = SmscConfig(name="t1", system_id="t", password="t")
    inbound = Inbound(Store(), {"t1": smsc}, batch_delay_s=0.0, clock=lambda: 1_800_000_000.0)  # type: ignore[arg-type]
    answers = [inbound.on_deliver("t1", _receipt("0A")), inbound.on_deliver("t1", network)]
    await inbound.drain()
    for _ in range(3):
        await asyncio.sleep(0)
    assert [await a for a in answers] == [C.ESME_ROK, C.ESME_ROK]
    assert [(r.smsc_msg_id, r.state, r.stat, r.err, r.done_at) for r in stored] == [
        ("A", "delivered", "DELIVRD", "000", 1_796_479_200_000),
        ("C", "undeliverable", "UNDELIV", "34", 1_796_479_260_000),
    ]
    assert all(r.received_at == 1_800_000_000_000 for r in stored)
