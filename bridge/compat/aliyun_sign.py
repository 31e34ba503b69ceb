"""Verification of Alibaba Cloud signed calls (Dysmsapi 2017-05-25): RPC v1 and ACS3 (pure).

Both schemes the official SDKs speak are accepted: RPC signature v1 (HMAC-SHA1 over the sorted
query and form body; the legacy SDK, or `signature_algorithm='v2'`) and ACS3-HMAC-SHA256 (an
`Authorization` header over a canonical request; the SDKs' default), plus ACS3-HMAC-SM3 when the
`cryptography` build offers SM3. The server's order of checks, so each refusal names the first
thing wrong and no secret is touched before the call is well formed:

1. `parse_request(...)` -> SignedCall: syntax, mandatory fields, Version, Format, body hash;
2. `check_timestamp(call.timestamp, now, max_skew_s)`: InvalidTimeStamp.Expired;
3. key lookup by `call.access_key_id` (the caller's job;
   `protocol_error("InvalidAccessKeyId.NotFound")` when unknown);
4. `call.verify(secret)`: SignatureDoesNotMatch, constant-time compare;
5. nonce reuse by `call.nonce` (the caller's: `protocol_error("SignatureNonceUsed")`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from bridge.compat.aliyun_call import (
    API_VERSION,
    DEFAULT_MAX_SKEW_S,
    SignedCall,
    check_timestamp,
    parse_timestamp,
)
from bridge.compat.aliyun_canon import (
    ACS3_ALGORITHMS,
    acs3_canonical_headers,
    acs3_canonical_query,
    acs3_canonical_request,
    acs3_string_to_sign,
    canonical_uri,
    form_decode,
    payload_hash,
    percent_encode,
    rpc_v1_signature,
    rpc_v1_string_to_sign,
)
from bridge.compat.aliyun_errors import (
    AliyunAuthError,
    missing,
    protocol_error,
    signature_mismatch,
)

__all__ = [
    "API_VERSION",
    "DEFAULT_MAX_SKEW_S",
    "AliyunAuthError",
    "SignedCall",
    "check_timestamp",
    "early_check",
    "parse_request",
    "parse_timestamp",
    "percent_encode",
    "protocol_error",
    "query_format",
    "rpc_v1_signature",
    "rpc_v1_string_to_sign",
]

NONCE_MAX = 256
FORM_TYPE = "application/x-www-form-urlencoded"
# Never handed to the business layer: they authenticate the call, they are not its arguments.
AUTH_PARAMS = frozenset(
    {
        "Signature",
        "SignatureMethod",
        "SignatureVersion",
        "SignatureNonce",
        "SignatureType",
        "AccessKeyId",
        "Timestamp",
        "SecurityToken",
        "BearerToken",
        "Action",
        "Version",
        "Format",
    }
)
# Signed whenever the request carries them (Alibaba: every x-acs-* common header but Authorization).
ACS3_REQUIRED_SIGNED = ("host", "x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256")
ACS3_SIGNED_WHEN_SENT = ("x-acs-action", "x-acs-version")
SINGLE_HEADERS = ("authorization", *ACS3_REQUIRED_SIGNED, *ACS3_SIGNED_WHEN_SENT)
_HEX_RE = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)
_HEADER_NAME_RE = re.compile(r"[a-z0-9!#$%&'*+.^_`|~-]+", re.ASCII)


def _lower_headers(headers: Mapping[str, str]) -> dict[str, list[str]]:
    # items() of a multidict yields every repeated header; a plain dict yields one each.
    out: dict[str, list[str]] = {}
    for name, value in headers.items():
        out.setdefault(name.lower(), []).append(value)
    return out


def _last(pairs: list[tuple[str, str]], name: str) -> str | None:
    found = None
    for key, value in pairs:
        if key == name:
            found = value
    return found


def _required(pairs: list[tuple[str, str]], name: str) -> str:
    value = _last(pairs, name)
    if not value:
        raise missing(name)
    return value


def _one_header(headers: dict[str, list[str]], name: str) -> str | None:
    values = headers.get(name)
    return values[-1].strip() if values else None


def _required_header(headers: dict[str, list[str]], name: str) -> str:
    value = _one_header(headers, name)
    if not value:
        raise missing(name)
    return value


def _check_nonce(nonce: str) -> str:
    if len(nonce) > NONCE_MAX:
        raise protocol_error("InvalidParameter", f"SignatureNonce is over {NONCE_MAX} characters.")
    return nonce


def _format(pairs: list[tuple[str, str]]) -> Literal["JSON", "XML"]:
    value = (_last(pairs, "Format") or "JSON").upper()
    if value == "JSON":
        return "JSON"
    if value == "XML":
        return "XML"
    raise protocol_error("InvalidParameter.Format", "Use JSON or XML.")


def _pick(signed: str | None, other: str | None, name: str) -> str:
    """The signed source of Action/Version wins; a disagreeing second source is refused."""
    if signed and other and signed != other:
        raise protocol_error("InvalidParameter", f"{name} and x-acs-{name.lower()} disagree.")
    value = signed or other
    if not value:
        raise missing(name)
    return value


def _parse_authorization(value: str) -> tuple[str, dict[str, str]]:
    algorithm, _, rest = value.strip().partition(" ")
    if not algorithm.startswith("ACS3-"):
        raise protocol_error("InvalidSignatureMethod", f"Unknown scheme {algorithm[:40]!r}.")
    if algorithm not in ACS3_ALGORITHMS:
        raise protocol_error("InvalidSignatureMethod", f"{algorithm} is not supported here.")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, eq, val = part.strip().partition("=")
        if not eq or key in fields:
            raise protocol_error("IncompleteSignature", "Malformed Authorization header.")
        fields[key] = val.strip()
    for key in ("Credential", "SignedHeaders", "Signature"):
        if not fields.get(key):
            raise protocol_error("IncompleteSignature", f"Authorization lacks {key}.")
    if not _HEX_RE.fullmatch(fields["Signature"]):
        raise protocol_error("IncompleteSignature", "Signature is not 64 hex digits.")
    return algorithm, fields


def _signed_header_names(value: str, headers: dict[str, list[str]]) -> list[str]:
    names = value.split(";")
    if any(not _HEADER_NAME_RE.fullmatch(n) for n in names) or len(set(names)) != len(names):
        raise protocol_error(
            "IncompleteSignature", "SignedHeaders must be distinct lower-case names."
        )
    required = ACS3_REQUIRED_SIGNED + tuple(h for h in ACS3_SIGNED_WHEN_SENT if h in headers)
    for name in required:
        if name not in names:
            raise protocol_error("IncompleteSignature", f"Header {name} must be signed.")
    for name in names:
        if name not in headers:
            raise protocol_error("IncompleteSignature", f"Signed header {name} was not sent.")
    return names


def _parse_rpc_v1(method: str, pairs: list[tuple[str, str]]) -> SignedCall:
    signature = _required(pairs, "Signature")
    access_key_id = _required(pairs, "AccessKeyId")
    sig_method = _required(pairs, "SignatureMethod")
    if sig_method != "HMAC-SHA1":
        raise protocol_error("InvalidSignatureMethod", f"{sig_method[:40]!r}; use HMAC-SHA1.")
    sig_version = _last(pairs, "SignatureVersion")
    if sig_version not in (None, "1.0"):
        raise protocol_error("InvalidSignatureMethod", f"SignatureVersion {sig_version[:20]!r}.")
    nonce = _check_nonce(_required(pairs, "SignatureNonce"))
    timestamp = parse_timestamp(_required(pairs, "Timestamp"))
    return SignedCall(
        scheme="rpc_v1",
        algorithm="HMAC-SHA1",
        access_key_id=access_key_id,
        nonce=nonce,
        timestamp=timestamp,
        action=_pick(_last(pairs, "Action"), None, "Action"),
        version=_version(_pick(_last(pairs, "Version"), None, "Version")),
        format=_format(pairs),
        params=_business_params(pairs),
        string_to_sign=rpc_v1_string_to_sign(method, pairs),
        signature=signature,
    )


def _parse_acs3(
    method: str,
    path: str,
    query: list[tuple[str, str]],
    all_pairs: list[tuple[str, str]],
    headers: dict[str, list[str]],
    body: bytes,
) -> SignedCall:
    algorithm, auth = _parse_authorization(headers["authorization"][-1])
    names = _signed_header_names(auth["SignedHeaders"], headers)
    nonce = _check_nonce(_required_header(headers, "x-acs-signature-nonce"))
    timestamp = parse_timestamp(_required_header(headers, "x-acs-date"))
    claimed = _required_header(headers, "x-acs-content-sha256")
    canonical = acs3_canonical_request(
        method,
        canonical_uri(path),
        acs3_canonical_query(query),
        acs3_canonical_headers(headers, names),
        auth["SignedHeaders"],
        claimed,
    )
    try:
        canonical.encode("utf-8")
    except UnicodeEncodeError:  # a signed header with bytes that are not UTF-8: no signature
        raise protocol_error(  # could cover it (and hashing it raised: a 500 before)
            "IncompleteSignature", "A signed header value is not valid UTF-8."
        ) from None
    string_to_sign = acs3_string_to_sign(algorithm, canonical)
    if claimed.lower() != payload_hash(body, algorithm):
        raise signature_mismatch(
            string_to_sign, "The x-acs-content-sha256 header is not the hash of the body."
        )
    return SignedCall(
        scheme="acs3",
        algorithm=algorithm,
        access_key_id=auth["Credential"],
        nonce=nonce,
        timestamp=timestamp,
        action=_pick(_one_header(headers, "x-acs-action"), _last(all_pairs, "Action"), "Action"),
        version=_version(
            _pick(_one_header(headers, "x-acs-version"), _last(all_pairs, "Version"), "Version")
        ),
        format=_format(all_pairs),
        params=_business_params(all_pairs),
        string_to_sign=string_to_sign,
        signature=auth["Signature"],
        canonical_request=canonical,
    )


def _version(value: str) -> str:
    if value != API_VERSION:
        raise protocol_error("InvalidVersion", f"This endpoint serves {API_VERSION}.")
    return value


def _business_params(pairs: list[tuple[str, str]]) -> dict[str, str]:
    return {name: value for name, value in pairs if name not in AUTH_PARAMS}


def _is_form(content_type: str | None) -> bool:
    return (content_type or "").split(";", 1)[0].strip().lower() == FORM_TYPE


def parse_request(
    method: str,
    path: str,
    raw_query: str,
    headers: Mapping[str, str],
    body: bytes,
    content_type: str | None,
) -> SignedCall:
    """Parse one signed call from its raw parts; raise AliyunAuthError when it is malformed.

    `path` is the raw path without the query; `raw_query` the query string exactly as received
    (not a framework's parsed view); `headers` may be a multidict (every value is seen); `body` the
    raw bytes (read in full, chunked or not). A form body (`application/x-www-form-urlencoded`)
    supplies parameters too; any other body only counts through the ACS3 body hash.
    """
    lowered = _lower_headers(headers)
    query = form_decode(raw_query)
    form: list[tuple[str, str]] = []
    if body and _is_form(content_type):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            raise protocol_error(
                "RequestParameterMalformed", "The form body is not UTF-8."
            ) from None
        form = form_decode(text)
    _refuse_repeats(query + form, lowered)
    if "authorization" in lowered:
        return _parse_acs3(method, path, query, query + form, lowered, body)
    if _last(query + form, "Signature") is None:
        raise missing("Signature")
    return _parse_rpc_v1(method, query + form)


def early_check(
    method: str, raw_query: str, headers: Mapping[str, str], content_type: str | None
) -> tuple[str, int] | None:
    """What the call's headers and query decide before its body is read: raise AliyunAuthError
    for what is refused from them alone (the same codes `parse_request` gives), else the
    (AccessKeyId, Timestamp) to check the clock and the key with. None when the body may carry
    them: an RPC v1 call with a form body signs its form parameters, Signature and Timestamp
    perhaps among them.

    Why: the body was read whole first, so a client with no signature at all made the server
    read and buffer up to max_body_bytes."""
    lowered = _lower_headers(headers)
    query = form_decode(raw_query)
    if "authorization" in lowered:  # ACS3: the signature is all in the headers
        _refuse_repeats(query, lowered)
        _algorithm, auth = _parse_authorization(lowered["authorization"][-1])
        _signed_header_names(auth["SignedHeaders"], lowered)
        _check_nonce(_required_header(lowered, "x-acs-signature-nonce"))
        timestamp = parse_timestamp(_required_header(lowered, "x-acs-date"))
        _required_header(lowered, "x-acs-content-sha256")
        return auth["Credential"], timestamp
    if _is_form(content_type):
        return None
    # RPC v1 without a form body: every signed parameter is in the query.
    _refuse_repeats(query, lowered)
    if _last(query, "Signature") is None:
        raise missing("Signature")
    call = _parse_rpc_v1(method, query)
    return call.access_key_id, call.timestamp


def query_format(raw_query: str) -> Literal["JSON", "XML"]:
    """The answer format a call's query asks for, for a refusal made before its body is read
    (an invalid Format is refused later, with the rest of the call)."""
    try:
        return _format(form_decode(raw_query))
    except AliyunAuthError:
        return "JSON"


def _refuse_repeats(pairs: list[tuple[str, str]], headers: dict[str, list[str]]) -> None:
    """An authentication field given twice is ambiguous (which one was meant?): refuse it.

    Business parameters may repeat (the last one wins), as Alibaba's gateway allows.
    """
    names = [name for name, _ in pairs if name in AUTH_PARAMS]
    for name in names:
        if names.count(name) > 1:
            raise protocol_error("InvalidParameter", f"{name} is given more than once.")
    for name in SINGLE_HEADERS:
        if len(headers.get(name, ())) > 1:
            raise protocol_error("IncompleteSignature", f"Header {name} is sent more than once.")
