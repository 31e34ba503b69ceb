"""Per-account message rate (TPS) as a token bucket: pure state, time passed in.

An operator changes an account's TPS at any time; the bucket reads the current value on each call,
so the change applies to the very next request without a restart.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.domain.rate import bucket_take


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    def __init__(self, burst_seconds: float = 1.0) -> None:
        self._burst = burst_seconds
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str, rate: int, n: int, now: float) -> float:
        """Take n tokens. Returns 0.0 when allowed, else the seconds to wait before retrying.

        rate <= 0 means unlimited. A request larger than the bucket is allowed when the bucket is
        full, so a 1000-recipient batch on a 100 TPS account is paced, not refused forever.
        """
        b = self._buckets.get(key)
        wait, tokens, at = bucket_take(
            b.tokens if b else None, b.at if b else None, rate, n, now, self._burst
        )
        if rate > 0:
            self._buckets[key] = _Bucket(tokens, at)
        return wait
