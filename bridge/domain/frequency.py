"""Per-recipient frequency limits (README, "Sending rules and billing").

Minute and hour windows are *clock* windows in the deployment's time zone (10:59 and 11:00 are in
different hours), computed from the zone's wall clock so DST changes and 30/45-minute offsets
(Asia/Kolkata, Asia/Kathmandu, Australia/Lord_Howe's 30-minute DST) are right: in the hour the
clocks go back, 01:xx EDT and 01:xx EST are two different clock hours. The day window rolls: the
24 hours before now.

Counting: a send at ``t`` is in the minute or hour window when ``t >= start`` (inclusive), and in
the day window when ``t > now - 24 h`` (exclusive: a send exactly 24 h ago no longer counts, so a
daily cadence exactly 24 h apart is allowed). Timestamps after ``now`` (another node's clock a
little ahead) count in every window: they are real sends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from enum import StrEnum
from functools import lru_cache
from zoneinfo import ZoneInfo

from bridge.domain.templates import TemplateKind

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class Limits:
    """Most sends allowed per window to one key; 0 means no limit for that window."""

    per_minute: int
    per_hour: int
    per_day: int

    def __post_init__(self) -> None:
        for name in ("per_minute", "per_hour", "per_day"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}: must be an integer >= 0 (0 = no limit), not {value!r}")


VERIFICATION_DEFAULT = Limits(1, 5, 10)
OTHER_DEFAULT = Limits(0, 0, 50)


def default_limits(kind: TemplateKind | str) -> Limits:
    """The shipped defaults for a message type (README, "Sending rules and billing")."""
    if TemplateKind(kind) == TemplateKind.VERIFICATION:
        return VERIFICATION_DEFAULT
    return OTHER_DEFAULT


class Window(StrEnum):
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"


def error_code(window: Window) -> str:
    """FREQUENCY_LIMIT_MINUTE | FREQUENCY_LIMIT_HOUR | FREQUENCY_LIMIT_DAY."""
    return f"FREQUENCY_LIMIT_{Window(window).name}"


_WINDOW_TEXT = {
    Window.MINUTE: "per clock minute",
    Window.HOUR: "per clock hour",
    Window.DAY: "in 24 hours",
}


def error_message(window: Window, limits: Limits) -> str:
    """The human half of the refusal, naming the field and the window."""
    limit = {
        Window.MINUTE: limits.per_minute,
        Window.HOUR: limits.per_hour,
        Window.DAY: limits.per_day,
    }[Window(window)]
    noun = "message" if limit == 1 else "messages"
    return f"to: at most {limit} {noun} {_WINDOW_TEXT[Window(window)]} to this number"


@lru_cache(maxsize=64)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def _ms(dt: datetime) -> int:
    return (dt - _EPOCH) // _MS


def window_starts(now_ms: int, tz: str | tzinfo) -> tuple[int, int, int]:
    """(start of the clock minute, start of the clock hour, now - 24 h), epoch milliseconds.

    A clock window is the stretch of time, up to now, the wall clock in ``tz`` has read the
    current minute or hour since it last came to it:
    - the repeated hour after a DST change starts at its own 01:00 (the fold kept);
    - a floor the clock jumped over (a DST gap that does not start on the hour: Lord Howe's
      02:00 -> 02:30, Chatham's 02:45 -> 03:45) is the instant of the jump;
    - a change that brings the clock back into this hour from another one (Chatham's 03:45 ->
      02:45: 02:xx again after 03:xx) starts the window at the change;
    - a change that sets the clock back within the hour (Lord Howe's 02:00 -> 01:30) does not:
      that clock hour lasts longer than an hour of real time, as the wall clock says.
    Never later than ``now``.
    """
    minute, hour = _clock_starts(now_ms // MINUTE_MS, tz)
    return min(minute, now_ms), min(hour, now_ms), now_ms - DAY_MS


def next_hour_start(now_ms: int, tz: str | tzinfo) -> int:
    """When the clock hour after the current one begins (for a Retry-After): an hour of real
    time later, except in the hour of a DST change (30 minutes or 90 on Lord Howe)."""
    hour = window_starts(now_ms, tz)[1]
    lo, hi = now_ms // MINUTE_MS + 1, now_ms // MINUTE_MS + 3 * 60
    while lo < hi:  # the first minute whose clock hour is a later one (starts never go back)
        mid = (lo + hi) // 2
        if _clock_starts(mid, tz)[1] > hour:
            hi = mid
        else:
            lo = mid + 1
    return max(_clock_starts(lo, tz)[1], now_ms)


@lru_cache(maxsize=256)
def _clock_starts(minute_index: int, tz: str | tzinfo) -> tuple[int, int]:
    """(start of the clock minute, start of the clock hour) for any instant in that UTC minute:
    checked on every send, computed once a minute per zone."""
    zone = _zone(tz) if isinstance(tz, str) else tz
    local = datetime.fromtimestamp(minute_index * 60, zone)
    ref = minute_index * MINUTE_MS
    minute = _floor_ms(local.replace(second=0, microsecond=0), zone, ref, "minute")
    hour = _floor_ms(local.replace(minute=0, second=0, microsecond=0), zone, ref, "hour")
    return minute, hour


def _wall(t: int, zone: tzinfo) -> datetime:
    return datetime.fromtimestamp(t / 1000, zone).replace(tzinfo=None, fold=0)


def _floor_ms(wall: datetime, zone: tzinfo, ref: int, unit: str) -> int:
    """The instant the clock window of the wall-clock floor `wall` began (window_starts)."""
    naive = wall.replace(tzinfo=None, fold=0)
    times = {_ms(wall), _ms(wall.replace(fold=1 - wall.fold))}
    real = sorted(t for t in times if _wall(t, zone) == naive)
    if not real:  # in a gap: the clock jumped over the floor; its window starts at the jump
        lo, hi = min(times), max(times)
        while lo < hi:
            mid = (lo + hi) // 2
            if _wall(mid, zone) >= naive:
                hi = mid
            else:
                lo = mid + 1
        start = lo
    else:  # repeated: the later occurrence not after now (the window holding now)
        start = max((t for t in real if t <= ref), default=real[0])
    after = zone.utcoffset(datetime.fromtimestamp(ref / 1000, zone))
    if start < ref and zone.utcoffset(datetime.fromtimestamp(start / 1000, zone)) != after:
        lo, hi = start + 1, ref  # the change between: the first instant with now's offset
        while lo < hi:
            mid = (lo + hi) // 2
            if zone.utcoffset(datetime.fromtimestamp(mid / 1000, zone)) == after:
                hi = mid
            else:
                lo = mid + 1
        before = _wall(lo - 1, zone)
        if unit == "minute":
            trimmed = before.replace(second=0, microsecond=0)
        else:
            trimmed = before.replace(minute=0, second=0, microsecond=0)
        if trimmed != naive:  # came back into this hour from another one
            start = lo
    return start


def exceeded(
    sent_ms: Sequence[int], now_ms: int, tz: str | tzinfo, limits: Limits, adding: int = 1
) -> Window | None:
    """The narrowest window (minute, then hour, then day) that ``adding`` more sends would overflow.

    ``sent_ms`` are the accepted sends to this key (any order; older than 24 h ignored).
    """
    if adding < 0:
        raise ValueError(f"adding: must be >= 0, not {adding}")
    # The tightest non-zero limit (0: none), without a generator: this runs in every accept.
    lowest = 0
    for x in (limits.per_minute, limits.per_hour, limits.per_day):
        if x and (not lowest or x < lowest):
            lowest = x
    if not lowest or len(sent_ms) + adding <= lowest:
        return None  # fewer sends in all than the tightest window allows: no window to compute
    minute_start, hour_start, day_start = window_starts(now_ms, tz)
    in_minute = in_hour = in_day = 0
    for t in sent_ms:  # the windows nest: minute within hour within day
        if t > day_start:
            in_day += 1
            if t >= hour_start:
                in_hour += 1
                if t >= minute_start:
                    in_minute += 1
    for window, limit, count in (
        (Window.MINUTE, limits.per_minute, in_minute),
        (Window.HOUR, limits.per_hour, in_hour),
        (Window.DAY, limits.per_day, in_day),
    ):
        if limit and count + adding > limit:
            return window
    return None


def _part(value: str) -> str:
    return value.replace("\\", "\\\\").replace("|", "\\|")


def key(kind: TemplateKind | str, sign: str, number: str, template: str | None = None) -> str:
    """The counter key: (sign, number) for verification codes, else (sign, template, number).

    Parts are escaped, so different tuples never share a key.
    """
    if TemplateKind(kind) == TemplateKind.VERIFICATION:
        return f"v|{_part(sign)}|{_part(number)}"
    if template is None:
        raise ValueError("template: required for notification and marketing frequency keys")
    return f"t|{_part(sign)}|{_part(template)}|{_part(number)}"


def retention_ms() -> int:
    """How far back send timestamps must be kept: the longest window, the rolling 24 hours."""
    return DAY_MS
