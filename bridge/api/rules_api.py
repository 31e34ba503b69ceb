"""Customer endpoints for the sending rules and money: sign names, templates, opt-outs, erasure,
balance, ledger and monthly bills. Every one acts on the calling account only."""

from __future__ import annotations

import base64
import contextlib
import re
import unicodedata
from typing import Any

from aiohttp import web

from bridge import billing, review
from bridge.api.context import ANY_SEGMENT, BODY, PRINCIPAL, ApiContext, query_of
from bridge.api.errors import CODES, ApiError
from bridge.api.reports import query_params, refuse_unknown
from bridge.api.sending import TARIFF_RETRY
from bridge.api.v1 import ctx_of, json_response, parse_json
from bridge.domain.phone import PhoneError, mo_source_forms, normalize
from bridge.domain.tariffs import BillingError
from bridge.store.base import StoreError
from bridge.store.models import Account

_MONTH = re.compile(r"[0-9]{4}-(0[1-9]|1[0-2])")
_CODE = re.compile(r"[A-Za-z0-9_\-]{1,64}")
# The cursor of /v1/optouts is the last number of a page: E.164 (an entry of the API), or the
# digits an MO sender not read as international was kept as (bridge/pipeline/inbound._e164).
_OPTOUT_CURSOR = re.compile(r"\+?[0-9]{1,20}")
# ... or, for a sender that is not digits (an alphanumeric reply source kept as received),
# "x" and its UTF-8 in unpadded base64url: such a page's cursor was refused as INVALID_CURSOR,
# so the list could not be read past it.
_OPAQUE_CURSOR = re.compile(r"x([A-Za-z0-9_-]{2,})")


def _optout_cursor(recipient: str) -> str:
    if _OPTOUT_CURSOR.fullmatch(recipient):
        return recipient
    return "x" + base64.urlsafe_b64encode(recipient.encode()).decode().rstrip("=")


def _optout_after(cursor: str) -> str:
    if _OPTOUT_CURSOR.fullmatch(cursor):
        return cursor
    m = _OPAQUE_CURSOR.fullmatch(cursor)
    if m is not None:
        body = m.group(1)
        with contextlib.suppress(ValueError):  # binascii.Error and UnicodeDecodeError too
            after = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
            if _optout_cursor(after) == cursor:
                return after
    # Any string was taken as a place in the list: a cursor mangled on its way back (a "+"
    # read as a space) answered a wrong page instead of an error.
    raise ApiError("INVALID_CURSOR", "cursor: not a cursor returned by this API")


def _account(request: web.Request) -> Account:
    return request[PRINCIPAL].account


def _body(request: web.Request) -> Any:
    return parse_json(request[BODY], request)


def _number(raw: str, account: Account, field: str) -> str:
    try:
        return normalize(raw, account.default_country)
    except PhoneError as exc:
        raise ApiError("INVALID_NUMBER", f"{field}: {exc.message}") from None


def _limit(request: web.Request, default: int = 100, most: int = 1000) -> int:
    raw = query_of(request).get("limit")
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,4}", raw) or not 1 <= int(raw) <= most:
        raise ApiError("INVALID_FIELD", f"limit: an integer from 1 to {most}")
    return int(raw)


def check_month(month: str) -> str:
    """YYYY-MM in the years a calendar month can be computed for; 0000-01 or 9999-12 would fail
    in datetime (a 500) rather than be refused."""
    if not _MONTH.fullmatch(month) or not 1970 <= int(month[:4]) <= 9998:
        raise ApiError("INVALID_MONTH", "month: YYYY-MM, from 1970-01 to 9998-12")
    return month


def reraise(exc: review.ReviewError | BillingError) -> ApiError:
    return ApiError(exc.code, exc.message)


# -- signs and templates ---------------------------------------------------------------------------


async def post_sign(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    try:
        sign = await review.submit_sign(
            ctx.store, _account(request).id, _body(request), ctx.now_ms()
        )
    except review.ReviewError as exc:
        raise reraise(exc) from None
    except StoreError as exc:  # SIGN_NAME_EXISTS: this account already registered the name
        raise ApiError(exc.code, exc.message) from None
    return json_response(review.sign_view(sign), status=201)


async def list_signs(request: web.Request) -> web.Response:
    query_params(query_of(request), ())  # ?status= filtered nothing, silently
    signs = await ctx_of(request).store.list_signs(account_id=_account(request).id)
    return json_response({"signs": [review.sign_view(s) for s in signs]})


async def get_sign(request: web.Request) -> web.Response:
    name = unicodedata.normalize("NFKC", request.match_info["name"])  # as stored at submission
    sign = await ctx_of(request).store.get_sign(_account(request).id, name)
    if sign is None:
        raise ApiError("NOT_FOUND", f"no sign name {name!r}")
    return json_response(review.sign_view(sign))


async def patch_sign(request: web.Request) -> web.Response:
    """Correct a rejected sign name's source or remark; it waits for review again."""
    ctx = ctx_of(request)
    name = unicodedata.normalize("NFKC", request.match_info["name"])  # as stored at submission
    try:
        sign = await review.edit_sign(
            ctx.store, _account(request).id, name, _body(request), ctx.now_ms()
        )
    except review.ReviewError as exc:
        raise reraise(exc) from None
    return json_response(review.sign_view(sign))


async def delete_sign(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    name = unicodedata.normalize("NFKC", request.match_info["name"])  # as stored at submission
    ended = await ctx.store.delete_sign(_account(request).id, name, ctx.now_ms())
    if ended is None:
        raise ApiError("NOT_FOUND", f"no sign name {name!r}")
    return json_response({"name": name, "deleted": True, "messages_ended": ended})


async def post_template(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    try:
        t = await review.submit_template(
            ctx.store,
            _account(request).id,
            _body(request),
            ctx.now_ms(),
            ctx.config,
            ctx.send_rules.filter,
        )
    except review.ReviewError as exc:
        raise reraise(exc) from None
    return json_response(review.template_view(t), status=201)


async def list_templates(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    status = query_params(query_of(request), ("status", "limit")).get("status")
    if status is not None and status not in ("pending", "approved", "rejected"):
        raise ApiError("INVALID_FIELD", "status: pending, approved or rejected")
    rows = await ctx.store.list_templates(
        account_id=_account(request).id, status=status, limit=_limit(request, 500, 5000)
    )
    return json_response({"templates": [review.template_view(t) for t in rows]})


async def get_template(request: web.Request) -> web.Response:
    code = request.match_info["code"]
    t = await ctx_of(request).store.get_template(code) if _CODE.fullmatch(code) else None
    if t is None or t.account_id != _account(request).id:
        raise ApiError("NOT_FOUND", f"no template {code!r}")
    return json_response(review.template_view(t))


async def patch_template(request: web.Request) -> web.Response:
    """Correct a rejected template under the same code; it is reviewed again."""
    ctx = ctx_of(request)
    code = request.match_info["code"]
    if not _CODE.fullmatch(code):
        raise ApiError("NOT_FOUND", f"no template {code!r}")
    try:
        t = await review.edit_template(
            ctx.store,
            _account(request).id,
            code,
            _body(request),
            ctx.now_ms(),
            ctx.config,
            ctx.send_rules.filter,
        )
    except review.ReviewError as exc:
        raise reraise(exc) from None
    return json_response(review.template_view(t))


async def delete_template(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    code = request.match_info["code"]
    ended = (
        await ctx.store.delete_template(_account(request).id, code, ctx.now_ms())
        if _CODE.fullmatch(code)
        else None
    )
    if ended is None:
        raise ApiError("NOT_FOUND", f"no template {code!r}")
    return json_response({"code": code, "deleted": True, "messages_ended": ended})


# -- opt-outs and erasure --------------------------------------------------------------------------


async def list_optouts(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    account = _account(request)
    cursor = query_params(query_of(request), ("cursor", "limit")).get("cursor")
    after = None if cursor is None else _optout_after(cursor)
    limit = _limit(request)
    rows = await ctx.store.list_optouts(account.id, after=after, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    return json_response(
        {
            "optouts": [
                {"number": r.recipient, "source": r.source, "created_at": r.created_at}
                for r in rows
            ],
            "next_cursor": _optout_cursor(rows[-1].recipient) if more and rows else None,
        }
    )


async def post_optouts(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    account = _account(request)
    data = _body(request)
    if not isinstance(data, dict):
        raise ApiError("INVALID_REQUEST", 'the body must be {"numbers": [...]}')
    refuse_unknown(data, {"numbers"})
    raw = data.get("numbers")
    if not isinstance(raw, list) or not raw or len(raw) > 10_000:
        raise ApiError("INVALID_FIELD", "numbers: a list of 1 to 10000 phone numbers")
    numbers = []
    for i, n in enumerate(raw):
        if not isinstance(n, str):
            raise ApiError("INVALID_FIELD", f"numbers[{i}]: expected a string")
        numbers.append(_number(n, account, f"numbers[{i}]"))
    added = await ctx.store.add_optouts(account.id, sorted(set(numbers)), "api", ctx.now_ms())
    return json_response({"added": added, "numbers": sorted(set(numbers))})


# What a customer may take off its own list: only what it put there. A recipient's reply (`mo`)
# is the recipient's decision; only an operator lifts it (admin_rules.delete_optout).
CUSTOMER_REMOVABLE = frozenset({"api"})


async def delete_optout(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    account = _account(request)
    number = _number(request.match_info["number"], account, "number")
    source = await ctx.store.remove_optout(account.id, number, sources=CUSTOMER_REMOVABLE)
    if source is None:
        raise ApiError("NOT_FOUND", f"{number} is not on the opt-out list")
    if source not in CUSTOMER_REMOVABLE:
        raise ApiError(
            "OPTOUT_BY_RECIPIENT",
            f"{number}: the recipient opted out by reply; only an operator can lift it",
        )
    return json_response({"number": number, "removed": True})


def erased(e164: str) -> str:
    """An erased number as records keep it: the country-code end only (+86*********)."""
    return e164[:3] + "*" * max(0, len(e164) - 3)


async def erase_recipient(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    account = _account(request)
    number = _number(request.match_info["number"], account, "number")
    # The waiting parts of long replies are kept under the address as the SMSC gave it: each
    # configured SMSC's national form of the number is one of them. Those to an address the
    # account holds go too; a range does not hold an SMSC's default source.
    forms = mo_source_forms(number, ctx.config.national_prefixes())
    n = await ctx.store.erase_recipient(
        account.id,
        number,
        erased(number),
        ctx.now_ms(),
        forms,
        mo_defaults=ctx.config.default_sources(),
    )
    return json_response({"number": erased(number), "messages_erased": n})


# -- money -----------------------------------------------------------------------------------------


async def get_balance(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    account = _account(request)
    view = await billing.account_balance(
        ctx.store, account, ctx.now_ms(), ctx.config.billing.currency
    )
    return json_response(view)


async def get_ledger(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    # Unknown parameters are refused: a client paging with a name this endpoint did not read
    # got the first page again for ever. `cursor` is the name the other list endpoints use.
    query = query_params(query_of(request), ("after", "cursor", "limit"))
    name = "cursor" if "cursor" in query else "after"
    raw = query.get(name) or "0"  # an empty `after=` is no cursor, as `cursor=` is
    if not re.fullmatch(r"[0-9]{1,18}", raw):
        raise ApiError("INVALID_CURSOR", f"{name}: an entry id returned by this API")
    limit = _limit(request)
    rows = await ctx.store.ledger_page(_account(request).id, int(raw), limit)
    return json_response(
        {
            "entries": [
                {
                    "id": r.id,
                    "kind": r.kind,
                    "amount_micro": r.amount,
                    "pocket": r.pocket,
                    "at": r.at,
                    "ref": r.ref,
                    "expires_at": r.expires_at,
                }
                for r in rows
            ],
            "next_cursor": str(rows[-1].id) if len(rows) == limit else None,
        }
    )


async def bill_for(ctx: ApiContext, account: Account, month: str) -> dict[str, Any]:
    """The settled bill, or the month so far (status "open") computed the same way."""
    check_month(month)
    book = ctx.tariff_book
    if not book.versions:
        await book.load(ctx.now_ms())
    try:
        return await billing.month_view(ctx.store, account, month, book.versions, ctx.config)
    except BillingError as exc:  # the code's own status (CODES); a 503 carries Retry-After
        status = CODES.get(exc.code, 400)
        raise ApiError(
            exc.code, exc.message, headers=TARIFF_RETRY if status == 503 else None
        ) from None


async def get_bill(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    return json_response(await bill_for(ctx, _account(request), request.match_info["month"]))


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_post("/v1/signs", post_sign)
    r.add_get("/v1/signs", list_signs)
    r.add_get("/v1/signs/{name}", get_sign)
    r.add_patch("/v1/signs/{name}", patch_sign)
    r.add_delete("/v1/signs/{name}", delete_sign)
    r.add_post("/v1/templates", post_template)
    r.add_get("/v1/templates", list_templates)
    r.add_get("/v1/templates/{code}", get_template)
    r.add_patch("/v1/templates/{code}", patch_template)
    r.add_delete("/v1/templates/{code}", delete_template)
    r.add_get("/v1/optouts", list_optouts)
    r.add_post("/v1/optouts", post_optouts)
    r.add_delete("/v1/optouts/{number}", delete_optout)
    r.add_post(f"/v1/recipients/{{number:{ANY_SEGMENT}}}/erase", erase_recipient)
    r.add_get("/v1/balance", get_balance)
    r.add_get("/v1/ledger", get_ledger)
    r.add_get(f"/v1/bills/{{month:{ANY_SEGMENT}}}", get_bill)
