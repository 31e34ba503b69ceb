"""Contract review of the native HTTP API (`/v1/*`, `/admin/*`) against the README and the served
OpenAPI document. Each test pins one defect and fails on the code as reviewed:

1. A 503 `TARIFF_NOT_FOUND` (no tariff version in force: e.g. the only stored version was added
   while billing was off and takes effect later) carries no `Retry-After`, on `POST /v1/messages`,
   `POST /v1/preview` and `GET /v1/bills/{month}`. The OpenAPI document makes `Retry-After` a
   required header of every 503 (and 429), and the README and client treat 503 as "retry after".
   Cause: `bridge/api/sending.py` `current_tariff` (and `rules_api.bill_for`) raise the ApiError
   without headers.
2. Unknown query parameters are ignored, not refused, on some endpoints while their neighbours
   refuse them with 400 `UNKNOWN_FIELD`: `GET /v1/signs?status=pending` answers every sign,
   approved ones included (the customer's filter silently does nothing), `GET /admin/signs` and
   `GET /admin/templates` take a misspelt filter as "no filter", and `PUT /admin/dnc/{id}?contry=CN`
   imports the list without its country (national numbers skipped as bad lines). Cause: those
   handlers read `query_of(request)` directly instead of `reports.query_params(..., allowed)`.
3. An unknown field in the body is answered 400 `INVALID_REQUEST` with a message that does not
   name it on `POST /v1/optouts`, the two review endpoints and `POST /admin/bills/settle`; the
   documented code for it (`components.x-error-codes`) is `UNKNOWN_FIELD`, "named", which every
   other body endpoint answers. Cause: the `set(data) - {...}` checks in
   `rules_api.post_optouts`, `admin_rules._decision` and `admin_rules.settle`.
4. A sign name in the path is read in its NFKC form by `GET /v1/signs/{name}` (a fullwidth
   `Ｂｅｔａ` finds `Beta`, as registered) but not by
   `POST /admin/accounts/{ref}/signs/{name}/review`, which answers 404 for the very name the
   customer registered and can read back. Cause: `admin_rules.review_sign` passes the raw
   `match_info["name"]` to `review.decide_sign`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from bridge.billing import tariff_from_config, tariff_to_json
from bridge.store.models import TariffRow

CN = "+8613800138000"


# -- 1. Retry-After on every 503 ----------------------------------------------------------------


async def _only_a_future_tariff(api_server: Any) -> None:
    """The stored tariffs hold one version, taking effect in a day: none is in force now."""
    now = api_server.ctx.now_ms()
    first = tariff_from_config(api_server.config.billing.tariff, 0)
    later = dataclasses.replace(first, version="later", effective_at=now + 86_400_000)
    await api_server.store.add_tariff(
        TariffRow("later", later.effective_at, tariff_to_json(later), now)
    )
    api_server.ctx.tariff_book.versions = ()
    assert [r.version for r in await api_server.store.list_tariffs()] == ["later"]


@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        ("POST", "/v1/messages", {"to": CN, "text": "hello"}),
        ("POST", "/v1/preview", {"text": "hello"}),
        ("GET", "/v1/bills/2020-01", None),
    ],
)
async def test_tariff_not_found_503_carries_retry_after(
    api_server, make_account, method: str, path: str, payload: Any
):
    creds = await make_account()
    await _only_a_future_tariff(api_server)
    kw: dict[str, Any] = {"creds": creds, "validate": False}
    if payload is not None:
        kw["json"] = payload
    if path == "/v1/messages":
        kw["idempotency_key"] = "tariff-1"
    r = await api_server.request(method, path, **kw)
    assert (r.status, r.code) == (503, "TARIFF_NOT_FOUND"), r.text
    retry_after = r.headers.get("Retry-After")
    assert retry_after is not None and retry_after.isdigit(), (
        f"{method} {path}: a 503 without Retry-After; the OpenAPI document requires it on every "
        f"503 (headers: {dict(r.headers)})"
    )


# -- 2. unknown query parameters ------------------------------------------------------------------


async def test_v1_signs_refuses_a_query_filter_it_does_not_apply(api_server, make_account):
    creds = await make_account()  # has the approved sign "Acme"
    r = await api_server.request("GET", "/v1/signs", creds=creds, query="status=pending")
    assert (r.status, r.code) == (400, "UNKNOWN_FIELD"), (
        "GET /v1/signs?status=pending answered as if unfiltered: "
        f"{r.status} {[s['status'] for s in (r.json or {}).get('signs', [])]}"
    )
    assert "status" in r.message


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/admin/signs", "stauts=pending"),
        ("/admin/templates", "stauts=pending"),
        ("/admin/templates", "acount=nobody"),
    ],
)
async def test_admin_review_queues_refuse_unknown_query_parameters(
    api_server, make_account, path: str, query: str
):
    await make_account()
    r = await api_server.admin("GET", path, query=query)
    assert (r.status, r.code) == (400, "UNKNOWN_FIELD"), f"GET {path}?{query}: {r.status}"
    assert query.split("=")[0] in r.message


async def test_dnc_import_refuses_a_misspelt_query_parameter(api_server):
    r = await api_server.admin(
        "PUT",
        "/admin/dnc/national",
        query="contry=CN&strict=false",
        body=b"13800138000\n",
        content_type="text/csv",
    )
    listed = await api_server.admin("GET", "/admin/dnc")
    assert (r.status, r.code) == (400, "UNKNOWN_FIELD"), (
        f"PUT /admin/dnc?contry=CN imported the list without a country: {r.status} {r.json}"
    )
    assert listed.json["lists"] == []


# -- 3. unknown body fields -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/accounts/{acc}/signs/Acme/review", {"decision": "approve", "note": "x"}),
        ("/admin/templates/SMS_123456789/review", {"decision": "approve", "note": "x"}),
        ("/admin/bills/settle", {"month": "2020-01", "note": "x"}),
    ],
)
async def test_admin_unknown_body_field_is_unknown_field_named(
    api_server, make_account, path: str, body: dict[str, Any]
):
    creds = await make_account()
    r = await api_server.admin("POST", path.format(acc=creds.account_id), json=body)
    assert (r.status, r.code) == (400, "UNKNOWN_FIELD"), (r.code, r.message)
    assert "note" in r.message


async def test_optouts_unknown_body_field_is_unknown_field_named(api_server, make_account):
    creds = await make_account()
    r = await api_server.request(
        "POST", "/v1/optouts", creds=creds, json={"numbers": [CN], "note": "x"}
    )
    assert (r.status, r.code) == (400, "UNKNOWN_FIELD"), (r.code, r.message)
    assert "note" in r.message


# -- 4. sign names in paths -----------------------------------------------------------------------


async def test_operator_review_finds_a_sign_by_the_name_the_customer_registered(
    api_server, make_account
):
    creds = await make_account()
    fullwidth = "%EF%BC%A2%EF%BD%85%EF%BD%94%EF%BD%81"  # "Ｂｅｔａ", stored as NFKC "Beta"
    made = await api_server.request("POST", "/v1/signs", creds=creds, json={"name": "Ｂｅｔａ"})
    assert made.status == 201 and made.json["name"] == "Beta"
    shown = await api_server.request("GET", f"/v1/signs/{fullwidth}", creds=creds)
    assert shown.status == 200 and shown.json["name"] == "Beta"
    r = await api_server.admin(
        "POST",
        f"/admin/accounts/{creds.account_id}/signs/{fullwidth}/review",
        json={"decision": "approve"},
    )
    assert r.status == 200, f"{r.status} {r.code}: {r.message}"
    assert (r.json["name"], r.json["status"]) == ("Beta", "approved")
