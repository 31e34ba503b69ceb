"""PerSecond against a plain model (every count kept with its second), and the status line
that reads it: the rate over 10 whole seconds, not the last second alone."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.smpp.persecond import PerSecond
from bridge.status import DaemonStatus, render

# (seconds forward from the last step, count added; 0 = a read only)
steps = st.lists(st.tuples(st.integers(0, 14), st.integers(0, 50)), max_size=60)


@given(steps, st.integers(1, 12))
def test_last_and_average_match_a_model_that_keeps_everything(moves, window):
    counter = PerSecond(window)
    kept: dict[int, int] = {}
    sec = 0
    for forward, n in moves:
        sec += forward
        if n:
            counter.add(sec, n)
            kept[sec] = kept.get(sec, 0) + n
        assert counter.last(sec) == kept.get(sec - 1, 0)
        expected = sum(kept.get(s, 0) for s in range(sec - window, sec)) / window
        assert counter.average(sec) == pytest.approx(expected)


def test_one_quiet_second_reads_0_last_but_not_on_average():
    counter = PerSecond(10)
    for sec in (100, 101, 103):  # a burst every second but 102
        counter.add(sec, 800)
    assert counter.last(103) == 0
    assert counter.average(103) == 160.0  # (800 + 800) / 10
    assert counter.average(104) == 240.0
    assert counter.average(200) == 0.0  # long quiet: all gone


def test_a_clock_read_behind_the_last_one_counts_in_the_current_second():
    counter = PerSecond(10)
    counter.add(50, 3)
    counter.add(49, 2)  # not a step back in time for the counts
    assert counter.last(51) == 5


def test_a_window_under_one_second_is_refused():
    with pytest.raises(ValueError):
        PerSecond(0)


def _status(*smscs: dict) -> DaemonStatus:
    return DaemonStatus(url="http://x", ready=True, problems=(), smscs=smscs, queue={})


def test_the_throughput_line_adds_the_smscs_10_s_averages():
    text = render(_status({"name": "a", "tps": 0, "tps_avg": 798.4}, {"name": "b", "tps_avg": 2}))
    assert text.splitlines()[-1] == "throughput: 800.4 submits/s over the last 10 s, all SMSCs"


def test_an_older_daemon_without_the_average_shows_its_last_second():
    text = render(_status({"name": "a", "tps": 812}, {"name": "b", "tps": "x", "tps_avg": None}))
    assert text.splitlines()[-1] == "throughput: 812 submits/s over the last second, all SMSCs"


def _limit_cell(**smsc: object) -> str:
    """The LIMIT column of the one SMSC's row."""
    header, row = render(_status({"name": "a", **smsc})).splitlines()[1:3]
    return row.split()[header.split().index("LIMIT")]


def test_the_limit_column_tells_no_limit_from_no_share_here():
    """A fleet instance with none of a limited SMSC's transmit binds up has a share of 0: it
    used to print "-", as an SMSC with no limit does."""
    assert _limit_cell(tps_limit=0.0, tps_configured=0.0) == "-"
    assert _limit_cell(tps_limit=0.0, tps_configured=100.0) == "0"
    assert _limit_cell(tps_limit=50.0, tps_configured=100.0) == "50"
    assert _limit_cell(tps_limit=2.5, tps_configured=5.0) == "2.5"
    assert _limit_cell(tps_limit=200.0) == "200"  # an older daemon: its share alone


def test_the_last_error_says_how_long_ago_it_was() -> None:
    """A bound SMSC showed an outage's connect error, long over, as if it were current."""
    err = {"message": "connect: refused", "at": "2026-12-03T10:00:00.250Z"}
    at = 1_796_292_000.25  # that instant

    def cell(fetched_at: float | None, **extra: object) -> str:
        s = DaemonStatus("http://x", True, (), ({"name": "a", "last_error": err, **extra},), {},
                         fetched_at=fetched_at)  # fmt: skip
        header, row = render(s).splitlines()[1:3]
        return row[header.index("LAST_ERROR") :]

    assert cell(at + 5) == "connect: refused (5 s ago)"
    assert cell(at + 600) == "connect: refused (10 min ago)"
    assert cell(at + 3 * 3600) == "connect: refused (3 h ago)"
    assert cell(at + 3 * 86_400) == "connect: refused (3 d ago)"
    assert cell(None) == "connect: refused"  # no time to tell it from
