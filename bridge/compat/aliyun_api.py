"""The Alibaba Cloud SMS (Dysmsapi 2017-05-25) face: an aiohttp app on its own port.

Official SDKs pointed at this port (endpoint override) work unchanged: every call is `POST /` (or
GET) with the action in `Action` / `x-acs-action`, signed with the app key as AccessKeyId and the
app secret as AccessKeySecret (RPC v1 HMAC-SHA1 or ACS3). Checks in the native order: well-formed,
clock skew, key, signature, nonce (recorded only after the signature verified), account, action.
Every answer, the framework's own 404/405/413 included, is Alibaba's JSON (or XML) envelope.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from bridge import logs
from bridge.api.app import client_of
from bridge.api.auth import loggable_key
from bridge.api.bodies import (
    CLOSING_CODES,
    body_pending,
    close_after,
    declared_too_large,
    http_limits,
    read_body,
    refuse_encoding,
    use_deferred_continue,
)
from bridge.api.context import CTX, STORE_DOWN, ApiContext
from bridge.api.errors import STORE_RETRY_AFTER_S, ApiError
from bridge.api.http_errors import ALIYUN_ENDPOINT
from bridge.compat.aliyun_actions import ACTIONS
from bridge.compat.aliyun_codes import retry_after_headers, to_aliyun
from bridge.compat.aliyun_errors import (
    AliyunAuthError,
    Missing,
    framework_error,
    protocol_error,
)
from bridge.compat.aliyun_render import render, render_error
from bridge.compat.aliyun_sign import check_timestamp, early_check, parse_request, query_format
from bridge.store.base import is_unavailable
from bridge.store.models import AppKey

log = logging.getLogger("bridge.aliyun")
_RID = web.RequestKey("aliyun_request_id", str)  # the call's id (set by errors_middleware)

_PERMITS = re.compile(r"at most (\d+) message")  # bridge.domain.frequency.error_message
_NONCE_PREFIX = "acs:"  # own namespace in the nonce table: never collides with native nonces
_AUTH_REFUSALS = {
    "nonce_reused": "SignatureNonceUsed",
    "revoked": "InvalidAccessKeyId.Inactive",
    "unknown_key": "InvalidAccessKeyId.NotFound",
}


def _permits(exc: ApiError) -> int | None:
    """The limit a frequency refusal hit, for Alibaba's exact `触发分钟级流控Permits:<n>`."""
    if not exc.code.startswith("FREQUENCY_LIMIT_"):
        return None
    found = _PERMITS.search(exc.message)
    return int(found.group(1)) if found else None


def _request_id() -> str:
    return str(uuid.uuid4()).upper()


def _respond(
    body: bytes, ctype: str, status: int, rid: str, headers: dict[str, str]
) -> web.Response:
    resp = web.Response(body=body, status=status, headers=headers)
    resp.headers["Content-Type"] = ctype
    resp.headers["x-acs-request-id"] = rid
    return resp


# Calls that accept messages: their OK answers are timed in smpp_bridge_accept_latency_seconds,
# as POST /v1/messages 202s are (a deployment using only this face had no accept latency).
_SENDS = frozenset({"SendSms", "SendBatchSms"})


async def handle(request: web.Request) -> web.Response:
    started = time.perf_counter()
    ctx: ApiContext = request.app[CTX]
    rid = request.get(_RID) or _request_id()
    fmt = "JSON"
    action = "Unknown"
    unread = False  # refused with the body still coming: the answer closes the connection
    who: dict[str, str] = {}  # the caller as far as the checks got, for a refusal's log line
    try:
        if body_pending(request):
            unread = True
            fmt = query_format(request.rel_url.raw_query_string)  # the call's, as it will be
            await _check_headers(request, ctx)
            unread = False
        body = await read_body(request, ctx.config.server.body_timeout_s)
        call = parse_request(
            request.method,
            request.rel_url.raw_path,
            request.rel_url.raw_query_string,
            request.headers,
            body,
            request.headers.get("Content-Type"),
        )
        fmt, action = call.format, call.action
        skew = ctx.config.aliyun.clock_skew_s
        if loggable_key(call.access_key_id):
            who = {"app_key": call.access_key_id}
        key, secret = await _clock_and_key(ctx, call.timestamp, call.access_key_id)
        who = {"account": key.account_id, "app_key": key.key_id}
        call.verify(secret)
        now = ctx.now_ms()
        ctx.auth.key_use.note(key.key_id, now)
        outcome, account = await ctx.store.authorize_request(
            # + 1 s, as the native path: a call dated at the skew limit could be replayed at the
            # very millisecond its nonce expired.
            key.key_id,
            _NONCE_PREFIX + call.nonce,
            now + 2 * skew * 1000 + 1000,
            now,
        )
        if outcome != "ok":
            raise protocol_error(_AUTH_REFUSALS.get(outcome, "InvalidAccessKeyId.NotFound"))
        if account is None or not account.active:
            raise ApiError("ACCOUNT_DISABLED", "the account is disabled")
        handler = ACTIONS.get(call.action)
        if handler is None:
            raise protocol_error("InvalidAction.NotFound", f"Action {call.action!r}.")
        result = await handler(ctx, account, call.params)
    except AliyunAuthError as exc:
        _refused(request, action, exc.http_status, exc.code, exc.code, who)
        ctx.metrics.request(_label(action), exc.http_status, exc.code)
        out, ctype = render_error(exc.code, exc.message, rid, fmt)
        resp = _respond(out, ctype, exc.http_status, rid, {})
        if unread:
            await close_after(request, resp, drain=True)
        return resp
    except ApiError as exc:
        status, code, message = to_aliyun(
            exc.code,
            exc.message,
            field=getattr(exc, "field", None),
            permits=_permits(exc),
            reason=exc.reason,
        )
        wait = exc.headers.get("Retry-After")
        headers = retry_after_headers(exc.code, float(wait)) if wait else {}
        _refused(request, action, status, code, exc.code, who)
        ctx.metrics.request(_label(action), status, code)
        if status == 200:  # a business refusal: the SDKs read Code, they do not raise
            out, ctype = render({"RequestId": rid, "Code": code, "Message": message}, fmt, action)
        else:
            out, ctype = render_error(code, message, rid, fmt)
        resp = _respond(out, ctype, status, rid, headers)
        if exc.code in CLOSING_CODES or unread:
            await close_after(request, resp, drain=exc.code not in CLOSING_CODES)
        return resp
    if action in _SENDS:
        ctx.metrics.accept(time.perf_counter() - started)
    ctx.metrics.request(_label(action), 200, "OK")
    result["RequestId"] = rid
    out, ctype = render(result, fmt, action)
    return _respond(out, ctype, 200, rid, {})


def _refused(
    request: web.Request, action: str, status: int, code: str, ours: str, who: dict[str, str]
) -> None:
    """The native face's `refused` line for this face: its callers are mostly the official SDKs,
    whose refusals (a business one is an HTTP 200) left no line at all, so an operator could not
    tell a customer why its SendSms calls failed. `ours` is the native code behind Alibaba's."""
    extra = {"action": _label(action), "status": status, "code": code}
    if ours != code:
        extra["bridge_code"] = ours
    log.info("refused", extra={**extra, "remote": client_of(request), **who})


async def _check_headers(request: web.Request, ctx: ApiContext) -> None:
    """Refuse, before reading a body that is still coming, what the headers and query alone
    decide: malformed signing fields, a Timestamp outside the skew, an unknown or revoked key
    (the codes the whole check gives; README "Alibaba Cloud SMS compatibility"). A call whose
    body is whole already is checked once, after it, as before."""
    refuse_encoding(request)
    if declared_too_large(request, ctx.config.server.max_body_bytes):
        raise framework_error(413)
    found = early_check(
        request.method,
        request.rel_url.raw_query_string,
        request.headers,
        request.headers.get("Content-Type"),
    )
    if found is None:
        return
    access_key_id, timestamp = found
    key, _secret = await _clock_and_key(ctx, timestamp, access_key_id)
    if key.status != "active":
        raise protocol_error("InvalidAccessKeyId.Inactive")


async def _clock_and_key(ctx: ApiContext, timestamp: int, access_key_id: str) -> tuple[AppKey, str]:
    """The call's Timestamp within the skew (aliyun.clock_skew_s, narrowed while a raise of it
    settles), then its key: what both the check before the body and the whole check ask."""
    now_s = ctx.clock()
    check_timestamp(
        timestamp, now_s, ctx.config.aliyun.clock_skew_s, ctx.auth.late_s(now_s, aliyun=True)
    )
    found = await ctx.auth.lookup(access_key_id)
    if found is None:
        raise protocol_error("InvalidAccessKeyId.NotFound")
    return found


def _label(action: str) -> str:
    """The metrics label of a call: its Action when it is one we serve; any other name (which
    anyone can send, signed or not) would add a series per request."""
    return f"aliyun {action}" if action in ACTIONS else "aliyun unknown"


@web.middleware
async def errors_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The framework's own refusals and anything unexpected, in Alibaba's envelope.

    One request id per call, made here: the answer's x-acs-request-id, and the request_id of
    every line logged while the call runs (they had none, and a store outage's line had an id
    no client saw). Every answer made here is counted too, as the native face counts them (a
    413 and a store outage were missing from smpp_bridge_api_requests_total)."""
    rid = _request_id()
    request[_RID] = rid
    token = logs.REQUEST_ID.set(rid)
    metrics = request.app[CTX].metrics
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        err = framework_error(exc.status)
    except Exception as exc:
        if is_unavailable(exc):  # retryable: the SDKs raise a throttling error for the header
            request.app[STORE_DOWN].error("aliyun face: store unavailable", exc)  # a line a while
            status, code, message = to_aliyun("STORE_UNAVAILABLE", "the store cannot be reached")
            metrics.request("aliyun unknown", status, code)
            out, ctype = render_error(code, message, rid)
            headers = retry_after_headers("STORE_UNAVAILABLE", STORE_RETRY_AFTER_S)
            return _respond(out, ctype, status, rid, headers)
        log.exception("aliyun face: unexpected error")
        err = protocol_error("InternalError")
    finally:
        logs.REQUEST_ID.reset(token)
    metrics.request("aliyun unknown", err.http_status, err.code)
    out, ctype = render_error(err.code, err.message, rid)
    return _respond(out, ctype, err.http_status, rid, {})


# The metrics endpoint of requests the HTTP parser refused on this port (which their answers'
# x-acs-request-id header goes by).
UNPARSED_ENDPOINT = ALIYUN_ENDPOINT


def render_unparsed(status: int, code: str, message: str) -> tuple[int, bytes, str, str, str]:
    """A request the HTTP parser refused, in Alibaba's error format (JSON: no `Format` was read),
    counted with the Code the caller got. For `bridge.api.http_errors`."""
    rid = _request_id()
    sent, acode, amessage = to_aliyun(code, message)
    out, ctype = render_error(acode, amessage, rid)
    return sent, out, ctype, rid, acode


def make_aliyun_app(ctx: ApiContext) -> web.Application:
    app = web.Application(
        middlewares=[errors_middleware],
        client_max_size=ctx.config.server.max_body_bytes,
        # A SendSms to 1000 numbers puts ~14 KB in the request line (headers stay ordinary).
        handler_args=http_limits(ctx.config.aliyun.max_line_size),
    )
    app[CTX] = ctx
    app[STORE_DOWN] = logs.Throttled(log)
    app.router.add_route("*", "/{tail:.*}", handle)
    use_deferred_continue(app)
    return app


__all__ = ["Missing", "make_aliyun_app", "render_unparsed"]
