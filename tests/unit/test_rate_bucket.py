"""The account rate's token bucket (bridge/domain/rate.py), pure."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.domain.rate import STEPPED_BACK_S, bucket_take


def test_a_new_bucket_is_full_and_drains() -> None:
    assert bucket_take(None, None, 2, 1, 100.0) == (0.0, 1.0, 100.0)
    assert bucket_take(1.0, 100.0, 2, 1, 100.0) == (0.0, 0.0, 100.0)
    wait, tokens, at = bucket_take(0.0, 100.0, 2, 1, 100.0)
    assert (wait, tokens, at) == (0.5, 0.0, 100.0)  # a refusal: nothing to write back


def test_it_refills_at_the_rate_up_to_its_capacity() -> None:
    # half a token short: 0.25 s to wait
    assert bucket_take(0.0, 100.0, 2, 1, 100.25) == (0.25, 0.5, 100.25)
    assert bucket_take(0.0, 100.0, 2, 1, 100.5) == (0.0, 0.0, 100.5)
    assert bucket_take(0.0, 100.0, 2, 1, 1000.0) == (0.0, 1.0, 1000.0)  # capped at 2


def test_a_batch_larger_than_the_bucket_is_paced_not_refused_for_ever() -> None:
    wait, tokens, _ = bucket_take(None, None, 2, 10, 100.0)
    assert (wait, tokens) == (0.0, -8.0)  # taken whole from a full bucket, then owed
    assert bucket_take(tokens, 100.0, 2, 1, 104.0)[0] == 0.5  # 4 s repaid 8 tokens: empty


@pytest.mark.parametrize("back_s", [STEPPED_BACK_S, 600.0, 7200.0])
def test_a_clock_gone_back_gives_a_full_bucket_not_a_lock_out(back_s: float) -> None:
    """A stored time well ahead of now (an NTP step back): before, no refill until the clock
    passed it again, so a drained bucket refused every send for the size of the step."""
    wait, tokens, at = bucket_take(-8.0, 1000.0, 2, 1, 1000.0 - back_s)
    assert (wait, tokens, at) == (0.0, 1.0, 1000.0 - back_s)


@pytest.mark.parametrize("behind_s", [0.000_5, 0.003, 0.25, 1.5, STEPPED_BACK_S - 0.001])
def test_a_bucket_written_a_moment_later_is_not_refilled(behind_s: float) -> None:
    """Another process's accept, its clock read a moment after this one's, committed first (or
    this accept waited for the store after its time was read): no time has passed for the
    bucket. Refilled to full, as a step back, it let a 2-TPS account's burst through several
    times over (session 42's reviews). A refusal waits for the bucket's time, then the refill."""
    wait, tokens, at = bucket_take(0.0, 1000.0, 2, 1, 1000.0 - behind_s)
    assert (wait, tokens, at) == (pytest.approx(behind_s + 0.5), 0.0, 1000.0)
    wait, tokens, at = bucket_take(1.0, 1000.0, 2, 1, 1000.0 - behind_s)
    assert (wait, tokens, at) == (0.0, 0.0, 1000.0)  # kept its time: it never goes back


def test_a_burst_from_clocks_a_little_apart_is_held_to_the_rate() -> None:
    """Accepts alternating between two hosts 3 ms apart, one every 2 ms for 40 ms, on a 2-TPS
    account: what its bucket grants is its capacity plus what 40 ms refill, 2 in all."""
    tokens: float | None = None
    at: float | None = None
    granted = 0
    for i in range(20):
        now = 1000.0 + i * 0.002 + (0.003 if i % 2 else 0.0)
        wait, left, when = bucket_take(tokens, at, 2, 1, now)
        if wait == 0.0:
            granted += 1
            tokens, at = left, when
    assert granted == 2


@settings(max_examples=300, deadline=None)
@given(
    st.floats(-50, 5, allow_nan=False),
    st.floats(0, 1e6, allow_nan=False),
    st.floats(0.5, 100, allow_nan=False),
    st.integers(1, 50),
    st.floats(0, 1e6, allow_nan=False),
)
def test_never_more_than_the_capacity_at_once(
    tokens: float, at: float, rate: float, n: int, now: float
) -> None:
    """Whatever the stored state and the clock, one step grants at most the bucket's capacity
    (or one request larger than it), and a grant leaves the time it was taken."""
    wait, left, when = bucket_take(tokens, at, rate, n, now)
    cap = max(rate, 1.0)
    assert when == (at if 0 < at - now < STEPPED_BACK_S else now)
    if wait == 0.0:
        assert left >= min(n, cap) - n - 1e-9 - cap
        assert left + n <= cap + 1e-9
    else:
        assert wait > 0 and left < min(n, cap)
