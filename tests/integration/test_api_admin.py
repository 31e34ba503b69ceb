"""The operator API under /admin/ over real HTTP: the bearer token, accounts (create, list, show,
update, disable, enable) and app keys (create, list, revoke), and what each change does to the
signed API at once. Replies are validated against the OpenAPI document (see conftest)."""

from __future__ import annotations

import pytest

CN = "+8613800138000"


# -- the token -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        None,
        "Bearer wrong-token-0123456789",
        "Bearer ",
        "bearer test-admin-token-0123456789",  # the scheme is case-sensitive here
        "test-admin-token-0123456789",
        "Basic dGVzdDp0ZXN0",
    ],
)
async def test_a_bearer_token_is_required(api_server, header):
    headers = {} if header is None else {"Authorization": header}
    for method, path in (
        ("GET", "/admin/accounts"),
        ("POST", "/admin/accounts"),
        ("GET", "/admin/nothing-here"),  # no probing of admin paths without the token
    ):
        r = await api_server.request(method, path, headers=headers)
        assert (r.status, r.code) == (401, "INVALID_ADMIN_TOKEN"), (method, path)
    assert await api_server.store.list_accounts() == []


async def test_admin_api_disabled_without_a_token(make_api):
    api = await make_api({"server": {"admin_token": None}})
    for token in (None, "test-admin-token-0123456789", ""):
        r = await api.admin("GET", "/admin/accounts", token=token)
        assert (r.status, r.code) == (403, "ADMIN_DISABLED")
        assert "admin_token" in r.message


async def test_signed_app_credentials_do_not_open_the_admin_api(api_server, make_account):
    creds = await make_account()
    r = await api_server.request("GET", "/admin/accounts", creds=creds)
    assert (r.status, r.code) == (401, "INVALID_ADMIN_TOKEN")


# -- accounts ------------------------------------------------------------------------------------


async def test_create_account_returns_working_credentials(api_server):
    r = await api_server.admin(
        "POST",
        "/admin/accounts",
        json={
            "name": "acme",
            "kind": "postpaid",
            "raw_text": True,
            "default_country": "cn",
            "tps": 50,
            "daily_quota": 10000,
            "status_callback_url": "https://acme.example/sms/status",
        },
    )
    assert r.status == 201
    account = r.json["account"]
    assert account["name"] == "acme"
    assert (account["kind"], account["raw_text"], account["marketing"]) == (
        "postpaid",
        True,
        False,
    )
    assert (account["default_country"], account["tps"], account["daily_quota"]) == ("CN", 50, 10000)
    assert account["status"] == "active"
    assert account["status_callback_url"] == "https://acme.example/sms/status"
    stored = await api_server.store.get_account(account["id"])
    creds = api_server.creds_for(stored, r.json["app_key"], r.json["app_secret"])
    sent = await api_server.send(creds, {"to": "13800138000", "text": "hello"})
    assert sent.status == 202 and sent.json["messages"][0]["to"] == CN
    # The secret is stored sealed, not in the clear.
    keys = await api_server.store.list_keys(account["id"])
    assert r.json["app_secret"].encode() not in keys[0].secret_enc


async def test_create_account_defaults(api_server):
    r = await api_server.admin("POST", "/admin/accounts", json={"name": "plain"})
    assert r.status == 201
    a = r.json["account"]
    assert (a["kind"], a["raw_text"], a["marketing"], a["default_country"], a["tps"]) == (
        "prepaid",
        False,
        False,
        None,
        0,
    )


@pytest.mark.parametrize(
    ("payload", "status", "code", "names"),
    [
        ({}, 400, "MISSING_FIELD", "name"),
        ({"name": "has space"}, 400, "INVALID_FIELD", "name"),
        ({"name": "acme\n"}, 400, "INVALID_FIELD", "name"),
        ({"name": "-dash"}, 400, "INVALID_FIELD", "name"),
        ({"name": "n" * 65}, 400, "INVALID_FIELD", "name"),
        ({"name": 5}, 400, "INVALID_FIELD", "name"),
        ({"name": "x", "colour": "red"}, 400, "UNKNOWN_FIELD", "colour"),
        ({"name": "x", "status": "disabled"}, 400, "UNKNOWN_FIELD", "status"),
        ({"name": "x", "tps": "5"}, 400, "INVALID_FIELD", "tps"),
        ({"name": "x", "tps": True}, 400, "INVALID_FIELD", "tps"),
        ({"name": "x", "tps": -1}, 400, "INVALID_FIELD", "tps"),
        ({"name": "x", "tps": 2.5}, 400, "INVALID_FIELD", "tps"),
        ({"name": "x", "daily_quota": 10**10}, 400, "INVALID_FIELD", "daily_quota"),
        ({"name": "x", "kind": "free"}, 400, "INVALID_FIELD", "kind"),
        ({"name": "x", "raw_text": "yes"}, 400, "INVALID_FIELD", "raw_text"),
        ({"name": "x", "default_country": "CHN"}, 400, "INVALID_FIELD", "default_country"),
        ({"name": "x", "default_country": "ß"}, 400, "INVALID_FIELD", "default_country"),
        ({"name": "x", "status_callback_url": "ftp://x"}, 400, "INVALID_FIELD", "status_callback"),
        ({"name": "x", "mo_callback_url": "https://a b"}, 400, "INVALID_FIELD", "mo_callback"),
        ([], 400, "INVALID_REQUEST", "object"),
    ],
)
async def test_create_account_refusals(api_server, payload, status, code, names):
    r = await api_server.admin("POST", "/admin/accounts", json=payload)
    assert (r.status, r.code) == (status, code), r.json
    assert names in r.message
    assert await api_server.store.list_accounts() == []


async def test_create_account_body_errors(api_server):
    r = await api_server.admin("POST", "/admin/accounts", body=b"{name")
    assert (r.status, r.code) == (400, "INVALID_JSON")
    r = await api_server.admin(
        "POST", "/admin/accounts", body=b'{"name": "x"}', content_type="text/plain"
    )
    assert (r.status, r.code) == (415, "UNSUPPORTED_MEDIA_TYPE")


async def test_duplicate_name_is_409(api_server):
    assert (await api_server.admin("POST", "/admin/accounts", json={"name": "twin"})).status == 201
    r = await api_server.admin("POST", "/admin/accounts", json={"name": "twin"})
    assert (r.status, r.code) == (409, "ACCOUNT_EXISTS")
    assert "twin" in r.message
    assert len(await api_server.store.list_accounts()) == 1


async def test_list_and_show_accounts(api_server):
    ids = []
    for name in ("first", "second"):
        ids.append((await api_server.admin("POST", "/admin/accounts", json={"name": name})).json)
    listing = await api_server.admin("GET", "/admin/accounts")
    assert [a["name"] for a in listing.json["accounts"]] == ["first", "second"]
    account_id = ids[0]["account"]["id"]
    by_id = await api_server.admin("GET", f"/admin/accounts/{account_id}")
    by_name = await api_server.admin("GET", "/admin/accounts/first")
    assert by_id.json == by_name.json
    assert by_id.json["id"] == account_id
    assert [k["app_key"] for k in by_id.json["keys"]] == [ids[0]["app_key"]]
    assert by_id.json["keys"][0]["status"] == "active"
    missing = await api_server.admin("GET", "/admin/accounts/nobody")
    assert (missing.status, missing.code) == (404, "NOT_FOUND")


async def test_update_account(api_server, clock):
    clock.freeze(1_800_000_000)
    created = await api_server.admin(
        "POST", "/admin/accounts", json={"name": "upd", "default_country": "CN"}
    )
    account_id = created.json["account"]["id"]
    clock.advance(60)
    r = await api_server.admin(
        "PATCH",
        f"/admin/accounts/{account_id}",
        json={
            "tps": 25,
            "raw_text": True,
            "marketing": True,
            "default_country": None,
            "mo_callback_url": "http://mo.example/in",
        },
    )
    assert r.status == 200
    assert (r.json["tps"], r.json["raw_text"], r.json["marketing"]) == (25, True, True)
    assert (r.json["default_country"], r.json["mo_callback_url"]) == (None, "http://mo.example/in")
    assert r.json["updated_at"] == r.json["created_at"] + 60_000
    unchanged = await api_server.admin("PATCH", "/admin/accounts/upd")
    assert unchanged.status == 200 and unchanged.json == r.json
    stored = await api_server.store.get_account(account_id)
    assert (stored.tps, stored.default_country) == (25, None)
    bad = await api_server.admin("PATCH", "/admin/accounts/upd", json={"tps": "fast"})
    assert (bad.status, bad.code) == (400, "INVALID_FIELD")
    bad = await api_server.admin("PATCH", "/admin/accounts/upd", json={"name": "renamed"})
    assert (bad.status, bad.code) == (400, "UNKNOWN_FIELD")
    missing = await api_server.admin("PATCH", "/admin/accounts/nobody", json={"tps": 1})
    assert (missing.status, missing.code) == (404, "NOT_FOUND")


async def test_settings_apply_to_the_next_request(api_server, make_account):
    creds = await make_account(raw_text=False)
    r = await api_server.send(creds, {"to": CN, "text": "x"})
    assert r.code == "RAW_TEXT_NOT_ALLOWED"
    await api_server.admin("PATCH", f"/admin/accounts/{creds.account_id}", json={"raw_text": True})
    assert (await api_server.send(creds, {"to": CN, "text": "x"})).status == 202
    assert (await api_server.send(creds, {"to": "13800138000", "text": "x"})).code == (
        "INVALID_NUMBER"
    )
    await api_server.admin(
        "PATCH", f"/admin/accounts/{creds.account_id}", json={"default_country": "CN"}
    )
    assert (await api_server.send(creds, {"to": "13800138000", "text": "x"})).status == 202


async def test_disable_and_enable(api_server, make_account):
    creds = await make_account()
    assert (await api_server.request("GET", "/v1/account", creds=creds)).status == 200
    r = await api_server.admin("POST", f"/admin/accounts/{creds.account_id}/disable")
    assert r.status == 200 and r.json["status"] == "disabled"
    for reply in (
        await api_server.request("GET", "/v1/account", creds=creds),
        await api_server.send(creds, {"to": CN, "text": "x"}),
        await api_server.request("GET", "/v1/messages", creds=creds),
        await api_server.request("POST", "/v1/preview", creds=creds, json={"text": "x"}),
    ):
        assert (reply.status, reply.code) == (403, "ACCOUNT_DISABLED")
    assert (await api_server.store.list_messages(creds.account_id, limit=10)) == []
    r = await api_server.admin("POST", f"/admin/accounts/{creds.account.name}/enable")
    assert r.status == 200 and r.json["status"] == "active"
    assert (await api_server.send(creds, {"to": CN, "text": "x"})).status == 202
    missing = await api_server.admin("POST", "/admin/accounts/nobody/disable")
    assert (missing.status, missing.code) == (404, "NOT_FOUND")


# -- keys ----------------------------------------------------------------------------------------


async def test_key_lifecycle(api_server, make_account):
    creds = await make_account()
    listing = await api_server.admin("GET", f"/admin/accounts/{creds.account_id}/keys")
    assert [k["app_key"] for k in listing.json["keys"]] == [creds.app_key]

    created = await api_server.admin("POST", f"/admin/accounts/{creds.account.name}/keys")
    assert created.status == 201
    assert created.json["account"] == creds.account_id
    new = api_server.creds_for(creds.account, created.json["app_key"], created.json["app_secret"])
    assert new.app_key != creds.app_key and new.app_secret != creds.app_secret
    assert (await api_server.request("GET", "/v1/account", creds=new)).status == 200

    third = await api_server.admin("POST", f"/admin/accounts/{creds.account_id}/keys")
    assert (third.status, third.code) == (409, "TOO_MANY_KEYS")

    revoked = await api_server.admin("POST", f"/admin/keys/{creds.app_key}/revoke")
    assert revoked.status == 200
    assert revoked.json == {"app_key": creds.app_key, "status": "revoked"}
    assert (await api_server.request("GET", "/v1/account", creds=creds)).code == "KEY_REVOKED"
    assert (await api_server.request("GET", "/v1/account", creds=new)).status == 200

    again = await api_server.admin("POST", f"/admin/keys/{creds.app_key}/revoke")
    assert (again.status, again.code) == (409, "KEY_ALREADY_REVOKED")
    unknown = await api_server.admin("POST", "/admin/keys/AK0000/revoke")
    assert (unknown.status, unknown.code) == (404, "NOT_FOUND")

    listing = await api_server.admin("GET", f"/admin/accounts/{creds.account_id}/keys")
    states = {k["app_key"]: (k["status"], k["revoked_at"] is None) for k in listing.json["keys"]}
    assert states == {creds.app_key: ("revoked", False), new.app_key: ("active", True)}
    assert "secret" not in listing.text
    assert (
        await api_server.admin("POST", f"/admin/accounts/{creds.account_id}/keys")
    ).status == 201
    missing = await api_server.admin("GET", "/admin/accounts/nobody/keys")
    assert (missing.status, missing.code) == (404, "NOT_FOUND")
    missing = await api_server.admin("POST", "/admin/accounts/nobody/keys")
    assert (missing.status, missing.code) == (404, "NOT_FOUND")


async def test_admin_unknown_path_and_method(api_server):
    r = await api_server.admin("GET", "/admin/nothing")
    assert (r.status, r.code) == (404, "NOT_FOUND")
    r = await api_server.admin("DELETE", "/admin/accounts")
    assert (r.status, r.code) == (405, "METHOD_NOT_ALLOWED")
    assert "POST" in r.headers["Allow"]
