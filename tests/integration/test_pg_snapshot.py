"""tests/pg_cluster.py's Snapshot: what the property tests put a database back to between their
examples (test_money_stateful.py, test_pg_rollup_reads.py) instead of creating one from a
template each time. An example must start where a new copy of the migrated database would: every
row the last one wrote gone (rows that reference others among them), the migration's own rows
there, every sequence at its start, and no session of the last example's store still open.

The same restore hands the store contract tests' PostgreSQL engine (tests/store_engines.py) one
migrated database from test to test (`migrated_database`): put back when its shape is as
migrated, made anew when a test changed the schema."""

from __future__ import annotations

import asyncpg
import pytest

from bridge.store.postgres import PostgresStore
from tests.pg_cluster import (
    Cluster,
    Migrated,
    database_shape,
    drop_database,
    migrated_database,
    restore_snapshot,
    take_snapshot,
)
from tests.rollup_writes import accept


async def _contents(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    c = await asyncpg.connect(dsn)
    try:
        names = [
            r[0]
            for r in await c.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        ]
        return {
            t: sorted(map(tuple, await c.fetch(f'SELECT * FROM "{t}"')), key=repr) for t in names
        }
    finally:
        await c.close()


async def test_a_restore_leaves_the_database_as_the_snapshot_found_it(pg_dsn: str) -> None:
    store = PostgresStore(pg_dsn, min_size=1, max_size=2)
    await store.open()
    await store.close()
    migrated = await _contents(pg_dsn)
    snap = await take_snapshot(pg_dsn)
    assert snap.rows, "the migration's own rows (schema_version) were not taken"
    assert snap.tables.index("messages") < snap.tables.index("accounts")  # referencing first

    async def an_example() -> tuple[list[int], asyncpg.Connection]:
        """Writes as an example does (an account, messages and their parts, ledger entries), a
        session left open, and the sequences' next values."""
        store = PostgresStore(pg_dsn, min_size=1, max_size=2)
        await store.open()
        await accept(store, ["msg_a", "msg_b"], {"msg_b": 2})
        await store.close()
        left = await asyncpg.connect(pg_dsn)  # the store of an example that did not close
        seqs = [await left.fetchval(f"SELECT nextval('{s}')") for s in sorted(snap.sequences)]
        return seqs, left

    first, left = await an_example()
    assert (await _contents(pg_dsn))["messages"], "nothing written: the test tests nothing"
    await restore_snapshot(pg_dsn, snap)
    assert await _contents(pg_dsn) == migrated
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
        await left.fetchval("SELECT 1")  # ended, as DROP DATABASE .. WITH (FORCE) would
    # The next example writes what the first did, ids from the sequences included.
    again, left = await an_example()
    await left.close()
    assert again == first


async def test_the_migrated_database_is_put_back_or_made_anew_when_its_shape_changed(
    pg_cluster: Cluster,
) -> None:
    held: list[Migrated] = []
    dsn = await migrated_database(pg_cluster, held)
    migrated, shape = await _contents(dsn), await database_shape(dsn)
    assert migrated["schema_version"], "not migrated"
    # A test writes, and leaves a session open.
    store = PostgresStore(dsn, min_size=1, max_size=2)
    await store.open()
    await accept(store, ["msg_a"], {"msg_a": 3})
    await store.close()
    left = await asyncpg.connect(dsn)
    assert (await _contents(dsn))["segments"]
    # The next test: the same database, as migrated, the session ended.
    assert await migrated_database(pg_cluster, held) == dsn
    assert await _contents(dsn) == migrated
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
        await left.fetchval("SELECT 1")
    # A test changes the schema, as an upgrade test does (a column dropped and added back: the
    # same names, not the same table), or adds a trigger or a grant: the next one gets a new
    # database with the migrated shape and contents.
    changes = [
        "ALTER TABLE messages DROP COLUMN q_route; ALTER TABLE messages ADD COLUMN q_route TEXT",
        "CREATE FUNCTION f() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';"
        "CREATE TRIGGER t BEFORE INSERT ON accounts FOR EACH ROW EXECUTE FUNCTION f()",
        "CREATE ROLE snapshot_reader; GRANT SELECT ON messages TO snapshot_reader",
    ]
    for change in changes:
        c = await asyncpg.connect(dsn)
        try:
            await c.execute(change)
        finally:
            await c.close()
        assert await database_shape(dsn) != shape, change
        new = await migrated_database(pg_cluster, held)
        assert new != dsn, change
        assert await database_shape(new) == shape and await _contents(new) == migrated
        dsn = new
    await drop_database(pg_cluster, held[0].name)
    c = await asyncpg.connect(pg_cluster.admin_dsn)
    try:
        await c.execute("DROP ROLE snapshot_reader")
    finally:
        await c.close()
