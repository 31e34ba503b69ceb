"""The two trees' children of a seeded differential script side by side, their lines compared
(`store_differential.py`, `accept_differential.py`). Each child is the script itself run with
`--child TREE`; it prints one JSON line a seed, `[seed, [step, ...]]`: a seed whose line differs
between the trees is a differing scenario."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import sys
import tempfile
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from children import Children


def _same(value: Any) -> Any:
    return value


def dump(path: Path, mask: Callable[[Any], Any] = _same) -> str:
    """Every table's rows, all columns, sorted (row_version, a random stamp, left out; each
    value through `mask`)."""
    c = sqlite3.connect(path)
    try:
        out = []
        for (name,) in c.execute(
            "SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"
        ).fetchall():
            if name == "schema_version":  # the trees' migrations, not what they wrote
                continue
            # sqlite_sequence less the ledger's row: the ledger has no AUTOINCREMENT since
            # migration 0038 (the same ids), the trees before it keep a row there.
            cur = c.execute(
                f'SELECT * FROM "{name}"'
                + (" WHERE name <> 'ledger'" if name == "sqlite_sequence" else "")
            )
            cols = [d[0] for d in cur.description]
            keep = [i for i, col in enumerate(cols) if col != "row_version"]
            rows = sorted(repr(tuple(mask(r[i]) for i in keep)) for r in cur.fetchall())
            out.append(f"{name} {cols}\n" + "\n".join(rows))
        return "\n".join(out)
    finally:
        c.close()


async def pg_dump(dsn: str, mask: Callable[[Any], Any] = _same) -> str:
    """dump's PostgreSQL twin: every table of the public schema, all columns but row_version,
    rows sorted by their repr, each value through `mask`."""
    import asyncpg

    c = await asyncpg.connect(dsn)
    try:
        out = []
        names = await c.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        )
        for (name,) in names:
            if name in ("schema_migrations", "schema_version"):  # the trees' migrations
                continue
            stmt = await c.prepare(f'SELECT * FROM "{name}"')
            cols = [a.name for a in stmt.get_attributes()]
            keep = [i for i, col in enumerate(cols) if col != "row_version"]
            rows = sorted(repr(tuple(mask(r[i]) for i in keep)) for r in await stmt.fetch())
            out.append(f"{name} {cols}\n" + "\n".join(rows))
        return "\n".join(out)
    finally:
        await c.close()


def run_seeds(
    first: int,
    seeds: int,
    admin_dsn: str | None,
    scenario: Callable[[int, Path, str | None], Coroutine[Any, Any, list[str]]],
    prefix: str,
) -> None:
    """A child's work: one line per seed, its number and the hashes of its dumps. With
    `admin_dsn` (PostgreSQL) each seed on a new database of that server (named from `prefix`),
    dropped after; else on an SQLite file of its own."""
    for seed in range(first, first + seeds):
        if admin_dsn is not None:
            from tests import pg_cluster as pgc

            cluster = pgc._external(admin_dsn)
            name = pgc.new_database_name(prefix)
            dsn = asyncio.run(pgc.create_database(cluster, name))
            try:
                steps = asyncio.run(scenario(seed, Path("-"), dsn))
            finally:
                asyncio.run(pgc.drop_database(cluster, name))
        else:
            with tempfile.TemporaryDirectory() as d:
                steps = asyncio.run(scenario(seed, Path(d) / "s.db", None))
        hashes = [hashlib.sha256(s.encode()).hexdigest()[:16] for s in steps]
        print(json.dumps([seed, hashes]), flush=True)


def compare(script: str, base: str, tree: str, more: list[str], children: Children) -> None:
    """Runs `script --child base` and `script --child tree` with `more`, prints the summary and
    exits 1 naming the differing seeds (or if a child failed)."""
    outs = []
    with tempfile.TemporaryFile("w+") as a, tempfile.TemporaryFile("w+") as b:
        procs = [
            children.popen(
                [sys.executable, script, "--base", base, "--child", t, *more],
                stdout=f,
            )
            for t, f in ((base, a), (tree, b))
        ]
        try:
            for p, f in zip(procs, (a, b), strict=True):
                if p.wait():
                    sys.exit(f"a child failed ({p.args!r})")
                f.seek(0)
                outs.append([json.loads(line) for line in f.read().splitlines()])
        finally:
            children.end()
    old, new = outs
    differ = [o[0] for o, n in zip(old, new, strict=True) if o != n]
    steps = sum(len(o[1]) for o in old)
    print(f"scenarios {len(old)}, steps dumped {steps}, differing scenarios {len(differ)}")
    if differ:
        print("differing seeds:", differ[:20])
        sys.exit(1)
