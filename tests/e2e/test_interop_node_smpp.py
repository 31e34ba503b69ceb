"""End to end against an SMSC built on node-smpp (`scripts/interop/smsc.js`), an SMPP 3.4
implementation independent of ours. Every other SMPP test runs against our own simulator,
written from the same reading of the specification as our codec: a misreading both share (a
TLV's encoding, a C-octet string's terminator, the UDH, the receipt's text) would never show.
Here node-smpp decodes what the daemon sends, field by field, and builds the binds' answers,
the receipts and the replies the daemon must read.

Without the npm package it installs it first where npm is (`scripts/interop/install.sh`, into
`scripts/interop/node_modules`, which git ignores); it skips, saying why, without node or
when that install fails."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from bridge.app import Daemon
from tests import interop_install
from tests.e2e.harness import client_for, create_account, final_status, make_config, wait_until
from tests.ports import free_port

INTEROP = Path(__file__).resolve().parents[2] / "scripts" / "interop"
NODE = shutil.which("node")
NODE_SMPP = Path(os.environ.get("NODE_SMPP_PATH", INTEROP / "node_modules" / "smpp"))


def _install_node_smpp() -> str:
    """node-smpp where it is missing and npm is here: scripts/interop/install.sh (pinned by its
    package-lock.json, from the registry), once for all of pytest's workers (tests/interop_install:
    a lock file, a failure tried once a run). So the README's one test command runs this test
    wherever node and npm are, and CI's `.ci/run` is that command and nothing more. Returns why
    the test skips, or ""."""
    if (NODE_SMPP / "package.json").exists():
        return ""
    npm = shutil.which("npm")
    if npm is None or "NODE_SMPP_PATH" in os.environ:
        return f"node-smpp is not installed at {NODE_SMPP} (run scripts/interop/install.sh)"
    lock = Path(tempfile.gettempdir()) / f"smpp-bridge-interop-{os.getuid()}.lock"
    run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    why = interop_install.install(INTEROP / "install.sh", NODE_SMPP, lock, run_id)
    return f"scripts/interop/{why}" if why else ""


_MISSING = "node is not installed (apt-get install nodejs)" if NODE is None else ""
_MISSING = _MISSING or _install_node_smpp()
pytestmark = [pytest.mark.skipif(bool(_MISSING), reason=_MISSING)]

# One SMSC entry per way of binding and splitting, each its own system_id on the node SMSC
# (its settings there: the ids it issues, how its receipts carry them).
ACCOUNTS = {
    # hex ids answered, the receipt's text naming them in decimal, no TLV: the hardest match
    "trx": {
        "password": "pw-trx",
        "id_format": "hex",
        "receipt_text_id": "dec",
        "receipts_as": "text",
    },
    "txrx": {"password": "pw-txrx", "id_format": "dec", "receipts_as": "tlv"},
    "u16": {
        "password": "pw-u16",
        "id_format": "hex",
        "receipts_as": "both",
        "receipt_dates": "seconds",
    },
    "pay": {
        "password": "pw-pay",
        "id_format": "dec",
        "receipt_pdu": "data_sm",
        "answer_jitter_ms": 50,
    },  # its answers out of order
    "tx": {"password": "pw-tx", "id_format": "hex"},  # a transmitter bind alone: no receipts
    "rx": {"password": "pw-rx"},  # a receiver bind alone: replies
}
CN, GB, US, FR = "+8613800138000", "+447700900123", "+12025550123", "+33612345678"
DE = "+4915112345678"


class NodeSmsc:
    """The node-smpp SMSC as a child process: commands on its stdin, its log a JSON-lines file."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.log = tmp / "smsc.jsonl"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        assert NODE is not None
        self.proc = await asyncio.create_subprocess_exec(
            NODE, str(INTEROP / "smsc.js"), "--port", str(self.port), "--log", str(self.log),
            "--accounts", json.dumps(ACCOUNTS), "--receipt-delay-ms", "20",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            env={**os.environ, "NODE_SMPP_PATH": str(NODE_SMPP)},
        )  # fmt: skip
        assert self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), 10)
        assert line.startswith(b"listening"), line

    def command(self, **c: Any) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(c).encode() + b"\n")

    def records(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line]

    def pdus(self, command: str, dir: str = "in", system_id: str | None = None) -> list[dict]:
        return [
            r
            for r in self.records()
            if r.get("dir") == dir
            and r.get("command") == command
            and (system_id is None or r.get("system_id") == system_id)
        ]

    async def stop(self) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 5)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def smsc_entry(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {
        "name": name, "port": port, "system_id": name, "password": ACCOUNTS[name]["password"],
        "reconnect_min_s": 0.2, "reconnect_max_s": 0.5, "enquire_link_s": 1,
        "throttle_pause_min_s": 0.05, "throttle_pause_max_s": 0.2, **extra,
    }  # fmt: skip


@pytest.fixture
async def node_smsc(tmp_path) -> AsyncIterator[NodeSmsc]:
    smsc = NodeSmsc(tmp_path)
    await smsc.start()
    yield smsc
    await smsc.stop()


def daemon_config(tmp_path: Path, port: int) -> Any:
    return make_config(
        tmp_path,
        sim={"enabled": False},
        smscs=[
            smsc_entry("trx", port, resp_id_base="hex", receipt_id_base="dec", validity_minutes=60),
            smsc_entry(
                "txrx", port, bind_mode="transmitter_receiver", split="sar", resp_id_base="dec"
            ),
            smsc_entry(
                "u16",
                port,
                split="udh16",
                resp_id_base="hex",
                receipt_id_base="hex",
                allow_latin1=True,
            ),
            smsc_entry("pay", port, split="payload", resp_id_base="dec"),
            smsc_entry("tx", port, bind_mode="transmitter", registered_delivery=0),
            smsc_entry("rx", port, bind_mode="receiver"),
        ],
        routes=[
            {"prefix": "+86", "smscs": ["trx"]},
            {"prefix": "+44", "smscs": ["txrx"]},
            {"prefix": "+1", "smscs": ["u16"]},
            {"prefix": "+33", "smscs": ["pay"]},
            {"prefix": "+49", "smscs": ["tx"]},
        ],
        default_route=[],
    )


def all_bound(d: Daemon) -> bool:
    """Every bind of every SMSC entry up (`is_up` counts the transmitting ones: not rx's)."""
    return all(b.up for c in d.connectors.values() for b in c._binds)


@contextlib.asynccontextmanager
async def running(tmp_path: Path, smsc: NodeSmsc) -> AsyncIterator[Daemon]:
    d = Daemon(daemon_config(tmp_path, smsc.port))
    await d.start()
    try:
        await wait_until(lambda: all_bound(d), 10)
        yield d
    finally:
        await d.stop()


def submits_to(smsc: NodeSmsc, number: str) -> list[dict[str, Any]]:
    return [p for p in smsc.pdus("submit_sm") if p["destination_addr"] == number.lstrip("+")]


def answer_to(smsc: NodeSmsc, pdu: dict[str, Any]) -> dict[str, Any]:
    """node-smpp's answer to a submit_sm it logged (same session and sequence)."""
    (resp,) = [
        r
        for r in smsc.pdus("submit_sm_resp", dir="out") + smsc.pdus("generic_nack", dir="out")
        if r["session"] == pdu["session"] and r["sequence_number"] == pdu["sequence_number"]
    ]
    return resp


def concat_info(pdu: dict[str, Any]) -> tuple[int, int, int] | None:
    """(reference, total, sequence) of a part as node-smpp parsed it: from its UDH (IE 0x00,
    8-bit reference; IE 0x08, 16-bit) or its sar_* TLVs; None for a message in one piece."""
    udh = pdu["short_message"].get("udh") if isinstance(pdu["short_message"], dict) else None
    if udh:
        (ie,) = [bytes.fromhex(u["hex"]) for u in udh]
        if ie[0] == 0x00:
            assert ie[1] == 3, ie.hex()
            return ie[2], ie[3], ie[4]
        assert ie[0] == 0x08 and ie[1] == 4, ie.hex()
        return int.from_bytes(ie[2:4], "big"), ie[4], ie[5]
    if "sar_msg_ref_num" in pdu:
        return pdu["sar_msg_ref_num"], pdu["sar_total_segments"], pdu["sar_segment_seqnum"]
    return None


def raw_time(pdu: dict[str, Any]) -> str:
    """The one SMPP time (16 characters and its NUL) in a submit_sm's octets, as sent."""
    (found,) = re.findall(rb"\x00(\d{15}[R+-])\x00", bytes.fromhex(pdu["raw"]))
    return found.decode()


def node_time(value: dict[str, str]) -> float:
    """A time node-smpp decoded (a Date, logged as ISO text) as a UNIX timestamp."""
    return datetime.fromisoformat(value["date"].replace("Z", "+00:00")).timestamp()


# What the daemon means to send on every submit_sm of these SMSC entries (their defaults).
COMMON = {
    "service_type": "", "source_addr_ton": 5, "source_addr_npi": 0, "source_addr": "smpp-bridge",
    "dest_addr_ton": 1, "dest_addr_npi": 1, "protocol_id": 0, "priority_flag": 0,
    "schedule_delivery_time": "", "registered_delivery": 1, "replace_if_present_flag": 0,
    "sm_default_msg_id": 0, "command_status": 0,
}  # fmt: skip

# (destination, text, data_coding, how node-smpp must find it split)
SENDS = [
    (CN, "Price 5€ [x] {y} ~^|\\ ok", 0, "one"),  # the extension table, one part
    ("+8613800138001", "x" * 152 + "€" + "y" * 20, 0, "udh8"),  # € would straddle parts 1-2
    ("+8613800138002", "长" * 66 + "😀" + "消息" * 10, 8, "udh8"),  # so would the surrogate pair
    (GB, "GSM long " + "abcdefghij" * 17 + " {ext}", 0, "sar"),
    ("+447700900124", "长消息" * 30, 8, "sar"),
    (US, "长消息" * 30, 8, "udh16"),
    ("+12025550124", "GSM " + "[0123456789]" * 20, 0, "udh16"),
    ("+12025550125", "naïve ±5 café", 3, "one"),  # Latin-1 (allow_latin1), one part
    (FR, "Payload " + "0123456789" * 20 + " €", 0, "payload"),
    ("+33612345679", "Charge utile " + "é长" * 50, 8, "payload"),
]


async def test_what_node_smpp_decodes_of_our_submits_is_what_we_meant(tmp_path, node_smsc):
    async with running(tmp_path, node_smsc) as d:
        creds = await create_account(d)
        async with client_for(d.http_port, creds) as c:
            ids = [(await c.send(to, text=text))["messages"][0]["id"] for to, text, *_ in SENDS]
            done = [await final_status(c, mid) for mid in ids]
            # A message's own validity goes as an absolute time (YYMMDDhhmmsstnnp, UTC "00+").
            r = await c.send("+12025550128", text="valid 30 min", validity_minutes=30)
            timed = await final_status(c, r["messages"][0]["id"])
    assert timed["status"] == "delivered", timed
    (p,) = submits_to(node_smsc, "+12025550128")
    raw_validity = raw_time(p)
    assert raw_validity.endswith("00+") and len(raw_validity) == 16, raw_validity
    assert abs(node_time(p["validity_period"]) - p["t"] / 1000 - 1800) < 5, p
    for (to, text, coding, split), m in zip(SENDS, done, strict=True):
        assert m["status"] == "delivered", (to, m)
        pdus = submits_to(node_smsc, to)
        assert len(pdus) == len(m["parts"]), (to, len(pdus), m["parts"])
        for p in pdus:
            assert {k: p[k] for k in COMMON} == COMMON, (to, p)
            assert p["destination_addr"] == to.lstrip("+")
            assert p["data_coding"] == coding, (to, p)
            assert p["esm_class"] == (0x40 if split in ("udh8", "udh16") else 0), (to, p)
            if p["system_id"] == "trx":  # validity_minutes 60, as node-smpp reads the time
                assert abs(node_time(p["validity_period"]) - p["t"] / 1000 - 3600) < 5, p
                raw_validity = raw_time(p)
                assert raw_validity == "000000010000000R"  # relative: one hour
            else:
                assert p["validity_period"] == "", (to, p)
        if split == "payload":
            (p,) = pdus
            assert p["short_message"] == {"message": ""}, p
            assert p["message_payload"] == {"message": text}, p
            assert concat_info(p) is None
        else:
            infos = [concat_info(p) for p in pdus]
            if split == "one":
                assert infos == [None], infos
            else:
                assert split != "sar" or all("udh" not in p["short_message"] for p in pdus)
                refs = {i[0] for i in infos if i}
                assert len(refs) == 1, infos
                assert [i[1:] for i in infos if i] == [(len(pdus), k + 1) for k in range(len(pdus))]
            # node-smpp decodes each part alone: a character cut in two would not survive.
            assert "".join(p["short_message"]["message"] for p in pdus) == text, to
        # Each part's receipt matched to it: the SMSC's id for part k is the one it answered
        # to part k's submit_sm.
        ids = [answer_to(node_smsc, p)["message_id"] for p in pdus]
        assert [part["smsc_message_id"] for part in m["parts"]] == ids, (to, m["parts"])
        assert all(part["status"] == "delivered" for part in m["parts"]), m["parts"]
    # The receipts went out as each entry's SMSC writes them (pay's as data_sm), each answered.
    receipts = node_smsc.pdus("deliver_sm", dir="out") + node_smsc.pdus("data_sm", dir="out")
    assert {r["system_id"] for r in node_smsc.pdus("data_sm", dir="out")} == {"pay"}
    assert len(receipts) == sum(len(m["parts"]) for m in done) + 1  # and the timed one
    trx = [r for r in receipts if r["system_id"] == "trx"]
    assert trx and all("receipted_message_id" not in r for r in trx)
    assert all(" stat:DELIVRD " in bytes.fromhex(r["short_message"]["hex"]).decode() for r in trx)
    resps = answered(node_smsc, receipts, "in")
    assert resps and all(r["command_status"] == 0 for r in resps)
    assert_sequences(node_smsc)


# (destination, its SMSC's receipt: stat, err, message_state, network_error_code)
FAILURES = [
    ("+8613800138005", "UNDELIV", "001", 5, None),  # text only, its id decimal
    ("+447700900125", "REJECTD", "002", 8, "030022"),  # TLVs only
    ("+12025550127", "EXPIRED", "003", 3, None),  # text and TLVs, dates with seconds
    ("+33612345680", "UNDELIV", "004", 5, "03000b"),  # data_sm
]


async def test_failure_receipts_from_node_smpp(tmp_path, node_smsc):
    async with running(tmp_path, node_smsc) as d:
        creds = await create_account(d)
        async with client_for(d.http_port, creds) as c:
            done = []
            for to, stat, err, state, network_error in FAILURES:
                node_smsc.command(cmd="outcome", stat=stat, err=err, state=state,
                                  network_error=network_error)  # fmt: skip
                r = await c.send(to, text="will fail")
                done.append(await final_status(c, r["messages"][0]["id"]))
    # Each failed with the receipt's stat and error: the text's err, or the network_error_code
    # TLV's error (its last two octets) where there is one.
    expected = {
        "+8613800138005": ("failed", "undeliverable", "UNDELIV:001"),
        "+447700900125": ("failed", "rejected", "REJECTD:34"),
        "+12025550127": ("failed", "expired", "EXPIRED:003"),
        "+33612345680": ("failed", "undeliverable", "UNDELIV:11"),
    }
    for (to, *_), m in zip(FAILURES, done, strict=True):
        (part,) = m["parts"]
        assert (m["status"], part["status"], m["error_code"]) == expected[to], m
        assert (
            part["smsc_message_id"]
            == answer_to(node_smsc, submits_to(node_smsc, to)[0])["message_id"]
        )


async def test_answers_out_of_order_match_their_submits(tmp_path, node_smsc):
    """pay answers each submit_sm after a random delay: the window's answers come out of
    order, and each message keeps the id node-smpp gave its own submit_sm."""
    numbers = [f"+336123457{k:02d}" for k in range(30)]
    async with running(tmp_path, node_smsc) as d:
        creds = await create_account(d)
        async with client_for(d.http_port, creds) as c:
            sent = await asyncio.gather(*(c.send(n, text=f"message {n}") for n in numbers))
            done = [await final_status(c, r["messages"][0]["id"]) for r in sent]
    answers = node_smsc.pdus("submit_sm_resp", dir="out", system_id="pay")
    order = [a["sequence_number"] for a in answers]
    assert order != sorted(order)  # out of order indeed
    for n, m in zip(numbers, done, strict=True):
        (p,) = submits_to(node_smsc, n)
        assert p["message_payload"] == {"message": f"message {n}"}  # pay's split: payload
        assert m["status"] == "delivered", m
        assert m["parts"][0]["smsc_message_id"] == answer_to(node_smsc, p)["message_id"]


async def test_a_bind_node_smpp_refuses_is_retried_without_its_password(
    tmp_path, node_smsc, caplog
):
    """node-smpp answers a bind with a bad password ESME_RBINDFAIL, header only (SMPP 3.4:
    no body with an error status): the daemon says so, keeps trying, and logs no password."""
    cfg = make_config(
        tmp_path,
        sim={"enabled": False},
        smscs=[{**smsc_entry("trx", node_smsc.port), "password": "Wr0ngPw"}],
        routes=[],
        default_route=None,
    )
    d = Daemon(cfg)
    await d.start()
    try:
        await wait_until(lambda: len(node_smsc.pdus("bind_transceiver")) >= 2, 10)
    finally:
        await d.stop()
    answers = node_smsc.pdus("bind_transceiver_resp", dir="out")
    assert answers and all(a["command_status"] == 0x0D for a in answers)
    header = {"command", "command_id", "command_status", "sequence_number"}
    assert all(set(a) <= header | {"dir", "session", "system_id", "t"} for a in answers)
    assert not bound(node_smsc, "trx")
    refusals = [r for r in caplog.records if "bind refused" in r.getMessage()]
    assert refusals and all(getattr(r, "status", "") == "ESME_RBINDFAIL" for r in refusals)
    assert "Wr0ngPw" not in caplog.text


async def test_a_transmitter_bind_alone_asks_for_no_receipt(tmp_path, node_smsc):
    async with running(tmp_path, node_smsc) as d:
        creds = await create_account(d)
        async with client_for(d.http_port, creds) as c:
            mid = (await c.send(DE, text="Transmitter only"))["messages"][0]["id"]
            m = await wait_until(lambda: sent_or_final(c, mid), 10)
    assert m["status"] == "sent", m
    (p,) = submits_to(node_smsc, DE)
    assert {k: p[k] for k in COMMON} == {**COMMON, "registered_delivery": 0}, p
    assert p["short_message"] == {"message": "Transmitter only"}
    assert m["parts"][0]["smsc_message_id"] == answer_to(node_smsc, p)["message_id"]
    assert {e["mode"] for e in bound(node_smsc, "tx")} == {"transmitter"}
    assert {e["mode"] for e in bound(node_smsc, "rx")} == {"receiver"}


async def sent_or_final(c: Any, mid: str) -> dict[str, Any] | None:
    m = await c.message(mid)
    return None if m["status"] == "queued" else m


def assert_sequences(smsc: NodeSmsc) -> None:
    """The daemon numbers its requests on each session 1, 2, 3 ... (SMPP 3.4 5.1.4: a
    monotonically increasing sequence, within 0x00000001-0x7FFFFFFF)."""
    by_session: dict[int, list[int]] = {}
    for r in smsc.records():
        if r.get("dir") == "in" and not r["command_id"] & 0x80000000:
            by_session.setdefault(r["session"], []).append(r["sequence_number"])
    assert by_session
    for seqs in by_session.values():
        assert seqs == list(range(1, len(seqs) + 1)), seqs


LONG_GSM = ("Part one of a long reply {1} ", "and part two €2.")
LONG_UCS2 = ("长回复的第一部分，", "第二部分 😀")
MOS: list[tuple[str, str, str, list[dict[str, Any]]]] = [
    # (system_id, from, the text the handset wrote, its deliver_sm as node-smpp builds them)
    ("trx", CN, "Yes {ok} €5 [stop] ^~|\\", [{"coding": "gsm"}]),
    ("txrx", GB, "好的，谢谢 Ünïcode 😀", [{"coding": "ucs2"}]),
    ("pay", FR, "Reply in a payload " + "0123456789" * 20, [{"coding": "gsm", "payload": True}]),
    ("u16", US, "".join(LONG_UCS2), [  # UDH IE 0x00, reference 0x42, 2 parts
        {"coding": "ucs2", "udh": f"0500034202{k + 1:02x}", "text": t}
        for k, t in enumerate(LONG_UCS2)
    ]),
    ("u16", "+12025550125", "naïve ±5 «café»", [{"coding": "latin1"}]),
    ("txrx", "+447700900124", "".join(LONG_GSM), [  # sar_* TLVs, reference 0x1234
        {"coding": "gsm", "sar": [0x1234, 2, k + 1], "text": t} for k, t in enumerate(LONG_GSM)
    ]),
    ("u16", "+12025550126", "".join(LONG_GSM), [  # UDH IE 0x08, reference 0xBEEF
        {"coding": "gsm", "udh": f"060804beef02{k + 1:02x}", "text": t}
        for k, t in enumerate(LONG_GSM)
    ]),
    ("trx", "+8613800138003", "A reply as a data_sm", [{"coding": "gsm", "pdu": "data_sm"}]),
    # The receiver bind alone. "Ç", not "ç": GSM 03.38 has the capital only (0x09), and
    # node-smpp writes a character outside the table as 0x00, "@" (its fallback meant a space).
    ("rx", DE, "Über rx: Ça va? 100%", [{"coding": "gsm"}]),
]  # fmt: skip


async def test_replies_from_node_smpp_reach_the_webhook(tmp_path, node_smsc, receiver):
    async with running(tmp_path, node_smsc) as d:
        creds = await create_account(d, mo_callback_url=receiver.url)
        receiver.secret = creds["webhook_secret"]
        async with client_for(d.http_port, creds) as c:
            for _, number, *_ in MOS:  # a send first, so each reply is attributed to us
                r = await c.send(number, text="Reply YES")
                await wait_until(lambda mid=r["messages"][0]["id"]: sent_or_final(c, mid), 10)
        for system_id, number, text, pdus in MOS:
            for pdu in pdus:
                node_smsc.command(
                    **{"cmd": "mo", "system_id": system_id, "source": number,
                       "dest": "smpp-bridge", "text": text, **pdu}
                )  # fmt: skip
        await wait_until(lambda: len(receiver.reports) >= len(MOS), 10)
    assert receiver.bad_signatures == 0
    got = {r["from"]: r for r in receiver.reports}
    assert len(receiver.reports) == len(MOS)
    for _, number, text, _ in MOS:
        assert got[number]["type"] == "message.inbound"
        assert got[number]["text"] == text, (got[number]["text"], text)
    mos = [
        r
        for r in node_smsc.pdus("deliver_sm", dir="out") + node_smsc.pdus("data_sm", dir="out")
        if r["esm_class"] in (0, 0x40)
    ]
    assert len(mos) == sum(len(p) for *_, p in MOS)
    resps = answered(node_smsc, mos, "in")
    assert resps and all(r["command_status"] == 0 for r in resps)
    # The replies on txrx came on the receiver bind of its transmitter + receiver pair.
    modes = {e["session"]: e["mode"] for e in node_smsc.records() if e.get("event") == "bound"}
    assert {modes[r["session"]] for r in mos if r["system_id"] == "txrx"} == {"receiver"}


def answered(
    smsc: NodeSmsc, requests: list[dict[str, Any]], dir: str, command: str | None = None
) -> list[dict[str, Any]] | None:
    """The answer to each request, in order (same session and sequence number; the request's
    command with _resp unless named), or None while one is unanswered."""
    out = []
    for q in requests:
        found = [
            r
            for r in smsc.pdus(command or q["command"] + "_resp", dir=dir)
            if r["session"] == q["session"] and r["sequence_number"] == q["sequence_number"]
        ]
        assert len(found) <= 1, found
        if not found:
            return None
        out.append(found[0])
    return out


def bound(smsc: NodeSmsc, system_id: str) -> list[dict[str, Any]]:
    return [e for e in smsc.records() if e.get("event") == "bound" and e["system_id"] == system_id]


async def test_the_link_with_node_smpp(tmp_path, node_smsc):
    async with running(tmp_path, node_smsc) as d:
        creds = await create_account(d)
        async with client_for(d.http_port, creds) as c:

            async def send(to: str, text: str) -> dict[str, Any]:
                r = await c.send(to, text=text)
                return await final_status(c, r["messages"][0]["id"])

            # Throttled twice, then taken: sent again, not failed.
            node_smsc.command(cmd="throttle", count=2)
            assert (await send(CN, "throttled"))["status"] == "delivered"
            assert [answer_to(node_smsc, p)["command_status"] for p in submits_to(node_smsc, CN)] \
                == [0x58, 0x58, 0]  # fmt: skip
            # A system error is transient: sent again.
            node_smsc.command(cmd="syserr", count=1)
            assert (await send(GB, "syserr"))["status"] == "delivered"
            assert [answer_to(node_smsc, p)["command_status"] for p in submits_to(node_smsc, GB)] \
                == [0x08, 0]  # fmt: skip
            # A generic_nack in place of the submit_sm_resp: the submit's failure, sent again.
            node_smsc.command(cmd="nack", count=1)
            assert (await send(FR, "nacked"))["status"] == "delivered"
            (nack,) = node_smsc.pdus("generic_nack", dir="out")
            first, again = submits_to(node_smsc, FR)
            assert first["sequence_number"] == nack["sequence_number"]
            assert again["short_message"] == first["short_message"]

            # enquire_link both ways: the SMSC's answered, ours (every 1 s here) answered.
            node_smsc.command(cmd="enquire_link")
            # All of its lines, not the first: they are written one by one (a read between).
            await wait_until(lambda: len(node_smsc.pdus("enquire_link", dir="out")) >= 7, 5)
            theirs = node_smsc.pdus("enquire_link", dir="out")
            assert len(theirs) == 7  # every bind: trx, txrx's two, u16, pay, tx, rx
            resps = await wait_until(lambda: answered(node_smsc, theirs, "in"), 5)
            assert all(r["command_status"] == 0 for r in resps)
            await wait_until(lambda: len(node_smsc.pdus("enquire_link")) >= 7, 5)
            await wait_until(lambda: answered(node_smsc, node_smsc.pdus("enquire_link"), "out"), 5)

            # An undefined command: generic_nack, ESME_RINVCMDID, its sequence number.
            node_smsc.command(cmd="unknown_command")
            await wait_until(lambda: len(node_smsc.pdus("unknown", dir="out")) >= 7, 5)
            unknown = node_smsc.pdus("unknown", dir="out")
            nacks = await wait_until(lambda: answered(node_smsc, unknown, "in", "generic_nack"), 5)
            assert len(nacks) == 7 and all(n["command_status"] == 0x03 for n in nacks)

            # A dropped connection: bound again, and the next message goes through it.
            node_smsc.command(cmd="drop", system_id="trx")
            await wait_until(lambda: len(bound(node_smsc, "trx")) >= 2, 10)
            await wait_until(lambda: d.connectors["trx"].is_up, 10)
            assert (await send("+8613800138009", "after the drop"))["status"] == "delivered"

            # The SMSC unbinds: answered with unbind_resp, then bound again.
            node_smsc.command(cmd="unbind", system_id="u16")
            await wait_until(lambda: len(bound(node_smsc, "u16")) >= 2, 10)
            (unbind,) = node_smsc.pdus("unbind", dir="out")
            (resp,) = [
                x for x in node_smsc.pdus("unbind_resp") if x["session"] == unbind["session"]
            ]
            assert resp["sequence_number"] == unbind["sequence_number"]
            assert resp["command_status"] == 0
            await wait_until(lambda: d.connectors["u16"].is_up, 10)
            assert (await send(US, "after the unbind"))["status"] == "delivered"
        open_sessions = {e["session"] for e in node_smsc.records() if e.get("event") == "bound"} - {
            e["session"] for e in node_smsc.records() if e.get("event") == "close"
        }
    # A stop unbinds every session still open, each answered.
    await wait_until(lambda: {u["session"] for u in node_smsc.pdus("unbind")} >= open_sessions, 5)
    assert len(open_sessions) == 7  # trx, txrx's two, u16, pay, tx, rx
    assert_sequences(node_smsc)
