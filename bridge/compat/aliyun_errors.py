"""Alibaba Cloud protocol-level refusals (authentication, malformed calls) and their HTTP statuses.

These are the gateway's answers, before any business logic runs, so they are HTTP 4xx/5xx (the SDKs
raise on them), unlike business errors (HTTP 200 with `Code` set, see `aliyun_codes`). Codes,
wording and statuses follow what Alibaba's API gateway answers on the wire; where its own published
tables disagree with captured traffic, captured traffic wins (SignatureDoesNotMatch is 400, not the
403 of some tables; InvalidAccessKeyId.NotFound is 404, not 400).

Sources for the statuses: SignatureDoesNotMatch 400 (the SDKs test `status == 400` before
comparing strings to sign: aliyun-openapi-python-sdk PR #211, aliyun-openapi-net-sdk PR #178; and
spec/aliyun-compat-notes.md); IncompleteSignature 400 (fog/fog-aliyun#32, captured "400 Bad
Request"); InvalidAccessKeyId.NotFound 404 (honwen/aliyun-ddns-cli#24, aylei/aliyun-exporter#36,
help.aliyun.com/document_detail/51132.html); SignatureNonceUsed 400
(aliyun/alibaba-cloud-sdk-go#39, jeessy2/ddns-go#1548); InvalidTimeStamp.Expired 400 (captured
"Status Code: 400" logs of aliyun-ddns-cli); MissingParameter, InvalidParameter, Throttling 400 and
InternalError 500 / ServiceUnavailable 503 (Alibaba's common client/server error tables);
RequestParameterMalformed 400 (a captured dysmsapi answer). Codes whose status no source states
(InvalidTimeStamp.Format, InvalidSignatureMethod, InvalidVersion) follow the gateway's rule for
malformed requests: 400. The code list is
the gateway's public one (help.aliyun.com/document_detail/53438.html), which names the signature
method error InvalidSignatureMethod.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from bridge.api.errors import ApiError

__all__ = [
    "PROTOCOL_ERRORS",
    "SERVER_STRING_TO_SIGN",
    "AliyunAuthError",
    "Missing",
    "framework_error",
    "missing",
    "protocol_error",
    "required",
    "signature_mismatch",
]

# The legacy Python SDK splits the Message on ":" and compares part [1] with the string it signed,
# so nothing before this marker may contain a colon.
SERVER_STRING_TO_SIGN = "server string to sign is:"

# code -> (HTTP status, Alibaba's wording)
PROTOCOL_ERRORS: Mapping[str, tuple[int, str]] = MappingProxyType(
    {
        "SignatureDoesNotMatch": (400, "Specified signature is not matched with our calculation."),
        "IncompleteSignature": (
            400,
            "The request signature does not conform to Aliyun standards.",
        ),
        "InvalidSignatureMethod": (400, "Specified signature method is not supported."),
        "InvalidTimeStamp.Expired": (400, "Specified time stamp or date value is expired."),
        "InvalidTimeStamp.Format": (
            400,
            "Specified time stamp or date value is not well formatted.",
        ),
        "SignatureNonceUsed": (400, "Specified signature nonce was used already."),
        "InvalidAccessKeyId.NotFound": (404, "Specified access key is not found."),
        "InvalidAccessKeyId.Inactive": (400, "Specified access key is disabled."),
        "MissingParameter": (
            400,
            "The input parameter that is mandatory for processing this request is not supplied.",
        ),
        "InvalidParameter": (400, "The specified parameter is not valid."),
        "InvalidParameter.Format": (400, "Specified parameter Format is not valid."),
        "InvalidVersion": (400, "Specified parameter Version is not valid."),
        "InvalidAction.NotFound": (
            404,
            "Specified api is not found, please check your url and method.",
        ),
        "RequestParameterMalformed": (
            400,
            "Request parameters has malformed encoded characters.",
        ),
        "UnsupportedHTTPMethod": (403, "This http method not supported."),
        "RequestEntityTooLarge": (413, "The request body is too large."),
        "Throttling.User": (400, "Request was denied due to user flow control."),
        "InternalError": (
            500,
            "The request processing has failed due to some unknown error, exception or failure.",
        ),
        "ServiceUnavailable": (
            503,
            "The request has failed due to a temporary failure of the server.",
        ),
    }
)


class AliyunAuthError(Exception):
    """A refused call in Alibaba's terms: `code`, `http_status` for the SDK, `message` for humans.

    The message never contains a secret; on SignatureDoesNotMatch it carries the server's string
    to sign (as Alibaba does) so a client can see which byte it signed differently.
    """

    def __init__(self, code: str, message: str, http_status: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.http_status = http_status

    def __repr__(self) -> str:
        return f"AliyunAuthError({self.code!r}, {self.message!r}, {self.http_status})"


def protocol_error(code: str, detail: str = "") -> AliyunAuthError:
    """The refusal for `code` with Alibaba's wording, `detail` appended (naming the field).

    An unknown code becomes a 400 with the code kept, so a typo cannot turn into a 500.
    """
    status, text = PROTOCOL_ERRORS.get(code, (400, "The request is not valid."))
    return AliyunAuthError(code, f"{text} {detail}".rstrip(), status)


def missing(name: str) -> AliyunAuthError:
    """`Missing<Name>` (400), the gateway's answer for an absent mandatory query parameter.

    Header names (with dashes) use the generic MissingParameter code instead.
    """
    if name.replace("_", "").isalnum():
        return AliyunAuthError(f"Missing{name}", f"{name} is mandatory for this action.", 400)
    return AliyunAuthError(
        "MissingParameter",
        f'The input parameter "{name}" that is mandatory for processing this request is not '
        "supplied.",
        400,
    )


def signature_mismatch(string_to_sign: str, reason: str = "") -> AliyunAuthError:
    """SignatureDoesNotMatch (400) carrying the server's string to sign, as Alibaba returns it."""
    status, text = PROTOCOL_ERRORS["SignatureDoesNotMatch"]
    lead = f"{text} {reason}".rstrip().replace(":", " ")
    return AliyunAuthError(
        "SignatureDoesNotMatch", f"{lead} {SERVER_STRING_TO_SIGN}{string_to_sign}", status
    )


# The framework's own error pages (no route, wrong method, body too large...) in Alibaba's terms, so
# the SDKs can parse them: an HTML or plain-text page loses the status and the code in every SDK.
_FRAMEWORK: Mapping[int, str] = MappingProxyType(
    {
        400: "InvalidParameter",
        404: "InvalidAction.NotFound",
        405: "UnsupportedHTTPMethod",
        413: "RequestEntityTooLarge",
        414: "RequestEntityTooLarge",
        429: "Throttling.User",
        431: "RequestEntityTooLarge",
        500: "InternalError",
        503: "ServiceUnavailable",
    }
)


def framework_error(status: int) -> AliyunAuthError:
    """Alibaba's code for a framework-generated HTTP error, with Alibaba's status for that code."""
    code = _FRAMEWORK.get(status)
    if code is None:
        code = "InternalError" if status >= 500 else "InvalidParameter"
    return protocol_error(code)


class Missing(ApiError):
    """A required parameter is absent: Alibaba answers `Missing<Name>`."""

    def __init__(self, name: str) -> None:
        super().__init__("MISSING_FIELD", f"{name} is mandatory for this action.")
        self.field = name


def required(p: Mapping[str, str], name: str) -> str:
    """An action's mandatory parameter (Missing<Name> when absent or empty)."""
    value = p.get(name)
    if value is None or value == "":
        raise Missing(name)
    return value
