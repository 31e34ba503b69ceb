"""Session 48: a validity period longer than the receipt timeout, against a real daemon (in
process), the built-in simulator and a real callback endpoint.

A message may be delivered while the carrier still holds it, up to its validity's end: a 5-day
validity (POST /v1/messages `validity_minutes`, up to 7 days, or an SMSC's `validity_minutes`)
outlasts the 72 h `pipeline.receipt_timeout_hours`. It used to end `unknown` (billed, reported)
at 72 h, and the receipt of its delivery on day 4 changed nothing. The sweeper is run here as
it would run 73 h on; the simulator's receipt comes seconds later, as the day-4 delivery.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.e2e.harness import client_for, create_account, final_status, wait_until

pytestmark = pytest.mark.timeout(60)

HOUR_MS = 3_600_000


@pytest.mark.parametrize("validity", ["message", "smsc"])
async def test_a_delivery_within_a_long_validity_is_delivered_not_unknown(
    start_daemon, receiver, validity: str
) -> None:
    smsc = {"validity_minutes": 4 * 24 * 60} if validity == "smsc" else {}
    d = await start_daemon(smscs=[smsc])
    d.sim.receipt_delay_ms = 4000  # the carrier delivers (and reports) after the sweep below
    # ...and its receipts are applied after it for certain, not by the delay alone: a loaded
    # machine can take more than 4 s from the submit to the sweep, and the receipt came first.
    swept = asyncio.Event()
    apply_receipts = d.store.apply_receipts

    async def after_the_sweep(items: Any, now: int) -> Any:
        await swept.wait()
        return await apply_receipts(items, now)

    d.store.apply_receipts = after_the_sweep
    creds = await create_account(d, status_callback_url=receiver.url)
    receiver.secret = creds["webhook_secret"]
    own = {"validity_minutes": 5 * 24 * 60} if validity == "message" else {}
    async with client_for(d.http_port, creds) as c:
        long_id = (await c.send("+8613800138000", text="long", **own))["messages"][0]["id"]
        plain_id = None
        if validity == "message":  # beside it, one without a validity: 72 h as before
            plain_id = (await c.send("+8613800138001", text="plain"))["messages"][0]["id"]

        async def all_sent() -> bool:
            ids = [m for m in (long_id, plain_id) if m]
            return [(await c.message(m))["status"] for m in ids] == ["sent"] * len(ids)

        await wait_until(all_sent, 10)
        await d._sweep_expired(int(time.time() * 1000) + 73 * HOUR_MS)
        assert (await c.message(long_id))["status"] == "sent"
        swept.set()
        m = await final_status(c, long_id)
        assert (m["status"], m["error_code"]) == ("delivered", None)
        if plain_id is not None:
            # Ended at the timeout; its receipt, a moment later, does not reopen it (the first
            # final outcome stands: reported once, billed as one without a receipt).
            p = await c.message(plain_id)
            assert (p["status"], p["error_code"]) == ("unknown", "NO_RECEIPT")
            await wait_until(lambda: d.sim.counters["receipts_acked"] >= 2, 10)
            assert (await c.message(plain_id))["status"] == "unknown"
            # ...and is counted, so an operator sees the carrier reports later than the timeout.
            text = d.metrics.exposition().decode()
            assert 'smpp_bridge_receipts_after_timeout_total{smsc="sim"} 1.0' in text
    # (The other's report is due at the sweep's time, 73 h on: not waited for here.)
    await wait_until(lambda: any(r["message_id"] == long_id for r in receiver.reports), 10)
    assert [r["status"] for r in receiver.reports if r["message_id"] == long_id] == ["delivered"]
