"""Concatenation references with `server.workers: 2`: each acceptor draws from its own lane
(bridge.text.split.RefCounter), so two long messages to one number accepted at the same time by
two acceptors never share a reference (a handset would mix their parts). With a random start per
process alone, two acceptors' runs of references overlapped for about 1 pair in 256.

`smpp-bridge run` as a real subprocess (the supervisor spawns the acceptors); the references are
read from the parts the daemon stored, as it will send them.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import sys
from pathlib import Path

import pytest

from tests.e2e.harness import DaemonProcess, client_for, config_dict, wait_until
from tests.e2e.test_store_ops_review import _create_account

NUMBER = "+8613800138000"
LONG = "Your order has shipped and will arrive on Tuesday. " * 5  # 255 GSM chars: 2 parts


def _refs(db: Path) -> list[int]:
    """The UDH8 reference of each message's first part (UDH 05 00 03 ref total seq)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        rows = c.execute("SELECT short_message FROM segments WHERE seq = 1").fetchall()
    heads = [bytes(r[0])[:6] for r in rows]
    assert all(h[:3] == b"\x05\x00\x03" and h[4] == 2 for h in heads), heads
    return [h[3] for h in heads]


def _listening(log: Path) -> set[str]:
    """The acceptors (by instance) that have logged their HTTP listener: /readyz answers once
    the first one listens, and a loaded machine may start the second one seconds later (every
    connection made meanwhile lands on the first)."""
    return set(re.findall(r"acceptor listening on \S+ \(instance (\S+),", log.read_text()))


@pytest.mark.skipif(sys.platform != "linux", reason="SO_REUSEPORT spreading: Linux")
async def test_two_acceptors_never_hand_one_number_the_same_reference(tmp_path: Path) -> None:
    cfg = config_dict(tmp_path)
    cfg["server"]["workers"] = 2
    daemon = DaemonProcess(tmp_path, cfg)
    creds = _create_account(daemon.path)
    daemon.start()
    try:
        await daemon.wait_ready(30)
        await wait_until(lambda: len(_listening(daemon.log)) == 2, 30, 0.05)
        async with client_for(daemon.port, creds) as client:
            # Concurrent requests open many connections, which the kernel spreads over both
            # (40: under the 50-a-day frequency limit for one number).
            sent = await asyncio.gather(*(client.send(NUMBER, text=LONG) for _ in range(40)))
        assert all(r["messages"][0]["segments"] == 2 for r in sent)
        refs = _refs(tmp_path / "bridge.db")
    finally:
        daemon.stop()
    log = daemon.log.read_text()
    # Three lanes: one per acceptor and the owner's (it draws when a reload makes a waiting
    # one-part message long), so none of them hands a number another's reference.
    for lane in (0, 1, 2):
        assert f"concatenation references: lane {lane} of 3" in log
    assert len(refs) == 40
    lanes = {r % 3 for r in refs}
    assert lanes == {0, 1}, "both acceptors took requests, none from the owner's lane"
    assert len(set(refs)) == 40, sorted(refs)  # no two messages share a reference
    for lane in (0, 1):
        # Each acceptor's run: consecutive references of its lane from its own random start
        # (without lanes each residue mixed both processes' runs: two runs, not one).
        assert _one_run([r for r in refs if r % 3 == lane], lane, 3), sorted(refs)


def _one_run(values: list[int], lane: int, lanes: int) -> bool:
    """The values are a run of lane's references from some start, wrapping inside the lane
    (RefCounter: lane + lanes x (n mod the lane's size))."""
    have, size = set(values), (256 - lane + lanes - 1) // lanes
    return any(
        {lane + lanes * ((start // lanes + k) % size) for k in range(len(values))} == have
        for start in have
    )
