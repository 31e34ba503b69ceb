"""Private temporary directories that the next start can tell are abandoned.

The supervisor keeps the acceptors' copy of the configuration (which holds whatever secrets the
YAML holds: the admin token, SMSC passwords) and the multi-process metric files in directories
under $TMPDIR, and removes them at exit. A `kill -9`, the OOM killer or a power cut skips that:
the copies stayed for good. Each directory holds a lock file (LOCK_NAME) that its process keeps
locked (flock) for as long as it lives; the kernel drops the lock when the process dies however
it dies. The next start removes the directories of its prefix whose lock it can take.

Why a lock and not the pid in the name: a pid says nothing in another pid namespace (a container
sharing $TMPDIR) or once reused, and a name pattern alone matched an operator's own
`smpp-bridge-2024-06-01`. A directory without the lock file is never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".owner.lock"
PREFIX = "smpp-bridge-"  # every such directory's name starts so: one sweep finds them all

# The lock files of this process's directories, held open (and locked) until it exits.
_held: list[int] = []
_swept = False


def sweep_once() -> None:
    """At start, before the first directory is made: remove every abandoned one (the
    configuration copies and the metric files of a daemon killed with -9), once a process."""
    global _swept
    if _swept:
        return
    _swept = True
    for stale in remove_stale(PREFIX):
        log.info("removed the private directory of a daemon that is gone: %s", stale)


def make(prefix: str) -> str:
    """A new directory (mode 0700) named `<prefix><pid>-<random>`, locked by this process."""
    path = tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-")
    # Locked before it has its name: a start sweeping at this moment sees no lock file (and
    # leaves the directory alone) or a locked one, never an unlocked one.
    pending = os.path.join(path, LOCK_NAME + ".new")
    fd = os.open(pending, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.set_inheritable(fd, False)  # an acceptor must not hold its owner's directory alive
    os.rename(pending, os.path.join(path, LOCK_NAME))
    _held.append(fd)
    # And a shared BSD lock on the directory itself, held as long: systemd-tmpfiles, which ages
    # out /tmp (10 days on Fedora, RHEL and Debian 13; a unit's PrivateTmp= too), skips a
    # directory it cannot lock. Without it the acceptors' copy of the configuration, read only
    # at a reload or an acceptor's start, went after 10 days without either: the next reload
    # could not update it (the acceptors kept the old rules, routes and filter for good) and an
    # acceptor that crashed could not start again.
    dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    fcntl.flock(dfd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    os.set_inheritable(dfd, False)
    _held.append(dfd)
    return path


def remove_stale(prefix: str, base: str | None = None) -> list[Path]:
    """Remove this user's `<prefix>*` directories whose lock no process holds."""
    removed: list[Path] = []
    root = Path(base or tempfile.gettempdir())
    try:
        entries = [e for e in root.iterdir() if e.name.startswith(prefix)]
    except OSError:
        return removed
    for entry in entries:
        if _abandoned(entry):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _abandoned(entry: Path) -> bool:
    try:
        if entry.is_symlink() or not entry.is_dir() or entry.stat().st_uid != os.getuid():
            return False
        fd = os.open(entry / LOCK_NAME, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # no lock file (not one of ours), or not readable
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # held: its process lives
        return False
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)  # releases the lock taken just now
    return True
