"""Session 52: the two frozen dataclasses the owner builds per part sent, ReceiptIn (one per
receipt, bridge/pipeline/inbound.py) and SubmitResult (one per accepted submit_sm,
bridge/pipeline/dispatcher.py `_sent`), are called with their fields by position, not by
keyword (a class called with keywords gets them as a dict that its __init__ unpacks again).
Position depends on the classes' field order, which these tests hold: a field added, moved or
renamed fails here, and each value lands in its own field.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from bridge.config import SmscConfig
from bridge.pipeline.dispatcher import _sent
from bridge.pipeline.inbound import Inbound
from bridge.smpp import constants as C
from bridge.smpp.codec import ShortMessage
from bridge.smpp.connector import SubmitOutcome
from bridge.smpp.msgid import MsgIdRule
from bridge.store.models import ReceiptIn, ReceiptOutcome, SubmitResult


def _names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def test_the_classes_built_by_position_keep_the_order_their_callers_write() -> None:
    assert _names(ReceiptIn) == [
        "smsc", "smsc_msg_id", "state", "stat", "err", "done_at", "received_at", "raw",
    ]  # fmt: skip
    assert _names(SubmitResult) == [
        "message_id", "seq", "outcome", "smsc", "smsc_msg_id", "smsc_msg_id_raw", "error_code",
        "at", "sent_at",
    ]  # fmt: skip


class _Store:
    commits_in_order = True

    def __init__(self) -> None:
        self.items: list[Any] = []

    async def apply_receipts(self, items: list[Any], now: int) -> ReceiptOutcome:
        self.items += items
        return ReceiptOutcome(len(items), 0)


async def test_each_value_of_a_receipt_lands_in_its_own_field() -> None:
    store = _Store()
    smsc = SmscConfig(name="t1", system_id="t", password="t")
    inbound = Inbound(store, {"t1": smsc}, batch_delay_s=0.0, clock=lambda: 1_800_000_000.5)  # type: ignore[arg-type]
    text = (
        "id:00ABC sub:001 dlvrd:000 submit date:2612051400 done date:2612051401 "
        "stat:UNDELIV err:042 text:hello"
    )
    body = ShortMessage(esm_class=C.ESM_DELIVERY_RECEIPT, short_message=text.encode())
    answer = inbound.on_deliver("t1", body)
    await inbound.drain()
    assert await answer == C.ESME_ROK
    assert store.items == [
        ReceiptIn(
            smsc="t1",
            smsc_msg_id="ABC",  # the SMSC's rule: leading zeros dropped, case folded
            state="undeliverable",
            stat="UNDELIV",
            err="042",
            done_at=1_796_479_260_000,  # 2026-12-05 14:01 UTC
            received_at=1_800_000_000_500,
            raw=text,
        )
    ]


def test_each_value_of_a_sent_part_lands_in_its_own_field() -> None:
    loop = asyncio.new_event_loop()
    try:
        out = SubmitOutcome(0, "ok", 0, "ESME_ROK", "00FF", loop.time() - 0.25)
        got = _sent("msg_52", 2, "t1", out, MsgIdRule(), 1_800_000_000_000, loop)
    finally:
        loop.close()
    assert dataclasses.replace(got, sent_at=0) == SubmitResult(
        message_id="msg_52",
        seq=2,
        outcome="sent",
        smsc="t1",
        smsc_msg_id="FF",
        smsc_msg_id_raw="00FF",
        error_code=None,
        at=1_800_000_000_000,
        sent_at=0,
    )
    assert 1_800_000_000_000 - 300 < got.sent_at <= 1_800_000_000_000 - 250
