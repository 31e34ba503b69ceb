"""SQLite: an accept's job binds no value through the sqlite3 module's adaptation (session 53).

Each None, bool or bytes value bound goes through the module's adaptation protocol (a key
tuple, a dict lookup, the adapter's call: ~1,300 instructions a value), inside the write lock
every process waits for. `SqliteStore.accept` writes its statements' Nones into their text as
NULL, numbers the key-and-facts statement's named parameters and passes its bytes as bytearray,
all before the lock (`sqlite_binds`). These tests count the adaptations of a real accept and
hold what it stores to what it stored before: NULLs, blobs (the empty ones too), the charge.
"""

from __future__ import annotations

import sqlite3
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge.store.models import AcceptBatch  # noqa: E402
from bridge.store.sqlite import SqliteStore  # noqa: E402
from tests.integration.test_sqlite_accept_cursor import MIN, send  # noqa: E402
from tests.integration.test_sqlite_accept_cursor import store as store  # noqa: E402
from tests.integration.test_store_rules import NOW, billed, message  # noqa: E402


@contextmanager
def adaptations() -> Iterator[Counter[str]]:
    """The adapters of None, bool and bytes replaced by counting ones for the block."""
    counts: Counter[str] = Counter()
    kinds = (type(None), bool, bytes)
    saved = {k: sqlite3.adapters[(k, sqlite3.PrepareProtocol)] for k in kinds}

    def counting(kind: type, real: Any) -> Any:
        def adapt(value: Any) -> Any:
            counts[kind.__name__] += 1
            return real(value)

        return adapt

    for kind, real in saved.items():
        sqlite3.register_adapter(kind, counting(kind, real))
    try:
        yield counts
    finally:
        for kind, real in saved.items():
            sqlite3.register_adapter(kind, real)


def _rows(store: SqliteStore, sql: str) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(store.path)) as db:
        return db.execute(sql).fetchall()


async def test_an_accepted_send_adapts_no_value(store: SqliteStore) -> None:
    with adaptations() as counts:
        out = await store.accept(send(1, "n1"), NOW)
    assert out.accepted
    # The message row's empty columns, the segment's and the record's bytes, the facts'
    # absent template, the charge's expiry: all were adapted, one by one, in the lock.
    assert counts == Counter(), counts


async def test_what_it_stores_is_unchanged(store: SqliteStore) -> None:
    assert (await store.accept(send(1, "n1"), NOW)).accepted
    assert _rows(
        store,
        "SELECT client_ref, sender, template, scheduled_at, expires_at, kind, "
        "typeof(client_ref), typeof(kind), sign_name, price_class FROM messages",
    ) == [("ref-m1", None, None, None, None, None, "text", "null", "Acme", "D")]
    assert _rows(
        store, "SELECT short_message, tlvs, typeof(short_message), typeof(tlvs) FROM segments"
    ) == [(b"m1/1", b"", "blob", "blob")]
    assert _rows(store, "SELECT response, typeof(response) FROM idempotency") == [
        (b'{"batch_id":"m1"}', "blob")
    ]
    assert _rows(
        store, "SELECT kind, amount, pocket, ref, expires_at FROM ledger WHERE kind='charge'"
    ) == [("charge", -300, "cash", "m1", None)]
    assert {p.pocket: (p.amount, p.expires_at) for p in await store.get_pockets("acc_a")} == {
        "cash": (700, None)
    }


async def test_rows_with_their_nones_in_different_places(store: SqliteStore) -> None:
    # Two messages of one batch, one without a client reference, the other with an expiry:
    # they cannot share one text with NULLs in it, so they are bound as they were (Nones
    # adapted).
    a = replace(message("ma"), client_ref=None)
    b = replace(message("mb"), expires_at=NOW + 60 * MIN)
    batch = AcceptBatch(
        "acc_a",
        (a, b),
        None,
        None,
        key_id="K1",
        nonce="n2",
        nonce_expires_at=NOW + 10 * MIN,
        account_version=NOW,
        rules=billed(a, b, amount=100),
    )
    assert (await store.accept(batch, NOW)).accepted
    assert _rows(store, "SELECT id, client_ref, expires_at FROM messages ORDER BY id") == [
        ("ma", None, None),
        ("mb", "ref-mb", NOW + 60 * MIN),
    ]
    assert {p.pocket: p.amount for p in await store.get_pockets("acc_a")} == {"cash": 800}


async def test_a_batch_of_no_message_is_accepted_as_before(store: SqliteStore) -> None:
    # The store's contract takes any number of messages, PostgreSQL's accept and SQLite's before
    # session 54 (`rows_without_nones` of no rows) none as well; the known-Nones rows read the
    # first message's pattern (an IndexError before the job, a 500 to a caller).
    out = await store.accept(AcceptBatch("acc_a", (), None, None), NOW)
    assert out.accepted
    assert _rows(store, "SELECT count(*) FROM messages") == [(0,)]


@pytest.mark.parametrize("status, accepted", [("approved", True), ("rejected", False)])
async def test_the_facts_read_with_the_key_still_decide(
    store: SqliteStore, status: str, accepted: bool
) -> None:
    # The sign's status comes from the key's statement, its parameters numbered now: a sign
    # not approved is refused as before, and nothing of the refused send is kept.
    with closing(sqlite3.connect(store.path)) as db, db:
        db.execute("UPDATE signs SET status=? WHERE account_id='acc_a'", (status,))
    out = await store.accept(send(1, "n1"), NOW)
    assert out.accepted is accepted, out
    assert len(_rows(store, "SELECT id FROM messages")) == (1 if accepted else 0)
    assert len(_rows(store, "SELECT key FROM idempotency")) == (1 if accepted else 0)
