"""A request whose method and target resolved before to a plain route skips aiohttp's router.

Why (session 58): `Application._handle` resolves every request through the router
(`UrlDispatcher.resolve`: the target's `path_safe`, a walk of its parts in the resource index, a
coroutine per candidate, a `UrlMappingMatchInfo`), then adds the application to the match,
freezes it, looks the middleware chain up in an `lru_cache` keyed by the handler and a tuple of
applications (hashed by a Python `__hash__`) and checks the route by an ABC `isinstance`: ~39 k
instructions of a stubbed send's ~630 k on Python 3.12 (router 17 k). For a frozen application
without sub-applications the answer is a function of the method and the request target alone,
and for a route without variables it is always the same route and chain.

`RouteCache.handle` is the server's request handler in place of `app._handle` (the low-level
server's public `request_handler`). A request goes `_handle`'s way, and its match is learned
after it, unless an earlier request with the same method and target (the raw request-target
string, as the parser read it) matched a route of this application with no variables; then it
gets a match info of its own as `_handle` builds one (that route, this application, frozen)
and the same middleware chain. A request with an Expect header always goes `_handle`'s way (its
expect handler). Learned targets are at most TARGET_MAX characters, without a query; at most
LEARNED of them (then the cache starts again). It is installed only where `_handle`'s source is
one it was written against (`_KNOWN_HANDLE`) and aiohttp's pieces are as read here; else the
server keeps `app._handle`.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import hdrs, web, web_app
from aiohttp.web_urldispatcher import (
    DynamicResource,
    PlainResource,
    StaticResource,
    UrlDispatcher,
    UrlMappingMatchInfo,
)

from bridge.api.plain_request import PLAIN_REQUEST

log = logging.getLogger("bridge.api")

# The SHA-256 of `inspect.getsource(web.Application._handle)` this was written against (aiohttp
# 3.14.3 and 3.14.5); another `_handle` (what it does per request may differ) keeps the server's.
_KNOWN_HANDLE = frozenset({"1294b2b208b126cb02d2f295c89d8c6fb5d789974247276971fc063fb8f5dc21"})
TARGET_MAX = 256
LEARNED = 64
# aiohttp's resources whose match reads the request's method and path alone (`Resource.resolve`
# over `rel_url.path_safe`): a resource of another class (or a router's own `resolve`) may read
# more, a Host header say, and the first request's match would answer every later one.
_OWN_RESOURCES = (PlainResource, DynamicResource, StaticResource)

Handler = Callable[[Any], Awaitable[web.StreamResponse]]


def _source_hash(fn: Any) -> str | None:
    try:
        return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()
    except (OSError, TypeError):
        return None


def _match_info(route: Any, app: web.Application) -> UrlMappingMatchInfo:
    """What `_handle` leaves in `request._match_info` for a route without variables: the match
    info built, the application added, frozen. Without its `__init__`, `add_app` and `freeze`
    (three Python calls); `_fast_match_ok` checks it is the same state at installation."""
    info = UrlMappingMatchInfo.__new__(UrlMappingMatchInfo)
    info._route = route
    info._apps = [app]
    info._current_app = app
    info._frozen = True
    return info


def _fast_match_ok(route: Any, app: web.Application) -> bool:
    """Whether `_match_info` builds what aiohttp's own steps build (its slots, its dict)."""
    real = UrlMappingMatchInfo({}, route)
    real.add_app(app)
    real.freeze()
    fast = _match_info(route, app)
    slots = ("_route", "_apps", "_current_app", "_frozen")
    return (
        dict(fast) == dict(real) == {}
        and all(getattr(fast, s) == getattr(real, s) for s in slots)
        and fast.apps == real.apps
        and fast.current_app is real.current_app
        and getattr(real, "__dict__", None) is None
    )


def _bound(middleware: Any, handler: Handler) -> Handler:
    """`middleware` over `handler`, as aiohttp's `partial(middleware, handler=handler)`: the
    same call (the handler by keyword), through a closure. Why: a `partial` with a keyword
    copies its keywords into a dict on each call, ~1,550 instructions where a closure's call is
    ~570 on Python 3.11 (session 61)."""

    def bound(request: Any) -> Awaitable[web.StreamResponse]:
        return middleware(request, handler=handler)

    return functools.update_wrapper(bound, handler)


def _chain(handler: Handler, layers: tuple[Any, ...]) -> Handler:
    """`handler` inside `layers` (innermost first, as `_middlewares_handlers` lists them and
    aiohttp's `_build_middlewares` wraps them), each `_bound`."""
    for middleware in layers:
        handler = _bound(middleware, handler)
    return handler


def _layers(app: web.Application, build: Any) -> tuple[Any, ...] | None:
    """`app`'s middlewares for `_chain` when the chain aiohttp builds for a route is exactly
    those around its handler: each layer a `partial` of the next middleware with only the next
    layer as `handler` (checked on a stand-in handler, both chains walked); else None (aiohttp's
    chain is used). aiohttp's own `current_app` layer is dropped before, where it changes
    nothing (`http_errors.without_current_app_middleware`)."""

    async def probe(request: Any) -> web.StreamResponse:  # pragma: no cover - never called
        raise AssertionError

    layers = tuple(m for m, _ in app._middlewares_handlers or ())
    theirs: Any = build(probe, (app,))
    ours: Any = _chain(probe, layers)
    for middleware in reversed(layers):
        if (
            type(theirs) is not functools.partial
            or theirs.func is not middleware
            or theirs.args
            or list(theirs.keywords) != ["handler"]
            or _cells(ours) != {"handler": ours.__wrapped__, "middleware": middleware}
        ):
            return None
        theirs, ours = theirs.keywords["handler"], ours.__wrapped__
    return layers if theirs is probe and ours is probe else None


def _cells(fn: Any) -> dict[str, Any]:
    """A closure's free variables by name."""
    cells = fn.__closure__ or ()
    return dict(zip(fn.__code__.co_freevars, [c.cell_contents for c in cells], strict=True))


class RouteCache:
    """The server's request handler: `app._handle`, or for a learned target its steps at once."""

    def __init__(self, app: web.Application, chain_of: Callable[[Any], Handler]) -> None:
        self._app = app
        self._plain: Handler = app._handle
        self._chain_of = chain_of
        # (method, request target) -> (route, the handler with the middlewares around it)
        self._learned: dict[tuple[str, str], tuple[Any, Handler]] = {}

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        # The getters' attributes where they answer them (bridge.api.plain_request).
        plain = PLAIN_REQUEST
        key = (
            (request._method, request._message.path)
            if plain
            else (request.method, request.raw_path)
        )
        hit = self._learned.get(key)
        if hit is None or hdrs.EXPECT in (request._headers if plain else request.headers):
            try:
                return await self._plain(request)
            finally:
                if hit is None:
                    self._learn(key, request)
        route, chain = hit
        request._match_info = _match_info(route, self._app)  # type: ignore[attr-defined]
        return await chain(request)

    def _learn(self, key: tuple[str, str], request: web.BaseRequest) -> None:
        target = key[1]
        # The attribute, not the `match_info` property: this runs in `handle`'s `finally`, and
        # where `_handle` left none (its router raised) the property's assert raised over the
        # request's own exception, which the connection then logged (session 58's review).
        info = getattr(request, "_match_info", None)
        if (
            type(info) is not UrlMappingMatchInfo
            or info
            or len(target) > TARGET_MAX
            or "?" in target
            or "#" in target
            or not target.startswith("/")
            or info.apps != (self._app,)
        ):
            return
        route = info.route
        if isinstance(route, web_app.SystemRoute):  # pragma: no cover - a MatchInfoError's
            return
        if len(self._learned) >= LEARNED:
            self._learned.clear()
        self._learned[key] = (route, self._chain_of(route.handler))


def route_cache(app: web.Application | None, server: web.Server) -> RouteCache | None:
    """A `RouteCache` for `server` when everything it relies on is as it was written against:
    `_handle`'s source, aiohttp's router and resources (`_OWN_RESOURCES`), a frozen application
    without sub-applications or domain resources whose server calls its `_handle`, aiohttp's
    middleware chain builder; else None (the server keeps `app._handle`)."""
    if app is None or type(app)._handle is not web.Application._handle:
        return None
    router = app.router
    if (
        _source_hash(web.Application._handle) not in _KNOWN_HANDLE
        or type(router) is not UrlDispatcher
        or any(type(r) not in _OWN_RESOURCES for r in router.resources())
        or not app.frozen
        or getattr(app, "_subapps", True)
        or getattr(router, "_matched_sub_app_resources", True)
        or server.request_handler != app._handle
        or app._has_legacy_middlewares is not False
        or app._run_middlewares not in (True, False)
    ):
        return None
    build = getattr(web_app, "_cached_build_middleware", None)
    if build is None:
        return None
    apps = (app,)
    layers = _layers(app, build) if app._run_middlewares else None
    if layers is not None:

        def chain_of(handler: Any) -> Handler:
            return _chain(handler, layers)

    elif app._run_middlewares:

        def chain_of(handler: Any) -> Handler:
            return build(handler, apps)

    else:

        def chain_of(handler: Any) -> Handler:
            return handler

    routes = [r for r in router.routes() if isinstance(r, web.ResourceRoute)]
    if routes and not _fast_match_ok(routes[0], app):
        return None
    return RouteCache(app, chain_of)
