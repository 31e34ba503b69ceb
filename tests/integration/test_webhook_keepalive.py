"""`webhooks.keepalive_s`: the sender's idle connection to a customer's endpoint is closed after
that long (aiohttp sweeps its pool every keepalive period, so within about twice it), and kept
for the next POST until then. Why a setting: a receiver whose own idle timeout is shorter closes
the connection as the next POST goes out on it, and that POST fails (a retry later); and a test
that waits for the pool to empty (the leak soak) no longer waits up to 30 s."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from aiohttp import web

from bridge.accounts import AccountService
from bridge.config import WebhooksConfig
from bridge.crypto import Sealer
from bridge.pipeline.webhooks import WebhookSender
from bridge.store.sqlite import SqliteStore


async def _closed_after(tmp_path: Path, keepalive_s: float, watch_s: float) -> float | None:
    """Seconds from the report's delivery until the receiver saw its connection closed, or
    None if it was still open after `watch_s`."""
    transports: list[asyncio.BaseTransport] = []

    async def hook(request: web.Request) -> web.Response:
        await request.read()
        assert request.transport is not None
        transports.append(request.transport)
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    store = SqliteStore(tmp_path / "bridge.db")
    await store.open()
    try:
        loop = asyncio.get_running_loop()
        now_ms = int(time.time() * 1000)  # the sender's default clock
        accounts = AccountService(store, Sealer(os.urandom(32)))
        creds = await accounts.create(
            "keepalive", {"status_callback_url": f"http://127.0.0.1:{port}/hook"}, now_ms
        )
        await store.enqueue_event(
            creds.account.id, "event", json.dumps({"event": "test"}), "ev_keepalive", now_ms
        )
        sender = WebhookSender(
            store, accounts, WebhooksConfig(keepalive_s=keepalive_s), poll_s=0.02
        )
        task = asyncio.create_task(sender.run())
        try:
            async with asyncio.timeout(10):
                while not transports:  # noqa: ASYNC110 (the receiver's first POST)
                    await asyncio.sleep(0.02)
            delivered = loop.time()
            while loop.time() - delivered < watch_s:
                if transports[0].is_closing():
                    return loop.time() - delivered
                await asyncio.sleep(0.05)
            return None
        finally:
            await sender.stop()
            await task
    finally:
        await store.close()
        await runner.cleanup()


async def test_an_idle_webhook_connection_closes_after_keepalive_s(tmp_path: Path) -> None:
    closed = await _closed_after(tmp_path, keepalive_s=1.0, watch_s=6.0)
    assert closed is not None, "the idle connection was still open 6 s after its POST"
    assert 0.5 <= closed <= 3.5, closed


async def test_the_default_keeps_an_idle_webhook_connection_for_the_next_post(
    tmp_path: Path,
) -> None:
    assert WebhooksConfig().keepalive_s == 15.0
    assert await _closed_after(tmp_path, keepalive_s=15.0, watch_s=3.0) is None
