#!/usr/bin/env python3
"""Throughput of the text engine: preview() + encode_message() per message, one process.

Usage: python scripts/bench_text.py [--seconds 1.0]

Each iteration does what the API does for one accepted message: a preview (encoding, segments,
billable units) and the split into submit_sm parts.
"""

from __future__ import annotations

import argparse
import time

from bridge.text import EncodeOptions, encode_message, preview

CASES = {
    "a) 1-part ASCII": "Your verification code is 482913. It expires in 5 minutes.",
    "b) 3-part GSM + extension chars": (
        "Order #A-1042 confirmed: total €129.90 [incl. VAT]. Track at example.com/t?id={42}. "
        "Questions? Reply HELP | STOP to opt out ~ thanks! "
    )
    * 3,
    "c) 4-part CJK": "【示例】您的订单已发货，预计三天内送达。请保持电话畅通，如有疑问请联系客服。"
    * 6,
}


def bench(text: str, seconds: float) -> tuple[float, int, str]:
    opts = EncodeOptions()
    n = 0
    batch = 1000
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            preview(text, opts)
            encode_message(text, opts, 7)
        n += batch
        now = time.perf_counter()
        if now >= deadline:
            break
    p = preview(text, opts)
    info = f"{p['encoding']}, {p['segments']} segments, {p['billable_units']} units"
    return n / (now - start), n, info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=1.0, help="time per case")
    args = ap.parse_args()
    for name, text in CASES.items():
        rate, _, info = bench(text, args.seconds)
        print(f"{name:34s} {rate:>12,.0f} msg/s   ({info})")


if __name__ == "__main__":
    main()
