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
has SIGTERM and SIGINT call it before the script exits. What must not stop half done (a
PostgreSQL cluster's start and stop, a clean-up) runs in `signals_held` (or `started`): a signal
there acts when the block ends. SIGKILL of the script itself cannot be caught: its children are
left then, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TypeVar

T = TypeVar("T")

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
        # Signals taken by `on_signals`'s handler, acted on once the end they start (or the one
        # under way) has finished, or the `signals_held` block they came in: one raised in the
        # middle cut that end short, its SIGKILLs not sent (Ctrl-C twice left a child that
        # ignored SIGTERM running).
        self._held: list[int] = []
        self._holding = 0  # the depth of `signals_held` blocks (an `end` is one)
        # While asyncio_run runs a loop: the loop (from before the main task exists: a signal
        # raised in the loop before the task's first step could lose that step, and the
        # closing cancel waited for it for ever), its main task, and the signals received.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[Any] | None = None
        self._signalled: list[int] = []
        self._cancelled = False  # the loop has run the cancel a signal asked for
        self._cancel_after_hold = False  # asked for in a `signals_held` block: run after it

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
        return self._outcome(p, argv, timeout)

    def _outcome(
        self, p: subprocess.Popen[str], argv: Sequence[str], timeout: float | None
    ) -> tuple[int, str, str]:
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
        # Its own TMPDIR (valgrind's gdbserver pipes, and what the program under it makes
        # there), removed here however the run ends: under load a run cut short outlived
        # `end`'s grace, was SIGKILLed and left its pipes and its temporary directories (CI,
        # session 52: bench_send_path's copy's, after a SIGINT).
        scratch = Path(tempfile.mkdtemp(prefix="bench-callgrind-"))
        env = {**os.environ, "TMPDIR": str(scratch)}
        p = self.popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        finished = False
        try:
            code, stdout, stderr = self._outcome(p, cmd, timeout)
            finished = True
        finally:
            try:
                self.end()  # first: valgrind writes the profile as it exits
            finally:  # a signal during that end exits from it
                if finished:  # what the program kept (`--keep`) stays, in `scratch`
                    for pipe in scratch.glob("vgdb-pipe-*"):
                        pipe.unlink(missing_ok=True)
                    with contextlib.suppress(OSError):
                        scratch.rmdir()
                else:
                    shutil.rmtree(scratch, ignore_errors=True)
                    if not keep:
                        Path(out).unlink(missing_ok=True)
        if code:
            if not keep:
                Path(out).unlink(missing_ok=True)
            raise SystemExit(stderr[-3000:])
        totals = re.search(r"^totals: (\d+)", Path(out).read_text(errors="replace"), re.M)
        if totals is None:
            raise SystemExit(f"no totals in {out}")
        return stdout, int(totals.group(1))

    def two_trees(
        self, script: str, base: str, tree: str, args: Sequence[str], *, cwd_tree: bool
    ) -> tuple[list[str], list[str]]:
        """A differential script's run of itself on two trees side by side: `script --child
        TREE *args --out FILE` for `base` and `tree` (PYTHONHASHSEED=0), waited for and their
        children ended; the lines each wrote (UTF-8, lone surrogates kept). A child that failed
        exits the script saying so. `cwd_tree`: each child runs in its tree's directory (its
        `bridge` and `tests` imported, sys.path[0] too), else in the temporary directory.
        Why: send_api_differential.py and text_sign_differential.py each wrote it (session 63)."""
        env = {**os.environ, "PYTHONHASHSEED": "0"}
        with tempfile.TemporaryDirectory() as tmp:
            files = [os.path.join(tmp, f"{i}.txt") for i in range(2)]
            procs = []
            for out, where in zip(files, (base, tree), strict=True):
                cmd = [sys.executable, script, "--child", where, *args, "--out", out]
                procs.append(self.popen(cmd, env=env, cwd=where if cwd_tree else tmp))
            try:
                codes = [p.wait() for p in procs]
            finally:
                self.end()
            if any(codes):
                sys.exit(f"a child failed: {codes}")
            old, new = (Path(f).read_text("utf-8", "surrogatepass").splitlines() for f in files)
        return old, new

    def _signal(self, p: subprocess.Popen[Any], sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.own_groups:
                os.killpg(p.pid, sig)  # the group outlives its leader while others are in it
            elif p.poll() is None:
                p.send_signal(sig)

    def end(self, grace: float = 15.0) -> None:
        """SIGTERM to each child's group, newest first; SIGKILL to the groups still there after
        `grace` seconds. Safe to call again (ends what is left, if anything)."""
        # The hold first: marked under way outside it, an end that a signal found before the
        # hold began was taken for one under way by the handler's own end, which returned at
        # once, and the script exited with its children running (review r1 of session 53).
        with self.signals_held():
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

    @contextlib.contextmanager
    def signals_held(self) -> Iterator[None]:
        """A block no SIGTERM or SIGINT cuts: one that comes in it is acted on (the children
        ended, then the script's exit or its main task's cancel) when the block ends, however
        it ends; the first stands for any others. For what must not stop half done: a
        PostgreSQL cluster's start and stop (`pg_ctl` killed in the middle left a running
        server, or its data directory), and the clean-up of a script ending by itself (a
        signal during its `finally` cancelled main at that finally's next await: bench.py's
        temporary directory after it stayed). Nothing in the block can be cut by a signal,
        so it should not wait for ever."""
        self._holding += 1
        try:
            yield
        finally:
            self._holding -= 1
            if not self._holding:
                # Both: a signal held here only notes itself when a cancel was asked already
                # (_take), so the cancel this block deferred must be asked again whatever came
                # in it (until review r1 of session 53 a second signal in the block dropped it).
                if self._cancel_after_hold:
                    self._cancel_after_hold = False
                    if self._loop is not None and not self._loop.is_closed():
                        self._loop.call_soon_threadsafe(self._cancel_main)
                if self._held:
                    self._act()

    @contextlib.contextmanager
    def started(self, start: Callable[[], T], stop: Callable[[T], object]) -> Iterator[T]:
        """`start()`'s result for the block; when the block ends, however it ends, the
        children are ended (they may use it), then `stop(it)`. Neither the start nor the stop
        is cut by SIGTERM or SIGINT (`signals_held`): one during the start acts once it is done,
        and the stop follows. A PostgreSQL cluster's: a signal in `start_cluster` left the
        server `pg_ctl start` had begun running, and a second SIGTERM in its stop left the data
        directory (its `pg_ctl` ended in the middle)."""
        made: list[T] = []
        try:
            with self.signals_held():
                made.append(start())
            yield made[0]
        finally:
            with self.signals_held():
                self.end()
                if made:
                    stop(made[0])

    def _act(self) -> None:
        """The first held signal: end the children, then take it (exit, or cancel main)."""
        signum = self._held[0]
        self._holding += 1  # a signal during this end waits with the others
        try:
            self.end()
        finally:
            self._holding -= 1
            self._held.clear()  # the first signal stands for those during the end
        self._take(signum)

    def on_signals(self) -> None:
        """SIGTERM and SIGINT end the children, then exit the script (SystemExit 143, or
        KeyboardInterrupt), so its `finally` blocks run too: SIGTERM killed it outright. Call it
        from the main thread before the script's event loop, and run that loop by
        `asyncio_run`."""

        def handler(signum: int, _frame: FrameType | None) -> None:
            self._held.append(signum)
            if not self._holding:  # else the end, or held block, under way acts on it after
                self._act()

        def stuck(_signum: int, frame: FrameType | None) -> None:
            """A signal's cancel not taken up by the loop `_STUCK_S` later: the loop is held
            by the script's own code (a long computation in a coroutine), which a raise there
            interrupts safely; in the loop's own code, wait again."""
            if self._loop is None or self._cancelled or not self._signalled:
                return
            if self._holding or _in_loop_machinery(frame):  # not to be cut: wait again
                signal.setitimer(signal.ITIMER_REAL, _STUCK_S)
                return
            if self._runs_main(frame):
                # The raise ends `main` through its finally: a cancel later would cut that.
                self._cancelled = True
            else:
                # Raised in a callback, which may swallow it: uvloop takes it for a transport's
                # error there and goes on (the script hung for ever, its cancel given up). The
                # cancel stays asked for, run when the loop gets to it, and the timer armed.
                signal.setitimer(signal.ITIMER_REAL, _STUCK_S)
            _exit_for(self._signalled[0])

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGALRM, stuck)

    def _take(self, signum: int) -> None:
        """A signal, its children ended: exit the script, or have the loop cancel its main task."""
        if self._loop is not None and not self._loop.is_closed():
            # Not raised here: the exception would land in whatever the loop was running.
            # Between two steps of a task it left a task nothing would run again, and
            # asyncio.run's closing cancel waited for it for ever; in a transport's
            # callback uvloop took it for that connection's error and went on (the
            # script's connector reconnected for ever). The loop cancels the main task
            # instead, and asyncio_run exits once the loop has closed.
            self._signalled.append(signum)
            if len(self._signalled) > 1:
                # A second signal (Ctrl-C again, a harness's second SIGTERM) is only noted:
                # cancelled again, `main` lost the rest of the finally the first one ran
                # (an await there raised, the temporary directory after it stayed).
                return
            self._cancelled = False
            self._loop.call_soon_threadsafe(self._cancel_main)
            signal.setitimer(signal.ITIMER_REAL, _STUCK_S)
            return
        _exit_for(signum)

    def _runs_main(self, frame: FrameType | None) -> bool:
        """Whether `frame` is in the main task's own stack (its step is running)."""
        top = getattr(self._task.get_coro(), "cr_frame", None) if self._task else None
        while frame is not None and top is not None:
            if frame is top:
                return True
            frame = frame.f_back
        return False

    def _cancel_main(self) -> None:
        if self._holding:
            # A signal just before main's clean-up began: its cancel would cut that clean-up
            # at its next await, as a signal during it did. Run once the block is done.
            self._cancel_after_hold = True
            return
        if not self._cancelled and self._task is not None:
            self._task.cancel()  # none yet: its first step sees the signal
        self._cancelled = True

    def asyncio_run(
        self,
        main: Coroutine[Any, Any, T],
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None,
    ) -> T:
        """asyncio.run(main) (on a loop from `loop_factory`, if given) for a script that called
        `on_signals`: SIGTERM and SIGINT cancel `main` (its `finally` blocks run, then the
        other tasks are cancelled as asyncio.run does) and the script exits once the loop has
        closed, as `on_signals` makes it. Why (session 52): with the handler raising wherever
        the loop was, bench_send_path.py and bench_smpp.py now and then outlived the signal
        (6 of 20 runs by hand, once on CI), their children ended."""
        self._signalled = []
        self._cancelled = self._cancel_after_hold = False

        async def wrapped() -> T:
            self._task = asyncio.current_task()
            assert self._task is not None  # Runner.run runs it as a task
            if self._signalled:  # before this first step: no cancel could reach the task
                main.close()
                raise asyncio.CancelledError
            return await main

        try:
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                self._loop = runner.get_loop()  # a signal from here on asks it for the cancel
                return runner.run(wrapped())
        except asyncio.CancelledError:
            if not self._signalled:
                raise
        finally:
            self._loop = self._task = None
            signal.setitimer(signal.ITIMER_REAL, 0)
            if self._signalled:  # even when `main` had ended by itself
                _exit_for(self._signalled[0])
        raise AssertionError("not reached: the signal exits above")


def _in_loop_machinery(frame: FrameType | None) -> bool:
    """Whether the signal found the thread in the event loop's own Python code (asyncio's,
    uvloop's or the selectors module: between a loop's steps, not inside one)."""
    name = frame.f_code.co_filename if frame is not None else ""
    return name.startswith(_ASYNCIO_DIR) or _UVLOOP_DIR in name or name == selectors.__file__


# How long a signal's cancel may wait for the loop before the script's own code is taken to
# hold it (a long computation in a coroutine: bench_kannel.py building its requests).
_STUCK_S = 2.0
_ASYNCIO_DIR = os.path.dirname(asyncio.__file__) + os.sep
_UVLOOP_DIR = f"{os.sep}uvloop{os.sep}"


def _exit_for(signum: int) -> NoReturn:
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise SystemExit(128 + signum)
