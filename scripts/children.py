"""The benchmark scripts' child processes, ended with the script however it ends.

Why: a script ended by SIGTERM (a test's or a CI job's time-out, `kill`) died at once and left
its children running: the simulator, the daemons, valgrind with a copy of the script under it
and that copy's simulator (`bench_send_path.py --callgrind`: each run left two processes
spinning). A child killed alone left its own children (a daemon's acceptors).

Each child the outermost script starts leads a process group of its own, and what runs under it
stays in that group (a script started by another's `Children` starts its children there too:
BENCH_CHILD in their environment), so one signal to the group ends the child with everything it
started. `Children.end()` signals every group SIGTERM, waits up to a grace, then SIGKILLs what
is left; a script calls it in its `finally` (an exception, its own time-out) and `on_signals`
has SIGTERM and SIGINT call it before the script exits. SIGKILL of the script itself cannot be
caught: its children are left then, as before.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Set in every child's environment: a benchmark script run as a child starts its own children in
# the group it is in, which its parent ends as a whole.
BENCH_CHILD = "BRIDGE_BENCH_CHILD"


class Children:
    """The child processes of one script; `end()` ends them and everything they started."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[Any]] = []
        # The outermost script's children lead groups of their own; a nested script's stay in
        # the group its parent made for it.
        self.own_groups = os.environ.get(BENCH_CHILD) != "1"
        self._ending = False

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        env = dict(kw.pop("env", None) or os.environ)
        env[BENCH_CHILD] = "1"
        if self.own_groups:
            kw["process_group"] = 0
        p: subprocess.Popen[Any] = subprocess.Popen(list(argv), env=env, **kw)
        self.procs.append(p)
        return p

    def run(self, argv: Sequence[str], timeout: float | None, **kw: Any) -> tuple[int, str, str]:
        """`argv` to its end, its output captured as text: (exit status, stdout, stderr).
        Past `timeout` seconds (None: no limit) its group is ended and the script exits saying
        so."""
        p = self.popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.end()
            raise SystemExit(f"{argv[0]} did not finish in {timeout or 0:.0f} s: ended") from None
        return p.returncode, out, err

    def callgrind(
        self, argv: Sequence[str], out: str, timeout: float | None = None, *, keep: bool = False
    ) -> tuple[str, int]:
        """`argv` under valgrind's callgrind, counting only between the `callgrind_control -i
        on` and `off` it runs on itself (`--instr-atstart=no`), its profile written to `out`:
        (its stdout, the instructions counted). A run cut short (its time-out, SIGTERM, SIGINT)
        or failed ends its group and removes the partial profile, unless `keep` (a file the
        caller named)."""
        cmd = [
            "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}",
            *argv,
        ]  # fmt: skip
        try:
            code, stdout, stderr = self.run(cmd, timeout)
        except BaseException:
            self.end()
            if not keep:
                Path(out).unlink(missing_ok=True)
            raise
        self.end()
        if code:
            if not keep:
                Path(out).unlink(missing_ok=True)
            raise SystemExit(stderr[-3000:])
        totals = re.search(r"^totals: (\d+)", Path(out).read_text(errors="replace"), re.M)
        if totals is None:
            raise SystemExit(f"no totals in {out}")
        return stdout, int(totals.group(1))

    def _signal(self, p: subprocess.Popen[Any], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.own_groups:
                os.killpg(p.pid, sig)  # the group outlives its leader while others are in it
            elif p.poll() is None:
                p.send_signal(sig)

    def end(self, grace: float = 15.0) -> None:
        """SIGTERM to each child's group, newest first; SIGKILL to the groups still there after
        `grace` seconds. Safe to call again (ends what is left, if anything)."""
        if self._ending:
            return
        self._ending = True
        try:
            procs = list(reversed(self.procs))
            for p in procs:
                self._signal(p, signal.SIGTERM)
            deadline = time.monotonic() + grace
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(max(0.0, deadline - time.monotonic()))
            for p in procs:  # stragglers: a leader that would not stop, or what it left
                self._signal(p, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(5)
            self.procs = [p for p in self.procs if p.poll() is None]
        finally:
            self._ending = False

    def on_signals(self) -> None:
        """SIGTERM and SIGINT end the children, then exit the script (SystemExit 143, or
        KeyboardInterrupt), so its `finally` blocks run too: SIGTERM killed it outright. Call it
        from the main thread, before asyncio.run (which then keeps this SIGINT handler)."""

        def handler(signum: int, _frame: Any) -> None:
            self.end()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
