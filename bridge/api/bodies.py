"""Reading a request's body: as sent, in time, or a clear refusal.

Every body the API reads comes through here (both faces, admin included): the signature covers
the bytes as the client sent them, so nothing is decompressed, and a client that stalls or hangs
up mid-body gets its own answer instead of holding a handler or passing for a store outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect

from aiohttp import HttpVersion11, web
from aiohttp.helpers import BaseTimerContext, TimerNoop
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestPayloadError

from bridge.api.context import CONTINUE, CTX
from bridge.api.errors import ApiError
from bridge.api.http_errors import BODY_FRAMING
from bridge.api.plain_request import PLAIN_REQUEST


async def read_body(request: web.Request, timeout_s: float) -> bytes:
    """The body as the client sent it (the bytes its signature covers), within `timeout_s` of
    the headers: a client that sends its headers and then trickles or stops (by fault or as an
    attack) held the handler and its memory for ever.

    A body that came whole with its headers (nearly every send) is read without the timer:
    `asyncio.timeout` was ~10 µs of each ~300 µs accept, for a read that cannot wait. A client
    that hangs up before its body is whole is its own refusal, CLIENT_DISCONNECTED: the reset
    surfaced as ConnectionResetError, which the error handler took for the store's connection
    (503 STORE_UNAVAILABLE, logged at ERROR: a store-outage alert for every such client)."""
    refuse_encoding(request)
    return await read_sent_body(request, timeout_s)


async def read_sent_body(request: web.Request, timeout_s: float) -> bytes:
    """read_body, its Content-Encoding already checked (refuse_encoding)."""
    # The header first: a request key missing is a KeyError raised and caught (~0.8 µs), and
    # defer_continue only runs, and sets CONTINUE, for a request that sent Expect.
    if "Expect" in request.headers and CONTINUE in request:
        await _send_continue(request)
    try:
        if request.content.is_eof():  # the parser has fed the whole body: read() cannot wait
            return buffered_body(request)
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise ApiError(
            "REQUEST_TIMEOUT", f"the request body did not arrive within {timeout_s:g} s"
        ) from None
    except ConnectionResetError:
        raise ApiError(
            "CLIENT_DISCONNECTED", "the client closed the connection before its body arrived"
        ) from None
    except (HttpProcessingError, RequestPayloadError):
        # The bytes after the headers are not a body (a bad chunk size): see
        # http_errors._BodyFailingParser. RequestPayloadError: aiohttp's pure-Python parser.
        raise ApiError("MALFORMED_HTTP", BODY_FRAMING) from None


def sent_body_now(request: web.Request) -> bytes | None:
    """`read_sent_body`'s answer when it has nothing to wait for (the parser has fed the whole
    body, no 100 Continue may be owed: no Expect, and the stream holds no error, which
    `read_sent_body` words as a refusal), from a plain call; else None, and the caller awaits
    `read_sent_body`. Why: nearly every body has arrived with its headers, and awaiting a
    coroutine that returns at once was ~1,200 instructions more (session 55)."""
    # The getters' attributes where they answer them (bridge.api.plain_request).
    if PLAIN_REQUEST:
        content, headers = request._payload, request._headers
    else:
        content, headers = request.content, request.headers
    if _ONE_CHUNK and content.__class__ is StreamReader:
        # The stream's state as is_eof() and exception() answer it, without their calls.
        if "Expect" in headers or not content._eof or content._exception is not None:
            return None
        body = request._read_bytes
        if body is not None:
            return body
        # A body fed in one piece (nearly every send): the one chunk read_nowait() would take,
        # without its two frames and the no-op timer's check (~1,500 instructions, session
        # 62); nobody waits on the stream (a handler's own read would), so read_nowait has
        # nothing to refuse. Else read_nowait() itself.
        if (
            len(content._buffer) == 1
            and content._waiter is None
            and content._timer.__class__ is TimerNoop
        ):
            body = content._read_nowait_chunk(-1)
        else:
            body = content.read_nowait()
    else:
        if "Expect" in headers or not content.is_eof() or content.exception() is not None:
            return None
        # buffered_body's lines, not a call of it: a frame less on every send.
        body = request._read_bytes
        if body is not None:
            return body
        body = content.read_nowait()
    limit = request._client_max_size if PLAIN_REQUEST else request.client_max_size
    if limit and len(body) > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
    request._read_bytes = body
    return body


# The SHA-256 of the sources of StreamReader's __init__, is_eof, exception, read_nowait and
# _read_nowait (aiohttp 3.14.3 and 3.14.5 alike) `sent_body_now` was written against: the
# attributes it reads are set by __init__, `is_eof()` is `_eof`, `exception()` is
# `_exception`, and `read_nowait()` of a stream with no exception, no waiter, the no-op timer
# and one chunk buffered is `_read_nowait_chunk(-1)`.
_STREAM_SOURCES = {
    "__init__": "09c8a6dade356c4103cd0f3aa7085ffb13e86a1a145a8605015ca1b78687d578",
    "is_eof": "7642721fe2f71e63a1448b8e134b55a17379751ed0068fda3c4c116a9fb18fc0",
    "exception": "b8c3f1ed47fb4d7166acc95ac0436cd8ecdd90e1b1013833af93a5d8a30ce5ce",
    "read_nowait": "e340a15bd631cecb16b9e445b00a45956b4f6e208021eb09787f985dac3e9a53",
    "_read_nowait": "05fc75740b9d4d6320d6525c421654a4b2120baaffe7e5239689e483f0ab60d9",
}


def _one_chunk_reads() -> bool:
    """Whether this aiohttp's StreamReader is the one `_STREAM_SOURCES` names, with the
    attributes `sent_body_now` reads, and its no-op timer checks nothing."""
    try:
        for name, digest in _STREAM_SOURCES.items():
            source = inspect.getsource(getattr(StreamReader, name))
            if hashlib.sha256(source.encode()).hexdigest() != digest:
                return False
    except (OSError, TypeError, AttributeError):  # no source (a frozen build), or renamed
        return False
    return (
        callable(getattr(StreamReader, "_read_nowait_chunk", None))
        and TimerNoop.assert_timeout is BaseTimerContext.assert_timeout
        and "raise" not in inspect.getsource(BaseTimerContext.assert_timeout)
    )


_ONE_CHUNK = _one_chunk_reads()


def buffered_body(request: web.Request) -> bytes:
    """`request.read()` of a body the parser has fed whole (`request.content.is_eof()`), taken
    from the stream's buffer in one call. Why: read() loops readany() into a bytearray until an
    empty chunk and copies it out (two reads, two copies), ~1.5 µs of each send. As read(): over
    the app's client_max_size is 413, and the bytes are kept as read() keeps them, so a later
    `request.read()` answers them again instead of an empty body, and a body read before
    (read() or this) is answered from that cache, as read() answers it: the drained buffer
    would give b"" and put it in the cache in the body's place."""
    body = request._read_bytes  # read()'s own cache (a slot of the request)
    if body is not None:
        return body
    body = request.content.read_nowait()
    limit = request.client_max_size
    if limit and len(body) > limit:
        # Both sizes by name: older aiohttp (3.9's, which pyproject allows) requires actual_size,
        # and the size given alone there was a TypeError: a 500 in place of the 413.
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=len(body))
    request._read_bytes = body
    return body


async def defer_continue(request: web.Request) -> None:
    """The routes' Expect handler. aiohttp's answered `Expect: 100-continue` with "100
    Continue" before any middleware ran, so a client waiting for it sent its body to requests
    refused from their headers (no signature, a bad token). The interim answer now goes when the
    body is first read (read_body), after those checks; a refusal goes instead, and the client
    sends no body."""
    expect = request.headers.get("Expect", "")
    if request.version != HttpVersion11:
        return
    if expect.lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {expect[:40]}")
    request[CONTINUE] = True


async def _send_continue(request: web.Request) -> None:
    del request[CONTINUE]
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # as aiohttp's own handler: the answer has not begun


def use_deferred_continue(app: web.Application) -> None:
    """Every route of `app` answers Expect: 100-continue through defer_continue. aiohttp takes
    the handler per route (add_route's expect_handler), kept in a private attribute: if it
    is missing, the routes keep aiohttp's own, which sends "100 Continue" at once, as before."""
    for route in app.router.routes():
        if hasattr(route, "_expect_handler"):
            route._expect_handler = defer_continue


def refuse_encoding(request: web.Request) -> None:
    """415 for a compressed body. The servers do not decompress (auto_decompress=False): the
    signed body hash is over the bytes the client sent, and a body that is not what its header
    says made aiohttp log a traceback per request. Say what is wrong instead."""
    sent = (request._headers if PLAIN_REQUEST else request.headers).get("Content-Encoding")
    if sent is None:  # nearly every request: no strip, lower and compare of a default (session 61)
        return
    encoding = sent.strip().lower()
    if encoding != "identity":
        raise ApiError(
            "UNSUPPORTED_MEDIA_TYPE",
            f"Content-Encoding {encoding[:40]!r} is not supported: send the body uncompressed",
        )


def declared_too_large(request: web.Request, max_bytes: int) -> bool:
    """A Content-Length over the limit: refused (413) from the headers, before a byte of the
    body is read, whoever sent it; a chunked body is cut at the limit as it is read."""
    length = request.content_length
    return length is not None and length > max_bytes


def body_pending(request: web.Request) -> bool:
    """Whether some of the request's body has yet to arrive: refused before reading it, the
    connection is closed behind the answer (close_after, which drops what still comes of it
    first) rather than read as the request's body."""
    return request.body_exists and not request.content.is_eof()


# Refusals after which the rest of the request's bytes cannot be told from the next request's:
# the answer closes the connection (close_after).
CLOSING_CODES = frozenset({"REQUEST_TIMEOUT", "MALFORMED_HTTP"})


# A refusal from the headers with the body still coming (close_after's `drain`): the rest is read
# and dropped while it keeps coming, never kept, then the connection closes.
DRAIN_IDLE_S = 0.5  # a pause this long ends it: a stalled client holds nothing
DRAIN_MAX_S = 5.0  # and this long in all


async def close_after(
    request: web.Request, resp: web.StreamResponse, *, drain: bool = False
) -> None:
    """Send `resp` now and close the connection behind it: the rest of the body may still
    come, so the stream is not reusable, and aiohttp would otherwise keep reading it, up to 10 s
    (its lingering close), for a client that already stalled past server.body_timeout_s.

    `drain`, for a refusal from the headers alone: the rest of the body, as far as it arrives
    without a pause and within server.max_body_bytes, is read and dropped first. A socket
    closed with bytes unread is reset, and a reverse proxy still writing the body (nginx, which
    sends a buffered body after its headers) took the reset for a failed upstream: its client
    got 502 Bad Gateway, not the refusal (a 1 MB send with an unknown key, half the time)."""
    resp.force_close()
    try:
        await resp.prepare(request)
        await resp.write_eof()
    except ConnectionError:
        return  # the client is gone already
    # CONTINUE still set: the client waits for "100 Continue" and sends no body after a refusal.
    if drain and CONTINUE not in request:
        await _drain(request, request.app[CTX].config.server.max_body_bytes)
    if request.protocol is not None:
        request.protocol.force_close()


async def _drain(request: web.Request, limit: int) -> None:
    """Read and drop up to `limit` more octets of the body while they keep coming (above).

    A pause is DRAIN_IDLE_S with no byte come in, not a timer's expiry alone: a loop held up
    past it (a busy daemon) found the timer due and the client's bytes waiting in the same
    turn, the timer won, and the close with the body still coming was the reset this avoids."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DRAIN_MAX_S
    content = request.content
    with contextlib.suppress(ConnectionError, HttpProcessingError, RequestPayloadError):
        while limit > 0 and not content.is_eof():
            seen = content.total_bytes  # fed from the socket, read or not
            try:
                async with asyncio.timeout(min(DRAIN_IDLE_S, end - loop.time())):
                    limit -= len(await content.readany())
            except TimeoutError:
                if content.total_bytes == seen or loop.time() >= end:
                    return


async def read_admin_body(request: web.Request) -> bytes:
    """An operator's body, under the same rules as the API's (server.body_timeout_s)."""
    return await read_body(request, request.app[CTX].config.server.body_timeout_s)


MAX_FIELD_SIZE = 8190  # aiohttp's default: no header of ours or of an SDK comes near it
MAX_HEADERS = 64


def http_limits(max_line_size: int) -> dict[str, int]:
    """The parser's limits: a long request line (a 1000-number query) but ordinary headers.
    Raised with the line, a header of 64 KiB x 128 headers let unauthenticated connections
    that never finish their headers hold ~15 MiB each (439 MiB for 30) until the idle time."""
    return {
        "max_line_size": max_line_size,
        "max_field_size": MAX_FIELD_SIZE,
        "max_headers": MAX_HEADERS,
    }
