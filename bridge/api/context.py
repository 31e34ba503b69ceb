"""What the HTTP handlers need, gathered in one object the composition root (app.py) builds."""

from __future__ import annotations

import operator
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from bridge import logs
from bridge.accounts import AccountService
from bridge.api.auth import Authenticator, Principal
from bridge.api.errors import ApiError
from bridge.api.submit import Submitter
from bridge.assignments import Assignments
from bridge.billing import Tariffs
from bridge.config import Config
from bridge.metrics import Metrics
from bridge.rules import SendRules
from bridge.store.base import Store


@dataclass
class ApiContext:
    config: Config
    store: Store
    auth: Authenticator
    submitter: Submitter
    accounts: AccountService
    clock: Callable[[], float] = time.time
    # Hooks the pipeline fills in; the API works without them (tests, `run` before binds are up).
    on_accepted: Callable[[int], None] = lambda n: None
    smsc_status: Callable[[], dict[str, Any]] = dict
    # Reads the bind holders' status afresh, where smsc_status() answers from a copy read every
    # second (an acceptor process; an instance of several on PostgreSQL).
    refresh_smsc_status: Callable[[], Awaitable[None]] | None = None
    on_webhooks_replayed: Callable[[], None] = lambda: None  # wake the webhook sender
    queue_depth: int = 0  # refreshed by the app's background task
    # Acceptor processes the daemon runs (server.workers, or --workers); 0: none. With it the
    # queue view tells a slot whose acceptor is down (restarting after a crash) from a full set.
    workers: int = 0
    accepting: bool = True
    metrics: Metrics = field(default_factory=Metrics)  # the Daemon passes its own
    rules: SendRules | None = None  # built from config and store when not given
    tariffs: Tariffs | None = None
    assignments: Assignments | None = None  # the accounts' assigned senders (cached)

    def __post_init__(self) -> None:
        if self.assignments is None:
            self.assignments = Assignments(self.store, clock=self.clock)
        if self.rules is None:
            self.rules = SendRules(self.config, self.store)
        if self.tariffs is None:
            self.tariffs = Tariffs(self.store, self.config.billing)
        self.submitter.content_filter = self.rules.filter

    @property
    def send_rules(self) -> SendRules:
        assert self.rules is not None
        return self.rules

    @property
    def sender_assignments(self) -> Assignments:
        assert self.assignments is not None
        return self.assignments

    @property
    def tariff_book(self) -> Tariffs:
        assert self.tariffs is not None
        return self.tariffs

    def now_ms(self) -> int:
        return int(self.clock() * 1000)


CTX: web.AppKey[ApiContext] = web.AppKey("ctx", ApiContext)
# An owner's status row older than this is not believed: its binds' state is unknown.
OWNER_SILENT_S = 5.0
# Each face's one-line-a-while log of "store unavailable" (one per app, so per daemon).
STORE_DOWN: web.AppKey[logs.Throttled] = web.AppKey("store_down", logs.Throttled)
REQUEST_ID: web.RequestKey[str] = web.RequestKey("request_id", str)
BODY: web.RequestKey[bytes] = web.RequestKey("body", bytes)
# An `Expect: 100-continue` whose "100 Continue" waits for the first read of the body (bodies.py).
CONTINUE: web.RequestKey[bool] = web.RequestKey("continue", bool)
# Set on a request refused before its body was read: the answer closes the connection.
CLOSE_AFTER: web.RequestKey[bool] = web.RequestKey("close_after", bool)
PRINCIPAL: web.RequestKey[Principal] = web.RequestKey("principal", Principal)
# The named operator (admin.operators) whose token an admin request carried; "" for the shared
# server.admin_token.
OPERATOR: web.RequestKey[str] = web.RequestKey("operator", str)
# A streamed answer cut after its headers went out (their status says 200): the code the request
# is counted with instead of OK, STREAM_FAILED (our fault) or CLIENT_GONE.
STREAM_CUT: web.RequestKey[str] = web.RequestKey("stream_cut", str)


_PROBE: web.RequestKey[int] = web.RequestKey("keys_of_probe", int)


def _keys_in_state() -> bool:
    """Whether aiohttp keeps a request's keys in its `_state` dict (as aiohttp 3.9 to 3.14 do),
    found by what `[]` does on a bare `web.Request`, the class of every request the server
    makes (aiohttp's `_make_request`, `request_maker`): a key stored by `request[KEY] = v` is in
    `_state`, and one put in `_state` is what `request[KEY]` and `in` read. Not by the names
    BaseRequest's two methods use (session 59's first check): a `Request` of its own methods,
    or methods naming `_state` but keeping the keys elsewhere, passed that (session 59's
    review)."""
    try:
        probe = web.Request.__new__(web.Request)
        state: dict[Any, Any] = {}
        probe._state = state
        probe[_PROBE] = 1
        if state != {_PROBE: 1}:
            return False
        state[_PROBE] = 2
        return probe[_PROBE] == 2 and _PROBE in probe
    except Exception:  # an aiohttp whose request cannot be probed so: the request itself
        return False


# A request's keys as a plain dict, for the send's own keys (REQUEST_ID, PRINCIPAL, BODY): its
# `_state`, read by a C getter, where `request[KEY]` is BaseRequest's Python `__getitem__` and
# `__setitem__` (its warning check for a key that is no RequestKey: ours all are), ~600
# instructions a store and ~400 a read on 3.11 (session 59). Where aiohttp keeps them elsewhere,
# the request itself.
keys_of: Callable[[web.BaseRequest], MutableMapping[Any, Any]] = (
    operator.attrgetter("_state") if _keys_in_state() else (lambda request: request)
)

# A route parameter's pattern taking any one path segment, braces included. aiohttp's `{name}`
# matches `[^{}/]+`: a value holding a brace matched no route, a 404 "no such endpoint" where the
# handler's own check answers (the month's, the number's, the list id's 400), on operations
# whose contract lists no 404. Used in `{name:...}` by the routes that validate the parameter.
ANY_SEGMENT = "[^/]+"


_QUERY: web.RequestKey[MultiDictProxy[str]] = web.RequestKey("query", MultiDictProxy)


def query_of(request: web.Request) -> MultiDictProxy[str]:
    """The query as the signature covers it (bridge.api.signing.canonical_query): percent-decoded
    once, a "+" kept as a plus (aiohttp's view makes it a space, so a signed `to=+86...` read as
    " 86..."), and every parameter at most once: the canonical query is sorted, so with a name
    given twice the order (and which value counts) is not signed."""
    cached = request.get(_QUERY)
    if cached is not None:
        return cached
    out: MultiDict[str] = MultiDict()
    for part in request.rel_url.raw_query_string.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        name = unquote(name, errors="replace")
        if name in out:
            raise ApiError("INVALID_FIELD", f"{name}: given more than once")
        out[name] = unquote(value, errors="replace")
    view = MultiDictProxy(out)
    request[_QUERY] = view
    return view
