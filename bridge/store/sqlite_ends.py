"""An account's waiting messages ended in chunks, each in a write transaction of its own (SQLite).

Why: disabling an account (or deleting or rejecting its sign or template, or turning its
`marketing` or `raw_text` off) ends its waiting messages unsent and refunded. In one transaction
that held the store's write lock ~20 µs per message: with a million waiting (an account caught
flooding, the very one an operator disables), every accept of every account and every receipt
waited ~20 s. Now the first transaction makes the change, holds the messages already tried
(end_queued's rules), ends up to END_CHUNK waiting ones and, when more wait, records the end in
`pending_ends`; the rest go END_CHUNK per transaction, the other writers' batches in between.

Why nothing is sent meanwhile: each claim reads `pending_ends` and ends, instead of claiming,
the messages an end still covers (`guard`). An end covers only the messages that existed when
it started (`max_rowid`): a sign or template created again under the same name, or an account
enabled again, sends its new messages. A process that stops part-way leaves the row: the sweep
finishes it (`resume`) once nobody has worked it for RESUME_AFTER_MS.

PostgreSQL's ends and close go in pages too (postgres_pending_ends.py): there one transaction
held every row it ended (a close: every message the account had), and every claim skipped them.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from bridge.store import sqlite_pipeline as pipe
from bridge.store.account_rows import REVOKED_SENDS
from bridge.store.base import clock_from
from bridge.store.rules_rows import NEVER_TRIED
from bridge.store.sqlite_chunked import MARK, Runner, Step, work_out

# Messages ended per transaction: at ~20 µs each, ~40 ms of the write lock.
END_CHUNK = 2_000
# Messages masked per transaction (a close): ~5-10 µs each, ~50 ms of the write lock.
ERASE_CHUNK = 5_000
# Inbound messages (MOs) masked per transaction (a close): a row each, no index touched.
MO_CHUNK = 5_000

# What each scope ends of the account's waiting messages; `?` takes the end's `value`. The
# settings that revoke a kind of send (`marketing`, `raw_text`) are scopes of their own name.
SCOPES: dict[str, str] = {
    "account": "1",
    "sign": "sign_name = ?",
    "template": "template = ?",
    # An account's close: its messages masked (start_erase); the value is the mask. Nothing is
    # left waiting to end (the close ended them): the claim's guard finds none.
    "erase": "1",
    # An account's close: its MO inbox masked (start_mo); the value is the mask. It covers no
    # message ("0"): its bounds and cursor are the inbox's, not the messages'.
    "mo": "0",
    **{setting: which for setting, which, _error in REVOKED_SENDS},
}

T = TypeVar("T")


# Before the first row of the queue index.
_START = (-(1 << 62), 0)


class _End(NamedTuple):
    id: int
    account_id: str
    scope: str
    value: str | None
    error: str
    ended_at: int
    max_rowid: int
    after: tuple[int, int]


_COLS = "id, account_id, scope, value, error, ended_at, max_rowid, after_nb, after_rowid"


def _end(r: Sequence[Any]) -> _End:
    return _End(r[0], r[1], r[2], r[3], r[4], r[5], r[6], (r[7], r[8]))


def _filter(scope: str, value: str | None) -> tuple[str, tuple[Any, ...]]:
    sql = SCOPES[scope]
    return sql, ((value,) if "?" in sql else ())


def start_erase(
    c: sqlite3.Connection, account_id: str, masked: str, now: int, pending: list[int]
) -> None:
    """In a close's transaction: mask the account's messages (sqlite_rules.mask_messages), the
    first ERASE_CHUNK now and, when more may be left, the rest in chunks of their own: an
    account's history may be millions of messages (~5 µs each in the write lock)."""
    _begin(c, account_id, "erase", masked, "ERASED", now, pending)


def start_mo(
    c: sqlite3.Connection, account_id: str, masked: str, now: int, pending: list[int]
) -> None:
    """In a close's transaction: mask the account's MO inbox (the replies' numbers and texts),
    the first MO_CHUNK now and, when more may be left, the rest in chunks of their own after it,
    in the order of its (account_id, received_at) index. In the close's one statement an inbox
    of millions held every writer for as long. Unbounded, unlike the messages' masking: nothing
    is attributed to a closed account after its close (attribute_mo), and a reply stored late,
    attributed before it, is masked too: more privacy, not less. Reads answer the rows not
    masked yet as the chunks will leave them (`mo_masking`)."""
    _begin(c, account_id, "mo", masked, "ERASED", now, pending)


# The mask of a close whose masking of the MO inbox of the row's account is under way, else NULL:
# a column of a read of mo_inbox (get_mo), one probe of `pending_ends`.
MO_MASKING = (
    "(SELECT value FROM pending_ends WHERE account_id=mo_inbox.account_id AND scope='mo' LIMIT 1)"
)


def masking(c: sqlite3.Connection, account_id: str) -> str | None:
    """The mask of a close whose masking of the account's messages is still under way, else None.

    Why: until the last chunk, the account's rows past the masking's cursor still name their
    numbers and hold their texts, for seconds (a large account) or RESUME_AFTER_MS and more (a
    process stopped part-way). Reads of the account's messages mask what they return as the
    masking will (`base.masked`), so nothing reads unmasked data of a closed account after the
    close's answer. One probe of `pending_ends`, empty but for ends under way."""
    row = c.execute(
        "SELECT value FROM pending_ends WHERE account_id=? AND scope='erase' LIMIT 1",
        (account_id,),
    ).fetchone()
    return None if row is None else (row[0] or "")


def _erase_chunk(c: sqlite3.Connection, end: _End) -> tuple[int, tuple[int, int] | None]:
    """Mask the next ERASE_CHUNK of the account's messages, in the order of its (accepted_at)
    index, which no message moves in; none is ended (0)."""
    from bridge.store.sqlite_rules import mask_messages

    head = "SELECT accepted_at, rowid, id FROM messages INDEXED BY messages_account_time "
    rows = pipe.seek_after(
        c,
        head + "WHERE account_id=?",
        (end.account_id,),
        "accepted_at",
        end.after,
        ERASE_CHUNK,
        "rowid <= ?",
        (end.max_rowid,),
    )
    mask_messages(c, [r[2] for r in rows], end.value or "")
    return 0, ((rows[-1][0], rows[-1][1]) if len(rows) == ERASE_CHUNK else None)


def _mo_chunk(c: sqlite3.Connection, end: _End) -> tuple[int, tuple[int, int] | None]:
    """Mask the next MO_CHUNK of the account's MO inbox after `end.after` (received_at, rowid),
    in its index's order (seek_after: the rowid is the index's last column), which no row moves
    in; none is ended (0)."""
    head = "SELECT received_at, rowid FROM mo_inbox INDEXED BY mo_inbox_account WHERE account_id=?"
    rows = pipe.seek_after(c, head, (end.account_id,), "received_at", end.after, MO_CHUNK)
    for chunk in pipe._chunks([r[1] for r in rows], 400):
        c.execute(
            f"UPDATE mo_inbox SET source=?, text=NULL WHERE rowid IN ({pipe._marks(len(chunk))})",
            (end.value or "", *chunk),
        )
    return 0, ((rows[-1][0], rows[-1][1]) if len(rows) == MO_CHUNK else None)


def start(
    c: sqlite3.Connection,
    account_id: str,
    scope: str,
    value: str | None,
    error: str,
    now: int,
    pending: list[int],
) -> int:
    """In the caller's transaction: sqlite_rules.end_queued for the account's messages `scope`
    covers, but of the never-tried waiting ones only the first END_CHUNK; when more may wait,
    the end is recorded and its id appended to `pending` (for `finish`). Returns how many were
    ended now."""
    from bridge.store.sqlite_rules import hold_tried

    cond, args = _filter(scope, value)
    hold_tried(c, f"account_id=? AND {cond}", (account_id, *args), error, now)
    return _begin(c, account_id, scope, value, error, now, pending)


def _begin(
    c: sqlite3.Connection,
    account_id: str,
    scope: str,
    value: str | None,
    error: str,
    now: int,
    pending: list[int],
) -> int:
    """The first chunk of an end, in the caller's transaction, and its record when more may be
    left (its id appended to `pending`); how many it ended."""
    (max_rowid,) = c.execute("SELECT COALESCE(MAX(rowid), 0) FROM messages").fetchone()
    end = _End(0, account_id, scope, value, error, now, max_rowid, _START)
    ended, after = _chunk(c, end)
    if after is not None:
        cur = c.execute(
            "INSERT INTO pending_ends (account_id, scope, value, error, ended_at, max_rowid, "
            "after_nb, after_rowid, worked_at) VALUES (?,?,?,?,?,?,?,?,?)",
            (account_id, scope, value, error, now, max_rowid, *after, now),
        )
        pending.append(int(cur.lastrowid or 0))
    return ended


def _chunk(c: sqlite3.Connection, end: _End) -> tuple[int, tuple[int, int] | None]:
    """End the next END_CHUNK messages of `end` in the queue index's order after `end.after`;
    returns how many and where to go on from (None: none are left)."""
    if end.scope == "erase":
        return _erase_chunk(c, end)
    if end.scope == "mo":
        return _mo_chunk(c, end)
    cond, args = _filter(end.scope, end.value)
    # The whole cursor sought (walk_account): the rows it passed over stay in the index (tried,
    # of another scope, accepted since), and were read again at each chunk.
    rows = pipe.walk_account(
        c,
        "q_not_before, rowid, id",
        end.account_id,
        end.after,
        END_CHUNK,
        f"rowid <= ? AND {cond} AND {NEVER_TRIED}",
        (end.max_rowid, *args),
    )
    if rows:
        pipe.end_unsent(c, [r[2] for r in rows], end.error, end.ended_at)
    if len(rows) == END_CHUNK:
        return len(rows), (rows[-1][0], rows[-1][1])
    if end.after == _START:
        return len(rows), None  # a walk from the start found them all
    # The end of the index. A message may have moved behind the walk meanwhile (a route un-parked
    # sets its due time to now): walk once more from the start if one did.
    left = c.execute(
        "SELECT 1 FROM messages INDEXED BY messages_queue WHERE q_state='queued' "
        f"AND account_id=? AND rowid <= ? AND {cond} AND {NEVER_TRIED} LIMIT 1",
        (end.account_id, end.max_rowid, *args),
    ).fetchone()
    return len(rows), (_START if left else None)


def _step(c: sqlite3.Connection, end_id: int, now: int, last: int | None = None) -> int | None:
    """One chunk of the end `end_id`: how many it ended, None once it is done (or gone). `now`
    marks the end worked; `last` is the mark this worker made at its chunk before: a mark found
    below it was moved back by a step of the clock (sqlite_clock), and this one follows it, so
    a worker counting on from the clock of its start does not mark it the step ahead again."""
    row = c.execute(f"SELECT {_COLS} FROM pending_ends WHERE id=?", (end_id,)).fetchone()
    if row is None:
        return None
    ended, after = _chunk(c, _end(row))
    if after is None:
        # Done: what the claims' guard ended meanwhile counts as this end's too.
        (guarded,) = c.execute("SELECT guarded FROM pending_ends WHERE id=?", (end_id,)).fetchone()
        c.execute("DELETE FROM pending_ends WHERE id=?", (end_id,))
        ended += guarded
        return ended if ended else None
    c.execute(
        f"UPDATE pending_ends SET after_nb=:nb, after_rowid=:rowid, worked_at={MARK} WHERE id=:id",
        {"nb": after[0], "rowid": after[1], "at": now, "last": last, "id": end_id},
    )
    return ended


async def finish(write: Runner, ids: Sequence[int], now: int, marked_at: int | None = None) -> int:
    """Run the ends `ids` to their end, a chunk per write transaction; how many they ended.
    `now` is the caller's time at the start (clock_from). `marked_at`: the mark the caller's own
    transaction gave them (`run`; the sweep resumes ends others marked)."""
    clock = clock_from(now)
    total = 0
    for end_id in ids:
        total += await work_out(write, _steps(end_id), clock, marked_at)
    return total


def _steps(end_id: int) -> Step:
    """work_out's step for the end `end_id`."""
    return lambda c, at, last: _step(c, end_id, at, last)


async def run(
    write: Runner, job: Callable[[sqlite3.Connection], T], pending: Sequence[int], now: int
) -> tuple[T, int]:
    """`job` (which may start ends into `pending`) in a write, then those ends to their end:
    the job's result, and how many more messages the ends' chunks ended."""
    out = await write(job)
    return out, await finish(write, pending, now, now)


def guard(c: sqlite3.Connection, ids: list[str]) -> list[str]:
    """In a claim's transaction: end, instead of claiming, the messages of `ids` that an end
    under way covers; returns the others."""
    ends = [_end(r) for r in c.execute(f"SELECT {_COLS} FROM pending_ends")]
    for end in ends:
        if not ids:
            break
        cond, args = _filter(end.scope, end.value)
        covered = [
            r[0]
            for r in c.execute(
                f"SELECT id FROM messages WHERE id IN ({pipe._marks(len(ids))}) "
                f"AND account_id=? AND rowid <= ? AND {cond} AND {NEVER_TRIED}",
                (*ids, end.account_id, end.max_rowid, *args),
            )
        ]
        if covered:
            pipe.end_unsent(c, covered, end.error, end.ended_at)
            c.execute(  # counted in the end's answer (_step)
                "UPDATE pending_ends SET guarded=guarded+? WHERE id=?", (len(covered), end.id)
            )
            gone = set(covered)
            ids = [i for i in ids if i not in gone]
    return ids
