"""Whether an accept should read its Idempotency-Key's index pages before the write lock.

Why: the read pays only when the key index has outgrown the OS's cache (a day of random keys:
tens of millions), where the insert would otherwise read a leaf from the disk while every writer
waits for the lock. With the index cached it saves nothing and costs each accept 7-15 µs of CPU
(session 47, `bench_store.py --shared --store`). So the read runs for every accept only while
the sampled reads go to the disk: otherwise one accept in SAMPLE_EVERY reads, and a window of
WINDOW sampled reads with more than MISSES_ON that read blocks from the disk turns it on; a
window with none turns it off.

"From the disk" is the thread's block input count (getrusage's ru_inblock, 0.3 µs), not the
read's time: a read that waited for a core, or for a page another process's commit made SQLite
read again from the OS's cache, took as long as a disk read in a loaded benchmark and turned the
lookup on where it only cost.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass

SAMPLE_EVERY = 16
WINDOW = 64
MISSES_ON = 2

_WHO = getattr(resource, "RUSAGE_THREAD", resource.RUSAGE_SELF)


def blocks_read() -> int:
    """Blocks this thread (or, where threads have no count, this process) read from the disk."""
    return resource.getrusage(_WHO).ru_inblock


@dataclass
class KeyWarmup:
    """The decision's state: `due()` before an accept, `seen(from_disk)` after each read."""

    on: bool = False
    _calls: int = 0
    _samples: int = 0
    _misses: int = 0

    def due(self) -> bool:
        """Whether this accept reads its key first: every accept while on, else a sample."""
        self._calls += 1
        return self.on or self._calls % SAMPLE_EVERY == 0

    def seen(self, from_disk: bool) -> None:
        """A read's outcome; at each full window, on when the disk showed, off when it did not."""
        self._samples += 1
        self._misses += from_disk
        if self._samples < WINDOW:
            return
        if self._misses > MISSES_ON:
            self.on = True
        elif self._misses == 0:
            self.on = False
        self._samples = self._misses = 0
