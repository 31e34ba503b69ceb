"""bridge/domain/endpoint_watch.py: the lines the webhook sender logs about a failing endpoint."""

from __future__ import annotations

from bridge.domain.endpoint_watch import WAITING_CAP, EndpointWatch

MIN = 60_000
URL = "https://hooks.example.com/cb?token=abc"


def _fail(w: EndpointWatch, now: int, retried: list[int], dead: list[int] = [], url: str = URL):  # noqa: B006
    return w.failed("acc_1", url, "hooks.example.com", now, "HTTP 500", retried, dead, now + MIN)


def test_one_line_at_the_start_then_a_summary_a_minute_then_one_at_recovery() -> None:
    w = EndpointWatch()
    first = _fail(w, 0, [1])
    assert first is not None and first.level == "warning"
    assert first.message == "webhook endpoint failing"
    assert first.fields["url_host"] == "hooks.example.com" and first.fields["error"] == "HTTP 500"
    assert first.fields["next"] == "retry at 1970-01-01T00:01:00Z"
    assert "token" not in repr(first.fields)
    # every further failure within the minute is silent, however many
    assert all(_fail(w, t, [t]) is None for t in range(1_000, MIN, 1_000))
    summary = _fail(w, MIN, [1, 999_999], dead=[2])
    assert summary is not None and summary.level == "info"
    assert summary.message == "webhook endpoint still failing"
    assert summary.fields["failed_posts"] == 60 and summary.fields["dead_lettered"] == 1
    assert summary.fields["retried"] == 61 and summary.fields["down_s"] == 60
    assert summary.fields["waiting"] == 61  # 1, 1000..59000 and 999_999 (2 is dead)
    assert _fail(w, MIN + 1, [5]) is None
    back = w.delivered("acc_1", URL, 2 * MIN, list(range(1_000, 30_000, 1_000)))
    assert back is not None and back.message == "webhook endpoint recovered"
    assert back.fields["down_s"] == 120 and back.fields["failed"] == 64
    assert back.fields["waiting"] == 33  # 62 less the 29 delivered
    assert w.delivered("acc_1", URL, 2 * MIN + 1, [5]) is None  # one line per recovery


def test_a_flapping_endpoint_resumes_its_outage_silently() -> None:
    w = EndpointWatch()
    assert _fail(w, 0, [1]) is not None
    assert w.delivered("acc_1", URL, 1_000, [1]) is not None
    # fails again 5 s after recovering: no new "failing" line, nor another "recovered"
    assert _fail(w, 6_000, [2]) is None
    assert w.delivered("acc_1", URL, 7_000, [2]) is None
    assert _fail(w, 8_000, [3]) is None
    line = _fail(w, 1_000 + MIN, [4])
    assert line is not None and line.message == "webhook endpoint still failing"
    assert line.fields["delivered"] == 1  # it worked some of the time
    # up again: said once a minute has passed since that line, so the log's last word is true
    assert w.delivered("acc_1", URL, 2_000 + MIN, [4]) is None
    back = w.delivered("acc_1", URL, 1_000 + 2 * MIN, [5])
    assert back is not None and back.message == "webhook endpoint recovered"
    assert w.delivered("acc_1", URL, 2_000 + 2 * MIN, [6]) is None


def test_a_new_outage_after_a_minute_up_is_announced_again() -> None:
    w = EndpointWatch()
    assert _fail(w, 0, [1]) is not None
    assert w.delivered("acc_1", URL, 1_000, [1]) is not None
    again = _fail(w, 1_000 + MIN, [2])
    assert again is not None and again.message == "webhook endpoint failing"


def test_endpoints_are_told_apart_by_account_and_url_and_state_is_bounded() -> None:
    w = EndpointWatch()
    assert _fail(w, 0, [1]) is not None
    assert _fail(w, 0, [2], url="https://hooks.example.com/mo") is not None
    assert w.failed("acc_2", URL, "h", 0, "HTTP 500", [3], [], MIN) is not None
    assert len(w) == 3
    assert w.delivered("acc_9", URL, 10, [9]) is None  # never failed: nothing to say
    big = list(range(100, 100 + WAITING_CAP + 5))
    _fail(w, 1, big)
    line = _fail(w, MIN, [])
    assert line is not None and line.fields["waiting"] == f"{WAITING_CAP}+"
    # dead-lettered at the first attempt (a 404): says so instead of a retry time
    first = EndpointWatch().failed("acc_1", URL, "h", 0, "HTTP 404", [], [7], None)
    assert first is not None and first.fields["next"].startswith("dead-lettered")
    # forgotten a day after the last attempt (nothing left to retry), and after a minute up
    w.failed("acc_1", URL, "h", 2 * MIN, "HTTP 500", [1], [], None)
    w.delivered("acc_2", URL, 2 * MIN, [3])
    _fail(w, 30 * 3_600_000, [1], url="https://other")
    assert len(w) == 1  # only the new one
