#!/usr/bin/env python3
"""What an account-wide end costs everyone else on PostgreSQL: a disable or a close of an account
with a million messages waiting, while another account sends and the dispatcher claims.

Usage: SMPP_BRIDGE_CI=1 python scripts/bench_pg_ends.py [--waiting 1000000] [--others 20000]
                                      [--op disable|close|sign] [--runs 1] [--old TREE]
                                      [--per-ms N] [--inbox N] [--index-with-id]

Why: on SQLite these run in chunks (README note 18: one transaction held every writer ~20 s per
million); on PostgreSQL each was one transaction (bridge/store/postgres_ends.py), which blocks
no other writer by a lock of the whole store but holds a row lock on every message it ends to its
commit (a disable and a sign's delete go in pages since session 46: postgres_pending_ends.py; a
close since session 47). Nobody had measured what that costs the others at a million.
This queues `--waiting` charged one-part messages of one account with a status callback
(scripts/bench_restore.fill: each end refunds and queues a report) and `--others` of a second
account into a template database of a throwaway cluster (tests/pg_cluster.py), then per run clones
it and, in a child process (the tree's code), runs the operation while the same process, on a pool
of its own, accepts 10 messages of the other account and claims up to 100 messages (as a dispatcher
does), one after the other, without pause. It prints the operation's time, the longest transaction
any backend of the database had open meanwhile (autovacuum's too), its own paged transactions (how
many, the longest, timed in the daemon), the other account's accept and the claims' latencies
before and during it (p50, max), the claims' messages of other accounts, the WAL it wrote and the
peak anonymous RSS of its server backend. `--per-ms N` spreads the account's messages' acceptance
times N to a millisecond (else all share one: a close's masking pages read the rest of a
millisecond's again). `--inbox N` gives the account N replies (MOs, ten to a millisecond), which
a close masks too: in its one transaction until session 48, in pages of their own since
(postgres_ends.mask_mo_page). `--index-with-id` replaces the (account_id, accepted_at) index the
masking's pages walk with (account_id, accepted_at, id) in the template, timing its build (what an
upgrade making it would cost): with it, a page seeks its cursor instead of reading the rest of
the cursor's millisecond again.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # children.py, beside this script
from children import Children

ROOT = Path(__file__).resolve().parents[1]
CHILDREN = Children()
OTHER = "acc_other"
SIGN = "Brand"


async def _fill(
    dsn: str,
    waiting: int,
    others: int,
    op: str,
    per_ms: int = 0,
    inbox: int = 0,
    index_with_id: bool = False,
) -> None:
    sys.path.insert(0, str(ROOT))
    from bridge.domain.admission import Priced, Rules
    from bridge.domain.ledger import topup
    from bridge.store.models import AcceptBatch, Account, Sign
    from bridge.store.postgres import PostgresStore

    br = importlib.import_module("scripts.bench_restore")  # the measured tree's (--tree first)
    from tests.messages import one_part

    store = PostgresStore(dsn, min_size=1, max_size=4)
    await store.open()
    try:
        t0 = time.perf_counter()
        await br.fill(store, waiting)
        print(f"queued {waiting} in {time.perf_counter() - t0:.1f} s", flush=True)
        await store.create_account(
            Account(id=OTHER, name=OTHER, created_at=br.NOW, updated_at=br.NOW)
        )
        await store.append_ledger(OTHER, topup(br.PRICE * 10**7, br.NOW - 1_000, "funds"))
        for i in range(0, others, br.BATCH):
            msgs = tuple(
                one_part(f"o{k:08d}", OTHER, f"+44771{k:08d}", br.NOW + 1, price_class="44")
                for k in range(i, min(i + br.BATCH, others))
            )
            rules = Rules(charges=tuple(Priced(m.id, br.PRICE, False) for m in msgs), billing=True)
            await store.accept(AcceptBatch(OTHER, msgs, None, None, rules=rules), br.NOW + 1)
        if op == "sign":  # the account's messages carry a sign, which the run deletes
            await store.add_sign(
                Sign(br.ACCOUNT, SIGN, SIGN, "company", "", "approved", None, None, br.NOW)
            )
            await store.pool.execute(
                "UPDATE messages SET sign_name = $1 WHERE account_id = $2", SIGN, br.ACCOUNT
            )
        if per_ms:  # accepted over time, `per_ms` a millisecond, not all in one (a close's pages)
            await store.pool.execute(
                "UPDATE messages SET accepted_at = accepted_at + substring(id from 2)::bigint / $2 "
                "WHERE account_id = $1",
                br.ACCOUNT,
                per_ms,
            )
        if inbox:  # the account's replies, straight into the table
            await store.pool.execute(
                "INSERT INTO mo_inbox (id, account_id, smsc, source, destination, text, "
                "received_at) SELECT 'mo' || lpad(g::text, 9, '0'), $1, 'smscA', "
                "'+86137' || lpad(g::text, 8, '0'), '1069', 'reply ' || g, $2::bigint + g / 10 "
                "FROM generate_series(0, $3 - 1) g",
                br.ACCOUNT,
                br.NOW - 86_400_000,
                inbox,
            )
        if index_with_id:
            t0 = time.perf_counter()
            await store.pool.execute(
                "CREATE INDEX messages_account_time_id ON messages(account_id, accepted_at, id)"
            )
            took = time.perf_counter() - t0
            sizes = await store.pool.fetch(
                "SELECT relname, pg_relation_size(oid) FROM pg_class "
                "WHERE relname IN ('messages_account_time', 'messages_account_time_id')"
            )
            await store.pool.execute("DROP INDEX messages_account_time")
            rows = await store.pool.fetchval("SELECT COUNT(*) FROM messages")
            print(
                f"index (account_id, accepted_at, id) over {rows} messages built in {took:.1f} s; "
                + ", ".join(f"{r[0]} {r[1] / 2**20:.1f} MB" for r in sizes),
                flush=True,
            )
        await store.pool.execute("VACUUM ANALYZE")
    finally:
        await store.close()


async def _op(store: Any, op: str, now: int) -> None:
    br = importlib.import_module("scripts.bench_restore")  # the measured tree's (--tree first)

    if op == "disable":
        await store.update_account(br.ACCOUNT, {"status": "disabled"}, now)
    elif op == "close":
        assert await store.close_account(br.ACCOUNT, now) is not None
    else:
        assert await store.delete_sign(br.ACCOUNT, SIGN, now) is not None


def _summary(xs: list[float]) -> dict[str, float]:
    if not xs:
        return {"n": 0}
    return {
        "n": len(xs),
        "p50_ms": round(statistics.median(xs) * 1e3, 1),
        "max_ms": round(max(xs) * 1e3, 1),
    }


async def _measure(dsn: str, op: str) -> dict[str, Any]:
    """In the child: the operation, with the other account's accepts and the claims beside it."""
    from bridge.domain.admission import Priced, Rules
    from bridge.store.models import AcceptBatch
    from bridge.store.postgres import PostgresStore

    br = importlib.import_module("scripts.bench_restore")  # the measured tree's (--tree first)
    from tests.messages import one_part
    from tests.pg_cluster import settled

    await settled(dsn)
    # Each transaction of the operation's own (its pages), timed in the daemon.
    from bridge.store import postgres_pending_ends

    txs: list[float] = []
    real_tx = getattr(postgres_pending_ends, "run_tx", None)
    if real_tx is not None:

        async def timed_tx(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await real_tx(*args, **kw)
            finally:
                txs.append(time.perf_counter() - t0)

        postgres_pending_ends.run_tx = timed_tx
    now = br.NOW + 10_000
    store = PostgresStore(dsn, min_size=2, max_size=4)
    other = PostgresStore(dsn, min_size=2, max_size=4)
    await store.open()
    await other.open()
    phase = ["before"]
    lat: dict[str, list[float]] = {
        f"{k}_{p}": [] for k in ("accept", "claim") for p in ("before", "during")
    }
    claimed_other = {"before": 0, "during": 0}
    stop = asyncio.Event()
    seq = [0]

    async def accepts() -> None:
        while not stop.is_set():
            k0 = seq[0]
            seq[0] += 10
            msgs = tuple(
                one_part(f"n{k:08d}", OTHER, f"+44772{k:08d}", now, price_class="44")
                for k in range(k0, k0 + 10)
            )
            rules = Rules(charges=tuple(Priced(m.id, br.PRICE, False) for m in msgs), billing=True)
            p, t0 = phase[0], time.perf_counter()
            out = await other.accept(AcceptBatch(OTHER, msgs, None, None, rules=rules), now)
            lat[f"accept_{p}"].append(time.perf_counter() - t0)
            assert out.accepted, out

    async def claims() -> None:
        while not stop.is_set():
            p, t0 = phase[0], time.perf_counter()
            got = await other.claim("bench", 100, now, 600_000)
            lat[f"claim_{p}"].append(time.perf_counter() - t0)
            claimed_other[p] += sum(1 for w in got if w.account_id == OTHER)
            await asyncio.sleep(0)

    async with store.pool.acquire() as c:
        lsn0 = await c.fetchval("SELECT pg_current_wal_lsn()")
    backend: list[int] = []
    peak_kb = [0]
    longest = [0.0]
    failed: list[str] = []

    async def sample() -> None:
        async with other.pool.acquire() as c:
            while not stop.is_set():
                for pid in backend:
                    try:
                        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                            if line.startswith("RssAnon:"):
                                peak_kb[0] = max(peak_kb[0], int(line.split()[1]))
                    except OSError:
                        pass
                age = await c.fetchval(
                    "SELECT COALESCE(MAX(EXTRACT(EPOCH FROM clock_timestamp() - xact_start)), 0) "
                    "FROM pg_stat_activity WHERE datname = current_database() "
                    "AND pid <> pg_backend_pid() AND state <> 'idle'"
                )
                longest[0] = max(longest[0], float(age))
                await asyncio.sleep(0.05)

    async def run_op() -> float:
        # Every connection of the op's pool is watched: the op takes one of them.
        async with store.pool.acquire() as c:
            backend.append(await c.fetchval("SELECT pg_backend_pid()"))
        async with store.pool.acquire() as c1, store.pool.acquire() as c2:
            backend.append(await c1.fetchval("SELECT pg_backend_pid()"))
            backend.append(await c2.fetchval("SELECT pg_backend_pid()"))
        await asyncio.sleep(2.0)  # the others' latencies before
        phase[0] = "during"
        t0 = time.perf_counter()
        try:
            await _op(store, op, now)
        except Exception as exc:  # e.g. a statement past the pool's command_timeout: all undone
            failed.append(type(exc).__name__)
        took = time.perf_counter() - t0
        stop.set()
        return took

    workers = [asyncio.create_task(f()) for f in (accepts, claims, sample)]
    took = await run_op()
    await asyncio.gather(*workers)
    async with store.pool.acquire() as c:
        wal = await c.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1)", lsn0)
        ended = await c.fetchval(
            "SELECT COUNT(*) FROM messages WHERE account_id = $1 AND q_state = 'done'", br.ACCOUNT
        )
    await store.close()
    await other.close()
    import bridge

    return {
        "code": str(Path(bridge.__file__).parents[1]),
        "op_s": round(took, 1),
        "failed": failed[0] if failed else None,
        "ended": int(ended),
        "longest_tx_s": round(longest[0], 1),
        "backend_anon_rss_peak_mb": round(peak_kb[0] / 1024, 1),
        "paged_tx": {"n": len(txs), "max_s": round(max(txs), 2)} if txs else None,
        "wal_mb": round(float(wal) / 2**20, 1),
        "other_claimed": claimed_other,
        **{k: _summary(v) for k, v in lat.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--waiting", type=int, default=1_000_000)
    p.add_argument("--others", type=int, default=20_000)
    p.add_argument("--op", choices=("disable", "close", "sign"), default="disable")
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--per-ms", type=int, default=0, help="the account's messages a millisecond")
    p.add_argument("--inbox", type=int, default=0, help="the account's replies (MOs)")
    p.add_argument(
        "--index-with-id",
        action="store_true",
        help="the masking's index (account_id, accepted_at) replaced by (..., id), its build timed",
    )
    p.add_argument("--old", type=Path, help="a tree of the code before, run alternately")
    p.add_argument("--measure", help=argparse.SUPPRESS)
    p.add_argument("--tree", type=Path, default=ROOT, help=argparse.SUPPRESS)
    args = p.parse_args()
    sys.path.insert(0, str(args.tree))
    if args.measure:
        sys.path.insert(1, str(ROOT))
        print(json.dumps(asyncio.run(_measure(args.measure, args.op))))
        return
    sys.path.insert(1, str(ROOT))
    from tests import pg_cluster as pgc

    # The cluster is pg_ctl's daemon, not a child: stopped when the block ends, after the
    # measuring child, SIGTERM and SIGINT included (Children.started, Children.on_signals).
    CHILDREN.on_signals()
    run = CHILDREN.asyncio_run
    with CHILDREN.started(pgc.start_cluster, pgc.Cluster.stop) as cluster:
        template = run(pgc.create_database(cluster, "bench_template"))
        run(
            _fill(
                template,
                args.waiting,
                args.others,
                args.op,
                args.per_ms,
                args.inbox,
                args.index_with_id,
            )
        )
        trees = [("new", ROOT)] + ([("old", args.old)] if args.old else [])
        for k in range(args.runs):
            for name, tree in trees if k % 2 == 0 else trees[::-1]:
                db = pgc.new_database_name("bench")
                dsn = run(pgc.create_database(cluster, db, "bench_template"))
                try:
                    cmd = [sys.executable, __file__, "--measure", dsn, "--tree", str(tree)]
                    code, out, err = CHILDREN.run([*cmd, "--op", args.op], None)
                    if code:
                        print(err[-3000:], flush=True)
                    else:
                        res = json.loads(out.strip().splitlines()[-1])
                        print(f"run {k} {name} {json.dumps(res)}", flush=True)
                finally:
                    run(pgc.drop_database(cluster, db))


if __name__ == "__main__":
    main()
