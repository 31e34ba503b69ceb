#!/usr/bin/env python3
"""The send path's PDUs and outcomes under seeded SMSC answers: two trees compared.

Usage: python scripts/connector_differential.py --compare OLD_TREE [--seeds 0-39] [--messages 40]
       python scripts/connector_differential.py --tree DIR --seed N  (one scenario, as JSON)

Why: the owner sends a message through the real `Dispatcher` and `Connector`, and since session
57 a one-part message without a task (`_Quick`, `Connector.send_one`): what it puts on the wire
and what it records must be what the task did, for every answer an SMSC gives. Each seed makes
a scenario (a window of 1 to 10, one or two transceiver binds, a TPS limit or none, one or two
windows in flight, `in_flight_on_restart` resend or unknown, messages of one part mostly and of
two or three, some already past their validity, some with one far off; since session 58 a third
of them with long messages mostly (2-4 parts), a third with a TPS limit of 100 or 400, some
messages carrying on after parts an earlier claim sent) and runs it over real
TCP against an SMSC in this script (no `bridge` import: the judge is the same for both trees)
that answers each submit_sm by a rule of its own seeded by the message, its part and how many
times it got that part: accepted, throttled (ESME_RTHROTTLED), a system error (ESME_RSYSERR,
transient), refused (ESME_RINVDSTADR, permanent), not answered (the response time-out), or, on a
window of one, the connection dropped. The dispatcher claims from a stub store and records what
it writes there. Compared, both trees: every submit_sm body the SMSC got (sequence numbers
masked, sorted: which bind and when follow timing), each message's results and releases (times
masked, a release's delay kept in whole seconds) and the connector's and dispatcher's counters.
A deadline that runs out while a part waits follows timing, so validities here are past or far.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import struct
import sys
import time
from pathlib import Path
from typing import Any

from children import Children  # scripts/ is the script's own folder

HERE = Path(__file__).resolve().parents[1]
# The copy of this script for a tree: ended with this one however it ends (children.py).
CHILDREN = Children()
RUN_TIMEOUT_S = 120.0
FAR_MS = 4_102_444_800_000  # 2100-01-01 UTC: a validity no run reaches

BIND_TRX, SUBMIT_SM, UNBIND, ENQUIRE_LINK = 0x09, 0x04, 0x06, 0x15
RESP = 0x80000000
GENERIC_NACK = 0x80000000
ROK, RSYSERR, RINVDSTADR, RTHROTTLED = 0x00, 0x08, 0x0B, 0x58
ANSWERS = ["ok"] * 8 + ["throttled"] * 3 + ["syserr"] * 2 + ["refused", "timeout", "drop"]


def scenario(seed: int, messages: int) -> dict[str, Any]:
    rng = random.Random(seed)
    window = rng.randint(1, 10)
    sc: dict[str, Any] = {
        "seed": seed,
        "window": window,
        "binds": rng.choice([1, 1, 2]),
        "tps": rng.choice([0, 0, 0, 400]),
        "windows": rng.choice([1, 2]),
        "in_flight_on_restart": rng.choice(["resend", "resend", "resend", "unknown"]),
        "drops": window == 1,  # a drop on a wider window cuts others' answers by timing
        "messages": [
            {
                "parts": rng.choice([1, 1, 1, 1, 1, 2, 3]),
                "expires": rng.choice([None] * 8 + ["past", "far"]),
            }
            for _ in range(messages)
        ],
    }
    # Since session 58 a message of several parts, and one on a bind with a TPS limit, is sent
    # without a task too: more of both, drawn apart (the draws above are as they were). A
    # third of the scenarios send long messages (2-4 parts) mostly, a third a TPS limit that
    # holds them back (100/s: 10 submits a 0.1-s window) or not (400/s); some messages carry
    # on after parts an earlier claim sent (`after`: the store's `smsc` set, a task's still).
    more = random.Random(f"{seed}/session 58")
    msgs: list[dict[str, Any]] = sc["messages"]
    if more.random() < 0.35:
        for m in msgs:
            m["parts"] = more.choice([1, 2, 2, 3, 3, 4])
    if more.random() < 0.35:
        sc["tps"] = more.choice([100, 100, 400])
    for m in msgs:
        later = m["parts"] > 1 and more.random() < 0.1
        m["after"] = more.randint(1, m["parts"] - 1) if later else 0
    return sc


def answer(seed: int, dest: str, seq: int, attempt: int, drops: bool) -> str:
    """The SMSC's answer to the `attempt`-th submit (from 1) of part `seq` to `dest`: a rule
    of the scenario, whatever the order the parts come in."""
    if attempt > 5:
        return "ok"
    rng = random.Random(f"{seed}/{dest}/{seq}")
    got = "ok"
    for _ in range(attempt):
        got = rng.choice(ANSWERS)
    if got == "drop" and not drops:
        return "timeout"
    return got


def cstring(body: bytes, at: int) -> tuple[bytes, int]:
    end = body.index(b"\0", at)
    return body[at:end], end + 1


def submit_fields(body: bytes) -> tuple[str, int]:
    """A submit_sm's destination and its part's number (its UDH's, else 1)."""
    _service, at = cstring(body, 0)
    at += 2
    _source, at = cstring(body, at)
    at += 2
    dest, at = cstring(body, at)
    esm_class = body[at]
    at += 3
    _schedule, at = cstring(body, at)
    _validity, at = cstring(body, at)
    at += 4
    length = body[at]
    sm = body[at + 1 : at + 1 + length]
    seq = sm[5] if esm_class & 0x40 and len(sm) > 5 else 1
    return dest.decode(), seq


class Smsc(asyncio.Protocol):
    """One bind's connection to the scripted SMSC."""

    def __init__(self, shared: dict[str, Any]) -> None:
        self.shared = shared
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send(self, command: int, status: int, seq: int, body: bytes = b"") -> None:
        assert self.transport is not None
        self.transport.write(struct.pack(">IIII", 16 + len(body), command, status, seq) + body)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 16:
            length, command, _status, seq = struct.unpack(">IIII", self.buf[:16])
            if len(self.buf) < length:
                return
            body, self.buf = self.buf[16:length], self.buf[length:]
            if self.transport is None or self.transport.is_closing():
                return
            if command == BIND_TRX:
                self.send(BIND_TRX | RESP, ROK, seq, b"smsc\0")
            elif command == ENQUIRE_LINK:
                self.send(ENQUIRE_LINK | RESP, ROK, seq)
            elif command == UNBIND:
                self.send(UNBIND | RESP, ROK, seq)
            elif command == SUBMIT_SM:
                self.submit(body, seq)
            elif not command & RESP:
                self.send(GENERIC_NACK, 0x03, seq)

    def submit(self, body: bytes, seq: int) -> None:
        sh = self.shared
        dest, part = submit_fields(body)
        key = f"{dest}/{part}"
        sh["attempts"][key] = attempt = sh["attempts"].get(key, 0) + 1
        sh["pdus"].append([dest, part, attempt, body.hex()])
        got = answer(sh["seed"], dest, part, attempt, sh["drops"])
        if got == "ok":
            self.send(SUBMIT_SM | RESP, ROK, seq, f"id-{dest}-{part}-{attempt}\0".encode())
        elif got in ("throttled", "syserr", "refused"):
            status = {"throttled": RTHROTTLED, "syserr": RSYSERR, "refused": RINVDSTADR}[got]
            self.send(SUBMIT_SM | RESP, status, seq, b"\0")
        elif got == "drop":
            assert self.transport is not None
            self.transport.abort()
            self.transport = None
        # "timeout": no answer at all


async def run(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(Path(args.tree).resolve()))
    from bridge.config import SmscConfig
    from bridge.pipeline.dispatcher import Dispatcher
    from bridge.smpp.connector import Connector
    from bridge.smpp.router import Router
    from bridge.smpp.tlvpack import pack_tlvs
    from bridge.store.models import ReceiptOutcome, WorkMessage, WorkSegment
    from bridge.text import EncodeOptions, encode_message

    sc = scenario(args.seed, args.messages)
    shared: dict[str, Any] = {"seed": args.seed, "drops": sc["drops"], "attempts": {}, "pdus": []}
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Smsc(shared), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = SmscConfig(
        name="t1",
        host="127.0.0.1",
        port=port,
        system_id="esme",
        password="secret",
        bind_mode="transceiver",
        binds=sc["binds"],
        window=sc["window"],
        tps=float(sc["tps"]),
        response_timeout_s=1.0,
        enquire_link_s=30.0,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
        throttle_pause_min_s=0.02,
        throttle_pause_max_s=0.1,
        max_transient_retries=2,
        recycle_after_timeouts=0,  # a re-bind cuts the answers of others by timing
        unbind_timeout_s=0.5,
        in_flight_on_restart=sc["in_flight_on_restart"],
    )
    now_ms = int(time.time() * 1000)
    work = []
    for i, m in enumerate(sc["messages"]):
        text = f"message {i} " + "x" * (160 * (m["parts"] - 1))
        enc = encode_message(text, EncodeOptions(), lambda: 7)
        segs = tuple(
            WorkSegment(p.seq, p.total, p.esm_class, p.short_message, pack_tlvs(p.tlvs), 0)
            for p in enc.parts
        )
        # A far validity fixed, not from the clock: its PDU field is the same in both runs.
        expires = {None: None, "past": now_ms - 1000, "far": FAR_MS}[m["expires"]]
        to = f"+8613800{i:06d}"
        after = m.get("after", 0)  # parts an earlier claim sent: the rest follow on its SMSC
        work.append(
            WorkMessage(
                f"m{i}", "acc", to, "BRIDGE", enc.data_coding, expires, 1 if after else 0,
                segs[after:], "t1" if after else None,
            )
        )  # fmt: skip
    records: dict[str, list[Any]] = {w.id: [] for w in work}
    ended = asyncio.Event()
    landed: set[str] = set()

    class StubStore:
        commits_in_order = True
        claim_reports = 0

        async def claim(self, _i: str, limit: int, *_a: Any, **_kw: Any) -> list[Any]:
            out = work[:limit]
            del work[:limit]
            return out

        async def record_submits(
            self, results: list[Any], releases: list[Any], now: int, instance: str = ""
        ) -> int:
            for r in results:
                records[r.message_id].append(
                    ["result", r.seq, r.outcome, r.smsc, r.smsc_msg_id, r.smsc_msg_id_raw,
                     r.error_code]
                )  # fmt: skip
                landed.add(r.message_id)
            for r in releases:
                delay = round((r.not_before - now) / 1000)
                records[r.message_id].append(["release", r.count_attempt, r.unanswered, delay])
                landed.add(r.message_id)
            if len(landed) == len(records):
                ended.set()
            return 0

        async def record_routes(self, _inst: str, items: list[Any]) -> set[str]:
            return {mid for mid, _s in items}

        async def record_late_submits(self, items: list[Any], _now: int) -> int:
            return 0

        async def message_held(self, _mid: str) -> bool:
            return False

        async def apply_receipts(self, items: list[Any], _now: int) -> Any:
            return ReceiptOutcome(len(items), 0)

        async def keep_route_table(self, *_a: Any) -> None:
            return None

        async def unpark(self, *_a: Any) -> int:
            return 0

    async def on_deliver(_name: str, _body: Any) -> int:
        return 0

    conn = Connector(cfg, on_deliver, transient_backoff_s=(0.01, 0.05))
    await conn.start()
    if not await conn.wait_up(10):
        raise SystemExit("bind did not come up")
    for _ in range(200):  # every bind up: which are up at the first claim follows timing
        if all(b.up for b in conn._binds):
            break
        await asyncio.sleep(0.01)
    disp = Dispatcher(
        StubStore(),  # type: ignore[arg-type]
        {"t1": conn},
        Router([], ["t1"]),
        {"t1": cfg},
        instance="inst-1",
        in_flight_windows=sc["windows"],
        idle_s=0.01,
    )
    runner = loop.create_task(disp.run())
    await asyncio.wait_for(ended.wait(), RUN_TIMEOUT_S)
    while disp.inflight:  # noqa: ASYNC110 (the last results' flush)
        await asyncio.sleep(0.01)
    await disp.stop(2)
    runner.cancel()
    await conn.stop(2)
    server.close()
    snap = conn.snapshot()
    return {
        "scenario": {k: v for k, v in sc.items() if k != "messages"},
        "pdus": sorted(shared["pdus"]),
        "records": records,
        "counters": {
            "submits": snap["submits"],
            "throttle_events": snap["throttle_events"],
            "transient_retries": snap["transient_retries"],
            "sent": disp.sent,
            "failed": disp.failed,
            "retried": disp.retried,
        },
    }


def one(tree: str, seed: int, messages: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--tree", tree, "--seed", str(seed),
           "--messages", str(messages), "--json"]  # fmt: skip
    try:
        code, stdout, stderr = CHILDREN.run(cmd, RUN_TIMEOUT_S + 60)
    finally:
        CHILDREN.end()
    if code:
        raise SystemExit(f"{tree} seed {seed} failed:\n{stderr[-3000:]}")
    return json.loads(stdout.strip().splitlines()[-1])


def first_difference(a: Any, b: Any, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{path}/{k}: only in {'new' if k not in a else 'old'}"
            got = first_difference(a[k], b[k], f"{path}/{k}")
            if got:
                return got
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            got = first_difference(x, y, f"{path}[{i}]")
            if got:
                return got
        if len(a) != len(b):
            return f"{path}: {len(a)} items against {len(b)}"
        return None
    return None if a == b else f"{path}: {a!r} against {b!r}"


def seeds(text: str) -> list[int]:
    out: list[int] = []
    for piece in text.split(","):
        lo, _, hi = piece.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", default=str(HERE))
    ap.add_argument("--compare", help="an older checkout: each seed run on both, compared")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--seeds", default="0-39", help="with --compare: e.g. 0-39 or 1,5,9-12")
    ap.add_argument("--messages", type=int, default=40)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    CHILDREN.on_signals()
    if not args.compare:
        got = asyncio.run(run(args))
        print(json.dumps(got) if args.json else json.dumps(got, indent=1))
        return
    differ = 0
    pdus = results = 0
    for seed in seeds(args.seeds):
        old, new = one(args.compare, seed, args.messages), one(args.tree, seed, args.messages)
        diff = first_difference(old, new)
        pdus += len(new["pdus"])
        results += sum(len(r) for r in new["records"].values())
        if diff:
            differ += 1
            print(f"seed {seed} {new['scenario']}: differs at {diff}")
    print(f"{len(seeds(args.seeds))} seeds, {pdus} submit_sm, {results} records: "
          f"{differ} differing")  # fmt: skip
    if differ:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
