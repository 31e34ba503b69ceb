"""Ports for the servers that tests configure before they start them (daemons, simulators,
PostgreSQL clusters): a port must be named in a config file, so it is chosen, then bound later by
another process.

Why not the kernel's `bind(port 0)`: that hands out ports of the ephemeral range, the same range
every outgoing connection and every in-process test server (`start_server(port=0)`) draws from.
Between our choice and the child's bind, another test could get the same port: CI failed twice
in one run on it (a daemon's "address already in use", and a test's SMPP peer, bound to port 0,
receiving another test's readiness `GET /readyz`). So ports here come from below the ephemeral
range, in one block per xdist worker, handed out in turn, each checked free when handed out.

Two test runs on one machine (CI's and a helper's, both with a worker gw0) share a block: one
run's port, checked free and named in a daemon's config, was bound by the other run's server
before the daemon started ("address already in use", session 44's first-day test). So a port
handed out is also reserved for as long as the handing process lives: a POSIX record lock on the
port's byte of one file in the temporary directory (released by the kernel when the process
exits, not inherited by its children), and a port another process holds is skipped as a bound
one is.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
from pathlib import Path

_BLOCKS = 8
_BLOCK = 1_400
_SPAN = _BLOCKS * _BLOCK


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _block() -> range | None:
    """This process's block, or None where there is no room below the ephemeral range."""
    low = _ephemeral_low()
    if low - _SPAN < 10_000:
        return None
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    digits = worker[2:]
    n = int(digits) if worker.startswith("gw") and digits.isdigit() else _BLOCKS - 1
    start = low - _SPAN + (n % _BLOCKS) * _BLOCK
    return range(start, start + _BLOCK)


_RANGE = _block()
_next = random.randrange(_BLOCK)  # two runs one after the other start at different ports


def _bindable(port: int) -> bool:
    with socket.socket() as s:  # no SO_REUSEADDR: a port with connections in TIME_WAIT is skipped
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


_HANDED_OUT: set[int] = set()  # by the kernel's choice (the fallback below)


# The reservations' file: named by the test run (tests/conftest.py sets it, and the scripts a
# test starts inherit it), a fixed path outside any TMPDIR so that two runs with different ones
# share it, and scripts run by hand (bench.py takes its ports here) make no file at all. Not
# under TMPDIR: the bench scripts' tests assert their temporary directory is left empty.
LOCK_ENV = "SMPP_BRIDGE_TEST_PORTS_LOCK"
_RESERVATIONS: int | None = None
_OPENED = False


def _reservations() -> int | None:
    """The shared file whose byte N a process locks while it holds port N (None: no file, and
    then no reservations, as before), opened at the first port handed out."""
    global _RESERVATIONS, _OPENED
    if not _OPENED:
        _OPENED = True
        path = os.environ.get(LOCK_ENV)
        if path:
            try:
                _RESERVATIONS = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError:
                _RESERVATIONS = None
    return _RESERVATIONS


def _reserve(port: int) -> bool:
    """Whether this process holds `port` now (again, if it held it already) and no other test
    process does: every test process locks a port's byte before handing the port out."""
    fd = _reservations()
    if fd is None:
        return True
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, port)
    except OSError:
        return False
    return True


def free_port() -> int:
    """A free port, not handed out again by this process until its block of 1,400 wraps, nor
    by another test process while this one lives (_reserve)."""
    global _next
    if _RANGE is not None:
        for _ in range(_BLOCK):
            port = _RANGE[_next % _BLOCK]
            _next += 1
            if _bindable(port) and _reserve(port):
                return port
    # No room below the ephemeral range, or the block is all taken: the kernel's choice, never
    # one handed out before (it may give a just-closed port again, and one config naming the
    # same port twice is refused), as the e2e harness's own free_port did.
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _HANDED_OUT and _reserve(port):
            _HANDED_OUT.add(port)
            return port
