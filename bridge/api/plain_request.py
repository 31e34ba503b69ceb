"""Whether the send path may read a request's attributes where its getters would.

Why (session 61): `web.Request`'s `headers`, `method`, `content`, `rel_url` and `raw_path` are
`reify` properties (propcache's `under_cached_property`): a read looks the request's `_cache`
dict up through the generic attribute lookup and then the name in it, ~560 instructions on
Python 3.11, where a plain attribute's read is ~80. A send read them about a dozen times (the
route cache, the middlewares, the signature's checks, the body's read, the handler). Each getter
answers an attribute `BaseRequest.__init__` (and `bridge.api.request_maker`) stores: the send
path reads that attribute where `PLAIN_REQUEST` says the getters are so, else the getter. Not
`operator.attrgetter`: its call is ~500 instructions itself.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web


def _plain_getters() -> bool:
    """Whether a `web.Request`'s reified `headers`, `method`, `content`, `rel_url`, `raw_path`,
    `version` and `keep_alive` and its `match_info`, `client_max_size` and `writer` answer its
    `_headers`, `_method`, `_payload`, `_rel_url`, its message's `path`, `_version`, its
    message's `should_close` negated, `_match_info`, `_client_max_size` and `_payload_writer`
    (aiohttp 3.9 to 3.14 store them so in `BaseRequest.__init__`, as `request_maker` does, and
    the router or `route_cache` the match): found by asking them of two bare `web.Request`s
    holding stand-ins."""
    try:
        for should_close in (False, True):
            probe: Any = web.Request.__new__(web.Request)
            message = _StandInMessage(should_close)
            probe._cache = {}
            probe._message = message
            stand = tuple(object() for _ in range(8))
            (
                probe._headers, probe._method, probe._payload, probe._rel_url, probe._version,
                probe._match_info, probe._client_max_size, probe._payload_writer,
            ) = stand  # fmt: skip
            answers = (
                probe.headers, probe.method, probe.content, probe.rel_url, probe.version,
                probe.match_info, probe.client_max_size, probe.writer, probe.raw_path,
            )  # fmt: skip
            if not all(a is b for a, b in zip(answers, (*stand, message.path), strict=True)):
                return False
            if probe.keep_alive is not (not should_close):
                return False
        return True
    except Exception:  # an aiohttp whose request cannot be probed so: its getters
        return False


class _StandInMessage:
    def __init__(self, should_close: bool) -> None:
        self.path = object()
        self.should_close = should_close


# Whether the send path reads a request's headers, method, body stream, URL and raw path from
# the attributes its getters answer (`request._headers` for `request.headers` ...), where each
# getter is a `reify` read: ~560 instructions on Python 3.11 where an attribute's is ~80, a dozen
# reads a send (session 61). Else the getters.
PLAIN_REQUEST: bool = _plain_getters()
