"""smscs[].receipts: one_per_message, end to end: the daemon against the built-in simulator set to
send a receipt for one part of a long message only (sim.receipt_parts first or last), a real
webhook receiver counting reports, on both store engines.

On such a carrier a 3-part message used to stay `sent` with two parts unanswered until the 72 h
receipt timeout ended it `unknown`, billed. With `one_per_message` the one final receipt settles
the other parts at once (marked with the part it came from), the message is reported once and
billed or refunded once, and receipts that come after all for the other parts change nothing.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from bridge.app import Daemon
from bridge.config import parse_config

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from tests.e2e.harness import (  # noqa: E402
    WebhookReceiver,
    client_for,
    config_dict,
    create_account,
    final_status,
    wait_until,
)

UCS2_3_PARTS = "你好" * 100  # 200 UTF-16 units: 3 parts of up to 67
TO = "+8613800138000"


def store_section(engine: str, tmp: Path, request: pytest.FixtureRequest) -> dict[str, Any]:
    if engine == "sqlite":
        return {"engine": "sqlite", "path": str(tmp / "bridge.db")}
    return {"engine": "postgres", "dsn": request.getfixturevalue("pg_dsn")}


@pytest.fixture(params=["sqlite", "postgres"])
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def hook() -> AsyncIterator[WebhookReceiver]:
    r = WebhookReceiver()
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
async def start(
    tmp_path: Path, engine: str, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., Any]]:
    """start(receipt_parts, receipts, **smsc) -> a started daemon (stopped after the test)."""
    started: list[Daemon] = []
    # Asked for here, not inside go(): a fixture first asked for during the test is torn down
    # before this one, and the database went away under daemons still stopping.
    store = store_section(engine, tmp_path, request)

    async def go(receipt_parts: str, receipts: str | None, **smsc: Any) -> Daemon:
        entry = {"name": "sim", **smsc}
        if receipts is not None:
            entry["receipts"] = receipts
        data = config_dict(
            tmp_path,
            store=store,
            sim={"receipt_parts": receipt_parts},
            smscs=[entry],
        )
        d = Daemon(parse_config(data, env={}, base_dir=tmp_path))
        d.raw_config = data  # type: ignore[attr-defined]  # for a reload of the same ports
        started.append(d)
        await d.start()
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        return d

    try:
        yield go
    finally:
        for d in started:
            await d.stop()


async def _entries(c: Any, mid: str, kind: str) -> list[int]:
    _, _, data = await c.request("GET", "/v1/ledger", query={"limit": 1000})
    return [e["amount_micro"] for e in data["entries"] if e["kind"] == kind and e["ref"] == mid]


async def _refunds(c: Any, mid: str) -> list[int]:
    return await _entries(c, mid, "refund")


async def _charges(c: Any, mid: str) -> list[int]:
    """What the message was charged, as positive amounts (the ledger's `charge` entries)."""
    return [-a for a in await _entries(c, mid, "charge")]


def _reports(hook: WebhookReceiver, mid: str) -> list[dict[str, Any]]:
    return [r for r in hook.reports if r.get("message_id") == mid]


async def test_last_part_receipt_settles_the_message_at_once(start, hook, engine) -> None:
    d = await start("last", "one_per_message")
    creds = await create_account(d, "onelast", status_callback_url=hook.url)
    async with client_for(d.http_port, creds) as c:
        sent = (await c.send(TO, text=UCS2_3_PARTS))["messages"][0]
        m = await final_status(c, sent["id"], 10)
        assert m["status"] == "delivered", m
        assert m["segments_delivered"] == 3 and m["error_code"] is None
        parts = {p["seq"]: p for p in m["parts"]}
        assert [parts[s]["status"] for s in (1, 2, 3)] == ["delivered"] * 3
        assert [parts[s]["receipt_inferred_from"] for s in (1, 2, 3)] == [3, 3, None]
        assert all(p["error_code"] is None for p in m["parts"])
        await wait_until(lambda: _reports(hook, sent["id"]), 5)
        [report] = _reports(hook, sent["id"])
        assert report["status"] == "delivered" and report["receipt_inferred_from"] == 3
    assert d.sim is not None and d.sim.counters["receipts_sent"] == 1


async def test_a_negative_receipt_fails_and_refunds_the_message_once(start, hook, engine) -> None:
    d = await start("last", "one_per_message")
    assert d.sim is not None
    d.sim.outcomes = {"UNDELIV": 1.0}
    creds = await create_account(d, "onefail", status_callback_url=hook.url)
    async with client_for(d.http_port, creds) as c:
        before = (await c.balance())["cash_micro"]
        sent = (await c.send(TO, text=UCS2_3_PARTS))["messages"][0]
        # The charge from the ledger, not from the balance: the UNDELIV receipt (10 ms after
        # the submit) may refund it before a balance read after the send.
        [charged] = await _charges(c, sent["id"])
        assert charged > 0
        m = await final_status(c, sent["id"], 10)
        assert m["status"] == "failed" and m["segments_failed"] == 3, m
        assert m["error_code"].startswith("UNDELIV")
        parts = {p["seq"]: p for p in m["parts"]}
        assert [parts[s]["receipt_inferred_from"] for s in (1, 2, 3)] == [3, 3, None]
        assert {p["error_code"] for p in m["parts"]} == {m["error_code"]}
        await wait_until(lambda: _reports(hook, sent["id"]), 5)
        await asyncio.sleep(0.5)  # a second report, had there been one, would be in by now
        [report] = _reports(hook, sent["id"])
        assert (report["status"], report["receipt_inferred_from"]) == ("failed", 3)
        assert await _refunds(c, sent["id"]) == [charged]
        assert (await c.balance())["cash_micro"] == before


class _Draws:
    """The simulator's random draws, fixed in order (then 0.9 for ever)."""

    def __init__(self, *values: float) -> None:
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0) if self.values else 0.9


async def test_late_receipts_for_the_other_parts_change_nothing(start, hook, engine) -> None:
    """The carrier answers every part after all, the first DELIVRD and the others UNDELIV: the
    first final outcome stands, reported once, billed once (nothing refunded)."""
    d = await start("every", "one_per_message")
    assert d.sim is not None
    d.sim.outcomes = {"DELIVRD": 1.0, "UNDELIV": 1.0}  # DELIVRD below 0.5
    d.sim.rng = _Draws(0.1, 0.9, 0.9)  # type: ignore[assignment]
    creds = await create_account(d, "onelate", status_callback_url=hook.url)
    async with client_for(d.http_port, creds) as c:
        sent = (await c.send(TO, text=UCS2_3_PARTS))["messages"][0]
        m = await final_status(c, sent["id"], 10)
        assert m["status"] == "delivered", m
        assert [p["receipt_inferred_from"] for p in m["parts"]] == [None, 1, 1]
        sim = d.sim
        await wait_until(lambda: sim.counters["receipts_acked"] == 3, 5)
        assert d.inbound is not None
        # All three receipts' writes returned, whether matched at once or kept until their
        # submit's result was recorded (a receipt 10 ms after its submit may come first).
        await wait_until(lambda: d.inbound.receipts == 3, 10)
        await asyncio.sleep(0.5)
        again = await c.message(sent["id"])
        assert again["status"] == "delivered" and again["parts"] == m["parts"]
        assert again["done_at"] == m["done_at"]
        assert len(_reports(hook, sent["id"])) == 1
        assert await _refunds(c, sent["id"]) == []


async def test_a_part_sent_after_the_receipt_is_sent_and_settled_when_taken(
    start, hook, engine
) -> None:
    """Part 3 is refused once (ESME_RSYSERR, no in-claim retry) and goes back to the queue for
    5 s; part 1's receipt comes meanwhile. It settles part 2 but not part 3, which has not
    reached the handset: part 3 is sent, and takes the outcome when the SMSC accepts it."""
    d = await start("first", "one_per_message", max_transient_retries=0)
    assert d.sim is not None
    d.sim.syserr_ratio = 0.5
    d.sim.rng = _Draws(0.9, 0.9, 0.1)  # type: ignore[assignment]  # part 3: ESME_RSYSERR
    creds = await create_account(d, "oneafter", status_callback_url=hook.url)
    async with client_for(d.http_port, creds) as c:
        sent = (await c.send(TO, text=UCS2_3_PARTS))["messages"][0]

        async def part2_settled() -> dict[str, Any] | None:
            m = await c.message(sent["id"])
            return m if m["parts"][1]["status"] == "delivered" else None

        m = await wait_until(part2_settled, 5)
        assert [p["status"] for p in m["parts"]] == ["delivered", "delivered", "queued"]
        assert [p["receipt_inferred_from"] for p in m["parts"]] == [None, 1, None]
        assert m["status"] not in ("delivered", "failed", "unknown")
        assert _reports(hook, sent["id"]) == []
        m = await final_status(c, sent["id"], 15)
        assert m["status"] == "delivered", m
        assert [p["receipt_inferred_from"] for p in m["parts"]] == [None, 1, 1]
        assert m["parts"][2]["done_at"] >= m["parts"][2]["submitted_at"]
        await wait_until(lambda: _reports(hook, sent["id"]), 5)
        [report] = _reports(hook, sent["id"])
        assert report["receipt_inferred_from"] == 1
    assert d.sim.counters["syserr"] == 1 and d.sim.counters["receipts_sent"] == 1


async def test_every_part_is_the_default_and_waits_for_each_part(start, engine) -> None:
    """Today's behaviour, unchanged: one receipt settles its own part only."""
    d = await start("last", None)
    creds = await create_account(d, "every")
    async with client_for(d.http_port, creds) as c:
        sent = (await c.send(TO, text=UCS2_3_PARTS))["messages"][0]

        async def last_receipted() -> dict[str, Any] | None:
            # Part 3's receipt applied, at once or once the submit results were recorded (it
            # may come first): the part's state says, not inbound.matched.
            m = await c.message(sent["id"])
            return m if m["parts"][2]["status"] not in ("queued", "sent") else None

        m = await wait_until(last_receipted, 10)
        assert m["status"] == "sent"
        assert [p["status"] for p in m["parts"]] == ["sent", "sent", "delivered"]
        assert all(p["receipt_inferred_from"] is None for p in m["parts"])


async def test_a_reload_switches_the_mode_without_a_reconnect(start, tmp_path, engine) -> None:
    d = await start("first", None)
    creds = await create_account(d, "reload")
    connector = d.connectors["sim"]
    data = d.raw_config  # type: ignore[attr-defined]
    data["smscs"][0]["receipts"] = "one_per_message"
    p = await d.reload(parse_config(data, env={}, base_dir=tmp_path))
    assert p.update == ("sim",) and p.rebind == ()
    assert d.connectors["sim"] is connector
    async with client_for(d.http_port, creds) as c:
        sent = (await c.send(TO, text=UCS2_3_PARTS))["messages"][0]
        m = await final_status(c, sent["id"], 10)
    assert m["status"] == "delivered"
    assert [p["receipt_inferred_from"] for p in m["parts"]] == [None, 1, 1]
