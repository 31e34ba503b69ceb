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


# -- session 63 (r5): the accept's literals against what the server reads ------------------------
# h5's literals (a number's prefixes by one kept format, the parts' columns by "%d" formats and
# bytes.hex joined) are checked against the earlier literals in tests/unit; here against the
# values themselves, as the server parses them: every kind of input the fast forms take or hand
# on (hostile numbers and signs of every length, int subclasses, int32's ends, bytes-likes).


async def test_the_server_reads_a_numbers_facts_as_the_number_and_its_prefixes(
    conn: asyncpg.Connection,
) -> None:
    import random

    from bridge.domain import admission as adm
    from bridge.domain.frequency import Limits
    from bridge.store.postgres_rules import _PREFIX_FORMS, facts_args
    from bridge.store.rules_rows import number_prefixes

    rnd = random.Random(63)
    chars = '0123456789+%{}, NaUL"\\éé汉=-xs\t'
    firsts = ["+", "0", "9", "%", "{", " ", '"', "\\", "=", ">", "a", "é", "汉", ""]
    signs = [None, "Acme", "示例", "a%s", 'q"', "b\\", "NULL", "", " {,} "]
    for size in range(_PREFIX_FORMS + 8):
        for first in firsts:
            number = (first + "".join(rnd.choice(chars) for _ in range(size)))[:size]
            sign = rnd.choice(signs)
            counted = rnd.choice([None, sign, "Other"])
            fr = None
            if rnd.random() < 0.7:
                fr = adm.FrequencyRule("raw", counted, None, Limits(0, 0, 5), "UTC", (number,), ())
            rules = adm.Rules(sign_name=sign, frequency=fr, billing=True, tz="UTC")
            args = facts_args("acc_1", rules, (number,), 1_796_622_213_290, rate=False)
            row = await conn.fetchrow(
                "SELECT $1::text::text[], $2::text::text[], $3::text::text[], $4::text::text[], "
                "$5::text::text[]",
                *(args[i] for i in (1, 3, 4, 6, 10)),
            )
            want = [
                [] if sign is None else [sign],
                [number],
                sorted(number_prefixes(number)),
                [] if fr is None else [number],
                [] if fr is None else [counted],
            ]
            assert [list(col) for col in row] == want, (number, sign, counted)


async def test_the_server_reads_the_parts_columns_as_the_parts(conn: asyncpg.Connection) -> None:
    import enum
    import random

    from bridge.store import postgres as pg
    from bridge.store.models import NewSegment

    class Esm(enum.IntEnum):
        UDHI = 0x40

    rnd = random.Random(63)
    ints: list[Any] = [0, 1, 3, 255, 2**31 - 1, -(2**31), True, False, Esm.UDHI, 2.0]
    ids = ["01JZ" + "X" * 22, 'q"t', "b\\s", "NULL", "", " {,} ", "汉😀"]

    def octets() -> Any:
        raw = rnd.randbytes(rnd.choice([0, 1, 9, 140]))
        return rnd.choice([raw, raw, raw, bytearray(raw), memoryview(raw), b'\\"{},NULL'])

    for n in [1, 2, 3, 254, 255, 256, 257] * 6:
        one = rnd.choice(ints) if rnd.random() < 0.3 else None  # a column of one value
        parts = [
            NewSegment(
                *(one if one is not None else rnd.choice(ints) for _ in "abc"), octets(), octets()
            )
            for _ in range(n)
        ]
        segs = [(rnd.choice(ids), s) for s in parts]
        cols = await conn.fetchrow(
            "SELECT $1::text::text[], $2::text::int[], $3::text::int[], $4::text::int[], "
            "$5::text::bytea[], $6::text::bytea[]",
            *pg._segment_arrays(segs),
        )
        assert list(cols[0]) == [m for m, _s in segs]
        assert list(cols[1]) == [int(s.seq) for s in parts]
        assert list(cols[2]) == [int(s.total) for s in parts]
        assert list(cols[3]) == [int(s.esm_class) for s in parts]
        assert list(cols[4]) == [bytes(s.short_message) for s in parts]
        assert list(cols[5]) == [bytes(s.tlvs) for s in parts]
