"""Store files other local users may read: told, not changed.

Why: a new SQLite store is made 0600 (sqlite_runner._create_private), but a store made before
that keeps the umask's 0644, and with it every local user can read the numbers, the texts
(verification codes) and the replies. The mode is not changed silently: an operator may have
opened it to a backup group on purpose. So whoever opens it is told which file and the command.
"""

from __future__ import annotations

import os
import shlex
import stat
from pathlib import Path

# The files SQLite keeps a store's data in (the -wal holds recent writes, the -shm its index).
SUFFIXES = ("", "-wal", "-shm")


def open_to_others(path: Path) -> list[tuple[Path, int]]:
    """(file, mode) of the store's files that give group or others any permission."""
    out = []
    for suffix in SUFFIXES:
        f = Path(f"{path}{suffix}")
        try:
            mode = stat.S_IMODE(os.stat(f).st_mode)
        except OSError:
            continue  # not there (no -wal while no one has it open), or not ours to see
        if mode & 0o077:
            out.append((f, mode))
    return out


def warning(path: Path) -> str | None:
    """One line naming the files and the chmod that closes them; None when none is open."""
    found = open_to_others(path)
    if not found:
        return None
    listed = ", ".join(f"{f} ({mode:04o})" for f, mode in found)
    command = "chmod 600 " + " ".join(shlex.quote(str(f)) for f, _ in found)
    return (
        f"store files readable by other users: {listed}; they hold numbers, texts and replies: "
        f"`{command}` unless that is on purpose (the mode is left as it is)"
    )
