"""Dysmsapi 2017-05-25 actions over the native domain services (one implementation, two faces).

Each action reads Alibaba's parameter names, calls what the native API calls (the send path in
bridge.api.sending, review, store queries), and answers Alibaba's field names. Native refusals
(ApiError) are turned into Alibaba codes by the caller through one table (aliyun_codes).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from bridge import jsonio, review
from bridge.api.auth import refusal
from bridge.api.context import ApiContext
from bridge.api.errors import ApiError
from bridge.api.sending import (
    RENDER_TRIES,
    TemplateChanged,
    after_accept,
    check_accepting,
    check_queue,
    outcome_error,
    prepare_send,
    template_changed,
)
from bridge.api.submit import SendRequest
from bridge.compat.aliyun_errors import Missing, required
from bridge.compat.aliyun_lists import (
    INTERNATIONAL,
    SIGN_SOURCES,
    TEMPLATE_TYPES,
    delete_sms_sign,
    delete_sms_template,
    modify_sms_sign,
    modify_sms_template,
    query_sms_sign_list,
    query_sms_template_list,
)
from bridge.compat.aliyun_reports import DOMESTIC_PREFIX, local_time, phone
from bridge.domain import senders
from bridge.domain.admission import FrequencyRule, Priced, Rules
from bridge.domain.phone import PLANS, PhoneError, normalize
from bridge.domain.settlement import day_bounds
from bridge.store.base import StoreError
from bridge.store.models import AcceptBatch, Account, MessageRecord, NewMessage

Params = Mapping[str, str]
Action = Callable[[ApiContext, Account, Params], Coroutine[Any, Any, dict[str, Any]]]

_CN_MOBILE = re.compile(r"1[3-9][0-9]{9}")
_DATE = re.compile(r"[0-9]{8}")
_EXTEND = re.compile(r"[0-9]{0,12}")
MAX_SEND = 1000  # SendSms: numbers per call
MAX_BATCH = 100  # SendBatchSms: entries per call
_TYPE_NUMBERS = {"verification": 0, "notification": 1, "marketing": 2}
_REVIEW_STATUS = {"pending": 0, "approved": 1, "rejected": 2}


def aliyun_number(raw: str) -> str:
    """A number as the cloud service takes it: a Chinese mobile without country code, or an
    international number with its country code (with or without + / 00)."""
    s = raw.strip().replace(" ", "").replace("-", "")
    if _CN_MOBILE.fullmatch(s):
        s = "+86" + s
    elif s.startswith("00"):
        s = "+" + s[2:]
    elif not s.startswith("+"):
        s = "+" + s
    try:
        number = normalize(s, None)
    except PhoneError as exc:
        raise ApiError("INVALID_NUMBER", f"{raw}: {exc.message}") from None
    # E.164 alone only checks the length: a mistyped mobile without + (a digit short or over)
    # would be guessed international and sent, paid, to a stranger. The cloud service refuses
    # numbers its plan rejects; so do we, for the countries whose mobile plan we know.
    for plan in PLANS.values():
        if number[1:].startswith(plan.code):
            if not plan.national.fullmatch(number[1 + len(plan.code) :]):
                raise ApiError("INVALID_NUMBER", f"{raw}: not a mobile number of +{plan.code}")
            break
    return number


def _json_param(p: Params, name: str, *, required: bool = True) -> Any:
    raw = p.get(name)
    if raw is None or raw == "":
        if required:
            raise Missing(name)
        return None
    try:
        value = json.loads(raw, parse_constant=_not_json)
    except ValueError:
        raise ApiError("INVALID_JSON", f"{name}: not valid JSON") from None
    except RecursionError:  # thousands of nested [ : refused, not a 500
        raise ApiError("INVALID_JSON", f"{name}: nested too deeply") from None
    # A repeated key would keep its last value silently where Alibaba's parser, or the caller's
    # own logging, may read another: refused (jsonio.check_unique), as the native face does.
    try:
        jsonio.check_unique(raw, value)
    except jsonio.DuplicateKeyError as exc:
        raise ApiError(
            "DUPLICATE_JSON_KEY",
            exc.described(name),
        ) from None
    if "\\u0000" in raw and jsonio.has_nul(value):
        raise ApiError("INVALID_JSON", f"{name}: holds a U+0000 character (\\u0000), not allowed")
    return value


def _not_json(constant: str) -> Any:
    """NaN and Infinity: Python's json takes them, JSON (and Alibaba's parser) does not."""
    raise ValueError(constant)


def _params_object(value: Any, name: str) -> dict[str, Any]:
    """A template's values: an object of strings (numbers tolerated, as the native API does).

    Anything else is Alibaba's isv.INVALID_JSON_PARAM ("only string values"); left to the template
    renderer it became isv.TEMPLATE_PARAMS_ILLEGAL ("illegal keyword"), which misleads the caller.
    """
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ApiError("INVALID_JSON", f"{name}: expected a JSON object")
    for key, item in value.items():
        number = isinstance(item, int | float) and not isinstance(item, bool)
        if not isinstance(item, str) and not (number and math.isfinite(item)):
            raise ApiError("INVALID_JSON", f"{name}.{key}: only string values")
    return value


def _out_id(p: Params) -> str | None:
    """Alibaba takes an OutId of up to 255 characters (the native client_ref stops at 64)."""
    out = p.get("OutId") or None
    if out is not None and len(out) > 255:
        raise ApiError("INVALID_FIELD", "OutId: at most 255 characters")
    return out


def _extend(account: Account, p: Params) -> str | None:
    """The source address of a SendSms: the account's extension base plus SmsUpExtendCode, so a
    reply to it comes back to this account; None (the SMSC default) for an account without
    exactly one extension range (bridge/domain/senders.py), whose code then has nothing to
    extend."""
    name = "SmsUpExtendCode"
    code = p.get(name)
    if code and not _EXTEND.fullmatch(code):
        raise ApiError("INVALID_FIELD", f"{name}: up to 12 digits")
    return _extended(account, code, name)


def _extended(account: Account, code: str | None, name: str) -> str | None:
    try:
        return senders.extended_sender(account.senders, code)
    except senders.SenderError as exc:
        raise ApiError("INVALID_FIELD", f"{name}: {exc.message}") from None


def _extend_json(account: Account, p: Params, count: int) -> list[str | None]:
    """SmsUpExtendCodeJson: one code (up to 12 digits, or blank/null) per number, as SendSms;
    the source address of each entry."""
    name = "SmsUpExtendCodeJson"
    codes = _json_param(p, name, required=False)
    if codes is None:
        codes = [None] * count
    if not isinstance(codes, list) or len(codes) != count:
        raise ApiError("INVALID_FIELD", f"{name}: a JSON array with one code per phone number")
    out: list[str | None] = []
    for i, code in enumerate(codes):
        if code is not None and not (isinstance(code, str) and _EXTEND.fullmatch(code)):
            raise ApiError("INVALID_FIELD", f"{name}[{i}]: a string of up to 12 digits")
        out.append(_extended(account, code, f"{name}[{i}]"))
    return out


async def _accept(
    ctx: ApiContext, account: Account, batch_id: str, messages: list[NewMessage], rules: Rules
) -> None:
    check_accepting(ctx)  # as the native send path
    check_queue(ctx)
    now = ctx.now_ms()
    outcome = await ctx.store.accept(
        AcceptBatch(
            account_id=account.id,
            messages=tuple(messages),
            idempotency_key=None,
            idempotency=None,
            tps=account.tps,
            rules=rules,
            # Checked in the accept's transaction: the nonce was recorded (and the account read)
            # before the action ran, and a disable in between must still refuse this send.
            account_version=account.updated_at,
        ),
        now,
    )
    if not outcome.accepted:
        if outcome.auth_refusal == "stale" and outcome.account is not None:
            raise AccountChanged(outcome.account)  # _rendered_again runs the action again
        if outcome.auth_refusal is not None:
            raise refusal(outcome.auth_refusal)
        template_changed(ctx, outcome, rules.template_code)  # TemplateChanged: _rendered_again
        raise outcome_error(outcome, account)
    after_accept(ctx, account, messages, outcome)


class AccountChanged(Exception):
    """The account changed between its read and the accept (nothing was written)."""

    def __init__(self, account: Account) -> None:
        super().__init__(account.id)
        self.account = account


def _rendered_again(action: Action) -> Action:
    """Run a send action again when its template was corrected since this process rendered it
    (the native face does the same in its accept loop)."""

    async def run(ctx: ApiContext, account: Account, p: Params) -> dict[str, Any]:
        for attempt in range(1, RENDER_TRIES + 1):
            try:
                return await action(ctx, account, p)
            except TemplateChanged:
                if attempt == RENDER_TRIES:
                    raise
            except AccountChanged as changed:  # validated with the settings the store saw
                if attempt == RENDER_TRIES:
                    raise refusal("stale") from None
                account = changed.account
        raise AssertionError("unreachable")

    return run


def _request(
    to: tuple[str, ...],
    template: str,
    params: dict[str, Any],
    sign: str,
    out_id: str | None,
    sender: str | None,
) -> SendRequest:
    return SendRequest(
        to=to,
        text=None,
        template=template,
        params=params,
        sign_name=sign,
        client_ref=out_id,
        sender=sender,
        validity_minutes=None,
        scheduled_at=None,
        smart_encoding=None,
    )


async def send_sms(ctx: ApiContext, account: Account, p: Params) -> dict[str, Any]:
    raw_numbers = [n for n in required(p, "PhoneNumbers").split(",") if n.strip()]
    if not raw_numbers:  # "," or blanks: answered OK with a BizId, and nothing was sent
        raise ApiError("INVALID_NUMBER", "PhoneNumbers: no phone number in the list")
    if len(raw_numbers) > MAX_SEND:
        raise ApiError("TOO_MANY_RECIPIENTS", f"PhoneNumbers: at most {MAX_SEND} numbers")
    numbers = tuple(dict.fromkeys(aliyun_number(n) for n in raw_numbers))
    sign = required(p, "SignName")
    template = required(p, "TemplateCode")
    params = _params_object(_json_param(p, "TemplateParam", required=False), "TemplateParam")
    sender = _extend(account, p)
    req = _request(numbers, template, params, sign, _out_id(p), sender)
    now = ctx.now_ms()
    batch_id, messages, rules = await prepare_send(ctx, account, req, now)
    await _accept(ctx, account, batch_id, messages, rules)
    return {"Code": "OK", "Message": "OK", "BizId": batch_id}


async def send_batch_sms(ctx: ApiContext, account: Account, p: Params) -> dict[str, Any]:
    numbers = _json_param(p, "PhoneNumberJson")
    signs = _json_param(p, "SignNameJson")
    template = required(p, "TemplateCode")
    params = _json_param(p, "TemplateParamJson", required=False)
    if not isinstance(numbers, list) or not numbers or len(numbers) > MAX_BATCH:
        raise ApiError("INVALID_FIELD", f"PhoneNumberJson: a JSON array of 1 to {MAX_BATCH}")
    if not isinstance(signs, list) or len(signs) != len(numbers):
        raise ApiError("INVALID_FIELD", "SignNameJson: one sign name per phone number")
    sources = _extend_json(account, p, len(numbers))
    out_id = _out_id(p)  # documented on SendBatchSms too: every message of the batch carries it
    if params is None:
        params = [{}] * len(numbers)
    if not isinstance(params, list) or len(params) != len(numbers):
        raise ApiError("INVALID_JSON", "TemplateParamJson: one object per phone number")
    now = ctx.now_ms()
    batch_id = ""
    first: Rules | None = None
    messages: list[NewMessage] = []
    more_signs: list[str] = []
    limited: list[FrequencyRule] = []
    charges: list[Priced] = []
    seen: set[str] = set()
    for i, (raw, sign, values) in enumerate(zip(numbers, signs, params, strict=True)):
        if not isinstance(raw, str) or not isinstance(sign, str) or not sign:
            raise ApiError("INVALID_FIELD", f"entry {i}: phone number and sign name are strings")
        number = aliyun_number(raw)
        if number in seen:
            raise ApiError("INVALID_FIELD", f"PhoneNumberJson[{i}]: duplicate of {number}")
        seen.add(number)
        req = _request(
            (number,),
            template,
            _params_object(values, f"TemplateParamJson[{i}]"),
            sign,
            out_id,
            sources[i],
        )
        bid, msgs, r = await prepare_send(ctx, account, req, now)
        if first is None:
            batch_id, first = bid, r
        # One batch: the first entry's batch id is the BizId of every message.
        messages.extend(
            m if m.batch_id == batch_id else replace(m, batch_id=batch_id) for m in msgs
        )
        if sign != first.sign_name and sign not in more_signs:
            more_signs.append(sign)
        if r.frequency is not None:
            limited.append(r.frequency)
        charges.extend(r.charges)
    assert first is not None
    # Every entry shares the template (so the limits); each number counts under its own sign.
    frequency = (
        replace(
            limited[0],
            numbers=tuple(n for f in limited for n in f.numbers),
            signs=tuple(f.sign for f in limited for _n in f.numbers),
        )
        if limited
        else None
    )
    rules = replace(
        first, more_signs=tuple(more_signs), frequency=frequency, charges=tuple(charges)
    )
    await _accept(ctx, account, batch_id, messages, rules)
    return {"Code": "OK", "Message": "OK", "BizId": batch_id}


def _send_status(m: MessageRecord) -> int:
    """SendStatus: 1 waiting for a receipt, 2 failed, 3 delivered."""
    if m.state == "delivered":
        return 3
    if m.state in ("failed", "expired", "unknown"):
        return 2
    return 1


def _parse_day(raw: str, name: str) -> datetime:
    """A yyyyMMdd date (naive, midnight)."""
    if not _DATE.fullmatch(raw):
        raise ApiError("INVALID_FIELD", f"{name}: yyyyMMdd")
    try:
        return datetime.strptime(raw, "%Y%m%d")
    except ValueError:
        raise ApiError("INVALID_FIELD", f"{name}: yyyyMMdd") from None


def _day_bounds(day: datetime, tz: str, name: str = "SendDate") -> tuple[int, int]:
    """[start, end) of a local calendar day in ms (23 or 25 hours across a DST change)."""
    try:
        return day_bounds(day.date(), tz)
    except OverflowError:
        raise ApiError("INVALID_FIELD", f"{name}: yyyyMMdd") from None


def _int(p: Params, name: str, default: int, lo: int, hi: int) -> int:
    raw = p.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or not lo <= int(raw) <= hi:
        raise ApiError("INVALID_FIELD", f"{name}: an integer from {lo} to {hi}")
    return int(raw)


async def query_send_details(ctx: ApiContext, account: Account, p: Params) -> dict[str, Any]:
    number = aliyun_number(required(p, "PhoneNumber"))
    tz = ctx.config.rules.timezone
    since, until = _day_bounds(_parse_day(required(p, "SendDate"), "SendDate"), tz)
    size = _int(p, "PageSize", 10, 1, 50)
    page = _int(p, "CurrentPage", 1, 1, 100_000)
    biz = p.get("BizId") or None
    rows = await ctx.store.list_messages(
        account.id, recipient=number, since=since, until=until, limit=10_000
    )
    if biz is not None:
        rows = [r for r in rows if r.batch_id == biz]
    rows.sort(key=lambda r: (r.accepted_at, r.id), reverse=True)
    total = len(rows)
    chunk = rows[(page - 1) * size : page * size]
    details = [
        {
            "PhoneNum": phone(r.recipient),
            "SendStatus": _send_status(r),
            "ErrCode": "DELIVERED" if r.state == "delivered" else (r.error_code or ""),
            "TemplateCode": r.template or "",
            "Content": r.text or "",
            "SendDate": local_time(r.sent_at or r.accepted_at, tz),
            "ReceiveDate": local_time(r.done_at, tz) or "",
            "OutId": r.client_ref or "",
        }
        for r in chunk
    ]
    return {
        "Code": "OK",
        "Message": "OK",
        "TotalCount": str(total),
        "SmsSendDetailDTOs": {"SmsSendDetailDTO": details},
    }


async def query_send_statistics(ctx: ApiContext, account: Account, p: Params) -> dict[str, Any]:
    tz = ctx.config.rules.timezone
    is_globe = _int(p, "IsGlobe", 1, 1, 2)
    first, last = _date(p, "StartDate"), _date(p, "EndDate")
    if not 0 <= (last - first).days <= 30:  # calendar days: a 25-hour day is still one
        raise ApiError("INVALID_FIELD", "EndDate: not before StartDate, at most 30 days later")
    size = _int(p, "PageSize", 10, 1, 50)
    page = _int(p, "PageIndex", 1, 1, 100_000)
    sign_name = p.get("SignName") or None
    template_type = p.get("TemplateType") or None
    kind = None
    if template_type is not None:
        kind = TEMPLATE_TYPES.get(template_type)
        if kind is None:
            raise ApiError("INVALID_FIELD", "TemplateType: 0, 1, 2 or 3")
    # IsGlobe 1 is mainland China (the face's domestic numbers), 2 everything else. Each local
    # day is counted within its own bounds: one UTC offset for the range put the messages after
    # a daylight-saving change on the wrong day.
    targets = []
    for n in range((last - first).days + 1):
        day = first + timedelta(days=n)
        start, end = _day_bounds(day, tz, "EndDate")
        rows = await ctx.store.stats(
            account.id,
            start,
            end,
            0,
            prefix=DOMESTIC_PREFIX,
            within=is_globe == 1,
            sign_name=sign_name,
            kind=kind,
        )
        if not rows:
            continue
        total = {k: sum(r[k] for r in rows) for k in rows[0] if k != "day_index"}
        targets.append(
            {
                "TotalCount": total["submitted"],
                "RespondedSuccessCount": total["delivered"],
                # Alibaba has no canceled or withdrawn count: those are failures to send there,
                # as QuerySendDetails reports them (SendStatus 2), so the counts still add up.
                "RespondedFailCount": total["failed"]
                + total["unknown"]
                + total["canceled"]
                + total["withdrawn"],
                "NoRespondedCount": total["pending"],
                "SendDate": day.strftime("%Y%m%d"),
            }
        )
    targets.sort(key=lambda t: t["SendDate"], reverse=True)
    return {
        "Code": "OK",
        "Message": "OK",
        "Data": {
            "TotalSize": len(targets),
            "TargetList": targets[(page - 1) * size : page * size],
        },
    }


def _date(p: Params, name: str) -> datetime:
    day = _parse_day(required(p, name), name)
    if day.year < 1970:  # before any message; and far dates overflow the bounds' arithmetic
        raise ApiError("INVALID_FIELD", f"{name}: yyyyMMdd, from 19700101")
    return day


async def add_sms_sign(ctx: ApiContext, account: Account, p: Params) -> dict[str, Any]:
    name = required(p, "SignName")
    source = SIGN_SOURCES.get(p.get("SignSource", "0"))
    if source is None:
        raise ApiError("INVALID_FIELD", "SignSource: 0 to 5")
    remark = p.get("Remark", "")
    if len(remark) > 500:  # refused, not cut: the operator reviews what was sent
        raise ApiError("INVALID_FIELD", "Remark: at most 500 characters")
    try:
        sign = await review.submit_sign(
            ctx.store, account.id, {"name": name, "source": source, "remark": remark},
            ctx.now_ms(),
        )  # fmt: skip
    except review.ReviewError as exc:
        raise ApiError(exc.code, exc.message) from None
    except StoreError as exc:  # submitted before (a retry after a lost answer): no 500
        raise ApiError(exc.code, exc.message) from None
    return {"Code": "OK", "Message": "OK", "SignName": sign.name}


async def query_sms_sign(ctx: ApiContext, account: Account, p: Params) -> dict[str, Any]:
    name = required(p, "SignName")
    sign = await ctx.store.get_sign(account.id, name)
    if sign is None:
        raise ApiError("SIGN_NAME_NOT_APPROVED", f"SignName: {name!r} is not registered")
    tz = ctx.config.rules.timezone
    return {
        "Code": "OK",
        "Message": "OK",
        "SignName": sign.name,
        "SignStatus": _REVIEW_STATUS[sign.status],
        "Reason": sign.reason or "",
        "CreateDate": local_time(sign.created_at, tz),
    }


async def add_sms_template(ctx: ApiContext, account: Account, p: Params) -> dict[str, Any]:
    kind = TEMPLATE_TYPES.get(required(p, "TemplateType"))
    if kind is None:
        raise ApiError("INVALID_FIELD", "TemplateType: 0, 1, 2 or 3")
    name, remark = required(p, "TemplateName"), p.get("Remark", "")
    body = {
        "type": kind,
        "name": name,
        "content": required(p, "TemplateContent"),
        "remark": remark,
        "international": p["TemplateType"] == INTERNATIONAL,
    }
    # Refused, not cut: the template was queried back under a name it was not given.
    if len(name) > 64 or len(remark) > 500:
        raise ApiError(
            "TEMPLATE_TOO_LONG", "TemplateName: at most 64 characters; Remark: at most 500"
        )
    try:
        t = await review.submit_template(
            ctx.store, account.id, body, ctx.now_ms(), ctx.config, ctx.send_rules.filter
        )
    except review.ReviewError as exc:
        raise ApiError(exc.code, exc.message) from None
    return {"Code": "OK", "Message": "OK", "TemplateCode": t.code}


async def query_sms_template(ctx: ApiContext, account: Account, p: Params) -> dict[str, Any]:
    code = required(p, "TemplateCode")
    t = await ctx.send_rules.template(account.id, code)
    if t is not None:
        t = await ctx.store.get_template(code)  # the status now, not the cached one
    if t is None or t.account_id != account.id:
        raise ApiError("TEMPLATE_NOT_FOUND", f"TemplateCode: {code!r} is not known")
    return {
        "Code": "OK",
        "Message": "OK",
        "TemplateCode": t.code,
        "TemplateName": t.name,
        "TemplateContent": t.content,
        "TemplateType": int(INTERNATIONAL) if t.international else _TYPE_NUMBERS[t.kind],
        "TemplateStatus": _REVIEW_STATUS[t.status],
        "Reason": t.reason or "",
        "CreateDate": local_time(t.created_at, ctx.config.rules.timezone),
    }


ACTIONS: dict[str, Action] = {
    "SendSms": _rendered_again(send_sms),
    "SendBatchSms": _rendered_again(send_batch_sms),
    "QuerySendDetails": query_send_details,
    "QuerySendStatistics": query_send_statistics,
    "AddSmsSign": add_sms_sign,
    "QuerySmsSign": query_sms_sign,
    "AddSmsTemplate": add_sms_template,
    "QuerySmsTemplate": query_sms_template,
    "QuerySmsTemplateList": query_sms_template_list,
    "QuerySmsSignList": query_sms_sign_list,
    "DeleteSmsTemplate": delete_sms_template,
    "DeleteSmsSign": delete_sms_sign,
    # Corrections of a rejected template or sign name: the older calls and their successors.
    "ModifySmsTemplate": modify_sms_template,
    "UpdateSmsTemplate": modify_sms_template,
    "ModifySmsSign": modify_sms_sign,
    "UpdateSmsSign": modify_sms_sign,
}
