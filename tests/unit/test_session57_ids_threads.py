"""Session 57's review: `new_id` is called from more than one thread (the event loop's: "msg_",
"bat_"; the SQLite runner's: "evt_" ids of webhook events), each with its own `now`. Its
random characters are refilled by os.urandom, which lets other threads run; an id started in
one thread must keep its own millisecond even when another thread's id, made during that
refill, moved the remembered time part (merged in session 57, the id took the other thread's
time part: read from the global after the refill)."""

from __future__ import annotations

import os
import sys
import threading
import types

import pytest

from bridge import ids
from bridge.ids import id_time_ms, new_id


def test_an_id_keeps_its_own_time_when_another_thread_makes_one_during_the_refill(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours, theirs = 1_780_000_000_000, 1_780_000_123_456
    new_id("msg_", ours)  # this millisecond's time part is the remembered one
    others: list[str] = []

    def urandom(n: int) -> bytes:
        # Where the GIL is let go: the other thread runs here, once (its own refill included).
        if not others:
            others.append("")
            others.append(new_id("evt_", theirs))
        return os.urandom(n)

    monkeypatch.setattr(ids, "os", types.SimpleNamespace(urandom=urandom))
    monkeypatch.setattr(ids, "_chars_pos", ids._CHARS_SIZE)  # the next id refills
    mine = new_id("msg_", ours)
    assert others, "no refill happened"
    assert id_time_ms(others[1], "evt_") == theirs
    assert id_time_ms(mine, "msg_") == ours
    assert mine[-16:] != others[1][-16:]
    # And afterwards each millisecond gets its own part again.
    assert id_time_ms(new_id("msg_", ours), "msg_") == ours
    assert id_time_ms(new_id("evt_", theirs), "evt_") == theirs


def test_threads_with_their_own_clocks_make_ids_of_their_own_time_and_never_the_same() -> None:
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch as often as the interpreter lets it
    made: list[list[str]] = [[], [], []]

    def run(k: int) -> None:
        ms = 1_780_000_000_000 + k * 1_000_003
        out = made[k]
        for _ in range(40_000):
            out.append(new_id("m_", ms))

    try:
        threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    for k, out in enumerate(made):
        want = 1_780_000_000_000 + k * 1_000_003
        assert {id_time_ms(i, "m_") for i in out} == {want}
    randoms = [i[-16:] for out in made for i in out]
    assert len(set(randoms)) == len(randoms)
