"""Session 37: the money an operator handles, on both store engines (a real SQLite file, a real
PostgreSQL cluster) behind the real aiohttp app (conftest.engine_api), and through the CLI (a
real subprocess on a SQLite file).

1. The low-balance mark (accounts.low_warned_at, session 36) was kept but never shown: an
   operator or customer looking at a balance under its threshold could not tell whether the
   balance.low warning of this dip had fired (and so would not fire again). Every answer that
   shows the threshold now shows `low_balance_warned_at` (unix ms, null when not warned): the
   admin and customer account answers, the balances (GET /v1/balance, the admin's, `bill
   balance`) and `account show`.
2. Closing an account wrote its cash off as owed back (`closed` entries, `refund_owed_micro`),
   but nothing recorded that the operator paid it: the books said the customer was owed
   forever, and `bill check` could not tell a refund paid from one forgotten. An operator now
   records each payout (POST /admin/accounts/{ref}/refunds, `bill refund`), under its ref
   (recorded once, as top-ups are), all or part of what is still owed, never more (409
   REFUND_NOT_OWED), as a `refund_paid` ledger entry of its own pocket ("refunded"); the account
   answers show owed, paid and outstanding, and `bill check` lists the refunds outstanding and
   fails on one paid beyond what was owed.
3. "A charge paid by a stored-value card alone warns an account below its threshold that was
   never warned" (session 36's open question): it did, with `previous_micro` equal to
   `available_micro`, though the threshold watches the domestic balance (cash and vouchers) and
   the card's money was never in it; the mark it set then silenced the domestic charge that did
   lower that balance. Only a fall of the domestic balance warns now (ledger.warns_low_balance).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from tests.integration.conftest import ApiServer, Clock  # noqa: E402
from tests.integration.test_billing_flow import MARCH, funded, number, send_ok  # noqa: E402
from tests.integration.test_cli_rules import (  # noqa: E402
    cfg,
    check_refused,
    create_accounts,
    db,
    ok,
    run_all,
)

engine = engines.engine
cfg = cfg


async def _shown(api: ApiServer, creds: Any) -> dict[str, Any]:
    """low_balance_warned_at as each answer shows it."""
    acc = f"/admin/accounts/{creds.account.id}"
    answers = {
        "admin account": await api.admin("GET", acc),
        "admin balance": await api.admin("GET", f"{acc}/balance"),
        "own account": await api.request("GET", "/v1/account", creds=creds),
        "own balance": await api.request("GET", "/v1/balance", creds=creds),
    }
    for r in answers.values():
        assert r.status == 200, r.json
    return {k: r.json["low_balance_warned_at"] for k, r in answers.items()}


async def test_the_low_balance_mark_is_shown_with_the_threshold(
    engine_api: ApiServer, clock: Clock
) -> None:
    clock.freeze(MARCH)
    api = engine_api
    creds = await funded(api, 300_000, low_balance_threshold=1_000_000)
    assert set((await _shown(api, creds)).values()) == {None}  # below, but nothing charged yet
    await send_ok(api, creds, number(1))  # the charge that warns
    warned_at = api.ctx.now_ms()
    assert set((await _shown(api, creds)).values()) == {warned_at}
    clock.advance(60)
    await send_ok(api, creds, number(2))  # the same dip: the mark keeps its time
    assert set((await _shown(api, creds)).values()) == {warned_at}
    # Back at the threshold: the dip is over, nothing warned.
    acc = f"/admin/accounts/{creds.account.id}"
    r = await api.admin("POST", f"{acc}/topups", json={"amount_micro": 1_000_000})
    assert r.status == 201, r.json
    assert set((await _shown(api, creds)).values()) == {None}
    # Read-only: not a setting an update takes.
    r = await api.admin("PATCH", acc, json={"low_balance_warned_at": None})
    assert (r.status, r.code) == (400, "UNKNOWN_FIELD"), r.json


def test_the_cli_shows_the_low_balance_mark(cfg: Path) -> None:
    ids = create_accounts(cfg, ("acme",))
    ok(cfg, "bill", "topup", ids["acme"], "1.00")
    shown = ok(cfg, "account", "show", ids["acme"]), ok(cfg, "bill", "balance", ids["acme"])
    assert [v["low_balance_warned_at"] for v in shown] == [None, None]
    with db(cfg) as c:  # as an accept's warning leaves it (no CLI flag sets a threshold)
        c.execute(
            "UPDATE accounts SET low_balance_threshold=5000000, low_warned_at=1234 WHERE id=?",
            (ids["acme"],),
        )
    shown = ok(cfg, "account", "show", ids["acme"]), ok(cfg, "bill", "balance", ids["acme"])
    assert [v["low_balance_warned_at"] for v in shown] == [1234, 1234]


# -- 2. a closed account's refund paid back ------------------------------------------------------


async def _refund(api: ApiServer, account_id: str, amount: int, ref: Any) -> Any:
    return await api.admin(
        "POST", f"/admin/accounts/{account_id}/refunds", json={"amount_micro": amount, "ref": ref}
    )


def _owed(view: dict[str, Any]) -> tuple[int, int, int]:
    return view["refund_owed_micro"], view["refund_paid_micro"], view["refund_outstanding_micro"]


async def test_a_refund_is_paid_back_once_by_its_ref_and_never_beyond_what_is_owed(
    engine_api: ApiServer, clock: Clock
) -> None:
    clock.freeze(MARCH)
    api = engine_api
    creds = await funded(api, 10_000_000)
    acc_id = creds.account.id
    acc = f"/admin/accounts/{acc_id}"
    r = await _refund(api, acc_id, 1, "PAY-0")
    assert (r.status, r.code) == (409, "ACCOUNT_NOT_CLOSED")  # an open account owes nothing
    assert _owed((await api.admin("GET", acc)).json) == (0, 0, 0)
    assert (await api.admin("POST", f"{acc}/close", json={})).status == 200
    r = await api.admin("POST", f"{acc}/refunds", json={"amount_micro": 1})
    assert (r.status, r.code) == (400, "MISSING_FIELD")  # a payout always names its ref
    for bad in (0, -5, "5", True):
        r = await _refund(api, acc_id, bad, "PAY-1")
        assert (r.status, r.code) == (400, "INVALID_FIELD"), bad
    r = await _refund(api, acc_id, 4_000_000, "PAY-1")
    assert r.status == 201, r.json
    assert _owed(r.json) == (10_000_000, 4_000_000, 6_000_000)
    assert r.json["added"] == [
        {
            "kind": "refund_paid",
            "amount_micro": 4_000_000,
            "pocket": "refunded",
            "ref": "PAY-1",
            "expires_at": None,
        }
    ]
    again = await _refund(api, acc_id, 4_000_000, "PAY-1")  # a retry after a lost answer
    assert (again.status, again.json["duplicate_ref"], again.json["added"]) == (200, "PAY-1", [])
    assert _owed(again.json) == (10_000_000, 4_000_000, 6_000_000)
    r = await _refund(api, acc_id, 5_000_000, "PAY-1")
    assert (r.status, r.code) == (409, "PAYMENT_REF_REUSED")
    message = r.json["error"]["message"]  # a payout's words, not a credit's
    assert "'PAY-1' already names a refund payout of 4.00 (4000000 micro-units)" in message
    assert "this payout is of 5.00" in message and "credited" not in message
    r = await _refund(api, acc_id, 6_000_001, "PAY-2")
    assert (r.status, r.code) == (409, "REFUND_NOT_OWED")
    assert "6000000 micro-units (6.00) still owed" in r.json["error"]["message"]
    r = await _refund(api, acc_id, 6_000_000, "PAY-2")
    assert (r.status, _owed(r.json)) == (201, (10_000_000, 10_000_000, 0))
    r = await _refund(api, acc_id, 1, "PAY-3")
    assert (r.status, r.code) == (409, "REFUND_NOT_OWED")
    shown = (await api.admin("GET", acc)).json
    assert (_owed(shown), shown["refund_owed"]) == ((10_000_000, 10_000_000, 0), "10.00")
    # The books: the account holds nothing spendable, the payouts are a record of their own.
    balance = (await api.admin("GET", f"{acc}/balance")).json
    assert (balance["cash_micro"], balance["available_domestic_micro"]) == (0, 0)
    sums = await api.store.ledger_sums(acc_id)
    pockets = {p.pocket: p.amount for p in await api.store.get_pockets(acc_id)}
    assert {k: v for k, v in sums.items() if v} == {"refunded": 10_000_000}
    assert {k: v for k, v in pockets.items() if v} == {"refunded": 10_000_000}
    rows = await api.store.ledger_page(acc_id, limit=100)
    assert [(e.kind, e.amount, e.ref) for e in rows if e.kind == "refund_paid"] == [
        ("refund_paid", 4_000_000, "PAY-1"),
        ("refund_paid", 6_000_000, "PAY-2"),
    ]
    # Audited like the other money actions, refusals included.
    trail = (await api.admin("GET", "/admin/audit")).json["entries"]
    refunds = [(e["status"], e["code"]) for e in trail if e["action"].endswith("/refunds")]
    assert refunds == [
        (409, "ACCOUNT_NOT_CLOSED"),
        (400, "MISSING_FIELD"),
        *[(400, "INVALID_FIELD")] * 4,
        (201, None),
        (200, None),
        (409, "PAYMENT_REF_REUSED"),
        (409, "REFUND_NOT_OWED"),
        (201, None),
        (409, "REFUND_NOT_OWED"),
    ]


async def test_payouts_at_once_never_pay_more_than_is_owed(
    engine_api: ApiServer, clock: Clock
) -> None:
    """Two operators (or two instances) paying the whole refund at once: one is recorded, the
    other refused; the store decides in the payout's own transaction."""
    clock.freeze(MARCH)
    api = engine_api
    creds = await funded(api, 3_000_000)
    closed = await api.admin("POST", f"/admin/accounts/{creds.account.id}/close", json={})
    assert closed.status == 200
    now = api.ctx.now_ms()
    # Connections open first (PostgreSQL): the payouts' transactions then truly overlap.
    await asyncio.gather(*(api.store.ledger_kind_sums(creds.account.id) for _ in range(8)))
    got = await asyncio.gather(
        *(api.store.pay_refund(creds.account.id, 3_000_000, f"P{i}", now) for i in range(4)),
        return_exceptions=True,
    )
    assert sum(isinstance(g, list) for g in got) == 1, got
    assert {getattr(g, "code", None) for g in got if not isinstance(g, list)} == {"REFUND_NOT_OWED"}


def test_the_cli_pays_a_refund_and_bill_check_follows_it(cfg: Path) -> None:
    ids = create_accounts(cfg, ("acme",), ("other",))
    ok(cfg, "bill", "topup", ids["acme"], "12.50")
    ok(cfg, "account", "close", ids["acme"])
    check = ok(cfg, "bill", "check")
    assert check["ok"] is True and check["refunds_overpaid"] == []
    assert check["refunds_outstanding"] == [
        {
            "account": ids["acme"],
            "owed_micro": 12_500_000,
            "paid_micro": 0,
            "outstanding_micro": 12_500_000,
        }
    ]
    paid = ok(cfg, "bill", "refund", ids["acme"], "10", "--ref", "WIRE-1")
    assert _owed(paid) == (12_500_000, 10_000_000, 2_500_000)
    assert ok(cfg, "bill", "refund", ids["acme"], "10", "--ref", "WIRE-1")["duplicate_ref"] == (
        "WIRE-1"
    )
    (reused,) = run_all(cfg, ("bill", "refund", ids["acme"], "1", "--ref", "WIRE-1"))
    check_refused(reused, "PAYMENT_REF_REUSED", "'WIRE-1' already names a refund payout of 10.00")
    (more,) = run_all(cfg, ("bill", "refund", ids["acme"], "2.500001", "--ref", "WIRE-2"))
    check_refused(more, "REFUND_NOT_OWED")
    (open_,) = run_all(cfg, ("bill", "refund", ids["other"], "1", "--ref", "WIRE-3"))
    check_refused(open_, "ACCOUNT_NOT_CLOSED")
    ok(cfg, "bill", "refund", ids["acme"], "2.50", "--ref", "WIRE-2")
    assert _owed(ok(cfg, "account", "show", ids["acme"])) == (12_500_000, 12_500_000, 0)
    check = ok(cfg, "bill", "check")
    assert (check["ok"], check["refunds_outstanding"], check["refunds_overpaid"]) == (True, [], [])
    with db(cfg) as c:  # a payout recorded behind the API's back, beyond what was owed
        c.execute(
            "INSERT INTO ledger (account_id, kind, amount, pocket, at, ref) "
            "VALUES (?, 'refund_paid', 7, 'refunded', 1, 'X')",
            (ids["acme"],),
        )
        c.execute(
            "UPDATE pockets SET amount = amount + 7 WHERE account_id=? AND pocket='refunded'",
            (ids["acme"],),
        )
    (bad,) = run_all(cfg, ("bill", "check"))
    assert bad[0] == 1 and "1 account(s) paid back more than they were owed" in bad[2]
    report = json.loads(bad[1])
    assert report["refunds_overpaid"] == [
        {
            "account": ids["acme"],
            "owed_micro": 12_500_000,
            "paid_micro": 12_500_007,
            "overpaid_micro": 7,
        }
    ]
    trail = ok(cfg, "audit", "list")
    assert [e["action"] for e in trail].count("cli bill refund") == 6  # refused ones too


# -- 3. a charge a stored-value card paid alone -------------------------------------------------


async def test_a_charge_a_card_paid_alone_does_not_warn_of_the_domestic_balance(
    engine_api: ApiServer, clock: Clock
) -> None:
    """The threshold watches the domestic balance (cash and vouchers). An international send a
    stored-value card paid in full moved none of it: an account below its threshold and never
    warned was warned by it all the same, `previous_micro` equal to `available_micro` (the
    first charge of session 36's rule, though it took nothing from that balance), and its next
    domestic charge, the one that did lower it, was then silent."""
    from tests.integration.test_session36_finance_review import HOOK, _warnings

    clock.freeze(MARCH)
    api = engine_api
    creds = await funded(api, 300_000, low_balance_threshold=1_000_000, status_callback_url=HOOK)
    acc = f"/admin/accounts/{creds.account.id}"
    r = await api.admin("POST", f"{acc}/cards", json={"face_value_micro": 999_000_000})
    assert r.status == 201, r.json
    await send_ok(api, creds, "+12025550123")
    rows = await api.store.ledger_page(creds.account.id, limit=100)
    assert [e.kind for e in rows if e.kind.endswith(("spend", "charge"))] == ["card_spend"]
    # Observed: [(300000, 300000)].
    assert await _warnings(api, creds.account.id) == []
    assert (await api.admin("GET", acc)).json["low_balance_warned_at"] is None
    await send_ok(api, creds, number(1))  # domestic: cash, below the threshold
    assert await _warnings(api, creds.account.id) == [(300_000, 255_000)]
