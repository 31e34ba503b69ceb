"""SQLite: a signed one-recipient send reads its account's rate bucket in the key's statement.

The accept of an account with a rate (`tps`) read the bucket in a SELECT of its own, one more
statement inside the write lock every process waits for; it is now read with the key, the
account and the facts (`sqlite._authorize_facts_sql`), as PostgreSQL's head statement reads it.
These tests trace the statements a real store runs and hold the limit itself to what it was:
the bucket drains and refuses, is read back from what an earlier accept wrote, and an account
whose rate the caller did not know of (its cached tps 0) still reads its bucket, alone.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge.domain.admission import Rules  # noqa: E402
from bridge.store.models import AcceptBatch, Account, AppKey  # noqa: E402
from bridge.store.sqlite import SqliteStore  # noqa: E402
from tests.integration.test_store import MIN, NOW, message  # noqa: E402

_BUCKET_ALONE = "SELECT tokens, at FROM rate_buckets"


def send(
    mid: str, *, tps: int, to: str = "+8613800138000", version: int | None = NOW
) -> AcceptBatch:
    """POST /v1/messages as the API hands it over: key, nonce, account version, the rules."""
    return AcceptBatch(
        "acc_a",
        (message(mid, recipient=to),),
        None,
        None,
        0,
        tps=tps,
        key_id="K1",
        nonce=f"n-{mid}",
        nonce_expires_at=NOW + 10 * MIN,
        account_version=version,
        rules=Rules(tz="Asia/Shanghai"),
    )


@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    s = SqliteStore(tmp_path / "bridge.db")
    await s.open()
    acc = Account(
        id="acc_a", name="a", tps=2, webhook_secret_enc=b"sealed", created_at=NOW, updated_at=NOW
    )
    await s.create_account(acc)
    await s.add_key(AppKey("K1", "acc_a", b"sealed", "active", NOW), max_active=2)
    yield s
    await s.close()


def traced(s: SqliteStore) -> list[str]:
    conn = s._runner._conn
    assert conn is not None
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    return seen


async def test_the_bucket_is_read_with_the_key_and_still_limits(store: SqliteStore) -> None:
    seen = traced(store)
    # A full bucket of 2 (tps 2): two sends at one moment pass, the third waits 0.5 s.
    assert (await store.accept(send("m1", tps=2), NOW)).accepted
    assert (await store.accept(send("m2", tps=2, to="+8613800138001"), NOW)).accepted
    third = await store.accept(send("m3", tps=2, to="+8613800138002"), NOW)
    assert (third.accepted, third.retry_after) == (False, pytest.approx(0.5))
    # Half a second later the bucket (read back as the earlier accepts wrote it) has refilled one.
    later = NOW + 500
    assert (await store.accept(send("m4", tps=2, to="+8613800138003"), later)).accepted
    refused = await store.accept(send("m5", tps=2, to="+8613800138004"), later)
    assert (refused.accepted, refused.retry_after) == (False, pytest.approx(0.5))
    assert not [s for s in seen if s.startswith(_BUCKET_ALONE)], "a SELECT of the bucket alone"
    # Each accepted send: the key's statement, the nonce, the message, its segment, the count,
    # the bucket's write; a refused one takes its nonce back.
    assert sum(s.startswith("SELECT k.status") for s in seen) == 5
    assert sum(s.startswith("INSERT INTO rate_buckets") for s in seen) == 3


async def test_a_rate_the_caller_did_not_know_of_reads_the_bucket_alone(
    store: SqliteStore,
) -> None:
    """The caller's account said tps 0 (set since, no version to check): the key's statement
    skipped the bucket, so it is read on its own, and the account's rate holds all the same."""
    seen = traced(store)
    for i in range(2):
        batch = send(f"m{i}", tps=0, to=f"+861380013800{i}", version=None)
        assert (await store.accept(batch, NOW)).accepted
    refused = await store.accept(send("m9", tps=0, to="+8613800138009", version=None), NOW)
    assert (refused.accepted, refused.retry_after) == (False, pytest.approx(0.5))
    assert sum(s.startswith(_BUCKET_ALONE) for s in seen) == 3
