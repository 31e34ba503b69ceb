"""PostgreSQL: array parameters sent as literals in one text parameter (session 56,
bridge/store/postgres_arrays.py) read back as the same values asyncpg's binary arrays give."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import pytest

from bridge.store.postgres_arrays import bytea_array, int_array, text_array

TEXTS = [
    "plain",
    "",
    "NULL",
    "null",
    None,
    'a "quoted" one',
    "back\\slash",
    "\\",
    '\\"',
    "{braces}",
    "a,b",
    " lead and trail ",
    "tab\tnew\nline",
    "汉字 ✓ émoji 😀",
    "'single'",
    "x" * 5000,
]
INTS = [0, 1, -1, None, 2**31 - 1, -(2**31), 2**62, True, False]
BLOBS = [b"", b"\x00", bytes(range(256)), None, bytearray(b"\x05\x00\x03"), b'\\"{},NULL']


@pytest.fixture
async def conn(pg_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    c = await asyncpg.connect(pg_dsn)
    yield c
    await c.close()


@pytest.mark.parametrize(
    ("values", "encode", "pg"),
    [
        (TEXTS, text_array, "text"),
        ([], text_array, "text"),
        ([None], text_array, "text"),
        ([v for v in INTS if v is None or abs(v) < 2**31], int_array, "int"),
        (INTS, int_array, "bigint"),
        ([], int_array, "bigint"),
        (BLOBS, bytea_array, "bytea"),
        ([], bytea_array, "bytea"),
    ],
)
async def test_a_literal_reads_as_the_binary_array(
    conn: asyncpg.Connection, values: list[Any], encode: Callable[[list[Any]], str], pg: str
) -> None:
    binary = await conn.fetchval(f"SELECT $1::{pg}[]", values)
    literal = await conn.fetchval(f"SELECT $1::text::{pg}[]", encode(values))
    assert literal == binary
    assert len(literal) == len(values)
    # and in unnest, as the statements read them, element by element in order
    rows = await conn.fetch(
        f"SELECT x, x IS NULL AS n FROM unnest($1::text::{pg}[]) WITH ORDINALITY AS u(x, o) "
        "ORDER BY o",
        encode(values),
    )
    assert [r["x"] for r in rows] == binary
    assert [r["n"] for r in rows] == [v is None for v in values]


def test_literals_quote_every_text() -> None:
    assert text_array(["a", None, 'b"c', "d\\e"]) == '{"a",NULL,"b\\"c","d\\\\e"}'
    assert int_array([1, None, True]) == "{1,NULL,1}"
    assert bytea_array([b"\x01\xff", None]) == '{"\\\\x01ff",NULL}'
