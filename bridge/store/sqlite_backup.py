"""`smpp-bridge db backup`: a verified, consistent copy of a SQLite store, taken while the daemon
runs (and `db restore`, which puts one back: `restore`). The README's one-liner (`VACUUM INTO`)
was the documented way, and three things could go wrong with it by hand: a copy interrupted half
way (a full disk, a killed cron job) left a file with the backup's name; nothing checked the
copy; and, run with root's umask, the copy of a store only its owner may read was readable by
every user of the machine.

No store object and no migrations: a backup taken before an upgrade must copy the schema as it
was, and opening the store through `open_store` migrates it first. (SQLite itself gives a -wal
or -shm it creates as root to the database file's owner.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

from bridge.store.base import StoreError, StoreInUseError

PARTIAL_SUFFIX = ".partial"


class BackupError(StoreError):
    """A backup refused or failed (code + message, as every store refusal)."""


def backup(store: Path, dest: Path) -> dict[str, Any]:
    """Copy `store` to `dest` (which must not exist) and check the copy; returns what a caller
    prints. The copy is written as `dest.partial`, checked, synced and then renamed, so a file
    named `dest` is always a whole, checked backup."""
    if not store.is_file():
        raise BackupError("STORE_NOT_FOUND", f"no SQLite store at {store}")
    if dest.exists():
        raise BackupError("BACKUP_EXISTS", f"{dest} exists; name a new file")
    if not dest.parent.is_dir():
        raise BackupError("BACKUP_DIR_MISSING", f"{dest.parent} is not a directory")
    partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
    with contextlib.suppress(FileNotFoundError):
        partial.unlink()  # a run killed half way left it
    started = time.monotonic()
    try:
        # Made empty first, readable by no one but its owner (VACUUM INTO fills an empty file):
        # made by SQLite, its mode came from the umask. It gets the store's own mode at the end.
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        # mode=rw: never creates a store that is not there. Read-write rather than read-only,
        # so that on a stopped daemon's store the last close removes the -wal and -shm it made.
        src = sqlite3.connect(f"file:{store}?mode=rw", uri=True, isolation_level=None, timeout=30)
        try:
            src.execute("VACUUM INTO ?", (str(partial),))
        finally:
            src.close()
        version, problems = _check(partial)
        if problems:
            raise BackupError(
                "BACKUP_CORRUPT", f"the copy failed its integrity check: {'; '.join(problems)}"
            )
        os.chmod(partial, store.stat().st_mode & 0o777 & ~0o111)
        _fsync(partial)
        os.replace(partial, dest)
        _fsync(dest.parent, os.O_DIRECTORY)  # the rename itself
    except sqlite3.Error as exc:
        raise BackupError("BACKUP_FAILED", f"{type(exc).__name__}: {exc}") from None
    except OSError as exc:
        raise _os_failure("BACKUP_FAILED", exc, dest) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    return {
        "backup": str(dest),
        "bytes": dest.stat().st_size,
        "schema_version": version,
        "integrity": "ok",
        "seconds": round(time.monotonic() - started, 3),
    }


def restore(store: Path, src: Path, stamp: str) -> dict[str, Any]:
    """Put the backup `src` in place as `store`, on a stopped daemon; returns what a caller prints.

    Why a command: by hand (README) the store's old `-wal` had to be removed first, and a restore
    that left it had SQLite replay the old store's latest commits into the backup's file, a
    mixture of both (found by session 46's trial: the backup's 1 row read back as the 199 written
    after it). Here the daemon's owner lock is held throughout (refused while one runs), the
    backup is checked (integrity, a store of ours, no newer schema than this release's) and
    copied beside the store, synced, given the store's mode and owner, and renamed into place;
    the store it replaces is kept whole, its `-wal` with it, under `store.before-restore-STAMP`
    (SQLite reads `NAME-wal` beside `NAME`), for the operator to delete; a `-shm` is dropped
    (SQLite rebuilds it). Nothing is migrated here: the daemon, or `db after-restore`, does."""
    from bridge.store.migrate import latest
    from bridge.store.sqlite_runner import owner_lock

    if not src.is_file():
        raise BackupError("BACKUP_NOT_FOUND", f"no backup file at {src}")
    if not store.parent.is_dir():
        raise BackupError("STORE_DIR_MISSING", f"{store.parent} is not a directory")
    try:
        # The daemon's own lock (made by root, the lock file is given the store's owner).
        lock = owner_lock(store, "stop it first")
    except StoreInUseError as exc:
        raise BackupError(exc.code, exc.message) from None
    try:
        try:
            version, problems = _check(src)
        except sqlite3.Error as exc:
            raise BackupError("BACKUP_UNREADABLE", f"{src}: {exc}") from None
        if problems:
            raise BackupError(
                "BACKUP_CORRUPT", f"{src} failed its integrity check: {'; '.join(problems)}"
            )
        if version is None:
            raise BackupError("NOT_A_STORE", f"{src} is not an smpp-bridge store")
        if version > latest("sqlite"):
            raise BackupError(
                "SCHEMA_TOO_NEW",
                f"{src} has schema version {version}, newer than this release's "
                f"{latest('sqlite')}: restore it with the release that made it",
            )
        return _put_in_place(store, src, stamp, version)
    finally:
        os.close(lock)  # releases the flock


def _put_in_place(store: Path, src: Path, stamp: str, version: int) -> dict[str, Any]:
    started = time.monotonic()
    incoming = store.with_name(store.name + ".restoring")
    aside = store.with_name(f"{store.name}.before-restore-{stamp}")
    like = store if store.exists() else store.parent
    try:
        with contextlib.suppress(FileNotFoundError):
            incoming.unlink()  # a run killed half way left it
        shutil.copyfile(src, incoming)
        os.chmod(incoming, (store.stat().st_mode & 0o777 & ~0o111) if store.exists() else 0o600)
        if os.geteuid() == 0:  # run as root: the daemon's user must open it
            owner = like.stat()
            os.chown(incoming, owner.st_uid, owner.st_gid)
        _fsync(incoming)
        previous = None
        if store.exists():
            os.replace(store, aside)
            previous = str(aside)
        wal = Path(str(store) + "-wal")
        if wal.exists():
            os.replace(wal, Path(str(aside) + "-wal"))
        with contextlib.suppress(FileNotFoundError):
            os.unlink(str(store) + "-shm")
        os.replace(incoming, store)
        _fsync(store.parent, os.O_DIRECTORY)
    except OSError as exc:
        raise _os_failure("RESTORE_FAILED", exc, store) from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            incoming.unlink()
    return {
        "restored": str(store),
        "from": str(src),
        "schema_version": version,
        "previous": previous,
        "bytes": store.stat().st_size,
        "seconds": round(time.monotonic() - started, 3),
    }


def _os_failure(code: str, exc: OSError, path: Path) -> BackupError:
    """A file step's failure named by its cause and file (a full disk, a permission), not as a
    traceback; `path` when the error names none."""
    return BackupError(code, f"{exc.strerror or exc}: {exc.filename or path}")


def _check(path: Path) -> tuple[int | None, list[str]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
    try:
        problems = [r[0] for r in conn.execute("PRAGMA integrity_check") if r[0] != "ok"]
        try:
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        except sqlite3.OperationalError:  # not a store of ours (no schema yet)
            row = None
        return (row[0] if row else None), problems
    finally:
        conn.close()


def _fsync(path: Path, flags: int = 0) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
