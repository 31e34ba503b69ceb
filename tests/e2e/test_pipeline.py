"""End to end through the real daemon: signed HTTP -> store -> SMPP -> simulator -> receipts ->
status, webhooks. Everything real: sockets, SQLite file, simulator, webhook receiver."""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from dataclasses import replace
from datetime import datetime

import jsonschema
import pytest

from bridge.sim.server import SimSmsc
from tests.e2e.harness import (
    WebhookReceiver,
    client_for,
    create_account,
    final_status,
    free_port,
    make_config,
    wait_until,
)
from tests.integration.conftest import OPENAPI

GSM_3_PARTS = ("Price list {A} [B] ~C~ | 5€ \\ ^ " * 13)[:340]  # 445 septets
UCS2_4_PARTS = "你好，世界！😀 短信网关测试 " * 16  # 256 UTF-16 units


def units(text: str) -> int:
    n = sum(2 if ord(c) > 0xFFFF else 1 for c in text)
    return 1 if n <= 70 else math.ceil(n / 67)


@pytest.mark.parametrize("split", ["udh8", "udh16", "sar", "payload"])
async def test_long_messages_each_split_mode(start_daemon, receiver, split):
    d = await start_daemon(smscs=[{"split": split}])
    creds = await create_account(d, status_callback_url=receiver.url)
    receiver.secret = creds["webhook_secret"]
    texts = {"gsm1": "Hello from smpp-bridge", "gsm3": GSM_3_PARTS, "ucs4": UCS2_4_PARTS}
    expect_segments = {
        "udh8": {"gsm1": 1, "gsm3": 3, "ucs4": 4},
        "udh16": {"gsm1": 1, "gsm3": 3, "ucs4": 4},
        "sar": {"gsm1": 1, "gsm3": 3, "ucs4": 4},
        "payload": {"gsm1": 1, "gsm3": 3, "ucs4": 4},
    }[split]
    async with client_for(d.http_port, creds) as c:
        sent = {}
        for i, (name, text) in enumerate(texts.items()):
            r = await c.send(f"+861380013800{i}", text=text, client_ref=name)
            m = r["messages"][0]
            assert m["segments"] == expect_segments[name], (name, m)
            assert m["billable_units"] == units(text)
            assert m["encoding"] == ("ucs2" if name == "ucs4" else "gsm7")
            sent[name] = m["id"]
        for mid in sent.values():
            m = await final_status(c, mid)
            assert m["status"] == "delivered", m
            assert m["segments_delivered"] == m["segments"]  # payload: one part, all segments
            assert all(p["status"] == "delivered" for p in m["parts"])
    got = {(m.destination, m.text) for m in d.sim.messages}
    for i, text in enumerate(texts.values()):
        assert (f"861380013800{i}", text) in got, f"simulator did not reassemble message {i}"
    await wait_until(lambda: len(receiver.reports) >= 3, 10)
    assert receiver.bad_signatures == 0
    reports = {r["client_ref"]: r for r in receiver.reports}
    assert set(reports) == set(texts)
    for name, r in reports.items():
        assert r["status"] == "delivered" and r["success"] is True
        assert r["message_id"] == sent[name]
        assert r["segments"] == expect_segments[name]
        assert r["webhook_id"] == f"st_{sent[name]}"


async def test_negative_receipts_fail_the_message_and_report_it(start_daemon, receiver):
    d = await start_daemon()
    d.sim.outcomes = {"UNDELIV": 1.0}
    creds = await create_account(d, status_callback_url=receiver.url)
    receiver.secret = creds["webhook_secret"]
    async with client_for(d.http_port, creds) as c:
        r = await c.send("+8613800138000", text=GSM_3_PARTS)
        m = await final_status(c, r["messages"][0]["id"])
    assert m["status"] == "failed"
    assert m["error_code"].startswith("UNDELIV")
    assert m["segments_failed"] == 3
    await wait_until(lambda: receiver.reports, 10)
    assert receiver.reports[0]["success"] is False
    assert receiver.reports[0]["error_code"].startswith("UNDELIV")


async def test_a_status_report_goes_out_when_its_receipt_lands_not_at_the_next_poll(
    start_daemon, receiver
):
    """Receipts that end messages wake the webhook sender: with its poll 30 s away (and the
    sweeper's wake up to 5 s), each report still reaches the customer within a second of its
    receipt (done_at). Before, it waited for one or the other."""
    d = await start_daemon()
    delays = await _report_delays(d, receiver)
    assert max(delays) < 1.0, delays
    assert receiver.bad_signatures == 0


async def _report_delays(d, receiver) -> list[float]:
    """Seconds from done_at to each status report's arrival, for three messages sent one after
    another, with the webhook sender's poll 30 s away (only a wake sends them sooner)."""
    d.webhooks.poll_s = 30.0
    creds = await create_account(d, status_callback_url=receiver.url)
    receiver.secret = creds["webhook_secret"]
    delays = []
    async with client_for(d.http_port, creds) as c:
        for i in range(3):
            await c.send(f"+86138001380{i:02d}", text=f"round {i}")
            await wait_until(lambda: len(receiver.reports) > i, 10, interval=0.005)  # noqa: B023
            came = time.time()
            done = datetime.fromisoformat(receiver.reports[i]["done_at"].replace("Z", "+00:00"))
            delays.append(round(came - done.timestamp(), 3))
    return delays


async def test_a_message_the_smsc_refuses_is_reported_when_recorded_not_at_the_next_poll(
    start_daemon, receiver
):
    """A refusal at submit (no receipt will come) ends the message when its result is recorded:
    that wakes the webhook sender as a receipt does. With its poll 30 s away the report reaches
    the customer within a second of done_at (up to the sweeper's 5 s before)."""
    d = await start_daemon()
    d.sim.refused_destinations = {f"86138001380{i:02d}" for i in range(3)}
    delays = await _report_delays(d, receiver)
    assert [r["status"] for r in receiver.reports] == ["failed"] * 3
    assert {r["error_code"] for r in receiver.reports} == {"ESME_RINVDSTADR"}, receiver.reports
    assert d.sim.counters["submit_rejected"] == 3
    assert max(delays) < 1.0, delays


async def test_a_reply_is_pushed_when_it_is_stored_not_at_the_next_poll(start_daemon, receiver):
    """An MO stored for an account wakes the webhook sender too: with its poll 30 s away, the
    reply reaches the customer within a second (up to the sweeper's 5 s before)."""
    d = await start_daemon()
    d.webhooks.poll_s = 30.0
    creds = await create_account(d, mo_callback_url=receiver.url)
    receiver.secret = creds["webhook_secret"]
    async with client_for(d.http_port, creds) as c:
        r = await c.send("+8613800138000", text="Reply YES to confirm")
        await final_status(c, r["messages"][0]["id"])
    took = []
    for i in range(3):
        t0 = time.monotonic()
        await d.sim.inject_mo("8613800138000", "smpp-bridge", f"YES {i}")
        await wait_until(lambda: len(receiver.reports) > i, 10, interval=0.005)  # noqa: B023
        took.append(round(time.monotonic() - t0, 3))
    assert [r["text"] for r in receiver.reports] == ["YES 0", "YES 1", "YES 2"]
    assert max(took) < 1.0, took


async def test_throttling_and_system_errors_lose_nothing_and_keep_order(start_daemon):
    d = await start_daemon()
    d.sim.throttle_ratio = 0.2
    d.sim.syserr_ratio = 0.05
    creds = await create_account(d)
    texts = [f"msg {i:03d} " + GSM_3_PARTS for i in range(20)]
    async with client_for(d.http_port, creds) as c:
        ids = []
        for i, t in enumerate(texts):
            r = await c.send(f"+86139000000{i:02d}", text=t)
            ids.append(r["messages"][0]["id"])
        finals = [await final_status(c, mid, 30) for mid in ids]
    assert [m["status"] for m in finals] == ["delivered"] * 20
    assert d.sim.counters["throttled"] > 0
    # The simulator reassembled every text exactly: parts went out in order, none lost or cut.
    got = {m.text for m in d.sim.messages}
    assert set(texts) <= got


async def test_smsc_down_then_up(start_daemon):
    d = await start_daemon()
    creds = await create_account(d)
    cfg = d.sim.cfg
    await d.sim.stop()
    await wait_until(lambda: not d.connectors["sim"].is_up, 10)
    async with client_for(d.http_port, creds) as c:
        r = await c.send("+8613800138000", text="queued while the SMSC is down")
        mid = r["messages"][0]["id"]
        await asyncio.sleep(0.5)
        assert (await c.message(mid))["status"] == "queued"
        d.sim = SimSmsc(replace(cfg, control_port=free_port()))
        await d.sim.start()
        m = await final_status(c, mid, 20)
    assert m["status"] == "delivered"


async def test_failover_to_second_smsc(start_daemon, tmp_path):
    backup_port = free_port()
    backup = SimSmsc(replace(make_config(tmp_path).sim, port=backup_port, control_port=free_port()))
    await backup.start()
    try:
        d = await start_daemon(
            smscs=[{"name": "sim"}, {"name": "backup", "port": backup_port}],
            default_route=["sim", "backup"],
        )
        await wait_until(lambda: d.connectors["backup"].is_up, 10)
        creds = await create_account(d)
        await d.sim.stop()
        await wait_until(lambda: not d.connectors["sim"].is_up, 10)
        async with client_for(d.http_port, creds) as c:
            r = await c.send("+8613800138000", text="via the backup route")
            m = await final_status(c, r["messages"][0]["id"], 20)
        assert m["status"] == "delivered"
        assert m["smsc"] == "backup"
        assert any(x.text == "via the backup route" for x in backup.messages)
    finally:
        await backup.stop()


async def test_mo_reply_is_attributed_and_pushed(start_daemon, receiver):
    d = await start_daemon()
    creds = await create_account(d, mo_callback_url=receiver.url)
    receiver.secret = creds["webhook_secret"]
    async with client_for(d.http_port, creds) as c:
        r = await c.send("+8613800138000", text="Reply YES to confirm")
        await final_status(c, r["messages"][0]["id"])
    long_reply = "YES please, and here is a long answer that spans parts. " * 4
    await d.sim.inject_mo("8613800138000", "smpp-bridge", "YES")
    await d.sim.inject_mo("8613800138000", "smpp-bridge", long_reply, split="udh8")
    await wait_until(lambda: len(receiver.reports) >= 2, 10)
    texts = sorted(r["text"] for r in receiver.reports)
    assert texts == sorted(["YES", long_reply])
    for r in receiver.reports:
        assert r["from"] == "+8613800138000" and r["type"] == "message.inbound"


async def test_mo_from_a_packed_gsm_smsc_is_unpacked(start_daemon, receiver):
    """An SMSC configured packed_gsm delivers replies packed, as it takes submits: read as one
    septet per octet, they were stored and pushed as garbage."""
    d = await start_daemon(smscs=[{"name": "sim", "packed_gsm": True}])
    d.sim.packed_gsm = True
    creds = await create_account(d, mo_callback_url=receiver.url)
    receiver.secret = creds["webhook_secret"]
    async with client_for(d.http_port, creds) as c:
        r = await c.send("+8613800138000", text="Reply YES @ 5$ to confirm")
        await final_status(c, r["messages"][0]["id"])
    assert [m.text for m in d.sim.messages] == ["Reply YES @ 5$ to confirm"]
    short = "YES @ 5$ {ok}"
    long_reply = "YES, and a long answer with [brackets] and @ that spans parts. " * 4
    await d.sim.inject_mo("8613800138000", "smpp-bridge", short)
    await d.sim.inject_mo("8613800138000", "smpp-bridge", long_reply, split="udh8")
    await wait_until(lambda: len(receiver.reports) >= 2, 10)
    assert sorted(r["text"] for r in receiver.reports) == sorted([short, long_reply])


async def test_webhook_receiver_down_then_up_delivers_each_report_once(start_daemon, receiver):
    d = await start_daemon()
    creds = await create_account(d, status_callback_url=receiver.url)
    receiver.secret = creds["webhook_secret"]
    receiver.fail_with = 503
    async with client_for(d.http_port, creds) as c:
        ids = []
        for i in range(5):
            r = await c.send(f"+86138001380{i:02d}", text=f"report {i}")
            ids.append(r["messages"][0]["id"])
        for mid in ids:
            await final_status(c, mid)

    def retried() -> float:
        text = d.metrics.exposition().decode()
        pattern = r'^smpp_bridge_webhook_deliveries_total\{kind="status",outcome="retry"\} (\S+)$'
        found = re.search(pattern, text, re.M)
        return float(found.group(1)) if found else 0.0

    # Every report failed at least once (a fixed 1.5 s could pass before any attempt on a
    # loaded machine, and the test then never saw the receiver down).
    await wait_until(lambda: retried() >= 5, 15)
    assert receiver.reports == []
    receiver.fail_with = None
    await wait_until(lambda: len(receiver.reports) >= 5, 15)
    await asyncio.sleep(1.5)  # nothing more arrives
    webhook_ids = [r["webhook_id"] for r in receiver.reports]
    assert sorted(webhook_ids) == sorted(f"st_{m}" for m in ids)
    assert len(webhook_ids) == len(set(webhook_ids))


async def test_readyz_reports_binds(start_daemon):
    import aiohttp

    d = await start_daemon()
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{d.http_port}/readyz") as r:
            assert r.status == 200
            assert (await r.json())["smscs"] == {"sim": True}
        await d.sim.stop()
        await wait_until(lambda: not d.connectors["sim"].is_up, 10)
        async with s.get(f"http://127.0.0.1:{d.http_port}/readyz") as r:
            assert r.status == 503
            assert "no SMSC bound" in (await r.json())["problems"]


async def test_intermediate_sent_report_when_enabled(start_daemon, receiver):
    d = await start_daemon(webhooks={"send_intermediate": True, "retry_schedule_s": [1]})
    d.sim.receipt_delay_ms = 300  # the "sent" report is made before the receipt
    # ...and the receipt is applied once that report arrived, whatever the machine's speed: a
    # "sent" report is never made after the final one (README), and a loaded machine could
    # record the submit result, and push its report, more than 300 ms after the submit.
    apply_receipts = d.store.apply_receipts

    async def after_the_sent_report(items, now):
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: receiver.reports, 10)
        return await apply_receipts(items, now)

    d.store.apply_receipts = after_the_sent_report
    creds = await create_account(d, status_callback_url=receiver.url)
    receiver.secret = creds["webhook_secret"]
    async with client_for(d.http_port, creds) as c:
        r = await c.send("+8613800138000", text="two reports", client_ref="ref-1")
        mid = r["messages"][0]["id"]
        await final_status(c, mid)
    await wait_until(lambda: len(receiver.reports) >= 2, 10)
    by_id = {rep["webhook_id"]: rep for rep in receiver.reports}
    assert set(by_id) == {f"st_{mid}_sent", f"st_{mid}"}
    sent = by_id[f"st_{mid}_sent"]
    assert sent["status"] == "sent" and sent["final"] is False and sent["client_ref"] == "ref-1"
    assert by_id[f"st_{mid}"]["status"] == "delivered"
    # Both as /openapi.json's StatusReport documents them, for receivers' code.
    schema = OPENAPI.to_jsonschema(OPENAPI.doc["components"]["schemas"]["StatusReport"])
    for report in by_id.values():
        jsonschema.validate(report, schema)


async def test_a_hanging_callback_does_not_delay_other_accounts(start_daemon, receiver):
    slow = WebhookReceiver()
    slow.hang_s = 8.0
    await slow.start()
    try:
        d = await start_daemon(webhooks={"timeout_s": 6, "retry_schedule_s": [60]})
        a = await create_account(d, "slowco", status_callback_url=slow.url)
        b = await create_account(d, "fastco", status_callback_url=receiver.url)
        async with client_for(d.http_port, a) as ca:
            r = await ca.send("+8613800138000", text="to the slow endpoint")
            await final_status(ca, r["messages"][0]["id"])
        await asyncio.sleep(0.5)  # the slow POST is now in flight
        async with client_for(d.http_port, b) as cb:
            r = await cb.send("+8613900139000", text="to the fast endpoint")
            mid = r["messages"][0]["id"]
            await final_status(cb, mid)
        t0 = asyncio.get_running_loop().time()
        await wait_until(lambda: receiver.reports, 4)
        assert asyncio.get_running_loop().time() - t0 < 2.0
        assert receiver.reports[0]["message_id"] == mid
    finally:
        await slow.stop()
