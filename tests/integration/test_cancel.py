"""Canceling: POST /v1/messages/{id}/cancel and POST /v1/batches/{batch_id}/cancel end what is
still queued or scheduled (expired, error CANCELED, refunded, status report pushed); what a
dispatcher holds, or what was sent, goes on (409 NOT_CANCELABLE, or counted for a batch).

A real HTTP server on each store engine of tests/store_engines.py; claims are the store's own
(`claim`), as the dispatcher makes them. Every reply is checked against /openapi.json.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from tests.integration.conftest import ApiServer, Creds  # noqa: E402

engine = engines.engine

CN = ["+8613800138000", "+8613800138001", "+8613800138002"]


@pytest.fixture
def api(engine_api: ApiServer) -> ApiServer:
    return engine_api  # the conftest's server on each store engine


def _tomorrow(api: ApiServer) -> str:
    return (datetime.fromtimestamp(api.clock(), UTC) + timedelta(days=1)).isoformat()


async def _cash(api: ApiServer, creds: Creds) -> int:
    r = await api.request("GET", "/v1/balance", creds=creds)
    assert r.status == 200
    return int(r.json["cash_micro"])


async def _send(api: ApiServer, creds: Creds, to: Any, **extra: Any) -> dict[str, Any]:
    r = await api.send(creds, {"to": to, "text": "Sale tomorrow", **extra})
    assert r.status == 202, r.json
    return r.json


async def _status_reports(api: ApiServer) -> dict[str, str]:
    jobs = await api.store.claim_webhooks(api.ctx.now_ms(), 100, 60_000)
    return {j.payload: j.account_id for j in jobs if j.kind == "status"}


async def test_a_scheduled_message_is_canceled_and_refunded(api: ApiServer) -> None:
    creds = await api.create_account(status_callback_url="https://acme/status")
    before = await _cash(api, creds)
    sent = await _send(api, creds, CN[0], scheduled_at=_tomorrow(api))
    (mid,) = [m["id"] for m in sent["messages"]]
    assert await _cash(api, creds) < before
    r = await api.request("POST", f"/v1/messages/{mid}/cancel", creds=creds)
    assert r.status == 200, r.json
    assert (r.json["id"], r.json["status"], r.json["error_code"]) == (mid, "expired", "CANCELED")
    assert await _cash(api, creds) == before  # the pre-charge came back
    assert mid in await _status_reports(api)  # the customer is told, like any final state
    # Nothing left to send; a second cancel finds it final.
    assert await api.store.claim("inst", 10, api.ctx.now_ms() + 2 * 86_400_000, 60_000) == []
    again = await api.request("POST", f"/v1/messages/{mid}/cancel", creds=creds)
    assert (again.status, again.code) == (409, "NOT_CANCELABLE")
    assert "expired" in again.message


async def test_a_message_on_a_bind_goes_on(api: ApiServer) -> None:
    creds = await api.create_account()
    (mid,) = [m["id"] for m in (await _send(api, creds, CN[0]))["messages"]]
    work = await api.store.claim("inst", 10, api.ctx.now_ms(), 60_000)
    assert [w.id for w in work] == [mid]
    r = await api.request("POST", f"/v1/messages/{mid}/cancel", creds=creds)
    assert (r.status, r.code) == (409, "NOT_CANCELABLE")
    assert "handed to an SMSC" in r.message
    record = await api.store.get_message(creds.account_id, mid)
    assert record is not None and record.error_code is None


async def test_a_batch_cancel_stops_what_is_left(api: ApiServer) -> None:
    creds = await api.create_account()
    before = await _cash(api, creds)
    sent = await _send(api, creds, CN)
    charged = before - await _cash(api, creds)
    batch = sent["batch_id"]
    ids = [m["id"] for m in sent["messages"]]
    (taken,) = await api.store.claim("inst", 1, api.ctx.now_ms(), 60_000)  # one on a bind
    r = await api.request("POST", f"/v1/batches/{batch}/cancel", creds=creds)
    assert r.status == 200, r.json
    assert r.json == {"batch_id": batch, "canceled": 2, "not_cancelable": 1}
    states = {}
    for mid in ids:
        record = await api.store.get_message(creds.account_id, mid)
        assert record is not None
        states[mid] = (record.state, record.error_code)
    assert states.pop(taken.id) == ("queued", None)
    assert set(states.values()) == {("expired", "CANCELED")}
    kept = before - await _cash(api, creds)
    assert charged > 0 and kept * 3 == charged  # the one still sending stays charged
    again = await api.request("POST", f"/v1/batches/{batch}/cancel", creds=creds)
    assert again.json == {"batch_id": batch, "canceled": 0, "not_cancelable": 3}


async def test_another_accounts_messages_and_unknown_ids_are_not_found(api: ApiServer) -> None:
    owner = await api.create_account()
    other = await api.create_account()
    sent = await _send(api, owner, CN[0], scheduled_at=_tomorrow(api))
    mid, batch = sent["messages"][0]["id"], sent["batch_id"]
    for path in (f"/v1/messages/{mid}/cancel", f"/v1/batches/{batch}/cancel",
                 "/v1/messages/msg_nope/cancel", "/v1/batches/bat_nope/cancel",
                 f"/v1/batches/bat_{'Z' * 26}/cancel"):  # fmt: skip
        r = await api.request("POST", path, creds=other)
        assert (r.status, r.code) == (404, "NOT_FOUND"), path
    record = await api.store.get_message(owner.account_id, mid)
    assert record is not None and record.state == "queued"
