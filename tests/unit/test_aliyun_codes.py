"""The native -> Alibaba error table (bridge.compat.aliyun_codes)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.compat.aliyun_codes import DEFAULT, TABLE, retry_after_headers, to_aliyun

NATIVE_CODES = (
    "INVALID_NUMBER TOO_MANY_RECIPIENTS EMPTY_MESSAGE MESSAGE_TOO_LONG UNENCODABLE NO_ROUTE "
    "INVALID_JSON INVALID_FIELD MISSING_FIELD UNKNOWN_FIELD TEMPLATE_NOT_FOUND "
    "TEMPLATE_NOT_APPROVED TEMPLATE_MISSING_PARAMETERS TEMPLATE_UNKNOWN_PARAMETERS "
    "TEMPLATE_PARAMETER_INVALID SIGN_NAME_REQUIRED SIGN_NAME_INVALID SIGN_NAME_NOT_APPROVED "
    "SIGN_NAME_TAKEN MARKETING_NOT_ALLOWED RAW_TEXT_NOT_ALLOWED CONTENT_FILTERED "
    "RECIPIENT_OPTED_OUT RECIPIENT_BLOCKED FREQUENCY_LIMIT_MINUTE FREQUENCY_LIMIT_HOUR "
    "FREQUENCY_LIMIT_DAY ACCOUNT_RATE_LIMIT DAILY_QUOTA_EXCEEDED INSUFFICIENT_BALANCE "
    "PRICE_NOT_FOUND ACCOUNT_DISABLED QUEUE_FULL SHUTTING_DOWN STORE_UNAVAILABLE INTERNAL_ERROR "
    "NOT_FOUND TEMPLATE_MALFORMED TEMPLATE_CONTENT_FILTERED TEMPLATE_NO_OPTOUT_WORDING "
    "TEMPLATE_TOO_LONG TEMPLATE_EMPTY SENDER_NOT_ALLOWED MALFORMED_HTTP REQUEST_TIMEOUT "
    "DUPLICATE_JSON_KEY"
).split()

# Codes the real Dysmsapi / API gateway uses (help.aliyun.com/document_detail/101346.html and the
# gateway's common codes); anything else in the table would be an invention no SDK user expects.
REAL_CODES = {
    "isv.MOBILE_NUMBER_ILLEGAL",
    "isv.MOBILE_COUNT_OVER_LIMIT",
    "isv.INVALID_PARAMETERS",
    "isv.PARAM_LENGTH_LIMIT",
    "isv.INVALID_JSON_PARAM",
    "isv.SMS_TEMPLATE_ILLEGAL",
    "isv.TEMPLATE_MISSING_PARAMETERS",
    "isv.TEMPLATE_PARAMS_ILLEGAL",
    "isv.TEMPLATE_OVER_LIMIT",
    "isv.SMS_CONTENT_ILLEGAL",
    "isv.SIGN_NAME_ILLEGAL",
    "isv.SMS_SIGNATURE_ILLEGAL",
    "isv.PRODUCT_UNSUBSCRIBE",
    "isp.RAM_PERMISSION_DENY",
    "isv.BLACK_KEY_CONTROL_LIMIT",
    "isv.BUSINESS_LIMIT_CONTROL",
    "isv.DAY_LIMIT_CONTROL",
    "isv.AMOUNT_NOT_ENOUGH",
    "isv.ACCOUNT_ABNORMAL",
    "isp.SYSTEM_ERROR",
    "MissingParameter",
    "MissingSignName",
    "Throttling.User",
    "ServiceUnavailable",
    "InternalError",
}


def test_every_native_code_is_mapped_explicitly() -> None:
    assert len(NATIVE_CODES) == 46
    missing = [code for code in NATIVE_CODES if code not in TABLE]
    assert missing == []
    assert {row.code for row in TABLE.values()} <= REAL_CODES


def test_business_errors_are_http_200_with_a_non_ok_code() -> None:
    protocol = {"MISSING_FIELD", "SIGN_NAME_REQUIRED", "ACCOUNT_RATE_LIMIT", "MALFORMED_HTTP"}
    server = {"QUEUE_FULL", "SHUTTING_DOWN", "STORE_UNAVAILABLE", "INTERNAL_ERROR"}
    for code in NATIVE_CODES:
        status, ali_code, _ = to_aliyun(code, "detail")
        assert ali_code != "OK"
        if code in protocol:
            assert status == 400, code
        elif code == "REQUEST_TIMEOUT":
            assert status == 408
        elif code in server:
            assert status >= 500, code
        else:
            assert status == 200, code


@pytest.mark.parametrize(
    ("native", "expected"),
    [
        (
            "INVALID_NUMBER",
            (200, "isv.MOBILE_NUMBER_ILLEGAL", "非法手机号: to: 123 is not a number"),
        ),
        (
            "INSUFFICIENT_BALANCE",
            (200, "isv.AMOUNT_NOT_ENOUGH", "账户余额不足: to: 123 is not a number"),
        ),
        (
            "TEMPLATE_MISSING_PARAMETERS",
            (200, "isv.TEMPLATE_MISSING_PARAMETERS", "模版缺少变量: to: 123 is not a number"),
        ),
        (
            "TEMPLATE_NOT_APPROVED",
            (
                200,
                "isv.SMS_TEMPLATE_ILLEGAL",
                "模板不合法(不存在或被拉黑): to: 123 is not a number",
            ),
        ),
        (
            "SIGN_NAME_NOT_APPROVED",
            (
                200,
                "isv.SMS_SIGNATURE_ILLEGAL",
                "签名不合法(不存在或被拉黑): to: 123 is not a number",
            ),
        ),
        (
            "INVALID_JSON",
            (
                200,
                "isv.INVALID_JSON_PARAM",
                "JSON参数不合法，只接受字符串值: to: 123 is not a number",
            ),
        ),
        (
            "DAILY_QUOTA_EXCEEDED",
            (200, "isv.DAY_LIMIT_CONTROL", "触发日发送限额: to: 123 is not a number"),
        ),
        (
            "TOO_MANY_RECIPIENTS",
            (200, "isv.MOBILE_COUNT_OVER_LIMIT", "手机号码数量超过限制: to: 123 is not a number"),
        ),
    ],
)
def test_exact_rows(native: str, expected: tuple[int, str, str]) -> None:
    assert to_aliyun(native, "to: 123 is not a number") == expected


def test_frequency_limits_reproduce_alibaba_messages_exactly() -> None:
    assert to_aliyun("FREQUENCY_LIMIT_MINUTE", "ignored", permits=1) == (
        200,
        "isv.BUSINESS_LIMIT_CONTROL",
        "触发分钟级流控Permits:1",
    )
    assert to_aliyun("FREQUENCY_LIMIT_HOUR", "x", permits=5)[2] == "触发小时级流控Permits:5"
    assert to_aliyun("FREQUENCY_LIMIT_DAY", "x", permits=10)[2] == "触发天级流控Permits:10"
    assert to_aliyun("FREQUENCY_LIMIT_DAY", "x")[2] == "触发天级流控"


def test_missing_field_names_the_alibaba_parameter() -> None:
    assert to_aliyun("MISSING_FIELD", "to: required", field="PhoneNumbers") == (
        400,
        "MissingPhoneNumbers",
        "PhoneNumbers is mandatory for this action.",
    )
    status, code, message = to_aliyun("MISSING_FIELD", "to: required")
    assert (status, code) == (400, "MissingParameter") and message.endswith(": to: required")


def test_message_without_detail_and_repeated_detail() -> None:
    assert to_aliyun("INSUFFICIENT_BALANCE", "") == (200, "isv.AMOUNT_NOT_ENOUGH", "账户余额不足")
    assert to_aliyun("INSUFFICIENT_BALANCE", "账户余额不足")[2] == "账户余额不足"


def test_unknown_codes_fall_back_without_raising() -> None:
    assert to_aliyun("BRAND_NEW", "something") == (
        DEFAULT.http_status,
        "isp.SYSTEM_ERROR",
        "系统错误: BRAND_NEW: something",
    )
    assert DEFAULT.http_status == 200
    assert to_aliyun("", "")[1] == "isp.SYSTEM_ERROR"


@settings(max_examples=100, deadline=None)
@given(code=st.text(max_size=30), message=st.text(max_size=60), permits=st.none() | st.integers())
def test_to_aliyun_is_total(code: str, message: str, permits: int | None) -> None:
    status, ali_code, ali_message = to_aliyun(code, message, permits=permits)
    assert status in (200, 400, 500, 503) and ali_code and ali_message


def test_retry_after_only_on_throttling_rows_in_milliseconds() -> None:
    assert retry_after_headers("ACCOUNT_RATE_LIMIT", 1.5) == {"x-acs-retry-after": "1500"}
    assert retry_after_headers("QUEUE_FULL", 0.0001) == {"x-acs-retry-after": "1"}
    assert retry_after_headers("SHUTTING_DOWN", 0) == {"x-acs-retry-after": "1"}
    assert retry_after_headers("QUEUE_FULL", 2) == {"x-acs-retry-after": "2000"}
    for code in ("FREQUENCY_LIMIT_MINUTE", "INSUFFICIENT_BALANCE", "INTERNAL_ERROR", "NOPE"):
        assert retry_after_headers(code, 5) == {}
    throttled = {code for code, row in TABLE.items() if row.throttled}
    assert throttled == {"ACCOUNT_RATE_LIMIT", "QUEUE_FULL", "SHUTTING_DOWN", "STORE_UNAVAILABLE"}
    assert retry_after_headers("STORE_UNAVAILABLE", 5) == {"x-acs-retry-after": "5000"}
    assert all(TABLE[code].http_status >= 400 for code in throttled)
