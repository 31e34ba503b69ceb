"""Session 49: an operator's trial of README "TLS termination" with nginx 1.22 in front.

A request refused from its headers alone (an unknown key, a stale date, a wrong admin token, an
Alibaba call's) while its body was still arriving was answered and its connection closed at
once, the body unread. nginx buffers a request's body and writes it to the daemon after the
headers; the daemon's close with bytes unread reset the connection under nginx's write, and
nginx answered its client 502 Bad Gateway instead of the refusal: a 1 MB send with an unknown
key got 502 in 9 of 20 tries, a 64 KB one in 4 of 20 (`bridge.client` retries a 502 and then
raises HTTP_502; the customer never sees UNKNOWN_APP_KEY or REQUEST_EXPIRED's server time). The
rest of such a body is now read and dropped while it keeps coming, then the connection closes.

The client here does what nginx does: it writes the whole request, body included, before it
reads a byte of the answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bridge.api import signing
from bridge.app import Daemon
from tests.e2e import harness
from tests.e2e.harness import make_config
from tests.integration.test_session36_http_hardening import _acs3_headers
from tests.ports import free_port

BODY = b"{" + b" " * 1_000_000 + b"}"  # under server.max_body_bytes (1 MiB)
TRIES = 4


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[tuple[Daemon, dict[str, str]]]:
    daemon = Daemon(make_config(tmp_path, aliyun={"enabled": True, "port": free_port()}))
    await daemon.start()
    try:
        yield daemon, await harness.create_account(daemon)
    finally:
        await daemon.stop()


def _as_a_proxy_sends(port: int, request: bytes) -> bytes:
    """Write the whole request, then read the answer to its end (nginx's order). A reset on
    either side raises, as nginx's writev() or readv() failed (104: Connection reset by peer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer


def _request(method_path: str, headers: dict[str, str]) -> bytes:
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = f"{method_path} HTTP/1.1\r\n{lines}Content-Length: {len(BODY)}\r\n\r\n"
    return head.encode() + BODY


def _signed(port: int, key: str, secret: str, when: datetime) -> dict[str, str]:
    headers = {
        "Host": f"127.0.0.1:{port}",
        "Content-Type": "application/json",
        "Idempotency-Key": uuid.uuid4().hex,
    }
    new = signing.sign_request(
        key, secret, "POST", "/v1/messages", "", headers, BODY, when, uuid.uuid4().hex
    )
    return {**headers, **new}


CASES: dict[str, Any] = {
    "unknown app key": lambda p, c: _signed(p, "AK" + "0" * 24, "s" * 43, datetime.now(UTC)),
    "date an hour old": lambda p, c: _signed(
        p, c["app_key"], c["app_secret"], datetime.now(UTC) - timedelta(hours=1)
    ),
}
CODES = {"unknown app key": "UNKNOWN_APP_KEY", "date an hour old": "REQUEST_EXPIRED"}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_refusal_from_the_headers_reaches_a_client_that_writes_the_body_first(
    daemon: Any, case: str
) -> None:
    """README "Signing": the checks before the body hash answer from the headers. A client
    that writes the whole body before reading (nginx) gets that answer, not a reset."""
    d, creds = daemon
    port = d.http_port
    for _ in range(TRIES):
        request = _request("POST /v1/messages", CASES[case](port, creds))
        answer = await asyncio.to_thread(_as_a_proxy_sends, port, request)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), answer[:200]
        assert json.loads(body)["error"]["code"] == CODES[case]


async def test_a_wrong_admin_token_reaches_a_client_that_writes_the_body_first(
    daemon: Any,
) -> None:
    d, _ = daemon
    request = _request("POST /admin/accounts", {"Host": "x", "Authorization": "Bearer " + "x" * 24})
    for _ in range(TRIES):
        answer = await asyncio.to_thread(_as_a_proxy_sends, d.http_port, request)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401"), answer[:200]
        assert json.loads(body)["error"]["code"] == "INVALID_ADMIN_TOKEN"


async def test_an_alibaba_refusal_reaches_a_client_that_writes_the_body_first(
    daemon: Any,
) -> None:
    """The Alibaba face refuses an ACS3 call from its headers too (README "Alibaba Cloud SMS
    compatibility"): InvalidAccessKeyId.NotFound, 404, for an unknown key."""
    d, _ = daemon
    port = d.config.aliyun.port
    for _ in range(TRIES):
        headers = _acs3_headers(f"127.0.0.1:{port}", "ak_nobody0123456789", "s" * 43)
        answer = await asyncio.to_thread(_as_a_proxy_sends, port, _request("POST /", headers))
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 404"), answer[:200]
        assert json.loads(body)["Code"] == "InvalidAccessKeyId.NotFound"


async def test_a_client_that_stops_mid_body_is_still_closed_soon(daemon: Any) -> None:
    """Coverage for the drain's bound: the refusal's connection, half its body sent and then
    nothing, is closed within a second of the answer (DRAIN_IDLE_S), not held."""
    d, _ = daemon
    port = d.http_port
    request = _request("POST /v1/messages", CASES["unknown app key"](port, {}))
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request[: len(request) // 2])
        async with asyncio.timeout(5):
            assert (await reader.readline()).startswith(b"HTTP/1.1 401")
            started = time.monotonic()
            with contextlib.suppress(ConnectionResetError):  # before: reset at once
                while await reader.read(65536):
                    pass
        assert time.monotonic() - started < 3.0  # DRAIN_IDLE_S, not DRAIN_MAX_S (5 s)
    finally:
        writer.close()
