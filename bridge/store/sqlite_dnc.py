"""A do-not-contact list imported (or deleted) in chunks, each a write transaction of its own,
and the claim's check of every list (SQLite).

Why: an import replaced the list's entries and ended the waiting messages it blocks in one
transaction, holding the store's write lock ~3.3 µs per entry: a national registry of 1,000,000
numbers, refreshed daily, stalled every accept and receipt of every account 3.4 s (a list of
ten million, over half a minute). Now:

1. The entries go ENTRY_CHUNK per transaction, each marked with the import's generation
   (`gen`: its time, or above the list's latest): they block as they land, beside the list's
   earlier entries, so while the import runs the list blocks both (never fewer numbers than
   before or after it).
2. One transaction records the list and holds the blocked messages on a bind (not sent again
   if they come back), as before.
3. The waiting messages are walked WALK_CHUNK per transaction in the queue index's order: the
   blocked ones end unsent (RECIPIENT_BLOCKED, refunded), those already tried are held.
4. The list's entries of earlier imports (`gen` below this one's) go, ENTRY_CHUNK at a time.

A message the walk passes by (a route un-parked moves it earlier in the queue meanwhile) or
never reaches (the process stopped) is not sent all the same: each claim, while any list holds
an entry, ends the never-tried messages a list blocks and holds the others (`guard`). An import
that stopped part-way leaves the list blocking its earlier entries and those it wrote, until it
is imported again. PostgreSQL writes the list in one transaction (it holds the rows it writes,
not every writer), then walks the waiting messages a page per transaction (postgres_dnc.py).

Two imports of one list at once (two operators, a timed-out PUT retried while the first still
runs) interleaved their chunks and left the list blocking what both wrote. Now an import records
its generation as the list's latest (`dnc_imports`) in its first transaction, and each later
step goes on only while it is still the latest: the later import wins, the earlier one stops at
its next step (DNC_IMPORT_SUPERSEDED) and its entries, of an older generation, go with the later
one's step 4. A delete supersedes an import under way the same way; it removes the entries
first and the list's row with the last chunk, so one stopped part-way leaves the list listed.
What the earlier import's walk ended before the later one started stays ended: the list
blocked it then.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Container, Sequence
from typing import Any

from bridge.store import sqlite_pipeline as pipe
from bridge.store.base import StoreError, job_of
from bridge.store.models import DncInfo
from bridge.store.rules_rows import NEVER_TRIED, DncEntries, blocked_ids, number_prefixes

ENTRY_CHUNK = 20_000  # ~70 ms of the write lock
WALK_CHUNK = 5_000  # waiting messages looked at per transaction
ERROR = "RECIPIENT_BLOCKED"
SUPERSEDED = "DNC_IMPORT_SUPERSEDED"

Runner = Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]

_START: tuple[Any, ...] = ("", -(1 << 62), 0)


def _latest(c: sqlite3.Connection, list_id: str, at: int) -> int:
    """A generation above every one the list has had, whatever the clock says (two imports in one
    millisecond, a clock stepped back), recorded as the list's latest: its entries' and the last
    import's or delete's (whose entries may not be written yet)."""
    (latest,) = c.execute(
        "SELECT MAX(g) FROM (SELECT MAX(gen) AS g FROM dnc_entries WHERE list_id=?1 "
        "UNION ALL SELECT gen FROM dnc_imports WHERE list_id=?1)",
        (list_id,),
    ).fetchone()
    gen = max(at, (latest or 0) + 1)
    c.execute(
        "INSERT INTO dnc_imports (list_id, gen) VALUES (?,?) "
        "ON CONFLICT (list_id) DO UPDATE SET gen=excluded.gen",
        (list_id, gen),
    )
    return gen


def _still_latest(c: sqlite3.Connection, list_id: str, gen: int) -> None:
    """In each step's transaction: a later import (or a delete) of the list started, this one
    stops here, before it writes."""
    row = c.execute("SELECT gen FROM dnc_imports WHERE list_id=?", (list_id,)).fetchone()
    if row is None or row[0] != gen:
        raise StoreError(
            SUPERSEDED,
            f"do-not-contact list {list_id!r} was imported again or deleted while this import "
            "ran: this import stopped, and the later one's list stands (its entries replace "
            "this one's); see the lists (GET /admin/dnc, smpp-bridge dnc list) before importing "
            "again",
        )


def _write_entries(c: sqlite3.Connection, list_id: str, gen: int, chunk: Sequence[str]) -> None:
    _still_latest(c, list_id, gen)
    # An entry another import of the list wrote later keeps its later generation.
    c.executemany(
        "INSERT INTO dnc_entries (prefix, list_id, gen) VALUES (?,?,?) "
        "ON CONFLICT (prefix, list_id) DO UPDATE SET gen=MAX(IFNULL(gen, 0), excluded.gen)",
        [(p, list_id, gen) for p in chunk],
    )


def _record(c: sqlite3.Connection, info: DncInfo, gen: int, entries: Container[str]) -> None:
    _still_latest(c, info.id, gen)
    c.execute(
        "INSERT INTO dnc_lists (id, name, country, numbers, prefixes, imported_at) "
        "VALUES (?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET name=excluded.name, "
        "country=excluded.country, numbers=excluded.numbers, prefixes=excluded.prefixes, "
        "imported_at=excluded.imported_at",
        (info.id, info.name, info.country, info.numbers, info.prefixes, info.imported_at),
    )
    # On a bind: not recalled, but not sent again if it comes back (a throttle, a timeout).
    claimed = c.execute("SELECT id, recipient FROM messages WHERE q_state='claimed'").fetchall()
    _settle(c, blocked_ids(claimed, entries), info.imported_at)


def _walk(
    c: sqlite3.Connection, info: DncInfo, gen: int, after: tuple[Any, ...], entries: Container[str]
) -> tuple[int, tuple[Any, ...] | None]:
    """End the waiting messages `entries` block among the next WALK_CHUNK in the queue index's
    order after `after`; how many, and where to go on from (None: the end of the queue)."""
    _still_latest(c, info.id, gen)
    at = info.imported_at
    rows = pipe.walk_queue(c, "id, recipient", after, WALK_CHUNK)
    ended = _settle(c, blocked_ids([(r[3], r[4]) for r in rows], entries), at)
    return ended, ((rows[-1][0], rows[-1][1], rows[-1][2]) if len(rows) == WALK_CHUNK else None)


def _settle(c: sqlite3.Connection, blocked: Sequence[str], at: int) -> int:
    """Blocked messages as sqlite_rules.end_queued ends any: the never-tried waiting ones end
    unsent, those tried or on a bind are held (their validity ends now: the next claim or sweep
    ends them, unless a late answer came). How many ended. By key (sqlite_rules.end_by_key):
    with the state indexed, SQLite searched the queue index for it and read every waiting
    message per call."""
    from bridge.store.sqlite_rules import end_by_key

    return end_by_key(c, "id", blocked, ERROR, at)


def _drop_older(c: sqlite3.Connection, list_id: str, below: int) -> int:
    return c.execute(
        # In the index's order (list_id, gen) the older entries come first, those of before
        # generations (NULL) first of all.
        "DELETE FROM dnc_entries WHERE list_id=? AND prefix IN (SELECT prefix FROM dnc_entries "
        "WHERE list_id=? AND (gen IS NULL OR gen<?) ORDER BY gen LIMIT ?)",
        (list_id, list_id, below, ENTRY_CHUNK),
    ).rowcount


def _drop_replaced(c: sqlite3.Connection, list_id: str, gen: int) -> int:
    _still_latest(c, list_id, gen)
    return _drop_older(c, list_id, gen)


async def import_list(write: Runner, info: DncInfo, entries: DncEntries) -> int:
    """Steps 1-4 above; how many waiting messages ended. StoreError DNC_IMPORT_SUPERSEDED when
    a later import or a delete of the list started meanwhile (this one stopped). `entries` is
    both what is written, one chunk as str at a time, and what the walks match against."""
    gen = await write(lambda c: _latest(c, info.id, info.imported_at))
    for chunk in entries.chunks(ENTRY_CHUNK):
        await write(job_of(_write_entries, info.id, gen, chunk))
    await write(lambda c: _record(c, info, gen, entries))
    ended = 0
    after: tuple[Any, ...] | None = _START
    while after is not None:
        n, after = await write(job_of(_walk, info, gen, after, entries))
        ended += n
    while await write(lambda c: _drop_replaced(c, info.id, gen)) == ENTRY_CHUNK:
        pass
    return ended


def _delete(c: sqlite3.Connection, list_id: str) -> tuple[bool, int]:
    """Whether the list is listed, and the delete's generation, recorded as the list's latest
    (an import under way stops): every entry below it goes."""
    gen = _latest(c, list_id, 0)
    listed = c.execute("SELECT 1 FROM dnc_lists WHERE id=?", (list_id,)).fetchone()
    return listed is not None, gen


def _delete_chunk(c: sqlite3.Connection, list_id: str, gen: int) -> bool:
    """ENTRY_CHUNK of the list's entries; with the last, the list's row, unless a later import
    took the list over (it records the list itself). Whether more are left."""
    if _drop_older(c, list_id, gen) == ENTRY_CHUNK:
        return True
    row = c.execute("SELECT gen FROM dnc_imports WHERE list_id=?", (list_id,)).fetchone()
    if row is not None and row[0] == gen:
        c.execute("DELETE FROM dnc_lists WHERE id=?", (list_id,))
    return False


async def delete_list(write: Runner, list_id: str) -> bool:
    """The list's entries in chunks, then its row: a delete stopped part-way (a process killed)
    leaves the list listed, blocking what is left of it, to be deleted again. Its row first,
    the entries left after a stop blocked sends and ended messages at every claim under a
    list nobody could see (a second delete answered 404). An import started after the delete
    keeps the entries it writes (of a later generation). Whether the list was listed."""
    listed, gen = await write(lambda c: _delete(c, list_id))
    while await write(lambda c: _delete_chunk(c, list_id, gen)):
        pass
    return listed


def guard(c: sqlite3.Connection, ids: list[str], now: int) -> list[str]:
    """In a claim's transaction, while any list holds an entry: the never-tried messages of `ids`
    a list blocks end unsent instead of being claimed, the tried ones are held (claimed, they
    expire instead of going out); returns the ids still to claim."""
    if not ids or c.execute("SELECT 1 FROM dnc_entries LIMIT 1").fetchone() is None:
        return ids
    # Both lists padded to a few lengths (pipe.in_list): a claim's count, and its numbers'
    # prefixes, vary claim by claim, and a text per count was prepared again nearly each time.
    marks, args = pipe.in_list(ids)
    rows = c.execute(
        f"SELECT id, recipient, {NEVER_TRIED} FROM messages WHERE id IN ({marks})", args
    ).fetchall()
    prefixes = sorted({p for r in rows for p in number_prefixes(r[1])})
    matched: set[str] = set()
    for chunk in pipe._chunks(prefixes, 400):
        marks, args = pipe.in_list(chunk)
        matched.update(
            r[0]
            for r in c.execute(f"SELECT prefix FROM dnc_entries WHERE prefix IN ({marks})", args)
        )
    if not matched:
        return ids
    blocked = blocked_ids([(r[0], r[1]) for r in rows], matched)
    _settle(c, blocked, now)
    gone = {r[0] for r in rows if r[2]}.intersection(blocked)  # ended: never tried
    return [i for i in ids if i not in gone]
