"""The pipeline's hot writes for SQLite, batched: submit results, receipts, roll-ups, outbox rows.

Each function runs inside one writer job and handles a whole batch with a handful of statements
(set-based reads, `executemany` writes) instead of several statements per message: at thousands of
messages a second the per-statement cost, not the disk, is what limits an embedded store.
"""

from __future__ import annotations

import functools
import sqlite3
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

import orjson
from orjson import loads

from bridge.domain import admission as adm
from bridge.domain import lifecycle as lc
from bridge.store import rollup_rows, sqlite_rules
from bridge.store.models import (
    KEPT_RECEIPT_SLACK_MS,
    LateAccept,
    ReceiptIn,
    Release,
    SubmitResult,
)
from bridge.store.rules_rows import END_ERROR

_CHUNK = 400  # ids per IN (...) list: well under SQLite's variable limit


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _marks(n: int) -> str:
    return ",".join("?" * n)


# The lengths an owner's IN list is padded to (in_list). Up to 512 ids at most half again as
# many marks (400: the chunks' size); past it, a multiple of 512.
_IN_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 400, 512)


@functools.cache
def _in_size(n: int) -> int:
    for size in _IN_SIZES:
        if n <= size:
            return size
    return -(-n // 512) * 512


@functools.cache
def _padded_marks(size: int) -> str:
    return ",".join("?" * size)


def json_ids(ids: Sequence[str]) -> str:
    """`ids` (the store's own message ids, or ids checked as _match does) as one JSON array
    for `json_each(?)`, which the owner's hot reads join to the rows they name (CROSS JOIN: the
    list drives, each row is found by its key) and the claim's UPDATE takes as `id IN (SELECT
    value FROM json_each(?))` (2 k instructions a message less than `UPDATE ... FROM`), in
    place of an `IN (?,?,...)` list.
    One SQL text whatever the count: the sqlite3 module keeps a connection's last 128 prepared
    statements by their text, and a text per count (a claim's 1 to 500 messages, a batch of
    results or receipts) was prepared again nearly every time (7-21 µs each); and, measured
    under callgrind, ~2 k instructions a row cheaper than the list's bound values, which SQLite
    sorts into a temporary b-tree first. The order of the rows is the list's, not the key's."""
    return orjson.dumps(ids).decode()


def packed_rows(c: sqlite3.Connection, cols: str, tail: str, args: Sequence[Any]) -> list[Any]:
    """The rows of `SELECT cols tail` (`args`), read as one JSON array of JSON arrays
    (`json_group_array(json_array(cols))`, parsed by orjson): one step and one value for the
    statement, not a step and a tuple a row and a value a column (the sqlite3 module hands the
    GIL over around every step; session 59, `bench_owner.py --callgrind`: ~2-3 k instructions
    a row less on the owner's hot reads). The rows come in the join's order, as the rows of
    the plain SELECT do (its loop feeds the aggregate). The store writes TEXT, INTEGER or NULL
    in the columns read so; a value JSON cannot carry (a BLOB, which SQLite refuses in
    `json_array`, or an infinite REAL, written `Inf`, which orjson refuses: a hand edit or
    another tool's write) reads the statement's rows by their columns, as before: without that
    every batch naming such a row failed, every other message's results or receipts in it
    with it, at each retry (SMSCs deliver a refused receipt again).

    Only such a value is read again: an error that made SQLite roll the transaction back by
    itself (an I/O error reading a page, even in a SELECT) is raised, as the plain SELECT
    raised it. Read again, it succeeded in autocommit, the job's later writes each committed
    on their own and the runner, finding no transaction, failed every job of the batch: half a
    job on disk behind callers told it failed (review r4, session 59)."""
    inside = c.in_transaction
    try:
        ((packed,),) = c.execute(f"SELECT json_group_array(json_array({cols})) {tail}", args)
        rows: list[Any] = loads(packed)
        return rows
    except (sqlite3.OperationalError, orjson.JSONDecodeError):
        if inside and not c.in_transaction:
            raise
        return c.execute(f"SELECT {cols} {tail}", args).fetchall()


def in_list(ids: Sequence[Any]) -> tuple[str, Sequence[Any]]:
    """The marks of an `IN (...)` list of `ids` and its arguments, padded with the last id to
    one of a few lengths (_IN_SIZES), for the owner's reads that keep a list (the rarer ones,
    and those whose order or ids json_ids does not serve): a few texts per statement, not one
    per count, so they stay among the sqlite3 module's 128 prepared statements (json_ids). A
    repeated id matches nothing more: `IN` is a set, each row is read or written once."""
    n = len(ids)
    size = _in_size(n)
    if size == n:
        return _padded_marks(size), ids
    return _padded_marks(size), [*ids, *(ids[-1],) * (size - n)]


def move_parts(
    c: sqlite3.Connection,
    ids: Sequence[str],
    from_state: str,
    to_state: str,
    now: int,
    error_sql: str,
    error_args: tuple[Any, ...] = (),
) -> None:
    """The `from_state` parts of the messages `ids` to `to_state`, done now, with the error code
    SQL expression `error_sql` (its parameters `error_args`).

    One statement per 400 messages, not one per message: in a job's savepoint each UPDATE of
    the WITHOUT ROWID parts table writes a statement journal, which with temp_store=MEMORY costs
    more the more the transaction wrote (quadratic: an account of 100,000 waiting messages
    disabled held every writer 14.8 s, 12 s of it in these updates)."""
    for chunk in _chunks(ids, 400):
        c.execute(
            f"UPDATE segments SET state=?, done_at=?, error_code={error_sql} "
            f"WHERE message_id IN ({_marks(len(chunk))}) AND state=?",
            (to_state, now, *error_args, *chunk, from_state),
        )


def seek_after(
    c: sqlite3.Connection,
    head: str,
    head_args: Sequence[Any],
    col: str,
    after: Sequence[Any],
    limit: int,
    where: str = "",
    args: Sequence[Any] = (),
) -> list[tuple[Any, ...]]:
    """The next `limit` rows of `head` (a SELECT ... FROM an index ... WHERE its leading
    equalities, `head_args`) after the cursor `after` (`col`, rowid), in the index's order,
    those matching `where` (`args`), in two seeks: the rest of the cursor's `col` value by
    rowid, then what follows it. SQLite seeks a row value `(col, rowid) > (?, ?)` on `col`
    alone and reads again every row of that value behind the cursor at each page: a campaign
    due at one time, a million long, made a walk over it quadratic."""
    cond = f" AND ({where})" if where else ""
    rows = c.execute(
        f"{head} AND {col}=? AND rowid>?{cond} ORDER BY rowid LIMIT ?",
        (*head_args, after[0], after[1], *args, limit),
    ).fetchall()
    if len(rows) < limit:
        rows += c.execute(
            f"{head} AND {col}>?{cond} ORDER BY {col}, rowid LIMIT ?",
            (*head_args, after[0], *args, limit - len(rows)),
        ).fetchall()
    return rows


def walk_account(
    c: sqlite3.Connection,
    cols: str,
    account: str,
    after: Sequence[Any],
    limit: int,
    where: str = "",
    args: Sequence[Any] = (),
) -> list[tuple[Any, ...]]:
    """`cols` of the next `limit` queued messages of `account` matching `where` (`args`) after
    the cursor `after` (due time, rowid) in the queue index's order (seek_after)."""
    head = (
        f"SELECT {cols} FROM messages INDEXED BY messages_queue "
        "WHERE q_state='queued' AND account_id=?"
    )
    return seek_after(c, head, (account,), "q_not_before", after, limit, where, args)


def walk_queue(
    c: sqlite3.Connection,
    extra: str,
    after: tuple[Any, ...],
    limit: int,
    where: str = "",
    args: Sequence[Any] = (),
) -> list[tuple[Any, ...]]:
    """(account_id, q_not_before, rowid, *`extra` columns) of the next `limit` queued messages
    matching `where` (`args`) after the cursor `after` (account, due time, rowid) in the queue
    index's order: the rest of the cursor's account (walk_account), then the accounts after
    it. Each seek names its whole cursor: SQLite seeks a row value on its first column or two
    and read again every row of the cursor's (account, due time) behind it at each chunk, a
    campaign scheduled for one time (a million of them took 9 s of a walk's 20 for those reads
    alone); `(account_id, q_not_before) > (?, ?)` still read that group once more at its end."""
    cols = f"account_id, q_not_before, rowid, {extra}"
    rows = walk_account(c, cols, after[0], after[1:], limit, where, args)
    if len(rows) < limit:
        cond = f" AND ({where})" if where else ""
        rows += c.execute(
            f"SELECT {cols} FROM messages INDEXED BY messages_queue "
            f"WHERE q_state='queued' AND account_id>?{cond} "
            "ORDER BY account_id, q_not_before, rowid LIMIT ?",
            (after[0], *args, limit - len(rows)),
        ).fetchall()
    return rows


def end_unsent(c: sqlite3.Connection, ids: Sequence[str], error: str, now: int) -> None:
    """End never-tried waiting messages unsent with `error`: their parts expired unsent, the
    rows rolled up (refunded, places given back, status webhooks queued)."""
    if ids:
        move_parts(c, ids, "queued", "expired_unsent", now, "?", (error,))
        rollup_messages(c, dict.fromkeys(ids, True), now)


# -- roll-up -------------------------------------------------------------------------------------


def rollup_messages(
    c: sqlite3.Connection,
    touched: dict[str, bool],
    now: int,
    *,
    intermediate: bool = False,
    air: dict[str, tuple[str, int]] | None = None,
    known: dict[str, list[tuple[str, str | None]]] | None = None,
    instance: str | None = None,
) -> int:
    """Recompute the message rows of `touched` (id -> release the claim when nothing is left to
    send) from their parts, and queue a status webhook for each that just became final; returns
    how many were queued (the owner wakes its webhook sender for them). Those that ended unsent
    and never reached anyone give back their place in the daily count (give_back_places).

    `air` (id -> the SMSC, the PDUs it accepted now) are the submit results' counts of the
    messages (record_submits): written by the same UPDATE as their roll-up, so a submit
    rewrites its message's row once, not twice; `instance`: whose results they are (the
    claim's route is written only on its own claims, rollup_rows.roll).

    `known` (id -> each part's (state, error code), in seq order) are messages whose every
    part row this transaction read and then wrote last, as they now are: not read again. A
    message's submit results and receipts each read its parts before writing them, so the
    roll-up's read of its parts was the same rows once more, twice a message in the owner's
    write lock (one-part messages since session 48; all of a message's parts, answered or
    receipted together, since session 51)."""
    air = air or {}
    known = known or {}
    if not touched and not air:
        return 0
    ids = list(touched)
    if not air.keys() <= touched.keys():  # the submit results touch every message they name
        ids += [mid for mid in air if mid not in touched]
    parts: dict[str, list[tuple[str, str | None]]] = {}  # none: no part row (roll)
    many: set[str] = set()  # messages with a second part row: not one payload PDU
    current: dict[str, tuple[Any, ...]] = {}
    for chunk in _chunks(ids):
        unknown = [mid for mid in chunk if mid not in known]
        if unknown:
            marks, args = in_list(unknown)
            reads: Iterable[tuple[Any, ...]] = c.execute(
                f"SELECT message_id, seq, state, error_code FROM segments "
                f"WHERE message_id IN ({marks}) ORDER BY message_id, seq",
                args,
            )
        else:
            reads = ()
        for mid, seq, state, error in reads:
            if seq == 1:  # ORDER BY message_id, seq: a message's first row
                parts[mid] = [(state, error)]
            else:
                parts.setdefault(mid, []).append((state, error))
                if seq == 2:
                    many.add(mid)
        for mid in chunk:
            got = known.get(mid)
            if got is not None:  # as the writes left them: taken as they are, not copied
                parts[mid] = got
                if len(got) > 1:
                    many.add(mid)
        # A row a list entry (LEFT JOIN: in the list's order), its first value the rowid
        # (null: no such message), by which the roll-up's UPDATE finds it again; the chunk's
        # rows as one JSON value (packed_rows, _ROLLUP_SELECTED).
        for mid, row in zip(
            chunk, packed_rows(c, _ROLLUP_SELECTED, _ROLLUP_FROM, (json_ids(chunk),)), strict=True
        ):
            if row[0] is not None:
                current[mid] = row
    # A row's new values (its SMSC, PDUs on air, route and the update's first seven fields)
    # -> the rowids of the rows that take them (roll's `grouped`: current's first column). A
    # batch's rows mostly take the same values (its one-part messages sent through one SMSC,
    # or delivered: the flush's time is the sent or done time), and those are written by one
    # statement listing their rowids, not one each (an executemany's row is a step, a reset,
    # its values bound and the GIL handed over: ~14 k instructions a row less, twice a message
    # in the owner's write lock; session 56). The rows are distinct (`ids` lists each once),
    # so the order they are written in changes nothing. The statement's shape and bound values
    # are worked out once a distinct key, not once a row (session 57).
    same: dict[tuple[Any, ...], list[int]] = {}
    _rolled, f = rollup_rows.roll(
        ids,
        current,
        parts,
        many,
        touched,
        air,
        now,
        intermediate=intermediate,
        instance=instance,
        grouped=same,
    )
    singles: dict[tuple[bool | None, ...], list[tuple[Any, ...]]] = {}
    for (smsc, nsent, route, u), rowids in same.items():
        values: tuple[Any, ...] = ()
        if smsc is not None:
            values = (smsc, nsent) if route is None else (smsc, nsent, route)
        if u is None:
            shape: tuple[bool | None, ...] = (smsc is not None, route is not None)
        else:
            # A None is not bound (_rollup_sql): the sqlite3 module adapts each bound None
            # (~1.2 k instructions), two a roll-up (the error and sent_at or done_at).
            state, delivered, failed, error, sent_at, done_at, release = u
            values += (state, delivered, failed)
            if error is not None:
                values += (error,)
            if sent_at is not None:
                values += (sent_at,)
            if done_at is not None:
                values += (done_at,)
            shape = (
                smsc is not None,
                route is not None,
                release,
                error is not None,
                sent_at is not None,
                done_at is not None,
            )
        if len(rowids) > 1:
            c.execute(_rollup_sql(*shape, many=True), (*values, orjson.dumps(rowids).decode()))
        elif (rows := singles.get(shape)) is None:
            singles[shape] = [(*values, rowids[0])]
        else:
            rows.append((*values, rowids[0]))
    for shape, rows in singles.items():
        c.executemany(_rollup_sql(*shape), rows)
    if f.billed:
        sqlite_rules.refund_finals(c, f.billed, now)
    if f.unsent:
        give_back_places(c, f.unsent)
    queued = enqueue_status_webhooks(c, f.finals, now) if f.finals else 0
    if f.sent:
        queued += enqueue_sent_webhooks(c, f.sent, now)
    return queued


# ROLLUP_COLS with the rowid in place of the id (rollup_rows.roll does not read that column):
# the roll-up's UPDATE finds its row by the rowid, not through the id's index (an index seek
# less a message row written, twice a message in the owner's write lock; session 55), and the
# read keeps its column count. Read by packed_rows: a chunk's rows as one JSON value (one
# column a row since session 57, one value a chunk since session 59: the sqlite3 module hands
# the GIL over around every step and builds a value per column, ~0.9 k instructions each,
# Architecture note 27); the row's values are TEXT, INTEGER or NULL as the store writes them,
# which JSON carries as they are. A BLOB or an infinite REAL it cannot carry (SQLite refuses
# the first, writes the second as `Inf`, which orjson refuses): such a chunk is read by its
# columns, as before session 57.
_ROLLUP_SELECTED = "m.rowid, " + ", ".join(
    f"m.{col.strip()}" for col in rollup_rows.ROLLUP_COLS.split(",")[1:]
)
_ROLLUP_FROM = "FROM json_each(?) j LEFT JOIN messages m ON m.id = j.value"


@functools.cache
def _rollup_sql(
    on_air: bool,
    route: bool,
    release: bool | None = None,
    error: bool = False,
    sent_at: bool = False,
    done_at: bool = False,
    *,
    many: bool = False,
) -> str:
    """The roll-up's UPDATE of one shape: SQLite rewrites the entries of every index whose
    columns are assigned, changed or not, so a roll-up that leaves the claim alone (every
    receipt) does not name the q_* columns (~25% of its cost, measured); the submit results'
    columns (smsc, segments_sent, q_route) are in no index. `release` None: no roll-up proper
    (only the submit results' columns). A roll-up's None values are not bound but written
    (session 54): its error code as NULL, and no assignment for a sent_at or done_at it does not
    set (`COALESCE(NULL, x)` is x): the sqlite3 module adapts every bound None (~1.2 k
    instructions each, two a roll-up; Architecture note 28). `many`: the rows are a JSON array
    of rowids (the rows a batch gives the same values: rollup_messages), not one rowid."""
    sets = []
    if on_air:
        sets.append("smsc=?, segments_sent=?")
        if route:
            sets.append("q_route=?")
    if release is not None:
        sets.append(
            "state=?, segments_delivered=?, segments_failed=?, "
            + ("error_code=?" if error else "error_code=NULL")
        )
        if sent_at:
            sets.append("sent_at=COALESCE(?, sent_at)")
        if done_at:
            sets.append("done_at=COALESCE(?, done_at)")
    if release:
        sets.append("q_state='done', q_claimed_by=NULL, q_lease_until=NULL")
    where = "rowid IN (SELECT value FROM json_each(?))" if many else "rowid=?"
    return f"UPDATE messages SET {', '.join(sets)} WHERE {where}"


# The SQL function by which a store's connection gives its zone of the daily quota's days
# (rules.timezone, SqliteStore.quota_tz as configure_store last set it).
QUOTA_TZ_SQL_FN = "bridge_quota_tz"


def quota_tz(c: sqlite3.Connection) -> str:
    """The zone of the daily quota's days of the store `c` belongs to. Asked of the connection,
    not passed down by every caller that may end messages: a caller that forgot it gave nothing
    back. A connection no store set up fails here ("no such function"), not silently."""
    (tz,) = c.execute(f"SELECT {QUOTA_TZ_SQL_FN}()").fetchone()
    return str(tz)


def give_back_places(c: sqlite3.Connection, ids: Sequence[str]) -> None:
    """Of the messages `ids` that just ended unsent, those that never reached anyone
    (lifecycle.never_reached) leave the daily count of the day they were accepted (in the
    store's quota_tz), in the transaction that ends them. Their place in the frequency history
    needs no write: its reads skip them (lifecycle.STILL_COUNTS_SQL). A count never goes below
    0 (a message accepted without sending rules was never counted)."""
    ended: list[tuple[str, int]] = []
    for chunk in _chunks(ids):
        marks, args = in_list(chunk)
        for account_id, accepted_at, state, nsent, unanswered in c.execute(
            "SELECT account_id, accepted_at, state, segments_sent, q_unanswered FROM messages "
            f"WHERE id IN ({marks})",
            args,
        ):
            if lc.never_reached(state, nsent, unanswered):
                ended.append((account_id, accepted_at))
    c.executemany(
        "UPDATE daily_counts SET messages=MAX(0, messages - ?1) WHERE account_id=?2 AND day=?3",
        [(n, acc, day) for (acc, day), n in adm.quota_returns(ended, quota_tz(c)).items()],
    )


def enqueue_sent_webhooks(c: sqlite3.Connection, sent: list[tuple[str, str]], now: int) -> int:
    """webhooks.send_intermediate: a report when every part was accepted by the SMSC. Only the
    message id is stored: the sender renders the report when it pushes it, from the message as
    it is then (a snapshot kept an erased number in clear, and was pushed after the final
    report when its first POST failed)."""
    urls = _status_urls(c, {a for a, _m in sent})
    if not any(urls.values()):  # no account of theirs pushes reports: no pass over them
        return 0
    rows = [
        (f"st_{mid}_sent", account, "event", mid, mid, now, now)
        for account, mid in sent
        if urls.get(account)
    ]
    if rows:
        c.executemany(
            "INSERT OR IGNORE INTO webhook_outbox (webhook_id, account_id, kind, ref_id, payload, "
            "next_attempt_at, created_at) VALUES (?,?,?,?,?,?,?)",
            rows,
        )
    return len(rows)


def _status_urls(c: sqlite3.Connection, accounts: set[str]) -> dict[str, str | None]:
    urls: dict[str, str | None] = {}
    for chunk in _chunks(sorted(accounts)):
        marks, args = in_list(chunk)
        urls.update(
            c.execute(
                f"SELECT id, status_callback_url FROM accounts WHERE id IN ({marks})", args
            ).fetchall()
        )
    return urls


def enqueue_status_webhooks(c: sqlite3.Connection, finals: list[tuple[str, str]], now: int) -> int:
    """Outbox rows for final statuses, for accounts that configured a status callback URL; how
    many."""
    urls = _status_urls(c, {a for a, _m in finals})
    if not any(urls.values()):  # no account of theirs pushes reports: no pass over them
        return 0
    rows = [
        (f"st_{mid}", account, "status", mid, None, now, now)
        for account, mid in finals
        if urls.get(account)
    ]
    if not rows:
        return 0
    return c.executemany(
        "INSERT OR IGNORE INTO webhook_outbox (webhook_id, account_id, kind, ref_id, payload, "
        "next_attempt_at, created_at) VALUES (?,?,?,?,?,?,?)",
        rows,
    ).rowcount  # inserted: a report queued before is ignored, not counted


# -- submit results ------------------------------------------------------------------------------

# A part's end is not recorded while another instance holds its message (?: the instance
# recording it): `segments.message_id` names the message, the statement's own parameter.
_NOT_THEIRS = (
    "NOT EXISTS (SELECT 1 FROM messages m WHERE m.id=segments.message_id "
    "AND m.q_state='claimed' AND m.q_claimed_by IS NOT ?)"
)


_SEG_SENT = lc.SEG_SENT
_SEG_TIMEOUT = lc.SEG_TIMEOUT


# The submit results' part UPDATE. A part whose SMSC id is its raw id (an SMSC whose ids need
# no normalising: most) binds it once, written to both columns (`?2`): the sqlite3 module binds
# a text by a call that takes SQLite's mutex and copies it (~0.55 k instructions; session 60).
_SUBMITTED = (
    "UPDATE segments SET state='sent', smsc=?, smsc_msg_id=?, smsc_msg_id_raw=?, "
    "submitted_at=?, attempts=attempts+1 WHERE message_id=? AND seq=?"
)
_SUBMITTED_SAME_RAW = (
    "UPDATE segments SET state='sent', smsc=?1, smsc_msg_id=?2, smsc_msg_id_raw=?2, "
    "submitted_at=?3, attempts=attempts+1 WHERE message_id=?4 AND seq=?5"
)


# A longer message's parts sent now, all of them still queued, through one SMSC at one time, each
# with its SMSC id as its raw id (the usual 3-part message), are written by one UPDATE listing
# their messages (as `_settle_same` writes the receipts' rows), not an `executemany` row a part:
# the message's parts found by one seek of its id, no step, reset and bound values a row. Each
# part's own SMSC id (and, when the listed messages' times differ, its message's time) comes
# from the connection's SQL functions below: the `__getitem__` of dicts of that connection
# (`SentValues`), filled by `record_submits` just before, keyed by `message_id || '/' || seq` (a C
# call a part, no Python frame; seq, digits, ends the key, so no two parts share one). The row
# value subquery calls the id's once for both columns. `state='queued'` with every queued part
# of the message one of these results (the queued read of the same transaction) names exactly
# those rows. `bench_owner.py --callgrind --parts 3`: 473.2 k -> 454.4 k instructions a message
# (459.1 k with the time read per row); one-part messages stay per row (README note 23).
SENT_ID_SQL_FN = "bridge_part_sent_id"
SENT_AT_SQL_FN = "bridge_part_sent_at"
_SUBMITTED_SET_HEAD = (
    "UPDATE segments SET state='sent', smsc=?1, (smsc_msg_id, smsc_msg_id_raw)="
    f"(SELECT x, x FROM (SELECT {SENT_ID_SQL_FN}(message_id || '/' || seq) AS x LIMIT 1)), "
)
_SUBMITTED_SET_TAIL = (
    "attempts=attempts+1 WHERE message_id IN (SELECT value FROM json_each(?2)) AND state='queued'"
)
_SUBMITTED_SET_AT = _SUBMITTED_SET_HEAD + "submitted_at=?3, " + _SUBMITTED_SET_TAIL  # one time
_SUBMITTED_SET_ATS = (
    _SUBMITTED_SET_HEAD + f"submitted_at={SENT_AT_SQL_FN}(message_id), " + _SUBMITTED_SET_TAIL
)


class SentValues:
    """A connection's values for `_SUBMITTED_SET_*`'s functions (register_functions): part key
    -> SMSC id, message id -> submitted at. The store that set the connection up passes them to
    `record_submits`, which fills them just before the statement and empties them after it.
    One per connection, which one thread uses at a time: the sqlite3 module hands the GIL over
    inside each step, and a function runs inside it."""

    __slots__ = ("ats", "ids")

    def __init__(self) -> None:
        self.ids: dict[str, str | None] = {}
        self.ats: dict[str, int] = {}


def register_functions(c: sqlite3.Connection) -> SentValues:
    """The owner's SQL functions on a store's connection (`_SUBMITTED_SET_*`), and the values
    they read (record_submits' `values`)."""
    values = SentValues()
    c.create_function(SENT_ID_SQL_FN, 1, values.ids.__getitem__)
    c.create_function(SENT_AT_SQL_FN, 1, values.ats.__getitem__)
    return values


def _part_order(r: SubmitResult) -> tuple[str, int]:
    return r.message_id, r.seq


def record_submits(
    c: sqlite3.Connection,
    results: list[SubmitResult],
    releases: list[Release],
    now: int,
    *,
    intermediate: bool = False,
    instance: str | None = None,
    one_per_message: frozenset[str] = frozenset(),
    inferred: dict[str, int] | None = None,
    values: SentValues | None = None,
) -> int:
    """Record submit results; `one_per_message` names the SMSCs whose one receipt stands for a
    whole message (smscs[].receipts). `inferred` (SMSC -> parts) counts the parts settled by
    another part's receipt (the smpp_bridge_receipts_inferred metric). `values`: those of `c`'s
    functions (register_functions), for `_SUBMITTED_SET_*`; None writes every part per row."""
    touched: dict[str, bool] = {}
    air: dict[str, tuple[str, int]] = {}
    # Messages whose every part row was queued and is now sent, as now written (rollup_messages).
    known: dict[str, list[tuple[str, str | None]]] = {}
    sent = [r for r in results if r.outcome == "sent"]
    if sent:
        # Only parts still queued count: a repeated result is settled once.
        queued: dict[tuple[str, int], tuple[int, str | None]] = {}  # -> (total, error code)
        mids = sorted({r.message_id for r in sent})
        for chunk in _chunks(mids):
            # A loop, not update() of a generator: a generator's frame resumed a part.
            for m, q, total, error in packed_rows(
                c,
                "s.message_id, s.seq, s.total, s.error_code",
                "FROM json_each(?) j CROSS JOIN segments s ON s.message_id = j.value "
                "WHERE s.state='queued'",
                (json_ids(chunk),),
            ):
                queued[m, q] = total, error
        fresh = []
        writes = []  # the parts' UPDATE rows, in fresh's order
        same_raw = []  # ... of those whose SMSC id is its raw id too (_SUBMITTED_SAME_RAW)
        # A longer message -> [its part count, seq -> error code of each part sent now, the
        # SMSC of its last such part]
        many: dict[str, list[Any]] = {}
        # Each message's SMSC (its last result's) and parts accepted now (lifecycle.on_air):
        # written by the roll-up's UPDATE, after the releases (a released message's route was
        # its claim's, and goes with it). One pass: a pass per use was ~1 k instructions a
        # message in the owner's write lock (session 55); a longer message's are taken from
        # `many` after it, once a message, not counted up a part (session 63).
        for r in sent:
            mid, seq, smsc = r.message_id, r.seq, r.smsc
            got = queued.pop((mid, seq), None)
            if got is None:
                continue
            total, error = got
            fresh.append(r)
            if total == 1:  # its only part row, 'sent' by the UPDATE below
                if (smsc_id := r.smsc_msg_id) == (raw := r.smsc_msg_id_raw):
                    same_raw.append((smsc, smsc_id, r.at or now, mid, seq))
                else:
                    writes.append((smsc, smsc_id, raw, r.at or now, mid, seq))
                known[mid] = [(_SEG_SENT, error)]
                air[mid] = (smsc, 1)
                touched[mid] = True
                continue
            if (parts_of := many.get(mid)) is None:  # not a dict and a tuple made a part
                many[mid] = [total, {seq: error}, smsc, [r]]  # its results: written below
                touched[mid] = True  # in the order of each message's first result, as before
                continue
            parts_of[1][seq] = error
            parts_of[2] = smsc
            parts_of[3].append(r)
        # Messages with a queued part no result of this batch names: not written by the set.
        left = {m for m, _q in queued} if queued else ()
        by_smsc: dict[str, list[str]] = {}  # _SUBMITTED_SET's messages, by SMSC
        ids: dict[str, str | None] = {} if values is None else values.ids
        ats: dict[str, int] = {} if values is None else values.ats
        if ids or ats:  # left by a batch that failed before its set (it names none of them)
            ids.clear()
            ats.clear()
        for mid, (total, errors, smsc, rs) in many.items():
            alike = len(rs) > 1 and mid not in left and values is not None  # the set (below)?
            if mid in air:  # a part row of total 1 too (a hand edit): counted as before
                air[mid] = _odd_air(c, mid, fresh)
                alike = False  # that row is written per row: the set would name it too
            else:
                air[mid] = (smsc, len(errors))  # each a distinct part (queued.pop)
            # Every part was still queued and is 'sent' by the UPDATE below (the dispatcher
            # hands a message's results in together, once its last part is answered).
            if len(errors) == total:
                known[mid] = [(_SEG_SENT, errors[q]) for q in sorted(errors)]
            if alike:
                at = rs[0].at or now
                for r in rs:
                    if (
                        r.smsc != smsc
                        or (r.at or now) != at
                        or (smsc_id := r.smsc_msg_id) != r.smsc_msg_id_raw
                    ):
                        break
                    ids[f"{mid}/{r.seq}"] = smsc_id
                else:  # all its parts alike: written by the set
                    ats[mid] = at
                    if (listed := by_smsc.get(smsc)) is None:
                        by_smsc[smsc] = [mid]
                    else:
                        listed.append(mid)
                    continue
            for r in rs:  # per row, as a one-part message's
                if (smsc_id := r.smsc_msg_id) == (raw := r.smsc_msg_id_raw):
                    same_raw.append((r.smsc, smsc_id, r.at or now, mid, r.seq))
                else:
                    writes.append((r.smsc, smsc_id, raw, r.at or now, mid, r.seq))
        # Each row is a distinct part (queued.pop): the statements' order changes nothing.
        if by_smsc:
            try:
                for smsc, listed in by_smsc.items():
                    at = ats[listed[0]]
                    for mid in listed:
                        if ats[mid] != at:
                            c.execute(_SUBMITTED_SET_ATS, (smsc, json_ids(listed)))
                            break
                    else:  # one time: bound, not a call a part
                        c.execute(_SUBMITTED_SET_AT, (smsc, json_ids(listed), at))
            finally:
                ids.clear()
                ats.clear()
        if same_raw:
            c.executemany(_SUBMITTED_SAME_RAW, same_raw)
        if writes:
            c.executemany(_SUBMITTED, writes)
        _apply_pending(c, fresh, now, touched, known, one_per_message, inferred)
        # Not a first part: parts go out in order, so none after it can have a receipt yet
        # (and a one-part message has nothing to infer): no read for most submits.
        later = (
            [r for r in fresh if r.smsc in one_per_message and r.seq > 1]
            if one_per_message
            else []  # no SMSC of one receipt a message: no pass over the parts
        )
        for r in later:  # their message's other parts may take a receipt's outcome: read them
            known.pop(r.message_id, None)
        _infer_on_accept(c, later, now, inferred)
    # A part's end is recorded only while no other instance holds its message (see
    # Store.record_submits), and ends the parts after it only when its own part was still queued
    # (its UPDATE matched): a late or repeated end must not end parts sent since. A message's
    # ends are taken in part order (parts go out so), whatever the batch's: one for a part an
    # earlier part's end ended records nothing (PostgreSQL's record_ends does the same).
    mine = "" if instance is None else " AND " + _NOT_THEIRS
    theirs = () if instance is None else (instance,)
    ends = [r for r in results if r.outcome != "sent"] if len(sent) < len(results) else []
    for r in sorted(ends, key=_part_order) if len(ends) > 1 else ends:
        known.pop(r.message_id, None)  # its part's update below is conditional: read it
        if r.outcome == "failed":
            if not c.execute(
                "UPDATE segments SET state='failed', smsc=?, error_code=?, done_at=?, "
                f"attempts=attempts+1 WHERE message_id=? AND seq=? AND state='queued'{mine}",
                (r.smsc, r.error_code, now, r.message_id, r.seq, *theirs),
            ).rowcount:
                continue
            # Later parts can never be shown as one message now: do not send them.
            c.execute(
                "UPDATE segments SET state='failed', error_code='PREVIOUS_PART_FAILED', done_at=? "
                "WHERE message_id=? AND seq>? AND state='queued'",
                (now, r.message_id, r.seq),
            )
            c.execute("UPDATE messages SET smsc=? WHERE id=?", (r.smsc, r.message_id))
        elif r.outcome == "expired":
            if not c.execute(
                f"UPDATE segments SET state=?, error_code={END_ERROR.format(seg='segments')}, "
                f"done_at=? WHERE message_id=? AND seq=? AND state='queued'{mine}",
                (lc.SEG_EXPIRED_UNSENT, now, r.message_id, r.seq, *theirs),
            ).rowcount:
                continue
        elif r.outcome == "unknown":
            if not c.execute(
                "UPDATE segments SET state=?, smsc=?, error_code=?, done_at=? "
                f"WHERE message_id=? AND seq=? AND state='queued'{mine}",
                (
                    lc.SEG_TIMEOUT,
                    r.smsc,
                    r.error_code or "SUBMIT_UNKNOWN",
                    now,
                    r.message_id,
                    r.seq,
                    *theirs,
                ),
            ).rowcount:
                continue
            # The parts after one whose fate is unknown are not sent: nothing is left queued.
            c.execute(
                "UPDATE segments SET state=?, error_code='PREVIOUS_PART_UNKNOWN', done_at=? "
                "WHERE message_id=? AND seq>? AND state='queued'",
                (lc.SEG_TIMEOUT, now, r.message_id, r.seq),
            )
        else:
            continue
        touched[r.message_id] = True
    if releases:
        # A released message stays in the roll-up: a part ended in this batch beside its
        # release (none left queued) would leave it queued with nothing to send, never
        # final (the dispatcher makes no such batch: tests/integration/test_result_batches.py).
        # No read more: the messages with results are read for their roll-up anyway.
        c.executemany(
            "UPDATE messages SET q_state='queued', q_claimed_by=NULL, q_lease_until=NULL, "
            "q_route=NULL, q_not_before=?1, q_attempts=q_attempts - ?2, "
            "q_unanswered=q_unanswered + ?5 "
            "WHERE id=?3 AND q_state='claimed' AND (?4 IS NULL OR q_claimed_by=?4)",
            [
                (
                    rel.not_before,
                    0 if rel.count_attempt else 1,
                    rel.message_id,
                    instance,
                    int(rel.unanswered),
                )
                for rel in releases
            ],
        )
    return rollup_messages(
        c, touched, now, intermediate=intermediate, air=air, known=known, instance=instance
    )


def _odd_air(c: sqlite3.Connection, mid: str, fresh: list[SubmitResult]) -> tuple[str, int]:
    """(SMSC, PDUs accepted now) of a message whose part rows disagree on its part count (one
    of total 1 beside longer ones: only a hand edit writes that), counted a part in order as
    record_submits counted every message before session 63: a part of total 1 starts the count
    again at 1, any other adds 1; the SMSC is the last part's. Read before the parts' UPDATE."""
    totals = dict(c.execute("SELECT seq, total FROM segments WHERE message_id=?", (mid,)))
    air: tuple[str, int] | None = None
    for r in fresh:
        if r.message_id == mid:
            one = totals.get(r.seq) == 1
            air = (r.smsc, 1 if one or air is None else air[1] + 1)
    assert air is not None  # `mid` has a fresh part
    return air


def record_late_submits(
    c: sqlite3.Connection,
    items: list[LateAccept],
    now: int,
    *,
    intermediate: bool = False,
    one_per_message: frozenset[str] = frozenset(),
    inferred: dict[str, int] | None = None,
) -> int:
    """Parts the SMSC accepted after their TIMEOUT, recorded as sent (as `record_submits` records
    an accepted part) when the part is still queued and its message is released and not claimed
    again: a resend in flight cannot be called back, so such a message is left alone. Returns
    how many parts were recorded."""
    if not items:
        return 0
    waiting: set[tuple[str, int]] = set()
    mids = sorted({i.message_id for i in items})
    for chunk in _chunks(mids):
        waiting.update(
            (m, q)
            for m, q in c.execute(
                "SELECT s.message_id, s.seq FROM segments s JOIN messages m "
                f"ON m.id = s.message_id WHERE s.message_id IN ({_marks(len(chunk))}) "
                "AND s.state='queued' AND m.q_state='queued'",
                chunk,
            )
        )
    results = []
    for i in items:
        if (i.message_id, i.seq) in waiting:
            waiting.discard((i.message_id, i.seq))  # each part once
            results.append(i.as_result(now))
    if results:
        record_submits(
            c,
            results,
            [],
            now,
            intermediate=intermediate,
            one_per_message=one_per_message,
            inferred=inferred,
        )
    return len(results)


def _apply_pending(
    c: sqlite3.Connection,
    fresh: list[SubmitResult],
    now: int,
    touched: dict[str, bool],
    known: dict[str, list[tuple[str, str | None]]],
    one_per_message: frozenset[str] = frozenset(),
    inferred: dict[str, int] | None = None,
) -> None:
    """Receipts that beat their submit_sm_resp to the store are applied now; not one kept from
    before the part left (see SubmitResult.sent_at), which stays kept."""
    if not fresh or c.execute("SELECT 1 FROM pending_receipts LIMIT 1").fetchone() is None:
        return
    by_smsc: dict[str, list[str]] = {}
    since: dict[tuple[str, str], int] = {}
    for r in fresh:
        if r.smsc_msg_id is not None:
            by_smsc.setdefault(r.smsc, []).append(r.smsc_msg_id)
            since[(r.smsc, r.smsc_msg_id)] = r.sent_at - KEPT_RECEIPT_SLACK_MS if r.sent_at else 0
    found: list[tuple[Any, ...]] = []
    for smsc, ids in by_smsc.items():
        for chunk in _chunks(ids):
            marks, args = in_list(chunk)
            found.extend(
                row
                for row in c.execute(
                    "SELECT id, smsc, smsc_msg_id, state, stat, err, done_at, received_at, raw "
                    f"FROM pending_receipts WHERE smsc=? AND smsc_msg_id IN ({marks}) "
                    "ORDER BY id",
                    (smsc, *args),
                )
                if row[7] >= since[(row[1], row[2])]
            )
    if not found:
        return
    c.executemany("DELETE FROM pending_receipts WHERE id=?", [(row[0],) for row in found])
    _apply(c, [ReceiptIn(*row[1:]) for row in found], touched, known, one_per_message, inferred)


def _infer_on_accept(
    c: sqlite3.Connection,
    fresh: list[SubmitResult],
    now: int,
    inferred: dict[str, int] | None = None,
) -> None:
    """Parts of one-per-message SMSCs taken now, whose message's receipt came before them, take
    its outcome (lifecycle.infer_on_accept); the caller's roll-up covers their messages."""
    if not fresh:
        return
    seqs: dict[str, set[int]] = {}
    via: dict[str, str] = {}
    for r in fresh:
        seqs.setdefault(r.message_id, set()).add(r.seq)
        via[r.message_id] = r.smsc
    parts = _all_parts(c, list(seqs))
    updates = [
        (state, at, error, source, mid, seq)
        for mid, fresh_seqs in seqs.items()
        for seq, state, at, error, source in lc.infer_on_accept(
            [row[:5] for row in parts.get(mid, [])], fresh_seqs, now
        )
    ]
    if updates:
        _settle_inferred(c, updates)
        if inferred is not None:
            for u in updates:
                inferred[via[u[4]]] = inferred.get(via[u[4]], 0) + 1


def _settle_inferred(c: sqlite3.Connection, updates: list[tuple[Any, ...]]) -> None:
    """Parts still 'sent' settled by another part's receipt: (state, at, error, the seq whose
    receipt it was, message id, seq)."""
    c.executemany(
        "UPDATE segments SET state=?, done_at=?, error_code=?, receipt_inferred_from=? "
        "WHERE message_id=? AND seq=? AND state='sent'",
        updates,
    )


def _all_parts(c: sqlite3.Connection, mids: list[str]) -> dict[str, list[lc.PartRow]]:
    """message id -> every part's (seq, state, error code, SMSC, receipt_inferred_from,
    submitted at, done at): lifecycle.PartRow."""
    out: dict[str, list[lc.PartRow]] = {}
    for chunk in _chunks(mids):
        marks, args = in_list(chunk)
        for mid, *row in c.execute(
            "SELECT message_id, seq, state, error_code, smsc, receipt_inferred_from, "
            f"submitted_at, done_at FROM segments WHERE message_id IN ({marks})",
            args,
        ):
            out.setdefault(mid, []).append(tuple(row))
    return out


def infer_earlier(
    c: sqlite3.Connection,
    mids: Sequence[str],
    smscs: frozenset[str],
    now: int,
    inferred: dict[str, int] | None = None,
) -> int:
    """Settle the parts of `mids` that a receipt from before their SMSC was `one_per_message`
    stands for (lifecycle.infer_earlier), and roll the messages up; returns the status reports
    queued."""
    touched: dict[str, bool] = {}
    updates = []
    for mid, parts in _all_parts(c, list(mids)).items():
        for seq, state, at, error, source in lc.infer_earlier(parts, smscs):
            updates.append((state, at, error, source, mid, seq))
            touched[mid] = False
            if inferred is not None:
                via = next(p[3] for p in parts if p[0] == source)
                assert via is not None  # the source part's SMSC: one of `smscs`
                inferred[via] = inferred.get(via, 0) + 1
    if updates:
        _settle_inferred(c, updates)
    return rollup_messages(c, touched, now)


# -- receipts ------------------------------------------------------------------------------------


def apply_receipts(
    c: sqlite3.Connection,
    receipts: list[ReceiptIn],
    now: int,
    one_per_message: frozenset[str] = frozenset(),
    inferred: dict[str, int] | None = None,
    late: dict[str, int] | None = None,
) -> tuple[int, int, int]:
    """(matched, kept pending, status webhooks queued). Unmatched receipts wait in
    pending_receipts for their id. `late` counts, by SMSC, those for parts the receipt timeout
    ended (lifecycle.count_after_timeout)."""
    touched: dict[str, bool] = {}
    known: dict[str, list[tuple[str, str | None]]] = {}
    unmatched = _apply(c, receipts, touched, known, one_per_message, inferred, late)
    if unmatched:
        c.executemany(
            "INSERT INTO pending_receipts (smsc, smsc_msg_id, state, stat, err, done_at, "
            "received_at, raw) VALUES (?,?,?,?,?,?,?,?)",
            [
                (r.smsc, r.smsc_msg_id, r.state, r.stat, r.err, r.done_at, r.received_at, r.raw)
                for r in unmatched
            ],
        )
    reports = rollup_messages(c, touched, now, known=known)
    return len(receipts) - len(unmatched), len(unmatched), reports


def _match(c: sqlite3.Connection, smsc: str, ids: Sequence[str]) -> Iterable[tuple[Any, ...]]:
    """(SMSC id, message id, seq, state, total) of the parts of `smsc` with the SMSC ids `ids`.
    The ids come from carriers: any text a C-octet string decodes to, which a JSON array
    (orjson's encoding, SQLite's json_each reading it back) carries unchanged except a NUL; a
    batch with such an id (or anything but printable ASCII, to be sure) lists its ids in the
    statement instead (in_list: a text per padded length)."""
    joined = "".join(ids)
    if joined.isascii() and joined.isprintable():
        return packed_rows(
            c,
            "s.smsc_msg_id, s.message_id, s.seq, s.state, s.total",
            "FROM json_each(?) j CROSS JOIN segments s ON s.smsc=? AND s.smsc_msg_id = j.value",
            (json_ids(ids), smsc),
        )
    marks, args = in_list(ids)
    return c.execute(
        "SELECT smsc_msg_id, message_id, seq, state, total FROM segments "
        f"WHERE smsc=? AND smsc_msg_id IN ({marks})",
        (smsc, *args),
    )


def _apply(
    c: sqlite3.Connection,
    receipts: list[ReceiptIn],
    touched: dict[str, bool],
    known: dict[str, list[tuple[str, str | None]]],
    one_per_message: frozenset[str] = frozenset(),
    inferred: dict[str, int] | None = None,
    late: dict[str, int] | None = None,
) -> list[ReceiptIn]:
    """Match receipts to parts by (SMSC, normalised id) and settle them; returns the unmatched.
    A message whose every part this read found (a one-part message; the receipts of all of a
    longer one's parts in one batch) goes into `known` as its parts now are (rollup_messages);
    one with a part settled here and others not found is taken out of it (read again).

    The id map is per SMSC: the same id from two SMSCs is two different messages.
    """
    by_smsc: dict[str, list[str]] = {}
    for r in receipts:
        by_smsc.setdefault(r.smsc, []).append(r.smsc_msg_id)
    parts: dict[tuple[str, str], list[tuple[str, int, str]]] = {}
    single: set[str] = set()  # messages of one part row
    # A longer message's id -> (its part rows, seq -> (state, error code) of each part found
    # as a receipt here settles it; None: found, not settled)
    found: dict[str, tuple[int, dict[int, tuple[str, str | None] | None]]] = {}
    timed_out = False  # a part found ended by the receipt timeout (count_after_timeout)
    for smsc, ids in by_smsc.items():
        for chunk in _chunks(sorted(set(ids))):
            for msg_id, mid, seq, state, total in _match(c, smsc, chunk):
                parts.setdefault((smsc, msg_id), []).append((mid, seq, state))
                if state == _SEG_TIMEOUT:
                    timed_out = True
                if total == 1:
                    single.add(mid)
                elif (got := found.get(mid)) is None:
                    found[mid] = (total, {seq: None})
                else:
                    got[1][seq] = None
    siblings = None
    whole = lc.whole_messages(parts, one_per_message)
    if whole:  # one receipt per message: the parts it also settles
        siblings = {
            mid: [(q, st, via, at) for q, st, _e, via, _i, at, _d in rows]
            for mid, rows in _all_parts(c, whole).items()
        }
    if late is not None and timed_out:  # it counts only receipts naming such a part: none
        lc.count_after_timeout(receipts, parts, late)  # found, a pass a receipt less
    settled, unmatched = lc.settle_receipts(
        receipts, parts, one_per_message=one_per_message, siblings=siblings
    )
    longer: dict[str, None] = {}  # the longer messages these receipts settle parts of
    for mid, seq, state, _at, error, _src in settled:  # in the order the UPDATEs apply
        touched.setdefault(mid, False)
        if mid in single:
            known[mid] = [(state, error)]
            continue
        longer[mid] = None
        got = found.get(mid)
        if got is not None:
            got[1][seq] = (state, error)  # as its UPDATE below writes it
    for mid in longer:
        got = found.get(mid)
        if got is not None and len(seqs := got[1]) == got[0]:
            # Its parts' values in seq order, by C (sorted ints, map): not a comprehension
            # (on 3.11 a function made and called a message) over the sorted (seq, value)
            # pairs (~1.5 k instructions a 3-part message less; session 60).
            now_as: list[Any] = list(map(seqs.__getitem__, sorted(seqs)))  # None: unsettled
            if None not in now_as and (siblings is None or mid not in siblings):
                known[mid] = now_as  # every part row read and written here, as now written
                continue
        # A part this read did not find or these receipts did not settle, or one settled
        # with its message's receipt (siblings, one_per_message): read them all.
        known.pop(mid, None)
    if settled:
        _settle(c, settled, single, found)
        if inferred is not None and siblings:
            lc.count_inferred(settled, siblings, inferred)
    return unmatched


# The receipts' part UPDATEs by which of (error code, receipt_inferred_from) is None: written
# as NULL, not bound (_settle).
_SETTLE_SQL = {
    (error, source): "UPDATE segments SET state=?, done_at=?, "
    + ("error_code=?" if error else "error_code=NULL")
    + (", receipt_inferred_from=?" if source else ", receipt_inferred_from=NULL")
    + " WHERE message_id=? AND seq=?"
    for error in (False, True)
    for source in (False, True)
}
_SETTLE_PLAIN = _SETTLE_SQL[False, False]  # a part's own receipt, no error code: the usual
_SETTLE_SOURCE = _SETTLE_SQL[False, True]
_SETTLE_ERROR = _SETTLE_SQL[True, False]
_SETTLE_BOTH = _SETTLE_SQL[True, True]


# The receipts' part UPDATEs of rows taking equal values, listed by their message ids (a JSON
# array): of every part of those messages (None), or of their part `seq` (True).
_SETTLE_SAME = {
    (error, source, by_seq): _SETTLE_SQL[error, source].replace(
        " WHERE message_id=? AND seq=?",
        (" WHERE seq=? AND" if by_seq else " WHERE")
        + " message_id IN (SELECT value FROM json_each(?))",
    )
    for error in (False, True)
    for source in (False, True)
    for by_seq in (False, True)
}

_DONE_AT = itemgetter(3)  # a settle_receipts update's done time
_PART_KEY = itemgetter(0, 1)  # a settle_receipts update's part (message id, seq)

# The fewest part rows of equal values written by one statement listing their messages
# (_settle_same): below it, per row by executemany is cheaper. Counted under callgrind (one-part
# rows, a batch in a savepoint): such a statement costs ~46 k instructions more than an
# executemany's, and each row in it ~12 k less (13.4 k against 25.8 k).
_SAME_MIN = 4


def _settle(
    c: sqlite3.Connection,
    settled: list[tuple[Any, ...]],
    single: Collection[str] = (),
    found: Mapping[str, tuple[int, Any]] | None = None,
) -> None:
    """settle_receipts' part updates (message id, seq, state, done at, error code, the seq
    whose receipt it was), applied in their order, with their None values as NULL in the
    statement's text, not bound: the sqlite3 module adapts every bound None (~1.2 k
    instructions), and a delivered part's receipt has two (no error code, its own receipt).
    Consecutive updates of one shape go in one executemany; each row is built once, in its
    shape (session 55: not a shape tuple and a row grown by parts, ~0.6 k instructions a part).

    Rows that take equal values (a batch's receipts of one millisecond: the done
    time is the receipt's arrival) are written first by one statement listing their messages
    when there are _SAME_MIN or more of them (_settle_same); `single` and `found` (_apply's)
    tell a message's part count."""
    if len(settled) >= _SAME_MIN and found is not None:
        settled = _settle_same(c, settled, single, found)
    runs: list[tuple[str, list[tuple[Any, ...]]]] = []
    last = None
    rows: list[tuple[Any, ...]] = []
    row: tuple[Any, ...]
    for mid, seq, state, at, error, source in settled:
        if error is None:
            if source is None:
                sql, row = _SETTLE_PLAIN, (state, at, mid, seq)
            else:
                sql, row = _SETTLE_SOURCE, (state, at, source, mid, seq)
        elif source is None:
            sql, row = _SETTLE_ERROR, (state, at, error, mid, seq)
        else:
            sql, row = _SETTLE_BOTH, (state, at, error, source, mid, seq)
        if sql is not last:
            last, rows = sql, []
            runs.append((sql, rows))
        rows.append(row)
    for sql, rows in runs:
        c.executemany(sql, rows)


def _settle_same(
    c: sqlite3.Connection,
    settled: list[tuple[Any, ...]],
    single: Collection[str],
    found: Mapping[str, tuple[int, Any]],
) -> list[tuple[Any, ...]]:
    """Write the updates of `settled` that take equal values, _SAME_MIN rows or more, by one
    statement each listing their messages (`message_id IN (SELECT value FROM json_each(?))`,
    as the roll-up writes its rows of equal values): a message whose every part (its part
    count: `single`, one; `found`, a longer one's) takes the same values is listed once for
    all of them, its parts found by one seek; otherwise its parts are listed by seq. Returns
    the updates left for the per-row path (each a distinct row: in any order). An executemany
    row is a step, a reset, its values bound and the GIL handed over: counted alone (50
    messages a batch, in a savepoint), a one-part row 25.8 k -> 13.4 k instructions, a 3-part
    message's row 24.0 k -> 9.1 k. Each row is distinct, so their order changes nothing; a
    batch that updates a part twice (the later update wins) is left to the per-row path whole.
    """
    # Rows of equal values share their done time: without _SAME_MIN of one time (a batch of
    # receipts each of its own millisecond) nothing groups, and the pass below would cost
    # ~8 k instructions a row for nothing (a copy of bench_owner.py giving each receipt its
    # own time counted 3-part 572 k without it, 598 k with it): counted in C first.
    if max(Counter(map(_DONE_AT, settled)).values()) < _SAME_MIN:
        return settled
    if len(set(map(_PART_KEY, settled))) != len(settled):
        return settled  # a part updated twice: in order, per row
    # (state, done at, error code, source[, seq]) -> the message ids, the updates: with a
    # seq, that part of each; without, every part
    groups: dict[tuple[Any, ...], tuple[list[str], list[tuple[Any, ...]]]] = {}
    longer: dict[str, list[tuple[Any, ...]]] = {}
    for u in settled:
        mid = u[0]
        if mid in single:
            key = u[2:]
        else:
            if (us := longer.get(mid)) is None:
                longer[mid] = [u]
            else:
                us.append(u)
            continue
        if (g := groups.get(key)) is None:
            groups[key] = ([mid], [u])
        else:
            g[0].append(mid)
            g[1].append(u)
    for mid, us in longer.items():
        values = us[0][2:]
        got = found.get(mid)
        whole = got is not None and got[0] == len(us)
        if whole:
            for u in us:
                if u[2:] != values:
                    whole = False
                    break
        if whole:
            if (g := groups.get(values)) is None:
                groups[values] = ([mid], us)
            else:
                g[0].append(mid)
                g[1].extend(us)
            continue
        for u in us:
            key = (u[2], u[3], u[4], u[5], u[1])
            if (g := groups.get(key)) is None:
                groups[key] = ([mid], [u])
            else:
                g[0].append(mid)
                g[1].append(u)
    left: list[tuple[Any, ...]] = []
    for key, (mids, us) in groups.items():
        if len(us) < _SAME_MIN:
            left.extend(us)
            continue
        state, at, error, source, *seq = key
        args: tuple[Any, ...] = (state, at)
        if error is not None:
            args += (error,)
        if source is not None:
            args += (source,)
        c.execute(
            _SETTLE_SAME[error is not None, source is not None, bool(seq)],
            (*args, *seq, json_ids(mids)),
        )
    return left
