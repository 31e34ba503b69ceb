"""bridge.fleet_status: the other instances' binds and throughput summed per SMSC."""

from __future__ import annotations

from bridge.fleet_status import peer_figures, with_fleet


def _st(up: int, configured: int = 2, tps: float = 10.0) -> dict:
    return {
        "up": up > 0,
        "binds": {"transceiver": {"configured": configured, "up": up}},
        "tps_avg": tps,
    }


def test_peers_are_summed_and_counted() -> None:
    peers = peer_figures([{"a": _st(1, tps=5.5), "b": _st(0)}, {"a": _st(2, tps=1.0)}])
    assert peers["a"] == {"up": True, "binds_up": 3, "tps_avg": 6.5, "instances": 2}
    # Every SMSC counts every peer, even one that reports it without a bind up.
    assert peers["b"] == {"up": False, "binds_up": 0, "tps_avg": 10.0, "instances": 2}


def test_this_instance_is_added_and_its_own_figures_kept() -> None:
    mine = {"a": _st(1, tps=2.0)}
    out = with_fleet(mine, peer_figures([{"a": _st(1, tps=3.0)}]))
    assert out["a"]["binds"]["transceiver"]["up"] == 1
    assert out["a"]["fleet"] == {"instances": 2, "binds_up": 2, "tps_avg": 5.0}


def test_alone_on_the_database_the_fleet_is_this_instance() -> None:
    out = with_fleet({"a": _st(2, tps=4.0)}, peer_figures([]))
    assert out["a"]["fleet"] == {"instances": 1, "binds_up": 2, "tps_avg": 4.0}


def test_an_older_peers_status_without_an_average_counts_its_last_second() -> None:
    old = {"a": {"up": True, "binds": {"transmitter": {"configured": 1, "up": 1}}, "tps": 7}}
    assert peer_figures([old])["a"]["tps_avg"] == 7.0
