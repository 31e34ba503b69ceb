"""Session 62 (h3): the connector's bind hands each receipt to the receipt handler itself (a
`partial` with the SMSC's name, no `Connector._receipt` call between them), and the bind's
protocol counts it in the connector's `receipt_tally`: `snapshot()["delivers"]` still counts
every deliver_sm handed to a handler, receipts and MO alike (README note 27). Over real TCP
against the fake SMSC of test_smpp_connector.
"""

from __future__ import annotations

from typing import Any

import pytest

from bridge.smpp import constants as C
from bridge.smpp.codec import ShortMessage
from bridge.smpp.connector import Connector
from bridge.smpp.protocol import DeliverAnswer
from bridge.smpp.session import ReceiptReceived
from tests.integration.test_smpp_connector import (
    FakeSmsc,
    eventually,
    running,
    smsc,  # noqa: F401 (the fixture)
    smsc_cfg,
)

TEXT = (
    b"id:0012D687 sub:001 dlvrd:001 submit date:2612051400 done date:2612051401 "
    b"stat:DELIVRD err:000 text:hello"
)


async def test_receipts_reach_the_handler_from_the_bind_and_are_counted(
    smsc: FakeSmsc,  # noqa: F811 (the fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Receipts and an MO on a transceiver bind: each receipt told to the handler with the
    SMSC's name and answered, `delivers` counting all (every bind the connector opens counts
    in its one `_receipts_read`). `Connector._receipt` made unusable (the tree before
    passed each receipt through it: its answers are then ESME_RX_T_APPN)."""

    def unusable(*_a: Any) -> Any:
        raise AssertionError("Connector._receipt called")

    monkeypatch.setattr(Connector, "_receipt", unusable, raising=False)
    seen: list[tuple[str, int]] = []

    def on_receipt(name: str, ev: ReceiptReceived) -> DeliverAnswer:
        seen.append((name, ev.seq))
        out = DeliverAnswer()
        out.set_result(C.ESME_ROK)
        return out

    async def on_deliver(name: str, body: ShortMessage) -> int:
        seen.append((name, -1))
        return C.ESME_ROK

    receipt = ShortMessage(
        source_addr="8613800138000", destination_addr="BRIDGE", short_message=TEXT,
        esm_class=C.ESM_DELIVERY_RECEIPT,
    )  # fmt: skip
    mo = ShortMessage(source_addr="8613800138000", destination_addr="10086", short_message=b"MO")
    async with running(smsc_cfg(smsc.port), on_deliver, on_receipt=on_receipt) as c:
        await eventually(lambda: len(smsc.bound()) == 1, within_s=5.0)
        answers = [await smsc.deliver(receipt), await smsc.deliver(mo)]
        answers.append(await smsc.deliver(receipt))
        assert [await a for a in answers] == [C.ESME_ROK] * 3
        assert len(seen) == 3 and [k for _, k in seen].count(-1) == 1  # the MO in a task
        assert c.snapshot()["delivers"] == 3
    assert [name for name, _ in seen] == ["t1"] * 3
    assert [k for _, k in seen].count(-1) == 1
