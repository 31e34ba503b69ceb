"""bridge/clockstep.py: a step of the wall clock told from time passing and from slewing."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from bridge.clockstep import WallSteps


class Clocks:
    def __init__(self) -> None:
        self.wall = 1_700_000_000.0
        self.mono = 5_000.0

    def run(self, s: float, slew_ppm: float = 0.0) -> None:
        """Real time passes; both clocks advance (NTP's frequency correction moves both)."""
        self.mono += s * (1 + slew_ppm / 1e6)
        self.wall += s * (1 + slew_ppm / 1e6)


def watch(c: Clocks) -> WallSteps:
    return WallSteps(wall=lambda: c.wall, mono=lambda: c.mono)


def test_time_passing_is_no_step() -> None:
    c = Clocks()
    w = watch(c)
    for _ in range(100):
        c.run(0.5, slew_ppm=500)
        assert w.check() == 0.0


def test_a_step_back_is_reported_once_with_its_size() -> None:
    c = Clocks()
    w = watch(c)
    c.run(0.5)
    c.wall -= 600
    assert w.check() == -600.0
    c.run(0.5)
    assert w.check() == 0.0


def test_a_step_forward_is_reported() -> None:
    c = Clocks()
    w = watch(c)
    c.wall += 3600
    assert w.check() == 3600.0


def test_a_sub_threshold_offset_is_not_a_step() -> None:
    c = Clocks()
    w = watch(c)
    c.wall -= 0.2  # what ntpd slews instead of stepping (under 128 ms) and a bit more
    assert w.check() == 0.0


def test_unstepped_leaves_out_forward_steps_and_follows_the_wall_after_a_step_back() -> None:
    c = Clocks()
    w = watch(c)
    c.run(10)
    assert w.unstepped() == c.wall
    c.wall += 11 * 60  # forward: replay records must not expire 11 minutes early
    assert w.unstepped() == c.wall - 11 * 60
    c.wall -= 11 * 60  # corrected
    assert w.unstepped() == c.wall
    c.wall -= 300  # back: the wall clock is the earlier one
    assert w.unstepped() == c.wall


@given(st.lists(st.tuples(st.floats(0.01, 5), st.floats(-1e4, 1e4)), max_size=30))
@example(  # found by hypothesis: 1.0013e-6 s of rounding against the flat 1e-6 allowance
    [
        (1.9, 1.281553160824842),
        (1.9, 1.281553160824842),
        (0.6779872562083599, 1.7782732728846895),
        (0.6779872562083599, -1.045534729791143),
        (0.3429982030952083, -1.045534729791143),
    ]
)
def test_checks_add_up_to_the_net_step(events: list[tuple[float, float]]) -> None:
    c = Clocks()
    w = watch(c)
    total = seen = 0.0
    for run, step in events:
        c.run(run)
        c.wall += step
        total += step
        got = w.check()
        seen += got
        assert got == 0.0 or abs(got - step) < 1e-6
        assert got != 0.0 or abs(step) < 1.0 + 1e-6
    # Every step of a second or more was seen (one at the threshold itself may read a hair
    # under it in floating point); smaller ones may add up unseen.
    # Each step is read off a wall clock near 1.7e9 s, whose spacing there is 2.4e-7 s: the
    # rounding adds up over the steps (found by hypothesis: 1.0013e-6 after four steps).
    small = sum(abs(s) for _r, s in events if abs(s) < 1.0 + 1e-6)
    assert abs(total - seen) <= small + 1e-6 * max(1, len(events))
