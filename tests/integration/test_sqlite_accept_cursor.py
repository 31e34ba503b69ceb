"""SQLite: an accept's statements run on one cursor of the job, not a cursor each.

`sqlite3.Connection.execute` makes a cursor for every statement (an object and a weak reference
the connection keeps in a list, both dropped after): eight of them per one-part send, inside the
write lock every process waits for. The accept's job makes one (`SqliteStore.accept`). These
tests count, on a real store, what goes through the connection itself during an accept, and
hold the accept's answers to what they were: an accepted send stored with its charge, a replay
answered from its record, a spent nonce refused with nothing kept of the refused request.
"""

from __future__ import annotations

import sqlite3
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge.domain.ledger import topup  # noqa: E402
from bridge.store.models import (  # noqa: E402
    AcceptBatch,
    AppKey,
    IdempotencyRecord,
)
from bridge.store.sqlite import SqliteStore  # noqa: E402
from tests.integration.test_store_rules import NOW, account, billed, message, sign  # noqa: E402

MIN = 60_000


class Counting:
    """The store's connection, counting the calls made on the connection itself."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.__dict__["_conn"] = conn
        self.__dict__["calls"] = Counter()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._conn, name)
        if name in ("execute", "executemany", "cursor"):
            self.calls[name] += 1
        return attr


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = SqliteStore(tmp_path / "bridge.db")
    await s.open()
    await s.create_account(account())
    await sign(s)
    await s.append_ledger("acc_a", topup(1000, NOW, "funds"))
    await s.add_key(AppKey("K1", "acc_a", b"sealed", "active", NOW), max_active=2)
    yield s
    await s.close()


def send(n: int, nonce: str, key: str = "k1") -> AcceptBatch:
    m = message(f"m{n}")
    return AcceptBatch(
        "acc_a",
        (m,),
        key,
        IdempotencyRecord(f"hash-{key}", 202, f'{{"batch_id":"m{n}"}}'.encode()),
        NOW + 24 * 60 * MIN,
        key_id="K1",
        nonce=nonce,
        nonce_expires_at=NOW + 10 * MIN,
        account_version=NOW,
        rules=billed(m, amount=300),
    )


async def test_an_accept_makes_one_cursor_for_its_statements(store: SqliteStore) -> None:
    real = store._runner._conn
    assert real is not None
    counting = Counting(real)
    store._runner._conn = counting  # type: ignore[assignment]
    try:
        out = await store.accept(send(1, "n1"), NOW)
    finally:
        store._runner._conn = real
    assert out.accepted
    # BEGIN IMMEDIATE and COMMIT on the connection, and the runner's writes of the sums the
    # batch's accepts held (the daily counts and the pockets: session 53), one executemany of
    # each for all the batch's accounts since session 56; the job's six statements on its cursor.
    assert counting.calls == Counter(execute=2, executemany=2, cursor=1), counting.calls


async def test_the_answers_are_the_accepts_own(store: SqliteStore) -> None:
    assert (await store.accept(send(1, "n1"), NOW)).accepted
    replay = await store.accept(send(2, "n2"), NOW + 1)  # same key, same request
    assert replay.existing == IdempotencyRecord("hash-k1", 202, b'{"batch_id":"m1"}')
    spent = await store.accept(send(3, "n1", key="k3"), NOW + 2)
    assert (spent.accepted, spent.auth_refusal) == (False, "nonce_reused")
    assert await store.get_idempotency("acc_a", "k3", NOW + 3) is None  # taken back
    assert [m.id for m in await store.list_messages("acc_a")] == ["m1"]
    assert {p.pocket: p.amount for p in await store.get_pockets("acc_a")} == {"cash": 700}
