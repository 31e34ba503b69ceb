"""A JSON body (or JSON parameter) repeating a key in an object is refused on every face.

Before, orjson (and the standard library, on the Alibaba face) kept the last value silently:
`{"to": A, "to": B}` sent to B while a WAF or the customer's own log read A. Now the native API
and the admin API answer 400 DUPLICATE_JSON_KEY naming the key and its JSON path, the Alibaba face
answers its JSON code (isv.INVALID_JSON_PARAM, HTTP 200 as its other business refusals) with the
same detail, and the simulator's control API 400 DUPLICATE_JSON_KEY. Nothing of a refused request
is stored. Texts full of colons, raw or escaped, are still accepted.

The native tests run on a real HTTP server over each store engine of tests/store_engines.py.
"""

from __future__ import annotations

import json
import secrets
import sys
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from tests.integration import test_aliyun_api as ali  # noqa: E402
from tests.integration import test_sdk_sim_review as sim_review  # noqa: E402
from tests.integration.conftest import ApiServer, Creds, Reply  # noqa: E402
from tests.integration.test_aliyun_review import _call  # noqa: E402
from tests.sending import submit_template  # noqa: E402

engine = engines.engine
face = ali.face  # the Alibaba face over a SQLite store (its own fixture)
make_sim = sim_review.make_sim  # a simulated SMSC (its control API on request)

CN = "+8613800138000"
CN2 = "+8613800138001"


@pytest.fixture
def api(engine_api: ApiServer) -> ApiServer:
    return engine_api


def _refused(r: Reply, key: str, where: str) -> None:
    assert (r.status, r.code) == (400, "DUPLICATE_JSON_KEY"), r.json
    assert f'duplicate key "{key}" at {where}' in r.message, r.message


async def _cash(api: ApiServer, creds: Creds) -> int:
    r = await api.request("GET", "/v1/balance", creds=creds)
    assert r.status == 200
    return int(r.json["cash_micro"])


async def _send_raw(api: ApiServer, creds: Creds, body: bytes, key: str) -> Reply:
    return await api.request("POST", "/v1/messages", creds=creds, body=body, idempotency_key=key)


async def test_a_send_repeating_to_is_refused_and_nothing_is_stored(api: ApiServer) -> None:
    creds = await api.create_account()
    cash = await _cash(api, creds)
    key = f"idem-{secrets.token_hex(8)}"
    body = f'{{"to": "{CN}", "text": "Sale tomorrow", "to": "{CN2}"}}'.encode()
    _refused(await _send_raw(api, creds, body, key), "to", "$.to")
    assert await api.store.list_messages(creds.account_id, limit=10) == []
    assert await _cash(api, creds) == cash
    # The refusal kept nothing under the key either: the corrected body is accepted with it.
    fixed = f'{{"to": "{CN2}", "text": "Sale tomorrow"}}'.encode()
    r = await _send_raw(api, creds, fixed, key)
    assert r.status == 202, r.json
    [row] = await api.store.list_messages(creds.account_id, limit=10)
    assert row.recipient == CN2


async def test_a_repeat_nested_in_the_params_object_is_named_by_its_path(api: ApiServer) -> None:
    creds = await api.create_account(raw_text=False)
    t = await submit_template(api, creds, "Your code is ${code}. Valid 5 minutes.")
    await api.store.review_template(t["code"], "approved", None, api.ctx.now_ms())
    body = {"to": [CN, CN2], "sign_name": "Acme", "template": t["code"]}
    raw = json.dumps(body)[:-1] + ', "params": {"code": "1234", "code": "9999"}}'
    r = await _send_raw(api, creds, raw.encode(), f"idem-{secrets.token_hex(8)}")
    _refused(r, "code", "$.params.code")
    assert await api.store.list_messages(creds.account_id, limit=10) == []


async def test_texts_with_colons_raw_and_escaped_are_accepted(api: ApiServer) -> None:
    creds = await api.create_account()
    # a colon in the text, one escaped as \u003a, and a key spelled with an escaped colon-free
    # escape (\u0074o is "to"): none of them is a repeat
    body = (
        b'{"\\u0074o": ["' + CN.encode() + b'"], "text": "Code: 1234, valid until 10:30 '
        b'(https://a.example/x) \\u003a\\u003A", "client_ref": "ref:1"}'
    )
    r = await _send_raw(api, creds, body, f"idem-{secrets.token_hex(8)}")
    assert r.status == 202, r.json
    [row] = await api.store.list_messages(creds.account_id, limit=10)
    assert row.text.endswith("Code: 1234, valid until 10:30 (https://a.example/x) ::")
    # "to" written once plainly and once escaped is the same key twice
    body = b'{"to": "' + CN.encode() + b'", "text": "x", "\\u0074o": "' + CN2.encode() + b'"}'
    r = await _send_raw(api, creds, body, f"idem-{secrets.token_hex(8)}")
    _refused(r, "to", "$.to")
    assert len(await api.store.list_messages(creds.account_id, limit=10)) == 1


async def test_other_v1_bodies_are_checked_too(api: ApiServer) -> None:
    creds = await api.create_account()
    r = await api.request(
        "POST", "/v1/optouts", creds=creds, body=b'{"numbers": ["+8613800138000"], "numbers": []}'
    )
    _refused(r, "numbers", "$.numbers")
    r = await api.request("GET", "/v1/optouts", creds=creds)
    assert r.json["optouts"] == []


async def test_admin_account_create_and_a_tariff_tier_repeating_a_key(api: ApiServer) -> None:
    before = await api.store.list_accounts()
    r = await api.admin("POST", "/admin/accounts", body=b'{"name": "a", "name": "b"}')
    _refused(r, "name", "$.name")
    assert await api.store.list_accounts() == before
    tariff = (
        b'{"version": "2027", "effective_at": 1798732800000, "starting_price": 44000,'
        b' "tiers": [{"up_to": 100000, "price": 44000},'
        b' {"up_to": null, "price": 35000, "price": 1}]}'
    )
    r = await api.admin("POST", "/admin/tariffs", body=tariff)
    _refused(r, "price", "$.tiers[1].price")
    listed = await api.admin("GET", "/admin/tariffs")
    assert [t["version"] for t in listed.json["tariffs"]] == ["initial"]


# -- the Alibaba face ----------------------------------------------------------------------------


async def test_aliyun_template_param_repeating_a_key(face: ali.Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    code = await face.template(creds, ali.VERIFY_TEXT)
    raw = await _call(
        face,
        creds,
        "SendSms",
        PhoneNumbers=ali.CN1,
        SignName="Acme",
        TemplateCode=code,
        TemplateParam='{"code": "1234", "code": "9999"}',
    )
    assert (raw.status, raw.json["Code"]) == (200, "isv.INVALID_JSON_PARAM"), raw.json
    assert raw.json["Message"] == (
        'JSON参数不合法，只接受字符串值: duplicate key "code" at TemplateParam.code'
    )
    assert await face.messages(creds) == []
    # colons, raw and escaped, in the values and a key are fine
    raw = await _call(
        face,
        creds,
        "SendSms",
        PhoneNumbers=ali.CN1,
        SignName="Acme",
        TemplateCode=code,
        TemplateParam='{"code": "12:34\\u003a"}',
    )
    assert (raw.status, raw.json["Code"]) == (200, "OK"), raw.json
    [row] = await face.messages(creds)
    assert "12:34:" in row.text


async def test_aliyun_batch_entry_repeating_a_key(face: ali.Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    code = await face.template(creds, ali.NOTIFY_TEXT, "notification")
    raw = await _call(
        face,
        creds,
        "SendBatchSms",
        PhoneNumberJson=json.dumps([ali.CN1, ali.CN2]),
        SignNameJson=json.dumps(["Acme", "Acme"]),
        TemplateCode=code,
        TemplateParamJson=(
            '[{"name": "Li", "order": "1"}, {"name": "Wang", "order": "2", "name": "X"}]'
        ),
    )
    assert (raw.status, raw.json["Code"]) == (200, "isv.INVALID_JSON_PARAM"), raw.json
    assert 'duplicate key "name" at TemplateParamJson[1].name' in raw.json["Message"]
    assert await face.messages(creds) == []


# -- the simulator's control API -----------------------------------------------------------------


async def test_sim_control_refuses_a_repeated_knob(make_sim: Any) -> None:
    sim = await make_sim(control_port=0)
    before = sim.throttle_ratio
    status, body = await sim_review.control(
        sim, "POST", "/config", b'{"throttle_ratio": 0.5, "throttle_ratio": 0.1}'
    )
    assert (status, body["error"]) == (400, "DUPLICATE_JSON_KEY"), body
    assert body["message"] == 'body: duplicate key "throttle_ratio" at $.throttle_ratio'
    assert sim.throttle_ratio == before
    status, body = await sim_review.control(sim, "POST", "/config", b'{"throttle_ratio": 0.5}')
    assert status == 200, body
