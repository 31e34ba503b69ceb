"""Token-bucket arithmetic for account rates (pure: state and time passed in)."""

from __future__ import annotations


def bucket_take(
    tokens: float | None, at: float | None, rate: float, n: int, now: float, burst_s: float = 1.0
) -> tuple[float, float, float]:
    """Token bucket step: (seconds to wait, 0.0 when allowed; tokens after; time to store: now,
    or the bucket's own time when that is a little ahead of now).

    `tokens`/`at` None is a new, full bucket. rate <= 0 means unlimited. A request larger than the
    bucket is allowed when the bucket is full, so a 1000-recipient batch on a 100 TPS account is
    paced, not refused forever. Pure: the store runs it inside the accept transaction, so every
    process and instance shares one bucket per account.
    """
    if rate <= 0:
        return 0.0, 0.0, now
    cap = max(rate * burst_s, 1.0)
    if tokens is None or at is None or at - now >= STEPPED_BACK_S:
        # A time well ahead of now: the wall clock went back (an NTP step). Measured from it,
        # the bucket never refilled until the clock passed it again (every send 429 for the size
        # of the step; a refusal writes nothing back). Full, as after a long pause: at most `cap`.
        tokens, at = cap, now
    elif at > now:
        # A little ahead: another process's or instance's accept, its clock read a moment later
        # (or a hair ahead of this host's), committed first. No time has passed for this bucket;
        # refilled to full here, as a step back, 40 requests in 5 ms of a 2-TPS account were
        # accepted 5 times over on one instance and 12 over two, and two instances 3 ms apart
        # let every request through.
        now = at
    tokens = min(cap, tokens + (now - at) * rate)
    need = min(n, cap)
    if tokens >= need:
        return 0.0, tokens - n, now
    return (need - tokens) / rate, tokens, now


# How far ahead of now a bucket's time must be to be a clock stepped back (bridge.clockstep's
# STEP_S): hosts kept by NTP are milliseconds apart, and the clock offset PostgreSQL's instances
# measure ignores less than 250 ms. Below it the bucket waits for the clock, at most this long.
STEPPED_BACK_S = 1.0
