"""The receipts' two reads of the parts they name answer by the key's ordinal (session 64).

`postgres_pipeline._match` (which messages a batch of receipts names) and `_apply`'s read of
those parts after the messages' lock sent back each part's SMSC and id, the very (SMSC, id)
pairs the caller had sent, decoded again as two texts a row. They now return the pair's
ordinal among the pairs sent (`_MATCH_PARTS`, `WITH ORDINALITY`), which the caller maps back to
its own pair. This holds both against the statements they replaced, on a real PostgreSQL
database: random parts (SMSCs reusing ids across messages, a message's parts sharing one id,
parts with no id), random receipt batches (a pair given twice, pairs that name nothing, pairs
that differ in the SMSC alone): the same message ids a pair, and the same (message, seq, state)
rows a pair, in the same order.
"""

from __future__ import annotations

import random
from types import SimpleNamespace
from typing import Any

import asyncpg

from bridge.store import postgres_pipeline as pp
from bridge.store.postgres import PostgresStore
from tests.conftest import run_async
from tests.rollup_writes import accept

# What the two reads were before session 64 (the pairs sent back as texts).
OLD_MATCH = (
    "SELECT s.smsc, s.smsc_msg_id, s.message_id FROM segments s "
    "JOIN (SELECT DISTINCT * FROM unnest($1::text[], $2::text[])) AS k(smsc, msg_id) "
    "ON s.smsc = k.smsc AND s.smsc_msg_id = k.msg_id"
)
OLD_PARTS = (
    "SELECT s.smsc, s.smsc_msg_id, s.message_id, s.seq, s.state FROM segments s "
    "JOIN (SELECT DISTINCT * FROM unnest($1::text[], $2::text[])) AS k(smsc, msg_id) "
    "ON s.smsc = k.smsc AND s.smsc_msg_id = k.msg_id"
)
SMSCS = ("a", "b", "a b", 'q"x', "z\\y")
IDS = ("1", "2", "3", "01", "ff", "a,b", "NULL", "")


def _old_match(rows: list[Any]) -> dict[tuple[str, str], set[str]]:
    found: dict[tuple[str, str], set[str]] = {}
    for r in rows:
        found.setdefault((r[0], r[1]), set()).add(r[2])
    return found


def _old_parts(rows: list[Any]) -> dict[tuple[str, str], list[tuple[str, int, str]]]:
    parts: dict[tuple[str, str], list[tuple[str, int, str]]] = {}
    for smsc, msg_id, mid, seq, state in rows:
        parts.setdefault((smsc, msg_id), []).append((mid, seq, state))
    return parts


async def _scenario(dsn: str, seeds: range) -> int:
    store = PostgresStore(dsn, min_size=1, max_size=2)
    await store.open()
    compared = 0
    try:
        mids = [f"msg_{k:03d}" for k in range(40)]
        longer = {mid: 1 + k % 3 for k, mid in enumerate(mids) if k % 3}
        await accept(store, mids, longer)
        c: asyncpg.Connection
        async with store.pool.acquire() as c:
            for seed in seeds:
                rnd = random.Random(seed)
                # Parts given random SMSCs and ids (many parts on one pair), some none.
                await c.execute(
                    "UPDATE segments SET smsc = NULL, smsc_msg_id = NULL, state = 'queued'"
                )
                rows = await c.fetch("SELECT message_id, seq FROM segments ORDER BY 1, 2")
                for mid, seq in rows:
                    if rnd.random() < 0.8:
                        await c.execute(
                            "UPDATE segments SET smsc = $3, smsc_msg_id = $4, state = $5 "
                            "WHERE message_id = $1 AND seq = $2",
                            mid,
                            seq,
                            rnd.choice(SMSCS),
                            rnd.choice(IDS),
                            rnd.choice(("sent", "delivered", "queued")),
                        )
                for _ in range(5):
                    pairs = [
                        (rnd.choice(SMSCS), rnd.choice(IDS)) for _ in range(rnd.randint(1, 30))
                    ]
                    receipts = [SimpleNamespace(smsc=s, smsc_msg_id=i) for s, i in pairs]
                    cols = [[p[0] for p in pairs], [p[1] for p in pairs]]
                    where = await pp._match(c, receipts)
                    assert where == _old_match(await c.fetch(OLD_MATCH, *cols)), seed
                    keys = list(where)
                    kcols = [[k[0] for k in keys], [k[1] for k in keys]]
                    new: dict[tuple[str, str], list[tuple[str, int, str]]] = {}
                    for n, mid, seq, state in await c.fetch(pp._MATCHED_PARTS, *pp._pairs(keys)):
                        new.setdefault(keys[n - 1], []).append((mid, seq, state))
                    old = _old_parts(await c.fetch(OLD_PARTS, *kcols))
                    assert new == old, seed
                    compared += len(where)
    finally:
        await store.close()
    return compared


def test_receipt_reads_by_ordinal_match_the_pairs_read_back(pg_dsn: str) -> None:
    compared = run_async(_scenario(pg_dsn, range(30)))
    assert compared > 300  # the batches did name parts


def test_pairs_of_no_key() -> None:
    assert pp._pairs([]) == [[], []]
    assert pp._pairs([("a", "1"), ("b", "2")]) == [["a", "b"], ["1", "2"]]
