"""Session 62: the PostgreSQL accept decides the usual one-recipient send from its statement's
facts row (`postgres_rules.decide_one_of_row`, `admission.decide_one`), without `decide` and
the Facts, in a group's first accept and its later ones (whose row is moved by the earlier
accept's writes in the same statement): the same answers and rows as `decide` gave, the day's
count and the balance carried from accept to accept. A send `decide` must answer (a quota
reached, a balance short, a number sent to in the group under a frequency rule) still goes to
it and is refused as before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge.domain import admission as adm
from bridge.domain.frequency import Limits
from bridge.domain.ledger import topup
from bridge.store.models import AcceptBatch, AcceptOutcome, Account, AppKey, IdempotencyRecord
from bridge.store.postgres import PostgresStore
from tests.messages import one_part

pytestmark = pytest.mark.postgres

NOW = 1_700_000_000_000
AID = "acc"


@pytest.fixture
async def store(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_dsn, min_size=1, max_size=1)
    await s.open()
    try:
        await s.create_account(
            Account(
                id=AID,
                name=AID,
                created_at=NOW,
                updated_at=NOW,
                daily_quota=5,
                low_balance_threshold=950,
            )
        )
        await s.add_key(AppKey("K", AID, b"sealed", "active", NOW), max_active=2)
        await s.append_ledger(AID, topup(1_000, NOW, "funds"))
        yield s
    finally:
        await s.close()


def _batch(i: int, number: str | None = None, amount: int = 30) -> AcceptBatch:
    to = number or f"+86138{i:08d}"
    m = one_part(f"m{i:04d}", AID, to, NOW + i)
    return AcceptBatch(
        AID,
        (m,),
        f"idem-{i}",
        IdempotencyRecord(f"h{i}", 202, b"{}"),
        NOW + 86_400_000,
        key_id="K",
        nonce=f"n{i}",
        nonce_expires_at=NOW + 300_000,
        account_version=NOW,
        rules=adm.Rules(
            frequency=adm.FrequencyRule("raw", None, None, Limits(0, 0, 1), "UTC", (to,)),
            charges=(adm.Priced(m.id, amount, False),),
            billing=True,
        ),
    )


async def _accept_all(store: PostgresStore, batches: list[AcceptBatch]) -> list[AcceptOutcome]:
    """At once: one account's accepts share a transaction (a group), the later ones reading
    their facts in the statement that writes the earlier one's."""
    return list(await asyncio.gather(*(store.accept(b, NOW) for b in batches)))


async def test_usual_sends_are_decided_without_decide(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    decided: list[Any] = []
    general = adm.decide

    def counted(*args: Any, **kw: Any) -> Any:
        decided.append(args)
        return general(*args, **kw)

    monkeypatch.setattr(adm, "decide", counted)
    # A group of four usual sends: each planned from the row, the balance and count moved by
    # the earlier ones; the second crosses the threshold (970 -> 940, under 950) and warns,
    # the later ones stay silent (the mark carried from the earlier accept's plan).
    first = await _accept_all(store, [_batch(i) for i in range(4)])
    assert all(o.accepted for o in first), first
    assert decided == []
    plans = [o.plan for o in first]
    assert [p.entries[0][1].amount for p in plans if p is not None] == [-30] * 4
    assert [p.low_balance for p in plans if p is not None] == [None, (970, 940), None, None]
    pockets = await store.get_pockets(AID)
    assert [(p.pocket, p.amount) for p in pockets] == [("cash", 1_000 - 4 * 30)]
    count = await store.pool.fetchval(
        "SELECT messages FROM daily_counts WHERE account_id = $1", AID
    )
    assert count == 4
    # The fifth is planned; the sixth passes the quota of five: decide refuses it. A send to a
    # number the group sent to goes to decide too (its history grew): refused by the rule.
    again = await _accept_all(
        store, [_batch(4), _batch(5), _batch(6, number="+8613800000004", amount=1)]
    )
    assert again[0].accepted
    assert not again[1].accepted and again[1].refusal is not None
    assert again[1].refusal.code == "DAILY_QUOTA_EXCEEDED"
    assert not again[2].accepted and again[2].refusal is not None
    assert again[2].refusal.code in ("DAILY_QUOTA_EXCEEDED", "FREQUENCY_LIMIT_DAY")
    assert len(decided) == 2  # the two refused, not the fifth
    ledger = await store.pool.fetch(
        "SELECT amount, pocket, ref FROM ledger WHERE kind = 'charge' ORDER BY id"
    )
    assert [tuple(r) for r in ledger] == [(-30, "cash", f"m{i:04d}") for i in range(5)]


async def _scenario(
    store: PostgresStore, aid: str, seed: int, *, fast: bool, monkeypatch: pytest.MonkeyPatch
) -> list[Any]:
    """Seeded rounds of one account's accepts, each round at once (a group): numbers drawn from
    a few (the frequency rule bites), charges of 0 to 300 against 1,500 (the balance runs out),
    a quota of 4 to 10 and a threshold of 600 (warnings). Returns the answers and the rows, the
    account's id left out."""
    import random

    from bridge.domain import admission
    from bridge.store import postgres_rules

    if not fast:  # every accept through decide, as before session 62
        monkeypatch.setattr(postgres_rules, "decide_one_of_row", lambda *a, **k: None)
    rnd = random.Random(seed)
    await store.create_account(
        Account(
            id=aid,
            name=aid,
            created_at=NOW,
            updated_at=NOW,
            daily_quota=rnd.randint(4, 10),
            low_balance_threshold=600,
            status_callback_url="http://cb.invalid/s",
        )
    )
    await store.add_key(AppKey(f"K{aid}", aid, b"sealed", "active", NOW), max_active=2)
    await store.append_ledger(aid, topup(1_500, NOW, f"funds-{aid}"))
    answers: list[Any] = []
    i = 0
    for _round in range(6):
        batches = []
        for _ in range(rnd.randint(1, 6)):
            to = f"+861380000{rnd.randint(0, 9):04d}"
            m = one_part(f"{aid}-m{i:03d}", aid, to, NOW + i)
            limits = Limits(0, 0, rnd.choice([1, 2, 50]))
            batches.append(
                AcceptBatch(
                    aid,
                    (m,),
                    f"idem-{i}",
                    IdempotencyRecord(f"h{i}", 202, b"{}"),
                    NOW + 86_400_000,
                    key_id=f"K{aid}",
                    nonce=f"n{i}",
                    nonce_expires_at=NOW + 300_000,
                    account_version=NOW,
                    rules=admission.Rules(
                        frequency=admission.FrequencyRule("raw", None, None, limits, "UTC", (to,)),
                        charges=(admission.Priced(m.id, rnd.randint(0, 300), False),),
                        billing=rnd.random() < 0.9,
                    ),
                )
            )
            i += 1
        for o in await _accept_all(store, batches):
            plan = o.plan
            answers.append(
                (
                    o.accepted,
                    None if o.refusal is None else o.refusal.code,
                    None if plan is None else (plan.low_balance, len(plan.entries)),
                    None if plan is None else [(e.amount, e.pocket) for _m, e in plan.entries],
                )
            )
    rows = []
    for sql in (
        "SELECT kind, amount, pocket, at, replace(ref, $1, '') FROM ledger "
        "WHERE account_id = $1 ORDER BY id",
        "SELECT pocket, amount FROM pockets WHERE account_id = $1 ORDER BY pocket",
        "SELECT day, messages FROM daily_counts WHERE account_id = $1",
        "SELECT low_warned_at FROM accounts WHERE id = $1",
        "SELECT count(*) FROM webhook_outbox WHERE account_id = $1 AND kind = 'event'",
        "SELECT replace(id, $1, ''), recipient FROM messages WHERE account_id = $1 ORDER BY id",
    ):
        rows.append([tuple(r) for r in await store.pool.fetch(sql, aid)])
    monkeypatch.undo()
    return [answers, rows]


@pytest.mark.parametrize("seed", range(8))
async def test_grouped_accepts_answer_and_write_as_decide(
    store: PostgresStore, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """The same seeded rounds on two accounts, one through the row's decision, one through
    `decide` alone: the same answers, plans and rows (ledger, pockets, the day's count, the
    warning's mark and events, messages)."""
    fast = await _scenario(store, "fa", seed, fast=True, monkeypatch=monkeypatch)
    general = await _scenario(store, "ge", seed, fast=False, monkeypatch=monkeypatch)
    assert fast == general
    answers = fast[0]
    assert any(a[0] for a in answers) and not all(a[0] for a in answers), answers
