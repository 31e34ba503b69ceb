"""Adversarial review, as tests, of GET /metrics: the real daemon (in-process, on the built-in
simulator), one `server.workers: 2` daemon as a real process, and two instances sharing a
PostgreSQL store. Each event is caused on purpose and the scrape before and after compared: the
exact delta, under exactly the documented labels, and nothing else moving.

Findings (each test below failed on the code as reviewed; its docstring says expected vs found;
all five are fixed: smsc_up of a receive-only SMSC, the dashboard's max of binds_configured,
the Alibaba port's own endpoint and Code, the late acceptance counted, the HELP text):

1. test_a_receive_only_smsc_reads_up_while_its_bind_is_up: an SMSC configured
   `bind_mode: receiver` (an MO-only link) reads `smpp_bridge_smsc_up 0` with its bind up,
   for ever: the README's alert (`smpp_bridge_smsc_up == 0` for a minute) fires permanently for
   a healthy link, and reads the same when its bind is really down.
2. test_fleet_dashboard_shows_each_configured_bind_once: instances sharing a PostgreSQL store
   share the configured binds, but each reports all of them in `smpp_bridge_binds_configured`;
   the dashboard's "Binds up / configured" panel sums them by SMSC, so a healthy two-instance
   fleet with its 2 binds up reads "2 up / 4 configured".
3. test_malformed_http_on_the_alibaba_port_is_counted_as_the_alibaba_face: a request the HTTP
   parser refuses on the Alibaba port is answered `isv.INVALID_PARAMETERS` but counted exactly as
   one on the native port (endpoint "unparsable", code "MALFORMED_HTTP").
4. test_a_submit_accepted_after_its_timeout_shows_as_accepted: an SMSC's ESME_ROK that
   arrives after response_timeout_s (recorded as the part's acceptance: it is delivered) is
   counted nowhere: segments_submitted reads TIMEOUT only, so a carrier answering just past
   the time-out reads as accepting nothing while everything is delivered.
5. test_the_webhook_help_names_every_kind_it_counts: the HELP of
   smpp_bridge_webhook_deliveries_total says kinds "(status, mo)"; it also counts kind="event"
   (balance warnings, "sent" reports), as the README says.

Checked and found right (the passing tests): the README table and the dashboard/alert queries
against the registry; every native and Alibaba answer counted once under its route template,
status and the code the caller got (auth failures, validation, 429s, 503 QUEUE_FULL, replays,
405/404 "unmatched"), accept latency and RTT counts equal to first-time 202s and answered
submits, with a known delay landing in the right bucket; segments by SMSC and status, throttle
events and receipts by every state equal to what the simulator did; TIMEOUT and
CONNECTION_LOST; window in use while submits wait; queue depth (scheduled included, follows a
cancel); bind gauges through a dropped bind and a removed SMSC; webhook deliveries by kind and
outcome with a receiver answering 500 then 410; one balance warning per crossing; MO counted
once per message (long, repeated), incomplete MO apart; unmatched and unparsable receipts;
event-loop lag; retention purges equal to the rows deleted; and with `server.workers: 2`
counters summed exactly once by whichever acceptor answers, unchanged by a kill -9 of an
acceptor and its restart, and gauges not multiplied by the number of processes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gzip
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
import yaml
from aiohttp import web
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.parser import text_string_to_metric_families
from yarl import URL

from bridge import review
from bridge.api import signing
from bridge.app import Daemon
from bridge.client import BridgeClient, BridgeError
from bridge.config import load_config
from bridge.metrics import MULTIPROC_ENV
from bridge.sim.server import SimSmsc
from bridge.smpp import constants as C
from bridge.smpp.codec import ShortMessage
from tests.e2e.harness import (
    ADMIN_TOKEN,
    DaemonProcess,
    WebhookReceiver,
    client_for,
    config_dict,
    create_account,
    final_status,
    free_port,
    handles_sighup,
    make_config,
    wait_until,
)
from tests.metric_registry import registry
from tests.sending import ready_to_send

ROOT = Path(__file__).resolve().parents[2]
CN = "+8613800138000"
Labels = frozenset[tuple[str, str]]


# -- scraping ------------------------------------------------------------------------------------


class Scrape:
    """One parsed exposition: every sample by (name, labels); a sample twice is an error."""

    def __init__(self, text: str) -> None:
        self.samples: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                key = (s.name, frozenset(s.labels.items()))
                assert key not in self.samples, f"duplicate sample {key}"
                self.samples[key] = s.value

    def val(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def series(self, name: str) -> dict[Labels, float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}


async def scrape(port: int) -> Scrape:
    """A fresh connection each time: with acceptor processes, either one may answer."""
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
        s.get(f"http://127.0.0.1:{port}/metrics", timeout=aiohttp.ClientTimeout(total=10)) as r,
    ):
        text = await r.text()
        assert r.status == 200, text
        return Scrape(text)


def moved(before: Scrape, after: Scrape, name: str) -> dict[Labels, float]:
    """The series of `name` that changed, and by how much."""
    old, new = before.series(name), after.series(name)
    out = {k: new.get(k, 0.0) - old.get(k, 0.0) for k in set(old) | set(new)}
    return {k: v for k, v in out.items() if v}


def requests_moved(before: Scrape, after: Scrape) -> Counter[tuple[str, str, str]]:
    """smpp_bridge_api_requests_total deltas as (endpoint, status, code), scrapes left out."""
    out: Counter[tuple[str, str, str]] = Counter()
    for labels, v in moved(before, after, "smpp_bridge_api_requests_total").items():
        d = dict(labels)
        assert set(d) == {"endpoint", "status", "code"}, d
        if d["endpoint"] != "GET /metrics":
            out[(d["endpoint"], d["status"], d["code"])] += int(v)
    return out


def lab(**labels: str) -> Labels:
    return frozenset(labels.items())


# -- daemons -------------------------------------------------------------------------------------


def cfg(tmp: Path, name: str = "d", **overrides: Any) -> dict[str, Any]:
    """A configuration in its own directory (its own SQLite file)."""
    home = tmp / name
    home.mkdir(exist_ok=True)
    return config_dict(home, **overrides)


@pytest.fixture
async def start(tmp_path: Path):
    """`await start(data, clock=..., wait="sim")`: an in-process daemon read from a file (so
    `reload_from_file` works); every one started is stopped at teardown."""
    started: list[Daemon] = []

    async def go(
        data: dict[str, Any], *, clock: Callable[[], float] | None = None, wait: str | None = "sim"
    ) -> Daemon:
        path = tmp_path / f"bridge-{len(started)}.yaml"
        path.write_text(yaml.safe_dump(data))
        kwargs: dict[str, Any] = {"config_path": str(path)}
        if clock is not None:
            kwargs["clock"] = clock
        d = Daemon(load_config(path, env={}), **kwargs)
        started.append(d)
        await d.start()
        if wait is not None:
            await wait_until(lambda: d.connectors[wait].is_up, 10)
        return d

    yield go
    for d in reversed(started):
        await d.stop()


async def _raw_json(
    method: str, url: str, *, headers: dict[str, str] | None = None, data: bytes | None = None
) -> tuple[int, dict[str, str], Any]:
    async with (
        aiohttp.ClientSession() as s,
        s.request(
            method, url, headers=headers or {}, data=data, skip_auto_headers=("Content-Type",)
        ) as r,
    ):
        body = await r.read()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        return r.status, dict(r.headers), parsed


# -- 0. the documentation against the registry ----------------------------------------------------


def _readme_metrics() -> dict[str, tuple[str, frozenset[str]]]:
    """README "### Metrics" table: name -> (type, label names)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Metrics", 1)[1].split("\n### ", 1)[0]
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for line in section.splitlines():
        if not line.startswith("| `smpp_bridge_"):
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        names = re.findall(r"`(smpp_bridge_\w+)`", cells[0])
        labels = frozenset(re.findall(r"`(\w+)`", cells[2]))
        for name in names:
            out[name] = (cells[1], labels)
    return out


def test_the_readme_table_and_the_dashboard_match_what_is_exposed(tmp_path):
    """Checked fine: each README row is a family of that type with exactly those labels, and
    nothing undocumented is exposed; every name the dashboard and the README's alerts query is
    exposed with the labels they group or filter by."""
    d = Daemon(make_config(tmp_path))  # not started: only its metric definitions are read
    documented = _readme_metrics()
    exposed = registry(d.metrics)
    assert documented == exposed

    def family(name: str) -> tuple[str, str, frozenset[str]]:
        for suffix in ("_bucket", "_sum", "_count"):
            base = name.removesuffix(suffix)
            if name.endswith(suffix) and exposed.get(base, ("",))[0] == "histogram":
                return (
                    base,
                    exposed[base][0],
                    exposed[base][1] | ({"le"} if suffix == "_bucket" else set()),
                )
        assert name in exposed, f"queried but not exposed: {name}"
        return name, exposed[name][0], exposed[name][1]

    dash = json.loads((ROOT / "config" / "grafana-dashboard.json").read_text())
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            exprs.extend(t["expr"] for t in p.get("targets", []) if "expr" in t)
            walk(p.get("panels", []))

    walk(dash["panels"])
    readme = (ROOT / "README.md").read_text()
    alerts = readme.split("Alerts worth having:", 1)[1].split("\n\n", 1)[0]
    exprs += re.findall(r"`([^`]*smpp_bridge_[^`]*)`", alerts)
    assert len(exprs) >= 20
    for expr in exprs:
        for name, selector in re.findall(r"(smpp_bridge_\w+)(\{[^}]*\})?", expr):
            _base, _typ, labels = family(name)
            used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
            assert used <= labels | {"instance", "job"}, (expr, used, labels)
        for group in re.findall(r"by \(([^)]*)\)", expr):
            names = re.findall(r"smpp_bridge_\w+", expr)
            labels = set().union(*(family(n)[2] for n in names))
            wanted = {g.strip() for g in group.split(",")}
            assert wanted <= labels | {"instance", "job"}, (expr, wanted, labels)


def test_the_webhook_help_names_every_kind_it_counts(tmp_path):
    """The HELP line is what Prometheus and Grafana show an operator for the series.

    Expected: the HELP of smpp_bridge_webhook_deliveries_total names the kinds it counts, as the
    README does: status, mo and event (balance warnings and "sent" reports; see
    test_webhooks_by_kind_and_outcome_with_a_receiver_failing_500_then_410, which sees
    kind="event" counted).
    Found: "Webhook reports by kind (status, mo) and outcome (...)": the event kind is missing
    (bridge/metrics.py, Metrics.__init__, webhook_deliveries)."""
    d = Daemon(make_config(tmp_path))  # not started: only its metric definitions are read
    help_text = d.metrics.webhook_deliveries._documentation
    for kind in ("status", "mo", "event"):
        assert kind in help_text, f"kind {kind!r} not named in HELP: {help_text!r}"


# -- 1. every answer counted once, with the labels the caller saw --------------------------------


async def test_every_native_answer_is_counted_once_with_its_route_status_and_code(start, tmp_path):
    """Checked fine: 27 answers of the native face (sends, a replay, validation errors, every
    authentication refusal, a replayed nonce, 429s of the account rate and the daily quota, 503
    QUEUE_FULL, 415, admin with and without the token, 404 and 405 without a route) move
    smpp_bridge_api_requests_total by exactly one each, under the route template, the status
    and the code the client received; nothing else moves; the accept histogram counts the
    first-time 202s only; messages and segments accepted count what was accepted."""
    d = await start(cfg(tmp_path))
    port = d.http_port
    base = f"http://127.0.0.1:{port}"
    creds = await create_account(d, "shadow")
    slow = await create_account(d, "slow", tps=1)
    quota = await create_account(d, "quota", daily_quota=1)
    seen: Counter[tuple[str, str, str]] = Counter()

    async def call(c: BridgeClient, method: str, path: str, endpoint: str, **kw: Any) -> str:
        try:
            status, headers, _ = await c.request(method, path, **kw)
            code = "REPLAYED" if "Idempotent-Replayed" in headers else "OK"
        except BridgeError as exc:
            status, code = exc.status, exc.code
        seen[(endpoint, str(status), code)] += 1
        return code

    async def raw(method: str, path: str, endpoint: str, **kw: Any) -> str:
        status, _h, body = await _raw_json(method, base + path, **kw)
        code = body["error"]["code"] if status >= 400 else "OK"
        seen[(endpoint, str(status), code)] += 1
        return code

    send = "POST /v1/messages"
    before = await scrape(port)
    async with (
        client_for(port, creds) as c,
        client_for(port, slow) as cs,
        client_for(port, quota) as cq,
        client_for(port, {**creds, "app_secret": "x" * 40}) as bad_secret,
        client_for(port, {**creds, "app_key": creds["app_key"][:-1] + "Z"}) as bad_key,
    ):
        for x in (c, cs, cq, bad_secret, bad_key):
            x.max_retries = 0

        async def post(x: BridgeClient, data: dict[str, Any], key: str | None) -> str:
            return await call(x, "POST", "/v1/messages", send, json_body=data, idempotency_key=key)

        body = {"to": CN, "text": "counted"}
        assert await post(c, body, "k1") == "OK"
        assert await post(c, body, "k1") == "REPLAYED"
        assert await post(c, {"to": "+86139001390", "text": "2"}, "k2") == "OK"
        assert await post(c, {"to": "+86abc", "text": "x"}, "k3") == "INVALID_NUMBER"
        assert await post(c, {"to": CN}, "k4") not in ("OK", "REPLAYED")  # no text
        assert await post(c, body, None) == "IDEMPOTENCY_KEY_REQUIRED"
        assert await post(c, {"to": CN, "text": "other"}, "k1") == "IDEMPOTENCY_KEY_REUSED"
        # 429s: the account rate (1/s) and the daily quota (1)
        assert await post(cs, body, "s1") == "OK"
        assert await post(cs, body, "s2") == "ACCOUNT_RATE_LIMIT"
        assert await post(cq, body, "q1") == "OK"
        assert await post(cq, body, "q2") == "DAILY_QUOTA_EXCEEDED"
        # 503: the queue is full (as the store counts it, so housekeeping cannot undo it)
        assert d.store is not None and d.ctx is not None
        real_depth = d.store.queue_depth

        async def full(due_at: int | None = None) -> int:
            return 10**9

        d.store.queue_depth = full  # type: ignore[method-assign]
        d.ctx.queue_depth = 10**9
        try:
            assert await post(c, body, "k5") == "QUEUE_FULL"
        finally:
            d.store.queue_depth = real_depth  # type: ignore[method-assign]
            d.ctx.queue_depth = 0
        # reads
        mid = (await c.messages(limit=1))["messages"][0]["id"]
        seen[("GET /v1/messages", "200", "OK")] += 1
        assert await call(c, "GET", f"/v1/messages/{mid}", "GET /v1/messages/{id}") == "OK"
        assert await call(c, "GET", "/v1/messages/msg_nope", "GET /v1/messages/{id}") == "NOT_FOUND"
        # authentication refusals
        assert (
            await call(bad_secret, "GET", "/v1/account", "GET /v1/account") == "SIGNATURE_MISMATCH"
        )
        assert await call(bad_key, "GET", "/v1/account", "GET /v1/account") == "UNKNOWN_APP_KEY"
        assert await raw("GET", "/v1/account", "GET /v1/account") == "MISSING_AUTH"
        host = f"127.0.0.1:{port}"
        old = signing.sign_request(
            creds["app_key"], creds["app_secret"], "GET", "/v1/account", "", {"Host": host}, b"",
            datetime.now(UTC) - timedelta(minutes=20), secrets.token_urlsafe(24),
        )  # fmt: skip
        assert (
            await raw("GET", "/v1/account", "GET /v1/account", headers={"Host": host, **old})
            == "REQUEST_EXPIRED"
        )
        once = c.signed_headers("GET", "/v1/account", "", b"", {})
        assert await raw("GET", "/v1/account", "GET /v1/account", headers=once) == "OK"
        assert await raw("GET", "/v1/account", "GET /v1/account", headers=once) == "NONCE_REUSED"
    # no credentials needed, or another kind
    gz = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
    assert (
        await raw("POST", "/v1/messages", send, headers=gz, data=gzip.compress(b"{}"))
        == "UNSUPPORTED_MEDIA_TYPE"
    )
    assert await raw("GET", "/admin/accounts", "GET /admin/accounts") == "INVALID_ADMIN_TOKEN"
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    assert await raw("GET", "/admin/accounts", "GET /admin/accounts", headers=admin) == "OK"
    assert await raw("GET", "/healthz", "GET /healthz") == "OK"
    assert await raw("GET", "/nowhere/8613800138000", "unmatched") == "NOT_FOUND"
    assert await raw("POST", "/healthz", "unmatched") == "METHOD_NOT_ALLOWED"
    after = await scrape(port)

    assert sum(seen.values()) == 27
    assert requests_moved(before, after) == seen
    first_time = seen[(send, "202", "OK")]
    assert first_time == 4
    assert moved(before, after, "smpp_bridge_accept_latency_seconds_count") == {lab(): first_time}
    assert (
        moved(before, after, "smpp_bridge_accept_latency_seconds_bucket")[lab(le="+Inf")]
        == first_time
    )
    assert moved(before, after, "smpp_bridge_messages_accepted_total") == {lab(): 4}
    assert moved(before, after, "smpp_bridge_segments_accepted_total") == {lab(): 4}


# -- the Alibaba face ------------------------------------------------------------------------------


def _pct(s: str) -> str:
    return quote(s, safe="-_.~")


def _rpc_query(key: str, secret: str, action: str, **params: str) -> str:
    """An Alibaba RPC v1 (HMAC-SHA1) query string, signed with `secret`."""
    p = {
        "AccessKeyId": key, "Action": action, "Format": "JSON", "RegionId": "cn-hangzhou",
        "SignatureMethod": "HMAC-SHA1", "SignatureNonce": secrets.token_hex(16),
        "SignatureVersion": "1.0", "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "Version": "2017-05-25", **params,
    }  # fmt: skip
    canonical = "&".join(f"{_pct(k)}={_pct(v)}" for k, v in sorted(p.items()))
    to_sign = f"POST&{_pct('/')}&{_pct(canonical)}"
    mac = hmac.new((secret + "&").encode(), to_sign.encode(), hashlib.sha1).digest()
    return f"{canonical}&Signature={_pct(base64.b64encode(mac).decode())}"


async def _ali(port: int, query: str) -> tuple[int, dict[str, Any]]:
    url = URL(f"http://127.0.0.1:{port}/?{query}", encoded=True)
    async with aiohttp.ClientSession() as s, s.post(url) as r:
        return r.status, json.loads(await r.read())


async def _approved_template(d: Daemon, account_id: str) -> str:
    assert d.ctx is not None and d.store is not None
    now = d.ctx.now_ms()
    t = await review.submit_template(
        d.store, account_id, {"type": "verification", "name": "t", "content": "Code ${code}"},
        now, d.ctx.config, d.ctx.send_rules.filter,
    )  # fmt: skip
    await d.store.review_template(t.code, "approved", None, now)
    return t.code


async def test_every_alibaba_answer_is_counted_once_with_the_code_the_caller_got(start, tmp_path):
    """Checked fine: SendSms accepted, refused for its number (a 200 business refusal), for the
    account rate (Throttling.User), a wrong signature, an unknown AccessKeyId and an Action that
    does not exist each move smpp_bridge_api_requests_total by one, under "aliyun <Action>" (or
    "aliyun unknown"), the HTTP status and the Code the caller read; messages accepted count the
    accepted SendSms."""
    ali_port = free_port()
    d = await start(cfg(tmp_path, aliyun={"enabled": True, "port": ali_port}))
    creds = await create_account(d, "ali", tps=1)
    code = await _approved_template(d, creds["account"])
    key, secret = creds["app_key"], creds["app_secret"]
    seen: Counter[tuple[str, str, str]] = Counter()

    async def call(endpoint: str, k: str, s: str, action: str, **params: str) -> str:
        status, body = await _ali(ali_port, _rpc_query(k, s, action, **params))
        seen[(endpoint, str(status), body["Code"])] += 1
        return str(body["Code"])

    sms = {"SignName": "Acme", "TemplateCode": code, "TemplateParam": '{"code":"1234"}'}
    before = await scrape(d.http_port)

    async def send_sms(k: str, sec: str, number: str) -> str:
        return await call("aliyun SendSms", k, sec, "SendSms", PhoneNumbers=number, **sms)

    assert await send_sms(key, secret, "13800138000") == "OK"
    assert await send_sms(key, secret, "13800138001") == "Throttling.User"  # tps 1
    assert await send_sms(key, secret, "12") == "isv.MOBILE_NUMBER_ILLEGAL"  # a 200
    assert await send_sms(key, "wrong", "13800138001") == "SignatureDoesNotMatch"
    assert await send_sms("AKnobody000", secret, "13800138001") == "InvalidAccessKeyId.NotFound"
    assert await call("aliyun unknown", key, secret, "NoSuchAction") == "InvalidAction.NotFound"
    after = await scrape(d.http_port)
    assert requests_moved(before, after) == seen
    assert moved(before, after, "smpp_bridge_messages_accepted_total") == {lab(): 1}
    # The accepted SendSms is timed like a native 202 (refusals are not): a deployment using
    # only this face had no accept latency for the README's p99 alert.
    assert moved(before, after, "smpp_bridge_accept_latency_seconds_count") == {lab(): 1}


async def test_a_not_ready_answer_is_not_counted_ok(start, tmp_path):
    """/readyz answering 503 (here: its only SMSC never binds) is counted with code NOT_READY,
    not OK: a dashboard of refusals by code missed every not-ready answer."""
    data = cfg(tmp_path)
    data["smscs"][0]["port"] = free_port()  # nothing listens there: never up
    d = await start(data, wait=None)
    before = await scrape(d.http_port)
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{d.http_port}/readyz") as r:
        assert r.status == 503
    after = await scrape(d.http_port)
    assert requests_moved(before, after)[("GET /readyz", "503", "NOT_READY")] == 1


async def test_ready_reads_what_readyz_answers_at_each_scrape(start, tmp_path):
    """smpp_bridge_ready is 1 while /readyz answers 200; 0 once the SMSC is gone and once the
    store's WAL fsync has failed (both 503 on /readyz, which names the problem); 1 again when
    the SMSC is back. An alert on it needs no probe of its own."""
    d = await start(cfg(tmp_path))
    url = f"http://127.0.0.1:{d.http_port}/readyz"

    async def readyz() -> tuple[int, list[str]]:
        async with aiohttp.ClientSession() as s, s.get(url) as r:
            return r.status, (await r.json())["problems"]

    assert (await scrape(d.http_port)).val("smpp_bridge_ready") == 1
    assert await readyz() == (200, [])
    await d.sim.stop()
    await wait_until(lambda: not d.connectors["sim"].is_up, 10)
    assert (await scrape(d.http_port)).val("smpp_bridge_ready") == 0
    assert await readyz() == (503, ["no SMSC bound"])
    await d.sim.start()
    await wait_until(lambda: d.connectors["sim"].is_up, 20)
    assert (await scrape(d.http_port)).val("smpp_bridge_ready") == 1
    d.store._runner._sync_failed = OSError(5, "Input/output error")  # as a failed fsync leaves it
    try:
        assert (await scrape(d.http_port)).val("smpp_bridge_ready") == 0
        assert await readyz() == (503, ["store not reachable"])
    finally:
        d.store._runner._sync_failed = None


async def test_malformed_http_on_the_alibaba_port_is_counted_as_the_alibaba_face(start, tmp_path):
    """Every answer of the Alibaba face is counted under endpoint "aliyun <Action>" / "aliyun
    unknown" with the Code the caller received (see the test above), and the native face's
    parse errors under "unparsable" / MALFORMED_HTTP.

    Expected: a request the HTTP parser refuses on the Alibaba port, answered 400
    `isv.INVALID_PARAMETERS`, is counted with the Code it carried (as every other Alibaba
    answer is) and apart from the native port's series (e.g. endpoint "aliyun unknown"), so a
    dashboard tells which port garbage arrives on and a query for that Code finds it.
    Found: endpoint "unparsable", code "MALFORMED_HTTP", the very series of the native port:
    `JsonErrorServer.answer` (bridge/api/http_errors.py) always counts ENDPOINT and the native
    code, whatever `render` (bridge/compat/aliyun_api.py render_unparsed) answered."""
    ali_port = free_port()
    d = await start(cfg(tmp_path, aliyun={"enabled": True, "port": ali_port}))
    garbage = b"GET /?AccessKeyId=x HTTP/1.1 extra\r\n\r\n"

    async def send_raw(port: int) -> tuple[int, dict[str, Any]]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(garbage)
            await writer.drain()
            raw = await asyncio.wait_for(reader.read(), 10)
        finally:
            writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)

    before = await scrape(d.http_port)
    status, native = await send_raw(d.http_port)
    assert (status, native["error"]["code"]) == (400, "MALFORMED_HTTP")
    middle = await scrape(d.http_port)
    assert requests_moved(before, middle) == {("unparsable", "400", "MALFORMED_HTTP"): 1}
    status, answer = await send_raw(ali_port)
    assert (status, answer["Code"]) == (400, "isv.INVALID_PARAMETERS")
    after = await scrape(d.http_port)
    got = requests_moved(middle, after)
    assert sum(got.values()) == 1, got
    ((endpoint, st, code),) = got
    assert st == "400"
    assert (endpoint, code) != ("unparsable", "MALFORMED_HTTP") and code == answer["Code"], (
        f"the Alibaba port's refusal (Code {answer['Code']}) was counted as endpoint="
        f"{endpoint!r} code={code!r}: the native port's series"
    )


# -- 2. submits, throttles, receipts -------------------------------------------------------------

STATES = {
    "DELIVRD": "delivered", "UNDELIV": "undeliverable", "DELETED": "undeliverable",
    "EXPIRED": "expired", "REJECTD": "rejected", "UNKNOWN": "unknown",
}  # fmt: skip


def _receipts_after_their_results(d: Daemon) -> None:
    """Hold each batch of receipts until every part it names has its submit result recorded
    (its SMSC message id stored), up to 10 s, then apply it."""
    store = d.store
    assert store is not None
    apply_receipts = store.apply_receipts

    def recorded(items: list[Any]) -> bool:
        sql = "SELECT 1 FROM segments WHERE smsc = ? AND smsc_msg_id = ?"
        with contextlib.closing(sqlite3.connect(d.config.store.path)) as db:
            return all(db.execute(sql, (r.smsc, r.smsc_msg_id)).fetchone() for r in items)

    async def after_their_results(items: list[Any], now: int) -> Any:
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: recorded(items), 10)
        return await apply_receipts(items, now)

    store.apply_receipts = after_their_results  # type: ignore[method-assign]


async def test_receipts_by_state_and_submits_by_status_match_the_smsc(start, tmp_path):
    """Checked fine: one message per receipt stat, then 12 messages on a link answering 30 %
    ESME_RTHROTTLED and 30 % ESME_RSYSERR: segments submitted by status, throttle events and the
    RTT count equal the simulator's own counters exactly (every attempt counted once), and
    receipts by state are each stat's documented state."""
    d = await start(cfg(tmp_path, smscs=[{"max_transient_retries": 30}]))
    creds = await create_account(d)
    sim = d.sim
    # Receipts 200 ms after the submit, not 10, and each applied only once its submit result
    # is recorded: one that comes before is counted unmatched (kept, and applied when the
    # result lands), which a loaded CI machine made happen once at 10 ms (unmatched 1 where
    # this test wants none), and can at 200 ms (a result recorded 0.3 s late: unmatched 18).
    sim.receipt_delay_ms = 200
    _receipts_after_their_results(d)
    c0 = dict(sim.counters)
    before = await scrape(d.http_port)
    async with client_for(d.http_port, creds) as c:
        for i, stat in enumerate(STATES):
            sim.outcomes = {stat: 1.0}
            r = await c.send(f"+86138001380{i:02d}", text=f"stat {stat}")
            await final_status(c, r["messages"][0]["id"])
        sim.outcomes = {"DELIVRD": 1.0}
        sim.throttle_ratio, sim.syserr_ratio = 0.3, 0.3
        mids = [(await c.send(f"+86139001390{i:02d}", text=f"busy {i}"))["messages"][0]["id"]
                for i in range(12)]  # fmt: skip
        for mid in mids:
            await final_status(c, mid, 30)
        sim.throttle_ratio = sim.syserr_ratio = 0.0
    await wait_until(
        lambda: sim.counters["receipts_acked"] == sim.counters["receipts_scheduled"], 10
    )
    after = await scrape(d.http_port)
    did = {k: sim.counters[k] - c0[k] for k in sim.counters}
    assert did["throttled"] > 0 and did["syserr"] > 0  # 0.7 ** ~30 attempts each
    assert moved(before, after, "smpp_bridge_segments_submitted_total") == {
        lab(smsc="sim", status="ESME_ROK"): did["submit_ok"],
        lab(smsc="sim", status="ESME_RTHROTTLED"): did["throttled"],
        lab(smsc="sim", status="ESME_RSYSERR"): did["syserr"],
    }
    assert moved(before, after, "smpp_bridge_throttle_events_total") == {
        lab(smsc="sim"): did["throttled"]
    }
    assert moved(before, after, "smpp_bridge_submit_rtt_seconds_count") == {
        lab(smsc="sim"): did["submit_sm"]
    }
    want: Counter[str] = Counter(STATES.values())
    want["delivered"] += did["submit_ok"] - len(STATES)
    assert moved(before, after, "smpp_bridge_receipts_total") == {
        lab(smsc="sim", state=s): n for s, n in want.items()
    }
    assert moved(before, after, "smpp_bridge_receipts_unmatched_total") == {}


async def test_window_in_use_rtt_timeout_and_connection_lost(start, tmp_path):
    """Checked fine: submits the SMSC holds show in smpp_bridge_window_in_use (3 of 3) and the
    queue depth; answered 0.6 s later, each RTT lands in the (0.5, 1] bucket; two left
    unanswered past response_timeout_s count TIMEOUT twice (no RTT); the ones in flight when the
    connection drops count CONNECTION_LOST; the window reads 0 afterwards and the bind is back."""
    # response_timeout_s 2: the answers 0.6 s after the submits keep 1.4 s to spare on a loaded
    # machine (at 1 s a slow scrape in between turned them into time-outs).
    d = await start(cfg(tmp_path, smscs=[{"response_timeout_s": 2}]))
    creds = await create_account(d)
    sim, loop = d.sim, asyncio.get_running_loop()
    real = sim._on_submit
    held: list[tuple[Any, Any]] = []
    held_at: list[float] = []

    def hold(sess: Any, pdu: Any, out: list[bytes], now: float) -> None:
        held.append((sess, pdu))
        held_at.append(loop.time())

    def answer(sess: Any, pdu: Any) -> None:
        buf: list[bytes] = []
        real(sess, pdu, buf, loop.time())
        sess.write(b"".join(buf))

    sim._on_submit = hold
    try:
        before = await scrape(d.http_port)
        async with client_for(d.http_port, creds) as c:
            for i in range(3):
                await c.send(f"+86138001381{i:02d}", text=f"held {i}")
            await wait_until(lambda: len(held) == 3, 5)
            waiting = await scrape(d.http_port)
            assert waiting.val("smpp_bridge_window_in_use", smsc="sim") == 3
            assert waiting.val("smpp_bridge_queue_depth") == 3
            for (sess, pdu), at in zip(held, held_at, strict=True):  # each 0.6 s after it came
                await asyncio.sleep(max(0.0, at + 0.6 - loop.time()))
                answer(sess, pdu)
            held.clear()
            held_at.clear()
            await wait_until(lambda: d.connectors["sim"].snapshot()["window"]["in_use"] == 0, 5)
            answered = await scrape(d.http_port)
            assert answered.val("smpp_bridge_window_in_use", smsc="sim") == 0
            rtt = moved(before, answered, "smpp_bridge_submit_rtt_seconds_bucket")
            assert rtt.get(lab(smsc="sim", le="0.5"), 0) == 0, rtt
            assert rtt[lab(smsc="sim", le="1.0")] == 3, rtt
            assert moved(before, answered, "smpp_bridge_segments_submitted_total") == {
                lab(smsc="sim", status="ESME_ROK"): 3
            }
            # never answered: TIMEOUT after response_timeout_s
            for i in range(2):
                await c.send(f"+86138001382{i:02d}", text=f"lost {i}")
            await wait_until(lambda: len(held) == 2, 5)

            async def timed_out() -> Scrape | None:
                m = await scrape(d.http_port)
                n = m.val("smpp_bridge_segments_submitted_total", smsc="sim", status="TIMEOUT")
                return m if n >= 2 else None

            late = await wait_until(timed_out, 10, 0.1)
            assert moved(answered, late, "smpp_bridge_segments_submitted_total") == {
                lab(smsc="sim", status="TIMEOUT"): 2
            }
            assert moved(answered, late, "smpp_bridge_submit_rtt_seconds_count") == {}
            # in flight when the link drops: CONNECTION_LOST
            await c.send("+8613800138300", text="dropped")
            await wait_until(lambda: d.connectors["sim"].snapshot()["window"]["in_use"] >= 1, 5)
            in_flight = d.connectors["sim"].snapshot()["window"]["in_use"]
            for sess in list(sim._sessions):
                sess.writer.transport.abort()
            sim._on_submit = real

            async def rebound() -> Scrape | None:
                m = await scrape(d.http_port)
                n = m.val("smpp_bridge_segments_submitted_total", smsc="sim",
                          status="CONNECTION_LOST")  # fmt: skip
                up = m.val("smpp_bridge_binds_up", smsc="sim") == 1
                return m if n >= in_flight and up else None

            after = await wait_until(rebound, 10, 0.05)
            lost = moved(late, after, "smpp_bridge_segments_submitted_total")
            assert lost.get(lab(smsc="sim", status="CONNECTION_LOST")) == in_flight, lost
            assert after.val("smpp_bridge_smsc_up", smsc="sim") == 1
    finally:
        sim._on_submit = real


async def test_a_submit_accepted_after_its_timeout_shows_as_accepted(start, tmp_path):
    """HELP of smpp_bridge_segments_submitted_total: "submit_sm answered, by SMSC and status
    (ESME_ROK, ..., or TIMEOUT / CONNECTION_LOST when no answer came)". The daemon keeps
    listening after response_timeout_s and records a late ESME_ROK as the part's acceptance
    (bridge/pipeline/dispatcher.py `_on_late`): the part is sent, delivered and billed.

    Expected: the SMSC's late ESME_ROK shows in segments_submitted (as ESME_ROK, or a series
    of its own for late answers), besides the TIMEOUT counted when the time-out ran out: a
    carrier answering just past response_timeout_s must not read as one that accepts nothing.
    Found: TIMEOUT 1 and no accepting series at all, while the message ends delivered (its
    receipt may also beat the late id to the store and add receipts_unmatched 1): a slow
    carrier reads 100 % TIMEOUT on the dashboard while everything is delivered.
    `Connector._late_submit` (bridge/smpp/connector.py) tells the dispatcher only; `on_submit`,
    the metrics hook (bridge/app.py `_connector`), never hears of the late answer."""
    d = await start(cfg(tmp_path, smscs=[{"response_timeout_s": 1}]))
    creds = await create_account(d)
    sim, loop = d.sim, asyncio.get_running_loop()
    real = sim._on_submit
    held: list[tuple[Any, Any]] = []
    sim._on_submit = lambda sess, pdu, out, now: held.append((sess, pdu))
    try:
        before = await scrape(d.http_port)
        async with client_for(d.http_port, creds) as c:
            r = await c.send(CN, text="answered late")

            async def timed_out() -> bool:
                m = await scrape(d.http_port)
                return (
                    m.val("smpp_bridge_segments_submitted_total", smsc="sim", status="TIMEOUT") == 1
                )

            await wait_until(timed_out, 5, 0.05)
            assert len(held) == 1  # not resent yet: this is the one submit_sm there was
            sess, pdu = held.pop()
            buf: list[bytes] = []
            real(sess, pdu, buf, loop.time())  # ESME_ROK, 1 s late; its receipt follows
            sim._on_submit = real
            sess.write(b"".join(buf))
            m = await final_status(c, r["messages"][0]["id"], 20)
        assert m["status"] == "delivered", m
        assert sim.counters["submit_sm"] == 1  # the SMSC saw one submit_sm, and accepted it
        after = await scrape(d.http_port)
    finally:
        sim._on_submit = real
    sub = moved(before, after, "smpp_bridge_segments_submitted_total")
    assert sub.get(lab(smsc="sim", status="TIMEOUT")) == 1, sub
    accepted = sum(v for k, v in sub.items() if "ESME_ROK" in dict(k)["status"])
    assert accepted == 1, (
        f"an SMSC that accepted the part (late) and delivered it reads {sub} in "
        "smpp_bridge_segments_submitted_total"
    )


async def test_accept_latency_and_loop_lag_put_a_known_delay_in_its_bucket(start, tmp_path):
    """Checked fine: a send whose durable commit takes 0.6 s is one observation in the (0.5, 1]
    bucket of smpp_bridge_accept_latency_seconds (sum 0.6-1 s); the event loop blocked for
    0.7 s is one lag observation in (0.5, 1] under role "all"; the lag timer ticks about ten
    times a second."""
    d = await start(cfg(tmp_path))
    creds = await create_account(d)
    assert d.store is not None
    real_accept = d.store.accept

    async def slow_accept(*args: Any, **kw: Any) -> Any:
        await asyncio.sleep(0.6)  # 0.4 s to spare for a loaded machine
        return await real_accept(*args, **kw)

    before = await scrape(d.http_port)
    t_before = time.monotonic()
    d.store.accept = slow_accept  # type: ignore[method-assign]
    try:
        async with client_for(d.http_port, creds) as c:
            await c.send(CN, text="slow commit")
    finally:
        d.store.accept = real_accept  # type: ignore[method-assign]
    time.sleep(0.7)  # the whole event loop stands still
    await asyncio.sleep(0.6)
    after = await scrape(d.http_port)
    running = time.monotonic() - t_before - 0.7  # the time the loop could tick
    acc = moved(before, after, "smpp_bridge_accept_latency_seconds_bucket")
    assert acc.get(lab(le="0.5"), 0) == 0 and acc[lab(le="1.0")] == 1, acc
    assert (
        0.6
        <= after.val("smpp_bridge_accept_latency_seconds_sum")
        - before.val("smpp_bridge_accept_latency_seconds_sum")
        < 1.0
    )
    lag = moved(before, after, "smpp_bridge_event_loop_lag_seconds_bucket")
    assert {dict(k)["role"] for k in lag} == {"all"}
    assert lag[lab(role="all", le="1.0")] - lag.get(lab(role="all", le="0.5"), 0) == 1, lag
    ticks = moved(before, after, "smpp_bridge_event_loop_lag_seconds_count")[lab(role="all")]
    assert 0.4 * running / 0.1 <= ticks <= running / 0.1 + 3, (ticks, running)


# -- 3. webhooks, balance warnings, MO, unmatched receipts ---------------------------------------


class FlakyThenGone(WebhookReceiver):
    """A customer endpoint answering 500 to the first POST of each report, 410 to any later one
    (it was taken down): each report is retried once, then dead-lettered."""

    def __init__(self) -> None:
        super().__init__()
        self.tried: set[str] = set()
        self.answers: list[tuple[str, int]] = []

    async def _handle(self, request: web.Request) -> web.Response:
        items = json.loads(await request.read())
        ids = {str(i.get("webhook_id")) for i in items}
        status = 410 if ids & self.tried else 500
        self.tried |= ids
        self.answers.extend((i, status) for i in sorted(ids))
        return web.Response(status=status)


async def test_webhooks_by_kind_and_outcome_with_a_receiver_failing_500_then_410(start, tmp_path):
    """Checked fine: a send that crosses the low-balance threshold and the recipient's reply,
    to a receiver answering 500 to each report and then 410: its status report, its balance.low
    event and the MO report count "retry" once and "dead" once each, nothing "delivered";
    exactly one balance warning for the crossing, none for an account without a threshold
    spending as much; the reply counts one mo_received."""
    receiver = FlakyThenGone()
    await receiver.start()
    try:
        d = await start(cfg(tmp_path, webhooks={"retry_schedule_s": [1], "timeout_s": 2}))
        creds = await create_account(
            d, ready=False, status_callback_url=receiver.url, mo_callback_url=receiver.url,
            low_balance_threshold=100_000,
        )  # fmt: skip
        assert d.store is not None
        await ready_to_send(d.store, creds["account"], int(time.time() * 1000), funds=130_000)
        plain = await create_account(d, "plain")
        before = await scrape(d.http_port)
        async with client_for(d.http_port, creds) as c, client_for(d.http_port, plain) as p:
            r = await c.send("+8613800138300", text="hi", sign_name="Acme")  # 130_000 -> 85_000
            await final_status(c, r["messages"][0]["id"])
            for i in range(3):
                await p.send(f"+86138001384{i:02d}", text="no threshold")
        await d.sim.inject_mo("8613800138300", "smpp-bridge", "reply " * 60)  # 3 parts
        want = {
            lab(kind=kind, outcome=outcome): 1
            for kind in ("status", "event", "mo")
            for outcome in ("retry", "dead")
        }

        async def settled() -> bool:
            m = await scrape(d.http_port)
            return moved(before, m, "smpp_bridge_webhook_deliveries_total") == want

        with contextlib.suppress(AssertionError):
            await wait_until(settled, 10, 0.2)
        after = await scrape(d.http_port)
        assert moved(before, after, "smpp_bridge_webhook_deliveries_total") == want, (
            receiver.answers
        )
        assert sorted(s for _i, s in receiver.answers) == [410] * 3 + [500] * 3
        assert moved(before, after, "smpp_bridge_balance_warnings_total") == {lab(): 1}
        assert moved(before, after, "smpp_bridge_mo_received_total") == {lab(smsc="sim"): 1}
        assert moved(before, after, "smpp_bridge_mo_incomplete_total") == {}
    finally:
        await receiver.stop()


async def test_mo_once_incomplete_apart_and_unmatched_and_unparsable_receipts(start, tmp_path):
    """Checked fine: an MO and the same deliver_sm again count one mo_received; a long MO one;
    one part of two, delivered by the stale-part sweep, counts one mo_incomplete (not
    mo_received), the part sent twice still once; a receipt for an id never sent counts as
    delivered, unmatched_total 1 and pending 1; a receipt without an id counts "unparsable"
    and nothing unmatched."""
    d = await start(cfg(tmp_path))
    assert d.inbound is not None
    before = await scrape(d.http_port)
    mo = ShortMessage(
        source_addr="8613800138400", destination_addr="smpp-bridge", short_message=b"hello"
    )
    assert await d.inbound.on_deliver("sim", mo) == C.ESME_ROK
    assert await d.inbound.on_deliver("sim", mo) == C.ESME_ROK  # the SMSC resends it
    await d.sim.inject_mo("8613800138401", "smpp-bridge", "long reply " * 30)
    udh = bytes([5, 0, 3, 0x42, 2, 1])
    half = ShortMessage(
        source_addr="8613800138402", destination_addr="smpp-bridge", esm_class=0x40,
        short_message=udh + b"first half",
    )  # fmt: skip
    for _ in range(2):
        assert await d.inbound.on_deliver("sim", half) == C.ESME_ROK
    await wait_until(lambda: d.inbound.mo == 2, 5)
    await d._flush_stale_mo(int(time.time() * 1000) + 301_000)
    receipt = ShortMessage(
        source_addr="8613800138000", destination_addr="smpp-bridge", esm_class=0x04,
        short_message=b"id:DEADBEEF sub:001 dlvrd:001 submit date:2601010000 "
        b"done date:2601010000 stat:DELIVRD err:000 text:",
    )  # fmt: skip
    assert await d.inbound.on_deliver("sim", receipt) == C.ESME_ROK
    no_id = ShortMessage(
        source_addr="8613800138000", destination_addr="smpp-bridge", esm_class=0x04,
        short_message=b"stat:DELIVRD err:000 text:",
    )  # fmt: skip
    assert await d.inbound.on_deliver("sim", no_id) == C.ESME_ROK
    after = await scrape(d.http_port)
    assert moved(before, after, "smpp_bridge_mo_received_total") == {lab(smsc="sim"): 2}
    assert moved(before, after, "smpp_bridge_mo_incomplete_total") == {lab(smsc="sim"): 1}
    assert moved(before, after, "smpp_bridge_receipts_total") == {
        lab(smsc="sim", state="delivered"): 1,
        lab(smsc="sim", state="unparsable"): 1,
    }
    assert moved(before, after, "smpp_bridge_receipts_unmatched_total") == {lab(): 1}
    assert after.val("smpp_bridge_receipts_unmatched_pending") == 1


# -- 4. gauges -----------------------------------------------------------------------------------


async def test_queue_depth_counts_unsent_segments_scheduled_included(start, tmp_path):
    """Checked fine: two messages of 2 segments scheduled for tomorrow read queue_depth 4 (the
    README: accepted and not yet sent, counted at each scrape); a cancel takes 2 away."""
    d = await start(cfg(tmp_path))
    creds = await create_account(d)
    when = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    async with client_for(d.http_port, creds) as c:
        ids = []
        for i in range(2):
            r = await c.send(f"+86138001385{i:02d}", text="x" * 200, scheduled_at=when)
            assert r["messages"][0]["segments"] == 2
            ids.append(r["messages"][0]["id"])
        assert (await scrape(d.http_port)).val("smpp_bridge_queue_depth") == 4
        await c.request("POST", f"/v1/messages/{ids[0]}/cancel")
    assert (await scrape(d.http_port)).val("smpp_bridge_queue_depth") == 2


async def test_bind_gauges_follow_a_dropped_bind_and_a_removed_smsc(start, tmp_path):
    """Checked fine: the simulator dropping every bind right after it is made reads smsc_up 0,
    binds_up 0, binds_configured 1, window_size 0, and all come back when it stops; an SMSC
    removed by a reload disappears from every per-SMSC gauge at the next scrape."""
    data = cfg(tmp_path, smscs=[{}, {"name": "b"}])  # b: a port nobody listens on
    d = await start(data)
    m = await scrape(d.http_port)
    assert m.val("smpp_bridge_smsc_up", smsc="b") == 0
    assert m.val("smpp_bridge_binds_configured", smsc="b") == 1
    d.sim.drop_after_pdus = 1  # the next PDU on the open bind is its last; new binds die at once
    async with client_for(d.http_port, await create_account(d)) as c:
        await c.send(CN, text="on a link that drops")

    def down(s: Scrape) -> bool:
        return (
            s.val("smpp_bridge_smsc_up", smsc="sim") == 0
            and s.val("smpp_bridge_binds_up", smsc="sim") == 0
            and s.val("smpp_bridge_window_size", smsc="sim") == 0
        )

    async def scraped_down() -> Scrape | None:
        s = await scrape(d.http_port)
        return s if down(s) else None

    s = await wait_until(scraped_down, 10, 0.05)
    assert s.val("smpp_bridge_binds_configured", smsc="sim") == 1
    d.sim.drop_after_pdus = 0

    async def back() -> bool:
        s = await scrape(d.http_port)
        return (
            s.val("smpp_bridge_smsc_up", smsc="sim") == 1
            and s.val("smpp_bridge_window_size", smsc="sim") == 50
        )

    await wait_until(back, 10, 0.1)
    data["smscs"] = data["smscs"][:1]
    assert d.config_path is not None
    Path(d.config_path).write_text(yaml.safe_dump(data))  # noqa: ASYNC240 (a small local file)
    assert await d.reload_from_file()
    m = await scrape(d.http_port)
    left = [k for k in m.samples if ("smsc", "b") in k[1] and not k[0].endswith("_total")]
    left = [k for k in left if not k[0].startswith("smpp_bridge_submit_rtt")]
    assert not left, left
    assert m.val("smpp_bridge_smsc_up", smsc="sim") == 1


async def test_a_receive_only_smsc_reads_up_while_its_bind_is_up(start, tmp_path):
    """README: "Alerts worth having: `smpp_bridge_smsc_up == 0` for a minute"; the table gives
    smsc_up as "bind state". An MO-only link (`bind_mode: receiver`, a carrier's long number
    delivering replies) is a configuration the daemon supports.

    Expected: with its receiver bind up (binds_up 1 of 1 configured, its MO counted), the SMSC
    reads smpp_bridge_smsc_up 1, and 0 only when that bind is down, so the documented alert
    tells a healthy link from a dead one.
    Found: smpp_bridge_smsc_up{smsc="mo"} 0 while bound, the same as when down: the alert fires
    for ever for a healthy link. `Metrics.observe_smscs` (bridge/metrics.py) takes `up` from
    `Connector.is_up` (bridge/smpp/connector.py), which looks at transmitting binds only."""
    data = cfg(
        tmp_path,
        smscs=[
            # no receipts asked: a transmitter receives none (refused since session 47)
            {"bind_mode": "transmitter", "registered_delivery": 0},
            {"name": "mo", "bind_mode": "receiver"},
        ],
    )
    data["smscs"][1]["port"] = data["sim"]["port"]
    d = await start(data)
    await wait_until(lambda: any(b.up for b in d.connectors["mo"]._binds), 10)
    before = await scrape(d.http_port)
    assert before.val("smpp_bridge_binds_up", smsc="mo") == 1
    assert before.val("smpp_bridge_binds_configured", smsc="mo") == 1
    await d.sim.inject_mo("8613800138500", "smpp-bridge", "a reply on the MO link")
    await wait_until(lambda: d.inbound is not None and d.inbound.mo == 1, 5)
    after = await scrape(d.http_port)
    assert moved(before, after, "smpp_bridge_mo_received_total") == {lab(smsc="mo"): 1}
    assert after.val("smpp_bridge_smsc_up", smsc="mo") == 1, (
        "a receive-only SMSC with its bind up reads smpp_bridge_smsc_up 0 (the README's alert "
        "fires for ever)"
    )


# -- 5. retention --------------------------------------------------------------------------------


async def test_retention_purged_counts_exactly_the_rows_deleted(start, tmp_path):
    """Checked fine: Daemon._retain (the sweeper's step) 40 days on with retention_days 31:
    smpp_bridge_retention_purged_total moves by the rows that left each table, by kind, and no
    kind that purged nothing appears."""
    shift = [0.0]
    d = await start(
        cfg(tmp_path, billing={"enabled": False}, store={"retention_days": 31}),
        clock=lambda: time.time() + shift[0],
    )
    creds = await create_account(d)
    async with client_for(d.http_port, creds) as c:
        for i in range(3):
            r = await c.send(f"+86138001386{i:02d}", text="old news")
            await final_status(c, r["messages"][0]["id"])
    await d.sim.inject_mo("8613800138600", "smpp-bridge", "old reply")
    await wait_until(lambda: d.inbound is not None and d.inbound.mo == 1, 5)
    db = sqlite3.connect(str(Path(d.config.store.path)))
    try:
        tables = {"messages": "messages", "mo": "mo_inbox", "daily_counts": "daily_counts"}

        def rows() -> dict[str, int]:
            return {
                k: db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for k, t in tables.items()
            }

        had = rows()
        assert had["messages"] == 3 and had["mo"] == 1
        before = await scrape(d.http_port)
        shift[0] = 40 * 86_400
        await d._retain(int(d.clock() * 1000))
        left = rows()
    finally:
        db.close()
    after = await scrape(d.http_port)
    want = {lab(kind=k): had[k] - left[k] for k in tables if had[k] - left[k]}
    assert want[lab(kind="messages")] == 3
    assert moved(before, after, "smpp_bridge_retention_purged_total") == want


# -- 6. server.workers: 2 ------------------------------------------------------------------------


def _acceptor_pids(log: Path) -> dict[int, int]:
    pids: dict[int, int] = {}
    for m in re.finditer(r"acceptor (\d+) started \(pid (\d+)\)", log.read_text()):
        pids[int(m.group(1))] = int(m.group(2))
    return pids


def _cli_account(cfg_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMPP_BRIDGE_")}
    env.pop(MULTIPROC_ENV, None)
    out = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "account", "create", "acme", "--raw-text",
         "--topup", "100000", "--config", str(cfg_path)],
        capture_output=True, text=True, check=True, env=env, timeout=60,
    )  # fmt: skip
    return json.loads(out.stdout)


COUNTED = (
    "smpp_bridge_messages_accepted_total",
    "smpp_bridge_segments_accepted_total",
    "smpp_bridge_accept_latency_seconds_count",
    "smpp_bridge_segments_submitted_total",
    "smpp_bridge_submit_rtt_seconds_count",
    "smpp_bridge_receipts_total",
    "smpp_bridge_mo_received_total",
    "smpp_bridge_throttle_events_total",
)


def _counted(s: Scrape) -> dict[tuple[str, Labels], float]:
    """The counters driven by this test's own traffic (not scrapes, probes or the lag timer)."""
    out = {k: v for k, v in s.samples.items() if k[0] in COUNTED}
    for (name, labels), v in s.samples.items():
        if name == "smpp_bridge_api_requests_total":
            endpoint = dict(labels)["endpoint"]
            if endpoint not in ("GET /metrics", "GET /readyz"):
                out[(name, labels)] = v
    return out


@pytest.mark.slow
async def test_workers_sum_counters_once_and_do_not_multiply_gauges(tmp_path, monkeypatch):
    """Checked fine, with `server.workers: 2` as a real `smpp-bridge run`: every scrape, whichever
    acceptor answers, returns each counter once (the sum of the three processes: both acceptors
    accepted some of the sends, the owner submitted); bind, window and queue gauges read as one
    process does, not doubled; a kill -9 of an acceptor and its restart leave every counter
    exactly where it was (not back, not doubled); the sends after it add exactly themselves;
    lag is labelled owner / acceptor; an MO and throttles counted by the owner show too."""
    files = tmp_path / "prom"
    monkeypatch.setenv(MULTIPROC_ENV, str(files))  # inherited by the daemon: files we can see
    data = cfg(tmp_path, server={"workers": 2})
    proc = DaemonProcess(tmp_path / "d", data)
    control = data["sim"]["control_port"]
    proc.start()
    try:
        await proc.wait_ready(30)
        creds = _cli_account(proc.path)
        await wait_until(lambda: len(_acceptor_pids(proc.log)) == 2, 15)
        port = proc.port

        async def each(n: int = 6) -> list[Scrape]:
            return [await scrape(port) for _ in range(n)]

        async def both_see_the_bind() -> bool:
            # An acceptor reads the owner's binds from its heartbeat, each every second: ready
            # (one acceptor answered) does not mean the other has read it yet (CI saw a 0).
            return all(s.val("smpp_bridge_binds_up", smsc="sim") == 1 for s in await each())

        await wait_until(both_see_the_bind, 10, 0.2)
        for s in await each():
            assert s.val("smpp_bridge_binds_up", smsc="sim") == 1
            assert s.val("smpp_bridge_binds_configured", smsc="sim") == 1
            assert s.val("smpp_bridge_smsc_up", smsc="sim") == 1
            assert s.val("smpp_bridge_window_size", smsc="sim") == 50
            assert s.val("smpp_bridge_queue_depth") == 0
        base = await scrape(port)

        async def send_batch(tag: str, n: int) -> None:
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
                BridgeClient(
                    f"http://127.0.0.1:{port}", creds["app_key"], creds["app_secret"], session=s
                ) as c,
            ):
                c.max_retries = 0
                ids = []
                for i in range(n):
                    r = await c.send(
                        f"+86138001387{i:02d}", text=f"{tag} {i}", idempotency_key=f"{tag}{i}"
                    )
                    ids.append(r["messages"][0]["id"])
                await c.send("+8613800138700", text=f"{tag} 0", idempotency_key=f"{tag}0")  # replay
                with contextlib.suppress(BridgeError):
                    await c.send("+86abc", text="x")
                for mid in ids:
                    await final_status(c, mid)

        async with aiohttp.ClientSession() as s:
            async with s.post(
                f"http://127.0.0.1:{control}/config", json={"throttle_ratio": 0.3}
            ) as r:
                assert r.status == 200
            await send_batch("a", 8)
            async with s.post(
                f"http://127.0.0.1:{control}/config", json={"throttle_ratio": 0.0}
            ) as r:
                assert r.status == 200
            async with s.post(
                f"http://127.0.0.1:{control}/mo",
                json={"source": "8613800138700", "destination": "smpp-bridge", "text": "hi"},
            ) as r:
                assert r.status == 200
            async with s.get(f"http://127.0.0.1:{control}/stats") as r:
                sim_counters = (await r.json())["counters"]

        async def flushed() -> Scrape | None:  # each process writes its files once a second
            m = await scrape(port)
            ok = m.val("smpp_bridge_receipts_total", smsc="sim", state="delivered") == 8
            ok = ok and m.val("smpp_bridge_mo_received_total", smsc="sim") == 1
            return m if ok else None

        await wait_until(flushed, 10, 0.2)
        await asyncio.sleep(1.3)  # one more flush period: nothing left unwritten anywhere
        first = await each()
        ref = _counted(first[0])
        for s in first:
            assert _counted(s) == ref
        m = first[0]
        post = {"endpoint": "POST /v1/messages"}
        assert m.val("smpp_bridge_api_requests_total", **post, status="202", code="OK") == 8
        assert m.val("smpp_bridge_api_requests_total", **post, status="202", code="REPLAYED") == 1
        assert (
            m.val("smpp_bridge_api_requests_total", **post, status="400", code="INVALID_NUMBER")
            == 1
        )
        assert m.val("smpp_bridge_messages_accepted_total") == 8
        assert m.val("smpp_bridge_accept_latency_seconds_count") == 8
        assert m.val("smpp_bridge_segments_submitted_total", smsc="sim", status="ESME_ROK") == 8
        assert m.val("smpp_bridge_throttle_events_total", smsc="sim") == sim_counters["throttled"]
        assert (
            m.val("smpp_bridge_submit_rtt_seconds_count", smsc="sim") == sim_counters["submit_sm"]
        )
        assert {dict(k)["role"] for k in m.series("smpp_bridge_event_loop_lag_seconds_count")} == {
            "owner",
            "acceptor",
        }
        per_file = [
            {
                json.loads(key)[1]: v
                for key, v, _ts, _pos in MmapedDict.read_all_values_from_file(str(f))
            }
            for f in files.glob("counter_*.db")
        ]
        assert len(per_file) == 3  # the owner and both acceptors wrote counters
        assert sum(f.get("smpp_bridge_messages_accepted_total", 0) for f in per_file) == 8
        answered = [f for f in per_file if f.get("smpp_bridge_api_requests_total", 0)]
        assert len(answered) == 2  # both acceptors answered some of the requests summed above

        victim = _acceptor_pids(proc.log)[0]
        os.kill(victim, signal.SIGKILL)
        await wait_until(lambda: _acceptor_pids(proc.log).get(0) not in (None, victim), 15, 0.05)
        await wait_until(lambda: handles_sighup(_acceptor_pids(proc.log)[0]), 15, 0.05)
        await asyncio.sleep(1.0)  # the new acceptor listening and past its first flush
        for s in await each(8):
            assert _counted(s) == ref, "a counter moved across the kill -9 and restart"
            assert s.val("smpp_bridge_binds_up", smsc="sim") == 1
            assert s.val("smpp_bridge_binds_configured", smsc="sim") == 1
            assert s.val("smpp_bridge_window_size", smsc="sim") == 50

        await send_batch("b", 4)

        async def counted_again() -> Scrape | None:
            m = await scrape(port)
            return (
                m
                if m.val("smpp_bridge_receipts_total", smsc="sim", state="delivered") == 12
                else None
            )

        await wait_until(counted_again, 10, 0.2)
        await asyncio.sleep(1.3)
        for s in await each():
            got = _counted(s)
            assert s.val("smpp_bridge_messages_accepted_total") == 12
            assert s.val("smpp_bridge_accept_latency_seconds_count") == 12
            assert s.val("smpp_bridge_api_requests_total", **post, status="202", code="OK") == 12
            assert (
                s.val("smpp_bridge_api_requests_total", **post, status="202", code="REPLAYED") == 2
            )
            assert (
                s.val("smpp_bridge_segments_submitted_total", smsc="sim", status="ESME_ROK") == 12
            )
            assert all(got.get(k, 0) >= v for k, v in ref.items())
        assert base.val("smpp_bridge_messages_accepted_total") == 0
    finally:
        proc.stop()


# -- 7. several instances on PostgreSQL, as the dashboard sums them -------------------------------


def _panel_aggregation(metric: str) -> str:
    """The aggregation ("sum", "max", ...) the dashboard applies to a per-SMSC gauge."""
    dash = json.loads((ROOT / "config" / "grafana-dashboard.json").read_text())
    found: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for p in panels:
            for t in p.get("targets", []):
                m = re.match(r"\s*(\w+) by \(smsc\) \(" + metric + r"\{", t.get("expr", ""))
                if m:
                    found.append(m.group(1))
            walk(p.get("panels", []))

    walk(dash["panels"])
    assert len(found) == 1, (metric, found)
    return found[0]


def _aggregate(how: str, values: list[float]) -> float:
    return {"sum": sum, "max": max, "min": min}[how](values)


async def test_fleet_dashboard_shows_each_configured_bind_once(tmp_path, pg_dsn):
    """README: several daemons sharing a PostgreSQL store "are one target each; the dashboard
    sums them by instance", and they share each SMSC's configured binds (each opens only the
    slots it holds).

    Expected: two instances, one SMSC with `binds: 2`, both binds up (held by the fleet):
    the dashboard's "Binds up / configured" panel, its queries applied to the two scrapes,
    reads 2 up of 2 configured.
    Found: 2 up of 4 configured: every instance reports all the configured binds in
    smpp_bridge_binds_configured (Connector.snapshot counts `self._binds`, bridge/smpp/
    connector.py, whatever slots the BindGate gives it) and the panel sums them
    (`sum by (smsc)`, config/grafana-dashboard.json): a healthy fleet shows half its binds
    missing (N times the configured count with N instances)."""
    sim_port = free_port()
    sim = SimSmsc(replace(make_config(tmp_path).sim, port=sim_port, control_port=free_port()))
    await sim.start()
    daemons: list[Daemon] = []
    try:
        for name in ("a", "b"):
            data = cfg(
                tmp_path, name,
                store={"engine": "postgres", "dsn": pg_dsn},
                sim={"enabled": False, "port": sim_port},
                smscs=[{"port": sim_port, "binds": 2}],
            )  # fmt: skip
            path = tmp_path / name / "bridge.yaml"
            path.write_text(yaml.safe_dump(data))
            d = Daemon(load_config(path, env={}), instance=f"inst-{name}")
            daemons.append(d)
            await d.start()

        async def both_bound() -> list[Scrape] | None:
            s = [await scrape(d.http_port) for d in daemons]
            up = sum(x.val("smpp_bridge_binds_up", smsc="sim") for x in s)
            return s if up == 2 else None  # the fleet holds both binds, wherever

        scrapes = await wait_until(both_bound, 20, 0.2)
        per = {
            name: [x.val(name, smsc="sim") for x in scrapes]
            for name in ("smpp_bridge_binds_up", "smpp_bridge_binds_configured")
        }
        up = _aggregate(_panel_aggregation("smpp_bridge_binds_up"), per["smpp_bridge_binds_up"])
        configured = _aggregate(
            _panel_aggregation("smpp_bridge_binds_configured"),
            per["smpp_bridge_binds_configured"],
        )
        assert up == 2
        assert configured == 2, (
            f"the dashboard reads {up:g} up of {configured:g} configured binds for a fleet "
            f"whose 2 configured binds are all up (per instance: {per})"
        )
    finally:
        for d in reversed(daemons):
            await d.stop()
        await sim.stop()
