"""Concatenation reference lanes across a fleet (server.instances) and its acceptors.

Two long messages to one number in flight together with one reference are joined by the
handset. Acceptor workers of one daemon drew from disjoint lanes; the instances of a PostgreSQL
fleet each started at a random value, so two of them gave one number the same 8-bit reference
for 1 pair in 256."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.app import reference_lane
from bridge.config import ConfigError, parse_config
from bridge.text.split import RefCounter

BASE = {"security": {"generate_master_key": True}, "sim": {"enabled": True}}


def test_one_instance_without_workers_draws_from_every_reference() -> None:
    assert reference_lane("all", 0, 0, 0, 1) is None


def test_the_owner_of_a_workers_daemon_has_a_lane_of_its_own() -> None:
    # It draws when a reload makes a waiting one-part message long (pipeline/reencode.py):
    # from every reference it could give a number the one an acceptor had just given it.
    assert reference_lane("acceptor", 0, 2, 0, 1) == (0, 3)
    assert reference_lane("acceptor", 1, 2, 0, 1) == (1, 3)
    assert reference_lane("owner", 0, 2, 0, 1) == (2, 3)
    assert reference_lane("owner", 0, 2, 1, 2) == (5, 6)


def test_instances_and_workers_get_disjoint_lanes() -> None:
    got = {reference_lane("acceptor", w, 3, i, 4) for i in range(4) for w in range(3)} | {
        reference_lane("owner", 0, 3, i, 4) for i in range(4)
    }
    assert (0, 16) in got and (15, 16) in got
    assert {lane for lane, lanes in got if lanes == 16} == set(range(16))
    assert {reference_lane("all", 0, 0, i, 4) for i in range(4)} == {(i, 4) for i in range(4)}


def test_a_lane_outside_its_range_draws_from_every_reference() -> None:
    assert reference_lane("all", 0, 0, 2, 2) is None  # instance not below instances
    assert reference_lane("acceptor", 0, 64, 0, 4) is None  # 260 lanes: more than 8 bits hold


@settings(max_examples=200, deadline=None)
@given(
    instances=st.integers(2, 16),
    workers=st.integers(0, 8),
    bits=st.sampled_from([8, 16]),
    starts=st.lists(st.integers(0, 0xFFFF), min_size=256, max_size=256),
    draws=st.integers(1, 8),
)
def test_no_two_processes_of_a_fleet_share_a_reference_for_one_number(
    instances: int, workers: int, bits: int, starts: list[int], draws: int
) -> None:
    if instances * (workers + 1 if workers else 1) > 256:
        return
    seen: dict[int, tuple[int, int]] = {}
    for i in range(instances):
        for w in range(workers + 1 if workers else 1):  # w == workers: their owner
            role = "all" if not workers else "owner" if w == workers else "acceptor"
            lane = reference_lane(role, w, workers, i, instances)
            assert lane is not None
            start = starts[lane[0]]
            rc = RefCounter(start=lambda start=start: start, lane=lane[0], lanes=lane[1])
            for _ in range(draws):
                ref = rc.next("+8613800138000", bits)
                assert ref < (1 << bits)
                assert seen.setdefault(ref, (i, w)) == (i, w), (ref, seen[ref], (i, w))


def test_the_instance_comes_from_the_environment_and_is_checked() -> None:
    cfg = parse_config({**BASE, "server": {"instances": 3}}, env={"SMPP_BRIDGE_INSTANCE": "2"})
    assert (cfg.server.instance, cfg.server.instances) == (2, 3)
    with pytest.raises(ConfigError, match=r"server.instance: must be below instances \(2\)"):
        parse_config({**BASE, "server": {"instances": 2}}, env={"SMPP_BRIDGE_INSTANCE": "2"})
    with pytest.raises(ConfigError, match=r"expected an integer.*from env SMPP_BRIDGE_INSTANCE"):
        parse_config({**BASE, "server": {"instances": 2}}, env={"SMPP_BRIDGE_INSTANCE": "one"})
    with pytest.raises(ConfigError, match=r"instances x \(workers \+ 1\) must be at most 256"):
        parse_config({**BASE, "server": {"instances": 4, "workers": 64}}, env={})
    parse_config({**BASE, "server": {"instances": 4, "workers": 63}}, env={})
