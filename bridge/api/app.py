"""The aiohttp application: middlewares (request id, error envelope, auth) and routes."""

from __future__ import annotations

import logging
import time

from aiohttp import web

from bridge.api import admin, admin_ops, reports, v1
from bridge.api.context import BODY, CTX, PRINCIPAL, REQUEST_ID, ApiContext
from bridge.api.errors import CODES, ApiError, envelope
from bridge.api.openapi import openapi_document
from bridge.ids import random_bytes

log = logging.getLogger("bridge.api")

_HTTP_CODES = {
    400: "INVALID_REQUEST",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "BODY_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
}


def _error_response(
    code: str, message: str, request_id: str, status: int, headers: dict[str, str] | None = None
) -> web.Response:
    resp = v1.json_response(envelope(code, message, request_id), status=status, headers=headers)
    resp.headers["X-Request-Id"] = request_id
    return resp


@web.middleware
async def errors_middleware(request: web.Request, handler):
    """Every response carries a request id; every refusal is the JSON envelope, not a traceback."""
    request_id = "req_" + random_bytes(8).hex()
    request[REQUEST_ID] = request_id
    started = time.perf_counter()
    try:
        resp = await handler(request)
    except ApiError as exc:
        log.info(
            "refused request_id=%s method=%s path=%s status=%s code=%s",
            request_id,
            request.method,
            request.path,
            exc.status,
            exc.code,
        )
        return _error_response(exc.code, exc.message, request_id, exc.status, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "INVALID_REQUEST")
        message = {
            404: f"no such endpoint: {request.method} {request.path}",
            405: f"method {request.method} not allowed on {request.path}",
            413: "the request body is too large",
        }.get(exc.status, exc.reason)
        # Keep what the status requires (Allow on a 405); the body is ours.
        kept = {k: v for k, v in exc.headers.items() if k.lower() == "allow"}
        return _error_response(code, message, request_id, exc.status, kept or None)
    except Exception:
        log.exception("internal error request_id=%s path=%s", request_id, request.path)
        return _error_response(
            "INTERNAL_ERROR",
            "internal error; quote the request id to the operator",
            request_id,
            CODES["INTERNAL_ERROR"],
        )
    resp.headers["X-Request-Id"] = request_id
    log.debug(
        "request_id=%s method=%s path=%s status=%s ms=%.1f",
        request_id,
        request.method,
        request.path,
        resp.status,
        (time.perf_counter() - started) * 1000,
    )
    return resp


@web.middleware
async def auth_middleware(request: web.Request, handler):
    path = request.path
    if path.startswith("/v1/"):
        ctx: ApiContext = request.app[CTX]
        body = await request.read()
        request[BODY] = body
        # A send records its nonce inside its accept transaction (one write, not two).
        defer = request.method == "POST" and path == "/v1/messages"
        request[PRINCIPAL] = await ctx.auth.authenticate(request, body, defer=defer)
    elif path.startswith("/admin/"):
        admin.check_admin(request)
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    return v1.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ctx: ApiContext = request.app[CTX]
    problems = []
    try:
        if not await ctx.store.ping():
            problems.append("store not reachable")
    except Exception as exc:
        problems.append(f"store not reachable: {type(exc).__name__}")
    smscs = ctx.smsc_status()
    if smscs and not any(s.get("up") for s in smscs.values()):
        problems.append("no SMSC bound")
    if not ctx.accepting:
        problems.append("shutting down")
    body = {
        "status": "ready" if not problems else "not ready",
        "problems": problems,
        "smscs": {k: bool(v.get("up")) for k, v in smscs.items()},
    }
    return v1.json_response(body, status=200 if not problems else 503)


async def openapi(request: web.Request) -> web.Response:
    return v1.json_response(openapi_document())


def make_app(ctx: ApiContext) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware, auth_middleware],
        client_max_size=ctx.config.server.max_body_bytes,
        handler_args={
            "max_line_size": ctx.config.server.max_line_size,
            "max_field_size": ctx.config.server.max_line_size,
        },
    )
    app[CTX] = ctx
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/openapi.json", openapi)
    v1.add_routes(app)
    admin.add_routes(app)
    reports.add_routes(app)
    admin_ops.add_routes(app)
    return app
