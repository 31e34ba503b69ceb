"""key_warmup: the lookup before the write lock runs for every accept only while sampled reads
show the disk."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.store.key_warmup import MISSES_ON, SAMPLE_EVERY, WINDOW, KeyWarmup, blocks_read


def _window(w: KeyWarmup, slow: int) -> None:
    for i in range(WINDOW):
        w.seen(i < slow)


def test_off_it_samples_one_accept_in_sample_every() -> None:
    w = KeyWarmup()
    due = [w.due() for _ in range(SAMPLE_EVERY * 5)]
    assert sum(due) == 5 and due[SAMPLE_EVERY - 1]


def test_a_window_with_the_disk_turns_it_on_and_one_without_off() -> None:
    w = KeyWarmup()
    _window(w, MISSES_ON)  # a few slow reads (a preempted loop): not yet
    assert not w.on
    _window(w, MISSES_ON + 1)
    assert w.on and all(w.due() for _ in range(100))
    _window(w, 1)  # one slow read: as it was
    assert w.on
    _window(w, 0)
    assert not w.on


def test_it_decides_only_at_a_full_window() -> None:
    w = KeyWarmup()
    for _ in range(WINDOW - 1):
        w.seen(True)
    assert not w.on
    w.seen(True)
    assert w.on


@given(st.lists(st.booleans(), max_size=WINDOW * 6))
def test_the_state_is_the_last_full_windows_verdict(slow: list[bool]) -> None:
    w = KeyWarmup()
    expected = False
    for start in range(0, len(slow) - len(slow) % WINDOW, WINDOW):
        n = sum(slow[start : start + WINDOW])
        expected = True if n > MISSES_ON else False if n == 0 else expected
    for s in slow:
        w.seen(s)
    assert w.on is expected


def test_blocks_read_counts_this_threads_reads_from_the_disk() -> None:
    """A count that only grows (0 reads from the OS's cache); the accept compares two."""
    a = blocks_read()
    assert isinstance(a, int) and a >= 0 and blocks_read() >= a
