"""Receipts of one message applied in the order they came, on both engines.

With `receipts: one_per_message` the first final receipt of a long message settles it, and a
later one for another part changes nothing. On PostgreSQL two receipt batches could be in
flight at once on two connections, so the later batch could commit first: a carrier's DELIVRD
for part 1 followed by an UNDELIV for part 2 ended the message `failed` (and refunded it).
SQLite's group commit runs its jobs in order; PostgreSQL's store now applies one instance's
receipt batches one at a time, in the order they were handed to it.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from tests.integration.test_receipt_matching import receipt, send  # noqa: E402
from tests.integration.test_store import NOW, accept, account, get, message  # noqa: E402

engine = engines.engine
store = engines.store


async def test_a_slow_first_batch_still_settles_the_message_before_a_quick_second(
    store: Store,
) -> None:
    store.one_receipt_smscs = frozenset({"smscA"})  # type: ignore[attr-defined]
    await store.create_account(account())
    await accept(store, message("m1", parts=3))
    await send(store, "m1", ["P1", "P2", "P3"], NOW + 1_000)
    # The first batch is long (receipts for ids sent by no one, kept as unmatched), part 1's
    # DELIVRD at its end; the second is part 2's UNDELIV alone, handed over just after.
    first = [receipt(f"other-{i}") for i in range(3_000)] + [receipt("P1")]
    second = [receipt("P2", "undeliverable", at=NOW + 5_001)]
    one = asyncio.ensure_future(store.apply_receipts(first, NOW + 5_000))
    await asyncio.sleep(0)  # the first batch is under way
    two = asyncio.ensure_future(store.apply_receipts(second, NOW + 5_001))
    await asyncio.gather(one, two)
    rec = await get(store, "m1")
    assert rec.state == "delivered", [s.state for s in rec.segment_rows]
    assert [s.state for s in rec.segment_rows] == ["delivered"] * 3
