"""The aiohttp application: middlewares (request id, error envelope, auth) and routes."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from bridge import audit, jsonio, logs
from bridge.api import (
    admin,
    admin_messages,
    admin_mo,
    admin_ops,
    admin_rules,
    idempotency,
    reports,
    rules_api,
    v1,
)
from bridge.api.accepted import Accepted
from bridge.api.auth import CALLER
from bridge.api.bodies import (
    CLOSING_CODES,
    body_pending,
    close_after,
    declared_too_large,
    http_limits,
    read_sent_body,
    refuse_encoding,
    sent_body_now,
    use_deferred_continue,
)
from bridge.api.context import (
    BODY,
    CLOSE_AFTER,
    CTX,
    OPERATOR,
    OWNER_SILENT_S,
    PRINCIPAL,
    REQUEST_ID,
    STORE_DOWN,
    STREAM_CUT,
    ApiContext,
    keys_of,
)
from bridge.api.errors import CODES, STORE_RETRY_AFTER_S, ApiError, envelope
from bridge.api.openapi import openapi_document
from bridge.api.plain_request import PLAIN_REQUEST
from bridge.domain import forwarded
from bridge.domain.phone import mask as mask_phone
from bridge.ids import new_request_id
from bridge.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from bridge.store.base import CHUNKED_KINDS, is_unavailable
from bridge.store.models import AuditEntry

log = logging.getLogger("bridge.api")
_scrape_failures = logs.Failures(log, is_unavailable)  # /metrics, while the store is down

_HTTP_CODES = {
    400: "INVALID_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "BODY_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
}


def _error_response(
    code: str,
    message: str,
    request_id: str,
    status: int,
    headers: dict[str, str] | None = None,
    details: Mapping[str, Any] | None = None,
) -> web.Response:
    body = envelope(code, message, request_id, details)
    resp = v1.json_response(body, status=status, headers=headers)
    resp.headers["X-Request-Id"] = request_id
    return resp


def _endpoint(request: web.Request) -> str:
    """The metrics label: method and route template; never the raw path (unbounded)."""
    # The getter's attribute where it answers it (bridge.api.plain_request); none: the getter.
    match = request._match_info if PLAIN_REQUEST else None
    if match is None:
        match = request.match_info
    route = match.route
    # Kept per route of the apps' routers: the label was an f-string of property reads on every
    # answer. A route of one method matched only that method (a "*" route, whose label follows
    # the request, is not kept); the unmatched answers' routes, made per request, have no
    # resource or an `http_exception` and are not kept either.
    label = _LABELS.get(route)
    if label is not None:
        return label
    resource = route.resource
    if resource is None or match.http_exception is not None:
        return "unmatched"
    label = f"{request.method} {resource.canonical}"
    if route.method == request.method:  # not a "*" route
        _LABELS[route] = label
    return label


# The metrics label of each route of the apps' routers (bounded: routes are made at start).
_LABELS: dict[object, str] = {}


_PHONE_SEGMENT = re.compile(r"\+?\d{6,}")
# What phone.normalize drops from a number before reading it ("+86 138-0013-8000").
_NUMBER_SEPARATORS = re.compile(r"[\s\-().]")


def _log_path(request: web.Request) -> str:
    """The path as log lines may show it: routes carry phone numbers (/v1/optouts/{number},
    erasure, admin), so with masking on such a segment is masked like every number in the logs:
    the route's {number} as the account wrote it (spaces, dashes, brackets and all), and any
    other segment that is a run of digits. Control characters escaped: it goes into messages
    too (logs.one_line)."""
    return logs.one_line(_masked_path(request) if logs.masking() else request.path)


def _masked_path(request: web.Request) -> str:
    path = request.path
    number = request.match_info.get("number")
    return "/".join(
        mask_phone(_NUMBER_SEPARATORS.sub("", seg)) or seg
        if seg and (seg == number or _PHONE_SEGMENT.fullmatch(seg))
        else seg
        for seg in path.split("/")
    )


def client_of(request: web.Request) -> str | None:
    """The client's address, for the audit trail and the logs: the peer, or behind a trusted
    reverse proxy (server.trusted_proxies) the address its X-Forwarded-For, or Forwarded
    (server.forwarded_header), names."""
    server = request.app[CTX].config.server
    if not server.trusted_proxies:
        return request.remote
    header = server.forwarded_header
    return forwarded.client_from_headers(
        request.remote,
        request.headers.getall(header, ()),
        header,
        forwarded.networks(server.trusted_proxies),
    )


# Answers whose body is whole when their handler returns them (no stream to be cut): their type
# compared, not an isinstance of the ABC web.Response is (~1 k each on 3.12).
_WHOLE = (web.Response, Accepted)


def errors_middleware(ctx: ApiContext) -> Middleware:
    """The app's first middleware, over its context (the app's `CTX`), which it reads from the
    closure instead of through `request.app` (two properties and a Python `__getitem__`) on
    every answer."""

    @web.middleware
    async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        """Every response carries a request id; every refusal is the JSON envelope, not a traceback.
        Every answer is counted, and every line logged while handling it carries the request id."""
        request_id = new_request_id()
        keys_of(request)[REQUEST_ID] = request_id
        token = logs.REQUEST_ID.set(request_id)
        started = time.perf_counter()
        try:
            # The handler awaited here, its refusals answered by a plain function: a coroutine of
            # its own for the try was a frame and an await more on every request.
            try:
                resp, code = await handler(request), "OK"
            except Exception as exc:
                resp, code = _refused(request, exc, request_id)
        finally:
            logs.REQUEST_ID.reset(token)
        # Server is aiohttp's default, ours for every answer (http_errors.name_every_answer).
        resp.headers["X-Request-Id"] = request_id
        path = request.path  # a property: read once
        if path.startswith("/admin/") and audit.mutating_method(request.method):
            await _audit(request, resp.status, code, request_id)
        if code != "OK" and (code in CLOSING_CODES or CLOSE_AFTER in request):
            await close_after(request, resp, drain=code not in CLOSING_CODES)
        elapsed = time.perf_counter() - started
        metrics = ctx.metrics
        status = resp.status  # a property: read once
        # Headers said 200, then the stream broke: only a streamed answer (reports.py), so only one
        # is looked up (a request key missing is a KeyError raised and caught, ~0.8 µs).
        if code != "OK":
            pass
        elif type(resp) is Accepted:
            # A send's 202 (v1's handler): a whole answer, its headers Accepted's Content-Type and
            # the request id above, never a replay's (~1,000 instructions of each send: the
            # headers' lookup, the stream's check).
            if status == 202 and path == "/v1/messages":
                metrics.accept(elapsed)
        elif type(resp) not in _WHOLE and STREAM_CUT in request:
            code = request[STREAM_CUT]
        elif status >= 400:  # /readyz's 503: an answer, not a refusal
            code = "NOT_READY" if status == 503 else f"HTTP_{status}"
        elif "Idempotent-Replayed" in resp.headers:
            code = "REPLAYED"
        elif status == 202 and path == "/v1/messages":
            metrics.accept(elapsed)
        metrics.request(_endpoint(request), status, code)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "answered",
                extra={
                    "request_id": request_id,
                    "method": request.method,
                    "path": _log_path(request),
                    "status": status,
                    "code": code,
                    "ms": round(elapsed * 1000, 1),
                    "remote": client_of(request),
                },
            )
        return resp

    return errors_middleware


async def _audit(request: web.Request, status: int, code: str, request_id: str) -> None:
    """An operator's action into the audit trail (bridge/audit.py), before the answer leaves.
    A request the admin token refused, or to no route, is logged only: anyone can send those,
    and a stored row each would let them fill the store."""
    ctx: ApiContext = request.app[CTX]
    resource = request.match_info.route.resource
    entry = AuditEntry(
        at=ctx.now_ms(),
        actor=audit.api_actor(request.headers.get("X-Operator"), request.get(OPERATOR)),
        action=f"{request.method} {resource.canonical if resource is not None else request.path}",
        # Masked whatever logging.mask_bodies says: the trail is kept for good and erasure
        # does not reach it, so a full number there would outlive the person's erasure.
        target=audit.clean(_masked_path(request)),
        status=status,
        code=None if code == "OK" else code,
        request_id=request_id,
        remote=client_of(request),
    )
    fields = {"actor": entry.actor, "action": entry.action, "path": _log_path(request),
              "status": status, "code": entry.code, "remote": entry.remote}  # fmt: skip
    if resource is None or status in (401, 403):
        log.warning("admin request refused", extra=fields)
        return
    log.info("operator action", extra=fields)
    try:
        await ctx.store.audit_add(entry)
    except Exception:  # the action is done; its answer is not withheld for the trail
        log.error("audit trail write failed", extra=fields, exc_info=True)


def _caller(request: web.Request) -> dict[str, str]:
    """The app key and account a /v1/ request came with, as far as its checks got: at the default
    level a refusal is the only line a request leaves, and a customer's "our requests fail"
    is looked up by its account or key, which the line did not name."""
    principal = request.get(PRINCIPAL)
    if principal is not None:
        return {"account": principal.account.id, "app_key": principal.key.key_id}
    caller = request.get(CALLER)
    if caller is None:
        return {}
    key, account = caller
    return {"app_key": key} if account is None else {"account": account, "app_key": key}


def _refused(
    request: web.Request, exc: Exception, request_id: str
) -> tuple[web.StreamResponse, str]:
    """The answer to a handler's exception and its error code; raised again when it is no
    refusal (an HTTP answer under 400)."""
    if isinstance(exc, ApiError):
        log.info(
            "refused",
            extra={
                "method": request.method,
                "path": _log_path(request),
                "status": exc.status,
                "code": exc.code,
                "remote": client_of(request),
                **_caller(request),
            },
        )
        resp = _error_response(
            exc.code, exc.message, request_id, exc.status, exc.headers, exc.details
        )
        return resp, exc.code
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        code = _HTTP_CODES.get(exc.status, "INVALID_REQUEST")
        message = {
            404: f"no such endpoint: {request.method} {request.path}",
            405: f"method {request.method} not allowed on {request.path}",
            413: "the request body is too large",
        }.get(exc.status, exc.reason)
        # Keep what the status requires (Allow on a 405); the body is ours.
        kept = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return _error_response(code, message, request_id, exc.status, kept or None), code
    if is_unavailable(exc):
        # One line a while, not one per refused request (hundreds a second under load).
        down = request.app[STORE_DOWN]
        down.error(f"store unavailable ({request.method} {_log_path(request)})", exc)
        return _error_response(
            "STORE_UNAVAILABLE",
            "the store cannot be reached; retry later (a send with the same Idempotency-Key "
            "is answered once)",
            request_id,
            CODES["STORE_UNAVAILABLE"],
            {"Retry-After": str(STORE_RETRY_AFTER_S)},
        ), "STORE_UNAVAILABLE"
    log.exception("internal error", extra={"method": request.method, "path": _log_path(request)})
    return _error_response(
        "INTERNAL_ERROR",
        "internal error; quote the request id to the operator",
        request_id,
        CODES["INTERNAL_ERROR"],
    ), "INTERNAL_ERROR"


def auth_middleware(ctx: ApiContext) -> Middleware:
    """The API app's second middleware, over its context (as `errors_middleware`)."""

    @web.middleware
    async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if path.startswith("/v1/"):
            # Refused from the headers (415, the signing headers' checks; a declared 413 before
            # those) before a byte of the body is read; the connection is closed behind the
            # answer. A send records its nonce inside its accept transaction (one write).
            method = request._method if PLAIN_REQUEST else request.method
            defer = method == "POST" and path == "/v1/messages"
            try:
                refuse_encoding(request)
                keys_of(request)[PRINCIPAL] = await ctx.auth.authenticate(
                    request, _signed_body, defer=defer, read_now=_signed_body_now
                )
            except ApiError as exc:
                if body_pending(request):  # not read: the stream cannot carry another request
                    request[CLOSE_AFTER] = True
                # A Content-Length over the limit is 413 before a signature refusal (401), as
                # when the body was read first; asked only here, it costs the requests that
                # pass nothing.
                if exc.status == 401 and declared_too_large(
                    request, ctx.config.server.max_body_bytes
                ):
                    raise ApiError("BODY_TOO_LARGE", "the request body is too large") from None
                raise
            if defer:
                # A send: its path is neither /admin/ nor one with U+0000 (_check_path), and it
                # keeps its own idempotency record (idempotency._OWN_PATHS): its handler.
                return await handler(request)
        _check_path(request, path)
        if idempotency.applies(request):  # here, not a middleware of its own: a send pays nothing
            account_id = request[PRINCIPAL].account.id
            return await idempotency.run_once(ctx, request, account_id, request[BODY], handler)
        return await handler(request)

    return auth_middleware


def _check_path(request: web.Request, path: str) -> None:
    """What both the API's and the admin listener's middleware check of every request: the
    admin token on /admin/, and no U+0000 (%00) in the path (no store holds it: PostgreSQL
    text refused it with a 500)."""
    if path.startswith("/admin/"):
        _check_admin(request)
    if "\x00" in path:
        raise ApiError("INVALID_REQUEST", "the path holds a U+0000 character (%00)")


def _check_admin(request: web.Request) -> None:
    """The admin token, checked before the body; a refusal with the body unread closes the
    connection, as a signed request's does."""
    try:
        admin.check_admin(request)
    except ApiError:
        if body_pending(request):
            request[CLOSE_AFTER] = True
        raise


async def _signed_body(request: web.Request) -> bytes:
    """The body of a /v1/ request whose signing headers passed (Authenticator.authenticate)."""
    body = await read_sent_body(request, request.app[CTX].config.server.body_timeout_s)
    request[BODY] = body
    return body


def _signed_body_now(request: web.Request) -> bytes | None:
    """`_signed_body`'s answer when it has nothing to wait for (`sent_body_now`), else None."""
    body = sent_body_now(request)
    if body is not None:
        keys_of(request)[BODY] = body
    return body


@web.middleware
async def admin_listener_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """auth_middleware of the admin listener, which serves no /v1/: such a path is 404 there,
    not a signature check. Said so: `send --url` pointed at this port was a bare "no such
    endpoint", which reads as a missing route, not as the wrong port."""
    if request.path.startswith("/v1/"):
        if body_pending(request):  # not read: the stream cannot carry another request
            request[CLOSE_AFTER] = True
        raise ApiError(
            "NOT_FOUND",
            f"no such endpoint: {request.method} {request.path}: this is the admin "
            "listener (server.admin_port); the API is on server.port",
        )
    _check_path(request, request.path)
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    return v1.json_response({"status": "ok"})


READY_PING_S = 2.0  # the store ping /readyz waits for


def _quiet(task: asyncio.Future[Any]) -> None:
    """Retrieve an abandoned read's outcome, so asyncio does not log it as never retrieved."""
    if not task.cancelled():
        task.exception()


async def _within(aw: Awaitable[Any]) -> asyncio.Future[Any] | None:
    """`aw`, done, or None after READY_PING_S: then it is cancelled and winds up in the
    background, its outcome retrieved. Not wait_for: it waits for the cancelled call to wind
    up, and asyncpg's cancel request goes down the same dead path."""
    fut = asyncio.ensure_future(aw)
    done, _ = await asyncio.wait({fut}, timeout=READY_PING_S)
    if not done:
        fut.cancel()
        fut.add_done_callback(_quiet)
        return None
    return fut


async def readyz(request: web.Request) -> web.Response:
    ctx: ApiContext = request.app[CTX]
    problems, smscs = await ready_problems(ctx)
    body = {
        "status": "ready" if not problems else "not ready",
        "problems": problems,
        "warnings": receivers_down(smscs),
        "smscs": {
            k: None if v.get("state") == "unknown" else bool(v.get("up")) for k, v in smscs.items()
        },
    }
    return v1.json_response(body, status=200 if not problems else 503)


def _senders(smscs: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The SMSCs readiness asks about: those that can send (a status without `sending`, from a
    release before session 50, counts as one), or, on a daemon for MO alone (every SMSC a
    receiver), every SMSC. A receive-only SMSC's `up` is its receiving bind: the daemon for MO
    alone was not ready for ever, but beside SMSCs that send, their outage is "no SMSC bound"
    even with an MO link up."""
    senders = [s for s in smscs.values() if admin_ops.configured_to_send(s)]
    return senders or list(smscs.values())


def receivers_down(smscs: dict[str, dict[str, Any]]) -> list[str]:
    """/readyz's warnings: SMSCs configured to receive with no receiving bind up while they
    send (bind_mode transmitter_receiver with its receivers down). Not a problem (the messages
    still go out, and carriers keep receipts for a while), but nothing comes in: shown, as
    `smpp-bridge status` does, rather than left to the bind counts."""
    return [
        f"SMSC {name}: no receiving bind up (its receipts and MO wait at the carrier)"
        for name, s in smscs.items()
        if s.get("receiving") is False and s.get("up") and s.get("state") in (None, "up")
    ]


async def ready_problems(ctx: ApiContext) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Why this process would answer /readyz 503 now (none: ready), and the SMSCs' status
    it read. /readyz and the `smpp_bridge_ready` gauge both ask here."""
    problems = []
    # Bounded: cut off from PostgreSQL without a reset, the ping waited for the driver's 60 s
    # command timeout and the probe got no answer at all.
    ping = await _within(ctx.store.ping())
    if ping is None:
        problems.append(f"store not reachable: no answer in {READY_PING_S:g} s")
    elif ping.exception() is not None:
        problems.append(f"store not reachable: {type(ping.exception()).__name__}")
    elif not ping.result():
        problems.append("store not reachable")
    else:
        why = ctx.store.write_problem()
        if why is not None:  # sends answer 503 STORE_UNAVAILABLE meanwhile
            problems.append(why)
    if not problems and ctx.refresh_smsc_status is not None:
        # The copy this process keeps of another's binds may be a second old: an acceptor that
        # read it just before the owner's bind came up answered 503 while its sibling on the
        # same port answered 200.
        fresh = await _within(ctx.refresh_smsc_status())
        if fresh is not None:
            _quiet(fresh)  # a failed read leaves the copy as it was
    smscs = ctx.smsc_status()
    if any(s.get("state") == "unknown" for s in smscs.values()):
        # Not "no SMSC bound": the binds may well be up; the operator looks at the owner and
        # the store, not at the carrier.
        problems.append(
            f"no status from the owner process for {OWNER_SILENT_S:g} s (its store writes "
            "stall, or it is gone)"
        )
    elif smscs and not any(s.get("up") for s in _senders(smscs)):
        problems.append("no SMSC bound")
    if not ctx.accepting:
        problems.append("shutting down")
    return problems, smscs


_OPENAPI_BODY: bytes | None = None


async def openapi(request: web.Request) -> web.Response:
    """The document's bytes, built once per process: served unauthenticated, a deep copy and
    its serialisation (159 KB) cost ~3.6 ms of CPU per request, an easy lever on the loop."""
    global _OPENAPI_BODY
    if _OPENAPI_BODY is None:
        _OPENAPI_BODY = jsonio.dumps(openapi_document())
    return web.Response(body=_OPENAPI_BODY, content_type="application/json")


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format. Gauges are filled now, from state this process already keeps."""
    ctx: ApiContext = request.app[CTX]
    if not ctx.config.server.metrics:
        raise ApiError("NOT_FOUND", "metrics are disabled on this server (server.metrics: false)")
    m = ctx.metrics
    # Readiness as /readyz answers it now (the same store ping and bind status), so an alert
    # needs no probe of its own: a failed WAL fsync, a full disk, no SMSC bound.
    problems, smscs = await ready_problems(ctx)
    m.ready.set(0 if problems else 1)
    m.observe_smscs(smscs)
    # Counted now (off the event loop), scheduled messages included; the API's own copy is
    # the due backlog that back-pressure compares (bridge/app.py), refreshed every 1-10 s.
    depth = ctx.queue_depth
    try:
        depth = await ctx.store.queue_depth()
    except Exception as exc:
        _scrape_failures.failed("metrics: counting the queue", exc)
    else:
        _scrape_failures.ok("metrics: counting the queue")
    m.queue_depth.set(depth)
    try:
        total, _older = await ctx.store.count_unmatched_receipts(ctx.now_ms())
        m.receipts_unmatched_pending.set(total)
    except Exception as exc:  # a store hiccup must not cost the scrape the other numbers
        _scrape_failures.failed("metrics: counting unmatched receipts", exc)
    else:
        _scrape_failures.ok("metrics: counting unmatched receipts")
    try:
        pending, dead, oldest = await ctx.store.webhook_backlog()
    except Exception as exc:
        _scrape_failures.failed("metrics: counting webhook reports", exc)
    else:
        _scrape_failures.ok("metrics: counting webhook reports")
        m.webhook_reports.labels("pending").set(pending)
        m.webhook_reports.labels("dead").set(dead)
        age_ms = 0 if oldest is None else max(0, ctx.now_ms() - oldest)
        m.webhook_oldest_pending.set(age_ms / 1000)
    try:
        work = await ctx.store.chunked_work()
    except Exception as exc:
        _scrape_failures.failed("metrics: counting chunked operations", exc)
    else:
        _scrape_failures.ok("metrics: counting chunked operations")
        for kind in CHUNKED_KINDS:  # all shown: PostgreSQL has no senders walk
            count, worked = work.get(kind, (0, None))
            m.chunked_operations.labels(kind).set(count)
            stalled = 0 if worked is None else max(0, ctx.now_ms() - worked)
            m.chunked_stalled.labels(kind).set(stalled / 1000)
    return web.Response(body=m.exposition(), headers={"Content-Type": METRICS_CONTENT_TYPE})


def render_unparsed(status: int, code: str, message: str) -> tuple[int, bytes, str, str, str]:
    """A request the HTTP parser refused, in the native envelope. For `bridge.api.http_errors`."""
    rid = new_request_id()
    return status, jsonio.dumps(envelope(code, message, rid)), "application/json", rid, code


def make_app(ctx: ApiContext, *, admin_only: bool = False) -> web.Application:
    """The native face; with `admin_only`, the admin listener's app (server.admin_port): the
    operator's endpoints and the probes, no /v1/ (that port is outside max_connections)."""
    app = web.Application(
        middlewares=(
            [errors_middleware(ctx), admin_listener_middleware]
            if admin_only
            else [errors_middleware(ctx), auth_middleware(ctx)]
        ),
        client_max_size=ctx.config.server.max_body_bytes,
        handler_args=http_limits(ctx.config.server.max_line_size),
    )
    app[CTX] = ctx
    app[STORE_DOWN] = logs.Throttled(log)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/metrics", metrics)
    if not admin_only:
        v1.add_routes(app)
        reports.add_routes(app)
        rules_api.add_routes(app)
    admin.add_routes(app)
    admin_ops.add_routes(app)
    admin_rules.add_routes(app)
    admin_mo.add_routes(app)
    admin_messages.add_routes(app)
    use_deferred_continue(app)
    return app
