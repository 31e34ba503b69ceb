"""Chaos soak: a steady mix of 1-part and 3-part sends into a `server.workers: 2` daemon whose
owner is `kill -9`ed three times, one of whose acceptors is killed once, and whose binds the
SMSC drops once, against an SMSC that throttles, errs and fails some deliveries. Afterwards, on a
clean daemon: nothing accepted is lost or stuck, nothing is accepted twice, resends at the SMSC
stay within what crashes may resend, parts go out in order, the money adds up and every final
status is reported.

The daemon is a real subprocess (`python -m bridge.cli run`), the simulator runs in the test so
it outlives every crash and records each submit_sm it accepted (a recording Reassembler: the
simulator itself keeps only whole messages). Set CHAOS_SEED to replay a run's random choices
(the kill moments; the processes' own timing still varies).

The second test kills an owner while its acceptors are still starting, which the soak avoids.
Found by this test (session 21): such acceptors never stopped. Each read its owner's pid with
os.getppid() as its Daemon was built, when the pid was already the reaper's; the supervisor now
passes the owner's pid in SMPP_BRIDGE_OWNER_PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import aiohttp
import pytest

from bridge.client import BridgeClient, BridgeError
from bridge.config import TariffConfig
from bridge.sim.server import SimSmsc
from bridge.smpp.reassembly import Reassembler, Segment, SimMessage
from tests.e2e.harness import (
    ADMIN_TOKEN,
    DaemonProcess,
    WebhookReceiver,
    config_dict,
    free_port,
    make_config,
    proc_stat,
    wait_until,
)

pytestmark = pytest.mark.slow

WINDOW = 10
BINDS = 2
IN_FLIGHT_WINDOWS = 2
OWNER_KILLS = 3
N_SINGLE = 2250
N_TRIPLE = 750
RATE = 100.0  # logical messages offered per second
SENDERS = 8  # client tasks sharing the paced schedule
TOPUP_CNY = 10_000
PRICE = TariffConfig().starting_price  # micro-units per billable unit, domestic pre-charge
FINAL = ("delivered", "failed", "expired", "unknown")
BILLED = ("delivered", "unknown")


# -- what the SMSC saw ---------------------------------------------------------------------------


@dataclass(slots=True)
class Submit:
    """One submit_sm the simulator accepted (ESME_ROK), in arrival order."""

    order: int
    destination: str
    scheme: str
    ref: int
    total: int
    seq: int
    smsc_id: str
    stat: str | None = None  # the receipt state the simulator drew for it


class RecordingReassembler(Reassembler):
    """The simulator's reassembler, also recording every accepted segment: it is called once per
    submit_sm answered ESME_ROK, with the id that answer carried."""

    def __init__(self, submits: list[Submit]) -> None:
        super().__init__()
        self.submits = submits

    def add(
        self,
        system_id: str,
        source: str,
        destination: str,
        seg: Segment,
        message_id: str,
        now: float,
    ) -> SimMessage | None:
        self.submits.append(
            Submit(
                len(self.submits),
                destination,
                seg.scheme,
                seg.ref,
                seg.total,
                seg.seq,
                message_id,
            )
        )
        return super().add(system_id, source, destination, seg, message_id, now)


def instrument(sim: SimSmsc, submits: list[Submit]) -> None:
    sim.reassembler = RecordingReassembler(submits)
    draw = sim._draw_outcome  # drawn right after the segment was recorded, for its receipt

    def drawing() -> str:
        stat = draw()
        submits[-1].stat = stat
        return stat

    sim._draw_outcome = drawing  # type: ignore[method-assign]


# -- processes -----------------------------------------------------------------------------------


class Proc(NamedTuple):
    pid: int
    start: int  # start time in clock ticks: tells a reused pid apart


def alive(p: Proc) -> bool:
    st = proc_stat(p.pid)
    return st is not None and st[2] == p.start and st[1] not in ("Z", "X")


def children(ppid: int) -> list[Proc]:
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None and st[0] == ppid and st[1] not in ("Z", "X"):
                out.append(Proc(int(name), st[2]))
    return out


def listening(daemon: DaemonProcess, p: Proc) -> bool:
    """Whether acceptor `p` logged that it listens (it is past its start-up)."""
    return any(
        "acceptor listening on" in line and f":{p.pid}, store " in line
        for line in daemon.log.read_text(errors="replace").splitlines()
    )


def _owner_state(daemon: DaemonProcess) -> str:
    """What to look at when acceptors do not come up: the owner's state, the processes under
    it, and the end of the daemon's log (pytest keeps only the last three runs' directories)."""
    assert daemon.proc is not None
    owner = daemon.proc.pid
    kids = children(owner)
    tail = daemon.log.read_text(errors="replace").splitlines()[-25:]
    return (
        f"owner {owner} /proc/stat {proc_stat(owner)}, exit code {daemon.proc.poll()}; children "
        f"{[(k.pid, proc_stat(k.pid), _is_acceptor(k)) for k in kids]}, listening "
        f"{[listening(daemon, k) for k in kids]}; the log's end:\n" + "\n".join(tail)
    )


def _is_acceptor(p: Proc) -> bool:
    """Whether `p` runs the acceptor's command line yet (a forked child shows its parent's
    until it execs). The arguments `--role acceptor`, not the word: the owner's own command
    line holds this test's temporary path, "...test_acceptors_stop_when...", so a child not
    yet exec'd matched, was stopped before its exec, held the owner in Popen, and the second
    acceptor was never forked (the CI failure of sessions 34 and 35, found by _owner_state)."""
    try:
        return b"\x00--role\x00acceptor\x00" in Path(f"/proc/{p.pid}/cmdline").read_bytes()
    except OSError:
        return False


def cpu_s(p: Proc) -> float:
    """CPU time process `p` used so far (user and system)."""
    fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_of(pid: int) -> Proc:
    st = proc_stat(pid)
    assert st is not None, pid
    return Proc(pid, st[2])


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args],
        capture_output=True,
        text=True,
        check=check,
        timeout=60,
    )


# -- the messages --------------------------------------------------------------------------------


def number(i: int) -> str:
    return f"+86138{i:08d}"


def text(i: int, parts: int) -> str:
    if parts == 1:
        return f"chaos {i:05d}: one part"
    # GSM 7-bit, 420 characters: three UDH parts of at most 153.
    body = f"chaos {i:05d}: three parts " + "".join(
        f"[{i:05d}-{k:03d}] abcdefghij" for k in range(20)
    )
    return body[:420]


async def list_messages(client: BridgeClient, **query: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = await client.messages(limit=200, cursor=cursor, **query)
        out += page["messages"]
        cursor = page["next_cursor"]
        if cursor is None:
            return out


async def ledger(client: BridgeClient) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = "0"
    while cursor is not None:
        _, _, page = await client.request(
            "GET", "/v1/ledger", query={"cursor": cursor, "limit": 1000}
        )
        out += page["entries"]
        cursor = page["next_cursor"]
    return out


def check_order(records: list[Submit], parts: int) -> str | None:
    """None when the accepted parts of one message went out in order in every send attempt:
    part k right after part k-1 of the same attempt, and an attempt that starts at part k > 1
    (it resumes after a retry) only once part k-1 was accepted before."""
    if {(r.scheme, r.total) for r in records} != {("udh8", parts)}:
        return f"concatenation headers {sorted({(r.scheme, r.total) for r in records})}"
    if len({r.ref for r in records}) != 1:
        return f"references {sorted({r.ref for r in records})}"
    seen: set[int] = set()
    prev = 0
    for r in records:
        if r.seq != prev + 1:  # a new attempt, or a part out of order
            if r.seq > prev + 1 or (r.seq > 1 and r.seq - 1 not in seen):
                return f"parts in the order {[x.seq for x in records]}"
        seen.add(r.seq)
        prev = r.seq
    if seen != set(range(1, parts + 1)):
        return f"parts accepted {sorted(seen)}"
    return None


def check_wholes(
    sim: SimSmsc,
    index_of: dict[str, int],
    by_dest: dict[int, list[Submit]],
    order: list[int],
    texts: list[str],
) -> None:
    """Each message reassembled at the SMSC as it was sent (`texts[i]`, its copies too), and
    its parts (`order[i]`) in order within each attempt, under one reference."""
    whole = defaultdict(set)
    for m in list(sim.messages):
        whole[index_of[m.destination]].add(m.text)
    wrong = [i for i, t in enumerate(texts) if whole[i] != {t}]
    assert not wrong, [(i, whole[i]) for i in wrong[:5]]
    disorder = {
        i: why
        for i, parts in enumerate(order)
        if parts > 1 and (why := check_order(by_dest[i], parts)) is not None
    }
    assert not disorder, list(disorder.items())[:10]


async def settle(
    client: BridgeClient, accepted: dict[int, str], within_s: float
) -> tuple[dict[str, dict[str, Any]], dict[str, str | None]]:
    """Until nothing is queued or sent (at most `within_s`; what is left open is reported by
    the checks): every message listed, and the status of each accepted one."""

    async def settled() -> bool:
        for state in ("queued", "sent"):
            if (await client.messages(status=state, limit=1))["messages"]:
                return False
        return True

    with contextlib.suppress(AssertionError):
        await wait_until(settled, within_s, 0.5)
    listed = {m["id"]: m for m in await list_messages(client)}
    return listed, {mid: listed.get(mid, {}).get("status") for mid in accepted.values()}


async def reports_of(receiver: WebhookReceiver, finals: dict[str, str | None]) -> None:
    """Until every final message was reported (at most 60 s; what is missing is reported by
    check_reports)."""

    def reported() -> bool:
        got = {r["message_id"] for r in receiver.reports}
        return all(mid in got for mid, st in finals.items() if st in FINAL)

    with contextlib.suppress(AssertionError):
        await wait_until(reported, 60, 0.2)


def check_outcomes(
    submits: list[Submit],
    index_of: dict[str, int],
    accepted: dict[int, str],
    recorded: dict[str, dict[int, tuple[str, str | None]]],
    finals: dict[str, str],
    order: list[int],
    stat_of: dict[str, str],
    unmatched: int,
) -> None:
    """The stored outcome is the SMSC's: each part records one of the ids the SMSC gave it, and
    the message is delivered exactly when every recorded part's receipt said so; the receipts
    that matched nothing are those of the copies whose id was never stored."""
    ids_of = defaultdict(set)
    for s in submits:
        ids_of[(index_of[s.destination], s.seq)].add(s.smsc_id)
    mismatched: list[Any] = []
    for i, mid in accepted.items():
        parts = recorded[mid]
        if finals[mid] not in ("delivered", "failed"):
            continue  # unknown or expired: parts may have no id (none seen so far)
        if sorted(parts) != list(range(1, order[i] + 1)) or any(
            raw not in ids_of[(i, k)] for k, (_s, raw) in parts.items()
        ):
            mismatched.append((i, mid, parts))
            continue
        expect = (
            "delivered"
            if all(stat_of[raw] == "DELIVRD" for _s, raw in parts.values())
            else "failed"
        )
        if finals[mid] != expect:
            mismatched.append((i, mid, finals[mid], parts))
    assert not mismatched, mismatched[:10]
    stored_ids = {raw for parts in recorded.values() for _s, raw in parts.values()}
    assert unmatched == sum(1 for s in submits if s.smsc_id not in stored_ids)


def check_money(
    bill: subprocess.CompletedProcess[str],
    entries: list[dict[str, Any]],
    finals: dict[str, str],
    units: dict[str, int],
    balance: dict[str, Any],
    billed: int,
    topup_cny: int,
) -> None:
    """The pockets agree with the ledger (`bill check`); each message charged once, refunded
    once exactly when it failed or expired; the balance is the top-up less what is billed."""
    assert bill.returncode == 0, bill.stdout + bill.stderr
    checked = json.loads(bill.stdout)
    assert checked["ok"] is True and checked["differences"] == [], checked
    charges: dict[str, list[int]] = defaultdict(list)
    refunds: dict[str, list[int]] = defaultdict(list)
    for e in entries:
        if e["kind"] == "charge":
            charges[e["ref"]].append(e["amount_micro"])
        elif e["kind"] == "refund":
            refunds[e["ref"]].append(e["amount_micro"])
    wrong_money = []
    for mid, s in finals.items():
        price = units[mid] * PRICE
        want = [price] if s in ("failed", "expired") else []
        if charges.get(mid) != [-price] or refunds.get(mid, []) != want:
            wrong_money.append((mid, s, charges.get(mid), refunds.get(mid)))
    assert not wrong_money, wrong_money[:10]
    assert set(charges) | set(refunds) <= set(finals)
    assert balance["cash_micro"] == topup_cny * 1_000_000 - billed, balance
    assert sum(e["amount_micro"] for e in entries) == balance["cash_micro"]


def check_reports(receiver: WebhookReceiver, finals: dict[str, str]) -> dict[str, list[Any]]:
    """Every final message reported with its final status; reports under one webhook_id are
    copies of each other. Returns the reports by webhook_id."""
    assert receiver.bad_signatures == 0
    by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in receiver.reports:
        by_id[r["webhook_id"]].append(r)
    differing = {w: rs for w, rs in by_id.items() if any(r != rs[0] for r in rs)}
    assert not differing, list(differing.items())[:5]
    got = {r["message_id"]: r for r in receiver.reports}
    unreported = [mid for mid in finals if mid not in got]
    assert not unreported, unreported[:20]
    wrong_report = [
        (mid, got[mid]["status"], s) for mid, s in finals.items() if got[mid]["status"] != s
    ]
    assert not wrong_report, wrong_report[:10]
    assert set(got) <= set(finals)
    return by_id


# -- the test ------------------------------------------------------------------------------------


def private_tmpdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The daemons' private directories (the acceptors' configuration copy) under the test's
    own $TMPDIR: a daemon starting elsewhere (another test) removes those of dead owners from
    the shared one, and an acceptor still starting then failed for want of its file."""
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setenv("TMPDIR", str(private))


async def test_chaos_soak(tmp_path, monkeypatch):
    private_tmpdir(tmp_path, monkeypatch)
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1 << 32))
    rng = random.Random(seed)
    print(f"\nchaos seed {seed}")
    began = time.monotonic()
    loop = asyncio.get_running_loop()

    sim_port = free_port()
    cfg = config_dict(
        tmp_path,
        server={"workers": 2},
        sim={"enabled": False, "port": sim_port},
        smscs=[{"port": sim_port, "window": WINDOW, "binds": BINDS}],
        pipeline={"in_flight_windows": IN_FLIGHT_WINDOWS},
    )
    sim = SimSmsc(
        replace(
            make_config(tmp_path).sim,
            port=sim_port,
            control_port=free_port(),
            receipt_delay_ms=150,
        ),
        rng=random.Random(seed),
    )
    sim.throttle_ratio = 0.02
    sim.syserr_ratio = 0.01
    sim.outcomes = {"DELIVRD": 0.92, "UNDELIV": 0.05, "REJECTD": 0.03}
    # A real SMSC keeps offering a receipt until it is acknowledged: every crash with one on the
    # wire costs an attempt, and the default 4 could be used up by the crashes alone.
    sim.receipt_max_attempts = 50
    submits: list[Submit] = []
    instrument(sim, submits)
    await sim.start()
    receiver = WebhookReceiver()
    await receiver.start()
    daemon = DaemonProcess(tmp_path, cfg)
    generations: list[Proc] = []  # every daemon process started (owners and acceptors)
    tasks: list[asyncio.Task[None]] = []
    try:
        out = cli(
            "account",
            "create",
            "chaosco",
            "--raw-text",
            "--topup",
            str(TOPUP_CNY),
            "--callback",
            receiver.url,
            "--config",
            str(daemon.path),
        )
        creds = json.loads(out.stdout)
        receiver.secret = creds["webhook_secret"]
        daemon.start()
        await daemon.wait_ready(30)

        async def acceptors_up() -> list[Proc]:
            """The owner's two acceptors, once both listen. Not sooner: an acceptor whose owner
            dies while it starts never stops (see the next test), and the chaos below kills
            running daemons."""
            assert daemon.proc is not None
            owner = daemon.proc.pid
            try:
                await wait_until(
                    lambda: (
                        len(kids := children(owner)) == 2
                        and all(listening(daemon, k) for k in kids)
                    ),
                    30,
                    0.05,
                )
            except AssertionError:
                # What to look at when it happens (once in CI, session 32, seed 2950513168: a
                # restarted acceptor found its owner gone at its first second, and no restart
                # followed): the owner's state and the processes under it.
                raise AssertionError(f"acceptors not up: {_owner_state(daemon)}") from None
            kids = children(owner)
            generations.extend(k for k in kids if k not in generations)
            return kids

        generations.append(proc_of(daemon.proc.pid))
        await acceptors_up()

        # -- the client: a paced schedule, each send retried with its key until it is taken ----
        order = [1] * N_SINGLE + [3] * N_TRIPLE
        rng.shuffle(order)
        n = len(order)
        keys = [str(uuid.uuid4()) for _ in range(n)]
        answers: dict[int, list[str]] = defaultdict(list)  # every message id each key got
        first: dict[int, dict[str, Any]] = {}  # the message of each logical send, as answered
        failures: Counter[str] = Counter()  # retried failures, by kind
        unexpected: list[str] = []
        next_index = itertools.count()
        t0 = loop.time()
        give_up_at = t0 + n / RATE + 90

        async def send_one(client: BridgeClient, i: int) -> None:
            attempt = 0
            while True:
                attempt += 1
                try:
                    r = await client.send(
                        number(i), text=text(i, order[i]), idempotency_key=keys[i]
                    )
                except BridgeError as e:
                    if e.status != 503:  # only a daemon going away or coming back is expected
                        unexpected.append(f"{i}: {e}")
                    failures[f"{e.status} {e.code}"] += 1
                except (aiohttp.ClientError, TimeoutError, OSError) as e:
                    failures[type(e).__name__] += 1
                else:
                    assert r["count"] == 1, r
                    m = r["messages"][0]
                    answers[i].append(m["id"])
                    first.setdefault(i, m)
                    return
                assert loop.time() < give_up_at, f"message {i} not accepted: {failures}"
                await asyncio.sleep(min(1.0, 0.1 * attempt) * rng.uniform(0.5, 1.5))

        async def sender(client: BridgeClient) -> None:
            for i in next_index:
                if i >= n:
                    return
                await asyncio.sleep(max(0.0, t0 + i / RATE - loop.time()))
                await send_one(client, i)

        # -- the chaos --------------------------------------------------------------------------
        events = ["owner"] * OWNER_KILLS + ["acceptor", "drop"]
        rng.shuffle(events)
        log_lines: list[str] = []
        old_exit_s: list[float] = []

        async def kill_owner() -> None:
            assert daemon.proc is not None
            old = children(daemon.proc.pid)
            assert len(old) == 2, old
            killed_at = loop.time()
            daemon.kill9()
            log_lines.append(
                f"owner killed at {killed_at - t0:.1f} s, {len(first)} accepted, "
                f"{len(submits)} submits at the SMSC"
            )
            await asyncio.sleep(rng.uniform(0.0, 0.5))  # a supervisor restarts it
            daemon.start()
            generations.append(proc_of(daemon.proc.pid))
            # The old acceptors notice their owner is gone and stop by themselves.
            await wait_until(lambda: not any(alive(p) for p in old), 15, 0.05)
            old_exit_s.append(loop.time() - killed_at)
            await daemon.wait_ready(30)
            await acceptors_up()

        async def kill_acceptor() -> None:
            assert daemon.proc is not None
            owner = daemon.proc.pid
            kids = children(owner)
            victim = rng.choice(kids)
            os.kill(victim.pid, signal.SIGKILL)
            log_lines.append(f"acceptor {victim.pid} killed at {loop.time() - t0:.1f} s")
            # The other acceptor keeps the port: the API answers while the slot restarts.
            answered = []
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True),
                timeout=aiohttp.ClientTimeout(total=2),
            ) as s:
                for _ in range(20):
                    with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                        async with s.get(f"http://127.0.0.1:{daemon.port}/healthz") as r:
                            answered.append(r.status)
                    await asyncio.sleep(0.02)
            assert 200 in answered, answered
            # The supervisor starts a new one in its slot; the owner goes on.
            now = await acceptors_up()
            assert len([k for k in now if k not in kids]) == 1, (kids, now)
            assert daemon.proc.poll() is None and daemon.proc.pid == owner
            assert not alive(victim)

        async def drop_binds() -> None:
            before = sim.counters["dropped_connections"]
            sim.drop_after_pdus = 1  # every bind is dropped at its next PDU
            try:
                await wait_until(
                    lambda: sim.counters["dropped_connections"] >= before + BINDS, 10, 0.002
                )
            finally:
                sim.drop_after_pdus = 0
            log_lines.append(
                f"binds dropped at {loop.time() - t0:.1f} s: "
                f"{sim.counters['dropped_connections'] - before} connections"
            )

        chaos_end: list[float] = []

        async def chaos() -> None:
            """The events at random moments, all while the client still sends: each waits up to
            its share of the schedule's time left, less ~3 s per owner restart still to come."""
            for k, what in enumerate(events):
                left = t0 + n / RATE - loop.time() - 3.0 * events[k:].count("owner")
                await asyncio.sleep(rng.uniform(0.3, min(4.0, max(0.3, left / (len(events) - k)))))
                await {"owner": kill_owner, "acceptor": kill_acceptor, "drop": drop_binds}[what]()
            chaos_end.append(loop.time() - t0)

        async with BridgeClient(
            f"http://127.0.0.1:{daemon.port}",
            creds["app_key"],
            creds["app_secret"],
            max_retries=0,  # the senders retry themselves, with the same key
            timeout_s=15,
        ) as client:
            load_end: list[float] = []

            async def load() -> None:
                await asyncio.gather(*(sender(client) for _ in range(SENDERS)))
                load_end.append(loop.time() - t0)

            tasks.append(asyncio.create_task(chaos()))
            tasks.append(asyncio.create_task(load()))
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in tasks:  # the first failure, at once (the other side is cancelled below)
                if task.done():
                    task.result()
            await asyncio.gather(*tasks)
            load_s, chaos_s = load_end[0], chaos_end[0]
            accepted = {i: answers[i][0] for i in range(n) if answers[i]}
            assert len(accepted) == n

            # A client unsure of an answer sends again with the same key: the same message.
            sample = rng.sample(range(n), 200)
            for i in sample:
                await send_one(client, i)

            # -- settle on the clean daemon -----------------------------------------------------
            listed, finals = await settle(client, accepted, 60)
            settle_s = loop.time() - t0
            await reports_of(receiver, finals)
            reported_s = loop.time() - t0
            balance = await client.balance()
            entries = await ledger(client)

        url = f"http://127.0.0.1:{daemon.port}"
        # Off the event loop: the simulator and the webhook receiver run on it.
        status_cli = await asyncio.to_thread(
            cli, "status", "--url", url, "--token", ADMIN_TOKEN, "--json", check=False
        )
        assert daemon.proc is not None
        last = children(daemon.proc.pid)
        unbinds = sim.counters["unbinds"]
        stopping = loop.time()
        rc = await asyncio.to_thread(daemon.terminate, 30)
        stop_s = loop.time() - stopping
        unbinds = sim.counters["unbinds"] - unbinds
        await wait_until(lambda: not any(alive(p) for p in last), 15, 0.05)
        leftover = [p for p in generations if alive(p)]
        bill = await asyncio.to_thread(
            cli, "bill", "check", "--config", str(daemon.path), check=False
        )
        db = sqlite3.connect(f"file:{tmp_path / 'bridge.db'}?mode=ro", uri=True)
        try:
            segments = db.execute(
                "SELECT message_id, seq, state, smsc_msg_id_raw FROM segments"
            ).fetchall()
            unmatched = db.execute(
                "SELECT COUNT(DISTINCT smsc_msg_id) FROM pending_receipts"
            ).fetchone()[0]
        finally:
            db.close()
        wall = time.monotonic() - began

        # -- what happened --------------------------------------------------------------------
        index_of = {number(i)[1:]: i for i in range(n)}
        by_dest: dict[int, list[Submit]] = defaultdict(list)
        for s in submits:
            by_dest[index_of[s.destination]].append(s)
        per_part = Counter((index_of[s.destination], s.seq) for s in submits)
        dup_parts = sum(c - 1 for c in per_part.values())
        dup_messages = sum(
            1 for i in range(n) if any(per_part[(i, k)] > 1 for k in range(1, order[i] + 1))
        )
        counts = Counter(finals.values())
        units = {accepted[i]: first[i]["billable_units"] for i in range(n)}
        billed = sum(units[mid] * PRICE for mid, s in finals.items() if s in BILLED)
        stat_of = {s.smsc_id: s.stat for s in submits}
        recorded: dict[str, dict[int, tuple[str, str | None]]] = defaultdict(dict)
        for mid, seq, state, raw in segments:
            recorded[mid][seq] = (state, raw)
        kills = OWNER_KILLS
        bound = kills * IN_FLIGHT_WINDOWS * WINDOW * BINDS
        print(
            f"chaos soak (seed {seed}): {n} accepted ({N_TRIPLE} of 3 parts), "
            f"{kills} owner kills + 1 acceptor kill + "
            f"{sim.counters['dropped_connections']} binds dropped; duplicates "
            f"{dup_messages} messages / {dup_parts} parts (bound {bound} messages); "
            f"{dict(counts)}; balance {balance['cash_micro']} micro "
            f"(top-up {TOPUP_CNY * 1_000_000} - billed {billed}); {len(receiver.reports)} reports"
        )
        print(
            f"  timing: load {load_s:.1f} s, chaos over at {chaos_s:.1f} s, all final at "
            f"{settle_s:.1f} s, all reported at {reported_s:.1f} s, clean stop {stop_s:.1f} s, "
            f"old acceptors gone {max(old_exit_s, default=0):.1f} s after a kill at most, "
            f"wall {wall:.1f} s"
        )
        print(
            f"  client retries {dict(failures)}; SMSC {sim.counters['submit_ok']} accepted, "
            f"{sim.counters['throttled']} throttled, {sim.counters['syserr']} syserr, "
            f"{sim.counters['receipts_resent']} receipts resent; unmatched receipts {unmatched}"
        )
        for line in log_lines:
            print("  " + line)

        # -- the invariants -------------------------------------------------------------------
        assert not unexpected, unexpected[:20]
        assert len(old_exit_s) == OWNER_KILLS
        # Processes: after each kill the old acceptors stopped by themselves (checked above);
        # the clean stop ends everything, and nothing of any generation is left.
        assert rc == 0, daemon.log.read_text()[-3000:]
        assert unbinds == BINDS, unbinds  # a clean stop unbinds
        assert not leftover, leftover
        assert sim.counters["dropped_connections"] >= BINDS

        # 1. Every accepted message exists and is final.
        missing = [mid for mid in finals if mid not in listed]
        assert not missing, missing[:20]
        stuck = {mid: s for mid, s in finals.items() if s not in FINAL}
        assert not stuck, list(stuck.items())[:20]
        assert status_cli.returncode == 0, status_cli.stdout + status_cli.stderr
        queue = json.loads(status_cli.stdout)["queue"]
        assert queue["depth"] == 0, queue

        # 2. Each logical send was accepted once: every answer to its key named one message, and
        # the account holds exactly the messages of the logical sends.
        assert all(len(set(ids)) == 1 for ids in answers.values()), {
            i: ids for i, ids in answers.items() if len(set(ids)) > 1
        }
        assert len(set(accepted.values())) == n
        assert set(listed) == set(accepted.values()), len(listed)
        assert {m["to"] for m in listed.values()} == {number(i) for i in range(n)}
        assert all(first[i]["segments"] == order[i] for i in range(n))

        # 3. Every part reached the SMSC; copies only from crashes, within what may be in
        # flight: in_flight_windows windows of messages per bind per kill.
        never = [(i, k) for i in range(n) for k in range(1, order[i] + 1) if not per_part[(i, k)]]
        assert not never, never[:20]
        assert dup_messages <= bound, (dup_messages, bound)
        assert dup_parts <= bound * 3, (dup_parts, bound)
        # Each message the SMSC received whole, as it was sent.
        # 4. Whole at the SMSC, as sent; parts in order within each attempt, one reference.
        check_wholes(sim, index_of, by_dest, order, [text(i, k) for i, k in enumerate(order)])

        check_outcomes(submits, index_of, accepted, recorded, finals, order, stat_of, unmatched)
        check_money(bill, entries, finals, units, balance, billed, TOPUP_CNY)
        check_reports(receiver, finals)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(daemon.stop)
        for p in generations:  # what a failed check left behind
            if alive(p):
                os.kill(p.pid, signal.SIGKILL)
        await receiver.stop()
        await sim.stop()


async def test_acceptors_stop_when_the_owner_dies_while_they_start(tmp_path, monkeypatch):
    """The soak above kills owners whose acceptors are up. A crash loop (a kill, or the OOM
    killer, soon after a restart) kills one while they are still starting: they must stop by
    themselves all the same (README "Configuration": "acceptors stop by themselves when the
    owner process dies ..., so none is left serving a port with nothing behind it")."""
    private_tmpdir(tmp_path, monkeypatch)
    cfg = config_dict(tmp_path, server={"workers": 2})
    daemon = DaemonProcess(tmp_path, cfg)
    kids: list[Proc] = []
    try:
        daemon.start()
        assert daemon.proc is not None
        owner = daemon.proc.pid

        def hold_new() -> bool:
            """Stop each acceptor as soon as it runs its own program: the owner dies while they
            start however busy the machine is (with the test itself descheduled, a kill that
            was meant to land there came after their start-up). Not before its exec: the owner
            waits in Popen until the child has exec'd, so a child stopped between fork and exec
            (seen on a fast machine) held the owner there, and the second was never forked."""
            for k in children(owner):
                if k not in kids and _is_acceptor(k):
                    os.kill(k.pid, signal.SIGSTOP)
                    kids.append(k)
            return len(kids) == 2

        try:
            await wait_until(hold_new, 30, 0.001)
        except AssertionError:
            # Once in CI (session 34, unexplained: the run's directory was gone by then).
            raise AssertionError(
                f"{len(kids)} acceptor(s) held, not 2: {_owner_state(daemon)}"
            ) from None
        # Importing the daemon alone takes over a second of CPU: one that used less than 0.3 s
        # has not built its Daemon yet.
        if max(cpu_s(k) for k in kids) >= 0.3:
            pytest.skip(f"an acceptor was held too late ({[cpu_s(k) for k in kids]} s of CPU)")
        daemon.kill9()
        for k in kids:
            os.kill(k.pid, signal.SIGCONT)
        # Running acceptors stop about a second after their owner died (the soak measures it);
        # these need their start-up first: at load ~20 a start took up to ~30 s (session 62's
        # CI by hand ran out of the 10 s this was).
        await wait_until(lambda: not any(alive(k) for k in kids), 60, 0.05)
    finally:
        for k in kids:
            if alive(k):
                os.kill(k.pid, signal.SIGKILL)
        daemon.stop()
