"""Session 58 review (r5): the literals of postgres_arrays' C-joined forms read back, on a real
PostgreSQL, as the same arrays asyncpg's own binary encoding of the same list gives.

Why: `text_array` now takes one `'","'.join` of the whole list when a scan finds no backslash
and no quote but the separators', and `int_array` maps `int.__repr__`; the unit tests hold them
to the element-wise form, this holds them to what the server reads. Random lists of hostile
pieces (quotes, backslashes, braces, commas, the word NULL, spaces and tabs at the ends,
non-ASCII, the empty string, NULL), str subclasses (a StrEnum, one whose __str__/__repr__ lie),
bools, IntEnums and bigint's bounds, each read as `$1::text::T[]` (the literal) and as `$1::T[]`
(asyncpg's binary array), directly and through unnest in order, as the statements read them.
"""

from __future__ import annotations

import enum
import random
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from bridge.store.postgres_arrays import int_array, text_array


class Kind(enum.StrEnum):
    CHARGE = "charge"
    ODD = 'a "b" \\c'


class Lying(str):
    """A str whose __str__ and __repr__ say something else: the server must get its text."""

    def __str__(self) -> str:
        return "lie"

    def __repr__(self) -> str:
        return "'lie'"


class Level(enum.IntEnum):
    LOW = 3
    NEG = -7


class LyingInt(int):
    def __repr__(self) -> str:
        return "lie"

    def __str__(self) -> str:
        return "lie"


PIECES = [
    "a", "Z9", '"', "\\", ",", "{", "}", " ", "\t", "\n", "NULL", "null", "é", "汉", "😀", "",
    "'", '","', "\\N", "\\x41", "(", ")", ";", "$1",
]  # fmt: skip


def _text(rnd: random.Random) -> Any:
    r = rnd.random()
    if r < 0.07:
        return None
    body = "".join(rnd.choice(PIECES) for _ in range(rnd.randint(0, 5)))
    if r < 0.1:
        return Lying(body)
    if r < 0.12:
        return rnd.choice(list(Kind))
    return body


def _int(rnd: random.Random) -> Any:
    r = rnd.random()
    if r < 0.07:
        return None
    if r < 0.1:
        return rnd.choice([True, False])
    if r < 0.13:
        return rnd.choice(list(Level))
    if r < 0.15:
        return LyingInt(rnd.randint(-(2**40), 2**40))
    if r < 0.2:
        return rnd.choice([0, -1, 2**63 - 1, -(2**63), 2**31, -(2**31) - 1])
    return rnd.randint(-(2**63), 2**63 - 1)


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(pg_dsn)
    yield c
    await c.close()


async def _same(c: asyncpg.Connection, pg: str, values: list[Any], literal: str) -> None:
    binary = await c.fetchval(f"SELECT $1::{pg}[]", values)
    read = await c.fetchval(f"SELECT $1::text::{pg}[]", literal)
    assert read == binary, (values, literal)
    rows = await c.fetch(
        f"SELECT x, x IS NULL FROM unnest($1::text::{pg}[]) WITH ORDINALITY AS u(x, o) ORDER BY o",
        literal,
    )
    assert [r[0] for r in rows] == binary
    assert [r[1] for r in rows] == [v is None for v in values]


@pytest.mark.parametrize("seed", range(3))
async def test_random_text_literals_read_as_asyncpgs_arrays(
    conn: asyncpg.Connection, seed: int
) -> None:
    rnd = random.Random(seed)
    fast = 0
    for _ in range(150):
        values = [_text(rnd) for _ in range(rnd.randint(0, 8))]
        literal = text_array(values)
        fast += bool(values) and None not in values and "\\" not in literal
        await _same(conn, "text", values, literal)
        await _same(conn, "text", values, text_array(iter(values)))
    assert fast > 10  # the joined form was taken, not only the element-wise one


@pytest.mark.parametrize("seed", range(3))
async def test_random_int_literals_read_as_asyncpgs_arrays(
    conn: asyncpg.Connection, seed: int
) -> None:
    rnd = random.Random(seed)
    for _ in range(150):
        values = [_int(rnd) for _ in range(rnd.randint(0, 8))]
        await _same(conn, "bigint", values, int_array(values))
        await _same(conn, "bigint", values, int_array(tuple(values)))
        small = [v for v in values if v is None or -(2**31) <= v < 2**31]
        await _same(conn, "int", small, int_array(iter(small)))


async def test_edges_read_as_asyncpgs_arrays(conn: asyncpg.Connection) -> None:
    for values in (
        [],
        [""],
        ["", ""],
        [None],
        ["NULL", None, "null"],
        [" ", "  x  "],
        ['a","b'],
        ['","'],
        ["\\"],
        ['"'],
        ["{}", "{a,b}", '{"x"}'],
        [Lying("x"), Lying('"'), Kind.ODD, Kind.CHARGE],
        ["x" * 10_000, "é" * 3_000],
    ):
        await _same(conn, "text", values, text_array(values))
    for ints in ([], [None], [True, False, None], [Level.LOW, Level.NEG], [LyingInt(5)]):
        await _same(conn, "bigint", ints, int_array(ints))
