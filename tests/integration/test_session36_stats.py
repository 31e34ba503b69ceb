"""GET /v1/stats counts canceled messages as `canceled` and messages the system ended unsent
before any submit (an opt-out, a rule change) as `withdrawn`, apart from `failed` (what carriers
failed, what expired); `submitted` is still the sum of the buckets (lifecycle.stat_of).

Before, `failed` counted every ended-unsent message (state expired): an operator reading it as
carrier failures saw a campaign canceled by its customer as a carrier incident.

A real HTTP server on each store engine of tests/store_engines.py; the reply is checked against
/openapi.json.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.store.models import Release, SubmitResult  # noqa: E402
from tests.integration.conftest import ApiServer, Creds  # noqa: E402

engine = engines.engine

CN = [f"+86138001380{i:02d}" for i in range(10)]


@pytest.fixture
def api(engine_api: ApiServer) -> ApiServer:
    return engine_api


def _tomorrow(api: ApiServer) -> str:
    return (datetime.fromtimestamp(api.clock(), UTC) + timedelta(days=1)).isoformat()


async def _one(api: ApiServer, creds: Creds, to: str, **extra: Any) -> str:
    r = await api.send(creds, {"to": to, "text": "Sale tomorrow", **extra})
    assert r.status == 202, r.json
    return str(r.json["messages"][0]["id"])


async def test_stats_count_canceled_and_withdrawn_apart_from_failed(api: ApiServer) -> None:
    creds = await api.create_account()
    # A submit the SMSC refused: failed.
    refused = await _one(api, creds, CN[0])
    now = api.ctx.now_ms()
    (work,) = await api.store.claim("inst", 10, now, 60_000)
    assert work.id == refused
    await api.store.record_submits(
        [SubmitResult(refused, 1, "failed", "main", error_code="ESME_RINVDSTADR")],
        [],
        now,
        instance="inst",
    )
    # A submit never answered (it may have gone out), then an opt-out: failed, not withdrawn.
    held = await _one(api, creds, CN[5])
    t = api.ctx.now_ms()
    assert [w.id for w in await api.store.claim("inst", 10, t, 60_000)] == [held]
    await api.store.record_submits(
        [], [Release(held, t + 1_000, count_attempt=True, unanswered=True)], t, instance="inst"
    )
    # Validity passed while it waited: expired, counted with failed as before.
    expired = await _one(api, creds, CN[1], validity_minutes=5)
    # Canceled by the customer; withdrawn by an opt-out; one still scheduled.
    canceled = await _one(api, creds, CN[2], scheduled_at=_tomorrow(api))
    await _one(api, creds, CN[3], scheduled_at=_tomorrow(api))
    await _one(api, creds, CN[4], scheduled_at=_tomorrow(api))
    r = await api.request("POST", f"/v1/messages/{canceled}/cancel", creds=creds)
    assert r.status == 200, r.json
    r = await api.request("POST", "/v1/optouts", creds=creds, json={"numbers": [CN[3], CN[5]]})
    assert r.status == 200, r.json
    await api.store.sweep(now + 6 * 60_000, 72 * 3_600_000)
    states = {}
    for mid in (refused, expired, held):
        m = await api.request("GET", f"/v1/messages/{mid}", creds=creds)
        states[mid] = (m.json["status"], m.json["error_code"])
    assert states == {
        refused: ("failed", "ESME_RINVDSTADR"),
        expired: ("expired", "VALIDITY_EXPIRED"),
        held: ("expired", "RECIPIENT_OPTED_OUT"),
    }
    day = datetime.fromtimestamp(now / 1000, UTC).date().isoformat()
    r = await api.request("GET", "/v1/stats", creds=creds, query=f"from={day}&to={day}")
    assert r.status == 200, r.json
    totals = r.json["totals"]
    assert {k: v for k, v in totals.items() if k not in ("segments", "units")} == {
        "submitted": 6,
        "delivered": 0,
        "failed": 3,
        "canceled": 1,
        "withdrawn": 1,
        "pending": 1,
        "unknown": 0,
    }
    assert r.json["days"][0]["canceled"] == 1 and r.json["days"][0]["withdrawn"] == 1
    buckets = ("delivered", "failed", "canceled", "withdrawn", "pending", "unknown")
    assert totals["submitted"] == sum(totals[k] for k in buckets)
