#!/usr/bin/env python3
"""End-to-end benchmark: simulator and daemon as separate processes, signed HTTP load from here.

Prints accepted messages/s, end-to-end messages/s with receipts, submit_sm/s, receipts/s,
accept -> final receipt latency (p50/p99, from the daemon's own accepted_at/done_at), accept
latency (p50/p99, as the client saw it) and the daemon's RSS.

    python scripts/bench.py --messages 20000 --concurrency 50
    python scripts/bench.py --kind ucs3 --throttle 0.02 --syserr 0.01
    python scripts/bench.py --store postgres --instances 2 --binds 2
    python scripts/bench.py --store postgres --instances 2 --accounts 4

With `--store postgres` the daemons share a throw-away PostgreSQL cluster started for the run
(initdb/pg_ctl, as the tests do; fsync off) or the database of `--pg-dsn`; `--instances N` runs N
daemon processes on it and spreads the requests over their ports round-robin. The CPU line splits
the machine's CPU time between daemons, PostgreSQL, simulator and load generator: the component
that uses most of it, against the number of cores, is where the bottleneck is. A `--pg-dsn`
server's CPU is counted when it runs on this machine (found from our backend's parent).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from children import Children  # scripts/ is the script's own folder

from bridge import ids
from bridge.client import BridgeClient

# The simulator and the daemons (their acceptors with them): ended with this script.
CHILDREN = Children()

TEXTS = {
    "gsm1": "Your verification code is 123456. It expires in 5 minutes.",
    "ucs3": "【示例】您的验证码是123456，五分钟内有效。请勿泄露给他人。如非本人操作，请忽略本短信。"
    * 3,
}


def signed_request(
    creds: dict, port: int, body: bytes, key: str, now: datetime, nonce: str | None = None
) -> bytes:
    """One POST /v1/messages as raw HTTP/1.1 bytes, signed as of `now` with `nonce` (None: a
    fresh random one)."""
    from bridge.api import signing

    headers = {
        "Host": f"127.0.0.1:{port}",
        "Content-Type": "application/json",
        "Idempotency-Key": key,
    }
    headers.update(
        signing.sign_request(
            creds["app_key"],
            creds["app_secret"],
            "POST",
            "/v1/messages",
            "",
            headers,
            body,
            now,
            nonce or uuid.uuid4().hex + uuid.uuid4().hex[:8],
        )
    )
    head = (
        "POST /v1/messages HTTP/1.1\r\n"
        + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        + f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def prebuild(
    accounts: list[dict], port: int, texts: list[tuple[str, str]], ordered: bool = False
) -> list[bytes]:
    """Every request signed up front, so the timed phase spends no CPU on signing: the load
    generator shares the machine's cores with the daemon and must stay cheap. Request i is
    account i's (round-robin over `accounts`). `ordered`: nonces and Idempotency-Keys that sort
    by time (ULIDs, as bridge/client.py sends), not random ones."""
    now = datetime.now(UTC)
    return [
        signed_request(
            accounts[i % len(accounts)],
            port,
            json.dumps({"to": to, "text": text}, ensure_ascii=False).encode(),
            ids.new_id("") if ordered else uuid.uuid4().hex,
            now,
            ids.new_id("") if ordered else None,
        )
        for i, (to, text) in enumerate(texts)
    ]


def recipients(n: int, scattered: bool) -> list[str]:
    """n distinct numbers: counting up from +8613800000000, or (`scattered`) drawn at random,
    the same each run. Counting up, each index on the recipient adds at its end; real traffic's
    numbers land anywhere in it, and each such insert writes a page of WAL."""
    if not scattered:
        return [f"+86138{i:08d}" for i in range(n)]
    return [f"+86138{i:08d}" for i in random.Random(138).sample(range(10**8), n)]


async def raw_load(
    port: int,
    requests: list[bytes],
    concurrency: int,
    latencies: list[float],
    ids: list[str],
    errors: dict[str, int],
    rate: float = 0.0,
    answered: dict[str, float] | None = None,
) -> None:
    """Keep-alive HTTP/1.1 connections writing pre-built requests and reading the answers.

    With `rate`, request i is not sent before t0 + i / rate (an offered load, as a real client
    population would produce); without it, as fast as the connections allow.
    """
    it = iter(enumerate(requests))
    t0 = time.perf_counter()

    async def conn() -> None:
        reader, writer = await open_load_connection(port)
        try:
            for i, req in it:
                if rate:
                    delay = t0 + i / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                t = time.perf_counter()
                writer.write(req)
                status, _head, body = await read_answer(reader)
                if status != 202:
                    code = json.loads(body).get("error", {}).get("code", str(status))
                    errors[code] = errors.get(code, 0) + 1
                    continue
                now = time.perf_counter()
                latencies.append(now - t)
                ids.append(json.loads(body)["messages"][0]["id"])
                if answered is not None:
                    answered[ids[-1]] = now
        finally:
            writer.close()

    await asyncio.gather(*(conn() for _ in range(concurrency)))


class StatusReceiver:
    """The account's status_callback_url (`--webhooks`): when each message's final report came,
    as a customer's endpoint would see it (the bridge's counterpart of Kannel's dlr-url)."""

    def __init__(self) -> None:
        self.came: dict[str, float] = {}
        self._runner: Any = None

    async def start(self) -> str:
        from aiohttp import web

        async def handle(request: web.Request) -> web.Response:
            now = time.perf_counter()
            for report in await request.json():
                if report.get("type") == "message.status":
                    self.came.setdefault(report["message_id"], now)
            return web.Response(status=204)

        app = web.Application()
        app.router.add_post("/st", handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        port = free_port()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        return f"http://127.0.0.1:{port}/st"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def have(self, ids: list[str]) -> bool:
        """Every report in (or no receiver)."""
        return self._runner is None or all(i in self.came for i in ids)

    def latencies(self, answered: dict[str, float]) -> list[float]:
        """202 -> report, per message."""
        return [t - answered[i] for i, t in self.came.items() if i in answered]


# Bytes a load connection asks of each recv (an answer is under 1 KB). asyncio's selector
# transport asks 256 KiB, which glibc, past its 128 KiB mmap threshold, allocates with an mmap,
# shrinks with mremap to what came and frees with munmap: three system calls and ~2.3 page faults
# an answer, 0.8% + 0.5% of the machine under `--workers 2` for the mremap and munmap alone.
# Under 16 KiB (`bench_syscalls.py`): 0.005 of each an answer, 0.4 faults; the load generator's
# CPU 0.9-1.0 s against 1.3-1.4 a run of 20,000 (three alternating pairs, session 54).
READ_SIZE = 16 * 1024


async def open_load_connection(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A keep-alive connection to the daemon (or Kannel) for the load, reading READ_SIZE at a
    time: counted in each run's CPU (the load generator's), what the bridge is measured by."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if hasattr(writer.transport, "max_size"):  # the selector loop's; uvloop's reads its own buffer
        writer.transport.max_size = READ_SIZE
    return reader, writer


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bytes]:
    """(status, head, body) of one HTTP/1.1 answer with a Content-Length."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return int(head[9:12]), head, await reader.readexactly(length)


def free_port() -> int:
    """A port for a server this script starts as a child process. From the checkout's
    tests/ports.py when there is one: run by the test suite beside other tests, a port the kernel
    picks (port 0) could go to another test's connection before the child binds it."""
    try:
        from tests.ports import free_port as below_ephemeral
    except ImportError:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    return below_ephemeral()


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return values[k]


def _store_mb(store: dict) -> float:
    """The SQLite store's size on disk, with its WAL (0 for PostgreSQL)."""
    path = store.get("path")
    if not path:
        return 0.0
    return sum(os.path.getsize(f) for f in (path, path + "-wal") if os.path.exists(f)) / 2**20


def rss_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            name, value = line.split(":")
            fields[name] = int(value.split()[0]) / 1024
    return fields.get("VmRSS", 0.0), fields.get("VmHWM", 0.0)


async def get_json(session: aiohttp.ClientSession, url: str) -> dict:
    async with session.get(url) as r:
        return await r.json()


LOCK_FAMILIES = {
    "smpp_bridge_store_write_lock_seconds": "held_s",
    "smpp_bridge_store_write_lock_wait_seconds": "wait_s",
    "smpp_bridge_store_write_lock_cpu_seconds": "cpu_s",
    "smpp_bridge_store_commits": "commits",
    "smpp_bridge_store_write_jobs": "jobs",
    "smpp_bridge_store_fsyncs": "fsyncs",
    "smpp_bridge_store_fsync_seconds": "fsync_s",
}


async def lock_use(session: aiohttp.ClientSession, port: int, settle: bool) -> dict[str, dict]:
    """The SQLite store's write-lock counters by role, off the daemon's /metrics. `settle`: with
    acceptor processes each process writes its values to its file once a second, so wait that
    long for the owner's to catch up."""
    from prometheus_client.parser import text_string_to_metric_families

    if settle:
        await asyncio.sleep(1.2)
    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    out: dict[str, dict] = {}
    for family in text_string_to_metric_families(text):
        key = LOCK_FAMILIES.get(family.name)
        for sample in family.samples if key else ():
            if sample.name.endswith("_total"):
                role = out.setdefault(
                    sample.labels["role"], dict.fromkeys(LOCK_FAMILIES.values(), 0)
                )
                role[key] += sample.value
    return out


async def unmatched_total(session: aiohttp.ClientSession, port: int) -> float:
    """Receipts that matched no part when applied (kept pending, matched again later), so far:
    what a receipt that beat its part's submit result to the store costs."""
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "smpp_bridge_receipts_unmatched"
        for sample in family.samples
        if sample.name.endswith("_total")
    )


async def owner_wakes(session: aiohttp.ClientSession, port: int) -> dict[str, float] | None:
    """The acceptors' wakes of their owner by outcome (smpp_bridge_owner_wakes_total: sent,
    not_waiting, throttled); None from a daemon without the metric (before session 48)."""
    from prometheus_client.parser import text_string_to_metric_families

    async with session.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    out: dict[str, float] | None = None
    for family in text_string_to_metric_families(text):
        if family.name == "smpp_bridge_owner_wakes":
            out = out or {}
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[sample.labels["outcome"]] = sample.value
    return out


def lock_summary(
    before: dict[str, dict], after: dict[str, dict], seconds: float, messages: int
) -> dict:
    """Shares of the run each role held (and waited for) the write lock, and its cost."""
    delta = {
        role: {k: v - before.get(role, {}).get(k, 0) for k, v in values.items()}
        for role, values in after.items()
    }
    held = sum(d["held_s"] for d in delta.values())
    commits = sum(d["commits"] for d in delta.values())
    return {
        "on_cpu_share": sum(d["cpu_s"] for d in delta.values()) / max(held, 1e-9),
        "held_share": {role: d["held_s"] / seconds for role, d in sorted(delta.items())},
        "wait_share": {role: d["wait_s"] / seconds for role, d in sorted(delta.items())},
        "held_us_per_msg": held / max(1, messages) * 1e6,
        "jobs_per_commit": sum(d["jobs"] for d in delta.values()) / max(1, commits),
        "commits_per_msg": {role: d["commits"] / max(1, messages) for role, d in delta.items()},
        # (fsyncs a message, ms an fsync): 0 / 0 from a daemon without the metric (session 64)
        "fsyncs": {
            role: (d["fsyncs"] / max(1, messages), d["fsync_s"] / max(1, d["fsyncs"]) * 1e3)
            for role, d in sorted(delta.items())
        },
    }


async def wait_http(url: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url, timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200:
                        return
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"{url} did not become ready")
            await asyncio.sleep(0.1)


def _machine_busy() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


def start_cluster() -> object:
    """A throw-away local PostgreSQL cluster, for the caller to stop. Not cut by SIGTERM or
    SIGINT (one acts once it is up): `pg_ctl start` ended in the middle left its server running
    and its folder, which no `finally` knew of."""
    from tests.pg_cluster import start_cluster

    with CHILDREN.signals_held():
        return start_cluster(max_connections=300)


async def start_postgres(args: argparse.Namespace, cluster: object) -> tuple[str, int | None]:
    """(DSN, the server's postmaster pid or None): --pg-dsn, else a database in `cluster`."""
    if args.pg_dsn:
        pid = await postmaster_of(args.pg_dsn)
        if pid is None:
            print("PostgreSQL runs elsewhere: the CPU line leaves its CPU out", file=sys.stderr)
        return args.pg_dsn, pid
    from tests.pg_cluster import create_database

    dsn = await create_database(cluster, "bench")  # type: ignore[arg-type]
    return dsn, int((Path(cluster.datadir) / "postmaster.pid").read_text().split()[0])  # type: ignore[attr-defined]


async def postmaster_of(dsn: str) -> int | None:
    """The pid of the postmaster serving `dsn`, when it runs on this machine: the parent of our
    own backend. None for a server elsewhere (its backend's pid means nothing here), which the
    run says instead of passing a PostgreSQL CPU of 0 for a measurement."""
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:  # read while the backend lives: it ends with the connection
        backend = await conn.fetchval("SELECT pg_backend_pid()")
        try:
            stat = Path(f"/proc/{backend}/stat").read_text()
            comm = Path(f"/proc/{backend}/comm").read_text().strip()
        except OSError:
            return None
    finally:
        await conn.close()
    if not comm.startswith("postgres"):
        return None  # a pid of this machine's that is not the server's backend
    return int(stat.rsplit(")", 1)[1].split()[1])


def sim_section(sim_port: int, ctl_port: int, receipt_delay_ms: int, **extra: Any) -> dict:
    """The config's `sim` section: the simulator runs as its own process (`smpp-bridge sim`)."""
    return {
        "enabled": False,
        "port": sim_port,
        "control_port": ctl_port,
        "receipt_delay_ms": receipt_delay_ms,
        "system_id": "bench",
        "password": "bench",
        **extra,
    }


def smsc_section(sim_port: int, window: int, binds: int, **extra: Any) -> dict:
    """The one SMSC entry, pointing at the simulator."""
    return {
        "name": "sim",
        "port": sim_port,
        "system_id": "bench",
        "password": "bench",
        "window": window,
        "binds": binds,
        "split": "udh8",
        **extra,
    }


def group_commit(args: argparse.Namespace) -> dict:
    """`store.group_commit_ms` only when given: otherwise the daemon's default is measured."""
    return {} if args.group_commit_ms is None else {"group_commit_ms": args.group_commit_ms}


async def run(args: argparse.Namespace) -> dict:
    if args.instances > 1 and args.store != "postgres":
        raise SystemExit("--instances above 1 needs --store postgres (one shared database)")
    if args.accounts < 1:
        raise SystemExit("--accounts must be at least 1")
    tmp = Path(tempfile.mkdtemp(prefix="bridge-bench-"))
    reports = StatusReceiver()
    cluster = None  # a throw-away PostgreSQL cluster, stopped in the finally
    # Everything after the directory is made runs in the try: a failure before it (a cluster
    # that would not start, a bad option) left the directory, and the receiver and the cluster.
    try:
        callback: list[str] = []
        if args.webhooks:
            callback = ["--callback", await reports.start()]
        ports = [free_port() for _ in range(args.instances)]
        http_port, sim_port, ctl_port = ports[0], free_port(), free_port()
        key = base64.b64encode(os.urandom(32)).decode()
        pg_pid = None
        if args.store == "postgres":
            cluster = None if args.pg_dsn else start_cluster()  # here: stopped in the finally
            dsn, pg_pid = await start_postgres(args, cluster)
            store: dict = {"engine": "postgres", "dsn": dsn}
        else:
            store = {"path": str(tmp / "bridge.db"), **group_commit(args)}
        cfg: dict[str, Any] = {
            "server": {
                "port": http_port,
                "max_recipients": 1000,
                "workers": args.workers,
                **({} if args.acceptor_nice is None else {"acceptor_nice": args.acceptor_nice}),
                **({} if args.event_loop is None else {"event_loop": args.event_loop}),
                "admin_token": "bench-admin-token-0123456789",
            },
            "store": store,
            "security": {"master_key": key},
            "logging": {"level": "WARNING"},
            "sim": sim_section(
                sim_port,
                ctl_port,
                args.receipt_delay_ms,
                throttle_ratio=args.throttle,
                syserr_ratio=args.syserr,
            ),
            "smscs": [
                smsc_section(
                    sim_port,
                    args.window,
                    args.binds,
                )
            ],
        }
        path = tmp / "bench.yaml"
        path.write_text(yaml.safe_dump(cfg))
        paths = [path]
        for k, port in enumerate(ports[1:], start=1):  # the other instances: their own port only
            paths.append(tmp / f"bench{k}.yaml")
            paths[-1].write_text(yaml.safe_dump({**cfg, "server": {**cfg["server"], "port": port}}))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        cli = [sys.executable, "-m", "bridge.cli"]
        sim = None
        if not args.accept_only:
            sim = CHILDREN.popen(
                [*cli, "sim", "--config", str(path)],
                env=env,
                stdout=open(tmp / "sim.log", "wb"),
                stderr=subprocess.STDOUT,
            )
        daemons: list[subprocess.Popen[bytes]] = []
        if sim is not None:
            await wait_http(f"http://127.0.0.1:{ctl_port}/stats")
        accounts = []
        for a in range(args.accounts):
            out = subprocess.run(
                [
                    *cli,
                    "account",
                    "create",
                    f"bench{a or ''}",
                    "--raw-text",
                    *callback,
                    "--topup",
                    "100000000",
                    "--config",
                    str(path),
                ],
                capture_output=True,
                text=True,
                check=True,
                env=env,
            )
            accounts.append(json.loads(out.stdout))
        creds = accounts[0]
        for k, p in enumerate(paths):
            daemons.append(
                CHILDREN.popen(
                    [*cli, "run", "--config", str(p)],
                    env=env,
                    stdout=open(tmp / f"daemon{k or ''}.log", "wb"),
                    stderr=subprocess.STDOUT,
                )
            )
        for port in ports:
            await wait_http(
                f"http://127.0.0.1:{port}/{'healthz' if args.accept_only else 'readyz'}", 60
            )
        if len(ports) > 1 and not args.accept_only:
            await wait_binds_spread(ports, cfg["server"]["admin_token"], args.binds)
        text = TEXTS[args.kind]
        accept_lat: list[float] = []
        answered: dict[str, float] = {}  # message id: when its 202 came
        ids: list[str] = []
        errors: dict[str, int] = {}
        async with BridgeClient(
            f"http://127.0.0.1:{http_port}", creds["app_key"], creds["app_secret"], max_retries=5
        ) as client:
            # warm-up: one message, so connection set-up is not measured
            await client.send("+8613700000000", text="warm-up")
            for port in ports[1:]:
                async with BridgeClient(
                    f"http://127.0.0.1:{port}", creds["app_key"], creds["app_secret"]
                ) as other:
                    await other.send("+8613700000001", text="warm-up")

            n = len(ports)
            per_round: list[dict[str, Any]] = []
            async with aiohttp.ClientSession() as s:
                base = (
                    {}
                    if args.accept_only
                    else await get_json(s, f"http://127.0.0.1:{ctl_port}/stats")
                )
                # One store, one write lock: how busy it is tells whether it is the bound.
                watch_lock = args.store == "sqlite" and not args.accept_only
                if watch_lock:
                    lock_before = await lock_use(s, ports[0], settle=args.workers > 0)
                    unmatched_before = await unmatched_total(s, ports[0])
                wakes_before = await owner_wakes(s, ports[0]) if args.workers > 0 else None
                t0 = time.perf_counter()
                # Wall and CPU seconds of the timed phases only: each round's requests are
                # signed before its clock starts (as bench_kannel.py builds Kannel's), since
                # the daemon idles while they are.
                spent: dict[str, float] = {}
                counters: dict[str, Any] = {}
                accept_s = 0.0
                numbers = recipients(args.messages * args.rounds, args.random_recipients)
                for r in range(args.rounds):
                    # Request i goes to instance i % N (round-robin, as a load balancer would).
                    first = r * args.messages
                    shares = [
                        prebuild(
                            accounts,
                            port,
                            [(numbers[first + i], text) for i in range(k, args.messages, n)],
                            args.ordered_keys,
                        )
                        for k, port in enumerate(ports)
                    ]
                    before = len(ids)
                    at_start = _meter(daemons, sim, pg_pid)
                    tr = time.perf_counter()
                    await asyncio.gather(
                        *(
                            raw_load(
                                port,
                                reqs,
                                max(1, args.concurrency // n),
                                accept_lat,
                                ids,
                                errors,
                                args.rate / n,
                                answered if args.webhooks else None,
                            )
                            for port, reqs in zip(ports, shares, strict=True)
                        )
                    )
                    t_accept = time.perf_counter() - tr
                    accept_s += t_accept
                    segs = len(ids) * (1 if args.kind == "gsm1" else 3)
                    while not args.accept_only:
                        st = await get_json(s, f"http://127.0.0.1:{ctl_port}/stats")
                        counters = st.get("counters", st)
                        done = (
                            counters["receipts_acked"]
                            - base.get("counters", base)["receipts_acked"]
                        )
                        if done >= segs and reports.have(ids):
                            break
                        if time.perf_counter() - t0 > args.timeout:
                            break
                        await asyncio.sleep(0.05)
                    got = len(ids) - before
                    t_round = time.perf_counter() - tr
                    at_end = _meter(daemons, sim, pg_pid)
                    for what in at_end:
                        spent[what] = spent.get(what, 0.0) + at_end[what] - at_start[what]
                    per_round.append(
                        {
                            "accepted_per_s": got / t_accept,
                            "end_to_end_per_s": got / t_round,
                            # owner first, then its acceptors (--workers)
                            "rss_mb": [rss_mb(p)[0] for d in daemons for p in _tree(d.pid)],
                            "store_mb": _store_mb(store),
                        }
                    )
                t_total = spent.pop("wall")
                t_accept = accept_s
                lock = (
                    lock_summary(
                        lock_before,
                        await lock_use(s, ports[0], settle=args.workers > 0),
                        t_total,
                        len(ids),
                    )
                    if watch_lock
                    else None
                )
                unmatched = (
                    await unmatched_total(s, ports[0]) - unmatched_before if watch_lock else None
                )
                wakes = None
                if wakes_before is not None:  # each acceptor's file is a second behind at most
                    if not watch_lock:
                        await asyncio.sleep(1.2)
                    after = await owner_wakes(s, ports[0]) or {}
                    wakes = {k: v - wakes_before.get(k, 0.0) for k, v in after.items()}
                daemon_cpu, owner_cpu = spent.pop("daemons"), spent.pop("owner")
                daemon_sys = spent.pop("daemons_system")
            rss = hwm = 0.0
            for d in daemons:
                for pid in _tree(d.pid):
                    one_rss, one_hwm = rss_mb(pid)
                    rss, hwm = rss + one_rss, hwm + one_hwm
            cpu_split, cores = split_cpu(
                dict.fromkeys(spent, 0.0), spent, "daemons", daemon_cpu, t_total
            )
            e2e: list[float] = []
            to_report = reports.latencies(answered)  # 202 -> status webhook (--webhooks)
            statuses: dict[str, int] = {}
            per_account: list[int] = []  # messages each account's own listing shows
            for account in accounts:
                per_account.append(0)
                async with BridgeClient(
                    f"http://127.0.0.1:{http_port}", account["app_key"], account["app_secret"]
                ) as owner:
                    cursor = None
                    while True:
                        q = {"limit": 200, **({"cursor": cursor} if cursor else {})}
                        page = await owner.messages(**q)
                        per_account[-1] += len(page["messages"])
                        for m in page["messages"]:
                            statuses[m["status"]] = statuses.get(m["status"], 0) + 1
                            if m["done_at"] and m["to"] != "+8613700000000":
                                e2e.append(_ms(m["done_at"]) - _ms(m["accepted_at"]))
                        cursor = page["next_cursor"]
                        if not cursor:
                            break
        return {
            "options": {k: v for k, v in vars(args).items() if k not in ("json", "pg_dsn")},
            "instances": len(ports),
            "cpu_seconds": cpu_split,
            "cores": cores,
            "accepted": len(ids),
            "errors": errors,
            "statuses": statuses,
            "per_account": per_account,
            "accepted_per_s": len(ids) / t_accept,
            "end_to_end_per_s": len(ids) / t_total,
            "segments_per_s": segs / t_total,
            "submit_sm": counters.get("submit_ok", 0),
            "receipts_per_s": (
                counters.get("receipts_acked", 0)
                - base.get("counters", base).get("receipts_acked", 0)
            )
            / t_total
            if not args.accept_only
            else 0.0,
            "throttled": counters.get("throttled", 0),
            "syserr": counters.get("syserr", 0),
            "accept_p50_ms": pct(accept_lat, 50) * 1000,
            "accept_p99_ms": pct(accept_lat, 99) * 1000,
            "e2e_p50_ms": pct(e2e, 50),
            "e2e_p99_ms": pct(e2e, 99),
            "webhooks": len(reports.came),
            "webhook_p50_ms": pct(to_report, 50) * 1000,
            "webhook_p99_ms": pct(to_report, 99) * 1000,
            "daemon_cpu_s": daemon_cpu,
            "daemon_cpu_us_per_msg": daemon_cpu / max(1, len(ids)) * 1e6,
            "daemon_user_us_per_msg": (daemon_cpu - daemon_sys) / max(1, len(ids)) * 1e6,
            "daemon_system_us_per_msg": daemon_sys / max(1, len(ids)) * 1e6,
            # The owner process (binds, dispatcher, receipts) apart from its acceptors: with
            # --workers N the pipeline's share tells whether the owner or the HTTP side limits.
            "owner_cpu_us_per_msg": owner_cpu / max(1, len(ids)) * 1e6,
            "daemon_rss_mb": rss,
            "daemon_peak_rss_mb": hwm,
            "store_write_lock": lock,
            "receipts_unmatched": unmatched,
            "owner_wakes": wakes,
            "seconds": t_total,
            "rounds": per_round,
        }
    finally:
        # Not cut by a signal: one while the run ends by itself (its cancel came at the await
        # below) left the temporary directory, one in `pg_ctl stop` the cluster's folder.
        with CHILDREN.signals_held():
            CHILDREN.end()
            if cluster is not None:
                cluster.stop()  # type: ignore[attr-defined]
            await reports.stop()
            if not args.keep:
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                print(f"kept {tmp}", file=sys.stderr)


async def wait_binds_spread(ports: list[int], token: str, binds: int) -> None:
    """Several instances: wait until each holds a bind (when there are enough), so the run
    measures the shared steady state rather than the hand-over after start."""
    want = 1 if binds >= len(ports) else 0
    deadline = time.monotonic() + 30
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as s:
        while True:
            ups = []
            for port in ports:
                view = await get_json(s, f"http://127.0.0.1:{port}/admin/smscs")
                ups.append(sum(x["binds_up"] for x in view["smscs"]))
            if min(ups) >= want and sum(ups) >= binds:
                return
            if time.monotonic() > deadline:
                print(f"binds not spread after 30 s: {ups}", file=sys.stderr)
                return
            await asyncio.sleep(0.2)


def _cpu_parts(sim: subprocess.Popen[bytes] | None, pg_pid: int | None) -> dict[str, float]:
    """CPU seconds so far of the simulator, the PostgreSQL server on this machine (postmaster,
    its backends and the ones that ended), this load generator, and the machine (busy and
    total)."""
    busy, total = _machine_busy()
    return {
        "simulator": _cpu(sim.pid) if sim is not None else 0.0,
        "postgres": _cpu(pg_pid, reaped=True) if pg_pid is not None else 0.0,
        "load_generator": time.process_time(),
        "machine": busy,
        "machine_total": total,
    }


def _meter(
    daemons: list[subprocess.Popen[bytes]],
    sim: subprocess.Popen[bytes] | None,
    pg_pid: int | None,
) -> dict[str, float]:
    """The clock and every CPU counter at one instant: a timed phase is the difference of two."""
    return {
        "wall": time.perf_counter(),
        "daemons": sum(_cpu(d.pid) for d in daemons),
        "owner": sum(_cpu(d.pid, tree=False) for d in daemons),
        "daemons_system": sum(_cpu(d.pid, system=True) for d in daemons),
        **_cpu_parts(sim, pg_pid),
    }


def split_cpu(
    parts0: dict[str, float], parts1: dict[str, float], name: str, cpu: float, seconds: float
) -> tuple[dict[str, float], float]:
    """(CPU seconds of each part over the run, with the gateway's under `name` and the rest of
    the machine's busy time as "other"; the cores the machine has)."""
    split = {k: parts1[k] - parts0[k] for k in parts0}
    split[name] = cpu
    busy = split.pop("machine")
    total = split.pop("machine_total")
    split["other"] = max(0.0, busy - sum(split.values()))
    return split, total / seconds


def _ms(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp() * 1000


def _tree(pid: int) -> list[int]:
    """The daemon and its acceptor processes (server.workers)."""
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in children:
        out += _tree(int(child))
    return out


def _cpu(pid: int, *, tree: bool = True, reaped: bool = False, system: bool = False) -> float:
    """CPU seconds of the process (and its descendants); `reaped` adds those of its children
    that ended and were waited for (a backend of a connection closed mid-run), which their
    parent's stat keeps; `system` counts the kernel's time alone (stime: its system calls,
    page faults), the share the counts of instructions under callgrind never see."""
    total = 0.0
    for p in _tree(pid) if tree else [pid]:
        try:
            parts = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(parts[12]) if system else int(parts[11]) + int(parts[12])
        if reaped and p == pid:
            total += int(parts[14]) if system else int(parts[13]) + int(parts[14])
    return total / os.sysconf("SC_CLK_TCK")


def latency_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The accept and accept -> final receipt rows, as bench_kannel.py prints them too."""
    return [
        (
            "accept latency p50 / p99 (ms)",
            f"{result['accept_p50_ms']:.1f} / {result['accept_p99_ms']:.1f}",
        ),
        (
            "accept -> final receipt p50 / p99 (ms)",
            f"{result['e2e_p50_ms']:.0f} / {result['e2e_p99_ms']:.0f}",
        ),
    ]


def lock_rows(lock: dict | None) -> list[tuple[str, str]]:
    """The SQLite store's write lock: the share of the run each role held it (near 100% in all,
    the store is the bound), and waited for it; its time per message, the share of that time
    the holder was on a CPU (the rest it waited for one, or for the disk), and batch size."""
    if lock is None:
        return []
    held, wait = lock["held_share"], lock["wait_share"]
    by_role = " / ".join(f"{role} {100 * share:.0f}" for role, share in held.items())
    waits = " / ".join(f"{role} {100 * share:.0f}" for role, share in wait.items())
    return [
        (
            "store write lock held, % of the run: all (by role)",
            f"{100 * sum(held.values()):.0f}  ({by_role})",
        ),
        ("store write lock waited for, % of the run (by role)", waits),
        (
            "store write lock per message (us), on CPU %, writes per commit",
            f"{lock['held_us_per_msg']:.0f}, {100 * lock['on_cpu_share']:.0f}, "
            f"{lock['jobs_per_commit']:.1f}",
        ),
        (
            "store commits per message (by role)",
            " / ".join(f"{role} {n:.3f}" for role, n in sorted(lock["commits_per_msg"].items())),
        ),
        (
            "store WAL fsyncs per message, ms each (by role)",
            " / ".join(f"{role} {n:.3f}, {ms:.1f}" for role, (n, ms) in lock["fsyncs"].items()),
        ),
    ]


def cpu_row(result: dict[str, Any]) -> tuple[str, str]:
    """Where the machine's CPU went, by process, against cores x seconds."""
    return (
        "CPU seconds: " + " / ".join(result["cpu_seconds"]),
        " / ".join(f"{v:.1f}" for v in result["cpu_seconds"].values())
        + f"  (of {result['cores']:.0f} cores x {result['seconds']:.1f} s)",
    )


def print_rows(rows: list[tuple[str, Any]]) -> None:
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--messages", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--kind", choices=sorted(TEXTS), default="gsm1")
    p.add_argument("--window", type=int, default=100)
    p.add_argument("--binds", type=int, default=1)
    p.add_argument("--receipt-delay-ms", type=int, default=10)
    p.add_argument("--throttle", type=float, default=0.0)
    p.add_argument("--syserr", type=float, default=0.0)
    p.add_argument(
        "--group-commit-ms", type=int, help="store.group_commit_ms (default: the daemon's)"
    )
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--workers", type=int, default=0, help="daemon HTTP acceptor processes")
    p.add_argument("--acceptor-nice", type=int, help="server.acceptor_nice (default: the daemon's)")
    p.add_argument(
        "--event-loop",
        choices=["auto", "uvloop", "asyncio"],
        help="server.event_loop (default: the daemon's, uvloop where installed)",
    )
    p.add_argument("--store", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument(
        "--pg-dsn",
        default=os.environ.get("SMPP_BRIDGE_BENCH_PG_DSN"),
        help="PostgreSQL database to use (default: a throw-away local cluster)",
    )
    p.add_argument(
        "--instances", type=int, default=1, help="daemon processes on one database (postgres)"
    )
    p.add_argument(
        "--accounts",
        type=int,
        default=1,
        help="spread the requests round-robin over this many accounts (on PostgreSQL one "
        "account's accepts are serialised by its lock; different accounts' are not)",
    )
    p.add_argument(
        "--rate",
        type=float,
        default=0.0,
        help="offered load in messages/s (default: as fast as possible)",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="send --messages this many times into the same daemon, with a line per round "
        "(throughput, RSS per process, store size): a soak for leaks and slowdown as the store "
        "grows",
    )
    p.add_argument(
        "--webhooks",
        action="store_true",
        help="give the account a status callback URL served here, and count a message done "
        "end to end when its report came (as scripts/bench_kannel.py does with Kannel's "
        "dlr-url)",
    )
    p.add_argument(
        "--random-recipients",
        action="store_true",
        help="recipients drawn at random instead of counting up: real traffic's pattern, which "
        "costs the store more (each insert into a recipient index lands on another page)",
    )
    p.add_argument(
        "--ordered-keys",
        action="store_true",
        help="nonces and Idempotency-Keys that sort by time (ULIDs, as bridge/client.py sends) "
        "instead of random ones: the store appends them instead of writing a page for each",
    )
    p.add_argument("--keep", action="store_true")
    p.add_argument(
        "--accept-only",
        action="store_true",
        help="no SMSC: measure the HTTP accept path alone (messages stay queued)",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    CHILDREN.on_signals()
    result = CHILDREN.asyncio_run(run(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"options: {result['options']}")
    rows = [
        ("accepted messages", f"{result['accepted']}  (errors: {result['errors'] or 'none'})"),
        ("final statuses", result["statuses"]),
        *(
            [("messages per account", " / ".join(map(str, result["per_account"])))]
            if len(result["per_account"]) > 1
            else []
        ),
        ("accepted messages/s", f"{result['accepted_per_s']:.0f}"),
        ("end-to-end messages/s (with receipts)", f"{result['end_to_end_per_s']:.0f}"),
        ("segments/s (submit_sm + receipt)", f"{result['segments_per_s']:.0f}"),
        ("receipts/s", f"{result['receipts_per_s']:.0f}"),
        (
            "simulator: submit ok / throttled / syserr",
            f"{result['submit_sm']} / {result['throttled']} / {result['syserr']}",
        ),
        *latency_rows(result),
        *(
            [
                (
                    f"202 -> status webhook p50 / p99 (ms), {result['webhooks']} reports",
                    f"{result['webhook_p50_ms']:.0f} / {result['webhook_p99_ms']:.0f}",
                )
            ]
            if result["options"]["webhooks"]
            else []
        ),
        (
            "daemon CPU per message, all / owner process (us)",
            f"{result['daemon_cpu_us_per_msg']:.0f} / {result['owner_cpu_us_per_msg']:.0f}",
        ),
        (
            "daemon CPU per message, user / system (us)",
            f"{result['daemon_user_us_per_msg']:.0f} / {result['daemon_system_us_per_msg']:.0f}",
        ),
        cpu_row(result),
        *lock_rows(result["store_write_lock"]),
        *(
            [("receipts kept unmatched, then matched again", f"{result['receipts_unmatched']:.0f}")]
            if result["receipts_unmatched"] is not None
            else []
        ),
        *(
            [
                (
                    "owner wakes per message: datagrams sent / not waiting / throttled",
                    " / ".join(
                        f"{result['owner_wakes'].get(k, 0.0) / max(1, result['accepted']):.3f}"
                        for k in ("sent", "not_waiting", "throttled")
                    ),
                )
            ]
            if result.get("owner_wakes")
            else []
        ),
        (
            "daemon RSS / peak (MB)",
            f"{result['daemon_rss_mb']:.0f} / {result['daemon_peak_rss_mb']:.0f}",
        ),
    ]
    print_rows(rows)
    if len(result["rounds"]) > 1:
        print("round  accepted/s  end-to-end/s  RSS per process, owner first (MB)  store (MB)")
        for k, r in enumerate(result["rounds"], start=1):
            rss = " / ".join(f"{v:.0f}" for v in r["rss_mb"])
            print(
                f"{k:5d}  {r['accepted_per_s']:10.0f}  {r['end_to_end_per_s']:12.0f}  "
                f"{rss:34s}  {r['store_mb']:10.1f}"
            )


if __name__ == "__main__":
    main()
