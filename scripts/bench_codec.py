"""Codec throughput: our struct-based hot path against smpplib, side by side.

Measures encode and decode of a realistic submit_sm (UCS-2 text, receipt requested) and of a
realistic delivery receipt deliver_sm (receipt text plus the receipted_message_id, message_state
and network_error_code TLVs). Encoding includes building the PDU object from its fields on both
sides, since that is what the session does per message.

    python scripts/bench_codec.py [--duration 4] [--json]

``run(duration)`` returns the figures so that scripts/bench_smpp.py can embed them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from smpplib import smpp as sl_smpp

from bridge.smpp import constants as C
from bridge.smpp.codec import Pdu, ShortMessage, decode, encode

SUBMIT_TEXT = ("Your verification code is 482913. It expires in 5 minutes. 验证码482913" * 2)[:70]
SUBMIT_FIELDS: dict[str, Any] = {
    "source_addr_ton": 5,
    "source_addr_npi": 0,
    "source_addr": "BRIDGE",
    "dest_addr_ton": 1,
    "dest_addr_npi": 1,
    "destination_addr": "8613800138000",
    "registered_delivery": 1,
    "data_coding": C.DC_UCS2,
}
SUBMIT_SM = SUBMIT_TEXT.encode("utf-16-be")

RECEIPT_ID = "0A1B2C3D4E"
RECEIPT_TEXT = (
    f"id:{RECEIPT_ID} sub:001 dlvrd:001 submit date:2401011200 done date:2401011201 "
    "stat:DELIVRD err:000 text:Your verification"
).encode()
DELIVER_FIELDS: dict[str, Any] = {
    "source_addr_ton": 1,
    "source_addr_npi": 1,
    "source_addr": "8613800138000",
    "dest_addr_ton": 5,
    "dest_addr_npi": 0,
    "destination_addr": "BRIDGE",
    "esm_class": C.ESM_DELIVERY_RECEIPT,
}
DELIVER_TLVS = (  # in the order smpplib emits them, so both produce identical bytes
    (C.NETWORK_ERROR_CODE, b"\x03\x00\x00"),
    (C.MESSAGE_STATE, bytes([C.MSG_STATE_DELIVERED])),
    (C.RECEIPTED_MESSAGE_ID, RECEIPT_ID.encode() + b"\0"),
)
DELIVER_SL_TLVS: dict[str, Any] = {
    "receipted_message_id": RECEIPT_ID,
    "message_state": C.MSG_STATE_DELIVERED,
    "network_error_code": b"\x03\x00\x00",
}


def _ours_submit_encode() -> bytes:
    body = ShortMessage(**SUBMIT_FIELDS, short_message=SUBMIT_SM)
    return encode(Pdu(C.SUBMIT_SM, 0, 12345, body))


def _sl_submit_encode() -> bytes:
    cmd = sl_smpp.make_pdu("submit_sm", sequence=12345, **SUBMIT_FIELDS, short_message=SUBMIT_SM)
    cmd.sequence = 12345
    data: bytes = cmd.generate()
    return data


def _ours_deliver_encode() -> bytes:
    body = ShortMessage(**DELIVER_FIELDS, short_message=RECEIPT_TEXT, tlvs=DELIVER_TLVS)
    return encode(Pdu(C.DELIVER_SM, 0, 777, body))


def _sl_deliver_encode() -> bytes:
    cmd = sl_smpp.make_pdu(
        "deliver_sm", sequence=777, **DELIVER_FIELDS, short_message=RECEIPT_TEXT, **DELIVER_SL_TLVS
    )
    cmd.sequence = 777
    data: bytes = cmd.generate()
    return data


def _sl_decode(frame: bytes) -> Any:
    return sl_smpp.parse_pdu(frame, sequence=0, allow_unknown_opt_params=True)


def _check_equivalence() -> tuple[bytes, bytes]:
    """Both codecs must produce the same bytes, or the comparison means nothing."""
    submit, deliver = _ours_submit_encode(), _ours_deliver_encode()
    if submit != _sl_submit_encode() or deliver != _sl_deliver_encode():
        raise SystemExit("our encoding differs from smpplib's; fix the codec before benchmarking")
    return submit, deliver


def _rate(fn: Callable[[], Any], seconds: float) -> float:
    """Calls per second over at least ``seconds`` of wall time, in batches to amortise the clock."""
    batch = 200
    calls = 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        for _ in range(batch):
            fn()
        calls += batch
        now = time.perf_counter()
        if now >= deadline:
            return calls / (now - start)


def run(duration: float = 4.0) -> dict[str, Any]:
    """Measure for about ``duration`` seconds in total; returns ops/s per PDU, operation and codec.

    Shape: ``{"submit_sm": {"encode": {"ours": ops, "smpplib": ops, "ratio": x}, "decode": {...}},
    "deliver_sm": {...}, "min_ratio": x, "duration": s}``.
    """
    submit, deliver = _check_equivalence()
    cases: dict[str, dict[str, tuple[Callable[[], Any], Callable[[], Any]]]] = {
        "submit_sm": {
            "encode": (_ours_submit_encode, _sl_submit_encode),
            "decode": (lambda: decode(submit), lambda: _sl_decode(submit)),
        },
        "deliver_sm": {
            "encode": (_ours_deliver_encode, _sl_deliver_encode),
            "decode": (lambda: decode(deliver), lambda: _sl_decode(deliver)),
        },
    }
    slice_s = duration / 8
    result: dict[str, Any] = {}
    ratios = []
    for name, ops in cases.items():
        result[name] = {}
        for op, (ours, theirs) in ops.items():
            ours(), theirs()  # warm up
            r_ours = _rate(ours, slice_s)
            r_theirs = _rate(theirs, slice_s)
            ratio = r_ours / r_theirs
            ratios.append(ratio)
            result[name][op] = {"ours": r_ours, "smpplib": r_theirs, "ratio": ratio}
    result["min_ratio"] = min(ratios)
    result["duration"] = duration
    return result


def _print_table(result: dict[str, Any]) -> None:
    print(f"{'PDU':<12}{'op':<8}{'ours ops/s':>14}{'us/op':>8}{'smpplib ops/s':>16}{'us/op':>8}"
          f"{'ratio':>8}")  # fmt: skip
    for name in ("submit_sm", "deliver_sm"):
        for op in ("encode", "decode"):
            r = result[name][op]
            print(
                f"{name:<12}{op:<8}{r['ours']:>14,.0f}{1e6 / r['ours']:>8.2f}"
                f"{r['smpplib']:>16,.0f}{1e6 / r['smpplib']:>8.2f}{r['ratio']:>7.1f}x"
            )
    print(f"slowest ratio: {result['min_ratio']:.1f}x (target >= 5x)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=4.0, help="total seconds (default 4)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = run(args.duration)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        _print_table(result)
    return 0 if result["min_ratio"] >= 5 else 1


if __name__ == "__main__":
    sys.exit(main())
