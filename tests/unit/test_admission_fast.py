"""`admission.decide`'s fast paths (session 54) answer exactly as its general code does.

`decide` runs in the store's write lock on every accept, so the usual send (one recipient, one
sign, no frequency history, one cash pocket, one charge) skips the general code: nobody can be
refused (`_nobody_refusable`), one charge against a lone cash pocket (`_one_cash_charge`). Here
`decide` with them and with both turned off (the general code, which is the code from before
them) decide over wide random rules, facts and instants (every kind of pocket, expiring and
lapsed vouchers and cards, overdrawn ones, postpaid accounts, quotas and balances at the edge,
frequency rules with histories, several signs and recipients, zero and huge amounts) and must
give the same Refusal or Plan, field by field and entry by entry, or raise the same error.
Nine planted one-off changes to the fast paths (a balance's `>` made `>=`, the threshold's
sign, the history ignored, a debt counted as spendable, the postpaid test without its
international check, the opt-out and block checks dropped, ...) each failed it within 40 s.
800 examples (1,500 until session 55, 24 s of CI's run): on CI's fixed seed each of ten planted
changes fails it at 800 as at 1,500 (a balance's `>` made `>=`, the threshold's sign, the
history ignored, a debt counted as spendable, the postpaid check, an amount's `<= 0` made `< 0`,
the balance after off by one, the opt-out check dropped, the block check dropped, the warned
mark ignored); at 300 three of them pass (the history, the debt, the mark).
"""

from __future__ import annotations

from dataclasses import astuple
from typing import Any
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.domain import admission as adm
from bridge.domain.frequency import DAY_MS, HOUR_MS, MINUTE_MS, Limits

NOW = 1_780_000_000_000  # a fixed instant; the strategies move around it
NUMBERS = ("+8613800000001", "+8613800000002", "+8613800000003")
STATUSES = (None, "approved", "pending", "rejected")
HUGE = 10**15  # a billion CNY in micro-units: Python ints, never floats

nows = st.integers(NOW - DAY_MS, NOW + DAY_MS)
offsets = st.one_of(
    st.sampled_from([0, -1, 1, -MINUTE_MS, MINUTE_MS, -HOUR_MS, -DAY_MS, -DAY_MS + 1]),
    st.integers(-2 * DAY_MS, 2 * DAY_MS),
)
amounts = st.one_of(
    st.sampled_from([0, 1, 100, 50_000, 100_000, HUGE]), st.integers(-1_000, 2 * HUGE)
)


@st.composite
def pockets(draw: st.DrawFn, now: int) -> list[adm.Pocket]:
    def expiry() -> int | None:
        return draw(st.one_of(st.none(), offsets.map(lambda o: now + o)))

    one_cash = st.builds(adm.Pocket, st.just("cash"), amounts, st.one_of(st.none(), nows))
    other = st.one_of(
        one_cash,
        st.builds(
            adm.Pocket,
            st.sampled_from(["voucher:a", "voucher:b", "voucher:c"]),
            st.one_of(amounts, st.integers(-5, 5)),
            st.builds(lambda: expiry()),
        ),
        st.builds(
            adm.Pocket,
            st.sampled_from(["card:x", "card:y"]),
            amounts,
            st.builds(lambda: expiry()),
        ),
        st.builds(adm.Pocket, st.sampled_from(["invoice", "card:"]), amounts, st.none()),
    )
    # Half the time the usual account (one cash pocket), the fast path's case.
    return draw(st.one_of(st.lists(one_cash, min_size=1, max_size=1), st.lists(other, max_size=4)))


@st.composite
def cases(draw: st.DrawFn) -> tuple[adm.Rules, adm.Facts, int]:
    now = draw(nows)
    usual = draw(
        st.sampled_from([True, True, False])
    )  # one recipient, as the usual send: the fast paths' shape
    recipients = tuple(
        draw(st.lists(st.sampled_from(NUMBERS), min_size=1, max_size=1 if usual else 4))
    )
    more = tuple(draw(st.lists(st.sampled_from(["M1", "M2", "S"]), max_size=0 if usual else 2)))
    fr = None
    if draw(st.booleans()):
        fr_numbers = tuple(
            draw(
                st.one_of(
                    st.just(recipients[:1]),
                    st.lists(st.sampled_from(NUMBERS), max_size=3).map(tuple),
                )
            )
        )
        fr = adm.FrequencyRule(
            draw(st.sampled_from(["verification", "template", "raw"])),
            draw(st.sampled_from([None, "S"])),
            draw(st.sampled_from([None, "T"])),
            Limits(*(draw(st.integers(0, 3)) for _ in range(3))),
            draw(st.sampled_from(["UTC", "Asia/Shanghai", "America/New_York", "Asia/Kathmandu"])),
            fr_numbers,
        )
    history = draw(
        st.dictionaries(
            st.sampled_from(NUMBERS),
            st.lists(offsets.map(lambda o: now + o), max_size=4),
            max_size=draw(st.sampled_from([0, 0, 1, 3])),
        )
    )
    quota = draw(st.one_of(st.just(0), st.integers(0, 6)))  # mostly none
    charges = tuple(
        adm.Priced(f"m{i}", draw(amounts.filter(lambda a: a >= 0)), draw(st.booleans()))
        for i in range(draw(st.integers(0 if not usual else 1, 1 if usual else 3)))
    )
    template = draw(st.sampled_from([None, "T"]))
    # Mostly what lets the send through (a refusal ends `decide` before the money), every
    # status sometimes.
    usual_status = "approved" if template else None
    listed = st.one_of(*[st.just(frozenset())] * 6, st.frozensets(st.sampled_from(NUMBERS)))
    rules = adm.Rules(
        sign_name=draw(st.sampled_from([None, "S", "S"])),
        more_signs=more,
        template_code=template,
        frequency=fr,
        charges=charges,
        billing=draw(st.booleans()) or usual,
        tz=draw(st.sampled_from(["UTC", "Asia/Shanghai", "Pacific/Kiritimati"])),
    )
    facts = adm.Facts(
        recipients,
        sign_status=draw(st.sampled_from(STATUSES + ("approved",) * 20)),
        more_sign_status={m: draw(st.sampled_from(STATUSES + ("approved",) * 8)) for m in more},
        template_status=draw(
            st.sampled_from((None, "approved", "pending", "changed") + (usual_status,) * 12)
        ),
        opted_out=draw(listed),
        blocked=draw(listed),
        history=history,
        day_count=draw(st.integers(0, 6)),
        daily_quota=quota,
        account_kind=draw(st.sampled_from(["prepaid", "postpaid"])),
        low_balance_threshold=draw(
            st.one_of(st.sampled_from([0, 1, 100_000]), st.integers(-10, HUGE))
        ),
        low_warned=draw(st.booleans()),
        pockets=draw(pockets(now)),
    )
    return rules, facts, now


def _answer(rules: adm.Rules, facts: adm.Facts, now: int) -> tuple[Any, ...]:
    """The answer, comparable: its kind and every field."""
    try:
        out = adm.decide(rules, facts, now)
    except Exception as exc:  # the same input must fail the same way
        return ("raised", type(exc), str(exc))
    return (type(out).__name__, astuple(out))


def _general(rules: adm.Rules, facts: adm.Facts, now: int) -> tuple[Any, ...]:
    """The answer with both fast paths turned off: the general code's."""
    with (
        mock.patch.object(adm, "_nobody_refusable", lambda _rules, _facts: False),
        mock.patch.object(adm, "_one_cash_charge", lambda *_args: None),
    ):
        return _answer(rules, facts, now)


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_decide_answers_as_before_its_fast_paths(case: tuple[adm.Rules, adm.Facts, int]) -> None:
    rules, facts, now = case
    assert _answer(rules, facts, now) == _general(rules, facts, now)


def _usual(cash: int, amount: int, **facts: Any) -> tuple[adm.Rules, adm.Facts]:
    rules = adm.Rules(
        sign_name="S",
        frequency=adm.FrequencyRule("raw", "S", None, Limits(0, 0, 50), "UTC", (NUMBERS[0],)),
        charges=(adm.Priced("m0", amount, False),),
        billing=True,
    )
    base: dict[str, Any] = {
        "sign_status": "approved",
        "history": {NUMBERS[0]: []},
        "pockets": (adm.Pocket("cash", cash),),
    }
    return rules, adm.Facts((NUMBERS[0],), **(base | facts))


def test_the_usual_send_takes_the_fast_path_at_its_edges() -> None:
    """The edges a fast path could be off by one at, named (the random cases reach them too):
    the last micro-unit of a balance, one short of it, the threshold crossed or reached."""
    for cash, amount, threshold, warned in [
        (100, 100, 0, False),  # the last of it
        (99, 100, 0, False),  # one short: refused
        (0, 1, 0, False),
        (-5, 1, 0, False),  # a postpaid debt is not spendable
        (200, 100, 101, False),  # ends one under the threshold: warns
        (200, 100, 100, False),  # ends at it: silent
        (200, 100, 101, True),  # crossed: warns whatever the mark says
        (100, 50, 101, True),  # already under and warned: silent
        (100, 50, 101, False),  # already under, never warned: warns
    ]:
        rules, facts = _usual(cash, amount, low_balance_threshold=threshold, low_warned=warned)
        got = _answer(rules, facts, NOW)
        assert got == _general(rules, facts, NOW), (cash, amount, threshold)
    rules, facts = _usual(100, 100)  # the fast paths do answer the usual send
    assert adm._nobody_refusable(rules, facts)
    assert adm._one_cash_charge(rules.charges[0], facts, NOW, "d", 1) is not None
    rules, facts = _usual(100, 100, history={NUMBERS[0]: [NOW - 1]})
    assert _answer(rules, facts, NOW)[0] == "Plan"
    rules, facts = _usual(100, 100, opted_out=frozenset({NUMBERS[0]}))
    assert _answer(rules, facts, NOW)[1][0] == "RECIPIENT_OPTED_OUT"
