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
import socket
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import aiohttp

from bridge import callback_urls, jsonio, logs
from bridge.accounts import AccountService
from bridge.aio import idle_wait_s, wait_event
from bridge.api import signing
from bridge.api.views import mo_report, status_report
from bridge.compat import aliyun_reports
from bridge.config import WebhooksConfig
from bridge.crypto import MasterKeyError
from bridge.domain import senders
from bridge.domain.endpoint_watch import EndpointWatch, Line
from bridge.domain.lifecycle import MSG_FINAL
from bridge.metrics import Metrics
from bridge.store.base import Store, is_unavailable
from bridge.store.models import WebhookJob

log = logging.getLogger("bridge.webhooks")

RETRYABLE = frozenset({408, 429})


def next_delay_s(attempts: int, schedule: tuple[int, ...], rng: random.Random) -> float:
    """Delay before retry number `attempts` (1-based): the schedule, then its last step, ±10%."""
    base = schedule[min(attempts - 1, len(schedule) - 1)] if schedule else 3600
    return base * rng.uniform(0.9, 1.1)


def is_retryable(status: int | None) -> bool:
    return status is None or status in RETRYABLE or status >= 500


# How much of a receiver's answer is read (only its status is used).
ANSWER_READ_BYTES = 65_536


class _Unusable(Exception):
    """A callback URL no POST may go to (bridge/callback_urls.py)."""


class _OnlyForbidden(OSError):
    """A name that resolves to nothing but link-local or metadata addresses: never usable, so
    its reports are dead-lettered at once (as a plain DNS error they were retried for 48 h)."""


class _SafeResolver(aiohttp.abc.AbstractResolver):
    """The default resolver, without link-local or cloud metadata answers
    (callback_urls.forbidden): a customer's DNS name pointing at the metadata service
    (169.254.169.254, 100.100.100.200) would get signed reports otherwise."""

    def __init__(self) -> None:
        self._inner = aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_UNSPEC
    ) -> list[Any]:
        found = await self._inner.resolve(host, port, family)
        kept = [r for r in found if not callback_urls.forbidden(str(r["host"]))]
        if not kept:
            raise _OnlyForbidden(f"{host} resolves only to link-local or metadata addresses")
        return kept

    async def close(self) -> None:
        await self._inner.close()


def _forbidden_target(exc: BaseException) -> bool:
    """aiohttp wraps the resolver's error (ClientConnectorDNSError.os_error, or as the cause)."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, _OnlyForbidden):
            return True
        stack += [getattr(e, "os_error", None), e.__cause__, e.__context__]
    return False


class WebhookSender:
    def __init__(
        self,
        store: Store,
        accounts: AccountService,
        config: WebhooksConfig,
        *,
        clock: Callable[[], float] = time.time,
        poll_s: float = 0.2,
        idle_max_s: float = 1.0,
        gather_s: float = 0.05,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        instance: str | None = None,
    ) -> None:
        self.store = store
        self.instance = instance  # the leases' holder, so a restart can give back a dead one's
        self.metrics = metrics
        self.accounts = accounts
        self.config = config
        self.clock = clock
        self.poll_s = poll_s
        # While claims find nothing and nothing wakes it, the poll doubles up to this: an idle
        # owner claimed 5 times a second for ever. Reports queued here wake it; a retry or a
        # replay falls due at most this late.
        self.idle_max_s = idle_max_s
        self._empty_claims = 0
        # Woken (receipts queued reports), the sender waits this long before it claims, so
        # that a POST carries what a burst of receipts queued rather than each batch's few.
        self.gather_s = gather_s
        self.rng = rng or random.Random()
        self._session: aiohttp.ClientSession | None = None
        self._failures = logs.Failures(log, is_unavailable)
        self._unopened = logs.Throttled(log)
        # One line when a callback endpoint starts failing, a summary a minute, one when it
        # recovers; the per-POST lines are DEBUG (one customer's outage filled the log).
        self.endpoints = EndpointWatch()
        self.leased: set[int] = set()  # outbox ids with a POST in flight here
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
        callback of one customer never holds back another's.

        Only what can start now is kept from a claim: at most `concurrency` POSTs in flight, and
        at most a quarter of them (at least one) for one account, whatever its URLs and kinds,
        so one hanging customer cannot take every sender; the rest is handed back at once, due
        behind the reports that were due before it. (Chunks used to queue for a semaphore while
        their lease ran out, and another sender then POSTed the same reports.)"""
        # bounded by the tasks started, below; names resolving to link-local addresses refused
        connector = aiohttp.TCPConnector(
            limit=0, resolver=_SafeResolver(), keepalive_timeout=self.config.keepalive_s
        )
        self._session = aiohttp.ClientSession(connector=connector)
        running: dict[asyncio.Task[None], tuple[str, str, str]] = {}
        try:
            while not self._stopping:
                free = self.config.concurrency - len(running)
                if free <= 0:
                    await asyncio.wait(
                        running, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED
                    )
                    continue
                # Cleared before the claim, not after an empty one: a wake that comes while the
                # claim runs then ends the wait below at once instead of being lost.
                self._wake.clear()
                now_ms = int(self.clock() * 1000)
                cap = max(1, self.config.concurrency // 4)
                busy = Counter(running.values())
                # Accounts at their cap are left out of the claim, so a customer with a backlog
                # does not fill every claim with reports that cannot start.
                capped = sorted(a for a, n in _per_account(busy).items() if n >= cap)
                try:
                    jobs = await self.store.claim_webhooks(
                        now_ms,
                        min(self.config.batch_max * free, self.config.batch_max * 10),
                        self._lease_ms(),
                        capped,
                        holder=self.instance,
                    )
                except Exception as exc:  # a database hiccup must not end webhook delivery
                    self._failures.failed("claiming webhooks", exc)
                    await asyncio.sleep(max(self.poll_s, 1.0))
                    continue
                self._failures.ok("claiming webhooks")
                if not jobs:
                    wait = idle_wait_s(self.poll_s, self.idle_max_s, self._empty_claims)
                    if await wait_event(self._wake, wait):
                        self._empty_claims = 0
                        await asyncio.sleep(self.gather_s)
                    else:
                        self._empty_claims += 1
                    continue
                self._empty_claims = 0
                # Leased here from now on, not from when their task starts: a clock shift
                # running meanwhile must not move the lease their results are written under.
                self.leased.update(j.id for j in jobs)
                chunks, spare = plan_chunks(jobs, self.config.batch_max, free, busy, cap)
                loop = asyncio.get_running_loop()
                for dest, chunk in chunks:
                    task = loop.create_task(self._guarded(chunk))
                    running[task] = dest
                    task.add_done_callback(lambda t: running.pop(t, None))
                if spare:
                    try:
                        await self._release(spare, now_ms)
                    finally:
                        self.leased.difference_update(j.id for j in spare)
                if not chunks and running:  # every due report's account is at its cap
                    await asyncio.wait(
                        running, timeout=self.poll_s, return_when=asyncio.FIRST_COMPLETED
                    )
                elif not chunks:  # nothing startable and nothing to wait for (asyncio.wait
                    await asyncio.sleep(self.poll_s)  # of an empty set raises, ending the sender)
        finally:
            if running:
                await asyncio.wait(running, timeout=self.config.timeout_s + 1)
            await self._session.close()

    def _lease_ms(self) -> int:
        # A POST lasts at most timeout_s; the lease outlives it with room for the bookkeeping.
        return int(self.config.timeout_s * 1000) * 3 + 10_000

    async def _release(self, jobs: list[WebhookJob], now_ms: int) -> None:
        by_lease: dict[int, list[int]] = defaultdict(list)
        for j in jobs:
            if j.lease is not None:
                by_lease[j.lease].append(j.id)
        for lease, ids in by_lease.items():
            try:
                await self.store.webhook_release(ids, lease, now_ms)
            except Exception as exc:  # their lease runs out instead
                self._failures.failed("handing back webhooks", exc)

    async def _guarded(self, jobs: list[WebhookJob]) -> None:
        ids = [j.id for j in jobs]
        self.leased.update(ids)  # already, from the claim; again for a direct call
        try:
            await self._deliver(jobs)
            self._failures.ok("delivering webhooks")
        except Exception as exc:
            # A store outage: a line per 10 s, not a traceback per POST; the reports are handed
            # back once the store answers (due at once, not after their lease). Any other
            # failure is ours: its traceback, and the lease runs out (no hot loop on a bug).
            self._failures.failed("delivering webhooks", exc)
            lease = jobs[0].lease
            if is_unavailable(exc) and lease is not None:
                now_ms = int(self.clock() * 1000)
                try:
                    await self._book(partial(self.store.webhook_release, ids, lease, now_ms), lease)
                except Exception as again:  # their lease runs out instead
                    self._failures.failed("handing back webhooks", again)
        finally:
            self.leased.difference_update(ids)

    async def _book(self, write: Callable[[], Awaitable[None]], lease: int | None) -> None:
        """A sender's write about reports it holds (delivered, retry, hand back), tried again
        while the store is unavailable and the lease holds: once it ran out, another sender may
        have the reports (and the write would match nothing). A store blip under a delivered
        POST used to cost a second POST of its reports when their lease ran out."""
        delays = iter((0.05, 0.2, 0.5, 1.0, 2.0, 5.0))
        while True:
            try:
                await write()
                return
            except Exception as exc:
                delay = next(delays, 5.0)
                if not is_unavailable(exc) or self._stopping or lease is None:
                    raise
                if self.clock() * 1000 + delay * 1000 >= lease:
                    raise
                await asyncio.sleep(delay)

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
                return aliyun_reports.sms_up(
                    mo,
                    self.tz,
                    sign_name=mo.sign_name,
                    extension_base=senders.extension_base(account.senders),
                )
            item = mo_report(mo)
        elif job.webhook_id.endswith(_SENT_SUFFIX) and job.webhook_id.startswith("st_"):
            rendered = await self._sent_report(job)
            if rendered is None:
                return None
            item = rendered
        else:
            item = jsonio.loads(job.payload)
        item["webhook_id"] = job.webhook_id
        return item

    async def _sent_report(self, job: WebhookJob) -> dict[str, Any] | None:
        """A "sent" report (webhooks.send_intermediate), rendered when it is pushed, not from a
        snapshot taken when it was queued: an erased number stays erased, the fields are the
        status report's, and one whose message is final by now is not pushed (retried behind
        the final report it reached receivers after it, who then showed "sent"). Alibaba's
        reports have no intermediate state: none for an account with that format."""
        mid = job.webhook_id[3 : -len(_SENT_SUFFIX)]
        account = await self.store.get_account(job.account_id)
        record = await self.store.get_message(job.account_id, mid)
        if account is None or record is None or account.report_format == "aliyun":
            return None
        if record.state in MSG_FINAL:
            return None
        item = status_report(record)
        item.update(status="sent", success=None, final=False)
        return item

    async def _deliver(self, jobs: list[WebhookJob]) -> None:
        now_ms = int(self.clock() * 1000)
        account = await self.store.get_account(jobs[0].account_id)
        url = jobs[0].url
        kind = jobs[0].kind
        lease = jobs[0].lease
        if account is None or not url:
            await self.store.webhook_retry(
                [j.id for j in jobs], now_ms, "no callback URL", True, lease
            )
            self.dead += len(jobs)
            self._count(kind, "dead", len(jobs))
            return
        items = []
        live = []
        for job in jobs:
            item = await self.render(job)
            if item is None:  # the record is gone (erased account): nothing to report
                await self.store.webhook_done([job.id], now_ms, lease)
                continue
            items.append(item)
            live.append(job)
        if not live:
            return
        body = jsonio.dumps(items)
        ids = ",".join(j.webhook_id for j in live)
        signed_at = self.clock()  # one reading: the overlap's end and the signed t agree
        try:
            secrets = self.accounts.webhook_secrets(account, int(signed_at * 1000))
        except MasterKeyError as exc:
            # The operator's to fix (the key it was sealed with: README, "Secrets"): retried on
            # the schedule with the reason on the report, and an ERROR line a while, not a
            # traceback at every lease's end.
            self._unopened.error(f"the webhook secret of account {account.id} does not open", exc)
            reason = f"webhook secret does not open: {exc}"
            await self._failed(live, account.id, url, int(self.clock() * 1000), reason, True)
            return
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "smpp-bridge-webhooks/1",
            "X-Bridge-Webhook-Id": ids if len(live) == 1 else _batch_id(ids),
            signing.WEBHOOK_HEADER: signing.webhook_signatures(secrets, body, int(signed_at)),
        }
        status: int | None = None
        error = ""
        permanent = False  # a URL that can never be used: dead-lettered at once, not retried
        assert self._session is not None
        why = callback_urls.problem(url)  # one stored before the checks at account update
        try:
            if why is not None:
                raise _Unusable(why)
            # No redirects: aiohttp would repeat a 301/302/303 as a GET without the body (and
            # book the report delivered on its 200), and a 307/308 would POST the signed body
            # to whatever host the receiver names, internal addresses included.
            async with self._session.post(
                url,
                data=body,
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self.config.timeout_s),  # SIGHUP-able
            ) as resp:
                status = resp.status
                if 300 <= status < 400:
                    where = (
                        _host(resp.headers.get("Location", ""))
                        if "Location" in resp.headers
                        else "?"
                    )
                    error = f"HTTP {status} redirect to {where} (not followed)"
                # Only the status counts: at most a little of the answer is read (a hostile
                # receiver's endless body was read whole into memory), then the connection goes.
                await resp.content.read(ANSWER_READ_BYTES)
        except _Unusable as exc:
            error, permanent = f"unusable callback URL: {exc}", True
        except ValueError as exc:  # yarl/IDNA: a host no request can be made to
            error, permanent = f"unusable callback URL ({type(exc).__name__})", True
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if _forbidden_target(exc):
                error = f"unusable callback URL: {_host(url)} resolves only to link-local or "
                error += "metadata addresses"
                permanent = True
            else:
                # The class and the host only: some errors spell out the whole URL, and a
                # customer's ?token= would reach the logs and /admin/webhooks/dead.
                error = f"{type(exc).__name__} from {_host(url)}"
        now_ms = int(self.clock() * 1000)
        if status is not None and 200 <= status < 300:
            done = [j.id for j in live]
            await self._book(partial(self.store.webhook_done, done, now_ms, lease), lease)
            self.delivered += len(live)
            self._count(kind, "delivered", len(live))
            _log(self.endpoints.delivered(account.id, url, now_ms, done))
            return
        error = error or f"HTTP {status}"
        await self._failed(
            live, account.id, url, now_ms, error, is_retryable(status) and not permanent
        )

    async def _failed(
        self,
        live: list[WebhookJob],
        account_id: str,
        url: str,
        now_ms: int,
        error: str,
        retryable: bool,
    ) -> None:
        """Reports not delivered: retried on the schedule, or dead-lettered."""
        kind, lease = live[0].kind, live[0].lease
        self.failed_attempts += len(live)
        plan = retry_plan(
            live,
            now_ms,
            retryable,
            tuple(self.config.retry_schedule_s),
            int(self.config.retry_for_hours * 3_600_000),
            self.rng,
        )
        retried = [i for ids, _, _, dead in plan if not dead for i in ids]
        next_at = min((at for _, _, at, dead in plan if not dead), default=None)
        _log(
            self.endpoints.failed(
                account_id,
                url,
                _host(url),
                now_ms,
                error,
                retried,
                [i for ids, _, _, dead in plan if dead for i in ids],
                next_at,
            )
        )
        for ids, attempt, next_at, dead in plan:
            self._count(kind, "dead" if dead else "retry", len(ids))
            about = {
                "account": account_id,
                "kind": kind,
                "url_host": _host(url),
                "reports": len(ids),
                "attempt": attempt,
                "error": error,
            }
            if kind == "status":  # the payload of a status report is its message id
                about["message_ids"] = [j.payload for j in live if j.id in ids][:20]
            if dead:
                self.dead += len(ids)
                log.debug("webhook dead-lettered", extra=about)
            else:
                log.debug("webhook retry", extra=about)
            await self._book(
                partial(self.store.webhook_retry, ids, next_at, error, dead, lease), lease
            )

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def _count(self, kind: str, outcome: str, n: int) -> None:
        if self.metrics is not None:
            self.metrics.webhook(kind, outcome, n)


def _log(line: Line | None) -> None:
    if line is not None:
        getattr(log, line.level)(line.message, extra=line.fields)


def plan_chunks(
    jobs: list[WebhookJob],
    batch_max: int,
    free: int,
    busy: Counter[tuple[str, str, str]],
    cap: int,
) -> tuple[list[tuple[tuple[str, str, str], list[WebhookJob]]], list[WebhookJob]]:
    """Which POSTs to start from a claim, and which reports to hand back.

    A POST carries up to `batch_max` reports of one (account, URL, kind); at most `free` start,
    and an account with `busy` POSTs in flight gets at most `cap` in all, over all its URLs and
    kinds (counted per destination, its status, event and MO pushes each had a quarter: two
    hanging customers took every sender). Destinations take turns (a first POST each, then a
    second...) in the order of their oldest report, so the reports of a customer with a backlog
    do not crowd out everyone else's.
    """
    groups: dict[tuple[str, str, str], list[WebhookJob]] = {}
    for job in jobs:
        groups.setdefault((job.account_id, job.url, job.kind), []).append(job)
    queues = {
        dest: [group[i : i + batch_max] for i in range(0, len(group), batch_max)]
        for dest, group in groups.items()
    }
    taken = _per_account(busy)
    start: list[tuple[tuple[str, str, str], list[WebhookJob]]] = []
    progress = True
    while progress and len(start) < free:
        progress = False
        for dest, queue in queues.items():
            if len(start) >= free:
                break
            if queue and taken[dest[0]] < cap:
                start.append((dest, queue.pop(0)))
                taken[dest[0]] += 1
                progress = True
    spare = [job for queue in queues.values() for chunk in queue for job in chunk]
    return start, spare


_SENT_SUFFIX = "_sent"  # the outbox id of a "sent" report: st_<message id>_sent


def _per_account(busy: Counter[tuple[str, str, str]]) -> Counter[str]:
    """POSTs in flight per account, from those per (account, URL, kind)."""
    out: Counter[str] = Counter()
    for (account, _url, _kind), n in busy.items():
        out[account] += n
    return out


def retry_plan(
    jobs: list[WebhookJob],
    now_ms: int,
    retryable: bool,
    schedule: tuple[int, ...],
    retry_for_ms: int,
    rng: random.Random,
) -> list[tuple[list[int], int, int, bool]]:
    """(ids, attempt number, next attempt at, dead) after a failed POST, decided per report:
    each follows its own schedule and gives up `retry_for_ms` after its own creation (or its
    last replay), so a new report batched with an old one is not dead-lettered, nor delayed an
    hour, with it, and a replayed dead letter gets a full window again."""
    by_attempt: dict[int, list[WebhookJob]] = defaultdict(list)
    for j in jobs:
        by_attempt[j.attempts + 1].append(j)
    since = {j.id: max(j.created_at, j.retry_from or 0) for j in jobs}  # a replay starts anew
    out: list[tuple[list[int], int, int, bool]] = []
    for attempt, group in sorted(by_attempt.items()):
        next_at = now_ms + int(next_delay_s(attempt, schedule, rng) * 1000)
        live = [j.id for j in group if retryable and next_at <= since[j.id] + retry_for_ms]
        dead = [j.id for j in group if j.id not in set(live)]
        if live:
            out.append((live, attempt, next_at, False))
        if dead:
            out.append((dead, attempt, now_ms, True))
    return out


def _batch_id(ids: str) -> str:
    return "whb_" + hashlib.sha256(ids.encode()).hexdigest()[:32]


def _host(url: str) -> str:
    """The host of a URL for a log or dead-letter line; "?" for one that does not parse (a
    redirect's Location "http://[oops/" was blamed on the customer's own callback URL)."""
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).hostname or "?"
    except ValueError:
        return "?"
