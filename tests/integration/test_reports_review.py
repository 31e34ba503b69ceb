"""Adversarial review of what customers read back: message status, statistics, CDRs and the
Alibaba-compatible query actions, over a real SQLite file and real aiohttp servers.

Findings (each test below fails on the code as reviewed, for the reason named):

1. QuerySendStatistics bins every day of the window with the UTC offset of its first day
   (aliyun_actions.query_send_statistics): in a time zone with daylight saving time, messages
   sent in the first local hour after the clocks go forward are counted on the day before.
   The same arithmetic (calendar days as 24 h of milliseconds) refuses 20241001..20241031 in
   Europe/Berlin as "more than 30 days", because October 27 has 25 hours.
2. QuerySendStatistics with StartDate 00010101 (a date `_day_bounds` accepts) crashes in
   `datetime.fromtimestamp` ("year 0 is out of range"): HTTP 500 InternalError instead of
   Alibaba's parameter error.
3. QuerySendStatistics ignores IsGlobe: IsGlobe=1 (domestic, Mainland China) counts messages to
   foreign numbers as well, and IsGlobe=2 (international) is always empty even for an account
   that sends abroad.
4. A message the SMSC splits itself (`split: payload`) reads back delivered with
   `segments_delivered` 1 of `segments` 2 (GET /v1/messages/{id}, and the status webhook): the
   roll-up counts segment rows (one PDU) where `segments` and `segments_sent` count the parts on
   the air.
5. GET /v1/ledger silently ignores query parameters it does not know: `cursor` (the name of the
   page's own `next_cursor` field and of the cursor parameter of /v1/messages and /v1/optouts)
   returns the first page again, so a client paging with it loops for ever. /v1/messages,
   /v1/stats and /v1/cdrs refuse unknown parameters with 400 UNKNOWN_FIELD (/v1/optouts also
   ignores them).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestServer

from bridge.compat.aliyun_api import make_aliyun_app
from bridge.domain.ledger import topup
from bridge.store.models import AcceptBatch, NewMessage, NewSegment, ReceiptIn, SubmitResult
from tests.integration.conftest import ApiServer, Clock, Creds
from tests.integration.test_aliyun_api import (
    Face,
    Raw,
    local_day,
    local_midnight_ms,
    raw_post,
    rpc_v1_params,
    rpc_v1_query,
)

SMSC = "main"
LEASE = 300_000
BERLIN = ZoneInfo("Europe/Berlin")

FaceFactory = Callable[..., Awaitable[Face]]


@pytest.fixture
async def make_face(make_api: Any, clock: Clock) -> AsyncIterator[FaceFactory]:
    """An Alibaba face over a test server with config overrides. The clock is frozen at the real
    time (the independent signer stamps calls with it), out of the last minutes of a local day in
    Shanghai, so "today" stays one day during a test."""
    now = int(time.time())
    if local_midnight_ms(now * 1000 + 120_000) > now * 1000:
        now -= 180
    clock.freeze(now)
    servers: list[TestServer] = []

    async def factory(overrides: Mapping[str, Any] | None = None) -> Face:
        api = await make_api({"aliyun": {"enabled": True}, **(overrides or {})})
        server = TestServer(make_aliyun_app(api.ctx), host="127.0.0.1", port=0)
        await server.start_server()
        servers.append(server)
        return Face(api, server, clock)

    yield factory
    for server in servers:
        await server.close()


async def call(face: Face, creds: Creds, action: str, **params: str) -> Raw:
    query = rpc_v1_query(rpc_v1_params(creds, action, **params), creds.app_secret)
    return await raw_post(face, query)


def message(account_id: str, at: int, to: str = "+8613800138000") -> NewMessage:
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


async def put(api: ApiServer, *messages: NewMessage) -> None:
    for m in messages:
        out = await api.store.accept(AcceptBatch(m.account_id, (m,), None, None), m.accepted_at)
        assert out.accepted


def berlin_ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=BERLIN).timestamp() * 1000)  # type: ignore[misc]


def counts(raw: Raw) -> dict[str, int]:
    assert raw.status == 200, raw.body
    body = raw.json
    assert body["Code"] == "OK", body
    return {t["SendDate"]: t["TotalCount"] for t in body["Data"]["TargetList"]}


# -- 1. QuerySendStatistics across a daylight-saving change ---------------------------------------


async def test_statistics_days_follow_the_local_offset_after_a_dst_change(
    make_face: FaceFactory,
) -> None:
    """rules.timezone Europe/Berlin; the clocks went forward at 02:00 on 2024-03-31. A message
    at 00:30 local on 2024-04-01 (CEST, 22:30 UTC the day before) belongs to 20240401; the query
    starting on 20240330 (CET, +1 h) shifts it by the winter offset and files it under 20240331."""
    face = await make_face({"rules": {"timezone": "Europe/Berlin"}})
    creds = await face.api.create_account(raw_text=False)
    await put(
        face.api,
        message(creds.account_id, berlin_ms(2024, 3, 30, 12, 0)),
        message(creds.account_id, berlin_ms(2024, 4, 1, 0, 30)),
    )
    got = counts(
        await call(
            face, creds, "QuerySendStatistics",
            IsGlobe="1", StartDate="20240330", EndDate="20240401", PageSize="10",
        )
    )  # fmt: skip
    assert got == {"20240330": 1, "20240401": 1}


async def test_statistics_thirty_day_limit_holds_across_the_autumn_change(
    make_face: FaceFactory,
) -> None:
    """EndDate at most 30 days after StartDate: 20240101..20240131 is taken. In Europe/Berlin
    20241001..20241031 is the same span, but October 27 has 25 hours, so the limit, checked as
    31 x 24 h of milliseconds, refuses it (isv.INVALID_PARAMETERS)."""
    face = await make_face({"rules": {"timezone": "Europe/Berlin"}})
    creds = await face.api.create_account(raw_text=False)
    january = await call(
        face, creds, "QuerySendStatistics", IsGlobe="1", StartDate="20240101", EndDate="20240131"
    )
    assert counts(january) == {}
    october = await call(
        face, creds, "QuerySendStatistics", IsGlobe="1", StartDate="20241001", EndDate="20241031"
    )
    assert counts(october) == {}


# -- 2. QuerySendStatistics at the first representable date ---------------------------------------


async def test_statistics_from_year_one_is_a_parameter_error_not_a_500(
    make_face: FaceFactory,
) -> None:
    """`_day_bounds` takes 00010101 (QuerySendDetails answers it), but the statistics then ask
    `datetime.fromtimestamp` for local midnight of 0001-01-01 in the host's zone: year 0, a
    ValueError, and the face answers 500 InternalError."""
    face = await make_face()
    creds = await face.api.create_account(raw_text=False)
    r = await call(
        face, creds, "QuerySendStatistics", IsGlobe="1", StartDate="00010101", EndDate="00010102"
    )
    assert r.status < 500, (r.status, r.body)
    # Either an empty answer or Alibaba's parameter refusal (HTTP 200 with an isv.* code).
    assert r.status == 200 and (r.json["Code"] == "OK" or r.json["Code"].startswith("isv.")), r.json


# -- 3. QuerySendStatistics IsGlobe ----------------------------------------------------------------


async def test_statistics_is_globe_separates_domestic_from_international(
    make_face: FaceFactory,
) -> None:
    """Two messages today: one to a Chinese mobile, one to a US number. IsGlobe=1 (domestic)
    counts both; IsGlobe=2 (international) counts none."""
    face = await make_face()
    creds = await face.api.create_account()  # raw text allowed
    for to in ("+8613800138000", "+12025550123"):
        r = await face.api.send(creds, {"to": to, "text": "[Acme] hello"})
        assert r.status == 202, r.json
    day = local_day(face.api.ctx.now_ms())  # rules.timezone: Asia/Shanghai
    domestic = counts(
        await call(face, creds, "QuerySendStatistics", IsGlobe="1", StartDate=day, EndDate=day)
    )
    international = counts(
        await call(face, creds, "QuerySendStatistics", IsGlobe="2", StartDate=day, EndDate=day)
    )
    assert (domestic, international) == ({day: 1}, {day: 1})


# -- 4. segments_delivered of a message the SMSC split -------------------------------------------


async def test_payload_split_message_reads_back_all_segments_delivered(
    make_api: Any, clock: Clock
) -> None:
    """split: payload: a 200-character text goes as one submit_sm (message_payload) that the
    SMSC splits into 2 segments; `segments` says 2 and the receipt for the PDU delivers the whole
    message. The status then reads `delivered` with `segments_delivered` 1 (and the same pair
    goes out in the status webhook), as if half the message had not arrived."""
    clock.freeze()
    api = await make_api({"smscs": [{"name": SMSC, "system_id": "bridge", "split": "payload"}]})
    creds = await api.create_account()
    r = await api.send(creds, {"to": "+12025550123", "text": "x" * 200})
    assert r.status == 202, r.json
    (sent,) = r.json["messages"]
    assert sent["segments"] == 2
    now = api.ctx.now_ms()
    work = await api.store.claim("inst", 100, now, LEASE)
    results = [
        SubmitResult(w.id, s.seq, "sent", SMSC, f"S-{w.id}-{s.seq}", f"S-{w.id}-{s.seq}", at=now)
        for w in work
        for s in w.segments
    ]
    assert len(results) == 1  # one PDU
    await api.store.record_submits(results, [], now, instance="inst")
    clock.advance(5)
    done = api.ctx.now_ms()
    ident = results[0].smsc_msg_id
    await api.store.apply_receipts(
        [ReceiptIn(SMSC, ident, "delivered", "DELIVRD", None, done, done, raw=f"id:{ident}")], done
    )
    got = await api.request("GET", f"/v1/messages/{sent['id']}", creds=creds)
    assert got.status == 200
    view = got.json
    assert view["status"] == "delivered"
    assert (view["segments"], view["segments_sent"], view["segments_delivered"]) == (2, 2, 2)


# -- 5. the ledger's cursor parameter ------------------------------------------------------------


async def test_ledger_refuses_a_cursor_it_does_not_read(api_server: ApiServer) -> None:
    """GET /v1/ledger answers `next_cursor` but reads its cursor from `after`; `cursor` (the
    parameter of /v1/messages and /v1/optouts, and the name of the field the page carries) is
    silently ignored, so a client paging with it gets the first page again, for ever.
    /v1/messages, /v1/stats and /v1/cdrs refuse a parameter they do not know (400
    UNKNOWN_FIELD)."""
    creds = await api_server.create_account()  # one top-up: ledger entry 1
    await api_server.store.append_ledger(
        creds.account_id, topup(5_000_000, api_server.ctx.now_ms(), "second")
    )
    first = await api_server.request("GET", "/v1/ledger", creds=creds, query="limit=1")
    assert first.status == 200
    cursor = first.json["next_cursor"]
    assert cursor is not None
    again = await api_server.request(
        "GET", "/v1/ledger", creds=creds, query=f"cursor={cursor}&limit=1"
    )
    # Fixed by reading `cursor` as `after`'s other name, and refusing names it does not read.
    assert again.status == 200
    assert again.json["entries"] != first.json["entries"], "the first page again"
    assert [e["ref"] for e in again.json["entries"]] == ["second"]
    for path, query in (
        ("/v1/ledger", "page=2"),
        ("/v1/optouts", "after=x"),
        ("/v1/templates", "x=1"),
    ):
        unknown = await api_server.request("GET", path, creds=creds, query=query)
        assert (unknown.status, unknown.code) == (400, "UNKNOWN_FIELD"), path
