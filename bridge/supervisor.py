"""`smpp-bridge run` with `server.workers: N`: this process owns the binds, the dispatcher,
receipts and webhooks; N acceptor processes serve the HTTP API on the same port (SO_REUSEPORT)
and write accepted messages straight into the shared store.

Why processes: the accept path (HTTP, signature, validation, encoding) and the SMPP pipeline are
each CPU-bound Python; one interpreter runs one core at a time. Splitting them along the store,
which is already the boundary of durability, lets a second core work without any new protocol:
acceptors commit, then wake the owner with a datagram (`pipeline/wake.py`) if its dispatcher
waits for one (the "waiting" flag, a memfd passed to each acceptor).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from bridge import metrics, tempdirs
from bridge.app import OWNER_INSTANCE_ENV, OWNER_PID_ENV, WORKER_ENV, WORKERS_ENV, Daemon
from bridge.config import CONFIG_BASE_ENV, Config
from bridge.pipeline.wake import WAIT_FLAG_FD_ENV
from bridge.reload import RESTART_PATHS, HupGate, behind, generation

log = logging.getLogger("bridge.supervisor")


# The acceptors' private configuration copies: $TMPDIR/smpp-bridge-<owner pid>-<random>/.
CONFIG_COPY_PREFIX = tempdirs.PREFIX

# How long after signalling a reload every live acceptor has to run the new copy (published as
# smpp_bridge_config_generation); the laggards get the signal again at half-time. A reload of
# an acceptor's own view takes milliseconds: one still behind after this will not catch up
# by itself. The variable is for tests.
RELOAD_CONFIRM_S = float(os.environ.get("SMPP_BRIDGE_RELOAD_CONFIRM_S", "10"))

# Each acceptor listens on the port with a socket of its own (SO_REUSEPORT), and each has its own
# accept queue: when one exits (a crash, its restart), Linux resets the connections still waiting
# in its queue, unless this sysctl (Linux 5.14 and later) is 1, which moves them to another
# acceptor's queue instead (README, "Sizing"; checked on kernel 6.18 in session 51).
MIGRATE_REQ_SYSCTL = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def migrate_req_note(path: Path = MIGRATE_REQ_SYSCTL) -> str | None:
    """The line to log at a start with acceptors when `path` reads 0; None when it reads
    anything else or cannot be read (another system, an older kernel, no /proc): a start never
    fails on it."""
    try:
        value = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeError):
        return None
    if value != "0":
        return None
    return (
        "net.ipv4.tcp_migrate_req is 0: the connections waiting in an acceptor's accept queue "
        "are reset when it exits (a crash, its restart); 1 moves them to another acceptor "
        "(README, Sizing)"
    )


class Supervisor:
    def __init__(
        self, config: Config, config_path: str | None, workers: int, text: str | None = None
    ) -> None:
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
        self._reloading: set[asyncio.Task[None]] = set()
        # Acceptors load a private copy of the configuration the daemon runs, not the file: one
        # restarted after an edit the daemon refused (or after a change that needs a restart:
        # server.port, store.path) read the file as it was then, and failed to start for ever,
        # or served another port, or accepted into a database no owner sends from. The copy
        # follows each reload that applied, with the restart-only sections kept as running.
        self._snapshot: Path | None = None
        self._snapshot_dir: str | None = None
        self._generation: str | None = None  # the copy's (bridge.reload.generation)
        # Acceptors found not running it after a reload: slot -> (pid, what they run), kept
        # until they do (see _confirm and _monitor).
        self._behind: dict[int, tuple[int, str | None]] = {}
        if config_path:
            tempdirs.sweep_once()  # a kill -9 left them
            self._snapshot_dir = tempdirs.make(CONFIG_COPY_PREFIX)  # mode 0700
            self._snapshot = Path(self._snapshot_dir) / "config.yaml"
            # The text `config` was loaded from (read again, it could be the next edit).
            self._write_snapshot(
                Path(config_path).read_text(encoding="utf-8") if text is None else text
            )

    def _write_snapshot(self, text: str) -> None:
        assert self._snapshot is not None
        tmp = self._snapshot.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold secrets
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, self._snapshot)
        self._generation = generation(text)
        self.owner.metrics.set_generation("owner", "", self._generation)

    def _follow_reload(self, applied: str | None) -> None:
        """After a reload the owner applied: the sections of the text it applied (not of the
        file as it is now: an edit saved while a reload drained a bind became the acceptors'
        copy unvalidated, and every acceptor restart failed on it), except those needing a
        restart, which stay as the daemon runs them."""
        if self._snapshot is None or applied is None:
            return
        new: Any = yaml.safe_load(applied) or {}
        running: Any = yaml.safe_load(self._snapshot.read_text(encoding="utf-8")) or {}
        for key in RESTART_PATHS:
            if key in running:
                new[key] = running[key]
            else:
                new.pop(key, None)
        self._write_snapshot(yaml.safe_dump(new, sort_keys=False, allow_unicode=True))

    def _spawn(self, slot: int) -> None:
        cmd = [sys.executable, "-m", "bridge.cli", "run", "--role", "acceptor"]
        env = {
            **os.environ,
            WORKER_ENV: str(slot),
            WORKERS_ENV: str(self.workers),
            OWNER_INSTANCE_ENV: self.owner.instance,
            OWNER_PID_ENV: str(os.getpid()),
        }
        if self._snapshot is not None and self.config_path is not None:
            cmd += ["--config", str(self._snapshot)]
            env[CONFIG_BASE_ENV] = str(Path(self.config_path).resolve().parent)
        # The owner's wait flag (bridge/pipeline/wake.py): without one the acceptor wakes the
        # owner after every commit.
        flag = self.owner.wait_flag
        fds: tuple[int, ...] = ()
        env.pop(WAIT_FLAG_FD_ENV, None)
        if flag is not None and flag.fd is not None:
            fds = (flag.fd,)
            env[WAIT_FLAG_FD_ENV] = str(flag.fd)
        # SIGHUP ignored until the acceptor installs its own handler: forwarded to one still
        # starting, its default action killed it.
        self.procs[slot] = subprocess.Popen(cmd, env=env, preexec_fn=_ignore_sighup, pass_fds=fds)
        log.info("acceptor %d started (pid %d)", slot, self.procs[slot].pid)

    async def _monitor(self) -> None:
        """Restart dead acceptors, each after its own back-off: waiting out one slot's back-off
        (up to 30 s) used to hold up the restart of every other slot."""
        due: dict[int, float] = {}  # slot -> when to start it again
        while not self._stopping:
            await asyncio.sleep(0.5)
            now = time.monotonic()
            for slot, proc in list(self.procs.items()):
                if self._stopping:
                    break
                if slot in due:
                    if now >= due[slot]:
                        del due[slot]
                        self._spawn(slot)
                    continue
                if proc.poll() is None:
                    continue
                metrics.mark_process_dead(proc.pid)
                recent = [t for t in self._restarts.get(slot, []) if now - t < 60]
                delay = min(30.0, 0.5 * 2 ** len(recent))
                log.error(
                    "acceptor %d exited with %s; restarting in %.1f s", slot, proc.returncode, delay
                )
                self._restarts[slot] = [*recent, now]
                due[slot] = now + delay
            if self._behind and not self._stopping:
                self._check_caught_up()

    def _reload(self) -> None:
        """SIGHUP: the owner reloads its binds and routes; if it applied the file, the acceptors'
        copy follows and each acceptor reloads its own view from it. Reloads run one after
        another (Daemon.reload_from_file holds a lock); the tasks are kept, as an unreferenced
        one may be collected mid-run."""
        task = asyncio.get_running_loop().create_task(self._reload_all())
        self._reloading.add(task)
        task.add_done_callback(self._reloading.discard)

    async def _reload_all(self) -> None:
        if not await self.owner.reload_from_file():
            return  # refused or failed: the acceptors keep what they run
        try:
            self._follow_reload(self.owner.applied_text)
        except (OSError, yaml.YAMLError):
            log.exception("reload: the acceptors' copy of the configuration was not updated")
            # They run the configuration before it: the reload did not take everywhere, and
            # smpp_bridge_config_last_reload_successful says so (it read 1 before).
            self.owner.metrics.reload_result(False)
            return
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGHUP)
        await self._confirm()

    def _late(self) -> dict[int, tuple[int, str | None]]:
        """Live acceptors not running the copy: slot -> (pid, what they published, if any)."""
        if self._generation is None:
            return {}
        running = {
            pid: gen
            for role, _, pid, gen in self.owner.metrics.generations()
            if role == "acceptor" and pid is not None
        }
        live = {slot: p.pid for slot, p in self.procs.items() if p.poll() is None}
        late = behind(self._generation, {slot: running.get(pid) for slot, pid in live.items()})
        return {slot: (live[slot], gen) for slot, gen in late.items()}

    async def _confirm(self) -> None:
        """After signalling a reload: wait (up to RELOAD_CONFIRM_S) until every live acceptor
        runs the new copy. Why: the SIGHUP was fire-and-forget, and an acceptor that never
        applied it (its loop stuck, the signal lost) served the old rules, routes and content
        filter while the reload gauge read 1. One still behind is named in the log and holds
        smpp_bridge_config_last_reload_successful at 0 until it catches up (_monitor)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        resent = False
        while late := self._late():
            waited = loop.time() - start
            if waited >= RELOAD_CONFIRM_S or self._stopping:
                break
            if not resent and waited >= RELOAD_CONFIRM_S / 2:
                resent = True
                for slot in late:
                    proc = self.procs[slot]
                    if proc.poll() is None:
                        log.info("reload: acceptor %d (pid %d) signalled again", slot, proc.pid)
                        proc.send_signal(signal.SIGHUP)
            await asyncio.sleep(0.1)
        if self._stopping:
            return
        if not late:
            log.info("reload: every acceptor runs configuration %s", self._generation)
        for slot, (pid, gen) in late.items():
            log.warning(
                "reload: acceptor %d (pid %d) runs configuration %s, not %s, %.0f s after the "
                "SIGHUP: it serves the previous rules, routes and content filter",
                slot,
                pid,
                gen or "(none published)",
                self._generation,
                RELOAD_CONFIRM_S,
            )
        self._behind = late
        self.owner.metrics.acceptors_current(not late)

    def _check_caught_up(self) -> None:
        """Acceptors found behind after a reload: once every live one runs the copy (it
        applied the signal at last, or it was restarted on the copy), the gauge reads 1 again."""
        self._behind = self._late()
        if not self._behind:
            log.info("reload: every acceptor runs configuration %s now", self._generation)
            self.owner.metrics.acceptors_current(True)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        gate = HupGate(self._reload)
        loop.add_signal_handler(signal.SIGHUP, gate.signal)
        await self.owner.start()  # migrations, recovery and the simulator before any acceptor
        note = migrate_req_note()
        if note is not None:
            log.info(note)
        for slot in range(self.workers):
            self._spawn(slot)
        gate.opened(self.owner.file_changed())
        monitor = loop.create_task(self._monitor())
        try:
            await stop.wait()
        finally:
            log.info("shutting down: the acceptors answer 503 while the pipeline drains")
            self._stopping = True
            monitor.cancel()
            # Twice: the first SIGTERM makes each acceptor refuse sends (503 SHUTTING_DOWN, and
            # /readyz not ready, for a load balancer) with the port still open; the second, once
            # the owner has drained its binds, stops it.
            self._signal_acceptors()
            try:
                await self.owner.stop()
            finally:
                self._signal_acceptors()
                await stop_processes(
                    list(self.procs.values()), self.config.server.shutdown_grace_s + 5
                )
            metrics.disable_multiprocess(self.metrics_dir, self._metrics_dir_ours)
            if self._snapshot_dir is not None:
                shutil.rmtree(self._snapshot_dir, ignore_errors=True)

    def _signal_acceptors(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)


async def stop_processes(procs: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    """Wait for processes sent SIGTERM to exit, sending it again each second (two SIGTERMs close
    together can reach a busy process as one: a pending signal is not queued twice, and an
    acceptor stops only at its second); kill what is left after `grace_s`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + grace_s
    for proc in procs:
        while True:
            try:
                await loop.run_in_executor(None, proc.wait, 1.0)
                break
            except subprocess.TimeoutExpired:
                if loop.time() >= deadline:
                    proc.kill()
                    break
                proc.send_signal(signal.SIGTERM)


def _ignore_sighup() -> None:
    """In the acceptor before exec (an ignored signal stays ignored across exec)."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
