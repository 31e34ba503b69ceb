"""A stopwatch that tells a slow product from a loaded machine.

A test that bounds a product's timer from above ("the receipt comes within 2 s of its 0.3 s
delay", "stop() returns within 1 s of its 0.2 s grace") measured by the wall fails on a machine
busy with other work: CI runs `pytest -n 3` on 2 cores, sometimes beside other jobs, and then
the test's process waits its turn for a CPU for seconds, with no fault of the timer. The kernel
counts that wait: the second field of `/proc/<pid>/task/<tid>/schedstat` is the time each
thread spent runnable but not running (its run-queue delay, in ns). The wall less that delay is
the time the work took where it was given a CPU whenever it asked: what the product promises.

So an upper bound asserts `Stopwatch.unloaded()`, and a lower bound (the timer waited at least
its interval) keeps the wall: a loaded machine only makes it longer. A timer that fires at 10x
its interval, or never, still fails: its extra time is not a run-queue delay (the thread
sleeps in epoll, not runnable). Only the thread that started the watch is counted in this
process (its event loop's): another thread's wait for a CPU while the loop sleeps is no
lateness of the loop. Where the work runs in other processes too (a daemon, a simulator), all
their threads are counted when their pids are given: the bound is then looser under load,
never tighter. Never subtract it for a lower bound.

Where `/proc` has no schedstat (another OS, a kernel without CONFIG_SCHED_INFO) the delay reads
as 0 and the bound is the wall, as before.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable


class Stopwatch:
    """Wall time since start, and that time less the run-queue delay it contained.

    Each thread's delay is counted from its own reading at the start (or from 0 for a thread
    started since): a long-lived thread that ends meanwhile takes only what it waited since the
    start with it, never its whole history."""

    def __init__(self, pids: Iterable[int] = ()) -> None:
        # This process: the thread that started the watch (the test's event loop) alone. Its
        # other threads (a store's runner, pytest-timeout's) may wait for a CPU while the loop
        # sleeps in epoll: counted, that made a 0.64 s wait read 0.01 s at load ~20.
        self.own = (os.getpid(), str(threading.get_native_id()))
        self.pids = tuple(pids)
        self._delay0 = self._delays()
        self.started = time.monotonic()

    def _delays(self) -> dict[tuple[int, str], int]:
        out = thread_delays(self.pids)
        mine = _read_delay(*self.own)
        if mine is not None:
            out[self.own] = mine
        return out

    def wall(self) -> float:
        """Seconds since start, by the monotonic clock (for lower bounds)."""
        return time.monotonic() - self.started

    def waited(self) -> float:
        """Seconds of run-queue delay since start, summed over the threads watched."""
        first = self._delay0
        return sum(ns - first.get(key, 0) for key, ns in self._delays().items()) / 1e9

    def unloaded(self) -> float:
        """Seconds since start less the time spent waiting for a CPU (for upper bounds).

        Read at several moments (a hook's stamps), the differences are unloaded durations."""
        waited = self.waited()
        return max(0.0, time.monotonic() - self.started - waited)

    def __repr__(self) -> str:
        return f"Stopwatch(wall={self.wall():.3f} s, run-queue delay={self.waited():.3f} s)"


def thread_delays(pids: Iterable[int]) -> dict[tuple[int, str], int]:
    """Each thread's run-queue delay so far, in ns, by (pid, tid); none where it cannot be
    read (a process gone, a kernel without schedstat)."""
    out: dict[tuple[int, str], int] = {}
    for pid in pids:
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            ns = _read_delay(pid, tid)
            if ns is not None:
                out[pid, tid] = ns
    return out


def _read_delay(pid: int, tid: str) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{tid}/schedstat", "rb") as f:
            return int(f.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
