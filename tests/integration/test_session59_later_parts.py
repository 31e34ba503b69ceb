"""Session 59: a message's later part sent straight from the answer before it, not through the
window's priority line, when that line is empty and a slot is free, whoever waits in the
ordinary line (`OnePart._start`).

The answer to part k starts part k+1 before the freed slot is pumped to the messages waiting
in the ordinary line (`lo`). Until session 59 the part then joined the priority line (`hi`) and
pumped it, and the pump granted it the slot (`hi` goes first): its place taken, a grant, the
`_lined` and `_slot` steps, for the same submit_sm. These check, over real TCP, that the parts
still go out in the same order (a window of one: every later part ahead of the messages
waiting) and the same way through the TPS turn and past the validity, with no later part
granted from the line when it had a slot at once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import pytest

from bridge.smpp.connector import OnePart
from tests.integration.test_session57_quick_send import Store, dispatcher, message
from tests.integration.test_smpp_connector import (
    FakeSmsc,
    eventually,
    running,
    smsc,  # noqa: F401 (the fixture)
    smsc_cfg,
)


def _count_lined(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The part (`_i`) of each grant from the window's line: `_slot` run while the pump
    grants (`_lined` counted it until session 61, `set_result` given a slot until session 62,
    whose pump runs a granted part's `_slot` itself)."""
    lined: list[int] = []
    real = OnePart._slot

    def counted(self: OnePart) -> None:
        if self._bind.pumping:
            lined.append(self._i)
        real(self)

    monkeypatch.setattr(OnePart, "_slot", counted)
    return lined


@pytest.mark.parametrize("window", [1, 2])
async def test_later_parts_take_a_free_slot_without_the_line(
    smsc: FakeSmsc,  # noqa: F811 (the fixture)
    monkeypatch: pytest.MonkeyPatch,
    window: int,
) -> None:
    lined = _count_lined(monkeypatch)
    cfg = smsc_cfg(smsc.port, window=window)
    async with running(cfg) as conn:
        assert await conn.wait_up(30.0)
        msgs = [message("a", 3), message("b", 2), message("c"), message("d", 2), message("e", 3)]
        store = Store(msgs)
        d = dispatcher(store, conn, cfg, windows=5)
        runner = asyncio.create_task(d.run())
        await eventually(lambda: len(store.results) == 11 and not d.inflight)
        await d.stop(1)
        runner.cancel()
        assert not d._tasks and conn._active == 0
    got = [sm[-3:].decode() for sm in smsc.submits()]
    if window == 1:
        assert got == ["a/1", "a/2", "a/3", "b/1", "b/2", "c/1", "d/1", "d/2", "e/1", "e/2", "e/3"]
    else:  # each message's parts in order
        for name, n in (("a", 3), ("b", 2), ("c", 1), ("d", 2), ("e", 3)):
            mine = [g for g in got if g[0] == name]
            assert mine == [f"{name}/{k}" for k in range(1, n + 1)]
    assert sorted(r.outcome for r in store.results) == ["sent"] * 11
    if window == 1:
        # Messages waited in the line for their first part; no later part did (6 before:
        # a/2, a/3, b/2, d/2, e/2, e/3). On a wider window a later part still waits there when
        # the answers of one read freed fewer slots than parts they started.
        assert lined and all(i == 0 for i in lined)


async def test_a_later_part_past_its_validity_still_ends_through_the_line(
    smsc: FakeSmsc,  # noqa: F811 (the fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A later part whose message's validity passed while the part before it was answered
    goes through the line as before (`_slot` finds it expired): the rest of the message is
    recorded expired, the messages waiting are sent."""
    cfg = smsc_cfg(smsc.port, window=1)
    held: list[Any] = []
    smsc.on_submit = lambda conn, pdu: held.append(1)  # hold the answers
    async with running(cfg) as conn:
        assert await conn.wait_up(30.0)
        soon = int(time.time() * 1000) + 300
        store = Store([replace(message("a", 3), expires_at=soon), message("b")])
        d = dispatcher(store, conn, cfg, windows=2)
        runner = asyncio.create_task(d.run())
        await eventually(lambda: len(smsc.submits()) == 1)
        await asyncio.sleep(0.4)
        smsc.on_submit = None
        smsc.release()
        await eventually(lambda: len(store.results) == 4 and not d.inflight)
        await d.stop(1)
        runner.cancel()
    assert [sm[-3:] for sm in smsc.submits()] == [b"a/1", b"b/1"]
    assert [(r.message_id, r.seq, r.outcome) for r in store.results] == [
        ("a", 1, "sent"),
        ("a", 2, "expired"),
        ("a", 3, "expired"),
        ("b", 1, "sent"),
    ]
