"""Session 62's review (r2) of the PostgreSQL accept deciding the usual send from its facts' row
(`postgres_rules.decide_one_of_row`): the moved path, where a later accept of a group is planned
from a row that cannot see the earlier accept's writes (they share its statement) and is moved by
them (the day's count, the cash, the low-balance mark).

h4's differentials seldom reached that path with money in it (no accept billed after an earlier
charge in ten seeds of `scripts/accept_differential.py --store postgres`). Here seeded groups of
one account's accepts live at the edges that path decides: balances a few charges deep (exact
multiples: the last micro-unit taken), thresholds one micro-unit either side of a charge's
landing (and above the balance: never warned), quotas a few sends deep, a voucher spent to 0
beside the cash (then the row's zero pocket), postpaid accounts with international charges,
free and zero-priced sends, refusals mid-group (an unapproved sign, the quota, the balance, a
frequency limit, a replayed nonce or idempotency key: none may move the row), a group across
midnight (the earlier accept's count is another day's), and top-ups by a second instance
between groups. Each scenario runs twice on the same database, once as merged and once with
`decide_one_of_row` answering nothing (every accept through `facts_from_row`, `facts_after` and
`decide`, the pre-session-62 decision): the same answers and rows. A probe proves the moved path
was taken, billed after an earlier charge and warning from a moved mark.

Then two instances sending for one account at once (each grouping its own accepts, the account
lock between them): the money, the count and the warning add up whatever the interleaving.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bridge.domain import admission as adm
from bridge.domain.frequency import Limits
from bridge.domain.ledger import grant_voucher, topup
from bridge.store import postgres_rules
from bridge.store.models import AcceptBatch, AcceptOutcome, Account, AppKey, IdempotencyRecord, Sign
from bridge.store.postgres import PostgresStore
from tests.messages import one_part

pytestmark = pytest.mark.postgres

NOW = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
MIDNIGHT = 1_700_006_400_000  # 2023-11-15 00:00:00 UTC


@pytest.fixture
async def stores(pg_dsn: str) -> AsyncIterator[tuple[PostgresStore, PostgresStore]]:
    """Two instances on one database (one connection each: a batch's calls reach the server in
    the order they were made, so a scenario is deterministic)."""
    a = PostgresStore(pg_dsn, min_size=1, max_size=1)
    b = PostgresStore(pg_dsn, min_size=1, max_size=1)
    await a.open()
    await b.open()
    try:
        yield a, b
    finally:
        await b.close()
        await a.close()


class _Probe:
    """What decide_one_of_row answered: how often from a moved row, billed after an earlier
    charge, and with a warning."""

    def __init__(self) -> None:
        self.moved = self.billed_after_charge = self.warned_moved = self.first = 0

    def wrap(self, real: Any) -> Any:
        def probed(one: Any, rules: Any, row: Any, at: int = 0, before: Any = None) -> Any:
            plan = real(one, rules, row, at, before)
            if plan is not None:
                if before is None:
                    self.first += 1
                else:
                    self.moved += 1
                    if plan.entries and before[0].entries:
                        self.billed_after_charge += 1
                    if plan.low_balance is not None:
                        self.warned_moved += 1
            return plan

        return probed


async def _setup(store: PostgresStore, aid: str, rnd: random.Random) -> dict[str, Any]:
    price = rnd.choice([1, 7, 100, 333])
    kind = "postpaid" if rnd.random() < 0.15 else "prepaid"
    balance = price * rnd.randint(2, 10) + rnd.choice([0, 0, 1, price - 1])
    k = rnd.randint(1, 4)
    threshold = rnd.choice(
        [0, balance - price * k, balance - price * k + 1, balance - price * k - 1, balance + 1]
    )
    quota = rnd.choice([0, rnd.randint(2, 12)])
    await store.create_account(
        Account(
            id=aid,
            name=aid,
            kind=kind,
            created_at=NOW,
            updated_at=NOW,
            daily_quota=quota,
            low_balance_threshold=max(threshold, 0),
            status_callback_url="http://cb.invalid/s",
        )
    )
    await store.add_key(AppKey(f"K{aid}", aid, b"sealed", "active", NOW), max_active=2)
    for name, status in (("Acme", "approved"), ("Pend", "pending")):
        await store.add_sign(Sign(aid, name, name.lower(), "company", "", status, None, None, NOW))
    await store.append_ledger(aid, topup(balance, NOW - 10, f"funds-{aid}"))
    if rnd.random() < 0.3:  # spent by the first sends, then a pocket at 0 beside the cash
        voucher = price * rnd.randint(1, 2)
        await store.append_ledger(aid, grant_voucher(voucher, NOW - 5, f"v-{aid}", None))
    return {"price": price}


def _batch(
    aid: str, i: int, rnd: random.Random, price: int, now: int, numbers: list[str], round_: int
) -> AcceptBatch:
    if numbers and rnd.random() < 0.15:
        to = rnd.choice(numbers)
    else:
        to = f"+86139{i:08d}"
        numbers.append(to)
    sign = rnd.choices(["Acme", None, "Pend", "Nope"], [80, 10, 5, 5])[0]
    m = one_part(f"{aid}-m{i:03d}", aid, to, now, sign_name=sign)
    freq = None
    if rnd.random() < 0.6:
        limits = Limits(0, 0, rnd.choice([1, 2, 50]))
        freq = adm.FrequencyRule("raw", sign, None, limits, "UTC", (to,))
    amount = rnd.choices([price, 0, price * 2, 1], [85, 5, 5, 5])[0]
    key = f"idem-{i}"
    nonce = f"n{i}"
    r = rnd.random()
    if i > 0 and r < 0.06:  # an earlier request's key (a replay, or the key's other request)
        key = f"idem-{rnd.randrange(i)}"
    elif i > 0 and r < 0.10:  # a nonce used before
        nonce = f"n{rnd.randrange(i)}"
    return AcceptBatch(
        aid,
        (m,),
        key,
        IdempotencyRecord(f"h{key}", 202, f'{{"r":{round_}}}'.encode()),
        NOW + 86_400_000,
        key_id=f"K{aid}",
        nonce=nonce,
        nonce_expires_at=now + 300_000,
        account_version=NOW,
        rules=adm.Rules(
            sign_name=sign,
            frequency=freq,
            charges=(adm.Priced(m.id, amount, rnd.random() < 0.1),),
            billing=rnd.random() < 0.92,
        ),
    )


def _answer(o: AcceptOutcome | BaseException) -> Any:
    if isinstance(o, BaseException):
        return ("raised", type(o).__name__)
    plan = o.plan
    r = o.refusal
    return (
        o.accepted,
        o.auth_refusal,
        None if o.existing is None else (o.existing.status_code, bytes(o.existing.response)),
        None if r is None else (r.code, r.message, r.retry_after),
        None
        if plan is None
        else (
            plan.day,
            plan.low_balance,
            [(m, e.kind, e.amount, e.pocket, e.at, e.ref) for m, e in plan.entries],
        ),
    )


async def _rows(store: PostgresStore, aid: str) -> list[Any]:
    rows = []
    for sql in (
        "SELECT kind, amount, pocket, at, replace(ref, $1, '') FROM ledger "
        "WHERE account_id = $1 ORDER BY id",
        "SELECT pocket, amount, expires_at FROM pockets WHERE account_id = $1 ORDER BY pocket",
        "SELECT day, messages FROM daily_counts WHERE account_id = $1 ORDER BY day",
        "SELECT low_warned_at FROM accounts WHERE id = $1",
        "SELECT replace(payload::text, $1, ''), next_attempt_at FROM webhook_outbox "
        "WHERE account_id = $1 AND kind = 'event' ORDER BY created_at, payload::text",
        "SELECT replace(id, $1, ''), recipient, sign_name, accepted_at, state FROM messages "
        "WHERE account_id = $1 ORDER BY id",
        "SELECT key, request_hash FROM idempotency WHERE account_id = $1 ORDER BY key",
        "SELECT nonce FROM nonces WHERE key_id = 'K' || $1 ORDER BY nonce",
    ):
        rows.append([tuple(r) for r in await store.pool.fetch(sql, aid)])
    return rows


async def _scenario(
    stores: tuple[PostgresStore, PostgresStore],
    aid: str,
    seed: int,
    *,
    fast: bool | None,
    probe: _Probe,
    monkeypatch: pytest.MonkeyPatch,
) -> list[Any]:
    """The seeded rounds on account `aid`: `fast` True as merged (probed), False every accept
    through `decide`, None the tree as it is (a tree before session 62 has no decide_one_of_row:
    the same scenario run there, differentially). The answers and rows after each round, the
    account's id masked."""
    store, other = stores
    if fast:
        real = postgres_rules.decide_one_of_row
        monkeypatch.setattr(postgres_rules, "decide_one_of_row", probe.wrap(real))
    elif fast is not None:  # every accept through facts_from_row, facts_after and decide
        monkeypatch.setattr(postgres_rules, "decide_one_of_row", lambda *a, **k: None)
    rnd = random.Random(seed)
    price = (await _setup(store, aid, rnd))["price"]
    answers: list[Any] = []
    numbers: list[str] = []
    i = 0
    try:
        for round_ in range(7):
            # One round across midnight now and then: the earlier accept's count is yesterday's.
            midnight = rnd.random() < 0.25
            base = MIDNIGHT - rnd.randint(1, 3) if midnight else NOW + round_ * 1_000
            batches = []
            for j in range(rnd.randint(8, 12) if midnight else rnd.randint(2, 10)):
                batches.append(_batch(aid, i, rnd, price, base + j, numbers, round_))
                i += 1
            outs = await asyncio.gather(
                *(store.accept(b, b.messages[0].accepted_at) for b in batches),
                return_exceptions=True,
            )
            # The account's id (in the message ids and refs) left out: two accounts compared.
            answers.append(repr([_answer(o) for o in outs]).replace(aid, "@"))
            answers.append(repr(await _rows(store, aid)).replace(aid, "@"))
            if rnd.random() < 0.35:  # a top-up on the other instance between groups
                amount = price * rnd.randint(1, 3) + rnd.choice([0, 1])
                await other.append_ledger(aid, topup(amount, NOW + round_, f"t{round_}-{aid}"))
    finally:
        monkeypatch.undo()
    return answers


@pytest.mark.parametrize("seeds", [range(0, 15), range(15, 30)])
async def test_moved_row_decides_as_decide(
    stores: tuple[PostgresStore, PostgresStore], monkeypatch: pytest.MonkeyPatch, seeds: range
) -> None:
    probe = _Probe()
    for seed in seeds:
        fast = await _scenario(
            stores, f"f{seed}", seed, fast=True, probe=probe, monkeypatch=monkeypatch
        )
        general = await _scenario(
            stores, f"g{seed}", seed, fast=False, probe=probe, monkeypatch=monkeypatch
        )
        for k, (a, b) in enumerate(zip(fast, general, strict=True)):
            assert a == b, (seed, k // 2, "answers" if k % 2 == 0 else "rows")
    # Not vacuous: the moved path decided, with money after money, and warned.
    assert probe.first > 10 and probe.moved > 30, vars(probe)
    assert probe.billed_after_charge > 20, vars(probe)
    assert probe.warned_moved > 0, vars(probe)


async def _dual_account(
    store: PostgresStore, aid: str, balance: int, threshold: int, quota: int
) -> None:
    await store.create_account(
        Account(
            id=aid,
            name=aid,
            created_at=NOW,
            updated_at=NOW,
            daily_quota=quota,
            low_balance_threshold=threshold,
            status_callback_url="http://cb.invalid/s",
        )
    )
    await store.add_key(AppKey(f"K{aid}", aid, b"sealed", "active", NOW), max_active=2)
    await store.append_ledger(aid, topup(balance, NOW - 10, f"funds-{aid}"))


def _dual_batch(aid: str, i: int, price: int) -> AcceptBatch:
    m = one_part(f"{aid}{i:03d}", aid, f"+86137{i:08d}", NOW + i)
    return AcceptBatch(
        aid,
        (m,),
        f"idem-{i}",
        IdempotencyRecord(f"h{i}", 202, b"{}"),
        NOW + 86_400_000,
        key_id=f"K{aid}",
        nonce=f"n{i}",
        nonce_expires_at=NOW + 300_000,
        account_version=NOW,
        rules=adm.Rules(charges=(adm.Priced(m.id, price, False),), billing=True),
    )


async def test_two_instances_add_up(stores: tuple[PostgresStore, PostgresStore]) -> None:
    """Both instances send for one account at once, each grouping its own: no charge past the
    balance, the last micro-unit taken, the quota held, one warning for the one dip, and the
    ledger, the pockets and the answers telling the same story."""
    a, b = stores
    aid = "dual"
    price, balance, threshold, quota = 7, 7 * 30, 7 * 12 + 3, 36
    await _dual_account(a, aid, balance, threshold, quota)

    outs: list[AcceptOutcome] = []
    for wave in range(4):
        calls = [
            (a if i % 2 else b).accept(_dual_batch(aid, i, price), NOW + i)
            for i in range(wave * 12, wave * 12 + 12)
        ]
        outs += await asyncio.gather(*calls)
    accepted = [o for o in outs if o.accepted]
    assert len(accepted) == 30  # the balance's 30 charges, the quota of 36 not reached
    refused = {o.refusal.code for o in outs if not o.accepted and o.refusal is not None}
    assert refused == {"INSUFFICIENT_BALANCE"}
    cash = await a.pool.fetchval(
        "SELECT amount FROM pockets WHERE account_id = $1 AND pocket = 'cash'", aid
    )
    assert cash == 0
    charges = await a.pool.fetchval(
        "SELECT count(*) FROM ledger WHERE account_id = $1 AND kind = 'charge'", aid
    )
    assert charges == 30
    assert (
        await a.pool.fetchval("SELECT messages FROM daily_counts WHERE account_id = $1", aid) == 30
    )
    warnings = [o.plan.low_balance for o in accepted if o.plan and o.plan.low_balance]
    assert warnings == [(threshold + 4, threshold - 3)]  # 91 -> 84 crosses 87: once
    events = await a.pool.fetchval(
        "SELECT count(*) FROM webhook_outbox WHERE account_id = $1 AND kind = 'event'", aid
    )
    assert events == 1


async def test_two_instances_with_top_ups_add_up(
    stores: tuple[PostgresStore, PostgresStore],
) -> None:
    """As above, with top-ups on one instance among the sends of both (each waits for the
    account's lock, so it lands between two groups): every micro-unit accounted for, the
    quota's refusals only once it is reached, a warning for each dip and its event."""
    a, b = stores
    aid = "topped"
    price, balance, threshold, quota = 11, 11 * 6 + 5, 40, 18
    await _dual_account(a, aid, balance, threshold, quota)
    rnd = random.Random(62)
    outs: list[AcceptOutcome] = []
    topped = 0
    i = 0
    for wave in range(6):
        calls: list[Any] = []
        for _ in range(10):
            calls.append((a if rnd.random() < 0.5 else b).accept(_dual_batch(aid, i, price), NOW))
            i += 1
            if rnd.random() < 0.15:
                amount = rnd.choice([price, price * 3 + 1, 50])
                topped += amount
                calls.append(b.append_ledger(aid, topup(amount, NOW, f"t{wave}-{i}")))
        outs += [o for o in await asyncio.gather(*calls) if isinstance(o, AcceptOutcome)]
    accepted = [o for o in outs if o.accepted]
    codes = {o.refusal.code for o in outs if not o.accepted and o.refusal is not None}
    assert codes <= {"INSUFFICIENT_BALANCE", "DAILY_QUOTA_EXCEEDED"}
    assert all(o.accepted or o.refusal is not None for o in outs)
    cash = await a.pool.fetchval(
        "SELECT amount FROM pockets WHERE account_id = $1 AND pocket = 'cash'", aid
    )
    assert cash == balance + topped - price * len(accepted) >= 0
    ledger = await a.pool.fetchval("SELECT sum(amount) FROM ledger WHERE account_id = $1", aid)
    assert ledger == cash
    count = await a.pool.fetchval("SELECT messages FROM daily_counts WHERE account_id = $1", aid)
    assert count == len(accepted) <= quota
    if "DAILY_QUOTA_EXCEEDED" in codes:
        assert count == quota
    charged = await a.pool.fetch(
        "SELECT ref FROM ledger WHERE account_id = $1 AND kind = 'charge' ORDER BY ref", aid
    )
    ids = await a.pool.fetch("SELECT id FROM messages WHERE account_id = $1 ORDER BY id", aid)
    assert [r[0] for r in charged] == [r[0] for r in ids]
    assert len(ids) == len(accepted)
    warnings = [o.plan.low_balance for o in accepted if o.plan and o.plan.low_balance]
    assert warnings and all(x - y == price and y < threshold for x, y in warnings)
    events = await a.pool.fetchval(
        "SELECT count(*) FROM webhook_outbox WHERE account_id = $1 AND kind = 'event'", aid
    )
    assert events == len(warnings)
