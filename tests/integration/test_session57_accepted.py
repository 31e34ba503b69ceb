"""Session 57: a send's 202 written by `bridge.api.accepted` in one piece is aiohttp's answer,
byte for byte. The API behind the daemon's runner (`http_errors.AppRunner`) on a real port, real
signed requests over raw TCP on keep-alive connections, a real SQLite file: the same requests
answered with the short way off (aiohttp's prepare and write) and on, every answer's bytes
compared (ids and the Date masked). Each test fails on the tree before (no `bridge.api.accepted`:
a send's 202 was a plain `web.Response`). Checked against aiohttp 3.14.3 and 3.14.5.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web

from bridge.api import accepted, http_errors
from bridge.api.app import make_app, render_unparsed
from tests.integration.conftest import ApiServer, Creds, prepare_headers

_IDS = re.compile(rb"(msg|bat|req)_[0-9A-Za-z]+")
_DATE = re.compile(rb"\r\nDate: [^\r]*\r\n")


def _masked(answer: bytes) -> bytes:
    return _DATE.sub(b"\r\nDate: -\r\n", _IDS.sub(rb"\1_-", answer))


async def _read_answer(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head, re.I)
    assert length is not None, head
    return head + await reader.readexactly(int(length.group(1)))


class _Daemon:
    """The API app over `api`'s context behind the daemon's runner on a real port."""

    def __init__(self, api: ApiServer, app: web.Application) -> None:
        self.api = api
        self.runner = http_errors.AppRunner(
            app, render_unparsed, api.ctx.metrics, access_log=None, shutdown_timeout=0.5
        )
        self.port = 0

    async def start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def request(
        self,
        creds: Creds,
        payload: Any,
        *,
        key: str | None = None,
        version: str = "1.1",
        extra: dict[str, str] | None = None,
    ) -> bytes:
        body = json.dumps(payload).encode()
        headers = prepare_headers(
            f"127.0.0.1:{self.port}",
            "POST",
            "/v1/messages",
            "",
            body,
            creds=creds,
            headers=extra,
            content_type="application/json",
            idempotency_key=key or f"idem-{secrets.token_hex(8)}",
            when=self.api.clock.utc(),
            nonce=None,
        )
        headers["Content-Length"] = str(len(body))
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return f"POST /v1/messages HTTP/{version}\r\n{head}\r\n".encode() + body

    async def exchange(self, requests: list[bytes]) -> list[bytes]:
        """The requests one after the other on one connection (a new one after a close)."""
        answers: list[bytes] = []
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            for data in requests:
                writer.write(data)
                answer = await _read_answer(reader)
                answers.append(answer)
                if b"\r\nConnection: close\r\n" in answer or data.split(b"\r\n")[0].endswith(
                    b"HTTP/1.0"
                ):
                    writer.close()
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        finally:
            writer.close()
        return answers


@pytest.fixture
async def daemon(api_server: ApiServer) -> AsyncIterator[_Daemon]:
    served = _Daemon(api_server, make_app(api_server.ctx))
    await served.start()
    yield served
    await served.runner.cleanup()


@pytest.fixture
def prepares(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many answers went through aiohttp's own prepare."""
    calls = [0]
    real = web.StreamResponse.prepare

    async def counted(self: web.StreamResponse, request: web.BaseRequest) -> Any:
        calls[0] += 1
        return await real(self, request)

    monkeypatch.setattr(web.StreamResponse, "prepare", counted)
    return calls


def _text(n: int, text: str = "Your code is 123456.") -> dict[str, Any]:
    return {"to": f"+86138000{n:05d}", "text": text}


def _requests(daemon: _Daemon, creds: Creds) -> list[bytes]:
    """Every kind of send answer on keep-alive connections: 202s (one-part GSM, UCS-2, long,
    many numbers: a body over 2 KB), a replay, refusals; a 202 to HTTP/1.0 and to a request
    asking for the connection's close last."""
    base = 0
    reused = "idem-reused"
    many = {"to": [f"+86138001{base + i:05d}" for i in range(30)], "text": "Hi there."}
    return [
        daemon.request(creds, _text(base + 1)),
        daemon.request(creds, _text(base + 2, "您的验证码是123456")),
        daemon.request(creds, _text(base + 3, "long text " * 40)),
        daemon.request(creds, many),
        daemon.request(creds, _text(base + 4), key=reused),
        daemon.request(creds, _text(base + 4), key=reused),  # the replay of the one before
        daemon.request(creds, _text(base + 5), key=reused),  # the key reused: 422
        daemon.request(creds, {"to": "not a number", "text": "x"}),
        daemon.request(creds, _text(base + 6)),
        daemon.request(creds, _text(base + 7), version="1.0"),
        daemon.request(creds, _text(base + 8), extra={"Connection": "close"}),
        daemon.request(creds, _text(base + 9), extra={"Connection": "keep-alive"}, version="1.0"),
        daemon.request(creds, _text(base + 10)),
    ]


async def _both_ways(
    daemon: _Daemon, monkeypatch: pytest.MonkeyPatch, prepares: list[int]
) -> tuple[list[bytes], list[bytes], int]:
    """The same kinds of requests answered the plain way, then with the short way on (from
    its first check): both answers' lists, and how many went through aiohttp's prepare then."""
    monkeypatch.setattr(accepted, "_checked", False)
    plain = await daemon.exchange(_requests(daemon, await daemon.api.create_account("one")))
    monkeypatch.setattr(accepted, "_checked", None)
    prepares[0] = 0
    short = await daemon.exchange(_requests(daemon, await daemon.api.create_account("two")))
    return plain, short, prepares[0]


async def test_a_sends_202_is_aiohttps_answer_byte_for_byte(
    daemon: _Daemon, monkeypatch: pytest.MonkeyPatch, prepares: list[int]
) -> None:
    plain, short, through_aiohttp = await _both_ways(daemon, monkeypatch, prepares)
    assert [a.split(b" ", 2)[1] for a in plain] == [
        b"202", b"202", b"202", b"202", b"202", b"202", b"422", b"400",
        b"202", b"202", b"202", b"202", b"202",
    ]  # fmt: skip
    assert [_masked(a) for a in short] == [_masked(a) for a in plain]
    assert accepted._checked is True
    # The first 202 checked aiohttp's head; the replay, the two refusals, the 202s to HTTP/1.0
    # and to `Connection: close` went aiohttp's way; the other seven 202s the short way.
    assert through_aiohttp == 1 + 3 + 3
    assert b"\r\nConnection: close\r\n" in short[10]
    assert b"\r\nConnection: keep-alive\r\n" in short[11]


async def test_another_head_leaves_aiohttps_way(
    daemon: _Daemon, monkeypatch: pytest.MonkeyPatch, prepares: list[int]
) -> None:
    """An aiohttp whose head differs from the one `_head` makes (here: `_head` changed) is
    found at the first 202, and every answer after it goes aiohttp's way."""
    real = accepted._head

    def other(*args: Any) -> bytes:
        return real(*args).replace(b"Server:", b"Servr:")

    monkeypatch.setattr(accepted, "_head", other)
    plain, short, through_aiohttp = await _both_ways(daemon, monkeypatch, prepares)
    assert accepted._checked is False
    assert through_aiohttp == len(short)
    assert [_masked(a) for a in short] == [_masked(a) for a in plain]
    assert all(b"Servr:" not in a for a in short)


async def test_a_receiver_of_on_response_prepare_sees_every_202(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver of the signal (none in the daemon) is called for each 202 and what it adds
    is sent: those 202s go aiohttp's way."""
    app = make_app(api_server.ctx)

    async def mark(request: web.Request, resp: web.StreamResponse) -> None:
        resp.headers["X-Seen"] = "1"

    app.on_response_prepare.append(mark)
    served = _Daemon(api_server, app)
    await served.start()
    try:
        monkeypatch.setattr(accepted, "_checked", True)
        creds = await api_server.create_account()
        answers = await served.exchange([served.request(creds, _text(n)) for n in range(3)])
    finally:
        await served.runner.cleanup()
    assert all(a.startswith(b"HTTP/1.1 202 Accepted\r\n") for a in answers)
    assert all(b"\r\nX-Seen: 1\r\n" in a for a in answers)


def _state(resp: web.Response) -> dict[str, Any]:
    out = dict(vars(resp))
    out["_headers"] = list(out["_headers"].items())
    return out


def test_an_accepted_is_built_as_aiohttps_response() -> None:
    """`Accepted(body)` leaves what `web.Response(body=..., status=202, content_type=...)` does
    (aiohttp's __init__ is not called for it: its state is set directly)."""
    assert accepted._INIT is not None  # aiohttp 3.14: the state was as expected
    body = b'{"batch_id": "bat_1"}'
    made = accepted.Accepted(body)
    assert _state(made) == _state(
        web.Response(body=body, status=202, content_type="application/json")
    )
    assert made.headers is not accepted.Accepted(body).headers  # each its own
    assert made.status == 202 and made.body == body and made.content_type == "application/json"


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.force_close(),
        lambda r: r.enable_chunked_encoding(),
        lambda r: r.enable_compression(),
        lambda r: r.set_cookie("a", "b"),
        lambda r: r.set_status(201),
        lambda r: r.headers.add("X-More", "1"),
        lambda r: r.headers.popall("X-Request-Id"),
        lambda r: r.headers.__setitem__("X-Request-Id", "req_1\x01"),
        lambda r: r.headers.__setitem__("Content-Type", "text/plain"),
    ],
)
async def test_what_the_short_way_does_not_serve_goes_aiohttps_way(
    change: Callable[[web.Response], Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any change to the answer the short way does not know of: `_request_id` says None."""
    from aiohttp.test_utils import make_mocked_request

    app = web.Application()

    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_post("/v1/messages", handler)
    app.freeze()
    request = make_mocked_request("POST", "/v1/messages", app=app)
    request._match_info = await app.router.resolve(request)  # type: ignore[assignment]
    request._match_info.add_app(app)
    resp = accepted.Accepted(b"{}")
    resp.headers["X-Request-Id"] = "req_0123456789abcdef"
    assert resp._request_id(request) == "req_0123456789abcdef"
    change(resp)
    assert resp._request_id(request) is None


# -- the body stream's resume_reading (http_errors._Handler._resume_reading) ----------------------


@pytest.fixture
def empty_feeds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many times aiohttp's protocol was fed b"" (what resume_reading did on every read)."""
    from aiohttp.web_protocol import RequestHandler

    feeds = [0]
    real = RequestHandler.data_received

    def counted(self: RequestHandler, data: bytes) -> None:
        feeds[0] += not data
        real(self, data)

    monkeypatch.setattr(RequestHandler, "data_received", counted)
    return feeds


@pytest.mark.skipif(
    http_errors._Handler.resume_reading is not http_errors._Handler._resume_reading,
    reason="an aiohttp without the protocol flags _resume_reading reads (3.14.3 has no "
    "_buffer_paused): aiohttp's resume_reading as it is",
)
async def test_a_send_read_unpaused_feeds_the_parser_nothing(
    daemon: _Daemon, empty_feeds: list[int]
) -> None:
    creds = await daemon.api.create_account()
    answers = await daemon.exchange([daemon.request(creds, _text(n)) for n in range(5)])
    assert all(a.startswith(b"HTTP/1.1 202 ") for a in answers)
    assert empty_feeds[0] == 0  # aiohttp 3.14 fed b"" once a send


async def test_pipelined_sends_past_the_queue_and_large_bodies_are_all_answered(
    daemon: _Daemon, empty_feeds: list[int]
) -> None:
    """Past aiohttp's queue of 32 pipelined requests (the transport paused, the parser holding
    the rest) and bodies over the stream's high water (paused by the stream, 128 KiB): every
    request answered, in order, as without the change; the pauses still resume through
    aiohttp's resume_reading."""
    creds = await daemon.api.create_account()
    many = [daemon.request(creds, _text(n)) for n in range(80)]
    big = {"to": "+8613800099999", "text": "x", "client_ref": "r", "pad": "y" * 300_000}
    many.insert(40, daemon.request(creds, big))  # refused for its unknown field, once read
    reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
    try:
        writer.write(b"".join(many))
        answers = [await asyncio.wait_for(_read_answer(reader), 30) for _ in many]
    finally:
        writer.close()
    statuses = [a.split(b" ", 2)[1] for a in answers]
    assert statuses == [b"202"] * 40 + [b"400"] + [b"202"] * 40
    tos = [
        json.loads(a.split(b"\r\n\r\n", 1)[1])["messages"][0]["to"]
        for a in answers
        if a.startswith(b"HTTP/1.1 202 ")
    ]
    assert tos == [f"+86138000{n:05d}" for n in range(80)]
    assert empty_feeds[0] > 0  # the paused reads resumed aiohttp's way
