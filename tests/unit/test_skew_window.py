"""The window of request dates across raises of the allowed clock skew (domain/skew_window.py).

The property that matters is checked against a model of the nonce table: whatever the sequence
of restarts (each with its own skew) and requests, a request that passes the date check has its
nonce still remembered if it was ever accepted before, i.e. no replay gets through.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.domain.skew_window import SkewWindow, next_window

S = 1000  # ms per second


def test_a_new_store_runs_the_skew_it_starts_with() -> None:
    w = next_window(None, 300, 5_000)
    assert w == SkewWindow(300, 300, 5_000)
    assert w.late_s(5_000) == 300


def test_a_raise_keeps_the_old_lateness_until_old_plus_new_seconds() -> None:
    w = next_window(SkewWindow(300, 300, 0), 900, 1_000 * S)
    assert w == SkewWindow(900, 300, 1_000 * S)
    assert w.late_s(1_000 * S) == 300
    assert w.late_s((1_000 + 1_199) * S) == 300
    assert w.late_s((1_000 + 1_200) * S) == 900


def test_a_restart_with_the_same_skew_outside_a_transition_changes_nothing() -> None:
    stored = SkewWindow(900, 300, 0)
    assert next_window(stored, 900, 5_000 * S) is stored


def test_a_restart_during_a_transition_starts_it_again() -> None:
    stored = SkewWindow(900, 300, 0)
    assert next_window(stored, 900, 600 * S) == SkewWindow(900, 300, 600 * S)


def test_a_lowering_needs_no_transition() -> None:
    w = next_window(SkewWindow(900, 900, 0), 300, 10 * S)
    assert (w.skew_s, w.prev_s, w.late_s(10 * S)) == (300, 300, 300)


def test_a_second_raise_during_a_transition_keeps_the_first_floor() -> None:
    first = next_window(SkewWindow(100, 100, 0), 300, 1_000 * S)
    second = next_window(first, 900, 1_100 * S)
    assert second == SkewWindow(900, 100, 1_100 * S)


# -- the model: no replay through any sequence of restarts ---------------------------------------

restarts = st.lists(
    st.tuples(st.integers(1, 3_600), st.integers(1, 4_000)),  # (skew_s, seconds until next)
    min_size=1,
    max_size=6,
)


@settings(max_examples=400, deadline=None)
@given(
    restarts=restarts,
    first_at=st.integers(0, 4_000),
    date_offset=st.integers(-3_600, 3_600),
    probes=st.lists(st.integers(0, 30_000), min_size=1, max_size=8),
)
def test_no_request_passes_the_date_check_after_its_nonce_expired(
    restarts: list[tuple[int, int]], first_at: int, date_offset: int, probes: list[int]
) -> None:
    """One request, dated `date_offset` s from its first arrival, accepted at its first arrival
    (if it passes then); replayed at later times: at each, if the date check lets it through,
    its nonce (kept 2 x the skew in force at its acceptance + 1 s, as bridge/api/auth.py keeps
    it) must still be there."""
    # The timeline of windows: each restart at its start time, under the store's next_window.
    windows: list[tuple[int, SkewWindow]] = []
    stored: SkewWindow | None = None
    t = 0
    for skew_s, lasts in restarts:
        stored = next_window(stored, skew_s, t * S)
        windows.append((t, stored))
        t += lasts
    end = t

    def window_at(at: int) -> SkewWindow:
        return [w for start, w in windows if start <= at][-1]

    def passes(at: int, date: int) -> bool:
        w = window_at(at)
        return date - at <= w.skew_s and at - date <= w.late_s(at * S)

    arrival = min(first_at, end)
    date = arrival + date_offset
    if not passes(arrival, date):
        return
    expires = arrival * S + 2 * window_at(arrival).skew_s * S + S
    for later in probes:
        at = arrival + 1 + later
        if passes(at, date):
            assert at * S < expires, (windows, arrival, date, at)
