"""The one table from our native error codes to Alibaba Cloud SMS (Dysmsapi) `Code`/`Message`.

Alibaba answers business refusals on an authenticated call with HTTP 200 and `Code` set to an
`isv.*` / `isp.*` code (the SDKs do not raise; callers check `Code`), so most rows are 200. Only
what the real gateway answers as a protocol error keeps a 4xx/5xx: a missing mandatory parameter
(400, `Missing<Name>`), user flow control (`Throttling.User`, 400) and server faults (5xx). Codes
and wording are Alibaba's, from its published Dysmsapi error list (help.aliyun.com/document_detail/
101346.html, "API错误码") and the frequency-control messages the real service sends
(`触发分钟级流控Permits:1`), which client code matches byte for byte: those rows carry no detail.

`x-acs-retry-after` (milliseconds: the Python SDK, alibabacloud-tea-openapi 0.4.x, reads it as an
int and sleeps that many ms) goes on the throttling rows only (`retry_after_headers`): with it the
SDKs raise their throttling error instead of a plain client/server error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "DEFAULT",
    "TABLE",
    "AliyunCode",
    "retry_after_headers",
    "to_aliyun",
]


@dataclass(frozen=True, slots=True)
class AliyunCode:
    """One row: Alibaba's code and wording for a native code.

    `detail`: append our own message (which names the field) after Alibaba's wording; off where
    clients match Alibaba's message exactly. `throttled`: the answer carries `x-acs-retry-after`.
    """

    http_status: int
    code: str
    message: str
    detail: bool = True
    throttled: bool = False


def _biz(code: str, message: str, *, detail: bool = True) -> AliyunCode:
    return AliyunCode(200, code, message, detail=detail)


def _frequency(message: str) -> AliyunCode:
    return _biz("isv.BUSINESS_LIMIT_CONTROL", message, detail=False)


_SYSTEM_ERROR = _biz("isp.SYSTEM_ERROR", "系统错误")
_INVALID_PARAMETERS = _biz("isv.INVALID_PARAMETERS", "参数异常")
_TEMPLATE_ILLEGAL = _biz("isv.SMS_TEMPLATE_ILLEGAL", "模板不合法(不存在或被拉黑)")
_SIGN_ILLEGAL = _biz("isv.SMS_SIGNATURE_ILLEGAL", "签名不合法(不存在或被拉黑)")
_INVALID_JSON = _biz("isv.INVALID_JSON_PARAM", "JSON参数不合法，只接受字符串值")
_BLACKLISTED = _biz("isv.BLACK_KEY_CONTROL_LIMIT", "黑名单管控")
_UNAVAILABLE = AliyunCode(
    503, "ServiceUnavailable", "The request has failed due to a temporary failure of the server."
)

# Unknown native codes: a business refusal nobody mapped yet. HTTP 200 keeps the SDKs from raising
# and `Code` is still not "OK"; the native code is kept in the message.
DEFAULT = _SYSTEM_ERROR

TABLE: Mapping[str, AliyunCode] = MappingProxyType(
    {
        # recipients and text
        "INVALID_NUMBER": _biz("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号"),
        "TOO_MANY_RECIPIENTS": _biz("isv.MOBILE_COUNT_OVER_LIMIT", "手机号码数量超过限制"),
        "EMPTY_MESSAGE": _INVALID_PARAMETERS,
        "MESSAGE_TOO_LONG": _biz("isv.PARAM_LENGTH_LIMIT", "参数超出长度限制"),
        "UNENCODABLE": _INVALID_PARAMETERS,
        # No route to a number's network: as undeliverable as an illegal number, and not retryable.
        "NO_ROUTE": _biz("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号"),
        # request shape
        "INVALID_JSON": _INVALID_JSON,
        # A JSON parameter repeating a key: Alibaba has no code of its own for it; its JSON one.
        "DUPLICATE_JSON_KEY": _INVALID_JSON,
        "INVALID_FIELD": _INVALID_PARAMETERS,
        "MISSING_FIELD": AliyunCode(
            400, "MissingParameter", "The input parameter that is mandatory is not supplied."
        ),
        "UNKNOWN_FIELD": _INVALID_PARAMETERS,
        "NOT_FOUND": _INVALID_PARAMETERS,
        # templates at send time
        "TEMPLATE_NOT_FOUND": _biz("isv.SMS_TEMPLATE_ILLEGAL", "该账号下找不到对应模板"),
        "TEMPLATE_NOT_APPROVED": _TEMPLATE_ILLEGAL,
        "TEMPLATE_MISSING_PARAMETERS": _biz("isv.TEMPLATE_MISSING_PARAMETERS", "模版缺少变量"),
        "TEMPLATE_UNKNOWN_PARAMETERS": _INVALID_PARAMETERS,
        "TEMPLATE_PARAMETER_INVALID": _biz(
            "isv.TEMPLATE_PARAMS_ILLEGAL", "模版变量里包含非法关键字"
        ),
        # templates at review (AddSmsTemplate)
        "TEMPLATE_MALFORMED": _TEMPLATE_ILLEGAL,
        "TEMPLATE_EMPTY": _TEMPLATE_ILLEGAL,
        "TEMPLATE_NO_OPTOUT_WORDING": _TEMPLATE_ILLEGAL,
        "TEMPLATE_TOO_LONG": _biz(
            "isv.TEMPLATE_OVER_LIMIT", "模板的名称、内容或申请说明的字数超过限制"
        ),
        "TEMPLATE_CONTENT_FILTERED": _biz("isv.SMS_CONTENT_ILLEGAL", "短信内容包含禁止发送内容"),
        # sign names
        "SIGN_NAME_REQUIRED": AliyunCode(
            400, "MissingSignName", "SignName is mandatory for this action."
        ),
        "SIGN_NAME_INVALID": _biz("isv.SIGN_NAME_ILLEGAL", "签名名称不符合规范"),
        "SIGN_NAME_NOT_APPROVED": _SIGN_ILLEGAL,
        "SIGN_NAME_TAKEN": _biz("isv.SIGN_NAME_ILLEGAL", "签名名称不符合规范"),
        "SIGN_NAME_EXISTS": _biz("isv.SIGN_NAME_ILLEGAL", "签名名称不符合规范"),
        # corrections (Modify*/Update*): only of a rejected one
        "SIGN_NOT_EDITABLE": _SIGN_ILLEGAL,
        "TEMPLATE_NOT_EDITABLE": _TEMPLATE_ILLEGAL,
        "TEMPLATE_CHANGED": _TEMPLATE_ILLEGAL,
        # content and recipients policy
        "MARKETING_NOT_ALLOWED": _biz("isv.PRODUCT_UNSUBSCRIBE", "产品未开通"),
        "RAW_TEXT_NOT_ALLOWED": _biz("isp.RAM_PERMISSION_DENY", "RAM权限DENY"),
        # Base plus SmsUpExtendCode making a number another account holds (an exact claim).
        "SENDER_NOT_ALLOWED": _biz("isp.RAM_PERMISSION_DENY", "RAM权限DENY"),
        "CONTENT_FILTERED": _biz("isv.SMS_CONTENT_ILLEGAL", "短信内容包含禁止发送内容"),
        "RECIPIENT_OPTED_OUT": _BLACKLISTED,
        "RECIPIENT_BLOCKED": _BLACKLISTED,
        # volume: the frequency rows reproduce Alibaba's exact messages (Permits added by to_aliyun)
        "FREQUENCY_LIMIT_MINUTE": _biz(
            "isv.BUSINESS_LIMIT_CONTROL", "触发分钟级流控", detail=False
        ),
        "FREQUENCY_LIMIT_HOUR": _biz("isv.BUSINESS_LIMIT_CONTROL", "触发小时级流控", detail=False),
        "FREQUENCY_LIMIT_DAY": _biz("isv.BUSINESS_LIMIT_CONTROL", "触发天级流控", detail=False),
        "ACCOUNT_RATE_LIMIT": AliyunCode(
            400,
            "Throttling.User",
            "Request was denied due to user flow control.",
            throttled=True,
        ),
        "DAILY_QUOTA_EXCEEDED": _biz("isv.DAY_LIMIT_CONTROL", "触发日发送限额"),
        # money and account
        "INSUFFICIENT_BALANCE": _biz("isv.AMOUNT_NOT_ENOUGH", "账户余额不足"),
        # No price for the destination: it is not sold, so it is as undeliverable as NO_ROUTE (not
        # isv.OUT_OF_SERVICE, which Alibaba uses for an empty balance; not a retryable fault).
        "PRICE_NOT_FOUND": _biz("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号"),
        "ACCOUNT_DISABLED": _biz("isv.ACCOUNT_ABNORMAL", "账户异常"),
        # server side
        "QUEUE_FULL": AliyunCode(
            _UNAVAILABLE.http_status, _UNAVAILABLE.code, _UNAVAILABLE.message, throttled=True
        ),
        "SHUTTING_DOWN": AliyunCode(
            _UNAVAILABLE.http_status, _UNAVAILABLE.code, _UNAVAILABLE.message, throttled=True
        ),
        "STORE_UNAVAILABLE": AliyunCode(
            _UNAVAILABLE.http_status, _UNAVAILABLE.code, _UNAVAILABLE.message, throttled=True
        ),
        # Not valid HTTP (no parameter was even read): a 400, as the gateway refuses requests.
        "MALFORMED_HTTP": AliyunCode(400, _INVALID_PARAMETERS.code, _INVALID_PARAMETERS.message),
        "REQUEST_TIMEOUT": AliyunCode(
            408, _INVALID_PARAMETERS.code, "The request body did not arrive in time."
        ),
        # The body as sent is what the signature covers: a compressed one is refused, as the
        # native face refuses it (415), not answered 200 with a system error.
        "UNSUPPORTED_MEDIA_TYPE": AliyunCode(
            415, _INVALID_PARAMETERS.code, "Content-Encoding is not supported."
        ),
        "CLIENT_DISCONNECTED": AliyunCode(
            400, _INVALID_PARAMETERS.code, "The request body did not arrive."
        ),
        "INTERNAL_ERROR": AliyunCode(
            500,
            "InternalError",
            "The request processing has failed due to some unknown error, exception or failure.",
        ),
    }
)

_FREQUENCY = frozenset({"FREQUENCY_LIMIT_MINUTE", "FREQUENCY_LIMIT_HOUR", "FREQUENCY_LIMIT_DAY"})


# Refusals Alibaba answers apart where ours share one code (TemplateError.reason): many customers'
# code tables match these two.
_BY_REASON: Mapping[tuple[str, str | None], AliyunCode] = MappingProxyType(
    {
        ("TEMPLATE_PARAMETER_INVALID", "length"): _biz(
            "isv.PARAM_LENGTH_LIMIT", "参数超出长度限制"
        ),
        ("TEMPLATE_PARAMETER_INVALID", "link"): _biz("isv.PARAM_NOT_SUPPORT_URL", "不支持URL"),
    }
)


def to_aliyun(
    code: str,
    message: str,
    *,
    field: str | None = None,
    permits: int | None = None,
    reason: str | None = None,
) -> tuple[int, str, str]:
    """(HTTP status, Alibaba `Code`, Alibaba `Message`) for a native refusal; never raises.

    `field`: the Alibaba parameter name when known, so MISSING_FIELD becomes `Missing<Field>` as the
    real gateway answers. `permits`: the limit that was hit, for the frequency rows'
    `...Permits:<n>` suffix (omitted when not given).
    """
    row = _BY_REASON.get((code, reason)) or TABLE.get(code)
    if row is None:
        text = f"{DEFAULT.message}: {code}: {message}" if message else f"{DEFAULT.message}: {code}"
        return DEFAULT.http_status, DEFAULT.code, text
    if code == "MISSING_FIELD" and field:
        return 400, f"Missing{field}", f"{field} is mandatory for this action."
    if code in _FREQUENCY:
        suffix = f"Permits:{permits}" if permits is not None else ""
        return row.http_status, row.code, row.message + suffix
    if row.detail and message and message != row.message:
        return row.http_status, row.code, f"{row.message}: {message}"
    return row.http_status, row.code, row.message


def retry_after_headers(code: str, retry_after_s: float) -> dict[str, str]:
    """`{"x-acs-retry-after": <ms>}` for a throttling row, `{}` otherwise.

    The SDKs ignore a value of 0 or less, so at least 1 ms is sent.
    """
    row = TABLE.get(code)
    if row is None or not row.throttled:
        return {}
    return {"x-acs-retry-after": str(max(1, math.ceil(retry_after_s * 1000)))}
