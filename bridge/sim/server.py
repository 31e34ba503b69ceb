"""The simulated SMSC: a real SMPP 3.4 server for tests, demos, benchmarks and integrations.

Why a real server and not a mock: the faults that hurt in production (ids in the other base,
receipts before resps, throttling, dropped connections, receipts on another bind) only show when
the bytes cross a socket. Every behaviour is steered by plain attributes ("knobs") read on every
PDU, so a test or the control endpoint can change them while binds are up.

Throughput design (the benchmark pushes 10,000+ submit_sm/s through one bind, each with a
receipt): all PDUs of one read are answered with one write; receipts wait in one heap driven by a
single ``loop.call_at`` timer (no task or timer per receipt) and each firing writes one batch per
bind; acknowledgement timeouts are found by one periodic sweep over insertion-ordered dicts.
Its CPU comes out of the daemon's in `bench.py` (one machine), so a submit_sm costs what it must
(session 60, `scripts/bench_sim.py`): the receipt's deliver_sm body is built as octets when the
submit is taken (the text from its dates and stat formatted once a second, not per receipt; the
TLVs' octets per stat) and sent as they are; the submit_sm_resp is written and a deliver_sm_resp
read without the codec's objects; a single part's text is decoded once, for its message and its
receipt, and the common parts' headers read without parse_segment's calls. What goes out is the
same octets as before (`bench_sim.py --compare`).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import heapq
import json
import logging
import random
import socket
import struct
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import IO, Any, Final

from bridge.config import SimConfig
from bridge.smpp.codec import (
    OCTET,
    Bind,
    BindResp,
    DataSm,
    EncodeError,
    Pdu,
    PduError,
    ShortMessage,
    decode,
    encode,
)
from bridge.smpp.constants import (
    BIND_COMMANDS,
    BIND_RECEIVER,
    BIND_TRANSCEIVER,
    BIND_TRANSMITTER,
    COMMAND_NAMES,
    DATA_SM,
    DATA_SM_RESP,
    DELIVER_SM,
    DELIVER_SM_RESP,
    ENQUIRE_LINK,
    ENQUIRE_LINK_RESP,
    ESM_DELIVERY_RECEIPT,
    ESM_UDHI,
    ESME_RALYBND,
    ESME_RBINDFAIL,
    ESME_RINVBNDSTS,
    ESME_RINVCMDID,
    ESME_RINVDSTADR,
    ESME_RINVPASWD,
    ESME_RINVSYSID,
    ESME_ROK,
    ESME_RSYSERR,
    ESME_RTHROTTLED,
    GENERIC_NACK,
    MESSAGE_STATE,
    NETWORK_ERROR_CODE,
    RECEIPTED_MESSAGE_ID,
    RESP_BIT,
    SC_INTERFACE_VERSION,
    SUBMIT_SM,
    SUBMIT_SM_RESP,
    UNBIND,
    UNBIND_RESP,
)
from bridge.smpp.framing import FrameError, Framer
from bridge.smpp.reassembly import Reassembler, Segment, SimMessage, parse_segment, segment_text
from bridge.smpp.receipt import format_receipt_text, format_smpp_date
from bridge.text.gsm import gsm_decode
from bridge.text.split import EncodeOptions, SplitMode, TextError, encode_message

__all__ = [
    "BIND_FAIL_STATUSES",
    "MO_SPLITS",
    "RECEIPT_STATS",
    "SimError",
    "SimMessage",
    "SimSmsc",
    "mo_command",
    "run_sim",
]

log = logging.getLogger("bridge.sim")

RECEIPT_STATS: Final = ("DELIVRD", "UNDELIV", "REJECTD", "EXPIRED", "DELETED", "UNKNOWN")
MO_SPLITS: Final = ("udh8", "udh16", "sar", "payload")
BIND_FAIL_STATUSES: Final = ("ESME_RINVSYSID", "ESME_RBINDFAIL")

# message_state TLV value and a GSM MAP-style error code (network_error_code, text err:) per stat.
_STAT_STATE: Final = {
    "DELIVRD": 2, "EXPIRED": 3, "DELETED": 4, "UNDELIV": 5, "UNKNOWN": 7, "REJECTD": 8,
}  # fmt: skip
_STAT_ERR: Final = {
    "DELIVRD": 0, "UNDELIV": 1, "REJECTD": 11, "EXPIRED": 27, "DELETED": 6, "UNKNOWN": 255,
}  # fmt: skip
_NETWORK_TYPE_GSM: Final = 3

_MODES: Final = {
    BIND_TRANSMITTER: "transmitter",
    BIND_RECEIVER: "receiver",
    BIND_TRANSCEIVER: "transceiver",
}
_BIND_FAIL_STATUS: Final = {"ESME_RINVSYSID": ESME_RINVSYSID, "ESME_RBINDFAIL": ESME_RBINDFAIL}
_READ_SIZE: Final = 256 * 1024
_FIRE_BATCH: Final = 5000  # receipts per timer firing before yielding to the loop
_SWEEP_S: Final = 1.0
_MAX_WAITING: Final = 1_000_000  # queued receipts per system_id while nothing can receive them
_SEQ_MAX: Final = 0x7FFFFFFF
_DATE_CACHE_S: Final = 1.0
_HDR: Final = struct.Struct(">IIII")  # command_length, command_id, command_status, seq
_DELIVER_SM_RESP_ID: Final = DELIVER_SM_RESP.to_bytes(4, "big")
_ZERO4: Final = bytes(4)
_CHR: Final = tuple(map(chr, range(256)))
# A receipt's body after its destination_addr, up to sm_length: esm_class, protocol_id,
# priority_flag, the two empty times, registered_delivery, replace_if_present_flag,
# data_coding, sm_default_msg_id.
_RECEIPT_HEAD_TAIL: Final = "\0" + _CHR[ESM_DELIVERY_RECEIPT] + "\0\0\0\0\0\0\0\0"
_TLVH: Final = struct.Struct(">HH")
# The TLVs after receipted_message_id in a receipt, per stat (_receipt_tlvs' octets).
_STAT_TLVS: Final = {
    stat: _TLVH.pack(MESSAGE_STATE, 1) + bytes((_STAT_STATE.get(stat, 7),))
    + (b"" if stat == "DELIVRD"
       else _TLVH.pack(NETWORK_ERROR_CODE, 3) + bytes((_NETWORK_TYPE_GSM, err >> 8, err & 0xFF)))
    for stat, err in _STAT_ERR.items()
}  # fmt: skip

COUNTER_NAMES: Final = (
    "connections",
    "binds",
    "bind_failed",
    "unbinds",
    "pdus_in",
    "submit_sm",
    "submit_ok",
    "submit_rejected",
    "throttled",
    "tps_throttled",
    "syserr",
    "generic_nack",
    "unsupported",
    "enquire_link",
    "messages",
    "receipts_scheduled",
    "receipts_sent",
    "receipts_acked",
    "receipts_nacked",
    "receipts_resent",
    "receipts_given_up",
    "receipts_dropped",
    "mo_sent",
    "mo_acked",
    "mo_nacked",
    "mo_resent",
    "mo_given_up",
    "resps_mismatched",
    "answers_lost",
    "dropped_connections",
    "records_written",
)


class SimError(Exception):
    """A request the simulator cannot carry out; ``code`` is stable, ``message`` names the field."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(slots=True)
class _Job:
    """A deliver_sm (or data_sm) the SMSC owes an ESME (receipt or MO), kept until acknowledged
    or given up."""

    system_id: str
    body: ShortMessage | DataSm | bytes  # bytes: the PDU's body encoded (``cid`` says which)
    kind: str  # "receipt" | "mo"
    attempts: int = 0
    sent_at: float = 0.0
    # The command of a body given as its octets: a deliver_sm unless said. Not 0: a job made
    # again from a scheduled receipt's body, `_Job(sid, job.body, "receipt")` as hooks and tests
    # do, went out as command_id 0 (the ESME's protocol error, answered by generic_nack: the
    # receipt never delivered; session 60 r2).
    cid: int = DELIVER_SM

    @property
    def command_id(self) -> int:
        if type(self.body) is bytes:
            return self.cid
        return DATA_SM if type(self.body) is DataSm else DELIVER_SM


class _Session:
    """One TCP connection: bind state, sequence numbers and deliver_sm awaiting a resp."""

    __slots__ = (
        "_seq",
        "closing",
        "mode",
        "outstanding",
        "pdus",
        "peer",
        "sim",
        "system_id",
        "writer",
    )

    def __init__(self, sim: SimSmsc, writer: asyncio.StreamWriter) -> None:
        self.sim = sim
        self.writer = writer
        self.peer = str(writer.get_extra_info("peername"))
        self.mode = ""  # "" until bound
        self.system_id = ""
        self.pdus = 0
        self.closing = False
        self._seq = 0
        self.outstanding: dict[int, _Job] = {}

    @property
    def can_send(self) -> bool:
        return self.mode in ("transmitter", "transceiver")

    @property
    def can_receive(self) -> bool:
        return self.mode in ("receiver", "transceiver")

    def next_seq(self) -> int:
        s = self._seq + 1
        if s > _SEQ_MAX:
            s = 1
        self._seq = s
        return s

    def write(self, data: bytes) -> None:
        if data and not self.writer.is_closing():
            self.writer.write(data)

    def describe(self) -> dict[str, Any]:
        return {
            "peer": self.peer,
            "system_id": self.system_id,
            "mode": self.mode or "unbound",
            "pdus": self.pdus,
            "outstanding": len(self.outstanding),
        }


class SimSmsc:
    """SMPP 3.4 server; see the module docstring. Knobs are plain attributes, read on every PDU.

    Knobs: ``outcomes`` (stat -> weight), ``receipt_delay_ms``, ``answer_delay_ms`` (each
    submit_sm_resp that long after its submit_sm; one due on a connection closed by then is
    lost, counted in ``answers_lost``), ``throttle_ratio``,
    ``syserr_ratio``, ``tps_limit`` (0 = none), ``drop_after_pdus`` (0 = never), ``id_format``
    ("hex" | "dec"), ``receipt_text_id`` ("same" | "dec" | "hex": the base of the id in the
    receipt text), ``receipts_as`` ("both" | "text" | "tlv"), ``receipt_pdu`` ("deliver_sm" |
    "data_sm": the PDU receipts go out as; data_sm ones carry TLVs only and must be answered by
    data_sm_resp), ``receipt_parts`` ("every" | "first" | "last": which parts of a long
    message get a receipt, by the seq of their UDH or SAR header), ``packed_gsm`` (GSM text is
    packed: the submitted text, and the MO it delivers), ``receipt_ack_timeout_s``,
    ``receipt_max_attempts``,
    ``receipt_retry_delay_ms``, ``deliver_window`` (unacknowledged deliver_sm per bind, 0 =
    unlimited; beyond it deliver_sm wait, as on a real SMSC), ``accounts`` (system_id ->
    password, None accepts any), ``bind_fail_status`` (answer to an unknown system_id:
    ESME_RINVSYSID or ESME_RBINDFAIL).
    """

    def __init__(self, cfg: SimConfig, *, rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.rng = rng if rng is not None else random.Random()
        # knobs
        self.outcomes: dict[str, float] = dict(cfg.outcomes)
        self.receipt_delay_ms: int = cfg.receipt_delay_ms
        self.answer_delay_ms: int = cfg.answer_delay_ms
        self.throttle_ratio: float = cfg.throttle_ratio
        self.syserr_ratio: float = cfg.syserr_ratio
        self.tps_limit: float = cfg.tps_limit
        self.drop_after_pdus: int = cfg.drop_after_pdus
        self.id_format: str = cfg.id_format
        self.receipt_text_id: str = "same"
        self.receipts_as: str = cfg.receipts_as
        self.receipt_pdu: str = cfg.receipt_pdu
        self.receipt_parts: str = cfg.receipt_parts
        self.packed_gsm: bool = False
        self.receipt_ack_timeout_s: float = 30.0
        self.receipt_max_attempts: int = 4
        self.receipt_retry_delay_ms: int = 1000
        self.deliver_window: int = 1000
        self.accounts: dict[str, str | None] = {cfg.system_id: cfg.password}
        self.bind_fail_status: str = "ESME_RINVSYSID"
        # Destinations refused at submit with ESME_RINVDSTADR (a number the carrier does not
        # serve): a permanent failure, the message's end before any receipt.
        self.refused_destinations: set[str] = set()
        # state
        self.port: int = 0
        self.control_port: int | None = None
        self.counters: dict[str, int] = dict.fromkeys(COUNTER_NAMES, 0)
        self.messages: deque[SimMessage] = deque(maxlen=100_000)
        self.reassembler = Reassembler()
        self._sessions: set[_Session] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._receivers: dict[str, list[_Session]] = {}
        self._rr: dict[str, int] = {}
        self._waiting: dict[str, deque[_Job]] = {}
        self._heap: list[tuple[float, int, _Job]] = []
        self._heap_n = 0
        self._mo_ref = 0
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._sweeper: asyncio.TimerHandle | None = None
        self._next_id = self.rng.randrange(0x100000, 0xFFFFFF)
        self._tokens = 0.0
        self._tokens_at = 0.0
        self._date_at = -1.0
        self._date: datetime = datetime.now(UTC)
        # The receipt text's dates and the text between the id and the message's, as of
        # (self._date, receipt_delay_ms): formatted once a second, not twice a receipt.
        self._date_key: tuple[datetime, int] | None = None
        self._date_texts = ("", "")
        self._middles: dict[str, str] = {}
        self._server: asyncio.Server | None = None
        self._control: Any = None
        self._record: IO[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen on cfg.host:cfg.port (0 = ephemeral; the real one lands in ``self.port``)."""
        self._loop = asyncio.get_running_loop()
        if self.cfg.record_file is not None:
            # A local append-mode open is immediate; not worth a thread.
            self._record = open(self.cfg.record_file, "a", encoding="utf-8")  # noqa: ASYNC230
        self._server = await asyncio.start_server(
            self._on_connect, self.cfg.host, self.cfg.port, limit=_READ_SIZE
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._tokens_at = self._loop.time()
        self._tokens = max(float(self.tps_limit), 1.0)
        self._sweeper = self._loop.call_later(_SWEEP_S, self._sweep)
        if self._heap:  # restarted: deliver_sm still owed survive, as on a real SMSC
            self._arm(self._heap[0][0])
        control_port = getattr(self.cfg, "control_port", None)
        if control_port is not None:
            from bridge.sim.control import start_control

            self._control, self.control_port = await start_control(self, control_port)
        log.info(
            "simulated SMSC listening on %s:%d (control %s)",
            self.cfg.host,
            self.port,
            self.control_port,
        )

    async def stop(self) -> None:
        """Unbind every ESME, close the sockets and the record file; idempotent."""
        if self._control is not None:
            await self._control.cleanup()
            self._control = None
        if self._server is not None:
            self._server.close()
        for sess in list(self._sessions):
            if sess.mode and not sess.closing:
                sess.write(encode(Pdu(UNBIND, 0, sess.next_seq())))
            sess.closing = True
            sess.writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await self._server.wait_closed()
            self._server = None
        for handle in (self._timer, self._sweeper):
            if handle is not None:
                handle.cancel()
        self._timer = self._sweeper = None
        if self._record is not None:
            self._record.close()
            self._record = None
        self._loop = None

    async def wait_for(self, predicate: Callable[[SimSmsc], bool], timeout: float) -> bool:  # noqa: ASYNC109
        """Poll ``predicate(self)`` until true (True) or ``timeout`` seconds pass (False)."""
        deadline = time.monotonic() + timeout
        while True:
            if predicate(self):
                return True
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.005)

    def binds(self) -> list[dict[str, Any]]:
        return [s.describe() for s in self._sessions]

    def knobs(self) -> dict[str, Any]:
        return {
            "outcomes": dict(self.outcomes),
            "receipt_delay_ms": self.receipt_delay_ms,
            "answer_delay_ms": self.answer_delay_ms,
            "throttle_ratio": self.throttle_ratio,
            "syserr_ratio": self.syserr_ratio,
            "tps_limit": self.tps_limit,
            "drop_after_pdus": self.drop_after_pdus,
            "id_format": self.id_format,
            "receipt_text_id": self.receipt_text_id,
            "receipts_as": self.receipts_as,
            "receipt_pdu": self.receipt_pdu,
            "receipt_parts": self.receipt_parts,
            "packed_gsm": self.packed_gsm,
            "receipt_ack_timeout_s": self.receipt_ack_timeout_s,
            "receipt_max_attempts": self.receipt_max_attempts,
            "receipt_retry_delay_ms": self.receipt_retry_delay_ms,
            "deliver_window": self.deliver_window,
            "bind_fail_status": self.bind_fail_status,
        }

    # --- connections ------------------------------------------------------------------------
    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sess = _Session(self, writer)
        self._sessions.add(sess)
        self.counters["connections"] += 1
        try:
            await self._serve(sess, reader)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug must cost one connection, never the server
            log.exception("simulated SMSC: session %s failed", sess.peer)
        finally:
            self._forget(sess)
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)

    async def _serve(self, sess: _Session, reader: asyncio.StreamReader) -> None:
        framer = Framer()
        writer = sess.writer
        while not sess.closing:
            data = await reader.read(_READ_SIZE)
            if not data:
                return
            out: list[bytes] = []
            broken: FrameError | None = None
            try:
                frames = framer.feed(data)
            except FrameError as e:
                # Length out of bounds: answer what came before, nack, close (no resync).
                frames = e.frames
                broken = e
            now = self._loop_time()
            for frame in frames:
                self._dispatch(sess, frame, out, now)
                if sess.closing:
                    break
            if broken is not None and not sess.closing:
                self.counters["generic_nack"] += 1
                out.append(encode(Pdu(GENERIC_NACK, broken.status, broken.seq)))
                sess.closing = True
            if out:
                sess.write(b"".join(out))
            if sess.closing:
                return
            await writer.drain()

    def _forget(self, sess: _Session) -> None:
        """Unregister a closed session and give its unacknowledged deliver_sm back to the queue."""
        self._sessions.discard(sess)
        sess.closing = True
        if sess.can_receive:
            lst = self._receivers.get(sess.system_id)
            if lst is not None and sess in lst:
                lst.remove(sess)
        if sess.outstanding:
            jobs = list(sess.outstanding.values())
            sess.outstanding.clear()
            now = self._loop_time()
            for job in jobs:
                self._retry(job, now)

    def _loop_time(self) -> float:
        loop = self._loop
        return loop.time() if loop is not None else time.monotonic()

    # --- dispatch ---------------------------------------------------------------------------
    def _dispatch(self, sess: _Session, frame: bytes, out: list[bytes], now: float) -> None:
        c = self.counters
        c["pdus_in"] += 1
        sess.pdus += 1
        if frame[4:8] == _DELIVER_SM_RESP_ID:
            # What decode accepts of a deliver_sm_resp (codec._decode_msgid), its body not
            # built: a bare header, an error status, or a NUL after the header; else it
            # raised, and an unparsable response is dropped (_answer_error).
            if len(frame) == 16 or frame[8:12] != _ZERO4 or frame.find(0, 16) >= 0:
                _, _, status, seq = _HDR.unpack_from(frame)
                self._on_deliver_resp(sess, seq, status, now)
            drop = self.drop_after_pdus
            if drop and sess.pdus >= drop and not sess.closing:
                c["dropped_connections"] += 1
                sess.closing = True
            return
        try:
            pdu = decode(frame)
        except PduError as e:
            self._answer_error(e, out)
        else:
            cid = pdu.command_id
            if cid == SUBMIT_SM:
                delay = self.answer_delay_ms
                if delay:
                    mark = len(out)
                    self._on_submit(sess, pdu, out, now)
                    self._answer_later(sess, b"".join(out[mark:]), delay / 1000.0)
                    del out[mark:]
                else:
                    self._on_submit(sess, pdu, out, now)
            elif cid == DELIVER_SM_RESP or cid == DATA_SM_RESP:
                self._on_deliver_resp(sess, pdu.seq, pdu.status, now, cid)
            elif cid == ENQUIRE_LINK:
                c["enquire_link"] += 1
                out.append(encode(Pdu(ENQUIRE_LINK_RESP, 0, pdu.seq)))
            elif cid in BIND_COMMANDS:
                self._on_bind(sess, pdu, out, now)
            elif cid == UNBIND:
                c["unbinds"] += 1
                out.append(encode(Pdu(UNBIND_RESP, 0, pdu.seq)))
                sess.closing = True
            elif cid == GENERIC_NACK:
                # The ESME refused one of our deliver_sm: same as a failed resp.
                self._on_deliver_resp(sess, pdu.seq, pdu.status or ESME_RSYSERR, now, cid)
            elif cid & RESP_BIT:
                pass  # enquire_link_resp, unbind_resp: nothing to do
            elif cid in COMMAND_NAMES and sess.mode:
                # Defined but not simulated (query_sm, data_sm, cancel_sm, ...).
                c["unsupported"] += 1
                out.append(encode(Pdu(cid | RESP_BIT, ESME_RINVCMDID, pdu.seq)))
            else:
                c["generic_nack"] += 1
                status = ESME_RINVCMDID if cid not in COMMAND_NAMES else ESME_RINVBNDSTS
                out.append(encode(Pdu(GENERIC_NACK, status, pdu.seq)))
        drop = self.drop_after_pdus
        if drop and sess.pdus >= drop and not sess.closing:
            c["dropped_connections"] += 1
            sess.closing = True

    def _answer_later(self, sess: _Session, answer: bytes, delay_s: float) -> None:
        assert self._loop is not None  # sessions exist only while serving
        self._loop.call_later(delay_s, self._answer_now, sess, answer)

    def _answer_now(self, sess: _Session, answer: bytes) -> None:
        if sess.closing or sess.writer.is_closing():
            self.counters["answers_lost"] += 1
        else:
            sess.write(answer)

    def _answer_error(self, e: PduError, out: list[bytes]) -> None:
        """A request we cannot parse gets its own resp with the status; anything else a nack."""
        cid = e.command_id
        if cid in COMMAND_NAMES and not cid & RESP_BIT and cid != GENERIC_NACK:
            resp = cid | RESP_BIT
            if resp in COMMAND_NAMES:
                out.append(encode(Pdu(resp, e.status, e.seq)))
                return
        if cid & RESP_BIT:
            return  # never answer a response; an unparsable one is simply dropped
        self.counters["generic_nack"] += 1
        out.append(encode(Pdu(GENERIC_NACK, e.status, e.seq)))

    def _on_bind(self, sess: _Session, pdu: Pdu, out: list[bytes], now: float) -> None:
        resp_id = pdu.command_id | RESP_BIT
        body = pdu.body
        assert isinstance(body, Bind)
        if sess.mode:
            out.append(encode(Pdu(resp_id, ESME_RALYBND, pdu.seq)))
            return
        accounts = self.accounts
        if body.system_id not in accounts:
            status = _BIND_FAIL_STATUS.get(self.bind_fail_status, ESME_RINVSYSID)
        else:
            expected = accounts[body.system_id]
            status = ESME_RINVPASWD if expected is not None and body.password != expected else 0
        if status:
            self.counters["bind_failed"] += 1
            log.info(
                "simulated SMSC: bind refused for %r from %s: 0x%02X",
                body.system_id,
                sess.peer,
                status,
            )
            out.append(encode(Pdu(resp_id, status, pdu.seq)))
            return
        sess.mode = _MODES[pdu.command_id]
        sess.system_id = body.system_id
        self.counters["binds"] += 1
        out.append(
            encode(
                Pdu(
                    resp_id,
                    ESME_ROK,
                    pdu.seq,
                    BindResp("smpp-sim", ((SC_INTERFACE_VERSION, b"\x34"),)),
                )
            )
        )
        if sess.can_receive:
            self._receivers.setdefault(sess.system_id, []).append(sess)
            waiting = self._waiting.pop(sess.system_id, None)
            if waiting:
                for job in waiting:
                    self._schedule(job, now)

    # --- submit_sm --------------------------------------------------------------------------
    def _on_submit(self, sess: _Session, pdu: Pdu, out: list[bytes], now: float) -> None:
        c = self.counters
        c["submit_sm"] += 1
        seq = pdu.seq
        if not sess.can_send:
            c["submit_rejected"] += 1
            out.append(encode(Pdu(SUBMIT_SM_RESP, ESME_RINVBNDSTS, seq)))
            return
        sm = pdu.body
        assert isinstance(sm, ShortMessage)
        if not sm.destination_addr or sm.destination_addr in self.refused_destinations:
            c["submit_rejected"] += 1
            out.append(encode(Pdu(SUBMIT_SM_RESP, ESME_RINVDSTADR, seq)))
            return
        tps = self.tps_limit
        if tps > 0:
            # At least one whole token: below 1/s a bucket capped at the rate never held one, and
            # every submit was throttled for ever.
            tokens = min(max(tps, 1.0), self._tokens + (now - self._tokens_at) * tps)
            self._tokens_at = now
            if tokens < 1.0:
                self._tokens = tokens
                c["throttled"] += 1
                c["tps_throttled"] += 1
                out.append(encode(Pdu(SUBMIT_SM_RESP, ESME_RTHROTTLED, seq)))
                return
            self._tokens = tokens - 1.0
        tr = self.throttle_ratio
        sr = self.syserr_ratio
        if tr or sr:
            r = self.rng.random()
            if r < tr:
                c["throttled"] += 1
                out.append(encode(Pdu(SUBMIT_SM_RESP, ESME_RTHROTTLED, seq)))
                return
            if r < tr + sr:
                c["syserr"] += 1
                out.append(encode(Pdu(SUBMIT_SM_RESP, ESME_RSYSERR, seq)))
                return
        n = self._next_id
        self._next_id = n + 1
        mid = f"{n:08X}" if self.id_format == "hex" else str(n)
        c["submit_ok"] += 1
        # encode(Pdu(SUBMIT_SM_RESP, ESME_ROK, seq, MessageIdResp(mid))), written here: the
        # id is ours (hex or decimal digits, never 65 octets).
        b = mid.encode("ascii")
        out.append(_HDR.pack(17 + len(b), SUBMIT_SM_RESP, ESME_ROK, seq) + b + b"\0")
        seg = _parse_segment(sm, self.packed_gsm)
        wall = time.time()
        text = None
        if not seg.scheme and type(self.reassembler) is Reassembler:
            # Reassembler.add's single part (it keeps nothing for one), its text decoded once
            # for the message and its receipt. Not for a reassembler put in its place (a
            # subclass recording every segment, as tests/e2e/test_chaos_soak.py's): it is told
            # of each part, single or not, as before session 60.
            text = _segment_text(seg)
            msg: SimMessage | None = SimMessage(
                sess.system_id, sm.source_addr, sm.destination_addr, seg.data_coding, text, 1,
                [mid], wall,
            )  # fmt: skip
        else:
            msg = self.reassembler.add(
                sess.system_id, sm.source_addr, sm.destination_addr, seg, mid, wall
            )
        if msg is not None:
            self._on_message(msg)
        rd = sm.registered_delivery & 0x03
        if rd and self._receipt_due(seg):
            stat = self._draw_outcome()
            if rd == 2 and stat == "DELIVRD":
                return  # receipt on failure only
            c["receipts_scheduled"] += 1
            due = now + self.receipt_delay_ms / 1000.0
            if self.receipt_pdu == "deliver_sm":
                if text is None and self.receipts_as != "tlv":
                    text = _segment_text(seg)  # a part's own, not the whole message's
                octets = self._receipt_octets(sm, n, mid, stat, text or "", now)
                if octets is not None:
                    self._schedule(_Job(sess.system_id, octets, "receipt", 0, 0.0, DELIVER_SM), due)
                    return
            if text is None:
                text = _segment_text(seg)
            body = self._receipt(sm, n, mid, stat, text, now)
            self._schedule(_Job(sess.system_id, body, "receipt"), due)

    def _receipt_due(self, seg: Segment) -> bool:
        """Whether this part gets a receipt: a carrier reporting a long message once reports
        its first part or its last only (receipt_parts)."""
        parts = self.receipt_parts
        if parts == "every" or not seg.scheme:
            return True
        return seg.seq == (1 if parts == "first" else seg.total)

    def _on_message(self, msg: SimMessage) -> None:
        self.counters["messages"] += 1
        self.messages.append(msg)
        rec = self._record
        if rec is not None:
            rec.write(json.dumps(msg.as_json(), ensure_ascii=False) + "\n")
            self.counters["records_written"] += 1

    def _draw_outcome(self) -> str:
        outcomes = self.outcomes
        if len(outcomes) == 1:
            for stat in outcomes:
                return stat
        total = sum(outcomes.values())
        x = self.rng.random() * total
        stat = "DELIVRD"
        for stat, w in outcomes.items():
            if x < w:
                return stat
            x -= w
        return stat

    def _dates(self, now: float) -> tuple[datetime, datetime]:
        """(submit date, done date): the wall clock, recomputed at most once a second."""
        if now - self._date_at >= _DATE_CACHE_S:
            self._date_at = now
            self._date = datetime.now(UTC)
        submit = self._date
        return submit, submit + timedelta(milliseconds=self.receipt_delay_ms)

    def _receipt(
        self, sm: ShortMessage, n: int, mid: str, stat: str, text: str, now: float
    ) -> ShortMessage | DataSm:
        """The deliver_sm body of one delivery receipt, per the receipts_as and id knobs, or the
        data_sm body (TLVs only) when receipt_pdu says so."""
        err = _STAT_ERR.get(stat, 255)
        back: dict[str, Any] = {  # from the recipient back to the sender, marked a receipt
            "source_addr_ton": sm.dest_addr_ton,
            "source_addr_npi": sm.dest_addr_npi,
            "source_addr": sm.destination_addr,
            "dest_addr_ton": sm.source_addr_ton,
            "dest_addr_npi": sm.source_addr_npi,
            "destination_addr": sm.source_addr,
            "esm_class": ESM_DELIVERY_RECEIPT,
        }
        if self.receipt_pdu == "data_sm":
            return DataSm(**back, tlvs=self._receipt_tlvs(mid, stat, err))
        kind = self.receipts_as
        short = b""
        if kind != "tlv":
            text_id = self._text_id(n, mid)
            submit, done = self._dates(now)
            delivered = 1 if stat == "DELIVRD" else 0
            short = format_receipt_text(
                text_id,
                stat,
                f"{err:03d}",
                1,
                delivered,
                submit_date=submit,
                done_date=done,
                text=text[:20],
            ).encode("ascii", "replace")
        tlvs = self._receipt_tlvs(mid, stat, err) if kind != "text" else ()
        return ShortMessage(**back, short_message=short, tlvs=tlvs)

    def _receipt_octets(
        self, sm: ShortMessage, n: int, mid: str, stat: str, text: str, now: float
    ) -> bytes | None:
        """The deliver_sm body `_receipt` makes, encoded as `encode` writes it, built from its
        pieces: the head by `plain_sm_head`, the text from the dates' and the stat's part
        formatted once (`_receipt_middle`), the TLVs from their octets per stat. None when
        the head is not what the plain path takes (`_receipt`'s body is then sent, as
        before)."""
        sa = sm.source_addr
        da = sm.destination_addr
        try:
            if len(sa) > 20 or len(da) > 20 or "\0" in sa or "\0" in da:
                return None
            # plain_sm_head's octets for the receipt's fields (the submit's addresses turned
            # round; the rest "" and 0 but esm_class), joined here: a decoded submit_sm's
            # TONs and NPIs are octets, its addresses latin-1 text without NUL.
            c = _CHR
            head = "".join(
                ("\0", c[sm.dest_addr_ton], c[sm.dest_addr_npi], da, "\0", c[sm.source_addr_ton],
                 c[sm.source_addr_npi], sa, _RECEIPT_HEAD_TAIL)
            ).encode("latin-1")  # fmt: skip
        except (TypeError, ValueError, IndexError):
            return None
        kind = self.receipts_as
        short = b""
        if kind != "tlv":
            text_id = self._text_id(n, mid)
            middle = self._receipt_middle(stat, now)
            short = ("id:" + text_id + middle + text[:20]).encode("ascii", "replace")
            if len(short) > 254:
                return None
        if kind == "text":
            return head + OCTET[len(short)] + short
        b = mid.encode("ascii") + b"\0"
        tlvs = _STAT_TLVS.get(stat)
        if tlvs is None:
            return None
        return (
            head + OCTET[len(short)] + short + _TLVH.pack(RECEIPTED_MESSAGE_ID, len(b)) + b + tlvs
        )

    def _receipt_middle(self, stat: str, now: float) -> str:
        """format_receipt_text's text between the id and the message's first characters for
        ``stat`` and the dates `_dates` gives at ``now``; formatted when the dates change."""
        # What _dates(now) gives, formatted when the date it keeps or the delay changes: the
        # wall clock read as it reads it, the done date not computed a receipt.
        submit = self._date if now - self._date_at < _DATE_CACHE_S else self._dates(now)[0]
        key = self._date_key
        if key is None or key[0] is not submit or key[1] != self.receipt_delay_ms:
            submit, done = self._dates(now)
            self._date_key = (submit, self.receipt_delay_ms)
            self._date_texts = (format_smpp_date(submit), format_smpp_date(done))
            self._middles = {}
        middle = self._middles.get(stat)
        if middle is None:
            s, d = self._date_texts
            delivered = 1 if stat == "DELIVRD" else 0
            err = _STAT_ERR.get(stat, 255)
            middle = self._middles[stat] = (
                f" sub:{1:03d} dlvrd:{delivered:03d} submit date:{s} done date:{d} "
                f"stat:{stat} err:{err:03d} text:"
            )
        return middle

    def _text_id(self, n: int, mid: str) -> str:
        """The id a receipt's text carries (`receipt_text_id`): the message id as answered, or
        its number in decimal or hex, as some carriers write it."""
        tid = self.receipt_text_id
        if tid == "dec":
            return str(n)
        if tid == "hex":
            return f"{n:08X}"
        return mid

    @staticmethod
    def _receipt_tlvs(mid: str, stat: str, err: int) -> tuple[tuple[int, bytes], ...]:
        tlvs: tuple[tuple[int, bytes], ...] = (
            (RECEIPTED_MESSAGE_ID, mid.encode("ascii") + b"\0"),
            (MESSAGE_STATE, bytes((_STAT_STATE.get(stat, 7),))),
        )
        if stat != "DELIVRD":
            tlvs += ((NETWORK_ERROR_CODE, bytes((_NETWORK_TYPE_GSM, err >> 8, err & 0xFF))),)
        return tlvs

    # --- outgoing deliver_sm: heap, timer, acknowledgements -------------------------------------
    def _schedule(self, job: _Job, due: float) -> None:
        self._heap_n += 1
        heapq.heappush(self._heap, (due, self._heap_n, job))
        if self._timer is None or due < self._timer_at:  # else _arm would leave it as it is
            self._arm(due)

    def _arm(self, due: float) -> None:
        loop = self._loop
        if loop is None:
            return
        timer = self._timer
        if timer is not None:
            if due >= self._timer_at:
                return
            timer.cancel()
        self._timer_at = due
        self._timer = loop.call_at(due, self._fire)

    def _fire(self) -> None:
        """Send every due deliver_sm, one write per bind; re-arm for the next one."""
        self._timer = None
        now = self._loop_time()
        heap = self._heap
        batches: dict[_Session, list[bytes]] = {}
        c = self.counters
        receivers = self._receivers
        window = self.deliver_window
        sent = 0
        while heap and heap[0][0] <= now and sent < _FIRE_BATCH:
            job = heapq.heappop(heap)[2]
            sid = job.system_id
            lst = receivers.get(sid)
            if lst is not None and len(lst) == 1:
                # _pick_receiver's answer for one bind, without its call and loop.
                sess: _Session | None = lst[0]
                assert sess is not None
                if window and len(sess.outstanding) >= window:
                    sess = None
                else:
                    self._rr[sid] = 1
            else:
                sess = self._pick_receiver(sid)
            if sess is None:
                self._park(job)
                continue
            seq = sess._seq + 1  # sess.next_seq()
            if seq > _SEQ_MAX:
                seq = 1
            sess._seq = seq
            if job.attempts:
                c["receipts_resent" if job.kind == "receipt" else "mo_resent"] += 1
            job.attempts += 1
            job.sent_at = now
            sess.outstanding[seq] = job
            chunks = batches.get(sess)
            if chunks is None:
                chunks = batches[sess] = []
            body = job.body
            if type(body) is bytes:
                chunks.append(_HDR.pack(16 + len(body), job.cid, 0, seq) + body)
            else:
                chunks.append(encode(Pdu(job.command_id, 0, seq, body)))
            if job.kind == "receipt":
                c["receipts_sent"] += 1
            sent += 1
        for sess, chunks in batches.items():
            sess.write(b"".join(chunks))
        if heap:
            self._arm(heap[0][0] if heap[0][0] > now else now)

    def _park(self, job: _Job) -> None:
        q = self._waiting.get(job.system_id)
        if q is None:
            q = self._waiting[job.system_id] = deque()
        if len(q) >= _MAX_WAITING:
            self.counters["receipts_dropped"] += 1
            return
        q.append(job)

    def _pick_receiver(self, system_id: str, *, windowed: bool = True) -> _Session | None:
        """Next receive-capable bind of ``system_id`` in round-robin order with room in its
        deliver_sm window (``deliver_window``, 0 = unlimited); None when there is none."""
        lst = self._receivers.get(system_id)
        if not lst:
            return None
        window = self.deliver_window if windowed else 0
        n = len(lst)
        i = self._rr.get(system_id, 0)
        for _ in range(n):
            if i >= n:
                i = 0
            sess = lst[i]
            i += 1
            if not window or len(sess.outstanding) < window:
                self._rr[system_id] = i
                return sess
        return None

    def _unpark(self, system_id: str, now: float) -> None:
        """A window slot of ``system_id`` freed up: give it to the oldest parked deliver_sm."""
        q = self._waiting.get(system_id)
        if q:
            self._schedule(q.popleft(), now)

    def _on_deliver_resp(
        self, sess: _Session, seq: int, status: int, now: float, cid: int = DELIVER_SM_RESP
    ) -> None:
        job = sess.outstanding.get(seq)
        if job is None:
            return
        if cid != GENERIC_NACK and cid != job.command_id | RESP_BIT:
            # deliver_sm_resp for a data_sm (or the reverse) answers nothing, as on a real SMSC:
            # the PDU stays owed and is resent once its ack times out.
            self.counters["resps_mismatched"] += 1
            return
        del sess.outstanding[seq]
        self._unpark(sess.system_id, now)
        c = self.counters
        receipt = job.kind == "receipt"
        if status == ESME_ROK:
            c["receipts_acked" if receipt else "mo_acked"] += 1
            return
        c["receipts_nacked" if receipt else "mo_nacked"] += 1
        self._retry(job, now + self.receipt_retry_delay_ms / 1000.0)

    def _retry(self, job: _Job, due: float) -> None:
        if job.attempts >= self.receipt_max_attempts:
            self.counters["receipts_given_up" if job.kind == "receipt" else "mo_given_up"] += 1
            return
        self._schedule(job, due)

    def _sweep(self) -> None:
        """Resend deliver_sm whose resp is overdue; dicts are in send order, so stop early."""
        loop = self._loop
        if loop is None:
            return
        now = loop.time()
        limit = now - self.receipt_ack_timeout_s
        for sess in list(self._sessions):
            out = sess.outstanding
            while out:
                seq, job = next(iter(out.items()))
                if job.sent_at > limit:
                    break
                del out[seq]
                self._unpark(sess.system_id, now)
                self._retry(job, now)
        if self._record is not None:
            self._record.flush()
        self._sweeper = loop.call_later(_SWEEP_S, self._sweep)

    # --- MO ---------------------------------------------------------------------------------
    async def inject_mo(
        self,
        source: str,
        destination: str,
        text: str,
        *,
        split: str | None = "udh8",
        system_id: str | None = None,
        ref: int | None = None,
        parts: Sequence[int] | None = None,
    ) -> int:
        """Send a mobile-originated message as deliver_sm part(s) to one bound receiver.

        ``split`` picks the concatenation of a long text (udh8, udh16, sar, payload); None sends a
        text that does not fit one part as message_payload. All parts go to the same bind, in
        order. ``ref`` sets the concatenation reference (default: the next of the simulator's
        counter), as a handset that reuses one does; ``parts`` sends only those parts (1-based,
        in the order given), as a network that lost the others or delivers them later.
        Returns the number of parts sent; SimError NO_RECEIVER when nothing can receive.
        """
        if split is not None and split not in MO_SPLITS:
            raise SimError("INVALID_SPLIT", f"split: must be one of {', '.join(MO_SPLITS)} or null")
        limit = 0xFF if split == "udh8" else 0xFFFF
        if ref is not None and not 0 <= ref <= limit:
            raise SimError("INVALID_MO", f"ref: must be between 0 and {limit} for {split}")
        sess = self._mo_receiver(system_id)
        mode = SplitMode(split) if split is not None else SplitMode.UDH8
        if ref is None:
            self._mo_ref = ref = (self._mo_ref + 1) & 0xFFFF
            if mode is SplitMode.UDH8:
                ref &= 0xFF
        try:
            packed = self.packed_gsm
            enc = encode_message(text, EncodeOptions(split=mode, packed_gsm=packed), ref)
            if split is None and len(enc.parts) > 1:
                opts = EncodeOptions(split=SplitMode.PAYLOAD, packed_gsm=packed)
                enc = encode_message(text, opts, ref)
        except TextError as e:
            raise SimError(e.code, e.message) from None
        bodies = [
            ShortMessage(
                source_addr=source,
                destination_addr=destination,
                esm_class=part.esm_class,
                data_coding=enc.data_coding,
                short_message=part.short_message,
                tlvs=part.tlvs,
            )
            for part in enc.parts
        ]
        if parts is not None:
            if not parts or any(not 1 <= n <= len(bodies) for n in parts):
                raise SimError("INVALID_MO", f"parts: must list parts between 1 and {len(bodies)}")
            bodies = [bodies[n - 1] for n in parts]
        return await self._send_mo(sess, bodies)

    async def inject_deliver_sm(
        self, bodies: Sequence[ShortMessage], *, system_id: str | None = None
    ) -> int:
        """Send deliver_sm bodies made by the caller, in order, to one bound receiver: an MO
        whose octets the simulator's own encoder would not produce (a handset's national
        language shift tables, an odd UDH). Returns the number sent; SimError NO_RECEIVER when
        nothing can receive, INVALID_MO when a body cannot be encoded."""
        sess = self._mo_receiver(system_id)
        return await self._send_mo(sess, list(bodies))

    def _mo_receiver(self, system_id: str | None) -> _Session:
        if system_id is not None:
            sess = self._pick_receiver(system_id, windowed=False)
        else:
            sess = next((s for s in self._sessions if s.can_receive and not s.closing), None)
        if sess is None:
            who = f"system_id {system_id!r}" if system_id is not None else "any system_id"
            raise SimError("NO_RECEIVER", f"no receiver or transceiver bind for {who}")
        return sess

    async def _send_mo(self, sess: _Session, bodies: list[ShortMessage]) -> int:
        now = self._loop_time()
        try:  # every part encodes before any is owed: a refused one left a phantom in the window
            for body in bodies:
                encode(Pdu(DELIVER_SM, 0, 1, body))
        except EncodeError as e:
            raise SimError("INVALID_MO", f"cannot be sent as deliver_sm: {e}") from None
        chunks = []
        for body in bodies:
            job = _Job(sess.system_id, body, "mo", attempts=1, sent_at=now)
            seq = sess.next_seq()
            sess.outstanding[seq] = job
            chunks.append(encode(Pdu(DELIVER_SM, 0, seq, body)))
        sess.write(b"".join(chunks))
        self.counters["mo_sent"] += len(chunks)
        with contextlib.suppress(ConnectionError):
            # If the bind dies now, its outstanding MO parts are requeued by _forget.
            await sess.writer.drain()
        return len(chunks)


_UDH8: Final = b"\x05\x00\x03"
_utf_16_be_decode: Final = codecs.utf_16_be_decode


def _parse_segment(sm: ShortMessage, packed_gsm: bool) -> Segment:
    """parse_segment(sm, packed_gsm), the two shapes a sender's parts mostly take without its
    calls: a single part of octets (no UDH, no TLV), and a part whose UDH is the 8-bit
    reference concatenation IE alone, consistent (every other one goes through it). GSM
    text of a packed_gsm simulator goes through it too (its septets unpacked there)."""
    data = sm.short_message
    if not packed_gsm and data:
        esm = sm.esm_class
        if not esm & ESM_UDHI:
            if not sm.tlvs:
                return Segment(sm.data_coding, data)
        elif data[:3] == _UDH8 and len(data) >= 6:
            total = data[4]
            seq = data[5]
            if total >= 2 and 1 <= seq <= total:
                return Segment(sm.data_coding, data[6:], "udh8", data[3], total, seq)
    return parse_segment(sm, packed_gsm)


def _segment_text(seg: Segment) -> str:
    """segment_text(seg), the common codings' text without its calls: UCS-2, and GSM 7-bit in
    the default tables not ending in an escape (national.decode_parts' own fast path)."""
    dc = seg.data_coding
    if dc == 8:
        # bytes.decode's own function, not looked up by the codec's name each part.
        return _utf_16_be_decode(seg.payload, "replace", True)[0]
    if dc == 0 and not seg.locking and not seg.single and not seg.payload.endswith(b"\x1b"):
        return gsm_decode(seg.payload)
    return segment_text(seg)


async def run_sim(cfg: SimConfig) -> None:
    """Run a simulated SMSC until cancelled (the ``smpp-bridge sim`` command)."""
    sim = SimSmsc(cfg)
    await sim.start()
    log.info(
        "simulated SMSC ready: smpp %s:%d, control %s",
        cfg.host,
        sim.port,
        f"http://127.0.0.1:{sim.control_port}" if sim.control_port is not None else "off",
    )
    try:
        await asyncio.Event().wait()
    finally:
        await sim.stop()


def mo_command(
    control_url: str,
    source: str,
    destination: str,
    text: str,
    split: str | None,
    *,
    ref: int | None = None,
    parts: list[int] | None = None,
) -> int:
    """POST an MO to a running simulator; prints the JSON answer; exit code 0 on success."""
    body: dict[str, Any] = {"source": source, "destination": destination, "text": text}
    body["split"] = split
    if ref is not None:
        body["ref"] = ref
    if parts is not None:
        body["parts"] = parts
    payload = json.dumps(body).encode()
    req = urllib.request.Request(
        control_url.rstrip("/") + "/mo",
        data=payload,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            print(resp.read().decode())
            return 0
    except urllib.error.HTTPError as e:
        print(e.read().decode(errors="replace"), file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        print(
            json.dumps({"error": "UNREACHABLE", "message": f"{control_url}: {reason}"}),
            file=sys.stderr,
        )
        return 2
