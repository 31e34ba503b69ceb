"""Session 55 review: signed requests with long request lines over a real server are verified
and answered, and leave nothing in the signing caches (tests/unit/
test_session55_signing_cache_bound.py says why). Fails on the tree before: each request's
frame and path were kept."""

from __future__ import annotations

from typing import Any

from bridge.api import signing
from tests.integration.conftest import ApiServer

# The caches as this tree has them; on the tree before, the frames were an lru_cache
# (`_canonical_frame`) and so was `canonical_uri`.
_FRAMES: Any = getattr(signing, "_FRAMES", None)
_URIS: Any = getattr(signing, "_cached_uri", signing.canonical_uri)


def _frames() -> int:
    return len(_FRAMES) if _FRAMES is not None else signing._canonical_frame.cache_info().currsize  # type: ignore[attr-defined]


async def test_long_request_lines_are_verified_and_not_kept(api_server: ApiServer) -> None:
    creds = await api_server.create_account()
    padding = "&".join(f"x{n}=%2B8613800{n:05d}" for n in range(600))  # a ~13 KB query
    # Emptied first: full of other tests' entries, a cache keeps its size whatever it takes in.
    _FRAMES.clear() if _FRAMES is not None else signing._canonical_frame.cache_clear()  # type: ignore[attr-defined]
    _URIS.cache_clear()
    signing.canonical_uri("/v1/messages")  # a short path: cached, as before
    frames = _frames()
    uris = _URIS.cache_info().currsize
    for page in range(5):
        listed = await api_server.request(
            "GET", "/v1/messages", query=f"limit={page + 1}&{padding}", creds=creds
        )
        # Refused by the handler, after the signature checked (401 otherwise).
        assert listed.status == 400, listed.text
        assert listed.json["error"]["code"] == "UNKNOWN_FIELD"
        missing = await api_server.request(
            "GET", f"/v1/messages/m_{page}" + "!" * 3000, creds=creds, validate=False
        )
        assert missing.status == 404, missing.text
        assert missing.json["error"]["code"] == "NOT_FOUND"
    assert _frames() == frames
    assert _URIS.cache_info().currsize == uris
    # The usual request still fills the cache.
    assert (await api_server.request("GET", "/v1/account", creds=creds)).status == 200
    assert _frames() > frames
