"""Session 13's third adversarial review: 97f3c41 (an audit trail of operators' actions) and
bc0ec90 (templates keep an international flag).

Real aiohttp servers (tests/integration/conftest.py), a real `smpp-bridge run` with
server.workers: 2 (tests/e2e/harness.py), the CLI's own `main` and `python -m bridge.cli`, the
official Alibaba SDK, real SQLite and PostgreSQL (tests/store_engines.py; CI=1 needs it).

Checked right:
- every mutating admin route (read from the router: 18 routes, a new one fails the test until
  covered) gets exactly one row: METHOD + route template, the answer's status, code and request
  id, the peer; reads, GET /admin/audit included, none. No row holds the app and webhook secrets
  of account create / key create, a callback's user:password or query token (POST and PATCH
  bodies), the DNC CSV's numbers or the replay ids; "+86 138-0013-8000" in the opt-out path is
  stored +86*******8000 (both engines);
- refused by the token (wrong, missing), unrouted, 405, HEAD: no row; refused by the handler
  (400 bad JSON / MISSING_FIELD / INVALID_FIELD, 404, 409 KEY_ALREADY_REVOKED / ACCOUNT_CLOSED,
  413 BODY_TOO_LARGE): a row each;
- X-Operator: 64 and 65 characters, 6000, non-ASCII, fullwidth, not UTF-8, a tab, a space,
  "api:root", "cli:root", empty: `api` or `api:<name>` as documented; folded, NUL or CR headers are
  refused by the HTTP parser (400, no action, no row); two headers: the first is recorded;
- a trail write that fails (OSError) changes no answer, the action stands, one ERROR line each;
- paging: a full page gives a cursor and then an empty page with none, pages walk without
  gaps, bad parameters are 400 with their codes (both engines);
- the trail survives Retention (billing on and off), purge_history, account close and a
  recipient's erasure (both engines);
- workers daemon: 25 concurrent actions over new connections (acceptors) recorded once each
  with their own request ids; a client gone before its answer: the action done and recorded;
- CLI: the classification of every subcommand of build_parser / add_parsers; every store
  command run for real on both engines: one row per command that may change something (with the
  refusal code of KEY_ALREADY_REVOKED / NOT_FOUND and exit status 1), none for reads,
  `--callback URL` and `--mo-callback=URL` cut to scheme, host and path, no printed secret and
  no --config path in any row; `python -m bridge.cli ... --callback=URL` likewise;
- templates: TemplateType 0-3 read back by QuerySmsTemplate (0-3), QuerySmsTemplateList
  (TemplateType 2/0/1/6, OuterTemplateType 0-3) and natively (type, international) on both
  engines; ModifySmsTemplate and UpdateSmsTemplate switch 3 -> 1 -> 3, keep the flag without a
  TemplateType, 3 -> 0 clears it (revision 5), and turn a marketing template rejected at once
  into an international one; on a template that is not rejected both faces refuse and the flag
  stays (also through approval); a database from before migration 0016 upgrades on both engines
  (old templates read 0/1, a rejected one corrects into type 3, new type-3 templates work).

Found (all fixed in the commit after this review except 5, fixed in session 14):
1. GET /admin/audit refuses every real `since`/`until` (unix ms, 13 digits): admin_ops._INT
   takes at most 10 digits -> 400 "since: an integer from 0 to 4611686018427387904". The window
   filter is unusable; `cursor` is capped alike, below the documented 2**62.
2. audit.scrub cuts user:password@ at the first "@", the webhook client (yarl) at the last: for
   `--callback https://u:pa@ss-word@hooks.example/cb` (accepted) the row keeps "ss-word@".
3. PostgreSQL only: a %00 in an admin path (POST /admin/accounts/acme%00/disable) is answered
   500 INTERNAL_ERROR (SQLite 404), and its audit row fails to be written too: no trace.
4. (minor) cli_action reads raw argv, argparse takes abbreviations: `template review --acc X`
   (the queue) is recorded as a decision, `secrets reseal --dry` as a real reseal.
5. (minor) `dnc import` / `tariff add` refusals made before the store opens (bad ID, missing
   file) leave no row, unlike the same refusals through the admin API.
6. (minor) `audit list --limit -1`: the whole trail on SQLite, the driver's error on PostgreSQL.
7. (arguable) UpdateSmsTemplate's IntlType (the SDK: required with TemplateType 3; 1 =
   promotional) is ignored: an international promotional template is kept as a notification,
   outside the marketing rules.
The fixes: 19-digit integers in the admin list parameters; scrub cuts to the last "@" before
the path; a path with a NUL is refused 400 once authenticated, and NULs are spelled out in a
row; the CLI classifies with the parsed arguments (the queue, --dry-run); `audit list` checks
--limit and --after; IntlType sets an international template's kind.

Doubts (not asserted): with logging.mask_bodies false the trail keeps full numbers, never purged
and untouched by erasure; PostgreSQL ids (BIGSERIAL) are taken before commit, so a reader tailing
by cursor can skip a row another process commits late; `tariff list` / `bill show` may seed the
configured tariff (a write) while classified read-only, and `db migrate` is not recorded; any
6+-digit path segment is masked (an all-digit account name, sign name or DNC list id loses which
one), and a national number shows its prefix (138****8000); query strings are not recorded
(PUT /admin/dnc's country/strict) and path tokens are kept by design; the test server cancels
handlers on disconnect (handler_cancellation=True) and then the row is lost after the store
write, the daemon does not (checked), but a shutdown past shutdown_timeout could; the flag does
not affect sending, and a native marketing template flagged international reads back as 3.
"""

from __future__ import annotations

import asyncio
import base64
import getpass
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp.test_utils import TestServer
from alibabacloud_dysmsapi20170525 import models

import tests.store_engines as engines
from bridge import audit, review
from bridge.cli import main as cli_main
from bridge.compat.aliyun_api import make_aliyun_app
from bridge.retention import DAY_MS, Retention
from bridge.store.models import AuditEntry
from tests.e2e.harness import ADMIN_TOKEN as E2E_TOKEN
from tests.e2e.harness import DaemonProcess, config_dict, wait_until
from tests.integration.conftest import ADMIN_TOKEN, ApiServer, Clock, Creds, Reply, start_api
from tests.integration.test_aliyun_api import (
    NOTIFY_TEXT,
    SEC,
    VERIFY_TEXT,
    Face,
    local_midnight_ms,
)
from tests.sending import TEST_INTERNATIONAL

# The CLI run in this process replaces the root handlers and level and sets body masking.
pytestmark = pytest.mark.usefixtures("logging_restored")

engine = engines.engine

CN = "+8613800138000"
TZ = "Asia/Shanghai"
READS = ("GET", "HEAD", "OPTIONS")


# -- helpers ---------------------------------------------------------------------------------------


class Trail:
    """Reads the audit trail a row at a time: each admin request is checked to have added exactly
    one row (or none), matching its answer."""

    def __init__(self, api: ApiServer) -> None:
        self.api = api
        self.last = 0
        self.seen: set[tuple[str, str]] = set()
        self.rows: list[AuditEntry] = []

    async def one(
        self, reply: Reply, method: str, route: str, status: int, code: str | None = None
    ) -> AuditEntry:
        rows = await self.api.store.audit_page(self.last, 100)
        assert len(rows) == 1, (method, route, reply.status, rows)
        row = rows[0]
        self.last = row.id
        self.rows.append(row)
        assert (reply.status, reply.code) == (status, code), (route, reply.status, reply.text)
        assert (row.action, row.status, row.code) == (f"{method} {route}", status, code)
        assert row.request_id == reply.request_id and row.remote == "127.0.0.1"
        assert row.actor == "api"
        self.seen.add((method, route))
        return row

    async def none(self) -> None:
        assert await self.api.store.audit_page(self.last, 100) == []


def mutating_admin_routes(api: ApiServer) -> set[tuple[str, str]]:
    """Every (method, route) of the admin API that may change something, from the router."""
    out = set()
    for route in api.server.app.router.routes():
        resource = route.resource
        if resource is None or not resource.canonical.startswith("/admin/"):
            continue
        if route.method not in READS:
            out.add((route.method, resource.canonical))
    return out


async def creds_of(api: ApiServer, created: dict[str, Any]) -> Creds:
    account = await api.store.get_account(created["account"]["id"])
    assert account is not None
    return api.creds_for(account, created["app_key"], created["app_secret"])


async def raw_request(port: int, head: bytes) -> tuple[int, bytes]:
    """Exactly these bytes on a new connection: (status, whole answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return int(data.split(b" ", 2)[1]), data


# -- A. the admin API: every mutating endpoint, one row each, nothing secret ----------------------


async def test_every_admin_mutation_writes_one_row_and_no_secret(engine_api: ApiServer) -> None:
    """Each mutating admin route (taken from the router, so a new one fails here until covered)
    gets exactly one row with its route, status and code; reads get none; the secrets and
    numbers the requests and answers carried are in no row (both engines)."""
    api = engine_api
    now = api.ctx.now_ms()
    await api.ctx.tariff_book.load(now)
    t = Trail(api)
    secrets_seen: list[str] = []
    callback = "https://hook-user:hook-pass@hooks.example/cb?token=CBTOKEN1"
    r = await api.admin(
        "POST", "/admin/accounts", json={"name": "acme", "status_callback_url": callback}
    )
    await t.one(r, "POST", "/admin/accounts", 201)
    secrets_seen += [r.json["app_secret"], r.json["webhook_secret"]]
    acc = r.json["account"]["id"]
    creds = await creds_of(api, r.json)
    r = await api.admin("GET", f"/admin/accounts/{acc}")
    assert r.status == 200
    await t.none()
    r = await api.admin(
        "PATCH",
        f"/admin/accounts/{acc}",
        json={"mo_callback_url": "https://mo-user:mo-pass@hooks.example/mo?sig=MOTOKEN2"},
    )
    await t.one(r, "PATCH", "/admin/accounts/{ref}", 200)
    r = await api.admin("PATCH", f"/admin/accounts/{acc}", json={"tps": "fast"})
    await t.one(r, "PATCH", "/admin/accounts/{ref}", 400, "INVALID_FIELD")
    for action in ("disable", "enable"):
        r = await api.admin("POST", f"/admin/accounts/{acc}/{action}")
        row = await t.one(r, "POST", "/admin/accounts/{ref}/{action}", 200)
        assert row.target == f"/admin/accounts/{acc}/{action}"
    r = await api.admin("POST", f"/admin/accounts/{acc}/keys")
    await t.one(r, "POST", "/admin/accounts/{ref}/keys", 201)
    secrets_seen.append(r.json["app_secret"])
    key = r.json["app_key"]
    r = await api.admin("POST", f"/admin/keys/{key}/revoke")
    row = await t.one(r, "POST", "/admin/keys/{key}/revoke", 200)
    assert key in row.target  # the key's public id: which key was revoked
    r = await api.admin("POST", f"/admin/keys/{key}/revoke")
    await t.one(r, "POST", "/admin/keys/{key}/revoke", 409, "KEY_ALREADY_REVOKED")
    r = await api.admin("POST", "/admin/webhooks/replay", json={"ids": [987654321]})
    await t.one(r, "POST", "/admin/webhooks/replay", 200)
    r = await api.admin("POST", f"/admin/accounts/{acc}/signs", json={"name": "Globex"})
    await t.one(r, "POST", "/admin/accounts/{ref}/signs", 201)
    r = await api.admin(
        "POST", f"/admin/accounts/{acc}/signs/Globex/review", json={"decision": "approve"}
    )
    await t.one(r, "POST", "/admin/accounts/{ref}/signs/{name}/review", 200)
    r = await api.request(
        "POST",
        "/v1/templates",
        creds=creds,
        json={"type": "notification", "name": "n", "content": NOTIFY_TEXT},
    )
    assert r.status == 201, r.json
    await t.none()  # the customer's API is not the operators'
    code = r.json["code"]
    r = await api.admin("POST", f"/admin/templates/{code}/review", json={"decision": "approve"})
    await t.one(r, "POST", "/admin/templates/{code}/review", 200)
    await api.store.add_optouts(acc, [CN], "mo", now)
    r = await api.admin("DELETE", f"/admin/accounts/{acc}/optouts/%2B86%20138-0013-8000")
    row = await t.one(r, "DELETE", "/admin/accounts/{ref}/optouts/{number}", 200)
    assert row.target.endswith("/optouts/+86*******8000"), row.target
    r = await api.admin(
        "PUT",
        "/admin/dnc/list-1",
        query="country=CN",
        body=b"13900139000\n+8613700137000\n1065*\n",
        content_type="text/csv",
    )
    await t.one(r, "PUT", "/admin/dnc/{id}", 200)
    r = await api.admin(
        "PUT", "/admin/dnc/list-1", query="country=cn", body=b"1\n", content_type="text/csv"
    )
    await t.one(r, "PUT", "/admin/dnc/{id}", 400, "INVALID_FIELD")
    r = await api.admin("DELETE", "/admin/dnc/list-1")
    await t.one(r, "DELETE", "/admin/dnc/{id}", 200)
    tariff = {
        "version": "v2",
        "effective_at": now + DAY_MS,
        "tiers": [{"price": 42_000}],
        "international": TEST_INTERNATIONAL,
    }
    r = await api.admin("POST", "/admin/tariffs", json=tariff)
    await t.one(r, "POST", "/admin/tariffs", 201)
    r = await api.admin(
        "POST", f"/admin/accounts/{acc}/topups", json={"amount_micro": 1_000_000, "ref": "p-1"}
    )
    await t.one(r, "POST", "/admin/accounts/{ref}/topups", 201)
    r = await api.admin(
        "POST", f"/admin/accounts/{acc}/topups", json={"amount_micro": 1_000_000, "ref": "p-1"}
    )
    await t.one(r, "POST", "/admin/accounts/{ref}/topups", 200)  # the same payment: not again
    r = await api.admin(
        "POST", f"/admin/accounts/{acc}/vouchers", json={"amount_micro": 5, "expires_at": None}
    )
    await t.one(r, "POST", "/admin/accounts/{ref}/vouchers", 201)
    r = await api.admin(
        "POST", f"/admin/accounts/{acc}/cards", json={"face_value_micro": 999_000_000}
    )
    await t.one(r, "POST", "/admin/accounts/{ref}/cards", 201)
    r = await api.admin("POST", "/admin/bills/settle", json={"month": "2020-01"})
    await t.one(r, "POST", "/admin/bills/settle", 200)
    r = await api.admin("POST", f"/admin/accounts/{acc}/close")
    await t.one(r, "POST", "/admin/accounts/{ref}/close", 200)
    owed = r.json["refund_owed_micro"]
    r = await api.admin(
        "POST", f"/admin/accounts/{acc}/refunds", json={"amount_micro": owed + 1, "ref": "W1"}
    )
    await t.one(r, "POST", "/admin/accounts/{ref}/refunds", 409, "REFUND_NOT_OWED")
    r = await api.admin("POST", f"/admin/accounts/{acc}/keys")
    await t.one(r, "POST", "/admin/accounts/{ref}/keys", 409, "ACCOUNT_CLOSED")

    assert t.seen == mutating_admin_routes(api)
    listed = await api.admin("GET", "/admin/audit", query="limit=1000")
    await t.none()
    blob = json.dumps(listed.json)
    assert len(listed.json["entries"]) == len(t.rows)
    for secret in [
        *secrets_seen,
        "CBTOKEN1",
        "hook-pass",
        "MOTOKEN2",
        "mo-pass",
        "13900139000",
        "13700137000",
        "13800138000",
        "0013-8000",
        "987654321",
    ]:
        assert secret not in blob, secret


async def test_refusals_before_a_handler_are_not_rows_and_after_one_are(
    api_server: ApiServer,
) -> None:
    """Token refused (401), admin API disabled (403), no route (404), a method the route does not
    take (405), HEAD: logged only. Refused by the handler (400, 404, 409, 413): a row each."""
    api = api_server
    await api.create_account("acme")
    t = Trail(api)
    r = await api.admin("POST", "/admin/accounts/acme/disable", token="wrong-token-000000")
    assert (r.status, r.code) == (401, "INVALID_ADMIN_TOKEN")
    r = await api.admin("POST", "/admin/accounts/acme/disable", token=None)
    assert r.status == 401
    r = await api.admin("POST", "/admin/nothing/here")
    assert r.status == 404
    r = await api.admin("DELETE", "/admin/accounts")
    assert r.status == 405
    r = await api.admin("POST", "/admin/audit")
    assert r.status == 405
    r = await api.admin("HEAD", "/admin/accounts")
    await t.none()
    r = await api.admin("POST", "/admin/accounts", body=b"{", content_type="application/json")
    await t.one(r, "POST", "/admin/accounts", 400, r.code)
    r = await api.admin("POST", "/admin/accounts", json={})
    await t.one(r, "POST", "/admin/accounts", 400, "MISSING_FIELD")
    r = await api.admin("POST", "/admin/accounts/nosuch/close")
    await t.one(r, "POST", "/admin/accounts/{ref}/close", 404, "NOT_FOUND")
    r = await api.admin(
        "PUT", "/admin/dnc/big", body=b"1\n" * 2_000_000, content_type="text/csv", validate=False
    )
    await t.one(r, "PUT", "/admin/dnc/{id}", 413, "BODY_TOO_LARGE")


@pytest.mark.parametrize(
    ("header", "actor"),
    [
        (b"alice", "api:alice"),
        (b"  bob  ", "api:bob"),
        (b"x" * 64, "api:" + "x" * 64),
        (b"x" * 65, "api"),
        (b"a" * 6000, "api"),
        ("ålice".encode(), "api"),
        ("ａｌｉｃｅ".encode(), "api"),  # fullwidth: not the ASCII name it looks like
        (b"\xff\xfe", "api"),  # not UTF-8
        (b"alice\tbob", "api"),
        (b"alice bob", "api"),
        (b"api:root", "api"),
        (b"cli:root", "api"),  # cannot pass for the CLI
        (b"", "api"),
    ],
)
async def test_x_operator_header_abuse(api_server: ApiServer, header: bytes, actor: str) -> None:
    api = api_server
    await api.create_account("acme")
    status, _ = await raw_request(
        api.server.port,
        b"POST /admin/accounts/acme/disable HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n"
        b"X-Operator: " + header + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    assert status == 200
    [row] = await api.store.audit_page(0, 10)
    assert row.actor == actor


@pytest.mark.parametrize("header", [b"alice\r\n evil", b"ali\x00ce", b"alice\rbob"])
async def test_x_operator_with_line_breaks_is_refused_by_the_parser(
    api_server: ApiServer, header: bytes
) -> None:
    """A folded or control-character header never reaches the handler: no action, no row."""
    api = api_server
    creds = await api.create_account("acme")
    status, _ = await raw_request(
        api.server.port,
        b"POST /admin/accounts/acme/disable HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n"
        b"X-Operator: " + header + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    assert status == 400
    assert await api.store.audit_page(0, 10) == []
    account = await api.store.get_account(creds.account_id)
    assert account is not None and account.status == "active"


async def test_two_x_operator_headers_record_the_first(api_server: ApiServer) -> None:
    api = api_server
    await api.create_account("acme")
    status, _ = await raw_request(
        api.server.port,
        b"POST /admin/accounts/acme/disable HTTP/1.1\r\nHost: x\r\n"
        b"Authorization: Bearer " + ADMIN_TOKEN.encode() + b"\r\n"
        b"X-Operator: alice\r\nX-Operator: mallory\r\nContent-Length: 0\r\n"
        b"Connection: close\r\n\r\n",
    )
    assert status == 200
    [row] = await api.store.audit_page(0, 10)
    assert row.actor == "api:alice"


async def test_a_failed_trail_write_does_not_change_the_answer(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    api = api_server
    creds = await api.create_account("acme")
    normal = await api.admin("POST", "/admin/accounts/acme/disable")
    await api.admin("POST", "/admin/accounts/acme/enable")
    refused = await api.admin("POST", "/admin/accounts/nosuch/disable")
    before = await api.store.audit_page(0, 100)
    calls = 0

    async def broken(entry: AuditEntry) -> None:
        nonlocal calls
        calls += 1
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(api.store, "audit_add", broken)
    with caplog.at_level(logging.ERROR, logger="bridge.api"):
        r = await api.admin("POST", "/admin/accounts/acme/disable")
        r2 = await api.admin("POST", "/admin/accounts/nosuch/disable")
    assert calls == 2
    assert r.status == normal.status and set(r.json) == set(normal.json)
    assert r.json["status"] == "disabled"
    assert (r2.status, r2.code) == (refused.status, refused.code)
    account = await api.store.get_account(creds.account_id)
    assert account is not None and account.status == "disabled"  # the action stands
    assert [rec.message for rec in caplog.records].count("audit trail write failed") == 2
    monkeypatch.undo()
    assert await api.store.audit_page(0, 100) == before


async def test_a_nul_in_an_admin_path_is_refused_and_recorded(
    engine_api: ApiServer, request: pytest.FixtureRequest
) -> None:
    """Found (fixed), PostgreSQL only: a %00 in an admin path reached PostgreSQL as a text
    parameter: 500 INTERNAL_ERROR (SQLite: 404), and the audit row, whose target held the same
    NUL, was not written either. Any path with a NUL is now refused 400 INVALID_REQUEST once
    authenticated (no store holds one), on both engines, and recorded with the NUL spelled."""
    del request
    api = engine_api
    await api.create_account("acme")
    r = await api.admin("POST", "/admin/accounts/acme%00/disable", validate=False)
    rows = await api.store.audit_page(0, 10)
    assert (r.status, r.code, len(rows)) == (400, "INVALID_REQUEST", 1)
    assert rows[0].target == "/admin/accounts/acme\\0/disable"
    token_refused = await api.admin("POST", "/admin/accounts/acme%00/disable", token="x" * 20)
    assert token_refused.status == 401 and len(await api.store.audit_page(0, 10)) == 1


async def _five_actions(api: ApiServer) -> tuple[list[int], list[int]]:
    """Five recorded admin actions a second apart: (their ids, their `at`)."""
    api.clock.freeze()
    await api.create_account("acme")
    ats = []
    for i in range(5):
        ats.append(api.ctx.now_ms())
        r = await api.admin("POST", f"/admin/accounts/acme/{('disable', 'enable')[i % 2]}")
        assert r.status == 200
        api.clock.advance(1)
    page = await api.admin("GET", "/admin/audit")
    entries = page.json["entries"]
    assert [e["at"] for e in entries] == ats
    assert page.json["next_cursor"] is None  # 5 < 100
    return [e["id"] for e in entries], ats


async def test_audit_paging_edges(engine_api: ApiServer) -> None:
    api = engine_api
    ids, _ = await _five_actions(api)
    assert ids == sorted(ids) and len(set(ids)) == 5
    # Exactly a page: a cursor, then an empty page without one.
    full = await api.admin("GET", "/admin/audit", query="limit=5")
    assert full.json["next_cursor"] == str(ids[-1])
    after = await api.admin("GET", "/admin/audit", query=f"cursor={ids[-1]}&limit=5")
    assert after.json == {"entries": [], "next_cursor": None}
    pages, cursor = [], "0"
    while cursor is not None:
        page = await api.admin("GET", "/admin/audit", query=f"cursor={cursor}&limit=2")
        pages.append([e["id"] for e in page.json["entries"]])
        cursor = page.json["next_cursor"]
    assert pages == [ids[:2], ids[2:4], ids[4:]]
    big = await api.admin("GET", "/admin/audit", query="cursor=9999999999")
    assert big.status == 200 and big.json["entries"] == []
    for query, code in [
        ("cursor=-1", "INVALID_FIELD"),
        ("limit=1001", "INVALID_FIELD"),
        ("limit=0", "INVALID_FIELD"),
        ("until=abc", "INVALID_FIELD"),
        ("since=1.5", "INVALID_FIELD"),
        ("cursor=%C2%B2", "INVALID_FIELD"),
        ("curser=3", "UNKNOWN_FIELD"),
        ("limit=1&limit=2", None),
    ]:
        bad = await api.admin("GET", "/admin/audit", query=query)
        assert bad.status == 400, (query, bad.json)
        if code:
            assert bad.code == code, (query, bad.json)
    assert len(await api.store.audit_page(0, 100)) == 5  # reading the trail is not an action


async def test_audit_since_until_take_unix_ms(api_server: ApiServer) -> None:
    api = api_server
    ids, ats = await _five_actions(api)
    q = f"since={ats[1]}&until={ats[4]}&limit=2"
    first = await api.admin("GET", "/admin/audit", query=q)
    assert first.status == 200, first.json
    assert [e["id"] for e in first.json["entries"]] == ids[1:3]
    nxt = await api.admin("GET", "/admin/audit", query=f"{q}&cursor={first.json['next_cursor']}")
    assert [e["id"] for e in nxt.json["entries"]] == ids[3:4]
    assert nxt.json["next_cursor"] is None
    empty = await api.admin("GET", "/admin/audit", query=f"since={ats[2]}&until={ats[2]}")
    assert empty.json["entries"] == []
    big = await api.admin("GET", "/admin/audit", query=f"cursor={2**62}")
    assert big.status == 200 and big.json["entries"] == []


async def test_the_trail_survives_retention_close_and_erasure(engine_api: ApiServer) -> None:
    api = engine_api
    creds = await api.create_account("acme")
    r = await api.admin("POST", "/admin/accounts/acme/disable", headers={"X-Operator": "ops"})
    assert r.status == 200
    await api.admin("POST", "/admin/accounts/acme/enable")
    r = await api.request("POST", f"/v1/recipients/{CN}/erase", creds=creds)
    assert r.status in (200, 202), r.json
    r = await api.admin("POST", f"/admin/accounts/{creds.account_id}/close")
    assert r.status == 200
    before = await api.store.audit_page(0, 100)
    assert len(before) == 3
    far = api.ctx.now_ms() + 400 * DAY_MS
    await Retention(api.store, 1).run(far, billing=False, tz=TZ)
    await Retention(api.store, 1).run(far, billing=True, tz=TZ)
    await api.store.purge_history(far, far, "2099-01-01")
    assert await api.store.audit_page(0, 100) == before
    assert before[0].actor == "api:ops"


# -- A. the multi-process daemon -------------------------------------------------------------------


async def test_workers_daemon_records_every_admin_action_once(tmp_path: Path) -> None:
    """server.workers: 2 — the acceptors serve /admin: every action one row, from whichever
    process answered, with that answer's request id."""
    cfg = config_dict(tmp_path, server={"workers": 2}, logging={"level": "WARNING"})
    daemon = DaemonProcess(tmp_path, cfg)
    daemon.start()
    try:
        await daemon.wait_ready(30)
        base = f"http://127.0.0.1:{daemon.port}"
        auth = {"Authorization": f"Bearer {E2E_TOKEN}"}
        answers: list[tuple[int, str]] = []
        connector = aiohttp.TCPConnector(force_close=True)  # new connections: both acceptors
        async with aiohttp.ClientSession(connector=connector) as s:
            async with s.post(f"{base}/admin/accounts", json={"name": "acme"}, headers=auth) as r:
                assert r.status == 201
                answers.append((r.status, r.headers["X-Request-Id"]))

            async def act(i: int) -> None:
                ref, action = (("acme", "disable"), ("acme", "enable"), ("nosuch", "close"))[i % 3]
                path = f"/admin/accounts/{ref}/{action}"
                hdrs = {**auth, "X-Operator": f"op{i}"}
                async with s.post(base + path, headers=hdrs) as r:
                    answers.append((r.status, r.headers["X-Request-Id"]))

            await asyncio.gather(*(act(i) for i in range(24)))
            # A client gone before the answer: the action is done, and recorded.
            body = b"".join(b"+86139%08d\n" % i for i in range(2000))
            _, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
            writer.write(
                b"PUT /admin/dnc/gone HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + E2E_TOKEN.encode()
                + b"\r\nContent-Type: text/csv\r\nContent-Length: %d\r\n\r\n" % len(body)
                + body
            )
            await writer.drain()
            writer.transport.abort()

            async def imported() -> bool:
                async with s.get(f"{base}/admin/dnc", headers=auth) as r:
                    return any(d["id"] == "gone" for d in (await r.json())["lists"])

            await wait_until(imported, 10)

            async def audited() -> list[dict[str, object]] | None:
                # The gone client's row is written after the import it records: wait for it
                # (the state), not for a fixed pause that a loaded machine can outlast.
                async with s.get(f"{base}/admin/audit?limit=1000", headers=auth) as r:
                    assert r.status == 200
                    rows: list[dict[str, object]] = (await r.json())["entries"]
                done = any(e["action"] == "PUT /admin/dnc/{id}" for e in rows)
                return rows if done else None

            entries = await wait_until(audited, 20, 0.1)
        *acted, gone = entries
        got = sorted((e["status"], e["request_id"]) for e in acted)
        assert got == sorted(answers)
        assert len({e["id"] for e in entries}) == 26
        assert (gone["action"], gone["status"]) == ("PUT /admin/dnc/{id}", 200)
    finally:
        daemon.stop()


# -- B. the CLI ------------------------------------------------------------------------------------


def _classify(argv: list[str]) -> tuple[str, str] | None:
    """As bridge.cli does it: the raw words, and the two flags from the parsed arguments."""
    from bridge.cli import build_parser

    args = build_parser().parse_args([*argv])
    return audit.cli_action(
        argv,
        queue=args.command == "template" and args.action == "review" and args.code is None,
        dry_run=bool(getattr(args, "dry_run", False)),
    )


@pytest.mark.parametrize(
    ("argv", "action"),
    [
        # every store subcommand of build_parser / add_parsers
        (["account", "create", "acme"], "cli account create"),
        (["account", "list"], None),
        (["account", "show", "acme"], None),
        (["account", "update", "acme", "--tps", "5"], "cli account update"),
        (["account", "disable", "acme"], "cli account disable"),
        (["account", "enable", "acme"], "cli account enable"),
        (["account", "rotate-webhook-secret", "acme"], "cli account rotate-webhook-secret"),
        (["account", "close", "acme"], "cli account close"),
        (["key", "create", "acme"], "cli key create"),
        (["key", "list", "acme"], None),
        (["key", "revoke", "k"], "cli key revoke"),
        (["sign", "list"], None),
        (["sign", "list", "--status", "pending", "--account", "acme"], None),
        (["sign", "add", "acme", "Globex"], "cli sign add"),
        (["sign", "review", "acme", "Globex", "--approve"], "cli sign review"),
        (["template", "list", "--account", "acme"], None),
        (["template", "review"], None),
        (["template", "review", "-c", "f.yaml", "--account", "acme"], None),
        (["template", "review", "--account=acme"], None),
        (["template", "review", "SMS_1", "--approve"], "cli template review"),
        (["template", "review", "--account", "a", "SMS_1", "--reject", "x"], "cli template review"),
        (["template", "review", "--revision", "2", "SMS_1", "--approve"], "cli template review"),
        (["template", "review", "--reject", "", "SMS_1"], "cli template review"),
        (["bill", "topup", "acme", "5"], "cli bill topup"),
        (["bill", "voucher", "acme", "5", "--never"], "cli bill voucher"),
        (["bill", "card", "acme", "999"], "cli bill card"),
        (["bill", "balance", "acme"], None),
        (["bill", "settle", "--month", "2020-01"], "cli bill settle"),
        (["bill", "show", "acme", "--month", "2020-01"], None),
        (["bill", "check"], None),
        (["tariff", "list"], None),
        (["tariff", "add", "t.yaml"], "cli tariff add"),
        (["dnc", "import", "l1", "f.csv"], "cli dnc import"),
        (["dnc", "list"], None),
        (["dnc", "delete", "l1"], "cli dnc delete"),
        (["secrets", "reseal"], "cli secrets reseal"),
        (["secrets", "reseal", "--dry-run"], None),
        (["audit", "list", "--limit", "5"], None),
        (["mo", "list", "--unattributed"], None),
        # not store commands (no _with_services): never asked
        (["db", "migrate"], "cli db migrate"),
    ],
)
def test_cli_classification_of_every_subcommand(argv: list[str], action: str | None) -> None:
    got = _classify(argv)
    assert (got[0] if got else None) == action


@pytest.mark.parametrize(
    "argv",
    [["template", "review", "--acc", "acme"], ["secrets", "reseal", "--dry"]],
)
def test_cli_classification_with_abbreviated_options(argv: list[str]) -> None:
    assert _classify(argv) is None


def _write_config(tmp_path: Path, store: dict[str, Any]) -> Path:
    cfg = tmp_path / "bridge.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "store": store,
                "security": {"master_key": base64.b64encode(os.urandom(32)).decode()},
                "smscs": [{"name": "main", "system_id": "bridge"}],
                "logging": {"level": "WARNING"},
                "billing": {"tariff": {"international": TEST_INTERNATIONAL}},
            }
        )
    )
    return cfg


def _store_conf(engine: engines.EngineHandle, tmp_path: Path) -> dict[str, Any]:
    if engine.name == "postgres":
        return {"engine": "postgres", "dsn": engine.location}
    return {"engine": "sqlite", "path": str(tmp_path / "cli.db")}


def _cli(capsys: pytest.CaptureFixture[str], cfg: Path, *argv: str) -> tuple[int, Any]:
    """`smpp-bridge ARGV --config CFG` in this process: (exit status, printed JSON or text)."""
    code = cli_main([*argv, "--config", str(cfg)])
    out = capsys.readouterr().out
    try:
        return code, json.loads(out)
    except ValueError:
        return code, out


def test_cli_as_a_process_scrubs_the_equals_form(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The argv of a real `python -m bridge.cli` (sys.argv, not main's argument)."""
    cfg = _write_config(tmp_path, {"engine": "sqlite", "path": str(tmp_path / "b.db")})
    assert _cli(capsys, cfg, "account", "create", "acme")[0] == 0
    url = "https://u:s3cr3t@hooks.example/cb?token=T0KEN"
    p = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "account", "update", "acme", f"--callback={url}",
         "-c", str(cfg)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    _, rows = _cli(capsys, cfg, "audit", "list")
    assert [(r["action"], r["target"], r["status"]) for r in rows] == [
        ("cli account create", "acme", 0),
        ("cli account update", "acme --callback=https://hooks.example/cb?…", 0),
    ]


def test_cli_every_store_command_once_with_exit_status(
    engine: engines.EngineHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every store command run for real (in this process, as `smpp-bridge` would): each that may
    change something is one row (action, scrubbed arguments, exit status, refusal code); each
    read adds none; the secrets printed are in no row (both engines)."""
    cfg = _write_config(tmp_path, _store_conf(engine, tmp_path))
    tariff = tmp_path / "t.yaml"
    tariff.write_text(
        yaml.safe_dump(
            {
                "version": "v2",
                "effective_at": int(time.time() * 1000) + DAY_MS,
                "tiers": [{"price": 42_000}],
                "international": TEST_INTERNATIONAL,
            }
        )
    )
    dnc = tmp_path / "l.csv"
    dnc.write_text("13900139000\n")
    expected: list[tuple[str, str, int, str | None]] = []
    printed: list[str] = []

    def run(want: str | None, *argv: str, code: str | None = None) -> Any:
        status, out = _cli(capsys, cfg, *argv)
        if want is not None:
            target = " ".join(audit.scrub(a) for a in argv[2:])
            expected.append((want, target, status, code))
        return status, out

    status, out = run("cli account create", "account", "create", "acme", "--callback",
                      "https://u:pw@hooks.example/cb?token=CBTOKEN1")  # fmt: skip
    assert status == 0
    printed += [out["app_secret"], out["webhook_secret"]]
    for argv in (["account", "list"], ["account", "show", "acme"], ["key", "list", "acme"],
                 ["sign", "list"], ["template", "list"], ["template", "review"],
                 ["bill", "balance", "acme"], ["bill", "check"], ["tariff", "list"],
                 ["dnc", "list"], ["secrets", "reseal", "--dry-run"],
                 ["bill", "show", "acme", "--month", "2020-01"]):  # fmt: skip
        assert run(None, *argv)[0] == 0, argv
    status, out = run("cli account update", "account", "update", "acme", "--callback",
                      "https://u:pw@hooks.example/cb2?token=CBTOKEN2")  # fmt: skip
    assert status == 0
    assert run("cli account update", "account", "update", "acme",
               "--mo-callback=https://u2:pw2@hooks.example/mo?sig=MOTOKEN3")[0] == 0  # fmt: skip
    assert run("cli account disable", "account", "disable", "acme")[0] == 0
    assert run("cli account enable", "account", "enable", "acme")[0] == 0
    status, out = run("cli account rotate-webhook-secret", "account", "rotate-webhook-secret",
                      "acme")  # fmt: skip
    printed.append(out["webhook_secret"])
    status, out = run("cli key create", "key", "create", "acme")
    printed.append(out["app_secret"])
    assert run("cli key revoke", "key", "revoke", out["app_key"])[0] == 0
    assert (
        run("cli key revoke", "key", "revoke", out["app_key"], code="KEY_ALREADY_REVOKED")[0] == 1
    )
    assert run("cli sign add", "sign", "add", "acme", "Globex")[0] == 0
    assert run("cli sign review", "sign", "review", "acme", "Globex", "--approve")[0] == 0
    assert run("cli template review", "template", "review", "SMS_100000000", "--approve",
               code="NOT_FOUND")[0] == 1  # fmt: skip
    assert run("cli bill topup", "bill", "topup", "acme", "5", "--ref", "p-1")[0] == 0
    assert run("cli bill voucher", "bill", "voucher", "acme", "1", "--never")[0] == 0
    assert run("cli bill card", "bill", "card", "acme", "999")[0] == 0
    assert run("cli bill settle", "bill", "settle", "--month", "2020-01")[0] == 0
    assert run("cli tariff add", "tariff", "add", str(tariff))[0] == 0
    assert run("cli dnc import", "dnc", "import", "l1", str(dnc), "--country", "CN")[0] == 0
    assert run("cli dnc delete", "dnc", "delete", "l1")[0] == 0
    assert run("cli dnc delete", "dnc", "delete", "l1", code="NOT_FOUND")[0] == 1
    assert run("cli secrets reseal", "secrets", "reseal")[0] == 0
    assert run("cli account close", "account", "close", "acme")[0] == 0

    status, rows = _cli(capsys, cfg, "audit", "list", "--limit", "1000")
    assert status == 0
    user = f"cli:{getpass.getuser()}"
    assert [(r["action"], r["target"], r["status"], r["code"]) for r in rows] == expected
    assert {r["actor"] for r in rows} == {user}
    assert all(r["request_id"] is None and r["remote"] is None for r in rows)
    blob = json.dumps(rows, ensure_ascii=False)
    for secret in [*printed, "CBTOKEN", "MOTOKEN3", ":pw@", "pw2", str(cfg)]:
        assert secret not in blob, secret
    assert "--callback https://hooks.example/cb2?…" in blob
    assert "--mo-callback=https://hooks.example/mo?…" in blob


def test_cli_callback_password_with_an_at_sign_is_not_stored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from yarl import URL

    url = "https://u:pa@ss-word@hooks.example/cb?token=x"
    assert URL(url).password == "pa@ss-word" and URL(url).host == "hooks.example"
    cfg = _write_config(tmp_path, {"engine": "sqlite", "path": str(tmp_path / "b.db")})
    assert _cli(capsys, cfg, "account", "create", "acme")[0] == 0
    status, out = _cli(capsys, cfg, "account", "update", "acme", "--callback", url)
    assert status == 0 and out["status_callback_url"] == url  # taken, stored as given
    _, rows = _cli(capsys, cfg, "audit", "list")
    assert "ss-word" not in rows[-1]["target"], rows[-1]["target"]


@pytest.mark.parametrize(
    "argv",
    [
        ["dnc", "import", "bad id!", "l.csv"],
        ["dnc", "import", "l1", "missing.csv"],
        ["tariff", "add", "missing.yaml"],
    ],
)
def test_cli_refusals_before_the_store_opens_are_recorded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    cfg = _write_config(tmp_path, {"engine": "sqlite", "path": str(tmp_path / "b.db")})
    (tmp_path / "l.csv").write_text("+8613900139000\n")
    assert _cli(capsys, cfg, "audit", "list")[0] == 0  # the store exists
    assert _cli(capsys, cfg, *[str(tmp_path / a) if "." in a else a for a in argv])[0] == 1
    _, rows = _cli(capsys, cfg, "audit", "list")
    assert [(r["action"], r["status"]) for r in rows] == [(f"cli {argv[0]} {argv[1]}", 1)]


def test_cli_audit_list_negative_limit_is_refused(
    engine: engines.EngineHandle, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _write_config(tmp_path, _store_conf(engine, tmp_path))
    for _ in range(3):
        _cli(capsys, cfg, "account", "create", f"a{_}")
    status = cli_main(["audit", "list", "--limit", "-1", "--config", str(cfg)])
    captured = capsys.readouterr()
    assert status != 0 and "--limit" in captured.err, (status, captured)


# -- C. templates: the international flag ----------------------------------------------------------


@pytest.fixture
async def eface(engine: engines.EngineHandle, tmp_path: Path, clock: Clock) -> AsyncIterator[Face]:
    """The Alibaba face (as tests/integration/test_aliyun_api.py's `face`) on each engine."""
    now = int(time.time())
    if local_midnight_ms(now * 1000 + 120 * SEC) > now * 1000:
        now -= 180
    clock.freeze(now)
    api = await start_api(tmp_path, clock, {"aliyun": {"enabled": True}}, store=engine.new_store())
    server = TestServer(make_aliyun_app(api.ctx), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield Face(api, server, clock)
    finally:
        await server.close()
        await api.close()


async def _add(face: Face, client: Any, kind: int, content: str, name: str = "t") -> str:
    added = await face.call(
        client,
        "add_sms_template",
        models.AddSmsTemplateRequest(
            template_type=kind, template_name=name, template_content=content, remark="r"
        ),
    )
    assert added.code == "OK", added
    return added.template_code


async def _types(face: Face, client: Any, code: str) -> tuple[int, int, int]:
    """(QuerySmsTemplate's TemplateType, the list's TemplateType, the list's OuterTemplateType)"""
    one = await face.call(
        client, "query_sms_template", models.QuerySmsTemplateRequest(template_code=code)
    )
    listed = await face.call(
        client, "query_sms_template_list", models.QuerySmsTemplateListRequest(page_size=50)
    )
    [row] = [r for r in listed.sms_template_list if r.template_code == code]
    return one.template_type, row.template_type, row.outer_template_type


async def test_each_template_type_round_trips(eface: Face) -> None:
    face = eface
    creds = await face.api.create_account(raw_text=False)
    client = face.client(creds)
    want = {0: (0, 2, 0), 1: (1, 0, 1), 2: (2, 1, 2), 3: (3, 6, 3)}
    contents = {
        0: VERIFY_TEXT,
        1: NOTIFY_TEXT,
        2: "Big sale ${item} today! Reply TD to unsubscribe",
        3: NOTIFY_TEXT,
    }
    for kind, content in contents.items():
        code = await _add(face, client, kind, content, f"t{kind}")
        assert await _types(face, client, code) == want[kind], kind
        r = await face.api.request("GET", f"/v1/templates/{code}", creds=creds)
        assert r.json["international"] is (kind == 3)
        assert r.json["type"] == ("verification", "notification", "marketing", "notification")[kind]


async def _reject(face: Face, code: str) -> None:
    r = await face.api.admin(
        "POST", f"/admin/templates/{code}/review", json={"decision": "reject", "reason": "no"}
    )
    assert r.status == 200, r.json


@pytest.mark.parametrize("call", ["modify_sms_template", "update_sms_template"])
async def test_switching_international_on_a_rejected_template(eface: Face, call: str) -> None:
    face = eface
    creds = await face.api.create_account(raw_text=False)
    client = face.client(creds)
    request = (
        models.ModifySmsTemplateRequest
        if call == "modify_sms_template"
        else models.UpdateSmsTemplateRequest
    )

    async def modify(code: str, **kw: Any) -> Any:
        body = await face.call(client, call, request(template_code=code, **kw))
        assert body.code == "OK", body
        return body

    code = await _add(face, client, 3, NOTIFY_TEXT)
    await _reject(face, code)
    await modify(code, template_type=1, template_name="n", template_content=NOTIFY_TEXT)
    assert await _types(face, client, code) == (1, 0, 1)
    await _reject(face, code)
    await modify(code, template_type=3, template_name="n", template_content=NOTIFY_TEXT)
    assert await _types(face, client, code) == (3, 6, 3)
    await _reject(face, code)
    # Without a TemplateType the template keeps its flag.
    await modify(code, template_name="renamed", template_content=NOTIFY_TEXT)
    assert await _types(face, client, code) == (3, 6, 3)
    await _reject(face, code)
    await modify(code, template_type=0, template_name="v", template_content=VERIFY_TEXT)
    assert await _types(face, client, code) == (0, 2, 0)
    stored = await face.api.store.get_template(code)
    assert stored is not None and (stored.kind, stored.international) == ("verification", False)
    assert stored.revision == 5
    # A marketing template rejected at once (no opt-out wording) corrected into an
    # international one.
    sale = await _add(face, client, 2, "Big sale today!")
    assert (await face.api.store.get_template(sale)).status == "rejected"  # type: ignore[union-attr]
    await modify(sale, template_type=3, template_name="s", template_content="Big sale today!")
    assert await _types(face, client, sale) == (3, 6, 3)


async def test_international_on_a_template_that_is_not_rejected_is_not_changed(
    eface: Face,
) -> None:
    face = eface
    creds = await face.api.create_account(raw_text=False)
    client = face.client(creds)
    code = await _add(face, client, 3, NOTIFY_TEXT)
    body = await face.call(
        client,
        "modify_sms_template",
        models.ModifySmsTemplateRequest(
            template_code=code, template_type=1, template_name="n", template_content=NOTIFY_TEXT
        ),
    )
    assert body.code != "OK"
    r = await face.api.request(
        "PATCH", f"/v1/templates/{code}", creds=creds, json={"international": False}
    )
    assert (r.status, r.code) == (409, "TEMPLATE_NOT_EDITABLE")
    assert await _types(face, client, code) == (3, 6, 3)
    r = await face.api.admin(
        "POST", f"/admin/templates/{code}/review", json={"decision": "approve"}
    )
    assert r.status == 200 and r.json["international"] is True
    assert await _types(face, client, code) == (3, 6, 3)


async def test_update_sms_template_intl_type_promotional(eface: Face) -> None:
    face = eface
    creds = await face.api.create_account(raw_text=False)
    client = face.client(creds)
    code = await _add(face, client, 2, "Big sale today!")  # rejected at once
    body = await face.call(
        client,
        "update_sms_template",
        models.UpdateSmsTemplateRequest(
            template_code=code,
            template_type=3,
            intl_type=1,
            template_name="s",
            template_content="Big sale today!",
        ),
    )
    stored = await face.api.store.get_template(code)
    assert stored is not None
    assert body.code != "OK" or stored.kind == "marketing", (body.code, stored.kind)


async def test_upgrade_from_before_migration_16(
    engine: engines.EngineHandle, tmp_path: Path, clock: Clock
) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    overrides = {"security": {"master_key": key}, "aliyun": {"enabled": True}}
    clock.freeze()
    first = await start_api(tmp_path, clock, overrides, store=engine.new_store())
    try:
        creds = await first.create_account(raw_text=False)
        now = first.ctx.now_ms()
        codes = {}
        for kind, content in (("notification", NOTIFY_TEXT), ("verification", VERIFY_TEXT)):
            t = await review.submit_template(
                first.store,
                creds.account_id,
                {"type": kind, "name": kind, "content": content},
                now,
                first.ctx.config,
                first.ctx.send_rules.filter,
            )
            codes[kind] = t.code
        await first.store.review_template(codes["notification"], "rejected", "no", now)
    finally:
        await first.close()
    await engines.schema_before(engine, 16, 16)
    api = await start_api(tmp_path, clock, overrides, store=engine.new_store())
    server = TestServer(make_aliyun_app(api.ctx), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        assert await api.store.schema_version() >= 16
        face = Face(api, server, clock)
        client = face.client(creds)
        assert await _types(face, client, codes["notification"]) == (1, 0, 1)
        assert await _types(face, client, codes["verification"]) == (0, 2, 0)
        r = await api.request("GET", f"/v1/templates/{codes['verification']}", creds=creds)
        assert r.json["international"] is False and r.json["revision"] == 1
        # The old rejected template corrected into an international one, after the upgrade.
        body = await face.call(
            client,
            "modify_sms_template",
            models.ModifySmsTemplateRequest(
                template_code=codes["notification"],
                template_type=3,
                template_name="n",
                template_content=NOTIFY_TEXT,
            ),
        )
        assert body.code == "OK"
        assert await _types(face, client, codes["notification"]) == (3, 6, 3)
        new = await _add(face, client, 3, NOTIFY_TEXT)
        assert await _types(face, client, new) == (3, 6, 3)
    finally:
        await server.close()
        await api.close()
