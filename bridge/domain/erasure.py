"""A stored idempotent answer as erasing a number leaves it: pure, for reads during a masking.

Why: on SQLite an erasure masks the account's stored answers in chunks (sqlite_erase), so for
a while some still name the number. A replay (or a duplicate check) of one of those answers it
as the masking will leave it: this function. It must give exactly the bytes the chunk's SQL
(sqlite_erase.mask_range) gives, or a retry is answered one way before the chunk and another
after: SQLite's `json_set` writes the whole document again, compact, every string and number
token as it was written (escapes and all), keys matched as written; so does this.

The domain is what the bridge stores: JSON objects whose `messages` entries are objects (a
non-object entry other than null is rewritten by SQLite's json_each as an SQL value, which this
does not copy), or any other bytes (touched by the plain replace only).
"""

from __future__ import annotations

import json
import re

_WS = re.compile(r"[ \t\n\r]*")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_SCALAR = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|true|false|null")


class _Obj(list):  # [[raw key, node], ...]; an array is a plain list, a scalar its raw text
    pass


def _node(s: str, i: int) -> tuple[object, int]:
    """The value at `s[i]` of a text already known to be valid JSON, its tokens kept raw."""
    ch = s[i]
    if ch in "{[":
        out: list = _Obj() if ch == "{" else []
        close = "}" if ch == "{" else "]"
        i = _WS.match(s, i + 1).end()  # type: ignore[union-attr]
        if s[i] == close:
            return out, i + 1
        while True:
            if ch == "{":
                key = _STRING.match(s, i).group()  # type: ignore[union-attr]
                i = _WS.match(s, i + len(key)).end() + 1  # type: ignore[union-attr]
                i = _WS.match(s, i).end()  # type: ignore[union-attr]
                value, i = _node(s, i)
                out.append([key, value])
            else:
                value, i = _node(s, i)
                out.append(value)
            i = _WS.match(s, i).end()  # type: ignore[union-attr]
            if s[i] == close:
                return out, i + 1
            i = _WS.match(s, i + 1).end()  # type: ignore[union-attr]
    token = (_STRING if ch == '"' else _SCALAR).match(s, i).group()  # type: ignore[union-attr]
    return token, i + len(token)


def _render(node: object) -> str:
    if isinstance(node, _Obj):
        return "{" + ",".join(f"{k}:{_render(v)}" for k, v in node) + "}"
    if isinstance(node, list):
        return "[" + ",".join(_render(v) for v in node) + "]"
    return str(node)


def _first(obj: _Obj, key: str) -> list | None:
    """The first pair whose key is written `key` (SQLite's paths match keys as written)."""
    return next((pair for pair in obj if pair[0] == key), None)


def _is(pair: list | None, number: str) -> bool:
    """json_extract(entry, '$.to') = number: a string value, compared decoded."""
    if pair is None or not isinstance(pair[1], str) or not pair[1].startswith('"'):
        return False
    return bool(json.loads(pair[1]) == number)


def _valid(text: str) -> bool:
    """json_valid: RFC 8259 (no NaN or Infinity, no raw control characters in strings)."""

    def refuse(_name: str) -> None:
        raise ValueError("not RFC 8259")

    try:
        json.loads(text, parse_constant=refuse)
    except (ValueError, RecursionError):
        return False
    return True


def masked_answer(response: bytes, number: str, masked: str) -> bytes:
    """`response` as the erasure of `number` (shown as `masked`) leaves a stored answer:
    `client_ref` set to null in each `messages` entry whose `to` is the number (it links the
    message to the person, as the message row's does), then the number masked wherever it is a
    whole JSON string (a longer number starting with it is left)."""
    needle = f'"{number}"'
    text = response.decode("utf-8", "surrogateescape")
    if needle not in text:
        return response
    if _valid(text):
        doc, _end = _node(text, _WS.match(text).end())  # type: ignore[union-attr]
        messages = _first(doc, '"messages"') if isinstance(doc, _Obj) else None
        # json_type 'array', of objects, arrays and nulls only (sqlite_erase._REFS)
        if (
            messages is not None
            and type(messages[1]) is list
            and all(isinstance(e, list) or e == "null" for e in messages[1])
        ):
            for entry in messages[1]:
                if isinstance(entry, _Obj) and _is(_first(entry, '"to"'), number):
                    ref = _first(entry, '"client_ref"')
                    if ref is None:
                        entry.append(['"client_ref"', "null"])
                    else:
                        ref[1] = "null"
            text = _render(doc)
    return text.replace(needle, f'"{masked}"').encode("utf-8", "surrogateescape")
