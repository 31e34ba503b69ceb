"""Answers to requests aiohttp's HTTP parser refuses, in the API's own error format.

Why: a request line or header aiohttp cannot parse never reaches the application, so no
middleware sees it. aiohttp answered it in plain text ("400, message: Bad status line ..."), logged
a traceback at ERROR for each one (a port scanner fills the log), counted it nowhere, and echoed
the raw line, which on the Alibaba face carries the caller's AccessKeyId and signature, into
both the answer and the log. Here it is the machine-readable envelope of the face that received
it, a counted answer, and one log line naming the kind of fault, not its bytes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from aiohttp import web, web_protocol, web_response
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_exceptions import (
    BadHttpMethod,
    BadStatusLine,
    HttpProcessingError,
    InvalidHeader,
    InvalidURLError,
    LineTooLong,
    PayloadEncodingError,
)
from aiohttp.web_protocol import RequestHandler

from bridge.api.connections import ConnectionCap
from bridge.api.request_maker import request_maker
from bridge.api.route_cache import route_cache
from bridge.domain import forwarded
from bridge.metrics import Metrics

log = logging.getLogger("bridge.api")

# (status, native code, message) -> (status sent, body, content type, request id, code sent):
# each face answers, and is counted, in its own format.
Render = Callable[[int, str, str], tuple[int, bytes, str, str, str]]

# The metrics endpoint label of a request that was never parsed (the Alibaba face's:
# "aliyun unparsable", beside its "aliyun <Action>" labels).
ENDPOINT = "unparsable"

# What every answer's Server header says: set below as aiohttp's default, for every answer.
SERVER_NAME = "smpp-bridge"


def name_every_answer() -> None:
    """aiohttp's default Server header, which names its version and Python's (what a scanner
    looks for to pick advisories), is SERVER_NAME for every answer of the process.

    The one mechanism, run when this module is imported: every face (the API, the admin
    listener, the Alibaba face) and every answer imports it first, so it holds before any app
    is built, in an acceptor process too. aiohttp sets its default where a response has no
    Server (StreamResponse._prepare_headers, `setdefault` from this module value, 3.9 to 3.14),
    which every answer is: a handler's, a refusal of the error middleware, a stream prepared in
    its handler (the CDR CSV), the 417 of a bad Expect and the 404/405 of aiohttp's own route
    (raised before any middleware), a redirect, the parser's refusals (JsonErrorServer.answer).
    Nothing per request: setting it per answer as well (the error middleware, a few answers
    themselves, an on_response_prepare signal on the Alibaba face) was a second mechanism that
    still missed what never reached them (session 53)."""
    if isinstance(getattr(web_response, "SERVER_SOFTWARE", None), str):
        web_response.SERVER_SOFTWARE = SERVER_NAME


name_every_answer()
# The Alibaba face's label (bridge.compat.aliyun_api.UNPARSED_ENDPOINT). Its answers name the
# request id in x-acs-request-id, which Alibaba's gateway sends and its SDKs read: every other
# answer of that face carried it, and its refusals of malformed HTTP had X-Request-Id alone.
ALIYUN_ENDPOINT = "aliyun unparsable"

BODY_FRAMING = "the body's framing (Content-Length or chunked encoding) is malformed"
# aiohttp's parsers (C and Python) name a TLS ClientHello's first bytes so; anything else where a
# request line should start is most often the body of the request before it, sent without
# Content-Length or chunked encoding (Node's http.request writes a GET's body so): read as the
# next request. Both were answered "is TLS sent to a plain-HTTP port?", which sent a customer
# looking for TLS in a client that only forgot to frame a body. The verdict opens the message:
# any other message quotes the client's bytes (the C parser's repr of what it read, the Python
# one's line), so "HTTPS" anywhere in it, a URL in a body sent unframed, is no sign of TLS.
_TLS_VERDICT = "Received HTTPS traffic"
_TLS_RECORD = "\x16\x03"  # a TLS handshake record's first bytes, as aiohttp tells them
TLS_TO_PLAIN = "TLS was sent to a plain-HTTP port (use http://, or TLS termination before it)"
NOT_A_METHOD = (
    "the request method is not HTTP (a body sent without Content-Length or chunked encoding "
    "is read as the next request's first line)"
)
_REASONS: tuple[tuple[type[BaseException], str], ...] = (
    # BadHttpMethod first: it is a BadStatusLine (describe tells TLS from the rest).
    (BadHttpMethod, NOT_A_METHOD),
    (BadStatusLine, "the request line is not valid HTTP/1.1"),
    (LineTooLong, "the request line or a header is longer than this server accepts"),
    (InvalidHeader, "a header is malformed"),
    (InvalidURLError, "the request target is not a valid URL"),
    (PayloadEncodingError, BODY_FRAMING),
)


def describe(exc: BaseException | None) -> str:
    """The kind of fault, in words that quote nothing of the request."""
    if isinstance(exc, BadHttpMethod) and (
        str(getattr(exc, "message", "")).startswith(_TLS_VERDICT)
        or str(getattr(exc, "line", "")).startswith(_TLS_RECORD)
    ):
        return TLS_TO_PLAIN
    for kind, text in _REASONS:
        if isinstance(exc, kind):
            return text
    return "the request is not valid HTTP/1.1"


# aiohttp's limit of requests queued on a connection (3.14: 32; none before: every feed `held`).
_QUEUE_LIMIT: int | None = getattr(web_protocol, "MAX_MSG_QUEUE_SIZE", None)
_HOLD_AT = (_QUEUE_LIMIT or 0) - 1


class _BodyFailingParser:
    """aiohttp's request parser, which also fails the body being read when the bytes after the
    headers are malformed (a bad chunk size), and reads nothing more after its first error.

    Why: the parser drops the body stream it was feeding and raises; aiohttp queues the error as
    a next request, behind the handler still reading that body. The handler waited for
    server.body_timeout_s (30 s by default) and answered 408 REQUEST_TIMEOUT, not 400
    MALFORMED_HTTP. The body now fails with the parser's error, and read_body says so at once.

    `feed_data` is `_Feed.feed` of a state of its own (session 61): an attribute read of this
    object goes through its `__getattr__` hook, which the interpreter does not specialise (~1 k
    instructions each, where a slot of a class without the hook is read in a few dozen), and
    the feed read three a request."""

    __slots__ = ("_inner", "feed_data", "message_consumed")

    def __init__(self, inner: Any, owner: _Handler | None = None) -> None:
        self._inner = inner
        # Called on every request (aiohttp 3.14's RequestHandler.start): found by __getattr__,
        # each call first raised and formatted an AttributeError, ~1.4 µs against 0.03 (~12 k
        # instructions a request, session 52). Bound here when the parser has it.
        consumed = getattr(inner, "message_consumed", None)
        if consumed is not None:
            self.message_consumed = consumed
        # aiohttp's Python parser, whose state _not_a_request_start reads (the C one keeps
        # its own, and refuses such bytes itself).
        python = all(hasattr(inner, a) for a in ("_tail", "_lines", "_payload_parser"))
        # The connection whose `_held` the C parser's feeds set (see _Feed.feed). The Python
        # parser counts a request in flight when its headers end, as the protocol's queue does:
        # it stops only where the protocol pauses (`_buffer_paused`), and `_held` is False.
        if owner is not None and python:
            owner._held = False
        self.feed_data = _Feed(inner, None if python else owner, python).feed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _Feed:
    """`_BodyFailingParser.feed_data` and its state: the parser, the connection whose `_held`
    it sets (None: the Python parser's, or an unknown queue), the newest body, whether it
    failed."""

    __slots__ = ("_body", "_failed", "_inner", "_owner", "_python")

    def __init__(self, inner: Any, owner: _Handler | None, python: bool) -> None:
        self._inner = inner
        # feed reads `_owner` or `_python`, not both.
        self._owner = owner
        self._python = python
        self._body: Any = None  # the body of the newest request parsed: the one being fed
        self._failed = False

    def feed(self, data: bytes) -> Any:
        if self._failed:
            # The connection is answered 400 and closed; until then aiohttp feeds what keeps
            # arriving, and the failed parser raised again on each read, an error holding that
            # read's bytes as text, 32 queued per connection: a client sending megabytes of
            # headers after the first bad one held ~4 MiB a connection. Dropped instead.
            return [], False, b""
        try:
            out = self._inner.feed_data(data)
        except HttpProcessingError as exc:
            self._failed = True
            body = self._body
            if body is not None and not body.is_eof() and body.exception() is None:
                body.set_exception(exc)
            self._body = None
            raise
        messages = out[0]
        if messages:
            self._body = messages[-1][1]
        owner = self._owner
        if owner is not None:
            # The C parser (aiohttp 3.14) stops, keeping the rest of what it was fed, once its
            # count of requests in flight reaches the protocol's queue limit (32). It counts a
            # request when its body ends, the protocol's queue when its headers end: a request
            # taken from the queue before its body came (a body sent after its headers, Expect:
            # 100-continue) leaves the count one over the queue, and the parser stops at 31
            # queued, where the protocol pauses nothing (at 32): only a feed of b""
            # (resume_reading) parses the rest. Stopping in this feed needs the queue at 31 or
            # more once the requests it returns are in it; under that nothing was left.
            owner._held = len(owner._messages) + len(messages) >= _HOLD_AT
        elif self._python and _not_a_request_start(self._inner):
            # The C parser (llhttp) refuses such bytes as they come; aiohttp's Python parser, run
            # where its extension is missing, waits for the line's end, and bytes that never end
            # one (the rest of a body longer than its Content-Length) got no answer at all: the
            # connection was closed, silent, at server.idle_timeout_s.
            self._failed = True
            self._body = None
            raise BadHttpMethod(self._inner._tail[:40].decode("latin-1"))
        return out


# The methods the C parser (llhttp, HTTP_ALL_METHOD_MAP: HTTP's, WebDAV's, UPnP's, RTSP's and
# ICE's SOURCE, PRI of HTTP/2's preface) takes. It matches a method byte by byte against them
# and refuses at the first byte that continues none (`ABC` at its `B`); a prefix of one (`POS`)
# waits for more. RFC 9110 allows any token, which let a leftover of capitals (the rest of a
# body longer than its Content-Length) wait, unanswered, for a line end under the Python
# parser. A unit test checks this list against the C parser where it is built.
LLHTTP_METHODS = (
    "DELETE", "GET", "HEAD", "POST", "PUT", "CONNECT", "OPTIONS", "TRACE", "COPY", "LOCK",
    "MKCOL", "MOVE", "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK", "BIND", "REBIND", "UNBIND",
    "ACL", "REPORT", "MKACTIVITY", "CHECKOUT", "MERGE", "M-SEARCH", "NOTIFY", "SUBSCRIBE",
    "UNSUBSCRIBE", "PATCH", "PURGE", "MKCALENDAR", "LINK", "UNLINK", "SOURCE", "PRI",
    "DESCRIBE", "ANNOUNCE", "SETUP", "PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER",
    "SET_PARAMETER", "REDIRECT", "RECORD", "FLUSH", "QUERY",
)  # fmt: skip
_METHODS = frozenset(m.encode() for m in LLHTTP_METHODS)
# Every start of one (the empty one included): a set lookup per check, no scan of the list.
_METHOD_STARTS = frozenset(m[:i] for m in _METHODS for i in range(len(m) + 1))


def _not_a_request_start(parser: Any) -> bool:
    """Whether aiohttp's Python parser, between bodies, holds a request line (whole, its headers
    still coming, or its start) that the C parser would refuse as it came: a method not one it
    knows before the first space, or bytes no method of it starts with."""
    if parser._payload_parser is not None:
        return False
    start = parser._lines[0] if parser._lines else parser._tail.lstrip(b"\r\n")
    if not start:
        return False
    method, space, _ = start.partition(b" ")
    return method not in _METHODS if space else method not in _METHOD_STARTS


def _check_every(limit_s: float) -> float:
    return max(0.25, min(5.0, limit_s / 4))


class _Handler(RequestHandler):
    """Answers parse errors in the face's format (handle_error), and cuts a connection whose
    client has read nothing of what it was sent for the idle timeout (_check_writes)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._write_watch: asyncio.TimerHandle | None = None
        self._cap: ConnectionCap | None = None  # counted in it until connection_lost
        self._admitted: str | bool = True  # what the cap's admit answered
        self._peer: str | None = None  # the TCP peer's address
        # The newest request's headers, kept (behind trusted proxies only) so that a line about
        # the connection can name the client the proxy forwarded for.
        self.last_headers: Any = None
        self._refused = False  # closed unread at the cap
        self._buffered = 0  # write buffer size at the last check
        self._stalled_since: float | None = None
        # Whether the parser may hold bytes it has not parsed when no flag says it is paused
        # (_BodyFailingParser.feed_data sets it; True: not known, resume_reading as aiohttp's).
        self._held = True
        # The attribute aiohttp keeps its request parser in (`_request_parser` in older ones):
        # without one, malformed bodies are answered as before, at the body timeout.
        for name in ("_parser", "_request_parser"):
            inner = getattr(self, name, None)
            if inner is not None and hasattr(inner, "feed_data"):
                # The queue and its limit `_held` is worked out for, else it stays True.
                known = (
                    hasattr(self, "_messages")
                    and getattr(self, "_max_msg_queue_size", None) == _QUEUE_LIMIT
                )
                setattr(self, name, _BodyFailingParser(inner, self if known else None))
                break

    def _resume_reading(self, resume_parser: bool = True) -> None:
        """aiohttp's resume_reading when reading was paused (by the body's stream over its high
        water, the queue of pipelined requests, an upgrade), else nothing. Why (session 57):
        aiohttp 3.14's body stream calls it after every read that leaves it under its low water,
        paused or not: a send's body read fed the parser b"" through data_received and resumed
        a transport that was reading (~6.6 k instructions a send on 3.11). Unpaused, that feed
        has nothing to parse: the parser keeps unparsed bytes only when paused, by the stream
        (`pause_reading`, which sets `_reading_paused`) or by its queue of requests full (which
        the protocol's `_buffer_paused` follows, but one request later: see
        `_BodyFailingParser.feed_data`, which sets `_held` when its last feed may have stopped
        short; session 57's review: 31 pipelined sends after a body sent apart from its headers
        were answered and the rest waited, unread, for the client's next bytes). Installed only
        where aiohttp's protocol has those flags (`_RESUME_FLAGS`)."""
        if self._reading_paused or self._buffer_paused or self._upgraded or self._held:
            super().resume_reading(resume_parser)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peername = transport.get_extra_info("peername")
        if isinstance(peername, tuple) and peername and isinstance(peername[0], str):
            self._peer = peername[0]
        cap = getattr(self._manager, "cap", None)  # None: the admin listener, not counted
        if cap is not None:
            admitted = cap.admit(self._peer)
            if admitted is False:
                # An aborted transport reads nothing more (no data_received, no eof_received):
                # the connection is never handed to aiohttp (no timers, no answer).
                self._refused = True
                # asyncio's stream transports and uvloop's have abort(); uvloop's are not
                # asyncio.Transport subclasses, so no isinstance could tell mypy so.
                transport.abort()  # type: ignore[attr-defined]
                return
            self._cap, self._admitted = cap, admitted
        super().connection_made(transport)
        self._write_watch = self._loop.call_later(
            _check_every(self._keepalive_timeout), self._check_writes
        )

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:  # aiohttp never knew it
            return
        if self._cap is not None:
            self._cap.release(self._admitted)
            self._cap = None
        if self._write_watch is not None:
            self._write_watch.cancel()
            self._write_watch = None
        super().connection_lost(exc)

    def _remote(self, headers: Any = None) -> str | None:
        """The client's address for a log line: the peer, or behind a trusted proxy the client
        that `headers` (by default the newest request's) names; none known: the peer."""
        server = self._manager  # None once the connection is lost
        if headers is None:
            headers = self.last_headers
        if not isinstance(server, JsonErrorServer) or not server.trusted or not headers:
            return self._peer
        header = server.forwarded_header
        return forwarded.client_from_headers(
            self._peer, headers.getall(header, ()), header, server.trusted
        )

    def _check_writes(self) -> None:
        """No write deadline in aiohttp: a handler waits in drain() for as long as the client
        keeps its window shut, and the idle and body timeouts count only what the client sends.
        A client that pipelined requests and read nothing held its connection, its buffers and
        a handler for ever. An answer that moves no byte for server.idle_timeout_s is cut."""
        self._write_watch = None
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        size = transport.get_write_buffer_size()
        now = self._loop.time()
        if size == 0 or size != self._buffered:
            self._stalled_since = None if size == 0 else now
        elif self._stalled_since is None:
            self._stalled_since = now
        elif now - self._stalled_since >= self._keepalive_timeout:
            remote = self._remote()
            log.info(
                "closed a connection whose client read nothing for %.0f s (%d bytes waiting; "
                "remote=%s)",
                now - self._stalled_since,
                size,
                remote,
                extra={"remote": remote},
            )
            transport.abort()
            return
        self._buffered = size
        self._write_watch = self._loop.call_later(
            _check_every(self._keepalive_timeout), self._check_writes
        )

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        server = self._manager
        if not isinstance(server, JsonErrorServer):  # pragma: no cover - built only by it
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:  # as aiohttp: an answer was begun, nothing to add
            raise ConnectionError("response already started; the connection is dropped")
        internal = status >= 500
        reason = "an internal error" if internal else describe(exc)
        # The request's own headers when they were parsed (none for a bad request line or
        # header): a keep-alive connection from a proxy carries many clients, so an earlier
        # request's would name the wrong one. Only the address: no header, no byte of the body.
        remote = self._remote(request.headers)
        extra = {"remote": remote}
        if internal:
            log.error("HTTP layer fault (remote=%s)", remote, exc_info=exc, extra=extra)
        elif isinstance(exc, BadHttpMethod):
            log.debug(
                "refused a request that is not HTTP: %s (remote=%s)", reason, remote, extra=extra
            )
        else:
            log.warning(
                "refused a malformed HTTP request: %s (remote=%s)", reason, remote, extra=extra
            )
        return server.answer(status, reason)


# The protocol's flags `_Handler._resume_reading` reads (aiohttp 3.14's BaseProtocol slots).
_RESUME_FLAGS = frozenset({"_reading_paused", "_buffer_paused", "_upgraded"})
if _RESUME_FLAGS <= set(getattr(BaseProtocol, "__slots__", ())):
    _Handler.resume_reading = _Handler._resume_reading  # type: ignore[assignment]


class JsonErrorServer(web.Server):
    """The low-level server of a face, whose connections answer parse errors through `render`."""

    render: Render
    metrics: Metrics | None
    endpoint: str
    cap: ConnectionCap | None = None  # None: connections are not counted (the admin listener)
    trusted: tuple[forwarded.Network, ...] = ()  # server.trusted_proxies
    forwarded_header: str = forwarded.X_FORWARDED_FOR  # server.forwarded_header

    def __call__(self) -> RequestHandler:
        return _Handler(self, loop=self._loop, **self._kwargs)

    def answer(self, status: int, reason: str) -> web.Response:
        code = "INTERNAL_ERROR" if status >= 500 else "MALFORMED_HTTP"
        sent, body, ctype, rid, counted = self.render(status, code, reason)
        if self.metrics is not None:
            self.metrics.request(self.endpoint, sent, counted)
        resp = web.Response(status=sent, body=body, content_type=ctype.split(";")[0].strip())
        resp.headers["Content-Type"] = ctype
        resp.headers["X-Request-Id"] = rid
        if self.endpoint == ALIYUN_ENDPOINT:
            resp.headers["x-acs-request-id"] = rid
        resp.force_close()
        return resp


# The middleware aiohttp appends to every application with middlewares of its own (web_app's
# `_prepare_middleware`): it sets `request.match_info.current_app` to its app around the rest
# of the chain, for a sub-application's middlewares and handlers to see theirs.
_CURRENT_APP_FIX = "_fix_request_current_app.<locals>.impl"


def without_current_app_middleware(app: web.Application | None) -> None:
    """Drops aiohttp's own `current_app` middleware from a frozen application with no
    sub-applications. Why (session 56): with none, `current_app` is that application already
    (the router's match sets it), and the middleware set it to the same value and back on every
    request: a coroutine, a try/finally and four property calls, ~5 k instructions of each send.
    aiohttp keeps the chain in private attributes: anything not as expected (another aiohttp,
    sub-applications, not frozen yet) leaves the application as it is."""
    handlers = getattr(app, "_middlewares_handlers", None)
    if (
        app is None
        or not app.frozen
        or getattr(app, "_subapps", True)
        or not isinstance(handlers, tuple)
        or not handlers
        or getattr(handlers[-1][0], "__qualname__", None) != _CURRENT_APP_FIX
        or any(getattr(m, "__qualname__", None) == _CURRENT_APP_FIX for m, _ in handlers[:-1])
    ):
        return
    app._middlewares_handlers = handlers[:-1]


class AppRunner(web.AppRunner):
    """`web.AppRunner` whose server is a `JsonErrorServer`."""

    def __init__(
        self,
        app: web.Application,
        render: Render,
        metrics: Metrics | None,
        *,
        endpoint: str = ENDPOINT,
        cap: ConnectionCap | None = None,
        trusted: tuple[forwarded.Network, ...] = (),
        forwarded_header: str = forwarded.X_FORWARDED_FOR,
        **kwargs: object,
    ) -> None:
        super().__init__(app, **kwargs)  # type: ignore[arg-type]
        self._render = render
        self._metrics = metrics
        self._endpoint = endpoint
        self._cap = cap
        self._trusted = trusted
        self._forwarded_header = forwarded_header

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        without_current_app_middleware(self._app)
        # A request to a route it resolved before skips the router (bridge.api.route_cache).
        cache = route_cache(self._app, server)
        if cache is not None:
            server.request_handler = cache.handle
        # A request's web.Request built without its __init__ (bridge.api.request_maker).
        maker = request_maker(self._app, server)
        if maker is not None:
            server.request_factory = maker.make
        # The application's own Server, with its handler and arguments, answering parse errors
        # itself: the class is the only difference (it adds no state of its own but these two).
        server.__class__ = JsonErrorServer
        assert isinstance(server, JsonErrorServer)
        server.render = self._render
        server.metrics = self._metrics
        server.endpoint = self._endpoint
        server.cap = self._cap
        server.trusted = self._trusted
        server.forwarded_header = self._forwarded_header
        if self._trusted:
            # Each request's headers kept on its connection (_Handler.last_headers), for the
            # lines about the connection; without trusted proxies the peer is all there is.
            make_request = server.request_factory

            def request_factory(message: Any, *args: Any) -> web.BaseRequest:
                request = make_request(message, *args)
                # A _Handler's (JsonErrorServer's protocol): no isinstance per request.
                request.protocol.last_headers = message.headers  # type: ignore[attr-defined]
                return request

            server.request_factory = request_factory
        return server
