"""Adversarial review of webhook delivery (bridge/pipeline/webhooks.py, the SQLite outbox, the
"sent" reports of `webhooks.send_intermediate`, the Alibaba report shapes). Each test failed on
the code it was written against, for the reason its docstring gives:

1. test_one_account_never_holds_more_than_a_quarter_of_the_senders
   The "at most a quarter of `webhooks.concurrency` to one account" cap is kept per (account, URL,
   kind): an account's status, event and MO pushes each get a quarter, so two customers whose
   endpoints hang take every sender and a third, healthy customer waits out their timeouts.
2. test_sent_report_is_not_pushed_after_the_final_status
   With send_intermediate, a message's "sent" report and its final status go out as separate,
   independently retried POSTs; a "sent" whose first POST failed arrives a minute after the
   "delivered" (no sequence number; the final report carries no `final` flag), and a receiver
   keeping the last report it got regresses the message to "sent".
3. test_sent_report_has_the_documented_status_fields
   The "sent" report has `"type": "message.status"` but not the documented shape of that type:
   `accepted_at_ms`/`submitted_at_ms` (integers) instead of the ISO `accepted_at`/`submitted_at`,
   no `error_code`, `segments_delivered`, `done_at`.
4. test_aliyun_account_gets_only_alibaba_shaped_reports
   An account with `report_format: aliyun` is pushed the native "sent" report (no
   `phone_number`, `biz_id`, `send_time`...) in the array its Alibaba-written receiver parses as
   SmsReport.
5. test_erased_number_is_not_pushed_in_a_sent_report
   The "sent" report is a snapshot of the number and client_ref stored in the outbox row;
   `POST /v1/recipients/{n}/erase` masks messages, MO and even stored idempotent answers, but not
   the outbox: the erased number is pushed in clear afterwards (and kept in the dead letters).
6. test_reload_applies_send_intermediate
   SIGHUP applies "webhook settings" (README), but `webhooks.send_intermediate` is copied into
   the store only at start: turning it on (or off) by a reload changes nothing until a restart.
7. test_redirect_with_unparsable_location_is_reported_as_a_redirect
   A 3xx whose Location cannot be parsed (`http://[oops`) makes `_host()` raise ValueError inside
   the POST block; it is caught as "unusable callback URL", so the dead letter blames the
   customer's (valid) callback URL instead of naming the redirect.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bridge.accounts import AccountService
from bridge.api.rules_api import erased as mask
from bridge.config import WebhooksConfig
from bridge.crypto import Sealer
from bridge.pipeline.webhooks import WebhookSender
from bridge.store.models import (
    AcceptBatch,
    MoMessage,
    NewMessage,
    NewSegment,
    ReceiptIn,
    SubmitResult,
)
from bridge.store.sqlite import SqliteStore

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

SEC = 1_000
T0 = 1_800_000_000.0  # the frozen "now", unix seconds
NUMBER = "+8613800138000"


class FrozenClock:
    def __init__(self, at: float = T0) -> None:
        self.t = at

    def __call__(self) -> float:
        return self.t

    def ms(self) -> int:
        return int(self.t * 1000)


Handler = Callable[[web.Request, list[dict[str, Any]]], Awaitable[web.StreamResponse]]


class Receiver:
    """Customer endpoints on 127.0.0.1: `routes` maps a path to a handler; every POST's items are
    recorded in arrival order, with the time it arrived and whether it was answered 2xx."""

    def __init__(self) -> None:
        self.routes: dict[str, Handler] = {}
        self.posts: list[dict[str, Any]] = []
        self.release = asyncio.Event()  # hanging handlers end when the test ends
        self._runner: web.AppRunner | None = None
        self.port = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        items = json.loads(body) if body else []
        post: dict[str, Any] = {
            "path": request.path,
            "items": items,
            "at": time.monotonic(),
            "headers": dict(request.headers),
            "status": None,
        }
        self.posts.append(post)
        handler = self.routes.get(request.path)
        resp = web.Response(status=404) if handler is None else await handler(request, items)
        post["status"] = resp.status
        return resp

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def delivered_items(self) -> list[dict[str, Any]]:
        return [i for p in self.posts if p["status"] and p["status"] < 300 for i in p["items"]]


async def ok(_request: web.Request, _items: list[dict[str, Any]]) -> web.Response:
    return web.Response(status=200)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


async def _open_store(path: Path, *, intermediate: bool) -> SqliteStore:
    s = SqliteStore(path)
    s.send_intermediate = intermediate  # what Daemon.start does with webhooks.send_intermediate
    await s.open()
    return s


@pytest.fixture
async def hook_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = await _open_store(tmp_path / "bridge.db", intermediate=True)
    yield s
    await s.close()


def sealer() -> Sealer:
    return Sealer(os.urandom(32))


async def account(accounts: AccountService, name: str, now_ms: int, **settings: Any) -> str:
    return (await accounts.create(name, settings, now_ms)).account.id


async def sent_message(store: SqliteStore, account_id: str, mid: str, now_ms: int) -> None:
    """Accept one single-part message and record it accepted by the SMSC (id '<mid>-1')."""
    msg = NewMessage(
        id=mid,
        account_id=account_id,
        batch_id="bat_" + mid,
        recipient=NUMBER,
        encoding="gsm7",
        data_coding=0,
        billable_units=1,
        segments=(NewSegment(seq=1, total=1, esm_class=0, short_message=b"hi", tlvs=b""),),
        accepted_at=now_ms,
        text="hi",
        client_ref="order-42",
    )
    out = await store.accept(AcceptBatch(account_id, (msg,), None, None), now_ms)
    assert out.accepted
    work = await store.claim("inst-1", 10, now_ms, 300 * SEC)
    assert [w.id for w in work] == [mid]
    smsc_id = f"{mid.upper()}-1"
    await store.record_submits(
        [SubmitResult(mid, 1, "sent", "smscA", smsc_id, smsc_id, at=now_ms)], [], now_ms
    )


async def deliver(store: SqliteStore, mid: str, now_ms: int) -> None:
    smsc_id = f"{mid.upper()}-1"
    receipt = ReceiptIn("smscA", smsc_id, "delivered", "DELIVRD", None, now_ms, now_ms, "id")
    out = await store.apply_receipts([receipt], now_ms)
    assert out.matched == 1


async def run_until(
    sender: WebhookSender, done: Callable[[], Awaitable[bool]], limit_s: float = 6.0
) -> None:
    task = asyncio.create_task(sender.run())
    try:
        async with asyncio.timeout(limit_s):
            while not await done():  # noqa: ASYNC110 (polls the store)
                await asyncio.sleep(0.02)
    finally:
        await sender.stop()
        await task


async def nothing_pending(store: SqliteStore) -> bool:
    return (await store.webhook_counts()).get("pending", 0) == 0


# -- 1. the per-account cap ----------------------------------------------------------------------


async def test_one_account_never_holds_more_than_a_quarter_of_the_senders(
    hook_store: SqliteStore, receiver: Receiver
) -> None:
    """README: "At most `webhooks.concurrency` POSTs are in flight, and at most a quarter of them
    to one account, so one customer's hanging endpoint or backlog does not hold back the others".

    `plan_chunks` counts the cap per (account, URL, kind) and run() excludes an account from the
    claim only once one of those reaches it (webhooks.py:126-130, 358 and 371): an account with a
    status/event push and an MO push holds two quarters, status + event + MO three. Here
    concurrency 4 (a quarter = 1): two customers whose endpoint hangs, each with an event and an
    MO due, take all four senders, and a third customer's report waits for their timeouts."""
    clock = FrozenClock()
    accounts = AccountService(hook_store, sealer())

    async def hang(_request: web.Request, _items: list[dict[str, Any]]) -> web.Response:
        await receiver.release.wait()
        return web.Response(status=200)

    receiver.routes["/hang"] = hang
    receiver.routes["/fine"] = ok
    for n, name in enumerate(("hangco1", "hangco2")):
        acc = await account(
            accounts,
            name,
            clock.ms(),
            status_callback_url=receiver.url("/hang"),
            mo_callback_url=receiver.url("/hang"),
        )
        at = clock.ms() - 10 * SEC + n
        await hook_store.enqueue_event(acc, "event", '{"event":"test"}', f"evt_{name}", at)
        mo = MoMessage(
            id=f"mo_{name}",
            account_id=acc,
            smsc="smscA",
            source=NUMBER,
            destination="106900001",
            text="reply",
            received_at=at,
        )
        assert await hook_store.store_mo(mo)
    healthy = await account(
        accounts, "fineco", clock.ms(), status_callback_url=receiver.url("/fine")
    )
    await hook_store.enqueue_event(healthy, "event", '{"event":"test"}', "evt_fine", clock.ms())

    sender = WebhookSender(
        hook_store,
        accounts,
        WebhooksConfig(timeout_s=1.5, concurrency=4, batch_max=100),
        clock=clock,
        poll_s=0.02,
    )
    started = time.monotonic()

    async def healthy_posted() -> bool:
        return any(p["path"] == "/fine" for p in receiver.posts)

    await run_until(sender, healthy_posted, limit_s=6)
    waited = min(p["at"] for p in receiver.posts if p["path"] == "/fine") - started
    hanging_at_once = sum(
        1 for p in receiver.posts if p["path"] == "/hang" and p["at"] - started < 1
    )
    assert waited < 0.7, (
        f"a healthy customer's report waited {waited:.2f} s (timeout_s 1.5) while two hanging "
        f"customers held {hanging_at_once} of the 4 senders (a quarter each is 1)"
    )


# -- 2-5. the "sent" reports of webhooks.send_intermediate ---------------------------------------


async def test_sent_report_is_not_pushed_after_the_final_status(
    hook_store: SqliteStore, receiver: Receiver
) -> None:
    """The "sent" report (kind 'event') and the final status (kind 'status') are separate chunks
    in plan_chunks, POSTed side by side and retried each on its own schedule
    (sqlite_pipeline.py:121-176, webhooks.py:358). The receiver here refuses one POST with a 503
    (any blip): the "delivered" is booked, the "sent" comes back a minute later and is the last
    word the receiver has about the message. Nothing in either body orders them: no sequence
    number, the final report has no `final` flag, and the two carry their times in different
    fields and formats (`submitted_at_ms` vs `done_at`)."""
    clock = FrozenClock()
    accounts = AccountService(hook_store, sealer())
    blipped: list[int] = []

    async def blip_on_sent(_request: web.Request, items: list[dict[str, Any]]) -> web.Response:
        if not blipped and any(i.get("status") == "sent" for i in items):
            blipped.append(1)
            return web.Response(status=503)
        return web.Response(status=200)

    receiver.routes["/hook"] = blip_on_sent
    acc = await account(accounts, "order", clock.ms(), status_callback_url=receiver.url("/hook"))
    await sent_message(hook_store, acc, "msg_order", clock.ms() - 3 * SEC)
    await deliver(hook_store, "msg_order", clock.ms() - 2 * SEC)

    sender = WebhookSender(hook_store, accounts, WebhooksConfig(), clock=clock, poll_s=0.02)
    task = asyncio.create_task(sender.run())
    try:
        async with asyncio.timeout(5):
            # first round: both POSTs answered
            while len([p for p in receiver.posts if p["status"]]) < 2:
                if await nothing_pending(hook_store):  # a stale "sent" dropped: one POST
                    break
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            clock.t += 70  # past the first retry step (60 s +-10%)
            sender.wake()
            while not await nothing_pending(hook_store):  # noqa: ASYNC110
                await asyncio.sleep(0.02)
    finally:
        await sender.stop()
        await task
    order = [i["status"] for i in receiver.delivered_items() if i.get("message_id") == "msg_order"]
    assert "delivered" in order
    assert order[-1] != "sent", (
        f"the receiver got the message's reports in the order {order}: the 'sent' report came "
        "after the final one, so a receiver keeping the latest report shows it as 'sent'"
    )


async def test_sent_report_has_the_documented_status_fields(
    hook_store: SqliteStore, receiver: Receiver
) -> None:
    """README, Webhooks: a `message.status` report carries `accepted_at`, `submitted_at`,
    `done_at` (ISO-8601), `error_code`, `segments_delivered`... The "sent" report built by
    enqueue_sent_webhooks (sqlite_pipeline.py:134-147; postgres_pipeline.py likewise) uses the
    same type with other field names and integer milliseconds: a receiver parsing the documented
    shape fails on it (KeyError on `accepted_at`)."""
    clock = FrozenClock()
    accounts = AccountService(hook_store, sealer())
    receiver.routes["/hook"] = ok
    acc = await account(accounts, "shape", clock.ms(), status_callback_url=receiver.url("/hook"))
    await sent_message(hook_store, acc, "msg_shape", clock.ms())
    sender = WebhookSender(hook_store, accounts, WebhooksConfig(), clock=clock, poll_s=0.02)
    await run_until(sender, lambda: nothing_pending(hook_store))
    (item,) = receiver.delivered_items()
    assert item["type"] == "message.status" and item["status"] == "sent"
    documented = {
        "type",
        "webhook_id",
        "message_id",
        "batch_id",
        "client_ref",
        "to",
        "status",
        "success",
        "error_code",
        "segments",
        "segments_delivered",
        "billable_units",
        "accepted_at",
        "submitted_at",
        "done_at",
    }
    missing = sorted(documented - set(item))
    assert missing == [], (
        f"a message.status report without the documented fields {missing}; it has instead "
        f"{sorted(set(item) - documented)}"
    )


async def test_aliyun_account_gets_only_alibaba_shaped_reports(
    hook_store: SqliteStore, receiver: Receiver
) -> None:
    """README: "Accounts with `report_format: aliyun` get Alibaba's shapes instead: SmsReport
    (phone_number, send_time, report_time, success, err_code, err_msg, sms_size, biz_id,
    out_id)". render() turns kind 'status' into SmsReport but passes kind 'event' through as
    stored (webhooks.py:223-224), and the "sent" report is an event: the aliyun receiver gets a
    native object in the array it reads as SmsReport (Alibaba has no intermediate report)."""
    clock = FrozenClock()
    accounts = AccountService(hook_store, sealer())
    receiver.routes["/hook"] = ok
    acc = await account(
        accounts,
        "aliyunco",
        clock.ms(),
        status_callback_url=receiver.url("/hook"),
        report_format="aliyun",
    )
    await sent_message(hook_store, acc, "msg_ali", clock.ms() - 2 * SEC)
    await deliver(hook_store, "msg_ali", clock.ms() - SEC)
    sender = WebhookSender(hook_store, accounts, WebhooksConfig(), clock=clock, poll_s=0.02)
    await run_until(sender, lambda: nothing_pending(hook_store))
    items = receiver.delivered_items()
    assert any(i.get("biz_id") == "bat_msg_ali" for i in items)  # the SmsReport of the final
    foreign = [i for i in items if "phone_number" not in i or "biz_id" not in i]
    assert foreign == [], f"an aliyun-format account was pushed non-SmsReport items: {foreign}"
    # `final` is the native shape's: Alibaba's SmsReport keeps its own fields.
    assert all("final" not in i for i in items), items


async def test_erased_number_is_not_pushed_in_a_sent_report(
    hook_store: SqliteStore, receiver: Receiver
) -> None:
    """`POST /v1/recipients/{number}/erase` masks the number "in this account's records"
    (sqlite_rules.py:663-680 and 764 mask messages, MO and even stored idempotent answers), but the
    "sent" report's body is a snapshot in webhook_outbox.payload (sqlite_pipeline.py:133-159) that
    erasure never touches: pushed after the erasure, it carries the number and client_ref in
    clear (and a dead letter keeps them for good)."""
    clock = FrozenClock()
    accounts = AccountService(hook_store, sealer())
    receiver.routes["/hook"] = ok
    acc = await account(accounts, "erase", clock.ms(), status_callback_url=receiver.url("/hook"))
    await sent_message(hook_store, acc, "msg_erase", clock.ms() - SEC)
    erased = await hook_store.erase_recipient(acc, NUMBER, mask(NUMBER), clock.ms())
    assert erased == 1
    record = await hook_store.get_message(acc, "msg_erase")
    assert record is not None and record.recipient == mask(NUMBER)
    sender = WebhookSender(hook_store, accounts, WebhooksConfig(), clock=clock, poll_s=0.02)
    await run_until(sender, lambda: nothing_pending(hook_store))
    leaked = [
        p["items"] for p in receiver.posts if NUMBER.encode() in json.dumps(p["items"]).encode()
    ]
    assert leaked == [], f"an erased number was pushed in clear after its erasure: {leaked}"


# -- 6. reload ------------------------------------------------------------------------------------


async def test_reload_applies_send_intermediate(tmp_path: Path) -> None:
    """README: SIGHUP re-reads and applies the webhook settings. Daemon.reload hands the new
    `webhooks` section to the sender (app.py:488), but `send_intermediate` lives in the store,
    set once in Daemon.start (app.py:96-97): switched on by a reload, no "sent" report is ever
    queued (and switched off, they keep coming) until a restart."""
    from bridge.app import Daemon
    from bridge.config import parse_config
    from tests.e2e.harness import config_dict

    raw = config_dict(tmp_path)
    raw["sim"]["enabled"] = False  # no binds needed: only the reload is under test
    raw["smscs"][0]["port"] = 9  # nothing listens: the connector just keeps retrying
    cfg = parse_config(raw, env={}, base_dir=tmp_path)
    d = Daemon(cfg)
    await d.start()
    try:
        raw_on = json.loads(json.dumps(raw))
        raw_on["webhooks"]["send_intermediate"] = True
        await d.reload(parse_config(raw_on, env={}, base_dir=tmp_path))
        assert d.webhooks is not None and d.webhooks.config.send_intermediate is True
        store = d.store
        assert isinstance(store, SqliteStore)
        assert store.send_intermediate is True, (
            "webhooks.send_intermediate turned on by a reload is not applied: the store that "
            "queues the 'sent' reports still has it off"
        )
    finally:
        await d.stop()


# -- 7. redirects ---------------------------------------------------------------------------------


async def test_redirect_with_unparsable_location_is_reported_as_a_redirect(
    hook_store: SqliteStore, receiver: Receiver
) -> None:
    """webhooks.py:281-284 computes `_host(Location)` inside the `try` whose `except ValueError`
    (webhooks.py:293) stands for "the callback URL cannot be used": urlsplit raises ValueError on
    a Location such as `http://[oops`, and the dead letter says "unusable callback URL
    (ValueError)" about a URL that works, sending the operator to fix the wrong thing."""
    clock = FrozenClock()
    accounts = AccountService(hook_store, sealer())

    async def odd_redirect(_request: web.Request, _items: list[dict[str, Any]]) -> web.Response:
        return web.Response(status=302, headers={"Location": "http://[oops/"})

    receiver.routes["/hook"] = odd_redirect
    acc = await account(accounts, "oddredir", clock.ms(), status_callback_url=receiver.url("/hook"))
    await hook_store.enqueue_event(acc, "event", '{"event":"test"}', "evt_redir", clock.ms())
    sender = WebhookSender(hook_store, accounts, WebhooksConfig(), clock=clock, poll_s=0.02)
    await run_until(sender, lambda: nothing_pending(hook_store))
    (dead,) = await hook_store.dead_webhooks(None, 10)
    assert "302" in dead["last_error"] and "unusable callback URL" not in dead["last_error"], (
        f"a 302 with an odd Location was recorded as {dead['last_error']!r}"
    )


# -- session 34: `final` on every native message.status report -----------------------------------


async def test_final_report_carries_final_true_and_the_sent_one_false(
    hook_store: SqliteStore, receiver: Receiver
) -> None:
    """The "sent" report carried `"final": false` and the final report no `final` at all, so a
    receiver testing `if (!report.final)` (the field the README names) took every final report
    for an intermediate one. Each POST of one report is named by its webhook_id."""
    clock = FrozenClock()
    accounts = AccountService(hook_store, sealer())
    receiver.routes["/hook"] = ok
    acc = await account(accounts, "finalco", clock.ms(), status_callback_url=receiver.url("/hook"))
    await sent_message(hook_store, acc, "msg_final", clock.ms() - 2 * SEC)
    sender = WebhookSender(hook_store, accounts, WebhooksConfig(), clock=clock, poll_s=0.02)
    await run_until(sender, lambda: nothing_pending(hook_store))
    await deliver(hook_store, "msg_final", clock.ms() - SEC)
    sender = WebhookSender(hook_store, accounts, WebhooksConfig(), clock=clock, poll_s=0.02)
    await run_until(sender, lambda: nothing_pending(hook_store))
    sent, done = receiver.delivered_items()
    assert (sent["status"], sent["final"], sent["webhook_id"]) == (
        "sent",
        False,
        "st_msg_final_sent",
    )
    assert (done["status"], done["final"], done["webhook_id"]) == (
        "delivered",
        True,
        "st_msg_final",
    )
    assert [p["headers"]["X-Bridge-Webhook-Id"] for p in receiver.posts] == [
        "st_msg_final_sent",
        "st_msg_final",
    ]
