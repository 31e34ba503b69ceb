"""An account's messages for the operator: GET /admin/accounts/{ref}/messages[/{id}].

A customer asking why a message never arrived is the operator's daily question, and the
answer (its parts, the SMSC's ids and error codes) was only reachable with the customer's own
key or by opening the store with sqlite3. The same views as the customer's GET /v1/messages,
read for the account the operator names.
"""

from __future__ import annotations

from aiohttp import web

from bridge.accounts import AccountError
from bridge.api.context import query_of
from bridge.api.errors import ApiError
from bridge.api.reports import query_params
from bridge.api.v1 import MESSAGE_QUERY, ctx_of, json_response, messages_page, one_message
from bridge.store.models import Account


async def _account(request: web.Request) -> Account:
    try:
        account: Account = await ctx_of(request).accounts.resolve(request.match_info["ref"])
    except AccountError as exc:
        raise ApiError(exc.code, exc.message) from None
    return account


async def list_messages(request: web.Request) -> web.Response:
    q = query_params(query_of(request), MESSAGE_QUERY)
    account = await _account(request)
    ctx = ctx_of(request)
    return json_response(await messages_page(ctx.store, ctx.config.rules.timezone, account, q))


async def show_message(request: web.Request) -> web.Response:
    account = await _account(request)
    data = await one_message(ctx_of(request).store, account.id, request.match_info["id"])
    return json_response(data)


def add_routes(app: web.Application) -> None:
    app.router.add_get("/admin/accounts/{ref}/messages", list_messages)
    app.router.add_get("/admin/accounts/{ref}/messages/{id}", show_message)
