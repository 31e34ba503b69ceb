"""SQLite: the accepts' message, segment and ledger rows are written at their batch's end by
multi-row INSERTs (session 63, `bridge/store/sqlite_rows.py`).

A bare accept holds its rows in the runner's `held`; they are written in the accepts' order
before any other job, before the COMMIT and before an accept whose frequency history reads one of
their numbers, and a failure writing them reruns the batch with a savepoint a job, where each
accept writes its own. Held here over real SQLite files: a batch of many accepts with refusals
among them stores what the same sends store one batch each (every row, in the same rowid order);
a duplicate message id fails its own caller only; a failure of the held write (the database
locked) reruns the batch and charges each accept once; a full database leaves the books
balanced with every caller told what is on disk; a second send to a number under a frequency
rule in the same batch finds the first; and a top-up between accepts is written between their
rows.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from contextlib import closing
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge.domain import frequency as freq  # noqa: E402
from bridge.domain.admission import FrequencyRule  # noqa: E402
from bridge.domain.ledger import topup  # noqa: E402
from bridge.store import sqlite_rows  # noqa: E402
from bridge.store.base import is_unavailable  # noqa: E402
from bridge.store.models import AcceptBatch, AppKey, IdempotencyRecord  # noqa: E402
from bridge.store.sqlite import SqliteStore  # noqa: E402
from tests.integration.test_sqlite_accept_cursor import MIN  # noqa: E402
from tests.integration.test_store_rules import (  # noqa: E402
    CN,
    NOW,
    account,
    billed,
    message,
    sign,
)


async def _store(path: Path, cash: int = 1_000_000) -> SqliteStore:
    s = SqliteStore(path)
    await s.open()
    # Rows held in a batch of two jobs or more here (the daemon: eight), so that these batches
    # of a few calls hold them.
    s._runner.defer_min_jobs = 2
    await s.create_account(account())
    await sign(s)
    await sign(s, "Pending", "pending")
    await s.append_ledger("acc_a", topup(cash, NOW, "funds"))
    await s.add_key(AppKey("K1", "acc_a", b"sealed", "active", NOW), max_active=2)
    return s


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = await _store(tmp_path / "bridge.db")
    yield s
    await s.close()


def send(
    n: int,
    *,
    nonce: str | None = None,
    mid: str | None = None,
    parts: int = 1,
    to: str = CN,
    amount: int = 300,
    sign_name: str = "Acme",
    keyed: bool = True,
    frequency: FrequencyRule | None = None,
) -> AcceptBatch:
    """Send n: keyed (nonce n<n>, Idempotency-Key k<n>) or not, one message of `parts`."""
    m = message(mid or f"m{n}", to, parts=parts, sign=sign_name)
    rules = billed(m, amount=amount, sign_name=sign_name, frequency=frequency)
    return AcceptBatch(
        "acc_a",
        (m,),
        f"k{n}",
        IdempotencyRecord(f"hash-k{n}", 202, f'{{"batch_id":"{m.batch_id}"}}'.encode()),
        NOW + 24 * 60 * MIN,
        key_id="K1" if keyed else None,
        nonce=(nonce or f"n{n}") if keyed else None,
        nonce_expires_at=NOW + 10 * MIN,
        account_version=NOW,
        rules=rules,
    )


async def one_batch(store: SqliteStore, *jobs: Any) -> list[Any]:
    """The calls given, in one write batch of the runner; exceptions returned."""
    commits = store._runner.commits
    out = await asyncio.gather(*jobs, return_exceptions=True)
    assert store._runner.commits == commits + 1, "not one batch"
    return list(out)


def answer(out: Any) -> Any:
    if isinstance(out, BaseException):
        return type(out).__name__
    if out.accepted:
        return "accepted"
    return (out.auth_refusal, out.refusal and out.refusal.code, out.existing)


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The tables an accept writes, every column (the messages' rowid too: the queue's order),
    rows in their rowid or key order."""
    with closing(sqlite3.connect(path)) as db:
        return {
            "messages": db.execute("SELECT rowid, * FROM messages ORDER BY rowid").fetchall(),
            "segments": db.execute(
                "SELECT *, typeof(tlvs) FROM segments ORDER BY message_id, seq"
            ).fetchall(),
            "ledger": db.execute("SELECT * FROM ledger ORDER BY id").fetchall(),
            "pockets": db.execute("SELECT * FROM pockets ORDER BY 1, 2").fetchall(),
            "daily_counts": db.execute("SELECT * FROM daily_counts ORDER BY 1, 2").fetchall(),
            "nonces": db.execute("SELECT * FROM nonces ORDER BY 1, 2").fetchall(),
            "idempotency": db.execute("SELECT * FROM idempotency ORDER BY id").fetchall(),
        }


def _mixed() -> list[AcceptBatch]:
    """Nineteen sends (chunks of 16, 2 and 1 rows) of 1 to 3 parts, keyed and not, with
    refusals among them: a spent nonce, a pending sign, a replay of an Idempotency-Key."""
    sends = [send(n, parts=1 + n % 3, keyed=n % 4 != 1) for n in range(1, 20)]
    sends[4] = send(5, nonce="n2")  # n2 spent by the second
    sends[9] = send(10, sign_name="Pending")  # refused by the rules
    sends[13] = replace(send(14), idempotency_key="k3")  # a replay of the third
    return sends


async def test_a_batch_stores_what_its_sends_store_one_batch_each(tmp_path: Path) -> None:
    together = await _store(tmp_path / "together.db")
    alone = await _store(tmp_path / "alone.db")
    try:
        outs = await one_batch(together, *(together.accept(s, NOW) for s in _mixed()))
        each = [await alone.accept(s, NOW) for s in _mixed()]
        assert [answer(o) for o in outs] == [answer(o) for o in each]
        assert [answer(o) for o in outs].count("accepted") == 16
        # Held and written at the end: no rerun, one statement for the sixteen rows of each
        # 1-part ... run of one text.
        assert together._runner.reruns == 0
    finally:
        await together.close()
        await alone.close()
    got, want = dump(tmp_path / "together.db"), dump(tmp_path / "alone.db")
    assert got == want
    assert len(got["messages"]) == 16 and len(got["ledger"]) == 17  # and the top-up
    # The messages in the order they were sent (their rowids), as the queue takes them.
    assert [r[1] for r in got["messages"]] == [
        s.messages[0].id for s, o in zip(_mixed(), outs, strict=True) if answer(o) == "accepted"
    ]


async def test_a_duplicate_message_id_fails_its_own_caller(store: SqliteStore) -> None:
    assert (await store.accept(send(1), NOW)).accepted
    reruns = store._runner.reruns
    outs = await one_batch(
        store,
        store.accept(send(2), NOW),
        store.accept(send(3, mid="m1"), NOW),  # m1 is stored already
        store.accept(send(4), NOW),
        store.accept(send(5, mid="m4"), NOW),  # m4 is the one before's, in this batch
        store.accept(send(6), NOW),
    )
    assert [answer(o) for o in outs] == [
        "accepted", "IntegrityError", "accepted", "IntegrityError", "accepted"
    ]  # fmt: skip
    assert store._runner.reruns == reruns + 1  # the held write failed: run again guarded
    tables = dump(store.path)
    assert [r[1] for r in tables["messages"]] == ["m1", "m2", "m4", "m6"]
    # The failed sends' nonces and Idempotency-Keys not kept, and nothing charged for them.
    assert [r[1] for r in tables["nonces"]] == ["n1", "n2", "n4", "n6"]
    assert [r[2] for r in tables["idempotency"]] == ["k1", "k2", "k4", "k6"]
    assert [r[3] for r in tables["ledger"] if r[2] == "charge"] == [-300] * 4
    assert tables["pockets"][0][2] == 1_000_000 - 4 * 300
    assert tables["daily_counts"][0][2] == 4


async def test_a_failure_of_the_held_write_runs_the_batch_again(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = sqlite_rows.write_rows
    failed: list[int] = []

    def locked_once(c: sqlite3.Connection, pending: sqlite_rows.PendingRows) -> None:
        if not failed:
            failed.append(len(pending.accepts))
            real(c, pending)  # written, then the error: the rollback must take them back
            raise sqlite3.OperationalError("database is locked")
        real(c, pending)

    monkeypatch.setattr(sqlite_rows, "write_rows", locked_once)
    reruns = store._runner.reruns
    outs = await one_batch(store, *(store.accept(send(n, parts=n % 3 + 1), NOW) for n in range(6)))
    assert [answer(o) for o in outs] == ["accepted"] * 6
    assert failed == [6] and store._runner.reruns == reruns + 1
    tables = dump(store.path)
    assert [r[1] for r in tables["messages"]] == [f"m{n}" for n in range(6)]
    assert len(tables["segments"]) == 12  # 0..5: 1, 2, 3, 1, 2, 3 parts
    assert len([r for r in tables["ledger"] if r[2] == "charge"]) == 6  # once each
    assert tables["pockets"][0][2] == 1_000_000 - 12 * 300  # 300 a part
    assert tables["daily_counts"][0][2] == 6


async def test_a_full_database_leaves_the_books_balanced(store: SqliteStore) -> None:
    conn = store._runner._conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages + 1}")
    sends = [send(n, parts=3, to=f"+86139{n:08d}") for n in range(40)]
    outs = await asyncio.gather(*(store.accept(s, NOW) for s in sends), return_exceptions=True)
    conn.execute("PRAGMA max_page_count=1073741823")
    accepted = {
        s.messages[0].id for s, o in zip(sends, outs, strict=True) if answer(o) == "accepted"
    }
    failed = [o for o in outs if isinstance(o, BaseException)]
    assert accepted  # the rows that fitted
    assert failed and all(is_unavailable(e) for e in failed), failed  # 503s, not 500s
    tables = dump(store.path)
    # What each caller was told is what is on disk.
    assert {r[1] for r in tables["messages"]} == accepted
    assert {r[0] for r in tables["segments"]} == accepted
    charges = [r for r in tables["ledger"] if r[2] == "charge"]
    assert {r[6] for r in charges} == accepted and len(charges) == len(accepted)
    assert tables["pockets"][0][2] == 1_000_000 - 3 * 300 * len(accepted)  # 300 a part
    assert (tables["daily_counts"][0][2] if tables["daily_counts"] else 0) == len(accepted)


@pytest.mark.parametrize("keyed", [True, False])
async def test_a_frequency_history_finds_the_batchs_earlier_send(
    store: SqliteStore, keyed: bool
) -> None:
    rule = FrequencyRule("raw", "Acme", None, freq.Limits(1, 0, 0), "UTC", (CN,))
    other = FrequencyRule("raw", "Acme", None, freq.Limits(1, 0, 0), "UTC", ("+8613911112222",))
    outs = await one_batch(
        store,
        store.accept(send(1, keyed=keyed, frequency=rule), NOW),
        store.accept(send(2, keyed=keyed, to="+8613911112222", frequency=other), NOW),
        store.accept(send(3, keyed=keyed, frequency=rule), NOW),  # CN again: one a minute
        store.accept(send(4, keyed=keyed, to="+8613911113333", frequency=rule), NOW),
    )
    assert [answer(o) for o in outs] == [
        "accepted", "accepted", (None, "FREQUENCY_LIMIT_MINUTE", None), "accepted"
    ]  # fmt: skip
    assert [r[1] for r in dump(store.path)["messages"]] == ["m1", "m2", "m4"]


async def test_another_job_of_the_batch_is_written_between_the_accepts_rows(
    store: SqliteStore,
) -> None:
    def read_messages(c: sqlite3.Connection) -> list[str]:
        return [r[0] for r in c.execute("SELECT id FROM messages ORDER BY rowid")]

    outs = await one_batch(
        store,
        store.accept(send(1), NOW),
        store.accept(send(2), NOW),
        store._runner.write(read_messages),
        store.append_ledger("acc_a", topup(5, NOW, "between")),
        store.accept(send(3), NOW),
    )
    assert [answer(o) for o in outs[:2]] == ["accepted"] * 2 and answer(outs[4]) == "accepted"
    assert outs[2] == ["m1", "m2"]  # the held rows written before it ran
    ledger = dump(store.path)["ledger"]
    assert [(r[2], r[6]) for r in ledger[1:]] == [
        ("charge", "m1"), ("charge", "m2"), ("topup", "between"), ("charge", "m3")
    ]  # fmt: skip


def test_multi_row_texts() -> None:
    one = "INSERT INTO t (a, b) VALUES (?,NULL)"
    assert sqlite_rows.multi_row(one, 1) is one
    assert sqlite_rows.multi_row(one, 3) == (
        "INSERT OR FAIL INTO t (a, b) VALUES (?,NULL),(?,NULL),(?,NULL)"
    )
    for bad in ("INSERT INTO t (a) SELECT 1", "INSERT INTO t (a) VALUES (?) RETURNING a"):
        with pytest.raises(ValueError):
            sqlite_rows.multi_row(bad, 2)


@pytest.mark.parametrize("n", [1, 2, 5, 31, 32, 33, 64, 77])
def test_write_rows_writes_every_row_once_in_order(n: int) -> None:
    with closing(sqlite3.connect(":memory:")) as c:
        c.execute("CREATE TABLE t (i INTEGER, s TEXT, b BLOB)")
        pending = sqlite_rows.PendingRows()
        texts = [
            "INSERT INTO t (i, s, b) VALUES (?,?,?)",
            "INSERT INTO t (i, s, b) VALUES (?,?,X'')",
        ]
        want = []
        for i in range(n):
            text = texts[(i // 7) % 2]  # runs of seven of one text, then the other
            row = (i, f"s{i}", bytearray([i % 256])) if "X''" not in text else (i, f"s{i}")
            pending.accepts.append((text, [row], text, [], None))
            want.append((i, f"s{i}", bytes([i % 256]) if "X''" not in text else b""))
        sqlite_rows.write_rows(c, pending)
        assert c.execute("SELECT i, s, b FROM t ORDER BY rowid").fetchall() == want


@pytest.mark.parametrize("jobs", [7, 8])
async def test_rows_are_held_in_a_batch_of_eight_jobs_or_more(tmp_path: Path, jobs: int) -> None:
    s = SqliteStore(tmp_path / "bridge.db")
    await s.open()
    try:
        assert s._runner.defer_min_jobs == 8  # the daemon's
        await s.create_account(account())
        await sign(s)
        await s.append_ledger("acc_a", topup(1_000_000, NOW, "funds"))
        await s.add_key(AppKey("K1", "acc_a", b"sealed", "active", NOW), max_active=2)
        seen: list[str] = []
        conn = s._runner._conn
        assert conn is not None
        conn.set_trace_callback(seen.append)
        outs = await one_batch(s, *(s.accept(send(n), NOW) for n in range(jobs)))
        conn.set_trace_callback(None)
        assert [answer(o) for o in outs] == ["accepted"] * jobs
        inserts = [q.split(" (")[0] for q in seen if q.startswith("INSERT") and "ledger" in q]
        # Seven: each accept's own ledger row; eight: one statement of all eight.
        assert inserts == (
            ["INSERT INTO ledger"] * 7 if jobs == 7 else ["INSERT OR FAIL INTO ledger"]
        )
    finally:
        await s.close()
