"""The PostgreSQL roll-up takes a message's parts from the writes that just set them.

A message's submit results and its receipts each wrote its part rows, and the roll-up after them
read those rows once more (`postgres_pipeline.rollup_messages`): a round trip and a read of every
part a message, in each of the owner's two steps. Since session 52 the writes return the rows
they wrote (`Known`), as the SQLite engine keeps them (test_sqlite_rollup_reads.py), and a
message whose every part row was written in the transaction is not read again; the submit
results' own read of the queued parts became the condition of their UPDATE. These tests run the
owner's writes on a real PostgreSQL database, trace the statements, and check that no such
roll-up reads the parts, that a message with a part the batch did not write is still read, and
that a random run of the owner's writes leaves every row, report and count as a roll-up that
reads every part does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.store import postgres_pipeline
from bridge.store.models import SubmitResult
from bridge.store.postgres import PostgresStore
from tests.conftest import run_async
from tests.pg_cluster import (
    Cluster,
    Snapshot,
    create_database,
    drop_database,
    new_database_name,
    restore_snapshot,
    take_snapshot,
)
from tests.rollup_writes import (
    DUMPED,
    LEASE,
    NOW,
    accept,
    parts_written_in_the_batch,
    random_run,
    summarized,
)

ROLLUP_READ = "SELECT message_id, seq, state, error_code FROM segments WHERE message_id = ANY("
QUEUED_READ = "SELECT message_id, seq FROM segments WHERE message_id = ANY($1::text[]) AND state"


@pytest.fixture(scope="module")
def two_databases(pg_cluster: Cluster) -> Iterator[tuple[list[str], Snapshot]]:
    """Two migrated databases for the random test's two runs of each example, and what the
    migration left in them: each example starts on both put back to that (restore_snapshot), as
    on two new copies of a migrated template, without two CREATE DATABASE an example."""
    names = [new_database_name("rollup"), new_database_name("rollup")]
    dsns = [run_async(create_database(pg_cluster, n)) for n in names]

    async def migrate() -> Snapshot:
        for dsn in dsns:
            store = PostgresStore(dsn, min_size=1, max_size=2)
            await store.open()
            await store.close()
        return await take_snapshot(dsns[0])

    snapshot = run_async(migrate())
    try:
        yield dsns, snapshot
    finally:
        for n in names:
            run_async(drop_database(pg_cluster, n))


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    """Every statement the store's connections run, with its arguments."""
    seen: list[tuple[str, tuple[Any, ...]]] = []
    for name in ("fetch", "fetchrow", "fetchval", "execute", "executemany"):
        real = getattr(asyncpg.connection.Connection, name)

        def spy(self: Any, query: str, *args: Any, _real: Any = real, **kw: Any) -> Any:
            seen.append((query, args))
            return _real(self, query, *args, **kw)

        monkeypatch.setattr(asyncpg.connection.Connection, name, spy)
    return seen


def _rollup_reads(traced: list[tuple[str, tuple[Any, ...]]]) -> list[list[str]]:
    """The message ids each roll-up read the parts of."""
    return [_ids(args[0]) for q, args in traced if q.startswith(ROLLUP_READ)]


def _plain(query: str) -> str:
    """The statement as written: the store's connections cast a list parameter from text."""
    return query.replace("::text::text[]", "::text[]")


def _ids(arg: Any) -> list[str]:
    """A list argument's ids; since session 57 the store's connections send a list as an array
    literal (postgres_arrays.as_literals), which is what asyncpg's layer sees: ids hold no quote,
    comma or backslash."""
    if isinstance(arg, str):
        inner = arg[1:-1]
        return [v.strip('"') for v in inner.split(",")] if inner else []
    return list(arg)


async def _rows_match_parts(dsn: str) -> dict[str, tuple[Any, ...]]:
    """Each message's (state, delivered, failed, error, q_state); asserted to be what its
    stored parts roll up to."""
    c = await asyncpg.connect(dsn)
    try:
        out = {}
        for mid, *row in await c.fetch(
            "SELECT id, state, segments_delivered, segments_failed, error_code, q_state, "
            "segments FROM messages ORDER BY id"
        ):
            parts = await c.fetch(
                "SELECT state, error_code FROM segments WHERE message_id = $1 ORDER BY seq", mid
            )
            out[mid] = summarized(tuple(row), [tuple(p) for p in parts])
        return out
    finally:
        await c.close()


async def test_parts_written_in_the_batch_are_not_read_again_for_the_roll_up(
    pg_dsn: str, traced: list[tuple[str, tuple[Any, ...]]]
) -> None:
    """The scenario of rollup_writes.parts_written_in_the_batch, on PostgreSQL: and no read of
    the queued parts before the submit results' write (the condition of their UPDATE)."""
    store = PostgresStore(pg_dsn, min_size=1, max_size=4)
    await store.open()
    try:
        await parts_written_in_the_batch(
            store,
            lambda: _rows_match_parts(pg_dsn),
            lambda: _rollup_reads(traced),
            traced.clear,
            lambda: [q for q, _a in traced if _plain(q).startswith(QUEUED_READ)],
        )
    finally:
        await store.close()


async def test_a_message_with_an_end_or_another_part_unwritten_is_read_as_before(
    pg_dsn: str, traced: list[tuple[str, tuple[Any, ...]]]
) -> None:
    """A failed or unknown result writes its part only if still queued, and ends the parts
    after it: its message's roll-up reads them. A 3-part message with two results: its third
    part was not written here."""
    store = PostgresStore(pg_dsn, min_size=1, max_size=4)
    await store.open()
    try:
        await accept(store, ["msg_f", "msg_u", "msg_p"], {"msg_p": 3, "msg_u": 2})
        assert len(await store.claim("i1", 10, NOW + 1_000, LEASE)) == 3
        traced.clear()
        at = NOW + 2_000
        await store.record_submits(
            [
                SubmitResult("msg_f", 1, "failed", "smsc1", error_code="ESME_RINVDSTADR", at=at),
                SubmitResult("msg_u", 1, "sent", "smsc1", "u1", "u1", at=at, sent_at=at),
                SubmitResult("msg_u", 2, "unknown", "smsc1", at=at),
                SubmitResult("msg_p", 1, "sent", "smsc1", "p1", "p1", at=at, sent_at=at),
                SubmitResult("msg_p", 2, "sent", "smsc1", "p2", "p2", at=at, sent_at=at),
            ],
            [],
            at,
            instance="i1",
        )
        rows = await _rows_match_parts(pg_dsn)
        assert rows["msg_f"][0] == "failed" and rows["msg_f"][3] == "ESME_RINVDSTADR"
        assert _rollup_reads(traced) == [["msg_f", "msg_p", "msg_u"]]
    finally:
        await store.close()


async def _run(dsn: str, seed: int, reread: bool) -> tuple[list[Any], dict[str, Any]]:
    """The owner's writes of `seed` on the new database `dsn`; what each returned and the rows.
    `reread`: every roll-up reads its parts again, as before `Known`."""
    real = postgres_pipeline.rollup_messages

    async def rollup(c: Any, touched: dict[str, bool], now: int, *a: Any, **kw: Any) -> int:
        if reread:
            kw.pop("known", None)
        return await real(c, touched, now, *a, **kw)

    store = PostgresStore(dsn, min_size=1, max_size=4)
    await store.open()
    postgres_pipeline.rollup_messages = rollup  # type: ignore[assignment]
    try:
        returned = await random_run(store, seed)
    finally:
        postgres_pipeline.rollup_messages = real  # type: ignore[assignment]
        await store.close()
    c = await asyncpg.connect(dsn)
    try:
        rows = {
            table: [tuple(r) for r in await c.fetch(f"SELECT {cols} FROM {table} ORDER BY 1, 2")]
            for table, cols in DUMPED
        }
    finally:
        await c.close()
    return returned, rows


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(seed=st.integers(0, 2**32 - 1))
def test_random_owner_writes_roll_up_as_when_every_part_was_read(
    two_databases: tuple[list[str], Snapshot], seed: int
) -> None:
    """The SQLite test's random runs (every outcome, repeated results, releases, kept
    receipts, two receipts for one part in a batch, one receipt for a whole message, sweeps):
    every row, report and count as when each roll-up read its parts."""
    dsns, snapshot = two_databases

    async def both() -> tuple[Any, Any]:
        for dsn in dsns:
            await restore_snapshot(dsn, snapshot)
        return await _run(dsns[0], seed, False), await _run(dsns[1], seed, True)

    got, want = asyncio.run(both())
    assert got == want
