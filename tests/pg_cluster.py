"""A throw-away PostgreSQL cluster for tests and benchmarks: `initdb` + `pg_ctl` in a temp dir.

Why our own cluster rather than a shared server: tests must be hermetic and runnable on any machine
with Debian's PostgreSQL server package, without a DBA. One cluster per test session (starting one
costs ~1 s); one fresh database per test, cloned from a template (~10 ms).

Where the binaries come from, in order: env PG_BIN, `pg_config --bindir`, Debian's
/usr/lib/postgresql/<newest>/bin. A ready server can be given instead with env
SMPP_BRIDGE_TEST_PG_DSN (a DSN to a database whose user may CREATE DATABASE).

initdb and pg_ctl refuse to run as root: as root they run as the `postgres` system user
(`runuser -u postgres`), with the data directory chowned to it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.ports import free_port

DSN_ENV = "SMPP_BRIDGE_TEST_PG_DSN"
CI_ENV = "SMPP_BRIDGE_CI"


class ClusterUnavailable(RuntimeError):
    """No PostgreSQL to test against; the message says why (a skip reason)."""


def find_bindir() -> Path | None:
    candidates: list[Path] = []
    if os.environ.get("PG_BIN"):
        candidates.append(Path(os.environ["PG_BIN"]))
    if shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                ["pg_config", "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        versions = sorted(
            (p for p in debian.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)
        )
        candidates += [v / "bin" for v in reversed(versions)]
    for c in candidates:
        if (c / "initdb").exists() and (c / "pg_ctl").exists():
            return c
    return None


@dataclass
class Cluster:
    """A running server. `dsn(db)` names one database on it; `admin_dsn` the maintenance one."""

    host: str
    port: int
    user: str
    password: str | None
    admin_db: str
    datadir: Path | None = None
    bindir: Path | None = None
    _owner: str | None = None

    def dsn(self, db: str) -> str:
        auth = self.user if self.password is None else f"{self.user}:{self.password}"
        return f"postgresql://{auth}@{self.host}:{self.port}/{db}"

    @property
    def admin_dsn(self) -> str:
        return self.dsn(self.admin_db)

    def stop(self) -> None:
        if self.datadir is None or self.bindir is None:
            return  # an external server: not ours to stop
        _run(
            [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop"],
            self._owner,
            check=False,
        )
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def _run(cmd: list[str], owner: str | None, *, check: bool = True) -> str:
    if owner is not None:
        cmd = ["runuser", "-u", owner, "--", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise ClusterUnavailable(
            f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}"
        )
    return proc.stdout


def start_cluster(*, max_connections: int = 100, extra_conf: str = "") -> Cluster:
    """An external server from env SMPP_BRIDGE_TEST_PG_DSN, else a new local one.

    Raises ClusterUnavailable (with the reason) when neither is possible.
    """
    external = os.environ.get(DSN_ENV)
    if external:
        return _external(external)
    bindir = find_bindir()
    if bindir is None:
        raise ClusterUnavailable(
            "no PostgreSQL server binaries (initdb, pg_ctl): install postgresql, set PG_BIN, "
            f"or set {DSN_ENV} to a server"
        )
    reap_orphans(bindir)
    owner: str | None = None
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise ClusterUnavailable(
                "running as root and there is no 'postgres' user to run initdb as"
            ) from None
        owner = "postgres"
    root = Path(tempfile.mkdtemp(prefix=PREFIX))
    datadir = root / "data"
    (root / STARTER).write_text(_starter_of(os.getpid()) or "")
    if owner is not None:
        info = pwd.getpwnam(owner)
        os.chown(root, info.pw_uid, info.pw_gid)
    os.chmod(root, 0o700)
    user = "bridge"
    _run(
        [
            str(bindir / "initdb"),
            "-D",
            str(datadir),
            "-U",
            user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ],
        owner,
    )
    port = free_port()
    conf = (
        "listen_addresses = '127.0.0.1'\n"
        f"port = {port}\n"
        f"unix_socket_directories = '{root}'\n"
        f"max_connections = {max_connections}\n"
        "fsync = off\n"  # throw-away data: durability is PostgreSQL's business, not the tests'
        "full_page_writes = off\n"
        "shared_buffers = 128MB\n"
        "log_min_messages = warning\n"
        "logging_collector = off\n"
        f"{extra_conf}"
    )
    with open(datadir / "postgresql.conf", "a", encoding="utf-8") as f:
        f.write(conf)
    cluster = Cluster(
        host="127.0.0.1",
        port=port,
        user=user,
        password=None,
        admin_db="postgres",
        datadir=datadir,
        bindir=bindir,
        _owner=owner,
    )
    _run(
        [str(bindir / "pg_ctl"), "-D", str(datadir), "-l", str(root / "server.log"), "-w",
         "-t", "60", "start"],
        owner,
    )  # fmt: skip
    return cluster


PREFIX = "smpp-bridge-pg-"
STARTER = "starter"  # "pid start-time" of the process that started the cluster


def _starter_of(pid: int) -> str | None:
    """`pid start-time` (clock ticks after boot, /proc/PID/stat field 22): a pid alone could be
    reused by another process after the starter died."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{pid} {stat.rsplit(')', 1)[1].split()[19]}"


def reap_orphans(bindir: Path) -> list[Path]:
    """Stop and remove the clusters whose starter process is gone.

    Why: the cluster fixtures stop their cluster at the end of the session, which a test run
    killed from outside (SIGKILL, a `timeout` around pytest) never reaches; its servers kept
    running, 8 of them found after one session. Each cluster's folder names its starter, so the
    next run that starts a cluster stops them."""
    reaped = []
    for root in Path(tempfile.gettempdir()).glob(PREFIX + "*"):
        try:
            starter = (root / STARTER).read_text().strip()
        except OSError:
            continue  # not ours to judge: being created, or older than this file
        if not starter or _starter_of(int(starter.split()[0])) == starter:
            continue  # its starter still runs
        owner = None  # as root, pg_ctl runs as the data folder's owner (see start_cluster)
        if os.geteuid() == 0:
            with contextlib.suppress(OSError, KeyError):
                uid = (root / "data").stat().st_uid
                owner = pwd.getpwuid(uid).pw_name if uid != 0 else None
        if (root / "data" / "postmaster.pid").exists():
            cmd = [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"]
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                _run([*cmd, "-w"], owner, check=False)
        shutil.rmtree(root, ignore_errors=True)
        reaped.append(root)
    return reaped


def _external(dsn: str) -> Cluster:
    from urllib.parse import urlparse

    u = urlparse(dsn)
    return Cluster(
        host=u.hostname or "127.0.0.1",
        port=u.port or 5432,
        user=u.username or "postgres",
        password=u.password,
        admin_db=(u.path or "/postgres").lstrip("/") or "postgres",
    )


def ci() -> bool:
    return os.environ.get(CI_ENV, "") not in ("", "0")


def new_database_name(prefix: str = "t") -> str:
    return f"{prefix}_{secrets.token_hex(6)}"


async def create_database(cluster: Cluster, name: str, template: str | None = None) -> str:
    import asyncpg

    conn = await asyncpg.connect(cluster.admin_dsn)
    try:
        tmpl = f" TEMPLATE {template}" if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{tmpl}')
    finally:
        await conn.close()
    return cluster.dsn(name)


async def drop_database(cluster: Cluster, name: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(cluster.admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@contextlib.contextmanager
def running_cluster() -> Iterator[Cluster]:
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.stop()


async def settled(dsn: str) -> None:
    """Until the server is FENCE_S old: one that (re)started less than that ago fences every
    instance's claims until then (bridge/store/postgres_confirm.py), which a test that claims at
    once, on a cluster just started or crashed by the test before, does not expect."""
    import asyncio

    import asyncpg

    from bridge.store.postgres_confirm import _SERVER_AGE, FENCE_S

    conn = await asyncpg.connect(dsn)
    try:
        age = await conn.fetchval(_SERVER_AGE)
    finally:
        await conn.close()
    if age is not None and age < FENCE_S:
        await asyncio.sleep(FENCE_S - age + 0.05)


def wait_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 0.5):
            return
        time.sleep(0.05)
    raise ClusterUnavailable(f"PostgreSQL on {host}:{port} did not come up")


@dataclass
class Snapshot:
    """What a database held when taken (rows of the tables that had any, every sequence's
    position), to put it back between the examples of a property test: `restore` answers in a
    few milliseconds where a CREATE DATABASE from a template took 0.1-0.5 s (PostgreSQL 15's
    WAL_LOG strategy writes the template's ~5 MB through the WAL, then a checkpoint), 50 times
    a run in tests/integration/test_money_stateful.py. The schema is not restored: what is
    restored is every row and every sequence, which is all a store writes once migrated."""

    tables: list[str]  # every table of the public schema, referencing ones before referenced
    rows: dict[str, list[tuple[object, ...]]]
    sequences: dict[str, tuple[int, bool]]  # name -> (last_value, is_called)


async def take_snapshot(dsn: str) -> Snapshot:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        names = [
            r["tablename"]
            for r in await conn.fetch(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        ]
        refs = await conn.fetch(
            "SELECT conrelid::regclass::text AS child, confrelid::regclass::text AS parent "
            "FROM pg_constraint WHERE contype = 'f' AND connamespace = 'public'::regnamespace"
        )
        tables: list[str] = []  # a table once every table referencing it is placed
        while len(tables) < len(names):
            before = len(tables)
            for t in names:
                if t not in tables and all(
                    r["child"] in tables or r["child"] == t for r in refs if r["parent"] == t
                ):
                    tables.append(t)
            if len(tables) == before:
                raise RuntimeError(f"foreign keys in a cycle: {refs}")
        rows = {}
        for t in tables:
            found = [tuple(r) for r in await conn.fetch(f'SELECT * FROM "{t}"')]
            if found:
                rows[t] = found
        sequences = {}
        for r in await conn.fetch(
            "SELECT sequencename FROM pg_sequences WHERE schemaname = 'public'"
        ):
            name = r["sequencename"]
            at = await conn.fetchrow(f'SELECT last_value, is_called FROM "{name}"')
            sequences[name] = (at["last_value"], at["is_called"])
        return Snapshot(tables, rows, sequences)
    finally:
        await conn.close()


async def restore_snapshot(dsn: str, snap: Snapshot) -> None:
    """Back to `snap`: every row deleted, the snapshot's put back, each sequence where it was.
    Any session still on the database is ended first (as DROP DATABASE .. WITH (FORCE) would)."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        await _end_sessions(conn)
        await _put_back(conn, snap)
    finally:
        await conn.close()


async def _end_sessions(conn: Any) -> None:
    """End every other client session on the connection's database, as DROP DATABASE .. WITH
    (FORCE) would (pg_terminate_backend's own wait is PostgreSQL 14's, so this one polls)."""
    import asyncio

    others = (
        "FROM pg_stat_activity WHERE datname = current_database() "
        "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
    )
    await conn.execute(f"SELECT pg_terminate_backend(pid) {others}")
    deadline = time.monotonic() + 10
    while await conn.fetchval(f"SELECT count(*) {others}"):  # signalled, maybe not gone
        assert time.monotonic() < deadline, "a session on the database did not end"
        await asyncio.sleep(0.01)


async def _put_back(conn: Any, snap: Snapshot) -> None:
    async with conn.transaction():
        await conn.execute(";".join(f'DELETE FROM "{t}"' for t in snap.tables))
        for t, rows in snap.rows.items():
            await conn.copy_records_to_table(t, records=rows)
        for name, (value, called) in snap.sequences.items():
            await conn.execute("SELECT setval($1::regclass, $2, $3)", f'"{name}"', value, called)


# What a test could change of a database besides its rows and sequences: tables and their
# columns (in order, dropped ones included), constraints, indexes, triggers, functions, views,
# sequences' parameters, defaults, privileges, row security, schemas, extensions, settings. Two
# databases that agree here differ only in what restore_snapshot puts back.
_SHAPE = """
SELECT md5(coalesce(string_agg(x, E'\\n' ORDER BY x), '')) FROM (
  SELECT 'rel ' || c.relname || ' ' || c.relkind::text || ' ' || coalesce(c.relacl::text, '')
         || ' ' || coalesce(c.reloptions::text, '') || ' ' || c.relrowsecurity
         || ' ' || c.relpersistence::text
  FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
  UNION ALL
  SELECT 'col ' || c.relname || ' ' || a.attnum || ' ' || a.attname || ' ' || a.atttypid
         || ' ' || a.atttypmod || ' ' || a.attnotnull || ' ' || a.attisdropped || ' '
         || coalesce(pg_get_expr(d.adbin, d.adrelid), '') || ' ' || coalesce(a.attacl::text, '')
  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
  LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
  WHERE n.nspname = 'public' AND a.attnum > 0
  UNION ALL
  SELECT 'con ' || conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)
  FROM pg_constraint WHERE connamespace = 'public'::regnamespace
  UNION ALL
  SELECT 'idx ' || pg_get_indexdef(indexrelid) FROM pg_index i
  JOIN pg_class c ON c.oid = i.indrelid WHERE c.relnamespace = 'public'::regnamespace
  UNION ALL
  SELECT 'trg ' || pg_get_triggerdef(oid) || ' ' || tgenabled::text FROM pg_trigger
  WHERE NOT tgisinternal
  UNION ALL
  SELECT 'fn ' || p.oid::regprocedure::text || ' ' || md5(p.prosrc) || ' '
         || coalesce(p.proacl::text, '') FROM pg_proc p
  WHERE p.pronamespace = 'public'::regnamespace
  UNION ALL
  SELECT 'view ' || c.relname || ' ' || md5(pg_get_viewdef(c.oid)) FROM pg_class c
  WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('v', 'm')
  UNION ALL
  SELECT 'seq ' || seqrelid::regclass::text || ' ' || seqtypid || ' ' || seqstart || ' '
         || seqincrement || ' ' || seqmax || ' ' || seqmin || ' ' || seqcycle FROM pg_sequence
  UNION ALL
  SELECT 'pol ' || polrelid::regclass::text || ' ' || polname FROM pg_policy
  UNION ALL
  SELECT 'nsp ' || nspname || ' ' || coalesce(nspacl::text, '') FROM pg_namespace
  WHERE nspname NOT LIKE 'pg_%' AND nspname <> 'information_schema'
  UNION ALL
  SELECT 'ext ' || extname || ' ' || extversion FROM pg_extension
  UNION ALL
  SELECT 'typ ' || typname FROM pg_type WHERE typnamespace = 'public'::regnamespace
  UNION ALL
  SELECT 'db ' || coalesce(datacl::text, '') || ' ' || datallowconn || ' ' || datconnlimit
  FROM pg_database WHERE datname = current_database()
  UNION ALL
  SELECT 'set ' || setrole || ' ' || coalesce(setconfig::text, '') FROM pg_db_role_setting
  WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = current_database())
  UNION ALL
  SELECT 'defacl ' || defaclrole || ' ' || defaclobjtype::text || ' ' || defaclacl::text
  FROM pg_default_acl
  UNION ALL
  SELECT 'xact ' || gid FROM pg_prepared_xacts WHERE database = current_database()
) shape(x)
"""


async def database_shape(dsn: str) -> str:
    """A digest of everything `_SHAPE` reads: equal digests, the same database but for rows and
    sequence positions."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        return str(await conn.fetchval(_SHAPE))
    finally:
        await conn.close()


@dataclass
class Migrated:
    """One migrated database a worker hands from test to test (`migrated_database`)."""

    name: str
    dsn: str
    snapshot: Snapshot
    shape: str


async def migrated_database(cluster: Cluster, held: list[Migrated]) -> str:
    """A DSN to a database as a fresh migration leaves it, for the store contract tests.

    A fresh database each test (CREATE DATABASE, 36 migrations, DROP DATABASE) took ~0.4 s of
    the server's CPU and 1-2 s of wall on a busy 2-core machine, for ~760 tests a run. One
    migrated database is kept (`held`) and put back for the next test instead: sessions still
    on it ended, every row and sequence as the migration left them (restore_snapshot, as the
    money state machine does between its examples). Only when its shape is as migrated:
    a test that changed the schema (the upgrade tests' schema_before, a trigger, a grant) has
    it dropped, and the next test gets a newly migrated one."""
    import asyncpg

    from bridge.store.postgres import PostgresStore

    if held:
        db = held.pop()
        try:
            conn = await asyncpg.connect(db.dsn)
            try:
                await _end_sessions(conn)  # a test's leftover session could still change it
                if str(await conn.fetchval(_SHAPE)) == db.shape:
                    await _put_back(conn, db.snapshot)
                    held.append(db)
                    return db.dsn
            finally:
                await conn.close()
        except Exception:  # whatever went wrong, a new database replaces it
            pass
        with contextlib.suppress(Exception):
            await drop_database(cluster, db.name)
    name = new_database_name("m")
    dsn = await create_database(cluster, name)
    store = PostgresStore(dsn, min_size=1, max_size=2)
    await store.open()
    await store.close()
    held.append(Migrated(name, dsn, await take_snapshot(dsn), await database_shape(dsn)))
    return dsn
