"""A change of assigned senders ends the waiting messages it refuses in chunks, each a write
transaction of its own, and the claim's check while that walk is unfinished (SQLite).

Why: a `senders` change re-checks every account's waiting messages against the new
assignments (bridge.domain.senders.refused_waiting). In the change's one transaction the scan
alone held the store's write lock ~1.8 s per million waiting messages, plus ~20 µs per message
ended, and every accept and receipt of every account waited that long. Now:

1. The change's transaction writes the accounts row, settles the refused messages on a bind
   (held: not sent again if they come back) and walks the first WALK_CHUNK waiting ones; when
   more wait, it records the walk in `sender_walk` (one row, migration 27).
2. The rest go WALK_CHUNK per transaction (of them at most END_CHUNK ended) in the queue
   index's order (account, due time, rowid), other writers' batches in between, each chunk
   reading the assignments again (they may have changed meanwhile) and settling what they
   refuse as sqlite_rules.end_queued does: the never-tried end unsent and refunded
   (SENDER_NOT_ALLOWED), the tried ones are held.

Nothing refused is sent meanwhile: while the row exists, each claim checks the messages it takes
against the current assignments (`guard`) and settles the refused ones the same way; without
it, the check is one read of an empty table. A message the walk passed by, moved earlier in the
index (a route un-parked, the clock stepped back), is caught by walking again from the start
(`moved`). A change during a walk starts it again from the start (the new assignments may
refuse what it passed). A process that stops part-way leaves the row, so the guard stays on,
and the sweep finishes the walk once nobody has worked it for RESUME_AFTER_MS (store.base).
PostgreSQL keeps the one transaction: it holds the rows it ends, not every writer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bridge.domain.senders import refused_waiting
from bridge.store import sqlite_pipeline as pipe
from bridge.store.account_rows import ASSIGNMENTS_SQL, senders_of
from bridge.store.base import RESUME_AFTER_MS, clock_from
from bridge.store.rules_rows import NEVER_TRIED
from bridge.store.sqlite_chunked import MARK, work_out

WALK_CHUNK = 5_000  # waiting messages looked at per transaction (~2 µs each) ...
END_CHUNK = 2_000  # ... of which ended at most (~20-40 µs each, the refunds and reports)
ERROR = "SENDER_NOT_ALLOWED"

Runner = Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]

# Before the first row of the queue index.
_START: tuple[Any, ...] = ("", -(1 << 62), 0)


def _assignments(c: sqlite3.Connection) -> list[tuple[str, tuple[str, ...]]]:
    return [(r[0], senders_of(r[1])) for r in c.execute(ASSIGNMENTS_SQL)]


def _refused(
    c: sqlite3.Connection, rows: Sequence[tuple[int, str, str | None]], assigned_only: bool
) -> list[int]:
    """The rowids among `rows` (rowid, account, sender) the current assignments refuse, in the
    order of `rows`."""
    with_sender = [r for r in rows if r[2] is not None]
    if not with_sender:
        return []
    return refused_waiting(with_sender, _assignments(c), assigned_only=assigned_only)


def _settle(c: sqlite3.Connection, refused: Sequence[int], at: int) -> None:
    """end_queued for the messages `refused` names by rowid (sqlite_rules.end_by_key: ~120 µs
    per message ended with 100,000 waiting without it)."""
    from bridge.store.sqlite_rules import end_by_key

    end_by_key(c, "rowid", refused, ERROR, at)


def _walk(
    c: sqlite3.Connection, after: tuple[Any, ...], assigned_only: bool, at: int
) -> tuple[Any, ...] | None:
    """Settle the refused among the next WALK_CHUNK waiting messages in the queue index's order
    after `after`, stopping at the END_CHUNK-th refused one; where to go on from (None: the end
    of the queue)."""
    rows = pipe.walk_queue(c, "sender", after, WALK_CHUNK)
    refused = _refused(c, [(r[2], r[0], r[3]) for r in rows], assigned_only)
    more = len(rows) == WALK_CHUNK
    if len(refused) > END_CHUNK:  # the rest of the rows in the next chunk
        refused = refused[:END_CHUNK]
        last = refused[-1]
        rows = rows[: next(i for i, r in enumerate(rows) if r[2] == last) + 1]
        more = True
    _settle(c, refused, at)
    return (rows[-1][0], rows[-1][1], rows[-1][2]) if more else None


def start(c: sqlite3.Connection, assigned_only: bool, now: int) -> bool:
    """In the change's transaction, after the accounts row is written: the refused messages on
    a bind are held, the first chunk of the waiting ones settled, and the walk recorded when
    more may wait (a walk under way starts again from the start). Whether it was."""
    claimed = c.execute(
        "SELECT rowid, account_id, sender FROM messages WHERE q_state='claimed' "
        "AND sender IS NOT NULL"
    ).fetchall()
    _settle(c, _refused(c, claimed, assigned_only), now)
    after = _walk(c, _START, assigned_only, now)
    if after is None:
        # The whole queue was just walked under the newest assignments and policy: a walk an
        # earlier change left unfinished is moot, and kept, the claims went on judging by its
        # policy (a reload from `assigned` to `open` ended allowed messages SENDER_NOT_ALLOWED).
        c.execute("DELETE FROM sender_walk")
        return False
    c.execute(
        "INSERT INTO sender_walk (id, assigned_only, after_account, after_nb, after_rowid, "
        "moved, worked_at) VALUES (1,?,?,?,?,0,?) ON CONFLICT (id) DO UPDATE SET "
        "assigned_only=excluded.assigned_only, after_account=excluded.after_account, "
        "after_nb=excluded.after_nb, after_rowid=excluded.after_rowid, moved=0, "
        "worked_at=excluded.worked_at",
        (int(assigned_only), *after, now),
    )
    return True


def _step(c: sqlite3.Connection, at: int, last: int | None = None) -> bool:
    """One chunk of the walk under way; False once it is done (by this chunk, or before it by
    another process). `at` marks it worked, or follows a mark a step back of the clock moved
    below `last`, this worker's mark before (sqlite_chunked.MARK)."""
    row = c.execute(
        "SELECT assigned_only, after_account, after_nb, after_rowid, moved FROM sender_walk"
    ).fetchone()
    if row is None:
        return False
    after = _walk(c, (row[1], row[2], row[3]), bool(row[0]), at)
    if after is None and row[4]:
        after = _START  # something moved behind the cursor meanwhile: once more from the start
    if after is None:
        c.execute("DELETE FROM sender_walk")
        return False
    c.execute(
        "UPDATE sender_walk SET after_account=:account, after_nb=:nb, after_rowid=:rowid, "
        f"moved={'0' if after == _START else 'moved'}, worked_at={MARK}",
        {"account": after[0], "nb": after[1], "rowid": after[2], "at": at, "last": last},
    )
    return True


async def finish(write: Runner, now: int, marked_at: int | None = None) -> None:
    """Run the walk to its end, a chunk per write transaction. `now` is the caller's time at
    the start: each chunk ends messages (and marks the walk worked) at it plus the time gone
    since."""
    # marked_at: the change's own transaction's mark (the sweep's walk: others' marks).
    await work_out(
        write, lambda c, at, last: 0 if _step(c, at, last) else None, clock_from(now), marked_at
    )


async def resume(read: Runner, write: Runner, now: int) -> None:
    """The sweep's part: finish a walk nobody has worked for RESUME_AFTER_MS (its process
    stopped)."""
    row = await read(lambda c: c.execute("SELECT worked_at FROM sender_walk").fetchone())
    if row is not None and row[0] <= now - RESUME_AFTER_MS:
        await finish(write, now)


def moved(c: sqlite3.Connection) -> None:
    """In a transaction that moves waiting messages earlier in the queue index (an un-park, a
    clock stepped back): a walk under way may have passed them, so it walks once more."""
    c.execute("UPDATE sender_walk SET moved=1")


def guard(c: sqlite3.Connection, ids: list[str], now: int) -> list[str]:
    """In a claim's transaction, while a walk is unfinished: the messages of `ids` the current
    assignments refuse are settled as the walk would (the never-tried end unsent, the tried ones
    are held: claimed, they expire instead of going out); returns the ids still to claim."""
    if not ids:
        return ids
    walk = c.execute("SELECT assigned_only FROM sender_walk").fetchone()
    if walk is None:
        return ids
    rows = c.execute(
        f"SELECT rowid, account_id, sender, {NEVER_TRIED}, id FROM messages "
        f"WHERE id IN ({pipe._marks(len(ids))})",
        ids,
    ).fetchall()
    refused = _refused(c, [(r[0], r[1], r[2]) for r in rows], bool(walk[0]))
    _settle(c, refused, now)
    ended = set(refused)
    gone = {r[4] for r in rows if r[3] and r[0] in ended}  # ended: never tried
    return [i for i in ids if i not in gone] if gone else ids
