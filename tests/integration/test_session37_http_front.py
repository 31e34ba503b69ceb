"""Session 37: the HTTP front end behind proxies and against one greedy client.

Over real sockets on 127.0.0.1 (and 127.0.0.2 as a second client address: the whole of
127.0.0.0/8 is the loopback), against the daemon's own composition (`bridge.app.Daemon`). Each
test failed on the code before session 37:

1. `server.max_connections_per_ip`: one peer address could take every one of the process's
   `server.max_connections`, after which every other client was refused. Now a peer past its
   share is closed unread (trusted proxies exempt), counted under its own `reason`, and logged
   once a minute with its address.
2. RFC 7239 `Forwarded` (`server.forwarded_header: Forwarded`) names the client behind trusted
   proxies, by the same right-most-untrusted rule as X-Forwarded-For; only the header the
   proxies are configured to write is read.
3. The log lines for requests the HTTP parser refused and for answers nobody reads named no
   client; now `remote=` (the peer, or the client a trusted proxy forwarded for when known),
   and still no header value or body byte.
"""

from __future__ import annotations

import asyncio
import json
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
from tests.e2e.harness import make_config, wait_until
from tests.ports import free_port

REQUEST = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
    sock.settimeout(5)
    return sock


def _exchange(sock: socket.socket) -> bytes:
    """One request's answer; b"" when the server closed the connection unread."""
    try:
        sock.sendall(REQUEST)
        return sock.recv(4096)
    except (ConnectionResetError, BrokenPipeError):
        return b""


async def _served(sock: socket.socket) -> bool:
    return (await asyncio.to_thread(_exchange, sock)).startswith(b"HTTP/1.1 200")


async def _closed_unread(sock: socket.socket) -> bool:
    return await asyncio.to_thread(_exchange, sock) == b""


async def _get(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Connection": "close"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{port}{path}", headers=headers) as r,
    ):
        return r.status, await r.text()


def _refused(text: str) -> dict[str, float]:
    return {
        m[1]: float(m[2])
        for m in re.finditer(
            r'^smpp_bridge_http_connections_refused_total\{reason="([a-z_]+)"\} (\S+)$', text, re.M
        )
    }


# -- 1. server.max_connections_per_ip ------------------------------------------------------------


async def test_one_peer_address_gets_its_share_and_no_more(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """max_connections 10, max_connections_per_ip 3: three connections from 127.0.0.1 are
    served, a fourth from it is closed unread while 127.0.0.2 is still served; /metrics (on the
    admin listener) counts the refusal under reason max_connections_per_ip; one WARNING names
    127.0.0.1; closing one of its connections frees a place. Before: no such setting."""
    admin_port = free_port()
    cfg = make_config(
        tmp_path,
        server={"max_connections": 10, "max_connections_per_ip": 3, "admin_port": admin_port},
    )
    daemon = Daemon(cfg)
    await daemon.start()
    port = cfg.server.port
    held: list[socket.socket] = []
    try:
        caplog.set_level(logging.WARNING, logger="bridge.api")
        held = [_connect(port) for _ in range(3)]
        assert all([await _served(s) for s in held])
        extra = _connect(port)
        try:
            assert await _closed_unread(extra)
        finally:
            extra.close()
        other = _connect(port, "127.0.0.2")
        held.append(other)
        assert await _served(other)
        status, text = await _get(admin_port, "/metrics")
        assert status == 200
        assert _refused(text) == {"max_connections": 0, "max_connections_per_ip": 1}
        lines = [r for r in caplog.records if "max_connections_per_ip" in r.getMessage()]
        assert len(lines) == 1 and getattr(lines[0], "remote", None) == "127.0.0.1"
        assert "127.0.0.1" in lines[0].getMessage()
        held.pop(0).close()
        await wait_until(lambda: daemon.connection_cap.by_peer.get("127.0.0.1") == 2, 5)
        again = _connect(port)
        held.append(again)
        assert await _served(again)
    finally:
        for s in held:
            s.close()
        await daemon.stop()


async def test_trusted_proxies_are_not_capped_per_address(tmp_path: Path) -> None:
    """A trusted proxy carries every client's connections: 127.0.0.1 (trusted) holds four with
    max_connections_per_ip 2; 127.0.0.2 (not trusted) gets two, and its third is refused."""
    cfg = make_config(
        tmp_path,
        server={
            "max_connections": 10,
            "max_connections_per_ip": 2,
            "trusted_proxies": ["127.0.0.1"],
        },
    )
    daemon = Daemon(cfg)
    await daemon.start()
    port = cfg.server.port
    held: list[socket.socket] = []
    try:
        held = [_connect(port) for _ in range(4)] + [_connect(port, "127.0.0.2") for _ in range(2)]
        assert all([await _served(s) for s in held])
        extra = _connect(port, "127.0.0.2")
        try:
            assert await _closed_unread(extra)
        finally:
            extra.close()
        assert daemon.connection_cap.refused["max_connections_per_ip"] == 1
    finally:
        for s in held:
            s.close()
        await daemon.stop()


@pytest.mark.parametrize(
    ("server", "fault"),
    [
        (
            {"max_connections": 10, "max_connections_per_ip": 11},
            "server.max_connections_per_ip: must be at most max_connections (10), got 11",
        ),
        ({"max_connections_per_ip": -1}, "server.max_connections_per_ip: must be between 0"),
        ({"forwarded_header": "X-Real-IP"}, "server.forwarded_header: must be one of"),
    ],
)
def test_the_new_settings_are_checked(server: dict[str, Any], fault: str) -> None:
    raw: dict[str, Any] = {
        "server": server,
        "security": {"generate_master_key": True},
        "smscs": [{"name": "a", "system_id": "s"}],
    }
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env={}, base_dir=Path("/srv/bridge"))
    assert fault in str(err.value)


# -- 2. RFC 7239 Forwarded -----------------------------------------------------------------------


async def _admin_post(port: int, headers: list[tuple[str, str]]) -> int:
    """A mutating admin request (recorded in the audit trail) with the given proxy headers."""
    sent = [("Authorization", f"Bearer {harness.ADMIN_TOKEN}"), ("Connection", "close")]
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"http://127.0.0.1:{port}/admin/keys/ak_nobody0123456789/revoke",
            headers=sent + headers,
        ) as r,
    ):
        return r.status


FWD, XFF = "Forwarded", "X-Forwarded-For"

# (server.forwarded_header, headers the proxy sent) -> the audit trail's remote. The peer is
# 127.0.0.1, a trusted proxy.
REMOTE_CASES = [
    pytest.param(FWD, [(FWD, "for=203.0.113.7;proto=https")], "203.0.113.7", id="forwarded"),
    pytest.param(FWD, [(FWD, 'for="[2001:db9::1]:4711"')], "2001:db9::1", id="quoted IPv6"),
    pytest.param(FWD, [(FWD, "for=6.6.6.6, for=203.0.113.7")], "203.0.113.7", id="spoofed"),
    pytest.param(FWD, [(FWD, "for=6.6.6.6"), (FWD, "for=203.0.113.7")], "203.0.113.7", id="two"),
    pytest.param(FWD, [(FWD, 'for="_hidden"')], "127.0.0.1", id="obfuscated: the proxy"),
    pytest.param(FWD, [(FWD, "for=unknown")], "127.0.0.1", id="unknown: the proxy"),
    pytest.param(
        FWD, [(XFF, "6.6.6.6"), (FWD, "for=203.0.113.7")], "203.0.113.7", id="xff ignored"
    ),
    pytest.param(FWD, [(XFF, "6.6.6.6")], "127.0.0.1", id="only xff: ignored"),
    pytest.param(
        XFF, [(FWD, "for=6.6.6.6"), (XFF, "203.0.113.7")], "203.0.113.7", id="forwarded ignored"
    ),
    pytest.param(XFF, [(FWD, "for=6.6.6.6")], "127.0.0.1", id="only forwarded: ignored"),
]


@pytest.mark.parametrize(("header", "sent", "remote"), REMOTE_CASES)
async def test_the_audit_trail_reads_the_configured_proxy_header(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    header: str,
    sent: list[tuple[str, str]],
    remote: str,
) -> None:
    """README "TLS termination": with server.forwarded_header: Forwarded the audit trail's
    `remote` and the request log lines name the client from RFC 7239 Forwarded headers, by the
    X-Forwarded-For rule; the header the proxies do not write is the client's word, ignored."""
    daemon = Daemon(
        make_config(tmp_path, server={"trusted_proxies": ["127.0.0.1"], "forwarded_header": header})
    )
    await daemon.start()
    try:
        caplog.set_level(logging.INFO, logger="bridge.api")
        port = daemon.http_port
        assert await _admin_post(port, sent) == 404  # refused, and recorded
        status, text = await _get(port, "/admin/audit", harness.ADMIN_TOKEN)
        assert status == 200, text
        assert [e["remote"] for e in json.loads(text)["entries"]] == [remote]
        lines = [r for r in caplog.records if r.getMessage() in ("refused", "operator action")]
        assert lines and all(getattr(r, "remote", None) == remote for r in lines)
    finally:
        await daemon.stop()


# -- 3. remote= on the HTTP layer's own log lines ------------------------------------------------

SECRET = "Bearer s3cr3t-t0ken-never-logged"


@pytest.mark.parametrize("peer", ["127.0.0.2", "127.0.0.1"], ids=["a client", "a trusted proxy"])
async def test_a_malformed_request_is_logged_with_its_peer_and_nothing_secret(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, peer: str
) -> None:
    """A request whose headers the parser refuses, carrying an Authorization header, an
    X-Forwarded-For and a body: the WARNING names the peer, a trusted proxy too (the headers
    were never parsed, so none can be believed), and holds neither the token nor the body."""
    daemon = Daemon(make_config(tmp_path, server={"trusted_proxies": ["127.0.0.1"]}))
    await daemon.start()
    try:
        caplog.set_level(logging.DEBUG, logger="bridge.api")
        sock = _connect(daemon.http_port, peer)
        try:
            sock.sendall(
                b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: "
                + SECRET.encode()
                + b"\r\nX-Forwarded-For: 203.0.113.7\r\nContent-Length: 11\r\n"
                b"Bad\x01Header: y\r\n\r\nbody-secret"
            )
            answer = await asyncio.to_thread(sock.recv, 4096)
        finally:
            sock.close()
        assert b" 400 " in answer.split(b"\r\n", 1)[0] and b"MALFORMED_HTTP" in answer
        lines = [r for r in caplog.records if "malformed HTTP request" in r.getMessage()]
        assert len(lines) == 1, [r.getMessage() for r in caplog.records]
        assert getattr(lines[0], "remote", None) == peer
        assert f"remote={peer}" in lines[0].getMessage()
        assert "s3cr3t" not in caplog.text and "body-secret" not in caplog.text
    finally:
        await daemon.stop()


@pytest.mark.parametrize(
    ("trusted", "remote"),
    [([], "127.0.0.1"), (["127.0.0.1"], "203.0.113.7")],
    ids=["the peer", "behind a trusted proxy: the client"],
)
async def test_a_stalled_answer_is_logged_with_its_client(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, trusted: list[str], remote: str
) -> None:
    """A connection that pipelines requests and reads nothing is cut after idle_timeout_s
    (session 35); the INFO line saying so names its client: the peer, or behind a trusted proxy
    the address its X-Forwarded-For names. No header value (the Authorization) is logged."""
    daemon = Daemon(
        make_config(
            tmp_path,
            server={"idle_timeout_s": 1, "body_timeout_s": 1, "trusted_proxies": trusted},
        )
    )
    await daemon.start()
    sock = socket.socket()
    try:
        caplog.set_level(logging.INFO, logger="bridge.api")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", daemon.http_port))
        request = (
            "GET /openapi.json HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6, 203.0.113.7\r\n"
            f"Authorization: {SECRET}\r\n\r\n"
        ).encode()
        sock.sendall(request * 40)

        def cut() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "read nothing" in r.getMessage()]

        await wait_until(cut, 8, 0.1)
        line = cut()[0]
        assert getattr(line, "remote", None) == remote
        assert f"remote={remote}" in line.getMessage()
        assert "s3cr3t" not in caplog.text
    finally:
        sock.close()
        await daemon.stop()
