"""Session 47's review (h7): the grants check at a PostgreSQL store's start
(bridge/store/postgres_grants.py) against a daemon role given its rights otherwise than README's
GRANTs, with a real throw-away cluster (SMPP_BRIDGE_CI=1).

PostgreSQL lets nextval() run with USAGE or UPDATE on a sequence, and pg_sequence_last_value
with USAGE or SELECT. A role holding PostgreSQL 14's predefined pg_read_all_data and
pg_write_all_data (SELECT, and INSERT, UPDATE, DELETE, on every table and sequence) runs the
daemon, but the check asked for USAGE alone and refused it at the start.
"""

from __future__ import annotations

import asyncpg
import pytest

from bridge.domain.ledger import topup
from bridge.store.base import StoreUnusableError
from bridge.store.models import AcceptBatch, Account
from bridge.store.postgres import PostgresStore
from tests.e2e.test_session47_trial import _grant, _split_roles
from tests.messages import one_part

NOW = 1_700_000_000_000


async def _migrated(owner_dsn: str) -> None:
    store = PostgresStore(owner_dsn, min_size=1, max_size=2)
    await store.open()
    await store.close()


async def _works(store: PostgresStore) -> None:
    """What needs each sequence: a top-up (ledger_id_seq), an accept (messages_seq), a disable
    (pending_ends' serial, and messages_seq's last value)."""
    await store.create_account(Account(id="acc", name="acc", created_at=NOW, updated_at=NOW))
    await store.append_ledger("acc", topup(1_000_000, NOW, "funds"))
    msg = one_part("m1", "acc", "+8613800000001", NOW)
    assert (await store.accept(AcceptBatch("acc", (msg,), None, None), NOW)).accepted
    await store.update_account("acc", {"status": "disabled"}, NOW + 1)
    got = await store.get_message("acc", "m1")
    assert got is not None and got.state == "expired"


async def test_a_role_with_the_predefined_read_and_write_all_data_roles_starts_and_works(
    pg_dsn: str,
) -> None:
    owner_dsn, daemon_dsn, role = await _split_roles(pg_dsn)
    await _migrated(owner_dsn)
    await _grant(owner_dsn, [], role)
    conn = await asyncpg.connect(pg_dsn)  # the cluster's superuser grants the predefined roles
    try:
        await conn.execute(f"GRANT pg_read_all_data, pg_write_all_data TO {role}")
    finally:
        await conn.close()
    store = PostgresStore(daemon_dsn, min_size=1, max_size=4)
    await store.open()
    try:
        await _works(store)
    finally:
        await store.close()


async def test_a_role_with_update_but_no_select_on_messages_seq_is_still_refused(
    pg_dsn: str,
) -> None:
    """nextval works with UPDATE, but an end's boundary reads the sequence's last value, which
    needs SELECT or USAGE: refused at the start, naming the grant."""
    owner_dsn, daemon_dsn, role = await _split_roles(pg_dsn)
    await _migrated(owner_dsn)
    grants = [
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        "GRANT UPDATE ON ALL SEQUENCES IN SCHEMA public TO {role}",
    ]
    await _grant(owner_dsn, grants, role)
    store = PostgresStore(daemon_dsn, min_size=1, max_size=2)
    with pytest.raises(StoreUnusableError) as exc:
        await store.open()
    assert "messages_seq" in str(exc.value)
    assert f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};" in str(exc.value)
