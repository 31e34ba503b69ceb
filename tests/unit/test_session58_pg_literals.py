"""Session 58: PostgreSQL array literals joined in C, and an accept's write statement kept.

- `text_array` joins the whole list at once when no element is None or holds a quote or a
  backslash, and `int_array` maps `int.__repr__` over ints: both must give the literal the
  element-wise form gives (session 56's, kept below as the reference) for every input, the
  inputs that fall back included, and raise where it raised.
- `Writes` keeps its placeholders, templates and joined CTEs: two accepts' statements of one
  shape are the same str object (asyncpg's statement cache, the literal-form cache and
  `_after_writes` then find it by a stored hash), and the text is the one built before.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from bridge.domain.ledger import Entry, EntryKind
from bridge.store import postgres_rules as rules_sql
from bridge.store.postgres_arrays import int_array, text_array


def _escaped(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"')


def reference_text(values: Iterable[str | None]) -> str:
    """Session 56's text_array: element by element."""
    return (
        "{"
        + ",".join(
            [
                "NULL" if v is None else '"' + (_escaped(v) if "\\" in v or '"' in v else v) + '"'
                for v in values
            ]
        )
        + "}"
    )


def reference_int(values: Iterable[int | None]) -> str:
    """Session 56's int_array."""
    return "{" + ",".join(["NULL" if v is None else str(int(v)) for v in values]) + "}"


class Level(enum.IntEnum):
    A = 3


class Name(str):
    pass


def _outcome(f: Callable[[Any], str], values: Any) -> tuple[str, str]:
    try:
        return "ok", f(values)
    except Exception as exc:  # the same kind of error either way
        return "error", type(exc).__name__


PIECES = ["a", '"', "\\", ",", "{", "}", " ", "NULL", "é", "汉", "", "'", '","', "\\N"]


@pytest.mark.parametrize("seed", range(4))
def test_text_array_as_the_element_wise_form(seed: int) -> None:
    rnd = random.Random(seed)
    for _ in range(5_000):
        values: list[Any] = []
        for _k in range(rnd.randint(0, 6)):
            r = rnd.random()
            if r < 0.08:
                values.append(None)
            elif r < 0.1:
                values.append(Name("x" + rnd.choice(PIECES)))
            elif r < 0.11:
                values.append(5)  # not a str: refused both ways
            else:
                values.append("".join(rnd.choice(PIECES) for _ in range(rnd.randint(0, 4))))
        for form in (list, tuple, iter):
            assert _outcome(text_array, form(values)) == _outcome(reference_text, form(values))
        if all(isinstance(v, str) for v in values):
            keys = dict.fromkeys(values)
            assert text_array(keys) == reference_text(dict.fromkeys(values))


def test_text_array_edges() -> None:
    assert text_array([]) == "{}"
    assert text_array([""]) == '{""}'
    assert text_array(["", ""]) == '{"",""}'
    assert text_array(['a","b']) == '{"a\\",\\"b"}'  # the separator inside an element
    assert text_array(["a", None]) == '{"a",NULL}'
    assert text_array(iter(["x", "y"])) == '{"x","y"}'


@pytest.mark.parametrize("seed", range(4))
def test_int_array_as_the_element_wise_form(seed: int) -> None:
    rnd = random.Random(seed)
    odd = [None, True, False, Level.A, 3.7, "5", "-5", "1,2", "x", -(2**63), 2**63 - 1, 0]
    for _ in range(5_000):
        k = rnd.randint(0, 6)
        if rnd.random() < 0.5:
            values: list[Any] = [rnd.randint(-(2**63), 2**63 - 1) for _ in range(k)]
        else:
            values = [rnd.choice([*odd, rnd.randint(-1000, 1000)]) for _ in range(k)]
        for form in (list, tuple, iter):
            assert _outcome(int_array, form(values)) == _outcome(reference_int, form(values))


def _accept_writes(account: str, amount: int) -> rules_sql.Writes:
    """An accept's writes as PostgresStore._accept_one adds them (26 message parameters, the
    day's count, one cash charge)."""
    w = rules_sql.Writes([None] * 26)
    w.add("INSERT INTO messages SELECT $1")
    entry = Entry(EntryKind.CHARGE, -amount, "cash", 1_700_000_000_000, "msg_1", None)
    plan = type("Plan", (), {"day": "2026-12-06", "entries": [("msg_1", entry)]})()
    rules_sql.add_plan(w, account, plan, 1)  # type: ignore[arg-type]
    return w


def test_writes_of_one_shape_are_one_statement_object() -> None:
    a, b = _accept_writes("acc1", 50_000), _accept_writes("acc2", 70_000)
    assert a.sql() is b.sql()  # before: equal texts, each built anew
    assert a.ctes() is b.ctes()
    assert a.args != b.args
    # The text itself, as built before (the placeholders numbered after the 26 given).
    sql = a.sql()
    assert sql.startswith(
        "WITH w0 AS (INSERT INTO messages SELECT $1),\nw1 AS (UPDATE daily_counts"
    )
    # Session 64: the charge's pocket names the ledger row's placeholders, its account
    # add_plan's (35 parameters, where 40 were sent).
    assert "$27" in sql and "$35" in sql and "$36" not in sql
    assert sql.endswith("\nSELECT 1")
    assert len(a.args) == 35


def test_writes_named_and_past_the_kept_placeholders() -> None:
    w = rules_sql.Writes([0] * 600)
    assert w.param(1) == "$601"
    named = w.add("SELECT 1", "a")
    assert named == "a"
    assert w.add("SELECT 2") == "w1"
    assert w.sql("SELECT 3") == "WITH a AS (SELECT 1),\nw1 AS (SELECT 2)\nSELECT 3"
