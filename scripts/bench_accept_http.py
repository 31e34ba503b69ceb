#!/usr/bin/env python3
"""CPU of a whole accept in one process, over real HTTP: µs per accepted one-part send.

Usage: python scripts/bench_accept_http.py [--requests 20000] [--concurrency 50] [--rounds 3]
                                          [--bare | --bare-store | --no-accept-writes] [--keep]

Why: `bench_accept.py` times the accept path's pure steps; what lies between them (aiohttp's
request handling, the middlewares, the authenticator's caches, the store's accept batch, the
202 answer) it does not see, and `bench.py` end to end is too noisy (±15%) for a cut of a few
µs. This runs what an acceptor process runs for `bench.py`'s requests: the app as the daemon
builds it (`make_app` over an `ApiContext`), a real SQLite store in a temporary directory, the
same signed one-recipient POST /v1/messages on keep-alive connections, and counts this
process's CPU (its fsync thread included) per 202. The load comes from a child process of raw
sockets, pre-signed before the clock starts, so its CPU is not counted. Compare two trees by
running this script from each (it imports the `bridge` beside it).

`--bare` serves the same requests from a bare aiohttp app instead (one POST route that reads
the body and answers a small JSON 202; uvloop, no access log), and `--bare-store` adds to it
the rows an accept writes (nonce, idempotency record, message, segment, with the store's SQL and
schema) through the store's own group commit and WAL fsync: the floor under our accept, so
what of its CPU is ours is the difference. `--no-accept-writes` runs the app with the store's
accept answering "accepted" at once (nothing written): the app's share without the store's.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TEXT = "Your verification code is 123456."


def client_main(port: int, key: str, secret: str, n: int, concurrency: int, first: int) -> None:
    """The load: `n` pre-signed requests over `concurrency` keep-alive connections; prints the
    count of 202 answers and of others."""
    from bridge.api import signing

    now = datetime.now(UTC)
    reqs = []
    for i in range(n):
        # A new number each, as bench.py's: the frequency rules allow a number a few a day.
        body = json.dumps({"to": f"+86138{first + i:08d}", "text": TEXT}).encode()
        headers = {
            "Host": f"127.0.0.1:{port}",
            "Content-Type": "application/json",
            "Idempotency-Key": uuid.uuid4().hex,
            "Content-Length": str(len(body)),
        }
        nonce = uuid.uuid4().hex + uuid.uuid4().hex[:8]
        headers.update(
            signing.sign_request(key, secret, "POST", "/v1/messages", "", headers, body, now, nonce)
        )
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        reqs.append(f"POST /v1/messages HTTP/1.1\r\n{head}\r\n".encode() + body)
    counts: dict[str, Any] = {"202": 0, "other": 0}

    async def conn(queue: list[bytes]) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while queue:
            writer.write(queue.pop())
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            ok = head.startswith(b"HTTP/1.1 202")
            counts["202" if ok else "other"] += 1
            if not ok and "first" not in counts:
                counts["first"] = (head + b"\n").decode(errors="replace")
        writer.close()

    async def drive() -> None:
        await asyncio.gather(*(conn(reqs) for _ in range(concurrency)))

    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdin.readline()  # go
    asyncio.run(drive())
    print(json.dumps(counts), flush=True)


BARE_ANSWER = b'{"batch_id":"bat_0","count":1,"messages":[{"id":"msg_0","status":"queued"}]}'


def bare_app(store: Any, account_id: str, key_id: str) -> Any:
    """The floor: aiohttp reading the body and answering 202, and with `store`, the accept's
    rows written through its group commit (no auth, validation, rules or rate bucket)."""
    from aiohttp import web

    from bridge.ids import new_id
    from bridge.store import sqlite as sql

    async def post(request: web.Request) -> web.Response:
        body = await request.read()
        if store is not None:
            now = int(time.time() * 1000)
            mid = new_id("msg_", now)
            nonce = request.headers["X-Bridge-Nonce"]
            idem = (account_id, request.headers["Idempotency-Key"], "h" * 64, 202, BARE_ANSWER,
                    now + 86_400_000)  # fmt: skip
            row = (mid, account_id, new_id("bat_", now), None, "+8613800000000", None, None,
                   None, TEXT, "gsm7", 0, 1, 1, now, None, now + 86_400_000, now, None, None,
                   None)  # fmt: skip
            seg = (mid, 1, 1, 0, body[:33], b"")

            def job(c: Any) -> None:
                c.execute(sql._NONCE_NEW, (key_id, nonce, now + 900_000))
                c.execute(sql._IDEM_NEW, idem)
                c.execute(_BARE_MESSAGE, row)
                c.execute(_BARE_SEGMENT, seg)

            await store._runner.write(job, bare=True)
        return web.Response(body=BARE_ANSWER, status=202, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/messages", post)
    return app


_BARE_MESSAGE = (
    "INSERT INTO messages (id, account_id, batch_id, client_ref, recipient, sender, "
    "sign_name, template, text, encoding, data_coding, segments, billable_units, "
    "accepted_at, scheduled_at, expires_at, q_not_before, kind, price_class, wire) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_BARE_SEGMENT = (
    "INSERT INTO segments (message_id, seq, total, esm_class, short_message, tlvs) "
    "VALUES (?,?,?,?,?,?)"
)


@contextlib.asynccontextmanager
async def accept_context(
    prefix: str, keep: bool = False, tps: int = 0
) -> AsyncIterator[tuple[Any, Any, Any]]:
    """The app's context as an acceptor's (a real SQLite store in a temporary directory, an
    account with money and a key): (ApiContext, SqliteStore, the account's credentials). Shared
    with bench_accept_inproc.py, which imports it from here (copy both to compare trees). At
    the end the store is closed and the directory removed, unless `keep` (`--keep`): until
    session 50 every run left its directory behind, and 80 of them sat in /tmp. `tps`: the
    account's rate (each accept then takes from its token bucket)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        ctx, store, creds = await _open_context(tmp, tps)
        try:
            yield ctx, store, creds
        finally:
            await store.close()
    finally:
        if keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


async def _open_context(tmp: Path, tps: int = 0) -> tuple[Any, Any, Any]:
    from bridge.accounts import AccountService
    from bridge.api.auth import Authenticator
    from bridge.api.context import ApiContext
    from bridge.api.submit import Submitter
    from bridge.app import make_router
    from bridge.config import parse_config
    from bridge.crypto import Sealer
    from bridge.domain.ledger import topup
    from bridge.store.sqlite import SqliteStore
    from bridge.wiring import configure_store

    master = base64.b64encode(os.urandom(32)).decode()
    cfg = parse_config(
        {
            "server": {"port": 8080, "max_recipients": 1000},
            "store": {"path": str(tmp / "bridge.db")},
            "security": {"master_key": master},
            "logging": {"level": "WARNING"},
            "smscs": [{"name": "a", "system_id": "s"}],
        },
        env={},
        base_dir=tmp,
    )
    sealer = Sealer(base64.b64decode(master))
    store = SqliteStore(
        cfg.store.path, linger_ms=cfg.store.group_commit_ms, max_batch=cfg.store.group_commit_max
    )
    configure_store(store, cfg)
    await store.open()
    ctx = ApiContext(
        config=cfg,
        store=store,
        auth=await Authenticator.start(store, sealer, cfg, time.time),
        submitter=Submitter(cfg, make_router(cfg)),
        accounts=AccountService(store, sealer),
    )
    now = int(time.time() * 1000)
    if cfg.billing.enabled:
        # As the daemon's start does (bridge/app.py): until session 51 the first fifty
        # concurrent sends each loaded (and tried to seed) the tariff book, ~30 M instructions
        # counted as the accept's (60 k a request of bench_accept_inproc.py's 500).
        await ctx.tariff_book.load(now)
    creds = await ctx.accounts.create("bench", {"raw_text": True, "tps": tps}, now)
    await store.append_ledger(creds.account.id, topup(100_000_000 * 1_000_000, now, "bench"))
    return ctx, store, creds


async def serve(args: argparse.Namespace) -> None:
    async with accept_context("bench-accept-http-", args.keep) as (ctx, store, creds):
        await _serve(args, ctx, store, creds)


async def _serve(args: argparse.Namespace, ctx: Any, store: Any, creds: Any) -> None:
    from aiohttp import web

    from bridge.api.app import make_app

    if args.bare or args.bare_store:
        app = bare_app(store if args.bare_store else None, creds.account.id, creds.app_key)
    else:
        if args.no_accept_writes:

            async def accepted(batch: Any, now: int) -> Any:
                from bridge.store.models import AcceptOutcome

                return AcceptOutcome(accepted=True)

            store.accept = accepted
        app = make_app(ctx)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        for r in range(args.rounds):
            client = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--client",
                str(port),
                creds.app_key,
                creds.app_secret,
                str(args.requests),
                str(args.concurrency),
                str(r * args.requests),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            assert client.stdout is not None and client.stdin is not None
            await client.stdout.readline()  # signed, ready
            gc.collect()
            commits0, fsyncs0 = store._runner.commits, store._runner.fsyncs
            cpu0, wall0 = time.process_time(), time.perf_counter()
            client.stdin.write(b"go\n")
            await client.stdin.drain()
            counts = json.loads(await client.stdout.readline())
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
            await client.wait()
            ok = counts["202"]
            if "first" in counts:
                print("  first refusal:", counts["first"])
            print(
                f"  round {r + 1}: {ok} accepted ({counts['other']} other), "
                f"{cpu / max(ok, 1) * 1e6:7.1f} us of CPU per accept, {ok / wall:7.0f}/s, "
                f"{store._runner.commits - commits0} commits, {store._runner.fsyncs - fsyncs0} "
                "fsyncs",
                flush=True,
            )
    finally:
        await runner.cleanup()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        port, key, secret, n, conc, first = sys.argv[2:8]
        client_main(int(port), key, secret, int(n), int(conc), int(first))
        return
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=20000, help="sends per round")
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory (the store)")
    floor = ap.add_mutually_exclusive_group()
    floor.add_argument("--bare", action="store_true", help="a bare aiohttp app: the floor")
    floor.add_argument(
        "--bare-store", action="store_true", help="the bare app writing the accept's rows"
    )
    floor.add_argument(
        "--no-accept-writes", action="store_true", help="the app, its accepts written nowhere"
    )
    args = ap.parse_args()
    gc.freeze()  # as `run` does at start (bridge/cli.py, _tune_gc)
    gc.set_threshold(5000)
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(args))
    else:
        uvloop.run(serve(args))


if __name__ == "__main__":
    main()
