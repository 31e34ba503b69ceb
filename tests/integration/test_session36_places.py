"""A message that never reached anyone gives back its place in the daily quota's count and in the
per-recipient frequency history (bridge/domain/lifecycle.py never_reached), in the transaction
that ends it: a cancel (one message or a batch), an end by the system after acceptance (an
opt-out, free text or marketing revoked, a sender no longer allowed), and validity expiry unsent.

Before, the count (daily_counts) was only ever added to and the history read every message
accepted in the last 24 hours, so a campaign canceled and scheduled again was refused
DAILY_QUOTA_EXCEEDED or FREQUENCY_LIMIT_DAY for messages that never went out.

A real HTTP server on each store engine of tests/store_engines.py (SQLite file, PostgreSQL).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.store.models import Release, SubmitResult  # noqa: E402
from tests.integration.conftest import ApiServer, Clock, Creds, start_api  # noqa: E402

engine = engines.engine

CN = [f"+86138001380{i:02d}" for i in range(10)]


@pytest.fixture
async def api(engine: Any, tmp_path: Path, clock: Clock) -> AsyncIterator[ApiServer]:
    """One free text a day per number (rules.frequency.raw_text), on each engine."""
    overrides = {"rules": {"frequency": {"raw_text": {"per_day": 1}}}}
    served = await start_api(tmp_path, clock, overrides, store=engine.new_store())
    try:
        yield served
    finally:
        await served.close()


def _tomorrow(api: ApiServer) -> str:
    return (datetime.fromtimestamp(api.clock(), UTC) + timedelta(days=1)).isoformat()


async def _send(api: ApiServer, creds: Creds, to: Any, **extra: Any) -> Any:
    return await api.send(creds, {"to": to, "text": "Sale tomorrow", **extra})


async def _scheduled(api: ApiServer, creds: Creds, to: Any) -> dict[str, Any]:
    r = await _send(api, creds, to, scheduled_at=_tomorrow(api))
    assert r.status == 202, r.json
    return r.json  # type: ignore[no-any-return]


async def test_a_canceled_batch_gives_back_the_daily_quota(api: ApiServer) -> None:
    creds = await api.create_account(daily_quota=3)
    sent = await _scheduled(api, creds, CN[:3])
    r = await _send(api, creds, CN[3])
    assert (r.status, r.code) == (429, "DAILY_QUOTA_EXCEEDED")
    r = await api.request("POST", f"/v1/batches/{sent['batch_id']}/cancel", creds=creds)
    assert (r.status, r.json["canceled"]) == (200, 3), r.json
    # Scheduled again, whole: the three canceled ones are no longer counted.
    again = await _scheduled(api, creds, CN[:3])
    r = await _send(api, creds, CN[3])
    assert (r.status, r.code) == (429, "DAILY_QUOTA_EXCEEDED")
    # One message canceled gives back one place, no more.
    first = again["messages"][0]["id"]
    assert (await api.request("POST", f"/v1/messages/{first}/cancel", creds=creds)).status == 200
    assert (await _send(api, creds, CN[3])).status == 202
    r = await _send(api, creds, CN[4])
    assert (r.status, r.code) == (429, "DAILY_QUOTA_EXCEEDED")


async def test_a_canceled_message_leaves_the_frequency_history(api: ApiServer) -> None:
    creds = await api.create_account()
    sent = await _scheduled(api, creds, CN[0])
    r = await _send(api, creds, CN[0])
    assert (r.status, r.code) == (429, "FREQUENCY_LIMIT_DAY")
    mid = sent["messages"][0]["id"]
    assert (await api.request("POST", f"/v1/messages/{mid}/cancel", creds=creds)).status == 200
    assert (await _send(api, creds, CN[0])).status == 202
    # The new one counts: the limit holds again.
    r = await _send(api, creds, CN[0])
    assert (r.status, r.code) == (429, "FREQUENCY_LIMIT_DAY")


async def test_a_batch_cancel_frees_every_number(api: ApiServer) -> None:
    creds = await api.create_account()
    sent = await _scheduled(api, creds, CN[:4])
    r = await api.request("POST", f"/v1/batches/{sent['batch_id']}/cancel", creds=creds)
    assert r.json["canceled"] == 4
    assert (await _scheduled(api, creds, CN[:4]))["count"] == 4


async def test_a_message_sent_keeps_its_places(api: ApiServer) -> None:
    """Only what never reached anyone is given back: a message on a bind is not canceled,
    and a message whose part the SMSC accepted stays counted."""
    creds = await api.create_account(daily_quota=1)
    (mid,) = [m["id"] for m in (await _send(api, creds, CN[0])).json["messages"]]
    work = await api.store.claim("inst", 10, api.ctx.now_ms(), 60_000)
    assert [w.id for w in work] == [mid]
    r = await api.request("POST", f"/v1/messages/{mid}/cancel", creds=creds)
    assert (r.status, r.code) == (409, "NOT_CANCELABLE")
    r = await _send(api, creds, CN[1])
    assert (r.status, r.code) == (429, "DAILY_QUOTA_EXCEEDED")


async def test_an_opt_out_gives_back_the_places_of_what_it_ended(api: ApiServer) -> None:
    creds = await api.create_account(daily_quota=2)
    await _scheduled(api, creds, CN[:2])
    r = await api.request("POST", "/v1/optouts", creds=creds, json={"numbers": [CN[0]]})
    assert r.status == 200, r.json
    # CN[0]'s message ended unsent (RECIPIENT_OPTED_OUT): one place back today.
    assert (await _send(api, creds, CN[2])).status == 202
    r = await _send(api, creds, CN[3])
    assert (r.status, r.code) == (429, "DAILY_QUOTA_EXCEEDED")


async def test_free_text_revoked_gives_back_the_places(api: ApiServer) -> None:
    creds = await api.create_account(daily_quota=2)
    await _scheduled(api, creds, CN[:2])
    ref = creds.account_id
    r = await api.admin("PATCH", f"/admin/accounts/{ref}", json={"raw_text": False})
    assert r.status == 200, r.json
    r = await api.admin("PATCH", f"/admin/accounts/{ref}", json={"raw_text": True})
    assert r.status == 200, r.json
    # Both ended RAW_TEXT_NOT_ALLOWED: the day's count and each number's history are free.
    assert (await _scheduled(api, creds, CN[:2]))["count"] == 2


async def test_a_sender_no_longer_allowed_gives_back_the_places(api: ApiServer) -> None:
    creds = await api.create_account(daily_quota=1, senders=["1065901"])
    r = await api.send(
        creds, {"to": CN[0], "text": "hi", "sender": "1065901", "scheduled_at": _tomorrow(api)}
    )
    assert r.status == 202, r.json
    mid = r.json["messages"][0]["id"]
    r = await api.admin(
        "PATCH", f"/admin/accounts/{creds.account_id}", json={"senders": ["1065902"]}
    )
    assert r.status == 200, r.json
    m = await api.request("GET", f"/v1/messages/{mid}", creds=creds)
    assert (m.json["status"], m.json["error_code"]) == ("expired", "SENDER_NOT_ALLOWED")
    assert (await _send(api, creds, CN[0])).status == 202


async def test_validity_expiry_unsent_gives_back_the_places(api: ApiServer) -> None:
    creds = await api.create_account(daily_quota=1)
    r = await _send(api, creds, CN[0], validity_minutes=5)
    assert r.status == 202, r.json
    mid = r.json["messages"][0]["id"]
    r = await _send(api, creds, CN[0])
    assert (r.status, r.code) == (429, "FREQUENCY_LIMIT_DAY")
    # No SMSC took it in time: the sweep ends it expired, VALIDITY_EXPIRED.
    await api.store.sweep(api.ctx.now_ms() + 6 * 60_000, 72 * 3_600_000)
    m = await api.request("GET", f"/v1/messages/{mid}", creds=creds)
    assert (m.json["status"], m.json["error_code"]) == ("expired", "VALIDITY_EXPIRED")
    assert (await _send(api, creds, CN[0])).status == 202


async def test_expired_at_the_dispatcher_gives_back_the_places(api: ApiServer) -> None:
    """The dispatcher's own expiry (its claim found the validity passed): the same rule."""
    creds = await api.create_account(daily_quota=1)
    r = await _send(api, creds, CN[0], validity_minutes=5)
    mid = r.json["messages"][0]["id"]
    now = api.ctx.now_ms()
    (work,) = await api.store.claim("inst", 10, now, 60_000)
    assert work.id == mid
    await api.store.record_submits(
        [SubmitResult(mid, 1, "expired", "", at=now)], [], now, instance="inst"
    )
    m = await api.request("GET", f"/v1/messages/{mid}", creds=creds)
    assert (m.json["status"], m.json["error_code"]) == ("expired", "VALIDITY_EXPIRED")
    assert (await _send(api, creds, CN[0])).status == 202


async def test_a_held_message_ended_after_an_unanswered_submit_keeps_its_places(
    api: ApiServer,
) -> None:
    """A submit never answered may have reached the phone: ended later (its hold passed after
    an opt-out), the message keeps its places."""
    creds = await api.create_account(daily_quota=1)
    mid = (await _send(api, creds, CN[0])).json["messages"][0]["id"]
    now = api.ctx.now_ms()
    assert [w.id for w in await api.store.claim("inst", 10, now, 60_000)] == [mid]
    await api.store.record_submits(
        [], [Release(mid, now + 1_000, count_attempt=True, unanswered=True)], now, instance="inst"
    )
    r = await api.request("POST", "/v1/optouts", creds=creds, json={"numbers": [CN[0]]})
    assert r.status == 200
    await api.store.sweep(now + 60_000, 72 * 3_600_000)
    m = await api.request("GET", f"/v1/messages/{mid}", creds=creds)
    assert (m.json["status"], m.json["error_code"]) == ("expired", "RECIPIENT_OPTED_OUT")
    r = await _send(api, creds, CN[1])
    assert (r.status, r.code) == (429, "DAILY_QUOTA_EXCEEDED")
