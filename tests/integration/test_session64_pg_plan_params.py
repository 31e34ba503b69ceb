"""Session 64: an accept's one charge names its parameters once.

`add_plan` with one ledger entry sent the account three times (the day's count, the ledger row,
the pocket) and the pocket, amount and expiry twice each (the ledger row, the pocket's UPDATE
and INSERT): 40 parameters with the messages' 26, now 35. The pocket's CTEs name the ledger
row's placeholders and the ledger row add_plan's account. On a real PostgreSQL database the
plan's writes must leave the rows the form before session 64 left (built below as it was):
the day's count, the ledger row, the pocket, for a pocket that exists and one that does not,
a reference with quotes and a backslash, NULL and set expiries, 2**62, a day counted before
or not; and the statement sends no value twice.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge.domain.admission import Plan
from bridge.domain.ledger import Entry, EntryKind, topup
from bridge.store import postgres_rules as rules_sql
from bridge.store.models import Account
from bridge.store.postgres import PostgresStore

pytestmark = pytest.mark.postgres

NOW = 1_700_000_000_000
AID = "acc"


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_dsn, min_size=1, max_size=1)
    await s.open()
    try:
        await s.create_account(Account(id=AID, name=AID, created_at=NOW, updated_at=NOW))
        await s.append_ledger(AID, topup(100_000, NOW, "funds"))
        yield s
    finally:
        await s.close()


def _before(account_id: str, plan: Plan, count: int) -> rules_sql.Writes:
    """add_plan of one entry as session 63 left it: every value a parameter of its own."""
    w = rules_sql.Writes()
    acc, day, n = w.param(account_id), w.param(plan.day), w.param(count)
    counted = w.add(
        f"UPDATE daily_counts SET messages = messages + {n}::bigint "
        f"WHERE account_id = {acc} AND day = {day} RETURNING 1"
    )
    w.add(
        "INSERT INTO daily_counts (account_id, day, messages) "
        f"SELECT {acc}, {day}, {n}::bigint WHERE NOT EXISTS (SELECT 1 FROM {counted}) "
        "ON CONFLICT (account_id, day) DO UPDATE SET "
        "messages = daily_counts.messages + EXCLUDED.messages"
    )
    ((_m, e),) = plan.entries
    one = (account_id, str(e.kind), e.amount, e.pocket, e.at, e.ref, e.expires_at)
    w.add(rules_sql._LEDGER_INSERT_ONE.format(*[w.param(v) for v in one], ""))
    args = (w.param(account_id), w.param(e.pocket), w.param(e.amount), w.param(e.expires_at))
    moved = w.add(rules_sql._POCKET_UPDATE.format(*args, ""))
    w.add(rules_sql._POCKET_INSERT.format(*args, "", moved))
    return w


async def _rows(c: Any) -> tuple[list[Any], ...]:
    return (
        [
            tuple(r)
            for r in await c.fetch(
                "SELECT account_id, kind, amount, pocket, at, ref, expires_at FROM ledger "
                "WHERE account_id = $1 ORDER BY id",
                AID,
            )
        ],
        [
            tuple(r)
            for r in await c.fetch(
                "SELECT account_id, pocket, amount, expires_at FROM pockets "
                "WHERE account_id = $1 ORDER BY pocket",
                AID,
            )
        ],
        [
            tuple(r)
            for r in await c.fetch(
                "SELECT account_id, day, messages FROM daily_counts WHERE account_id = $1 "
                "ORDER BY day",
                AID,
            )
        ],
    )


@pytest.mark.parametrize("counted_before", [False, True])
@pytest.mark.parametrize(
    "entry",
    [
        Entry(EntryKind.CHARGE, -30, "cash", NOW, "m\"a'\\b", None),
        Entry(EntryKind.VOUCHER_SPEND, -5, "voucher:v1", NOW, "m1", NOW + 86_400_000),
        Entry(EntryKind.CARD_SPEND, -(2**62), 'card:c"1', NOW, None, NOW + 1),
    ],
)
async def test_one_charge_writes_what_the_form_before_wrote(
    store: PostgresStore, entry: Entry, counted_before: bool
) -> None:
    plan = Plan((("m1", entry),), None, "2026-12-07")
    async with store.pool.acquire() as c:
        if counted_before:
            await c.execute(
                "INSERT INTO daily_counts (account_id, day, messages) VALUES ($1, $2, 4)",
                AID,
                plan.day,
            )
        got: list[Any] = []
        for form in ("now", "before"):
            tx = c.transaction()
            await tx.start()
            try:
                if form == "now":
                    w = rules_sql.Writes()
                    rules_sql.add_plan(w, AID, plan, 3)
                else:
                    w = _before(AID, plan, 3)
                await w.run(c)
                await w.run(c)  # again: the pocket and the day's row exist now
                got.append(await _rows(c))
            finally:
                await tx.rollback()
    assert got[0] == got[1]
    assert got[0][2][0][2] == 6 + (4 if counted_before else 0)


def test_one_charge_sends_each_value_once() -> None:
    entry = Entry(EntryKind.CHARGE, -30, "cash", NOW, "m1", None)
    w = rules_sql.Writes(["x"] * 26)
    rules_sql.add_plan(w, AID, Plan((("m1", entry),), None, "2026-12-07"), 1)
    assert w.args[26:] == [AID, "2026-12-07", 1, "charge", -30, "cash", NOW, "m1", None]
    assert len(_before(AID, Plan((("m1", entry),), None, "2026-12-07"), 1).args) == 14
