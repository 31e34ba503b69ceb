"""Session 14, review 2: everything that depends on `rules.timezone` when the zone keeps DST.

What was checked (the shipped zone, Asia/Shanghai, has no DST, so these paths had no test):
- bridge/domain/frequency.py `window_starts`: minute by minute over +-4 h around every DST change
  of 2025-2027 in Europe/Berlin, America/New_York, America/Havana (midnight repeats),
  America/Santiago, Australia/Sydney, Australia/Lord_Howe (30-minute shift) and Pacific/Chatham
  (a 45-minute offset with a 1-hour shift), against a reference built from the wall clock alone
  (the clock hour that holds `now` began at the later of: the last instant the wall clock read
  HH:00 for this HH and date, and the start of the unbroken run of instants showing this hour);
  the split of the repeated fall-back hour into two windows; the rolling 24 h in real hours; the
  Retry-After of hour refusals (admission._frequency_wait).
- bridge/domain/admission.py `day_key` and `seconds_to_midnight` (every DST change of the
  sample zones, 23- and 25-hour days, midnight missing or repeated); the daily quota over HTTP on
  a 25-hour and a 23-hour day, on SQLite and PostgreSQL.
- bridge/domain/settlement.py `month_bounds` / `month_of` / `next_month` and billing
  `previous_month`: every month 2020-2030 of every zone of the tz database chains without gap or
  overlap and agrees with `day_key`; settlement over HTTP across America/Havana's 1 November
  2026, whose midnight happens twice (each message in exactly one bill).
- bridge/compat/aliyun_actions.py `_day_bounds` (QuerySendDetails / QuerySendStatistics): each
  local day within its own bounds, for the sample zones 2020-2030; over the real Alibaba face
  (RPC v1 signed here at the frozen clock) on Berlin's 25-hour day, SQLite and PostgreSQL.
- bridge/cli_ops.py `end_of_day` (voucher --expires) agrees with the aliyun day bounds.
- bridge/config.py `_time_zone`: unknown names, blanks, paths, non-strings refused at load.

Found (all fixed in the commit after this review; the tests below now pass: frequency.py's
windows start where the wall clock entered the hour (a jump over the floor, or a change that
brought the clock back into the hour from another), next_hour_start gives the hour refusal's
Retry-After, and config refuses names outside zoneinfo.available_timezones(), and localtime and
Factory, from this review's doubts):
1. The clock-hour window is empty in Pacific/Chatham from 03:45 to 03:59 CHADT on the day DST
   starts (02:45 CHAST -> 03:45 CHADT): a verification code can go 6 and more times in that
   clock hour (5/hour not enforced). bridge/domain/frequency.py `_floor_ms` / `_clock_starts`:
   the hour floor 03:00 lies in the gap and fold=0 maps it to 03:00+12:45 = 04:00 CHADT, after
   `now`, which `window_starts` clamps to `now` (the docstring's "a floor in a gap maps to the
   transition instant" holds only when the gap starts at the floor, as on Lord Howe). Also
   Antarctica/Casey (+08 -> +11). Repro: tz Pacific/Chatham, 5 verification sends at 03:45..03:49
   CHADT on 2026-09-27, the 6th at 03:50 is accepted. Tests
   test_chatham_hour_windows_follow_the_wall_clock,
   test_chatham_spring_forward_hour_limit_over_http.
2. On the day Chatham's DST ends (03:45 CHADT -> 02:45 CHAST) the clock hour 02:45-02:59 CHAST
   counts every send since 02:00 CHADT, the whole 03:xx CHADT hour included, so a send there is
   refused FREQUENCY_LIMIT_HOUR for sends made in another clock hour. Same place: 02:00 is not
   ambiguous, so `_floor_ms` keeps 02:00 CHADT, 1 h 45 min before the instant the wall clock
   showed 02:xx again. Repro: 5 sends at 03:00..03:40 CHADT on 2026-04-05, one at 02:50 CHAST
   -> 429 with Retry-After: 1 (02:00 CHADT + 1 h is already past), refused again until 03:00
   CHAST. Tests test_chatham_hour_windows_follow_the_wall_clock,
   test_chatham_fall_back_hour_limit_over_http.
3. The Retry-After of a FREQUENCY_LIMIT_HOUR refusal is `hour start + 1 h - now`
   (bridge/domain/admission.py `_frequency_wait`), but on Australia/Lord_Howe the clock hour
   that holds a DST change is not one hour long (frequency.py says so itself: 01:00 LHDT to
   02:00 LHST is 1 h 30 min, 02:30-03:00 LHDT is 30 min): on 2026-04-05 a client that waits the
   Retry-After it was given is refused again (30 min too early); on 2026-10-04 it is told to
   wait 30 min longer than needed. Tests test_hour_retry_after_points_at_the_next_clock_hour,
   test_lord_howe_hour_retry_after_over_http.
4. `rules.timezone: right/Europe/Berlin` (a leap-second zone of the system tz database, not in
   zoneinfo.available_timezones()) loads: bridge/config.py `_time_zone` accepts anything
   ZoneInfo opens. Python does not apply leap seconds and this host's right/ file ends before
   the October 2026 change: month_bounds("2026-11", "right/Europe/Berlin") starts one hour
   before Berlin's November, so months, days and clock windows are silently wrong. Test
   test_a_leap_second_zone_is_refused_at_load (skipped where the host has no right/ files).

Right (plain tests): the fall-back hour is split into two clock hours (CEST then CET) and the
spring-forward hour starts at 03:00 CEST; the rolling 24 h is 24 real hours across a 25-hour
day; the daily quota's day and its Retry-After (local midnight) on 23- and 25-hour days, both
engines; month bounds of every zone chain; Havana's twice-happening midnight puts each message in
exactly one bill; QuerySendStatistics/QuerySendDetails count a 25-hour day whole; end_of_day; a
clear ConfigError for unknown zones.

Doubts (not asserted):
- GET /v1/stats, GET /v1/messages?date= and GET /v1/cdrs?month= are UTC days/months (documented),
  while the daily quota, the bills and the Alibaba face are local: a CDR export of 2026-03 is
  not the set of messages billed for 2026-03 (in Asia/Shanghai it takes the first 8 hours of
  March's local days from February's bill), which makes reconciliation by month awkward.
- Changing `rules.timezone` (SIGHUP applies `rules` live, or at a restart) moves the bounds of
  months not yet settled, while settled ones keep theirs: messages between the old and new end
  of the last settled month land in no bill or in two. Nothing refuses or warns.
- The Alibaba face's local times (SendDate/ReceiveDate, the SmsReport webhook) carry no offset:
  two instants of the repeated hour render the same string. That is Alibaba's format.
- `localtime` (the host's /etc/localtime) and `Factory` are accepted as `rules.timezone`.
- Semantics of a clock hour that holds a mid-hour change (Lord Howe: 1 h 30 min / 30 min) are the
  code's documented choice, not asserted beyond finding 3.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import zoneinfo
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestServer
from hypothesis import given, settings
from hypothesis import strategies as st
from yarl import URL

import tests.store_engines as engines
from bridge.billing import previous_month
from bridge.cli_ops import end_of_day
from bridge.compat.aliyun_actions import _day_bounds
from bridge.compat.aliyun_api import make_aliyun_app
from bridge.config import ConfigError
from bridge.domain import admission, frequency
from bridge.domain.settlement import month_bounds, month_of, next_month
from bridge.store.models import ReceiptIn, SubmitResult
from tests.integration.conftest import ApiServer, Clock, Creds, build_config, start_api
from tests.sending import submit_template

engine = engines.engine

CN = "+8613800138000"
SMSC = "main"
LEASE = 300_000
MIN_MS = 60_000
HOUR_MS = 3_600_000
DST_ZONES = (
    "Europe/Berlin",
    "America/New_York",
    "America/Havana",
    "America/Santiago",
    "Australia/Sydney",
    "Australia/Lord_Howe",
)


def at(zone: str, *args: int, fold: int = 0) -> float:
    """Unix seconds of a wall time in `zone` (fold=1: the second of a repeated time)."""
    return datetime(*args, tzinfo=ZoneInfo(zone), fold=fold).timestamp()  # type: ignore[misc]


# -- reference: the zone's wall clock, minute by minute -------------------------------------------


@cache
def transitions(zone: str, first: int, last: int) -> tuple[int, ...]:
    """Instants (unix s) where the UTC offset of `zone` changes in years [first, last]."""
    z = ZoneInfo(zone)
    t = int(datetime(first, 1, 1, tzinfo=UTC).timestamp())
    end = int(datetime(last + 1, 1, 1, tzinfo=UTC).timestamp())
    out = []
    prev = datetime.fromtimestamp(t, z).utcoffset()
    while t < end:
        nxt = t + 3600
        off = datetime.fromtimestamp(nxt, z).utcoffset()
        if off != prev:
            lo, hi = t, nxt  # offset `prev` at lo, `off` at hi; every change is on a minute
            while hi - lo > 60:
                mid = (lo + hi) // 120 * 60
                if datetime.fromtimestamp(mid, z).utcoffset() == prev:
                    lo = mid
                else:
                    hi = mid
            out.append(hi)
        prev, t = off, nxt
    return tuple(out)


def reference_hour_starts(zone: str, base: int, n: int) -> list[int]:
    """For each minute base + i*60 (i < n, with enough history before), the start in ms of the
    clock hour holding it, read off the wall clock only: the later of the start of the unbroken
    run of minutes showing this (date, hour), and the last minute that read HH:00 of it."""
    z = ZoneInfo(zone)
    labels = []
    for i in range(n):
        d = datetime.fromtimestamp(base + i * 60, z)
        labels.append(((d.year, d.month, d.day, d.hour), d.minute))
    out = []
    run = 0
    last_floor: dict[tuple[int, int, int, int], int] = {}
    for i, (hour, minute) in enumerate(labels):
        if i and labels[i - 1][0] != hour:
            run = i
        if minute == 0:
            last_floor[hour] = i
        out.append((base + max(run, last_floor.get(hour, run)) * 60) * 1000)
    return out


def hour_window_mismatches(zone: str, first: int = 2025, last: int = 2027) -> list[str]:
    bad = []
    for tr in transitions(zone, first, last):
        base = tr - 4 * 3600
        n = 8 * 60
        ref = reference_hour_starts(zone, base, n)
        for i in range(150, n):  # from 1.5 h in: the reference has seen the hour's start
            now = (base + i * 60) * 1000 + 30_000
            minute, hour, day = frequency.window_starts(now, zone)
            assert minute == now - 30_000, (zone, now)  # minutes never straddle a change
            assert day == now - frequency.DAY_MS
            if hour != ref[i]:
                local = datetime.fromtimestamp(now / 1000, ZoneInfo(zone)).isoformat()
                bad.append(f"{local}: hour starts {(hour - ref[i]) / MIN_MS:+.1f} min off")
    return bad


# -- pure: frequency windows ----------------------------------------------------------------------


@pytest.mark.parametrize("zone", DST_ZONES)
def test_hour_windows_follow_the_wall_clock(zone: str) -> None:
    assert hour_window_mismatches(zone) == []


def test_chatham_hour_windows_follow_the_wall_clock() -> None:
    assert hour_window_mismatches("Pacific/Chatham") == []


def test_the_repeated_fall_back_hour_is_two_clock_hours() -> None:
    """The split the module documents: 02:xx CEST and 02:xx CET are different clock hours."""
    z = "Europe/Berlin"
    first = int(at(z, 2026, 10, 25, 2, 20) * 1000)
    second = int(at(z, 2026, 10, 25, 2, 20, fold=1) * 1000)
    assert second - first == HOUR_MS
    assert frequency.window_starts(first, z)[1] == int(at(z, 2026, 10, 25, 2, 0) * 1000)
    assert frequency.window_starts(second, z)[1] == int(at(z, 2026, 10, 25, 2, 0, fold=1) * 1000)
    sends = [first - 10 * MIN_MS + k * MIN_MS for k in range(5)]  # 02:10..02:14 CEST
    limits = frequency.VERIFICATION_DEFAULT
    assert frequency.exceeded(sends, first, z, limits) == frequency.Window.HOUR
    assert frequency.exceeded(sends, second, z, limits) is None


def test_the_day_window_is_24_real_hours_across_a_25_hour_day() -> None:
    z = "Europe/Berlin"
    first = int(at(z, 2026, 10, 24, 10, 0) * 1000)
    sends = [first + h * HOUR_MS + m * MIN_MS for h in (0, 1) for m in range(5)]
    limits = frequency.VERIFICATION_DEFAULT
    day_later = first + frequency.DAY_MS  # 09:00 CET: 23 wall hours, 24 real ones
    assert datetime.fromtimestamp(day_later / 1000, ZoneInfo(z)).hour == 9
    assert frequency.exceeded(sends, day_later - 1, z, limits) == frequency.Window.DAY
    assert frequency.exceeded(sends, day_later, z, limits) is None


def _hour_wait_mismatches(zone: str) -> list[str]:
    """Retry-After of an hour refusal against the next instant the hour window moves on."""
    bad = []
    fr = admission.FrequencyRule(
        "verification", "Acme", None, frequency.VERIFICATION_DEFAULT, zone, (CN,)
    )
    for tr in transitions(zone, 2026, 2026):
        base = tr - 3 * 3600
        starts = [frequency.window_starts((base + i * 60) * 1000, zone)[1] for i in range(360)]
        for i in range(300):
            j = next(k for k in range(i + 1, 360) if starts[k] != starts[i])
            now = (base + i * 60) * 1000
            # Five sends at the window's start fill the hour (5/hour), not the day (10).
            wait = admission._frequency_wait([starts[i]] * 5, now, fr)
            if wait != ((base + j * 60) * 1000 - now) / 1000:
                local = datetime.fromtimestamp(now / 1000, ZoneInfo(zone)).isoformat()
                bad.append(f"{local}: Retry-After {wait:.0f} s, the hour ends {j - i} min on")
    return bad


def test_hour_retry_after_is_exact_where_changes_fall_on_the_hour() -> None:
    for zone in ("Europe/Berlin", "America/New_York", "America/Havana"):
        assert _hour_wait_mismatches(zone) == [], zone


def test_hour_retry_after_points_at_the_next_clock_hour() -> None:
    assert _hour_wait_mismatches("Australia/Lord_Howe") == []


# -- pure: days, months, Alibaba day bounds ------------------------------------------------------


@pytest.mark.parametrize("zone", [*DST_ZONES, "Pacific/Chatham", "America/Asuncion"])
def test_day_key_and_seconds_to_midnight_around_every_change(zone: str) -> None:
    z = ZoneInfo(zone)
    for tr in transitions(zone, 2023, 2027):
        base = tr - 26 * 3600
        n = 52 * 60
        days = [datetime.fromtimestamp(base + i * 60, z).strftime("%Y-%m-%d") for i in range(n)]
        nxt = None
        for i in range(n - 1, -1, -1):
            if i < n - 1 and days[i + 1] != days[i]:
                nxt = i + 1
            if nxt is None or i % 5:
                continue
            now = (base + i * 60) * 1000 + 12_345
            assert admission.day_key(now, zone) == days[i]
            want = max(1.0, ((base + nxt * 60) * 1000 - now) / 1000)
            assert admission.seconds_to_midnight(now, zone) == pytest.approx(want, abs=1e-6), (
                datetime.fromtimestamp(now / 1000, z).isoformat()
            )


def test_month_bounds_chain_in_every_zone() -> None:
    for zone in sorted(zoneinfo.available_timezones()):
        month, prev_end = "2019-12", None
        for _ in range(12 * 11):
            start, end = month_bounds(month, zone)
            assert prev_end in (None, start), (zone, month)
            assert month_of(start, zone) == month == month_of(end - 1, zone), (zone, month)
            assert month_of(start - 1, zone) != month, (zone, month)
            assert admission.day_key(start, zone) == f"{month}-01", (zone, month)
            assert previous_month(end, zone) == month, (zone, month)
            prev_end, month = end, next_month(month)


@pytest.mark.parametrize("zone", [*DST_ZONES, "Pacific/Chatham"])
def test_alibaba_day_bounds_and_voucher_days_agree_with_day_key(zone: str) -> None:
    day, prev_end = datetime(2020, 1, 1), None
    while day.year < 2031:
        start, end = _day_bounds(day, zone)
        name = day.strftime("%Y-%m-%d")
        assert prev_end in (None, start), name
        assert admission.day_key(start, zone) == name == admission.day_key(end - 1, zone)
        assert admission.day_key(start - 1, zone) != name
        assert end_of_day((day - timedelta(days=1)).strftime("%Y-%m-%d"), zone) == start
        prev_end, day = end, day + timedelta(days=1)


_INSTANTS = st.integers(0, 2_100_000_000_000)  # 1970 .. 2036


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([*DST_ZONES, "Pacific/Chatham", "Asia/Kathmandu"]), _INSTANTS)
def test_any_instant_is_in_its_own_local_day_and_month(zone: str, now: int) -> None:
    local = datetime.fromtimestamp(now / 1000, ZoneInfo(zone))
    assert admission.day_key(now, zone) == local.strftime("%Y-%m-%d")
    start, end = month_bounds(month_of(now, zone), zone)
    assert start <= now < end
    assert month_of(now, zone) == local.strftime("%Y-%m")
    wait = admission.seconds_to_midnight(now, zone)
    later = now + round(wait * 1000)
    assert admission.day_key(later, zone) != local.strftime("%Y-%m-%d") or wait == 1.0
    if wait > 1.0:
        assert admission.day_key(later - 1, zone) == local.strftime("%Y-%m-%d")


# -- configuration --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", ["Mars/Olympus", "Europe/Berlin ", "", "../etc/passwd", "europe/berlin", 8]
)
def test_an_unknown_time_zone_is_refused_at_load(tmp_path: Path, value: Any) -> None:
    with pytest.raises(ConfigError) as raised:
        build_config(tmp_path, {"rules": {"timezone": value}})
    assert "rules.timezone" in str(raised.value)


def test_a_leap_second_zone_is_refused_at_load(tmp_path: Path) -> None:
    try:
        ZoneInfo("right/Europe/Berlin")
    except Exception:
        pytest.skip("no right/ zones on this host")
    with pytest.raises(ConfigError):
        build_config(tmp_path, {"rules": {"timezone": "right/Europe/Berlin"}})


@pytest.mark.parametrize("name", ["localtime", "Factory", "posixrules"])
def test_host_dependent_zone_files_are_refused_at_load(tmp_path: Path, name: str) -> None:
    """Added by the lead from this review's doubts: files ZoneInfo opens that are not IANA zone
    names (the host's own zone, one with no offset) make months and windows depend on the host."""
    with pytest.raises(ConfigError, match=r"rules\.timezone"):
        build_config(tmp_path, {"rules": {"timezone": name}})


# -- over HTTP: frequency -------------------------------------------------------------------------


async def _verification_sender(api: ApiServer) -> Any:
    creds = await api.create_account(raw_text=False)
    t = await submit_template(api, creds, "Code ${code}")
    r = await api.admin(
        "POST", f"/admin/templates/{t['code']}/review", json={"decision": "approve"}
    )
    assert r.status == 200, r.json

    async def send() -> Any:
        body = {"to": CN, "sign_name": "Acme", "template": t["code"], "params": {"code": 1}}
        return await api.send(creds, body)

    return send


async def _tz_api(make_api: Any, clock: Clock, zone: str, start: float) -> ApiServer:
    clock.freeze(start)
    return await make_api({"rules": {"timezone": zone}})


async def test_berlin_fall_back_and_spring_forward_hours_over_http(
    make_api: Any, clock: Clock
) -> None:
    z = "Europe/Berlin"
    api = await _tz_api(make_api, clock, z, at(z, 2026, 10, 25, 2, 0))
    send = await _verification_sender(api)
    for _ in range(5):  # 02:00..02:04 CEST
        assert (await send()).status == 202
        clock.advance(60)
    r = await send()  # 02:05 CEST
    assert (r.status, r.code) == (429, "FREQUENCY_LIMIT_HOUR"), r.json
    assert r.headers["Retry-After"] == str(55 * 60)  # 03:00 CEST = 02:00 CET
    clock.advance(55 * 60)
    assert clock() == at(z, 2026, 10, 25, 2, 0, fold=1)
    assert (await send()).status == 202  # the second 02:00: another clock hour
    # Spring forward: 01:55..01:59 CET fill the hour, 03:00 CEST is the next one.
    clock.freeze(at(z, 2027, 3, 28, 1, 55))
    for _ in range(5):
        assert (await send()).status == 202
        clock.advance(60)
    assert clock() == at(z, 2027, 3, 28, 3, 0)
    assert (await send()).status == 202


async def test_rolling_day_is_24_real_hours_over_http(make_api: Any, clock: Clock) -> None:
    z = "Europe/Berlin"
    first = at(z, 2026, 10, 24, 10, 0)
    api = await _tz_api(make_api, clock, z, first)
    send = await _verification_sender(api)
    for hour in (0, 1):
        clock.freeze(first + hour * 3600)
        for _ in range(5):
            assert (await send()).status == 202
            clock.advance(60)
    clock.freeze(first + 86_400 - 1)  # 08:59:59 CET on the 25-hour day
    r = await send()
    assert (r.status, r.code) == (429, "FREQUENCY_LIMIT_DAY"), r.json
    assert r.headers["Retry-After"] == "1"
    clock.advance(1)
    assert (await send()).status == 202


async def test_chatham_spring_forward_hour_limit_over_http(make_api: Any, clock: Clock) -> None:
    z = "Pacific/Chatham"
    api = await _tz_api(make_api, clock, z, at(z, 2026, 9, 27, 3, 45))
    send = await _verification_sender(api)
    for _ in range(5):  # 03:45..03:49 CHADT: five in clock hour 03
        assert (await send()).status == 202
        clock.advance(60)
    r = await send()  # 03:50 CHADT
    assert (r.status, r.code) == (429, "FREQUENCY_LIMIT_HOUR"), r.json


async def test_chatham_fall_back_hour_limit_over_http(make_api: Any, clock: Clock) -> None:
    z = "Pacific/Chatham"
    api = await _tz_api(make_api, clock, z, at(z, 2026, 4, 5, 3, 0))
    send = await _verification_sender(api)
    for minute in (0, 10, 20, 30, 40):  # five in clock hour 03 (CHADT)
        clock.freeze(at(z, 2026, 4, 5, 3, minute))
        assert (await send()).status == 202
    clock.freeze(at(z, 2026, 4, 5, 2, 50, fold=1))  # 02:50 CHAST, after 03:44:59 CHADT
    r = await send()
    assert r.status == 202, r.json


async def test_lord_howe_hour_retry_after_over_http(make_api: Any, clock: Clock) -> None:
    z = "Australia/Lord_Howe"
    api = await _tz_api(make_api, clock, z, at(z, 2026, 4, 5, 1, 0))
    send = await _verification_sender(api)
    for _ in range(5):  # 01:00..01:20 LHDT
        assert (await send()).status == 202
        clock.advance(300)
    r = await send()  # 01:25 LHDT
    assert (r.status, r.code) == (429, "FREQUENCY_LIMIT_HOUR"), r.json
    clock.advance(int(r.headers["Retry-After"]))
    again = await send()
    assert again.status == 202, (clock(), again.json)


# -- over HTTP: the daily quota on 25- and 23-hour days, both engines -----------------------------


@pytest.fixture
async def berlin_engine_api(
    engine: engines.EngineHandle, tmp_path: Path, clock: Clock
) -> AsyncIterator[ApiServer]:
    clock.freeze(at("Europe/Berlin", 2026, 3, 28, 12, 0))
    overrides = {"rules": {"timezone": "Europe/Berlin"}, "aliyun": {"enabled": True}}
    api = await start_api(tmp_path, clock, overrides, store=engine.new_store())
    try:
        yield api
    finally:
        await api.close()


async def test_daily_quota_on_23_and_25_hour_days(berlin_engine_api: ApiServer) -> None:
    api, clock, z = berlin_engine_api, berlin_engine_api.clock, "Europe/Berlin"
    creds = await api.create_account(daily_quota=3)

    async def send() -> Any:
        return await api.send(creds, {"to": CN, "text": "hi"})

    for day, times in (
        # 23 hours: 00:00 CET, the last second before the gap, 03:00 CEST.
        ((2026, 3, 29), [(0, 0, 0, 0), (1, 59, 59, 0), (3, 0, 0, 0)]),
        # 25 hours: 00:00 CEST, 02:30 CEST, 02:30 CET.
        ((2026, 10, 25), [(0, 0, 0, 0), (2, 30, 0, 0), (2, 30, 0, 1)]),
    ):
        clock.freeze(at(z, *day, 0, 0) - 1)  # the previous day: its own count
        assert (await send()).status == 202
        for hh, mm, ss, fold in times:
            clock.freeze(at(z, *day, hh, mm, ss, fold=fold))
            assert (await send()).status == 202, (day, hh, mm, fold)
        clock.freeze(at(z, *day, 23, 59, 30))
        r = await send()
        assert (r.status, r.code) == (429, "DAILY_QUOTA_EXCEEDED"), r.json
        assert r.headers["Retry-After"] == "30"
        clock.advance(30)
        assert (await send()).status == 202  # local midnight: a new day


# -- over HTTP: the Alibaba face's local dates on a 25-hour day, both engines ----------------------


def _pct(text: str) -> str:
    return quote(text, safe="~", encoding="utf-8")


async def _aliyun(server: TestServer, api: ApiServer, creds: Creds, action: str, **p: str) -> Any:
    """One RPC v1 (HMAC-SHA1) call signed at the server's frozen clock."""
    params = {
        "AccessKeyId": creds.app_key,
        "Action": action,
        "Format": "JSON",
        "RegionId": "cn-hangzhou",
        "SignatureMethod": "HMAC-SHA1",
        "SignatureNonce": secrets.token_hex(16),
        "SignatureVersion": "1.0",
        "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(api.clock())),
        "Version": "2017-05-25",
        **p,
    }
    canonical = "&".join(f"{_pct(k)}={_pct(v)}" for k, v in sorted(params.items()))
    to_sign = f"POST&{_pct('/')}&{_pct(canonical)}"
    mac = hmac.new((creds.app_secret + "&").encode(), to_sign.encode(), hashlib.sha1).digest()
    query = f"{canonical}&Signature={_pct(base64.b64encode(mac).decode())}"
    url = URL(f"http://127.0.0.1:{server.port}/?{query}", encoded=True)
    async with api.session.post(url) as resp:
        assert resp.status == 200, await resp.text()
        body = json.loads(await resp.read())
    assert body["Code"] == "OK", body
    return body


async def test_alibaba_dates_count_a_25_hour_day_whole(berlin_engine_api: ApiServer) -> None:
    api, clock, z = berlin_engine_api, berlin_engine_api.clock, "Europe/Berlin"
    creds = await api.create_account()
    moments = [
        at(z, 2026, 10, 24, 23, 59, 59),
        at(z, 2026, 10, 25, 0, 0),
        at(z, 2026, 10, 25, 2, 30),
        at(z, 2026, 10, 25, 2, 30, fold=1),
        at(z, 2026, 10, 25, 23, 59, 59),
        at(z, 2026, 10, 26, 0, 0),
    ]
    for moment in moments:
        clock.freeze(moment)
        r = await api.send(creds, {"to": CN, "text": "hi"})
        assert r.status == 202, r.json
    server = TestServer(make_aliyun_app(api.ctx), host="127.0.0.1", port=0)
    await server.start_server()
    try:
        stats = await _aliyun(
            server, api, creds, "QuerySendStatistics",
            IsGlobe="1", StartDate="20261024", EndDate="20261026", PageSize="10",
        )  # fmt: skip
        counts = {t["SendDate"]: t["TotalCount"] for t in stats["Data"]["TargetList"]}
        assert counts == {"20261024": 1, "20261025": 4, "20261026": 1}
        details = await _aliyun(
            server, api, creds, "QuerySendDetails",
            PhoneNumber="13800138000", SendDate="20261025", PageSize="50", CurrentPage="1",
        )  # fmt: skip
        assert details["TotalCount"] == "4"
    finally:
        await server.close()


# -- over HTTP: a month whose first midnight happens twice (America/Havana, 2026-11-01) ------------


async def _deliver_all(api: ApiServer) -> None:
    now = api.ctx.now_ms()
    work = await api.store.claim("test-dispatcher", 1000, now, LEASE)
    results, receipts = [], []
    for w in work:
        for s in w.segments:
            ident = f"smsc-{w.id}-{s.seq}"
            results.append(SubmitResult(w.id, s.seq, "sent", SMSC, ident, ident, at=now))
            receipts.append(ReceiptIn(SMSC, ident, "delivered", "DELIVRD", None, now, now))
    await api.store.record_submits(results, [], now)
    await api.store.apply_receipts(receipts, now)


async def test_each_message_lands_in_one_bill_when_midnight_repeats(
    make_api: Any, clock: Clock
) -> None:
    z = "America/Havana"
    assert at(z, 2026, 11, 1, 0, 30, fold=1) - at(z, 2026, 11, 1, 0, 30) == 3600
    api = await _tz_api(make_api, clock, z, at(z, 2026, 10, 31, 12, 0))
    creds = await api.create_account()
    october = [at(z, 2026, 10, 31, 23, 59, 59)]
    november = [
        at(z, 2026, 11, 1, 0, 0),  # the first midnight (CDT)
        at(z, 2026, 11, 1, 0, 30),
        at(z, 2026, 11, 1, 0, 0, fold=1),  # the second (CST)
        at(z, 2026, 11, 1, 0, 30, fold=1),
        at(z, 2026, 11, 30, 23, 59, 59),
    ]
    for moment in [*october, *november]:
        clock.freeze(moment)
        r = await api.send(creds, {"to": CN, "text": "hi"})
        assert r.status == 202, r.json
        await _deliver_all(api)
    clock.freeze(at(z, 2026, 12, 1, 1, 0))
    for month, units in (("2026-10", len(october)), ("2026-11", len(november))):
        r = await api.admin("POST", "/admin/bills/settle", json={"month": month})
        assert r.status == 200, r.json
        (row,) = [x for x in r.json["results"] if x["account"] == creds.account.id]
        assert (row["status"], row["units"]) == ("settled", units), row
        bill = await api.request("GET", f"/v1/bills/{month}", creds=creds)
        assert bill.status == 200 and bill.json["units"] == units, bill.json
