"""Build the submit_sm bodies of a stored message for one SMSC, and classify outcomes (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from bridge.config import SmscConfig
from bridge.smpp.codec import OCTET, ShortMessage, plain_sm_head
from bridge.smpp.tlvpack import unpack_tlvs
from bridge.store.models import WorkMessage


def smpp_absolute_time(ms: int) -> str:
    """SMPP 3.4 absolute time in UTC: YYMMDDhhmmsstnnp with offset 00 '+'."""
    dt = datetime.fromtimestamp(ms / 1000, UTC)
    return dt.strftime("%y%m%d%H%M%S") + f"{dt.microsecond // 100000}00+"


def smpp_relative_time(minutes: int) -> str:
    """SMPP 3.4 relative time: YYMMDDhhmmss000R."""
    days, rem = divmod(minutes, 1440)
    hours, mins = divmod(rem, 60)
    years, days = divmod(days, 365)
    months, days = divmod(days, 30)
    return f"{years:02d}{months:02d}{days:02d}{hours:02d}{mins:02d}00000R"


def source_address(sender: str | None, smsc: SmscConfig) -> tuple[int, int, str]:
    """(TON, NPI, address): alphanumeric senders are TON 5; numbers keep the SMSC's TON/NPI."""
    value = sender or smsc.default_source
    if value.startswith("+") and value[1:].isdigit():
        return 1, 1, value[1:]
    if value.isdigit():
        return smsc.source_ton if smsc.source_ton != 5 else 0, smsc.source_npi, value
    return 5, 0, value


def build_parts(msg: WorkMessage, smsc: SmscConfig) -> list[ShortMessage]:
    ton, npi, source = source_address(msg.sender, smsc)
    dest = msg.recipient[1:] if msg.recipient.startswith("+") else msg.recipient
    if msg.expires_at is not None:
        validity = smpp_absolute_time(msg.expires_at)
    elif smsc.validity_minutes:
        validity = smpp_relative_time(smsc.validity_minutes)
    else:
        validity = ""
    # What the parts share is looked up once; each part is built positionally (ShortMessage's
    # field order, as the codec's decoder does), its TLVs unpacked only when it has some (UDH
    # parts store none): a 3-part message's parts cost about half (3.5 -> 1.8 us).
    service_type = smsc.service_type
    dest_ton, dest_npi = smsc.dest_ton, smsc.dest_npi
    priority, receipts, coding = smsc.priority, smsc.registered_delivery, msg.data_coding
    return [
        ShortMessage(
            service_type,
            ton,
            npi,
            source,
            dest_ton,
            dest_npi,
            dest,
            seg.esm_class,
            0,  # protocol_id
            priority,
            "",  # schedule_delivery_time
            validity,
            receipts,
            0,  # replace_if_present_flag
            coding,
            0,  # sm_default_msg_id
            seg.short_message,
            unpack_tlvs(seg.tlvs) if seg.tlvs else (),
        )
        for seg in msg.segments
    ]


# A message's submit_sm head (`plain_sm_head`) in two pieces around its destination address,
# kept per sender, SMSC object, first esm_class and data_coding (submit_bodies): the sender's
# address, the SMSC's fields and the validity are the same message after message, the recipient
# is the message's own. None: a head the plain path refuses whatever the recipient. Emptied when
# it holds _HEADS_MAX (a sender per message would otherwise grow it without end). The SMSC
# object, the esm_class and the data_coding are kept in the value and compared by identity: a
# reload's new SMSC is another key, and a key's `==` takes 1.0 or True for 1, which the plain
# path refuses or writes otherwise (session 61's review, r4: a float's head was the int's).
_Head = tuple[SmscConfig, Any, Any, bytes, bytes] | tuple[SmscConfig, Any, Any, None, None]
_HEADS: dict[tuple[Any, ...], _Head] = {}
_HEADS_MAX = 4096


def _head_ends(key: tuple[Any, ...], msg: WorkMessage, smsc: SmscConfig, esm: int) -> _Head:
    """The head's octets before the destination address and from its NUL on, written by
    `plain_sm_head` itself with an empty destination (the address is one field of it: the
    head with the recipient's is the two pieces around its octets), and kept in `_HEADS`."""
    ton, npi, source = source_address(msg.sender, smsc)
    st = smsc.service_type
    head = plain_sm_head(
        st, ton, npi, source, smsc.dest_ton, smsc.dest_npi, "", esm, 0, smsc.priority, "",
        smpp_relative_time(smsc.validity_minutes) if smsc.validity_minutes else "",
        smsc.registered_delivery, 0, msg.data_coding, 0,
    )  # fmt: skip
    got: _Head
    if head is None:
        got = (smsc, esm, msg.data_coding, None, None)
    else:
        # service_type, its NUL, two octets, source_addr, its NUL, two octets: one octet a
        # character (latin-1, which plain_sm_head has encoded them in).
        cut = len(st) + len(source) + 6
        got = (smsc, esm, msg.data_coding, head[:cut], head[cut:])
    if len(_HEADS) >= _HEADS_MAX:
        _HEADS.clear()
    _HEADS[key] = got
    return got


def submit_bodies(msg: WorkMessage, smsc: SmscConfig) -> list[ShortMessage | bytes]:
    """`_submit_bodies`' bodies, the usual message's head from `_HEADS` (session 61, README
    note 27): its pieces around the destination address written once per sender and SMSC,
    where each message had its source address classified (`source_address`) and its head's
    21 fields checked, joined and encoded (`plain_sm_head`) again, ~7 k instructions. A message
    with a validity of its own (`expires_at`: its time is in the head), a recipient the plain
    path refuses, or a part it does not take (see `_submit_bodies`) is written by
    `_submit_bodies` as before: the same octets."""
    segs = msg.segments
    if not segs or msg.expires_at is not None:
        return _submit_bodies(msg, smsc)
    esm = segs[0].esm_class
    coding = msg.data_coding
    key = (msg.sender, id(smsc), esm, coding)
    try:
        got = _HEADS.get(key)
    except TypeError:  # a field not hashable (not an int): the plain path refuses it
        return _submit_bodies(msg, smsc)
    # By identity (ints up to 256 are one object each): an equal float or bool is not the int
    # whose head is kept.
    if got is None or got[0] is not smsc or got[1] is not esm or got[2] is not coding:
        got = _head_ends(key, msg, smsc, esm)
    start, end = got[3], got[4]
    recipient = msg.recipient
    dest = recipient[1:] if recipient.startswith("+") else recipient
    if start is None or end is None or len(dest) > 20 or "\0" in dest:
        return _submit_bodies(msg, smsc)
    try:
        head = start + dest.encode("latin-1") + end
    except (AttributeError, UnicodeEncodeError):  # not a str, or beyond latin-1
        return _submit_bodies(msg, smsc)
    out: list[ShortMessage | bytes] = []
    for seg in segs:
        sm = seg.short_message
        if seg.esm_class is esm and type(sm) is bytes and len(sm) <= 254 and not seg.tlvs:
            out.append(head + OCTET[len(sm)] + sm)
        else:
            return _submit_bodies(msg, smsc)
    return out


def _submit_bodies(msg: WorkMessage, smsc: SmscConfig) -> list[ShortMessage | bytes]:
    """`build_parts`' parts as the bodies their submit_sm carry (the session sends bytes as
    they are: `codec.encode_sm_request`): the fields the parts share written once a message
    (`codec.plain_sm_head`), each part's body that head, its sm_length octet and its
    short_message, where each part was a ShortMessage of 18 fields built (~1.9 k instructions)
    and written again whole by `codec._plain_sm` (~9 k) as it left (session 59, README note
    27). The same octets: a part the plain path would not write from its head alone (TLVs, a
    short_message not bytes or over 254 octets, an esm_class other than the first part's, a
    head refused) stays the ShortMessage `build_parts` makes, encoded (or refused, its
    EncodeError as its outcome) as it leaves, as before."""
    ton, npi, source = source_address(msg.sender, smsc)
    dest = msg.recipient[1:] if msg.recipient.startswith("+") else msg.recipient
    if msg.expires_at is not None:
        validity = smpp_absolute_time(msg.expires_at)
    elif smsc.validity_minutes:
        validity = smpp_relative_time(smsc.validity_minutes)
    else:
        validity = ""
    service_type = smsc.service_type
    dest_ton, dest_npi = smsc.dest_ton, smsc.dest_npi
    priority, receipts, coding = smsc.priority, smsc.registered_delivery, msg.data_coding
    segs = msg.segments
    esm = segs[0].esm_class if segs else 0
    head = plain_sm_head(
        service_type, ton, npi, source, dest_ton, dest_npi, dest, esm, 0, priority, "", validity,
        receipts, 0, coding, 0,
    )  # fmt: skip
    out: list[ShortMessage | bytes] = []
    for seg in segs:
        sm = seg.short_message
        # `is`: the same int object, as ints up to 256 are one each (an esm_class of 1.0 or
        # True, equal to 1, is not: the plain path refuses the one and writes the other).
        if (
            head is not None
            and seg.esm_class is esm
            and type(sm) is bytes
            and len(sm) <= 254
            and not seg.tlvs
        ):
            out.append(head + OCTET[len(sm)] + sm)
            continue
        out.append(
            ShortMessage(
                service_type,
                ton,
                npi,
                source,
                dest_ton,
                dest_npi,
                dest,
                seg.esm_class,
                0,  # protocol_id
                priority,
                "",  # schedule_delivery_time
                validity,
                receipts,
                0,  # replace_if_present_flag
                coding,
                0,  # sm_default_msg_id
                sm,
                unpack_tlvs(seg.tlvs) if seg.tlvs else (),
            )
        )
    return out


def retry_delay_ms(attempt: int) -> int:
    """Back-off for a message whose submit failed transiently: 5 s doubling to 10 min."""
    return min(5_000 * 2 ** max(0, attempt - 1), 600_000)
