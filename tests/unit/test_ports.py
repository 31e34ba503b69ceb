"""tests/ports.py: the ports tests name in configs come from below the kernel's ephemeral range,
one block per xdist worker, so a port chosen for a child's server is never the local port of an
outgoing connection or of another test's `bind(port 0)` server (two CI failures in one run)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests import ports

_ROOT = Path(__file__).resolve().parents[2]


def test_each_worker_has_its_own_block_below_the_ephemeral_range(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    low = ports._ephemeral_low()
    blocks = []
    for worker in [f"gw{i}" for i in range(ports._BLOCKS)] + [""]:
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        block = ports._block()
        assert block is not None and 1024 < block.start and block.stop <= low
        blocks.append(set(block))
    workers = blocks[:-1]
    assert all(not (a & b) for i, a in enumerate(workers) for b in workers[i + 1 :])
    assert blocks[-1] == workers[-1]  # a run without xdist takes the last block


def test_ports_are_not_handed_out_twice_and_a_bound_one_is_skipped() -> None:
    assert ports._RANGE is not None
    given = [ports.free_port() for _ in range(300)]
    assert len(set(given)) == 300 and all(p in ports._RANGE for p in given)
    while not ports._bindable(upcoming := ports._RANGE[ports._next % ports._BLOCK]):
        ports._next += 1  # taken by something else already: the next one is the test's
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", upcoming))
        taken.listen()
        port = ports.free_port()
    assert port != upcoming and port in ports._RANGE


def test_without_room_below_the_range_the_kernels_ports_are_not_handed_out_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ports, "_RANGE", None)
    given = [ports.free_port() for _ in range(200)]
    assert len(set(given)) == 200


_HAND_OUT = """
import sys
from tests import ports
print(" ".join(str(ports.free_port()) for _ in range(700)), flush=True)
sys.stdin.read()  # holds its ports until told to go
"""


def test_two_runs_with_the_same_worker_never_hand_out_the_same_port(tmp_path: Path) -> None:
    """A run's gw0 and another run's gw0 (CI's beside a helper's) draw from one block: each half
    of it, from random starts, overlapped the other's before a process reserved what it handed
    out (a daemon of one run found its port bound by the other's server)."""
    # gw6: the block of a seventh worker, which the runs on this machine (-n 2 to 4) do not have
    env = {**os.environ, "PYTEST_XDIST_WORKER": "gw6", "PYTHONPATH": str(_ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _HAND_OUT],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        given = []
        for p in procs:  # one after the other: the first holds its 700 while the second picks
            assert p.stdout is not None
            given.append({int(x) for x in p.stdout.readline().split()})
        first, second = given
        assert len(first) == len(second) == 700
        assert not first & second, sorted(first & second)[:10]
    finally:
        for p in procs:
            p.communicate("")
