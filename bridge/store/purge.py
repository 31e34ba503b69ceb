"""The retention purge's order and chunking, one driver for both engines: each engine supplies a
step per kind of row (one write or transaction each), and the sizes its steps use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from bridge.store.base import RETENTION_MAX_CHUNKS

# after (the last id purged) -> (ids purged, dead letters purged with them)
MessagesStep = Callable[[str], Awaitable[tuple[list[str], int]]]
# () -> (MO purged, dead letters purged with them)
MoStep = Callable[[], Awaitable[tuple[int, int]]]
CountStep = Callable[[], Awaitable[int]]


async def purge(
    messages: MessagesStep,
    mo: MoStep,
    dead_webhooks: CountStep,
    daily_counts: CountStep,
    *,
    message_chunk: int,
    chunk: int,
) -> dict[str, int]:
    """Run each step until it comes back short of its chunk (at most RETENTION_MAX_CHUNKS
    times a run): counts per kind."""
    out = {"messages": 0, "mo": 0, "dead_webhooks": 0, "daily_counts": 0}
    after = ""
    for _ in range(RETENTION_MAX_CHUNKS):
        ids, dead = await messages(after)
        out["messages"] += len(ids)
        out["dead_webhooks"] += dead
        if len(ids) < message_chunk:
            break
        after = ids[-1]
    for _ in range(RETENTION_MAX_CHUNKS):
        n, dead = await mo()
        out["mo"] += n
        out["dead_webhooks"] += dead
        if n < chunk:
            break
    for _ in range(RETENTION_MAX_CHUNKS):
        n = await dead_webhooks()
        out["dead_webhooks"] += n
        if n < chunk:
            break
    out["daily_counts"] = await daily_counts()
    return out
