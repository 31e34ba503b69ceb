"""Micro-batching of store writes at the pipeline's edges.

Receipts and submit results arrive one by one from many binds; each would cost a transaction. The
batcher gathers what arrives within a few milliseconds (or up to a size) and flushes it in one call;
callers that need durability (a receipt must be committed before its deliver_sm_resp) await the
flush that carried their item.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from bridge import logs
from bridge.aio import running
from bridge.store.base import is_unavailable

T = TypeVar("T")
# Told how an item's batch ended: None once committed, else the flush's exception (a
# CancelledError when it was cancelled). Called from the flush, not scheduled.
Settled = Callable[[BaseException | None], None]
# Per item: the future its caller awaits, the callback it gave, or None (the item shares the
# call of a later one: add_many_call). A batcher with `failed` holds the tuples its caller gave
# instead (never called): its lists of waiters are typed `list[Any]`.
_Waiter = asyncio.Future[None] | Settled | None

log = logging.getLogger("bridge.pipeline")


class Batcher(Generic[T]):
    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[object]],
        *,
        max_items: int = 500,
        max_delay_s: float = 0.002,
        name: str = "batch",
        ordered: bool = False,
        committed: Callable[[list[Any]], None] | None = None,
        failed: Callable[[list[Any], BaseException], None] | None = None,
    ) -> None:
        """`ordered`: one flush at a time, each after the one before it has ended, for items
        whose effect depends on their order (receipts: the first final one of a long message
        stands). What comes meanwhile gathers into the next batch, so a slow flush makes the
        next one bigger, not a queue of small ones.

        `committed`: for a batcher whose items come by `add_call` only (the receipts': one a
        part sent), called once a batch is committed with the callables its items were given,
        in their order, in place of a call of each with None (a Python call an item, session
        62); a failed or cancelled batch still calls each with its exception.

        `failed` (with `committed` only): called once a batch failed or was cancelled, with what
        its items were given and the exception, in place of a call of each. What `add_call` is
        given is then the caller's own value, never called by the batcher (the receipts': a
        tuple of a receipt's answer and its arguments, where a `partial` to call was built a
        receipt, ~1.2 k instructions; session 64)."""
        if failed is not None and committed is None:
            raise ValueError("failed: a batcher with `committed` only")
        self._flush = flush
        self._ordered = ordered
        self._committed = committed
        self._failed = failed
        self._busy = False
        self._max = max_items
        self._delay = max_delay_s
        self._name = name
        self._items: list[T] = []
        self._waiters: list[Any] = []  # _Waiter, or `failed`'s tuples
        self._timer: asyncio.TimerHandle | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None  # aio.running: no getpid() per item
        self._down = logs.Throttled(log)
        self.flushes = 0
        self.items = 0

    def add(self, item: T) -> asyncio.Future[None]:
        """Queue an item; the returned future resolves when its batch is committed."""
        if self._committed is not None:
            raise ValueError("add: a batcher with `committed` takes add_call's items only")
        loop = self._loop = running(self._loop)
        fut: asyncio.Future[None] = loop.create_future()
        self._items.append(item)
        self._waiters.append(fut)
        self._queued()
        return fut

    def add_many(self, items: Sequence[T]) -> asyncio.Future[Any]:
        """Queue `items` under one future, resolved when the batch carrying them is committed
        (a message's results: one future and one waiter for its parts, not one each).

        Unordered batches take every queued item, so `items` share one flush; an ordered
        batcher may cut them over two, so there each item gets its own future, gathered (its
        result a list of Nones, not None: awaited, never read)."""
        if self._committed is not None:
            raise ValueError("add_many: a batcher with `committed` takes add_call's items only")
        if self._ordered:
            return asyncio.gather(*(self.add(item) for item in items))
        loop = self._loop = running(self._loop)
        fut: asyncio.Future[None] = loop.create_future()
        if not items:
            fut.set_result(None)
            return fut
        self._items.extend(items)
        self._waiters.extend([fut] * len(items))  # the same future: _settle resolves it once
        self._queued()
        return fut

    def add_call(self, item: T, settled: Settled | tuple[Any, ...]) -> None:
        """Queue an item; `settled` is called with None once its batch is committed, or with
        the flush's exception (see `Settled`). A batcher with `failed` takes a tuple instead,
        handed to `committed` or `failed` with the batch's others, never called.

        Why not a future: a future per item costs its creation, the caller's done-callback and
        a loop hop (call_soon) before that callback runs. A receipt (one per part sent) and a
        message's results take this path; the callback runs inside the flush, after the
        commit, as the future's callback ran one loop iteration later."""
        self._items.append(item)
        self._waiters.append(settled)
        # `_queued` only when it has something to do (a timer to start, a full batch): a call
        # less for most items (two a part sent: its result and its receipt).
        if self._timer is None or len(self._items) >= self._max:
            self._queued()

    def add_many_call(self, items: Sequence[T], settled: Settled) -> None:
        """Queue `items` under one call of `settled` (add_call), made once the batch carrying
        them ends. Unordered batchers only: an ordered one may cut them over two batches."""
        if self._ordered:
            raise ValueError("add_many_call: an ordered batcher may split the items")
        if self._committed is not None:
            raise ValueError("add_many_call: a batcher with `committed` takes add_call's only")
        if not items:
            settled(None)
            return
        self._items.extend(items)
        self._waiters.extend([None] * (len(items) - 1))
        self._waiters.append(settled)
        # `_queued` only when it has something to do, as add_call (a call less for most
        # messages of several parts, whose results come here: session 62).
        if self._timer is None or len(self._items) >= self._max:
            self._queued()

    def _queued(self) -> None:
        """After items were queued: flush now when the batch is full, else within the delay."""
        if len(self._items) >= self._max:
            self._start_flush()
        elif self._timer is None:
            loop = self._loop = running(self._loop)  # add_call's items set no loop
            self._timer = loop.call_later(self._delay, self._start_flush)

    async def submit(self, item: T) -> None:
        await self.add(item)

    def _start_flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._items or (self._ordered and self._busy):
            return
        if self._ordered:
            self._busy = True
            n = self._max
            items, waiters = self._items[:n], self._waiters[:n]
            del self._items[:n], self._waiters[:n]
        else:
            items, waiters = self._items, self._waiters
            self._items, self._waiters = [], []
        loop = self._loop = running(self._loop)
        task = loop.create_task(self._run(items, waiters))
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _run(self, items: list[T], waiters: list[Any]) -> None:
        try:
            await self._settle(items, waiters)
        finally:
            if self._ordered:
                self._busy = False
                if self._items and not _cancelling():
                    self._start_flush()

    async def _settle(self, items: list[T], waiters: list[Any]) -> None:
        try:
            await self._flush(items)
        except Exception as exc:
            # Once per batch, here: the waiters say nothing more. The store down is the
            # environment's fault and lasts: one line a while, no traceback.
            if is_unavailable(exc):
                self._down.error(f"{self._name} flush of {len(items)} items failed", exc)
            else:
                log.exception("%s flush of %d items failed", self._name, len(items))
            if self._failed is not None:
                self._tell_failed(waiters, exc)
                return
            for w in waiters:
                if isinstance(w, asyncio.Future):
                    if not w.done():
                        w.set_exception(exc)
                        w.exception()  # mark retrieved: fire-and-forget callers may not await
                elif w is not None:
                    self._call(w, exc)
            return
        except asyncio.CancelledError as exc:
            # Whether the batch committed is unknown: its waiters end too (a receipt is then
            # refused and redelivered) instead of waiting for ever.
            if self._failed is not None:
                self._tell_failed(waiters, exc)
                raise
            for w in waiters:
                if isinstance(w, asyncio.Future):
                    w.cancel()
                elif w is not None:
                    self._call(w, exc)
            raise
        self.flushes += 1
        self.items += len(items)
        if self._committed is not None:
            try:
                self._committed(waiters)
            except Exception:
                log.exception("%s: the committed items' callback failed", self._name)
            return
        for w in waiters:
            if isinstance(w, asyncio.Future):
                if not w.done():
                    w.set_result(None)
            elif w is not None:
                try:
                    w(None)
                except Exception:  # the items after it are told all the same
                    log.exception("%s: a committed item's callback failed", self._name)

    def _tell_failed(self, waiters: list[Any], exc: BaseException) -> None:
        assert self._failed is not None
        try:
            self._failed(waiters, exc)
        except Exception:
            log.exception("%s: the failed items' callback failed", self._name)

    def _call(self, settled: Settled, exc: BaseException) -> None:
        try:
            settled(exc)
        except Exception:
            log.exception("%s: a failed item's callback failed", self._name)

    async def drain(self) -> None:
        """Flush what is queued and wait for every flush in progress.

        The tasks waited for leave the set here, not only through their done callback: a task
        that has ended stays in it until the loop runs that callback, and from Python 3.12
        `gather` of ended tasks completes without yielding to the loop (it runs their callbacks
        itself), so a loop on the set alone spun for ever, holding the event loop (a flush
        ending in the same loop step as the caller's wake-up, as at shutdown)."""
        self._start_flush()
        while self._inflight:
            tasks = list(self._inflight)
            await asyncio.gather(*tasks, return_exceptions=True)
            self._inflight.difference_update(tasks)

    @property
    def pending(self) -> int:
        return len(self._items)


def _cancelling() -> bool:
    """Whether the running task is being cancelled (a shutdown): no next flush from it."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0
