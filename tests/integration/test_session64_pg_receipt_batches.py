"""A batch of receipts settles what the same receipts one by one settle (session 64's review).

Session 64 (h6) made the receipts' two reads of the parts they name (`postgres_pipeline._match`
and `_apply`'s) answer with the ordinal of the (SMSC, id) pair among those sent, which the caller
maps back to its own pair, in place of the pair's own texts read back. A pair mapped back wrong
(an ordinal off by one, a pair given twice answered by the wrong one of its ordinals) settles
the wrong part only when a batch names more than one pair: a receipt applied alone has one
pair, and any ordinal maps to it. So this applies seeded batches of hostile shapes on one
real PostgreSQL database and the same receipts one call each on another, and holds every
part, message and kept receipt of the two to the same values; and it holds both to the pairs'
exact equality (in Python): a part named by no receipt is left as it was, and a receipt kept
pending names no part. The shapes: pairs that differ only in case, in blanks at an end, in
a composed or decomposed accent, or in the SMSC alone; a pair given two or three times in a
batch with different outcomes (the first final one stands: note 20, in the order they came);
pairs that name nothing beside ones that do; a message's parts on several pairs.
"""

from __future__ import annotations

import random
from typing import Any

import asyncpg

from bridge.store.models import ReceiptIn
from bridge.store.postgres import PostgresStore
from tests.conftest import run_async
from tests.pg_cluster import Cluster, create_database, drop_database, new_database_name
from tests.rollup_writes import NOW, accept

SMSCS = ("a", "A", "a ", "b")
IDS = ("1", "01", "1 ", " 1", "AB", "ab", "\u00e9", "e\u0301", "NULL", "", "a,b", 'q"', "x\\y")
STATES = ("delivered", "undeliverable", "expired", "rejected", "unknown", "enroute")


async def _parts(c: asyncpg.Connection) -> list[tuple[Any, ...]]:
    return [
        tuple(r)
        for r in await c.fetch(
            "SELECT message_id, seq, smsc, smsc_msg_id, state, done_at, error_code "
            "FROM segments ORDER BY 1, 2"
        )
    ]


async def _state(c: asyncpg.Connection) -> tuple[Any, ...]:
    messages = await c.fetch(
        "SELECT id, state, segments_delivered, segments_failed, error_code, done_at "
        "FROM messages ORDER BY id"
    )
    kept = await c.fetch(
        "SELECT smsc, smsc_msg_id, state, stat, err, done_at, raw FROM pending_receipts "
        "ORDER BY smsc, smsc_msg_id, state, done_at"
    )
    return (await _parts(c), [tuple(r) for r in messages], [tuple(r) for r in kept])


async def _ready(dsn: str, rnd: random.Random) -> list[tuple[str, str]]:
    """Messages accepted and their parts sent, each part on a pair of its own (most of them
    near another part's: SMSCs and ids alike but for case, blanks or an accent)."""
    store = PostgresStore(dsn, min_size=1, max_size=2)
    await store.open()
    try:
        mids = [f"m{k:03d}" for k in range(12)]
        await accept(store, mids, {m: 1 + k % 3 for k, m in enumerate(mids)})
        pairs = [(s, i) for s in SMSCS for i in IDS]
        rnd.shuffle(pairs)
        c: asyncpg.Connection
        async with store.pool.acquire() as c:
            rows = await c.fetch("SELECT message_id, seq FROM segments ORDER BY 1, 2")
            for (mid, seq), (smsc, sid) in zip(rows, pairs, strict=False):
                await c.execute(
                    "UPDATE segments SET smsc = $3, smsc_msg_id = $4, state = 'sent', "
                    "submitted_at = $5 WHERE message_id = $1 AND seq = $2",
                    mid,
                    seq,
                    smsc,
                    sid,
                    NOW + 1_000,
                )
            await c.execute("UPDATE messages SET state = 'sent', q_state = 'done'")
        return pairs[: len(rows)]
    finally:
        await store.close()


def _batches(rnd: random.Random, used: list[tuple[str, str]]) -> list[list[ReceiptIn]]:
    everything = [(s, i) for s in (*SMSCS, "c") for i in IDS]
    out = []
    at = NOW + 2_000
    for _ in range(4):
        batch: list[ReceiptIn] = []
        for _ in range(rnd.randint(2, 25)):
            if batch and rnd.random() < 0.3:  # a pair again, another outcome
                smsc, sid = rnd.choice([(r.smsc, r.smsc_msg_id) for r in batch])
            else:
                smsc, sid = rnd.choice(used if rnd.random() < 0.6 else everything)
            state = rnd.choice(STATES)
            batch.append(ReceiptIn(smsc, sid, state, state[:7].upper(), "000", at, at, "r"))
            at += 1
        out.append(batch)
    return out


async def _run(dsn: str, batches: list[list[ReceiptIn]], alone: bool) -> list[Any]:
    store = PostgresStore(dsn, min_size=1, max_size=2)
    await store.open()
    seen: list[Any] = []
    try:
        now = NOW + 10_000
        for batch in batches:
            if alone:
                counts = [await store.apply_receipts([r], now) for r in batch]
                matched = sum(o.matched for o in counts)
                pending = sum(o.pending for o in counts)
            else:
                o = await store.apply_receipts(batch, now)
                matched, pending = o.matched, o.pending
            async with store.pool.acquire() as c:
                seen.append(((matched, pending), await _state(c)))
            now += 1_000
    finally:
        await store.close()
    return seen


def test_a_batch_of_receipts_settles_what_they_settle_one_by_one(pg_cluster: Cluster) -> None:
    compared = 0
    for seed in range(8):
        rnd = random.Random(seed)
        names = [new_database_name("rb") for _ in range(2)]
        dsns = [run_async(create_database(pg_cluster, n)) for n in names]
        try:
            used, twin = (run_async(_ready(d, random.Random(seed))) for d in dsns)
            assert used == twin  # the same parts on the same pairs
            batches = _batches(rnd, used)
            together = run_async(_run(dsns[0], batches, alone=False))
            alone = run_async(_run(dsns[1], batches, alone=True))
            assert together == alone, seed
            named: set[tuple[str, str]] = set()
            for batch, ((matched, pending), (parts, _m, kept)) in zip(
                batches, together, strict=True
            ):
                named |= {(r.smsc, r.smsc_msg_id) for r in batch}
                mine = {(p[2], p[3]) for p in parts}
                assert pending == sum((r.smsc, r.smsc_msg_id) not in mine for r in batch), seed
                assert matched + pending == len(batch), seed
                for p in parts:  # a part no receipt named is as it was
                    if (p[2], p[3]) not in named:
                        assert p[4] == "sent", (seed, p)
                assert all((k[0], k[1]) not in mine for k in kept), seed
                compared += matched
        finally:
            for n in names:
                run_async(drop_database(pg_cluster, n))
    assert compared > 100  # the batches did name parts
