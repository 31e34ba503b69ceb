"""The account's templates and sign names as Alibaba's console and SDK manage them:
QuerySmsTemplateList and QuerySmsSignList (a page at a time), DeleteSmsTemplate, DeleteSmsSign.

Why: a customer moving from the cloud service syncs its templates and signs with these calls;
answered InvalidAction.NotFound, that sync failed although every template was there.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Any

from bridge.api.context import ApiContext
from bridge.api.errors import ApiError
from bridge.compat.aliyun_errors import required
from bridge.compat.aliyun_reports import local_time
from bridge.store.models import Account, Sign, Template

Params = Mapping[str, str]

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
        "TemplateType": LIST_TYPE[t.kind],
        "OuterTemplateType": OUTER_TYPE[t.kind],
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
