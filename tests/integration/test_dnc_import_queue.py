"""A do-not-contact import ends what is already waiting for the numbers it blocks, on both
engines: service-rules.md's lists "block sends for all accounts", and a message accepted (or
scheduled) before the import used to go out all the same. Ended unsent as RECIPIENT_BLOCKED;
messages to other numbers, and those already with an SMSC, are left alone."""

from __future__ import annotations

import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import DncInfo  # noqa: E402
from tests.integration.test_store import DAY, NOW, accept, account, get, message  # noqa: E402

engine = engines.engine
store = engines.store


async def test_import_ends_queued_and_scheduled_messages_it_blocks(store: Store) -> None:
    await store.create_account(account())
    await store.create_account(account("acc_b"))
    # With an SMSC already (claimed): not recalled by the import.
    await accept(store, message("inflight", recipient="+8613800138000", at=NOW - 1_000))
    (work,) = await store.claim("inst-1", 1, NOW - 1_000, 300_000)
    assert work.id == "inflight"
    await accept(
        store,
        message("exact", recipient="+8613800138000", scheduled_at=NOW + DAY),
        message("other", recipient="+8613900139000"),
    )
    await accept(store, message("by_prefix", "acc_b", recipient="+8617000000001"))
    info = DncInfo("national", "national", "CN", 1, 1, NOW + 1)
    assert await store.import_dnc(info, ["+8613800138000"], ["+86170"]) == 2
    for mid, owner in (("exact", "acc_a"), ("by_prefix", "acc_b")):
        rec = await get(store, mid, owner)
        assert (rec.state, rec.error_code) == ("expired", "RECIPIENT_BLOCKED"), mid
    assert (await get(store, "other")).state == "queued"
    assert (await get(store, "inflight")).state == "queued"  # claimed, still on its way
