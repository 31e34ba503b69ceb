"""bridge/jsonio.py: the repeated-key check every face runs on request bodies.

Random JSON texts (objects as lists of pairs, so a key can repeat at any depth; keys and strings
with colons, quotes, backslashes and non-ASCII; colons written raw, as \\u003a or \\u003A; random
white space) against a reference read of the same tree: the fast counts never pass a text with a
repeat, and the answer (the key and its path) is the repeat earliest in the text.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge import jsonio
from bridge.jsonio import (
    DuplicateKeyError,
    check_unique,
    count_keys,
    find_duplicate,
    loads_unique,
    render_path,
)

# A tree: ("obj", [(key, tree), ...]) | ("arr", [tree, ...]) | ("str", s) | ("lit", json text)
_CHARS = st.sampled_from([*'ab:: "\\{}[],ü日\n\x01/', "\U0001f600"])
_KEYS = st.sampled_from(["a", "b", "to", ":", "a:b", "", "ü", '"', "\\", "a b"]) | st.text(
    _CHARS, max_size=4
)
_LITS = st.sampled_from(["true", "false", "null", "0", "-1", "1.5e3", "-0.25", "12345678901"])
_LEAF = st.text(_CHARS, max_size=6).map(lambda s: ("str", s)) | _LITS.map(lambda t: ("lit", t))


def _trees(unique: bool) -> st.SearchStrategy[Any]:
    """Trees; `unique`: no object repeats a key (they still hold colons and escapes)."""
    by_key = (lambda p: p[0]) if unique else None
    return st.recursive(
        _LEAF,
        lambda inner: (
            st.lists(inner, max_size=4).map(lambda v: ("arr", v))
            | st.lists(st.tuples(_KEYS, inner), max_size=5, unique_by=by_key).map(
                lambda v: ("obj", v)
            )
        ),
        max_leaves=25,
    )


def _string(draw: st.DrawFn, s: str) -> str:
    """A JSON string literal of s, each character written raw or escaped at random."""
    out = ['"']
    for ch in s:
        how = draw(st.integers(0, 3))
        if ch in '"\\' or ord(ch) < 0x20 or how == 1:
            out.append(f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else json.dumps(ch)[1:-1])
        elif how == 2 and ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out) + '"'


def _render(draw: st.DrawFn, tree: Any) -> str:
    ws = st.sampled_from(["", "", " ", "\n", "\t", "\r\n "])
    kind, body = tree
    if kind == "str":
        return _string(draw, body)
    if kind == "lit":
        return body
    if kind == "arr":
        items = [draw(ws) + _render(draw, t) + draw(ws) for t in body]
        return "[" + ",".join(items) + draw(ws) + "]"
    members = [
        draw(ws) + _string(draw, k) + draw(ws) + ":" + draw(ws) + _render(draw, t) + draw(ws)
        for k, t in body
    ]
    return "{" + ",".join(members) + draw(ws) + "}"


@st.composite
def _documents(draw: st.DrawFn, unique: bool = False) -> tuple[Any, str]:
    tree = draw(_trees(unique))
    return tree, draw(st.sampled_from(["", " ", "\n"])) + _render(draw, tree)


def _first_repeat(tree: Any, path: tuple[Any, ...] = ()) -> tuple[str, tuple[Any, ...]] | None:
    """The reference answer: in text order, a key is read before its value."""
    kind, body = tree
    if kind == "arr":
        for i, t in enumerate(body):
            found = _first_repeat(t, (*path, i))
            if found:
                return found
    elif kind == "obj":
        seen: set[str] = set()
        for k, t in body:
            if k in seen:
                return k, (*path, k)
            seen.add(k)
            found = _first_repeat(t, (*path, k))
            if found:
                return found
    return None


def _stdlib_repeats(text: str) -> bool:
    """A second reference: the standard library's hook sees every object's pairs."""
    repeats = False

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal repeats
        repeats = repeats or len({k for k, _ in pairs}) != len(pairs)
        return dict(pairs)

    json.loads(text, object_pairs_hook=hook)
    return repeats


def _fast_passes(raw: bytes | str, value: Any) -> bool:
    """What check_unique's two counts say without scanning: True = 'no repeat'."""
    colon, brace = (b":", b"{") if isinstance(raw, bytes) else (":", "{")
    colons = raw.count(colon)  # type: ignore[arg-type]
    if count_keys(value, raw.count(brace)) == colons:  # type: ignore[arg-type]
        return True
    try:
        return orjson.dumps(value).count(b":") == colons + jsonio._escaped_colons(raw)
    except TypeError:
        return False


def _check(raw: bytes | str, value: Any, tree: Any) -> None:
    expected = _first_repeat(tree)
    text = raw.decode() if isinstance(raw, bytes) else raw
    assert _stdlib_repeats(text) == (expected is not None)
    assert find_duplicate(raw) == expected
    if expected is not None:
        assert not _fast_passes(raw, value), "the fast counts passed a repeated key"
    # the objects bound only ends the walk early, never changes the count
    assert count_keys(value, raw.count(b"{" if isinstance(raw, bytes) else "{")) == count_keys(  # type: ignore[arg-type]
        value
    )
    if expected is None:
        check_unique(raw, value)
    else:
        with pytest.raises(DuplicateKeyError) as err:
            check_unique(raw, value)
        assert (err.value.key, err.value.path) == expected


# 300 and 200 examples (1000 and 600 until session 54): under CI's fixed seed, each of four
# defects planted in bridge/jsonio.py that 1000 found (an empty object counted as a key, array
# indexes stepped by 2, only lower-case escaped colons counted, escaped keys not decoded) was
# found by 150 already; a fifth (an over-counted escape) was found by neither.
@settings(max_examples=300, deadline=None)
@given(_documents())
def test_bytes_through_orjson_agree_with_the_reference(doc: tuple[Any, str]) -> None:
    tree, text = doc
    raw = text.encode()
    _check(raw, orjson.loads(raw), tree)


@settings(max_examples=200, deadline=None)
@given(_documents())
def test_text_through_the_standard_library_agrees_with_the_reference(
    doc: tuple[Any, str],
) -> None:
    """The Alibaba face parses its JSON parameters (already text) with the standard library."""
    tree, text = doc
    _check(text, json.loads(text), tree)


@settings(max_examples=200, deadline=None)
@given(_documents(unique=True))
def test_texts_without_repeats_are_accepted_colons_and_escapes_included(
    doc: tuple[Any, str],
) -> None:
    tree, text = doc
    assert _first_repeat(tree) is None
    raw = text.encode()
    assert loads_unique(raw) == orjson.loads(raw)
    if "\\\\u003" not in text.lower():
        # the counts alone pass it (escaped colons included), the scan is never needed; only a
        # backslash written before "u003a" looks like an escaped colon and costs the scan
        assert _fast_passes(raw, orjson.loads(raw))


def test_the_counts_pass_common_bodies_without_scanning(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_scan(raw: Any) -> None:
        raise AssertionError("scanned")

    monkeypatch.setattr(jsonio, "find_duplicate", no_scan)
    for body in (
        b'{"to":"+8613800000000","text":"Your verification code is 123456."}',
        b'{"to":"+8613800000000","text":"Code: 1234, valid until 10:30 https://a.example/x"}',
        b'{"to":["+8613800000000","+8613800000001"],"template":"SMS_1","params":{"t":"1:2"}}',
        '{"text": "\u65e5\u672c: \u8a9e", "k": {"a:b": [1, {"c": ":"}]}}'.encode(),
        # colons escaped, as some encoders write them, and one raw
        b'{"text":"\\u003a\\u003A in a: text","ref":{"\\u003a":"x"}}',
        b"[]",
        b'"a:b"',
    ):
        loads_unique(body)


def test_a_backslash_before_u003a_is_scanned_and_accepted() -> None:
    """`\\\\u003a` is a backslash and the letters u003a, no colon: counted as an escaped one,
    the counts differ, and the scan finds no repeat."""
    body = b'{"t":"\\\\u003a: x","u":1}'
    assert orjson.loads(body)["t"] == "\\u003a: x"
    assert loads_unique(body) == orjson.loads(body)
    with pytest.raises(DuplicateKeyError):
        loads_unique(b'{"t":"\\\\u003a","t":"\\u003a:"}')


@pytest.mark.parametrize(
    ("body", "key", "where"),
    [
        (b'{"to":"+8613800000001","to":"+8613800000002"}', "to", "$.to"),
        (b'{"messages":[{},{},{},{"to":1,"to":2}]}', "to", "$.messages[3].to"),
        (b'{"a b":{"x":[{"k":1}, {"k":2, "k":3}]}}', "k", '$["a b"].x[1].k'),
        (b'{"t\\u0022":1,"t\\"":2}', 't"', '$["t\\""]'),
        # written differently, the same key once decoded
        (b'{"a:b":1,"a\\u003ab":2}', "a:b", '$["a:b"]'),
        # the first repeat in the text, not the outermost
        (b'{"x":{"y":1,"y":2},"x":0}', "y", "$.x.y"),
    ],
)
def test_the_repeat_is_named_with_its_path(body: bytes, key: str, where: str) -> None:
    with pytest.raises(DuplicateKeyError) as err:
        loads_unique(body)
    assert err.value.key == key
    assert err.value.where() == where
    assert str(err.value) == f"duplicate key {json.dumps(key)} at {where}"


def test_nesting_as_deep_as_orjson_takes() -> None:
    """1,024 levels: the standard library's parser would run out of recursion first."""
    body = b'{"k":' * 1023 + b'{"d":1,"d":2}' + b"}" * 1023
    with pytest.raises(DuplicateKeyError) as err:
        loads_unique(body)
    assert err.value.path == ("k",) * 1023 + ("d",)
    assert err.value.where().startswith("$…") and err.value.where().endswith(".k.k.d")
    assert len(err.value.where()) < 220
    assert loads_unique(b"[" * 1024 + b"]" * 1024) is not None


def test_a_message_echoes_a_long_key_or_a_lone_surrogate_bounded_and_as_utf8() -> None:
    key = "k" * 10_000
    with pytest.raises(DuplicateKeyError) as err:
        loads_unique(orjson.dumps({"a": 1})[:-1] + f',"{key}":1,"{key}":2}}'.encode())
    assert len(str(err.value)) < 300
    # the standard library lets a lone surrogate escape through (the Alibaba face's parameters)
    text = '{"\\ud800":1,"\\ud800":2}'
    with pytest.raises(DuplicateKeyError) as err:
        check_unique(text, json.loads(text))
    str(err.value).encode("utf-8")  # no UnicodeEncodeError
    assert "\\ud800" in str(err.value)


def test_integers_orjson_cannot_write_still_get_checked() -> None:
    """The standard library keeps integers past 64 bits, which orjson.dumps refuses."""
    text = '{"n": ' + "9" * 30 + ', "t": "a:b"}'
    check_unique(text, json.loads(text))
    text = '{"n": ' + "9" * 30 + ', "n": "a:b"}'
    with pytest.raises(DuplicateKeyError):
        check_unique(text, json.loads(text))


def test_render_path() -> None:
    assert render_path(()) == "$"
    assert render_path(("a", 0, "b_1"), "TemplateParamJson") == "TemplateParamJson.a[0].b_1"
    assert render_path(("1x", "", "é")) == '$["1x"][""]["é"]'
