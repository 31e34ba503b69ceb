"""StorePool (bridge/store/postgres_tx.py, session 60) does part of asyncpg's pool's work
itself: `release`/`_release_turn` mirror `Pool.release` and `PoolConnectionHolder.release` (with
`Connection._reset` and the pool's `_no_reset`), `_acquire` mirrors `Pool._acquire`'s
`_acquire_impl`, the queue's `get` and `PoolConnectionHolder.acquire`, and `_sweep` mirrors
`PoolConnectionHolder._deactivate_inactive_connection` (0.32's: the floor kept). pyproject pins
`asyncpg>=0.32,<0.33` (it asked for >=0.30, where `_schedule_min_size_maintenance`, which
StorePool._acquire calls, does not exist); an upgrade of the pin that changes any of these must
fail here, loudly, not drift silently (another order of callers, a reset step skipped, a
connection kept or closed otherwise). On a failure: read the
new asyncpg's function, bring StorePool's copy in line (or back to asyncpg's path), then record
the new digest."""

from __future__ import annotations

import hashlib
import inspect
from typing import Any

import asyncpg
import asyncpg.connection
import asyncpg.pool
import asyncpg.protocol

P = asyncpg.pool
C = asyncpg.connection.Connection

# The functions mirrored or relied on ("module:Class.function"), by the sha256 of their source
# (asyncpg 0.32.0).
MIRRORED: dict[str, str] = {
    "pool:Pool.release": "e24e3da0c5bf1df6",
    "pool:Pool._acquire": "09fc0bf30e7e9861",
    "pool:Pool.close": "a4f8580206d395c1",
    "pool:Pool.terminate": "5817060733c5b850",
    "pool:Pool.get_size": "bbcc47033ea7f13f",
    "pool:Pool._schedule_min_size_maintenance": "984854fea5ec09bb",
    "pool:PoolConnectionHolder.acquire": "c6ae995302af86a3",
    "pool:PoolConnectionHolder.release": "a8af808680d4c5ce",
    "pool:PoolConnectionHolder._release": "daf444ce5b345cb1",
    "pool:PoolConnectionHolder._release_on_close": "b82a32c345860168",
    "pool:PoolConnectionHolder._deactivate_inactive_connection": "b9159ff3f4ce5f15",
    "pool:PoolConnectionHolder._setup_inactive_callback": "25722bd387b2e7d9",
    "pool:PoolConnectionProxy.__init__": "464d65eb2235cb46",
    "pool:_PoolConnectionHolderQueue._get": "63d4f538754cb3e7",
    "connection:Connection._reset": "3252aa6d5b0eb65f",
    "connection:Connection._on_release": "cf495810a0f25382",
    "pool:PoolAcquireContext.__aenter__": "dbce099ef40ebc8c",
    "pool:PoolAcquireContext.__aexit__": "33bb4fe789a8e490",
}


def _digest(name: str) -> str | None:
    """The function's source digest, None if the asyncpg installed has no such function."""
    module, path = name.split(":")
    obj: Any = {"pool": P, "connection": asyncpg.connection}[module]
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return hashlib.sha256(inspect.getsource(obj).encode()).hexdigest()[:16]


def test_the_asyncpg_functions_storepool_mirrors_are_unchanged() -> None:
    changed = [name for name, digest in MIRRORED.items() if _digest(name) != digest]
    assert not changed, (
        f"asyncpg {asyncpg.__version__} changed (or lacks) what StorePool mirrors: {changed}; "
        "see this module's docstring"
    )


def test_the_asyncpg_attributes_storepool_reads_are_there() -> None:
    """The compiled parts have no source to digest: their names, at least."""
    holder_slots = set(P.PoolConnectionHolder.__slots__)
    assert {
        "_con",
        "_pool",
        "_proxy",
        "_max_queries",
        "_setup",
        "_in_use",
        "_inactive_callback",
        "_timeout",
        "_generation",
    } <= holder_slots
    proto = asyncpg.protocol.Protocol
    for attr in ("queries_count", "_is_cancelling", "is_in_transaction"):
        assert hasattr(proto, attr), attr
    for attr in ("_queue", "_holders", "_schedule_min_size_maintenance", "_generation"):
        assert attr in inspect.getsource(P.Pool), attr
    for attr in ("_top_xact", "_listeners", "_log_listeners", "_protocol"):
        assert attr in inspect.getsource(C.__init__), attr
