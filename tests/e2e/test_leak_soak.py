"""Leak soak: a `server.workers: 2` daemon (SQLite) under steady load for several phases, each
with the faults a daemon meets in months of service, sampled for what must not grow.

Each phase sends 1-part and 3-part messages (with receipts) at a steady rate, half of them on
keep-alive connections and half on a new connection each, while:
- the simulator drops both binds (the daemon reconnects), then is down (connections refused),
  then is a black hole that accepts connections and never answers a bind (each attempt times out
  after `response_timeout_s`), then is back;
- the customer's webhook endpoint answers 500, then 200 with a body that never ends, then hangs
  past `webhooks.timeout_s`, then is stopped (connections refused), then is healthy again;
- HTTP clients hang up mid-body, stall mid-body past `server.body_timeout_s` (408), trickle their
  headers a byte at a time, connect and send nothing, send bad signatures, bad JSON, bytes that
  are not HTTP and paths never seen before, and hold idle keep-alive connections (some closed by
  the client, some left for `server.idle_timeout_s` to close);
- `/admin/...` status reads, `/metrics`, `/healthz` and `/readyz` are polled, a connection each;
- the owner gets a SIGHUP (the file unchanged, a `tps` change applied live, a `window` change
  that rebinds).

After each phase the test waits until the daemon has settled (every message final and reported,
no window slot or queue entry in use, both binds up, no API connection left) and samples each
process (the owner and both acceptors): open fds by kind, threads, RSS (and its anonymous part),
TCP connections by kind and state, read from /proc (psutil is not installed); and from the
daemon: its gauges, its counters, its metric series, the WAL's size and the files in its private
temporary directories. Phase 1 is the warm-up and its end the baseline. After the last phase the
test also waits out the webhook client's pooled keep-alive connections (aiohttp closes them one to
two `webhooks.keepalive_s` after their last use: 2 s here, 15 s by default) and checks that
the daemon is back where it was. The series is printed (run with -s).

Found nothing that leaks: sockets, pipes, epoll fds, metric series and temporary files come back
to the baseline exactly, files and threads within the lazily opened SQLite connections and pools,
RSS moves by allocator noise. Bursts of thousands of mid-body hang-ups raise an acceptor's RSS by
a few MB, a high-water mark (paced, the same hang-ups leave it flat; a traced daemon holds no more
Python objects after them), so the clients here are paced.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from bridge.client import BridgeClient, BridgeError
from bridge.sim.server import SimSmsc
from tests.e2e.harness import (
    ADMIN_TOKEN,
    DaemonProcess,
    WebhookReceiver,
    config_dict,
    free_port,
    make_config,
    wait_until,
)
from tests.e2e.test_chaos_soak import number, text

pytestmark = pytest.mark.slow

# Longer or heavier runs for a closer look: SOAK_PHASES=12 SOAK_RATE=60 (the defaults keep one
# run near 70 s on a shared 2-core machine).
PHASES = int(os.environ.get("SOAK_PHASES") or 5)  # phase 1 is the warm-up
PHASE_S = float(os.environ.get("SOAK_PHASE_S") or 8.0)  # seconds of load per phase
RATE = float(os.environ.get("SOAK_RATE") or 30.0)  # messages offered per second
TRIPLE_SHARE = 0.25  # of them 3-part
WINDOW = 10
BINDS = 2
RESPONSE_TIMEOUT_S = 3.0  # a bind the black hole never answers gives up after this
WEBHOOK_TIMEOUT_S = 1.0
WEBHOOK_KEEPALIVE_S = 2.0  # webhooks.keepalive_s (default 15): the idle wait at the end
IDLE_TIMEOUT_S = 4.0
BODY_TIMEOUT_S = 2.0
SLACK_S = 8.0  # a timer's lateness on a loaded machine (see the timing assertions)
FINAL = ("delivered", "failed", "expired", "unknown")
# What may differ from the baseline (the end of the warm-up phase) once idle:
# - fds: sockets, pipes and epoll none. Files 3: a SQLite connection a process opens lazily (its
#   report reader at its first admin list, its checkpointer at its 50th commit) is its .db and
#   -wal, and .writelock with them when it writes (an acceptor opened all three in phase 2 of a
#   CI run, session 63), and the warm-up makes them likely, not certain. A file leaked per phase
#   shows as 4.
FD_SLACK = 3
# - threads: the store's lazily started single-thread pools (report reader, write-lock waiter).
THREAD_SLACK = 2
# - RSS, per process, between the end of phase 2 and the end of the last one. Measured over 16
#   runs of 5 phases: 40-260 KB in the owner, 150-410 KB in an acceptor (allocator noise, and
#   SQLite page caches following the store; a run of 12 phases: +220 KB in the owner and +540
#   and +790 KB in the acceptors over 10 phases, +150 KB of that in the last 4). The bound is 5
#   times the most seen. What it catches, checked by injecting leaks into the daemon: 4 KB kept
#   per HTTP request grew the acceptors by 3.5 and 1.7 MB (the keep-alive half of the load goes
#   to one of them); in the owner, about 3 KB per message (700 messages in those phases). A cut
#   CDR download is not in the mix: its page buffer (up to 1,000 rows) is a high-water mark that
#   grows with the stored month, 1.5 MB per acceptor here, and no leak.
RSS_GROWTH_KB = 2048
# The WAL stays small (checkpoints every 50 commits here, and at 8 MB in any case).
WAL_MAX_KB = 16 * 1024
ADMIN_READS = (
    "/admin/smscs",
    "/admin/queue",
    "/admin/receipts/unmatched",
    "/admin/webhooks/dead",
    "/metrics",
    "/healthz",
    "/readyz",
)
# What one phase's abusive clients do (see Soak.abuse).
ABUSE = {
    "hang_up": 40, "stall": 5, "slow": 2, "silent": 2, "garbage": 5, "bad_sig": 15,
    "bad_json": 15, "odd_paths": 30, "idle": 9,
}  # fmt: skip


# -- processes -----------------------------------------------------------------------------------


def _ppid_state(pid: int) -> tuple[int, str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[0]


def children(ppid: int) -> list[int]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _ppid_state(int(name))
            if st is not None and st[0] == ppid and st[1] not in ("Z", "X"):
                out.append(int(name))
    return sorted(out)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )


# -- sampling ------------------------------------------------------------------------------------

TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1",
    "05": "FIN_WAIT2", "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK",
    "0A": "LISTEN", "0B": "CLOSING",
}  # fmt: skip


@dataclass
class Ports:
    api: int
    smpp: int
    webhook: int


@dataclass
class Sample:
    role: str
    pid: int
    fds: int
    kinds: Counter[str]
    threads: int
    rss_kb: int
    anon_kb: int
    tcp_states: Counter[str] = field(default_factory=Counter)

    def transient(self) -> int:
        """Connections that come and go with traffic: pooled webhook POSTs, API clients."""
        return self.kinds["tcp:webhook"] + self.kinds["tcp:api"]

    def steady_fds(self) -> int:
        return self.fds - self.transient()

    def line(self, label: str) -> str:
        kinds = " ".join(f"{k}={v}" for k, v in sorted(self.kinds.items()))
        return (
            f"{label:<9} {self.role:<10} {self.fds:>4} {self.steady_fds():>6} {self.threads:>4} "
            f"{self.rss_kb:>8} {self.anon_kb:>8}  {dict(self.tcp_states)} | {kinds}"
        )


SAMPLE_HEADER = (
    f"{'sample':<9} {'process':<10} {'fds':>4} {'steady':>6} {'thr':>4} {'rss_kb':>8} "
    f"{'anon_kb':>8}  tcp states | fds by kind"
)


def _tcp_table(pid: int) -> dict[int, tuple[int, int, str]]:
    """Socket inode -> (local port, remote port, state), from the process's network namespace."""
    out: dict[int, tuple[int, int, str]] = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            out[int(f[9])] = (
                int(f[1].rsplit(":", 1)[1], 16),
                int(f[2].rsplit(":", 1)[1], 16),
                TCP_STATES.get(f[3], f[3]),
            )
    return out


def _inodes(pid: int, name: str) -> set[int]:
    try:
        lines = Path(f"/proc/{pid}/net/{name}").read_text().splitlines()[1:]
    except OSError:
        return set()
    col = 6 if name == "unix" else 9
    return {int(f[col]) for f in map(str.split, lines) if len(f) > col and f[col].isdigit()}


def sample(pid: int, role: str, ports: Ports) -> Sample | None:
    """Fds (by kind), threads, RSS and TCP connections of one process; None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        links = []
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):  # closed meanwhile
                links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
    except OSError:
        return None
    values = {}
    for line in status.splitlines():
        key, _, rest = line.partition(":")
        values[key] = (rest.split() or [""])[0]
    tcp = _tcp_table(pid)
    unix = _inodes(pid, "unix")
    udp = _inodes(pid, "udp") | _inodes(pid, "udp6")
    kinds: Counter[str] = Counter()
    states: Counter[str] = Counter()
    for link in links:
        m = re.fullmatch(r"socket:\[(\d+)\]", link)
        if m and int(m.group(1)) in tcp:
            local, remote, state = tcp[int(m.group(1))]
            states[state] += 1
            if state == "LISTEN":
                kinds["tcp:listen"] += 1
            elif remote == ports.smpp:
                kinds["tcp:smpp"] += 1
            elif remote == ports.webhook:
                kinds["tcp:webhook"] += 1
            elif local == ports.api:
                kinds["tcp:api"] += 1
            else:
                kinds["tcp:other"] += 1
        elif m:
            inode = int(m.group(1))
            kinds["unix" if inode in unix else "udp" if inode in udp else "socket:other"] += 1
        elif link.startswith("pipe:"):
            kinds["pipe"] += 1
        elif link.startswith("anon_inode:"):
            kinds["anon:" + link.split(":", 1)[1].strip("[]")] += 1
        elif link.startswith("/dev/"):
            kinds["dev"] += 1
        elif "metrics-" in link:
            kinds["file:metrics"] += 1
        elif "bridge.db" in link:
            kinds["file:" + (link.rsplit("bridge.db", 1)[1] or ".db")] += 1
        else:
            kinds["file:other"] += 1
    return Sample(
        role=role,
        pid=pid,
        fds=len(links),
        kinds=kinds,
        threads=int(values.get("Threads") or 0),
        rss_kb=int(values.get("VmRSS") or 0),
        anon_kb=int(values.get("RssAnon") or 0),
        tcp_states=states,
    )


Metrics = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse_metrics(text: str) -> Metrics:
    out: Metrics = {}
    for line in text.splitlines():
        m = re.fullmatch(r"([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)", line)
        if m and not line.startswith("#"):
            labels = tuple(sorted(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or "")))
            out[(m.group(1), labels)] = float(m.group(3))
    return out


def metric(values: Metrics, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in values.items() if n == name and want <= set(ls))


def gauges(m: Metrics) -> dict[str, float]:
    """The gauges that count things in use (must be 0 when idle), and the binds."""
    return {
        "window_in_use": metric(m, "smpp_bridge_window_in_use"),
        "queue_depth": metric(m, "smpp_bridge_queue_depth"),
        "unmatched_pending": metric(m, "smpp_bridge_receipts_unmatched_pending"),
        "binds_up": metric(m, "smpp_bridge_binds_up"),
        "window_size": metric(m, "smpp_bridge_window_size"),
    }


# -- the customer's endpoint ---------------------------------------------------------------------


class Receiver(WebhookReceiver):
    """The harness's receiver, which can also answer 200 with a body that never ends: a hostile
    or broken endpoint (README "Webhooks": only the status counts, at most 64 KiB of the answer
    is read, then the connection goes)."""

    def __init__(self) -> None:
        super().__init__()
        self.endless = False
        self.answered: Counter[str] = Counter()  # POSTs by how they were answered

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if not self.endless:
            how = "hung, then 500" if self.hang_s else "500" if self.fail_with else "204"
            self.answered[how] += 1
            return await super()._handle(request)
        self.answered["200 with an endless body"] += 1
        if not self.record(request, await request.read()):
            return web.Response(status=400)
        resp = web.StreamResponse(status=200)
        resp.content_type = "text/plain"
        await resp.prepare(request)
        chunk = b"z" * 16384
        with contextlib.suppress(ConnectionError, RuntimeError):
            for _ in range(1000):  # 16 MB at most; the daemon hangs up long before
                await resp.write(chunk)
                await asyncio.sleep(0.005)
        return resp


# -- the rig -------------------------------------------------------------------------------------


class Soak:
    """A `server.workers: 2` daemon subprocess on SQLite, with the simulator, the customer's
    webhook endpoint and every client in this process."""

    def __init__(self, tmp: Path, rng: random.Random) -> None:
        self.tmp = tmp
        self.rng = rng
        self.loop = asyncio.get_running_loop()
        sim_port = free_port()
        self.cfg = config_dict(
            tmp,
            server={
                "workers": 2,
                "idle_timeout_s": IDLE_TIMEOUT_S,
                "body_timeout_s": BODY_TIMEOUT_S,
            },
            sim={"enabled": False, "port": sim_port},
            smscs=[
                {
                    "port": sim_port,
                    "window": WINDOW,
                    "binds": BINDS,
                    "response_timeout_s": RESPONSE_TIMEOUT_S,
                }
            ],
            # keepalive_s: the idle pool empties within ~2 x 2 s at the end, not up to 30 s
            # (15 s by default, swept every 15 s); still the daemon's own expiry waited for.
            webhooks={
                "retry_schedule_s": [1],
                "timeout_s": WEBHOOK_TIMEOUT_S,
                "keepalive_s": WEBHOOK_KEEPALIVE_S,
            },
        )
        self.sim = SimSmsc(
            replace(
                make_config(tmp).sim, port=sim_port, control_port=free_port(), receipt_delay_ms=100
            ),
            rng=random.Random(rng.random()),
        )
        self.sim.outcomes = {"DELIVRD": 0.9, "UNDELIV": 0.1}
        self.receiver = Receiver()
        self.daemon = DaemonProcess(tmp, self.cfg)
        self.ports = Ports(api=self.daemon.port, smpp=sim_port, webhook=self.receiver.port)
        self.base = f"http://127.0.0.1:{self.daemon.port}"
        self.admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        self.creds: dict[str, str] = {}
        self.owner = 0
        self.acceptors: list[int] = []
        # what happened
        self.accepted: dict[int, str] = {}
        self.next_i = 0
        self.send_errors: Counter[str] = Counter()
        self.abuse_seen: Counter[str] = Counter()
        self.closed_after: dict[str, list[float]] = defaultdict(list)  # seconds, by client kind
        self.reads: Counter[str] = Counter()
        self.problems: list[str] = []
        self.window = WINDOW
        self.reloads = 0
        self.black_hole_connections = 0

    # -- life ------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.sim.start()
        await self.receiver.start()
        out = cli(
            "account", "create", "soakco", "--raw-text", "--topup", "100000",
            "--callback", self.receiver.url, "--config", str(self.daemon.path),
        )  # fmt: skip
        self.creds = json.loads(out.stdout)
        self.receiver.secret = self.creds["webhook_secret"]
        self.daemon.start()
        await self.daemon.wait_ready(60)
        assert self.daemon.proc is not None
        self.owner = self.daemon.proc.pid
        await wait_until(
            lambda: len(children(self.owner)) == 2 and self.log_count("acceptor listening on") >= 2,
            60,
            0.1,
        )
        self.acceptors = children(self.owner)
        # Each acceptor opens its report reader (a SQLite connection and a thread) at its first
        # admin list: 40 of them on new connections reach both (SO_REUSEPORT), before the
        # baseline, where a later first one would read as growth.
        async with aiohttp.ClientSession(
            headers=self.admin, connector=aiohttp.TCPConnector(force_close=True)
        ) as s:
            for _ in range(40):
                async with s.get(f"{self.base}/admin/queue") as r:
                    assert r.status == 200

    async def close(self) -> None:
        await asyncio.to_thread(self.daemon.stop)
        await self.receiver.stop()
        await self.sim.stop()

    def log_count(self, needle: str) -> int:
        return self.daemon.log.read_text(errors="replace").count(needle)

    def processes(self) -> list[tuple[int, str]]:
        return [(self.owner, "owner"), *((p, f"acceptor{k}") for k, p in enumerate(self.acceptors))]

    def sample_all(self) -> list[Sample]:
        return [s for pid, role in self.processes() if (s := sample(pid, role, self.ports))]

    def client(self) -> BridgeClient:
        return BridgeClient(
            self.base, self.creds["app_key"], self.creds["app_secret"], timeout_s=20
        )

    async def scrape(self) -> Metrics:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
            s.get(f"{self.base}/metrics") as r,
        ):
            assert r.status == 200
            return parse_metrics(await r.text())

    async def admin_get(self, path: str) -> Any:
        async with (
            aiohttp.ClientSession(
                headers=self.admin, connector=aiohttp.TCPConnector(force_close=True)
            ) as s,
            s.get(f"{self.base}{path}") as r,
        ):
            assert r.status == 200, (path, r.status)
            return await r.json()

    # -- load ------------------------------------------------------------------------------------
    async def load(self, client: BridgeClient, seconds: float) -> None:
        """`seconds` of sends at RATE, each retried with its key until it is accepted: every
        other one on `client`'s keep-alive connections, the others on a new connection each
        (which the kernel spreads over both acceptors, as it does many customers)."""
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)
        ) as session:
            fresh = BridgeClient(
                self.base,
                self.creds["app_key"],
                self.creds["app_secret"],
                timeout_s=20,
                session=session,
            )
            await self._load(client, fresh, seconds)

    async def _load(self, client: BridgeClient, fresh: BridgeClient, seconds: float) -> None:
        n = int(seconds * RATE)
        first, self.next_i = self.next_i, self.next_i + n
        t0 = self.loop.time()
        sem = asyncio.Semaphore(16)

        async def one(i: int) -> None:
            parts = 3 if self.rng.random() < TRIPLE_SHARE else 1
            key = str(uuid.uuid4())
            async with sem:
                for attempt in range(20):
                    try:
                        r = await (fresh if i % 2 else client).send(
                            number(i), text=text(i, parts), idempotency_key=key
                        )
                    except BridgeError as e:
                        self.send_errors[f"{e.status} {e.code}"] += 1
                    except (aiohttp.ClientError, TimeoutError, OSError) as e:
                        self.send_errors[type(e).__name__] += 1
                    else:
                        self.accepted[i] = r["messages"][0]["id"]
                        return
                    await asyncio.sleep(0.2 * (attempt + 1))

        tasks = []
        for k in range(n):
            await asyncio.sleep(max(0.0, t0 + k / RATE - self.loop.time()))
            tasks.append(asyncio.create_task(one(first + k)))
        await asyncio.gather(*tasks)

    # -- SMSC faults -----------------------------------------------------------------------------
    async def drop_binds(self) -> None:
        before = self.sim.counters["dropped_connections"]
        self.sim.drop_after_pdus = 1  # every bind is dropped at its next PDU
        try:
            await wait_until(
                lambda: self.sim.counters["dropped_connections"] >= before + BINDS, 20, 0.005
            )
        finally:
            self.sim.drop_after_pdus = 0

    async def smsc_down(self, refused_s: float, black_hole_s: float) -> None:
        """The SMSC goes away (its binds unbound), refuses connections, then accepts them and
        never answers, then comes back."""
        await self.sim.stop()
        await asyncio.sleep(refused_s)
        held: list[asyncio.StreamWriter] = []

        async def swallow(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            held.append(w)
            self.black_hole_connections += 1

        hole = await asyncio.start_server(swallow, "127.0.0.1", self.ports.smpp)
        try:
            await asyncio.sleep(black_hole_s)
        finally:
            hole.close()
            for w in held:
                w.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(hole.wait_closed(), 2)
        await self.sim.start()

    # -- webhook faults --------------------------------------------------------------------------
    async def webhook_faults(self) -> None:
        """500s, an endless 200, a hang past the daemon's timeout, connections refused; then
        healthy, so the backlog is delivered by ordinary 204s."""
        r = self.receiver
        r.fail_with = 500
        await asyncio.sleep(1.0)
        r.fail_with, r.endless = None, True  # 200, then a body that never ends
        await asyncio.sleep(0.7)
        # Hanging past the daemon's timeout, and answering 500 after it, so a POST the daemon
        # gave up on is never also counted as delivered here.
        r.endless, r.fail_with, r.hang_s = False, 500, WEBHOOK_TIMEOUT_S + 1.0
        await asyncio.sleep(2.0)
        await r.stop()  # refused
        await asyncio.sleep(1.5)
        r.fail_with, r.hang_s = None, 0.0
        await r.start()

    # -- reload ----------------------------------------------------------------------------------
    async def sighup(self) -> str:
        """A SIGHUP to the owner, the file unchanged or changed harmlessly; returns what."""
        data = yaml.safe_load(self.daemon.path.read_text())
        what = ("unchanged", "tps", "window", "tps back", "unchanged")[self.reloads % 5]
        self.reloads += 1
        if what == "tps":  # applied without a reconnect
            data["smscs"][0]["tps"] = 1000
        elif what == "tps back":
            data["smscs"][0].pop("tps", None)
        elif what == "window":  # the SMSC rebinds
            self.window = WINDOW + 1 if self.window == WINDOW else WINDOW
            data["smscs"][0]["window"] = self.window
        if what != "unchanged":
            self.daemon.path.write_text(yaml.safe_dump(data))
        before = self.log_count("reloaded configuration")
        os.kill(self.owner, signal.SIGHUP)
        # The owner logs it, then each acceptor.
        await wait_until(lambda: self.log_count("reloaded configuration") >= before + 3, 20, 0.1)
        return what

    # -- abusive HTTP clients --------------------------------------------------------------------
    async def _raw(self, data: bytes, *, read_s: float = 0.0) -> bytes:
        """Send `data` on a new connection, then close it at once, or first read what the
        server says until it closes (at most `read_s`; "<EOF>" is appended when it did)."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.daemon.port)
        got = b""
        try:
            writer.write(data)
            await writer.drain()
            if read_s:
                with contextlib.suppress(TimeoutError, ConnectionError):
                    async with asyncio.timeout(read_s):
                        while chunk := await reader.read(65536):
                            got += chunk
                        got += b"<EOF>"
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        return got

    def _post_head(self, client: BridgeClient, body: bytes) -> bytes:
        """Signed headers of a send of `body` (session 36: an unsigned one is refused before its
        body is read, so a client hanging up or stalling mid-body must pass them first)."""
        base = {"Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())}
        headers = client.signed_headers("POST", "/v1/messages", "", body, base)
        lines = ["POST /v1/messages HTTP/1.1", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    async def _until_closed(self, trickle: bytes, limit_s: float) -> float | None:
        """Open a connection and send `trickle` a byte every 0.5 s (nothing when empty): the
        seconds until the server closed it, None when it was still open after `limit_s`."""
        t0 = self.loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", self.daemon.port)
        try:
            async with asyncio.timeout(limit_s):
                for k in range(len(trickle) if trickle else 0):
                    writer.write(trickle[k : k + 1])
                    await writer.drain()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(0.5):
                            if not await reader.read(65536):
                                return self.loop.time() - t0
                while await reader.read(65536):
                    pass
                return self.loop.time() - t0
        except TimeoutError:
            return None
        except ConnectionError:
            return self.loop.time() - t0
        finally:
            writer.close()

    async def abuse(self, client: BridgeClient, counts: dict[str, int]) -> None:
        """Clients a public port meets, all answered or closed as README "Errors" and "TLS
        termination" say; what each got is counted in `abuse_seen`."""
        seen = self.abuse_seen
        body = json.dumps({"to": "+8613900000000", "text": "x" * 300}).encode()
        limit_s = IDLE_TIMEOUT_S + 4

        async def hang_ups() -> None:
            # Headers and half the body, then hang up; paced as clients are (a burst of
            # thousands raises the acceptor's RSS to its high-water mark, which is no leak).
            for _ in range(counts.get("hang_up", 0)):
                await self._raw(self._post_head(client, body) + body[: len(body) // 2])
                seen["mid-body hang-up"] += 1
                await asyncio.sleep(0.005)

        async def stall() -> None:
            # Stall mid-body past body_timeout_s: the server answers 408 and closes.
            t0 = self.loop.time()
            got = await self._raw(self._post_head(client, body) + body[:50], read_s=limit_s)
            ok = b" 408 " in got and got.endswith(b"<EOF>")
            seen["mid-body stall: 408, closed" if ok else "mid-body stall: other"] += 1
            if ok:
                self.closed_after["mid-body stall"].append(self.loop.time() - t0)

        async def slow_headers() -> None:
            # Headers trickling in a byte every 0.5 s: closed at idle_timeout_s all the same.
            head = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{self.daemon.port}\r\nX-Slow: "
            took = await self._until_closed(head.encode() + b"a" * 40, limit_s)
            seen["slow headers: closed" if took is not None else "slow headers: open"] += 1
            if took is not None:
                self.closed_after["slow headers"].append(took)

        async def silent() -> None:
            # A connection that never sends a byte.
            took = await self._until_closed(b"", limit_s)
            seen["silent: closed" if took is not None else "silent: open"] += 1
            if took is not None:
                self.closed_after["silent"].append(took)

        async def garbage() -> None:
            # Bytes that are not HTTP: 400 and closed.
            got = await self._raw(b"\x16\x03\x01\x02\x00 not http\r\n\r\n", read_s=5)
            seen["not HTTP: 400" if b" 400 " in got else "not HTTP: other"] += 1

        async def signed_faults() -> None:
            # Bad signatures and bad JSON on one keep-alive connection.
            async with aiohttp.ClientSession() as s:
                kinds = ["bad_sig"] * counts.get("bad_sig", 0)
                kinds += ["bad_json"] * counts.get("bad_json", 0)
                for kind in kinds:
                    payload = (
                        b'{"to": "+8613900000000", "text": "hi"}'
                        if kind == "bad_sig"
                        else b'{"to": "+8613900000000", "text": '  # cut short
                    )
                    headers = client.signed_headers(
                        "POST",
                        "/v1/messages",
                        "",
                        payload,
                        {"Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())},
                    )
                    if kind == "bad_sig":
                        headers["Authorization"] = re.sub(
                            r"Signature=\w+", "Signature=" + "0" * 64, headers["Authorization"]
                        )
                    async with s.post(
                        f"{self.base}/v1/messages",
                        data=payload,
                        headers=headers,
                        skip_auto_headers=("Content-Type",),
                    ) as r:
                        await r.read()
                        seen[f"{kind}: {r.status}"] += 1

        async def odd_paths() -> None:
            # Paths never seen before, each once: unsigned, unknown, or with a wrong admin token
            # (the metrics label them by route, never by path).
            async with aiohttp.ClientSession() as s:
                for k in range(counts.get("odd_paths", 0)):
                    path, headers = [
                        (f"/v1/messages/msg_{uuid.uuid4().hex}", {}),
                        (f"/{uuid.uuid4().hex}/{k}", {}),
                        (f"/admin/accounts/{uuid.uuid4().hex}", {"Authorization": "Bearer nope"}),
                    ][k % 3]
                    async with s.get(f"{self.base}{path}", headers=headers) as r:
                        await r.read()
                        seen[f"odd path: {r.status}"] += 1

        async def idle() -> None:
            # Idle keep-alive connections: most closed by the client, some by idle_timeout_s.
            conns = []
            for _ in range(counts.get("idle", 0)):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.daemon.port)
                writer.write(
                    f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{self.daemon.port}\r\n\r\n".encode()
                )
                await writer.drain()
                await reader.readuntil(b"\r\n\r\n")
                conns.append((reader, writer, self.loop.time()))
            await asyncio.sleep(1.0)
            keep = len(conns) // 3
            for _reader, writer, _t in conns[keep:]:
                writer.close()
                seen["idle: closed by the client"] += 1

            async def left_open(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answered: float
            ) -> None:
                try:
                    async with asyncio.timeout(limit_s):
                        while await reader.read(65536):
                            pass
                    seen["idle: closed by the server"] += 1
                    self.closed_after["idle keep-alive"].append(self.loop.time() - answered)
                except TimeoutError:
                    seen["idle: still open after idle_timeout_s"] += 1
                finally:
                    writer.close()

            await asyncio.gather(*(left_open(*c) for c in conns[:keep]))

        await asyncio.gather(
            hang_ups(),
            signed_faults(),
            odd_paths(),
            idle(),
            *(stall() for _ in range(counts.get("stall", 0))),
            *(slow_headers() for _ in range(counts.get("slow", 0))),
            *(silent() for _ in range(counts.get("silent", 0))),
            *(garbage() for _ in range(counts.get("garbage", 0))),
        )

    # -- readers ---------------------------------------------------------------------------------
    async def read_loop(self, stop: asyncio.Event, pause_s: float = 0.1) -> None:
        """The status reads an operator's tools make, until `stop`: a connection each, so the
        kernel spreads them over both acceptors (SO_REUSEPORT)."""
        async with aiohttp.ClientSession(
            headers=self.admin, connector=aiohttp.TCPConnector(force_close=True)
        ) as s:
            k = 0
            while not stop.is_set():
                path = ADMIN_READS[k % len(ADMIN_READS)]
                k += 1
                try:
                    async with s.get(f"{self.base}{path}") as r:
                        await r.read()
                        self.reads[f"{path} {r.status}"] += 1
                except (aiohttp.ClientError, TimeoutError) as e:
                    self.reads[f"{path} {type(e).__name__}"] += 1
                if pause_s:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), pause_s)

    # -- settling --------------------------------------------------------------------------------
    async def settle(self, client: BridgeClient, label: str, timeout: float = 60) -> Metrics:
        """Wait until every accepted message is final and reported, and nothing is in use."""
        state: dict[str, Any] = {"metrics": {}}

        async def done() -> bool:
            for status in ("queued", "sent"):
                if (await client.messages(status=status, limit=1))["messages"]:
                    state["why"] = f"messages {status}"
                    return False
            reported = {r["message_id"] for r in self.receiver.reports}
            missing = [m for m in self.accepted.values() if m not in reported]
            if missing:
                state["why"] = f"{len(missing)} not reported"
                return False
            state["metrics"] = m = await self.scrape()
            g = gauges(m)
            if g["window_in_use"] or g["queue_depth"]:
                state["why"] = f"in use: {g}"
                return False
            if g["binds_up"] != BINDS or g["window_size"] != BINDS * self.window:
                state["why"] = f"binds: {g}"
                return False
            return True

        try:
            await wait_until(done, timeout, 0.3)
        except AssertionError:
            self.problems.append(f"{label}: not settled within {timeout:g} s: {state.get('why')}")
        return state["metrics"]

    async def no_api_connections(self) -> None:
        """Every API connection the test closed is closed on the daemon's side too."""

        def none() -> bool:
            return all(s.kinds["tcp:api"] == 0 for s in self.sample_all())

        try:
            await wait_until(none, 10, 0.1)
        except AssertionError:
            self.problems.append("API connections still open on the daemon's side 10 s after")


# -- the test ------------------------------------------------------------------------------------


async def chaos(rig: Soak, t0: float, events: list[str]) -> None:
    """One phase's faults, one after another, while the load runs: the webhook endpoint's
    (on their own clock), a bind drop, an SMSC outage, a SIGHUP."""
    loop = rig.loop
    hooks = asyncio.create_task(rig.webhook_faults())
    await asyncio.sleep(rig.rng.uniform(0.3, 1.0))
    await rig.drop_binds()
    events.append(f"binds dropped at {loop.time() - t0:.1f} s")
    await asyncio.sleep(rig.rng.uniform(0.3, 1.0))
    await rig.smsc_down(refused_s=1.0, black_hole_s=RESPONSE_TIMEOUT_S + 1.0)
    events.append(f"SMSC back at {loop.time() - t0:.1f} s")
    what = await rig.sighup()
    events.append(f"SIGHUP ({what}) applied at {loop.time() - t0:.1f} s")
    await hooks


@dataclass
class Point:
    """The state of the daemon once settled: after a phase, or idle at the end."""

    label: str
    samples: list[Sample]
    gauges: dict[str, float]
    requests: float  # smpp_bridge_api_requests_total, all series
    delivered: float  # smpp_bridge_webhook_deliveries_total{outcome="delivered"}
    wal_kb: int
    tmp_files: int  # in the daemon's private temporary directories (configuration, metrics)
    series: set[str]  # the metric series /metrics serves (name and labels)

    def of(self, role: str) -> Sample:
        return next(s for s in self.samples if s.role == role)


async def test_leak_soak(tmp_path, monkeypatch):
    private = tmp_path / "tmp"  # the daemon's private directories, apart from other tests'
    private.mkdir()
    monkeypatch.setenv("TMPDIR", str(private))
    # A WAL checkpoint every 50 commits, not 1000: each process opens its checkpoint connection
    # during the warm-up (not later, where it would read as growth), and checkpoints run often.
    monkeypatch.setenv("SMPP_BRIDGE_CHECKPOINT_EVERY", "50")
    began = time.monotonic()
    seed = int(os.environ.get("SOAK_SEED") or random.SystemRandom().randrange(1 << 32))
    print(f"\nleak soak seed {seed}")
    rig = Soak(tmp_path, random.Random(seed))
    loop = rig.loop
    points: list[Point] = []
    phase_log: list[str] = []

    def point(label: str, m: Metrics) -> Point:
        try:
            wal = (tmp_path / "bridge.db-wal").stat().st_size // 1024
        except OSError:
            wal = 0
        p = Point(
            label,
            rig.sample_all(),
            gauges(m),
            metric(m, "smpp_bridge_api_requests_total"),
            metric(m, "smpp_bridge_webhook_deliveries_total", outcome="delivered"),
            wal,
            sum(len(files) for _dir, _sub, files in os.walk(private)),
            {f"{name}{{{','.join(f'{k}={v}' for k, v in labels)}}}" for name, labels in m},
        )
        points.append(p)
        return p

    try:
        await rig.start()
        for phase in range(1, PHASES + 1):
            t0 = loop.time()
            events: list[str] = []
            stop_reads = asyncio.Event()
            async with rig.client() as client:
                readers = asyncio.create_task(rig.read_loop(stop_reads))
                await asyncio.gather(
                    rig.load(client, PHASE_S), chaos(rig, t0, events), rig.abuse(client, ABUSE)
                )
                stop_reads.set()
                await readers
                busy_s = loop.time() - t0
                m = await rig.settle(client, f"phase {phase}")
            await rig.no_api_connections()
            point(f"phase {phase}", m)
            phase_log.append(
                f"phase {phase}: load and faults {busy_s:.1f} s, settled at {loop.time() - t0:.1f}"
                f" s, {len(rig.accepted)} accepted so far; " + "; ".join(events)
            )

        # Idle: the webhook client's pooled connections expire. aiohttp sweeps them every
        # keep-alive period, so one can live up to twice `webhooks.keepalive_s` after its last use.
        idle_t0 = loop.time()
        with contextlib.suppress(AssertionError):
            await wait_until(
                lambda: all(s.kinds["tcp:webhook"] == 0 for s in rig.sample_all()), 40, 0.5
            )
        idle_s = loop.time() - idle_t0
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
            s.get(f"{rig.base}/readyz") as r,
        ):
            ready = (r.status, await r.json())
        queue = await rig.admin_get("/admin/queue")
        smscs = (await rig.admin_get("/admin/smscs"))["smscs"]
        m = await rig.scrape()
        await rig.no_api_connections()
        idle = point("idle", m)

        db = sqlite3.connect(f"file:{tmp_path / 'bridge.db'}?mode=ro", uri=True)
        try:
            outbox = dict(db.execute("SELECT state, COUNT(*) FROM webhook_outbox GROUP BY state"))
            states = dict(db.execute("SELECT state, COUNT(*) FROM messages GROUP BY state"))
        finally:
            db.close()
        assert rig.daemon.proc is not None and rig.daemon.proc.poll() is None
        stopping = loop.time()
        rc = await asyncio.to_thread(rig.daemon.terminate, 30)
        stop_s = loop.time() - stopping
        wall = time.monotonic() - began

        # -- what happened ----------------------------------------------------------------------
        reported = Counter(r["message_id"] for r in rig.receiver.reports)
        sim = rig.sim.counters
        print(f"leak soak: {len(rig.accepted)} accepted, wall {wall:.1f} s, stop {stop_s:.1f} s")
        for line in phase_log:
            print("  " + line)
        print(f"  idle: pooled webhook connections gone after {idle_s:.1f} s")
        print(f"  send retries {dict(rig.send_errors)}")
        print(f"  abusive clients {dict(rig.abuse_seen)}")
        closed = {k: f"{min(v):.1f}-{max(v):.1f} s" for k, v in rig.closed_after.items()}
        print(f"  closed by the daemon after {closed}")
        print(f"  reads {dict(sorted(rig.reads.items()))}")
        print(
            f"  SMSC: {sim['binds']} binds, {sim['dropped_connections']} dropped, "
            f"{rig.black_hole_connections} connections into the black hole, "
            f"{sim['submit_ok']} submits accepted; messages {states}; webhook outbox {outbox}; "
            f"{len(rig.receiver.reports)} reports for {len(reported)} messages "
            f"({sum(c - 1 for c in reported.values())} repeated)"
        )
        print(f"  webhook POSTs {dict(rig.receiver.answered)}")
        print(f"  /admin/queue {queue['by_state']}, depth {queue['depth']}")
        shown = [{k: s[k] for k in ("binds", "window", "free_slots")} for s in smscs]
        print(f"  /admin/smscs {shown}")
        print("  " + SAMPLE_HEADER)
        for p in points:
            for smp in p.samples:
                print("  " + smp.line(p.label))
            print(
                f"  {p.label:<9} daemon     {p.gauges}, api requests {p.requests:.0f}, "
                f"webhooks delivered {p.delivered:.0f}, WAL {p.wal_kb} KB, "
                f"{p.tmp_files} temporary files, {len(p.series)} metric series"
            )
        base, second = points[0], points[1]
        growth = {
            s.role: s.rss_kb - second.of(s.role).rss_kb for s in points[-2].samples
        }  # end of phase 2 to the end of the last phase
        print(f"  RSS growth, end of phase 2 to end of phase {PHASES}: {growth} KB")
        new_series = sorted(idle.series - second.series)
        print(f"  metric series new since the end of phase 2: {new_series}")

        # -- the invariants ---------------------------------------------------------------------
        assert not rig.problems, rig.problems
        assert rc == 0, rig.daemon.log.read_text()[-3000:]
        # Every accepted message is final, and reported once the endpoint was healthy.
        assert len(rig.accepted) == rig.next_i, (len(rig.accepted), rig.next_i, rig.send_errors)
        assert sum(states.values()) == rig.next_i, states
        assert set(states) <= set(FINAL), states
        assert not [mid for mid in rig.accepted.values() if mid not in reported]
        assert set(outbox) == {"delivered"}, outbox
        assert rig.receiver.bad_signatures == 0
        # Every fault happened in every phase.
        assert sim["dropped_connections"] == BINDS * PHASES
        assert rig.black_hole_connections >= BINDS * PHASES
        assert set(rig.receiver.answered) == {
            "204", "500", "hung, then 500", "200 with an endless body"
        }, rig.receiver.answered  # fmt: skip
        # Each abusive client was answered, or closed, as the README says.
        want_abuse = {
            "mid-body hang-up": ABUSE["hang_up"],
            "mid-body stall: 408, closed": ABUSE["stall"],
            "not HTTP: 400": ABUSE["garbage"],
            "bad_sig: 401": ABUSE["bad_sig"],
            "bad_json: 400": ABUSE["bad_json"],
            "idle: closed by the client": ABUSE["idle"] - ABUSE["idle"] // 3,
            "idle: closed by the server": ABUSE["idle"] // 3,
            "odd path: 401": ABUSE["odd_paths"] * 2 // 3,
            "odd path: 404": ABUSE["odd_paths"] // 3,
            "slow headers: closed": ABUSE["slow"],
            "silent: closed": ABUSE["silent"],
        }
        assert dict(rig.abuse_seen) == {k: v * PHASES for k, v in want_abuse.items()}
        # ... and in time: body_timeout_s after the headers, idle_timeout_s after the opening
        # or the last answer, however slowly the headers trickle (README "TLS termination").
        # The margin is the scheduler's, not the product's: on a machine at load 20 (CI beside
        # other work) the daemon's timers fired up to 3.2 s late (an idle keep-alive closed at
        # 7.2 s, session 63); what this soak tells apart is the timeout applied or not (aiohttp's
        # own keep-alive default is 75 s; an unbounded one never closes), and the timers' own
        # precision is held on a small scale elsewhere (test_session35_security_review,
        # test_unparsable_http).
        assert max(rig.closed_after["mid-body stall"]) < BODY_TIMEOUT_S + SLACK_S, rig.closed_after
        for kind in ("slow headers", "silent", "idle keep-alive"):
            assert max(rig.closed_after[kind]) < IDLE_TIMEOUT_S + SLACK_S, (kind, rig.closed_after)
        # Nothing in use when idle, every bind up again, ready.
        assert ready[0] == 200, ready
        assert idle.gauges["window_in_use"] == 0 and idle.gauges["queue_depth"] == 0, idle.gauges
        assert idle.gauges["binds_up"] == BINDS, idle.gauges
        assert queue["depth"] == 0 and all(v["parts"] == 0 for v in queue["by_state"].values())
        assert [(s["window"]["in_use"], s["free_slots"]) for s in smscs] == [
            (0, BINDS * rig.window)
        ], smscs
        # Counters merged from every process never go back.
        assert [p.requests for p in points] == sorted(p.requests for p in points)
        assert [p.delivered for p in points] == sorted(p.delivered for p in points)
        # Metric series do not multiply with requests (each phase's 30 new paths among them);
        # a status first seen in a later phase may add a few.
        assert len(new_series) <= 10, new_series
        # No files pile up in the private directories (each SIGHUP rewrites the acceptors'
        # configuration copy; the metrics files are one set per process).
        assert idle.tmp_files == base.tmp_files, [p.tmp_files for p in points]
        # The WAL is checkpointed: it does not grow with the store.
        assert all(p.wal_kb <= WAL_MAX_KB for p in points), [p.wal_kb for p in points]
        # Sockets: none half-closed, none but the binds when idle.
        for p in points:
            for smp in p.samples:
                assert smp.tcp_states["CLOSE_WAIT"] == 0, (p.label, smp.role, smp.tcp_states)
                assert smp.kinds["tcp:other"] == smp.kinds["socket:other"] == 0, (p.label, smp)
        assert idle.of("owner").kinds["tcp:smpp"] == BINDS
        for smp in idle.samples:
            assert smp.transient() == 0, smp
        # Fds and threads back at the post-warm-up baseline: every kind of socket, pipe and
        # epoll exactly, files within FD_SLACK, threads within THREAD_SLACK.
        for smp in idle.samples:
            was = base.of(smp.role)
            for kind in set(smp.kinds) | set(was.kinds):
                if not kind.startswith("file:") and kind not in ("tcp:webhook", "tcp:api"):
                    assert smp.kinds[kind] == was.kinds[kind], (kind, smp.line("idle"), was)
            files = sum(n for k, n in smp.kinds.items() if k.startswith("file:"))
            files_was = sum(n for k, n in was.kinds.items() if k.startswith("file:"))
            assert files <= files_was + FD_SLACK, (smp.line("idle"), was.line("phase 1"))
            assert smp.threads <= was.threads + THREAD_SLACK, (smp.line("idle"), was)
        # RSS: see RSS_GROWTH_KB.
        assert all(g <= RSS_GROWTH_KB for g in growth.values()), growth
    finally:
        await rig.close()
