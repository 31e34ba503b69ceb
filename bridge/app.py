"""Composition root: builds the store, the SMPP connectors, the pipeline and the HTTP API from one
Config, and starts and stops them in order.

Start: store (migrations, crash recovery) -> HTTP ports taken, not yet accepting -> simulator (if
enabled) -> connectors -> pipeline -> HTTP served: a port in use fails the start before any SMPP
bind. Stop (SIGTERM): HTTP answers 503 -> dispatcher stops claiming and waits for its windows
(bounded) -> binds unbind -> receipts flushed -> HTTP closed -> store closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from bridge import logs, reseal
from bridge.accounts import AccountService
from bridge.aio import cancel_and_wait, wait_event
from bridge.api.app import make_app, render_unparsed
from bridge.api.auth import Authenticator
from bridge.api.connections import ConnectionCap, fit_fd_limit
from bridge.api.context import OWNER_SILENT_S, ApiContext
from bridge.api.http_errors import ENDPOINT, AppRunner, Render
from bridge.api.listeners import Reserved, ReservedSite, check_free, listening, reserve_all
from bridge.api.submit import Submitter
from bridge.assignments import Assignments
from bridge.billing import Tariffs, auto_settle, warn_low_balance
from bridge.clockstep import WallSteps
from bridge.compat.aliyun_api import UNPARSED_ENDPOINT as ALIYUN_UNPARSED
from bridge.compat.aliyun_api import make_aliyun_app
from bridge.compat.aliyun_api import render_unparsed as render_aliyun_unparsed
from bridge.config import (
    FINAL_RECEIPT_BITS,
    WIRE_OPTIONS,
    Config,
    ConfigError,
    implicit_sim_smsc,
    load_config,
    read_config_text,
)
from bridge.crypto import MasterKeyError, Sealer
from bridge.domain import forwarded
from bridge.fleet_status import bound_elsewhere, peer_figures, with_fleet
from bridge.metrics import Metrics, multiprocess_dir
from bridge.pipeline.dispatcher import Dispatcher
from bridge.pipeline.inbound import Inbound
from bridge.pipeline.wake import WaitFlag, WakeListener, WakeSender, channel_name
from bridge.pipeline.webhooks import WebhookSender
from bridge.reload import RESTART_PATHS, HupGate, ReloadPlan, generation, plan
from bridge.retention import Retention
from bridge.rules import load_filter
from bridge.smpp.router import Route, Router
from bridge.store.base import Store, is_unavailable
from bridge.store.models import ClockShift
from bridge.store.purge import PurgeFailed
from bridge.text.split import RefCounter
from bridge.wiring import configure_store, make_sealer, open_store, warn_open_modes

log = logging.getLogger("bridge.app")
# The supervisor names its owner's instance to the acceptors it starts (bridge/supervisor.py).
OWNER_INSTANCE_ENV = "SMPP_BRIDGE_OWNER_INSTANCE"
# The slot (0 .. server.workers - 1) the supervisor gave an acceptor process.
WORKER_ENV = "SMPP_BRIDGE_WORKER"
# How many acceptors the supervisor runs: `run --workers N` overrides server.workers in the owner
# only, and the acceptors' configuration copy keeps the file's value.
WORKERS_ENV = "SMPP_BRIDGE_WORKERS"
# The owner's pid, for an acceptor to tell that its owner died: its own parent pid, read as it
# starts, is already the reaper's when the owner died first (a kill -9 while it was starting).
OWNER_PID_ENV = "SMPP_BRIDGE_OWNER_PID"


# How long stop() waits for a reload under way before it stops the pipeline anyway.
RELOAD_WAIT_S = 10.0
# How long stop() waits for its background tasks to end once cancelled. They end at once; one
# that does not (a cancel lost, as Python 3.11's asyncio.wait_for lost the heartbeat's) is
# logged by name and left, so that the store is still closed and the process exits.
TASK_STOP_S = 5.0
# How long stop() gives the last flush of app keys' uses (advisory: a store that does not
# answer by then loses them, not the stop).
KEY_USE_STOP_S = 5.0
# The shortest gap between two heartbeat writes: a bind change is published this soon.
HEARTBEAT_GAP_S = 0.1


def _draining(snap: dict[str, Any], state: str) -> dict[str, Any]:
    """A connector a reload is stopping: down, whatever its binds still do (they drain)."""
    sending = None if snap.get("sending") is None else False
    return {**snap, "up": False, "sending": sending, "state": state}


def make_router(config: Config) -> Router:
    encodings = {s.name: tuple(getattr(s, o) for o in WIRE_OPTIONS) for s in config.smscs}
    return Router(
        [Route(r.prefix, tuple(r.smscs)) for r in config.routes], config.default_route, encodings
    )


async def _check_master_key(store: Store, sealer: Sealer) -> None:
    """Refuse to start with a master key that opens none of the stored secrets (reseal's
    start_verdict says why); log the ones neither key opens."""
    _writes, report = reseal.plan(await store.sealed_secrets(), sealer, seal=False)
    refusal, warning = reseal.start_verdict(report)
    if refusal is not None:
        raise MasterKeyError(refusal)
    if warning is not None:
        log.error(warning)
    current, previous = sealer.key_ids
    # Named (4 bytes of each key's SHA-256) so that an operator can check a `secrets reseal`
    # run against the keys the daemon has: a run with other keys reports other counts.
    log.info(
        "master key %s%s; %d of %d stored secrets under it",
        current,
        f", previous {', '.join(previous)}" if previous else "",
        report.current,
        report.total,
    )


def _loop_name() -> str:
    """The name of the loop server.event_loop gave this process (bridge.cli): uvloop or asyncio."""
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


def _stamp(path: str | None) -> tuple[int, int, int] | None:
    """Identity and version of a file (inode, mtime, size); None when there is none to read."""
    if path is None:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def reference_lane(
    role: str, worker: int, workers: int, instance: int, instances: int
) -> tuple[int, int] | None:
    """(lane, lanes) of this process's concatenation references (RefCounter), None for all.

    Acceptor workers of one daemon, their owner, and the instances of a fleet
    (server.instances), draw from disjoint lanes: instance i has lanes i x per ... i x per +
    per - 1, one per acceptor and the last one its owner's (per = workers + 1), or one lane
    (per = 1) for a daemon of one process, so no two processes give one number the same
    reference. The owner draws when a reload makes a waiting one-part message long
    (pipeline/reencode.py); from the full range it could give a number the reference an
    acceptor had just given it."""
    lane, per = 0, 1
    if 0 < workers < 256:
        if role == "acceptor" and 0 <= worker < workers:
            lane, per = worker, workers + 1
        elif role == "owner":
            lane, per = workers, workers + 1
    lanes = per * instances
    if lanes == 1 or lanes > 256 or not 0 <= instance < instances:
        return None
    return instance * per + lane, lanes


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        instance: str | None = None,
        role: str = "all",
        config_path: str | None = None,
        config_text: str | None = None,
    ) -> None:
        if role not in ("all", "owner", "acceptor"):
            raise ValueError(f"unknown role {role!r}")
        self.config = config
        self.role = role
        self._parent_pid = int(os.environ.get(OWNER_PID_ENV) or os.getppid())  # an acceptor's owner
        self.config_path = config_path
        # The file as `config` was read from it (about: read just before): a change seen after
        # start-up is a reload missed while starting (see run_forever).
        self._config_stamp = _stamp(config_path)
        # The file's text the last reload applied (None: none yet, or no file): the supervisor
        # copies it for the acceptors. Read again after the reload, the file could already hold
        # the operator's next (invalid) edit.
        self.applied_text: str | None = None
        # One reload at a time: two SIGHUPs close together (a reload run twice) started two
        # that both stopped the same connector (KeyError) and could leave self.config and the
        # running connectors out of step.
        self._reload_lock = asyncio.Lock()
        # Set by stop(): a SIGHUP then is not applied (a reload reconnected an SMSC that stop()
        # was closing, found by session 14's third review).
        self._stopping = False
        self._owner_gone = False
        # A bind came up or went down: the heartbeat publishes the status at once, not at its
        # next second (see _heartbeat).
        self._binds_changed = asyncio.Event()
        self._status_refresh: asyncio.Future[None] | None = None  # one at a time (see below)
        self._status_reads = self._status_kept = 0  # see _keep_status
        # SIGHUP reloads, kept: an unreferenced task may be collected mid-run.
        self._reload_tasks: set[asyncio.Task[bool]] = set()
        self._tariffs: Tariffs | None = None  # the owner's own, for settlement (no ctx there)
        self.clock = clock
        # Steps of the host's clock (bridge/clockstep.py), each remembered for the longest life
        # of a replay record: an idempotency record, or a nonce (twice the skew, and a second).
        skew_s = max(config.server.clock_skew_s, config.aliyun.clock_skew_s)
        longest_s = max(config.server.idempotency_hours * 3600, 2 * skew_s + 1)
        self._steps = WallSteps(wall=clock, memory_s=longest_s + 60)
        self._step_back_ms = 0  # a step back whose shift the store has not taken yet
        self._shift: ClockShift | None = None  # the shift under way (kept across failures)
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}"
        self.store: Store | None = None
        self.sim: Any = None
        self.connectors: dict[str, Any] = {}
        # SMSCs a reload is stopping: name -> (connector, "reconnecting" or "removing"); see
        # reload and smsc_status.
        self._draining: dict[str, tuple[Any, str]] = {}
        self.dispatcher: Dispatcher | None = None
        self.inbound: Inbound | None = None
        self.webhooks: WebhookSender | None = None
        self.ctx: ApiContext | None = None
        self._runner: web.AppRunner | None = None
        self._aliyun_runner: web.AppRunner | None = None
        self._admin_runner: web.AppRunner | None = None
        self._reserved: dict[str, Reserved] = {}  # ports held until served, by setting
        self.connection_cap: ConnectionCap | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # SMSCs whose receipts that came before they were `one_per_message` may still settle
        # parts left waiting (the sweeper's "earlier receipts" step).
        self._receipts_switched: set[str] = set()
        self._last_settle = 0  # unix ms of the last automatic settlement check
        self._retention: Retention | None = None
        self.http_port: int | None = None
        self._stopped = asyncio.Event()
        self._wake_listener: WakeListener | None = None
        self._wake_sender: WakeSender | None = None
        # The owner's: whether its dispatcher wants a wake (bridge/pipeline/wake.py). The
        # supervisor passes its descriptor to each acceptor it starts.
        self.wait_flag: WaitFlag | None = None
        self._remote_status: dict[str, Any] = {}
        self._remote_read_at: float | None = None  # time.monotonic() of the last read kept
        self._failures = logs.Failures(log, is_unavailable)  # the background loops'
        self.coord: Any = None  # PostgreSQL: liveness, bind slots, wake-ups across instances
        self.metrics = Metrics()  # per Daemon: tests run several in one process
        # The configuration this process runs, published for the supervisor to check after a
        # reload (`config_text`: the text `config` was loaded from). The owner's is the
        # acceptors' copy, which the supervisor publishes.
        if config_text is not None:
            self._publish_generation(config_text)

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            self._release_ports()  # a start that failed after taking them (a connector unbuilt)
            raise

    def _release_ports(self) -> None:
        """Close the ports held and never served (see bridge/api/listeners.py)."""
        for reserved in self._reserved.values():
            reserved.close()
        self._reserved.clear()

    async def _start(self) -> None:
        cfg = self.config
        self.store = store = open_store(cfg)
        self.metrics.watch_store(self.role, store.write_lock_stats)
        # A restart may be the switch (the setting changed in the file meanwhile).
        self._receipts_switched = set(getattr(store, "one_receipt_smscs", ()))
        if hasattr(store, "on_inferred"):
            store.on_inferred = self.metrics.receipts_inferred
        await store.open()
        sealer = make_sealer(cfg)
        if self.role in ("all", "owner"):  # once per instance: its acceptors share the key
            await _check_master_key(store, sealer)
            warn_open_modes(cfg, log)  # after the open: the -wal and -shm exist now
        accounts = AccountService(
            store, sealer, lambda: self.config.rules.sender_policy == "assigned"
        )
        # One cache of the accounts' assigned senders for the send check and reply attribution
        # alike: an admin change in this process is seen by both at once.
        self.assignments = Assignments(store, clock=self.clock)
        router = make_router(cfg)
        loop = asyncio.get_running_loop()
        if self.role in ("all", "owner"):
            if cfg.store.engine == "postgres":  # before recovery and the first claim
                from bridge.store.postgres_coord import Coordinator

                server = cfg.server
                self.coord = Coordinator(
                    cfg.store.dsn or "",
                    self.instance,
                    on_work=self._woken,
                    lane=server.instance if server.instances > 1 else None,
                )
                await self.coord.start()
            await self._start_pipeline(store, accounts, router)
        if self.role == "owner":
            self._wake_listener = WakeListener(
                channel_name(cfg.store.path, os.getpid()), self._wake_dispatcher
            )
            self._wake_listener.start()
            self.wait_flag = WaitFlag.create()
            # On PostgreSQL the owner passes each acceptor's wake on to the other instances
            # (NOTIFY), whose binds may be idle while its own dispatcher is busy: the flag stays
            # set there, and the acceptors wake it after every commit as before.
            if self.wait_flag is not None and self.coord is None and self.dispatcher is not None:
                self.dispatcher.wait_flag = self.wait_flag
            log.info(
                "smpp-bridge owner running the pipeline (instance %s, store %s, event loop %s)",
                self.instance,
                cfg.store.engine,
                _loop_name(),
            )
        if self.role == "owner" or self.coord is not None:
            self._tasks.append(loop.create_task(self._heartbeat(), name="heartbeat"))
        if self.role == "acceptor":
            # Its owner's binds before its port opens: a restarted acceptor answered /readyz
            # 503 "no SMSC bound" until its first housekeeping round, a second later (a load
            # balancer saw the instance flap at every acceptor restart).
            try:
                await self._refresh_status()
            except Exception as exc:  # the housekeeping tries again every second
                self._failures.failed("api housekeeping", exc)
        if self.role in ("all", "acceptor"):
            await self._start_http(store, sealer, accounts, router)
        self._tasks.append(loop.create_task(self.metrics.watch_loop(self.role), name="loop-lag"))
        if multiprocess_dir():  # another process may answer the scrape: keep our files fresh
            self._tasks.append(loop.create_task(self.metrics.flush_every(1.0), name="metrics"))

    def _bind_changed(self) -> None:
        """The heartbeat writes the change; a bind up may make parked messages routable, so the
        dispatcher claims now instead of at the end of its idle backoff."""
        self._binds_changed.set()
        if self.dispatcher is not None:
            self.dispatcher.binds_changed()

    def _wake_dispatcher(self, _n: int = 0) -> None:
        """Work was accepted by this instance (or its acceptor processes)."""
        if self.dispatcher is not None:
            self.dispatcher.wake()
        if self.coord is not None:  # and the other instances, whose binds may be idle
            self.coord.notify_work()

    def _woken(self) -> None:
        """Another instance accepted work."""
        if self.dispatcher is not None:
            self.dispatcher.wake()

    async def _start_pipeline(self, store: Store, accounts: AccountService, router: Router) -> None:
        cfg = self.config
        smscs = {s.name: s for s in cfg.smscs}
        # Recovery first: on SQLite it takes the store's ownership, so a second daemon started on
        # the same file (the same configuration) is refused with STORE_IN_USE. Started before it,
        # the built-in simulator failed first, on its port ("address already in use").
        recovered = await store.recover(
            self.instance,
            int(self.clock() * 1000),
            frozenset(n for n, s in smscs.items() if s.in_flight_on_restart == "unknown"),
        )
        if any(recovered.values()):
            log.warning("recovered claims after restart: %s", recovered)
        freed = await store.free_webhook_leases(int(self.clock() * 1000), at_start=True)
        if freed:  # a dead daemon's POSTs in flight: sent again now, not after their lease
            log.warning("status and MO reports in flight at a crash, due again: %d", freed)
        # Every port before any bind: a start that fails on one (server.port in use) has not
        # bound to the carriers for nothing (bridge/api/listeners.py).
        if self.role == "all":
            self._reserved = await reserve_all(cfg)
        else:  # the owner: its acceptors listen once it has started
            await check_free(cfg)
        if cfg.sim.enabled:
            from bridge.sim.server import SimSmsc

            self.sim = SimSmsc(cfg.sim)
            ports = (
                f"{cfg.sim.host}:{cfg.sim.port} (sim.port) "
                f"or :{cfg.sim.control_port} (sim.control_port)"
            )
            await listening(self.sim.start(), ports)
            log.info("built-in SMSC simulator on %s:%s", cfg.sim.host, self.sim.port)

        self.inbound = Inbound(
            store, smscs, clock=self.clock, metrics=self.metrics, assignments=self.assignments
        )
        self.inbound.optout_keywords = tuple(cfg.rules.optout_keywords)
        for s in cfg.smscs:
            self.connectors[s.name] = self._connector(s)
            self._gate(self.connectors[s.name])
        self.dispatcher = Dispatcher(
            store,
            self.connectors,
            router,
            smscs,
            instance=self.instance,
            claim_batch=cfg.pipeline.claim_batch,
            in_flight_windows=cfg.pipeline.in_flight_windows,
            idle_s=cfg.pipeline.dispatch_idle_ms / 1000,
            idle_max_s=cfg.pipeline.dispatch_idle_max_ms / 1000,
            clock=self.clock,
        )
        self.dispatcher.refs = self._ref_counter()  # the sends' own (_start_http), re-encoding's
        await self.dispatcher.load_route_table()  # before any accept: what they are encoded for
        self.webhooks = WebhookSender(
            store,
            accounts,
            cfg.webhooks,
            clock=self.clock,
            metrics=self.metrics,
            instance=self.instance,
        )
        self.webhooks.tz = cfg.rules.timezone
        self.inbound.on_reports = self.webhooks.wake
        self.dispatcher.on_reports = self.webhooks.wake
        for c in self.connectors.values():
            await c.start()
        loop = asyncio.get_running_loop()
        self._tasks += [
            loop.create_task(self.dispatcher.run(), name="dispatcher"),
            loop.create_task(self.webhooks.run(), name="webhooks"),
            loop.create_task(self._sweeper(), name="sweeper"),
            loop.create_task(self._watch_clock(), name="clock-steps"),
        ]

    async def _start_http(
        self, store: Store, sealer: Sealer, accounts: AccountService, router: Router
    ) -> None:
        cfg = self.config
        if self.dispatcher is not None:
            on_accepted: Callable[[int], None] = (
                self.dispatcher.wake if self.coord is None else self._wake_dispatcher
            )
            status: Callable[[], dict[str, Any]] = (
                self.smsc_status if self.coord is None else self._cluster_status
            )
            refresh = None if self.coord is None else self._refresh_status
        else:  # an acceptor process: the owner dispatches and reports its binds via the store
            self._wake_sender = sender = WakeSender(
                channel_name(cfg.store.path, self._parent_pid), flag=WaitFlag.attach()
            )
            self.metrics.watch_wakes(lambda: sender.counts)
            on_accepted = sender.wake
            status = self._owner_status
            refresh = self._refresh_status
            # Know the owner's binds before serving: /readyz and /metrics must not report an
            # empty SMSC list during the first second.
            await self._refresh_status()
        # One counter per process: a waiting message encoded again after a reload (the dispatcher)
        # draws from the one its sends draw from.
        refs = self.dispatcher.refs if self.dispatcher is not None else self._ref_counter()
        self.ctx = ApiContext(
            config=cfg,
            store=store,
            auth=await Authenticator.start(store, sealer, cfg, self.clock),
            submitter=Submitter(cfg, router, refs=refs),
            accounts=accounts,
            clock=self.clock,
            on_accepted=on_accepted,
            smsc_status=status,
            refresh_smsc_status=refresh,
            metrics=self.metrics,
            assignments=self.assignments,
            workers=_env_count(WORKERS_ENV) if self.role == "acceptor" else 0,
        )
        if self.webhooks is not None:  # an acceptor's replays are found by the owner's poll
            self.ctx.on_webhooks_replayed = self.webhooks.wake
        # Back-pressure counts what is due: a campaign scheduled days ahead is no backlog, and
        # counted, it refused every customer's sends (verification codes too) until it was due.
        self.ctx.queue_depth = await store.queue_depth(due_at=int(self.clock() * 1000))
        if cfg.billing.enabled:  # seeds billing.tariff when the store has none
            await self.ctx.tariff_book.load(int(self.clock() * 1000))
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._api_housekeeping(), name="api-housekeeping"))
        self._tasks.append(loop.create_task(self.ctx.auth.key_use.run(store), name="key-use"))
        # One cap for both public faces of this process (server.max_connections); the admin
        # listener's runner has none.
        trusted = forwarded.networks(cfg.server.trusted_proxies)
        cap = ConnectionCap(cfg.server.max_connections, cfg.server.max_connections_per_ip, trusted)
        fit_fd_limit(cfg.server.max_connections)
        self.connection_cap = cap
        self.metrics.watch_connections(lambda: (cap.open, cap.refused))
        self._runner, site = await self._listen(
            make_app(self.ctx), cfg.server.host, cfg.server.port, cap, setting="server.port"
        )
        if cfg.server.admin_port is not None:
            admin_host = cfg.server.admin_host or cfg.server.host
            self._admin_runner, _ = await self._listen(
                make_app(self.ctx, admin_only=True),
                admin_host,
                cfg.server.admin_port,
                None,
                setting="server.admin_port",
            )
            log.info("admin listener on http://%s:%s", admin_host, cfg.server.admin_port)
        if cfg.aliyun.enabled:
            self._aliyun_runner, _ = await self._listen(
                make_aliyun_app(self.ctx),
                cfg.aliyun.host or cfg.server.host,
                cfg.aliyun.port,
                cap,
                render=render_aliyun_unparsed,
                endpoint=ALIYUN_UNPARSED,
                setting="aliyun.port",
            )
            log.info(
                "Alibaba Cloud SMS-compatible API on http://%s:%s",
                cfg.aliyun.host or cfg.server.host,
                cfg.aliyun.port,
            )
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else cfg.server.port
        log.info(
            "smpp-bridge %s listening on http://%s:%s (instance %s, store %s, event loop %s)",
            self.role,
            cfg.server.host,
            self.http_port,
            self.instance,
            cfg.store.engine,
            _loop_name(),
        )

    async def _listen(
        self,
        app: web.Application,
        host: str,
        port: int,
        cap: ConnectionCap | None,
        *,
        render: Render = render_unparsed,
        endpoint: str = ENDPOINT,
        setting: str = "server.port",
    ) -> tuple[AppRunner, web.BaseSite]:
        """A listener (the API's, the admin one, the Alibaba face's), its runner set up;
        `render` and `endpoint` answer and count what the HTTP parser refuses, in the face's
        own envelope."""
        assert self.ctx is not None
        runner = AppRunner(
            app,
            render,
            self.ctx.metrics,
            endpoint=endpoint,
            cap=cap,
            trusted=forwarded.networks(self.config.server.trusted_proxies),
            forwarded_header=self.config.server.forwarded_header,
            access_log=None,
            shutdown_timeout=2.0,
            keepalive_timeout=self.config.server.idle_timeout_s,
            # Bodies are read as sent (the signature covers those bytes); a Content-Encoding is
            # refused with 415 (bodies.refuse_encoding). Decompressing, aiohttp refused br and zstd
            # with a 400 when their optional packages were missing, and logged a traceback for
            # every body that was not what its header said.
            auto_decompress=False,
        )
        await runner.setup()
        reserved = self._reserved.pop(setting, None)
        site: web.BaseSite
        if reserved is not None:
            site = ReservedSite(runner, reserved)
        else:  # an acceptor's: its owner checked the port before binding
            site = web.TCPSite(
                runner, host, port, reuse_address=True, reuse_port=self.role == "acceptor"
            )
        try:
            await listening(site.start(), f"{host}:{port} ({setting})")
        except OSError:
            await runner.cleanup()
            raise
        return runner, site

    def _connector(self, smsc: Any) -> Any:
        """Built, not started nor gated (see _gate): a reload builds its connectors before it
        stops any."""
        from bridge.smpp.connector import Connector

        assert self.inbound is not None
        connector = Connector(smsc, self.inbound.on_deliver, on_receipt=self.inbound.on_receipt)
        connector.on_submit = self.metrics.on_submit
        connector.ok_sink = self.metrics.ok_sink(smsc.name)  # its acceptances, in bulk
        connector.on_bind_change = self._bind_changed
        return connector

    def _gate(self, connector: Any) -> None:
        """Just before it starts: a gate registers with the coordinator under the SMSC's name,
        which a reload releases first when it rebinds that SMSC."""
        if self.coord is not None:  # the configured binds are shared with the other instances
            smsc = connector.cfg
            connector.bind_gate = self.coord.gate(smsc.name, smsc.bind_mode, smsc.binds)

    def smsc_status(self) -> dict[str, Any]:
        """Every SMSC, those a reload is stopping too, down with their `state` (reconnecting:
        new bind settings, removing: gone from the file): while the old connector drained its
        window the status left them out, and an acceptor reading it printed "(no SMSC
        configured)" and answered /readyz 200 with nothing bound."""
        status = {
            name: _draining(c.snapshot(), state) for name, (c, state) in self._draining.items()
        }
        for name, c in self.connectors.items():
            status[name] = c.snapshot()
        return status

    def _owner_status(self) -> dict[str, Any]:
        fresh = self._fresh_remote()
        return self._unknown_status() if fresh is None else fresh

    def _unknown_status(self) -> dict[str, Any]:
        """Every configured SMSC, its state unknown: the owner's word is missing (see
        _fresh_remote, _read_owner_status); down would be a guess, and fire the carrier alert."""
        return {smsc.name: {"up": False, "state": "unknown"} for smsc in self.config.smscs}

    def _fresh_remote(self) -> dict[str, Any] | None:
        """The bind holders' status as last read, unless no read succeeded for OWNER_SILENT_S:
        an acceptor kept its last copy through a store outage, and reported the binds up (its
        SMSC gauges too, so no SMSC-down alert) while its owner had long unbound them."""
        at = self._remote_read_at
        if at is None or time.monotonic() - at > OWNER_SILENT_S:
            return None
        return self._remote_status

    async def _api_housekeeping(self) -> None:
        """Every second: queue depth for back-pressure; in an acceptor, the owner's bind status."""
        assert self.store is not None and self.ctx is not None
        ticks = 0
        while True:
            await asyncio.sleep(1.0)
            try:
                ticks += 1
                # Back-pressure needs an exact depth only near the limit; far below it, every
                # 10 s is enough (accepts still add to the local count at once). The count scans
                # every unsent row, which costs real time with a large backlog.
                near = self.ctx.queue_depth * 4 >= self.config.store.max_queued_segments
                if near or ticks % 10 == 0:
                    self.ctx.queue_depth = await self.store.queue_depth(
                        due_at=int(self.clock() * 1000)
                    )
                if ticks % 10 == 0 and self.config.billing.enabled:
                    # Tariff versions another process added (they only ever get appended).
                    await self.ctx.tariff_book.refresh(int(self.clock() * 1000))
                if self.role == "acceptor":
                    if os.getppid() != self._parent_pid:
                        # The owner died (kill -9, the OOM killer): this process would go on
                        # answering 202 for sends nothing dispatches, and take a share of a
                        # restarted daemon's port. Stop as on SIGTERM.
                        log.error("the owner process is gone; this acceptor stops")
                        self._owner_gone = True  # no drain: nobody will send the second signal
                        os.kill(os.getpid(), signal.SIGTERM)
                        return
                if self.role == "acceptor" or self.coord is not None:
                    await self._refresh_status()
            except Exception as exc:
                self._failures.failed("api housekeeping", exc)
            else:
                self._failures.ok("api housekeeping")

    def _cluster_status(self) -> dict[str, Any]:
        """Several instances on PostgreSQL: an SMSC bound only on another live instance is up
        for readiness too (what this instance accepts, that one sends)."""
        status = self.smsc_status()
        remote = self._fresh_remote()
        for name, st in status.items():
            peer = (remote or {}).get(name, {})
            if not st.get("up") and peer.get("up"):
                status[name] = bound_elsewhere(st, peer)
        # The fleet's sums only from a fresh read: stale, they would be a guess.
        return status if remote is None else with_fleet(status, remote)

    async def _refresh_status(self) -> None:
        """The bind holders' status read now: at start, by the housekeeping every second, and
        by /readyz for every probe. Answered from the housekeeping's copy alone, two acceptors
        on one port disagreed for up to a second whenever the owner's bind came up or went down
        (a starting daemon's readiness went 200, 503, 200); a copy 0.1 s old still did, once in
        a few starts. A probe costs a store read (its ping is one already); reads under way at
        once are shared."""
        if self._status_refresh is None or self._status_refresh.done():
            read = self._read_owner_status if self.role == "acceptor" else self._read_peer_status
            self._status_refresh = asyncio.ensure_future(self._keep_status(read()))
        await asyncio.shield(self._status_refresh)

    async def _keep_status(self, read: Awaitable[dict[str, Any]]) -> None:
        """Keep what `read` returns, unless a read started after it was kept first: on
        PostgreSQL the housekeeping's read and a probe's overlap, and the older answer, kept
        last, made /readyz go back."""
        self._status_reads += 1
        mine = self._status_reads
        status = await read
        if mine > self._status_kept:
            self._status_kept = mine
            self._remote_status = status
            self._remote_read_at = time.monotonic()

    async def _read_peer_status(self) -> dict[str, Any]:
        """The other live instances' binds, by SMSC (fleet_status.peer_figures): bind holders'
        rows only, since an acceptor's row echoes its owner's."""
        assert self.store is not None
        rows = await self.store.instances(int((self.clock() - OWNER_SILENT_S) * 1000))
        return peer_figures(
            json.loads(status)
            for instance, role, _at, status in rows
            if instance != self.instance and role in ("owner", "all")
        )

    async def _read_owner_status(self) -> dict[str, Any]:
        """An acceptor's view of the binds: its own owner's (named by the supervisor: with
        several instances in workers mode, the newest owner row was often another instance's),
        plus what other live instances have bound, as `_cluster_status` does for an owner: what
        this instance accepts, that one sends (an instance whose owner held no bind answered
        "no SMSC bound" while the fleet sent everything it accepted)."""
        assert self.store is not None
        rows = await self.store.instances(int((self.clock() - OWNER_SILENT_S) * 1000))
        owner = os.environ.get(OWNER_INSTANCE_ENV)
        mine: dict[str, Any] | None = None
        others: list[dict[str, Any]] = []
        for instance, role, _at, status in rows:
            if role == "owner" and mine is None and owner in (None, instance):
                mine = json.loads(status)
            elif role in ("owner", "all") and instance != owner:
                # Bind holders only: acceptors' rows echo their owner, and two of them reading
                # each other's echo would keep a bind "up" after it went down.
                others.append(json.loads(status))
        peers = peer_figures(others)
        elsewhere = {name: f for name, f in peers.items() if f["up"]}
        if mine is None:
            # No owner heartbeat for 5 s: nothing may be sending here, so do not claim to be
            # ready; but the binds may be up (a stalled store write), so do not say they are down.
            mine = self._unknown_status()
        for name, peer in elsewhere.items():
            st = mine.get(name)
            if isinstance(st, dict) and not st.get("up"):
                mine[name] = bound_elsewhere(st, peer)
        return with_fleet(mine, peers) if self.config.store.engine == "postgres" else mine

    async def _heartbeat(self) -> None:
        """Every second, and within HEARTBEAT_GAP_S of a bind coming up or going down: the
        acceptors and the other instances answer /readyz from this row."""
        assert self.store is not None
        while True:
            self._binds_changed.clear()  # a change while writing is written next round
            try:
                await self.store.heartbeat(
                    self.instance,
                    self.role,
                    int(self.clock() * 1000),
                    json.dumps(self.smsc_status(), default=str),
                )
            except Exception as exc:
                self._failures.failed("heartbeat", exc)
            else:
                self._failures.ok("heartbeat")
            # At most one extra write per HEARTBEAT_GAP_S while binds flap.
            await asyncio.sleep(HEARTBEAT_GAP_S)
            await wait_event(self._binds_changed, 1.0 - HEARTBEAT_GAP_S)

    async def _sweeper(self) -> None:
        """Validity expiry, receipt timeouts, abandoned claims, stale MO parts, monthly
        settlement: every 5 s. Each step is on its own: one that fails (a database hiccup, a bad
        row) is logged and retried next round without holding up the others; before, a failing
        expiry sweep also stopped the taking back of a dead instance's claims and settlement."""
        assert self.store is not None
        while True:
            await asyncio.sleep(5.0)
            for name, step in (
                ("lease renewal", self._renew_leases),
                ("expiry sweep", self._sweep_expired),
                ("reclaim", self._reclaim),
                ("incomplete MO", self._flush_stale_mo),
                ("earlier receipts", self._infer_earlier),
                ("settlement", self._settle),
                ("retention", self._retain),
                ("planner statistics", self._refresh_stats),
            ):
                what = f"sweeper step {name}"
                try:
                    await step(int(self.clock() * 1000))
                except Exception as exc:
                    self._failures.failed(what, exc)
                else:
                    self._failures.ok(what)
            if self.webhooks is not None:
                self.webhooks.wake()

    async def _infer_earlier(self, now_ms: int) -> None:
        """SMSCs switched to `receipts: one_per_message` (at a reload, or configured so at the
        start): messages whose one receipt came before the switch, their other parts sent and
        waiting, are settled by it now, a batch a round, instead of waiting out the receipt
        timeout and ending unknown."""
        store = self.store
        if (
            store is None
            or not self._receipts_switched
            or not hasattr(store, "infer_earlier_receipts")
        ):
            return
        smscs = self._receipts_switched & set(getattr(store, "one_receipt_smscs", ()))
        if not smscs or await store.infer_earlier_receipts(smscs, now_ms) < 500:
            self._receipts_switched -= smscs  # none left (a later switch adds its own)

    async def _refresh_stats(self, _now_ms: int) -> None:
        assert self.store is not None
        await self.store.refresh_stats()

    async def _renew_leases(self, now_ms: int) -> None:
        if self.dispatcher is not None:
            # Messages still being sent (a throttled link can hold one for minutes) keep their
            # claims: only a dead instance's claims may be taken back.
            await self.dispatcher.renew_leases()

    async def _watch_clock(self) -> None:
        """Twice a second: a step of the host's wall clock. A step back moves stored retry
        times back by as much (after a 10-minute step back, messages accepted just before it
        waited 10 minutes while newer ones overtook them); a step forward needs nothing here
        (replay records are purged by `WallSteps.unstepped`)."""
        assert self.store is not None
        while True:
            await asyncio.sleep(0.5)
            step = self._steps.check()
            if step:
                log.warning(
                    "the wall clock stepped %s by %.3f s (keep it slewed: README, \"The host's "
                    'clock")',
                    "back" if step < 0 else "forward",
                    abs(step),
                )
                # Net: a step back corrected by a step forward before the store took the
                # shift needs none.
                self._step_back_ms = max(0, self._step_back_ms - round(step * 1000))
            if self._shift is None:
                if not self._step_back_ms:
                    continue
                # A step that comes while this shift runs is owed by the next one.
                self._shift = ClockShift(self._step_back_ms, int(self.clock() * 1000))
                self._step_back_ms = 0
            shift = self._shift
            leased = self.webhooks.leased if self.webhooks is not None else ()
            try:
                await self.store.clock_stepped_back(shift.by_ms, shift.now, leased, shift)
            except Exception as exc:  # goes on from where it got to in half a second
                self._failures.failed("moving retry times back after a clock step", exc)
                continue
            self._failures.ok("moving retry times back after a clock step")
            log.warning(
                "after the clock's step back: %d queued messages and %d webhook retries moved "
                "%.3f s earlier",
                shift.messages,
                shift.webhooks,
                shift.by_ms / 1000,
            )
            self._shift = None
            if self.dispatcher is not None:
                self.dispatcher.wake()
            if self.webhooks is not None:
                self.webhooks.wake()

    async def _sweep_expired(self, now_ms: int) -> None:
        assert self.store is not None
        timeout_ms = self.config.pipeline.receipt_timeout_hours * 3_600_000  # SIGHUP-able
        validity = {
            s.name: s.validity_minutes * 60_000 for s in self.config.smscs if s.validity_minutes
        }
        swept = await self.store.sweep(
            now_ms,
            timeout_ms,
            records_now=min(now_ms, int(self._steps.unstepped() * 1000)),
            smsc_validity_ms=validity,
            # Asked for no final receipt, none comes at the validity's end either.
            silent_smscs=[
                s.name for s in self.config.smscs if not s.registered_delivery & FINAL_RECEIPT_BITS
            ],
        )
        counts = {k: v for k, v in swept.items() if k != "low_balance"}
        if any(counts.values()):
            log.info("sweep %s", counts)
        for low in swept["low_balance"]:
            # A voucher expired and took an account under its threshold: as a send's crossing.
            warn_low_balance(log, self.metrics, low.account_id, low.before, low.after)

    async def _reclaim(self, now_ms: int) -> None:
        assert self.store is not None
        unknown = frozenset(
            s.name for s in self.config.smscs if s.in_flight_on_restart == "unknown"
        )
        reclaimed = await self.store.reclaim(now_ms, unknown)
        if any(reclaimed.values()):  # claims of an instance that died
            log.warning("reclaimed abandoned claims: %s", reclaimed)
            if self.dispatcher is not None:
                self.dispatcher.wake()
        freed = await self.store.free_webhook_leases(now_ms, at_start=False)
        if freed:  # the sweeper wakes the webhook sender after its steps
            log.warning("reports in flight at an instance that died, due again: %d", freed)

    async def _flush_stale_mo(self, now_ms: int) -> None:
        # Parts of a long MO whose others did not come in time: delivered as they are, flagged
        # incomplete, rather than dropped (the reply would vanish for customer and recipient).
        if self.inbound is not None:
            timeout_ms = int(self.config.pipeline.mo_reassembly_timeout_s * 1000)  # SIGHUP-able
            await self.inbound.flush_stale_mo(now_ms, timeout_ms=timeout_ms)

    async def _settle(self, now_ms: int) -> None:
        if 0 <= now_ms - self._last_settle < 3_600_000:  # not skipped after a step back
            return
        self._last_settle = now_ms
        if self.ctx is not None:
            book = self.ctx.tariff_book
        else:
            # The owner in workers mode has no HTTP side (no ctx) and runs the only sweeper:
            # it skipped settlement, so no month was ever settled (no refunds, no invoices).
            if self._tariffs is None:
                self._tariffs = Tariffs(self.store, self.config.billing)
            await self._tariffs.refresh(now_ms)
            book = self._tariffs
        settled = await auto_settle(self.store, book, self.config, now_ms)
        if settled:
            log.info("automatic settlement %s", settled)

    def _ref_counter(self) -> RefCounter:
        server = self.config.server
        slot, count = os.environ.get(WORKER_ENV, ""), os.environ.get(WORKERS_ENV, "")
        lane = reference_lane(
            self.role if self.role == "owner" or slot.isdigit() else "all",
            int(slot) if slot.isdigit() else 0,
            int(count) if count.isdigit() else server.workers,
            server.instance,
            server.instances,
        )
        if lane is None:
            return RefCounter()
        log.info(
            "concatenation references: lane %d of %d (server.instance %d of %d)",
            *lane,
            server.instance,
            server.instances,
        )
        return RefCounter(lane=lane[0], lanes=lane[1])

    async def _retain(self, now_ms: int) -> None:
        if self._retention is None:
            self._retention = Retention(self.store, self.config.store.retention_days)
        cfg = self.config
        try:
            purged = await self._retention.run(
                now_ms, billing=cfg.billing.enabled, tz=cfg.rules.timezone
            )
        except PurgeFailed as exc:  # what went before the failure is gone: counted
            self.metrics.purged(exc.purged)
            raise
        if any(purged.values()):
            log.info("retention purge %s", purged)
            self.metrics.purged(purged)

    async def stop(self) -> None:
        grace = self.config.server.shutdown_grace_s
        self._stopping = True
        with contextlib.suppress(TimeoutError):  # a reload under way finishes first
            async with asyncio.timeout(RELOAD_WAIT_S), self._reload_lock:
                pass
        if self.ctx is not None:
            self.ctx.accepting = False
        if self.dispatcher is not None:
            await self.dispatcher.stop(grace)
        for c in self.connectors.values():
            try:
                await c.stop(grace)
            except Exception:
                log.exception("stopping connector %s", c.name)
        if self.coord is not None:  # binds are closed: now their slots may go to others
            await self.coord.stop()
        if self.inbound is not None:
            await self.inbound.drain()
        if self.webhooks is not None:
            await self.webhooks.stop()
        for t in await cancel_and_wait(self._tasks, TASK_STOP_S):
            log.error(
                "task %s did not end within %g s of its cancel; stopping without it",
                t.get_name(),
                TASK_STOP_S,
            )
        if self._runner is not None:
            await self._runner.cleanup()
        if self._aliyun_runner is not None:
            await self._aliyun_runner.cleanup()
        if self._admin_runner is not None:
            await self._admin_runner.cleanup()
        if self.ctx is not None and self.store is not None:
            # The uses noted since the last flush, now that no request is served any more.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(KEY_USE_STOP_S):
                    await self.ctx.auth.key_use.flush(self.store)
        if self._wake_listener is not None:
            self._wake_listener.close()
        if self._wake_sender is not None:
            self._wake_sender.close()
        if self.wait_flag is not None:  # acceptors still running keep their own mapping
            self.wait_flag.close()
        self._release_ports()
        if self.sim is not None:
            await self.sim.stop()
        if self.store is not None:
            await self.store.close()
        self._stopped.set()
        log.info("smpp-bridge stopped")

    async def reload(self, new: Config) -> ReloadPlan:
        """Apply a new configuration without a restart: routes, SMSC settings (reconnecting only
        SMSCs whose bind settings changed), pipeline, text, rules and webhook settings. Server,
        store, security, simulator, logging and Alibaba-face settings need a restart (the
        listeners and log handlers are set up once); a change to them is logged and ignored."""
        old = self.config
        p = plan(old, new)
        if p.needs_restart:
            log.warning("reload: %s changed; restart to apply", ", ".join(p.needs_restart))
        merged = replace(new, **{path: getattr(old, path) for path in RESTART_PATHS})
        if new.smscs == (implicit_sim_smsc(new.sim),) and new.sim != old.sim:
            # Only the simulator is configured: its SMSC follows the simulator kept running (a
            # sim change needs a restart), or the one bind went to the new port and stayed down.
            merged = replace(merged, smscs=(implicit_sim_smsc(old.sim),))
        # Everything that can fail is built before anything changes: a reload that failed half
        # way once left the connectors on the new file and the content filter off.
        router = make_router(merged)
        smscs = {s.name: s for s in merged.smscs}
        new_filter = load_filter(merged.rules.content_filter_file)
        if self.dispatcher is not None and self.inbound is not None:
            grace = old.server.shutdown_grace_s
            # Built before any stop: a connector that cannot be built (an unreadable CA file)
            # once failed the reload after the running one was stopped, and the SMSC stayed
            # unbound until a restart.
            fresh = {name: self._connector(smscs[name]) for name in (*p.add, *p.rebind)}
            try:
                for name in (*p.remove, *p.rebind):
                    connector = self.connectors.pop(name)  # the dispatcher sends it no more
                    self._draining[name] = (
                        connector,
                        "reconnecting" if name in p.rebind else "removing",
                    )
                    await connector.stop(grace)
                    if self.coord is not None:  # its bind slots are free for any instance now
                        await self.coord.release(name)
                self.dispatcher.reconfigure(router, smscs, merged.pipeline)
                self.inbound.reconfigure(smscs)
                for name, connector in fresh.items():
                    self._gate(connector)
                    self.connectors[name] = connector
                    self._draining.pop(name, None)
                    await connector.start()
            finally:
                self._draining.clear()  # the removed ones leave the status with the reload
            for name in p.update:
                self.connectors[name].update_limits(smscs[name])
        if self.ctx is not None:
            self.ctx.config = merged
            # The same reference counters: fresh ones could reuse the reference of a long
            # message still in flight to the same number (its parts mixed on the handset).
            self.ctx.submitter = Submitter(merged, router, refs=self.ctx.submitter.refs)
            self.ctx.send_rules.reload(merged, new_filter)
            self.ctx.submitter.content_filter = self.ctx.send_rules.filter
        if self.store is not None:
            # From now on: the roll-up queues "sent" reports (or stops) at once, receipts and
            # acceptances settle parts by the new smscs[].receipts (parts settled before keep
            # their outcome), the quota's days are the new zone's.
            before = set(getattr(self.store, "one_receipt_smscs", ()))
            configure_store(self.store, merged)
            self._receipts_switched |= set(getattr(self.store, "one_receipt_smscs", ())) - before
        if self.webhooks is not None:
            self.webhooks.config = merged.webhooks
            self.webhooks.tz = merged.rules.timezone  # the reports' local times
        if self.inbound is not None:
            self.inbound.optout_keywords = tuple(merged.rules.optout_keywords)
        self.config = merged
        # A new SMSC's password (or a rotated one) is redacted from now on, the old one still.
        logs.add_secrets(logs.config_secrets(merged))
        log.info(
            "reloaded configuration: added %s, removed %s, reconnected %s, updated %s; changed %s",
            list(p.add),
            list(p.remove),
            list(p.rebind),
            list(p.update),
            list(p.applied),
        )
        return p

    def file_changed(self) -> bool:
        """The configuration file is not the one the running configuration was read from."""
        return _stamp(self.config_path) != self._config_stamp

    async def reload_from_file(self) -> bool:
        """SIGHUP: load the file and apply it; False when it was refused or failed."""
        async with self._reload_lock:
            if self._stopping:
                log.info("reload ignored: shutting down")
                return False
            stamp = _stamp(self.config_path)
            try:
                text = None if self.config_path is None else read_config_text(self.config_path)
                new = load_config(self.config_path, text=text)
            except ConfigError as exc:
                # One line, as every event (a journal or a collector splits on newlines).
                errors = "; ".join(exc.errors)
                log.error("reload refused, configuration invalid (nothing changed): %s", errors)
                self.metrics.reload_result(False)
                return False
            try:
                await self.reload(new)
            except Exception:
                log.exception("reload failed")
                self.metrics.reload_result(False)
                return False
            self._config_stamp = stamp
            self.applied_text = text
            if text is not None:
                self._publish_generation(text)
            self.metrics.reload_result(True)
            return True

    def _publish_generation(self, text: str) -> None:
        if self.role != "owner":
            slot = os.environ.get(WORKER_ENV, "") if self.role == "acceptor" else ""
            self.metrics.set_generation(self.role, slot, generation(text))

    def drain(self) -> None:
        """Stop taking sends (503 `SHUTTING_DOWN`, /readyz not ready) but keep the port open.

        An acceptor's first SIGTERM: the supervisor sends it before the owner drains its binds
        and the second once the owner has stopped. Closing the port at the first one left the
        daemon refusing connections (no 503, no /readyz) for the whole of the owner's grace."""
        self._stopping = True  # a SIGHUP from now on is not applied
        if self.ctx is not None and self.ctx.accepting:
            self.ctx.accepting = False
            log.info("draining: sends are answered 503 until the owner process has stopped")

    async def run_forever(self) -> None:
        """Run until SIGTERM/SIGINT; then shut down gracefully. An acceptor drains at its first
        SIGTERM and stops at the second (or when its owner is gone); it leaves SIGINT, which a
        terminal's Ctrl-C sends to every process of the group, to the supervisor."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()

        def on_stop_signal() -> None:
            if self.role == "acceptor" and not self._stopping and not self._owner_gone:
                self.drain()
            else:
                stop.set()

        loop.add_signal_handler(signal.SIGTERM, on_stop_signal)
        if self.role == "acceptor":
            loop.add_signal_handler(signal.SIGINT, lambda: None)
        else:
            loop.add_signal_handler(signal.SIGINT, stop.set)

        def reload() -> None:
            self._reload_tasks.add(task := loop.create_task(self.reload_from_file()))
            task.add_done_callback(self._reload_tasks.discard)

        gate = HupGate(reload)
        loop.add_signal_handler(signal.SIGHUP, gate.signal)
        await self.start()
        if self._stopping:  # the first SIGTERM came while starting, before the API existed
            self.drain()
        gate.opened(self.file_changed())
        try:
            await stop.wait()
        finally:
            log.info("shutting down")
            await self.stop()


def _env_count(name: str) -> int:
    """A count the supervisor passes its acceptors in the environment; 0 when absent."""
    value = os.environ.get(name, "")
    return int(value) if value.isdigit() else 0
