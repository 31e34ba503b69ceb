"""Session 56 review: the Authorization heads `signing._usual_head` keeps are bounded in size,
and so are the SignedHeaders lists `signing._signed_plan` keeps.

Session 56 (h5) sized the head cache by `server.account_cache` (10,000 by default; 256 before).
Its entries are made before any key is known, from whatever anyone sends: a head as long as a
header may be (8,190 characters) naming 2,000 three-letter headers held ~128 KB an entry, so
clients without a key could make each process hold ~1.3 GB at the default. Now only a value of
an SDK's size is looked up in it (at most `_CACHED_AUTH_CHARS` characters) and a list of more
than `_CACHED_HEAD_NAMES` names is not kept; any other goes to the strict parser, which gives
the same answer. `_signed_plan` (256 lists since session 51, ~250 KB each) keeps only those.

The first two tests fail on the merged tree (12.8 and 26.0 MB held for 100 heads); the others
hold what must not change.
"""

from __future__ import annotations

import gc
import itertools
import string
import tracemalloc
from collections.abc import Callable, Iterator

import pytest
from multidict import CIMultiDict

from bridge.api import signing

_SIG = "0" * 64


@pytest.fixture(autouse=True)
def _fresh_caches() -> Iterator[None]:
    """The process-wide caches emptied before, and back at their default after."""
    signing.set_key_cache(1000)
    signing.set_key_cache(signing.KEY_CACHE_DEFAULT)
    signing._signed_plan.cache_clear()
    yield
    signing.set_key_cache(1000)
    signing.set_key_cache(signing.KEY_CACHE_DEFAULT)


def _names(n: int, letters: int = 2) -> list[str]:
    """`n` distinct header names of `letters` letters, sorted (the usual form's list)."""
    combos = ("".join(p) for p in itertools.product(string.ascii_lowercase, repeat=letters))
    return list(itertools.islice(combos, n))


def _huge_head(i: int) -> str:
    """A usual-form Authorization as long as a header may be: 2,000 three-letter names, the
    first one `i`'s own (so is the key)."""
    return (
        f"{signing.ALGORITHM} Credential=key{i:05d},SignedHeaders=a{i:03d};"
        + ";".join(_names(2000, 3))
        + f",Signature={_SIG}"
    )


def _held_after(values: list[str], step: Callable[[str], None]) -> int:
    """Bytes still allocated after `step` ran on each value and the values were dropped: what
    the caches kept of them."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for v in values:
            step(v)
        del v
        values.clear()
        gc.collect()
        return int(tracemalloc.get_traced_memory()[0] - before)
    finally:
        tracemalloc.stop()


def test_heads_sent_without_a_key_hold_little() -> None:
    """100 distinct long heads, each parsed as a request's would be: what stays held after the
    values are dropped is the cache's. Merged tree: ~12 MB (~120 KB a head)."""
    values = [_huge_head(i) for i in range(100)]
    assert all(len(v) <= 8190 for v in values)

    def parse(v: str) -> None:
        assert signing.parse_authorization(v).app_key.startswith("key")

    held = _held_after(values, parse)
    assert held < 1_000_000, f"{held / 1e6:.1f} MB held for 100 heads"


def test_signed_header_lists_sent_without_a_key_hold_little() -> None:
    """The same heads through the signed-headers check, which runs before the key is looked up
    too (`_signed_plan`, 256 lists since session 51: ~250 KB each for 2,000 names). Merged tree:
    ~25 MB for 100."""

    def check(v: str) -> None:
        parsed = signing.parse_authorization(v)
        with pytest.raises(signing.SignatureError, match="must include 'host'"):
            signing.signed_values(parsed, CIMultiDict())

    held = _held_after([_huge_head(i) for i in range(100)], check)
    assert held < 1_000_000, f"{held / 1e6:.1f} MB held for 100 lists"


def test_an_sdks_head_is_still_parsed_once() -> None:
    value = (
        f"{signing.ALGORITHM} Credential={'k' * 128},SignedHeaders=content-type;host;"
        f"idempotency-key;x-bridge-content-sha256;x-bridge-date;x-bridge-nonce,Signature={_SIG}"
    )
    first = signing.parse_authorization(value)
    misses = signing._usual_head.cache_info().misses
    assert signing.parse_authorization(value) == first
    info = signing._usual_head.cache_info()
    assert info.misses == misses and info.currsize == 1
    # Its list's plan is kept too: asked again, a hit.
    signing._check_plan(first, {})
    plans = signing._signed_plan.cache_info()
    signing._check_plan(first, {})
    assert signing._signed_plan.cache_info().hits == plans.hits + 1


@pytest.mark.parametrize(
    "head",
    [
        "x" * 400,  # not the usual form, long
        "Credential=a,SignedHeaders=b",  # not the usual form, short
        f"{signing.ALGORITHM} Credential=k,SignedHeaders=" + ";".join(_names(40)),  # many names
        f"{signing.ALGORITHM} Credential=k,SignedHeaders=" + ";".join(_names(15)),
        f"{signing.ALGORITHM} Credential={'k' * 129},SignedHeaders=host",  # key too long
        f"{signing.ALGORITHM} Credential=k,SignedHeaders=" + ";".join(reversed(_names(20))),
        f"{signing.ALGORITHM} Credential=k,SignedHeaders=" + "a;" * 200 + "a",  # repeated
        f"{signing.ALGORITHM} Credential=k,SignedHeaders=host;x-bridge-date;" + "x" * 300,  # long
    ],
)
def test_every_head_answers_as_the_strict_parser_does(head: str) -> None:
    """Cached or not, the answer is the strict parser's (or its refusal)."""
    value = f"{head},Signature={_SIG}"

    def outcome(parse: object) -> object:
        try:
            return parse(value)  # type: ignore[operator]
        except signing.SignatureError as exc:
            return (exc.code, exc.message)

    assert outcome(signing.parse_authorization) == outcome(signing._parse_authorization_strictly)


@pytest.mark.parametrize(("names", "kept"), [(16, 1), (17, 0)])
def test_a_head_of_up_to_16_names_is_kept(names: int, kept: int) -> None:
    """Up to 16 names the head's parse is kept; past them the strict parser parses it (None is
    kept for the head, and its list's plan is not kept)."""
    head = f"{signing.ALGORITHM} Credential=k,SignedHeaders=" + ";".join(_names(names))
    parsed = signing.parse_authorization(f"{head},Signature={_SIG}")
    assert len(parsed.signed_headers) == names
    assert (signing._usual_head(head) is not None) == bool(kept)
    with pytest.raises(signing.SignatureError):
        signing._check_plan(parsed, {})
    assert signing._signed_plan.cache_info().currsize == kept


def test_a_value_longer_than_an_sdks_is_not_looked_up() -> None:
    head = f"{signing.ALGORITHM} Credential={'k' * 128},SignedHeaders=" + ";".join(_names(60))
    value = f"{head},Signature={_SIG}"
    assert len(value) > signing._CACHED_AUTH_CHARS
    assert signing.parse_authorization(value).app_key == "k" * 128
    assert signing._usual_head.cache_info().currsize == 0
