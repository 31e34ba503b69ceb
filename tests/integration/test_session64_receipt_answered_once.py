"""Every receipt answered once, by how its batch ended (session 64 review r3, README note 27).

Session 64 (h3) made the receipts' batcher hand a failed or cancelled batch's items to one call
(`Batcher(failed=)`, `Inbound._receipts_failed`) and queue each receipt with a tuple of its
answer and arguments instead of a `partial` called with the batch's exception. What must hold
whatever the batches do, on each store engine (SQLite: unordered flushes that may overlap;
PostgreSQL: ordered, one at a time): every receipt the store was handed is answered exactly once
(one `settle`), ESME_ROK when its batch committed, ESME_RX_T_APPN when the flush failed (the store
down, disk full, a bug, or committed and then failed) or was cancelled mid-flush (a shutdown);
an answer set already keeps its status; an answer that raises leaves the batch's others answered;
a committed receipt counted once (`Inbound.receipts`, the metrics by SMSC and the state's text)
and stored with that text; nothing left queued. Seeded runs of receipts arriving while batches
commit, fail, hang and are cancelled, against this oracle (not a second tree): the real `Inbound`,
`Batcher` and store, the store's `apply_receipts` wrapped to fail or hang before or after its
real call.
"""

from __future__ import annotations

import asyncio
import random
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.config import SmscConfig  # noqa: E402
from bridge.metrics import Metrics  # noqa: E402
from bridge.pipeline.inbound import Inbound  # noqa: E402
from bridge.smpp import constants as C  # noqa: E402
from bridge.smpp.protocol import DeliverAnswer  # noqa: E402
from bridge.smpp.session import ReceiptReceived  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import ReceiptIn, ReceiptOutcome  # noqa: E402

engine = engines.engine
store = engines.store

NOW = 1_796_000_000_000
SMSC = "smscA"
# A receipt's stat word and the state its text reads as (ReceiptState's values).
STATES = {"DELIVRD": "delivered", "UNDELIV": "undeliverable", "EXPIRED": "expired",
          "REJECTD": "rejected", "BOGUS": "unknown", "ACCEPTD": "enroute"}  # fmt: skip
# How a flush ends: committed; refused before the store is reached (down: disk full; a bug);
# committed, then failed (the answer lost: refused, redelivered); held until cancelled.
ENDS = ("ok", "ok", "ok", "down", "bug", "after", "hang")


class _Faulty:
    """The engine's store with `apply_receipts` made to end as `ENDS` says, seeded: each call's
    receipt ids and how it ended recorded (`batches`)."""

    def __init__(self, real: Store, r: random.Random) -> None:
        self.real = real
        self.r = r
        self.commits_in_order = real.commits_in_order
        self.batches: list[tuple[list[str], str]] = []
        self.hung: set[asyncio.Task[Any]] = set()
        self.calm = False  # at the end: every flush commits

    async def apply_receipts(self, items: list[ReceiptIn], now: int) -> ReceiptOutcome:
        ids = [i.smsc_msg_id for i in items]
        end = "ok" if self.calm else self.r.choice(ENDS)
        if end == "down":
            self.batches.append((ids, end))
            raise OSError(28, "No space left on device")
        if end == "bug":
            self.batches.append((ids, end))
            raise RuntimeError("a fault in the store's code")
        if end == "hang":
            task = asyncio.current_task()
            assert task is not None
            self.hung.add(task)
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                self.batches.append((ids, "cancelled"))
                raise
            finally:
                self.hung.discard(task)
        try:
            out = await self.real.apply_receipts(items, now)
        except BaseException:
            self.batches.append((ids, "real-failed"))
            raise
        if end == "after":
            self.batches.append((ids, end))
            raise ConnectionResetError("the connection lost after the commit")
        self.batches.append((ids, "ok"))
        return out


def _fields(rid: str, stat: str, esm: int) -> Any:
    text = (
        f"id:{rid} sub:001 dlvrd:001 submit date:2612051400 done date:2612051401 stat:{stat} "
        "err:000 text:hi"
    ).encode()
    return (esm, text, None, None, None, None)


async def _run(real: Store, seed: int) -> None:
    r = random.Random(seed)
    faulty = _Faulty(real, r)
    metrics = Metrics()
    inbound = Inbound(
        faulty,  # type: ignore[arg-type]
        {SMSC: SmscConfig(name=SMSC, host="127.0.0.1", port=2775, system_id="esme")},
        clock=lambda: NOW / 1000,
        batch_delay_s=r.choice([0.0, 0.001]),
        metrics=metrics,
    )
    inbound._receipts._max = r.choice([1, 2, 3, 7, 1000])  # batches of a few, or all
    want_state: dict[str, str] = {}
    answers: dict[str, DeliverAnswer] = {}
    calls: dict[str, list[int]] = {}
    broken: set[str] = set()
    answered_before: set[str] = set()
    k = 0
    for _ in range(r.randrange(4, 14)):
        for _ in range(r.randrange(0, 7)):
            rid = f"R{seed:04d}X{k:05d}"
            k += 1
            stat = r.choice(list(STATES))
            intermediate = r.random() < 0.1
            want_state[rid] = "enroute" if intermediate else STATES[stat]
            esm = C.ESM_INTERMEDIATE_NOTIFICATION if intermediate else C.ESM_DELIVERY_RECEIPT
            a = inbound.on_receipt(SMSC, ReceiptReceived(k, _fields(rid, stat, esm)))
            assert not a.done()
            if r.random() < 0.08:  # answered already (its bind gone, say): kept
                a.set_result(C.ESME_RSYSERR)
                answered_before.add(rid)
            seen: list[int] = []
            calls[rid] = seen
            real_settle = a.settle

            def settle(status: int, seen: list[int] = seen, real_settle: Any = real_settle) -> None:
                seen.append(status)
                real_settle(status)

            def raising(status: int, seen: list[int] = seen) -> None:
                seen.append(status)
                raise RuntimeError("the answer's write failed")

            if r.random() < 0.08:
                a.settle = raising  # type: ignore[method-assign]
                broken.add(rid)
            else:
                a.settle = settle  # type: ignore[method-assign]
            answers[rid] = a
        for _ in range(r.randrange(0, 5)):
            await asyncio.sleep(0)
        if r.random() < 0.3:
            await asyncio.sleep(0.002)  # the real store's I/O
        if faulty.hung and r.random() < 0.5:  # a shutdown's cancel of a flush under way
            for t in list(faulty.hung):
                t.cancel()
            await asyncio.sleep(0)
    faulty.calm = True
    for _ in range(100):
        for t in list(faulty.hung):
            t.cancel()
        try:
            async with asyncio.timeout(2.0):
                await inbound.drain()
        except TimeoutError:
            continue
        # A cancelled flush starts no next one (`_cancelling`): what it left queued goes in
        # the next drain's.
        if not faulty.hung and not inbound._receipts._inflight and not inbound._receipts.pending:
            break
    assert inbound._receipts.pending == 0 and not inbound._receipts._inflight

    ended: dict[str, str] = {}
    for ids, end in faulty.batches:
        for rid in ids:
            assert rid not in ended, f"seed {seed}: {rid} in two batches"
            ended[rid] = end
    assert sorted(ended) == sorted(answers), f"seed {seed}: a receipt never flushed"
    committed: Counter[tuple[str, str]] = Counter()
    for rid, a in answers.items():
        ok = ended[rid] == "ok"
        status = C.ESME_ROK if ok else C.ESME_RX_T_APPN
        assert calls[rid] == [status], (seed, rid, ended[rid], calls[rid])
        if rid in answered_before:
            assert a.result() == C.ESME_RSYSERR, (seed, rid)
        elif rid in broken:
            assert not a.done(), (seed, rid)
        else:
            assert a.result() == status, (seed, rid, ended[rid])
        if ok and rid not in broken:
            committed[(SMSC, want_state[rid])] += 1
    assert inbound.receipts == sum(committed.values()), seed
    metrics.flush()
    counted = {
        (s.labels["smsc"], s.labels["state"]): int(s.value)
        for fam in metrics.registry.collect()
        if fam.name == "smpp_bridge_receipts"
        for s in fam.samples
        if s.name.endswith("_total")
    }
    assert counted == dict(committed), seed
    # What the store holds: each receipt of a batch that reached its commit, with its state's
    # text (none matches a message: pending rows).
    rows = await real.unmatched_receipts(NOW + 1, 100_000)
    reached = {rid for rid, end in ended.items() if end in ("ok", "after")}
    mine = {
        row["smsc_msg_id"]: row for row in rows if row["smsc_msg_id"].startswith(f"R{seed:04d}")
    }
    assert set(mine) == reached, seed
    for rid, row in mine.items():
        assert type(row["state"]) is str and row["state"] == want_state[rid], (seed, rid)


async def test_every_receipt_is_answered_once_by_how_its_batch_ended(
    store: Store, engine: engines.EngineHandle
) -> None:
    """Seeded runs (more on SQLite, quicker than PostgreSQL's round trips): the oracle above."""
    for seed in range(150 if engine.name == "sqlite" else 60):
        await _run(store, seed)
