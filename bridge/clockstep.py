"""Steps of the wall clock, seen against the monotonic one.

Stored times (a message's next try, a webhook's retry, nonce and idempotency expiry) are wall
times, which a step of the host's clock (NTP's `makestep`, `date -s`, a VM resumed) moves under
them: after a step back of S, a message accepted just before waited S more; after a step forward
that was corrected, nonces and idempotency records had been purged S early. The monotonic clock
is never stepped (only slewed, as the wall clock is), so the distance between the two changes
by exactly the step and by at most NTP's 0.5 ms/s otherwise: that is how a step is told from
time passing. Pure: the clocks are passed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable

STEP_S = 1.0  # a change of the distance at least this big between two checks is a step


class WallSteps:
    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        threshold_s: float = STEP_S,
    ) -> None:
        self._wall = wall
        self._mono = mono
        self.threshold_s = threshold_s
        self._offset = self._start = wall() - mono()

    def check(self) -> float:
        """The step since the last check, in seconds (negative: back), or 0.0. Called every
        second or so: a slew between two checks stays far below the threshold."""
        offset = self._wall() - self._mono()
        step, self._offset = offset - self._offset, offset
        return step if abs(step) >= self.threshold_s else 0.0

    def unstepped(self) -> float:
        """Now, as the wall clock reads it, less any net forward step since this process
        started: the time records kept against replays expire by (purged S early after a step
        forward of S, a request captured before it could be replayed once it was corrected),
        and never later than the wall clock (after a step back, the wall clock's own reading)."""
        wall = self._wall()
        return min(wall, self._start + self._mono())
