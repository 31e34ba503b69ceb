"""logs.Throttled: one line per period for a failure that repeats with every request."""

from __future__ import annotations

import logging

import pytest

from bridge import logs


def test_one_line_per_period_then_the_count(monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    clock = [100.0]
    monkeypatch.setattr(logs.time, "monotonic", lambda: clock[0])
    t = logs.Throttled(logging.getLogger("t"), every_s=10)
    caplog.set_level(logging.ERROR)
    for _ in range(5):
        t.error("store commit failed", OSError(28, "No space left on device"))
    clock[0] += 10
    t.error("store commit failed", OSError(28, "No space left on device"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "store commit failed: OSError: [Errno 28] No space left on device",
        "store commit failed: OSError: [Errno 28] No space left on device "
        "(4 more since the last report)",
    ]
    assert all(r.exc_info is None for r in caplog.records)


def test_a_line_when_it_works_again_and_none_without_a_failure(caplog) -> None:
    """After a disk-full spell the last line in the log was its error: nothing said it ended."""
    t = logs.Throttled(logging.getLogger("t"), every_s=10)
    caplog.set_level(logging.INFO)
    t.ok()
    assert caplog.records == []
    for _ in range(3):
        t.error("store commit failed", OSError(28, "No space left on device"))
    t.ok()
    t.ok()
    assert [(r.levelname, r.getMessage()) for r in caplog.records][1:] == [
        ("INFO", "store commit failed: works again (2 more failures since the last report)")
    ]
    t.error("store commit failed", OSError(28, "No space left on device"))  # at once again
    assert caplog.records[-1].levelname == "ERROR"
