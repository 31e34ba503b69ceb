"""Session 46: an operator's trial with two carriers (each test here failed before its fix).

1. A refused request's log line (at the default level the only line a request leaves) named
   neither the account nor the app key: "our requests fail since 10:00" could not be looked up.
   The Alibaba-compatible face logged no refusal at all, its business refusals being HTTP 200.
2. `smpp-bridge send ... | head` printed `cannot reach <url>: Broken pipe` and exited 1 after
   the daemon had accepted the message: a script, or an operator, sent it again.
3. The Python client could not fetch the CDR export (`INVALID_RESPONSE`: CSV is not JSON) and
   signed a query written into the path as part of the path (`SIGNATURE_MISMATCH`).
4. `smpp-bridge send` to several numbers, some refused, printed the first refusal only: the
   error body's `details` (every refused recipient) was dropped.
5. `GET /v1/messages?date=` took UTC days only, while `/v1/stats` and `/v1/cdrs` offered
   `timezone=local`: a customer in Shanghai listing "today" lost what came before 08:00.
6. A store command without `-c` on a server made a demo store in the current directory and
   worked on it without a word: `account list` printed `[]`, `account create` made keys the
   daemon had never heard of.
7. `smpp-bridge send --url` pointed at `server.admin_port` got a bare "no such endpoint: POST
   /v1/messages", which reads as a missing route, not as the wrong port.
8. The operator could not look a customer's message up (its parts, SMSC ids, error codes):
   no admin endpoint and no command; only the customer's key or sqlite3 on the store.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from alibabacloud_dysmsapi20170525 import models
from alibabacloud_dysmsapi20170525.client import Client
from alibabacloud_tea_openapi import exceptions as sdk_errors
from alibabacloud_tea_openapi.utils_models import Config

from bridge.client import BridgeClient, BridgeError
from tests.e2e.harness import (
    ADMIN_TOKEN,
    DaemonProcess,
    client_for,
    config_dict,
    final_status,
    free_port,
)

# A client that put its secret where the key goes: such a Credential must not reach the log.
_SECRET_LIKE = "pICAy74TXXv9gooVyfSELWULtAAlF-ODxKSKgG_YYfc"
_UNKNOWN_KEY = "AK0123456789ABCDEF01234567"


@pytest.fixture
async def daemon(tmp_path: Path) -> AsyncIterator[DaemonProcess]:
    """A real daemon with JSON logs at the default level and the Alibaba face on."""
    cfg = config_dict(
        tmp_path,
        logging={"level": "INFO", "format": "json"},
        aliyun={"enabled": True, "port": free_port()},
    )
    proc = DaemonProcess(tmp_path, cfg)
    proc.start()
    try:
        await proc.wait_ready(30)
        yield proc
    finally:
        proc.stop()


def _cli(daemon: DaemonProcess, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args, "--config", str(daemon.path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def _refusals(daemon: DaemonProcess) -> list[dict[str, Any]]:
    lines = []
    for raw in daemon.log.read_text().splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if line.get("msg") == "refused":
            lines.append(line)
    return lines


async def _refusal(daemon: DaemonProcess, request_id: str | None) -> dict[str, Any]:
    """The `refused` line of one request, by the id its answer carried."""
    assert request_id
    for _ in range(100):
        found = [r for r in _refusals(daemon) if r.get("request_id") == request_id]
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no refused line for {request_id}: {daemon.log.read_text()[-3000:]}")


async def _refused(client: BridgeClient, **send: Any) -> BridgeError:
    with pytest.raises(BridgeError) as raised:
        await client.send(**send)
    return raised.value


async def test_a_refusal_names_the_account_and_the_app_key(daemon: DaemonProcess) -> None:
    first = await daemon.account("otpco")
    account = _cli(daemon, "account", "show", "otpco")["id"]
    second = _cli(daemon, "key", "create", "otpco")
    _cli(daemon, "key", "revoke", first["app_key"])  # the rotation: the old key is revoked
    port = daemon.port

    async with client_for(port, first) as old:
        err = await _refused(old, to="+8613800138000", text="hi")
    assert err.code == "KEY_REVOKED"
    line = await _refusal(daemon, err.request_id)
    assert (line["account"], line["app_key"]) == (account, first["app_key"]), line

    async with BridgeClient(f"http://127.0.0.1:{port}", second["app_key"], "wrong") as bad:
        err = await _refused(bad, to="+8613800138000", text="hi")
    assert err.code == "SIGNATURE_MISMATCH"
    line = await _refusal(daemon, err.request_id)
    assert (line["account"], line["app_key"]) == (account, second["app_key"]), line

    async with client_for(port, second) as good:  # refused by the handler, after the checks
        err = await _refused(good, to="not-a-number", text="hi")
    assert err.code == "INVALID_NUMBER"
    line = await _refusal(daemon, err.request_id)
    assert (line["account"], line["app_key"]) == (account, second["app_key"]), line

    async with BridgeClient(f"http://127.0.0.1:{port}", _UNKNOWN_KEY, "x") as unknown:
        err = await _refused(unknown, to="+8613800138000", text="hi")
    assert err.code == "UNKNOWN_APP_KEY"
    line = await _refusal(daemon, err.request_id)
    assert line["app_key"] == _UNKNOWN_KEY and "account" not in line, line

    async with BridgeClient(f"http://127.0.0.1:{port}", _SECRET_LIKE, "x") as mixed_up:
        err = await _refused(mixed_up, to="+8613800138000", text="hi")
    assert err.code == "UNKNOWN_APP_KEY"
    line = await _refusal(daemon, err.request_id)
    assert "app_key" not in line and "account" not in line, line
    assert _SECRET_LIKE not in daemon.log.read_text()


def _aliyun(daemon: DaemonProcess, key: str, secret: str) -> Client:
    port = daemon.cfg["aliyun"]["port"]
    return Client(
        Config(
            access_key_id=key,
            access_key_secret=secret,
            endpoint=f"127.0.0.1:{port}",
            protocol="HTTP",
        )
    )


def _send_sms(template: str) -> models.SendSmsRequest:
    return models.SendSmsRequest(
        phone_numbers="13800138000",
        sign_name="Acme",
        template_code=template,
        template_param='{"code": "1234"}',
    )


async def test_the_alibaba_face_logs_its_refusals_with_the_caller(daemon: DaemonProcess) -> None:
    creds = await daemon.account("shop")
    account = _cli(daemon, "account", "show", "shop")["id"]

    # A business refusal: HTTP 200 with an isv.* Code, which the SDK returns, not raises.
    sdk = _aliyun(daemon, creds["app_key"], creds["app_secret"])
    answer = await asyncio.to_thread(sdk.send_sms, _send_sms("SMS_000000001"))
    assert answer.body.code.startswith("isv."), answer.body
    line = await _refusal(daemon, answer.body.request_id)
    assert line["action"] == "aliyun SendSms" and line["code"] == answer.body.code, line
    assert line["bridge_code"] != line["code"], line  # the native code behind Alibaba's
    assert (line["account"], line["app_key"]) == (account, creds["app_key"]), line

    wrong = _aliyun(daemon, creds["app_key"], "not-the-secret")
    with pytest.raises(sdk_errors.AlibabaCloudException) as raised:
        await asyncio.to_thread(wrong.send_sms, _send_sms("SMS_000000001"))
    assert raised.value.code == "SignatureDoesNotMatch"
    line = await _refusal(daemon, raised.value.request_id)
    assert line["code"] == "SignatureDoesNotMatch", line
    assert (line["account"], line["app_key"]) == (account, creds["app_key"]), line


async def test_send_into_a_closed_pipe_is_not_a_daemon_out_of_reach(
    daemon: DaemonProcess,
) -> None:
    """`smpp-bridge send ... | head`: the reader gone before the answer is printed. The message
    was accepted: exit 0, and no "cannot reach" that has it sent again."""
    creds = await daemon.account("piped")
    env = {
        **os.environ,
        "SMPP_BRIDGE_APP_KEY": creds["app_key"],
        "SMPP_BRIDGE_APP_SECRET": creds["app_secret"],
    }
    read_end, write_end = os.pipe()
    os.close(read_end)  # every write to it fails with EPIPE
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bridge.cli", "send", "--url",
             f"http://127.0.0.1:{daemon.port}", "--to", "+8613800138000", "--text", "hi"],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            timeout=60,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert "cannot reach" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    async with client_for(daemon.port, creds) as client:
        sent = await client.messages()
    assert len(sent["messages"]) == 1, sent


async def test_the_client_fetches_cdrs_and_stats(daemon: DaemonProcess) -> None:
    creds = await daemon.account("reports")
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    async with client_for(daemon.port, creds) as client:
        accepted = await client.send("+8613800138000", text="hi", client_ref="order-1")
        mid = accepted["messages"][0]["id"]

        csv = await client.cdrs(today[:7])
        header, *rows = csv.splitlines()
        assert header.startswith("message_id,batch_id,client_ref,to,"), header
        assert [r.split(",")[:3] for r in rows] == [[mid, accepted["batch_id"], "order-1"]]

        # The days around today's in UTC: the local zone's (Asia/Shanghai) is the next
        # from 16:00 UTC (this test failed every evening, UTC).
        around = [(datetime.now(UTC) + timedelta(days=d)).strftime("%Y-%m-%d") for d in (-1, 1)]
        stats = await client.stats(around[0], around[1], timezone="local")
        assert stats["totals"]["submitted"] == 1, stats
        assert stats["timezone"] != "UTC", stats

        # A query written into the path is signed as the query the server reads.
        _, _, same = await client.request(
            "GET", f"/v1/stats?from={around[0]}&to={around[1]}", query={"timezone": "local"}
        )
        assert (same["timezone"], same["totals"]["submitted"]) == (stats["timezone"], 1), same


async def test_send_to_several_prints_every_refused_recipient(
    daemon: DaemonProcess, tmp_path: Path
) -> None:
    creds = await daemon.account("campaign")
    csv = tmp_path / "dnc.csv"
    csv.write_text("+8613900000001\n+8613900000002\n")
    _cli(daemon, "dnc", "import", "regulator", str(csv))
    env = {
        **os.environ,
        "SMPP_BRIDGE_APP_KEY": creds["app_key"],
        "SMPP_BRIDGE_APP_SECRET": creds["app_secret"],
    }
    to = ["+8613900000001", "+8613800000001", "+8613900000002"]
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bridge.cli", "send", "--url",
         f"http://127.0.0.1:{daemon.port}", "--to", *to, "--text", "hi"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    error = json.loads(done.stderr)["error"]
    assert error["code"] == "RECIPIENT_BLOCKED", error
    refused = [(r["index"], r["to"]) for r in error["details"]["recipients"]]
    assert refused == [(0, to[0]), (2, to[2])], error


async def test_the_message_list_takes_the_local_day(tmp_path: Path) -> None:
    """A zone whose day differs from UTC's now: UTC-12 before noon UTC, UTC+14 after."""
    now = datetime.now(UTC)
    zone, shift = ("Etc/GMT+12", -12) if now.hour < 12 else ("Etc/GMT-14", 14)
    cfg = config_dict(tmp_path, rules={"timezone": zone})
    daemon = DaemonProcess(tmp_path, cfg)
    daemon.start()
    try:
        await daemon.wait_ready(30)
        creds = await daemon.account("shanghai")
        async with client_for(daemon.port, creds) as client:
            sent = await client.send("+8613800138000", text="hi")
            mid = sent["messages"][0]["id"]
            at = datetime.fromisoformat((await client.message(mid))["accepted_at"])
            utc_day = at.strftime("%Y-%m-%d")
            local_day = (at + timedelta(hours=shift)).strftime("%Y-%m-%d")
            assert local_day != utc_day

            async def ids(**query: str) -> list[str]:
                return [m["id"] for m in (await client.messages(**query))["messages"]]

            assert await ids(date=utc_day) == [mid]
            assert await ids(date=local_day, timezone="local") == [mid]
            assert await ids(date=utc_day, timezone="local") == []
            assert await ids(date=local_day, timezone="utc") == []
            with pytest.raises(BridgeError) as raised:
                await client.messages(timezone="local")  # a zone without a day says so
            assert raised.value.code == "INVALID_FIELD", raised.value
    finally:
        daemon.stop()


def test_a_store_command_without_config_says_it_uses_the_demo_store(tmp_path: Path) -> None:
    def account_list(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bridge.cli", "account", "list", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )

    store = tmp_path / "data" / "bridge.db"
    first = account_list()
    assert first.returncode == 0 and json.loads(first.stdout) == [], first
    notice = [ln for ln in first.stderr.splitlines() if "no --config" in ln]
    assert len(notice) == 1 and f"store {store} (not there: made now" in notice[0], first.stderr

    again = account_list()
    notice = [ln for ln in again.stderr.splitlines() if "no --config" in ln]
    assert len(notice) == 1 and f"store {store};" in notice[0], again.stderr

    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(json.dumps(config_dict(tmp_path)))
    given = account_list("-c", str(cfg))
    assert given.returncode == 0 and "no --config" not in given.stderr, given.stderr


async def test_a_send_to_the_admin_port_is_told_it_is_the_wrong_port(tmp_path: Path) -> None:
    cfg = config_dict(tmp_path)
    cfg["server"]["admin_port"] = free_port()
    daemon = DaemonProcess(tmp_path, cfg)
    daemon.start()
    try:
        await daemon.wait_ready(30)
        creds = await daemon.account("operator-test")
        admin = f"http://127.0.0.1:{cfg['server']['admin_port']}"
        async with BridgeClient(admin, creds["app_key"], creds["app_secret"]) as client:
            with pytest.raises(BridgeError) as raised:
                await client.send("+8613800138000", text="hi")
        assert raised.value.status == 404 and raised.value.code == "NOT_FOUND"
        assert "server.admin_port" in raised.value.message, raised.value
        assert "server.port" in raised.value.message.split("server.admin_port")[1]
    finally:
        daemon.stop()


async def test_the_operator_looks_up_a_customers_messages(daemon: DaemonProcess) -> None:
    creds = await daemon.account("support")
    other = await daemon.account("other")
    async with client_for(daemon.port, creds) as client:
        sent = await client.send(["+8613800138001", "+8613800138002"], text="hi")
        mids = [m["id"] for m in sent["messages"]]
        for mid in mids:
            await final_status(client, mid)
        theirs = await client.message(mids[0])
    async with client_for(daemon.port, other) as client:
        foreign = (await client.send("+8613800138003", text="hi"))["messages"][0]["id"]

    base = f"http://127.0.0.1:{daemon.port}/admin/accounts/support/messages"
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with aiohttp.ClientSession(headers=auth) as http:
        async with http.get(f"{base}/{mids[0]}") as r:
            assert r.status == 200, await r.text()
            assert await r.json() == theirs  # what the customer sees, parts and all
        async with http.get(base, params={"to": "+8613800138002"}) as r:
            assert [m["id"] for m in (await r.json())["messages"]] == [mids[1]]
        async with http.get(f"{base}/{foreign}") as r:  # another account's: not found
            assert r.status == 404 and (await r.json())["error"]["code"] == "NOT_FOUND"

    shown = _cli(daemon, "message", "show", "support", mids[0])
    assert shown == theirs
    listed = _cli(daemon, "message", "list", "support", "--to", "+8613800138001")
    assert [m["id"] for m in listed["messages"]] == [mids[0]], listed
    assert not _cli_audit_actions(daemon, "message")  # a read: not in the audit trail


def _cli_audit_actions(daemon: DaemonProcess, command: str) -> list[str]:
    entries = _cli(daemon, "audit", "list", "--limit", "1000")
    return [e["action"] for e in entries if e["action"].startswith(f"cli {command} ")]
