"""`db after-restore` on PostgreSQL: the messages a restored backup still had to send ended
unknown, PAGE per transaction (Store.after_restore).

Why pages: the command locked and read every waiting id into the process in one statement and
ended them all in one transaction, one roll-up over all of them: a million waiting took the
command to 2.55 GB of memory, and its dry run locked them all (184 MB); in pages 59 MB (the dry
run, which only counts, 44 MB), in the same time (101-132 s against 128-136;
scripts/bench_restore.py). Each page is whole (parts, row, refund, status webhook), so a run
stopped part-way leaves every page it committed done and the rest waiting: run again, it
selects exactly those (what it ended is no longer queued nor claimed), and a refund or webhook
already made is not made twice (the roll-up's finals are the messages that just became final).

Why no daemon can send what a page has not reached yet: the one transaction held every waiting
row locked until its end. Now the run holds, on a session of its own, the advisory lock under
which every process migrates at its open (postgres._migrate): a daemon started meanwhile waits
there, before it can claim anything, until the run is over. One already running is refused, at
the start and at each page (StoreInUseError), as the one transaction refused it.
"""

from __future__ import annotations

from typing import Any

import asyncpg

from bridge.domain import lifecycle as lc
from bridge.store import postgres_pipeline as pipe
from bridge.store.base import StoreInUseError, job_of
from bridge.store.postgres_tx import _ended_by_server, _on_a_live_session, run_tx

# Messages ended per transaction: ~1 MB of the process's memory.
PAGE = 5_000

_DUE = "(scheduled_at IS NULL OR scheduled_at <= $1)"
# Before the first row of the queue's age index (q_not_before, id).
_START: tuple[int, str] = (-(1 << 62), "")


async def _refuse_live(c: asyncpg.Connection) -> None:
    live = await c.fetchval(pipe._LIVE_INSTANCES)
    if live:
        raise StoreInUseError(
            f"{live} smpp-bridge instance(s) run on this database: stop every instance first"
        )


async def counts(c: asyncpg.Connection, now: int) -> tuple[int, int]:
    """(waiting and due by `now`, scheduled after it) among the queued and claimed messages;
    refused while an instance runs."""
    await _refuse_live(c)
    row = await c.fetchrow(
        f"SELECT count(*) FILTER (WHERE {_DUE}), count(*) FILTER (WHERE scheduled_at > $1) "
        "FROM messages WHERE q_state IN ('queued', 'claimed')",
        now,
    )
    return int(row[0]), int(row[1])


async def _end(c: asyncpg.Connection, ids: list[str], now: int) -> None:
    """Their parts not known to be sent end `timeout`; the rows rolled up and out of the queue."""
    if ids:
        await c.execute(
            "UPDATE segments SET state = $2, done_at = $3, error_code = 'RESTORED_FROM_BACKUP' "
            "WHERE message_id = ANY($1::text[]) AND state = 'queued'",
            ids,
            lc.SEG_TIMEOUT,
            now,
        )
        await pipe.rollup_messages(c, dict.fromkeys(ids, True), now)


async def claimed_page(c: asyncpg.Connection, now: int) -> list[str]:
    """The next PAGE messages on a bind, ended: each leaves `claimed` (nothing is left to send),
    so the next page's same query finds the rest."""
    await _refuse_live(c)
    rows = await c.fetch(
        f"SELECT id FROM messages WHERE q_state = 'claimed' AND {_DUE} "
        "ORDER BY id LIMIT $2 FOR UPDATE",
        now,
        PAGE,
    )
    ids = [r[0] for r in rows]
    await _end(c, ids, now)
    return ids


async def queued_page(
    c: asyncpg.Connection, now: int, after: tuple[int, str]
) -> tuple[int, tuple[int, str] | None]:
    """The next PAGE queued messages due by `now` after the cursor `after` (due time, id) in
    the order of the queue's age index, ended: how many, and the cursor to go on from (None:
    none are left)."""
    await _refuse_live(c)
    rows = await c.fetch(
        f"SELECT id, q_not_before FROM messages WHERE q_state = 'queued' AND {_DUE} "
        "AND (q_not_before, id) > ($2, $3) ORDER BY q_not_before, id LIMIT $4 FOR UPDATE",
        now,
        *after,
        PAGE,
    )
    await _end(c, [r[0] for r in rows], now)
    return len(rows), ((rows[-1][1], rows[-1][0]) if len(rows) == PAGE else None)


async def end_restored(pool: asyncpg.Pool, now: int, dry_run: bool) -> dict[str, int]:
    """Store.after_restore, a page per transaction; the counts as one transaction answered
    them."""
    gate = await _on_a_live_session(pool, lambda: _migrations_held(pool))
    try:
        return await _pages(pool, now, dry_run)
    finally:
        try:
            await gate.execute("SELECT pg_advisory_unlock($1, 0)", pipe.NS_MIGRATE)
        except (
            asyncpg.exceptions.InternalClientError,
            asyncpg.InterfaceError,
            asyncpg.ConnectionDoesNotExistError,
        ) as exc:
            # Ended (its close read, or lost under the unlock): the lock went with it.
            if not (_ended_by_server(exc) or isinstance(exc, asyncpg.ConnectionDoesNotExistError)):
                raise
        finally:
            await pool.release(gate)


async def _migrations_held(pool: asyncpg.Pool) -> asyncpg.Connection:
    """A pooled session holding the advisory lock of the migrations (daemons starting wait),
    taken on another if the one handed out had been ended by the server while idle.

    Not the run itself again on a session ended once the lock is held: the lock went with it,
    and the pages committed so far stand (each whole). The run goes on as the lock's session
    cannot be told lost before its unlock: each page still refuses to run while an instance
    holds its instance lock (_refuse_live), as before the lock was taken here at all; the
    unlock, on the ended session, is then no error (asyncpg's internal one failed a run that
    had finished)."""
    gate = await pool.acquire()
    try:
        await gate.execute("SELECT pg_advisory_lock($1, 0)", pipe.NS_MIGRATE)
    except BaseException:
        await pool.release(gate)
        raise
    return gate


async def _pages(pool: asyncpg.Pool, now: int, dry_run: bool) -> dict[str, int]:
    due, kept = await run_tx(pool, lambda c: counts(c, now))
    if dry_run:
        return {"ended_unknown": due, "scheduled_kept": kept}
    ended = 0
    last: set[str] = set()
    while True:
        ids = await run_tx(pool, lambda c: claimed_page(c, now))
        if last.intersection(ids):  # one that did not leave the claims would be read forever
            raise RuntimeError(f"after-restore: message {min(last & set(ids))} stays claimed")
        ended, last = ended + len(ids), set(ids)
        if len(ids) < PAGE:
            break
    after: Any = _START
    while after is not None:
        n, after = await run_tx(pool, job_of(queued_page, now, after))
        ended += n
    return {"ended_unknown": ended, "scheduled_kept": kept}
