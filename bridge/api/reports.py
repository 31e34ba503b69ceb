"""Customer reports on the signed API: daily statistics and monthly CDRs (call detail records).

Both are scoped to the calling account by the store query itself (never filtered afterwards).
Days and months are UTC, or with `timezone=local` those of `rules.timezone`: the zone of the
bills, the daily quota and the Alibaba face, so a month's CDR export is the set of messages its
bill counts (in UTC, Asia/Shanghai's first eight hours of each month went to the month before).
CDRs are streamed page by page from an index cursor, so a month
of millions of messages costs one page of memory, and a slow reader slows the query loop down
(back-pressure through `StreamResponse.write`) instead of piling rows up in the server.
"""

from __future__ import annotations

import asyncio
import calendar
import csv
import io
import logging
import re
from collections.abc import Iterable, Mapping
from datetime import date
from typing import Any

from aiohttp import web

from bridge.api.context import PRINCIPAL, REQUEST_ID, STREAM_CUT, query_of
from bridge.api.errors import ApiError
from bridge.api.v1 import ctx_of, json_response
from bridge.api.views import iso
from bridge.billing import bill_bounds
from bridge.domain.lifecycle import STAT_BUCKETS
from bridge.domain.settlement import day_bounds
from bridge.store.models import MessageRecord

log = logging.getLogger("bridge.api.reports")

DAY_MS = 86_400_000
MAX_STATS_DAYS = 92
CDR_PAGE = 1000  # rows per store read; also the most rows held at once
_EPOCH = date(1970, 1, 1).toordinal()
_DATE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})")
_MONTH = re.compile(r"([0-9]{4})-([0-9]{2})")
# submitted (every message accepted) is the sum of the buckets (lifecycle.stat_of).
STAT_FIELDS = ("submitted", *STAT_BUCKETS, "segments", "units")

CDR_COLUMNS = (
    "message_id",
    "batch_id",
    "client_ref",
    "to",
    "sender",
    "sign_name",
    "template",
    "status",
    "error_code",
    "encoding",
    "segments",
    "billable_units",
    "accepted_at",
    "sent_at",
    "done_at",
    "smsc",
)

# A cell starting with one of these is a formula to a spreadsheet (=1+2, @SUM(..), -2+cmd|...);
# tab and carriage return are the OWASP additions (some importers strip them, then see a formula).
_FORMULA_START = frozenset("=+-@\t\r")
# ...except a plain signed number: "+8613800138000" is a phone number, not a formula, and quoting
# it would hand every reconciliation script "'+86..." instead of the E.164 number.
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9]+(?:\.[0-9]+)?")


# -- pure helpers ---------------------------------------------------------------------------------


def query_params(query: Mapping[str, str], allowed: Iterable[str]) -> dict[str, str]:
    """The query (from bridge.api.context.query_of, which already refuses a repeated parameter)
    as a plain dict, refusing unknown parameters. An empty `cursor=` is no cursor (the first
    page) on every list endpoint: a generic paginator starts with "" (it was the first page of
    /v1/optouts and 400 INVALID_CURSOR on /v1/messages and /v1/ledger)."""
    unknown = sorted(set(query) - set(allowed))
    if unknown:
        raise ApiError("UNKNOWN_FIELD", f"{unknown[0]}: unknown query parameter")
    out = dict(query)
    if out.get("cursor") == "":
        del out["cursor"]
    return out


def refuse_unknown(body: Mapping[str, Any], allowed: Iterable[str]) -> None:
    """UNKNOWN_FIELD naming the first body field outside `allowed`, as every body endpoint."""
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ApiError("UNKNOWN_FIELD", f"{unknown[0]}: unknown field")


def parse_day(value: str | None, name: str) -> int:
    """A YYYY-MM-DD as a day index (days since 1970-01-01, UTC)."""
    if value is None:
        raise ApiError("MISSING_FIELD", f"{name}: required, YYYY-MM-DD")
    m = _DATE.fullmatch(value)
    try:
        if m is None:
            raise ValueError(value)
        day = date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        raise ApiError("INVALID_FIELD", f"{name}: expected a date YYYY-MM-DD") from None
    return day.toordinal() - _EPOCH


def day_string(day_index: int) -> str:
    return date.fromordinal(day_index + _EPOCH).isoformat()


def parse_zone(value: str | None, local: str) -> str:
    """`timezone`: "utc" (the default) or "local" (the deployment's rules.timezone)."""
    if value is None or value == "utc":
        return "UTC"
    if value == "local":
        return local
    raise ApiError("INVALID_FIELD", "timezone: utc or local")


def local_day_bounds(day_index: int, tz: str) -> tuple[int, int]:
    """[start, end) in unix ms of the calendar day `day_index` in `tz` (23 or 25 hours across a
    DST change)."""
    try:
        return day_bounds(date.fromordinal(day_index + _EPOCH), tz)
    except (ValueError, OverflowError):  # 9999-12-31 has no next day
        raise ApiError("INVALID_FIELD", "to: a day before 9999-12-31 with timezone=local") from None


def day_range(value: str, timezone: str | None, local: str) -> tuple[int, int]:
    """`date` (with `timezone`) of GET /v1/messages as [start, end) in unix ms: a UTC day, or
    with timezone=local the day of rules.timezone. A list by UTC day only cut a customer's
    "today" in Shanghai at 08:00 local, while /v1/stats and the CDRs offered local days."""
    day_index = parse_day(value, "date")
    zone = parse_zone(timezone, local)
    if zone == "UTC":
        return day_index * 86_400_000, (day_index + 1) * 86_400_000
    try:
        return day_bounds(date.fromordinal(day_index + _EPOCH), zone)
    except (ValueError, OverflowError):  # 9999-12-31 has no next day
        raise ApiError("INVALID_FIELD", "date: before 9999-12-31 with timezone=local") from None


def parse_month(value: str | None) -> tuple[int, int]:
    """YYYY-MM as [start, end) in unix milliseconds (UTC)."""
    if value is None:
        raise ApiError("MISSING_FIELD", "month: required, YYYY-MM")
    m = _MONTH.fullmatch(value)
    if m is None or not 1970 <= int(m[1]) <= 9999 or not 1 <= int(m[2]) <= 12:
        raise ApiError("INVALID_FIELD", "month: expected YYYY-MM, from 1970-01")
    year, month = int(m[1]), int(m[2])
    first = date(year, month, 1).toordinal() - _EPOCH
    days = calendar.monthrange(year, month)[1]
    return first * DAY_MS, (first + days) * DAY_MS


def stats_days(rows: Iterable[Mapping[str, Any]], first: int, last: int) -> list[dict[str, Any]]:
    """Every day of [first, last] in order, zero where the store had no row (no traffic)."""
    by_day = {int(r["day_index"]): r for r in rows}
    out = []
    for day in range(first, last + 1):
        row = by_day.get(day, {})
        out.append({"date": day_string(day), **{k: int(row.get(k) or 0) for k in STAT_FIELDS}})
    return out


def sheet_safe(value: str) -> str:
    """Defuse spreadsheet formula injection: a leading ' makes the cell text."""
    if value and value[0] in _FORMULA_START and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def _cell(value: str | int | None) -> str | int:
    if value is None:
        return ""
    if isinstance(value, int):
        return value
    return sheet_safe(value)


def cdr_row(m: MessageRecord) -> list[str | int]:
    return [
        _cell(v)
        for v in (
            m.id,
            m.batch_id,
            m.client_ref,
            m.recipient,
            m.sender,
            m.sign_name,
            m.template,
            m.state,
            m.error_code,
            m.encoding,
            m.segments,
            m.billable_units,
            iso(m.accepted_at),
            iso(m.sent_at),
            iso(m.done_at),
            m.smsc,
        )
    ]


# -- handlers -------------------------------------------------------------------------------------


async def get_stats(request: web.Request) -> web.Response:
    ctx = ctx_of(request)
    account = request[PRINCIPAL].account
    q = query_params(query_of(request), ("from", "to", "timezone"))
    first = parse_day(q.get("from"), "from")
    last = parse_day(q.get("to"), "to")
    zone = parse_zone(q.get("timezone"), ctx.config.rules.timezone)
    if last < first:
        raise ApiError("INVALID_FIELD", "to: must not be before from")
    if last - first + 1 > MAX_STATS_DAYS:
        raise ApiError("INVALID_FIELD", f"to: at most {MAX_STATS_DAYS} days from `from`, inclusive")
    if zone == "UTC":
        rows = await ctx.store.stats(account.id, first * DAY_MS, (last + 1) * DAY_MS, 0)
    else:  # each local day in its own bounds: one offset put the days after a DST change wrong
        rows = []
        for day in range(first, last + 1):
            since, until = local_day_bounds(day, zone)
            for r in await ctx.store.stats(account.id, since, until, 0):
                rows.append({**r, "day_index": day})
    days = stats_days(_merged(rows), first, last)
    totals = {k: sum(d[k] for d in days) for k in STAT_FIELDS}
    return json_response(
        {
            "from": day_string(first),
            "to": day_string(last),
            "timezone": zone,
            "days": days,
            "totals": totals,
            "history_from": history_from(ctx.config.store.retention_days, ctx.now_ms()),
        }
    )


def _merged(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per day_index: a local day spans two UTC days, which the store counts apart."""
    out: dict[int, dict[str, Any]] = {}
    for r in rows:
        day = int(r["day_index"])
        if day in out:
            out[day] = {k: (out[day].get(k) or 0) + (v or 0) for k, v in r.items()}
            out[day]["day_index"] = day
        else:
            out[day] = dict(r)
    return list(out.values())


def history_from(retention_days: int, now: int) -> str | None:
    """The first UTC day whose messages are all still stored: store.retention_days purges the
    finished messages of older ones, so their counts may read low or 0, which a client must not
    take for a day without traffic. None while everything is kept."""
    if retention_days <= 0:
        return None
    return day_string(max(0, -(-(now - retention_days * DAY_MS) // DAY_MS)))


class _ClientGone(Exception):
    """A write found the client gone. Not any ConnectionError: a store read raises those too (a
    PostgreSQL down), and taken for the client's, the download ended as a short CSV that looks
    complete."""


async def _write(resp: web.StreamResponse, data: bytes) -> None:
    try:
        await resp.write(data)
    except ConnectionError as exc:
        raise _ClientGone from exc


async def get_cdrs(request: web.Request) -> web.StreamResponse:
    ctx = ctx_of(request)
    account = request[PRINCIPAL].account
    q = query_params(query_of(request), ("month", "timezone"))
    since, until = parse_month(q.get("month"))
    month = q["month"]
    zone = parse_zone(q.get("timezone"), ctx.config.rules.timezone)
    if q.get("timezone") == "local":
        # Exactly what the month's bill counts: after a change of rules.timezone its bounds
        # are chained to the neighbouring bills' (billing.bill_bounds), not the zone's month.
        try:
            since, until = await bill_bounds(ctx.store, account.id, month, zone)
        except (ValueError, OverflowError):  # 9999-12 has no next month
            raise ApiError("INVALID_FIELD", "month: before 9999-12 with timezone=local") from None
    resp = web.StreamResponse(
        status=200,
        headers={
            "Content-Disposition": f'attachment; filename="cdr-{month}.csv"',
            "Cache-Control": "no-store",
            # Set here: the error middleware adds it after the handler, too late for a response
            # whose headers already went out.
            "X-Request-Id": request[REQUEST_ID],
        },
    )
    resp.content_type = "text/csv"
    resp.charset = "utf-8"
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")  # RFC 4180
    writer.writerow(CDR_COLUMNS)
    after: tuple[int, str] | None = None
    rows = 0
    try:
        while True:
            page = await ctx.store.cdr_page(account.id, since, until, after, CDR_PAGE)
            writer.writerows(cdr_row(m) for m in page)
            rows += len(page)
            await _write(resp, buf.getvalue().encode())
            buf.seek(0)
            buf.truncate()
            if len(page) < CDR_PAGE:
                break
            after = (page[-1].accepted_at, page[-1].id)
            # Store reads run on the loop thread: let accepts and receipts in between pages.
            await asyncio.sleep(0)
    except _ClientGone:  # nothing to tell it
        log.info("cdr download aborted by the client account=%s rows=%d", account.id, rows)
        request[STREAM_CUT] = "CLIENT_GONE"
        return resp
    except Exception:
        # Headers are out: an error envelope can no longer be sent. Cut the connection so the
        # client sees a truncated transfer, never a short CSV that looks complete.
        log.exception(
            "cdr stream failed request_id=%s account=%s rows=%d",
            request[REQUEST_ID],
            account.id,
            rows,
        )
        if request.transport is not None:
            request.transport.close()
        request[STREAM_CUT] = "STREAM_FAILED"
        return resp
    await resp.write_eof()
    return resp


def add_routes(app: web.Application) -> None:
    app.router.add_get("/v1/stats", get_stats)
    app.router.add_get("/v1/cdrs", get_cdrs)
