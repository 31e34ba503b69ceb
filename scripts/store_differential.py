#!/usr/bin/env python3
"""Run seeded owner-write scenarios on the SQLite store of two trees and compare every table.

Usage: python scripts/store_differential.py --base DIR [--tree DIR] [--seeds 1500] [--first 0]
                                          [--store sqlite|postgres]

Why: a change to how the owner's steps write (fewer statements, rows grouped, writes skipped)
must leave every row of every table as it was at every point a reader can see. Each scenario
(seed) accepts 1 to 40 messages of 1, 2, 3 or 6 parts, claims them, then runs a random mix of
the owner's writes (`tests/rollup_writes.owner_writes`: results of every outcome, repeats,
releases, receipts early, late, repeated, enroute, claims, sweeps past the receipt timeout)
with whole-batch steps among them (every claimed part's result, or every part's receipt, in one
batch at one time: the shape of a daemon's flushes, where many rows get the same values), an
SMSC with one receipt per message in a third of them. After each write every table is dumped
(all columns, rows sorted) with what the write returned; the two trees' dumps must be equal.
Half the seeds (odd ones) give the SMSC's texts hostile values (session 57's review): every
message id ends in one of HOSTILE (quotes, backslashes, braces, commas, the word NULL, spaces
at the ends, non-ASCII; ids of one seed alike, so receipts still match), and each result's raw
id and each receipt's raw text carry another: what an SMSC may send, and what the PostgreSQL
store now writes as array literals (postgres_arrays.as_literals).
Each tree runs in a child process that imports `bridge` and `tests` from it.
`--store postgres` (session 57) runs the same scenarios on a PostgreSQL store: a throw-away
cluster (tests/pg_cluster.py, started by this script), a new database a seed and tree, every
table of the public schema dumped the same way (the schema's bookkeeping, `schema_version`,
left out; each table's serial ids compared as they are).

Session 57 (`spread_steps`, drawn from a random of their own, so a seed's steps above are as
they were): receipts batches as a daemon's flush brings them, their done times the receipts'
arrival, 1 to 8 a millisecond (a daemon at ~4,500 receipts/s: 4-5), a message's parts of one
outcome or each its own, in arrival or shuffled order, some parts receipted twice (another
outcome, a later time), some ids of no part (kept pending, applied by a later result), receipts
through a second SMSC; later results of every part of some messages (a failed or unknown one
among them); "sent" webhooks in some scenarios (webhooks.send_intermediate), and claims that
park some recipients (a route down) with others routable (parked messages taken back).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # children.py

from children import Children  # noqa: E402
from seeded_compare import compare, dump, pg_dump, run_seeds  # noqa: E402

# The two children (one a tree), ended with this script however it ends (children.py).
CHILDREN = Children()


# Text an SMSC may put in a message id or a receipt (NUL aside: PostgreSQL's text refuses it,
# both ways); each is a suffix, so a value also ends in spaces or a quote.
HOSTILE = (
    '"',
    "\\",
    '\\"',
    "{a,b}",
    ",",
    " NULL",
    "NULL",
    "null",
    "  ",
    "\t\n",
    "é汉😀",
    '{"x"}',
    "''",
    "\\N",
)


def hostile(rnd: random.Random, ops: list[Any]) -> list[Any]:
    """`ops` with the SMSC's texts hostile: the message ids (results' and receipts' alike)
    ending in one of HOSTILE, the results' raw ids and the receipts' raw texts in another."""
    from dataclasses import replace

    tail = rnd.choice(HOSTILE)

    def ref(v: str | None) -> str | None:
        return None if v is None else v + tail

    out = []
    for kind, items, releases, when in ops:
        if kind == "results":
            items = [
                replace(
                    r,
                    smsc_msg_id=ref(r.smsc_msg_id),
                    smsc_msg_id_raw=None if r.smsc_msg_id_raw is None
                    else r.smsc_msg_id_raw + rnd.choice(HOSTILE) + tail,
                )
                for r in items
            ]  # fmt: skip
        elif kind == "receipts":
            items = [
                replace(r, smsc_msg_id=ref(r.smsc_msg_id), raw=rnd.choice(HOSTILE) + "id:" + tail)
                for r in items
            ]
        out.append((kind, items, releases, when))
    return out


async def scenario(seed: int, path: Path, dsn: str | None = None) -> list[str]:
    from bridge.store.models import ReceiptIn, SubmitResult
    from bridge.store.sqlite import SqliteStore
    from tests.rollup_writes import LEASE, NOW, accept, owner_writes

    rnd = random.Random(seed)
    mids = [f"msg_{k:03d}" for k in range(rnd.randint(1, 40))]
    parts = {mid: rnd.choice([1, 1, 1, 2, 3, 6]) for mid in mids}
    ops = owner_writes(rnd, mids, parts)
    at = ops[-1][3] if ops else NOW + 2_000
    for _ in range(rnd.randint(1, 4)):  # whole-batch steps, inserted at random places
        at += 1
        states = ["delivered"] * 8 + ["undeliverable", "expired", "enroute"]
        sub = rnd.sample(mids, rnd.randint(1, len(mids)))
        if rnd.random() < 0.5:
            smsc = rnd.choice(["smsc1", "smsc1", "smsc2"])
            results = [
                SubmitResult(m, q, "sent", "smsc1", f"x{m}-{q}-0", f"x{m}-{q}-0", None, at, at)
                if smsc == "smsc1"
                else SubmitResult(m, q, "sent", smsc, f"y{m}-{q}", f"y{m}-{q}", None, at, at)
                for m in sub
                for q in range(1, parts[m] + 1)
            ]
            op: Any = ("results", results, [], at)
        else:
            receipts = []
            for m in sub:
                for q in range(1, parts[m] + 1):
                    state = rnd.choice(states)
                    stat = {"delivered": "DELIVRD", "undeliverable": "UNDELIV"}.get(state, "X")
                    err = None if state == "delivered" else rnd.choice([None, "001"])
                    receipts.append(ReceiptIn("smsc1", f"x{m}-{q}-0", state, stat, err, at, at))
            op = ("receipts", receipts, None, at)
        ops.insert(rnd.randint(0, len(ops)), op)
    more = random.Random(f"spread-{seed}")
    for op in spread_steps(more, mids, parts, max((op[3] for op in ops), default=NOW) + 1):
        ops.insert(more.randint(0, len(ops)), op)
    park: Any = None
    routable: tuple[str, ...] = ()
    if more.random() < 0.3:  # a route down: even recipients parked, "r-up" taken back
        park, routable = _park_even, ("r-up",)
    if seed % 2:  # after the spread steps, so theirs are hostile too
        ops = hostile(random.Random(seed), ops)
    store: Any
    if dsn is None:
        store = SqliteStore(path)
    else:
        from bridge.store.postgres import PostgresStore

        store = PostgresStore(dsn, min_size=1, max_size=4)
    await store.open()

    async def snapshot() -> str:
        return dump(path) if dsn is None else await pg_dump(dsn)

    try:
        if rnd.random() < 0.3:
            store.one_receipt_smscs = frozenset({"smsc1"})
        store.send_intermediate = more.random() < 0.3
        await accept(store, mids, {m: n for m, n in parts.items() if n > 1})
        await store.claim("i1", 50, NOW + 1_000, LEASE)
        out = [await snapshot()]
        for kind, items, releases, when in ops:
            if kind == "results":
                got: Any = await store.record_submits(items, releases, when, instance="i1")
            elif kind == "receipts":
                got = await store.apply_receipts(items, when)
            elif kind == "claim":
                work = await store.claim("i1", 50, when, LEASE, park, routable)
                got = [(w.id, [g.seq for g in w.segments]) for w in work]
            else:
                got = await store.sweep(when, 72 * 3_600_000)
            out.append(repr(got) + "\n" + await snapshot())
        return out
    finally:
        await store.close()


def _park_even(recipient: str) -> str | None:
    """A claim's park (Router.parker): recipients ending in an even digit have their route
    down ("r-down"); the claim also takes back those parked under "r-up" (routable)."""
    return "r-down" if int(recipient[-1]) % 2 == 0 else None


def spread_steps(rnd: random.Random, mids: list[str], parts: dict[str, int], at: int) -> list[Any]:
    """Receipts batches of spread done times and results batches (see the module's doc), each
    at a later time than the last, with claims and a sweep past the timeout among them; the
    caller inserts each at a random place among the seed's other steps."""
    from bridge.store.models import ReceiptIn, SubmitResult

    outcomes = [  # most delivered, as a carrier's receipts mostly are
        *[("delivered", "DELIVRD", None)] * 24,
        ("undeliverable", "UNDELIV", "001"),
        ("undeliverable", "UNDELIV", None),
        ("rejected", "REJECTD", "045"),
        ("expired", "EXPIRED", None),
        ("unknown", "UNKNOWN", None),
        ("enroute", "ENROUTE", None),
    ]
    ops: list[Any] = []
    for _ in range(rnd.randint(2, 6)):
        at += rnd.randint(1, 3_000)
        kind = rnd.random()
        if kind < 0.6:
            per_ms = rnd.choice([1, 3, 4, 4, 5, 5, 8])
            sub = rnd.sample(mids, rnd.randint(1, len(mids)))
            items = []
            for m in sub:
                one = rnd.choice(outcomes) if rnd.random() < 0.6 else None
                items += [(m, q, one or rnd.choice(outcomes)) for q in range(1, parts[m] + 1)]
            if rnd.random() < 0.5:
                rnd.shuffle(items)
            twice = 0.05 if rnd.random() < 0.3 else 0.0  # a batch with a part receipted twice
            receipts = []
            for k, (m, q, (state, stat, err)) in enumerate(items):
                t = at + k // per_ms
                ref = f"x{m}-{q}-{int(rnd.random() < 0.05)}"
                smsc = "smsc1"
                if rnd.random() < 0.1:
                    smsc, ref = "smsc2", f"y{m}-{q}"
                receipts.append(ReceiptIn(smsc, ref, state, stat, err, t - 500, t))
                if rnd.random() < twice:  # the same part again, later, maybe otherwise
                    state, stat, err = rnd.choice(outcomes)
                    receipts.append(ReceiptIn(smsc, ref, state, stat, err, t, t + 1))
            at += len(items) // per_ms + 1
            ops.append(("receipts", receipts, None, at))
        elif kind < 0.8:
            sub = rnd.sample(mids, rnd.randint(1, len(mids)))
            results = []
            for m in sub:
                smsc = rnd.choice(["smsc1", "smsc1", "smsc2"])
                for q in range(1, parts[m] + 1):
                    out = "sent" if rnd.random() < 0.9 else rnd.choice(["failed", "unknown"])
                    sid = (
                        (f"x{m}-{q}-0" if smsc == "smsc1" else f"y{m}-{q}")
                        if out == "sent"
                        else None
                    )
                    code = None if out == "sent" else "ESME_RSYSERR"
                    results.append(SubmitResult(m, q, out, smsc, sid, sid, code, at, at - 10))
            ops.append(("results", results, [], at))
        elif kind < 0.93:
            ops.append(("claim", None, None, at + 600_000))
        else:
            ops.append(("sweep", None, None, at + 80 * 3_600_000))
    return ops


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the tree to compare against")
    ap.add_argument("--tree", default=str(HERE))
    ap.add_argument("--seeds", type=int, default=1500)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--admin-dsn", help=argparse.SUPPRESS)  # the children's server
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, args.child)
        run_seeds(args.first, args.seeds, args.admin_dsn, scenario, "diff")
        return
    CHILDREN.on_signals()
    if args.store == "postgres":
        sys.path.insert(0, str(HERE))
        from tests import pg_cluster as pgc

        with CHILDREN.started(pgc.start_cluster, pgc.Cluster.stop) as cluster:
            asyncio.run(_past_the_fence(cluster.admin_dsn))
            compare_trees(args, ["--admin-dsn", cluster.admin_dsn])
    else:
        compare_trees(args, [])


async def _past_the_fence(admin_dsn: str) -> None:
    """Waits until the server is 2.5 s old (session 58). A store claims nothing for
    postgres_confirm.FENCE_S (2 s) after the server's start (another instance may be writing
    again results its crash lost), so a seed whose first claim came sooner claimed nothing and
    its dumps differed from the other tree's, whose claim came later: the first seed of a run,
    now and then, on a quiet machine (session 57: 1 of 10 seeds, a tree against itself). The
    same wait as bench_pg_owner.py's."""
    import asyncpg

    c = await asyncpg.connect(admin_dsn)
    try:
        age = await c.fetchval(
            "SELECT extract(epoch FROM now() - pg_postmaster_start_time())::float8"
        )
    finally:
        await c.close()
    await asyncio.sleep(max(0.0, 2.5 - age))


def compare_trees(args: argparse.Namespace, extra: list[str]) -> None:
    """The two trees' children side by side, their lines compared (seeded_compare)."""
    more = ["--seeds", str(args.seeds), "--first", str(args.first), *extra]
    compare(__file__, args.base, args.tree, more, CHILDREN)


if __name__ == "__main__":
    main()
