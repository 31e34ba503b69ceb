"""The messages `bench_owner.py` and `bench_pg_owner.py` accept, then drive through the owner's
steps: one GSM part, or `parts` UCS-2 parts of 134 bytes (the 6-byte UDH first, as `bench.py`'s
ucs3).

Import it after the script has put `--tree` first on sys.path: it imports `bridge`, and the
checkout that import finds is the one the script measures (imported first, it would be the
`bridge` beside the scripts, whatever `--tree` said).
"""

from __future__ import annotations

from bridge.store.models import NewMessage, NewSegment

NOW = 1_700_000_000_000  # accepted_at of every message, the scripts' clock


def message(k: int, parts: int) -> NewMessage:
    """Message `k` of a run (ids and recipients from k), its `parts` segments."""
    mid = f"msg_b{k:012d}"
    if parts == 1:
        segments: tuple[NewSegment, ...] = (NewSegment(1, 1, 0, b"hello", b""),)
    else:
        segments = tuple(
            NewSegment(q, parts, 0x40, bytes((5, 0, 3, k % 256, parts, q)) + b"\x4f\x60" * 64, b"")
            for q in range(1, parts + 1)
        )
    return NewMessage(
        id=mid,
        account_id="acc",
        batch_id="b_" + mid,
        recipient=f"+86139{k:08d}",
        encoding="gsm7" if parts == 1 else "ucs2",
        data_coding=0 if parts == 1 else 8,
        billable_units=parts,
        segments=segments,
        accepted_at=NOW,
        text="hello" if parts == 1 else "\u4f60\u597d" * 32 * parts,
    )
