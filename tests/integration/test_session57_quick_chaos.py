"""Session 57's review: seeded runs of the real `Dispatcher` and `Connector` over TCP, with
random answers (accepted, ESME_RSYSERR, ESME_RTHROTTLED, refused, none, the link dropped),
validities running out, a TPS limit set mid-run, `in_flight_on_restart: unknown`, and the
connector or the dispatcher stopped at a random moment with a random grace. Whatever the
timing, once both stopped nothing may be left: no message still in the dispatcher's `_tasks`
or holding its dispatch slot, no SMSC count, no claim-order debt (`_unstarted`), no connector
call in progress (`_active`), no window slot reserved or waiter in a line, no result twice, no
error reported to the loop. A one-part message's record (`_Quick`, `OnePart`) is ended by
plain calls from many places: one place that forgot to end it shows up here (a task cancelled
before its first step did, seed 90 of the first run: `test_session57_quick_review.py`)."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from typing import Any

import pytest

from bridge.smpp import constants as C
from tests.integration.test_session57_quick_send import Store, dispatcher, message
from tests.integration.test_smpp_connector import FakeSmsc, running, smsc_cfg


class _Store(Store):
    async def record_late_submits(self, items: list[Any], _now: int) -> int:
        return 0


async def _scenario(
    seed: int,
    more: bool,
    parts: tuple[int, ...] = (1, 1, 1, 1, 2),
    tps: tuple[float, ...] = (0, 0, 0, 50),
) -> list[str]:
    """`more`: validities, `in_flight_on_restart: unknown` and the connector stopped first
    too (their draws come after the others', so seed 90 without them is the first run's).
    `parts`, `tps`: what a message's parts and the SMSC's limit are drawn from (session 58's
    long messages and TPS limits, `test_session58_parts_quick.py`: one draw each as before)."""
    rng = random.Random(seed)
    smsc = FakeSmsc()
    await smsc.start()
    problems: list[str] = []
    loop = asyncio.get_running_loop()
    errors: list[Any] = []
    loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx.get("message")))
    window, binds = rng.randint(1, 4), rng.choice([1, 1, 2])
    windows, n = rng.randint(1, 3), rng.randint(4, 14)
    rng.random()  # the first run's draw of a mode it never used

    async def answer(conn: Any, _pdu: Any) -> int | None:
        r = rng.random()
        await asyncio.sleep(rng.choice([0, 0, 0.005, 0.02]))
        if r < 0.55:
            return 0
        if r < 0.65:
            return C.ESME_RSYSERR
        if r < 0.75:
            return C.ESME_RTHROTTLED
        if r < 0.80:
            return C.ESME_RINVDSTADR
        if r >= 0.93:
            conn.writer.transport.abort()
        return None  # no answer: the response time-out

    smsc.on_submit = answer
    cfg = smsc_cfg(
        smsc.port,
        window=window,
        binds=binds,
        response_timeout_s=0.25,
        tps=rng.choice(tps),
    )
    connector_first = False
    if more:
        cfg = dataclasses.replace(
            cfg, in_flight_on_restart=rng.choice(["resend", "resend", "unknown"])
        )
        connector_first = rng.random() < 0.25
    try:
        async with running(cfg, transient_backoff_s=(0.01, 0.02)) as conn:
            await conn.wait_up(2.0)
            now_ms = int(time.time() * 1000)
            work = []
            for i in range(n):
                m = message(f"m{seed}-{i}", rng.choice(parts))
                if more and rng.random() < 0.3:
                    m = dataclasses.replace(m, expires_at=now_ms + rng.randint(-50, 400))
                work.append(m)
            store = _Store(work)
            d = dispatcher(store, conn, cfg, windows=windows)
            runner = asyncio.create_task(d.run())
            t = rng.uniform(0, 0.5)
            if rng.random() < 0.3:
                await asyncio.sleep(t / 2)
                conn.update_limits(dataclasses.replace(cfg, tps=rng.choice([0.0, 5.0, 100.0])))
                await asyncio.sleep(t / 2)
            else:
                await asyncio.sleep(t)
            grace = rng.choice([0.0, 0.01, 0.05, 0.2, 1.0])
            stopping = None
            if connector_first:  # a reload's stop of the SMSC's connector, then the daemon's
                stopping = asyncio.create_task(conn.stop(grace))
                await asyncio.sleep(rng.choice([0, 0.01, 0.1]))
            await asyncio.wait_for(d.stop(grace), 10)
            runner.cancel()
            if stopping is not None:
                await asyncio.wait_for(stopping, 10)
            if d._tasks or d._unstarted or d._by_smsc or d.inflight:
                problems.append(
                    f"dispatcher: tasks {list(d._tasks)}, unstarted {d._unstarted}, "
                    f"by_smsc {dict(d._by_smsc)}, in flight {d.inflight}"
                )
        if conn._active:
            problems.append(f"connector: {conn._active} active")
        if getattr(conn, "_turns_due", 0):  # session 58's review: `_turn` tasks counted
            problems.append(f"connector: {conn._turns_due} TPS turns due")
        if conn._turns.held:
            problems.append("connector: the TPS turn still held")
        for b in conn._binds:
            if b.reserved or b.hi or b.lo:
                problems.append(f"bind {b.index}: {b.reserved} reserved, {b.waiting()} waiting")
        parts = [(r.message_id, r.seq) for r in store.results]
        if len(parts) != len(set(parts)):
            problems.append(f"a part's result twice: {parts}")
    finally:
        await smsc.kill()
    await asyncio.sleep(0.05)
    if errors:
        problems.append(f"reported to the loop: {errors}")
    return problems


@pytest.mark.parametrize(("seed", "more"), [(90, False), *((s, True) for s in range(300, 310))])
async def test_nothing_is_left_after_random_answers_and_stops(seed: int, more: bool) -> None:
    assert await _scenario(seed, more) == []
