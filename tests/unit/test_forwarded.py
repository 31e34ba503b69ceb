"""bridge.domain.forwarded: the client's address behind trusted reverse proxies (pure)."""

from __future__ import annotations

import pytest

from bridge.domain.forwarded import client_address, network_problem, networks

TRUSTED = networks(("127.0.0.1", "10.0.0.0/8", "2001:db8::/32"))


@pytest.mark.parametrize(
    ("peer", "xff", "want"),
    [
        ("127.0.0.1", ["198.51.100.1"], "198.51.100.1"),
        ("::ffff:127.0.0.1", ["198.51.100.1"], "198.51.100.1"),  # dual-stack listener
        ("192.0.2.9", ["198.51.100.1"], "192.0.2.9"),  # not a proxy: its header is its own word
        ("127.0.0.1", ["1.1.1.1,198.51.100.1 , 10.0.0.2"], "198.51.100.1"),
        ("127.0.0.1", ["1.1.1.1", "198.51.100.1:5555"], "198.51.100.1"),
        ("127.0.0.1", ["10.9.9.9, 10.0.0.2"], "10.9.9.9"),  # every hop a proxy: the left-most
        ("127.0.0.1", ["198.51.100.1, bogus, 10.0.0.2"], "10.0.0.2"),  # walk ends at garbage
        ("127.0.0.1", ["", " , "], "127.0.0.1"),
        ("2001:db8::1", ["[2001:db9::7]:443"], "2001:db9::7"),
        (None, ["198.51.100.1"], None),
    ],
)
def test_client_address(peer: str | None, xff: list[str], want: str | None) -> None:
    assert client_address(peer, xff, TRUSTED) == want


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert client_address("127.0.0.1", ["198.51.100.1"], ()) == "127.0.0.1"


@pytest.mark.parametrize("entry", ["10.0.0.0/8", "127.0.0.1", "::1", "2001:db8::/32"])
def test_good_entries(entry: str) -> None:
    assert network_problem(entry) is None


@pytest.mark.parametrize("entry", ["10.0.0.1/8", "nginx", "10.0.0.0/33", ""])
def test_bad_entries_are_named(entry: str) -> None:
    problem = network_problem(entry)
    assert problem is not None and repr(entry) in problem
