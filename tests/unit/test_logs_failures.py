"""logs.Failures: what a background loop logs while a step keeps failing."""

from __future__ import annotations

import logging

import pytest

from bridge import logs
from bridge.store.base import StoreClosedError, is_unavailable

LOG = logging.getLogger("test.failures")


def lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOG.name]


def test_an_outage_logs_one_line_without_traceback_then_one_when_it_ends(caplog):
    f = logs.Failures(LOG, is_unavailable, every_s=3600)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        for _ in range(100):
            f.failed("heartbeat", ConnectionRefusedError("connect refused"))
        f.ok("heartbeat")
        f.ok("heartbeat")  # nothing more to say
    got = lines(caplog)
    assert [r.levelno for r in got] == [logging.ERROR, logging.INFO]
    assert got[0].getMessage() == ("heartbeat failed: ConnectionRefusedError: connect refused")
    assert got[0].exc_info is None
    assert got[1].getMessage() == "heartbeat works again after 100 failed attempts"


def test_the_next_outage_is_reported_at_once(caplog):
    f = logs.Failures(LOG, is_unavailable, every_s=3600)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        f.failed("sweeper step reclaim", StoreClosedError("store closed"))
        f.ok("sweeper step reclaim")
        f.failed("sweeper step reclaim", StoreClosedError("store closed"))
    assert [r.getMessage() for r in lines(caplog)] == [
        "sweeper step reclaim failed: StoreClosedError: store closed",
        "sweeper step reclaim works again after 1 failed attempts",
        "sweeper step reclaim failed: StoreClosedError: store closed",
    ]


def test_steps_are_throttled_apart(caplog):
    f = logs.Failures(LOG, is_unavailable, every_s=3600)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        for _ in range(3):
            f.failed("heartbeat", ConnectionResetError("reset"))
            f.failed("api housekeeping", ConnectionResetError("reset"))
    assert sorted(r.getMessage().split(" failed")[0] for r in lines(caplog)) == [
        "api housekeeping",
        "heartbeat",
    ]


def test_a_fault_of_ours_keeps_its_traceback_every_time(caplog):
    f = logs.Failures(LOG, is_unavailable, every_s=3600)
    with caplog.at_level(logging.INFO, logger=LOG.name):
        for i in range(3):
            try:
                {}[f"k{i}"]
            except KeyError as exc:
                f.failed("sweeper step settlement", exc)
    got = lines(caplog)
    assert len(got) == 3
    assert all(r.exc_info and r.exc_info[0] is KeyError for r in got)
    assert got[0].getMessage() == "sweeper step settlement failed"


def test_with_no_interval_every_failure_is_reported(caplog):
    f = logs.Failures(LOG, is_unavailable, every_s=0.0)  # every failure is a report
    with caplog.at_level(logging.INFO, logger=LOG.name):
        f.failed("heartbeat", TimeoutError("t"))
        f.failed("heartbeat", TimeoutError("t"))
    assert len(lines(caplog)) == 2
