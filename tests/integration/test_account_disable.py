"""Disabling an account stops its traffic: the messages still waiting in the queue (scheduled
ones included) end unsent with ACCOUNT_DISABLED, refunded, with a status report; a message
already on a bind goes on. Before, only new requests were refused: a campaign the account had
scheduled (a leaked key, fraud: why an operator disables) kept going out.

A real HTTP server on each store engine of tests/store_engines.py.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from tests.integration.conftest import ApiServer  # noqa: E402
from tests.integration.test_cancel import _cash, _send, _status_reports  # noqa: E402

engine = engines.engine

CN = ["+8613800138000", "+8613800138001", "+8613800138002"]


@pytest.fixture
def api(engine_api: ApiServer) -> ApiServer:
    return engine_api


async def test_disabling_ends_what_waits_and_lets_what_is_on_a_bind_finish(api: ApiServer) -> None:
    creds = await api.create_account(status_callback_url="https://acme/status")
    other = await api.create_account()
    before = await _cash(api, creds)
    tomorrow = (datetime.fromtimestamp(api.clock(), UTC) + timedelta(days=1)).isoformat()
    now_ids = [m["id"] for m in (await _send(api, creds, CN[:2]))["messages"]]
    (later,) = [
        m["id"] for m in (await _send(api, creds, CN[2], scheduled_at=tomorrow))["messages"]
    ]
    (others,) = [m["id"] for m in (await _send(api, other, CN[0]))["messages"]]
    charged = before - await _cash(api, creds)
    # One of the account's messages is on a bind: claimed by a dispatcher (the other account's
    # too, maybe; it is not this account's business).
    work = await api.store.claim("inst", 1, api.ctx.now_ms(), 60_000)
    on_bind = [w.id for w in work if w.account_id == creds.account_id]
    if not on_bind:  # the claim took the other account's: take one of ours as well
        work = await api.store.claim("inst", 3, api.ctx.now_ms(), 60_000)
        on_bind = [w.id for w in work if w.account_id == creds.account_id][:1]
    assert len(on_bind) == 1 and on_bind[0] in now_ids

    r = await api.admin("POST", f"/admin/accounts/{creds.account_id}/disable")
    assert r.status == 200, r.json

    states = {}
    for mid in [*now_ids, later]:
        rec = await api.store.get_message(creds.account_id, mid)
        assert rec is not None
        states[mid] = (rec.state, rec.error_code)
    assert states.pop(on_bind[0]) == ("queued", None)  # handed to an SMSC: it finishes
    assert set(states.values()) == {("expired", "ACCOUNT_DISABLED")}
    assert len(states) == 2  # the other one sent now, and tomorrow's
    reports = await _status_reports(api)
    assert all(mid in reports for mid in states)
    # Nothing of the account's is claimed any more, tomorrow included; the other account's is.
    later_work = await api.store.claim("inst", 10, api.ctx.now_ms() + 2 * 86_400_000, 60_000)
    assert creds.account_id not in {w.account_id for w in later_work}
    rec = await api.store.get_message(other.account_id, others)
    assert rec is not None and rec.error_code is None
    # Enabling again resumes sending, and ends nothing more.
    r = await api.admin("POST", f"/admin/accounts/{creds.account_id}/enable")
    assert r.status == 200, r.json
    # Refunded (the balance is read once enabled: a disabled account's requests are refused):
    # only the message on a bind stays charged.
    assert (before - await _cash(api, creds)) * 3 == charged
    r = await api.send(creds, {"to": CN[0], "text": "back"})
    assert r.status == 202, r.json


async def test_disabling_a_disabled_account_again_changes_nothing(api: ApiServer) -> None:
    creds = await api.create_account()
    r = await api.admin("POST", f"/admin/accounts/{creds.account_id}/disable")
    assert r.status == 200
    r = await api.admin("POST", f"/admin/accounts/{creds.account_id}/disable")
    assert r.status == 200 and r.json["status"] == "disabled"
