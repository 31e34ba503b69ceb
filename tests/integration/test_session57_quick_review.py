"""Session 57's review of the one-part send without a task (`dispatcher._Quick`,
`Connector.send_one`): what the task path did that the record must do too.

A TPS limit that comes while one-part messages wait in the window's line (a reload giving the
SMSC a `tps`, `Connector.update_limits`): a task waiting there took its turn at the throttler
once granted its slot (`_submit_on`), a message sent without a task must too, or a window of
waiting messages went out at once over the limit the reload just set.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time

from tests.integration.test_session57_quick_send import Store, dispatcher, message
from tests.integration.test_smpp_connector import (
    FakeSmsc,
    eventually,
    running,
    smsc,  # noqa: F401 (the fixture)
    smsc_cfg,
)


async def test_a_tps_limit_set_while_messages_wait_in_the_line_holds_for_them(
    smsc: FakeSmsc,  # noqa: F811 (the fixture)
) -> None:
    smsc.on_submit = lambda conn, pdu: None  # hold the first answer: the rest wait in line
    cfg = smsc_cfg(smsc.port, window=1, tps=0)
    async with running(cfg) as conn:
        assert await conn.wait_up(30.0)
        store = Store([message(f"t-{i}") for i in range(4)])
        d = dispatcher(store, conn, cfg, windows=4)
        runner = asyncio.create_task(d.run())
        await eventually(lambda: len(smsc.held) == 1 and d.inflight == 4)
        assert conn._binds[0].waiting() == 3
        conn.update_limits(dataclasses.replace(cfg, tps=1.0))  # one submit a second from now
        smsc.on_submit = None  # the rest answered at once
        smsc.release()
        released = time.monotonic()
        await eventually(lambda: len(smsc.submits()) >= 2)
        await asyncio.sleep(max(0.0, 0.5 - (time.monotonic() - released)))
        # Within the limit's first second: the held one and one more, not the whole line.
        assert len(smsc.submits()) == 2, smsc.submits()
        await eventually(lambda: len(store.results) == 4 and not d.inflight, within_s=6.0)
        assert [r.outcome for r in store.results] == ["sent"] * 4
        assert conn._active == 0 and conn._binds[0].reserved == 0
        await d.stop(1)
        runner.cancel()


async def test_a_stop_while_a_part_waits_for_its_tps_turn_hands_its_slot_on(
    smsc: FakeSmsc,  # noqa: F811 (the fixture)
) -> None:
    """The grace runs out with a message granted its slot and waiting at the throttler (the
    limit set while it waited in the line): nothing sent, nothing recorded (the claim stays),
    its slot and the connector's count given back."""
    smsc.on_submit = lambda conn, pdu: None
    cfg = smsc_cfg(smsc.port, window=1, tps=0)
    async with running(cfg) as conn:
        assert await conn.wait_up(30.0)
        store = Store([message(f"s-{i}") for i in range(3)])
        d = dispatcher(store, conn, cfg, windows=3)
        runner = asyncio.create_task(d.run())
        await eventually(lambda: len(smsc.held) == 1 and d.inflight == 3)
        conn.update_limits(dataclasses.replace(cfg, tps=0.2))  # one submit in 5 s
        smsc.on_submit = None
        smsc.release()
        await eventually(lambda: len(smsc.submits()) == 2 and len(store.results) == 2)
        await asyncio.wait_for(d.stop(0.05), 5)  # s-2 waits at the throttler meanwhile
        runner.cancel()
        assert [r.message_id for r in store.results] == ["s-0", "s-1"]
        assert smsc.submits() == [b"s-0/1", b"s-1/1"]
        assert not d._tasks and not d.inflight and not d._by_smsc
        assert conn._active == 0 and conn._binds[0].reserved == 0


async def test_a_cancel_before_the_resend_tasks_first_step_still_ends_the_message(
    smsc: FakeSmsc,  # noqa: F811 (the fixture)
) -> None:
    """The link drops with the part on the wire (CONNECTION_LOST: it goes on in a task,
    `OnePart._rest`) and stop()'s cancel comes in the same loop round, before that task's
    first step: a coroutine cancelled before it starts runs none of its handlers, and the
    message was never finished (left in the dispatcher's `_tasks`, stop() waiting
    CANCEL_WAIT_S for it, the connector's `_active` and the SMSC's count never given back, its
    dispatch slot held for ever). Found by a seeded run of random answers, drops and stops."""
    smsc.on_submit = lambda conn, pdu: None
    cfg = smsc_cfg(smsc.port, window=2)
    async with running(cfg) as conn:
        assert await conn.wait_up(30.0)
        store = Store([message("c-1")])
        d = dispatcher(store, conn, cfg)
        runner = asyncio.create_task(d.run())
        await eventually(lambda: len(smsc.held) == 1)
        (quick,) = d._tasks.values()
        proto = conn._binds[0].proto
        assert proto is not None
        proto.abort("test: the link drops")  # connection_lost runs in the next round
        await asyncio.sleep(0)
        assert quick._task is not None and not quick._task.done()  # made, not started
        quick.cancel()  # what stop() does past its grace
        await eventually(lambda: not d._tasks and not d.inflight)
        assert conn._active == 0 and not d._by_smsc
        assert store.results == [] and store.releases == []  # the claim stays, as a task's did
        await asyncio.wait_for(d.stop(1), 2)
        runner.cancel()


async def test_a_cancel_before_the_tps_turns_first_step_hands_the_slot_on(
    smsc: FakeSmsc,  # noqa: F811 (the fixture)
) -> None:
    """The same race for a part granted its slot after a TPS limit came (its turn at the
    throttler in a task, `OnePart._turn`): cancelled before that task's first step, the
    message ends and the slot granted to it is handed back, or the window had one slot less
    until the connector was stopped."""
    smsc.on_submit = lambda conn, pdu: None
    cfg = smsc_cfg(smsc.port, window=1, tps=0)
    async with running(cfg) as conn:
        assert await conn.wait_up(30.0)
        store = Store([message("g-1"), message("g-2")])
        d = dispatcher(store, conn, cfg, windows=2)
        runner = asyncio.create_task(d.run())
        await eventually(lambda: len(smsc.held) == 1 and d.inflight == 2)
        b = conn._binds[0]
        (second,) = b.lo
        conn.update_limits(dataclasses.replace(cfg, tps=1.0))
        b.lo.popleft()  # what `_pump` does granting it a slot, here without an answer
        b.reserved += 1
        second.set_result(True)
        assert second._task is not None and not second._task.done()  # at the throttler
        second.cancel_send()  # stop()'s cancel, before the task's first step
        await eventually(lambda: len(d._tasks) == 1 and d.inflight == 1)
        assert b.reserved == 0 and conn._active == 1  # g-1 still on the wire
        smsc.on_submit = None
        smsc.release()
        await eventually(lambda: not d._tasks and not d.inflight)
        assert [r.message_id for r in store.results] == ["g-1"]
        assert smsc.submits() == [b"g-1/1"]
        await d.stop(1)
        runner.cancel()
