"""Column lists and row mappers of the MO tables, shared by both engines (their SELECTs name the
same columns in the same order; only the SQL around them differs)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from bridge.store.models import MoMessage, MoPart

# mo_parts.ref holds the concatenation reference (16 bits at most: SMPP's SAR, UDH 16-bit) plus
# the part's set number times REF_SPAN (bridge.domain.mo_sets): the key (smsc, source,
# destination, ref, seq) then keeps two messages under one reference apart without a new
# column. Parts kept before this are set 0, as they were.
REF_SPAN = 1 << 16


def stored_ref(ref: int, set_no: int) -> int:
    """The mo_parts.ref value of a part of `ref` in set `set_no`."""
    return ref + set_no * REF_SPAN


# mo_parts.data_coding holds the part's data_coding (an octet: SMPP 5.2.19) plus, above it, the
# national language tables its UDH named (bridge.text.national): the locking shift's id times
# DC_SPAN and the single shift's times DC_SPAN**2 (ids are an octet too). Kept beside the coding
# without a new column, as ref keeps the set number; parts kept before this, or without those
# IEs, are the plain data_coding (tables 0, the default).
DC_SPAN = 1 << 8


def stored_data_coding(data_coding: int, locking: int, single: int) -> int:
    """The mo_parts.data_coding value of a part."""
    return data_coding + (locking + single * DC_SPAN) * DC_SPAN


def split_data_coding(value: int) -> tuple[int, int, int]:
    """(data_coding, locking, single) of a mo_parts.data_coding value."""
    return value % DC_SPAN, value // DC_SPAN % DC_SPAN, value // (DC_SPAN * DC_SPAN) % DC_SPAN


MO_PART_COLS = (
    "smsc, source, destination, ref, total, seq, data_coding, payload, received_at, source_ton"
)
MO_COLS = (
    "id, account_id, smsc, source, destination, text, received_at, sign_name, parts_total, "
    "parts_received"
)


def mo_part(row: Any) -> MoPart:
    """A row of MO_PART_COLS (a sqlite3 tuple or an asyncpg Record)."""
    r = tuple(row)
    ref, set_no = r[3] % REF_SPAN, r[3] // REF_SPAN
    dc, locking, single = split_data_coding(r[6])
    return MoPart(*r[:3], ref, r[4], r[5], dc, bytes(r[7]), r[8], r[9], set_no, locking, single)


def mo_message(row: Any) -> MoMessage:
    """A row of MO_COLS."""
    r = tuple(row)
    return MoMessage(*r[:9], seqs_from_json(r[9]))


def mo_part_values(part: MoPart) -> tuple[Any, ...]:
    """The values of MO_PART_COLS for an insert, in that order."""
    return (
        part.smsc,
        part.source,
        part.destination,
        stored_ref(part.ref, part.set_no),
        part.total,
        part.seq,
        stored_data_coding(part.data_coding, part.locking, part.single),
        part.payload,
        part.received_at,
        part.source_ton,
    )


def mo_values(mo: MoMessage) -> tuple[Any, ...]:
    """The values of MO_COLS for an insert, in that order."""
    return (
        mo.id,
        mo.account_id,
        mo.smsc,
        mo.source,
        mo.destination,
        mo.text,
        mo.received_at,
        mo.sign_name,
        mo.parts_total,
        seqs_json(mo.parts_received),
    )


def seqs_json(seqs: tuple[int, ...] | None) -> str | None:
    """parts_received as stored: a JSON list ("[1,3]"), readable by any client of the table."""
    return None if seqs is None else json.dumps(list(seqs), separators=(",", ":"))


def seqs_from_json(text: str | None) -> tuple[int, ...] | None:
    return None if text is None else tuple(int(x) for x in json.loads(text))


def group_mo_parts(parts: Iterable[MoPart]) -> list[list[MoPart]]:
    """Consecutive parts of one (smsc, source, destination, ref, set) into one list each; the
    input comes ordered by group, then seq."""
    out: list[list[MoPart]] = []
    key: tuple[str, str, str, int, int] | None = None
    for p in parts:
        k = (p.smsc, p.source, p.destination, p.ref, p.set_no)
        if k != key:
            out.append([])
            key = k
        out[-1].append(p)
    return out
