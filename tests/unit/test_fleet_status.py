"""bridge.fleet_status: the other instances' binds and throughput summed per SMSC."""

from __future__ import annotations

from bridge.fleet_status import bound_elsewhere, peer_figures, with_fleet


def _st(up: int, configured: int = 2, tps: float = 10.0) -> dict:
    return {
        "up": up > 0,
        "binds": {"transceiver": {"configured": configured, "up": up}},
        "tps_avg": tps,
    }


def test_peers_are_summed_and_counted() -> None:
    peers = peer_figures([{"a": _st(1, tps=5.5), "b": _st(0)}, {"a": _st(2, tps=1.0)}])
    assert peers["a"] == {
        "up": True, "sending": None, "receiving": None, "binds_up": 3, "tps_avg": 6.5,
        "instances": 2,
    }  # fmt: skip
    # Every SMSC counts every peer, even one that reports it without a bind up.
    assert peers["b"] == {
        "up": False, "sending": None, "receiving": None, "binds_up": 0, "tps_avg": 10.0,
        "instances": 2,
    }  # fmt: skip


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


def _pair(tx: int, rx: int) -> dict:
    """An SMSC with bind_mode transmitter_receiver, one bind of each, as a snapshot has it."""
    return {
        "up": tx > 0,
        "sending": tx > 0,
        "receiving": rx > 0,
        "binds": {
            "transmitter": {"configured": 1, "up": tx},
            "receiver": {"configured": 1, "up": rx},
        },
    }


def test_the_receivers_up_on_another_instance_count_as_receiving() -> None:
    """Binds spread over a fleet: this instance holds the transmitter, another the receiver.
    The receipts come in there, so this instance does not show its receivers down."""
    out = with_fleet({"a": _pair(1, 0)}, peer_figures([{"a": _pair(0, 1)}]))
    assert (out["a"]["up"], out["a"]["sending"], out["a"]["receiving"]) == (True, True, True)
    alone = with_fleet({"a": _pair(1, 0)}, peer_figures([{"a": _pair(1, 0)}]))
    assert alone["a"]["receiving"] is False


def test_an_smsc_served_elsewhere_sends_as_that_instance_does() -> None:
    peers = peer_figures([{"a": _pair(1, 0)}, {"a": _pair(0, 1)}])
    assert (peers["a"]["sending"], peers["a"]["receiving"]) == (True, True)
    here = bound_elsewhere(_pair(0, 0), peers["a"])
    assert (here["up"], here["sending"], here["receiving"]) == (True, True, True)
    assert here["bound_on_other_instance"] is True
    # A status written before session 50 (no sending, no receiving) gets none.
    assert "sending" not in bound_elsewhere({"up": False}, peers["a"])
