"""The rules and money endpoints over real HTTP, customer (/v1/) and operator (/admin/) side: each
happy path, each refusal with its code, and one account never seeing another's data.

Every reply is also validated against /openapi.json by the conftest (check_reply), so these tests
keep the documented shapes of signs, templates, opt-outs, balances, ledgers, bills, tariffs and
do-not-contact lists true. The send-side rules are in test_send_rules.py.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import pytest

from bridge.domain.settlement import month_bounds
from tests.integration.conftest import ADMIN_TOKEN
from tests.sending import DEFAULT_FUNDS
from tests.sending import submit_template as _template

CN = "+8613800138000"
CN2 = "+8613900139000"
CN3 = "+8613700137000"
NOV_15 = 1_794_715_200  # 2026-11-15T04:00:00Z = 12:00 in Asia/Shanghai (the default zone)
OCT_20 = 1_792_468_800  # 2026-10-20T04:00:00Z
NOV_05 = 1_793_851_200  # 2026-11-05T04:00:00Z
DAY_MS = 86_400_000


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


async def _sign(api, creds, name, **extra) -> Any:
    return await api.request("POST", "/v1/signs", creds=creds, json={"name": name, **extra})


async def _money(api, creds, what, body) -> Any:
    return await api.admin("POST", f"/admin/accounts/{creds.account_id}/{what}", json=body)


def _refused(r, status: int, code: str, *words: str) -> None:
    assert (r.status, r.code) == (status, code), (r.status, r.json)
    for word in words:
        assert word in r.message, (word, r.message)


# -- sign names ------------------------------------------------------------------------------------


async def test_sign_register_list_get(api_server, make_account, clock):
    now = clock.freeze(NOV_15)
    creds = await make_account(ready=False)
    r = await _sign(api_server, creds, "Globex", source="trademark", remark="our brand")
    assert r.status == 201
    expected = {
        "name": "Globex",
        "source": "trademark",
        "remark": "our brand",
        "status": "pending",
        "reason": None,
        "created_at": int(now * 1000),
        "reviewed_at": None,
        "updated_at": None,
    }
    assert r.json == expected  # no operator fields (account, flag) for the customer
    r = await _sign(api_server, creds, "Ｈｏｏｌｉ")  # fullwidth: stored in NFKC form
    assert (r.status, r.json["name"], r.json["source"]) == (201, "Hooli", "company")
    listed = await api_server.request("GET", "/v1/signs", creds=creds)
    assert [s["name"] for s in listed.json["signs"]] == ["Globex", "Hooli"]
    got = await api_server.request("GET", "/v1/signs/Globex", creds=creds)
    assert got.json == expected
    r = await api_server.request("GET", "/v1/signs/Initech", creds=creds)
    _refused(r, 404, "NOT_FOUND", "Initech")


@pytest.mark.parametrize(
    ("body", "status", "code", "word"),
    [
        (b"{", 400, "INVALID_JSON", "JSON"),
        (b"[]", 400, "INVALID_REQUEST", "object"),
        (b'{"name": "Globex", "colour": "red"}', 400, "UNKNOWN_FIELD", "colour"),
        (b'{"source": "company"}', 400, "MISSING_FIELD", "name"),
        (b'{"name": 7}', 400, "INVALID_FIELD", "name"),
        (b'{"name": "\\u3010Globex\\u3011"}', 400, "SIGN_NAME_INVALID", "brackets"),
        (b'{"name": "G"}', 400, "SIGN_NAME_INVALID", "2 to 12"),
        (b'{"name": "Globex Corp Intl"}', 400, "SIGN_NAME_INVALID", "not 16"),
        (b'{"name": "Globex", "source": "rumour"}', 400, "INVALID_FIELD", "source"),
        (b'{"name": "Globex", "remark": 1}', 400, "INVALID_FIELD", "remark"),
    ],
)
async def test_sign_submission_refusals(api_server, make_account, body, status, code, word):
    creds = await make_account(ready=False)
    r = await api_server.request("POST", "/v1/signs", creds=creds, body=body)
    _refused(r, status, code, word)
    assert (await api_server.request("GET", "/v1/signs", creds=creds)).json["signs"] == []


async def test_sign_needs_json_and_is_registered_once(api_server, make_account):
    creds = await make_account(ready=False)
    r = await api_server.request(
        "POST", "/v1/signs", creds=creds, body=b'{"name": "Globex"}', content_type="text/plain"
    )
    _refused(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert (await _sign(api_server, creds, "Globex")).status == 201
    r = await _sign(api_server, creds, "Globex")
    _refused(r, 409, "SIGN_NAME_EXISTS", "Globex")


async def test_sign_name_taken_by_another_account(api_server, make_account):
    await make_account()  # holds an approved "Acme"
    b = await make_account(ready=False)
    for spelling in ("Acme", "ＡＣＭＥ", "a c m e"):
        r = await _sign(api_server, b, spelling)
        _refused(r, 409, "SIGN_NAME_TAKEN", "another account")
    # Two pending claims on one name: the first approval wins, the second is refused.
    c = await make_account(ready=False)
    assert (await _sign(api_server, b, "Initech")).status == 201
    assert (await _sign(api_server, c, "Initech")).status == 201
    ok = await api_server.admin(
        "POST", f"/admin/accounts/{b.account_id}/signs/Initech/review", json={"decision": "approve"}
    )
    assert ok.json["status"] == "approved"
    r = await api_server.admin(
        "POST", f"/admin/accounts/{c.account_id}/signs/Initech/review", json={"decision": "approve"}
    )
    _refused(r, 409, "SIGN_NAME_TAKEN")
    got = await api_server.request("GET", "/v1/signs/Initech", creds=c)
    assert got.json["status"] == "pending"


async def test_impersonation_flag_is_shown_to_operators_only(api_server, make_account, clock):
    now = int(clock.freeze(NOV_15) * 1000)
    a = await make_account(ready=False)
    b = await make_account(ready=False)
    r = await api_server.admin(
        "POST", f"/admin/accounts/{a.account.name}/signs",
        json={"name": "Umbrella", "approve": True, "remark": "by phone"},
    )  # fmt: skip
    assert r.status == 201
    assert r.json == {
        "name": "Umbrella",
        "source": "company",
        "remark": "by phone",
        "status": "approved",
        "reason": None,
        "created_at": now,
        "reviewed_at": now,
        "updated_at": None,
        "account": a.account_id,
        "flag": None,
    }
    r = await _sign(api_server, b, "Umbrella Co")
    assert r.status == 201 and "flag" not in r.json and "account" not in r.json
    got = await api_server.request("GET", "/v1/signs/Umbrella%20Co", creds=b)
    assert "flag" not in got.json
    ops = await api_server.admin("GET", "/admin/signs", query=f"account={b.account_id}")
    [flagged] = ops.json["signs"]
    assert flagged["account"] == b.account_id and "'Umbrella'" in flagged["flag"]
    pending = await api_server.admin("GET", "/admin/signs", query="status=pending")
    assert [(s["account"], s["name"]) for s in pending.json["signs"]] == [
        (b.account_id, "Umbrella Co")
    ]
    everyone = await api_server.admin("GET", "/admin/signs")
    assert {s["name"] for s in everyone.json["signs"]} == {"Umbrella", "Umbrella Co"}
    _refused(await api_server.admin("GET", "/admin/signs", query="status=new"), 400,
             "INVALID_FIELD", "status")  # fmt: skip
    _refused(await api_server.admin("GET", "/admin/signs", query="account=nobody"), 404,
             "NOT_FOUND", "nobody")  # fmt: skip


async def test_operator_sign_add_refusals(api_server, make_account):
    a = await make_account(ready=False)
    path = f"/admin/accounts/{a.account_id}/signs"
    r = await api_server.admin("POST", path, json={"name": "Globex", "approve": "yes"})
    _refused(r, 400, "INVALID_FIELD", "approve")
    _refused(await api_server.admin("POST", path, body=b"nope"), 400, "INVALID_JSON")
    r = await api_server.admin("POST", path, json={"name": "Globex", "owner": "x"})
    _refused(r, 400, "UNKNOWN_FIELD", "owner")
    assert (await api_server.admin("POST", path, json={"name": "Globex"})).status == 201
    _refused(await api_server.admin("POST", path, json={"name": "Globex"}), 409,
             "SIGN_NAME_EXISTS")  # fmt: skip
    r = await api_server.admin("POST", "/admin/accounts/nobody/signs", json={"name": "Globex"})
    _refused(r, 404, "NOT_FOUND", "nobody")
    r = await api_server.admin(
        "POST", path, body=b'{"name": "Hooli"}', content_type="application/xml"
    )
    _refused(r, 415, "UNSUPPORTED_MEDIA_TYPE")


async def test_sign_review_decisions_and_refusals(api_server, make_account, clock):
    clock.freeze(NOV_15)
    a = await make_account(ready=False)
    assert (await _sign(api_server, a, "Globex")).status == 201
    path = f"/admin/accounts/{a.account_id}/signs/Globex/review"
    cases = [
        ({"decision": "maybe"}, "INVALID_FIELD", "decision"),
        ({"decision": "reject"}, "MISSING_FIELD", "reason"),
        ({"decision": "reject", "reason": "  "}, "MISSING_FIELD", "reason"),
        ({"decision": "reject", "reason": 5}, "INVALID_FIELD", "reason"),
        ({"decision": "reject", "reason": "x" * 501}, "INVALID_FIELD", "500"),
        ({"decision": "approve", "note": "x"}, "UNKNOWN_FIELD", "note"),
        ([], "INVALID_REQUEST", "decision"),
    ]
    for body, code, word in cases:
        _refused(await api_server.admin("POST", path, json=body), 400, code, word)
    _refused(await api_server.admin("POST", path, body=b"{"), 400, "INVALID_JSON")
    r = await api_server.admin(
        "POST", f"/admin/accounts/{a.account_id}/signs/Hooli/review", json={"decision": "approve"}
    )
    _refused(r, 404, "NOT_FOUND", "Hooli")
    r = await api_server.admin(
        "POST", "/admin/accounts/nobody/signs/Globex/review", json={"decision": "approve"}
    )
    _refused(r, 404, "NOT_FOUND")
    clock.advance(60)
    r = await api_server.admin(
        "POST", path, json={"decision": "reject", "reason": "no trademark certificate"}
    )
    assert r.status == 200
    assert (r.json["status"], r.json["reason"]) == ("rejected", "no trademark certificate")
    assert r.json["reviewed_at"] == r.json["created_at"] + 60_000
    got = await api_server.request("GET", "/v1/signs/Globex", creds=a)
    assert (got.json["status"], got.json["reason"]) == ("rejected", "no trademark certificate")


# -- templates -------------------------------------------------------------------------------------


async def test_template_submit_list_and_get(api_server, make_account, clock):
    now = int(clock.freeze(NOV_15) * 1000)
    creds = await make_account(raw_text=False)
    t = await _template(api_server, creds, "Your code is ${code}", remark="login")
    assert t == {
        "code": t["code"],
        "type": "verification",
        "name": "t",
        "content": "Your code is ${code}",
        "remark": "login",
        "allow_urls": False,
        "status": "pending",
        "reason": None,
        "created_at": now,
        "reviewed_at": None,
        "revision": 1,
        "international": False,
        "updated_at": None,
    }
    clock.advance(1)
    n = await _template(api_server, creds, "Parcel ${id} at ${url}", "notification",
                        allow_urls=True)  # fmt: skip
    assert (n["type"], n["allow_urls"]) == ("notification", True)
    got = await api_server.request("GET", f"/v1/templates/{t['code']}", creds=creds)
    assert got.json == t
    listed = await api_server.request("GET", "/v1/templates", creds=creds)
    assert [x["code"] for x in listed.json["templates"]] == [t["code"], n["code"]]
    one = await api_server.request("GET", "/v1/templates", creds=creds, query="limit=1")
    assert [x["code"] for x in one.json["templates"]] == [t["code"]]
    none = await api_server.request("GET", "/v1/templates", creds=creds, query="status=approved")
    assert none.json["templates"] == []
    for query, word in (("status=live", "status"), ("limit=0", "limit"), ("limit=5001", "limit")):
        r = await api_server.request("GET", "/v1/templates", creds=creds, query=query)
        _refused(r, 400, "INVALID_FIELD", word)
    for code in ("SMS_000000000", "not.a.code"):
        r = await api_server.request("GET", f"/v1/templates/{code}", creds=creds)
        _refused(r, 404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("body", "code", "word"),
    [
        (b"{", "INVALID_JSON", "JSON"),
        (b'["content"]', "INVALID_REQUEST", "object"),
        (b'{"type": "verification", "name": "t", "content": "x", "lang": "en"}',
         "UNKNOWN_FIELD", "lang"),
        (b'{"type": "verification", "name": "t"}', "MISSING_FIELD", "content"),
        (b'{"type": "promo", "name": "t", "content": "x"}', "INVALID_FIELD", "type"),
        (b'{"type": "verification", "name": " ", "content": "x"}', "INVALID_FIELD", "name"),
        (b'{"type": "verification", "name": "t", "content": 1}', "INVALID_FIELD", "content"),
        (b'{"type": "verification", "name": "t", "content": "x", "allow_urls": "yes"}',
         "INVALID_FIELD", "allow_urls"),
    ],
)  # fmt: skip
async def test_template_submission_refusals(api_server, make_account, body, code, word):
    creds = await make_account()
    r = await api_server.request("POST", "/v1/templates", creds=creds, body=body)
    _refused(r, 400, code, word)
    listed = await api_server.request("GET", "/v1/templates", creds=creds)
    assert listed.json["templates"] == []


async def test_template_content_over_2000_characters_is_refused(api_server, make_account):
    creds = await make_account()
    r = await api_server.request(
        "POST", "/v1/templates", creds=creds,
        json={"type": "notification", "name": "t", "content": "x" * 2001},
    )  # fmt: skip
    _refused(r, 400, "INVALID_FIELD", "content")


async def test_automatic_review_rejects_with_reasons(make_api, tmp_path, clock):
    now = int(clock.freeze(NOV_15) * 1000)
    words = tmp_path / "filter.txt"
    words.write_text("代开发票\n", encoding="utf-8")
    api = await make_api({"rules": {"content_filter_file": str(words)}})
    creds = await api.create_account(raw_text=False)  # its longest sign: "Acme", 4 characters

    filtered = await _template(api, creds, "专业代开${x}发票")
    assert filtered["status"] == "rejected"
    assert (
        filtered["reason"].startswith("TEMPLATE_CONTENT_FILTERED: ")
        and "代开发票" in filtered["reason"]
    )
    # Rejected by the automatic review: no operator decided, so reviewed_at stays unset (an
    # operator can never approve it; the customer submits a corrected template).
    assert filtered["created_at"] == now and filtered["reviewed_at"] is None
    malformed = await _template(api, creds, "Code ${1code} now")
    assert malformed["status"] == "rejected"
    assert malformed["reason"].startswith("TEMPLATE_MALFORMED: ")
    # 500 characters with "【Acme】" (6): 494 of content fit, 495 do not.
    fits = await _template(api, creds, "x" * 494 + "${code}", "notification")
    assert fits["status"] == "pending"
    long = await _template(api, creds, "x" * 495 + "${code}", "notification")
    assert long["status"] == "rejected" and long["reason"].startswith("TEMPLATE_TOO_LONG: ")
    assert "501 characters" in long["reason"]
    both = await _template(api, creds, "代开发票 ${a" + "y" * 500, "marketing")
    codes = [part.split(":")[0] for part in both["reason"].split("; ")]
    assert codes == [
        "TEMPLATE_MALFORMED",
        "TEMPLATE_CONTENT_FILTERED",
        "TEMPLATE_NO_OPTOUT_WORDING",
        "TEMPLATE_TOO_LONG",
    ]

    got = await api.request("GET", f"/v1/templates/{malformed['code']}", creds=creds)
    assert got.json == malformed
    clock.advance(5)
    for t in (filtered, malformed, long):
        r = await api.admin(
            "POST", f"/admin/templates/{t['code']}/review", json={"decision": "approve"}
        )
        _refused(r, 400, "INVALID_REQUEST", "automatic review")
    rejected = await api.admin("GET", "/admin/templates", query="status=rejected")
    assert {x["code"] for x in rejected.json["templates"]} == {
        filtered["code"],
        malformed["code"],
        long["code"],
        both["code"],
    }


async def test_operator_template_review(api_server, make_account, clock):
    clock.freeze(NOV_15)
    a = await make_account(raw_text=False)
    b = await make_account(raw_text=False)
    ta = await _template(api_server, a, "Code ${code}")
    tb = await _template(api_server, b, "Your parcel ${id}", "notification")
    listed = await api_server.admin("GET", "/admin/templates", query=f"account={a.account.name}")
    assert [(x["code"], x["account"]) for x in listed.json["templates"]] == [
        (ta["code"], a.account_id)
    ]
    pending = await api_server.admin("GET", "/admin/templates", query="status=pending")
    assert {x["code"] for x in pending.json["templates"]} == {ta["code"], tb["code"]}
    _refused(await api_server.admin("GET", "/admin/templates", query="status=x"), 400,
             "INVALID_FIELD")  # fmt: skip
    _refused(await api_server.admin("GET", "/admin/templates", query="account=nobody"), 404,
             "NOT_FOUND")  # fmt: skip

    path = f"/admin/templates/{ta['code']}/review"
    for body, code, word in (
        ({"decision": "reject"}, "MISSING_FIELD", "reason"),
        ({"decision": "ok"}, "INVALID_FIELD", "decision"),
        ({"decision": "approve", "by": "me"}, "UNKNOWN_FIELD", "by"),
    ):
        _refused(await api_server.admin("POST", path, json=body), 400, code, word)
    _refused(await api_server.admin("POST", path, body=b"]"), 400, "INVALID_JSON")
    r = await api_server.admin(
        "POST", "/admin/templates/SMS_000000000/review", json={"decision": "approve"}
    )
    _refused(r, 404, "NOT_FOUND")

    clock.advance(10)
    r = await api_server.admin("POST", path, json={"decision": "approve"})
    assert r.status == 200
    assert r.json == {
        **ta,
        "status": "approved",
        "reviewed_at": ta["created_at"] + 10_000,
        "account": a.account_id,
    }
    clock.advance(10)  # an operator may withdraw an approval, with a reason the customer sees
    r = await api_server.admin("POST", path, json={"decision": "reject", "reason": "abused"})
    assert (r.json["status"], r.json["reason"]) == ("rejected", "abused")
    got = await api_server.request("GET", f"/v1/templates/{ta['code']}", creds=a)
    assert (got.json["status"], got.json["reason"]) == ("rejected", "abused")
    assert "account" not in got.json
    clock.advance(10)  # rejected by an operator (not by the automatic review): may be approved
    r = await api_server.admin("POST", path, json={"decision": "approve", "reason": None})
    assert r.json["status"] == "approved"


# -- isolation -------------------------------------------------------------------------------------


async def test_one_account_never_sees_anothers_rules(api_server, make_account):
    a = await make_account(ready=False)
    b = await make_account(ready=False)
    assert (await _sign(api_server, a, "Globex")).status == 201
    t = await _template(api_server, a, "Code ${code}")
    await api_server.request("POST", "/v1/optouts", creds=a, json={"numbers": [CN]})
    await _money(api_server, a, "topups", {"amount_micro": 1_000_000})

    r = await api_server.request("GET", "/v1/signs/Globex", creds=b)
    _refused(r, 404, "NOT_FOUND")
    assert (await api_server.request("GET", "/v1/signs", creds=b)).json["signs"] == []
    listed = await api_server.request("GET", "/v1/templates", creds=b)
    assert listed.json["templates"] == []
    assert (await api_server.request("GET", "/v1/optouts", creds=b)).json["optouts"] == []
    r = await api_server.request("DELETE", f"/v1/optouts/{CN}", creds=b)
    _refused(r, 404, "NOT_FOUND")
    assert (await api_server.request("GET", "/v1/ledger", creds=b)).json["entries"] == []
    assert (await api_server.request("GET", "/v1/balance", creds=b)).json["cash_micro"] == 0
    # b may register the same (unapproved) sign name; a's is untouched
    assert (await _sign(api_server, b, "Globex")).status == 201
    still = await api_server.request("GET", f"/v1/templates/{t['code']}", creds=a)
    assert still.status == 200
    assert [
        o["number"]
        for o in (await api_server.request("GET", "/v1/optouts", creds=a)).json["optouts"]
    ] == [CN]


# -- opt-outs and erasure --------------------------------------------------------------------------


async def test_optouts_add_page_and_remove(api_server, make_account, clock):
    now = int(clock.freeze(NOV_15) * 1000)
    creds = await make_account(default_country="CN")
    r = await api_server.request(
        "POST", "/v1/optouts", creds=creds, json={"numbers": [CN3, "13900139000", CN, CN]}
    )
    assert r.status == 200
    assert r.json == {"added": 3, "numbers": [CN3, CN, CN2]}
    r = await api_server.request(
        "POST", "/v1/optouts", creds=creds, json={"numbers": [CN, "+8613600136000"]}
    )
    assert r.json["added"] == 1

    page = await api_server.request("GET", "/v1/optouts", creds=creds, query="limit=3")
    assert page.json["optouts"] == [
        {"number": "+8613600136000", "source": "api", "created_at": now},
        {"number": CN3, "source": "api", "created_at": now},
        {"number": CN, "source": "api", "created_at": now},
    ]
    assert page.json["next_cursor"] == CN
    rest = await api_server.request(
        "GET",
        "/v1/optouts",
        creds=creds,
        query=f"limit=3&cursor={quote(page.json['next_cursor'], safe='')}",
    )
    assert [o["number"] for o in rest.json["optouts"]] == [CN2]
    assert rest.json["next_cursor"] is None

    r = await api_server.request("DELETE", "/v1/optouts/13900139000", creds=creds)  # national
    assert r.json == {"number": CN2, "removed": True}
    _refused(await api_server.request("DELETE", f"/v1/optouts/{CN2}", creds=creds), 404,
             "NOT_FOUND", CN2)  # fmt: skip
    _refused(await api_server.request("DELETE", "/v1/optouts/12ab", creds=creds), 400,
             "INVALID_NUMBER", "number")  # fmt: skip


@pytest.mark.parametrize(
    ("body", "code", "word"),
    [
        (b"{", "INVALID_JSON", "JSON"),
        (b'{"number": "+8613800138000"}', "UNKNOWN_FIELD", "number"),
        (b"[]", "INVALID_REQUEST", "numbers"),
        (b'{"numbers": []}', "INVALID_FIELD", "numbers"),
        (b'{"numbers": "+8613800138000"}', "INVALID_FIELD", "numbers"),
        (b'{"numbers": ["+8613800138000", 8613900139000]}', "INVALID_FIELD", "numbers[1]"),
        (b'{"numbers": ["+8613800138000", "call me"]}', "INVALID_NUMBER", "numbers[1]"),
    ],
)
async def test_optout_refusals_add_nothing(api_server, make_account, body, code, word):
    creds = await make_account()
    r = await api_server.request("POST", "/v1/optouts", creds=creds, body=body)
    _refused(r, 400, code, word)
    assert (await api_server.request("GET", "/v1/optouts", creds=creds)).json["optouts"] == []


async def test_optout_list_limits(api_server, make_account):
    creds = await make_account()
    for query in ("limit=0", "limit=1001", "limit=x"):
        r = await api_server.request("GET", "/v1/optouts", creds=creds, query=query)
        _refused(r, 400, "INVALID_FIELD", "limit")
    big = {"numbers": [f"+86138{i:08d}" for i in range(10_001)]}
    r = await api_server.request("POST", "/v1/optouts", creds=creds, json=big)
    _refused(r, 400, "INVALID_FIELD", "10000")


async def test_erasure_is_per_account(api_server, make_account):
    a = await make_account()
    b = await make_account()
    sent = await api_server.send(b, {"to": CN, "text": "b's text"})
    mid = sent.json["messages"][0]["id"]
    r = await api_server.request("POST", f"/v1/recipients/{CN}/erase", creds=a)
    assert r.json == {"number": "+86***********", "messages_erased": 0}
    got = await api_server.request("GET", f"/v1/messages/{mid}", creds=b)
    assert (got.json["to"], got.json["text"]) == (CN, "b's text")
    r = await api_server.request("POST", "/v1/recipients/not-a-number/erase", creds=a)
    _refused(r, 400, "INVALID_NUMBER", "number")


# -- money -----------------------------------------------------------------------------------------


async def test_topup_voucher_card_and_the_balance(api_server, make_account, clock):
    now = int(clock.freeze(NOV_15) * 1000)
    creds = await make_account(ready=False)
    await api_server.admin("POST", f"/admin/accounts/{creds.account_id}/signs",
                           json={"name": "Acme", "approve": True})  # fmt: skip
    r = await _money(api_server, creds, "topups", {"amount_micro": 5_000_000, "ref": "pay-1"})
    assert r.status == 201
    assert r.json["added"] == [
        {
            "kind": "topup",
            "amount_micro": 5_000_000,
            "pocket": "cash",
            "ref": "pay-1",
            "expires_at": None,
        }
    ]
    assert (r.json["cash_micro"], r.json["cash"], r.json["currency"]) == (5_000_000, "5.00", "CNY")
    expiry = now + DAY_MS
    r = await _money(api_server, creds, "vouchers",
                     {"amount_micro": 2_000_000, "expires_at": expiry})  # fmt: skip
    [grant] = r.json["added"]
    assert grant["kind"] == "voucher_grant" and grant["pocket"].startswith("voucher:")
    voucher_id = grant["pocket"].removeprefix("voucher:")
    r = await _money(api_server, creds, "cards", {"face_value_micro": 999_000_000})
    [card] = r.json["added"]
    year_later = _ms(datetime(2027, 11, 15, 4, 0, tzinfo=UTC))  # same wall-clock time, next year
    assert (card["kind"], card["amount_micro"], card["expires_at"]) == (
        "card_purchase",
        999_000_000,
        year_later,
    )

    bal = await api_server.request("GET", "/v1/balance", creds=creds)
    assert bal.json == {
        "currency": "CNY",
        "cash_micro": 5_000_000,
        "cash": "5.00",
        "vouchers": [
            {"id": voucher_id, "remaining_micro": 2_000_000, "remaining": "2.00",
             "expires_at": expiry},
        ],
        "cards": [
            {"id": card["pocket"].removeprefix("card:"), "remaining_micro": 999_000_000,
             "remaining": "999.00", "expires_at": year_later},
        ],
        "available_domestic_micro": 7_000_000,
        "available_international_micro": 1_006_000_000,
        "invoiced_micro": 0,
        "account_kind": "prepaid",
        "low_balance_threshold_micro": 0,
        "low_balance_warned_at": None,
    }  # fmt: skip
    ops = await api_server.admin("GET", f"/admin/accounts/{creds.account.name}/balance")
    assert ops.json == bal.json

    assert (await api_server.send(creds, {"to": CN, "text": "hi"})).status == 202
    bal = await api_server.request("GET", "/v1/balance", creds=creds)
    assert bal.json["vouchers"][0]["remaining_micro"] == 2_000_000 - 45_000  # vouchers first
    assert bal.json["cash_micro"] == 5_000_000
    clock.advance(DAY_MS / 1000)  # the voucher expires at exactly expires_at: remainder void
    bal = await api_server.request("GET", "/v1/balance", creds=creds)
    assert bal.json["vouchers"] == []
    assert bal.json["available_domestic_micro"] == 5_000_000
    _refused(await api_server.admin("GET", "/admin/accounts/nobody/balance"), 404, "NOT_FOUND")


@pytest.mark.parametrize(
    ("what", "body", "code", "word"),
    [
        ("topups", {"amount_micro": 0}, "INVALID_FIELD", "amount"),
        ("topups", {"amount_micro": -5}, "INVALID_FIELD", "amount"),
        ("topups", {"amount_micro": "5000000"}, "INVALID_FIELD", "amount_micro"),
        ("topups", {"amount_micro": True}, "INVALID_FIELD", "amount_micro"),
        ("topups", {"amount_micro": 1.5}, "INVALID_FIELD", "amount_micro"),
        ("topups", {}, "INVALID_FIELD", "amount_micro"),
        ("topups", {"amount_micro": 1, "ref": "x" * 65}, "INVALID_FIELD", "ref"),
        ("topups", {"amount_micro": 1, "note": "x"}, "UNKNOWN_FIELD", "note"),
        ("topups", [1], "INVALID_REQUEST", "object"),
        ("vouchers", {"amount_micro": 1, "expires_at": "tomorrow"}, "INVALID_FIELD", "expires_at"),
        ("vouchers", {"amount_micro": 1, "expires_at": NOV_15 * 1000}, "INVALID_FIELD",
         "expires_at"),
        ("vouchers", {"amount_micro": 0}, "INVALID_FIELD", "amount"),
        # Vouchers and cards take a ref since session 35 (it was UNKNOWN_FIELD): checked alike.
        ("vouchers", {"amount_micro": 1, "ref": ""}, "INVALID_FIELD", "ref"),
        ("topups", {"amount_micro": 1, "ref": ""}, "INVALID_FIELD", "ref"),
        ("cards", {"face_value_micro": 999_000_000, "ref": 7}, "INVALID_FIELD", "ref"),
        ("cards", {"face_value_micro": 999}, "INVALID_FIELD", "face_value"),
        ("cards", {"face_value_micro": 1_000_000_000}, "INVALID_FIELD", "face_value"),
        ("cards", {"face_value_micro": 999_000_000.0}, "INVALID_FIELD", "face_value_micro"),
        ("cards", {"amount_micro": 999_000_000}, "UNKNOWN_FIELD", "amount_micro"),
    ],
)  # fmt: skip
async def test_money_refusals_record_nothing(api_server, make_account, clock, what, body, code,
                                             word):  # fmt: skip
    clock.freeze(NOV_15)
    creds = await make_account(ready=False)
    r = await _money(api_server, creds, what, body)
    _refused(r, 400, code, word)
    assert (await api_server.request("GET", "/v1/ledger", creds=creds)).json["entries"] == []


async def test_every_card_face_value_and_the_transport_refusals(api_server, make_account):
    creds = await make_account(ready=False)
    for face in (999_000_000, 1_999_000_000, 4_999_000_000):
        r = await _money(api_server, creds, "cards", {"face_value_micro": face})
        assert r.status == 201 and r.json["added"][0]["amount_micro"] == face
    bal = await api_server.request("GET", "/v1/balance", creds=creds)
    assert sorted(c["remaining_micro"] for c in bal.json["cards"]) == [
        999_000_000,
        1_999_000_000,
        4_999_000_000,
    ]
    assert bal.json["available_domestic_micro"] == 0  # cards never pay domestic traffic
    path = f"/admin/accounts/{creds.account_id}/topups"
    _refused(await api_server.admin("POST", path, body=b"{"), 400, "INVALID_JSON")
    _refused(await api_server.admin("POST", path), 400, "INVALID_JSON")
    r = await api_server.admin("POST", path, body=b'{"amount_micro": 1}', content_type="text/csv")
    _refused(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    for what in ("topups", "vouchers", "cards"):
        r = await api_server.admin("POST", f"/admin/accounts/nobody/{what}",
                                   json={"amount_micro": 1})  # fmt: skip
        _refused(r, 404, "NOT_FOUND", "nobody")


async def test_ledger_pages_by_cursor(api_server, make_account, clock):
    now = int(clock.freeze(NOV_15) * 1000)
    creds = await make_account(ready=False)
    other = await make_account(ready=False)
    for i in range(1, 6):
        await _money(api_server, creds, "topups", {"amount_micro": i, "ref": f"pay-{i}"})
        await _money(api_server, other, "topups", {"amount_micro": 100})
    seen: list[dict[str, Any]] = []
    cursor, pages = "0", 0
    while cursor is not None:
        r = await api_server.request(
            "GET", "/v1/ledger", creds=creds, query=f"limit=2&after={cursor}"
        )
        seen += r.json["entries"]
        cursor, pages = r.json["next_cursor"], pages + 1
        if cursor is not None:
            assert cursor == str(r.json["entries"][-1]["id"])
    assert pages == 3  # 2 + 2 + 1
    assert [(e["kind"], e["amount_micro"], e["pocket"], e["ref"], e["at"], e["expires_at"])
            for e in seen] == [
        ("topup", i, "cash", f"pay-{i}", now, None) for i in range(1, 6)
    ]  # fmt: skip
    ids = [e["id"] for e in seen]
    assert ids == sorted(ids) and len(set(ids)) == 5
    full = await api_server.request("GET", "/v1/ledger", creds=creds)
    assert [e["id"] for e in full.json["entries"]] == ids and full.json["next_cursor"] is None
    for query, code in (
        ("after=abc", "INVALID_CURSOR"),
        ("after=-1", "INVALID_CURSOR"),
        ("limit=0", "INVALID_FIELD"),
        ("limit=1001", "INVALID_FIELD"),
    ):
        r = await api_server.request("GET", "/v1/ledger", creds=creds, query=query)
        _refused(r, 400, code)


# -- bills and settlement --------------------------------------------------------------------------


async def test_bill_of_the_current_month_is_open(api_server, make_account, clock):
    clock.freeze(NOV_15)
    creds = await make_account()
    assert (await api_server.send(creds, {"to": [CN, CN2], "text": "hi"})).status == 202
    long = "x" * 80  # 86 characters with 【Acme】: 2 units
    assert (await api_server.send(creds, {"to": CN3, "text": long})).status == 202
    r = await api_server.request("GET", "/v1/bills/2026-11", creds=creds)
    assert r.json == {
        "month": "2026-11",
        "currency": "CNY",
        "account_kind": "prepaid",
        "units": 0,
        "tier": 1,
        "tier_price_micro": 45_000,
        "tier_price": "0.045",
        "domestic_amount_micro": 0,
        "charged_micro": 0,
        "refund_micro": 0,
        # Where a refund goes (cash, vouchers, void) is decided when the month is settled.
        "refund_cash_micro": None,
        "refund_vouchers_micro": None,
        "refund_void_micro": None,
        "invoice_total_micro": 0,
        "vouchers_used_micro": 0,
        "international_amount_micro": 0,
        "international_charged_micro": 0,
        "domestic": [],
        "international": [],
        "status": "open",
        "settled_at": None,
        # What the bill covers: Shanghai's November (no bill before it to chain from).
        "period_start": month_bounds("2026-11", "Asia/Shanghai")[0],
        "period_end": month_bounds("2026-11", "Asia/Shanghai")[1],
        "timezone": "Asia/Shanghai",
        "pending_messages_units": 4,  # queued: awaiting their outcome, not priced yet
    }
    ops = await api_server.admin("GET", f"/admin/accounts/{creds.account_id}/bills/2026-11")
    assert ops.json == r.json
    for month in ("2026-13", "202611", "2026-1", "26-11", "0000-01", "1969-12", "9999-12"):
        r = await api_server.request("GET", f"/v1/bills/{month}", creds=creds)
        _refused(r, 400, "INVALID_MONTH", "YYYY-MM")
    r = await api_server.admin("GET", "/admin/accounts/nobody/bills/2026-11")
    _refused(r, 404, "NOT_FOUND")


async def test_settlement(api_server, make_account, clock):
    clock.freeze(OCT_20)
    busy = await make_account()
    idle = await make_account()
    assert (await api_server.send(busy, {"to": CN, "text": "october"})).status == 202
    r = await api_server.admin("POST", "/admin/bills/settle", json={"month": "2026-10"})
    _refused(r, 409, "SETTLEMENT_NOT_READY", "2026-10")  # the month is not over

    clock.freeze(NOV_05)
    for body, status, code in (
        ({}, 400, "MISSING_FIELD"),
        ({"month": 202610}, 400, "MISSING_FIELD"),
        ({"month": "2026-13"}, 400, "INVALID_MONTH"),
        ({"month": "0000-01"}, 400, "INVALID_MONTH"),
        ({"month": "2026-10", "accounts": []}, 400, "UNKNOWN_FIELD"),
        ({"month": "2026-10", "account": "nobody"}, 404, "NOT_FOUND"),
        ({"month": "2026-11"}, 409, "SETTLEMENT_NOT_READY"),
    ):
        _refused(await api_server.admin("POST", "/admin/bills/settle", json=body), status, code)
    _refused(await api_server.admin("POST", "/admin/bills/settle", body=b"{"), 400, "INVALID_JSON")

    r = await api_server.admin(
        "POST", "/admin/bills/settle", json={"month": "2026-10", "account": idle.account.name}
    )
    assert r.json == {
        "month": "2026-10",
        "results": [
            {"account": idle.account_id, "status": "settled", "units": 0, "tier": 1,
             "refund_micro": 0, "refund_cash_micro": 0, "refund_vouchers_micro": 0,
             "refund_void_micro": 0, "invoice_total_micro": 0},
        ],
    }  # fmt: skip
    r = await api_server.admin("POST", "/admin/bills/settle", json={"month": "2026-10"})
    by_account = {x["account"]: x for x in r.json["results"]}
    assert by_account[idle.account_id]["status"] == "already_settled"
    assert by_account[busy.account_id]["status"] == "not_ready"  # its message is still queued
    assert "await their outcome" in by_account[busy.account_id]["message"]

    bill = await api_server.request("GET", "/v1/bills/2026-10", creds=idle)
    assert (bill.json["status"], bill.json["settled_at"]) == ("settled", NOV_05 * 1000)
    assert bill.json["pending_messages_units"] == 0
    ledger = await api_server.request("GET", "/v1/ledger", creds=idle)
    assert [(e["kind"], e["amount_micro"], e["ref"]) for e in ledger.json["entries"]][-1] == (
        "settlement_adjustment",
        0,
        "2026-10",
    )
    open_bill = await api_server.request("GET", "/v1/bills/2026-10", creds=busy)
    assert (open_bill.json["status"], open_bill.json["pending_messages_units"]) == ("open", 1)


# -- tariffs ---------------------------------------------------------------------------------------

_TARIFF = {
    "version": "2027",
    "effective_at": 1_798_732_800_000,  # 2027-01-01T00:00:00+08:00
    "tiers": [{"up_to": 100_000, "price": 44_000}, {"up_to": None, "price": 35_000}],
    "starting_price": 44_000,
    "international": {"+44": 60_000, "+1": 50_000},
}


async def test_tariffs_list_and_add(api_server):
    r = await api_server.admin("GET", "/admin/tariffs")
    [initial] = r.json["tariffs"]
    assert (initial["version"], initial["effective_at"]) == ("initial", 0)
    assert (initial["starting_price"], initial["starting_price_display"]) == (45_000, "0.045")
    assert initial["tiers"][0] == {"up_to": 100_000, "price": 45_000}
    assert initial["tiers"][-1] == {"up_to": None, "price": 36_000}
    assert initial["counting_rule"] == "chars_70_67"
    assert (initial["domestic_bill_on"], initial["international_bill_on"]) == (
        "delivered",
        "submitted",
    )

    r = await api_server.admin("POST", "/admin/tariffs", json=_TARIFF)
    assert r.status == 201
    assert r.json == {
        **_TARIFF,
        "international": {"+1": 50_000, "+44": 60_000},
        "counting_rule": "chars_70_67",
        "domestic_bill_on": "delivered",
        "international_bill_on": "submitted",
        "domestic_prefix": "+86",
        "starting_price_display": "0.044",
    }
    listed = await api_server.admin("GET", "/admin/tariffs")
    assert [t["version"] for t in listed.json["tariffs"]] == ["initial", "2027"]
    r = await api_server.admin("POST", "/admin/tariffs", json={**_TARIFF, "effective_at": 1})
    _refused(r, 409, "TARIFF_EXISTS", "2027")
    r = await api_server.admin("POST", "/admin/tariffs", json={**_TARIFF, "version": "other"})
    _refused(r, 409, "TARIFF_EXISTS")
    assert len((await api_server.admin("GET", "/admin/tariffs")).json["tariffs"]) == 2


@pytest.mark.parametrize(
    ("change", "word"),
    [
        ({"currency": "CNY"}, "currency"),
        ({"effective_at": None}, "effective_at"),
        ({"version": ""}, "version"),
        ({"effective_at": -1}, "effective_at"),
        ({"tiers": [{"up_to": 100, "price": 1}]}, "tiers[1].up_to"),
        ({"tiers": [{"up_to": None, "price": 0}]}, "tiers[1].price"),
        ({"tiers": {"up_to": None}}, "tiers"),
        ({"starting_price": 40_000}, "starting_price"),
        ({"counting_rule": "words"}, "counting_rule"),
        ({"domestic_bill_on": "paid"}, "domestic_bill_on"),
        ({"international": {"44": 1}}, "international['44']"),
        ({"international": {"+8610": 1}}, "domestic prefix"),
        ({"international": []}, "international"),
        ({"domestic_prefix": "86"}, "domestic_prefix"),
    ],
)
async def test_tariff_validation_names_the_field(api_server, change, word):
    body = {k: v for k, v in {**_TARIFF, **change}.items() if v is not None}
    r = await api_server.admin("POST", "/admin/tariffs", json=body)
    # An unknown field is UNKNOWN_FIELD, as on every body endpoint; a bad value INVALID_TARIFF.
    _refused(r, 400, "UNKNOWN_FIELD" if word == "currency" else "INVALID_TARIFF", word)
    assert len((await api_server.admin("GET", "/admin/tariffs")).json["tariffs"]) == 1


@pytest.mark.parametrize(
    ("body", "word"),
    [({}, "version: required"), ({"version": "v9"}, "effective_at: required")],
)
async def test_a_tariff_missing_its_version_or_time_names_the_field(api_server, body, word):
    """Not the interpreter's words: this was "tariff: Tariff.__init__() missing 2 required
    positional arguments: 'version' and 'effective_at'"."""
    r = await api_server.admin("POST", "/admin/tariffs", json=body)
    _refused(r, 400, "INVALID_TARIFF", word)
    assert "__init__" not in r.message and "positional" not in r.message


async def test_tariff_body_must_be_a_json_object(api_server):
    _refused(await api_server.admin("POST", "/admin/tariffs", json=[1]), 400, "INVALID_TARIFF",
             "object")  # fmt: skip
    _refused(await api_server.admin("POST", "/admin/tariffs", body=b"{"), 400, "INVALID_JSON")
    r = await api_server.admin("POST", "/admin/tariffs", body=b"{}", content_type="text/yaml")
    _refused(r, 415, "UNSUPPORTED_MEDIA_TYPE")


# -- do-not-contact lists --------------------------------------------------------------------------


async def _dnc(api, list_id, body: bytes, query="", content_type="text/csv") -> Any:
    return await api.admin(
        "PUT", f"/admin/dnc/{list_id}", body=body, query=query, content_type=content_type
    )


async def test_dnc_import_list_replace_and_delete(api_server, make_account, clock):
    now = int(clock.freeze(NOV_15) * 1000)
    creds = await make_account()
    csv = b"number,added\n13800138000,2026-01-01\n+86139*\n# comment\n\n+447700900123\n"
    r = await _dnc(api_server, "cn-national", csv, "country=CN&name=National%20register")
    assert r.json == {
        "id": "cn-national",
        "name": "National register",
        "country": "CN",
        "numbers": 2,
        "prefixes": 1,
        "imported_at": now,
        "skipped": [],
        "messages_ended": 0,
    }
    listed = await api_server.admin("GET", "/admin/dnc")
    kept = {k: v for k, v in r.json.items() if k not in ("skipped", "messages_ended")}
    assert listed.json == {"lists": [kept]}
    _refused(await api_server.send(creds, {"to": CN, "text": "hi"}), 422, "RECIPIENT_BLOCKED")

    bad = b"+8613800138000\nnot a number\n+86*\n"
    r = await _dnc(api_server, "cn-national", bad)
    _refused(r, 400, "INVALID_FIELD", "2 bad line(s)")
    assert "line 2" in r.message and "line 3" in r.message and "strict=false" in r.message
    still = await api_server.admin("GET", "/admin/dnc")
    assert still.json == listed.json  # strict: nothing imported

    r = await _dnc(api_server, "cn-national", bad, "strict=false")
    assert (r.json["numbers"], r.json["prefixes"], r.json["country"]) == (1, 0, None)
    assert r.json["name"] == "cn-national"
    assert [s.split(":")[0] for s in r.json["skipped"]] == ["line 2", "line 3"]
    assert "too short" in r.json["skipped"][1]
    # replaced, not merged: +86139* is gone
    assert (await api_server.send(creds, {"to": CN2, "text": "hi"})).status == 202

    r = await api_server.admin("DELETE", "/admin/dnc/cn-national")
    assert r.json == {"id": "cn-national", "deleted": True}
    assert (await api_server.admin("GET", "/admin/dnc")).json == {"lists": []}
    assert (await api_server.send(creds, {"to": CN, "text": "hi"})).status == 202
    _refused(await api_server.admin("DELETE", "/admin/dnc/cn-national"), 404, "NOT_FOUND")


async def test_dnc_import_refusals(api_server):
    ok = b"+8613800138000\n"
    _refused(await _dnc(api_server, "bad!id", ok), 400, "INVALID_FIELD", "id")
    _refused(await _dnc(api_server, "x" * 65, ok), 400, "INVALID_FIELD", "id")
    _refused(await _dnc(api_server, "l1", ok, "country=cn"), 400, "INVALID_FIELD", "country")
    _refused(await _dnc(api_server, "l1", ok, content_type="application/json"), 415,
             "UNSUPPORTED_MEDIA_TYPE", "text/csv")  # fmt: skip
    _refused(await _dnc(api_server, "l1", b"\xff\xfe+86"), 400, "INVALID_REQUEST", "UTF-8")
    # a national number without the list's country cannot be read
    _refused(await _dnc(api_server, "l1", b"13800138000\n"), 400, "INVALID_FIELD", "line 1")
    r = await _dnc(api_server, "l1", ok, content_type="text/plain; charset=utf-8")
    assert r.status == 200 and r.json["numbers"] == 1
    assert [x["id"] for x in (await api_server.admin("GET", "/admin/dnc")).json["lists"]] == ["l1"]


async def test_a_dnc_import_a_later_one_superseded_answers_409(api_server, monkeypatch):
    """Two PUTs of one list at once on SQLite (a timed-out PUT retried while the first still
    runs): the later one's list stands, the earlier is answered 409 DNC_IMPORT_SUPERSEDED,
    without Retry-After (a retry would supersede the later one in turn)."""
    import asyncio

    from bridge.store import sqlite_dnc

    monkeypatch.setattr(sqlite_dnc, "ENTRY_CHUNK", 2)
    real = sqlite_dnc._write_entries
    later: list[asyncio.Task[Any]] = []

    def entries(c: Any, *args: Any) -> None:
        real(c, *args)
        if not later:  # the first PUT's first chunk: the second PUT arrives
            later.append(asyncio.ensure_future(_dnc(api_server, "l1", b"+8613900000001\n")))

    monkeypatch.setattr(sqlite_dnc, "_write_entries", entries)
    first = b"+8613800000001\n+8613800000002\n+8613800000003\n+8613800000004\n"
    r = await _dnc(api_server, "l1", first)
    _refused(r, 409, "DNC_IMPORT_SUPERSEDED", "'l1'", "imported again")
    assert "Retry-After" not in r.headers
    second = await later[0]
    assert second.status == 200 and second.json["numbers"] == 1
    assert [x["numbers"] for x in (await api_server.admin("GET", "/admin/dnc")).json["lists"]] == [
        1
    ]
    assert not await api_server.store.dnc_blocks("+8613800000001")
    assert await api_server.store.dnc_blocks("+8613900000001")


# -- closing an account ----------------------------------------------------------------------------


async def test_close_account_revokes_keys_and_erases_texts(api_server, make_account, clock):
    now = int(clock.freeze(NOV_15) * 1000)
    creds = await make_account()
    other = await make_account()
    sent = await api_server.send(creds, {"to": CN, "text": "private"})
    mid = sent.json["messages"][0]["id"]
    await api_server.request("POST", "/v1/optouts", creds=creds, json={"numbers": [CN2]})
    kept = await api_server.send(other, {"to": CN, "text": "not closed"})

    clock.advance(1)
    r = await api_server.admin("POST", f"/admin/accounts/{creds.account.name}/close")
    assert r.status == 200
    assert (r.json["id"], r.json["status"], r.json["updated_at"]) == (
        creds.account_id,
        "closed",
        now + 1000,
    )
    assert r.json["status_callback_url"] is None and r.json["mo_callback_url"] is None
    after = await api_server.request("GET", "/v1/balance", creds=creds)
    _refused(after, 401, "KEY_REVOKED")
    keys = await api_server.admin("GET", f"/admin/accounts/{creds.account_id}/keys")
    assert {k["status"] for k in keys.json["keys"]} == {"revoked"}

    record = await api_server.store.get_message(creds.account_id, mid)
    assert record is not None and record.text is None and CN not in record.recipient
    assert await api_server.store.list_optouts(creds.account_id) == []
    other_msg = await api_server.request(
        "GET", f"/v1/messages/{kept.json['messages'][0]['id']}", creds=other
    )
    assert other_msg.json["to"] == CN and other_msg.json["text"] == "not closed"
    # The queued message was never sent: refunded, and the cash owed back (session 36).
    assert r.json["refund_owed_micro"] == DEFAULT_FUNDS
    ops = await api_server.admin("GET", f"/admin/accounts/{creds.account_id}/balance")
    assert ops.json["cash_micro"] == 0
    _refused(await api_server.admin("POST", "/admin/accounts/nobody/close"), 404, "NOT_FOUND")


async def test_a_closed_account_stays_closed(api_server, make_account, clock):
    """Closing erased the account's reply opt-outs and revoked its keys: enabling it again, or
    giving it a key, would let it message people who had replied STOP."""
    clock.freeze(NOV_15)
    creds = await make_account()
    ref = creds.account_id
    assert (await api_server.admin("POST", f"/admin/accounts/{ref}/close")).status == 200
    for method, path, body in (
        ("POST", f"/admin/accounts/{ref}/enable", None),
        ("POST", f"/admin/accounts/{ref}/disable", None),
        ("PATCH", f"/admin/accounts/{ref}", {"tps": 5}),
        ("POST", f"/admin/accounts/{ref}/keys", None),
    ):
        r = await api_server.admin(method, path, json=body)
        _refused(r, 409, "ACCOUNT_CLOSED", "closed")
    shown = await api_server.admin("GET", f"/admin/accounts/{ref}")
    assert shown.json["status"] == "closed" and shown.json["tps"] != 5
    keys = await api_server.admin("GET", f"/admin/accounts/{ref}/keys")
    assert {k["status"] for k in keys.json["keys"]} == {"revoked"}
    assert (await api_server.request("GET", "/v1/balance", creds=creds)).status == 401


# -- authentication on every new endpoint ----------------------------------------------------------

CUSTOMER = [
    ("POST", "/v1/signs"), ("GET", "/v1/signs"), ("GET", "/v1/signs/Acme"),
    ("POST", "/v1/templates"), ("GET", "/v1/templates"), ("GET", "/v1/templates/SMS_123456789"),
    ("GET", "/v1/optouts"), ("POST", "/v1/optouts"), ("DELETE", f"/v1/optouts/{CN}"),
    ("POST", f"/v1/recipients/{CN}/erase"), ("GET", "/v1/balance"), ("GET", "/v1/ledger"),
    ("GET", "/v1/bills/2026-11"),
]  # fmt: skip
OPERATOR = [
    ("GET", "/admin/signs"), ("POST", "/admin/accounts/a/signs"),
    ("POST", "/admin/accounts/a/signs/Acme/review"), ("GET", "/admin/templates"),
    ("POST", "/admin/templates/SMS_123456789/review"), ("GET", "/admin/dnc"),
    ("PUT", "/admin/dnc/l1"), ("DELETE", "/admin/dnc/l1"), ("GET", "/admin/tariffs"),
    ("POST", "/admin/tariffs"), ("GET", "/admin/accounts/a/balance"),
    ("POST", "/admin/accounts/a/topups"), ("POST", "/admin/accounts/a/vouchers"),
    ("POST", "/admin/accounts/a/cards"), ("GET", "/admin/accounts/a/bills/2026-11"),
    ("POST", "/admin/bills/settle"), ("POST", "/admin/accounts/a/close"),
]  # fmt: skip


async def test_every_endpoint_needs_its_credentials(api_server):
    for method, path in CUSTOMER:
        _refused(await api_server.request(method, path), 401, "MISSING_AUTH")
    for method, path in OPERATOR:
        r = await api_server.admin(method, path, token=ADMIN_TOKEN + "x")
        _refused(r, 401, "INVALID_ADMIN_TOKEN")
        _refused(await api_server.admin(method, path, token=None), 401, "INVALID_ADMIN_TOKEN")


# -- known defects outside these handlers (reported to the lead; remove the marks once fixed) ------


async def test_a_non_string_counting_rule_is_invalid_tariff(api_server):
    r = await api_server.admin("POST", "/admin/tariffs", json={**_TARIFF, "counting_rule": []})
    _refused(r, 400, "INVALID_TARIFF", "counting_rule")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/admin/tariffs", {**_TARIFF, "effective_at": 2**63}),
        ("topups", {"amount_micro": 2**63}),
        ("vouchers", {"amount_micro": 1, "expires_at": 2**63}),
    ],
)
async def test_out_of_range_integers_are_refused(api_server, make_account, path, body):
    creds = await make_account(ready=False)
    if not path.startswith("/"):
        path = f"/admin/accounts/{creds.account_id}/{path}"
    r = await api_server.admin("POST", path, json=body)
    assert r.status == 400, r.json


async def test_an_operator_rejection_in_the_submission_millisecond_can_be_undone(
    api_server, make_account, clock
):
    clock.freeze(NOV_15)
    creds = await make_account()
    t = await _template(api_server, creds, "Code ${code}")
    path = f"/admin/templates/{t['code']}/review"
    await api_server.admin("POST", path, json={"decision": "reject", "reason": "typo"})
    r = await api_server.admin("POST", path, json={"decision": "approve"})
    assert r.status == 200, r.json
