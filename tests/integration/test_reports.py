"""Reports (GET /v1/stats, GET /v1/cdrs) and the operator views (/admin/smscs, /admin/queue,
/admin/receipts/unmatched, /admin/webhooks/dead, /admin/webhooks/replay) over a real server and a
real SQLite file. Messages are put in place through the store (accept) and moved through their
life cycle the way the pipeline does it (claim, record_submits, apply_receipts, sweep), never by
raw SQL. Every reply is validated against the OpenAPI document (see conftest)."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.api import reports
from bridge.api.admin_ops import down_routes, queue_view, smsc_view
from bridge.api.reports import CDR_COLUMNS, CDR_PAGE, sheet_safe
from bridge.api.views import iso
from bridge.ids import new_id
from bridge.smpp.router import DEFAULT_KEY
from bridge.store.base import PARK_MS, Store
from bridge.store.models import (
    AcceptBatch,
    NewMessage,
    NewSegment,
    QueueGroup,
    ReceiptIn,
    Release,
    SubmitResult,
)
from tests import store_engines
from tests.integration.test_store import account as store_account

SEC = 1000
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR
LEASE = 5 * MIN


def ms(text: str) -> int:
    """'2026-03-01T00:00:00.000' (UTC) -> unix milliseconds."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


D0 = ms("2026-03-01T00:00:00")  # a Sunday; March 2026 is the CDR month below
D1, D2, D3 = D0 + DAY, D0 + 2 * DAY, D0 + 3 * DAY


def new_message(
    account_id: str,
    at: int,
    *,
    parts: int = 1,
    units: int | None = None,
    to: str = "+8613800138000",
    scheduled_at: int | None = None,
    **fields: Any,
) -> NewMessage:
    mid = new_id("msg_", at)
    return NewMessage(
        id=mid,
        account_id=account_id,
        batch_id=new_id("bat_", at),
        recipient=to,
        encoding="gsm7",
        data_coding=0,
        billable_units=parts if units is None else units,
        segments=tuple(
            NewSegment(i, parts, 0x40 if parts > 1 else 0, f"{mid}/{i}".encode(), b"")
            for i in range(1, parts + 1)
        ),
        accepted_at=at,
        text="hello",
        scheduled_at=scheduled_at,
        **fields,
    )


async def accept(store: Any, account_id: str, *msgs: NewMessage) -> None:
    out = await store.accept(
        AcceptBatch(account_id, tuple(msgs), None, None), max(m.accepted_at for m in msgs)
    )
    assert out.accepted


def sent(m: NewMessage, seq: int, at: int, smsc: str = "main") -> SubmitResult:
    ident = f"{m.id[-10:]}-{seq}".lower()
    return SubmitResult(m.id, seq, "sent", smsc, ident, ident.upper(), at=at)


def receipt(
    m: NewMessage, seq: int, at: int, state: str = "delivered", smsc: str = "main"
) -> ReceiptIn:
    ident = f"{m.id[-10:]}-{seq}".lower()
    return ReceiptIn(smsc, ident, state, None, None, at, at)


async def claim_ids(store: Any, now: int) -> set[str]:
    return {w.id for w in await store.claim("test", 10_000, now, LEASE)}


def parse_csv(body: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))


# ================================================================================================
# GET /v1/stats
# ================================================================================================


async def test_stats_per_utc_day_from_real_life_cycles(api_server, make_account, store):
    a = await make_account()
    b = await make_account()
    A = a.account_id
    a0 = new_message(A, D0 - 1)  # the last ms of the day before: outside
    a1 = new_message(A, D0, parts=2)  # first ms of day 0: delivered
    a2 = new_message(A, D1 - 1, units=1)  # last ms of day 0: submit refused -> failed
    a3 = new_message(A, D1, parts=3)  # first ms of day 1: sent, no receipt yet -> pending
    a4 = new_message(A, D1 + HOUR)  # still queued -> pending
    a6 = new_message(A, D1 + 2 * HOUR)  # no receipt within the timeout -> unknown
    a7 = new_message(A, D1 + 3 * HOUR, parts=2, units=1)  # validity passed unsent -> failed
    a8 = new_message(A, D2)  # the first ms after `to`: outside
    await accept(store, A, a0, a1, a2, a3, a4, a6, a7, a8)
    await accept(store, b.account_id, new_message(b.account_id, D0 + HOUR, parts=5))

    t = D3 + HOUR
    assert {a1.id, a2.id, a3.id, a4.id, a6.id, a7.id} <= await claim_ids(store, t)
    await store.record_submits(
        [
            sent(a1, 1, t),
            sent(a1, 2, t),
            SubmitResult(a2.id, 1, "failed", "main", error_code="ESME_RINVDSTADR", at=t),
            sent(a6, 1, t),
            SubmitResult(a7.id, 1, "expired", "", at=t),
            SubmitResult(a7.id, 2, "expired", "", at=t),
        ],
        [Release(a4.id, t + DAY), Release(a3.id, t)],
        t,
    )
    await store.apply_receipts([receipt(a1, 1, t + SEC), receipt(a1, 2, t + SEC)], t + SEC)
    swept = await store.sweep(t + 2 * MIN, MIN)  # a6 had a minute for its receipt
    assert swept["timed_out"] == 1
    assert a3.id in await claim_ids(store, t + 3 * MIN)
    await store.record_submits([sent(a3, s, t + 3 * MIN) for s in (1, 2, 3)], [], t + 3 * MIN)
    states = {m.id: (await store.get_message(A, m.id)).state for m in (a1, a2, a3, a4, a6, a7)}
    assert states == {
        a1.id: "delivered",
        a2.id: "failed",
        a3.id: "sent",
        a4.id: "queued",
        a6.id: "unknown",
        a7.id: "expired",
    }

    r = await api_server.request("GET", "/v1/stats", creds=a, query="from=2026-03-01&to=2026-03-02")
    assert r.status == 200
    zero = dict.fromkeys(reports.STAT_FIELDS, 0)
    day0 = {**zero, "submitted": 2, "delivered": 1, "failed": 1, "segments": 3, "units": 3}
    day1 = {
        **zero,
        "submitted": 4,
        "failed": 1,
        "pending": 2,
        "unknown": 1,
        "segments": 7,
        "units": 6,
    }
    assert r.json == {
        "from": "2026-03-01",
        "to": "2026-03-02",
        "timezone": "UTC",
        "days": [{"date": "2026-03-01", **day0}, {"date": "2026-03-02", **day1}],
        "totals": {k: day0[k] + day1[k] for k in zero},
        "history_from": None,  # everything is kept (store.retention_days 0)
    }

    # Days without traffic are listed with zeros; a8 is on 03-03, nothing on 03-04.
    r = await api_server.request("GET", "/v1/stats", creds=a, query="from=2026-03-03&to=2026-03-04")
    assert r.json["days"] == [
        {"date": "2026-03-03", **zero, "submitted": 1, "pending": 1, "segments": 1, "units": 1},
        {"date": "2026-03-04", **zero},
    ]
    # Another account sees its own traffic only.
    r = await api_server.request("GET", "/v1/stats", creds=b, query="from=2026-02-28&to=2026-03-04")
    assert [d["submitted"] for d in r.json["days"]] == [0, 1, 0, 0, 0]
    assert r.json["totals"]["segments"] == 5


async def test_stats_range_boundaries(api_server, make_account, store):
    a = await make_account()
    await accept(store, a.account_id, new_message(a.account_id, ms("2026-04-02T23:59:59.999")))
    r = await api_server.request("GET", "/v1/stats", creds=a, query="from=2026-01-01&to=2026-04-02")
    assert r.status == 200  # 31 + 28 + 31 + 2 = 92 days: the most allowed
    assert len(r.json["days"]) == 92
    assert r.json["days"][-1]["submitted"] == 1
    assert r.json["totals"]["submitted"] == 1
    r = await api_server.request("GET", "/v1/stats", creds=a, query="from=2026-01-01&to=2026-04-03")
    assert (r.status, r.code) == (400, "INVALID_FIELD")
    assert "92" in r.message
    r = await api_server.request("GET", "/v1/stats", creds=a, query="to=2026-03-01&from=2026-03-01")
    assert [d["date"] for d in r.json["days"]] == ["2026-03-01"]


@pytest.mark.parametrize(
    "query, code, names",
    [
        ("", "MISSING_FIELD", "from"),
        ("from=2026-03-01", "MISSING_FIELD", "to"),
        ("to=2026-03-01", "MISSING_FIELD", "from"),
        ("from=2026-03-02&to=2026-03-01", "INVALID_FIELD", "to"),
        ("from=2026-3-1&to=2026-03-02", "INVALID_FIELD", "from"),
        ("from=2026-02-30&to=2026-03-02", "INVALID_FIELD", "from"),
        ("from=2026-03-01&to=tomorrow", "INVALID_FIELD", "to"),
        ("from=2026-03-01&to=%EF%BC%92026-03-02", "INVALID_FIELD", "to"),  # full-width digit
        ("from=2026-03-01&to=2026-03-02&from=2026-03-01", "INVALID_FIELD", "from"),
        ("from=2026-03-01&to=2026-03-02&tz=%2B08%3A00", "UNKNOWN_FIELD", "tz"),
    ],
)
async def test_stats_bad_parameters(api_server, make_account, query, code, names):
    a = await make_account()
    r = await api_server.request("GET", "/v1/stats", creds=a, query=query)
    assert (r.status, r.code) == (400, code)
    assert r.message.startswith(names)


async def test_reports_are_signed(api_server):
    for path, query in (
        ("/v1/stats", "from=2026-03-01&to=2026-03-01"),
        ("/v1/cdrs", "month=2026-03"),
    ):
        r = await api_server.request("GET", path, query=query)
        assert (r.status, r.code) == (401, "MISSING_AUTH")


# ================================================================================================
# GET /v1/cdrs
# ================================================================================================


async def test_cdr_csv_round_trips_and_matches_the_messages(api_server, make_account, store):
    a = await make_account()
    b = await make_account()
    A = a.account_id
    m1 = new_message(
        A,
        D0,
        parts=2,
        client_ref='order, "42"\nline two',
        sender="106900",
        sign_name="阿里云",
        template="SMS_001",
    )
    m2 = new_message(A, D0 + HOUR, to="+14155550100", client_ref="ünïcödé 😀")
    m3 = new_message(A, ms("2026-03-31T23:59:59.999"))
    before = new_message(A, ms("2026-02-28T23:59:59.999"))
    after = new_message(A, ms("2026-04-01T00:00:00"))
    await accept(store, A, m1, m2, m3, before, after)
    other = new_message(b.account_id, D0 + 2 * HOUR)
    await accept(store, b.account_id, other)
    t = ms("2026-04-02T00:00:00")
    await claim_ids(store, t)
    await store.record_submits(
        [
            sent(m1, 1, t),
            sent(m1, 2, t),
            SubmitResult(m2.id, 1, "failed", "main", error_code="ESME_RINVDSTADR", at=t),
        ],
        [Release(m3.id, t + DAY), Release(before.id, t + DAY), Release(after.id, t + DAY)],
        t,
    )
    await store.apply_receipts(
        [receipt(m1, 1, t + SEC), receipt(m1, 2, t + SEC, "undeliverable")], t + SEC
    )

    r = await api_server.request("GET", "/v1/cdrs", creds=a, query="month=2026-03")
    assert r.status == 200
    assert r.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert r.headers["Content-Disposition"] == 'attachment; filename="cdr-2026-03.csv"'
    assert r.headers["Transfer-Encoding"] == "chunked"  # streamed, not buffered
    assert r.body.endswith(b"\r\n")
    rows = parse_csv(r.body)
    assert rows[0] == list(CDR_COLUMNS)
    assert [row[0] for row in rows[1:]] == [m1.id, m2.id, m3.id]
    for row in rows[1:]:
        rec = await store.get_message(A, row[0])
        expected = [
            rec.id,
            rec.batch_id,
            rec.client_ref or "",
            rec.recipient,
            rec.sender or "",
            rec.sign_name or "",
            rec.template or "",
            rec.state,
            rec.error_code or "",
            rec.encoding,
            str(rec.segments),
            str(rec.billable_units),
            iso(rec.accepted_at),
            iso(rec.sent_at) or "",
            iso(rec.done_at) or "",
            rec.smsc or "",
        ]
        assert row == expected
    by_id = {row[0]: dict(zip(CDR_COLUMNS, row, strict=True)) for row in rows[1:]}
    assert by_id[m1.id]["client_ref"] == 'order, "42"\nline two'
    assert by_id[m1.id]["status"] == "failed"
    assert by_id[m1.id]["error_code"] == "UNDELIV"
    assert by_id[m1.id]["sign_name"] == "阿里云"
    assert by_id[m1.id]["segments"] == "2"
    assert by_id[m1.id]["accepted_at"] == "2026-03-01T00:00:00.000Z"
    assert by_id[m1.id]["smsc"] == "main"
    assert by_id[m2.id]["to"] == "+14155550100"  # a plain number keeps its +
    assert by_id[m2.id]["client_ref"] == "ünïcödé 😀"
    assert by_id[m2.id]["error_code"] == "ESME_RINVDSTADR"
    assert by_id[m3.id]["status"] == "queued"
    assert by_id[m3.id]["sent_at"] == by_id[m3.id]["smsc"] == ""

    # The other account's CDRs hold only its own message.
    r = await api_server.request("GET", "/v1/cdrs", creds=b, query="month=2026-03")
    assert [row[0] for row in parse_csv(r.body)[1:]] == [other.id]
    # A month without traffic: the header alone.
    r = await api_server.request("GET", "/v1/cdrs", creds=b, query="month=2026-05")
    assert r.status == 200
    assert r.body == (",".join(CDR_COLUMNS) + "\r\n").encode()


@pytest.mark.parametrize(
    "value, expected",
    [
        ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
        ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("-", "'-"),
        ("+8613800138000", "+8613800138000"),
        ("-12", "-12"),
        ("+3.5", "+3.5"),
        ("a=1", "a=1"),
        (" =1", " =1"),
        ("", ""),
    ],
)
def test_sheet_safe(value, expected):
    assert sheet_safe(value) == expected


async def test_cdr_fields_are_defused_for_spreadsheets(api_server, make_account, store):
    a = await make_account()
    A = a.account_id
    evil = [
        new_message(A, D0 + 1, client_ref="=cmd|' /C calc'!A0"),
        new_message(A, D0 + 2, client_ref="@SUM(1+1)*cmd|' /C calc'!A0", sign_name="+1+1"),
        new_message(A, D0 + 3, client_ref="-10+20", template="=1+1", sender="-abc"),
        new_message(A, D0 + 4, client_ref="-42"),
    ]
    await accept(store, A, *evil)
    r = await api_server.request("GET", "/v1/cdrs", creds=a, query="month=2026-03")
    rows = [dict(zip(CDR_COLUMNS, row, strict=True)) for row in parse_csv(r.body)[1:]]
    assert [row["client_ref"] for row in rows] == [
        "'=cmd|' /C calc'!A0",
        "'@SUM(1+1)*cmd|' /C calc'!A0",
        "'-10+20",
        "-42",
    ]
    assert rows[1]["sign_name"] == "'+1+1"
    assert (rows[2]["template"], rows[2]["sender"]) == ("'=1+1", "'-abc")
    assert all(row["to"] == "+8613800138000" for row in rows)
    for row in rows:  # nothing a spreadsheet would evaluate is left
        for value in row.values():
            assert not value or value[0] not in "=+-@\t\r" or re.fullmatch(r"[+-][0-9]+", value)


async def test_cdrs_stream_in_pages_of_a_thousand(api_server, make_account, store, monkeypatch):
    a = await make_account()
    A = a.account_id
    total = 2 * CDR_PAGE + 600
    # Three messages per millisecond: page boundaries fall inside a millisecond, so the cursor
    # must break ties by id.
    msgs = [new_message(A, D0 + HOUR + i // 3, client_ref=f"r{i}") for i in range(total)]
    await accept(store, A, *msgs)
    await accept(store, A, new_message(A, ms("2026-04-01T00:00:00")))  # next month: not listed

    calls: list[tuple[Any, int, int]] = []
    real = store.cdr_page
    gate = asyncio.Event()

    async def counting(account_id, since, until, after, limit):
        if len(calls) == 2:
            await gate.wait()  # the third page waits until the client has read the first two
        page = await real(account_id, since, until, after, limit)
        calls.append((after, limit, len(page)))
        return page

    monkeypatch.setattr(store, "cdr_page", counting)
    client = api_server.client(a)
    headers = client.signed_headers("GET", "/v1/cdrs", "month=2026-03", b"", {})
    async with api_server.session.get(
        api_server.url + "/v1/cdrs?month=2026-03", headers=headers
    ) as resp:
        assert resp.status == 200
        assert resp.headers["Transfer-Encoding"] == "chunked"
        received = b""
        async with asyncio.timeout(10):
            while received.count(b"\r\n") < 1 + 2 * CDR_PAGE:
                received += await resp.content.readany()
        # Two pages reached the client while the third had not been read from the store.
        assert len(calls) == 2
        gate.set()
        received += await resp.read()
    await client.close()

    assert [(limit, n) for _after, limit, n in calls] == [(1000, 1000), (1000, 1000), (1000, 600)]
    assert calls[0][0] is None
    assert calls[1][0] == (msgs[999].accepted_at, sorted(m.id for m in msgs)[999])
    rows = parse_csv(received)
    assert rows[0] == list(CDR_COLUMNS)
    ids = [row[0] for row in rows[1:]]
    assert len(ids) == total
    assert ids == sorted(m.id for m in msgs)  # every message once, in acceptance (= id) order
    assert {row[2] for row in rows[1:]} == {f"r{i}" for i in range(total)}


async def test_cdr_store_failure_mid_stream_cuts_the_connection(
    api_server, make_account, store, monkeypatch
):
    a = await make_account()
    A = a.account_id
    await accept(store, A, *[new_message(A, D0 + i) for i in range(CDR_PAGE + 5)])
    real = store.cdr_page
    calls = 0

    async def failing(*args):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise RuntimeError("disk on fire")
        return await real(*args)

    monkeypatch.setattr(store, "cdr_page", failing)
    client = api_server.client(a)
    headers = client.signed_headers("GET", "/v1/cdrs", "month=2026-03", b"", {})
    async with api_server.session.get(
        api_server.url + "/v1/cdrs?month=2026-03", headers=headers
    ) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await resp.read()  # a truncated transfer, never a short file that looks complete
    await client.close()
    monkeypatch.setattr(store, "cdr_page", real)
    r = await api_server.request("GET", "/v1/cdrs", creds=a, query="month=2026-03")
    assert len(parse_csv(r.body)) == 1 + CDR_PAGE + 5  # the server carries on
    # Counted as what it was: the headers said 200, the answer was cut (before: OK).
    assert cdr_answers(api_server) == {("200", "STREAM_FAILED"): 1.0, ("200", "OK"): 1.0}


def cdr_answers(api_server) -> dict[tuple[str, str], float]:
    text = api_server.ctx.metrics.exposition().decode()
    return {
        (s.labels["status"], s.labels["code"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "smpp_bridge_api_requests_total" and s.labels["endpoint"] == "GET /v1/cdrs"
    }


@pytest.mark.parametrize(
    "query, code, name",
    [
        ("", "MISSING_FIELD", "month"),
        ("month=2026-3", "INVALID_FIELD", "month"),
        ("month=2026-13", "INVALID_FIELD", "month"),
        ("month=2026-00", "INVALID_FIELD", "month"),
        ("month=1969-12", "INVALID_FIELD", "month"),
        ("month=2026-03-01", "INVALID_FIELD", "month"),
        ("month=march", "INVALID_FIELD", "month"),
        ("month=2026-03&month=2026-04", "INVALID_FIELD", "month"),
        ("month=2026-03&format=xlsx", "UNKNOWN_FIELD", "format"),
    ],
)
async def test_cdr_bad_parameters(api_server, make_account, query, code, name):
    a = await make_account()
    r = await api_server.request("GET", "/v1/cdrs", creds=a, query=query)
    assert (r.status, r.code) == (400, code)
    assert r.message.startswith(name)
    assert r.headers["Content-Type"].startswith("application/json")


async def test_cdr_month_edges(api_server, make_account, store):
    a = await make_account()
    A = a.account_id
    dec = new_message(A, ms("2025-12-31T23:59:59.999"))
    jan = new_message(A, ms("2026-01-01T00:00:00"))
    feb_last = new_message(A, ms("2024-02-29T12:00:00"))  # leap day
    await accept(store, A, dec, jan, feb_last)
    for month, expected in (
        ("2025-12", [dec.id]),
        ("2026-01", [jan.id]),
        ("2024-02", [feb_last.id]),
    ):
        r = await api_server.request("GET", "/v1/cdrs", creds=a, query=f"month={month}")
        assert [row[0] for row in parse_csv(r.body)[1:]] == expected, month
    r = await api_server.request("GET", "/v1/cdrs", creds=a, query="month=9999-12")
    assert parse_csv(r.body) == [list(CDR_COLUMNS)]


# ================================================================================================
# Operator views
# ================================================================================================

ADMIN_VIEWS = [
    ("GET", "/admin/smscs", None),
    ("GET", "/admin/queue", None),
    ("GET", "/admin/receipts/unmatched", None),
    ("GET", "/admin/webhooks/dead", None),
    ("POST", "/admin/webhooks/replay", {"ids": [1]}),
]


@pytest.mark.parametrize("method, path, body", ADMIN_VIEWS)
async def test_operator_views_need_the_admin_token(api_server, make_account, method, path, body):
    kw: dict[str, Any] = {} if body is None else {"json": body}
    for token in (None, "wrong-token-0123456789"):
        r = await api_server.admin(method, path, token=token, **kw)
        assert (r.status, r.code) == (401, "INVALID_ADMIN_TOKEN")
    creds = await make_account()
    r = await api_server.request(method, path, creds=creds, **kw)
    assert (r.status, r.code) == (401, "INVALID_ADMIN_TOKEN")
    r = await api_server.admin(method, path, **kw)
    assert r.status == 200


async def test_operator_views_disabled_without_a_token(make_api):
    api = await make_api({"server": {"admin_token": None}})
    for method, path, body in ADMIN_VIEWS:
        kw: dict[str, Any] = {} if body is None else {"json": body}
        r = await api.admin(method, path, **kw)
        assert (r.status, r.code) == (403, "ADMIN_DISABLED")


SNAPSHOT = {
    "name": "main",
    "up": True,
    "sending": True,
    "receiving": True,
    "binds": {"transmitter": {"configured": 2, "up": 1}, "receiver": {"configured": 2, "up": 2}},
    "window": {"size": 50, "in_use": 7},
    "free_slots": 43,
    "tps": 120,
    "tps_avg": 87.5,
    "tps_limit": 200.0,
    "throttle_events": 3,
    "throttle_pauses": 1,
    "paused_binds": 0,
    "transient_retries": 2,
    "reconnects": 1,
    "last_error": {"message": "connect refused", "at": 1_772_323_200.25},
    "submits": {"ok": 1000, "failed": {"ESME_RINVDSTADR": 4, "ESME_RSYSERR": 1}},
    "rtt_ms_avg": 3.25,
    "delivers": 990,
    "some_new_counter": 5,  # not part of the API until documented
}


async def test_admin_smscs_renders_the_live_state(api_server):
    r = await api_server.admin("GET", "/admin/smscs")
    assert r.json == {"smscs": []}  # no connectors in this server
    api_server.ctx.smsc_status = lambda: {
        "zeta": {"up": False, "name": "zeta"},
        "main": {"up": True, **SNAPSHOT},
    }
    r = await api_server.admin("GET", "/admin/smscs")
    assert r.status == 200
    main, zeta = r.json["smscs"]  # configured SMSCs first, in config order
    assert main == {
        "name": "main",
        "up": True,
        "sending": True,
        "receiving": True,
        "state": "up",
        "binds": {
            "transmitter": {"configured": 2, "up": 1},
            "receiver": {"configured": 2, "up": 2},
        },
        "binds_up": 3,
        "window": {"size": 50, "in_use": 7},
        "free_slots": 43,
        "tps": 120,
        "tps_avg": 87.5,
        "tps_limit": 200.0,
        "tps_configured": 200.0,  # a status without it (an older release's): the share stands in
        "throttle_events": 3,
        "throttle_pauses": 1,
        "paused_binds": 0,
        "transient_retries": 2,
        "reconnects": 1,
        "last_error": {"message": "connect refused", "at": "2026-03-01T00:00:00.250Z"},
        "submits": {
            "ok": 1000,
            "failed": {"ESME_RINVDSTADR": 4, "ESME_RSYSERR": 1},
            "failed_total": 5,
        },
        "delivers": 990,
        "rtt_ms_avg": 3.25,
        "fleet": None,  # a daemon alone on its store
    }
    assert zeta["up"] is False and zeta["binds"] == {} and zeta["last_error"] is None
    assert zeta["state"] == "down"
    assert (zeta["sending"], zeta["receiving"]) == (False, None)  # as written before session 50
    assert zeta["submits"] == {"ok": 0, "failed": {}, "failed_total": 0}
    r = await api_server.admin("GET", "/admin/smscs", query="verbose=1")
    assert (r.status, r.code) == (400, "UNKNOWN_FIELD")


def test_smsc_view_survives_a_partial_snapshot():
    view = smsc_view("x", {"up": 1, "window": None, "last_error": {"message": "boom"}})
    assert view["up"] is True
    assert view["window"] == {"size": 0, "in_use": 0}
    assert view["last_error"] == {"message": "boom", "at": None}
    # A status written by an older release (no tps_avg): its last second stands in.
    assert smsc_view("x", {"tps": 40})["tps_avg"] == 40.0
    assert smsc_view("x", {"tps": 40, "tps_avg": 12.5})["tps_avg"] == 12.5
    assert smsc_view("x", {"up": False, "state": "reconnecting"})["state"] == "reconnecting"
    assert smsc_view("x", {"up": False, "state": "bogus"})["state"] == "down"


async def test_admin_queue_by_account_route_and_smsc(make_api, clock):
    api = await make_api(
        {
            "smscs": [{"name": "main", "system_id": "b"}, {"name": "intl", "system_id": "b2"}],
            "routes": [
                {"prefix": "+86", "smscs": ["main", "intl"]},
                {"prefix": "+8613", "smscs": ["intl"]},
                {"prefix": "+1", "smscs": ["intl"]},
            ],
            "default_route": ["main"],
        }
    )
    store = api.store
    now = int(clock.freeze(D0 / 1000 + 10 * 60)) * 1000
    a = await api.create_account("alpha")
    b = await api.create_account("beta")
    A, B = a.account_id, b.account_id
    cn13 = new_message(A, now - 10 * MIN, parts=3, to="+8613800138000")  # +8613 -> intl
    cn15 = new_message(A, now - 9 * MIN, to="+8615800158000")  # +86 -> main
    us = new_message(A, now - 8 * MIN, parts=2, to="+14155550100")  # +1 -> intl
    later = new_message(A, now - 7 * MIN, to="+8615800158001", scheduled_at=now + HOUR)
    uk = new_message(B, now - 5 * MIN, to="+447700900123")  # default route -> main
    done = new_message(B, now - 4 * MIN, to="+447700900124")  # sent in full: not queued
    await accept(store, A, cn13, cn15, us, later)
    await accept(store, B, uk, done)
    assert await claim_ids(store, now - 3 * MIN) == {cn13.id, cn15.id, us.id, uk.id, done.id}
    await store.record_submits(
        [sent(cn13, 1, now - 3 * MIN, "intl"), sent(done, 1, now - 3 * MIN)],
        [Release(us.id, now + MIN), Release(uk.id, now - 3 * MIN)],  # us backs off
        now - 3 * MIN,
    )
    # cn13 (2 parts left) and cn15 stay claimed: with the dispatcher.

    r = await api.admin("GET", "/admin/queue")
    assert r.status == 200
    q = r.json
    assert q["depth"] == 2 + 1 + 2 + 1 + 1 == await store.queue_depth()
    assert q["messages"] == 5
    assert q["limit"] == api.config.store.max_queued_segments
    assert q["by_state"] == {
        "ready": {"messages": 1, "parts": 1},  # uk
        "claimed": {"messages": 2, "parts": 3},  # cn13 (2 left), cn15
        "retry_wait": {"messages": 1, "parts": 2},  # us
        "parked": {"messages": 0, "parts": 0},
        "scheduled": {"messages": 1, "parts": 1},  # later
    }
    # The oldest wait: cn13, accepted 10 minutes ago (the scheduled one does not count).
    assert q["oldest_age_s"] == 600.0
    assert q["oldest_waiting_since"] == iso(now - 10 * MIN)
    assert q["by_account"] == [
        {"account_id": A, "name": "alpha", "messages": 4, "parts": 6, "oldest_age_s": 600.0},
        {"account_id": B, "name": "beta", "messages": 1, "parts": 1, "oldest_age_s": 300.0},
    ]
    assert q["by_route"] == [
        {"prefix": "+1", "smscs": ["intl", "main"], "messages": 1, "parts": 2},
        {"prefix": "+86", "smscs": ["main", "intl"], "messages": 2, "parts": 2},
        {"prefix": "+8613", "smscs": ["intl", "main"], "messages": 1, "parts": 2},
        {"prefix": None, "smscs": ["main"], "messages": 1, "parts": 1},
    ]
    assert q["by_smsc"] == [
        {"smsc": "intl", "messages": 2, "parts": 4},
        {"smsc": "main", "messages": 3, "parts": 3},
    ]


async def test_admin_queue_empty(api_server):
    r = await api_server.admin("GET", "/admin/queue")
    assert r.json["depth"] == 0
    assert r.json["oldest_age_s"] is None and r.json["oldest_waiting_since"] is None
    assert r.json["by_account"] == r.json["by_route"] == r.json["by_smsc"] == []
    assert all(v == {"messages": 0, "parts": 0} for v in r.json["by_state"].values())


# The queue report on both engines (the server above runs on SQLite only): `engine` is the
# parameter of `any_store`; not named `store`, which is the API server's store in this module.
engine = store_engines.engine


@pytest.fixture
async def any_store(engine: store_engines.EngineHandle) -> Any:
    s = engine.new_store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def park_down_routes(recipient: str) -> str | None:
    """+44 and the default route have no SMSC up; +86 has."""
    if recipient.startswith("+44"):
        return "+44"
    return None if recipient.startswith("+86") else DEFAULT_KEY


async def test_queue_groups_tell_parked_from_retry_wait(any_store: Store):
    store, now = any_store, D0
    await store.create_account(store_account("acc_q"))
    uk1 = new_message("acc_q", now - 3 * MIN, parts=2, to="+447700900001")
    uk2 = new_message("acc_q", now - 2 * MIN, to="+447700900002")
    fr = new_message("acc_q", now - 90 * SEC, to="+33612345678")  # default route
    cn = new_message("acc_q", now - MIN, to="+8613800138000")
    await accept(store, "acc_q", uk1, uk2, fr, cn)
    claimed = await store.claim("test", 100, now, LEASE, park=park_down_routes)
    assert [w.id for w in claimed] == [cn.id]
    await store.record_submits([], [Release(cn.id, now + 30 * SEC)], now)  # cn backs off
    routes = ["+44", "+86"]

    # Parked messages are due again at now + PARK_MS, like a back-off, but are not one.
    assert await store.queue_groups(now, routes) == [
        QueueGroup("acc_q", "", "parked", 1, 1, now - 90 * SEC),
        QueueGroup("acc_q", "+44", "parked", 2, 3, now - 3 * MIN),
        QueueGroup("acc_q", "+86", "retry_wait", 1, 1, now - MIN),
    ]
    # Parked whatever q_not_before says: past it, still parked (the claim has not met them
    # again); the back-off one is ready at the end of its back-off, not a millisecond before.
    at = now + PARK_MS
    assert await store.queue_groups(now + 30 * SEC - 1, routes) == await store.queue_groups(
        now, routes
    )
    assert [(g.route, g.bucket) for g in await store.queue_groups(at, routes)] == [
        ("", "parked"),
        ("+44", "parked"),
        ("+86", "ready"),
    ]

    # A bind of +44 comes up: its messages are ready; the default route stays parked.
    assert await store.unpark(["+44"], at) == 2
    assert await store.queue_groups(at, routes) == [
        QueueGroup("acc_q", "", "parked", 1, 1, now - 90 * SEC),
        QueueGroup("acc_q", "+44", "ready", 2, 3, now - 3 * MIN),
        QueueGroup("acc_q", "+86", "ready", 1, 1, now - MIN),
    ]
    assert await store.unpark([DEFAULT_KEY], at) == 1
    assert {g.bucket for g in await store.queue_groups(at, routes)} == {"ready"}


async def test_admin_queue_shows_parked_messages_as_a_backlog(make_api, clock):
    """The API view over SQLite (validated against the OpenAPI document): parked counts under
    its own state, and in the oldest wait (unlike scheduled: a route down is a backlog)."""
    api = await make_api(
        {
            "smscs": [{"name": "main", "system_id": "b"}, {"name": "intl", "system_id": "b2"}],
            "routes": [{"prefix": "+44", "smscs": ["intl"]}],
            "default_route": ["main"],
        }
    )
    store = api.store
    now = int(clock.freeze(D0 / 1000 + 10 * 60)) * 1000
    a = await api.create_account("alpha")
    A = a.account_id
    uk = new_message(A, now - 10 * MIN, parts=2, to="+447700900123")
    cn = new_message(A, now - 5 * MIN, to="+8613800138000")
    await accept(store, A, uk, cn)
    claimed = await store.claim("test", 100, now - MIN, LEASE, park=park_down_routes)
    assert [w.id for w in claimed] == [cn.id]
    await store.record_submits([], [Release(cn.id, now + MIN)], now - MIN)

    q = (await api.admin("GET", "/admin/queue")).json
    assert q["by_state"] == {
        "ready": {"messages": 0, "parts": 0},
        "claimed": {"messages": 0, "parts": 0},
        "retry_wait": {"messages": 1, "parts": 1},  # cn
        "parked": {"messages": 1, "parts": 2},  # uk
        "scheduled": {"messages": 0, "parts": 0},
    }
    assert q["depth"] == 3 == await store.queue_depth()
    assert q["oldest_age_s"] == 600.0  # uk, parked
    assert q["by_route"][0] == {
        "prefix": "+44",
        "smscs": ["intl", "main"],
        "messages": 1,
        "parts": 2,
    }

    assert await store.unpark(["+44"], now) == 1
    q = (await api.admin("GET", "/admin/queue")).json
    assert q["by_state"]["parked"] == {"messages": 0, "parts": 0}
    assert q["by_state"]["ready"] == {"messages": 1, "parts": 2}


def test_queue_view_without_routes_counts_under_no_smsc():
    groups = [QueueGroup("acc_x", "", "ready", 2, 5, 1_000)]
    view = queue_view(groups, 3_500, {}, {"": ()}, 10)
    assert view["by_smsc"] == [{"smsc": None, "messages": 2, "parts": 5}]
    assert view["by_account"][0]["name"] is None
    assert view["oldest_age_s"] == 2.5


async def test_admin_unmatched_receipts(api_server, make_account, store, clock):
    now = int(clock.freeze(D1 / 1000)) * 1000
    a = await make_account()
    m = new_message(a.account_id, now - HOUR)
    await accept(store, a.account_id, m)
    stray = [
        ReceiptIn(
            "main",
            f"ff{i:02d}",
            "delivered",
            "DELIVRD",
            "000",
            now - (10 - i) * MIN,
            now - (10 - i) * MIN,
            f"id:ff{i:02d} stat:DELIVRD",
        )
        for i in range(5)
    ]  # received 10, 9, 8, 7 and 6 minutes ago
    early = receipt(m, 1, now - 5 * MIN)  # beat its submit_sm_resp to the store
    assert (await store.apply_receipts([*stray, early], now - 5 * MIN)).pending == 6

    r = await api_server.admin("GET", "/admin/receipts/unmatched")
    assert (r.json["total"], r.json["matching"], r.json["older_than_s"]) == (6, 6, 0)
    assert [x["smsc_message_id"] for x in r.json["receipts"]] == [
        "ff00",
        "ff01",
        "ff02",
        "ff03",
        "ff04",
        early.smsc_msg_id,
    ]
    first = r.json["receipts"][0]
    assert first["smsc"] == "main" and first["state"] == "delivered" and first["stat"] == "DELIVRD"
    assert first["received_at"] == iso(now - 10 * MIN) and first["age_s"] == 600.0
    assert first["raw"] == "id:ff00 stat:DELIVRD"

    r = await api_server.admin("GET", "/admin/receipts/unmatched", query="older_than_s=420&limit=2")
    assert (r.json["total"], r.json["matching"]) == (6, 4)  # 10, 9, 8 and 7 minutes old
    assert [x["smsc_message_id"] for x in r.json["receipts"]] == ["ff00", "ff01"]

    # Its submit_sm_resp lands: the early receipt is applied and leaves the list.
    assert m.id in await claim_ids(store, now)
    await store.record_submits([sent(m, 1, now)], [], now)
    assert (await store.get_message(a.account_id, m.id)).state == "delivered"
    r = await api_server.admin("GET", "/admin/receipts/unmatched")
    assert r.json["total"] == 5
    assert early.smsc_msg_id not in {x["smsc_message_id"] for x in r.json["receipts"]}


@pytest.mark.parametrize(
    "query, code, name",
    [
        ("limit=0", "INVALID_FIELD", "limit"),
        ("limit=1001", "INVALID_FIELD", "limit"),
        ("limit=ten", "INVALID_FIELD", "limit"),
        ("older_than_s=-1", "INVALID_FIELD", "older_than_s"),
        ("older_than_s=%C2%B2", "INVALID_FIELD", "older_than_s"),  # superscript two
        ("smsc=main", "UNKNOWN_FIELD", "smsc"),
    ],
)
async def test_admin_unmatched_receipts_bad_parameters(api_server, query, code, name):
    r = await api_server.admin("GET", "/admin/receipts/unmatched", query=query)
    assert (r.status, r.code) == (400, code)
    assert r.message.startswith(name)


async def _dead_status_webhook(api, creds, at: int) -> tuple[int, str]:
    """A message goes final, its status report is queued, the receiver refuses it (410): dead."""
    store = api.store
    m = new_message(creds.account_id, at)
    await accept(store, creds.account_id, m)
    assert m.id in await claim_ids(store, at)
    await store.record_submits([sent(m, 1, at)], [], at)
    await store.apply_receipts([receipt(m, 1, at)], at)
    jobs = [j for j in await store.claim_webhooks(at, 100, LEASE) if j.payload == m.id]
    assert len(jobs) == 1 and jobs[0].kind == "status"
    await store.webhook_retry([jobs[0].id], at, "HTTP 410 Gone", dead=True)
    return jobs[0].id, m.id


async def test_admin_dead_webhooks_listed_and_replayed(api_server, make_account, store, clock):
    now = int(clock.freeze(D1 / 1000)) * 1000
    a = await make_account("hooked-a", status_callback_url="https://a.example/hook")
    b = await make_account("hooked-b", status_callback_url="https://b.example/hook")
    id_a, mid_a = await _dead_status_webhook(api_server, a, now - 2 * HOUR)
    id_b, _mid_b = await _dead_status_webhook(api_server, b, now - HOUR)
    woken = []
    api_server.ctx.on_webhooks_replayed = lambda: woken.append(1)

    r = await api_server.admin("GET", "/admin/webhooks/dead")
    assert r.json["total"] == 2
    assert [w["id"] for w in r.json["webhooks"]] == [id_a, id_b]
    assert r.json["webhooks"][0] == {
        "id": id_a,
        "webhook_id": f"st_{mid_a}",
        "account_id": a.account_id,
        "kind": "status",
        "ref_id": mid_a,
        "attempts": 1,
        "last_error": "HTTP 410 Gone",
        "created_at": iso(now - 2 * HOUR),
    }
    for ref in ("hooked-b", b.account_id):  # by name or id
        r = await api_server.admin("GET", "/admin/webhooks/dead", query=f"account={ref}")
        assert (r.json["total"], [w["id"] for w in r.json["webhooks"]]) == (1, [id_b])
    r = await api_server.admin("GET", "/admin/webhooks/dead", query="limit=1")
    assert (r.json["total"], [w["id"] for w in r.json["webhooks"]]) == (2, [id_a])
    r = await api_server.admin("GET", "/admin/webhooks/dead", query="account=nobody")
    assert (r.status, r.code) == (404, "NOT_FOUND")

    r = await api_server.admin(
        "POST", "/admin/webhooks/replay", json={"ids": [id_a, id_a, 999_999]}
    )
    assert r.json == {"requested": 2, "replayed": 1}
    assert woken == [1]
    r = await api_server.admin("GET", "/admin/webhooks/dead")
    assert [w["id"] for w in r.json["webhooks"]] == [id_b]
    # Pending again, due now, attempts reset: the sender picks it up.
    jobs = await store.claim_webhooks(now, 100, LEASE)
    assert [(j.id, j.payload, j.attempts) for j in jobs] == [(id_a, mid_a, 0)]
    # Replaying what is not dead changes nothing.
    r = await api_server.admin("POST", "/admin/webhooks/replay", json={"ids": [id_a]})
    assert r.json == {"requested": 1, "replayed": 0}
    assert woken == [1]


@pytest.mark.parametrize(
    "body, code",
    [
        ({}, "MISSING_FIELD"),
        ({"ids": []}, "INVALID_FIELD"),
        ({"ids": "1"}, "INVALID_FIELD"),
        ({"ids": [0]}, "INVALID_FIELD"),
        ({"ids": [1.5]}, "INVALID_FIELD"),
        ({"ids": [True]}, "INVALID_FIELD"),
        ({"ids": [2**63]}, "INVALID_FIELD"),
        ({"ids": list(range(1, 1002))}, "INVALID_FIELD"),
        ({"ids": [1], "all": True}, "UNKNOWN_FIELD"),
        ([1, 2], "INVALID_REQUEST"),
    ],
)
async def test_admin_replay_refusals(api_server, body, code):
    r = await api_server.admin("POST", "/admin/webhooks/replay", json=body)
    assert (r.status, r.code) == (400, code)


async def test_admin_replay_needs_json(api_server):
    r = await api_server.admin(
        "POST", "/admin/webhooks/replay", body=b"ids=1", content_type="text/plain"
    )
    assert (r.status, r.code) == (415, "UNSUPPORTED_MEDIA_TYPE")
    r = await api_server.admin(
        "POST", "/admin/webhooks/replay", body=b"{", content_type="application/json"
    )
    assert (r.status, r.code) == (400, "INVALID_JSON")


async def test_stats_name_the_first_day_the_retention_keeps_whole(make_api, clock) -> None:
    """With store.retention_days, days before the cut-off may have lost their finished messages:
    `history_from` names the first UTC day still whole, so a client does not read a purged day's
    zeros as a day without traffic."""
    api = await make_api({"store": {"retention_days": 31}})
    creds = await api.create_account()
    clock.freeze(1_772_409_600 + 3_600)  # 2026-03-02T01:00:00Z: the cut-off is 01-30 01:00
    r = await api.request("GET", "/v1/stats", creds=creds, query="from=2026-01-29&to=2026-01-31")
    assert r.status == 200, r.json
    assert r.json["history_from"] == "2026-01-31"
    clock.freeze(1_772_409_600)  # midnight: the cut-off is a day's start, that day is whole
    r = await api.request("GET", "/v1/stats", creds=creds, query="from=2026-01-29&to=2026-01-31")
    assert r.json["history_from"] == "2026-01-30"
    assert reports.history_from(0, 1_772_409_600_000) is None
    assert reports.history_from(31, 31 * reports.DAY_MS - 1) == "1970-01-01"


# ================================================================================================
# timezone=local: the days and months of the bills
# ================================================================================================


async def test_local_months_and_days_are_those_of_the_bills(api_server, make_account, store):
    """rules.timezone Asia/Shanghai (the default): local March starts 2026-02-28T16:00Z. In UTC
    the CDR export of March took the first eight hours of local March from February's bill and
    the first eight of April's in."""
    from bridge.domain.settlement import month_of

    a = await make_account()
    A = a.account_id
    feb = new_message(A, ms("2026-02-28T15:59:59.999"))  # local 2026-02-28 23:59:59.999
    mar = new_message(A, ms("2026-02-28T16:00:00"))  # local 2026-03-01 00:00
    apr = new_message(A, ms("2026-03-31T16:00:00"))  # local 2026-04-01 00:00
    await accept(store, A, feb, mar, apr)
    assert api_server.config.rules.timezone == "Asia/Shanghai"
    assert [month_of(m.accepted_at, "Asia/Shanghai") for m in (feb, mar, apr)] == [
        "2026-02",
        "2026-03",
        "2026-04",
    ]

    async def cdr(query: str) -> list[str]:
        r = await api_server.request("GET", "/v1/cdrs", creds=a, query=query)
        assert r.status == 200, r.body
        return [row[0] for row in parse_csv(r.body)[1:]]

    assert await cdr("month=2026-03") == [apr.id]  # UTC, the default
    assert await cdr("month=2026-03&timezone=utc") == [apr.id]
    assert await cdr("month=2026-03&timezone=local") == [mar.id]  # the bill's month
    assert await cdr("month=2026-02&timezone=local") == [feb.id]

    r = await api_server.request(
        "GET", "/v1/stats", creds=a, query="from=2026-03-01&to=2026-03-01&timezone=local"
    )
    assert r.status == 200, r.json
    assert r.json["timezone"] == "Asia/Shanghai"
    assert [(d["date"], d["submitted"]) for d in r.json["days"]] == [("2026-03-01", 1)]
    r = await api_server.request("GET", "/v1/stats", creds=a, query="from=2026-03-01&to=2026-03-01")
    assert r.json["timezone"] == "UTC" and r.json["totals"]["submitted"] == 0


async def test_a_local_day_of_25_hours_is_counted_whole(make_api, clock):
    """Europe/Berlin, 2026-10-25 lasts 25 hours and spans two UTC days: both halves count."""
    api = await make_api({"rules": {"timezone": "Europe/Berlin"}})
    creds = await api.create_account()
    A = creds.account_id
    early = new_message(A, ms("2026-10-24T22:30:00"))  # 00:30 CEST on the 25th
    late = new_message(A, ms("2026-10-25T22:30:00"))  # 23:30 CET on the 25th
    after = new_message(A, ms("2026-10-25T23:30:00"))  # 00:30 CET on the 26th
    await accept(api.store, A, early, late, after)
    r = await api.request(
        "GET", "/v1/stats", creds=creds, query="from=2026-10-24&to=2026-10-26&timezone=local"
    )
    assert r.status == 200, r.json
    assert [(d["date"], d["submitted"]) for d in r.json["days"]] == [
        ("2026-10-24", 0),
        ("2026-10-25", 2),
        ("2026-10-26", 1),
    ]
    r = await api.request("GET", "/v1/stats", creds=creds, query="from=2026-10-24&to=2026-10-26")
    assert [d["submitted"] for d in r.json["days"]] == [1, 2, 0]  # UTC days


@pytest.mark.parametrize(
    ("path", "query"),
    [
        ("/v1/stats", "from=2026-03-01&to=2026-03-01&timezone=Asia/Shanghai"),
        ("/v1/cdrs", "month=2026-03&timezone=LOCAL"),
    ],
)
async def test_timezone_is_utc_or_local(api_server, make_account, path, query):
    a = await make_account()
    r = await api_server.request("GET", path, creds=a, query=query)
    assert (r.status, r.code) == (400, "INVALID_FIELD")
    assert r.message.startswith("timezone")


async def test_local_edges_of_the_calendar(api_server, make_account):
    a = await make_account()
    r = await api_server.request("GET", "/v1/cdrs", creds=a, query="month=9999-12&timezone=local")
    assert (r.status, r.code) == (400, "INVALID_FIELD")
    r = await api_server.request(
        "GET", "/v1/stats", creds=a, query="from=9999-12-31&to=9999-12-31&timezone=local"
    )
    assert (r.status, r.code) == (400, "INVALID_FIELD")
    r = await api_server.request(
        "GET", "/v1/stats", creds=a, query="from=1970-01-01&to=1970-01-02&timezone=local"
    )
    assert r.status == 200, r.json


def test_due_messages_of_a_route_with_no_smsc_up_are_parked_not_ready():
    """With every bind down no claim runs, so the store parks nothing: the view tells "waiting
    for a bind" from "about to go" by the SMSCs' status (session 47)."""
    groups = [
        QueueGroup("acc_x", "+44", "ready", 2, 2, 1_000),
        QueueGroup("acc_x", "+44", "parked", 1, 3, 900),
        QueueGroup("acc_x", "+44", "retry_wait", 1, 1, 900),
        QueueGroup("acc_x", "", "ready", 4, 4, 1_000),
    ]
    candidates = {"+44": ("uk",), "": ("main",)}
    status = {"uk": {"up": False}, "main": {"up": True}}
    down = down_routes(candidates, status)
    assert down == {"+44"}
    view = queue_view(groups, 3_500, {}, candidates, 10, down)
    assert view["by_state"]["parked"] == {"messages": 3, "parts": 5}
    assert view["by_state"]["ready"] == {"messages": 4, "parts": 4}
    assert view["by_state"]["retry_wait"] == {"messages": 1, "parts": 1}  # still backing off
    # A route failing over to an SMSC that is up is not down; nor is one whose state is unknown
    # (an acceptor without word from its owner), nor one that is up.
    assert down_routes({"+44": ("uk", "main")}, status) == frozenset()
    assert down_routes({"+44": ("uk",)}, {"uk": {"up": False, "state": "unknown"}}) == frozenset()
    assert down_routes({"+44": ("uk",)}, {}) == frozenset()  # a status without it: not known
    assert down_routes({"": ()}, {}) == {""}
