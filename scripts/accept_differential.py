#!/usr/bin/env python3
"""Run seeded accept batches on the SQLite store of two trees and compare every table.

Usage: python scripts/accept_differential.py --base DIR [--tree DIR] [--seeds 300] [--first 0]
                                           [--store sqlite|postgres]

Why: a change to what an accept does inside the write lock (statements, values prepared before it,
sums held for a batch, reads kept across accepts) must leave every answer and every row of every
table as it was (`store_differential.py` does the same for the owner's writes). Each scenario
(seed) makes three accounts (cash with a low-balance threshold and a quota, cash and an expiring
voucher, postpaid) with keys and signs, then runs 1 to 6 write batches, each one `gather` of 1 to
12 calls: accepts (keyed or not, one or two recipients, 1, 2, 3, 8 or 9 parts a message, billed or
not, without sending rules now and then, an approved or a pending sign, 0 to 500 a message, clocks
on both sides of midnight, replays of an Idempotency-Key) with top-ups and account changes (quota,
threshold, disabled, enabled) among them. After each batch every table is dumped (all columns, rows
sorted; `row_version`, a random stamp, left out; the random part of generated ids masked) with the
batch's answers; the two trees' dumps must be equal. Each tree runs in a child process that imports
`bridge` and `tests` from it.
`--store postgres` (session 59's review) runs the same scenarios on a PostgreSQL store: a
throw-away cluster (tests/pg_cluster.py, started by this script), a new database a seed and tree,
every table of the public schema dumped the same way (`schema_version` left out). Its pool has
one connection, so a batch's calls reach the server in the order they were made, as the SQLite
store's write lock takes them: the serial ids (the ledger's, the outbox's) and the decisions
that depend on that order (a balance, a quota) are then the same in both trees.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # children.py

from children import Children  # noqa: E402
from seeded_compare import compare, dump, pg_dump, run_seeds  # noqa: E402

# The two children (one a tree), ended with this script however it ends (children.py).
CHILDREN = Children()

# bridge.ids.new_id: a prefix, 10 characters of time, 16 random ones.
_RANDOM_ID = re.compile(r"\b([a-z]+_[0-9A-Z]{10})[0-9A-Z]{16}\b")

MIN = 60_000
DAY = 24 * 60 * MIN


def _masked(value: Any) -> Any:
    return _RANDOM_ID.sub(r"\1*", value) if isinstance(value, str) else value


def answer(out: Any) -> str:
    """A call's answer as text (an accept's every field, a fault's repr)."""
    if out is None or isinstance(out, (bool, BaseException)):
        return repr(out)
    if not hasattr(out, "accepted"):  # an account change's answer
        return repr((out.daily_quota, out.low_balance_threshold, out.status, out.updated_at))
    return _masked(
        repr(
            (
                out.accepted,
                out.refusal,
                None if out.existing is None else out.existing.response,
                out.plan,
                out.auth_refusal,
                out.retry_after,
            )
        )
    )


async def scenario(seed: int, path: Path, dsn: str | None = None) -> list[str]:
    from dataclasses import replace

    from bridge.domain import admission as adm
    from bridge.domain.ledger import grant_voucher, topup
    from bridge.store.models import AcceptBatch, AppKey, IdempotencyRecord
    from bridge.store.sqlite import SqliteStore
    from tests.integration.test_store_rules import NOW, account, billed, message, sign

    rnd = random.Random(seed)
    # Drawn apart (session 59's review), so the draws above stay each seed's as they were: some
    # accepts without sending rules (AcceptBatch.rules None), the API's send path (PostgreSQL's
    # one statement, _ACCEPT_SEND, when keyed; the general transaction otherwise).
    plain = random.Random(f"plain-{seed}")
    # A message's parts drawn apart too (session 60's review): drawn from `rnd`, they moved
    # every later draw, and the seeds of sessions before 60 no longer ran what they had run.
    longer = random.Random(f"parts-{seed}")
    midnight = NOW
    day = adm.day_key(NOW, "UTC")
    while adm.day_key(midnight, "UTC") == day:
        midnight += MIN
    clocks = (NOW, NOW, NOW + 1, midnight - 1, midnight, midnight + MIN)
    aids = ("acc_a", "acc_b", "acc_c")
    s: Any
    if dsn is None:
        s = SqliteStore(path)
    else:
        from bridge.store.postgres import PostgresStore

        s = PostgresStore(dsn, min_size=1, max_size=1)  # the calls in order (see the doc)
    await s.open()

    async def snapshot() -> str:
        return dump(path, _masked) if dsn is None else await pg_dump(dsn, _masked)

    try:
        await s.create_account(
            account("acc_a", status_url="https://hook.example/a", threshold=1_150, daily_quota=6)
        )
        await s.create_account(account("acc_b", daily_quota=0))
        await s.create_account(account("acc_c", kind="postpaid", daily_quota=3))
        for aid in aids:
            await sign(s, aid=aid)
        await sign(s, "Pending", "pending", aid="acc_a")
        await s.append_ledger("acc_a", topup(1_500, NOW, "funds-a"))
        await s.append_ledger("acc_b", topup(300, NOW, "funds-b"))
        await s.append_ledger("acc_b", grant_voucher(900, NOW, "v1", NOW + DAY))
        for aid in aids:
            await s.add_key(AppKey(f"K{aid}", aid, b"sealed", "active", NOW), max_active=2)
        out = [await snapshot()]
        n = 0
        for _batch in range(rnd.randint(1, 6)):
            calls: list[Coroutine[Any, Any, Any]] = []
            for _op in range(rnd.randint(1, 12)):
                n += 1
                aid = rnd.choice(aids)
                what = rnd.random()
                if what < 0.75:
                    clock = rnd.choice(clocks)
                    sign_name = rnd.choice(("Acme",) * 5 + ("Pending",))
                    # A long text's parts too (session 60: one INSERT of a message's parts).
                    parts = longer.choice((1, 1, 1, 2, 3, 8, 9))
                    msgs = tuple(
                        message(
                            f"m{n}-{i}",
                            f"+86138{rnd.randint(0, 3):06d}{i:02d}",
                            account_id=aid,
                            sign=sign_name,
                            at=clock,
                            parts=parts,
                        )
                        for i in range(rnd.choice((1, 1, 1, 1, 2)))
                    )
                    replay = rnd.random() < 0.15
                    key = f"i{rnd.randint(1, max(1, n - 1))}" if replay else f"i{n}"
                    rules = replace(
                        billed(*msgs, amount=rnd.choice((0, 100, 200, 300, 500))),
                        sign_name=sign_name,
                    )
                    if rnd.random() < 0.2:
                        rules = replace(rules, billing=False)
                    batch = AcceptBatch(
                        aid,
                        msgs,
                        key,
                        IdempotencyRecord(f"hash-{key}", 202, f'{{"n":{n}}}'.encode()),
                        clock + DAY,
                        rules=rules,
                    )
                    if rnd.random() < 0.8:
                        batch = replace(
                            batch,
                            key_id=f"K{aid}",
                            nonce=f"n{rnd.randint(1, n) if rnd.random() < 0.05 else n}",
                            nonce_expires_at=clock + 10 * MIN,
                        )
                    if plain.random() < 0.2:
                        batch = replace(batch, rules=None)
                    calls.append(s.accept(batch, clock))
                elif what < 0.87:
                    calls.append(s.append_ledger(aid, topup(rnd.choice((50, 400)), NOW, f"t{n}")))
                else:
                    change = rnd.choice(
                        (
                            {"daily_quota": 2},
                            {"daily_quota": 20},
                            {"low_balance_threshold": 5_000},
                            {"low_balance_threshold": 0},
                            {"status": "disabled"},
                            {"status": "active"},
                        )
                    )
                    calls.append(s.update_account(aid, change, NOW + n))
            got = await asyncio.gather(*calls, return_exceptions=True)
            out.append("\n".join(answer(g) for g in got) + "\n" + await snapshot())
        return out
    finally:
        await s.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the tree to compare against")
    ap.add_argument("--tree", default=str(HERE))
    ap.add_argument("--seeds", type=int, default=300)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--admin-dsn", help=argparse.SUPPRESS)  # the children's server
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, args.child)
        run_seeds(args.first, args.seeds, args.admin_dsn, scenario, "adiff")
        return
    CHILDREN.on_signals()
    more = ["--seeds", str(args.seeds), "--first", str(args.first)]
    if args.store == "postgres":
        sys.path.insert(0, str(HERE))
        from tests import pg_cluster as pgc

        with CHILDREN.started(pgc.start_cluster, pgc.Cluster.stop) as cluster:
            compare(
                __file__, args.base, args.tree, [*more, "--admin-dsn", cluster.admin_dsn], CHILDREN
            )
    else:
        compare(__file__, args.base, args.tree, more, CHILDREN)


if __name__ == "__main__":
    main()
