#!/usr/bin/env python3
"""Count the system calls behind each message of a `bench.py` run, by process and thread.

Usage: python scripts/bench_syscalls.py [--events EV,...] [-- ARGS for bench.py]

    python scripts/bench_syscalls.py -- --workers 2 --messages 20000

Why: under `bench.py --workers 2` the kernel takes ~18% of the machine in our processes (pread64,
pwrite64, fsync, mremap, munmap ...), and the timed figures move by more than any one of those
between two runs on a shared machine. Counts do not: this runs `bench.py` (this tree's) under a
system-wide `perf record -c 1` of the syscall tracepoints and the page faults (root, perf), and
prints each per message accepted, for each process of the run (owner, acceptor, simulator, `cli`
for the one-off commands, the load generator: this script's `bench.py` itself) split into its
main thread (the event loop) and its other threads (fsync, checkpoint, lock waiter, read lanes),
then the daemons' pread64, pwrite64, fsync and fdatasync by the file they went to (the store, its
`-wal`). Counting starts once every daemon process holds the store's `-wal` open (their imports,
which stat and open hundreds of files, are done), and ends with `bench.py`. Only the processes of
`bench.py`'s own process group count: other benchmarks on the machine are not ours.

Compare two trees by running this script from each (it runs the `bench.py` beside it, whose
daemons import that tree's `bridge`), or one tree under two environments.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

from children import Children  # scripts/ is the script's own folder

HERE = Path(__file__).resolve().parent
CHILDREN = Children()
SYSCALLS = (
    "pread64",
    "pwrite64",
    "fsync",
    "fdatasync",
    "mremap",
    "munmap",
    "mmap",
    "brk",
    "flock",
    "fcntl",
    "newfstatat",
    "openat",
)
FAULTS = "page-faults"
# Counted by the file they went to, too (their first argument is the descriptor).
BY_FILE = ("pread64", "pwrite64", "fsync", "fdatasync")


class Processes:
    """The run's processes, found by polling /proc: role by command line, and each daemon's open
    files (descriptor -> path), so a pread's descriptor names its file."""

    def __init__(self, group: int) -> None:
        self.group = group
        self.roles: dict[int, str] = {group: "loadgen"}
        self.files: dict[tuple[int, int], str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def daemons_with_wal(self) -> int:
        """Daemon processes holding the store's -wal open: their start-up is done."""
        pids = {pid for (pid, _fd), path in self.files.items() if path.endswith("-wal")}
        return sum(1 for pid in pids if self.roles.get(pid) in ("owner", "acceptor"))

    def _poll(self) -> None:
        while not self._stop.wait(0.25):
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    self._look(int(entry))

    def _look(self, pid: int) -> None:
        try:
            if pid not in self.roles:
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                if int(stat[2]) != self.group:
                    return  # another process group: not this run's
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                self.roles[pid] = _role(argv)
            if self.roles[pid] in ("owner", "acceptor"):
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    self.files[(pid, int(fd))] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except (OSError, IndexError, ValueError):
            pass  # gone meanwhile


def _role(argv: list[bytes]) -> str:
    if b"bridge.cli" not in argv:
        return "other"
    if b"acceptor" in argv:
        return "acceptor"
    if b"sim" in argv:
        return "sim"
    return "owner" if b"run" in argv else "cli"


def _file_kind(path: str) -> str:
    if path.endswith("-wal"):
        return "store -wal"
    if path.endswith(".db"):
        return "store"
    return path.rsplit("/", 1)[-1]


class Recorded(NamedTuple):
    """A bench.py run recorded by perf (record_bench)."""

    output: str  # bench.py's
    script: str  # `perf script`'s
    perf_err: str
    procs: Processes
    messages: int  # accepted


def bench_options(args: list[str]) -> tuple[list[str], int]:
    """bench.py's options after this script's own (a leading `--` dropped), and how many daemon
    processes it starts (the owner and its `--workers` acceptors)."""
    bench_args = args[1:] if args[:1] == ["--"] else args
    workers = argparse.ArgumentParser(add_help=False)
    workers.add_argument("--workers", type=int, default=0)
    return bench_args, 1 + workers.parse_known_args(bench_args)[0].workers


def record_bench(args: list[str], record: list[str], fields: str, prefix: str) -> Recorded:
    """`bench.py args` with `perf record -q -a -c 1 <record>` system-wide from the moment every
    daemon has its store open to the end of the run; `perf script -F fields` of it. Exits saying
    why when perf is missing, bench.py fails or accepts nothing, or perf recorded nothing. Shared
    by this script and bench_lock_sched.py."""
    bench_args, want = bench_options(args)
    if shutil.which("perf") is None:
        raise SystemExit("perf is not installed")
    CHILDREN.on_signals()
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        data = str(Path(tmp) / "perf.data")
        bench = CHILDREN.popen(
            [sys.executable, str(HERE / "bench.py"), *bench_args],
            cwd=HERE.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs = Processes(bench.pid)
        procs.start()
        while procs.daemons_with_wal() < want and bench.poll() is None:
            time.sleep(0.1)
        perf = CHILDREN.popen(
            ["perf", "record", "-q", "-a", "-c", "1", *record, "-o", data],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        output = bench.communicate()[0]
        perf.send_signal(signal.SIGINT)
        perf_err = perf.communicate()[1]
        procs.stop()
        if bench.returncode != 0:
            raise SystemExit(f"bench.py failed ({bench.returncode}):\n{output[-3000:]}")
        if not Path(data).exists():
            raise SystemExit(f"perf record failed: {perf_err.strip()}")
        script = subprocess.run(
            ["perf", "script", "-i", data, "-F", fields],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    found = re.search(r"^accepted messages\s+(\d+)", output, re.M)
    messages = int(found.group(1)) if found else 0
    if not messages:
        raise SystemExit(f"bench.py accepted no message:\n{output[-3000:]}")
    return Recorded(output, script, perf_err, procs, messages)


def print_bench_lines(output: str, starts: tuple[str, ...]) -> None:
    for line in output.splitlines():
        if line.startswith(starts):
            print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", default=",".join(SYSCALLS), help="syscalls counted")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="-- then bench.py's own options")
    args = ap.parse_args()
    names = [e for e in args.events.split(",") if e]
    events = ",".join(f"syscalls:sys_enter_{e}" for e in names) + f",{FAULTS}"
    run = record_bench(args.args, ["-e", events], "pid,tid,event,trace", "bench-syscalls-")
    report(run.script, run.procs, names, run.messages)
    print_bench_lines(
        run.output, ("end-to-end", "daemon CPU", "CPU seconds", "store write lock per")
    )


def report(script: str, procs: Processes, names: list[str], messages: int) -> None:
    counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
    by_file: collections.Counter[tuple[str, str, str]] = collections.Counter()
    for line in script.splitlines():
        fields = line.split(None, 2)
        if len(fields) < 2 or "/" not in fields[0]:
            continue
        pid, tid = (int(x) for x in fields[0].split("/"))
        role = procs.roles.get(pid)
        if role is None:
            continue
        event = fields[1].rstrip(":").removeprefix("syscalls:sys_enter_")
        thread = "loop" if pid == tid else "threads"
        counts[(role, thread, event)] += 1
        if event in BY_FILE and role in ("owner", "acceptor"):
            fd = int(fields[2].split("fd: ", 1)[1].split(",", 1)[0], 16)
            kind = _file_kind(procs.files.get((pid, fd), "?"))
            by_file[(f"{role} {thread}", event, kind)] += 1
    columns = [*names, FAULTS]
    print(f"messages accepted: {messages}; per message:")
    print(f"{'':18}" + "".join(f"{c[:10]:>11}" for c in columns))
    daemon: collections.Counter[str] = collections.Counter()
    for role, thread in sorted({(r, t) for r, t, _e in counts}):
        row = [counts[(role, thread, c)] for c in columns]
        print(f"{role + ' ' + thread:18}" + "".join(f"{v / messages:11.3f}" for v in row))
        if role in ("owner", "acceptor"):
            for c, v in zip(columns, row, strict=True):
                daemon[c] += v
    print(f"{'daemon, all':18}" + "".join(f"{daemon[c] / messages:11.3f}" for c in columns))
    print("daemon " + " / ".join(e for e in BY_FILE if e in names) + " per message, by file:")
    for (who, event, kind), n in sorted(by_file.items()):
        if n / messages >= 0.001:
            print(f"  {who:18} {event:9} {kind:12} {n / messages:8.4f}")


if __name__ == "__main__":
    main()
