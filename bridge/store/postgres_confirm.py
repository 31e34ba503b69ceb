"""Submit results on PostgreSQL: committed without waiting for the WAL flush, kept in memory until
a flush confirms them, and written again if the server failed before one did.

Why: a result committed with `synchronous_commit = off` is lost by a crash of the server (or a
failover) within ~0.6 s of its commit, after the dispatcher let its message go: the message then
stayed claimed with no SMSC id, its receipt unmatched, and went out again when its lease ran out.
Committing every result batch with the flush (synchronous_commit on) cost 13% of the messages/s
(measured: 352-370 against 397-428 on the 2-core machine), without any fsync (the benchmark's
server runs `fsync = off`): the cost is the commit's wait itself. So each batch commits at once
and is held here; every `interval_s` one small durable transaction flushes the WAL, which confirms
every batch committed before it began (the log is flushed in order). A failed flush means the
server may have lost some: once it answers again, every batch still held is written again, in
order, durably. That is safe because recording a batch twice records it once: the dispatcher
already retries a batch whose commit failed, when it may have landed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from bridge.store.base import is_unavailable
from bridge.store.postgres_tx import run_tx

log = logging.getLogger("bridge.store")

Again = Callable[[], Awaitable[object]]

# A durable commit with the least WAL of its own: a transactional logical message gives the
# transaction an id and a record, so its COMMIT waits for the flush (a transaction that wrote
# nothing commits without one). Any role may call it; at wal_level replica nothing reads it.
_FLUSH = "SELECT pg_logical_emit_message(true, 'smpp-bridge', 'flush')"


async def _flush(c: asyncpg.Connection) -> None:
    await c.execute(_FLUSH)


class Confirmer:
    """Holds what was committed without the flush until a flush covers it."""

    def __init__(self, pool: Callable[[], asyncpg.Pool], interval_s: float = 0.1) -> None:
        self._pool = pool
        self._interval = interval_s
        self._held: list[tuple[int, Again]] = []
        self._seq = 0
        self._failed = False
        self._task: asyncio.Task[None] | None = None
        self.flushes = 0
        self.rewritten = 0

    @property
    def held(self) -> int:
        return len(self._held)

    def hold(self, again: Again) -> None:
        """`again` (durable) writes once more what was just committed without the flush."""
        self._seq += 1
        self._held.append((self._seq, again))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while self._held:
            await asyncio.sleep(1.0 if self._failed else self._interval)
            try:
                await self.confirm()
            except Exception as exc:
                if not self._failed:
                    level = logging.WARNING if is_unavailable(exc) else logging.ERROR
                    log.log(
                        level,
                        "confirming %d submit-result batches failed (%s: %s); they are written "
                        "again once the store answers",
                        len(self._held),
                        type(exc).__name__,
                        exc,
                    )
                self._failed = True

    async def confirm(self) -> None:
        """Flush, then drop what the flush covered; after a failure, write the held batches
        again first. Raises what the store raised (the batches stay held)."""
        pool = self._pool()
        if self._failed:
            again = list(self._held)
            for _seq, write in again:
                await write()
            self.rewritten += len(again)
            log.info("wrote %d held submit-result batches again after a store failure", len(again))
        upto = self._seq
        await run_tx(pool, _flush)
        self.flushes += 1
        self._failed = False
        self._held = [h for h in self._held if h[0] > upto]

    async def close(self) -> None:
        """A last flush for what is held; the loop stops."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._held:
            try:
                await self.confirm()
            except Exception as exc:
                log.warning(
                    "%d submit-result batches unconfirmed at close (%s): a crash of the "
                    "server now may lose them, and their messages go out again",
                    len(self._held),
                    type(exc).__name__,
                )
