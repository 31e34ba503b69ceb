"""Session 47: operations leftovers earlier sessions noted, each reproduced against a real daemon
(`smpp-bridge run` as a subprocess, the built-in simulator, 127.0.0.1).

1. A customer's dead callback endpoint (a 500 every time, or nothing listening) logged a line for
   every batch tried, for as long as it was down. Now: one WARNING when it starts failing (the
   account, the URL's host only, the error, the next retry), a summary at most a minute while
   it stays down, one INFO when it recovers; the deliveries counter still counts every report.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.e2e.harness import WebhookReceiver, config_dict, wait_until
from tests.e2e.test_session34_sre_review import Bridge, _client, _samples
from tests.ports import free_port

pytestmark = pytest.mark.timeout(90)


class CountingReceiver(WebhookReceiver):
    """A receiver that counts the reports of the POSTs it fails."""

    def __init__(self) -> None:
        super().__init__()
        self.failed_reports = 0

    async def _handle(self, request: web.Request) -> web.Response:
        if self.fail_with is not None:
            self.failed_reports += len(json.loads(await request.read()))
            return web.Response(status=self.fail_with)
        return await super()._handle(request)


def _webhook_lines(log: Path) -> list[str]:
    """The daemon's log lines from the webhook sender at INFO or above."""
    return [
        line
        for line in log.read_text().splitlines()
        if " bridge.webhooks " in line and re.search(r" (INFO|WARNING|ERROR) ", line)
    ]


@pytest.mark.parametrize("outage", ["http500", "refused"])
async def test_a_dead_callback_endpoint_logs_once_not_per_batch(
    tmp_path: Path, outage: str
) -> None:
    rx = CountingReceiver()
    if outage == "http500":
        rx.fail_with = 500
        await rx.start()
    # else nothing listens on its port until it "recovers"
    cfg = config_dict(tmp_path, webhooks={"retry_schedule_s": [1], "timeout_s": 2})
    d = Bridge(tmp_path, cfg)
    d.start()
    try:
        await d.wait_ready()
        url = rx.url + "?token=cb-query-secret-7731"
        creds = await d.account_with_callback("acme", url)
        rx.secret = creds["webhook_secret"]
        c = _client(d, creds)
        ids = []
        for i in range(6):  # several POSTs: each send's report goes on its own
            ids.append((await c.send(to=[f"+86138001380{i:02d}"], text=f"m{i}"))["messages"][0])
            await asyncio.sleep(0.3)

        async def retried() -> bool:
            m = _samples(await d.metrics(), "smpp_bridge_webhook_deliveries_total")
            return m.get('{kind="status",outcome="retry"}', 0) >= 15

        await wait_until(retried, 30, 0.2)
        lines = _webhook_lines(d.log)
        assert len(lines) == 1, "\n".join(lines)
        (first,) = lines
        assert " WARNING " in first and "webhook endpoint failing" in first, first
        assert f"account={creds['account']}" in first and "url_host=127.0.0.1" in first, first
        assert "retry at " in first, first
        assert ("HTTP 500" if outage == "http500" else "from 127.0.0.1") in first, first
        assert "cb-query-secret" not in d.log.read_text()

        if outage == "http500":
            rx.fail_with = None
        else:
            await rx.start()
        await wait_until(lambda: len({r["webhook_id"] for r in rx.reports}) >= 6, 20, 0.1)
        await wait_until(lambda: len(_webhook_lines(d.log)) >= 2, 5, 0.1)
        lines = _webhook_lines(d.log)
        assert len(lines) == 2, "\n".join(lines)
        assert " INFO " in lines[1] and "webhook endpoint recovered" in lines[1], lines[1]
        assert "url_host=127.0.0.1" in lines[1] and "down_s=" in lines[1], lines[1]

        m = _samples(await d.metrics(), "smpp_bridge_webhook_deliveries_total")
        assert m['{kind="status",outcome="delivered"}'] == len(rx.reports) == 6
        assert m['{kind="status",outcome="dead"}'] == 0
        if outage == "http500":  # every report of every failed POST counted as a retry
            assert m['{kind="status",outcome="retry"}'] == rx.failed_reports
    finally:
        await d.shutdown()
        await rx.stop()


# -- 2. /admin/queue and `status` during a carrier outage ------------------------------------


async def _healthy(d: Bridge) -> None:
    async def up() -> bool:
        try:
            return (await d.get("/healthz"))[0] == 200
        except (OSError, aiohttp.ClientError, TimeoutError):
            assert d.proc is not None and d.proc.poll() is None, d.log.read_text()
            return False

    await wait_until(up, 20, 0.1)


async def test_queue_during_an_smsc_outage_says_parked_not_ready(tmp_path: Path) -> None:
    """The only SMSC refuses every connection (nothing listens on its port): sends are queued,
    and no claim runs (no window is free with no bind), so the store parks nothing. The view
    called them `ready` ("about to go"); they wait for a bind: `parked`, in `status` too."""
    cfg = config_dict(tmp_path, smscs=[{"name": "carrier-a", "port": free_port()}])
    d = Bridge(tmp_path, cfg)
    d.start()
    try:
        await _healthy(d)
        c = _client(d, await d.account("acme"))
        for i in range(3):
            await c.send(to=[f"+86138001380{i:02d}"], text=f"m{i}")
        await asyncio.sleep(1.5)  # claims would have run by now
        status, text = await d.get("/admin/queue", admin=True)
        assert status == 200, text
        by_state = json.loads(text)["by_state"]
        assert by_state["parked"] == {"messages": 3, "parts": 3}, by_state
        assert by_state["ready"] == {"messages": 0, "parts": 0}, by_state
        rc, out = await d.status_cli()
        assert rc == 1, out  # not ready: no SMSC bound
        assert "ready 0, claimed 0, retry_wait 0, parked 3, scheduled 0" in out, out
    finally:
        await d.shutdown()


# -- 3. an acceptor killed and restarted ------------------------------------------------------


def _acceptor_pids(log: Path) -> dict[int, int]:
    """slot -> pid of the acceptor last started in that slot, from the owner's log."""
    return {
        int(m.group(1)): int(m.group(2))
        for m in re.finditer(r"acceptor (\d+) started \(pid (\d+)\)", log.read_text())
    }


async def test_a_killed_acceptor_drops_out_of_the_queue_view_and_status(tmp_path: Path) -> None:
    """Noted by an earlier session: after a kill -9 of an acceptor the dead process's entry
    stayed in `config.acceptors`. Not reproduced on this release: the supervisor, which looks at
    its acceptors every 0.5 s, drops the dead one's live gauges (the view's source) as it reaps
    it. Pinned here with the time the README states: gone within 1 s, its successor listed once
    started, and `status` never names the dead pid. Meanwhile `config.workers` (new) tells a
    missing acceptor from a full set: the list alone read "1 of 1" during the restart."""
    cfg = config_dict(tmp_path)
    cfg["server"]["workers"] = 2
    d = Bridge(tmp_path, cfg)
    d.start()
    try:
        await d.wait_ready(30)
        await wait_until(lambda: len(_acceptor_pids(d.log)) == 2, 10)

        async def acceptors() -> list[int] | None:
            try:
                status, text = await d.get("/admin/queue", admin=True)
            except (OSError, aiohttp.ClientError):  # a connection queued on the killed one's socket
                return None
            assert status == 200, text
            return sorted(a["pid"] for a in json.loads(text)["config"]["acceptors"])

        live = sorted(_acceptor_pids(d.log).values())
        await wait_until(lambda: _equal(acceptors(), live), 10)
        victim = _acceptor_pids(d.log)[0]
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        await wait_until(lambda: _lacks(acceptors(), victim), 1.0, 0.05)
        assert time.monotonic() - killed < 1.0
        # Until its successor has started, the view says one is missing (the status line from it
        # is the unit test's: the window is a second or two, a CLI start may miss it).
        config = await wait_until(lambda: _config(d), 1.0, 0.05)
        assert config["workers"] == 2 and len(config["acceptors"]) == 1, config
        await wait_until(lambda: _acceptor_pids(d.log)[0] != victim, 15, 0.05)
        await d.wait_ready(20)
        now = sorted(_acceptor_pids(d.log).values())
        await wait_until(lambda: _equal(acceptors(), now), 10, 0.1)
        _rc, out = await d.status_cli()
        assert str(victim) not in out and "acceptors on the current configuration: 2 of 2" in out
    finally:
        await d.shutdown()


async def _config(d: Bridge) -> dict[str, Any] | None:
    try:
        status, text = await d.get("/admin/queue", admin=True)
    except (OSError, aiohttp.ClientError):  # a connection queued on the killed one's socket
        return None
    return dict(json.loads(text)["config"]) if status == 200 else None


async def _equal(got: Any, want: Any) -> bool:
    return bool(await got == want)


async def _lacks(got: Any, pid: int) -> bool:
    pids = await got
    return pids is not None and pid not in pids
