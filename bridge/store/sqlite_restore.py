"""`db after-restore` on SQLite: the messages a restored backup still had to send ended unknown,
PAGE per write transaction (Store.after_restore).

Why pages: the command read every waiting id at once and ended them all in one transaction,
one UPDATE of the parts per message and one roll-up over all of them. In one transaction each
such UPDATE's statement journal cost more the more the transaction had written (as
sqlite_pipeline.move_parts says): 100,000 waiting took 49 s and 283 MB, 200,000 took 202 s and
461 MB, and a million (a carrier outage, then a disk failure) had not finished after 29
minutes, when an operator is already in trouble. In pages: 10.5 s for 100,000, 47-115 s and
122 MB for a million, the WAL under 75 MB (scripts/bench_restore.py). Each page is whole
(parts, row, refund, status webhook, in one transaction), so a run stopped part-way leaves
every page it committed done and the rest waiting: run again, it selects exactly those (what it
ended is no longer queued nor claimed), and a refund or webhook already made is not made twice
(the roll-up's finals are the messages that just became final).

Nothing else writes meanwhile: the command holds the store's owner lock (no daemon runs), so the
queued ones are walked once in the queue index's order (walk_queue) without moving under it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

from bridge.domain import lifecycle as lc
from bridge.store import sqlite_pipeline as pipe
from bridge.store.base import job_of

# Messages ended per write transaction: ~1 MB of Python memory, ~0.2 s of the write lock.
PAGE = 5_000

_DUE = "(scheduled_at IS NULL OR scheduled_at<=?)"
# Before the first row of the queue index (walk_queue's cursor: account, due time, rowid).
_START = ("", -(1 << 62), 0)

Runner = Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]


def counts(c: sqlite3.Connection, now: int) -> tuple[int, int]:
    """(waiting and due by `now`, scheduled after it) among the queued and claimed messages."""
    due, kept = c.execute(
        f"SELECT COALESCE(SUM({_DUE}), 0), COALESCE(SUM(scheduled_at>?), 0) FROM messages "
        "WHERE (q_state='queued' OR q_state='claimed')",
        (now, now),
    ).fetchone()
    return int(due), int(kept)


def _end(c: sqlite3.Connection, ids: list[str], now: int) -> None:
    """Their parts not known to be sent end `timeout`; the rows rolled up and out of the queue."""
    if ids:
        # One statement per 400 messages (move_parts), not one per message.
        pipe.move_parts(c, ids, "queued", lc.SEG_TIMEOUT, now, "'RESTORED_FROM_BACKUP'")
        pipe.rollup_messages(c, dict.fromkeys(ids, True), now)


def claimed_page(c: sqlite3.Connection, now: int) -> list[str]:
    """The next PAGE messages on a bind, ended: each leaves `claimed` (nothing is left to send),
    so the next page's same query finds the rest."""
    ids = [
        r[0]
        for r in c.execute(
            f"SELECT id FROM messages WHERE q_state='claimed' AND {_DUE} LIMIT ?", (now, PAGE)
        )
    ]
    _end(c, ids, now)
    return ids


def queued_page(
    c: sqlite3.Connection, now: int, after: tuple[Any, ...]
) -> tuple[int, tuple[Any, ...] | None]:
    """The next PAGE queued messages due by `now` after the cursor `after`, ended: how many, and
    the cursor to go on from (None: none are left)."""
    rows = pipe.walk_queue(c, "id", after, PAGE, _DUE, (now,))
    _end(c, [r[3] for r in rows], now)
    return len(rows), (tuple(rows[-1][:3]) if len(rows) == PAGE else None)


async def end_restored(write: Runner, now: int, dry_run: bool) -> dict[str, int]:
    """Store.after_restore, a page per `write`; the counts as one transaction answered them."""
    due, kept = await write(lambda c: counts(c, now))
    if dry_run:
        return {"ended_unknown": due, "scheduled_kept": kept}
    ended = 0
    last: set[str] = set()
    while True:
        ids = await write(lambda c: claimed_page(c, now))
        if last.intersection(ids):  # one that did not leave the claims would be read forever
            raise RuntimeError(f"after-restore: message {min(last & set(ids))} stays claimed")
        ended, last = ended + len(ids), set(ids)
        if len(ids) < PAGE:
            break
    after: tuple[Any, ...] | None = _START
    while after is not None:
        n, after = await write(job_of(queued_page, now, after))
        ended += n
    return {"ended_unknown": ended, "scheduled_kept": kept}
