"""Every account's waiting messages re-checked after a `senders` change, read WALK_CHUNK at a
time, and an account's close, whose history stays on the server (erase_account) (PostgreSQL).
An account-wide end (a disable, a sign or template deleted or rejected, `marketing` or
`raw_text` turned off) goes in pages of their own transactions: postgres_pending_ends.py.

Why pages through a cursor: the `senders` change read every waiting message with a sender of
every account (id, account, sender) in one statement and ended all of them at once: 134 MB of
Python allocations at a change refusing half of 200,000, 2.5 MB in pages
(scripts/bench_pg_dnc.py --op senders). The cursor reads one snapshot, taken as it opens where
the one statement was, and each page is ended (or held) as it is by then.

One transaction still: the claims do not check the senders assignments and no row records a
walk under way for a sweep to finish (SQLite's sender_walk), so in pages of their own a claim
between two pages would send a refused message. The change locks only the messages it refuses
(locking every waiting one would stop every account's sends until its commit), a page at a
time, in id order across the pages (the cursor's ORDER BY: no deadlock with the pipeline's own
id-ordered locks). A claim that takes a refused message before the change locks it sends it,
and the change only holds it, as before. They are ended, refunded and given back their places
after the walk, so the refunded accounts' pockets and days are locked for the last moments of
the transaction, not from the page that found them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg

from bridge.domain import senders as senders_rules
from bridge.store.account_rows import WAITING_SENDERS_SQL

WALK_CHUNK = 2_000  # waiting messages read per FETCH (and ended per statement)
_IDS = "id = ANY($1::text[])"


async def pages(
    c: asyncpg.Connection, sql: str, args: Sequence[Any] = ()
) -> AsyncIterator[list[asyncpg.Record]]:
    """The rows of `sql` as one snapshot, WALK_CHUNK at a time (c must be in a transaction). The
    next page is fetched once the caller handled this one."""
    cursor = await c.cursor(sql, *args)
    while True:
        rows = await cursor.fetch(WALK_CHUNK)
        if rows:
            yield rows
        if len(rows) < WALK_CHUNK:
            return


async def end_refused_senders(
    c: asyncpg.Connection,
    assignments: Sequence[tuple[str, Sequence[str]]],
    now: int,
    *,
    assigned_only: bool,
) -> int:
    """Every account's waiting messages whose sender their account may no longer use under
    `assignments` (senders.refused_waiting) ended with SENDER_NOT_ALLOWED, a page at a time;
    how many ended. The refused ones are locked page by page (out of the claims' reach), and
    ended, refunded and given back their day's places once the walk is over: refunded page by
    page, the refunded accounts' pockets and days stayed locked to the walk's end, and their
    sends and receipts waited seconds for it (session 42's second review)."""
    from bridge.store import postgres_pipeline as pipe
    from bridge.store.postgres_rules import end_queued_ids, refund_finals

    found: list[str] = []
    async for rows in pages(c, f"{WAITING_SENDERS_SQL} ORDER BY id"):
        refused = senders_rules.refused_waiting(
            [(r[0], r[1], r[2]) for r in rows], assignments, assigned_only=assigned_only
        )
        if refused:  # out of the claims' reach from here; those on a bind are held below
            await c.execute(
                f"SELECT 1 FROM messages WHERE {_IDS} AND q_state = 'queued' "
                "ORDER BY id FOR UPDATE",
                refused,
            )
            found += refused
    ended = 0
    later: tuple[list[Any], list[str]] = ([], [])
    for i in range(0, len(found), WALK_CHUNK):
        chunk = found[i : i + WALK_CHUNK]
        ended += len(
            await end_queued_ids(c, _IDS, (chunk,), "SENDER_NOT_ALLOWED", now, later=later)
        )
    # The refunds and quota places last: other accounts' pockets and days locked a moment, in
    # one order (by account) against other enders.
    later[0].sort(key=lambda b: (b[0], b[1]))
    later[1].sort()
    for i in range(0, len(later[0]), WALK_CHUNK):
        await refund_finals(c, later[0][i : i + WALK_CHUNK], now)
    for i in range(0, len(later[1]), WALK_CHUNK):
        await pipe.give_back_places(c, later[1][i : i + WALK_CHUNK])
    return ended


# The close's own: the ids of the account's messages as its first statement locked them. On the
# server, not in the daemon; dropped with the transaction (a retry creates it again). No key and
# no ANALYZE (~0.8 s of a 200,000-message close's ~9 measured with them): without statistics the
# planner joins it by probing messages' and segments' primary keys an id at a time, a cost of the
# account's size however big the tables.
_LOCKED_TABLE = 'CREATE TEMP TABLE erased_ids (id TEXT COLLATE "C") ON COMMIT DROP'
_LOCK_ALL = (
    "INSERT INTO erased_ids SELECT id FROM messages WHERE account_id = $1 ORDER BY id FOR UPDATE"
)
_LOCKED = "id IN (SELECT id FROM erased_ids)"


async def erase_account(c: asyncpg.Connection, account_id: str, masked: str, now: int) -> int:
    """Every message the account ever had masked (`masked` for the number, no text, no client
    reference, blank parts) and its MO inbox masked, its waiting ones ended unsent with ERASED
    and refunded first (those on a bind or tried held: end_queued_ids); how many were masked.

    Why not as a number's erasure (postgres_rules._erase, whose messages are one recipient's):
    that read the id and queue state of every one into the daemon and passed them back as an
    array, an account's whole history, millions for a big one. Here they stay on the server:
    one statement locks them in id order (the pipeline's order) and keeps their ids in a
    temporary table, the waiting ones among them are read WALK_CHUNK at a time and ended, and
    one statement masks them all.

    Why the table and not `WHERE account_id = $1`: only the locked rows are touched, as when
    their ids went by array. The API's accepts wait for the close's lock on the account row
    (those without sending rules since session 42 take it shared: postgres._AUTHORIZE), but an
    accept that takes no lock (a batch without a nonce or an account version: tests, tools)
    can still commit a message after the locking statement. Masked, it would wait in the queue
    unended, and a claim would send its blank parts to the mask: it is left whole."""
    from bridge.store.postgres_rules import end_queued_ids

    await c.execute(_LOCKED_TABLE)
    await c.execute(_LOCK_ALL, account_id)
    waiting = (
        f"SELECT id FROM messages WHERE account_id = $1 AND q_state IN ('queued', 'claimed') "
        f"AND {_LOCKED}"
    )
    async for rows in pages(c, waiting, (account_id,)):
        # Locked already (erased_ids): end_queued_ids's own lock waits for nothing.
        await end_queued_ids(c, _IDS, ([r[0] for r in rows],), "ERASED", now)
    n = await c.fetchval(
        "WITH s AS (UPDATE segments SET short_message = ''::bytea, tlvs = ''::bytea "
        f"WHERE message_id IN (SELECT id FROM erased_ids)), "
        "mo AS (UPDATE mo_inbox SET source = $2, text = NULL WHERE account_id = $1), "
        "u AS (UPDATE messages SET recipient = $2, text = NULL, client_ref = NULL "
        f"WHERE account_id = $1 AND {_LOCKED} RETURNING 1) "
        "SELECT COUNT(*) FROM u",
        account_id,
        masked,
    )
    return int(n)
