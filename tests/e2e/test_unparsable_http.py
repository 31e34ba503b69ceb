"""Requests aiohttp's parser refuses get each face's error format, are counted, and are logged
as one line naming the fault: never plain text, a traceback, or the request's bytes echoed back
(the Alibaba face's request line carries the caller's AccessKeyId and signature)."""

from __future__ import annotations

import asyncio
import gzip
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
import yaml

from bridge.api import signing
from bridge.app import Daemon
from bridge.config import load_config
from tests.e2e import harness
from tests.e2e.harness import config_dict, free_port, wait_until

SECRET = "LTAIsecretkey0123"


async def _raw(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send bytes as they are; read the whole answer, which ends when the server closes the
    connection (it must: the rest of the stream cannot be trusted)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body


MALFORMED = {
    "tls_to_plain_port": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40,
    "header_too_long": b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n",
    "header_without_colon": b"GET /healthz HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n",
    "bad_content_length": b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n",
    "bad_request_line": b"GET /?AccessKeyId=" + SECRET.encode() + b" HTTP/1.1 extra\r\n\r\n",
}


@pytest.fixture
async def daemon(tmp_path: Path):
    ali_port = free_port()
    path = tmp_path / "bridge.yaml"
    data = config_dict(tmp_path, aliyun={"enabled": True, "port": ali_port})
    path.write_text(yaml.safe_dump(data))
    d = Daemon(load_config(path, env={}))
    await d.start()
    await wait_until(lambda: d.connectors["sim"].is_up, 10)
    yield d, ali_port
    await d.stop()


@pytest.mark.parametrize("kind", sorted(MALFORMED))
async def test_native_face_answers_malformed_http_with_the_envelope(daemon, kind, caplog):
    d, _ = daemon
    caplog.set_level(logging.DEBUG)
    status, headers, body = await _raw(d.http_port, MALFORMED[kind])
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    error = orjson.loads(body)["error"]
    assert error["code"] == "MALFORMED_HTTP"
    assert error["request_id"] == headers["x-request-id"] and error["request_id"].startswith("req_")
    assert error["message"]
    assert SECRET not in body.decode("latin-1")
    text = caplog.text
    assert "Traceback" not in text and SECRET not in text
    assert not [r for r in caplog.records if r.exc_info and r.name.startswith("aiohttp")]
    assert any("HTTP" in r.getMessage() for r in caplog.records if r.name == "bridge.api")


async def test_unparsable_requests_are_counted(daemon):
    d, _ = daemon
    for _ in range(3):
        await _raw(d.http_port, MALFORMED["header_without_colon"])
    _, _, body = await _raw(
        d.http_port, b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    line = next(
        ln
        for ln in body.decode().splitlines()
        if ln.startswith("smpp_bridge_api_requests_total{")
        and 'endpoint="unparsable"' in ln
        and 'code="MALFORMED_HTTP"' in ln
    )
    assert float(line.rsplit(" ", 1)[1]) == 3


async def test_alibaba_face_answers_in_its_own_format(daemon, caplog):
    _, ali_port = daemon
    status, headers, body = await _raw(ali_port, MALFORMED["bad_request_line"])
    assert status == 400
    answer = orjson.loads(body)
    assert answer["Code"] == "isv.INVALID_PARAMETERS"
    assert answer["RequestId"] == headers["x-request-id"]
    assert SECRET not in body.decode("latin-1") and SECRET not in caplog.text


async def test_a_well_formed_request_on_the_same_server_is_unaffected(daemon):
    d, _ = daemon
    status, _, body = await _raw(
        d.http_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 200, body


async def test_the_message_tells_an_unframed_body_from_tls(daemon):
    """A body sent without Content-Length (Node's http.request writes a GET's body so) is read as
    the next request's first line: its answer said "is TLS sent to a plain-HTTP port?" (session
    49, a customer's Node.js client), as did TLS itself. Each now names its own cause."""
    d, _ = daemon
    unframed = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n{}"
    status, _, body = await _raw(d.http_port, unframed)
    message = orjson.loads(body)["error"]["message"]
    assert status == 400 and "Content-Length" in message and "TLS" not in message, message
    status, _, body = await _raw(d.http_port, MALFORMED["tls_to_plain_port"])
    message = orjson.loads(body)["error"]["message"]
    assert status == 400 and message.startswith("TLS was sent to a plain-HTTP port"), message


async def _answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").strip().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return (
        int(lines[0].split()[1]),
        headers,
        await reader.readexactly(int(headers["content-length"])),
    )


def _use_parser(parser: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemon's HTTP parser for this test: "python", aiohttp's pure-Python one (what runs
    where its C extension is missing), or "c" (skipped where it is not built)."""
    from aiohttp import http_parser, web_protocol

    if parser == "python":
        monkeypatch.setattr(web_protocol, "HttpRequestParser", http_parser.HttpRequestParserPy)
    elif web_protocol.HttpRequestParser is http_parser.HttpRequestParserPy:
        pytest.skip("aiohttp's C parser is not built here")


@pytest.mark.parametrize("parser", ["c", "python"])
@pytest.mark.parametrize(
    "garbage",
    [
        b'"}',
        b"\x00\x01\x02\xff",
        b" ",
        b"\x16\x03\x01\x02\x00",
        b"{}\r\n",
        b"12345",
        b"abc",
        b"ABC",
        b"GETX",
    ],
    ids=["body_rest", "binary", "space", "tls", "body_line", "digits", "word", "capitals", "past"],
)
async def test_garbage_after_a_valid_request_is_answered_and_closed(
    daemon, parser: str, garbage: bytes, monkeypatch
):
    """Bytes on a keep-alive connection, after a request answered, that no request line starts
    with (the rest of a body longer than its Content-Length, say): 400 MALFORMED_HTTP and the
    connection closed at once. aiohttp's Python parser (run where its C extension is missing)
    waited for a line end that never came, and the connection was closed at
    server.idle_timeout_s (75 s) with nothing answered; until session 50's review it still did for
    bytes that are a token but no method the C parser knows (digits, a lower-case word), and until
    session 51 for capitals that begin no method llhttp knows (`ABC`) or run past one (`GETX`)."""
    _use_parser(parser, monkeypatch)
    d, _ = daemon
    reader, writer = await asyncio.open_connection("127.0.0.1", d.http_port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        status, _, _ = await asyncio.wait_for(_answer(reader), 5)
        assert status == 200
        writer.write(garbage)
        status, headers, body = await asyncio.wait_for(_answer(reader), 5)
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed
    finally:
        writer.close()
    assert status == 400
    error = orjson.loads(body)["error"]
    assert error["code"] == "MALFORMED_HTTP" and error["request_id"] == headers["x-request-id"]


@pytest.mark.parametrize("parser", ["c", "python"])
async def test_the_start_of_a_method_waits_for_the_rest(daemon, parser: str, monkeypatch):
    """`GE` may be a request's first bytes: the C parser waits for more, and so must the Python
    one's check (a prefix of a method llhttp knows is not refused)."""
    _use_parser(parser, monkeypatch)
    d, _ = daemon
    reader, writer = await asyncio.open_connection("127.0.0.1", d.http_port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGE")
        status, _, _ = await asyncio.wait_for(_answer(reader), 5)
        assert status == 200
        with pytest.raises(TimeoutError):  # no answer: it waits
            await asyncio.wait_for(reader.read(1), 0.5)
        writer.write(b"T /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        status, _, _ = await asyncio.wait_for(_answer(reader), 5)
    finally:
        writer.close()
    assert status == 200


@pytest.mark.parametrize("parser", ["c", "python"])
async def test_an_unframed_body_naming_https_is_not_taken_for_tls(daemon, parser, monkeypatch):
    """The client's bytes are in the parser's error (the C parser's repr of what it read, the
    Python one's line): "HTTPS" anywhere in them, a callback URL in a body sent unframed, was
    answered "TLS was sent to a plain-HTTP port". Only aiohttp's own TLS verdict says so."""
    _use_parser(parser, monkeypatch)
    d, _ = daemon
    unframed = (
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\r\n"
        b'{"url":"HTTPS://EXAMPLE.COM/"}'
    )
    status, _, body = await _raw(d.http_port, unframed)
    message = orjson.loads(body)["error"]["message"]
    assert status == 400 and "Content-Length" in message and "TLS" not in message, message


@pytest.fixture
async def impatient(tmp_path: Path):
    ali_port = free_port()
    path = tmp_path / "bridge.yaml"
    data = config_dict(
        tmp_path,
        server={"body_timeout_s": 1, "idle_timeout_s": 1.5},
        aliyun={"enabled": True, "port": ali_port},
    )
    path.write_text(yaml.safe_dump(data))
    d = Daemon(load_config(path, env={}))
    await d.start()
    yield d, ali_port
    await d.stop()


STALLED = (
    b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Content-Length: 500\r\n\r\n" + b'{"to": "+86138'  # then nothing more
)


def _signed_stalled(port: int, creds: dict[str, str]) -> bytes:
    """STALLED with signing headers (for the 500 octets it promises, never sent)."""
    headers = {"Host": f"127.0.0.1:{port}", "Content-Type": "application/json",
               "Idempotency-Key": uuid.uuid4().hex}  # fmt: skip
    headers.update(
        signing.sign_request(
            creds["app_key"], creds["app_secret"], "POST", "/v1/messages", "", headers,
            b"x" * 500, datetime.now(UTC), uuid.uuid4().hex,
        )
    )  # fmt: skip
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    head = f"POST /v1/messages HTTP/1.1\r\n{lines}Content-Length: 500\r\n\r\n"
    return head.encode() + b'{"to": "+86138'


@pytest.mark.parametrize("face", ["native", "alibaba"])
async def test_a_body_that_stops_arriving_is_refused_in_time(impatient, face: str) -> None:
    """server.body_timeout_s: headers, then a body that stops coming (a slow client, or one that
    holds connections open on purpose). It held the handler, and its memory, for ever."""
    d, ali_port = impatient
    port = d.http_port if face == "native" else ali_port
    started = asyncio.get_running_loop().time()
    # Headers that pass what is checked before the body (session 36): the native face's
    # signing headers, the Alibaba face's form body (which may carry the signature).
    data = (
        _signed_stalled(port, await harness.create_account(d))
        if face == "native"
        else STALLED.replace(b"/v1/messages", b"/").replace(
            b"application/json", b"application/x-www-form-urlencoded"
        )
    )
    status, headers, body = await asyncio.wait_for(_raw_open(port, data), 10)
    took = asyncio.get_running_loop().time() - started
    assert status == 408
    assert 0.9 <= took < 5, took
    answer = orjson.loads(body)
    if face == "native":
        assert answer["error"]["code"] == "REQUEST_TIMEOUT"
        assert answer["error"]["request_id"] == headers["x-request-id"]
    else:
        assert answer["Code"] == "isv.INVALID_PARAMETERS"
        assert answer["RequestId"] == headers["x-acs-request-id"]


@pytest.mark.parametrize("face", ["native", "alibaba"])
async def test_headers_that_trickle_in_are_cut_off(impatient, face: str) -> None:
    """server.idle_timeout_s: a client sending a header line every 0.3 s never finishes its
    headers, so no request (and no body timeout) ever starts; the connection is closed once the
    time-out passes since it opened, however many bytes keep coming (slowloris)."""
    d, ali_port = impatient
    port = d.http_port if face == "native" else ali_port
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = loop.time()
    closed_after = None
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for i in range(40):
            await asyncio.sleep(0.3)
            if reader.at_eof():
                break
            writer.write(b"X-Trickle-%d: y\r\n" % i)
            await writer.drain()
        closed_after = loop.time() - started
        assert await asyncio.wait_for(reader.read(), 2) == b""  # closed, nothing answered
    except ConnectionError:
        closed_after = loop.time() - started
    finally:
        writer.close()
    assert 1.4 <= closed_after < 5, closed_after


async def test_a_prompt_keep_alive_client_keeps_its_connection(impatient) -> None:
    """The same time-out leaves a client that sends whole requests alone: three requests on one
    connection, each within the time-out of the last answer, are all answered."""
    d, _ = impatient
    reader, writer = await asyncio.open_connection("127.0.0.1", d.http_port)
    try:
        for _ in range(3):
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            await asyncio.sleep(0.8)
    finally:
        writer.close()


async def _raw_open(port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `data` and keep the connection open (the client does not close its side); read one
    answer (headers, then Content-Length octets). It says `Connection: close`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").strip().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
        body = await reader.readexactly(int(headers["content-length"]))
    finally:
        writer.close()
    assert headers["connection"].lower() == "close"
    return int(lines[0].split()[1]), headers, body


def _signed_send(creds: dict[str, str], port: int) -> bytes:
    """A signed POST /v1/messages as raw bytes (the test sends them in pieces)."""
    import uuid
    from datetime import UTC, datetime

    from bridge.api import signing

    body = orjson.dumps({"to": "+8613800138000", "text": "code 123456"})
    headers = {
        "Host": f"127.0.0.1:{port}",
        "Content-Type": "application/json",
        "Idempotency-Key": uuid.uuid4().hex,
    }
    headers.update(
        signing.sign_request(
            creds["app_key"], creds["app_secret"], "POST", "/v1/messages", "", headers, body,
            datetime.now(UTC), uuid.uuid4().hex,
        )
    )  # fmt: skip
    head = "POST /v1/messages HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (head + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


@pytest.mark.parametrize("pieces", [1, 3])
async def test_a_body_in_pieces_within_the_timeout_is_read_whole(impatient, pieces: int) -> None:
    """A body that came with its headers is read without the timer; one still arriving is read
    under it. Both must give the same, whole, body: the signature covers its hash."""
    from tests.e2e.harness import create_account

    d, _ali = impatient
    creds = await create_account(d)
    data = _signed_send(creds, d.http_port)
    head_end = data.index(b"\r\n\r\n") + 4
    reader, writer = await asyncio.open_connection("127.0.0.1", d.http_port)
    try:
        if pieces == 1:
            writer.write(data)
        else:
            body = data[head_end:]
            writer.write(data[:head_end])
            for i in range(pieces):  # 0.2 s apart: 0.4 s in all, under body_timeout_s 1
                await asyncio.sleep(0.2 if i else 0.05)
                writer.write(body[i * len(body) // pieces : (i + 1) * len(body) // pieces])
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status = int(raw.split(b" ", 2)[1])
    answer = orjson.loads(raw.partition(b"\r\n\r\n")[2])
    assert status == 202, answer
    assert answer["messages"][0]["id"].startswith("msg_")


async def test_an_operators_body_is_read_as_sent_and_in_time(impatient) -> None:
    """Admin bodies go through the API's reader too: a compressed one is refused (415, nothing
    decompresses bodies), and one that stops arriving is a 408 within body_timeout_s."""
    from tests.e2e.harness import ADMIN_TOKEN

    d, _ali = impatient
    head = (
        f"POST /admin/accounts HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n"
        "Content-Type: application/json\r\n"
    )
    packed = gzip.compress(b'{"name": "zipped"}')
    data = (
        head
        + f"Content-Encoding: gzip\r\nContent-Length: {len(packed)}\r\nConnection: close\r\n\r\n"
    ).encode()
    status, _headers, body = await asyncio.wait_for(_raw_open(d.http_port, data + packed), 10)
    assert status == 415 and orjson.loads(body)["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE"
    started = asyncio.get_running_loop().time()
    stalled = (head + "Content-Length: 200\r\n\r\n").encode() + b'{"name": '
    status, _headers, body = await asyncio.wait_for(_raw_open(d.http_port, stalled), 10)
    assert status == 408 and orjson.loads(body)["error"]["code"] == "REQUEST_TIMEOUT"
    assert asyncio.get_running_loop().time() - started < 5
    assert [a for a in await d.store.list_accounts() if a.name == "zipped"] == []
