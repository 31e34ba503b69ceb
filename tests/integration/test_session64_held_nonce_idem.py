"""SQLite: an accept's nonce and idempotency record held to its batch's end with its other rows
(session 64, `bridge/store/sqlite_rows.py`, `sqlite._probed`).

In a batch run bare (`deferring`), a keyed accept whose key statement reads its facts probes the
nonce and its Idempotency-Key in that statement's head; found in neither the store nor the rows
earlier accepts of the batch hold, they are held and written at the batch's end by multi-row
INSERTs; else the held rows are written first and the accept takes the usual path, so a repeated
nonce or key, a refused first request, an expired record replaced, get the answers they get one
batch each. Held here over real SQLite files (rows held from two jobs a batch): each case's
answers and every row equal the same sends one batch each (the idempotency table's ids too, in
the accepts' order), with no batch run again (a held row that conflicted would fail the batch's
end and hide behind the rerun); a replay spends its nonce; the rows are written by one statement
a table; a lone accept writes its own at once.
"""

from __future__ import annotations

import sqlite3
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge.store.models import AcceptBatch, IdempotencyRecord  # noqa: E402
from bridge.store.sqlite import SqliteStore  # noqa: E402
from tests.integration.test_session63_held_rows import (  # noqa: E402
    MIN,
    NOW,
    _store,
    answer,
    dump,
    one_batch,
    send,
)
from tests.integration.test_store_rules import billed, message  # noqa: E402


def two_recipients(n: int) -> AcceptBatch:
    """A keyed send to two numbers (its key statement reads no facts: no probe, its nonce and
    record written at once)."""
    msgs = (message(f"m{n}", "+8613800000001"), message(f"m{n}b", "+8613800000002"))
    return replace(send(n), messages=msgs, rules=billed(*msgs, amount=300))


def unkeyed(n: int, ikey: str | None = None) -> AcceptBatch:
    return replace(send(n, keyed=False), idempotency_key=ikey or f"k{n}")


def expiring(n: int, at: int) -> AcceptBatch:
    """Send n with its nonce and Idempotency-Key kept only until `at`."""
    return replace(send(n), nonce_expires_at=at, idempotency_expires_at=at)


def again(n: int, *, nonce: str | None = None, ikey: str | None = None) -> AcceptBatch:
    """Send n (its own message), with another send's nonce or Idempotency-Key."""
    out = send(n, nonce=nonce)
    if ikey is not None:
        out = replace(
            out,
            idempotency_key=ikey,
            idempotency=IdempotencyRecord(f"hash-{ikey}-{n}", 202, b'{"again":1}'),
        )
    return out


# Each case: sends stored first (one batch each), then the batch.
CASES: dict[str, tuple[list[AcceptBatch], list[AcceptBatch]]] = {
    "a nonce twice": ([], [send(1), send(2), again(3, nonce="n2"), send(4)]),
    "a nonce twice, the first refused": (
        [],
        [send(1), send(2, sign_name="Pending"), again(3, nonce="n2"), send(4)],
    ),
    "a nonce stored and expired, twice": (
        [expiring(1, NOW - MIN)],
        [send(2), again(3, nonce="n1"), again(4, nonce="n1"), send(5)],
    ),
    "a key twice": ([], [send(1), send(2), again(3, ikey="k2"), send(4)]),
    "a key twice, the first refused": (
        [],
        [send(1), send(2, sign_name="Pending"), again(3, ikey="k2"), send(4)],
    ),
    "a key stored, replayed twice": (
        [send(1)],
        [send(2), again(3, ikey="k1"), again(4, ikey="k1")],
    ),
    "a key stored and expired, twice": (
        [expiring(1, NOW - MIN)],
        [send(2), again(3, ikey="k1"), again(4, ikey="k1"), send(5)],
    ),
    "a key and a nonce of the batch": (
        [],
        [send(1), send(2), replace(again(3, nonce="n1"), idempotency_key="k2"), send(4)],
    ),
    "records written at once between held ones": (
        [],
        [send(1), two_recipients(2), send(3), unkeyed(4), send(5), unkeyed(6, "k5"), send(7)],
    ),
    "a nonce of an unprobed send": ([], [send(1), replace(two_recipients(2), nonce="n1"), send(3)]),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_a_batch_answers_and_stores_what_one_batch_each_does(
    tmp_path: Path, case: str
) -> None:
    before, sends = CASES[case]
    together = await _store(tmp_path / "together.db")
    alone = await _store(tmp_path / "alone.db")
    try:
        for s in before:
            assert (await together.accept(s, NOW)).accepted
            assert (await alone.accept(s, NOW)).accepted
        outs = await one_batch(together, *(together.accept(s, NOW) for s in sends))
        each = [await alone.accept(s, NOW) for s in sends]
        assert [answer(o) for o in outs] == [answer(o) for o in each]
        assert together._runner.reruns == 0  # no held row conflicted at the batch's end
    finally:
        await together.close()
        await alone.close()
    assert dump(tmp_path / "together.db") == dump(tmp_path / "alone.db")


async def test_the_answers_of_the_cases(tmp_path: Path) -> None:
    """What those batches answer (the comparison above holds them to one batch each's)."""
    s = await _store(tmp_path / "bridge.db")
    try:
        got = {}
        for case in ("a nonce twice", "a key twice", "a key twice, the first refused"):
            _before, sends = CASES[case]
            got[case] = [answer(o) for o in await one_batch(s, *(s.accept(b, NOW) for b in sends))]
            s = await _fresh(s, tmp_path / f"{len(got)}.db")
    finally:
        await s.close()
    assert got["a nonce twice"] == [
        "accepted", "accepted", ("nonce_reused", None, None), "accepted"
    ]  # fmt: skip
    replay = got["a key twice"][2]
    assert replay[0] is None and replay[2] is not None and replay[2].request_hash == "hash-k2"
    assert got["a key twice, the first refused"] == [
        "accepted", (None, "SIGN_NAME_NOT_APPROVED", None), "accepted", "accepted"
    ]  # fmt: skip


async def _fresh(old: SqliteStore, path: Path) -> SqliteStore:
    await old.close()
    return await _store(path)


async def test_a_replay_spends_its_nonce(store: SqliteStore) -> None:
    outs = await one_batch(
        store, store.accept(send(1), NOW), store.accept(again(2, ikey="k1"), NOW)
    )
    assert answer(outs[0]) == "accepted" and outs[1].existing is not None
    tables = dump(store.path)
    assert [r[1] for r in tables["nonces"]] == ["n1", "n2"]
    assert [r[1] for r in tables["messages"]] == ["m1"]


@pytest.mark.parametrize("jobs", [1, 8])
async def test_held_in_one_statement_a_table(tmp_path: Path, jobs: int) -> None:
    s = await _store(tmp_path / "bridge.db")
    s._runner.defer_min_jobs = 8  # the daemon's
    seen: list[str] = []
    try:
        conn = s._runner._conn
        assert conn is not None
        conn.set_trace_callback(seen.append)
        outs = await one_batch(s, *(s.accept(send(n), NOW) for n in range(jobs)))
        conn.set_trace_callback(None)
        assert [answer(o) for o in outs] == ["accepted"] * jobs
    finally:
        await s.close()
    inserts = [
        q.split(" (")[0] for q in seen if q.startswith("INSERT") and ("nonces" in q or "idem" in q)
    ]
    probed = [q for q in seen if "EXISTS(SELECT 1 FROM nonces" in q]
    if jobs == 1:  # alone: its own, no probe
        assert inserts == ["INSERT INTO nonces", "INSERT INTO idempotency"] and not probed
    else:
        assert inserts == ["INSERT OR FAIL INTO nonces", "INSERT OR FAIL INTO idempotency"]
        assert len(probed) == jobs


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = await _store(tmp_path / "bridge.db")
    yield s
    await s.close()


def test_probed_text_reads_its_parameters_by_number() -> None:
    """`_probed` numbers the probes' values after the statement's own (the nonce, then the key)."""
    from bridge.store import sqlite as sqlite_store

    text = (
        "SELECT CASE WHEN k.status='active' AND a.row_version=?1 AND a.id=?2 THEN NULL "
        "ELSE (k.status IS NOT 'active') || ' ' END AS head FROM app_keys k WHERE k.key_id=?3"
    )
    got = sqlite_store._probed(text, ("aver", "acc", "key_id"), True)
    assert "key_id=?3 AND nonce=?4" in got and "account_id=?2 AND key=?5" in got
    with sqlite3.connect(":memory:") as db:
        db.execute("CREATE TABLE nonces (key_id, nonce)")
        db.execute("CREATE TABLE idempotency (account_id, key)")
        db.execute("CREATE TABLE app_keys (key_id, status, account_id)")
        db.execute("CREATE TABLE accounts (id, row_version)")
        db.execute("INSERT INTO app_keys VALUES ('K', 'active', 'A')")
        db.execute("INSERT INTO accounts VALUES ('A', 7)")
        db.execute("INSERT INTO nonces VALUES ('K', 'n-stored')")
        db.execute("INSERT INTO idempotency VALUES ('A', 'k-stored')")
        sql = got.replace("FROM app_keys k", "FROM app_keys k JOIN accounts a ON a.id=k.account_id")
        heads: dict[Any, Any] = {}
        for nonce in ("n-new", "n-stored"):
            for key in ("k-new", "k-stored"):
                heads[nonce, key] = db.execute(sql, (7, "A", "K", nonce, key)).fetchone()[0]
    assert heads["n-new", "k-new"] is None
    assert heads["n-stored", "k-new"].startswith("010 ")
    assert heads["n-new", "k-stored"].startswith("001 ")
    assert heads["n-stored", "k-stored"].startswith("011 ")


_CHILD = """
import asyncio, os, signal, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from tests.integration.test_session63_held_rows import NOW, _store, send

async def main():
    s = await _store(Path(sys.argv[1]))
    s._runner.defer_min_jobs = 8  # the daemon's
    outs = await asyncio.gather(*(s.accept(send(n), NOW) for n in range(64)))
    assert all(o.accepted for o in outs), outs
    assert s._runner.commits < 64  # shared batches: held rows
    print("ok", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def test_a_held_nonce_and_record_survive_kill_9(tmp_path: Path) -> None:
    """Answered accepted, then SIGKILL: each send's nonce and idempotency record are on disk
    with its message (the held rows are written before the COMMIT the answer waits for)."""
    import os
    import subprocess
    from contextlib import closing

    path = tmp_path / "bridge.db"
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD.format(root=_ROOT), str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )
    assert proc.stdout == "ok\n", proc.stderr
    assert proc.returncode == -9
    with closing(sqlite3.connect(path)) as db:
        nonces = {r[0] for r in db.execute("SELECT nonce FROM nonces WHERE key_id='K1'")}
        keys = {r[0] for r in db.execute("SELECT key FROM idempotency WHERE account_id='acc_a'")}
        messages = {r[0] for r in db.execute("SELECT id FROM messages")}
    assert nonces == {f"n{n}" for n in range(64)}
    assert keys == {f"k{n}" for n in range(64)}
    assert messages == {f"m{n}" for n in range(64)}
