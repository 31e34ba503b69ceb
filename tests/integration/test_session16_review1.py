"""Review of 3f01588: grouped PostgreSQL accepts whose writes ride with the next accept.

On PostgreSQL each accepted request's writes are sent as CTEs in front of the next accept's first
statement, whose reads cannot see them; the store moves the facts on in Python
(`admission.facts_after`) and carries the rate bucket. Each test here sends the same requests to
two accounts set up alike, one all at once (one group) and one at a time (a transaction each),
and holds them to the same answers (the whole outcome: refusal texts, retry hints, plans) and to
the same rows: ledger, pockets, messages, daily counts, nonces, idempotency records, the rate
bucket and the webhook events. The workloads aim at what the carries must get right: per-number
signs, repeated numbers under each kind of frequency rule and each window, template revisions,
unapproved signs, opt-outs, vouchers, cards, postpaid accounts, a low-balance crossing at exactly
the threshold, the daily quota across a local midnight, signed and unsigned accepts mixed,
replays; then database errors in the deferred writes, and two instances on one database.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge.domain.admission import FrequencyRule, Priced, Rules  # noqa: E402
from bridge.domain.frequency import Limits  # noqa: E402
from bridge.domain.ledger import card_purchase, grant_voucher, topup  # noqa: E402
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
from tests.store_engines import EngineHandle  # noqa: E402

engine = engines.engine
store = engines.store

NOW = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC (06:13:20 on the 15th in Shanghai)
SEC = 1_000
MIN = 60 * SEC
HOUR = 60 * MIN
DAY = 24 * HOUR
LEASE = 5 * MIN
CNY = 1_000_000
SH_MIDNIGHT = 1_700_064_000_000  # 2023-11-16 00:00 in Asia/Shanghai (2023-11-15 16:00 UTC)
X, Y, Z, W = "+8613800138000", "+8613900139000", "+8613700137000", "+8613600136000"
OPTED = "+8613500135000"
UK = "+447700900123"
G, S = "acc_g", "acc_s"  # grouped, one at a time

Build = Callable[[str], tuple[AcceptBatch, int]]
# A frequency rule: (kind, sign, template suffix, limits, numbers, per-number signs).
FreqSpec = tuple[str, str | None, str | None, Limits, tuple[str, ...], tuple[str | None, ...]]


# ---------------------------------------------------------------- accounts


@dataclass(frozen=True)
class Acct:
    kind: str = "prepaid"
    tps: int = 0
    quota: int = 0
    threshold: int = 0
    cash: int = 100 * CNY
    vouchers: tuple[tuple[str, int, int | None], ...] = ()  # (id, amount, expires_at)
    cards: tuple[str, ...] = ()
    cards_bought: tuple[tuple[str, int], ...] = ()  # (id, bought at): cards that lapse sooner
    signs: tuple[tuple[str, str], ...] = (("Acme", "approved"), ("Beta", "approved"))
    # (code suffix, kind, status, revision)
    templates: tuple[tuple[str, str, str, int], ...] = (
        ("v", "verification", "approved", 1),
        ("n", "notification", "approved", 1),
    )
    optouts: tuple[str, ...] = (OPTED,)


async def prepare(store: Store, aid: str, a: Acct) -> None:
    await store.create_account(
        Account(
            id=aid,
            name=f"name-{aid}",
            kind=a.kind,
            tps=a.tps,
            daily_quota=a.quota,
            status_callback_url="https://cb.example/st",
            webhook_secret_enc=b"sealed",
            created_at=NOW - DAY,
            updated_at=NOW - DAY,
            low_balance_threshold=a.threshold,
        )
    )
    for name, status in a.signs:
        await store.add_sign(
            Sign(aid, name, name.lower(), "company", "", status, None, None, NOW - DAY)
        )
    for suffix, kind, status, revision in a.templates:
        await store.add_template(
            Template(
                tcode(aid, suffix), aid, kind, kind, "code ${code}", "", False, status, None,
                NOW - DAY, revision=revision,
            )
        )  # fmt: skip
    if a.cash:
        await store.append_ledger(aid, topup(a.cash, NOW - DAY, "funds"))
    for vid, amount, expires in a.vouchers:
        await store.append_ledger(aid, grant_voucher(amount, NOW - DAY, f"{vid}-{aid}", expires))
    for cid in a.cards:
        await store.append_ledger(aid, card_purchase(999 * CNY, NOW - DAY, f"{cid}-{aid}"))
    for cid, bought in a.cards_bought:
        await store.append_ledger(aid, card_purchase(999 * CNY, bought, f"{cid}-{aid}"))
    if a.optouts:
        await store.add_optouts(aid, list(a.optouts), "api", NOW - DAY)
    await store.add_key(AppKey(f"K-{aid}", aid, b"sealed", "active", NOW - DAY), max_active=2)
    await store.add_key(AppKey(f"R-{aid}", aid, b"sealed", "active", NOW - DAY), max_active=2)
    assert await store.revoke_key(f"R-{aid}", NOW - DAY)


def tcode(aid: str, suffix: str | None) -> str | None:
    return None if suffix is None else f"T{suffix}-{aid}"


# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class Msg:
    to: str
    sign: str | None = "Acme"
    template: str | None = None  # suffix
    kind: str | None = None
    amount: int = 1 * CNY  # per part
    parts: int = 1
    intl: bool = False


@dataclass(frozen=True)
class Req:
    tag: str
    msgs: tuple[Msg, ...]
    at: int
    freq: FreqSpec | None = None
    sign: str | None = "Acme"
    more_signs: tuple[str, ...] = ()
    template: str | None = None
    revision: int | None = None
    tz: str = "UTC"  # the daily quota's
    ftz: str = "UTC"  # the frequency windows'
    billing: bool = True
    signed: bool = True
    nonce: str | None = None  # default: the tag
    key: str | None = field(default="same")  # "same": the tag; None: no idempotency key
    tps: float = 0.0  # unsigned accepts only
    ids: tuple[str, ...] | None = None  # message ids (default tag-j)
    app_key: str = "K"  # K: the account's key; R: its revoked key; N: no such key
    version: int = NOW - DAY  # the account's updated_at the request was validated against


def build(r: Req) -> Build:
    def make(aid: str) -> tuple[AcceptBatch, int]:
        ids = r.ids or tuple(f"{r.tag}-{j}" for j in range(len(r.msgs)))
        msgs = tuple(
            NewMessage(
                id=f"{aid}-{mid}",
                account_id=aid,
                batch_id=f"{aid}-b-{r.tag}",
                recipient=m.to,
                encoding="gsm7",
                data_coding=0,
                billable_units=m.parts,
                segments=tuple(
                    NewSegment(s, m.parts, 0x40 if m.parts > 1 else 0, b"x", b"")
                    for s in range(1, m.parts + 1)
                ),
                accepted_at=r.at,
                text="t",
                sign_name=m.sign,
                template=tcode(aid, m.template),
                kind=m.kind,
                price_class=("44" if m.intl else "D") if r.billing else None,
            )
            for mid, m in zip(ids, r.msgs, strict=True)
        )
        fr = None
        if r.freq is not None:
            kind, sign, tmpl, limits, numbers, signs = r.freq
            fr = FrequencyRule(kind, sign, tcode(aid, tmpl), limits, r.ftz, numbers, signs)
        rules = Rules(
            sign_name=r.sign,
            more_signs=r.more_signs,
            template_code=tcode(aid, r.template),
            template_revision=r.revision,
            frequency=fr,
            charges=tuple(
                Priced(nm.id, m.amount * m.parts, m.intl)
                for nm, m in zip(msgs, r.msgs, strict=True)
            ),
            billing=r.billing,
            tz=r.tz,
        )
        key = r.tag if r.key == "same" else r.key
        nonce = r.nonce or r.tag
        batch = AcceptBatch(
            aid,
            msgs,
            None if key is None else f"{aid}-{key}",
            None if key is None else IdempotencyRecord(f"hash-{key}", 202, f"resp-{key}".encode()),
            NOW + DAY,
            tps=r.tps,
            key_id=f"{r.app_key}-{aid}" if r.signed else None,
            nonce=f"{aid}-{nonce}" if r.signed else None,
            nonce_expires_at=NOW + 5 * MIN,
            account_version=r.version if r.signed else None,
            rules=rules,
        )
        return batch, r.at

    return make


# ---------------------------------------------------------------- comparing


def norm(aid: str, o: object) -> str:
    if isinstance(o, BaseException):
        return f"error:{type(o).__name__}"
    return repr(o).replace(aid, "A")


async def raw(engine: EngineHandle, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows read behind the store's back (what the Store protocol does not expose)."""
    if engine.name == "postgres":
        import asyncpg

        conn = await asyncpg.connect(engine.location)
        try:
            return [tuple(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()
    conn2 = sqlite3.connect(engine.location)
    try:
        return list(conn2.execute(re.sub(r"\$\d+", "?", sql), args).fetchall())
    finally:
        conn2.close()


async def rows(
    store: Store, engine: EngineHandle, aid: str, horizon: int = NOW
) -> dict[str, object]:
    """The account's rows. Nonces and idempotency records expired by `horizon` (the last
    request's `now`) are left out: a refused request that reused one deletes it in a group and
    restores it alone (a rollback), and either way it is free to use again."""

    def loc(v: object) -> object:
        return v.replace(aid, "A") if isinstance(v, str) else v

    ledger = [
        (r.kind, r.amount, loc(r.pocket), loc(r.ref), r.at, r.expires_at)
        for r in await store.ledger_page(aid, limit=1000)
    ]
    messages = sorted(
        (loc(m.id), m.recipient, m.sign_name, loc(m.template), m.accepted_at, m.billable_units)
        for m in await store.list_messages(aid, limit=1000)
    )
    pockets = sorted((loc(p.pocket), p.amount, p.expires_at) for p in await store.get_pockets(aid))
    counts = sorted(
        await raw(engine, "SELECT day, messages FROM daily_counts WHERE account_id = $1", aid)
    )
    nonces = sorted(
        (loc(n), e)
        for n, e in await raw(
            engine, "SELECT nonce, expires_at FROM nonces WHERE key_id = $1", f"K-{aid}"
        )
        if e > horizon
    )
    idem = sorted(
        (loc(k), h, c, bytes(r), e)
        for k, h, c, r, e in await raw(
            engine,
            "SELECT key, request_hash, status_code, response, expires_at FROM idempotency "
            "WHERE account_id = $1",
            aid,
        )
        if e > horizon
    )
    bucket = [
        (round(t, 9), round(a, 9))
        for t, a in await raw(
            engine, "SELECT tokens, at FROM rate_buckets WHERE account_id = $1", aid
        )
    ]
    return {
        "ledger": ledger,
        "sums": {loc(p): v for p, v in (await store.ledger_sums(aid)).items()},
        "pockets": pockets,
        "messages": messages,
        "daily_counts": counts,
        "nonces": nonces,
        "idempotency": idem,
        "rate_bucket": bucket,
    }


async def events(store: Store) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {G: [], S: []}
    for j in await store.claim_webhooks(NOW + 3 * DAY, 1000, LEASE):
        if j.kind == "event" and j.account_id in out:
            body = json.loads(j.payload)
            body["account"] = "A"
            out[j.account_id].append(body)
    return out


@pytest.fixture
def groups(engine: EngineHandle, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """PostgreSQL: (accepts, with savepoints) of every group transaction run."""
    seen: list[tuple[int, bool]] = []
    if engine.name == "postgres":
        import bridge.store.postgres as pg

        original = pg._run_group

        async def spy(store: Any, items: list[Any], c: Any, *, savepoints: bool = False) -> Any:
            seen.append((len(items), savepoints))
            return await original(store, items, c, savepoints=savepoints)

        monkeypatch.setattr(pg, "_run_group", spy)
    return seen


async def run_both(
    store: Store,
    engine: EngineHandle,
    acct: Acct,
    reqs: Sequence[Req],
    groups: list[tuple[int, bool]],
    *,
    before: Sequence[Req] = (),
    waves: int = 1,
) -> tuple[list[object], list[object], dict[str, list[dict[str, Any]]]]:
    """The same requests to G all at once and to S one at a time: same answers, same rows
    (`before`: accepted one at a time by both first)."""
    for aid in (G, S):
        await prepare(store, aid, acct)
        for r in before:
            assert (await store.accept(*build(r)(aid))).accepted
    groups.clear()
    builds = [build(r) for r in reqs]
    size = -(-len(builds) // waves)

    async def wave(w: int) -> list[object]:
        """The w-th slice of the requests, sent once the earlier slices' group is under way."""
        await asyncio.sleep(0.004 * w)
        part = builds[w * size : (w + 1) * size]
        return list(
            await asyncio.gather(*(store.accept(*b(G)) for b in part), return_exceptions=True)
        )

    grouped = [o for part in await asyncio.gather(*map(wave, range(waves))) for o in part]
    if engine.name == "postgres" and waves == 1:  # they did go together (the deferred path)
        assert groups and groups[0][0] == min(len(reqs), 200), groups
    grouped_runs = list(groups)
    one_by_one: list[object] = []
    for b in builds:
        try:
            one_by_one.append(await store.accept(*b(S)))
        except Exception as exc:  # compared by kind
            one_by_one.append(exc)
    assert [norm(G, o) for o in grouped] == [norm(S, o) for o in one_by_one]
    horizon = max(r.at for r in reqs)
    rg, rs = await rows(store, engine, G, horizon), await rows(store, engine, S, horizon)
    assert rg == rs
    ev = await events(store)
    assert ev[G] == ev[S]
    groups[:] = grouped_runs  # what the tests look at: the grouped account's transactions
    return grouped, one_by_one, ev


def codes(outs: Sequence[object]) -> list[str | None]:
    out: list[str | None] = []
    for o in outs:
        if isinstance(o, BaseException):
            out.append("error")
        else:
            assert isinstance(o, AcceptOutcome)
            if o.accepted:
                out.append(None)
            elif o.refusal is not None:
                out.append(o.refusal.code)
            elif o.auth_refusal is not None:
                out.append(o.auth_refusal)
            elif o.existing is not None:
                out.append("replay")
            else:
                out.append("rate")
    return out


# ---------------------------------------------------------------- frequency


def freq_case(kind: str) -> tuple[Req, ...]:
    """Multi-recipient batches with per-number signs, a number twice in one batch, and numbers
    repeated across consecutive requests, under an hour limit of 2 and a day limit of 3 (and a
    minute limit of 1), spread over three clock hours."""
    tmpl = {"verification": "v", "template": "n", "raw": None}[kind]
    mkind = {"verification": "verification", "template": "notification", "raw": None}[kind]
    lim = Limits(1, 2, 3)

    def m(to: str, sign: str = "Acme") -> Msg:
        return Msg(to, sign, tmpl, mkind)

    def r(tag: str, at: int, *ms: Msg, signs: tuple[str | None, ...] = ()) -> Req:
        numbers = tuple(x.to for x in ms)
        more = tuple(sorted({x.sign for x in ms if x.sign and x.sign != "Acme"}))
        sign = None if signs else "Acme"
        return Req(
            tag, ms, at, freq=(kind, sign, tmpl, lim, numbers, signs), more_signs=more,
            template=tmpl,
        )  # fmt: skip

    # To W, of another kind: free text for a verification rule, else a verification message.
    other = (
        Msg(W, "Acme", None, None)
        if kind == "verification"
        else Msg(W, "Acme", "v", "verification")
    )
    t = NOW + 40 * SEC  # 22:14:00 UTC, a clock minute's start
    return (
        # X under Acme and Y under Beta, per-number signs
        r("f0", t, m(X), m(Y, "Beta"), signs=("Acme", "Beta")),
        # the same number twice in one batch: both counted from the history before it
        r("f1", t + 1 * MIN, m(X), m(X), signs=("Acme", "Acme")),
        # X again in the same clock hour: the hour limit (3 sent this hour > 2)
        r("f2", t + 2 * MIN, m(X)),
        # X under Beta: another history
        r("f3", t + 2 * MIN + 5 * SEC, m(X, "Beta"), signs=("Beta",)),
        # Y under Beta in a new minute, then again in that minute
        r("f4", t + 3 * MIN, m(Y, "Beta"), signs=("Beta",)),
        r("f5", t + 3 * MIN + 10 * SEC, m(Y, "Beta"), signs=("Beta",)),
        # next clock hour (23:00): X's day limit (3 in 24 h) refuses, Y under Beta passes
        r("f6", NOW + 47 * MIN, m(X)),
        r("f7", NOW + 47 * MIN + 1 * SEC, m(Y, "Beta"), m(Z), signs=("Beta", "Acme")),
        # Z given twice under two signs: the last sign given counts (Beta: no history)
        r("f8", NOW + 48 * MIN, m(Z), m(Z, "Beta"), signs=("Acme", "Beta")),
        r("f9", NOW + 49 * MIN, m(Z, "Beta"), signs=("Beta",)),
        r("f9b", NOW + 51 * MIN, m(Z, "Beta"), signs=("Beta",)),  # f8's Beta one, f9: hour
        # Y under Beta: the day limit now (f0, f4, f7 -> 3 in 24 h)
        r("f10", NOW + 50 * MIN, m(Y, "Beta"), signs=("Beta",)),
        # one more X for this kind, after midnight UTC, still inside 24 h: day limit
        r("f12", NOW + 2 * HOUR, m(X)),
        # W: minute limit within one clock minute, then a new minute
        r("f13", NOW + 2 * HOUR + 1 * SEC, m(W)),
        r("f14", NOW + 2 * HOUR + 2 * SEC, m(W)),
        r("f15", NOW + 2 * HOUR + 61 * SEC, m(W)),
        # a message of another kind to W does not count for this kind: W's third is allowed
        Req("f16", (other,), NOW + 2 * HOUR + 2 * MIN, template=other.template),
        r("f17", NOW + 3 * HOUR, m(W)),
    )


@pytest.mark.parametrize("kind", ["verification", "template", "raw"])
async def test_frequency_windows_per_number_signs_and_repeats(
    store: Store, engine: EngineHandle, groups: list[tuple[int, bool]], kind: str
) -> None:
    grouped, _, _ = await run_both(store, engine, Acct(), freq_case(kind), groups)
    assert codes(grouped) == [
        None,  # f0
        None,  # f1: X twice, history holds one (f0)
        "FREQUENCY_LIMIT_HOUR",  # f2: X has 3 this hour
        None,  # f3: X under Beta
        None,  # f4
        "FREQUENCY_LIMIT_MINUTE",  # f5: Y under Beta, same minute as f4
        "FREQUENCY_LIMIT_DAY",  # f6: X, 3 in 24 h
        None,  # f7
        None,  # f8: Z counted under Beta (the last sign given)
        None,  # f9: Z under Beta: only f8's Beta message counts (1 this hour)
        "FREQUENCY_LIMIT_HOUR",  # f9b: f8's Beta message and f9
        "FREQUENCY_LIMIT_DAY",  # f10
        "FREQUENCY_LIMIT_DAY",  # f12: after midnight UTC, inside 24 h
        None,  # f13
        "FREQUENCY_LIMIT_MINUTE",  # f14
        None,  # f15
        None,  # f16: another kind (no rule)
        None,  # f17: W's third of this kind in 24 h (f16 not counted)
    ], codes(grouped)


# ---------------------------------------------------------------- approvals, templates, opt-outs


async def test_template_revision_unapproved_signs_and_optouts_in_one_group(
    store: Store, engine: EngineHandle, groups: list[tuple[int, bool]]
) -> None:
    acct = Acct(
        signs=(("Acme", "approved"), ("Beta", "approved"), ("Pend", "pending")),
        templates=(
            ("n", "notification", "approved", 2),
            ("p", "notification", "pending", 1),
        ),
        quota=7,
    )
    lim = Limits(1, 0, 0)

    def r(tag: str, at: int, *ms: Msg, **kw: Any) -> Req:
        numbers = tuple(x.to for x in ms)
        kw.setdefault("freq", ("template", "Acme", "n", lim, numbers, ()))
        kw.setdefault("template", "n")
        kw.setdefault("revision", 2)
        return Req(tag, ms, at, **kw)

    n = "n"
    reqs = (
        r("t0", NOW, Msg(X, template=n, kind="notification")),
        r("t1", NOW + 1, Msg(Y, template=n, kind="notification"), revision=1),  # changed
        r("t2", NOW + 2, Msg(X, template=n, kind="notification")),  # minute: t0 counted
        r("t3", NOW + 3, Msg(Y, template=n, kind="notification")),  # t1 left nothing
        r("t4", NOW + 4, Msg(Z, template=n, kind="notification"),
          Msg(W, "Pend", n, "notification"), more_signs=("Pend",)),  # sign pending
        r("t5", NOW + 5, Msg(Z, template=n, kind="notification")),
        r("t6", NOW + 6, Msg(Z, template="p", kind="notification"), template="p", revision=None,
          freq=None),  # template pending
        r("t7", NOW + 7, Msg(W, template=n, kind="notification"),
          Msg(OPTED, template=n, kind="notification")),  # opted out
        r("t8", NOW + 8, Msg(W, template=n, kind="notification"),
          Msg(W, "Beta", n, "notification"), more_signs=("Beta",)),  # W twice: 2 messages
        r("t9", NOW + 9, Msg(W, template=n, kind="notification")),  # minute (t8)
        r("t10", NOW + 10, Msg(UK, template=n, kind="notification"), sign="Nope"),  # unknown
        r("t11", NOW + 11, Msg(UK, template=n, kind="notification"),
          Msg(OPTED, template=n, kind="notification"), revision=3),  # changed before opt-out
        r("t12", NOW + 12, Msg(UK, template=n, kind="notification")),
        r("t13", NOW + 13, Msg(OPTED, template=n, kind="notification"),
          Msg(Z, template=n, kind="notification")),  # opted out before frequency
        r("t14", NOW + 14, Msg("+8613100131000", template=n, kind="notification"),
          Msg("+8613100131001", template=n, kind="notification")),  # quota (7: 6 used)
        r("t15", NOW + 15, Msg("+8613100131002", template=n, kind="notification")),  # the 7th
    )  # fmt: skip
    grouped, _, _ = await run_both(store, engine, acct, reqs, groups)
    assert codes(grouped) == [
        None,
        "TEMPLATE_CHANGED",
        "FREQUENCY_LIMIT_MINUTE",
        None,
        "SIGN_NAME_NOT_APPROVED",
        None,
        "TEMPLATE_NOT_APPROVED",
        "RECIPIENT_OPTED_OUT",
        None,
        "FREQUENCY_LIMIT_MINUTE",
        "SIGN_NAME_NOT_APPROVED",
        "TEMPLATE_CHANGED",
        None,
        "RECIPIENT_OPTED_OUT",
        "DAILY_QUOTA_EXCEEDED",
        None,
    ], codes(grouped)


# ---------------------------------------------------------------- money


async def test_vouchers_cards_international_and_a_crossing_at_exactly_the_threshold(
    store: Store, engine: EngineHandle, groups: list[tuple[int, bool]]
) -> None:
    """Available 1,450 CNY (cash 1,000, vouchers 200 lapsing at t2, 150 for a day, 100 for
    ever; a 999 card for international traffic only), threshold 1,300: t1 leaves exactly 1,300
    (no crossing), t2's voucher lapse makes the crossing (one event, the write-off once), the
    card then cash pay international traffic until the money runs out."""
    acct = Acct(
        cash=1000 * CNY,
        vouchers=(("v1", 200 * CNY, NOW + 2 * SEC), ("v2", 150 * CNY, NOW + DAY),
                  ("v3", 100 * CNY, None)),
        cards=("c1",),
        threshold=1300 * CNY,
    )  # fmt: skip

    def r(tag: str, i: int, *ms: Msg) -> Req:
        return Req(tag, ms, NOW + i * SEC)

    reqs = (
        r("m0", 0, Msg(X, amount=50 * CNY)),  # v1 150
        r("m1", 1, Msg(UK, amount=100 * CNY, intl=True)),  # v1 50: available exactly 1,300
        r("m2", 2, Msg(X, amount=10 * CNY)),  # v1 lapses now: crossing 1,300 -> 1,240
        r("m3", 3, Msg(X, amount=10 * CNY)),  # no second crossing, no second write-off
        r("m4", 4, Msg(UK, amount=500 * CNY, intl=True)),  # v2 130, v3 100, card 270
        r("m5", 5, Msg(X, amount=5 * CNY), Msg(UK, amount=800 * CNY, intl=True)),
        r("m6", 6, Msg(UK, amount=1000 * CNY, intl=True)),  # not enough
        r("m7", 7, Msg(X, amount=900 * CNY)),
        r("m8", 8, Msg(X, amount=20 * CNY), Msg(Y, amount=20 * CNY)),  # not enough
        r("m9", 9, Msg(Y, amount=12 * CNY, parts=2)),  # the last 24 CNY
        r("m10", 10, Msg(Y, amount=1)),  # not one micro-unit left
    )
    grouped, _, ev = await run_both(store, engine, acct, reqs, groups)
    assert codes(grouped) == [
        None, None, None, None, None, None, "INSUFFICIENT_BALANCE", None,
        "INSUFFICIENT_BALANCE", None, "INSUFFICIENT_BALANCE",
    ], codes(grouped)  # fmt: skip
    lows = [(i, o.plan.low_balance) for i, o in enumerate(grouped) if o.plan and o.plan.low_balance]
    assert lows == [(2, (1300 * CNY, 1240 * CNY))]
    assert [e["event"] for e in ev[G]] == ["balance.low"]
    pockets = {p.pocket: p.amount for p in await store.get_pockets(G)}
    assert pockets == {
        "cash": 0,
        "voucher:v1-acc_g": 0,
        "voucher:v2-acc_g": 0,
        "voucher:v3-acc_g": 0,
        "card:c1-acc_g": 0,
    }


async def test_a_lapsing_card_is_no_low_balance_crossing(
    store: Store, engine: EngineHandle, groups: list[tuple[int, bool]]
) -> None:
    """Cash 50 CNY under a 100 CNY threshold, and a 999 CNY card bought a year before NOW + 2 s:
    the send at NOW + 2 s writes the card off (once), and no threshold was crossed. (Session 36:
    the account, never warned and below its threshold, is warned at its first charge, once;
    the card's lapse adds no second warning. Session 37: the first charge that lowers the
    domestic balance, not the one the card paid alone: that took nothing from the balance the
    threshold watches.)"""
    year_before = NOW + 2 * SEC - 365 * DAY  # 2022-11-14: no 29 February in the year after
    acct = Acct(cash=50 * CNY, threshold=100 * CNY, cards_bought=(("c2", year_before),))
    reqs = (
        Req("k0", (Msg(UK, amount=1 * CNY, intl=True),), NOW),  # from the card
        Req("k1", (Msg(X, amount=1 * CNY),), NOW + 2 * SEC),  # the card lapses now
        Req("k2", (Msg(X, amount=1 * CNY),), NOW + 3 * SEC),
    )
    grouped, _, ev = await run_both(store, engine, acct, reqs, groups)
    assert codes(grouped) == [None, None, None]
    expired = [
        (r.kind, r.amount, r.at)
        for r in await store.ledger_page(G, limit=100)
        if r.kind == "card_expire"
    ]
    assert expired == [("card_expire", -998 * CNY, NOW + 2 * SEC)]
    lows = [o.plan.low_balance for o in grouped if isinstance(o, AcceptOutcome) and o.plan]
    assert lows == [None, (50 * CNY, 49 * CNY), None]
    assert [e["event"] for e in ev[G]] == ["balance.low"]


async def test_postpaid_domestic_accrues_international_needs_funds(
    store: Store, engine: EngineHandle, groups: list[tuple[int, bool]]
) -> None:
    acct = Acct(kind="postpaid", cash=300 * CNY, cards=(), threshold=150 * CNY, quota=0)
    reqs = tuple(
        Req(f"p{i}", ms, NOW + i * 100)
        for i, ms in enumerate(
            [
                (Msg(X, amount=500 * CNY),),  # domestic: accrues, whatever the balance
                (Msg(UK, amount=100 * CNY, intl=True),),  # 300 -> 200
                (Msg(X, amount=900 * CNY), Msg(UK, amount=50 * CNY, intl=True)),  # 150: at it
                (Msg(UK, amount=151 * CNY, intl=True),),  # refused
                (Msg(Y, amount=1 * CNY),),  # domestic still goes
                (Msg(UK, amount=100 * CNY, intl=True), Msg(UK, amount=51 * CNY, intl=True)),
                (Msg(UK, amount=100 * CNY, intl=True),),  # 50: the crossing
                (Msg(UK, amount=51 * CNY, intl=True),),  # refused
                (Msg(Z, amount=7 * CNY, parts=2),),
                (Msg(UK, amount=50 * CNY, intl=True),),  # exactly what is left
            ]
        )
    )
    grouped, _, ev = await run_both(store, engine, acct, reqs, groups)
    assert codes(grouped) == [
        None, None, None, "INSUFFICIENT_BALANCE", None, "INSUFFICIENT_BALANCE", None,
        "INSUFFICIENT_BALANCE", None, None,
    ], codes(grouped)  # fmt: skip
    assert await store.ledger_sums(G) == {"cash": 0}
    assert [(e["previous_micro"], e["available_micro"]) for e in ev[G]] == [(150 * CNY, 50 * CNY)]


async def test_several_vouchers_lapsing_inside_one_group(
    store: Store, engine: EngineHandle, groups: list[tuple[int, bool]]
) -> None:
    """Three vouchers lapse at three different requests' `now` (exactly), with sends between
    them in the same clock seconds; each write-off is made once, each at its expiry."""
    acct = Acct(
        cash=30 * CNY,
        vouchers=(("a", 5 * CNY, NOW + 1 * SEC), ("b", 5 * CNY, NOW + 2 * SEC),
                  ("c", 5 * CNY, NOW + 3 * SEC), ("d", 3 * CNY, None)),
        threshold=40 * CNY,
    )  # fmt: skip
    reqs = tuple(
        Req(f"v{i}", (Msg(X, amount=amt),), at)
        for i, (at, amt) in enumerate(
            [
                (NOW, 2 * CNY),  # a 3
                (NOW + 999, 1 * CNY),  # a 2
                (NOW + 1 * SEC, 1 * CNY),  # a lapses (2 written off): b 4
                (NOW + 1 * SEC, 1 * CNY),  # b 3
                (NOW + 2 * SEC, 1 * CNY),  # b lapses (3): c 4
                (NOW + 2 * SEC - 1, 1 * CNY),  # earlier `now`: b valid but written off: c 3
                (NOW + 3 * SEC, 6 * CNY),  # c lapses (3): d 3, cash 3
                (NOW + 3 * SEC, 28 * CNY),  # cash 27: not enough
                (NOW + 4 * SEC, 27 * CNY),
            ]
        )
    )
    grouped, _, ev = await run_both(store, engine, acct, reqs, groups)
    assert codes(grouped) == [None] * 7 + ["INSUFFICIENT_BALANCE", None], codes(grouped)
    expired = [
        (r.pocket, r.amount, r.at)
        for r in await store.ledger_page(G, limit=1000)
        if r.kind == "voucher_expire"
    ]
    assert sorted(expired) == [
        ("voucher:a-acc_g", -2 * CNY, NOW + 1 * SEC),
        ("voucher:b-acc_g", -3 * CNY, NOW + 2 * SEC),
        ("voucher:c-acc_g", -3 * CNY, NOW + 3 * SEC),
    ]
    assert [(e["previous_micro"], e["available_micro"]) for e in ev[G]] == [(41 * CNY, 37 * CNY)]


# ---------------------------------------------------------------- the daily quota at midnight


async def test_daily_quota_across_a_local_midnight_in_one_group(
    store: Store, engine: EngineHandle, groups: list[tuple[int, bool]]
) -> None:
    """Asia/Shanghai: the quota's day turns at 16:00 UTC. Requests straddle it, out of order
    inside the group; each day's count is its own."""
    M = SH_MIDNIGHT
    sh = "Asia/Shanghai"

    def r(tag: str, at: int, *tos: str) -> Req:
        return Req(tag, tuple(Msg(t) for t in tos), at, tz=sh)

    reqs = (
        r("q0", M - 3 * SEC, X, Y),  # day 1: 2
        r("q1", M + 1 * SEC, X, Y),  # day 2: 2
        r("q2", M - 2 * SEC, Z),  # day 1: 3
        r("q3", M - 1, W),  # day 1 full: refused
        r("q4", M, Z),  # day 2: 3
        r("q5", M + 2 * SEC, W),  # day 2 full: refused
        r("q6", M - 1 * SEC, X),  # day 1 full: refused
        r("q7", M + DAY - 1, X, Y),  # still day 2: refused
        r("q8", M + DAY, X, Y, Z),  # day 3
    )
    grouped, _, _ = await run_both(store, engine, Acct(quota=3), reqs, groups)
    assert codes(grouped) == [
        None, None, None, "DAILY_QUOTA_EXCEEDED", None, "DAILY_QUOTA_EXCEEDED",
        "DAILY_QUOTA_EXCEEDED", "DAILY_QUOTA_EXCEEDED", None,
    ], codes(grouped)  # fmt: skip
    assert sorted(
        await raw(engine, "SELECT day, messages FROM daily_counts WHERE account_id = $1", G)
    ) == [("2023-11-15", 3), ("2023-11-16", 3), ("2023-11-17", 3)]
    q3 = grouped[3]
    assert isinstance(q3, AcceptOutcome) and q3.refusal is not None
    assert q3.refusal.retry_after == 1.0  # 1 ms to midnight: at least a second


# ---------------------------------------------------------------- signed, unsigned, replays


async def test_signed_unsigned_unkeyed_and_replays_with_a_rate(
    store: Store, engine: EngineHandle, groups: list[tuple[int, bool]]
) -> None:
    """tps 4: the rate bucket moves through signed accepts (their writes ride along),
    unsigned ones (which flush them first; one with no rate of its own) and replays."""
    acct = Acct(tps=4, quota=0)
    lim = ("raw", "Acme", None, Limits(1, 0, 0))

    def r(tag: str, i: int, *tos: str, **kw: Any) -> Req:
        kw.setdefault("freq", (*lim, tuple(tos), ()))
        return Req(tag, tuple(Msg(t) for t in tos), NOW + i * 150, **kw)

    n = [f"+86131001310{i:02d}" for i in range(20)]
    reqs = (
        r("s0", 0, X, Y),  # bucket 4 -> 2
        r("s1", 1, Z),
        r("s2", 2, W, signed=False, tps=4.0),  # unsigned: flushes s1's writes
        r("s3", 3, n[0]),  # signed after unsigned: the bucket s2 left, carried
        r("s4", 4, n[1], key=None),  # no idempotency key
        r("s5", 5, n[2]),  # takes the last token
        r("s6", 6, n[3], key="s5"),  # the previous request's key: its answer
        r("s7", 7, n[4], nonce="s6"),  # the previous request's nonce (spent by the replay)
        r("s8", 8, X),  # X: minute limit (s0)
        r("s9", 9, n[5], nonce="s8"),  # the refused request's nonce: free again
        r("s10", 10, n[6], signed=False, tps=0.0, key=None),  # unsigned, no rate, no key
        r("s11", 11, n[7]),  # after an accept that took no token: the bucket read again
        r("s12", 12, n[8], signed=False, tps=4.0, key="s11"),  # unsigned, the previous key
        r("s13", 13, n[9], n[10], n[11]),  # 3 messages, 2.8 tokens: rate
        r("s14", 13, n[12], n[13], n[14]),  # again: rate
        r("s15", 30, n[15]),
        r("s16", 31, n[16], signed=False, tps=4.0, key=None),
        r("s17", 32, n[17], signed=False, tps=4.0),
        r("s18", 33, n[18]),
    )
    grouped, _, _ = await run_both(store, engine, acct, reqs, groups)
    assert codes(grouped) == [
        None, None, None, None, None, None, "replay", "nonce_reused", "FREQUENCY_LIMIT_MINUTE",
        None, None, None, "replay", "rate", "rate", None, None, None, None,
    ], codes(grouped)  # fmt: skip
    rated = [o for o in grouped if isinstance(o, AcceptOutcome) and o.retry_after]
    assert [round(o.retry_after, 6) for o in rated] == [0.05, 0.05]


async def test_authorisation_refusals_between_accepts(
    store: Store, engine: EngineHandle, groups: list[tuple[int, bool]]
) -> None:
    """Unknown and revoked keys and a stale account version, each right after an accept (whose
    writes ride with its statement): refused, the accept landed, the refused nonce free again.
    A 300-recipient batch (arrays) between single messages (scalars) rides along too."""
    lim = ("raw", "Acme", None, Limits(1, 0, 0), (X,), ())
    big = tuple(Msg(f"+86135{i:08d}", amount=CNY // 10) for i in range(300))
    reqs = (
        Req("a0", (Msg(X),), NOW, freq=lim),
        Req("a1", (Msg(Y),), NOW + 1, app_key="N"),  # no such key
        Req("a2", (Msg(Y),), NOW + 2),
        Req("a3", (Msg(Z),), NOW + 3, app_key="R"),  # revoked
        Req("a4", (Msg(Z),), NOW + 4),
        Req("a5", (Msg(W),), NOW + 5, version=NOW),  # stale: the fresh account comes back
        Req("a6", (Msg(W),), NOW + 6, nonce="a5"),  # the stale one's nonce: free
        Req("a7", big, NOW + 7),
        Req("a8", (Msg(X),), NOW + 8, freq=lim),  # minute limit: a0 counted
        Req("a9", big[:2], NOW + 9, ids=("a9-0", "a9-1")),
        Req("a10", (Msg(UK, amount=CNY, intl=True),), NOW + 10),
    )
    grouped, _, _ = await run_both(store, engine, Acct(quota=306), reqs, groups)
    assert codes(grouped) == [
        None,
        "unknown_key",
        None,
        "revoked",
        None,
        "stale",
        None,
        None,
        "FREQUENCY_LIMIT_MINUTE",
        None,
        "DAILY_QUOTA_EXCEEDED",
    ], codes(grouped)
    stale = grouped[5]
    assert isinstance(stale, AcceptOutcome) and stale.account is not None
    assert stale.account.updated_at == NOW - DAY


# ---------------------------------------------------------------- errors in deferred writes


TAKEN = Req("first", (Msg(W),), NOW - MIN, ids=("taken-0",))  # committed before the group
BAD = Req("bad", (Msg(Y),), NOW + 1, ids=("taken-0",))  # its writes fail (the id is taken)
# What follows the failing request in its group, i.e. what its deferred writes go out with.
FOLLOWERS: dict[str, Req | None] = {
    "signed": Req("next", (Msg(Z),), NOW + 2),
    "refused": Req("next", (Msg(OPTED),), NOW + 2),
    "frequency": Req(
        "next", (Msg(X),), NOW + 2, freq=("raw", "Acme", None, Limits(1, 0, 0), (X,), ())
    ),
    "its_key": Req("next", (Msg(Z),), NOW + 2, key="bad"),
    "its_nonce": Req("next", (Msg(Z),), NOW + 2, nonce="bad"),
    "a_replay": Req("next", (Msg(Z),), NOW + 2, key="ok0"),
    "unsigned": Req("next", (Msg(Z),), NOW + 2, signed=False),
    "unsigned_replay": Req("next", (Msg(Z),), NOW + 2, signed=False, key="ok0"),
    "nothing": None,  # the last of the group: its writes go after the loop
}


@pytest.mark.parametrize("after", list(FOLLOWERS))
async def test_an_error_in_deferred_writes_fails_only_its_request(
    store: Store, engine: EngineHandle, groups: list[tuple[int, bool]], after: str
) -> None:
    """A request whose writes fail (a message id already taken) while they ride with whatever
    follows it fails alone: the others land as one at a time, and nothing of it stays."""
    follower = FOLLOWERS[after]
    lim = ("raw", "Acme", None, Limits(1, 0, 0), (X,), ())
    reqs = [Req("ok0", (Msg(X),), NOW, freq=lim), BAD]
    if follower is not None:
        reqs += [follower, Req("ok9", (Msg(X, amount=3 * CNY),), NOW + 2 * MIN, freq=lim)]
    grouped, _, _ = await run_both(store, engine, Acct(quota=50), reqs, groups, before=[TAKEN])
    expected: list[str | None] = [None, "error"]
    if follower is not None:
        expected += [
            {"refused": "RECIPIENT_OPTED_OUT", "frequency": "FREQUENCY_LIMIT_MINUTE",
             "a_replay": "replay", "unsigned_replay": "replay"}.get(after),
            None,
        ]  # fmt: skip
    assert codes(grouped) == expected
    if engine.name == "postgres":  # the group failed, then ran again with a savepoint each
        assert groups == [(len(reqs), False), (len(reqs), True)], groups
    if after not in ("its_key", "its_nonce"):  # nothing of it stayed: nonce and key are free
        again = Req("again", (Msg(Y),), NOW + 50 * SEC, nonce="bad", key="bad")
        out = await store.accept(*build(again)(G))
        assert out.accepted, out


async def test_two_requests_of_one_group_with_the_same_message_id(
    store: Store, engine: EngineHandle, groups: list[tuple[int, bool]]
) -> None:
    """The second takes an id the first wrote in this very transaction (its writes deferred)."""
    reqs = (
        Req("d0", (Msg(X),), NOW, ids=("same",)),
        Req("d1", (Msg(Y),), NOW + 1, ids=("same",)),
        Req("d2", (Msg(Z),), NOW + 2),
        Req("d3", (Msg(W),), NOW + 3, ids=("same",)),
    )
    grouped, _, _ = await run_both(store, engine, Acct(), reqs, groups)
    assert codes(grouped) == [None, "error", None, "error"]


# ---------------------------------------------------------------- two instances


@pytest.fixture
async def stores(store: Store, engine: EngineHandle) -> AsyncIterator[list[Store]]:
    """The test's store, plus (PostgreSQL) a second instance on the same database."""
    if not engine.multi_instance:
        yield [store]
        return
    other = engine.new_store()
    await other.open()
    try:
        yield [store, other]
    finally:
        await other.close()


async def test_two_instances_keep_quota_frequency_and_balance_exact(
    stores: list[Store], engine: EngineHandle
) -> None:
    """Signed accepts for one account from two instances at once, in rounds: each round's
    totals are exact whatever the interleaving."""
    store = stores[0]
    await prepare(store, G, Acct(cash=1000 * CNY, quota=12, threshold=500 * CNY))
    # Round 1: 30 requests, quota 12 binds; X (1 per minute) is asked 10 times.
    reqs1 = [
        Req(f"a{i}", (Msg(X if i % 3 == 0 else f"+86131{i:08d}", amount=10 * CNY),), NOW + i,
            freq=("raw", "Acme", None, Limits(1, 0, 0), (X if i % 3 == 0 else f"+86131{i:08d}",),
                  ()))
        for i in range(30)
    ]  # fmt: skip
    outs = await asyncio.gather(
        *(stores[i % len(stores)].accept(*build(r)(G)) for i, r in enumerate(reqs1))
    )
    accepted = [r for r, o in zip(reqs1, outs, strict=True) if o.accepted]
    assert len(accepted) == 12
    assert sum(r.msgs[0].to == X for r in accepted) <= 1
    assert {o.refusal.code for o in outs if o.refusal} <= {
        "DAILY_QUOTA_EXCEEDED",
        "FREQUENCY_LIMIT_MINUTE",
    }
    assert len(await store.list_messages(G, limit=1000)) == 12
    assert await store.ledger_sums(G) == {"cash": 880 * CNY}
    # Round 2, the next day: balance binds (880 CNY at 100 a message, two-recipient batches).
    await store.update_account(G, {"daily_quota": 0}, NOW + DAY)
    acc = await store.get_account(G)
    assert acc is not None
    reqs2 = [
        Req(f"b{i}", (Msg(f"+86132{i:08d}", amount=100 * CNY), Msg(f"+86133{i:08d}",
            amount=100 * CNY if i % 2 else 40 * CNY)), NOW + DAY + i)
        for i in range(16)
    ]  # fmt: skip
    batches = []
    for r in reqs2:
        b, at = build(r)(G)
        from dataclasses import replace as _replace

        batches.append((_replace(b, account_version=acc.updated_at), at))
    outs2 = await asyncio.gather(
        *(stores[i % len(stores)].accept(b, at) for i, (b, at) in enumerate(batches))
    )
    spent = sum(
        sum(m.amount for m in r.msgs) for r, o in zip(reqs2, outs2, strict=True) if o.accepted
    )
    left = 880 * CNY - spent
    assert {o.refusal.code for o in outs2 if o.refusal} == {"INSUFFICIENT_BALANCE"}
    assert 0 <= left < 140 * CNY  # no batch (140 or 200) fits what is left
    assert await store.ledger_sums(G) == {"cash": left}
    running = 0
    for row in await store.ledger_page(G, limit=1000):  # in commit order: never below 0
        running += row.amount
        assert running >= 0
    low = [o for o in outs + outs2 if o.plan is not None and o.plan.low_balance is not None]
    assert len(low) == 1
    ev = [j for j in await store.claim_webhooks(NOW + 3 * DAY, 1000, LEASE) if j.kind == "event"]
    assert len(ev) == 1
    counts = dict(
        await raw(engine, "SELECT day, messages FROM daily_counts WHERE account_id = $1", G)
    )
    assert counts["2023-11-14"] == 12
    assert counts["2023-11-15"] == 2 * sum(o.accepted for o in outs2)


# ---------------------------------------------------------------- random mixes

POOL = (X, Y, Z, W, UK, X, Y, Z, W, UK, OPTED)
FKIND = {"raw": "raw", "verification": "verification", "notification": "template"}


def random_mix(seed: int, n: int = 40) -> tuple[Acct, list[Req]]:
    """Forty requests mixing everything a decision reads, half of them around a local midnight
    (the account's day in Shanghai, the frequency windows in Kolkata)."""
    rng = random.Random(seed)
    start = rng.choice((NOW, SH_MIDNIGHT - 5 * SEC))
    tz = "Asia/Shanghai" if start != NOW else "UTC"
    acct = Acct(
        kind=rng.choice(("prepaid", "prepaid", "postpaid")),
        tps=rng.choice((0, 3, 10)),
        quota=rng.choice((0, 0, 12, 25)),
        threshold=rng.choice((0, 60 * CNY, 90 * CNY)),
        cash=rng.choice((20, 50, 100)) * CNY,
        vouchers=tuple(
            (
                f"v{i}",
                rng.choice((5, 10, 20)) * CNY,
                rng.choice((None, start + rng.randrange(0, 40) * 700, start + DAY)),
            )
            for i in range(rng.randrange(0, 4))
        ),
        cards=("c1",) if rng.random() < 0.5 else (),
        signs=(("Acme", "approved"), ("Beta", "approved"), ("Pend", "pending")),
        templates=(
            ("v", "verification", "approved", 1),
            ("n", "notification", "approved", 2),
        ),
    )
    reqs: list[Req] = []
    at = start
    for i in range(n):
        at += rng.choice((0, 100, 300, 700, 1500, 20 * SEC, 61 * SEC, -500))
        style = rng.choice(("raw", "verification", "notification"))
        tmpl = {"raw": None, "verification": "v", "notification": "n"}[style]
        mkind = None if style == "raw" else style
        k = rng.choice((1, 1, 1, 2, 3))
        tos = [rng.choice(POOL) for _ in range(k)]
        names: tuple[str | None, ...] = ("Acme", "Acme", "Beta", "Beta", None)
        if rng.random() < 0.1:
            names = ("Pend",)
        signs = [rng.choice(names) for _ in range(k)]
        if rng.random() < 0.5:
            signs = [signs[0]] * k
        ms = tuple(
            Msg(t, sg, tmpl, mkind, amount=rng.choice((1, 2, 5)) * CNY,
                parts=rng.choice((1, 1, 2)), intl=t == UK)
            for t, sg in zip(tos, signs, strict=True)
        )  # fmt: skip
        fr = None
        if rng.random() < 0.7:
            fkind = FKIND[style]
            if rng.random() < 0.1:
                fkind = rng.choice(("raw", "verification", "template"))  # not the message's
            lim = rng.choice((Limits(1, 3, 5), Limits(0, 2, 4), Limits(2, 0, 3), Limits(0, 0, 2)))
            keep = [j for j in range(k) if rng.random() < 0.85]  # exempt numbers left out
            per = tuple(signs[j] for j in keep) if len(set(signs)) > 1 else ()
            ftmpl = tmpl if rng.random() < 0.9 else None
            fr = (fkind, None if per else signs[0], ftmpl, lim, tuple(tos[j] for j in keep), per)
        nonce = key = None
        if reqs and rng.random() < 0.08:
            nonce = (reqs[-1] if rng.random() < 0.6 else rng.choice(reqs)).nonce or reqs[-1].tag
        if reqs and rng.random() < 0.08:
            prev = reqs[-1] if rng.random() < 0.6 else rng.choice(reqs)
            key = prev.tag if prev.key == "same" else prev.key
        signed = rng.random() < 0.8
        reqs.append(
            Req(
                f"r{i}",
                ms,
                at,
                freq=fr,
                sign=signs[0],
                more_signs=tuple(sorted({sg for sg in signs[1:] if sg and sg != signs[0]})),
                template=tmpl,
                revision=(2 if rng.random() < 0.9 else 1) if tmpl == "n" else None,
                tz=tz,
                ftz="Asia/Kolkata" if tz != "UTC" else "UTC",
                signed=signed,
                nonce=nonce,
                key=key if key is not None else ("same" if rng.random() < 0.85 else None),
                tps=0.0 if signed else float(rng.choice((0, acct.tps))),
                billing=rng.random() < 0.9,
            )
        )
    return acct, reqs


@pytest.mark.parametrize("seed", range(int(os.environ.get("MIX_SEEDS", "6"))))
async def test_random_mixes_decide_as_one_at_a_time(
    store: Store, engine: EngineHandle, groups: list[tuple[int, bool]], seed: int
) -> None:
    acct, reqs = random_mix(seed)
    grouped, _, _ = await run_both(store, engine, acct, reqs, groups)
    assert sum(o.accepted for o in grouped if isinstance(o, AcceptOutcome)) >= 3


async def test_requests_arriving_while_a_group_runs_form_the_next_groups(
    store: Store, engine: EngineHandle, groups: list[tuple[int, bool]]
) -> None:
    """Four waves a few milliseconds apart: several groups, in arrival order, each starting from
    what the one before committed."""
    acct, reqs = random_mix(7, n=48)
    grouped, _, _ = await run_both(store, engine, acct, reqs, groups, waves=4)
    if engine.name == "postgres":
        # Each request in one first run; a run again with savepoints (a refusal after an
        # expired nonce or key was replaced, since session 18) repeats its group.
        first = [n for n, savepoints in groups if not savepoints]
        assert len(first) >= 2 and sum(first) == len(reqs), groups
    assert sum(o.accepted for o in grouped if isinstance(o, AcceptOutcome)) >= 5


async def test_a_queue_longer_than_one_group(
    store: Store, engine: EngineHandle, groups: list[tuple[int, bool]]
) -> None:
    """205 requests at once: on PostgreSQL two transactions (200 and 5); the first's last
    writes go out at its end, and the second reads them. Every fifth request goes to one of
    four numbers (3 a day each); the quota (174) stops the second group after two."""
    lim = Limits(0, 0, 3)
    numbers = (X, Y, Z, W)
    reqs = [
        Req(f"c{i}", (Msg(numbers[i % 4] if i % 5 == 0 else f"+86134{i:08d}", amount=CNY // 2),),
            NOW + i * 10,
            freq=("raw", "Acme", None, lim, (numbers[i % 4] if i % 5 == 0 else f"+86134{i:08d}",),
                  ()))
        for i in range(205)
    ]  # fmt: skip
    grouped, _, ev = await run_both(
        store, engine, Acct(quota=174, cash=100 * CNY, threshold=20 * CNY), reqs, groups
    )
    if engine.name == "postgres":
        assert groups == [(200, False), (5, False)], groups
    got = codes(grouped)
    assert got.count("FREQUENCY_LIMIT_DAY") == 41 - 12, got  # 41 to X..W, 3 each allowed
    assert got[200:] == ["FREQUENCY_LIMIT_DAY", None, None, "DAILY_QUOTA_EXCEEDED",
                         "DAILY_QUOTA_EXCEEDED"], got[200:]  # fmt: skip
    assert got.count(None) == 174
    assert await store.ledger_sums(G) == {"cash": 13 * CNY}
    assert [e["available_micro"] for e in ev[G]] == [CNY * 39 // 2]


async def test_two_instances_share_the_rate_bucket_exactly(
    stores: list[Store], engine: EngineHandle
) -> None:
    """tps 5: of 24 requests at one instant from two instances, exactly 5 messages pass (the
    bucket carried inside each group, read under its lock at each group's start)."""
    store = stores[0]
    await prepare(store, G, Acct(tps=5))
    reqs = [Req(f"t{i}", (Msg(f"+86136{i:08d}"),), NOW + 2 * SEC) for i in range(24)]
    outs = await asyncio.gather(
        *(stores[i % len(stores)].accept(*build(r)(G)) for i, r in enumerate(reqs))
    )
    assert sum(o.accepted for o in outs) == 5
    assert all(o.retry_after > 0 for o in outs if not o.accepted)
    assert len(await store.list_messages(G, limit=100)) == 5
    # 0.4 s later two more tokens (no more): a 3-message batch waits, a 2-message one passes.
    later = NOW + 2 * SEC + 400
    three = Req("u3", tuple(Msg(f"+86137{i:08d}") for i in range(3)), later)
    two = Req("u2", tuple(Msg(f"+86138{i:08d}") for i in range(2)), later)
    o3 = await stores[-1].accept(*build(three)(G))
    o2 = await store.accept(*build(two)(G))
    assert (o3.accepted, o2.accepted) == (False, True)
    assert round(o3.retry_after, 6) == 0.2


@pytest.mark.parametrize("seed", range(int(os.environ.get("MIX_SEEDS", "6")) // 2))
async def test_random_mixes_with_failing_writes(
    store: Store, engine: EngineHandle, groups: list[tuple[int, bool]], seed: int
) -> None:
    """The same mixes, with one or two requests whose writes fail (a taken message id), the
    group in waves: the rerun with savepoints answers as one at a time."""
    rng = random.Random(1000 + seed)
    acct, reqs = random_mix(1000 + seed, n=30)
    for i in rng.sample(range(len(reqs)), rng.choice((1, 2))):
        r = reqs[i]
        reqs[i] = replace(r, ids=("taken-0", *(f"{r.tag}-{j}" for j in range(1, len(r.msgs)))))
    taken = replace(TAKEN, msgs=(Msg(UK, amount=1),))
    await run_both(store, engine, acct, reqs, groups, before=[taken], waves=rng.choice((1, 2)))
