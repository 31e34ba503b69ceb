"""bridge.api.connections.ConnectionCap: the process's cap on open public connections, and each
peer address's share of it (server.max_connections, server.max_connections_per_ip)."""

from __future__ import annotations

import logging

import pytest

from bridge.api import connections
from bridge.api.connections import GLOBAL, PER_IP, ConnectionCap
from bridge.domain.forwarded import networks


def test_a_peer_at_its_share_is_refused_while_others_are_admitted() -> None:
    cap = ConnectionCap(10, per_ip=2)
    first = [cap.admit("192.0.2.1") for _ in range(2)]
    assert first == ["192.0.2.1", "192.0.2.1"]
    assert cap.admit("192.0.2.1") is False
    assert cap.admit("::ffff:192.0.2.1") is False  # the same client over a dual-stack listener
    assert cap.admit("192.0.2.2") == "192.0.2.2"
    assert cap.open == 3 and cap.refused == {GLOBAL: 0, PER_IP: 2}
    cap.release(first[0])
    assert cap.admit("192.0.2.1") == "192.0.2.1"  # a closed one frees a place
    for key in [first[1], "192.0.2.1", "192.0.2.2"]:
        cap.release(key)
    assert cap.open == 0 and cap.by_peer == {}  # nothing kept for peers that left


def test_trusted_proxies_are_exempt_and_the_global_cap_still_applies() -> None:
    cap = ConnectionCap(4, per_ip=1, exempt=networks(("10.0.0.0/8",)))
    assert [cap.admit("10.0.0.7") for _ in range(4)] == [True] * 4
    assert cap.admit("10.0.0.7") is False and cap.admit("192.0.2.1") is False
    assert cap.refused == {GLOBAL: 2, PER_IP: 0}
    assert cap.by_peer == {}


def test_without_a_per_peer_cap_only_the_total_counts() -> None:
    cap = ConnectionCap(3)
    assert [cap.admit("192.0.2.1") for _ in range(3)] == [True] * 3
    assert cap.admit("192.0.2.1") is False
    assert cap.refused == {GLOBAL: 1, PER_IP: 0} and cap.by_peer == {}
    cap.release(True)
    assert cap.admit(None) is True  # a peer without an address (not TCP): counted in total


def test_refusals_are_logged_once_a_minute_per_reason_with_the_address(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1000.0]
    monkeypatch.setattr(connections.time, "monotonic", lambda: now[0])
    caplog.set_level(logging.WARNING, logger="bridge.api")
    cap = ConnectionCap(3, per_ip=1)
    cap.admit("192.0.2.1")
    for _ in range(5):
        assert cap.admit("192.0.2.1") is False
    cap.admit("192.0.2.2")
    cap.admit("192.0.2.3")
    assert cap.admit("192.0.2.4") is False  # the total: a reason of its own, logged too
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "192.0.2.1 at server.max_connections_per_ip" in lines[0]
    assert "at server.max_connections (3 open)" in lines[1]
    assert [getattr(r, "remote", None) for r in caplog.records] == ["192.0.2.1", "192.0.2.4"]
    now[0] += 60
    cap.release("192.0.2.3")  # room in the total: the peer's own share refuses it
    assert cap.admit("192.0.2.1") is False
    assert "(4 more refused since the last report)" in caplog.records[-1].getMessage()
    assert len(caplog.records) == 3
