"""`run --workers N` on SIGTERM: the port keeps answering while the owner drains its binds.

Before, the supervisor stopped the acceptors first and they closed the port within milliseconds,
so for the owner's whole grace (messages on the wire waiting for their answers) clients and a
load balancer's /readyz got connection refused, where the one-process daemon answers 503
`SHUTTING_DOWN`. Now the first SIGTERM makes each acceptor refuse sends with the port open and the
second, sent once the owner has stopped, stops it. The SMSC here answers submit_sm only after a
few seconds, so the drain lasts long enough to be probed.
"""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from typing import Any

import aiohttp
import pytest

from bridge.client import BridgeError
from tests.e2e.harness import wait_until
from tests.integration.test_session14_review3 import bridge, smsc, world  # noqa: F401
from tests.integration.test_smpp_peer_edges import MiniSmsc

RESP_DELAY_S = 5.0  # room for the probes on a slow machine


async def _probe(url: str, client: Any, n: int) -> tuple[list[int], list[int], list[str]]:
    """n sends and n /readyz reads: the statuses seen (0 = no connection)."""
    sends: list[int] = []
    ready: list[int] = []
    problems: list[str] = []
    for i in range(n):
        try:
            await client.send(f"+8613800{i:06d}", text=f"during the drain {i}")
            sends.append(202)
        except BridgeError as exc:
            sends.append(exc.status)
            assert exc.code == "SHUTTING_DOWN", exc
        except (aiohttp.ClientError, OSError):
            sends.append(0)
        try:
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
                s.get(url + "/readyz", timeout=aiohttp.ClientTimeout(total=2)) as r,
            ):
                ready.append(r.status)
                problems.extend((await r.json())["problems"])
        except (aiohttp.ClientError, OSError):
            ready.append(0)
        await asyncio.sleep(0.1)
    return sends, ready, problems


@pytest.mark.slow
async def test_acceptors_answer_503_while_the_owner_drains_then_stop(world, tmp_path):  # noqa: F811
    mini = MiniSmsc(resp_delay_s=RESP_DELAY_S)
    await mini.start()
    try:
        b = await bridge(
            world,
            tmp_path / "d",
            server={"workers": 2, "shutdown_grace_s": 10},
            sim={"enabled": False},
            smscs=[smsc("mini", mini.port, unbind_timeout_s=1)],
        )
        await b.start()
        async with b.client(retries=0) as c:
            sent = await c.send("+8613900000001", text="on the wire at the stop")
            msg_id = sent["messages"][0]["id"]
            await wait_until(lambda: len(mini.submits) == 1, 15, 0.05)
            assert b.proc.proc is not None
            t0 = time.monotonic()
            b.proc.proc.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            sends, ready, problems = await _probe(b.url, c, 8)
            probed = time.monotonic() - t0
            drained_meanwhile = bool(mini.accepted)
        rc = await asyncio.get_running_loop().run_in_executor(None, b.proc.proc.wait, 30)
        took = time.monotonic() - t0
        log = b.log()
        # The probes ran while the owner still waited for the SMSC's answer ...
        assert not drained_meanwhile, probed
        # ... and every one was answered, a send with 503 SHUTTING_DOWN, /readyz with 503.
        assert sends == [503] * 8, (sends, log[-3000:])
        assert ready == [503] * 8, ready
        assert "shutting down" in problems
        assert rc == 0, log[-3000:]
        # The owner waited for the answer (within its grace), then everything stopped.
        assert RESP_DELAY_S - 1.5 < took < RESP_DELAY_S + 1 + 5, took
        assert mini.accepted, "the part on the wire was answered within the grace"
        assert log.count("draining: sends are answered 503") == 2
        assert "Traceback" not in log
    finally:
        await mini.close()
    # The answer that came during the drain was recorded: a restart does not send it again.
    db = sqlite3.connect(f"file:{b.data['store']['path']}?mode=ro", uri=True)
    try:
        state = db.execute("SELECT state FROM messages WHERE id=?", (msg_id,)).fetchone()
    finally:
        db.close()
    assert state == ("sent",), state
