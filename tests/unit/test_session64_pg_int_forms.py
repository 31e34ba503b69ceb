"""Session 64: `int_array` writes up to 255 ints by one "%d" format kept by their count.

The literal must be the element-wise form's (session 56's, the reference below) for every
input, at every length the formats cover and past them (256 and more go by `int.__repr__` as
before), with the inputs "%d" refuses falling back, and the same kind of error where that form
raised (NaN, infinities, objects that are not numbers)."""

from __future__ import annotations

import decimal
import enum
import fractions
import math
import random
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from bridge.store import postgres_arrays
from bridge.store.postgres_arrays import int_array


def reference_int(values: Iterable[int | None]) -> str:
    """Session 56's int_array: element by element."""
    return "{" + ",".join(["NULL" if v is None else str(int(v)) for v in values]) + "}"


class Level(enum.IntEnum):
    A = 3


class Flag(enum.IntFlag):
    X = 4


class Lying(int):
    def __repr__(self) -> str:
        return "lie"

    __str__ = __repr__


def _outcome(f: Callable[[Any], str], values: Any) -> tuple[str, str]:
    try:
        return "ok", f(values)
    except Exception as exc:  # the same kind of error either way
        return "error", type(exc).__name__


ODD: list[Any] = [
    None, True, False, Level.A, Flag.X, Lying(7), 3.7, -2.5, 1e20, decimal.Decimal("9.9"),
    fractions.Fraction(7, 2), "5", 2**80, -(2**80), 10**40, 0, math.nan, math.inf, object(),
]  # fmt: skip


@pytest.mark.parametrize("seed", range(3))
def test_int_array_of_every_length_as_the_element_wise_form(seed: int) -> None:
    rnd = random.Random(seed)
    for n in [*range(0, 300), *rnd.sample(range(300, 2000), 5)]:
        times = [1_765_000_000_000 + rnd.randint(0, 10**9) for _ in range(n)]
        mixed = [rnd.choice([*ODD, rnd.randint(-(2**63), 2**63)]) for _ in range(n)]
        sane = [v for v in mixed if not (isinstance(v, float) and not math.isfinite(v))]
        sane = [v for v in sane if type(v) is not object]
        for values in (times, mixed, sane, [7] * n, [True] * n):
            for form in (list, tuple, iter):
                got = _outcome(int_array, form(values))
                assert got == _outcome(reference_int, form(values)), (n, values)


def test_the_formats_kept() -> None:
    forms = postgres_arrays._INT_FORMS
    assert len(forms) == postgres_arrays._INT_FORMS_N == 256
    for n in (0, 1, 2, 50, 255):
        assert forms[n] % tuple(range(n)) == reference_int(range(n))
