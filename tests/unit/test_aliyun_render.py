"""Alibaba-shaped response bodies (bridge.compat.aliyun_render): JSON and Dysmsapi's XML."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.compat.aliyun_render import (
    JSON_CONTENT_TYPE,
    XML_CONTENT_TYPE,
    error_body,
    render,
    render_error,
)

DETAILS = {
    "TotalCount": 1,
    "Message": "OK",
    "RequestId": "0F8F57E7-B72B-492A-853F-F0F8A78D4DEE",
    "SmsSendDetailDTOs": {
        "SmsSendDetailDTO": [
            {
                "OutId": "123",
                "SendDate": "2018-04-27 14:19:30",
                "SendStatus": 3,
                "ReceiveDate": "2018-04-27 14:19:35",
                "ErrCode": "DELIVRD",
                "TemplateCode": "SMS_132940015",
                "Content": "【可乐贩售机】正在使用Go SDK，版本号：v1.0。",
                "PhoneNum": "15300000001",
            }
        ]
    },
    "Code": "OK",
}
# The XML Dysmsapi returns for the same answer (as captured from the real service).
DETAILS_XML = (
    "<?xml version='1.0' encoding='UTF-8'?><QuerySendDetailsResponse><TotalCount>1</TotalCount>"
    "<Message>OK</Message><RequestId>0F8F57E7-B72B-492A-853F-F0F8A78D4DEE</RequestId>"
    "<SmsSendDetailDTOs><SmsSendDetailDTO><OutId>123</OutId><SendDate>2018-04-27 14:19:30"
    "</SendDate><SendStatus>3</SendStatus><ReceiveDate>2018-04-27 14:19:35</ReceiveDate>"
    "<ErrCode>DELIVRD</ErrCode><TemplateCode>SMS_132940015</TemplateCode>"
    "<Content>【可乐贩售机】正在使用Go SDK，版本号：v1.0。</Content>"
    "<PhoneNum>15300000001</PhoneNum>"
    "</SmsSendDetailDTO></SmsSendDetailDTOs><Code>OK</Code></QuerySendDetailsResponse>"
)


def test_query_send_details_xml_matches_the_real_service_byte_for_byte() -> None:
    body, content_type = render(DETAILS, "XML", "QuerySendDetails")
    assert body.decode("utf-8") == DETAILS_XML
    assert content_type == XML_CONTENT_TYPE


def test_json_is_compact_utf8() -> None:
    body, content_type = render(DETAILS, "JSON", "QuerySendDetails")
    assert content_type == JSON_CONTENT_TYPE
    assert b'": ' not in body and b', "' not in body  # compact separators
    assert "【可乐贩售机】".encode() in body  # not \u escapes
    assert json.loads(body) == DETAILS
    assert body.startswith(b'{"TotalCount":1,"Message":"OK"')


def test_format_is_case_insensitive_and_defaults_to_json() -> None:
    assert render({"Code": "OK"}, "xml", "SendSms")[1] == XML_CONTENT_TYPE
    assert render({"Code": "OK"}, None, "SendSms") == (b'{"Code":"OK"}', JSON_CONTENT_TYPE)
    assert render({"Code": "OK"}, "YAML", "SendSms")[1] == JSON_CONTENT_TYPE


def test_several_and_empty_lists() -> None:
    body = {
        "Code": "OK",
        "SmsSendDetailDTOs": {"SmsSendDetailDTO": [{"OutId": "a"}, {"OutId": "b"}]},
    }
    root = ET.fromstring(render(body, "XML", "QuerySendDetails")[0])
    assert [e.text for e in root.iter("OutId")] == ["a", "b"]
    assert len(root.find("SmsSendDetailDTOs")) == 2
    empty = {"Code": "OK", "SmsSendDetailDTOs": {"SmsSendDetailDTO": []}}
    xml = render(empty, "XML", "QuerySendDetails")[0].decode()
    assert "<SmsSendDetailDTOs></SmsSendDetailDTOs>" in xml
    assert json.loads(render(empty, "JSON", "QuerySendDetails")[0]) == empty


def test_scalars_escaping_and_none() -> None:
    body = {"A": True, "B": False, "C": 1.5, "D": "<&>\"'", "E": None, "F": "bell\x07tab\tok"}
    xml = render(body, "XML", "X")[0].decode()
    assert "<A>true</A><B>false</B><C>1.5</C><D>&lt;&amp;&gt;\"'</D>" in xml
    assert "<E>" not in xml
    assert "<F>bell\ufffdtab\tok</F>" in xml
    ET.fromstring(xml.encode())
    assert json.loads(render(body, "JSON", "X")[0])["E"] is None


def test_lone_surrogates_never_raise() -> None:
    assert json.loads(render({"Content": "a\ud800b"}, "JSON", "X")[0]) == {"Content": "a?b"}
    assert b"<Content>a\xef\xbf\xbdb</Content>" in render({"Content": "a\ud800b"}, "XML", "X")[0]


def test_bad_element_names_are_refused() -> None:
    with pytest.raises(ValueError, match="XML element name"):
        render({"1bad": "x"}, "XML", "SendSms")
    with pytest.raises(ValueError):
        render({"Code": "OK"}, "XML", "Send Sms")


def test_error_json_and_xml() -> None:
    body, content_type = render_error("isv.AMOUNT_NOT_ENOUGH", "账户余额不足", "RID-1")
    assert content_type == JSON_CONTENT_TYPE
    assert json.loads(body) == {
        "RequestId": "RID-1",
        "Code": "isv.AMOUNT_NOT_ENOUGH",
        "Message": "账户余额不足",
    }
    xml, content_type = render_error(
        "SignatureDoesNotMatch",
        "Specified signature is not matched with our calculation. "
        "server string to sign is:GET&%2F&A",
        "RID-2",
        "XML",
        host_id="127.0.0.1:8080",
        recommend="https://example.invalid/?q=SignatureDoesNotMatch&a=1",
    )
    assert content_type == XML_CONTENT_TYPE
    assert xml.startswith(b"<?xml version='1.0' encoding='UTF-8'?><Error><RequestId>RID-2")
    root = ET.fromstring(xml)
    assert root.tag == "Error"
    assert {child.tag: child.text for child in root} == {
        "RequestId": "RID-2",
        "Code": "SignatureDoesNotMatch",
        "Message": (
            "Specified signature is not matched with our calculation. "
            "server string to sign is:GET&%2F&A"
        ),
        "HostId": "127.0.0.1:8080",
        "Recommend": "https://example.invalid/?q=SignatureDoesNotMatch&a=1",
    }


def test_error_body_always_has_the_three_fields() -> None:
    assert set(error_body("C", "M", "R")) == {"Code", "Message", "RequestId"}
    assert set(error_body("C", "M", "R", host_id="h", recommend="r")) == {
        "Code",
        "Message",
        "RequestId",
        "HostId",
        "Recommend",
    }


_TEXT = st.text(max_size=40)


@settings(max_examples=100, deadline=None)
@given(content=_TEXT, out_id=_TEXT, status=st.integers(1, 3))
def test_xml_always_parses_and_round_trips_text(content: str, out_id: str, status: int) -> None:
    body = {
        "Code": "OK",
        "SmsSendDetailDTOs": {
            "SmsSendDetailDTO": [{"Content": content, "OutId": out_id, "SendStatus": status}]
        },
    }
    root = ET.fromstring(render(body, "XML", "QuerySendDetails")[0])
    dto = root.find("SmsSendDetailDTOs/SmsSendDetailDTO")
    assert dto.find("SendStatus").text == str(status)
    for name, value in (("Content", content), ("OutId", out_id)):
        clean = "".join(
            "\ufffd"
            if (ord(c) < 32 and c not in "\t\n\r")
            or 0xD800 <= ord(c) <= 0xDFFF
            or c in "\ufffe\uffff"
            else c
            for c in value
        )
        # XML parsers normalise a bare \r to \n.
        assert (dto.find(name).text or "") == clean.replace("\r\n", "\n").replace("\r", "\n")
    json.loads(render(body, "JSON", "QuerySendDetails")[0])
