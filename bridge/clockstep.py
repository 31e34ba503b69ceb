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
MEMORY_S = 25 * 3600.0  # how long a step is remembered: the longest-lived replay record's life


class WallSteps:
    def __init__(
        self,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        threshold_s: float = STEP_S,
        memory_s: float = MEMORY_S,
    ) -> None:
        self._wall = wall
        self._mono = mono
        self.threshold_s = threshold_s
        self.memory_s = memory_s
        self._offset = wall() - mono()
        # Earlier distances (wall - monotonic), each with the monotonic time it ended (a step).
        self._eras: list[tuple[float, float]] = []

    def check(self) -> float:
        """The step since the last check, in seconds (negative: back), or 0.0. Called every
        second or so: a slew between two checks stays far below the threshold."""
        mono = self._mono()
        offset = self._wall() - mono
        step = offset - self._offset
        if abs(step) < self.threshold_s:
            self._offset = offset  # a slew: the same era
            return 0.0
        self._eras.append((self._offset, mono))
        self._offset = offset
        return step

    def unstepped(self) -> float:
        """Now, as the wall clock reads it, less the forward steps of the last `memory_s`: the
        time records kept against replays expire by (purged S early after a step forward of S,
        a request captured before it could be replayed once it was corrected), and never later
        than the wall clock. The lowest distance of the remembered eras (and of the last check)
        is the reference, so a step forward after an earlier step back still counts. A step
        older than the longest record's life is forgotten: every record written before it has
        expired by then, and a start on a clock far behind (corrected once) would otherwise
        keep records for ever."""
        mono = self._mono()
        wall = self._wall()
        horizon = mono - self.memory_s
        self._eras = [era for era in self._eras if era[1] >= horizon]
        # The distance at the last check counts too: a step since then is not lost.
        low = min([self._offset, *(offset for offset, _ended in self._eras)])
        return min(wall, mono + low)
