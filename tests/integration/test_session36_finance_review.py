"""Session 36 review: a reseller's finance controller on the money an operator handles, each
finding a test on both store engines (a real SQLite file, a real PostgreSQL cluster) behind the
real aiohttp app (conftest.engine_api), or on the store itself where the daemon's loops play
their part (the sweep, grouped accepts).

1. The low-balance warning fired only on the step across the threshold: an account created
   below its threshold (or whose threshold was raised over its balance, or topped up to a level
   still under it) was never warned, however low it went. Now the first charge or expiry that
   leaves the balance below the threshold warns, once per dip: the account keeps a mark
   (accounts.low_warned_at, migration 0020) set in the warning's transaction and cleared by a
   credit that brings the balance back to or over the threshold, or by a new threshold.
2. The admin API's money answers (top-up, voucher, card sale) listed what was `added` without
   the `ref` each entry carries (the payment it was recorded under, or the voucher's or card's
   id): a payment system could not match the answer to the ledger line. The CLI printed it.
3. A month not ready for settlement said "month: 2 message(s) of 2026-03 still await their
   outcome" for five: SettlementNotReady counted the store's usage groups (one per traffic,
   state and tariff period), not messages. It counts messages now, and the not_ready result
   carries the number (`pending_messages`).
4. Closing an account left its cash, vouchers and cards in its pockets with no ledger entry
   saying where the money went, though a closed account can take and spend nothing: the
   operator had no record of what to pay back, and the books carried money nobody held. The
   close now writes the pockets off in its own transaction (cash `closed`, owed back and named
   in the answer; vouchers and cards void), as does any credit after it (a late refund, a
   settlement); `bill check` fails on a closed account holding money; migration 0020 writes off
   accounts closed before.
"""

from __future__ import annotations

import base64
import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from tests.integration.conftest import ApiServer, Clock, start_api  # noqa: E402
from tests.integration.test_billing_flow import (  # noqa: E402
    APRIL,
    MARCH,
    funded,
    number,
    receipt,
    result_for,
    send_ok,
    settle,
    submit,
)
from tests.integration.test_cli_rules import cfg, create_accounts, db, ok, run_all  # noqa: E402
from tests.integration.test_session16_review1 import (  # noqa: E402
    CNY,
    NOW,
    SEC,
    Acct,
    G,
    Msg,
    Req,
    X,
    Y,
    Z,
    groups,
    prepare,
    run_both,
)
from tests.store_engines import schema_before  # noqa: E402

engine = engines.engine
store = engines.store
groups = groups  # the fixtures, re-exported for this module's tests
cfg = cfg

HOOK = "https://example.com/hook"
LEASE = 300_000


async def _warnings(api: ApiServer, account_id: str) -> list[tuple[int, int]]:
    """(previous, available) of the balance.low events queued for the account since the last
    call (claimed: each is returned once)."""
    now = api.ctx.now_ms()
    jobs = await api.store.claim_webhooks(now, 1000, LEASE)
    await api.store.webhook_done([j.id for j in jobs], now)  # delivered: not claimed again
    mine = [json.loads(j.payload) for j in jobs if (j.kind, j.account_id) == ("event", account_id)]
    low = [b for b in mine if b["event"] == "balance.low"]
    return [(b["previous_micro"], b["available_micro"]) for b in low]


async def _admin_ok(api: ApiServer, method: str, path: str, body: dict[str, Any]) -> Any:
    r = await api.admin(method, path, json=body)
    assert r.status in (200, 201), r.json
    return r.json


# -- 1. the low-balance warning of an account that was never above its threshold ------------


async def test_an_account_never_above_its_threshold_is_warned_once_per_dip(
    engine_api: ApiServer, clock: Clock
) -> None:
    clock.freeze(MARCH)
    api = engine_api
    price = 45_000
    creds = await funded(
        api, 300_000, low_balance_threshold=1_000_000, status_callback_url=HOOK
    )  # created below its threshold
    acc = f"/admin/accounts/{creds.account.id}"
    await send_ok(api, creds, number(1))
    # Observed: [] (no charge crossed the threshold: the account was never above it).
    assert await _warnings(api, creds.account.id) == [(300_000, 300_000 - price)]
    await send_ok(api, creds, number(2))
    assert await _warnings(api, creds.account.id) == []  # the same dip: silent
    # Topped up to a level still below: the same dip, no second warning.
    await _admin_ok(api, "POST", f"{acc}/topups", {"amount_micro": 100_000})
    await send_ok(api, creds, number(3))
    assert await _warnings(api, creds.account.id) == []
    # A new threshold is a new dip to warn of (raised over a balance already below the old).
    await _admin_ok(api, "PATCH", acc, {"low_balance_threshold": 2_000_000})
    left = 300_000 + 100_000 - 3 * price
    await send_ok(api, creds, number(4))
    assert await _warnings(api, creds.account.id) == [(left, left - price)]
    # Back over the threshold and down again: the crossing warns, as before.
    top = 2_010_000  # just over the threshold
    await _admin_ok(api, "POST", f"{acc}/topups", {"amount_micro": top - (left - price)})
    await send_ok(api, creds, number(5))
    assert await _warnings(api, creds.account.id) == [(top, top - price)]
    await send_ok(api, creds, number(6))
    assert await _warnings(api, creds.account.id) == []


async def test_a_voucher_that_ends_the_dip_rearms_the_warning(
    engine_api: ApiServer, clock: Clock
) -> None:
    """After a warned dip, a voucher that takes the balance over the threshold ends it: when the
    voucher lapses (the sweep) and the balance falls under again, that is a new dip, warned."""
    clock.freeze(MARCH)
    api = engine_api
    creds = await funded(api, 100_000, low_balance_threshold=500_000, status_callback_url=HOOK)
    acc = f"/admin/accounts/{creds.account.id}"
    await send_ok(api, creds, number(1))
    assert await _warnings(api, creds.account.id) == [(100_000, 55_000)]
    # A voucher (valid an hour) brings the balance over the threshold: the dip is over.
    expires = api.ctx.now_ms() + 3_600_000
    await _admin_ok(
        api, "POST", f"{acc}/vouchers", {"amount_micro": 1_000_000, "expires_at": expires}
    )
    clock.advance(7200)  # the voucher lapses: 55,000 left, under the threshold again
    swept = await api.store.sweep(api.ctx.now_ms(), 72 * 3_600_000)
    assert [(w.account_id, w.before, w.after) for w in swept["low_balance"]] == [
        (creds.account.id, 1_055_000, 55_000)
    ]
    assert await _warnings(api, creds.account.id) == [(1_055_000, 55_000)]


async def test_a_voucher_expiry_below_a_threshold_never_reached_warns_once(
    store: Any, engine: Any
) -> None:
    """The sweep's write-off of a lapsed voucher leaves an account below a threshold it was
    never above: the first expiry warns, the second (same dip) does not."""
    acct = Acct(
        cash=1 * CNY,
        threshold=10 * CNY,
        vouchers=(("v1", 2 * CNY, NOW + 10 * SEC), ("v2", 2 * CNY, NOW + 20 * SEC)),
    )
    await prepare(store, G, acct)
    first = await store.sweep(NOW + 11 * SEC, 72 * 3_600_000)
    # Observed: [] (5 CNY to 3 CNY is no crossing of 10 CNY).
    assert [(w.account_id, w.before, w.after) for w in first["low_balance"]] == [
        (G, 5 * CNY, 3 * CNY)
    ]
    second = await store.sweep(NOW + 21 * SEC, 72 * 3_600_000)
    assert second["vouchers_lapsed"] == 1 and second["low_balance"] == []


async def test_grouped_accepts_warn_once_for_an_account_below_its_threshold(
    store: Any, engine: Any, groups: list[tuple[int, bool]]
) -> None:
    """PostgreSQL runs concurrent accepts of an account in one transaction, a later accept's
    facts read in the statement that writes the earlier one's (admission.facts_after moves
    them on): the mark the first accept set must be seen by the second, as one at a time."""
    acct = Acct(cash=5 * CNY, threshold=100 * CNY)
    reqs = tuple(Req(f"k{i}", (Msg(to),), NOW + i) for i, to in enumerate((X, Y, Z)))
    grouped, _one_by_one, ev = await run_both(store, engine, acct, reqs, groups)
    lows = [o.plan.low_balance for o in grouped if o.plan is not None]  # type: ignore[attr-defined]
    # Observed: [None, None, None] (never above the threshold: no crossing).
    assert lows == [(5 * CNY, 4 * CNY), None, None]
    assert [e["event"] for e in ev[G]] == ["balance.low"]


async def test_the_upgrade_keeps_a_warned_dip_warned(
    engine: Any, tmp_path: Path, clock: Clock
) -> None:
    """Migration 0020 marks an account whose last balance.low event came after its last money
    in (it was warned for the dip it is in): no second warning for it after the upgrade. One
    credited since its warning (a top-up still under the threshold) is not marked, and is
    warned once more at its next charge: the upgrade cannot tell whether that credit ended the
    dip for a while (the cost of not reading the whole ledger back)."""
    clock.freeze(MARCH)
    overrides = {"security": {"master_key": base64.b64encode(os.urandom(32)).decode()}}
    first = await start_api(tmp_path, clock, overrides, store=engine.new_store())
    try:
        warned = await funded(
            first, 140_000, low_balance_threshold=100_000, status_callback_url=HOOK
        )
        credited = await funded(
            first, 140_000, low_balance_threshold=100_000, status_callback_url=HOOK
        )
        for creds in (warned, credited):
            await send_ok(first, creds, number(1))  # 95,000: crossed, warned
            assert await _warnings(first, creds.account.id) == [(140_000, 95_000)]
        clock.advance(1)
        r = await first.admin(
            "POST", f"/admin/accounts/{credited.account.id}/topups", json={"amount_micro": 1}
        )
        assert r.status == 201, r.json
    finally:
        await first.close()
    await schema_before(engine, 20, 20)  # the release before: no mark
    api = await start_api(tmp_path, clock, overrides, store=engine.new_store())
    try:
        clock.advance(1)
        await send_ok(api, warned, number(2))
        assert await _warnings(api, warned.account.id) == []
        await send_ok(api, credited, number(2))
        assert await _warnings(api, credited.account.id) == [(95_001, 50_001)]
    finally:
        await api.close()


# -- 2. the ref of what a top-up, voucher or card sale added -------------------------------------


async def test_money_answers_name_the_ref_of_each_entry(
    engine_api: ApiServer, clock: Clock
) -> None:
    clock.freeze(MARCH)
    api = engine_api
    creds = await funded(api)
    acc = f"/admin/accounts/{creds.account.id}"
    answers = [
        await _admin_ok(api, "POST", f"{acc}/topups", {"amount_micro": 5_000, "ref": "bank-7"}),
        await _admin_ok(api, "POST", f"{acc}/topups", {"amount_micro": 5_000}),
        await _admin_ok(api, "POST", f"{acc}/vouchers", {"amount_micro": 9_000}),
        await _admin_ok(
            api, "POST", f"{acc}/cards", {"face_value_micro": 999_000_000, "ref": "shop-1"}
        ),
    ]
    refs = [[e.get("ref", "missing") for e in a["added"]] for a in answers]
    voucher = answers[2]["added"][0]["pocket"].removeprefix("voucher:")
    # Observed: [["missing"], ["missing"], ["missing"], ["missing"]].
    assert refs == [["bank-7"], [None], [voucher], ["shop-1"]]
    ledger_refs = [(e.kind, e.ref) for e in await api.store.ledger_page(creds.account.id)]
    assert ledger_refs == [
        ("topup", "bank-7"),
        ("topup", None),
        ("voucher_grant", voucher),
        ("card_purchase", "shop-1"),
    ]
    again = await api.admin("POST", f"{acc}/topups", json={"amount_micro": 5_000, "ref": "bank-7"})
    assert (again.status, again.json["added"], again.json["duplicate_ref"]) == (200, [], "bank-7")


# -- 3. a month not ready counts messages, not usage groups --------------------------------------


async def test_a_month_not_ready_counts_the_messages_awaiting_an_outcome(
    engine_api: ApiServer, clock: Clock
) -> None:
    clock.freeze(MARCH)
    api = engine_api
    creds = await funded(api, 10_000_000)
    await send_ok(api, creds, [number(i) for i in range(3)])  # one group: domestic, sent
    delivered = await send_ok(api, creds, number(9))
    ids = await submit(api)
    await receipt(api, ids[delivered[0]], "delivered")
    await send_ok(api, creds, [number(i) for i in range(10, 12)])  # another group: queued
    clock.freeze(APRIL)
    row = result_for(await settle(api, "2026-03", creds), creds)
    assert row["status"] == "not_ready"
    # Observed: "month: 2 message(s) of 2026-03 still await their outcome" (the two groups).
    assert row["message"] == "month: 5 message(s) of 2026-03 still await their outcome"
    assert row["pending_messages"] == 5


# -- 4. closing an account: where its money goes ---------------------------------------------


async def _sql(engine: Any, sql: str) -> None:
    """Raw SQL on the test's database (both engines), for states the API cannot make."""
    if engine.name == "sqlite":
        c = sqlite3.connect(engine.location)
        with c:
            c.executescript(sql)
        c.close()
        return
    import asyncpg

    pc = await asyncpg.connect(engine.location)
    try:
        await pc.execute(sql)
    finally:
        await pc.close()


async def _pockets(api: ApiServer, account_id: str) -> dict[str, int]:
    return {p.pocket: p.amount for p in await api.store.get_pockets(account_id) if p.amount}


async def test_closing_writes_off_what_the_account_holds(
    engine_api: ApiServer, clock: Clock
) -> None:
    clock.freeze(MARCH)
    api = engine_api
    creds = await funded(api, 10_000_000)
    acc = f"/admin/accounts/{creds.account.id}"
    await _admin_ok(api, "POST", f"{acc}/vouchers", {"amount_micro": 2_000_000})
    await _admin_ok(api, "POST", f"{acc}/cards", {"face_value_micro": 999_000_000})
    await send_ok(api, creds, number(1))  # queued: a voucher pays it, refunded at the close
    closed = await _admin_ok(api, "POST", f"{acc}/close", {})
    # Observed: the plain account; its pockets still held 10 CNY cash, 2 CNY of voucher,
    # 999 CNY of card, with no entry saying where they went.
    assert closed["status"] == "closed"
    assert (closed["refund_owed_micro"], closed["refund_owed"]) == (10_000_000, "10.00")
    assert closed["voided_micro"] == 2_000_000 + 999_000_000
    kinds = sorted((e["kind"], e["amount_micro"]) for e in closed["written_off"])
    assert kinds == [
        ("card_void", -999_000_000),
        ("closed", -10_000_000),
        ("voucher_void", -2_000_000),
    ]
    assert await _pockets(api, creds.account.id) == {}
    sums = await api.store.ledger_sums(creds.account.id)
    assert {k: v for k, v in sums.items() if v} == {}  # the ledger agrees: every pocket at zero
    ledger = await api.store.ledger_page(creds.account.id, limit=1000)
    assert [(e.kind, e.amount) for e in ledger if e.kind == "closed"] == [("closed", -10_000_000)]
    again = await _admin_ok(api, "POST", f"{acc}/close", {})
    assert (again["refund_owed_micro"], again["voided_micro"], again["written_off"]) == (
        10_000_000, 0, []
    )  # fmt: skip


async def test_a_refund_after_the_close_is_owed_back_too(
    engine_api: ApiServer, clock: Clock
) -> None:
    """A message on a bind at the close fails later: its refund lands on the closed account
    and is written off in the receipt's transaction, owed back with the rest."""
    clock.freeze(MARCH)
    api = engine_api
    creds = await funded(api, 1_000_000)
    (mid,) = await send_ok(api, creds, number(1))
    ids = await submit(api)  # sent: awaiting its receipt
    acc = f"/admin/accounts/{creds.account.id}"
    closed = await _admin_ok(api, "POST", f"{acc}/close", {})
    assert closed["refund_owed_micro"] == 1_000_000 - 45_000
    await receipt(api, ids[mid], "undeliverable")  # refunded now
    # Observed (with the close's write-off alone): 45,000 of cash back on the closed account.
    assert await _pockets(api, creds.account.id) == {}
    again = await _admin_ok(api, "POST", f"{acc}/close", {})
    assert again["refund_owed_micro"] == 1_000_000


async def test_the_upgrade_writes_off_accounts_closed_before(
    engine: Any, tmp_path: Path, clock: Clock
) -> None:
    clock.freeze(MARCH)
    overrides = {"security": {"master_key": base64.b64encode(os.urandom(32)).decode()}}
    first = await start_api(tmp_path, clock, overrides, store=engine.new_store())
    try:
        creds = await funded(first, 700_000)
        acc = f"/admin/accounts/{creds.account.id}"
        await _admin_ok(first, "POST", f"{acc}/vouchers", {"amount_micro": 50_000})
        await _admin_ok(first, "POST", f"{acc}/close", {})
        closed_at = first.ctx.now_ms()  # the clock is frozen
    finally:
        await first.close()
    # As a release before 20 left it: the close wrote nothing off.
    await _sql(
        engine,
        "DELETE FROM ledger WHERE kind IN ('closed', 'voucher_void', 'card_void');"
        "UPDATE pockets SET amount = (SELECT SUM(amount) FROM ledger l "
        "WHERE l.account_id = pockets.account_id AND l.pocket = pockets.pocket);",
    )
    await schema_before(engine, 20, 20)
    api = await start_api(tmp_path, clock, overrides, store=engine.new_store())
    try:
        assert await _pockets(api, creds.account.id) == {}
        rows = await api.store.ledger_page(creds.account.id, limit=100)
        assert sorted((e.kind, e.amount, e.at) for e in rows if e.amount < 0) == [
            ("closed", -700_000, closed_at),
            ("voucher_void", -50_000, closed_at),
        ]
    finally:
        await api.close()


def test_the_cli_close_names_the_refund_and_bill_check_finds_money_on_a_closed_account(
    cfg: Path,
) -> None:
    """The CLI (a real subprocess on a SQLite file): `account close` prints what is owed back,
    and `bill check` fails while a closed account holds money (the pockets agreeing with the
    ledger is not enough: the money must have gone somewhere)."""
    ids = create_accounts(cfg, ("acme",))
    ok(cfg, "bill", "topup", ids["acme"], "12.50")
    ok(cfg, "bill", "card", ids["acme"], "999")
    closed = ok(cfg, "account", "close", ids["acme"])
    # Observed: the plain account (no refund_owed_micro), its 12.50 and 999 CNY still held.
    assert (closed["status"], closed["refund_owed_micro"], closed["refund_owed"]) == (
        "closed", 12_500_000, "12.50"
    )  # fmt: skip
    assert closed["voided_micro"] == 999_000_000
    clean = ok(cfg, "bill", "check")
    assert (clean["ok"], clean["differences"], clean["closed_holding"]) == (True, [], [])
    with db(cfg) as c:  # money on the closed account, the ledger agreeing: still a hole
        c.execute(
            "INSERT INTO ledger (account_id, kind, amount, pocket, at) "
            "VALUES (?, 'topup', 7, 'cash', 1)",
            (ids["acme"],),
        )
        c.execute(
            "UPDATE pockets SET amount = 7 WHERE account_id=? AND pocket='cash'", (ids["acme"],)
        )
    (bad,) = run_all(cfg, ("bill", "check"))
    assert bad[0] == 1 and "1 pocket(s) of closed accounts hold money" in bad[2]
    report = json.loads(bad[1])
    assert (report["ok"], report["differences"]) == (False, [])
    assert report["closed_holding"] == [
        {"account": ids["acme"], "pocket": "cash", "pocket_micro": 7}
    ]
