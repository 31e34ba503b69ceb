"""Session 57: a one-part message sent without a task (`dispatcher._Quick`, `Connector.send_one`).

Until session 57 each claimed message ran in a task of its own (`Dispatcher._send`): ~15 k
instructions a message for the task alone. A one-part message in the usual case (its route up,
no TPS limit, nothing to await before it leaves) is now sent at its claim by plain calls, the
window's line granting it a slot by a call and the protocol handing it its answer inside the
read that brought it. These hold what the task gave, over real TCP: no task, log lines with the
message's id, a non-acceptance and a shutdown handled as before, and claim order kept (a message
claimed after one whose task has not started does not overtake it). The PDUs and records under
every kind of answer, against the tree before: `scripts/connector_differential.py`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from typing import Any

from bridge import logs
from bridge.config import SmscConfig
from bridge.pipeline.dispatcher import Dispatcher
from bridge.smpp import constants as C
from bridge.smpp.router import Router
from bridge.store.models import Release, SubmitResult, WorkMessage, WorkSegment
from tests.integration.test_smpp_connector import (
    FakeSmsc,
    eventually,
    running,
    smsc,  # noqa: F401 (the fixture)
    smsc_cfg,
)


class Store:
    """Hands out its messages at the first claim; keeps what the dispatcher records."""

    commits_in_order = True
    claim_reports = 0

    def __init__(self, work: list[WorkMessage]) -> None:
        self.work = work
        self.results: list[SubmitResult] = []
        self.releases: list[Release] = []

    async def claim(self, _inst: str, limit: int, *_a: Any, **_kw: Any) -> list[WorkMessage]:
        out, self.work = self.work[:limit], self.work[limit:]
        return out

    async def record_submits(
        self, results: list[Any], releases: list[Any], _now: int, instance: str = ""
    ) -> int:
        self.results += results
        self.releases += releases
        return 0

    async def record_routes(self, _inst: str, items: list[Any]) -> set[str]:
        return {mid for mid, _s in items}

    async def message_held(self, _mid: str) -> bool:
        return False

    async def keep_route_table(self, *_a: Any) -> None:
        return None

    async def unpark(self, *_a: Any) -> int:
        return 0


def message(mid: str, parts: int = 1) -> WorkMessage:
    segs = tuple(
        WorkSegment(
            i + 1,
            parts,
            0x40 if parts > 1 else 0,
            (bytes([5, 0, 3, 7, parts, i + 1]) if parts > 1 else b"") + f"{mid}/{i + 1}".encode(),
            b"",
            0,
        )
        for i in range(parts)
    )
    return WorkMessage(mid, "acc", "+8613800138000", "SRC", 0, None, 0, segs)


def dispatcher(store: Store, conn: Any, cfg: SmscConfig, windows: int = 1) -> Dispatcher:
    return Dispatcher(
        store,  # type: ignore[arg-type]
        {"t1": conn},
        Router([], ["t1"]),
        {"t1": cfg},
        instance="inst-1",
        in_flight_windows=windows,
        idle_s=0.01,
    )


def sending_tasks() -> list[str]:
    return [
        t.get_coro().__qualname__  # type: ignore[union-attr]
        for t in asyncio.all_tasks()
        if "Dispatcher._send" in getattr(t.get_coro(), "__qualname__", "")
    ]


class Lines(logging.Handler):
    """Each record's text with the MESSAGE_ID it was logged under."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[str, str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.getMessage(), logs.MESSAGE_ID.get()))


async def test_a_one_part_message_waits_for_its_answer_without_a_task(
    smsc: FakeSmsc,  # noqa: F811 (the fixture)
) -> None:
    smsc.on_submit = lambda conn, pdu: None  # hold the answers
    cfg = smsc_cfg(smsc.port, window=1)
    async with running(cfg) as conn:
        assert await conn.wait_up(30.0)
        store = Store([message("a"), message("b")])
        d = dispatcher(store, conn, cfg, windows=2)
        runner = asyncio.create_task(d.run())
        await eventually(lambda: len(smsc.held) == 1 and d.inflight == 2)
        # "a" on the wire, "b" in the window's line: neither in a task (until session 57,
        # each in `Dispatcher._send`'s).
        assert sending_tasks() == []
        smsc.on_submit = None
        smsc.release()
        await eventually(lambda: len(store.results) == 2 and not d.inflight)
        assert [(r.message_id, r.outcome) for r in store.results] == [("a", "sent"), ("b", "sent")]
        assert smsc.submits() == [b"a/1", b"b/1"]
        await d.stop(1)
        runner.cancel()


async def test_a_non_acceptance_goes_on_in_a_task_with_the_messages_log_context(
    smsc: FakeSmsc,  # noqa: F811 (the fixture)
) -> None:
    """ESME_RSYSERR, then accepted: resent as send_message resends (its `_send_part`), the
    warning about the error under the message's id, recorded sent."""
    answers = [C.ESME_RSYSERR, 0]
    smsc.on_submit = lambda conn, pdu: answers.pop(0)
    lines = Lines()
    logging.getLogger("bridge").addHandler(lines)
    cfg = smsc_cfg(smsc.port, window=2)
    try:
        async with running(cfg, transient_backoff_s=(0.01, 0.02)) as conn:
            assert await conn.wait_up(30.0)
            store = Store([message("m-1")])
            d = dispatcher(store, conn, cfg)
            runner = asyncio.create_task(d.run())
            await eventually(lambda: len(store.results) == 1 and not d.inflight)
            await d.stop(1)
            runner.cancel()
    finally:
        logging.getLogger("bridge").removeHandler(lines)
    assert [(r.message_id, r.outcome) for r in store.results] == [("m-1", "sent")]
    assert smsc.submits() == [b"m-1/1", b"m-1/1"]
    assert ("smpp submits answered with errors", "m-1") in lines.lines
    assert logs.MESSAGE_ID.get() is None  # the test's own context untouched


async def test_a_fault_after_the_answer_requeues_the_message_under_its_id(
    smsc: FakeSmsc,  # noqa: F811 (the fixture)
) -> None:
    """A callback failing inside the accepted part's bookkeeping (here the metrics hook):
    logged with a traceback under the message's id, the message released as a counted
    attempt, as the task's handler did."""
    lines = Lines()
    logging.getLogger("bridge").addHandler(lines)
    cfg = smsc_cfg(smsc.port, window=2)
    try:
        async with running(cfg) as conn:
            assert await conn.wait_up(30.0)

            def broken(*_a: Any) -> None:
                raise RuntimeError("metrics down")

            conn.on_submit = broken
            store = Store([message("m-2")])
            d = dispatcher(store, conn, cfg)
            runner = asyncio.create_task(d.run())
            await eventually(lambda: len(store.releases) == 1 and not d.inflight)
            await d.stop(1)
            runner.cancel()
    finally:
        logging.getLogger("bridge").removeHandler(lines)
    (rel,) = store.releases
    assert (rel.message_id, rel.count_attempt) == ("m-2", True)
    assert ("sending a message failed; it is requeued", "m-2") in lines.lines
    assert conn._active == 0


async def test_stop_past_the_grace_still_records_an_acceptance_on_the_wire(
    smsc: FakeSmsc,  # noqa: F811 (the fixture)
) -> None:
    """The grace runs out with the part on the wire: as a cancelled task did, its answer is
    still awaited and an acceptance recorded (the restart would resend it), and nothing is left
    in flight."""
    smsc.on_submit = lambda conn, pdu: None
    cfg = smsc_cfg(smsc.port, window=2)
    async with running(cfg) as conn:
        assert await conn.wait_up(30.0)
        store = Store([message("m-3")])
        d = dispatcher(store, conn, cfg)
        runner = asyncio.create_task(d.run())
        await eventually(lambda: len(smsc.held) == 1)
        stopping = asyncio.create_task(d.stop(0.05))
        await asyncio.sleep(0.2)  # past the grace: cancelled, its answer awaited
        assert not stopping.done()
        smsc.on_submit = None
        smsc.release()
        await asyncio.wait_for(stopping, 5)
        runner.cancel()
        assert [(r.message_id, r.outcome) for r in store.results] == [("m-3", "sent")]
        assert not d._tasks and conn._active == 0


async def test_one_part_messages_claimed_after_a_task_do_not_overtake_it(
    smsc: FakeSmsc,  # noqa: F811 (the fixture)
) -> None:
    """A message claimed first that runs in a task (its later parts, a part having gone to
    its SMSC before: `msg.smsc`, which `_send_quick` leaves to the task), whose first step
    comes a loop round after the claim: the messages claimed after it wait for it (tasks
    too), so the window's slots go in claim order, as when every message had a task. (Until
    session 58 a two-part message was such a task; it is sent at its claim now, as the
    one-part messages: `tests/integration/test_session58_parts_quick.py`.)"""
    cfg = smsc_cfg(smsc.port, window=1)
    async with running(cfg) as conn:
        assert await conn.wait_up(30.0)
        x = replace(message("x", parts=2), smsc="t1")
        store = Store([x, message("y"), message("z")])
        d = dispatcher(store, conn, cfg, windows=3)
        runner = asyncio.create_task(d.run())
        await eventually(lambda: len(store.results) == 4 and not d.inflight)
        await d.stop(1)
        runner.cancel()
    # y was in the line for the one slot before x's second part asked for it (after x/1's
    # answer, a loop round later); a one-part message sent at its claim went before x/1.
    assert [sm[-3:] for sm in smsc.submits()] == [b"x/1", b"y/1", b"x/2", b"z/1"]
