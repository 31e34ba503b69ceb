"""The operator views against a real Daemon, the real simulator and real SQLite: /admin/smscs shows
the bind and counts the submits of a real send; /admin/queue shows the depth while the SMSC is
down, and empties once it is back."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import aiohttp
import pytest

from bridge.app import Daemon
from bridge.sim.server import SimSmsc
from tests.e2e.harness import (
    ADMIN_TOKEN,
    client_for,
    create_account,
    free_port,
    make_config,
    wait_until,
)


@pytest.fixture
async def daemon(tmp_path):
    d = Daemon(make_config(tmp_path))
    await d.start()
    try:
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        yield d
    finally:
        await d.stop()


async def admin_get(d: Daemon, path: str) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            f"http://127.0.0.1:{d.http_port}{path}",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        ) as r,
    ):
        assert r.status == 200, await r.text()
        return await r.json()


async def final_status(client, mid: str) -> str:
    async def done():
        m = await client.message(mid)
        return m["status"] if m["status"] not in ("queued", "sent") else None

    return await wait_until(done, 20, 0.05)


async def test_admin_views_follow_a_real_send_and_an_smsc_outage(daemon):
    d = daemon
    creds = await create_account(d, "ops-e2e")
    (sim,) = (await admin_get(d, "/admin/smscs"))["smscs"]
    assert (sim["name"], sim["up"], sim["binds_up"]) == ("sim", True, 1)
    assert sim["binds"] == {"transceiver": {"configured": 1, "up": 1}}
    assert sim["window"]["size"] == d.config.smscs[0].window
    ok_before = sim["submits"]["ok"]

    async with client_for(d.http_port, creds) as c:
        r = await c.send("+8613800138000", text="counted by the admin view")
        assert await final_status(c, r["messages"][0]["id"]) == "delivered"
        (sim,) = (await admin_get(d, "/admin/smscs"))["smscs"]
        assert sim["submits"]["ok"] == ok_before + 1
        assert sim["submits"]["failed_total"] == 0
        assert sim["delivers"] >= 1  # the receipt came back over the bind
        assert sim["window"]["in_use"] == 0
        queue = await admin_get(d, "/admin/queue")
        assert queue["depth"] == 0 and queue["by_account"] == []

        # The SMSC goes away: what is sent now waits in the queue, visible to the operator.
        cfg = d.sim.cfg
        await d.sim.stop()
        await wait_until(lambda: not d.connectors["sim"].is_up, 10)
        r = await c.send(["+8613800138001", "+8613800138002"], text="waiting for the SMSC")
        ids = [m["id"] for m in r["messages"]]
        queue = await admin_get(d, "/admin/queue")
        assert queue["depth"] == 2 and queue["messages"] == 2
        assert queue["by_account"][0]["account_id"] == creds["account"]
        assert queue["by_account"][0]["name"] == "ops-e2e"
        assert queue["by_account"][0]["parts"] == 2
        assert queue["by_smsc"] == [{"smsc": "sim", "messages": 2, "parts": 2}]
        assert queue["oldest_age_s"] is not None and queue["oldest_age_s"] >= 0
        (sim,) = (await admin_get(d, "/admin/smscs"))["smscs"]
        assert sim["up"] is False and sim["binds_up"] == 0
        await wait_until(lambda: d.connectors["sim"].snapshot()["last_error"] is not None, 10)
        (sim,) = (await admin_get(d, "/admin/smscs"))["smscs"]
        assert sim["last_error"]["message"]

        # Back up: the queue drains, the counters move on.
        d.sim = SimSmsc(replace(cfg, control_port=free_port()))
        await d.sim.start()
        for mid in ids:
            assert await final_status(c, mid) == "delivered"
    queue = await admin_get(d, "/admin/queue")
    assert queue["depth"] == 0
    (sim,) = (await admin_get(d, "/admin/smscs"))["smscs"]
    assert sim["up"] is True and sim["submits"]["ok"] == ok_before + 3
    assert sim["reconnects"] >= 1
