"""SQLite: a send's segments without TLVs have the empty blob in the statement's text (session 62).

A segment's TLVs are empty but for a message with optional parameters of its own (SAR, a
payload: `pipeline.reencode` packs them); the accept bound the empty bytes of each one (a
bytearray made and bound, ~0.7 k instructions a segment, half of it inside the write lock). Now a
send whose segments all have none is written by a statement with `X''` in place of that value,
which stores the same: a BLOB of no bytes. Held here on a real store: one-part and 3-part
sends with and without TLVs, and a two-recipient send with TLVs in one message only (bound,
every segment, as before), each segment's stored values and their types; and the statement a
send without TLVs runs (before: the bound one for every send).
"""

from __future__ import annotations

import sqlite3
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge.store.models import AcceptBatch, NewMessage, NewSegment  # noqa: E402
from bridge.store.sqlite import SqliteStore  # noqa: E402
from tests.integration.test_sqlite_accept_cursor import store as store  # noqa: E402
from tests.integration.test_store_rules import CN2, NOW, message  # noqa: E402


def _with_tlvs(m: NewMessage, tlvs: bytes) -> NewMessage:
    return replace(
        m,
        segments=tuple(
            NewSegment(s.seq, s.total, s.esm_class, s.short_message, tlvs) for s in m.segments
        ),
    )


class _Recording:
    """The runner's connection, recording the text of each statement its cursors run."""

    def __init__(self, conn: object, seen: list[str]) -> None:
        self._conn = conn
        self._seen = seen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def cursor(self) -> Any:
        return _RecordingCursor(self._conn.cursor(), self._seen)  # type: ignore[attr-defined]


class _RecordingCursor:
    def __init__(self, cur: Any, seen: list[str]) -> None:
        self._cur = cur
        self._seen = seen

    def __getattr__(self, name: str) -> Any:
        return getattr(self._cur, name)

    def execute(self, sql: str, *a: Any) -> Any:
        self._seen.append(sql)
        self._cur.execute(sql, *a)
        return self

    def executemany(self, sql: str, *a: Any) -> Any:
        self._seen.append(sql)
        self._cur.executemany(sql, *a)
        return self


def _rows(store: SqliteStore) -> list[tuple[object, ...]]:
    with sqlite3.connect(store._runner._path) as c:
        return c.execute(
            "SELECT message_id, seq, total, esm_class, typeof(short_message), "
            "hex(short_message), typeof(tlvs), hex(tlvs), length(tlvs) FROM segments "
            "ORDER BY message_id, seq"
        ).fetchall()


async def test_segments_store_the_same_tlvs_with_or_without_them(store: SqliteStore) -> None:
    seen: list[str] = []
    store._runner._conn = _Recording(store._runner._conn, seen)
    sar = bytes.fromhex("020c000201f4020e000103020f000101")
    sends = [
        (message("m1"),),
        (message("m3", parts=3),),
        (_with_tlvs(message("t1"), sar),),
        (_with_tlvs(message("t3", parts=3), sar),),
        (message("p1"), _with_tlvs(message("p2", CN2, parts=2), sar)),
        (message("q1"), message("q2", CN2, parts=2)),
    ]
    for msgs in sends:
        out = await store.accept(AcceptBatch("acc_a", msgs, None, None, 0), NOW)
        assert out.accepted
    store._runner._conn = store._runner._conn._conn
    inserts = [s for s in seen if s.startswith("INSERT INTO segments")]
    bare = [s for s in inserts if s.endswith("X'')")]
    # The three sends without TLVs (m1, m3, q1 + q2) by the text's empty blob (main: none);
    # the mixed one (p1 + p2) binds every segment's.
    assert (len(bare), len(inserts)) == (3, 6), inserts
    want = []
    for msgs in sends:
        for m in msgs:
            for s in m.segments:
                kind = "blob"
                want.append(
                    (m.id, s.seq, s.total, s.esm_class, kind, s.short_message.hex().upper(),
                     kind, s.tlvs.hex().upper(), len(s.tlvs))
                )  # fmt: skip
    assert _rows(store) == sorted(want)
