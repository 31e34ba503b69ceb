"""JSON in and out of the HTTP faces and the webhook bodies, through orjson.

Why orjson: on the accept path the standard library spent more time parsing the request, checking
it for lone surrogates (a second full serialisation) and writing the answer than the database
spent storing the message. orjson does all three in C, refuses lone surrogates, NaN/Infinity and
numbers that overflow a double while parsing (so one pass both parses and validates), and caps
nesting at 1,024 levels instead of raising RecursionError.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

DecodeError = orjson.JSONDecodeError  # a ValueError


def loads(data: bytes | str) -> Any:
    """Parse JSON; DecodeError (a ValueError) names what is wrong and where."""
    return orjson.loads(data)


def has_nul(value: Any) -> bool:
    """Whether a parsed JSON value holds U+0000 in any string, key or value.

    JSON allows "\\u0000", but no PostgreSQL text column holds it (a 500 there), SQLite stores it
    and CDRs echo it raw: every face refuses it at the door instead.
    """
    # An explicit stack, not recursion: two frames per level (the function and its any()) ran
    # out of Python's stack from ~330 levels, well inside orjson's 1,024, and a nested body
    # holding a NUL was a 500 with a traceback instead of INVALID_JSON.
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if "\x00" in v:
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def dumps(data: Any) -> bytes:
    """Compact UTF-8 JSON. A document holding a lone surrogate (say, an echoed query parameter
    name in an error message) cannot be UTF-8: it falls back to \\u escapes instead of failing;
    a type orjson does not serialise (a non-string key) falls back to the standard library."""
    try:
        return orjson.dumps(data)
    except TypeError:  # orjson.JSONEncodeError subclasses TypeError
        try:
            return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
        except UnicodeEncodeError:
            return json.dumps(data, ensure_ascii=True, separators=(",", ":")).encode()
