"""Which store failures a client may retry (503 STORE_UNAVAILABLE) and which are our faults."""

from __future__ import annotations

import sqlite3

import asyncpg.exceptions as pg

from bridge.store.base import StoreClosedError, is_unavailable


def _sqlite_error(sql: str, setup: str = "") -> sqlite3.Error:
    c = sqlite3.connect(":memory:")
    if setup:
        c.execute(setup)
    try:
        c.execute(sql)
    except sqlite3.Error as exc:
        return exc
    raise AssertionError("no error")


def test_sqlite_outages_are_retryable_and_bad_sql_is_not(tmp_path) -> None:
    path = tmp_path / "l.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        locked = exc
    assert is_unavailable(locked)  # busy past the timeout
    assert not is_unavailable(_sqlite_error("SELECT nope FROM t", "CREATE TABLE t (x)"))
    assert not is_unavailable(_sqlite_error("SELEC 1"))
    bad = tmp_path / "missing-dir" / "x.db"
    try:
        sqlite3.connect(bad).execute("SELECT 1")
    except sqlite3.OperationalError as exc:
        assert is_unavailable(exc)  # cannot open
    holder.close()
    other.close()


def test_connection_and_failover_errors_are_retryable() -> None:
    assert is_unavailable(StoreClosedError("store is closed"))
    assert is_unavailable(ConnectionResetError())
    assert is_unavailable(TimeoutError())
    assert is_unavailable(OSError(28, "No space left on device"))
    assert is_unavailable(pg.ConnectionDoesNotExistError("gone"))
    assert is_unavailable(pg.InterfaceError("connection is closed"))
    assert is_unavailable(pg.AdminShutdownError("terminating connection"))
    assert is_unavailable(pg.CannotConnectNowError("starting up"))
    assert is_unavailable(pg.TooManyConnectionsError("too many"))
    assert is_unavailable(pg.ReadOnlySQLTransactionError("read-only transaction"))


def test_faults_in_our_code_are_not() -> None:
    assert not is_unavailable(KeyError("x"))
    assert not is_unavailable(RuntimeError("a bug"))
    assert not is_unavailable(pg.UniqueViolationError("duplicate key"))
    assert not is_unavailable(pg.UndefinedColumnError("no such column"))
