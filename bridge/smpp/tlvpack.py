"""Raw TLV lists <-> bytes, for storing a segment's TLVs in one column."""

from __future__ import annotations

import struct
from collections.abc import Iterable


def pack_tlvs(tlvs: Iterable[tuple[int, bytes]]) -> bytes:
    return b"".join(struct.pack(">HH", tag, len(value)) + value for tag, value in tlvs)


def unpack_tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    out = []
    pos = 0
    while pos + 4 <= len(data):
        tag, length = struct.unpack_from(">HH", data, pos)
        out.append((tag, bytes(data[pos + 4 : pos + 4 + length])))
        pos += 4 + length
    return tuple(out)
