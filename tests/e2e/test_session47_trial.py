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
3. Two instances run from one file published two configuration generations (`smpp-bridge
   status`'s `config:`, `/admin/queue`, `smpp_bridge_config_generation`): each keyed its HMAC
   with a random key of its own. The figure could not tell a file forgotten on one host; it is
   now keyed from the master key, which the fleet shares.
4. At every database restart each instance logged its unbinds as "smpp bind slot taken by
   another instance" and "smpp bind handed over to another instance": the slot's lock had gone
   with the connection, nobody had taken it, and the lines read as a slot bound twice (what
   the carrier's limit forbids).
5. `smpp-bridge status` (and `/admin/smscs`) of one instance showed its own binds (`BINDS 1/2`)
   and throughput only, beside the queue and webhooks of the whole fleet: half the binds read
   as down, half the traffic as all of it. Each SMSC now has `fleet` (live instances, binds up
   and submits/s over them all, from their heartbeats), and status prints a `fleet:` line.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import aiohttp
import asyncpg
import pytest

from bridge.reload import GENERATION_KEY_ENV
from bridge.status import fetch, render
from tests.e2e.harness import (
    ADMIN_TOKEN,
    DaemonProcess,
    client_for,
    final_status,
    free_port,
    wait_until,
)
from tests.e2e.test_pg_fleet_review import PartitionProxy, instance, migrate, start_sim


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


async def _generation(port: int) -> tuple[float, str]:
    """The process's `smpp_bridge_config_generation` gauge and `GET /admin/queue`'s config."""
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{port}/metrics") as r:
            text = await r.text()
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with s.get(f"http://127.0.0.1:{port}/admin/queue", headers=headers) as r:
            queue = await r.json()
    gauge = next(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("smpp_bridge_config_generation{")
    )
    return gauge, queue["config"]["generation"]


@pytest.mark.slow
async def test_instances_on_one_file_publish_one_configuration_generation(
    tmp_path: Path, pg_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two instances run from one file (their ports and numbers from the environment, as in
    config/compose.yaml). Before: each published its own value for the same text (a random key
    per daemon), so a fleet could not be checked for a file forgotten on one host."""
    # Not inherited from this process (an in-process daemon of another test sets it).
    monkeypatch.delenv(GENERATION_KEY_ENV, raising=False)
    sim = await start_sim(tmp_path)
    a = instance(tmp_path, "inst-a", pg_dsn, sim, server={"instances": 2})
    (tmp_path / "inst-b").mkdir()
    b = DaemonProcess(tmp_path / "inst-b", a.cfg)  # the same text
    b.port = free_port()
    assert b.path.read_text() == a.path.read_text()
    try:
        await migrate(a)
        for n, d in enumerate((a, b)):
            monkeypatch.setenv("SMPP_BRIDGE_PORT", str(d.port))
            monkeypatch.setenv("SMPP_BRIDGE_INSTANCE", str(n))
            d.start()
        for d in (a, b):
            await d.wait_ready(30)
        ga, gb = await _generation(a.port), await _generation(b.port)
        assert ga == gb, (ga, gb)
        # One instance given another file (reloaded): the values part.
        b.path.write_text(b.path.read_text().replace("level: INFO", "level: WARNING"))
        assert b.proc is not None
        b.proc.send_signal(signal.SIGHUP)

        async def parted() -> bool:
            return (await _generation(b.port))[1] != ga[1]

        await wait_until(parted, 15, 0.2)
        assert (await _generation(a.port)) == ga
    finally:
        a.stop()
        b.stop()
        await sim.stop()


@pytest.mark.slow
async def test_losing_the_database_does_not_log_the_binds_as_taken_by_another_instance(
    tmp_path: Path, pg_dsn: str
) -> None:
    """The only instance, cut off from its database (as in a server restart): it gives its binds
    up, as it must. Before: each unbind was logged "smpp bind slot taken by another instance",
    on every instance of a fleet at every database restart, which read as a slot bound twice."""
    sim = await start_sim(tmp_path)
    proxy = PartitionProxy(pg_dsn)
    await proxy.start()
    a = instance(tmp_path, "inst-a", proxy.dsn, sim)
    try:
        await migrate(a)
        a.start()
        await a.wait_ready(30)
        await wait_until(lambda: sim.binds_by_owner() == {"inst-a": 1}, 20)
        proxy.cut(server_notices=True)
        await wait_until(lambda: sim.binds_by_owner() == {}, 20, 0.1)
        log = a.log.read_text()
        assert "taken by another instance" not in log
        assert "handed over to another instance" not in log
        assert "giving up bind slots" in log  # the coordinator's reason
        assert "smpp bind slot no longer held by this instance" in log
    finally:
        proxy.heal()
        a.stop()
        await proxy.stop()
        await sim.stop()


@pytest.mark.slow
async def test_status_of_one_instance_shows_the_fleets_binds_and_throughput(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Two binds for the fleet, one on each instance, and traffic through both. Before: each
    instance's `smpp-bridge status` said `BINDS 1/2` and its own throughput only, beside the
    whole fleet's queue, with nothing to say the other bind was up elsewhere."""
    sim = await start_sim(tmp_path)
    a = instance(tmp_path, "inst-a", pg_dsn, sim, binds=2)
    b = instance(tmp_path, "inst-b", pg_dsn, sim, binds=2)
    try:
        await migrate(a)
        a.start()
        await a.wait_ready(30)
        b.start()
        await b.wait_ready(30)
        await wait_until(lambda: sim.binds_by_owner() == {"inst-a": 1, "inst-b": 1}, 30, 0.1)
        creds = await a.account("acme")
        async with client_for(a.port, creds) as ca, client_for(b.port, creds) as cb:
            for i in range(20):
                await (ca if i % 2 else cb).send(f"+86138001380{i:02d}", text=f"m{i}")

        async def fleet_seen() -> Any:
            st = await asyncio.to_thread(fetch, f"http://127.0.0.1:{a.port}", ADMIN_TOKEN)
            f = st.smscs[0]["fleet"]
            return st if f and f["instances"] == 2 and f["binds_up"] == 2 else None

        st = await wait_until(fleet_seen, 10, 0.3)
        assert st.smscs[0]["binds_up"] == 1  # this instance's own, as before
        out = render(st)
        assert "fleet: 2 live instances; binds up sim 2/2;" in out, out
        assert "all SMSCs, this instance" in out
        # One instance gone: the other says so within the heartbeats' 5 s.
        b.stop()

        async def alone() -> bool:
            st = await asyncio.to_thread(fetch, f"http://127.0.0.1:{a.port}", ADMIN_TOKEN)
            return st.smscs[0]["fleet"]["instances"] == 1

        await wait_until(alone, 15, 0.3)
    finally:
        a.stop()
        b.stop()
        await sim.stop()


async def test_db_migrate_by_a_role_that_may_not_change_the_schema_says_what_to_do(
    tmp_path: Path, pg_dsn: str
) -> None:
    """Before: `InsufficientPrivilegeError: permission denied for schema public`, naming
    neither the migration nor the fix."""
    _owner_dsn, daemon_dsn, _role = await _split_roles(pg_dsn)
    sim = await start_sim(tmp_path)
    d = instance(tmp_path, "as-daemon", daemon_dsn, sim)
    try:
        p = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bridge.cli", "db", "migrate", "-c", str(d.path)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert p.returncode == 1
        assert "STORE_UNUSABLE: the database role may not create the schema" in p.stderr
        assert "as the role that owns the schema" in p.stderr, p.stderr
    finally:
        await sim.stop()
