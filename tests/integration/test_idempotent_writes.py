"""Idempotency-Key on the native API's writes other than a send (bridge/api/idempotency.py),
through a real HTTP server on both store engines.

Before: a client whose POST /v1/templates timed out and who retried filed the template twice
(two pending reviews), a retried sign name was refused SIGN_NAME_EXISTS for its own first
request, a retried cancel NOT_CANCELABLE. The key was accepted (signed) and ignored.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

import tests.store_engines as engines
from tests.integration.conftest import ApiServer, Clock, Creds, start_api

engine = engines.engine
store = engines.store

TEMPLATE = {"type": "notification", "name": "ship", "content": "Order ${order} has shipped."}
CN = "+8613800138000"


@pytest.fixture
async def api(
    engine: engines.EngineHandle, tmp_path: Path, clock: Clock
) -> AsyncIterator[ApiServer]:
    server = await start_api(tmp_path, clock, store=engine.new_store())
    try:
        yield server
    finally:
        await server.close()


async def post(api: ApiServer, creds: Creds, path: str, body: Any, key: str | None) -> Any:
    return await api.request("POST", path, creds=creds, json=body, idempotency_key=key)


async def templates(api: ApiServer, creds: Creds) -> list[dict[str, Any]]:
    return (await api.request("GET", "/v1/templates", creds=creds)).json["templates"]


async def test_a_retried_template_is_filed_once(api: ApiServer) -> None:
    creds = await api.create_account()
    first = await post(api, creds, "/v1/templates", TEMPLATE, "tpl-1")
    again = await post(api, creds, "/v1/templates", TEMPLATE, "tpl-1")  # a fresh nonce
    assert first.status == again.status == 201
    assert again.json == first.json and again.headers.get("Idempotent-Replayed") == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(await templates(api, creds)) == 1
    # Without a key each POST files one, as before.
    await post(api, creds, "/v1/templates", TEMPLATE, None)
    assert len(await templates(api, creds)) == 2


async def test_the_key_with_another_request_is_refused(api: ApiServer) -> None:
    creds = await api.create_account()
    assert (await post(api, creds, "/v1/templates", TEMPLATE, "k")).status == 201
    other = {**TEMPLATE, "name": "other"}
    reused = await post(api, creds, "/v1/templates", other, "k")
    assert (reused.status, reused.code) == (422, "IDEMPOTENCY_KEY_REUSED")
    on_signs = await post(api, creds, "/v1/signs", {"name": "Acme"}, "k")  # another endpoint
    assert (on_signs.status, on_signs.code) == (422, "IDEMPOTENCY_KEY_REUSED")
    # A send's key is the same namespace: reused on a write, refused.
    sent = await api.send(creds, {"to": CN, "text": "hi"}, key="send-1")
    assert sent.status == 202
    crossed = await post(api, creds, "/v1/templates", TEMPLATE, "send-1")
    assert (crossed.status, crossed.code) == (422, "IDEMPOTENCY_KEY_REUSED")
    assert len(await templates(api, creds)) == 1


async def test_a_refusal_frees_the_key(api: ApiServer) -> None:
    creds = await api.create_account()
    bad = {**TEMPLATE, "type": "bogus"}
    for _ in range(2):  # refused each time it runs: not a replay of the first refusal
        r = await post(api, creds, "/v1/templates", bad, "k2")
        assert r.status == 400 and "Idempotent-Replayed" not in r.headers, r.json
    good = await post(api, creds, "/v1/templates", TEMPLATE, "k2")
    assert good.status == 201
    assert len(await templates(api, creds)) == 1


async def test_a_retried_sign_name_and_cancel_get_their_first_answers(api: ApiServer) -> None:
    creds = await api.create_account()
    sign = {"name": "Acme Retail", "remark": "our brand"}
    first = await post(api, creds, "/v1/signs", sign, "sign-1")
    again = await post(api, creds, "/v1/signs", sign, "sign-1")
    assert (first.status, again.status) == (201, 201), again.json
    unkeyed = await post(api, creds, "/v1/signs", sign, None)
    assert unkeyed.code == "SIGN_NAME_EXISTS"  # what the retry used to get
    later = datetime.fromtimestamp(api.clock() + 3_600, UTC).isoformat()
    sent = await api.send(creds, {"to": CN, "text": "later", "scheduled_at": later})
    mid = sent.json["messages"][0]["id"]
    path = f"/v1/messages/{mid}/cancel"
    first = await post(api, creds, path, None, "cancel-1")
    again = await post(api, creds, path, None, "cancel-1")
    assert first.status == again.status == 200, again.json
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert (await post(api, creds, path, None, None)).code == "NOT_CANCELABLE"


async def test_requests_with_one_key_at_once_run_once(api: ApiServer) -> None:
    creds = await api.create_account()
    replies = await asyncio.gather(
        *(post(api, creds, "/v1/templates", TEMPLATE, "burst") for _ in range(6))
    )
    statuses = sorted(r.status for r in replies)
    assert set(statuses) <= {201, 409} and statuses.count(201) >= 1, statuses
    for r in replies:
        if r.status == 409:
            assert r.code == "IDEMPOTENCY_IN_PROGRESS" and r.headers["Retry-After"] == "1"
    assert len(await templates(api, creds)) == 1
