"""Every account's waiting messages re-checked after a `senders` change, read WALK_CHUNK at a
time, and an account's close's masking of its history, a page per transaction (erase_page; of
its MO inbox, mask_mo_page) (PostgreSQL). An account-wide end (a disable, a sign or template
deleted or rejected, `marketing` or `raw_text` turned off, a close's end of the waiting messages)
goes in pages of their own transactions: postgres_pending_ends.py, which runs the masking's
pages too.

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
from bridge.store.rules_rows import NEVER_TRIED

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


# Messages masked per transaction (a close's masking, every message the account ever had): each
# page locks its rows a moment, not the account's whole history for the close's duration.
ERASE_CHUNK = 5_000

# The account's messages after the masking's cursor ($2, $3) in (accepted_at, id) order, by its
# (account_id, accepted_at) index; those that existed at the close ($4: postgres_pending_ends).
_ERASE_WALK = (
    "SELECT id, accepted_at FROM messages WHERE account_id = $1 AND accepted_at >= $2 "
    "AND (accepted_at, id) > ($2, $3) AND (seq IS NULL OR seq <= $4) "
    "ORDER BY accepted_at, id LIMIT $5"
)
# The page's rows locked in id order (the pipeline's), but for one still waiting unended: an
# accept that takes no lock (a batch without a nonce or an account version: tests, tools) may
# commit a message around the close's boundary that nothing ended. Masked, it would wait in the
# queue with blank parts and be sent to the mask: it is left whole, as before.
_ERASE_LOCK = (
    "SELECT id FROM messages WHERE id = ANY($1::text[]) "
    f"AND NOT (q_state = 'queued' AND {NEVER_TRIED} AND end_error IS NULL) ORDER BY id FOR UPDATE"
)
# Rows masked already (a close again, a page run twice) are not written again: no new version,
# no WAL for an account's whole history at each repeat.
_ERASE_ROWS = (
    "WITH s AS (UPDATE segments SET short_message = ''::bytea, tlvs = ''::bytea "
    "WHERE message_id = ANY($1::text[]) AND (short_message <> ''::bytea OR tlvs <> ''::bytea)) "
    "UPDATE messages SET recipient = $2, text = NULL, client_ref = NULL WHERE id = ANY($1::text[]) "
    "AND (recipient <> $2 OR text IS NOT NULL OR client_ref IS NOT NULL)"
)
# The mask of a close whose masking of the account ($N) is under way, else NULL.
MASKING = "(SELECT value FROM pending_ends WHERE account_id = ${} AND scope = 'erase' LIMIT 1)"


async def start_erase(
    c: asyncpg.Connection, account_id: str, masked: str, now: int, pending: list[int]
) -> None:
    """In the close's transaction: record the masking of the account's MO inbox (`masked` for
    the number, no text), done MO_CHUNK per transaction after it (postgres_pending_ends runs it,
    scope 'mo'; mask_mo_page), then of every message the account has had (`masked` for the
    number, no text, no client reference, blank parts), done ERASE_CHUNK per transaction (scope
    'erase'), and the deletion of its
    stored idempotent answers, DROP_CHUNK per transaction after that (scope 'answers': an
    account sending 100 keyed requests a second keeps 8.6 million); their ids appended to
    `pending`. A close again while one is under way (or stopped) finishes that one."""
    if await c.fetchval("SELECT 1 FROM mo_inbox WHERE account_id = $1 LIMIT 1", account_id):
        await _start_once(c, account_id, "mo", masked, now, pending)
    await _start_once(c, account_id, "erase", masked, now, pending)
    if await c.fetchval("SELECT 1 FROM idempotency WHERE account_id = $1 LIMIT 1", account_id):
        await _start_once(c, account_id, "answers", None, now, pending)


async def _start_once(
    c: asyncpg.Connection,
    account_id: str,
    scope: str,
    value: str | None,
    now: int,
    pending: list[int],
) -> None:
    from bridge.store import postgres_pending_ends as pending_ends

    # Marked now, as one recorded now is: this close works it from here (pending_ends.run).
    under_way = await c.fetchval(
        "UPDATE pending_ends SET worked_at = $3 WHERE id = (SELECT id FROM pending_ends "
        "WHERE account_id = $1 AND scope = $2 ORDER BY id LIMIT 1) RETURNING id",
        account_id,
        scope,
        now,
    )
    if under_way is not None:
        pending.append(int(under_way))
        return
    await pending_ends.start(c, account_id, scope, value, "ERASED", now, pending)


# A closed account's stored answers deleted per transaction (by its primary key's range: the
# account's records only). Nothing reads them meanwhile: the close revoked the account's keys.
DROP_CHUNK = 2_000
_DROP_PAGE = (
    "WITH d AS (DELETE FROM idempotency WHERE account_id = $1 AND key IN ("
    "SELECT key FROM idempotency WHERE account_id = $1 AND key > $2 ORDER BY key LIMIT $3) "
    "RETURNING key) SELECT COUNT(*), MAX(key) FROM d"
)


async def drop_answers_page(
    c: asyncpg.Connection, account_id: str, after: tuple[int, str]
) -> tuple[int, str] | None:
    """Delete the next DROP_CHUNK of the closed account's stored answers after the key
    `after[1]`; where to go on from (None: none are left). In the close's one statement,
    millions held their rows (and the close's transaction) for as long."""
    n, last = await c.fetchrow(_DROP_PAGE, account_id, after[1], DROP_CHUNK)
    if n == DROP_CHUNK:
        return 0, last
    # The end of the range, and a record whose key sorts first ('' is after nothing).
    await c.execute("DELETE FROM idempotency WHERE account_id = $1 AND key = ''", account_id)
    return None


async def erase_page(
    c: asyncpg.Connection, account_id: str, masked: str, max_seq: int, after: tuple[int, str]
) -> tuple[int, str] | None:
    """Mask the next ERASE_CHUNK of the account's messages after `after`, their parts blanked
    with them; where to go on from (None: none are left). No message moves in this order.

    Why pages: in the close's one transaction every message the account ever had was locked to
    its commit (millions: minutes, gigabytes of WAL in one commit, and every claim skipping the
    rows it held); at a million its masking statement ran past the pool's command_timeout and
    the whole close was undone."""
    rows = await c.fetch(_ERASE_WALK, account_id, *after, max_seq, ERASE_CHUNK)
    if rows:
        locked = [r[0] for r in await c.fetch(_ERASE_LOCK, [r[0] for r in rows])]
        if locked:
            await c.execute(_ERASE_ROWS, locked, masked)
    if len(rows) < ERASE_CHUNK:
        return None
    return rows[-1][1], rows[-1][0]


# A closed account's inbound messages (MOs) masked per transaction: a row each, no index touched.
MO_CHUNK = 5_000
# The next page of the account's MO inbox after the cursor ($2, $3) in (received_at, id) order,
# by its (account_id, received_at) index, masked ($5) and locked by the UPDATE alone (no claim
# takes an MO). Rows masked already (a close again) are not written again. Returns how many the
# page read and its last (received_at, id).
_MO_PAGE = (
    "WITH p AS (SELECT id, received_at FROM mo_inbox WHERE account_id = $1 AND received_at >= $2 "
    "AND (received_at, id) > ($2, $3) ORDER BY received_at, id LIMIT $4), "
    "u AS (UPDATE mo_inbox m SET source = $5, text = NULL FROM p WHERE m.id = p.id "
    "AND (m.source <> $5 OR m.text IS NOT NULL)) "
    "SELECT p.received_at, p.id, COUNT(*) OVER () FROM p ORDER BY p.received_at DESC, p.id DESC "
    "LIMIT 1"
)
# The mask of a close whose masking of the MO inbox of the row's account is under way, else NULL:
# a column of a read of mo_inbox (get_mo).
MO_MASKING = (
    "(SELECT value FROM pending_ends WHERE account_id = mo_inbox.account_id AND scope = 'mo' "
    "LIMIT 1)"
)


async def mask_mo_page(
    c: asyncpg.Connection, account_id: str, masked: str, after: tuple[int, str]
) -> tuple[int, str] | None:
    """Mask the next MO_CHUNK of the closed account's MO inbox after `after`; where to go on
    from (None: none are left). In the close's one statement, an inbox of millions was one long
    transaction (its rows locked, its WAL in one commit) and could run past the pool's
    command_timeout, undoing the whole close. Unbounded, unlike the messages' masking: nothing
    is attributed to a closed account after its close, and a reply stored late, attributed
    before it, is masked too: more privacy, not less. Reads answer the rows not masked yet as
    the pages will leave them (MO_MASKING)."""
    row = await c.fetchrow(_MO_PAGE, account_id, *after, MO_CHUNK, masked)
    if row is None or row[2] < MO_CHUNK:
        return None
    return row[0], row[1]


async def masking(c: asyncpg.Connection | asyncpg.Pool, account_id: str) -> str | None:
    """The mask of a close whose masking of the account's messages is under way, else None: until
    its last page the rows past its cursor still name their numbers, and reads of the account's
    messages answer them masked as it will leave them (`base.masked`). One probe of
    `pending_ends`."""
    return await c.fetchval(f"SELECT {MASKING.format(1)}", account_id)
