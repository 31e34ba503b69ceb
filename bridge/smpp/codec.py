"""SMPP 3.4 PDU codec: our struct-based code on the hot path, smpplib for everything else.

Why two codecs: smpplib costs ~42 us to build a submit_sm or parse a deliver_sm, which caps a
process near 6,000 messages/s. The PDUs a busy bind exchanges (submit_sm, deliver_sm, their
responses, enquire_link, unbind, generic_nack, binds, data_sm) are therefore encoded and decoded
here with ``struct`` and slicing; rarer PDUs (query_sm, alert_notification) go through
``smpplib.command`` objects, which the unit tests also use as the byte-for-byte oracle for our code.

data_sm is ours because some carriers send every receipt and MO as data_sm, which makes it as hot
as deliver_sm there (smpplib: ~28 us a parse, ours ~2 us), and smpplib caps its addresses at 20
octets where SMPP 3.4 4.7.1 allows 64. smpplib objects for data_sm are still accepted by
``encode`` (the oracle tests build them).

Pure: bytes in, values out. No I/O, no clock, never smpplib's blocking ``Client``.

Strings (C-Octet Strings) are decoded and encoded as latin-1, a lossless byte<->char mapping, so a
decode can never fail on content and ``encode(decode(x)) == x``. smpplib does the same (``six.b``).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field as dc_field
from struct import Struct
from struct import error as StructError
from typing import Any, Final

from smpplib import command as _sl_command
from smpplib import consts as _sl_consts
from smpplib import smpp as _sl_smpp
from smpplib.ptypes import flag as _sl_flag
from smpplib.ptypes import ostr as _sl_ostr

from bridge.smpp.constants import (
    ALERT_NOTIFICATION,
    BIND_COMMANDS,
    BIND_RESP_COMMANDS,
    CANCEL_SM,
    CANCEL_SM_RESP,
    COMMAND_NAMES,
    DATA_SM,
    DATA_SM_RESP,
    DELIVER_SM,
    DELIVER_SM_RESP,
    ENQUIRE_LINK,
    ENQUIRE_LINK_RESP,
    ESM_DELIVERY_RECEIPT,
    ESME_RINVCMDID,
    ESME_RINVCMDLEN,
    ESME_RINVDSTADR,
    ESME_RINVEXPIRY,
    ESME_RINVMSGID,
    ESME_RINVMSGLEN,
    ESME_RINVOPTPARSTREAM,
    ESME_RINVPASWD,
    ESME_RINVSCHED,
    ESME_RINVSERTYP,
    ESME_RINVSRCADR,
    ESME_RINVSYSID,
    ESME_RINVSYSTYP,
    ESME_RSYSERR,
    GENERIC_NACK,
    MESSAGE_PAYLOAD,
    MESSAGE_STATE,
    NETWORK_ERROR_CODE,
    OUTBIND,
    QUERY_SM,
    QUERY_SM_RESP,
    RECEIPTED_MESSAGE_ID,
    REPLACE_SM,
    REPLACE_SM_RESP,
    RESP_BIT,
    SUBMIT_MULTI,
    SUBMIT_MULTI_RESP,
    SUBMIT_SM,
    SUBMIT_SM_RESP,
    UNBIND,
    UNBIND_RESP,
    command_name,
    status_name,
)

__all__ = [
    "MAX_PDU",
    "OCTET",
    "Bind",
    "BindResp",
    "DataSm",
    "EncodeError",
    "MessageIdResp",
    "Pdu",
    "PduError",
    "ReceiptFields",
    "ShortMessage",
    "decode",
    "decode_fields",
    "encode",
    "encode_sm_request",
    "make_command",
    "plain_sm_head",
    "read_receipt_at",
    "read_receipt_sm",
    "salvage_data_sm",
    "salvage_deliver_sm",
    "tlv_get",
    "tlv_int",
    "tlv_int_value",
]

# smpplib logs a warning for every unknown TLV it skips; a chatty SMSC would flood our logs. We
# never hand it unknown TLVs (see _decode_via_smpplib), and silence it anyway in case a caller does.
logging.getLogger("smpplib.command").setLevel(logging.ERROR)

MAX_PDU: Final = 65536
HEADER_LEN: Final = 16
_MAX_BODY: Final = MAX_PDU - HEADER_LEN

Tlvs = tuple[tuple[int, bytes], ...]

_HDR = Struct(">IIII")
_U32 = Struct(">I")
_TLVH = Struct(">HH")
_unpack_tlvh = _TLVH.unpack_from
_B2 = Struct("BB")
_B3 = Struct("BBB")
_B5 = Struct("BBBBB")
_new_object = object.__new__


# --- errors ---------------------------------------------------------------------------------------
class PduError(Exception):
    """A frame we could not parse. Carries what the session needs to answer it.

    ``status`` is the SMPP status to answer with (generic_nack, or the request's own resp);
    ``command_id`` and ``seq`` come from the header, 0 when the header itself is unusable.
    """

    def __init__(self, status: int, message: str, command_id: int = 0, seq: int = 0) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.command_id = command_id
        self.seq = seq

    @property
    def code(self) -> str:
        """Stable machine code: the status name, e.g. ``ESME_RINVCMDLEN``."""
        return status_name(self.status)

    def __str__(self) -> str:
        return (
            f"{self.code}: {self.message} (command {command_name(self.command_id)}, seq {self.seq})"
        )


class EncodeError(ValueError):
    """A value we refuse to put on the wire; raised by ``encode``, names the offending field.

    Encoding is strict where decoding is tolerant: an over-long field is refused, never truncated
    (smpplib silently truncates, which corrupts addresses).
    """

    code: Final = "SMPP_ENCODE_INVALID"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


# --- values ---------------------------------------------------------------------------------------
@dataclass(slots=True)
class ShortMessage:
    """Body of submit_sm and deliver_sm (not data_sm, which has no short_message)."""

    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    esm_class: int = 0
    protocol_id: int = 0
    priority_flag: int = 0
    schedule_delivery_time: str = ""
    validity_period: str = ""
    registered_delivery: int = 0
    replace_if_present_flag: int = 0
    data_coding: int = 0
    sm_default_msg_id: int = 0
    short_message: bytes = b""
    tlvs: Tlvs = ()  # raw TLVs in wire order; unknown ones preserved


@dataclass(slots=True)
class DataSm:
    """Body of data_sm (SMPP 3.4 4.7.1): no short_message, the content and the receipt are TLVs.

    Addresses may be up to 64 octets here (21 in submit_sm/deliver_sm).
    """

    service_type: str = ""
    source_addr_ton: int = 0
    source_addr_npi: int = 0
    source_addr: str = ""
    dest_addr_ton: int = 0
    dest_addr_npi: int = 0
    destination_addr: str = ""
    esm_class: int = 0
    registered_delivery: int = 0
    data_coding: int = 0
    tlvs: Tlvs = ()  # raw TLVs in wire order; unknown ones preserved

    def as_short_message(self) -> ShortMessage:
        """The deliver_sm body this data_sm stands for: the inbound pipeline reads receipts
        and MO the same way from both (text in message_payload, receipt fields in TLVs)."""
        return ShortMessage(
            service_type=self.service_type,
            source_addr_ton=self.source_addr_ton,
            source_addr_npi=self.source_addr_npi,
            source_addr=self.source_addr,
            dest_addr_ton=self.dest_addr_ton,
            dest_addr_npi=self.dest_addr_npi,
            destination_addr=self.destination_addr,
            esm_class=self.esm_class,
            registered_delivery=self.registered_delivery,
            data_coding=self.data_coding,
            tlvs=self.tlvs,
        )


@dataclass(slots=True)
class MessageIdResp:
    """Body of submit_sm_resp, deliver_sm_resp (message_id unused, "") and data_sm_resp.

    ``tlvs`` holds TLVs some SMSCs append (SMPP 5.0 style, or data_sm_resp's own); SMPP 3.4
    submit_sm_resp has none, but refusing them would strand a message whose id we did receive.
    """

    message_id: str = ""
    tlvs: Tlvs = ()


@dataclass(slots=True)
class Bind:
    """Body of bind_transmitter / bind_receiver / bind_transceiver."""

    system_id: str
    password: str = dc_field(repr=False)
    system_type: str = ""
    interface_version: int = 0x34
    addr_ton: int = 0
    addr_npi: int = 0
    address_range: str = ""


@dataclass(slots=True)
class BindResp:
    """Body of bind_*_resp; ``tlvs`` normally carries sc_interface_version."""

    system_id: str = ""
    tlvs: Tlvs = ()


@dataclass(slots=True)
class Pdu:
    """One PDU.

    ``body`` is None for header-only PDUs (enquire_link(_resp), unbind(_resp), generic_nack,
    cancel_sm_resp, replace_sm_resp) and for responses sent without a body (error statuses);
    one of our dataclasses for the hot PDUs (``DataSm`` for data_sm); an
    ``smpplib.command.Command`` for query_sm(_resp) and alert_notification (decoded ones also carry
    ``.tlvs``, the raw TLVs); raw body ``bytes`` for outbind, replace_sm, cancel_sm,
    submit_multi(_resp), which smpplib cannot build.
    ``encode`` accepts raw ``bytes`` for any command (tests use it to send malformed PDUs).
    """

    command_id: int
    status: int
    seq: int
    body: ShortMessage | DataSm | MessageIdResp | Bind | BindResp | Any | None = None


# --- TLV helpers ----------------------------------------------------------------------------------
def tlv_get(tlvs: Iterable[tuple[int, bytes]], tag: int) -> bytes | None:
    """Value of the first TLV with ``tag`` (SMPP forbids repeats; the first one wins)."""
    for t, v in tlvs:
        if t == tag:
            return v
    return None


def tlv_int(tlvs: Iterable[tuple[int, bytes]], tag: int) -> int | None:
    """Big-endian integer value of a TLV, whatever its length (SMSCs send 1-byte fields as 2 or 4).

    None when absent or empty, or when longer than 4 octets with a value that does not fit 32 bits.
    """
    return tlv_int_value(tlv_get(tlvs, tag))


def tlv_int_value(v: bytes | None) -> int | None:
    """tlv_int of a TLV's value already found (None: absent)."""
    if not v:
        return None
    if len(v) > 4:
        if any(v[:-4]):
            return None
        v = v[-4:]
    return int.from_bytes(v, "big")


def _encode_tlvs(tlvs: Iterable[tuple[int, bytes]]) -> bytes:
    parts: list[bytes] = []
    try:
        for tag, val in tlvs:
            parts.append(_TLVH.pack(tag, len(val)))
            parts.append(val)
        return b"".join(parts)
    except (StructError, TypeError, ValueError) as e:
        raise EncodeError(
            "tlvs", f"each TLV must be (tag 0..0xFFFF, bytes of at most 65535 octets): {e}"
        ) from None


def _decode_tlvs(f: bytes, p: int, n: int) -> Tlvs:
    out = []
    # The bound method read once (_unpack_tlvh): `_TLVH.unpack_from` made one a call (~700
    # instructions a receipt, session 59).
    unpack = _unpack_tlvh
    while p < n:
        if n - p < 4:
            raise PduError(
                ESME_RINVOPTPARSTREAM, f"{n - p} trailing octets are too short to be a TLV"
            )
        tag, ln = unpack(f, p)
        p += 4
        e = p + ln
        if e > n:
            raise PduError(
                ESME_RINVOPTPARSTREAM,
                f"TLV 0x{tag:04X} declares {ln} octets but only {n - p} remain",
            )
        out.append((tag, f[p:e]))
        p = e
    return tuple(out)


# --- C-Octet Strings ------------------------------------------------------------------------------
# The status to answer when a field is not NUL-terminated within its maximum (NUL included).
_CSTR_STATUS: Final[dict[str, int]] = {
    "service_type": ESME_RINVSERTYP,
    "source_addr": ESME_RINVSRCADR,
    "destination_addr": ESME_RINVDSTADR,
    "schedule_delivery_time": ESME_RINVSCHED,
    "validity_period": ESME_RINVEXPIRY,
    "message_id": ESME_RINVMSGID,
    "system_id": ESME_RINVSYSID,
    "password": ESME_RINVPASWD,
    "system_type": ESME_RINVSYSTYP,
}


def _cstr_error(f: bytes, pos: int, maxlen: int, field: str) -> PduError:
    if pos + maxlen > len(f):
        return PduError(ESME_RINVCMDLEN, f"the PDU ends inside {field} (no NUL terminator)")
    return PduError(
        _CSTR_STATUS.get(field, ESME_RINVMSGLEN),
        f"{field} is not NUL-terminated within {maxlen} octets",
    )


def _dcs(f: bytes, pos: int, maxlen: int, field: str) -> tuple[str, int]:
    """Decode a C-Octet String of at most ``maxlen`` octets including its NUL."""
    i = f.find(0, pos, pos + maxlen)
    if i < 0:
        raise _cstr_error(f, pos, maxlen, field)
    return f[pos:i].decode("latin-1"), i + 1


def _ecs(value: str, maxlen: int, field: str) -> bytes:
    """Encode a C-Octet String; ``maxlen`` includes the NUL, as in the SMPP tables."""
    try:
        b = value.encode("latin-1")
    except (AttributeError, UnicodeEncodeError):
        raise EncodeError(field, "must be a str of latin-1 characters") from None
    if len(b) >= maxlen:
        raise EncodeError(field, f"{len(b)} octets exceed the maximum of {maxlen - 1}")
    if 0 in b:
        raise EncodeError(field, "must not contain NUL")
    return b + b"\0"


def _int_field_error(obj: object, fields: tuple[str, ...]) -> EncodeError:
    for name in fields:
        v = getattr(obj, name)
        if type(v) is not int or not 0 <= v <= 255:
            return EncodeError(name, f"must be an int in 0..255, got {v!r}")
    return EncodeError("body", "invalid integer field")  # pragma: no cover - defensive


# --- submit_sm / deliver_sm -----------------------------------------------------------------------
_SM_INT_FIELDS: Final = (
    "source_addr_ton",
    "source_addr_npi",
    "dest_addr_ton",
    "dest_addr_npi",
    "esm_class",
    "protocol_id",
    "priority_flag",
    "registered_delivery",
    "replace_if_present_flag",
    "data_coding",
    "sm_default_msg_id",
)


# One character per octet value: an int field goes into the latin-1 text of the plain path
# (_plain_sm) by an index, where a struct packs it by a method call.
_CHR: Final = tuple(map(chr, range(256)))


# One octet of each value: a short_message's length after a body's head (plain_sm_head).
OCTET: Final = tuple(bytes((i,)) for i in range(256))


def plain_sm_head(
    st: str,
    ston: int,
    snpi: int,
    sa: str,
    dton: int,
    dnpi: int,
    da: str,
    esm: int,
    pid: int,
    prio: int,
    sdt: str,
    vp: str,
    rd: int,
    rip: int,
    dc: int,
    dmid: int,
) -> bytes | None:
    """A submit_sm's (or deliver_sm's) body up to its sm_length octet: the fields before
    short_message, in ShortMessage's order (service_type, source_addr_ton, ...,
    sm_default_msg_id, by short names), as `_plain_sm` writes them (it calls this), or None
    when one is not what the plain path takes. One text joined and encoded once, where the
    general path encodes five C-strings and packs four runs of integers, each a call (session
    55). The parts of a message share every one of these but, in principle, esm_class: the
    dispatcher writes them once a message and each part's body as head + `OCTET[len(sm)]` + sm
    (`pipeline.submit_sm.submit_bodies`, session 59), where each part's `_plain_sm` wrote
    them again (~9 k instructions a part)."""
    try:
        if (
            len(st) > 5
            or len(sa) > 20
            or len(da) > 20
            or len(sdt) > 16
            or len(vp) > 16
            or "\0" in st
            or "\0" in sa
            or "\0" in da
            or "\0" in sdt
            or "\0" in vp
            # Negative: an index from the end. Their OR is negative when one is (ints).
            or ston | snpi | dton | dnpi | esm | pid | prio | rd | rip | dc | dmid < 0
        ):
            return None
        c = _CHR
        # join, not an f-string: a field that is not a str raises here (TypeError), where
        # formatting would write its repr; an int above 255 raises IndexError, a float
        # TypeError; a character beyond latin-1, UnicodeEncodeError (a ValueError).
        return "".join(
            (
                st, "\0", c[ston], c[snpi], sa, "\0", c[dton], c[dnpi], da, "\0", c[esm],
                c[pid], c[prio], sdt, "\0", vp, "\0", c[rd], c[rip], c[dc], c[dmid],
            )
        ).encode("latin-1")  # fmt: skip
    except (TypeError, ValueError, IndexError):
        return None


def _plain_sm(m: ShortMessage) -> bytes | None:
    """The body of a submit_sm or deliver_sm (UDH parts, SAR and payload parts with their TLVs
    included) as _encode_sm_general makes it, or None when a field is not what that path takes
    without a word (it then raises its EncodeError, or what it raised before): the head
    (`plain_sm_head`), then sm_length, short_message and the TLVs: 22.5 k -> ~10 k instructions
    a submit_sm (session 55). A UDH is octets of short_message, written as they are, and the
    esm_class that flags it one octet: nothing here reads either. Until session 57 a part with
    UDHI or TLVs was refused here, checked twice (`encode_sm_request`, then `_encode_sm`) and
    written by the general path with its shared fields kept per message (`_SM_SHARED`, session
    51): a UDH part's submit_sm 25.8 k -> 12.9 k. Equal octets for every value it takes:
    tests/unit/test_codec_plain_sm.py checks both paths on random fields, strange ones
    included."""
    sm = m.short_message
    if type(sm) is not bytes or len(sm) > 254:
        return None
    head = plain_sm_head(
        m.service_type, m.source_addr_ton, m.source_addr_npi, m.source_addr, m.dest_addr_ton,
        m.dest_addr_npi, m.destination_addr, m.esm_class, m.protocol_id, m.priority_flag,
        m.schedule_delivery_time, m.validity_period, m.registered_delivery,
        m.replace_if_present_flag, m.data_coding, m.sm_default_msg_id,
    )  # fmt: skip
    if head is None:
        return None
    try:
        if m.tlvs:
            return head + OCTET[len(sm)] + sm + _encode_tlvs(m.tlvs)
    except (TypeError, ValueError, IndexError):  # the TLVs' EncodeError is a ValueError
        return None
    return head + OCTET[len(sm)] + sm


def encode_sm_request(cid: int, seq: int, m: ShortMessage | bytes) -> bytes:
    """``encode(Pdu(cid, 0, seq, m))`` for a submit_sm (one per part sent), without the Pdu
    built and dispatched on its body's type when the body takes the plain path (_plain_sm), or
    is its octets already (`pipeline.submit_sm.submit_bodies`, session 59: `encode` takes
    bytes as the body as they are). Anything else, and its errors, go through ``encode``."""
    if type(m) is bytes and len(m) <= _MAX_BODY:
        try:
            return _HDR.pack(16 + len(m), cid, 0, seq) + m
        except StructError:
            pass  # a sequence number out of range: encode names it
    b = (
        _plain_sm(m)
        if type(m) is ShortMessage and (cid == SUBMIT_SM or cid == DELIVER_SM)
        else None
    )
    if b is not None and len(b) <= _MAX_BODY:
        try:
            return _HDR.pack(16 + len(b), cid, 0, seq) + b
        except StructError:
            pass  # a sequence number out of range: encode names it
    return encode(Pdu(cid, 0, seq, m))


def _encode_sm(m: ShortMessage) -> bytes:
    plain = _plain_sm(m)
    return plain if plain is not None else _encode_sm_general(m)


def _encode_sm_general(m: ShortMessage) -> bytes:
    """What _plain_sm does not take: a bytearray or memoryview short_message, and every value
    refused (the EncodeError naming its field)."""
    sm = m.short_message
    if not isinstance(sm, bytes | bytearray | memoryview):
        raise EncodeError("short_message", "must be bytes")
    if len(sm) > 254:
        raise EncodeError("short_message", f"{len(sm)} octets exceed the maximum of 254")
    try:
        parts = [
            _ecs(m.service_type, 6, "service_type"),
            _B2.pack(m.source_addr_ton, m.source_addr_npi),
            _ecs(m.source_addr, 21, "source_addr"),
            _B2.pack(m.dest_addr_ton, m.dest_addr_npi),
            _ecs(m.destination_addr, 21, "destination_addr"),
            _B3.pack(m.esm_class, m.protocol_id, m.priority_flag),
            _ecs(m.schedule_delivery_time, 17, "schedule_delivery_time"),
            _ecs(m.validity_period, 17, "validity_period"),
            _B5.pack(
                m.registered_delivery,
                m.replace_if_present_flag,
                m.data_coding,
                m.sm_default_msg_id,
                len(sm),
            ),
            sm,
        ]
    except StructError:
        raise _int_field_error(m, _SM_INT_FIELDS) from None
    if m.tlvs:
        parts.append(_encode_tlvs(m.tlvs))
    return b"".join(parts)


# The five C-strings of a submit_sm or deliver_sm body (from offset 16), each up to its first NUL
# within its maximum (SMPP 3.4 4.4.1: service_type 6, the addresses 21, the times 17 octets, the
# NUL included), the integers between them skipped: what _decode_sm's finds read one by one,
# matched in one call. Each C-string has one way to match (no NUL inside, its NUL next), so a
# match is the very split the finds make; no match (a field without its NUL in reach, a body
# cut short) is read by the finds, which raise what they raised.
_SM_CSTRINGS: Final = re.compile(
    rb"([^\0]{0,5})\0..([^\0]{0,20})\0..([^\0]{0,20})\0...([^\0]{0,16})\0([^\0]{0,16})\0",
    re.DOTALL,
)


def _decode_sm(f: bytes, status: int) -> ShortMessage:
    """A deliver_sm's (one per part sent: its receipt) or submit_sm's body. Its C-strings by one
    match (_SM_CSTRINGS), the integers by their offsets after them: five finds, each a call
    parsing its arguments, were ~4.8 k of the ~28 k instructions a receipt's body cost (session
    57); the body the finds read is read when it does not match."""
    m = _SM_CSTRINGS.match(f, 16)
    if m is None:
        return _decode_sm_checked(f)
    st, sa, da, sdt, vp = m.groups()
    i = 17 + len(st)  # source_addr_ton
    ston = f[i]
    snpi = f[i + 1]
    i += 3 + len(sa)  # dest_addr_ton
    dton = f[i]
    dnpi = f[i + 1]
    i += 3 + len(da)  # esm_class
    esm = f[i]
    pid = f[i + 1]
    prio = f[i + 2]
    p = m.end()
    n = len(f)
    rd, rip, dc, dmid, sml = _B5.unpack_from(f, p)
    p += 5
    e = p + sml
    if e > n:
        raise PduError(ESME_RINVMSGLEN, f"sm_length {sml} exceeds the {n - p} octets left")
    # An empty one (a receipt's service_type and its two times, usually) taken as "" without
    # a decode. The ShortMessage's fields stored here on an instance made without its class
    # call (ShortMessage(...) entered the interpreter again from C for its __init__: ~1.5 k
    # instructions a receipt, session 59); the same value (every field set, in a slotted
    # dataclass without __post_init__: tests/unit/test_session59_receipt_inline.py).
    tlvs = _decode_tlvs(f, e, n) if e < n else ()
    sm = _new_object(ShortMessage)
    sm.service_type = st.decode("latin-1") if st else ""
    sm.source_addr_ton = ston
    sm.source_addr_npi = snpi
    sm.source_addr = sa.decode("latin-1") if sa else ""
    sm.dest_addr_ton = dton
    sm.dest_addr_npi = dnpi
    sm.destination_addr = da.decode("latin-1") if da else ""
    sm.esm_class = esm
    sm.protocol_id = pid
    sm.priority_flag = prio
    sm.schedule_delivery_time = sdt.decode("latin-1") if sdt else ""
    sm.validity_period = vp.decode("latin-1") if vp else ""
    sm.registered_delivery = rd
    sm.replace_if_present_flag = rip
    sm.data_coding = dc
    sm.sm_default_msg_id = dmid
    sm.short_message = f[p:e]
    sm.tlvs = tlvs
    return sm


def _decode_sm_checked(f: bytes) -> ShortMessage:
    """_decode_sm for a body _SM_CSTRINGS does not match: the C-strings found one by one, the
    first one without its NUL in reach named (or the body cut short)."""
    # _dcs inline (a call per C-string, five a PDU: one a receipt), and an empty one (a
    # receipt's service_type and its two times, usually) taken as "" without a decode.
    n = len(f)
    find = f.find
    i = find(0, 16, 22)
    if i < 0:
        raise _cstr_error(f, 16, 6, "service_type")
    st = f[16:i].decode("latin-1") if i > 16 else ""
    ston = f[i + 1]
    snpi = f[i + 2]
    p = i + 3
    i = find(0, p, p + 21)
    if i < 0:
        raise _cstr_error(f, p, 21, "source_addr")
    sa = f[p:i].decode("latin-1") if i > p else ""
    dton = f[i + 1]
    dnpi = f[i + 2]
    p = i + 3
    i = find(0, p, p + 21)
    if i < 0:
        raise _cstr_error(f, p, 21, "destination_addr")
    da = f[p:i].decode("latin-1") if i > p else ""
    esm = f[i + 1]
    pid = f[i + 2]
    prio = f[i + 3]
    p = i + 4
    i = find(0, p, p + 17)
    if i < 0:
        raise _cstr_error(f, p, 17, "schedule_delivery_time")
    sdt = f[p:i].decode("latin-1") if i > p else ""
    p = i + 1
    i = find(0, p, p + 17)
    if i < 0:
        raise _cstr_error(f, p, 17, "validity_period")
    vp = f[p:i].decode("latin-1") if i > p else ""
    p = i + 1
    rd, rip, dc, dmid, sml = _B5.unpack_from(f, p)
    p += 5
    e = p + sml
    if e > n:
        raise PduError(ESME_RINVMSGLEN, f"sm_length {sml} exceeds the {n - p} octets left")
    return ShortMessage(
        st, ston, snpi, sa, dton, dnpi, da, esm, pid, prio, sdt, vp, rd, rip, dc, dmid,
        f[p:e],
        _decode_tlvs(f, e, n) if e < n else (),
    )  # fmt: skip


# A receipt's deliver_sm as the owner reads it (Inbound.on_receipt): its esm_class, its
# short_message and the first receipted_message_id, message_state, network_error_code and
# message_payload TLVs' values (None when absent), what Inbound._receipt took from the ShortMessage.
ReceiptFields = tuple[int, bytes, bytes | None, bytes | None, bytes | None, bytes | None]
# SMPP 3.4 5.2.12's message types of a delivery receipt (esm_class bits 2-5): Inbound's is_receipt.
_RECEIPT_TYPES: Final = frozenset((0x04, 0x08, 0x10, 0x20))


def read_receipt_sm(f: bytes) -> ReceiptFields | None:
    """A deliver_sm body marked a receipt by its esm_class (one a part sent), read for the
    receipt path without `_decode_sm`'s ShortMessage: its five C-strings skipped by the same
    match (none decoded), esm_class, the short_message and the four TLVs a receipt may carry
    found in the one pass that checks the TLV stream (no tuple of every TLV). None for any body
    `_decode_sm` would not decode (a C-string without its NUL in reach, sm_length past the end,
    a TLV cut short: the general path raises there what it raised) and for one whose esm_class
    does not mark a receipt (an MO, or a receipt marked only by its TLV): those take the general
    path, as before (session 60, README note 27). The values are the very slices `_decode_sm`
    stores (tests/unit/test_session60_receipt_frame.py). `f` is the whole PDU, its header
    included (`read_receipt_at` over all of it)."""
    return read_receipt_at(f, 0, len(f))


# _SM_CSTRINGS' language with one group, empty, where the esm_class follows destination_addr's
# NUL: the receipt's read needs no C-string's octets, only where they end (session 64: five
# groups of marks kept, read as `m.start(4) - 3`).
_SM_RECEIPT_SKIP: Final = re.compile(
    rb"[^\0]{0,5}\0..[^\0]{0,20}\0..[^\0]{0,20}\0()...[^\0]{0,16}\0[^\0]{0,16}\0",
    re.DOTALL,
)
_skip_cstrings = _SM_RECEIPT_SKIP.match


def read_receipt_at(src: bytes, start: int, n: int) -> ReceiptFields | None:
    """`read_receipt_sm` of the PDU that is `src[start:n]`, read in place: the bind's read
    (`BindSession._read`) hands the octets it got with the frame's bounds, where a copy of the
    frame was sliced out of them for each receipt (one a part sent; session 64). Nothing past
    `n` is read (the match's end, every bound and the TLV walk stop there): the same values
    as `read_receipt_sm(src[start:n])`, tests/unit/test_session64_receipt_at.py."""
    m = _skip_cstrings(src, start + 16, n)
    if m is None:
        return None
    esm = src[m.start(1)]  # the octet after destination_addr's NUL
    if (esm & 0x3C) not in _RECEIPT_TYPES:
        return None
    p = m.end() + 5  # registered_delivery .. sm_default_msg_id, sm_length: the short_message
    if p > n:
        return None
    e = p + src[p - 1]
    if e > n:
        return None
    tlv_id = state = network = payload = None
    q = e
    while q < n:
        if n - q < 4:
            return None
        tag, ln = _unpack_tlvh(src, q)
        q += 4
        end = q + ln
        if end > n:
            return None
        if tag == RECEIPTED_MESSAGE_ID:
            if tlv_id is None:
                tlv_id = src[q:end]
        elif tag == MESSAGE_STATE:
            if state is None:
                state = src[q:end]
        elif tag == NETWORK_ERROR_CODE:
            if network is None:
                network = src[q:end]
        elif tag == MESSAGE_PAYLOAD and payload is None:
            payload = src[q:end]
        q = end
    return esm, src[p:e], tlv_id, state, network, payload


# --- data_sm --------------------------------------------------------------------------------------
_DATA_SM_INT_FIELDS: Final = (
    "source_addr_ton",
    "source_addr_npi",
    "dest_addr_ton",
    "dest_addr_npi",
    "esm_class",
    "registered_delivery",
    "data_coding",
)
_DATA_SM_ADDR_MAX: Final = 65  # SMPP 3.4 4.7.1: Var. max 65, NUL included


def _encode_data_sm(m: DataSm) -> bytes:
    try:
        parts = [
            _ecs(m.service_type, 6, "service_type"),
            _B2.pack(m.source_addr_ton, m.source_addr_npi),
            _ecs(m.source_addr, _DATA_SM_ADDR_MAX, "source_addr"),
            _B2.pack(m.dest_addr_ton, m.dest_addr_npi),
            _ecs(m.destination_addr, _DATA_SM_ADDR_MAX, "destination_addr"),
            _B3.pack(m.esm_class, m.registered_delivery, m.data_coding),
        ]
    except StructError:
        raise _int_field_error(m, _DATA_SM_INT_FIELDS) from None
    if m.tlvs:
        parts.append(_encode_tlvs(m.tlvs))
    return b"".join(parts)


def _decode_data_sm(f: bytes, status: int) -> DataSm:
    n = len(f)
    st, p = _dcs(f, 16, 6, "service_type")
    ston = f[p]
    snpi = f[p + 1]
    sa, p = _dcs(f, p + 2, _DATA_SM_ADDR_MAX, "source_addr")
    dton = f[p]
    dnpi = f[p + 1]
    da, p = _dcs(f, p + 2, _DATA_SM_ADDR_MAX, "destination_addr")
    esm, rd, dc = _B3.unpack_from(f, p)
    p += 3
    return DataSm(
        st, ston, snpi, sa, dton, dnpi, da, esm, rd, dc, _decode_tlvs(f, p, n) if p < n else ()
    )


_DATA_SM_ID: Final = _U32.pack(DATA_SM)


# --- responses with a message_id ------------------------------------------------------------------
def _encode_msgid(r: MessageIdResp) -> bytes:
    b = _ecs(r.message_id, 65, "message_id")
    return b + _encode_tlvs(r.tlvs) if r.tlvs else b


def _decode_msgid(f: bytes, status: int) -> MessageIdResp:
    n = len(f)
    if n == 16:
        # SMPP 3.4: no body when the status is an error. deliver_sm_resp's message_id is unused,
        # so a bare header is accepted for it whatever the status.
        if status or _U32.unpack_from(f, 4)[0] == DELIVER_SM_RESP:
            return MessageIdResp()
        raise PduError(ESME_RINVCMDLEN, "message_id is missing")
    try:
        mid, p = _dcs(f, 16, 65, "message_id")
    except PduError:
        if status:  # the status is what matters in an error response; do not nack it
            return MessageIdResp()
        # Longer than SMPP 3.4's 64 octets (a vendor prefix on a UUID): some SMSCs do it, and
        # their receipts carry the whole id. Refused, the acceptance was recorded with no id
        # and its receipts matched nothing; kept whole, as Kannel keeps it (the session warns).
        # One with no NUL at all is still malformed.
        if f.find(0, 16) < 0:
            raise
        mid, p = _dcs(f, 16, n - 16, "message_id")
    try:
        tlvs = _decode_tlvs(f, p, n) if p < n else ()
    except PduError:
        # Stray octets after a well-formed id (some SMSCs pad with NULs): keep the id, which
        # its receipt will be matched by; dropping it left the part unmatchable forever.
        tlvs = ()
    return MessageIdResp(mid, tlvs)


# --- binds ----------------------------------------------------------------------------------------
def _encode_bind(b: Bind) -> bytes:
    try:
        ints = _B3.pack(b.interface_version, b.addr_ton, b.addr_npi)
    except StructError:
        raise _int_field_error(b, ("interface_version", "addr_ton", "addr_npi")) from None
    return b"".join(
        (
            _ecs(b.system_id, 16, "system_id"),
            _ecs(b.password, 9, "password"),
            _ecs(b.system_type, 13, "system_type"),
            ints,
            _ecs(b.address_range, 41, "address_range"),
        )
    )


def _decode_bind(f: bytes, status: int) -> Bind:
    sid, p = _dcs(f, 16, 16, "system_id")
    pw, p = _dcs(f, p, 9, "password")
    stype, p = _dcs(f, p, 13, "system_type")
    iv, ton, npi = _B3.unpack_from(f, p)
    ar, p = _dcs(f, p + 3, 41, "address_range")
    if p != len(f):
        raise PduError(ESME_RINVCMDLEN, f"{len(f) - p} octets follow address_range")
    return Bind(sid, pw, stype, iv, ton, npi, ar)


def _encode_bind_resp(r: BindResp) -> bytes:
    b = _ecs(r.system_id, 16, "system_id")
    return b + _encode_tlvs(r.tlvs) if r.tlvs else b


def _decode_bind_resp(f: bytes, status: int) -> BindResp:
    n = len(f)
    if n == 16 and status:
        return BindResp()
    try:
        sid, p = _dcs(f, 16, 16, "system_id")
        return BindResp(sid, _decode_tlvs(f, p, n) if p < n else ())
    except PduError:
        if status:
            return BindResp()
        raise


# --- header-only and raw --------------------------------------------------------------------------
_HEADER_ONLY: Final = frozenset(
    {ENQUIRE_LINK, ENQUIRE_LINK_RESP, UNBIND, UNBIND_RESP, GENERIC_NACK, CANCEL_SM_RESP,
     REPLACE_SM_RESP}
)  # fmt: skip

# Defined by SMPP 3.4 but not buildable by smpplib 2.2.4: carried as raw body bytes.
_RAW: Final = frozenset({OUTBIND, REPLACE_SM, CANCEL_SM, SUBMIT_MULTI, SUBMIT_MULTI_RESP})


def _decode_empty(f: bytes, status: int) -> None:
    if len(f) != 16:
        raise PduError(ESME_RINVCMDLEN, f"{len(f) - 16} octets follow a header-only PDU")
    return None


def _decode_raw(f: bytes, status: int) -> bytes:
    return f[16:]


# --- everything else through smpplib --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _SlSpec:
    """What smpplib expects for one command, so we can hand it only what it parses correctly."""

    name: str
    # (field, kind, n): kind "i" int of n octets, "s" C-string of at most n octets, "o" octet
    # string whose length is in the field named by the str n.
    mandatory: tuple[tuple[str, str, Any], ...]
    # tag -> (kind, size): TLVs this command's smpplib class lists, with the length it can parse.
    tlvs: dict[int, tuple[str, int]]


def _sl_spec(name: str) -> _SlSpec:
    cmd = _sl_smpp.make_pdu(name, sequence=0)
    mandatory: list[tuple[str, str, Any]] = []
    tlvs: dict[int, tuple[str, int]] = {}
    for field in cmd.params_order:
        param = cmd.params[field]
        kind = {int: "i", str: "s", _sl_ostr: "o", _sl_flag: "f"}[param.type]
        if cmd.field_is_optional(field):
            tlvs[_sl_consts.OPTIONAL_PARAMS[field]] = (kind, getattr(param, "size", 0))
        elif kind == "i":
            mandatory.append((field, "i", param.size))
        elif kind == "s":
            mandatory.append((field, "s", param.max))
        else:
            mandatory.append((field, "o", param.len_field))
    return _SlSpec(name, tuple(mandatory), tlvs)


_SMPPLIB: Final[dict[int, _SlSpec]] = {
    cid: _sl_spec(COMMAND_NAMES[cid])
    for cid in (QUERY_SM, QUERY_SM_RESP, DATA_SM, ALERT_NOTIFICATION)  # data_sm: encode only
}


def _smpplib_accepts(kind: str, size: int, value: bytes) -> bool:
    if kind == "i":
        return len(value) == size  # any other length desynchronises smpplib's TLV walk
    if kind == "s":
        return len(value) >= 1  # it strips the last octet as the NUL
    if kind == "f":
        return not value  # it does not advance past a flag's value
    return True


def _decode_via_smpplib(f: bytes, status: int, cid: int, seq: int) -> Any:
    """Validate the mandatory part and TLV stream ourselves, then let smpplib parse a cleaned copy.

    smpplib's traps: a TLV it does not know (or knows but does not list for this command) is
    skipped with a warning or raises KeyError; an integer TLV of unexpected length silently
    misparses every TLV after it; an unterminated string is read past its end. So smpplib only
    sees TLVs it will parse correctly, and the full raw list is attached as ``.tlvs``.
    """
    spec = _SMPPLIB[cid]
    n = len(f)
    p = 16
    ints: dict[str, int] = {}
    if not (n == 16 and status):
        for field, kind, arg in spec.mandatory:
            if kind == "s":
                _, p = _dcs(f, p, arg, field)
            elif kind == "i":
                if p + arg > n:
                    raise PduError(ESME_RINVCMDLEN, f"the PDU ends inside {field}")
                ints[field] = int.from_bytes(f[p : p + arg], "big")
                p += arg
            else:
                ln = ints.get(arg, 0)
                if p + ln > n:
                    raise PduError(ESME_RINVMSGLEN, f"{arg} {ln} exceeds the {n - p} octets left")
                p += ln
    if p < n and not spec.tlvs:
        raise PduError(ESME_RINVCMDLEN, f"{n - p} octets follow the last field")
    raw = _decode_tlvs(f, p, n) if p < n else ()
    kept = [
        (tag, v)
        for tag, v in raw
        if (k := spec.tlvs.get(tag)) is not None and _smpplib_accepts(k[0], k[1], v)
    ]
    clean = f[16:p] + _encode_tlvs(kept) if len(kept) != len(raw) else f[16:]
    frame = _HDR.pack(16 + len(clean), cid, status, seq) + clean
    try:
        cmd = _sl_smpp.parse_pdu(frame, sequence=seq, allow_unknown_opt_params=True)
    except Exception as e:  # smpplib raises anything from KeyError to struct.error
        raise PduError(ESME_RSYSERR, f"smpplib could not parse {spec.name}: {e!r}") from None
    cmd.tlvs = raw
    return cmd


def make_command(name: str, **fields: Any) -> Any:
    """An ``smpplib.command`` object for a PDU off the hot path, e.g. ``make_command("query_sm",
    message_id="ab12", source_addr="SENDER")``; pass it as ``Pdu.body``.

    Works around smpplib needing a client for sequence numbers: ``encode`` sets the sequence.
    """
    cmd = _sl_smpp.make_pdu(name, sequence=0, allow_unknown_opt_params=True, **fields)
    for key, value in fields.items():  # bind_* constructors overwrite interface_version
        setattr(cmd, key, value)
    return cmd


def _encode_smpplib(cid: int, status: int, seq: int, cmd: Any) -> bytes:
    name = COMMAND_NAMES.get(cid)
    if cmd.command != name:
        raise EncodeError(
            "body", f"an smpplib {cmd.command} object cannot be sent as {command_name(cid)}"
        )
    cmd.sequence = seq
    cmd.status = status
    try:
        data: bytes = cmd.generate()
    except Exception as e:
        raise EncodeError("body", f"smpplib could not encode {name}: {e!r}") from None
    return data


# --- public encode / decode -----------------------------------------------------------------------
_DECODERS: Final[dict[int, Any]] = {
    SUBMIT_SM: _decode_sm,
    DELIVER_SM: _decode_sm,
    SUBMIT_SM_RESP: _decode_msgid,
    DELIVER_SM_RESP: _decode_msgid,
    DATA_SM_RESP: _decode_msgid,
    DATA_SM: _decode_data_sm,
    **dict.fromkeys(BIND_COMMANDS, _decode_bind),
    **dict.fromkeys(BIND_RESP_COMMANDS, _decode_bind_resp),
    **dict.fromkeys(_HEADER_ONLY, _decode_empty),
    **dict.fromkeys(_RAW, _decode_raw),
}

_BODY_TYPES: Final[dict[type, tuple[frozenset[int], Any]]] = {
    ShortMessage: (frozenset({SUBMIT_SM, DELIVER_SM}), _encode_sm),
    DataSm: (frozenset({DATA_SM}), _encode_data_sm),
    MessageIdResp: (frozenset({SUBMIT_SM_RESP, DELIVER_SM_RESP, DATA_SM_RESP}), _encode_msgid),
    Bind: (BIND_COMMANDS, _encode_bind),
    BindResp: (BIND_RESP_COMMANDS, _encode_bind_resp),
}


def encode(pdu: Pdu) -> bytes:
    """Full PDU bytes, header included. Raises EncodeError naming the field it refuses."""
    cid = pdu.command_id
    body = pdu.body
    if body is None:
        if cid not in _HEADER_ONLY and not (cid & RESP_BIT and cid in COMMAND_NAMES):
            raise EncodeError("body", f"{command_name(cid)} needs a body")
        b = b""
    else:
        kind = _BODY_TYPES.get(type(body))
        if kind is not None:
            if cid not in kind[0]:
                raise EncodeError(
                    "body", f"a {type(body).__name__} cannot be sent as {command_name(cid)}"
                )
            b = kind[1](body)
        elif isinstance(body, bytes | bytearray | memoryview):
            b = bytes(body)
        elif isinstance(body, _sl_command.Command):
            data = _encode_smpplib(cid, pdu.status, pdu.seq, body)
            if len(data) > MAX_PDU:
                raise EncodeError("body", f"{len(data)} octets exceed the PDU maximum {MAX_PDU}")
            return data
        else:
            raise EncodeError("body", f"cannot encode a {type(body).__name__}")
    length = 16 + len(b)
    if length > MAX_PDU:
        raise EncodeError("body", f"{length} octets exceed the PDU maximum {MAX_PDU}")
    try:
        return _HDR.pack(length, cid, pdu.status, pdu.seq) + b
    except StructError:
        raise EncodeError(
            "header", "command_id, command_status and seq must be ints in 0..0xFFFFFFFF"
        ) from None


def decode(frame: bytes) -> Pdu:
    """Decode one complete frame (as ``Framer.feed`` yields it). Raises PduError, never else."""
    return Pdu(*decode_fields(frame))


def decode_fields(frame: bytes) -> tuple[int, int, int, Any]:
    """``decode``'s Pdu as its four fields (command_id, status, seq, body), not built: the
    session reads every PDU it receives once (two a part sent: its submit_sm_resp and its
    receipt), and a Pdu was ~1.9 k instructions of each (session 57). The same errors."""
    f = frame if type(frame) is bytes else bytes(frame)
    n = len(f)
    if n < 16:
        raise PduError(ESME_RINVCMDLEN, f"a {n}-octet frame is shorter than the 16-octet header")
    length, cid, status, seq = _HDR.unpack_from(f)
    if length != n:
        raise PduError(
            ESME_RINVCMDLEN, f"command_length {length} does not match the {n}-octet frame", cid, seq
        )
    try:
        handler = _DECODERS.get(cid)
        if handler is not None:
            body = handler(f, status)
        elif cid in _SMPPLIB:
            body = _decode_via_smpplib(f, status, cid, seq)
        else:
            raise PduError(ESME_RINVCMDID, f"unknown command_id 0x{cid:08X}")
    except PduError as e:
        e.command_id = cid
        e.seq = seq
        raise
    except (IndexError, StructError):
        raise PduError(
            ESME_RINVCMDLEN, f"the {command_name(cid)} body is truncated", cid, seq
        ) from None
    return cid, status, seq, body


# --- salvage --------------------------------------------------------------------------------------
_RECEIPT_ID_RE: Final = re.compile(rb"(?i)\bid:\s*[0-9a-z]")
_RECEIPT_TEXT_RE: Final = re.compile(rb"(?i)\bid:\s*[0-9a-z][^\x00]*")

_SM_LAYOUT: Final = (
    ("service_type", "s"),
    ("source_addr_ton", "i"),
    ("source_addr_npi", "i"),
    ("source_addr", "s"),
    ("dest_addr_ton", "i"),
    ("dest_addr_npi", "i"),
    ("destination_addr", "s"),
    ("esm_class", "i"),
    ("protocol_id", "i"),
    ("priority_flag", "i"),
    ("schedule_delivery_time", "s"),
    ("validity_period", "s"),
    ("registered_delivery", "i"),
    ("replace_if_present_flag", "i"),
    ("data_coding", "i"),
    ("sm_default_msg_id", "i"),
)


def _lenient_walk(f: bytes, layout: tuple[tuple[str, str], ...], out: dict[str, Any]) -> int | None:
    """Read `layout`'s fields of a body into `out` ignoring length limits: the offset after the
    last, or None when the body ends first (`out` keeps the fields read until then)."""
    n = len(f)
    p = 16
    for field, kind in layout:
        if kind == "s":
            i = f.find(0, p)
            if i < 0:
                return None
            out[field] = f[p:i].decode("latin-1")
            p = i + 1
        else:
            if p >= n:
                return None
            out[field] = f[p]
            p += 1
    return p


def _lenient_tlvs(f: bytes, p: int) -> Tlvs:
    """The TLVs from offset `p` up to the first broken one."""
    n = len(f)
    tlvs = []
    while p + 4 <= n:
        tag, ln = _TLVH.unpack_from(f, p)
        if p + 4 + ln > n:
            break
        tlvs.append((tag, f[p + 4 : p + 4 + ln]))
        p += 4 + ln
    return tuple(tlvs)


def _lenient_sm_fields(f: bytes) -> dict[str, Any]:
    """Walk a deliver_sm body ignoring length limits; stop at the first field that is not there."""
    out: dict[str, Any] = {}
    p = _lenient_walk(f, _SM_LAYOUT, out)
    if p is None or p >= len(f):
        return out
    e = min(p + 1 + f[p], len(f))
    out["short_message"] = f[p + 1 : e]
    out["tlvs"] = _lenient_tlvs(f, e)
    return out


def salvage_deliver_sm(frame: bytes) -> ShortMessage | None:
    """Recover a delivery receipt from a deliver_sm that ``decode`` refuses, or None.

    Lets the session answer deliver_sm_resp (the receipt is applied) instead of generic_nack (the
    SMSC resends a receipt we will never be able to parse). Fields are read ignoring length limits;
    fields past the point where the body breaks keep their defaults. Returns a ShortMessage only
    when a receipt is recognisable: a receipted_message_id TLV or receipt text (``id:...``); when
    the walk broke before short_message, the text is taken from the raw body and esm_class, if not
    reached, is set to the receipt type. A frame ``decode`` accepts is returned as decoded.
    """
    f = frame if type(frame) is bytes else bytes(frame)
    if len(f) < 16 or _U32.unpack_from(f, 4)[0] != DELIVER_SM:
        return None
    try:
        body = decode(f).body
        if isinstance(body, ShortMessage):
            return body
    except PduError:
        pass
    fields = _lenient_sm_fields(f)
    sm: bytes = fields.get("short_message", b"")
    tlvs: Tlvs = fields.get("tlvs", ())
    if tlv_get(tlvs, RECEIPTED_MESSAGE_ID) is None and not _RECEIPT_ID_RE.search(sm):
        m = _RECEIPT_TEXT_RE.search(f, 16)
        if m is None:
            return None
        fields["short_message"] = m.group(0)
        fields.setdefault("esm_class", ESM_DELIVERY_RECEIPT)
    return ShortMessage(**fields)


_DATA_SM_LAYOUT: Final = (
    ("service_type", "s"),
    ("source_addr_ton", "i"),
    ("source_addr_npi", "i"),
    ("source_addr", "s"),
    ("dest_addr_ton", "i"),
    ("dest_addr_npi", "i"),
    ("destination_addr", "s"),
    ("esm_class", "i"),
    ("registered_delivery", "i"),
    ("data_coding", "i"),
)


def salvage_data_sm(frame: bytes) -> DataSm | None:
    """Recover a delivery receipt from a data_sm that ``decode`` refuses, or None.

    The data_sm twin of ``salvage_deliver_sm``: fields are read ignoring length limits, TLVs up to
    the first broken one. A data_sm receipt is its TLVs, so one is recognised only by a
    receipted_message_id found before the break. A frame that decodes is returned as decoded.
    """
    f = frame if type(frame) is bytes else bytes(frame)
    if len(f) < 16 or f[4:8] != _DATA_SM_ID:
        return None
    try:
        body = decode(f).body
        if isinstance(body, DataSm):
            return body
    except PduError:
        pass
    fields: dict[str, Any] = {}
    p = _lenient_walk(f, _DATA_SM_LAYOUT, fields)
    if p is None:
        return None
    tlvs = _lenient_tlvs(f, p)
    if tlv_get(tlvs, RECEIPTED_MESSAGE_ID) is None:
        return None
    return DataSm(**fields, tlvs=tlvs)
