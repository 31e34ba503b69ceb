"""The sending rules over real HTTP: sign and template review, template sends, each refusal."""

from __future__ import annotations

import pytest

from tests.sending import submit_template as _template

CN = "+8613800138000"
CN2 = "+8613900139000"


async def _approve(api, code):
    r = await api.admin("POST", f"/admin/templates/{code}/review", json={"decision": "approve"})
    assert r.status == 200 and r.json["status"] == "approved", r.json
    return r.json


async def test_sign_and_template_review_then_send(api_server, make_account):
    api = api_server
    creds = await make_account(raw_text=False, ready=False)
    r = await api.request("POST", "/v1/signs", creds=creds, json={"name": "Globex"})
    assert (r.status, r.json["status"]) == (201, "pending")
    t = await _template(api, creds, "Your code is ${code}. Valid 5 minutes.")
    assert t["status"] == "pending" and t["code"].startswith("SMS_")
    body = {"to": CN, "sign_name": "Globex", "template": t["code"], "params": {"code": "1234"}}
    # Funds first, so the refusals below are about the sign and the template.
    await api.admin(
        "POST", f"/admin/accounts/{creds.account.id}/topups", json={"amount_micro": 10_000_000}
    )
    r = await api.send(creds, body)
    assert (r.status, r.code) == (422, "SIGN_NAME_NOT_APPROVED")
    r = await api.admin(
        "POST", f"/admin/accounts/{creds.account.id}/signs/Globex/review",
        json={"decision": "approve"},
    )  # fmt: skip
    assert r.json["status"] == "approved"
    r = await api.send(creds, body)
    assert (r.status, r.code) == (422, "TEMPLATE_NOT_APPROVED")
    await _approve(api, t["code"])
    r = await api.send(creds, body)
    assert r.status == 202, r.json
    mid = r.json["messages"][0]["id"]
    got = await api.request("GET", f"/v1/messages/{mid}", creds=creds)
    assert got.json["text"] == "【Globex】Your code is 1234. Valid 5 minutes."
    bal = await api.request("GET", "/v1/balance", creds=creds)
    assert bal.json["cash_micro"] == 10_000_000 - 45_000


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({}, "TEMPLATE_MISSING_PARAMETERS"),
        ({"code": "1", "extra": "x"}, "TEMPLATE_UNKNOWN_PARAMETERS"),
        ({"code": "see http://evil.example/x"}, "TEMPLATE_PARAMETER_INVALID"),
        ({"code": "x" * 36}, "TEMPLATE_PARAMETER_INVALID"),
    ],
)
async def test_template_parameters_are_checked(api_server, make_account, params, code):
    creds = await make_account(raw_text=False)
    t = await _template(api_server, creds, "Code ${code}")
    await _approve(api_server, t["code"])
    r = await api_server.send(
        creds, {"to": CN, "sign_name": "Acme", "template": t["code"], "params": params}
    )
    assert (r.status, r.code) == (400, code), r.json


async def test_template_of_another_account_is_unknown(api_server, make_account):
    a = await make_account(raw_text=False)
    b = await make_account(raw_text=False)
    t = await _template(api_server, a, "Code ${code}")
    await _approve(api_server, t["code"])
    r = await api_server.send(
        b, {"to": CN, "sign_name": "Acme", "template": t["code"], "params": {"code": "1"}}
    )
    assert (r.status, r.code) == (422, "TEMPLATE_NOT_FOUND")
    r = await api_server.request("GET", f"/v1/templates/{t['code']}", creds=b)
    assert r.status == 404


async def test_marketing_needs_opt_out_wording_and_an_enabled_account(api_server, make_account):
    creds = await make_account(raw_text=False)
    bad = await _template(api_server, creds, "Big sale today!", kind="marketing")
    assert bad["status"] == "rejected" and "TEMPLATE_NO_OPTOUT_WORDING" in bad["reason"]
    good = await _template(api_server, creds, "Big sale today! Reply TD to unsubscribe",
                           kind="marketing")  # fmt: skip
    await _approve(api_server, good["code"])
    body = {"to": CN, "sign_name": "Acme", "template": good["code"]}
    r = await api_server.send(creds, body)
    assert (r.status, r.code) == (403, "MARKETING_NOT_ALLOWED")
    await api_server.admin("PATCH", f"/admin/accounts/{creds.account.id}", json={"marketing": True})
    r = await api_server.send(creds, body)
    assert r.status == 202, r.json


async def test_verification_frequency_windows(api_server, make_account, clock):
    clock.freeze(1_796_000_400)  # 2026-11-30T01:00:00Z = 09:00 in Asia/Shanghai
    creds = await make_account(raw_text=False)
    t = await _template(api_server, creds, "Code ${code}")
    await _approve(api_server, t["code"])

    async def send(to=CN):
        return await api_server.send(
            creds, {"to": to, "sign_name": "Acme", "template": t["code"], "params": {"code": 1}}
        )

    assert (await send()).status == 202
    r = await send()
    assert (r.status, r.code) == (429, "FREQUENCY_LIMIT_MINUTE"), r.json
    assert (await send(CN2)).status == 202  # another number has its own count
    for _ in range(4):
        clock.advance(60)
        assert (await send()).status == 202
    clock.advance(60)
    r = await send()
    assert (r.status, r.code) == (429, "FREQUENCY_LIMIT_HOUR"), r.json
    clock.advance(3600)  # next clock hour: 5 more allowed by the hour, 10 by the day
    for _ in range(5):
        assert (await send()).status == 202
        clock.advance(60)
    clock.advance(3600)
    r = await send()
    assert (r.status, r.code) == (429, "FREQUENCY_LIMIT_DAY"), r.json
    clock.advance(86_400)
    assert (await send()).status == 202


async def test_opt_out_list_blocks_and_unblocks(api_server, make_account):
    creds = await make_account()
    r = await api_server.request("POST", "/v1/optouts", creds=creds, json={"numbers": [CN]})
    assert r.json["added"] == 1
    r = await api_server.send(creds, {"to": [CN2, CN], "text": "hi"})
    assert (r.status, r.code) == (422, "RECIPIENT_OPTED_OUT") and "to[1]" in r.json["error"][
        "message"
    ]
    r = await api_server.request("DELETE", f"/v1/optouts/{CN}", creds=creds)
    assert r.status == 200
    assert (await api_server.send(creds, {"to": CN, "text": "hi"})).status == 202


async def test_do_not_contact_prefix_blocks_every_account(api_server, make_account):
    a = await make_account()
    b = await make_account()
    r = await api_server.admin(
        "PUT", "/admin/dnc/national", query="country=CN", body=b"number\n+86139*\n",
        content_type="text/csv",
    )  # fmt: skip
    assert r.status == 200 and r.json["prefixes"] == 1, r.json
    for creds in (a, b):
        r = await api_server.send(creds, {"to": CN2, "text": "hi"})
        assert (r.status, r.code) == (422, "RECIPIENT_BLOCKED")
    assert (await api_server.send(a, {"to": CN, "text": "hi"})).status == 202


async def test_insufficient_balance_queues_nothing(api_server, make_account):
    creds = await make_account(ready=False)
    await api_server.admin(
        "POST", f"/admin/accounts/{creds.account.id}/topups", json={"amount_micro": 90_000}
    )
    ok = await api_server.send(creds, {"to": [CN, CN2], "text": "hi"})  # 2 x 0.045
    assert ok.status == 202
    r = await api_server.send(creds, {"to": CN, "text": "hi"})
    assert (r.status, r.code) == (402, "INSUFFICIENT_BALANCE")
    listed = await api_server.request("GET", "/v1/messages", creds=creds)
    assert len(listed.json["messages"]) == 2


async def test_daily_quota(api_server, make_account):
    creds = await make_account(daily_quota=2)
    assert (await api_server.send(creds, {"to": [CN, CN2], "text": "hi"})).status == 202
    r = await api_server.send(creds, {"to": "+8613700137000", "text": "hi"})
    assert (r.status, r.code) == (429, "DAILY_QUOTA_EXCEEDED")
    assert int(r.headers["Retry-After"]) >= 1


async def test_free_text_passes_the_content_filter(make_api, tmp_path):
    words = tmp_path / "filter.txt"
    words.write_text("代开发票\nre:casino\\s*bonus\n", encoding="utf-8")
    api = await make_api({"rules": {"content_filter_file": str(words)}})
    creds = await api.create_account()
    r = await api.send(creds, {"to": CN, "text": "专业代开发票"})
    assert (r.status, r.code) == (422, "CONTENT_FILTERED")
    r = await api.send(creds, {"to": CN, "text": "Casino   Bonus inside"})
    assert (r.status, r.code) == (422, "CONTENT_FILTERED")
    assert (await api.send(creds, {"to": CN, "text": "meeting at 3"})).status == 202
    # Too long is refused before the filter reads (and folds) the whole text.
    r = await api.send(creds, {"to": CN, "text": "代开发票" * 20_000})
    assert (r.status, r.code) == (400, "MESSAGE_TOO_LONG")


async def test_erasure_masks_the_number_and_drops_the_text(api_server, make_account):
    creds = await make_account()
    sent = await api_server.send(creds, {"to": CN, "text": "secret text"})
    mid = sent.json["messages"][0]["id"]
    r = await api_server.request("POST", f"/v1/recipients/{CN}/erase", creds=creds)
    assert r.status == 200 and r.json["messages_erased"] == 1
    got = await api_server.request("GET", f"/v1/messages/{mid}", creds=creds)
    assert got.json["to"] != CN and got.json["to"].startswith("+86*")
    assert got.json.get("text") in (None, "")
    assert got.json["status"] == "expired"  # it was still queued: never sent after erasure
    bal = await api_server.request("GET", "/v1/balance", creds=creds)
    assert bal.json["cash_micro"] == 1_000_000 * 1_000_000  # refunded


async def test_international_units_are_transmitted_segments_priced_per_country(
    api_server, make_account
):
    creds = await make_account(ready=False)
    await api_server.admin(
        "POST", f"/admin/accounts/{creds.account.id}/topups", json={"amount_micro": 1_000_000}
    )
    text = "x" * 200  # GSM-7: 2 transmitted parts; 200 tariff characters would be 3 domestic units
    r = await api_server.send(creds, {"to": "+447700900123", "text": text})
    assert r.status == 202, r.json
    sent = r.json["messages"][0]
    assert (sent["segments"], sent["billable_units"]) == (2, 2)
    bal = await api_server.request("GET", "/v1/balance", creds=creds)
    assert bal.json["cash_micro"] == 1_000_000 - 2 * 50_000  # the test tariff's +4 price
    domestic = await api_server.send(creds, {"to": CN, "text": text})
    assert domestic.json["messages"][0]["billable_units"] == 3  # ceil(200 / 67)


async def test_with_billing_off_nothing_is_priced_or_charged(make_api):
    api = await make_api({"billing": {"enabled": False}})
    creds = await api.create_account(ready=False)  # no funds at all
    r = await api.send(creds, {"to": [CN, "+447700900123"], "text": "hi"})
    assert r.status == 202, r.json
    assert [m["billable_units"] for m in r.json["messages"]] == [1, 1]  # still counted
    assert await api.store.ledger_sums(creds.account.id) == {}
    assert await api.store.list_tariffs() == []  # no tariff is seeded either


async def test_preview_renders_a_template_under_review(api_server, make_account):
    creds = await make_account(raw_text=False)
    t = await _template(api_server, creds, "您的验证码是${code}，5分钟内有效。")  # still pending
    r = await api_server.request(
        "POST", "/v1/preview", creds=creds,
        json={"template": t["code"], "params": {"code": 123456}, "sign_name": "Acme"},
    )  # fmt: skip
    assert r.status == 200, r.json
    assert r.json["text"] == "【Acme】您的验证码是123456，5分钟内有效。"
    assert (r.json["encoding"], r.json["segments"], r.json["billable_units"]) == ("ucs2", 1, 1)
    r = await api_server.request(
        "POST", "/v1/preview", creds=creds, json={"template": t["code"], "params": {}}
    )
    assert (r.status, r.code) == (400, "TEMPLATE_MISSING_PARAMETERS")
    r = await api_server.request("POST", "/v1/preview", creds=creds, json={"template": "SMS_1"})
    assert (r.status, r.code) == (422, "TEMPLATE_NOT_FOUND")


async def test_the_preview_refuses_what_the_content_filter_refuses(make_api, tmp_path):
    """Session 35's text review: POST /v1/preview priced a text every send then refused
    CONTENT_FILTERED. It screens as the send does: free text whole, a template's values in the
    rendered body but not the words its approved text holds."""
    words = tmp_path / "filter.txt"
    words.write_text("代开发票\nre:casino\\s*bonus\n", encoding="utf-8")
    api = await make_api({"rules": {"content_filter_file": str(words)}})
    creds = await api.create_account()

    async def preview(body):
        return await api.request("POST", "/v1/preview", creds=creds, json=body)

    r = await preview({"text": "Casino   Bonus inside"})
    assert (r.status, r.code) == (422, "CONTENT_FILTERED"), r.json
    assert (await preview({"text": "meeting at 3"})).status == 200
    tpl = await api.request(
        "POST",
        "/v1/templates",
        creds=creds,
        json={"type": "notification", "name": "n", "content": "Your ${item} is ready."},
    )
    assert tpl.status == 201, tpl.json
    code = tpl.json["code"]
    r = await preview({"template": code, "params": {"item": "代开发票"}})
    assert (r.status, r.code) == (422, "CONTENT_FILTERED"), r.json
    r = await preview({"template": code, "params": {"item": "parcel"}})
    assert r.status == 200, r.json
