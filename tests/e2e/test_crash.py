"""Crash safety: kill -9 the daemon mid-load, restart it, and prove nothing accepted is lost.

The daemon is a real subprocess (`python -m bridge.cli run`); the simulator runs in the test so it
outlives every crash and counts what really reached the "carrier".
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import replace

import pytest

from bridge.client import BridgeError
from bridge.config import PipelineConfig
from bridge.sim.server import SimSmsc
from tests.e2e.harness import (
    DaemonProcess,
    client_for,
    config_dict,
    free_port,
    make_config,
    statuses_once_final,
    wait_until,
)

pytestmark = pytest.mark.slow

WINDOW = 20
N = 1500


def _create_account(cfg_path, *extra: str) -> dict:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bridge.cli",
            "account",
            "create",
            "crashco",
            "--raw-text",
            "--topup",
            "100000",
            "--config",
            str(cfg_path),
            *extra,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


async def test_kill9_mid_load_loses_nothing(tmp_path):
    sim_port = free_port()
    cfg = config_dict(
        tmp_path,
        sim={"enabled": False, "port": sim_port},
        smscs=[{"port": sim_port, "window": WINDOW}],
    )
    sim = SimSmsc(
        replace(
            make_config(tmp_path).sim, port=sim_port, control_port=free_port(), receipt_delay_ms=50
        )
    )
    await sim.start()
    daemon = DaemonProcess(tmp_path, cfg)
    try:
        creds = _create_account(daemon.path)
        daemon.start()
        await daemon.wait_ready()

        keys = {i: str(uuid.uuid4()) for i in range(N)}
        accepted: dict[int, str] = {}
        phases: list[int] = []

        async def send(i: int, client) -> None:
            try:
                r = await client.send(
                    f"+86138{i:08d}", text=f"crash test message {i}", idempotency_key=keys[i]
                )
                accepted[i] = r["messages"][0]["id"]
            except (TimeoutError, BridgeError, OSError):
                pass  # the daemon died under this request: retried below with the same key
            except Exception as exc:  # aiohttp's disconnect errors
                if "Server disconnected" not in str(exc) and "Connect" not in type(exc).__name__:
                    raise

        async def load(indices, client) -> None:
            sem = asyncio.Semaphore(20)

            async def one(i):
                async with sem:
                    await send(i, client)

            await asyncio.gather(*(one(i) for i in indices))

        async with client_for(daemon.port, creds) as client:
            client.max_retries = 0
            # 1: mid-accept (a third accepted); 2 and 3: shortly after a restart, with the
            # backlog being dispatched and receipts in flight.
            for kill_when in (N // 3, 0.3, 0.15):
                batch = [i for i in range(N) if i not in accepted]
                task = asyncio.create_task(load(batch, client))
                if isinstance(kill_when, int):
                    await wait_until(lambda n=kill_when: len(accepted) >= n, 30, 0.005)
                else:
                    await asyncio.sleep(kill_when)
                daemon.kill9()
                await task
                phases.append(len(accepted))
                daemon.start()
                await daemon.wait_ready()
            # Everything not yet confirmed is retried with its original idempotency key: a
            # request that was committed before the crash replays its first response.
            for _ in range(3):
                missing = [i for i in range(N) if i not in accepted]
                if not missing:
                    break
                await load(missing, client)
            assert len(accepted) == N

            final = ("delivered", "failed", "unknown")
            statuses = await statuses_once_final(client, accepted.values(), final, 90)
        assert statuses == {"delivered": N}, statuses
        # Each message reached the simulator at least once; resends after a crash are bounded by
        # what can be in flight: pipeline.in_flight_windows windows per bind per crash.
        texts = Counter(m.text for m in sim.messages)
        assert all(texts[f"crash test message {i}"] >= 1 for i in range(N))
        duplicates = sum(c - 1 for c in texts.values())
        assert duplicates <= 3 * PipelineConfig().in_flight_windows * WINDOW, duplicates
        # The kills really landed mid-load (not before the first or after the last request).
        assert 0 < phases[0] < N, phases
        print(f"accepted after each kill: {phases}; duplicates at the SMSC: {duplicates}")
        assert len(set(accepted.values())) == N  # idempotent retries did not create copies
    finally:
        daemon.stop()
        await sim.stop()


async def test_a_report_in_flight_at_a_crash_is_sent_again_soon_after_the_restart(tmp_path):
    """A status report whose POST hung when the daemon was killed is POSTed again as soon as
    the daemon is back, not after its lease (3 x webhooks.timeout_s + 10 s, 40 s here): the
    restarted daemon gives back the dead one's leases (session 22; before, a crash delayed
    every report in flight by up to the lease)."""
    from aiohttp import web

    posts: list[tuple[float, list[dict]]] = []
    started = asyncio.Event()
    release = asyncio.Event()  # set once the daemon is dead, so the test's server can stop

    async def hook(request: web.Request) -> web.Response:
        body = await request.json()
        if not started.is_set():  # the customer's endpoint hangs: the POST is in flight
            started.set()
            await release.wait()
            return web.Response(status=204)
        posts.append((time.monotonic(), body))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    hook_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", hook_port).start()
    cfg = config_dict(tmp_path, webhooks={"timeout_s": 10, "retry_schedule_s": [1]})
    daemon = DaemonProcess(tmp_path, cfg)
    try:
        creds = _create_account(daemon.path, "--callback", f"http://127.0.0.1:{hook_port}/hook")
        daemon.start()
        await daemon.wait_ready()
        async with client_for(daemon.port, creds) as client:
            mid = (await client.send("+8613800000001", text="report me"))["messages"][0]["id"]
            await asyncio.wait_for(started.wait(), 15)  # its report's POST hangs
            daemon.kill9()
            release.set()
            restarted = time.monotonic()
            daemon.start()
            await daemon.wait_ready()
            await wait_until(lambda: posts, 30, 0.05)
        took = posts[0][0] - restarted
        assert [r["message_id"] for r in posts[0][1]] == [mid]
        assert posts[0][1][0]["status"] == "delivered"
        assert took < 15, f"the report came {took:.1f} s after the restart (its lease is 40 s)"
        assert "reports in flight at a crash, due again: 1" in daemon.log.read_text()
        print(f"report sent again {took:.2f} s after the restart")
    finally:
        daemon.stop()
        await runner.cleanup()
