"""Connections and transactions for the PostgreSQL engine: one asyncpg pool, explicit BEGIN/COMMIT.

Why not `conn.transaction()`: writes that need not wait for the WAL flush (`durable=False`:
claims, heartbeats, webhook bookkeeping, and submit results, which bridge/store/postgres_confirm.py
holds until a flush confirms them) run here with `synchronous_commit = off`, set in the same round
trip as the BEGIN; asyncpg's transaction object would need a second one. Durable writes (accepts,
receipts) keep the server's default (on), so a 202 is only sent after the WAL reached disk;
PostgreSQL itself groups the flushes of concurrent commits, which is what the SQLite engine's
group commit does by hand.

Why retries: instances race on the same rows (a receipt on one instance, the submit result of the
same message on another). Every transaction takes its locks in one global order (advisory keys,
then messages by id, then segments), but a deadlock or serialization failure remains possible in
corners; such a transaction is rolled back whole and run again, which is safe because every job is
a function of its arguments and the database only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import asyncpg

from bridge.store.base import is_unavailable
from bridge.store.postgres_arrays import as_literals

log = logging.getLogger("bridge.store")

T = TypeVar("T")
Job = Callable[[asyncpg.Connection], Awaitable[T]]

_BEGIN = "BEGIN"
_BEGIN_ASYNC = "BEGIN; SET LOCAL synchronous_commit TO off"
RETRYABLE = (asyncpg.exceptions.DeadlockDetectedError, asyncpg.exceptions.SerializationError)
ATTEMPTS = 8
# How long a COMMIT or ROLLBACK under way is waited for once its task is cancelled.
END_AFTER_CANCEL_S = 5.0
# The bound on a statement's answer: asyncpg's `command_timeout` of the pool's connections.
COMMAND_TIMEOUT_S = 60.0
# How long a connection of the pool past its floor may sit idle before it is closed: asyncpg's
# `max_inactive_connection_lifetime` (its default), kept by StorePool's sweep (session 60).
IDLE_LIFETIME_S = 300.0
_monotonic = time.monotonic


async def _no_reset(_conn: asyncpg.Connection) -> None:
    """Pool release hook: our sessions change no settings (only SET LOCAL, and array_nulls once
    at the start: _ARRAY_NULLS_ON), hold no session locks and LISTEN nowhere, so the default
    RESET ALL round trip per release is skipped. An open transaction is still rolled back by
    asyncpg before this runs."""


# TCP keepalives and a send time-out on the server's side of every session. A client that
# vanishes without a FIN or RST (a partition, a host that lost power) leaves its backend alive,
# holding what it locked: a coordination session its bind slots (no instance may bind them), a
# transaction an account's row (that account's sends wait). With the kernel's defaults the server
# notices after about two hours; with these, within about a minute (30 s idle + 3 probes 10 s
# apart; 60 s for data the client never acknowledges). Each is a user-settable parameter:
# no privilege needed, and ignored on a Unix socket.
KEEPALIVES: dict[str, str] = {
    "tcp_keepalives_idle": "30",
    "tcp_keepalives_interval": "10",
    "tcp_keepalives_count": "3",
    "tcp_user_timeout": "60000",
}


def session_settings(application_name: str) -> dict[str, str]:
    """`server_settings` of every connection this daemon opens."""
    return {"application_name": application_name, **KEEPALIVES}


# The array parameters sent as literals (postgres_arrays) write SQL's NULL as an unquoted NULL,
# which the server reads as NULL only while `array_nulls` is on: its default, but a deprecated
# compatibility setting a database or role may turn off, and then every billed write was refused
# (a ledger entry's NULL expiry: invalid input syntax for type bigint) and a frequency rule's
# NULL sign read as the text 'NULL'. Set by each pool connection once, when it is opened
# (user-settable, no privilege needed), rather than as a startup parameter: a pooler in session
# mode (PgBouncer) refuses a startup parameter it does not know unless told to ignore it, and a
# deployment that lists the keepalives there would not have connected after an upgrade.
_ARRAY_NULLS_ON = "SET array_nulls = on"


class _PoolFloorFilter(logging.Filter):
    """asyncpg's pool logs "Failed to restore the pool connection floor" with a traceback each
    time it tries while the server is down (every few seconds of an outage). The failure of
    the environment is kept, one line per 10 s with its error, without the traceback."""

    def __init__(self) -> None:
        super().__init__()
        self._last = -1e9

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None or not is_unavailable(exc):
            return True
        now = time.monotonic()
        if now - self._last < 10.0:
            return False
        self._last = now
        record.msg = f"{record.getMessage()}: {type(exc).__name__}: {exc}"
        record.args, record.exc_info, record.exc_text = None, None, None
        return True


def _quiet_pool_floor() -> None:
    pool_log = logging.getLogger("asyncpg.pool")
    if not any(isinstance(f, _PoolFloorFilter) for f in pool_log.filters):
        pool_log.addFilter(_PoolFloorFilter())


class StoreConnection(asyncpg.Connection):
    """A connection of a store's pool: it knows that store's zone of the daily quota's days
    (`quota_zone`, PostgresStore.quota_tz as configure_store last set it), which the roll-up
    asks of it (postgres_pipeline.quota_tz) rather than of every caller that may end messages
    unsent. No __slots__, so the pool's init can attach it.

    Its statements note when they start (`began`, and the protocol's count of queries then:
    `began_n`) for the _Deadline of the transaction or call they run in."""

    quota_zone: Callable[[], str]
    idle_at: float | None = None  # back in the pool since (monotonic); None: kept as its floor
    began: float = 0.0
    began_n: int = 0
    timed: Any = None  # asyncpg's configuration of the connection, command_timeout set
    untimed: Any = None  # the same without it: no timer of asyncpg's a statement

    # Array parameters as literals (postgres_arrays.as_literals, session 57): asyncpg checks a
    # list and each element against three collections.abc ABCs (~5 k instructions an element),
    # 40% of the owner's steps' instructions on PostgreSQL at 50 messages a batch. A statement
    # without such a parameter is looked up once (cached by its text) and sent as it is. Plain
    # functions handing back asyncpg's coroutine: no frame of their own in each await.
    def execute(
        self, query: str, *args: Any, timeout: float | None = None
    ) -> Coroutine[Any, Any, str]:
        self.began, self.began_n = _monotonic(), self._protocol.queries_count
        if args:
            query, args = as_literals(query, args)
        return super().execute(query, *args, timeout=timeout)

    def fetch(self, query: str, *args: Any, **kw: Any) -> Coroutine[Any, Any, list[Any]]:
        self.began, self.began_n = _monotonic(), self._protocol.queries_count
        query, args = as_literals(query, args)
        return super().fetch(query, *args, **kw)

    def fetchrow(self, query: str, *args: Any, **kw: Any) -> Coroutine[Any, Any, Any]:
        self.began, self.began_n = _monotonic(), self._protocol.queries_count
        query, args = as_literals(query, args)
        return super().fetchrow(query, *args, **kw)

    def fetchval(self, query: str, *args: Any, **kw: Any) -> Coroutine[Any, Any, Any]:
        self.began, self.began_n = _monotonic(), self._protocol.queries_count
        query, args = as_literals(query, args)
        return super().fetchval(query, *args, **kw)


class _Deadline:
    """asyncpg's `command_timeout` for the statements of one transaction (run_tx), one read
    (run_reads) or one of the pool's calls, with one timer for all of them (session 59).

    Why: asyncpg arms a timer for every statement (`loop.call_later` as it sends, a cancel as
    the answer comes, the cancelled handle left in the loop's heap until it is cleaned out):
    ~30 k instructions a round trip under asyncio's own loop, 3.5% of an accept grouped with
    others (one statement an accept) and 5% of the owner's steps. Here the connection runs the
    section with a configuration without `command_timeout` (`untimed`: asyncpg reads it as each
    statement starts) and one timer watches: when it comes due, it looks at the statement the
    connection started last (StoreConnection.began) and, if that is younger than the bound,
    comes back at its end. A statement that is COMMAND_TIMEOUT_S old still under way is then
    ended as asyncpg's timer ended it: the configuration with the bound is put back first (so
    asyncpg's cancel request and the wait for it before the ROLLBACK are bounded by it as
    before), the task is cancelled (asyncpg sends the server the cancel, as on its own timer),
    the transaction rolls back, and the caller gets TimeoutError (timed_out): the same error, the
    store unavailable (is_unavailable), a 503 with Retry-After for an accept.

    A statement the wrappers do not note (a cursor's FETCH, executemany) shows in the protocol's
    count of queries: the timer then counts from the moment it saw it (later than the statement
    began: such a statement is given at most twice the bound, never less than before)."""

    __slots__ = ("_base", "_con", "_handle", "_loop", "_task", "fired")

    def __init__(self, proxy: Any) -> None:
        con = proxy._con  # the pool's proxy: its connection
        loop = asyncio.get_running_loop()
        self._task = task = asyncio.current_task(loop)
        self._con, self._loop, self.fired = con, loop, False
        self._base = task.cancelling() if task is not None else 0
        if task is None or getattr(con, "untimed", None) is None:  # not a store's pool's
            self._handle = None
            return
        con._config = con.untimed
        con.began, con.began_n = _monotonic(), con._protocol.queries_count
        self._handle = loop.call_later(COMMAND_TIMEOUT_S, self._due)

    def _due(self) -> None:
        con, now = self._con, _monotonic()
        n = con._protocol.queries_count
        if n > con.began_n + 1:  # a statement not noted began since: as if now
            con.began, con.began_n = now, n - 1
        left = con.began + COMMAND_TIMEOUT_S - now
        if left > 0:
            self._handle = self._loop.call_later(left, self._due)
            return
        self._handle = None
        con._config = con.timed
        self.fired = True
        assert self._task is not None
        self._task.cancel()

    def end(self) -> None:
        """The section is over: the timer off, the connection's bound back."""
        handle = self._handle
        if handle is not None:  # armed, not fired (_due put the bound back when it fired)
            handle.cancel()
            self._handle = None
            self._con._config = self._con.timed

    def timed_out(self, exc: BaseException) -> bool:
        """`exc` is this deadline's cancel (then taken back from the task: the caller raises
        TimeoutError in its place), not one of the task's own."""
        if not self.fired or not isinstance(exc, asyncio.CancelledError):
            return False
        assert self._task is not None
        return self._task.uncancel() <= self._base


async def create_pool(
    dsn: str, *, min_size: int, max_size: int, quota_zone: Callable[[], str]
) -> asyncpg.Pool:
    _quiet_pool_floor()

    async def init(conn: asyncpg.Connection) -> None:
        conn.quota_zone = quota_zone  # a StoreConnection
        conn.idle_at = _monotonic()  # idle from its opening (StorePool's sweep)
        await conn.execute(_ARRAY_NULLS_ON)  # the array literals' NULL (_ARRAY_NULLS_ON)
        # Its configuration with and without command_timeout (_Deadline).
        conn.timed = conn._config
        conn.untimed = conn._config._replace(command_timeout=None)

    # asyncpg.create_pool's own defaults, given as its Pool requires them all.
    pool = await StorePool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        max_queries=50000,
        # Not asyncpg's timer a connection, armed at every release and cancelled at the next
        # acquire: StorePool's sweep closes idle connections after IDLE_LIFETIME_S instead.
        max_inactive_connection_lifetime=0.0,
        loop=None,
        connection_class=StoreConnection,
        record_class=asyncpg.Record,
        init=init,
        reset=_no_reset,
        command_timeout=COMMAND_TIMEOUT_S,
        server_settings=session_settings("smpp-bridge"),
    )
    assert pool is not None
    pool.sweep_later()
    return pool


class StorePool(asyncpg.Pool):
    """The pool's one-statement calls (outside run_tx), run again on another connection when
    the one handed out had been ended by the server while idle in the pool (`_ended_by_server`:
    the statement was not sent). Otherwise asyncpg's "another operation is in progress" failed
    the call: a 503, or a background step's ERROR line, for a session killed or timed out.

    Its release and the idle connections' lifetime (session 60). asyncpg's release runs the
    holder's release as a task of its own under `asyncio.shield` (a task, a future, a loop turn
    more) and then arms a timer of `max_inactive_connection_lifetime` for the connection, which
    the next acquire cancels (`loop.call_later` and the cancelled handle left in the loop's
    heap): per transaction or pool call. Here a connection that needs nothing done on release
    (open, not in a transaction, no cancel under way, not past `max_queries`, not expired) is
    put back by a callback in the turn of the loop where asyncpg's task would have put it, the
    releasing task going on when it would have (the same order of callers), and one timer for
    the whole pool (`_sweep`) closes a connection idle for IDLE_LIFETIME_S unless the pool is at
    its floor, as asyncpg's timer did; anything else goes through asyncpg's release as before."""

    _sweep_handle: asyncio.TimerHandle | None = None

    # Each as asyncpg's Pool does it (a connection acquired, the call, released), under a
    # _Deadline (session 59).
    async def execute(self, query: str, *args: Any, **kw: Any) -> str:
        return await _on_a_live_session(
            self, lambda: _bounded(self, lambda c: c.execute(query, *args, **kw))
        )

    async def executemany(self, command: str, args: Any, **kw: Any) -> None:
        await _on_a_live_session(
            self, lambda: _bounded(self, lambda c: c.executemany(command, args, **kw))
        )

    async def fetch(self, query: str, *args: Any, **kw: Any) -> list[Any]:
        return await _on_a_live_session(
            self, lambda: _bounded(self, lambda c: c.fetch(query, *args, **kw))
        )

    async def fetchval(self, query: str, *args: Any, **kw: Any) -> Any:
        return await _on_a_live_session(
            self, lambda: _bounded(self, lambda c: c.fetchval(query, *args, **kw))
        )

    async def fetchrow(self, query: str, *args: Any, **kw: Any) -> Any:
        return await _on_a_live_session(
            self, lambda: _bounded(self, lambda c: c.fetchrow(query, *args, **kw))
        )

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
        """asyncpg's release, less its "release() called on a free connection holder" when the
        server's close was read as the connection was being released: Pool.release checks the
        connection is handed out, then runs the holder's release as a task of its own, which
        starts a loop turn later; the close read in between (a shutdown, a killed backend just
        after a COMMIT) had asyncpg's cleanup hand the holder back already. Nothing was left to
        do, but the caller got an InternalClientError for a transaction that had committed
        (tests/integration/test_pg_release_race.py). The holder's part is _release_turn's now
        (session 60: see the class), which hands such a race to asyncpg's release."""
        holder: Any = getattr(connection, "_holder", None)
        con: Any = getattr(connection, "_con", None)
        if (
            type(connection) is not asyncpg.pool.PoolConnectionProxy
            or con is None
            or holder._pool is not self
            or not self._initialized
            or self._closed
        ):
            await self._asyncpg_release(connection, timeout)
            return
        # Pool.release's own part, now; the holder's in the next turn of the loop, where
        # asyncpg's task for it would run, and this task on again two turns later, as it came
        # back from asyncpg's shield: the order in which tasks get and use the connections is
        # asyncpg's (a pool of one serves its callers in the order they came).
        con._on_release()
        loop = self._loop
        done = loop.create_future()
        loop.call_soon(
            self._release_turn, holder, con, holder._timeout if timeout is None else timeout, done
        )
        try:
            await done
        except asyncpg.exceptions.InternalClientError as exc:
            if "free connection holder" not in str(exc):
                raise
            log.debug("store connection ended by the server as it was released")

    async def _asyncpg_release(self, connection: Any, timeout: float | None) -> None:  # noqa: ASYNC109
        holder: Any = getattr(connection, "_holder", None)
        con: Any = getattr(connection, "_con", None)
        if con is not None:
            # Before the holder is put back (a loop turn or more before this task goes on): a
            # sweep in between saw the time of its previous release and closed it at once.
            con.idle_at = _monotonic()
        try:
            await super().release(connection, timeout=timeout)
        except asyncpg.exceptions.InternalClientError as exc:
            if "free connection holder" not in str(exc):
                raise
            log.debug("store connection ended by the server as it was released")
        if con is not None and holder is not None and holder._con is con:
            con.idle_at = _monotonic()

    def _release_turn(
        self, holder: Any, con: Any, timeout: float | None, done: asyncio.Future[None]
    ) -> None:
        """The holder's release (asyncpg's PoolConnectionHolder.release), for a connection that
        needs nothing done (open, not in a transaction, no cancel under way, under
        `max_queries`, not expired) done here: its reset (_no_reset) included, without the
        task, and no idle timer armed (the pool's sweep). Anything else: asyncpg's, as a task."""
        loop = self._loop
        if (
            holder._in_use is not None
            and holder._con is con
            and not con.is_closed()
            and con._protocol.queries_count < holder._max_queries
            and holder._generation == self._generation
            and not con._protocol._is_cancelling()
            and not con._protocol.is_in_transaction()
            and con._top_xact is None
        ):
            holder._timeout = None
            con._listeners.clear()
            con._log_listeners.clear()
            con.idle_at = _monotonic()
            holder._release()
            loop.call_soon(_settle, done, None)
            return
        # Idle from now on, set while it is still handed out (the sweep passes it by): the
        # holder goes back inside asyncpg's release, `ended` a loop turn later, and a sweep in
        # between took the time of its previous release for its idle time (r1, session 60).
        con.idle_at = _monotonic()
        step = asyncio.ensure_future(holder.release(timeout))

        def ended(step: asyncio.Future[None]) -> None:
            exc = None if step.cancelled() else step.exception()
            if exc is None and holder._con is con:
                con.idle_at = _monotonic()
            _settle(done, exc)

        step.add_done_callback(ended)

    async def _acquire(self, timeout: float | None) -> Any:  # noqa: ASYNC109
        """asyncpg's acquire, in this coroutine for a connection the queue has ready (open, of
        the pool's generation): what its `_acquire_impl`, the queue's `get` and the holder's
        `acquire` do then, without their three coroutines. Neither awaits anything for such a
        connection, so the order in which callers get connections is asyncpg's. Anything else
        (a time-out given, an empty queue, a holder to connect) is asyncpg's own."""
        queue = self._queue
        if (
            timeout is None
            and queue is not None
            and not self._closing
            and self._initialized
            and not self._closed
            and not queue.empty()
        ):
            holder = queue.get_nowait()
            con = holder._con
            if (
                con is not None
                and holder._generation == self._generation
                and not con.is_closed()
                and holder._setup is None
                and holder._inactive_callback is None
            ):
                holder._proxy = proxy = asyncpg.pool.PoolConnectionProxy(holder, con)
                holder._in_use = self._loop.create_future()
                holder._timeout = None
                return proxy
            try:  # as asyncpg's _acquire_impl with the holder it got
                proxy = await holder.acquire()
            except (Exception, asyncio.CancelledError):
                queue.put_nowait(holder)
                self._schedule_min_size_maintenance()
                raise
            holder._timeout = timeout
            return proxy
        return await super()._acquire(timeout)

    def sweep_later(self, at: float | None = None) -> None:
        """The sweep's timer, at `at` (monotonic) or IDLE_LIFETIME_S from now."""
        loop = self._loop
        delay = IDLE_LIFETIME_S if at is None else max(0.0, at - _monotonic())
        self._sweep_handle = loop.call_later(delay, self._sweep)

    def _sweep(self) -> None:
        """asyncpg's `_deactivate_inactive_connection` for each connection idle for
        IDLE_LIFETIME_S, the oldest first: closed (terminate: it is idle) unless the pool is at
        its floor, where it is kept until its next use (as asyncpg's timer, not armed again).
        Then again at the next connection's due time, or IDLE_LIFETIME_S from now."""
        self._sweep_handle = None
        if self.is_closing():
            return
        now, first = _monotonic(), None
        # Armed again whatever happens here, and a close that raises (logged) does not keep the
        # others from theirs: asyncpg's timer a connection lost one check; the pool's one sweep
        # stopped for good, no connection past the floor closed as idle again (r1, session 60).
        try:
            idle = []
            for holder in self._holders:
                con = holder._con
                at = getattr(con, "idle_at", None)
                if con is not None and holder._in_use is None and at is not None:
                    idle.append((at, id(holder), holder))
            for at, _id, holder in sorted(idle):
                con = holder._con
                due = at + IDLE_LIFETIME_S
                if due > now:
                    first = due if first is None else min(first, due)
                elif holder.is_connected() and self.get_size() <= self.get_min_size():
                    con.idle_at = None  # the floor's: no further checks until it is used again
                else:
                    try:
                        con.terminate()
                    except Exception:
                        log.exception("store pool: closing an idle connection failed")
        finally:
            self.sweep_later(first)

    def _stop_sweep(self) -> None:
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None

    async def close(self) -> None:
        self._stop_sweep()
        await super().close()

    def terminate(self) -> None:
        self._stop_sweep()
        super().terminate()


def _settle(done: asyncio.Future[None], exc: BaseException | None) -> None:
    """The releasing task's wait ended (unless it was cancelled meanwhile, as under a shield)."""
    if not done.done():
        if exc is None:
            done.set_result(None)
        else:
            done.set_exception(exc)


async def _bounded(pool: asyncpg.Pool, job: Job[T]) -> T:
    """`job(conn)` on a connection of the pool, its statements under one _Deadline."""
    async with pool.acquire() as conn:
        deadline = _Deadline(conn)
        try:
            return await job(conn)
        except asyncio.CancelledError as exc:
            if deadline.timed_out(exc):
                raise TimeoutError from None
            raise
        finally:
            deadline.end()


async def _on_a_live_session(pool: asyncpg.Pool, call: Callable[[], Awaitable[T]]) -> T:
    """Again while the connection handed out is one the server ended (aborted by asyncpg as it
    raised, so the pool hands out another, or opens one): at most once per session of the
    pool, then a new connection's try, which a server going down fails to connect."""
    for _ in range(pool.get_max_size()):
        try:
            return await call()
        except (asyncpg.exceptions.InternalClientError, asyncpg.InterfaceError) as exc:
            if not _ended_by_server(exc):
                raise
            log.debug("store statement run again on another connection: %s", exc)
    try:
        return await call()
    except (asyncpg.exceptions.InternalClientError, asyncpg.InterfaceError) as exc:
        if not _ended_by_server(exc):
            raise
        raise _lost(exc) from exc


async def end_tx(conn: asyncpg.Connection, sql: str) -> None:
    """COMMIT or ROLLBACK, seen through to its end when the task is cancelled meanwhile; the
    cancel is passed on after. A stop cancels the store's loops, and a second cancel can land
    on the ROLLBACK of the first: cut short there, the connection went back to the pool inside
    its transaction. asyncpg rolls it back on release, but logs "Resetting connection with an
    active transaction" at ERROR: a false alarm in a graceful stop."""
    step = asyncio.ensure_future(conn.execute(sql))
    try:
        await asyncio.shield(step)
    except asyncio.CancelledError:
        deadline = time.monotonic() + END_AFTER_CANCEL_S
        while not step.done() and (left := deadline - time.monotonic()) > 0:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait({step}, timeout=left)
        if not step.done():
            # A server that stopped answering: the session is ended here. Cancelled instead
            # (asyncpg then waits for the server to confirm the cancel), the pool's release
            # waited as long, the connection neither back nor closed (a pool of one: stuck).
            _end_session(conn)
            step.add_done_callback(_retrieved)
        elif not step.cancelled():
            step.exception()  # retrieved: the cancel is what the caller sees
        raise


def _end_session(conn: asyncpg.Connection) -> None:
    """Closed at once, the server's side rolling back. A connection already closed under its
    pool's proxy (its close read) was handed back by asyncpg, the proxy detached: nothing to do."""
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


def _retrieved(step: asyncio.Future[Any]) -> None:
    if not step.cancelled():
        step.exception()  # the connection closed under it: expected, not worth a log line


def _ended_by_server(exc: BaseException) -> bool:
    """A statement refused, before it was sent, on a session the server ended while no
    statement was under way (a shutdown, pg_terminate_backend, an idle time-out):
    - asyncpg's "cannot switch to state N; another operation (M) is in progress": not two
      operations on one connection (each of ours is used by one task at a time). The FATAL
      was read (between two statements, or while the connection sat in the pool), its close
      not yet: the protocol is still "consuming" it. asyncpg aborts the connection as it
      raises (tests/integration/test_pg_fatal_between_statements.py).
    - "connection has been released back to the pool": the close was read too, and asyncpg
      handed the connection back, detaching the proxy its user still held."""
    text = str(exc)
    if isinstance(exc, asyncpg.exceptions.InternalClientError):
        return text.startswith("cannot switch to state") and "another operation" in text
    return isinstance(exc, asyncpg.InterfaceError) and "released back to the pool" in text


def _lost(exc: BaseException) -> asyncpg.ConnectionDoesNotExistError:
    """What a connection lost mid-statement raises (the store unavailable, a log line
    saying so), in place of asyncpg's misleading "another operation is in progress"."""
    return asyncpg.ConnectionDoesNotExistError(
        "the server closed the connection between two statements (a shutdown, or its "
        f"session ended); the next one was not sent ({exc})"
    )


async def run_tx(pool: asyncpg.Pool, job: Job[T], *, durable: bool = True) -> T:
    """Run `job(conn)` in one transaction; commit, or roll back and re-raise. Deadlocks and
    serialization failures are retried (the whole job) with a short jittered pause. So is a
    transaction whose session the server ended before its COMMIT was sent (rolled back with
    the session), on another connection: a killed backend, or an idle one timed out, fails
    nothing; every session of the pool ended at once (a shutdown) costs at most a try per
    session, none of them sent, then a new connection's, which fails if the server is away."""
    retries = 0
    ended = 0
    while True:
        async with pool.acquire() as conn:
            deadline = _Deadline(conn)  # the statements' bound (command_timeout), one timer
            try:
                try:
                    # Inside: a cancel while the BEGIN is under way leaves the session in the
                    # transaction it opened, which must be rolled back here too.
                    await conn.execute(_BEGIN if durable else _BEGIN_ASYNC)
                    result = await job(conn)
                except BaseException as exc:
                    if not _ended_by_server(exc):
                        with contextlib.suppress(Exception):
                            await end_tx(conn, "ROLLBACK")  # else the pool's release does
                        if isinstance(exc, RETRYABLE) and retries + 1 < ATTEMPTS:
                            retries += 1
                            log.info("store transaction retried after %s", type(exc).__name__)
                            await asyncio.sleep(0.002 * retries)
                            continue
                        raise
                    failed = exc
                else:
                    try:
                        await end_tx(conn, "COMMIT")
                        return result
                    except (asyncpg.exceptions.InternalClientError, asyncpg.InterfaceError) as exc:
                        if not _ended_by_server(exc):
                            raise
                        failed = exc  # the COMMIT was not sent: rolled back with the session
            except asyncio.CancelledError as exc:
                # The deadline's (a statement, the ROLLBACK or the COMMIT past the bound):
                # rolled back, as asyncpg's TimeoutError left it.
                if deadline.timed_out(exc):
                    raise TimeoutError from None
                raise
            finally:
                deadline.end()
            _end_session(conn)  # never back to the pool alive, nor a ROLLBACK on it
        ended += 1
        if ended > pool.get_max_size():
            raise _lost(failed) from failed
        log.debug("store transaction run again on another connection: %s", failed)


async def run_reads(pool: asyncpg.Pool, job: Job[T]) -> T:
    """Run `job(conn)`, reads on one connection outside a transaction (each statement its own
    snapshot, as the pool's one-statement calls), all again on another connection when the
    server had ended the session before one of them was sent: reads change nothing, so
    running them twice is safe. As often as run_tx, then the store is unavailable."""

    return await _on_a_live_session(pool, lambda: _bounded(pool, job))


def scalar(value: Any) -> int:
    """COUNT/SUM results as int (SUM over BIGINT is NUMERIC in PostgreSQL)."""
    return int(value or 0)
