"""What session 42's fuzz of the real HTTP API (tests/integration/test_api_fuzz.py) found: each
a focused test of the behaviour the README and `/openapi.json` promise, against a real server
and SQLite file (conftest's `api_server`, whose every reply is checked against the OpenAPI
document: the operation, the status, the body's schema).

Findings (against main at 0cb3e16):

1. A path parameter holding `{` or `}` is answered 404 "no such endpoint" on the operations whose
   handler validates the parameter, where the field's own 400 is due: `GET /v1/bills/{month}`
   (400 INVALID_MONTH), `POST /v1/recipients/{number}/erase` (400 INVALID_NUMBER) and
   `PUT`/`DELETE /admin/dnc/{id}` (400 INVALID_FIELD / 404). aiohttp's `{name}` matches
   `[^{}/]+`, so the request matches no route at all; none of these three operations lists a
   404 in `/openapi.json`, and the message names an endpoint that exists. Fixed: those routes
   take `{name:[^/]+}`, so every value reaches the handler's check.

2. `/openapi.json` did not list 400 for operations that answer it: a `%00` in any path is 400
   INVALID_REQUEST (bridge/api/app.py `_check_path`, on every route of both listeners) and a
   request the HTTP parser refuses is 400 MALFORMED_HTTP wherever it was sent, but
   `GET /v1/messages/{id}`, `GET /v1/account`, `GET /v1/balance`, `GET /admin/accounts/{ref}`
   and others listed no 400 (the README: "the full reference (a test validates every response
   against it)"). Fixed: 400 is among the statuses every operation of each face lists, as 401,
   413 and 503 are.
"""

from __future__ import annotations

from typing import Any

from bridge.api.openapi import openapi_document
from tests.integration.conftest import ApiServer

# -- 1 ---------------------------------------------------------------------------------------------


async def test_a_month_with_a_brace_is_an_invalid_month(api_server: ApiServer) -> None:
    creds = await api_server.create_account()
    reply = await api_server.request("GET", "/v1/bills/2026-12%7D", creds=creds)
    assert (reply.status, reply.code) == (400, "INVALID_MONTH"), reply.text


async def test_an_erasure_of_a_number_with_a_brace_is_an_invalid_number(
    api_server: ApiServer,
) -> None:
    creds = await api_server.create_account()
    path = "/v1/recipients/%7B8613800138000/erase"
    reply = await api_server.request("POST", path, creds=creds)
    assert (reply.status, reply.code) == (400, "INVALID_NUMBER"), reply.text


async def test_a_do_not_contact_list_id_with_a_brace_is_an_invalid_field(
    api_server: ApiServer,
) -> None:
    reply = await api_server.admin(
        "PUT", "/admin/dnc/list%7B1%7D", body=b"+8613800138000\n", content_type="text/csv"
    )
    assert (reply.status, reply.code) == (400, "INVALID_FIELD"), reply.text


# -- 2 ---------------------------------------------------------------------------------------------


async def test_a_nul_in_a_message_id_is_a_documented_400(api_server: ApiServer) -> None:
    creds = await api_server.create_account()
    reply = await api_server.request("GET", "/v1/messages/msg_%00", creds=creds)
    assert (reply.status, reply.code) == (400, "INVALID_REQUEST"), reply.text


async def test_a_nul_in_an_admin_account_ref_is_a_documented_400(api_server: ApiServer) -> None:
    reply = await api_server.admin("GET", "/admin/accounts/acc_%00")
    assert (reply.status, reply.code) == (400, "INVALID_REQUEST"), reply.text


def test_every_operation_lists_400() -> None:
    """Every path can carry a %00, and every request can be malformed HTTP."""
    missing: list[Any] = []
    for path, ops in openapi_document()["paths"].items():
        if path.startswith(("/v1/", "/admin/")):
            for method, op in ops.items():
                if isinstance(op, dict) and "responses" in op and "400" not in op["responses"]:
                    missing.append(f"{method.upper()} {path}")
    assert not missing, missing
