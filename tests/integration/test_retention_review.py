"""Adversarial review of `store.retention_days` (commit fe0f132: bridge/retention.py, the engines'
purge_history, Daemon._retain). Everything runs against the real thing: real SQLite files and a
throw-away PostgreSQL (tests/store_engines.py), the real signed HTTP API (engine_api), the real
webhook sender posting to a real receiver, and an in-process `bridge.app.Daemon` (on each
engine) with the built-in simulator over TCP whose clock is moved past the retention while it
runs.

Defects found (each pinned by a test below that failed on the code as reviewed; all four are
fixed: the query's `+` terms, retention_days at most 3,650 and no purge before 1970, dead
letters purged with their message or MO, and `0 <=` interval checks):

1. SQLite: every chunk of the purge reads every finished message in the store, however few are
   due. `_FINISHED` (bridge/store/sqlite_retention.py) is planned on `messages_queue
   (q_state=?)` plus a temp B-tree for ORDER BY id, not on the primary-key range it was written
   for, so one chunk costs O(all finished messages) on the event loop (the runner runs SQL on
   the loop thread), every minute, even when nothing is to be purged; a backlog of N costs
   O(N x history / 2000). At a million messages a day and 31 days kept, that is seconds of
   stalled API every minute. README: "in chunks of 2,000 rows (a write each, so requests are
   served in between)". (PostgreSQL plans the same query on messages_pkey: checked, fine.)
   Measured: 200,000 finished messages, nothing due: ~20 ms a run; 400,000: ~60 ms; with the
   query forced onto the primary key (INDEXED BY sqlite_autoindex_messages_1): ~0.1 ms.
   -> test_sqlite_a_run_with_nothing_due_does_not_read_the_whole_history
2. `retention_days` above ~20,790 (config allows up to 36,500) makes every run raise
   OverflowError: the cutoff is before 1970 and `ids.id_floor` cannot encode a negative time
   (`_b32` -> int.to_bytes). The sweeper logs "sweeper step failed: retention" with a traceback
   every minute, for ever.
   -> test_the_largest_retention_the_config_accepts_runs
3. A dead-lettered report (status or MO) is kept for the retention after it was given up, but
   the message or MO it reports on is purged after the retention from when it *ended*: in
   between, the dead letter is still listed by GET /admin/webhooks/dead and replayable, the
   replay answers `replayed: 1`, and the sender then finds no record, books the row
   `delivered` and POSTs nothing (WebhookSender.render -> None -> webhook_done). With the
   default `retry_for_hours` (24) that window is a day; with 720 it is 30 days.
   -> test_a_replayed_dead_letter_of_a_purged_message_still_reaches_the_customer
   -> test_a_replayed_dead_letter_of_a_purged_mo_still_reaches_the_customer
4. (minor) After the clock steps back (a host that booted with a clock far ahead, then NTP),
   `Retention.run` skips every run until the clock passes its last reading again
   (`now - self._last_run < RUN_EVERY_MS` is true for any negative difference); the purge
   stops for as long as the step, though README says "once a minute". Daemon._settle has the
   same pattern.
   -> test_a_clock_stepped_back_does_not_stop_the_purge

Checked and found right (the other tests pass):

- Nothing unfinished is purged however old: queued, scheduled weeks ahead, parked for a down
  route, claimed and in flight (no answer), sent and awaiting receipts (a multi-part message
  with some parts delivered keeps every part); finished ones (delivered multi-part, failed at
  submit, canceled) go with every segment: no orphan segment rows (raw SQL on the file / DSN),
  the rest's segments untouched.
- A late receipt for a purged message is parked as unmatched (and swept), a reply from its
  recipient is stored unattributed, nothing raises; both engines.
- Billing months in a DST zone (America/New_York, month boundary on the day DST ends): the hold
  starts exactly at local midnight (a message 1 ms before it goes, one at it stays), the
  warning names the month and the settle command, and the month goes once settled.
- The daemon's own settlement and the retention agree on who needs a bill: accounts created
  mid-month, a closed account, an account created exactly at the month's end (needs none), a
  month without messages; the settled bill reads the same after its messages are purged.
- Two PostgreSQL stores (two instances) purging at once, in chunks of 3, with SKIP LOCKED:
  every row is deleted once, the counts add up to the rows, no deadlock, no error; purging
  while the API accepts and the dispatcher's claims and results run on both engines.
- End to end (Daemon + simulator, SQLite file and PostgreSQL): messages delivered (one in 3
  parts), an attributed MO, their 5 reports dead-lettered by a receiver answering 410; the
  daemon's clock moved 70 days on: within two sweeps the owner settles the months itself and
  purges; GET answers 404, the settled bill still shows, the CDR export of the month is empty,
  `smpp_bridge_retention_purged_total` counts exactly the rows of each kind, no orphan
  segments, the ledger unchanged, a duplicate receipt of a purged part (parked as unmatched)
  and a reply from its recipient (stored unattributed) are taken without error, a new message
  is still delivered, and `smpp-bridge bill check` / `bill show` agree afterwards.
- An Idempotency-Key cannot outlive its message (server.idempotency_hours <= 720 h < 31 days):
  replayed after the purge, the request is a new send.

Not defects, for the README: GET /v1/stats reads the messages table, so the daily statistics of
purged days read 0 (the README names the 404 and the CDR export only). With billing on, one
account's month that cannot be settled (a message parked or queued for months, a bill that
errors) holds every account's purge from that month on, and the hourly warning's advice
(`bill settle --month`) then answers not_ready for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import sqlite3
import subprocess
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import asyncpg
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge import billing  # noqa: E402
from bridge.app import Daemon  # noqa: E402
from bridge.config import ConfigError, parse_config  # noqa: E402
from bridge.domain.lifecycle import MSG_FINAL  # noqa: E402
from bridge.domain.settlement import month_bounds, month_of  # noqa: E402
from bridge.ids import id_floor  # noqa: E402
from bridge.pipeline.webhooks import WebhookSender  # noqa: E402
from bridge.retention import DAY_MS, RUN_EVERY_MS, Retention  # noqa: E402
from bridge.store import postgres_retention, sqlite_retention  # noqa: E402
from bridge.store.models import MoMessage, ReceiptIn, SubmitResult  # noqa: E402
from bridge.store.sqlite import SqliteStore  # noqa: E402
from tests.e2e.harness import config_dict, wait_until  # noqa: E402
from tests.e2e.harness import create_account as daemon_account  # noqa: E402
from tests.integration.conftest import (  # noqa: E402
    ApiServer,
    Creds,
    build_config,
    prepare_headers,
)

engine = engines.engine

SH = "Asia/Shanghai"
NY = "America/New_York"
HOUR_MS = 3_600_000
SMSC = "main"  # the one SMSC of tests/integration/conftest.build_config
LEASE = 60_000


@pytest.fixture
def api(engine_api: ApiServer) -> ApiServer:
    return engine_api


# -- helpers --------------------------------------------------------------------------------------


def _number(i: int) -> str:
    return f"+86138{i:08d}"


async def _send(api: ApiServer, creds: Creds, to: Any, **extra: Any) -> dict[str, Any]:
    body = {"to": to, "text": extra.pop("text", "Sale tomorrow"), **extra}
    r = await api.send(creds, body)
    assert r.status == 202, r.json
    return r.json


async def _one(api: ApiServer, creds: Creds, to: str, **extra: Any) -> str:
    (mid,) = [m["id"] for m in (await _send(api, creds, to, **extra))["messages"]]
    return mid


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat()


async def _finished(api: ApiServer, creds: Creds, to: str) -> str:
    """A message that ended now (scheduled for tomorrow, then canceled: expired, refunded)."""
    mid = await _one(api, creds, to, scheduled_at=_iso(api.ctx.now_ms() + DAY_MS))
    r = await api.request("POST", f"/v1/messages/{mid}/cancel", creds=creds)
    assert r.status == 200, r.json
    return mid


async def _status(api: ApiServer, creds: Creds, mid: str) -> int:
    return (await api.request("GET", f"/v1/messages/{mid}", creds=creds)).status


async def _rows(eng: Any, sql: str) -> list[tuple[Any, ...]]:
    """Raw SQL on the test's database, past the store (what is really left in the tables)."""
    if eng.name == "sqlite":
        c = sqlite3.connect(eng.location)
        try:
            return [tuple(r) for r in c.execute(sql).fetchall()]
        finally:
            c.close()
    pc = await asyncpg.connect(eng.location)
    try:
        return [tuple(r) for r in await pc.fetch(sql)]
    finally:
        await pc.close()


async def _orphan_segments(eng: Any) -> int:
    rows = await _rows(
        eng,
        "SELECT COUNT(*) FROM segments s WHERE NOT EXISTS "
        "(SELECT 1 FROM messages m WHERE m.id = s.message_id)",
    )
    return int(rows[0][0])


async def _segment_counts(eng: Any, mids: list[str]) -> dict[str, int]:
    marks = ", ".join(f"'{m}'" for m in mids)
    rows = await _rows(
        eng,
        f"SELECT message_id, COUNT(*) FROM segments WHERE message_id IN ({marks}) "
        "GROUP BY message_id",
    )
    return {str(r[0]): int(r[1]) for r in rows}


def _freeze(api: ApiServer, ms: int) -> None:
    """The server's clock at exactly `ms` (int(clock() * 1000) == ms, floats notwithstanding)."""
    at = ms / 1000
    while int(at * 1000) < ms:
        at = math.nextafter(at, math.inf)
    while int(at * 1000) > ms:
        at = math.nextafter(at, -math.inf)
    api.clock.freeze(at)
    assert api.ctx.now_ms() == ms


def _local_ms(tz: str, *args: int) -> int:
    return int(datetime(*args, tzinfo=ZoneInfo(tz)).timestamp() * 1000)  # type: ignore[misc]


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of 3 rows: many chunks (and transactions) out of a few dozen rows."""
    for module in (sqlite_retention, postgres_retention):
        monkeypatch.setattr(module, "PURGE_CHUNK", 3)
        monkeypatch.setattr(module, "RETENTION_CHUNK", 3)


async def _sent(api: ApiServer, mid: str, parts: int, now: int, tag: str) -> list[str]:
    """Claim `mid` (it must be the only one due) and record each part accepted by the SMSC.
    Returns the SMSC ids, which receipts are matched by."""
    work = await api.store.claim("inst-review", 10, now, LEASE)
    assert [w.id for w in work] == [mid], [w.id for w in work]
    ids = [f"{tag}{seq:04x}" for seq in range(1, parts + 1)]
    results = [
        SubmitResult(mid, seq, "sent", SMSC, ident, ident, at=now)
        for seq, ident in zip(range(1, parts + 1), ids, strict=True)
    ]
    await api.store.record_submits(results, [], now)
    return ids


def _receipt(ident: str, now: int, state: str = "delivered") -> ReceiptIn:
    stat = "DELIVRD" if state == "delivered" else "UNDELIV"
    return ReceiptIn(SMSC, ident, state, stat, "000", None, now, raw=f"id:{ident}")


# -- what is still going on is never purged; what ended goes whole --------------------------------


async def test_work_in_progress_is_never_purged_and_finished_messages_go_whole(
    api: ApiServer, engine: Any
) -> None:
    creds = await api.create_account()
    now = api.ctx.now_ms()
    _freeze(api, now)  # one instant: claims see what was just accepted as due
    long_text = "a" * 400  # GSM-7: 3 parts

    # Finished: delivered in 3 parts; failed at submit; canceled.
    delivered = await _one(api, creds, _number(1), text=long_text)
    ids = await _sent(api, delivered, 3, now, "d")
    await api.store.apply_receipts([_receipt(i, now) for i in ids], now)
    failed = await _one(api, creds, _number(2))
    work = await api.store.claim("inst-review", 10, now, LEASE)
    assert [w.id for w in work] == [failed]
    await api.store.record_submits(
        [SubmitResult(failed, 1, "failed", SMSC, error_code="ESME_RINVDSTADR", at=now)], [], now
    )
    canceled = await _finished(api, creds, _number(3))

    # Still going on: sent in 3 parts, 2 delivered, one receipt owed; claimed, no answer yet;
    # parked for a route with no SMSC up; scheduled three weeks ahead.
    awaiting = await _one(api, creds, _number(4), text=long_text)
    ids = await _sent(api, awaiting, 3, now, "a")
    await api.store.apply_receipts([_receipt(i, now) for i in ids[:2]], now)
    in_flight = await _one(api, creds, _number(5))
    work = await api.store.claim("inst-review", 10, now, LEASE)
    assert [w.id for w in work] == [in_flight]
    parked = await _one(api, creds, _number(6))
    assert await api.store.claim("inst-review", 10, now, LEASE, park=lambda _r: "route:down") == []
    scheduled = await _one(api, creds, _number(7), scheduled_at=_iso(now + 20 * DAY_MS))

    finished = [delivered, failed, canceled]
    going_on = [awaiting, in_flight, parked, scheduled]
    states = {
        m: (await api.store.get_message(creds.account_id, m)).state  # type: ignore[union-attr]
        for m in finished + going_on
    }
    assert {m: states[m] in MSG_FINAL for m in states} == {
        **{m: True for m in finished},
        **{m: False for m in going_on},
    }, states
    before = await _segment_counts(engine, going_on)
    assert before[awaiting] == 3

    # A year on (no sweep ran meanwhile: nothing moved them on).
    purged = await Retention(api.store, 31).run(now + 400 * DAY_MS, billing=False, tz=SH)
    assert purged["messages"] == 3, purged
    assert [await _status(api, creds, m) for m in finished] == [404, 404, 404]
    assert [await _status(api, creds, m) for m in going_on] == [200] * 4
    assert await _segment_counts(engine, finished) == {}  # every part of them went
    assert await _segment_counts(engine, going_on) == before  # and none of the others
    assert await _orphan_segments(engine) == 0
    # The one awaiting its last receipt still takes it, and then it is finished.
    await api.store.apply_receipts([_receipt(ids[2], now + 400 * DAY_MS)], now + 400 * DAY_MS)
    record = await api.store.get_message(creds.account_id, awaiting)
    assert record is not None and record.state == "delivered"


async def test_a_late_receipt_and_a_reply_for_a_purged_message_are_taken(
    api: ApiServer, engine: Any
) -> None:
    creds = await api.create_account()
    now = api.ctx.now_ms()
    _freeze(api, now)
    mid = await _one(api, creds, _number(1))
    (ident,) = await _sent(api, mid, 1, now, "x")
    await api.store.apply_receipts([_receipt(ident, now)], now)
    later = now + 32 * DAY_MS
    assert (await Retention(api.store, 31).run(later, billing=False, tz=SH))["messages"] == 1

    # The SMSC repeats the receipt a month on: unmatched, kept for the receipt timeout, swept.
    outcome = await api.store.apply_receipts([_receipt(ident, later)], later)
    assert (outcome.matched, outcome.pending) == (0, 1)
    assert await _orphan_segments(engine) == 0
    await api.store.sweep(later + 73 * HOUR_MS, 72 * HOUR_MS)
    assert await _rows(engine, "SELECT COUNT(*) FROM pending_receipts") == [(0,)]

    # The recipient answers: nothing to attribute it to any more (it went out over 30 days ago).
    assert await api.store.attribute_mo(_number(1), ["10690000"], later, default=True) is None
    assert await api.store.store_mo(
        MoMessage("mo_review_late", None, SMSC, _number(1), "10690000", "STOP", later)
    )


async def test_a_replayed_request_of_a_purged_message_is_a_new_send(
    api: ApiServer, tmp_path: Path
) -> None:
    """An Idempotency-Key never outlives its message: keys live at most 720 h (30 days, the
    config refuses more) and a message goes 31 days after it ended at the earliest. Replayed
    after the purge, the request is a new one (a new id), and the purged id stays 404."""
    with pytest.raises(ConfigError):
        build_config(tmp_path, {"server": {"idempotency_hours": 721}})
    creds = await api.create_account()
    now = api.ctx.now_ms()
    _freeze(api, now)
    body = {"to": _number(1), "text": "Sale tomorrow", "scheduled_at": _iso(now + DAY_MS)}
    first = await api.send(creds, body, key="review-key")
    assert first.status == 202, first.json
    (old,) = [m["id"] for m in first.json["messages"]]
    r = await api.request("POST", f"/v1/messages/{old}/cancel", creds=creds)
    assert r.status == 200
    _freeze(api, now + 32 * DAY_MS)
    purged = await Retention(api.store, 31).run(api.ctx.now_ms(), billing=False, tz=SH)
    assert purged["messages"] == 1
    body["scheduled_at"] = _iso(api.ctx.now_ms() + DAY_MS)
    again = await api.send(creds, body, key="review-key")
    assert again.status == 202, again.json
    (new,) = [m["id"] for m in again.json["messages"]]
    assert new != old
    assert [await _status(api, creds, m) for m in (old, new)] == [404, 200]


# -- dead letters that outlive what they report on ------------------------------------------------


async def _deliver_due(api: ApiServer, eng: Any, row: int) -> str:
    """Run the real webhook sender until outbox row `row` is no longer pending; its state."""
    sender = WebhookSender(
        api.store, api.ctx.accounts, api.config.webhooks, clock=api.clock, poll_s=0.02
    )
    task = asyncio.create_task(sender.run())

    async def state() -> str:
        rows = await _rows(eng, f"SELECT state FROM webhook_outbox WHERE id = {int(row)}")
        return str(rows[0][0]) if rows else "gone"

    try:
        await wait_until(lambda: _not_pending(state), timeout=10, interval=0.02)
    finally:
        await sender.stop()
        await asyncio.wait_for(task, 10)
    return await state()


async def _not_pending(state: Any) -> bool:
    return await state() != "pending"


async def _dead_letter(api: ApiServer, kind: str, ref: str, at: int) -> int:
    """Claim the one due `kind` report on `ref` and give it up at `at` (a receiver that kept
    failing until its retry_for_hours ran out). Returns its outbox id."""
    jobs = await api.store.claim_webhooks(api.ctx.now_ms(), 100, LEASE)
    (job,) = [j for j in jobs if j.kind == kind and j.payload == ref]
    await api.store.webhook_retry([job.id], at, "HTTP 503", True, job.lease)
    return job.id


async def _replay_after_purge(
    api: ApiServer, row: int, now: int, purged_kind: str
) -> tuple[bool, int]:
    """Purge past the retention of what the dead letter reports on (not of the dead letter),
    then replay it as an operator would. (still listed before the replay, replayed count)."""
    later = now + 31 * DAY_MS + 2 * HOUR_MS
    purged = await Retention(api.store, 31).run(later, billing=False, tz=SH)
    assert purged[purged_kind] in (0, 1), purged  # 0: kept while its dead letter is
    listed = await api.admin("GET", "/admin/webhooks/dead")
    still_listed = any(w["id"] == row for w in listed.json["webhooks"])
    r = await api.admin("POST", "/admin/webhooks/replay", json={"ids": [row]})
    assert r.status == 200, r.json
    return still_listed, int(r.json["replayed"])


async def test_a_replayed_dead_letter_of_a_purged_message_still_reaches_the_customer(
    api: ApiServer, engine: Any, receiver: Any
) -> None:
    """Expected: a dead letter that is kept (listed, replayable) can be delivered: the retention
    keeps the message a kept report is about (or purges the report with it, so it is neither
    listed nor 'replayed'). Found: the message is purged 31 days after it ended, its report's
    dead letter 31 days after it was given up (a day later by default); replayed in between,
    the replay answers replayed=1 and the sender books the row delivered without a POST."""
    creds = await api.create_account(status_callback_url=receiver.url)
    now = api.ctx.now_ms()
    mid = await _finished(api, creds, _number(1))
    row = await _dead_letter(api, "status", mid, now + DAY_MS)  # given up after 24 h

    still_listed, replayed = await _replay_after_purge(api, row, now, "messages")
    if not still_listed:
        assert replayed == 0
        return
    assert replayed == 1
    state = await _deliver_due(api, engine, row)
    got = [item for item in receiver.reports if item.get("message_id") == mid]
    assert got, (
        f"dead letter {row} of purged message {mid} was listed and replayed (replayed=1), then "
        f"booked {state!r} without any POST; the receiver got {receiver.reports}"
    )


async def test_a_replayed_dead_letter_of_a_purged_mo_still_reaches_the_customer(
    api: ApiServer, engine: Any, receiver: Any
) -> None:
    """As for status reports: the MO is purged 31 days after it was received, its dead letter
    31 days after it was given up; a replay in between answers replayed=1 and delivers
    nothing (WebhookSender.render finds no MO and the row is booked delivered)."""
    creds = await api.create_account(mo_callback_url=receiver.url)
    now = api.ctx.now_ms()
    mo_id = f"mo_review_{secrets.token_hex(4)}"
    assert await api.store.store_mo(
        MoMessage(mo_id, creds.account_id, SMSC, _number(1), "10690000", "hello", now)
    )
    row = await _dead_letter(api, "mo", mo_id, now + DAY_MS)

    still_listed, replayed = await _replay_after_purge(api, row, now, "mo")
    if not still_listed:
        assert replayed == 0
        return
    assert replayed == 1
    state = await _deliver_due(api, engine, row)
    got = [item for item in receiver.reports if item.get("mo_id") == mo_id]
    assert got, (
        f"dead letter {row} of purged MO {mo_id} was listed and replayed (replayed=1), then "
        f"booked {state!r} without any POST; the receiver got {receiver.reports}"
    )


# -- configuration edges and the clock ------------------------------------------------------------


async def test_the_largest_retention_the_config_accepts_runs(
    api: ApiServer, tmp_path: Path
) -> None:
    """Expected: any retention_days the config accepts runs (keeps everything younger, here
    all of it). Found: the config accepted up to 36,500 days; past ~20,790 the cutoff was
    before 1970 and id_floor raised OverflowError on every run (bridge/ids.py _b32 of a
    negative time). Now at most 3,650 days, and a cutoff before 1970 purges nothing."""
    cfg = build_config(tmp_path, {"store": {"retention_days": 3650}})
    assert cfg.store.retention_days == 3650  # accepted
    creds = await api.create_account()
    mid = await _finished(api, creds, _number(1))
    now = api.ctx.now_ms()
    for billing_on in (False, True):
        purged = await Retention(api.store, 3650).run(now, billing=billing_on, tz=SH)
        assert purged.get("messages", 0) == 0, purged
        assert await Retention(api.store, 36_500).run(now, billing=billing_on, tz=SH) == {}
    assert await _status(api, creds, mid) == 200


async def test_a_clock_stepped_back_does_not_stop_the_purge(api: ApiServer) -> None:
    """Expected: the purge runs once a minute by the clock as it is now. Found: after a
    backward step (a clock that was a year ahead, then corrected) every run is skipped until
    the clock passes its last reading again: `now - _last_run` is negative, < RUN_EVERY_MS."""
    creds = await api.create_account()
    now = api.ctx.now_ms()
    retention = Retention(api.store, 31)
    await retention.run(now + 365 * DAY_MS, billing=False, tz=SH)  # the wrong clock's run
    mid = await _finished(api, creds, _number(1))  # ended after that run
    purged = await retention.run(now + 32 * DAY_MS, billing=False, tz=SH)  # corrected clock
    assert purged.get("messages") == 1, purged
    assert await _status(api, creds, mid) == 404


# -- billing months: time zones, DST, who needs a bill --------------------------------------------


async def test_the_hold_starts_at_local_midnight_of_the_unsettled_month_in_a_dst_zone(
    api: ApiServer, caplog: pytest.LogCaptureFixture
) -> None:
    """America/New_York: 2026-11-01 00:00 is EDT (04:00 UTC), and DST ends that very night.
    October settled, November not: the message 1 ms before local midnight goes, the one at
    midnight stays; in UTC both would have been November's."""
    nov = _local_ms(NY, 2026, 11, 1)
    assert nov == int(datetime(2026, 11, 1, 4, tzinfo=UTC).timestamp() * 1000)
    assert month_bounds("2026-11", NY)[0] == nov
    _freeze(api, _local_ms(NY, 2026, 10, 10, 12))
    creds = await api.create_account()
    _freeze(api, nov - 1)
    october = await _finished(api, creds, _number(1))
    _freeze(api, nov)
    november = await _finished(api, creds, _number(2))
    assert month_of(nov - 1, NY) == "2026-10" and month_of(nov - 1, "UTC") == "2026-11"

    later = nov + 40 * DAY_MS
    _freeze(api, later)
    cfg = replace(api.config, rules=replace(api.config.rules, timezone=NY))
    await api.ctx.tariff_book.load(later)
    versions = api.ctx.tariff_book.versions
    account = await api.store.get_account(creds.account_id)
    assert account is not None
    settled = await billing.settle_accounts(api.store, [account], "2026-10", versions, cfg, later)
    assert [r["status"] for r in settled] == ["settled"], settled

    retention = Retention(api.store, 31)
    with caplog.at_level(logging.WARNING, logger="bridge.store.retention"):
        purged = await retention.run(later, billing=True, tz=NY)
    assert purged["messages"] == 1, purged
    assert await _status(api, creds, october) == 404
    assert await _status(api, creds, november) == 200
    warned = [r.getMessage() for r in caplog.records if r.name == "bridge.store.retention"]
    assert len(warned) == 1, warned
    assert "2026-11" in warned[0] and "bill settle --month 2026-11" in warned[0], warned

    _freeze(api, later + 20 * DAY_MS)  # November ended 10 days ago
    settled = await billing.settle_accounts(
        api.store, [account], "2026-11", versions, cfg, later + 20 * DAY_MS
    )
    assert [r["status"] for r in settled] == ["settled"], settled
    purged = await retention.run(later + 20 * DAY_MS, billing=True, tz=NY)
    assert purged["messages"] == 1, purged
    assert await _status(api, creds, november) == 404


async def test_automatic_settlement_and_the_retention_agree_on_who_needs_a_bill(
    api: ApiServer,
) -> None:
    """The daemon's auto_settle and Retention.unsettled must ask for the same bills, or a month
    is held for ever: accounts created mid-month, one closed, one created exactly at a month's
    end (it needs no bill for that month), and a month without a single message."""
    _freeze(api, _local_ms(SH, 2026, 1, 5, 10))
    closed = await api.create_account()
    _freeze(api, _local_ms(SH, 2026, 1, 10, 10))
    sender = await api.create_account()
    _freeze(api, _local_ms(SH, 2026, 1, 15, 10))
    jan = await _finished(api, sender, _number(1))
    _freeze(api, _local_ms(SH, 2026, 2, 20, 10))
    await api.create_account()  # mid-February, never sends
    _freeze(api, _local_ms(SH, 2026, 2, 25, 10))
    assert await api.store.close_account(closed.account_id, api.ctx.now_ms())
    _freeze(api, month_bounds("2026-02", SH)[1])
    at_end = await api.create_account()  # created at February's end: no February bill due
    _freeze(api, _local_ms(SH, 2026, 3, 10, 10))
    mar = await _finished(api, sender, _number(2))

    now = _local_ms(SH, 2026, 4, 20, 10)
    _freeze(api, now)
    january_view = await api.request("GET", "/v1/bills/2026-01", creds=sender)
    results = await billing.auto_settle(api.store, api.ctx.tariff_book, api.config, now)
    assert {r["status"] for r in results} == {"settled"}, results
    assert await api.store.get_bill(at_end.account_id, "2026-02") is None
    assert await api.store.get_bill(closed.account_id, "2026-02") is not None

    purged = await Retention(api.store, 31).run(now, billing=True, tz=SH)
    assert purged["messages"] == 2, purged
    assert [await _status(api, sender, m) for m in (jan, mar)] == [404, 404]
    after = await api.request("GET", "/v1/bills/2026-01", creds=sender)
    assert after.status == 200 and after.json["status"] == "settled"
    assert january_view.json["units"] == after.json["units"]


# -- concurrency ----------------------------------------------------------------------------------


@pytest.mark.usefixtures("small_chunks")
async def test_purging_while_the_api_accepts_and_the_dispatcher_works(
    api: ApiServer, engine: Any
) -> None:
    creds = await api.create_account()
    now = api.ctx.now_ms()
    batch = await _send(
        api, creds, [_number(100 + i) for i in range(30)], scheduled_at=_iso(now + DAY_MS)
    )
    r = await api.request("POST", f"/v1/batches/{batch['batch_id']}/cancel", creds=creds)
    assert r.status == 200 and r.json["canceled"] == 30, r.json
    old = [m["id"] for m in batch["messages"]]

    async def accept_and_dispatch() -> list[str]:
        made = []
        for i in range(12):
            made.append(await _one(api, creds, _number(500 + i)))
            work = await api.store.claim("inst-review", 5, api.ctx.now_ms(), LEASE)
            t = api.ctx.now_ms()
            results = [
                SubmitResult(w.id, s.seq, "sent", SMSC, f"c{w.id[-8:]}{s.seq}", None, at=t)
                for w in work
                for s in w.segments
            ]
            await api.store.record_submits(results, [], t)
        return made

    purge = Retention(api.store, 31).run(now + 32 * DAY_MS, billing=False, tz=SH)
    purged, made = await asyncio.gather(purge, accept_and_dispatch())
    assert purged["messages"] == 30, purged
    assert [await _status(api, creds, m) for m in old[:3]] == [404] * 3
    assert [await _status(api, creds, m) for m in made] == [200] * 12
    assert await _segment_counts(engine, made) == {m: 1 for m in made}
    assert await _rows(engine, "SELECT COUNT(*) FROM messages") == [(12,)]
    assert await _orphan_segments(engine) == 0


@pytest.mark.parametrize("engine", ["postgres"], indirect=True)
@pytest.mark.usefixtures("small_chunks")
async def test_two_postgres_instances_purge_at_once(api: ApiServer, engine: Any) -> None:
    creds = await api.create_account()
    now = api.ctx.now_ms()
    batch = await _send(
        api, creds, [_number(200 + i) for i in range(40)], scheduled_at=_iso(now + DAY_MS)
    )
    r = await api.request("POST", f"/v1/batches/{batch['batch_id']}/cancel", creds=creds)
    assert r.json["canceled"] == 40, r.json
    for i in range(10):
        mo = MoMessage(f"mo_pg_{i}", None, SMSC, _number(300 + i), "10690000", "hi", now)
        assert await api.store.store_mo(mo)
    other = engine.new_store()
    await other.open()
    try:
        later = now + 32 * DAY_MS
        runs = await asyncio.wait_for(
            asyncio.gather(
                Retention(api.store, 31).run(later, billing=False, tz=SH),
                Retention(other, 31).run(later, billing=False, tz=SH),
                Retention(other, 31).run(later, billing=False, tz=SH),
            ),
            30,
        )
    finally:
        await other.close()
    total = {k: sum(r[k] for r in runs) for k in runs[0]}
    assert total == {"messages": 40, "mo": 10, "dead_webhooks": 0, "daily_counts": 1}, runs
    assert await _rows(engine, "SELECT COUNT(*) FROM messages") == [(0,)]
    assert await _rows(engine, "SELECT COUNT(*) FROM segments") == [(0,)]
    assert await _rows(engine, "SELECT COUNT(*) FROM mo_inbox") == [(0,)]


# -- SQLite: the cost of a run --------------------------------------------------------------------


async def test_sqlite_a_run_with_nothing_due_does_not_read_the_whole_history(
    tmp_path: Path,
) -> None:
    """Expected: a chunk reads about the rows it deletes (the id range of the query), so a run
    with nothing due is cheap whatever the history. Found: SQLite plans `_FINISHED` on the
    messages_queue index (q_state = 'done') with a temp B-tree for ORDER BY id, reading every
    finished message in the store, on the event loop, every minute (and again per chunk)."""
    path = tmp_path / "big.db"
    store = SqliteStore(path)
    await store.open()
    await store.close()
    now = int(time.time() * 1000)
    recent = now - DAY_MS  # finished yesterday: nothing is due for a 31-day retention
    stamp = id_floor("msg_", recent)[:14]
    c = sqlite3.connect(path)
    with c:
        c.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 200000) "
            "INSERT INTO messages (id, account_id, batch_id, recipient, text, encoding, "
            "data_coding, segments, billable_units, state, accepted_at, sent_at, done_at, "
            "q_state, q_not_before) "
            f"SELECT '{stamp}' || printf('%016d', i), 'acc_big', 'bat_big', '+8613800000000', "
            f"'x', 'GSM7', 0, 1, 1, 'delivered', {recent}, {recent}, {recent}, 'done', {recent} "
            "FROM n"
        )
    explain = "EXPLAIN QUERY PLAN " + sqlite_retention._FINISHED
    plan = [r[3] for r in c.execute(explain, ("", "m", 0, 1, 0))]
    c.close()

    store = SqliteStore(path)
    await store.open()
    try:
        retention = Retention(store, 31)
        costs = []
        for i in range(3):
            # The loop thread's CPU time: its SQL runs on the loop. Wall time also counted what
            # other processes of a loaded machine ran meanwhile (35-45 ms with each loop turn
            # 2 ms late; a whole-table scan still takes 17 ms of CPU here, against the 8).
            t0 = time.thread_time()
            purged = await retention.run(now + i * RUN_EVERY_MS, billing=False, tz=SH)
            costs.append(time.thread_time() - t0)
            assert purged["messages"] == 0, purged
    finally:
        await store.close()
    assert min(costs) < 0.008, (
        f"a run with nothing to purge held the event loop {min(costs) * 1000:.0f} ms with "
        f"200,000 finished messages stored (it grows with the history); plan: {plan}"
    )


# -- the daemon, end to end -----------------------------------------------------------------------


class _Clock:
    """The daemon's clock: real time plus an offset the test moves on."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


async def _call(
    session: aiohttp.ClientSession,
    port: int,
    creds: Creds,
    clock: _Clock,
    method: str,
    path: str,
    body: Any = None,
    query: str = "",
) -> tuple[int, Any]:
    raw = b"" if body is None else json.dumps(body).encode()
    headers = prepare_headers(
        f"127.0.0.1:{port}",
        method,
        path,
        query,
        raw,
        creds=creds,
        headers=None,
        content_type="application/json" if raw else None,
        idempotency_key=f"idem-{secrets.token_hex(8)}" if method == "POST" else None,
        when=datetime.fromtimestamp(clock(), UTC),  # signed by the daemon's clock
        nonce=None,
    )
    url = f"http://127.0.0.1:{port}{path}" + (f"?{query}" if query else "")
    async with session.request(
        method, url, data=raw or None, headers=headers, skip_auto_headers=("Content-Type",)
    ) as r:
        text = await r.text()
        is_json = r.headers.get("Content-Type", "").startswith("application/json")
        return r.status, json.loads(text) if is_json else text


async def _purged_metrics(port: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return {
        sample.labels["kind"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "smpp_bridge_retention_purged_total"
    }


def _cli(cfg_path: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", *args, "--config", str(cfg_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cfg_path.parent,
    )


async def test_the_daemon_purges_delivered_history_once_its_clock_is_past_the_retention(
    tmp_path: Path, engine: Any, receiver: Any
) -> None:
    from bridge.sim.server import _Job

    data = config_dict(
        tmp_path,
        store=(
            {"engine": "sqlite", "path": engine.location, "retention_days": 31}
            if engine.name == "sqlite"
            else {"engine": "postgres", "dsn": engine.location, "retention_days": 31}
        ),
        logging={"level": "WARNING"},
        smscs=[{"default_source": "10690000"}],  # replies to it are attributed
    )
    cfg_path = tmp_path / "bridge.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    cfg = parse_config(data, env={}, base_dir=tmp_path)
    clock = _Clock()
    d = Daemon(cfg, clock=clock)
    await d.start()
    session = aiohttp.ClientSession()
    try:
        assert d.store is not None and d.sim is not None and d.http_port is not None
        port = d.http_port
        await wait_until(lambda: d.connectors["sim"].is_up, 10)
        receipts: list[Any] = []
        schedule = d.sim._schedule

        def spy(job: Any, due: float) -> None:
            if job.kind == "receipt":
                receipts.append(job)
            schedule(job, due)

        d.sim._schedule = spy
        receiver.fail_with = 410  # gone: every report is dead-lettered at its first try
        made = await daemon_account(
            d, status_callback_url=receiver.url, mo_callback_url=receiver.url
        )
        account = await d.store.get_account(made["account"])
        assert account is not None
        creds = Creds(account, made["app_key"], made["app_secret"])

        mids = []
        for i, text in enumerate(["one", "two", "three", "b" * 400]):
            status, body = await _call(
                session, port, creds, clock, "POST", "/v1/messages",
                {"to": _number(10 + i), "text": text},
            )  # fmt: skip
            assert status == 202, body
            mids.append(body["messages"][0]["id"])

        async def all_final() -> bool:
            for m in mids:
                rec = await d.store.get_message(account.id, m)  # type: ignore[union-attr]
                if rec is None or rec.state not in MSG_FINAL:
                    return False
            return True

        await wait_until(all_final, 15)
        records = [await d.store.get_message(account.id, m) for m in mids]
        assert [r.state for r in records] == ["delivered"] * 4  # type: ignore[union-attr]
        assert len(records[3].segment_rows) == 3  # type: ignore[union-attr]
        months = {month_of(r.accepted_at, SH) for r in records}  # type: ignore[union-attr]
        cdr_months = {
            datetime.fromtimestamp(r.accepted_at / 1000, UTC).strftime("%Y-%m")  # type: ignore[union-attr]
            for r in records
        }
        # A reply from the first recipient, before the jump.
        await d.sim.inject_mo(_number(10), "10690000", "thanks", system_id="bridge")
        await wait_until(lambda: _has(engine, "SELECT COUNT(*) FROM mo_inbox", 1), 10)
        mo_account = await _count(
            engine, "SELECT COUNT(*) FROM mo_inbox WHERE account_id IS NOT NULL"
        )
        assert mo_account == 1  # attributed: the reply answers the message sent to that number
        # 4 status reports and the MO's, dead-lettered by the receiver's 410.
        await wait_until(lambda: _dead(d, 5), 10)
        dead_before = await d.store.count_dead_webhooks(None)
        sums = await d.store.ledger_sums(account.id)
        receipts_seen = len(receipts)
        assert receipts_seen >= 6  # 1 + 1 + 1 + 3 parts

        clock.offset = 70 * 86_400  # 70 days on: months settled, history past the retention
        await wait_until(lambda: _has(engine, "SELECT COUNT(*) FROM messages", 0), 25, 0.2)
        for m in mids:
            status, body = await _call(session, port, creds, clock, "GET", f"/v1/messages/{m}")
            assert status == 404 and body["error"]["code"] == "NOT_FOUND", (status, body)
        assert await _count(engine, "SELECT COUNT(*) FROM segments") == 0
        assert await _count(engine, "SELECT COUNT(*) FROM mo_inbox") == 0
        assert await d.store.count_dead_webhooks(None) == 0
        metrics = await _purged_metrics(port)
        assert metrics.get("messages") == 4.0, metrics
        assert metrics.get("mo") == 1.0, metrics
        assert metrics.get("daily_counts", 0) >= 1.0, metrics
        assert metrics.get("dead_webhooks") == float(dead_before) == 5.0, (metrics, dead_before)
        for month in months:
            status, bill = await _call(session, port, creds, clock, "GET", f"/v1/bills/{month}")
            assert status == 200 and bill["status"] == "settled", (status, bill)
        for month in cdr_months:
            status, csv = await _call(
                session, port, creds, clock, "GET", "/v1/cdrs", query=f"month={month}"
            )
            assert status == 200 and not any(m in csv for m in mids), csv
        assert await d.store.ledger_sums(account.id) == sums

        # The SMSC repeats a receipt of a purged part; the first recipient answers again.
        d.sim._schedule(_Job("bridge", receipts[-1].body, "receipt"), d.sim._loop_time())
        await wait_until(lambda: _has(engine, "SELECT COUNT(*) FROM pending_receipts", 1), 10)
        await d.sim.inject_mo(_number(10), "10690000", "still there?", system_id="bridge")
        await wait_until(lambda: _has(engine, "SELECT COUNT(*) FROM mo_inbox", 1), 10)
        assert d.connectors["sim"].is_up
        # And the daemon still sends.
        status, body = await _call(
            session, port, creds, clock, "POST", "/v1/messages", {"to": _number(99), "text": "new"}
        )
        assert status == 202, body
        fresh = body["messages"][0]["id"]

        async def fresh_delivered() -> bool:
            rec = await d.store.get_message(account.id, fresh)  # type: ignore[union-attr]
            return rec is not None and rec.state == "delivered"

        await wait_until(fresh_delivered, 15)
        assert (await _purged_metrics(port)).get("messages") == 4.0
    finally:
        await session.close()
        await d.stop()
    assert await _count(engine, "SELECT COUNT(*) FROM messages") == 1
    check, show = (
        _cli(cfg_path, "bill", "check"),
        _cli(cfg_path, "bill", "show", made["account"], "--month", sorted(months)[0]),
    )
    out, err = check.communicate(timeout=60)
    assert check.returncode == 0 and json.loads(out)["ok"] is True, (out, err)
    out, err = show.communicate(timeout=60)
    assert show.returncode == 0 and json.loads(out)["status"] == "settled", (out, err)


async def _dead(d: Daemon, n: int) -> bool:
    assert d.store is not None
    return await d.store.count_dead_webhooks(None) == n


async def _count(eng: Any, sql: str) -> int:
    return int((await _rows(eng, sql))[0][0])


async def _has(eng: Any, sql: str, n: int) -> bool:
    return await _count(eng, sql) == n
