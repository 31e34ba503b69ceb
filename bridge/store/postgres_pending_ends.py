"""An account's waiting messages ended in pages, each a transaction of its own (PostgreSQL).

Why: a disable (or a sign or template deleted or rejected, `marketing` or `raw_text` turned off)
ended every waiting message of the account in the one transaction that made the change. With a
million waiting (an account caught flooding, the one an operator disables) that was 144-187 s
and 2 GB of WAL, and every claim of every account skipped (`FOR UPDATE SKIP LOCKED`) the million
rows it held, 3.3-4.6 s a claim: other accounts' sends fell from ~5,000/s to 21-30/s for minutes
(scripts/bench_pg_ends.py). Now, as on SQLite (sqlite_ends.py), the change's transaction holds
the messages on a bind and records the end in `pending_ends`; the waiting ones go END_CHUNK per
transaction in the queue index's order, and the request answers once all are ended.

Why the change's transaction ends (and holds) none, unlike SQLite's first chunk: until it
commits, the claims cannot see the end's row, and on PostgreSQL they run meanwhile: each took its
share of the account's messages (at a million waiting, ~1,300-1,600 more sent than by the one
transaction, which locked them all at once, with a first page in it; ~1,500 with the messages on
a bind held in it, 15,000 in the benchmark, whose claims never finish). Committed at once, the
row is there for every claim after the change's few statements; those on a bind are held by the
first page and again by the last (claims that committed meanwhile).

Why nothing is sent meanwhile: each claim reads `pending_ends` (one probe with the do-not-contact
one) and ends, instead of claiming, the candidates an end covers (`guard`). An end covers the
messages that existed when it started: `seq` (messages_seq, migration 33) up to its `max_seq`,
NULL for rows from before the migration. The change takes the account's row lock, which the
API's accepts take shared (postgres._AUTHORIZE) until their commit: an accept under the old
rules commits before the boundary is read, one after it waits for the change's commit and is
refused or sends its new messages. An accept that takes no lock (a batch without a nonce or an
account version: tests, tools) can commit in between, as before: its message is covered if its
sequence number was drawn before the boundary, else sent. A process stopped part-way leaves the
row: the sweep finishes it once nobody has worked it for RESUME_AFTER_MS.

An account's close (postgres_rules.close_account) records such an end (scope 'account', ERASED)
in a transaction of its own before the close's, whose write-off then counts their refunds; the
close's transaction records its masking of the account's MO inbox (scope 'mo') and of every
message the account had ('erase') and its deletion of the stored answers ('answers'), which this
module pages too (postgres_ends).

Locks: a page takes its end's row first (two workers never page one end; the sweep skips one
held), then its messages in id order, waiting for a claim's brief hold rather than skipping it
(end_queued_ids). A claim's guard never locks an end's row: what it ended is a row of
`pending_end_guards`, summed when the end is done (see migration 33).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Any, NamedTuple, TypeVar

import asyncpg

from bridge.store.account_rows import REVOKED_SENDS
from bridge.store.base import RESUME_AFTER_MS, clock_from
from bridge.store.postgres_tx import run_tx
from bridge.store.rules_rows import NEVER_TRIED

# Messages ended per transaction (about what the one transaction's cursor read per FETCH).
END_CHUNK = 2_000

# What each scope ends of the account's waiting messages; `{v}` stands for the end's `value`.
# The settings that revoke a kind of send (`marketing`, `raw_text`) are scopes of their name.
SCOPES: dict[str, str] = {
    "account": "TRUE",
    "sign": "sign_name = {v}",
    "template": "template = {v}",
    **{setting: which for setting, which, _error in REVOKED_SENDS},
}

# A close's masking of every message the account had (postgres_ends.erase_page): its value is
# the mask, its cursor (accepted_at, id); and its deletion of the account's stored answers
# (drop_answers_page; its cursor the key). Nothing waits for them to end: the claims' guard
# (whose CASE has no such scope) finds none, and their probe (ENDING) leaves them out.
# Its masking of the account's MO inbox (postgres_ends.mask_mo_page): its value is the mask, its
# cursor (received_at, id).
ERASE = "erase"
MO = "mo"
CLOSING = (ERASE, "answers", MO)
# Whether an end the claims must guard is under way.
ENDING = "EXISTS (SELECT 1 FROM pending_ends WHERE scope NOT IN ('erase', 'answers', 'mo'))"

# Before the first row of the queue index.
_START: tuple[int, str] = (-(1 << 62), "")
_COLS = "id, account_id, scope, value, error, ended_at, max_seq, after_nb, after_id"
_IDS = "id = ANY($1::text[])"
# The boundary: the last sequence number drawn (0 before any: NULL until the first nextval).
_LAST_SEQ = "SELECT COALESCE(pg_sequence_last_value('messages_seq'::regclass), 0)"

T = TypeVar("T")


class _End(NamedTuple):
    id: int
    account_id: str
    scope: str
    value: str | None
    error: str
    ended_at: int
    max_seq: int
    after: tuple[int, str]


def _end(r: Sequence[Any]) -> _End:
    return _End(r[0], r[1], r[2], r[3], r[4], r[5], r[6], (r[7], r[8]))


def _covers(end: _End, first: int) -> tuple[str, list[Any]]:
    """The SQL of the messages `end` covers, its parameters numbered from $`first`."""
    sql = SCOPES[end.scope]
    args: list[Any] = [end.account_id, end.max_seq]
    if "{v}" in sql:
        sql = sql.format(v=f"${first + 2}")
        args.append(end.value)
    return (
        f"account_id = ${first} AND (seq IS NULL OR seq <= ${first + 1}) AND ({sql})",
        args,
    )


async def _hold_on_binds(c: asyncpg.Connection, end: _End) -> None:
    """The covered messages on a bind held (end_queued_ids: they end instead of going out again
    if they come back). Few: the partial index of claimed rows."""
    from bridge.store.postgres_rules import end_queued_ids

    where, args = _covers(end, 1)
    await end_queued_ids(c, f"q_state = 'claimed' AND {where}", args, end.error, end.ended_at)


# The queue after the cursor ($1, $2), in its index's order. `q_not_before >= $1` too: the
# account's own range of the index, not the whole queue's in order.
_WALK = (
    "SELECT id, q_not_before FROM messages WHERE q_state = 'queued' AND q_not_before >= $1 "
    "AND (q_not_before, id) > ($1, $2)"
)


async def _page(c: asyncpg.Connection, end: _End) -> tuple[int, tuple[int, str] | None]:
    """End the next END_CHUNK waiting messages of `end` in the queue index's order after
    `end.after` (those tried are held: end_queued_ids); how many ended, and where to go on from
    (None: none are left)."""
    from bridge.store.postgres_rules import end_queued_ids

    where, args = _covers(end, 4)
    rows = await c.fetch(
        f"{_WALK} AND {where} ORDER BY q_not_before, id LIMIT $3", *end.after, END_CHUNK, *args
    )
    ended = 0
    if rows:
        ids = [r[0] for r in rows]
        ended = len(await end_queued_ids(c, _IDS, (ids,), end.error, end.ended_at))
    if len(rows) == END_CHUNK:
        return ended, (rows[-1][1], rows[-1][0])
    if end.after == _START:
        return ended, None  # a walk from the start found them all
    # The end of the index. A message may have moved behind the walk meanwhile (an un-park sets
    # its due time to now, a clock step moves it earlier): walk once more from the start if so.
    # In the index's order from its start, as a page reads (an EXISTS of the same filter was
    # planned as a scan of the whole table: the statistics still counted the ended rows queued).
    left = await c.fetchval(
        f"{_WALK} AND {NEVER_TRIED} AND {where} ORDER BY q_not_before, id LIMIT $3",
        *_START,
        1,
        *args,
    )
    return ended, (_START if left else None)


async def start(
    c: asyncpg.Connection,
    account_id: str,
    scope: str,
    value: str | None,
    error: str,
    now: int,
    pending: list[int],
) -> int:
    """In the change's transaction (the account's row locked: see the module's doc): the end
    recorded, its id appended to `pending` (for `finish`, whose pages hold the messages on a
    bind and end the waiting ones). Ends none itself (0): see the module's doc."""
    max_seq = await c.fetchval(_LAST_SEQ)
    end_id = await c.fetchval(
        "INSERT INTO pending_ends (account_id, scope, value, error, ended_at, max_seq, "
        "after_nb, after_id, worked_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$5) RETURNING id",
        account_id,
        scope,
        value,
        error,
        now,
        max_seq,
        *_START,
    )
    pending.append(int(end_id))
    return 0


# The mark a worker gives its end at a page: `$at`, unless the mark is below `$last`, the one
# this worker made before: a step back of the clock moved it (postgres_clock), and the worker,
# counting on from the clock of its start, follows it (as sqlite_chunked.MARK).
_MARK = "CASE WHEN $5::bigint IS NOT NULL AND worked_at < $5 THEN worked_at + ($4 - $5) ELSE $4 END"
_MARKED = f"UPDATE pending_ends SET after_nb = $2, after_id = $3, worked_at = {_MARK} WHERE id = $1"


async def _step(
    c: asyncpg.Connection, end_id: int, at: int, last: int | None, wait: bool = True
) -> int | None:
    """One page of the end `end_id`: how many it ended, None once it is done (or gone, or held
    by another worker and not `wait`). `at` marks it worked; `last`: as sqlite_ends._step's."""
    row = await c.fetchrow(
        f"SELECT {_COLS} FROM pending_ends WHERE id = $1 FOR UPDATE"
        + ("" if wait else " SKIP LOCKED"),
        end_id,
    )
    if row is None:
        return None
    end = _end(row)
    if end.scope in CLOSING:  # a close's masking or deletion: nothing is ended, nothing held
        from bridge.store import postgres_ends as close

        if end.scope == ERASE:
            after = await close.erase_page(
                c, end.account_id, end.value or "", end.max_seq, end.after
            )
        elif end.scope == MO:
            after = await close.mask_mo_page(c, end.account_id, end.value or "", end.after)
        else:
            after = await close.drop_answers_page(c, end.account_id, end.after)
        if after is None:
            await c.execute("DELETE FROM pending_ends WHERE id = $1", end_id)
            return None
        await c.execute(_MARKED, end_id, *after, at, last)
        return 0
    if end.after == _START:  # the walk's start: those on a bind first
        await _hold_on_binds(c, end)
    ended, after = await _page(c, end)
    if after is None:
        # Done. Claims that committed while the change did, unguarded, are on a bind now.
        await _hold_on_binds(c, end)
        guarded = await c.fetchval(
            "WITH g AS (DELETE FROM pending_end_guards WHERE end_id = $1 RETURNING n) "
            "SELECT COALESCE(SUM(n), 0) FROM g",
            end_id,
        )
        await c.execute("DELETE FROM pending_ends WHERE id = $1", end_id)
        ended += int(guarded)
        return ended if ended else None
    await c.execute(_MARKED, end_id, *after, at, last)
    return ended


async def finish(
    pool: asyncpg.Pool,
    ids: Sequence[int],
    now: int,
    marked_at: int | None = None,
    *,
    wait: bool = True,
) -> int:
    """Run the ends `ids` to their end, a page per transaction; how many they ended. `now` is
    the caller's time at the start; `marked_at`, the mark the caller's own transaction gave them
    (None for ends others marked: the sweep's, which passes `wait=False` to leave an end another
    worker holds to it)."""
    clock = clock_from(now)
    total = 0
    for end_id in ids:
        last = marked_at
        while True:
            at = clock()
            n = await run_tx(pool, partial(_step, end_id=end_id, at=at, last=last, wait=wait))
            if n is None:
                break
            total += n
            last = at
    return total


async def run(
    pool: asyncpg.Pool,
    job: Callable[[asyncpg.Connection], Awaitable[T]],
    pending: list[int],
    now: int,
) -> tuple[T, int]:
    """`job` (which may start ends into `pending`) in a transaction, then those ends to their
    end: the job's result, and how many more messages the pages (and the claims' guard) ended."""

    async def once(c: asyncpg.Connection) -> T:
        pending.clear()  # a retried run: the rolled-back one recorded nothing
        return await job(c)

    out = await run_tx(pool, once)
    return out, await finish(pool, list(pending), now, now)


# The scopes this release knows how to run. In a rolling upgrade an older instance's sweep met
# a scope a newer one wrote (the close's 'mo', session 48) and failed on it at each sweep, and
# on every stale end listed after it: such a row is left to the instances that know it.
KNOWN = [*SCOPES, *CLOSING]


async def stale(c: asyncpg.Connection | asyncpg.Pool, now: int) -> list[int]:
    """The ends nobody has advanced for RESUME_AFTER_MS: their process stopped."""
    rows = await c.fetch(
        "SELECT id FROM pending_ends WHERE worked_at <= $1 AND scope = ANY($2::text[]) ORDER BY id",
        now - RESUME_AFTER_MS,
        KNOWN,
    )
    return [r[0] for r in rows]


async def resume(pool: asyncpg.Pool, now: int) -> int:
    """The sweep's: the stale ends finished, one worker at a time each; how many they ended."""
    return await finish(pool, await stale(pool, now), now, wait=False)


# Which end covers each candidate (the first recorded, if several do).
_GUARD = """
SELECT DISTINCT ON (m.id) m.id, e.id, e.error, e.ended_at
FROM messages m JOIN pending_ends e ON e.account_id = m.account_id
    AND (m.seq IS NULL OR m.seq <= e.max_seq)
WHERE m.id = ANY($1::text[]) AND CASE e.scope {cases} ELSE FALSE END
ORDER BY m.id, e.id
"""
# (The scopes' columns are messages' alone: pending_ends has none of those names.)
_GUARD_SQL = _GUARD.format(
    cases=" ".join(
        f"WHEN '{scope}' THEN ({sql.format(v='e.value')})" for scope, sql in SCOPES.items()
    )
)


async def guard(c: asyncpg.Connection, ids: list[str]) -> list[str]:
    """In a claim's transaction, while an end is under way: the candidates `ids` an end covers
    are ended with its error and refunded (those tried held: end_queued_ids) instead of claimed;
    returns the others. What each end's guard ended is counted in its answer (`_step`)."""
    from bridge.store.postgres_rules import end_queued_ids

    by_end: dict[tuple[int, str, int], list[str]] = {}
    for mid, end_id, error, ended_at in await c.fetch(_GUARD_SQL, ids):
        by_end.setdefault((end_id, error, ended_at), []).append(mid)
    gone: set[str] = set()
    for (end_id, error, ended_at), covered in by_end.items():
        ended = await end_queued_ids(c, _IDS, (covered,), error, ended_at)
        if ended:
            await c.execute(
                "INSERT INTO pending_end_guards (end_id, n) VALUES ($1, $2)", end_id, len(ended)
            )
            gone.update(ended)
    return [i for i in ids if i not in gone] if gone else ids
