"""The Alibaba Cloud SMS face (Dysmsapi 2017-05-25) driven by the official SDK.

`alibabacloud-dysmsapi20170525` (with `alibabacloud-tea-openapi`) is pointed at
`make_aliyun_app(ctx)` served on 127.0.0.1 over HTTP, over the same context, store and send path as
the native API (conftest's `make_api`). The SDK is synchronous, so each call runs in a thread while
the server runs on the test's loop. The SDK signs with the real clock (`x-acs-date`/`Timestamp`),
so the server clock is frozen at the real time (within the accepted skew) to keep the local day
(rules.timezone, Asia/Shanghai) fixed for SendDate/StartDate; older days are put in place through
the store. Delivery is driven through the store as the pipeline does it (claim, record_submits,
apply_receipts). Two independent signers, written here from Alibaba's public algorithm
descriptions (RPC v1 HMAC-SHA1, ACS3-HMAC-SHA256), check the wire protocol without the SDK.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import secrets
import time
import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from alibabacloud_dysmsapi20170525 import models
from alibabacloud_dysmsapi20170525.client import Client
from alibabacloud_tea_openapi import exceptions as sdk_errors
from alibabacloud_tea_openapi.utils_models import Config, OpenApiRequest, Params
from darabonba.runtime import RuntimeOptions
from yarl import URL

from bridge import review
from bridge.api.signing import WEBHOOK_HEADER, verify_webhook_signature
from bridge.compat.aliyun_api import make_aliyun_app
from bridge.pipeline.webhooks import WebhookSender
from bridge.store.models import AcceptBatch, NewMessage, NewSegment, ReceiptIn, SubmitResult
from tests.integration.conftest import ApiServer, Clock, Creds
from tests.sending import approve_sign

TZ = ZoneInfo("Asia/Shanghai")
VERSION = "2017-05-25"
CN1, CN2, CN3 = "13800138000", "13900139000", "13700137000"
SEC = 1000
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR
LEASE = 5 * MIN
REQUEST_ID = re.compile(r"[0-9A-F]{8}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{4}-[0-9A-F]{12}")
LOCAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
VERIFY_TEXT = "Your code is ${code}. Valid 5 minutes."
NOTIFY_TEXT = "Hello ${name}, order ${order} has shipped."


# -- the face ------------------------------------------------------------------------------------


@dataclass
class Face:
    api: ApiServer
    server: TestServer
    clock: Clock

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def client(
        self,
        creds: Creds,
        algorithm: str | None = None,
        *,
        key: str | None = None,
        secret: str | None = None,
    ) -> Client:
        return Client(
            Config(
                access_key_id=key or creds.app_key,
                access_key_secret=secret or creds.app_secret,
                endpoint=self.host,
                protocol="HTTP",
                signature_algorithm=algorithm,
            )
        )

    async def call(self, client: Client, action: str, request: Any) -> Any:
        """`client.<action>(request)` in a thread; the body model of the answer, status checked."""
        response = await asyncio.to_thread(getattr(client, action), request)
        assert response.status_code == 200
        assert REQUEST_ID.fullmatch(response.body.request_id), response.body.request_id
        assert response.headers["x-acs-request-id"] == response.body.request_id
        return response.body

    async def refused(self, client: Client, action: str, request: Any) -> Any:
        """The exception the SDK raises for a protocol refusal (4xx/5xx)."""
        with pytest.raises(sdk_errors.AlibabaCloudException) as raised:
            await asyncio.to_thread(getattr(client, action), request)
        return raised.value

    async def send(self, creds: Creds, template: str, numbers: str, params: Any, **kw: Any) -> Any:
        return await self.call(
            self.client(creds),
            "send_sms",
            models.SendSmsRequest(
                phone_numbers=numbers,
                sign_name=kw.pop("sign_name", "Acme"),
                template_code=template,
                template_param=params if isinstance(params, str) else json.dumps(params),
                **kw,
            ),
        )

    async def template(
        self, creds: Creds, content: str, kind: str = "verification", *, approve: bool = True
    ) -> str:
        """A template of `creds`' account, approved by the operator unless told otherwise."""
        ctx = self.api.ctx
        now = ctx.now_ms()
        t = await review.submit_template(
            self.api.store,
            creds.account_id,
            {"type": kind, "name": "t", "content": content},
            now,
            ctx.config,
            ctx.send_rules.filter,
        )
        assert t.status == "pending", t
        if approve:
            await self.api.store.review_template(t.code, "approved", None, now)
        return t.code

    async def messages(self, creds: Creds) -> list[Any]:
        rows = await self.api.store.list_messages(creds.account_id, limit=1000)
        return sorted(rows, key=lambda r: (r.accepted_at, r.recipient))


@pytest.fixture
async def face(make_api: Any, clock: Clock) -> AsyncIterator[Face]:
    # Frozen at the real time (the SDK signs with the real clock; server.clock_skew_s is 300 s),
    # but never in the last two minutes of a local day, so a test's few seconds stay in one day.
    now = int(time.time())
    if local_midnight_ms(now * 1000 + 120 * SEC) > now * 1000:
        now -= 180
    clock.freeze(now)
    api = await make_api({"aliyun": {"enabled": True}})
    server = TestServer(make_aliyun_app(api.ctx), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        yield Face(api, server, clock)
    finally:
        await server.close()


def local_day(ms: float, days: int = 0) -> str:
    return (datetime.fromtimestamp(ms / 1000, TZ) + timedelta(days=days)).strftime("%Y%m%d")


def local_midnight_ms(ms: float) -> int:
    day = datetime.fromtimestamp(ms / 1000, TZ).replace(hour=0, minute=0, second=0, microsecond=0)
    return int(day.timestamp() * 1000)


def local_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, TZ).strftime("%Y-%m-%d %H:%M:%S")


# -- delivery through the store, as the pipeline does it ---------------------------------------


async def deliver(
    api: ApiServer,
    receipts: Mapping[str, tuple[str, str | None]],
    *,
    sent_at: int,
    done_at: int,
) -> None:
    """Claim everything queued and record it sent; then apply a receipt (state, stat) for each
    message id in `receipts` (the others stay 'sent', waiting for one)."""
    store = api.store
    work = await store.claim("test", 10_000, sent_at, LEASE)
    results: list[SubmitResult] = []
    incoming: list[ReceiptIn] = []
    for w in work:
        for seg in w.segments:
            ident = f"{w.id[-12:]}-{seg.seq}".lower()
            results.append(SubmitResult(w.id, seg.seq, "sent", "main", ident, ident, at=sent_at))
            if w.id in receipts:
                state, stat = receipts[w.id]
                incoming.append(ReceiptIn("main", ident, state, stat, None, done_at, done_at))
    await store.record_submits(results, [], sent_at)
    if incoming:
        outcome = await store.apply_receipts(incoming, done_at)
        assert outcome.matched == len(incoming)


def stored_message(account_id: str, at: int, to: str = "+8613800138000") -> NewMessage:
    mid = f"msg_{secrets.token_hex(13).upper()}"
    return NewMessage(
        id=mid,
        account_id=account_id,
        batch_id=f"bat_{secrets.token_hex(13).upper()}",
        recipient=to,
        encoding="gsm7",
        data_coding=0,
        billable_units=1,
        segments=(NewSegment(1, 1, 0, mid.encode(), b""),),
        accepted_at=at,
        text="hello",
    )


# -- independent signers (from Alibaba's published algorithm descriptions) ---------------------


def pct(text: str) -> str:
    """RFC 3986: only A-Z a-z 0-9 - _ . ~ unescaped, UTF-8, upper-case hex."""
    return quote(text, safe="~", encoding="utf-8")


def utc_stamp(t: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if t is None else t))


def rpc_v1_query(params: Mapping[str, str], secret: str, method: str = "POST") -> str:
    """The query string of an RPC v1 call: sorted canonical query + its HMAC-SHA1 signature."""
    canonical = "&".join(f"{pct(k)}={pct(v)}" for k, v in sorted(params.items()))
    string_to_sign = f"{method}&{pct('/')}&{pct(canonical)}"
    mac = hmac.new((secret + "&").encode(), string_to_sign.encode(), hashlib.sha1).digest()
    return f"{canonical}&Signature={pct(base64.b64encode(mac).decode())}"


def rpc_v1_params(creds: Creds, action: str, **business: str) -> dict[str, str]:
    return {
        "AccessKeyId": creds.app_key,
        "Action": action,
        "Format": "JSON",
        "RegionId": "cn-hangzhou",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": secrets.token_hex(16),
        "SignatureVersion": "1.0",
        "Timestamp": utc_stamp(),
        "Version": VERSION,
        **business,
    }


def acs3_request(
    host: str,
    creds: Creds,
    action: str,
    query: Mapping[str, str],
    body: bytes = b"",
    content_type: str | None = None,
) -> tuple[str, dict[str, str]]:
    """(encoded query, headers) of an ACS3-HMAC-SHA256 call, every header but user-agent signed."""
    canonical_query = "&".join(f"{pct(k)}={pct(v)}" for k, v in sorted(query.items()))
    payload = hashlib.sha256(body).hexdigest()
    headers = {
        "host": host,
        "x-acs-action": action,
        "x-acs-version": VERSION,
        "x-acs-date": utc_stamp(),
        "x-acs-signature-nonce": secrets.token_hex(16),
        "x-acs-content-sha256": payload,
    }
    if content_type is not None:
        headers["content-type"] = content_type
    names = sorted(headers)
    canonical_headers = "".join(f"{n}:{headers[n].strip()}\n" for n in names)
    signed = ";".join(names)
    canonical = "\n".join(("POST", "/", canonical_query, canonical_headers, signed, payload))
    string_to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
    signature = hmac.new(creds.app_secret.encode(), string_to_sign.encode(), hashlib.sha256)
    headers["Authorization"] = (
        f"ACS3-HMAC-SHA256 Credential={creds.app_key},SignedHeaders={signed},"
        f"Signature={signature.hexdigest()}"
    )
    return canonical_query, headers


@dataclass
class Raw:
    status: int
    headers: Any
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body)


async def raw_post(
    face: Face, query: str, headers: Mapping[str, str] | None = None, body: bytes = b""
) -> Raw:
    url = URL(f"{face.url}/" + (f"?{query}" if query else ""), encoded=True)
    async with face.api.session.post(
        url, data=body or None, headers=dict(headers or {}), skip_auto_headers=("Content-Type",)
    ) as resp:
        return Raw(resp.status, resp.headers, await resp.read())


# ================================================================================================
# SendSms
# ================================================================================================


@pytest.mark.parametrize("algorithm", [None, "v2"], ids=["acs3", "rpc-v1"])
async def test_send_sms_renders_stores_and_keeps_out_id(face: Face, algorithm: str | None) -> None:
    creds = await face.api.create_account(raw_text=False)
    code = await face.template(creds, VERIFY_TEXT)
    client = face.client(creds, algorithm)
    body = await face.call(
        client,
        "send_sms",
        models.SendSmsRequest(
            phone_numbers=f"{CN1},{CN2}",
            sign_name="Acme",
            template_code=code,
            template_param='{"code":"1234"}',
            out_id="order-42",
        ),
    )
    assert (body.code, body.message) == ("OK", "OK")
    rows = await face.messages(creds)
    assert [r.recipient for r in rows] == ["+86" + CN1, "+86" + CN2]
    for r in rows:
        assert r.batch_id == body.biz_id
        assert r.text == "【Acme】Your code is 1234. Valid 5 minutes."
        assert (r.sign_name, r.template, r.client_ref, r.state) == (
            "Acme",
            code,
            "order-42",
            "queued",
        )

    details = await face.call(
        client,
        "query_send_details",
        models.QuerySendDetailsRequest(
            phone_number=CN1, send_date=local_day(face.clock() * 1000), page_size=10, current_page=1
        ),
    )
    assert (details.code, details.total_count) == ("OK", "1")
    (dto,) = details.sms_send_detail_dtos.sms_send_detail_dto
    assert dto.to_map() == {
        "Content": "【Acme】Your code is 1234. Valid 5 minutes.",
        "ErrCode": "",
        "OutId": "order-42",
        "PhoneNum": CN1,
        "ReceiveDate": "",
        "SendDate": local_time(rows[0].accepted_at),
        "SendStatus": 1,
        "TemplateCode": code,
    }


# ================================================================================================
# SendBatchSms
# ================================================================================================


async def cash(face: Face, creds: Creds) -> int:
    r = await face.api.request("GET", "/v1/balance", creds=creds)
    assert r.status == 200, r.json
    return int(r.json["cash_micro"])


@pytest.mark.parametrize("algorithm", [None, "v2"], ids=["acs3", "rpc-v1"])
async def test_send_batch_sms_two_signs_own_texts_one_biz_id(
    face: Face, algorithm: str | None
) -> None:
    creds = await face.api.create_account(raw_text=False)
    await approve_sign(face.api.store, creds.account_id, "Globex", face.api.ctx.now_ms())
    code = await face.template(creds, NOTIFY_TEXT, "notification")
    before = await cash(face, creds)
    body = await face.call(
        face.client(creds, algorithm),
        "send_batch_sms",
        models.SendBatchSmsRequest(
            phone_number_json=json.dumps([CN1, CN2]),
            sign_name_json=json.dumps(["Acme", "Globex"]),
            template_code=code,
            template_param_json=json.dumps(
                [{"name": "Li", "order": "A-1"}, {"name": "Wang", "order": "B-2"}]
            ),
        ),
    )
    assert (body.code, body.message) == ("OK", "OK")
    rows = await face.messages(creds)
    assert [(r.recipient, r.sign_name, r.text, r.batch_id) for r in rows] == [
        ("+86" + CN1, "Acme", "【Acme】Hello Li, order A-1 has shipped.", body.biz_id),
        ("+86" + CN2, "Globex", "【Globex】Hello Wang, order B-2 has shipped.", body.biz_id),
    ]
    assert await cash(face, creds) == before - 2 * 45_000  # two domestic messages, one charge each


async def test_send_batch_sms_counts_each_number_under_its_own_sign(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    await approve_sign(face.api.store, creds.account_id, "Globex", face.api.ctx.now_ms())
    code = await face.template(creds, VERIFY_TEXT)
    client = face.client(creds)
    batch = await face.call(
        client,
        "send_batch_sms",
        models.SendBatchSmsRequest(
            phone_number_json=json.dumps([CN1, CN2]),
            sign_name_json=json.dumps(["Acme", "Globex"]),
            template_code=code,
            template_param_json=json.dumps([{"code": "1"}, {"code": "2"}]),
        ),
    )
    assert batch.code == "OK"
    # Verification codes: 1 a minute per (sign, number).
    outcomes = {}
    for number, sign in ((CN1, "Acme"), (CN2, "Acme"), (CN1, "Globex"), (CN2, "Globex")):
        response = await asyncio.to_thread(
            client.send_sms,
            models.SendSmsRequest(
                phone_numbers=number, sign_name=sign, template_code=code,
                template_param='{"code":"3"}',
            ),
        )  # fmt: skip
        outcomes[number, sign] = response.body.code
    assert outcomes == {
        (CN1, "Acme"): "isv.BUSINESS_LIMIT_CONTROL",
        (CN2, "Acme"): "OK",
        (CN1, "Globex"): "OK",
        (CN2, "Globex"): "isv.BUSINESS_LIMIT_CONTROL",
    }


async def test_send_batch_sms_with_an_unapproved_sign_accepts_nothing(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    client = face.client(creds)
    code = await face.template(creds, NOTIFY_TEXT, "notification")
    added = await face.call(
        client, "add_sms_sign", models.AddSmsSignRequest(sign_name="Initech", sign_source=0)
    )
    assert added.code == "OK"  # submitted: pending review, so not usable yet
    before = await face.api.store.ledger_sums(creds.account_id)
    response = await asyncio.to_thread(
        client.send_batch_sms,
        models.SendBatchSmsRequest(
            phone_number_json=json.dumps([CN1, CN2]),
            sign_name_json=json.dumps(["Acme", "Initech"]),
            template_code=code,
            template_param_json=json.dumps([{"name": "Li", "order": "1"}] * 2),
        ),
    )
    assert response.status_code == 200
    assert response.body.code == "isv.SMS_SIGNATURE_ILLEGAL"
    assert response.body.message.startswith("签名不合法(不存在或被拉黑)")
    assert response.body.biz_id is None
    assert await face.messages(creds) == []
    assert await face.api.store.ledger_sums(creds.account_id) == before


# ================================================================================================
# QuerySendDetails after delivery
# ================================================================================================


async def test_query_send_details_after_delivery_paging_and_biz_id(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    client = face.client(creds)
    code = await face.template(creds, NOTIFY_TEXT, "notification")
    biz: list[str] = []
    for i in range(3):
        sent = await face.send(creds, code, CN1, {"name": "Li", "order": str(i)}, out_id=f"o-{i}")
        biz.append(sent.biz_id)
        face.clock.advance(1)  # distinct acceptance times: a stable newest-first order
    other = await face.send(creds, code, CN2, {"name": "Wang", "order": "9"})
    rows = {r.batch_id: r for r in await face.messages(creds)}
    now = face.api.ctx.now_ms()
    await deliver(
        face.api,
        {rows[biz[0]].id: ("delivered", "DELIVRD"), rows[biz[1]].id: ("undeliverable", "UNDELIV")},
        sent_at=now + SEC,
        done_at=now + 5 * SEC,
    )
    day = local_day(now)

    async def query(**kw: Any) -> Any:
        return await face.call(
            client,
            "query_send_details",
            models.QuerySendDetailsRequest(phone_number=CN1, send_date=day, **kw),
        )

    def dto(i: int, status: int, err: str, received: str) -> dict[str, Any]:
        return {
            "Content": f"【Acme】Hello Li, order {i} has shipped.",
            "ErrCode": err,
            "OutId": f"o-{i}",
            "PhoneNum": CN1,
            "ReceiveDate": received,
            "SendDate": local_time(now + SEC),
            "SendStatus": status,
            "TemplateCode": code,
        }

    done = local_time(now + 5 * SEC)
    first = await query(page_size=2, current_page=1)
    assert first.total_count == "3"
    assert [d.to_map() for d in first.sms_send_detail_dtos.sms_send_detail_dto] == [
        dto(2, 1, "", ""),
        dto(1, 2, "UNDELIV", done),
    ]
    second = await query(page_size=2, current_page=2)
    assert second.total_count == "3"
    assert [d.to_map() for d in second.sms_send_detail_dtos.sms_send_detail_dto] == [
        dto(0, 3, "DELIVERED", done)
    ]
    beyond = await query(page_size=2, current_page=3)
    assert (beyond.total_count, beyond.sms_send_detail_dtos.sms_send_detail_dto) == ("3", [])

    only = await query(page_size=10, current_page=1, biz_id=biz[1])
    assert only.total_count == "1"
    assert [d.to_map() for d in only.sms_send_detail_dtos.sms_send_detail_dto] == [
        dto(1, 2, "UNDELIV", done)
    ]
    # Another number's batch id does not match this number's messages.
    none = await query(page_size=10, current_page=1, biz_id=other.biz_id)
    assert (none.total_count, none.sms_send_detail_dtos.sms_send_detail_dto) == ("0", [])
    # The day before holds nothing.
    yesterday = await face.call(
        client,
        "query_send_details",
        models.QuerySendDetailsRequest(
            phone_number=CN1, send_date=local_day(now, -1), page_size=10, current_page=1
        ),
    )
    assert yesterday.total_count == "0"


# ================================================================================================
# QuerySendStatistics
# ================================================================================================


async def test_query_send_statistics_per_local_day(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    stranger = await face.api.create_account(raw_text=False)
    code = await face.template(creds, NOTIFY_TEXT, "notification")
    store = face.api.store
    now = face.api.ctx.now_ms()
    midnight = local_midnight_ms(now)
    A = creds.account_id
    # Yesterday (local): its last millisecond, and earlier; two days ago: outside the range.
    y_delivered = stored_message(A, midnight - 1)
    y_failed = stored_message(A, midnight - 10 * HOUR)
    y_expired = stored_message(A, midnight - 20 * HOUR, to="+8613900139000")
    old = stored_message(A, midnight - DAY - 1)
    # Today: its first millisecond (still queued when counted), and two sends through the SDK.
    t_first = stored_message(A, midnight, to="+8613600136000")
    foreign = stored_message(stranger.account_id, midnight + 1)
    for m in (y_delivered, y_failed, y_expired, old, t_first, foreign):
        out = await store.accept(AcceptBatch(m.account_id, (m,), None, None), m.accepted_at)
        assert out.accepted
    sent = await face.send(creds, code, f"{CN1},{CN2}", {"name": "Li", "order": "7"})
    today = {r.recipient: r for r in await face.messages(creds) if r.batch_id == sent.biz_id}
    assert len(today) == 2
    await deliver(
        face.api,
        {
            y_delivered.id: ("delivered", "DELIVRD"),
            y_failed.id: ("undeliverable", "UNDELIV"),
            y_expired.id: ("expired", "EXPIRED"),
            today["+86" + CN1].id: ("delivered", "DELIVRD"),
        },
        sent_at=now,
        done_at=now + SEC,
    )
    # t_first is claimed and sent too: it is "sent", waiting for a receipt, like CN2's message.

    async def stats(**kw: Any) -> Any:
        return await face.call(
            face.client(creds),
            "query_send_statistics",
            models.QuerySendStatisticsRequest(
                is_globe=1, start_date=local_day(now, -1), end_date=local_day(now), **kw
            ),
        )

    def target(day: str, total: int, ok: int, fail: int, waiting: int) -> dict[str, Any]:
        return {
            "NoRespondedCount": waiting,
            "RespondedFailCount": fail,
            "RespondedSuccessCount": ok,
            "SendDate": day,
            "TotalCount": total,
        }

    body = await stats(page_index=1, page_size=10)
    assert body.code == "OK"
    assert body.data.total_size == 2
    assert [t.to_map() for t in body.data.target_list] == [
        target(local_day(now), 3, 1, 0, 2),
        target(local_day(now, -1), 3, 1, 2, 0),
    ]
    paged = await stats(page_index=2, page_size=1)
    assert paged.data.total_size == 2
    assert [t.to_map() for t in paged.data.target_list] == [target(local_day(now, -1), 3, 1, 2, 0)]
    # Only the day two days ago: the message at its last millisecond.
    older = await face.call(
        face.client(creds),
        "query_send_statistics",
        models.QuerySendStatisticsRequest(
            is_globe=1, start_date=local_day(now, -2), end_date=local_day(now, -2)
        ),
    )
    assert [t.to_map() for t in older.data.target_list] == [target(local_day(now, -2), 1, 0, 0, 1)]


# ================================================================================================
# Signs and templates
# ================================================================================================


async def test_add_and_query_sign_through_review(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    client = face.client(creds)
    added = await face.call(
        client,
        "add_sms_sign",
        models.AddSmsSignRequest(sign_name="Globex", sign_source=0, remark="our company"),
    )
    assert (added.code, added.sign_name) == ("OK", "Globex")

    async def query(name: str = "Globex") -> Any:
        return await face.call(client, "query_sms_sign", models.QuerySmsSignRequest(sign_name=name))

    pending = await query()
    created = local_time(face.api.ctx.now_ms())
    assert pending.to_map() == {
        "Code": "OK",
        "CreateDate": created,
        "Message": "OK",
        "Reason": "",
        "RequestId": pending.request_id,
        "SignName": "Globex",
        "SignStatus": 0,
    }
    r = await face.api.admin(
        "POST",
        f"/admin/accounts/{creds.account_id}/signs/Globex/review",
        json={"decision": "approve"},
    )
    assert r.status == 200, r.json
    assert (await query()).sign_status == 1

    await face.call(client, "add_sms_sign", models.AddSmsSignRequest(sign_name="Hooli"))
    r = await face.api.admin(
        "POST",
        f"/admin/accounts/{creds.account_id}/signs/Hooli/review",
        json={"decision": "reject", "reason": "no business licence"},
    )
    assert r.status == 200, r.json
    rejected = await query("Hooli")
    assert (rejected.sign_status, rejected.reason) == (2, "no business licence")

    unknown = await asyncio.to_thread(
        client.query_sms_sign, models.QuerySmsSignRequest(sign_name="Nobody")
    )
    assert (unknown.status_code, unknown.body.code) == (200, "isv.SMS_SIGNATURE_ILLEGAL")


async def test_add_and_query_templates_of_each_type(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    client = face.client(creds)
    contents = {
        0: "Your code is ${code}.",
        1: "Order ${order} has shipped.",
        2: "Spring sale, 20% off. Reply TD to unsubscribe",
        3: "Your parcel ${no} has arrived.",
    }
    codes: dict[int, str] = {}
    for kind, content in contents.items():
        added = await face.call(
            client,
            "add_sms_template",
            models.AddSmsTemplateRequest(
                template_type=kind, template_name=f"t{kind}", template_content=content,
                remark="for tests",
            ),
        )  # fmt: skip
        assert added.code == "OK" and re.fullmatch(r"SMS_\d{9}", added.template_code)
        codes[kind] = added.template_code

    async def query(code: str) -> Any:
        return await face.call(
            client, "query_sms_template", models.QuerySmsTemplateRequest(template_code=code)
        )

    created = local_time(face.api.ctx.now_ms())
    for kind, content in contents.items():
        body = await query(codes[kind])
        assert body.to_map() == {
            "Code": "OK",
            "CreateDate": created,
            "Message": "OK",
            "Reason": "",
            "RequestId": body.request_id,
            "TemplateCode": codes[kind],
            "TemplateContent": content,
            "TemplateName": f"t{kind}",
            "TemplateStatus": 0,
            # 3 (international) is a notification with its international flag: read back as 3.
            "TemplateType": kind,
        }
    r = await face.api.admin(
        "POST", f"/admin/templates/{codes[0]}/review", json={"decision": "approve"}
    )
    assert r.status == 200, r.json
    r = await face.api.admin(
        "POST",
        f"/admin/templates/{codes[1]}/review",
        json={"decision": "reject", "reason": "unclear wording"},
    )
    assert r.status == 200, r.json
    approved, rejected, pending = [await query(codes[k]) for k in (0, 1, 2)]
    assert (approved.template_status, approved.reason) == (1, "")
    assert (rejected.template_status, rejected.reason) == (2, "unclear wording")
    assert (pending.template_status, pending.reason) == (0, "")


async def test_marketing_template_without_opt_out_wording_is_rejected_at_once(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    client = face.client(creds)
    added = await face.call(
        client,
        "add_sms_template",
        models.AddSmsTemplateRequest(
            template_type=2, template_name="sale", template_content="Big sale today!"
        ),
    )
    assert added.code == "OK"
    body = await face.call(
        client,
        "query_sms_template",
        models.QuerySmsTemplateRequest(template_code=added.template_code),
    )
    assert (body.template_status, body.template_type) == (2, 2)
    stored = await face.api.store.get_template(added.template_code)
    assert stored is not None and (stored.status, stored.reason) == ("rejected", body.reason)
    assert "TEMPLATE_NO_OPTOUT_WORDING: " in body.reason, body.reason
    # A rejected template cannot be used to send (by an account allowed to send marketing).
    r = await face.api.admin(
        "PATCH", f"/admin/accounts/{creds.account_id}", json={"marketing": True}
    )
    assert r.status == 200, r.json
    sent = await asyncio.to_thread(
        client.send_sms,
        models.SendSmsRequest(
            phone_numbers=CN1, sign_name="Acme", template_code=added.template_code
        ),
    )
    assert (sent.status_code, sent.body.code) == (200, "isv.SMS_TEMPLATE_ILLEGAL")


async def test_query_of_another_accounts_template_is_unknown(face: Face) -> None:
    owner = await face.api.create_account(raw_text=False)
    other = await face.api.create_account(raw_text=False)
    code = await face.template(owner, VERIFY_TEXT)
    response = await asyncio.to_thread(
        face.client(other).query_sms_template, models.QuerySmsTemplateRequest(template_code=code)
    )
    assert (response.status_code, response.body.code) == (200, "isv.SMS_TEMPLATE_ILLEGAL")
    assert response.body.template_content is None


# ================================================================================================
# Refusals as the SDK surfaces them
# ================================================================================================


@pytest.mark.parametrize("algorithm", [None, "v2"], ids=["acs3", "rpc-v1"])
async def test_wrong_secret_is_signature_does_not_match(face: Face, algorithm: str | None) -> None:
    creds = await face.api.create_account(raw_text=False)
    code = await face.template(creds, VERIFY_TEXT)
    exc = await face.refused(
        face.client(creds, algorithm, secret=creds.app_secret + "x"),
        "send_sms",
        models.SendSmsRequest(
            phone_numbers=CN1, sign_name="Acme", template_code=code, template_param='{"code":"1"}'
        ),
    )
    assert isinstance(exc, sdk_errors.ClientException)
    assert (exc.code, exc.status_code) == ("SignatureDoesNotMatch", 400)
    assert "server string to sign is:" in exc.data["Message"]
    assert await face.messages(creds) == []


async def test_unknown_access_key(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    exc = await face.refused(
        face.client(creds, key="LTAI5tNoSuchKey0000000"),
        "send_sms",
        models.SendSmsRequest(phone_numbers=CN1, sign_name="Acme", template_code="SMS_1"),
    )
    assert isinstance(exc, sdk_errors.ClientException)
    assert (exc.code, exc.status_code) == ("InvalidAccessKeyId.NotFound", 404)


async def test_revoked_key_is_refused_at_once(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    client = face.client(creds)
    request = models.QuerySmsSignRequest(sign_name="Acme")
    assert (await face.call(client, "query_sms_sign", request)).sign_status == 1
    r = await face.api.admin("POST", f"/admin/keys/{creds.app_key}/revoke")
    assert r.status == 200, r.json
    exc = await face.refused(client, "query_sms_sign", request)
    assert isinstance(exc, sdk_errors.ClientException)
    assert (exc.code, exc.status_code) == ("InvalidAccessKeyId.Inactive", 400)


async def test_disabled_account_is_refused(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    r = await face.api.admin("POST", f"/admin/accounts/{creds.account_id}/disable")
    assert r.status == 200, r.json
    response = await asyncio.to_thread(
        face.client(creds).query_sms_sign, models.QuerySmsSignRequest(sign_name="Acme")
    )
    assert (response.status_code, response.body.code) == (200, "isv.ACCOUNT_ABNORMAL")


async def _account_changes_at_the_accept(face: Face, change: dict[str, Any], times: int) -> Any:
    """SendSms with the account changed (by the store, as an operator's admin call would) just
    before each of the first `times` accepts: after the face read it, before its transaction."""
    creds = await face.api.create_account(raw_text=False)
    code = await face.template(creds, VERIFY_TEXT)
    store = face.api.store
    accept = store.accept
    calls = 0

    async def racing(batch: Any, now: int) -> Any:
        nonlocal calls
        calls += 1
        if calls <= times:
            await store.update_account(creds.account_id, change, now + calls)
        return await accept(batch, now)

    store.accept = racing  # type: ignore[method-assign]
    try:
        response = await asyncio.to_thread(
            face.client(creds).send_sms,
            models.SendSmsRequest(
                phone_numbers=CN1, sign_name="Acme", template_code=code,
                template_param='{"code":"1234"}',
            ),
        )  # fmt: skip
    finally:
        store.accept = accept  # type: ignore[method-assign]
    return response.body, await face.messages(creds), calls


async def test_an_account_disabled_after_the_face_read_it_is_refused_at_the_accept(
    face: Face,
) -> None:
    """Until session 18 the Alibaba face's accept did not check the account again (its nonce is
    recorded, and the account read, before the action runs): a send a moment after a disable was
    queued and went out, though the disable ends what is waiting."""
    body, rows, _calls = await _account_changes_at_the_accept(face, {"status": "disabled"}, 1)
    assert (body.code, body.biz_id) == ("isv.ACCOUNT_ABNORMAL", None)
    assert rows == []


async def test_an_account_changed_after_the_face_read_it_is_validated_again(face: Face) -> None:
    body, rows, calls = await _account_changes_at_the_accept(face, {"marketing": True}, 1)
    assert (body.code, calls) == ("OK", 2)  # validated again with the account the store saw
    assert [r.state for r in rows] == ["queued"]


async def _business_refusal(face: Face, creds: Creds, **kw: Any) -> Any:
    kw.setdefault("phone_numbers", CN1)
    kw.setdefault("sign_name", "Acme")
    response = await asyncio.to_thread(face.client(creds).send_sms, models.SendSmsRequest(**kw))
    assert response.status_code == 200  # the SDK does not raise: callers read Code
    assert response.body.biz_id is None
    assert REQUEST_ID.fullmatch(response.body.request_id)
    return response.body


async def test_unapproved_template(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    code = await face.template(creds, VERIFY_TEXT, approve=False)
    body = await _business_refusal(face, creds, template_code=code, template_param='{"code":"1"}')
    assert body.code == "isv.SMS_TEMPLATE_ILLEGAL"
    assert body.message.startswith("模板不合法(不存在或被拉黑)")
    unknown = await _business_refusal(face, creds, template_code="SMS_999999999")
    assert unknown.code == "isv.SMS_TEMPLATE_ILLEGAL"
    assert await face.messages(creds) == []


async def test_template_parameter_refusals(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    code = await face.template(creds, VERIFY_TEXT)
    missing = await _business_refusal(face, creds, template_code=code, template_param="{}")
    assert missing.code == "isv.TEMPLATE_MISSING_PARAMETERS"
    assert missing.message.startswith("模版缺少变量")
    absent = await _business_refusal(face, creds, template_code=code)
    assert absent.code == "isv.TEMPLATE_MISSING_PARAMETERS"
    not_json = await _business_refusal(face, creds, template_code=code, template_param="{code:1")
    assert not_json.code == "isv.INVALID_JSON_PARAM"
    assert not_json.message.startswith("JSON参数不合法")
    not_object = await _business_refusal(face, creds, template_code=code, template_param="[1]")
    assert not_object.code == "isv.INVALID_JSON_PARAM"
    assert await face.messages(creds) == []


async def test_number_forms_the_cloud_service_takes(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    code = await face.template(creds, NOTIFY_TEXT, "notification")
    numbers = "+8613800138000, 008613900139000,8613700137000,85261234567,+85291234567"
    assert (await face.send(creds, code, numbers, {"name": "a", "order": "1"})).code == "OK"
    assert sorted(r.recipient for r in await face.messages(creds)) == [
        "+85261234567",
        "+85291234567",
        "+8613700137000",
        "+8613800138000",
        "+8613900139000",
    ]


@pytest.mark.parametrize(
    "number",
    [
        "12345",
        "1380013800",  # a digit short: not to be guessed as +1 380013800
        "138001380001",  # a digit over
        "+861012345678",  # not a mobile
        "85212345678",
        "abc",
        f"{CN1},+86123",
    ],
)
async def test_illegal_number(face: Face, number: str) -> None:
    creds = await face.api.create_account(raw_text=False)
    code = await face.template(creds, VERIFY_TEXT)
    body = await _business_refusal(
        face, creds, phone_numbers=number, template_code=code, template_param='{"code":"1"}'
    )
    assert (body.code, body.message.split(":")[0]) == ("isv.MOBILE_NUMBER_ILLEGAL", "非法手机号")
    assert await face.messages(creds) == []


async def test_insufficient_balance(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False, ready=False)
    await approve_sign(face.api.store, creds.account_id, "Acme", face.api.ctx.now_ms())
    code = await face.template(creds, VERIFY_TEXT)
    body = await _business_refusal(face, creds, template_code=code, template_param='{"code":"1"}')
    assert body.code == "isv.AMOUNT_NOT_ENOUGH"
    assert body.message.startswith("账户余额不足")
    assert await face.messages(creds) == []


async def test_frequency_limit(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    code = await face.template(creds, VERIFY_TEXT)
    assert (await face.send(creds, code, CN1, {"code": "1"})).code == "OK"
    body = await _business_refusal(face, creds, template_code=code, template_param='{"code":"2"}')
    # The verification limit is 1 a minute per (sign, number): Alibaba's exact wording.
    assert (body.code, body.message) == ("isv.BUSINESS_LIMIT_CONTROL", "触发分钟级流控Permits:1")
    assert (await face.send(creds, code, CN2, {"code": "3"})).code == "OK"
    assert len(await face.messages(creds)) == 2


async def test_account_rate_limit_is_sdk_throttling(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False, tps=1)
    code = await face.template(creds, NOTIFY_TEXT, "notification")
    assert (await face.send(creds, code, CN1, {"name": "a", "order": "1"})).code == "OK"
    exc = await face.refused(
        face.client(creds),
        "send_sms",
        models.SendSmsRequest(
            phone_numbers=CN2, sign_name="Acme", template_code=code,
            template_param='{"name":"b","order":"2"}',
        ),
    )  # fmt: skip
    assert isinstance(exc, sdk_errors.ThrottlingException)
    assert (exc.code, exc.status_code) == ("Throttling.User", 400)
    assert exc.retry_after is not None and 1 <= exc.retry_after <= 1000  # ms
    assert len(await face.messages(creds)) == 1


async def _refused_as_unavailable(face: Face, shut: Callable[[ApiServer], None]) -> tuple[Any, str]:
    """A notification SendSms after `shut(api)`: the SDK's ThrottlingException, 503
    ServiceUnavailable with Retry-After 5 s, and nothing stored. (creds, template code)."""
    creds = await face.api.create_account(raw_text=False)
    code = await face.template(creds, NOTIFY_TEXT, "notification")
    shut(face.api)
    exc = await face.refused(
        face.client(creds),
        "send_sms",
        models.SendSmsRequest(
            phone_numbers=CN1, sign_name="Acme", template_code=code,
            template_param='{"name":"a","order":"1"}',
        ),
    )  # fmt: skip
    assert isinstance(exc, sdk_errors.ThrottlingException)
    assert (exc.code, exc.status_code, exc.retry_after) == ("ServiceUnavailable", 503, 5000)
    assert await face.messages(creds) == []
    return creds, code


async def test_a_stopping_daemon_refuses_sends_like_the_native_api(face: Face) -> None:
    """SIGTERM (and a draining acceptor): the native face answers 503 SHUTTING_DOWN; until
    session 18 this face went on accepting sends while the binds drained."""

    def stopping(api: ApiServer) -> None:
        api.ctx.accepting = False

    creds, code = await _refused_as_unavailable(face, stopping)
    # Reading goes on while it drains.
    assert (await face.call(face.client(creds), "query_sms_template",
            models.QuerySmsTemplateRequest(template_code=code))).code == "OK"  # fmt: skip


async def test_full_queue_is_refused_like_the_native_api(face: Face) -> None:
    def full(api: ApiServer) -> None:
        api.ctx.queue_depth = api.config.store.max_queued_segments

    await _refused_as_unavailable(face, full)


async def test_missing_mandatory_parameter(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    exc = await face.refused(
        face.client(creds),
        "send_sms",
        models.SendSmsRequest(phone_numbers=CN1, sign_name="Acme"),
    )
    assert isinstance(exc, sdk_errors.ClientException)
    assert (exc.code, exc.status_code) == ("MissingTemplateCode", 400)


@pytest.mark.parametrize("algorithm", [None, "v2"], ids=["acs3", "rpc-v1"])
async def test_unknown_action(face: Face, algorithm: str | None) -> None:
    creds = await face.api.create_account(raw_text=False)
    params = Params(
        action="SendMms",
        version=VERSION,
        protocol="HTTP",
        pathname="/",
        method="POST",
        auth_type="AK",
        style="RPC",
        req_body_type="formData",
        body_type="json",
    )
    request = OpenApiRequest(query={"PhoneNumbers": CN1})
    client = face.client(creds, algorithm)
    with pytest.raises(sdk_errors.ClientException) as raised:
        await asyncio.to_thread(client.call_api, params, request, RuntimeOptions())
    assert (raised.value.code, raised.value.status_code) == ("InvalidAction.NotFound", 404)
    assert "'SendMms'" in raised.value.data["Message"]


async def test_replayed_nonce(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    query, headers = acs3_request(face.host, creds, "QuerySmsSign", {"SignName": "Acme"})
    first = await raw_post(face, query, headers)
    assert (first.status, first.json["Code"], first.json["SignStatus"]) == (200, "OK", 1)
    again = await raw_post(face, query, headers)
    assert again.status == 400
    assert again.json["Code"] == "SignatureNonceUsed"
    assert set(again.json) == {"Code", "Message", "RequestId"}
    # The same for RPC v1: the nonce is a query parameter there.
    signed = rpc_v1_query(rpc_v1_params(creds, "QuerySmsSign", SignName="Acme"), creds.app_secret)
    assert (await raw_post(face, signed)).status == 200
    replay = await raw_post(face, signed)
    assert (replay.status, replay.json["Code"]) == (400, "SignatureNonceUsed")


async def test_a_store_that_went_away_is_a_retryable_service_unavailable(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    await face.api.store.close()
    query, headers = acs3_request(face.host, creds, "QuerySmsSign", {"SignName": "Acme"})
    r = await raw_post(face, query, headers)
    assert (r.status, r.json["Code"]) == (503, "ServiceUnavailable")
    assert set(r.json) == {"Code", "Message", "RequestId"}
    assert r.headers["x-acs-retry-after"] == "5000"  # the SDKs raise a throttling error for it


async def test_framework_errors_are_alibaba_json(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    # Unsigned requests on any path and method: Alibaba's envelope, never aiohttp's text pages.
    async with face.api.session.get(f"{face.url}/no/such/page") as resp:
        body = json.loads(await resp.read())
        assert resp.status == 400
        assert resp.headers["Content-Type"] == "application/json;charset=utf-8"
        assert set(body) == {"Code", "Message", "RequestId"}
        assert body["Code"] == "MissingSignature"
        assert resp.headers["x-acs-request-id"] == body["RequestId"]
    async with face.api.session.request("PROPFIND", f"{face.url}/") as resp:
        body = json.loads(await resp.read())
        assert (resp.status, set(body)) == (400, {"Code", "Message", "RequestId"})
    # A body over server.max_body_bytes: the framework's 413, in Alibaba's terms.
    big = b"PhoneNumberJson=" + b"1" * (face.api.config.server.max_body_bytes + 1)
    signed = rpc_v1_query(rpc_v1_params(creds, "SendBatchSms"), creds.app_secret)
    raw = await raw_post(face, signed, {"Content-Type": "application/x-www-form-urlencoded"}, big)
    assert raw.status == 413
    assert raw.json["Code"] == "RequestEntityTooLarge"
    assert set(raw.json) == {"Code", "Message", "RequestId"}


async def test_long_request_line_is_read(face: Face) -> None:
    """1000 numbers in the query (~14 KB request line): answered by the face, not by aiohttp's
    plain-text 400 for its default 8190-byte line limit."""
    creds = await face.api.create_account(raw_text=False)
    numbers = ",".join(f"139{i:08d}" for i in range(1000))
    exc = await face.refused(
        face.client(creds, key="LTAI5tNoSuchKey0000000"),
        "send_sms",
        models.SendSmsRequest(phone_numbers=numbers, sign_name="Acme", template_code="SMS_1"),
    )
    assert (exc.code, exc.status_code) == ("InvalidAccessKeyId.NotFound", 404)


# ================================================================================================
# Independent signers: RPC v1 with Format=XML, ACS3 with and without a form body
# ================================================================================================


async def test_rpc_v1_independent_signature_and_xml(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    code = await face.template(creds, VERIFY_TEXT)
    params = rpc_v1_params(
        creds,
        "SendSms",
        Format="XML",
        PhoneNumbers=CN1,
        SignName="Acme",
        TemplateCode=code,
        TemplateParam='{"code": "12 34*~"}',
        OutId="x y",
        SignatureType="",  # a blank parameter is signed too (the legacy SDK sends it)
    )
    raw = await raw_post(face, rpc_v1_query(params, creds.app_secret))
    assert raw.status == 200, raw.body
    assert raw.headers["Content-Type"] == "text/xml;charset=utf-8"
    assert raw.body.startswith(b"<?xml version='1.0' encoding='UTF-8'?><SendSmsResponse>")
    root = ET.fromstring(raw.body)
    assert root.tag == "SendSmsResponse"
    fields = {child.tag: child.text for child in root}
    assert set(fields) == {"Code", "Message", "BizId", "RequestId"}
    assert (fields["Code"], fields["Message"]) == ("OK", "OK")
    assert fields["RequestId"] == raw.headers["x-acs-request-id"]
    (row,) = await face.messages(creds)
    assert (row.batch_id, row.text, row.client_ref) == (
        fields["BizId"],
        "【Acme】Your code is 12 34*~. Valid 5 minutes.",
        "x y",
    )
    # GET is signed with its own method name.
    query = rpc_v1_query(
        rpc_v1_params(creds, "QuerySmsSign", SignName="Acme"), creds.app_secret, "GET"
    )
    async with face.api.session.get(URL(f"{face.url}/?{query}", encoded=True)) as resp:
        assert resp.status == 200
        assert json.loads(await resp.read())["SignStatus"] == 1
    # A refusal in XML: the root is <Error>, with the HTTP status of the code.
    wrong = rpc_v1_query(rpc_v1_params(creds, "SendSms", Format="XML"), creds.app_secret + "x")
    raw = await raw_post(face, wrong)
    assert raw.status == 400
    root = ET.fromstring(raw.body)
    assert root.tag == "Error"
    assert root.findtext("Code") == "SignatureDoesNotMatch"
    # A business refusal in XML: HTTP 200, the action's root, Code set.
    refused = rpc_v1_params(
        creds, "SendSms", Format="XML", PhoneNumbers="123", SignName="Acme", TemplateCode=code
    )
    raw = await raw_post(face, rpc_v1_query(refused, creds.app_secret))
    root = ET.fromstring(raw.body)
    assert (raw.status, root.tag, root.findtext("Code")) == (
        200,
        "SendSmsResponse",
        "isv.MOBILE_NUMBER_ILLEGAL",
    )


async def test_acs3_independent_signature(face: Face) -> None:
    creds = await face.api.create_account(raw_text=False)
    await approve_sign(face.api.store, creds.account_id, "环球 科技", face.api.ctx.now_ms())
    code = await face.template(creds, NOTIFY_TEXT, "notification")
    query, headers = acs3_request(
        face.host,
        creds,
        "SendSms",
        {
            "PhoneNumbers": CN1,
            "SignName": "环球 科技",
            "TemplateCode": code,
            "TemplateParam": json.dumps({"name": "张三 + 李四*", "order": "a~b"}),
        },
    )
    raw = await raw_post(face, query, headers)
    assert raw.status == 200, raw.body
    assert raw.headers["Content-Type"] == "application/json;charset=utf-8"
    assert raw.json["Code"] == "OK"
    # The batch action with its JSON arrays in a form body (signed through its SHA-256).
    form = "&".join(
        f"{pct(k)}={pct(v)}"
        for k, v in {
            "PhoneNumberJson": json.dumps([CN2]),
            "SignNameJson": json.dumps(["Acme"]),
            "TemplateCode": code,
            "TemplateParamJson": json.dumps([{"name": "Wang", "order": "9"}]),
        }.items()
    ).encode()
    query, headers = acs3_request(
        face.host, creds, "SendBatchSms", {}, form, "application/x-www-form-urlencoded"
    )
    batch = await raw_post(face, query, headers, form)
    assert (batch.status, batch.json["Code"]) == (200, "OK"), batch.body
    rows = await face.messages(creds)
    assert [(r.batch_id, r.text) for r in rows] == [
        (raw.json["BizId"], "【环球 科技】Hello 张三 + 李四*, order a~b has shipped."),
        (batch.json["BizId"], "【Acme】Hello Wang, order 9 has shipped."),
    ]
    # The body changed after signing: its hash no longer matches.
    query, headers = acs3_request(
        face.host, creds, "SendBatchSms", {}, form, "application/x-www-form-urlencoded"
    )
    tampered = await raw_post(face, query, headers, form.replace(CN2.encode(), CN3.encode()))
    assert (tampered.status, tampered.json["Code"]) == (400, "SignatureDoesNotMatch")


# ================================================================================================
# SmsReport webhooks
# ================================================================================================


@dataclass
class Receiver:
    server: TestServer | None = None
    got: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    event: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.port}/sms-report"


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    state = Receiver()

    async def handle(request: web.Request) -> web.Response:
        state.got.append((dict(request.headers), await request.read()))
        state.event.set()
        return web.json_response({"code": 0, "msg": "成功"})

    app = web.Application()
    app.router.add_post("/sms-report", handle)
    state.server = TestServer(app, host="127.0.0.1", port=0)
    await state.server.start_server()
    try:
        yield state
    finally:
        await state.server.close()


async def test_sms_report_webhooks_in_alibaba_shape(face: Face, receiver: Receiver) -> None:
    api = face.api
    creds = await api.create_account(raw_text=False, report_format="aliyun")
    r = await api.admin(
        "PATCH",
        f"/admin/accounts/{creds.account_id}",
        json={"status_callback_url": receiver.url},
    )
    assert r.status == 200, r.json
    code = await face.template(creds, NOTIFY_TEXT, "notification")
    sent = await face.send(creds, code, f"{CN1},{CN2}", {"name": "Li", "order": "5"}, out_id="o-9")
    rows = {r.recipient: r for r in await face.messages(creds)}
    now = api.ctx.now_ms()
    await deliver(
        api,
        {
            rows["+86" + CN1].id: ("delivered", "DELIVRD"),
            rows["+86" + CN2].id: ("undeliverable", "UNDELIV"),
        },
        sent_at=now + SEC,
        done_at=now + 4 * SEC,
    )
    face.clock.advance(5)  # the reports are due from the receipts' time on
    sender = WebhookSender(
        api.store, api.ctx.accounts, api.config.webhooks, clock=face.clock, poll_s=0.05
    )
    sender.tz = api.config.rules.timezone
    task = asyncio.create_task(sender.run())
    try:
        async with asyncio.timeout(10):
            while sum(len(json.loads(body)) for _, body in receiver.got) < 2:
                receiver.event.clear()
                await receiver.event.wait()
    finally:
        await sender.stop()
        await task
    reports = [item for _, body in receiver.got for item in json.loads(body)]
    assert all(isinstance(json.loads(body), list) for _, body in receiver.got)
    common = {
        "send_time": local_time(now + SEC),
        "report_time": local_time(now + 4 * SEC),
        "sms_size": "1",
        "biz_id": sent.biz_id,
        "out_id": "o-9",
    }
    assert sorted(reports, key=lambda x: x["phone_number"]) == [
        {
            **common,
            "phone_number": CN1,
            "success": True,
            "err_code": "DELIVERED",
            "err_msg": "用户接收成功",
        },
        {
            **common,
            "phone_number": CN2,
            "success": False,
            "err_code": "UNDELIV",
            "err_msg": "用户接收失败",
        },
    ]
    for item in reports:
        assert LOCAL_TIME.fullmatch(item["send_time"]) and LOCAL_TIME.fullmatch(item["report_time"])
    assert creds.webhook_secret is not None
    for headers, body in receiver.got:
        assert headers["Content-Type"] == "application/json"
        assert verify_webhook_signature(
            creds.webhook_secret, body, headers[WEBHOOK_HEADER], int(face.clock())
        )
    assert sender.delivered == 2 and sender.dead == 0


async def test_u0000_is_refused_in_a_parameter_and_inside_template_param(face: Face) -> None:
    """U+0000 never reaches the store: no PostgreSQL text column holds it (a 500 there).

    As a form or query parameter (%00, the signature nonce included) it is a malformed call;
    spelled as \\u0000 inside TemplateParam's JSON it is Alibaba's invalid JSON parameter."""
    creds = await face.api.create_account(raw_text=False)
    code = await face.template(creds, VERIFY_TEXT)
    escaped = await _business_refusal(
        face, creds, template_code=code, template_param='{"code":"12\\u00003"}'
    )
    assert escaped.code == "isv.INVALID_JSON_PARAM"
    for name, value in (("SignName", "Ac\x00me"), ("SignatureNonce", "n\x00once")):
        params = rpc_v1_params(creds, "QuerySmsSign", SignName="Acme")
        params[name] = value
        raw = await raw_post(face, rpc_v1_query(params, creds.app_secret))
        assert (raw.status, raw.json["Code"]) == (400, "RequestParameterMalformed"), name
        assert "%00" in raw.json["Message"]
    assert await face.messages(creds) == []
