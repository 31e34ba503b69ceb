#!/usr/bin/env python3
"""The codec, the bind's session and the receipt path on seeded random and mutated PDUs: two trees.

Usage: python scripts/codec_differential.py --base DIR [--tree DIR] [--seed 57] [--cases 20000]
           [--kinds encode,decode,session,receipt,bind] [--loose-errors]

Why: a cut in what the owner does per part sent (the submit_sm's encoder, the read of each PDU an
SMSC sends, the receipt's fields) must write the same octets and read the same fields, events and
stored values for every input, the odd ones too, and refuse what it refused with the same error.
Each tree runs in a child process that imports `bridge` from it; both make the same seeded cases
(`random.Random(seed)`, nothing read from `bridge`) and print a digest of each outcome, and the
digests are compared. The kinds:
- `encode`: a submit_sm or deliver_sm body of random fields (mostly valid; some at or past their
  maximum length, non-latin-1, NULs inside, ints out of range or not ints, short_message of 0 to
  300 octets with or without a UDH, or not bytes; no TLVs, SAR's three, a message_payload of up to
  2,000 octets, or random ones, out-of-range and over-long included) and a sequence number (some
  out of range): `encode_sm_request` and `encode(Pdu(...))`, their octets or their error.
- `decode`: a frame an SMSC may send (deliver_sm of random fields, receipts, submit_sm_resp with
  ids of 0 to 70 characters, enquire_link, unbind, generic_nack, data_sm, a submit_sm, a header
  with random body octets), mutated most of the time (octets changed or zeroed, cut, inserted,
  dropped, appended, a TLV appended; command_length mostly fixed up): `decode`'s Pdu or error.
- `session`: a bound transceiver `BindSession` with one to three submits outstanding fed one to
  four such frames in random chunks: every event, what it writes back, the time-outs after.
- `receipt`: a receipt (texts of the standard layout and others; ids with letters, spaces,
  separators, 64 and 70 characters; stat words known, unknown, lower case, non-ASCII; err forms;
  NULs, noise ahead; the receipted_message_id, message_state and network_error_code TLVs, odd
  lengths included; intermediate notifications) through the real `Inbound._receipt`, its batcher
  stubbed: the `ReceiptIn` it queues and the arguments its commit is told, its answer, the
  unparsable count. Its SMSC one of five with their id rules (hex, decimal and string bases,
  tlv_id_base, case, leading zeros) or an unknown one, the set reloaded every 500 cases.
- `bind`: the receipt kind's receipts and the decode kind's deliver_sm (MOs among them), as
  frames, mutated half the time, read by a bound `BindSession` as the daemon's bind reads them
  (`read_receipts` set where the tree has it: session 60's receipts read without their
  ShortMessage) and handed to the real `Inbound` as the daemon's bind hands them
  (`on_receipt` for a `ReceiptReceived`, `on_deliver` for a `DeliverReceived`): every other
  event, each deliver's seq, command_id and salvaged flag, its answer or that it is an MO, what
  was queued and its commit's arguments, the unparsable count, what the session writes.
`--loose-errors` compares a refusal by its kind only (an encode error naming another field of a
value with two wrong, say). The exit status is 1 when a case differs; the first few are shown.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import struct
import sys
from pathlib import Path
from typing import Any

from children import Children  # scripts/ is the script's own folder

HERE = Path(__file__).resolve().parents[1]
CHILDREN = Children()  # the two trees' copies, ended with this script however it ends
RUN_TIMEOUT_S = 900.0
KINDS = ("encode", "decode", "session", "receipt", "bind")

# Constants written out, not read from `bridge`: the cases are the same whatever a tree says.
SUBMIT_SM, SUBMIT_SM_RESP, DELIVER_SM, DATA_SM = 0x04, 0x80000004, 0x05, 0x103
ENQUIRE_LINK, ENQUIRE_LINK_RESP, UNBIND, UNBIND_RESP = 0x15, 0x80000015, 0x06, 0x80000006
GENERIC_NACK, BIND_TRX_RESP = 0x80000000, 0x80000009
RECEIPTED_MESSAGE_ID, MESSAGE_STATE, NETWORK_ERROR_CODE = 0x001E, 0x0427, 0x0423
MESSAGE_PAYLOAD = 0x0424

STRINGS = ["", "a", "A1", "+8613800138000", "\x00", "é", "验", "\xff", " ", "x" * 5, "x" * 6,
           "y" * 16, "y" * 17, "z" * 20, "z" * 21, "12345678901234567890", "0102030405060708+",
           "260101000000000R", "a\x00b"]  # fmt: skip
ODD_INTS: list[Any] = [0, 1, 3, 8, 0x40, 0x80, 0xC0, 255, 256, -1, 0x7F, 0xF0, 2**32, True, 1.5,
                       None]  # fmt: skip
RECEIPT_TEXTS = [
    "id:{id} sub:001 dlvrd:001 submit date:2612061100 done date:2612061101 stat:{stat} err:{err}"
    " text:Hello",
    "id:{id} sub:001 dlvrd:001 submit date:2612061100 done date:261206110159 stat:{stat} err:{err}",
    "id:{id} sub:1 dlvrd:1 submit date:2612061100 done date:2613061101 stat:{stat} err:{err} text:",
    "id:{id} stat:{stat} err:{err}",
    "ID:{id} SUB:001 DLVRD:001 SUBMIT DATE:2612061100 DONE DATE:2612061101 STAT:{stat} ERR:{err}",
    "id:{id}  sub:001 dlvrd:001 submit date:2612061100 done date:2612061101 stat:{stat} err:{err}",
    "id: {id} sub:001 dlvrd:001 submit_date:2612061100 done_date:2612061101 stat:{stat} err:{err}",
    "stat:{stat} err:{err}",
    "",
    "garbage",
    "id:{id} sub:001 dlvrd:001 submit date:2612061100 done date:2612061101 stat:{stat} err:{err}"
    " text:a\x00b",
    "id:{id} sub:001 dlvrd:001 submit date:2612061100 done date:2612061101 stat:{stat}"
    " err:{err}\x00",
]
RECEIPT_IDS = ["0012D687", "abc", "12345", "A1b2C3", "\xa0x", "x\x85", "1" * 64, "1" * 70, "é",
               "id\x1c", "00b8be19", "12107289", "0x1F", "000", "1_000", "12 34"]  # fmt: skip
# The receipt kind's SMSCs, each with its id rules (the key's bases, case, leading zeros), and
# the set a reload swaps in every RELOAD_EVERY cases (options changed, one SMSC gone, one new):
# the key a receipt is stored under is its SMSC's rules' (session 59 review: with none
# configured, the key's own code never ran here).
RECEIPT_SMSCS: list[dict[str, dict[str, Any]]] = [
    {
        "plain": {},
        "hexdec": {"resp_id_base": "hex", "receipt_id_base": "dec"},
        "tlvrec": {"resp_id_base": "hex", "receipt_id_base": "dec", "tlv_id_base": "receipt",
                   "id_strip_leading_zeros": False},
        "asis": {"id_case_insensitive": False, "id_strip_leading_zeros": False},
        "strhex": {"receipt_id_base": "hex", "id_case_insensitive": False},
    },
    {
        "plain": {"resp_id_base": "hex", "receipt_id_base": "hex"},
        "hexdec": {"id_case_insensitive": False},
        "asis": {"resp_id_base": "dec", "receipt_id_base": "dec", "tlv_id_base": "receipt"},
        "new": {"id_strip_leading_zeros": False},
    },
]  # fmt: skip
RECEIPT_SMSC_NAMES = ["plain", "hexdec", "tlvrec", "asis", "strhex", "new", "unknown"]
RELOAD_EVERY = 500
STATS = ["DELIVRD", "delivrd", "UNDELIV", "ExPiReD", "BOGUS", "ACKED", "deleted", "ß", "\xff",
         "ÿÿ", "DELIVERED", "accepted", "µ", "REJECTD\x1f"]  # fmt: skip
ERRS = ["000", "0", "001", "err", "ÿ", "00"]
EMPTY = ("", 0, 0, "", 0, 0, "", 0, 0, 0, "", "", 0, 0, 0, 0, b"", ())  # ShortMessage()'s fields


def octets(r: random.Random, n: int) -> bytes:
    return bytes(r.randrange(256) for _ in range(n))


def short_message(r: random.Random) -> Any:
    if r.random() < 0.05:
        return r.choice([None, "text", bytearray(b"ab"), memoryview(b"xy"), 5])
    n = r.choice([0, 0, 1, 6, 140, 153, 160, 253, 254, 254, 255, 300, r.randrange(255),
                  r.randrange(255)])  # fmt: skip
    b = octets(r, n)
    if n >= 6 and r.random() < 0.4:  # a UDH: 8-bit or 16-bit reference
        b = r.choice([b"\x05\x00\x03\x07\x03\x01", b"\x06\x08\x04\x12\x34\x03\x02"]) + b[6:]
    return b


def tlvs(r: random.Random) -> Any:
    k = r.random()
    if k < 0.4:
        return ()
    if k < 0.7:  # SAR
        ref = r.randrange(65536).to_bytes(2, "big")
        total, seq = bytes([r.randrange(1, 9)]), bytes([r.randrange(1, 9)])
        return ((0x020C, ref), (0x020E, total), (0x020F, seq))
    if k < 0.8:
        return ((MESSAGE_PAYLOAD, octets(r, r.randrange(2000))),)
    out: list[Any] = []
    for _ in range(r.randrange(1, 4)):
        tag = r.choice([0x020C, 0x020E, 0x020F, MESSAGE_PAYLOAD, RECEIPTED_MESSAGE_ID,
                        MESSAGE_STATE, NETWORK_ERROR_CODE, 0x1400, r.randrange(0x10000), 0x10000,
                        -1])  # fmt: skip
        val = r.choice([b"", b"\x01", b"\x00\x07", octets(r, r.randrange(10)), b"x" * 300,
                        "str", bytearray(b"ba"), None, b"y" * 65535, b"y" * 65536])  # fmt: skip
        out.append((tag,) if r.random() < 0.03 else (tag, val))
    return tuple(out) if r.random() < 0.9 else out


def sm_fields(r: random.Random) -> list[Any]:
    """ShortMessage's 18 fields, in its order."""
    odd = r.choice([0.0, 0.0, 0.01, 0.05, 0.2])

    def s() -> Any:
        if r.random() < odd / 5:
            return r.choice([None, 5, b"ab"])
        if r.random() > odd:
            return r.choice(["", "+8613800138000", "BRIDGE", "0102030405060708+", "x" * 5,
                             "y" * 16, "z" * 20, "é\xff", "CMT"])  # fmt: skip
        return r.choice(STRINGS)

    def i() -> Any:
        return r.randrange(256) if r.random() > odd else r.choice(ODD_INTS)

    st = s() if r.random() < odd * 3 else r.choice(["", "CMT", "xxxxx", "\xe9", "WAP"])
    return [st, i(), i(), s(), i(), i(), s(), i(), i(), i(), s(), s(), i(), i(), i(), i(),
            short_message(r), tlvs(r)]  # fmt: skip


def receipt_fields(r: random.Random) -> list[Any]:
    text = r.choice(RECEIPT_TEXTS).format(
        id=r.choice(RECEIPT_IDS), stat=r.choice(STATS), err=r.choice(ERRS)
    )
    raw = text.encode("latin-1", "replace")
    if r.random() < 0.1:
        raw = octets(r, r.randrange(40)) + raw
    tl: list[tuple[int, bytes]] = []
    for _ in range(r.randrange(4)):
        tag = r.choice([RECEIPTED_MESSAGE_ID, MESSAGE_STATE, NETWORK_ERROR_CODE, MESSAGE_PAYLOAD,
                        0x1400])  # fmt: skip
        if tag == MESSAGE_STATE:
            v = r.choice([b"", b"\x00", b"\x02", b"\x05", b"\x09", b"\xff", b"\x00\x02",
                          b"\x00\x00\x00\x00\x02", b"\x01\x00\x00\x00\x02"])  # fmt: skip
        elif tag == RECEIPTED_MESSAGE_ID:
            v = r.choice([b"", b"\x00", b"0012D687\x00", b" abc ", b"X", b"\xe9", b"12107289",
                          b"00B8BE19", b"0x00ff\x00", b"000"])  # fmt: skip
        elif tag == NETWORK_ERROR_CODE:
            v = r.choice([b"", b"\x03\x00\x01", b"\x00\x05", b"\x01"])
        else:
            v = raw if r.random() < 0.5 else b""
        tl.append((tag, v))
    esm = r.choice([0x04, 0x04, 0x08, 0x20, 0x24, 0x00])
    sm = raw if r.random() < 0.85 else b""
    return ["", 1, 1, "8613800138000", 0, 0, "BRIDGE", esm, 0, 0, "", "", 0, 0, 0, 0, sm,
            tuple(tl)]  # fmt: skip


class Tree:
    """What a case needs of the tree under test (imported in the child only)."""

    def __init__(self, loose: bool) -> None:
        from bridge.smpp import codec

        self.codec = codec
        self.loose = loose

    def sm(self, fields: list[Any]) -> Any:
        return self.codec.ShortMessage(*fields)

    def outcome(self, e: BaseException) -> str:
        if self.loose:
            return "refused"
        extra = f"{e.status}/{e.command_id}/{e.seq}" if isinstance(e, self.codec.PduError) else ""
        return f"{type(e).__name__} {getattr(e, 'field', '')} {extra} {e}"


def cstring(r: random.Random, maxlen: int) -> str:
    """Up to `maxlen` octets (NUL included), one past it now and then; no NUL inside."""
    n = r.choice([0, 0, r.randrange(maxlen), maxlen - 1, maxlen if r.random() < 0.1 else 0])
    return "".join(chr(r.randrange(1, 256)) for _ in range(n))


def wire_fields(r: random.Random) -> list[Any]:
    """ShortMessage's fields as an SMSC may send them (any octets, C-strings at their maxima)."""
    i = r.randrange
    tl = r.choice(
        [
            (),
            (),
            ((MESSAGE_STATE, b"\x02"), (RECEIPTED_MESSAGE_ID, b"ab1\0")),
            ((0x1400, octets(r, i(6))),),
            ((MESSAGE_PAYLOAD, octets(r, i(300))),),
        ]
    )
    return [cstring(r, 6), i(256), i(256), cstring(r, 21), i(256), i(256), cstring(r, 21), i(256),
            i(256), i(256), cstring(r, 17), cstring(r, 17), i(256), i(256), i(256), i(256),
            octets(r, r.choice([0, 254, i(255)])), tl]  # fmt: skip


def body_octets(f: list[Any]) -> bytes:
    """A submit_sm or deliver_sm body written here (not by a tree): its cases are its own."""
    st, ston, snpi, sa, dton, dnpi, da, esm, pid, prio, sdt, vp, rd, rip, dc, dmid, sm, tl = f

    def c(s: str) -> bytes:
        return s.encode("latin-1") + b"\0"

    return b"".join(
        [c(st), bytes([ston, snpi]), c(sa), bytes([dton, dnpi]), c(da), bytes([esm, pid, prio]),
         c(sdt), c(vp), bytes([rd, rip, dc, dmid, len(sm)]), sm]
        + [struct.pack(">HH", tag, len(v)) + v for tag, v in tl]
    )  # fmt: skip


def frame(r: random.Random) -> bytes:
    """A PDU an SMSC may send, written here."""
    k = r.randrange(12)
    seq = r.randrange(1, 50)
    if k < 4:
        cid, body = DELIVER_SM, body_octets(wire_fields(r))
    elif k < 6:
        cid, body = DELIVER_SM, body_octets(receipt_fields(r))
    elif k == 6:
        mid = r.choice([b"", b"0012D687", b"x" * 64, b"y" * 65, b"z" * 70])
        status = r.choice([0, 0, 8, 0x58])
        return struct.pack(">IIII", 17 + len(mid), SUBMIT_SM_RESP, status, seq) + mid + b"\0"
    elif k == 7:
        cid = r.choice([ENQUIRE_LINK, ENQUIRE_LINK_RESP, UNBIND, UNBIND_RESP, GENERIC_NACK])
        return struct.pack(">IIII", 16, cid, r.choice([0, 3]), seq)
    elif k == 8:
        cid, body = SUBMIT_SM, body_octets(list(EMPTY))
    elif k == 9:
        cid = r.choice([DELIVER_SM, SUBMIT_SM_RESP, DATA_SM, SUBMIT_SM, 0x99, GENERIC_NACK])
        body = octets(r, r.randrange(80))
    elif k == 10:  # a data_sm receipt
        cid = DATA_SM
        body = (b"\0\x01\x01123\0\0\0BRIDGE\0\x04\0\0" + b"\x00\x1e\x00\x04abc\0"
                + b"\x04\x27\x00\x01\x02")  # fmt: skip
    else:
        cid, body = DELIVER_SM, body_octets(list(EMPTY))
    return struct.pack(">IIII", 16 + len(body), cid, 0, seq) + body


def mutated(r: random.Random, f: bytes) -> bytes:
    b = bytearray(f)
    for _ in range(r.randrange(4)):
        op = r.randrange(7)
        if op == 0 and len(b) > 16:
            b[r.randrange(16, len(b))] = r.randrange(256)
        elif op == 1 and len(b) > 16:
            b[r.randrange(16, len(b))] = 0
        elif op == 2 and len(b) > 16:
            del b[r.randrange(16, len(b)) :]
        elif op == 3:
            b += octets(r, r.randrange(1, 8))
        elif op == 4 and len(b) > 16:
            del b[r.randrange(16, len(b))]
        elif op == 5 and len(b) > 16:
            i = r.randrange(16, len(b) + 1)
            b[i:i] = octets(r, r.randrange(1, 5))
        elif op == 6:  # a TLV after the body, maybe cut short
            tag = r.choice([RECEIPTED_MESSAGE_ID, MESSAGE_STATE, NETWORK_ERROR_CODE, 0x99])
            b += struct.pack(">HH", tag, r.randrange(4)) + octets(r, r.randrange(4))
    if len(b) >= 4 and r.random() < 0.9:
        struct.pack_into(">I", b, 0, len(b))
    return bytes(b)


def encode_case(t: Tree, r: random.Random) -> str:
    fields = sm_fields(r)
    cid = r.choice([SUBMIT_SM, SUBMIT_SM, DELIVER_SM])
    seq = r.choice([1, 7, 0x7FFFFFFF, 2**32, -1] + [r.randrange(1, 2**31)] * 10)
    c = t.codec
    out = []
    for way in ("request", "encode"):
        m = t.sm(fields)
        try:
            got = (
                c.encode_sm_request(cid, seq, m)
                if way == "request"
                else c.encode(c.Pdu(cid, 0, seq, m))
            )
            out.append(got.hex())
        except Exception as e:  # compared
            out.append(t.outcome(e))
    return " | ".join(out)


def decode_case(t: Tree, r: random.Random) -> str:
    f = frame(r)
    if r.random() < 0.7:
        f = mutated(r, f)
    try:
        p = t.codec.decode(f)
    except Exception as e:  # compared
        return t.outcome(e)
    return f"{p.command_id} {p.status} {p.seq} {p.body!r}"


def session_case(t: Tree, r: random.Random) -> str:
    from bridge.smpp.session import BindMode, BindSession

    c = t.codec
    s = BindSession(c.Bind("esme", "pw"), BindMode.TRANSCEIVER, window=10, response_timeout_s=5)
    s.start(0.0)
    s.data_to_send()
    bound = c.encode(c.Pdu(BIND_TRX_RESP, 0, 1, c.BindResp("smsc")))
    log = [repr(s.receive_data(bound, 0.1))]
    for k in range(r.randrange(1, 4)):
        part = c.ShortMessage(destination_addr="1", short_message=b"hi")
        log.append(repr(s.submit(part, 0.2, ("context", k))))
    log.append(s.data_to_send().hex())
    data = b"".join(
        mutated(r, frame(r)) if r.random() < 0.5 else frame(r) for _ in range(r.randrange(1, 5))
    )
    pos = 0
    while pos < len(data):
        n = r.randrange(1, 200)
        try:
            log.append(repr(s.receive_data(data[pos : pos + n], 0.3)))
        except Exception as e:  # compared (none raises: the session's word)
            log.append(t.outcome(e))
            break
        pos += n
    log.append(s.data_to_send().hex())
    log.append(repr(s.on_timer(10.0)))
    log.append(f"{s.state} {s.in_flight} {s.late_count} {s.data_to_send().hex()}")
    return "\n".join(log)


class ReceiptCase:
    """`Inbound._receipt` with its batcher stubbed: what it queues (the `ReceiptIn` and the
    arguments its commit is told), what it answers; its SMSC one of RECEIPT_SMSCS' (or none
    configured), the set reloaded every RELOAD_EVERY cases."""

    def __init__(self, t: Tree) -> None:
        from bridge.config import SmscConfig
        from bridge.pipeline.inbound import Inbound

        class Store:
            commits_in_order = True

        self.t = t
        self.queued: list[Any] = []
        self.configs = [
            {n: SmscConfig(name=n, system_id="t", password="t", **kw) for n, kw in s.items()}
            for s in RECEIPT_SMSCS
        ]
        self.calls = 0
        self.inbound = Inbound(
            Store(),  # type: ignore[arg-type]
            self.configs[0],
            clock=lambda: 1_796_000_000.0,
        )
        queued = self.queued

        class Batcher:
            def add_call(self, item: Any, done: Any) -> None:
                # The commit's arguments: a partial's `args` (sessions 59-63), or the tuple
                # the receipt is queued with (session 64), whose state is the ReceiptState's
                # text (str() of the member the trees before queued: compared as that).
                key, state, stat, err = getattr(done, "args", done)[2:]
                queued.append((item, (key, str(state), stat, err)))

        self.inbound._receipts = Batcher()  # type: ignore[assignment]

    def __call__(self, r: random.Random) -> str:
        self.calls += 1
        if self.calls % RELOAD_EVERY == 0:
            self.inbound.reconfigure(self.configs[self.calls // RELOAD_EVERY % 2])
        smsc = r.choice(RECEIPT_SMSC_NAMES)
        body = self.t.sm(receipt_fields(r))
        self.queued.clear()

        class Answer:
            value: Any = None

            def set_result(self, v: Any) -> None:
                self.value = v

            def done(self) -> bool:
                return self.value is not None

        answer = Answer()
        try:
            self.inbound._receipt(smsc, body, answer)  # type: ignore[arg-type]
        except Exception as e:  # compared
            return self.t.outcome(e)
        return f"{answer.value} {self.queued!r} {self.inbound.unparsable}"


class BindCase(ReceiptCase):
    """A deliver_sm frame through a bound `BindSession` and the real `Inbound`, as the daemon's
    bind takes it (the `bind` kind)."""

    def __call__(self, r: random.Random) -> str:
        from bridge.smpp import session as session_mod
        from bridge.smpp.session import BindMode, BindSession, DeliverReceived

        receipt_event = getattr(session_mod, "ReceiptReceived", None)  # session 60's

        self.calls += 1
        if self.calls % RELOAD_EVERY == 0:
            self.inbound.reconfigure(self.configs[self.calls // RELOAD_EVERY % 2])
        smsc = r.choice(RECEIPT_SMSC_NAMES)
        c = self.t.codec
        s = BindSession(c.Bind("esme", "pw"), BindMode.TRANSCEIVER, window=10)
        receipts = getattr(self.inbound, "on_receipt", None)
        if receipts is not None:
            s.read_receipts = True
        s.start(0.0)
        s.data_to_send()
        s.receive_data(c.encode(c.Pdu(BIND_TRX_RESP, 0, 1, c.BindResp("smsc"))), 0.1)
        fields = receipt_fields(r) if r.random() < 0.7 else wire_fields(r)
        seq = r.randrange(1, 50)
        body = body_octets(fields)
        f = struct.pack(">IIII", 16 + len(body), DELIVER_SM, 0, seq) + body
        if r.random() < 0.5:
            f = mutated(r, f)
        log = []
        for ev in s.receive_data(f, 0.3):
            self.queued.clear()
            before = self.inbound.unparsable
            if isinstance(ev, DeliverReceived):
                got: Any = self.inbound.on_deliver(smsc, ev.body)
            elif receipt_event is not None and isinstance(ev, receipt_event):
                got = receipts(smsc, ev)  # type: ignore[misc]
            else:
                log.append(repr(ev))
                continue
            if hasattr(got, "close"):  # an MO's coroutine: not run here
                got.close()
                answer: Any = "mo"
            else:
                answer = got.result() if got.done() else "pending"
            log.append(
                f"deliver {ev.seq} {ev.command_id} {getattr(ev, 'salvaged', False)} {answer} "
                f"{self.queued!r} {self.inbound.unparsable - before}"
            )
        log.append(f"{s.state} {s.data_to_send().hex()}")
        return "\n".join(log)


def child(kind: str, seed: int, cases: int, loose: bool, show: set[int]) -> None:
    t = Tree(loose)
    r = random.Random(f"{kind}/{seed}")
    run = {
        "encode": lambda: encode_case(t, r),
        "decode": lambda: decode_case(t, r),
        "session": lambda: session_case(t, r),
    }.get(kind)
    receipt = ReceiptCase(t) if kind == "receipt" else BindCase(t) if kind == "bind" else None
    for i in range(cases):
        got = run() if run is not None else receipt(r)  # type: ignore[misc]
        if i in show:
            print(json.dumps([i, got]))
        elif not show:
            digest = hashlib.sha1(got.encode("utf-8", "backslashreplace")).hexdigest()[:16]
            print(json.dumps([i, digest]))


def run_tree(tree: str, kind: str, args: argparse.Namespace, show: set[int]) -> list[Any]:
    argv = [sys.executable, __file__, "--child", tree, "--kind", kind, "--seed", str(args.seed),
            "--cases", str(args.cases)]  # fmt: skip
    if args.loose_errors:
        argv.append("--loose-errors")
    if show:
        argv += ["--show", ",".join(map(str, sorted(show)))]
    code, out, err = CHILDREN.run(argv, RUN_TIMEOUT_S, env={"PYTHONHASHSEED": "0"})
    if code:
        raise SystemExit(f"the {kind} child of {tree} failed:\n{err[-3000:]}")
    return [json.loads(line) for line in out.splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", help="the tree to compare against")
    ap.add_argument("--tree", default=str(HERE))
    ap.add_argument("--seed", type=int, default=57)
    ap.add_argument("--cases", type=int, default=20000)
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--loose-errors", action="store_true")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--kind", help=argparse.SUPPRESS)
    ap.add_argument("--show", default="", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, str(Path(args.child).resolve()))
        show = {int(x) for x in args.show.split(",") if x}
        child(args.kind, args.seed, args.cases, args.loose_errors, show)
        return
    if not args.base:
        ap.error("--base is required")
    kinds = args.kinds.split(",")
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        ap.error(f"unknown kinds: {', '.join(unknown)} (of {', '.join(KINDS)})")
    CHILDREN.on_signals()
    failed = False
    try:
        for kind in kinds:
            base = run_tree(args.base, kind, args, set())
            new = run_tree(args.tree, kind, args, set())
            differ = [b[0] for b, n in zip(base, new, strict=True) if b != n]
            print(f"{kind}: cases {len(base)}, differing {len(differ)}")
            if differ:
                failed = True
                first = set(differ[:3])
                for (i, old), (_, got) in zip(
                    run_tree(args.base, kind, args, first),
                    run_tree(args.tree, kind, args, first),
                    strict=True,
                ):
                    print(f"  case {i}:\n    base: {old[:600]!r}\n    tree: {got[:600]!r}")
    finally:
        CHILDREN.end()
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
