"""SQLite: the accepts of one write batch write each account's daily count and pockets once, at
the batch's end, and each decides against the sums the earlier ones moved (session 53).

An accept read today's count and the pockets with its key, decided, and wrote both back: two
upserts per request inside the write lock. Now it adds them to the account's sums the runner
holds for the batch (`sqlite_rules.HeldSums`), which the runner writes before any other job of
the batch and before its COMMIT; the next accept of the account in the batch reads the rows
and adds the held sums to what it read. These tests run several accepts in one batch of a real
store and check that each sees the others' charges and counts, that the rows are written once,
and that another job of the batch, and a batch run again, find them right.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections import Counter
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge.domain.ledger import format_micro, topup  # noqa: E402
from bridge.store.models import AcceptBatch, AcceptOutcome, AppKey  # noqa: E402
from bridge.store.sqlite import SqliteStore  # noqa: E402
from tests.integration.test_sqlite_accept_cursor import MIN, send  # noqa: E402
from tests.integration.test_sqlite_accept_cursor import store as store  # noqa: E402
from tests.integration.test_store_rules import NOW, account, billed, message, sign  # noqa: E402


async def one_batch(store: SqliteStore, *jobs: Any) -> list[Any]:
    """The accepts (and other writes) given, in one write batch of the runner."""
    commits = store._runner.commits
    out = await asyncio.gather(*jobs)
    assert store._runner.commits == commits + 1, "not one batch"
    return list(out)


def traced(store: SqliteStore) -> Counter[str]:
    """The statements the store's connection runs from now on, by their first words."""
    seen: Counter[str] = Counter()
    conn = store._runner._conn
    assert conn is not None
    conn.set_trace_callback(lambda sql: seen.update([" ".join(sql.split()[:3])]))
    return seen


def cash(store: SqliteStore) -> int:
    with closing(sqlite3.connect(store.path)) as db:
        return db.execute("SELECT amount FROM pockets WHERE pocket='cash'").fetchone()[0]


def day_count(store: SqliteStore) -> int:
    with closing(sqlite3.connect(store.path)) as db:
        row = db.execute("SELECT sum(messages) FROM daily_counts").fetchone()
        return row[0] or 0


async def test_a_batch_writes_the_sums_once_for_its_accepts(store: SqliteStore) -> None:
    seen = traced(store)
    outs = await one_batch(
        store, *(store.accept(send(n, f"n{n}", f"k{n}"), NOW) for n in (1, 2, 3))
    )
    assert [o.accepted for o in outs] == [True, True, True]
    # One upsert each for the three accepts (each wrote its own before), a ledger row each.
    assert seen["INSERT INTO daily_counts"] == 1, seen
    assert seen["INSERT INTO pockets"] == 1, seen
    assert seen["INSERT INTO ledger"] == 3, seen
    assert cash(store) == 1000 - 3 * 300
    assert day_count(store) == 3


async def test_two_accepts_of_a_batch_see_each_others_charge(store: SqliteStore) -> None:
    # 1,000 of cash, 300 a send: the fourth of one batch finds 100 left and is refused.
    outs: list[AcceptOutcome] = await one_batch(
        store, *(store.accept(send(n, f"n{n}", f"k{n}"), NOW) for n in (1, 2, 3, 4))
    )
    assert [o.accepted for o in outs] == [True, True, True, False]
    assert outs[3].refusal is not None and outs[3].refusal.code == "INSUFFICIENT_BALANCE"
    assert cash(store) == 100
    # The refused one's balance in its answer: what the three before it left.
    assert f"{format_micro(100)} available" in outs[3].refusal.message


async def test_two_accepts_of_a_batch_see_each_others_daily_count(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "quota.db")
    await s.open()
    try:
        await s.create_account(account(daily_quota=2))
        await sign(s)
        await s.append_ledger("acc_a", topup(10_000, NOW, "funds"))
        await s.add_key(AppKey("K1", "acc_a", b"sealed", "active", NOW), max_active=2)
        outs = await one_batch(s, *(s.accept(send(n, f"n{n}", f"k{n}"), NOW) for n in (1, 2, 3)))
        assert [o.accepted for o in outs] == [True, True, False]
        assert outs[2].refusal is not None and outs[2].refusal.code == "DAILY_QUOTA_EXCEEDED"
        assert day_count(s) == 2
        assert cash(s) == 10_000 - 2 * 300
    finally:
        await s.close()


async def test_another_job_of_the_batch_finds_the_sums_written(store: SqliteStore) -> None:
    def read_cash(c: sqlite3.Connection) -> int:
        return c.execute("SELECT amount FROM pockets WHERE pocket='cash'").fetchone()[0]

    first, between, second = await one_batch(
        store,
        store.accept(send(1, "n1", "k1"), NOW),
        store._runner.write(read_cash),
        store.accept(send(2, "n2", "k2"), NOW),
    )
    assert first.accepted and second.accepted
    assert between == 700  # the first accept's charge, written before this job ran
    assert cash(store) == 400


async def test_a_batch_run_again_holds_each_accept_once(store: SqliteStore) -> None:
    def boom(c: sqlite3.Connection) -> None:
        c.execute("INSERT INTO daily_counts (account_id, day, messages) VALUES ('x', 'y', 1)")
        raise RuntimeError("a fault nobody planned for")

    reruns = store._runner.reruns
    outs = await asyncio.gather(
        store.accept(send(1, "n1", "k1"), NOW),
        store._runner.write(boom, bare=True),
        store.accept(send(2, "n2", "k2"), NOW),
        return_exceptions=True,
    )
    assert store._runner.reruns == reruns + 1  # rolled back, run again with savepoints
    assert outs[0].accepted and outs[2].accepted  # type: ignore[union-attr]
    assert isinstance(outs[1], RuntimeError)
    assert cash(store) == 1000 - 2 * 300  # not the first run's charges too
    assert day_count(store) == 2


@pytest.mark.parametrize("refused_first", [True, False])
async def test_a_refused_accept_holds_nothing(store: SqliteStore, refused_first: bool) -> None:
    spent = send(9, "n1", "k9")  # the nonce of another: refused, nothing of it written
    if refused_first:
        assert (await store.accept(send(0, "n1", "k0"), NOW)).accepted  # spends n1 first
        outs = await one_batch(store, store.accept(spent, NOW), store.accept(send(2, "n2"), NOW))
        assert [o.accepted for o in outs] == [False, True]
        assert cash(store) == 1000 - 2 * 300
    else:
        outs = await one_batch(store, store.accept(send(1, "n1"), NOW), store.accept(spent, NOW))
        assert [o.accepted for o in outs] == [True, False]
        assert cash(store) == 700
    assert day_count(store) == 2 if refused_first else 1


async def test_several_recipients_read_apart_see_the_held_sums(store: SqliteStore) -> None:
    # Two messages a send: their facts are read by their own statements (read_facts), then
    # moved by the held sums. 2 x 2 x 200 of 1,000: the second send finds 600 left and is
    # accepted, the third finds 200 and is refused; each counts its two messages.
    def two(n: int) -> AcceptBatch:
        a, b = message(f"m{n}a"), message(f"m{n}b", "+8613900000000")
        return AcceptBatch(
            "acc_a",
            (a, b),
            None,
            None,
            key_id="K1",
            nonce=f"n{n}",
            nonce_expires_at=NOW + 10 * MIN,
            account_version=NOW,
            rules=billed(a, b, amount=200),
        )

    outs = await one_batch(store, *(store.accept(two(n), NOW) for n in (1, 2, 3)))
    assert [o.accepted for o in outs] == [True, True, False]
    assert outs[2].refusal is not None and outs[2].refusal.code == "INSUFFICIENT_BALANCE"
    assert f"{format_micro(200)} available" in outs[2].refusal.message
    assert cash(store) == 200
    assert day_count(store) == 4


def _key_reads(store: SqliteStore) -> list[bool]:
    """From now on, for each key-and-facts statement the store runs: whether it read today's
    count and the pockets (session 62: a statement that does not read them leaves their columns
    out; before, its `:reads`, as the trace callback writes the bound value)."""
    reads: list[bool] = []
    conn = store._runner._conn
    assert conn is not None

    def seen(sql: str) -> None:
        if sql.startswith("SELECT CASE WHEN k.status"):
            reads.append("(SELECT messages FROM daily_counts" in sql)

    conn.set_trace_callback(seen)
    return reads


async def test_the_later_accepts_of_a_batch_take_the_sums_its_first_read(
    store: SqliteStore,
) -> None:
    # Session 55: within a batch nothing but the held sums' writing (which empties them) writes
    # an account's count or pockets, so what its first accept read, plus the held sums, is
    # what the store holds: the later ones do not read them again (~9 k instructions each).
    await store.append_ledger("acc_a", topup(1_000, NOW, "more"))  # 2,000: six sends
    reads = _key_reads(store)
    outs = await one_batch(
        store, *(store.accept(send(n, f"n{n}", f"k{n}"), NOW) for n in range(1, 8))
    )
    assert [o.accepted for o in outs] == [True] * 6 + [False]
    assert outs[6].refusal is not None and outs[6].refusal.code == "INSUFFICIENT_BALANCE"
    assert f"{format_micro(200)} available" in outs[6].refusal.message
    assert reads == [True] + [False] * 6, reads
    assert cash(store) == 200
    assert day_count(store) == 6


async def test_a_batch_accept_after_another_job_reads_the_sums_again(store: SqliteStore) -> None:
    # A top-up between accepts of one batch: the held sums are written before it and emptied,
    # so the accept after it reads the store again and spends the new money.
    async def top_up() -> None:
        await store.append_ledger("acc_a", topup(600, NOW, "between"))

    reads = _key_reads(store)
    outs = await one_batch(
        store,
        store.accept(send(1, "n1", "k1"), NOW),
        store.accept(send(2, "n2", "k2"), NOW),
        top_up(),
        *(store.accept(send(n, f"n{n}", f"k{n}"), NOW) for n in (3, 4, 5, 6)),
    )
    # 1,000 + 600 = 1,600 at 300 a send: five accepted, the sixth refused.
    assert [o.accepted for o in outs if o is not None] == [True] * 5 + [False]
    assert reads == [True, False, True, False, False, False], reads
    assert cash(store) == 100
