"""Reassembly and decoding of concatenated messages, as a handset would do it (pure).

Two readers: the daemon's inbound path (bridge/pipeline/inbound.py) joins and decodes the replies
an SMSC delivers, and the simulator the messages it is sent. It lived under bridge/sim/ until
session 49; its reading of UDH, sar_* and the data codings is checked against node-smpp, an
independent implementation (tests/e2e/test_interop_node_smpp.py), not only against our simulator.

The simulator records what an integration *meant* to send: the concatenated text, decoded. That is
the only way a test can tell a correct split (escape pairs and surrogate pairs kept whole, UDH
fill bits right, references consistent) from one that merely produced the right number of PDUs.

Parts are joined before decoding (GSM septets, UCS-2 octets), so a sender that cuts an escape or
surrogate pair across parts still reassembles, exactly like a handset. Pure: the caller passes
``now``; incomplete messages are forgotten after ``ttl_s`` or beyond ``max_pending``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from bridge.fastinit import fast_init
from bridge.smpp.codec import ShortMessage, tlv_get
from bridge.smpp.constants import (
    ESM_UDHI,
    MESSAGE_PAYLOAD,
    SAR_MSG_REF_NUM,
    SAR_SEGMENT_SEQNUM,
    SAR_TOTAL_SEGMENTS,
)
from bridge.text.charsets import decode_octets, has_charset, ia5_holds_gsm
from bridge.text.gsm import gsm_decode, unpack_septets
from bridge.text.national import decode_parts

__all__ = [
    "Decoded",
    "Reassembler",
    "Segment",
    "SimMessage",
    "decode_payload",
    "decode_segments",
    "parse_segment",
    "segment_text",
]

_CR = 0x0D


@fast_init
@dataclass(frozen=True, slots=True)
class SimMessage:
    """One reassembled message: what the recipient's handset would show."""

    system_id: str
    source: str
    destination: str
    data_coding: int
    text: str
    parts: int
    message_ids: list[str]  # one per part, in part order
    received_at: float  # when the last part arrived (caller's clock)

    def as_json(self) -> dict[str, object]:
        return {
            "system_id": self.system_id,
            "source": self.source,
            "destination": self.destination,
            "data_coding": self.data_coding,
            "text": self.text,
            "parts": self.parts,
            "message_ids": list(self.message_ids),
            "received_at": self.received_at,
        }


@fast_init
@dataclass(frozen=True, slots=True)
class Segment:
    """One submit_sm reduced to its concatenation header and its payload.

    ``payload`` is the user data without UDH: septets one per octet for GSM (already unpacked when
    the sender packed them), raw octets otherwise. ``scheme`` is "" for a single-part message,
    else "udh8", "udh16" or "sar"; ``ref``/``total``/``seq`` come from that header.
    ``locking``/``single`` are the national language tables this part's UDH names for GSM 7-bit
    text (IEs 0x25 and 0x24, TS 23.040 9.2.3.24.15-16; bridge.text.national), 0 for the default.
    """

    data_coding: int
    payload: bytes
    scheme: str = ""
    ref: int = 0
    total: int = 1
    seq: int = 1
    locking: int = 0
    single: int = 0


def _alphabet(dc: int) -> str:
    """ "gsm", "ucs2", or "bytes" (a character set of bridge.text.charsets, else shown as hex)
    for a data_coding."""
    if dc == 0:
        return "gsm"
    if dc == 1:  # IA5/ASCII (SMPP 3.4 5.2.19), unless it holds GSM septets (charsets): read
        return "bytes"  # as GSM, IA5's "_" was "§" and "$" "¤"
    if dc == 8:
        return "ucs2"
    if 0x10 <= dc <= 0x3F or 0x40 <= dc <= 0x7F:
        # General data coding groups (TS 23.038 4): alphabet in bits 2-3; compressed (bit 5)
        # is not supported and shown as bytes.
        if dc & 0x20:
            return "bytes"
        return ("gsm", "bytes", "ucs2", "gsm")[(dc >> 2) & 3]
    if 0xC0 <= dc <= 0xDF:  # message waiting indication, discard or store (TS 23.038 4)
        return "gsm"
    if 0xE0 <= dc <= 0xEF:  # message waiting indication, store, UCS2
        return "ucs2"
    if dc & 0xF0 == 0xF0:  # data coding / message class: bit 2 selects 8-bit data
        return "bytes" if dc & 0x04 else "gsm"
    return "bytes"


def _unpack(data: bytes, skip_octets: int) -> bytes:
    """Unpack GSM septets that start after ``skip_octets`` octets of UDH (plus fill bits).

    Drops the <CR> a sender adds when 7 spare bits would otherwise read as '@' (TS 23.038
    6.1.2.3.1): a part whose septets end exactly on an octet boundary and end in CR. And the
    second CR the same clause adds after a wanted final CR that ends on an octet boundary
    (CR CR displays as CR; dropping it gives the sender's text back).
    """
    udh_bits = 8 * skip_octets
    fill = (7 - udh_bits % 7) % 7
    bits = 8 * len(data) - udh_bits - fill
    if bits <= 0:
        return b""
    count = bits // 7
    septets = unpack_septets(data[skip_octets:], count, fill)
    if bits % 7 == 0 and septets and septets[-1] == _CR:
        # The septets fill the last octet exactly: a final CR is the padding character.
        septets = septets[:-1]
    elif septets[-2:] == b"\r\r" and (udh_bits + fill + 7 * (count - 1)) % 8 == 0:
        septets = septets[:-1]  # the first CR ends on an octet boundary: the second doubles it
    return septets


@dataclass(frozen=True, slots=True)
class _Udh:
    concat: tuple[str, int, int, int] | None = None  # (scheme, ref, total, seq)
    locking: int = 0  # IE 0x25, National Language Locking Shift
    single: int = 0  # IE 0x24, National Language Single Shift


_NO_UDH = _Udh()


def _udh_ies(udh: bytes) -> _Udh:
    """The IEs of a UDH (without its length octet) that decoding needs; never raises.

    The first concatenation IE counts. A language IE must be one octet long; a repeated one, the
    last counts (TS 23.040 9.2.3.24: of repeated IEs, the last occurrence is used). An IE that
    runs past the UDH ends the reading: what came before it still counts (a concatenation IE
    after it was never read either)."""
    concat = None
    locking = single = 0
    i = 0
    n = len(udh)
    while i + 2 <= n:
        iei = udh[i]
        ln = udh[i + 1]
        v = udh[i + 2 : i + 2 + ln]
        if len(v) != ln:
            break
        if concat is None and iei == 0x00 and ln == 3:
            concat = ("udh8", v[0], v[1], v[2])
        elif concat is None and iei == 0x08 and ln == 4:
            concat = ("udh16", (v[0] << 8) | v[1], v[2], v[3])
        elif iei == 0x25 and ln == 1:
            locking = v[0]
        elif iei == 0x24 and ln == 1:
            single = v[0]
        i += 2 + ln
    if concat is None and not locking and not single:
        return _NO_UDH
    return _Udh(concat, locking, single)


def parse_segment(sm: ShortMessage, packed_gsm: bool = False) -> Segment:
    """Split a submit_sm (or deliver_sm) into concatenation header and payload; never raises.

    message_payload, when present, replaces short_message (SMPP 3.4 5.3.2.32). A malformed UDH
    leaves the octets in the payload rather than dropping them: better a visibly odd text than a
    silently shortened one. A concatenation header with seq 0, seq > total or total < 2 is
    treated as a single part. National language IEs are kept for GSM 7-bit text only (they
    name GSM tables).
    """
    tlvs = sm.tlvs
    data = sm.short_message
    if tlvs:
        mp = tlv_get(tlvs, MESSAGE_PAYLOAD)
        if mp is not None and not data:
            data = mp
    dc = sm.data_coding
    gsm_packed = packed_gsm and _alphabet(dc) == "gsm"
    scheme = ""
    ref = 0
    total = seq = 1
    skip = 0
    udh = _NO_UDH
    if sm.esm_class & ESM_UDHI and data:
        udhl = data[0]
        if 1 + udhl <= len(data):
            skip = 1 + udhl
            udh = _udh_ies(data[1:skip])
            if udh.concat is not None:
                scheme, ref, total, seq = udh.concat
    elif tlvs:
        r = tlv_get(tlvs, SAR_MSG_REF_NUM)
        t = tlv_get(tlvs, SAR_TOTAL_SEGMENTS)
        s = tlv_get(tlvs, SAR_SEGMENT_SEQNUM)
        if r and t and s:
            scheme = "sar"
            ref = int.from_bytes(r, "big")
            total = int.from_bytes(t, "big")
            seq = int.from_bytes(s, "big")
    if scheme and not (total >= 2 and 1 <= seq <= total):
        scheme, ref, total, seq = "", 0, 1, 1
    payload = _unpack(data, skip) if gsm_packed else data[skip:]
    if (udh.locking or udh.single) and _alphabet(dc) == "gsm":
        return Segment(dc, payload, scheme, ref, total, seq, udh.locking, udh.single)
    return Segment(dc, payload, scheme, ref, total, seq)


class Decoded(NamedTuple):
    """A text decoded, and what the reader should know about it: a part named a national
    language table that does not exist (read with the default one), or octets that are not
    text in their coding (kept as hex: a character set's octets it cannot read, a coding
    without a character set that is not binary data)."""

    text: str
    unknown_language: bool = False
    undecodable: bool = False
    hex: bool = False  # the text is the octets' hex (undecodable, or a binary coding's data)


def _binary(data_coding: int) -> bool:
    """Codings that carry data, not text: shown as hex, and rightly so (SMPP 3.4 2 and 4, 8-bit
    data in the TS 23.038 groups)."""
    if data_coding in (2, 4):
        return True
    if 0x10 <= data_coding <= 0x7F:
        return not data_coding & 0x20 and (data_coding >> 2) & 3 == 1
    return data_coding & 0xF4 == 0xF4


def decode_payload(data_coding: int, payload: bytes) -> str:
    """Text of a (possibly joined) payload; never an error (decode_segments)."""
    return decode_segments(data_coding, ((payload, 0, 0),)).text


def decode_segments(data_coding: int, parts: Iterable[tuple[bytes, int, int]]) -> Decoded:
    """Text of parts (payload, locking, single) that share a data_coding, decoded as one payload
    (pairs may straddle parts), GSM 7-bit with each part's national language tables; whether a
    part named a table that does not exist (read with the default one instead), and whether the
    octets are not text in their coding (their hex instead)."""
    kind = _alphabet(data_coding)
    if kind == "gsm":
        return Decoded(*decode_parts(parts))
    payload = b"".join(p for p, _, _ in parts)
    if kind == "ucs2":
        return Decoded(payload.decode("utf-16-be", "replace"))
    if data_coding == 1 and ia5_holds_gsm(payload):
        return Decoded(gsm_decode(payload))
    if has_charset(data_coding):
        text, undecodable = decode_octets(data_coding, payload)
        return Decoded(text, False, undecodable, undecodable)
    # Binary (2, 4, 8-bit classes): show the octets; so for a coding nothing here reads
    # (pictograms, reserved, compressed), flagged.
    return Decoded(payload.hex(), False, not _binary(data_coding), True)


def segment_text(seg: Segment) -> str:
    """The text of one segment on its own (for a receipt's ``text:`` field)."""
    return decode_segments(seg.data_coding, ((seg.payload, seg.locking, seg.single),)).text


@dataclass(slots=True)
class _Pending:
    total: int
    first_at: float
    parts: dict[int, tuple[Segment, str]] = field(default_factory=dict)


class Reassembler:
    """Joins concatenated parts per (system_id, source, destination, scheme, ref).

    A part that repeats a seq replaces the earlier one (a resubmission); a part announcing a
    different total starts the message over (the sender reused the reference). Incomplete messages
    older than ``ttl_s`` and the oldest beyond ``max_pending`` are dropped and counted in
    ``abandoned``.
    """

    __slots__ = ("_pending", "abandoned", "max_pending", "ttl_s")

    def __init__(self, *, ttl_s: float = 600.0, max_pending: int = 100_000) -> None:
        self.ttl_s = ttl_s
        self.max_pending = max_pending
        self.abandoned = 0
        self._pending: OrderedDict[tuple[str, str, str, str, int], _Pending] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def add(
        self,
        system_id: str,
        source: str,
        destination: str,
        seg: Segment,
        message_id: str,
        now: float,
    ) -> SimMessage | None:
        """Record one accepted segment; the whole message when this part completes it."""
        if not seg.scheme:
            return SimMessage(
                system_id,
                source,
                destination,
                seg.data_coding,
                segment_text(seg),
                1,
                [message_id],
                now,
            )
        self._expire(now)
        pending = self._pending
        key = (system_id, source, destination, seg.scheme, seg.ref)
        entry = pending.get(key)
        if entry is not None and entry.total != seg.total:
            del pending[key]
            self.abandoned += 1
            entry = None
        if entry is None:
            if len(pending) >= self.max_pending:
                pending.popitem(last=False)
                self.abandoned += 1
            entry = pending[key] = _Pending(seg.total, now)
        entry.parts[seg.seq] = (seg, message_id)
        if len(entry.parts) < entry.total:
            return None
        del pending[key]
        ordered = [entry.parts[i] for i in range(1, entry.total + 1)]
        return SimMessage(
            system_id,
            source,
            destination,
            ordered[0][0].data_coding,
            _join_text([s for s, _ in ordered]),
            entry.total,
            [mid for _, mid in ordered],
            now,
        )

    def _expire(self, now: float) -> None:
        pending = self._pending
        limit = now - self.ttl_s
        while pending:
            key, entry = next(iter(pending.items()))
            if entry.first_at > limit:
                break
            del pending[key]
            self.abandoned += 1


def _join_text(segments: list[Segment]) -> str:
    """Decode runs of parts that share a data_coding as one payload (pairs may straddle parts)."""
    out: list[str] = []
    run: list[tuple[bytes, int, int]] = []
    dc = segments[0].data_coding
    for seg in segments:
        if seg.data_coding != dc:
            out.append(decode_segments(dc, run).text)
            run = []
            dc = seg.data_coding
        run.append((seg.payload, seg.locking, seg.single))
    out.append(decode_segments(dc, run).text)
    return "".join(out)
