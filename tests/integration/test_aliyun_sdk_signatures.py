"""The official Alibaba Cloud SMS SDK's requests verify with bridge.compat.aliyun_sign.

A tiny aiohttp server on 127.0.0.1 captures each raw request (method, path, raw query, headers,
body) and answers a minimal valid Dysmsapi JSON body; the SDK (alibabacloud-dysmsapi20170525 with
alibabacloud-tea-openapi) is pointed at it over HTTP, with its default ACS3-HMAC-SHA256 signature,
with RPC v1 (`signature_algorithm='v2'`) and with ACS3-HMAC-SM3. Every captured request must verify
with the right secret and be refused (SignatureDoesNotMatch, 400) with a wrong one. The SDK is
synchronous, so it runs in a thread while the server runs on the test's loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from alibabacloud_dysmsapi20170525 import models
from alibabacloud_dysmsapi20170525.client import Client
from alibabacloud_tea_openapi import exceptions as sdk_errors
from alibabacloud_tea_openapi.utils_models import Config
from multidict import CIMultiDict

from bridge.compat.aliyun_canon import SM3_AVAILABLE
from bridge.compat.aliyun_codes import retry_after_headers, to_aliyun
from bridge.compat.aliyun_render import render, render_error
from bridge.compat.aliyun_sign import (
    AliyunAuthError,
    SignedCall,
    check_timestamp,
    parse_request,
)

AK = "LTAI5tBridgeTestKey"
SECRET = "Sec/ret+with&odd*chars~ 中"
TEMPLATE_PARAM = '{"code":"12 34","name":"张三 + 李四*","note":"a~b*c+d e"}'
SIGN_NAME = "阿里云 短信*测试+"

OK_BODIES: dict[str, dict[str, Any]] = {
    "SendSms": {"Code": "OK", "Message": "OK", "RequestId": "R-1", "BizId": "900619746936498440^0"},
    "SendBatchSms": {"Code": "OK", "Message": "OK", "RequestId": "R-2", "BizId": "B-2"},
    "QuerySendDetails": {
        "Code": "OK",
        "Message": "OK",
        "RequestId": "R-3",
        "TotalCount": 1,
        "SmsSendDetailDTOs": {
            "SmsSendDetailDTO": [
                {
                    "PhoneNum": "13800000000",
                    "SendStatus": 3,
                    "ErrCode": "DELIVRD",
                    "TemplateCode": "SMS_1",
                    "Content": "【阿里云】验证码 12 34",
                    "SendDate": "2026-11-29 12:00:00",
                    "ReceiveDate": "2026-11-29 12:00:05",
                    "OutId": "o-1",
                }
            ]
        },
    },
}


@dataclass
class Captured:
    method: str
    path: str
    raw_query: str
    headers: CIMultiDict[str]
    body: bytes
    content_type: str | None


Responder = Callable[[Captured], web.Response]


def ok_responder(request: Captured) -> web.Response:
    action = request.headers.get("x-acs-action", "SendSms")
    body, content_type = render(OK_BODIES[action], "JSON", action)
    return web.Response(body=body, headers={"Content-Type": content_type})


@dataclass
class Server:
    port: int
    captured: list[Captured] = field(default_factory=list)
    responder: Responder = ok_responder

    def client(self, algorithm: str | None, secret: str = SECRET) -> Client:
        return Client(
            Config(
                access_key_id=AK,
                access_key_secret=secret,
                endpoint=f"127.0.0.1:{self.port}",
                protocol="HTTP",
                signature_algorithm=algorithm,
            )
        )


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    state = Server(port=0)

    async def handle(request: web.Request) -> web.StreamResponse:
        # raw_path is the request target exactly as sent; a framework's parsed query is not.
        path, _, raw_query = request.raw_path.partition("?")
        captured = Captured(
            request.method,
            path,
            raw_query,
            CIMultiDict(request.headers),
            await request.read(),
            request.headers.get("Content-Type"),
        )
        state.captured.append(captured)
        return state.responder(captured)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.port = runner.addresses[0][1]
    try:
        yield state
    finally:
        await runner.cleanup()


def parsed(request: Captured) -> SignedCall:
    return parse_request(
        request.method,
        request.path,
        request.raw_query,
        request.headers,
        request.body,
        request.content_type,
    )


ALGORITHMS = [
    pytest.param(None, "acs3", "ACS3-HMAC-SHA256", id="acs3-default"),
    pytest.param("v2", "rpc_v1", "HMAC-SHA1", id="rpc-v1"),
    pytest.param(
        "ACS3-HMAC-SM3",
        "acs3",
        "ACS3-HMAC-SM3",
        id="acs3-sm3",
        marks=pytest.mark.skipif(not SM3_AVAILABLE, reason="no SM3 in this OpenSSL"),
    ),
]


async def _three_calls(client: Client) -> list[Any]:
    return [
        await asyncio.to_thread(
            client.send_sms,
            models.SendSmsRequest(
                phone_numbers="13800000000,13900000000",
                sign_name=SIGN_NAME,
                template_code="SMS_1",
                template_param=TEMPLATE_PARAM,
                out_id="o 1*~",
            ),
        ),
        await asyncio.to_thread(
            client.send_batch_sms,
            models.SendBatchSmsRequest(
                phone_number_json='["13800000000","13900000000"]',
                sign_name_json=json.dumps([SIGN_NAME, "签名 二"], ensure_ascii=False),
                template_code="SMS_1",
                template_param_json=json.dumps(
                    [{"a": "x y+z*"}, {"a": "中 文~"}], ensure_ascii=False
                ),
            ),
        ),
        await asyncio.to_thread(
            client.query_send_details,
            models.QuerySendDetailsRequest(
                phone_number="13800000000",
                send_date="20261129",
                page_size=10,
                current_page=1,
                biz_id="900619746936498440^0",
            ),
        ),
    ]


@pytest.mark.parametrize(("algorithm", "scheme", "method_name"), ALGORITHMS)
async def test_sdk_requests_verify(
    server: Server, algorithm: str | None, scheme: str, method_name: str
) -> None:
    send, batch, details = await _three_calls(server.client(algorithm))
    assert (send.body.code, send.body.biz_id) == ("OK", "900619746936498440^0")
    assert batch.body.code == "OK"
    dto = details.body.sms_send_detail_dtos.sms_send_detail_dto[0]
    assert (dto.send_status, dto.err_code) == (3, "DELIVRD")
    assert len(server.captured) == 3

    calls = [parsed(request) for request in server.captured]
    for call in calls:
        assert (call.scheme, call.algorithm, call.access_key_id) == (scheme, method_name, AK)
        assert (call.version, call.format) == ("2017-05-25", "JSON")
        check_timestamp(call.timestamp, time.time())
        call.verify(SECRET)
        with pytest.raises(AliyunAuthError) as refused:
            call.verify(SECRET + "x")
        assert (refused.value.code, refused.value.http_status) == ("SignatureDoesNotMatch", 400)
        assert f"server string to sign is:{call.string_to_sign}" in refused.value.message

    send_call, batch_call, details_call = calls
    assert [c.action for c in calls] == ["SendSms", "SendBatchSms", "QuerySendDetails"]
    assert send_call.params["TemplateParam"] == TEMPLATE_PARAM
    assert send_call.params["SignName"] == SIGN_NAME
    assert send_call.params["PhoneNumbers"] == "13800000000,13900000000"
    assert send_call.params["OutId"] == "o 1*~"
    assert json.loads(batch_call.params["TemplateParamJson"]) == [{"a": "x y+z*"}, {"a": "中 文~"}]
    assert json.loads(batch_call.params["SignNameJson"]) == [SIGN_NAME, "签名 二"]
    assert server.captured[1].body  # SendBatchSms carries its arrays in a form body
    assert details_call.params["PageSize"] == "10"
    assert details_call.params["BizId"] == "900619746936498440^0"
    assert len({c.nonce for c in calls}) == 3


@pytest.mark.parametrize(("algorithm", "scheme", "method_name"), ALGORITHMS[:2])
async def test_tampered_sdk_requests_are_refused(
    server: Server, algorithm: str | None, scheme: str, method_name: str
) -> None:
    await _three_calls(server.client(algorithm))
    send, batch = server.captured[0], server.captured[1]
    # Another recipient in the query, or in the form body, no longer matches the signature.
    send.raw_query = send.raw_query.replace("13900000000", "13700000000")
    with pytest.raises(AliyunAuthError) as refused:
        parsed(send).verify(SECRET)
    assert refused.value.code == "SignatureDoesNotMatch"
    batch.body = batch.body.replace(b"13900000000", b"13700000000")
    with pytest.raises(AliyunAuthError) as refused:
        parsed(batch).verify(SECRET)
    assert (refused.value.code, refused.value.http_status) == ("SignatureDoesNotMatch", 400)


def _refuse_with(code: str, http_status: int, message: str, headers: dict[str, str]) -> Responder:
    def respond(request: Captured) -> web.Response:
        body, content_type = render_error(code, message, "R-err", "JSON", host_id="127.0.0.1")
        return web.Response(
            status=http_status, body=body, headers={"Content-Type": content_type, **headers}
        )

    return respond


async def test_sdk_surfaces_our_signature_refusal(server: Server) -> None:
    server.responder = _refuse_with(
        "SignatureDoesNotMatch",
        400,
        "Specified signature is not matched with our calculation. server string to sign is:x",
        {},
    )
    with pytest.raises(sdk_errors.ClientException) as raised:
        await asyncio.to_thread(
            server.client(None).send_sms,
            models.SendSmsRequest(phone_numbers="1", sign_name="s", template_code="t"),
        )
    assert (raised.value.code, raised.value.status_code) == ("SignatureDoesNotMatch", 400)
    assert len(server.captured) == 1  # no retry


async def test_sdk_raises_throttling_on_retry_after(server: Server) -> None:
    status, code, message = to_aliyun("ACCOUNT_RATE_LIMIT", "account: 10 calls/s")
    server.responder = _refuse_with(
        code, status, message, retry_after_headers("ACCOUNT_RATE_LIMIT", 1.5)
    )
    with pytest.raises(sdk_errors.ThrottlingException) as raised:
        await asyncio.to_thread(
            server.client("v2").send_sms,
            models.SendSmsRequest(phone_numbers="1", sign_name="s", template_code="t"),
        )
    assert (raised.value.code, raised.value.retry_after) == ("Throttling.User", 1500)
    assert len(server.captured) == 1


async def test_sdk_reads_business_errors_as_http_200(server: Server) -> None:
    status, code, message = to_aliyun("INSUFFICIENT_BALANCE", "balance 0.01 < 0.045")

    def respond(request: Captured) -> web.Response:
        body, content_type = render(
            {"Code": code, "Message": message, "RequestId": "R-4"}, "JSON", "SendSms"
        )
        return web.Response(status=status, body=body, headers={"Content-Type": content_type})

    server.responder = respond
    response = await asyncio.to_thread(
        server.client(None).send_sms,
        models.SendSmsRequest(phone_numbers="1", sign_name="s", template_code="t"),
    )
    assert (response.status_code, response.body.code) == (200, "isv.AMOUNT_NOT_ENOUGH")
    assert response.body.message.startswith("账户余额不足")
