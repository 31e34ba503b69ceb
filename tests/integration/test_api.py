"""The signed /v1/ API over real HTTP and a real SQLite file: every signing check failing on its
own, POST /v1/messages and its refusals, idempotency, back-pressure, rate, queries, isolation, and
the OpenAPI document (which every reply in this suite is validated against, see conftest)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, unquote_to_bytes

import jsonschema
import pytest

from bridge.api import signing, v1
from bridge.api.errors import CODES
from bridge.api.openapi import ERROR_DESCRIPTIONS, openapi_document

CN = "+8613800138000"
CN2 = "+8613900139000"
MSG_ID = re.compile(r"msg_[0-9A-Z]{26}")


def db_count(api: Any, sql: str, *args: Any) -> int:
    """Read the real SQLite file from outside the server (WAL allows a concurrent reader)."""
    with sqlite3.connect(api.config.store.path) as conn:
        return int(conn.execute(sql, args).fetchone()[0])


def messages_of(api: Any, account_id: str) -> int:
    return db_count(api, "SELECT COUNT(*) FROM messages WHERE account_id=?", account_id)


# ================================================================================================
# Signing: each check failing on its own, through the real server
# ================================================================================================


async def test_a_correctly_signed_request_is_accepted(api_server, make_account):
    creds = await make_account()
    r = await api_server.request("GET", "/v1/account", creds=creds)
    assert r.status == 200
    assert r.json["id"] == creds.account_id
    assert r.json["app_key"] == creds.app_key


async def test_missing_authorization_is_missing_auth(api_server):
    r = await api_server.request("GET", "/v1/account")
    assert (r.status, r.code) == (401, "MISSING_AUTH")
    assert "Authorization" in r.message


async def test_unknown_app_key(api_server, make_account):
    creds = await make_account()
    forged = api_server.creds_for(creds.account, "AK" + "0" * 24, creds.app_secret)
    r = await api_server.request("GET", "/v1/account", creds=forged)
    assert (r.status, r.code) == (401, "UNKNOWN_APP_KEY")


async def test_revoked_key_is_refused_at_once(api_server, make_account):
    creds = await make_account()
    assert (await api_server.request("GET", "/v1/account", creds=creds)).status == 200
    revoke = await api_server.admin("POST", f"/admin/keys/{creds.app_key}/revoke")
    assert revoke.status == 200
    r = await api_server.request("GET", "/v1/account", creds=creds)
    assert (r.status, r.code) == (401, "KEY_REVOKED")
    r = await api_server.send(creds, {"to": CN, "text": "after revocation"})
    assert (r.status, r.code) == (401, "KEY_REVOKED")
    assert messages_of(api_server, creds.account_id) == 0


@pytest.mark.parametrize(
    ("skew", "accepted"), [(-301, False), (-300, True), (0, True), (300, True), (301, False)]
)
async def test_clock_skew_boundaries(api_server, make_account, clock, skew, accepted):
    now = clock.freeze(1_800_000_000)
    creds = await make_account()
    when = datetime.fromtimestamp(now + skew, UTC)
    r = await api_server.request("GET", "/v1/account", creds=creds, when=when)
    if accepted:
        assert r.status == 200
    else:
        assert (r.status, r.code) == (401, "REQUEST_EXPIRED")
        server_time = signing.format_date(datetime.fromtimestamp(now, UTC))
        assert server_time in r.message  # the client can see how far off it is
        assert f"{skew:+d} s" in r.message


async def test_body_changed_after_signing_is_body_hash_mismatch(api_server, make_account):
    creds = await make_account()
    signed = json.dumps({"to": CN, "text": "pay 10"}).encode()
    sent = json.dumps({"to": CN, "text": "pay 99"}).encode()
    r = await api_server.request(
        "POST",
        "/v1/messages",
        creds=creds,
        body=signed,
        send_body=sent,
        idempotency_key="k-body-hash",
    )
    assert (r.status, r.code) == (401, "BODY_HASH_MISMATCH")
    assert hashlib.sha256(sent).hexdigest() in r.message
    assert messages_of(api_server, creds.account_id) == 0


async def test_wrong_secret_is_signature_mismatch(api_server, make_account):
    creds = await make_account()
    wrong = api_server.creds_for(creds.account, creds.app_key, creds.app_secret + "x")
    r = await api_server.request("GET", "/v1/account", creds=wrong)
    assert (r.status, r.code) == (401, "SIGNATURE_MISMATCH")


def _resign(
    headers: dict[str, str],
    secret: str,
    method: str,
    path: str,
    query: str,
    body: bytes,
    names: list[str],
) -> None:
    """Replace Authorization with a valid signature over exactly `names` (to test the server's
    rules on SignedHeaders, not the HMAC)."""
    auth = signing.parse_authorization(headers["Authorization"])
    canonical = signing.canonical_request(
        method, path, query, headers, sorted(names), signing.body_sha256(body)
    )
    sig = signing.sign(secret, signing.string_to_sign(headers["X-Bridge-Date"], canonical))
    headers["Authorization"] = (
        f"{signing.ALGORITHM} Credential={auth.app_key},"
        f"SignedHeaders={';'.join(sorted(names))},Signature={sig}"
    )


@pytest.mark.parametrize("dropped", signing.REQUIRED_HEADERS)
async def test_required_header_missing_from_signed_headers(api_server, make_account, dropped):
    creds = await make_account()
    names = [n for n in signing.REQUIRED_HEADERS if n != dropped]
    r = await api_server.request(
        "GET",
        "/v1/account",
        creds=creds,
        tamper=lambda h: _resign(h, creds.app_secret, "GET", "/v1/account", "", b"", names),
    )
    assert (r.status, r.code) == (401, "SIGNATURE_MISMATCH")
    assert f"'{dropped}'" in r.message


@pytest.mark.parametrize(
    ("header", "value"), [("Content-Type", "application/json"), ("Idempotency-Key", "k-unsigned")]
)
async def test_sent_but_unsigned_header_is_refused(api_server, make_account, header, value):
    creds = await make_account()
    body = json.dumps({"to": CN, "text": "hi"}).encode()
    # Signed without the header, which is then added: the server must refuse, because both
    # change what it does with the body.
    sign_ct = None if header == "Content-Type" else "application/json"
    sign_key = None if header == "Idempotency-Key" else "k-signed"

    def add(h: dict[str, str]) -> None:
        h[header] = value

    r = await api_server.request(
        "POST",
        "/v1/messages",
        creds=creds,
        body=body,
        content_type=sign_ct,
        idempotency_key=sign_key,
        tamper=add,
    )
    assert (r.status, r.code) == (401, "SIGNATURE_MISMATCH")
    assert f"'{header.lower()}'" in r.message
    assert messages_of(api_server, creds.account_id) == 0


@pytest.mark.parametrize("header", ["Content-Type", "Idempotency-Key", "X-Bridge-Nonce"])
async def test_signed_header_absent_from_request(api_server, make_account, header):
    creds = await make_account()
    r = await api_server.send(creds, {"to": CN, "text": "hi"}, tamper=lambda h: h.pop(header))
    assert (r.status, r.code) == (401, "SIGNATURE_MISMATCH")
    assert f"'{header.lower()}'" in r.message


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda h: h.__setitem__("Idempotency-Key", "other"), id="signed-value"),
        pytest.param(lambda h: h.__setitem__("Host", "evil.example:80"), id="host"),
        pytest.param(
            lambda h: h.__setitem__(
                "Authorization",
                h["Authorization"][:-1] + ("0" if h["Authorization"][-1] != "0" else "1"),
            ),
            id="signature-hex",
        ),
        pytest.param(
            lambda h: h.__setitem__(
                "Authorization", h["Authorization"].replace("BRIDGE-HMAC-SHA256", "AWS4", 1)
            ),
            id="scheme",
        ),
        pytest.param(lambda h: h.__setitem__("X-Bridge-Nonce", "short"), id="nonce-syntax"),
        pytest.param(
            lambda h: h.__setitem__("X-Bridge-Date", "2026-11-29 08:00:00"), id="date-syntax"
        ),
    ],
)
async def test_tampered_request_is_signature_mismatch(api_server, make_account, tamper):
    creds = await make_account()
    r = await api_server.send(creds, {"to": CN, "text": "hi"}, tamper=tamper)
    assert (r.status, r.code) == (401, "SIGNATURE_MISMATCH")
    assert messages_of(api_server, creds.account_id) == 0


async def test_query_changed_after_signing_is_refused(api_server, make_account):
    creds = await make_account()
    path = "/v1/messages"
    ok = await api_server.request("GET", path, creds=creds, query="limit=5")
    assert ok.status == 200

    nonce = secrets.token_hex(10)
    hdrs_signed_for = "limit=5"
    r = await api_server.request(
        "GET",
        path,
        creds=creds,
        query="limit=6",
        nonce=nonce,
        tamper=lambda h: _resign(
            h,
            creds.app_secret,
            "GET",
            path,
            hdrs_signed_for,
            b"",
            [*signing.REQUIRED_HEADERS],
        ),
    )
    assert (r.status, r.code) == (401, "SIGNATURE_MISMATCH")


async def test_replayed_request_is_nonce_reused(api_server, make_account):
    creds = await make_account()
    nonce = "replayed-nonce-000001"
    first = await api_server.request("GET", "/v1/account", creds=creds, nonce=nonce)
    assert first.status == 200
    again = await api_server.request("GET", "/v1/account", creds=creds, nonce=nonce)
    assert (again.status, again.code) == (401, "NONCE_REUSED")


async def test_a_forged_request_does_not_record_its_nonce(api_server, make_account):
    creds = await make_account()
    nonce = "forged-then-valid-0001"
    forged = api_server.creds_for(creds.account, creds.app_key, "not-the-secret")
    r = await api_server.request("GET", "/v1/account", creds=forged, nonce=nonce)
    assert (r.status, r.code) == (401, "SIGNATURE_MISMATCH")
    assert db_count(api_server, "SELECT COUNT(*) FROM nonces WHERE nonce=?", nonce) == 0
    r = await api_server.request("GET", "/v1/account", creds=creds, nonce=nonce)
    assert r.status == 200
    assert db_count(api_server, "SELECT COUNT(*) FROM nonces WHERE nonce=?", nonce) == 1


async def test_nonces_are_per_key(api_server, make_account):
    a, b = await make_account(), await make_account()
    nonce = "shared-nonce-value-0001"
    assert (await api_server.request("GET", "/v1/account", creds=a, nonce=nonce)).status == 200
    assert (await api_server.request("GET", "/v1/account", creds=b, nonce=nonce)).status == 200


# -- an independent implementation, written from the spec text with hmac/hashlib/urllib only ----


def _rfc3986(raw: bytes) -> str:
    return quote(raw, safe="-_.~")


def independent_headers(
    app_key: str,
    secret: str,
    method: str,
    path: str,
    raw_query: str,
    host: str,
    body: bytes,
    extra: dict[str, str],
    date: str,
    nonce: str,
) -> dict[str, str]:
    body_hash = hashlib.sha256(body).hexdigest()
    headers = {
        "host": host,
        "x-bridge-date": date,
        "x-bridge-nonce": nonce,
        "x-bridge-content-sha256": body_hash,
        **{k.lower(): v for k, v in extra.items()},
    }
    uri = "/".join(_rfc3986(unquote_to_bytes(seg)) for seg in path.split("/")) or "/"
    pairs = []
    for part in raw_query.split("&") if raw_query else []:
        name, _, value = part.partition("=")
        pairs.append((_rfc3986(unquote_to_bytes(name)), _rfc3986(unquote_to_bytes(value))))
    query = "&".join(f"{n}={v}" for n, v in sorted(pairs))
    names = sorted(headers)
    canonical_headers = "".join(f"{n}:{headers[n].strip()}\n" for n in names)
    canonical = "\n".join([method, uri, query, canonical_headers, ";".join(names), body_hash])
    to_sign = "BRIDGE-HMAC-SHA256\n" + date + "\n" + hashlib.sha256(canonical.encode()).hexdigest()
    sig = hmac.new(secret.encode(), to_sign.encode(), hashlib.sha256).hexdigest()
    out = {
        "Host": host,
        "X-Bridge-Date": date,
        "X-Bridge-Nonce": nonce,
        "X-Bridge-Content-SHA256": body_hash,
        **extra,
    }
    out["Authorization"] = (
        f"BRIDGE-HMAC-SHA256 Credential={app_key},SignedHeaders={';'.join(names)},Signature={sig}"
    )
    return out


async def test_independent_implementation_is_accepted(api_server, make_account, clock):
    clock.freeze()
    creds = await make_account(default_country="CN")
    date = clock.utc().strftime("%Y-%m-%dT%H:%M:%SZ")
    body = json.dumps({"to": ["13800138000", CN2], "text": "independent ~ signer"}).encode()
    headers = independent_headers(
        creds.app_key,
        creds.app_secret,
        "POST",
        "/v1/messages",
        "",
        api_server.host,
        body,
        {"Content-Type": "application/json", "Idempotency-Key": "independent-0001"},
        date,
        "independent-nonce-0001",
    )
    r = await api_server.request("POST", "/v1/messages", body=body, headers=headers)
    assert r.status == 202, r.json
    assert [m["to"] for m in r.json["messages"]] == [CN, CN2]

    # A query with a literal plus (sent as %2B), unsorted parameters and a tilde.
    query = "to=%2B8613800138000&limit=10&status=queued"
    headers = independent_headers(
        creds.app_key,
        creds.app_secret,
        "GET",
        "/v1/messages",
        query,
        api_server.host,
        b"",
        {},
        date,
        "independent-nonce-0002",
    )
    r = await api_server.request("GET", "/v1/messages", query=query, headers=headers)
    assert r.status == 200, r.json
    assert [m["to"] for m in r.json["messages"]] == [CN]

    mid = r.json["messages"][0]["id"]
    headers = independent_headers(
        creds.app_key,
        creds.app_secret,
        "GET",
        f"/v1/messages/{mid}",
        "",
        api_server.host,
        b"",
        {},
        date,
        "independent-nonce-0003",
    )
    r = await api_server.request("GET", f"/v1/messages/{mid}", headers=headers)
    assert r.status == 200 and r.json["id"] == mid


async def test_two_active_keys_side_by_side_and_a_third_refused(api_server, make_account):
    first = await make_account()
    created = await api_server.admin("POST", f"/admin/accounts/{first.account_id}/keys")
    assert created.status == 201
    second = api_server.creds_for(
        first.account, created.json["app_key"], created.json["app_secret"]
    )
    for creds in (first, second, first):
        assert (await api_server.request("GET", "/v1/account", creds=creds)).json[
            "app_key"
        ] == creds.app_key
    third = await api_server.admin("POST", f"/admin/accounts/{first.account_id}/keys")
    assert (third.status, third.code) == (409, "TOO_MANY_KEYS")
    # Rotation: revoke the old key, the new one keeps working, and a new slot opens.
    assert (await api_server.admin("POST", f"/admin/keys/{first.app_key}/revoke")).status == 200
    assert (await api_server.request("GET", "/v1/account", creds=first)).code == "KEY_REVOKED"
    assert (await api_server.request("GET", "/v1/account", creds=second)).status == 200
    assert (
        await api_server.admin("POST", f"/admin/accounts/{first.account_id}/keys")
    ).status == 201


# ================================================================================================
# POST /v1/messages
# ================================================================================================


async def test_send_answers_202_with_the_final_shape(api_server, make_account):
    creds = await make_account()
    r = await api_server.send(
        creds,
        {"to": [CN, CN2], "text": "a" * 150, "client_ref": "order-17", "sender": "1069"},
    )
    assert r.status == 202
    assert r.headers.get("Idempotent-Replayed") is None
    body = r.json
    assert set(body) == {"batch_id", "count", "messages"}
    assert re.fullmatch(r"bat_[0-9A-Z]{26}", body["batch_id"])
    assert body["count"] == 2
    for m, to in zip(body["messages"], [CN, CN2], strict=True):
        assert MSG_ID.fullmatch(m["id"])
        # 150 GSM-7 characters: 1 part on the air, 3 units by the 70/67 character rule.
        assert m == {
            "id": m["id"],
            "to": to,
            "client_ref": "order-17",
            "status": "queued",
            "encoding": "gsm7",
            "segments": 1,
            "billable_units": 3,
        }
    stored = await api_server.store.get_message(creds.account_id, body["messages"][0]["id"])
    assert stored is not None
    assert (stored.recipient, stored.text, stored.sender) == (CN, "a" * 150, "1069")
    assert stored.batch_id == body["batch_id"]


async def test_send_ucs2_with_sign_counts_segments_and_units(api_server, make_account):
    creds = await make_account()
    # 【Acme】 (6) + 65 = 71 UCS-2 characters: 2 parts of at most 67, 2 units.
    r = await api_server.send(creds, {"to": CN, "text": "你" * 65, "sign_name": "Acme"})
    assert r.status == 202
    (m,) = r.json["messages"]
    assert (m["encoding"], m["segments"], m["billable_units"]) == ("ucs2", 2, 2)
    g = await api_server.request("GET", f"/v1/messages/{m['id']}", creds=creds)
    assert g.json["text"] == "【Acme】" + "你" * 65
    assert [p["seq"] for p in g.json["parts"]] == [1, 2]
    assert all(p["status"] == "queued" for p in g.json["parts"])


BAD_BODIES: list[tuple[str, bytes | Any, str, str]] = [
    ("invalid-json", b'{"to": "+86', "INVALID_JSON", ""),
    ("empty-body", b"", "INVALID_JSON", "empty"),
    ("array", [CN], "INVALID_REQUEST", "object"),
    ("string", "hello", "INVALID_REQUEST", "object"),
    ("null", None, "INVALID_REQUEST", "object"),
    ("unknown-field", {"to": CN, "text": "x", "colour": "red"}, "UNKNOWN_FIELD", "colour"),
    ("missing-to", {"text": "x"}, "MISSING_FIELD", "to"),
    ("missing-text", {"to": CN}, "MISSING_FIELD", "template"),
    ("to-number", {"to": 8613800138000, "text": "x"}, "INVALID_FIELD", "to"),
    ("to-item-number", {"to": [CN, 5], "text": "x"}, "INVALID_FIELD", "to[1]"),
    ("to-empty-list", {"to": [], "text": "x"}, "INVALID_FIELD", "to"),
    ("text-number", {"to": CN, "text": 5}, "INVALID_FIELD", "text"),
    ("text-and-template", {"to": CN, "text": "x", "template": "T"}, "INVALID_REQUEST", "text"),
    ("params-with-text", {"to": CN, "text": "x", "params": {"a": "1"}}, "INVALID_FIELD", "params"),
    ("params-list", {"to": CN, "template": "T", "params": ["a"]}, "INVALID_FIELD", "params"),
    ("params-nested", {"to": CN, "template": "T", "params": {"a": {}}}, "INVALID_FIELD", "params"),
    (
        "validity-string",
        {"to": CN, "text": "x", "validity_minutes": "5"},
        "INVALID_FIELD",
        "validity_minutes",
    ),
    (
        "validity-zero",
        {"to": CN, "text": "x", "validity_minutes": 0},
        "INVALID_FIELD",
        "validity_minutes",
    ),
    (
        "validity-over",
        {"to": CN, "text": "x", "validity_minutes": 10081},
        "INVALID_FIELD",
        "validity_minutes",
    ),
    (
        "validity-bool",
        {"to": CN, "text": "x", "validity_minutes": True},
        "INVALID_FIELD",
        "validity_minutes",
    ),
    (
        "validity-float",
        {"to": CN, "text": "x", "validity_minutes": 5.5},
        "INVALID_FIELD",
        "validity_minutes",
    ),
    (
        "smart-string",
        {"to": CN, "text": "x", "smart_encoding": "yes"},
        "INVALID_FIELD",
        "smart_encoding",
    ),
    (
        "scheduled-words",
        {"to": CN, "text": "x", "scheduled_at": "tomorrow"},
        "INVALID_FIELD",
        "scheduled_at",
    ),
    (
        "scheduled-no-offset",
        {"to": CN, "text": "x", "scheduled_at": "2030-01-01T08:00:00"},
        "INVALID_FIELD",
        "scheduled_at",
    ),
    (
        "scheduled-number",
        {"to": CN, "text": "x", "scheduled_at": 1_900_000_000},
        "INVALID_FIELD",
        "scheduled_at",
    ),
    (
        "scheduled-overflow",
        {"to": CN, "text": "x", "scheduled_at": "9999-12-31T23:59:59-05:00"},
        "INVALID_FIELD",
        "scheduled_at",
    ),
    (
        "sender-bad",
        {"to": CN, "text": "x", "sender": "not a valid sender!"},
        "INVALID_FIELD",
        "sender",
    ),
    ("client-ref-empty", {"to": CN, "text": "x", "client_ref": ""}, "INVALID_FIELD", "client_ref"),
    (
        "client-ref-long",
        {"to": CN, "text": "x", "client_ref": "r" * 65},
        "INVALID_FIELD",
        "client_ref",
    ),
    ("sign-long", {"to": CN, "text": "x", "sign_name": "s" * 33}, "INVALID_FIELD", "sign_name"),
    ("national-without-country", {"to": "13800138000", "text": "x"}, "INVALID_NUMBER", "to"),
    ("not-e164", {"to": "+0123456789", "text": "x"}, "INVALID_NUMBER", "to"),
    ("too-short", {"to": "+86123", "text": "x"}, "INVALID_NUMBER", "to"),
    ("letters", {"to": "+86138abc38000", "text": "x"}, "INVALID_NUMBER", "to"),
    ("arabic-indic-digits", {"to": "+86١٣٨٠٠١٣٨٠٠٠", "text": "x"}, "INVALID_NUMBER", "to"),
    ("bad-item", {"to": [CN, "12"], "text": "x"}, "INVALID_NUMBER", "to[1]"),
    ("duplicate", {"to": [CN, "+86 138 0013 8000"], "text": "x"}, "INVALID_FIELD", "to[1]"),
    ("empty-text", {"to": CN, "text": ""}, "EMPTY_MESSAGE", "text"),
    ("blank-text", {"to": CN, "text": "  \n ", "sign_name": "Acme"}, "EMPTY_MESSAGE", "text"),
    # Zero-width characters show nothing: such a text was sent and billed, invisible.
    (
        "zero-width-text",
        {"to": CN, "text": "\u200b\u200d \ufeff", "sign_name": "Acme"},
        "EMPTY_MESSAGE",
        "text",
    ),
    (
        "lone-surrogate",
        b'{"to": "+8613800138000", "text": "x", "client_ref": "\\ud800"}',
        "INVALID_JSON",
        "surrogate",
    ),
    ("deep-nesting", b"[" * 100_000 + b"]" * 100_000, "INVALID_JSON", ""),
    (
        "huge-integer",
        b'{"to": "+8613800138000", "text": "x", "validity_minutes": ' + b"9" * 5000 + b"}",
        "INVALID_JSON",
        "",
    ),
    (  # NaN is not JSON (RFC 8259): refused by the parser, before any field is read
        "nan",
        b'{"to": "+8613800138000", "text": "x", "validity_minutes": NaN}',
        "INVALID_JSON",
        "",
    ),
]


@pytest.mark.parametrize(
    ("payload", "code", "names"), [pytest.param(*c[1:], id=c[0]) for c in BAD_BODIES]
)
async def test_send_refusals_are_400_with_the_field_named(
    api_server, make_account, payload, code, names
):
    creds = await make_account()
    kw: dict[str, Any] = {"body": payload} if isinstance(payload, bytes) else {"json": payload}
    if kw.get("body") == b"":
        kw["content_type"] = "application/json"
    r = await api_server.request(
        "POST", "/v1/messages", creds=creds, idempotency_key="k-" + code, **kw
    )
    assert (r.status, r.code) == (400, code), r.json
    assert names in r.message
    assert messages_of(api_server, creds.account_id) == 0


async def test_too_many_recipients(api_server, make_account):
    creds = await make_account()
    to = [f"+86138{i:08d}" for i in range(1001)]
    r = await api_server.send(creds, {"to": to, "text": "x"})
    assert (r.status, r.code) == (400, "TOO_MANY_RECIPIENTS")
    assert "1001" in r.message and "1000" in r.message
    ok = await api_server.send(creds, {"to": to[:1000], "text": "x"})
    assert ok.status == 202 and ok.json["count"] == 1000


async def test_national_number_for_the_account_country(api_server, make_account):
    creds = await make_account(default_country="CN")
    r = await api_server.send(creds, {"to": ["138 0013 8000", "0086-139-0013-9000"], "text": "x"})
    assert r.status == 202
    assert [m["to"] for m in r.json["messages"]] == [CN, "+8613900139000"]
    bad = await api_server.send(creds, {"to": "12345678", "text": "x"})
    assert (bad.status, bad.code) == (400, "INVALID_NUMBER")
    assert "unambiguous CN" in bad.message
    other = await make_account(default_country="GB")
    r = await api_server.send(other, {"to": "07700 900123", "text": "x"})
    assert r.json["messages"][0]["to"] == "+447700900123"
    assert (await api_server.send(other, {"to": "13800138000", "text": "x"})).code == (
        "INVALID_NUMBER"
    )


async def test_message_too_long_counts_the_sign(api_server, make_account):
    creds = await make_account()
    # 【Acme】 is 6 characters: 494 + 6 = 500 is the limit, 501 is over it.
    ok = await api_server.send(creds, {"to": CN, "text": "x" * 494, "sign_name": "Acme"})
    assert ok.status == 202
    r = await api_server.send(creds, {"to": CN, "text": "x" * 495, "sign_name": "Acme"})
    assert (r.status, r.code) == (400, "MESSAGE_TOO_LONG")
    assert "501" in r.message and "500" in r.message


async def test_schedule_and_validity(api_server, make_account, clock):
    now = clock.freeze(1_800_000_000)
    creds = await make_account()
    at = datetime.fromtimestamp(now + 3600, UTC)
    r = await api_server.send(
        creds,
        {
            "to": CN,
            "text": "later",
            "scheduled_at": at.isoformat(),
            "validity_minutes": 30,
        },
    )
    assert r.status == 202
    g = await api_server.request("GET", f"/v1/messages/{r.json['messages'][0]['id']}", creds=creds)
    assert g.json["scheduled_at"] == "2027-01-15T09:00:00.000Z"
    assert g.json["expires_at"] == "2027-01-15T09:30:00.000Z"
    assert g.json["accepted_at"] == "2027-01-15T08:00:00.000Z"
    # In an offset other than UTC, and in the past (= at once).
    past = await api_server.send(
        creds, {"to": CN, "text": "now", "scheduled_at": "2020-01-01T08:00:00+08:00"}
    )
    g = await api_server.request(
        "GET", f"/v1/messages/{past.json['messages'][0]['id']}", creds=creds
    )
    assert g.json["scheduled_at"] is None
    far = datetime.fromtimestamp(now + 31 * 86400, UTC).isoformat()
    r = await api_server.send(creds, {"to": CN, "text": "x", "scheduled_at": far})
    assert (r.status, r.code) == (422, "INVALID_SCHEDULE")


async def test_template_only_account_may_not_send_text(api_server, make_account):
    creds = await make_account(raw_text=False)
    r = await api_server.send(creds, {"to": CN, "text": "free text"})
    assert (r.status, r.code) == (403, "RAW_TEXT_NOT_ALLOWED")
    assert messages_of(api_server, creds.account_id) == 0


async def test_unknown_template_is_422(api_server, make_account):
    creds = await make_account(raw_text=False)
    r = await api_server.send(
        creds, {"to": CN, "sign_name": "Acme", "template": "SMS_0001", "params": {"code": 1234}}
    )
    assert (r.status, r.code) == (422, "TEMPLATE_NOT_FOUND")
    assert "SMS_0001" in r.message


async def test_body_over_the_limit_is_413_json(make_api, clock):
    api = await make_api({"server": {"max_body_bytes": 2048}})
    creds = await api.create_account()
    numbers = [f"+86138{i:08d}" for i in range(200)]
    small = {"to": numbers[:100], "text": "x"}  # 1.8 KB
    assert len(json.dumps(small)) < 2048
    assert (await api.send(creds, small)).status == 202
    r = await api.send(creds, {"to": numbers, "text": "x"})
    assert (r.status, r.code) == (413, "BODY_TOO_LARGE")
    assert r.headers["Content-Type"].startswith("application/json")
    exact = b'{"text": "x"' + b" " * (2048 - 13) + b"}"
    assert len(exact) == 2048
    assert (await api.request("POST", "/v1/preview", creds=creds, body=exact)).status == 200
    r = await api.request("POST", "/v1/preview", creds=creds, body=exact + b" ")
    assert (r.status, r.code) == (413, "BODY_TOO_LARGE")
    # Also before authentication: nobody gets to upload more than the limit.
    r = await api.request("POST", "/v1/preview", body=b"{" + b" " * 5000 + b"}")
    assert (r.status, r.code) == (413, "BODY_TOO_LARGE")


async def test_default_body_limit_is_one_mib(api_server, make_account):
    creds = await make_account()
    body = b'{"text": "x"' + b" " * (1_048_576 - 13) + b"}"
    assert len(body) == 1_048_576
    assert (await api_server.request("POST", "/v1/preview", creds=creds, body=body)).status == 200
    r = await api_server.request("POST", "/v1/preview", creds=creds, body=body + b" ")
    assert (r.status, r.code) == (413, "BODY_TOO_LARGE")


@pytest.mark.parametrize(
    "ctype", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; b=x"]
)
async def test_non_json_content_type_is_415(api_server, make_account, ctype):
    creds = await make_account()
    body = json.dumps({"to": CN, "text": "x"}).encode()
    r = await api_server.request(
        "POST", "/v1/messages", creds=creds, body=body, content_type=ctype, idempotency_key="k415"
    )
    assert (r.status, r.code) == (415, "UNSUPPORTED_MEDIA_TYPE")
    r = await api_server.request(
        "POST", "/v1/preview", creds=creds, body=b'{"text":"x"}', content_type=ctype
    )
    assert (r.status, r.code) == (415, "UNSUPPORTED_MEDIA_TYPE")
    ok = await api_server.request(
        "POST",
        "/v1/preview",
        creds=creds,
        body=b'{"text":"x"}',
        content_type="application/json; charset=utf-8",
    )
    assert ok.status == 200


async def test_unknown_path_is_a_json_404(api_server, make_account):
    creds = await make_account()
    for path, c in (("/v1/nothing", creds), ("/nothing", None), ("/v2/messages", None)):
        r = await api_server.request("GET", path, creds=c)
        assert (r.status, r.code) == (404, "NOT_FOUND"), path
        assert path in r.message
    # Unsigned under /v1/: authentication comes first, so nothing can be probed.
    r = await api_server.request("GET", "/v1/nothing")
    assert (r.status, r.code) == (401, "MISSING_AUTH")


async def test_wrong_method_is_a_json_405_with_allow(api_server, make_account):
    creds = await make_account()
    r = await api_server.request("DELETE", "/v1/messages", creds=creds)
    assert (r.status, r.code) == (405, "METHOD_NOT_ALLOWED")
    assert set(r.headers["Allow"].replace(" ", "").split(",")) >= {"GET", "POST"}
    r = await api_server.request("POST", "/healthz")
    assert (r.status, r.code) == (405, "METHOD_NOT_ALLOWED")
    assert "GET" in r.headers["Allow"]


# -- idempotency ---------------------------------------------------------------------------------


async def test_idempotency_key_required_and_checked(api_server, make_account):
    creds = await make_account()
    body = {"to": CN, "text": "x"}
    r = await api_server.request("POST", "/v1/messages", creds=creds, json=body)
    assert (r.status, r.code) == (400, "IDEMPOTENCY_KEY_REQUIRED")
    for bad in ("k" * 256, "has space", "tab\tkey", "caf\u00e9"):
        r = await api_server.send(creds, body, key=bad)
        assert (r.status, r.code) == (400, "INVALID_IDEMPOTENCY_KEY"), bad
        # The message states the rule the check applies (README, POST /v1/messages).
        assert "1-255 visible ASCII characters (! to ~, no spaces)" in r.message
    assert (await api_server.send(creds, body, key="k" * 255)).status == 202
    assert (await api_server.send(creds, body, key="!~order/42:#a")).status == 202
    assert messages_of(api_server, creds.account_id) == 2


async def test_same_key_same_body_replays_byte_for_byte(api_server, make_account):
    creds = await make_account()
    body = {"to": [CN, CN2], "text": "once only"}
    first = await api_server.send(creds, body, key="order-42")
    assert first.status == 202 and first.headers.get("Idempotent-Replayed") is None
    stored = messages_of(api_server, creds.account_id)
    segments = db_count(api_server, "SELECT COUNT(*) FROM segments")
    again = await api_server.send(creds, body, key="order-42")
    assert again.status == 202
    assert again.body == first.body
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.request_id != first.request_id
    assert messages_of(api_server, creds.account_id) == stored == 2
    assert db_count(api_server, "SELECT COUNT(*) FROM segments") == segments


async def test_same_key_other_body_is_422(api_server, make_account):
    creds = await make_account()
    assert (await api_server.send(creds, {"to": CN, "text": "one"}, key="k-1")).status == 202
    for other in ({"to": CN, "text": "two"}, {"to": CN, "text": ""}, [1]):
        r = await api_server.send(creds, other, key="k-1")
        assert (r.status, r.code) == (422, "IDEMPOTENCY_KEY_REUSED")
    assert messages_of(api_server, creds.account_id) == 1


async def test_idempotency_keys_are_per_account(api_server, make_account):
    a, b = await make_account(), await make_account()
    body = {"to": CN, "text": "same"}
    ra = await api_server.send(a, body, key="shared")
    rb = await api_server.send(b, body, key="shared")
    assert ra.status == rb.status == 202
    assert rb.headers.get("Idempotent-Replayed") is None
    assert ra.json["batch_id"] != rb.json["batch_id"]


async def test_idempotency_record_expires_after_24_hours(api_server, make_account, clock):
    clock.freeze(1_800_000_000)
    creds = await make_account()
    body = {"to": CN, "text": "daily"}
    first = await api_server.send(creds, body, key="daily-key")
    clock.advance(24 * 3600 - 1)
    assert (await api_server.send(creds, body, key="daily-key")).body == first.body
    clock.advance(2)
    later = await api_server.send(creds, body, key="daily-key")
    assert later.status == 202 and later.headers.get("Idempotent-Replayed") is None
    assert later.json["batch_id"] != first.json["batch_id"]
    assert messages_of(api_server, creds.account_id) == 2


async def test_concurrent_identical_requests_store_one_batch(api_server, make_account):
    creds = await make_account()
    body = {"to": [CN, CN2], "text": "raced"}
    replies = await asyncio.gather(
        *(api_server.send(creds, body, key="race-key") for _ in range(12))
    )
    assert {r.status for r in replies} == {202}
    assert len({r.body for r in replies}) == 1
    assert sum(1 for r in replies if r.headers.get("Idempotent-Replayed") is None) == 1
    assert (
        db_count(
            api_server,
            "SELECT COUNT(DISTINCT batch_id) FROM messages WHERE account_id=?",
            creds.account_id,
        )
        == 1
    )
    assert messages_of(api_server, creds.account_id) == 2


async def test_replay_is_answered_even_when_now_refused(api_server, make_account):
    creds = await make_account()
    body = {"to": CN, "text": "accepted earlier"}
    first = await api_server.send(creds, body, key="early")
    api_server.ctx.queue_depth = api_server.config.store.max_queued_segments
    again = await api_server.send(creds, body, key="early")
    assert again.status == 202 and again.body == first.body
    fresh = await api_server.send(creds, body, key="late")
    assert (fresh.status, fresh.code) == (503, "QUEUE_FULL")


# -- back-pressure and rate ----------------------------------------------------------------------


async def test_queue_full_is_503_with_retry_after(api_server, make_account):
    creds = await make_account()
    limit = api_server.config.store.max_queued_segments
    api_server.ctx.queue_depth = limit - 1
    assert (await api_server.send(creds, {"to": CN, "text": "fits"})).status == 202
    assert api_server.ctx.queue_depth == limit  # the accepted segment counts at once
    r = await api_server.send(creds, {"to": CN, "text": "does not"})
    assert (r.status, r.code) == (503, "QUEUE_FULL")
    assert r.headers["Retry-After"] == "5"
    assert messages_of(api_server, creds.account_id) == 1


async def test_shutting_down_is_503(api_server, make_account):
    creds = await make_account()
    api_server.ctx.accepting = False
    r = await api_server.send(creds, {"to": CN, "text": "x"})
    assert (r.status, r.code) == (503, "SHUTTING_DOWN")
    assert r.headers["Retry-After"]
    ready = await api_server.request("GET", "/readyz")
    assert ready.status == 503 and "shutting down" in ready.json["problems"]


async def test_account_rate_limit(api_server, make_account, clock):
    clock.freeze(1_800_000_000)
    creds = await make_account(tps=2)
    assert (await api_server.send(creds, {"to": CN, "text": "1"})).status == 202
    # One token left; three recipients need the full bucket (2): refused, retry in 0.5 s -> 1.
    three = {"to": [CN, CN2, "+8613700137000"], "text": "3"}
    r = await api_server.send(creds, three)
    assert (r.status, r.code) == (429, "ACCOUNT_RATE_LIMIT")
    assert r.headers["Retry-After"] == "1"
    assert "2 messages/s" in r.message
    clock.advance(0.5)
    # A full bucket lets a batch larger than the bucket through (paced, not starved) ...
    assert (await api_server.send(creds, three)).status == 202
    # ... and the debt it leaves (2 - 3 = -1) paces the next: (1 - -1) / 2 = 1 s.
    r = await api_server.send(creds, {"to": CN, "text": "4"})
    assert (r.status, r.headers["Retry-After"]) == (429, "1")
    clock.advance(1.0)
    assert (await api_server.send(creds, {"to": CN, "text": "5"})).status == 202
    assert messages_of(api_server, creds.account_id) == 5


async def test_rate_changed_live_by_the_operator(api_server, make_account, clock):
    clock.freeze(1_800_000_000)
    creds = await make_account(tps=1000)
    assert (await api_server.send(creds, {"to": CN, "text": "1"})).status == 202
    patch = await api_server.admin("PATCH", f"/admin/accounts/{creds.account_id}", json={"tps": 1})
    assert patch.status == 200 and patch.json["tps"] == 1
    assert (await api_server.send(creds, {"to": [CN, CN2], "text": "2"})).status == 202
    r = await api_server.send(creds, {"to": CN, "text": "3"})
    assert (r.status, r.code, r.headers["Retry-After"]) == (429, "ACCOUNT_RATE_LIMIT", "2")
    patch = await api_server.admin("PATCH", f"/admin/accounts/{creds.account_id}", json={"tps": 0})
    assert patch.json["tps"] == 0
    assert (await api_server.send(creds, {"to": CN, "text": "4"})).status == 202


async def test_request_ids_are_unique(api_server, make_account):
    creds = await make_account()
    replies = [
        await api_server.request("GET", "/healthz"),
        await api_server.request("GET", "/v1/account", creds=creds),
        await api_server.request("GET", "/v1/account"),
        await api_server.send(creds, {"to": "bad", "text": "x"}),
    ]
    ids = [r.request_id for r in replies]
    assert len(set(ids)) == len(ids)
    assert replies[2].json["error"]["request_id"] == ids[2]


# ================================================================================================
# GET /v1/messages/{id}, GET /v1/messages, isolation
# ================================================================================================


async def test_message_view_and_cross_account_isolation(api_server, make_account):
    alice, bob = await make_account(), await make_account()
    sent = await api_server.send(alice, {"to": CN, "text": "for alice", "client_ref": "a-1"})
    mid = sent.json["messages"][0]["id"]
    own = await api_server.request("GET", f"/v1/messages/{mid}", creds=alice)
    assert own.status == 200
    assert (own.json["id"], own.json["to"], own.json["client_ref"]) == (mid, CN, "a-1")
    assert own.json["status"] == "queued" and own.json["text"] == "for alice"
    assert len(own.json["parts"]) == 1 == own.json["segments"]

    theirs = await api_server.request("GET", f"/v1/messages/{mid}", creds=bob)
    unknown_id = "msg_" + "0" * 26
    unknown = await api_server.request("GET", f"/v1/messages/{unknown_id}", creds=bob)
    assert (theirs.status, theirs.code) == (unknown.status, unknown.code) == (404, "NOT_FOUND")
    assert theirs.message.replace(mid, "ID") == unknown.message.replace(unknown_id, "ID")
    assert (await api_server.request("GET", "/v1/messages/nope", creds=bob)).status == 404

    listing = await api_server.request("GET", "/v1/messages", creds=bob)
    assert listing.json == {"messages": [], "next_cursor": None}
    filtered = await api_server.request(
        "GET", "/v1/messages", creds=bob, query="to=%2B8613800138000"
    )
    assert filtered.json["messages"] == []
    mine = await api_server.request("GET", "/v1/messages", creds=alice)
    assert [m["id"] for m in mine.json["messages"]] == [mid]
    assert "parts" not in mine.json["messages"][0]


async def test_list_pagination_has_no_duplicates_or_gaps(api_server, make_account):
    creds = await make_account()
    to = [f"+86138000{i:05d}" for i in range(7)]
    sent = await api_server.send(creds, {"to": to, "text": "page"})
    for i in range(3):  # and a few more batches, so ids span several milliseconds
        await api_server.send(creds, {"to": f"+86139000{i:05d}", "text": "more"})
    expected = {m["id"] for m in sent.json["messages"]} | {
        m.id for m in await api_server.store.list_messages(creds.account_id, limit=100)
    }
    assert len(expected) == 10
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        q = "limit=4" + (f"&cursor={cursor}" if cursor else "")
        r = await api_server.request("GET", "/v1/messages", creds=creds, query=q)
        pages += 1
        seen += [m["id"] for m in r.json["messages"]]
        cursor = r.json["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert len(seen) == len(set(seen)) == 10
    assert set(seen) == expected
    assert seen == sorted(seen, reverse=True)  # newest first


async def test_list_filters(api_server, make_account, clock):
    now = clock.freeze(1_800_000_000)  # 2027-01-15
    creds = await make_account()
    await api_server.send(creds, {"to": [CN, CN2], "text": "f"})
    day = datetime.fromtimestamp(now, UTC).date()

    async def ids(query: str) -> list[str]:
        r = await api_server.request("GET", "/v1/messages", creds=creds, query=query)
        assert r.status == 200, r.json
        return [m["to"] for m in r.json["messages"]]

    assert await ids("to=%2B8613800138000") == [CN]
    assert sorted(await ids("")) == [CN, CN2]
    assert len(await ids("status=queued")) == 2
    assert await ids("status=delivered") == []
    assert len(await ids(f"date={day.isoformat()}")) == 2
    assert await ids(f"date={(day - timedelta(days=1)).isoformat()}") == []
    assert len(await ids("limit=1")) == 1


@pytest.mark.parametrize(
    ("query", "code", "names"),
    [
        ("limit=0", "INVALID_FIELD", "limit"),
        ("limit=201", "INVALID_FIELD", "limit"),
        ("limit=abc", "INVALID_FIELD", "limit"),
        ("limit=-1", "INVALID_FIELD", "limit"),
        ("limit=%C2%B2", "INVALID_FIELD", "limit"),  # "²": a digit to isdigit(), not to int()
        ("limit=%D9%A3", "INVALID_FIELD", "limit"),  # Arabic-Indic 3
        ("date=2026-13-01", "INVALID_FIELD", "date"),
        ("date=yesterday", "INVALID_FIELD", "date"),
        ("date=2026-1-05", "INVALID_FIELD", "date"),  # strict YYYY-MM-DD, as /v1/stats
        ("date=2026-01-5", "INVALID_FIELD", "date"),
        ("status=lost", "INVALID_FIELD", "status"),
        ("cursor=abc", "INVALID_CURSOR", "cursor"),
        ("cursor=msg_01M8M39T0N0B3VTSPJBQ7DDJ7M%0A", "INVALID_CURSOR", "cursor"),
        ("to=hello", "INVALID_NUMBER", "to"),
        ("colour=red", "UNKNOWN_FIELD", "colour"),
        ("%ED%A0%80=1", "UNKNOWN_FIELD", "unknown"),  # a lone surrogate as a name
    ],
)
async def test_list_bad_parameters(api_server, make_account, query, code, names):
    creds = await make_account()
    r = await api_server.request("GET", "/v1/messages", creds=creds, query=query)
    assert (r.status, r.code) == (400, code), r.json
    assert names in r.message


async def test_list_by_the_last_representable_day(api_server, make_account):
    """9999-12-31 is a date like any other (it was 400: datetime had no next day for it)."""
    creds = await make_account()
    r = await api_server.request("GET", "/v1/messages", creds=creds, query="date=9999-12-31")
    assert (r.status, r.json["messages"]) == (200, [])


# ================================================================================================
# POST /v1/preview, GET /v1/account, secrets
# ================================================================================================


async def test_preview(api_server, make_account):
    creds = await make_account()
    r = await api_server.request("POST", "/v1/preview", creds=creds, json={"text": "hello"})
    assert r.status == 200
    assert r.json == {
        "text": "hello",
        "encoding": "gsm7",
        "data_coding": 0,
        "segments": 1,
        "billable_units": 1,
        "chars": 5,
        "parts": [{"chars": 5, "septets_or_octets": 5}],
        "ucs2_chars": [],
        "smsc": "main",  # the default route's (no `to`)
    }
    r = await api_server.request(
        "POST", "/v1/preview", creds=creds, json={"text": "你" * 65, "sign_name": "Acme"}
    )
    assert (r.json["text"][:6], r.json["encoding"], r.json["chars"]) == ("【Acme】", "ucs2", 71)
    assert (r.json["segments"], r.json["billable_units"]) == (2, 2)
    assert messages_of(api_server, creds.account_id) == 0


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ({}, "MISSING_FIELD"),
        ({"text": 5}, "MISSING_FIELD"),
        ({"text": "x", "colour": 1}, "UNKNOWN_FIELD"),
        ({"text": "x", "sign_name": 5}, "INVALID_FIELD"),
        ({"text": "x", "smart_encoding": 1}, "INVALID_FIELD"),
        ({"text": "x", "to": 5}, "INVALID_FIELD"),
        ({"text": "x", "to": "12"}, "INVALID_NUMBER"),
        ({"text": ""}, "EMPTY_MESSAGE"),
        ({"text": "x" * 100_000}, "MESSAGE_TOO_LONG"),
        # The send's refusals of the text: blank, over text.max_chars (500) once smart encoding
        # mapped it (480 + 3 x 10), a sign name not in its registered form.
        ({"text": " \u200b "}, "EMPTY_MESSAGE"),
        ({"text": "a" * 480 + "…" * 10, "smart_encoding": True}, "MESSAGE_TOO_LONG"),
        ({"text": "x", "sign_name": "A"}, "SIGN_NAME_INVALID"),
        ([], "INVALID_REQUEST"),
    ],
)
async def test_preview_refusals(api_server, make_account, payload, code):
    creds = await make_account()
    r = await api_server.request("POST", "/v1/preview", creds=creds, json=payload)
    assert (r.status, r.code) == (400, code), r.json


async def test_own_account_has_no_secret(api_server, make_account):
    creds = await make_account(default_country="cn", tps=7)
    r = await api_server.request("GET", "/v1/account", creds=creds)
    assert r.json["default_country"] == "CN" and r.json["tps"] == 7
    assert r.json["app_key"] == creds.app_key
    assert "secret" not in r.text.lower()


async def test_secrets_appear_only_in_their_creation_responses(api_server):
    created = await api_server.admin(
        "POST", "/admin/accounts", json={"name": "leakcheck", "raw_text": True}
    )
    assert created.status == 201
    account_id = created.json["account"]["id"]
    secret1 = created.json["app_secret"]
    webhook_secret = created.json["webhook_secret"]
    key2 = await api_server.admin("POST", f"/admin/accounts/{account_id}/keys")
    secret2 = key2.json["app_secret"]
    assert len({secret1, secret2, webhook_secret}) == 3
    assert all(len(s) >= 43 for s in (secret1, secret2, webhook_secret))  # >= 256 bits
    account = await api_server.store.get_account(account_id)
    creds = api_server.creds_for(account, created.json["app_key"], secret1)
    creds2 = api_server.creds_for(account, key2.json["app_key"], secret2)
    funded = await api_server.admin(
        "POST", f"/admin/accounts/{account_id}/topups", json={"amount_micro": 1_000_000}
    )
    assert funded.status == 201 and funded.json["cash_micro"] == 1_000_000
    sent = await api_server.send(creds, {"to": CN, "text": "leak?"})
    mid = sent.json["messages"][0]["id"]
    for c in (creds, creds2):
        await api_server.request("GET", "/v1/account", creds=c)
        await api_server.request("GET", f"/v1/messages/{mid}", creds=c)
        await api_server.request("GET", "/v1/messages", creds=c)
        await api_server.request("POST", "/v1/preview", creds=c, json={"text": "x"})
        await api_server.send(c, {"to": "bad", "text": "x"})
    for method, path in (
        ("GET", "/admin/accounts"),
        ("GET", f"/admin/accounts/{account_id}"),
        ("GET", "/admin/accounts/leakcheck"),
        ("GET", f"/admin/accounts/{account_id}/keys"),
        ("POST", f"/admin/accounts/{account_id}/disable"),
        ("POST", f"/admin/accounts/{account_id}/enable"),
    ):
        assert (await api_server.admin(method, path)).status == 200
    await api_server.admin("PATCH", f"/admin/accounts/{account_id}", json={"tps": 5})
    await api_server.admin("POST", f"/admin/keys/{key2.json['app_key']}/revoke")
    creations = {id(created), id(key2)}
    checked = 0
    for _method, _path, reply in api_server.history:
        if id(reply) in creations:
            continue
        checked += 1
        blob = reply.body + str(reply.headers).encode()
        for secret in (secret1, secret2, webhook_secret):
            assert secret.encode() not in blob, (_method, _path)
    assert checked >= 17


# ================================================================================================
# Ops endpoints and the OpenAPI document
# ================================================================================================


async def test_health_and_ready(api_server):
    assert (await api_server.request("GET", "/healthz")).json == {"status": "ok"}
    r = await api_server.request("GET", "/readyz")
    assert r.status == 200 and r.json == {
        "status": "ready",
        "problems": [],
        "warnings": [],
        "smscs": {},
    }


async def test_readyz_reports_no_smsc_bound(api_server):
    api_server.ctx.smsc_status = lambda: {"main": {"up": False}}
    r = await api_server.request("GET", "/readyz")
    assert r.status == 503
    assert r.json == {
        "status": "not ready",
        "problems": ["no SMSC bound"],
        "warnings": [],
        "smscs": {"main": False},
    }
    api_server.ctx.smsc_status = lambda: {"main": {"up": True}, "backup": {"up": False}}
    assert (await api_server.request("GET", "/readyz")).status == 200


async def test_readyz_answers_from_the_bind_status_read_afresh(api_server, monkeypatch):
    """A process that keeps a copy of another's binds (an acceptor) reads it again for each
    probe. A read that fails or hangs leaves the copy as it was, and the probe still answers."""
    copy = {"main": {"up": False}}
    reads: list[str] = []
    fresh = {"main": {"up": True}}

    async def refresh() -> None:
        reads.append("read")
        copy.update(fresh)

    api_server.ctx.smsc_status = lambda: dict(copy)
    api_server.ctx.refresh_smsc_status = refresh
    r = await api_server.request("GET", "/readyz")
    assert (r.status, r.json["smscs"], reads) == (200, {"main": True}, ["read"])
    fresh = {"main": {"up": False}}  # and back down: read again, not answered from the copy
    r = await api_server.request("GET", "/readyz")
    assert (r.status, r.json["problems"], len(reads)) == (503, ["no SMSC bound"], 2)

    async def broken() -> None:
        raise OSError("database is locked")

    copy["main"] = {"up": True}
    api_server.ctx.refresh_smsc_status = broken
    r = await api_server.request("GET", "/readyz")
    assert (r.status, r.json["problems"]) == (200, [])

    async def hung() -> None:
        await asyncio.sleep(60)

    monkeypatch.setattr("bridge.api.app.READY_PING_S", 0.2)
    api_server.ctx.refresh_smsc_status = hung
    t0 = time.monotonic()
    r = await api_server.request("GET", "/readyz")
    assert (r.status, r.json["smscs"]) == (200, {"main": True})
    assert time.monotonic() - t0 < 5


def _schema(ref: str, defs: str = "#/definitions/") -> dict[str, str]:
    return {"$ref": defs + ref}


def _either(*names: str) -> dict[str, Any]:
    return {"anyOf": [_schema(n) for n in names]}


_X = {"^x-": {}}

# A structural meta-schema of OpenAPI 3.0 (the parts this API uses, closed so that 3.1 idioms,
# typos and misplaced keys fail): what the document must look like to an OpenAPI 3.0 tool.
OPENAPI_30 = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["openapi", "info", "paths"],
    "additionalProperties": False,
    "patternProperties": _X,
    "properties": {
        "openapi": {"type": "string", "pattern": r"^3\.0\.[0-9]+$"},
        "info": {
            "type": "object",
            "required": ["title", "version"],
            "additionalProperties": False,
            "patternProperties": _X,
            "properties": {
                "title": {"type": "string"},
                "version": {"type": "string"},
                "description": {"type": "string"},
                "license": {"type": "object", "required": ["name"]},
            },
        },
        "tags": {"type": "array", "items": {"type": "object", "required": ["name"]}},
        "paths": {
            "type": "object",
            "patternProperties": {"^/": _schema("PathItem"), **_X},
            "additionalProperties": False,
        },
        "components": _schema("Components"),
    },
    "definitions": {
        "Reference": {
            "type": "object",
            "required": ["$ref"],
            "properties": {"$ref": {"type": "string", "pattern": "^#/components/"}},
            "additionalProperties": False,
        },
        "PathItem": {
            "type": "object",
            "additionalProperties": False,
            "patternProperties": _X,
            "properties": {
                **{
                    m: _schema("Operation")
                    for m in ("get", "put", "post", "delete", "options", "head", "patch")
                },
                "summary": {"type": "string"},
                "description": {"type": "string"},
                "parameters": {"type": "array", "items": _either("Reference", "Parameter")},
            },
        },
        "Operation": {
            "type": "object",
            "required": ["responses"],
            "additionalProperties": False,
            "patternProperties": _X,
            "properties": {
                "tags": {"type": "array", "items": {"type": "string"}},
                "summary": {"type": "string"},
                "description": {"type": "string"},
                "operationId": {"type": "string"},
                "parameters": {"type": "array", "items": _either("Reference", "Parameter")},
                "requestBody": _either("Reference", "RequestBody"),
                "responses": {
                    "type": "object",
                    "minProperties": 1,
                    "additionalProperties": False,
                    "patternProperties": {
                        "^[1-5](?:[0-9]{2}|XX)$": _either("Reference", "Response"),
                        **_X,
                    },
                    "properties": {"default": _either("Reference", "Response")},
                },
                "security": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "deprecated": {"type": "boolean"},
            },
        },
        "Parameter": {
            "type": "object",
            "required": ["name", "in"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string"},
                "in": {"enum": ["query", "header", "path", "cookie"]},
                "description": {"type": "string"},
                "required": {"type": "boolean"},
                "deprecated": {"type": "boolean"},
                "schema": _either("Reference", "Schema"),
            },
            "if": {"properties": {"in": {"const": "path"}}},
            "then": {"required": ["required"], "properties": {"required": {"const": True}}},
        },
        "RequestBody": {
            "type": "object",
            "required": ["content"],
            "additionalProperties": False,
            "properties": {
                "description": {"type": "string"},
                "required": {"type": "boolean"},
                "content": {"type": "object", "additionalProperties": _schema("MediaType")},
            },
        },
        "Response": {
            "type": "object",
            "required": ["description"],
            "additionalProperties": False,
            "properties": {
                "description": {"type": "string"},
                "headers": {
                    "type": "object",
                    "additionalProperties": _either("Reference", "Header"),
                },
                "content": {"type": "object", "additionalProperties": _schema("MediaType")},
            },
        },
        "MediaType": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"schema": _either("Reference", "Schema"), "example": {}},
        },
        "Header": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "description": {"type": "string"},
                "required": {"type": "boolean"},
                "schema": _either("Reference", "Schema"),
            },
        },
        "SecurityScheme": {
            "type": "object",
            "required": ["type"],
            "additionalProperties": False,
            "properties": {
                "type": {"enum": ["apiKey", "http", "oauth2", "openIdConnect"]},
                "description": {"type": "string"},
                "name": {"type": "string"},
                "in": {"enum": ["query", "header", "cookie"]},
                "scheme": {"type": "string"},
                "bearerFormat": {"type": "string"},
            },
            "allOf": [
                {
                    "if": {"properties": {"type": {"const": "apiKey"}}},
                    "then": {"required": ["name", "in"]},
                },
                {
                    "if": {"properties": {"type": {"const": "http"}}},
                    "then": {"required": ["scheme"]},
                },
            ],
        },
        "Components": {
            "type": "object",
            "additionalProperties": False,
            "patternProperties": _X,
            "properties": {
                "schemas": {
                    "type": "object",
                    "additionalProperties": _either("Reference", "Schema"),
                },
                "responses": {
                    "type": "object",
                    "additionalProperties": _either("Reference", "Response"),
                },
                "parameters": {
                    "type": "object",
                    "additionalProperties": _either("Reference", "Parameter"),
                },
                "headers": {
                    "type": "object",
                    "additionalProperties": _either("Reference", "Header"),
                },
                "securitySchemes": {
                    "type": "object",
                    "additionalProperties": _schema("SecurityScheme"),
                },
            },
        },
        "Schema": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "type": {"enum": ["object", "array", "string", "integer", "number", "boolean"]},
                "nullable": {"type": "boolean"},
                "properties": {
                    "type": "object",
                    "additionalProperties": _either("Reference", "Schema"),
                },
                "additionalProperties": {
                    "anyOf": [{"type": "boolean"}, _schema("Reference"), _schema("Schema")]
                },
                "items": _either("Reference", "Schema"),
                "required": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                "enum": {"type": "array", "minItems": 1},
                "oneOf": {"type": "array", "items": _either("Reference", "Schema")},
                "anyOf": {"type": "array", "items": _either("Reference", "Schema")},
                "allOf": {"type": "array", "items": _either("Reference", "Schema")},
                "pattern": {"type": "string"},
                "format": {"type": "string"},
                "description": {"type": "string"},
                "default": {},
                "minimum": {"type": "number"},
                "maximum": {"type": "number"},
                "minLength": {"type": "integer", "minimum": 0},
                "maxLength": {"type": "integer", "minimum": 0},
                "minItems": {"type": "integer", "minimum": 0},
                "maxItems": {"type": "integer", "minimum": 0},
                "minProperties": {"type": "integer", "minimum": 0},
            },
        },
    },
}


def _walk(node: Any, path: str = "#") -> Any:
    if isinstance(node, dict):
        yield path, node
        for k, v in node.items():
            yield from _walk(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}/{i}")


async def test_openapi_is_served_and_is_valid_openapi_3(api_server):
    r = await api_server.request("GET", "/openapi.json")
    assert r.status == 200
    doc = r.json
    assert doc == openapi_document()
    jsonschema.Draft7Validator.check_schema(OPENAPI_30)
    errors = list(jsonschema.Draft7Validator(OPENAPI_30).iter_errors(doc))
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors[:5]]

    op_ids = []
    for where, node in _walk(doc):
        if "$ref" in node and isinstance(node["$ref"], str):
            target: Any = doc
            for part in node["$ref"].removeprefix("#/").split("/"):
                assert part in target, f"{where}: dangling $ref {node['$ref']}"
                target = target[part]
        if "pattern" in node and isinstance(node["pattern"], str):
            re.compile(node["pattern"])
        if node.get("type") == "object" and "required" in node and "properties" in node:
            missing = set(node["required"]) - set(node["properties"])
            assert not missing, f"{where}: required but not defined: {missing}"
        if "operationId" in node and isinstance(node["operationId"], str):
            op_ids.append(node["operationId"])
    assert len(op_ids) == len(set(op_ids))

    for template, item in doc["paths"].items():
        declared = {p["name"] for p in item.get("parameters", []) if "name" in p}
        for method, op in item.items():
            if method == "parameters":
                continue
            names = declared | {
                p.get("name") for p in op.get("parameters", []) if isinstance(p, dict)
            }
            for param in re.findall(r"{([^}]+)}", template):
                assert param in names, f"{method} {template}: path parameter {param} undeclared"


def test_every_error_code_is_documented_with_its_status():
    doc = openapi_document()
    assert set(ERROR_DESCRIPTIONS) == set(CODES)
    assert all(ERROR_DESCRIPTIONS.values())
    table = doc["components"]["x-error-codes"]
    assert {c: v["status"] for c, v in table.items()} == CODES
    schemas = doc["components"]["schemas"]
    for status in set(CODES.values()):
        enum = schemas[f"Error{status}"]["properties"]["error"]["properties"]["code"]["enum"]
        assert sorted(enum) == sorted(c for c, s in CODES.items() if s == status)
        response = doc["components"]["responses"][f"E{status}"]
        if status in (429, 503):
            assert response["headers"]["Retry-After"]["$ref"].endswith("RetryAfter")
    scheme = doc["components"]["securitySchemes"]["BridgeHmac"]
    for word in ("CanonicalRequest", "StringToSign", "x-bridge-nonce", "NONCE_REUSED", "%2B"):
        assert word in scheme["description"]


async def test_every_route_is_documented_and_every_documented_route_exists(
    api_server, openapi_checker
):
    from aiohttp.test_utils import make_mocked_request

    app = api_server.server.app
    doc = openapi_document()
    samples = {
        "{ref}": "acme", "{key}": "AK00", "{id}": "msg_X", "{name}": "Acme",
        "{code}": "SMS_123456789", "{number}": "+8613800138000", "{month}": "2026-11",
        "{batch_id}": "bat_X",
    }  # fmt: skip
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        canonical = route.resource.canonical
        for action in ("disable", "enable") if "{action}" in canonical else ("",):
            path = canonical.replace("{action}", action)
            for k, v in samples.items():
                path = path.replace(k, v)
            assert openapi_checker.operation(route.method, path) is not None, (
                f"{route.method} {canonical} is served but not documented"
            )
    for template, item in doc["paths"].items():
        path = template
        for k, v in samples.items():
            path = path.replace(k, v)
        for method in item:
            if method == "parameters":
                continue
            match = await app.router.resolve(make_mocked_request(method.upper(), path))
            assert match.http_exception is None, f"{method} {template} documented, not served"


async def test_the_checker_catches_an_untrue_document(api_server, make_account, openapi_checker):
    """The response check is only worth something if it fails on a lie."""
    creds = await make_account()
    r = await api_server.request("GET", "/v1/account", creds=creds)
    r.json["extra"] = 1
    with pytest.raises(AssertionError, match="does not match"):
        openapi_checker.check("GET", "/v1/account", r)
    r.json.pop("extra")
    r.json["tps"] = "fast"
    with pytest.raises(AssertionError, match="does not match"):
        openapi_checker.check("GET", "/v1/account", r)
    r.status = 418
    with pytest.raises(AssertionError, match="does not list"):
        openapi_checker.check("GET", "/v1/account", r)
    bad = await api_server.send(creds, {"to": "x", "text": "y"})
    bad.json["error"]["code"] = "QUEUE_FULL"  # a 503 code in a 400 body
    with pytest.raises(AssertionError, match="does not match"):
        openapi_checker.check("POST", "/v1/messages", bad)


async def test_no_route_is_422(make_api):
    api = await make_api({"routes": [{"prefix": "+86", "smscs": ["main"]}], "default_route": []})
    creds = await api.create_account()
    assert (await api.send(creds, {"to": CN, "text": "routed"})).status == 202
    r = await api.send(creds, {"to": [CN, "+447700900123"], "text": "not routed"})
    assert (r.status, r.code) == (422, "NO_ROUTE")
    assert "+447700900123" in r.message
    assert messages_of(api, creds.account_id) == 1  # nothing of the refused batch


async def test_a_store_that_went_away_is_a_retryable_503(api_server, make_account):
    creds = await make_account()
    await api_server.store.close()  # the database goes away under the running server
    r = await api_server.request("GET", "/v1/account", creds=creds)
    assert (r.status, r.code) == (503, "STORE_UNAVAILABLE")
    assert r.headers["Retry-After"] == "5" and "Traceback" not in r.text
    r = await api_server.send(creds, {"to": CN, "text": "x"}, key="k-down")
    assert (r.status, r.code) == (503, "STORE_UNAVAILABLE")
    ready = await api_server.request("GET", "/readyz")
    assert ready.status == 503
    assert any(p.startswith("store not reachable") for p in ready.json["problems"])


async def test_a_fault_in_our_code_is_a_500_envelope_without_traceback(
    api_server, make_account, monkeypatch
):
    creds = await make_account()

    def broken(*args, **kwargs):
        raise KeyError("a bug, not an outage")

    monkeypatch.setattr(v1, "public_account", broken)
    r = await api_server.request("GET", "/v1/account", creds=creds)
    assert (r.status, r.code) == (500, "INTERNAL_ERROR")
    assert r.request_id in r.message or "request id" in r.message
    assert "Retry-After" not in r.headers and "KeyError" not in r.text


async def test_refused_send_spends_its_nonce(api_server, make_account):
    """A valid send refused after the signature verified (here: queue full) still records its
    nonce: replaying the exact signed request once the queue drains is refused as a replay."""
    creds = await make_account(raw_text=True)
    body = {"to": CN, "text": "x"}
    api_server.ctx.queue_depth = api_server.config.store.max_queued_segments
    first = await api_server.send(creds, body, key="k-1", nonce="n" * 20)
    assert first.code == "QUEUE_FULL"
    api_server.ctx.queue_depth = 0
    again = await api_server.send(creds, body, key="k-1", nonce="n" * 20)
    assert again.code == "NONCE_REUSED"
    fresh = await api_server.send(creds, body, key="k-1", nonce="m" * 20)
    assert fresh.status == 202
