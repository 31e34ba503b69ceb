#!/usr/bin/env python3
"""A closed account's MO inbox masked in pages on PostgreSQL: what one page costs at depth.

Usage: SMPP_BRIDGE_CI=1 python scripts/bench_pg_mo_pages.py [--inbox 1000000] [--per-ms 10]
                                                           [--runs 2]

Why: a close masks the account's replies 5,000 a transaction (postgres_ends.mask_mo_page),
walking its (account_id, received_at) index from a cursor of (received_at, id); the index has
no id, so a page reads the rest of the cursor's millisecond again (as the messages' masking
does: README note 18, where an index with the id was measured and not kept). This fills a
throwaway cluster (tests/pg_cluster.py) with `--inbox` replies of the account, `--per-ms` to a
millisecond, and half as many of another account, then, alternating per run:
- `page`: the masking's page statement itself (postgres_ends._MO_PAGE: the walk and the
  UPDATE), each in a transaction rolled back, at depths 0, 50, 90, 95 and 99 % of the inbox
  (the best of three, ms);
- `walk`: the page's SELECT alone over the whole inbox, cursor to cursor (the pages, the total
  and the slowest, s and ms);
each for the statement as it is (`as is`), for its row comparison written as `received_at >
$2 OR id > $3` (`or`), and, last, with the index on (account_id, received_at, id) instead and
the comparison in the index (`index+id`, its build timed and its size printed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # children.py, beside this script

from children import Children  # noqa: E402

from bridge.store.postgres_ends import _MO_PAGE, MO_CHUNK  # noqa: E402

# No child of its own: the cluster (pg_ctl's daemon) is stopped when main's block ends, SIGTERM
# and SIGINT included (Children.started, Children.on_signals); it was left running by either.
CHILDREN = Children()

ACCOUNT = "acc_closed"
DEPTHS = (0.0, 0.5, 0.9, 0.95, 0.99)
_AS_IS = "received_at >= $2 AND (received_at, id) > ($2, $3)"
FORMS = {
    "as is": _AS_IS,
    "or": "received_at >= $2 AND (received_at > $2 OR id > $3)",
}
WITH_ID = "(received_at, id) > ($2, $3)"


def _walk_sql(where: str) -> str:
    return (
        f"SELECT id, received_at FROM mo_inbox WHERE account_id = $1 AND {where} "
        "ORDER BY received_at, id LIMIT $4"
    )


async def _fill(c: Any, inbox: int, per_ms: int) -> None:
    for account, n in ((ACCOUNT, inbox), ("acc_other", inbox // 2)):
        await c.execute(
            "INSERT INTO mo_inbox (id, account_id, smsc, source, destination, text, received_at) "
            "SELECT 'mo_' || md5($1 || g::text), $1, 'smscA', '+86137' || lpad(g::text, 8, '0'), "
            "'1069', 'reply ' || g, 1700000000000::bigint + g / $3 "
            "FROM generate_series(0, $2 - 1) g",
            account,
            n,
            per_ms,
        )
    await c.execute("VACUUM ANALYZE mo_inbox")


async def _pages(c: Any, where: str, cursors: list[tuple[int, str]]) -> list[float]:
    """The page statement at each cursor, rolled back: the best of three, ms."""
    sql = _MO_PAGE.replace(_AS_IS, where)
    out = []
    for after in cursors:
        best = float("inf")
        for _ in range(3):
            tr = c.transaction()
            await tr.start()
            t = time.perf_counter()
            await c.fetchrow(sql, ACCOUNT, *after, MO_CHUNK, "masked")
            best = min(best, time.perf_counter() - t)
            await tr.rollback()
        out.append(round(best * 1000, 1))
    return out


async def _walk(c: Any, where: str) -> tuple[int, float, float]:
    sql = _walk_sql(where)
    after: tuple[int, str] = (-1, "")
    pages, slowest, t0 = 0, 0.0, time.perf_counter()
    while True:
        t = time.perf_counter()
        rows = await c.fetch(sql, ACCOUNT, *after, MO_CHUNK)
        slowest = max(slowest, time.perf_counter() - t)
        pages += 1
        if len(rows) < MO_CHUNK:
            return pages, round(time.perf_counter() - t0, 2), round(slowest * 1000, 1)
        after = (rows[-1][1], rows[-1][0])


async def _run(dsn: str, args: argparse.Namespace) -> None:
    import asyncpg

    from bridge.store.postgres import PostgresStore

    store = PostgresStore(dsn, min_size=1, max_size=2)
    await store.open()  # the migrations
    await store.close()
    c = await asyncpg.connect(dsn)
    try:
        t0 = time.perf_counter()
        await _fill(c, args.inbox, args.per_ms)
        print(f"filled {args.inbox} replies in {time.perf_counter() - t0:.1f} s", flush=True)
        order = await c.fetch(
            "SELECT received_at, id FROM mo_inbox WHERE account_id = $1 ORDER BY received_at, id",
            ACCOUNT,
        )
        cursors = [
            (-1, "")
            if d == 0
            else (order[int(d * args.inbox) - 1][0], order[int(d * args.inbox) - 1][1])
            for d in DEPTHS
        ]
        print(f"depths {list(DEPTHS)}", flush=True)
        names = list(FORMS)
        for run in range(args.runs):
            for name in names if run % 2 == 0 else names[::-1]:
                pages = await _pages(c, FORMS[name], cursors)
                walked = await _walk(c, FORMS[name])
                print(
                    f"run {run} {name:8} page ms {pages}; walk {walked[0]} pages "
                    f"{walked[1]} s, slowest {walked[2]} ms",
                    flush=True,
                )
        t0 = time.perf_counter()
        await c.execute("CREATE INDEX mo_inbox_account_id ON mo_inbox(account_id, received_at, id)")
        took = time.perf_counter() - t0
        sizes = await c.fetch(
            "SELECT relname, pg_relation_size(oid) FROM pg_class "
            "WHERE relname IN ('mo_inbox_account', 'mo_inbox_account_id')"
        )
        await c.execute("DROP INDEX mo_inbox_account")
        await c.execute("ANALYZE mo_inbox")
        print(
            f"index (account_id, received_at, id) built in {took:.1f} s; "
            + ", ".join(f"{r[0]} {r[1] / 2**20:.1f} MB" for r in sizes),
            flush=True,
        )
        for run in range(args.runs):
            pages = await _pages(c, WITH_ID, cursors)
            walked = await _walk(c, WITH_ID)
            print(
                f"run {run} index+id page ms {pages}; walk {walked[0]} pages {walked[1]} s, "
                f"slowest {walked[2]} ms",
                flush=True,
            )
    finally:
        await c.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--inbox", type=int, default=1_000_000)
    p.add_argument("--per-ms", type=int, default=10, help="the account's replies a millisecond")
    p.add_argument("--runs", type=int, default=2)
    args = p.parse_args()
    from tests import pg_cluster as pgc

    CHILDREN.on_signals()
    with CHILDREN.started(pgc.start_cluster, pgc.Cluster.stop) as cluster:
        dsn = CHILDREN.asyncio_run(pgc.create_database(cluster, "bench_mo_pages"))
        CHILDREN.asyncio_run(_run(dsn, args))


if __name__ == "__main__":
    main()
