"""Review of session 63's held accept rows (r2): a batch of many jobs, its rows held and written
at its end (`bridge/store/sqlite_rows.py`), stores what the same calls store with every accept
writing its own rows at once (the tree before the merge).

Why: h2's tests hold rows from two jobs a batch, with batches of up to 19 accepts and one kind
of job between them. Here the daemon's floor (eight jobs) is kept and each seed runs batches of
8 to 70 calls on two real SQLite files, one holding rows and one not (`defer_min_jobs` out of
reach: each accept writes its own, as before session 63), with everything such a batch can hold
mixed in: keyed and unkeyed sends of 1 to 3 parts and of two recipients (more than 32 rows of a
table: chunks of 32 and the powers of two after), plans of two ledger rows (a voucher with its
expiry and cash), frequency rules over a pool of four numbers (the held rows written before an
accept whose history reads one of them), duplicate message ids (stored, and an earlier accept's
in the batch: the held write fails and the batch runs again with savepoints), replays of an
Idempotency-Key, spent nonces, refusals for balance and quota, and other jobs among the accepts
(the owner's claim, which takes the queue in rowid order, a top-up, a quota change). Every
answer (a claim's messages in its order too) and every row of the accept's tables must be the
same in both files after each batch.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import sys
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge.domain import frequency as freq  # noqa: E402
from bridge.domain.admission import FrequencyRule  # noqa: E402
from bridge.domain.ledger import grant_voucher, topup  # noqa: E402
from bridge.store import sqlite_rows  # noqa: E402
from bridge.store.models import AcceptBatch, AppKey, IdempotencyRecord  # noqa: E402
from bridge.store.sqlite import SqliteStore  # noqa: E402
from tests.integration.test_store_rules import (  # noqa: E402
    DAY,
    LEASE,
    MIN,
    NOW,
    account,
    billed,
    message,
    sign,
)

# The numbers the sends go to: few, so frequency rules meet earlier sends of the batch.
POOL = ("+8613800000001", "+8613800000002", "+8613800000003", "+8613800000004")
ACCOUNTS = ("acc_a", "acc_b")


async def _store(path: Path, *, hold: bool) -> SqliteStore:
    s = SqliteStore(path)
    await s.open()
    if hold:
        assert s._runner.defer_min_jobs == 8  # the daemon's floor, kept
    else:
        s._runner.defer_min_jobs = 10**9  # each accept writes its own rows (before session 63)
    await s.create_account(account("acc_a", threshold=400_000, daily_quota=300))
    await s.create_account(account("acc_b"))
    for aid in ACCOUNTS:
        await sign(s, aid=aid)
        await sign(s, "Pending", "pending", aid=aid)
        await s.add_key(AppKey(f"K{aid}", aid, b"sealed", "active", NOW), max_active=2)
    await s.append_ledger("acc_a", topup(900_000, NOW, "funds-a"))
    await s.append_ledger("acc_b", topup(60_000, NOW, "funds-b"))
    await s.append_ledger("acc_b", grant_voucher(30_000, NOW, "voucher-b", NOW + DAY))
    return s


def _calls(rnd: random.Random, first: int, size: int) -> list[tuple[str, Any]]:
    """One batch's calls, numbered from `first`: ("accept", AcceptBatch) and the other jobs."""
    out: list[tuple[str, Any]] = []
    for n in range(first, first + size):
        what = rnd.random()
        if what < 0.02:
            out.append(("claim", rnd.choice((3, 50))))
            continue
        if what < 0.035:
            out.append(
                ("topup", (rnd.choice(ACCOUNTS), topup(rnd.choice((500, 5_000)), NOW, f"t{n}")))
            )
            continue
        if what < 0.045:
            out.append(("quota", rnd.choice((0, 5, 300))))
            continue
        aid = rnd.choice(ACCOUNTS)
        sign_name = "Pending" if rnd.random() < 0.05 else "Acme"
        parts = rnd.choice((1, 1, 1, 2, 3))
        # A number of the pool now and then (a frequency rule's history meets the batch's
        # earlier sends), else one of its own (long runs of held rows, past 32).
        recipients = [
            rnd.choice(POOL) if rnd.random() < 0.3 else f"+86139{n:06d}{i}"
            for i in range(2 if rnd.random() < 0.2 else 1)
        ]
        dup = n > 1 and rnd.random() < 0.04  # an id stored or held by an earlier accept
        msgs = tuple(
            message(
                f"m{rnd.randint(max(1, n - 12), n - 1) if dup else n}-{i}",
                to,
                account_id=aid,
                parts=parts,
                sign=sign_name,
            )
            for i, to in enumerate(recipients)
        )
        rules = billed(*msgs, amount=rnd.choice((0, 300, 1_000, 7_000)), sign_name=sign_name)
        if rnd.random() < 0.2:
            numbers = tuple(m.recipient for m in msgs)
            limits = freq.Limits(rnd.choice((1, 2, 3)), 0, 0)
            rules = replace(
                rules, frequency=FrequencyRule("raw", sign_name, None, limits, "UTC", numbers)
            )
        replay = rnd.random() < 0.08
        key = f"k{rnd.randint(max(1, n - 12), max(1, n - 1)) if replay else n}"
        batch = AcceptBatch(
            aid,
            msgs,
            key,
            IdempotencyRecord(f"hash-{key}", 202, f'{{"n":{n}}}'.encode()),
            NOW + DAY,
            rules=rules,
        )
        if rnd.random() < 0.7:
            spent = rnd.random() < 0.04
            batch = replace(
                batch,
                key_id=f"K{aid}",
                nonce=f"n{rnd.randint(1, n) if spent else n}",
                nonce_expires_at=NOW + 10 * MIN,
            )
        out.append(("accept", batch))
    return out


async def _answer(store: SqliteStore, call: tuple[str, Any], now: int) -> Any:
    kind, arg = call
    if kind == "claim":
        work = await store.claim("i1", arg, now, LEASE)
        return [(w.id, [g.seq for g in w.segments]) for w in work]
    if kind == "topup":
        return await store.append_ledger(*arg)
    if kind == "quota":
        return (await store.update_account("acc_a", {"daily_quota": arg}, now)).daily_quota
    out = await store.accept(arg, now)
    return (
        out.accepted,
        out.refusal,
        None if out.existing is None else out.existing.response,
        out.plan,
        out.auth_refusal,
        out.retry_after,
    )


def _dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of the tables an accept or these jobs write: the messages and the ledger in
    rowid order (the queue's, the ledger's ids), the others by every column; the webhooks'
    random ids left out."""
    with closing(sqlite3.connect(path)) as db:
        tables: dict[str, list[tuple[Any, ...]]] = {
            t: db.execute(f"SELECT rowid, * FROM {t} ORDER BY rowid").fetchall()
            for t in ("messages", "ledger")
        }
        for t in ("segments", "pockets", "daily_counts", "nonces", "idempotency", "accounts"):
            names = [d[0] for d in db.execute(f"SELECT * FROM {t} LIMIT 1").description]
            cols = ", ".join(n for n in names if n != "row_version")  # a random stamp
            tables[t] = db.execute(f"SELECT {cols} FROM {t} ORDER BY {cols}").fetchall()
        tables["webhooks"] = db.execute(
            "SELECT id, account_id, kind, ref_id, payload, state, next_attempt_at, created_at "
            "FROM webhook_outbox ORDER BY id"
        ).fetchall()
        return tables


async def _batch(store: SqliteStore, calls: list[tuple[str, Any]], now: int) -> list[Any]:
    """The calls in one write batch of the runner (checked), exceptions as their type's name."""
    commits = store._runner.commits
    got = await asyncio.gather(*(_answer(store, c, now) for c in calls), return_exceptions=True)
    assert store._runner.commits == commits + 1, "not one batch"
    return [type(g).__name__ if isinstance(g, BaseException) else g for g in got]


@pytest.mark.parametrize("seed", range(12))
async def test_big_batches_store_what_each_accept_writing_its_own_rows_stores(
    tmp_path: Path, seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = await _store(tmp_path / "held.db", hold=True)
    alone = await _store(tmp_path / "alone.db", hold=False)
    rnd = random.Random(seed)
    real = sqlite_rows.write_rows
    written: list[int] = []

    def counted(c: sqlite3.Connection, pending: sqlite_rows.PendingRows) -> None:
        written.append(len(pending.accepts))
        real(c, pending)

    monkeypatch.setattr(sqlite_rows, "write_rows", counted)
    first = 1
    try:
        for step in range(4):
            calls = _calls(rnd, first, rnd.choice((8, 9, 16, 33, 40, 70)))
            first += len(calls)
            now = NOW + step * 20_000  # within the frequency rules' minute
            outs = await _batch(held, calls, now)
            assert outs == await _batch(alone, calls, now), (seed, step)
            assert _dump(held.path) == _dump(alone.path), (seed, step)
            # Run again only where the other file's batch was (a duplicate id): a held write
            # that fails for a fault of its own is hidden from the answers by the rerun.
            assert held._runner.reruns == alone._runner.reruns, (seed, step)
        # The rows were held and written by multi-row INSERTs in the one file only.
        assert sum(written) > 0
    finally:
        await held.close()
        await alone.close()
