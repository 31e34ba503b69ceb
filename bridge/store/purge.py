"""The retention purge's order and chunking, one driver for both engines: each engine supplies a
step per kind of row (one write or transaction each), and the sizes its steps use."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence

from bridge.store.base import RETENTION_MAX_CHUNKS

# after (the last id purged) -> (ids purged, dead letters purged with them)
MessagesStep = Callable[[str], Awaitable[tuple[list[str], int]]]
# account -> (ids purged, dead letters purged with them): one account's window (see purge)
AccountStep = Callable[[str], Awaitable[tuple[list[str], int]]]
# () -> (MO purged, dead letters purged with them)
MoStep = Callable[[], Awaitable[tuple[int, int]]]
CountStep = Callable[[], Awaitable[int]]


def window_bounds(
    accounts: Sequence[str], held: Mapping[str, int], lo: int, before: int
) -> dict[str, int]:
    """account -> the end (exclusive) of its window of acceptance times [lo, end) that the
    purge past the common cut-off `lo` may take: up to `before` for an account with every
    month billed, up to the start of its own oldest month without a bill for one in `held`.
    Accounts with nothing past `lo` to take are left out."""
    out = {}
    for account in accounts:
        end = min(held.get(account, before + 1), before + 1)
        if end > lo:
            out[account] = end
    return out


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
    window: AccountStep | None = None,
    accounts: Sequence[str] = (),
) -> dict[str, int]:
    """Run each step until it comes back short of its chunk (at most RETENTION_MAX_CHUNKS
    times a run): counts per kind. A failing step raises PurgeFailed with the counts so far.

    `window` purges one account's messages between the common cut-off of `messages` (the
    oldest month some account has no bill for) and that account's own; it runs for each of
    `accounts` (those with such a window) after `messages`. It reads by the account's
    (account_id, accepted_at) index, so the messages kept for the accounts without a bill are
    not read again every run."""
    out = {"messages": 0, "mo": 0, "dead_webhooks": 0, "daily_counts": 0}
    try:
        await _run(messages, mo, dead_webhooks, daily_counts, out, message_chunk, chunk)
        if window is not None:
            for account in accounts:
                await _repeat(window, account, out, message_chunk)
    except Exception as exc:
        raise PurgeFailed(out) from exc
    return out


async def _repeat(step: AccountStep, account: str, out: dict[str, int], message_chunk: int) -> None:
    for _ in range(RETENTION_MAX_CHUNKS):
        ids, dead = await step(account)
        out["messages"] += len(ids)
        out["dead_webhooks"] += dead
        if len(ids) < message_chunk:
            break


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
