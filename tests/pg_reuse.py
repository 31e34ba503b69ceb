"""`pg_dsn` as the worker's migrated database, for a module whose tests (and the fixtures they
share, tests/pg_walks.py's `pg` among them) open a store on their database and are not about
migrating one: `pg_dsn = pg_reuse.migrated_pg_dsn` at the module's top.

Why: `pg_dsn` creates an empty database that the test's store then migrates, and drops it after:
~1-2 s of wall a test on a busy 2-core machine (37 migrations and the CREATE and DROP DATABASE,
which write the template through the WAL), where `pg_migrated_dsn` puts the worker's migrated
database back in tens of milliseconds (tests/pg_cluster.py's `migrated_database`: its rows and
sequences as migrated, any session left on it ended, a new one made when a test changed its
schema). A store's open on it finds every migration done, as a restarted daemon's does. Tests
about migrating (an empty database's first open, instances migrating at once, an upgrade) and
about what a new database's statistics are keep `pg_dsn` itself.
"""

from __future__ import annotations

import pytest


@pytest.fixture(name="pg_dsn")
def migrated_pg_dsn(pg_migrated_dsn: str) -> str:
    """A DSN to a database as a fresh migration leaves it (the worker's, put back)."""
    return pg_migrated_dsn
