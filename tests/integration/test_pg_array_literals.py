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
        # bytes alone: bytea_array's join of bytes.hex (session 63), and a tuple of them
        ([v for v in BLOBS if type(v) is bytes], bytea_array, "bytea"),
        ([bytes(range(256))], bytea_array, "bytea"),
        (tuple(v for v in BLOBS if type(v) is bytes), bytea_array, "bytea"),
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


async def test_a_parts_literals_read_as_the_parts(conn: asyncpg.Connection) -> None:
    """postgres._segment_arrays' columns (session 63: transposed in C, ints by one format,
    bytes by one join) read back by the server as the parts they were made of."""
    import os

    from bridge.store import postgres as pg
    from bridge.store.models import NewSegment

    for n in (1, 3, 9, 255, 256):
        parts = [
            NewSegment(i, n, 0x40, os.urandom(140), b"" if i % 2 else b"\x00")
            for i in range(1, n + 1)
        ]
        segs = [(f'm"{i % 2}\\', s) for i, s in enumerate(parts)]
        cols = pg._segment_arrays(segs)
        row = await conn.fetchrow(
            "SELECT $1::text::text[], $2::text::int[], $3::text::int[], $4::text::int[], "
            "$5::text::bytea[], $6::text::bytea[]",
            *cols,
        )
        assert list(row[0]) == [m for m, _s in segs]
        assert list(row[1]) == [s.seq for s in parts] and set(row[2]) == {n}
        assert set(row[3]) == {0x40}
        assert list(row[4]) == [s.short_message for s in parts]
        assert list(row[5]) == [s.tlvs for s in parts]


def test_literals_quote_every_text() -> None:
    assert text_array(["a", None, 'b"c', "d\\e"]) == '{"a",NULL,"b\\"c","d\\\\e"}'
    assert int_array([1, None, True]) == "{1,NULL,1}"
    assert bytea_array([b"\x01\xff", None]) == '{"\\\\x01ff",NULL}'


# -- a server whose `array_nulls` is off -----------------------------------------------------------
# The literals write SQL's NULL as an unquoted NULL, which the server reads as NULL only while
# `array_nulls` is on (the default; a deprecated compatibility setting an operator may turn off
# for a database or a role). Off, the ledger's NULL ref went in as the text 'NULL' and its NULL
# expiry refused the write (`invalid input syntax for type bigint: "NULL"`): the binary arrays
# before did not depend on it. The pool sets it on for each connection (postgres_tx.create_pool).


async def test_the_store_reads_null_elements_as_null_whatever_the_database_sets(
    pg_dsn: str,
) -> None:
    from bridge.domain.ledger import topup
    from bridge.store.postgres import PostgresStore
    from tests.integration.test_store_rules import NOW, account

    admin = await asyncpg.connect(pg_dsn)
    try:
        db = await admin.fetchval("SELECT current_database()")
        await admin.execute(f'ALTER DATABASE "{db}" SET array_nulls = off')
    finally:
        await admin.close()
    s = PostgresStore(pg_dsn, min_size=1, max_size=2)
    await s.open()
    try:
        assert await s.pool.fetchval("SELECT current_setting('array_nulls')") == "on"
        await s.create_account(account("acc_a"))
        await s.append_ledger("acc_a", topup(10_000, NOW))  # no ref, a pocket that never expires
        rows = await s.pool.fetch("SELECT ref, expires_at FROM ledger WHERE account_id = 'acc_a'")
        assert [tuple(r) for r in rows] == [(None, None)]
        # One entry goes by values since session 59: literals with NULLs, as the roll-ups send.
        assert await s.pool.fetchval("SELECT $1::text[]", [None, "a", None]) == [None, "a", None]
        assert await s.pool.fetchval("SELECT $1::bigint[]", [None, None]) == [None, None]
    finally:
        await s.close()
