#!/usr/bin/env python3
"""An accept's work in one process, no sockets: CPU µs, or instructions, per accepted send.

Usage: python scripts/bench_accept_inproc.py [--requests 2000] [--stub] [--callgrind] [--keep]
                                             [--tps N] [--kind gsm1|ucs3] [--wire]
                                             [--in-lock [--statements]] [--accounts N]
                                             [--concurrency 50]

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

`--in-lock --statements` (session 54) prints a table of the write lock's instructions per
request by statement (BEGIN, COMMIT, the key's and facts' SELECT, the nonce, idempotency,
message, segment and ledger INSERTs, the held upserts) and by the Python steps in STEPS, each
called through a C function of its own that callgrind_annotate's inclusive count names (see
TRAMPOLINES). The wrapping costs instructions of its own (~75 k a request in all, ~1-2 k in each
row): the rows are for where the lock's work goes and for comparing a row between two trees,
the total without `--statements` for the lock's whole.

`--concurrency N` (session 63) sends N requests at once instead of fifty: the largest write
batch an accept shares (the accepts' held rows are written at a batch's end, note 28).

`--accounts N` (session 56) sends the requests round-robin over N accounts, each with its own
key and money (bench.py's `--accounts`), as an operator with many active customers sees them:
request i is account i % N's. Before the counted loop each account sends once (not counted),
so the count is of the steady state, where every account was seen before: what the process's
per-account caches (the Account by row version, the keys, the HMAC states ...) hold or miss.
Under `--callgrind` the process runs ~40 times slower than at full speed, so the authenticator's
caches that expire by the clock (a key's for 30 s, an account's for validation) would expire
between one account's requests where at full speed they do not: under callgrind (session 56)
its `time.monotonic` runs SLOWED times slower (what a full-speed process, ~40 times more
requests a second, sees between an account's requests; with one account this saves the
validation copy's read once a second, ~1 k instructions a request).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import gc
import itertools
import json
import operator
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_accept_http import accept_context
from children import Children
from inproc_requests import mocked_sends, signed_send

# valgrind with this script under it (--callgrind): ended with this script (children.py).
CHILDREN = Children()

TEXTS = {
    "gsm1": "Your verification code is 123456.",
    # bench.py's ucs3: 3 UCS-2 parts with a UDH
    "ucs3": "【示例】您的验证码是123456，五分钟内有效。请勿泄露给他人。如非本人操作，请忽略本短信。"
    * 3,
}
TEXT = TEXTS["gsm1"]
CONCURRENCY = 50  # requests sent at once: `--concurrency` (session 63)
DEFAULT_CONCURRENCY = CONCURRENCY
# callgrind's slowdown of this process, measured (9,604 against ~230 µs of CPU a request).
SLOWED = 40


async def run(
    n: int,
    stub: bool,
    counting: bool,
    keep: bool,
    tps: int = 0,
    wire: bool = False,
    in_lock: bool = False,
    accounts: int = 1,
) -> None:
    async with accept_context("bench-inproc-", keep, tps) as (ctx, store, creds):
        every = [creds, *await _more_accounts(ctx, store, accounts - 1, tps)]
        if counting:
            _slow_auth_clock()
        if in_lock:
            _count_in_lock(store)
        if os.environ.get("BENCH_STATEMENTS_OUT"):
            _by_statement(store)
        await (_run_wire if wire else _run)(ctx, store, every, n, stub, counting)


async def _more_accounts(ctx: Any, store: Any, n: int, tps: int) -> list[Any]:
    """`n` more accounts as accept_context makes its one (a key, money), fifty at a time (the
    store's group commit writes them together)."""
    from bridge.domain.ledger import topup

    now = int(time.time() * 1000)

    async def one(k: int) -> Any:
        creds = await ctx.accounts.create(f"bench{k + 1}", {"raw_text": True, "tps": tps}, now)
        await store.append_ledger(creds.account.id, topup(100_000_000 * 1_000_000, now, "bench"))
        return creds

    out: list[Any] = []
    for k in range(0, n, CONCURRENCY):
        out += await asyncio.gather(*(one(j) for j in range(k, min(n, k + CONCURRENCY))))
    return out


def _slow_auth_clock() -> None:
    """The authenticator's monotonic clock SLOWED times slower (see the doc: `--accounts` under
    callgrind), from now on."""
    import types

    from bridge.api import auth

    real = time.monotonic
    start = real()
    auth.time = types.SimpleNamespace(  # type: ignore[assignment]
        monotonic=lambda: start + (real() - start) / SLOWED, time=time.time
    )


def _warm_up(accounts: int) -> int:
    """The requests sent before counting: one per account (rounded up to CONCURRENCY), none
    with one account (as before `--accounts`). Each round of them is signed as it is sent and
    the counted ones after them: under callgrind 5,000 accounts' first sends
    took longer than the 300 s a signature's date may lag (REQUEST_EXPIRED)."""
    return 0 if accounts == 1 else -(-accounts // CONCURRENCY) * CONCURRENCY


def _signed(every: list[Any], i: int, signed_at: datetime) -> tuple[bytes, dict[str, str]]:
    """`bench.py`'s i-th send (a new number each), account i % len(every)'s."""
    return signed_send(every[i % len(every)], i, TEXT, signed_at)


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


# --statements: where the write lock's instructions go, statement by statement. Callgrind names
# C functions only (a Python function is `_PyEval_EvalFrameDefault` like any other), so each
# statement kind, and each Python step of the accept named in STEPS, is called through a C
# function of its own (a "trampoline": map's, filter's, min's key ...), whose inclusive count
# callgrind_annotate then gives. The connection the runner writes with is wrapped (a Python
# object forwarding to it: its own calls add a little to the lock's total, which the table's
# remainder shows), so that each execute goes through its kind's trampoline.
def _tramp_map(f: Any, a: tuple[Any, ...]) -> Any:
    return next(map(f, *([x] for x in a))) if a else f()


def _tramp_starmap(f: Any, a: tuple[Any, ...]) -> Any:
    return next(itertools.starmap(f, (a,)))


def _tramp_reduce(f: Any, a: tuple[Any, ...]) -> Any:
    return functools.reduce(lambda _, x: f(*x), (a,), None)


def _capture(pick: Any, f: Any, a: tuple[Any, ...], found: bool) -> Any:
    out: list[Any] = []

    def keep(x: tuple[Any, ...]) -> bool:
        out.append(f(*x))
        return found

    next(pick(keep, (a,)), None)
    return out[0]


def _tramp_filter(f: Any, a: tuple[Any, ...]) -> Any:
    return _capture(filter, f, a, True)


def _tramp_takewhile(f: Any, a: tuple[Any, ...]) -> Any:
    return _capture(itertools.takewhile, f, a, True)


def _tramp_dropwhile(f: Any, a: tuple[Any, ...]) -> Any:
    return _capture(itertools.dropwhile, f, a, False)


def _tramp_filterfalse(f: Any, a: tuple[Any, ...]) -> Any:
    return _capture(itertools.filterfalse, f, a, False)


def _tramp_min(f: Any, a: tuple[Any, ...]) -> Any:
    out: list[Any] = []

    def key(x: tuple[Any, ...]) -> int:
        out.append(f(*x))
        return 0

    min((a,), key=key)
    return out[0]


def _tramp_calliter(f: Any, a: tuple[Any, ...]) -> Any:
    return next(iter(lambda: f(*a), _tramp_calliter))


def _tramp_defdict(f: Any, a: tuple[Any, ...]) -> Any:
    return collections.defaultdict[int, Any](lambda: f(*a))[0]


def _tramp_methodcaller(f: Any, a: tuple[Any, ...]) -> Any:
    return operator.methodcaller("__call__", *a)(f)


def _tramp_accumulate(f: Any, a: tuple[Any, ...]) -> Any:
    items: tuple[Any, ...] = (None, a)
    it = itertools.accumulate(items, lambda _, x: f(*x))
    next(it)
    return next(it)


def _tramp_tracing(f: Any, a: tuple[Any, ...]) -> Any:
    return sys.call_tracing(f, a)


# (the trampoline, the C function callgrind names for it)
TRAMPOLINES = [
    (_tramp_map, "map_next"),
    (_tramp_starmap, "starmap_next"),
    (_tramp_reduce, "functools_reduce"),
    (_tramp_filter, "filter_next"),
    (_tramp_takewhile, "takewhile_next"),
    (_tramp_dropwhile, "dropwhile_next"),
    (_tramp_filterfalse, "filterfalse_next"),
    (_tramp_min, "min_max"),
    (_tramp_calliter, "calliter_iternext"),
    (_tramp_defdict, "defdict_missing"),
    (_tramp_methodcaller, "methodcaller_call"),
    (_tramp_accumulate, "accumulate_next"),
    (_tramp_tracing, "sys_call_tracing"),
]

# A statement's kind by its text's start (the first that matches; a tuple: any of them).
STATEMENTS: list[tuple[str | tuple[str, ...], str]] = [
    ("BEGIN", "BEGIN"),
    ("COMMIT", "COMMIT"),
    # (its head column a CASE since session 62)
    (("SELECT k.status", "SELECT CASE WHEN k.status"), "key + account + facts SELECT"),
    ("INSERT INTO nonces", "nonce INSERT"),
    ("INSERT INTO idempotency", "idempotency INSERT"),
    ("INSERT INTO messages", "message INSERT (executemany)"),
    ("INSERT INTO segments", "segment INSERT (executemany)"),
    ("INSERT INTO ledger", "ledger INSERT"),
    ("INSERT INTO daily_counts", "daily count upsert (held)"),
    ("INSERT INTO pockets", "pocket upsert (held)"),
    ("", "other statements"),
]
# Python steps inside the lock: (module, attribute, label); the module's attribute is replaced.
STEPS = [
    ("bridge.domain.admission", "decide", "admission.decide (Python)"),
    ("bridge.store.sqlite_rules", "one_facts_of", "one_facts_of (Python)"),
]


def _stepped(tramp: Any, real: Any, *a: Any, **kw: Any) -> Any:
    return tramp(functools.partial(real, **kw) if kw else real, a)


def _by_statement(store: Any) -> None:
    """Wraps the runner's connection and the STEPS so that each goes through a trampoline of
    its own; the labels and C names go to the environment's BENCH_STATEMENTS_OUT file."""
    import importlib

    tramps = iter(TRAMPOLINES)
    names: list[tuple[str, str]] = []
    by_prefix: list[tuple[str | tuple[str, ...], Any]] = []
    for prefix, label in STATEMENTS:
        tramp, cname = next(tramps)
        by_prefix.append((prefix, tramp))
        names.append((label, cname))
    for module, attr, label in STEPS:
        tramp, cname = next(tramps)
        mod = importlib.import_module(module)
        real = getattr(mod, attr)
        setattr(mod, attr, functools.partial(_stepped, tramp, real))
        names.append((label, cname))
    kinds: dict[str, Any] = {}

    def kind(sql: str) -> Any:
        t = kinds.get(sql)
        if t is None:
            t = kinds[sql] = next(t for p, t in by_prefix if sql.startswith(p))
        return t

    class Cur:
        def __init__(self, cur: Any) -> None:
            self._c = cur

        # A cursor's execute returns the cursor (this wrapper), a connection's a new one.
        def execute(self, sql: str, args: Any = ()) -> Any:
            out = kind(sql)(self._c.execute, (sql, args))
            return self if out is self._c else out

        def executemany(self, sql: str, rows: Any) -> Any:
            out = kind(sql)(self._c.executemany, (sql, rows))
            return self if out is self._c else out

        def __getattr__(self, name: str) -> Any:
            return getattr(self._c, name)

        def __iter__(self) -> Any:
            return iter(self._c)

    class Conn(Cur):
        def cursor(self) -> Cur:
            return Cur(self._c.cursor())

    runner = store._runner
    runner._conn = Conn(runner._conn)
    Path(os.environ["BENCH_STATEMENTS_OUT"]).write_text(json.dumps(names))


def _statements_table(profile: str, names_file: str, requests: int, total: int) -> None:
    """callgrind_annotate's inclusive counts of the trampolines, per request."""
    names = json.loads(Path(names_file).read_text())
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=yes", "--threshold=100", profile],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    incl: dict[str, int] = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+(\S+)", line)
        if m:  # "N (p%)  file:function['depth] [object]": the largest line of each function
            fn = m.group(2).rsplit(":", 1)[-1].split("'")[0]
            n = int(m.group(1).replace(",", ""))
            incl[fn] = max(n, incl.get(fn, 0))
    print(f"{'in the write lock, per request':40} {'instructions':>12} {'share':>7}")
    for label, cname in names:
        n = incl.get(cname, 0)
        print(f"{label:40} {n / requests:12,.0f} {n / total:7.1%}")
    print(f"{'total (this mode, wrapped)':40} {total / requests:12,.0f}")


def _callgrind(on: bool) -> None:
    subprocess.run(["callgrind_control", "-i", "on" if on else "off", str(os.getpid())],
                   check=True, capture_output=True)  # fmt: skip


def _report(ctx: Any, cpu: float, n: int, stub: bool, warm: int = 0) -> None:
    """The CPU per request and what the timed requests stored (`warm`: sends of an uncounted
    first round, stored before them; `--kind ucs3` writes three segment rows a message)."""
    with closing(sqlite3.connect(ctx.config.store.path)) as db:
        stored = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        rows = db.execute("SELECT count(*) FROM segments").fetchone()[0]
    if warm and stored:
        rows -= rows // stored * warm
        stored -= warm
    print(
        f"{cpu / n * 1e6:.1f} µs of CPU per request ({'stub' if stub else 'store'}, {n}; "
        f"{stored} messages stored, {rows} segment rows)"
    )
    _cache_memory(ctx)


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _cache_memory(ctx: Any) -> None:
    """The process's RSS and how many entries its per-account caches hold (`--accounts`; their
    bytes an entry are in the README's note 31: the RSS given back by emptying them is less,
    malloc keeping most of what the small objects freed)."""
    from bridge.api import signing
    from bridge.store import account_rows

    held = {
        "Accounts by version": len(account_rows._BY_VERSION),
        "by row": len(account_rows._BUILT),
        "keys": len(ctx.auth._cache),
        "validation copies": len(ctx.auth._accounts),
        "keyed HMACs": signing._keyed.cache_info().currsize,
        "Authorization heads": signing._usual_head.cache_info().currsize,
    }
    print(f"RSS {_rss_kb() / 1024:.1f} MB; held: " + ", ".join(f"{k} {v}" for k, v in held.items()))


def _pin_wall_clock_work(ctx: Any) -> None:
    """What the daemon does per second of wall time, not per request, kept out of the count
    (session 56): under callgrind a request takes ~40x its time, so the authenticator's
    one-second account cache was read again every ~40 requests, and each connection's write
    watch (`http_errors._Handler._check_writes`, every 5 s) fired ~100x as often per request as
    at full speed: ~9 k instructions a request that moved with the machine's load (a run beside
    two other valgrinds counted ~15 k more). The cached accounts are kept for the run (taken
    after a first, uncounted round has read them) and the write watch waits an hour."""
    auth = ctx.auth
    for account_id, (_, account) in list(auth._accounts.items()):
        auth._accounts[account_id] = (float("inf"), account)


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


async def _run_wire(
    ctx: Any, store: Any, every: list[Any], n: int, stub: bool, counting: bool
) -> None:
    """--wire: the requests as bytes into the daemon's runner's connections (see the doc)."""
    from bridge.api import http_errors
    from bridge.api.app import make_app, render_unparsed
    from bridge.api.http_errors import AppRunner

    if stub:
        _stub_accept(store)
    http_errors._check_every = lambda limit_s: 3600.0  # see _pin_wall_clock_work
    app = make_app(ctx)
    runner = AppRunner(  # bridge/app.py's _listen, without the connection cap
        app, render_unparsed, ctx.metrics, access_log=None, shutdown_timeout=2.0,
        keepalive_timeout=ctx.config.server.idle_timeout_s, auto_decompress=False,
    )  # fmt: skip
    await runner.setup()
    assert runner.server is not None
    loop = asyncio.get_running_loop()

    def build(first: int, end: int) -> list[bytes]:
        """Requests first..end-1, signed now (signed in time: see _warm_up)."""
        signed_at = datetime.now(UTC)
        out = []
        for i in range(first, end):
            body, headers = _signed(every, i, signed_at)
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            out.append(f"POST /v1/messages HTTP/1.1\r\n{head}\r\n".encode() + body)
        return out

    # At least two uncounted rounds (h1; two since session 64): the caches filled, then pinned
    # (_pin_wall_clock_work). The first round's accepts run before the account's row version is
    # held (`account_at_version`), so the second's key statements are of another pattern, whose
    # plan (`sqlite._key_plan`: ~0.7 M instructions of regular expressions over its text) and
    # prepared statements were made in the counted loop with one round: ~2.8 k a request of 500.
    warm = max(_warm_up(len(every)), 2 * CONCURRENCY)
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

    async def round_(wire: list[bytes]) -> None:
        await asyncio.gather(*(one(t, p, d) for (t, p), d in zip(conns, wire, strict=True)))

    for k in range(0, warm, CONCURRENCY):
        await round_(build(k, k + CONCURRENCY))
    wire = build(warm, warm + n)
    _pin_wall_clock_work(ctx)
    gc.collect()
    if counting:
        _callgrind(True)
    t0 = time.process_time()
    for k in range(0, n, CONCURRENCY):
        await round_(wire[k : k + CONCURRENCY])
    cpu = time.process_time() - t0
    if counting:
        _callgrind(False)
    for _, proto in conns:
        proto.connection_lost(None)
    await runner.cleanup()
    await store.close()
    _report(ctx, cpu, n, stub, warm=warm)


async def _run(ctx: Any, store: Any, every: list[Any], n: int, stub: bool, counting: bool) -> None:
    from aiohttp import web

    from bridge.api.app import make_app

    if stub:
        _stub_accept(store)
    app = make_app(ctx)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    loop = asyncio.get_running_loop()

    def build(first: int, end: int) -> list[Any]:
        """Requests first..end-1, signed now (signed in time: see _warm_up)."""
        signed_at = datetime.now(UTC)
        return mocked_sends(app, loop, (_signed(every, i, signed_at) for i in range(first, end)))

    warm = _warm_up(len(every))

    async def one(request: Any) -> None:
        resp = await app._handle(request)
        assert resp.status == 202, (resp.status, getattr(resp, "body", None))

    for k in range(0, warm, CONCURRENCY):
        await asyncio.gather(*(one(r) for r in build(k, k + CONCURRENCY)))
    requests = build(warm, warm + n)
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
    _report(ctx, cpu, n, stub, warm=warm)


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
    if args.accounts != 1:
        cmd += ["--accounts", str(args.accounts)]
    if args.concurrency != DEFAULT_CONCURRENCY:
        cmd += ["--concurrency", str(args.concurrency)]
    if args.in_lock:
        cmd.append("--in-lock")
        # valgrind's own options from its environment: children.callgrind builds the command
        os.environ["VALGRIND_OPTS"] = f"--toggle-collect={IN_LOCK_FN}"
    if args.statements:
        os.environ["BENCH_STATEMENTS_OUT"] = names_file = tempfile.mktemp(prefix="statements.")
    stdout, total = CHILDREN.callgrind(cmd, out, keep=bool(args.out) or args.statements)
    per = total / args.requests
    print(stdout.strip())
    print(f"{per:,.0f} instructions per request ({'stub' if args.stub else 'store'}"
          f"{', wire' if args.wire else ''}{', in the write lock' if args.in_lock else ''}"
          f"{f', {args.accounts} accounts' if args.accounts != 1 else ''}, "
          f"{args.requests}; profile in {out})")  # fmt: skip
    if args.statements:
        _statements_table(out, names_file, args.requests, total)


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
    ap.add_argument(
        "--statements",
        action="store_true",
        help="--callgrind --in-lock: the lock's instructions by statement and step (a table)",
    )
    ap.add_argument(
        "--concurrency",
        type=int,
        default=DEFAULT_CONCURRENCY,
        help="requests sent at once (the largest write batch an accept is in; session 63)",
    )
    ap.add_argument(
        "--accounts",
        type=int,
        default=1,
        help="round-robin over this many accounts, each sending once before the count",
    )
    args = ap.parse_args()
    if args.concurrency < 1:
        ap.error("--concurrency must be at least 1")
    if args.accounts < 1:
        ap.error("--accounts must be at least 1")
    if args.statements and not (args.callgrind and args.in_lock):
        ap.error("--statements needs --callgrind --in-lock")
    if args.in_lock and args.stub:
        ap.error("--in-lock counts the store's batches: not with --stub")
    CHILDREN.on_signals()
    global TEXT, CONCURRENCY
    TEXT = TEXTS[args.kind]
    CONCURRENCY = args.concurrency
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
            args.accounts,
        ),
        uvloop.new_event_loop,
    )


if __name__ == "__main__":
    main()
