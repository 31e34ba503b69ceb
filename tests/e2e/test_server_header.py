"""Every answer of the real daemon says `Server: smpp-bridge`, never Python's and aiohttp's
versions (what a scanner looks for to pick advisories), in workers mode: the API's answers come
from an acceptor process, the admin listener's and the Alibaba face's from the owner.

Session 53: one mechanism names them all, aiohttp's default answer name set when the module
that names it (bridge.api.http_errors) is imported; before, the error middleware, a few answers
themselves and a module patch made once an app was built each named some of them.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bridge.client import BridgeClient
from tests.e2e.harness import ADMIN_TOKEN, DaemonProcess, config_dict, free_port

CN = "+8613800138000"
MALFORMED = b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n"


async def _raw(port: int, data: bytes) -> tuple[int, str | None]:
    """Status and Server header of the answer to bytes sent as they are."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    finally:
        writer.close()
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers.get("server")


def _request(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: x", "Connection: close", *headers]
    if body:
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.mark.slow
async def test_every_answer_of_a_workers_daemon_names_smpp_bridge(tmp_path: Path):
    admin_port, ali_port = free_port(), free_port()
    cfg = config_dict(tmp_path, aliyun={"enabled": True, "port": ali_port})
    cfg["server"].update(workers=1, admin_port=admin_port, max_body_bytes=1024)
    daemon = DaemonProcess(tmp_path, cfg)
    daemon.start()
    try:
        await daemon.wait_ready(30)
        creds = await daemon.account("acme")
        api = daemon.port
        seen: dict[str, tuple[int, str | None]] = {}
        async with BridgeClient(f"http://127.0.0.1:{api}", **creds) as client:
            for name in ("sent", "replay"):
                status, headers, _ = await client.request(
                    "POST", "/v1/messages", json_body={"to": CN, "text": "hi"},
                    idempotency_key="k-server-1",
                )  # fmt: skip
                seen[name] = status, headers.get("Server")
            month = datetime.now(UTC).strftime("%Y-%m")
            status, headers, _ = await client.request(
                "GET", "/v1/cdrs", query={"month": month}, raw=True
            )
            seen["cdr stream"] = status, headers.get("Server")
        raw = {
            "healthz": (api, _request("GET", "/healthz")),
            "head": (api, _request("HEAD", "/healthz")),
            "options": (api, _request("OPTIONS", "/healthz")),
            "unsigned": (api, _request("GET", "/v1/account")),
            "no route": (api, _request("GET", "/no/such/path")),
            "bad expect, no route": (api, _request("PUT", "/healthz", "Expect: bogus", body=b"{}")),
            "bad expect": (api, _request("POST", "/v1/messages", "Expect: bogus", body=b"{}")),
            "too large": (api, _request("POST", "/v1/messages", body=b"x" * 1025)),
            "unparsable": (api, MALFORMED),
            "admin": (admin_port, _request("GET", "/admin/accounts")),
            "admin token": (
                admin_port,
                _request("GET", "/admin/accounts", f"Authorization: Bearer {ADMIN_TOKEN}"),
            ),
            "admin unparsable": (admin_port, MALFORMED),
            "alibaba": (ali_port, _request("GET", "/?Action=SendSms")),
            "alibaba unparsable": (ali_port, MALFORMED),
        }
        for name, (port, data) in raw.items():
            seen[name] = await _raw(port, data)
    finally:
        daemon.stop()
    statuses = {name: status for name, (status, _) in seen.items()}
    assert statuses == {
        "sent": 202, "replay": 202, "cdr stream": 200, "healthz": 200, "head": 200,
        "options": 405, "unsigned": 401, "no route": 404, "bad expect, no route": 417,
        "bad expect": 417, "too large": 413, "unparsable": 400, "admin": 401,
        "admin token": 200, "admin unparsable": 400, "alibaba": 400, "alibaba unparsable": 400,
    }  # fmt: skip
    named = {name: server for name, (_, server) in seen.items()}
    assert named == dict.fromkeys(seen, "smpp-bridge")
