"""The client SDK (bridge/client.py) and the `smpp-bridge send` CLI against the real server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bridge.client import BridgeClient, BridgeError

CN = "+8613800138000"
CN2 = "+8613900139000"


async def test_sdk_round_trip(api_server, make_account, sdk_client):
    creds = await make_account(default_country="CN")
    client = sdk_client(creds)
    sent = await client.send(
        [CN, "139 0013 9000"], text="hello from the SDK", sign_name="Acme", client_ref="sdk-1"
    )
    assert sent["count"] == 2
    assert [m["to"] for m in sent["messages"]] == [CN, CN2]
    mid = sent["messages"][0]["id"]

    message = await client.message(mid)
    assert (message["id"], message["text"], message["client_ref"]) == (
        mid,
        "【Acme】hello from the SDK",
        "sdk-1",
    )
    assert len(message["parts"]) == 1

    # A "+" in a query value must survive signing on both sides (sent as %2B).
    page = await client.messages(to=CN, limit=5, status="queued")
    assert [m["id"] for m in page["messages"]] == [mid]
    everything = await client.messages()
    assert len(everything["messages"]) == 2

    preview = await client.preview("hello", sign_name="Acme")
    assert preview["text"] == "【Acme】hello" and preview["encoding"] == "ucs2"
    account = await client.account()
    assert (account["id"], account["app_key"]) == (creds.account_id, creds.app_key)


async def test_sdk_errors_carry_status_code_and_request_id(api_server, make_account, sdk_client):
    creds = await make_account()
    client = sdk_client(creds)
    with pytest.raises(BridgeError) as err:
        await client.send("12345", text="x")
    assert (err.value.status, err.value.code) == (400, "INVALID_NUMBER")
    assert err.value.request_id and err.value.request_id.startswith("req_")
    assert "to:" in err.value.message
    with pytest.raises(BridgeError) as err:
        await client.message("msg_" + "0" * 26)
    assert (err.value.status, err.value.code) == (404, "NOT_FOUND")

    forged = BridgeClient(api_server.url, creds.app_key, "wrong-secret")
    try:
        with pytest.raises(BridgeError) as err:
            await forged.account()
        assert (err.value.status, err.value.code) == (401, "SIGNATURE_MISMATCH")
    finally:
        await forged.close()


async def test_sdk_retries_queue_full_with_the_same_key(api_server, make_account, sdk_client):
    creds = await make_account()
    client = sdk_client(creds, max_retry_delay_s=0.2)
    ctx = api_server.ctx
    ctx.queue_depth = api_server.config.store.max_queued_segments
    observer = api_server.observer
    task = asyncio.create_task(client.send(CN, text="retried", idempotency_key="sdk-retry-1"))
    async with asyncio.timeout(10):
        await observer.wait_for(lambda s: s.path == "/v1/messages" and s.status == 503)
    ctx.queue_depth = 0  # the backlog drained while the client waited
    result = await asyncio.wait_for(task, 10)
    assert result["count"] == 1
    attempts = [s for s in observer.served if s.path == "/v1/messages"]
    assert [s.status for s in attempts] == [503, 202]
    assert {s.idempotency_key for s in attempts} == {"sdk-retry-1"}
    stored = await api_server.store.list_messages(creds.account_id, limit=10)
    assert [m.id for m in stored] == [result["messages"][0]["id"]]


async def test_sdk_generates_a_key_and_keeps_it_across_retries(
    api_server, make_account, sdk_client
):
    creds = await make_account()
    client = sdk_client(creds, max_retry_delay_s=0.05)
    api_server.ctx.queue_depth = api_server.config.store.max_queued_segments
    task = asyncio.create_task(client.send(CN, text="auto key"))
    async with asyncio.timeout(10):
        await api_server.observer.wait_for(lambda s: s.status == 503)
    api_server.ctx.queue_depth = 0
    await asyncio.wait_for(task, 10)
    keys = {s.idempotency_key for s in api_server.observer.served if s.path == "/v1/messages"}
    assert len(keys) == 1 and None not in keys


async def test_sdk_sends_keys_and_nonces_that_sort_by_time(api_server, make_account, sdk_client):
    # ULIDs (README, "Signing"): the server keeps nonces by (app key, nonce) and Idempotency-Keys
    # by (account, key), in b-trees where keys that sort by time are appended (a commit's on a
    # page or two) and random ones each dirty a page of their own.
    creds = await make_account()
    client = sdk_client(creds)
    for i in range(12):
        await client.send(CN, text=f"ordered {i}")
        await asyncio.sleep(0.002)  # the next millisecond: within one, the order is random
    keys = [s.idempotency_key for s in api_server.observer.served if s.path == "/v1/messages"]
    assert len(keys) == 12 and keys == sorted(keys), keys
    with contextlib.closing(sqlite3.connect(api_server.store.path)) as db:
        nonces = [  # as the server recorded them, in the order it did (their expiry)
            n
            for (n,) in db.execute(
                "SELECT nonce FROM nonces WHERE key_id=? ORDER BY expires_at", (creds.app_key,)
            )
        ]
    assert len(nonces) >= 12 and nonces == sorted(nonces), nonces
    assert len(set(nonces)) == len(nonces)


async def test_sdk_gives_up_after_max_retries(api_server, make_account, sdk_client):
    creds = await make_account()
    client = sdk_client(creds, max_retries=2, max_retry_delay_s=0.01)
    api_server.ctx.queue_depth = api_server.config.store.max_queued_segments
    with pytest.raises(BridgeError) as err:
        await client.send(CN, text="never")
    assert (err.value.status, err.value.code) == (503, "QUEUE_FULL")
    assert err.value.request_id.startswith("req_")
    assert [s.status for s in api_server.observer.served] == [503, 503, 503]
    assert await api_server.store.list_messages(creds.account_id, limit=10) == []


async def test_sdk_send_twice_with_one_key_replays(api_server, make_account, sdk_client):
    creds = await make_account()
    client = sdk_client(creds)
    first = await client.send(CN, text="lost response", idempotency_key="again-1")
    second = await client.send(CN, text="lost response", idempotency_key="again-1")
    assert first == second
    assert len(await api_server.store.list_messages(creds.account_id, limit=10)) == 1


async def test_sdk_error_from_a_non_json_answer(api_server, make_account):
    """An HTTP-level refusal with a text body (a proxy, or aiohttp's own) is still a BridgeError."""
    creds = await make_account()
    client = BridgeClient(api_server.url, creds.app_key, creds.app_secret, max_retries=0)
    try:
        with pytest.raises(BridgeError) as err:
            # A request line longer than the server's max_line_size is refused by the HTTP layer
            # before our application sees it.
            await client.messages(to="1" * 20_000)
        assert err.value.status in (400, 414, 431)
        assert err.value.code == f"HTTP_{err.value.status}"
    finally:
        await client.close()


# -- the CLI -------------------------------------------------------------------------------------


async def _cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, Any, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def _env(creds: Any) -> dict[str, str]:
    return {"SMPP_BRIDGE_APP_KEY": creds.app_key, "SMPP_BRIDGE_APP_SECRET": creds.app_secret}


async def test_cli_send_success(api_server, make_account):
    creds = await make_account()
    code, out, err = await _cli(
        "send",
        "--url",
        api_server.url,
        "--to",
        CN,
        CN2,
        "--text",
        "from the CLI",
        "--sign",
        "Acme",
        "--client-ref",
        "cli-1",
        env=_env(creds),
    )
    assert code == 0, err
    result = json.loads(out)
    assert result["count"] == 2
    assert [m["to"] for m in result["messages"]] == [CN, CN2]
    assert all(m["client_ref"] == "cli-1" for m in result["messages"])
    stored = await api_server.store.get_message(creds.account_id, result["messages"][0]["id"])
    assert stored is not None and stored.text == "【Acme】from the CLI"

    code, out, err = await _cli(
        "send", "--url", api_server.url, "--status", result["messages"][0]["id"], env=_env(creds)
    )
    assert code == 0, err
    assert json.loads(out)["id"] == result["messages"][0]["id"]


async def test_cli_send_refused(api_server, make_account):
    creds = await make_account(raw_text=False)
    code, out, err = await _cli(
        "send", "--url", api_server.url, "--to", CN, "--text", "not allowed", env=_env(creds)
    )
    assert code == 1
    assert out == ""
    error = json.loads(err)["error"]
    assert (error["status"], error["code"]) == (403, "RAW_TEXT_NOT_ALLOWED")
    assert error["request_id"].startswith("req_")
    assert "Traceback" not in err


async def test_cli_send_with_a_credentials_file(api_server, make_account, tmp_path: Path):
    creds = await make_account()
    path = tmp_path / "creds.json"
    path.write_text(json.dumps({"app_key": creds.app_key, "app_secret": creds.app_secret}))
    code, out, err = await _cli(
        "send",
        "--url",
        api_server.url,
        "--credentials",
        str(path),
        "--to",
        CN,
        "--text",
        "f",
        env={"SMPP_BRIDGE_APP_KEY": "", "SMPP_BRIDGE_APP_SECRET": ""},
    )
    assert code == 0, err
    assert json.loads(out)["count"] == 1


async def test_cli_send_without_credentials(api_server):
    code, out, err = await _cli(
        "send",
        "--url",
        api_server.url,
        "--to",
        CN,
        "--text",
        "x",
        env={"SMPP_BRIDGE_APP_KEY": "", "SMPP_BRIDGE_APP_SECRET": ""},
    )
    assert code == 1 and out == ""
    assert "no credentials" in err and "Traceback" not in err


async def test_the_sdk_covers_signs_templates_recipients_and_money(
    api_server, make_account, sdk_client
):
    creds = await make_account(raw_text=False, ready=False)
    client = sdk_client(creds)
    assert (await client.add_sign("Globex"))["status"] == "pending"
    assert (await client.sign("Globex"))["name"] == "Globex"
    t = await client.add_template("verification", "login", "Code ${code}")
    assert (await client.template(t["code"]))["status"] == "pending"
    pv = await client.preview_template(t["code"], {"code": "42"}, sign_name="Globex")
    assert pv["text"] == "【Globex】Code 42"
    assert (await client.opt_out("+8613800138000"))["added"] == 1
    assert (await client.opt_in("+8613800138000"))["removed"] is True  # "+" in a signed path
    assert (await client.erase_recipient("+8613800138000"))["messages_erased"] == 0
    assert (await client.balance())["cash_micro"] == 0
    assert (await client.bill("2026-11"))["status"] == "open"


async def test_sdk_retries_a_template_whose_answer_was_lost_and_files_it_once(
    api_server, make_account
):
    """The server filed the template, the answer never reached the client (the connection
    dropped on the way back): the SDK retries with the key it sent, and gets the first answer
    (bridge/api/idempotency.py) instead of filing a second template."""
    creds = await make_account()
    dropped: list[bytes] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", api_server.server.port)
        if not dropped:  # the first connection: its request goes through, its answer is lost
            request = await client_r.read(65536)
            server_w.write(request)
            dropped.append(await server_r.read(65536))
            server_w.close()
            client_w.close()
            return
        await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))

    proxy = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = proxy.sockets[0].getsockname()[1]
    client = BridgeClient(f"http://127.0.0.1:{port}", creds.app_key, creds.app_secret)
    try:
        made = await client.add_template("notification", "ship", "Order ${order} has shipped.")
    finally:
        await client.close()
        proxy.close()
    assert dropped and dropped[0].startswith(b"HTTP/1.1 201")
    listed = await api_server.store.list_templates(account_id=creds.account_id)
    assert [t.code for t in listed] == [made["code"]]


async def test_sdk_opens_at_most_max_connections_for_a_burst() -> None:
    """A burst of 100 requests from one client: at most `max_connections` (64, the README's
    recommended `server.max_connections_per_ip`) connections reach the server, where aiohttp's
    own default opened 100 and had 72 refused at that cap."""
    peers: set[object] = set()
    open_now = 0
    most = 0

    async def slow(request: web.Request) -> web.Response:
        nonlocal open_now, most
        peers.add(request.transport.get_extra_info("peername") if request.transport else None)
        open_now += 1
        most = max(most, open_now)
        await asyncio.sleep(0.05)
        open_now -= 1
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/v1/ping", slow)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        for limit, want in ((None, 64), (10, 10)):
            peers.clear()
            most = 0
            kw = {} if limit is None else {"max_connections": limit}
            async with BridgeClient(f"http://127.0.0.1:{port}", "ak_x", "secret", **kw) as c:
                answers = await asyncio.gather(*(c.request("GET", "/v1/ping") for _ in range(100)))
            assert all(status == 200 for status, _h, _b in answers)
            assert len(peers) == want and most == want, (limit, len(peers), most)
    finally:
        await runner.cleanup()
