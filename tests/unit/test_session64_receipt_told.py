"""Session 64 (h3): a receipt is queued in the receipts' batcher with a tuple of its answer and
arguments, not a `partial` (README note 27).

What must hold: a batcher given `failed` hands its items' tuples to `committed` or `failed`,
never calling one (a failed or cancelled batch: `failed` once, with the exception); every
receipt of a failed batch refused ESME_RX_T_APPN, even when an answer before it raises; the
metrics' counts keyed by the state's text, so a committed batch is counted without hashing a
`ReceiptState` (Enum's `__hash__` is Python code on 3.11).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bridge.config import SmscConfig
from bridge.pipeline.batcher import Batcher
from bridge.pipeline.inbound import Inbound
from bridge.smpp import constants as C
from bridge.smpp.protocol import DeliverAnswer
from bridge.smpp.receipt import ReceiptState
from bridge.smpp.session import ReceiptReceived
from bridge.store.models import ReceiptIn, ReceiptOutcome

TEXT = (
    b"id:0012D687 sub:001 dlvrd:001 submit date:2612051400 done date:2612051401 "
    b"stat:DELIVRD err:000 text:hello"
)


def _fields(mid: bytes, stat: bytes = b"DELIVRD") -> Any:
    text = TEXT.replace(b"0012D687", mid).replace(b"DELIVRD", stat)
    return (C.ESM_DELIVERY_RECEIPT, text, mid + b"\0", None, None, None)


async def test_a_batcher_with_failed_hands_its_tuples_over_uncalled() -> None:
    """Committed: `committed` gets the tuples in order; failed: `failed` gets them once with the
    exception; cancelled: the same, then the cancel goes on. `failed` needs `committed`."""
    seen: list[Any] = []
    mode = "ok"
    gate = asyncio.Event()

    async def flush(items: list[int]) -> None:
        if mode == "fail":
            raise RuntimeError("down")
        if mode == "hang":
            await gate.wait()

    b: Batcher[int] = Batcher(
        flush,
        max_delay_s=0.0,
        committed=lambda told: seen.append(("committed", list(told))),
        failed=lambda told, exc: seen.append(("failed", list(told), type(exc))),
    )
    told = [(k, "x") for k in range(3)]  # tuples: calling one would raise TypeError
    for k, t in enumerate(told):
        b.add_call(k, t)
    await b.drain()
    assert seen == [("committed", told)]
    seen.clear()
    mode = "fail"
    b.add_call(7, told[0])
    b.add_call(8, told[1])
    await b.drain()
    assert seen == [("failed", told[:2], RuntimeError)]
    seen.clear()
    mode = "hang"
    b.add_call(9, told[2])
    await asyncio.sleep(0.01)
    (task,) = b._inflight
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert seen == [("failed", [told[2]], asyncio.CancelledError)]
    with pytest.raises(ValueError, match="committed"):
        Batcher(flush, failed=lambda told, exc: None)


class _Store:
    commits_in_order = True

    def __init__(self) -> None:
        self.fail = False
        self.items: list[ReceiptIn] = []

    async def apply_receipts(self, items: list[ReceiptIn], now: int) -> ReceiptOutcome:
        if self.fail:
            raise RuntimeError("down")
        self.items += items
        return ReceiptOutcome(len(items), 0)


class _Metrics:
    def __init__(self) -> None:
        self.counted: list[dict[tuple[str, str], int]] = []

    def receipts_counted(self, counts: dict[tuple[str, str], int]) -> None:
        self.counted.append(dict(counts))

    def unmatched(self, n: int) -> None:
        pass


async def test_a_failed_batch_refuses_every_receipt_even_after_an_answer_that_raises() -> None:
    """Each receipt's tuple read by `_receipts_failed`: every answer ESME_RX_T_APPN, the one
    whose settle raises logged and the ones after it refused all the same."""
    store = _Store()
    store.fail = True
    inbound = Inbound(store, {"s": SmscConfig(name="s", system_id="t", password="t")},  # type: ignore[arg-type]
                      batch_delay_s=0.0)  # fmt: skip
    answers = [
        inbound.on_receipt("s", ReceiptReceived(k, _fields(m)))
        for k, m in enumerate([b"0000000A", b"0000000B", b"0000000C"])
    ]

    def broken(status: int) -> None:
        raise RuntimeError("answer failed")

    answers[0].settle = broken  # type: ignore[method-assign]
    await inbound.drain()
    assert [a.done() for a in answers] == [False, True, True]
    assert [await a for a in answers[1:]] == [C.ESME_RX_T_APPN] * 2
    assert inbound.receipts == 0


async def test_receipts_are_counted_by_their_state_s_text_without_hashing_the_enum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The tally a committed batch tells the metrics is keyed by (SMSC, the state's text), in
    first-seen order, with `ReceiptState.__hash__` made unusable (it ran for each receipt's key
    when the member was queued); the stored `ReceiptIn.state` is that same text, a plain str."""

    def no_hash(self: ReceiptState) -> int:
        raise AssertionError("a ReceiptState hashed on the receipt path")

    monkeypatch.setattr(ReceiptState, "__hash__", no_hash)
    store = _Store()
    metrics = _Metrics()
    inbound = Inbound(store, {"s": SmscConfig(name="s", system_id="t", password="t")},  # type: ignore[arg-type]
                      batch_delay_s=0.0, metrics=metrics)  # type: ignore[arg-type]  # fmt: skip
    stats = [b"DELIVRD", b"UNDELIV", b"DELIVRD", b"EXPIRED", b"ACCEPTD"]
    answers: list[DeliverAnswer] = [
        inbound.on_receipt("s", ReceiptReceived(k, _fields(b"%08X" % k, stat)))
        for k, stat in enumerate(stats)
    ]
    await inbound.drain()
    assert [await a for a in answers] == [C.ESME_ROK] * 5
    assert metrics.counted == [
        {("s", "delivered"): 2, ("s", "undeliverable"): 1, ("s", "expired"): 1,
         ("s", "enroute"): 1}
    ]  # fmt: skip
    assert [list(k) for c in metrics.counted for k in c] == [
        ["s", "delivered"], ["s", "undeliverable"], ["s", "expired"], ["s", "enroute"]
    ]  # fmt: skip
    assert all(type(k[1]) is str for c in metrics.counted for k in c)
    states = [i.state for i in store.items]
    assert states == ["delivered", "undeliverable", "delivered", "expired", "enroute"]
    assert all(type(s) is str for s in states)
