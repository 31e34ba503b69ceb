#!/usr/bin/env python3
"""Where the SQLite store's write lock is held off a CPU: a `bench.py` run under `perf sched`.

Usage: python scripts/bench_lock_sched.py [-- ARGS for bench.py]

    python scripts/bench_lock_sched.py -- --workers 2 --messages 20000

Why: under `bench.py --workers 2` the holder of the cross-process write lock is on a CPU only
~65% of the time it holds it (the runner's `lock_cpu_s` against `lock_held_s`), against ~90%
with one process, and every other process waits for the lock meanwhile. This runs `bench.py`
(this tree's) under a system-wide `perf record` of the scheduler's switches and wake-ups and of
the system calls a holder may block in (flock, futex, the file I/O, fcntl, sleeps), and splits
each hold of the runner's lock (from the flock that took it, on the loop thread or on the
lock-waiter thread, to the LOCK_UN; the checkpoint thread's holds, on a descriptor of their
own, apart) into what the event loop thread was doing: running, runnable but not running
(preempted: by whom; or woken and not yet on a CPU), or blocked, by the system call it was in
(a futex: the GIL, or another lock; pread/pwrite/fsync: the disk; fcntl: SQLite's -shm locks).
A hold the lock-waiter thread took is split further when the tree measured marks the start
of the loop's callback with a `getsid(0)` (nothing in the daemon calls it; add it there for a
measurement, as session 55 did to the tree before it): the hop, from the waiter's flock to that
callback, then the batch. Since session 55 the lock thread takes the lock through a descriptor
of its own and gives it back at once, and the loop takes it: those takes are not counted (nor
the checkpoint thread's), and every hold starts on the loop.

Per message accepted, in µs, by role (owner, acceptor) and part (hop, batch). Only the
processes of `bench.py`'s process group count. Root and perf needed.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

from bench_syscalls import Processes, print_bench_lines, record_bench

LOCK_EX, LOCK_NB, LOCK_UN = 2, 4, 8
# The system calls a holder can block in, and the flock that marks a hold's ends.
CALLS = (
    "flock",
    "futex",
    "pread64",
    "pwrite64",
    "fsync",
    "fdatasync",
    "fcntl",
    "epoll_pwait",
    "clock_nanosleep",
    "nanosleep",
    "getsid",
)
LINE = re.compile(r"^\s*(\S.*?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+(\S+):\s*(.*)$")
KV = re.compile(r"(\w+)=(\S+)")


class Thread:
    """One thread's state over time: on a CPU, runnable, or blocked in a system call."""

    __slots__ = ("preempted_by", "since", "state", "syscall")

    def __init__(self) -> None:
        self.state = "run"
        self.since = 0.0
        self.syscall: str | None = None
        self.preempted_by = ""


def _hex(pattern: str, trace: str) -> int:
    """The hexadecimal number `pattern`'s group finds in a perf trace line (perf prints each
    field a tracepoint has, so a line without it is not the tracepoint read)."""
    found = re.search(pattern, trace)
    if found is None:
        raise ValueError(f"no {pattern!r} in {trace!r}")
    return int(found.group(1), 16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--keep", help="keep perf's script output in this file")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="-- then bench.py's own options")
    args = ap.parse_args()
    events = ["sched:sched_switch", "sched:sched_waking"]
    for call in CALLS:
        events += [f"syscalls:sys_enter_{call}", f"syscalls:sys_exit_{call}"]
    run = record_bench(
        args.args,
        ["-m", "8M", "-e", ",".join(events)],
        "comm,pid,tid,cpu,time,event,trace",
        "bench-lock-sched-",
    )
    if args.keep:
        Path(args.keep).write_text(run.script)
    if "LOST" in run.perf_err:
        print(f"perf: {run.perf_err.strip()}")
    report(run.script, run.procs, run.messages)
    print_bench_lines(run.output, ("end-to-end", "daemon CPU", "CPU seconds", "store write lock"))


def _who(procs: Processes, pid: int, comm: str) -> str:
    role = procs.roles.get(pid)
    if role is not None:
        return role
    if pid == 0:
        return "idle"
    if comm.startswith(("kworker", "ksoftirqd", "rcu_", "migration", "kdamond")):
        return "the kernel's threads"
    return "other work on the machine (not this run)"


def report(script: str, procs: Processes, messages: int) -> None:
    threads: dict[int, Thread] = collections.defaultdict(Thread)
    tid_pid: dict[int, int] = {}
    # Per process: the open hold (start time, path, the hop's end), and the runner's descriptor
    # (the one its loop thread flocks).
    hold: dict[int, list] = {}
    runner_fd: dict[int, int] = {}
    entered: dict[int, tuple[str, int, int]] = {}  # tid -> (call, fd, cmd) of an open flock
    # Totals: (role, part, what) -> seconds; holds counted by (role, path).
    spent: collections.Counter[tuple[str, str, str]] = collections.Counter()
    holds: collections.Counter[tuple[str, str]] = collections.Counter()
    markers = 0
    taken: collections.Counter[str] = collections.Counter()  # the loop's tries that failed
    # While a hold is open, the loop thread's time goes to its part (hop or batch).

    def account(pid: int, tid: int, now: float) -> None:
        """Add the loop thread's state since it last changed to the open hold, if any."""
        th = threads[tid]
        h = hold.get(pid)
        if h is not None and tid == pid:
            start, _path, hop_end = h
            begin = max(th.since, start)
            if now > begin:
                role = procs.roles.get(pid, "?")
                part = "hop" if hop_end is None and h[1] == "waiter" else "batch"
                what = th.state
                if what == "preempted":
                    what = f"runnable: preempted by {th.preempted_by}"
                elif what == "blocked":
                    what = f"blocked: {th.syscall or '?'}"
                spent[(role, part, what)] += now - begin
        th.since = now

    for line in script.splitlines():
        m = LINE.match(line)
        if m is None:
            continue
        _comm, pid_s, tid_s, _cpu, t_s, event, trace = m.groups()
        pid, tid, now = int(pid_s), int(tid_s), float(t_s)
        tid_pid[tid] = pid
        if event == "sched:sched_switch":
            kv = dict(KV.findall(trace))
            prev, nxt = int(kv["prev_pid"]), int(kv["next_pid"])
            prev_pid = tid_pid.get(prev, prev)
            account(prev_pid, prev, now)
            th = threads[prev]
            if kv["prev_state"].startswith("R"):
                th.state = "preempted"
                npid = tid_pid.get(nxt, nxt)
                th.preempted_by = _who(procs, npid, kv.get("next_comm", "?"))
            else:
                th.state = "blocked"
            nxt_pid = tid_pid.get(nxt, nxt)
            account(nxt_pid, nxt, now)
            threads[nxt].state = "run"
            continue
        if event == "sched:sched_waking":
            kv = dict(KV.findall(trace))
            woke = int(kv["pid"])
            th = threads[woke]
            if th.state == "blocked":
                account(tid_pid.get(woke, woke), woke, now)
                th.state = "woken, waiting for a CPU"
            continue
        if not event.startswith("syscalls:sys_"):
            continue
        enter = event.startswith("syscalls:sys_enter_")
        call = event.removeprefix("syscalls:sys_enter_").removeprefix("syscalls:sys_exit_")
        th = threads[tid]
        if enter:
            th.syscall = call
            if call == "flock":
                fd, cmd = _hex(r"fd: (0x[0-9a-f]+)", trace), _hex(r"cmd: (0x[0-9a-f]+)", trace)
                entered[tid] = ("flock", fd, cmd)
                if cmd == LOCK_UN and hold.get(pid) is not None:
                    if runner_fd.get(pid) == fd:
                        account(pid, tid, now)
                        holds[(procs.roles.get(pid, "?"), hold[pid][1])] += 1
                        del hold[pid]
            elif call == "getsid" and pid == tid and pid in hold and hold[pid][2] is None:
                account(pid, tid, now)
                hold[pid][2] = now
                markers += 1
            continue
        th.syscall = None
        if call != "flock" or tid not in entered:
            continue
        _c, fd, cmd = entered.pop(tid)
        ret = _hex(r"0x([0-9a-f]+)", trace) if "0x" in trace else 0
        if procs.roles.get(pid) not in ("owner", "acceptor"):
            continue  # another run's daemons (another benchmark on the machine)
        if ret != 0 and pid == tid and cmd & LOCK_NB:
            taken[procs.roles[pid]] += 1
        if ret != 0 or not cmd & LOCK_EX:
            continue
        if pid == tid and cmd & LOCK_NB:  # the loop took it at once: its own descriptor
            runner_fd[pid] = fd
            account(pid, tid, now)
            hold[pid] = [now, "loop", now]
        elif pid != tid and not cmd & LOCK_NB and runner_fd.get(pid, fd) == fd:
            # The lock-waiter thread took it (the checkpoint thread's descriptor is new each
            # time; one taken before the runner's is known counts only once it is seen).
            if pid in runner_fd:
                account(pid, pid, now)
                hold[pid] = [now, "waiter", None]
    roles = sorted({r for r, _p, _w in spent})
    print(f"messages accepted: {messages}; holds of the runner's write lock, per message (µs):")
    if not markers:
        print("  (no getsid marker seen: the hop is counted with the batch)")
    for role in roles:
        n = {p: c for (r, p), c in holds.items() if r == role}
        total = sum(v for (r, _p, _w), v in spent.items() if r == role)
        print(
            f"{role}: {1e6 * total / messages:.1f} µs held a message; holds "
            + ", ".join(f"{p} {c}" for p, c in sorted(n.items()))
            + f"; the loop's tries that found it taken {taken[role]}"
        )
        for part in ("hop", "batch"):
            rows = sorted(
                ((w, v) for (r, p, w), v in spent.items() if r == role and p == part),
                key=lambda x: -x[1],
            )
            part_total = sum(v for _w, v in rows)
            if not rows:
                continue
            print(f"  {part}: {1e6 * part_total / messages:.1f}")
            for what, v in rows:
                if 1e6 * v / messages >= 0.05:
                    print(f"    {what:48} {1e6 * v / messages:8.1f}")


if __name__ == "__main__":
    main()
