"""ledger.refund_position / refund_payment: a closed account's refund paid back, never beyond
what is still owed (pure; session 37)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.domain import ledger
from bridge.domain.admission import Pocket, balances_of, close_plan
from bridge.domain.tariffs import BillingError

MONEY = st.integers(min_value=0, max_value=10**15)


@given(owed=MONEY, paid=MONEY, amount=st.integers(min_value=1, max_value=10**15))
def test_a_payout_is_recorded_only_within_what_is_outstanding(
    owed: int, paid: int, amount: int
) -> None:
    pos = ledger.refund_position({"closed": -owed, "refund_paid": paid, "topup": 5})
    assert (pos.owed, pos.paid, pos.outstanding) == (owed, paid, owed - paid)
    if amount <= owed - paid:
        (e,) = ledger.refund_payment(amount, pos, 7, "R")
        assert (e.kind, e.amount, e.pocket, e.at, e.ref) == (
            "refund_paid",
            amount,
            "refunded",
            7,
            "R",
        )
    else:
        with pytest.raises(BillingError) as refused:
            ledger.refund_payment(amount, pos, 7, "R")
        assert refused.value.code == "REFUND_NOT_OWED"


def test_no_kinds_owe_nothing_and_bad_amounts_are_refused() -> None:
    pos = ledger.refund_position({})
    assert (pos.owed, pos.paid, pos.outstanding) == (0, 0, 0)
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError):
            ledger.refund_payment(bad, ledger.RefundPosition(10, 0), 1, "R")  # type: ignore[arg-type]


def test_the_refunded_pocket_is_a_record_never_money() -> None:
    """Not spendable, not a credit, and a closed account holding it is not holding money."""
    entries = [
        ledger.Entry(ledger.EntryKind.TOPUP, 100, "cash", 1),
        ledger.Entry(ledger.EntryKind.CLOSED, -100, "cash", 2),
        ledger.Entry(ledger.EntryKind.REFUND_PAID, 100, "refunded", 3, "R"),
    ]
    bal = ledger.balances(entries, 4)
    assert (bal.cash, bal.available_international) == (0, 0)
    pockets = [Pocket("cash", 0, None), Pocket("refunded", 100, None)]
    assert balances_of(pockets, 4).available_international == 0
    assert close_plan(pockets, 4) == []
    with pytest.raises(ledger.LedgerError):
        ledger.Entry(ledger.EntryKind.REFUND_PAID, -1, "refunded", 3)
    with pytest.raises(ledger.LedgerError):
        ledger.Entry(ledger.EntryKind.REFUND_PAID, 1, "cash", 3)
