#!/usr/bin/env python3
"""Backlog benchmark: queue N messages behind a stopped SMSC, then start it and drain.

Measures the issue #9 target "daemon RSS under 200 MB with 1,000,000 messages queued behind a
stopped SMSC; the backlog drains at full speed once it comes back". A separate script from
bench.py because the shape differs: bench.py keeps the SMSC up and times each message end to end;
here the daemon must first hold a backlog far larger than any window (memory must not scale with
it) and then work it off from the store alone.

    python scripts/bench_backlog.py                       # 1,000,000 messages, drain them all
    python scripts/bench_backlog.py --messages 300000 --drain-limit 200000

Phases: (1) the daemon starts with one SMSC whose port nothing listens on yet; (2) signed
POST /v1/messages with up to --batch distinct numbers each, from --concurrency keep-alive
connections, as fast as the daemon accepts; (3) idle --settle-s, then RSS and the queue
(GET /admin/queue); (4) the simulator starts (receipts after --receipt-delay-ms) and the drain is
timed until --drain-limit (default: all) receipts were acknowledged. RSS (VmRSS, VmHWM) of every
daemon process (acceptors of --workers included, summed) is sampled every second throughout.
Delivered = receipts the simulator saw acknowledged: the daemon answers a receipt only once its
status change is committed, so that count is durable end-to-end progress.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from children import Children  # scripts/ is the script's own folder

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _load_bench() -> Any:
    """scripts/ is not a package: load bench.py by path for its process and /proc helpers."""
    spec = importlib.util.spec_from_file_location("_bench", Path(__file__).with_name("bench.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = _load_bench()
# The simulator and the daemon (its acceptors with it): ended with this script (children.py).
CHILDREN = Children()

TEXT = "Your verification code is 123456. It expires in 5 minutes."  # 1-part GSM
ADMIN_TOKEN = "bench-admin-token-0123456789"
_COUNT = re.compile(rb'"count":(\d+)')


# -- sampling ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Sample:
    t: float  # seconds since the run started
    rss: float  # MB, summed over the daemon's processes
    hwm: float
    sim_rss: float


@dataclass(slots=True)
class Sampler:
    """RSS of the daemon tree every `interval` seconds; `peak` is the largest sample since the
    last `reset_peak` (VmHWM alone cannot split phases: it only ever grows)."""

    daemon_pid: int
    interval: float = 1.0
    sim_pid: int | None = None
    t0: float = field(default_factory=time.perf_counter)
    samples: list[Sample] = field(default_factory=list)
    peak: float = 0.0

    def take(self) -> Sample:
        rss = hwm = 0.0
        for p in bench._tree(self.daemon_pid):
            with contextlib.suppress(OSError):
                r, h = bench.rss_mb(p)
                rss, hwm = rss + r, hwm + h
        sim_rss = 0.0
        if self.sim_pid is not None:
            with contextlib.suppress(OSError):
                sim_rss = bench.rss_mb(self.sim_pid)[0]
        s = Sample(time.perf_counter() - self.t0, rss, hwm, sim_rss)
        self.samples.append(s)
        self.peak = max(self.peak, rss)
        return s

    def reset_peak(self) -> None:
        """Also resets VmHWM of the daemon's processes (clear_refs 5), so the kernel's own peak
        covers the next phase only, spikes between two samples included."""
        self.peak = 0.0
        for p in bench._tree(self.daemon_pid):
            with contextlib.suppress(OSError):
                Path(f"/proc/{p}/clear_refs").write_text("5")

    async def run(self) -> None:
        while True:
            self.take()
            await asyncio.sleep(self.interval)


# -- load -------------------------------------------------------------------------------------


def signed_request(creds: dict, port: int, body: bytes, key: str) -> bytes:
    """Signed at send time, not up front: queueing a million messages takes longer than the
    server's clock-skew window, so a request signed at the start would be stale by the end."""
    return bench.signed_request(creds, port, body, key, datetime.now(UTC))


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, dict[bytes, bytes]]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    headers: dict[bytes, bytes] = {}
    for line in head.split(b"\r\n")[1:]:
        if b":" in line:
            k, v = line.split(b":", 1)
            headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get(b"content-length", b"0")))
    return status, body, headers


@dataclass(slots=True)
class LoadState:
    accepted: int = 0
    requests: int = 0
    retries: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    back_pressure_s: float = 0.0  # time spent waiting on Retry-After (QUEUE_FULL, RATE_LIMITED)


async def queue_load(
    port: int, creds: dict, messages: int, batch: int, concurrency: int, state: LoadState
) -> None:
    """Requests of `batch` distinct numbers (+86138 and 8 digits) until `messages` are accepted.
    Refusals that ask to come back later (429/503) are retried with the same Idempotency-Key,
    so a request is never counted twice; other refusals are counted and skipped."""
    starts = iter(range(0, messages, batch))

    async def conn() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for start in starts:
                to = [f"+86138{i:08d}" for i in range(start, min(messages, start + batch))]
                body = json.dumps({"to": to, "text": TEXT}, separators=(",", ":")).encode()
                key = uuid.uuid4().hex
                for attempt in range(100):
                    writer.write(signed_request(creds, port, body, key))
                    status, answer, headers = await read_response(reader)
                    state.requests += 1
                    if status == 202:
                        m = _COUNT.search(answer)
                        state.accepted += int(m.group(1)) if m else len(to)
                        break
                    code = _error_code(answer, status)
                    state.errors[code] = state.errors.get(code, 0) + 1
                    if status not in (429, 503) or attempt == 99:
                        break
                    state.retries += 1
                    wait = min(5.0, float(headers.get(b"retry-after", b"1") or 1))
                    state.back_pressure_s += wait
                    await asyncio.sleep(wait)
        finally:
            writer.close()

    await asyncio.gather(*(conn() for _ in range(concurrency)))


def _error_code(body: bytes, status: int) -> str:
    try:
        return str(json.loads(body).get("error", {}).get("code", status))
    except (ValueError, AttributeError):
        return str(status)


# -- daemon and simulator views ---------------------------------------------------------------


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (Prometheus text format)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        base, _, rest = series.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += float(value)
    return total


async def get_text(session: aiohttp.ClientSession, url: str) -> str:
    async with session.get(url) as r:
        return await r.text()


async def admin_queue(port: int) -> tuple[dict, float]:
    """GET /admin/queue and how long it took (a GROUP BY over the backlog)."""
    t = time.perf_counter()
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with (
        aiohttp.ClientSession(headers=headers) as s,
        s.get(
            f"http://127.0.0.1:{port}/admin/queue", timeout=aiohttp.ClientTimeout(total=300)
        ) as r,
    ):
        view = await r.json()
    return view, time.perf_counter() - t


# -- the run ----------------------------------------------------------------------------------


def write_config(args: argparse.Namespace, tmp: Path, ports: dict[str, int]) -> Path:
    cfg = {
        "server": {
            "port": ports["http"],
            "max_recipients": max(1000, args.batch),
            "workers": args.workers,
            "admin_token": ADMIN_TOKEN,
        },
        "store": {
            "path": str(tmp / "bridge.db"),
            **bench.group_commit(args),
            "max_queued_segments": max(2_000_000, 2 * args.messages),
        },
        "security": {"master_key": base64.b64encode(os.urandom(32)).decode()},
        "logging": {"level": "WARNING"},
        # Distinct numbers: the per-number limit is never reached, but every recipient is still
        # looked up, as in production. --raw-text-per-day 0 turns the lookups' limit off.
        "rules": {"frequency": {"raw_text": {"per_day": args.raw_text_per_day}}},
        "billing": {"enabled": not args.no_billing},
        "sim": bench.sim_section(ports["sim"], ports["ctl"], args.receipt_delay_ms),
        "smscs": [
            bench.smsc_section(
                ports["sim"],
                args.window,
                args.binds,
                # Short reconnect back-off: the drain clock starts when the simulator does, and
                # a 60 s back-off would time the wait for the next attempt instead of the drain.
                reconnect_min_s=0.5,
                reconnect_max_s=2.0,
            )
        ],
    }
    path = tmp / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cpu_now(daemon: subprocess.Popen[bytes], sim: subprocess.Popen[bytes] | None) -> dict:
    busy, total = bench._machine_busy()
    return {
        "daemon": bench._cpu(daemon.pid),
        "simulator": bench._cpu(sim.pid) if sim is not None else 0.0,
        "load_generator": time.process_time(),
        "machine": busy,
        "machine_total": total,
    }


def cpu_split(a: dict, b: dict) -> dict[str, float]:
    d = {k: b[k] - a[k] for k in a}
    d["other"] = max(0.0, d["machine"] - d["daemon"] - d["simulator"] - d["load_generator"])
    del d["machine"]
    return d


def per_1k(mb: float, messages: int) -> float:
    return mb * 1024 / max(1, messages) * 1000


def slope_second_half(points: list[tuple[int, float]], total: int) -> float | None:
    """KB of RSS per 1,000 more messages queued, between the first point past half of the
    messages and the last: past the start-up growth (SQLite page cache filling, first
    allocations), so what scales with the backlog itself."""
    later = [p for p in points if p[0] >= total // 2]
    if len(later) < 2 or later[-1][0] == later[0][0]:
        return None
    return per_1k(later[-1][1] - later[0][1], later[-1][0] - later[0][0])


def progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


async def run(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bridge-backlog-"))
    sampler_task: asyncio.Task[None] | None = None
    try:
        ports = {"http": bench.free_port(), "sim": bench.free_port(), "ctl": bench.free_port()}
        path = write_config(args, tmp, ports)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        cli = [sys.executable, "-m", "bridge.cli"]
        base = f"http://127.0.0.1:{ports['http']}"

        def spawn(command: str, log: str) -> subprocess.Popen[bytes]:
            with open(tmp / log, "wb") as out:  # the child keeps its own copy of the descriptor
                return CHILDREN.popen(
                    [*cli, command, "--config", str(path)],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )

        daemon: subprocess.Popen[bytes] | None = None
        sim: subprocess.Popen[bytes] | None = None
        load_before = os.getloadavg()
        wall0 = time.perf_counter()
        create = ["account", "create", "bench", "--raw-text", "--topup", "100000000"]
        out = subprocess.run(
            [*cli, *create, "--config", str(path)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        creds = json.loads(out.stdout)
        daemon = spawn("run", "daemon.log")
        await bench.wait_http(f"{base}/healthz", 60)
        await asyncio.sleep(1.0)  # acceptor processes (--workers) finish starting
        sampler = Sampler(daemon.pid)
        rss_idle = sampler.take()
        sampler_task = asyncio.create_task(sampler.run())

        # -- phase 1: queue ----------------------------------------------------------------
        state = LoadState()
        cpu0 = cpu_now(daemon, None)
        t0 = time.perf_counter()
        load = asyncio.create_task(
            queue_load(ports["http"], creds, args.messages, args.batch, args.concurrency, state)
        )
        last_t, last_n, rates = t0, 0, []
        points: list[tuple[int, float]] = []  # (accepted, RSS MB) at each progress line
        while not load.done():
            await asyncio.wait({load}, timeout=args.report_s)
            now = time.perf_counter()
            rate = (state.accepted - last_n) / max(1e-9, now - last_t)
            rates.append(rate)
            s = sampler.samples[-1]
            progress(
                f"queue: {state.accepted:>9} accepted  {rate:7.0f}/s  "
                f"RSS {s.rss:6.1f} MB  HWM {s.hwm:6.1f} MB  errors {state.errors or '-'}"
            )
            last_t, last_n = now, state.accepted
            points.append((state.accepted, s.rss))
        load.result()
        t_queue = time.perf_counter() - t0
        cpu1 = cpu_now(daemon, None)
        queue_peak, queue_hwm = sampler.peak, sampler.take().hwm

        # -- settle: steady RSS and the queue as the daemon sees it --------------------------
        await asyncio.sleep(args.settle_s)
        steady = sampler.take()
        view, queue_view_s = await admin_queue(ports["http"])
        progress(
            f"queued: depth {view.get('depth')} segments, {view.get('messages')} messages "
            f"(GET /admin/queue took {queue_view_s:.2f} s); RSS {steady.rss:.1f} MB"
        )

        # -- optional: stop and start again with the backlog in the store -------------------
        restart: dict[str, float] = {}
        if args.restart:
            t_stop = time.perf_counter()
            daemon.terminate()
            await asyncio.to_thread(daemon.wait, 120)
            restart["stop_s"] = time.perf_counter() - t_stop
            t_start = time.perf_counter()
            daemon = spawn("run", "daemon-restart.log")
            sampler.daemon_pid = daemon.pid
            await bench.wait_http(f"{base}/healthz", 300)
            restart["healthz_s"] = time.perf_counter() - t_start
            await asyncio.sleep(1.0)
            restart["rss_mb"] = sampler.take().rss
            view, queue_view_s = await admin_queue(ports["http"])
            restart["queue_messages"] = float(view.get("messages") or 0)
            progress(
                f"restarted: stop {restart['stop_s']:.1f} s, /healthz after "
                f"{restart['healthz_s']:.1f} s, RSS {restart['rss_mb']:.1f} MB, "
                f"{view.get('messages')} messages queued"
            )

        # -- phase 2: drain ----------------------------------------------------------------
        target = min(args.drain_limit or state.accepted, state.accepted)
        sampler.reset_peak()
        sim = spawn("sim", "sim.log")
        sampler.sim_pid = sim.pid
        ctl = f"http://127.0.0.1:{ports['ctl']}/stats"
        cpu2 = cpu_now(daemon, sim)
        t_sim = time.perf_counter()
        await bench.wait_http(ctl, 30)
        # t_first: the last poll that saw no receipt yet (polled every 0.2 s until the first),
        # so the rates below never overstate by timing from a late first sighting.
        t_first: float | None = None
        t_zero = time.perf_counter()
        at_60: tuple[float, int] | None = None  # (seconds after t_first, delivered)
        done = 0
        counters: dict[str, int] = {}
        last_t, last_n, stalled_since = time.perf_counter(), 0, time.perf_counter()
        async with aiohttp.ClientSession() as http:
            while True:
                await asyncio.sleep(1.0 if t_first is not None else 0.2)
                st = await bench.get_json(http, ctl)
                counters = st.get("counters", st)
                done = counters.get("receipts_acked", 0)
                now = time.perf_counter()
                if t_first is None:
                    if not done:
                        t_zero = now
                        continue
                    t_first = t_zero
                if at_60 is None and now - t_first >= 60:
                    at_60 = (now - t_first, done)
                if done > last_n:
                    stalled_since = now
                if now - last_t >= args.report_s or done >= target:
                    rate = (done - last_n) / max(1e-9, now - last_t)
                    metrics = await get_text(http, f"{base}/metrics")
                    smp = sampler.samples[-1]
                    progress(
                        f"drain: {done:>9} delivered  {rate:7.0f}/s  "
                        f"queue {metric(metrics, 'smpp_bridge_queue_depth'):.0f}  "
                        f"RSS {smp.rss:6.1f} MB  HWM {smp.hwm:6.1f} MB  sim {smp.sim_rss:.0f} MB"
                    )
                    last_t, last_n = now, done
                if done >= target:
                    break
                if now - stalled_since > args.stall_s:
                    progress(f"drain stalled for {args.stall_s:.0f} s at {done}; giving up")
                    break
            t_end = time.perf_counter()
            cpu3 = cpu_now(daemon, sim)
            metrics = await get_text(http, f"{base}/metrics")
        drain_peak, drain_hwm = sampler.peak, sampler.take().hwm
        end_view, end_view_s = await admin_queue(ports["http"])
        sampler_task.cancel()
        first_60 = None
        if t_first is not None:
            span, n = at_60 if at_60 is not None else (t_end - t_first, done)
            first_60 = n / max(1e-9, span)
        return {
            "options": {k: v for k, v in vars(args).items() if k != "json"},
            "load_average_before": load_before,
            "queued": state.accepted,
            "requests": state.requests,
            "retries": state.retries,
            "errors": state.errors,
            "back_pressure_s": state.back_pressure_s,
            "queue_seconds": t_queue,
            "accept_per_s": state.accepted / t_queue,
            "accept_per_s_min_interval": min(rates[:-1] or rates or [0.0]),
            "rss_idle_mb": rss_idle.rss,
            "rss_after_queue_mb": steady.rss,
            "rss_per_1k_queued_kb": per_1k(steady.rss - rss_idle.rss, state.accepted),
            "rss_slope_second_half_kb": slope_second_half(points, state.accepted),
            "peak_rss_queue_mb": max(queue_peak, queue_hwm),
            "queue_depth": view.get("depth"),
            "queue_messages": view.get("messages"),
            "admin_queue_s": queue_view_s,
            "drain_target": target,
            "delivered": done,
            "bind_after_s": (t_first - t_sim) if t_first is not None else None,
            "drain_per_s_first_60": first_60,
            "drain_per_s_overall": done / max(1e-9, t_end - (t_first or t_sim)),
            "drain_per_s_from_sim_start": done / max(1e-9, t_end - t_sim),
            "drain_seconds": t_end - t_sim,
            "peak_rss_drain_mb": max(drain_peak, drain_hwm),
            "rss_after_drain_mb": sampler.samples[-1].rss,
            "sim_rss_mb": sampler.samples[-1].sim_rss,
            "daemon_delivered_metric": metric(
                metrics, "smpp_bridge_receipts_total", state="delivered"
            ),
            "sim_counters": {
                k: counters.get(k, 0)
                for k in ("submit_sm", "submit_ok", "throttled", "receipts_acked", "receipts_sent")
            },
            "queue_after_drain": end_view.get("depth"),
            "admin_queue_after_s": end_view_s,
            "restart": restart,
            "cpu_queue": cpu_split(cpu0, cpu1),
            "cpu_drain": cpu_split(cpu2, cpu3),
            "wall_seconds": time.perf_counter() - wall0,
            "tmp": str(tmp),
        }
    finally:
        if sampler_task is not None:
            sampler_task.cancel()
        CHILDREN.end(30)
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"kept {tmp}", file=sys.stderr)


def _cpu_line(d: dict[str, float]) -> str:
    total = d.pop("machine_total")
    parts = " / ".join(f"{v:.0f}" for v in d.values())
    return f"{' / '.join(d)}: {parts}  (machine {total:.0f} CPU-s)"


def table(r: dict) -> list[tuple[str, str]]:
    def num(v: float | None, fmt: str = ".0f") -> str:
        return "n/a" if v is None else format(v, fmt)

    return [
        ("messages queued", f"{r['queued']}  (requests {r['requests']}, errors: "
         f"{r['errors'] or 'none'}, back-pressure waits {r['back_pressure_s']:.0f} s)"),
        ("accept messages/s (slowest interval)",
         f"{r['accept_per_s']:.0f}  ({r['accept_per_s_min_interval']:.0f})"),
        ("queueing time (s)", f"{r['queue_seconds']:.1f}"),
        ("queue depth after queueing (segments / messages)",
         f"{r['queue_depth']} / {r['queue_messages']}  (GET /admin/queue "
         f"{r['admin_queue_s']:.2f} s)"),
        ("RSS idle before queueing (MB)", f"{r['rss_idle_mb']:.1f}"),
        ("RSS after queueing, steady (MB)", f"{r['rss_after_queue_mb']:.1f}"),
        ("RSS growth per 1,000 queued (KB): overall / second half",
         f"{r['rss_per_1k_queued_kb']:.1f} / {num(r['rss_slope_second_half_kb'], '.1f')}"),
        ("peak RSS while queueing (MB)", f"{r['peak_rss_queue_mb']:.1f}"),
        ("peak RSS while draining (MB)", f"{r['peak_rss_drain_mb']:.1f}"),
        ("RSS after draining (MB)", f"{r['rss_after_drain_mb']:.1f}"),
        ("delivered / drain target", f"{r['delivered']} / {r['drain_target']}  "
         f"(daemon metric: {r['daemon_delivered_metric']:.0f})"),
        *(
            [
                ("restart: stop (s) / start to /healthz (s) / RSS (MB)",
                 f"{r['restart']['stop_s']:.1f} / {r['restart']['healthz_s']:.1f} / "
                 f"{r['restart']['rss_mb']:.1f}  ({r['restart']['queue_messages']:.0f} "
                 "messages still queued)"),
            ]
            if r["restart"]
            else []
        ),
        ("bind up after simulator start (s)", num(r["bind_after_s"], ".1f")),
        ("drain messages/s, first 60 s", num(r["drain_per_s_first_60"])),
        ("drain messages/s, overall (from first receipt)", num(r["drain_per_s_overall"])),
        ("drain time (s, from simulator start)", f"{r['drain_seconds']:.1f}"),
        ("queue depth after drain", f"{r['queue_after_drain']}"),
        ("CPU-s queueing: " + _cpu_line(dict(r["cpu_queue"])).split(":")[0],
         _cpu_line(dict(r["cpu_queue"])).split(": ", 1)[1]),
        ("CPU-s draining: " + _cpu_line(dict(r["cpu_drain"])).split(":")[0],
         _cpu_line(dict(r["cpu_drain"])).split(": ", 1)[1]),
        ("load average before", " ".join(f"{x:.2f}" for x in r["load_average_before"])),
        ("wall time (s)", f"{r['wall_seconds']:.0f}"),
    ]  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--messages", type=int, default=1_000_000)
    p.add_argument("--batch", type=int, default=1000, help="recipients per request")
    p.add_argument("--concurrency", type=int, default=4, help="HTTP connections while queueing")
    p.add_argument("--workers", type=int, default=0, help="daemon HTTP acceptor processes")
    p.add_argument("--drain-limit", type=int, default=0, help="stop after M delivered (0: all)")
    p.add_argument("--window", type=int, default=100)
    p.add_argument("--binds", type=int, default=1)
    p.add_argument("--receipt-delay-ms", type=int, default=10)
    p.add_argument(
        "--group-commit-ms", type=int, help="store.group_commit_ms (default: the daemon's)"
    )
    p.add_argument("--raw-text-per-day", type=int, default=50, help="0: no per-number limit")
    p.add_argument("--no-billing", action="store_true")
    p.add_argument("--settle-s", type=float, default=5.0, help="idle before the steady RSS")
    p.add_argument("--report-s", type=float, default=10.0, help="progress line interval")
    p.add_argument("--stall-s", type=float, default=120.0, help="give up after no progress")
    p.add_argument(
        "--restart",
        action="store_true",
        help="after queueing, stop the daemon (SIGTERM) and start it again before the drain",
    )
    p.add_argument("--keep", action="store_true", help="keep the temp dir (DB, logs)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    CHILDREN.on_signals()
    if args.batch < 1 or args.messages < 1 or args.concurrency < 1:
        p.error("--messages, --batch and --concurrency must be at least 1")
    result = CHILDREN.asyncio_run(run(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"options: {result['options']}")
    rows = table(result)
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")


if __name__ == "__main__":
    main()
