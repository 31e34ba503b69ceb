"""ledger.warns_low_balance: only a fall of the domestic balance warns (session 37). A charge a
stored-value card paid alone, or an expired card written off, left that balance where it was:
it warned an account below its threshold that was never warned, and set the mark."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.domain.admission import Pocket, lapse_plan
from bridge.domain.ledger import warns_low_balance

MONEY = st.integers(min_value=0, max_value=10**12)


@given(before=MONEY, after=MONEY, threshold=MONEY, warned=st.booleans())
def test_a_warning_needs_a_fall_below_the_threshold(
    before: int, after: int, threshold: int, warned: bool
) -> None:
    warns = warns_low_balance(before, after, threshold, warned=warned)
    if warns:
        assert after < before and after < threshold and threshold > 0
    elif after < before and after < threshold and threshold > 0:
        assert warned and before < threshold  # the same dip, already warned


def test_a_balance_that_did_not_move_never_warns() -> None:
    assert not warns_low_balance(300, 300, 1_000, warned=False)
    assert warns_low_balance(300, 299, 1_000, warned=False)  # the first fall of the dip
    assert not warns_low_balance(300, 299, 1_000, warned=True)
    assert warns_low_balance(1_000, 999, 1_000, warned=True)  # a crossing, whatever the mark


def test_an_expired_card_alone_does_not_warn() -> None:
    cash = Pocket("cash", 300, None)
    card = Pocket("card:c1", 5_000, 100)
    voucher = Pocket("voucher:v1", 50, 100)
    entries, low = lapse_plan([cash, card], 1_000, 200)
    assert [e.kind for e in entries] == ["card_expire"] and low is None
    entries, low = lapse_plan([cash, card, voucher], 1_000, 200)
    assert low == (350, 300)  # a voucher's remainder was domestic money: a fall
