"""bridge.domain.forwarded: the client's address behind trusted reverse proxies (pure)."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.domain.forwarded import (
    FORWARDED,
    MAX_BYTES,
    MAX_HOPS,
    X_FORWARDED_FOR,
    client_address,
    client_from_forwarded,
    client_from_headers,
    network_problem,
    networks,
)

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


# -- RFC 7239 Forwarded ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("forwarded", "want"),
    [
        # RFC 7239 section 4's examples, each the only element, behind one trusted proxy
        (['for="_gazonk"'], "127.0.0.1"),  # obfuscated: names no address, the proxy it is
        (['For="[2001:db8:cafe::17]:4711"'], "2001:db8:cafe::17"),
        (["for=192.0.2.60;proto=http;by=203.0.113.43"], "192.0.2.60"),
        (["for=192.0.2.43, for=198.51.100.17"], "198.51.100.17"),
        # quoting, ports, case, whitespace
        (['for="192.0.2.60:4711"'], "192.0.2.60"),
        (['for="192.0.2.60:_port"'], "192.0.2.60"),  # an obfuscated port
        (['for="[2001:db8::1]"'], "2001:db8::1"),
        (['FOR = "198.51.100.9" ; proto=https'], "198.51.100.9"),
        (['for="\\198.51.100.9"'], "198.51.100.9"),  # quoted-pair
        (['for="2001:db8::9"'], "2001:db8::9"),  # IPv6 without its brackets, unambiguous
        # the walk, from the right
        (["for=6.6.6.6, for=198.51.100.9, for=10.0.0.2"], "198.51.100.9"),  # proxy chain
        (["for=6.6.6.6", "for=198.51.100.9;by=10.0.0.2"], "198.51.100.9"),  # two headers
        (["for=10.9.9.9, for=10.0.0.2"], "10.9.9.9"),  # every hop a proxy: the left-most
        (["for=198.51.100.9, for=unknown"], "127.0.0.1"),  # the proxy did not know: stop
        (["for=198.51.100.9, for=unknown, for=10.0.0.2"], "10.0.0.2"),
        (["for=198.51.100.9, for=_hidden, for=10.0.0.2"], "10.0.0.2"),
        (["for=198.51.100.9, proto=https"], "127.0.0.1"),  # an element without for=
        (["for=198.51.100.9;for=6.6.6.6"], "127.0.0.1"),  # for= twice in one element
        # malformed elements end the walk at the last trusted hop
        (["for=198.51.100.9:80"], "127.0.0.1"),  # a colon must be quoted
        (['for="[2001:db8::1]:http"'], "127.0.0.1"),  # no such port
        (['for="[2001:db8::1"'], "127.0.0.1"),
        (['for="198.51.100.9'], "127.0.0.1"),  # unterminated quote
        (["for=198.51.100.9 junk"], "127.0.0.1"),
        (["for=01.2.3.4"], "127.0.0.1"),  # leading zero: ambiguous, not an address
        (["for=[2001:db8::1]"], "127.0.0.1"),  # brackets are no token: must be quoted
        # a client's garbage on the left cannot hide the hop the proxy appended
        (['for="6.6.6.6, for=198.51.100.9'], "198.51.100.9"),
        (['for="6.6.6.6;x="a,b", for=198.51.100.9'], "198.51.100.9"),
        (["", " , ,"], "127.0.0.1"),
        ([], "127.0.0.1"),
    ],
)
def test_client_from_forwarded(forwarded: list[str], want: str) -> None:
    assert client_from_forwarded("127.0.0.1", forwarded, TRUSTED) == want


def test_forwarded_from_an_untrusted_peer_is_ignored() -> None:
    assert client_from_forwarded("192.0.2.9", ["for=198.51.100.1"], TRUSTED) == "192.0.2.9"
    assert client_from_forwarded("127.0.0.1", ["for=198.51.100.1"], ()) == "127.0.0.1"
    assert client_from_forwarded(None, ["for=198.51.100.1"], TRUSTED) is None


@pytest.mark.parametrize(
    ("header", "values", "want"),
    [
        (X_FORWARDED_FOR, ["198.51.100.1"], "198.51.100.1"),
        (X_FORWARDED_FOR, ["for=198.51.100.1"], "127.0.0.1"),  # not an X-Forwarded-For entry
        (FORWARDED, ["for=198.51.100.1"], "198.51.100.1"),
        (FORWARDED, ["198.51.100.1"], "127.0.0.1"),  # not a Forwarded element
    ],
)
def test_client_from_headers_reads_the_header_configured(
    header: str, values: list[str], want: str
) -> None:
    assert client_from_headers("127.0.0.1", values, header, TRUSTED) == want


# Hypothesis: a chain of proxies, each appending the peer it saw, after whatever the client wrote.

_untrusted_v4 = st.ip_addresses(v=4).filter(lambda a: not any(a in n for n in TRUSTED))
_untrusted_v6 = st.ip_addresses(v=6).filter(
    lambda a: a.ipv4_mapped is None and not any(a in n for n in TRUSTED)
)
_trusted_hops = st.lists(
    st.sampled_from(["127.0.0.1", "10.0.0.2", "10.200.3.4", "2001:db8::5"]), max_size=3
)
_junk = st.text(alphabet=st.sampled_from([*'for=;,"[]:_ \t\\unknow1.2f', "\x00", "é"]))


def _node_of(addr: str) -> str:
    return f'"[{addr}]:4711"' if ":" in addr else addr


@settings(max_examples=400, deadline=None)
@given(
    client=st.one_of(_untrusted_v4, _untrusted_v6),
    proxies=_trusted_hops,
    claims=st.lists(_junk, max_size=3),
    same_line=st.booleans(),
)
def test_forwarded_never_believes_what_the_client_wrote(
    client: Any, proxies: list[str], claims: list[str], same_line: bool
) -> None:
    """The client writes any Forwarded headers it likes (claims); the first proxy appends the
    client's real address, each next one the proxy before it; the peer is the last proxy. The
    answer is the client's real address when its claims are headers of their own; appended to
    its own line (a proxy that extends the last header), at worst a proxy, never a claim."""
    chain = [str(client), *proxies]
    peer, appended = "127.0.0.1", [f"for={_node_of(a)}" for a in chain]
    values = (
        [*claims[:-1], ", ".join([claims[-1], *appended])]
        if same_line and claims
        else [
            *claims,
            ", ".join(appended),
        ]
    )
    got = client_from_forwarded(peer, values, TRUSTED)
    if same_line and claims:
        assert got in {str(client), peer, *proxies}
    else:
        assert got == str(client)


@settings(max_examples=400, deadline=None)
@given(values=st.lists(st.text(), max_size=4), peer=st.sampled_from(["127.0.0.1", "2001:db8::1"]))
def test_forwarded_parsing_never_raises(values: list[str], peer: str) -> None:
    got = client_from_forwarded(peer, values, TRUSTED)
    assert got is not None
    ipaddress.ip_address(got)  # always an address: the peer's or one a hop named


# -- the bounds: MAX_HOPS hops, the right-most MAX_BYTES characters ------------------------------


def _proxies(n: int) -> list[str]:
    return [f"10.0.{i // 250}.{i % 250 + 1}" for i in range(n)]


@settings(max_examples=200, deadline=None)
@given(
    client=st.one_of(_untrusted_v4, _untrusted_v6),
    n=st.integers(min_value=0, max_value=3 * MAX_HOPS),
    header=st.sampled_from([X_FORWARDED_FOR, FORWARDED]),
    split=st.booleans(),
)
def test_a_long_chain_of_trusted_proxies_is_walked_up_to_max_hops(
    client: Any, n: int, header: str, split: bool
) -> None:
    """A chain of n trusted proxies after the client's address (peer trusted): the client when
    its address is within MAX_HOPS hops of the right; past that, the last trusted hop the walk
    reached (the MAX_HOPS-th from the right), never an address further left, the client's to
    write. The same whether the proxies extend one header or each add their own."""
    chain = [str(client), *_proxies(n)]
    hops = [f"for={_node_of(a)}" if header == FORWARDED else a for a in chain]
    values = hops if split else [", ".join(hops)]
    got = client_from_headers("127.0.0.1", values, header, TRUSTED)
    assert got == (str(client) if n < MAX_HOPS else chain[n - MAX_HOPS + 1])


def test_six_hundred_trusted_hops_stop_at_the_thirtieth() -> None:
    """The case measured: ~600 trusted hops (8 KB) after a spoofed address were all walked."""
    assert MAX_HOPS == 30
    chain = ["198.51.100.1", *(f"10.0.{i // 250}.{i % 250 + 1}:443" for i in range(600))]
    xff = [", ".join(chain)]
    assert len(xff[0]) > 8000
    assert client_address("127.0.0.1", xff, TRUSTED) == chain[-MAX_HOPS].removesuffix(":443")


def _padded(left: str, right: str, total: int) -> str:
    """`left`, spaces, `right`: `total` characters (spaces are not hops)."""
    return left + " " * (total - len(left) - len(right)) + right


@pytest.mark.parametrize("header", [X_FORWARDED_FOR, FORWARDED])
def test_only_the_right_most_max_bytes_are_read(header: str) -> None:
    def hop(a: str) -> str:
        return f"for={a}" if header == FORWARDED else a

    right = ", " + hop("10.0.0.2")
    # The client's address past the bound: not read; the walk ends at the proxy.
    far = _padded(hop("198.51.100.1"), right, MAX_BYTES + 50)
    assert client_from_headers("127.0.0.1", [far], header, TRUSTED) == "10.0.0.2"
    # Cut inside an entry: its right part (1.2.3.4 of 11.2.3.4) is not taken for an address.
    kept = hop("1.2.3.4")
    cut = _padded(("x" if header == FORWARDED else "1") + kept, right, MAX_BYTES + 1)
    assert cut[-MAX_BYTES:].startswith(kept)
    assert client_from_headers("127.0.0.1", [cut], header, TRUSTED) == "10.0.0.2"
    # Exactly at the bound, and the bound at a comma: the entry is whole and read.
    whole = _padded(hop("11.2.3.4"), right, MAX_BYTES)
    assert client_from_headers("127.0.0.1", [whole], header, TRUSTED) == "11.2.3.4"
    at_comma = "9.9.9.9," + whole
    assert client_from_headers("127.0.0.1", [at_comma], header, TRUSTED) == "11.2.3.4"
    # Over several headers: the bound counts them all, right-most first (one separator each).
    tail = _padded("", hop("10.0.0.3"), MAX_BYTES - len(hop("11.2.3.4")) - 1)
    values = [hop("11.2.3.4"), tail]
    assert client_from_headers("127.0.0.1", values, header, TRUSTED) == "11.2.3.4"
    values = [hop("111.2.3.4"), tail]  # one character more: cut, not read
    assert client_from_headers("127.0.0.1", values, header, TRUSTED) == "10.0.0.3"
    values = [hop("198.51.100.1"), "x" * MAX_BYTES, tail]  # nothing left for the first
    assert client_from_headers("127.0.0.1", values, header, TRUSTED) == "10.0.0.3"
