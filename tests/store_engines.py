"""Store fixtures, parametrised over engines, so one contract suite runs against every engine.

Tests talk to the database only through the `Store` protocol. The few things a contract test needs
that the protocol deliberately does not offer (poking the schema version, counting commits, opening
the same database in a child process) come from the engine's `EngineHandle`. Adding PostgreSQL is
one factory function plus one entry in `ENGINES`; no test changes.

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
    # Transactions this Store instance has committed, to prove group commit.
    commits: Callable[[Store], int]


def _sqlite(tmp_path: Path) -> EngineHandle:
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

    return EngineHandle(
        name="sqlite",
        new_store=lambda: SqliteStore(path),
        child_setup=(
            f"from bridge.store.sqlite import SqliteStore\nstore = SqliteStore({str(path)!r})"
        ),
        force_schema_version=force_schema_version,
        commits=commits,
    )


# name -> factory(tmp_path). A "postgres" factory would create a throw-away database (skip when no
# server is reachable, unless SMPP_BRIDGE_CI is set) and return the same kind of handle.
ENGINES: dict[str, Callable[[Path], EngineHandle]] = {"sqlite": _sqlite}


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> EngineHandle:
    return ENGINES[request.param](tmp_path)


@pytest.fixture
async def store(engine: EngineHandle) -> AsyncIterator[Store]:
    s = engine.new_store()
    await s.open()
    try:
        yield s
    finally:
        await s.close()
