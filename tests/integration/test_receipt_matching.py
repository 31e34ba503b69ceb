"""Receipts matched to parts when an SMSC's ids are not one per part for ever, on both engines.

Two carrier habits: one id for every part of a long message (then one receipt speaks for all
of them), and ids that start over (a restart, a counter wrap), so an id seen before names a new
part. Matched to one part by a plain (SMSC, id) lookup, the first left a long message's other
parts waiting 72 h for a receipt that had come, and the second could settle a part of an old
message instead of the new one.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.domain import lifecycle as lc  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import ReceiptIn, SubmitResult  # noqa: E402
from tests.integration.test_store import NOW, accept, account, get, message  # noqa: E402

engine = engines.engine
store = engines.store
LEASE = 300_000


def receipt(msg_id: str, state: str = "delivered", at: int = NOW + 5_000) -> ReceiptIn:
    stat = {"delivered": "DELIVRD", "undeliverable": "UNDELIV"}[state]
    return ReceiptIn("smscA", msg_id, state, stat, "000", at, at, f"id:{msg_id} stat:{stat}")


async def send(store: Store, mid: str, ids: list[str], at: int) -> None:
    (work,) = await store.claim("inst-1", 10, at, LEASE)
    assert work.id == mid
    results = [
        SubmitResult(mid, seq, "sent", "smscA", msg_id, msg_id, at=at)
        for seq, msg_id in enumerate(ids, 1)
    ]
    await store.record_submits(results, [], at)


async def test_one_receipt_for_a_long_message_whose_parts_share_an_id(store: Store) -> None:
    await store.create_account(account())
    await accept(store, message("m1", parts=3))
    await send(store, "m1", ["X1", "X1", "X1"], NOW + 1_000)
    out = await store.apply_receipts([receipt("X1")], NOW + 5_000)
    assert (out.matched, out.pending) == (1, 0)
    rec = await get(store, "m1")
    assert rec.state == "delivered"
    assert [s.state for s in rec.segment_rows] == ["delivered"] * 3
    assert rec.segments_delivered == 3


async def test_a_reused_id_settles_the_new_part_not_the_old_one(store: Store) -> None:
    await store.create_account(account())
    await accept(store, message("m1", at=NOW), message("m2", at=NOW + 1))
    (old, new) = await store.claim("inst-1", 10, NOW + 1_000, LEASE)
    # The SMSC restarted between the two submits and gave the second the first one's id; the
    # first part never got its receipt (still sent, waiting out the receipt timeout).
    await store.record_submits(
        [
            SubmitResult(old.id, 1, "sent", "smscA", "7", "7", at=NOW + 1_000),
            SubmitResult(new.id, 1, "sent", "smscA", "7", "7", at=NOW + 2_000),
        ],
        [],
        NOW + 2_000,
    )
    await store.apply_receipts([receipt("7", "undeliverable")], NOW + 5_000)
    assert (await get(store, "m2")).state == "failed"
    assert (await get(store, "m1")).state == "sent"
    # m2's part is final now: the next receipt for the id is m1's own, late one.
    await store.apply_receipts([receipt("7")], NOW + 6_000)
    assert (await get(store, "m1")).state == "delivered"
    assert (await get(store, "m2")).state == "failed"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["msg_A", "msg_B", "msg_C"]),
            st.integers(1, 3),
            st.sampled_from(["sent", "delivered", "undeliverable", "timeout", "queued"]),
        ),
        max_size=6,
        unique_by=lambda t: (t[0], t[1]),
    )
)
def test_receipt_targets_are_the_newest_open_messages_open_parts(
    parts: list[tuple[str, int, str]],
) -> None:
    got = lc.receipt_targets(parts)
    open_parts = [(m, q) for m, q, s in parts if s not in lc.SEG_FINAL]
    if not open_parts:
        assert got == []
        return
    newest = max(m for m, _q in open_parts)
    assert got == sorted((m, q) for m, q in open_parts if m == newest)
    assert all(m == newest for m, _q in got)
