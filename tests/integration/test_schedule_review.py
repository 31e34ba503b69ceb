"""Review of scheduled sends and validity, end to end, through the real HTTP API and store:
`scheduled_at` parsing and bounds, `validity_minutes` and the expiry it sets, the SMPP
validity_period of each part, the daily quota, the queue view and the sweep.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bridge.pipeline.submit_sm import build_parts, smpp_absolute_time
from tests.integration.conftest import ApiServer, Creds
from tests.sending import submit_template

CN = "+8613800138000"
# A whole second, well away from any local midnight in Asia/Shanghai (02:00 UTC = 10:00 local).
T0 = datetime(2030, 3, 12, 2, 0, 0, tzinfo=UTC).timestamp()


@pytest.fixture
async def api(make_api: Callable[..., Awaitable[ApiServer]], clock: Any) -> ApiServer:
    clock.freeze(T0)
    return await make_api()


def _iso(dt: datetime) -> str:
    return dt.isoformat()


async def _send(api: ApiServer, creds: Creds, **extra: Any) -> Any:
    return await api.send(creds, {"to": CN, "text": "Sale tomorrow", **extra})


async def _message(api: ApiServer, creds: Creds, mid: str) -> dict[str, Any]:
    r = await api.request("GET", f"/v1/messages/{mid}", creds=creds)
    assert r.status == 200, r.json
    return r.json


def _now(api: ApiServer) -> datetime:
    return datetime.fromtimestamp(api.clock(), UTC)


# -- parsing -------------------------------------------------------------------------------------


async def test_offsets_z_and_fractions_give_the_same_instant(api: ApiServer) -> None:
    creds = await api.create_account()
    due = _now(api) + timedelta(hours=5, milliseconds=250)
    for text in (
        due.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        due.astimezone(UTC).isoformat(),
        due.astimezone(UTC).isoformat().replace("+00:00", "-00:00"),
        due.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        (due + timedelta(hours=8)).replace(tzinfo=None).isoformat() + "+08:00",
        (due - timedelta(hours=5, minutes=30)).replace(tzinfo=None).isoformat() + "-05:30",
    ):
        r = await _send(api, creds, scheduled_at=text)
        assert r.status == 202, (text, r.json)
        m = await _message(api, creds, r.json["messages"][0]["id"])
        assert m["scheduled_at"] == due.isoformat(timespec="milliseconds").replace("+00:00", "Z"), (
            text
        )


async def test_rfc3339_lowercase_z_is_accepted(api: ApiServer) -> None:
    """RFC 3339 5.6 (the `date-time` format /openapi.json declares): "T" and "Z" may be lower
    case. A client formatting with a lower-case z is told its time is not ISO-8601."""
    creds = await api.create_account()
    due = _now(api) + timedelta(hours=1)
    r = await _send(api, creds, scheduled_at=due.strftime("%Y-%m-%dT%H:%M:%Sz"))
    assert r.status == 202, r.json


async def test_no_offset_is_refused(api: ApiServer) -> None:
    creds = await api.create_account()
    due = (_now(api) + timedelta(hours=1)).replace(tzinfo=None)
    for text in (due.isoformat(), due.date().isoformat()):
        r = await _send(api, creds, scheduled_at=text)
        assert (r.status, r.code) == (400, "INVALID_FIELD"), text
        assert "scheduled_at" in r.message


async def test_past_and_now_are_sent_at_once(api: ApiServer) -> None:
    creds = await api.create_account()
    for text in (
        _now(api).isoformat(),
        (_now(api) - timedelta(days=400)).isoformat(),
        "0001-01-01T00:00:00Z",
    ):
        r = await _send(api, creds, scheduled_at=text, validity_minutes=10)
        assert r.status == 202, (text, r.json)
        m = await _message(api, creds, r.json["messages"][0]["id"])
        assert m["scheduled_at"] is None, text
        # validity counts from now, not from the past instant
        assert m["expires_at"] == (_now(api) + timedelta(minutes=10)).isoformat(
            timespec="milliseconds"
        ).replace("+00:00", "Z")
    work = await api.store.claim("inst", 10, api.ctx.now_ms(), 60_000)
    assert len(work) == 3


async def test_thirty_days_is_the_bound(api: ApiServer) -> None:
    creds = await api.create_account()
    limit = _now(api) + timedelta(days=30)
    r = await _send(api, creds, scheduled_at=limit.isoformat())
    assert r.status == 202, r.json
    for over in (timedelta(seconds=1), timedelta(milliseconds=1)):
        r = await _send(api, creds, scheduled_at=(limit + over).isoformat())
        assert (r.status, r.code) == (422, "INVALID_SCHEDULE"), over
    r = await _send(api, creds, scheduled_at="9999-12-31T23:00:00-05:00")
    assert r.code in ("INVALID_SCHEDULE", "INVALID_FIELD")  # refused, never a 500


# -- validity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, 10081, True, 1.5, "60", None])
async def test_validity_bounds(api: ApiServer, bad: Any) -> None:
    creds = await api.create_account()
    r = await _send(api, creds, validity_minutes=bad)
    if bad is None:
        assert r.status == 202
    else:
        assert (r.status, r.code) == (400, "INVALID_FIELD"), bad


async def test_validity_counts_from_the_scheduled_time_and_goes_on_the_wire(
    api: ApiServer,
) -> None:
    creds = await api.create_account()
    due = _now(api) + timedelta(days=2)
    r = await _send(api, creds, scheduled_at=due.isoformat(), validity_minutes=10080)
    assert r.status == 202, r.json
    mid = r.json["messages"][0]["id"]
    m = await _message(api, creds, mid)
    expires = due + timedelta(minutes=10080)
    assert m["expires_at"] == expires.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    # not claimable before it is due
    assert await api.store.claim("inst", 10, api.ctx.now_ms(), 60_000) == []
    api.clock.advance(2 * 86_400 - 1)
    assert await api.store.claim("inst", 10, api.ctx.now_ms(), 60_000) == []
    api.clock.advance(1)
    (work,) = await api.store.claim("inst", 10, api.ctx.now_ms(), 60_000)
    assert work.id == mid
    (part,) = build_parts(work, api.config.smscs[0])
    assert part.validity_period == smpp_absolute_time(int(expires.timestamp() * 1000))
    assert part.validity_period == expires.strftime("%y%m%d%H%M%S") + "000+"


async def test_smsc_validity_is_relative_without_a_request_validity(
    make_api: Callable[..., Awaitable[ApiServer]], clock: Any
) -> None:
    clock.freeze(T0)
    api = await make_api({"smscs": [{"name": "main", "system_id": "b", "validity_minutes": 90}]})
    creds = await api.create_account()
    r = await _send(api, creds)
    assert r.status == 202
    (work,) = await api.store.claim("inst", 10, api.ctx.now_ms(), 60_000)
    (part,) = build_parts(work, api.config.smscs[0])
    assert part.validity_period == "000000013000000R"


# -- quota, queue, expiry ------------------------------------------------------------------------


async def test_a_message_scheduled_for_tomorrow_counts_today(api: ApiServer) -> None:
    creds = await api.create_account(daily_quota=1)
    r = await _send(api, creds, scheduled_at=(_now(api) + timedelta(days=1)).isoformat())
    assert r.status == 202
    r = await _send(api, creds)
    assert (r.status, r.code) == (429, "DAILY_QUOTA_EXCEEDED")
    api.clock.advance(86_400)
    r = await _send(api, creds)
    assert r.status == 202, r.json


async def test_queue_view_counts_scheduled_then_ready(api: ApiServer) -> None:
    creds = await api.create_account()
    r = await _send(api, creds, scheduled_at=(_now(api) + timedelta(hours=1)).isoformat())
    assert r.status == 202
    q = await api.admin("GET", "/admin/queue")
    assert q.status == 200, q.json
    assert q.json["by_state"]["scheduled"]["messages"] == 1, q.json
    assert q.json["by_state"]["ready"]["messages"] == 0, q.json
    api.clock.advance(3600 + 30)
    q = await api.admin("GET", "/admin/queue")
    assert q.json["by_state"]["scheduled"]["messages"] == 0, q.json
    assert q.json["by_state"]["ready"]["messages"] == 1, q.json
    assert q.json["oldest_age_s"] == pytest.approx(30, abs=1), q.json


async def test_a_due_scheduled_message_never_claimed_expires_and_is_refunded(
    api: ApiServer,
) -> None:
    creds = await api.create_account(status_callback_url="https://acme/status")
    bal = await api.request("GET", "/v1/balance", creds=creds)
    before = bal.json["cash_micro"]
    due = _now(api) + timedelta(hours=1)
    r = await _send(api, creds, scheduled_at=due.isoformat(), validity_minutes=5)
    mid = r.json["messages"][0]["id"]
    # before it is due + validity: the sweep leaves it
    api.clock.advance(3600 + 299)
    assert (await api.store.sweep(api.ctx.now_ms(), 3_600_000))["expired"] == 0
    api.clock.advance(1)
    assert (await api.store.sweep(api.ctx.now_ms(), 3_600_000))["expired"] == 1
    m = await _message(api, creds, mid)
    assert (m["status"], m["error_code"]) == ("expired", "VALIDITY_EXPIRED")
    bal = await api.request("GET", "/v1/balance", creds=creds)
    assert bal.json["cash_micro"] == before


async def test_scheduled_messages_do_not_fill_the_back_pressure_limit(
    make_api: Callable[..., Awaitable[ApiServer]], clock: Any
) -> None:
    """Back-pressure is for a backlog the carriers cannot keep up with (design.md 4; the queue
    view itself says "waiting for their time is not a backlog"). A campaign scheduled for next
    week counted in store.max_queued_segments makes every account's sends, verification codes
    included, 503 QUEUE_FULL until it is due, though nothing waits to be sent."""
    clock.freeze(T0)
    api = await make_api({"store": {"max_queued_segments": 3}})
    campaign = await api.create_account()
    later = (_now(api) + timedelta(days=7)).isoformat()
    r = await api.send(
        campaign,
        {"to": [CN, "+8613800138001", "+8613800138002"], "text": "Sale", "scheduled_at": later},
    )
    assert r.status == 202, r.json
    api.ctx.queue_depth = await api.store.queue_depth(due_at=api.ctx.now_ms())  # the refresh
    other = await api.create_account()
    r = await _send(api, other)
    assert r.status == 202, r.json


async def test_a_scheduled_message_whose_template_is_rejected_meanwhile_is_not_sent(
    api: ApiServer,
) -> None:
    """service-rules.md: "only approved templates can be sent". An operator who rejects a
    template (or a sign) still has every message scheduled with it, up to 30 days ahead, go out
    when due; opt-outs, do-not-contact lists, erasure and closing all end such messages."""
    creds = await api.create_account(raw_text=False)
    code = (await submit_template(api, creds, "Your code is ${code}"))["code"]
    r = await api.admin("POST", f"/admin/templates/{code}/review", json={"decision": "approve"})
    assert r.status == 200, r.json
    due = _now(api) + timedelta(days=3)
    r = await api.send(
        creds,
        {"to": CN, "sign_name": "Acme", "template": code, "params": {"code": "1234"},
         "scheduled_at": due.isoformat()},
    )  # fmt: skip
    assert r.status == 202, r.json
    mid = r.json["messages"][0]["id"]
    r = await api.admin(
        "POST", f"/admin/templates/{code}/review",
        json={"decision": "reject", "reason": "fraudulent content"},
    )  # fmt: skip
    assert r.status == 200, r.json
    api.clock.advance(3 * 86_400)
    await api.store.sweep(api.ctx.now_ms(), 3_600_000)
    work = await api.store.claim("inst", 10, api.ctx.now_ms(), 60_000)
    assert [w.id for w in work] == [], "a message with a rejected template went to the SMSC"
    m = await _message(api, creds, mid)
    assert m["status"] == "expired", m
