"""Session 58 review (r2) of the route cache and the request maker (`bridge.api.route_cache`,
`bridge.api.request_maker`): requests an attacker or a proxy may send, each on its own
connection and pipelined, answered alike with both off (the server's handler and factory
before the merge: `app._handle`, `app._make_request`) and on, byte for byte (ids and Date
masked), with the same counts and the same log lines."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from typing import Any

import pytest
from aiohttp import web
from aiohttp.web_urldispatcher import PlainResource, UrlDispatcher

from bridge.api import http_errors, route_cache
from bridge.api.app import render_unparsed
from tests.integration.conftest import ADMIN_TOKEN, ServedApi
from tests.integration.test_session57_review_r4 import _counts, _masked

_TARGETS = [
    "/healthz", "/healthz/", "//healthz", "/HEALTHZ", "/./healthz", "/x/../healthz",
    "/healthz#frag", "/healthz?", "/healthz%3F", "/%68ealthz", "/healthz%2f", "/healthz;x",
    "/health%7A", "/%2Fhealthz", "/healthz%00", "/openapi.json", "/readyz",
    "/admin/accounts", "/admin/accounts/", "//admin/accounts", "/admin/%61ccounts",
    "/admin/smscs", "/v1/account", "/v1/messages", "/v1/preview", "/v1/messages/", "/v1//messages",
    "/" + "a" * 300, "/healthz" + "%20" * 100, "/\u00e9", "*",
    "http://x/healthz", "http://evil/admin/accounts", "//evil/healthz",
]  # fmt: skip
_METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]


def _requests() -> list[bytes]:
    out: list[bytes] = []
    for target in _TARGETS:
        for method in _METHODS:
            for auth in ("", f"Authorization: Bearer {ADMIN_TOKEN}\r\n"):
                body = b"{}" if method in ("POST", "PUT", "PATCH") else b""
                length = f"Content-Length: {len(body)}\r\n" if body else ""
                head = f"{method} {target} HTTP/1.1\r\nHost: x\r\n{auth}{length}\r\n"
                out.append(head.encode("utf-8", "surrogateescape") + body)
    for extra in ("Expect: 100-continue\r\n", "Expect: \r\n", "Expect: nope\r\n",
                  "Content-Encoding: gzip\r\n", "Content-Length: 99999999\r\n",
                  "Transfer-Encoding: chunked\r\n", "X-Forwarded-For: 10.0.0.1\r\n"):  # fmt: skip
        for target in ("/healthz", "/v1/messages", "/admin/accounts"):
            out.append(f"POST {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
            out.append(f"GET {target} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
    # What the parser refuses (431, 400): answered by the connection's error handler, whose
    # request the factory makes too.
    out += [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-H: 1\r\n" * 200 + b"\r\n",
        b"GET /healthz HTTP/1.1\r\nBad Header: x\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ]
    return out


async def _read(reader: asyncio.StreamReader, head_only: bool) -> bytes:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
        return f"<{type(exc).__name__}>".encode()
    if head.startswith(b"HTTP/1.1 100 "):
        return head + await _read(reader, head_only)
    length = re.search(rb"\r\nContent-Length: (\d+)\r\n", head, re.I)
    if head_only or length is None:
        return head
    return head + await asyncio.wait_for(reader.readexactly(int(length.group(1))), 5)


async def _one_by_one(daemon: ServedApi, requests: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    for request in requests:
        for _ in range(2):  # the second of a learned target takes the cache
            reader, writer = await daemon.connect()
            try:
                writer.write(request)
                out.append(_masked(await _read(reader, request.startswith(b"HEAD "))))
            finally:
                writer.close()
    return out


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    masked = re.compile(r"(req|msg)_[0-9a-f]+|remote=\S+|\d+\.\d+ ms")
    out = []
    for r in caplog.records:
        extra = {k: v for k, v in vars(r).items() if k in ("path", "status", "code", "method")}
        out.append(masked.sub("-", f"{r.name} {r.levelname} {r.getMessage()} {extra}"))
    return out


async def test_attackers_targets_answered_as_before(
    daemon: ServedApi, caplog: pytest.LogCaptureFixture
) -> None:
    """~1,050 requests (35 targets: spellings of one path, `//`, a trailing slash, case, a
    fragment, `*`, absolute-form; 7 methods; with and without the admin token; Expect, a body
    too large, an encoding, what the parser refuses), each twice on new connections, then
    twice pipelined: the same answers, counts and log lines with the cache and maker off and
    on (the second of each learned target took the cache)."""
    server = daemon.runner.server
    assert server is not None
    app: Any = daemon.runner.app
    cache, maker = server.request_handler, server.request_factory
    requests = _requests()
    runs = []
    caplog.set_level(logging.DEBUG, logger="bridge")
    for handler, factory in ((app._handle, app._make_request), (cache, maker)):
        server.request_handler, server.request_factory = handler, factory
        caplog.clear()
        before = _counts(daemon)
        answers = await _one_by_one(daemon, requests) + await _pipelined(daemon, requests)
        after = _counts(daemon)
        runs.append((answers, {k: after[k] - before.get(k, 0) for k in after}, _lines(caplog)))
    (plain, plain_counts, plain_log), (cached, cached_counts, cached_log) = runs
    diffs = [(i, a, b) for i, (a, b) in enumerate(zip(plain, cached, strict=True)) if a != b]
    assert diffs == []
    assert cached_counts == plain_counts
    assert cached_log == plain_log
    assert cache.__self__._learned  # type: ignore[attr-defined]


async def _pipelined(daemon: ServedApi, requests: list[bytes]) -> list[bytes]:
    """Each request twice, back to back on one connection, then the next (a refusal that closes
    the connection leaves the second unanswered: said so).

    A request that declares more body than it carries (`Content-Length: 99999999`) has its
    second copy read as that body: whatever answers the first, the second is never answered
    and its read waits out its 5 s. Where the first answer keeps the connection open, that
    wait goes on beside the next requests, not before them (the server parses nothing more on
    that connection, and logs nothing at its close): it was 4 x 5 s of the attackers test's
    27 s in CI. The answer, or the time-out, goes to its place in the list as before; the
    answers, counts and log lines of the whole list came out equal to the old way's (two runs
    each, alternating)."""
    out: list[bytes] = []
    waits: list[tuple[int, asyncio.Task[bytes]]] = []
    try:
        for request in requests:
            reader, writer = await daemon.connect()
            head_only = request.startswith(b"HEAD ")
            handed_on = False
            try:
                writer.write(request * 2)
                first = await _read(reader, head_only)
                out.append(_masked(first))
                if _swallows_its_copy(request) and _keeps_alive(first):
                    out.append(b"")  # its place
                    task = asyncio.create_task(_last_read(reader, writer, head_only))
                    waits.append((len(out) - 1, task))
                    handed_on = True  # _last_read closes it
                else:
                    out.append(_masked(await _read(reader, head_only)))
            finally:
                if not handed_on:
                    writer.close()
        for i, task in waits:
            out[i] = _masked(await task)
    finally:
        for _, task in waits:
            task.cancel()
    return out


def _swallows_its_copy(request: bytes) -> bool:
    """Its Content-Length exceeds the body it carries: a copy sent after it is read as body."""
    head, _, body = request.partition(b"\r\n\r\n")
    length = re.search(rb"\r\nContent-Length: (\d+)", head, re.I)
    return length is not None and int(length.group(1)) > len(body)


def _keeps_alive(answer: bytes) -> bool:
    """An HTTP/1.1 answer without `Connection: close`: the server goes on reading the
    connection (a refusal that closes it ends the second read at once, and logs its answer
    only then: read in turn, as before)."""
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    return head.startswith(b"http/1.1 ") and b"\r\nconnection: close" not in head


async def _last_read(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head_only: bool
) -> bytes:
    try:
        return await _read(reader, head_only)
    finally:
        writer.close()


async def test_dump_for_the_tree_differential(
    daemon: ServedApi, caplog: pytest.LogCaptureFixture
) -> None:
    """With R2_DUMP set: the answers, counts and log lines of this tree, as installed, into
    that file (run in the pre-merge tree and in this one: the files must be equal)."""
    path = os.environ.get("R2_DUMP")
    if not path:
        pytest.skip("R2_DUMP not set")
    caplog.set_level(logging.DEBUG, logger="bridge")
    requests = _requests()
    before = _counts(daemon)
    answers = await _one_by_one(daemon, requests) + await _pipelined(daemon, requests)
    after = _counts(daemon)
    counts = {k: after[k] - before.get(k, 0) for k in after}
    with open(path, "w") as f:
        json.dump(
            {
                "answers": [a.decode("utf-8", "replace") for a in answers],
                "counts": counts,
                "log": _lines(caplog),
            },
            f,
            indent=0,
        )


async def test_a_router_fault_is_logged_as_itself(
    daemon: ServedApi, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The router raising (no route resolved: `request.match_info` is unset) is answered and
    logged as before the cache: a 500 whose line carries the router's exception. The cache
    learned in a `finally` through the `match_info` property, whose assert raised over it: the
    line named an AssertionError in route_cache (fails on the merged tree)."""

    async def broken(self: UrlDispatcher, request: web.Request) -> Any:
        raise RuntimeError("router fault")

    monkeypatch.setattr(UrlDispatcher, "resolve", broken)
    caplog.set_level(logging.ERROR, logger="bridge.api")
    server = daemon.runner.server
    assert server is not None
    app: Any = daemon.runner.app
    cache = server.request_handler
    answers, faults = [], []
    for handler in (app._handle, cache):
        server.request_handler = handler
        caplog.clear()
        reader, writer = await daemon.connect()
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answers.append(_masked(await _read(reader, False)))
        finally:
            writer.close()
        faults.append([r.exc_info[0] if r.exc_info else None for r in caplog.records])
    assert answers[0].startswith(b"HTTP/1.1 500 ")
    assert answers[1] == answers[0]
    assert faults == [[RuntimeError], [RuntimeError]]


async def _host_routed_app() -> web.Application:
    """An application whose one resource answers only requests naming Host `good`: its match is
    not a function of the method and target alone (a resource of its own, not aiohttp's)."""

    class HostResource(PlainResource):
        async def resolve(self, request: web.Request) -> Any:
            if request.headers.get("Host") != "good":
                return None, set()
            return await super().resolve(request)

    app = web.Application()
    resource = HostResource("/y")
    app.router.register_resource(resource)
    resource.add_route("GET", _ok)
    return app


async def _ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def test_a_resource_of_its_own_keeps_the_router() -> None:
    """Not installed over a resource (or router) that is not aiohttp's own, whose match may read
    more than the method and target (here the Host header): the cache answered a request for
    another host with the route a `good` one had resolved, 200 for a 404 (fails on the merged
    tree)."""
    runner = http_errors.AppRunner(await _host_routed_app(), render_unparsed, None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    statuses = []
    try:
        for host in ("good", "good", "evil"):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            try:
                writer.write(f"GET /y HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                statuses.append((await _read(reader, False)).split(b" ", 2)[1])
            finally:
                writer.close()
    finally:
        await runner.cleanup()
    assert statuses == [b"200", b"200", b"404"]
    app: Any = web.Application()
    app.router.add_get("/y", _ok)
    app.freeze()
    assert route_cache.route_cache(app, web.Server(app._handle)) is not None  # aiohttp's own
    host_routed: Any = await _host_routed_app()
    host_routed.freeze()
    assert route_cache.route_cache(host_routed, web.Server(host_routed._handle)) is None
