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
`--rules` (session 61's review of the PostgreSQL accept's facts arguments written directly):
the same scenarios with the sending rules the plain ones leave out, drawn from a random of their
own (so a seed without it runs what it ran): frequency rules of every kind (a sign, per-number
signs, a number exempt, limits of 1 to 5 a minute, hour and day in three time zones),
templates (approved, pending, an unknown code; a revision current or stale), further signs
of a two-recipient batch (approved, pending, unregistered), opt-outs (at the start and among
the calls) and a do-not-contact list (numbers and prefixes), an account with a rate, and
recipients of every shape an array literal must carry (quotes, backslashes, braces, commas,
spaces, NULL in any case, the empty text, non-ASCII, "=" or a letter first, 300 digits).
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
RULES = False  # --rules: the sending rules' draws (see the doc)
# Recipients for --rules: the usual numbers, and texts an array literal must quote or escape.
HOSTILE_NUMBERS = (
    '+86138"00',
    "+86\\138000",
    "NULL",
    "null",
    "",
    "{+8613800,1}",
    " +86 138 ",
    "=+86138000",
    "é汉1380000",
    "9" * 300,
    "abc12345",
    "8613800000001",
    "+86138",
    ">1234567",
    "NuLl",
)


def _masked(value: Any) -> Any:
    return _RANDOM_ID.sub(r"\1*", value) if isinstance(value, str) else value


def answer(out: Any) -> str:
    """A call's answer as text (an accept's every field, a fault's repr)."""
    if out is None or isinstance(out, (bool, int, BaseException)):  # int: add_optouts
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
        rr = random.Random(f"rules-{seed}")
        pool: tuple[str, ...] = ()
        seen: dict[str, Any] = {}  # --rules: each account's last send (_with_rules)
        if RULES:
            pool = await _rules_setup(s, rr)
        out = [await snapshot()]
        n = 0
        for _batch in range(rnd.randint(1, 6)):
            calls: list[Coroutine[Any, Any, Any]] = []
            for _op in range(rnd.randint(1, 12)):
                n += 1
                aid = rnd.choice(aids)
                what = rnd.random()
                if RULES and rr.random() < 0.15:
                    aid = "acc_d"  # a rate
                if RULES and rr.random() < 0.06:
                    numbers = rr.sample(pool, rr.randint(1, 3))
                    calls.append(s.add_optouts(aid, numbers, rr.choice(("api", "mo")), NOW + n))
                    continue
                if what < 0.75:
                    clock = rnd.choice(clocks)
                    if RULES and rr.random() < 0.7:
                        clock = NOW + rr.randint(0, 1)  # within a frequency rule's minute
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
                    if RULES:
                        msgs, rules = _with_rules(rr, pool, seen, msgs, rules)
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


async def _rules_setup(s: Any, rr: random.Random) -> tuple[str, ...]:
    """--rules: a fourth account with a rate, more signs and templates, opt-outs and a
    do-not-contact list; the recipients' pool."""
    from bridge.domain.ledger import topup
    from bridge.store.models import AppKey, DncInfo, Template
    from tests.integration.test_store_rules import NOW, account, sign

    await s.create_account(account("acc_d", tps=rr.choice((1, 3)), daily_quota=rr.choice((0, 9))))
    await s.add_key(AppKey("Kacc_d", "acc_d", b"sealed", "active", NOW), max_active=2)
    for aid in ("acc_a", "acc_b", "acc_c", "acc_d"):
        await sign(s, "Beta", rr.choice(("approved", "approved", "pending")), aid=aid)
        await sign(s, 'Q"u\\o', aid=aid)
        await s.append_ledger(aid, topup(rr.choice((3_000, 9_000)), NOW, f"funds-r-{aid}"))
        # Each account's verification and notification templates (the second at revision 2).
        for code, kind, revision in (
            (f"V-{aid}", "verification", 1),
            (f"N-{aid}", "notification", 2),
        ):
            await s.add_template(
                Template(code, aid, kind, code, "x", "", False, "approved", None, NOW, None,
                         revision)
            )  # fmt: skip
    await sign(s, "Acme", aid="acc_d")
    await s.add_template(
        Template("T3", "acc_b", "notification", "T3", "x", "", False, "pending", None, NOW)
    )
    usual = tuple(f"+86138{k:06d}{i:02d}" for k in range(4) for i in range(2))
    pool = usual + tuple(rr.sample(HOSTILE_NUMBERS, 6))
    for aid in ("acc_a", "acc_b", "acc_d"):
        await s.add_optouts(aid, rr.sample(pool, 2), "api", NOW)
    listed = rr.sample(usual, 1)  # E.164 numbers only
    await s.import_dnc(
        DncInfo("dnc_1", "list", None, len(listed), 1, NOW), listed, [rr.choice(usual)[:13]]
    )
    return pool


def _with_rules(
    rr: random.Random, pool: tuple[str, ...], seen: dict[str, Any], msgs: Any, rules: Any
) -> Any:
    """--rules: the batch's recipients from `pool`, its messages' template, kind and sign, and
    its rules' frequency rule, template and further signs (see the doc); now and then the
    account's previous send's (`seen`) again."""
    from dataclasses import replace

    from bridge.domain import admission as adm
    from bridge.domain.frequency import Limits
    from tests.integration.test_store_rules import charges

    aid = msgs[0].account_id
    again = seen.get(aid)
    if again is not None and len(again[0]) == len(msgs) and rr.random() < 0.45:
        # The account's previous send again (new ids): what its frequency rule counts.
        recipients, names, tpl, kind, fr, revision = again
        msgs = tuple(
            replace(m, recipient=r, template=tpl, kind=kind, sign_name=n)
            for m, r, n in zip(msgs, recipients, names, strict=True)
        )
    else:
        signs = ("Acme",) * 10 + ("Beta",) * 2 + ('Q"u\\o', None, None, "Pending", "Gamma")
        tpl = rr.choice((None,) * 10 + (f"V-{aid}",) * 4 + (f"N-{aid}",) * 2 + ("T3", "T9"))
        kind = rr.choice((None, "verification", "notification")) if tpl else None
        rev = 2 if tpl and tpl.startswith("N-") else 1
        msgs = tuple(
            replace(
                m,
                recipient=rr.choice(pool[:2] if rr.random() < 0.6 else pool),
                template=tpl,
                kind=kind,
                sign_name=rr.choice(signs),
            )
            for m in msgs
        )
        names = [m.sign_name for m in msgs]
        fr = None
        if rr.random() < 0.75:
            numbers = tuple(m.recipient for m in msgs)
            if rr.random() < 0.1:
                numbers = numbers[1:]  # the first exempt
            per = tuple(rr.choice(signs) for _ in numbers) if rr.random() < 0.3 else ()
            fr = adm.FrequencyRule(
                # Mostly the kind the messages are counted under (the API's choice), else any.
                rr.choice(("raw", "verification", "template"))
                if rr.random() < 0.15
                else (
                    "raw"
                    if tpl is None
                    else "verification"
                    if kind == "verification"
                    else "template"
                ),
                rr.choice((names[0],) * 5 + (None, "Beta")),
                tpl if rr.random() < 0.9 else "T2",
                Limits(rr.choice((0, 1, 1, 2)), rr.choice((0, 2, 3)), rr.choice((0, 2, 4))),
                rr.choice(("UTC", "Asia/Shanghai", "America/New_York")),
                numbers,
                per,
            )
        # The stored revision mostly (V- 1, N- 2), None (not checked) or a stale one now and then.
        revision = rr.choice((None, rev, rev, rev, rev - 1)) if tpl else None
    seen[aid] = (tuple(m.recipient for m in msgs), names, tpl, kind, fr, revision)
    more = tuple(dict.fromkeys(n for n in names[1:] if n is not None and n != names[0]))
    rules = replace(
        rules,
        sign_name=names[0],
        more_signs=more,
        template_code=tpl,
        template_revision=revision,
        frequency=fr,
        charges=charges(*msgs, amount=rr.choice((0, 100, 300))) if rules.charges else (),
        tz=rr.choice(("UTC", "Asia/Shanghai")),
    )
    return msgs, rules


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", required=True, help="the tree to compare against")
    ap.add_argument("--tree", default=str(HERE))
    ap.add_argument("--seeds", type=int, default=300)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    ap.add_argument("--rules", action="store_true", help="sending rules' draws too (see above)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--admin-dsn", help=argparse.SUPPRESS)  # the children's server
    args = ap.parse_args()
    global RULES
    RULES = args.rules
    if args.child:
        sys.path.insert(0, args.child)
        run_seeds(args.first, args.seeds, args.admin_dsn, scenario, "adiff")
        return
    CHILDREN.on_signals()
    more = ["--seeds", str(args.seeds), "--first", str(args.first), *(["--rules"] * RULES)]
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
