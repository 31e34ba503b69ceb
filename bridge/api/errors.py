"""The error taxonomy of the HTTP API: stable machine codes, their HTTP statuses, one envelope.

Every refusal is `{"error": {"code", "message", "request_id"}}`; the code is the contract clients
branch on, the message names the field for humans. Adding a code is fine; changing one is a
breaking change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Retry-After of STORE_UNAVAILABLE: long enough for a PostgreSQL failover or a restarted
# database to come back.
STORE_RETRY_AFTER_S = 5

# code -> HTTP status
CODES: dict[str, int] = {
    # 400: the request itself is wrong
    "INVALID_JSON": 400,
    "DUPLICATE_JSON_KEY": 400,
    "MALFORMED_HTTP": 400,
    "INVALID_REQUEST": 400,
    "INVALID_FIELD": 400,
    "UNKNOWN_FIELD": 400,
    "MISSING_FIELD": 400,
    "INVALID_NUMBER": 400,
    "TOO_MANY_RECIPIENTS": 400,
    "EMPTY_MESSAGE": 400,
    "MESSAGE_TOO_LONG": 400,
    "UNENCODABLE": 400,
    "IDEMPOTENCY_KEY_REQUIRED": 400,
    "INVALID_IDEMPOTENCY_KEY": 400,
    "INVALID_CURSOR": 400,
    "SIGN_NAME_REQUIRED": 400,
    "SIGN_NAME_INVALID": 400,
    "TEMPLATE_MISSING_PARAMETERS": 400,
    "TEMPLATE_UNKNOWN_PARAMETERS": 400,
    "TEMPLATE_PARAMETER_INVALID": 400,
    "TEMPLATE_MALFORMED": 400,
    "INVALID_TARIFF": 400,
    "INVALID_MONTH": 400,
    # 401: authentication
    "MISSING_AUTH": 401,
    "UNKNOWN_APP_KEY": 401,
    "KEY_REVOKED": 401,
    "REQUEST_EXPIRED": 401,
    "BODY_HASH_MISMATCH": 401,
    "SIGNATURE_MISMATCH": 401,
    "NONCE_REUSED": 401,
    "INVALID_ADMIN_TOKEN": 401,
    # 403: authenticated but not allowed
    "ACCOUNT_DISABLED": 403,
    "RAW_TEXT_NOT_ALLOWED": 403,
    "ADMIN_DISABLED": 403,
    "MARKETING_NOT_ALLOWED": 403,
    "SENDER_NOT_ALLOWED": 403,
    # 402: prepaid funds
    "INSUFFICIENT_BALANCE": 402,
    # 404 / 405 / 408 / 409 / 413
    "NOT_FOUND": 404,
    "METHOD_NOT_ALLOWED": 405,
    "ACCOUNT_EXISTS": 409,
    "TOO_MANY_KEYS": 409,
    "ACCOUNT_CLOSED": 409,
    "KEY_ALREADY_REVOKED": 409,
    "SIGN_NAME_EXISTS": 409,
    "SIGN_NAME_TAKEN": 409,
    "TARIFF_EXISTS": 409,
    "OPTOUT_BY_RECIPIENT": 409,
    "NOT_CANCELABLE": 409,
    "TEMPLATE_NOT_EDITABLE": 409,
    "SIGN_NOT_EDITABLE": 409,
    "TEMPLATE_CHANGED": 409,
    "PAYMENT_REF_REUSED": 409,
    "ACCOUNT_NOT_CLOSED": 409,
    "REFUND_NOT_OWED": 409,
    "IDEMPOTENCY_IN_PROGRESS": 409,
    "DNC_IMPORT_SUPERSEDED": 409,
    "REQUEST_TIMEOUT": 408,
    "CLIENT_DISCONNECTED": 400,
    "BODY_TOO_LARGE": 413,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    # 422: well-formed but not acceptable
    "IDEMPOTENCY_KEY_REUSED": 422,
    "TEMPLATE_NOT_FOUND": 422,
    "INVALID_SCHEDULE": 422,
    "NO_ROUTE": 422,
    "TEMPLATE_NOT_APPROVED": 422,
    "SIGN_NAME_NOT_APPROVED": 422,
    "CONTENT_FILTERED": 422,
    "RECIPIENT_OPTED_OUT": 422,
    "RECIPIENT_BLOCKED": 422,
    "PRICE_NOT_FOUND": 422,
    "SETTLEMENT_NOT_READY": 409,
    # 429 / 503
    "ACCOUNT_RATE_LIMIT": 429,
    "DAILY_QUOTA_EXCEEDED": 429,
    "FREQUENCY_LIMIT_MINUTE": 429,
    "FREQUENCY_LIMIT_HOUR": 429,
    "FREQUENCY_LIMIT_DAY": 429,
    "QUEUE_FULL": 503,
    "SHUTTING_DOWN": 503,
    "STORE_UNAVAILABLE": 503,
    "STORE_BUSY": 503,
    "TARIFF_NOT_FOUND": 503,
    "TARIFF_AMBIGUOUS": 503,
    "INTERNAL_ERROR": 500,
}


# The refusals of a batch's recipients, each of which may carry `details.recipients`.
RECIPIENT_CODES = frozenset(
    {
        "RECIPIENT_OPTED_OUT",
        "RECIPIENT_BLOCKED",
        "FREQUENCY_LIMIT_MINUTE",
        "FREQUENCY_LIMIT_HOUR",
        "FREQUENCY_LIMIT_DAY",
    }
)


# Codes of the refusals of a batch's numbers as sent (malformed, duplicate, no route, no price):
# with several numbers given, `details.recipients` lists every one refused (optional: the
# same codes refuse other fields, where there is no list).
LISTED_CODES = frozenset({"INVALID_NUMBER", "INVALID_FIELD", "NO_ROUTE", "PRICE_NOT_FOUND"})


class ApiError(Exception):
    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        headers: Mapping[str, str] | None = None,
        reason: str | None = None,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status if status is not None else CODES.get(code, 400)
        self.headers = dict(headers or {})
        self.reason = reason  # a finer cause some faces answer apart (TemplateError.reason)
        # Machine-readable particulars beside the code (the body's `details`): a batch's
        # refused recipients, each with its code (admission.refused_details).
        self.details = details


def envelope(
    code: str, message: str, request_id: str, details: Mapping[str, Any] | None = None
) -> dict[str, dict[str, Any]]:
    """The error body; `details` only when the refusal has some (the codes RECIPIENT_CODES)."""
    body: dict[str, Any] = {"code": code, "message": message, "request_id": request_id}
    if details is not None:
        body["details"] = details
    return {"error": body}
