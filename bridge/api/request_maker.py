"""A request's `web.Request` built by storing what `BaseRequest.__init__` stores, without it.

Why (session 58): the server makes each request through `Application._make_request`, which
calls `Request(message, payload, protocol, writer, task, loop, client_max_size=...,
client_max_fields=...)`: a class call with keywords into a Python `__init__` of twelve
parameters that looks at the URL (`absolute`) and three properties of the connection: ~9 k
instructions of a send on Python 3.11. For a request whose target is not an absolute URL (every
origin-form one: `/v1/messages`) that `__init__` always leaves the same state.

`RequestMaker.make` is the server's request factory in place of `app._make_request` (the low-level
server's public `request_factory`). The first request whose URL is not absolute is made by
aiohttp, and a second one is built from the same arguments here: only if the two hold the same
attributes, with the same values, do later requests (not absolute ones) take this way; else, or
for an absolute URL, aiohttp's. With another aiohttp whose `__init__` stores anything else, every
request is aiohttp's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

# What BaseRequest.__init__ (aiohttp 3.10 to 3.14) stores for a request that is not absolute.
_STATE = frozenset({
    "_message", "_protocol", "_payload_writer", "_payload", "_headers", "_method", "_version",
    "_cache", "_rel_url", "_state", "_task", "_client_max_size", "_client_max_fields", "_loop",
    "_transport_sslcontext", "_transport_peername", "_transport_sockname",
})  # fmt: skip


# The reified properties (`BaseRequest`'s `reify`: a getter called once, its answer kept in the
# request's `_cache` by name) a send reads, kept in `_cache` as the request is made: each
# getter's call and store were ~800 instructions on Python 3.11, eight of them a send (session
# 61). All are of the message, URL and payload the request is made from, which do not change.
_CACHED = ("headers", "method", "version", "rel_url", "raw_path", "path", "keep_alive", "content")
# Those whose getter makes a new object each time (compared by value, not identity).
_EQUAL = frozenset({"path", "keep_alive"})


class RequestMaker:
    """The server's request factory: `app._make_request`, or once checked its state at once."""

    def __init__(self, plain: Callable[..., web.BaseRequest]) -> None:
        self._plain = plain
        self._checked: bool | None = None  # None: not yet; False: aiohttp's way for good
        self._max_size = 0
        self._max_fields = 0
        self._loop: Any = None

    def make(
        self, message: Any, payload: Any, protocol: Any, writer: Any, task: Any
    ) -> web.BaseRequest:
        url = message.url
        if self._checked is not True or url.absolute:
            request = self._plain(message, payload, protocol, writer, task)
            if self._checked is None and not url.absolute:
                self._check(request, message, payload, protocol, writer, task)
            return request
        request = web.Request.__new__(web.Request)
        request._message = message
        request._protocol = protocol
        request._payload_writer = writer
        request._payload = payload
        request._headers = message.headers
        request._method = message.method
        request._version = message.version
        # The reified properties a send reads, as their getters would answer (see _CACHED).
        request._cache = {
            "headers": message.headers,
            "method": message.method,
            "version": message.version,
            "rel_url": url,
            "raw_path": message.path,
            "path": url.path,
            "keep_alive": not message.should_close,
            "content": payload,
        }
        request._rel_url = url
        request._state = {}
        request._task = task
        request._client_max_size = self._max_size
        request._client_max_fields = self._max_fields
        request._loop = self._loop
        request._transport_sslcontext = protocol.ssl_context
        request._transport_peername = protocol.peername
        request._transport_sockname = protocol.sockname
        return request

    def _check(self, real: web.BaseRequest, *args: Any) -> None:
        """Whether a request built here from `args` is `real`, attribute for attribute, and its
        reified properties' cache holds what `real`'s getters answer, under their names."""
        state = vars(real)
        if type(real) is not web.Request or state.keys() != _STATE or state["_cache"] != {}:
            self._checked = False
            return
        self._max_size = state["_client_max_size"]
        self._max_fields = state["_client_max_fields"]
        self._loop = state["_loop"]
        self._checked = True
        built = vars(self.make(*args))
        same = built.keys() == state.keys() and all(
            built[k] is state[k] or (type(built[k]) is dict and built[k] == state[k] == {})
            for k in state
            if k != "_cache"
        )
        # Each getter asked of `real` (its cache empty before): it must cache under its own
        # name, and answer the object kept here (an equal string for `path`, decoded per URL).
        cached = built["_cache"]
        answers = {name: getattr(real, name) for name in _CACHED}
        same = (
            same
            and cached.keys() == set(_CACHED)
            and real._cache.keys() == cached.keys()
            and all(
                type(answers[name]) is type(cached[name])
                and (
                    answers[name] is cached[name]
                    or (name in _EQUAL and answers[name] == cached[name])
                )
                and real._cache[name] is answers[name]
                for name in _CACHED
            )
        )
        self._checked = same


def request_maker(app: web.Application | None, server: web.Server) -> RequestMaker | None:
    """A `RequestMaker` for a server whose request factory is its application's own."""
    if app is None or server.request_factory != app._make_request:
        return None
    return RequestMaker(server.request_factory)
