"""Session 55: the canonical request built around a cached frame (its method, URI and query lines
before the header lines, its SignedHeaders line after), and the HMAC copied from OpenSSL's own
keyed object. The canonical request equals the formula the README states, built plainly here,
for any method, path, query and header list, one frame cached per (method, path, query, list);
a signed header the request lacks is refused by its name (the first absent, in list order); and
a signature equals `hmac.new`'s for any secret and text.

`test_the_keyed_hmac_is_openssls_own` fails on the tree before (it copied `hmac.HMAC`)."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.api import signing

_NAMES = st.lists(
    st.sampled_from(
        ["content-type", "host", "idempotency-key", "x-bridge-content-sha256", "x-bridge-date",
         "x-bridge-nonce", "x-custom"]
    ),
    min_size=1,
    unique=True,
).map(sorted)  # fmt: skip
_VALUES = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
_PATHS = st.sampled_from(["/v1/messages", "/v1/messages/m_1", "/v1/a%2Fb", "", "/v1/~x/%7e"])
_QUERIES = st.sampled_from(["", "a=1", "b=2&a=1", "to=+86&x=%20", "a=1&&b="])
_METHODS = st.sampled_from(["POST", "GET", "delete", "Patch"])


def _plain(method: str, path: str, query: str, lowered: dict[str, str], names: list[str],
           sha: str) -> str:  # fmt: skip
    """The canonical request as the README states it, one line after another."""
    lines = "".join(f"{n}:{lowered[n]}\n" for n in names)
    return "\n".join(
        [method.upper(), signing.canonical_uri(path), signing.canonical_query(query), lines,
         ";".join(names), sha]
    )  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(_METHODS, _PATHS, _QUERIES, _NAMES, st.data())
def test_the_canonical_request_is_the_stated_formula(
    method: str, path: str, query: str, names: list[str], data: st.DataObject
) -> None:
    lowered = {n: data.draw(_VALUES) for n in names}
    sha = "ab" * 32
    want = _plain(method, path, query, lowered, names, sha)
    got = signing._canonical(method, path, query, lowered, tuple(names), sha, names_canonical=True)
    assert got == want
    # The names as a client may list them (any order, case, repeats): sorted and unique first.
    listed = [n.upper() for n in reversed(names)] + names[:1]
    assert signing._canonical(method, path, query, lowered, listed, sha) == want


def test_frames_of_two_queries_or_lists_are_not_confused() -> None:
    lowered = {"host": "h", "x-bridge-date": "d"}
    a = signing._canonical("GET", "/v1/x", "a=1", lowered, ("host",), "s", names_canonical=True)
    b = signing._canonical("GET", "/v1/x", "a=2", lowered, ("host",), "s", names_canonical=True)
    c = signing._canonical(
        "GET", "/v1/x", "a=1", lowered, ("host", "x-bridge-date"), "s", names_canonical=True
    )
    assert a == "GET\n/v1/x\na=1\nhost:h\n\nhost\ns"
    assert b == "GET\n/v1/x\na=2\nhost:h\n\nhost\ns"
    assert c == "GET\n/v1/x\na=1\nhost:h\nx-bridge-date:d\n\nhost;x-bridge-date\ns"


@pytest.mark.parametrize("canonical", [True, False])
def test_an_absent_signed_header_is_refused_by_its_name(canonical: bool) -> None:
    names = ("host", "idempotency-key", "x-bridge-date", "x-bridge-nonce")
    lowered = {"host": "h", "x-bridge-date": "d"}
    with pytest.raises(signing.SignatureError) as refused:
        signing._canonical("POST", "/v1/messages", "", lowered, names, "s",
                           names_canonical=canonical)  # fmt: skip
    assert refused.value.code == "SIGNATURE_MISMATCH"
    assert refused.value.message == (
        "header 'idempotency-key' is in SignedHeaders but absent from the request"
    )
    assert refused.value.__cause__ is None


def test_the_keyed_hmac_is_openssls_own() -> None:
    mac = hmac.new(b"k", digestmod=hashlib.sha256)
    inner = getattr(mac, "_hmac", None)
    if inner is None:
        pytest.skip("this Python's hmac does not use OpenSSL's HMAC")
    keyed = signing._keyed("a secret of this test")
    assert type(keyed) is type(inner)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=80), st.binary(max_size=80)), st.text(max_size=300))
def test_a_signature_is_hmac_sha256_of_the_text(secret: str | bytes, text: str) -> None:
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    want = hmac.new(key, text.encode("utf-8"), hashlib.sha256).hexdigest()
    assert signing.sign(secret, text) == want
    assert signing.sign(secret, text) == want  # the cached key is copied, never fed


# Session 57: the canonical request joined by a builder generated per number of headers (one
# f-string), or, past _CACHED_HEAD_NAMES names, by `_join_pieces`: the stated formula for
# every count from none to well past the cap, and a missing header still refused by name.
@pytest.mark.parametrize("count", [0, 1, 2, 6, 16, 17, 40])
def test_the_canonical_request_of_any_number_of_headers_is_the_formula(count: int) -> None:
    from bridge.api import signing

    names = tuple(sorted(f"x-h{i:02d}" for i in range(count)))
    lowered = {n: f"v{{{i}}}%s" for i, n in enumerate(names)}  # braces and % kept as text
    lines = "".join(f"{n}:{lowered[n]}\n" for n in names)
    want = "\n".join(["PUT", "/a%7Bb%7D", "", lines, ";".join(names), "s" * 64])
    for _ in range(2):  # built, then from the frames' cache
        got = signing._canonical("put", "/a{b}", "", lowered, names, "s" * 64, names_canonical=True)
        assert got == want
    if names:
        del lowered[names[-1]]
        with pytest.raises(signing.SignatureError, match=f"header '{names[-1]}' is in"):
            signing._canonical("put", "/a{b}", "", lowered, names, "s" * 64, names_canonical=True)
