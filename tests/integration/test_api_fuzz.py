"""Hypothesis against the real server: correctly signed requests with generated bodies and query
strings. Whatever arrives, the answer is never a 5xx and never an authentication failure (the
signature is right), a refusal is the JSON envelope with a code from errors.CODES and that code's
status, and every answer matches the OpenAPI document (checked by the threaded harness in
conftest). The server runs in its own thread so hypothesis can drive it synchronously."""

from __future__ import annotations

import json
import secrets
import string
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from bridge.api.errors import CODES

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)

# Text including surrogates (serialised as \ud800 escapes), controls and astral characters.
any_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)
phoneish = st.one_of(
    st.sampled_from(
        ["+8613800138000", "13800138000", "+86 138 0013 8000", "008613800138000", "+1", "", " "]
    ),
    st.text("+0123456789 -().", max_size=20),
    any_text,
)
numbers = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False),
    st.integers(min_value=-2, max_value=10_100),
)
scalars = st.one_of(st.none(), st.booleans(), numbers, any_text)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5), st.dictionaries(any_text, children, max_size=5)
    ),
    max_leaves=15,
)

SEND_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "to": st.one_of(phoneish, st.lists(phoneish, max_size=4), json_values),
    "text": st.one_of(any_text, st.text("ab€[]{}你😀 ", max_size=600), json_values),
    "template": st.one_of(any_text, json_values),
    "params": st.one_of(st.dictionaries(any_text, scalars, max_size=3), json_values),
    "sign_name": st.one_of(st.text(max_size=40), json_values),
    "client_ref": st.one_of(st.text(max_size=70), json_values),
    "sender": st.one_of(st.text(string.printable, max_size=25), json_values),
    "validity_minutes": st.one_of(numbers, json_values),
    "scheduled_at": st.one_of(
        st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
        st.sampled_from(["9999-12-31T23:59:59-05:00", "0001-01-01T00:00:00+01:00", "now"]),
        json_values,
    ),
    "smart_encoding": st.one_of(st.booleans(), json_values),
}
PREVIEW_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "text": SEND_FIELDS["text"],
    "sign_name": SEND_FIELDS["sign_name"],
    "to": SEND_FIELDS["to"],
    "smart_encoding": SEND_FIELDS["smart_encoding"],
}


good_number = st.one_of(
    st.integers(13_000_000_000, 19_999_999_999).map(lambda n: f"+86{n}"),
    st.integers(13_000_000_000, 19_999_999_999).map(str),  # national, for default_country CN
    st.sampled_from(["+447700900123", "+12025550123", "+6581234567"]),
)
good_text = st.text(
    st.sampled_from("abcXYZ 0123456789.,!?€[]{}^~\\|你好世界😀é\n"), min_size=1, max_size=300
).filter(str.strip)
VALID: dict[str, st.SearchStrategy[dict[str, Any]]] = {
    "send": st.fixed_dictionaries(
        {
            "to": st.one_of(
                good_number, st.lists(good_number, min_size=1, max_size=5, unique=True)
            ),
            "text": good_text,
        },
        optional={
            "sign_name": st.text(string.ascii_letters, min_size=1, max_size=12),
            "client_ref": st.text(min_size=1, max_size=64),
            "sender": st.sampled_from(["1069", "Acme", "+8610690000"]),
            "validity_minutes": st.integers(1, 10080),
            "scheduled_at": st.sampled_from(["2020-01-01T00:00:00Z", "2099-01-01T00:00:00+08:00"]),
            "smart_encoding": st.booleans(),
        },
    ),
    "preview": st.fixed_dictionaries(
        {"text": good_text},
        optional={
            "sign_name": st.text(min_size=1, max_size=12),
            "to": good_number,
            "smart_encoding": st.booleans(),
        },
    ),
}


@st.composite
def objects(draw: st.DrawFn, fields: dict[str, st.SearchStrategy[Any]], valid: str) -> Any:
    """Mostly a valid body with one or two fields replaced by anything, removed or added; else
    any JSON value or a random subset of the known fields."""
    kind = draw(st.integers(0, 9))
    if kind <= 5:
        out: dict[str, Any] = draw(VALID[valid])
        for _ in range(draw(st.integers(0, 2))):
            action = draw(st.integers(0, 5))
            name = draw(st.sampled_from(sorted(fields)))
            if action == 0:
                out.pop(name, None)
            elif action == 1:
                out[draw(any_text)] = draw(json_values)
            else:
                out[name] = draw(fields[name])
        return out
    if kind <= 7:
        names = draw(st.lists(st.sampled_from(sorted(fields)), unique=True))
        return {name: draw(fields[name]) for name in names}
    return draw(json_values)


def _encode(value: Any, ascii_only: bool) -> bytes:
    try:
        return json.dumps(value, ensure_ascii=ascii_only).encode()
    except UnicodeEncodeError:  # lone surrogates: only as \\u escapes
        return json.dumps(value, ensure_ascii=True).encode()


@st.composite
def bodies(draw: st.DrawFn, fields: dict[str, st.SearchStrategy[Any]], valid: str) -> bytes:
    """Nine in ten a JSON document (mostly near-valid), else raw bytes or a known nasty body."""
    if draw(st.integers(0, 9)) < 9:
        return _encode(draw(objects(fields, valid)), draw(st.booleans()))
    return draw(
        st.one_of(
            st.sampled_from(
                [
                    b"",
                    b"{",
                    b"[" * 50_000 + b"]" * 50_000,
                    b'{"to": "+8613800138000", "text": "x", "validity_minutes": 1e999}',
                    b'{"to": "+8613800138000", "text": "x", "validity_minutes": -Infinity}',
                    b'{"to": "+8613800138000", "text": "\\udfff"}',
                    b'{"to": "+8613800138000", "text": "x", "to": 5}',
                    b"\xef\xbb\xbf{}",
                ]
            ),
            st.binary(max_size=200),
        )
    )


def _assert_sane(reply: Any, ok: set[int]) -> None:
    event(f"{reply.status} {reply.code or ''}".strip())  # see --hypothesis-show-statistics
    assert reply.status < 500, (reply.status, reply.text[:300])
    if reply.status in ok:
        return
    assert reply.status not in (401, 405), (reply.status, reply.text[:300])  # signed correctly
    assert reply.code in CODES and CODES[reply.code] == reply.status


@pytest.fixture
def fuzz_api(threaded_api: Any) -> Any:
    threaded_api.creds = threaded_api.create_account("fuzzer", raw_text=True, default_country="CN")
    return threaded_api


ADMIN_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "name": st.one_of(st.text(max_size=70), json_values),
    "kind": st.one_of(st.sampled_from(["prepaid", "postpaid"]), any_text, json_values),
    "raw_text": st.one_of(st.booleans(), json_values),
    "marketing": st.one_of(st.booleans(), json_values),
    "tps": st.one_of(numbers, json_values),
    "daily_quota": st.one_of(numbers, json_values),
    "default_country": st.one_of(st.text(string.ascii_letters, max_size=3), any_text, json_values),
    "status_callback_url": st.one_of(st.just("https://x.example/cb"), any_text, json_values),
    "mo_callback_url": st.one_of(st.just("http://x.example/mo"), any_text, json_values),
}
VALID["admin"] = st.fixed_dictionaries(
    {"name": st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,20}", fullmatch=True)},
    optional={
        "kind": st.sampled_from(["prepaid", "postpaid"]),
        "raw_text": st.booleans(),
        "tps": st.integers(0, 1000),
        "default_country": st.sampled_from(["CN", "gb", None]),
    },
)


@st.composite
def idempotency_keys(draw: st.DrawFn) -> str | None:
    """Mostly a fresh UUID (hypothesis leans towards the first choice), sometimes odd ones."""
    choice = draw(st.integers(0, 9))
    if choice == 7:
        return None
    if choice == 8:
        text = string.ascii_letters + string.digits + string.punctuation + " "
        return draw(st.text(text, max_size=30)) + "-" + secrets.token_hex(4)
    if choice == 9:
        return draw(st.text(string.ascii_letters, min_size=250, max_size=260))
    return f"{draw(st.uuids())}-{secrets.token_hex(4)}"  # hypothesis repeats its uuids


@FUZZ
@given(body=bodies(SEND_FIELDS, "send"), key=idempotency_keys())
def test_fuzz_send(fuzz_api: Any, body: bytes, key: str | None) -> None:
    reply = fuzz_api.request(
        "POST", "/v1/messages", creds=fuzz_api.creds, body=body, idempotency_key=key
    )
    _assert_sane(reply, {202})
    if reply.status == 202:
        assert reply.json["count"] == len(reply.json["messages"]) >= 1


@FUZZ
@given(body=bodies(PREVIEW_FIELDS, "preview"))
def test_fuzz_preview(fuzz_api: Any, body: bytes) -> None:
    reply = fuzz_api.request("POST", "/v1/preview", creds=fuzz_api.creds, body=body)
    _assert_sane(reply, {200})


_known_values = {
    "to": st.one_of(good_number, st.sampled_from(["+8613800138000", "hello", ""])),
    "date": st.one_of(
        st.dates().map(str), st.sampled_from(["9999-12-31", "0000-01-01", "2026-2-30", ""])
    ),
    "status": st.sampled_from(["queued", "sent", "delivered", "failed", "expired", "unknown", "x"]),
    "cursor": st.one_of(
        st.from_regex(r"msg_[0-9A-Z]{26}", fullmatch=True), st.sampled_from(["msg_", ""])
    ),
    "limit": st.one_of(st.integers(-5, 300).map(str), st.sampled_from(["²", "١٢", "1.5", ""])),
}


@st.composite
def query_strings(draw: st.DrawFn) -> str:
    parts = []
    strange = draw(st.integers(0, 9)) == 9  # one query in ten may carry unknown names
    for _ in range(draw(st.integers(0, 5))):
        if not strange or draw(st.booleans()):
            name = draw(st.sampled_from(sorted(_known_values)))
            value = draw(_known_values[name] if draw(st.integers(0, 3)) < 3 else any_text)
        else:
            name, value = draw(any_text), draw(any_text)
        safe = draw(st.sampled_from(["", "", "", "+", "+=&"]))  # a raw + is a space; or worse
        enc = lambda s, safe=safe: quote(s.encode("utf-8", "surrogatepass"), safe=safe)  # noqa: E731
        bare = not value and draw(st.booleans())
        parts.append(enc(name) if bare else f"{enc(name)}={enc(value)}")
    if strange:
        parts.append(draw(st.sampled_from(["%", "%zz", "=", "&", "%ED%A0%80=1", "a=%FF"])))
    return "&".join(parts)


@FUZZ
@given(query=query_strings())
def test_fuzz_list_query(fuzz_api: Any, query: str) -> None:
    reply = fuzz_api.request("GET", "/v1/messages", creds=fuzz_api.creds, query=query)
    _assert_sane(reply, {200})


@FUZZ
@given(body=bodies(ADMIN_FIELDS, "admin"))
def test_fuzz_admin_create(fuzz_api: Any, body: bytes) -> None:
    headers = {"Authorization": f"Bearer {fuzz_api.api.config.server.admin_token}"}
    reply = fuzz_api.request("POST", "/admin/accounts", body=body, headers=headers)
    _assert_sane(reply, {201})
