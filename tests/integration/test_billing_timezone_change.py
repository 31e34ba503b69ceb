"""A change of rules.timezone between two bills: every message in exactly one bill.

Months are cut at local midnight in rules.timezone. Before bills chained, the first month settled
after a change overlapped the last bill (UTC to Shanghai: 8 hours billed twice) or left a gap
after it (Shanghai to UTC: 8 hours never billed, and purged unbilled by the retention)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from types import SimpleNamespace

import tests.store_engines as engines
from bridge import billing
from bridge.config import BillingConfig
from bridge.domain.settlement import chained_bounds, month_before, month_bounds
from bridge.domain.tariffs import Tariff
from bridge.ids import new_id
from bridge.retention import Retention
from bridge.store.base import Store
from bridge.store.models import BillRow
from tests.integration.test_billing_edges import accept, make_account, msg, receipt, submit

engine = engines.engine
store = engines.store

SH = "Asia/Shanghai"
V1 = [Tariff("v1", 0)]
DAY_MS = 86_400_000


def utc(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


async def delivered(s: Store, mid: str, at: int) -> None:
    await accept(s, msg(mid, at))
    await submit(s, mid, at + 1_000)
    await receipt(s, mid, "delivered", at + 2_000)


async def settle(s: Store, month: str, tz: str, now: int) -> dict:
    acc = await s.get_account("acc_a")
    assert acc is not None
    view, recorded = await billing.settle(s, acc, month, V1, tz, "CNY", now)
    assert recorded
    return view


def test_month_before() -> None:
    assert month_before("2026-01") == "2025-12"
    assert month_before("2026-03") == "2026-02"
    assert month_before("2026-12") == "2026-11"


def test_chained_bounds() -> None:
    start, end = month_bounds("2026-11", "UTC")
    assert chained_bounds("2026-11", "UTC", None) == (start, end)
    assert chained_bounds("2026-11", "UTC", start - 8 * 3_600_000) == (start - 8 * 3_600_000, end)
    assert chained_bounds("2026-11", "UTC", start + 8 * 3_600_000) == (start + 8 * 3_600_000, end)
    assert chained_bounds("2026-11", "UTC", end + 1) == (end + 1, end + 1)  # never inverted
    # The month after settled first (a late month filled in): it ends where that one began.
    assert chained_bounds("2026-11", "UTC", None, end - 5) == (start, end - 5)
    assert chained_bounds("2026-11", "UTC", start - 7, end + 3) == (start - 7, end + 3)


async def test_shanghai_to_utc_leaves_no_gap(store: Store) -> None:
    await make_account(store)
    # 31 Oct 20:00 UTC is 1 Nov 04:00 in Shanghai: November there, October in UTC.
    await delivered(store, "msg_gap", utc(2026, 10, 31, 20))
    await delivered(store, "msg_oct", utc(2026, 10, 15))
    october = await settle(store, "2026-10", SH, utc(2026, 11, 10))
    assert october["units"] == 1
    assert october["period_end"] == utc(2026, 10, 31, 16)
    assert october["timezone"] == SH

    november = await settle(store, "2026-11", "UTC", utc(2026, 12, 10))
    assert november["units"] == 1, "the message between the two zones' midnights is unbilled"
    assert november["period_start"] == utc(2026, 10, 31, 16)
    assert november["period_end"] == utc(2026, 12, 1)


async def test_utc_to_shanghai_bills_nothing_twice(store: Store) -> None:
    await make_account(store)
    await delivered(store, "msg_late_oct", utc(2026, 10, 31, 20))  # October in UTC
    await delivered(store, "msg_nov", utc(2026, 11, 5))
    october = await settle(store, "2026-10", "UTC", utc(2026, 11, 10))
    assert october["units"] == 1

    # In Shanghai, November starts 31 Oct 16:00 UTC: without the chain, 20:00 counted again.
    open_view = await billing.month_view(
        store,
        await store.get_account("acc_a"),  # type: ignore[arg-type]
        "2026-11",
        V1,
        SimpleNamespace(rules=SimpleNamespace(timezone=SH), billing=BillingConfig()),
    )
    assert open_view["status"] == "open" and open_view["units"] == 1
    assert open_view["period_start"] == utc(2026, 11, 1)
    november = await settle(store, "2026-11", SH, utc(2026, 12, 10))
    assert november["units"] == 1
    assert november["period_start"] == utc(2026, 11, 1)
    assert november["period_end"] == utc(2026, 11, 30, 16)


async def test_a_bill_from_before_the_chain_is_not_chained_from(store: Store) -> None:
    await make_account(store)
    old = {"month": "2026-10", "units": 0}  # what bills held before they recorded a period
    await store.save_bill(BillRow("acc_a", "2026-10", json.dumps(old), utc(2026, 11, 5)), [])
    await delivered(store, "msg_nov", utc(2026, 11, 5))
    november = await settle(store, "2026-11", SH, utc(2026, 12, 10))
    assert november["period_start"] == month_bounds("2026-11", SH)[0]
    assert november["units"] == 1


async def test_the_retention_keeps_the_gap_until_its_bill(store: Store) -> None:
    """Shanghai to UTC, November not settled: the retention holds the account's messages from
    where November's bill will start (31 Oct 16:00 UTC), not from 1 Nov 00:00 UTC, which
    would purge the message in between, unbilled, for good."""
    await make_account(store)
    # Ids made at acceptance, as the API makes them: the purge reads by id range.
    gap, oct_ = new_id("msg_", utc(2026, 10, 31, 20)), new_id("msg_", utc(2026, 10, 15))
    await delivered(store, gap, utc(2026, 10, 31, 20))
    await delivered(store, oct_, utc(2026, 10, 15))
    await settle(store, "2026-10", SH, utc(2026, 11, 10))
    now = utc(2026, 11, 1) + 31 * DAY_MS + DAY_MS  # both older than a 31-day retention
    purged = await Retention(store, 31).run(now, billing=True, tz="UTC")
    assert purged["messages"] == 1  # October's own
    assert await store.get_message("acc_a", oct_) is None
    assert await store.get_message("acc_a", gap) is not None
    november = await settle(store, "2026-11", "UTC", now)
    assert november["units"] == 1
