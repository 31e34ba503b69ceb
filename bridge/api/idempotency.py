"""Idempotency-Key on the native API's other writes (templates, signs, opt-outs, cancels, ...).

POST /v1/messages requires the key and records it in its accept transaction (bridge/api/v1.py).
Every other write of `/v1/` takes it when sent: a client that timed out creating a template and
retried created a second one (pending review twice), a retried sign name answered
SIGN_NAME_EXISTS for its own first request, a retried cancel NOT_CANCELABLE. With the key, the
first answer is kept for `server.idempotency_hours` and a retry with the same request gets it
again (`Idempotent-Replayed: true`); the same key with another request (method, path, query or
body) is IDEMPOTENCY_KEY_REUSED, as on a send.

The key is taken before the handler runs (a placeholder record, as Stripe does): a second
request with it while the first runs is answered 409 IDEMPOTENCY_IN_PROGRESS, never run twice.
A refusal or failure gives the key back (a retry runs again, as a client expects after an
error); a success keeps the answer. The placeholder lives IN_PROGRESS_MS only, so a crash
between the handler's write and the answer's record leaves the key usable a minute later.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Awaitable, Callable

from aiohttp import web

from bridge.api.context import ApiContext
from bridge.api.errors import ApiError
from bridge.store.models import IdempotencyRecord

KEY_RE = re.compile(r"[\x21-\x7e]{1,255}")
IN_PROGRESS = 0  # status_code of a key taken by a request still running
IN_PROGRESS_MS = 60_000
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_OWN_PATHS = frozenset({"/v1/messages", "/v1/preview"})  # a send's own record; no write

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def check_key(key: str) -> str:
    # KEY_RE's characters (! to ~: ASCII, printable, not the space) by three C calls, not the
    # regex's match of every character (~1.2 k instructions of each send, session 56).
    if not (0 < len(key) <= 255 and key.isascii() and key.isprintable() and " " not in key):
        raise ApiError(
            "INVALID_IDEMPOTENCY_KEY",
            "Idempotency-Key: 1-255 visible ASCII characters (! to ~, no spaces)",
        )
    return key


def replay(existing: IdempotencyRecord, req_hash: str) -> web.Response:
    """The first answer given again, or why not."""
    if existing.request_hash != req_hash:
        raise ApiError(
            "IDEMPOTENCY_KEY_REUSED",
            "Idempotency-Key was already used with a different request body",
        )
    if existing.status_code == IN_PROGRESS:
        raise ApiError(
            "IDEMPOTENCY_IN_PROGRESS",
            "a request with this Idempotency-Key is still being processed; retry in a moment",
            headers={"Retry-After": "1"},
        )
    return web.Response(
        body=existing.response,
        status=existing.status_code,
        content_type="application/json",
        headers={"Idempotent-Replayed": "true"},
    )


def request_hash(method: str, path: str, query: str, body: bytes) -> str:
    """What must match for a retry: the request itself, so a key reused on another endpoint
    is told apart from a retry."""
    digest = hashlib.sha256()
    for piece in (method.encode(), path.encode(), query.encode()):
        digest.update(piece + b"\n")
    digest.update(body)
    return digest.hexdigest()


def applies(request: web.Request) -> bool:
    return (
        request.method in _WRITES
        and request.path.startswith("/v1/")
        and request.path not in _OWN_PATHS
        and "Idempotency-Key" in request.headers
    )


async def run_once(
    ctx: ApiContext, request: web.Request, account_id: str, body: bytes, handler: Handler
) -> web.StreamResponse:
    key = check_key(request.headers["Idempotency-Key"])
    req_hash = request_hash(request.method, request.path, request.query_string, body)
    now = ctx.now_ms()
    store = ctx.store
    existing = await store.take_idempotency(account_id, key, req_hash, now + IN_PROGRESS_MS, now)
    if existing is not None:
        return replay(existing, req_hash)
    try:
        response = await handler(request)
    except BaseException:
        # Given back so a retry runs again; if the store fails here too, the placeholder
        # lapses after IN_PROGRESS_MS (the handler's own error is the one to answer).
        with contextlib.suppress(Exception):
            await store.give_back_idempotency(account_id, key, req_hash)
        raise
    if not isinstance(response, web.Response) or not 200 <= response.status < 300:
        await store.give_back_idempotency(account_id, key, req_hash)
        return response
    expires = ctx.now_ms() + ctx.config.server.idempotency_hours * 3_600_000
    body_out = response.body if isinstance(response.body, bytes) else b""
    await store.keep_idempotency(
        account_id, key, IdempotencyRecord(req_hash, response.status, body_out), expires
    )
    return response
