"""Numbered SQL migrations, shipped in the package and applied at start-up.

Files are `migrations/<engine>/NNNN_name.sql`; the applied version lives in `schema_version`. A
database newer than this code is refused rather than silently used.
"""

from __future__ import annotations

import re
from importlib import resources

_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migrations(engine: str) -> list[tuple[int, str, str]]:
    """(version, file name, SQL) in order."""
    root = resources.files("bridge.store") / "migrations" / engine
    found = []
    for entry in root.iterdir():
        m = _NAME.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    for i, (version, name, _sql) in enumerate(found, start=1):
        if version != i:
            raise RuntimeError(f"migration numbering gap at {name}: expected {i:04d}")
    return found


def pending(engine: str, current: int) -> list[tuple[int, str, str]]:
    """The migrations to apply over schema version `current`; SchemaTooNew when the database is
    newer than this release (refused rather than silently used)."""
    available = migrations(engine)
    if available and current > available[-1][0]:
        raise SchemaTooNew(
            f"database schema version {current} is newer than this release "
            f"({available[-1][0]}); upgrade smpp-bridge"
        )
    return [m for m in available if m[0] > current]


def latest(engine: str) -> int:
    found = migrations(engine)
    return found[-1][0] if found else 0


class SchemaTooNew(RuntimeError):
    pass
