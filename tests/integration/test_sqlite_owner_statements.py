"""The owner's statements on SQLite keep one text whatever a batch's count (session 53).

The sqlite3 module keeps a connection's last 128 prepared statements by their SQL text. The
owner's claim, submit results and receipts listed their messages as `IN (?,?,...)`, a text per
count, and a daemon's counts vary (a claim takes the binds' free window slots, 1 to 500; a
batch of results or receipts whatever came meanwhile): ~300 texts in `bench_owner.py --vary`,
each prepared again nearly every time it ran. The hot ones now pass their ids as one JSON
array (`sqlite_pipeline.json_ids`, `json_each`), the rarer ones pad their list to a few lengths
(`in_list`). These tests run claims of every count from 1 to 16 through a real SQLite file,
record the texts the store's connection runs, and check the messages end as before; and that
carriers' ids a JSON array must escape, or cannot carry, still match their parts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.store.models import AcceptBatch, Account, DncInfo, ReceiptIn, SubmitResult
from bridge.store.sqlite import SqliteStore
from tests.messages import one_part

NOW = 1_700_000_000_000
LEASE = 60_000


class _Recording(sqlite3.Connection):
    texts: list[str]

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        self.texts.append(sql)
        return super().execute(sql, *args)

    def executemany(self, sql: str, *args: Any) -> sqlite3.Cursor:  # type: ignore[override]
        self.texts.append(sql)
        return super().executemany(sql, *args)


@pytest.fixture
def texts(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The SQL text of every statement the store's connections run, as prepared."""
    seen: list[str] = []
    real = sqlite3.connect

    def connect(*args: Any, **kw: Any) -> sqlite3.Connection:
        conn = real(*args, factory=_Recording, **kw)
        conn.texts = seen
        return conn

    monkeypatch.setattr(sqlite3, "connect", connect)
    yield seen


def _sent(mid: str, smsc_id: str, at: int) -> SubmitResult:
    return SubmitResult(mid, 1, "sent", "smsc1", smsc_id, smsc_id, at=at, sent_at=at)


def _delivered(smsc_id: str, at: int) -> ReceiptIn:
    return ReceiptIn("smsc1", smsc_id, "delivered", "DELIVRD", None, at, at)


async def _store(path: Path, n: int) -> SqliteStore:
    store = SqliteStore(path)
    await store.open()
    await store.create_account(Account(id="acc", name="acc", created_at=NOW, updated_at=NOW))
    for k in range(n):
        msg = one_part(f"msg_{k:04d}", "acc", f"+4479{k:08d}", NOW, sender="1069")
        await store.accept(AcceptBatch("acc", (msg,), None, None), NOW)
    return store


@pytest.mark.parametrize("dnc", [False, True])
async def test_a_claims_count_does_not_make_a_statement_text_of_its_own(
    tmp_path: Path, texts: list[str], dnc: bool
) -> None:
    """`dnc`: with a do-not-contact list loaded, each claim also reads its messages' numbers
    and looks their prefixes up (sqlite_dnc.guard), 12 a number: two more lists of ids."""
    counts = list(range(1, 17))  # 136 messages, a claim of each count
    store = await _store(tmp_path / "bridge.db", sum(counts))
    try:
        if dnc:  # a number none of them is sent to
            await store.import_dnc(DncInfo("l1", "l1", None, 1, 0, NOW), ["+8613500000001"], [])
        texts.clear()
        at = NOW + 2_000
        ids: list[str] = []
        for n in counts:
            work = await store.claim("i1", n, NOW + 1_000, LEASE)
            assert len(work) == n
            ids += [w.id for w in work]
            await store.record_submits(
                [_sent(w.id, f"x{w.id}", at) for w in work],
                [],
                at,
            )
            out = await store.apply_receipts(
                [_delivered(f"x{w.id}", at) for w in work],
                at,
            )
            assert (out.matched, out.pending) == (n, 0)
        assert len(set(ids)) == sum(counts)
        # 16 counts: the lists' texts were ~6 a count (claim 3, results 2, receipts 2) before,
        # 111 texts in all (with the list, 143); now one a statement, or one per padded length
        # (in_list): 21 (34).
        distinct = set(texts)
        assert len(distinct) <= (40 if dnc else 25), sorted(distinct)
        if not dnc:  # no list of ids in the statement at all
            assert not [t for t in distinct if "?,?,?,?,?,?,?,?,?,?,?,?,?" in t]
        assert await store.claim("i1", 10, NOW + 1_000, LEASE) == []
        for mid in ids:
            status = await store.get_message("acc", mid)
            assert status is not None and status.state == "delivered", (mid, status)
    finally:
        await store.close()


@pytest.mark.parametrize(
    "smsc_id",
    ['a"b', "back\\slash", "caf\u00e9", "tab\there", "nul\x00in", "[1,2]", "x" * 80],
)
async def test_any_carrier_id_still_matches_its_part(tmp_path: Path, smsc_id: str) -> None:
    """A JSON array escapes the quote, the backslash and the control characters; an id with a
    NUL or not printable ASCII goes to an `IN` list (sqlite_pipeline._match)."""
    store = await _store(tmp_path / "bridge.db", 3)
    try:
        work = await store.claim("i1", 3, NOW + 1_000, LEASE)
        assert len(work) == 3
        at = NOW + 2_000
        sid = {w.id: f"{smsc_id}{k}" for k, w in enumerate(work)}
        await store.record_submits(
            [_sent(w.id, sid[w.id], at) for w in work],
            [],
            at,
        )
        out = await store.apply_receipts(
            [_delivered(sid[w.id], at) for w in work] + [_delivered(f"{smsc_id}9", at)],
            at,
        )
        assert (out.matched, out.pending) == (3, 1)
        for w in work:
            status = await store.get_message("acc", w.id)
            assert status is not None and status.state == "delivered"
    finally:
        await store.close()
