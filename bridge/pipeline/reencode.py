"""Waiting messages encoded again after a reload changed how their route encodes.

A message is encoded at acceptance for its route's first SMSC (its `split`, `packed_gsm`,
`allow_latin1`, `gsm_data_coding`). A reload that changes those options, or sends a route to
an SMSC configured otherwise, would leave the messages still waiting with bytes their SMSC now
reads differently: a Latin-1 text as data_coding 3 to an SMSC without Latin-1, unpacked septets
to one that now reads them packed (garbage on the handset). So the dispatcher, before its next
claim, encodes each waiting message of those routes again from its stored text and replaces its
parts when they differ (`Store.reencode`, only while the message was never tried).

Every message is stamped with the wire options its parts are for (`messages.wire`,
`text.split.wire_code`), at acceptance and by this pass: the dispatcher compares the stamp as it
claims, and encodes again there what the pass could not see (a send accepted by an acceptor
process that had not reloaded yet, after the pass had gone over the queue).

The price stays as accepted: the 202 stated it and the ledger holds it; a message's `segments`
(parts on the wire) follows the new encoding. A concatenation reference is kept when the
message had one (so encoding again is idempotent: another instance reading the new parts finds
nothing to change); a message that was one part and now needs several draws one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Mapping
from functools import partial
from typing import Any

from bridge.api.submit import encode_options
from bridge.config import SmscConfig
from bridge.smpp.router import Router
from bridge.smpp.tlvpack import pack_tlvs, unpack_tlvs
from bridge.store.base import Store
from bridge.store.models import NewSegment, Reencoding, WaitingText
from bridge.text.split import EncodeOptions, SplitMode, encode_message, wire_code

log = logging.getLogger("bridge.pipeline.reencode")

CHUNK = 500  # waiting messages read (and rewritten) per store call
_SAR_MSG_REF_NUM = 0x020C
_UDHI = 0x40


def stored_reference(parts: tuple[NewSegment, ...]) -> int | None:
    """The concatenation reference a message's stored parts carry (UDH 8- or 16-bit, or SAR),
    None for a single part or a payload."""
    if len(parts) < 2:
        return None
    first = parts[0]
    for tag, value in unpack_tlvs(first.tlvs):
        if tag == _SAR_MSG_REF_NUM and len(value) == 2:
            return int.from_bytes(value, "big")
    if not first.esm_class & _UDHI or not first.short_message:
        return None
    udh = first.short_message[1 : 1 + first.short_message[0]]
    i = 0
    while i + 2 <= len(udh):
        iei, ln = udh[i], udh[i + 1]
        value = udh[i + 2 : i + 2 + ln]
        if iei == 0x00 and ln == 3 and len(value) == 3:
            return value[0]
        if iei == 0x08 and ln == 4 and len(value) == 4:
            return (value[0] << 8) | value[1]
        i += 2 + ln
    return None


def reencoded(msg: WaitingText, opts: EncodeOptions, draw: Callable[[], int]) -> Reencoding | None:
    """`msg` encoded for `opts` (stamped with their wire_code), or None when its stored parts
    are already those bytes."""
    ref = stored_reference(msg.parts)
    fits = ref is not None and (opts.split is not SplitMode.UDH8 or ref <= 0xFF)
    enc = encode_message(msg.text, opts, ref if fits and ref is not None else draw)
    parts = tuple(
        NewSegment(p.seq, p.total, p.esm_class, p.short_message, pack_tlvs(p.tlvs))
        for p in enc.parts
    )
    if parts == msg.parts and enc.data_coding == msg.data_coding:
        return None
    return Reencoding(
        id=msg.id,
        was_data_coding=msg.data_coding,
        was_first=msg.parts[0].short_message if msg.parts else b"",
        encoding=str(enc.encoding),
        data_coding=enc.data_coding,
        segments=enc.segments,
        parts=parts,
        wire=wire_code(opts),
    )


async def reencode_waiting(
    store: Store,
    router: Router,
    options: Mapping[str, EncodeOptions],
    keys: Collection[str],
    draw: Callable[[str, int], int],
    now_ms: int,
) -> tuple[int, int]:
    """Encode again the waiting messages of routes `keys` (Router keys) for their route's first
    SMSC as configured now: (messages looked at, messages whose parts were replaced).

    Each message ends stamped with the wire options its parts are for (`messages.wire`), those
    found already right too: the dispatcher encodes again, as it claims, any message whose
    stamp is not its route's, and must not have to look at each of a backlog this pass did."""
    began = time.monotonic()
    seen = changed = 0
    after: tuple[Any, ...] | None = None
    wires = {name: wire_code(opts) for name, opts in options.items()}
    while True:
        rows, after = await store.waiting_texts(after, CHUNK)
        changes = []
        restamps = []
        for msg in rows:
            if router.route_key(msg.recipient) not in keys:
                continue
            candidates = router.candidates(msg.recipient)
            opts = options.get(candidates[0]) if candidates else None
            if opts is None:
                continue
            seen += 1
            wire = wires[candidates[0]]
            if msg.wire == wire:  # encoded for these options (accepted since the reload)
                continue
            bits = 8 if opts.split is SplitMode.UDH8 else 16
            change = reencoded(msg, opts, partial(draw, msg.recipient, bits))
            if change is not None:
                changes.append(change)
            else:
                restamps.append((msg.id, msg.wire, wire))
        if changes or restamps:
            changed += await store.reencode(changes, now_ms, restamps)
        if after is None:
            break
    log.info(
        "re-encoded waiting messages after a reload: %d of %d changed (%.1f s)",
        changed,
        seen,
        time.monotonic() - began,
        extra={"routes": sorted(keys)},
    )
    return seen, changed


def smsc_options(smscs: Mapping[str, SmscConfig]) -> dict[str, EncodeOptions]:
    """Each SMSC's wire options as a send encodes for it (no smart mapping: the stored text is
    the text as mapped at acceptance)."""
    return {name: encode_options(cfg, False) for name, cfg in smscs.items()}
