"""Operations under way in chunks of their own write transactions (SQLite): what they share.

Why a module of its own: an account's ends (sqlite_ends), a senders walk (sqlite_senders) and an
erasure's masking (sqlite_erase) each go a chunk per transaction, marked so the sweep resumes one
whose process stopped and a step of the clock moves the marks (sqlite_clock). Kept in
sqlite_ends, this plumbing closed an import cycle (sqlite_ends -> sqlite_pipeline -> sqlite_rules
-> sqlite_erase -> sqlite_ends) whenever sqlite_ends was the first of them imported.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable, Collection
from typing import Any

from bridge.store.base import CHUNKED_KINDS, RESUME_AFTER_MS, job_of

Runner = Callable[[Callable[[sqlite3.Connection], Any]], Awaitable[Any]]
# One chunk of an operation: step(c, at, last) (work_out), None once nothing is left.
Step = Callable[[sqlite3.Connection, int, int | None], int | None]


# The mark a worker gives its end (or walk: sqlite_senders) at a chunk: `:at`, unless the mark
# is below `:last`, the one this worker made before: a step back of the clock moved it
# (sqlite_clock), and the worker, counting on from the clock of its start, follows it.
MARK = (
    "CASE WHEN :last IS NOT NULL AND worked_at < :last THEN worked_at + (:at - :last) ELSE :at END"
)


# The tables of the operations under way in chunks, by kind: each row has a `worked_at` mark
# (MARK), moved by a step back of the clock (sqlite_clock) and counted on /metrics.
CHUNKED = dict(zip(CHUNKED_KINDS, ("pending_ends", "sender_walk", "pending_erasures"), strict=True))


async def work_out(
    write: Runner,
    step: Step,
    clock: Callable[[], int],
    marked_at: int | None = None,
) -> int:
    """Run `step(c, at, last)`, a write transaction each, until it returns None; the sum of
    what it returned before. `at` is the clock's time; `last`, the mark of the step before
    (`marked_at` at first: the mark the caller's own transaction gave; None for one others
    marked), which a step back of the clock may have moved (MARK)."""
    total = 0
    last = marked_at
    while True:
        at = clock()
        n = await write(job_of(step, at, last))
        if n is None:
            return total
        total += n
        last = at


def stale(
    c: sqlite3.Connection, now: int, kind: str = "ends", scopes: Collection[str] = ()
) -> list[int]:
    """The operations of `kind` (CHUNKED) nobody has advanced for RESUME_AFTER_MS: their
    process stopped. `scopes`: only ends of those scopes (the ones this release knows: a row
    a newer release wrote, met after a downgrade, is left to it, instead of failing the sweep's
    step and every end listed after it)."""
    known = f" AND scope IN ({','.join('?' * len(scopes))})" if scopes else ""
    return [
        r[0]
        for r in c.execute(
            f"SELECT id FROM {CHUNKED[kind]} WHERE worked_at <= ?{known} ORDER BY id",
            (now - RESUME_AFTER_MS, *scopes),
        )
    ]
