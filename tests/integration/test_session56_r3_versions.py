"""Session 56 review: an account's `updated_at` (the version an accept validated against)
moves on at every write of the daemon, the close's too.

h5 made `update_account` write `MAX(now, updated_at + 1)` (GREATEST on PostgreSQL): two changes
in one millisecond, or with the clock set back, left the version as it was, and a send validated
between them was accepted under the first. The close's two writes (its first step disables the
account, its last closes it) still wrote `now`: after two changes in one millisecond the
version went back to one a copy may hold. (Harmless while the account stays disabled or closed,
whose status every accept reads live; a close stopped part-way leaves it disabled, and the
operator may enable it again.) Fails on the merged tree: the close wrote the version back.
"""

from __future__ import annotations

import tests.store_engines as engines
from bridge.store.base import Store
from tests.integration.test_store_rules import NOW, account

engine = engines.engine
store = engines.store


async def _version(store: Store) -> int:
    current = await store.get_account("acc_a")
    assert current is not None
    return current.updated_at


async def test_the_close_moves_the_version_on(store: Store) -> None:
    await store.create_account(account("acc_a"))
    await store.update_account("acc_a", {"tps": 5}, NOW)
    await store.update_account("acc_a", {"tps": 6}, NOW)  # the same millisecond
    before = await _version(store)
    assert before == NOW + 2
    assert await store.close_account("acc_a", NOW) is not None
    closed = await store.get_account("acc_a")
    assert closed is not None and closed.status == "closed"
    assert closed.updated_at > before, (closed.updated_at, before)


async def test_the_close_writes_now_when_the_clock_moved(store: Store) -> None:
    """As before when the clock moved on: the close's time."""
    await store.create_account(account("acc_a"))
    await store.update_account("acc_a", {"tps": 5}, NOW)
    assert await store.close_account("acc_a", NOW + 5_000) is not None
    assert await _version(store) == NOW + 5_000
