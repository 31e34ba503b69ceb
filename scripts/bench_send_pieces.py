#!/usr/bin/env python3
"""The owner's send path in pieces, each counted alone under callgrind (instructions per call).

Usage: python scripts/bench_send_pieces.py [--calls 2000] [--tree DIR] [--parts 1] [PIECE ...]
       python scripts/bench_send_pieces.py --compare OLD_TREE [--pairs 2] [PIECE ...]

Why: `bench_send_path.py --callgrind` counts a whole message (~340 k instructions, one-part),
but Python 3.11 has no perf map, so callgrind names the interpreter's C functions, not ours:
the total does not say which step to cut. This runs one step of a one-part message at a time,
`--calls` times in a loop, under callgrind (`callgrind_control -i on|off` around the loop,
as `bench_send_path.py` does), and prints instructions per call less an empty loop's: the
submit_sm's parts built (`build`), its PDU encoded (`encode_submit`), the sans-IO session's
whole exchange for one part (`session`: submit_sm queued and taken, its submit_sm_resp read,
the receipt's deliver_sm read and its deliver_sm_resp queued and taken: the codec's share
included), the two reads alone (`decode_resp`, `decode_deliver`), the receipt's parse, key and
batcher item (`receipt`, the batcher stubbed), and the sent part's result (`sent`). What the
whole message costs beyond their sum is the asyncio layers' (protocol, connector, dispatcher
tasks, futures, the loop). `--tree` imports `bridge` from another checkout; `--compare OLD`
alternates OLD and this checkout and prints each piece's ratio. `--parts N` (N > 1) takes a UCS-2
text of N parts, as `bench_send_path.py --parts N` sends: `build` builds all N, the other pieces
run on its second part (a UDH part, whose shared fields the codec has encoded before, as for
every part after a message's first).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from children import Children  # scripts/ is the script's own folder

HERE = Path(__file__).resolve().parents[1]
# valgrind with a copy of this script under it: ended with this script (children.py).
CHILDREN = Children()
TIMEOUT_S = 900
PIECES = ("build", "encode_submit", "session", "decode_resp", "decode_deliver", "receipt", "sent")


def pieces(parts: int = 1) -> dict[str, Callable[[], Any]]:
    """Each piece as a call of no arguments, its inputs made once (one-part, as the bench's, or
    the second part of a `parts`-part UCS-2 text)."""
    import asyncio
    from datetime import UTC, datetime

    from bridge.config import parse_config
    from bridge.pipeline.dispatcher import _sent, msgid_rule
    from bridge.pipeline.inbound import Inbound
    from bridge.pipeline.submit_sm import build_parts
    from bridge.smpp import codec
    from bridge.smpp import constants as C
    from bridge.smpp.codec import Bind, BindResp, MessageIdResp, Pdu, ShortMessage, decode, encode
    from bridge.smpp.connector import SubmitOutcome
    from bridge.smpp.receipt import format_receipt_text
    from bridge.smpp.session import BindMode, BindSession
    from bridge.smpp.tlvpack import pack_tlvs
    from bridge.store.models import WorkMessage, WorkSegment
    from bridge.text import EncodeOptions, encode_message

    cfg = parse_config(
        {
            "security": {"master_key": "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2s="},
            "smscs": [{"name": "sim", "port": 2775, "system_id": "b", "password": "b"}],
        },
        env={},
    )
    smsc = cfg.smscs[0]
    text = "Your verification code is 123456." if parts == 1 else "验" * (67 * parts - 9)
    enc = encode_message(text, EncodeOptions(), lambda: 7)
    segs = tuple(
        WorkSegment(p.seq, p.total, p.esm_class, p.short_message, pack_tlvs(p.tlvs), 0)
        for p in enc.parts
    )
    msg = WorkMessage("msg_1", "acc", "+8613800138000", "BRIDGE", enc.data_coding, None, 0, segs)
    part = build_parts(msg, smsc)[0 if parts == 1 else 1]
    mid = "0012D687"  # the simulator's ids: its count, in hex (its default)
    resp = encode(Pdu(C.SUBMIT_SM_RESP, 0, 2, MessageIdResp(mid)))
    at = datetime(2026, 12, 6, 11, 0, tzinfo=UTC)
    text = format_receipt_text(
        mid, "DELIVRD", "000", 1, 1, submit_date=at, done_date=at, text="Your verification c"
    )
    back = ShortMessage(
        "", 1, 1, "8613800138000", 5, 0, "BRIDGE", C.ESM_DELIVERY_RECEIPT,
        short_message=text.encode("ascii"),
        tlvs=((C.RECEIPTED_MESSAGE_ID, mid.encode() + b"\0"), (C.MESSAGE_STATE, b"\x02")),
    )  # fmt: skip
    deliver = encode(Pdu(C.DELIVER_SM, 0, 7, back))

    # What the session calls for a submit_sm: encode(Pdu(...)) before session 55.
    request = getattr(codec, "encode_sm_request", None) or (
        lambda cid, seq, body: encode(Pdu(cid, 0, seq, body))
    )
    session = BindSession(Bind("b", "b"), BindMode.TRANSCEIVER, window=100)
    session.start(0.0)
    session.data_to_send()
    session.receive_data(encode(Pdu(C.BIND_TRANSCEIVER_RESP, 0, 1, BindResp("sim"))), 0.0)

    def exchange() -> None:
        seq = session.submit(part, 1.0, None)
        session.data_to_send()
        session.receive_data(resp[:12] + seq.to_bytes(4, "big") + resp[16:], 1.0)
        session.receive_data(deliver, 1.0)
        session.ack_deliver(7)
        session.data_to_send()

    class NoBatcher:
        def add_call(self, item: Any, call: Any) -> None:
            return None

    loop = asyncio.new_event_loop()
    inbound = Inbound(object(), {"sim": smsc})  # type: ignore[arg-type]
    inbound._receipts = NoBatcher()  # type: ignore[assignment]
    body = decode(deliver).body
    fut = loop.create_future()
    out = SubmitOutcome(0, "ok", 0, "ESME_ROK", mid, 1.0)
    rule = msgid_rule(smsc)
    return {
        "build": lambda: build_parts(msg, smsc),
        "encode_submit": lambda: request(C.SUBMIT_SM, 5, part),
        "session": exchange,
        "decode_resp": lambda: decode(resp),
        "decode_deliver": lambda: decode(deliver),
        "receipt": lambda: inbound._receipt("sim", body, fut),  # type: ignore[arg-type]
        "sent": lambda: _sent("msg_1", 1, "sim", out, rule, 1_000, loop),
    }


def counting(name: str, calls: int, parts: int) -> None:
    """Under callgrind: the loop of `name`, instrumentation on around it only."""
    fn = (lambda: None) if name == "empty" else pieces(parts)[name]
    for _ in range(200):
        fn()
    pid = str(os.getpid())
    subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
    for _ in range(calls):
        fn()
    subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)


def count(tree: str, name: str, calls: int, parts: int = 1) -> float:
    """Instructions counted over `calls` calls of `name` in `tree` (the toggles' own included)."""
    out = tempfile.mktemp(prefix="callgrind.pieces.")
    os.environ["PYTHONHASHSEED"] = "0"  # the copy's (CHILDREN.callgrind passes this process's)
    os.environ["PYTHONPATH"] = str(Path(tree).resolve())
    cmd = [sys.executable, __file__, "--counting", name, "--calls", str(calls),
           "--parts", str(parts)]  # fmt: skip
    try:
        _stdout, total = CHILDREN.callgrind(cmd, out, TIMEOUT_S)
    finally:
        Path(out).unlink(missing_ok=True)
    return float(total)


def per_call(tree: str, names: list[str], calls: int, parts: int = 1) -> dict[str, float]:
    base = count(tree, "empty", calls)
    return {n: (count(tree, n, calls, parts) - base) / calls for n in names}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("names", nargs="*", metavar="PIECE", help=f"of {', '.join(PIECES)}")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--parts", type=int, default=1, help="1, or a UCS-2 text of this many parts")
    ap.add_argument("--tree", default=str(HERE))
    ap.add_argument("--compare", help="an older checkout to compare with, alternating")
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--counting", help=argparse.SUPPRESS)
    args = ap.parse_args()
    CHILDREN.on_signals()
    if args.counting:
        sys.path.insert(0, os.environ.get("PYTHONPATH", str(HERE)))
        counting(args.counting, args.calls, args.parts)
        return
    names = args.names or list(PIECES)
    unknown = sorted(set(names) - set(PIECES))
    if unknown:
        raise SystemExit(f"unknown pieces: {', '.join(unknown)} (of {', '.join(PIECES)})")
    if not args.compare:
        got = per_call(args.tree, names, args.calls, args.parts)
        if args.json:
            print(json.dumps(got))
        for n, v in got.items():
            print(f"  {n:16s} {v:10,.0f} instructions a call")
        return
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for i in range(args.pairs):
        old = per_call(args.compare, names, args.calls, args.parts)
        new = per_call(str(HERE), names, args.calls, args.parts)
        for n in names:
            ratios[n].append(new[n] / old[n])
            print(f"pair {i + 1}: {n:16s} {old[n]:10,.0f} -> {new[n]:10,.0f} ({ratios[n][-1]:.3f})")
    for n in names:
        print(f"{n:16s} new/old, median of the pairs: {statistics.median(ratios[n]):.3f}")


if __name__ == "__main__":
    main()
