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
    ahead = 0.0
    if tokens is None or at is None or at - now >= STEPPED_BACK_S:
        # Far ahead of now: the wall clock went back (an NTP step) while no daemon watched it
        # (one that runs moves SQLite's buckets back with the queue: the clock shift;
        # PostgreSQL's are on the database's clock, which a host's step does not move).
        # Measured from it, the bucket never refilled until the clock passed it again. Full, as
        # after a long pause: at most `cap`.
        tokens, at = cap, now
    elif at > now:
        # Ahead: another process's or instance's accept, its clock read later (or a host a hair
        # ahead of this one), committed first; or this accept's time was read when its request
        # came in, before it waited for the store. No time has passed for this bucket. Taken
        # for a step back and refilled, 40 requests in 5 ms of a 2-TPS account were accepted 5
        # times over on one instance and 12 over two, and accepts late by a second had a full
        # bucket each (session 42's reviews).
        ahead, now = at - now, at
    tokens = min(cap, tokens + (now - at) * rate)
    need = min(n, cap)
    if tokens >= need:
        return 0.0, tokens - n, now
    return ahead + (need - tokens) / rate, tokens, now


# How far ahead of now a bucket's time must be to be a clock stepped back unseen: far beyond
# any accept's wait for the store (an HTTP request is answered long before) and hosts kept by
# NTP. Below it a bucket whose clock went back unseen waits for the clock, at most this long
# (the 429's Retry-After says so); a step a daemon saw moved the bucket back with it (SQLite).
STEPPED_BACK_S = 60.0
