"""bridge/jsonio.py: the NUL check every face runs on bodies that spell \\u0000."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from bridge.jsonio import has_nul

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=20,
)


def _any_nul(v: Any) -> bool:  # the obvious recursive reading, for small values
    if isinstance(v, str):
        return "\x00" in v
    if isinstance(v, dict):
        return any(_any_nul(k) or _any_nul(x) for k, x in v.items())
    if isinstance(v, list):
        return any(_any_nul(x) for x in v)
    return False


@given(_json)
def test_has_nul_finds_a_nul_in_any_string_key_or_value(value: Any) -> None:
    assert has_nul(value) == _any_nul(value)


def test_has_nul_handles_nesting_deeper_than_the_stack() -> None:
    """Recursive, ~330 levels ran out of stack (a 500 with a traceback, session 35)."""
    deep: Any = "\x00"
    for i in range(5_000):
        deep = [deep] if i % 2 else {"k": deep}
    assert has_nul(deep)
    clean: Any = "ok"
    for _ in range(5_000):
        clean = [clean]
    assert not has_nul(clean)
    assert has_nul({"a\x00": 1})  # keys too
