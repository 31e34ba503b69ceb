"""Session 49: README "TLS termination"'s nginx configuration, run as written in front of a real
daemon (both faces) when an nginx binary is on this machine; skipped without one (the README's
two commands on a fresh machine install none). CI's machine has Debian's (`apt-get install -y
nginx`); nothing is left running or installed: the configuration lives in the test's
directory and the master process is stopped at the end.

The README's blocks are taken from the README itself, with only the addresses, ports, the
certificate's paths and the operators' network (`10.0.0.0/8` -> 127.0.0.5, where the test's
operator connects from) put in, so the example cannot drift from what was tried. What failed
before session 49 (each assertion here, on the README and code of session 48):

- no keep-alive to the daemon: the example had no `upstream` pool, so `Connection ""` kept
  nothing and every request opened a connection to the daemon;
- a body over `server.max_body_bytes` got nginx's HTML 413 page (`bridge.client`: `HTTP_413`),
  never the documented `BODY_TOO_LARGE`;
- a refusal from the headers of a ~1 MB body (an unknown key) came back 502 Bad Gateway about
  half the time: the daemon closed with the body unread, and nginx took the reset for a failed
  upstream;
- the Alibaba-compatible port had no example: the README named the buffer to raise only.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bridge.app import Daemon
from bridge.client import BridgeClient, BridgeError
from tests.certs import self_signed
from tests.e2e import harness
from tests.e2e.harness import ADMIN_TOKEN, make_config
from tests.ports import free_port

NGINX = shutil.which("nginx", path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
pytestmark = pytest.mark.skipif(NGINX is None, reason="no nginx binary (apt-get install nginx)")

README = Path(__file__).resolve().parents[2] / "README.md"
OPERATOR = "127.0.0.5"  # the operators' network of the example (10.0.0.0/8 there)


def readme_nginx_blocks() -> list[str]:
    section = README.read_text(encoding="utf-8").split("### TLS termination", 1)[1]
    section = section.split("\n### ", 1)[0]
    return re.findall(r"```nginx\n(.*?)```", section, re.S)


def nginx_conf(d: Path, api: int, aliyun: int, tls_api: int, tls_aliyun: int) -> str:
    blocks = readme_nginx_blocks()
    assert len(blocks) == 2, "the README's TLS termination has the API's and the Alibaba face's"
    crt, key = self_signed(d)
    text = "\n".join(blocks)
    for old, new in {
        "127.0.0.1:8080": f"127.0.0.1:{api}",
        "127.0.0.1:8081": f"127.0.0.1:{aliyun}",
        "listen 443 ssl;": f"listen 127.0.0.1:{tls_api} ssl;",
        "listen 8443 ssl;": f"listen 127.0.0.1:{tls_aliyun} ssl;",
        "/etc/nginx/tls/gateway.crt": str(crt),
        "/etc/nginx/tls/gateway.key": str(key),
        "allow 10.0.0.0/8;": f"allow {OPERATOR};",
    }.items():
        assert old in text, f"the README's nginx example no longer has {old!r}"
        text = text.replace(old, new)
    temp = " ".join(
        f"{kind}_temp_path {d / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root nginx's workers run as nobody, who cannot enter pytest's directories (mode 0700):
    # a body buffered to a file there would fail.
    user = "user root;" if os.geteuid() == 0 else ""
    return (
        f"{user} worker_processes 1; pid {d / 'nginx.pid'}; error_log {d / 'error.log'} info;\n"
        f"events {{ worker_connections 128; }}\n"
        f"http {{ access_log {d / 'access.log'}; {temp}\n{text}\n}}\n"
    )


@pytest.fixture
async def front(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    """A daemon (both faces, the proxy trusted) and nginx in front of it with the README's
    configuration; the CA file that verifies nginx's certificate."""
    aliyun = free_port()
    daemon = Daemon(
        make_config(
            tmp_path,
            server={"trusted_proxies": ["127.0.0.1"]},
            aliyun={"enabled": True, "port": aliyun},
        )
    )
    await daemon.start()
    nd = tmp_path / "nginx"
    nd.mkdir()
    tls_api, tls_aliyun = free_port(), free_port()
    conf = nd / "nginx.conf"
    conf.write_text(nginx_conf(nd, daemon.http_port, aliyun, tls_api, tls_aliyun))
    assert NGINX is not None
    proc = subprocess.Popen(
        [NGINX, "-p", str(nd), "-e", str(nd / "error.log"), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 5
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                socket.create_connection(("127.0.0.1", tls_api), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "nginx did not listen within 5 s"
                await asyncio.sleep(0.05)
        yield {
            "daemon": daemon,
            "url": f"https://127.0.0.1:{tls_api}",
            "aliyun": f"127.0.0.1:{tls_aliyun}",
            "ca": str(nd / "gateway.crt"),
            "log": nd / "error.log",
        }
    finally:
        proc.send_signal(signal.SIGQUIT)  # nginx's graceful stop, workers included
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        await daemon.stop()


def _session(ca: str, source: str | None = None) -> aiohttp.ClientSession:
    local = {"local_addr": (source, 0)} if source else {}
    ctx = ssl.create_default_context(cafile=ca)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx, **local))


def _daemon_connections(port: int) -> dict[str, int]:
    """TCP connections to or from the daemon's port, either end, by state (/proc/net/tcp's hex
    codes: 01 established, 06 time-wait; 0A is the listener)."""
    states: dict[str, int] = {}
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if port in (int(fields[1].rsplit(":", 1)[1], 16), int(fields[2].rsplit(":", 1)[1], 16)):
            states[fields[3]] = states.get(fields[3], 0) + 1
    return states


async def test_the_readmes_nginx_front(front: dict[str, Any]) -> None:
    daemon: Daemon = front["daemon"]
    creds = await harness.create_account(daemon)
    async with BridgeClient(
        front["url"], creds["app_key"], creds["app_secret"], session=_session(front["ca"])
    ) as client:
        # Signed through TLS: the Host as the client sent it, a `+` in the query as %2B.
        sent = await client.send(to="+8613800138000", text="through nginx")
        assert sent["count"] == 1
        for _ in range(10):
            _, _, page = await client.request(
                "GET", "/v1/messages", query={"to": "+8613800138000", "limit": 1}
            )
            assert page["messages"][0]["id"] == sent["messages"][0]["id"]
        # Keep-alive to the daemon: nginx's pool holds its connections open, and 11 requests
        # did not leave a closed connection each (before: 11 in TIME_WAIT, none open).
        states = _daemon_connections(daemon.http_port)
        assert states.get("01", 0) >= 1, states
        assert states.get("06", 0) < 5, states
        # Over server.max_body_bytes: the documented refusal, not nginx's HTML page.
        with pytest.raises(BridgeError) as big:
            await client.send(to="+8613800138000", text="x" * 1_100_000)
        assert (big.value.status, big.value.code) == (413, "BODY_TOO_LARGE")
        await client._http().close()
    # nginx's own 413 carries the X-Request-Id every answer of the daemon's has, the id its
    # body names (session 49's block had the id in the body only).
    async with _session(front["ca"]) as raw:
        async with raw.post(front["url"] + "/v1/messages", data=b"x" * 1_100_000) as r:
            assert r.status == 413
            rid = r.headers.get("X-Request-Id")
            assert rid is not None and rid.startswith("req_"), dict(r.headers)
            assert (await r.json())["error"]["request_id"] == rid

    # Refused from its headers with ~1 MB of body on the way: the refusal, never a 502.
    stranger = BridgeClient(
        front["url"], "AK" + "0" * 24, "s" * 43, session=_session(front["ca"]), max_retries=0
    )
    codes = []
    for _ in range(6):
        try:
            await stranger.send(to="+8613800138000", text="y" * 1_000_000)
        except BridgeError as exc:
            codes.append(exc.code)
    await stranger._http().close()
    assert codes == ["UNKNOWN_APP_KEY"] * 6, codes

    # The operators' network reaches /admin/ and /metrics, anyone else is refused by nginx; the
    # audit trail names the client nginx saw, not the X-Forwarded-For it forged.
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Forwarded-For": "6.6.6.6"}
    async with _session(front["ca"], "127.0.0.1") as outsider:
        for path in ("/metrics", "/admin/accounts"):
            async with outsider.get(front["url"] + path, headers=headers) as r:
                assert r.status == 403, path
    async with _session(front["ca"], OPERATOR) as operator:
        async with operator.get(front["url"] + "/metrics") as r:
            assert r.status == 200
        body = {"tps": 50}
        url = f"{front['url']}/admin/accounts/{creds['account']}"
        async with operator.patch(url, json=body, headers=headers) as r:
            assert r.status == 200, await r.text()
        async with operator.get(front["url"] + "/admin/audit", headers=headers) as r:
            entries = (await r.json())["entries"]
    assert entries[-1]["remote"] == OPERATOR, entries[-1]


async def test_the_readmes_alibaba_front_takes_a_thousand_numbers(front: dict[str, Any]) -> None:
    """The official SDK through the Alibaba face's server block: a SendSms to 1,000 numbers
    (a ~14 KB request line; nginx's default buffers answer 414 in HTML, which the SDK cannot
    parse) reaches the daemon and is answered in Alibaba's shape (a business refusal here: no
    such template)."""
    from alibabacloud_dysmsapi20170525 import models
    from alibabacloud_dysmsapi20170525.client import Client
    from alibabacloud_tea_openapi.utils_models import Config
    from alibabacloud_tea_util.models import RuntimeOptions

    creds = await harness.create_account(front["daemon"], "shop")
    client = Client(
        Config(
            access_key_id=creds["app_key"],
            access_key_secret=creds["app_secret"],
            endpoint=front["aliyun"],
            protocol="HTTPS",
        )
    )
    request = models.SendSmsRequest(
        phone_numbers=",".join(f"1390000{i:04d}" for i in range(1000)),
        sign_name="Acme",
        template_code="SMS_000000001",
        template_param=json.dumps({"code": "1234"}),
    )
    answer = await asyncio.to_thread(
        client.send_sms_with_options, request, RuntimeOptions(ca=front["ca"])
    )
    assert answer.status_code == 200
    assert answer.body.code.startswith("isv."), answer.body
