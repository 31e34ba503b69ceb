#!/usr/bin/env python3
"""SMPP engine benchmark: the simulator in one process, our connector (one bind) in this one.

Prints submit_sm round trips per second, receipts per second, the engine's CPU microseconds per
message (submit + resp + receipt + deliver_sm_resp), the time from a message's first part
leaving to its last part's answer (p50/p99), and our codec against smpplib.

    python scripts/bench_smpp.py --messages 100000 --window 100
    python scripts/bench_smpp.py --messages 1000 --parts 3 --tps 200 --skip-codec  # a TPS limit
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import free_port  # scripts/ is the script's own folder
from children import Children

from bridge.config import parse_config
from bridge.smpp import constants as C
from bridge.smpp.codec import ShortMessage
from bridge.smpp.connector import Connector

# The simulator: ended with this script (children.py).
CHILDREN = Children()


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


async def run(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bridge-bench-smpp-"))
    try:
        sim_port, ctl_port = free_port(), free_port()
        key = "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2s="
        cfg_data = {
            "security": {"master_key": key},
            "logging": {"level": "WARNING"},
            "sim": {
                "enabled": True,
                "port": sim_port,
                "control_port": ctl_port,
                "receipt_delay_ms": args.receipt_delay_ms,
                "system_id": "bench",
                "password": "bench",
            },
            "smscs": [
                {
                    "name": "sim",
                    "port": sim_port,
                    "system_id": "bench",
                    "password": "bench",
                    "window": args.window,
                    "tps": args.tps,
                    "binds": 1,
                    "bind_mode": "transceiver",
                }
            ],
        }
        path = tmp / "bench.yaml"
        path.write_text(yaml.safe_dump(cfg_data))
        cfg = parse_config(cfg_data, env={})
        CHILDREN.popen(  # the simulator
            [sys.executable, "-m", "bridge.cli", "sim", "--config", str(path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        await wait_port(sim_port)
        receipts = 0
        done = asyncio.Event()

        async def on_deliver(_smsc: str, _body: ShortMessage) -> int:
            nonlocal receipts
            receipts += 1
            if receipts >= args.messages * args.parts:
                done.set()
            return C.ESME_ROK

        conn = Connector(cfg.smscs[0], on_deliver)
        await conn.start()
        if not await conn.wait_up(10):
            raise SystemExit("bind did not come up")
        part = ShortMessage(
            source_addr_ton=5,
            source_addr="bench",
            dest_addr_ton=1,
            dest_addr_npi=1,
            destination_addr="8613800138000",
            registered_delivery=1,
            short_message=b"Your verification code is 123456.",
        )
        it = iter(range(args.messages))
        ok = 0
        spans: list[float] = []  # first part out -> last part answered, per message
        clock = time.perf_counter

        async def worker() -> None:
            nonlocal ok
            first = 0.0

            async def out_now() -> None:
                nonlocal first
                first = clock()

            for _ in it:
                out = await conn.send_message([part] * args.parts, out_now)
                spans.append(clock() - first)
                ok += sum(o.kind == "ok" for o in out)

        cpu0 = time.process_time()
        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.window)))
        t_submit = time.perf_counter() - t0
        await asyncio.wait_for(done.wait(), args.timeout)
        t_all = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        await conn.stop(5)
    finally:
        CHILDREN.end(10)
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "messages": args.messages,
        "window": args.window,
        "parts": args.parts,
        "tps": args.tps,
        "submit_ok": ok,
        "submit_sm_per_s": args.messages * args.parts / t_submit,
        "receipts_per_s": receipts / t_all,
        "engine_cpu_us_per_msg": cpu / args.messages * 1e6,
        "message_ms_p50": statistics.median(spans) * 1000,
        "message_ms_p99": statistics.quantiles(spans, n=100)[98] * 1000,
    }
    if not args.skip_codec:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import bench_codec

        result["codec"] = bench_codec.run(args.codec_seconds)
    return result


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--messages", type=int, default=100_000)
    p.add_argument("--window", type=int, default=100)
    p.add_argument("--parts", type=int, default=1, help="parts per message (default 1)")
    p.add_argument("--tps", type=float, default=0, help="the SMSC's TPS limit (default 0: none)")
    p.add_argument("--receipt-delay-ms", type=int, default=10)
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--codec-seconds", type=float, default=2.0)
    p.add_argument("--skip-codec", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    CHILDREN.on_signals()
    os.environ.setdefault("PYTHONHASHSEED", "0")
    r = CHILDREN.asyncio_run(run(args))
    if args.json:
        print(json.dumps(r, indent=2))
        return
    tps = f", tps {r['tps']:g}" if r["tps"] else ""
    print(
        f"one bind, window {r['window']}{tps}, {r['messages']} messages of {r['parts']} "
        "part(s), a receipt for each part"
    )
    print(f"  submit_sm round trips/s   {r['submit_sm_per_s']:>10,.0f}  ({r['submit_ok']} ok)")
    print(f"  receipts/s                {r['receipts_per_s']:>10,.0f}")
    print(f"  engine CPU per message    {r['engine_cpu_us_per_msg']:>10,.1f} us")
    print(
        f"  first part out -> last answered  p50 {r['message_ms_p50']:,.1f} ms  "
        f"p99 {r['message_ms_p99']:,.1f} ms"
    )
    codec = r.get("codec")
    if codec:
        for pdu in ("submit_sm", "deliver_sm"):
            for op in ("encode", "decode"):
                c = codec[pdu][op]
                print(
                    f"  codec {pdu:10} {op}  ours {c['ours']:>10,.0f}/s  smpplib "
                    f"{c['smpplib']:>9,.0f}/s  x{c['ratio']:.1f}"
                )


if __name__ == "__main__":
    main()
