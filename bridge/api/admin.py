"""Operator API under /admin/, behind the bearer token from the config.

The same operations as the CLI (`smpp-bridge account ...`, `key ...`), plus views of the running
pipeline. Secrets appear only in the response that creates them.
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from bridge import billing
from bridge.accounts import AccountError, public_account, public_key
from bridge.api.bodies import read_admin_body
from bridge.api.context import OPERATOR, query_of
from bridge.api.errors import ApiError
from bridge.api.reports import query_params
from bridge.api.v1 import ctx_of, json_response, parse_json

ADMIN_EXTRA_ROUTES: list[tuple[str, str, Any]] = []  # the pipeline registers its views here


def _same(a: str, b: str) -> bool:
    # surrogateescape: header bytes that are not UTF-8 reach us as surrogates, and a plain
    # encode() raised (a 500 and a logged traceback for any such header).
    return hmac.compare_digest(
        a.encode("utf-8", "surrogateescape"), b.encode("utf-8", "surrogateescape")
    )


def check_admin(request: web.Request) -> None:
    """The shared server.admin_token, or a named operator's own token (admin.operators): the
    operator's name goes into the audit trail. Every configured token is compared, so the time
    taken does not tell which one matched."""
    config = ctx_of(request).config
    token = config.server.admin_token
    operators = config.admin.operators
    if not token and not operators:
        raise ApiError(
            "ADMIN_DISABLED", "the admin API is disabled: set server.admin_token or admin.operators"
        )
    header = request.headers.get("Authorization", "")
    given = header[7:] if header.startswith("Bearer ") else ""
    who: str | None = None
    if given:
        if token and _same(given, token):
            who = ""
        for op in operators:
            if _same(given, op.token):
                who = op.name
    if who is None:
        raise ApiError("INVALID_ADMIN_TOKEN", "Authorization: Bearer <admin token> required")
    request[OPERATOR] = who


def _account_error(exc: AccountError) -> ApiError:
    return ApiError(exc.code, exc.message)


async def _body(request: web.Request) -> dict[str, Any]:
    raw = await read_admin_body(request)
    if not raw:
        return {}
    data = parse_json(raw, request)
    if not isinstance(data, dict):
        raise ApiError("INVALID_REQUEST", "the body must be a JSON object")
    return data


async def list_accounts(request: web.Request) -> web.Response:
    # A filter it does not have (?status=disabled) is refused, not answered with every account.
    query_params(query_of(request), ())
    accounts = await ctx_of(request).store.list_accounts()
    return json_response({"accounts": [public_account(a) for a in accounts]})


async def create_account(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    data = await _body(request)
    name = data.pop("name", None)
    if name is None:
        raise ApiError("MISSING_FIELD", "name: required")
    try:
        creds = await ctx.accounts.create(name, data, ctx.now_ms())
    except AccountError as exc:
        raise _account_error(exc) from None
    if creds.account.senders:
        ctx.sender_assignments.forget()  # at once here; other processes within their cache time
    return json_response(
        {
            "account": public_account(creds.account),
            "app_key": creds.app_key,
            "app_secret": creds.app_secret,
            "webhook_secret": creds.webhook_secret,
        },
        status=201,
    )


async def show_account(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    try:
        account = await ctx.accounts.resolve(request.match_info["ref"])
    except AccountError as exc:
        raise _account_error(exc) from None
    keys = await ctx.store.list_keys(account.id)
    data = public_account(account)
    data.update(await billing.refund_fields(ctx.store, account.id))
    data["keys"] = [public_key(k) for k in keys]
    return json_response(data)


async def update_account(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    data = await _body(request)
    try:
        account = await ctx.accounts.update(request.match_info["ref"], data, ctx.now_ms())
    except AccountError as exc:
        raise _account_error(exc) from None
    if "senders" in data:
        ctx.sender_assignments.forget()
    return json_response(public_account(account))


async def set_status(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    status = "disabled" if request.match_info["action"] == "disable" else "active"
    try:
        account = await ctx.accounts.set_status(request.match_info["ref"], status, ctx.now_ms())
    except AccountError as exc:
        raise _account_error(exc) from None
    return json_response(public_account(account))


async def list_keys(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    query_params(query_of(request), ())
    try:
        account = await ctx.accounts.resolve(request.match_info["ref"])
    except AccountError as exc:
        raise _account_error(exc) from None
    keys = await ctx.store.list_keys(account.id)
    return json_response({"keys": [public_key(k) for k in keys]})


async def create_key(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    try:
        account, key_id, secret = await ctx.accounts.create_key(
            request.match_info["ref"], ctx.now_ms()
        )
    except AccountError as exc:
        raise _account_error(exc) from None
    return json_response(
        {"account": account.id, "app_key": key_id, "app_secret": secret}, status=201
    )


async def revoke_key(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    key_id = request.match_info["key"]
    try:
        await ctx.accounts.revoke_key(key_id, ctx.now_ms())
    except AccountError as exc:
        raise _account_error(exc) from None
    return json_response({"app_key": key_id, "status": "revoked"})


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/accounts", list_accounts)
    r.add_post("/admin/accounts", create_account)
    r.add_get("/admin/accounts/{ref}", show_account)
    r.add_patch("/admin/accounts/{ref}", update_account)
    r.add_post("/admin/accounts/{ref}/{action:disable|enable}", set_status)
    r.add_get("/admin/accounts/{ref}/keys", list_keys)
    r.add_post("/admin/accounts/{ref}/keys", create_key)
    r.add_post("/admin/keys/{key}/revoke", revoke_key)
