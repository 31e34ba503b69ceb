"""Composition root: builds the store, the SMPP connectors, the pipeline and the HTTP API from one
Config, and starts and stops them in order.

Start: store (migrations, crash recovery) -> simulator (if enabled) -> connectors -> pipeline ->
HTTP. Stop (SIGTERM): HTTP answers 503 -> dispatcher stops claiming and waits for its windows
(bounded) -> binds unbind -> receipts flushed -> HTTP closed -> store closed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from bridge.accounts import AccountService
from bridge.api.app import make_app
from bridge.api.auth import Authenticator
from bridge.api.context import ApiContext
from bridge.api.submit import Submitter
from bridge.config import Config
from bridge.crypto import Sealer, load_master_key
from bridge.pipeline.dispatcher import Dispatcher
from bridge.pipeline.inbound import Inbound
from bridge.pipeline.webhooks import WebhookSender
from bridge.smpp.router import Route, Router
from bridge.store.base import Store

log = logging.getLogger("bridge.app")


def open_store(config: Config) -> Store:
    if config.store.engine == "sqlite":
        from bridge.store.sqlite import SqliteStore

        return SqliteStore(
            config.store.path,
            linger_ms=config.store.group_commit_ms,
            max_batch=config.store.group_commit_max,
        )
    raise SystemExit("store.engine: postgres is not available in this build yet")


def make_sealer(config: Config) -> Sealer:
    sec = config.security
    return Sealer(
        load_master_key(
            inline=sec.master_key, key_file=sec.master_key_file, generate=sec.generate_master_key
        )
    )


def make_router(config: Config) -> Router:
    return Router([Route(r.prefix, tuple(r.smscs)) for r in config.routes], config.default_route)


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        instance: str | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}"
        self.store: Store | None = None
        self.sim: Any = None
        self.connectors: dict[str, Any] = {}
        self.dispatcher: Dispatcher | None = None
        self.inbound: Inbound | None = None
        self.webhooks: WebhookSender | None = None
        self.ctx: ApiContext | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.http_port: int | None = None
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        cfg = self.config
        sealer = make_sealer(cfg)
        self.store = store = open_store(cfg)
        await store.open()
        if cfg.sim.enabled:
            from bridge.sim.server import SimSmsc

            self.sim = SimSmsc(cfg.sim)
            await self.sim.start()
            log.info("built-in SMSC simulator on %s:%s", cfg.sim.host, self.sim.port)

        smscs = {s.name: s for s in cfg.smscs}
        recovered = await store.recover(
            self.instance,
            int(self.clock() * 1000),
            frozenset(n for n, s in smscs.items() if s.in_flight_on_restart == "unknown"),
        )
        if any(recovered.values()):
            log.warning("recovered claims after restart: %s", recovered)

        router = make_router(cfg)
        self.inbound = Inbound(store, smscs, clock=self.clock)
        from bridge.smpp.connector import Connector

        for s in cfg.smscs:
            self.connectors[s.name] = Connector(s, self.inbound.on_deliver)
        self.dispatcher = Dispatcher(
            store,
            self.connectors,
            router,
            smscs,
            instance=self.instance,
            claim_batch=cfg.pipeline.claim_batch,
            idle_s=cfg.pipeline.dispatch_idle_ms / 1000,
            clock=self.clock,
        )
        accounts = AccountService(store, sealer)
        self.webhooks = WebhookSender(store, accounts, cfg.webhooks, clock=self.clock)
        self.ctx = ApiContext(
            config=cfg,
            store=store,
            auth=Authenticator(store, sealer, max_skew_s=cfg.server.clock_skew_s, clock=self.clock),
            submitter=Submitter(cfg, router),
            accounts=accounts,
            clock=self.clock,
            on_accepted=self.dispatcher.wake,
            smsc_status=self.smsc_status,
        )
        self.ctx.queue_depth = await store.queue_depth()

        for c in self.connectors.values():
            await c.start()
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self.dispatcher.run(), name="dispatcher"),
            loop.create_task(self.webhooks.run(), name="webhooks"),
            loop.create_task(self._housekeeping(), name="housekeeping"),
        ]
        app = make_app(self.ctx)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, cfg.server.host, cfg.server.port, reuse_address=True)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.http_port = sockets[0].getsockname()[1] if sockets else cfg.server.port
        log.info(
            "smpp-bridge listening on http://%s:%s (instance %s, store %s)",
            cfg.server.host,
            self.http_port,
            self.instance,
            cfg.store.engine,
        )

    def smsc_status(self) -> dict[str, Any]:
        return {name: {"up": c.is_up, **c.snapshot()} for name, c in self.connectors.items()}

    async def _housekeeping(self) -> None:
        """Queue depth for back-pressure every second; expiry/timeout sweep every 5 s."""
        assert self.store is not None and self.ctx is not None
        ticks = 0
        timeout_ms = self.config.pipeline.receipt_timeout_hours * 3_600_000
        while True:
            await asyncio.sleep(1.0)
            ticks += 1
            try:
                self.ctx.queue_depth = await self.store.queue_depth()
                if ticks % 5 == 0:
                    now_ms = int(self.clock() * 1000)
                    swept = await self.store.sweep(now_ms, timeout_ms)
                    if any(swept.values()):
                        log.info("sweep %s", swept)
                    stale = now_ms - int(self.config.pipeline.mo_reassembly_timeout_s * 1000)
                    await self.store.drop_stale_mo_parts(stale)
                    if self.webhooks is not None:
                        self.webhooks.wake()
            except Exception:
                log.exception("housekeeping failed")

    async def stop(self) -> None:
        grace = self.config.server.shutdown_grace_s
        if self.ctx is not None:
            self.ctx.accepting = False
        if self.dispatcher is not None:
            await self.dispatcher.stop(grace)
        for c in self.connectors.values():
            try:
                await c.stop(grace)
            except Exception:
                log.exception("stopping connector %s", c.name)
        if self.inbound is not None:
            await self.inbound.drain()
        if self.webhooks is not None:
            await self.webhooks.stop()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()
        if self.sim is not None:
            await self.sim.stop()
        if self.store is not None:
            await self.store.close()
        self._stopped.set()
        log.info("smpp-bridge stopped")

    async def run_forever(self) -> None:
        """Run until SIGTERM/SIGINT; then shut down gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            await stop.wait()
        finally:
            log.info("shutting down")
            await self.stop()
