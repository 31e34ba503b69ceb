"""The grants check on a role that may not use the schema, and a read-only (monitoring) role
(session 48), against real roles of a throw-away cluster (SMPP_BRIDGE_CI=1).

- A role without USAGE on the schema does not see the migrations' schema_version: the store
  took the database for a new one and told it "may not create the schema" (run `db migrate` as
  the owner: done already). Now the grants check names the missing USAGE and its GRANT.
- A role with SELECT alone was refused by the write grants check even for the CLI's commands
  that change nothing (`account list`, `message show`, `bill check`...): a monitoring role, a
  normal thing for an operator to have, could run none. Such commands now open the store for
  reads only (PostgresStore.read_only), which asks SELECT on the tables.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import pytest
import yaml

from bridge.store.base import StoreUnusableError
from bridge.store.models import Account
from bridge.store.postgres import PostgresStore
from tests.e2e.harness import config_dict
from tests.e2e.test_session47_trial import README_GRANTS, _grant, _split_roles
from tests.integration.test_store import NOW, accept, account, message

pytestmark = pytest.mark.postgres

_ROOT = str(Path(__file__).resolve().parents[2])
SELECT_ONLY = ["GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}"]


async def _migrated(owner_dsn: str) -> None:
    store = PostgresStore(owner_dsn, min_size=1, max_size=2)
    await store.open()
    try:
        await store.create_account(account())
        await accept(store, message("m1"))
    finally:
        await store.close()


async def test_a_role_without_usage_on_the_schema_is_told_to_grant_it(pg_dsn: str) -> None:
    owner_dsn, daemon_dsn, role = await _split_roles(pg_dsn)
    await _migrated(owner_dsn)
    await _grant(owner_dsn, [*README_GRANTS, "REVOKE USAGE ON SCHEMA public FROM PUBLIC"], role)
    with pytest.raises(StoreUnusableError) as refused:
        await PostgresStore(daemon_dsn, min_size=1, max_size=2).open()
    said = str(refused.value)
    assert f"the database role {role} lacks USAGE on the schema public" in said, said
    assert f"GRANT USAGE ON SCHEMA public TO {role};" in said
    assert "create the schema" not in said
    # Its table grants are there: only USAGE is asked.
    assert "ALL TABLES" not in said and "ALL SEQUENCES" not in said
    await _grant(owner_dsn, ["GRANT USAGE ON SCHEMA public TO {role}"], role)
    store = PostgresStore(daemon_dsn, min_size=1, max_size=2)
    await store.open()
    await store.close()


async def test_a_new_database_whose_schema_the_role_may_not_use(pg_dsn: str) -> None:
    """Nothing migrated yet: asyncpg's "no schema has been selected to create in" came out raw;
    now the fix is named (the owner runs `db migrate`)."""
    owner_dsn, daemon_dsn, role = await _split_roles(pg_dsn)
    await _grant(owner_dsn, ["REVOKE USAGE ON SCHEMA public FROM PUBLIC"], role)
    with pytest.raises(StoreUnusableError) as refused:
        await PostgresStore(daemon_dsn, min_size=1, max_size=2).open()
    assert "the database role may not create the schema" in str(refused.value)
    assert "smpp-bridge db migrate` as the role that owns the schema" in str(refused.value)


async def test_without_usage_nor_grants_every_grant_is_named(pg_dsn: str) -> None:
    owner_dsn, daemon_dsn, role = await _split_roles(pg_dsn)
    await _migrated(owner_dsn)
    await _grant(owner_dsn, ["REVOKE USAGE ON SCHEMA public FROM PUBLIC"], role)
    with pytest.raises(StoreUnusableError) as refused:
        await PostgresStore(daemon_dsn, min_size=1, max_size=2).open()
    said = str(refused.value)
    assert f"GRANT USAGE ON SCHEMA public TO {role}; GRANT SELECT, INSERT, UPDATE" in said, said
    assert f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role};" in said


async def test_a_select_only_role_opens_the_store_for_reads(pg_dsn: str) -> None:
    owner_dsn, daemon_dsn, role = await _split_roles(pg_dsn)
    await _migrated(owner_dsn)
    await _grant(owner_dsn, SELECT_ONLY, role)
    with pytest.raises(StoreUnusableError) as refused:  # to write, as before
        await PostgresStore(daemon_dsn, min_size=1, max_size=2).open()
    assert "lacks SELECT, INSERT, UPDATE or DELETE on" in str(refused.value)
    store = PostgresStore(daemon_dsn, min_size=1, max_size=2, read_only=True)
    await store.open()
    try:
        assert [a.id for a in await store.list_accounts()] == ["acc_a"]
        got = await store.get_message("acc_a", "m1")
        assert got is not None and got.state == "queued"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):  # a write: the server refuses
            await store.create_account(Account(id="x", name="x", created_at=NOW, updated_at=NOW))
    finally:
        await store.close()


async def test_a_role_without_select_is_refused_even_for_reads(pg_dsn: str) -> None:
    owner_dsn, daemon_dsn, role = await _split_roles(pg_dsn)
    await _migrated(owner_dsn)
    await _grant(owner_dsn, ["GRANT SELECT ON messages TO {role}"], role)
    with pytest.raises(StoreUnusableError) as refused:
        await PostgresStore(daemon_dsn, min_size=1, max_size=2, read_only=True).open()
    said = str(refused.value)
    assert "lacks SELECT on " in said and "accounts" in said, said
    assert f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role};" in said
    assert "SEQUENCES" not in said


def _cli(tmp_path: Path, dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "bridge.yaml"
    path.write_text(yaml.safe_dump(config_dict(tmp_path, store={"engine": "postgres", "dsn": dsn})))
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args, "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": _ROOT},
    )


async def test_the_cli_reads_as_a_select_only_role_and_is_refused_a_change(
    tmp_path: Path, pg_dsn: str
) -> None:
    owner_dsn, daemon_dsn, role = await _split_roles(pg_dsn)
    await _migrated(owner_dsn)
    await _grant(owner_dsn, SELECT_ONLY, role)
    listed = _cli(tmp_path, daemon_dsn, "account", "list")
    assert listed.returncode == 0, listed.stderr
    assert [a["id"] for a in json.loads(listed.stdout)] == ["acc_a"]
    shown = _cli(tmp_path, daemon_dsn, "message", "list", "acc_a")
    assert shown.returncode == 0, shown.stderr
    assert "m1" in shown.stdout
    changed = _cli(tmp_path, daemon_dsn, "account", "disable", "acc_a")
    assert changed.returncode == 1
    assert f"STORE_UNUSABLE: the database role {role} lacks SELECT, INSERT" in changed.stderr
    assert "Traceback" not in changed.stderr
