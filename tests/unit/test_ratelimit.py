"""The account rate's token bucket (bridge/domain/rate.py) over a sequence of requests, its
state kept between them as the store keeps it in `rate_buckets`."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.domain.rate import bucket_take


class RateLimiter:
    """The state a store row keeps, here in a dict: one bucket per key."""

    def __init__(self, burst_seconds: float = 1.0) -> None:
        self._burst = burst_seconds
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str, rate: int, n: int, now: float) -> float:
        tokens, at = self._buckets.get(key, (None, None))
        wait, tokens, at = bucket_take(tokens, at, rate, n, now, self._burst)
        if rate > 0 and wait == 0.0:  # a refusal writes nothing back, as in the store
            self._buckets[key] = (tokens, at)
        return wait


@pytest.mark.parametrize("rate", [0, -1])
def test_rate_zero_or_less_is_unlimited(rate):
    rl = RateLimiter()
    for _ in range(1000):
        assert rl.take("acc", rate, 10_000, 0.0) == 0.0


def test_burst_then_exact_wait():
    rl = RateLimiter()
    assert [rl.take("a", 5, 1, 100.0) for _ in range(5)] == [0.0] * 5
    assert rl.take("a", 5, 1, 100.0) == pytest.approx(0.2)
    assert rl.take("a", 5, 1, 100.19) == pytest.approx(0.01)  # refused takes consume nothing
    assert rl.take("a", 5, 1, 100.2) == 0.0


def test_refill_is_capped_at_the_burst():
    rl = RateLimiter()
    for _ in range(5):
        rl.take("a", 5, 1, 0.0)
    # A long idle period refills to the cap (5), not to 5 x 1000 s.
    assert [rl.take("a", 5, 1, 1000.0) for _ in range(5)] == [0.0] * 5
    assert rl.take("a", 5, 1, 1000.0) > 0


def test_burst_seconds_scale_the_bucket():
    rl = RateLimiter(burst_seconds=2.0)
    assert all(rl.take("a", 3, 1, 0.0) == 0.0 for _ in range(6))
    assert rl.take("a", 3, 1, 0.0) == pytest.approx(1 / 3)


def test_fractional_bucket_is_at_least_one_token():
    rl = RateLimiter(burst_seconds=0.1)
    assert rl.take("a", 1, 1, 0.0) == 0.0  # cap = max(0.1, 1)
    assert rl.take("a", 1, 1, 0.0) == pytest.approx(1.0)


def test_a_big_batch_is_paced_not_starved():
    rl = RateLimiter()
    # 1000 recipients on a 100/s account: allowed on a full bucket, leaving a debt of 900 ...
    assert rl.take("a", 100, 1000, 0.0) == 0.0
    # ... which the next request waits out: (1 - (100 - 1000)) / 100 = 9.01 s.
    assert rl.take("a", 100, 1, 0.0) == pytest.approx(9.01)
    assert rl.take("a", 100, 1, 9.0) == pytest.approx(0.01)
    assert rl.take("a", 100, 1, 9.01 + 1e-9) == 0.0


def test_a_big_batch_waits_at_most_for_a_full_bucket():
    rl = RateLimiter()
    rl.take("a", 100, 100, 0.0)  # empty
    wait = rl.take("a", 100, 5000, 0.0)
    assert wait == pytest.approx(1.0)  # it needs a full bucket (100), not 5000 tokens
    assert rl.take("a", 100, 5000, wait) == 0.0


def test_small_traffic_below_the_rate_does_not_starve_a_big_batch():
    """Small requests at half the rate; a 50-recipient batch on a 10/s account retries after each
    wait it is given (interleaved with the small ones) and gets through within seconds."""
    rl = RateLimiter()
    rl.take("a", 10, 10, 0.0)  # start drained
    events = [(0.2 * k, "small") for k in range(1, 100)] + [(0.05, "big")]
    admitted_at = None
    while events and admitted_at is None:
        events.sort()
        t, kind = events.pop(0)
        if kind == "small":
            rl.take("a", 10, 1, t)
            continue
        wait = rl.take("a", 10, 50, t)
        if wait == 0.0:
            admitted_at = t
        else:
            events.append((t + wait, "big"))
    assert admitted_at is not None and admitted_at <= 3.0


def test_keys_are_independent():
    rl = RateLimiter()
    assert rl.take("a", 1, 1, 0.0) == 0.0
    assert rl.take("a", 1, 1, 0.0) > 0
    assert rl.take("b", 1, 1, 0.0) == 0.0


def test_a_rate_change_applies_to_the_next_call():
    rl = RateLimiter()
    assert rl.take("a", 100, 1, 0.0) == 0.0
    # Lowered to 2/s: the bucket is clamped to the new cap of 2 at once.
    assert rl.take("a", 2, 2, 0.0) == 0.0
    assert rl.take("a", 2, 1, 0.0) == pytest.approx(0.5)
    # Raised to 1000/s: the refill uses the new rate.
    assert rl.take("a", 1000, 1, 0.001) == 0.0


@settings(max_examples=300, deadline=None)
@given(
    rate=st.integers(1, 50),
    steps=st.lists(st.tuples(st.floats(0, 2), st.integers(1, 120)), min_size=1, max_size=40),
)
def test_waits_are_exact_enough_and_the_rate_holds(rate, steps):
    """A refused request retried after the wait it was given is admitted; and over any run the
    admitted total never exceeds a full bucket plus rate x elapsed time plus the overshoot of the
    largest batch a full bucket let through."""
    rl = RateLimiter()
    t = 0.0
    admitted = 0
    overshoot = 0
    for dt, n in steps:
        t += dt
        wait = rl.take("a", rate, n, t)
        if wait > 0:
            assert wait <= (min(n, rate) + overshoot) / rate + 1e-9
            t += wait + 1e-9
            assert rl.take("a", rate, n, t) == 0.0
        admitted += n
        overshoot = max(overshoot, n - rate)
        assert admitted <= rate + rate * t + overshoot + 1e-6
