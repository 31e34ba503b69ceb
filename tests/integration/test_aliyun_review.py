"""Defects found reviewing the Alibaba Cloud SMS face, each pinned by the request that showed it.

Driven over HTTP with the independent RPC v1 signer of test_aliyun_api (not the SDK), so the exact
bytes Alibaba-written clients send reach the face; the SDK path is covered there.
"""

from __future__ import annotations

import json

import pytest

from bridge.compat.aliyun_errors import AliyunAuthError
from bridge.compat.aliyun_sign import parse_timestamp
from tests.integration import test_aliyun_api as base
from tests.integration.conftest import Creds
from tests.integration.test_aliyun_api import (
    CN1,
    CN2,
    NOTIFY_TEXT,
    VERIFY_TEXT,
    Face,
    Raw,
    raw_post,
    rpc_v1_params,
    rpc_v1_query,
    utc_stamp,
)

face = base.face  # the fixture: an aliyun face over the test store, its clock at the real time


async def _call(face: Face, creds: Creds, action: str, **params: str) -> Raw:
    query = rpc_v1_query(rpc_v1_params(creds, action, **params), creds.app_secret)
    return await raw_post(face, query)


# -- Timestamp -----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0000-01-01T00:00:00Z", "0000-02-29T12:00:00Z"])
def test_year_zero_is_a_format_error_not_a_crash(value: str) -> None:
    with pytest.raises(AliyunAuthError) as raised:
        parse_timestamp(value)
    assert (raised.value.code, raised.value.http_status) == ("InvalidTimeStamp.Format", 400)


@pytest.mark.parametrize(
    ("offset_s", "status", "code"),
    [(-600, 200, "OK"), (600, 200, "OK"), (-960, 400, "InvalidTimeStamp.Expired"),
     (960, 400, "InvalidTimeStamp.Expired")],
)  # fmt: skip
async def test_a_timestamp_within_alibabas_fifteen_minutes_is_accepted(
    face: Face, offset_s: int, status: int, code: str
) -> None:
    """aliyun.clock_skew_s (900, as Alibaba): an SDK on a clock 10 minutes off still works; it
    was refused with the native API's 300 s."""
    creds = await face.api.create_account(raw_text=False)
    when = utc_stamp(face.clock() + offset_s)
    raw = await _call(face, creds, "QuerySmsSign", SignName="Acme", Timestamp=when)
    assert (raw.status, raw.json["Code"]) == (status, code), raw.json


def test_first_and_last_representable_years_parse() -> None:
    assert parse_timestamp("0001-01-01T00:00:00Z") == -62_135_596_800
    assert parse_timestamp("9999-12-31T23:59:59Z") == 253_402_300_799


async def test_year_zero_timestamp_is_answered_400_not_500(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    raw = await _call(
        face, creds, "QuerySmsSign", SignName="Acme", Timestamp="0000-01-01T00:00:00Z"
    )
    assert (raw.status, raw.json["Code"]) == (400, "InvalidTimeStamp.Format")
    assert set(raw.json) == {"Code", "Message", "RequestId"}


# -- TemplateParam values --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template_param",
    [
        '{"code": true}',
        '{"code": null}',
        '{"code": {"a": "1"}}',
        '{"code": ["1"]}',
        '{"code": NaN}',  # not JSON at all (Python's json takes it, Alibaba's parser does not)
        '{"code": Infinity}',
        '{"code": 1e400}',  # overflows to infinity
    ],
)
async def test_non_string_template_values_are_invalid_json_param(
    face: Face, template_param: str
) -> None:
    """Alibaba answers isv.INVALID_JSON_PARAM ("only string values"), not TEMPLATE_PARAMS_ILLEGAL
    ("illegal keywords in a variable"), which sends the caller hunting for a banned word."""
    creds = await face.api.create_account(raw_text=False)
    code = await face.template(creds, VERIFY_TEXT)
    raw = await _call(
        face,
        creds,
        "SendSms",
        PhoneNumbers=CN1,
        SignName="Acme",
        TemplateCode=code,
        TemplateParam=template_param,
    )
    assert raw.status == 200
    assert raw.json["Code"] == "isv.INVALID_JSON_PARAM", raw.json
    assert raw.json["Message"].startswith("JSON参数不合法，只接受字符串值")
    assert await face.messages(creds) == []


async def test_numbers_and_strings_are_still_accepted(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    code = await face.template(creds, NOTIFY_TEXT, "notification")
    raw = await _call(
        face,
        creds,
        "SendSms",
        PhoneNumbers=CN1,
        SignName="Acme",
        TemplateCode=code,
        TemplateParam='{"name": "Li", "order": 1234}',
    )
    assert (raw.status, raw.json["Code"]) == (200, "OK"), raw.json
    (row,) = await face.messages(creds)
    assert row.text == "【Acme】Hello Li, order 1234 has shipped."


async def test_batch_entry_with_a_non_string_value_is_invalid_json_param(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    code = await face.template(creds, NOTIFY_TEXT, "notification")
    raw = await _call(
        face,
        creds,
        "SendBatchSms",
        PhoneNumberJson=json.dumps([CN1, CN2]),
        SignNameJson=json.dumps(["Acme", "Acme"]),
        TemplateCode=code,
        TemplateParamJson=json.dumps(
            [{"name": "Li", "order": "1"}, {"name": {"first": "Wang"}, "order": "2"}]
        ),
    )
    assert (raw.status, raw.json["Code"]) == (200, "isv.INVALID_JSON_PARAM"), raw.json
    assert "TemplateParamJson[1].name" in raw.json["Message"]
    assert await face.messages(creds) == []


# -- SmsUpExtendCodeJson -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extend", "code"),
    [
        ('["abc", "1"]', "isv.INVALID_PARAMETERS"),  # not digits
        ('["1234567890123", "1"]', "isv.INVALID_PARAMETERS"),  # over 12 digits
        ('["1"]', "isv.INVALID_PARAMETERS"),  # not one per number
        ('{"a": "1"}', "isv.INVALID_PARAMETERS"),  # not an array
        ("[1, 2]", "isv.INVALID_PARAMETERS"),  # not strings
        ('["1",', "isv.INVALID_JSON_PARAM"),
    ],
)
async def test_batch_extend_codes_are_checked_like_send_sms(
    face: Face, extend: str, code: str
) -> None:
    """SendSms refuses a bad SmsUpExtendCode; SendBatchSms took any SmsUpExtendCodeJson."""
    creds = await face.api.create_account(raw_text=False)
    template = await face.template(creds, NOTIFY_TEXT, "notification")
    raw = await _call(
        face,
        creds,
        "SendBatchSms",
        PhoneNumberJson=json.dumps([CN1, CN2]),
        SignNameJson=json.dumps(["Acme", "Acme"]),
        TemplateCode=template,
        TemplateParamJson=json.dumps([{"name": "a", "order": "1"}, {"name": "b", "order": "2"}]),
        SmsUpExtendCodeJson=extend,
    )
    assert (raw.status, raw.json["Code"]) == (200, code), raw.json
    if code == "isv.INVALID_PARAMETERS":
        assert "SmsUpExtendCodeJson" in raw.json["Message"]
    assert await face.messages(creds) == []


@pytest.mark.parametrize("extend", ['["12", "345"]', '["", null]', "", None])
async def test_batch_extend_codes_that_are_well_formed_are_accepted(
    face: Face, extend: str | None
) -> None:
    creds = await face.api.create_account(raw_text=False)
    template = await face.template(creds, NOTIFY_TEXT, "notification")
    params = {} if extend is None else {"SmsUpExtendCodeJson": extend}
    raw = await _call(
        face,
        creds,
        "SendBatchSms",
        PhoneNumberJson=json.dumps([CN1, CN2]),
        SignNameJson=json.dumps(["Acme", "Acme"]),
        TemplateCode=template,
        TemplateParamJson=json.dumps([{"name": "a", "order": "1"}, {"name": "b", "order": "2"}]),
        **params,
    )
    assert (raw.status, raw.json["Code"]) == (200, "OK"), raw.json
    assert len(await face.messages(creds)) == 2


# -- SmsUpExtendCode: the account's extension range ------------------------------------------------


async def _extended_account(face: Face, senders: list[str]) -> tuple[Creds, str]:
    creds = await face.api.create_account(raw_text=False, senders=senders)
    return creds, await face.template(creds, NOTIFY_TEXT, "notification")


async def _senders(face: Face, creds: Creds) -> list[tuple[str, str | None]]:
    """(number as given, sender) of the stored messages (stored in E.164)."""
    return [(m.recipient.removeprefix("+86"), m.sender) for m in await face.messages(creds)]


@pytest.mark.parametrize(("code", "sender"), [("12", "10690012"), ("", "106900"), (None, "106900")])
async def test_send_sms_sends_from_the_base_plus_the_extension_code(
    face: Face, code: str | None, sender: str
) -> None:
    """A reply to that number then comes back to this account (test_assigned_senders)."""
    creds, template = await _extended_account(face, ["ACME", "106900*"])
    params = {} if code is None else {"SmsUpExtendCode": code}
    raw = await _call(
        face, creds, "SendSms", PhoneNumbers=CN1, SignName="Acme", TemplateCode=template,
        TemplateParam=json.dumps({"name": "a", "order": "1"}), **params,
    )  # fmt: skip
    assert (raw.status, raw.json["Code"]) == (200, "OK"), raw.json
    assert await _senders(face, creds) == [(CN1, sender)]


async def test_send_batch_sms_extends_each_entry(face: Face) -> None:
    creds, template = await _extended_account(face, ["106900*"])
    raw = await _call(
        face, creds, "SendBatchSms",
        PhoneNumberJson=json.dumps([CN1, CN2]),
        SignNameJson=json.dumps(["Acme", "Acme"]),
        TemplateCode=template,
        TemplateParamJson=json.dumps([{"name": "a", "order": "1"}, {"name": "b", "order": "2"}]),
        SmsUpExtendCodeJson='["7", null]',
    )  # fmt: skip
    assert (raw.status, raw.json["Code"]) == (200, "OK"), raw.json
    assert sorted(await _senders(face, creds)) == sorted([(CN1, "1069007"), (CN2, "106900")])


async def test_an_extension_past_twenty_digits_is_refused(face: Face) -> None:
    creds, template = await _extended_account(face, ["1069000000000000*"])
    raw = await _call(
        face, creds, "SendSms", PhoneNumbers=CN1, SignName="Acme", TemplateCode=template,
        TemplateParam=json.dumps({"name": "a", "order": "1"}), SmsUpExtendCode="12345",
    )  # fmt: skip
    assert (raw.status, raw.json["Code"]) == (200, "isv.INVALID_PARAMETERS"), raw.json
    assert "SmsUpExtendCode" in raw.json["Message"] and "20" in raw.json["Message"]
    assert await face.messages(creds) == []


@pytest.mark.parametrize("senders", [[], ["ACME"], ["106900*", "106901*"]])
async def test_without_one_extension_range_the_code_is_not_used(
    face: Face, senders: list[str]
) -> None:
    """As before assigned senders: the SMSC's default source (no range, or no one range)."""
    creds, template = await _extended_account(face, senders)
    raw = await _call(
        face, creds, "SendSms", PhoneNumbers=CN1, SignName="Acme", TemplateCode=template,
        TemplateParam=json.dumps({"name": "a", "order": "1"}), SmsUpExtendCode="12",
    )  # fmt: skip
    assert (raw.status, raw.json["Code"]) == (200, "OK"), raw.json
    assert await _senders(face, creds) == [(CN1, None)]
