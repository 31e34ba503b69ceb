"""Session 58: a request whose method and target resolved before to a route without variables
skips aiohttp's router (`bridge.api.route_cache`), and its `web.Request` is built without its
`__init__` (`bridge.api.request_maker`). The API behind the daemon's runner on a real
port, real signed requests over raw TCP, a real SQLite file: the same requests answered through
`app._handle` (the server's handler before) and through the cache, byte for byte (ids and Date
masked), the same counts. The first two tests fail on the tree before (every send was resolved,
every request made by `Request.__init__`).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.web_urldispatcher import UrlDispatcher, UrlMappingMatchInfo

from bridge.api import request_maker, route_cache
from bridge.api.app import make_app
from tests.integration.conftest import ApiServer, ServedApi
from tests.integration.test_session57_review_r4 import (
    _answer,
    _counts,
    _exchanges,
    _masked,
)


@pytest.fixture
def resolves(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The targets aiohttp's router resolved."""
    seen: list[str] = []
    real = UrlDispatcher.resolve

    async def counted(self: UrlDispatcher, request: web.Request) -> Any:
        seen.append(request.raw_path)
        return await real(self, request)

    monkeypatch.setattr(UrlDispatcher, "resolve", counted)
    return seen


async def test_a_learned_target_skips_the_router(daemon: ServedApi, resolves: list[str]) -> None:
    creds = await daemon.api.create_account()
    reader, writer = await daemon.connect()
    try:
        for n in range(3):
            writer.write(daemon.request(creds, n))
            assert (await _answer(reader)).startswith(b"HTTP/1.1 202 ")
    finally:
        writer.close()
    assert resolves == ["/v1/messages"]  # the first only


async def test_a_request_is_built_without_its_init(
    daemon: ServedApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the first request, whose state is compared with aiohttp's, a send's request is not
    made by `BaseRequest.__init__`; an absolute-form target's still is."""
    made: list[str] = []
    real = web.BaseRequest.__init__

    def counted(self: web.BaseRequest, message: Any, *a: Any, **kw: Any) -> None:
        made.append(message.path)
        real(self, message, *a, **kw)

    monkeypatch.setattr(web.BaseRequest, "__init__", counted)
    creds = await daemon.api.create_account()
    reader, writer = await daemon.connect()
    try:
        for n in range(3):
            writer.write(daemon.request(creds, n))
            assert (await _answer(reader)).startswith(b"HTTP/1.1 202 ")
        writer.write(b"GET http://x/healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await _answer(reader)).startswith(b"HTTP/1.1 200 ")
    finally:
        writer.close()
    assert made == ["/v1/messages", "http://x/healthz"]
    server = daemon.runner.server
    assert server is not None
    assert server.request_factory.__self__._checked is True  # type: ignore[attr-defined]


def _others() -> list[bytes]:
    """Requests besides sends: each twice (the second of a learned target takes the cache)."""
    host = b"Host: x\r\n"
    one = [
        b"GET /healthz HTTP/1.1\r\n" + host + b"\r\n",
        b"GET /health%7a HTTP/1.1\r\n" + host + b"\r\n",  # the same route, another target
        b"GET /healthz?x=1 HTTP/1.1\r\n" + host + b"\r\n",  # a query: never learned
        b"HEAD /healthz HTTP/1.1\r\n" + host + b"\r\n",
        b"DELETE /healthz HTTP/1.1\r\n" + host + b"\r\n",  # 405
        b"GET /no/such/route HTTP/1.1\r\n" + host + b"\r\n",  # 404
        b"GET /v1/messages/msg_x HTTP/1.1\r\n" + host + b"\r\n",  # a route with a variable
        b"POST /v1/messages HTTP/1.1\r\n" + host + b"Content-Length: 2\r\n\r\n{}",  # unsigned
        b"POST /v1/messages HTTP/1.1\r\n" + host + b"Expect: 100-continue\r\n"
        b"Content-Length: 2\r\n\r\n{}",
        b"GET /healthz HTTP/1.1\r\n" + host + b"Expect: 100-continue\r\n\r\n",
        b"GET http://x/healthz HTTP/1.1\r\n" + host + b"\r\n",  # absolute-form
    ]
    return [r for r in one for _ in range(2)]


async def _all(daemon: ServedApi) -> tuple[list[bytes], dict[str, int]]:
    before = _counts(daemon)
    creds = await daemon.api.create_account()
    out = [_masked(a) for a in await _exchanges(daemon, creds)]
    for request in _others():
        reader, writer = await daemon.connect()
        try:
            writer.write(request)
            if request.startswith(b"HEAD "):
                out.append(_masked(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)))
            else:
                out.append(_masked(await _answer(reader)))
        finally:
            writer.close()
    after = _counts(daemon)
    return out, {k: after[k] - before.get(k, 0) for k in after}


async def test_the_cache_answers_as_the_applications_handle(daemon: ServedApi) -> None:
    server = daemon.runner.server
    assert server is not None
    cache, maker = server.request_handler, server.request_factory
    assert getattr(cache, "__self__", None).__class__ is route_cache.RouteCache
    assert getattr(maker, "__self__", None).__class__ is request_maker.RequestMaker
    app: Any = daemon.runner.app
    # new connections: the application's own way
    server.request_handler, server.request_factory = app._handle, app._make_request
    plain, plain_counts = await _all(daemon)
    server.request_handler, server.request_factory = cache, maker
    cached, cached_counts = await _all(daemon)
    learned = cache.__self__._learned  # type: ignore[attr-defined]
    assert cached == plain
    assert cached_counts == plain_counts
    assert set(learned) == {
        ("POST", "/v1/messages"),
        ("GET", "/healthz"),
        ("GET", "/health%7a"),
        ("HEAD", "/healthz"),
    }
    statuses = [a.split(b" ", 2)[1] for a in plain[14:]]
    assert statuses == [
        *[b"200"] * 8, *[b"405"] * 2, *[b"404"] * 2, *[b"401"] * 6, *[b"200"] * 4
    ]  # fmt: skip


async def test_learned_targets_are_bounded(daemon: ServedApi) -> None:
    """The same route under 70 targets (its letters percent-encoded or not): the cache holds at
    most LEARNED of them, and every one is answered."""
    server = daemon.runner.server
    assert server is not None
    learned = server.request_handler.__self__._learned  # type: ignore[attr-defined]
    word = "healthz"
    targets = [
        "/" + "".join(f"%{ord(c):02x}" if bits >> i & 1 else c for i, c in enumerate(word))
        for bits in range(70)
    ]
    reader, writer = await daemon.connect()
    try:
        for target in targets:
            writer.write(f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert (await _answer(reader)).startswith(b"HTTP/1.1 200 ")
            assert len(learned) <= route_cache.LEARNED
    finally:
        writer.close()
    assert len(learned) == 70 - route_cache.LEARNED


async def test_installed_only_as_written_against(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    app: Any = make_app(api_server.ctx)
    app.freeze()
    server = web.Server(app._handle)
    assert route_cache.route_cache(app, server) is not None
    route = next(r for r in app.router.routes() if isinstance(r, web.ResourceRoute))
    assert route_cache._fast_match_ok(route, app)
    info = route_cache._match_info(route, app)
    assert type(info) is UrlMappingMatchInfo and info.route is route and info.apps == (app,)
    with_sub: Any = web.Application()
    with_sub.add_subapp("/sub", web.Application())
    with_sub.freeze()
    assert route_cache.route_cache(with_sub, web.Server(with_sub._handle)) is None
    assert route_cache.route_cache(app, web.Server(lambda r: app._handle(r))) is None
    unfrozen: Any = web.Application()
    assert route_cache.route_cache(unfrozen, web.Server(unfrozen._handle)) is None
    monkeypatch.setattr(route_cache, "_KNOWN_HANDLE", frozenset())
    assert route_cache.route_cache(app, server) is None
