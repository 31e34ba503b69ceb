"""bridge.supervisor.stop_processes: an acceptor stops at its second SIGTERM, and two sent close
together can reach a busy process as one (a pending signal is not queued twice). The supervisor
sends it again each second until the process exits, and kills it at the grace's end."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from bridge.supervisor import stop_processes

# Exits at the second SIGTERM it sees, as a draining acceptor does; says when it is ready.
_CHILD = """
import signal, sys, time
seen = []
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0) if seen else seen.append(1))
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""
_STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


def _start(code: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    proc.stdout.close()  # it writes nothing more; left open, the pipe was a ResourceWarning
    return proc


async def test_a_second_sigterm_merged_into_the_first_is_sent_again() -> None:
    procs = [_start(_CHILD) for _ in range(2)]
    for p in procs:
        p.send_signal(signal.SIGTERM)  # the two the supervisor sent, seen as one
    t0 = time.monotonic()
    await stop_processes(procs, grace_s=10)
    took = time.monotonic() - t0
    assert [p.returncode for p in procs] == [0, 0]  # exited by themselves, not killed
    assert took < 5, took


async def test_a_process_that_does_not_stop_is_killed_at_the_grace() -> None:
    proc = _start(_STUBBORN)
    t0 = time.monotonic()
    await stop_processes([proc], grace_s=1.5)
    took = time.monotonic() - t0
    assert proc.wait(5) == -signal.SIGKILL
    assert 1.5 <= took < 4, took
