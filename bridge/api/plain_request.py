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
    """Whether a `web.Request`'s reified `headers`, `method`, `content`, `rel_url` and
    `raw_path` answer its `_headers`, `_method`, `_payload`, `_rel_url` and its message's `path`
    (aiohttp 3.9 to 3.14 store them so in `BaseRequest.__init__`, and `request_maker` does):
    found by asking them of a bare `web.Request` holding stand-ins."""
    try:
        probe: Any = web.Request.__new__(web.Request)
        message = _StandInMessage()
        probe._cache = {}
        probe._message = message
        probe._headers, probe._method, probe._payload, probe._rel_url = stand = (
            object(), object(), object(), object(),
        )  # fmt: skip
        answers = (probe.headers, probe.method, probe.content, probe.rel_url, probe.raw_path)
        return all(a is b for a, b in zip(answers, (*stand, message.path), strict=True))
    except Exception:  # an aiohttp whose request cannot be probed so: its getters
        return False


class _StandInMessage:
    path = object()


# Whether the send path reads a request's headers, method, body stream, URL and raw path from
# the attributes its getters answer (`request._headers` for `request.headers` ...), where each
# getter is a `reify` read: ~560 instructions on Python 3.11 where an attribute's is ~80, a dozen
# reads a send (session 61). Else the getters.
PLAIN_REQUEST: bool = _plain_getters()
