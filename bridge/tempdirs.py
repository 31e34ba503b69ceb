"""Private temporary directories stamped with the process that owns them.

The supervisor keeps the acceptors' copy of the configuration (which holds whatever secrets the
YAML holds: the admin token, SMSC passwords) and the multi-process metric files in directories
under $TMPDIR, and removes them at exit. A `kill -9`, the OOM killer or a power cut skips that:
the copies stayed for good. The owner's pid is in the name, so the next start removes those of
processes that are gone (a pid taken by another process keeps its directory: the safe side).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path


def make(prefix: str) -> str:
    """A new directory (mode 0700) named `<prefix><pid>-<random>`."""
    return tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")


def remove_stale(prefix: str, base: str | None = None) -> list[Path]:
    """Remove this user's `<prefix><pid>-*` directories whose process no longer exists."""
    stamped = re.compile(re.escape(prefix) + r"(\d+)-[^/]+")
    removed: list[Path] = []
    root = Path(base or tempfile.gettempdir())
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = stamped.fullmatch(entry.name)
        if m is None or int(m.group(1)) == os.getpid():
            continue
        try:
            if not entry.is_dir() or entry.is_symlink() or entry.stat().st_uid != os.getuid():
                continue
        except OSError:
            continue
        if _alive(int(m.group(1))):
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True
