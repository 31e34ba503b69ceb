"""Operator endpoints for the sending rules and money: sign/template review, lifting opt-outs,
do-not-contact lists, tariffs, top-ups, vouchers, stored-value cards, settlement and account
closure."""

from __future__ import annotations

import asyncio
import logging
import re
import unicodedata
from collections.abc import Iterator
from typing import Any

from aiohttp import web

from bridge import billing, logs, review
from bridge.accounts import AccountError
from bridge.api.bodies import read_admin_body
from bridge.api.context import ANY_SEGMENT, query_of
from bridge.api.errors import STORE_RETRY_AFTER_S, ApiError
from bridge.api.reports import query_params, refuse_unknown
from bridge.api.rules_api import bill_for, check_month, reraise
from bridge.api.v1 import ctx_of, json_response, parse_json
from bridge.domain.dnc import parse_dnc_lines
from bridge.domain.phone import PhoneError, normalize
from bridge.domain.tariffs import BillingError
from bridge.ids import new_id
from bridge.store.base import StoreError
from bridge.store.models import Account, DncInfo

log = logging.getLogger("bridge.api.admin")

LIST_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
COUNTRY = re.compile(r"[A-Z]{2}")


async def _json(request: web.Request) -> Any:
    return parse_json(await read_admin_body(request), request)


async def _account(request: web.Request) -> Account:
    try:
        return await ctx_of(request).accounts.resolve(request.match_info["ref"])
    except AccountError as exc:
        raise ApiError(exc.code, exc.message) from None


def _status(request: web.Request) -> str | None:
    # The review queues take these two filters only: a misspelt one filtered nothing, silently.
    status = query_params(query_of(request), ("status", "account")).get("status")
    if status is not None and status not in ("pending", "approved", "rejected"):
        raise ApiError("INVALID_FIELD", "status: pending, approved or rejected")
    return status


async def _account_filter(request: web.Request) -> str | None:
    ref = query_of(request).get("account")
    if ref is None:
        return None
    try:
        return (await ctx_of(request).accounts.resolve(ref)).id
    except AccountError as exc:
        raise ApiError(exc.code, exc.message) from None


# -- review ----------------------------------------------------------------------------------------


async def _decision(request: web.Request, *, revision: bool = False) -> tuple[Any, ...]:
    """(decision, reason[, revision]) of an operator's review body; review checks the values.
    A template's decision may name the revision the operator read (TEMPLATE_CHANGED if the
    customer corrected it since)."""
    data = await _json(request)
    if not isinstance(data, dict):
        raise ApiError("INVALID_REQUEST", 'the body must be {"decision", "reason"}')
    refuse_unknown(data, {"decision", "reason", "revision"} if revision else {"decision", "reason"})
    if revision:
        return data.get("decision"), data.get("reason"), data.get("revision")
    return data.get("decision"), data.get("reason")


async def list_signs(request: web.Request) -> web.Response:
    rows = await ctx_of(request).store.list_signs(
        account_id=await _account_filter(request), status=_status(request)
    )
    return json_response({"signs": [review.sign_view(s, operator=True) for s in rows]})


async def add_sign(request: web.Request) -> web.Response:
    """An operator registering a sign for an account (approved at once when asked)."""
    ctx = ctx_of(request)
    account = await _account(request)
    data = await _json(request)
    approve = data.pop("approve", False) if isinstance(data, dict) else False
    if not isinstance(approve, bool):
        raise ApiError("INVALID_FIELD", "approve: expected true or false")
    try:
        sign = await review.submit_sign(ctx.store, account.id, data, ctx.now_ms())
        if approve:
            sign = await review.decide_sign(
                ctx.store, account.id, sign.name, "approve", None, ctx.now_ms()
            )
    except review.ReviewError as exc:
        raise reraise(exc) from None
    except StoreError as exc:
        raise ApiError(exc.code, exc.message) from None
    return json_response(review.sign_view(sign, operator=True), status=201)


async def review_sign(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    account = await _account(request)
    decision, reason = await _decision(request)
    try:
        # The name as stored at submission (NFKC), as GET /v1/signs/{name} reads it.
        name = unicodedata.normalize("NFKC", request.match_info["name"])
        sign = await review.decide_sign(ctx.store, account.id, name, decision, reason, ctx.now_ms())
    except review.ReviewError as exc:
        raise reraise(exc) from None
    return json_response(review.sign_view(sign, operator=True))


async def list_templates(request: web.Request) -> web.Response:
    rows = await ctx_of(request).store.list_templates(
        account_id=await _account_filter(request), status=_status(request)
    )
    return json_response({"templates": [review.template_view(t, operator=True) for t in rows]})


async def review_template(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    decision, reason, revision = await _decision(request, revision=True)
    try:
        t = await review.decide_template(
            ctx.store, request.match_info["code"], decision, reason, ctx.now_ms(), revision
        )
    except review.ReviewError as exc:
        raise reraise(exc) from None
    return json_response(review.template_view(t, operator=True))


# -- opt-outs -------------------------------------------------------------------------------------


async def delete_optout(request: web.Request) -> web.Response:
    """Lift an opt-out whatever its source, a recipient's reply included (the customer may not:
    rules_api.delete_optout). Logged, so lifting a recipient's STOP leaves a trace."""
    ctx = ctx_of(request)
    account = await _account(request)
    try:
        number = normalize(request.match_info["number"], account.default_country)
    except PhoneError as exc:
        raise ApiError("INVALID_NUMBER", f"number: {exc.message}") from None
    source = await ctx.store.remove_optout(account.id, number, sources=None)
    if source is None:
        raise ApiError("NOT_FOUND", f"{number} is not on the opt-out list of {account.id}")
    # Masked as every number in the logs (country code and last four digits): the audit trail
    # needs the account and source, not the recipient's full number.
    log.info(
        "operator lifted an opt-out",
        extra={"account": account.id, "number": logs.number(number), "source": source},
    )
    return json_response(
        {"account_id": account.id, "number": number, "removed": True, "source": source}
    )


# -- do-not-contact lists --------------------------------------------------------------------------


def dnc_view(d: DncInfo) -> dict[str, Any]:
    return {
        "id": d.id,
        "name": d.name,
        "country": d.country,
        "numbers": d.numbers,
        "prefixes": d.prefixes,
        "imported_at": d.imported_at,
    }


async def list_dnc(request: web.Request) -> web.Response:
    query_params(query_of(request), ())
    rows = await ctx_of(request).store.list_dnc()
    return json_response({"lists": [dnc_view(d) for d in rows]})


def _body_lines(body: bytes) -> Iterator[str]:
    """The body's lines decoded one at a time, ends kept (parse_dnc_lines numbers the lines as
    the whole text's splitlines would): decoded whole it was held twice more, as a str and as a
    list of lines. A b"\\n" byte is never inside a UTF-8 sequence, so each line decodes alone."""
    start = 0
    while start < len(body):
        end = body.find(b"\n", start)
        end = len(body) if end < 0 else end + 1
        yield body[start:end].decode("utf-8")
        start = end


async def put_dnc(request: web.Request) -> web.Response:
    """Replace a list from a CSV body (text/csv): one number or `prefix*` per line."""
    ctx = ctx_of(request)
    list_id = request.match_info["id"]
    if not LIST_ID.fullmatch(list_id):
        raise ApiError("INVALID_FIELD", "id: 1-64 of A-Z a-z 0-9 _ . -")
    ctype = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if ctype not in ("text/csv", "text/plain"):
        raise ApiError("UNSUPPORTED_MEDIA_TYPE", "send the list as text/csv")
    # A misspelt ?contry= imported the list with no country: its national numbers skipped.
    q = query_params(query_of(request), ("country", "name", "strict"))
    country = q.get("country")
    if country is not None and not COUNTRY.fullmatch(country):
        raise ApiError("INVALID_FIELD", "country: ISO 3166 alpha-2, upper case (e.g. CN)")
    body = await read_admin_body(request)
    try:
        # In a thread: a registry's body (64 MiB, ~4 million numbers) takes ~10 s to parse,
        # and on the event loop every other request of this process waited for it. The
        # thread still shares the GIL, which the loop gets back every switch interval (5 ms).
        parsed = await asyncio.to_thread(parse_dnc_lines, _body_lines(body), country)
    except UnicodeDecodeError:
        raise ApiError("INVALID_REQUEST", "the list must be UTF-8 text") from None
    if parsed.bad_count and q.get("strict", "true") != "false":
        raise ApiError(
            "INVALID_FIELD",
            f"{parsed.bad_count} bad line(s), nothing imported (strict=false skips them): "
            + "; ".join(parsed.bad[:20]),
        )
    info = DncInfo(
        list_id,
        q.get("name", list_id)[:200],
        country,
        len(parsed.numbers),
        len(parsed.prefixes),
        ctx.now_ms(),
    )
    try:
        ended = await ctx.store.import_dnc(info, parsed.numbers, parsed.prefixes)
    except StoreError as exc:
        # STORE_BUSY: the sends in progress may have ended by then. Not DNC_IMPORT_SUPERSEDED:
        # this list is no longer the one wanted, and a retry would supersede the later import.
        busy = exc.code == "STORE_BUSY"
        retry = {"Retry-After": str(STORE_RETRY_AFTER_S)} if busy else None
        raise ApiError(exc.code, exc.message, headers=retry) from None
    view = dnc_view(info)
    view["skipped"] = list(parsed.bad)
    view["messages_ended"] = ended
    return json_response(view)


async def delete_dnc(request: web.Request) -> web.Response:
    if not await ctx_of(request).store.delete_dnc(request.match_info["id"]):
        raise ApiError("NOT_FOUND", f"no do-not-contact list {request.match_info['id']!r}")
    return json_response({"id": request.match_info["id"], "deleted": True})


# -- tariffs ---------------------------------------------------------------------------------------


async def list_tariffs(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    query_params(query_of(request), ())
    book = ctx.tariff_book
    await book.load(ctx.now_ms())
    return json_response({"tariffs": [billing.tariff_view(t) for t in book.versions]})


async def add_tariff(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    try:
        t = billing.tariff_from_dict(await _json(request))
        await ctx.tariff_book.add(t, ctx.now_ms())
    except BillingError as exc:
        raise ApiError(exc.code, exc.message) from None
    except StoreError as exc:
        raise ApiError(exc.code, exc.message) from None
    return json_response(billing.tariff_view(t), status=201)


# -- money -----------------------------------------------------------------------------------------


async def _money(request: web.Request, kind: str) -> web.Response:
    ctx = ctx_of(request)
    account = await _account(request)
    now = ctx.now_ms()
    body = await _json(request)
    try:
        entries = billing.money_entries(kind, body, now, ctx.config.rules.timezone)
    except BillingError as exc:
        raise ApiError(exc.code, exc.message) from None
    try:
        # The store refuses a closed account (ACCOUNT_CLOSED) and a payment ref the account
        # has with another amount (PAYMENT_REF_REUSED) in the write's own transaction.
        added = await ctx.store.append_ledger(account.id, entries, once=billing.credited_once(body))
    except StoreError as exc:
        raise ApiError(exc.code, exc.message) from None
    view = billing.balance_view(
        await ctx.store.get_pockets(account.id), now, ctx.config.billing.currency
    )
    view["added"] = billing.added_view(entries) if added else []
    if not added:  # the same payment again: nothing credited, the balance as it stands
        view["duplicate_ref"] = entries[0].ref
        return json_response(view, status=200)
    return json_response(view, status=201)


async def topup(request: web.Request) -> web.Response:
    return await _money(request, "topup")


async def voucher(request: web.Request) -> web.Response:
    return await _money(request, "voucher")


async def card(request: web.Request) -> web.Response:
    return await _money(request, "card")


async def balance(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    account = await _account(request)
    view = await billing.account_balance(
        ctx.store, account, ctx.now_ms(), ctx.config.billing.currency
    )
    return json_response(view)


async def account_bill(request: web.Request) -> web.Response:
    account = await _account(request)
    return json_response(await bill_for(ctx_of(request), account, request.match_info["month"]))


async def settle(request: web.Request) -> web.Response:
    """Settle a month for one account or all; idempotent (settled months are left alone)."""
    ctx = ctx_of(request)
    data = await _json(request)
    if not isinstance(data, dict):
        raise ApiError("INVALID_REQUEST", 'the body must be {"month": "YYYY-MM", "account"?}')
    refuse_unknown(data, {"month", "account"})
    month = data.get("month")
    if not isinstance(month, str):
        raise ApiError("MISSING_FIELD", "month: required (YYYY-MM)")
    check_month(month)
    if data.get("account") is not None:
        try:
            accounts = [await ctx.accounts.resolve(str(data["account"]))]
        except AccountError as exc:
            raise ApiError(exc.code, exc.message) from None
    else:
        accounts = await ctx.store.list_accounts()
    book = ctx.tariff_book
    await book.load(ctx.now_ms())
    try:
        results = await billing.settle_accounts(
            ctx.store, accounts, month, book.versions, ctx.config, ctx.now_ms()
        )
    except BillingError as exc:
        raise ApiError(exc.code, exc.message) from None
    return json_response({"month": month, "results": results})


async def refund(request: web.Request) -> web.Response:
    """A closed account's refund paid back (part or all of what is still owed), under the
    payout's ref: 201 recorded, 200 the same payout again (`duplicate_ref`)."""
    ctx = ctx_of(request)
    account = await _account(request)
    body = await _json(request)
    try:
        view, added = await billing.pay_refund(
            ctx.store, account, body, ctx.now_ms(), ctx.config.billing.currency
        )
    except (BillingError, StoreError) as exc:
        raise ApiError(exc.code, exc.message) from None
    return json_response(view, status=201 if added else 200)


async def close_account(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    account = await _account(request)
    # The waiting parts of long replies are kept under the address as the SMSC gave it (as an
    # erasure's, rules_api.erase_recipient).
    done = await ctx.store.close_account(
        account.id,
        ctx.now_ms(),
        ctx.config.national_prefixes(),
        mo_defaults=ctx.config.default_sources(),
    )
    ctx.sender_assignments.forget()  # a closed account's addresses are free again
    closed = await ctx.store.get_account(account.id)
    if done is None or closed is None:  # gone meanwhile (an account is never deleted)
        raise ApiError("NOT_FOUND", f"no account {account.id!r}")
    currency = ctx.config.billing.currency
    return json_response(await billing.closed_view(ctx.store, closed, done.entries, currency))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/admin/signs", list_signs)
    r.add_post("/admin/accounts/{ref}/signs", add_sign)
    r.add_post("/admin/accounts/{ref}/signs/{name}/review", review_sign)
    r.add_get("/admin/templates", list_templates)
    r.add_post("/admin/templates/{code}/review", review_template)
    r.add_delete("/admin/accounts/{ref}/optouts/{number}", delete_optout)
    r.add_get("/admin/dnc", list_dnc)
    r.add_put(f"/admin/dnc/{{id:{ANY_SEGMENT}}}", put_dnc)
    r.add_delete(f"/admin/dnc/{{id:{ANY_SEGMENT}}}", delete_dnc)
    r.add_get("/admin/tariffs", list_tariffs)
    r.add_post("/admin/tariffs", add_tariff)
    r.add_get("/admin/accounts/{ref}/balance", balance)
    r.add_post("/admin/accounts/{ref}/topups", topup)
    r.add_post("/admin/accounts/{ref}/vouchers", voucher)
    r.add_post("/admin/accounts/{ref}/cards", card)
    r.add_get("/admin/accounts/{ref}/bills/{month}", account_bill)
    r.add_post("/admin/bills/settle", settle)
    r.add_post("/admin/accounts/{ref}/close", close_account)
    r.add_post("/admin/accounts/{ref}/refunds", refund)


__all__ = ["add_routes", "new_id"]
