"""Cross-instance coordination on PostgreSQL: liveness, bind ownership, wake-ups.

One dedicated connection per daemon instance holds session-level advisory locks:

- the instance lock (NS_INSTANCE, hashtext(instance)): "this instance is alive". Other instances
  take back the claims of an instance whose lock is free and whose heartbeat is old
  (postgres_pipeline.requeue_claims), so a kill -9 costs seconds, not a lease.
- one lock per (SMSC, bind slot) (NS_BIND, hashtext("<smsc>#<slot>")): a carrier allows a limited
  number of binds per system_id, so the configured `binds` of an SMSC are shared by every
  instance. A connector opens bind `slot` only while this instance holds that slot's lock
  (`SlotGate`, given to the connector as its `bind_gate`). The locks live as long as the
  connection: an instance that stops or dies releases its slots at once and the others take them
  over at their next poll (every `poll_s`).

- the lane lock (NS_LANE, server.instance), with server.instances > 1: found held, another live
  instance has this one's number, and so its lane of concatenation references; logged (below).

Fair share: while more instances are live, an instance takes at most ceil(slots / instances) of an
SMSC's slots; a slot nobody else took within `grace_s` is taken anyway, so no slot stays idle.
An instance holding more than its share while another live instance holds less than
floor(slots / instances) gives one slot up per poll (its bind drains and unbinds first, then
the lock is released), so binds spread out again after a restart or a late start. When there
are more instances than slots nobody is short, and nothing moves.

The same connection LISTENs on a channel: an instance that accepted work NOTIFYs it (coalesced,
at most one per `notify_interval_s`), and every other instance wakes its dispatcher, so one
whose binds are idle starts sending without waiting for its poll.

If the connection is lost, every slot is treated as lost at once: the connectors see `keep()`
turn False and unbind (within about 4 s). The coordinator reconnects with back-off and takes no
slot for `grace_s` after reconnecting: when the server itself restarted, every instance lost its
locks at the same moment, and each must have closed its binds before any rebinds.

Every query on the connection has a time-out (`op_timeout_s`), and one that runs out counts as a
lost connection: on a partition (no RST) a query in flight would otherwise wait for TCP's own
time-out (many minutes) holding the connection's lock, so the ping never ran and the binds stayed
up while the server, after its keepalives, gave the locks to the others. An instance so learns of
a lost connection within `poll_s + op_timeout_s` and has unbound about 5 s later.

The server releases a dead session's locks as soon as it notices, but the process behind it may
be alive and still bound (a partition, a killed backend) until it notices too. So a slot this
instance last saw held by a session that is gone is taken only `orphan_s` after it was first seen
free (that worst case plus a margin). An instance that stops cleanly (its connectors unbound
first) says so on RELEASE_CHANNEL before closing, and its slots are taken at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable

import asyncpg

from bridge.aio import cancel_and_wait, wait_event
from bridge.store.postgres_pipeline import NS_BIND, NS_INSTANCE, NS_LANE
from bridge.store.postgres_tx import session_settings

log = logging.getLogger("bridge.coord")

CHANNEL = "smpp_bridge_work"
RELEASE_CHANNEL = "smpp_bridge_release"  # payload: instance; "my binds are all closed"
_CLEAN_MEMORY_S = 60.0  # how long a clean stop's pid is remembered (pids are reused)
_UNBIND_S = 6.0  # a connector's slot check (0.5 s) + drain and unbind (<= 4 s) + margin
_LANE_WARN_EVERY_S = 600.0  # a shared server.instance number is logged again this often
# InternalClientError: the connection read the server's FATAL (a shutdown) before its close; a
# ping that raised it killed the watcher, which then never reconnected and kept its binds up
# with their slot locks gone (session 16's third review).
_NET_ERRORS = (
    asyncpg.PostgresError,
    OSError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    TimeoutError,
)

_HOLDERS = f"""
WITH db AS (SELECT oid FROM pg_database WHERE datname = current_database()),
live AS (
    SELECT pid FROM pg_locks, db WHERE locktype = 'advisory' AND granted AND objsubid = 2
    AND classid = {NS_INSTANCE}::oid AND database = db.oid
)
SELECT s.slot, l.pid, (SELECT array_agg(pid) FROM live) AS live
FROM unnest($1::text[], $2::int[]) AS s(k, slot)
LEFT JOIN pg_locks l ON l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
    AND l.classid = {NS_BIND}::oid AND l.objid = hashtext(s.k)::oid
    AND l.database = (SELECT oid FROM db)
"""

_SLOT = f"""
WITH db AS (SELECT oid FROM pg_database WHERE datname = current_database())
SELECT
    (SELECT l.pid FROM pg_locks l, db WHERE l.locktype = 'advisory' AND l.granted
        AND l.objsubid = 2 AND l.classid = {NS_BIND}::oid AND l.objid = hashtext($1)::oid
        AND l.database = db.oid LIMIT 1) AS holder,
    (SELECT array_agg(l.pid) FROM pg_locks l, db WHERE l.locktype = 'advisory' AND l.granted
        AND l.objsubid = 2 AND l.classid = {NS_INSTANCE}::oid AND l.database = db.oid) AS live
"""


def slot_groups(bind_mode: str, binds: int) -> list[list[int]]:
    """Slots shared out separately: transmitters and receivers of a transmitter_receiver SMSC
    are two groups (an instance with only receivers could not send); slot numbers are the
    connector's bind indexes."""
    if bind_mode == "transmitter_receiver":
        return [list(range(binds)), list(range(binds, 2 * binds))]
    return [list(range(binds))]


class SlotGate:
    """The connector's view of one SMSC's bind slots (bridge.smpp.connector.BindGate)."""

    def __init__(self, coord: Coordinator, smsc: str, bind_mode: str, binds: int) -> None:
        self._coord = coord
        self.smsc = smsc
        self.groups = slot_groups(bind_mode, binds)
        coord.gates[smsc] = self

    async def acquire(self, slot: int) -> bool:
        group = next((g for g in self.groups if slot in g), [slot])
        return await self._coord.acquire(self.smsc, slot, group)

    def keep(self, slot: int) -> bool:
        return self._coord.holds(self.smsc, slot)


class Coordinator:
    def __init__(
        self,
        dsn: str,
        instance: str,
        *,
        on_work: Callable[[], None] | None = None,
        poll_s: float = 2.0,
        grace_s: float | None = None,
        notify_interval_s: float = 0.005,
        op_timeout_s: float | None = None,
        orphan_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        lane: int | None = None,
    ) -> None:
        self.dsn = dsn
        self.instance = instance
        # server.instance, when the fleet draws concatenation references from lanes
        # (server.instances > 1). Two live instances with one number draw from one lane, whose
        # random starts are 256 / instances wide: more collisions than with no lanes at all.
        # Nothing stops either (refusing would turn a misconfiguration into an outage at the
        # next restart); the lock only finds the second one, which says so in its log.
        self.lane = lane
        self.lane_held = lane is None
        self._lane_warned_at: float | None = None
        self.on_work = on_work
        self.poll_s = poll_s
        self.grace_s = 3 * poll_s if grace_s is None else grace_s
        self.notify_interval_s = notify_interval_s
        self.op_timeout_s = max(1.0, poll_s) if op_timeout_s is None else op_timeout_s
        # The longest a live holder whose session died may still be bound: it learns of the loss
        # within a poll plus a query time-out, then unbinds.
        self.orphan_s = poll_s + self.op_timeout_s + _UNBIND_S if orphan_s is None else orphan_s
        self._clock = clock
        self._conn: asyncpg.Connection | None = None
        # The server pid of the session given up last: after a partition the server may still
        # keep it, with the instance lock and its bind slots (see _connect).
        self._old_pid: int | None = None
        self._lock = asyncio.Lock()  # one operation at a time on the connection
        self._held: set[tuple[str, int]] = set()
        self._yielding: set[tuple[str, int]] = set()  # being given up: unbinding, still locked
        self.gates: dict[str, SlotGate] = {}
        self._declined: dict[tuple[str, int], float] = {}
        self._seen: dict[tuple[str, int], int] = {}  # slot -> pid of its holder when last seen
        self._orphaned: dict[tuple[str, int], float] = {}  # slot -> first seen free, holder gone
        self._clean: dict[int, float] = {}  # pid -> when it announced a clean stop
        self._healthy = False
        self._dirty = False
        self._notifier: asyncio.Task[None] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._lost_event = asyncio.Event()
        self._settle_until = 0.0  # after a reconnect: no slots until the others unbound
        self._stopping = False
        self.wakes = 0  # notifications received from other instances
        self.losses = 0

    # -- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and take the instance lock; fails if the database is unreachable."""
        await self._connect()
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="pg-coord")

    async def stop(self) -> None:
        """Close the connection: every lock this instance holds is released with it. Call after
        the connectors stopped (their binds are closed), so no slot is ever bound twice."""
        self._stopping = True
        # A cancel of this stop itself, arriving meanwhile, is passed on (see cancel_and_wait).
        await cancel_and_wait([t for t in (self._watcher, self._notifier) if t is not None])
        conn, self._conn = self._conn, None
        if conn is not None and self._healthy and self._held:
            # Our binds are closed: the others need not wait for us to unbind (see orphan_s).
            with contextlib.suppress(Exception):
                await conn.execute(
                    "SELECT pg_notify($1, $2)",
                    RELEASE_CHANNEL,
                    self.instance,
                    timeout=self.op_timeout_s,
                )
        self._healthy = False
        self._held.clear()
        self._yielding.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await conn.close()

    @property
    def healthy(self) -> bool:
        return self._healthy

    def gate(self, smsc: str, bind_mode: str, binds: int) -> SlotGate:
        return SlotGate(self, smsc, bind_mode, binds)

    def held(self, smsc: str | None = None) -> list[tuple[str, int]]:
        return sorted(k for k in self._held if smsc is None or k[0] == smsc)

    # -- bind slots -----------------------------------------------------------------------------

    def holds(self, smsc: str, slot: int) -> bool:
        key = (smsc, slot)
        return self._healthy and key in self._held and key not in self._yielding

    async def acquire(self, smsc: str, slot: int, group: list[int]) -> bool:
        """True when this instance holds the slot (taking it now if it is free and within this
        instance's fair share, or free for longer than the grace period)."""
        key = (smsc, slot)
        async with self._lock:
            conn = self._conn
            if not self._healthy or conn is None or self._clock() < self._settle_until:
                return False
            t = self.op_timeout_s
            try:
                if key in self._yielding:  # our bind on it is closed now: let it go
                    await conn.execute(
                        "SELECT pg_advisory_unlock($1, hashtext($2))",
                        NS_BIND,
                        f"{smsc}#{slot}",
                        timeout=t,
                    )
                    self._yielding.discard(key)
                    self._held.discard(key)
                    self._declined[key] = self._clock()  # not ours again before the grace
                    log.info("bind slot released", extra={"smsc": smsc, "bind": slot})
                    return False
                if key in self._held:
                    return True
                row = await conn.fetchrow(_SLOT, f"{smsc}#{slot}", timeout=t)
                if not self._may_take(key, row["holder"], set(row["live"] or [])):
                    return False
                live = max(1, len(row["live"] or []))
                mine = sum(1 for s in group if (smsc, s) in self._held)
                if mine >= math.ceil(len(group) / live):
                    first = self._declined.setdefault(key, self._clock())
                    if self._clock() - first < self.grace_s:
                        return False
                got = bool(
                    await conn.fetchval(
                        "SELECT pg_try_advisory_lock($1, hashtext($2))",
                        NS_BIND,
                        f"{smsc}#{slot}",
                        timeout=t,
                    )
                )
            except _NET_ERRORS as exc:
                log.warning("bind slot check failed: %r", exc)
                if isinstance(exc, TimeoutError):
                    self._lost("bind slot check timed out")
                return False
            self._declined.pop(key, None)  # taken, or held elsewhere: the grace starts over
            if got:
                self._held.add(key)
                log.info("bind slot taken", extra={"smsc": smsc, "bind": slot})
            return got

    def _may_take(self, key: tuple[str, int], holder: int | None, live: set[int]) -> bool:
        """False while the slot is held by another session, or was (when last seen) by a session
        that is gone without a clean stop and may still be bound: see orphan_s."""
        conn = self._conn
        me = conn.get_server_pid() if conn is not None else None
        if holder is not None and holder != me:
            self._seen[key] = holder
            self._orphaned.pop(key, None)
            return False
        prev = self._seen.get(key)
        if prev is not None and prev not in live and prev not in self._clean:
            first = self._orphaned.setdefault(key, self._clock())
            if self._clock() - first < self.orphan_s:
                return False
        self._seen.pop(key, None)
        self._orphaned.pop(key, None)
        return True

    async def release(self, smsc: str) -> None:
        """An SMSC's connector stopped for good (removed or rebound by a reload): its slots go
        back to the pool at once rather than when this process exits."""
        self.gates.pop(smsc, None)
        async with self._lock:
            mine = [k for k in self._held if k[0] == smsc]
            for key in mine:
                self._held.discard(key)
                self._yielding.discard(key)
                self._declined.pop(key, None)
            conn = self._conn
            if conn is None or not self._healthy:
                return
            for _smsc, slot in mine:
                try:
                    await conn.execute(
                        "SELECT pg_advisory_unlock($1, hashtext($2))",
                        NS_BIND,
                        f"{smsc}#{slot}",
                        timeout=self.op_timeout_s,
                    )
                except _NET_ERRORS as exc:
                    if isinstance(exc, TimeoutError):
                        self._lost("bind slot release timed out")
                    return

    async def rebalance(self) -> None:
        """Give up one slot per SMSC group when over the fair share while a live instance is
        under it (see the module docstring)."""
        for gate in list(self.gates.values()):
            for group in gate.groups:
                keys = [(gate.smsc, s) for s in group]
                if any(k in self._yielding for k in keys):
                    continue  # one move at a time
                async with self._lock:
                    conn = self._conn
                    if conn is None or not self._healthy:
                        return
                    try:
                        rows = await conn.fetch(
                            _HOLDERS,
                            [f"{gate.smsc}#{s}" for s in group],
                            group,
                            timeout=self.op_timeout_s,
                        )
                        me = conn.get_server_pid()
                    except _NET_ERRORS as exc:
                        if isinstance(exc, TimeoutError):
                            self._lost("rebalance timed out")
                        return
                live = set(rows[0]["live"] or []) if rows else set()
                if me not in live:
                    continue
                count = dict.fromkeys(live, 0)
                for r in rows:
                    if r["pid"] in count:
                        count[r["pid"]] += 1
                share = math.ceil(len(group) / len(live))
                floor_share = len(group) // len(live)
                short = any(n < floor_share for n in count.values())
                mine = sorted(s for s in group if (gate.smsc, s) in self._held)
                if short and len(mine) > share:
                    key = (gate.smsc, mine[-1])
                    self._yielding.add(key)
                    log.info(
                        "bind slot handed over to a less loaded instance",
                        extra={"smsc": gate.smsc, "bind": key[1]},
                    )

    # -- wake-ups --------------------------------------------------------------------------------

    def notify_work(self, _n: int = 0) -> None:
        """Work was accepted here: wake the other instances' dispatchers (coalesced)."""
        self._dirty = True
        if self._notifier is None or self._notifier.done():
            self._notifier = asyncio.get_running_loop().create_task(self._send_notifies())

    async def _send_notifies(self) -> None:
        while self._dirty and not self._stopping:
            self._dirty = False
            async with self._lock:
                conn = self._conn
                if conn is None or not self._healthy:
                    return  # the others' idle poll covers it
                try:
                    await conn.execute(
                        "SELECT pg_notify($1, $2)",
                        CHANNEL,
                        self.instance,
                        timeout=self.op_timeout_s,
                    )
                except _NET_ERRORS as exc:
                    if isinstance(exc, TimeoutError):
                        self._lost("notify timed out")
                    return
            await asyncio.sleep(self.notify_interval_s)

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        if payload != self.instance and self.on_work is not None:
            self.wakes += 1
            self.on_work()

    def _on_release(self, _conn: object, pid: int, _channel: str, payload: str) -> None:
        """Another instance stopped cleanly: the slots it held may be taken at once."""
        if payload == self.instance:
            return
        now = self._clock()
        for old in [p for p, at in self._clean.items() if now - at > _CLEAN_MEMORY_S]:
            del self._clean[old]
        self._clean[pid] = now

    # -- connection ------------------------------------------------------------------------------

    async def _connect(self) -> None:
        name = f"smpp-bridge {self.instance}"
        # Every step bounded: a partition during a reconnect must fail it (and so retry), not
        # leave the watcher waiting on a dead link for good.
        conn = await asyncpg.connect(
            self.dsn, server_settings=session_settings(name), timeout=max(10.0, self.op_timeout_s)
        )
        try:
            deadline = self._clock() + 30
            # After a blip the server may not yet have noticed our old session: wait for it.
            while not await conn.fetchval(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                NS_INSTANCE,
                self.instance,
                timeout=self.op_timeout_s,
            ):
                if self._old_pid is not None:
                    # After a partition the server keeps our old session (and with it every
                    # slot it held, which no instance could bind) until its keepalives give up,
                    # hours without them: end it. Our own session, by pid and name.
                    ended = await conn.fetchval(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE pid=$1 AND application_name=$2",
                        self._old_pid,
                        name,
                        timeout=self.op_timeout_s,
                    )
                    if ended:
                        log.warning(
                            "ended this instance's previous database session (pid %d), which "
                            "the server still kept after the connection was lost",
                            self._old_pid,
                        )
                    self._old_pid = None
                if self._clock() > deadline:
                    raise RuntimeError(
                        f"instance name {self.instance!r} is held by another live process"
                    )
                await asyncio.sleep(0.5)
            async with asyncio.timeout(self.op_timeout_s):
                await conn.add_listener(CHANNEL, self._on_notify)
                await conn.add_listener(RELEASE_CHANNEL, self._on_release)
            self.lane_held = self.lane is None  # a lost session took its lock with it
            await self._take_lane(conn)
        except BaseException:
            # Let it go at once: a graceful close waits on the server, which over a dead link
            # never answers (a stop during a reconnect hung on it).
            conn.terminate()
            raise
        conn.add_termination_listener(self._on_terminated)
        self._conn = conn
        self._healthy = True

    async def _take_lane(self, conn: asyncpg.Connection) -> None:
        """Hold server.instance's lock, or say (every _LANE_WARN_EVERY_S) that another has it."""
        if self.lane_held or self.lane is None:
            return
        async with asyncio.timeout(self.op_timeout_s):
            held = await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", NS_LANE, self.lane)
        if held:
            self.lane_held = True
            if self._lane_warned_at is not None:
                log.info("server.instance %d is now used by this instance alone", self.lane)
            self._lane_warned_at = None
            return
        now = self._clock()
        if self._lane_warned_at is None or now - self._lane_warned_at >= _LANE_WARN_EVERY_S:
            self._lane_warned_at = now
            log.warning(
                "server.instance %d (SMPP_BRIDGE_INSTANCE) is also used by another live "
                "instance on this database: the two draw concatenation references from one "
                "lane, so two long messages to one number can share a reference (the handset "
                "mixes their parts); give each instance its own number below server.instances",
                self.lane,
            )

    def _on_terminated(self, conn: object) -> None:
        if conn is self._conn and not self._stopping:
            self._lost("connection closed")

    def _lost(self, why: str) -> None:
        if not self._healthy:
            return
        self.losses += 1
        lost = sorted(self._held)
        self._healthy = False
        self._held.clear()
        self._yielding.clear()
        self._lost_event.set()
        log.error(
            "coordination connection lost (%s): giving up bind slots %s until reconnected",
            why,
            lost,
        )

    async def _watch(self) -> None:
        """Ping every poll; on failure drop everything, then reconnect with back-off."""
        delay = 0.5
        while not self._stopping:
            if self._healthy:
                await wait_event(self._lost_event, self.poll_s)
            else:
                await asyncio.sleep(delay)
            self._lost_event.clear()
            if self._healthy:
                try:
                    # The wait for the lock counts too: an operation stuck on a dead link must not
                    # hold the ping off (each has its own time-out as well).
                    async with asyncio.timeout(self.op_timeout_s), self._lock:
                        conn = self._conn
                        if conn is None:
                            raise asyncpg.InterfaceError("no connection")
                        await conn.fetchval("SELECT 1")
                        await self._take_lane(conn)
                    await self.rebalance()
                    continue
                except _NET_ERRORS:
                    self._lost("ping failed")
            old, self._conn = self._conn, None
            if old is not None:
                self._old_pid = old.get_server_pid()
                old.terminate()
            try:
                await self._connect()
                delay = 0.5
                self._settle_until = self._clock() + max(self.grace_s, 6.0)
                log.info("coordination connection restored")
            except Exception as exc:
                # At most 4 s: after a long outage the binds came back up to 10 s + the settle
                # late; a connection attempt every 4 s costs a down server nothing.
                delay = min(delay * 2, 4.0)
                log.warning("coordination reconnect failed (%r); retrying in %.1f s", exc, delay)
