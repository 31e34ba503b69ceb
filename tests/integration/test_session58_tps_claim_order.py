"""Session 58's review (r3) of the merge that sends messages on a bind with a TPS limit without a
task: claim order at the TPS turn; and a long line of expired waiters (the window's line).

A message whose TPS turn is not free at once takes it in a task (`OnePart._turn`), which steps a
loop round later. Until then nobody holds the turn (`Turns.held` is False), so `_tps_now`, the
plain-call way to the throttler, let a message claimed after it take the throttler's next room
first: with the loop busy long enough for a submit to leave the throttler's window (a slow
claim, a long callback), the later message went out ahead and the earlier one waited a TPS
window more. Before the merge every message on such a bind took its turn in claim order
(`Connector._tps_turn` from its task, `Dispatcher._unstarted` keeping the tasks in claim order),
and session 57 keeps claim order for a message claimed behind one not started yet the same way.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import pytest

from bridge.pipeline import dispatcher as dispatcher_module
from tests.integration.test_session57_quick_send import Store, dispatcher, message
from tests.integration.test_smpp_connector import (
    FakeSmsc,
    eventually,
    running,
    smsc,  # noqa: F401 (the fixture)
    smsc_cfg,
)


async def test_a_message_claimed_later_does_not_take_the_tps_turn_first(
    smsc: FakeSmsc,  # noqa: F811 (the fixture)
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`tps: 10` (one submit a 0.1-s window): "q" fills the window; "a" and "b" are claimed
    together while it is full, "b"'s parts built slowly (the loop busy 0.15 s: "q"'s submit has
    left the window by then). "a" was claimed first and holds its window slot first: it takes
    the throttler's next room first, then "b"."""
    build = dispatcher_module.build_parts

    def slow_build(msg: Any, smsc_cfg: Any) -> Any:
        if msg.id == "b":
            time.sleep(0.15)  # the loop busy (a slow claim, a long callback)
        return build(msg, smsc_cfg)

    monkeypatch.setattr(dispatcher_module, "build_parts", slow_build)
    cfg = smsc_cfg(smsc.port, window=10, tps=10.0)
    async with running(cfg) as conn:
        assert await conn.wait_up(30.0)
        await asyncio.sleep(0.15)  # nothing of the bind's start in the throttler's window
        store = Store([message("q")])
        d = dispatcher(store, conn, cfg, windows=2)
        runner = asyncio.create_task(d.run())
        await eventually(lambda: len(store.results) == 1 and not d.inflight)
        store.work = [message("a"), message("b")]  # within q's 0.1 s
        d.wake()
        await eventually(lambda: len(store.results) == 3 and not d.inflight, within_s=5)
        await d.stop(1)
        runner.cancel()
        assert not d._tasks and conn._active == 0
        assert all(b.reserved == 0 and not b.hi and not b.lo for b in conn._binds)
    assert [sm.decode() for sm in smsc.submits()] == ["q/1", "a/1", "b/1"]


async def test_a_long_line_of_expired_messages_is_ended_without_recursion(
    smsc: FakeSmsc,  # noqa: F811 (the fixture)
) -> None:
    """A window of one, 600 messages waiting in its line past their validity when the slot
    frees: each granted waiter hands the slot straight back (`OnePart._slot`'s `finally`), which
    pumped again from inside the pump, a level deeper each: RecursionError, 266 of them requeued
    as faults (the tree before the merge too: session 57's one-part record). All end
    `expired`, none requeued, nothing reported to the loop."""
    smsc.on_submit = lambda conn, pdu: None  # hold the first answer
    cfg = smsc_cfg(smsc.port, window=1)
    loop = asyncio.get_running_loop()
    errors: list[Any] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx.get("message")))
    n = 600
    async with running(cfg) as conn:
        assert await conn.wait_up(30.0)
        now_ms = int(time.time() * 1000)
        work = [message("first")]
        work += [replace(message(f"m{i}"), expires_at=now_ms + 300) for i in range(n)]
        store = Store(work)
        d = dispatcher(store, conn, cfg, windows=n + 1)
        d.claim_batch = n + 1
        runner = asyncio.create_task(d.run())
        await eventually(lambda: len(smsc.held) == 1 and conn._binds[0].waiting() == n)
        await asyncio.sleep(0.4)  # their validity past, still in the line
        smsc.on_submit = None
        smsc.release()
        await eventually(lambda: not d.inflight, within_s=10)
        await d.stop(1)
        runner.cancel()
        assert not d._tasks and conn._active == 0
        assert all(b.reserved == 0 and not b.hi and not b.lo for b in conn._binds)
    outcomes = sorted((r.outcome for r in store.results), key=str)
    assert outcomes == ["expired"] * n + ["sent"]
    assert store.releases == []
    assert errors == []
