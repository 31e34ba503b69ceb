"""A stand-in for an SMSC connector, for the dispatcher's tests against a real store.

The dispatcher's tests each had a copy of the connector's surface (bridge.pipeline.dispatcher.
ConnectorLike: up, a window, refuse_new, send_message's five parameters, every part answered
"ok") around the one thing each tests: a send held until released, waiting for a gate, noting its
time. Here the surface is written once; a stand-in says what its send does in `sending`, and
`dispatcher` makes the dispatcher of one SMSC around it. Session 50 moved the last copies here
(test_result_batches, test_reencode_claimed, test_pg_claim_unanswered, test_wire_review), with
the parts' contexts passed to `sending`, which two of them read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from bridge.config import SmscConfig
from bridge.pipeline.dispatcher import Dispatcher
from bridge.smpp.codec import ShortMessage
from bridge.smpp.connector import SubmitOutcome
from bridge.smpp.router import Router
from bridge.store.base import Store

BeforeFirst = Callable[[], Awaitable[None]] | None
# What the dispatcher hands send_message with the parts: per part, (message id, seq, ...).
Contexts = Sequence[Any] | None


def accepted(parts: Sequence[ShortMessage]) -> list[SubmitOutcome]:
    """Every part taken by the SMSC, its message ids id0, id1, ..."""
    return [SubmitOutcome(i, "ok", 0, "ESME_ROK", f"id{i}") for i in range(len(parts))]


class StandIn:
    """Up, with a window of `window` (none while down), every part taken at once. A subclass
    overrides `sending`, which the connector's send_message calls with the parts, the hook the
    real one calls just before the first part leaves (`before_first`: the dispatcher records the
    route there), the deadline and the parts' contexts (their message id first); its answer is
    the outcomes, or None for every part taken."""

    def __init__(self, name: str = "t1", window: int = 10) -> None:
        self.name = name
        self.window = window
        self.up = True
        self.on_late_submit: Any = None  # set by the dispatcher
        self.is_held: Any = None

    @property
    def is_up(self) -> bool:
        return self.up

    def free_slots(self) -> int:
        return self.window if self.up else 0

    def window_size(self) -> int:
        return self.window if self.up else 0

    def refuse_new(self) -> None:
        pass

    async def send_message(
        self,
        parts: Sequence[ShortMessage],
        before_first: BeforeFirst = None,
        deadline: float | None = None,
        contexts: Sequence[object] | None = None,
        outcomes: list[SubmitOutcome] | None = None,
    ) -> list[SubmitOutcome]:
        answer = await self.sending(parts, before_first, deadline, contexts)
        return accepted(parts) if answer is None else answer

    async def sending(
        self,
        parts: Sequence[ShortMessage],
        before_first: BeforeFirst,
        deadline: float | None,
        contexts: Contexts,
    ) -> list[SubmitOutcome] | None:
        if before_first is not None:
            await before_first()
        return None


def dispatcher(store: Store, conn: Any, *, key: str = "t1", **kw: Any) -> Dispatcher:
    """The dispatcher of instance inst-1 whose one SMSC, `key`, is `conn` (any connector, a
    stand-in or a real one), routed every message; `kw`: the Dispatcher's own settings, and the
    SMSC's under `smsc` (default: its window is the stand-in's)."""
    smsc = {"window": conn.window if isinstance(conn, StandIn) else 10, **kw.pop("smsc", {})}
    cfg = SmscConfig(name=key, system_id="t", password="t", **smsc)
    return Dispatcher(store, {key: conn}, Router([], [key]), {key: cfg}, instance="inst-1", **kw)
