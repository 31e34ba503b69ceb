"""Tariff counting: characters (non-BMP counts 2) and units = 1 if n <= 70 else ceil(n / 67)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.text.units import CountingRule, billable_units, tariff_chars

CHARS = CountingRule.CHARS_70_67


@pytest.mark.parametrize(
    ("text", "n"),
    [
        ("", 0),
        ("abc", 3),
        ("中文", 2),
        ("【Acme】", 6),
        ("😀", 2),
        ("a😀b", 4),
        ("𝄞中", 3),
        ("é€", 2),
    ],
)
def test_tariff_chars(text: str, n: int) -> None:
    assert tariff_chars(text) == n


@pytest.mark.parametrize(
    ("n", "units"),
    [
        (1, 1),
        (70, 1),
        (71, 2),
        (134, 2),
        (135, 3),
        (160, 3),
        (201, 3),
        (202, 4),
        (500, 8),
    ],
)
def test_chars_70_67_boundaries(n: int, units: int) -> None:
    assert billable_units("a" * n, CHARS, wire_segments=99) == units
    assert billable_units("中" * n, CHARS, wire_segments=99) == units


def test_emoji_counts_two_toward_units() -> None:
    assert billable_units("a" * 68 + "😀", CHARS, 1) == 1  # 70
    assert billable_units("a" * 69 + "😀", CHARS, 1) == 2  # 71
    assert billable_units("😀" * 67, CHARS, 1) == 2  # 134
    assert billable_units("😀" * 67 + "a", CHARS, 1) == 3  # 135


def test_wire_segments_rule() -> None:
    assert billable_units("a" * 500, CountingRule.WIRE_SEGMENTS, 4) == 4
    assert billable_units("x", "wire_segments", 1) == 1  # type: ignore[arg-type]
    assert billable_units("a" * 71, "chars_70_67", 1) == 2  # type: ignore[arg-type]


def test_unknown_rule() -> None:
    with pytest.raises(ValueError):
        billable_units("a", "per_byte", 1)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=700))
def test_formula_property(text: str) -> None:
    n = sum(2 if ord(c) > 0xFFFF else 1 for c in text)
    assert tariff_chars(text) == n
    assert billable_units(text, CHARS, 0) == (1 if n <= 70 else math.ceil(n / 67))
