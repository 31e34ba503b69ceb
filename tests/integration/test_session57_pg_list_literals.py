"""PostgreSQL: the store's connections send a Python list given for a `$n::T[]` parameter as an
array literal (session 57, postgres_arrays.as_literals, StoreConnection): the owner's steps
passed their batches' ids and columns as lists, whose per-element checks in asyncpg were ~40% of
their instructions. The values read back are the binary arrays'; a statement using a parameter
otherwise is sent as written."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from bridge.store.postgres_arrays import as_literals, literal_form
from bridge.store.postgres_tx import create_pool

TEXTS = ["plain", "", "NULL", None, 'a "q"', "back\\slash", "{b},c", "汉字 😀", "x" * 3000]
INTS = [0, -1, None, 2**62, True]
BOOLS = [True, False, None]
BLOBS = [b"", b"\x00", bytes(range(256)), None]


def test_only_parameters_used_as_one_array_type_are_rewritten() -> None:
    sql = "SELECT unnest($1::text[]), $2::int[], $3::text[], $3, $4::text::text[], $5::bool[]"
    out, pairs = literal_form(sql)
    assert out == (
        "SELECT unnest($1::text::text[]), $2::text::int[], $3::text[], $3, $4::text::text[], "
        "$5::text::bool[]"
    )
    assert [i for i, _e in pairs] == [0, 1, 4]
    assert literal_form("SELECT $1::text[], $1::int[]") == ("SELECT $1::text[], $1::int[]", ())
    assert literal_form("SELECT $1::float8[]") == ("SELECT $1::float8[]", ())
    sent = as_literals("SELECT $1::text[], $2::bigint[]", (["a", None], None))
    assert sent == ("SELECT $1::text::text[], $2::text::bigint[]", ('{"a",NULL}', None))
    with pytest.raises(TypeError):
        as_literals("SELECT $1::text[]", ("abc",))


@pytest.fixture
async def pool(pg_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(pg_dsn, min_size=1, max_size=2, quota_zone=lambda: "UTC")
    yield p
    await p.close()


@pytest.mark.parametrize(
    ("values", "pg"),
    [(TEXTS, "text"), ([], "text"), (INTS, "bigint"), (INTS[:3], "int"), (BOOLS, "bool"),
     (BLOBS, "bytea"), (None, "text")],
)  # fmt: skip
async def test_a_list_reads_back_as_the_binary_array(
    pool: asyncpg.Pool, pg_dsn: str, values: list[Any] | None, pg: str
) -> None:
    plain = await asyncpg.connect(pg_dsn)
    try:
        binary = await plain.fetchval(f"SELECT $1::{pg}[]", values)
    finally:
        await plain.close()
    async with pool.acquire() as c:
        # What the store's connection sends: the literal (the server's own text of it).
        sent = await c.fetchval(
            f"SELECT query FROM pg_stat_activity WHERE pid = pg_backend_pid() AND $1::{pg}[] "
            "IS NOT DISTINCT FROM $1::{pg}[]".replace("{pg}", pg),
            values,
        )
        assert f"$1::text::{pg}[]" in sent
        assert await c.fetchval(f"SELECT $1::{pg}[]", values) == binary
        assert await c.fetchrow(f"SELECT $1::{pg}[] AS v", values) == (binary,)
        assert [r[0] for r in await c.fetch(f"SELECT unnest($1::{pg}[])", values)] == (
            list(binary) if binary is not None else []
        )
    # The pool's one-statement calls go through the same connection class.
    assert await pool.fetchval(f"SELECT $1::{pg}[]", values) == binary
