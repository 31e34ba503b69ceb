"""The owner's writes the roll-up tests of both engines run (test_sqlite_rollup_reads.py,
test_pg_rollup_reads.py): one scenario checked step by step, and random runs of every kind of
write. Each engine's test module keeps its own tests, which call these with that engine's store
and its statement trace: a failure names the engine's test.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from bridge.domain import lifecycle as lc
from bridge.store.base import Store
from bridge.store.models import (
    AcceptBatch,
    Account,
    NewSegment,
    ReceiptIn,
    Release,
    SubmitResult,
)
from tests.messages import one_part

NOW = 1_700_000_000_000
LEASE = 60_000
URL = "http://127.0.0.1:9/status"
# The tables a random run's result compares, and their columns.
DUMPED = (
    ("messages", "*"),
    ("segments", "*"),
    ("pending_receipts", "id, smsc, smsc_msg_id, state, received_at"),
    ("webhook_outbox", "webhook_id, kind, ref_id"),
)

# Each message's (state, delivered, failed, error, q_state), read from the store, each asserted
# to be what its stored parts roll up to (lifecycle.summarize).
Rows = Callable[[], Awaitable[dict[str, tuple[Any, ...]]]]
# The message ids each roll-up read the parts of, since the trace was last cleared.
Reads = Callable[[], list[list[str]]]


async def accept(store: Store, mids: list[str], longer: dict[str, int]) -> None:
    """`longer`: the messages of more than one part, and how many."""
    await store.create_account(
        Account(id="acc", name="acc", created_at=NOW, updated_at=NOW, status_callback_url=URL)
    )
    for k, mid in enumerate(mids):
        msg = one_part(mid, "acc", f"+4479{k:08d}", NOW, sender="1069")
        n = longer.get(mid, 1)
        if n > 1:
            segs = tuple(NewSegment(q, n, 0x40, bytes([96 + q]), b"") for q in range(1, n + 1))
            msg = replace(msg, segments=segs, billable_units=n)
        await store.accept(AcceptBatch("acc", (msg,), None, None), NOW)


def summarized(row: tuple[Any, ...], parts: list[tuple[Any, ...]]) -> tuple[Any, ...]:
    """A message row (state, delivered, failed, error, q_state, segments), asserted to say what
    its stored parts (state, error_code) say; the row without its segment count."""
    state, delivered, failed, error, q_state, nseg = row
    s = lc.summarize(parts, nseg)
    assert (state, delivered, failed, error) == (s.state, s.delivered, s.failed, s.error)
    return state, delivered, failed, error, q_state


async def parts_written_in_the_batch(
    store: Store,
    rows: Rows,
    reads: Reads,
    clear: Callable[[], None],
    needless: Callable[[], list[str]] = list,
) -> None:
    """msg_a: delivered; msg_b: two parts, their receipts in two batches; msg_c: its receipt
    before its result (kept, then matched by the result's write); msg_d: undeliverable with an
    error code; msg_e: two receipts in one batch, delivered then undeliverable (the row follows
    its first final part); msg_g: three parts, their results and receipts in one batch each, the
    second part's undeliverable. No roll-up reads parts the batch wrote; `needless`: the other
    reads the batch's submit results make needless (PostgreSQL's of the queued parts)."""
    mids = ["msg_a", "msg_b", "msg_c", "msg_d", "msg_e", "msg_g"]
    await accept(store, mids, {"msg_b": 2, "msg_g": 3})
    work = await store.claim("i1", 10, NOW + 1_000, LEASE)
    assert sorted(w.id for w in work) == mids
    at = NOW + 2_000

    def receipt(mid: str, seq: int, state: str = "delivered", stat: str = "DELIVRD") -> ReceiptIn:
        err = None if state == "delivered" else "001"
        return ReceiptIn("smsc1", f"x{mid}-{seq}", state, stat, err, at, at)

    early = await store.apply_receipts([receipt("msg_c", 1)], at)
    assert (early.matched, early.pending) == (0, 1)
    clear()
    await store.record_submits(
        [
            SubmitResult(
                w.id, g.seq, "sent", "smsc1", f"x{w.id}-{g.seq}", f"x{w.id}-{g.seq}",
                at=at, sent_at=at,
            )
            for w in work
            for g in w.segments
        ],
        [],
        at,
        instance="i1",
    )  # fmt: skip
    after_submits = await rows()
    assert {m: r[0] for m, r in after_submits.items()} == {
        "msg_a": "sent",
        "msg_b": "sent",
        "msg_c": "delivered",
        "msg_d": "sent",
        "msg_e": "sent",
        "msg_g": "sent",
    }
    assert all(r[4] == "done" for r in after_submits.values())  # every claim given back
    # Every part of every message was queued and is sent now: no roll-up read its parts.
    assert (reads(), needless()) == ([], [])
    clear()
    out = await store.apply_receipts(
        [
            receipt("msg_a", 1),
            receipt("msg_b", 1),
            receipt("msg_g", 3),
            receipt("msg_d", 1, "undeliverable", "UNDELIV"),
            receipt("msg_g", 1),
            receipt("msg_e", 1),
            receipt("msg_g", 2, "undeliverable", "UNDELIV"),
            receipt("msg_e", 1, "undeliverable", "UNDELIV"),
        ],
        at,
    )
    assert out.pending == 0
    got = await rows()
    code = lc.receipt_error_code("undeliverable", "UNDELIV", "001")
    assert {m: r[:4] for m, r in got.items()} == {
        "msg_a": ("delivered", 1, 0, None),
        "msg_b": ("sent", 1, 0, None),
        "msg_c": ("delivered", 1, 0, None),
        "msg_d": ("failed", 0, 1, code),
        "msg_e": ("delivered", 1, 0, None),  # the first final receipt stands
        "msg_g": ("failed", 2, 1, code),
    }
    # Only msg_b's parts were read: its second part's row was not among this batch's.
    assert reads() == [["msg_b"]]
    clear()
    out = await store.apply_receipts([receipt("msg_b", 2)], at)
    assert out.matched == 1
    assert (await rows())["msg_b"][:4] == ("delivered", 2, 0, None)
    assert reads() == [["msg_b"]]


_RECEIPT_STATES = {
    "delivered": "DELIVRD",
    "undeliverable": "UNDELIV",
    "expired": "EXPIRED",
    "unknown": "UNKNOWN",
    "enroute": "ENROUTE",
}


def owner_writes(rnd: random.Random, mids: list[str], parts: dict[str, int]) -> list[Any]:
    """A random run of the owner's writes: submit results of every outcome (repeated ones too),
    releases, receipts (some before their part's result: kept, then applied by it; two for one
    part in a batch), claims and sweeps past the receipt timeout."""
    ops: list[Any] = []
    at = NOW + 2_000
    for _ in range(rnd.randint(3, 12)):
        at += rnd.randint(0, 5_000)
        kind = rnd.choice(["results", "receipts", "receipts", "whole", "claim", "sweep"])
        if kind == "whole":
            # As the dispatcher hands them in: every part's result of a message, or (the
            # receipts) every part's, in one batch, with another message's besides.
            mid, other = rnd.choice(mids), rnd.choice(mids)
            if rnd.random() < 0.5:
                results = []
                for m, seq in [(mid, q) for q in range(1, parts[mid] + 1)] + [(other, 1)]:
                    ref = f"x{m}-{seq}-{int(rnd.random() < 0.1)}"
                    results.append(SubmitResult(m, seq, "sent", "smsc1", ref, ref, None, at, at))
                ops.append(("results", results, [], at))
            else:
                receipts = []
                for m, seq in [(mid, q) for q in range(1, parts[mid] + 1)] + [(other, 1)]:
                    state = rnd.choice(list(_RECEIPT_STATES))
                    err = None if state == "delivered" else "001"
                    ref = f"x{m}-{seq}-{int(rnd.random() < 0.1)}"
                    receipts.append(
                        ReceiptIn("smsc1", ref, state, _RECEIPT_STATES[state], err, at, at)
                    )
                ops.append(("receipts", receipts, None, at))
        elif kind == "results":
            results, releases = [], []
            for _ in range(rnd.randint(1, 5)):
                mid = rnd.choice(mids)
                seq = rnd.randint(1, parts[mid])
                out = rnd.choice(["sent", "sent", "sent", "failed", "unknown", "expired"])
                ref = f"x{mid}-{seq}-{int(rnd.random() < 0.1)}" if out == "sent" else None
                err = None if out == "sent" else "ESME_RSYSERR"
                sent_at = at - rnd.randint(0, 3_000)
                results.append(SubmitResult(mid, seq, out, "smsc1", ref, ref, err, at, sent_at))
            # A claim ends in a final result or a release, not both, and a release leaves a
            # part unsent (Dispatcher._send_parts).
            ended = {r.message_id for r in results if r.outcome != "sent"}
            sent = {(r.message_id, r.seq) for r in results}
            free = [
                mid
                for mid in mids
                if mid not in ended and any((mid, q) not in sent for q in range(1, parts[mid] + 1))
            ]
            if free and rnd.random() < 0.3:
                releases.append(Release(rnd.choice(free), at + 1_000, rnd.random() < 0.5))
            ops.append(("results", results, releases, at))
        elif kind == "receipts":
            receipts = []
            for _ in range(rnd.randint(1, 5)):
                mid = rnd.choice(mids)
                seq = rnd.randint(1, parts[mid])
                state = rnd.choice(list(_RECEIPT_STATES))
                ref = f"x{mid}-{seq}-{int(rnd.random() < 0.1)}"
                err = None if state == "delivered" else "001"
                got = at - rnd.randint(0, 2_000)
                receipts.append(
                    ReceiptIn("smsc1", ref, state, _RECEIPT_STATES[state], err, at, got)
                )
            ops.append(("receipts", receipts, None, at))
        else:
            ops.append((kind, None, None, at + (80 * 3_600_000 if rnd.random() < 0.5 else 0)))
    return ops


async def random_run(store: Store, seed: int) -> list[Any]:
    """The owner's writes of `seed` (owner_writes) on the opened, empty `store`, its messages
    accepted and claimed first: what each write returned."""
    rnd = random.Random(seed)
    mids = [f"msg_{k}" for k in range(rnd.randint(1, 6))]
    parts = {mid: rnd.choice([1, 1, 2, 3]) for mid in mids}
    one_per_message = rnd.random() < 0.3
    ops = owner_writes(rnd, mids, parts)
    if one_per_message:
        store.one_receipt_smscs = frozenset({"smsc1"})  # type: ignore[attr-defined]
    await accept(store, mids, {m: n for m, n in parts.items() if n > 1})
    await store.claim("i1", 10, NOW + 1_000, LEASE)
    returned: list[Any] = []
    for kind, items, releases, at in ops:
        if kind == "results":
            returned.append(await store.record_submits(items, releases, at, instance="i1"))
        elif kind == "receipts":
            returned.append(await store.apply_receipts(items, at))
        elif kind == "claim":
            returned.append([w.id for w in await store.claim("i1", 10, at, LEASE)])
        else:
            returned.append(await store.sweep(at, 72 * 3_600_000))
    return returned
