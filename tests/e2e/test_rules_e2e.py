"""Sending rules and money through the real daemon and its simulator: opt-out by an MO reply,
refunds when the carrier reports failure, and the low-balance event pushed to the customer."""

from __future__ import annotations

import time

import jsonschema
import pytest

from bridge.client import BridgeError
from tests.e2e.harness import (
    client_for,
    create_account,
    final_status,
    wait_until,
)
from tests.integration.conftest import OPENAPI
from tests.sending import ready_to_send

PRICE = 45_000
CN = "+8613800138000"


async def _get(client, path: str, **query) -> dict:
    _status, _headers, data = await client.request("GET", path, query=query or None)
    return data


async def test_opt_out_by_mo_reply_blocks_the_next_send(start_daemon):
    d = await start_daemon()
    creds = await create_account(d)
    async with client_for(d.http_port, creds) as c:
        r = await c.send(CN, text="Your order has shipped")
        await final_status(c, r["messages"][0]["id"])
        assert (await _get(c, "/v1/optouts"))["optouts"] == []
        # The recipient answers "TD" to the address the message came from.
        await d.sim.inject_mo(CN.lstrip("+"), "smpp-bridge", "TD")

        async def listed():
            return (await _get(c, "/v1/optouts"))["optouts"]

        optouts = await wait_until(listed, 10, 0.05)
        assert [(o["number"], o["source"]) for o in optouts] == [(CN, "mo")]
        with pytest.raises(BridgeError) as refused:
            await c.send(CN, text="One more thing")
        assert (refused.value.status, refused.value.code) == (422, "RECIPIENT_OPTED_OUT")
        assert refused.value.message.startswith(f"to: {CN}")
        # Another number is not affected, and nothing was queued for the refused one.
        ok = await c.send("+8613900139000", text="One more thing")
        assert ok["count"] == 1
        sent_to_cn = (await c.messages(to=CN))["messages"]
        assert len(sent_to_cn) == 1


async def test_undelivered_messages_give_the_balance_back(start_daemon):
    d = await start_daemon()
    d.sim.outcomes = {"UNDELIV": 1.0}
    creds = await create_account(d)
    async with client_for(d.http_port, creds) as c:
        start = (await _get(c, "/v1/balance"))["cash_micro"]
        r = await c.send([f"+86138001380{i:02d}" for i in range(3)], text="will not arrive")
        ids = [m["id"] for m in r["messages"]]
        r = await c.send("+8613900139000", text="long " * 40)  # 200 chars: several parts
        ids.append(r["messages"][0]["id"])
        units = r["messages"][0]["billable_units"]
        assert units >= 2
        # The charges from the ledger, not from the balance: a receipt may come (and refund)
        # before the balance is read, and the test failed so on a loaded machine.
        _s, _h, page = await c.request("GET", "/v1/ledger", query={"limit": 1000})
        charges = {e["ref"]: -e["amount_micro"] for e in page["entries"] if e["kind"] == "charge"}
        assert charges == {**{mid: PRICE for mid in ids[:3]}, ids[3]: units * PRICE}
        for mid in ids:
            m = await final_status(c, mid)
            assert m["status"] == "failed" and m["error_code"].startswith("UNDELIV"), m

        async def refunded():
            return (await _get(c, "/v1/balance"))["cash_micro"] == start

        await wait_until(refunded, 10, 0.05)
        _s, _h, page = await c.request("GET", "/v1/ledger", query={"limit": 1000})
        refunds = [e for e in page["entries"] if e["kind"] == "refund"]
        assert sorted(e["ref"] for e in refunds) == sorted(ids)


async def test_low_balance_event_is_pushed_signed_once(start_daemon, receiver):
    d = await start_daemon()
    creds = await create_account(
        d,
        ready=False,
        status_callback_url=receiver.url,
        low_balance_threshold=100_000,
    )
    receiver.secret = creds["webhook_secret"]
    await ready_to_send(d.ctx.accounts.store, creds["account"], int(time.time() * 1000),
                        funds=150_000)  # fmt: skip
    async with client_for(d.http_port, creds) as c:
        for i in range(3):  # 105_000, 60_000 (crossed), 15_000
            r = await c.send(f"+86138001380{i:02d}", text="hi", sign_name="Acme")
            await final_status(c, r["messages"][0]["id"])

    def events():
        return [x for x in receiver.reports if x.get("event") == "balance.low"]

    await wait_until(lambda: len(events()) >= 1 and len(receiver.reports) >= 4, 10)
    assert receiver.bad_signatures == 0
    (ev,) = events()
    assert ev["account"] == creds["account"]
    # The event and the status reports beside it, as /openapi.json documents them.
    schemas = OPENAPI.doc["components"]["schemas"]
    jsonschema.validate(ev, OPENAPI.to_jsonschema(schemas["BalanceLowEvent"]))
    reports = [x for x in receiver.reports if x.get("type") == "message.status"]
    assert len(reports) == 3
    for report in reports:
        jsonschema.validate(report, OPENAPI.to_jsonschema(schemas["StatusReport"]))
    assert (ev["previous_micro"], ev["available_micro"]) == (105_000, 60_000)
