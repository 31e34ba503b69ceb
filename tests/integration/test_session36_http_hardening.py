"""Session 36: HTTP-side hardening found by a penetration tester and an integrator.

Over real sockets on 127.0.0.1, against the daemon's own composition (`bridge.app.Daemon`, its
runners and listeners) or a real `smpp-bridge run` where processes matter. Each test failed on
the code before session 36:

1. No cap on open connections: a client opening connections ran the process out of file
   descriptors, after which every client, the operator's /admin, /metrics and /readyz
   included, was refused. Now `server.max_connections` per process on the public ports (the API
   and the Alibaba face together): one more is closed unread, counted and logged once a while;
   `server.admin_port` is a listener outside the cap.
2. Bodies were read whole before the signature headers were checked (see the tests of part 2).
3. The audit trail's `remote` behind a reverse proxy was the proxy (part 3).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.app import Daemon
from bridge.config import ConfigError, parse_config
from tests.e2e import harness
from tests.e2e.harness import DaemonProcess, config_dict, make_config, wait_until
from tests.ports import free_port

# -- 1. the connection cap -----------------------------------------------------------------------


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.settimeout(5)
    return sock


def _closed_unread(sock: socket.socket) -> bool:
    """The server closed this connection (EOF or reset) without answering a request sent on it."""
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        return sock.recv(4096) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False  # held open: not refused


def _exchange(sock: socket.socket) -> bytes:
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    return sock.recv(4096)


async def _answers(sock: socket.socket) -> bytes:
    """One request's answer, off the event loop (the daemon under test runs on it)."""
    return await asyncio.to_thread(_exchange, sock)


async def _get(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Connection": "close"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as s,
        s.get(
            f"http://127.0.0.1:{port}{path}",
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=5),
        ) as r,
    ):
        return r.status, await r.text()


def _metric(text: str, name: str) -> float:
    found = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


async def test_connections_past_the_cap_are_closed_and_the_admin_port_still_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """server.max_connections 4 over both public faces (3 on the API port, 1 on the Alibaba
    port): a fifth and sixth connection, on either port, are closed unread; the admin listener
    answers /metrics (the open gauge at 4, the refused counter at 2), /readyz and /admin/ all
    along, and refuses /v1/ (404); one WARNING, not one per connection; once connections close,
    new ones are served again. Before: no cap, and no such setting (ConfigError)."""
    admin_port = free_port()
    cfg = make_config(
        tmp_path,
        server={"max_connections": 4, "admin_port": admin_port},
        aliyun={"enabled": True, "port": free_port()},
    )
    daemon = Daemon(cfg)
    await daemon.start()
    port, ali_port = cfg.server.port, cfg.aliyun.port
    held: list[socket.socket] = []
    try:
        caplog.set_level(logging.WARNING, logger="bridge.api")
        held = [_connect(port) for _ in range(3)] + [_connect(ali_port)]
        assert b"200 OK" in await _answers(held[0])  # admitted connections are served
        await wait_until(lambda: daemon.connection_cap.open == 4, 5)
        extra = [_connect(port), _connect(ali_port)]
        try:
            closed = await asyncio.gather(*(asyncio.to_thread(_closed_unread, s) for s in extra))
        finally:
            for s in extra:
                s.close()
        assert closed == [True, True]
        status, ready = await _get(admin_port, "/readyz")
        assert status == 200, ready
        assert (await _get(admin_port, "/admin/smscs", harness.ADMIN_TOKEN))[0] == 200
        status, text = await _get(admin_port, "/metrics")
        assert status == 200
        assert _metric(text, "smpp_bridge_http_connections_open") == 4
        assert _metric(text, "smpp_bridge_http_connections_refused_total") == 2
        assert (await _get(admin_port, "/v1/account"))[0] == 404  # no API on the admin port
        warnings = [r for r in caplog.records if "max_connections" in r.getMessage()]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        for s in held:
            s.close()
        held = []
        await wait_until(lambda: daemon.connection_cap.open == 0, 5)
        again = [_connect(port) for _ in range(3)] + [_connect(ali_port)]
        try:
            assert all([(await _answers(s)).startswith(b"HTTP/1.1 ") for s in again])
        finally:
            for s in again:
                s.close()
    finally:
        for s in held:
            s.close()
        await daemon.stop()


async def test_acceptor_processes_cap_connections_and_report_them(tmp_path: Path) -> None:
    """`smpp-bridge run` with one acceptor process (the file-backed metrics): its cap holds
    (max_connections 3: a fourth is closed unread) and the merged /metrics, read on the admin
    listener meanwhile, shows 3 open and 1 refused."""
    admin_port = free_port()
    cfg = config_dict(
        tmp_path, server={"workers": 1, "max_connections": 3, "admin_port": admin_port}
    )
    proc = DaemonProcess(tmp_path, cfg)
    proc.start()
    held: list[socket.socket] = []
    try:
        await proc.wait_ready(30)
        await asyncio.sleep(0.3)  # the probe's connection is gone
        held = [_connect(proc.port) for _ in range(3)]
        assert all([b"200 OK" in await _answers(s) for s in held])
        extra = _connect(proc.port)
        try:
            assert await asyncio.to_thread(_closed_unread, extra)
        finally:
            extra.close()

        async def reported() -> bool:
            status, text = await _get(admin_port, "/metrics")
            return (
                status == 200
                and _metric(text, "smpp_bridge_http_connections_open") == 3
                and _metric(text, "smpp_bridge_http_connections_refused_total") == 1
            )

        await wait_until(reported, 10, 0.2)
        assert "closed unread" in proc.log.read_text()
    finally:
        for s in held:
            s.close()
        proc.stop()


@pytest.mark.parametrize(
    ("server", "fault"),
    [
        ({"max_connections": 0}, "server.max_connections: must be between 1 and 1000000, got 0"),
        ({"admin_port": 8080}, "server.admin_port: must differ from port (8080)"),
    ],
)
def test_connection_settings_are_checked(server: dict[str, Any], fault: str) -> None:
    raw: dict[str, Any] = {
        "server": {"port": 8080, **server},
        "security": {"generate_master_key": True},
        "smscs": [{"name": "a", "system_id": "s"}],
    }
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env={}, base_dir=Path("/srv/bridge"))
    assert fault in str(err.value)


def test_the_admin_port_must_not_take_the_alibaba_port() -> None:
    raw: dict[str, Any] = {
        "server": {"admin_port": 8081},
        "aliyun": {"enabled": True, "port": 8081},
        "security": {"generate_master_key": True},
        "smscs": [{"name": "a", "system_id": "s"}],
    }
    with pytest.raises(ConfigError, match=r"server.admin_port: must differ from aliyun.port"):
        parse_config(raw, env={}, base_dir=Path("/srv/bridge"))
