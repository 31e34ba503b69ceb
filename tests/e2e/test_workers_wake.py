"""`server.workers: 2`: the acceptors wake the owner's dispatcher only while it waits for work
(bridge/pipeline/wake.py's "waiting" flag, a memfd the supervisor passes them).

`smpp-bridge run` as a real subprocess with the built-in simulator. The owner's idle poll is
5 s here, so a message sent within half of that of its accept while the owner idled was woken
(30-63 ms in one run).
(Before, a bind coming up did not end the dispatcher's wait for a window slot, up to 4 idle
polls: the first messages after a start waited 20 s here.)
Under a burst into a narrow window the dispatcher is busy with what it claimed, and many
commits send no datagram (`smpp_bridge_owner_wakes_total{outcome="not_waiting"}`); before,
every commit sent one (at most one a millisecond per acceptor), and the metric did not exist.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.e2e.harness import DaemonProcess, client_for, config_dict, wait_until
from tests.e2e.test_store_ops_review import _create_account

IDLE_MS = 5000


def _sent_delays(db: Path) -> dict[str, int | None]:
    """Message id -> ms from its accept to its submit (None: not sent yet)."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as c:
        rows = c.execute("SELECT id, accepted_at, sent_at FROM messages").fetchall()
    return {mid: (None if sent is None else sent - acc) for mid, acc, sent in rows}


async def _wakes(port: int) -> dict[str, float]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}/metrics") as r,
    ):
        text = await r.text()
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(
            r'^smpp_bridge_owner_wakes_total\{outcome="(\w+)"\} (\S+)$', text, re.M
        )
    }


@pytest.mark.skipif(sys.platform != "linux", reason="memfd, abstract sockets: Linux")
async def test_an_idle_owner_is_woken_at_once_and_a_busy_one_is_left_alone(tmp_path: Path) -> None:
    cfg = config_dict(
        tmp_path,
        pipeline={
            "dispatch_idle_ms": IDLE_MS,
            "dispatch_idle_max_ms": IDLE_MS,
            "in_flight_windows": 1,
        },
        smscs=[{"window": 2}],
    )
    cfg["server"]["workers"] = 2
    cfg["sim"]["answer_delay_ms"] = 20
    db = tmp_path / "bridge.db"
    daemon = DaemonProcess(tmp_path, cfg)
    creds = _create_account(daemon.path)
    daemon.start()
    try:
        await daemon.wait_ready(30)
        log = daemon.log
        await wait_until(lambda: log.read_text().count("acceptor listening on") == 2, 30, 0.05)
        async with client_for(daemon.port, creds) as client:
            # Idle: each send is woken for, well before the 5-s poll.
            idle: list[str] = []
            for i in range(5):
                await asyncio.sleep(0.4)
                r = await client.send(f"+86138001380{i:02d}", text=f"idle {i}")
                idle.append(r["messages"][0]["id"])
                await wait_until(lambda: _sent_delays(db).get(idle[-1]) is not None, 4.0, 0.01)
            delays = _sent_delays(db)
            assert all(delays[m] is not None and delays[m] < 2500 for m in idle), delays
            # Busy: 80 at once into a window of two, each submit answered after 20 ms.
            t = time.monotonic()
            burst = await asyncio.gather(
                *(client.send(f"+86139001390{i:02d}", text=f"burst {i}") for i in range(80))
            )
            ids = [r["messages"][0]["id"] for r in burst]
            await wait_until(lambda: all(_sent_delays(db).get(m) for m in ids), 60.0, 0.05)
            assert time.monotonic() - t < 45
            # Every accepted request counted once, in whichever acceptor took it (metrics
            # files are flushed once a second).
            want = len(idle) + len(ids)
            await wait_until(lambda: _total(daemon.port, want), 10.0, 0.2)
            wakes = await _wakes(daemon.port)
    finally:
        daemon.stop()
    assert wakes["sent"] >= len(idle), wakes
    # Many commits of the burst found the dispatcher busy with the window it had claimed (51
    # of 85 in one run; the rest came while it claimed or waited, 23 of those throttled).
    assert wakes["not_waiting"] >= len(ids) // 4, wakes
    assert wakes["sent"] < want / 2, wakes


async def _total(port: int, want: int) -> bool:
    wakes = await _wakes(port)
    return sum(wakes.values()) >= want


@pytest.mark.skipif(sys.platform != "linux", reason="memfd, abstract sockets: Linux")
async def test_on_postgresql_acceptors_wake_their_owner_after_every_commit(
    tmp_path: Path, pg_dsn: str
) -> None:
    """A PostgreSQL owner passes each wake on to the fleet's other instances (NOTIFY), whose binds
    may be idle while its own are busy: its flag stays set, so the same burst into a narrow
    window finds it "waiting" at every commit."""
    cfg = config_dict(
        tmp_path,
        store={"engine": "postgres", "dsn": pg_dsn},
        pipeline={"in_flight_windows": 1},
        smscs=[{"window": 2}],
    )
    cfg["server"]["workers"] = 2
    cfg["sim"]["answer_delay_ms"] = 20
    daemon = DaemonProcess(tmp_path, cfg)
    creds = _create_account(daemon.path)
    daemon.start()
    try:
        await daemon.wait_ready(30)
        async with client_for(daemon.port, creds) as client:
            await asyncio.gather(
                *(client.send(f"+86139001390{i:02d}", text=f"burst {i}") for i in range(40))
            )
        await wait_until(lambda: _total(daemon.port, 40), 10.0, 0.2)
        wakes = await _wakes(daemon.port)
    finally:
        daemon.stop()
    assert wakes["not_waiting"] == 0 and wakes["sent"] > 0, wakes
