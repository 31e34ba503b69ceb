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


class PurgeFailed(Exception):
    """A step failed part-way through a run: `purged` counts what the earlier steps deleted
    (committed, each its own write), so the metric still counts every row gone."""

    def __init__(self, purged: dict[str, int]) -> None:
        super().__init__(f"retention purge failed after {purged}")
        self.purged = purged


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
    times a run): counts per kind. A failing step raises PurgeFailed with the counts so far."""
    out = {"messages": 0, "mo": 0, "dead_webhooks": 0, "daily_counts": 0}
    try:
        await _run(messages, mo, dead_webhooks, daily_counts, out, message_chunk, chunk)
    except Exception as exc:
        raise PurgeFailed(out) from exc
    return out


async def _run(
    messages: MessagesStep,
    mo: MoStep,
    dead_webhooks: CountStep,
    daily_counts: CountStep,
    out: dict[str, int],
    message_chunk: int,
    chunk: int,
) -> None:
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
