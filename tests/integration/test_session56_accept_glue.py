"""Session 56: the accept's glue around its steps. The middlewares read the app's context from
their closure (made by `make_app`), not through `request.app[CTX]` on every request; a send
reads it once, in its handler; a send skips the path and idempotency checks that cannot apply
to it; the metrics label is kept per route. A real server on a real SQLite file, real signed
requests.

The first two tests fail on the tree before (a send read the context three times, each
middleware and the handler, and asked idempotency.applies); so do the last two (aiohttp's
`current_app` middleware ran on every request); the label's holds what must not change."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from bridge.api import app as api_app
from bridge.api import http_errors, idempotency
from bridge.api.context import CTX
from tests.integration.conftest import ApiServer


@pytest.fixture
def ctx_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many times the app's context was looked up (`app[CTX]`)."""
    reads = [0]
    real = web.Application.__getitem__

    def counted(self: web.Application, key: Any) -> Any:
        if key is CTX:
            reads[0] += 1
        return real(self, key)

    monkeypatch.setattr(web.Application, "__getitem__", counted)
    yield reads


def _exposition(api_server: ApiServer) -> str:
    out = api_server.ctx.metrics.exposition()
    return out.decode() if isinstance(out, bytes) else str(out)


def _text(n: int) -> dict[str, str]:
    return {"to": f"+86138000{n:05d}", "text": "Your code is 123456."}


async def test_a_send_looks_the_app_context_up_once(
    api_server: ApiServer, ctx_reads: list[int]
) -> None:
    creds = await api_server.create_account()
    assert (await api_server.send(creds, _text(1))).status == 202
    ctx_reads[0] = 0
    r = await api_server.send(creds, _text(2))
    assert r.status == 202, r.text
    assert ctx_reads[0] == 0  # the middlewares and the send's handler have it from make_app


async def test_a_send_is_not_run_once_by_the_middleware(
    api_server: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A send's path is one `idempotency.applies` refuses (it keeps its own record): skipping
    the call changes nothing; other writes under /v1/ still go through it."""
    asked: list[str] = []
    real = idempotency.applies

    def counted(request: web.Request) -> bool:
        asked.append(request.path)
        return real(request)

    monkeypatch.setattr(idempotency, "applies", counted)
    creds = await api_server.create_account()
    assert (await api_server.send(creds, _text(1))).status == 202
    assert "/v1/messages" not in asked


async def test_the_metrics_label_is_the_route_method_and_template(api_server: ApiServer) -> None:
    """The label kept per route is the one computed on every answer before: for each route of
    the app, a request of it is labelled "METHOD /template"; an unmatched one "unmatched", and
    no unmatched route is kept."""
    creds = await api_server.create_account()
    assert (await api_server.send(creds, _text(1))).status == 202
    assert (await api_server.send(creds, _text(2))).status == 202
    text = _exposition(api_server)
    assert 'endpoint="POST /v1/messages"' in text
    r = await api_server.request("GET", "/no/such/route", validate=False)
    assert r.status == 404
    r = await api_server.request("DELETE", "/healthz", validate=False)
    assert r.status == 405
    text = _exposition(api_server)
    assert 'endpoint="unmatched"' in text
    for route, label in api_app._LABELS.items():
        assert route.resource is not None
        assert label == f"{route.method} {route.resource.canonical}"


def _render(status: int, code: str, message: str) -> tuple[int, bytes, str, str, str]:
    return status, b"{}", "application/json", "req_x", code


async def _serve(app: web.Application, path: str) -> tuple[int, str]:
    """`app` behind the daemon's runner (http_errors.AppRunner) on a real port: GET `path`."""
    runner = http_errors.AppRunner(app, _render, None, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}{path}") as r:
            return r.status, await r.text()
    finally:
        await runner.cleanup()


def _chain(app: web.Application) -> list[str]:
    return [m.__qualname__ for m, _ in app._middlewares_handlers]


async def test_the_runner_drops_aiohttps_current_app_middleware() -> None:
    """With no sub-application, `current_app` is the application anyway: the handler and the
    middlewares see it, and the chain runs our middlewares alone."""
    seen: list[object] = []

    @web.middleware
    async def ours(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append(request.app)
        return await handler(request)

    async def hello(request: web.Request) -> web.Response:
        seen.append(request.app)
        seen.append(request.match_info.current_app)
        return web.Response(text="hi")

    app = web.Application(middlewares=[ours])
    app.router.add_get("/", hello)
    assert await _serve(app, "/") == (200, "hi")
    assert seen == [app, app, app]
    assert _chain(app) == ["test_the_runner_drops_aiohttps_current_app_middleware.<locals>.ours"]


async def test_an_application_with_sub_applications_keeps_it() -> None:
    @web.middleware
    async def ours(request: web.Request, handler: Any) -> web.StreamResponse:
        return await handler(request)

    sub = web.Application()

    async def inner(request: web.Request) -> web.Response:
        return web.Response(text="sub" if request.match_info.current_app is sub else "top")

    sub.router.add_get("/x", inner)
    app = web.Application(middlewares=[ours])
    app.add_subapp("/s", sub)
    assert await _serve(app, "/s/x") == (200, "sub")
    assert _chain(app)[-1] == http_errors._CURRENT_APP_FIX
