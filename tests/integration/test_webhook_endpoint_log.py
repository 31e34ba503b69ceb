"""What the webhook sender logs while a customer's endpoint is down (session 47): the start, a
summary per interval (shortened here from a minute), the recovery; nothing per POST above DEBUG.
A real sender, a real SQLite store, a real HTTP endpoint answering 500 and then 204."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from bridge.accounts import AccountService
from bridge.config import WebhooksConfig
from bridge.crypto import Sealer
from bridge.domain.endpoint_watch import EndpointWatch
from bridge.metrics import Metrics
from bridge.pipeline.webhooks import WebhookSender
from bridge.store.sqlite import SqliteStore
from tests.e2e.harness import wait_until


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "hooks.db")
    await s.open()
    yield s
    await s.close()


async def test_a_failing_endpoint_logs_its_start_a_summary_and_its_recovery(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="bridge.webhooks")
    answers = {"fail": True, "failed_posts": 0, "delivered": 0}

    async def hook(request: web.Request) -> web.Response:
        items = json.loads(await request.read())
        if answers["fail"]:
            answers["failed_posts"] += 1
            return web.Response(status=500)
        answers["delivered"] += len(items)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    now = int(time.time() * 1000)
    accounts = AccountService(store, Sealer(os.urandom(32)))
    acc = (await accounts.create("acme", {}, now)).account.id
    url = f"http://127.0.0.1:{port}/hook?token=query-secret-1234"
    await store.update_account(acc, {"status_callback_url": url}, now)
    metrics = Metrics()
    sender = WebhookSender(
        store,
        accounts,
        WebhooksConfig(retry_schedule_s=(1,), timeout_s=2, batch_max=2),
        poll_s=0.05,
        metrics=metrics,
    )
    sender.endpoints = EndpointWatch(every_ms=1500)
    for i in range(5):  # three POSTs of up to 2 reports each time they are tried
        await store.enqueue_event(acc, "event", json.dumps({"event": "probe"}), f"ev_{i}", now)
    task = asyncio.create_task(sender.run())
    try:
        await wait_until(lambda: sender.failed_attempts >= 5 * 4, 20, 0.05)  # 4 tries each
        answers["fail"] = False
        await wait_until(lambda: answers["delivered"] >= 5, 10, 0.05)
        await asyncio.sleep(0.3)
    finally:
        await sender.stop()
        await asyncio.wait_for(task, 10)
        await runner.cleanup()
    assert answers["delivered"] == 5 and answers["failed_posts"] >= 12

    lines = [r for r in caplog.records if r.name == "bridge.webhooks" and r.levelno >= logging.INFO]
    said = [r.getMessage() for r in lines]
    assert said[0] == "webhook endpoint failing" and lines[0].levelname == "WARNING", said
    assert said[-1] == "webhook endpoint recovered", said
    summaries = [r for r in lines if r.getMessage() == "webhook endpoint still failing"]
    assert 1 <= len(summaries) == len(lines) - 2, said  # 3+ s down, a summary per 1.5 s
    assert sum(r.failed_posts for r in summaries) + 1 <= answers["failed_posts"]
    assert all(r.url_host == "127.0.0.1" and r.account == acc for r in lines)
    assert lines[0].error == "HTTP 500" and lines[0].next.startswith("retry at ")
    # said at the first POST that went through: the reports of the others still waiting
    assert lines[-1].dead_lettered == 0 and lines[-1].waiting in (3, 4)
    assert "query-secret" not in caplog.text
    # every POST's own line is still there for debugging, at DEBUG
    per_post = [r for r in caplog.records if r.getMessage() == "webhook retry"]
    assert len(per_post) == answers["failed_posts"] and {r.levelname for r in per_post} == {"DEBUG"}
    # the deliveries counter still counts each report of each POST
    text = metrics.exposition().decode()
    assert 'smpp_bridge_webhook_deliveries_total{kind="event",outcome="delivered"} 5.0' in text
    retried = 'smpp_bridge_webhook_deliveries_total{kind="event",outcome="retry"} '
    assert f"{retried}{float(sender.failed_attempts)}" in text
