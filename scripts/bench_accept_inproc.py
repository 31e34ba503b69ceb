#!/usr/bin/env python3
"""An accept's work in one process, no sockets: CPU µs, or instructions, per accepted send.

Usage: python scripts/bench_accept_inproc.py [--requests 2000] [--stub] [--callgrind] [--keep]
                                             [--tps N] [--kind gsm1|ucs3]

Why: the accept is CPU-bound, and on a shared machine its timings move by more than a cut of a
few µs; instruction counts do not (±0.4% between runs at load 8-10, session 49). This drives
the app's handler chain as the daemon builds it (`make_app` over an `ApiContext`: middlewares,
the authenticator, the handler, a real SQLite store in a temporary directory) with `bench.py`'s
signed one-recipient POST /v1/messages, fifty at a time, each request built before the clock
starts and handed to `app._handle` without a socket (aiohttp's parser and transport are not in
it; `bench_accept_http.py` has them). It prints the process CPU per 202. `--stub` makes the
store's accept answer "accepted" at once: the difference is the store accept's share (its job
in the write lock, SQLite, the group commit).

`--callgrind` reruns this under valgrind's callgrind (`valgrind --tool=callgrind
--instr-atstart=no`; the script switches counting on and off around the timed loop with
`callgrind_control -i on|off`) and prints the instructions counted per request; the profile is
left in the `--out` file for `callgrind_annotate`. Compare two trees by running this script from
each (it imports the `bridge` beside it), several runs each: 500 requests take about a minute.
`--kind ucs3` sends `bench.py`'s 3-part UCS-2 text instead of its one-part GSM one (the store
then writes three segment rows a message, counted at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_accept_http import accept_context
from children import Children

# valgrind with this script under it (--callgrind): ended with this script (children.py).
CHILDREN = Children()

TEXTS = {
    "gsm1": "Your verification code is 123456.",
    # bench.py's ucs3: 3 UCS-2 parts with a UDH
    "ucs3": "【示例】您的验证码是123456，五分钟内有效。请勿泄露给他人。如非本人操作，请忽略本短信。"
    * 3,
}
TEXT = TEXTS["gsm1"]
CONCURRENCY = 50


async def run(n: int, stub: bool, counting: bool, keep: bool, tps: int = 0) -> None:
    async with accept_context("bench-inproc-", keep, tps) as (ctx, store, creds):
        await _run(ctx, store, creds, n, stub, counting)


async def _run(ctx: Any, store: Any, creds: Any, n: int, stub: bool, counting: bool) -> None:
    from aiohttp import streams, web
    from aiohttp.test_utils import make_mocked_request
    from multidict import CIMultiDict

    from bridge.api import signing
    from bridge.api.app import make_app
    from bridge.store.models import AcceptOutcome

    if stub:

        async def accepted(batch: Any, now: int) -> AcceptOutcome:
            return AcceptOutcome(accepted=True)

        store.accept = accepted  # type: ignore[method-assign]
    app = make_app(ctx)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    loop = asyncio.get_running_loop()

    class Transport:
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return ("127.0.0.1", 1) if name == "peername" else default

        def is_closing(self) -> bool:
            return False

    class Protocol:
        transport = Transport()
        ssl_context = None
        peername = ("127.0.0.1", 1)
        sockname = ("127.0.0.1", 2)
        _reading_paused = False

        def pause_reading(self, *args: Any, **kwargs: Any) -> None:
            pass

        def resume_reading(self, *args: Any, **kwargs: Any) -> None:
            pass

        def force_close(self) -> None:
            pass

    class Writer:
        buffer_size = 0
        output_size = 0
        transport = Transport()

        async def drain(self) -> None:
            pass

    signed_at = datetime.now(UTC)
    requests = []
    for i in range(n):
        # A new number each, as bench.py's: the frequency rules allow a number a few a day.
        body = json.dumps({"to": f"+86138{i:08d}", "text": TEXT}).encode()
        headers = {
            "Host": "127.0.0.1:8080",
            "Content-Type": "application/json",
            "Idempotency-Key": uuid.uuid4().hex,
            "Content-Length": str(len(body)),
        }
        nonce = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        headers.update(
            signing.sign_request(
                creds.app_key, creds.app_secret, "POST", "/v1/messages", "", headers, body,
                signed_at, nonce,
            )
        )  # fmt: skip
        payload = streams.StreamReader(Protocol(), 2**16, loop=loop)  # type: ignore[arg-type]
        payload.feed_data(body)
        payload.feed_eof()
        requests.append(
            make_mocked_request(
                "POST", "/v1/messages", headers=CIMultiDict(headers), payload=payload, app=app,
                loop=loop, writer=Writer(), transport=Transport(), protocol=Protocol(),
            )
        )  # fmt: skip

    async def one(request: Any) -> None:
        resp = await app._handle(request)
        assert resp.status == 202, (resp.status, resp.body)

    gc.collect()
    if counting:
        subprocess.run(["callgrind_control", "-i", "on", str(os.getpid())], check=True,
                       capture_output=True)  # fmt: skip
    t0 = time.process_time()
    for k in range(0, n, CONCURRENCY):
        await asyncio.gather(*(one(r) for r in requests[k : k + CONCURRENCY]))
    cpu = time.process_time() - t0
    if counting:
        subprocess.run(["callgrind_control", "-i", "off", str(os.getpid())], check=True,
                       capture_output=True)  # fmt: skip
    await runner.cleanup()
    await store.close()
    with closing(sqlite3.connect(ctx.config.store.path)) as db:
        stored = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        rows = db.execute("SELECT count(*) FROM segments").fetchone()[0]
    print(
        f"{cpu / n * 1e6:.1f} µs of CPU per request ({'stub' if stub else 'store'}, {n}; "
        f"{stored} messages stored, {rows} segment rows)"
    )


def under_callgrind(args: argparse.Namespace) -> None:
    """Reruns this script under callgrind, counting the timed loop only, and prints the
    instructions per request."""
    out = args.out or tempfile.mktemp(prefix="callgrind.accept.")
    cmd = [sys.executable, __file__, "--requests", str(args.requests), "--counting"]
    if args.stub:
        cmd.append("--stub")
    if args.keep:
        cmd.append("--keep")
    if args.tps:
        cmd += ["--tps", str(args.tps)]
    cmd += ["--kind", args.kind]
    stdout, total = CHILDREN.callgrind(cmd, out, keep=bool(args.out))
    per = total / args.requests
    print(stdout.strip())
    print(f"{per:,.0f} instructions per request ({'stub' if args.stub else 'store'}, "
          f"{args.requests}; profile in {out})")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--stub", action="store_true", help="the store's accept answers at once")
    ap.add_argument("--callgrind", action="store_true", help="count instructions under callgrind")
    ap.add_argument("--out", help="--callgrind: the profile's file (a temporary one if not given)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (the store)")
    ap.add_argument(
        "--tps", type=int, default=0, help="the account's rate (high enough never to refuse)"
    )
    ap.add_argument("--counting", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--kind", choices=sorted(TEXTS), default="gsm1", help="bench.py's texts")
    args = ap.parse_args()
    CHILDREN.on_signals()
    global TEXT
    TEXT = TEXTS[args.kind]
    if args.requests % CONCURRENCY:
        ap.error(f"--requests must be a multiple of {CONCURRENCY}")
    if args.callgrind:
        under_callgrind(args)
        return
    import uvloop

    gc.freeze()
    gc.set_threshold(5000)
    CHILDREN.asyncio_run(
        run(args.requests, args.stub, args.counting, args.keep, args.tps), uvloop.new_event_loop
    )


if __name__ == "__main__":
    main()
