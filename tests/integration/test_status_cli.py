"""`smpp-bridge status` against a daemon whose store is down: it printed only the failed admin
call ("/admin/queue: STORE_UNAVAILABLE ...") and none of the readiness verdict, its problems or
the binds. A real HTTP server answering as the daemon does then; the real `status` code."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from aiohttp import web

from bridge.cli import main as cli_main

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.e2e.harness import free_port  # noqa: E402

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


def _status(capsys: Any, port: int, *extra: str) -> tuple[int, str, str]:
    code = cli_main(["status", "--url", f"http://127.0.0.1:{port}", "--token", "t", *extra])
    out, err = capsys.readouterr()
    return code, out, err


async def test_status_says_not_ready_and_why_when_the_store_is_down(capsys: Any) -> None:
    port = free_port()
    runner = await _daemon_with_the_store_down(port)
    try:
        code, out, err = await asyncio.to_thread(_status, capsys, port)
        assert code == 1 and err == "", err
        lines = out.splitlines()
        assert "NOT READY" in lines[0]
        assert "  problem: store not reachable: ConnectionRefusedError" in lines
        assert any(line.split()[:2] == ["sim", "UNKNOWN"] for line in lines), out
        assert (
            "queue: unavailable (STORE_UNAVAILABLE: the store cannot be reached; retry later)"
            in lines
        )
        code, out, _err = await asyncio.to_thread(_status, capsys, port, "--json")
        shown = json.loads(out)
        assert code == 1 and shown["ready"] is False
        assert shown["queue"] == {
            "unavailable": "STORE_UNAVAILABLE: the store cannot be reached; retry later"
        }
    finally:
        await runner.cleanup()


async def test_status_says_so_when_the_smscs_view_cannot_answer(capsys: Any) -> None:
    port = free_port()
    runner = await _daemon_with_the_store_down(port, smscs_status=503)
    try:
        code, out, _err = await asyncio.to_thread(_status, capsys, port)
        assert code == 1
        assert (
            "SMSCs: unavailable (STORE_UNAVAILABLE: the store cannot be reached; retry later)"
            in out
        )
        assert "(no SMSC configured)" not in out
    finally:
        await runner.cleanup()
