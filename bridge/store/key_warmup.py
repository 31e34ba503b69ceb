"""Whether an accept should read its Idempotency-Key's index pages before the write lock.

Why: the read pays only when the key index has outgrown the OS's cache (a day of random keys:
tens of millions), where the insert would otherwise read a leaf from the disk while every writer
waits for the lock. With the index cached it saves nothing and costs each accept 7-15 µs of CPU
(session 47, `bench_store.py --shared --store`). So the read runs for every accept only while
the sampled reads show the disk: otherwise one accept in SAMPLE_EVERY reads, timed, and a
window of WINDOW samples with more than MISSES_ON slow ones (past SLOW_S: a page fault, not a
cached b-tree descent of a few microseconds) turns it on; a window with none turns it off.
Pure: the caller times the reads and asks.
"""

from __future__ import annotations

from dataclasses import dataclass

SAMPLE_EVERY = 16
WINDOW = 64
SLOW_S = 0.000_2
MISSES_ON = 2


@dataclass
class KeyWarmup:
    """The decision's state: `due()` before an accept, `seen(seconds)` after each read it made."""

    on: bool = False
    _calls: int = 0
    _samples: int = 0
    _slow: int = 0

    def due(self) -> bool:
        """Whether this accept reads its key first: every accept while on, else a sample."""
        self._calls += 1
        return self.on or self._calls % SAMPLE_EVERY == 0

    def seen(self, seconds: float) -> None:
        """A read's duration; at each full window, on when the disk showed, off when it did not."""
        self._samples += 1
        self._slow += seconds > SLOW_S
        if self._samples < WINDOW:
            return
        if self._slow > MISSES_ON:
            self.on = True
        elif self._slow == 0:
            self.on = False
        self._samples = self._slow = 0
