"""Submit results on PostgreSQL: committed without waiting for the WAL flush, kept in memory until
a flush confirms them, and written again if the server may have lost them first.

Why: a result committed with `synchronous_commit = off` is lost by a crash of the server (or a
failover) within ~0.6 s of its commit, after the dispatcher let its message go: the message then
stayed claimed with no SMSC id, its receipt unmatched, and went out again when its lease ran out.
Committing every result batch with the flush (synchronous_commit on) cost 13% of the messages/s
(measured: 352-370 against 397-428 on the 2-core machine), without any fsync (the benchmark's
server runs `fsync = off`): the cost is the commit's wait itself. So each batch commits at once
and is held here; every `interval_s` one small durable transaction flushes the WAL, which confirms
every batch committed before it began (the log is flushed in order).

A flush proves nothing about a batch committed before the server crashed and came back (with
`restart_after_crash`, in well under a second): the flush lands in the new WAL. The flush
therefore runs on a connection of its own, the watch: every crash, restart or failover ends it.
A batch committed while the watch was up, and confirmed by a flush on that same watch, cannot
have been lost; a batch committed under an earlier watch (or none) is written again, in order,
durably, before the next flush on a new one; with no watch to be had (the server away, or
refusing one more connection while the pool works), each held batch is written again durably,
which bounds what is held. Writing a batch twice records it once: the dispatcher already
retries a batch whose commit failed, when it may have landed. Claims wait for that rewrite
(`settle`), so a message whose claim the crash lost is not claimed and sent again before its
result is back.

Webhook bookkeeping (a report delivered, to retry, handed back) is held here too (session 46):
lost in a crash, its reports waited out their lease (16 s in the PostgreSQL chaos soak, about
all the time it runs after the crash) and a delivered one was posted again. Fenced by its lease,
a write of it again lands only if the first was lost (PostgresStore._webhook_mark).

Two more guards, both from a review of this module (tests/integration/test_session21_review1.py):
- Every instance keeps a watch from its first claim, and claims nothing for FENCE_S after it
  lost one: a crash of the server ends every instance's watch, and an instance holding no lost
  result would otherwise claim, as soon as the server was back, a message whose claim the crash
  lost and whose result another instance was about to write again (a second SMS). The fence
  runs from the server's (re)start when the new watch sees one (the others wrote again soon
  after it), else from the new watch (a partition, a failover); an instance whose first watch
  opens less than FENCE_S after the server (re)started (it started during the outage) claims
  nothing until FENCE_S after that start either. A crash restart keeps the postmaster's start
  time but resets the statistics, so the start is the later of the two.
- A message whose release (back to the queue) is held is not claimed by this instance until the
  release is confirmed (a claim flushes first when one is held): the release written again after
  a flush that failed would otherwise take back the claim made since, which matches it (same
  instance, message claimed).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg

from bridge.store.base import is_unavailable
from bridge.store.postgres_tx import session_settings

log = logging.getLogger("bridge.store")

Again = Callable[[], Awaitable[object]]

# A durable commit with the least WAL of its own: a transactional logical message gives the
# transaction an id and a record, so its COMMIT waits for the flush (a transaction that wrote
# nothing commits without one). Any role may call it; at wal_level replica nothing reads it.
_FLUSH = (
    "BEGIN; SET LOCAL synchronous_commit TO on; "
    "SELECT pg_logical_emit_message(true, 'smpp-bridge', 'flush'); COMMIT"
)
FLUSH_TIMEOUT_S = 10.0
# After a watch was lost, no claims for this long: longer than an instance holding results
# takes to write them again once the server is back (its next try comes within DOWN_RETRY_S).
FENCE_S = 2.0
DOWN_RETRY_S = 0.2
# Seconds since the server (re)started: a crash restart keeps the postmaster's start time but
# discards the statistics, which sets pg_stat_bgwriter.stats_reset (readable by any role).
_SERVER_AGE = (
    "SELECT extract(epoch FROM now() - greatest(pg_postmaster_start_time(), "
    "(SELECT stats_reset FROM pg_stat_bgwriter)))::float8"
)


class Confirmer:
    """Holds what was committed without the flush until a flush on the watch covers it."""

    def __init__(self, dsn: str, interval_s: float = 0.1) -> None:
        self._dsn = dsn
        self._interval = interval_s
        self._watch: asyncpg.Connection | None = None
        self._gen = 0  # which watch: a batch held under another one is unproven
        # (order, watch, write again, messages it releases)
        self._held: list[tuple[int, int, Again, frozenset[str]]] = []
        self._seq = 0
        self._down = False
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._retry_at = 0.0  # no new watch tried before then
        self._fence_until = 0.0  # no claims before then: a watch was lost
        # When the watch was connected (monotonic); before the first, "ever": any restart of
        # the server is then one this instance did not see.
        self._opened_at = float("-inf")
        self._rewrite_logged = False  # "wrote again": once per outage
        self.flushes = 0
        self.rewritten = 0

    @property
    def held(self) -> int:
        return len(self._held)

    def _up(self) -> bool:
        up = self._watch is not None and not self._watch.is_closed()
        if not up and self._watch is not None:
            # Lost (asyncpg sees the server end the connection as it happens): fence claims.
            self._watch = None
            self._fence_until = time.monotonic() + FENCE_S
        return up

    async def ready(self) -> None:
        """Before a batch commits, and before a claim: a watch, so that the next flush alone
        proves the batch, and so that a crash of the server is seen (see FENCE_S). A
        batch held with none is written again, which in normal running would be a second
        transaction on the rows the dispatcher and the receipts are busy with (it deadlocked
        with them once, retried)."""
        if self._up() or time.monotonic() < self._retry_at:
            return
        async with self._lock:
            if not self._up():
                with contextlib.suppress(Exception):  # none to be had: written again later
                    await self._reconnect()

    def gen(self) -> int:
        """The watch a batch committed now is under (-1: none); read before its commit."""
        return self._gen if self._up() else -1

    def hold(
        self, again: Again, gen: int | None = None, releases: frozenset[str] = frozenset()
    ) -> None:
        """`again` (durable) writes once more what was just committed without the flush, under
        watch `gen` (`gen()` read before the commit; by default, now); `releases`: the messages
        it put back in the queue."""
        self._seq += 1
        self._held.append((self._seq, self.gen() if gen is None else gen, again, releases))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def releasing(self) -> set[str]:
        """Messages whose release is held: not to be claimed by this instance until confirmed."""
        return {m for h in self._held for m in h[3]}

    def unsure(self) -> bool:
        """Whether a held batch may have been lost: its watch is gone, or it was committed
        under an earlier one."""
        if not self._held:
            return False
        return not self._up() or any(h[1] != self._gen for h in self._held)

    async def settle(self) -> bool:
        """Before a claim: a batch the server may have lost is written again first, and a held
        release is confirmed (so the message it put back can be claimed again). False while
        claims are fenced (a watch was lost less than FENCE_S ago: other instances may hold
        results the server lost). Raises only while a batch the server may have lost is not
        written again: with no watch to be had but the pool working (the server refusing one
        more connection), the batches are written again and the claim goes on."""
        if self.unsure() or self.releasing():
            try:  # a release held: confirmed first (one flush), then it is claimed normally
                await self.confirm()
            except Exception:
                if self.unsure():
                    raise
        elif not self._up() and time.monotonic() >= self._retry_at:
            await self.ready()  # the fence starts from a watch lost while nothing was held
        return time.monotonic() >= self._fence_until

    async def _run(self) -> None:
        while self._held:
            await asyncio.sleep(DOWN_RETRY_S if self._down else self._interval)
            n = len(self._held)
            try:
                await self.confirm()
                self._down = False
                self._rewrite_logged = False
            except Exception as exc:
                if not self._down and self._held:  # once per failure, without a traceback
                    level = logging.WARNING if is_unavailable(exc) else logging.ERROR
                    log.log(
                        level,
                        "confirming %d submit-result and webhook batches failed (%s: %s); "
                        "%d still held, written again once the store answers",
                        n,
                        type(exc).__name__,
                        _first_line(exc),
                        len(self._held),
                    )
                    self._down = True

    async def confirm(self) -> None:
        """Write again what the server may have lost, flush on the watch, drop what the flush
        covered. Raises what the store raised (what was not written again stays held)."""
        async with self._lock:  # the loop and a claim's settle may both get here
            if not self._up():
                try:
                    if time.monotonic() < self._retry_at:  # not a try per claim or batch
                        raise ConnectionError("no watch: the last try failed under a second ago")
                    await self._reconnect()
                except Exception:
                    # No watch: the server is away, or refuses one more connection while the
                    # pool still works. Each held batch is written again durably, so what is
                    # held stays bounded either way.
                    with contextlib.suppress(Exception):
                        await self._write_again(list(self._held))
                    raise
            await self._write_again([h for h in self._held if h[1] != self._gen])
            upto = self._seq
            watch = self._watch
            assert watch is not None
            try:
                async with asyncio.timeout(FLUSH_TIMEOUT_S):
                    await watch.execute(_FLUSH)
            except BaseException:
                watch.terminate()  # the next confirm opens a new watch: held batches unproven
                raise
            self.flushes += 1
            self._held = [h for h in self._held if h[0] > upto]

    async def _write_again(self, batches: list[tuple[int, int, Again, frozenset[str]]]) -> None:
        """Each batch once more, in order, durably: then it needs no flush."""
        if not batches:
            return
        for seq, _gen, write, _rel in batches:
            await write()
            self._held = [h for h in self._held if h[0] != seq]
            self.rewritten += 1
        if not self._rewrite_logged:  # once per outage: without a watch, every batch is
            self._rewrite_logged = True
            log.info(
                "wrote %d submit-result and webhook batches again (the store may have lost them)",
                len(batches),
            )

    async def _reconnect(self) -> None:
        lost = self._gen > 0  # a watch was had before (a watch exists only after a connect)
        opened_before = self._opened_at
        if self._watch is not None:
            self._watch.terminate()
            self._watch = None
        try:
            self._watch = await asyncpg.connect(
                self._dsn,
                timeout=FLUSH_TIMEOUT_S,
                server_settings=session_settings("smpp-bridge-confirm"),
            )
        except Exception:
            self._retry_at = time.monotonic() + 1.0
            raise
        self._gen += 1
        self._opened_at = time.monotonic()
        age = await self._server_age()
        now = time.monotonic()
        if not lost:
            self._rewrite_logged = False
        if age is not None and age < now - opened_before:
            # The server (re)started since the last watch opened, or before the first (an
            # instance started during an outage saw no crash): the others wrote again what it
            # lost soon after its start, so the fence runs from then, not from now (an idle
            # instance, its binds down meanwhile, reconnects at its first claim seconds later).
            self._fence_until = now + max(0.0, FENCE_S - age)
        elif lost:  # no restart seen (a partition, a failover): claims wait from now
            self._fence_until = max(self._fence_until, now + FENCE_S)

    async def _server_age(self) -> float | None:
        """Seconds since the server (re)started, on the watch; None if unread (the watch
        stands: a lost one is seen at its next use)."""
        assert self._watch is not None
        try:
            age = await self._watch.fetchval(_SERVER_AGE, timeout=FLUSH_TIMEOUT_S)
        except Exception as exc:
            log.debug("server start time unread: %s", _first_line(exc))
            return None
        return None if age is None else float(age)

    async def close(self) -> None:
        """A last flush for what is held; the loop stops and the watch closes. Within
        FLUSH_TIMEOUT_S in all: in a partition the loop's statement (its rollback) and the last
        confirm would each wait for the server for as long as it lasts."""
        task, self._task = self._task, None
        done = False
        try:
            async with asyncio.timeout(FLUSH_TIMEOUT_S):
                if task is not None:
                    task.cancel()
                    await asyncio.wait({task})
                if self._held:
                    await self.confirm()
                done = True
        except Exception as exc:
            if self._held:  # written again durably without a watch: nothing at risk
                log.warning(
                    "%d submit-result and webhook batches unconfirmed at close (%s): a crash "
                    "of the server now may lose them, and their messages go out again (their "
                    "reports are posted again)",
                    len(self._held),
                    type(exc).__name__,
                )
        if self._watch is not None:
            watch, self._watch = self._watch, None
            if done:  # the server answers: a graceful goodbye
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(1.0):
                        await watch.close()
            watch.terminate()


def _first_line(exc: BaseException) -> str:
    """asyncpg's text runs on with DETAIL and HINT lines; a log line is one line."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else "no detail"
