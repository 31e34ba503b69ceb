"""Webhook outbox sender: status reports and MO pushed to the customer's callback URLs.

The outbox row is written in the same transaction as the status change, so a report can never be
lost between the two. Delivery is at-least-once with a stable webhook id per report (receivers
de-duplicate on it). Any 2xx is success; network errors, 408, 429 and 5xx are retried on a
jittered schedule; other 4xx and exhausted retries go to the dead-letter list for replay.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import aiohttp

from bridge import jsonio
from bridge.accounts import AccountService
from bridge.api import signing
from bridge.api.views import iso, status_report
from bridge.compat import aliyun_reports
from bridge.config import WebhooksConfig
from bridge.metrics import Metrics
from bridge.store.base import Store
from bridge.store.models import WebhookJob

log = logging.getLogger("bridge.webhooks")

RETRYABLE = frozenset({408, 429})


def next_delay_s(attempts: int, schedule: tuple[int, ...], rng: random.Random) -> float:
    """Delay before retry number `attempts` (1-based): the schedule, then its last step, ±10%."""
    base = schedule[min(attempts - 1, len(schedule) - 1)] if schedule else 3600
    return base * rng.uniform(0.9, 1.1)


def is_retryable(status: int | None) -> bool:
    return status is None or status in RETRYABLE or status >= 500


class WebhookSender:
    def __init__(
        self,
        store: Store,
        accounts: AccountService,
        config: WebhooksConfig,
        *,
        clock: Callable[[], float] = time.time,
        poll_s: float = 0.2,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.accounts = accounts
        self.config = config
        self.clock = clock
        self.poll_s = poll_s
        self.rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self.delivered = 0
        self.failed_attempts = 0
        self.dead = 0
        self.tz = "Asia/Shanghai"  # local times in Alibaba-shaped reports (rules.timezone)

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Claim due reports and deliver each POST as its own task, so a slow or hanging
        callback of one customer never holds back another's (at most `concurrency` at once)."""
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        connector = aiohttp.TCPConnector(limit=self.config.concurrency)
        self._session = aiohttp.ClientSession(timeout=timeout, connector=connector)
        sem = asyncio.Semaphore(self.config.concurrency)
        running: set[asyncio.Task[None]] = set()
        try:
            while not self._stopping:
                free = self.config.concurrency - len(running)
                if free <= 0:
                    await asyncio.wait(
                        running, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED
                    )
                    continue
                now_ms = int(self.clock() * 1000)
                lease_ms = int(self.config.timeout_s * 1000) * 3 + 10_000
                jobs = await self.store.claim_webhooks(
                    now_ms, min(self.config.batch_max * free, self.config.batch_max * 10), lease_ms
                )
                if not jobs:
                    self._wake.clear()
                    try:
                        await asyncio.wait_for(self._wake.wait(), self.poll_s)
                    except TimeoutError:
                        pass
                    continue
                groups: dict[tuple[str, str, str], list[WebhookJob]] = defaultdict(list)
                for job in jobs:
                    groups[(job.account_id, job.url, job.kind)].append(job)
                loop = asyncio.get_running_loop()
                for group in groups.values():
                    for i in range(0, len(group), self.config.batch_max):
                        chunk = group[i : i + self.config.batch_max]
                        task = loop.create_task(self._bounded(sem, chunk))
                        running.add(task)
                        task.add_done_callback(running.discard)
        finally:
            if running:
                await asyncio.wait(running, timeout=self.config.timeout_s + 1)
            await self._session.close()

    async def _bounded(self, sem: asyncio.Semaphore, jobs: list[WebhookJob]) -> None:
        async with sem:
            try:
                await self._deliver(jobs)
            except Exception:
                log.exception("webhook delivery crashed for %d reports", len(jobs))

    async def render(self, job: WebhookJob) -> dict[str, Any] | None:
        if job.kind == "status":
            account = await self.store.get_account(job.account_id)
            record = await self.store.get_message(job.account_id, job.payload)
            if record is None or account is None:
                return None
            if account.report_format == "aliyun":
                return aliyun_reports.sms_report(record, self.tz)
            item = status_report(record)
        elif job.kind == "mo":
            mo = await self.store.get_mo(job.payload)
            if mo is None:
                return None
            account = await self.store.get_account(job.account_id)
            if account is not None and account.report_format == "aliyun":
                return aliyun_reports.sms_up(mo, self.tz)
            item = {
                "type": "message.inbound",
                "mo_id": mo.id,
                "from": mo.source,
                "to": mo.destination,
                "text": mo.text,
                "smsc": mo.smsc,
                "received_at": iso(mo.received_at),
            }
        else:
            item = jsonio.loads(job.payload)
        item["webhook_id"] = job.webhook_id
        return item

    async def _deliver(self, jobs: list[WebhookJob]) -> None:
        now_ms = int(self.clock() * 1000)
        account = await self.store.get_account(jobs[0].account_id)
        url = jobs[0].url
        kind = jobs[0].kind
        if account is None or not url:
            await self.store.webhook_retry([j.id for j in jobs], now_ms, "no callback URL", True)
            self.dead += len(jobs)
            self._count(kind, "dead", len(jobs))
            return
        items = []
        live = []
        for job in jobs:
            item = await self.render(job)
            if item is None:  # the record is gone (erased account): nothing to report
                await self.store.webhook_done([job.id], now_ms)
                continue
            items.append(item)
            live.append(job)
        if not live:
            return
        body = jsonio.dumps(items)
        ids = ",".join(j.webhook_id for j in live)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "smpp-bridge-webhooks/1",
            "X-Bridge-Webhook-Id": ids if len(live) == 1 else _batch_id(ids),
            signing.WEBHOOK_HEADER: signing.webhook_signature(
                self.accounts.webhook_secret(account), body, int(self.clock())
            ),
        }
        status: int | None = None
        error = ""
        assert self._session is not None
        try:
            async with self._session.post(url, data=body, headers=headers) as resp:
                status = resp.status
                await resp.read()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        now_ms = int(self.clock() * 1000)
        if status is not None and 200 <= status < 300:
            await self.store.webhook_done([j.id for j in live], now_ms)
            self.delivered += len(live)
            self._count(kind, "delivered", len(live))
            return
        self.failed_attempts += len(live)
        error = error or f"HTTP {status}"
        attempts = max(j.attempts for j in live) + 1
        oldest = min(j.created_at for j in live) if live else now_ms
        give_up_at = oldest + int(self.config.retry_for_hours * 3_600_000)
        delay_ms = int(next_delay_s(attempts, tuple(self.config.retry_schedule_s), self.rng) * 1000)
        dead = not is_retryable(status) or now_ms + delay_ms > give_up_at
        self._count(kind, "dead" if dead else "retry", len(live))
        about = {
            "account": account.id,
            "kind": kind,
            "url_host": _host(url),
            "reports": len(live),
            "attempt": attempts,
            "error": error,
        }
        if kind == "status":  # the payload of a status report is its message id
            about["message_ids"] = [j.payload for j in live[:20]]
        if dead:
            self.dead += len(live)
            log.warning("webhook dead-lettered", extra=about)
        else:
            log.info("webhook retry", extra=about)
        await self.store.webhook_retry([j.id for j in live], now_ms + delay_ms, error, dead)

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def _count(self, kind: str, outcome: str, n: int) -> None:
        if self.metrics is not None:
            self.metrics.webhook(kind, outcome, n)


def _batch_id(ids: str) -> str:
    return "whb_" + hashlib.sha256(ids.encode()).hexdigest()[:32]


def _host(url: str) -> str:
    from urllib.parse import urlsplit

    return urlsplit(url).hostname or "?"
