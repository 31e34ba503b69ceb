"""PostgreSQL: the store's connections' array literals (postgres_arrays.as_literals, session 57)
against asyncpg's binary arrays on seeded random values (session 57's review): texts of any
ASCII character but NUL and some non-ASCII ones, the word NULL in any case, spaces at the ends,
quotes, backslashes, braces and commas; bigints and ints at their bounds; bools; bytes of every
octet; NULL elements; empty lists; and a long list. Every row reads back as the binary one. A
value both refuse (a NUL in a text) fails with the same error; a bigint out of range fails both
ways too (asyncpg refused it before sending, the server refuses the literal)."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import asyncpg
import pytest

from bridge.store.postgres_tx import create_pool

CHARS = [chr(c) for c in range(1, 128)] + ["é", "汉", "😀", "\u2028", "\ufeff", "\xa0", "\x85"]
WORDS = ["NULL", "null", "NuLl", " NULL ", "", '""', "\\", "{", "}", ",", "{}", "\\N", " x "]
ROW = "SELECT $1::text[], $2::bigint[], $3::int[], $4::bool[], $5::bytea[]"


def _text(rnd: random.Random) -> str | None:
    if rnd.random() < 0.1:
        return None
    if rnd.random() < 0.15:
        return rnd.choice(WORDS)
    return "".join(rnd.choice(CHARS) for _ in range(rnd.randint(0, 12)))


def _ints(rnd: random.Random, bits: int) -> list[int | None]:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return [
        None if rnd.random() < 0.1 else rnd.choice([0, -1, lo, hi, rnd.randint(lo, hi)])
        for _ in range(rnd.randint(0, 5))
    ]


@pytest.fixture
async def conns(pg_dsn: str) -> AsyncIterator[tuple[asyncpg.Connection, asyncpg.Pool]]:
    plain = await asyncpg.connect(pg_dsn)
    pool = await create_pool(pg_dsn, min_size=1, max_size=1, quota_zone=lambda: "UTC")
    try:
        yield plain, pool
    finally:
        await pool.close()
        await plain.close()


async def test_random_lists_read_back_as_the_binary_arrays(
    conns: tuple[asyncpg.Connection, asyncpg.Pool],
) -> None:
    plain, pool = conns
    rnd = random.Random(57)
    async with pool.acquire() as store:
        for _ in range(1500):
            args = (
                [_text(rnd) for _ in range(rnd.randint(0, 8))],
                _ints(rnd, 64),
                _ints(rnd, 32),
                [rnd.choice([True, False, None]) for _ in range(rnd.randint(0, 5))],
                [
                    None
                    if rnd.random() < 0.1
                    else bytes(rnd.randrange(256) for _ in range(rnd.randint(0, 10)))
                    for _ in range(rnd.randint(0, 5))
                ],
            )
            binary = await plain.fetchrow(ROW, *args)
            assert tuple(await store.fetchrow(ROW, *args)) == tuple(binary), args
            assert list(binary[0] or []) == args[0]
        long = [_text(rnd) for _ in range(50_000)]
        assert await store.fetchval("SELECT $1::text[]", long) == long
        blobs = [bytes([b]) * 3 for b in range(256)]
        assert await store.fetchval("SELECT $1::bytea[]", blobs) == blobs


async def test_values_refused_by_both(conns: tuple[asyncpg.Connection, asyncpg.Pool]) -> None:
    plain, pool = conns
    for conn in (plain, pool):
        with pytest.raises(asyncpg.CharacterNotInRepertoireError):
            await conn.fetchval("SELECT $1::text[]", ["a", "b\x00c"])
        with pytest.raises(asyncpg.DataError):
            await conn.fetchval("SELECT $1::bigint[]", [2**63])
