"""Session 14's third adversarial review: the operator's manual (README "Running in production",
"Command line", "Configuration", Architecture point 7) against a real `smpp-bridge run` with
`server.workers: 2`, while traffic flows.

Everything is a real process on 127.0.0.1: the daemon (`python -m bridge.cli run --config F`),
its built-in simulator or a separate `python -m bridge.cli sim`, `smpp-bridge status`, the
README's backup one-liner; requests are signed with bridge.client.BridgeClient, each on a new
connection so both acceptors answer some.

Checked (passing tests):
- /metrics after 160 sends (a quarter of them 2-part), refusals (400 INVALID_NUMBER, 401), replays,
  10% throttles and a quarter of receipts UNDELIV: requests by code, messages and segments
  accepted, accept latency count, segments submitted by status, throttle events, receipts by
  state equal what the clients and the SMSC saw, summed over the owner and both acceptors; six
  scrapes (either acceptor answering) give the same values and no sample twice; queue depth and
  window in use back to 0, binds up = configured;
- SIGHUP under traffic: an SMSC's tps and window (status LIMIT and WINDOW, the window gauge), a
  new SMSC and route (bound, in /metrics and status; the acceptors encode for it at once: Latin-1
  for the new SMSC's `allow_latin1`), a logging change (logged as needing a restart), an invalid
  edit (refused, the path named in the log, no process reloaded, the acceptors not restarted, the
  old settings in force), then the SMSC and route removed (gone from /metrics and status, the
  prefix back on the first SMSC, UCS-2 again); every 202 delivered exactly once over both SMSCs;
- an account's rate changed through the admin API applies to the next requests in every acceptor
  (429 ACCOUNT_RATE_LIMIT at tps 1, none at tps 0);
- SIGKILL of an acceptor under traffic: restarted within a second, /healthz and /readyz answer
  200 from 0.3 s after the kill (at most two probes lost), every send answered (client retries
  with its Idempotency-Key) and delivered once;
- SIGTERM under load (3-part messages on a 40/s SMSC, a backlog), a second SIGTERM 0.3 s later:
  exit 0 within grace + unbind + 3 s, no 202 after the signal, and after a restart on the same
  store every 202 (every stored message) is delivered, each text reassembled once;
- `smpp-bridge status`: binds (up, 1/1 and NO, 0/1), the queue of a route whose SMSC is down (7
  parts in 5 messages, equal to /admin/queue and smpp_bridge_queue_depth), throughput while
  sending at a 30/s limit; a wrong token and an unreachable daemon give one line on stderr and
  exit 1;
- the README's backup one-liner run beside the live store under traffic, `PRAGMA
  integrity_check` ok, `db migrate` beside the running daemon, restore into a new path and
  start on it: the same credentials work, queued messages are there, what was accepted before
  the backup is delivered, status ready.

Found (1 fixed in the commit that added this file: a default SMSC that encodes otherwise is no
fallback for a route, bridge/smpp/router.py `encodings`; 2 fixed in the commit after: the
dispatcher's stop waits for the messages it cancelled before it drains their results):
1. A message for a route goes out through the DEFAULT route's SMSC while the route's own SMSCs
   are down, encoded for the route's SMSC: a Latin-1 text (data_coding 3) reached an SMSC
   configured without `allow_latin1`. README/config/bridge.example.yaml: "a destination takes
   the route with the longest matching prefix; its SMSCs are tried in order ... Unmatched
   destinations use default_route", and "a route's SMSCs must share split, packed_gsm,
   allow_latin1 and gsm_data_coding: a message is encoded once, for the first". At fault:
   bridge/smpp/router.py `Router._for` (a route's SMSCs + the default route's) against
   bridge/config.py `_check_route_encodings` (checks each route and the default route apart),
   and `config check` passes it. Repro: smscs sim (up) and lat (allow_latin1, down), routes
   [+86139 -> lat], default_route [sim]; send "Prix \u00e2 10" to +8613900000001: delivered by
   sim as latin1. Test: test_a_route_whose_smsc_is_down_does_not_send_through_the_default_route.
2. SIGTERM under load (workers 2, 3-part messages on a 40/s SMSC): when the grace runs out with
   messages half sent, the parts the SMSC accepted are recorded only after the store closed
   ("recording submit results failed; retrying ... StoreClosedError: store is closed", a
   traceback in the log), so the restart sends them again: the SMSC accepted 36-68 more parts
   than were stored (three runs out of three). At fault: bridge/pipeline/dispatcher.py
   `Dispatcher.stop` cancels the in-flight tasks still pending after the grace and drains
   `_results` without waiting for them; I believe they finish (their `except CancelledError`
   adds the accepted parts) only as the connectors stop, after that drain, and bridge/app.py
   `Daemon.stop` closes the store before the batcher flushes them. Repro: the test below.
   Test: test_sigterm_grace_running_out_mid_message_sends_no_part_twice.

Doubts (not asserted):
- a SIGHUP that arrives while the daemon is stopping is still applied: the owner reconnected an
  SMSC (a new bind) after SIGTERM ("reloaded configuration ... reconnected" after "shutting
  down"); no harm seen, but `Daemon.reload` can change `self.connectors` under `Daemon.stop`'s
  loop over it, and a connector started after that loop is never stopped.
- an SMSC removed by SIGHUP takes the receipts it still owes with it: a message it accepted just
  before the reload stays `sent` until `pipeline.receipt_timeout_hours` (seen once; the README
  says nothing either way).
- in workers mode the acceptors stop first and close the port within milliseconds, so during
  the owner's drain clients and /readyz get connection refused rather than 503 SHUTTING_DOWN
  (the README allows "connection errors or 503").
- `smpp-bridge sim --config F` ("the simulated SMSC on its own") refuses a file with only a
  `sim:` section: it wants a master key and an SMSC (or sim.enabled), which the simulator uses
  for nothing.
"""

from __future__ import annotations

import asyncio
import calendar
import contextlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from bridge.client import BridgeClient, BridgeError
from tests.e2e.harness import (
    ADMIN_TOKEN,
    MASTER_KEY,
    DaemonProcess,
    config_dict,
    deep_merge,
    free_port,
    handles_sighup,
    wait_until,
)
from tests.e2e.test_metrics_review import Scrape, _acceptor_pids, _cli_account, scrape

FINAL = ("delivered", "failed", "expired", "unknown")
LONG = "L" * 200  # two GSM-7 parts with UDH, one with message_payload


def _env() -> dict[str, str]:
    """The operator's shell: no leftover SMPP_BRIDGE_* or metrics directory from the test run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMPP_BRIDGE_")}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


# -- processes -----------------------------------------------------------------------------------


class SimProcess:
    """`smpp-bridge sim` on its own: it outlives daemon restarts, so it counts across them."""

    def __init__(self, tmp: Path, name: str = "sim", **knobs: Any) -> None:
        self.port = free_port()
        self.control = free_port()
        self.path = tmp / f"{name}.yaml"
        self.path.write_text(
            yaml.safe_dump(
                {
                    "security": {"master_key": MASTER_KEY},
                    "sim": {
                        "enabled": True,
                        "system_id": "bridge",
                        "password": "bridge",
                        "receipt_delay_ms": 10,
                        **knobs,
                    },
                }
            )
        )
        self.log = tmp / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    async def start(self) -> None:
        with open(self.log, "ab") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", "sim", "--config", str(self.path),
                 "--port", str(self.port), "--control-port", str(self.control)],
                stdout=log, stderr=subprocess.STDOUT, env=_env(),
            )  # fmt: skip

        async def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
            try:
                await self.stats()
            except (aiohttp.ClientError, OSError):
                return False
            return True

        await wait_until(up, 15, 0.1)

    async def _get(self, path: str) -> Any:
        async with (
            aiohttp.ClientSession() as s,
            s.get(f"http://127.0.0.1:{self.control}{path}") as r,
        ):
            return await r.json()

    async def stats(self) -> dict[str, Any]:
        return await self._get("/stats")

    async def texts(self) -> Counter[str]:
        got = await self._get("/messages?limit=10000")
        return Counter(m["text"] for m in got["messages"])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def sim_texts(control: int) -> Counter[str]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{control}/messages?limit=10000") as r,
    ):
        return Counter(m["text"] for m in (await r.json())["messages"])


async def sim_post(control: int, knobs: dict[str, Any]) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"http://127.0.0.1:{control}/config", json=knobs) as r,
    ):
        assert r.status == 200, await r.text()


async def sim_counters(control: int) -> dict[str, int]:
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{control}/stats") as r,
    ):
        return (await r.json())["counters"]


class Bridge:
    """A `smpp-bridge run` subprocess with its file, its account and its log."""

    def __init__(self, tmp: Path, data: dict[str, Any]) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.data = data
        self.proc = DaemonProcess(tmp, data)
        self.port = self.proc.port
        self.url = f"http://127.0.0.1:{self.port}"
        self.creds: dict[str, str] = {}

    @property
    def path(self) -> Path:
        return self.proc.path

    async def start(self, workers: int = 2, account: bool = True) -> None:
        self.proc.start()
        await self.proc.wait_ready(30)
        if workers:
            await wait_until(lambda: len(self.acceptors()) == workers, 15)
            for pid in self.acceptors().values():
                await wait_until(lambda pid=pid: handles_sighup(pid), 15)
        if account:
            self.creds = _cli_account(self.path)

    def acceptors(self) -> dict[int, int]:
        return _acceptor_pids(self.proc.log)

    def log(self) -> str:
        return self.proc.log.read_text(errors="replace")

    def edit(self, change: dict[str, Any], *, replace_smscs: list[dict[str, Any]] | None = None,
             routes: list[dict[str, Any]] | None = None) -> None:  # fmt: skip
        data = deep_merge(self.data, change)
        if replace_smscs is not None:
            data["smscs"] = replace_smscs
        if routes is not None:
            data["routes"] = routes
        self.data = data
        self.path.write_text(yaml.safe_dump(data))

    def hup(self) -> None:
        assert self.proc.proc is not None
        self.proc.proc.send_signal(signal.SIGHUP)

    async def reloads(self, n: int, timeout: float = 15) -> None:
        """Wait for the owner's n-th "reloaded configuration" line and the acceptors' after it."""

        def done() -> bool:
            return self.log().count("reloaded configuration") >= n * 3

        await wait_until(done, timeout, 0.05)

    def client(self, *, retries: int = 3, secret: str | None = None) -> BridgeClient:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
        c = BridgeClient(
            self.url,
            self.creds["app_key"],
            secret or self.creds["app_secret"],
            session=session,
            max_retries=retries,
            timeout_s=20,
        )
        c._own_session = True  # closed with the client
        return c

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as s,
            s.request(
                method,
                self.url + path,
                json=body,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            ) as r,
        ):
            return r.status, await r.json()

    async def get(self, path: str) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as s,
            s.get(self.url + path, timeout=aiohttp.ClientTimeout(total=5)) as r,
        ):
            body = await r.read()
            return r.status, json.loads(body) if body.startswith(b"{") else body

    def stop(self) -> None:
        self.proc.stop()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[dict[str, list[Any]]]:
    """Everything started here is stopped at teardown, newest first, even on failure."""
    started: dict[str, list[Any]] = {"things": []}
    try:
        yield started
    finally:
        for thing in reversed(started["things"]):
            with contextlib.suppress(Exception):
                thing.stop()
            proc = getattr(getattr(thing, "proc", None), "proc", None) or getattr(
                thing, "proc", None
            )
            if isinstance(proc, subprocess.Popen) and proc.poll() is None:
                proc.kill()
                proc.wait()


async def bridge(world: dict[str, list[Any]], tmp: Path, **overrides: Any) -> Bridge:
    b = Bridge(tmp, config_dict(tmp, **overrides))
    world["things"].append(b)
    return b


async def sim(
    world: dict[str, list[Any]], tmp: Path, name: str = "sim", **knobs: Any
) -> SimProcess:
    s = SimProcess(tmp, name, **knobs)
    world["things"].append(s)
    await s.start()
    return s


def smsc(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "port": port,
        "system_id": "bridge",
        "password": "bridge",
        "reconnect_min_s": 0.2,
        "reconnect_max_s": 1,
        "throttle_pause_min_s": 0.05,
        "throttle_pause_max_s": 0.2,
        **extra,
    }


# -- traffic -------------------------------------------------------------------------------------


class Traffic:
    """Senders in the background until stopped: unique texts, an Idempotency-Key each (retried
    on connection errors and 503s by the client, as the README tells customers to)."""

    def __init__(self, b: Bridge, to: str = "+86138", *, senders: int = 4,
                 text: str = "", pause_s: float = 0.0, retries: int = 3) -> None:  # fmt: skip
        self.b = b
        self.to = to
        self.senders = senders
        self.text = text
        self.pause_s = pause_s
        self.retries = retries
        self.accepted: dict[str, str] = {}  # message id -> text
        self.segments = 0
        self.refused: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.answered_202_at: list[float] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._n = 0

    async def _one(self, c: BridgeClient, to: str) -> None:
        self._n += 1
        to = f"{to}{self._n:08d}"  # one number a message: no frequency limit in the way
        text = f"{self.text}t{uuid.uuid4().hex[:12]}"
        try:
            r = await c.send(to, text=text)
        except BridgeError as exc:
            self.refused[exc.code] += 1
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            self.errors[type(exc).__name__] += 1
        else:
            m = r["messages"][0]
            self.accepted[m["id"]] = text
            self.segments += m["segments"]
            self.answered_202_at.append(time.monotonic())

    async def _run(self) -> None:
        async with self.b.client(retries=self.retries) as c:
            while not self._stop.is_set():
                await self._one(c, self.to)
                if self.pause_s:
                    await asyncio.sleep(self.pause_s)

    def start(self) -> Traffic:
        self._tasks = [asyncio.create_task(self._run()) for _ in range(self.senders)]
        return self

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)


async def send_all(b: Bridge, jobs: Iterable[tuple[str, str]], concurrency: int = 20,
                   retries: int = 3) -> tuple[dict[str, str], list[dict[str, Any]]]:  # fmt: skip
    """(to, text) each once: ({message id: text}, the 202 bodies' messages)."""
    queue = list(jobs)
    ids: dict[str, str] = {}
    bodies: list[dict[str, Any]] = []

    async def worker() -> None:
        async with b.client(retries=retries) as c:
            while queue:
                to, text = queue.pop()
                r = await c.send(to, text=text)
                m = r["messages"][0]
                ids[m["id"]] = text
                bodies.append(m)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return ids, bodies


async def finals(b: Bridge, ids: Iterable[str], timeout: float = 30) -> dict[str, dict[str, Any]]:
    """Each message once final, read through the API."""
    todo = set(ids)
    out: dict[str, dict[str, Any]] = {}
    last: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    async with b.client() as c:
        while todo:
            assert time.monotonic() < deadline, (
                f"{len(todo)} not final: {[last.get(mid) for mid in sorted(todo)[:2]]}"
            )
            batch = sorted(todo)
            got = await asyncio.gather(*(c.message(mid) for mid in batch))
            for mid, m in zip(batch, got, strict=True):
                last[mid] = m
                if m["status"] in FINAL:
                    out[mid] = m
                    todo.discard(mid)
            if todo:
                await asyncio.sleep(0.2)
    return out


def status_cli(
    url: str, *args: str, token: str | None = ADMIN_TOKEN
) -> subprocess.CompletedProcess[str]:
    env = _env()
    if token is not None:
        env["SMPP_BRIDGE_ADMIN_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", "status", "--url", url, *args],
        capture_output=True, text=True, env=env, timeout=30,
    )  # fmt: skip


def smsc_row(out: str, name: str) -> list[str]:
    for line in out.splitlines():
        cells = line.split()
        if cells and cells[0] == name:
            return cells
    raise AssertionError(f"no row for {name}:\n{out}")


async def settled_scrape(b: Bridge, pred: Any, timeout: float = 15) -> Scrape:
    """A scrape once `pred(scrape)` holds, after one more flush period (files written once a
    second by each process)."""

    async def ok() -> Scrape | None:
        m = await scrape(b.port)
        return m if pred(m) else None

    await wait_until(ok, timeout, 0.2)
    await asyncio.sleep(1.3)
    return await scrape(b.port)


# -- 1. /metrics equals what happened, summed over the processes ----------------------------------


@pytest.mark.slow
async def test_metrics_equal_what_happened_summed_over_workers(world, tmp_path):
    b = await bridge(
        world,
        tmp_path / "m",
        server={"workers": 2},
        sim={"outcomes": {"DELIVRD": 3, "UNDELIV": 1}},
    )
    await b.start()
    control = b.data["sim"]["control_port"]
    await sim_post(control, {"throttle_ratio": 0.1})
    n = 160
    jobs = [(f"+86138{i:08d}", (LONG if i % 4 == 0 else "") + f"metrics {i}") for i in range(n)]
    ids, bodies = await send_all(b, jobs)
    assert len(ids) == n
    # Refusals: a bad number (400), a wrong secret (401), a replay (202 REPLAYED).
    async with b.client(retries=0) as c:
        for i in range(7):
            with pytest.raises(BridgeError) as e:
                await c.send(f"+86abc{i}", text="x")
            assert e.value.code == "INVALID_NUMBER"
        for _ in range(3):
            await c.send("+8613900000000", text="replayed", idempotency_key="same-key")
    async with b.client(retries=0, secret="wrong-secret-" + "x" * 20) as c:
        for _ in range(5):
            with pytest.raises(BridgeError) as e:
                await c.send("+8613800138000", text="x")
    unauth = e.value.code
    assert e.value.status == 401
    done = await finals(b, [*ids])
    replayed_id = None
    async with b.client() as c:
        r = await c.send("+8613900000000", text="replayed", idempotency_key="same-key")
        replayed_id = r["messages"][0]["id"]
    done |= await finals(b, [replayed_id])
    parts = Counter(p["status"] for m in done.values() for p in m["parts"])
    segments = sum(m["segments"] for m in bodies) + 1
    await sim_post(control, {"throttle_ratio": 0.0})

    def all_in(m: Scrape) -> bool:
        return (
            sum(v for _k, v in m.series("smpp_bridge_receipts_total").items()) >= segments
            and m.val("smpp_bridge_messages_accepted_total") >= n + 1
        )

    m = await settled_scrape(b, all_in)
    sim_c = await sim_counters(control)
    post = {"endpoint": "POST /v1/messages"}
    expect = {
        ("202", "OK"): n + 1,
        ("202", "REPLAYED"): 3,
        ("400", "INVALID_NUMBER"): 7,
        ("401", unauth): 5,
    }
    got = {
        (dict(k)["status"], dict(k)["code"]): v
        for k, v in m.series("smpp_bridge_api_requests_total").items()
        if dict(k)["endpoint"] == post["endpoint"]
    }
    assert got == expect
    assert m.val("smpp_bridge_messages_accepted_total") == n + 1
    assert m.val("smpp_bridge_segments_accepted_total") == segments
    assert m.val("smpp_bridge_accept_latency_seconds_count") == n + 1
    submitted = {
        dict(k)["status"]: v for k, v in m.series("smpp_bridge_segments_submitted_total").items()
    }
    assert submitted.get("ESME_ROK") == sim_c["submit_ok"] == segments
    assert submitted.get("ESME_RTHROTTLED", 0) == sim_c["throttled"]
    assert m.val("smpp_bridge_throttle_events_total", smsc="sim") == sim_c["throttled"]
    receipts = {dict(k)["state"]: v for k, v in m.series("smpp_bridge_receipts_total").items()}
    assert receipts == {
        state: float(parts[st])
        for state, st in (("delivered", "delivered"), ("undeliverable", "undeliverable"))
        if parts[st]
    }, parts
    assert sum(receipts.values()) == segments
    assert m.val("smpp_bridge_queue_depth") == 0
    assert m.val("smpp_bridge_window_in_use", smsc="sim") == 0
    assert (
        m.val("smpp_bridge_binds_up", smsc="sim")
        == m.val("smpp_bridge_binds_configured", smsc="sim")
        == 1
    )

    # Whichever acceptor answers: the same counters, no sample twice (Scrape refuses one).
    # The store's own work counters (commits, lock time) go on rising with the owner's background
    # jobs (sweeps, heartbeat) after the traffic ends: those must only never go down.
    def busy(name: str) -> bool:
        return name.startswith("smpp_bridge_store_")

    # Live gauges (loop lag, the connections open: this scrape's own among them) move between
    # scrapes; every other sample is the same whichever acceptor answers.
    live = ("api_requests", "lag", "connections_open")
    ref = {k: v for k, v in m.samples.items() if not any(w in k[0] for w in live)}
    for _ in range(6):
        again = await scrape(b.port)
        same = {k: v for k, v in again.samples.items() if k in ref and not busy(k[0])}
        assert same == {k: v for k, v in ref.items() if not busy(k[0])}
        rising = {k: v for k, v in again.samples.items() if k in ref and busy(k[0])}
        assert rising.keys() == {k for k in ref if busy(k[0])}
        assert all(rising[k] >= ref[k] for k in rising), (rising, ref)
        ref |= rising


# -- 2. SIGHUP under traffic ----------------------------------------------------------------------


@pytest.mark.slow
async def test_sighup_under_traffic_applies_refuses_and_loses_nothing(world, tmp_path):
    other = await sim(world, tmp_path, "other")
    b = await bridge(world, tmp_path / "h", server={"workers": 2})
    first = b.data["smscs"][0]
    await b.start()
    control = b.data["sim"]["control_port"]
    traffic = Traffic(b, senders=4, pause_s=0.02).start()
    try:
        await asyncio.sleep(0.8)
        pids = b.acceptors()
        # 1: tps and window of the first SMSC, a new SMSC with a route, logging (restart-only).
        b.edit(
            {"logging": {"level": "DEBUG"}},
            replace_smscs=[
                {**first, "tps": 200, "window": 10},
                smsc("other", other.port, allow_latin1=True),
            ],
            routes=[{"prefix": "+86139", "smscs": ["other"]}],
        )
        b.data["default_route"] = ["sim"]
        b.path.write_text(yaml.safe_dump(b.data))
        b.hup()
        await b.reloads(1)

        async def applied() -> Scrape | None:
            m = await scrape(b.port)
            return (
                m
                if m.val("smpp_bridge_binds_up", smsc="other") == 1
                and m.val("smpp_bridge_window_size", smsc="sim") == 10
                else None
            )

        await wait_until(applied, 10, 0.2)
        assert "logging changed; restart to apply" in b.log()

        def status_applied() -> bool:
            nonlocal out
            out = status_cli(b.url)
            assert out.returncode == 0, out.stderr
            return smsc_row(out.stdout, "sim")[3].endswith("/10")

        # The status comes from the owner's snapshot, refreshed once a second: it may lag the
        # metrics by a refresh on a busy machine. Once in CI (session 32) an acceptor answered
        # with no SMSC at all for the whole 5 s this waited then: the log's end goes with a
        # failure now, to tell what the owner was doing.
        out = status_cli(b.url)
        with contextlib.suppress(AssertionError):
            await wait_until(status_applied, 15, 0.5)
        try:
            row = smsc_row(out.stdout, "sim")
        except AssertionError as exc:
            tail = "\n".join(b.log().splitlines()[-30:])
            raise AssertionError(f"{exc}\nthe daemon log's end:\n{tail}") from None
        assert row[2] == "1/1" and row[3].endswith("/10") and row[5] == "200", out.stdout
        assert smsc_row(out.stdout, "other")[1:3] == ["yes", "1/1"], out.stdout
        # The acceptors encode for the new route at once: Latin-1, sent by "other".
        ids, bodies = await send_all(
            b, [(f"+86139{i:08d}", f"prix \u00e2 r{i}") for i in range(8)], concurrency=8
        )
        assert [m["encoding"] for m in bodies] == ["latin1"] * 8
        done = await finals(b, ids)
        assert {m["smsc"] for m in done.values()} == {"other"}

        # 2: an invalid edit: refused with the reason, every process keeps what it runs.
        good = b.path.read_text()
        bad = yaml.safe_load(good)
        bad["smscs"][0]["window"] = 0
        bad["smscs"][1]["tps"] = 5
        b.path.write_text(yaml.safe_dump(bad))
        b.hup()
        await wait_until(lambda: "reload refused" in b.log(), 10, 0.05)
        assert "smscs[0].window" in b.log().split("reload refused", 1)[1][:2000]
        await asyncio.sleep(1.5)
        assert b.log().count("reloaded configuration") == 3
        assert b.acceptors() == pids
        m = await scrape(b.port)
        assert m.val("smpp_bridge_window_size", smsc="sim") == 10
        assert m.val("smpp_bridge_binds_up", smsc="other") == 1
        ids2, bodies2 = await send_all(b, [("+8613900000099", "\u00e2 after-refusal")], 1)
        assert bodies2[0]["encoding"] == "latin1"
        # Its receipt before "other" goes: a removed SMSC's late receipts have no bind to come by.
        assert {m["smsc"] for m in (await finals(b, ids2)).values()} == {"other"}

        # 3: the SMSC and its route removed.
        b.edit({}, replace_smscs=[{**first, "tps": 200, "window": 10}], routes=[])
        b.data.pop("default_route", None)
        b.path.write_text(yaml.safe_dump(b.data))
        b.hup()
        await b.reloads(2)

        async def removed() -> Scrape | None:
            m = await scrape(b.port)
            names = {dict(k).get("smsc") for k in m.series("smpp_bridge_binds_up")}
            return m if names == {"sim"} else None

        await wait_until(removed, 10, 0.2)
        await asyncio.sleep(1.2)  # the acceptors' own reload (they follow the owner)
        out = status_cli(b.url)
        assert out.returncode == 0 and "other" not in out.stdout, out.stdout
        ids3, bodies3 = await send_all(b, [("+8613900000100", "\u00e2 back")], 1)
        assert bodies3[0]["encoding"] == "ucs2"
        done3 = await finals(b, ids3)
        assert {m["smsc"] for m in done3.values()} == {"sim"}
    finally:
        await traffic.stop()
    assert not traffic.errors and not traffic.refused, (traffic.errors, traffic.refused)
    assert len(traffic.accepted) > 50
    everything = {**traffic.accepted, **ids, **ids2, **ids3}
    done_all = await finals(b, everything)
    assert {m["status"] for m in done_all.values()} == {"delivered"}
    seen = await sim_texts(control) + await other.texts()
    assert {t: seen[t] for t in everything.values() if seen[t] != 1} == {}


# -- 3. an account's rate changed through the admin API -------------------------------------------


async def test_admin_rate_change_applies_in_every_acceptor_at_once(world, tmp_path):
    b = await bridge(world, tmp_path / "r", server={"workers": 2})
    await b.start()
    acc = b.creds["account"]
    status, _ = await b.admin("PATCH", f"/admin/accounts/{acc}", {"tps": 1})
    assert status == 200

    async def burst(n: int) -> Counter[str]:
        out: Counter[str] = Counter()

        async def one(i: int) -> None:
            async with b.client(retries=0) as c:
                try:
                    await c.send(f"+86138{i:08d}", text=f"rate {i}")
                    out["OK"] += 1
                except BridgeError as exc:
                    out[exc.code] += 1

        await asyncio.gather(*(one(i) for i in range(n)))
        return out

    slow = await burst(12)
    assert slow["OK"] <= 2 and slow["ACCOUNT_RATE_LIMIT"] >= 10, slow
    status, _ = await b.admin("PATCH", f"/admin/accounts/{acc}", {"tps": 0})
    assert status == 200
    fast = await burst(12)
    assert fast == Counter({"OK": 12}), fast


# -- 4. SIGKILL of an acceptor -------------------------------------------------------------------


@pytest.mark.slow
async def test_a_killed_acceptor_is_restarted_and_the_port_keeps_answering(world, tmp_path):
    b = await bridge(world, tmp_path / "k", server={"workers": 2})
    await b.start()
    control = b.data["sim"]["control_port"]
    traffic = Traffic(b, senders=4, pause_s=0.01).start()
    probes: list[tuple[float, str, int | str, Any]] = []
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            for path in ("/healthz", "/readyz"):
                body: Any = None
                try:
                    st, body = await b.get(path)
                except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                    st = type(exc).__name__
                # The answer's body is kept for a refusal: which problem /readyz named.
                probes.append((time.monotonic(), path, st, None if st == 200 else body))
            await asyncio.sleep(0.03)

    prober = asyncio.create_task(probe())
    try:
        await asyncio.sleep(0.8)
        victim = b.acceptors()[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        await wait_until(lambda: b.acceptors().get(0) not in (None, victim), 10, 0.05)
        restarted_after = time.monotonic() - killed_at
        await wait_until(lambda: handles_sighup(b.acceptors()[0]), 10, 0.05)
        await asyncio.sleep(0.8)
    finally:
        stop.set()
        await prober
        await traffic.stop()
    assert restarted_after < 3, restarted_after
    assert "acceptor 0 exited with -9; restarting" in b.log()
    late = [p for p in probes if p[0] > killed_at + 0.3]
    assert late and all(p[2] == 200 for p in late), [p for p in late if p[2] != 200]
    failed = [(round(t - killed_at, 3), *rest) for t, *rest in probes if rest[1] != 200]
    assert len(failed) <= 2, failed  # a connection queued on the killed socket, at most
    # None of them a 503: the new acceptor reads its owner's binds before its port opens (it
    # answered "no SMSC bound" for its first second until session 18; seen 3 times in CI).
    assert not [p for p in failed if p[2] == 503], failed
    assert not traffic.refused, traffic.refused
    assert sum(traffic.errors.values()) == 0, traffic.errors  # the client's retries cover it
    done = await finals(b, traffic.accepted)
    assert {m["status"] for m in done.values()} == {"delivered"}
    seen = await sim_texts(control)
    assert {t: seen[t] for t in traffic.accepted.values() if seen[t] != 1} == {}
    # A new acceptor answers the admin API and the metrics like the others.
    for _ in range(4):
        st, _ = await b.get("/readyz")
        assert st == 200


# -- 5. SIGTERM under load, twice, and the restart ------------------------------------------------


async def _sigterm_under_load(
    world: dict[str, list[Any]], tmp: Path, grace_s: float = 2, tps: int = 40, **knobs: Any
) -> dict[str, Any]:
    """3-part messages on a 40/s SMSC (a separate process, counting across the restart), a
    backlog; SIGTERM, a second one 0.3 s later; the restart on the same store until every
    message is final. What happened, for the tests to judge."""
    ext = await sim(world, tmp, "ext", **knobs)
    home = tmp / "t"
    b = await bridge(
        world,
        home,
        server={"workers": 2, "shutdown_grace_s": grace_s},
        sim={"enabled": False},
        smscs=[smsc("ext", ext.port, tps=tps, unbind_timeout_s=1)],
    )
    await b.start()
    traffic = Traffic(b, senders=6, text="T" * 300, retries=0).start()  # three parts each

    async def backlog() -> bool:
        # A backlog for the restart: 60 messages accepted and 30 parts more than the SMSC took
        # (until session 63 60 accepted was taken for one: on a loaded machine the accepts came
        # slower than the 40/s SMSC sent them, and none was left).
        sent = (await ext.stats())["counters"]["submit_ok"]
        return len(traffic.accepted) >= 60 and traffic.segments - sent >= 30

    await wait_until(backlog, 120, 0.05)
    t0 = time.monotonic()
    assert b.proc.proc is not None
    b.proc.proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.3)
    second = b.proc.proc.poll() is None
    if second:
        b.proc.proc.send_signal(signal.SIGTERM)  # an impatient operator
    proc = b.proc.proc

    def wait_exit() -> tuple[int, float]:
        # The exit's time taken in the waiting thread, not once the test's loop (busy with six
        # senders refused in a tight loop on a loaded machine) gets to the answer.
        code = proc.wait(30)
        return code, time.time()

    rc, exited_at = await asyncio.get_running_loop().run_in_executor(None, wait_exit)
    took = time.monotonic() - t0
    await traffic.stop()
    log = b.log()
    sent_before = (await ext.stats())["counters"]["submit_ok"]
    b2 = Bridge(home / "again", b.data)  # the same file and store, a fresh log
    world["things"].append(b2)
    b2.creds = b.creds
    await b2.start(account=False)
    done = await finals(b2, traffic.accepted, timeout=40)
    db = sqlite3.connect(f"file:{b.data['store']['path']}?mode=ro", uri=True)
    try:
        stored = db.execute("SELECT count(*), sum(segments) FROM messages").fetchone()
        last_accepted = db.execute("SELECT max(accepted_at) FROM messages").fetchone()[0]
        states = dict(db.execute("SELECT state, count(*) FROM messages GROUP BY state").fetchall())
    finally:
        db.close()
    return {
        "rc": rc, "took": took, "second": second, "log": log, "t0": t0, "traffic": traffic,
        "exited_at": exited_at, "last_accepted": last_accepted,
        "sent_before": sent_before, "done": done, "stored": stored, "states": states,
        "submit_ok": (await ext.stats())["counters"]["submit_ok"], "texts": await ext.texts(),
    }  # fmt: skip


_LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)\.(\d{3})Z \S+ \S+ (.*)$")


def _stop_events(log: str) -> list[tuple[int, str]]:
    """The daemon's log lines of its stop, in the order its processes wrote them (one file):
    (the line's time in ms since the epoch, what: "signal" for the supervisor's receipt of
    SIGTERM, "drained" for an acceptor's first SIGTERM, "stopped" for a process's end)."""
    marks = {
        "shutting down: the acceptors answer 503": "signal",
        "draining: sends are answered 503": "drained",
        "smpp-bridge stopped": "stopped",
    }
    out = []
    for line in log.splitlines():
        m = _LOG_LINE.match(line)
        what = next((w for k, w in marks.items() if m and m.group(3).startswith(k)), None)
        if m and what:
            at = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
            out.append((at * 1000 + int(m.group(2)), what))
    return out


@pytest.mark.slow
async def test_sigterm_under_load_stops_in_time_and_a_restart_delivers_every_202(world, tmp_path):
    """The stop's two promises measured as the product makes them, not by the test's clock
    (until session 63 "took < 6 s" from the test's send of the signal and "no 202 later than
    0.5 s after it" by the client's receipt: on a loaded machine both measured the scheduler).
    - The bound (README, "Running in production": the grace for what is on the wire, plus the
      unbind; TimeoutStopSec above both) from the daemon's receipt of the signal to the owner's
      "smpp-bridge stopped", by its own log; every process's within the README's floor for
      TimeoutStopSec (grace + unbind + 5 s). Not to the exit: the teardown after the last line
      took 4-5 s more on a loaded machine (2 of 7 runs), which the bound never promised; the
      exit is waited for 30 s.
    - "At the first SIGTERM the acceptors answer sends 503 while the owner drains" (Architecture
      note 7): each acceptor logged its drain before the owner's stop ended (the log's order),
      and no message stored was accepted after the last acceptor's drain (its `accepted_at`,
      the handler's clock read before it tests `accepting`, against the drain's log time: the
      same machine's clock, in ms)."""
    # A 20/s SMSC (40/s until session 63): a loaded machine accepted slower than 40 parts a
    # second, so no backlog formed for the restart to deliver.
    r = await _sigterm_under_load(world, tmp_path, tps=20)
    assert r["rc"] == 0, r["log"][-3000:]
    events = _stop_events(r["log"])
    whats = [w for _at, w in events]
    assert whats.count("signal") == 1 and whats.count("drained") == 2, events
    signal_at = next(at for at, w in events if w == "signal")
    stopped = [(at - signal_at) / 1000 for at, w in events if w == "stopped"]
    exit_s = r["exited_at"] - signal_at / 1000
    print(f"stop: every process {stopped} s, the exit {exit_s:.2f} s after the signal's receipt")
    # The owner's (the first: the acceptors stop at the second signal, sent once it has) within
    # the drain's bound; every process within the README's floor for TimeoutStopSec (the grace,
    # the unbind and 5 s for an answer on the wire).
    assert len(stopped) == 3 and stopped[0] < 2 + 1 + 3, (stopped, exit_s, events)
    assert max(stopped) < 2 + 1 + 5, (stopped, exit_s, events)
    # The owner's stop is the first process's end: the acceptors stop only after it.
    first_stop = whats.index("stopped")
    assert whats.index("signal") < first_stop, events
    assert whats[:first_stop].count("drained") == 2, events
    drained_last = max(at for at, w in events if w == "drained")
    assert r["last_accepted"] <= drained_last, (r["last_accepted"], events)
    traffic: Traffic = r["traffic"]
    assert r["sent_before"] < traffic.segments  # a backlog was left to the restart
    assert {m["status"] for m in r["done"].values()} == {"delivered"}
    assert r["states"] == {"delivered": r["stored"][0]}  # nothing accepted was left behind
    seen: Counter[str] = r["texts"]
    assert {t: seen[t] for t in traffic.accepted.values() if seen[t] != 1} == {}


@pytest.mark.slow
async def test_sigterm_grace_running_out_mid_message_sends_no_part_twice(world, tmp_path):
    """Found 2. Expected: what the SMSC accepted before the stop is recorded (the dispatcher's
    own comment: "the parts the SMSC accepted are recorded (stop() writes them)"), so after a
    graceful stop and restart every part reaches the SMSC once. Found: `submit_ok` at the SMSC
    exceeds the segments stored by 36-68 (three runs: 315/279, 323/255, 303/243) and the log has
    "recording submit results failed; retrying ... StoreClosedError: store is closed".
    Found again (session 27, on a fast machine): 207/201, the parts on the wire when the grace
    ran out; their answers went with the cancelled waits. Made certain here: an SMSC that
    answers each submit_sm after 100 ms (a carrier's latency) and no TPS limit keeps the window
    full of parts on the wire, and a grace of 0.4 s runs out with them there.
    """
    r = await _sigterm_under_load(world, tmp_path, grace_s=0.4, tps=0, answer_delay_ms=300)
    assert "store is closed" not in r["log"]
    assert r["submit_ok"] == r["stored"][1]


# -- 6. smpp-bridge status ------------------------------------------------------------------------


@pytest.mark.slow
async def test_status_reports_binds_queue_and_throughput_and_fails_cleanly(world, tmp_path):
    b = await bridge(
        world,
        tmp_path / "s",
        server={"workers": 2},
        smscs=[{"name": "sim", "tps": 30}, {"name": "dead", "reconnect_min_s": 0.5}],
        # No default route: with one, a route's messages go out through it while the route's
        # own SMSCs are down (finding 1).
        routes=[{"prefix": "+86139", "smscs": ["dead"]}, {"prefix": "+86138", "smscs": ["sim"]}],
        default_route=[],
    )
    await b.start()
    _ids, bodies = await send_all(
        b, [(f"+86139{i:08d}", (LONG if i % 2 else "") + f"q{i}") for i in range(5)], 5
    )
    parts = sum(m["segments"] for m in bodies)
    assert parts == 7
    traffic = Traffic(b, senders=6, pause_s=0.15).start()  # about 40/s offered, 30/s sent
    try:
        # Reading only once sends flow: CI at load 24 (other work beside it) read 0 for all
        # of 8 s counted from here, the traffic's first sends not yet through.
        await wait_until(lambda: len(traffic.accepted) >= 30, 60, 0.05)
        seen_tps = 0
        deadline = time.monotonic() + 30
        # The first readings can fall in the ramp-up (seen once in CI: 6, a window only partly
        # under load): keep reading until one is in range or the time is up.
        while time.monotonic() < deadline and not 10 <= seen_tps <= 40:
            out = status_cli(b.url, "--json")
            assert out.returncode == 0, out.stderr
            doc = json.loads(out.stdout)
            sim_view = next(s for s in doc["smscs"] if s["name"] == "sim")
            seen_tps = sim_view["tps"]
            await asyncio.sleep(0.3)
        assert 10 <= seen_tps <= 40, seen_tps
    finally:
        await traffic.stop()
    await finals(b, traffic.accepted)
    out = status_cli(b.url)
    assert out.returncode == 0, out.stderr
    assert smsc_row(out.stdout, "sim")[1:3] == ["yes", "1/1"]
    assert smsc_row(out.stdout, "dead")[1:3] == ["NO", "0/1"]
    assert re.search(r"^queue: 7 parts in 5 messages", out.stdout, re.M), out.stdout
    _st, queue = await b.admin("GET", "/admin/queue")
    assert queue["depth"] == 7 and queue["messages"] == 5
    m = await scrape(b.port)
    assert m.val("smpp_bridge_queue_depth") == 7
    assert m.val("smpp_bridge_smsc_up", smsc="dead") == 0
    # Wrong token, unreachable: one line, exit 1, no traceback.
    for bad in (
        status_cli(b.url, token="wrong-token-0123456789"),
        status_cli(f"http://127.0.0.1:{free_port()}"),
    ):
        assert bad.returncode == 1
        assert bad.stdout == ""
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in bad.stderr, bad.stderr
        assert lines[0].startswith("smpp-bridge: ")


# -- 7. the backup and restore procedure, literally -----------------------------------------------


@pytest.mark.slow
async def test_online_backup_restore_into_a_new_path_and_start(world, tmp_path):
    home = tmp_path / "b"
    b = await bridge(
        world,
        home,
        server={"workers": 2},
        smscs=[{"name": "sim"}, {"name": "dead"}],
        routes=[{"prefix": "+86139", "smscs": ["dead"]}, {"prefix": "+86138", "smscs": ["sim"]}],
        default_route=[],
    )
    await b.start()
    queued, _ = await send_all(b, [(f"+86139{i:08d}", f"queued {i}") for i in range(4)], 4)
    traffic = Traffic(b, senders=4).start()
    try:
        await wait_until(lambda: len(traffic.accepted) >= 40, 15, 0.05)
        # Final before the snapshot began (read through the API while traffic goes on): the
        # restored store must hold them as final. A message whose receipt lands after the
        # snapshot stays "sent" in a restore, as in any point-in-time copy (CI saw one).
        before_backup = await finals(b, list(traffic.accepted)[:40])
        # README: `python3 -c "import sqlite3; sqlite3.connect('bridge.db').execute(...)"`,
        # run where the store is.
        one_liner = (
            "import sqlite3; sqlite3.connect('bridge.db').execute(\"VACUUM INTO 'backup.db'\")"
        )
        out = subprocess.run(
            [sys.executable, "-c", one_liner], cwd=home, capture_output=True, text=True,
            timeout=30,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        # `db migrate` beside the running daemon (README: "applies them ahead of a start").
        mig = subprocess.run(
            [sys.executable, "-m", "bridge.cli", "db", "migrate", "--config", str(b.path)],
            capture_output=True, text=True, env=_env(), timeout=30,
        )  # fmt: skip
        assert mig.returncode == 0 and "Traceback" not in mig.stderr, mig.stderr
    finally:
        await traffic.stop()
    assert sqlite3.connect(home / "backup.db").execute("PRAGMA integrity_check").fetchone() == (
        "ok",
    )
    b.proc.terminate(30)
    # Restore into a new path: the backup as bridge.db there, no -wal / -shm, start on it.
    new = tmp_path / "restored"
    new.mkdir()
    os.replace(home / "backup.db", new / "bridge.db")
    data = dict(b.data)
    data["store"] = {**data["store"], "path": str(new / "bridge.db")}
    b2 = Bridge(new, data)
    b2.creds = b.creds
    world["things"].append(b2)
    await b2.start(account=False)
    out = status_cli(b2.url)
    assert out.returncode == 0, out.stdout + out.stderr
    async with b2.client() as c:
        for mid in queued:
            assert (await c.message(mid))["status"] == "queued"
        r = await c.send("+8613800138000", text="after restore")
    assert {m["status"] for m in before_backup.values()} == {"delivered"}
    done = await finals(b2, [*before_backup, r["messages"][0]["id"]])
    assert {m["status"] for m in done.values()} == {"delivered"}


# -- 8. a route whose SMSC is down ----------------------------------------------------------------


async def test_a_route_whose_smsc_is_down_does_not_send_through_the_default_route(world, tmp_path):
    """Found 1. Expected (README, config/bridge.example.yaml): a matched destination tries its
    route's SMSCs in order, unmatched ones use default_route, and every SMSC a message may fail
    over to reads the bytes it was encoded with. Found: with the route's only SMSC down the
    message goes to the default route's SMSC, as Latin-1 (data_coding 3), which that SMSC was
    not configured to take (`allow_latin1: false`)."""
    b = await bridge(
        world,
        tmp_path / "lat",
        server={"workers": 2},
        smscs=[{"name": "sim"}, {"name": "lat", "allow_latin1": True}],  # lat: nothing listens
        routes=[{"prefix": "+86139", "smscs": ["lat"]}],
        default_route=["sim"],
    )
    check = subprocess.run(
        [sys.executable, "-m", "bridge.cli", "config", "check", str(b.path)],
        capture_output=True, text=True, env=_env(), timeout=30,
    )  # fmt: skip
    await b.start()
    _ids, bodies = await send_all(b, [("+8613900000001", "Prix \u00e2 10")], 1)
    assert bodies[0]["encoding"] == "latin1"
    await asyncio.sleep(1.5)
    async with b.client() as c:
        m = await c.message(bodies[0]["id"])
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{b.data['sim']['control_port']}/messages") as r,
    ):
        at_sim = (await r.json())["messages"]
    # Refused by `config check`, or kept for its route: either keeps the promise.
    assert check.returncode == 1 or (m["status"] == "queued" and at_sim == []), (m, at_sim)
