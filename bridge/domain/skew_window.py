"""How late a signed request may be, across a raise of the allowed clock skew.

A nonce is remembered for twice the skew in force when it was spent (and a second): long enough
that no copy of its request can pass the skew check once it is forgotten, as long as the skew
does not grow. Raised from P to S by a restart, a request captured up to S seconds ago passes
the wider check again while its nonce, kept for 2P, may be gone: it could be replayed. So for a
while after a raise, requests dated more than P in the past are refused as before; once S + P
seconds have passed, no request spent under P can pass the wider check any more, and the whole
window applies. The window is kept in the store (each face's row), shared by every process and
instance, so a restart during the transition keeps it. Pure: the store reads and writes the row.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SkewWindow:
    skew_s: int  # the skew in force
    prev_s: int  # the lateness allowed before the last raise, while its transition runs
    since_ms: int  # when the transition began (unix milliseconds)

    def until_ms(self) -> int:
        """When the transition ends: every nonce spent under `prev_s` has been kept long
        enough; the same moment as `since_ms` when no transition runs."""
        if self.prev_s >= self.skew_s:
            return self.since_ms
        return self.since_ms + (self.prev_s + self.skew_s) * 1000

    def late_s(self, now_ms: int) -> int:
        """How far in the past a request's date may be at `now_ms` (its future side is always
        `skew_s`: a request dated ahead was never accepted earlier than its date minus P)."""
        return self.skew_s if now_ms >= self.until_ms() else self.prev_s


def next_window(stored: SkewWindow | None, skew_s: int, now_ms: int) -> SkewWindow:
    """The window a process starting with `skew_s` runs, given the stored one.

    No stored window (a new store, or one from before windows were kept): the nonces were kept
    for this skew, as far as anyone can know. The same skew: the stored window, but a transition
    still running starts again from now, so an instance (PostgreSQL) restarted with the new value
    later than another one, whose nonces were kept for the old value until now, is covered too.
    A change: the lateness allowed right now becomes the transition's floor (a second raise
    during a transition keeps the first one's floor); a skew at or under it needs none."""
    if stored is None:
        return SkewWindow(skew_s, skew_s, now_ms)
    if stored.skew_s == skew_s:
        if now_ms < stored.until_ms():
            return SkewWindow(skew_s, stored.prev_s, now_ms)
        return stored
    floor = stored.late_s(now_ms)
    return SkewWindow(skew_s, min(floor, skew_s), now_ms)
