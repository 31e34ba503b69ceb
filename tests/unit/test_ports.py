"""tests/ports.py: the ports tests name in configs come from below the kernel's ephemeral range,
one block per xdist worker, so a port chosen for a child's server is never the local port of an
outgoing connection or of another test's `bind(port 0)` server (two CI failures in one run)."""

from __future__ import annotations

import socket

import pytest

from tests import ports


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
