"""HTTP API edge cases found by a review (each failed before its fix): the query read as it is
signed, repeated parameters, the nonce at the skew boundary, non-UTF-8 header bytes, and the
idempotent-replay and refusal paths checking the nonce, key and account like any other answer."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from datetime import UTC, datetime
from urllib.parse import quote, unquote_to_bytes

from bridge.api import v1
from bridge.api.signing import sign_request
from tests.integration.conftest import ADMIN_TOKEN

CN = "+8613800138000"


async def _raw(api, head: bytes, body: bytes = b"") -> tuple[int, bytes]:
    """Send exact bytes (headers that aiohttp's client would refuse to produce)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", api.server.port)
    writer.write(head + b"\r\n" + body)
    await writer.drain()
    data = await reader.read(65536)
    writer.close()
    status = int(data.split(b" ", 2)[1])
    return status, data


# -- 1. "+" in the query: signed as a literal plus, executed as a space --------------------------


async def test_literal_plus_in_to_query_is_a_plus(api_server, make_account):
    creds = await make_account()
    assert (await api_server.send(creds, {"to": CN, "text": "hello"})).status == 202
    encoded = await api_server.request(
        "GET", "/v1/messages", creds=creds, query="to=%2B8613800138000"
    )
    assert encoded.status == 200 and len(encoded.json["messages"]) == 1
    # signing-notes.md: "+" is a literal plus (it canonicalises exactly like %2B, so both are the
    # same signed request); the handler must read it the same way.
    literal = await api_server.request(
        "GET", "/v1/messages", creds=creds, query="to=+8613800138000"
    )
    assert literal.status == 200, (literal.status, literal.json)
    assert literal.json["messages"] == encoded.json["messages"]


# -- 2. the nonce expires at the very millisecond its request becomes valid again -----------------


async def test_nonce_cannot_be_replayed_at_the_skew_boundary(api_server, make_account, clock):
    t = clock.freeze(1_800_000_000)
    creds = await make_account()
    date = datetime.fromtimestamp(t + 300, UTC)  # the client's clock is 300 s ahead: accepted
    nonce = "boundary-nonce-000001"
    first = await api_server.request("GET", "/v1/account", creds=creds, when=date, nonce=nonce)
    assert first.status == 200
    clock.freeze(t + 600)  # the same request is still inside the skew window (-300 s)
    again = await api_server.request("GET", "/v1/account", creds=creds, when=date, nonce=nonce)
    assert (again.status, again.code) == (401, "NONCE_REUSED")


# -- 3. non-UTF-8 header bytes reach .encode() and answer 500 --------------------------------------


async def test_non_utf8_admin_token_is_401_not_500(api_server):
    head = (
        b"GET /admin/accounts HTTP/1.1\r\n"
        + f"Host: {api_server.host}\r\n".encode()
        + b"Authorization: Bearer \xff\xfe"
        + ADMIN_TOKEN.encode()
        + b"\r\n"
        + b"Connection: close\r\n"
    )
    status, data = await _raw(api_server, head)
    assert status == 401, data[:400]


async def test_non_utf8_signed_header_is_401_not_500(api_server, make_account):
    creds = await make_account()
    hdrs = {}

    def grab(h):
        hdrs.update(h)

    await api_server.request("GET", "/v1/account", creds=creds, tamper=grab)
    hdrs["X-Bridge-Nonce"] = "fresh-nonce-for-raw-001"  # the grabbed one was used
    lines = [b"GET /v1/account HTTP/1.1"]
    for k, v in hdrs.items():
        value = v.encode()
        if k == "X-Bridge-Content-SHA256":
            value = value[:-2] + b"\xff\xff"
        lines.append(k.encode() + b": " + value)
    lines.append(b"Connection: close")
    status, data = await _raw(api_server, b"\r\n".join(lines) + b"\r\n")
    assert status == 401, data[:400]


# -- 4. an idempotent replay served on the refusal path skips the nonce and key checks -------------


async def test_replay_path_still_refuses_a_reused_nonce(api_server, make_account):
    creds = await make_account()
    body = {"to": CN, "text": "accepted earlier"}
    assert (await api_server.send(creds, body, key="k-replay")).status == 202
    api_server.ctx.queue_depth = api_server.config.store.max_queued_segments  # now refused
    nonce = "captured-nonce-000001"
    once = await api_server.send(creds, body, key="k-replay", nonce=nonce)
    assert once.status == 202  # the replay itself is fine
    again = await api_server.send(creds, body, key="k-replay", nonce=nonce)
    assert (again.status, again.code) == (401, "NONCE_REUSED")


async def test_replay_path_refuses_a_revoked_key(api_server, make_account):
    creds = await make_account()
    body = {"to": CN, "text": "accepted earlier"}
    assert (await api_server.send(creds, body, key="k-revoked")).status == 202
    assert (await api_server.admin("POST", f"/admin/keys/{creds.app_key}/revoke")).status == 200
    api_server.ctx.queue_depth = api_server.config.store.max_queued_segments
    r = await api_server.send(creds, body, key="k-revoked")
    assert (r.status, r.code) == (401, "KEY_REVOKED")


async def test_refused_send_with_revoked_key_says_key_revoked(api_server, make_account):
    creds = await make_account()
    assert (await api_server.request("GET", "/v1/account", creds=creds)).status == 200
    assert (await api_server.admin("POST", f"/admin/keys/{creds.app_key}/revoke")).status == 200
    r = await api_server.send(creds, {"to": CN, "text": 5})
    assert (r.status, r.code) == (401, "KEY_REVOKED")


# -- 5. canonical query: a spec-conforming client and an empty pair --------------------------------


def _spec_headers(app_key, secret, method, path, raw_query, host, date, nonce):
    """signing-notes.md read literally: split on "&", each part on the first "=", bare name ->
    "name=" (so an empty part is the pair ("", ""))."""
    body_hash = hashlib.sha256(b"").hexdigest()
    headers = {
        "host": host,
        "x-bridge-date": date,
        "x-bridge-nonce": nonce,
        "x-bridge-content-sha256": body_hash,
    }
    enc = lambda b: quote(b, safe="-_.~")  # noqa: E731
    uri = "/".join(enc(unquote_to_bytes(s)) for s in path.split("/")) or "/"
    pairs = []
    for part in raw_query.split("&") if raw_query else []:
        n, _, v = part.partition("=")
        pairs.append((enc(unquote_to_bytes(n)), enc(unquote_to_bytes(v))))
    query = "&".join(f"{n}={v}" for n, v in sorted(pairs))
    names = sorted(headers)
    ch = "".join(f"{n}:{headers[n]}\n" for n in names)
    canonical = "\n".join([method, uri, query, ch, ";".join(names), body_hash])
    sts = "BRIDGE-HMAC-SHA256\n" + date + "\n" + hashlib.sha256(canonical.encode()).hexdigest()
    sig = hmac.new(secret.encode(), sts.encode(), hashlib.sha256).hexdigest()
    return {
        "Host": host,
        "X-Bridge-Date": date,
        "X-Bridge-Nonce": nonce,
        "X-Bridge-Content-SHA256": body_hash,
        "Authorization": f"BRIDGE-HMAC-SHA256 Credential={app_key},"
        f"SignedHeaders={';'.join(names)},Signature={sig}",
    }


async def test_reordered_repeated_parameters_do_not_change_the_answer(api_server, make_account):
    creds = await make_account()
    assert (await api_server.send(creds, {"to": CN, "text": "q"})).status == 202
    as_signed = await api_server.request(
        "GET", "/v1/messages", creds=creds, query="status=failed&status=queued"
    )
    # Signed over "status=failed&status=queued", sent with the pairs swapped (an intermediary,
    # or a client library that reorders): the canonical query is sorted, so it still verifies.
    hdrs = sign_request(
        creds.app_key,
        creds.app_secret,
        "GET",
        "/v1/messages",
        "status=failed&status=queued",
        {"Host": api_server.host},
        b"",
        api_server.clock.utc(),
        "reordered-nonce-00001",
    )
    swapped = await api_server.request(
        "GET",
        "/v1/messages",
        query="status=queued&status=failed",
        headers={"Host": api_server.host, **hdrs},
    )
    # The canonical query is sorted, so both orders verify: a repeated parameter is refused in
    # either order, whichever value came first.
    for r in (as_signed, swapped):
        assert (r.status, r.code) == (400, "INVALID_FIELD") and "status" in r.message


async def test_a_compressed_body_is_refused_by_name(api_server, make_account):
    """aiohttp decompresses a gzip body, so its signed hash (over what the client sent) could
    never match: a clear 415 instead of a BODY_HASH_MISMATCH about bytes nobody sent."""
    creds = await make_account()
    r = await api_server.request(
        "GET", "/v1/account", creds=creds, headers={"Content-Encoding": "gzip"}
    )
    assert (r.status, r.code) == (415, "UNSUPPORTED_MEDIA_TYPE")
    assert "Content-Encoding" in r.message
    assert (await api_server.request("GET", "/v1/account", creds=creds)).status == 200


async def test_answers_name_no_software_version(api_server):
    """aiohttp's default Server header named its version and Python's (session 35 security
    review): every answer, an error and a parse refusal included, says smpp-bridge only."""
    for path in ("/healthz", "/v1/account", "/no/such/path"):
        async with api_server.session.get(api_server.url + path) as r:
            assert r.headers.get("Server") == "smpp-bridge", (path, r.headers.get("Server"))


async def test_every_kind_of_answer_names_smpp_bridge(api_server):
    """Since session 53 one mechanism names every answer, aiohttp's default answer name
    (http_errors.name_every_answer); session 52 named them in the error middleware, and what
    answered without returning through it named itself. Each such path here: an accepted send
    and its replay, a refusal, a CSV streamed from its handler, the 417 of an Expect raised
    before the middlewares, and a body over the limit."""
    creds = await api_server.create_account()
    sent = await api_server.send(creds, {"to": "+8613800138000", "text": "hi"}, key="k-srv-1")
    replay = await api_server.send(creds, {"to": "+8613800138000", "text": "hi"}, key="k-srv-1")
    assert (sent.status, replay.status, replay.headers.get("Idempotent-Replayed")) == (
        202, 202, "true",
    )  # fmt: skip
    month = api_server.clock.utc().strftime("%Y-%m")
    cdrs = await api_server.request("GET", "/v1/cdrs", creds=creds, query=f"month={month}")
    assert cdrs.headers["Content-Type"].startswith("text/csv")
    refused = await api_server.request("GET", "/v1/account")  # unsigned: 401
    assert refused.status == 401
    for r in (sent, replay, cdrs, refused):
        assert r.headers.get("Server") == "smpp-bridge", (r.status, r.headers.get("Server"))
    async with api_server.session.post(
        api_server.url + "/v1/messages", data=b"{}", headers={"Expect": "bogus"}
    ) as r:
        assert (r.status, r.headers.get("Server")) == (417, "smpp-bridge")
    # To a route that takes a body: /healthz answered this 405 METHOD_NOT_ALLOWED, not 413.
    big = b"x" * (api_server.ctx.config.server.max_body_bytes + 1)
    async with api_server.session.post(api_server.url + "/v1/messages", data=big) as r:
        assert (r.status, r.headers.get("Server")) == (413, "smpp-bridge")


async def test_a_bad_expect_to_no_route_names_smpp_bridge(api_server):
    """A path or method no route has is aiohttp's own route, whose Expect handler (not
    defer_continue) refuses a bad Expect before any middleware runs: that 417 said
    "Server: Python/3.11 aiohttp/3.14.5" once the error middleware named the answers."""
    for method, path in (("POST", "/no/such/path"), ("PUT", "/healthz")):
        async with api_server.session.request(
            method, api_server.url + path, data=b"{}", headers={"Expect": "bogus"}
        ) as r:
            assert (r.status, r.headers.get("Server")) == (417, "smpp-bridge"), (method, path)


async def test_refusals_faults_and_bare_methods_name_smpp_bridge(api_server, monkeypatch):
    """The rest of the kinds of answer (session 53: one mechanism, aiohttp's default answer
    name, for all): a 403, a handler's 400, aiohttp's 404 and 405, HEAD and OPTIONS, an
    admin answer, a fault's 500 and the store's 503."""
    creds = await api_server.create_account(raw_text=False)
    kinds = {
        "403": await api_server.send(creds, {"to": "+8613800138000", "text": "free text"}),
        "400": await api_server.request("POST", "/v1/messages", creds=creds, body=b"{no json"),
        "admin": await api_server.admin("GET", "/admin/accounts"),
    }
    for method, path in (("GET", "/no/such/path"), ("PUT", "/healthz"), ("HEAD", "/healthz"),
                         ("OPTIONS", "/healthz")):  # fmt: skip
        async with api_server.session.request(method, api_server.url + path) as r:
            kinds[f"{method} {path}"] = r  # type: ignore[assignment]

    def fault(*args, **kwargs):
        raise KeyError("a bug")

    def outage(*args, **kwargs):
        raise ConnectionError("store gone")

    for name, broken in (("500", fault), ("503", outage)):
        monkeypatch.setattr(v1, "public_account", broken)
        kinds[name] = await api_server.request("GET", "/v1/account", creds=creds)
    statuses = {name: r.status for name, r in kinds.items()}
    assert statuses == {
        "403": 403, "400": 400, "admin": 200, "GET /no/such/path": 404, "PUT /healthz": 405,
        "HEAD /healthz": 200, "OPTIONS /healthz": 405, "500": 500, "503": 503,
    }  # fmt: skip
    named = {name: r.headers.get("Server") for name, r in kinds.items()}
    assert named == dict.fromkeys(kinds, "smpp-bridge")


# -- session 53: the signed headers read by name; one sent twice is signed joined, as before -----


async def test_a_signed_date_sent_twice_is_read_as_before(api_server, make_account):
    """X-Bridge-Date twice: the first decides the clock check and the signature covers both
    joined with "," (RFC 9110), in the string to sign too, as when every header was lowered
    into a dict. Read joined for the
    clock too, the request would be refused as a malformed date."""
    from bridge.api import signing

    creds = await make_account()
    now = signing.format_date(datetime.now(UTC))
    host = f"127.0.0.1:{api_server.server.port}"
    nonce = "twice-date-nonce-0001"
    sha = signing.body_sha256(b"")
    lowered = {"host": host, "x-bridge-date": f"{now},junk", "x-bridge-nonce": nonce,
               "x-bridge-content-sha256": sha}  # fmt: skip
    names = sorted(lowered)
    canonical = signing.canonical_request("GET", "/v1/account", "", lowered, names, sha)
    # The string to sign carries the date as the canonical request does: both, joined.
    signature = signing.sign(creds.app_secret, signing.string_to_sign(f"{now},junk", canonical))
    auth = (f"{signing.ALGORITHM} Credential={creds.app_key},SignedHeaders={';'.join(names)},"
            f"Signature={signature}")  # fmt: skip
    head = (f"GET /v1/account HTTP/1.1\r\nHost: {host}\r\nX-Bridge-Date: {now}\r\n"
            f"X-Bridge-Date: junk\r\nX-Bridge-Nonce: {nonce}\r\nX-Bridge-Content-SHA256: {sha}\r\n"
            f"Authorization: {auth}\r\nConnection: close\r\n")  # fmt: skip
    status, data = await _raw(api_server, head.encode())
    assert status == 200, data[:400]
