"""Session 55 review: the signing caches keep only short request lines.

`signing._canonical_frame` (session 55, an lru_cache) cached the canonical request's frame per
(method, path, query, list), and `signing.canonical_uri` each path it canonicalised, whatever
their length. A request line may be `server.max_line_size` long (16 KiB by default, up to
1 MiB), and a new path or query each time kept each: up to 256 frames (the raw query and its
canonical form, a query or path of "!"s three times its length as "%21": ~64 KB each, ~16 MB at
the default line, ~1 GB at 1 MiB) and 4,096 URIs (~256 MB of such paths), for the life of the
process. Any request naming a known key id with a date within the skew reaches them, its
signature not yet checked. A client's usual request (a short path, no query or a short one) is
still answered from the caches.

`test_long_request_lines_are_not_kept` fails on the tree before."""

from __future__ import annotations

import gc
import random
import tracemalloc

from bridge.api import signing

_NAMES = ("host", "x-bridge-content-sha256", "x-bridge-date", "x-bridge-nonce")
_LOWERED = {name: f"value of {name}" for name in _NAMES}
_SHA = "ab" * 32


def _canonical(method: str, path: str, query: str) -> str:
    return signing._canonical(method, path, query, _LOWERED, _NAMES, _SHA, names_canonical=True)


def _held_after(requests: int, make: object) -> int:
    """Octets still allocated after `requests` canonical requests of `make(i)`'s path and
    query, each built and dropped."""
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(requests):
            path, query = make(i)  # type: ignore[operator]
            _canonical("GET", path, query)
            del path, query
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def test_long_request_lines_are_not_kept() -> None:
    rnd = random.Random(55)
    to = "&".join(f"to=%2B86138{rnd.randrange(10**8):08d}" for _ in range(700))

    def numbers(i: int) -> tuple[str, str]:  # a ~14 KB query of numbers, a new one each
        return "/v1/messages", f"page={i}&{to}"

    def bangs(i: int) -> tuple[str, str]:  # a path of "!"s: its canonical form 3x as long
        return f"/v1/messages/{i}" + "!" * 8000, ""

    held = _held_after(80, numbers) + _held_after(80, bangs)
    # Before: ~2.2 MB for the queries, ~5 MB more for the paths (the two caches).
    assert held < 1_000_000, f"{held:,} octets kept after 160 long requests"


def test_the_usual_request_is_still_answered_from_the_cache() -> None:
    path = f"/v1/messages/m_{random.randrange(10**9)}"
    first = _canonical("POST", path, "")
    # (head, pieces, tail, values' getter, builder) since session 57: the text around the values.
    head, pieces, tail, _, _ = signing._FRAMES[("POST", path, "", _NAMES)]
    assert (head, pieces, tail) == (
        f"POST\n{path}\n\n",
        tuple(f"{n}:" if i == 0 else f"\n{n}:" for i, n in enumerate(_NAMES)),
        f"\n\n{';'.join(_NAMES)}\n",
    )
    assert _canonical("POST", path, "") == first


def test_a_long_request_line_signs_as_a_short_one_would() -> None:
    """The frame built without the caches is the cached one's: the stated formula."""
    path = "/v1/messages/" + "a%7E~!" * 400
    query = "b=" + "x%20y+" * 400 + "&a=1"
    lines = "".join(f"{n}:{_LOWERED[n]}\n" for n in _NAMES)
    want = "\n".join(
        ["GET", signing.canonical_uri(path), signing.canonical_query(query), lines,
         ";".join(_NAMES), _SHA]
    )  # fmt: skip
    assert _canonical("get", path, query) == want
    assert signing.canonical_uri(path) == signing.canonical_uri(path[:13]) + ("a~~%21" * 400)
