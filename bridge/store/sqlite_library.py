"""SQLite's memory statistics turned off in this process, before its first store connection.

Why: the SQLite the sqlite3 module links (Debian's 3.40.1 here) is built with memory statistics
on (`SQLITE_DEFAULT_MEMSTATUS`) and without lookaside, so every allocation a statement makes (its
cursors, the records it builds, each text or blob bound: ~120 allocations and as many frees a
one-part accept) takes SQLite's global memory mutex and updates the statistics under it: ~7% of
an accept's instructions inside the store's write lock (session 59). Nothing of the bridge reads
those statistics (`sqlite3_memory_used`, `sqlite3_status`, a soft or hard heap limit: none is
set), and without them SQLite calls malloc and free directly; every statement runs, reads and
writes as before.

The setting (`SQLITE_CONFIG_MEMSTATUS`) is taken only while the library is not initialised, and
the sqlite3 module initialises it when it is imported: it is shut down (`sqlite3_shutdown`),
configured and initialised again, through ctypes, on the very library the module's extension
links. That is safe only while no connection is open anywhere in the process (a shut-down
library frees what open connections use): it is done once, at the first store connection
(`sqlite_runner.connect`), and only if SQLite has no memory in use then (`sqlite3_memory_used()`
is 0: with statistics on, any open connection holds some), and only if the library counts at
all (a block of its own shows in that count: with the statistics off already, a build's default,
the 0 proves nothing and there is nothing to gain). Otherwise, or where the library
cannot be reached (no ctypes, another build, a statically linked module without the symbols),
nothing changes: the statistics stay on and everything works as before, a little slower.
`SMPP_BRIDGE_SQLITE_MEMSTATUS=1` keeps them on.

Not set in the same window (session 60, README note 31): `SQLITE_CONFIG_MULTITHREAD`, which
drops the connection's own mutex from every API call (85 mutex enters an accept in the write
lock, 3.4% of its instructions). It holds only if no connection or statement is ever used by two
threads at once, and the sqlite3 module cannot promise that: it resets a cursor's statement when
the cursor is cleared, and finalises a statement when its last reference goes, on whichever
thread that happens; a cursor held by a frame of a kept exception's traceback is cleared by the
cyclic collector, on the thread whose allocation started the collection: most often a read
lane's (a report's rows) while the loop writes on that same connection. Serialized, the
connection's mutex makes that reset wait its turn. The settings that could save allocations
(a page-cache arena, lookaside: omitted by this build; small-malloc) saved under 0.2%.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ctypes

_SQLITE_OK = 0
_SQLITE_CONFIG_MEMSTATUS = 9

_lock = threading.Lock()
_tried = False
# What the one try did: "off" (statistics off), or why not ("in use", "kept", "unreachable",
# "refused", "already off": the library counts nothing, so the shutdown's guard is blind);
# None before it.
state: str | None = None


def _library() -> ctypes.CDLL | None:
    """The SQLite the sqlite3 module uses, by ctypes, or None (ctypes imported here: a Python
    built without it, libffi missing, still runs the store, as before session 59)."""
    try:
        import _sqlite3
        import ctypes

        # dlsym on the extension's handle finds the symbols in the library it links (or in
        # the extension itself, when SQLite is linked into it).
        lib = ctypes.CDLL(_sqlite3.__file__)
        lib.sqlite3_libversion_number.restype = ctypes.c_int
        lib.sqlite3_memory_used.restype = ctypes.c_int64
        lib.sqlite3_malloc.restype = ctypes.c_void_p
        lib.sqlite3_malloc.argtypes = [ctypes.c_int]
        lib.sqlite3_free.restype = None
        lib.sqlite3_free.argtypes = [ctypes.c_void_p]
        for name in ("sqlite3_shutdown", "sqlite3_initialize", "sqlite3_config"):
            getattr(lib, name).restype = ctypes.c_int
    except (ImportError, OSError, AttributeError):
        return None
    major, minor, patch = sqlite3.sqlite_version_info
    if lib.sqlite3_libversion_number() != major * 1_000_000 + minor * 1_000 + patch:
        return None  # not the library the module reports: left alone
    return lib


def _counting(api: ctypes.CDLL) -> bool:
    """Whether SQLite counts its memory now: an allocation of its own shows in
    `sqlite3_memory_used()` only with the statistics on (review r4, session 59)."""
    block = api.sqlite3_malloc(64)
    if not block:
        return False  # no memory to probe with: left alone
    try:
        return bool(api.sqlite3_memory_used() > 0)
    finally:
        api.sqlite3_free(block)


def memstatus_off() -> str:
    """Turn SQLite's memory statistics off if no connection is open yet; once a process (later
    calls answer what the first did). Returns `state`."""
    global _tried, state
    with _lock:
        if _tried:
            return state or "refused"
        _tried = True
        if os.environ.get("SMPP_BRIDGE_SQLITE_MEMSTATUS") == "1":
            state = "kept"
            return state
        api = _library()
        if api is None:
            state = "unreachable"
            return state
        if api.sqlite3_memory_used() != 0:
            state = "in use"  # a connection is open: a shutdown would pull it from under it
            return state
        if not _counting(api):
            # Statistics off already (a build with SQLITE_DEFAULT_MEMSTATUS=0, one of SQLite's
            # recommended options): nothing to gain, and the 0 above said nothing about open
            # connections (uncounted), so a shutdown could pull one from under its user.
            state = "already off"
            return state
        if api.sqlite3_shutdown() != _SQLITE_OK:
            state = "refused"
            return state
        from ctypes import c_int  # importable: _library used it

        ok = api.sqlite3_config(c_int(_SQLITE_CONFIG_MEMSTATUS), c_int(0))
        if api.sqlite3_initialize() != _SQLITE_OK:  # pragma: no cover - initialised before
            raise sqlite3.OperationalError("SQLite could not be initialised again")
        state = "off" if ok == _SQLITE_OK else "refused"
        return state
