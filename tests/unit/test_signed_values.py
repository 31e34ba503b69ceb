"""signing.signed_values (session 53): the signed headers' values read by name from the request's
own multidict, with the refusals of lower_headers + check_signed_headers, in their order."""

from __future__ import annotations

import itertools

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from bridge.api import signing
from bridge.api.signing import AuthHeader, SignatureError

NAMES = ("content-type", "host", "idempotency-key", "x-bridge-content-sha256", "x-bridge-date",
         "x-bridge-nonce")  # fmt: skip
SENT = [
    ("Host", "h:1"),
    ("Content-Type", " application/json "),
    ("idempotency-key", "k1"),
    ("X-BRIDGE-DATE", "2026-11-29T08:00:00Z"),
    ("X-Bridge-Nonce", "n" * 20),
    ("X-Bridge-Content-SHA256", "a" * 64),
    ("X-Other", "o"),
]


def _old(auth: AuthHeader, headers: CIMultiDictProxy[str]) -> dict[str, str]:
    lowered = signing.lower_headers(headers)
    signing.check_signed_headers(auth, lowered)
    return {name: lowered[name] for name in auth.signed_headers}


def _outcome(fn, auth, headers):  # type: ignore[no-untyped-def]
    try:
        return fn(auth, headers)
    except SignatureError as exc:
        return (exc.code, exc.message)


CASES = [
    SENT,
    [*SENT, ("X-Bridge-Nonce", " second ")],  # sent twice: joined with ","
    [*SENT, ("content-type", "text/plain")],
    [h for h in SENT if h[0] != "Host"],  # a signed one absent
    [h for h in SENT if h[0] not in ("Host", "X-Bridge-Nonce")],  # the first absent named
]
SIGNED = [
    NAMES,
    tuple(n for n in NAMES if n != "idempotency-key"),  # sent, unsigned
    tuple(n for n in NAMES if n != "x-bridge-date"),  # a required one unsigned
    tuple(sorted((*NAMES, "x-other"))),
    tuple(sorted((*NAMES, "x-absent"))),
]


@pytest.mark.parametrize(("sent", "signed"), list(itertools.product(CASES, SIGNED)))
def test_same_values_and_refusals_as_lowering_every_header(
    sent: list[tuple[str, str]], signed: tuple[str, ...]
) -> None:
    headers = CIMultiDictProxy(CIMultiDict(sent))
    auth = AuthHeader("k", signed, "f" * 64)
    old = _outcome(_old, auth, headers)
    new = _outcome(lambda a, h: signing.signed_values(a, h)[0], auth, headers)
    assert new == old


def test_once_says_whether_a_signed_header_was_repeated() -> None:
    auth = AuthHeader("k", NAMES, "f" * 64)
    values, once = signing.signed_values(auth, CIMultiDictProxy(CIMultiDict(SENT)))
    assert once and values["x-bridge-nonce"] == "n" * 20
    twice = CIMultiDictProxy(CIMultiDict([*SENT, ("X-Bridge-Date", "x")]))
    values, once = signing.signed_values(auth, twice)
    assert not once and values["x-bridge-date"] == "2026-11-29T08:00:00Z,x"
    unsigned_twice = CIMultiDictProxy(CIMultiDict([*SENT, ("X-Other", "p")]))
    assert signing.signed_values(auth, unsigned_twice)[1]
