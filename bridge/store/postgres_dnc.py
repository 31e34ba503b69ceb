"""The waiting messages a do-not-contact import blocks, ended WALK_CHUNK at a time (PostgreSQL).

Why: the import's second transaction read every waiting message of every account (id and
number) into the daemon at once and ended the blocked ones in that one transaction: with a
million waiting, ~200 MB of rows in the daemon's memory, and a transaction as long as the whole
walk that held every row it ended locked to its end.

Now the walk pages the waiting messages by keyset, first the queue in its age index's order
(q_not_before, id: messages_queue_age), then those on a bind (by id), WALK_CHUNK rows per statement,
and each page is a transaction of its own that ends (or holds, once tried) the blocked ones among
them, as before. Several transactions rather than one with bounded reads, because:

- a transaction's row locks are held to its commit: the rows one chunk ended are free as it
  commits, not after the last one (a cancel, a receipt, another end waits for them meanwhile);
  the claims skip what is locked, so their queue is not held up either way;
- `run_tx` runs a job again after a deadlock or serialization failure: one chunk, not the walk;
- one transaction as long as the walk holds back VACUUM on the queue's rows, the busiest table;
- nothing needs the one snapshot: every accept after the list's commit reads its entries and is
  refused, and every claim checks the lists (postgres_pipeline's guard), so a message the walk
  has not reached yet, or passes by (an un-park or a clock step moves rows earlier in the
  queue's order), is ended at its claim instead of being sent. The count answered is what the
  walk ended, as on SQLite (sqlite_dnc.py).

Each chunk goes on only while the list is still this import's (FOR SHARE, to its commit): a later
import or delete of it ends what its own list blocks, and this walk stops.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from bridge.store.base import job_of
from bridge.store.models import DncInfo
from bridge.store.postgres_tx import run_tx
from bridge.store.rules_rows import DncEntries, blocked_ids

WALK_CHUNK = 2_000  # waiting messages read per statement (and per transaction)
ERROR = "RECIPIENT_BLOCKED"

_STILL = (
    "SELECT 1 FROM dnc_lists WHERE id = $1 AND name = $2 "
    "AND country IS NOT DISTINCT FROM $3 AND numbers = $4 AND prefixes = $5 "
    "AND imported_at = $6 FOR SHARE"
)
# The queue by its age index, then those on a bind (a few windows' worth per bind, by the claimed
# index): in that order, as a claim moves a message from the first to the second. The other way
# round, a claim whose check of the lists came before the list's commit and whose own commit
# after the walk's page of claimed messages was missed by both pages: neither ended nor held, and
# the connector resent a throttled part to the blocked number (session 42's review, finding 1).
_CLAIMED_PAGE = (
    "SELECT id, recipient FROM messages WHERE q_state = 'claimed' AND id > $1 ORDER BY id LIMIT $2"
)
_QUEUED_PAGE = (
    "SELECT q_not_before, id, recipient FROM messages "
    "WHERE q_state = 'queued' AND (q_not_before, id) > ($1, $2) "
    "ORDER BY q_not_before, id LIMIT $3"
)
_FIRST: tuple[Any, ...] = (-(1 << 62), "")


async def end_blocked(pool: asyncpg.Pool, info: DncInfo, entries: DncEntries) -> int:
    """End the waiting messages `entries` block (on a bind: held), WALK_CHUNK per transaction;
    how many ended. Stops, answering what it ended so far, once the list is no longer `info`."""
    from bridge.store.postgres_rules import end_queued_where

    row = (info.id, info.name, info.country, info.numbers, info.prefixes, info.imported_at)

    async def chunk(c: asyncpg.Connection, claimed: bool, after: tuple[Any, ...]) -> Any:
        if await c.fetchval(_STILL, *row) is None:
            return None
        if claimed:
            rows = await c.fetch(_CLAIMED_PAGE, after[1], WALK_CHUNK)
            pairs = [(r[0], r[1]) for r in rows]
            last = (after[0], rows[-1][0]) if rows else None
        else:
            rows = await c.fetch(_QUEUED_PAGE, *after, WALK_CHUNK)
            pairs = [(r[1], r[2]) for r in rows]
            last = (rows[-1][0], rows[-1][1]) if rows else None
        blocked = blocked_ids(pairs, entries)
        ended = 0
        if blocked:
            ended = await end_queued_where(
                c, "id = ANY($1::text[])", (blocked,), ERROR, info.imported_at
            )
        return ended, (last if len(rows) == WALK_CHUNK else None)

    total = 0
    for claimed in (False, True):
        after: tuple[Any, ...] | None = _FIRST
        while after is not None:
            out = await run_tx(pool, job_of(chunk, claimed, after))
            if out is None:
                return total
            ended, after = out
            total += ended
    return total
