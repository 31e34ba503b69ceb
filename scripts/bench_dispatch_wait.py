#!/usr/bin/env python3
"""The dispatcher's wait for a message's results, as gather did it and as it is done now.

Each claimed message is a task that, once its parts are answered, waits for the future of its
results' batch (one batcher call per message, so one future) before its dispatch slot frees.
It waited through `asyncio.gather(fut, return_exceptions=True)`: a wrapping future, a Python
done-callback and one more loop hop per message. `dispatcher._settled` awaits the future itself.
This times both per message: N tasks, each waiting on its own future, all resolved at once,
CPU time of the whole round (create, wait, wake, finish) divided by N; rounds alternate.

    python scripts/bench_dispatch_wait.py [--messages 100000] [--rounds 3] [--loop asyncio]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bridge.pipeline.dispatcher import _settled


async def _with_gather(fut: asyncio.Future[None]) -> None:
    await asyncio.gather(fut, return_exceptions=True)


async def _round(wait: Callable[[asyncio.Future[None]], Awaitable[None]], n: int) -> float:
    loop = asyncio.get_running_loop()
    futs: list[asyncio.Future[None]] = [loop.create_future() for _ in range(n)]
    began = time.process_time()
    tasks = [loop.create_task(wait(f)) for f in futs]
    await asyncio.sleep(0)  # every task now waits on its future
    for f in futs:
        f.set_result(None)
    await asyncio.gather(*tasks)
    return (time.process_time() - began) / n * 1e6


async def main(a: argparse.Namespace) -> None:
    old: list[float] = []
    new: list[float] = []
    for _ in range(a.rounds):
        old.append(await _round(_with_gather, a.messages))
        new.append(await _round(_settled, a.messages))
    print(f"loop: {type(asyncio.get_running_loop()).__module__}, {a.messages} messages a round")
    print(f"per message, gather (us)      {statistics.median(old):.2f}")
    print(f"per message, _settled (us)    {statistics.median(new):.2f}")
    print(f"saved per message (us)        {statistics.median(old) - statistics.median(new):.2f}")


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
