"""`smpp-bridge run` with `server.workers: N`: this process owns the binds, the dispatcher,
receipts and webhooks; N acceptor processes serve the HTTP API on the same port (SO_REUSEPORT)
and write accepted messages straight into the shared store.

Why processes: the accept path (HTTP, signature, validation, encoding) and the SMPP pipeline are
each CPU-bound Python; one interpreter runs one core at a time. Splitting them along the store,
which is already the boundary of durability, lets a second core work without any new protocol:
acceptors commit, then wake the owner with a datagram (`pipeline/wake.py`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time

from bridge import metrics
from bridge.app import Daemon
from bridge.config import Config

log = logging.getLogger("bridge.supervisor")


class Supervisor:
    def __init__(self, config: Config, config_path: str | None, workers: int) -> None:
        self.config = config
        self.config_path = config_path
        self.workers = workers
        # Before any metric exists: every process writes its numbers to files in one directory
        # (inherited by the acceptors through the environment); whichever acceptor answers a
        # scrape merges them all. See bridge/metrics.py.
        self.metrics_dir, self._metrics_dir_ours = metrics.enable_multiprocess()
        self.owner = Daemon(config, role="owner", config_path=config_path)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self._stopping = False
        self._restarts: dict[int, list[float]] = {}

    def _spawn(self, slot: int) -> None:
        cmd = [sys.executable, "-m", "bridge.cli", "run", "--role", "acceptor"]
        if self.config_path:
            cmd += ["--config", self.config_path]
        env = {**os.environ, "SMPP_BRIDGE_WORKER": str(slot)}
        # SIGHUP ignored until the acceptor installs its own handler: forwarded to one still
        # starting, its default action killed it.
        self.procs[slot] = subprocess.Popen(cmd, env=env, preexec_fn=_ignore_sighup)
        log.info("acceptor %d started (pid %d)", slot, self.procs[slot].pid)

    async def _monitor(self) -> None:
        while not self._stopping:
            await asyncio.sleep(0.5)
            for slot, proc in list(self.procs.items()):
                if proc.poll() is None or self._stopping:
                    continue
                metrics.mark_process_dead(proc.pid)
                recent = [t for t in self._restarts.get(slot, []) if time.monotonic() - t < 60]
                delay = min(30.0, 0.5 * 2 ** len(recent))
                log.error(
                    "acceptor %d exited with %s; restarting in %.1f s", slot, proc.returncode, delay
                )
                self._restarts[slot] = [*recent, time.monotonic()]
                await asyncio.sleep(delay)
                if not self._stopping:
                    self._spawn(slot)

    def _reload(self) -> None:
        """SIGHUP: the owner reloads its binds and routes; each acceptor reloads its own view."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGHUP)
        asyncio.get_running_loop().create_task(self.owner.reload_from_file())

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)
        await self.owner.start()  # migrations, recovery and the simulator before any acceptor
        for slot in range(self.workers):
            self._spawn(slot)
        monitor = loop.create_task(self._monitor())
        try:
            await stop.wait()
        finally:
            log.info("shutting down: acceptors first, then the pipeline")
            self._stopping = True
            monitor.cancel()
            for proc in self.procs.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            grace = self.config.server.shutdown_grace_s + 5
            for proc in self.procs.values():
                try:
                    await asyncio.get_running_loop().run_in_executor(None, proc.wait, grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
            await self.owner.stop()
            metrics.disable_multiprocess(self.metrics_dir, self._metrics_dir_ours)


def _ignore_sighup() -> None:
    """In the acceptor before exec (an ignored signal stays ignored across exec)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
