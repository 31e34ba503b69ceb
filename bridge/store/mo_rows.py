"""Column lists and row mappers of the MO tables, shared by both engines (their SELECTs name the
same columns in the same order; only the SQL around them differs)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from bridge.store.models import MoMessage, MoPart

# set_no: which message kept under one reference the part belongs to (bridge.domain.mo_sets),
# part of the key (smsc, source, destination, ref, set_no, seq). lang_locking, lang_single: the
# national language tables its UDH named (bridge.text.national), 0 for the default ones.
MO_PART_COLS = (
    "smsc, source, destination, ref, total, seq, data_coding, payload, received_at, source_ton, "
    "set_no, lang_locking, lang_single"
)
MO_COLS = (
    "id, account_id, smsc, source, destination, text, received_at, sign_name, parts_total, "
    "parts_received, text_hex"
)


def mo_part(row: Any) -> MoPart:
    """A row of MO_PART_COLS (a sqlite3 tuple or an asyncpg Record)."""
    r = list(row)
    r[7] = bytes(r[7])  # the payload
    return MoPart(*r)


def mo_message(row: Any) -> MoMessage:
    """A row of MO_COLS."""
    r = list(row)
    r[9], r[10] = seqs_from_json(r[9]), bool(r[10])
    return MoMessage(*r)


def mo_part_values(part: MoPart) -> tuple[Any, ...]:
    """The values of MO_PART_COLS for an insert, in that order."""
    return (
        part.smsc,
        part.source,
        part.destination,
        part.ref,
        part.total,
        part.seq,
        part.data_coding,
        part.payload,
        part.received_at,
        part.source_ton,
        part.set_no,
        part.locking,
        part.single,
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
        mo.text_hex,
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
