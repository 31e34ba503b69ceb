"""Accepts of one account that share a transaction decide as if they ran one after another.

On PostgreSQL the accepts of one account waiting together run in one transaction, and each
accept's writes go out with the next accept's first statement (one round trip per accept). That
statement's reads cannot see those writes, so the store moves the facts on itself
(`admission.facts_after`): today's count, the pockets, the frequency history and the rate
bucket. Here two accounts set up alike get the same requests: one account all at once (groups),
the other one at a time (each request its own transaction). Every answer, every ledger entry and
every message must be the same. The requests mix what moves: repeated numbers under frequency
limits of each kind, charges from a voucher that lapses mid-way and then from cash down to a
refusal, a daily quota, a rate, a low-balance threshold, opt-outs, replays of a nonce and of an
idempotency key, and two-recipient batches.
"""

from __future__ import annotations

import asyncio
import random
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.domain.admission import FrequencyRule, Priced, Rules  # noqa: E402
from bridge.domain.frequency import Limits  # noqa: E402
from bridge.domain.ledger import grant_voucher, topup  # noqa: E402
from bridge.store.base import Store  # noqa: E402
from bridge.store.models import (  # noqa: E402
    AcceptBatch,
    AcceptOutcome,
    Account,
    AppKey,
    IdempotencyRecord,
    NewMessage,
    NewSegment,
    Sign,
    Template,
)

engine = engines.engine
store = engines.store

NOW = 1_700_000_000_000
SEC = 1_000
MIN = 60 * SEC
DAY = 24 * 60 * MIN
LEASE = 5 * MIN
NUMBERS = ("+8613800138000", "+8613900139000", "+8613700137000", "+8613600136000")
OPTED = NUMBERS[3]
GROUPED, ONE_BY_ONE = "acc_g", "acc_s"


@dataclass(frozen=True)
class Req:
    """One request, independent of the account it is sent for."""

    i: int
    recipients: tuple[str, ...]
    style: str  # raw | verification | notification
    sign: str
    amount: int  # per message
    parts: int
    limited: bool  # a frequency rule on its numbers
    nonce: str
    key: str
    at: int


def workload(seed: int, n: int = 40) -> list[Req]:
    rng = random.Random(seed)
    out: list[Req] = []
    for i in range(n):
        two = rng.random() < 0.15
        recipients = tuple(rng.sample(NUMBERS[:3], 2)) if two else (rng.choice(NUMBERS),)
        nonce = f"n{i}"
        key = f"k{i}"
        if out and rng.random() < 0.06:
            nonce = out[rng.randrange(len(out))].nonce  # a replayed nonce
        elif out and rng.random() < 0.06:
            key = out[rng.randrange(len(out))].key  # a replayed idempotency key
        out.append(
            Req(
                i=i,
                recipients=recipients,
                style=rng.choice(("raw", "verification", "notification")),
                sign=rng.choice(("Acme", "Acme", "Beta")),
                amount=rng.choice((100, 150, 300)),
                parts=rng.choice((1, 1, 2)),
                limited=rng.random() < 0.7,
                nonce=nonce,
                key=key,
                at=NOW + i * 700,  # 28 s in all: the minute limit and the voucher's lapse move
            )
        )
    return out


async def prepare(store: Store, aid: str, *, tps: int = 3, quota: int = 30) -> None:
    """tps 3 with requests 0.7 s apart and bursts of two-recipient batches: some wait."""
    await store.create_account(
        Account(
            id=aid,
            name=f"name-{aid}",
            kind="prepaid",
            tps=tps,
            daily_quota=quota,
            status_callback_url="https://cb.example/st",
            webhook_secret_enc=b"sealed",
            created_at=NOW,
            updated_at=NOW,
            low_balance_threshold=2_000,
        )
    )
    for name in ("Acme", "Beta"):
        await store.add_sign(
            Sign(aid, name, name.lower(), "company", "", "approved", None, None, NOW)
        )
    for style in ("verification", "notification"):
        await store.add_template(
            Template(
                f"T{style[0]}-{aid}",
                aid,
                style,
                style,
                "code ${code}",
                "",
                False,
                "approved",
                None,
                NOW,
            )
        )
    await store.append_ledger(aid, topup(4_000, NOW, "funds"))
    await store.append_ledger(aid, grant_voucher(900, NOW, f"v-{aid}", NOW + 9 * SEC))
    await store.add_optouts(aid, [OPTED], "api", NOW)
    await store.add_key(AppKey(f"K-{aid}", aid, b"sealed", "active", NOW), max_active=2)


def accept_batch(aid: str, r: Req) -> AcceptBatch:
    template = None if r.style == "raw" else f"T{r.style[0]}-{aid}"
    kind = None if r.style == "raw" else r.style
    msgs = tuple(
        NewMessage(
            id=f"{aid}-m{r.i}-{j}",
            account_id=aid,
            batch_id=f"{aid}-b{r.i}",
            recipient=to,
            encoding="gsm7",
            data_coding=0,
            billable_units=r.parts,
            segments=tuple(
                NewSegment(s, r.parts, 0x40 if r.parts > 1 else 0, b"x", b"")
                for s in range(1, r.parts + 1)
            ),
            accepted_at=r.at,
            text="t",
            sign_name=r.sign,
            template=template,
            kind=kind,
            price_class="D",
        )
        for j, to in enumerate(r.recipients)
    )
    fr = None
    if r.limited:
        fkind = {"raw": "raw", "verification": "verification", "notification": "template"}[r.style]
        fr = FrequencyRule(fkind, r.sign, template, Limits(1, 3, 10), "UTC", r.recipients)
    rules = Rules(
        sign_name=r.sign,
        template_code=template,
        frequency=fr,
        charges=tuple(Priced(m.id, r.amount * r.parts, False) for m in msgs),
        billing=True,
    )
    return AcceptBatch(
        aid,
        msgs,
        f"{aid}-{r.key}",
        IdempotencyRecord(f"hash-{r.key}", 202, f"resp-{r.key}".encode()),
        NOW + DAY,
        key_id=f"K-{aid}",
        nonce=f"{aid}-{r.nonce}",
        nonce_expires_at=NOW + 5 * MIN,
        account_version=NOW,
        rules=rules,
    )


def answer(o: AcceptOutcome) -> tuple[object, ...]:
    return (
        o.accepted,
        o.refusal.code if o.refusal else None,
        round(o.refusal.retry_after, 3) if o.refusal and o.refusal.retry_after else None,
        o.auth_refusal,
        o.existing.request_hash if o.existing else None,
        round(o.retry_after, 3) if o.retry_after else None,
        o.plan.low_balance if o.plan else None,
    )


def local(aid: str, text: str | None) -> str | None:
    return text.replace(aid, "A") if text is not None else None


async def books(store: Store, aid: str) -> tuple[object, ...]:
    ledger = [
        (r.kind, r.amount, local(aid, r.pocket), local(aid, r.ref), r.at, r.expires_at)
        for r in await store.ledger_page(aid, limit=1000)
    ]
    sums = {local(aid, p): v for p, v in (await store.ledger_sums(aid)).items()}
    messages = sorted(local(aid, m.id) or "" for m in await store.list_messages(aid, limit=1000))
    return ledger, sums, messages


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_grouped_accepts_decide_as_one_at_a_time(store: Store, seed: int) -> None:
    reqs = workload(seed)
    for aid in (GROUPED, ONE_BY_ONE):
        await prepare(store, aid)
    grouped = await asyncio.gather(*(store.accept(accept_batch(GROUPED, r), r.at) for r in reqs))
    one_by_one = [await store.accept(accept_batch(ONE_BY_ONE, r), r.at) for r in reqs]
    assert [answer(o) for o in grouped] == [answer(o) for o in one_by_one]
    assert await books(store, GROUPED) == await books(store, ONE_BY_ONE)
    # The workload moved everything the decision reads: refusals of each kind came up.
    codes = {o.refusal.code for o in one_by_one if o.refusal} | {
        o.auth_refusal for o in one_by_one if o.auth_refusal
    }
    assert {"FREQUENCY_LIMIT_MINUTE", "RECIPIENT_OPTED_OUT"} <= codes, codes
    assert sum(o.accepted for o in one_by_one) >= 5
    events = [j for j in await store.claim_webhooks(NOW + DAY, 1000, LEASE) if j.kind == "event"]
    per_account = {aid: sum(j.account_id == aid for j in events) for aid in (GROUPED, ONE_BY_ONE)}
    assert per_account[GROUPED] == per_account[ONE_BY_ONE]


async def same_answers(
    store: Store, reqs: list[Req], **settings: int
) -> tuple[list[AcceptOutcome], list[AcceptOutcome]]:
    for aid in (GROUPED, ONE_BY_ONE):
        await prepare(store, aid, **settings)
    grouped = await asyncio.gather(*(store.accept(accept_batch(GROUPED, r), r.at) for r in reqs))
    one_by_one = [await store.accept(accept_batch(ONE_BY_ONE, r), r.at) for r in reqs]
    assert [answer(o) for o in grouped] == [answer(o) for o in one_by_one]
    assert await books(store, GROUPED) == await books(store, ONE_BY_ONE)
    return grouped, one_by_one


def plain(reqs: list[Req], **changes: object) -> list[Req]:
    """Unlimited free-text sends at 100, no replays, to the numbers that did not opt out."""
    base = {"limited": False, "style": "raw", "sign": "Acme", "amount": 100}
    return [
        replace(r, nonce=f"n{r.i}", key=f"k{r.i}", recipients=tuple(
            n if n != OPTED else NUMBERS[0] for n in r.recipients
        ), **{**base, **changes})  # type: ignore[arg-type]
        for r in reqs
    ]  # fmt: skip


async def test_a_group_stops_at_the_daily_quota(store: Store) -> None:
    grouped, _ = await same_answers(store, plain(workload(5, n=20)), quota=12, tps=0)
    codes = [o.refusal.code if o.refusal else None for o in grouped]
    assert codes.count(None) >= 8 and "DAILY_QUOTA_EXCEEDED" in codes, codes


async def test_a_group_keeps_the_minute_limit_of_one_number(store: Store) -> None:
    reqs = [
        replace(r, recipients=(NUMBERS[r.i // 2 % 2],), limited=True, at=NOW + r.i * 2 * SEC)
        for r in plain(workload(6, n=16))
    ]
    grouped, _ = await same_answers(store, reqs, tps=0)
    codes = [o.refusal.code if o.refusal else None for o in grouped]
    assert codes[:4] == [None, "FREQUENCY_LIMIT_MINUTE", None, "FREQUENCY_LIMIT_MINUTE"], codes


async def test_a_group_shares_the_rate_bucket(store: Store) -> None:
    reqs = [replace(r, at=NOW + r.i * 50) for r in plain(workload(7, n=20))]
    grouped, _ = await same_answers(store, reqs, tps=5)
    limited = [o for o in grouped if o.retry_after]
    assert 5 <= sum(o.accepted for o in grouped) < len(reqs) and limited


async def test_the_books_balance_when_a_group_runs_out_of_money(store: Store) -> None:
    """The same, with every request charged until the money is gone: the grouped account's
    pockets never go below zero and end where the one-at-a-time account's end."""
    reqs = [replace(r, limited=False, style="raw", amount=300) for r in workload(9, n=30)]
    for aid in (GROUPED, ONE_BY_ONE):
        await prepare(store, aid)
    grouped = await asyncio.gather(*(store.accept(accept_batch(GROUPED, r), r.at) for r in reqs))
    one_by_one = [await store.accept(accept_batch(ONE_BY_ONE, r), r.at) for r in reqs]
    assert [answer(o) for o in grouped] == [answer(o) for o in one_by_one]
    assert any(o.refusal and o.refusal.code == "INSUFFICIENT_BALANCE" for o in grouped)
    running: dict[str, int] = {}
    for row in await store.ledger_page(GROUPED, limit=1000):
        running[row.pocket] = running.get(row.pocket, 0) + row.amount
        assert running[row.pocket] >= 0, row
    assert await books(store, GROUPED) == await books(store, ONE_BY_ONE)
