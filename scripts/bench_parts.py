#!/usr/bin/env python3
"""CPU per 3-part UCS-2 message of the owner's and acceptor's work outside the store, one process.

Usage: python scripts/bench_parts.py [--messages 20000] [--rounds 5] [--tree DIR]
       python scripts/bench_parts.py --compare OLD_TREE [--pairs 3]

Why: end to end (`bench.py --kind ucs3`) the store and the machine's noise hide a cut of a few
microseconds per part. This runs the real functions the daemon runs for each message of
`bench.py`'s ucs3 text (3 UCS-2 parts with a UDH), without sockets or a store:

- accept: encode_message (the split and the UDH) and the stored form of its parts' TLVs;
- send: build_parts, encode of each submit_sm in a bound BindSession (its window and sequence
  numbers), the submit_sm_resp decoded and its message id keyed (normalize_resp_id);
- receipts: each part's deliver_sm receipt, as the simulator sends it, fed to the session,
  taken by the real Inbound.on_deliver (parse, key, batch; the batch flushes into a stub
  store) and acknowledged (deliver_sm_resp);
- results: the message's submit results to a Batcher, as the dispatcher hands them.

It prints the process CPU time per message of each step (best of `--rounds`). `--tree` imports
`bridge` from another checkout; `--compare OLD` runs this script on OLD and on this checkout
alternately, `--pairs` times each, and prints the ratios new/old of each pair.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # children.py, beside this script
from children import Children

HERE = Path(__file__).resolve().parents[1]
CHILDREN = Children()  # --compare's measuring runs, ended with the script however it ends
TEXT = "【示例】您的验证码是123456，五分钟内有效。请勿泄露给他人。如非本人操作，请忽略本短信。" * 3
KEY = "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2s="


def measure(messages: int, rounds: int) -> dict[str, float]:
    from datetime import UTC, datetime

    from bridge.config import parse_config
    from bridge.pipeline.batcher import Batcher
    from bridge.pipeline.inbound import Inbound
    from bridge.pipeline.submit_sm import build_parts
    from bridge.smpp import constants as C
    from bridge.smpp.codec import Bind, BindResp, MessageIdResp, Pdu, ShortMessage, encode
    from bridge.smpp.msgid import MsgIdRule, normalize_resp_id
    from bridge.smpp.receipt import format_receipt_text
    from bridge.smpp.session import BindMode, BindSession, DeliverReceived, SubmitResponse
    from bridge.smpp.tlvpack import pack_tlvs
    from bridge.store.models import ReceiptOutcome, SubmitResult, WorkMessage, WorkSegment
    from bridge.text import EncodeOptions, encode_message

    smsc_cfg = {"name": "sim", "host": "127.0.0.1", "port": 1, "system_id": "a", "password": "b"}
    cfg = parse_config({"security": {"master_key": KEY}, "smscs": [smsc_cfg]}, env={})
    smsc = cfg.smscs[0]
    opts = EncodeOptions()
    rule = MsgIdRule()

    enc = encode_message(TEXT, opts, 7)
    segments = tuple(
        WorkSegment(p.seq, p.total, p.esm_class, p.short_message, pack_tlvs(p.tlvs), 0)
        for p in enc.parts
    )
    msg = WorkMessage(
        "msg_1", "acc", "+8613800138000", "BRIDGE", enc.data_coding, None, 0, segments
    )
    n_parts = len(segments)

    session = BindSession(Bind("a", "b"), BindMode.TRANSCEIVER, window=10 * n_parts)
    session.start(0.0)
    session.data_to_send()
    session.receive_data(encode(Pdu(C.BIND_TRANSCEIVER_RESP, 0, 1, BindResp("SMSC"))), 0.0)

    now = datetime(2026, 12, 5, 14, 0, tzinfo=UTC)
    ids = [f"{0x1000 + i:08X}" for i in range(n_parts)]
    resps = [
        encode(Pdu(C.SUBMIT_SM_RESP, 0, 0, MessageIdResp(mid))) for mid in ids
    ]  # seq patched per send
    receipts = [
        encode(
            Pdu(
                C.DELIVER_SM,
                0,
                1000 + i,
                ShortMessage(
                    source_addr="8613800138000",
                    destination_addr="BRIDGE",
                    esm_class=C.ESM_DELIVERY_RECEIPT,
                    short_message=format_receipt_text(
                        mid, "DELIVRD", "000", 1, 1, submit_date=now, done_date=now,
                        text=TEXT[:20],
                    ).encode("ascii", "replace"),
                    tlvs=(
                        (C.RECEIPTED_MESSAGE_ID, mid.encode("ascii") + b"\0"),
                        (C.MESSAGE_STATE, bytes((C.MSG_STATE_DELIVERED,))),
                    ),
                ),
            )
        )
        for i, mid in enumerate(ids)
    ]  # fmt: skip

    class StubStore:
        commits_in_order = True

        async def apply_receipts(self, items: list[Any], now: int) -> ReceiptOutcome:
            return ReceiptOutcome(len(items), 0)

    async def flushed(_items: list[Any]) -> None:
        return None

    def accept() -> None:
        e = encode_message(TEXT, opts, lambda: 7)
        for p in e.parts:
            pack_tlvs(p.tlvs)

    def send() -> None:
        parts = build_parts(msg, smsc)
        for i, part in enumerate(parts):
            seq = session.submit(part, 1.0, i)
            session.data_to_send()
            frame = bytearray(resps[i])
            frame[12:16] = seq.to_bytes(4, "big")
            (ev,) = session.receive_data(bytes(frame), 1.0)
            assert isinstance(ev, SubmitResponse)
            if ev.status or normalize_resp_id(ev.message_id, rule) != ids[i].lstrip("0"):
                raise SystemExit(f"part {i}: answered {ev}, not as the simulator would")

    out: dict[str, float] = {}

    async def run_async() -> None:
        inbound = Inbound(StubStore(), {"sim": smsc}, batch_delay_s=0.0)  # type: ignore[arg-type]
        results: Batcher[Any] = Batcher(flushed, max_items=10_000, max_delay_s=0.0)

        async def receipts_of(count: int) -> float:
            t = time.process_time()
            for _ in range(count):
                futs = []
                for frame in receipts:
                    (ev,) = session.receive_data(frame, 1.0)
                    assert isinstance(ev, DeliverReceived)
                    futs.append((ev, inbound.on_deliver("sim", ev.body)))
                await asyncio.sleep(0)  # the batch flushes
                await asyncio.sleep(0)
                for ev, fut in futs:
                    session.ack_deliver(ev.seq, await fut)
                acks.append(session.data_to_send())
            return time.process_time() - t

        async def results_of(count: int) -> float:
            add_many = getattr(results, "add_many", None)
            t = time.process_time()
            for _ in range(count):
                items = [
                    SubmitResult(
                        "msg_1", s.seq, "sent", "sim", ids[s.seq - 1], ids[s.seq - 1], at=1
                    )
                    for s in segments
                ]
                if add_many is not None:
                    await add_many(items)
                else:
                    await asyncio.gather(*(results.add(item) for item in items))
            return time.process_time() - t

        acks: list[bytes] = []
        for name, fn in (("receipts", receipts_of), ("results", results_of)):
            best = min([await fn(messages) for _ in range(rounds)])
            out[name] = best / messages * 1e6
        # Each receipt was parsed, keyed, committed (the stub store) and acknowledged ESME_ROK.
        want = messages * rounds * n_parts
        ok = sum(
            1
            for chunk in acks
            for i in range(0, len(chunk), 17)
            if chunk[i + 8 : i + 12] == bytes(4)
        )
        if (inbound.receipts, inbound.unparsable, ok) != (want, 0, want):
            raise SystemExit(f"receipts: {inbound.receipts} stored, {ok} acked ROK of {want}")
        if results.items != messages * rounds * n_parts:
            raise SystemExit(f"results: {results.items} flushed of {messages * rounds * n_parts}")

    for name, step in (("accept", accept), ("send", send)):
        best = float("inf")
        for _ in range(rounds):
            t = time.process_time()
            for _ in range(messages):
                step()
            best = min(best, time.process_time() - t)
        out[name] = best / messages * 1e6
    asyncio.run(run_async())
    out["total"] = sum(out.values())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tree", default=str(HERE))
    ap.add_argument("--compare", help="an older checkout to compare with, alternating")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.compare:
        CHILDREN.on_signals()
        try:
            compare(args)
        finally:
            CHILDREN.end()
        return
    sys.path.insert(0, str(Path(args.tree).resolve()))
    import bridge

    got = measure(args.messages, args.rounds)
    if args.json:
        print(json.dumps(got))
        return
    print(f"bridge from {Path(bridge.__file__).parent.parent}: {args.messages} messages of 3 parts")
    for name, us in got.items():
        print(f"  {name:10s} {us:8.1f} us per message")


def compare(args: argparse.Namespace) -> None:
    def one(tree: str) -> dict[str, float]:
        cmd = [sys.executable, __file__, "--tree", tree, "--json",
               "--messages", str(args.messages), "--rounds", str(args.rounds)]  # fmt: skip
        code, out, err = CHILDREN.run(cmd, None)
        if code:
            raise SystemExit(f"the run of {tree} failed ({code}): {err[-2000:]}")
        return json.loads(out)

    ratios: dict[str, list[float]] = {}
    for i in range(args.pairs):
        old, new = one(args.compare), one(str(HERE))
        line = []
        for name in new:
            ratios.setdefault(name, []).append(new[name] / old[name])
            line.append(f"{name} {old[name]:.1f} -> {new[name]:.1f}")
        print(f"pair {i + 1}: " + ", ".join(line) + "  (us per message, old -> new)")
    print("new/old, median of the pairs: " + ", ".join(
        f"{name} {statistics.median(r):.2f}" for name, r in ratios.items()))  # fmt: skip


if __name__ == "__main__":
    main()
