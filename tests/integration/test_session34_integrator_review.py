"""Session 34 review: an app developer integrating in Node.js from the README alone.

A real aiohttp server (conftest's `make_api`) on 127.0.0.1 and a real SQLite file. The Node client
in `node_client/client.mjs` was written from the README's "HTTP API" sections only; it runs here
as a regression test when `node` is on PATH. The defect tests (an empty cursor, the opt-out
cursor, the OpenAPI date pattern, a non-UTF-8 charset) failed on the code as reviewed; all were
fixed in session 34.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.integration.conftest import ApiServer  # noqa: E402

MakeApi = Callable[..., Awaitable[ApiServer]]
NODE_CLIENT = Path(__file__).parent / "node_client" / "client.mjs"


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not on PATH")
async def test_node_client_from_readme_signs_every_request(make_api: MakeApi) -> None:
    api = await make_api()
    creds = await api.create_account(default_country="CN")
    env = {
        **os.environ,
        "BRIDGE_URL": api.url,
        "APP_KEY": creds.app_key,
        "APP_SECRET": creds.app_secret,
    }
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(NODE_CLIENT),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout=20)
    text = out.decode()
    assert proc.returncode == 0, text
    assert "FAIL" not in text and text.count("PASS") >= 25, text


# -- defects -------------------------------------------------------------------------------------


async def test_empty_cursor_means_the_same_on_every_list_endpoint(make_api: MakeApi) -> None:
    # A generic paginator starts with cursor "" (the README writes every list as ?cursor=).
    api = await make_api()
    creds = await api.create_account()
    statuses = {}
    for path in ("/v1/messages", "/v1/optouts", "/v1/ledger"):
        reply = await api.request("GET", path, creds=creds, query="cursor=")
        statuses[path] = reply.status
    assert len(set(statuses.values())) == 1, statuses
    assert statuses["/v1/messages"] == 200, statuses  # the first page, as no cursor is


async def _with_optouts(make_api: MakeApi) -> tuple[Any, dict[str, str], list[str]]:
    """A server, an account's credentials and the three numbers on its opt-out list."""
    api = await make_api()
    creds = await api.create_account()
    numbers = ["+8613900000001", "+8613900000002", "+8613900000003"]
    reply = await api.request("POST", "/v1/optouts", creds=creds, json={"numbers": numbers})
    assert reply.status == 200, reply.text
    return api, creds, numbers


async def _every_optout(api: Any, creds: Any) -> list[str]:
    """The whole list, a page of one at a time from cursor "" (a generic paginator's start),
    through every next_cursor the endpoint answers; each one safe in a query once its "+" is
    sent as %2B (README)."""
    seen: list[str] = []
    cursor = ""
    for _ in range(10):
        reply = await api.request(
            "GET", "/v1/optouts", creds=creds, query=f"limit=1&cursor={cursor}"
        )
        assert reply.status == 200, reply.text
        seen += [e["number"] for e in reply.json["optouts"]]
        if reply.json["next_cursor"] is None:
            return seen
        cursor = reply.json["next_cursor"]
        assert re.fullmatch(r"[0-9A-Za-z_+-]+", cursor), cursor
        cursor = cursor.replace("+", "%2B")
    raise AssertionError(f"more than 10 pages: {seen}")


async def test_optouts_refuses_a_cursor_it_never_returned(make_api: MakeApi) -> None:
    api, creds, _ = await _with_optouts(make_api)
    # The cursor of /v1/optouts is a number; a client that lost the %2B sends a space.
    reply = await api.request("GET", "/v1/optouts", creds=creds, query="cursor=garbage")
    assert reply.status == 400 and reply.code == "INVALID_CURSOR", reply.text


async def test_openapi_date_pattern_of_message_list_matches_the_server(
    make_api: MakeApi,
) -> None:
    api = await make_api()
    creds = await api.create_account()
    doc = json.loads((await api.request("GET", "/openapi.json")).text)
    params = doc["paths"]["/v1/messages"]["get"]["parameters"]
    pattern = next(p for p in params if p.get("name") == "date")["schema"]["pattern"]
    reply = await api.request("GET", "/v1/messages", creds=creds, query="date=2026-12-3")
    documented = re.search(pattern, "2026-12-3") is not None
    assert documented == (reply.status == 200), (pattern, reply.status, reply.text)


async def test_json_with_a_charset_other_than_utf8_is_unsupported_media_type(
    make_api: MakeApi,
) -> None:
    api = await make_api()
    creds = await api.create_account()
    payload: dict[str, Any] = {"to": "+8613800138000", "text": "hello"}
    reply = await api.request(
        "POST",
        "/v1/messages",
        creds=creds,
        body=json.dumps(payload).encode("utf-16-le"),
        content_type="application/json; charset=utf-16",
        idempotency_key="charset-utf16-1",
    )
    assert reply.status == 415 and reply.code == "UNSUPPORTED_MEDIA_TYPE", reply.text


async def test_optouts_pages_past_a_reply_sender_that_is_not_digits(make_api: MakeApi) -> None:
    """A STOP from an alphanumeric or otherwise non-numeric source is kept as received; a page
    ending on it answered a next_cursor the endpoint then refused (INVALID_CURSOR), so the rest
    of the list could not be read (session 34's "noticed", fixed in session 35)."""
    api, creds, numbers = await _with_optouts(make_api)
    odd = ["INFO LINE", "Shop+Ü/1"]
    await api.store.add_optouts(creds.account_id, odd, "mo", int(api.clock() * 1000))
    seen = await _every_optout(api, creds)
    assert seen == sorted(numbers + odd)
    # A cursor of the new form that no page returned (not canonical) is still refused.
    reply = await api.request("GET", "/v1/optouts", creds=creds, query="cursor=xMTIz")  # "123"
    assert reply.status == 400 and reply.code == "INVALID_CURSOR", reply.text


# -- around the fixes ----------------------------------------------------------------------------


async def test_optouts_pages_through_its_own_cursors(make_api: MakeApi) -> None:
    # The cursor now checked is still every next_cursor the endpoint answers, to the last page.
    api, creds, numbers = await _with_optouts(make_api)
    seen = await _every_optout(api, creds)
    assert seen == numbers
    # The cursor a client that let its "+" become a space sends back is refused, not a page.
    reply = await api.request("GET", "/v1/optouts", creds=creds, query="cursor=+8613900000001")
    assert reply.status == 200  # a bare "+" is a plus here (README: send it as %2B anyway)
    reply = await api.request("GET", "/v1/optouts", creds=creds, query="cursor=%208613900000001")
    assert reply.status == 400 and reply.code == "INVALID_CURSOR", reply.text


async def test_empty_after_is_the_first_ledger_page_as_an_empty_cursor_is(
    make_api: MakeApi,
) -> None:
    api = await make_api()
    creds = await api.create_account()
    first = await api.request("GET", "/v1/ledger", creds=creds)
    for query in ("after=", "cursor=", "cursor=&limit=5"):
        reply = await api.request("GET", "/v1/ledger", creds=creds, query=query)
        assert reply.status == 200, (query, reply.text)
        assert reply.json["entries"] == first.json["entries"], query


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json; charset=UTF-8",
        'application/json; charset="utf-8"',
        "application/json;charset=utf-8",
        "application/json",
    ],
)
async def test_json_declared_utf8_or_without_charset_is_read(
    make_api: MakeApi, content_type: str
) -> None:
    api = await make_api()
    creds = await api.create_account()
    reply = await api.request(
        "POST",
        "/v1/preview",
        creds=creds,
        json={"text": "hello 你好"},
        content_type=content_type,
    )
    assert reply.status == 200, reply.text


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/preview", "application/json; charset=iso-8859-1"),
        ("/v1/preview", "application/json; CHARSET=UTF-16LE"),
        ("/v1/optouts", "application/json; charset=gbk"),
    ],
)
async def test_any_other_charset_is_415_on_every_json_endpoint(
    make_api: MakeApi, path: str, content_type: str
) -> None:
    api = await make_api()
    creds = await api.create_account()
    body = {"text": "hello"} if path == "/v1/preview" else {"numbers": ["+8613900000001"]}
    reply = await api.request("POST", path, creds=creds, json=body, content_type=content_type)
    assert reply.status == 415 and reply.code == "UNSUPPORTED_MEDIA_TYPE", reply.text
    assert "UTF-8" in reply.json["error"]["message"], reply.text
