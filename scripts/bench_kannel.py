#!/usr/bin/env python3
"""Kannel under the load bench.py puts on the bridge: the baseline of issue #9's targets, measured
on this machine in the same hour instead of quoted from another.

    python scripts/bench_kannel.py --messages 20000 --concurrency 50
    python scripts/bench_kannel.py --kind ucs3
    python scripts/bench_kannel.py --throttle 0.02 --syserr 0.01

The same simulator process (`smpp-bridge sim`, receipts after 10 ms, one transceiver bind,
window 100), the same texts, the same keep-alive HTTP/1.1 load of requests built before the clock
starts. Kannel reports a status through its dlr-url: each message asks for its final receipt
(dlr-mask 3) at a receiver in this process, so "accept -> final receipt" runs from the 202 seen
here to that callback seen here, and a message counts as done end to end at its callback. Kannel
keeps its queue and receipts in memory (no store-file), signs nothing, and asks for one receipt
per concatenated message (on one part); the bridge stores each message durably before its 202,
verifies a signature on each request and tracks a receipt for every part.

Needs Kannel's bearerbox and smsbox on PATH (Debian: `apt-get install kannel`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import bench  # scripts/ is the script's own folder: the bridge benchmark's helpers
import yaml
from aiohttp import web
from children import Children

# The simulator, bearerbox and smsbox: ended with this script (children.py).
CHILDREN = Children()
FINAL = {1: "delivered", 2: "undelivered", 16: "rejected"}  # Kannel's %d of a final report


def kannel_conf(tmp: Path, ports: dict[str, int], window: int) -> str:
    """bearerbox + smsbox on loopback, one SMPP transceiver bind to the simulator."""
    return f"""group = core
admin-port = {ports["admin"]}
admin-password = bench
status-password = bench
smsbox-port = {ports["box"]}
log-file = "{tmp}/bearerbox.log"
log-level = 2
box-allow-ip = "127.0.0.1"
dlr-storage = internal

group = smsc
smsc = smpp
smsc-id = sim
host = 127.0.0.1
port = {ports["smpp"]}
transceiver-mode = true
smsc-username = bench
smsc-password = bench
system-type = ""
max-pending-submits = {window}

group = smsbox
bearerbox-host = 127.0.0.1
bearerbox-port = {ports["box"]}
sendsms-port = {ports["http"]}
log-file = "{tmp}/smsbox.log"
log-level = 2

group = sendsms-user
username = bench
password = bench
max-messages = 10
concatenation = true

group = sms-service
keyword = default
text = "ok"
"""


def sendsms(port: int, dlr_port: int, i: int, to: str, text: str, ucs2: bool) -> bytes:
    """One GET /cgi-bin/sendsms as raw HTTP/1.1 bytes, its dlr-url naming request i."""
    dlr = quote(f"http://127.0.0.1:{dlr_port}/dlr?i={i}&s=%d", safe="")
    coding = "&coding=2&charset=UTF-8" if ucs2 else ""
    query = (
        f"username=bench&password=bench&from=bench&to={to}&text={quote(text, safe='')}"
        f"{coding}&dlr-mask=3&dlr-url={dlr}"
    )
    return f"GET /cgi-bin/sendsms?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


async def load(
    port: int,
    requests: list[bytes],
    concurrency: int,
    accepted: dict[int, float],
    latencies: list[float],
) -> dict[str, int]:
    """Keep-alive connections writing the requests; `accepted[i]` is when request i's 202 came,
    `latencies` how long each 202 took."""
    it = iter(enumerate(requests))
    errors: dict[str, int] = {}

    async def conn() -> None:
        reader, writer = await bench.open_load_connection(port)
        try:
            for i, req in it:
                t = time.perf_counter()
                writer.write(req)
                status, head, body = await bench.read_answer(reader)
                if status == 202:
                    accepted[i] = time.perf_counter()
                    latencies.append(accepted[i] - t)
                else:
                    key = f"{status} {body[:40].decode(errors='replace')}"
                    errors[key] = errors.get(key, 0) + 1
                if b"connection: close" in head.lower():
                    writer.close()
                    reader, writer = await bench.open_load_connection(port)
        finally:
            writer.close()

    await asyncio.gather(*(conn() for _ in range(concurrency)))
    return errors


class Receiver:
    """The dlr-url endpoint: when each request's final report came, and what it said."""

    def __init__(self) -> None:
        self.final: dict[int, tuple[float, int]] = {}
        self.reports = 0
        self.all_in = asyncio.Event()
        self.expect = -1

    async def handle(self, request: web.Request) -> web.Response:
        self.reports += 1
        status = int(request.query.get("s", "0"))
        if status in FINAL:
            self.final.setdefault(int(request.query["i"]), (time.perf_counter(), status))
            if len(self.final) == self.expect:
                self.all_in.set()
        return web.Response(text="ok")


async def wait_online(admin: int, timeout: float = 30) -> None:
    """Until bearerbox's status page shows the SMPP bind online and an smsbox connected."""
    url = f"http://127.0.0.1:{admin}/status.txt?password=bench"
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url) as r:
                    text = await r.text()
                if "(online" in text and "smsbox:" in text and "on-line" in text:
                    return
            except (aiohttp.ClientError, OSError):
                pass
            if time.monotonic() > deadline:
                raise SystemExit("Kannel did not bind to the simulator (see its logs with --keep)")
            await asyncio.sleep(0.2)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    missing = [b for b in ("bearerbox", "smsbox") if shutil.which(b) is None]
    if missing:
        raise SystemExit(
            f"{' and '.join(missing)} not found: install Kannel (apt-get install kannel)"
        )
    receiver = Receiver()
    app = web.Application()
    app.router.add_get("/dlr", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    tmp = Path(tempfile.mkdtemp(prefix="bench-kannel-"))
    try:
        ports = {k: bench.free_port() for k in ("smpp", "ctl", "admin", "box", "http", "dlr")}
        sim_cfg = tmp / "sim.yaml"
        sim_cfg.write_text(
            yaml.safe_dump(
                {
                    "security": {"master_key": "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2s="},
                    "logging": {"level": "WARNING"},
                    "sim": bench.sim_section(
                        ports["smpp"],
                        ports["ctl"],
                        args.receipt_delay_ms,
                        throttle_ratio=args.throttle,
                        syserr_ratio=args.syserr,
                    ),
                    "smscs": [bench.smsc_section(ports["smpp"], args.window, 1)],
                }
            )
        )
        conf = tmp / "kannel.conf"
        conf.write_text(kannel_conf(tmp, ports, args.window))
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", ports["dlr"]).start()

        def start(*argv: str, log: str) -> subprocess.Popen[bytes]:
            return CHILDREN.popen(argv, stdout=open(tmp / log, "wb"), stderr=subprocess.STDOUT)

        sim = start(
            sys.executable, "-m", "bridge.cli", "sim", "--config", str(sim_cfg), log="sim.log"
        )
        await bench.wait_http(f"http://127.0.0.1:{ports['ctl']}/stats")
        # -v 4: only panics on the console (Kannel's default prints every debug line there)
        bearer = start("bearerbox", "-v", "4", str(conf), log="bearerbox.out")
        await asyncio.sleep(1.0)  # smsbox gives up at once if bearerbox is not listening yet
        smsbox = start("smsbox", "-v", "4", str(conf), log="smsbox.out")
        await wait_online(ports["admin"])
        ucs2 = args.kind == "ucs3"
        text = bench.TEXTS[args.kind]
        # warm-up: one message through to its report, so start-up is not measured
        receiver.expect = 1
        warm = [sendsms(ports["http"], ports["dlr"], -1, "8613700000000", text, ucs2)]
        await load(ports["http"], warm, 1, {}, [])
        await asyncio.wait_for(receiver.all_in.wait(), 30)
        receiver.final.clear()
        receiver.all_in.clear()
        receiver.expect = args.messages
        requests = [
            sendsms(ports["http"], ports["dlr"], i, f"86138{i:08d}", text, ucs2)
            for i in range(args.messages)
        ]
        async with aiohttp.ClientSession() as s:
            base = (await bench.get_json(s, f"http://127.0.0.1:{ports['ctl']}/stats"))["counters"]
            kannel = (bearer.pid, smsbox.pid)
            cpu0 = sum(bench._cpu(p) for p in kannel)
            parts0 = bench._cpu_parts(sim, None)
            accepted: dict[int, float] = {}
            accept_lat: list[float] = []
            t0 = time.perf_counter()
            errors = await load(ports["http"], requests, args.concurrency, accepted, accept_lat)
            t_accept = time.perf_counter() - t0
            receiver.expect = len(accepted)
            if len(receiver.final) < len(accepted):
                try:
                    await asyncio.wait_for(receiver.all_in.wait(), args.timeout)
                except TimeoutError:
                    pass
            t_total = time.perf_counter() - t0
            cpu1 = sum(bench._cpu(p) for p in kannel)
            parts1 = bench._cpu_parts(sim, None)
            after = (await bench.get_json(s, f"http://127.0.0.1:{ports['ctl']}/stats"))["counters"]
        rss = hwm = 0.0
        for p in kannel:
            r, h = bench.rss_mb(p)
            rss, hwm = rss + r, hwm + h
        split, cores = bench.split_cpu(parts0, parts1, "kannel", cpu1 - cpu0, t_total)
        split.pop("postgres")  # none here (0)
        done = [receiver.final[i] for i in accepted if i in receiver.final]
        e2e = [t - accepted[i] for i, (t, _s) in receiver.final.items() if i in accepted]
        statuses: dict[str, int] = {}
        for _t, st in done:
            statuses[FINAL[st]] = statuses.get(FINAL[st], 0) + 1
        counters = {k: after[k] - base.get(k, 0) for k in after if isinstance(after[k], int)}
        return {
            "options": vars(args),
            "accepted": len(accepted),
            "errors": errors,
            "statuses": statuses,
            "missing_reports": len(accepted) - len(done),
            "accepted_per_s": len(accepted) / t_accept,
            "end_to_end_per_s": len(done) / t_total,
            "submit_sm": counters.get("submit_ok", 0),
            "receipts": counters.get("receipts_acked", 0),
            "throttled": counters.get("throttled", 0),
            "syserr": counters.get("syserr", 0),
            "accept_p50_ms": bench.pct(accept_lat, 50) * 1000,
            "accept_p99_ms": bench.pct(accept_lat, 99) * 1000,
            "e2e_p50_ms": bench.pct(e2e, 50) * 1000,
            "e2e_p99_ms": bench.pct(e2e, 99) * 1000,
            "kannel_cpu_us_per_msg": (cpu1 - cpu0) / max(1, len(accepted)) * 1e6,
            "cpu_seconds": split,
            "cores": cores,
            "kannel_rss_mb": rss,
            "kannel_peak_rss_mb": hwm,
            "seconds": t_total,
        }
    finally:
        CHILDREN.end()
        await runner.cleanup()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--messages", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=50)
    p.add_argument("--kind", choices=sorted(bench.TEXTS), default="gsm1")
    p.add_argument("--window", type=int, default=100, help="Kannel's max-pending-submits")
    p.add_argument("--receipt-delay-ms", type=int, default=10)
    p.add_argument("--throttle", type=float, default=0.0)
    p.add_argument("--syserr", type=float, default=0.0)
    p.add_argument("--timeout", type=float, default=300, help="for the last report, seconds")
    p.add_argument("--keep", action="store_true", help="keep the configs and logs")
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
        ("final reports", f"{result['statuses']}  (missing: {result['missing_reports']})"),
        ("accepted messages/s", f"{result['accepted_per_s']:.0f}"),
        ("end-to-end messages/s (with receipts)", f"{result['end_to_end_per_s']:.0f}"),
        (
            "simulator: submit ok / receipts / throttled / syserr",
            f"{result['submit_sm']} / {result['receipts']} / {result['throttled']} / "
            f"{result['syserr']}",
        ),
        *bench.latency_rows(result),
        (
            "Kannel CPU per message, bearerbox + smsbox (us)",
            f"{result['kannel_cpu_us_per_msg']:.0f}",
        ),
        bench.cpu_row(result),
        (
            "Kannel RSS / peak (MB)",
            f"{result['kannel_rss_mb']:.0f} / {result['kannel_peak_rss_mb']:.0f}",
        ),
    ]
    bench.print_rows(rows)


if __name__ == "__main__":
    main()
