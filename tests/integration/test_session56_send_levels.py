"""Session 56: the coroutine levels between a message's task and the future it waits on.

Each coroutine level between a task and the future it is suspended on is a frame that the
task's every suspension and resumption passes through (on Python 3.11, a `gen_send_ex` and an
interpreter entry per level each way), besides the coroutine object made for each call. Until
session 56 a one-part message's task waited for its submit_sm_resp six levels deep
(`_send` -> `_send_parts` -> `_send_on` -> `send_message` -> `_send_part` -> `_submit_on`), and a
part waiting for a window slot seven (`_acquire`). These pin the flattened chains over real TCP
(the connector's usual part awaits its answer in `send_message` itself, a waiting part its slot
in `_submit_on`); the behaviour is the connector's and dispatcher's tests', and the octets on
the wire `scripts/send_path_wire.py --compare`'s.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from typing import Any

from bridge.smpp import constants as C
from tests.integration.test_smpp_connector import (
    FakeSmsc,
    eventually,
    part,
    running,
    smsc,  # noqa: F401 (the fixture)
    smsc_cfg,
)

ROOT = Path(__file__).resolve().parents[2]


def levels(task: asyncio.Task[Any]) -> list[str]:
    """The coroutines a suspended task's chain passes through, outermost first, down to the
    future it waits on."""
    names = []
    coro: Any = task.get_coro()
    while coro is not None and hasattr(coro, "cr_code"):
        names.append(coro.cr_code.co_name)
        coro = coro.cr_await
    assert isinstance(coro, asyncio.Future) or type(coro).__name__ == "FutureIter", coro
    return names


async def test_a_part_with_a_free_slot_waits_for_its_answer_in_send_message(
    smsc: FakeSmsc,  # noqa: F811 (the fixture)
) -> None:
    smsc.on_submit = lambda conn, pdu: None  # hold the answer: the task stays suspended on it
    async with running(smsc_cfg(smsc.port, window=5)) as c:
        assert await c.wait_up(30.0)
        task = asyncio.create_task(c.send_message([part("one")]))
        await eventually(lambda: len(smsc.held) == 1)
        # Until session 56: send_message -> _send_part -> _submit_on -> the answer's future.
        assert levels(task) == ["send_message"]
        smsc.on_submit = None
        smsc.release()
        ((out,),) = [await task]
        assert (out.kind, out.status_name) == ("ok", "ESME_ROK")


async def test_a_part_waiting_for_a_slot_waits_one_level_below_send_message(
    smsc: FakeSmsc,  # noqa: F811 (the fixture)
) -> None:
    smsc.on_submit = lambda conn, pdu: None
    async with running(smsc_cfg(smsc.port, window=1)) as c:
        assert await c.wait_up(30.0)
        first = asyncio.create_task(c.send_message([part("first")]))
        await eventually(lambda: len(smsc.held) == 1)
        second = asyncio.create_task(c.send_message([part("second")]))
        await asyncio.sleep(0.05)  # in line for the one slot
        assert len(smsc.received(C.SUBMIT_SM)) == 1
        # Until session 56: ... -> _send_part -> _submit_on -> _acquire -> the line's future.
        assert levels(second) == ["send_message", "_submit_on"]
        smsc.on_submit = None
        smsc.release()
        assert [o.kind for o in await first] == ["ok"]
        assert [o.kind for o in await second] == ["ok"]
        assert smsc.submits() == [b"first", b"second"]


def test_bench_send_path_counts_at_the_daemons_gc_threshold() -> None:
    """`bench_send_path.py` counts at the threshold the daemon sets (bridge/cli.py _tune_gc),
    not CPython's 700 (until session 56: the collector was ~7% of its count)."""
    from bridge.cli import GC_THRESHOLD

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_send_path_s56", ROOT / "scripts" / "bench_send_path.py"
        )
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    assert mod.DAEMON_GC_THRESHOLD == GC_THRESHOLD
