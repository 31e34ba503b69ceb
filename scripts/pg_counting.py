"""What the PostgreSQL benchmarks count (`bench_pg_owner.py`, `bench_pg_accept.py`): the
statements, round trips and rows at asyncpg's Connection, and the cluster's CPU off /proc. A
module of its own: both scripts parse their options and set `sys.path` (`--tree`) when imported."""

from __future__ import annotations

import collections
import os
from pathlib import Path
from typing import Any

TICK = os.sysconf("SC_CLK_TCK")


class Counted:
    """Statements, round trips and rows returned, counted at asyncpg's Connection (the pool's
    connections forward to it)."""

    def __init__(self, *, kinds: bool = False) -> None:
        """`kinds`: also the round trips and the statements by kind (their text's start); off,
        each call costs only what `bench_pg_owner.py` counted before session 56."""
        import asyncpg

        self.statements = 0
        self.trips = 0
        self.rows = 0
        self.kinds: collections.Counter[str] = collections.Counter()  # by the text's start
        # A text's kind, worked out once a text (session 57): splitting and joining every
        # statement's whole text at every round trip was ~0.5 M instructions of a counted
        # PostgreSQL accept's ~2.2 M (`bench_pg_accept.py --callgrind`), the bench's own work
        # counted as the daemon's. A dict lookup hashes the text once a new str.
        kind_of: dict[str, str] = {}
        conn = asyncpg.connection.Connection
        for name in ("fetch", "fetchrow", "fetchval", "execute", "executemany"):
            real = getattr(conn, name)

            async def counted(
                c: Any, query: str, *args: Any, _real: Any = real, _name: str = name, **kw: Any
            ) -> Any:
                if kinds:
                    self.trips += 1
                    kind = kind_of.get(query)
                    if kind is None:
                        kind = kind_of[query] = " ".join(query.split())[:60]
                    self.kinds[kind] += 1
                if not query.startswith(("BEGIN", "COMMIT", "ROLLBACK")):
                    self.statements += 1
                out = await _real(c, query, *args, **kw)
                if _name == "fetch":
                    self.rows += len(out)
                elif _name in ("fetchrow", "fetchval") and out is not None:
                    self.rows += 1
                return out

            setattr(conn, name, counted)


def server_cpu(postmaster: int) -> float:
    """CPU seconds of a PostgreSQL cluster: its postmaster and every process under it
    (backends come and go with a pool: a run that keeps its pool open counts the same ones)."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            raw = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        if int(entry) == postmaster or int(fields[1]) == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / TICK
