"""The OpenAPI 3.0 document served at /openapi.json.

Built from the same tables the server uses (the error taxonomy in `bridge.api.errors`, the message
states, the send fields), so a new error code or field cannot be forgotten here. The integration
tests validate every response they receive against this document, so it stays true: a field added
to a response without being documented fails the suite (response objects are closed with
`additionalProperties: false`).
"""

from __future__ import annotations

from collections.abc import Iterable
from copy import deepcopy
from typing import Any

from bridge import __version__
from bridge.api.errors import CODES, LISTED_CODES, RECIPIENT_CODES
from bridge.api.signing import ALGORITHM
from bridge.domain.admission import MAX_LISTED_REFUSALS

# What each error code means to a client; a test checks every code in CODES has an entry.
ERROR_DESCRIPTIONS: dict[str, str] = {
    "INVALID_JSON": "The body is empty, not valid JSON, or holds an unpaired surrogate escape.",
    "DUPLICATE_JSON_KEY": "An object of the JSON body repeats a key (at any depth); the message "
    "names the key and its JSON path, such as $.params.code. Send each key once per object.",
    "REQUEST_TIMEOUT": "The body did not arrive within server.body_timeout_s (default 30 s) of "
    "the headers; the connection is closed.",
    "CLIENT_DISCONNECTED": "The client closed the connection before its body arrived (counted "
    "and logged as such; the answer cannot be delivered).",
    "MALFORMED_HTTP": "The request is not valid HTTP/1.1 (request line, a header, or the body's "
    "framing); the connection is closed.",
    "INVALID_REQUEST": "The body is not a JSON object, or its fields contradict each other "
    "(text together with template).",
    "INVALID_FIELD": "A field or query parameter has a wrong type or value; the message names it.",
    "UNKNOWN_FIELD": "A field or query parameter the endpoint does not know (named).",
    "MISSING_FIELD": "A required field is absent; the message names it.",
    "INVALID_NUMBER": "A phone number is neither E.164 nor an unambiguous national mobile number "
    "of the account's default country.",
    "TOO_MANY_RECIPIENTS": "More recipients than server.max_recipients (default 1000).",
    "EMPTY_MESSAGE": "The text is empty or only white space.",
    "MESSAGE_TOO_LONG": "The text, sign name included, is over text.max_chars (default 500) or "
    "needs more parts than an SMS can be split into.",
    "UNENCODABLE": "The text holds a character no SMS encoding can carry.",
    "IDEMPOTENCY_KEY_REQUIRED": "POST /v1/messages needs an Idempotency-Key header.",
    "INVALID_IDEMPOTENCY_KEY": "Idempotency-Key must be 1-255 visible ASCII characters "
    "(! to ~, no spaces).",
    "INVALID_CURSOR": "cursor is not a value this API returned as next_cursor.",
    "MISSING_AUTH": "No Authorization header.",
    "UNKNOWN_APP_KEY": "The app key in Credential is not known.",
    "KEY_REVOKED": "The app key was revoked; revocation takes effect at once.",
    "REQUEST_EXPIRED": "X-Bridge-Date is more than server.clock_skew_s (default 300 s) from the "
    "server clock; the message carries the server time.",
    "BODY_HASH_MISMATCH": "X-Bridge-Content-SHA256 is not the SHA-256 of the body received.",
    "SIGNATURE_MISMATCH": "The signature does not verify, or the signing headers are malformed, "
    "or a required header is not signed, or a signed header is absent; the message says which.",
    "NONCE_REUSED": "X-Bridge-Nonce was already used by this key within the skew window.",
    "INVALID_ADMIN_TOKEN": "The admin API needs `Authorization: Bearer <server.admin_token>`.",
    "ACCOUNT_DISABLED": "The account is disabled by an operator.",
    "RAW_TEXT_NOT_ALLOWED": "This account may send approved templates only, not free text.",
    "ADMIN_DISABLED": "The admin API is off: server.admin_token is not set.",
    "NOT_FOUND": "No such endpoint, message, account or key. Another account's message id is "
    "answered exactly like an unknown one.",
    "METHOD_NOT_ALLOWED": "The path exists but not with this method.",
    "ACCOUNT_EXISTS": "An account with this name already exists.",
    "ACCOUNT_CLOSED": "The account is closed (its data was erased): it cannot be enabled, "
    "changed or given keys again, nor take top-ups, vouchers or cards.",
    "PAYMENT_REF_REUSED": "A top-up, voucher or card sale names a ref the account already has "
    "with another amount (or kind): nothing was credited; another payment needs a ref of its "
    "own (the same amount again is a retry, answered 200 with duplicate_ref). A refund payout "
    "alike: its ref names an earlier payout of another amount, or money the account received; "
    "nothing was recorded.",
    "ACCOUNT_NOT_CLOSED": "A refund payout for an account that is not closed: only a closed "
    "account's cash is owed back; nothing was recorded.",
    "REFUND_NOT_OWED": "A refund payout of more than the closed account is still owed back "
    "(the message names owed, paid and outstanding); nothing was recorded.",
    "TOO_MANY_KEYS": "The account already has two active app keys; revoke one first.",
    "KEY_ALREADY_REVOKED": "The app key was already revoked.",
    "BODY_TOO_LARGE": "The body is over server.max_body_bytes (default 1 MiB).",
    "UNSUPPORTED_MEDIA_TYPE": "A body was sent with a Content-Type other than application/json "
    "(text/csv or text/plain for PUT /admin/dnc/{id}), with a charset other than utf-8, or "
    "compressed (Content-Encoding).",
    "IDEMPOTENCY_KEY_REUSED": "This Idempotency-Key was used with a different body in the last "
    "server.idempotency_hours (default 24) (outside a send: a different method, path, query or "
    "body).",
    "IDEMPOTENCY_IN_PROGRESS": "A request with this Idempotency-Key is still running; retry after "
    "Retry-After (writes other than a send take the key before they run).",
    "TEMPLATE_NOT_FOUND": "The template is not known (or not approved) for this account.",
    "INVALID_SCHEDULE": "scheduled_at is more than 30 days ahead.",
    "NO_ROUTE": "No SMSC route covers a recipient's number.",
    "ACCOUNT_RATE_LIMIT": "The account's messages-per-second rate (tps) is exceeded; see "
    "Retry-After.",
    "TEMPLATE_NOT_EDITABLE": "Only a rejected template can be corrected: an approved one is "
    "fixed (submit a new one), a pending one waits for its review.",
    "SIGN_NOT_EDITABLE": "Only a rejected sign name can be corrected.",
    "TEMPLATE_CHANGED": "The template was corrected meanwhile: an operator's decision names "
    "an older revision, or a send was rendered from an older one each of three times. Read it "
    "again (or send again).",
    "NOT_CANCELABLE": "The message is on a bind, may have reached an SMSC (a submit "
    "unanswered), or is sent or final: only a queued or scheduled message no SMSC took can be "
    "canceled.",
    "SENDER_NOT_ALLOWED": "The sender is another account's (assigned to it, or held more firmly "
    "by it), or not one of this account's assigned addresses (or the account has none and "
    "rules.sender_policy is assigned); the message says which.",
    "QUEUE_FULL": "The send queue is over store.max_queued_segments; see Retry-After.",
    "SHUTTING_DOWN": "The gateway is shutting down; retry (another instance) after Retry-After.",
    "STORE_UNAVAILABLE": "The store cannot be reached; see Retry-After.",
    "DNC_IMPORT_SUPERSEDED": "A do-not-contact import stopped part-way: the list was imported "
    "again, or deleted, while it ran (SQLite), and the later operation's list stands.",
    "STORE_BUSY": "An operator change waited too long for the sends in progress (one may be "
    "stuck); nothing was changed, try again.",
    "INTERNAL_ERROR": "An unexpected error; quote the request_id to the operator.",
    "SIGN_NAME_REQUIRED": "A template send needs sign_name (an approved sign of the account).",
    "SIGN_NAME_INVALID": "sign_name is not a valid sign name (2-12 letters/digits, no brackets, "
    "NFKC form); the message says why.",
    "SIGN_NAME_NOT_APPROVED": "sign_name is not registered, still pending, or rejected for this "
    "account.",
    "SIGN_NAME_EXISTS": "This account already registered this sign name.",
    "SIGN_NAME_TAKEN": "Another account holds this sign name (canonically equal).",
    "TEMPLATE_NOT_APPROVED": "The template is pending review or was rejected.",
    "TEMPLATE_MISSING_PARAMETERS": "params lacks a value for a placeholder of the template "
    "(all missing names listed).",
    "TEMPLATE_UNKNOWN_PARAMETERS": "params has a name the template has no placeholder for.",
    "TEMPLATE_PARAMETER_INVALID": "A parameter value is too long, not a string or number, holds "
    "a control character, or a link the template does not allow.",
    "TEMPLATE_MALFORMED": "The template content has a malformed ${...} placeholder.",
    "MARKETING_NOT_ALLOWED": "Marketing templates need an account enabled for marketing.",
    "CONTENT_FILTERED": "Free text, or the text a template's values make, matches the "
    "operator's content filter (rule named).",
    "RECIPIENT_OPTED_OUT": "The recipient opted out of this account's messages (reply TD/STOP "
    "or /v1/optouts); details.recipients lists every refused recipient of the batch.",
    "RECIPIENT_BLOCKED": "The recipient is on an operator's do-not-contact list; "
    "details.recipients lists every refused recipient of the batch.",
    "OPTOUT_BY_RECIPIENT": "The recipient opted out by replying (source mo): the account cannot "
    "take the number off its opt-out list; only an operator can lift it.",
    "FREQUENCY_LIMIT_MINUTE": "More sends to this number in this clock minute than allowed "
    "(details.recipients: every refused recipient).",
    "FREQUENCY_LIMIT_HOUR": "More sends to this number in this clock hour than allowed "
    "(details.recipients: every refused recipient).",
    "FREQUENCY_LIMIT_DAY": "More sends to this number in 24 hours than allowed "
    "(details.recipients: every refused recipient).",
    "DAILY_QUOTA_EXCEEDED": "The account's daily message quota is used up; Retry-After points "
    "at local midnight.",
    "INSUFFICIENT_BALANCE": "The prepaid balance (vouchers, cash; cards for international) "
    "does not cover the charge; nothing was queued.",
    "PRICE_NOT_FOUND": "The tariff has no price for the destination country.",
    "TARIFF_NOT_FOUND": "No tariff is in force (operator configuration).",
    "TARIFF_AMBIGUOUS": "Two tariff versions take effect at the same time (operator "
    "configuration).",
    "INVALID_TARIFF": "The tariff document is invalid; the message names the field.",
    "TARIFF_EXISTS": "A tariff with this version or effective time exists; versions are never "
    "edited.",
    "INVALID_MONTH": "The month is not YYYY-MM.",
    "SETTLEMENT_NOT_READY": "Some of the month's messages still await their outcome.",
}

MESSAGE_STATES = ("queued", "sent", "delivered", "failed", "expired", "unknown")
ENCODINGS = ("gsm7", "ucs2", "latin1")
_ISO_MS = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$"
_RETRY_STATUSES = (429, 503)

SIGNING_DESCRIPTION = f"""\
Every `/v1/` request is signed with the account's app key and app secret.

```
X-Bridge-Date: 2026-11-29T08:00:00Z        (UTC, whole seconds, within ±300 s of the server)
X-Bridge-Nonce: <16-64 chars of [A-Za-z0-9_-], never reused>
X-Bridge-Content-SHA256: <lower-case hex SHA-256 of the raw body; of b"" when empty>
Authorization: {ALGORITHM} Credential=<app_key>,SignedHeaders=<a;b;c>,Signature=<hex>

CanonicalRequest = METHOD "\\n" CanonicalURI "\\n" CanonicalQuery "\\n" CanonicalHeaders "\\n"
                   SignedHeaders "\\n" ContentSHA256
StringToSign     = "{ALGORITHM}\\n" X-Bridge-Date "\\n" hex(SHA-256(CanonicalRequest))
Signature        = hex(HMAC-SHA256(app_secret, StringToSign))
```

- CanonicalURI: each path segment percent-decoded once and re-encoded per RFC 3986 (only
  `A-Z a-z 0-9 - _ . ~` stay bare, upper-case hex); `/` kept; an empty path is `/`.
- CanonicalQuery: from the raw query string: split on `&`, then on the first `=`, decode once
  without turning `+` into a space, re-encode per RFC 3986, sort by name then value, join
  `name=value` with `&`; empty when there is no query. Send `+` as `%2B`.
- CanonicalHeaders: `lowercase-name:trimmed-value` plus a newline per signed header, sorted by
  name (so an empty line stands before SignedHeaders).
- SignedHeaders: lower-case, sorted, `;`-joined; must include `host`, `x-bridge-date`,
  `x-bridge-nonce`, `x-bridge-content-sha256`, and `content-type` and `idempotency-key` whenever
  they are sent. `host` is the Host header as sent (without a default port).

Checks, in order, each with its own code (401): MISSING_AUTH, header syntax
(SIGNATURE_MISMATCH), UNKNOWN_APP_KEY, KEY_REVOKED, REQUEST_EXPIRED, BODY_HASH_MISMATCH,
SIGNATURE_MISMATCH, NONCE_REUSED (a nonce is recorded only after the signature verifies); then
ACCOUNT_DISABLED (403). The account rate limit ACCOUNT_RATE_LIMIT (429) counts messages: only a
send takes from it, in its accept, after the sending rules. docs/signing-example.md works one
request through byte by byte.
"""

DESCRIPTION = """\
Signed HTTP in, SMPP 3.4 out. Every refusal is the JSON envelope
`{"error": {"code", "message", "request_id"}}` with the status its code always has (the table in
`components.x-error-codes`); every response carries `X-Request-Id`. A send refused for some of
its recipients (RECIPIENT_OPTED_OUT, RECIPIENT_BLOCKED, FREQUENCY_LIMIT_*) also carries
`details` (RecipientRefusals): every refused recipient and its code. An unknown path is 404
`NOT_FOUND` and a known path with the wrong method is 405 `METHOD_NOT_ALLOWED`, both in the same
envelope. Times in message records are ISO-8601 UTC with milliseconds; times in account and key
records are unix milliseconds.
"""


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _schema(name: str) -> dict[str, str]:
    return _ref("schemas", name)


def _obj(
    properties: dict[str, Any], required: Iterable[str] | None = None, *, closed: bool = True
) -> dict[str, Any]:
    """An object schema; `required` defaults to every property (responses always carry them all)."""
    out: dict[str, Any] = {"type": "object", "properties": properties}
    names = sorted(properties if required is None else required)
    if names:  # OpenAPI 3.0: `required`, when present, lists at least one name
        out["required"] = names
    if closed:
        out["additionalProperties"] = False
    return out


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


_STR = {"type": "string"}
_INT = {"type": "integer"}
_BOOL = {"type": "boolean"}
# A send and a preview read null as absent.
_SMART = {"type": "boolean", "nullable": True, "description": "null: as absent"}
_MS = {"type": "integer", "description": "unix milliseconds"}
_TIME = {"type": "string", "format": "date-time", "pattern": _ISO_MS}


def _error_schemas() -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for code, status in CODES.items():
        by_status.setdefault(status, []).append(code)
    schemas: dict[str, Any] = {"RecipientRefusals": _recipient_refusals()}
    for status, codes in sorted(by_status.items()):
        fields: dict[str, Any] = {
            "code": {"type": "string", "enum": sorted(codes)},
            "message": {"type": "string", "description": "names the field"},
            "request_id": {"type": "string", "pattern": "^req_[0-9a-f]{16}$"},
        }
        if (RECIPIENT_CODES | LISTED_CODES) & set(codes):
            fields["details"] = _schema("RecipientRefusals")
        schemas[f"Error{status}"] = _obj(
            {"error": _obj(fields, required=("code", "message", "request_id"))}
        )
        schemas[f"Error{status}"]["description"] = "Codes: " + ", ".join(
            f"`{c}` ({ERROR_DESCRIPTIONS.get(c, '')})" for c in sorted(codes)
        )
    return schemas


def _recipient_refusals() -> dict[str, Any]:
    out = _obj(
        {
            "recipients": {
                "type": "array",
                "maxItems": MAX_LISTED_REFUSALS,
                "items": _obj(
                    {
                        "index": {**_COUNT, "description": "its (first) position in `to`"},
                        "to": {
                            "type": "string",
                            "description": "the number, E.164; as sent (at most 64 characters) "
                            "when it is not a number",
                        },
                        "code": {"type": "string", "enum": sorted(RECIPIENT_CODES | LISTED_CODES)},
                        "retry_after": {
                            "type": "integer",
                            "minimum": 1,
                            "description": "frequency limits only: seconds until this number "
                            "may be sent to",
                        },
                    },
                    required=("index", "to", "code"),
                ),
                "description": "every refused recipient, by position in `to`, each once with "
                "its first reason (opt-out, then do-not-contact, then frequency; or, refused "
                "before the rules, malformed, duplicate, no route, no price), at most "
                f"{MAX_LISTED_REFUSALS}",
            },
            "refused": {**_COUNT, "description": "how many recipients were refused in all"},
            "truncated": {
                **_BOOL,
                "description": f"more than {MAX_LISTED_REFUSALS} were refused: the first "
                f"{MAX_LISTED_REFUSALS} by position are listed",
            },
        }
    )
    out["description"] = (
        "A batch refused for some of its recipients (RECIPIENT_OPTED_OUT, RECIPIENT_BLOCKED, "
        "FREQUENCY_LIMIT_*): `code` and `message` name the first as before, `details` every one."
    )
    return out


def error_statuses() -> list[int]:
    return sorted(set(CODES.values()))


def _error_responses() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for status in error_statuses():
        headers: dict[str, Any] = {"X-Request-Id": _ref("headers", "XRequestId")}
        if status in _RETRY_STATUSES:
            headers["Retry-After"] = _ref("headers", "RetryAfter")
        codes = sorted(c for c, s in CODES.items() if s == status)
        out[f"E{status}"] = {
            "description": "Refused: " + ", ".join(codes),
            "headers": headers,
            "content": {"application/json": {"schema": _schema(f"Error{status}")}},
        }
    return out


def _ok(schema_name: str, description: str, **headers: Any) -> dict[str, Any]:
    return {
        "description": description,
        "headers": {"X-Request-Id": _ref("headers", "XRequestId"), **headers},
        "content": {"application/json": {"schema": _schema(schema_name)}},
    }


def _errors(*statuses: int) -> dict[str, Any]:
    return {str(s): _ref("responses", f"E{s}") for s in sorted(set(statuses))}


# Statuses any operation may answer. 400: a %00 in the path (INVALID_REQUEST) or malformed HTTP
# (MALFORMED_HTTP), on every route; operations that read no body or query had none listed, and
# their answers did not match the document. 415: a compressed body; 503: STORE_UNAVAILABLE.
_V1_ERRORS = (400, 401, 403, 413, 415, 500, 503)
_ADMIN_ERRORS = (400, 401, 403, 413, 500, 503)


def _v1_op(op_id: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    params = [_ref("parameters", n) for n in ("XBridgeDate", "XBridgeNonce", "XBridgeContentSha")]
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "tags": [
            "messages" if "essage" in op_id or op_id in ("preview", "cancelBatch") else "account"
        ],
        "security": [{"BridgeHmac": []}],
        "parameters": params + extra.pop("parameters", []),
        "responses": {**responses, **_errors(*_V1_ERRORS)},
    }
    op.update(extra)
    return op


def _admin_op(op_id: str, summary: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {
        "operationId": op_id,
        "summary": summary,
        "tags": ["admin"],
        "security": [{"AdminToken": []}],
        "responses": {**responses, **_errors(*_ADMIN_ERRORS)},
    }
    op.update(extra)
    return op


def _json_body(schema_name: str, required: bool = True) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _schema(schema_name)}}}


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


_SENDER_ENTRY = r"^(\+?[0-9]{1,20}\*?|[A-Za-z0-9._-]([A-Za-z0-9 ._-]{0,9}[A-Za-z0-9._-])?)$"


def _account_props() -> dict[str, Any]:
    return {
        "id": {"type": "string", "pattern": "^acc_[0-9A-Z]{26}$"},
        "name": _STR,
        "kind": {"type": "string", "enum": ["prepaid", "postpaid"]},
        "raw_text": _BOOL,
        "marketing": _BOOL,
        "default_country": _nullable({"type": "string", "pattern": "^[A-Z]{2}$"}),
        "tps": {"type": "integer", "minimum": 0, "description": "messages/s; 0 = no limit"},
        "daily_quota": {"type": "integer", "minimum": 0},
        "status_callback_url": _nullable(_STR),
        "mo_callback_url": _nullable(_STR),
        "status": {"type": "string", "enum": ["active", "disabled", "closed"]},
        "created_at": _MS,
        "updated_at": _MS,
        "low_balance_threshold": {
            "type": "integer",
            "minimum": 0,
            "description": "micro-units; a balance.low event fires once per dip: at the first "
            "charge or voucher expiry that leaves the available balance below it (0 = off)",
        },
        "low_balance_warned_at": _nullable(
            {
                **_MS,
                "description": "when the balance.low event of the current dip fired; null while "
                "the balance is at or above low_balance_threshold (or none is set), and after "
                "the threshold changed (a new threshold, a new dip to warn of). Read-only",
            }
        ),
        "report_format": {
            "type": "string",
            "enum": ["native", "aliyun"],
            "description": "status and MO webhooks in this API's shape or Alibaba Cloud's "
            "SmsReport / SmsUp arrays",
        },
        "senders": {
            "type": "array",
            "maxItems": 100,
            "items": {"type": "string", "pattern": _SENDER_ENTRY},
            "description": "source addresses assigned to the account: numbers (international "
            "with +, not 00), alphanumeric ids, and extension ranges (a number then *: that "
            "number with digits appended, up to 20). An address an account holds is its own: "
            "no other account may send from it (403 SENDER_NOT_ALLOWED; a narrower claim, an "
            "exact number inside a range, wins), and a reply to it is the account's. An "
            "account with a list sends only from it; one without may use any address nobody "
            "holds, unless rules.sender_policy is assigned. The Alibaba-compatible API sends "
            "from the one extension range's number plus SmsUpExtendCode.",
        },
    }


def _refund_props() -> dict[str, Any]:
    """billing.refund_fields: a closed account's cash owed back, and its payout (zeros for an
    account never closed)."""
    micro = {"type": "integer", "minimum": 0, "description": "micro-units of the currency"}
    return {
        "refund_owed_micro": {
            **micro,
            "description": "cash owed back to the customer: what the account held at its "
            "close, and any credit it got after (a late refund, a settlement), each a `closed` "
            "ledger entry",
        },
        "refund_owed": {"type": "string", "description": "the same in currency units"},
        "refund_paid_micro": {
            **micro,
            "description": "of it, what an operator recorded as paid back "
            "(POST /admin/accounts/{ref}/refunds: `refund_paid` ledger entries)",
        },
        "refund_outstanding_micro": {
            "type": "integer",
            "description": "owed less paid: still to pay back (never below 0 through the API)",
        },
    }


def _settings_props() -> dict[str, Any]:
    props = _account_props()
    return {
        "kind": props["kind"],
        "raw_text": _BOOL,
        "marketing": _BOOL,
        "default_country": _nullable({"type": "string", "pattern": "^[A-Za-z]{2}$"}),
        "tps": {"type": "integer", "minimum": 0, "maximum": 1_000_000_000},
        "daily_quota": {"type": "integer", "minimum": 0, "maximum": 1_000_000_000},
        "status_callback_url": _nullable({"type": "string", "pattern": "^https?://"}),
        "mo_callback_url": _nullable({"type": "string", "pattern": "^https?://"}),
        "low_balance_threshold": {"type": "integer", "minimum": 0, "maximum": 10**15},
        "report_format": {"type": "string", "enum": ["native", "aliyun"]},
        "senders": props["senders"],
    }


def _message_props() -> dict[str, Any]:
    return {
        "id": {"type": "string", "pattern": "^msg_[0-9A-Z]{26}$"},
        "batch_id": {"type": "string", "pattern": "^bat_[0-9A-Z]{26}$"},
        "client_ref": _nullable(_STR),
        "to": {
            "type": "string",
            "pattern": r"^\+[1-9][0-9*]{6,14}$",
            "description": "E.164; after an erasure request, masked (+86***********)",
        },
        "sender": _nullable(_STR),
        "sign_name": _nullable(_STR),
        "template": _nullable(_STR),
        "text": _nullable({"type": "string", "description": "the final text, sign name included"}),
        "status": {"type": "string", "enum": list(MESSAGE_STATES)},
        "error_code": _nullable(_STR),
        "encoding": {"type": "string", "enum": list(ENCODINGS)},
        "data_coding": {"type": "integer", "minimum": 0, "maximum": 255},
        "segments": {"type": "integer", "minimum": 1, "description": "parts on the air"},
        "billable_units": {"type": "integer", "minimum": 1, "description": "by the tariff rule"},
        "segments_sent": {"type": "integer", "minimum": 0},
        "segments_delivered": {"type": "integer", "minimum": 0},
        "segments_failed": {"type": "integer", "minimum": 0},
        "smsc": _nullable(_STR),
        "accepted_at": _TIME,
        "scheduled_at": _nullable(_TIME),
        "expires_at": _nullable(_TIME),
        "sent_at": _nullable(_TIME),
        "done_at": _nullable(_TIME),
    }


def _schemas() -> dict[str, Any]:
    account = _account_props()
    message = _message_props()
    key = _obj(
        {
            "app_key": _STR,
            "account": _STR,
            "status": {"type": "string", "enum": ["active", "revoked"]},
            "created_at": _MS,
            "revoked_at": _nullable(_MS),
            "last_used_at": _nullable(
                {
                    "type": "integer",
                    "description": "unix milliseconds, within a minute: the last request whose "
                    "signature this key checked; null: none since the upgrade to schema 35",
                }
            ),
        }
    )
    part = _obj(
        {
            "seq": {"type": "integer", "minimum": 1},
            "status": {
                "type": "string",
                "description": "queued, sent, delivered, undeliverable, expired, rejected, "
                "unknown, failed, timeout or expired_unsent",
            },
            "smsc": _nullable(_STR),
            "smsc_message_id": _nullable(_STR),
            "submitted_at": _nullable(_TIME),
            "done_at": _nullable(_TIME),
            "error_code": _nullable(_STR),
            "receipt_inferred_from": _nullable(
                {
                    "type": "integer",
                    "minimum": 1,
                    "description": "the seq of the part whose receipt settled this one (an SMSC "
                    "with receipts: one_per_message sends one receipt per long message); null "
                    "when the part had its own outcome",
                }
            ),
        }
    )
    recipients = {
        "oneOf": [
            {"type": "string", "description": "one number"},
            {
                "type": "array",
                "items": {"type": "string"},
                "minItems": 1,
                "description": "up to server.max_recipients (default 1000) distinct numbers",
            },
        ],
        "description": "E.164 (`+8613800138000`), or a national mobile number when the account "
        "has a default country that makes it unambiguous",
    }
    send_request = _obj(
        {
            "to": recipients,
            "sign_name": {"type": "string", "minLength": 1, "maxLength": 32},
            "template": {"type": "string", "description": "an approved template code"},
            "params": {
                "type": "object",
                "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "number"}]},
                "description": "template parameters (with template only)",
            },
            "text": {"type": "string", "description": "free text (raw-text accounts only)"},
            "client_ref": {"type": "string", "minLength": 1, "maxLength": 64},
            "sender": {
                "type": "string",
                "pattern": r"^(\+?[0-9]{1,20}|[A-Za-z0-9 ._-]{1,11})$",
                "description": "source address or extension code",
            },
            "validity_minutes": {"type": "integer", "minimum": 1, "maximum": 10080},
            "scheduled_at": {
                "type": "string",
                "format": "date-time",
                "description": "ISO-8601 with an offset; at most 30 days ahead; past = now",
            },
            "smart_encoding": _SMART,
        },
        required=["to"],
    )
    send_request["description"] = "`to` and exactly one of `template` (with `params`) or `text`."
    accepted = _obj(
        {
            "id": message["id"],
            "to": message["to"],
            "client_ref": _nullable(_STR),
            "status": {"type": "string", "enum": ["queued"]},
            "encoding": message["encoding"],
            "segments": message["segments"],
            "billable_units": message["billable_units"],
        }
    )
    preview_part = _obj({"chars": _INT, "septets_or_octets": _INT})
    return {
        **_error_schemas(),
        "Account": _obj(account),
        "OwnAccount": _obj({**account, "app_key": _STR}),
        "AccountDetail": _obj(
            {
                **account,
                **_refund_props(),
                "keys": {"type": "array", "items": _schema("AppKey")},
            }
        ),
        "AccountList": _obj({"accounts": {"type": "array", "items": _schema("Account")}}),
        "AccountCreate": _obj(
            {
                "name": {
                    "type": "string",
                    "pattern": "^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$",
                },
                **_settings_props(),
            },
            required=["name"],
        ),
        "AccountUpdate": _obj(_settings_props(), required=[]),
        "AccountCreated": _obj(
            {
                "account": _schema("Account"),
                "app_key": _STR,
                "app_secret": {"type": "string", "description": "shown only in this response"},
                "webhook_secret": {"type": "string", "description": "shown only here"},
            }
        ),
        "AppKey": key,
        "AppKeyList": _obj({"keys": {"type": "array", "items": _schema("AppKey")}}),
        "AppKeyCreated": _obj(
            {
                "account": _STR,
                "app_key": _STR,
                "app_secret": {"type": "string", "description": "shown only in this response"},
            }
        ),
        "AppKeyRevoked": _obj({"app_key": _STR, "status": {"type": "string", "enum": ["revoked"]}}),
        "SendRequest": send_request,
        "AcceptedMessage": accepted,
        "SendResult": _obj(
            {
                "batch_id": message["batch_id"],
                "count": {"type": "integer", "minimum": 1},
                "messages": {"type": "array", "items": _schema("AcceptedMessage")},
            }
        ),
        "MessagePart": part,
        "Message": _obj({**message, "parts": {"type": "array", "items": _schema("MessagePart")}}),
        "MessageSummary": _obj(message),
        "BatchCanceled": _obj(
            {
                "batch_id": {"type": "string", "pattern": "^bat_[0-9A-Z]{26}$"},
                "canceled": {"type": "integer", "minimum": 0},
                "not_cancelable": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "on a bind, sent or final already: they go on",
                },
            }
        ),
        "MessageList": _obj(
            {
                "messages": {"type": "array", "items": _schema("MessageSummary")},
                "next_cursor": _nullable(
                    {"type": "string", "description": "pass as cursor for the next page"}
                ),
            }
        ),
        "PreviewRequest": _obj(
            {
                "text": {"type": "string", "description": "free text (or give template)"},
                "template": {
                    "type": "string",
                    "description": "a template code of the account (any review status): "
                    "previews it rendered with params",
                },
                "params": {
                    "type": "object",
                    "additionalProperties": {"oneOf": [{"type": "string"}, {"type": "number"}]},
                },
                "sign_name": _STR,
                "to": {
                    "type": "string",
                    "description": "picks the SMSC whose options apply (its route's first); "
                    "without it, the route of a number no prefix matches (the default route)",
                },
                "smart_encoding": _SMART,
            },
            required=[],
        ),
        "Preview": _obj(
            {
                "text": _STR,
                "encoding": message["encoding"],
                "data_coding": message["data_coding"],
                "segments": message["segments"],
                "billable_units": message["billable_units"],
                "chars": {"type": "integer", "minimum": 0},
                "parts": {"type": "array", "items": preview_part},
                "ucs2_chars": {
                    "type": "array",
                    "items": _STR,
                    "description": "the characters that force UCS-2",
                },
                "smsc": {
                    "type": "string",
                    "description": "the SMSC whose options it was encoded with",
                },
            }
        ),
        "Health": _obj({"status": {"type": "string", "enum": ["ok"]}}),
        "Ready": _obj(
            {
                "status": {"type": "string", "enum": ["ready", "not ready"]},
                "problems": {"type": "array", "items": _STR},
                "warnings": {
                    "type": "array",
                    "items": _STR,
                    "description": "what is wrong without making the process not ready: an "
                    "SMSC that sends with no receiving bind up (its receipts and MO wait at the "
                    "carrier)",
                },
                "smscs": {
                    "type": "object",
                    "additionalProperties": _nullable(_BOOL),
                    "description": "SMSC name -> bound; null when this acceptor has had no "
                    "status from its owner process for 5 s",
                },
            }
        ),
        "OpenApiDocument": _obj(
            {"openapi": _STR, "info": {"type": "object"}, "paths": {"type": "object"}},
            required=["openapi", "info", "paths"],
            closed=False,
        ),
        "InboundMessage": _inbound_message_schema(),
        **_stored_mo_schemas(),
        "StatusReport": _status_report_schema(),
        "BalanceLowEvent": _balance_low_schema(),
        **_report_schemas(),
        **_rules_module().rules_schemas(),
    }


def _status_report_schema() -> dict[str, Any]:
    """One report of the JSON array POSTed to an account's status_callback_url (report_format
    native); for the receiver's code, as InboundMessage is."""
    count = {"type": "integer", "minimum": 0}
    out = _obj(
        {
            "type": {"type": "string", "enum": ["message.status"]},
            "webhook_id": {
                "type": "string",
                "description": "st_<message id> (st_<message id>_sent for the intermediate "
                "report); the same on every retry: de-duplicate on it",
            },
            "message_id": {"type": "string", "pattern": "^msg_[0-9A-Z]{26}$"},
            "batch_id": {"type": "string", "pattern": "^bat_[0-9A-Z]{26}$"},
            "client_ref": _nullable(_STR),
            "to": {"type": "string", "description": "E.164; masked after an erasure request"},
            "status": {"type": "string", "enum": [*MESSAGE_STATES]},
            "success": _nullable(
                {"type": "boolean", "description": "delivered; null in the intermediate report"}
            ),
            "final": {
                "type": "boolean",
                "description": "true on every final report, false on the intermediate sent one",
            },
            "error_code": _nullable(_STR),
            "error_text": _nullable(_STR),
            "segments": {"type": "integer", "minimum": 1},
            "segments_delivered": count,
            "billable_units": count,
            "accepted_at": _TIME,
            "submitted_at": _nullable(_TIME),
            "done_at": _nullable(_TIME),
            "receipt_inferred_from": _nullable(
                {
                    "type": "integer",
                    "minimum": 1,
                    "description": "the seq of the part whose receipt gave the other parts "
                    "their outcome (an SMSC with receipts: one_per_message); null when every "
                    "part had its own",
                }
            ),
        }
    )
    out["description"] = (
        "A message's status as pushed to the account's status_callback_url in the native report "
        "format (the aliyun format sends Alibaba's SmsReport instead)"
    )
    return out


def _balance_low_schema() -> dict[str, Any]:
    """The `balance.low` event, in the status callback's array (keyed `event`, not `type`)."""
    out = _obj(
        {
            "event": {"type": "string", "enum": ["balance.low"]},
            "webhook_id": {"type": "string", "pattern": "^evt_"},
            "account": {"type": "string", "pattern": "^acc_"},
            "available_micro": {"type": "integer", "description": "micro-units, after the send"},
            "available": {"type": "string", "description": "the same in currency units"},
            "previous_micro": {"type": "integer", "description": "micro-units, before it"},
            "at": _MS,
        }
    )
    out["description"] = (
        "A charge or voucher expiry left a prepaid balance below the account's "
        "low_balance_threshold (once per dip: until the balance is back at or above it), "
        "in the status callback's JSON array, for every report format"
    )
    return out


def _inbound_message_schema() -> dict[str, Any]:
    """One report of the JSON array POSTed to an account's mo_callback_url (report_format
    native); not an answer of this API, documented here for the receiver's code."""
    seq = {"type": "integer", "minimum": 1}
    out = _obj(
        {
            "type": {"type": "string", "enum": ["message.inbound"]},
            "webhook_id": {"type": "string", "description": "the same on every retry"},
            # Stores begun before 2026-11-30 hold MOs under the older, time-ordered form.
            "mo_id": {"type": "string", "pattern": "^mo_([a-z2-7]{24}|[0-9A-Z]{26})$"},
            "from": {"type": "string", "description": "E.164 when international"},
            "to": {"type": "string", "description": "the address the reply went to"},
            "sign_name": _nullable(
                {"type": "string", "description": "of the message the reply answers"}
            ),
            "text": _STR,
            "smsc": _STR,
            "received_at": _TIME,
            "incomplete": {
                "type": "boolean",
                "description": "true for a long message whose other parts did not arrive within "
                "pipeline.mo_reassembly_timeout_s: text is what did arrive, runs of consecutive "
                'parts joined with " ... " where parts are missing; false for every complete one',
            },
            "parts_total": _nullable(
                {**seq, "minimum": 2, "description": "parts announced (null when complete)"}
            ),
            "parts_received": _nullable(
                {
                    "type": "array",
                    "items": seq,
                    "description": "seq numbers of the parts that arrived, ascending (null "
                    "when complete)",
                }
            ),
            "text_hex": {
                "type": "boolean",
                "description": "true when text is the hex of the message's octets, not text: a "
                "binary data_coding (2, 4, the 8-bit classes), or octets that are not text in "
                "their data_coding (counted in smpp_bridge_mo_undecodable_total)",
            },
        }
    )
    out["description"] = (
        "An inbound message (MO) as pushed to the account's mo_callback_url in the native report "
        "format (the aliyun format keeps Alibaba's SmsUp fields, with the joined text in content)"
    )
    return out


def _stored_mo_schemas() -> dict[str, Any]:
    """GET /admin/mo's page: each reply as its native report renders it, less the report's own
    fields (and sign_name, which a reply stored for no account never has)."""
    props = {
        k: v
        for k, v in _inbound_message_schema()["properties"].items()
        if k not in ("type", "webhook_id", "sign_name")
    }
    props["text"] = _nullable({"type": "string", "description": "null once erased"})
    mo = _obj(props)
    mo["description"] = "A reply (MO) stored for no account"
    page = _obj(
        {
            "mo": {"type": "array", "items": _schema("StoredMo")},
            "next_cursor": _nullable(
                {"type": "string", "description": "pass as cursor for the next page"}
            ),
        }
    )
    return {"StoredMo": mo, "MoPage": page}


def _components() -> dict[str, Any]:
    date_param = {
        "name": "X-Bridge-Date",
        "in": "header",
        "required": True,
        "description": "UTC, whole seconds: 2026-11-29T08:00:00Z (signed)",
        "schema": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:]{8}Z$"},
    }
    return {
        "securitySchemes": {
            "BridgeHmac": {
                "type": "apiKey",
                "in": "header",
                "name": "Authorization",
                "description": SIGNING_DESCRIPTION,
            },
            "AdminToken": {
                "type": "http",
                "scheme": "bearer",
                "description": "The operator token from server.admin_token; with none set the "
                "admin API answers 403 ADMIN_DISABLED.",
            },
        },
        "parameters": {
            "XBridgeDate": date_param,
            "XBridgeNonce": {
                "name": "X-Bridge-Nonce",
                "in": "header",
                "required": True,
                "description": "unique per request (signed)",
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{16,64}$"},
            },
            "XBridgeContentSha": {
                "name": "X-Bridge-Content-SHA256",
                "in": "header",
                "required": True,
                "description": "hex SHA-256 of the raw body (signed)",
                "schema": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            },
            "IdempotencyKeyOptional": {
                "name": "Idempotency-Key",
                "in": "header",
                "required": False,
                "description": "optional on every write but a send: the first success is kept "
                "for server.idempotency_hours and a retry with the same method, path, query and "
                "body gets it again (`Idempotent-Replayed: true`); another request with the key "
                "is 422 IDEMPOTENCY_KEY_REUSED, one while the first runs 409 "
                "IDEMPOTENCY_IN_PROGRESS; a refusal frees the key (signed when sent)",
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 255,
                    "pattern": "^[!-~]+$",
                },
            },
            "IdempotencyKey": {
                "name": "Idempotency-Key",
                "in": "header",
                "required": True,
                "description": "kept per account for server.idempotency_hours (default 24): the "
                "same key and body replays the first response with `Idempotent-Replayed: true`; "
                "the same key with another body is 422 IDEMPOTENCY_KEY_REUSED (signed)",
                "schema": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 255,
                    "pattern": "^[!-~]+$",
                },
            },
        },
        "headers": {
            "XRequestId": {
                "description": "the id of this request, also in every error body and log line",
                "required": True,
                "schema": {"type": "string", "pattern": "^req_[0-9a-f]{16}$"},
            },
            "RetryAfter": {
                "description": "seconds to wait before retrying",
                "required": True,
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
            },
            "IdempotentReplayed": {
                "description": "`true` when this is the stored response of an earlier request "
                "with the same Idempotency-Key and body",
                "schema": {"type": "string", "enum": ["true"]},
            },
        },
        "responses": _error_responses(),
        "schemas": _schemas(),
        "x-error-codes": {
            code: {"status": status, "description": ERROR_DESCRIPTIONS.get(code, "")}
            for code, status in CODES.items()
        },
    }


def _paths() -> dict[str, Any]:
    ref, msg_id = _path_param("ref", "account id or name"), _path_param("id", "a message id")
    query = [
        {
            "name": "to",
            "in": "query",
            "schema": {"type": "string"},
            "description": "recipient (send + as %2B)",
        },
        {
            "name": "date",
            "in": "query",
            "schema": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
            "description": "day of acceptance, YYYY-MM-DD (two-digit month and day): UTC's, "
            "or with timezone=local that of rules.timezone",
        },
        {
            **_TIMEZONE,
            "description": "utc (the default) or local: the day of `date` in rules.timezone, as "
            "/v1/stats and /v1/cdrs count it; only with date",
        },
        {"name": "status", "in": "query", "schema": {"type": "string", "enum": [*MESSAGE_STATES]}},
        {
            "name": "batch_id",
            "in": "query",
            "schema": {"type": "string", "pattern": "^bat_[0-9A-Z]{26}$"},
            "description": "only the messages of this send (its 202's batch_id)",
        },
        {
            "name": "cursor",
            "in": "query",
            "schema": {"type": "string"},
            "description": "next_cursor of the previous page; empty or absent: the first page",
        },
        {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
        },
    ]
    replayed = {"Idempotent-Replayed": _ref("headers", "IdempotentReplayed")}
    account_ok = _ok("Account", "the account, never a secret")
    return {
        "/v1/messages": {
            "post": _v1_op(
                "sendMessages",
                "Send a message to one or more recipients",
                {
                    "202": _ok("SendResult", "accepted and stored", **replayed),
                    # 409 TEMPLATE_CHANGED: corrected during each of three renderings
                    **_errors(400, 402, 409, 415, 422, 429, 503),
                },
                parameters=[_ref("parameters", "IdempotencyKey")],
                requestBody=_json_body("SendRequest"),
            ),
            "get": _v1_op(
                "listMessages",
                "The account's messages, newest first, by cursor",
                {"200": _ok("MessageList", "one page"), **_errors(400)},
                parameters=query,
            ),
        },
        "/v1/messages/{id}": {
            "get": _v1_op(
                "getMessage",
                "One message with its parts",
                {"200": _ok("Message", "the message"), **_errors(404)},
                parameters=[msg_id],
            ),
        },
        "/v1/messages/{id}/cancel": {
            "post": _v1_op(
                "cancelMessage",
                "Cancel a message still queued or scheduled: it ends expired with error "
                "CANCELED, refunded, and its status report is pushed",
                {"200": _ok("Message", "canceled: the message now"), **_errors(404, 409)},
                parameters=[msg_id],
            ),
        },
        "/v1/batches/{batch_id}/cancel": {
            "post": _v1_op(
                "cancelBatch",
                "Cancel every message of a batch still queued or scheduled (the others go on)",
                {"200": _ok("BatchCanceled", "what was canceled"), **_errors(404)},
                parameters=[
                    _path_param("batch_id", "the batch_id a send answered (bat_...)"),
                ],
            ),
        },
        "/v1/preview": {
            "post": _v1_op(
                "preview",
                "Encoding, segments and billable units of a text, without sending",
                {"200": _ok("Preview", "the preview"), **_errors(400, 415, 422)},
                requestBody=_json_body("PreviewRequest"),
                description="Encoded for the SMSC a send to `to` would use (`smsc` names it). "
                "A text the send refuses as such is refused alike, with the same code: blank "
                "(EMPTY_MESSAGE), over text.max_chars (MESSAGE_TOO_LONG), a sign name not in "
                "its registered form (SIGN_NAME_INVALID); so is a `to` no route covers "
                "(NO_ROUTE).",
            ),
        },
        "/v1/account": {
            "get": _v1_op(
                "getOwnAccount",
                "The calling account's settings (no secrets)",
                {"200": _ok("OwnAccount", "the account and the key that signed the request")},
            ),
        },
        "/admin/accounts": {
            "get": _admin_op("listAccounts", "All accounts", {"200": _ok("AccountList", "all")}),
            "post": _admin_op(
                "createAccount",
                "Create an account and its first app key",
                {
                    "201": _ok("AccountCreated", "created; the secrets are shown only here"),
                    **_errors(400, 409, 415),
                },
                requestBody=_json_body("AccountCreate"),
            ),
        },
        "/admin/accounts/{ref}": {
            "parameters": [ref],
            "get": _admin_op(
                "showAccount",
                "One account with its keys, and what it is owed back once closed",
                {"200": _ok("AccountDetail", "the account"), **_errors(404)},
            ),
            "patch": _admin_op(
                "updateAccount",
                "Change settings; applies to the next request",
                {"200": account_ok, **_errors(400, 404, 409, 415)},
                requestBody=_json_body("AccountUpdate", required=False),
            ),
        },
        "/admin/accounts/{ref}/disable": {
            "parameters": [ref],
            "post": _admin_op(
                "disableAccount",
                "Refuse the account's requests (403 ACCOUNT_DISABLED)",
                {"200": account_ok, **_errors(404, 409)},
            ),
        },
        "/admin/accounts/{ref}/enable": {
            "parameters": [ref],
            "post": _admin_op(
                "enableAccount",
                "Allow the account again (not a closed one: 409 ACCOUNT_CLOSED)",
                {"200": account_ok, **_errors(404, 409)},
            ),
        },
        "/admin/accounts/{ref}/messages": {
            "parameters": [ref],
            "get": _admin_op(
                "adminListMessages",
                "An account's messages, newest first, by cursor: GET /v1/messages for the operator",
                {"200": _ok("MessageList", "one page"), **_errors(400, 404)},
                parameters=query,
            ),
        },
        "/admin/accounts/{ref}/messages/{id}": {
            "parameters": [ref, msg_id],
            "get": _admin_op(
                "adminGetMessage",
                "A message of the account with its parts: GET /v1/messages/{id} for the operator",
                {"200": _ok("Message", "the message"), **_errors(404)},
            ),
        },
        "/admin/accounts/{ref}/keys": {
            "parameters": [ref],
            "get": _admin_op(
                "listKeys",
                "The account's app keys (no secrets)",
                {"200": _ok("AppKeyList", "the keys"), **_errors(404)},
            ),
            "post": _admin_op(
                "createKey",
                "A new app key (at most two active)",
                {
                    "201": _ok("AppKeyCreated", "created; the secret is shown only here"),
                    **_errors(404, 409),
                },
            ),
        },
        "/admin/keys/{key}/revoke": {
            "parameters": [_path_param("key", "the app key id")],
            "post": _admin_op(
                "revokeKey",
                "Revoke an app key at once",
                {"200": _ok("AppKeyRevoked", "revoked"), **_errors(404, 409)},
            ),
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "The process is up",
                "tags": ["ops"],
                "security": [],
                "responses": {"200": _ok("Health", "up"), **_errors(500)},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "The store is reachable and at least one SMSC is bound",
                "tags": ["ops"],
                "security": [],
                "responses": {
                    "200": _ok("Ready", "ready"),
                    "503": _ok("Ready", "not ready; problems says why"),
                    **_errors(500),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "tags": ["ops"],
                "security": [],
                "responses": {"200": _ok("OpenApiDocument", "OpenAPI 3.0"), **_errors(500)},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (text exposition format 0.0.4)",
                "description": METRICS_DESCRIPTION,
                "tags": ["ops"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "every metric of this daemon (all its processes)",
                        "headers": {"X-Request-Id": _ref("headers", "XRequestId")},
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_errors(404, 500),
                },
            }
        },
        **_report_paths(),
        **_rules_module().rules_paths(),
    }


# -- reports (bridge/api/reports.py) and operator views (bridge/api/admin_ops.py) -------------

METRICS_DESCRIPTION = """\
Open like /healthz (no auth), on the API port; `server.metrics: false` turns it off (404
NOT_FOUND). With `server.workers > 0` whichever acceptor answers merges the numbers of every
process (acceptors and the owner), so one scrape target returns everything. Metric names start
with `smpp_bridge_`; the README lists them and `config/grafana-dashboard.json` charts them."""

_COUNT = {"type": "integer", "minimum": 0}
_STAT_FIELDS = (
    "submitted",
    "delivered",
    "failed",
    "canceled",
    "withdrawn",
    "pending",
    "unknown",
    "segments",
    "units",
)
_TIMEZONE = {
    "name": "timezone",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": ["utc", "local"], "default": "utc"},
    "description": "utc (the default) or local: the days and months of rules.timezone, those of "
    "the bills, the daily quota and the Alibaba face",
}
_STAT_DESCRIPTION = (
    "Messages accepted on the day (UTC, or in rules.timezone), by their status now: "
    "submitted = all of them = delivered + failed + canceled + withdrawn + pending + unknown; "
    "delivered; failed (what carriers failed: a submit refused or a negative receipt; and what "
    "expired: validity passed before it was sent, or a message that may have gone out in part, "
    "a part accepted or a submit never answered, and was then ended); "
    "canceled (canceled by the customer, error CANCELED); withdrawn (ended unsent by the "
    "system without reaching anyone, no part accepted and no submit left unanswered: an "
    "opt-out, a do-not-contact list, an erasure, "
    "the account disabled, a template or sign deleted or rejected, marketing or free text "
    "revoked, a sender no longer allowed, a message found with no part row to send "
    "(NO_PARTS); its error_code says which); pending (queued or "
    "sent, no final receipt yet); unknown (no receipt within the receipt timeout). segments "
    "and units: air parts and billable units of those messages."
)
CDR_DESCRIPTION = """\
CSV (RFC 4180, UTF-8, no byte-order mark, CRLF line ends), streamed: a header row, then one row
per message the account sent in the month (UTC, or with timezone=local the bill's month in
rules.timezone), in acceptance order:

`message_id, batch_id, client_ref, to, sender, sign_name, template, status, error_code, encoding,
segments, billable_units, accepted_at, sent_at, done_at, smsc`

Times are ISO-8601 UTC with milliseconds; an absent value is an empty field. A text field that
starts with `=`, `+`, `-`, `@`, tab or carriage return is prefixed with a single quote `'` so a
spreadsheet shows it as text instead of running it as a formula; a plain signed number (an
E.164 `to` such as `+8613800138000`) is left as it is. If the server fails mid-stream the
connection is cut (the chunked body is left unterminated) rather than ending a short file
cleanly.
"""


def _counts() -> dict[str, Any]:
    return _obj({"messages": _COUNT, "parts": _COUNT})


def _report_schemas() -> dict[str, Any]:
    stats = {k: _COUNT for k in _STAT_FIELDS}
    age = _nullable({"type": "number", "minimum": 0, "description": "seconds"})
    smsc_names = {"type": "array", "items": _STR}
    day = _obj({"date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}, **stats})
    out: dict[str, Any] = {
        "StatsDay": day,
        "StatsTotals": _obj(stats),
        "Stats": _obj(
            {
                "from": day["properties"]["date"],
                "to": day["properties"]["date"],
                "timezone": {
                    "type": "string",
                    "description": "UTC, or with timezone=local the IANA name of rules.timezone",
                },
                "days": {
                    "type": "array",
                    "items": _schema("StatsDay"),
                    "description": "every day from `from` to `to`, zeros on days without traffic",
                },
                "totals": _schema("StatsTotals"),
                "history_from": _nullable(
                    {
                        **day["properties"]["date"],
                        "description": "with store.retention_days set, the first day whose "
                        "messages are all still stored: counts of earlier days may read low or 0 "
                        "(their finished messages were purged); null while everything is kept",
                    }
                ),
            }
        ),
        "SmscStatus": _obj(
            {
                "name": _STR,
                "up": {
                    "type": "boolean",
                    "description": "at least one transmitting bind is up (an SMSC that only "
                    "receives: a receiving bind)",
                },
                "sending": {
                    **_nullable(_BOOL),
                    "description": "a transmitting bind is up; null: it only receives",
                },
                "receiving": {
                    **_nullable(_BOOL),
                    "description": "a receiving bind (transceiver or receiver) is up; null: it "
                    "only transmits. false beside sending true: receipts and MO wait at the "
                    "carrier",
                },
                "state": {
                    "type": "string",
                    "enum": ["up", "down", "reconnecting", "removing", "unknown"],
                    "description": "up or down; reconnecting: a reload changed its bind "
                    "settings (the old binds drain their window, then new ones are made); "
                    "removing: a reload removed it (its window drains); unknown: this acceptor "
                    "has had no status from its owner process for 5 s. up is false for all "
                    "but up",
                },
                "binds": {
                    "type": "object",
                    "description": "bind mode -> configured and bound binds",
                    "additionalProperties": _obj({"configured": _COUNT, "up": _COUNT}),
                },
                "binds_up": _COUNT,
                "window": _obj(
                    {
                        "size": {**_COUNT, "description": "window x transmitting binds up"},
                        "in_use": {**_COUNT, "description": "submit_sm awaiting their resp"},
                    }
                ),
                "free_slots": _COUNT,
                "tps": {**_COUNT, "description": "submit_sm in the last whole second"},
                "tps_avg": {
                    "type": "number",
                    "minimum": 0,
                    "description": "submit_sm per second over the last 10 whole seconds",
                },
                "tps_limit": {
                    "type": "number",
                    "minimum": 0,
                    "description": "this instance's share of the SMSC's tps (its transmit binds "
                    "up / all configured, with several instances); 0 with tps_configured 0: no "
                    "limit; 0 with tps_configured above 0: no share here (no transmit bind up "
                    "on this instance)",
                },
                "tps_configured": {
                    "type": "number",
                    "minimum": 0,
                    "description": "the SMSC's configured tps, for the whole fleet; 0 = no limit",
                },
                "throttle_events": _COUNT,
                "throttle_pauses": {
                    **_COUNT,
                    "description": "throttles that paused a bind (sporadic ones are resent)",
                },
                "paused_binds": {**_COUNT, "description": "binds paused after a throttle"},
                "transient_retries": _COUNT,
                "reconnects": _COUNT,
                "last_error": _nullable(_obj({"message": _STR, "at": _nullable(_TIME)})),
                "submits": _obj(
                    {
                        "ok": _COUNT,
                        "failed": {
                            "type": "object",
                            "additionalProperties": _COUNT,
                            "description": "SMPP command_status name -> count",
                        },
                        "failed_total": _COUNT,
                    }
                ),
                "delivers": {**_COUNT, "description": "deliver_sm received (receipts and MO)"},
                "rtt_ms_avg": _nullable({"type": "number", "minimum": 0}),
                "fleet": _nullable(
                    _obj(
                        {
                            "instances": {
                                **_COUNT,
                                "description": "live instances on the database, this one too",
                            },
                            "binds_up": {**_COUNT, "description": "binds up on all of them"},
                            "tps_avg": {
                                "type": "number",
                                "minimum": 0,
                                "description": "their submit_sm per second, summed (10 s)",
                            },
                        }
                    )
                    | {
                        "description": "PostgreSQL: the whole fleet's figures beside this "
                        "instance's; null for a daemon alone on its store (SQLite)"
                    }
                ),
            }
        ),
        "SmscList": _obj({"smscs": {"type": "array", "items": _schema("SmscStatus")}}),
        "QueueCounts": _counts(),
        "Queue": _obj(
            {
                "depth": {**_COUNT, "description": "unsent parts, as back-pressure counts them"},
                "messages": _COUNT,
                "limit": {**_COUNT, "description": "store.max_queued_segments"},
                "oldest_waiting_since": _nullable(_TIME),
                "oldest_age_s": age,
                "by_state": _obj(
                    {
                        "ready": _schema("QueueCounts"),
                        "claimed": _schema("QueueCounts"),
                        "retry_wait": _schema("QueueCounts"),
                        "parked": _schema("QueueCounts"),
                        "scheduled": _schema("QueueCounts"),
                    }
                ),
                "by_account": {
                    "type": "array",
                    "items": _obj(
                        {
                            "account_id": _STR,
                            "name": _nullable(_STR),
                            "messages": _COUNT,
                            "parts": _COUNT,
                            "oldest_age_s": age,
                        }
                    ),
                },
                "by_route": {
                    "type": "array",
                    "items": _obj(
                        {
                            "prefix": _nullable(
                                {"type": "string", "description": "null: the default route"}
                            ),
                            "smscs": smsc_names,
                            "messages": _COUNT,
                            "parts": _COUNT,
                        }
                    ),
                },
                "by_smsc": {
                    "type": "array",
                    "items": _obj(
                        {
                            "smsc": _nullable(
                                {"type": "string", "description": "first SMSC of the route"}
                            ),
                            "messages": _COUNT,
                            "parts": _COUNT,
                        }
                    ),
                },
                "webhooks": _obj(
                    {
                        "pending": {
                            **_COUNT,
                            "description": "status, MO and event reports not delivered yet "
                            "(due, retrying or in flight)",
                        },
                        "dead": {
                            **_COUNT,
                            "description": "reports given up (GET /admin/webhooks/dead)",
                        },
                        "oldest_age_s": {
                            **age,
                            "description": "age of the oldest pending report; null: none",
                        },
                    }
                ),
                "config": _obj(
                    {
                        "last_reload_ok": {
                            "type": "boolean",
                            "description": "false: the last SIGHUP's file was refused or failed "
                            "to apply (in any process), or an acceptor process did not "
                            "apply it; the previous configuration runs (there)",
                        },
                        "generation": _nullable(
                            {
                                "type": "string",
                                "pattern": "^[0-9a-f]{12}$",
                                "description": "the configuration the daemon runs (the first "
                                "48 bits of its text's SHA-256; with acceptor processes, of "
                                "their copy); null: none published (the built-in default)",
                            }
                        ),
                        "acceptors": {
                            "type": "array",
                            "description": "with acceptor processes (server.workers), each "
                            "live one and the configuration it runs; empty without",
                            "items": _obj(
                                {
                                    "slot": _nullable(_INT),
                                    "pid": _INT,
                                    "generation": {"type": "string", "pattern": "^[0-9a-f]{12}$"},
                                }
                            ),
                        },
                        "workers": _nullable(
                            {
                                **_INT,
                                "description": "acceptor processes the daemon runs "
                                "(server.workers, or run --workers); fewer listed in `acceptors` "
                                "means one is down (restarting after an exit); null without",
                            }
                        ),
                    }
                ),
            }
        ),
        "UnmatchedReceipt": _obj(
            {
                "id": _INT,
                "smsc": _STR,
                "smsc_message_id": {"type": "string", "description": "normalised"},
                "state": _STR,
                "stat": _nullable(_STR),
                "err": _nullable(_STR),
                "received_at": _TIME,
                "age_s": {"type": "number", "minimum": 0},
                "raw": _nullable(_STR),
            }
        ),
        "UnmatchedReceipts": _obj(
            {
                "total": {**_COUNT, "description": "all receipts waiting for a match"},
                "matching": {**_COUNT, "description": "those at least older_than_s old"},
                "older_than_s": _COUNT,
                "receipts": {"type": "array", "items": _schema("UnmatchedReceipt")},
            }
        ),
        "DeadWebhook": _obj(
            {
                "id": {"type": "integer", "minimum": 1, "description": "pass to replay"},
                "webhook_id": _STR,
                "account_id": _STR,
                "kind": {"type": "string", "enum": ["status", "mo", "event"]},
                "ref_id": _nullable(_STR),
                "attempts": _COUNT,
                "last_error": _nullable(_STR),
                "created_at": _TIME,
            }
        ),
        "DeadWebhooks": _obj(
            {
                "total": {**_COUNT, "description": "dead letters (of the account, if given)"},
                "webhooks": {"type": "array", "items": _schema("DeadWebhook")},
            }
        ),
        "AuditEntry": _obj(
            {
                "id": {"type": "integer", "minimum": 1},
                "at": _MS,
                "actor": {
                    "type": "string",
                    "description": "operator:<name> (a named operator's own token), api or "
                    "api:<X-Operator header> (the shared admin token), or cli:<OS user>",
                },
                "action": {
                    "type": "string",
                    "description": "METHOD and route (POST /admin/accounts/{ref}/{action}), or "
                    "`cli <command> <action>`",
                },
                "target": {
                    "type": "string",
                    "description": "the request path (numbers masked as in the logs), or the "
                    "command's arguments (URLs without credentials or query)",
                },
                "status": {"type": "integer", "description": "HTTP status, or exit status"},
                "code": _nullable({"type": "string", "description": "the refusal's code"}),
                "request_id": _nullable(_STR),
                "remote": _nullable(
                    {
                        "type": "string",
                        "description": "the client's address: the peer, or behind a proxy in "
                        "server.trusted_proxies the one its X-Forwarded-For (or Forwarded, "
                        "server.forwarded_header) names",
                    }
                ),
            }
        ),
        "AuditPage": _obj(
            {
                "entries": {"type": "array", "items": _schema("AuditEntry")},
                "next_cursor": _nullable(
                    {"type": "string", "description": "pass as cursor for the next page"}
                ),
            }
        ),
        "ReplayRequest": _obj(
            {
                "ids": {
                    "type": "array",
                    "minItems": 1,
                    "maxItems": 1000,
                    "items": {"type": "integer", "minimum": 1},
                }
            }
        ),
        "ReplayResult": _obj(
            {
                "requested": {**_COUNT, "description": "distinct ids given"},
                "replayed": {**_COUNT, "description": "dead letters made pending again"},
            }
        ),
    }
    return out


def _query(name: str, schema: dict[str, Any], description: str, required: bool = False) -> Any:
    return {
        "name": name,
        "in": "query",
        "required": required,
        "description": description,
        "schema": schema,
    }


def _report_paths() -> dict[str, Any]:
    day = {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"}
    limit = {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}
    csv_ok = {
        "description": "the CDRs as CSV, streamed",
        "headers": {
            "X-Request-Id": _ref("headers", "XRequestId"),
            "Content-Disposition": {
                "description": 'attachment; filename="cdr-YYYY-MM.csv"',
                "required": True,
                "schema": _STR,
            },
        },
        "content": {"text/csv": {"schema": {"type": "string", "description": CDR_DESCRIPTION}}},
    }
    return {
        "/v1/stats": {
            "get": _v1_op(
                "getStats",
                "Messages per day (UTC, or local): submitted, delivered, failed, pending, parts, "
                "units",
                {"200": _ok("Stats", _STAT_DESCRIPTION), **_errors(400)},
                tags=["reports"],
                parameters=[
                    _query("from", day, "first day, YYYY-MM-DD", True),
                    _query("to", day, "last day (inclusive), at most 92 days in all", True),
                    _TIMEZONE,
                ],
            ),
        },
        "/v1/cdrs": {
            "get": _v1_op(
                "getCdrs",
                "The account's messages of a month (UTC, or the bill's) as CSV, one row each",
                {"200": csv_ok, **_errors(400)},
                tags=["reports"],
                parameters=[
                    _query(
                        "month",
                        {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}$"},
                        "YYYY-MM, from 1970-01",
                        True,
                    ),
                    _TIMEZONE,
                ],
            ),
        },
        "/admin/smscs": {
            "get": _admin_op(
                "listSmscs",
                "Per SMSC: binds up, window in use, TPS, throttles, errors, submits by status",
                {"200": _ok("SmscList", "live state of each SMSC connector"), **_errors(400)},
            ),
        },
        "/admin/queue": {
            "get": _admin_op(
                "getQueue",
                "Unsent parts by state, account, route and SMSC; age of the oldest",
                {"200": _ok("Queue", "the send queue now"), **_errors(400)},
            ),
        },
        "/admin/receipts/unmatched": {
            "get": _admin_op(
                "listUnmatchedReceipts",
                "Receipts that matched no sent part (yet), oldest first",
                {"200": _ok("UnmatchedReceipts", "pending receipts"), **_errors(400)},
                parameters=[
                    _query(
                        "older_than_s",
                        {"type": "integer", "minimum": 0, "maximum": 31_622_400, "default": 0},
                        "only receipts received at least this many seconds ago",
                    ),
                    _query("limit", limit, "rows to return"),
                ],
            ),
        },
        "/admin/audit": {
            "get": _admin_op(
                "listAudit",
                "The audit trail: every admin request that may change something (refused ones "
                "too, but not those the admin token refused) and every CLI store command that "
                "may; oldest first. The actor is the named operator whose token was used, or, with "
                "the shared admin token, `X-Operator: <name>` as the caller gave it",
                {"200": _ok("AuditPage", "one page"), **_errors(400)},
                parameters=[
                    _query("cursor", {"type": "integer", "minimum": 0}, "the last id seen"),
                    _query("limit", limit, "rows to return"),
                    _query("since", {"type": "integer", "minimum": 0}, "at >= since (unix ms)"),
                    _query("until", {"type": "integer", "minimum": 0}, "at < until (unix ms)"),
                ],
            ),
        },
        "/admin/mo": {
            "get": _admin_op(
                "listUnattributedMo",
                "Replies (MOs) stored for no account, newest first: no account's message went to "
                "their sender from the address they went to, so nobody was told of them "
                "(counted in smpp_bridge_mo_unattributed_total)",
                {"200": _ok("MoPage", "one page"), **_errors(400)},
                parameters=[
                    _query(
                        "unattributed",
                        {"type": "string", "enum": ["1", "true"]},
                        "required: the only listing is of the replies stored for no account",
                        required=True,
                    ),
                    _query("cursor", _STR, "next_cursor of the page before"),
                    _query("limit", limit, "rows to return"),
                ],
            ),
        },
        "/admin/webhooks/dead": {
            "get": _admin_op(
                "listDeadWebhooks",
                "Webhook reports that exhausted their retries or were refused, oldest first",
                {"200": _ok("DeadWebhooks", "dead letters"), **_errors(400, 404)},
                parameters=[
                    _query("account", _STR, "account id or name"),
                    _query("limit", limit, "rows to return"),
                ],
            ),
        },
        "/admin/webhooks/replay": {
            "post": _admin_op(
                "replayWebhooks",
                "Make dead letters pending again (sent at once, attempts reset)",
                {"200": _ok("ReplayResult", "replayed"), **_errors(400, 415)},
                requestBody=_json_body("ReplayRequest"),
            ),
        },
    }


def _rules_module() -> Any:
    """The sending-rules and money half (bridge/api/openapi_rules.py), imported late because it
    builds on the helpers of this module."""
    from bridge.api import openapi_rules

    return openapi_rules


_DOCUMENT: dict[str, Any] | None = None


def _with_optional_keys(paths: dict[str, Any]) -> dict[str, Any]:
    """Every write of /v1/ but the send (whose key is required) takes an Idempotency-Key
    (bridge/api/idempotency.py): the optional header, the replay header on its success and
    the key's two refusals on each."""
    for path, ops in paths.items():
        if not path.startswith("/v1/") or path in ("/v1/messages", "/v1/preview"):
            continue
        for method, op in ops.items():
            if method not in ("post", "put", "patch", "delete"):
                continue
            op["parameters"] = [
                *op.get("parameters", []),
                _ref("parameters", "IdempotencyKeyOptional"),
            ]
            for status, response in op["responses"].items():
                if status.startswith("2"):
                    headers = response.setdefault("headers", {})
                    headers["Idempotent-Replayed"] = _ref("headers", "IdempotentReplayed")
            op["responses"] = {**_errors(409, 422), **op["responses"]}
    return paths


def openapi_document() -> dict[str, Any]:
    """A fresh copy each call, so a caller mutating it cannot change what others are served."""
    global _DOCUMENT
    if _DOCUMENT is None:
        _DOCUMENT = {
            "openapi": "3.0.3",
            "info": {
                "title": "smpp-bridge",
                "version": __version__,
                "description": DESCRIPTION,
                "license": {"name": "Apache-2.0"},
            },
            "tags": [
                {"name": "messages", "description": "send and query messages (signed)"},
                {"name": "account", "description": "the calling account (signed)"},
                {"name": "reports", "description": "daily statistics and monthly CDRs (signed)"},
                *_rules_module().RULES_TAGS,
                {"name": "admin", "description": "operator API (bearer token)"},
                {"name": "ops", "description": "health and this document (no auth)"},
            ],
            "paths": _with_optional_keys(_paths()),
            "components": _components(),
        }
    return deepcopy(_DOCUMENT)
