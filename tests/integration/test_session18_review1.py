"""Review (session 18): PostgreSQL accept groups against the same accepts one at a time.

Accepts of one account that wait together run in one transaction (PostgresStore._accept_group),
each accept's writes deferred into the next accept's first statement and the decision facts moved
on by `admission.facts_after`. The claim: a group decides exactly as the same accepts one at a
time, a refusal leaves no trace, an unexpected error re-runs the group with a savepoint each, and
the money is exact. Here every scenario runs three times: as one group on PostgreSQL (`gather`),
one at a time on PostgreSQL (each its own transaction), and one at a time on SQLite (the oracle);
answers, books (ledger, pockets, messages), daily counts, nonces and idempotency records must be
the same, and the money must add up.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import asyncpg
import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge.domain.admission import FrequencyRule, Priced, Rules  # noqa: E402
from bridge.domain.frequency import Limits  # noqa: E402
from bridge.domain.ledger import card_purchase, grant_voucher, topup  # noqa: E402
from bridge.store.models import (  # noqa: E402
    AcceptBatch,
    AcceptOutcome,
    Account,
    AppKey,
    DncInfo,
    IdempotencyRecord,
    NewMessage,
    NewSegment,
    Sign,
    Template,
)
from bridge.store.postgres import PostgresStore  # noqa: E402
from bridge.store.sqlite import SqliteStore  # noqa: E402
from tests import pg_reuse  # noqa: E402
from tests.sqlite_template import migrated_copy  # noqa: E402

pg_dsn = pg_reuse.migrated_pg_dsn  # a store on the worker's migrated database (tests/pg_reuse.py)

NOW = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
SEC = 1_000
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR
N = ("+8613800138000", "+8613900139000", "+8613700137000", "+8613600136000", "+8613500135000")
INTL = "+14155550100"
OPTED = N[4]


# -- the stores ------------------------------------------------------------------------------------


@pytest.fixture
async def pg(pg_dsn: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_dsn, min_size=1, max_size=6)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def lite(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    migrated_copy(tmp_path / "oracle.db")  # as a first open leaves it (tests/sqlite_template.py)
    s = SqliteStore(tmp_path / "oracle.db")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def groups(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """(size, with savepoints) of every group run: proves the accepts did go together."""
    seen: list[tuple[int, bool]] = []
    inner = PostgresStore._accept_group

    async def spy(
        self: PostgresStore, c: Any, items: list[Any], *, savepoints: bool = False
    ) -> Any:
        seen.append((len(items), savepoints))
        return await inner(self, c, items, savepoints=savepoints)

    monkeypatch.setattr(PostgresStore, "_accept_group", spy)
    return seen


# -- requests --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    i: int
    to: tuple[str, ...]
    at: int
    style: str = "raw"  # raw | verification | notification
    sign: str = "Acme"
    amount: int = 100  # per unit
    parts: int = 1
    limits: Limits | None = None  # a frequency rule on every recipient
    nonce: str = ""  # "" = n{i}
    key: str = ""  # "" = k{i}; "-" = no idempotency key
    app_key: str = "K"  # K (active) | R (revoked) | O (another account's) | X (unknown)
    version: int = NOW  # the account version the request was validated against
    signed: bool = True
    nonce_ttl: int = 5 * MIN
    idem_ttl: int = DAY
    ids: tuple[str, ...] = ()  # message ids ("" parts take the default)
    text: str = "t"
    tz: str = "UTC"
    signs: tuple[str, ...] = ()  # per-number signs of the frequency rule
    revision: int | None = None  # the template revision the request was rendered from
    more: tuple[str, ...] = ()  # further sign names of the batch


def aid_of(base: str, variant: str) -> str:
    return f"{base}{variant}"


async def prepare(
    store: Any,
    aid: str,
    *,
    tps: int = 0,
    quota: int = 0,
    cash: int = 10_000,
    voucher: int = 0,
    voucher_until: int | None = None,
    threshold: int = 0,
    kind: str = "prepaid",
    card: bool = False,
) -> None:
    await store.create_account(
        Account(
            id=aid,
            name=f"name-{aid}",
            kind=kind,
            tps=tps,
            daily_quota=quota,
            status_callback_url="https://cb.example/st",
            webhook_secret_enc=b"sealed",
            created_at=NOW,
            updated_at=NOW,
            low_balance_threshold=threshold,
        )
    )
    for name in ("Acme", "Beta", "Pend"):
        status = "pending" if name == "Pend" else "approved"
        await store.add_sign(Sign(aid, name, name.lower(), "company", "", status, None, None, NOW))
    for style in ("verification", "notification"):
        await store.add_template(
            Template(
                f"T{style[0]}-{aid}", aid, style, style, "code ${code}", "", False, "approved",
                None, NOW,
            )
        )  # fmt: skip
    if cash:
        await store.append_ledger(aid, topup(cash, NOW - 10 * SEC, "funds"))
    if voucher:
        await store.append_ledger(
            aid, grant_voucher(voucher, NOW - 10 * SEC, f"v-{aid}", voucher_until)
        )
    if card:
        await store.append_ledger(aid, card_purchase(999_000_000, NOW - 10 * SEC, f"c-{aid}"))
    await store.add_optouts(aid, [OPTED], "api", NOW - 10 * SEC)
    await store.add_key(AppKey(f"K-{aid}", aid, b"sealed", "active", NOW), max_active=3)
    await store.add_key(AppKey(f"R-{aid}", aid, b"sealed", "active", NOW), max_active=3)
    assert await store.revoke_key(f"R-{aid}", NOW)


async def other_account(store: Any, aid: str) -> None:
    """A second account whose key a request may (wrongly) carry."""
    await store.create_account(Account(id=aid, name=f"name-{aid}", created_at=NOW, updated_at=NOW))
    await store.add_key(AppKey(f"K-{aid}", aid, b"sealed", "active", NOW), max_active=3)


def batch(aid: str, r: Req, *, tps: int = 0) -> AcceptBatch:
    template = None if r.style == "raw" else f"T{r.style[0]}-{aid}"
    kind = None if r.style == "raw" else r.style
    msgs = []
    for j, to in enumerate(r.to):
        mid = r.ids[j] if j < len(r.ids) and r.ids[j] else f"m{r.i}-{j}"
        intl = to.startswith("+1")
        msgs.append(
            NewMessage(
                id=f"{aid}-{mid}",
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
                text=r.text,
                sign_name=r.sign,
                template=template,
                kind=kind,
                price_class="+1" if intl else "D",
            )
        )
    fr = None
    if r.limits is not None:
        fkind = {"raw": "raw", "verification": "verification", "notification": "template"}[r.style]
        fr = FrequencyRule(
            fkind, r.sign, template, r.limits, r.tz, tuple(dict.fromkeys(r.to)), r.signs
        )
    rules = Rules(
        sign_name=r.sign,
        more_signs=r.more,
        template_code=template,
        template_revision=r.revision if template else None,
        frequency=fr,
        charges=tuple(Priced(m.id, r.amount * r.parts, m.recipient.startswith("+1")) for m in msgs),
        billing=True,
        tz=r.tz,
    )
    key = None if r.key == "-" else f"{aid}-{r.key or f'k{r.i}'}"
    other = {"K": aid, "R": aid, "O": f"{aid}o", "X": f"{aid}x"}[r.app_key]
    app_key = "K" if r.app_key in ("O", "X") else r.app_key
    return AcceptBatch(
        aid,
        tuple(msgs),
        key,
        IdempotencyRecord(f"hash-{key}", 202, f"resp-{key}".encode()) if key else None,
        r.at + r.idem_ttl,
        tps=tps,
        key_id=f"{app_key}-{other}" if r.signed else None,
        nonce=f"{aid}-{r.nonce or f'n{r.i}'}" if r.signed else None,
        nonce_expires_at=r.at + r.nonce_ttl,
        account_version=r.version if r.signed else None,
        rules=rules,
    )


def answer(aid: str, o: AcceptOutcome | BaseException) -> tuple[object, ...]:
    if isinstance(o, BaseException):
        return ("error", type(o).__name__)
    return (
        o.accepted,
        o.refusal.code if o.refusal else None,
        round(o.refusal.retry_after, 3) if o.refusal and o.refusal.retry_after else None,
        o.refusal.message.replace(aid, "A") if o.refusal else None,
        o.auth_refusal,
        o.existing.request_hash.replace(aid, "A") if o.existing else None,
        round(o.retry_after, 3) if o.retry_after else None,
        o.plan.low_balance if o.plan else None,
        tuple((m.replace(aid, "A"), e.kind, e.amount, e.pocket.replace(aid, "A")) for m, e in
              o.plan.entries) if o.plan else None,
    )  # fmt: skip


def loc(aid: str, text: str | None) -> str | None:
    return text.replace(aid, "A") if text is not None else None


async def books(store: Any, aid: str) -> tuple[object, ...]:
    ledger = [
        (r.kind, r.amount, loc(aid, r.pocket), loc(aid, r.ref), r.at, r.expires_at)
        for r in await store.ledger_page(aid, limit=5000)
    ]
    sums = {loc(aid, p): v for p, v in (await store.ledger_sums(aid)).items()}
    pockets = {loc(aid, p.pocket): (p.amount, p.expires_at) for p in await store.get_pockets(aid)}
    messages = sorted(
        (loc(aid, m.id) or "", m.recipient, m.billable_units)
        for m in await store.list_messages(aid, limit=5000)
    )
    return ledger, sums, pockets, messages


async def check_money(store: Any, aid: str) -> None:
    """The running sums equal the ledger, and no pocket ever went below zero."""
    sums = await store.ledger_sums(aid)
    pockets = {p.pocket: p.amount for p in await store.get_pockets(aid)}
    assert {k: v for k, v in sums.items() if v} == {k: v for k, v in pockets.items() if v}
    running: dict[str, int] = {}
    for row in await store.ledger_page(aid, limit=5000):
        running[row.pocket] = running.get(row.pocket, 0) + row.amount
        assert running[row.pocket] >= 0, row


async def pg_state(dsn: str, aid: str) -> tuple[object, ...]:
    """What the Store protocol does not show: today's counts, nonces, idempotency records."""
    c = await asyncpg.connect(dsn)
    try:
        days = sorted(
            tuple(r)
            for r in await c.fetch(
                "SELECT day, messages FROM daily_counts WHERE account_id = $1", aid
            )
        )
        nonces = sorted(
            (loc(aid, r[0]), loc(aid, r[1]), r[2])
            for r in await c.fetch(
                "SELECT key_id, nonce, expires_at FROM nonces WHERE key_id LIKE $1", f"%-{aid}"
            )
        )
        idem = sorted(
            (loc(aid, r[0]), loc(aid, r[1]), r[2])
            for r in await c.fetch(
                "SELECT key, request_hash, expires_at FROM idempotency WHERE account_id = $1", aid
            )
        )
        events = await c.fetchval(
            "SELECT COUNT(*) FROM webhook_outbox WHERE account_id = $1 AND kind = 'event'", aid
        )
    finally:
        await c.close()
    return days, nonces, idem, events


async def safe_accept(store: Any, b: AcceptBatch, now: int) -> AcceptOutcome | BaseException:
    try:
        return await store.accept(b, now)
    except Exception as exc:  # an unexpected error stays with its own request
        return exc


@dataclass
class Run:
    grouped: list[Any]
    serial: list[Any]
    oracle: list[Any] = field(default_factory=list)


async def three_ways(
    pg: PostgresStore,
    lite: SqliteStore | None,
    reqs: list[Req],
    *,
    base: str = "zq",
    oracle: bool = True,
    seed: tuple[Req, ...] = (),
    **settings: Any,
) -> Run:
    """The requests as one group (G), one at a time (S) on PostgreSQL, one at a time on SQLite;
    asserts the answers and the books are the same."""
    tps = int(settings.get("tps", 0))
    g, s = aid_of(base, "g"), aid_of(base, "s")
    for aid in (g, s):
        await prepare(pg, aid, **settings)
        await other_account(pg, f"{aid}o")
        for r in seed:
            assert (await pg.accept(batch(aid, r, tps=tps), r.at)).accepted
    grouped = await asyncio.gather(*(safe_accept(pg, batch(g, r, tps=tps), r.at) for r in reqs))
    serial = [await safe_accept(pg, batch(s, r, tps=tps), r.at) for r in reqs]
    run = Run(list(grouped), serial)
    assert [answer(g, o) for o in grouped] == [answer(s, o) for o in serial]
    assert await books(pg, g) == await books(pg, s)
    assert await pg_state(pg.dsn, g) == await pg_state(pg.dsn, s)
    await check_money(pg, g)
    if oracle and lite is not None:
        o = aid_of(base, "o")
        await prepare(lite, o, **settings)
        await other_account(lite, f"{o}o")
        for r in seed:
            assert (await lite.accept(batch(o, r, tps=tps), r.at)).accepted
        run.oracle = [await safe_accept(lite, batch(o, r, tps=tps), r.at) for r in reqs]
        assert [answer(s, x) for x in serial] == [answer(o, x) for x in run.oracle]
        assert await books(pg, s) == await books(lite, o)
    return run


def codes(outs: list[Any]) -> list[object]:
    out: list[object] = []
    for o in outs:
        if isinstance(o, BaseException):
            out.append("error")
        elif o.accepted:
            out.append(None)
        elif o.refusal:
            out.append(o.refusal.code)
        elif o.auth_refusal:
            out.append(o.auth_refusal)
        elif o.existing:
            out.append("replay")
        else:
            out.append("rate")
    return out


# -- a mixed workload: everything a decision reads moves -------------------------------------------


def mixed(seed: int, n: int = 36) -> list[Req]:
    rng = random.Random(seed)
    out: list[Req] = []
    for i in range(n):
        roll = rng.random()
        to: tuple[str, ...]
        if roll < 0.15:
            to = tuple(rng.sample(N[:4], 2))
        elif roll < 0.2:
            to = (N[0], N[0])  # one number twice in a request
        elif roll < 0.27:
            to = (INTL,)
        else:
            to = (rng.choice(N),)
        style = rng.choice(("raw", "verification", "notification"))
        r = Req(
            i=i,
            to=to,
            at=NOW + i * 900 + rng.choice((0, 0, 0, -400)),  # a little out of order, sometimes
            style=style,
            sign=rng.choice(("Acme", "Acme", "Beta")),
            amount=rng.choice((100, 150, 300)),
            parts=rng.choice((1, 1, 2, 3)),
            limits=rng.choice((None, Limits(1, 3, 6), Limits(0, 2, 0), Limits(0, 0, 3))),
        )
        pick = rng.random()
        if out and pick < 0.05:
            r = replace(r, nonce=out[rng.randrange(len(out))].nonce or f"n{rng.randrange(i)}")
        elif out and pick < 0.10:
            r = replace(r, key=f"k{rng.randrange(i)}")
        elif pick < 0.13:
            r = replace(r, app_key=rng.choice(("R", "X")))
        elif pick < 0.15:
            r = replace(r, version=NOW - 1)
        elif pick < 0.20:
            r = replace(r, signed=False, key=rng.choice(("-", "")))
        out.append(r)
    return out


@pytest.mark.parametrize("seed", [11, 12, 13])
async def test_a_mixed_group_decides_as_one_at_a_time(
    pg: PostgresStore, lite: SqliteStore, groups: list[tuple[int, bool]], seed: int
) -> None:
    run = await three_ways(
        pg, lite, mixed(seed), tps=4, quota=40, cash=4_000, voucher=1_500,
        voucher_until=NOW + 12 * SEC, threshold=2_500, card=True,
    )  # fmt: skip
    got = set(codes(run.serial))
    print(seed, codes(run.serial), groups[:3])
    assert None in got and "INSUFFICIENT_BALANCE" in got, got
    assert groups[0] == (36, False), groups[:3]


async def test_a_postpaid_mixed_group_decides_as_one_at_a_time(
    pg: PostgresStore, lite: SqliteStore, groups: list[tuple[int, bool]]
) -> None:
    """Postpaid: domestic traffic accrues, international needs the card or the balance."""
    reqs = [replace(r, to=(INTL,) if r.i % 3 == 0 else r.to, amount=r.amount * 400_000)
            for r in mixed(21)]  # fmt: skip
    run = await three_ways(pg, lite, reqs, kind="postpaid", cash=0, card=True, quota=0)
    got = codes(run.serial)
    assert got.count(None) >= 10 and "INSUFFICIENT_BALANCE" in got, got
    assert groups[0][0] == len(reqs)


# -- the money at a boundary -----------------------------------------------------------------------


async def test_voucher_runs_out_mid_group_then_cash_then_nothing(
    pg: PostgresStore, lite: SqliteStore
) -> None:
    """Voucher 500, cash 800, 300 a request: voucher, voucher+cash, cash, cash (100 left), then
    a 2-part request of 200 refused, a 100 one accepted, and the balance is exactly zero."""
    reqs = [Req(i, (N[i % 3],), NOW + i * 100, amount=300) for i in range(4)]
    reqs += [Req(4, (N[0],), NOW + 400, amount=100, parts=2), Req(5, (N[1],), NOW + 500)]
    run = await three_ways(pg, lite, reqs, cash=800, voucher=500, voucher_until=NOW + DAY)
    assert codes(run.grouped) == [None, None, None, None, "INSUFFICIENT_BALANCE", None]
    spent = [
        [(str(e.kind), e.amount, e.pocket.split(":")[0]) for _m, e in o.plan.entries]
        for o in run.grouped
        if o.accepted
    ]
    assert spent == [
        [("voucher_spend", -300, "voucher")],
        [("voucher_spend", -200, "voucher"), ("charge", -100, "cash")],
        [("charge", -300, "cash")],
        [("charge", -300, "cash")],
        [("charge", -100, "cash")],
    ]
    pockets = {p.pocket.split(":")[0]: p.amount for p in await pg.get_pockets("zqg")}
    assert pockets == {"cash": 0, "voucher": 0}


async def test_refused_accept_between_two_accepted_leaves_no_trace(
    pg: PostgresStore, lite: SqliteStore
) -> None:
    """R1 is refused (one of its two numbers opted out) after R0; R2 may only pass if R1's
    would-be writes are not counted: its number's minute limit (2), the daily quota's last slot
    and the balance's last 300 all need R1 to have left nothing."""
    lim = Limits(2, 0, 0)
    reqs = [
        Req(0, (N[0],), NOW, amount=300, limits=lim),
        Req(1, (N[0], OPTED), NOW + 100, amount=300, limits=lim),
        Req(2, (N[0],), NOW + 200, amount=300, limits=lim),
        Req(3, (N[0],), NOW + 300, amount=300, limits=lim),
    ]
    run = await three_ways(pg, lite, reqs, cash=600, quota=3)
    assert codes(run.grouped) == [None, "RECIPIENT_OPTED_OUT", None, "FREQUENCY_LIMIT_MINUTE"]
    reqs2 = [replace(r, limits=None) for r in reqs]
    run = await three_ways(pg, lite, reqs2, base="zr", cash=6_000, quota=2)
    assert codes(run.grouped) == [None, "RECIPIENT_OPTED_OUT", None, "DAILY_QUOTA_EXCEEDED"]
    reqs3 = [replace(r, limits=None) for r in reqs]
    run = await three_ways(pg, lite, reqs3, base="zs", cash=600, quota=0)
    assert codes(run.grouped) == [None, "RECIPIENT_OPTED_OUT", None, "INSUFFICIENT_BALANCE"]


async def test_daily_quota_last_slot_with_multi_recipient_requests(
    pg: PostgresStore, lite: SqliteStore
) -> None:
    reqs = [
        Req(0, (N[0], N[1]), NOW),
        Req(1, (N[2], N[3], N[0]), NOW + 10),  # 5 of 6
        Req(2, (N[1], N[2]), NOW + 20),  # 7 > 6: refused
        Req(3, (N[3],), NOW + 30),  # the last slot
        Req(4, (N[3],), NOW + 40),
    ]
    run = await three_ways(pg, lite, reqs, quota=6)
    assert codes(run.grouped) == [None, None, "DAILY_QUOTA_EXCEEDED", None, "DAILY_QUOTA_EXCEEDED"]


async def test_quota_and_frequency_across_midnight_in_two_zones(
    pg: PostgresStore, lite: SqliteStore
) -> None:
    """A group that straddles midnight in Shanghai (16:00 UTC) and in UTC, requests in both
    zones: today's count moves only for requests of the day it is read for."""
    sh_midnight = 1_700_064_000_000  # 2023-11-16 00:00 Asia/Shanghai = 2023-11-15 16:00 UTC
    reqs = [
        Req(i, (N[i % 2],), sh_midnight - 2_000 + i * 400,
            tz="Asia/Shanghai" if i % 3 else "UTC", limits=Limits(0, 3, 0))
        for i in range(12)
    ]  # fmt: skip
    run = await three_ways(pg, lite, reqs, quota=4)
    got = codes(run.grouped)
    assert None in got and "DAILY_QUOTA_EXCEEDED" in got, got


# -- an unexpected error mid-group -----------------------------------------------------------------


def with_errors(where: list[int], *, nul: bool = False) -> list[Req]:
    """Ten charged requests; those in `where` fail on their writes (a message id of request 0,
    or a NUL in the text), in between refusals, replays and unsigned requests."""
    reqs = [
        Req(i, (N[i % 3],), NOW + i * 100, amount=300, limits=Limits(0, 0, 3)) for i in range(10)
    ]
    reqs[3] = replace(reqs[3], to=(N[0], OPTED))  # refused after an error's writes
    reqs[5] = replace(reqs[5], nonce="n4")  # a replayed nonce
    reqs[6] = replace(reqs[6], key="k2")  # a replayed idempotency key
    reqs[8] = replace(reqs[8], signed=False)
    for i in where:
        reqs[i] = replace(reqs[i], text="t\x00") if nul else replace(reqs[i], ids=("seed",))
    return reqs


SEED = (Req(99, (N[3],), NOW - MIN, ids=("seed",)),)  # the message id the failing ones reuse


@pytest.mark.parametrize("where", [[0], [2], [4, 7], [9], [0, 1, 2, 4, 7, 9], [7, 8]])
async def test_an_error_mid_group_stays_with_its_request(
    pg: PostgresStore, groups: list[tuple[int, bool]], where: list[int]
) -> None:
    reqs = with_errors(where)
    run = await three_ways(pg, None, reqs, cash=2_000, voucher=400, voucher_until=NOW + DAY,
                           threshold=1_500, seed=SEED)  # fmt: skip
    got = codes(run.grouped)
    assert [i for i, c in enumerate(got) if c == "error"] == where, got
    assert all(type(run.grouped[i]).__name__ == "UniqueViolationError" for i in where)
    assert got.count(None) >= 2
    assert [x for x in groups if x[0] == 10][:2] == [(10, False), (10, True)], groups


async def test_a_nul_in_the_text_mid_group_stays_with_its_request(
    pg: PostgresStore, groups: list[tuple[int, bool]]
) -> None:
    reqs = with_errors([4], nul=True)
    run = await three_ways(pg, None, reqs, cash=2_000)
    assert codes(run.grouped)[4] == "error"
    assert codes(run.grouped).count(None) >= 4
    assert groups[:2] == [(10, False), (10, True)], groups[:3]


# -- two daemons on one database -------------------------------------------------------------------


@pytest.fixture
async def pg2(pg_dsn: str, pg: PostgresStore) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(pg_dsn, min_size=1, max_size=6)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def test_two_daemons_share_the_balance_the_nonces_and_the_keys(
    pg: PostgresStore, pg2: PostgresStore, groups: list[tuple[int, bool]]
) -> None:
    """Two instances each group accepts of one account at once; requests 6..11 reach both (same
    nonce, same idempotency key). The money covers 10 of the 18 distinct requests; the one
    number under a 1-per-minute limit gets one message."""
    aid = "zqg"
    await prepare(pg, aid, cash=3_000)
    reqs = [Req(i, (N[i % 3 + 1],), NOW + i * 50, amount=300) for i in range(18)]
    reqs[2] = replace(reqs[2], to=(N[0],), limits=Limits(1, 0, 0))
    reqs[9] = replace(reqs[9], to=(N[0],), limits=Limits(1, 0, 0))
    reqs[15] = replace(reqs[15], to=(N[0],), limits=Limits(1, 0, 0))
    first = [safe_accept(pg, batch(aid, r), r.at) for r in reqs[:12]]
    second = [safe_accept(pg2, batch(aid, r), r.at) for r in reqs[6:]]
    outs = await asyncio.gather(*first, *second)
    assert not any(isinstance(o, BaseException) for o in outs), outs
    by_req: dict[int, list[AcceptOutcome]] = {}
    for r, o in zip([*reqs[:12], *reqs[6:]], outs, strict=True):
        by_req.setdefault(r.i, []).append(o)  # type: ignore[arg-type]
    accepted = sorted(i for i, os in by_req.items() for o in os if o.accepted)
    assert len(accepted) == len(set(accepted)), accepted  # none twice
    assert sum(i in accepted for i in (2, 9, 15)) == 1, accepted
    msgs = await pg.list_messages(aid, limit=100)
    assert len(msgs) == len(accepted) == 10, (accepted, codes(outs))
    await check_money(pg, aid)
    assert {p.pocket: p.amount for p in await pg.get_pockets(aid)} == {"cash": 0}
    days, nonces, idem, _events = await pg_state(pg.dsn, aid)
    assert days == [("2023-11-14", 10)]
    assert len(idem) == 10 and len(nonces) >= 10
    assert max(n for n, _s in groups) > 1


async def test_two_daemons_retrying_with_the_same_idempotency_keys(
    pg: PostgresStore, pg2: PostgresStore
) -> None:
    """Each request sent to both daemons at once (a client's retry: a new nonce, the same key),
    a daily quota of 7 and a balance for 6: each key accepted at most once, the other copy
    answered with its record, and the account never goes past either limit."""
    aid = "zqg"
    await prepare(pg, aid, cash=1_800, quota=7)
    reqs = [Req(i, (N[i % 4],), NOW + i * 20, amount=300) for i in range(12)]
    a = [safe_accept(pg, batch(aid, r), r.at) for r in reqs]
    b = [safe_accept(pg2, batch(aid, replace(r, nonce=f"b{r.i}")), r.at + 1) for r in reqs]
    outs = await asyncio.gather(*a, *b)
    assert not any(isinstance(o, BaseException) for o in outs), outs
    for i in range(12):
        pair = [outs[i], outs[12 + i]]
        assert sum(o.accepted for o in pair) <= 1, (i, codes(pair))
        if any(o.accepted for o in pair):
            other = next(o for o in pair if not o.accepted)
            # A replay, or refused before the copy that was accepted was decided.
            assert (other.existing is not None) != (other.refusal is not None), codes(pair)
            if other.existing is not None:
                assert other.existing.request_hash == f"hash-{aid}-k{i}"
    assert sum(o.accepted for o in outs) == 6, codes(outs)
    await check_money(pg, aid)
    assert {p.pocket: p.amount for p in await pg.get_pockets(aid)} == {"cash": 0}
    days, _nonces, idem, _events = await pg_state(pg.dsn, aid)
    assert days == [("2023-11-14", 6)] and len(idem) == 6


# -- expired nonces and idempotency records ------------------------------------------------------
# A refused accept of a group takes its head writes back with a DELETE (_FORGET_HEAD), not a
# rollback: when its insert had replaced an expired row (ON CONFLICT ... WHERE expires_at <= now),
# that earlier row is gone instead of restored. One at a time (a rollback) it stays; a request
# dated a little earlier (requests are dated as they arrive, on hosts whose clocks differ, and
# queue out of order) then still finds it. Low impact: the sweep purges expired rows anyway, and
# the SQLite engine's bare accepts do the same even one at a time.


async def test_a_refusal_does_not_forget_an_expired_idempotency_record(
    pg: PostgresStore, lite: SqliteStore
) -> None:
    """R0 (key k, record valid until +1 s) is accepted; R1 (same key, at +1 s: the record has
    expired, so it is replaced) is refused; R2 (same key, dated +0.5 s) must still see R0's
    record, as it does one at a time. In the group it was accepted, a second send, and SQLite
    did the same one at a time (both deleted the record R1 had replaced; fixed in session 18)."""
    reqs = [
        Req(0, (N[0],), NOW, idem_ttl=1_000),
        Req(1, (OPTED,), NOW + 1_000, key="k0"),
        Req(2, (N[1],), NOW + 500, key="k0"),
    ]
    run = await three_ways(pg, lite, reqs)
    assert codes(run.serial) == [None, "RECIPIENT_OPTED_OUT", "replay"]


async def test_a_refusal_does_not_forget_an_expired_nonce(
    pg: PostgresStore, lite: SqliteStore
) -> None:
    """The same with the nonce: R2 replays R0's nonce within R0's window of validity."""
    reqs = [
        Req(0, (N[0],), NOW, nonce_ttl=1_000),
        Req(1, (OPTED,), NOW + 1_000, nonce="n0"),
        Req(2, (N[1],), NOW + 500, nonce="n0"),
    ]
    run = await three_ways(pg, lite, reqs)
    assert codes(run.serial) == [None, "RECIPIENT_OPTED_OUT", "nonce_reused"]


# -- the rate bucket, the windows, more than one transaction ---------------------------------------


async def test_the_rate_bucket_with_batches_refusals_and_unsigned_requests(
    pg: PostgresStore, lite: SqliteStore
) -> None:
    """tps 3: requests 120 ms apart, some of two or three numbers, a refusal or an auth failure
    in between (they take no token), some unsigned (their own tps, the same here)."""
    rng = random.Random(5)
    reqs = []
    for i in range(30):
        to = tuple(rng.sample(N[:4], rng.choice((1, 1, 1, 2, 3))))
        r = Req(i, to, NOW + i * 120)
        if i % 7 == 3:
            r = replace(r, to=(*to, OPTED))
        if i % 9 == 4:
            r = replace(r, app_key="R")
        if i % 5 == 1:
            r = replace(r, signed=False)
        reqs.append(r)
    run = await three_ways(pg, lite, reqs, tps=3)
    got = codes(run.grouped)
    assert got.count("rate") >= 5 and got.count(None) >= 5, got


async def test_first_of_a_group_refused_by_auth_then_the_rate(
    pg: PostgresStore, lite: SqliteStore
) -> None:
    """The group's first accepts fail before or after taking the account's lock (unknown key,
    revoked key, stale version, unsigned replay): the later ones still decide as alone."""
    reqs = [
        Req(0, (N[0],), NOW, app_key="X"),
        Req(1, (N[1],), NOW + 10, app_key="R"),
        Req(2, (N[2],), NOW + 20, version=NOW + 1),
        Req(3, (N[0], N[1]), NOW + 30, limits=Limits(1, 0, 0)),
        Req(4, (N[0],), NOW + 40, limits=Limits(1, 0, 0)),
        Req(5, (N[2],), NOW + 50),
        Req(6, (N[3],), NOW + 60, signed=False, key="k3"),
        Req(7, (N[3],), NOW + 600),
        Req(8, (N[3],), NOW + 800),
    ]
    run = await three_ways(pg, lite, reqs, tps=2)
    assert codes(run.grouped) == [
        "unknown_key", "revoked", "stale", None, "FREQUENCY_LIMIT_MINUTE", "rate", "replay",
        None, "rate",
    ]  # fmt: skip


async def test_a_key_of_another_account_in_a_group(
    pg: PostgresStore, lite: SqliteStore, tmp_path: Path
) -> None:
    """Unreachable from the API (the account comes from the key); SQLite accepted such a batch
    until session 18 (its authorisation read the key alone), PostgreSQL never did."""
    reqs = [Req(i, (N[i % 4],), NOW + i, app_key="O" if i in (0, 2, 5) else "K") for i in range(7)]
    run = await three_ways(pg, lite, reqs)
    db = sqlite3.connect(str(tmp_path / "oracle.db"))
    try:  # the refused ones spent no nonce (only the accepted requests' are stored)
        assert db.execute("SELECT COUNT(*) FROM nonces").fetchone() == (4,)
    finally:
        db.close()
    assert codes(run.grouped) == [
        "unknown_key",
        None,
        "unknown_key",
        None,
        None,
        "unknown_key",
        None,
    ]


async def seed_history(store: Any, aid: str, times: list[int], to: str) -> None:
    for j, t in enumerate(times):
        r = Req(900 + j, (to,), t, style="verification")
        out = await store.accept(batch(aid, r), t)
        assert out.accepted, out


async def test_hour_and_rolling_day_windows_move_within_a_group(
    pg: PostgresStore, lite: SqliteStore
) -> None:
    """Yesterday's sends leave the rolling day one by one while the group runs, and the group
    crosses an hour boundary: the limits 0/2/4 (minute/hour/day) open and close as alone."""
    hour = NOW - NOW % HOUR + HOUR  # the next clock hour
    start = hour - 3 * SEC
    old = [start - DAY + k * 1_000 for k in range(1, 5)]  # leave the day at start+1s..+4s
    lim = Limits(0, 2, 4)
    reqs = [
        Req(i, (N[i % 2],), start + i * 500, style="verification", limits=lim) for i in range(14)
    ]
    g, s, o = "zqg", "zqs", "zqo"
    for store, aid in ((pg, g), (pg, s), (lite, o)):
        await prepare(store, aid)
        await seed_history(store, aid, old, N[0])
    grouped = await asyncio.gather(*(safe_accept(pg, batch(g, r), r.at) for r in reqs))
    serial = [await safe_accept(pg, batch(s, r), r.at) for r in reqs]
    oracle = [await safe_accept(lite, batch(o, r), r.at) for r in reqs]
    assert [answer(g, x) for x in grouped] == [answer(s, x) for x in serial]
    assert [answer(s, x) for x in serial] == [answer(o, x) for x in oracle]
    assert await books(pg, g) == await books(pg, s) == await books(lite, o)
    got = codes(grouped)
    assert {"FREQUENCY_LIMIT_HOUR", "FREQUENCY_LIMIT_DAY", None} <= set(got), got


async def test_per_number_signs_in_a_group(pg: PostgresStore, lite: SqliteStore) -> None:
    """A batch whose numbers are counted under different signs (SendBatchSms)."""
    lim = Limits(1, 0, 0)
    reqs = [
        Req(0, (N[0], N[1]), NOW, limits=lim, signs=("Acme", "Beta")),
        Req(1, (N[1],), NOW + 10, sign="Acme", limits=lim),
        Req(2, (N[1],), NOW + 20, sign="Beta", limits=lim),
        Req(3, (N[0],), NOW + 30, sign="Beta", limits=lim),
        Req(4, (N[0], N[1]), NOW + 40, limits=lim, signs=("Beta", "Acme")),
        Req(5, (N[0],), NOW + 50, sign="Acme", limits=lim),
    ]
    run = await three_ways(pg, lite, reqs)
    assert codes(run.grouped)[0] is None


async def test_more_than_one_transaction_of_accepts(
    pg: PostgresStore, lite: SqliteStore, groups: list[tuple[int, bool]]
) -> None:
    """205 accepts at once: two transactions (_GROUP_MAX 200); the money and the quota run out
    around the boundary."""
    reqs = [Req(i, (N[i % 4],), NOW + i * 5, amount=100) for i in range(205)]
    reqs[199] = replace(reqs[199], to=(N[0], N[1]))
    reqs[200] = replace(reqs[200], nonce="n199")
    reqs[203] = replace(reqs[203], to=(N[2], N[3]))
    run = await three_ways(pg, lite, reqs, cash=20_250, quota=203)
    got = codes(run.grouped)
    assert got[197:] == [None, None, None, "nonce_reused", None, "INSUFFICIENT_BALANCE",
                         "DAILY_QUOTA_EXCEEDED", "INSUFFICIENT_BALANCE"], got[197:]  # fmt: skip
    assert groups[:2] == [(200, False), (5, False)], groups[:3]


# -- facts no accept writes, read by the later accepts' first statement ----------------------------


async def test_revisions_more_signs_and_do_not_contact_in_a_group(
    pg: PostgresStore, lite: SqliteStore
) -> None:
    """What only other transactions write (a template's revision, a sign's approval, the
    do-not-contact lists) is read by every accept of a group, in its shared first statement."""
    for store in (pg, lite):
        await store.import_dnc(DncInfo("L1", "reg", "CN", 1, 1, NOW - 1), [N[3]], ["+86135"])
    reqs = [
        Req(0, (N[0],), NOW, style="verification", revision=1),
        Req(1, (N[1],), NOW + 10, style="verification", revision=2),
        Req(2, (N[0], N[1]), NOW + 20, more=("Beta",)),
        Req(3, (N[0], N[1]), NOW + 30, more=("Pend",)),
        Req(4, (N[3],), NOW + 40),
        Req(5, (N[2], N[4]), NOW + 50),  # opted out before blocked
        Req(6, (N[2], "+8613512345678"), NOW + 60),  # a blocked prefix
        Req(7, (N[2],), NOW + 70, style="notification", revision=1, limits=Limits(0, 0, 1)),
        Req(8, (N[2],), NOW + 80, style="notification", revision=1, limits=Limits(0, 0, 1)),
    ]
    run = await three_ways(pg, lite, reqs)
    assert codes(run.grouped) == [
        None, "TEMPLATE_CHANGED", None, "SIGN_NAME_NOT_APPROVED", "RECIPIENT_BLOCKED",
        "RECIPIENT_OPTED_OUT", "RECIPIENT_BLOCKED", None, "FREQUENCY_LIMIT_DAY",
    ]  # fmt: skip


async def test_a_do_not_contact_import_racing_a_group(pg: PostgresStore) -> None:
    """A list imported while a group of accepts to the number it blocks is in flight: each
    message is refused, or accepted and then ended by the import (refunded); none stays queued
    and the money adds up."""
    aid = "zqg"
    await prepare(pg, aid, cash=100_000)
    reqs = [Req(i, (N[2],), NOW + i * 10) for i in range(40)]
    tasks = [asyncio.ensure_future(safe_accept(pg, batch(aid, r), r.at)) for r in reqs]
    await asyncio.sleep(0.005)
    imported = asyncio.ensure_future(
        pg.import_dnc(DncInfo("L2", "reg", "CN", 1, 0, NOW), [N[2]], [])
    )
    late = [Req(40 + i, (N[2],), NOW + 500 + i) for i in range(5)]
    tasks += [asyncio.ensure_future(safe_accept(pg, batch(aid, r), r.at)) for r in late]
    outs = await asyncio.gather(*tasks)
    ended = await imported
    assert not any(isinstance(o, BaseException) for o in outs), outs
    accepted = sum(o.accepted for o in outs)
    assert ended == accepted, (ended, codes(outs))
    assert all(o.accepted or o.refusal.code == "RECIPIENT_BLOCKED" for o in outs), codes(outs)
    msgs = await pg.list_messages(aid, limit=100)
    assert all(m.state == "expired" for m in msgs), [m.state for m in msgs]
    await check_money(pg, aid)
    assert {p.pocket: p.amount for p in await pg.get_pockets(aid)} == {"cash": 100_000}


async def test_a_disabled_account_refuses_a_whole_group_without_a_trace(
    pg: PostgresStore, lite: SqliteStore
) -> None:
    """Disabled before the group: every accept refused, no nonce spent, no key stored."""
    reqs = [Req(i, (N[i % 3],), NOW + i, key="k1" if i == 4 else "") for i in range(6)]
    reqs[2] = replace(reqs[2], nonce="n1")

    async def disable(store: Any, aid: str) -> None:
        assert await store.update_account(aid, {"status": "disabled"}, NOW + 1)

    g, s, o = "zqg", "zqs", "zqo"
    for store, aid in ((pg, g), (pg, s), (lite, o)):
        await prepare(store, aid)
        await disable(store, aid)
    grouped = await asyncio.gather(*(safe_accept(pg, batch(g, r), r.at) for r in reqs))
    serial = [await safe_accept(pg, batch(s, r), r.at) for r in reqs]
    oracle = [await safe_accept(lite, batch(o, r), r.at) for r in reqs]
    assert codes(grouped) == codes(serial) == codes(oracle) == ["disabled"] * 6
    assert await pg_state(pg.dsn, g) == await pg_state(pg.dsn, s) == ([], [], [], 0)


async def test_an_account_disabled_while_a_group_is_in_flight(pg: PostgresStore) -> None:
    """The disable waits for the group (the account lock), then ends what it accepted and
    refunds it; the accepts after it are refused: none of the account's messages stays queued."""
    aid = "zqg"
    await prepare(pg, aid, cash=100_000)
    first = [asyncio.ensure_future(safe_accept(pg, batch(aid, r), r.at))
             for r in (Req(i, (N[i % 3],), NOW + i, amount=300) for i in range(40))]  # fmt: skip
    await asyncio.sleep(0.005)
    disabling = asyncio.ensure_future(pg.update_account(aid, {"status": "disabled"}, NOW + 1))
    await asyncio.sleep(0.005)
    after = [Req(40 + i, (N[0],), NOW + 100 + i, amount=300) for i in range(5)]
    later = [asyncio.ensure_future(safe_accept(pg, batch(aid, r), r.at)) for r in after]
    outs = await asyncio.gather(*first, *later)
    await disabling
    assert not any(isinstance(o, BaseException) for o in outs), outs
    assert any(o.accepted for o in outs), codes(outs)
    assert all(o.accepted or o.auth_refusal in ("disabled", "stale") for o in outs), codes(outs)
    msgs = await pg.list_messages(aid, limit=100)
    assert len(msgs) == sum(o.accepted for o in outs)
    assert all(m.state != "queued" for m in msgs), [m.state for m in msgs]
    await check_money(pg, aid)
    assert {p.pocket: p.amount for p in await pg.get_pockets(aid)} == {"cash": 100_000}
