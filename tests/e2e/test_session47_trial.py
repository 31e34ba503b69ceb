"""Session 47: an operator's trial of the PostgreSQL scale-out (each test here failed before its
fix), with real daemons, a real throw-away cluster (tests/pg_cluster.py) and the simulator.

1. The schema owned by one role (it runs `db migrate`), the daemons run as another with the
   grants README gave: no daemon started, `permission denied for schema public`. Every open ran
   `CREATE TABLE IF NOT EXISTS schema_version`, which needs CREATE on the schema even when the
   table is there (PostgreSQL 15 no longer grants it to every role on `public`).
2. README asked only `GRANT USAGE ON SEQUENCE messages_seq`: with it the daemon (once it could
   start) accepted sends, but a top-up, an operator's audit entry and more failed on other
   sequences (`permission denied for sequence ledger_id_seq`). A role lacking a grant is now
   refused at the start, naming what it lacks and the GRANTs that give it.
"""

from __future__ import annotations

import asyncio
import secrets
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse, urlunparse

import asyncpg
import pytest

from tests.e2e.harness import client_for, final_status, wait_until
from tests.e2e.test_pg_fleet_review import instance, migrate, start_sim


async def _split_roles(dsn: str) -> tuple[str, str, str]:
    """The database handed to a new schema-owning role, and a new role for the daemons (roles
    are the cluster's: new names each time). Returns (owner's DSN, daemon's DSN, daemon role)."""
    tag = secrets.token_hex(4)
    owner, daemon = f"own_{tag}", f"run_{tag}"
    db = urlparse(dsn).path.lstrip("/")
    conn = await asyncpg.connect(dsn)
    try:
        for role in (owner, daemon):
            await conn.execute(f"CREATE ROLE {role} LOGIN")
        await conn.execute(f'ALTER DATABASE "{db}" OWNER TO {owner}')
        await conn.execute(f"ALTER SCHEMA public OWNER TO {owner}")
        # What PostgreSQL 15 gives every role on a new database's public schema: USAGE only.
        await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    finally:
        await conn.close()

    def as_role(role: str) -> str:
        u = urlparse(dsn)
        return urlunparse(u._replace(netloc=f"{role}@{u.hostname}:{u.port}"))

    return as_role(owner), as_role(daemon), daemon


async def _grant(owner_dsn: str, grants: list[str], daemon_role: str) -> None:
    conn = await asyncpg.connect(owner_dsn)
    try:
        for g in grants:
            await conn.execute(g.replace("{role}", daemon_role))
    finally:
        await conn.close()


README_GRANTS = [
    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
    "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
]


@pytest.mark.slow
async def test_a_daemon_role_that_does_not_own_the_schema_runs_with_the_readme_grants(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Before: the daemon exited at once (`permission denied for schema public`)."""
    owner_dsn, daemon_dsn, role = await _split_roles(pg_dsn)
    sim = await start_sim(tmp_path)
    owner = instance(tmp_path, "as-owner", owner_dsn, sim)
    d = instance(tmp_path, "as-daemon", daemon_dsn, sim)
    try:
        await migrate(owner)  # the schema's owner runs the migrations
        await _grant(owner_dsn, README_GRANTS, role)
        d.start()
        await d.wait_ready(30)
        creds = await d.account("acme")  # --topup: the ledger's sequence
        async with client_for(d.port, creds) as c:
            sent = await c.send("+8613800138000", text="hello")
            done = await final_status(c, sent["messages"][0]["id"], 20)
        assert done["status"] == "delivered"
    finally:
        d.stop()
        await sim.stop()


@pytest.mark.slow
async def test_a_daemon_role_lacking_grants_is_refused_at_the_start_naming_them(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Only the grant README named (messages_seq). Before: the daemon could not start for
    another reason (the CREATE above); with that fixed alone it started, and a top-up failed
    with `permission denied for sequence ledger_id_seq`."""
    grants = [
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        "GRANT USAGE ON SEQUENCE messages_seq TO {role}",
    ]
    owner_dsn, daemon_dsn, role = await _split_roles(pg_dsn)
    sim = await start_sim(tmp_path)
    owner = instance(tmp_path, "as-owner", owner_dsn, sim)
    d = instance(tmp_path, "as-daemon", daemon_dsn, sim)
    try:
        await migrate(owner)
        await _grant(owner_dsn, grants, role)
        d.start()
        assert d.proc is not None
        rc = await asyncio.to_thread(d.proc.wait, 30)
        out = d.log.read_text()
        assert rc == 1, out[-2000:]
        assert f"STORE_UNUSABLE: the database role {role} lacks USAGE on the sequences" in out
        assert "ledger_id_seq" in out and "messages_seq" not in out
        assert f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}" in out
        # CLI commands open the store the same way: told the same, not half-done.
        p = subprocess.run(
            [sys.executable, "-m", "bridge.cli", "bill", "topup", "x", "1", "-c", str(d.path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert p.returncode == 1 and "lacks USAGE on the sequences" in p.stderr, p.stderr
        # Granted as told, it starts.
        await _grant(owner_dsn, README_GRANTS, role)
        d.start()
        await d.wait_ready(30)
        await wait_until(lambda: "bind slot taken" in d.log.read_text(), 10)
    finally:
        d.stop()
        await sim.stop()
