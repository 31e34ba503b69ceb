"""SQLite: the store's connection keeps the accept's statements prepared across a daemon's mix
of sends (review of session 53).

The accept writes each None of a message row into its statement's text (sqlite_binds): one text
per pattern of absent optional fields. The sqlite3 module keeps a connection's last
`cached_statements` prepared statements, 128 by default; a mix of more texts than that prepared
its inserts again on every accept, inside the write lock (scripts/bench_accept_texts.py).
SQLite calls a connection's authorizer when it prepares a statement, never when it runs one
already prepared: this counts the message inserts prepared in a second round of the same mix.
"""

from __future__ import annotations

import itertools
import sqlite3
from dataclasses import replace
from pathlib import Path
from typing import Any

from bridge.store.models import AcceptBatch
from bridge.store.sqlite import SqliteStore
from tests.integration.test_store_rules import NOW, account, message


def _mix(round_: int) -> list[AcceptBatch]:
    out = []
    for i, (cref, sender, sched, exp, wire, price, sign, tpl) in enumerate(
        itertools.product(*[(None, 1)] * 8)
    ):
        m = replace(
            message(f"m{round_}_{i}", f"+86138{i:08d}"),
            client_ref=cref and "r",
            sender=sender and "1065",
            scheduled_at=sched and NOW + 1,
            expires_at=exp and NOW + 5,
            wire=wire and 3,
            price_class=price and "D",
            sign_name=sign and "Acme",
            template=tpl and "T1",
        )
        out.append(AcceptBatch("acc_a", (m,), None, None, 0, rules=None))
    return out


async def test_a_mix_of_256_message_texts_is_prepared_once(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "cache.db")
    await store.open()
    try:
        await store.create_account(account())
        conn = store._runner._conn
        assert conn is not None
        prepared: list[str] = []

        def authorizer(action: int, table: Any, *_: Any) -> int:
            if action == sqlite3.SQLITE_INSERT and table == "messages":
                prepared.append(table)
            return sqlite3.SQLITE_OK

        conn.set_authorizer(authorizer)
        for b in _mix(1):
            assert (await store.accept(b, NOW)).accepted
        assert len(prepared) == 256  # one text per pattern of Nones, each prepared once
        prepared.clear()
        for b in _mix(2):
            assert (await store.accept(b, NOW)).accepted
        assert prepared == [], f"{len(prepared)} message inserts prepared again"
    finally:
        await store.close()
