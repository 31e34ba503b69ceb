"""bridge/domain/frequency.py: clock minute/hour windows in a zone, rolling 24 h, keys."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridge.domain.frequency import (
    DAY_MS,
    OTHER_DEFAULT,
    VERIFICATION_DEFAULT,
    Limits,
    Window,
    default_limits,
    error_code,
    error_message,
    exceeded,
    key,
    next_hour_start,
    retention_ms,
    window_starts,
)
from bridge.domain.templates import TemplateKind

SH = "Asia/Shanghai"
NY = "America/New_York"


def at(tz: str, *args: int, fold: int = 0, ms: int = 0) -> int:
    """Epoch ms of a wall time in ``tz``."""
    dt = datetime(*args, tzinfo=ZoneInfo(tz), fold=fold)  # type: ignore[misc]
    return int(dt.timestamp()) * 1000 + ms


def utc(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp()) * 1000  # type: ignore[misc]


# --- values ----------------------------------------------------------------------------------


def test_defaults_and_codes() -> None:
    assert VERIFICATION_DEFAULT == Limits(1, 5, 10)
    assert OTHER_DEFAULT == Limits(0, 0, 50)
    assert default_limits(TemplateKind.VERIFICATION) is VERIFICATION_DEFAULT
    assert default_limits("notification") is OTHER_DEFAULT
    assert default_limits(TemplateKind.MARKETING) is OTHER_DEFAULT
    assert error_code(Window.MINUTE) == "FREQUENCY_LIMIT_MINUTE"
    assert error_code(Window.HOUR) == "FREQUENCY_LIMIT_HOUR"
    assert error_code(Window.DAY) == "FREQUENCY_LIMIT_DAY"
    assert error_code("day") == "FREQUENCY_LIMIT_DAY"  # type: ignore[arg-type]
    assert retention_ms() == 86_400_000 == DAY_MS


def test_error_messages_name_the_field_and_window() -> None:
    assert error_message(Window.MINUTE, VERIFICATION_DEFAULT) == (
        "to: at most 1 message per clock minute to this number"
    )
    assert error_message(Window.HOUR, VERIFICATION_DEFAULT).endswith(
        "5 messages per clock hour to this number"
    )
    assert "50 messages in 24 hours" in error_message(Window.DAY, OTHER_DEFAULT)


@pytest.mark.parametrize("bad", [-1, 1.5, "1", True, None])
def test_limits_validation(bad: object) -> None:
    with pytest.raises(ValueError, match="per_hour"):
        Limits(1, bad, 1)  # type: ignore[arg-type]


def test_keys() -> None:
    v = key(TemplateKind.VERIFICATION, "Acme", "+8613800138000", "T1")
    assert v == key("verification", "Acme", "+8613800138000", "T2")  # template ignored
    assert v == key("verification", "Acme", "+8613800138000")
    assert v != key("verification", "Acme2", "+8613800138000")
    assert v != key("verification", "Acme", "+8613800138001")
    n1 = key(TemplateKind.NOTIFICATION, "Acme", "+8613800138000", "T1")
    assert n1 != key(TemplateKind.NOTIFICATION, "Acme", "+8613800138000", "T2")
    assert n1 == key(TemplateKind.MARKETING, "Acme", "+8613800138000", "T1")
    assert n1 != v
    with pytest.raises(ValueError, match="template"):
        key(TemplateKind.NOTIFICATION, "Acme", "+8613800138000")


@settings(max_examples=300, deadline=None)
@given(
    st.tuples(
        st.text("a|\\", max_size=4), st.text("a|\\", max_size=4), st.text("a|\\", max_size=4)
    ),
    st.tuples(
        st.text("a|\\", max_size=4), st.text("a|\\", max_size=4), st.text("a|\\", max_size=4)
    ),
)
def test_keys_are_injective(a: tuple[str, str, str], b: tuple[str, str, str]) -> None:
    ka = key("notification", a[0], a[2], a[1])
    kb = key("notification", b[0], b[2], b[1])
    assert (ka == kb) == (a == b)
    assert (key("verification", a[0], a[2]) == key("verification", b[0], b[2])) == (
        (a[0], a[2]) == (b[0], b[2])
    )


# --- window starts ---------------------------------------------------------------------------


def test_window_starts_shanghai() -> None:
    now = at(SH, 2024, 5, 1, 10, 59, 30, ms=500)
    assert window_starts(now, SH) == (
        at(SH, 2024, 5, 1, 10, 59),
        at(SH, 2024, 5, 1, 10),
        now - DAY_MS,
    )
    assert window_starts(now, ZoneInfo(SH)) == window_starts(now, SH)
    exact = at(SH, 2024, 5, 1, 11, 0, 0)
    assert window_starts(exact, SH)[:2] == (exact, exact)


@pytest.mark.parametrize(
    ("tz", "wall", "hour_utc"),
    [
        ("Asia/Kolkata", (2024, 5, 1, 10, 15, 30), (2024, 5, 1, 4, 30)),  # +05:30
        ("Asia/Kathmandu", (2024, 5, 1, 10, 15, 30), (2024, 5, 1, 4, 15)),  # +05:45
        ("Australia/Eucla", (2024, 5, 1, 10, 15, 30), (2024, 5, 1, 1, 15)),  # +08:45
        ("America/St_Johns", (2024, 1, 1, 10, 15, 30), (2024, 1, 1, 13, 30)),  # -03:30
        ("UTC", (2024, 5, 1, 10, 15, 30), (2024, 5, 1, 10, 0)),
    ],
)
def test_hour_start_with_fractional_offsets(
    tz: str, wall: tuple[int, ...], hour_utc: tuple[int, ...]
) -> None:
    minute, hour, _ = window_starts(at(tz, *wall), tz)
    assert hour == utc(*hour_utc)
    assert minute == at(tz, *wall[:5])


def test_fixed_offset_tzinfo() -> None:
    tz = timezone(timedelta(hours=5, minutes=45))
    now = utc(2024, 5, 1, 4, 59, 59)  # 10:44:59 local
    assert window_starts(now, tz)[:2] == (utc(2024, 5, 1, 4, 59), utc(2024, 5, 1, 4, 15))


@pytest.mark.parametrize(
    ("now", "minute", "hour"),
    [
        # Spring forward 2024-03-10: 02:00 EST -> 03:00 EDT (07:00 UTC).
        (utc(2024, 3, 10, 6, 59, 59), utc(2024, 3, 10, 6, 59), utc(2024, 3, 10, 6)),  # 01:59:59
        (utc(2024, 3, 10, 7, 0, 0), utc(2024, 3, 10, 7), utc(2024, 3, 10, 7)),  # 03:00 EDT
        (utc(2024, 3, 10, 7, 30, 0), utc(2024, 3, 10, 7, 30), utc(2024, 3, 10, 7)),  # 03:30
        # Fall back 2024-11-03: 02:00 EDT -> 01:00 EST (06:00 UTC); 01:xx happens twice.
        (utc(2024, 11, 3, 5, 30), utc(2024, 11, 3, 5, 30), utc(2024, 11, 3, 5)),  # 01:30 EDT
        (utc(2024, 11, 3, 5, 59, 59), utc(2024, 11, 3, 5, 59), utc(2024, 11, 3, 5)),
        (utc(2024, 11, 3, 6, 0), utc(2024, 11, 3, 6, 0), utc(2024, 11, 3, 6)),  # 01:00 EST
        (utc(2024, 11, 3, 6, 30), utc(2024, 11, 3, 6, 30), utc(2024, 11, 3, 6)),  # 01:30 EST
        (utc(2024, 11, 3, 7, 10), utc(2024, 11, 3, 7, 10), utc(2024, 11, 3, 7)),  # 02:10 EST
    ],
)
def test_new_york_dst(now: int, minute: int, hour: int) -> None:
    assert window_starts(now, NY) == (minute, hour, now - DAY_MS)


@pytest.mark.parametrize(
    ("now", "hour"),
    [
        # Lord Howe shifts by 30 minutes. Spring 2024-10-06 02:00 +10:30 -> 02:30 +11 (15:30 UTC).
        (utc(2024, 10, 5, 15, 29), utc(2024, 10, 5, 14, 30)),  # 01:59 +10:30
        (utc(2024, 10, 5, 15, 45), utc(2024, 10, 5, 15, 30)),  # 02:45 +11: 02:00 is in the gap
        # Fall 2024-04-07 02:00 +11 -> 01:30 +10:30 (15:00 UTC): the 01 o'clock hour runs 90 min.
        (utc(2024, 4, 6, 14, 59), utc(2024, 4, 6, 14)),  # 01:59 +11
        (utc(2024, 4, 6, 15, 15), utc(2024, 4, 6, 14)),  # 01:45 +10:30 (second time)
        (utc(2024, 4, 6, 15, 45), utc(2024, 4, 6, 15, 30)),  # 02:15 +10:30
    ],
)
def test_lord_howe_half_hour_dst(now: int, hour: int) -> None:
    assert window_starts(now, "Australia/Lord_Howe")[1] == hour


ZONES = [
    "Asia/Shanghai",
    "America/New_York",
    "Europe/London",
    "Asia/Kolkata",
    "Asia/Kathmandu",
    "Australia/Adelaide",
    "America/St_Johns",
    "Pacific/Chatham",
    "UTC",
]
_now = st.integers(utc(2000, 1, 1), utc(2040, 1, 1))


def test_an_hour_floor_the_dst_change_repeated_starts_at_its_later_occurrence() -> None:
    """Pacific/Chatham, 2025-04-06: 03:45 CHADT (+13:45) became 02:45 CHAST (+12:45), so 03:00
    local came at 13:15Z and again at 14:15Z. At 15:00Z (03:45 CHAST) the clock hour began at
    the second: a 45-minute window, not 1 h 45 min (found by the property test below)."""
    now = 1_743_865_200_000  # 2025-04-05T15:00:00Z
    minute, hour, _day = window_starts(now, "Pacific/Chatham")
    assert (minute, hour) == (now, now - 45 * 60_000)
    # Inside the repeated span the fold is the one now is in: 03:10 CHAST (14:25Z) -> 14:15Z,
    # 03:10 CHADT (13:25Z) -> 13:15Z.
    assert window_starts(1_743_863_100_000, "Pacific/Chatham")[1] == 1_743_862_500_000
    assert window_starts(1_743_858_900_000 + 600_000, "Pacific/Chatham")[1] == 1_743_858_900_000
    # 02:45 CHAST (14:00Z): the clock came back into hour 02 from hour 03, so this 02 starts at
    # the change, as the repeated 01 in New York does; until session 14 it began at 02:00 CHADT
    # (12:15Z), a window that also counted every send of the 03:xx CHADT between.
    assert window_starts(1_743_861_600_000, "Pacific/Chatham")[1] == 1_743_861_600_000
    assert window_starts(1_743_861_600_000 + 600_000, "Pacific/Chatham")[1] == 1_743_861_600_000


@settings(max_examples=300, deadline=None)
@given(_now, st.sampled_from(ZONES))
@example(1_743_865_200_000, "Pacific/Chatham")
@example(1_743_861_600_000, "Pacific/Chatham")
def test_window_starts_properties(now: int, tz: str) -> None:
    zone = ZoneInfo(tz)
    minute, hour, day = window_starts(now, tz)
    wall_now = datetime.fromtimestamp(now / 1000, zone)
    wall_min = datetime.fromtimestamp(minute / 1000, zone)
    wall_hour = datetime.fromtimestamp(hour / 1000, zone)
    assert day == now - DAY_MS
    assert hour <= minute <= now
    # In wall time: the minute and hour start on the boundary, and now is within the window.
    assert (wall_min.second, wall_min.microsecond) == (0, 0)
    # The hour starts on the hour, or at a DST change that brought or set the clock into it.
    changed = zone.utcoffset(datetime.fromtimestamp((hour - 1) / 1000, zone)) != zone.utcoffset(
        wall_hour
    )
    assert (wall_hour.minute, wall_hour.second, wall_hour.microsecond) == (0, 0, 0) or changed
    naive_now = wall_now.replace(tzinfo=None)
    assert timedelta(0) <= naive_now - wall_min.replace(tzinfo=None) < timedelta(minutes=1)
    assert timedelta(0) <= naive_now - wall_hour.replace(tzinfo=None) < timedelta(hours=1)
    # And in real time: under an hour, but for the hour Lord Howe's 30-minute shift sets its
    # clock back within (90 minutes).
    assert now - minute < 60_000
    assert now - hour < (5_400_000 if tz == "Australia/Lord_Howe" else 3_600_000)
    # The next minute starts a new window.
    assert window_starts(minute + 60_000, tz)[0] == minute + 60_000


@settings(max_examples=300, deadline=None)
@given(_now, st.sampled_from(ZONES))
@example(1_743_861_600_000 - 60_000, "Pacific/Chatham")
@example(1_743_865_200_000 - 60_000, "Pacific/Chatham")
def test_next_hour_start_is_where_the_clock_hour_changes(now: int, tz: str) -> None:
    """The Retry-After of an hour refusal: the first instant of the next clock hour, however
    long this one lasts (30 or 90 minutes in the hour of Lord Howe's change)."""
    nxt = next_hour_start(now, tz)
    hour = window_starts(now, tz)[1]
    assert nxt > now
    assert window_starts(nxt, tz)[1] == nxt  # a new window begins there
    assert window_starts(nxt - 1, tz)[1] == hour  # and not before
    assert nxt - hour <= (5_400_000 if tz == "Australia/Lord_Howe" else 3_600_000)


# --- exceeded --------------------------------------------------------------------------------

V = VERIFICATION_DEFAULT


def test_verification_one_per_clock_minute() -> None:
    first = at(SH, 2024, 5, 1, 10, 0, 10)
    assert exceeded([], first, SH, V) is None
    assert exceeded([first], at(SH, 2024, 5, 1, 10, 0, 59, ms=999), SH, V) == Window.MINUTE
    # Across the minute boundary: 10:00:59 then 10:01:00 is fine, 1 second apart.
    late = at(SH, 2024, 5, 1, 10, 0, 59)
    assert exceeded([late], at(SH, 2024, 5, 1, 10, 1, 0), SH, V) is None


def test_fourth_in_one_clock_minute_with_three_per_minute() -> None:
    limits = Limits(3, 0, 0)
    sent = [at(SH, 2024, 5, 1, 10, 0, s) for s in (1, 20, 40)]
    assert exceeded(sent[:2], at(SH, 2024, 5, 1, 10, 0, 50), SH, limits) is None
    assert exceeded(sent, at(SH, 2024, 5, 1, 10, 0, 59, ms=999), SH, limits) == Window.MINUTE
    assert exceeded(sent, at(SH, 2024, 5, 1, 10, 1, 0), SH, limits) is None


def test_five_per_clock_hour_at_1059_and_1100_shanghai() -> None:
    sent = [at(SH, 2024, 5, 1, 10, m) for m in (10, 20, 30, 40, 50)]
    assert exceeded(sent[:4], at(SH, 2024, 5, 1, 10, 59), SH, V) is None
    assert exceeded(sent, at(SH, 2024, 5, 1, 10, 59), SH, V) == Window.HOUR
    assert exceeded(sent, at(SH, 2024, 5, 1, 10, 59, 59, ms=999), SH, V) == Window.HOUR
    assert exceeded(sent, at(SH, 2024, 5, 1, 11, 0), SH, V) is None
    # The same sends in another zone's clock: Kathmandu's hour starts at :15 past the UTC hour.
    ktm = "Asia/Kathmandu"
    k_sent = [at(ktm, 2024, 5, 1, 10, m) for m in (10, 20, 30, 40, 50)]
    assert exceeded(k_sent, at(ktm, 2024, 5, 1, 10, 59), ktm, V) == Window.HOUR
    assert exceeded(k_sent, at(ktm, 2024, 5, 1, 11, 0), ktm, V) is None


def test_ten_per_rolling_24_hours() -> None:
    first = at(SH, 2024, 5, 1, 9, 0)
    sent = [first + i * 3_600_000 for i in range(10)]  # 09:00 ... 18:00, one per hour
    assert exceeded(sent[:9], first + 12 * 3_600_000, SH, V) is None
    assert exceeded(sent, first + 12 * 3_600_000, SH, V) == Window.DAY
    assert exceeded(sent, first + DAY_MS - 1, SH, V) == Window.DAY
    # Exactly 24 h after the first send it no longer counts.
    assert exceeded(sent, first + DAY_MS, SH, V) is None
    # A rolling window, not a calendar day: midnight changes nothing.
    assert exceeded(sent, at(SH, 2024, 5, 2, 0, 0, 30), SH, V) == Window.DAY


def test_narrowest_window_first() -> None:
    now = at(SH, 2024, 5, 1, 10, 30, 30)
    sent = [now - i * 60_000 for i in range(1, 10)] + [now - 1000]  # 10 in the day, 6 this hour
    assert exceeded(sent, now, SH, V) == Window.MINUTE
    assert exceeded(sent[:-1], now, SH, V) == Window.HOUR
    assert exceeded(sent[:-1], now, SH, Limits(1, 0, 9)) == Window.DAY


def test_unlimited_windows_and_other_default() -> None:
    now = at(SH, 2024, 5, 1, 10, 30)
    burst = [now - 10] * 49
    assert exceeded(burst, now, SH, OTHER_DEFAULT) is None
    assert exceeded([*burst, now - 5], now, SH, OTHER_DEFAULT) == Window.DAY
    assert exceeded([now] * 1000, now, SH, Limits(0, 0, 0)) is None


def test_adding_a_batch() -> None:
    now = at(SH, 2024, 5, 1, 10, 30, 30)
    assert exceeded([], now, SH, Limits(0, 0, 50), adding=50) is None
    assert exceeded([], now, SH, Limits(0, 0, 50), adding=51) == Window.DAY
    assert exceeded([now - 1] * 2, now, SH, Limits(0, 3, 0), adding=1) is None
    assert exceeded([now - 1] * 2, now, SH, Limits(0, 3, 0), adding=2) == Window.HOUR
    # adding=0: "is it already over?"
    assert exceeded([now - 1] * 2, now, SH, Limits(1, 0, 0), adding=0) == Window.MINUTE
    assert exceeded([now - 1], now, SH, Limits(1, 0, 0), adding=0) is None
    with pytest.raises(ValueError, match="adding"):
        exceeded([], now, SH, V, adding=-1)


def test_future_and_stale_timestamps() -> None:
    now = at(SH, 2024, 5, 1, 10, 30)
    assert exceeded([now + 5_000], now, SH, V) == Window.MINUTE  # another node's clock ahead
    assert exceeded([now - DAY_MS - 1] * 100, now, SH, V) is None  # stale rows ignored


def test_new_york_repeated_hour_is_a_new_clock_hour() -> None:
    limits = Limits(0, 5, 0)
    sent = [utc(2024, 11, 3, 5, m) for m in (10, 20, 30, 40, 50)]  # 01:10 .. 01:50 EDT
    assert exceeded(sent, utc(2024, 11, 3, 5, 59), NY, limits) == Window.HOUR
    assert exceeded(sent, utc(2024, 11, 3, 6, 5), NY, limits) is None  # 01:05 EST


@settings(max_examples=200, deadline=None)
@given(
    _now,
    st.lists(st.integers(-2 * DAY_MS, 60_000), max_size=30),
    st.integers(0, 4),
    st.integers(0, 8),
    st.integers(0, 20),
    st.integers(0, 3),
    st.sampled_from(ZONES),
)
def test_exceeded_matches_direct_counts(
    now: int, offsets: list[int], pm: int, ph: int, pd: int, adding: int, tz: str
) -> None:
    sent = [now - o for o in offsets]
    limits = Limits(pm, ph, pd)
    m, h, d = window_starts(now, tz)
    counts = [
        (Window.MINUTE, pm, sum(t >= m for t in sent)),
        (Window.HOUR, ph, sum(t >= h for t in sent)),
        (Window.DAY, pd, sum(t > d for t in sent)),
    ]
    expected = next((w for w, lim, c in counts if lim and c + adding > lim), None)
    assert exceeded(sent, now, tz, limits, adding) == expected


@settings(max_examples=300, deadline=None)
@given(
    limits=st.tuples(*[st.integers(0, 4)] * 3),
    ages=st.lists(st.integers(0, 2 * 86_400_000), max_size=8),
    adding=st.integers(0, 3),
)
def test_exceeded_is_the_narrowest_window_counted_in_full(
    limits: tuple[int, int, int], ages: list[int], adding: int
) -> None:
    """The shortcut on the tightest non-zero limit (h11: computed without a generator) never
    hides a window the full count finds: each window counted here from the sends themselves."""
    now = 1_700_000_000_000
    sent = [now - a for a in ages]
    minute, hour, day = window_starts(now, "Asia/Shanghai")
    counts = (
        sum(1 for t in sent if t > day and t >= minute),
        sum(1 for t in sent if t > day and t >= hour),
        sum(1 for t in sent if t > day),
    )
    want = next(
        (
            w
            for w, limit, n in zip(
                (Window.MINUTE, Window.HOUR, Window.DAY), limits, counts, strict=True
            )
            if limit and n + adding > limit
        ),
        None,
    )
    assert exceeded(sent, now, "Asia/Shanghai", Limits(*limits), adding) == want
