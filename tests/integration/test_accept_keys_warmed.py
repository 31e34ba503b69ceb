"""An accept's Idempotency-Key at scale: looked up before the write lock, decided in it.

SQLite's accept reads the index pages its key insert will write before it takes the write lock
(a day of random keys outgrows the caches: the insert read its leaf from disk while every writer
waited). The lookup only warms: whatever it found, the answer comes from the
write transaction. These tests hold the semantics to that on every engine (replays exact,
conflicts answered with the first request's record, expired keys taken anew, one account's key
never another's), including when another writer commits between the lookup and the lock.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import sqlite3
import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import AcceptBatch, AppKey, IdempotencyRecord  # noqa: E402
from bridge.store.sqlite import SqliteStore  # noqa: E402
from tests.integration.test_store import DAY, MIN, NOW, account, message  # noqa: E402
from tests.store_engines import EngineHandle  # noqa: E402

engine = engines.engine
store = engines.store


def send(
    mid: str,
    nonce: str,
    idem: str,
    *,
    acc: str = "acc_a",
    kid: str = "K1",
    h: str = "h1",
    at: int = NOW,
) -> AcceptBatch:
    """A POST /v1/messages accept: nonce, key and account checked in it, an Idempotency-Key."""
    return AcceptBatch(
        acc,
        (message(mid, acc),),
        idem,
        IdempotencyRecord(f"{h}-{acc}", 202, f'{{"batch_id":"{mid}"}}'.encode()),
        at + DAY,
        key_id=kid,
        nonce=nonce,
        nonce_expires_at=at + 10 * MIN,
        account_version=NOW,
    )


async def two_accounts(store: Store) -> None:
    if isinstance(store, SqliteStore):  # every accept looks its key up, as at a day's scale
        store.key_warmup.on = True
    for acc, kid in (("acc_a", "K1"), ("acc_b", "K2")):
        await store.create_account(account(acc))
        await store.add_key(AppKey(kid, acc, b"sealed", "active", NOW), max_active=2)


async def test_replays_conflicts_and_expiry_answer_from_the_accounts_own_record(
    store: Store,
) -> None:
    await two_accounts(store)
    assert (await store.accept(send("m1", "n1", "same-key"), NOW)).accepted
    # Another account's identical key is its own: accepted, not answered with acc_a's record.
    assert (await store.accept(send("m2", "n2", "same-key", acc="acc_b", kid="K2"), NOW)).accepted
    # A retry (new nonce, same key and request) is answered byte for byte with the first answer.
    replay = await store.accept(send("m3", "n3", "same-key"), NOW + 1)
    assert replay.existing == IdempotencyRecord("h1-acc_a", 202, b'{"batch_id":"m1"}')
    replay_b = await store.accept(send("m4", "n4", "same-key", acc="acc_b", kid="K2"), NOW + 1)
    assert replay_b.existing == IdempotencyRecord("h1-acc_b", 202, b'{"batch_id":"m2"}')
    # Another request under the key: the first request's record comes back (the API's 409).
    other = await store.accept(send("m5", "n5", "same-key", h="h2"), NOW + 2)
    assert other.existing is not None and other.existing.request_hash == "h1-acc_a"
    # Expired, the key is taken anew; a retry then gets the new answer, never the old one.
    later = NOW + DAY
    assert (await store.accept(send("m6", "n6", "same-key", h="h3", at=later), later)).accepted
    again = await store.accept(send("m7", "n7", "same-key", h="h3", at=later), later + 1)
    assert again.existing == IdempotencyRecord("h3-acc_a", 202, b'{"batch_id":"m6"}')
    assert await store.get_idempotency("acc_b", "same-key", later - 1) == replay_b.existing
    assert [m.id for m in await store.list_messages("acc_a")] == ["m6", "m1"]  # newest first
    assert [m.id for m in await store.list_messages("acc_b")] == ["m2"]


async def test_a_key_and_nonce_another_writer_stores_first_are_seen_by_the_accept(
    engine: EngineHandle, store: Store
) -> None:
    """A second instance (another process of the daemon) accepts the same key and then the same
    nonce after this instance's accept began: whatever this one looked up before its write lock,
    its accept answers with the record the other wrote, and refuses the spent nonce."""
    await two_accounts(store)
    other = engine.new_store()
    await other.open()
    try:
        assert (await other.accept(send("m1", "n1", "k1"), NOW)).accepted
        dup = await store.accept(send("m2", "n2", "k1"), NOW + 1)
        assert dup.existing == IdempotencyRecord("h1-acc_a", 202, b'{"batch_id":"m1"}')
        assert (await other.accept(send("m3", "n3", "k3"), NOW)).accepted
        spent = await store.accept(send("m4", "n3", "k4"), NOW + 1)
        assert (spent.accepted, spent.auth_refusal) == (False, "nonce_reused")
    finally:
        await other.close()


async def test_a_key_stored_between_the_lookup_and_the_lock_wins(tmp_path: Path) -> None:
    """SQLite, the race itself: the accept looks its key up (none stored), then waits for the
    write lock another process holds; that process stores the same key and commits. The accept
    must answer with that record, not accept a second request under the key."""
    path = tmp_path / "bridge.db"
    s = SqliteStore(path)
    await s.open()
    try:
        await two_accounts(s)
        lock = os.open(f"{path}.writelock", os.O_RDWR)
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process holds the write lock
        try:
            task = asyncio.ensure_future(s.accept(send("m2", "n2", "k1"), NOW + 1))
            for _ in range(2000):  # looked up, queued, then waiting for the lock
                if s._runner._flush_task is not None:
                    break
                await asyncio.sleep(0.005)
            conn = sqlite3.connect(path, isolation_level=None)
            conn.execute(
                "INSERT INTO idempotency (account_id, key, request_hash, status_code, response, "
                "expires_at) VALUES ('acc_a', 'k1', 'h0', 202, CAST('{\"first\":1}' AS BLOB), ?)",
                (NOW + DAY,),
            )
            conn.close()
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
            os.close(lock)
        out = await asyncio.wait_for(task, 10)
        assert out.existing == IdempotencyRecord("h0", 202, b'{"first":1}')
        assert await s.list_messages("acc_a") == []
    finally:
        await s.close()


async def test_the_accept_reads_its_key_before_the_write_lock(tmp_path: Path) -> None:
    """SQLite: the key's index lookup runs before BEGIN IMMEDIATE (outside the lock every writer
    waits for), and inside the transaction the inserts come as before."""
    s = SqliteStore(tmp_path / "bridge.db")
    await s.open()
    try:
        await two_accounts(s)
        said: list[str] = []
        conn = s._runner._conn
        assert conn is not None
        conn.set_trace_callback(said.append)
        assert (await s.accept(send("m1", "n1", "k1"), NOW)).accepted
        conn.set_trace_callback(None)
        begin = next(i for i, sql in enumerate(said) if sql.startswith("BEGIN IMMEDIATE"))
        before = " ".join(said[:begin])
        assert "FROM idempotency WHERE account_id='acc_a' AND key='k1'" in before, said
        inside = " ".join(said[begin:])
        assert "INSERT INTO nonces" in inside and "INSERT INTO idempotency" in inside, said
    finally:
        await s.close()


@pytest.mark.parametrize("which", ["nonce", "key"])
async def test_an_accept_without_a_nonce_or_key_still_accepts(tmp_path: Path, which: str) -> None:
    """The lookup with a NULL nonce (the Alibaba face records it before) or no key."""
    s = SqliteStore(tmp_path / "bridge.db")
    await s.open()
    try:
        await two_accounts(s)
        b = send("m1", "n1", "k1")
        if which == "nonce":
            b = AcceptBatch(b.account_id, b.messages, "k1", b.idempotency, b.idempotency_expires_at,
                            account_version=NOW)  # fmt: skip
        else:
            b = AcceptBatch(b.account_id, b.messages, None, None, 0, key_id="K1", nonce="n1",
                            nonce_expires_at=NOW + MIN, account_version=NOW)  # fmt: skip
        assert (await s.accept(b, NOW)).accepted
        assert (await s.accept(b, NOW + 1)).accepted is False
    finally:
        await s.close()


async def test_sampled_reads_that_show_the_disk_turn_the_lookup_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite: with the index cached the lookup runs for one accept in SAMPLE_EVERY only (7-15
    µs each saved); a window of sampled reads that read blocks from the disk (here: each read
    counted as one) turns it on for every accept, and a window of cached ones off again."""
    from bridge.store import key_warmup

    s = SqliteStore(tmp_path / "bridge.db")
    await s.open()
    try:
        await s.create_account(account("acc_a"))
        await s.add_key(AppKey("K1", "acc_a", b"sealed", "active", NOW), max_active=2)
        looked: list[str] = []
        conn = s._runner._conn
        assert conn is not None
        conn.set_trace_callback(
            lambda sql: looked.append(sql) if sql.startswith("SELECT 1 FROM idempotency") else None
        )
        n = key_warmup.SAMPLE_EVERY * 4
        for i in range(n):
            assert (await s.accept(send(f"m{i}", f"n{i}", f"k{i}"), NOW)).accepted
        assert len(looked) == 4 and not s.key_warmup.on  # cached: a sample only
        disk = iter(range(1_000_000))
        monkeypatch.setattr(key_warmup, "blocks_read", lambda: next(disk))  # each read: a block
        for i in range(n, n + key_warmup.SAMPLE_EVERY * key_warmup.WINDOW):
            assert (await s.accept(send(f"m{i}", f"n{i}", f"k{i}"), NOW)).accepted
        assert s.key_warmup.on
        looked.clear()
        for i in range(10_000, 10_010):
            assert (await s.accept(send(f"m{i}", f"n{i}", f"k{i}"), NOW)).accepted
        assert len(looked) == 10  # every accept now
        monkeypatch.setattr(key_warmup, "blocks_read", lambda: 0)  # cached again
        for i in range(20_000, 20_000 + 2 * key_warmup.WINDOW):  # a whole window of fast reads
            assert (await s.accept(send(f"m{i}", f"n{i}", f"k{i}"), NOW)).accepted
        assert not s.key_warmup.on
    finally:
        conn.set_trace_callback(None)
        await s.close()
