"""Encoding choice and splitting of a text into SMPP ``submit_sm`` parts.

Limits (payload per part, excluding the UDH):

===============  =========  ======  =========
mode             GSM-7      Latin-1 UCS-2
===============  =========  ======  =========
single part      160 sept.  140 o.  70 units
UDH8 / SAR       153 sept.  134 o.  67 units
UDH16            152 sept.  133 o.  66 units
===============  =========  ======  =========

Greedy fill; an escape pair (two septets) or a surrogate pair (two UTF-16 units) is never split, so
a part may end one septet/unit short. The first-fit greedy cut is also the minimal part count for a
sequence split into contiguous parts.
"""

from __future__ import annotations

import random
from codecs import utf_16_be_encode
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from enum import StrEnum

from bridge.fastinit import fast_init, maker
from bridge.text.gsm import ESC, GSM_CHARS, TextError, gsm_decode, gsm_septets, pack_septets
from bridge.text.smart import smart_map
from bridge.text.units import CountingRule, billable_units

__all__ = [
    "GSM_ONE_PART",
    "EncodeOptions",
    "EncodedMessage",
    "Encoding",
    "Part",
    "RefCounter",
    "SplitMode",
    "TextError",
    "choose_encoding",
    "encode_message",
    "one_gsm_part",
    "plain_gsm_options",
    "udh_ucs2_parts",
    "wire_code",
]

TAG_SAR_MSG_REF_NUM = 0x020C
TAG_SAR_TOTAL_SEGMENTS = 0x020E
TAG_SAR_SEGMENT_SEQNUM = 0x020F
TAG_MESSAGE_PAYLOAD = 0x0424
ESM_UDHI = 0x40
MAX_PAYLOAD_OCTETS = 65535  # message_payload length is a 16-bit field


class Encoding(StrEnum):
    GSM7 = "gsm7"
    UCS2 = "ucs2"
    LATIN1 = "latin1"


class SplitMode(StrEnum):
    UDH8 = "udh8"
    UDH16 = "udh16"
    SAR = "sar"
    PAYLOAD = "payload"


@fast_init
@dataclass(frozen=True, slots=True)
class EncodeOptions:
    split: SplitMode = SplitMode.UDH8
    gsm_data_coding: int = 0  # 0 (SMSC default) or 1 (IA5/ASCII) used for GSM-7 text
    allow_latin1: bool = False  # data_coding 3 when text is all Latin-1 but not all GSM
    packed_gsm: bool = False  # pack GSM septets (with UDH fill bits) instead of one per octet
    smart: bool = False  # apply smart_map first
    max_parts: int = 255

    def __post_init__(self) -> None:
        # Programming/config errors, not user input: the config loader validates with paths.
        if (
            type(self.split) is not SplitMode
        ):  # accept "udh8" etc.; the encoder compares by identity
            object.__setattr__(self, "split", SplitMode(self.split))
        if not 1 <= self.max_parts <= 255:  # UDH and SAR carry the total in one octet
            raise ValueError(f"max_parts: must be between 1 and 255, got {self.max_parts}")
        if self.gsm_data_coding not in (0, 1):
            raise ValueError(f"gsm_data_coding: must be 0 or 1, got {self.gsm_data_coding}")


# The members the encoder compares with, as module constants: on Python 3.11 a member read off
# its class (`SplitMode.PAYLOAD`) costs ~10 times a global's read (0.24 against 0.025 µs, ~1,000
# instructions), and an encoding made several such reads (a one-part GSM text 3, a 3-part UCS-2
# one about 10).
_GSM7, _UCS2, _LATIN1 = Encoding.GSM7, Encoding.UCS2, Encoding.LATIN1
_UDH8, _UDH16, _SAR, _PAYLOAD = SplitMode.UDH8, SplitMode.UDH16, SplitMode.SAR, SplitMode.PAYLOAD

_SPLIT_CODES = {SplitMode.UDH8: 0, SplitMode.UDH16: 1, SplitMode.SAR: 2, SplitMode.PAYLOAD: 3}


def wire_code(opts: EncodeOptions) -> int:
    """The wire options a message's parts are encoded for (split, packing, Latin-1, GSM
    data_coding), as a small number stored with the message (`messages.wire`): the dispatcher
    compares it with its route's options as it claims, so a message encoded under another
    configuration (an acceptor that had not reloaded yet) is encoded again before it leaves.
    Stable across processes and releases (not `hash`): the numbers are stored."""
    return (
        _SPLIT_CODES[opts.split] << 3
        | opts.packed_gsm << 2
        | opts.allow_latin1 << 1
        | opts.gsm_data_coding
    )


@fast_init
@dataclass(frozen=True, slots=True)
class Part:
    seq: int  # 1-based
    total: int
    short_message: bytes  # UDH + payload; b"" in PAYLOAD mode
    esm_class: int  # 0x40 (UDHI) when a UDH is present, else 0
    tlvs: tuple[tuple[int, bytes], ...]
    chars: int  # characters of the text in this part (a surrogate pair counts 1)
    size: int  # septets (GSM-7) or octets (UCS-2/Latin-1) of payload, excluding UDH


@fast_init
@dataclass(frozen=True, slots=True)
class EncodedMessage:
    text: str  # after smart mapping if applied
    encoding: Encoding
    data_coding: int  # 0/1 for GSM-7 per options, 8 UCS-2, 3 Latin-1
    parts: tuple[Part, ...]
    # The options it was encoded with: ucs2_chars depends on them (allow_latin1, and
    # gsm_data_coding 1, where GSM-7 is ASCII only). Not compared: the same parts are the same
    # message whatever made them (smart mapping that kept the text as given is the plain one).
    opts: EncodeOptions = field(compare=False)
    # Segments on the air interface when it differs from len(parts): in PAYLOAD mode the SMSC
    # splits the single PDU, and carriers count (and bill) those segments. 0 means len(parts).
    air_segments: int = 0

    @property
    def segments(self) -> int:
        return self.air_segments or len(self.parts)

    @property
    def ucs2_chars(self) -> tuple[str, ...]:
        """Distinct characters that forced UCS-2, in order of first appearance. Computed on
        demand: only the preview shows them, and a send would pay ~9 us for a CJK text."""
        if self.encoding is not Encoding.UCS2:
            return ()
        opts = self.opts
        return _forcing_chars(self.text, opts.allow_latin1, opts.gsm_data_coding == 1)


_DEFAULT_OPTIONS = EncodeOptions()
# Every message the long path encodes builds these, without entering the interpreter again for
# each (~1,500 instructions a value; fastinit.maker).
_new_part = maker(Part)
_new_encoded = maker(EncodedMessage)

# (single-part limit, per-part limit for UDH8/SAR, per-part limit for UDH16), in septets/octets.
_GSM_LIMITS = (160, 153, 152)
_LATIN1_LIMITS = (140, 134, 133)
_UCS2_LIMITS = (140, 134, 132)  # octets: 70 / 67 / 66 UTF-16 units
_LIMITS = {
    Encoding.GSM7: _GSM_LIMITS,
    Encoding.LATIN1: _LATIN1_LIMITS,
    Encoding.UCS2: _UCS2_LIMITS,
}
_UNIT_NAME = {
    Encoding.GSM7: "septets",
    Encoding.LATIN1: "octets",
    Encoding.UCS2: "UTF-16 units",
}


def _data_coding(encoding: Encoding, opts: EncodeOptions) -> int:
    if encoding is _GSM7:
        return opts.gsm_data_coding
    return 8 if encoding is _UCS2 else 3


def _is_latin1(text: str) -> bool:
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def choose_encoding(text: str, allow_latin1: bool = False) -> Encoding:
    if gsm_septets(text) is not None:
        return _GSM7
    if allow_latin1 and _is_latin1(text):
        return _LATIN1
    return _UCS2


def _forcing_chars(text: str, allow_latin1: bool, ia5: bool = False) -> tuple[str, ...]:
    """Characters that made UCS-2 necessary, for the preview ("remove these to stay GSM").

    GSM-7 is judged as `_encode` judges it: with ``ia5`` (data_coding 1, ASCII octets) a GSM
    letter outside ASCII (é, £, €) cannot go GSM-7 either, so it forced UCS-2 as much as a
    Chinese character did; tested against the GSM table alone, such a text named nothing.
    """
    bad = [c for c in dict.fromkeys(text) if c not in GSM_CHARS or (ia5 and not c.isascii())]
    if allow_latin1:
        # With Latin-1 allowed, a Latin-1 character did not force UCS-2 on its own; if every
        # offender is Latin-1 (a GSM-only + Latin-1-only mix), report the non-GSM ones.
        beyond = [c for c in bad if c > "\xff"]
        bad = beyond or bad
    return tuple(bad)


def _cut_gsm(data: bytes, per: int, full_cr: bool = False) -> list[bytes]:
    """``full_cr``: a full part must not end in CR (packed parts whose septets fill the last
    octet exactly: see `_pack`, such a CR costs a second one, an octet the part has no room for)."""
    chunks = []
    n = len(data)
    i = 0
    while i < n:
        j = i + per
        if j >= n:
            j = n
        elif data[j - 1] == ESC:  # would separate ESC from its code: leave the pair for later
            j -= 1
        if full_cr and j - i == per and _ends_in_cr(data[i:j]):
            j -= 1  # the CR opens the next part, where it has room
        chunks.append(data[i:j])
        i = j
    return chunks


def _ends_in_cr(septets: bytes) -> bool:
    """A final CR character (not the code 0x0D of an escape pair)."""
    return septets[-1:] == b"\r" and septets[-2:-1] != bytes((ESC,))


def _cut_ucs2(data: bytes, per_octets: int) -> list[bytes]:
    chunks = []
    n = len(data)
    i = 0
    while i < n:
        j = i + per_octets
        if j >= n:
            j = n
        elif 0xD8 <= data[j - 2] <= 0xDB:  # last unit is a high surrogate: keep the pair together
            j -= 2
        chunks.append(data[i:j])
        i = j
    return chunks


def _cut_plain(data: bytes, per: int) -> list[bytes]:
    # A loop, not a comprehension over a range: ~4,000 instructions for 3 parts, not ~6,600.
    chunks = []
    n = len(data)
    i = 0
    while i < n:
        chunks.append(data[i : i + per])
        i += per
    return chunks


def _too_long(
    size: int, encoding: Encoding, parts: int, per: int, max_parts: int, at_least: bool = False
) -> TextError:
    unit = _UNIT_NAME[encoding]
    if encoding is _UCS2:  # octets -> UTF-16 units, the figure people know (70/67)
        size //= 2
        per //= 2
    need = "at least " if at_least else ""
    return TextError(
        "MESSAGE_TOO_LONG",
        f"text: {size} {unit} ({encoding.value}) need {need}{parts} parts of at most {per} "
        f"{unit}; the limit is {max_parts} parts",
    )


def _resolve_text(text: str, opts: EncodeOptions) -> tuple[str, bytes | None]:
    """Apply smart mapping when asked and useful; return (text, GSM septets or None).

    The mapped text is kept only if it is GSM-7, or Latin-1 (when allowed) where the original
    needed UCS-2: the customer's characters are not changed for nothing.
    """
    septets = gsm_septets(text)
    if septets is None and opts.smart:
        mapped = smart_map(text)
        if mapped and mapped != text:
            mapped_septets = gsm_septets(mapped)
            if mapped_septets is not None:
                return mapped, mapped_septets
            if opts.allow_latin1 and not _is_latin1(text) and _is_latin1(mapped):
                return mapped, None
    return text, septets


def _check_ref(ref: int, bits: int) -> None:
    if not 0 <= ref < (1 << bits):
        raise ValueError(f"ref: must be between 0 and {(1 << bits) - 1}, got {ref}")


def encode_message(
    text: str, opts: EncodeOptions = _DEFAULT_OPTIONS, ref: int | Callable[[], int] = 0
) -> EncodedMessage:
    """Encode and split ``text`` into ``submit_sm`` parts.

    ``ref`` is the concatenation reference (from ``RefCounter``): 0..255 for UDH8, 0..65535 for
    UDH16 and SAR; unused for single-part and PAYLOAD messages. It may be a function that
    returns it: called (once) only when the message is cut into several parts, so a caller
    drawing from a per-destination counter spends a reference only on a message that carries
    one, known from the encoding itself rather than guessed from the text's length.

    Smart mapping is kept only if it costs no more: a mapping can lengthen the text ("…" becomes
    "..."), and 70 ellipses went from 1 part and 1 unit to 2 parts and 4 units for a customer
    who asked for it to save money. So the mapped text must need no more parts on the air and
    no more units under the domestic 70/67 character rule than the text as given.
    """
    if not opts.smart:
        return _encode(text, opts, ref)
    if not callable(ref):
        return _smart(text, opts, ref)
    if gsm_septets(text) is not None:  # nothing to map: one encoding, drawing as it cuts
        return _encode(text, opts, ref)
    # Two encodings are compared before one is kept, and a reference drawn for the one not kept
    # would be spent for nothing ("…" x 70 stays one part where "..." x 70 needs two): both are
    # made with a stand-in, and the one kept, if it has several parts, made again with a drawn one.
    kept = _smart(text, opts, 0)
    if len(kept.parts) == 1:
        return kept
    return _encode(text, opts if kept.text != text else replace(opts, smart=False), ref())


def _smart(text: str, opts: EncodeOptions, ref: int) -> EncodedMessage:
    """`text` encoded with smart mapping (`opts.smart`), kept only if it costs no more."""
    enc = _encode(text, opts, ref)
    if enc.text == text:
        return enc
    try:
        plain = _encode(text, replace(opts, smart=False), ref)
    except TextError:  # too long as given (UCS-2): only the mapping makes it fit
        return enc
    more_parts = len(enc.parts) > len(plain.parts)
    more_units = billable_units(enc.text, CountingRule.CHARS_70_67, 0) > billable_units(
        text, CountingRule.CHARS_70_67, 0
    )
    return plain if more_parts or more_units else enc


def _encode(text: str, opts: EncodeOptions, ref: int | Callable[[], int]) -> EncodedMessage:
    if not text:
        raise TextError("EMPTY_MESSAGE", "text: must not be empty")
    text, septets = _resolve_text(text, opts)
    # data_coding 1 is IA5/ASCII: the octets are ASCII (the SMSC converts them to GSM on the air,
    # so parts are still cut by septets), and a text with GSM letters outside ASCII (é, £, Ä)
    # cannot be sent so: it goes as Latin-1 or UCS-2. Labelled 1, GSM codes went out before:
    # "$" as 0x02, "_" as 0x11, "@" as a NUL.
    ia5 = opts.gsm_data_coding == 1
    if septets is not None and ia5 and not text.isascii():
        septets = None
    if septets is not None:
        encoding = _GSM7
        data = septets
        limits = _GSM_LIMITS
    elif opts.allow_latin1 and _is_latin1(text):
        encoding = _LATIN1
        data = text.encode("latin-1")
        limits = _LATIN1_LIMITS
    else:
        encoding = _UCS2
        try:
            # The codec's function, not str.encode("utf-16-be"): that looks the name up in the
            # codec registry each time (~2,400 instructions; session 57). The same bytes, and the
            # same UnicodeEncodeError for an unpaired surrogate.
            data = utf_16_be_encode(text)[0]
        except UnicodeEncodeError as exc:
            raise TextError(
                "UNENCODABLE",
                f"text: unpaired surrogate U+{ord(text[exc.start]):04X} at position {exc.start}",
            ) from None
        limits = _UCS2_LIMITS
    data_coding = _data_coding(encoding, opts)
    size = len(data)
    mode = opts.split
    ia5 = ia5 and encoding is _GSM7
    packed = opts.packed_gsm and encoding is _GSM7 and not ia5
    wire = _ia5 if ia5 else _pack if packed else _same

    # Fast path: fits one part (never a UDH or SAR TLVs on a single part). 160 packed septets
    # ending in CR do not: the CR must be doubled (see `_pack`), 141 octets.
    full_cr = packed and size == limits[0] and _ends_in_cr(data)
    if size <= limits[0] and mode is not _PAYLOAD and not full_cr:
        sm = wire(data)
        part = _new_part(1, 1, sm, 0, (), len(text), size)
        return _new_encoded(text, encoding, data_coding, (part,), opts)

    if mode is _PAYLOAD:
        return _payload_message(text, encoding, data_coding, data, wire, opts)
    per = limits[2] if mode is _UDH16 else limits[1]
    if size > opts.max_parts * per:
        # Cannot fit even without escape/surrogate pairs: refuse before building thousands of parts.
        raise _too_long(size, encoding, -(-size // per), per, opts.max_parts, at_least=True)
    # A full packed part ending in CR overflows only where its septets end on an octet
    # boundary: UDH8 (48 + 1 fill + 153 x 7 bits) and UDH16 (56 + 152 x 7), not SAR (153 x 7).
    if packed and mode is not _SAR:
        chunks = _cut_gsm(data, per, full_cr=True)
    elif encoding is _UCS2 and size == 2 * len(text):
        # No character outside the BMP, so no surrogate pair to keep whole: `_cut_ucs2` would
        # cut where plain slices do, with a Python loop (session 57).
        chunks = _cut_plain(data, per)
    else:
        chunks = _cut(data, encoding, per)
    total = len(chunks)
    # Character count per part: only UCS-2 with surrogate pairs needs a decode.
    count = _CHAR_COUNTERS[encoding]
    if encoding is _UCS2 and size != 2 * len(text):
        count = _ucs2_chars
    if total > opts.max_parts:
        raise _too_long(size, encoding, total, per, opts.max_parts)

    if callable(ref):  # after every refusal: a refused text spends no reference
        ref = ref()
    parts = []
    if mode is _SAR:
        _check_ref(ref, 16)
        ref_tlv = (TAG_SAR_MSG_REF_NUM, ref.to_bytes(2, "big"))
        total_tlv = (TAG_SAR_TOTAL_SEGMENTS, bytes((total,)))
        for seq, chunk in enumerate(chunks, 1):
            tlvs = (ref_tlv, total_tlv, (TAG_SAR_SEGMENT_SEQNUM, bytes((seq,))))
            sm = wire(chunk)
            parts.append(_new_part(seq, total, sm, 0, tlvs, count(chunk), len(chunk)))
    else:
        if mode is _UDH16:
            _check_ref(ref, 16)
            head = bytes((6, 0x08, 4, ref >> 8, ref & 0xFF, total))
            fill = 0  # 7 octets = 56 bits = 8 septets exactly
        else:
            _check_ref(ref, 8)
            head = bytes((5, 0x00, 3, ref, total))
            fill = 1  # 6 octets = 48 bits; 1 fill bit reaches the 7-septet boundary
        for seq, chunk in enumerate(chunks, 1):
            # `_same` not called (a frame a part), the sequence's octet from a table, not
            # bytes() of a tuple made for it (session 57).
            body = _pack(chunk, fill) if packed else chunk if wire is _same else wire(chunk)
            sm = head + _OCTETS[seq] + body
            parts.append(_new_part(seq, total, sm, ESM_UDHI, (), count(chunk), len(chunk)))
    return _new_encoded(text, encoding, data_coding, tuple(parts), opts)


# The most septets of a single plain GSM-7 part (`one_gsm_part`).
GSM_ONE_PART = _GSM_LIMITS[0]


def plain_gsm_options(opts: EncodeOptions) -> bool:
    """Whether `one_gsm_part` may answer under `opts`: it answers None under any other. Under
    these its answer is `gsm_septets(text)` when that is 1 to GSM_ONE_PART septets, else None
    (`Submitter.build` asks per route once, then the septets itself: a frame less a message;
    tests/unit/test_session62_send_parse.py holds the two to `one_gsm_part`)."""
    return not (opts.packed_gsm or opts.gsm_data_coding or opts.split is _PAYLOAD)


def one_gsm_part(text: str, opts: EncodeOptions) -> bytes | None:
    """The short_message of the one part `encode_message(text, opts, ref)` makes of `text` when
    that part is plain GSM-7 (every character GSM, at most 160 septets, one per octet, data_coding
    0, no UDH or TLV, whatever `ref` and `opts.smart`: a GSM text is never mapped); None for any
    other text or options, which `encode_message` encodes. Why: nearly every send is such a
    part, and the whole encoding (its `Part` and `EncodedMessage`, the checks the other cases
    need) was ~16,000 instructions of an accept's ~630,000, this ~2,500."""
    if not plain_gsm_options(opts):
        return None
    septets = gsm_septets(text)
    if septets is None or not septets or len(septets) > GSM_ONE_PART:
        return None
    return septets


def udh_ucs2_parts(
    text: str, opts: EncodeOptions, refs: RefCounter, destination: str
) -> list[bytes] | None:
    """The short_messages of the parts `encode_message(text, opts, ref)` makes of `text` when
    they are several UCS-2 parts behind a UDH (UDH8 or UDH16 split, no character outside the
    BMP, nothing mapped or kept as Latin-1), the reference drawn from `refs` for `destination`
    as the send's drawing function (`refs.next(destination, 8 or 16)`) draws it, once; None,
    nothing drawn, for any other text or options (one part, GSM-7, Latin-1, a surrogate pair,
    SAR or message_payload, a refusal), which `encode_message` encodes. Why (session 60): a
    3-part UCS-2 send built three `Part`s and an `EncodedMessage` to read four of their fields
    once, through checks the other cases need (~30,000 instructions of the accept's ~870,000);
    its parts' octets are the UTF-16 octets sliced, each behind one head made once a message.
    """
    split = opts.split
    if split is _UDH8:
        per, bits = _UCS2_LIMITS[1], 8
    elif split is _UDH16:
        per, bits = _UCS2_LIMITS[2], 16
    else:
        return None
    if opts.smart:
        resolved, septets = _resolve_text(text, opts)
        if septets is not None or resolved is not text:  # GSM-7, or smart mapping kept
            return None
    elif gsm_septets(text) is not None:  # `_resolve_text` without smart mapping
        return None
    if opts.allow_latin1 and _is_latin1(text):
        return None
    try:
        data = utf_16_be_encode(text)[0]
    except UnicodeEncodeError:  # an unpaired surrogate: encode_message refuses it
        return None
    size = len(data)
    # One part, a surrogate pair to keep whole (`_cut_ucs2`), or too long: encode_message's.
    if size != 2 * len(text) or size <= _UCS2_LIMITS[0] or size > opts.max_parts * per:
        return None
    total = -(-size // per)  # `_cut_plain`'s count
    # A counter's reference is always within its bits (RefCounter.next): `_check_ref` passes.
    ref = refs.next(destination, bits)
    head = (
        bytes((5, 0x00, 3, ref, total))
        if bits == 8
        else bytes((6, 0x08, 4, ref >> 8, ref & 0xFF, total))
    )
    out = []
    i = 0
    seq = 1
    while i < size:
        out.append(head + _OCTETS[seq] + data[i : i + per])
        i += per
        seq += 1
    return out


def _cut(data: bytes, encoding: Encoding, per: int) -> list[bytes]:
    if encoding is _GSM7:
        return _cut_gsm(data, per)
    if encoding is _UCS2:
        return _cut_ucs2(data, per)
    return _cut_plain(data, per)


def _payload_message(
    text: str,
    encoding: Encoding,
    data_coding: int,
    data: bytes,
    wire: Callable[[bytes], bytes],
    opts: EncodeOptions,
) -> EncodedMessage:
    """One PDU with the whole text in message_payload; the SMSC does the splitting.

    ``air_segments`` records how many segments the SMSC will produce (UDH8 split), because that is
    what the carrier counts and bills.
    """
    payload = wire(data)
    if len(payload) > MAX_PAYLOAD_OCTETS:
        raise TextError(
            "MESSAGE_TOO_LONG",
            f"text: {len(payload)} octets exceed the message_payload limit of "
            f"{MAX_PAYLOAD_OCTETS} octets",
        )
    size = len(data)
    limits = _LIMITS[encoding]
    air = 1 if size <= limits[0] else len(_cut(data, encoding, limits[1]))
    if air > opts.max_parts:
        raise _too_long(size, encoding, air, limits[1], opts.max_parts)
    part = _new_part(1, 1, b"", 0, ((TAG_MESSAGE_PAYLOAD, payload),), len(text), size)
    return _new_encoded(text, encoding, data_coding, (part,), opts, air)


def _same(data: bytes) -> bytes:
    return data


_OCTETS = tuple(bytes((i,)) for i in range(256))  # _OCTETS[n] == bytes((n,))


def _ia5(septets: bytes) -> bytes:
    """GSM septets of an ASCII text as the ASCII octets data_coding 1 means."""
    return gsm_decode(septets).encode("ascii")


def _gsm_chars(chunk: bytes) -> int:
    return len(chunk) - chunk.count(ESC)


def _ucs2_bmp_chars(chunk: bytes) -> int:
    return len(chunk) >> 1


def _ucs2_chars(chunk: bytes) -> int:
    return len(chunk.decode("utf-16-be"))


_CHAR_COUNTERS = {Encoding.GSM7: _gsm_chars, Encoding.UCS2: _ucs2_bmp_chars, Encoding.LATIN1: len}


def _pack(septets: bytes, fill_bits: int = 0) -> bytes:
    """Pack, padding 7 spare trailing bits with CR, and doubling a wanted final CR that ends
    exactly on an octet boundary.

    Why: SMPP carries the packed length in octets, so an SMSC derives the septet count as
    floor(8 * octets / 7); with 7 spare bits that reads one extra septet, a visible '@' (0x00).
    TS 23.038 §6.1.2.3.1 fills that slot with CR, which displays as nothing (octet count
    unchanged). A receiver therefore drops a final CR whose septets fill the last octet exactly,
    so a CR the text wants there would be lost: the same clause adds a second one (and an
    octet; CR CR is defined to display as CR).
    """
    spare = (7 * len(septets) + fill_bits) % 8
    if spare == 1 or (spare == 0 and _ends_in_cr(septets)):
        septets += b"\r"
    return pack_septets(septets, fill_bits)


def _random_start() -> int:
    # The random module's generator: seeded from os.urandom per interpreter and reseeded in a
    # forked child; a syscall per new destination (os.urandom) cost more than the split.
    return random.getrandbits(16)


class RefCounter:
    """Concatenation references: one wrapping counter per destination, bounded memory.

    Why a counter and not random: a handset reassembles by (originator, reference); two messages in
    flight to the same number with the same reference get mixed. A per-destination counter only
    repeats after 256 (UDH8) or 65536 messages to that number. The least recently used destinations
    are forgotten beyond ``max_destinations``. A destination's counter starts at a random value
    (``start``), so two processes (a restart, another instance) are unlikely to hand the same
    number the same reference for messages in flight together.

    Acceptor processes of one daemon never do: each draws from its own ``lane`` of ``lanes``
    (the references r with r % lanes == lane), so two long messages to one number accepted at
    once by two workers cannot share a reference (with random starts alone, 1 in 256 pairs did).
    A lane repeats after 256 / lanes messages to a number (UDH8) instead of 256.
    """

    __slots__ = ("_counters", "_lane", "_lanes", "_max", "_start")

    def __init__(
        self,
        max_destinations: int = 100_000,
        start: Callable[[], int] | None = None,
        *,
        lane: int = 0,
        lanes: int = 1,
    ) -> None:
        if max_destinations < 1:
            raise ValueError(f"max_destinations: must be at least 1, got {max_destinations}")
        if not 1 <= lanes <= 256 or not 0 <= lane < lanes:
            raise ValueError(f"lane {lane} of {lanes}: need 0 <= lane < lanes <= 256")
        self._max = max_destinations
        self._counters: OrderedDict[str, int] = OrderedDict()
        self._start = start if start is not None else _random_start
        self._lane = lane
        self._lanes = lanes

    def next(self, destination: str, bits: int) -> int:
        if bits not in (8, 16):
            raise ValueError(f"bits: must be 8 or 16, got {bits}")
        counters = self._counters
        value = counters.get(destination)
        if value is None:
            value = self._start() & 0xFFFF
            if len(counters) >= self._max:
                counters.popitem(last=False)
        else:
            counters.move_to_end(destination)
        counters[destination] = value + 1  # unwrapped: a lane's modulus need not divide 2**16
        lanes = self._lanes
        if lanes == 1:
            return value & ((1 << bits) - 1)
        slots = ((1 << bits) - self._lane + lanes - 1) // lanes  # references in this lane
        return self._lane + lanes * (value % slots)

    def __len__(self) -> int:
        return len(self._counters)
