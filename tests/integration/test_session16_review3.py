"""Session 16, third review: the PostgreSQL server goes away and comes back under load.

A real daemon (in-process, built-in simulator) on a throw-away PostgreSQL cluster of this module's
own (the session's shared cluster must not be stopped under other tests). The server is stopped
with `pg_ctl stop -m fast` (a restart for a minor upgrade) or `-m immediate` (a crash; a failover
looks the same to the daemon) while signed sends arrive through the real HTTP API, then started
again. The daemon is never restarted.

What must hold, and holds:
- while the server is down: sends 503 STORE_UNAVAILABLE with Retry-After 5 (answered in
  milliseconds); GET /v1/messages/{id} 503 too; /readyz 503, /healthz 200; no traceback per
  request;
- once it is back: sends 202 again at once (the first request, idle pool or busy, is a 202),
  /readyz ready and the bind up again ~7.2 s later (the coordinator's reconnect back-off plus its
  6 s settle, README "Bind ownership");
- every send answered 202, and every refused one retried with its Idempotency-Key, ends delivered
  exactly once at the simulator with its receipt applied, and is charged exactly once;
- a receipt the SMSC delivers while the store is down is answered with an error (never
  ESME_ROK), so the SMSC redelivers it, and it is applied after the recovery.

Defects (xfail strict, each test asserting the correct behaviour):
- an outage longer than the dispatcher's ~8.75 s of submit-result retries drops the results of
  the messages on the wire at the stop: they stay claimed with no SMSC id (their receipts match
  nothing) until the 5-minute lease runs out, and are then sent again;
- a crash of the server (-m immediate) loses submit results it had acknowledged (they commit with
  synchronous_commit off): same outcome, at every crash that follows such a commit closely
  (fixed in session 20: submit results commit durably);
- a pooled connection that read the server's FATAL (fast shutdown) while idle, before its close,
  fails its next query with asyncpg's InternalClientError: a send answers 500, and the
  coordinator's watcher task dies (no reconnect ever, its bind kept without the slot's lock);
- every refused request logs its own ERROR line (`store unavailable`, bridge.api), hundreds a
  second under load, where the pipeline's store-down errors are throttled to one line a while.

The load test tolerates the last-but-one's 500s only as far as they are that defect (checked by
its signature); its own test pins it deterministically.

Measured times go to TIMES and are printed at the end of the module (run with `-s`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml

from bridge.app import Daemon
from bridge.client import BridgeClient
from bridge.config import load_config
from bridge.store.postgres_pipeline import NS_BIND
from tests.e2e.harness import client_for, config_dict, create_account, free_port, wait_until
from tests.pg_cluster import (
    Cluster,
    ClusterUnavailable,
    ci,
    create_database,
    new_database_name,
    settled,
    start_cluster,
)

pytestmark = [pytest.mark.postgres]

TIMES: dict[str, float] = {}  # measured, printed at the end of the module
SLOW_ANSWER_S = 3.0  # no answer, refusal or not, may take longer while the server is down
OUTAGE_S = 2.0
FINAL = ("delivered", "failed", "expired", "unknown")
# dispatcher._flush_results sleeps 0.05 + 0.2 + 0.5 + 1 + 2 + 5 s between its attempts.
RESULT_RETRIES_S = 8.75


# -- the cluster, stopped and started under the daemon --------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _report() -> Iterator[None]:
    yield
    for k, v in TIMES.items():
        print(f"  {k}: {v:.3f}")


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    try:
        c = start_cluster()
    except ClusterUnavailable as exc:
        if ci():
            pytest.fail(f"PostgreSQL is required under SMPP_BRIDGE_CI: {exc}", pytrace=False)
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    if c.datadir is None:
        pytest.skip("an external server (SMPP_BRIDGE_TEST_PG_DSN) is not ours to stop")
    try:
        yield c
    finally:
        c.stop()  # -m immediate (a no-op when down), and its directory removed


def _pg_ctl(c: Cluster, *args: str) -> None:
    assert c.bindir is not None and c.datadir is not None
    cmd = [str(c.bindir / "pg_ctl"), "-D", str(c.datadir), *args]
    if c._owner is not None:  # pg_ctl refuses to run as root (tests/pg_cluster.py)
        cmd = ["runuser", "-u", c._owner, "--", *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr or proc.stdout


def _running(c: Cluster) -> bool:
    assert c.datadir is not None
    return (c.datadir / "postmaster.pid").exists()


async def pg_stop(c: Cluster, mode: str) -> None:
    """Off the event loop: the daemon runs in this process and serves meanwhile."""
    await asyncio.to_thread(_pg_ctl, c, "stop", "-w", "-t", "30", "-m", mode)


async def pg_start(c: Cluster) -> None:
    assert c.datadir is not None
    log = str(c.datadir.parent / "server.log")
    await asyncio.to_thread(_pg_ctl, c, "-l", log, "-w", "-t", "60", "start")


def pg_signal(c: Cluster, sig: signal.Signals) -> None:
    """What `pg_ctl stop` sends the postmaster (SIGINT fast, SIGQUIT immediate), without
    blocking: for a stop at an exact point of the daemon's work."""
    assert c.datadir is not None
    os.kill(int((c.datadir / "postmaster.pid").read_text().split()[0]), sig)


@pytest.fixture
async def dsn(cluster: Cluster) -> Any:
    if not _running(cluster):  # a test before this one failed with the server down
        await pg_start(cluster)
    await settled(cluster.admin_dsn)  # the test before may have crashed it just now
    yield await create_database(cluster, new_database_name("outage"))
    if not _running(cluster):
        await pg_start(cluster)


# -- the daemon -----------------------------------------------------------------------------------


@pytest.fixture
async def make_daemon(tmp_path: Path, dsn: str) -> Any:
    started: list[Daemon] = []

    async def make(via: str | None = None, **sim: Any) -> Daemon:
        path = tmp_path / "bridge.yaml"
        data = config_dict(
            tmp_path,
            store={"engine": "postgres", "dsn": via or dsn},
            sim={"receipt_delay_ms": 10, **sim},
        )
        path.write_text(yaml.safe_dump(data))
        d = Daemon(load_config(path, env={}))
        await d.start()
        started.append(d)
        await wait_until(lambda: d.connectors["sim"].is_up, 15)
        # A carrier offers a refused receipt again for hours; the simulator's default gives up
        # after 4 tries a second apart, which an outage plus the rebind outlasts.
        d.sim.receipt_max_attempts = 100
        d.sim.receipt_retry_delay_ms = 300
        return d

    yield make
    for d in reversed(started):
        await d.stop()


class ReceiptSpy:
    """Every deliver_sm_resp the simulator gets for a receipt: (time.monotonic(), status)."""

    def __init__(self, sim: Any) -> None:
        self.answers: list[tuple[float, int]] = []
        original = sim._on_deliver_resp

        def spy(sess: Any, seq: int, status: int, *rest: Any) -> None:
            job = sess.outstanding.get(seq)
            if job is not None and job.kind == "receipt":
                self.answers.append((time.monotonic(), status))
            original(sess, seq, status, *rest)

        sim._on_deliver_resp = spy

    def between(self, t0: float, t1: float) -> Counter[str]:
        return Counter("ok" if s == 0 else "error" for t, s in self.answers if t0 <= t <= t1)


class BindWatch:
    """When the simulator bind went down and came back (sampled every 20 ms)."""

    def __init__(self, d: Daemon) -> None:
        self.d = d
        self.changes: list[tuple[float, bool]] = []
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        last = None
        while True:
            up = bool(self.d.connectors["sim"].is_up)
            if up != last:
                self.changes.append((time.monotonic(), up))
                last = up
            await asyncio.sleep(0.02)

    def first(self, up: bool, after: float) -> float | None:
        return next((t for t, u in self.changes if u is up and t >= after), None)

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


class LingerProxy:
    """TCP in front of PostgreSQL that passes every byte at once and, after hold(), the
    server's closes `linger_s` late. A backend ended by a fast shutdown writes its FATAL
    message, then closes; asyncpg reads the two as two events, and in between an idle
    connection has read the FATAL into a state in which its next query fails with
    InternalClientError. Any proxy, or simply the event loop reading them in separate
    iterations, puts time between them; this makes that window seconds long, not a race."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.linger_s = 0.0  # until hold(): the daemon's own closes pass at once
        self._released = asyncio.Event()
        self.listen_port = free_port()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.listen_port)

    def hold(self, linger_s: float) -> None:
        """From now on, pass the server's closes `linger_s` late."""
        self.linger_s = linger_s
        self._released.clear()

    def release(self) -> None:
        """Pass the closes held so far, and later ones at once."""
        self.linger_s = 0.0
        self._released.set()

    def _accept(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(self._serve(cr, cw))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self._writers.append(cw)
        try:
            sr, sw = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            cw.close()
            return
        self._writers.append(sw)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, held: bool) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            if held and self.linger_s:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._released.wait(), self.linger_s)
            w.close()

        await asyncio.gather(pump(cr, sw, False), pump(sr, cw, True))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@pytest.fixture
async def lingering(cluster: Cluster, dsn: str) -> Any:
    """(a DSN to the test's database through a LingerProxy, the proxy). Ask for it before
    make_daemon: the proxy must outlive the daemon."""
    proxy = LingerProxy(cluster.port)
    await proxy.start()
    yield dsn.replace(f":{cluster.port}/", f":{proxy.listen_port}/"), proxy
    await proxy.stop()


# -- load -----------------------------------------------------------------------------------------


@dataclass
class Answer:
    n: int
    key: str
    started: float  # time.monotonic()
    took: float
    status: int  # 0: no HTTP answer at all (connection error, client time-out)
    code: str = ""
    retry_after: str | None = None
    mid: str | None = None

    @property
    def ended(self) -> float:
        return self.started + self.took


@dataclass
class Load:
    """Signed sends, each with its own Idempotency-Key and text, from `senders` loops."""

    port: int
    creds: dict[str, str]
    senders: int = 3
    pause_s: float = 0.02
    answers: list[Answer] = field(default_factory=list)
    _n: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        # The SDK signs; the requests go out raw so that each answer's headers are seen.
        self.client = BridgeClient(
            f"http://127.0.0.1:{self.port}", self.creds["app_key"], self.creds["app_secret"]
        )
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))

    async def close(self) -> None:
        await self.http.close()
        await self.client.close()

    async def request(self, method: str, path: str, body: bytes, key: str | None) -> Answer:
        base = {"Content-Type": "application/json"} if body else {}
        if key is not None:
            base["Idempotency-Key"] = key
        headers = self.client.signed_headers(method, path, "", body, base)
        t0 = time.monotonic()
        try:
            async with self.http.request(
                method,
                f"http://127.0.0.1:{self.port}{path}",
                data=body or None,
                headers=headers,
                skip_auto_headers=("Content-Type",),
            ) as resp:
                raw = await resp.read()
                status = resp.status
                retry_after = resp.headers.get("Retry-After")
        except (TimeoutError, aiohttp.ClientError):
            return Answer(-1, key or "", t0, time.monotonic() - t0, 0)
        took = time.monotonic() - t0
        data = json.loads(raw) if raw else {}
        if status < 400:
            mid = data["messages"][0]["id"] if "messages" in data else data.get("id")
            return Answer(-1, key or "", t0, took, status, "OK", None, mid)
        code = data.get("error", {}).get("code", "?")
        return Answer(-1, key or "", t0, took, status, code, retry_after)

    async def send(self, n: int, key: str, **extra: Any) -> Answer:
        body = {"to": f"+86138{n:08d}", "text": f"outage test {n}", **extra}
        a = await self.request("POST", "/v1/messages", json.dumps(body).encode(), key)
        a.n = n
        return a

    async def _loop(self) -> None:
        while not self._stop.is_set():
            self._n += 1
            n = self._n
            self.answers.append(await self.send(n, f"k{n}-{uuid.uuid4().hex[:8]}"))
            await asyncio.sleep(self.pause_s)

    async def run(self) -> None:
        await asyncio.gather(*(self._loop() for _ in range(self.senders)))

    def stop(self) -> None:
        self._stop.set()

    def accepted(self) -> list[Answer]:
        return [a for a in self.answers if a.status == 202]

    def since(self, t: float) -> list[Answer]:
        return [a for a in self.answers if a.started >= t]


async def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s,
        s.get(f"http://127.0.0.1:{port}{path}") as r,
    ):
        return r.status, await r.json()


async def _seconds_until(pred: Callable[[], Any], timeout: float, interval: float = 0.02) -> float:
    t0 = time.monotonic()
    await wait_until(pred, timeout, interval)
    return time.monotonic() - t0


# -- checks after the recovery --------------------------------------------------------------------


async def _settle(
    d: Daemon, load: Load, creds: dict[str, str], restarted_wall: float
) -> tuple[dict[str, str], set[str]]:
    """Retry every refused send with its own key (what a client does after a 503), then wait
    until every message ended; each must be delivered.

    Returns (Idempotency-Key -> message id, the texts of messages whose submit result the store
    lost). Such a message reached the SMSC before the restart (`restarted_wall`, time.time()),
    yet the store does not name that copy's SMSC id; with the dispatcher's retries long over
    (this runs after the rebind, > 9 s after the stop), nothing will record it. That is
    test_a_crash_loses_no_acknowledged_submit_result's defect; the caller decides whether any
    are allowed."""
    by_key: dict[str, str] = {a.key: a.mid for a in load.accepted() if a.mid}
    for a in [a for a in load.answers if a.status != 202]:
        again = await load.send(a.n, a.key)
        assert again.status == 202 and again.mid, ("a refused send, retried", again)
        by_key[a.key] = again.mid
    first_copy: dict[str, tuple[str, float]] = {}
    for m in d.sim.messages:
        first_copy.setdefault(m.text, (m.message_ids[0], m.received_at))
    lost: set[str] = set()
    async with client_for(d.http_port, creds) as c:
        pending = set(by_key.values())

        async def all_final() -> bool:
            for mid in sorted(pending):
                m = await c.message(mid)
                copy = first_copy.get(m["text"])
                if copy is not None and copy[1] < restarted_wall:
                    if m["parts"][0]["smsc_message_id"] != copy[0]:
                        lost.add(m["text"])
                        pending.discard(mid)
                        continue
                if m["status"] not in FINAL:
                    return False
                assert m["status"] == "delivered", m
                pending.discard(mid)
            return True

        await wait_until(all_final, 30, 0.2)
    return by_key, lost


def _exactly_once_at_the_smsc(
    d: Daemon, load: Load, by_key: dict[str, str], lost: set[str]
) -> None:
    n_of_key = {a.key: a.n for a in load.answers}
    expected = {f"outage test {n_of_key[k]}" for k in by_key}
    texts = Counter(m.text for m in d.sim.messages)
    missing = sorted(t for t in expected if texts[t] == 0)
    twice = {t: c for t, c in texts.items() if c > 1 and t not in lost}
    assert not missing, f"{len(missing)} never reached the SMSC, e.g. {missing[:3]}"
    assert not twice, f"{len(twice)} sent more than once, e.g. {list(twice.items())[:3]}"
    assert set(texts) == expected


async def _charged_once(dsn: str, account: str, by_key: dict[str, str]) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT kind, ref FROM ledger WHERE account_id=$1 AND kind <> 'topup'", account
        )
        messages = await conn.fetchval("SELECT COUNT(*) FROM messages WHERE account_id=$1", account)
    finally:
        await conn.close()
    charges = Counter(r["ref"] for r in rows if r["kind"] == "charge")
    assert messages == len(by_key), "one message per Idempotency-Key"
    assert set(charges) == set(by_key.values()), "every message charged, nothing else"
    assert set(charges.values()) == {1}, {k: v for k, v in charges.items() if v != 1}
    assert [r for r in rows if r["kind"] != "charge"] == []  # no refunds: all delivered


# -- the tests ------------------------------------------------------------------------------------


def _fatal_race(record: logging.LogRecord) -> bool:
    """A 500 of the race pinned by test_a_send_when_the_server_ends_its_sessions_gets_503."""
    exc = record.exc_info[1] if record.exc_info else None
    return isinstance(exc, asyncpg.exceptions.InternalClientError) and "in progress" in str(exc)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_outage_under_load_refused_cleanly_then_recovered_without_restart(
    cluster: Cluster, make_daemon: Any, dsn: str, mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Sends arrive all along. The simulator holds some receipts back from just before the stop
    and offers them once the store is seen down (the first 503), while the bind is still up (it
    closes 0.1-0.5 s after the stop: the coordination connection is lost, see README "Bind
    ownership"). Receipts left to their own timing (100 ms, then 150 ms after each submit)
    missed that short window now and then on a slower machine."""
    d = await make_daemon(receipt_delay_ms=10)
    creds = await create_account(d)
    spy = ReceiptSpy(d.sim)
    binds = BindWatch(d)
    load = Load(d.http_port, creds)
    held: list[Any] = []
    holding = [False]
    released: list[float] = []
    schedule = d.sim._schedule

    def hold_some(job: Any, due: float) -> None:
        if holding[0] and job.kind == "receipt" and len(held) < 20:
            held.append(job)
            return
        schedule(job, due)

    d.sim._schedule = hold_some
    runner = asyncio.create_task(load.run())
    try:
        await wait_until(lambda: len(load.accepted()) >= 30, 10)
        holding[0] = True
        await wait_until(lambda: len(held) >= 5, 10, 0.01)
        known = load.accepted()[0].mid
        t_stop = time.monotonic()

        async def release_once_down() -> None:
            await wait_until(lambda: any(a.status == 503 for a in load.since(t_stop)), 5, 0.005)
            holding[0] = False
            now = asyncio.get_running_loop().time()
            for job in held:
                schedule(job, now)
            released.append(time.monotonic())

        releaser = asyncio.create_task(release_once_down())
        await pg_stop(cluster, mode)
        t_down = time.monotonic()
        await releaser
        first_503 = min(a.ended for a in load.since(t_stop) if a.status == 503)
        ready = await _get(d.http_port, "/readyz")
        health = await _get(d.http_port, "/healthz")
        view = await load.request("GET", f"/v1/messages/{known}", b"", None)
        await asyncio.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t_down)))
        t_start = time.monotonic()
        restarted_wall = time.time()
        await pg_start(cluster)
        t_up = time.monotonic()
        first_202 = await _seconds_until(lambda: any(a.status == 202 for a in load.since(t_up)), 10)
        await asyncio.sleep(0.5)  # sends go on a while after the recovery
    finally:
        load.stop()
        await runner

    async def is_ready() -> bool:
        return (await _get(d.http_port, "/readyz"))[0] == 200

    try:
        ready_after = await _seconds_until(is_ready, 30, 0.1)
        unbound = binds.first(False, t_stop)
        rebound = binds.first(True, t_up)
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        raced = [r for r in errors if r.name == "bridge.api" and _fatal_race(r)]
        during = [a for a in load.answers if a.started >= t_down and a.ended <= t_start]
        refused = [a for a in load.answers if a.status == 503]
        receipts = spy.between(first_503, t_start)  # the store was down by then
        TIMES[f"{mode}: pg_ctl stop"] = t_down - t_stop
        TIMES[f"{mode}: first 503, from the stop's start"] = first_503 - t_stop
        TIMES[f"{mode}: bind down, from the stop's start"] = (unbound or t_stop) - t_stop
        TIMES[f"{mode}: pg_ctl start"] = t_up - t_start
        TIMES[f"{mode}: first 202, from the server up"] = first_202
        TIMES[f"{mode}: bind up, from the server up"] = (rebound or t_up) - t_up
        TIMES[f"{mode}: /readyz ready, from the server up (+ 0.5 s)"] = ready_after + 0.5
        TIMES[f"{mode}: slowest answer"] = max(a.took for a in load.answers)
        TIMES[f"{mode}: sends answered 202"] = len(load.accepted())
        TIMES[f"{mode}: sends answered 503"] = len(refused)
        TIMES[f"{mode}: sends answered 500 (the FATAL race)"] = len(raced)
        TIMES[f"{mode}: receipts refused while down"] = receipts["error"]
        TIMES[f"{mode}: ERROR lines"] = len(errors)
        TIMES[f"{mode}: tracebacks"] = sum(1 for r in errors if r.exc_info)

        assert health[0] == 200
        assert ready[0] == 503 and ready[1]["status"] == "not ready", ready
        assert any("store" in p for p in ready[1]["problems"]), ready
        assert (view.status, view.code, view.retry_after) == (503, "STORE_UNAVAILABLE", "5")
        assert during and {a.status for a in during} == {503}, Counter(a.status for a in during)
        # Never a 500, but for the race pinned (xfail) by its own test below: only at the
        # instant a fast stop ends the sessions, only with asyncpg's InternalClientError.
        assert len([a for a in load.answers if a.status == 500]) == len(raced)
        assert not [a for a in load.answers if a.status not in (202, 503, 500)], Counter(
            (a.status, a.code) for a in load.answers
        )
        assert {(a.code, a.retry_after) for a in refused} == {("STORE_UNAVAILABLE", "5")}
        assert max(a.took for a in load.answers) < SLOW_ANSWER_S
        assert first_503 - t_stop < 1.0
        assert first_202 < 1.0
        # No traceback per refused request.
        assert not [r for r in errors if r.name == "bridge.api" and r.exc_info and r not in raced]
        # The daemon never acknowledged a receipt it could not have stored; it refused them,
        # and the simulator offered them again once bound.
        assert receipts["ok"] == 0, receipts
        # The held receipts are offered at the first 503 over a bind that closes 0.1-0.5 s
        # after the stop; on a busy machine the first 503 can come as late as the bind's end,
        # and then nothing can be offered while down. Those receipts come again after the
        # rebind (the settle below finds every message delivered). Anything else means the
        # test missed the scenario.
        bind_ended_with_release = unbound is not None and unbound - released[0] < 0.3
        TIMES[f"{mode}: bind down, from the held receipts' release"] = (
            (unbound - released[0]) if unbound is not None else float("nan")
        )
        assert receipts["error"] > 0 or bind_ended_with_release, (
            "no receipt came during the outage, with the bind up: the test missed it"
        )
        assert d.connectors["sim"].is_up  # still up, or up again

        by_key, lost = await _settle(d, load, creds, restarted_wall)
        TIMES[f"{mode}: sent messages whose submit result the store lost"] = len(lost)
        # A fast shutdown flushes the WAL; a crash loses no acknowledged submit result either
        # (they commit durably), and the unacknowledged ones wait in memory for the server.
        assert lost == set(), sorted(lost)[:5]
        _exactly_once_at_the_smsc(d, load, by_key, lost)
        assert d.sim.counters["receipts_given_up"] == 0
        await _charged_once(dsn, creds["account"], by_key)
    finally:
        await binds.close()
        await load.close()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_the_first_request_after_a_restart_finds_no_dead_pooled_connection(
    cluster: Cluster, make_daemon: Any, mode: str
) -> None:
    """The pool's connections sit idle through the restart (nothing is sent meanwhile); the
    first requests afterwards must not be handed a dead one."""
    d = await make_daemon()
    creds = await create_account(d)
    load = Load(d.http_port, creds)
    try:
        warm = await asyncio.gather(*(load.send(n, f"warm-{n}") for n in range(8)))
        assert {a.status for a in warm} == {202}
        await asyncio.sleep(0.3)
        await pg_stop(cluster, mode)
        await pg_start(cluster)
        t_up = time.monotonic()
        first = await load.send(100, "first-after")
        view = await load.request("GET", f"/v1/messages/{warm[0].mid}", b"", None)
        rest = await asyncio.gather(*(load.send(n, f"after-{n}") for n in range(101, 121)))
        TIMES[f"{mode}, idle pool: first send after the restart"] = first.took
        TIMES[f"{mode}, idle pool: 22 requests answered within"] = time.monotonic() - t_up
        assert first.status == 202, first  # at worst a 503 would do; it is better than that
        assert view.status == 200, view
        assert {a.status for a in rest} == {202}, Counter((a.status, a.code) for a in rest)
    finally:
        await load.close()


async def test_an_outage_longer_than_the_result_retries_keeps_the_submit_results(
    cluster: Cluster, make_daemon: Any, dsn: str
) -> None:
    """A failover commonly takes 10-30 s. The server is stopped (fast) exactly when the SMSC has
    accepted the 100th part: the parts of that claim are on the wire, their results not yet
    committed. Once the server is back they must be recorded (the SMSC took them: its ids are
    what the receipts name), not left to a resend."""
    d = await make_daemon()
    creds = await create_account(d)
    load = Load(d.http_port, creds)
    original = d.sim._on_submit

    def on_submit(*args: Any) -> None:
        original(*args)
        if d.sim.counters["submit_ok"] == 100:
            pg_signal(cluster, signal.SIGINT)

    d.sim._on_submit = on_submit
    try:
        # Accepted first, all due at once a moment later: the dispatcher then bursts alone.
        # 8 s: the 200 accepts took over 1.5 s once on a busy CI machine, and over 4 s once
        # beside three other test runs (session 48), and the stop at the 100th submit then
        # refused the last of them.
        due = (datetime.now(UTC) + timedelta(seconds=8)).isoformat()
        sends = await asyncio.gather(
            *(load.send(n, f"burst-{n}", scheduled_at=due) for n in range(200))
        )
        assert {a.status for a in sends} == {202}
        await wait_until(lambda: not _running(cluster), 15, 0.01)
        t_down = time.monotonic()
        took = {m.text for m in d.sim.messages}
        await asyncio.sleep(RESULT_RETRIES_S + 0.75 - (time.monotonic() - t_down))
        await pg_start(cluster)
        conn = await asyncpg.connect(dsn)
        try:

            async def unrecorded() -> list[str]:
                rows = await conn.fetch(
                    "SELECT m.text FROM messages m JOIN segments s ON s.message_id = m.id "
                    "WHERE s.smsc_msg_id IS NULL"
                )
                return [r["text"] for r in rows if r["text"] in took]

            lost: list[str] = []

            async def recorded() -> bool:
                lost[:] = await unrecorded()
                return not lost

            try:
                await wait_until(recorded, 3.0, 0.25)
            except AssertionError:
                pass
            TIMES["long outage: parts the SMSC took, result never recorded"] = len(lost)
            assert len(took) >= 100
            assert lost == [], f"{len(lost)} of {len(took)} sent parts left without their SMSC id"
        finally:
            await conn.close()
    finally:
        await load.close()


async def test_the_log_does_not_grow_with_each_refused_request(
    cluster: Cluster, make_daemon: Any, caplog: pytest.LogCaptureFixture
) -> None:
    d = await make_daemon()
    creds = await create_account(d)
    load = Load(d.http_port, creds)
    try:
        await pg_stop(cluster, "fast")
        caplog.clear()
        t0 = time.monotonic()
        answers = []
        for batch in range(10):
            answers += await asyncio.gather(
                *(load.send(batch * 10 + n, f"down-{batch}-{n}") for n in range(10))
            )
        seconds = time.monotonic() - t0
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        by_logger = Counter(r.name for r in errors)
        TIMES["logs: ERROR lines for 100 refused sends"] = len(errors)
        TIMES["logs: ... of which from bridge.api"] = by_logger["bridge.api"]
        TIMES["logs: ... seconds the 100 sends took"] = seconds
        await pg_start(cluster)
        assert {a.status for a in answers} == {503}
        assert not [r for r in errors if r.exc_info and r.name == "bridge.api"]
        # Background loops (claims, heartbeat, webhooks) may report the outage; the requests
        # must not add a line each (one a while, as logs.Throttled does).
        assert by_logger["bridge.api"] <= 2, by_logger
        assert len(errors) < 50, by_logger
    finally:
        await load.close()


async def test_a_send_when_the_server_ends_its_sessions_gets_503_not_500(
    cluster: Cluster, lingering: Any, make_daemon: Any
) -> None:
    via, proxy = lingering
    d = await make_daemon(via=via)
    creds = await create_account(d)
    load = Load(d.http_port, creds)
    try:
        warm = await asyncio.gather(*(load.send(n, f"warm-{n}") for n in range(8)))
        assert {a.status for a in warm} == {202}  # several connections in the pool, idle now
        proxy.hold(3.0)
        await pg_stop(cluster, "fast")
        sends = await asyncio.gather(*(load.send(n, f"at-stop-{n}") for n in range(100, 106)))
        TIMES["FATAL read, close not yet: sends answered 500"] = sum(a.status == 500 for a in sends)
        assert [(a.status, a.code) for a in sends] == [(503, "STORE_UNAVAILABLE")] * 6
    finally:
        proxy.release()
        await pg_start(cluster)
        await load.close()


async def test_the_coordinator_survives_reading_the_servers_fatal_before_its_close(
    cluster: Cluster, lingering: Any, make_daemon: Any, dsn: str
) -> None:
    """The proxy holds the close 3 s, longer than the coordinator's 2 s poll: its ping runs on
    the connection that read the FATAL. (Without a proxy the ping has to fall between the two
    reads by chance: rare, but nothing then ever repairs it.)"""
    via, proxy = lingering
    d = await make_daemon(via=via)
    coord = d.coord
    assert coord is not None and coord.held() == [("sim", 0)]
    proxy.hold(3.0)
    await pg_stop(cluster, "fast")
    await asyncio.sleep(3.3)
    await pg_start(cluster)
    conn = await asyncpg.connect(dsn)
    samples: list[tuple[bool, int]] = []
    try:
        for _ in range(5):
            locks = await conn.fetchval(
                "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
                "AND classid = $1::bigint::oid AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database())",
                NS_BIND,
            )
            samples.append((bool(d.connectors["sim"].is_up), int(locks)))
            await asyncio.sleep(0.2)
    finally:
        proxy.release()
        await conn.close()
    watcher = coord._watcher
    TIMES["coordinator after the FATAL: watcher died"] = float(
        watcher is not None and watcher.done()
    )
    assert coord.losses >= 1, "the loss of the coordination connection went unnoticed"
    assert watcher is not None and not watcher.done(), watcher
    # Never bound without holding the slot in the database.
    assert not [s for s in samples if s[0] and s[1] == 0], samples


async def test_a_crash_loses_no_acknowledged_submit_result(
    cluster: Cluster, make_daemon: Any, dsn: str
) -> None:
    """The server crashes (SIGQUIT, what `pg_ctl stop -m immediate` sends) just after it
    acknowledged a commit of submit results. Nothing durable came after it: the messages were
    accepted earlier (scheduled, all due at once) and their receipts are not due yet.

    Until session 20 submit results committed with synchronous_commit off: all 60 messages the
    SMSC took stayed claimed with no SMSC id (their receipts unmatched) until the 5-minute
    lease, then were sent again (a strict xfail here)."""
    d = await make_daemon(receipt_delay_ms=3000)
    creds = await create_account(d)
    load = Load(d.http_port, creds)
    store: Any = d.store
    original = store.record_submits
    acknowledged: list[int] = []

    async def record_submits(results: Any, releases: Any, now: int, **kw: Any) -> int:
        out = await original(results, releases, now, **kw)
        if results and not acknowledged:
            acknowledged.append(len(results))
            pg_signal(cluster, signal.SIGQUIT)
        return out

    store.record_submits = record_submits
    try:
        due = (datetime.now(UTC) + timedelta(seconds=3)).isoformat()  # all accepted by then
        sends = await asyncio.gather(
            *(load.send(n, f"burst-{n}", scheduled_at=due) for n in range(60))
        )
        assert {a.status for a in sends} == {202}
        await wait_until(lambda: bool(acknowledged), 10, 0.01)
        await wait_until(lambda: not _running(cluster), 15, 0.01)
        took = {m.text: m.message_ids[0] for m in d.sim.messages}
        await pg_start(cluster)
        await asyncio.sleep(3.0)  # any result retried meanwhile is in
        conn = await asyncpg.connect(dsn)
        try:
            rows = await conn.fetch(
                "SELECT m.text, s.smsc_msg_id_raw FROM messages m "
                "JOIN segments s ON s.message_id = m.id"
            )
        finally:
            await conn.close()
        lost = [
            r["text"] for r in rows if r["text"] in took and r["smsc_msg_id_raw"] != took[r["text"]]
        ]
        TIMES["crash after an acknowledged result commit: results lost"] = len(lost)
        assert acknowledged and took
        assert lost == [], f"{len(lost)} of {len(took)} sent messages lost their submit result"
    finally:
        await load.close()


async def test_background_loops_report_an_outage_once_not_a_traceback_a_second(
    cluster: Cluster, make_daemon: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Session 17: the heartbeat, the sweeper, the housekeeping and the webhook claims each
    logged a traceback a round (every 1-5 s) while the server was down. The outage's lines are
    one per step (no traceback: the fault is the environment's) and one when it works again."""
    d = await make_daemon()
    await create_account(d)
    caplog.set_level(logging.INFO)
    # From the start of the stop: the heartbeat also writes as soon as a bind goes down (session
    # 25), which the outage makes happen while pg_ctl still waits for the server to exit.
    caplog.clear()
    await pg_stop(cluster, "fast")
    stopped = len(caplog.records)
    await asyncio.sleep(6)  # every loop (the sweeper's 5 s included) fails at least once
    outage = list(caplog.records)
    down = outage[stopped:]  # the 6 s after the stop
    await pg_start(cluster)
    await wait_until(
        lambda: any("heartbeat works again" in r.getMessage() for r in caplog.records), 15, 0.1
    )
    traced = [f"{r.name}: {r.getMessage()}" for r in outage if r.exc_info]
    assert not traced, traced

    def failures(records: list[logging.LogRecord]) -> Counter[str]:
        return Counter(
            r.getMessage().split(" failed")[0] for r in records if " failed" in r.getMessage()
        )

    TIMES["logs: background lines in a 6 s outage"] = len(down)
    whole = failures(outage)
    assert whole["heartbeat"] == 1 and whole["api housekeeping"] == 1, whole
    failed = failures(down)
    assert all(n <= 2 for n in failed.values()), failed
    assert len(down) < 40, [r.getMessage() for r in down]


async def test_a_result_lost_by_a_fast_crash_and_restart_is_written_again_before_a_claim(
    cluster: Cluster, dsn: str
) -> None:
    """Session 20: submit results commit without the flush and are held until a flush on the
    confirmer's own connection (the watch) covers them. A server that crashes and is back
    before the next flush (`restart_after_crash` reinitialises in well under a second) lost
    the result, and a flush on the new server would prove nothing: the watch's end says so,
    and the next claim writes the result again first. Without that the claim, lost too, let
    the message be claimed and sent again."""
    from bridge.store.postgres import PostgresStore
    from bridge.store.postgres_confirm import Confirmer
    from tests.integration.test_pg_confirm import sent_one
    from tests.integration.test_store_multi import LEASE, NOW, account

    admin = await asyncpg.connect(cluster.admin_dsn)
    try:  # the WAL writer leaves asynchronous commits in memory: the crash usually loses them
        await admin.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
        await admin.execute("SELECT pg_reload_conf()")
    finally:
        await admin.close()
    # The WAL writer takes the reload in its own time: 0.5 s was too short once in a busy CI
    # (session 21: the claim survived the crash, flushed on the old 200 ms delay).
    await asyncio.sleep(2.0)
    store = PostgresStore(dsn, min_size=1, max_size=4)
    await store.open()
    try:
        confirm: Confirmer = store._confirm
        await store.create_account(account())

        await sent_one(store, "m0")
        await wait_until(lambda: confirm.flushes == 1, 5, 0.01)  # the watch is up
        confirm._interval = 60.0
        await asyncio.sleep(0.2)
        # The crash loses the result only if its WAL was not flushed first. The WAL writer also
        # flushes when a commit completes a WAL page, and on a busy machine the delay may have
        # passed: then nothing was lost, the message must still not be claimed again, and the
        # scenario is tried again with the next message.
        for attempt in range(1, 6):
            mid = f"m{attempt}"
            await sent_one(store, mid)
            assert confirm.held == 1
            rewritten = confirm.rewritten
            await pg_stop(cluster, "immediate")
            await pg_start(cluster)
            probe = await asyncpg.connect(dsn)
            try:
                part = "SELECT state FROM segments WHERE message_id = $1"
                lost = await probe.fetchval(part, mid) == "queued"  # its result (and claim)
                work = await _claim_when_back(store, NOW, LEASE)
                assert work == [], work  # the message is not claimed and sent again
                assert confirm.held == 0
                if lost:
                    assert confirm.rewritten > rewritten
                row = await probe.fetchrow(
                    "SELECT s.state, s.smsc_msg_id, m.q_state FROM segments s "
                    "JOIN messages m ON m.id = s.message_id WHERE m.id = $1",
                    mid,
                )
                assert row["state"] == "sent" and row["smsc_msg_id"] == mid, tuple(row)
                assert row["q_state"] != "queued", tuple(row)
            finally:
                await probe.close()
            if lost:
                break
        else:
            pytest.fail("no crash in 5 lost the unflushed result: the case went untested")
    finally:
        await store.close()
        admin = await asyncpg.connect(cluster.admin_dsn)
        try:
            await admin.execute("ALTER SYSTEM RESET wal_writer_delay")
            await admin.execute("SELECT pg_reload_conf()")
        finally:
            await admin.close()


async def _claim_when_back(store: Any, now: Any, lease: Any) -> list[Any]:
    """A claim once the restarted server takes one: the pool's connections died with it."""
    deadline = time.monotonic() + 15
    while True:
        try:
            return await store.claim("inst-a", 10, now, lease)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
