"""Store fixtures, parametrised over engines, so one contract suite runs against every engine.

Tests talk to the database only through the `Store` protocol. The few things a contract test needs
that the protocol deliberately does not offer (poking the schema version, counting commits, opening
the same database in a child process) come from the engine's `EngineHandle`. The PostgreSQL engine
runs on a throw-away cluster (tests/conftest.py: one per session, and per worker one migrated
database put back as migrated before each test, or made anew when a test changed its schema); it
skips when there is no PostgreSQL, except under CI where it fails.

Use by binding the fixtures in the test module (`engine = store_engines.engine`, likewise
`store`): module fixtures take precedence over a conftest's fixtures of the same name.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridge.store.base import Store
from tests.sqlite_template import migrated_copy


@dataclass(frozen=True, slots=True)
class EngineHandle:
    name: str
    # A fresh, unopened Store on this test's database (a second call = a reopen of the same data).
    new_store: Callable[[], Store]
    # Python source that binds an unopened Store on the same database to `store` in a child
    # process (crash tests kill that child and reopen in the test).
    child_setup: str
    # Write a schema version into the database behind the store's back (SchemaTooNew tests).
    force_schema_version: Callable[[int], None]
    # Transactions this Store instance has committed, to prove group commit; None for an engine
    # whose server groups commits itself (PostgreSQL): tests then check behaviour only.
    commits: Callable[[Store], int] | None
    # Several instances may share the database (claims of other live instances are theirs).
    multi_instance: bool = False
    # The DSN (PostgreSQL) or file path (SQLite) of this test's database.
    location: str = ""


def _sqlite(request: pytest.FixtureRequest, tmp_path: Path) -> EngineHandle:
    from bridge.store.sqlite import SqliteStore

    path = tmp_path / "bridge.db"

    def force_schema_version(version: int) -> None:
        conn = sqlite3.connect(path)
        try:
            with conn:
                conn.execute("INSERT INTO schema_version(version) VALUES (?)", (version,))
        finally:
            conn.close()

    def commits(store: Store) -> int:
        if not isinstance(store, SqliteStore):
            raise TypeError(f"not a SqliteStore: {store!r}")
        return store.commits

    def new_store() -> SqliteStore:
        migrated_copy(path)  # as a first open leaves it (tests/sqlite_template.py)
        return SqliteStore(path)

    return EngineHandle(
        name="sqlite",
        new_store=new_store,
        child_setup=(
            f"from bridge.store.sqlite import SqliteStore\nstore = SqliteStore({str(path)!r})"
        ),
        force_schema_version=force_schema_version,
        commits=commits,
        location=str(path),
    )


def _postgres(request: pytest.FixtureRequest, tmp_path: Path) -> EngineHandle:
    from bridge.store.postgres import PostgresStore
    from tests.conftest import run_async

    # Migrated already, as a store's first open leaves it: the contract tests' store opens it
    # as a daemon reopens its database (tests/pg_cluster.py's migrated_database).
    dsn: str = request.getfixturevalue("pg_migrated_dsn")

    def force_schema_version(version: int) -> None:
        async def go() -> None:
            import asyncpg

            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute("INSERT INTO schema_version(version) VALUES ($1)", version)
            finally:
                await conn.close()

        run_async(go())

    return EngineHandle(
        name="postgres",
        new_store=lambda: PostgresStore(dsn, min_size=1, max_size=10),
        child_setup=(
            f"from bridge.store.postgres import PostgresStore\nstore = PostgresStore({dsn!r})"
        ),
        force_schema_version=force_schema_version,
        commits=None,
        multi_instance=True,
        location=dsn,
    )


# name -> factory(request, tmp_path).
ENGINES: dict[str, Callable[[pytest.FixtureRequest, Path], EngineHandle]] = {
    "sqlite": _sqlite,
    "postgres": _postgres,
}


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> EngineHandle:
    return ENGINES[request.param](request, tmp_path)


@pytest.fixture
async def store(engine: EngineHandle) -> AsyncIterator[Store]:
    s = engine.new_store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


# What each migration added, undone: `schema_before(engine, sqlite_version, pg_version)` leaves the
# schema as the release before that migration left it, for the upgrade tests. A new migration adds
# its undo here (and nowhere else).
_UNDO_SQLITE: dict[int, tuple[str, ...]] = {
    5: ("ALTER TABLE messages DROP COLUMN q_route",),
    6: (
        "ALTER TABLE mo_inbox DROP COLUMN sign_name",
        "ALTER TABLE webhook_outbox DROP COLUMN retry_from",
    ),
    7: ("DROP INDEX messages_parked", "ALTER TABLE messages DROP COLUMN q_park"),
    8: (
        "ALTER TABLE mo_inbox DROP COLUMN parts_total",
        "ALTER TABLE mo_inbox DROP COLUMN parts_received",
        "ALTER TABLE mo_parts DROP COLUMN source_ton",
    ),
    9: ("ALTER TABLE accounts DROP COLUMN senders",),
    10: ("ALTER TABLE messages DROP COLUMN q_unanswered",),
    12: ("DROP INDEX mo_inbox_received", "DROP INDEX webhook_dead_ref"),
    13: ("ALTER TABLE messages DROP COLUMN end_error",),
    14: (
        "ALTER TABLE templates DROP COLUMN revision",
        "ALTER TABLE templates DROP COLUMN updated_at",
        "ALTER TABLE signs DROP COLUMN updated_at",
    ),
    15: ("DROP TABLE audit_log",),
    16: ("ALTER TABLE templates DROP COLUMN international",),
    17: (
        "ALTER TABLE accounts DROP COLUMN prev_webhook_secret_enc",
        "ALTER TABLE accounts DROP COLUMN prev_webhook_secret_until",
    ),
    18: ("ALTER TABLE webhook_outbox DROP COLUMN leased_by",),
    19: ("DROP TABLE skew_windows",),
    20: ("ALTER TABLE accounts DROP COLUMN low_warned_at",),
    21: ("DROP TABLE route_table",),
    22: (
        "ALTER TABLE segments DROP COLUMN receipt_inferred_from",
        # mo_parts as 0008 left it, the set number packed back above the 16-bit reference.
        "CREATE TABLE mo_parts_old (smsc TEXT NOT NULL, source TEXT NOT NULL, "
        "destination TEXT NOT NULL, ref INTEGER NOT NULL, total INTEGER NOT NULL, "
        "seq INTEGER NOT NULL, data_coding INTEGER NOT NULL, payload BLOB NOT NULL, "
        "received_at INTEGER NOT NULL, source_ton INTEGER, "
        "PRIMARY KEY (smsc, source, destination, ref, seq)) WITHOUT ROWID",
        "INSERT INTO mo_parts_old SELECT smsc, source, destination, ref + set_no * 65536, total, "
        "seq, data_coding, payload, received_at, source_ton FROM mo_parts",
        "DROP TABLE mo_parts",
        "ALTER TABLE mo_parts_old RENAME TO mo_parts",
    ),
    23: ("DROP INDEX messages_expiring",),
    24: ("DROP TABLE pending_ends",),
    25: ("ALTER TABLE messages DROP COLUMN wire",),
    26: (
        "DROP INDEX dnc_entries_list",
        "ALTER TABLE dnc_entries DROP COLUMN gen",
        "CREATE INDEX dnc_entries_list ON dnc_entries(list_id)",
    ),
    27: ("DROP TABLE sender_walk",),
    28: ("DROP TABLE dnc_imports",),
    29: ("DROP TABLE pending_erasures",),
    30: ("ALTER TABLE pending_ends DROP COLUMN guarded",),
    31: ("ALTER TABLE mo_inbox DROP COLUMN text_hex",),
    34: (
        "CREATE INDEX messages_account_recipient ON messages(account_id, recipient, accepted_at)",
        "CREATE INDEX messages_recipient ON messages(recipient, accepted_at)",
        "DROP INDEX messages_recipient_account",
    ),
    35: ("ALTER TABLE app_keys DROP COLUMN last_used_at",),
    36: (
        "DROP INDEX messages_queue",
        "CREATE INDEX messages_queue ON messages(q_state, account_id, q_not_before)",
    ),
    37: (
        "DROP TRIGGER accounts_version_insert",
        "DROP TRIGGER accounts_version_update",
        "ALTER TABLE accounts DROP COLUMN row_version",
    ),
    # The ledger with AUTOINCREMENT again, every row and id kept, its sequence at the top id.
    38: (
        "CREATE TABLE ledger_auto (id INTEGER PRIMARY KEY AUTOINCREMENT, "
        "account_id TEXT NOT NULL, kind TEXT NOT NULL, amount INTEGER NOT NULL, "
        "pocket TEXT NOT NULL, at INTEGER NOT NULL, ref TEXT, expires_at INTEGER)",
        "INSERT INTO ledger_auto SELECT id, account_id, kind, amount, pocket, at, ref, "
        "expires_at FROM ledger ORDER BY id",
        "DROP TABLE ledger",
        "ALTER TABLE ledger_auto RENAME TO ledger",
        "UPDATE sqlite_sequence SET name='ledger' WHERE name='ledger_auto'",
        "CREATE INDEX ledger_account_ref ON ledger(account_id, ref)",
    ),
}
_UNDO_POSTGRES: dict[int, tuple[str, ...]] = {
    4: ("ALTER TABLE messages DROP COLUMN q_route",),
    5: (
        "ALTER TABLE mo_inbox DROP COLUMN sign_name",
        "ALTER TABLE webhook_outbox DROP COLUMN retry_from",
    ),
    6: ("ALTER TABLE messages DROP COLUMN q_park",),  # and its index
    7: (
        "ALTER TABLE mo_inbox DROP COLUMN parts_total",
        "ALTER TABLE mo_inbox DROP COLUMN parts_received",
        "ALTER TABLE mo_parts DROP COLUMN source_ton",
    ),
    8: ("ALTER TABLE accounts DROP COLUMN senders",),
    9: ("ALTER TABLE messages DROP COLUMN q_unanswered",),
    10: ("DROP INDEX webhook_delivered",),
    12: (
        "DROP INDEX mo_inbox_received",
        "DROP INDEX webhook_dead_age",
        "DROP INDEX webhook_dead_ref",
    ),
    13: ("ALTER TABLE messages DROP COLUMN end_error",),
    14: (
        "ALTER TABLE templates DROP COLUMN revision",
        "ALTER TABLE templates DROP COLUMN updated_at",
        "ALTER TABLE signs DROP COLUMN updated_at",
    ),
    15: ("DROP TABLE audit_log",),
    16: ("ALTER TABLE templates DROP COLUMN international",),
    17: (
        "ALTER TABLE accounts DROP COLUMN prev_webhook_secret_enc",
        "ALTER TABLE accounts DROP COLUMN prev_webhook_secret_until",
    ),
    18: ("DROP INDEX webhook_leased", "ALTER TABLE webhook_outbox DROP COLUMN leased_by"),
    19: ("DROP TABLE skew_windows",),
    20: ("ALTER TABLE accounts DROP COLUMN low_warned_at",),
    21: ("DROP TABLE route_table",),
    22: (
        "ALTER TABLE segments DROP COLUMN receipt_inferred_from",
        "ALTER TABLE mo_parts DROP COLUMN lang_locking",
        "ALTER TABLE mo_parts DROP COLUMN lang_single",
        "ALTER TABLE mo_parts DROP CONSTRAINT mo_parts_pkey",
        "UPDATE mo_parts SET ref = ref + set_no * 65536",
        "ALTER TABLE mo_parts DROP COLUMN set_no",
        "ALTER TABLE mo_parts ADD PRIMARY KEY (smsc, source, destination, ref, seq)",
    ),
    25: ("ALTER TABLE messages DROP COLUMN wire",),
    31: ("ALTER TABLE mo_inbox DROP COLUMN text_hex",),
    32: (
        "CREATE INDEX messages_account_recipient ON messages(account_id, recipient, accepted_at)",
        "CREATE INDEX messages_recipient ON messages(recipient, accepted_at)",
        "DROP INDEX messages_recipient_account",
        "CREATE INDEX ledger_account_id ON ledger(account_id, id)",
        "ALTER TABLE ledger DROP CONSTRAINT ledger_pkey",
        "ALTER TABLE ledger ADD PRIMARY KEY (id)",
    ),
    33: (
        "DROP TABLE pending_end_guards",
        "DROP TABLE pending_ends",
        "ALTER TABLE messages DROP COLUMN seq",  # and its sequence (OWNED BY)
    ),
    35: ("ALTER TABLE app_keys DROP COLUMN last_used_at",),
    37: (
        "DROP TRIGGER accounts_row_version ON accounts",
        "DROP FUNCTION accounts_row_version()",
        "ALTER TABLE accounts DROP COLUMN row_version",
    ),
}


async def schema_before(engine: EngineHandle, sqlite_version: int, pg_version: int) -> None:
    """Undo the migrations from the given version on (per engine: their numbers differ)."""
    if engine.name == "sqlite":
        c = sqlite3.connect(engine.location)
        with c:
            for v in sorted((v for v in _UNDO_SQLITE if v >= sqlite_version), reverse=True):
                for sql in _UNDO_SQLITE[v]:
                    c.execute(sql)
            c.execute("DELETE FROM schema_version WHERE version >= ?", (sqlite_version,))
        c.close()
        return
    import asyncpg

    pc = await asyncpg.connect(engine.location)
    try:
        for v in sorted((v for v in _UNDO_POSTGRES if v >= pg_version), reverse=True):
            for sql in _UNDO_POSTGRES[v]:
                await pc.execute(sql)
        await pc.execute("DELETE FROM schema_version WHERE version >= $1", pg_version)
    finally:
        await pc.close()
