"""Erasing a number also masks it in the stored answers of idempotent sends, on both engines.

Those answers ("to": the number, per message) are kept for the key's hours so a replay is
answered the same; after an erasure the number stayed there, readable by a replay, until the
record expired. They are masked in place: the replay is still answered (and still sends nothing),
without the number. Records of other accounts, and answers naming other numbers, are untouched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import AcceptBatch, AcceptOutcome, IdempotencyRecord  # noqa: E402
from tests.integration.test_store import DAY, NOW, account, message  # noqa: E402

engine = engines.engine
store = engines.store
CN, OTHER = "+8613800138000", "+8613900139000"
MASK = "+86138****000"


def answer(number: str) -> bytes:
    return json.dumps({"messages": [{"id": "m", "to": number, "status": "queued"}]}).encode()


async def accept_with_key(store: Store, account_id: str, mid: str, number: str, key: str) -> None:
    batch = AcceptBatch(
        account_id=account_id,
        messages=(message(mid, account_id, recipient=number),),
        idempotency_key=key,
        idempotency=IdempotencyRecord("hash", 202, answer(number)),
        idempotency_expires_at=NOW + DAY,
    )
    assert await store.accept(batch, NOW) == AcceptOutcome(accepted=True)


async def test_erasure_masks_the_number_in_stored_idempotent_answers(store: Store) -> None:
    await store.create_account(account())
    await store.create_account(account("acc_b"))
    await accept_with_key(store, "acc_a", "m1", CN, "k1")
    await accept_with_key(store, "acc_a", "m2", OTHER, "k2")
    await accept_with_key(store, "acc_b", "m3", CN, "k1")
    assert await store.erase_recipient("acc_a", CN, MASK, NOW + 1) == 1
    mine = await store.get_idempotency("acc_a", "k1", NOW + 2)
    assert mine is not None and mine.status_code == 202
    assert CN.encode() not in mine.response
    assert json.loads(mine.response)["messages"][0]["to"] == MASK
    other_number = await store.get_idempotency("acc_a", "k2", NOW + 2)
    assert other_number is not None and other_number.response == answer(OTHER)
    other_account = await store.get_idempotency("acc_b", "k1", NOW + 2)
    assert other_account is not None and other_account.response == answer(CN)


async def test_a_topup_with_a_ref_already_credited_is_not_appended_again(store: Store) -> None:
    """append_ledger(once=True): the same payment retried after a lost answer (both engines)."""
    from bridge.domain.ledger import topup

    await store.create_account(account())
    assert await store.append_ledger("acc_a", topup(5_000_000, NOW, "pay-1"), once=True)
    assert not await store.append_ledger("acc_a", topup(5_000_000, NOW + 1, "pay-1"), once=True)
    assert await store.append_ledger("acc_a", topup(1_000_000, NOW + 2, "pay-2"), once=True)
    sums = {p.pocket: p.amount for p in await store.get_pockets("acc_a")}
    assert sums["cash"] == 6_000_000


async def test_erasure_leaves_a_longer_number_that_starts_with_the_erased_one(store: Store) -> None:
    """Numbers differ in length within a country (+49): erasing +491511234567 must not rewrite
    +4915112345678 in another stored answer (a bare text replace did)."""
    short, longer = "+491511234567", "+4915112345678"
    await store.create_account(account())
    await accept_with_key(store, "acc_a", "m1", short, "k1")
    await accept_with_key(store, "acc_a", "m2", longer, "k2")
    await store.erase_recipient("acc_a", short, "+49**********", NOW + 1)
    kept = await store.get_idempotency("acc_a", "k2", NOW + 2)
    assert kept is not None and kept.response == answer(longer)
    erased = await store.get_idempotency("acc_a", "k1", NOW + 2)
    assert erased is not None and short.encode() not in erased.response
