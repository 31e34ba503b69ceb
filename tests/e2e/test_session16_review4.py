"""Session 16, review 4: the host's wall clock stepping while the daemon runs.

An NTP step, a VM resumed after a pause, a wrong clock corrected: `time.time()` jumps minutes or
hours, backwards or forwards, while `time.monotonic()` (asyncio's clock) goes on as before. The
daemon runs here as a real subprocess (`python -m bridge.cli run`, SQLite, built-in simulator)
through a launcher that replaces `time.time` / `time.time_ns` before the daemon's code is imported
(every clock in the daemon is `time.time`, read at call time or bound as a default argument at
import; only the simulator's receipt dates come from `datetime.now`, and no decision reads them)
with the real time plus a shift read from a file (cached for 50 ms), so a test steps the
daemon's clock mid-run by rewriting that file. Requests are signed by the test process: a
`SteppedClient` signs with the real time plus its own `offset_s` (0: a client on a correct clock;
the daemon's shift: a client whose clock agrees with the daemon's).

A defect kept its test asserting the correct behaviour, marked xfail(strict=True) with what was
observed. Session 17 fixed findings 1, 2, 3, 5 and 6 (bridge/clockstep.py: a step back moves
stored retry times back by as much; replay records expire by the wall clock less the forward
steps seen; a frequency refusal's Retry-After waits out sends dated after now), and session 16
fixed 4; the tests now pass unmarked. Findings (the test names say which):

1. Queued messages stop after a backward step: `q_not_before` is the acceptance time, so after a
   step back of S every message accepted before it and not yet claimed waits S (10 minutes here;
   hours for a larger step; /admin/queue calls them retry_wait) while new sends overtake them.
   Not only a backlog: a single message accepted in the ~50 ms before the step (the
   dispatcher's idle poll) waits too. -> test_queued_backlog_keeps_draining_after_a_backward_step
2. Nonces are purged by wall time: a forward step past 2 x skew, corrected, lets a captured
   request be replayed within the skew (a POST /v1/optouts applied again, re-adding an opt-out
   the account had lifted). -> test_replayed_request_is_refused_after_a_forward_step_is_corrected
3. Idempotency records are purged by wall time: a forward step past 24 h, corrected, and the
   client's retry of a send with the same Idempotency-Key sends a second SMS.
   -> test_idempotent_retry_after_a_forward_step_is_corrected_sends_once
4. The account's token bucket keeps `at` from before a backward step (a refusal writes nothing)
   and refills only from there: an account whose bucket was drained is refused
   ACCOUNT_RATE_LIMIT (Retry-After: 1, every time) for the size of the step (2 hours here).
   -> test_rate_bucket_refills_after_a_backward_step
5. Frequency limits after a backward step: a send dated after now counts in every window (by
   design, against bursts), but the refusal's Retry-After is the time to the next clock minute,
   and the retry then is refused again, every minute until the clock passes the earlier send.
   -> test_frequency_retry_after_holds_after_a_backward_step
6. Webhook retries keep their `next_attempt_at` from before a backward step: a report that
   failed once is not retried for the size of the step (10 minutes here), its receiver back up.
   -> test_webhook_retry_is_not_stuck_after_a_backward_step

Checked and holding (plain tests): signing skew both ways (inside the skew accepted, outside
401 REQUEST_EXPIRED naming the server's time); sends before and after a backward step all
delivered, listed once each by cursor and by date, counted by /v1/stats (their ids carry the
daemon's clock, so the later one sorts as older); a frequency window not reopened by a backward
step and the account rate not burst by a forward one; a scheduled message neither sent early by
a backward step nor twice when the clock comes back, and sent (not expired) after a forward step
inside its validity; a receipt across a +73 h step ends consistently with the money (the 72 h
rule applied by the daemon's clock: unknown, billed, the UNDELIV receipt that comes a second
later ignored); a forward step makes a due webhook retry go at once, once, with no storm.

Runtime: one shared daemon for most tests (each with accounts and numbers of its own, the clock
reset around each); the three tests that need a sweep (every 5 s, bridge/app.py) wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web

from bridge.api import signing
from bridge.client import BridgeClient, BridgeError
from bridge.ids import id_time_ms
from tests.e2e.harness import ADMIN_TOKEN, config_dict, free_port

ROOT = Path(__file__).resolve().parents[2]
MIN = 60.0
HOUR = 3600.0
PRICE = 45_000  # the default tariff's starting price, micro-units per domestic unit
FUNDS = 100_000_000
IDEM_NUMBER = "+8613800000301"

# Replaces time.time/time_ns before bridge is imported: real time + the shift in R4_CLOCK_FILE,
# re-read at most every 50 ms (monotonic), so a test can step the clock of a running daemon.
LAUNCHER = r"""
import os, runpy, sys, time
_path = os.environ["R4_CLOCK_FILE"]
_time, _time_ns, _mono = time.time, time.time_ns, time.monotonic
_state = [-1.0, 0.0]  # (monotonic of the last read, shift in seconds)

def _shift():
    now = _mono()
    if now - _state[0] >= 0.05:
        _state[0] = now
        try:
            with open(_path) as f:
                _state[1] = float(f.read().strip() or 0)
        except (OSError, ValueError):
            pass
    return _state[1]

time.time = lambda: _time() + _shift()
time.time_ns = lambda: _time_ns() + int(_shift() * 1e9)
sys.argv[0] = "smpp-bridge"
runpy.run_module("bridge.cli", run_name="__main__", alter_sys=True)
"""


# -- the daemon with a steppable clock -----------------------------------------------------------


class SteppedDaemon:
    """`smpp-bridge run` whose wall clock the test steps (`step`); monotonic time untouched."""

    def __init__(self, tmp: Path, **overrides: Any) -> None:
        self.cfg = config_dict(tmp, **overrides)
        self.path = tmp / "bridge.yaml"
        self.path.write_text(yaml.safe_dump(self.cfg))
        self.clock_file = tmp / "clock_shift"
        self.shift_s = 0.0
        self._write_shift()
        self.log = tmp / "daemon.log"
        self.url = f"http://127.0.0.1:{self.cfg['server']['port']}"
        self.sim_url = f"http://127.0.0.1:{self.cfg['sim']['control_port']}"
        self.db_path = Path(self.cfg["store"]["path"])
        self.proc: subprocess.Popen[bytes] | None = None
        self.http: aiohttp.ClientSession | None = None  # the running test's (one loop each)

    def _write_shift(self) -> None:
        tmp = self.clock_file.with_suffix(".new")
        tmp.write_text(repr(self.shift_s))
        os.replace(tmp, self.clock_file)

    def now(self) -> float:
        """The daemon's wall clock, as the test computes it."""
        return time.time() + self.shift_s

    def start(self) -> None:
        """Launch and wait for /readyz (blocking: called before any server of the test runs)."""
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("SMPP_BRIDGE_")},
            "PYTHONUNBUFFERED": "1",
            "R4_CLOCK_FILE": str(self.clock_file),
        }
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", LAUNCHER, "run", "--config", str(self.path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=ROOT,
            )
        deadline = time.monotonic() + 15
        while True:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(self.url + "/readyz", timeout=1) as r:
                    if r.status == 200:
                        return
            assert time.monotonic() < deadline, "not ready: " + self.log.read_text()[-3000:]
            time.sleep(0.05)

    def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    async def step(self, seconds: float) -> float:
        """Step the daemon's wall clock by `seconds`; returns (monotonic) once it reads it."""
        self.shift_s += seconds
        self._write_shift()
        await asyncio.sleep(0.15)  # the launcher's 50 ms cache, with room
        return time.monotonic()

    def reset_clock(self) -> None:
        self.shift_s = 0.0
        self._write_shift()

    async def admin(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        assert self.http is not None
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with self.http.request(method, self.url + path, json=body, headers=headers) as r:
            return r.status, await r.json(content_type=None)

    async def sim(self, method: str, path: str, body: Any = None) -> Any:
        assert self.http is not None
        async with self.http.request(method, self.sim_url + path, json=body) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def submitted_to(self, number: str) -> int:
        """Messages the simulated SMSC received for `number` (reassembled: one per SMS)."""
        msgs = (await self.sim("GET", "/messages?limit=10000"))["messages"]
        digits = number.lstrip("+")
        return sum(1 for m in msgs if str(m.get("destination", "")).lstrip("+") == digits)

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        """A read of the daemon's store (read-only, beside the daemon: SQLite in WAL mode)."""
        c = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=5)
        try:
            return c.execute(sql, args).fetchall()
        finally:
            c.close()

    async def new_account(self, name: str, **settings: Any) -> dict[str, str]:
        """A raw-text CN account with FUNDS in cash, through the admin API."""
        status, body = await self.admin(
            "POST",
            "/admin/accounts",
            {"name": name, "raw_text": True, "default_country": "CN", **settings},
        )
        assert status == 201, body
        account = body["account"]["id"]
        status, topped = await self.admin(
            "POST", f"/admin/accounts/{account}/topups", {"amount_micro": FUNDS}
        )
        assert status == 201, topped
        return {"account": account, "app_key": body["app_key"], "app_secret": body["app_secret"]}

    def client(self, creds: dict[str, str], offset_s: float = 0.0) -> SteppedClient:
        """No retries: a 429 is the answer, not something to wait out."""
        c = SteppedClient(self.url, creds["app_key"], creds["app_secret"], max_retries=0)
        c.offset_s = offset_s
        return c


Sent = tuple[str, str, str, bytes, dict[str, str]]  # method, path, query, body, headers


class SteppedClient(BridgeClient):
    """bridge/client.py's client signing with the real time plus `offset_s` (the client's own
    clock), keeping every request it signed (for replays)."""

    offset_s: float = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[Sent] = []

    def signed_headers(
        self, method: str, path: str, query: str, body: bytes, headers: dict[str, str]
    ) -> dict[str, str]:
        all_headers = {"Host": self.base_url.split("://", 1)[1], **headers}
        added = signing.sign_request(
            self.app_key,
            self._secret,
            method,
            path,
            query,
            all_headers,
            body,
            datetime.now(UTC) + timedelta(seconds=self.offset_s),
            uuid.uuid4().hex,
        )
        out = {**all_headers, **added}
        self.sent.append((method, path, query, body, out))
        return out


@pytest.fixture(scope="module")
def _shared_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SteppedDaemon]:
    d = SteppedDaemon(
        tmp_path_factory.mktemp("review4"),
        webhooks={"retry_schedule_s": [2, 3600], "timeout_s": 2},
        rules={
            "frequency": {
                "raw_text": {"per_minute": 1, "per_hour": 0, "per_day": 50},
                "exempt": [IDEM_NUMBER],  # sent twice on purpose: a limit would hide the defect
            }
        },
    )
    try:
        d.start()
        yield d
    finally:
        d.stop()


@pytest.fixture
async def shared(_shared_daemon: SteppedDaemon) -> AsyncIterator[SteppedDaemon]:
    """The module's daemon (webhook retries after 2 s, then hourly; free text 1 per minute per
    number), its clock on the real time at the start and again after the test. Each test uses
    accounts and numbers of its own: one daemon for many tests keeps the file's runtime down."""
    d = _shared_daemon
    assert d.proc is not None and d.proc.poll() is None, d.log.read_text()[-3000:]
    d.reset_clock()
    await asyncio.sleep(0.15)  # the launcher's cache may hold the last test's shift for 50 ms
    d.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    try:
        yield d
    finally:
        d.reset_clock()
        await d.http.close()
        d.http = None


@pytest.fixture
async def stepped(tmp_path: Path) -> AsyncIterator[Callable[..., SteppedDaemon]]:
    """`stepped(**config overrides)`: a daemon of the test's own, for a configuration the shared
    one lacks; stopped (SIGTERM, then SIGKILL) at teardown."""
    started: list[SteppedDaemon] = []

    def start(**overrides: Any) -> SteppedDaemon:
        sub = tmp_path / f"d{len(started)}"
        sub.mkdir()
        d = SteppedDaemon(sub, **overrides)
        started.append(d)
        d.start()
        d.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return d

    try:
        yield start
    finally:
        for d in reversed(started):
            if d.http is not None:
                await d.http.close()
            d.stop()


async def wait_for(
    pred: Callable[[], Any], timeout: float, interval: float = 0.05, *, strict: bool = True
) -> Any:
    """Poll `pred` (sync or async) until truthy; on timeout raise, or (strict=False) return the
    last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value or time.monotonic() > deadline:
            if not value and strict:
                raise AssertionError(f"condition not met within {timeout}s")
            return value
        await asyncio.sleep(interval)


async def final(client: BridgeClient, mid: str, timeout: float = 10.0) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        m = await client.message(mid)
        return m if m["status"] in ("delivered", "failed", "expired", "unknown") else None

    return await wait_for(done, timeout)


SWEEP_S = 5.0  # the daemon's sweeper period (bridge/app.py: expiry, receipt timeouts, purges)


async def through_a_sweep(pred: Callable[[], Any], stepped_at: float) -> None:
    """Wait until `pred` holds or a sweep has surely run since `stepped_at` (monotonic)."""
    left = stepped_at + SWEEP_S + 0.8 - time.monotonic()
    await wait_for(pred, max(0.0, left), 0.1, strict=False)


async def replay(d: SteppedDaemon, sent: Sent) -> tuple[int, Any]:
    """The captured request again, byte for byte (same date, nonce, signature)."""
    method, path, query, body, headers = sent
    assert d.http is not None
    url = d.url + path + (f"?{query}" if query else "")
    async with d.http.request(
        method, url, data=body or None, headers=headers, skip_auto_headers=("Content-Type",)
    ) as r:
        return r.status, await r.json(content_type=None)


# -- signing across steps ------------------------------------------------------------------------


async def test_signing_skew_follows_the_daemon_clock_across_steps(shared: SteppedDaemon) -> None:
    """A client on the real time is accepted while the daemon's clock is off by less than
    server.clock_skew_s (300 s), and refused 401 REQUEST_EXPIRED, naming the server's time, once
    it is off by more; a client whose clock agrees with the daemon's is accepted throughout."""
    d = shared
    creds = await d.new_account("skew")
    async with d.client(creds) as real, d.client(creds) as agreeing:
        for step in (-240.0, -120.0, +600.0, +120.0):  # shift: -4, -6, +4, +6 minutes
            await d.step(step)
            agreeing.offset_s = d.shift_s
            _, _, me = await agreeing.request("GET", "/v1/account")
            assert me["id"] == creds["account"]
            if abs(d.shift_s) < 300:
                _, _, me = await real.request("GET", "/v1/account")
                assert me["id"] == creds["account"]
                continue
            with pytest.raises(BridgeError) as err:
                await real.request("GET", "/v1/account")
            assert (err.value.status, err.value.code) == (401, "REQUEST_EXPIRED")
            told = err.value.message.split("server time ", 1)[1].split(";", 1)[0]
            server = datetime.strptime(told, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
            assert abs(server.timestamp() - d.now()) < 3, err.value.message


# -- sends across a backward step ----------------------------------------------------------------


async def test_sends_before_and_after_a_backward_step_are_all_delivered_listed_and_counted(
    shared: SteppedDaemon,
) -> None:
    d = shared
    creds = await d.new_account("backward")
    async with d.client(creds) as c:
        a = (await c.send("+8613800000001", text="before the step"))["messages"][0]["id"]
        # Final before the step: one still queued at the step waits (test_queued_backlog_...).
        assert (await final(c, a))["status"] == "delivered"
        await d.step(-2 * HOUR)
        c.offset_s = d.shift_s
        b = (await c.send("+8613800000002", text="after the step"))["messages"][0]["id"]
        assert (await final(c, b))["status"] == "delivered"
        # Ids embed the daemon's clock: B, accepted later, carries a time 2 h before A's.
        ta, tb = id_time_ms(a, "msg_"), id_time_ms(b, "msg_")
        assert ta is not None and tb is not None
        assert 2 * HOUR * 1000 - 60_000 < ta - tb < 2 * HOUR * 1000 + 60_000

        # Every message once through the cursor, whatever the clock did between them.
        seen: list[str] = []
        cursor = None
        for _ in range(5):
            page = await c.messages(limit=1, **({"cursor": cursor} if cursor else {}))
            seen += [m["id"] for m in page["messages"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted([a, b])

        days = sorted({datetime.fromtimestamp(t / 1000, UTC).date().isoformat() for t in (ta, tb)})
        by_day = set()
        for day in days:
            by_day |= {m["id"] for m in (await c.messages(date=day))["messages"]}
        assert by_day == {a, b}
        stats = await c.request("GET", "/v1/stats", query={"from": days[0], "to": days[-1]})
        total = stats[2]["totals"]
        assert (total["submitted"], total["delivered"]) == (2, 2), stats[2]


async def test_queued_backlog_keeps_draining_after_a_backward_step(
    stepped: Callable[..., SteppedDaemon],
) -> None:
    """One message in flight at a time, 2 submits/s: a batch of five is a backlog of four. A
    step of the clock 10 minutes back must not stop it."""
    d = stepped(smscs=[{"window": 1, "tps": 2}], pipeline={"in_flight_windows": 1})
    creds = await d.new_account("backlog")
    numbers = [f"+861380000010{i}" for i in range(5)]
    async with d.client(creds) as c:
        await c.send(numbers, text="backlog")

        async def sent() -> int:
            return int((await d.sim("GET", "/stats"))["counters"].get("submit_ok", 0))

        await wait_for(sent, 5)
        await d.step(-10 * MIN)

        async def sent_all() -> bool:
            return await sent() >= len(numbers)

        done = await wait_for(sent_all, 3.0, 0.1, strict=False)
        assert done, (await sent(), await d.admin("GET", "/admin/queue"))


# -- replay protection across a forward step that is corrected -----------------------------------


async def test_replayed_request_is_refused_after_a_forward_step_is_corrected(
    shared: SteppedDaemon,
) -> None:
    """A request captured on the wire, replayed within the signing skew, is refused
    NONCE_REUSED, even when the clock went 11 minutes forward and back in between."""
    d = shared
    creds = await d.new_account("nonce")
    number = "+8613800000201"
    async with d.client(creds) as c:
        await c.request("POST", "/v1/optouts", json_body={"numbers": [number]})
        captured = c.sent[-1]
        nonce = captured[4]["X-Bridge-Nonce"]
        at = await d.step(+11 * MIN)  # past the nonce's 2 x skew + 1 s
        await through_a_sweep(lambda: not d.query("SELECT 1 FROM nonces WHERE nonce=?", nonce), at)
        await d.step(-11 * MIN)  # corrected: the capture is well inside the skew again
        await c.request("DELETE", f"/v1/optouts/{number}")  # the account lifts its opt-out
        status, body = await replay(d, captured)
        assert status == 401, (status, body)
        assert body["error"]["code"] == "NONCE_REUSED", body


async def test_idempotent_retry_after_a_forward_step_is_corrected_sends_once(
    shared: SteppedDaemon,
) -> None:
    """A send retried with its Idempotency-Key is answered with the first 202 for 24 h of real
    time, even when the clock went 25 hours forward and back in between."""
    d = shared
    creds = await d.new_account("idem")
    number = IDEM_NUMBER
    key = str(uuid.uuid4())
    async with d.client(creds) as c:
        first = (await c.send(number, text="once", idempotency_key=key))["messages"][0]["id"]
        await final(c, first)
        at = await d.step(+25 * HOUR)
        await through_a_sweep(lambda: not d.query("SELECT 1 FROM idempotency WHERE key=?", key), at)
        await d.step(-25 * HOUR)
        again = (await c.send(number, text="once", idempotency_key=key))["messages"][0]["id"]
        assert again == first
        await asyncio.sleep(0.5)
        assert await d.submitted_to(number) == 1


# -- limits across steps -------------------------------------------------------------------------


async def _sends(c: BridgeClient, numbers: str | list[str], n: int) -> list[str]:
    """`n` single sends as fast as they go (to `numbers` in turn): the codes, "ok" for an
    accepted one."""
    out = []
    for i in range(n):
        number = numbers if isinstance(numbers, str) else numbers[i % len(numbers)]
        try:
            await c.send(number, text=f"burst {i}")
            out.append("ok")
        except BridgeError as exc:
            out.append(exc.code)
    return out


async def test_rate_bucket_refills_after_a_backward_step(shared: SteppedDaemon) -> None:
    d = shared
    creds = await d.new_account("rate-back", tps=2)
    async with d.client(creds) as c:
        got = await _sends(c, [f"+86138000004{i:02d}" for i in range(4)], 4)
        assert got[:2] == ["ok", "ok"] and "ACCOUNT_RATE_LIMIT" in got, got
        await d.step(-2 * HOUR)
        c.offset_s = d.shift_s
        await asyncio.sleep(1.5)  # 2/s: the bucket (2 tokens) is full again by real time
        after = await _sends(c, [f"+86138000004{i:02d}" for i in range(10, 14)], 4)
        assert after.count("ok") >= 1, after  # not locked out
        assert after.count("ok") <= 3, after  # and no burst past the bucket


async def test_limits_are_not_burst_by_steps(shared: SteppedDaemon) -> None:
    """A backward step does not reopen a frequency window (a send dated after now still counts)
    and a forward step fills the account's bucket no higher than its capacity."""
    d = shared
    creds = await d.new_account("freq")
    number = "+8613800000501"
    async with d.client(creds) as c:
        assert await _sends(c, number, 2) == ["ok", "FREQUENCY_LIMIT_MINUTE"]
        await d.step(-10 * MIN)
        c.offset_s = d.shift_s
        assert await _sends(c, number, 2) == ["FREQUENCY_LIMIT_MINUTE"] * 2
        await d.step(+10 * MIN)
        c.offset_s = d.shift_s

    creds = await d.new_account("rate-fwd", tps=2)
    async with d.client(creds) as c:
        assert await _sends(c, "+8613800000502", 1) == ["ok"]
        await d.step(+2 * HOUR)
        c.offset_s = d.shift_s
        burst = await _sends(c, [f"+86138000005{i:02d}" for i in range(10, 15)], 5)
        assert 2 <= burst.count("ok") <= 3, burst  # capacity 2 (+ what refills meanwhile)


async def test_frequency_retry_after_holds_after_a_backward_step(shared: SteppedDaemon) -> None:
    """A 429's Retry-After says when the window opens again (README, bridge/client.py): after
    the clock stepped back, a retry once that time has passed on the daemon's clock must not be
    refused by the same window again."""
    d = shared
    creds = await d.new_account("freq-retry")
    number = "+8613800000511"
    async with d.client(creds) as c:
        assert await _sends(c, number, 1) == ["ok"]
        await d.step(-10 * MIN)
        c.offset_s = d.shift_s
        status, headers, body = await raw_send(d, c, number)
        assert (status, body["error"]["code"]) == (429, "FREQUENCY_LIMIT_MINUTE"), body
        wait = int(headers["Retry-After"])
        await d.step(wait + 1)  # the wait, as the daemon's clock counts it
        c.offset_s = d.shift_s
        status, headers, body = await raw_send(d, c, number)
        assert status == 202, (wait, status, headers.get("Retry-After"), body)


async def raw_send(
    d: SteppedDaemon, c: SteppedClient, number: str
) -> tuple[int, dict[str, str], Any]:
    """A signed send through the client's signing, answered as it comes (headers included)."""
    body = json.dumps({"to": number, "text": "raw"}).encode()
    headers = c.signed_headers(
        "POST",
        "/v1/messages",
        "",
        body,
        {"Content-Type": "application/json", "Idempotency-Key": str(uuid.uuid4())},
    )
    assert d.http is not None
    async with d.http.post(d.url + "/v1/messages", data=body, headers=headers) as r:
        return r.status, dict(r.headers), await r.json(content_type=None)


# -- scheduled messages --------------------------------------------------------------------------


async def test_scheduled_message_is_sent_once_across_steps(shared: SteppedDaemon) -> None:
    """Scheduled 5 min ahead with 30 min validity: a step back does not send it early, a step
    forward past its time sends it (not expired), the step back again does not send it twice."""
    d = shared
    creds = await d.new_account("sched")
    number = "+8613800000601"
    when = datetime.fromtimestamp(d.now() + 5 * MIN, UTC).isoformat()
    async with d.client(creds) as c:
        mid = (await c.send(number, text="later", scheduled_at=when, validity_minutes=30))[
            "messages"
        ][0]["id"]
        await d.step(-10 * MIN)
        await asyncio.sleep(0.6)
        assert await d.submitted_to(number) == 0
        await d.step(+20 * MIN)  # 10 min past the real time: 5 min past the schedule
        c.offset_s = d.shift_s
        m = await final(c, mid)
        assert m["status"] == "delivered", m
        await d.step(-10 * MIN)  # back to the real time: before the schedule again
        c.offset_s = d.shift_s
        await asyncio.sleep(0.6)
        assert await d.submitted_to(number) == 1
        assert (await c.message(mid))["status"] == "delivered"


# -- receipts and the 72 h rule ------------------------------------------------------------------


async def test_receipts_across_a_73h_forward_step_end_consistently_with_the_money(
    stepped: Callable[..., SteppedDaemon],
) -> None:
    """Sent, the receipt (UNDELIV) still on its way, the clock steps +73 h: the sweep applies
    the 72 h rule by the daemon's clock (unknown, billed), and the receipt that comes after
    does not leave the message and the money disagreeing: unknown or delivered is charged
    once, failed is refunded; nothing stays 'sent'."""
    d = stepped()
    await d.sim("POST", "/config", {"receipt_delay_ms": 6_000, "outcomes": {"UNDELIV": 1}})
    creds = await d.new_account("receipts")
    async with d.client(creds) as c:
        mid = (await c.send("+8613800000701", text="receipt later"))["messages"][0]["id"]

        async def sent() -> bool:
            return (await c.message(mid))["status"] == "sent"

        await wait_for(sent, 5)
        at = await d.step(+73 * HOUR)
        c.offset_s = d.shift_s

        async def status() -> str:
            return str((await c.message(mid))["status"])

        await through_a_sweep(lambda: _is(status, "unknown"), at)
        # The receipt comes 6 s after the submit, after that sweep; acknowledged once applied.
        await wait_for(lambda: _receipts_acked(d), 8, 0.1)
        m = await c.message(mid)
        assert m["status"] in ("unknown", "failed", "delivered"), m
        status_code, balance = await d.admin("GET", f"/admin/accounts/{creds['account']}/balance")
        assert status_code == 200, balance
        cash = _cash(balance)
        if m["status"] == "failed":
            assert cash == FUNDS, (m, balance)
        else:
            assert cash == FUNDS - PRICE, (m, balance)


async def _receipts_acked(d: SteppedDaemon) -> bool:
    return bool((await d.sim("GET", "/stats"))["counters"].get("receipts_acked", 0))


async def _is(status: Callable[[], Awaitable[str]], want: str) -> bool:
    return await status() == want


def _cash(balance: dict[str, Any]) -> int:
    for k in ("cash_micro", "available_domestic_micro"):
        if k in balance:
            return int(balance[k])
    raise AssertionError(f"no cash in {balance}")


# -- webhook retries -----------------------------------------------------------------------------


class Hook:
    """A status callback answering `status`; every attempt kept with its monotonic time."""

    def __init__(self) -> None:
        self.status = 500
        self.attempts: list[tuple[float, int, Any]] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def _handle(self, request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        self.attempts.append((time.monotonic(), self.status, body))
        return web.Response(status=self.status)

    async def __aenter__(self) -> Hook:
        app = web.Application()
        app.router.add_post("/hook", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def test_webhook_retry_is_not_stuck_after_a_backward_step(shared: SteppedDaemon) -> None:
    """A report whose first POST failed (retry due 2 s later) is retried about then, its
    receiver back up, though the clock stepped 10 minutes back meanwhile."""
    d = shared
    async with Hook() as hook:
        creds = await d.new_account("hook-back", status_callback_url=hook.url)
        async with d.client(creds) as c:
            await c.send("+8613800000801", text="report me")
            await wait_for(lambda: hook.attempts, 5, 0.02)
            await asyncio.sleep(0.3)  # the failure is booked (next attempt in 2 s)
            hook.status = 204
            await d.step(-10 * MIN)
            delivered = await wait_for(
                lambda: any(a[1] == 204 for a in hook.attempts), 3.0, 0.1, strict=False
            )
            assert delivered, d.query(
                "SELECT state, attempts, next_attempt_at FROM webhook_outbox WHERE account_id=?",
                creds["account"],
            )


async def test_webhook_retry_after_a_forward_step_goes_at_once_without_a_storm(
    shared: SteppedDaemon,
) -> None:
    """A failed report (retry due in 2 s, then hourly) and the clock 2 h forward: the due retry
    goes at once, once, and the next waits its hour (no storm of catch-up attempts)."""
    d = shared
    async with Hook() as hook:
        creds = await d.new_account("hook-fwd", status_callback_url=hook.url)
        async with d.client(creds) as c:
            await c.send("+8613800000901", text="report me")
            await wait_for(lambda: hook.attempts, 5, 0.02)
            await asyncio.sleep(0.3)
            stepped_at = await d.step(+2 * HOUR)
            await wait_for(lambda: len(hook.attempts) >= 2, 3, 0.05)
            assert hook.attempts[1][0] - stepped_at < 1.5  # due at once, not after its 2 s
            await asyncio.sleep(1.2)
            assert len(hook.attempts) == 2  # the next is an hour away: no storm
