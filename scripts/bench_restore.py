#!/usr/bin/env python3
"""Time `smpp-bridge db after-restore` on a store restored with N messages waiting.

Usage: python scripts/bench_restore.py [--engine sqlite|postgres] [--messages 1000000]
                                       [--runs 1] [--dry-run] [--keep DIR] [--tree DIR]

Why: the command runs right after a restore, when an operator is already in trouble, and what
it ends is the whole queue the backup held: a million after a carrier outage. This queues
`--messages` one-part international messages (charged, so each ends with a refund of its unsent
part; their account has a status callback, so each queues a status webhook) straight into a
real store through its accept, in batches of 1,000, then runs the command as the operator
would (a process of its own, under /usr/bin/time -v) on a copy of that store for each run
(SQLite: a copy of the file; PostgreSQL: a database made from it as a template) and prints its
wall time, peak RSS and, on SQLite, the largest size the WAL reached (sampled every 20 ms).
PostgreSQL needs SMPP_BRIDGE_CI=1 or SMPP_BRIDGE_TEST_PG_DSN: a throwaway cluster
(tests/pg_cluster.py) unless the DSN names one.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # children.py, beside this script

from children import Children  # noqa: E402

from bridge.domain.admission import Priced, Rules  # noqa: E402
from bridge.domain.ledger import topup  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import AcceptBatch, Account  # noqa: E402
from tests.messages import one_part  # noqa: E402

# The command's process (under /usr/bin/time), ended with the script however it ends; a
# PostgreSQL cluster (pg_ctl's daemon, not a child) is stopped when bench_postgres's block ends,
# SIGTERM and SIGINT included (Children.started, Children.on_signals).
CHILDREN = Children()

NOW = 1_700_000_000_000
PRICE = 45_000
BATCH = 1_000
ACCOUNT = "acc_restored"


async def fill(store: Store, n: int) -> float:
    """`n` waiting messages of one account, charged and reported: seconds it took."""
    await store.create_account(
        Account(
            id=ACCOUNT,
            name=ACCOUNT,
            status_callback_url="https://example.invalid/status",
            created_at=NOW,
            updated_at=NOW,
        )
    )
    await store.append_ledger(ACCOUNT, topup(PRICE * n + 1, NOW - 1_000, "funds"))
    began = time.perf_counter()
    for i in range(0, n, BATCH):
        msgs = tuple(
            one_part(f"m{k:08d}", ACCOUNT, f"+44770{k:08d}", NOW, price_class="44")
            for k in range(i, min(i + BATCH, n))
        )
        rules = Rules(charges=tuple(Priced(m.id, PRICE, False) for m in msgs), billing=True)
        out = await store.accept(AcceptBatch(ACCOUNT, msgs, None, None, rules=rules), NOW)
        assert out.accepted, out
    return time.perf_counter() - began


def _config(path: Path, store: dict[str, Any]) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "store": store,
                "security": {"master_key": base64.b64encode(os.urandom(32)).decode()},
                "smscs": [{"name": "main", "system_id": "bridge"}],
                "logging": {"level": "WARNING"},
            }
        )
    )
    return path


def run_command(cfg: Path, dry_run: bool, wal: Path | None, tree: Path = ROOT) -> dict[str, Any]:
    """The command in a process of its own, of the code in `tree` (another checkout, for a
    before/after): its answer, wall time, peak RSS, largest WAL."""
    cmd = [sys.executable, "-m", "bridge.cli", "db", "after-restore", "--config", str(cfg)]
    if dry_run:
        cmd.append("--dry-run")
    biggest = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            if wal is not None:
                try:
                    biggest[0] = max(biggest[0], wal.stat().st_size)
                except OSError:
                    pass

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    began = time.perf_counter()
    try:
        code, out, err = CHILDREN.run(
            ["/usr/bin/time", "-v", *cmd],
            None,
            cwd=tree,
            env={**os.environ, "PYTHONPATH": str(tree)},
        )
    finally:
        done.set()
    wall = time.perf_counter() - began
    watcher.join()
    if code != 0:
        raise SystemExit(f"after-restore failed ({code}): {err[-2000:]}")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
    return {
        "answer": json.loads(out.strip().splitlines()[-1]),
        "wall_s": wall,
        "peak_rss_mb": int(rss.group(1)) / 1024 if rss else -1,
        "wal_mb": biggest[0] / 2**20,
    }


async def build_sqlite(path: Path, n: int) -> float:
    from bridge.store.sqlite import SqliteStore

    store = SqliteStore(path)
    await store.open()
    try:
        return await fill(store, n)
    finally:
        await store.close()


def bench_sqlite(args: argparse.Namespace, tmp: Path) -> None:
    built = tmp / "built.db"
    if args.keep and (Path(args.keep) / "built.db").exists():
        built = Path(args.keep) / "built.db"
        print(f"reusing {built}")
    else:
        if args.keep:
            built = Path(args.keep) / "built.db"
            built.parent.mkdir(parents=True, exist_ok=True)
        took = CHILDREN.asyncio_run(build_sqlite(built, args.messages))
        size = built.stat().st_size / 2**20
        print(f"queued {args.messages} in {took:.1f} s; store {size:.0f} MB")
    for run in range(args.runs):
        for tree in args.tree.split(","):
            path = tmp / f"run{run}.db"
            shutil.copyfile(built, path)
            cfg = _config(tmp / "bridge.yaml", {"engine": "sqlite", "path": str(path)})
            out = run_command(cfg, args.dry_run, Path(f"{path}-wal"), Path(tree))
            print(json.dumps({"tree": tree, **out}), flush=True)
            for leftover in path.parent.glob(path.name + "*"):
                leftover.unlink()


async def build_postgres(dsn: str, n: int) -> float:
    from bridge.store.postgres import PostgresStore

    store = PostgresStore(dsn)
    await store.open()
    try:
        return await fill(store, n)
    finally:
        await store.close()


def bench_postgres(args: argparse.Namespace) -> None:
    from tests import pg_cluster

    run = CHILDREN.asyncio_run  # each step its own loop: the command runs outside any
    with CHILDREN.started(pg_cluster.start_cluster, pg_cluster.Cluster.stop) as cluster:
        built = "built"
        dsn = run(pg_cluster.create_database(cluster, built))
        took = run(build_postgres(dsn, args.messages))
        print(f"queued {args.messages} in {took:.1f} s", flush=True)
        for k in range(args.runs):
            for tree in args.tree.split(","):
                name = f"run{k}"
                run_dsn = run(pg_cluster.create_database(cluster, name, template=built))
                with tempfile.TemporaryDirectory() as d:
                    cfg = _config(Path(d) / "bridge.yaml", {"engine": "postgres", "dsn": run_dsn})
                    out = run_command(cfg, args.dry_run, None, Path(tree))
                print(json.dumps({"tree": tree, **out}), flush=True)
                run(pg_cluster.drop_database(cluster, name))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", choices=("sqlite", "postgres"), default="sqlite")
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--dry-run", action="store_true", help="time `after-restore --dry-run`")
    p.add_argument(
        "--tree",
        default=str(ROOT),
        help="the checkouts whose command is run, comma-separated: each in turn at each run",
    )
    p.add_argument("--keep", help="SQLite: build the store in DIR once and reuse it after")
    args = p.parse_args()
    CHILDREN.on_signals()
    if args.engine == "postgres":
        bench_postgres(args)
        return
    try:
        with tempfile.TemporaryDirectory(prefix="bridge-bench-restore-") as tmp:
            bench_sqlite(args, Path(tmp))
    finally:
        CHILDREN.end()


if __name__ == "__main__":
    main()
