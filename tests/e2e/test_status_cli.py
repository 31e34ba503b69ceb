"""`smpp-bridge status` as an operator runs it (a subprocess) against a running daemon: the table
when all is well (exit 0), a daemon that is up but not ready (exit 1, table still printed), a
refused token, no token, and nothing listening (exit 1, one line, no traceback)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys

import pytest
from aiohttp import web

from bridge.app import Daemon
from tests.e2e.harness import (
    ADMIN_TOKEN,
    WebhookReceiver,
    client_for,
    create_account,
    free_port,
    make_config,
    wait_until,
)


async def status(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SMPP_BRIDGE_")}
    full_env.update(env or {})
    p = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge.cli", "status", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=full_env,
    )  # fmt: skip
    out, err = await asyncio.wait_for(p.communicate(), 30)
    assert p.returncode is not None
    return p.returncode, out.decode(), err.decode()


@pytest.fixture
async def daemon(tmp_path):
    d = Daemon(make_config(tmp_path))
    await d.start()
    try:
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        yield d
    finally:
        await d.stop()


async def test_a_ready_daemon_prints_binds_queue_and_throughput(daemon):
    d = daemon
    creds = await create_account(d, "status")
    async with client_for(d.http_port, creds) as c:
        await c.send(["+8613800138000", "+8613800138001"], text="counted")
    url = f"http://127.0.0.1:{d.http_port}"
    await wait_until(lambda: d.connectors["sim"].snapshot()["submits"]["ok"] == 2, 10)
    # Once their second is whole, the two submits count in the 10 s average (for 10 s).
    await wait_until(lambda: d.connectors["sim"].snapshot()["tps_avg"] == 0.2, 3)
    rc, out, err = await status("--url", url, "--token", ADMIN_TOKEN)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0] == f"smpp-bridge {url}  ready"
    header = lines[1].split()
    assert header[:4] == ["SMSC", "UP", "BINDS", "WINDOW"]
    row = dict(zip(header, lines[2].split(), strict=False))
    assert row["SMSC"] == "sim" and row["UP"] == "yes" and row["BINDS"] == "1/1"
    assert row["WINDOW"].endswith("/50") and row["SENT"] == "2" and row["FAILED"] == "0"
    assert any(line.startswith("queue: ") and "(limit 1000000)" in line for line in lines)
    assert lines[-2:] == [
        "throughput: 0.2 submits/s over the last 10 s, all SMSCs",
        "webhooks: 0 reports pending (oldest -), 0 dead",
    ]

    # The token from the environment (not visible in ps), and --json for scripts.
    rc, out, err = await status(
        "--url", url, "--json", env={"SMPP_BRIDGE_ADMIN_TOKEN": ADMIN_TOKEN}
    )
    assert rc == 0, err
    data = json.loads(out)
    assert data["ready"] is True and data["smscs"][0]["name"] == "sim"
    assert data["smscs"][0]["submits"]["ok"] == 2 and data["smscs"][0]["tps_avg"] == 0.2
    assert set(data["queue"]["by_state"]) == {
        "ready",
        "claimed",
        "retry_wait",
        "parked",
        "scheduled",
    }


async def test_reports_a_customer_endpoint_refuses_show_as_pending_webhooks(tmp_path):
    """The other queue an operator watches: status reports not delivered. A customer endpoint
    answering 503 keeps them pending (retried in a minute here); status prints how many and the
    oldest's age, as /admin/queue gives them."""
    receiver = WebhookReceiver()
    receiver.fail_with = 503
    await receiver.start()
    d = Daemon(make_config(tmp_path, webhooks={"retry_schedule_s": [60], "timeout_s": 2}))
    await d.start()
    try:
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        creds = await create_account(d, "hooks", status_callback_url=receiver.url)
        async with client_for(d.http_port, creds) as c:
            await c.send(["+8613800138000", "+8613800138001"], text="reported")
        await wait_until(lambda: d.connectors["sim"].snapshot()["submits"]["ok"] == 2, 10)
        await asyncio.sleep(1.5)  # receipts in, reports tried, refused, waiting for their retry
        url = f"http://127.0.0.1:{d.http_port}"
        rc, out, err = await status("--url", url, "--token", ADMIN_TOKEN, "--json")
        assert rc == 0, err
        hooks = json.loads(out)["queue"]["webhooks"]
        assert hooks["pending"] == 2 and hooks["dead"] == 0, hooks
        assert hooks["oldest_age_s"] >= 1.0, hooks
        rc, out, err = await status("--url", url, "--token", ADMIN_TOKEN)
        assert rc == 0, err
        line = next(x for x in out.splitlines() if x.startswith("webhooks: "))
        m = re.fullmatch(r"webhooks: 2 reports pending \(oldest ([0-9.]+) s\), 0 dead", line)
        assert m is not None and float(m.group(1)) >= 1.0, line
    finally:
        await d.stop()
        await receiver.stop()


async def test_up_but_not_ready_exits_1_and_still_shows_why(daemon):
    d = daemon
    await d.sim.stop()
    await wait_until(lambda: not d.connectors["sim"].is_up, 10)
    rc, out, _err = await status("--url", f"http://127.0.0.1:{d.http_port}", "--token", ADMIN_TOKEN)
    assert rc == 1
    assert "NOT READY" in out.splitlines()[0]
    assert "problem: no SMSC bound" in out
    row = out.splitlines()[3].split()
    assert row[:3] == ["sim", "NO", "0/1"]


async def test_a_wrong_or_missing_token_is_one_line_and_exit_1(daemon):
    url = f"http://127.0.0.1:{daemon.http_port}"
    rc, out, err = await status("--url", url, "--token", "wrong-token-0123456789")
    assert rc == 1 and out == ""
    assert err.strip() == (
        "smpp-bridge: /admin/smscs: INVALID_ADMIN_TOKEN: Authorization: Bearer <admin token> "
        "required"
    )
    rc, _out, err = await status("--url", url)
    assert rc == 1 and "--token or set SMPP_BRIDGE_ADMIN_TOKEN" in err
    assert "Traceback" not in err


async def test_nothing_listening_is_unreachable_exit_1():
    url = f"http://127.0.0.1:{free_port()}"
    rc, out, err = await status("--url", url, "--token", ADMIN_TOKEN, "--timeout", "2")
    assert rc == 1 and out == ""
    assert err.startswith(f"smpp-bridge: cannot reach {url}/readyz: ")
    assert "Traceback" not in err


# -- the store down (a real HTTP server answering as the daemon does then) ---------------------
# `status` printed only the failed admin call ("/admin/queue: STORE_UNAVAILABLE ...") and none of
# the readiness verdict, its problems or the binds.

STORE_DOWN = {
    "error": {"code": "STORE_UNAVAILABLE", "message": "the store cannot be reached; retry later"}
}
SMSC = {
    "name": "sim",
    "up": False,
    "state": "unknown",
    "binds": {},
    "binds_up": 0,
    "window": {"size": 0, "in_use": 0},
}


async def _daemon_with_the_store_down(port: int, smscs_status: int = 200) -> web.AppRunner:
    async def readyz(request: web.Request) -> web.Response:
        body = {
            "status": "not ready",
            "problems": ["store not reachable: ConnectionRefusedError"],
            "smscs": {"sim": None},
        }
        return web.json_response(body, status=503)

    async def smscs(request: web.Request) -> web.Response:
        if smscs_status == 503:
            return web.json_response(STORE_DOWN, status=503)
        return web.json_response({"smscs": [SMSC]})

    async def queue(request: web.Request) -> web.Response:
        return web.json_response(STORE_DOWN, status=503)

    app = web.Application()
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/admin/smscs", smscs)
    app.router.add_get("/admin/queue", queue)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner


async def test_status_says_not_ready_and_why_when_the_store_is_down() -> None:
    port = free_port()
    runner = await _daemon_with_the_store_down(port)
    url = f"http://127.0.0.1:{port}"
    try:
        code, out, err = await status("--url", url, "--token", "t")
        assert code == 1 and err == "", err
        lines = out.splitlines()
        assert "NOT READY" in lines[0]
        assert "  problem: store not reachable: ConnectionRefusedError" in lines
        assert any(line.split()[:2] == ["sim", "UNKNOWN"] for line in lines), out
        assert (
            "queue: unavailable (STORE_UNAVAILABLE: the store cannot be reached; retry later)"
            in lines
        )
        code, out, _err = await status("--url", url, "--token", "t", "--json")
        shown = json.loads(out)
        assert code == 1 and shown["ready"] is False
        assert shown["queue"] == {
            "unavailable": "STORE_UNAVAILABLE: the store cannot be reached; retry later"
        }
    finally:
        await runner.cleanup()


async def test_status_says_so_when_the_smscs_view_cannot_answer() -> None:
    port = free_port()
    runner = await _daemon_with_the_store_down(port, smscs_status=503)
    try:
        code, out, _err = await status("--url", f"http://127.0.0.1:{port}", "--token", "t")
        assert code == 1
        assert (
            "SMSCs: unavailable (STORE_UNAVAILABLE: the store cannot be reached; retry later)"
            in out
        )
        assert "(no SMSC configured)" not in out
    finally:
        await runner.cleanup()


async def test_a_redirect_is_an_error_and_the_token_does_not_follow_it() -> None:
    """urllib followed a redirect with every header: the admin token went to whatever host the
    Location named (session 35 security review). Now a clear error, and nothing reaches the
    target."""
    port, other = free_port(), free_port()
    seen: list[str | None] = []

    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://127.0.0.1:{other}{request.path}")

    async def collect(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"status": "ready", "problems": [], "smscs": {}})

    runners = []
    for p, handler in ((port, moved), (other, collect)):
        app = web.Application()
        app.router.add_get("/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", p).start()
        runners.append(runner)
    try:
        rc, out, err = await status("--url", f"http://127.0.0.1:{port}", "--token", ADMIN_TOKEN)
    finally:
        for runner in runners:
            await runner.cleanup()
    assert rc == 1 and out == "", (rc, out, err)
    assert "a redirect to http://127.0.0.1:" in err and "Traceback" not in err, err
    assert seen == []
