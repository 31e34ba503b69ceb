"""bridge.compat.aliyun_sign.early_check: what an Alibaba call's headers and query decide
before its body is read (session 36), with the codes parse_request gives for the same faults."""

from __future__ import annotations

import pytest

from bridge.compat.aliyun_sign import AliyunAuthError, early_check, parse_request, query_format

SIG = "a" * 64
ACS3 = {
    "Authorization": "ACS3-HMAC-SHA256 Credential=ak_1,SignedHeaders="
    "host;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce,Signature=" + SIG,
    "host": "x",
    "x-acs-date": "2026-12-04T03:00:00Z",
    "x-acs-signature-nonce": "n1",
    "x-acs-content-sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
}
RPC = (
    "AccessKeyId=ak_2&Action=SendSms&Format=JSON&SignatureMethod=HMAC-SHA1&SignatureNonce=n2"
    "&SignatureVersion=1.0&Timestamp=2026-12-04T03%3A00%3A00Z&Version=2017-05-25&Signature=x"
)


def test_acs3_gives_the_key_and_timestamp_from_headers() -> None:
    assert early_check("POST", "", ACS3, "application/json") == ("ak_1", 1796353200)


def test_rpc_without_a_form_body_gives_them_from_the_query() -> None:
    assert early_check("POST", RPC, {"host": "x"}, None) == ("ak_2", 1796353200)


def test_rpc_with_a_form_body_waits_for_it() -> None:
    assert early_check("POST", "", {"host": "x"}, "application/x-www-form-urlencoded") is None


@pytest.mark.parametrize(
    ("query", "headers", "ctype"),
    [
        ("", {"host": "x"}, "application/json"),  # MissingSignature
        ("", {**ACS3, "Authorization": "ACS3-HMAC-SHA256 x"}, None),  # IncompleteSignature
        ("", {k: v for k, v in ACS3.items() if k != "x-acs-date"}, None),
        ("", {**ACS3, "x-acs-date": "2026-12-04T03:00:00.5Z"}, None),  # InvalidTimeStamp.Format
        (RPC.replace("HMAC-SHA1", "MD5"), {"host": "x"}, None),  # InvalidSignatureMethod
        (RPC + "&Timestamp=2026-12-04T03%3A00%3A00Z", {"host": "x"}, None),  # given twice
    ],
)
def test_refusals_match_the_whole_check(query: str, headers: dict[str, str], ctype: str) -> None:
    with pytest.raises(AliyunAuthError) as early:
        early_check("POST", query, headers, ctype)
    with pytest.raises(AliyunAuthError) as whole:
        parse_request("POST", "/", query, headers, b"", ctype)
    assert (early.value.code, early.value.http_status) == (
        whole.value.code,
        whole.value.http_status,
    )


def test_query_format() -> None:
    assert query_format("Format=xml") == "XML"
    assert query_format("Format=yaml") == "JSON"  # refused later, with the call
    assert query_format("") == "JSON"
