"""Alibaba Cloud signature verification (bridge.compat.aliyun_sign) against an independent signer.

The reference signers below are written from Alibaba's public algorithm descriptions ("RPC
signature", "V3 request structure and signature") and share no code with bridge.compat: their
encoder works byte by byte on the unreserved set. The worked examples are Alibaba's own published
vectors (ECS DescribeRegions and DescribeDedicatedHosts for RPC v1, Dysmsapi SendSms with a Chinese
sign name, ECS RunInstances for ACS3).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote, urlencode

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.compat.aliyun_canon import (
    EMPTY_SHA256,
    SM3_AVAILABLE,
    acs3_canonical_headers,
    acs3_canonical_query,
    acs3_canonical_request,
    acs3_signature,
    acs3_string_to_sign,
    form_decode,
    percent_encode,
    rpc_v1_signature,
    rpc_v1_string_to_sign,
)
from bridge.compat.aliyun_errors import (
    SERVER_STRING_TO_SIGN,
    AliyunAuthError,
    framework_error,
    protocol_error,
)
from bridge.compat.aliyun_sign import (
    DEFAULT_MAX_SKEW_S,
    check_timestamp,
    parse_request,
    parse_timestamp,
)

SECRET = "s3cret-Key/with+odd&chars"
AK = "LTAI-test-key"
TS = "2026-11-29T15:54:47Z"
TS_UNIX = 1795967687  # datetime(2026, 11, 29, 15, 54, 47, tzinfo=UTC).timestamp()
FORM = "application/x-www-form-urlencoded"

# --- independent reference, from the public description --------------------------------------

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")


def ref_encode(text: str) -> str:
    return "".join(
        chr(byte) if byte in _UNRESERVED else f"%{byte:02X}" for byte in text.encode("utf-8")
    )


def ref_rpc(method: str, pairs: list[tuple[str, str]], secret: str) -> tuple[str, str]:
    encoded = sorted((ref_encode(k), ref_encode(v)) for k, v in pairs if k != "Signature")
    canonical = "&".join(f"{k}={v}" for k, v in encoded)
    string_to_sign = f"{method}&{ref_encode('/')}&{ref_encode(canonical)}"
    mac = hmac.new(f"{secret}&".encode(), string_to_sign.encode(), hashlib.sha1).digest()
    return string_to_sign, base64.b64encode(mac).decode()


def ref_acs3(
    method: str,
    path_segments: list[str],
    query: list[tuple[str, str]],
    headers: dict[str, str],
    body: bytes,
    secret: str,
) -> tuple[str, str, dict[str, str]]:
    """Returns (canonical request, signature, headers to send incl. Authorization)."""
    payload = hashlib.sha256(body).hexdigest()
    signed = {k.lower(): v for k, v in headers.items()} | {"x-acs-content-sha256": payload}
    names = sorted(signed)
    canonical = "\n".join(
        [
            method,
            "/" + "/".join(ref_encode(s) for s in path_segments),
            "&".join(
                f"{k}={v}" for k, v in sorted((ref_encode(k), ref_encode(v)) for k, v in query)
            ),
            "".join(f"{n}:{signed[n].strip()}\n" for n in names),
            ";".join(names),
            payload,
        ]
    )
    string_to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
    signature = hmac.new(secret.encode(), string_to_sign.encode(), hashlib.sha256).hexdigest()
    auth = f"ACS3-HMAC-SHA256 Credential={AK},SignedHeaders={';'.join(names)},Signature={signature}"
    return canonical, signature, signed | {"Authorization": auth}


# Three wire spellings of the same parameters, as the SDKs send them.
def wire(pairs: list[tuple[str, str]], style: str) -> str:
    if style == "python":  # quote_plus: space "+", "*" "%2A"
        return urlencode(pairs)
    if style == "node":  # encodeURIComponent: space "%20", ! ' ( ) * bare
        return "&".join(f"{quote(k, safe='!()*~')}={quote(v, safe='!()*~')}" for k, v in pairs)
    return "&".join(f"{ref_encode(k)}={ref_encode(v)}" for k, v in pairs)


def rpc_auth(action: str = "SendSms", **extra: str) -> list[tuple[str, str]]:
    base = {
        "AccessKeyId": AK,
        "Action": action,
        "Format": "JSON",
        "RegionId": "cn-hangzhou",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": "nonce-0001",
        "SignatureType": "",
        "SignatureVersion": "1.0",
        "Timestamp": TS,
        "Version": "2017-05-25",
    }
    base.update(extra)
    return [(k, v) for k, v in base.items() if v is not None]


def rpc_request(
    pairs: list[tuple[str, str]], *, method: str = "POST", style: str = "legacy", secret=SECRET
):
    _, signature = ref_rpc(method, pairs, secret)
    return parse_request(
        method, "/", wire([*pairs, ("Signature", signature)], style), {}, b"", None
    )


def acs3_headers(**extra: str) -> dict[str, str]:
    headers = {
        "host": "127.0.0.1:8080",
        "x-acs-action": "SendSms",
        "x-acs-version": "2017-05-25",
        "x-acs-date": TS,
        "x-acs-signature-nonce": "f1e2d3c4b5a6",
        "user-agent": "AlibabaCloud (Linux; x86_64) Python/3.11  TeaDSL/2",
        "accept": "application/json",
    }
    headers.update(extra)
    return headers


def refusal(code: str, status: int, fn, *args, **kwargs) -> AliyunAuthError:
    with pytest.raises(AliyunAuthError) as info:
        fn(*args, **kwargs)
    assert (info.value.code, info.value.http_status) == (code, status), info.value
    return info.value


# --- Alibaba's published worked examples --------------------------------------------------------

DESCRIBE_REGIONS = [
    ("AccessKeyId", "testid"),
    ("Action", "DescribeRegions"),
    ("Format", "XML"),
    ("SignatureMethod", "HMAC-SHA1"),
    ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
    ("SignatureVersion", "1.0"),
    ("Timestamp", "2016-02-23T12:46:24Z"),
    ("Version", "2014-05-26"),
]
DESCRIBE_REGIONS_STS = (
    "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML"
    "%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"
    "%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26"
)
DEDICATED_HOSTS = [
    ("AccessKeyId", "testid"),
    ("Action", "DescribeDedicatedHosts"),
    ("Format", "JSON"),
    ("RegionId", "cn-beijing"),
    ("SignatureMethod", "HMAC-SHA1"),
    ("SignatureNonce", "edb2b34af0af9a6d14deaf7c1a5315eb"),
    ("SignatureVersion", "1.0"),
    ("Timestamp", "2023-03-13T08:34:30Z"),
    ("Version", "2014-05-26"),
]
SEND_SMS_DOC = [
    ("AccessKeyId", "testId"),
    ("Action", "SendSms"),
    ("Format", "XML"),
    ("OutId", "123"),
    ("PhoneNumbers", "15300000001"),
    ("RegionId", "cn-hangzhou"),
    ("SignName", "阿里云短信测试专用"),
    ("SignatureMethod", "HMAC-SHA1"),
    ("SignatureNonce", "45e25e9b-0a6f-4070-8c85-2956eda1b466"),
    ("SignatureVersion", "1.0"),
    ("TemplateCode", "SMS_71390007"),
    ("TemplateParam", '{"customer":"test"}'),
    ("Timestamp", "2017-07-12T02:42:19Z"),
    ("Version", "2017-05-25"),
]


def test_rpc_describe_regions_published_vector() -> None:
    assert rpc_v1_string_to_sign("GET", DESCRIBE_REGIONS) == DESCRIBE_REGIONS_STS
    assert rpc_v1_signature(DESCRIBE_REGIONS_STS, "testsecret") == "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
    assert ref_rpc("GET", DESCRIBE_REGIONS, "testsecret") == (
        DESCRIBE_REGIONS_STS,
        "OLeaidS1JvxuMvnyHOwuJ+uX5qY=",
    )


def test_rpc_dedicated_hosts_published_vector() -> None:
    sts = rpc_v1_string_to_sign("GET", DEDICATED_HOSTS)
    assert rpc_v1_signature(sts, "testsecret") == "9NaGiOspFP5UPcwX8Iwt2YJXXuk="


def test_rpc_send_sms_published_vector_through_parse_request() -> None:
    query = wire([*SEND_SMS_DOC, ("Signature", "zJDF+Lrzhj/ThnlvIToysFRq6t4=")], "python")
    call = parse_request("GET", "/", query, {"Host": "dysmsapi.aliyuncs.com"}, b"", None)
    call.verify("testSecret")
    assert (call.scheme, call.action, call.format, call.access_key_id) == (
        "rpc_v1",
        "SendSms",
        "XML",
        "testId",
    )
    assert call.timestamp == parse_timestamp("2017-07-12T02:42:19Z") == 1499827339
    assert call.params["SignName"] == "阿里云短信测试专用"
    assert "Signature" not in call.params and "AccessKeyId" not in call.params


RUN_INSTANCES_HEADERS = {
    "host": ["ecs.cn-shanghai.aliyuncs.com"],
    "x-acs-action": ["RunInstances"],
    "x-acs-content-sha256": [EMPTY_SHA256],
    "x-acs-date": ["2023-10-26T10:22:32Z"],
    "x-acs-signature-nonce": ["3156853299f313e23d1673dc12e1703d"],
    "x-acs-version": ["2014-05-26"],
}
RUN_INSTANCES_SIGNED = (
    "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version"
)


def test_acs3_run_instances_published_vector() -> None:
    query = [
        ("ImageId", "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd"),
        ("RegionId", "cn-shanghai"),
    ]
    canonical = acs3_canonical_request(
        "POST",
        "/",
        acs3_canonical_query(query),
        acs3_canonical_headers(RUN_INSTANCES_HEADERS, RUN_INSTANCES_SIGNED.split(";")),
        RUN_INSTANCES_SIGNED,
        EMPTY_SHA256,
    )
    sts = acs3_string_to_sign("ACS3-HMAC-SHA256", canonical)
    assert (
        sts == "ACS3-HMAC-SHA256\n7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
    )
    published = "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
    assert acs3_signature(sts, "YourAccessKeySecret") == published
    assert hashlib.sha256(b"").hexdigest() == EMPTY_SHA256
    # Through the parser the same call is well signed but for another API version.
    headers = {k: v[0] for k, v in RUN_INSTANCES_HEADERS.items()}
    headers["Authorization"] = (
        f"ACS3-HMAC-SHA256 Credential=YourAccessKeyId,SignedHeaders={RUN_INSTANCES_SIGNED},"
        f"Signature={published}"
    )
    raw_query = "ImageId=win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd&RegionId=cn-shanghai"
    refusal("InvalidVersion", 400, parse_request, "POST", "/", raw_query, headers, b"", None)


# --- encoding and decoding ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        (" ", "%20"),
        ("*", "%2A"),
        ("~", "~"),
        ("/", "%2F"),
        ("+", "%2B"),
        ("-_.", "-_."),
        ("中", "%E4%B8%AD"),
        ("😀", "%F0%9F%98%80"),
        ("a=b&c", "a%3Db%26c"),
    ],
)
def test_percent_encode(text: str, encoded: str) -> None:
    assert percent_encode(text) == encoded == ref_encode(text)


def test_form_decode_keeps_blanks_repeats_and_plus_as_space() -> None:
    assert form_decode("SignatureType=&a=1+2&a=%2B&b&&c=%E4%B8%AD*~") == [
        ("SignatureType", ""),
        ("a", "1 2"),
        ("a", "+"),
        ("b", ""),
        ("c", "中*~"),
    ]


@pytest.mark.parametrize("raw", ["a=%zz", "a=%4", "a=%FF", "%C3=1", "a=%ED%A0%80"])
def test_form_decode_refuses_malformed_encoding(raw: str) -> None:
    refusal("RequestParameterMalformed", 400, form_decode, raw)


# --- hypothesis: our verifier accepts whatever the independent signer signs ----------------------

_NAMES = st.sampled_from(
    ["PhoneNumbers", "SignName", "TemplateCode", "TemplateParam", "OutId", "a", "Z_9", "x.y", "k~"]
)
_VALUES = st.one_of(
    st.sampled_from(["", " ", "+", "*", "~", "a b+c*d~e", "1 + 1 = 2", '{"code":"12 34"}', "中文"]),
    # U+0000 is refused before the signature is checked (no PostgreSQL text column holds it).
    st.text(
        alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=24
    ),
)
_PARAMS = st.lists(st.tuples(_NAMES, _VALUES), max_size=8)


@settings(max_examples=150, deadline=None)
@given(
    params=_PARAMS,
    style=st.sampled_from(["python", "node", "legacy"]),
    split=st.integers(min_value=0, max_value=20),
    method=st.sampled_from(["GET", "POST"]),
)
def test_rpc_v1_verifies_independent_signatures(params, style, split, method) -> None:
    pairs = rpc_auth() + params
    expected_sts, signature = ref_rpc(method, pairs, SECRET)
    signed = [*pairs, ("Signature", signature)]
    split = min(split, len(signed))
    query, form = signed[:split], signed[split:]
    body = wire(form, style).encode() if form else b""
    call = parse_request(method, "/", wire(query, style), {}, body, FORM if body else None)
    assert call.string_to_sign == expected_sts
    call.verify(SECRET)
    error = refusal("SignatureDoesNotMatch", 400, call.verify, SECRET + "x")
    assert error.message.endswith(SERVER_STRING_TO_SIGN + expected_sts)
    assert dict(call.params) == {k: v for k, v in params} | {"RegionId": "cn-hangzhou"}


@settings(max_examples=150, deadline=None)
@given(
    query=_PARAMS,
    form=_PARAMS,
    path=st.sampled_from([[""], ["sms", "v 1"], ["a*b", "中"]]),
    agent=st.sampled_from(["  padded value  ", "AlibabaCloud Python/3.11 TeaDSL/2", ""]),
)
def test_acs3_verifies_independent_signatures(query, form, path, agent) -> None:
    body = urlencode(form).encode()
    headers = acs3_headers(**{"user-agent": agent})
    if body:
        headers["content-type"] = FORM
    canonical, _, sent = ref_acs3("POST", path, query, headers, body, SECRET)
    raw_path = "/" + "/".join(quote(s, safe="") for s in path)
    call = parse_request(
        "POST", raw_path, urlencode(query), sent, body, headers.get("content-type")
    )
    assert call.canonical_request == canonical
    call.verify(SECRET)
    refusal("SignatureDoesNotMatch", 400, call.verify, "other")
    assert (call.scheme, call.action, call.version, call.nonce, call.timestamp) == (
        "acs3",
        "SendSms",
        "2017-05-25",
        "f1e2d3c4b5a6",
        TS_UNIX,
    )
    assert dict(call.params) == {k: v for k, v in query + form}


def test_acs3_signed_headers_order_and_multivalues_are_taken_as_sent() -> None:
    class Multi(dict):
        def items(self):  # a multidict yields every repeated header
            yield from super().items()
            yield ("X-Acs-Extra", " b ")

    headers = acs3_headers(**{"x-acs-extra": "a"})
    _, _, sent = ref_acs3("POST", [""], [], headers, b"", SECRET)
    multi = Multi({k: v for k, v in sent.items() if k != "x-acs-extra"} | {"x-acs-extra": "a"})
    call = parse_request("POST", "/", "", multi, b"", None)
    assert "\nx-acs-extra:a,b\n" in call.canonical_request


# --- refusals, each code with its HTTP status ---------------------------------------------------


def test_rpc_v1_missing_fields_are_named() -> None:
    for name in ("AccessKeyId", "SignatureMethod", "SignatureNonce", "Timestamp", "Action"):
        pairs = [p for p in rpc_auth() if p[0] != name]
        error = refusal(f"Missing{name}", 400, rpc_request, pairs)
        assert error.message == f"{name} is mandatory for this action."
    refusal("MissingSignature", 400, parse_request, "POST", "/", "Action=SendSms", {}, b"", None)
    refusal("MissingVersion", 400, rpc_request, [p for p in rpc_auth() if p[0] != "Version"])


def test_rpc_v1_blank_nonce_counts_as_missing() -> None:
    refusal("MissingSignatureNonce", 400, rpc_request, rpc_auth(SignatureNonce=""))


def test_rpc_v1_signature_method_and_version() -> None:
    refusal("InvalidSignatureMethod", 400, rpc_request, rpc_auth(SignatureMethod="HMAC-SHA256"))
    refusal("InvalidSignatureMethod", 400, rpc_request, rpc_auth(SignatureVersion="2.0"))
    rpc_request([p for p in rpc_auth() if p[0] != "SignatureVersion"]).verify(SECRET)


def test_invalid_version_format_and_long_nonce() -> None:
    refusal("InvalidVersion", 400, rpc_request, rpc_auth(Version="2014-05-26"))
    refusal("InvalidParameter.Format", 400, rpc_request, rpc_auth(Format="YAML"))
    assert rpc_request(rpc_auth(Format="xml")).format == "XML"
    assert rpc_request([p for p in rpc_auth() if p[0] != "Format"]).format == "JSON"
    refusal("InvalidParameter", 400, rpc_request, rpc_auth(SignatureNonce="n" * 257))
    assert rpc_request(rpc_auth(SignatureNonce="n" * 256)).nonce == "n" * 256


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-29T15:54:47.123Z",
        "2026-11-29T15:54:47+08:00",
        "2026-11-29 15:54:47Z",
        "2026-02-30T00:00:00Z",
        "2026-11-29T24:00:00Z",
        "1796054087",
        "",
    ],
)
def test_timestamp_format_refused(value: str) -> None:
    refusal("InvalidTimeStamp.Format", 400, parse_timestamp, value)


def test_timestamp_format_refused_through_both_schemes() -> None:
    refusal("InvalidTimeStamp.Format", 400, rpc_request, rpc_auth(Timestamp="2026-11-29T15:54Z"))
    _, _, sent = ref_acs3(
        "POST", [""], [], acs3_headers(**{"x-acs-date": "yesterday"}), b"", SECRET
    )
    refusal("InvalidTimeStamp.Format", 400, parse_request, "POST", "/", "", sent, b"", None)


def test_check_timestamp_boundaries() -> None:
    check_timestamp(TS_UNIX, TS_UNIX + DEFAULT_MAX_SKEW_S)
    check_timestamp(TS_UNIX, TS_UNIX - DEFAULT_MAX_SKEW_S)
    check_timestamp(TS_UNIX, TS_UNIX + 30.9, max_skew_s=31)
    refusal("InvalidTimeStamp.Expired", 400, check_timestamp, TS_UNIX, TS_UNIX + 901)
    refusal("InvalidTimeStamp.Expired", 400, check_timestamp, TS_UNIX, TS_UNIX - 901)
    refusal("InvalidTimeStamp.Expired", 400, check_timestamp, TS_UNIX, TS_UNIX + 31.5, 31)


def test_caller_side_refusals_have_alibaba_statuses() -> None:
    # Raised by the handler (key lookup, nonce store), built here so the statuses live in one place.
    assert (protocol_error("InvalidAccessKeyId.NotFound").http_status,) == (404,)
    assert protocol_error("SignatureNonceUsed").http_status == 400
    assert protocol_error("SignatureNonceUsed").message == (
        "Specified signature nonce was used already."
    )
    assert protocol_error("InvalidAction.NotFound", "No such action Foo.").http_status == 404
    unknown = protocol_error("Made.Up")
    assert (unknown.code, unknown.http_status) == ("Made.Up", 400)


def test_framework_errors_speak_alibaba() -> None:
    assert (framework_error(404).code, framework_error(404).http_status) == (
        "InvalidAction.NotFound",
        404,
    )
    assert (framework_error(405).code, framework_error(405).http_status) == (
        "UnsupportedHTTPMethod",
        403,
    )
    assert framework_error(413).code == "RequestEntityTooLarge"
    assert framework_error(400).code == "InvalidParameter"
    assert (framework_error(502).code, framework_error(502).http_status) == ("InternalError", 500)
    assert (framework_error(418).code, framework_error(418).http_status) == (
        "InvalidParameter",
        400,
    )


def test_signature_mismatch_message_splits_like_the_legacy_sdk() -> None:
    call = rpc_request(rpc_auth(), secret="not-the-secret")
    error = refusal("SignatureDoesNotMatch", 400, call.verify, SECRET)
    # aliyun-python-sdk-core compares Message.split(":")[1] with the string it signed.
    assert error.message.split(":")[1] == call.string_to_sign
    assert error.message.startswith("Specified signature is not matched with our calculation.")


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        ("ACS3-HMAC-SHA256 Credential=ak,SignedHeaders=host", "IncompleteSignature"),
        ("ACS3-HMAC-SHA256 Credential=ak SignedHeaders=host Signature=00", "IncompleteSignature"),
        ("ACS3-HMAC-SHA256 Credential=ak,SignedHeaders=host,Signature=xyz", "IncompleteSignature"),
        (
            "ACS3-HMAC-SHA256 Credential=,SignedHeaders=h,Signature=" + "0" * 64,
            "IncompleteSignature",
        ),
        ("ACS3-RSA-SHA256 Credential=ak,SignedHeaders=host,Signature=00", "InvalidSignatureMethod"),
        ("acs ak:c2lnbmF0dXJl", "InvalidSignatureMethod"),
        ("Bearer token", "InvalidSignatureMethod"),
    ],
)
def test_malformed_authorization(authorization: str, code: str) -> None:
    headers = acs3_headers(Authorization=authorization, **{"x-acs-content-sha256": EMPTY_SHA256})
    refusal(code, 400, parse_request, "POST", "/", "", headers, b"", None)


@pytest.mark.parametrize(
    "unsigned",
    ["host", "x-acs-date", "x-acs-signature-nonce", "x-acs-content-sha256", "x-acs-action"],
)
def test_acs3_required_headers_must_be_signed(unsigned: str) -> None:
    _, _, sent = ref_acs3("POST", [""], [], acs3_headers(), b"", SECRET)
    names = [n for n in sorted(k for k in sent if k != "Authorization") if n != unsigned]
    sent["Authorization"] = sent["Authorization"].replace(
        sent["Authorization"].split("SignedHeaders=")[1].split(",")[0], ";".join(names)
    )
    error = refusal("IncompleteSignature", 400, parse_request, "POST", "/", "", sent, b"", None)
    assert unsigned in error.message


def test_acs3_signed_header_not_sent_and_bad_names() -> None:
    _, _, sent = ref_acs3("POST", [""], [], acs3_headers(), b"", SECRET)
    ghost = dict(sent, Authorization=sent["Authorization"].replace("host;", "host;x-acs-ghost;"))
    error = refusal("IncompleteSignature", 400, parse_request, "POST", "/", "", ghost, b"", None)
    assert "x-acs-ghost" in error.message
    upper = dict(sent, Authorization=sent["Authorization"].replace("host;", "Host;"))
    refusal("IncompleteSignature", 400, parse_request, "POST", "/", "", upper, b"", None)


def test_acs3_missing_headers_use_missing_parameter() -> None:
    for name in ("x-acs-signature-nonce", "x-acs-date", "x-acs-content-sha256"):
        _, _, sent = ref_acs3("POST", [""], [], acs3_headers(), b"", SECRET)
        sent[name] = ""
        error = refusal("MissingParameter", 400, parse_request, "POST", "/", "", sent, b"", None)
        assert f'"{name}"' in error.message


def test_acs3_body_hash_must_match_the_body() -> None:
    body = b"PhoneNumberJson=%5B%2213800000000%22%5D"
    headers = acs3_headers(**{"content-type": FORM})
    _, _, sent = ref_acs3("POST", [""], [], headers, body, SECRET)
    parse_request("POST", "/", "", sent, body, FORM).verify(SECRET)
    tampered = body.replace(b"138", b"139")
    error = refusal(
        "SignatureDoesNotMatch", 400, parse_request, "POST", "/", "", sent, tampered, FORM
    )
    assert "x-acs-content-sha256" in error.message and SERVER_STRING_TO_SIGN in error.message


def test_acs3_action_sources() -> None:
    headers = acs3_headers()
    del headers["x-acs-action"]
    _, _, sent = ref_acs3("POST", [""], [("Action", "QuerySendDetails")], headers, b"", SECRET)
    call = parse_request("POST", "/", "Action=QuerySendDetails", sent, b"", None)
    assert call.action == "QuerySendDetails"
    _, _, both = ref_acs3("POST", [""], [("Action", "SendSms")], acs3_headers(), b"", SECRET)
    assert parse_request("POST", "/", "Action=SendSms", both, b"", None).action == "SendSms"
    _, _, clash = ref_acs3("POST", [""], [("Action", "AddSmsSign")], acs3_headers(), b"", SECRET)
    refusal(
        "InvalidParameter", 400, parse_request, "POST", "/", "Action=AddSmsSign", clash, b"", None
    )
    _, _, none = ref_acs3("POST", [""], [], headers, b"", SECRET)
    refusal("MissingAction", 400, parse_request, "POST", "/", "", none, b"", None)


def test_rpc_v1_ignores_the_unsigned_action_header() -> None:
    pairs = rpc_auth()
    _, signature = ref_rpc("POST", pairs, SECRET)
    query = wire([*pairs, ("Signature", signature)], "python")
    call = parse_request("POST", "/", query, {"x-acs-action": "AddSmsSign"}, b"", None)
    assert call.action == "SendSms"


def test_form_body_only_read_for_form_content_type() -> None:
    pairs = rpc_auth()
    _, signature = ref_rpc("POST", pairs, SECRET)
    query = wire([*pairs, ("Signature", signature)], "python")
    body = b"PhoneNumbers=13800000000"
    call = parse_request("POST", "/", query, {}, body, "application/json")
    assert "PhoneNumbers" not in call.params
    call.verify(SECRET)
    # Read as form, the same body is signed too: the signature above did not cover it.
    refusal(
        "SignatureDoesNotMatch",
        400,
        parse_request("POST", "/", query, {}, body, FORM + "; charset=UTF-8").verify,
        SECRET,
    )
    refusal(
        "RequestParameterMalformed", 400, parse_request, "POST", "/", query, {}, b"\xff=1", FORM
    )


@pytest.mark.parametrize("name", ["Signature", "SignatureNonce", "Timestamp", "Action", "Version"])
def test_repeated_auth_params_are_refused(name: str) -> None:
    value = dict(rpc_auth()).get(name, "x")
    query = wire([*rpc_auth(), ("Signature", "c2ln"), (name, value)], "python")
    error = refusal("InvalidParameter", 400, parse_request, "POST", "/", query, {}, b"", None)
    assert name in error.message


def test_repeated_single_headers_are_refused() -> None:
    _, _, sent = ref_acs3("POST", [""], [], acs3_headers(), b"", SECRET)

    class Multi(dict):
        def items(self):
            yield from super().items()
            yield ("X-Acs-Signature-Nonce", "second")

    error = refusal(
        "IncompleteSignature", 400, parse_request, "POST", "/", "", Multi(sent), b"", None
    )
    assert "x-acs-signature-nonce" in error.message


def test_repeated_names_last_wins_in_params_but_all_are_signed() -> None:
    pairs = [*rpc_auth(), ("OutId", "first"), ("OutId", "second")]
    call = rpc_request(pairs, style="node")
    call.verify(SECRET)
    assert call.params["OutId"] == "second"
    assert "OutId%3Dfirst%26OutId%3Dsecond" in call.string_to_sign


@pytest.mark.skipif(not SM3_AVAILABLE, reason="this OpenSSL build has no SM3")
def test_acs3_hmac_sm3_round_trip() -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import hmac as crypto_hmac

    def sm3(data: bytes) -> str:
        digest = hashes.Hash(hashes.SM3())
        digest.update(data)
        return digest.finalize().hex()

    assert sm3(b"abc") == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
    headers = acs3_headers()
    headers["x-acs-content-sha256"] = sm3(b"")
    names = sorted(headers)
    block = "".join(f"{n}:{headers[n].strip()}\n" for n in names)
    canonical = "\n".join(["POST", "/", "", block, ";".join(names), sm3(b"")])
    sts = "ACS3-HMAC-SM3\n" + sm3(canonical.encode())
    mac = crypto_hmac.HMAC(SECRET.encode(), hashes.SM3())
    mac.update(sts.encode())
    signature = mac.finalize().hex()
    auth = f"ACS3-HMAC-SM3 Credential={AK},SignedHeaders={';'.join(names)},Signature={signature}"
    call = parse_request("POST", "/", "", headers | {"Authorization": auth}, b"", None)
    assert call.algorithm == "ACS3-HMAC-SM3" and call.string_to_sign == sts
    call.verify(SECRET)
    refusal("SignatureDoesNotMatch", 400, call.verify, "wrong")
