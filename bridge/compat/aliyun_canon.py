"""Canonical forms for Alibaba Cloud request signatures: encoding, decoding, canonical strings.

The SDKs disagree on the wire (the Python SDK sends a space as `+`, Node and the legacy SDK as
`%20`; Node leaves `*` bare), but all of them sign the same canonical form. So the server never
signs the raw bytes it received: it decodes every name and value with form rules (`+` is a space)
and re-encodes them with Alibaba's RFC 3986 rule (only `A-Z a-z 0-9 - _ . ~` kept, everything else
`%XX` upper-case, so space `%20`, `*` `%2A`, `/` `%2F`). Blank values (`SignatureType=`) are kept:
the legacy SDK signs them. Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import quote, unquote_to_bytes

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac

from bridge.compat.aliyun_errors import protocol_error

__all__ = [
    "ACS3_ALGORITHMS",
    "EMPTY_SHA256",
    "SM3_AVAILABLE",
    "acs3_canonical_headers",
    "acs3_canonical_query",
    "acs3_canonical_request",
    "acs3_signature",
    "acs3_string_to_sign",
    "canonical_uri",
    "form_decode",
    "payload_hash",
    "percent_encode",
    "rpc_v1_signature",
    "rpc_v1_string_to_sign",
]

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
_SAFE = "-_.~"  # quote() always keeps A-Z a-z 0-9; these complete RFC 3986's unreserved set
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _sm3_available() -> bool:
    try:
        digest = hashes.Hash(hashes.SM3())
    except UnsupportedAlgorithm:
        return False
    digest.update(b"")
    return True


# OpenSSL builds may leave SM3 out; then ACS3-HMAC-SM3 is refused instead of crashing.
SM3_AVAILABLE = _sm3_available()
ACS3_ALGORITHMS: tuple[str, ...] = ("ACS3-HMAC-SHA256",) + (
    ("ACS3-HMAC-SM3",) if SM3_AVAILABLE else ()
)


def percent_encode(text: str) -> str:
    """Alibaba's RFC 3986 encoding of UTF-8 text (space `%20`, `*` `%2A`, `~` kept, `/` `%2F`)."""
    return quote(text, safe=_SAFE, encoding="utf-8", errors="strict")


def _decode_component(raw: str) -> str:
    if _BAD_ESCAPE.search(raw):
        raise protocol_error("RequestParameterMalformed", f"Bad percent-escape in {raw[:64]!r}.")
    try:
        text = unquote_to_bytes(raw.replace("+", " ")).decode("utf-8")
    except UnicodeDecodeError:
        raise protocol_error(
            "RequestParameterMalformed", f"Not UTF-8 once decoded: {raw[:64]!r}."
        ) from None
    if "\x00" in text:  # %00: no PostgreSQL text column holds U+0000 (a 500 there)
        raise protocol_error("RequestParameterMalformed", f"U+0000 (%00) in {raw[:64]!r}.")
    return text


def form_decode(raw: str) -> list[tuple[str, str]]:
    """Decode a query string or form body into (name, value) pairs, in order, duplicates kept.

    `+` is a space; a bare `name` is `name=`; empty segments (`a=1&&b=2`) are skipped. A malformed
    escape or non-UTF-8 text is refused (RequestParameterMalformed) rather than guessed at, since
    the client signed bytes we cannot reproduce.
    """
    pairs: list[tuple[str, str]] = []
    for segment in raw.split("&"):
        if not segment:
            continue
        name, _, value = segment.partition("=")
        pairs.append((_decode_component(name), _decode_component(value)))
    return pairs


def _encoded_sorted(params: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return sorted((percent_encode(name), percent_encode(value)) for name, value in params)


def rpc_v1_string_to_sign(method: str, params: Iterable[tuple[str, str]]) -> str:
    """`METHOD&%2F&enc(canonical query)`: every parameter but `Signature`, sorted when encoded.

    Query and form-body parameters are signed together, so callers pass both.
    """
    canonical = "&".join(
        f"{name}={value}"
        for name, value in _encoded_sorted(p for p in params if p[0] != "Signature")
    )
    return f"{method.upper()}&%2F&{percent_encode(canonical)}"


def rpc_v1_signature(string_to_sign: str, secret: str) -> str:
    """Base64 HMAC-SHA1 keyed with `secret + "&"` (the `&` is what the SDKs and docs use)."""
    key = (secret + "&").encode("utf-8")
    mac = hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(mac).decode("ascii")


def canonical_uri(path: str) -> str:
    """The path as sent, each segment decoded once and re-encoded with RFC 3986; empty is `/`."""
    if not path:
        return "/"
    segments = []
    for segment in path.split("/"):
        if _BAD_ESCAPE.search(segment):
            raise protocol_error("RequestParameterMalformed", f"Bad percent-escape in {path!r}.")
        try:
            decoded = unquote_to_bytes(segment).decode("utf-8")
        except UnicodeDecodeError:
            raise protocol_error(
                "RequestParameterMalformed", f"Path is not UTF-8: {path!r}."
            ) from None
        segments.append(percent_encode(decoded))
    return "/".join(segments)


def acs3_canonical_query(params: Iterable[tuple[str, str]]) -> str:
    """Sorted `name=value` pairs, both RFC 3986 encoded, joined with `&`; empty query is ``""``."""
    return "&".join(f"{name}={value}" for name, value in _encoded_sorted(params))


def acs3_canonical_headers(
    headers: Mapping[str, Sequence[str]], signed_headers: Sequence[str]
) -> str:
    """`name:value\\n` for each signed header, in the order the client listed them.

    `headers` maps lower-case names to every value received; repeated values are trimmed, sorted
    and joined with `,` as the SDKs do. A listed header that was not sent raises KeyError.
    """
    lines = []
    for name in signed_headers:
        values = headers[name]
        lines.append(f"{name}:{','.join(sorted(v.strip() for v in values))}\n")
    return "".join(lines)


def acs3_canonical_request(
    method: str,
    uri: str,
    query: str,
    canonical_headers: str,
    signed_headers: str,
    hashed_payload: str,
) -> str:
    """The six parts joined by newlines; the headers block ends with its own newline."""
    return "\n".join(
        (method.upper(), uri, query, canonical_headers, signed_headers, hashed_payload)
    )


def _crypto_hash(algorithm: str) -> hashes.HashAlgorithm:
    return hashes.SM3() if algorithm == "ACS3-HMAC-SM3" else hashes.SHA256()


def payload_hash(body: bytes, algorithm: str = "ACS3-HMAC-SHA256") -> str:
    """Hex digest of the raw body with the scheme's hash (SHA-256, or SM3 for ACS3-HMAC-SM3)."""
    if algorithm != "ACS3-HMAC-SM3":
        return hashlib.sha256(body).hexdigest()
    digest = hashes.Hash(_crypto_hash(algorithm))
    digest.update(body)
    return digest.finalize().hex()


def acs3_string_to_sign(algorithm: str, canonical_request: str) -> str:
    """`ALGORITHM\\nhex(hash(canonical request))`."""
    return f"{algorithm}\n{payload_hash(canonical_request.encode('utf-8'), algorithm)}"


def acs3_signature(string_to_sign: str, secret: str, algorithm: str = "ACS3-HMAC-SHA256") -> str:
    """Lower-case hex HMAC of the string to sign keyed with the raw secret (no `&` here)."""
    mac = crypto_hmac.HMAC(secret.encode("utf-8"), _crypto_hash(algorithm))
    mac.update(string_to_sign.encode("utf-8"))
    return mac.finalize().hex()
