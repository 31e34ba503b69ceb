"""The accept's in-lock CPU when a daemon's sends vary their optional fields (session 53 review).

Since session 53 the accept writes a None into its statements' text as NULL (sqlite_binds): a
message row's text per pattern of absent fields (client_ref, sender, sign, template, schedule,
validity, wire ...) and a key-and-facts text per pattern of absent rule values. The sqlite3
module keeps a connection's last `cached_statements` prepared statements (128 by default); a mix
with more texts than that prepares its statements again, inside the write lock. This runs the
same varied mix of keyed one-recipient accepts on a real SQLite file with the connection's
cache at 128 and at `sqlite_runner.CACHED_STATEMENTS`, alternating, and prints the write lock's
CPU per accept and the ratio.

    python scripts/bench_accept_texts.py [--accepts 3000] [--pairs 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sqlite3
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bridge.domain.ledger import topup
from bridge.store import sqlite_runner
from tests.integration import test_sqlite_accept_held_differential as mix


def _variants() -> list[dict[str, Any]]:
    out = []
    for cref, sender, form, sched, exp, wire, price in itertools.product(
        (None, "r"),
        (None, "1065"),
        ("raw", "template", "nosign"),
        (None, mix.NOW + 1),
        (None, mix.NOW + mix.DAY),
        (None, 3),
        (None, "D"),
    ):
        out.append(
            dict(
                client_ref=cref,
                sender=sender,
                scheduled_at=sched,
                expires_at=exp,
                wire=wire,
                price_class=price,
            )
            | (
                {"sign_name": None}
                if form == "nosign"
                else {"template": "T1", "kind": "notification"}
                if form == "template"
                else {}
            )
        )
    return out


_TEXTS = [0]


async def _run(cache: int, accepts: int) -> float:
    real = sqlite3.connect

    texts: set[str] = set()

    class _Counts:
        """A connection's or a cursor's execute and executemany, each text noted."""

        def execute(self, sql: str, *a: Any) -> Any:
            texts.add(sql)
            return super().execute(sql, *a)  # type: ignore[misc]

        def executemany(self, sql: str, *a: Any) -> Any:
            texts.add(sql)
            return super().executemany(sql, *a)  # type: ignore[misc]

    class _Cursor(_Counts, sqlite3.Cursor):
        pass

    class Counting(_Counts, sqlite3.Connection):
        def cursor(self, *a: Any, **kw: Any) -> Any:
            return _Cursor(self)

    def connect(*a: Any, **kw: Any) -> sqlite3.Connection:
        kw["cached_statements"] = cache
        kw.setdefault("factory", Counting)
        return real(*a, **kw)

    sqlite3.connect = connect  # type: ignore[assignment]
    try:
        with tempfile.TemporaryDirectory() as d:
            s = await mix._store(Path(d) / "b.db")
            await s.append_ledger("acc_a", topup(10**15, mix.NOW, "more"))
            await s._runner.write(lambda c: c.execute("UPDATE accounts SET daily_quota=0"))
            variants = _variants()
            r = s._runner
            cpu0 = r.lock_cpu_s
            texts.clear()
            for i in range(accepts):
                b = mix._accept("acc_a", amount=1)
                v = variants[i % len(variants)]
                sign = "unknown" if v.get("sign_name", "") is None else "Acme"
                b = replace(
                    b,
                    messages=(replace(b.messages[0], **v),),
                    rules=replace(b.rules, sign_name=None)
                    if sign == "unknown" and b.rules is not None
                    else b.rules,
                )
                out = await s.accept(b, mix.NOW)
                assert out.accepted, out
            cpu = r.lock_cpu_s - cpu0
            _TEXTS[0] = len(texts)
            await s.close()
            return cpu / accepts * 1e6
    finally:
        sqlite3.connect = real


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--accepts", type=int, default=3000)
    ap.add_argument("--pairs", type=int, default=3)
    a = ap.parse_args()
    new = sqlite_runner.CACHED_STATEMENTS
    for _ in range(a.pairs):
        old_us = asyncio.run(_run(128, a.accepts))
        new_us = asyncio.run(_run(new, a.accepts))
        print(
            f"in-lock CPU per accept: cache 128 {old_us:.1f} us, cache {new} {new_us:.1f} us, "
            f"ratio {new_us / old_us:.3f} ({_TEXTS[0]} statement texts run)",
            flush=True,
        )


if __name__ == "__main__":
    main()
