"""A submit-result batch that both ends a message's part and releases the message (session 49's
review of record_submits, both engines).

`record_submits` took a released message out of the roll-up: a release means "parts are left to
send", so there was nothing to roll up. Given, for one 3-part message, part 1's permanent error
(which also ends parts 2 and 3, PREVIOUS_PART_FAILED) and a release of it in one batch, the
message went back to the queue with no part left queued and its row never rolled up: `queued`
for ever, its charge kept, no status report. Each later claim found nothing to send and the
dispatcher released it again (`Dispatcher._send_parts`: "nothing left to send"), at once,
claim after claim; only a validity's end, by the sweep, would have ended it.

The dispatcher does not make such a batch (the second test shows it, with a connector that
answers a message's parts in every combination, the impossible ones too): the connector sends
a message's parts one after another, one on the wire at a time, and stops at the first that is
not accepted; the dispatcher hands in one item per message for that part, a final result or a
release, never both. The store now rolls a released message up all the same (no read more: the
messages with results are read for their roll-up anyway), so what the next caller or a replay
of an older batch hands in cannot leave a message queued with nothing to send.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.config import SmscConfig  # noqa: E402
from bridge.pipeline.dispatcher import Dispatcher  # noqa: E402
from bridge.smpp.codec import ShortMessage  # noqa: E402
from bridge.smpp.connector import SubmitOutcome  # noqa: E402
from bridge.smpp.router import Router  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import NewSegment, Release, SubmitResult  # noqa: E402
from tests.connectors import BeforeFirst, Contexts, StandIn  # noqa: E402
from tests.integration.test_billing_edges import (  # noqa: E402
    START,
    accept,
    cash,
    make_account,
    msg,
)

engine = engines.engine
store = engines.store

NOW = 1_700_000_000_000
LEASE = 300_000


def three_parts(mid: str) -> Any:
    m = msg(mid, NOW)
    return replace(
        m,
        billable_units=3,
        segments=tuple(NewSegment(i, 3, 0x40, f"{mid}/{i}".encode(), b"") for i in (1, 2, 3)),
    )


async def test_a_final_part_and_a_release_in_one_batch_end_the_message(store: Store) -> None:
    await make_account(store)
    await store.update_account("acc_a", {"status_callback_url": "https://cb.example/s"}, NOW)
    before = await cash(store)
    await accept(store, three_parts("m3"), amount=3 * START)
    assert await cash(store) == before - 3 * START
    work = await store.claim("inst-1", 10, NOW, LEASE)
    assert [w.id for w in work] == ["m3"]
    failed = SubmitResult("m3", 1, "failed", "smscA", error_code="ESME_RINVDSTADR", at=NOW)
    await store.record_submits(
        [failed], [Release("m3", NOW + 1_000, count_attempt=False)], NOW, instance="inst-1"
    )
    m = await store.get_message("acc_a", "m3")
    assert m is not None
    assert [s.state for s in m.segment_rows] == ["failed"] * 3
    assert (m.state, m.error_code) == ("failed", "ESME_RINVDSTADR"), "left queued, not rolled up"
    assert m.done_at == NOW
    assert await cash(store) == before, "a failed domestic message is refunded"
    jobs = await store.claim_webhooks(NOW + 10_000, 100, LEASE)
    assert [(j.kind, j.payload) for j in jobs] == [("status", "m3")]
    # Out of the queue: no later claim finds it (it was claimed, found with nothing to send,
    # and released again at every claim).
    assert await store.claim("inst-1", 10, NOW + 60_000, LEASE) == []
    assert await store.queue_depth() == 0


# -- the dispatcher's batches ---------------------------------------------------------------------

KINDS = ("ok", "permanent", "throttled", "transient", "no_bind", "expired", "unknown")


def _outcome(i: int, kind: str) -> SubmitOutcome:
    if kind == "unknown":  # no answer at all, with the SMSC set to never resend it
        return SubmitOutcome(i, "transient", -1, "TIMEOUT", None)
    names = {"ok": "ESME_ROK", "permanent": "ESME_RINVDSTADR", "throttled": "ESME_RTHROTTLED"}
    names |= {"transient": "ESME_RSYSERR", "no_bind": "NO_BIND", "expired": "VALIDITY_EXPIRED"}
    return SubmitOutcome(i, kind, 0, names[kind], f"id{i}" if kind == "ok" else None)


class ScriptedConnector(StandIn):
    """Answers each message's parts with the outcomes scripted for it (by the part's first
    byte's message id), whatever the real connector would allow."""

    def __init__(self, script: dict[str, list[str]]) -> None:
        super().__init__("t1", window=100)
        self.script = script

    async def sending(
        self,
        parts: Sequence[ShortMessage],
        before_first: BeforeFirst,
        deadline: float | None,
        contexts: Contexts,
    ) -> list[SubmitOutcome]:
        assert contexts is not None
        mid = contexts[0][0]
        kinds = self.script[mid][-len(parts) :]
        await asyncio.sleep(0)
        return [_outcome(i, k) for i, k in enumerate(kinds)]


async def test_the_dispatcher_never_hands_in_a_final_part_and_a_release_together(
    store: Store,
) -> None:
    """Every combination of outcomes for a 3-part message's parts (343), answered at once so
    many share a batch: no batch holds both a final result and a release for one message, and
    every message whose first part got a final answer ends (none is left queued)."""
    await make_account(store, funds=len(KINDS) ** 3 * START)
    script: dict[str, list[str]] = {}
    for a in KINDS:
        for b in KINDS:
            for c in KINDS:
                mid = f"m_{a}_{b}_{c}"
                script[mid] = [a, b, c]
                await accept(store, three_parts(mid))
    batches: list[tuple[list[SubmitResult], list[Release]]] = []
    record = store.record_submits

    async def spy(results: Any, releases: Any, now: int, **kw: Any) -> int:
        batches.append((list(results), list(releases)))
        return await record(results, releases, now, **kw)

    store.record_submits = spy  # type: ignore[method-assign]
    smsc = SmscConfig(name="t1", system_id="t", password="t", in_flight_on_restart="unknown")
    d = Dispatcher(
        store, {"t1": ScriptedConnector(script)}, Router([], ["t1"]), {"t1": smsc},
        instance="inst-1", idle_s=0.01, claim_batch=1000, in_flight_windows=10,
    )  # fmt: skip
    task = asyncio.create_task(d.run())
    try:
        for _ in range(3000):  # ~2 s on PostgreSQL with a loaded machine: room for worse
            if sum(len(r) + len(rel) for r, rel in batches) and not d.inflight:
                break
            await asyncio.sleep(0.01)
        assert d.inflight == 0
    finally:
        await d.stop(1.0)
        task.cancel()
    assert batches and max(len(r) + len(rel) for r, rel in batches) > 3, "no shared batch"
    for results, releases in batches:
        ended = {r.message_id for r in results if r.outcome != "sent"}
        assert not ended & {rel.message_id for rel in releases}
    final = {"permanent": "failed", "unknown": "unknown", "expired": "expired"}
    for mid, (first, _b, _c) in script.items():
        m = await store.get_message("acc_a", mid)
        assert m is not None
        if first in final:
            assert m.state == final[first], (mid, m.state)
