#!/usr/bin/env python3
"""An accept's work in one process, no sockets: CPU µs, or instructions, per accepted send.

Usage: python scripts/bench_accept_inproc.py [--requests 2000] [--stub] [--callgrind] [--keep]
                                             [--tps N] [--kind gsm1|ucs3] [--wire]

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

`--wire` hands each request to aiohttp as bytes instead (session 52): fifty connections of the
daemon's own runner (`http_errors.AppRunner` with the daemon's arguments: its `_Handler`, the
parser, `Request` construction, keep-alive bookkeeping, the response's prepare and write), each
a transport that keeps what is written and reads nothing from a socket. What it adds to the
default mode is aiohttp's protocol and response writing; the socket's system calls are left out
(`bench_accept_http.py` has them).
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


async def run(
    n: int,
    stub: bool,
    counting: bool,
    keep: bool,
    tps: int = 0,
    wire: bool = False,
    in_lock: bool = False,
) -> None:
    async with accept_context("bench-inproc-", keep, tps) as (ctx, store, creds):
        if in_lock:
            _count_in_lock(store)
        await (_run_wire if wire else _run)(ctx, store, creds, n, stub, counting)


def _signed(creds: Any, i: int, signed_at: datetime) -> tuple[bytes, dict[str, str]]:
    """`bench.py`'s i-th send: its body and its signed headers."""
    from bridge.api import signing

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
    return body, headers


def _stub_accept(store: Any) -> None:
    from bridge.store.models import AcceptOutcome

    async def accepted(batch: Any, now: int) -> AcceptOutcome:
        return AcceptOutcome(accepted=True)

    store.accept = accepted


# --in-lock: callgrind counts only inside this C function (`--toggle-collect`), which calls the
# runner's batch (BEGIN ... the jobs ... COMMIT, what the write lock is held for); nothing else
# in the process calls it.
IN_LOCK_FN = "_operator_call"


def _count_in_lock(store: Any) -> None:
    """The runner's batches called through `operator.call` (see IN_LOCK_FN)."""
    import operator

    runner = store._runner
    write_batch = runner._write_batch
    runner._write_batch = lambda batch: operator.call(write_batch, batch)


def _callgrind(on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
                   check=True, capture_output=True)  # fmt: skip


def _report(ctx: Any, cpu: float, n: int, stub: bool) -> None:
    with closing(sqlite3.connect(ctx.config.store.path)) as db:
        stored = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        rows = db.execute("SELECT count(*) FROM segments").fetchone()[0]
    print(
        f"{cpu / n * 1e6:.1f} µs of CPU per request ({'stub' if stub else 'store'}, {n}; "
        f"{stored} messages stored, {rows} segment rows)"
    )


class _Wire:
    """A connection's transport: keeps what aiohttp writes and completes `answered` with each
    whole answer (its head and Content-Length bytes of body)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.answered: asyncio.Future[bytes] | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(
            name, default
        )

    def is_closing(self) -> bool:
        return False

    def write(self, data: bytes) -> None:
        self.out += data
        end = self.out.find(b"\r\n\r\n")
        if end < 0:
            return
        at = self.out.find(b"Content-Length: ", 0, end)
        length = int(self.out[at + 16 : self.out.index(b"\r\n", at)]) if at >= 0 else 0
        if len(self.out) >= end + 4 + length:
            answer = bytes(self.out[: end + 4 + length])
            del self.out[: end + 4 + length]
            assert self.answered is not None
            self.answered.set_result(answer)

    def writelines(self, chunks: Any) -> None:
        self.write(b"".join(chunks))

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


async def _run_wire(ctx: Any, store: Any, creds: Any, n: int, stub: bool, counting: bool) -> None:
    """--wire: the requests as bytes into the daemon's runner's connections (see the doc)."""
    from bridge.api.app import make_app, render_unparsed
    from bridge.api.http_errors import AppRunner

    if stub:
        _stub_accept(store)
    app = make_app(ctx)
    runner = AppRunner(  # bridge/app.py's _listen, without the connection cap
        app, render_unparsed, ctx.metrics, access_log=None, shutdown_timeout=2.0,
        keepalive_timeout=ctx.config.server.idle_timeout_s, auto_decompress=False,
    )  # fmt: skip
    await runner.setup()
    assert runner.server is not None
    loop = asyncio.get_running_loop()
    signed_at = datetime.now(UTC)
    wire = []
    for i in range(n):
        body, headers = _signed(creds, i, signed_at)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        wire.append(f"POST /v1/messages HTTP/1.1\r\n{head}\r\n".encode() + body)
    conns = []
    for _ in range(CONCURRENCY):
        transport, proto = _Wire(), runner.server()
        proto.connection_made(transport)  # type: ignore[arg-type]
        conns.append((transport, proto))

    async def one(transport: _Wire, proto: Any, data: bytes) -> None:
        transport.answered = loop.create_future()
        proto.data_received(data)
        answer = await transport.answered
        assert answer.startswith(b"HTTP/1.1 202 "), answer

    gc.collect()
    if counting:
        _callgrind(True)
    t0 = time.process_time()
    for k in range(0, n, CONCURRENCY):
        await asyncio.gather(
            *(one(t, p, d) for (t, p), d in zip(conns, wire[k : k + CONCURRENCY], strict=True))
        )
    cpu = time.process_time() - t0
    if counting:
        _callgrind(False)
    for _, proto in conns:
        proto.connection_lost(None)
    await runner.cleanup()
    await store.close()
    _report(ctx, cpu, n, stub)


async def _run(ctx: Any, store: Any, creds: Any, n: int, stub: bool, counting: bool) -> None:
    from aiohttp import streams, web
    from aiohttp.test_utils import make_mocked_request
    from multidict import CIMultiDict

    from bridge.api.app import make_app

    if stub:
        _stub_accept(store)
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
        body, headers = _signed(creds, i, signed_at)
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
        assert resp.status == 202, (resp.status, getattr(resp, "body", None))

    gc.collect()
    if counting:
        _callgrind(True)
    t0 = time.process_time()
    for k in range(0, n, CONCURRENCY):
        await asyncio.gather(*(one(r) for r in requests[k : k + CONCURRENCY]))
    cpu = time.process_time() - t0
    if counting:
        _callgrind(False)
    await runner.cleanup()
    await store.close()
    _report(ctx, cpu, n, stub)


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
    if args.wire:
        cmd.append("--wire")
    if args.in_lock:
        cmd.append("--in-lock")
        # valgrind's own options from its environment: children.callgrind builds the command
        os.environ["VALGRIND_OPTS"] = f"--toggle-collect={IN_LOCK_FN}"
    stdout, total = CHILDREN.callgrind(cmd, out, keep=bool(args.out))
    per = total / args.requests
    print(stdout.strip())
    print(f"{per:,.0f} instructions per request ({'stub' if args.stub else 'store'}"
          f"{', wire' if args.wire else ''}{', in the write lock' if args.in_lock else ''}, "
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
    ap.add_argument(
        "--wire", action="store_true", help="requests as bytes into aiohttp's connections"
    )
    ap.add_argument(
        "--in-lock",
        action="store_true",
        help="--callgrind: count only the store's write batches (what the write lock holds)",
    )
    args = ap.parse_args()
    if args.in_lock and args.stub:
        ap.error("--in-lock counts the store's batches: not with --stub")
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
        run(
            args.requests,
            args.stub,
            args.counting,
            args.keep,
            args.tps,
            args.wire,
            args.in_lock,
        ),
        uvloop.new_event_loop,
    )


if __name__ == "__main__":
    main()
