#!/usr/bin/env python3
"""The PostgreSQL accept's cost per accepted send, in one process: statements, rows, CPU.

Usage: python scripts/bench_pg_accept.py [--requests 2000] [--accounts 1] [--concurrency 50]
                                         [--kind gsm1|ucs3] [--runs 1] [--tree DIR] [--json]
                                         [--callgrind]

Why: `bench.py --store postgres --instances 2` shows the accept only inside the daemons' and
the server's CPU on a shared machine, where a round trip or a column less an accept is lost in
the noise. This is `bench_accept_inproc.py`'s drive on a PostgreSQL store (session 56): the
app's handler chain as an acceptor builds it (`make_app` over an `ApiContext`: the middlewares,
the authenticator, the handler, a real `PostgresStore` on a throw-away cluster, tests/pg_cluster
.py, fsync off), `bench.py`'s signed one-recipient POST /v1/messages (a key, an Idempotency-Key,
the frequency rules, a cash charge), `--concurrency` requests at a time, round-robin over
`--accounts` accounts (one account's accepts share a transaction, a group: see
PostgresStore._drain_account; different accounts' do not). Each request is built before the
clock starts and handed to `app._handle` without a socket. It prints per 202: the statements
sent to the server (BEGIN and COMMIT not counted) and the round trips (them included), the rows
they returned, this process's CPU, the server's CPU (every process of the cluster, from /proc:
on one machine) and the wall time, then the round trips by statement (its text's start).
`--tree` imports `bridge` from another checkout: run the script alternately on two trees to
compare them.

`--callgrind` reruns it under valgrind's callgrind (`--instr-atstart=no`, counting switched on
and off around the timed loop with `callgrind_control -i`, as `bench_accept_inproc.py` does)
and prints this process's instructions per request: the daemon's side of the accept, which
does not move with the machine's load (the server is not under valgrind; its CPU is printed as
measured). The cluster is stopped at the end and on SIGTERM or SIGINT (children.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

TEXTS = {
    "gsm1": "Your verification code is 123456.",
    "ucs3": "【示例】您的验证码是123456，五分钟内有效。请勿泄露给他人。如非本人操作，请忽略本短信。"
    * 3,
}

ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ap.add_argument("--requests", type=int, default=2_000)
ap.add_argument("--accounts", type=int, default=1, help="requests round-robin over N accounts")
ap.add_argument("--concurrency", type=int, default=50, help="requests in flight")
ap.add_argument("--kind", choices=sorted(TEXTS), default="gsm1")
ap.add_argument("--runs", type=int, default=1, help="runs, each on a fresh database")
ap.add_argument("--tree", default=str(Path(__file__).resolve().parents[1]))
ap.add_argument("--json", action="store_true", help="one JSON line a run")
ap.add_argument("--callgrind", action="store_true", help="count instructions under callgrind")
ap.add_argument("--counting", action="store_true", help=argparse.SUPPRESS)  # under callgrind
ap.add_argument("--dsn", help=argparse.SUPPRESS)  # under callgrind: the caller's database
ap.add_argument("--postmaster", type=int, default=0, help=argparse.SUPPRESS)
ARGS = ap.parse_args()
sys.path.insert(0, str(Path(__file__).resolve().parent))  # children.py
sys.path.insert(0, ARGS.tree)
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # tests.pg_cluster: this tree's

from children import Children  # noqa: E402
from inproc_requests import mocked_sends, signed_send  # noqa: E402
from pg_counting import Counted, server_cpu  # noqa: E402

# The cluster (pg_ctl's daemon), and valgrind with this script under it (--callgrind): ended
# when main's block ends, SIGTERM and SIGINT included (Children.started, Children.on_signals).
CHILDREN = Children()


async def _context(dsn: str, tmp: Path) -> tuple[Any, Any, list[Any]]:
    """An acceptor's ApiContext on a PostgresStore, and `--accounts` accounts with money."""
    from bridge.accounts import AccountService
    from bridge.api.auth import Authenticator
    from bridge.api.context import ApiContext
    from bridge.api.submit import Submitter
    from bridge.app import make_router
    from bridge.config import parse_config
    from bridge.crypto import Sealer
    from bridge.domain.ledger import topup
    from bridge.wiring import open_store

    master = base64.b64encode(os.urandom(32)).decode()
    cfg = parse_config(
        {
            "server": {"port": 8080, "max_recipients": 1000},
            "store": {"engine": "postgres", "dsn": dsn},
            "security": {"master_key": master},
            "logging": {"level": "WARNING"},
            "smscs": [{"name": "a", "system_id": "s"}],
        },
        env={},
        base_dir=tmp,
    )
    store = open_store(cfg)
    await store.open()
    ctx = ApiContext(
        config=cfg,
        store=store,
        auth=await Authenticator.start(store, Sealer(base64.b64decode(master)), cfg, time.time),
        submitter=Submitter(cfg, make_router(cfg)),
        accounts=AccountService(store, Sealer(base64.b64decode(master))),
    )
    # The authenticator's key and account held for the run (session 58): each is read again
    # after 30 s of wall time, by every request in flight at that moment (50 reads at once),
    # which a daemon at thousands of accepts a second spreads over ~100,000 of them, but a run
    # under callgrind (0.1-0.3 s a request) met once or twice: 0.05-0.24 reads of each kind a
    # 202, with the load and the run's length, and two trees counted side by side differed by
    # that more than by their change.
    ctx.auth.CACHE_S = ctx.auth.ACCOUNT_S = 86_400.0
    now = int(time.time() * 1000)
    if cfg.billing.enabled:
        await ctx.tariff_book.load(now)
    accounts = []
    for a in range(ARGS.accounts):
        creds = await ctx.accounts.create(f"bench{a}", {"raw_text": True}, now)
        await store.append_ledger(creds.account.id, topup(100_000_000 * 1_000_000, now, "bench"))
        accounts.append(creds)
    return ctx, store, accounts


def _signed(creds: Any, i: int, signed_at: datetime) -> tuple[bytes, dict[str, str]]:
    """`bench.py`'s i-th send (a new number each) in this run's --kind."""
    return signed_send(creds, i, TEXTS[ARGS.kind], signed_at)


def _callgrind(on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
                   check=True, capture_output=True)  # fmt: skip


async def run(dsn: str, postmaster: int, counted: Counted) -> dict[str, Any]:
    from aiohttp import web

    from bridge.api.app import make_app

    tmp = Path(tempfile.mkdtemp(prefix="bench-pg-accept-"))
    ctx, store, accounts = await _context(dsn, tmp)
    try:
        app = make_app(ctx)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        loop = asyncio.get_running_loop()

        signed_at = datetime.now(UTC)
        requests = mocked_sends(
            app,
            loop,
            (_signed(accounts[i % len(accounts)], i, signed_at) for i in range(ARGS.requests)),
        )

        async def one(request: Any) -> None:
            resp = await app._handle(request)
            assert resp.status == 202, (resp.status, getattr(resp, "body", None))

        # One warm-up request an account (not counted): the connections' statements prepared,
        # the tariff and the accounts read once, as in a daemon that has been running.
        warm = requests[: len(accounts)]
        await asyncio.gather(*(one(r) for r in warm))
        # Every connection of the pool opened (session 58): asyncpg opens the ones past its
        # floor when first needed, and the timed loop opened ~8 of them (`SET array_nulls`
        # in the round trips), ~3.3 M instructions each: ~5% of the count a request, which a
        # daemon that has been running does not pay.
        pool = store.pool
        held = [await pool.acquire() for _ in range(pool.get_max_size())]
        for conn in held:
            await pool.release(conn)
        todo = requests[len(accounts) :]
        gc.collect()
        s0, r0, t0 = counted.statements, counted.rows, counted.trips
        k0 = collections.Counter(counted.kinds)
        server0 = server_cpu(postmaster)
        if ARGS.counting:
            _callgrind(True)
        c0, w0 = time.process_time(), time.perf_counter()
        for k in range(0, len(todo), ARGS.concurrency):
            await asyncio.gather(*(one(r) for r in todo[k : k + ARGS.concurrency]))
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        if ARGS.counting:
            _callgrind(False)
        server = server_cpu(postmaster) - server0
        await runner.cleanup()
    finally:
        await store.close()
        tmp.rmdir()
    import bridge

    n = len(todo)
    return {
        "code": str(Path(bridge.__file__).parents[1]),
        "requests": n,
        "statements": round((counted.statements - s0) / n, 3),
        "round_trips": round((counted.trips - t0) / n, 3),
        "rows": round((counted.rows - r0) / n, 3),
        "cpu_us": round(cpu / n * 1e6, 1),
        "server_us": round(server / n * 1e6, 1),
        "wall_us": round(wall / n * 1e6, 1),
        # round trips a request by the statement's first 60 characters
        "by_statement": {text: round(k / n, 3) for text, k in (counted.kinds - k0).most_common()},
    }


def _print(res: dict[str, Any], k: int) -> None:
    if ARGS.json:
        print(json.dumps(res), flush=True)
        return
    print(f"run {k + 1}, bridge from {res['code']}: {res['requests']} sends ({ARGS.kind}), "
          f"{ARGS.accounts} account(s), {ARGS.concurrency} in flight")  # fmt: skip
    print(f"  per accept: {res['statements']} statements, {res['round_trips']} round trips, "
          f"{res['rows']} rows back, this process {res['cpu_us']} us CPU, server "
          f"{res['server_us']} us CPU, {res['wall_us']} us wall")  # fmt: skip
    for text, k in res["by_statement"].items():
        print(f"    {k:6.3f}  {text}")


def counting() -> None:
    """The run under callgrind (--counting): the caller's database and cluster."""
    counted = Counted(kinds=True)
    res = CHILDREN.asyncio_run(run(ARGS.dsn, ARGS.postmaster, counted))
    print(json.dumps(res), flush=True)


def main() -> None:
    from tests import pg_cluster as pgc

    CHILDREN.on_signals()
    if ARGS.counting:
        counting()
        return
    counted = Counted(kinds=True)
    with CHILDREN.started(pgc.start_cluster, pgc.Cluster.stop) as cluster:
        assert cluster.datadir is not None, "a throw-away cluster: its CPU is read from /proc"
        postmaster = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
        for k in range(ARGS.runs):
            name = pgc.new_database_name("accept")
            dsn = CHILDREN.asyncio_run(pgc.create_database(cluster, name))
            try:
                if ARGS.callgrind:
                    out = tempfile.mktemp(prefix="callgrind.pg-accept.")
                    cmd = [
                        sys.executable, __file__, "--counting", "--dsn", dsn,
                        "--postmaster", str(postmaster), "--requests", str(ARGS.requests),
                        "--accounts", str(ARGS.accounts), "--concurrency",
                        str(ARGS.concurrency), "--kind", ARGS.kind, "--tree", ARGS.tree,
                    ]  # fmt: skip
                    stdout, total = CHILDREN.callgrind(cmd, out)
                    res = json.loads(stdout.strip().splitlines()[-1])
                    res["instructions"] = round(total / res["requests"])
                    res["profile"] = out
                else:
                    res = CHILDREN.asyncio_run(run(dsn, postmaster, counted))
            finally:
                CHILDREN.asyncio_run(pgc.drop_database(cluster, name))
            _print(res, k)
            if "instructions" in res and not ARGS.json:
                print(f"  {res['instructions']:,} instructions per request (this process; "
                      f"profile in {res['profile']})")  # fmt: skip


if __name__ == "__main__":
    main()
