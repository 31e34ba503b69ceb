"""Money edge cases found by a review of billing (each failed before its fix): a month not
ready in time, an account switching kind within a month, tariffs that bill at another moment
than the refunds assume or that are back-dated, and a top-up whose ref names a message."""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import tests.store_engines as engines  # noqa: E402
from bridge import billing  # noqa: E402
from bridge.config import BillingConfig  # noqa: E402
from bridge.domain.admission import Priced, Rules  # noqa: E402
from bridge.domain.ledger import topup  # noqa: E402
from bridge.domain.tariffs import BillingError, Tariff, Tier, validate_tariff  # noqa: E402
from bridge.store.base import Store, StoreError  # noqa: E402
from bridge.store.models import (  # noqa: E402
    AcceptBatch,
    Account,
    NewMessage,
    NewSegment,
    ReceiptIn,
    Sign,
    SubmitResult,
)

engine = engines.engine
store = engines.store

TZ = "UTC"
SMSC = "smscA"
LEASE = 300_000
CN = "+8613800138000"
UK = "+447700900123"
START = 45_000  # the starting price per unit
FUNDS = 1_000_000


def ms(*args: int) -> int:
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)  # type: ignore[misc]


async def make_account(s: Store, kind: str = "prepaid", funds: int = FUNDS) -> Account:
    acc = Account(id="acc_a", name="acme", kind=kind, created_at=0, updated_at=0)
    await s.create_account(acc)
    await s.add_sign(Sign("acc_a", "Acme", "acme", "company", "", "approved", None, None, 0))
    if funds:
        await s.append_ledger("acc_a", topup(funds, 0, "funds"))
    got = await s.get_account("acc_a")
    assert got is not None
    return got


def msg(
    mid: str, at: int, to: str = CN, pclass: str = "D", scheduled_at: int | None = None
) -> NewMessage:
    return NewMessage(
        id=mid,
        account_id="acc_a",
        batch_id="b_" + mid,
        recipient=to,
        encoding="gsm7",
        data_coding=0,
        billable_units=1,
        segments=(NewSegment(1, 1, 0, mid.encode(), b""),),
        accepted_at=at,
        text="hi",
        sign_name="Acme",
        scheduled_at=scheduled_at,
        price_class=pclass,
    )


async def accept(s: Store, m: NewMessage, amount: int = START) -> None:
    rules = Rules(
        sign_name="Acme", charges=(Priced(m.id, amount, m.price_class != "D"),), billing=True
    )
    batch = AcceptBatch(
        account_id="acc_a", messages=(m,), idempotency_key=None, idempotency=None, rules=rules
    )
    out = await s.accept(batch, m.accepted_at)
    assert out.accepted, out.refusal


async def submit(s: Store, mid: str, now: int) -> None:
    work = await s.claim("inst-1", 1000, now, LEASE)
    assert mid in [w.id for w in work]
    await s.record_submits([SubmitResult(mid, 1, "sent", SMSC, mid, mid, at=now)], [], now)


async def receipt(s: Store, mid: str, state: str, now: int) -> None:
    await s.apply_receipts([ReceiptIn(SMSC, mid, state, None, None, now, now, raw="x")], now)


async def cash(s: Store) -> int:
    return {p.pocket: p.amount for p in await s.get_pockets("acc_a")}.get("cash", 0)


def config() -> SimpleNamespace:
    return SimpleNamespace(billing=BillingConfig(), rules=SimpleNamespace(timezone=TZ))


# -- a month not ready when the next one starts


async def test_auto_settle_eventually_settles_a_month_that_was_not_ready(store: Store) -> None:
    """billing.auto_settle only ever looks at previous_month(now): a month still 'not_ready' when
    the calendar moves on (here: a message accepted on 31 Jan scheduled 29 days ahead, which the
    API allows) is never settled automatically; a postpaid invoice is never raised."""
    await make_account(store, "postpaid", funds=0)
    await accept(store, msg("msg_jan", ms(2026, 1, 31, 10), scheduled_at=ms(2026, 3, 1, 10)))
    cfg = config()
    book = billing.Tariffs(store, cfg.billing)
    await book.load(0)
    first = await billing.auto_settle(store, book, cfg, ms(2026, 2, 4, 2))
    assert [r["status"] for r in first if r["month"] == "2026-01"] == ["not_ready"]
    await submit(store, "msg_jan", ms(2026, 3, 1, 10))
    await receipt(store, "msg_jan", "delivered", ms(2026, 3, 1, 10, 1))
    for day in range(2, 32):  # the daemon runs it all through March
        await billing.auto_settle(store, book, cfg, ms(2026, 3, day, 3))
    assert await store.get_bill("acc_a", "2026-02") is not None
    assert await store.get_bill("acc_a", "2026-01") is not None, "January is never settled"


# -- an account that changes kind within a month


async def test_postpaid_usage_is_invoiced_after_the_account_turns_prepaid(store: Store) -> None:
    """settle_month decides the invoice from the account kind at settlement time only: domestic
    traffic sent while postpaid (accrued, never charged) is neither invoiced nor charged when the
    operator switches the account to prepaid before the month is settled."""
    await make_account(store, "postpaid", funds=0)
    for i in range(10):
        mid = f"msg_p{i}"
        await accept(store, msg(mid, ms(2026, 1, 5, 10, i)))
        await submit(store, mid, ms(2026, 1, 5, 11))
        await receipt(store, mid, "delivered", ms(2026, 1, 5, 11, 30))
    assert await store.ledger_sums("acc_a") == {}  # postpaid: accrued, nothing taken
    await store.update_account("acc_a", {"kind": "prepaid"}, ms(2026, 1, 10))
    await store.append_ledger("acc_a", topup(FUNDS, ms(2026, 1, 10)))
    await accept(store, msg("msg_q", ms(2026, 1, 11)))
    await submit(store, "msg_q", ms(2026, 1, 11, 1))
    await receipt(store, "msg_q", "delivered", ms(2026, 1, 11, 2))
    acc = await store.get_account("acc_a")
    assert acc is not None
    view, recorded = await billing.settle(
        store, acc, "2026-01", [Tariff("v1", 0)], TZ, "CNY", ms(2026, 2, 5)
    )
    assert recorded and view["units"] == 11 and view["domestic_amount_micro"] == 11 * START
    collected = view["charged_micro"] - view["refund_micro"] + view["invoice_total_micro"]
    assert collected == 11 * START, f"only {collected} of {11 * START} collected"


# -- when traffic is billed


async def test_a_tariff_cannot_bill_at_another_moment_than_the_refunds_assume(
    store: Store,
) -> None:
    """The refunds at final receipts follow the service rules (domestic billed on delivery,
    international on submission). A tariff that said otherwise made settlement bill what a
    failure receipt had already given back (domestic on submission: the customer paid 0 for a
    billed message), or keep what it should refund (international on delivery). Such a tariff
    is refused."""
    assert validate_tariff(Tariff("v1", 0, domestic_bill_on="submitted"))
    assert validate_tariff(Tariff("v1", 0, international_bill_on="delivered"))
    assert validate_tariff(Tariff("v1", 0)) == []
    await make_account(store)
    book = billing.Tariffs(store, BillingConfig())
    await book.load(0)
    later = ms(2030, 1, 1)
    with pytest.raises(BillingError, match="domestic_bill_on"):
        await book.add(Tariff("v2", later, domestic_bill_on="submitted"), ms(2026, 1, 1))


async def test_topup_referencing_a_message_does_not_break_its_refund(store: Store) -> None:
    """A top-up's `ref` is free text (admin API / CLI, <= 64 chars). refund_finals reads every
    ledger row with ref = message id, so a goodwill top-up referencing a message makes
    plan_refund raise LedgerError inside the receipt transaction: the failure receipt (and the
    whole receipt batch with it) cannot be applied, and the refund never happens."""
    await make_account(store)
    await accept(store, msg("msg_1", ms(2026, 1, 20)))
    await store.append_ledger("acc_a", topup(10_000, ms(2026, 1, 20, 0, 1), "msg_1"))
    await submit(store, "msg_1", ms(2026, 1, 20, 0, 2))
    await receipt(store, "msg_1", "undeliverable", ms(2026, 1, 20, 0, 3))
    m = await store.get_message("acc_a", "msg_1")
    assert m is not None and m.state == "failed"
    assert await cash(store) == FUNDS + 10_000


async def test_topup_referencing_a_message_is_not_netted_into_settlement(store: Store) -> None:
    """usage_groups joins every ledger row whose ref equals the message id: the goodwill top-up
    is counted as a negative charge of that message, so the prepaid settlement refund shrinks by
    the top-up (the credit is taken back at month end)."""
    tariff = Tariff("v1", 0, tiers=(Tier(None, 40_000),))
    await make_account(store)
    await accept(store, msg("msg_1", ms(2026, 1, 20)))
    await submit(store, "msg_1", ms(2026, 1, 20, 0, 1))
    await receipt(store, "msg_1", "delivered", ms(2026, 1, 20, 0, 2))
    await store.append_ledger("acc_a", topup(10_000, ms(2026, 1, 21), "msg_1"))
    acc = await store.get_account("acc_a")
    assert acc is not None
    view, _ = await billing.settle(store, acc, "2026-01", [tariff], TZ, "CNY", ms(2026, 2, 5))
    assert view["charged_micro"] == START
    assert view["refund_micro"] == START - 40_000


# -- tariff versions are never back-dated


async def test_a_tariff_version_cannot_be_back_dated(store: Store) -> None:
    """README: 'a new version has a later effective_at'; tariffs.py: old versions stay intact.
    Tariffs.add (admin API and `tariff add`) accepts any effective_at, so a version dated before
    messages already accepted (and charged) silently re-prices them at settlement."""
    await make_account(store)
    book = billing.Tariffs(store, BillingConfig())
    await book.load(0)
    await accept(store, msg("msg_1", ms(2026, 1, 10)))
    await submit(store, "msg_1", ms(2026, 1, 10, 0, 1))
    await receipt(store, "msg_1", "delivered", ms(2026, 1, 10, 0, 2))
    cheap = Tariff("v2", ms(2026, 1, 5), tiers=(Tier(None, 10_000),))
    with pytest.raises((BillingError, StoreError)):
        await book.add(cheap, ms(2026, 1, 20))  # 15 days in the past


async def test_topup_referencing_a_message_does_not_stall_the_sweeper(store: Store) -> None:
    """The same LedgerError in the sweeper: one queued message whose validity passed, with a
    top-up referencing it, makes every sweep transaction fail, so validity expiry and receipt
    timeouts (and their refunds / billing finality) stop for every account."""
    await make_account(store)
    await accept(store, replace(msg("msg_1", ms(2026, 1, 20)), expires_at=ms(2026, 1, 20, 1)))
    await store.append_ledger("acc_a", topup(10_000, ms(2026, 1, 20, 0, 1), "msg_1"))
    await store.sweep(ms(2026, 1, 20, 2), 72 * 3_600_000)
    m = await store.get_message("acc_a", "msg_1")
    assert m is not None and m.state == "expired"
    assert await cash(store) == FUNDS + 10_000
