"""The account's templates and sign names as Alibaba's console and SDK manage them:
QuerySmsTemplateList and QuerySmsSignList (a page at a time), DeleteSmsTemplate, DeleteSmsSign,
and the corrections of a rejected one: ModifySmsTemplate / UpdateSmsTemplate, ModifySmsSign /
UpdateSmsSign (bridge.review.edit_template / edit_sign).

Why: a customer moving from the cloud service syncs its templates and signs with these calls;
answered InvalidAction.NotFound, that sync failed although every template was there. And a
rejected template is corrected under its code, which the customer's code already sends with.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

from bridge import review
from bridge.api.context import ApiContext
from bridge.api.errors import ApiError
from bridge.compat.aliyun_errors import required
from bridge.compat.aliyun_reports import local_time
from bridge.store.models import Account, Sign, Template

Params = Mapping[str, str]

# Alibaba's template types -> ours (3 = international/HK-Macao-Taiwan: a notification, with the
# template's `international` flag set, which reads back as 3, or 6 in the list calls)
TEMPLATE_TYPES = {"0": "verification", "1": "notification", "2": "marketing", "3": "notification"}
INTERNATIONAL = "3"
LIST_INTERNATIONAL = 6  # the list calls' TemplateType for it (OuterTemplateType keeps 3)
# UpdateSmsTemplate's IntlType, required with TemplateType 3: what kind of international message.
INTL_TYPES = {"0": "notification", "1": "marketing", "2": "verification"}
# Alibaba's SignSource numbers: 0 company, 1 website registered with the MIIT, 2 app, 3 official
# account or mini program, 4 e-commerce store, 5 trademark.
SIGN_SOURCES = {"0": "company", "1": "website", "2": "app", "3": "public_account", "4": "other",
                "5": "trademark"}  # fmt: skip

# The list calls' AuditStatus words (QuerySmsTemplate/QuerySmsSign answer numbers instead).
AUDIT_STATUS = {
    "pending": "AUDIT_STATE_INIT",
    "approved": "AUDIT_STATE_PASS",
    "rejected": "AUDIT_STATE_NOT_PASS",
}
# The list calls number template types anew (TemplateType), and keep the old numbers, those of
# AddSmsTemplate, as OuterTemplateType.
LIST_TYPE = {"notification": 0, "marketing": 1, "verification": 2}
OUTER_TYPE = {"verification": 0, "notification": 1, "marketing": 2}
# The most rows a list reads (an account's templates or signs are tens, rarely hundreds).
MAX_ROWS = 5000


def page_of(p: Params) -> tuple[int, int]:
    """(PageIndex from 1, PageSize 1-50; 10 when not given), as the cloud service takes them."""
    out = []
    for name, default, hi in (("PageIndex", 1, 100_000), ("PageSize", 10, 50)):
        raw = p.get(name)
        if raw is None or raw == "":
            out.append(default)
        elif raw.isascii() and raw.isdigit() and 1 <= int(raw) <= hi:
            out.append(int(raw))
        else:
            raise ApiError("INVALID_FIELD", f"{name}: an integer from 1 to {hi}")
    return out[0], out[1]


def _reason(status: str, reason: str | None, reviewed_at: int | None, tz: str) -> dict[str, str]:
    if status != "rejected":
        return {}
    return {
        "RejectInfo": reason or "",
        "RejectDate": local_time(reviewed_at, tz) or "",
        "RejectSubInfo": "",
    }


def template_row(t: Template, tz: str) -> dict[str, Any]:
    return {
        "TemplateCode": t.code,
        "TemplateName": t.name,
        "TemplateContent": t.content,
        "TemplateType": LIST_INTERNATIONAL if t.international else LIST_TYPE[t.kind],
        "OuterTemplateType": int(INTERNATIONAL) if t.international else OUTER_TYPE[t.kind],
        "AuditStatus": AUDIT_STATUS[t.status],
        "CreateDate": local_time(t.created_at, tz),
        "Reason": _reason(t.status, t.reason, t.reviewed_at, tz),
    }


def sign_row(s: Sign, tz: str) -> dict[str, Any]:
    return {
        "SignName": s.name,
        "AuditStatus": AUDIT_STATUS[s.status],
        "CreateDate": local_time(s.created_at, tz),
        "Reason": _reason(s.status, s.reason, s.reviewed_at, tz),
    }


def _page(rows: list[Any], index: int, size: int) -> tuple[list[Any], dict[str, Any]]:
    """Oldest first, so a page holds the same rows while new ones are added."""
    rows = sorted(rows, key=lambda r: (r.created_at, getattr(r, "code", None) or r.name))
    start = (index - 1) * size
    return rows[start : start + size], {
        "TotalCount": len(rows),
        "CurrentPage": index,
        "PageSize": size,
    }


async def query_sms_template_list(ctx: ApiContext, account: Account, p: Params) -> dict[str, Any]:
    index, size = page_of(p)
    rows = await ctx.store.list_templates(account_id=account.id, limit=MAX_ROWS)
    page, counts = _page(rows, index, size)
    tz = ctx.config.rules.timezone
    return {
        "Code": "OK",
        "Message": "OK",
        "SmsTemplateList": [template_row(t, tz) for t in page],
        **counts,
    }


async def query_sms_sign_list(ctx: ApiContext, account: Account, p: Params) -> dict[str, Any]:
    index, size = page_of(p)
    rows = await ctx.store.list_signs(account_id=account.id, limit=MAX_ROWS)
    page, counts = _page(rows, index, size)
    tz = ctx.config.rules.timezone
    return {"Code": "OK", "Message": "OK", "SmsSignList": [sign_row(s, tz) for s in page], **counts}


async def delete_sms_template(ctx: ApiContext, account: Account, p: Params) -> dict[str, Any]:
    code = required(p, "TemplateCode")
    if await ctx.store.delete_template(account.id, code, ctx.now_ms()) is None:
        raise ApiError("TEMPLATE_NOT_FOUND", f"TemplateCode: {code!r} is not known")
    return {"Code": "OK", "Message": "OK", "TemplateCode": code}


async def delete_sms_sign(ctx: ApiContext, account: Account, p: Params) -> dict[str, Any]:
    name = unicodedata.normalize("NFKC", required(p, "SignName"))  # as stored at submission
    if await ctx.store.delete_sign(account.id, name, ctx.now_ms()) is None:
        raise ApiError("SIGN_NAME_NOT_APPROVED", f"SignName: {name!r} is not registered")
    return {"Code": "OK", "Message": "OK", "SignName": name}


def _edit_error(exc: review.ReviewError, not_found: str, message: str) -> ApiError:
    if exc.code == "NOT_FOUND":  # Alibaba's code for an unknown template or sign
        return ApiError(not_found, message)
    return ApiError(exc.code, exc.message)


async def modify_sms_template(ctx: ApiContext, account: Account, p: Params) -> dict[str, Any]:
    """ModifySmsTemplate / UpdateSmsTemplate: the parameters given replace the stored ones (the
    cloud service requires them all; a template keeps what is left out)."""
    code = required(p, "TemplateCode")
    body: dict[str, Any] = {}
    if p.get("TemplateType", "") != "":
        kind = TEMPLATE_TYPES.get(p["TemplateType"])
        if kind is None:
            raise ApiError("INVALID_FIELD", "TemplateType: 0, 1, 2 or 3")
        body["international"] = p["TemplateType"] == INTERNATIONAL
        if body["international"] and p.get("IntlType", "") != "":
            # UpdateSmsTemplate: what an international template is (Alibaba's IntlType).
            kind = INTL_TYPES.get(p["IntlType"])
            if kind is None:
                raise ApiError("INVALID_FIELD", "IntlType: 0, 1 or 2")
        body["type"] = kind
    for param, field in (
        ("TemplateName", "name"),
        ("TemplateContent", "content"),
        ("Remark", "remark"),
    ):
        if p.get(param, "") != "":
            body[field] = p[param]
    if len(body.get("name", "")) > 64 or len(body.get("remark", "")) > 500:
        raise ApiError(
            "TEMPLATE_TOO_LONG", "TemplateName: at most 64 characters; Remark: at most 500"
        )
    try:
        t = await review.edit_template(
            ctx.store, account.id, code, body, ctx.now_ms(), ctx.config, ctx.send_rules.filter
        )
    except review.ReviewError as exc:
        raise _edit_error(
            exc, "TEMPLATE_NOT_FOUND", f"TemplateCode: {code!r} is not known"
        ) from None
    return {"Code": "OK", "Message": "OK", "TemplateCode": t.code, "TemplateName": t.name}


async def modify_sms_sign(ctx: ApiContext, account: Account, p: Params) -> dict[str, Any]:
    """ModifySmsSign / UpdateSmsSign: a new SignSource or Remark for a rejected sign name (its
    qualification files and ids are the cloud service's own and are not kept)."""
    name = unicodedata.normalize("NFKC", required(p, "SignName"))  # as stored at submission
    body: dict[str, Any] = {}
    if p.get("SignSource", "") != "":
        source = SIGN_SOURCES.get(p["SignSource"])
        if source is None:
            raise ApiError("INVALID_FIELD", "SignSource: 0 to 5")
        body["source"] = source
    if p.get("Remark", "") != "":
        body["remark"] = p["Remark"]
    try:  # nothing we keep given: the papers alone went to the cloud service; resubmitted
        sign = await review.edit_sign(
            ctx.store, account.id, name, body, ctx.now_ms(), unchanged=True
        )
    except review.ReviewError as exc:
        raise _edit_error(
            exc, "SIGN_NAME_NOT_APPROVED", f"SignName: {name!r} is not registered"
        ) from None
    return {"Code": "OK", "Message": "OK", "SignName": sign.name}
