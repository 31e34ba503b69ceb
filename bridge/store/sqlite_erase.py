"""An erasure's masking of the account's stored idempotent answers, in chunks (SQLite).

Why: erasing a number masks it in the answers kept for the account's idempotency keys (for
`server.idempotency_hours`, so a retry is answered byte for byte). Two UPDATEs read every
record of the account for it, ~1.2 µs each inside the store's write lock, while every writer
of every process waited: an account sending 100 requests a second with keys keeps 8.6 million,
~10 s of stalled accepts and receipts per erasure, and erasures are routine (GDPR requests).

Now the erasure's transaction records the masking (`start`, table `pending_erasures`) with
`hi`, the highest record id then: records written after it are new data (a send to the number
after its erasure is the customer's new message), left alone. The masking then goes CHUNK
records per write transaction in the order of the account's keys (its (account_id, key)
index: the account's records only; walked by id, an erasure read every account's, ~10,000
transactions for a table of 50 million), other writers' batches in between, and the erasure
answers once it is done. Meanwhile
a read of a record not masked yet answers it as the chunk will leave it (`answer`, with
bridge.domain.erasure). A record taken over in place before its chunk (an expired key reused)
is masked by the chunk too: more privacy, not less. A process that stops part-way leaves the
row: the sweep finishes it once nobody has worked it for RESUME_AFTER_MS.

An account's close deletes its stored answers the same way (`start_drop`, a row without a
number): in the close's one transaction, 1,000,000 of them held every writer 2.8-4.0 s.

PostgreSQL keeps an erasure's masking in one transaction: there it holds the rows it writes, not
every writer; a close's deletion goes in pages there too (postgres_ends.drop_answers_page).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from bridge.domain.erasure import masked_answer
from bridge.store.base import clock_from
from bridge.store.sqlite_chunked import MARK, Runner, Step, stale, work_out

# The account's records per transaction: ~4-5 µs each in its key order (the row read by id
# from the index, at random), so ~10 ms of the write lock (5,000: 21-25 ms, measured).
CHUNK = 2_000
# A closed account's records deleted per transaction: ~3 µs each (the row and two indexes), so
# ~6 ms; in the close's one transaction 1,000,000 held every writer 2.8-4.0 s.
DROP_CHUNK = 2_000

# client_ref first, while "to" still names the number (it links the message to the person, as
# the message row's does, which the erasure clears); then the number, as a whole JSON string
# only (a bare replace also rewrote longer numbers starting with it). Over a range of the
# account's keys (its index), the records up to the erasure's highest id. Only a `messages`
# array of objects (arrays and nulls are kept as they are) has its entries rewritten: json() of a
# string entry's value failed the statement (a masking that never finished), and of a boolean's
# turned `true` into 1; the number is still masked in such an answer. (Keeping the scalars as
# written takes SQLite's `->`, 3.38 or later: RHEL 9's 3.34 and Ubuntu 22.04's 3.37 lack it.)
# The CASE: SQLite may test a WHERE's terms in any order, and json_each of text that is not JSON
# raises.
# The first chunk has no lower bound: no value sorts before every TEXT key (-1 compared as the
# text '-1', and a key such as '#42' sorts before it: never masked, and read unmasked after the
# first chunk). Two statements, not `(:lo IS NULL OR key>:lo)`: SQLite then seeks only the
# upper bound and reads the account's keys from its first at every chunk.
_RANGES = (
    "account_id=:account AND key<=:top AND id<=:hi",
    "account_id=:account AND key>:lo AND key<=:top AND id<=:hi",
)
_REFS = tuple(
    "UPDATE idempotency SET response=CAST(json_set(CAST(response AS TEXT), '$.messages', "
    "(SELECT json_group_array(CASE WHEN json_extract(e.value, '$.to')=:number "
    "THEN json_set(e.value, '$.client_ref', NULL) ELSE json(e.value) END) "
    "FROM json_each(CAST(response AS TEXT), '$.messages') e)) AS BLOB) "
    f"WHERE {where} AND instr(CAST(response AS TEXT), :q)>0 "
    "AND CASE WHEN NOT json_valid(CAST(response AS TEXT)) THEN 0 "
    "WHEN json_type(CAST(response AS TEXT), '$.messages') IS NOT 'array' THEN 0 "
    "ELSE NOT EXISTS (SELECT 1 FROM json_each(CAST(response AS TEXT), '$.messages') x "
    "WHERE x.type NOT IN ('object', 'array', 'null')) END"
    for where in _RANGES
)
_NUMBER = tuple(
    "UPDATE idempotency SET response=CAST(replace(CAST(response AS TEXT), :q, :mq) AS BLOB) "
    f"WHERE {where} AND instr(CAST(response AS TEXT), :q)>0"
    for where in _RANGES
)


def mask_range(
    c: sqlite3.Connection,
    account_id: str,
    number: str,
    masked: str,
    lo: str | None,
    top: str,
    hi: int,
) -> None:
    """Mask `number` in the account's stored answers with lo < key <= top (lo None: from the
    first) and id <= hi."""
    args = {"top": top, "hi": hi, "account": account_id, "number": number}
    if lo is not None:
        args["lo"] = lo
    c.execute(_REFS[lo is not None], {**args, "q": f'"{number}"'})
    c.execute(_NUMBER[lo is not None], {**args, "q": f'"{number}"', "mq": f'"{masked}"'})


def start(c: sqlite3.Connection, account_id: str, number: str, masked: str, now: int) -> int | None:
    """In the erasure's transaction: record the masking of the account's stored answers (when
    it has any); its id, for `finish`."""
    if c.execute("SELECT 1 FROM idempotency WHERE account_id=? LIMIT 1", (account_id,)).fetchone():
        (hi,) = c.execute("SELECT MAX(id) FROM idempotency").fetchone()
        cur = c.execute(
            "INSERT INTO pending_erasures (account_id, number, masked, hi, after_key, worked_at) "
            "VALUES (?,?,?,?,NULL,?)",
            (account_id, number, masked, hi, now),
        )
        erasure_id = int(cur.lastrowid or 0)
        c.execute(_HOLD_ID, (_hold_key(erasure_id),))
        return erasure_id
    return None


# Why a placeholder record: `idempotency.id` has no AUTOINCREMENT (adding it rebuilds the table),
# so SQLite gives a new record MAX(id)+1, and once the record holding `hi` was deleted (a request
# that failed gives its placeholder back; a close drops its records) the next one reused an id
# <= hi: a send to the number after its erasure, new data, was masked as if it were old, and a
# retry of it answered with another body than its first. This record takes id hi+1 for as long
# as the masking runs, so every record written meanwhile gets a higher one. Its account id is
# empty, which no account has (accounts._NAME), and it never expires (the purge leaves it).
_HOLD_ID = (
    "INSERT INTO idempotency (account_id, key, request_hash, status_code, response, expires_at) "
    "VALUES ('', ?, '', 0, x'', 9223372036854775807)"
)


def _hold_key(erasure_id: int) -> str:
    return f"erasure {erasure_id}"


def start_drop(c: sqlite3.Connection, account_id: str, now: int) -> int | None:
    """In a close's transaction: record the deletion of the account's stored answers (when it
    has any), done DROP_CHUNK per transaction after it; its id, for `finish`. Nothing reads
    them meanwhile: the close revoked the account's keys."""
    if c.execute("SELECT 1 FROM idempotency WHERE account_id=? LIMIT 1", (account_id,)).fetchone():
        cur = c.execute(
            "INSERT INTO pending_erasures (account_id, number, masked, hi, after_key, worked_at) "
            "VALUES (?, NULL, NULL, 0, NULL, ?)",
            (account_id, now),
        )
        return int(cur.lastrowid or 0)
    return None


def answer(
    c: sqlite3.Connection, account_id: str, record_id: int, key: str, response: bytes
) -> bytes:
    """A stored answer read while maskings of the account may be under way, as they will leave
    it. One probe of `pending_erasures` (empty but for maskings under way)."""
    for number, masked in c.execute(
        "SELECT number, masked FROM pending_erasures WHERE account_id=?1 AND hi>=?2 "
        "AND (after_key IS NULL OR after_key<?3) AND number IS NOT NULL ORDER BY id",
        (account_id, record_id, key),
    ).fetchall():
        response = masked_answer(response, number, masked)
    return response


def _step(c: sqlite3.Connection, erasure_id: int, now: int, last: int | None) -> bool:
    """The next chunk of the masking `erasure_id`: whether any is left (its row deleted at the
    end). `now` marks it worked; `last`: as sqlite_ends._step's."""
    row = c.execute(
        "SELECT account_id, number, masked, hi, after_key FROM pending_erasures WHERE id=?",
        (erasure_id,),
    ).fetchone()
    if row is None:
        return False
    account_id, number, masked, hi, after = row
    if number is None:  # a close's: by the account's index, whose first rows are the next
        gone = c.execute(
            "DELETE FROM idempotency WHERE id IN "
            "(SELECT id FROM idempotency WHERE account_id=? LIMIT ?)",
            (account_id, DROP_CHUNK),
        ).rowcount
        if gone < DROP_CHUNK:
            c.execute("DELETE FROM pending_erasures WHERE id=?", (erasure_id,))
            return False
        c.execute(
            f"UPDATE pending_erasures SET worked_at={MARK} WHERE id=:id",
            {"at": now, "last": last, "id": erasure_id},
        )
        return True
    since = "" if after is None else " AND key>?"
    keys = c.execute(
        f"SELECT key FROM idempotency WHERE account_id=?{since} ORDER BY key LIMIT ?",
        (account_id, *(() if after is None else (after,)), CHUNK),
    ).fetchall()
    if keys:
        mask_range(c, account_id, number, masked, after, keys[-1][0], hi)
    if len(keys) < CHUNK:
        c.execute("DELETE FROM pending_erasures WHERE id=?", (erasure_id,))
        c.execute("DELETE FROM idempotency WHERE account_id='' AND key=?", (_hold_key(erasure_id),))
        return False
    c.execute(
        f"UPDATE pending_erasures SET after_key=:key, worked_at={MARK} WHERE id=:id",
        {"key": keys[-1][0], "at": now, "last": last, "id": erasure_id},
    )
    return True


async def finish(write: Runner, ids: Sequence[int], now: int, marked_at: int | None = None) -> None:
    """Run the maskings `ids` to their end, a chunk per write transaction; `now` and
    `marked_at` as sqlite_ends.finish's."""
    clock = clock_from(now)
    for erasure_id in ids:
        await work_out(write, _steps(erasure_id), clock, marked_at)


def _steps(erasure_id: int) -> Step:
    """work_out's step for the masking `erasure_id`."""
    return lambda c, at, last: 0 if _step(c, erasure_id, at, last) else None


async def resume(read: Runner, write: Runner, now: int) -> None:
    """The sweep's part: finish the maskings nobody has worked for RESUME_AFTER_MS (their
    process stopped)."""
    await finish(write, await read(lambda c: stale(c, now, "erasures")), now)
