"""The accepts' message, segment and ledger rows of one write batch, written at its end by
multi-row INSERTs (session 63).

Why: inside the write lock each statement the sqlite3 module runs costs ~6-7 k instructions of its
own, whatever it writes (its statement cache, the step entered and left with the GIL handed
over, the program's start, its cursors opened and closed on the table and each index, the
reset), and an accept's usual send ran three INSERTs (its message, its segment, its cash
charge) of which only the b-tree work is the row's. `executemany` saves little (it binds, steps
and resets each row as `execute` does: session 54's (c)); one `INSERT ... VALUES (...), (...)`
of many rows is one step of one program, its cursors opened once. So a bare accept (the runner's
`deferring`) holds those rows in the runner's `held` under `PENDING`, beside the batch's held
sums, and they are written, in the order the accepts made them, before any job that is not an
accept, before the COMMIT, and before an accept whose frequency history reads a number one of
them was sent to (`flush`). A failure writing them fails no one yet: the runner rolls the batch
back and runs it again with a savepoint a job, where each accept writes its own rows at once,
so the failure is its own caller's (`SqliteRunner._write_held`). Only in a batch of eight jobs or
more (`SqliteRunner.defer_min_jobs`): below that the holding's Python costs more than the
statements it saves.

The rows of one run share one statement text (the same table and the same pattern of NULLs
written in it, `sqlite_binds`), and are written in chunks of 32, 16, 8, 4, 2 and 1 rows: a text
per chunk size, a few per pattern for the statement cache (not one per batch size), and at most
32 rows of a message's 20 values bound in one statement (640, under the 999 variables of SQLite
before 3.32).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from itertools import chain, groupby
from operator import itemgetter
from typing import Any

from bridge.store import sqlite_rules


class _Pending:
    """The key of the runner's `held` under which a batch's rows wait: no account id equals
    it (those are str), so the held sums' code never meets it as an account."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "PENDING"


PENDING: Any = _Pending()

# The largest chunk of one statement (see the module's doc).
MAX_ROWS = 32


class PendingRows:
    """One batch's held rows: an entry per accept, as its job made them (the grouping into
    runs of one text is done once, at the batch's end, by C iterators: a Python call per table
    and accept cost ~5 k instructions more in the lock than it saved)."""

    __slots__ = ("accepts", "idem", "nonces", "numbers")

    def __init__(self) -> None:
        # (messages' text, their rows, segments' text, their rows, the ledger rows' statement
        # and values pairs or None), in the order the accepts ran.
        self.accepts: list[tuple[Any, ...]] = []
        # The recipients of the held messages: an accept whose frequency history reads one of
        # these numbers has the rows written first (`flush`), so its read finds them.
        self.numbers: set[str] = set()
        # The accepts' nonces and idempotency records (session 64), by their keys ((key id,
        # nonce), (account id, Idempotency-Key)): a later accept of the batch with one of these
        # keys has the held rows written first, so its conflict is found in the store as one by
        # one. Their rows in the order held (the idempotency table's ids are the accepts').
        self.nonces: dict[tuple[str, str], tuple[Any, ...]] = {}
        self.idem: dict[tuple[str, str], tuple[Any, ...]] = {}


def hold_rows(
    held: dict[Any, Any],
    messages_sql: str,
    message_rows: Sequence[Sequence[Any]],
    segments_sql: str,
    segment_rows: Sequence[Sequence[Any]],
    ledger: Sequence[tuple[str, Sequence[Any]]] | None,
    recipients: Iterable[str],
) -> None:
    """An accept's rows, held for its batch's end: its messages, their segments, and its
    ledger rows (`ledger`: the statement and values of each, in order, or None). (The accept's
    job does the same inline: this is its reference, for tests and the other callers.)"""
    pending = held.get(PENDING)
    if pending is None:
        pending = held[PENDING] = PendingRows()
    pending.accepts.append((messages_sql, message_rows, segments_sql, segment_rows, ledger))
    pending.numbers.update(recipients)


def flush(c: sqlite3.Connection, held: dict[Any, Any]) -> None:
    """The rows held so far written now (the held sums stay held)."""
    pending = held.pop(PENDING, None)
    if pending is not None:
        write_rows(c, pending)


def write_held(c: sqlite3.Connection, held: dict[Any, Any]) -> None:
    """The runner's `write_held`: the held rows, then the held sums (`sqlite_rules.write_held`:
    neither reads the other's tables)."""
    pending = held.pop(PENDING, None)
    if pending is not None:
        write_rows(c, pending)
    sqlite_rules.write_held(c, held)


_TEXT, _ROWS = itemgetter(0), itemgetter(1)
_MESSAGES, _SEGMENTS = itemgetter(0, 1), itemgetter(2, 3)
_LEDGER = itemgetter(4)


def runs(
    entries: Iterable[tuple[str, Sequence[Sequence[Any]]]],
) -> list[tuple[str, list[Any], int]]:
    """(text, rows) entries, in order, as runs of one text: (the text, the rows' values one
    after the other, how many rows); entries of no rows left out."""
    out = []
    for text, group in groupby(entries, _TEXT):
        rows = list(chain.from_iterable(map(_ROWS, group)))
        if rows:
            out.append((text, list(chain.from_iterable(rows)), len(rows)))
    return out


def write_rows(c: sqlite3.Connection, pending: PendingRows) -> None:
    """Each table's rows in the order they were held, a run of one text at a time, each run in
    chunks of MAX_ROWS and then of the powers of two below it, largest first."""
    accepts = pending.accepts
    ledger = [
        (text, (values,))
        for rows in map(_LEDGER, accepts)
        if rows is not None
        for text, values in rows
    ]
    cur = c.cursor()  # one for the batch's statements (`Connection.execute` makes one each)
    nonces, idem = pending.nonces, pending.idem
    for text, flat, n in (
        *runs(map(_MESSAGES, accepts)),
        *runs(map(_SEGMENTS, accepts)),
        *runs(ledger),
        *(
            ((NONCE_ROW, list(chain.from_iterable(nonces.values())), len(nonces)),)
            if nonces
            else ()
        ),
        *(((IDEM_ROW, list(chain.from_iterable(idem.values())), len(idem)),) if idem else ()),
    ):
        if n <= MAX_ROWS and n & (n - 1) == 0:  # one chunk: the list as it is
            cur.execute(multi_row(text, n), flat)
            continue
        width = len(flat) // n
        at = 0
        while n:
            k = MAX_ROWS if n >= MAX_ROWS else 1 << (n.bit_length() - 1)
            cur.execute(multi_row(text, k), flat[at : at + k * width])
            at += k * width
            n -= k


# A nonce's and an idempotency record's row (`sqlite._NONCE_NEW`, `_IDEM_NEW` without their
# ON CONFLICT: a held row conflicts with none, `PendingRows`).
NONCE_ROW = "INSERT INTO nonces (key_id, nonce, expires_at) VALUES (?,?,?)"
IDEM_ROW = (
    "INSERT INTO idempotency (account_id, key, request_hash, status_code, response, expires_at) "
    "VALUES (?,?,?,?,?,?)"
)

_MULTI: dict[tuple[str, int], str] = {}


def multi_row(text: str, k: int) -> str:
    """`text` (an `INSERT ... VALUES (...)` of one row, nothing after its row) for `k` rows: the
    row's parenthesised values repeated; `text` itself for one. Kept per (text, k), at most
    512."""
    if k == 1:
        return text
    got = _MULTI.get((text, k))
    if got is None:
        at = text.rindex(" VALUES (")
        row = text[at + 8 :]
        if not row.endswith(")") or row.count("(") != 1 or row.count(")") != 1:
            raise ValueError(f"not a one-row INSERT ... VALUES (...): {text}")
        if not text.startswith("INSERT INTO "):
            raise ValueError(f"not a plain INSERT: {text}")
        # OR FAIL: a statement of many rows that may fail after some of them is otherwise given
        # a statement journal, each page it changes copied first (~1.5 k instructions a row
        # here); its rows written before a failure stay, but every failure of these writes
        # rolls the whole batch back (`SqliteRunner._write_held`, a bare job's fault).
        got = "INSERT OR FAIL INTO " + text[12 : at + 8] + ",".join([row] * k)
        if len(_MULTI) >= 512:
            _MULTI.clear()
        _MULTI[(text, k)] = got
    return got
