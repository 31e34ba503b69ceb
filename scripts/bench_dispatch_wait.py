#!/usr/bin/env python3
"""The dispatcher's wait for a message's results: through gather, through its future, and none.

Each claimed message is a task that holds its dispatch slot until its results' batch is
committed. Until session 49 the task waited through `asyncio.gather(fut, return_exceptions=True)`
(a wrapping future, a Python done-callback and one more loop hop); session 49 awaited the
future itself (`_settled`, kept here); since session 50 the task does not wait at all: the
batcher calls the message's `_Flight` from inside the flush (`Batcher.add_call`) and that frees
the slot, and the task leaves the dispatcher's table itself (no done-callback). This times each
per message: N tasks handing in one item each, then the batch resolved; CPU time of the whole
round (create, hand in, wake, finish, slot freed) divided by N; rounds alternate.

    python scripts/bench_dispatch_wait.py [--messages 100000] [--rounds 3] [--loop asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


async def _settled(fut: asyncio.Future[None]) -> None:
    """Session 49's wait (bridge/pipeline/dispatcher.py then)."""
    try:
        await fut
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    except Exception:
        pass


async def _with_gather(fut: asyncio.Future[None]) -> None:
    await asyncio.gather(fut, return_exceptions=True)


async def _round(
    wait: Callable[[asyncio.Future[None]], Coroutine[Any, Any, None]], n: int
) -> float:
    """A task per message awaiting its future; each task's done-callback frees its slot."""
    loop = asyncio.get_running_loop()
    futs: list[asyncio.Future[None]] = [loop.create_future() for _ in range(n)]
    freed = 0

    def done(_t: asyncio.Task[None]) -> None:
        nonlocal freed
        freed += 1

    began = time.process_time()
    for f in futs:
        loop.create_task(wait(f)).add_done_callback(done)
    await asyncio.sleep(0)  # every task now waits on its future
    for f in futs:
        f.set_result(None)
    while freed < n:  # noqa: ASYNC110 (the callbacks run within two loop iterations)
        await asyncio.sleep(0)
    return (time.process_time() - began) / n * 1e6


async def _round_calls(n: int) -> float:
    """A task per message handing in a call and ending; the calls free the slots."""
    loop = asyncio.get_running_loop()
    calls: list[Callable[[BaseException | None], None]] = []
    tasks: dict[int, asyncio.Task[None]] = {}
    freed = 0

    def settled(_exc: BaseException | None) -> None:
        nonlocal freed
        freed += 1

    async def send(i: int) -> None:
        try:
            calls.append(settled)
        finally:
            del tasks[i]

    began = time.process_time()
    for i in range(n):
        tasks[i] = loop.create_task(send(i))
    await asyncio.sleep(0)  # every task handed in its call and ended
    for c in calls:
        c(None)
    return (time.process_time() - began) / n * 1e6


async def main(a: argparse.Namespace) -> None:
    old: list[float] = []
    mid: list[float] = []
    new: list[float] = []
    for _ in range(a.rounds):
        old.append(await _round(_with_gather, a.messages))
        mid.append(await _round(_settled, a.messages))
        new.append(await _round_calls(a.messages))
    print(f"loop: {type(asyncio.get_running_loop()).__module__}, {a.messages} messages a round")
    print(f"per message, gather (us)          {statistics.median(old):.2f}")
    print(f"per message, _settled (us)        {statistics.median(mid):.2f}")
    print(f"per message, batcher call (us)    {statistics.median(new):.2f}")
    saved = statistics.median(mid) - statistics.median(new)
    print(f"saved against _settled (us)       {saved:.2f}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = ap.parse_args()
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(main(args))
    else:
        asyncio.run(main(args))
