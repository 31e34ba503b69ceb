"""Session 61's cuts of the accept outside the store, held to what they replace.

- `signing.verify_checked` builds the canonical request first and checks the values' UTF-8 only
  when it is not all ASCII, compares the digests as `str`s then, and hashes inline: the same
  refusals, in the same order, with the same messages and details as the function it replaced
  (kept here as `_old_verify_checked`) over random requests, and no call of `string_to_sign` or
  `sign` (which fails on the tree before).
- `plain_request.PLAIN_REQUEST`: the getters answer the attributes the send path reads; the probe
  says no where a getter answers otherwise.
- `request_maker`: a request it makes holds the reified properties a send reads, as aiohttp's
  getters answer them, before any read.
- `route_cache._layers`: a route's chain by closures, each middleware called with the next layer
  by keyword, as aiohttp's partials call it; None where aiohttp's chain is not that.
- `http_errors._BodyFailingParser.feed_data` is a `_Feed`'s, whose state is read without the
  wrap's `__getattr__` hook.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import random
from collections.abc import Mapping
from typing import Any

import pytest
from aiohttp import web, web_app
from aiohttp.test_utils import make_mocked_request

from bridge.api import http_errors, plain_request, request_maker, route_cache, signing


def _old_verify_checked(
    secret: str | bytes,
    method: str,
    path: str,
    raw_query: str,
    lowered: Mapping[str, str],
    body: bytes,
    auth: signing.AuthHeader,
) -> None:
    """`verify_checked` as it was before session 61."""
    for name in auth.signed_headers:
        value = lowered[name]
        if value.isascii():
            continue
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise signing._mismatch(f"header '{name}' is not valid UTF-8") from None
    claimed = lowered["x-bridge-content-sha256"]
    actual = signing.body_sha256(body)
    if not hmac.compare_digest(claimed.encode("utf-8"), actual.encode("ascii")):
        raise signing.SignatureError(
            "BODY_HASH_MISMATCH",
            "X-Bridge-Content-SHA256 is not the lower-case hex SHA-256 of the body received "
            f"(server computed {actual})",
        )
    date = lowered["x-bridge-date"]
    canonical = signing._canonical(
        method, path, raw_query, lowered, auth.signed_headers, claimed, names_canonical=True
    )
    to_sign = signing.string_to_sign(date, canonical)
    expected = signing.sign(secret, to_sign)
    if not hmac.compare_digest(expected.encode("ascii"), auth.signature.encode("utf-8")):
        raise signing.SignatureError(
            "SIGNATURE_MISMATCH",
            "the signature does not match the request; check the canonical request and the secret",
            canonical=canonical,
            string_to_sign=to_sign,
        )


def _outcome(fn: Any, *args: Any) -> tuple[Any, ...]:
    try:
        fn(*args)
    except signing.SignatureError as exc:
        return ("refused", exc.code, exc.message, exc.canonical, exc.string_to_sign)
    except Exception as exc:  # compared, whatever it is
        return ("raised", type(exc).__name__, str(exc))
    return ("ok",)


_ODD = ["", " ", "é", "中", "\udcff", "\U0001f600", "a\tb", "ü-x", "\x7f"]
_NAMES = ("content-type", "host", "idempotency-key", "x-bridge-content-sha256", "x-bridge-date")


def _case(rng: random.Random) -> tuple[Any, ...]:
    secret = rng.choice(["s3cret", b"raw-bytes-secret", "ключ"])
    body = rng.choice([b"", b'{"to":"+8613800138000","text":"hi"}', "中文".encode(), bytes(300)])
    date = rng.choice(["2026-12-07T06:00:00Z", "2026-12-07T06:00:0é"])
    headers = {
        "content-type": "application/json" + rng.choice(["", "; charset=utf-8"]),
        "host": rng.choice(["api.example.com", "api.example.com:8443"]),
        "idempotency-key": "k-" + str(rng.randrange(1000)),
        "x-bridge-date": date,
        "x-bridge-nonce": "n" * 20,
    }
    sha = hashlib.sha256(body).hexdigest()
    headers["x-bridge-content-sha256"] = rng.choice([sha, sha, sha.upper(), "0" * 64, sha + "é"])
    names = tuple(
        sorted([*rng.sample(_NAMES, rng.randrange(2, len(_NAMES) + 1)), "x-bridge-nonce"])
    )
    if "x-bridge-content-sha256" not in names and rng.random() < 0.5:
        names = tuple(sorted({*names, "x-bridge-content-sha256"}))
    for _ in range(rng.randrange(3)):  # odd values in some signed header
        name = rng.choice(names)
        headers[name] = headers[name] + rng.choice(_ODD)
    if rng.random() < 0.1:  # a signed name absent (a caller breaking the contract)
        headers.pop(rng.choice(names))
    if rng.random() < 0.05:
        headers.pop("x-bridge-content-sha256", None)
    method = rng.choice(["POST", "GET", "post"])
    # A raw byte of the target that is not UTF-8 reaches the server as a surrogate (aiohttp's
    # Python parser): the canonical request cannot be encoded (session 61's review).
    path = rng.choice(["/v1/messages", "/v1/messages/%7Eabc", "/v1/é", "/v1/\udcff"])
    query = rng.choice(["", "b=2&a=1", "to=+86", "a=\udcff"])
    signature = "0" * 64
    if rng.random() < 0.6 and all(n in headers for n in names):
        try:
            canonical = signing._canonical(
                method, path, query, headers, names, headers.get("x-bridge-content-sha256", ""),
                names_canonical=True,
            )  # fmt: skip
            signature = signing.sign(
                secret, signing.string_to_sign(headers.get("x-bridge-date", ""), canonical)
            )
        except (signing.SignatureError, UnicodeEncodeError):
            pass
    signature = rng.choice([signature, signature, signature[:-1] + "é", signature.upper()])
    auth = signing.AuthHeader("AK" + "0" * 24, names, signature)
    return secret, method, path, query, headers, body, auth


def test_verify_checked_answers_as_before() -> None:
    rng = random.Random(61)
    kinds: dict[str, int] = {}
    for _ in range(3000):
        case = _case(rng)
        new = _outcome(signing.verify_checked, *case)
        old = _outcome(_old_verify_checked, *case)
        if old[:2] == ("raised", "UnicodeEncodeError"):
            # A target that is not UTF-8 no client can have signed: refused since session 61's
            # review, where every tree before raised (a 500 with a traceback).
            old = ("refused", "SIGNATURE_MISMATCH", "the request target is not valid UTF-8")
            old += (None, None)
        assert new == old, case
        kinds[new[1] if new[0] != "ok" else "ok"] = (
            kinds.get(new[1] if new[0] != "ok" else "ok", 0) + 1
        )
    # Every outcome was drawn: accepted, each refusal, the contract's KeyError.
    assert {"ok", "SIGNATURE_MISMATCH", "BODY_HASH_MISMATCH", "KeyError"} <= kinds.keys(), kinds
    assert kinds["ok"] > 100


def test_verify_checked_hashes_inline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither `string_to_sign` nor `sign` is called (two frames a request less)."""
    rng = random.Random(7)
    for _ in range(200):
        case = _case(rng)
        if _outcome(signing.verify_checked, *case) == ("ok",):
            break
    else:  # pragma: no cover - the draw above always finds one
        raise AssertionError("no good case drawn")

    def refuse(*args: Any) -> Any:
        raise AssertionError("called")

    monkeypatch.setattr(signing, "string_to_sign", refuse)
    monkeypatch.setattr(signing, "sign", refuse)
    signing.verify_checked(*case)


def test_the_getters_answer_the_attributes_read() -> None:
    assert plain_request.PLAIN_REQUEST is True  # this aiohttp
    request = make_mocked_request("POST", "/v1/messages?x=1", headers={"A": "1"})
    request._match_info = object()  # type: ignore[attr-defined]
    assert request.headers is request._headers
    assert request.method is request._method
    assert request.content is request._payload
    assert request.rel_url is request._rel_url
    assert request.version is request._version
    assert request.match_info is request._match_info  # type: ignore[attr-defined]
    assert request.client_max_size is request._client_max_size
    assert request.writer is request._payload_writer
    assert request.raw_path is request._message.path
    assert request.keep_alive is (not request._message.should_close)


def test_the_probe_refuses_a_getter_answering_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    assert plain_request._plain_getters() is True
    monkeypatch.setattr(web.Request, "headers", property(lambda self: {}))
    assert plain_request._plain_getters() is False


def test_a_made_request_holds_the_reified_answers() -> None:
    """The second request of a checked maker holds each getter's answer under its name, before
    any read (fails on the tree before: its cache was empty)."""

    mocked = make_mocked_request("POST", "/v1/messages", headers={"Host": "h"})
    args = (mocked._message, mocked._payload, mocked._protocol, mocked._payload_writer, None)

    def plain(*a: Any) -> web.Request:  # aiohttp's own way (Application._make_request's)
        return web.Request(*a, mocked._loop)

    real = plain(*args)
    maker = request_maker.RequestMaker(plain)
    made = maker.make(*args)
    assert type(made) is web.Request and maker._checked is True  # checked: the same state
    second = maker.make(*args)
    assert second is not made
    cached = dict(second._cache)
    assert set(cached) == set(request_maker._CACHED)
    for name in request_maker._CACHED:
        answer = getattr(real, name)
        assert cached[name] == answer and type(cached[name]) is type(answer)
    assert cached["headers"] is real.headers and cached["content"] is real.content


def test_a_route_chain_is_closures_as_aiohttps_partials() -> None:
    calls: list[tuple[str, Any]] = []

    @web.middleware
    async def outer(request: Any, handler: Any) -> Any:
        calls.append(("outer", handler))
        return await handler(request)

    @web.middleware
    async def inner(request: Any, *, handler: Any) -> Any:  # the handler by keyword only
        calls.append(("inner", handler))
        return await handler(request)

    app = web.Application(middlewares=[outer, inner])
    app.freeze()
    http_errors.without_current_app_middleware(app)
    build = web_app._cached_build_middleware
    layers = route_cache._layers(app, build)
    assert layers == (inner, outer)
    assert route_cache._layers(app, lambda handler, apps: handler) is None

    async def handler(request: Any) -> str:
        return "answer"

    chain = route_cache._chain(handler, layers)
    assert not isinstance(chain, functools.partial)
    assert chain.__wrapped__.__wrapped__ is handler  # type: ignore[attr-defined]
    import asyncio

    assert asyncio.run(chain("request")) == "answer"  # type: ignore[arg-type]
    assert [c[0] for c in calls] == ["outer", "inner"]
    assert calls[1][1] is handler


def test_the_feed_is_read_without_the_wraps_hook() -> None:
    class Inner:
        def feed_data(self, data: bytes) -> tuple[list[Any], bool, bytes]:
            return [], False, b""

    wrapped = http_errors._BodyFailingParser(Inner())
    feed = wrapped.feed_data
    assert type(feed.__self__) is http_errors._Feed  # type: ignore[attr-defined]
    assert not hasattr(type(feed.__self__), "__getattr__")  # type: ignore[attr-defined]
    assert feed(b"") == ([], False, b"")
