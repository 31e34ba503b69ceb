"""SQLite: the ledger's ids without AUTOINCREMENT (session 59, migration 0038).

With AUTOINCREMENT SQLite reads and writes the ledger's row of `sqlite_sequence` at every insert
(~5.5 k instructions of a charge's insert, inside the store's write lock). A plain INTEGER PRIMARY
KEY gives the largest id + 1 as well, and nothing deletes ledger rows, so the ids are the same.
The migration rebuilds the table on an existing store: these tests hold it to every row and id
(gaps in the ids included), its index, the ids that come after, and an accept's charge that no
longer touches `sqlite_sequence`.
"""

from __future__ import annotations

import sqlite3
import sys
from contextlib import closing
from pathlib import Path
from types import SimpleNamespace
from typing import Any

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge.domain.ledger import topup  # noqa: E402
from bridge.store import migrate  # noqa: E402
from bridge.store.sqlite import SqliteStore  # noqa: E402
from tests.integration.test_sqlite_accept_cursor import send  # noqa: E402
from tests.integration.test_sqlite_accept_cursor import store as store  # noqa: E402
from tests.integration.test_store_rules import NOW  # noqa: E402
from tests.store_engines import schema_before  # noqa: E402


def _sql(path: Path, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute(sql, args).fetchall()
        db.commit()
    return rows


def _ledger_sql(path: Path) -> str:
    return str(_sql(path, "SELECT sql FROM sqlite_master WHERE name='ledger'")[0][0])


async def test_an_accepts_charge_takes_the_next_id_without_a_sequence(store: SqliteStore) -> None:
    assert "AUTOINCREMENT" not in _ledger_sql(store.path).upper()
    before = _sql(store.path, "SELECT MAX(id) FROM ledger")[0][0]
    assert (await store.accept(send(1, "n1"), NOW)).accepted
    assert (await store.accept(send(2, "n2", "k2"), NOW)).accepted
    rows = _sql(
        store.path, "SELECT id, kind, amount, ref FROM ledger WHERE id>? ORDER BY id", (before,)
    )
    assert [r[0] for r in rows] == [before + 1, before + 2]
    assert [r[1:3] for r in rows] == [("charge", -300), ("charge", -300)]
    # The ledger no longer keeps a sequence (the other AUTOINCREMENT tables may).
    assert _sql(store.path, "SELECT * FROM sqlite_sequence WHERE name='ledger'") == []


async def test_the_migration_keeps_every_row_and_id(store: SqliteStore) -> None:
    for i in range(5):
        await store.append_ledger("acc_a", topup(100 + i, NOW + i, f"t{i}"))
    assert (await store.accept(send(1, "n1"), NOW)).accepted
    await store.close()
    # Gaps in the ids (an operator's DELETE: nothing of the bridge's deletes ledger rows).
    _sql(store.path, "DELETE FROM ledger WHERE ref IN ('t1', 't3')")
    engine = SimpleNamespace(name="sqlite", location=str(store.path))
    await schema_before(engine, 38, 10_000)  # type: ignore[arg-type]
    assert "AUTOINCREMENT" in _ledger_sql(store.path).upper()
    rows = _sql(store.path, "SELECT * FROM ledger ORDER BY id")
    top = rows[-1][0]
    assert _sql(store.path, "SELECT seq FROM sqlite_sequence WHERE name='ledger'") == [(top,)]

    reopened = SqliteStore(store.path)
    await reopened.open()
    try:
        assert await reopened.schema_version() == migrate.latest("sqlite") >= 38
        assert "AUTOINCREMENT" not in _ledger_sql(store.path).upper()
        assert _sql(store.path, "SELECT * FROM ledger ORDER BY id") == rows
        assert _sql(store.path, "SELECT * FROM sqlite_sequence WHERE name='ledger'") == []
        indexes = _sql(
            store.path,
            "SELECT name, sql FROM sqlite_master WHERE type='index' AND tbl_name='ledger'",
        )
        assert indexes == [
            ("ledger_account_ref", "CREATE INDEX ledger_account_ref ON ledger(account_id, ref)")
        ]
        # What comes after: the top id + 1, as AUTOINCREMENT gave it.
        assert (await reopened.accept(send(2, "n2", "k2"), NOW)).accepted
        await reopened.append_ledger("acc_a", topup(7, NOW, "after"))
        ids = [
            r[0] for r in _sql(store.path, "SELECT id FROM ledger WHERE id>? ORDER BY id", (top,))
        ]
        assert ids == [top + 1, top + 2]
        page = await reopened.ledger_page("acc_a", 0, 100)
        assert [e.id for e in page] == sorted(r[0] for r in rows if r[1] == "acc_a") + ids
    finally:
        await reopened.close()
