"""JSON in and out of the HTTP faces and the webhook bodies, through orjson.

Why orjson: on the accept path the standard library spent more time parsing the request, checking
it for lone surrogates (a second full serialisation) and writing the answer than the database
spent storing the message. orjson does all three in C, refuses lone surrogates, NaN/Infinity and
numbers that overflow a double while parsing (so one pass both parses and validates), and caps
nesting at 1,024 levels instead of raising RecursionError.

Why request bodies are checked for repeated keys (`loads_unique`): orjson, like most parsers,
keeps the last of `{"to": "A", "to": "B"}` silently, while a WAF, a proxy or the customer's own
logging may read the first: one signed body read two ways is a request-smuggling hazard, and
dropping a value silently breaks the rule that bad input gets a clear refusal.
"""

from __future__ import annotations

import json
import re
from typing import Any

import orjson

DecodeError = orjson.JSONDecodeError  # a ValueError

__all__ = [
    "DecodeError",
    "DuplicateKeyError",
    "check_unique",
    "dumps",
    "find_duplicate",
    "has_nul",
    "loads",
    "loads_unique",
    "quote_key",
    "render_path",
]


def loads(data: bytes | str) -> Any:
    """Parse JSON; DecodeError (a ValueError) names what is wrong and where.

    A repeated key keeps its last value: for our own stored JSON. Request bodies go through
    `loads_unique`."""
    return orjson.loads(data)


def loads_unique(data: bytes | str) -> Any:
    """Parse a request body: as `loads`, and DuplicateKeyError (a ValueError too, so catch it
    first) when an object anywhere in it repeats a key."""
    value = orjson.loads(data)
    check_unique(data, value)
    return value


PathSegment = str | int


class DuplicateKeyError(ValueError):
    """An object of the document repeats `key`; `path` locates the repeat (its segments: object
    keys and array indexes from the top, the key last). The second occurrence earliest in the
    text is the one reported."""

    def __init__(self, key: str, path: tuple[PathSegment, ...]) -> None:
        self.key = key
        self.path = path
        super().__init__(self.described())

    def where(self, root: str = "$") -> str:
        """The JSON path of the repeat, under `root` (`$`, or the name of a form parameter)."""
        return render_path(self.path, root)

    def described(self, root: str = "$") -> str:
        """`duplicate key "k" at <path>`: what each face's message starts with."""
        return f"duplicate key {quote_key(self.key)} at {self.where(root)}"


# A message echoes a key and a path the client sent: bounded, whatever their size.
_KEY_SHOWN = 64
_PATH_SHOWN = 200
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def quote_key(key: str) -> str:
    """A key for a message: JSON-quoted, cut at 64 characters, a lone surrogate (the Alibaba
    face's parser lets `\\ud800` through) spelled as an escape so the answer stays UTF-8."""
    if len(key) > _KEY_SHOWN:
        key = key[:_KEY_SHOWN] + "…"
    text = json.dumps(key, ensure_ascii=False)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def render_path(path: tuple[PathSegment, ...], root: str = "$") -> str:
    """`$.messages[3].to`; a key that is not a plain name in brackets (`$["a b"]`). A long path
    keeps its end (where the repeat is) behind `…`."""
    parts: list[str] = []
    size = 0
    for seg in reversed(path):
        if isinstance(seg, int):
            part = f"[{seg}]"
        elif _NAME.fullmatch(seg) and len(seg) <= _KEY_SHOWN:
            part = "." + seg
        else:
            part = f"[{quote_key(seg)}]"
        if parts and size + len(part) > _PATH_SHOWN:
            parts.append("…")
            break
        parts.append(part)
        size += len(part)
    return root + "".join(reversed(parts))


def check_unique(raw: bytes | str, value: Any) -> None:
    """Raise DuplicateKeyError when `raw`, the JSON text `value` was parsed from, repeats a key
    in one of its objects.

    Cheap on the accept path, where bodies have none. A colon outside a string only ever
    separates an object member's key from its value, so `raw` holds one colon per member it
    spells plus the literal colons inside its strings; the parsed value has one key per member
    minus one per repeat (a repeat keeps one key, and drops the earlier value with every member
    nested in it). Hence:
    1. keys of the parsed value == colons in raw: no repeat (a repeat leaves fewer keys than
       colons, and colons inside strings only add to the raw count);
    2. otherwise the compact re-serialisation holds the parsed keys plus the colons of the
       parsed strings, those raw ones and those escaped (`\\u003a`) alike: without a repeat, raw's
       colons plus its escaped ones; with one, fewer (the earlier value is gone with its colons,
       and the escapes counted in raw are at least those it held). This passes bodies such as a
       text "code: 1234". A backslash written before "u003a" counts as an escape it is not: the
       counts then differ, and only cost the scan;
    3. otherwise (a repeat, or a value orjson cannot write, e.g. an integer past 64 bits from the
       standard library's parser) the text is scanned for the repeat.
    UTF-8 never uses the byte 0x3A inside a multi-byte character, so bytes and str count alike.
    """
    brace: Any
    if isinstance(raw, bytes):
        colons, brace = raw.count(b":"), b"{"
    else:
        colons, brace = raw.count(":"), "{"
    # One `{` and an object parsed: that object is the only one (a send without params). An
    # object's text holds a `{`; the one is told by a second `find` (memchr) failing, not by
    # `count`, which walks every byte of the body (~1,500 instructions of a 3-part UCS-2 send's
    # ~450, session 62); the objects are counted only when there are several.
    if type(value) is dict and raw.find(brace, raw.find(brace) + 1) == -1:
        keys = len(value)
    else:
        keys = count_keys(value, raw.count(brace))
    if colons == keys:
        return
    try:
        if orjson.dumps(value).count(b":") == colons + _escaped_colons(raw):
            return
    except TypeError:  # orjson.JSONEncodeError subclasses TypeError
        pass
    found = find_duplicate(raw)
    if found is not None:
        raise DuplicateKeyError(*found)


def _escaped_colons(raw: bytes | str) -> int:
    """How many times raw spells `\\u003a` (either case of hex digit: a colon escaped). A
    backslash is looked for first: one byte is found far faster than the pattern."""
    if isinstance(raw, bytes):
        return len(_ESCAPED_COLON_B.findall(raw)) if b"\\" in raw else 0
    return len(_ESCAPED_COLON_S.findall(raw)) if "\\" in raw else 0


_ESCAPED_COLON_B = re.compile(rb"\\u003[aA]")
_ESCAPED_COLON_S = re.compile(r"\\u003[aA]")


def count_keys(value: Any, objects: int | None = None) -> int:
    """The number of keys of every object in a parsed JSON value, nested ones included.

    `objects`: at most how many objects the value holds (the `{` of its text: each parsed object
    came from one), or None. Once that many are counted the walk stops, so the 1,000 numbers of a
    send's `to` are not looked at one by one. An explicit stack: orjson nests 1,024 levels.
    """
    if type(value) is not dict:
        if type(value) is not list:
            return 0
        objects_seen = 0
        dicts: list[dict[str, Any]] = []
        lists: list[list[Any]] = [value]
    else:
        objects_seen = 1
        dicts = [value]
        lists = []
    keys = 0
    limit = -1 if objects is None else objects
    while True:
        # Objects first: with `objects` given, they are what ends the walk early.
        if dicts:
            d = dicts.pop()
            keys += len(d)
            items: Any = d.values()
        elif objects_seen == limit or not lists:
            return keys
        else:
            items = lists.pop()
        for item in items:
            t = type(item)
            if t is dict:
                objects_seen += 1
                dicts.append(item)
            elif t is list:
                lists.append(item)


# The tokens of a JSON text that matter to find a repeated key: strings, brackets and commas
# (numbers, true, false and null fall between the matches).
_TOKENS_B = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\],]', re.DOTALL)
_TOKENS_S = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\],]', re.DOTALL)


def find_duplicate(raw: bytes | str) -> tuple[str, tuple[PathSegment, ...]] | None:
    """The first repeated key of a JSON text (the repeat earliest in the text) and its path, or
    None. `raw` must be text a JSON parser accepted (what it answers for anything else is
    meaningless).

    A scan of the tokens with an explicit stack, not `json.loads(object_pairs_hook=...)`: the
    standard library's parser recurses (RecursionError near 1,000 levels, orjson takes 1,024),
    its hook sees an object only once complete, with no idea where it is, and a scan can stop at
    the first repeat.
    """
    tokens = _TOKENS_B if isinstance(raw, bytes) else _TOKENS_S
    # One frame per open container: an object's [keys seen, last key, next string is a key],
    # an array's [index].
    frames: list[list[Any]] = []
    for match in tokens.finditer(raw):  # type: ignore[arg-type]
        tok = match.group()
        c = tok[0] if isinstance(tok, str) else chr(tok[0])
        if c == '"':
            top = frames[-1] if frames else None
            if top is None or len(top) == 1 or not top[2]:
                continue  # a value
            key = _key(tok)
            if key in top[0]:
                path = [f[1] if len(f) == 3 else f[0] for f in frames[:-1]]
                return key, (*path, key)
            top[0].add(key)
            top[1] = key
            top[2] = False
        elif c == "{":
            frames.append([set(), "", True])
        elif c == "[":
            frames.append([0])
        elif c == ",":
            if frames:
                top = frames[-1]
                if len(top) == 1:
                    top[0] += 1
                else:
                    top[2] = True
        elif frames:  # } or ]
            frames.pop()
    return None


def _key(token: bytes | str) -> str:
    """A key's string token, decoded (the standard library for escapes; it takes bytes too)."""
    if isinstance(token, bytes):
        return json.loads(token) if b"\\" in token else token[1:-1].decode("utf-8", "replace")
    return json.loads(token) if "\\" in token else token[1:-1]


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
