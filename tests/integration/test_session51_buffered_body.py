"""Session 51: a body the parser has fed whole is taken from the stream's buffer in one call
(bodies.buffered_body) instead of aiohttp's read() loop. What read() kept must still hold: the
bytes as sent, a later `request.read()` answering the same bytes (read() caches them; a buffer
once drained is empty), and a body over the app's client_max_size refused 413. Over a real
socket, against a real aiohttp server.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bridge.api.bodies import read_body


@pytest.fixture
async def server() -> AsyncIterator[int]:
    async def echo(request: web.Request) -> web.Response:
        first = await read_body(request, 5.0)
        again = await request.read()  # after read_body, as any later reader would
        return web.json_response(
            {"whole": request.content.is_eof(), "first": first.decode(), "again": again.decode()}
        )

    async def twice(request: web.Request) -> web.Response:
        # A body read before (by read(), or read_body itself) is answered again, as read()
        # answers it: the stream's buffer, drained by then, gave b"" (and cached it).
        before = await request.read() if "X-Read-First" in request.headers else None
        first = await read_body(request, 5.0)
        again = await read_body(request, 5.0)
        return web.json_response(
            {"before": before and before.decode(), "first": first.decode(), "again": again.decode()}
        )

    app = web.Application(client_max_size=64)
    app.router.add_post("/echo", echo)
    app.router.add_post("/twice", twice)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def _post(
    port: int, body: bytes, path: str = "/echo", head: bytes = b""
) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
            + head
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        async with asyncio.timeout(10):
            raw = await reader.read()
    finally:
        writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), payload


async def test_a_body_read_whole_is_read_again_by_request_read(server: int) -> None:
    body = b'{"to": "+8613800138000", "text": "hi"}'
    status, payload = await _post(server, body)
    assert status == 200
    answer = json.loads(payload)
    assert answer == {"whole": True, "first": body.decode(), "again": body.decode()}


async def test_a_body_at_the_limit_passes_and_one_byte_over_it_is_413(server: int) -> None:
    status, payload = await _post(server, b"x" * 64)
    assert status == 200 and json.loads(payload)["first"] == "x" * 64
    status, _ = await _post(server, b"x" * 65)
    assert status == 413


async def test_a_body_read_before_is_answered_again_not_as_empty(server: int) -> None:
    body = b'{"to": "+8613800138000", "text": "twice"}'
    status, payload = await _post(server, body, "/twice")
    assert status == 200
    assert json.loads(payload) == {"before": None, "first": body.decode(), "again": body.decode()}
    status, payload = await _post(server, body, "/twice", b"X-Read-First: 1\r\n")
    assert status == 200
    assert json.loads(payload) == {k: body.decode() for k in ("before", "first", "again")}
