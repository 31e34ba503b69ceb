"""End-to-end test harness: a real daemon (in-process or as a subprocess), the real simulator, a
real webhook receiver, real SQLite, all on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from bridge.accounts import AccountService
from bridge.api import signing
from bridge.client import BridgeClient
from bridge.config import Config, parse_config
from tests.ports import free_port
from tests.sending import TEST_INTERNATIONAL, ready_to_send
from tests.sqlite_template import migrated_copy

MASTER_KEY = base64.b64encode(b"k" * 32).decode()
ADMIN_TOKEN = "e2e-admin-token-0123456789"


def proc_stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state, start time) of a process, None when there is no such process. The start
    time (clock ticks since boot) tells it from a later process given the same pid: pids wrap
    every few minutes under the suite (pid_max is 32,768 on CI's machine)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0], int(fields[19])


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def config_dict(tmp: Path, **overrides: Any) -> dict[str, Any]:
    sim_port = free_port()
    base: dict[str, Any] = {
        "server": {
            "host": "127.0.0.1",
            "port": free_port(),
            "admin_token": ADMIN_TOKEN,
            "shutdown_grace_s": 2,
        },
        "store": {"engine": "sqlite", "path": str(tmp / "bridge.db")},
        "security": {"master_key": MASTER_KEY},
        "logging": {"level": "INFO"},
        "webhooks": {"retry_schedule_s": [1], "timeout_s": 2},
        "billing": {"tariff": {"international": TEST_INTERNATIONAL}},
        "sim": {
            "enabled": True,
            "port": sim_port,
            "control_port": free_port(),
            "system_id": "bridge",
            "password": "bridge",
            "receipt_delay_ms": 10,
        },
        "smscs": [
            {
                "name": "sim",
                "port": sim_port,
                "system_id": "bridge",
                "password": "bridge",
                "reconnect_min_s": 0.2,
                "reconnect_max_s": 1,
                "throttle_pause_min_s": 0.05,
                "throttle_pause_max_s": 0.2,
            }
        ],
    }
    smscs = overrides.pop("smscs", None)
    out = deep_merge(base, overrides)
    if smscs is not None:
        # Partial SMSC entries: each completes the default one (the first keeps the sim's port).
        default = base["smscs"][0]
        out["smscs"] = [
            {**default, **({} if i == 0 else {"port": free_port()}), **s}
            for i, s in enumerate(smscs)
        ]
    return out


def make_config(tmp: Path, **overrides: Any) -> Config:
    return parse_config(config_dict(tmp, **overrides), env={}, base_dir=tmp)


def handles_sighup(pid: int) -> bool:
    """Whether process `pid` has its own SIGHUP handler yet (its SigCgt bit). An acceptor starts
    with SIGHUP ignored and installs its handler once it has read its configuration: a reload
    forwarded before then is not applied there. A process that is gone handles nothing."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    for line in status.splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGHUP - 1) & 1)
    return False


async def wait_until(pred: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


async def statuses_once_final(
    client: BridgeClient, ids: Iterable[str], final: Collection[str], timeout: float
) -> Counter[str]:
    """The messages' statuses (GET /v1/messages/{id}, one each), read once none is pending.

    Each poll first asks the account's list for one queued and one sent message (two requests)
    and reads every message only when neither is there; the statuses of that pass are returned
    once they are all in `final` (a message requeued meanwhile shows in it, and the pass is
    tried again). The crash tests used to read each of their 1,200-1,500 messages every half
    second until all were final, then all again for the assertion: two passes of GETs at
    ~17 ms each on a busy machine, 25 s each in tests/e2e/test_crash.py, for one pass's facts.
    """
    ids = list(ids)
    seen: Counter[str] = Counter()

    async def done() -> bool:
        for status in ("queued", "sent"):
            if (await client.messages(status=status, limit=1))["messages"]:
                return False
        seen.clear()
        seen.update([(await client.message(mid))["status"] for mid in ids])
        return set(seen) <= set(final)

    await wait_until(done, timeout, 0.5)
    return seen


async def create_account(daemon: Any, name: str = "acme", **settings: Any) -> dict[str, str]:
    svc: AccountService = daemon.ctx.accounts
    settings.setdefault("raw_text", True)
    ready = settings.pop("ready", True)
    creds = await svc.create(name, settings, int(time.time() * 1000))
    if ready:
        await ready_to_send(svc.store, creds.account.id, int(time.time() * 1000))
    return {
        "account": creds.account.id,
        "app_key": creds.app_key,
        "app_secret": creds.app_secret,
        "webhook_secret": creds.webhook_secret or "",
    }


async def final_status(client: Any, mid: str, timeout: float = 15.0) -> dict[str, Any]:
    """The message once it reached a final state (polled through the API)."""

    async def done() -> dict[str, Any] | None:
        m = await client.message(mid)
        return m if m["status"] in ("delivered", "failed", "expired", "unknown") else None

    return await wait_until(done, timeout, 0.05)


def client_for(port: int, creds: dict[str, str]) -> BridgeClient:
    return BridgeClient(f"http://127.0.0.1:{port}", creds["app_key"], creds["app_secret"])


class WebhookReceiver:
    """A customer's callback endpoint: records every POST, checks its signature, can fail."""

    def __init__(self, secret: str | None = None) -> None:
        self.secret = secret
        self.requests: list[dict[str, Any]] = []
        self.reports: list[dict[str, Any]] = []
        self.fail_with: int | None = None
        self.hang_s: float = 0.0  # answer this late (a slow customer endpoint), or at stop()
        # stop() ends the hangs: the server's cleanup waits for its handlers, and a test that
        # stopped an endpoint hung for 8 s waited out the 6 s that were left (its report's
        # fate no longer mattered).
        self._stopping = asyncio.Event()
        self.bad_signatures = 0
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.hang_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.hang_s)
        if self.fail_with is not None:
            return web.Response(status=self.fail_with)
        if not self.record(request, body):
            return web.Response(status=400)
        return web.Response(status=204)

    def record(self, request: web.Request, body: bytes) -> bool:
        """Check the POST's signature and record its reports; False (counted) if it is bad."""
        header = request.headers.get(signing.WEBHOOK_HEADER, "")
        if self.secret is not None and not signing.verify_webhook_signature(
            self.secret, body, header, int(time.time())
        ):
            self.bad_signatures += 1
            return False
        items = json.loads(body)
        self.requests.append({"headers": dict(request.headers), "items": items})
        self.reports.extend(items)
        return True

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


READY_S = 60.0  # DaemonProcess.wait_ready's least wait


class DaemonProcess:
    """`smpp-bridge run` as a real subprocess, for crash tests (kill -9)."""

    def __init__(self, tmp: Path, cfg: dict[str, Any]) -> None:
        self.tmp = tmp
        self.cfg = cfg
        self.path = tmp / "bridge.yaml"
        self.path.write_text(yaml.safe_dump(cfg))
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "daemon.log"
        self.port = cfg["server"]["port"]

    def start(self) -> None:
        store = self.cfg.get("store", {})
        if store.get("engine", "sqlite") == "sqlite" and store.get("path"):
            # A first start opens the store as a fresh migration leaves it, as the in-process
            # servers do (tests/sqlite_template.py): the daemon's own migration of a new file took
            # 0.1-0.35 s of a busy machine's wall a start. A file already there (a restart, an old
            # schema the test wrote, `db migrate` run first) is the test's and is left as it is.
            migrated_copy(self.path.parent / store["path"])
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        # The child has its own copy of the log's descriptor: ours closes at once (left open, the
        # file object was closed by the garbage collector in a later test: a ResourceWarning).
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", "run", "--config", str(self.path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )

    async def wait_ready(self, timeout: float = READY_S) -> None:
        """Until /readyz answers 200, failing at once if the daemon exits. Waits READY_S at the
        least, whatever `timeout` says: no test measures a start's time here, and at load ~22 a
        start (the interpreter, the imports, the store) ran past 15 s."""
        import aiohttp

        timeout = max(timeout, READY_S)

        async def ready() -> bool:
            try:
                async with (
                    aiohttp.ClientSession() as s,
                    s.get(
                        f"http://127.0.0.1:{self.port}/readyz",
                        timeout=aiohttp.ClientTimeout(total=1),
                    ) as r,
                ):
                    return r.status == 200
            except (TimeoutError, aiohttp.ClientError, OSError):
                assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
                return False

        await wait_until(ready, timeout, 0.1)

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.terminate(5)

    async def account(self, name: str) -> dict[str, str]:
        """A prepaid raw-text account made with the CLI against this daemon's store, as an
        operator would: its key and secret."""
        cmd = [sys.executable, "-m", "bridge.cli", "account", "create", name, "--raw-text",
               "--topup", "100000", "--config", str(self.path)]  # fmt: skip
        p = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
        out, _ = await p.communicate()
        assert p.returncode == 0
        data = json.loads(out)
        return {"app_key": data["app_key"], "app_secret": data["app_secret"]}
