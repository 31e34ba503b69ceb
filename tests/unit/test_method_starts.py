"""Under aiohttp's Python parser, bytes between requests are refused as the C parser (llhttp)
refuses them as they come: at the first byte that continues no method llhttp knows. Session 50
checked only the bytes' characters, so a leftover of capitals (`ABC`, the rest of a body longer
than its Content-Length) waited for a line end until the idle time-out under the Python parser,
where the C parser refused it at once; a prefix of a method (`POS`) waits under both.

Each case is fed, after a whole request, to the C parser and to the Python one as the daemon
wraps it (bridge.api.http_errors._BodyFailingParser), and both must agree on refusing it."""

from __future__ import annotations

import asyncio
import itertools
import string
from collections.abc import Iterator
from unittest import mock

import pytest
from aiohttp import http_parser
from aiohttp.http_exceptions import HttpProcessingError

from bridge.api.http_errors import LLHTTP_METHODS, _BodyFailingParser

C_PARSER = getattr(http_parser, "HttpRequestParserC", None)
pytestmark = pytest.mark.skipif(C_PARSER is None, reason="aiohttp's C parser is not built here")

FIRST = b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
CAPITALS = string.ascii_uppercase.encode()
# Methods llhttp takes only with another protocol's version (RTSP/1.0; PRI: HTTP/2.0's preface):
# it refuses them with HTTP/1.1 at the version, a check of the whole line (the Python parser
# takes them, and the application answers), not of the method's bytes as they come.
NOT_WITH_HTTP = frozenset(
    {"PRI", "DESCRIBE", "ANNOUNCE", "SETUP", "PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER"}
    | {"SET_PARAMETER", "REDIRECT", "RECORD", "FLUSH"}
)
METHOD_BYTES = CAPITALS + b"-_"


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    lp = asyncio.new_event_loop()
    yield lp
    lp.close()


def _refused(parser: object, data: bytes) -> bool:
    try:
        parser.feed_data(data)  # type: ignore[attr-defined]
    except HttpProcessingError:
        return True
    return False


def _verdicts(loop: asyncio.AbstractEventLoop, rest: bytes) -> tuple[bool, bool]:
    """(C parser refused, Python parser as wrapped refused) of FIRST then `rest`, fed apart."""
    out = []
    for cls in (C_PARSER, http_parser.HttpRequestParserPy):
        inner = cls(mock.Mock(), loop, 2**16, max_line_size=8190, max_field_size=8190)
        parser = _BodyFailingParser(inner)
        assert not _refused(parser, FIRST)
        out.append(_refused(parser, rest))
    return out[0], out[1]


def _cases() -> Iterator[bytes]:
    for n in (1, 2):
        for t in itertools.product(METHOD_BYTES, repeat=n):
            yield bytes(t)
    for t in itertools.product(CAPITALS, repeat=3):
        yield bytes(t)
    for m in LLHTTP_METHODS:
        b = m.encode()
        for i in range(1, len(b) + 1):
            yield b[:i]
        for c in METHOD_BYTES:
            yield b + bytes([c])
        yield b + b" "
        if m not in NOT_WITH_HTTP:
            yield b + b" /healthz HTTP/1.1\r\nHost: x\r\n"  # its headers still coming
        yield b"\r\n" + b[:2]


def test_the_python_parser_refuses_what_the_c_parser_refuses_and_waits_where_it_waits(
    loop: asyncio.AbstractEventLoop,
) -> None:
    differ = []
    for rest in _cases():
        c, py = _verdicts(loop, rest)
        if c != py:
            differ.append((rest, c, py))
    assert differ == [], differ[:20]


@pytest.mark.parametrize("rest", [b"ABC", b"AB", b"HT", b"GETX", b"POSTS", b"FOO / HTTP/1.1\r\n"])
def test_a_leftover_no_method_starts_with_is_refused_at_once(
    loop: asyncio.AbstractEventLoop, rest: bytes
) -> None:
    assert _verdicts(loop, rest) == (True, True)


@pytest.mark.parametrize("rest", [b"POS", b"P", b"M-SE", b"GET_PARA", b"\r\nPU", b"QUERY"])
def test_a_start_of_a_method_waits_for_more(loop: asyncio.AbstractEventLoop, rest: bytes) -> None:
    assert _verdicts(loop, rest) == (False, False)
