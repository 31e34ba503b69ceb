"""Counts per whole second, for the submit rate `smpp-bridge status` and the admin API show.

The last whole second alone, which the `tps` field has always been (so it compares with the
SMSC's per-second limit), reads 0 whenever one second passes without a submit: on an overloaded
machine, or with traffic in bursts, a busy SMSC then looked idle. The average over the last
`window` whole seconds is the rate an operator means by "throughput".
"""

from __future__ import annotations


class PerSecond:
    """Counts for the last `window` whole seconds; the caller says which second it is."""

    __slots__ = ("_counts", "_sec", "window")

    def __init__(self, window: int = 10) -> None:
        if window < 1:
            raise ValueError("window must be at least 1 second")
        self.window = window
        self._sec = 0
        # _counts[i] is second (_sec - i); _counts[0] is the second in progress.
        self._counts = [0] * (window + 1)

    def add(self, sec: int, n: int = 1) -> None:
        if sec > self._sec:  # a new second (`_advance` only then): a call less a part sent
            self._advance(sec)
        self._counts[0] += n

    def last(self, sec: int) -> int:
        """The count of the last whole second (the one before `sec`)."""
        self._advance(sec)
        return self._counts[1]

    def average(self, sec: int) -> float:
        """Per second over the last `window` whole seconds (the one in progress left out)."""
        self._advance(sec)
        return sum(self._counts[1:]) / self.window

    def _advance(self, sec: int) -> None:
        step = sec - self._sec
        if step <= 0:  # the same second (a clock read earlier than the last one counts there)
            return
        self._sec = sec
        if step > self.window:
            self._counts = [0] * (self.window + 1)
        else:
            self._counts = [0] * step + self._counts[: len(self._counts) - step]
