#!/usr/bin/env python3
"""The acceptor's wake path, per call after a commit: a datagram to a listening owner (every
call, as before session 48 when the owner waited or the 1-ms throttle let it through) against a
read of the owner's "waiting" flag that finds it busy (bridge/pipeline/wake.py). Real abstract
Unix socket, real memfd; the owner's socket is drained between batches of 10 (Linux queues 10
datagrams, net.unix.max_dgram_qlen), so no send finds its queue full.

    python scripts/bench_wake.py [--calls 200000] [--pairs 3]

Prints ns per call for each path in alternating runs, and their ratio. How many calls take which
path under load is `bench.py --workers 2`'s "owner wakes per message" line.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.pipeline.wake import (
    WAIT_FLAG_FD_ENV,
    WaitFlag,
    WakeSender,
    channel_name,
)

BATCH = 10  # calls between two drains of the owner's socket


def per_call_ns(sender: WakeSender, owner: socket.socket, calls: int) -> tuple[float, int]:
    """ns per wake call, and the datagrams the owner got."""
    spent = got = 0
    for _ in range(calls // BATCH):
        t = time.perf_counter_ns()
        for _ in range(BATCH):
            sender.wake()
        spent += time.perf_counter_ns() - t
        while True:
            try:
                owner.recv(64)
            except BlockingIOError:
                break
            got += 1
    return spent / (calls // BATCH * BATCH), got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=200_000)
    ap.add_argument("--pairs", type=int, default=3)
    args = ap.parse_args()
    name = channel_name(f"/tmp/bench-wake-{os.getpid()}.db", os.getpid())
    owner = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    owner.bind(name)
    owner.setblocking(False)
    flag = WaitFlag.create()
    if flag is None or flag.fd is None:
        sys.exit("no memfd here")
    view = WaitFlag.attach({WAIT_FLAG_FD_ENV: str(os.dup(flag.fd))})
    flag.clear()  # the owner is busy
    always = WakeSender(name, min_interval_s=0)  # a datagram per call
    flagged = WakeSender(name, min_interval_s=0, flag=view)
    sent: list[float] = []
    skipped: list[float] = []
    got = {id(always): 0, id(flagged): 0}
    for i in range(args.pairs):
        order = [(always, sent), (flagged, skipped)]
        for sender, out in order if i % 2 == 0 else order[::-1]:
            ns, n = per_call_ns(sender, owner, args.calls)
            out.append(ns)
            got[id(sender)] += n
        print(f"pair {i + 1}: datagram {sent[-1]:.0f} ns, flag read {skipped[-1]:.0f} ns")
    print(f"datagram per call (ns)             {statistics.median(sent):.0f}")
    print(f"flag read, owner busy, per call (ns)  {statistics.median(skipped):.0f}")
    ratio = statistics.median(skipped) / statistics.median(sent)
    print(f"flag read / datagram               {ratio:.3f}")
    print(f"datagrams the owner got, always / flagged  {got[id(always)]} / {got[id(flagged)]}")
    for s in (always, flagged):
        s.close()
    owner.close()
    flag.close()


if __name__ == "__main__":
    main()
