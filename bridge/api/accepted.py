"""A send's 202, written as one piece: its head an f-string, head and body one write.

Why (session 57): aiohttp answers a `web.Response` through six coroutines (`prepare`, two
`_start`, `_prepare_headers`, `_write_headers`, two `write_eof`) that look at every case an
answer can be (cookies, compression, chunking, HEAD, HTTP/1.0, the `on_response_prepare`
signal, a Payload body by an ABC `isinstance`) and serialize the headers from the multidict:
~95 k of the ~720 k instructions of a stubbed send (Python 3.12), and its `__init__` ~10 k
more. A send's 202 is always one case: a bytes body, two headers (Content-Type, then the request
id the error middleware sets), answered to a keep-alive HTTP/1.1 POST with no receiver of the
signal. That case is written here through the writer's public `write_eof`, which keeps
aiohttp's accounting (`output_size`) and its wait for a full socket buffer (`drain`).

The bytes stay aiohttp's: the first 202 of that case in a process goes aiohttp's way, and the
head aiohttp made for it (kept in its writer until the body is written) is compared with the
one `_head` makes; only if they are the same, byte for byte, do the later ones take the short
way. With another aiohttp (another header or order, the head not kept there, its answers'
state not as read below) every 202 goes aiohttp's way, as does any 202 not of that case.
Checked against aiohttp 3.14.3 and 3.14.5 (`tests/integration/test_session57_accepted.py`).
"""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web, web_response
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http_writer import HttpVersion11
from multidict import CIMultiDict

from bridge.api.plain_request import PLAIN_REQUEST

try:  # where aiohttp 3.9 to 3.14 make the Date header (cached per second)
    from aiohttp.helpers import rfc822_formatted_time
except ImportError:  # pragma: no cover - another aiohttp: the plain way
    rfc822_formatted_time = None  # type: ignore[assignment]

log = logging.getLogger("bridge.api")

CONTENT_TYPE = "application/json"
# What the short way reads and sets of aiohttp's answer (its attributes in 3.10 to 3.14).
_STATE = (
    "_body", "_status", "_reason", "_keep_alive", "_chunked", "_compression", "_cookies",
    "_eof_sent", "_payload_writer", "_headers", "_req", "_must_be_empty_body", "_body_length",
)  # fmt: skip


def _has_state() -> bool:
    """Whether aiohttp's answers have the attributes the short way reads and sets."""
    probe = web.Response(body=b"{}", status=202, content_type=CONTENT_TYPE)
    return rfc822_formatted_time is not None and all(hasattr(probe, a) for a in _STATE)


# The instance state web.Response.__init__ (aiohttp 3.10 to 3.14) leaves a send's 202, by name.
_INIT_STATE = frozenset({
    "_state", "_headers", "_status", "_reason", "_body", "_compressed_body",
    "_zlib_executor_size", "_zlib_executor",
})  # fmt: skip
_HEADERS: CIMultiDict[str] = CIMultiDict({"Content-Type": CONTENT_TYPE})


def _plain_init() -> tuple[str, int] | None:
    """Whether web.Response.__init__ leaves a send's 202 exactly _INIT_STATE, as
    `Accepted.__init__` sets it: the reason and the zlib chunk size it sets, else None
    (another aiohttp: its __init__ is called)."""
    one = web.Response(body=b"{}", status=202, content_type=CONTENT_TYPE)
    state = vars(one)
    if (
        state.keys() != _INIT_STATE
        or state["_state"] != {}
        or list(state["_headers"].items()) != list(_HEADERS.items())
        or state["_status"] != 202
        or type(state["_reason"]) is not str
        or state["_body"] != b"{}"
        or state["_compressed_body"] is not None
        or type(state["_zlib_executor_size"]) is not int
        or state["_zlib_executor"] is not None
    ):
        return None
    return state["_reason"], state["_zlib_executor_size"]


_INIT = _plain_init()
_REASON, _ZLIB_SIZE = _INIT if _INIT is not None else ("Accepted", 0)
# Routes whose answers no receiver of on_response_prepare sees (every application on their way
# frozen, with none): routes are made at start, one entry each.
_QUIET: dict[object, bool] = {}
# None: not checked yet in this process; True: aiohttp's head was this module's; False: it was
# not (or could not be read), every 202 the plain way.
_checked: bool | None = None if _has_state() else False


def _head(reason: str, rid: str, length: int, date: str, server: str) -> bytes:
    """The status line and headers aiohttp writes for an eligible 202 (the order: the
    Content-Type given to the Response, the request id the error middleware sets, then the
    Content-Length, Date and Server aiohttp adds in its prepare)."""
    return (
        f"HTTP/1.1 202 {reason}\r\nContent-Type: {CONTENT_TYPE}\r\nX-Request-Id: {rid}\r\n"
        f"Content-Length: {length}\r\nDate: {date}\r\nServer: {server}\r\n\r\n"
    ).encode()


class Accepted(web.Response):
    """The 202 of POST /v1/messages (its JSON body): a `web.Response` in every way but its
    prepare, which writes the whole answer at once where that is the same bytes."""

    def __init__(self, body: bytes) -> None:
        if _INIT is None:
            super().__init__(body=body, status=202, content_type=CONTENT_TYPE)
            return
        # What web.Response.__init__ leaves for this answer (see _plain_init), without its
        # ~2.5 µs of keyword handling and checks.
        self._state = {}
        self._headers = CIMultiDict(_HEADERS)
        self._status = 202
        self._reason = _REASON
        self._body = body
        self._compressed_body = None
        self._zlib_executor_size = _ZLIB_SIZE
        self._zlib_executor = None

    def _request_id(self, request: web.BaseRequest) -> str | None:
        """The request id when this answer and its request are the case the short way serves,
        else None (aiohttp's own attributes, which `_has_state` found at import). ~8 k
        instructions on 3.11, most of it the answer's eight attributes, its headers' items and
        the request's version, keep-alive and route."""
        if (
            type(self._body) is not bytes
            or self._status != 202
            or self._keep_alive is not None  # force_close() or keep_alive set
            or self._chunked
            or self._compression
            or self._cookies
            or self._eof_sent
            or self._payload_writer is not None
        ):
            return None
        # The method is POST, the route's (HEAD answers no body; CONNECT's 2xx neither). The
        # getters' attributes where they answer them (bridge.api.plain_request).
        if PLAIN_REQUEST:
            if request._version != HttpVersion11 or request._message.should_close:
                return None
        elif request.version != HttpVersion11 or not request.keep_alive:
            return None
        try:
            (ctype, ctype_value), (rid_name, rid) = self._headers.items()
        except ValueError:  # not exactly two headers
            return None
        if (
            ctype != "Content-Type"
            or ctype_value != CONTENT_TYPE
            or rid_name != "X-Request-Id"
            or not rid.isascii()
            or not rid.isprintable()  # no control character: aiohttp refuses those
        ):
            return None
        # No receiver of on_response_prepare, which aiohttp's prepare would call with it.
        if PLAIN_REQUEST:
            match_info = getattr(request, "_match_info", None)
        else:
            match_info = getattr(request, "match_info", None)
        if match_info is None:
            return None
        route = match_info.route
        quiet = _QUIET.get(route)
        if quiet is None:
            apps = match_info.apps
            quiet = not any(app.on_response_prepare for app in apps)
            if all(app.frozen for app in apps):  # no receiver can be added any more
                _QUIET[route] = quiet
        if not quiet:
            return None
        return rid

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        global _checked
        rid = self._request_id(request) if _checked is not False else None
        if rid is None:
            return await super().prepare(request)
        if _checked is None:
            writer = await super().prepare(request)
            _checked = self._check(rid)
            return writer
        body: bytes = self._body  # type: ignore[assignment]
        length = len(body)
        date = rfc822_formatted_time()
        server = web_response.SERVER_SOFTWARE
        headers = self._headers
        # The headers as aiohttp's prepare leaves them, for whoever reads them after.
        headers["Content-Length"] = str(length)
        headers["Date"] = date
        headers["Server"] = server
        self._keep_alive = True
        self._must_be_empty_body = False
        writer = request._payload_writer if PLAIN_REQUEST else request.writer  # (plain_request)
        self._payload_writer = writer
        self._req = request
        await writer.write_eof(_head(self._reason, rid, length, date, server) + body)
        # As StreamResponse.write_eof leaves the answer and its writer: aiohttp's then returns
        # at once.
        writer.length = length
        self._eof_sent = True
        self._req = None
        self._body_length = writer.output_size
        self._payload_writer = None
        return writer

    def _check(self, rid: str) -> bool:
        """Whether the head aiohttp just made for this answer is the one `_head` makes."""
        writer: Any = self._payload_writer
        made = getattr(writer, "_headers_buf", None)
        headers = self._headers
        date = headers.get("Date")
        body: bytes = self._body  # type: ignore[assignment]
        server = str(web_response.SERVER_SOFTWARE)
        same = (
            isinstance(made, bytes)
            and isinstance(date, str)
            and made == _head(self._reason, rid, len(body), date, server)
            and self._keep_alive is True
        )
        if not same:
            log.debug("aiohttp's 202 head is not the one bridge.api.accepted writes: not used")
        return same
