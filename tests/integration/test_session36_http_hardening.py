"""Session 36: HTTP-side hardening found by a penetration tester and an integrator.

Over real sockets on 127.0.0.1, against the daemon's own composition (`bridge.app.Daemon`, its
runners and listeners) or a real `smpp-bridge run` where processes matter. Each test failed on
the code before session 36:

1. No cap on open connections: a client opening connections ran the process out of file
   descriptors, after which every client, the operator's /admin, /metrics and /readyz
   included, was refused. Now `server.max_connections` per process on the public ports (the API
   and the Alibaba face together): one more is closed unread, counted and logged once a while;
   `server.admin_port` is a listener outside the cap.
2. Bodies were read whole before the signature headers were checked: a client with no
   Authorization at all made the server read and buffer up to max_body_bytes (and wait
   body_timeout_s for one never sent). Now what the headers decide (syntax, key known and
   active, clock skew; on the Alibaba face its ACS3 headers, or an RPC call's query when it has
   no form body) is refused before the body, with the same codes, the connection closed.
3. The audit trail's `remote` (and the request logs) behind a reverse proxy was the proxy. Now
   `server.trusted_proxies`: from such a peer, the right-most X-Forwarded-For address that is
   not a trusted proxy, never the left-most one a client wrote.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import re
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.api import signing
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


# -- 2. signing headers checked before the body is read ------------------------------------------

BIG = 100_000  # a body the client announces (under max_body_bytes) and never sends


async def _answer_to_head(port: int, head: bytes) -> tuple[int, dict[str, str], bytes, bool]:
    """Send a request's head and none of its body: (status, headers, body) of the answer that
    comes within 2 s, and whether the server then closed the connection (EOF within 2 s)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        async with asyncio.timeout(2):
            status_line = await reader.readline()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        try:
            async with asyncio.timeout(2):
                closed = await reader.read(1) == b""
        except TimeoutError:
            closed = False
        return int(status_line.split()[1]), headers, body, closed
    finally:
        writer.close()


def _head(method_path: str, headers: dict[str, str], length: int = BIG) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"{method_path} HTTP/1.1\r\n{lines}Content-Length: {length}\r\n\r\n".encode()


def _native_headers(
    port: int, key: str, secret: str, *, when: datetime | None = None
) -> dict[str, str]:
    headers = {
        "Host": f"127.0.0.1:{port}",
        "Content-Type": "application/json",
        "Idempotency-Key": uuid.uuid4().hex,
    }
    headers.update(
        signing.sign_request(
            key, secret, "POST", "/v1/messages", "", headers, b"x" * BIG,
            when or datetime.now(UTC), uuid.uuid4().hex,
        )
    )  # fmt: skip
    return headers


@pytest.fixture
async def faces(tmp_path: Path) -> AsyncIterator[tuple[Daemon, dict[str, str], dict[str, str]]]:
    """A daemon as `run` builds it with both faces (body_timeout_s 30 s, the default), an
    account, and a second account whose key is revoked."""
    daemon = Daemon(make_config(tmp_path, aliyun={"enabled": True, "port": free_port()}))
    await daemon.start()
    try:
        creds = await harness.create_account(daemon)
        revoked = await harness.create_account(daemon, "gone")
        await daemon.ctx.accounts.revoke_key(revoked["app_key"], int(time.time() * 1000))
        yield daemon, creds, revoked
    finally:
        await daemon.stop()


NATIVE_CASES = {
    "no Authorization": (lambda p, c, r: {"Host": "x", "Content-Type": "application/json"},
                         "MISSING_AUTH"),
    "Authorization unparsable": (
        lambda p, c, r: {**_native_headers(p, c["app_key"], c["app_secret"]),
                         "Authorization": "BRIDGE-HMAC-SHA256 garbage"},
        "SIGNATURE_MISMATCH"),
    "no date": (
        lambda p, c, r: {k: v for k, v in _native_headers(p, c["app_key"], c["app_secret"]).items()
                         if k != "X-Bridge-Date"},
        "SIGNATURE_MISMATCH"),
    "date an hour old": (
        lambda p, c, r: _native_headers(p, c["app_key"], c["app_secret"],
                                        when=datetime.now(UTC) - timedelta(hours=1)),
        "REQUEST_EXPIRED"),
    "unknown app key": (lambda p, c, r: _native_headers(p, "ak_nobody0123456789", "s" * 43),
                        "UNKNOWN_APP_KEY"),
    "revoked key": (lambda p, c, r: _native_headers(p, r["app_key"], r["app_secret"]),
                    "KEY_REVOKED"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(NATIVE_CASES))
async def test_native_refusals_from_headers_come_before_the_body(faces: Any, case: str) -> None:
    """README "Signing": syntax, key known and active, clock skew are checked before the body
    hash. A POST /v1/messages announcing 100 KB and sending none of it is refused at once with
    the same code as before, and the connection is closed behind the answer (the body is
    unread). Before: the server waited for the body (30 s, then 408 REQUEST_TIMEOUT)."""
    daemon, creds, revoked = faces
    make, code = NATIVE_CASES[case]
    port = daemon.http_port
    status, headers, body, closed = await _answer_to_head(
        port, _head("POST /v1/messages", make(port, creds, revoked))
    )
    error = json.loads(body)["error"]
    assert (status, error["code"]) == (401, code), body
    assert headers["x-request-id"] == error["request_id"]
    assert closed, "the connection stays open for a body nobody will read"


async def test_native_valid_headers_then_a_slow_body_is_accepted_as_before(faces: Any) -> None:
    """Coverage: headers that pass, then the body 0.3 s later in two pieces: 202, as before."""
    daemon, creds, _ = faces
    port = daemon.http_port
    body = json.dumps({"to": "+8613800138000", "text": "code 123456"}).encode()
    headers = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json",
               "Idempotency-Key": uuid.uuid4().hex}  # fmt: skip
    headers.update(
        signing.sign_request(
            creds["app_key"], creds["app_secret"], "POST", "/v1/messages", "", headers, body,
            datetime.now(UTC), uuid.uuid4().hex,
        )
    )  # fmt: skip
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(_head("POST /v1/messages", headers, len(body)))
        await asyncio.sleep(0.3)
        writer.write(body[:10])
        await asyncio.sleep(0.1)
        writer.write(body[10:])
        async with asyncio.timeout(5):
            status_line = await reader.readline()
    finally:
        writer.close()
    assert status_line.startswith(b"HTTP/1.1 202"), status_line


def _acs3_headers(host: str, key: str, secret: str, *, when: float | None = None) -> dict[str, str]:
    """An ACS3-HMAC-SHA256 SendSms's headers for a BIG-octet body (query empty)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if when is None else when))
    payload = hashlib.sha256(b"x" * BIG).hexdigest()
    headers = {
        "host": host,
        "x-acs-action": "SendSms",
        "x-acs-version": "2017-05-25",
        "x-acs-date": stamp,
        "x-acs-signature-nonce": secrets.token_hex(16),
        "x-acs-content-sha256": payload,
    }
    names = sorted(headers)
    canonical_headers = "".join(f"{n}:{headers[n]}\n" for n in names)
    signed = ";".join(names)
    canonical = "\n".join(("POST", "/", "", canonical_headers, signed, payload))
    to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
    mac = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"ACS3-HMAC-SHA256 Credential={key},SignedHeaders={signed},Signature={mac}"
    )
    return headers


ALIBABA_CASES = {
    "ACS3 Authorization unparsable": (
        lambda h, c, r: {**_acs3_headers(h, c["app_key"], c["app_secret"]),
                         "Authorization": "ACS3-HMAC-SHA256 garbage"},
        400, "IncompleteSignature"),
    "ACS3 without x-acs-date": (
        lambda h, c, r: {k: v for k, v in _acs3_headers(h, c["app_key"], c["app_secret"]).items()
                         if k != "x-acs-date"},
        400, "IncompleteSignature"),
    "ACS3 date an hour old": (
        lambda h, c, r: _acs3_headers(h, c["app_key"], c["app_secret"], when=time.time() - 3600),
        400, "InvalidTimeStamp.Expired"),
    "ACS3 unknown key": (lambda h, c, r: _acs3_headers(h, "ak_nobody0123456789", "s" * 43),
                         404, "InvalidAccessKeyId.NotFound"),
    "ACS3 revoked key": (lambda h, c, r: _acs3_headers(h, r["app_key"], r["app_secret"]),
                         400, "InvalidAccessKeyId.Inactive"),
    "RPC without a form body or a Signature": (
        lambda h, c, r: {"Host": h, "Content-Type": "application/json"}, 400, "MissingSignature"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(ALIBABA_CASES))
async def test_alibaba_refusals_from_headers_come_before_the_body(faces: Any, case: str) -> None:
    """The Alibaba face: an ACS3 call carries its signature in headers, an RPC v1 call without a
    form body in its query. Refused from those alone, at once, with the code the whole check
    gives, the connection closed behind the answer. Before: the body was awaited (30 s, then
    408)."""
    daemon, creds, revoked = faces
    make, status_wanted, code = ALIBABA_CASES[case]
    port = daemon.config.aliyun.port
    status, headers, body, closed = await _answer_to_head(
        port, _head("POST /", make(f"127.0.0.1:{port}", creds, revoked))
    )
    answer = json.loads(body)
    assert (status, answer["Code"]) == (status_wanted, code), body
    assert headers["x-acs-request-id"] == answer["RequestId"]
    assert closed


async def test_alibaba_rpc_form_body_is_still_read_for_its_signature(faces: Any) -> None:
    """Coverage: an RPC v1 call whose form body may hold Signature and AccessKeyId is not
    refused from its headers: the body is awaited (no answer within 1 s)."""
    daemon, _, _ = faces
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.config.aliyun.port)
    try:
        writer.write(
            _head("POST /", {"Host": "x", "Content-Type": "application/x-www-form-urlencoded"})
        )
        await writer.drain()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(1):
                await reader.readline()
    finally:
        writer.close()


# -- 3. the client's address behind a reverse proxy ----------------------------------------------


async def _admin_post(port: int, path: str, forwarded_for: list[str]) -> int:
    """A mutating admin request (recorded in the audit trail) with X-Forwarded-For headers."""
    headers = [("Authorization", f"Bearer {harness.ADMIN_TOKEN}"), ("Connection", "close")]
    headers += [("X-Forwarded-For", v) for v in forwarded_for]
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"http://127.0.0.1:{port}{path}", headers=headers) as r,
    ):
        return r.status


async def _audit_remotes(port: int) -> list[str | None]:
    status, text = await _get(port, "/admin/audit", harness.ADMIN_TOKEN)
    assert status == 200, text
    return [e["remote"] for e in json.loads(text)["entries"]]


# (trusted_proxies, X-Forwarded-For headers as sent to the daemon) -> the audit trail's remote.
# The test client's peer address is 127.0.0.1: the proxy, when it is trusted.
REMOTE_CASES = [
    pytest.param([], ["203.0.113.7"], "127.0.0.1", id="no trusted proxies: the peer"),
    pytest.param(["10.0.0.0/8"], ["203.0.113.7"], "127.0.0.1", id="peer not trusted: ignored"),
    pytest.param(["127.0.0.1"], [], "127.0.0.1", id="trusted peer, no header: the peer"),
    pytest.param(["127.0.0.1"], ["203.0.113.7"], "203.0.113.7", id="one proxy"),
    pytest.param(
        ["127.0.0.1"], ["6.6.6.6, 203.0.113.7"], "203.0.113.7", id="spoofed left-most entry"
    ),
    pytest.param(
        ["127.0.0.0/8", "10.0.0.0/8"],
        ["6.6.6.6, 203.0.113.7, 10.1.2.3"],
        "203.0.113.7",
        id="two proxies: right-most untrusted",
    ),
    pytest.param(
        ["127.0.0.1", "2001:db8::/32"],
        ["6.6.6.6", "[2001:db9::1]:4431, 2001:db8::5"],
        "2001:db9::1",
        id="header sent twice, IPv6 with a port",
    ),
    pytest.param(["127.0.0.1"], ["203.0.113.7, not-an-ip"], "127.0.0.1", id="garbage hop"),
]


@pytest.mark.parametrize(("trusted", "forwarded_for", "remote"), REMOTE_CASES)
async def test_the_audit_trail_names_the_client_behind_a_trusted_proxy(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    trusted: list[str],
    forwarded_for: list[str],
    remote: str,
) -> None:
    """README "TLS termination": with server.trusted_proxies, the audit trail's `remote` and
    the request log lines name the client from X-Forwarded-For (the right-most address that
    is not a trusted proxy), never the left-most entry a client wrote; a peer not trusted, or
    no setting, is the client itself. Before: always the peer (the proxy), and no setting."""
    daemon = Daemon(make_config(tmp_path, server={"trusted_proxies": trusted}))
    await daemon.start()
    try:
        caplog.set_level(logging.INFO, logger="bridge.api")
        port = daemon.http_port
        status = await _admin_post(port, "/admin/keys/ak_nobody0123456789/revoke", forwarded_for)
        assert status == 404  # refused, and recorded
        assert await _audit_remotes(port) == [remote]
        lines = [r for r in caplog.records if r.getMessage() in ("refused", "operator action")]
        assert lines and all(getattr(r, "remote", None) == remote for r in lines)
    finally:
        await daemon.stop()


def test_a_trusted_proxy_entry_that_is_no_address_is_refused_at_load() -> None:
    raw: dict[str, Any] = {
        "server": {"trusted_proxies": ["127.0.0.1", "nginx.internal", "10.0.0.1/8"]},
        "security": {"generate_master_key": True},
        "smscs": [{"name": "a", "system_id": "s"}],
    }
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env={}, base_dir=Path("/srv/bridge"))
    text = str(err.value)
    assert "server.trusted_proxies[1]: must be an IP address or a CIDR network" in text
    assert "'nginx.internal'" in text
    assert "server.trusted_proxies[2]" in text and "host bits set" in text
    assert "trusted_proxies[0]" not in text


async def _first_line_after_expect(
    port: int, head: bytes
) -> tuple[bytes, asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    await writer.drain()
    async with asyncio.timeout(2):
        return await reader.readline(), reader, writer


def _expecting(headers: dict[str, str], length: int = BIG) -> bytes:
    return _head("POST /v1/messages", {**headers, "Expect": "100-continue"}, length)


async def test_expect_100_continue_waits_for_the_signing_headers(faces: Any) -> None:
    """A client that sends `Expect: 100-continue` (curl with large bodies, several SDKs) sends
    its body only after "100 Continue". aiohttp sent that before any check ran, so an unsigned
    client was invited to upload its body; now a request refused from its headers gets its
    refusal instead (and sends nothing), and one whose headers pass gets "100 Continue", then
    its answer. On the Alibaba face too."""
    daemon, creds, _ = faces
    port = daemon.http_port
    line, _, writer = await _first_line_after_expect(port, _expecting({"Host": "x"}))
    writer.close()
    assert line.startswith(b"HTTP/1.1 401"), line

    body = json.dumps({"to": "+8613800138000", "text": "code 123456"}).encode()
    headers = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json",
               "Idempotency-Key": uuid.uuid4().hex}  # fmt: skip
    headers.update(
        signing.sign_request(
            creds["app_key"], creds["app_secret"], "POST", "/v1/messages", "", headers, body,
            datetime.now(UTC), uuid.uuid4().hex,
        )
    )  # fmt: skip
    line, reader, writer = await _first_line_after_expect(port, _expecting(headers, len(body)))
    try:
        assert line == b"HTTP/1.1 100 Continue\r\n", line
        assert await reader.readline() == b"\r\n"
        writer.write(body)
        async with asyncio.timeout(5):
            final = await reader.readline()
    finally:
        writer.close()
    assert final.startswith(b"HTTP/1.1 202"), final

    ali = daemon.config.aliyun.port
    acs3 = _acs3_headers(f"127.0.0.1:{ali}", "ak_nobody0123456789", "s" * 43)
    line, _, writer = await _first_line_after_expect(
        ali, _head("POST /", {**acs3, "Expect": "100-continue"})
    )
    writer.close()
    assert line.startswith(b"HTTP/1.1 404"), line


async def test_a_wrong_admin_token_is_refused_before_the_body(faces: Any) -> None:
    """The admin token is checked before an operator's body is read: 401 at once, and now the
    connection is closed behind it. Before: the connection stayed open, aiohttp waiting to
    read and discard the rest of the body (its 10 s lingering)."""
    daemon, _, _ = faces
    head = _head(
        "POST /admin/accounts", {"Host": "x", "Authorization": "Bearer " + "x" * 24}, length=5000
    )
    status, _, body, closed = await _answer_to_head(daemon.http_port, head)
    assert (status, json.loads(body)["error"]["code"]) == (401, "INVALID_ADMIN_TOKEN")
    assert closed
