"""BRIDGE-HMAC-SHA256: the worked example (and its doc), each check failing on its own,
canonicalisation edge cases, and an independent implementation that must agree with the module."""

from __future__ import annotations

import hashlib
import hmac
import io
import itertools
import re
import string
from contextlib import redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.api import signing
from bridge.api.signing import (
    ALGORITHM,
    NONCE_RE,
    REQUIRED_HEADERS,
    AuthHeader,
    SignatureError,
    body_sha256,
    canonical_query,
    canonical_request,
    canonical_uri,
    check_nonce,
    check_signed_headers,
    check_skew,
    format_date,
    parse_authorization,
    parse_date,
    sign,
    sign_request,
    string_to_sign,
    verify_signature,
    verify_webhook_signature,
    webhook_signature,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "signing-example.md"

APP_KEY = "AK_example_0001"
SECRET = "s3cr3t-example-secret-0123456789abcdef"
NOW = datetime(2026, 11, 29, 8, 0, 0, tzinfo=UTC)
NONCE = "nonce-0000000000000001"
BODY = (
    b'{"to":"+8613800138000","sign_name":"Example","template":"SMS_0001",'
    b'"params":{"code":"123456"}}'
)
BASE_HEADERS = {
    "Host": "127.0.0.1:8080",
    "Content-Type": "application/json",
    "Idempotency-Key": "order-0001",
}
EXPECTED_BODY_SHA = "74a9841cad91ed5089a556e8dcd32713799e55d91b1fdba9fc41df37dbed8fbf"
EXPECTED_CANONICAL = (
    "POST\n"
    "/v1/messages\n"
    "\n"
    "content-type:application/json\n"
    "host:127.0.0.1:8080\n"
    "idempotency-key:order-0001\n"
    f"x-bridge-content-sha256:{EXPECTED_BODY_SHA}\n"
    "x-bridge-date:2026-11-29T08:00:00Z\n"
    "x-bridge-nonce:nonce-0000000000000001\n"
    "\n"
    "content-type;host;idempotency-key;x-bridge-content-sha256;x-bridge-date;x-bridge-nonce\n"
    f"{EXPECTED_BODY_SHA}"
)
EXPECTED_STS = (
    "BRIDGE-HMAC-SHA256\n"
    "2026-11-29T08:00:00Z\n"
    "bb3c93866331fa8c4eae85d76ee5229880675054ed69ad2ebe6eb936bc553c46"
)
EXPECTED_SIGNATURE = "3a7aa201bef821480c422f9f59718e109ad31890d04fbb9560c29ee442fcfde0"
ALL_SIX = (
    "content-type",
    "host",
    "idempotency-key",
    "x-bridge-content-sha256",
    "x-bridge-date",
    "x-bridge-nonce",
)


def signed_example(
    body: bytes = BODY, headers: dict[str, str] | None = None, **kw: object
) -> dict[str, str]:
    """The example request's full header set after signing."""
    base = dict(BASE_HEADERS if headers is None else headers)
    added = sign_request(
        APP_KEY,
        SECRET,
        "POST",
        "/v1/messages",
        "",
        base,
        body,
        NOW,
        NONCE,
        **kw,  # type: ignore[arg-type]
    )
    return {**base, **added}


def server_verify(
    headers: dict[str, str],
    body: bytes = BODY,
    *,
    secret: str = SECRET,
    method: str = "POST",
    path: str = "/v1/messages",
    query: str = "",
    now: datetime = NOW,
    max_skew_s: int = 300,
) -> AuthHeader:
    """The server's sequence of checks, as the API issue orders them (minus key and nonce state)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    auth = parse_authorization(lowered.get("authorization"))
    check_signed_headers(auth, lowered)
    check_nonce(lowered["x-bridge-nonce"])
    check_skew(parse_date(lowered["x-bridge-date"]), now, max_skew_s)
    verify_signature(secret, method, path, query, headers, body, auth)
    return auth


def code_of(exc: pytest.ExceptionInfo[SignatureError]) -> str:
    return exc.value.code


# ---------------------------------------------------------------- worked example and its doc


def test_worked_example_values() -> None:
    assert body_sha256(BODY) == EXPECTED_BODY_SHA
    headers = signed_example()
    assert headers["X-Bridge-Date"] == "2026-11-29T08:00:00Z"
    assert headers["X-Bridge-Nonce"] == NONCE
    assert headers["X-Bridge-Content-SHA256"] == EXPECTED_BODY_SHA
    canonical = canonical_request("POST", "/v1/messages", "", headers, ALL_SIX, EXPECTED_BODY_SHA)
    assert canonical == EXPECTED_CANONICAL
    assert string_to_sign("2026-11-29T08:00:00Z", canonical) == EXPECTED_STS
    assert sign(SECRET, EXPECTED_STS) == EXPECTED_SIGNATURE
    assert sign(SECRET.encode(), EXPECTED_STS) == EXPECTED_SIGNATURE
    assert headers["Authorization"] == (
        f"BRIDGE-HMAC-SHA256 Credential={APP_KEY},SignedHeaders={';'.join(ALL_SIX)},"
        f"Signature={EXPECTED_SIGNATURE}"
    )
    assert server_verify(headers).app_key == APP_KEY


def test_worked_example_matches_plain_hmac() -> None:
    """The published numbers, recomputed with nothing but hashlib/hmac."""
    assert hashlib.sha256(BODY).hexdigest() == EXPECTED_BODY_SHA
    digest = hashlib.sha256(EXPECTED_CANONICAL.encode()).hexdigest()
    assert EXPECTED_STS.endswith(digest)
    mac = hmac.new(SECRET.encode(), EXPECTED_STS.encode(), hashlib.sha256).hexdigest()
    assert mac == EXPECTED_SIGNATURE


def doc_blocks() -> dict[str, str]:
    """Fenced blocks that carry a label after the language (```text canonical-request)."""
    text = DOC.read_text(encoding="utf-8")
    blocks: dict[str, str] = {}
    for match in re.finditer(r"^```(\w+) ([\w-]+)\n(.*?)\n```$", text, re.M | re.S):
        label = match.group(2)
        assert label not in blocks, f"duplicate doc block {label}"
        blocks[label] = match.group(3)
    return blocks


def test_doc_lists_every_block() -> None:
    assert set(doc_blocks()) == {
        "body",
        "request",
        "content-sha256",
        "canonical-request",
        "string-to-sign",
        "signature",
        "signed-headers",
        "standalone",
        "webhook-body",
        "webhook-signature",
    }


def parse_http_headers(block: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in block.splitlines():
        name, sep, value = line.partition(": ")
        assert sep, line
        headers[name] = value
    return headers


def test_doc_blocks_equal_what_the_code_produces() -> None:
    blocks = doc_blocks()
    body = blocks["body"].encode("utf-8")
    assert body == BODY
    request_line, _, header_text = blocks["request"].partition("\n")
    method, target, version = request_line.split(" ")
    assert version == "HTTP/1.1"
    path, _, query = target.partition("?")
    request_headers = parse_http_headers(header_text)
    assert request_headers == BASE_HEADERS
    added = sign_request(APP_KEY, SECRET, method, path, query, request_headers, body, NOW, NONCE)
    assert parse_http_headers(blocks["signed-headers"]) == added
    assert blocks["content-sha256"] == body_sha256(body) == added["X-Bridge-Content-SHA256"]
    auth = parse_authorization(added["Authorization"])
    canonical = canonical_request(
        method, path, query, {**request_headers, **added}, auth.signed_headers, body_sha256(body)
    )
    assert blocks["canonical-request"] == canonical
    assert blocks["string-to-sign"] == string_to_sign(added["X-Bridge-Date"], canonical)
    assert blocks["signature"] == auth.signature == sign(SECRET, blocks["string-to-sign"])
    # The doc's table of inputs names the same constants the code above used.
    text = DOC.read_text(encoding="utf-8")
    for value in (APP_KEY, SECRET, "2026-11-29T08:00:00Z", NONCE):
        assert f"`{value}`" in text


def test_doc_standalone_snippet_prints_the_signature() -> None:
    blocks = doc_blocks()
    out = io.StringIO()
    namespace: dict[str, object] = {}
    with redirect_stdout(out):
        exec(compile(blocks["standalone"], str(DOC), "exec"), namespace)
    assert out.getvalue().strip() == blocks["signature"] == EXPECTED_SIGNATURE
    assert namespace["canonical"] == blocks["canonical-request"]
    assert namespace["to_sign"] == blocks["string-to-sign"]


def test_doc_webhook_example() -> None:
    blocks = doc_blocks()
    body = blocks["webhook-body"].encode("utf-8")
    header = blocks["webhook-signature"]
    t = int(datetime(2026, 11, 29, 8, 0, 5, tzinfo=UTC).timestamp())
    assert t == 1795939205
    secret = "whsec-example-0123456789abcdef"
    assert webhook_signature(secret, body, t) == header
    assert verify_webhook_signature(secret, body, header, now=t)
    assert f"`{secret}`" in DOC.read_text(encoding="utf-8")


# ---------------------------------------------------------------- each check failing on its own


def test_wrong_secret_is_signature_mismatch() -> None:
    headers = signed_example()
    with pytest.raises(SignatureError) as exc:
        server_verify(headers, secret=SECRET + "x")
    assert code_of(exc) == "SIGNATURE_MISMATCH"
    # The error carries the server's view for debugging, never the secret.
    assert exc.value.canonical == EXPECTED_CANONICAL
    assert exc.value.string_to_sign == EXPECTED_STS
    assert SECRET not in str(exc.value) and SECRET not in exc.value.message


def test_body_changed_after_signing_is_body_hash_mismatch() -> None:
    headers = signed_example()
    tampered = BODY.replace(b"123456", b"654321")
    with pytest.raises(SignatureError) as exc:
        server_verify(headers, body=tampered)
    assert code_of(exc) == "BODY_HASH_MISMATCH"
    assert body_sha256(tampered) in exc.value.message


def test_empty_body_hash_is_of_empty_bytes() -> None:
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert body_sha256(b"") == empty
    headers = signed_example(body=b"", headers={"Host": "h"})
    assert headers["X-Bridge-Content-SHA256"] == empty
    server_verify(headers, body=b"")
    with pytest.raises(SignatureError) as exc:
        server_verify(headers, body=b" ")
    assert code_of(exc) == "BODY_HASH_MISMATCH"


def test_body_and_hash_both_replaced_is_signature_mismatch() -> None:
    headers = signed_example()
    tampered = BODY.replace(b"123456", b"654321")
    headers["X-Bridge-Content-SHA256"] = body_sha256(tampered)
    with pytest.raises(SignatureError) as exc:
        server_verify(headers, body=tampered)
    assert code_of(exc) == "SIGNATURE_MISMATCH"


def test_uppercase_body_hash_is_refused() -> None:
    headers = signed_example()
    headers["X-Bridge-Content-SHA256"] = EXPECTED_BODY_SHA.upper()
    with pytest.raises(SignatureError) as exc:
        server_verify(headers)
    assert code_of(exc) == "BODY_HASH_MISMATCH"


def with_signed_headers(headers: dict[str, str], names: list[str]) -> dict[str, str]:
    auth = parse_authorization(headers["Authorization"])
    value = (
        f"{ALGORITHM} Credential={auth.app_key},SignedHeaders={';'.join(names)},"
        f"Signature={auth.signature}"
    )
    return {**headers, "Authorization": value}


@pytest.mark.parametrize("removed", ALL_SIX)
def test_header_removed_from_signed_headers(removed: str) -> None:
    headers = signed_example()
    names = [n for n in ALL_SIX if n != removed]
    with pytest.raises(SignatureError) as exc:
        server_verify(with_signed_headers(headers, names))
    assert code_of(exc) == "SIGNATURE_MISMATCH"
    assert f"'{removed}'" in exc.value.message


@pytest.mark.parametrize("removed", REQUIRED_HEADERS)
def test_required_header_unsigned_even_if_not_sent(removed: str) -> None:
    """A request without content-type/idempotency-key still needs all four required names."""
    headers = signed_example(headers={"Host": "api.example"})
    names = [n for n in REQUIRED_HEADERS if n != removed]
    with pytest.raises(SignatureError) as exc:
        server_verify(with_signed_headers(headers, sorted(names)))
    assert code_of(exc) == "SIGNATURE_MISMATCH"
    assert f"'{removed}'" in exc.value.message


def test_unsent_optional_headers_need_not_be_signed() -> None:
    headers = signed_example(headers={"Host": "api.example"})
    auth = server_verify(headers)
    assert auth.signed_headers == tuple(sorted(REQUIRED_HEADERS))


@pytest.mark.parametrize("dropped", ["Host", "Content-Type", "Idempotency-Key", "X-Bridge-Nonce"])
def test_signed_header_absent_from_request(dropped: str) -> None:
    headers = signed_example()
    del headers[dropped]
    with pytest.raises(SignatureError) as exc:
        auth = parse_authorization(headers["Authorization"])
        verify_signature(SECRET, "POST", "/v1/messages", "", headers, BODY, auth)
    assert code_of(exc) == "SIGNATURE_MISMATCH"
    assert f"'{dropped.lower()}'" in exc.value.message
    assert "absent" in exc.value.message


def test_canonical_request_names_absent_header() -> None:
    with pytest.raises(SignatureError) as exc:
        canonical_request("GET", "/", "", {"Host": "h"}, ["host", "x-extra"], "abc")
    assert code_of(exc) == "SIGNATURE_MISMATCH"
    assert "'x-extra'" in exc.value.message


def test_extra_unsigned_header_is_allowed() -> None:
    headers = signed_example()
    headers["User-Agent"] = "curl/8"
    headers["Accept"] = "*/*"
    server_verify(headers)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("Host", "127.0.0.1:8081"),
        ("Content-Type", "text/plain"),
        ("Idempotency-Key", "order-0002"),
        ("X-Bridge-Nonce", "nonce-0000000000000002"),
        ("X-Bridge-Date", "2026-11-29T08:00:01Z"),
    ],
)
def test_tampered_signed_header_value(field: str, value: str) -> None:
    headers = signed_example()
    headers[field] = value
    with pytest.raises(SignatureError) as exc:
        server_verify(headers)
    assert code_of(exc) == "SIGNATURE_MISMATCH"


@pytest.mark.parametrize(
    ("method", "path", "query"),
    [
        ("PUT", "/v1/messages", ""),
        ("POST", "/v1/messages/", ""),
        ("POST", "/v1/Messages", ""),
        ("POST", "/v1/messages", "x=1"),
    ],
)
def test_request_line_changed(method: str, path: str, query: str) -> None:
    headers = signed_example()
    with pytest.raises(SignatureError) as exc:
        server_verify(headers, method=method, path=path, query=query)
    assert code_of(exc) == "SIGNATURE_MISMATCH"


def test_equivalent_encodings_verify() -> None:
    """A proxy re-encoding the path or reordering the query does not break the signature."""
    added = sign_request(
        APP_KEY,
        SECRET,
        "GET",
        "/v1/messages/a~b",
        "to=%2B86&date=2026-11-29",
        {"Host": "h"},
        b"",
        NOW,
        NONCE,
    )
    headers = {"Host": "h", **added}
    server_verify(
        headers, body=b"", method="GET", path="/v1/messages/a%7Eb", query="date=2026-11-29&to=%2b86"
    )


def test_header_values_are_trimmed_and_names_case_insensitive() -> None:
    headers = signed_example()
    spaced = {k.upper(): f"  {v}\t" for k, v in headers.items() if k != "Authorization"}
    spaced["authorization"] = headers["Authorization"]
    server_verify(spaced)


# ---------------------------------------------------------------- clock skew


@pytest.mark.parametrize("offset", [-300, -1, 0, 1, 300])
def test_skew_within_window_passes(offset: int) -> None:
    headers = signed_example()
    server_verify(headers, now=NOW + timedelta(seconds=offset))


@pytest.mark.parametrize("offset", [-301, 301, -86400, 86400])
def test_skew_outside_window_is_request_expired(offset: int) -> None:
    headers = signed_example()
    now = NOW + timedelta(seconds=offset)
    with pytest.raises(SignatureError) as exc:
        server_verify(headers, now=now)
    assert code_of(exc) == "REQUEST_EXPIRED"
    assert exc.value.server_time == format_date(now)
    assert format_date(now) in exc.value.message
    assert "300" in exc.value.message


def test_skew_is_configurable() -> None:
    check_skew(NOW, NOW + timedelta(seconds=60), 60)
    with pytest.raises(SignatureError) as exc:
        check_skew(NOW, NOW + timedelta(seconds=61), 60)
    assert code_of(exc) == "REQUEST_EXPIRED"


def test_skew_subsecond_server_clock() -> None:
    check_skew(NOW, NOW + timedelta(seconds=300, microseconds=0), 300)
    with pytest.raises(SignatureError):
        check_skew(NOW, NOW + timedelta(seconds=300, microseconds=1), 300)


@pytest.mark.parametrize("late_s", [None, 120, 300, 900])
@pytest.mark.parametrize(
    "offset_s",
    [-300.002, -300.001, -300.0005, -300.000001, -300, -299.9995, -299.998, -120.002,
     -120.001, -120, -119.998, -1.5, 0, 0.25, 299.998, 299.9995, 300, 300.000001, 300.0005,
     300.002, 86400.0],
)  # fmt: skip
def test_skew_fast_path_passes_only_what_check_skew_passes(
    offset_s: float, late_s: int | None
) -> None:
    """The server asks skew_clearly_within first and check_skew only when it says no: every
    request it passes, check_skew passes at the same moment, and it says no within a
    millisecond of either bound (where check_skew's rounding to microseconds decides)."""
    now = NOW.timestamp() - offset_s  # the request is dated `offset_s` from the server's clock
    fast = signing.skew_clearly_within(NOW, now, 300, late_s)
    try:
        check_skew(NOW, datetime.fromtimestamp(now, UTC), 300, late_s)
    except SignatureError:
        passes = False
    else:
        passes = True
    assert not fast or passes
    late = 300 if late_s is None else min(late_s, 300)
    clear = -late + 0.0011 < offset_s < 300 - 0.0011
    assert fast == clear


def test_skew_naive_datetimes_are_utc() -> None:
    check_skew(NOW.replace(tzinfo=None), NOW, 300)
    with pytest.raises(SignatureError):
        check_skew(NOW, NOW.replace(tzinfo=None) + timedelta(seconds=301), 300)


def test_skew_across_timezones() -> None:
    from datetime import timezone

    beijing = timezone(timedelta(hours=8))
    check_skew(NOW, NOW.astimezone(beijing), 0)


# ---------------------------------------------------------------- date and nonce syntax


def test_parse_date_valid() -> None:
    assert parse_date("2026-11-29T08:00:00Z") == NOW
    assert parse_date("2024-02-29T23:59:59Z") == datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "2026-11-29T08:00:00",
        "2026-11-29T08:00:00.000Z",
        "2026-11-29T08:00:00+00:00",
        "2026-11-29T08:00:00z",
        "2026-11-29 08:00:00Z",
        "20261129T080000Z",
        "2026-11-29T8:00:00Z",
        "2025-02-29T08:00:00Z",
        "2026-13-01T08:00:00Z",
        "2026-11-29T24:00:00Z",
        "Sun, 29 Nov 2026 08:00:00 GMT",
        "2026-11-29T08:00:00Z\n2026",
        "２０２６-11-29T08:00:00Z",
    ],
)
def test_parse_date_invalid(value: str) -> None:
    with pytest.raises(SignatureError) as exc:
        parse_date(value)
    assert code_of(exc) == "SIGNATURE_MISMATCH"
    assert "X-Bridge-Date" in exc.value.message


def test_format_date() -> None:
    assert format_date(NOW.replace(microsecond=999_999)) == "2026-11-29T08:00:00Z"
    assert format_date(NOW.replace(tzinfo=None)) == "2026-11-29T08:00:00Z"
    from datetime import timezone

    assert format_date(datetime(2026, 11, 29, 16, 0, tzinfo=timezone(timedelta(hours=8)))) == (
        "2026-11-29T08:00:00Z"
    )


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("a" * 16, True),
        ("a" * 64, True),
        ("a" * 15, False),
        ("a" * 65, False),
        ("abc_DEF-0123456789", True),
        ("abcdefghijklmnop.", False),
        ("abcdefghijklmno p", False),
        ("abcdefghijklmnopé", False),
        ("abcdefghijklmnop\n", True),  # header values are trimmed before the check
        ("", False),
    ],
)
def test_nonce_syntax(value: str, ok: bool) -> None:
    assert bool(NONCE_RE.fullmatch(value.strip())) is ok
    if ok:
        assert check_nonce(value) == value.strip()
    else:
        with pytest.raises(SignatureError) as exc:
            check_nonce(value)
        assert code_of(exc) == "SIGNATURE_MISMATCH"
        assert "X-Bridge-Nonce" in exc.value.message


def test_check_nonce_none() -> None:
    with pytest.raises(SignatureError):
        check_nonce(None)


# ---------------------------------------------------------------- Authorization syntax

GOOD_SIG = "0" * 64
GOOD_AUTH = (
    f"{ALGORITHM} Credential=AK_1,SignedHeaders=host;x-bridge-content-sha256;x-bridge-date;"
    f"x-bridge-nonce,Signature={GOOD_SIG}"
)


def test_parse_authorization_good() -> None:
    auth = parse_authorization(GOOD_AUTH)
    assert auth == AuthHeader(
        "AK_1", ("host", "x-bridge-content-sha256", "x-bridge-date", "x-bridge-nonce"), GOOD_SIG
    )


def test_parse_authorization_spaces_and_order() -> None:
    value = f"{ALGORITHM} Signature={GOOD_SIG}, Credential=AK_1,  SignedHeaders=host;x-bridge-date"
    assert parse_authorization(value) == AuthHeader("AK_1", ("host", "x-bridge-date"), GOOD_SIG)
    assert parse_authorization(f"  {GOOD_AUTH}  ") == parse_authorization(GOOD_AUTH)


def _outcome(parse: object, value: str) -> object:
    try:
        return parse(value)  # type: ignore[operator]
    except SignatureError as exc:
        return (exc.code, exc.message)


# Pieces an Authorization value is made of, right and wrong, so that the strings drawn are mostly
# near the usual spelling (the one the shortcut matches) and cross its edges.
_AUTH_PIECES = st.sampled_from(
    [
        ALGORITHM, "bridge-hmac-sha256", " ", "  ", ",", ", ", ";", "=", "Credential=",
        "SignedHeaders=", "Signature=", "AK_1", "ak.2~x-", "A" * 128, "A" * 129, "host",
        "x-bridge-date", "x-bridge-nonce", "content-type", "Host", "x_y", "a b", GOOD_SIG,
        GOOD_SIG[:63], GOOD_SIG.upper(), "f" * 64, "\t", "\u00e9", "",
    ]
)  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(st.lists(_AUTH_PIECES, max_size=14).map("".join))
def test_the_usual_spelling_shortcut_answers_as_the_strict_parser(value: str) -> None:
    # parse_authorization first tries one regular expression for the SDKs' spelling: whatever it
    # is given, it must answer exactly as the strict parser alone (the header, or the refusal).
    for candidate in (value, f"{ALGORITHM} {value}", f"{ALGORITHM} Credential={value}"):
        strict = _outcome(signing._parse_authorization_strictly, candidate)
        assert _outcome(parse_authorization, candidate) == strict


def test_the_shortcut_agrees_with_the_strict_parser_near_the_usual_spelling() -> None:
    # Every combination of right and wrong pieces in and around the usual spelling (~20,000).
    names = [
        ["host", "x-bridge-date"], ["x-bridge-date", "host"], ["host", "host"], ["host"],
        ["a!#$%&'*+.^_`|~-z", "host"], ["Host"], ["host", "X-A"], ["a b"], [""],
        ["host", ""], ["é"], ["x,y"], ["x=y"], [],
    ]  # fmt: skip
    credentials = ["AK_1", "a.b~c-d_e", "A" * 128, "A" * 129, "", "a b", "a/b", "é", "a=b"]
    signatures = [GOOD_SIG, "f" * 64, GOOD_SIG[:63], GOOD_SIG + "0", "F" * 64, ""]
    schemes = [ALGORITHM, ALGORITHM.lower(), ALGORITHM + " "]
    answered = set()
    for scheme, cred, listed, sig, order, comma in itertools.product(
        schemes, credentials, names, signatures, [(0, 1, 2), (2, 0, 1)], [",", ", "]
    ):
        parts = (f"Credential={cred}", f"SignedHeaders={';'.join(listed)}", f"Signature={sig}")
        value = f"{scheme} " + comma.join(parts[i] for i in order)
        strict = _outcome(signing._parse_authorization_strictly, value)
        assert _outcome(parse_authorization, value) == strict, value
        answered.add(type(strict))
    assert answered == {AuthHeader, tuple}  # both answers were reached


def test_a_clients_next_request_is_parsed_from_its_cached_head() -> None:
    # Session 51: the head (all before ",Signature=") is matched once per client; each request's
    # signature is checked apart, so a new one or a malformed one is still its own answer.
    head = f"{ALGORITHM} Credential=AK_51,SignedHeaders=host;x-bridge-date"
    signing._usual_head.cache_clear()
    first = parse_authorization(f"{head},Signature={GOOD_SIG}")
    second = parse_authorization(f"{head},Signature={'f' * 64}")
    assert first == AuthHeader("AK_51", ("host", "x-bridge-date"), GOOD_SIG)
    assert second == AuthHeader("AK_51", ("host", "x-bridge-date"), "f" * 64)
    assert signing._usual_head.cache_info().hits == 1
    for sig in ("F" * 64, "f" * 63 + "g", "f" * 63):
        value = f"{head},Signature={sig}"
        strict = _outcome(signing._parse_authorization_strictly, value)
        assert strict == (
            "SIGNATURE_MISMATCH",
            "Authorization Signature must be 64 lower-case hex digits",
        )
        assert _outcome(parse_authorization, value) == strict


@pytest.mark.parametrize(
    "names",
    [
        "host;x-bridge-date",
        "x-bridge-date;host",  # not sorted
        "host;host",  # repeated
        "host;;x-bridge-date",  # empty name
        "host;X-bridge-date",  # upper case
    ],
)
def test_the_shortcut_leaves_unsorted_or_odd_names_to_the_strict_parser(names: str) -> None:
    value = f"{ALGORITHM} Credential=AK_1,SignedHeaders={names},Signature={GOOD_SIG}"
    strict = _outcome(signing._parse_authorization_strictly, value)
    assert _outcome(parse_authorization, value) == strict
    assert isinstance(strict, AuthHeader) == (names == "host;x-bridge-date")


@pytest.mark.parametrize("value", [None, "", "   ", "\t"])
def test_parse_authorization_missing(value: str | None) -> None:
    with pytest.raises(SignatureError) as exc:
        parse_authorization(value)
    assert code_of(exc) == "MISSING_AUTH"
    assert "Authorization" in exc.value.message


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("Bearer abc", "scheme"),
        ("bridge-hmac-sha256 Credential=AK_1", "scheme"),
        ("BRIDGE-HMAC-SHA1 Credential=AK_1", "scheme"),
        (ALGORITHM, "no Credential"),
        (f"{ALGORITHM}   ", "no Credential"),
        (GOOD_AUTH.replace("Credential=AK_1,", ""), "lacks 'Credential'"),
        (GOOD_AUTH.replace(f",Signature={GOOD_SIG}", ""), "lacks 'Signature'"),
        (
            f"{ALGORITHM} Credential=AK_1,Signature={GOOD_SIG}",
            "lacks 'SignedHeaders'",
        ),
        (GOOD_AUTH + ",Signature=" + GOOD_SIG, "repeats 'Signature'"),
        (GOOD_AUTH + ",Region=cn", "unknown part 'Region'"),
        (GOOD_AUTH.replace("Credential=", "credential="), "unknown part 'credential'"),
        (GOOD_AUTH + ",", "not of the form"),
        (GOOD_AUTH.replace("Credential=AK_1", "Credential"), "not of the form"),
        (GOOD_AUTH.replace("Credential=AK_1", "Credential="), "Credential"),
        (GOOD_AUTH.replace("Credential=AK_1", "Credential=AK 1"), "not a valid app key"),
        (GOOD_AUTH.replace("Credential=AK_1", "Credential=AK/1"), "Credential"),
        (GOOD_AUTH.replace("AK_1", "A" * 129), "Credential"),
        (GOOD_AUTH.replace(GOOD_SIG, GOOD_SIG[:-1]), "64 lower-case hex"),
        (GOOD_AUTH.replace(GOOD_SIG, GOOD_SIG + "0"), "64 lower-case hex"),
        (GOOD_AUTH.replace(GOOD_SIG, "A" * 64), "64 lower-case hex"),
        (GOOD_AUTH.replace(GOOD_SIG, "g" * 64), "64 lower-case hex"),
        (GOOD_AUTH.replace(GOOD_SIG, ""), "64 lower-case hex"),
        (GOOD_AUTH.replace("SignedHeaders=host", "SignedHeaders=Host"), "lower-case header"),
        (GOOD_AUTH.replace("host;", "host;;"), "lower-case header"),
        (GOOD_AUTH.replace("host;", "host ;"), "lower-case header"),
        (GOOD_AUTH.replace("host;", "x-bridge-date;host;"), "sorted"),
        (GOOD_AUTH.replace("host;", "host;host;"), "sorted"),
        (
            f"{ALGORITHM} Credential=AK_1,SignedHeaders=,Signature={GOOD_SIG}",
            "lower-case header",
        ),
    ],
)
def test_parse_authorization_malformed(value: str, fragment: str) -> None:
    with pytest.raises(SignatureError) as exc:
        parse_authorization(value)
    assert code_of(exc) == "SIGNATURE_MISMATCH"
    assert fragment in exc.value.message


def test_parse_authorization_long_garbage_is_truncated_in_message() -> None:
    with pytest.raises(SignatureError) as exc:
        parse_authorization("X" * 10_000)
    assert len(exc.value.message) < 200


@given(st.text(max_size=200))
@settings(max_examples=300, deadline=None)
def test_parse_authorization_never_crashes(value: str) -> None:
    try:
        auth = parse_authorization(value)
    except SignatureError as exc:
        assert exc.code in {"MISSING_AUTH", "SIGNATURE_MISMATCH"}
    else:
        assert len(auth.signature) == 64


# ---------------------------------------------------------------- canonical URI and query


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("", "/"),
        ("/", "/"),
        ("/v1/messages", "/v1/messages"),
        ("/v1/messages/", "/v1/messages/"),
        ("/a b", "/a%20b"),
        ("/a%20b", "/a%20b"),
        ("/a+b", "/a%2Bb"),
        ("/a%2Bb", "/a%2Bb"),
        ("/a%2bb", "/a%2Bb"),
        ("/~user", "/~user"),
        ("/%7Euser", "/~user"),
        ("/%7euser", "/~user"),
        ("/a-b_c.d", "/a-b_c.d"),
        ("/a%2Fb/c", "/a%2Fb/c"),
        ("/短信/发送", "/%E7%9F%AD%E4%BF%A1/%E5%8F%91%E9%80%81"),
        ("/%E7%9F%AD%E4%BF%A1", "/%E7%9F%AD%E4%BF%A1"),
        ("/%e7%9f%ad", "/%E7%9F%AD"),
        ("/a%zzb", "/a%25zzb"),
        ("/100%", "/100%25"),
        ("/a*b'c(d)!", "/a%2Ab%27c%28d%29%21"),
        ("/a:b@c;d=e,f", "/a%3Ab%40c%3Bd%3De%2Cf"),
        ("//double//", "//double//"),
        ("/%252F", "/%252F"),
        ("/%FF", "/%FF"),
    ],
)
def test_canonical_uri(path: str, expected: str) -> None:
    assert canonical_uri(path) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", ""),
        ("a=1", "a=1"),
        ("b=2&a=1", "a=1&b=2"),
        ("to=+8613800138000", "to=%2B8613800138000"),
        ("to=%2B8613800138000", "to=%2B8613800138000"),
        ("to=%2b8613800138000", "to=%2B8613800138000"),
        ("q=a+b", "q=a%2Bb"),
        ("q=a%20b", "q=a%20b"),
        ("q=a b", "q=a%20b"),
        ("q=~x", "q=~x"),
        ("q=%7Ex", "q=~x"),
        ("name", "name="),
        ("name=", "name="),
        ("b&a", "a=&b="),
        ("a=3&a=1&a=2", "a=1&a=2&a=3"),
        ("a=b&a=a&a=", "a=&a=a&a=b"),
        ("a=%E7%9F%AD", "a=%E7%9F%AD"),
        ("a=短", "a=%E7%9F%AD"),
        ("短=1", "%E7%9F%AD=1"),
        ("a=1=2", "a=1%3D2"),
        ("a=%3D", "a=%3D"),
        ("a%3Db=c", "a%3Db=c"),
        ("a=1&&b=2", "a=1&b=2"),
        ("a=1&", "a=1"),
        ("&", ""),
        ("=x", "=x"),
        ("a=%zz", "a=%25zz"),
        ("a=%", "a=%25"),
        ("a=%26&b=%3F", "a=%26&b=%3F"),
        ("B=1&a=1&_=1&-=1&~=1", "-=1&B=1&_=1&a=1&~=1"),
        ("ab=1&a=2", "a=2&ab=1"),
        ("a-b=1&a=2", "a=2&a-b=1"),
        ("date=2026-11-29&status=delivered&limit=50", "date=2026-11-29&limit=50&status=delivered"),
    ],
)
def test_canonical_query(raw: str, expected: str) -> None:
    assert canonical_query(raw) == expected


def test_canonical_query_sorts_by_encoded_name_then_encoded_value() -> None:
    # "%2B" (from "+") sorts before "A" and "a": encoded byte order, not decoded order.
    assert canonical_query("a=b&a=%2B&a=A") == "a=%2B&a=A&a=b"
    assert canonical_query("a=~&a=%7F") == "a=%7F&a=~"


def test_canonical_request_shape() -> None:
    got = canonical_request(
        "get",
        "/x y",
        "b=2&a=1",
        {"HOST": " h ", "X-Bridge-Date": "d"},
        ["x-bridge-date", "Host"],
        "hash",
    )
    assert got == "GET\n/x%20y\na=1&b=2\nhost:h\nx-bridge-date:d\n\nhost;x-bridge-date\nhash"


def test_canonical_request_repeated_header_joined() -> None:
    got = canonical_request("GET", "/", "", {"X-A": "1 ", "x-a": " 2"}, ["x-a"], "h")
    assert got == "GET\n/\n\nx-a:1,2\n\nx-a\nh"


def test_string_to_sign_shape() -> None:
    digest = hashlib.sha256(b"abc").hexdigest()
    assert string_to_sign("D", "abc") == f"BRIDGE-HMAC-SHA256\nD\n{digest}"
    assert string_to_sign("D", "短").endswith(hashlib.sha256("短".encode()).hexdigest())


# ---------------------------------------------------------------- sign_request details


def test_sign_request_replaces_stale_bridge_headers() -> None:
    stale = {
        **BASE_HEADERS,
        "x-bridge-date": "2020-01-01T00:00:00Z",
        "X-BRIDGE-NONCE": "old-nonce-000000000",
        "X-Bridge-Content-SHA256": "0" * 64,
    }
    added = sign_request(APP_KEY, SECRET, "POST", "/v1/messages", "", stale, BODY, NOW, NONCE)
    assert added["Authorization"].endswith(EXPECTED_SIGNATURE)


def test_sign_request_extra_signed() -> None:
    headers = {"Host": "h", "User-Agent": "sdk/1"}
    added = sign_request(
        APP_KEY,
        SECRET,
        "GET",
        "/v1/account",
        "",
        headers,
        b"",
        NOW,
        NONCE,
        extra_signed=["User-Agent"],
    )
    auth = parse_authorization(added["Authorization"])
    assert "user-agent" in auth.signed_headers
    full = {**headers, **added}
    server_verify(full, body=b"", method="GET", path="/v1/account")
    full["User-Agent"] = "sdk/2"
    with pytest.raises(SignatureError) as exc:
        server_verify(full, body=b"", method="GET", path="/v1/account")
    assert code_of(exc) == "SIGNATURE_MISMATCH"


def test_sign_request_extra_signed_absent_is_refused() -> None:
    with pytest.raises(SignatureError) as exc:
        sign_request(
            APP_KEY, SECRET, "GET", "/", "", {"Host": "h"}, b"", NOW, NONCE, extra_signed=["x-a"]
        )
    assert "'x-a'" in exc.value.message


def test_sign_request_needs_host() -> None:
    with pytest.raises(SignatureError) as exc:
        sign_request(APP_KEY, SECRET, "GET", "/", "", {}, b"", NOW, NONCE)
    assert "'host'" in exc.value.message


@pytest.mark.parametrize("nonce", ["short", "x" * 65, "has space 0123456789", "é" * 20])
def test_sign_request_rejects_bad_nonce(nonce: str) -> None:
    with pytest.raises(ValueError, match="nonce"):
        sign_request(APP_KEY, SECRET, "GET", "/", "", {"Host": "h"}, b"", NOW, nonce)


@pytest.mark.parametrize("key", ["", "has space", "a,b", "a=b", "k" * 129])
def test_sign_request_rejects_bad_app_key(key: str) -> None:
    with pytest.raises(ValueError, match="app_key"):
        sign_request(key, SECRET, "GET", "/", "", {"Host": "h"}, b"", NOW, NONCE)


def test_sign_request_date_whole_seconds_utc() -> None:
    from datetime import timezone

    local = datetime(2026, 11, 29, 16, 0, 0, 987_654, tzinfo=timezone(timedelta(hours=8)))
    added = sign_request(
        APP_KEY, SECRET, "POST", "/v1/messages", "", BASE_HEADERS, BODY, local, NONCE
    )
    assert added["X-Bridge-Date"] == "2026-11-29T08:00:00Z"
    assert added["Authorization"].endswith(EXPECTED_SIGNATURE)


def test_sign_request_does_not_mutate_input() -> None:
    headers = dict(BASE_HEADERS)
    sign_request(APP_KEY, SECRET, "POST", "/v1/messages", "", headers, BODY, NOW, NONCE)
    assert headers == BASE_HEADERS


def test_signature_error_is_typed() -> None:
    err = SignatureError("SIGNATURE_MISMATCH", "header 'host' ...")
    assert isinstance(err, Exception)
    assert err.code == "SIGNATURE_MISMATCH"
    assert err.message == "header 'host' ..."
    assert "SIGNATURE_MISMATCH" in str(err)


def test_verify_accepts_mapping_types() -> None:
    from types import MappingProxyType

    headers = signed_example()
    auth = parse_authorization(headers["Authorization"])
    verify_signature(SECRET, "POST", "/v1/messages", "", MappingProxyType(headers), BODY, auth)
    verify_signature(SECRET.encode(), "POST", "/v1/messages", "", headers, BODY, auth)


def test_public_api() -> None:
    for name in signing.__all__:
        assert hasattr(signing, name), name


# ---------------------------------------------------------------- webhooks

WH_SECRET = "whsec-test"
WH_BODY = b'{"message_id":"m1","status":"delivered"}'
T0 = 1_795_939_200


def test_webhook_signature_value() -> None:
    expected = hmac.new(WH_SECRET.encode(), f"{T0}.".encode() + WH_BODY, hashlib.sha256).hexdigest()
    assert webhook_signature(WH_SECRET, WH_BODY, T0) == f"t={T0},v1={expected}"
    assert webhook_signature(WH_SECRET.encode(), WH_BODY, T0) == f"t={T0},v1={expected}"


@pytest.mark.parametrize(
    ("delta", "ok"), [(0, True), (300, True), (-300, True), (301, False), (-301, False)]
)
def test_webhook_tolerance(delta: int, ok: bool) -> None:
    header = webhook_signature(WH_SECRET, WH_BODY, T0)
    assert verify_webhook_signature(WH_SECRET, WH_BODY, header, now=T0 + delta) is ok


def test_webhook_tolerance_configurable() -> None:
    header = webhook_signature(WH_SECRET, WH_BODY, T0)
    assert verify_webhook_signature(WH_SECRET, WH_BODY, header, now=T0 + 30, tolerance_s=30)
    assert not verify_webhook_signature(WH_SECRET, WH_BODY, header, now=T0 + 31, tolerance_s=30)


def test_webhook_wrong_secret_or_body() -> None:
    header = webhook_signature(WH_SECRET, WH_BODY, T0)
    assert not verify_webhook_signature("other", WH_BODY, header, now=T0)
    assert not verify_webhook_signature(WH_SECRET, WH_BODY + b" ", header, now=T0)


def test_webhook_time_is_signed() -> None:
    header = webhook_signature(WH_SECRET, WH_BODY, T0)
    moved = header.replace(f"t={T0}", f"t={T0 + 100}")
    assert not verify_webhook_signature(WH_SECRET, WH_BODY, moved, now=T0 + 100)


def test_webhook_rotation_and_unknown_parts() -> None:
    old = webhook_signature("old-secret", WH_BODY, T0).split(",")[1]
    new = webhook_signature(WH_SECRET, WH_BODY, T0).split(",")[1]
    assert verify_webhook_signature(WH_SECRET, WH_BODY, f"t={T0},{old},{new}", now=T0)
    assert verify_webhook_signature(WH_SECRET, WH_BODY, f"t={T0},{new},{old}", now=T0)
    assert verify_webhook_signature(WH_SECRET, WH_BODY, f"{new}, t={T0}, v2=zz", now=T0)
    assert not verify_webhook_signature(WH_SECRET, WH_BODY, f"t={T0},{old}", now=T0)


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        f"t={T0}",
        "v1=" + "0" * 64,
        f"t={T0},v1=",
        f"t=abc,v1={'0' * 64}",
        f"t=-{T0},v1={'0' * 64}",
        f"t={T0},t={T0},v1={'0' * 64}",
        f"t={T0};v1={'0' * 64}",
        f"t={'9' * 5000},v1={'0' * 64}",
        f"t=１２,v1={'0' * 64}",
    ],
)
def test_webhook_malformed_is_false(header: str) -> None:
    assert verify_webhook_signature(WH_SECRET, WH_BODY, header, now=T0) is False


def test_webhook_duplicate_t_refused_even_if_valid() -> None:
    header = webhook_signature(WH_SECRET, WH_BODY, T0)
    assert not verify_webhook_signature(WH_SECRET, WH_BODY, f"t={T0},{header}", now=T0)


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=2**40), st.text(min_size=1))
@settings(max_examples=100, deadline=None)
def test_webhook_roundtrip(body: bytes, t: int, secret: str) -> None:
    header = webhook_signature(secret, body, t)
    assert verify_webhook_signature(secret, body, header, now=t)
    assert not verify_webhook_signature(secret, body + b"x", header, now=t)


# ---------------------------------------------------------------- independent implementation
# Written from the text of issue 4 and signing-notes.md; it must not call bridge.api.signing.

_UNRESERVED = set((string.ascii_letters + string.digits + "-_.~").encode())
_HEXDIGITS = set(b"0123456789abcdefABCDEF")


def ind_pct_decode(text: str) -> bytes:
    """Percent-decode once; "+" stays "+"; a "%" not followed by two hex digits stays literal."""
    raw = text.encode("utf-8")
    out = bytearray()
    i = 0
    while i < len(raw):
        escape = raw[i + 1 : i + 3]
        if raw[i] == 0x25 and len(escape) == 2 and all(b in _HEXDIGITS for b in escape):
            out.append(int(escape, 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def ind_encode(data: bytes) -> str:
    return "".join(chr(b) if b in _UNRESERVED else f"%{b:02X}" for b in data)


def ind_uri(path: str) -> str:
    if path == "":
        return "/"
    return "/".join(ind_encode(ind_pct_decode(seg)) for seg in path.split("/"))


def ind_query(raw: str) -> str:
    pairs = []
    for item in raw.split("&") if raw else []:
        if item == "":
            continue
        if "=" in item:
            idx = item.index("=")
            name, value = item[:idx], item[idx + 1 :]
        else:
            name, value = item, ""
        pairs.append((ind_encode(ind_pct_decode(name)), ind_encode(ind_pct_decode(value))))
    pairs.sort(key=lambda p: (p[0], p[1]))
    return "&".join(n + "=" + v for n, v in pairs)


def ind_sign(
    app_key: str,
    secret: str,
    method: str,
    path: str,
    query: str,
    headers: dict[str, str],
    body: bytes,
    date: str,
    nonce: str,
    extra: list[str],
) -> dict[str, str]:
    content = hashlib.sha256(body).hexdigest()
    hdrs = {k.lower(): v.strip() for k, v in headers.items()}
    hdrs["x-bridge-date"] = date
    hdrs["x-bridge-nonce"] = nonce
    hdrs["x-bridge-content-sha256"] = content
    names = {"host", "x-bridge-date", "x-bridge-nonce", "x-bridge-content-sha256"}
    for optional in ("content-type", "idempotency-key"):
        if optional in hdrs:
            names.add(optional)
    names |= {e.lower() for e in extra}
    ordered = sorted(names)
    canonical_headers = "".join(f"{n}:{hdrs[n]}\n" for n in ordered)
    canonical = (
        method
        + "\n"
        + ind_uri(path)
        + "\n"
        + ind_query(query)
        + "\n"
        + canonical_headers
        + "\n"
        + ";".join(ordered)
        + "\n"
        + content
    )
    sts = (
        "BRIDGE-HMAC-SHA256\n" + date + "\n" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    )
    sig = hmac.new(secret.encode("utf-8"), sts.encode("utf-8"), hashlib.sha256).hexdigest()
    return {
        "X-Bridge-Date": date,
        "X-Bridge-Nonce": nonce,
        "X-Bridge-Content-SHA256": content,
        "Authorization": "BRIDGE-HMAC-SHA256 Credential="
        + app_key
        + ",SignedHeaders="
        + ";".join(ordered)
        + ",Signature="
        + sig,
    }


def test_independent_implementation_on_the_worked_example() -> None:
    ind = ind_sign(
        APP_KEY,
        SECRET,
        "POST",
        "/v1/messages",
        "",
        BASE_HEADERS,
        BODY,
        "2026-11-29T08:00:00Z",
        NONCE,
        [],
    )
    assert ind == sign_request(
        APP_KEY, SECRET, "POST", "/v1/messages", "", BASE_HEADERS, BODY, NOW, NONCE
    )
    server_verify({**BASE_HEADERS, **ind})


_URL_ALPHABET = st.sampled_from(
    [
        *(string.ascii_letters + string.digits + "-_.~+%= !*'();:@,$/?#[]&\"<>^`{|}\\"),
        "%2B",
        "%2b",
        "%20",
        "%7E",
        "%7e",
        "%E7%9F%AD",
        "%zz",
        "%F",
        "短",
        "é",
        "😀",
        "%00",
    ]
)
_segment = st.lists(_URL_ALPHABET, max_size=8).map("".join)
_path = st.one_of(
    st.just(""),
    st.lists(
        _segment.map(lambda s: s.replace("/", "").replace("?", "").replace("#", "")), max_size=5
    ).map(lambda segs: "/" + "/".join(segs)),
)
_query = st.lists(_URL_ALPHABET, max_size=30).map("".join).map(lambda q: q.replace("#", ""))
_header_value = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from(["\t", "é"]),
    max_size=30,
)
_extra_names = st.lists(
    st.sampled_from(["x-custom", "user-agent", "accept", "x-request-id", "x-a_b"]),
    max_size=3,
    unique=True,
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, object]:
    headers: dict[str, str] = {
        "Host": draw(st.sampled_from(["127.0.0.1:8080", "api.example", "[::1]:9000"]))
    }
    if draw(st.booleans()):
        headers["Content-Type"] = draw(
            st.sampled_from(["application/json", " application/json; charset=utf-8 "])
        )
    if draw(st.booleans()):
        headers["idempotency-KEY"] = draw(_header_value)
    extra = draw(_extra_names)
    for name in extra:
        cased = draw(st.sampled_from([name, name.upper(), name.title()]))
        headers[cased] = draw(_header_value)
    unsigned = draw(st.booleans())
    if unsigned:
        headers["X-Unsigned"] = draw(_header_value)
    signed_extra = draw(st.lists(st.sampled_from(extra), unique=True)) if extra else []
    return {
        "method": draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"])),
        "path": draw(_path),
        "query": draw(_query),
        "headers": headers,
        "body": draw(st.binary(max_size=200)),
        "now": draw(
            st.datetimes(
                min_value=datetime(2000, 1, 1),
                max_value=datetime(2099, 1, 1),
                timezones=st.just(UTC),
            )
        ),
        "nonce": draw(st.from_regex(r"\A[A-Za-z0-9_-]{16,64}\Z")),
        "secret": draw(st.text(min_size=1, max_size=64)),
        "app_key": draw(st.from_regex(r"\A[A-Za-z0-9._~-]{1,40}\Z")),
        "extra": signed_extra,
    }


@given(requests())
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_independent_implementation_agrees(req: dict[str, object]) -> None:
    headers = req["headers"]
    assert isinstance(headers, dict)
    now = req["now"]
    assert isinstance(now, datetime)
    ours = sign_request(
        req["app_key"],
        req["secret"],
        req["method"],
        req["path"],
        req["query"],  # type: ignore[arg-type]
        headers,
        req["body"],
        now,
        req["nonce"],
        extra_signed=req["extra"],  # type: ignore[arg-type]
    )
    theirs = ind_sign(
        req["app_key"],
        req["secret"],
        req["method"],
        req["path"],
        req["query"],  # type: ignore[arg-type]
        headers,
        req["body"],
        now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        req["nonce"],  # type: ignore[arg-type]
        req["extra"],  # type: ignore[arg-type]
    )
    assert ours == theirs
    # The server accepts a request signed by the independent implementation.
    server_verify(
        {**headers, **theirs},
        body=req["body"],
        secret=req["secret"],
        method=req["method"],  # type: ignore[arg-type]
        path=req["path"],
        query=req["query"],
        now=now,  # type: ignore[arg-type]
    )


@given(_path)
@settings(max_examples=300, deadline=None)
def test_canonical_uri_matches_independent_and_is_idempotent(path: str) -> None:
    got = canonical_uri(path)
    assert got == ind_uri(path)
    assert canonical_uri(got) == got
    assert re.fullmatch(r"[A-Za-z0-9\-_.~%/]*", got)


@given(_query)
@settings(max_examples=300, deadline=None)
def test_canonical_query_matches_independent_and_is_idempotent(raw: str) -> None:
    got = canonical_query(raw)
    assert got == ind_query(raw)
    assert canonical_query(got) == got


@given(st.binary(min_size=1, max_size=100), st.data())
@settings(max_examples=100, deadline=None)
def test_any_body_change_is_caught(body: bytes, data: st.DataObject) -> None:
    headers = signed_example(body=body)
    index = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
    changed = bytearray(body)
    changed[index] ^= data.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises(SignatureError) as exc:
        server_verify(headers, body=bytes(changed))
    assert exc.value.code == "BODY_HASH_MISMATCH"


def test_sign_is_the_plain_hmac_for_each_key_in_turn() -> None:
    """`sign` reuses each key's keyed state: keys used in turn, as str and as bytes, each sign
    as a fresh HMAC-SHA256 would, and one key's state never leaks into another's."""
    keys = ["k-one-0123456789", "k-two-0123456789", b"k-three-bytes", "k-one-0123456789"]
    for i, key in enumerate(keys * 3):
        text = f"{ALGORITHM}\n2026-11-29T08:00:0{i % 10}Z\n{'ab' * 32}"
        raw = key.encode() if isinstance(key, str) else key
        assert sign(key, text) == hmac.new(raw, text.encode(), hashlib.sha256).hexdigest()


def test_signed_header_not_utf8_is_refused_by_name() -> None:
    """A signed header with bytes that are not UTF-8 (surrogates as aiohttp decodes them) is
    refused naming it; one with UTF-8 beyond ASCII verifies."""
    headers = signed_example()
    headers["Idempotency-Key"] = "order-\udcff"  # checked before the signature
    auth = parse_authorization(headers["Authorization"])
    with pytest.raises(SignatureError) as exc:
        verify_signature(SECRET, "POST", "/v1/messages", "", headers, BODY, auth)
    assert code_of(exc) == "SIGNATURE_MISMATCH"
    assert exc.value.message == "header 'idempotency-key' is not valid UTF-8"
    headers = signed_example(headers={**BASE_HEADERS, "Idempotency-Key": "order-é"})
    auth = parse_authorization(headers["Authorization"])
    verify_signature(SECRET, "POST", "/v1/messages", "", headers, BODY, auth)


def test_the_cached_signed_headers_list_still_refuses_a_reordered_or_repeated_one() -> None:
    # parse_authorization keeps the SignedHeaders lists it has checked (per text): the same
    # names in another order, or repeated, are other texts and still refused, however often
    # the good list was seen first.
    sig = "0" * 64
    good = f"BRIDGE-HMAC-SHA256 Credential=ak_1,SignedHeaders=host;x-bridge-date,Signature={sig}"
    for _ in range(2):
        assert signing.parse_authorization(good).signed_headers == ("host", "x-bridge-date")
    for names in ("x-bridge-date;host", "host;host;x-bridge-date"):
        bad = good.replace("host;x-bridge-date", names)
        for _ in range(2):
            with pytest.raises(signing.SignatureError, match="sorted and without repeats"):
                signing.parse_authorization(bad)


def test_a_signed_headers_list_checked_again_answers_each_request_by_its_own_headers() -> None:
    # Session 51: what check_signed_headers asks of the list alone is kept per list
    # (_signed_plan); what the request sent is asked each time, and the refusals name the same
    # header, in the same order of checks, as before.
    names = ("content-type", "host", "x-bridge-content-sha256", "x-bridge-date", "x-bridge-nonce")
    auth = AuthHeader("AK_1", names, GOOD_SIG)
    sent = {n: "v" for n in names}
    signing._signed_plan.cache_clear()
    check_signed_headers(auth, sent)
    with pytest.raises(SignatureError) as exc:
        check_signed_headers(auth, {**sent, "idempotency-key": "k"})
    assert exc.value.message == "header 'idempotency-key' is sent and must be in SignedHeaders"
    without = {n: v for n, v in sent.items() if n not in ("content-type", "x-bridge-date")}
    with pytest.raises(SignatureError) as exc:
        check_signed_headers(auth, without)
    assert exc.value.message == (
        "header 'content-type' is in SignedHeaders but absent from the request"
    )
    assert signing._signed_plan.cache_info().hits == 2
    short = AuthHeader("AK_1", ("host", "x-bridge-date", "x-bridge-nonce"), GOOD_SIG)
    with pytest.raises(SignatureError) as exc:  # a required name unsigned comes first
        check_signed_headers(short, {"content-type": "v"})
    assert exc.value.message == "SignedHeaders must include 'x-bridge-content-sha256'"
