#!/usr/bin/env python3
"""What the owner writes to an SMSC for a seeded load, as a digest: two trees compared.

Usage: python scripts/send_path_wire.py [--tree DIR] [--messages 2000] [--seed 55]
       python scripts/send_path_wire.py --compare OLD_TREE [--messages 2000] [--seed 55]

Why: a cut on the send path (the codec's fast paths, the session's bookkeeping) must put the same
PDUs on the wire and match the same receipts. This sends a seeded mix of messages (GSM, UCS-2 and
Latin-1 texts of one to four parts, UDH (8- and 16-bit references), SAR and message_payload splits,
alphanumeric, national and international senders, with and without a validity), each message's
parts as the dispatcher hands them over (`submit_bodies`' bodies since session 59, `build_parts`'
ShortMessages before: a tree without the one takes the other), through the real `Connector` over
one bind to the simulator (a separate process), through a TCP relay in between
that keeps every octet the bridge writes, and hands every receipt to the real `Inbound` (its store
stubbed). It prints a digest of the bridge's PDUs with their sequence numbers masked (the SMSC's
ids, which the simulator numbers in the order it got the submits, are in no PDU the bridge writes),
sorted (parts of messages in flight interleave in their own order each run), the PDUs by command,
and the receipts keyed to a sent part's id. `--compare OLD` runs OLD's tree and this one and says
whether they agree.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from children import Children  # scripts/ is the script's own folder

HERE = Path(__file__).resolve().parents[1]
# The simulator, or a copy of this script for another tree: ended with it (children.py).
CHILDREN = Children()
KEY = "a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2s="
TEXTS = (
    "Your verification code is {n}.",
    "验证码 {n}，五分钟内有效。",
    "Café crème à {n} € — reçu",
    "Long GSM text {n} " + "lorem ipsum dolor sit amet " * 12,
    "长" * 150 + " {n}",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def relay(listen: int, target: int, sent: bytearray) -> asyncio.AbstractServer:
    """A TCP relay from `listen` to `target`, keeping what the client writes in `sent`."""

    async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, keep: bool) -> None:
        while data := await r.read(65536):
            if keep:
                sent.extend(data)
            w.write(data)
            await w.drain()
        w.close()

    async def serve(cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        sr, sw = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(pipe(cr, sw, True), pipe(sr, cw, False), return_exceptions=True)

    return await asyncio.start_server(serve, "127.0.0.1", listen)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="bridge-wire-"))
    try:
        return await _send(args, tmp)
    finally:
        CHILDREN.end(10)
        shutil.rmtree(tmp, ignore_errors=True)


async def _send(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    import yaml

    from bridge.config import parse_config
    from bridge.pipeline import submit_sm
    from bridge.pipeline.inbound import Inbound
    from bridge.smpp.codec import decode
    from bridge.smpp.connector import Connector
    from bridge.smpp.framing import Framer
    from bridge.smpp.tlvpack import pack_tlvs
    from bridge.store.models import ReceiptOutcome, WorkMessage, WorkSegment
    from bridge.text import EncodeOptions, encode_message
    from bridge.text.split import SplitMode

    # The parts as the dispatcher hands them to the connector: since session 59 their submit_sm
    # bodies (`submit_bodies`, most of them bytes), before that ShortMessages.
    parts_of = getattr(submit_sm, "submit_bodies", submit_sm.build_parts)

    sim_port, ctl_port, front = free_port(), free_port(), free_port()
    smsc_cfg = {"name": "sim", "host": "127.0.0.1", "port": front, "system_id": "w",
                "password": "w", "window": 50, "binds": 1, "bind_mode": "transceiver",
                "source_ton": 1, "validity_minutes": 1440}  # fmt: skip
    cfg_data = {
        "security": {"master_key": KEY},
        "logging": {"level": "WARNING"},
        "sim": {"enabled": True, "port": sim_port, "control_port": ctl_port,
                "receipt_delay_ms": 5, "system_id": "w", "password": "w"},
        "smscs": [smsc_cfg],
    }  # fmt: skip
    path = tmp / "wire.yaml"
    path.write_text(yaml.safe_dump(cfg_data))
    smsc = parse_config(cfg_data, env={}).smscs[0]
    CHILDREN.popen(
        [sys.executable, "-m", "bridge.cli", "sim", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(Path(args.tree).resolve())},
    )
    sent = bytearray()
    keys: list[str] = []
    done = asyncio.Event()
    rng = random.Random(args.seed)
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", sim_port), 0.2).close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        server = await relay(front, sim_port, sent)
        total = {"parts": 0}

        class Store:
            commits_in_order = True

            async def apply_receipts(self, items: list[Any], now: int) -> Any:
                keys.extend(i.smsc_msg_id for i in items)
                if len(keys) >= total["parts"]:
                    done.set()
                return ReceiptOutcome(len(items), 0)

        inbound = Inbound(Store(), {"sim": smsc})  # type: ignore[arg-type]
        # The receipt handler where the tree has one (session 60: receipts read without
        # their ShortMessage), as the daemon wires it (app.py).
        receipts = getattr(inbound, "on_receipt", None)
        conn = Connector(smsc, inbound.on_deliver, **({"on_receipt": receipts} if receipts else {}))
        await conn.start()
        if not await conn.wait_up(10):
            raise SystemExit("bind did not come up")
        messages = []
        for n in range(args.messages):
            text = rng.choice(TEXTS).format(n=rng.randrange(10**6))
            # SAR and UDH16 since session 57 (their parts take the codec's plain path too).
            split = rng.choice([SplitMode.UDH8, SplitMode.UDH8, SplitMode.UDH16, SplitMode.SAR,
                                SplitMode.PAYLOAD])  # fmt: skip
            enc = encode_message(text, EncodeOptions(split=split, allow_latin1=True), n % 256)
            segs = tuple(
                WorkSegment(p.seq, p.total, p.esm_class, p.short_message, pack_tlvs(p.tlvs), 0)
                for p in enc.parts
            )
            sender = rng.choice(["BRIDGE", "+447700900123", "12345", None])
            expires = rng.choice([None, 1_900_000_000_000 + n * 1000])
            to = f"+86138{rng.randrange(10**8):08d}"
            msg = WorkMessage(f"m{n}", "acc", to, sender, enc.data_coding, expires, 0, segs)
            messages.append(msg)
            total["parts"] += len(segs)
        outcomes = await asyncio.gather(*(conn.send_message(parts_of(m, smsc)) for m in messages))
        ids = {o.message_id or "" for out in outcomes for o in out if o.kind == "ok"}
        await asyncio.wait_for(done.wait(), 120)
        await asyncio.sleep(0.2)  # the last deliver_sm_resp written
        await conn.stop(5)
        server.close()
    finally:
        CHILDREN.end(10)
    frames = Framer().feed(bytes(sent))
    masked = sorted(f[:12] + b"\0\0\0\0" + f[16:] for f in frames)
    by_cmd = Counter(f"0x{decode(f).command_id:08X}" for f in frames)
    from bridge.pipeline.dispatcher import msgid_rule
    from bridge.smpp.msgid import normalize_resp_id

    rule = msgid_rule(smsc)
    wanted = {normalize_resp_id(i, rule) for i in ids}
    return {
        "pdus": len(frames),
        "by_command": dict(sorted(by_cmd.items())),
        "digest": hashlib.sha256(b"".join(masked)).hexdigest(),
        "parts_accepted": sum(1 for out in outcomes for o in out if o.kind == "ok"),
        "receipts": len(keys),
        "receipts_keyed_to_a_sent_part": sum(1 for k in keys if k in wanted),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tree", default=str(HERE))
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=55)
    ap.add_argument("--compare")
    args = ap.parse_args()
    CHILDREN.on_signals()
    if args.compare:
        got = []
        for tree in (args.compare, str(HERE)):
            cmd = [sys.executable, __file__, "--tree", tree, "--messages", str(args.messages),
                   "--seed", str(args.seed)]  # fmt: skip
            code, out, err = CHILDREN.run(cmd, 600)
            if code:
                raise SystemExit(err[-3000:])
            got.append(json.loads(out.strip().splitlines()[-1]))
            print(f"{tree}: {got[-1]}")
        print("same PDUs and receipts" if got[0] == got[1] else "DIFFERENT")
        sys.exit(0 if got[0] == got[1] else 1)
    sys.path.insert(0, str(Path(args.tree).resolve()))
    print(json.dumps(CHILDREN.asyncio_run(run(args))))


if __name__ == "__main__":
    main()
