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

3. The Alibaba port's answer to a request its HTTP parser refuses (a control character in a
   header, a bad request line: 400 isv.INVALID_PARAMETERS) names its request id in
   `X-Request-Id` only (bridge/api/http_errors.py `JsonErrorServer.answer`), where every other
   answer of that face, the 408 of a body that never came included, carries
   `x-acs-request-id`, the header Alibaba's gateway and SDKs use. Fixed: that answer carries
   `x-acs-request-id` too on the Alibaba port (X-Request-Id stays, as tests/e2e's
   test_unparsable_http reads it).

4. `POST /v1/preview` refuses `"smart_encoding": null` (400 INVALID_FIELD "expected true or
   false") where `POST /v1/messages` takes it as absent (text.smart_encoding applies) and
   accepts the send: the preview of a send that went out is refused, against the README's
   "A text the send refuses is refused with the same code" (and no other). Found by the send
   fuzz's check that the preview of an accepted send encodes and counts as the send did.
   Fixed: the preview reads a null `smart_encoding` as absent, as the send does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from bridge.api.http_errors import AppRunner
from bridge.api.openapi import openapi_document
from bridge.compat.aliyun_api import UNPARSED_ENDPOINT, make_aliyun_app, render_unparsed
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


# -- 3 ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "head",
    [
        b"POST / HTTP/1.1\r\nHost: x\r\nx-acs-action: Send\x1fSms\r\nContent-Length: 0\r\n\r\n",
        b"NOT HTTP AT ALL\r\n\r\n",
    ],
)
async def test_the_alibaba_port_names_a_malformed_requests_id_in_x_acs_request_id(
    make_api: Callable[..., Awaitable[ApiServer]], head: bytes
) -> None:
    api = await make_api({"aliyun": {"enabled": True}})
    # The Alibaba listener as Daemon._listen makes it: its parser refusals in Alibaba's format.
    runner = AppRunner(
        make_aliyun_app(api.ctx), render_unparsed, api.ctx.metrics, endpoint=UNPARSED_ENDPOINT
    )
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        port = next(iter(runner.addresses))[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head)
        raw = await reader.read()
        writer.close()
    finally:
        await runner.cleanup()
    top, _, body = raw.partition(b"\r\n\r\n")
    lines = top.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    answer = json.loads(body)
    assert lines[0].split()[1] == "400", lines[0]
    assert answer["Code"] == "isv.INVALID_PARAMETERS", answer
    assert headers.get("x-acs-request-id") == answer["RequestId"], headers


# -- 4 ---------------------------------------------------------------------------------------------


async def test_a_null_smart_encoding_previews_as_the_send_takes_it(api_server: ApiServer) -> None:
    creds = await api_server.create_account()
    body = {"to": "+8613800138000", "text": "hi", "smart_encoding": None}
    sent = await api_server.send(creds, body)
    assert sent.status == 202, sent.text
    preview = await api_server.request("POST", "/v1/preview", creds=creds, json=body)
    assert preview.status == 200, preview.text
    message = sent.json["messages"][0]
    for name in ("encoding", "segments", "billable_units"):
        assert preview.json[name] == message[name], name
