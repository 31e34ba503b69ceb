"""Deleting a template or a sign name (DELETE /v1/templates/{code}, DELETE /v1/signs/{name}):
gone from the account's lists, refused at the next send, its messages still waiting (queued,
scheduled) ended unsent and refunded, the ones on a bind left to finish; another account's is
not found. A real HTTP server on each store engine; replies checked against /openapi.json."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from tests.integration.conftest import ApiServer, Creds  # noqa: E402
from tests.integration.test_cancel import _cash  # noqa: E402
from tests.sending import approve_sign, submit_template  # noqa: E402

engine = engines.engine

CN = ["+8613800138000", "+8613800138001"]
TEXT = "Your code is ${code}"


@pytest.fixture
def api(engine_api: ApiServer) -> ApiServer:
    return engine_api


async def _template(api: ApiServer, creds: Creds) -> str:
    code = (await submit_template(api, creds, TEXT))["code"]
    await api.store.review_template(code, "approved", None, api.ctx.now_ms())
    return code


def _tomorrow(api: ApiServer) -> str:
    return (datetime.fromtimestamp(api.clock(), UTC) + timedelta(days=1)).isoformat()


async def _send(api: ApiServer, creds: Creds, to: str, code: str, sign: str, **kw: object) -> str:
    r = await api.send(
        creds,
        {"to": to, "template": code, "params": {"code": "1234"}, "sign_name": sign, **kw},
    )
    assert r.status == 202, r.json
    return r.json["messages"][0]["id"]


async def test_a_deleted_template_ends_what_waits_and_is_refused_after(api: ApiServer) -> None:
    creds = await api.create_account(raw_text=False)
    code = await _template(api, creds)
    before = await _cash(api, creds)
    on_bind = await _send(api, creds, CN[0], code, "Acme")
    (claimed,) = await api.store.claim("inst", 1, api.ctx.now_ms(), 60_000)
    assert claimed.id == on_bind
    waiting = await _send(api, creds, CN[1], code, "Acme", scheduled_at=_tomorrow(api))
    charged = before - await _cash(api, creds)

    r = await api.request("DELETE", f"/v1/templates/{code}", creds=creds)
    assert r.status == 200, r.json
    assert r.json == {"code": code, "deleted": True, "messages_ended": 1}
    rec = await api.store.get_message(creds.account_id, waiting)
    assert rec is not None and (rec.state, rec.error_code) == ("expired", "TEMPLATE_DELETED")
    rec = await api.store.get_message(creds.account_id, on_bind)
    assert rec is not None and rec.error_code is None
    assert (before - await _cash(api, creds)) * 2 == charged  # the waiting one refunded

    r = await api.request("GET", f"/v1/templates/{code}", creds=creds)
    assert r.status == 404
    listed = await api.request("GET", "/v1/templates", creds=creds)
    assert code not in {t["code"] for t in listed.json["templates"]}
    r = await api.send(
        creds, {"to": CN[0], "template": code, "params": {"code": "1"}, "sign_name": "Acme"}
    )
    assert (r.status, r.code) == (422, "TEMPLATE_NOT_FOUND")
    again = await api.request("DELETE", f"/v1/templates/{code}", creds=creds)
    assert (again.status, again.code) == (404, "NOT_FOUND")


async def test_another_accounts_template_and_sign_are_not_found(api: ApiServer) -> None:
    owner = await api.create_account(raw_text=False)
    other = await api.create_account(raw_text=False)
    code = await _template(api, owner)
    r = await api.request("DELETE", f"/v1/templates/{code}", creds=other)
    assert (r.status, r.code) == (404, "NOT_FOUND")
    r = await api.request("DELETE", "/v1/templates/not-a-code", creds=other)
    assert (r.status, r.code) == (404, "NOT_FOUND")
    await approve_sign(api.store, owner.account_id, "Initech", api.ctx.now_ms())
    r = await api.request("DELETE", "/v1/signs/Initech", creds=other)
    assert (r.status, r.code) == (404, "NOT_FOUND")
    assert await api.store.get_template(code) is not None
    assert await api.store.get_sign(owner.account_id, "Initech") is not None


async def test_a_deleted_sign_ends_what_waits_and_its_name_is_free(api: ApiServer) -> None:
    creds = await api.create_account(raw_text=False)
    code = await _template(api, creds)
    await approve_sign(api.store, creds.account_id, "Initech", api.ctx.now_ms())
    waiting = await _send(api, creds, CN[0], code, "Initech", scheduled_at=_tomorrow(api))
    kept = await _send(api, creds, CN[1], code, "Acme", scheduled_at=_tomorrow(api))

    r = await api.request("DELETE", "/v1/signs/Initech", creds=creds)
    assert r.status == 200, r.json
    assert r.json == {"name": "Initech", "deleted": True, "messages_ended": 1}
    rec = await api.store.get_message(creds.account_id, waiting)
    assert rec is not None and (rec.state, rec.error_code) == ("expired", "SIGN_DELETED")
    rec = await api.store.get_message(creds.account_id, kept)
    assert rec is not None and rec.state == "queued"  # another sign's message is untouched
    r = await api.send(
        creds, {"to": CN[0], "template": code, "params": {"code": "1"}, "sign_name": "Initech"}
    )
    assert r.status == 422 and r.code == "SIGN_NAME_NOT_APPROVED", r.json
    # The name can be registered again (by this account or another).
    r = await api.request(
        "POST", "/v1/signs", creds=creds, json={"name": "Initech", "source": "company"}
    )
    assert r.status == 201, r.json
