#!/usr/bin/env python3
"""The owner's CPU per message on its send and receipt paths, store stubbed, over real SMPP.

Usage: python scripts/bench_send_path.py [--messages 20000] [--parts 1] [--window 100] [--tps 0]
       python scripts/bench_send_path.py --callgrind [--messages 5000]
       python scripts/bench_send_path.py --compare OLD_TREE [--pairs 3] [--callgrind]
       ... [--gc-threshold 700]  (the daemon's 5,000 by default)
       ... [--metrics]  (the daemon's metrics wired: off by default)

Why: `bench.py` shows the owner's CPU per message with the store's SQL and a loaded machine in
it; a cut of a few µs on the dispatcher's or the connector's path drowns there. This runs what
the owner runs for a message outside the store: the real `Dispatcher` (claims from a stub store
handing out one-part messages as fast as capacity allows, its tasks, window, batchers), the real
`Connector` (one transceiver bind to the simulator, a separate process over loopback TCP: its
work is not counted), the real `Inbound` taking each deliver_sm receipt into its batcher and
answering it once the (stub) flush ended. The stub store's calls cost nothing, so what is
counted is the owner's Python, the loop and the socket calls per message.

It prints this process's CPU per message from the first claim to the last receipt acknowledged.
`--callgrind` reruns it under valgrind's callgrind, counting that span only (`callgrind_control
-i on|off`, as `bench_accept_inproc.py` does), and prints instructions per message: load-
independent, where CPU time on a shared machine is not. `--tree` imports `bridge` from another
checkout; `--compare OLD` alternates OLD and this checkout, `--pairs` times, and prints ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from children import Children  # scripts/ is the script's own folder

HERE = Path(__file__).resolve().parents[1]
# The simulator, or valgrind with this script under it: ended with this script (children.py).
CHILDREN = Children()
# valgrind runs the script ~20-50 times slower, its start-up (imports) included.
UNDER_VALGRIND = 20
VALGRIND_START_S = 300
# bridge/cli.py GC_THRESHOLD, which `run` sets (`_tune_gc`); a test checks they agree. Not
# imported: --tree may name a checkout whose bridge is not the one this script's folder holds.
DAEMON_GC_THRESHOLD = 5_000
KEY = "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2s="


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            _r, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"simulator did not listen on {port}") from None
            await asyncio.sleep(0.1)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    import yaml

    from bridge.app import make_router
    from bridge.config import parse_config
    from bridge.pipeline.dispatcher import Dispatcher
    from bridge.pipeline.inbound import Inbound
    from bridge.smpp.connector import Connector
    from bridge.smpp.tlvpack import pack_tlvs
    from bridge.store.models import ReceiptOutcome, WorkMessage, WorkSegment
    from bridge.text import EncodeOptions, encode_message

    tmp = Path(tempfile.mkdtemp(prefix="bridge-bench-send-"))
    try:
        sim_port, ctl_port = free_port(), free_port()
        smsc_cfg = {
            "name": "sim",
            "port": sim_port,
            "system_id": "bench",
            "password": "bench",
            "window": args.window,
            "binds": 1,
            "bind_mode": "transceiver",
        }
        if args.tps:
            smsc_cfg["tps"] = args.tps
        cfg_data = {
            "security": {"master_key": KEY},
            "logging": {"level": "WARNING"},
            "sim": {
                "enabled": True,
                "port": sim_port,
                "control_port": ctl_port,
                "receipt_delay_ms": args.receipt_delay_ms,
                "system_id": "bench",
                "password": "bench",
            },
            "smscs": [smsc_cfg],
        }
        path = tmp / "bench.yaml"
        path.write_text(yaml.safe_dump(cfg_data))
        cfg = parse_config(cfg_data, env={})
        smsc = cfg.smscs[0]
        # One GSM part, or a UCS-2 text of `parts` parts (67 characters each beside the UDH).
        text = (
            "Your verification code is 123456." if args.parts == 1 else "验" * (67 * args.parts - 9)
        )
        enc = encode_message(text, EncodeOptions(), lambda: 7)
        segments = tuple(
            WorkSegment(p.seq, p.total, p.esm_class, p.short_message, pack_tlvs(p.tlvs), 0)
            for p in enc.parts
        )
        n = args.messages
        total_parts = n * len(segments)
        done = asyncio.Event()
        counts = {"claimed": 0, "results": 0, "receipts": 0}

        class StubStore:
            commits_in_order = True
            claim_reports = 0  # Store.claim_reports: these claims roll nothing up

            async def claim(self, instance: str, limit: int, now_ms: int, lease_ms: int,
                            **_kw: Any) -> list[Any]:  # fmt: skip
                k = min(limit, n - counts["claimed"])
                first = counts["claimed"]
                counts["claimed"] += k
                to, coding = "+8613800138000", enc.data_coding
                return [
                    WorkMessage(f"msg_{first + i}", "acc", to, "BRIDGE", coding, None, 0, segments)
                    for i in range(k)
                ]

            async def record_submits(self, results: list[Any], releases: list[Any], now: int,
                                     instance: str = "") -> int:  # fmt: skip
                counts["results"] += len(results)
                return 0

            async def apply_receipts(self, items: list[Any], now: int) -> Any:
                counts["receipts"] += len(items)
                if counts["receipts"] >= total_parts:
                    done.set()
                return ReceiptOutcome(len(items), 0)

            async def keep_route_table(self, *_a: Any) -> None:
                return None

            async def unpark(self, *_a: Any) -> int:
                return 0

        CHILDREN.popen(  # the simulator
            [sys.executable, "-m", "bridge.cli", "sim", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": str(Path(args.tree).resolve())},
        )
        await wait_port(sim_port)
        store = StubStore()
        metrics: Any = None
        if args.metrics:
            # The daemon's wiring (app.py): the receipts' counts and each answer's hook.
            from bridge.metrics import Metrics

            metrics = Metrics()
        inbound = Inbound(store, {"sim": smsc}, metrics=metrics)  # type: ignore[arg-type]
        # The receipt handler where the tree has one (session 60: receipts read without
        # their ShortMessage), as the daemon wires it (app.py).
        receipts = getattr(inbound, "on_receipt", None)
        conn = Connector(smsc, inbound.on_deliver, **({"on_receipt": receipts} if receipts else {}))
        if metrics is not None:
            conn.on_submit = metrics.on_submit
            if hasattr(metrics, "ok_sink"):  # as app.py wires it (session 63)
                conn.ok_sink = metrics.ok_sink("sim")
        await conn.start()
        if not await conn.wait_up(10):
            raise SystemExit("bind did not come up")
        disp = Dispatcher(
            store,  # type: ignore[arg-type]
            {"sim": conn},
            make_router(cfg),
            {"sim": smsc},
            instance="bench",
            claim_batch=cfg.pipeline.claim_batch,
            in_flight_windows=cfg.pipeline.in_flight_windows,
        )
        gc.collect()
        gc.freeze()
        if args.gc_threshold:
            # The daemon's young-generation threshold (bridge/cli.py _tune_gc, README note 14):
            # what the owner runs. Until session 56 this measured at CPython's 700, where the
            # collector was ~7% of the count.
            gc.set_threshold(args.gc_threshold, *gc.get_threshold()[1:])
        if args.counting:
            subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True,
                           capture_output=True)  # fmt: skip
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        runner = asyncio.get_running_loop().create_task(disp.run())
        await asyncio.wait_for(done.wait(), args.timeout)
        while disp.inflight:  # the last results' flush  # noqa: ASYNC110
            await asyncio.sleep(0.001)
        if metrics is not None:
            metrics.flush()  # what waits for it counted too (the daemon's flush_every)
        cpu = time.process_time() - cpu0
        wall = time.perf_counter() - t0
        if args.counting:
            subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], check=True,
                           capture_output=True)  # fmt: skip
        await disp.stop(5)
        runner.cancel()
        await conn.stop(5)
    finally:
        CHILDREN.end(10)
        shutil.rmtree(tmp, ignore_errors=True)
    if counts["results"] != total_parts or disp.sent != total_parts:
        got = f"{counts['results']} recorded, {disp.sent} sent"
        raise SystemExit(f"results: {got}, of {total_parts}")
    return {
        "messages": n,
        "parts": len(segments),
        "cpu_us_per_msg": cpu / n * 1e6,
        "messages_per_s": n / wall,
    }


def under_callgrind(args: argparse.Namespace, tree: str) -> dict[str, Any]:
    out = tempfile.mktemp(prefix="callgrind.send.")
    cmd = [
        sys.executable, __file__, "--tree", tree, "--messages", str(args.messages),
        "--parts", str(args.parts), "--window", str(args.window), "--counting", "--json",
        "--tps", str(args.tps),
        "--loop", args.loop, "--gc-threshold", str(args.gc_threshold),
        "--timeout", str(args.timeout * UNDER_VALGRIND),
    ] + (["--metrics"] if args.metrics else [])  # fmt: skip
    # Its own time-out past the copy's: valgrind, the copy and its simulator ended together.
    stdout, total = CHILDREN.callgrind(cmd, out, args.timeout * UNDER_VALGRIND + VALGRIND_START_S)
    got = json.loads(stdout.strip().splitlines()[-1])
    got["instructions_per_msg"] = total / args.messages
    got["profile"] = out
    return got


def one(args: argparse.Namespace, tree: str) -> dict[str, Any]:
    if args.callgrind:
        return under_callgrind(args, tree)
    cmd = [sys.executable, __file__, "--tree", tree, "--json", "--messages", str(args.messages),
           "--parts", str(args.parts), "--window", str(args.window), "--tps", str(args.tps),
           "--loop", args.loop, "--gc-threshold", str(args.gc_threshold)] + (
        ["--metrics"] if args.metrics else [])  # fmt: skip
    try:
        code, stdout, stderr = CHILDREN.run(cmd, args.timeout + 120)
    finally:
        CHILDREN.end()
    if code:
        raise SystemExit(stderr[-3000:])
    return json.loads(stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--parts", type=int, default=1, help="1, or a UCS-2 text of this many parts")
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument(
        "--tps",
        type=float,
        default=0,
        help="the SMSC's TPS limit (`tps`; 0: none): its messages took a task each until "
        "session 58",
    )
    ap.add_argument("--receipt-delay-ms", type=int, default=10)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    ap.add_argument(
        "--gc-threshold",
        type=int,
        default=DAEMON_GC_THRESHOLD,
        help="the cyclic collector's young threshold while counted (default: the daemon's, "
        "bridge/cli.py GC_THRESHOLD; 700 is CPython's own, what this measured until session 56; "
        "0 leaves the interpreter's)",
    )
    ap.add_argument(
        "--metrics",
        action="store_true",
        help="wire a Metrics as the daemon does (the receipts' counts, the connector's "
        "on_submit); off by default, as every count before session 63 was taken",
    )
    ap.add_argument("--tree", default=str(HERE))
    ap.add_argument("--compare", help="an older checkout to compare with, alternating")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--callgrind", action="store_true", help="count instructions under callgrind")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--counting", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    CHILDREN.on_signals()
    key = "instructions_per_msg" if args.callgrind else "cpu_us_per_msg"
    if args.compare:
        ratios = []
        for i in range(args.pairs):
            old, new = one(args, args.compare), one(args, str(HERE))
            ratios.append(new[key] / old[key])
            print(f"pair {i + 1}: {key} {old[key]:,.1f} -> {new[key]:,.1f} "
                  f"({ratios[-1]:.3f}); messages/s {old['messages_per_s']:,.0f} -> "
                  f"{new['messages_per_s']:,.0f}")  # fmt: skip
        print(f"new/old, median of the pairs: {statistics.median(ratios):.3f}")
        return
    if args.callgrind:
        got = under_callgrind(args, args.tree)
    else:
        sys.path.insert(0, str(Path(args.tree).resolve()))
        if args.loop == "uvloop":
            import uvloop

            got = CHILDREN.asyncio_run(run(args), uvloop.new_event_loop)
        else:
            got = CHILDREN.asyncio_run(run(args))
    if args.json:
        print(json.dumps(got))
        return
    for k, v in got.items():
        print(f"  {k:22s} {v:,.1f}" if isinstance(v, float) else f"  {k:22s} {v}")


if __name__ == "__main__":
    main()
