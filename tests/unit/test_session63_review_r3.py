"""Session 63's review (r3) of h3's `new_id`: a new millisecond of the 1,024-ms span whose first
eight time characters `_time_part` last kept (`_last_kms`, `_last_kms_part`) is spelled from
them in `new_id` itself. `new_id` runs in the event loop's thread ("msg_", "bat_") and the SQLite
runner's ("evt_" ids), each with its own clock reading: an id must never be spelled from another
thread's millisecond, however the threads interleave, nor leave the kept parts of two different
spans for the next id. Session 57's thread tests give each thread one millisecond, which the
remembered whole time part (`_last_time_part`) answers or `_time_part` makes: neither reaches
the span's path, and five planted faults of it (the span read after the refill, a call between
its check and its read, one between its two stores, the kept part read back after
`_time_part`'s call, the remembered whole part's first eight read instead) pass them and h3's
tests; the first test here fails on each, the second (real threads) on the call between.
"""

from __future__ import annotations

import sys
import threading
import types

from bridge import ids
from bridge.ids import id_time_ms, new_id

OURS = 1_780_000_000_000 >> 10 << 10  # a span's first millisecond
THEIRS = OURS + 123_456_789  # another span, another ~17-minute high part

# Our clock's moves, as (the id before, this id): the same millisecond, the next, others of the
# kept span, the next span, back a span, a new ~17-minute high part and back.
MOVES = [
    (OURS, OURS), (OURS, OURS + 1), (OURS + 1, OURS + 1023), (OURS + 1023, OURS + 5),
    (OURS + 5, OURS + 1024), (OURS + 1024, OURS + 1025), (OURS + 1025, OURS + 3),
    (OURS - 1, OURS), (OURS + 3, OURS + 2**20), (OURS + 2**20, OURS + 2**20 + 1),
    (OURS + 2**20 + 1, OURS - 1),
]  # fmt: skip
# The other thread's millisecond: another high part, another span of our high part, another
# millisecond of our span.
OTHERS = (THEIRS, OURS + 7 * 1024 + 9, OURS + 700)


def test_an_id_spells_its_own_time_whatever_id_another_thread_makes_at_any_point_within() -> None:
    # Deterministic, each interleaving in turn: the interpreter may hand the GIL to another
    # thread where a function (Python or C) is called or returns. For each move of our clock,
    # with and without a refill of the random characters, the points of `new_id`'s run are
    # counted (a profile hook), then the id is made again once a point with the other thread's
    # id made at that point (the hook itself is not profiled), of each kind of other
    # millisecond. Our id, theirs, and the next id of each of the two spans (the kept parts
    # must be left consistent) must each spell its own millisecond, with random characters of
    # its own.
    inside = ids.new_id.__code__

    def ours_running(frame: types.FrameType | None) -> bool:
        while frame is not None and frame.f_code is not inside:
            frame = frame.f_back
        return frame is not None and frame.f_locals.get("prefix") == "msg_"

    def made_with(
        before: int, ms: int, refill: bool, at: int, other: int
    ) -> tuple[int, list[tuple[str, int, str]]]:
        new_id("msg_", before)
        if refill:
            ids._chars_pos = ids._CHARS_SIZE  # the next id draws anew (harmless to others)
        points = 0
        got: list[tuple[str, int, str]] = []

        def hook(frame: types.FrameType, event: str, arg: object) -> None:
            nonlocal points
            if ours_running(frame):
                if points == at:
                    got.append(("evt_", other, new_id("evt_", other)))
                points += 1

        sys.setprofile(hook)
        try:
            mine = new_id("msg_", ms)
        finally:
            sys.setprofile(None)
        got.append(("msg_", ms, mine))
        for prefix, later in (("evt_", other + 1), ("msg_", ms + 2)):  # the parts left behind
            got.append((prefix, later, new_id(prefix, later)))
        return points, got

    trials = 0
    for before, ms in MOVES:
        for refill in (False, True):
            points, _ = made_with(before, ms, refill, -1, 0)
            assert points >= (6 if refill else 2)  # the refill's calls, `_time_part`'s
            for at in range(points):
                for other in OTHERS:
                    _, got = made_with(before, ms, refill, at, other)
                    assert len(got) == 4
                    for prefix, want, ident in got:
                        assert id_time_ms(ident, prefix) == want, (before, ms, refill, at, other)
                    assert len({ident[-16:] for _, _, ident in got}) == 4
                    trials += 1
    assert trials > 500


def test_threads_walking_their_own_spans_make_ids_of_their_own_milliseconds() -> None:
    # Real threads: each steps through the milliseconds of a span of its own (a new
    # millisecond every id: the span's path whenever no other thread moved the kept span in
    # between, `_time_part` when one did), switching as often as the interpreter lets it. Not
    # every interleaving is met (the test above walks them): a call planted between the span's
    # check and its read was caught by ~1 wrong id a run, in each of 4 runs.
    bases = (OURS, THEIRS, THEIRS + 5 * 1024)
    made: list[list[tuple[int, str]]] = [[] for _ in bases]

    def run(k: int) -> None:
        base, out = bases[k], made[k]
        for i in range(60_000):
            ms = base + i % 1024
            out.append((ms, new_id("m_", ms)))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=run, args=(k,)) for k in range(len(bases))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    for out in made:
        wrong = [(ms, i) for ms, i in out if id_time_ms(i, "m_") != ms]
        assert not wrong, f"{len(wrong)} ids of another thread's time, e.g. {wrong[:3]}"
    randoms = [i[-16:] for out in made for _, i in out]
    assert len(set(randoms)) == len(randoms)
