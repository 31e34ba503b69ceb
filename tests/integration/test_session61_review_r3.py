"""Session 61 review (r3) of the accept outside the store (merge 6102e3a): what a client may send
over a real port, answered as before the merge.

`signing.verify_checked` builds the canonical request first. A raw byte of the request target
that is not UTF-8 reaches it as a surrogate where the daemon runs aiohttp's pure-Python parser
(what runs where aiohttp's C extension is missing; the C parser refuses such a target itself),
and the canonical request of that target cannot be encoded: the merged tree raised there,
before the body's check, and a send whose body hash is wrong was answered 500 INTERNAL_ERROR
(an ERROR line with a traceback) where the tree before answered 401 BODY_HASH_MISMATCH."""

from __future__ import annotations

import json
import logging

import pytest
from aiohttp import http_parser, web_protocol

from tests.integration.conftest import ServedApi, prepare_headers
from tests.integration.test_session57_review_r4 import _masked
from tests.integration.test_session58_review_r2 import _read


def _send(daemon: ServedApi, creds: object, target: str, *, body_sha256: str | None) -> bytes:
    """A signed send to `target` (its text as surrogate-escaped bytes), signed for a plain
    /v1/messages; `body_sha256` in place of the body's hash when given."""
    body = json.dumps({"to": "+8613800000001", "text": "Your code is 123456."}).encode()
    headers = prepare_headers(
        f"127.0.0.1:{daemon.port}",
        "POST",
        "/v1/messages",
        "",
        body,
        creds=creds,  # type: ignore[arg-type]
        headers=None,
        content_type="application/json",
        idempotency_key="idem-r3-raw-byte",
        when=daemon.api.clock.utc(),
        nonce=None,
    )
    if body_sha256 is not None:
        headers["X-Bridge-Content-SHA256"] = body_sha256
    headers["Content-Length"] = str(len(body))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST {target} HTTP/1.1\r\n{head}\r\n".encode("utf-8", "surrogateescape") + body


@pytest.mark.parametrize("target", ["/v1/messages?a=\udcff", "/v1/messages?\udcfe\udcff=1"])
async def test_a_raw_byte_in_the_target_is_refused_for_its_body_hash(
    daemon: ServedApi,
    target: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under the Python parser: 401 BODY_HASH_MISMATCH and its INFO line, as before the merge
    (fails on the merged tree: 500 INTERNAL_ERROR and an ERROR line)."""
    monkeypatch.setattr(web_protocol, "HttpRequestParser", http_parser.HttpRequestParserPy)
    caplog.set_level(logging.INFO, logger="bridge.api")
    creds = await daemon.api.create_account()
    reader, writer = await daemon.connect()
    try:
        writer.write(_send(daemon, creds, target, body_sha256="0" * 64))
        answer = _masked(await _read(reader, False))
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 401 "), answer
    _, _, body = answer.partition(b"\r\n\r\n")
    assert json.loads(body)["error"]["code"] == "BODY_HASH_MISMATCH"
    assert [r.levelname for r in caplog.records if r.name == "bridge.api"] == ["INFO"]
    assert not [r for r in caplog.records if r.exc_info]


@pytest.mark.parametrize("target", ["/v1/messages?a=\udcff", "/v1/messages/\udcff"])
async def test_a_raw_byte_in_the_target_with_the_right_body_hash_is_a_signature_mismatch(
    daemon: ServedApi,
    target: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Under the Python parser, a target no client could have signed (a raw byte that is not
    UTF-8) behind a body whose hash is right: 401 SIGNATURE_MISMATCH and an INFO line, as a
    header value that is not UTF-8 is refused. Before, on every tree, a 500 INTERNAL_ERROR and an
    ERROR line with a traceback, which a request needing no secret could repeat at will."""
    monkeypatch.setattr(web_protocol, "HttpRequestParser", http_parser.HttpRequestParserPy)
    caplog.set_level(logging.INFO, logger="bridge.api")
    creds = await daemon.api.create_account()
    reader, writer = await daemon.connect()
    try:
        writer.write(_send(daemon, creds, target, body_sha256=None))
        answer = _masked(await _read(reader, False))
    finally:
        writer.close()
    assert answer.startswith(b"HTTP/1.1 401 "), answer
    _, _, body = answer.partition(b"\r\n\r\n")
    error = json.loads(body)["error"]
    assert error["code"] == "SIGNATURE_MISMATCH"
    assert "target is not valid UTF-8" in error["message"]
    assert [r.levelname for r in caplog.records if r.name == "bridge.api"] == ["INFO"]
    assert not [r for r in caplog.records if r.exc_info]
