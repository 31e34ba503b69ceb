"""store.retention_days: finished messages (with their parts), MO, dead-lettered webhook reports
and old daily counters are purged once older than the retention; what is still going on, the
ledger and the bills stay; with billing on, a message also waits for its month's bill.

A real HTTP server on each store engine of tests/store_engines.py; the retention runs as the
daemon's sweeper runs it (bridge.retention.Retention), with `now` moved past the retention.
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
from bridge.domain.settlement import month_of  # noqa: E402
from bridge.retention import DAY_MS, RUN_EVERY_MS, Retention  # noqa: E402
from bridge.store.models import BillRow, MoMessage  # noqa: E402
from bridge.store.purge import PurgeFailed  # noqa: E402
from tests.integration.conftest import ApiServer, Creds  # noqa: E402

engine = engines.engine

CN = ["+8613800138000", "+8613800138001", "+8613800138002"]
TZ = "Asia/Shanghai"


@pytest.fixture
def api(engine_api: ApiServer) -> ApiServer:
    return engine_api


async def _send(api: ApiServer, creds: Creds, to: str, **extra: Any) -> str:
    r = await api.send(creds, {"to": to, "text": "Sale tomorrow", **extra})
    assert r.status == 202, r.json
    (mid,) = [m["id"] for m in r.json["messages"]]
    return mid


async def _finished(api: ApiServer, creds: Creds, to: str) -> str:
    """A message that ended (scheduled, then canceled: expired, refunded)."""
    tomorrow = (datetime.fromtimestamp(api.clock(), UTC) + timedelta(days=1)).isoformat()
    mid = await _send(api, creds, to, scheduled_at=tomorrow)
    r = await api.request("POST", f"/v1/messages/{mid}/cancel", creds=creds)
    assert r.status == 200, r.json
    return mid


async def _status(api: ApiServer, creds: Creds, mid: str) -> int:
    return (await api.request("GET", f"/v1/messages/{mid}", creds=creds)).status


async def _settle_everyone(api: ApiServer, month: str) -> None:
    for account in await api.store.list_accounts():
        assert await api.store.save_bill(BillRow(account.id, month, "{}", api.ctx.now_ms()), [])


async def test_finished_messages_past_the_retention_go_and_the_rest_stays(api: ApiServer) -> None:
    creds = await api.create_account()
    done = [await _finished(api, creds, n) for n in CN[:2]]
    waiting = await _send(api, creds, CN[2])  # queued: never purged, however old
    sums = await api.store.ledger_sums(creds.account_id)
    now = api.ctx.now_ms()

    # Not yet past the retention: nothing goes.
    early = await Retention(api.store, 31).run(now + 30 * DAY_MS, billing=False, tz=TZ)
    assert early["messages"] == 0
    assert [await _status(api, creds, m) for m in [*done, waiting]] == [200, 200, 200]

    purged = await Retention(api.store, 31).run(now + 32 * DAY_MS, billing=False, tz=TZ)
    assert purged["messages"] == 2
    assert [await _status(api, creds, m) for m in done] == [404, 404]
    assert await _status(api, creds, waiting) == 200
    record = await api.store.get_message(creds.account_id, waiting)
    assert record is not None and len(record.segment_rows) == 1  # its part is still there
    # The money stays: the same ledger, and pockets that still agree with it.
    assert await api.store.ledger_sums(creds.account_id) == sums
    pockets = {p.pocket: p.amount for p in await api.store.get_pockets(creds.account_id)}
    assert {k: v for k, v in pockets.items() if v} == {k: v for k, v in sums.items() if v}


async def test_zero_days_keeps_everything(api: ApiServer) -> None:
    creds = await api.create_account()
    mid = await _finished(api, creds, CN[0])
    far = api.ctx.now_ms() + 3650 * DAY_MS
    assert await Retention(api.store, 0).run(far, billing=False, tz=TZ) == {}
    assert await _status(api, creds, mid) == 200


async def test_with_billing_a_message_waits_for_its_month_to_be_settled(api: ApiServer) -> None:
    creds = await api.create_account()
    mid = await _finished(api, creds, CN[0])
    now = api.ctx.now_ms()
    later = now + 40 * DAY_MS
    retention = Retention(api.store, 31)
    held = await retention.run(later, billing=True, tz=TZ)
    assert held["messages"] == 0  # no bill for its month yet
    assert await _status(api, creds, mid) == 200
    await _settle_everyone(api, month_of(now, TZ))
    # A minute later (the run's interval) the month is settled for every account: it goes.
    assert await retention.run(later + 1000, billing=True, tz=TZ) == {}
    purged = await retention.run(later + RUN_EVERY_MS, billing=True, tz=TZ)
    assert purged["messages"] == 1
    assert await _status(api, creds, mid) == 404


async def test_an_account_without_a_bill_holds_its_own_messages_only(api: ApiServer) -> None:
    """Its month held every account's purge until session 14: one account's stuck month kept
    the whole store's history."""
    creds = await api.create_account()
    other = await api.create_account()
    mid = await _finished(api, creds, CN[0])
    kept = await _finished(api, other, CN[1])
    now = api.ctx.now_ms()
    month = month_of(now, TZ)
    await api.store.save_bill(BillRow(creds.account_id, month, "{}", now), [])
    later = now + 40 * DAY_MS
    assert (await Retention(api.store, 31).run(later, billing=True, tz=TZ))["messages"] == 1
    assert await _status(api, creds, mid) == 404
    assert await _status(api, other, kept) == 200
    assert (await Retention(api.store, 31).run(later, billing=True, tz=TZ))["messages"] == 0
    await api.store.save_bill(BillRow(other.account_id, month, "{}", now), [])
    assert (await Retention(api.store, 31).run(later, billing=True, tz=TZ))["messages"] == 1
    assert await _status(api, other, kept) == 404


async def test_around_a_held_account_the_others_purge_by_their_own_index(
    api: ApiServer, engine: Any
) -> None:
    """Months without a bill: the purge past the common cut-off reads each account's window by
    its (account_id, accepted_at) index, never the held account's kept rows."""
    held = await api.create_account()
    billed = await api.create_account()
    now = api.ctx.now_ms()
    month = month_of(now, TZ)
    old = [await _finished(api, held, CN[0])]
    mine = [await _finished(api, billed, n) for n in CN[:2]]
    await api.store.save_bill(BillRow(billed.account_id, month, "{}", now), [])
    later = now + 40 * DAY_MS
    purged = await Retention(api.store, 31).run(later, billing=True, tz=TZ)
    assert purged["messages"] == 2
    assert [await _status(api, billed, m) for m in mine] == [404, 404]
    assert await _status(api, held, old[0]) == 200
    if engine.name == "sqlite":
        from bridge.store import sqlite_retention

        plan = await api.store._runner.read(
            lambda c: [r[3] for r in c.execute("EXPLAIN QUERY PLAN " + sqlite_retention._WINDOW,
                                               ("a", 0, 1, 0, 1))]
        )  # fmt: skip
        assert any("USING INDEX messages_account_time" in p for p in plan), plan


async def test_many_messages_go_in_chunks(api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from bridge.store import postgres_retention, sqlite_retention

    for module in (sqlite_retention, postgres_retention):
        monkeypatch.setattr(module, "PURGE_CHUNK", 3)
        monkeypatch.setattr(module, "RETENTION_CHUNK", 3)
    creds = await api.create_account()
    done = [await _finished(api, creds, CN[i % 3]) for i in range(8)]
    waiting = await _send(api, creds, CN[0])
    now = api.ctx.now_ms()
    purged = await Retention(api.store, 31).run(now + 32 * DAY_MS, billing=False, tz=TZ)
    assert purged["messages"] == 8
    assert [await _status(api, creds, m) for m in done] == [404] * 8
    assert await _status(api, creds, waiting) == 200


async def test_a_run_failing_part_way_says_what_it_purged(
    api: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The MO step fails after the messages went (each chunk its own commit): the run raises
    PurgeFailed with the messages it purged, so the metric still counts them; the next run
    purges the rest."""
    from bridge.store import postgres_retention, sqlite_retention

    creds = await api.create_account()
    done = [await _finished(api, creds, CN[i % 3]) for i in range(4)]
    now = api.ctx.now_ms()
    old = MoMessage("mo_old", creds.account_id, "sim", CN[0], "10690000", "STOP", now)
    assert await api.store.store_mo(old)

    def broken(*args: Any) -> Any:
        raise RuntimeError("disk on fire")

    for module in (sqlite_retention, postgres_retention):
        monkeypatch.setattr(module, "_purge_mo", broken)
    later = now + 32 * DAY_MS
    with pytest.raises(PurgeFailed) as failed:
        await Retention(api.store, 31).run(later, billing=False, tz=TZ)
    assert failed.value.purged == {"messages": 4, "mo": 0, "dead_webhooks": 0, "daily_counts": 0}
    assert [await _status(api, creds, m) for m in done] == [404] * 4
    assert await api.store.get_mo("mo_old") is not None
    monkeypatch.undo()
    purged = await Retention(api.store, 31).run(later, billing=False, tz=TZ)
    assert (purged["messages"], purged["mo"]) == (0, 1)


async def test_mo_dead_webhooks_and_daily_counts_past_the_retention_go(api: ApiServer) -> None:
    creds = await api.create_account(status_callback_url="https://acme.example/status")
    await _finished(api, creds, CN[0])  # counted today; its status report is queued
    now = api.ctx.now_ms()
    old = MoMessage("mo_old", creds.account_id, "sim", CN[0], "10690000", "STOP", now)
    assert await api.store.store_mo(old)
    jobs = await api.store.claim_webhooks(now, 100, 60_000)
    assert jobs
    await api.store.webhook_retry([j.id for j in jobs], now, "HTTP 410", True)
    assert await api.store.count_dead_webhooks(None) == len(jobs)

    later = now + 32 * DAY_MS
    fresh = MoMessage("mo_new", creds.account_id, "sim", CN[1], "10690000", "hi", later)
    assert await api.store.store_mo(fresh)
    purged = await Retention(api.store, 31).run(later, billing=False, tz=TZ)
    assert purged["mo"] == 1
    assert purged["dead_webhooks"] == len(jobs)
    assert purged["daily_counts"] == 1
    assert await api.store.get_mo("mo_old") is None
    assert await api.store.get_mo("mo_new") is not None
    assert await api.store.count_dead_webhooks(None) == 0
