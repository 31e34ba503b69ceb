#!/usr/bin/env python3
"""The simulated SMSC's own CPU per message, and what it writes for a seeded load, two trees.

Usage: python scripts/bench_sim.py [--kind gsm1|ucs3] [--messages 2000] [--callgrind] [--tree DIR]
       python scripts/bench_sim.py --compare OLD_TREE [--seeds 6] [--messages 600]

Why (session 60): `bench.py` runs the daemon, its load and the simulator (`smpp-bridge sim`) on
the same two cores, so the simulator's CPU comes out of the daemon's throughput; at session 60's
start it took ~170 µs a 3-part UCS-2 message and ~60 µs a 1-part one. This measures the simulator
process alone: it runs `bridge.sim`'s `SimSmsc` from `--tree` (this checkout by default) as a
child, as `smpp-bridge sim` does (asyncio's loop, the knobs of bench.py's `sim` section), and binds
to it over real TCP as a transceiver from this process, writing pre-built submit_sm (bench.py's
texts, made by the dispatcher's `submit_bodies`: UDH parts for `ucs3`) with a window of
`--window` parts, answering every deliver_sm receipt as it comes. It prints the child's CPU
seconds per message; `--callgrind` runs the child under valgrind's callgrind, counting only from
the first counted submit to the last receipt's resp read (the child switches counting on and off
itself, `callgrind_control -i`, when this process asks it on its stdin; an enquire_link after the
last deliver_sm_resp marks that the child has read them all), and prints instructions per message.
`--warm` messages go first, uncounted.

`--compare OLD_TREE` runs a seeded mix (GSM, UCS-2 and Latin-1 texts of one to four parts; UDH
with 8- and 16-bit references, SAR, message_payload; registered_delivery 0, 1 and 2; refused
destinations) against OLD_TREE's simulator and this one's, for each of `--seeds` seeds with other
knobs each (outcome mixes, throttle and syserr ratios, receipts_as, receipt_text_id, id_format,
receipt_parts, receipt_pdu data_sm, packed_gsm, answer_delay_ms; the sixth: two binds of the
system_id with a window of 3, deliver_sm_resps in every shape `decode` reads or refuses, the
receipt delay changed half-way, TONs, NPIs, service_type and 20-character addresses varied),
some receipts nacked (resent after receipt_retry_delay_ms), MO injected through the control API,
the simulator's RNG seeded and its wall clock fixed (a date near a year's end, another each
seed). It compares what the simulator wrote: every submit_sm_resp in order (octets), every
deliver_sm / data_sm with its sequence number masked (sorted: a resent receipt's place depends on
timing), the control API's counters and messages (their arrival time left out). Exit 1 when they
differ.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from children import Children  # scripts/ is the script's own folder

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))
# The simulator child (valgrind with it under --callgrind): ended with this script.
CHILDREN = Children()

TEXTS = {  # bench.py's
    "gsm1": "Your verification code is 123456. It expires in 5 minutes.",
    "ucs3": "【示例】您的验证码是123456，五分钟内有效。请勿泄露给他人。如非本人操作，请忽略本短信。"
    * 3,
}
MIX_TEXTS = (
    "Your verification code is {n}.",
    "验证码 {n}，五分钟内有效。",
    "Café crème à {n} € — reçu",
    "Long GSM text {n} {{[~]}} " + "lorem ipsum dolor sit amet " * 12,
    "长" * 150 + " {n}",
    "emoji {n} 😀😀 " * 9,
)


# The simulator child's interpreter, and whether it runs with `-X perf` (Python 3.12: each
# function entered through a trampoline of its own, named in /tmp/perf-PID.map, so that
# callgrind_annotate's inclusive counts attribute per Python function; README note 27).
CHILD_PYTHON: list[Any] = [sys.executable, False]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the child: the simulator ---------------------------------------------------------------------
def serve(args: argparse.Namespace) -> None:
    """Run SimSmsc from the tree on sys.path until stdin closes; `on`/`off` lines switch
    callgrind's counting of this process (answered `ok`), `stats` prints its counters, `cpu`
    its CPU seconds so far (all threads, to the nanosecond)."""
    from bridge.config import SimConfig
    from bridge.sim import server

    knobs = json.loads(args.knobs)
    if args.fixed_now:
        from datetime import datetime

        fixed = datetime.fromisoformat(args.fixed_now)

        class FixedClock(datetime):
            @classmethod
            def now(cls, tz: Any = None) -> Any:
                return fixed

        server.datetime = FixedClock  # type: ignore[misc]
    cfg = SimConfig(
        enabled=True,
        port=args.sim_port,
        control_port=args.ctl_port,
        system_id="bench",
        password="bench",
        receipt_delay_ms=knobs.pop("receipt_delay_ms", 10),
    )
    sim = server.SimSmsc(cfg, rng=random.Random(args.seed))
    refused = knobs.pop("refused_destinations", [])
    sim.refused_destinations.update(refused)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await sim.start()
        if knobs:
            from bridge.sim.control import apply_knobs

            apply_knobs(sim, knobs)
        done = asyncio.Event()

        def on_line() -> None:
            line = sys.stdin.readline().strip()
            if not line:
                loop.remove_reader(sys.stdin.fileno())
                done.set()
                return
            if line in ("on", "off"):
                if args.counting:
                    subprocess.run(
                        ["callgrind_control", "-i", line, str(os.getpid())],
                        check=True,
                        stdout=subprocess.DEVNULL,
                    )
                print("ok", flush=True)
            elif line == "stats":
                print(json.dumps(sim.counters), flush=True)
            elif line == "cpu":
                # Read here, not from /proc/PID/stat outside: that is in clock ticks (10 ms),
                # and a short run's CPU came out 0.0 there (session 61's stop).
                print(time.process_time(), flush=True)

        loop.add_reader(sys.stdin.fileno(), on_line)
        print(f"port {sim.port}", flush=True)
        await done.wait()
        # The ESME's close read first: a session still open at stop is cancelled in its
        # close, which asyncio logs as an error of the callback.
        await sim.wait_for(lambda s: not s._tasks, 5.0)
        await sim.stop()

    asyncio.run(main())


# --- this process: the ESME -----------------------------------------------------------------------
class Child:
    """The simulator child and its line protocol."""

    def __init__(self, tree: Path, seed: int, knobs: dict[str, Any], *, callgrind: str | None,
                 fixed_now: str | None = None, ctl_port: int | None = None) -> None:  # fmt: skip
        self.sim_port = free_port()
        self.ctl_port = ctl_port if ctl_port is not None else free_port()
        python = [CHILD_PYTHON[0], *(["-X", "perf"] if CHILD_PYTHON[1] else [])]
        argv = [*python, __file__, "--serve", "--sim-port", str(self.sim_port),
                "--ctl-port", str(self.ctl_port), "--seed", str(seed), "--knobs",
                json.dumps(knobs)]  # fmt: skip
        if fixed_now:
            argv += ["--fixed-now", fixed_now]
        self.scratch: Path | None = None
        env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONHASHSEED": "0"}
        if callgrind:
            argv = ["valgrind", "--tool=callgrind", "--instr-atstart=no",
                    f"--callgrind-out-file={callgrind}", *argv, "--counting"]  # fmt: skip
            self.scratch = Path(tempfile.mkdtemp(prefix="bench-callgrind-"))
            env["TMPDIR"] = str(self.scratch)
        self.proc = CHILDREN.popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, bufsize=1
        )
        line = self.read()
        if not line.startswith("port "):
            raise SystemExit(f"the simulator did not start: {line!r}")

    def read(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the simulator exited ({self.proc.wait()})")
        return line.strip()

    def ask(self, line: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.read()

    def cpu(self) -> float:
        return float(self.ask("cpu"))

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(600)
        finally:
            CHILDREN.end(5)
            if self.scratch is not None:
                shutil.rmtree(self.scratch, ignore_errors=True)


class Esme:
    """One transceiver bind: writes submit_sm with a window, answers every deliver_sm (a status
    from `answer`), keeps every frame the simulator writes."""

    def __init__(self, answer: Any = None) -> None:
        from bridge.smpp.framing import Framer

        self.framer = Framer()
        self.frames: list[bytes] = []
        self.answer = answer
        self.resps = 0
        self.delivers = 0
        self.seq = 0
        self.slots: asyncio.Semaphore | None = None
        self.waiters: dict[int, asyncio.Future[bytes]] = {}
        self.until: tuple[int, asyncio.Future[None]] | None = None  # (delivers, its future)

    async def connect(self, port: int, window: int) -> None:
        from bridge.smpp.codec import Bind, Pdu, encode
        from bridge.smpp.constants import BIND_TRANSCEIVER

        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.slots = asyncio.Semaphore(window)
        self.task = asyncio.create_task(self._read())
        await self.request(encode(Pdu(BIND_TRANSCEIVER, 0, self._next(), Bind("bench", "bench"))))

    def _next(self) -> int:
        self.seq += 1
        return self.seq

    async def request(self, frame: bytes) -> bytes:
        """Write one request frame (its seq is taken from it); its resp."""
        seq = int.from_bytes(frame[12:16], "big")
        fut = asyncio.get_running_loop().create_future()
        self.waiters[seq] = fut
        self.writer.write(frame)
        return await fut

    async def submit(self, body: Any) -> bytes:
        from bridge.smpp.codec import encode_sm_request
        from bridge.smpp.constants import SUBMIT_SM

        assert self.slots is not None
        async with self.slots:
            return await self.request(encode_sm_request(SUBMIT_SM, self._next(), body))

    async def _read(self) -> None:
        try:
            await self._reading()
        except BaseException as e:
            for fut in self.waiters.values():
                if not fut.done():
                    fut.set_exception(SystemExit(f"the bind's reader failed: {e!r}"))
            raise

    async def _reading(self) -> None:
        from bridge.smpp.constants import DATA_SM, DATA_SM_RESP, DELIVER_SM, DELIVER_SM_RESP

        while data := await self.reader.read(262144):
            out = []
            for f in self.framer.feed(data):
                self.frames.append(f)
                cid = int.from_bytes(f[4:8], "big")
                if cid in (DELIVER_SM, DATA_SM):
                    self.delivers += 1
                    status = self.answer(f) if self.answer is not None else 0
                    resp = DELIVER_SM_RESP if cid == DELIVER_SM else DATA_SM_RESP
                    body = b"\0"
                    if type(status) is tuple:  # (status, the resp's body)
                        status, body = status
                    out.append(
                        (16 + len(body)).to_bytes(4, "big") + resp.to_bytes(4, "big")
                        + status.to_bytes(4, "big") + f[12:16] + body
                    )  # fmt: skip
                elif cid & 0x80000000:
                    self.resps += 1
                    fut = self.waiters.pop(int.from_bytes(f[12:16], "big"), None)
                    if fut is not None and not fut.done():
                        fut.set_result(f)
            if out:
                self.writer.write(b"".join(out))
                until = self.until
                if until is not None and self.delivers >= until[0]:
                    self.until = None
                    until[1].set_result(None)

    async def sync(self) -> None:
        """Returns once the simulator has read everything written before (an enquire_link)."""
        from bridge.smpp.codec import Pdu, encode
        from bridge.smpp.constants import ENQUIRE_LINK

        await self.request(encode(Pdu(ENQUIRE_LINK, 0, self._next())))

    async def close(self) -> None:
        self.writer.close()
        self.task.cancel()
        with contextlib.suppress(BaseException):
            await self.task


def bodies_for(text: str, n: int, split: Any = None, **smsc_extra: Any) -> list[Any]:
    """The submit_sm bodies the dispatcher hands the connector for one message (bench.py's SMSC
    entry: udh8, source TON from the config, registered_delivery 1)."""
    from bridge.config import parse_config
    from bridge.pipeline import submit_sm
    from bridge.smpp.tlvpack import pack_tlvs
    from bridge.store.models import WorkMessage, WorkSegment
    from bridge.text import EncodeOptions, encode_message
    from bridge.text.split import SplitMode

    to = smsc_extra.pop("to", "+8613800000000")
    sender = smsc_extra.pop("sender", None)
    smsc = parse_config(
        {
            "security": {"master_key": "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2s="},
            "smscs": [
                {
                    "name": "sim",
                    "port": 2775,
                    "system_id": "bench",
                    "password": "bench",
                    "split": "udh8",
                    **smsc_extra,
                }
            ],
        },
        env={},
    ).smscs[0]
    enc = encode_message(
        text, EncodeOptions(split=split or SplitMode.UDH8, allow_latin1=True), n % 256
    )
    segs = tuple(
        WorkSegment(p.seq, p.total, p.esm_class, p.short_message, pack_tlvs(p.tlvs), 0)
        for p in enc.parts
    )
    msg = WorkMessage(f"m{n}", "acc", to, sender, enc.data_coding, None, 0, segs)
    parts_of = getattr(submit_sm, "submit_bodies", submit_sm.build_parts)
    return list(parts_of(msg, smsc))


async def drive(child: Child, messages: list[list[Any]], window: int, answer: Any = None) -> Esme:
    """All messages' parts through one bind, at most `window` unanswered; waits for every
    receipt expected (`child` counts them) and its resp read by the simulator."""
    esme = Esme(answer)
    await esme.connect(child.sim_port, window)

    async def one(parts: list[Any]) -> None:
        for body in parts:
            await esme.submit(body)

    await asyncio.gather(*(one(m) for m in messages))
    while True:  # every receipt scheduled sent and answered (resent ones included)
        await esme.sync()
        c = json.loads(await asyncio.to_thread(child.ask, "stats"))
        if (
            c["receipts_acked"] + c["receipts_given_up"] >= c["receipts_scheduled"]
            and c["mo_acked"] + c["mo_given_up"] >= c["mo_sent"]
        ):
            break
        await asyncio.sleep(0.05)
    return esme


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    text = TEXTS[args.kind]
    body = bodies_for(text, 1)
    total = args.warm + args.messages
    all_msgs = [body] * total
    out = tempfile.mktemp(prefix="callgrind.sim.") if args.callgrind else None
    child = Child(Path(args.tree).resolve(), 1, {}, callgrind=args.out or out)
    try:
        esme = Esme()
        await esme.connect(child.sim_port, args.window)
        # Warm: the bind, the first receipts (the dates' cache), uncounted.
        await asyncio.gather(*(_parts(esme, m) for m in all_msgs[: args.warm]))
        await _wait_receipts(esme, args.warm * len(body))
        await esme.sync()
        await asyncio.to_thread(child.ask, "on")
        cpu0, t0 = await asyncio.to_thread(child.cpu), time.monotonic()
        await asyncio.gather(*(_parts(esme, m) for m in all_msgs[args.warm :]))
        await _wait_receipts(esme, total * len(body))
        await esme.sync()
        cpu1, t1 = await asyncio.to_thread(child.cpu), time.monotonic()
        await asyncio.to_thread(child.ask, "off")
        counters = json.loads(await asyncio.to_thread(child.ask, "stats"))
        await esme.close()
    finally:
        child.close()
    result: dict[str, Any] = {
        "kind": args.kind,
        "messages": args.messages,
        "parts": len(body),
        "receipts": counters["receipts_acked"],
        "seconds": round(t1 - t0, 2),
    }
    if out or args.out:
        path = args.out or out
        assert path is not None
        got = re.search(r"^totals: (\d+)", Path(path).read_text(errors="replace"), re.M)
        if got is None:
            raise SystemExit(f"no totals in {path}")
        result["instructions_per_message"] = round(int(got.group(1)) / args.messages)
        if not args.out:
            Path(path).unlink(missing_ok=True)
    else:
        result["cpu_us_per_message"] = round((cpu1 - cpu0) * 1e6 / args.messages, 1)
    return result


async def _parts(esme: Esme, parts: list[Any]) -> None:
    for body in parts:
        await esme.submit(body)


async def _wait_receipts(esme: Esme, n: int) -> None:
    if esme.delivers < n:
        esme.until = (n, asyncio.get_running_loop().create_future())
        await esme.until[1]


# --- the differential -----------------------------------------------------------------------------
# fmt: off
SCENARIOS: tuple[dict[str, Any], ...] = (
    {},
    {"outcomes": {"DELIVRD": 3, "UNDELIV": 1, "EXPIRED": 1, "REJECTD": 1, "UNKNOWN": 1,
                  "DELETED": 1},
     "throttle_ratio": 0.05, "syserr_ratio": 0.05, "receipt_text_id": "dec",
     "receipt_retry_delay_ms": 20, "deliver_window": 7},
    {"id_format": "dec", "receipts_as": "text", "receipt_text_id": "hex", "receipt_parts": "last",
     "packed_gsm": True, "outcomes": {"DELIVRD": 1, "UNDELIV": 1}, "answer_delay_ms": 3},
    {"receipts_as": "tlv", "receipt_parts": "first", "receipt_retry_delay_ms": 5,
     "outcomes": {"EXPIRED": 1}},
    {"receipt_pdu": "data_sm", "outcomes": {"DELIVRD": 2, "REJECTD": 1}, "receipt_delay_ms": 0},
    # Two transceivers of the system_id (receipts dealt round-robin, a window of 3 each, parked
    # when both are full); their deliver_sm_resps in odd shapes (a bare header, an id past 64
    # octets, NUL padding, an error with a body without NUL, and once a body without NUL with
    # status 0, which the simulator drops: resent at the ack timeout); the delay changed
    # through the control API half-way; the submits' TONs, NPIs, service_type and
    # 20-character addresses varied (session 60, r2).
    {"binds": 2, "deliver_window": 3, "odd_resps": True, "odd_fields": True,
     "receipt_ack_timeout_s": 1.0, "delay_after_half_ms": 17, "receipts_as": "both",
     "receipt_text_id": "hex", "outcomes": {"DELIVRD": 2, "UNDELIV": 1, "DELETED": 1}},
)
# fmt: on
FIXED_NOWS = (
    "2026-12-31T23:59:59.995000+00:00",
    "2027-02-28T23:59:30.000001+00:00",
    "2028-02-28T23:59:59.999999+00:00",
    "2026-06-15T09:05:07.250000+00:00",
    "2027-01-01T00:00:00+00:00",
)


def mix(seed: int, n: int, odd_fields: bool = False) -> list[list[Any]]:
    from bridge.text.split import SplitMode

    rng = random.Random(seed)
    odd = random.Random(seed + 1)  # its own: the other scenarios' mix stays as it was
    out = []
    for i in range(n):
        text = rng.choice(MIX_TEXTS).format(n=rng.randrange(10**6))
        split = rng.choice([SplitMode.UDH8, SplitMode.UDH8, SplitMode.UDH16, SplitMode.SAR,
                            SplitMode.PAYLOAD])  # fmt: skip
        extra: dict[str, Any] = {
            "registered_delivery": rng.choice([1, 1, 1, 0, 2, 17]),
            "source_ton": rng.choice([5, 1, 0]),
            "to": rng.choice(["+8613800138000", "+447700900123", "+15550000000", "+3361234567"])
            + str(i % 7),
            "sender": rng.choice(["BRIDGE", "+447700900123", "12345", None]),
        }
        if rng.random() < 0.3:
            extra["validity_minutes"] = rng.choice([5, 1440])
        if odd_fields:
            extra["source_npi"] = odd.choice([0, 1, 9, 18])
            extra["dest_ton"] = odd.randrange(7)
            extra["dest_npi"] = odd.choice([0, 1, 8, 18])
            extra["service_type"] = odd.choice(["", "CMT", "WAP", "USSD5"])
            if odd.random() < 0.3:  # both addresses at their 20 characters
                extra["to"] = "+" + str(10**19 + i)
                extra["sender"] = str(10**19 + 7 * i)
        out.append(bodies_for(text, i, split, **extra))
    return out


def digest(frames: list[bytes]) -> str:
    return hashlib.sha256(b"".join(frames)).hexdigest()[:16]


async def one_tree(tree: Path, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    knobs = dict(SCENARIOS[seed % len(SCENARIOS)])
    knobs["refused_destinations"] = ["+15550000003", "15550000003"]
    knobs["receipt_delay_ms"] = knobs.pop("receipt_delay_ms", 5)
    answer_delay = knobs.pop("answer_delay_ms", 0)
    binds = knobs.pop("binds", 1)
    odd_resps = knobs.pop("odd_resps", False)
    delay_after_half = knobs.pop("delay_after_half_ms", None)
    msgs = mix(seed, args.messages, knobs.pop("odd_fields", False))
    child = Child(tree, seed, knobs, callgrind=None, fixed_now=FIXED_NOWS[seed % len(FIXED_NOWS)])
    if answer_delay:
        await asyncio.to_thread(_post, child.ctl_port, "/config", {"answer_delay_ms": answer_delay})

    seen: dict[bytes, int] = {}

    def answer(f: bytes) -> int | tuple[int, bytes]:
        # Nacked by what it says, not by when it came: some receipts once (resent, then
        # acked), a few every time (given up). Shared by the binds: which one a receipt
        # reaches depends on timing.
        d = hashlib.sha256(f[16:]).digest()
        h = d[0]
        seen[f[16:]] = tries = seen.get(f[16:], 0) + 1
        status = 0x08 if h < 8 or (h < 48 and tries == 1) else 0
        if not odd_resps:
            return status
        shape = d[1] % 8
        if shape == 0:
            return status, b""
        if shape == 1 and (status or tries == 1):
            return status, b"XYZ"  # no NUL: read for its status, or (0) dropped
        if shape == 2:
            return status, b"abc\0\0\0"
        if shape == 3:
            return status, b"A" * 70 + b"\0"
        return status

    esmes: list[Esme] = []
    try:
        esme = Esme(answer)
        esmes.append(esme)
        await esme.connect(child.sim_port, args.window)
        for _ in range(binds - 1):
            other = Esme(answer)
            esmes.append(other)
            await other.connect(child.sim_port, args.window)
        half = len(msgs) // 2
        await asyncio.gather(*(_parts(esme, m) for m in msgs[:half]))
        mo: list[dict[str, Any]] = [
            {"source": "8613800138000", "destination": "BRIDGE", "text": "STOP 你好"},
            {"source": "8613800138001", "destination": "12345", "text": "x" * 300, "split": "sar"},
            {"source": "447700900123", "destination": "12345", "text": "長" * 80, "ref": 7,
             "parts": [2, 1]},
            {"source": "447700900124", "destination": "12345", "text": "€" * 200,
             "split": None},
        ]  # fmt: skip
        for body in mo:
            await asyncio.to_thread(_post, child.ctl_port, "/mo", body)
        if delay_after_half is not None:
            await asyncio.to_thread(
                _post, child.ctl_port, "/config", {"receipt_delay_ms": delay_after_half}
            )
        await asyncio.gather(*(_parts(esme, m) for m in msgs[half:]))
        while True:  # (no enquire_link: how many the wait takes depends on timing)
            c = json.loads(await asyncio.to_thread(child.ask, "stats"))
            if (c["receipts_acked"] + c["receipts_given_up"] >= c["receipts_scheduled"]
                    and c["mo_acked"] + c["mo_given_up"] >= c["mo_sent"]):  # fmt: skip
                break
            await asyncio.sleep(0.05)
        stats = await asyncio.to_thread(_get, child.ctl_port, "/stats")
        kept = await asyncio.to_thread(_get, child.ctl_port, "/messages?limit=10000")
        for e in esmes:
            await e.close()
    finally:
        child.close()
    frames = [f for e in esmes for f in e.frames]
    resps = [f for f in frames if int.from_bytes(f[4:8], "big") & 0x80000000]
    owed = sorted(f[:12] + b"\0\0\0\0" + f[16:] for f in frames
                  if not int.from_bytes(f[4:8], "big") & 0x80000000)  # fmt: skip
    for m in kept["messages"]:
        m.pop("received_at")
    stats.pop("port")
    return {
        "seed": seed,
        "resps": len(resps),
        "resps_digest": digest(resps),
        "deliver": len(owed),
        "deliver_digest": digest(owed),
        "receipt_texts": digest([f for f in owed if b"id:" in f]),
        "counters": stats["counters"],
        "messages_digest": hashlib.sha256(json.dumps(kept).encode()).hexdigest()[:16],
        "messages": len(kept["messages"]),
        "incomplete": stats["incomplete_messages"],
    }


def _post(port: int, path: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def _get(port: int, path: str) -> Any:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
        return json.loads(r.read())


async def compare(args: argparse.Namespace) -> int:
    differ = 0
    for seed in range(args.seed, args.seed + args.seeds):
        got = [await one_tree(Path(t).resolve(), seed, args) for t in (args.compare, args.tree)]
        same = got[0] == got[1]
        differ += not same
        print(f"seed {seed}: {'same' if same else 'DIFFERENT'} {json.dumps(got[1])}")
        if not same:
            print(f"  {args.compare}: {json.dumps(got[0])}")
    print("same PDUs, counters and messages" if not differ else f"DIFFERENT in {differ} seeds")
    return 1 if differ else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kind", choices=sorted(TEXTS), default="gsm1")
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--warm", type=int, default=200)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--tree", default=str(HERE))
    ap.add_argument("--callgrind", action="store_true", help="count instructions under callgrind")
    ap.add_argument("--out", help="--callgrind: keep the profile in this file")
    ap.add_argument("--compare", metavar="OLD_TREE")
    ap.add_argument("--python", default=sys.executable, help="the simulator's interpreter")
    ap.add_argument("--xperf", action="store_true", help="run it with -X perf (Python 3.12)")
    ap.add_argument("--seed", type=int, default=60)
    ap.add_argument("--seeds", type=int, default=6)
    # The child's (the simulator's) own options.
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--counting", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--sim-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ctl-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--knobs", default="{}", help=argparse.SUPPRESS)
    ap.add_argument("--fixed-now", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        sys.path.remove(str(HERE))  # the tree is the one PYTHONPATH names
        serve(args)
        return
    CHILD_PYTHON[:] = [args.python, args.xperf]
    CHILDREN.on_signals()
    if args.compare:
        if args.messages == 2000:
            args.messages = 600
        sys.exit(CHILDREN.asyncio_run(compare(args)))
    print(json.dumps(CHILDREN.asyncio_run(bench(args))))


if __name__ == "__main__":
    main()
