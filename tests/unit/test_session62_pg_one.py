"""`postgres_rules.decide_one_of_row` plans exactly as `decide` over the Facts of the same row
(session 62).

The PostgreSQL accept decides the usual one-recipient send from the facts' columns of its
statement's row with `admission.decide_one` (the pure function SQLite's accept calls), and,
for a later accept of a group, moves them by the earlier accept whose writes share the
statement, as `admission.facts_after` moves the Facts. Here, over the wide random rules of
tests/unit/test_admission_one.py and rows of every kind (statuses, opt-outs, do-not-contact
entries, histories, pockets of every kind and none, NULL columns, the columns at an offset) and
earlier accepts (none, a cash charge, a voucher's, a low-balance warning, another day, the same
number or another), a Plan from the row must be the Plan `decide` gives over
`facts_from_row`'s Facts moved by `facts_after`; where `decide` refuses or raises it must give
None. And it must answer the usual sends (a coverage floor), so the comparison is not vacuous.
"""

from __future__ import annotations

from dataclasses import astuple
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bridge.domain import admission as adm
from bridge.domain.frequency import DAY_MS, Limits
from bridge.domain.ledger import Entry, EntryKind
from bridge.store import postgres_rules as rules_sql
from tests.unit.test_admission_one import NOW, NUMBER, OTHER, STATUSES, amounts, rules_of


@st.composite
def pocket_columns(draw: st.DrawFn, now: int) -> tuple[Any, Any, Any]:
    names = draw(
        st.one_of(
            st.just(["cash"]),
            st.just(["cash"]),
            st.lists(st.sampled_from(["cash", "card:x", "invoice", "voucher:a"]), max_size=3),
        )
    )
    names = sorted(set(names))
    if not names:
        return (None, None, None)
    zero = draw(st.booleans())  # the others at 0 (spent), or any amount
    amounts_ = [
        draw(amounts) if name == "cash" or not zero else draw(st.sampled_from([0, 0, 5, -1]))
        for name in names
    ]
    expiries = [draw(st.sampled_from([None, None, now - 1, now + 1])) for _ in names]
    return (names, amounts_, expiries)


@st.composite
def cases(draw: st.DrawFn) -> tuple[Any, ...]:
    now = draw(st.integers(NOW - DAY_MS, NOW + DAY_MS))
    rules = draw(rules_of(now))
    fr = rules.frequency
    usual = draw(st.booleans())  # half the time the usual send's row, the fast path's case
    sign = rules.sign_name
    sign_names = draw(st.sampled_from([None, [sign or "S"], ["X"], ["X", sign or "S"]]))
    statuses = None if sign_names is None else [draw(st.sampled_from(STATUSES)) for _ in sign_names]
    template = draw(st.sampled_from(STATUSES + ("approved",) * 3))
    opted = draw(st.sampled_from([None, [], [], [NUMBER]]))
    dnc = draw(st.sampled_from([None, None, [], ["=" + NUMBER], ["+8613"]]))
    h_numbers = h_times = None
    if fr is not None and len(fr.numbers) == 1 and draw(st.booleans()):
        h_numbers = [fr.numbers[0]] * 2
        h_times = [now - 5, now - 1]
    pockets, amounts_, expiries = draw(pocket_columns(now))
    if usual:
        sign_names, statuses = ([sign], ["approved"]) if sign is not None else (None, None)
        template = "approved" if rules.template_code is not None else None
        opted = dnc = h_numbers = h_times = None
        if pockets is None:
            pockets, amounts_, expiries = ["cash"], [draw(amounts)], [None]
    quota = draw(st.sampled_from([None, 0, 0, 1, 2, 6]))
    kind = draw(st.sampled_from([None, "prepaid", "prepaid", "postpaid"]))
    threshold = draw(st.one_of(st.sampled_from([None, 0, 0, 100, 100_000]), amounts))
    warned = draw(st.sampled_from([None, False, True]))
    dip = usual and draw(st.booleans())  # under the threshold already: the mark counts
    if dip:
        cash = amounts_[pockets.index("cash")] if "cash" in pockets else 0
        threshold = max(cash, 0) + draw(st.integers(1, 1_000))
    day_count = draw(st.sampled_from([None, 0, 1, 5]))
    tokens = draw(st.sampled_from([None, 1.5]))
    facts = (
        sign_names, statuses, template, opted, dnc, h_numbers, h_times, quota, kind, threshold,
        warned, day_count, pockets, amounts_, expiries, tokens, None if tokens is None else 9.0,
    )  # fmt: skip
    at = draw(st.sampled_from([0, 3]))
    row = ("k", None, 7)[:at] + facts
    before = None
    if draw(st.booleans()):
        day = adm.day_key(now, rules.tz) if draw(st.booleans()) else "1970-01-01"
        entries: tuple[tuple[str, Entry], ...] = ()
        pocket = draw(st.sampled_from([None, "cash", "cash", "voucher:a"]))
        if pocket is not None:
            amount = -draw(st.integers(0, 2_000))
            kind = EntryKind.CHARGE if pocket == "cash" else EntryKind.VOUCHER_SPEND
            entries = ((f"m{now}", Entry(kind, amount, pocket, now, "r")),)
        low = draw(st.sampled_from([None, (500, 100)] if dip else [None, None, (500, 100)]))
        to = draw(st.sampled_from([NUMBER, OTHER]))
        sent = adm.Sent(
            to,
            draw(st.sampled_from([now, now - DAY_MS])),
            draw(st.sampled_from([None, "S"])),
            draw(st.sampled_from([None, "T"])),
            draw(st.sampled_from([None, "verification"])),
        )
        before = (adm.Plan(entries, low, day), draw(st.sampled_from([1, 1, 3])), sent)
    return rules, row, at, before, now


def _decided(case: tuple[Any, ...]) -> tuple[Any, Any]:
    rules, row, at, before, now = case
    one = adm.one_send(rules, now, adm.day_key(now, rules.tz))
    moved = None if before is None else (before[0], before[1], (before[2].recipient,))
    fast = None if one is None else rules_sql.decide_one_of_row(one, rules, row, at, moved)
    try:
        facts, _rate = rules_sql.facts_from_row(row, rules, (NUMBER,), at)
        if before is not None:
            plan, count, sent = before
            facts = adm.facts_after(facts, plan, count, (sent,), rules, now)
        general: Any = adm.decide(rules, facts, now)
    except Exception as exc:  # the same input must not be planned by the fast one
        general = ("raised", type(exc), str(exc))
    return fast, general


ANSWERED = {"fast": 0, "all": 0, "moved": 0}


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def _plans_as_decide(case: tuple[Any, ...]) -> None:
    fast, general = _decided(case)
    ANSWERED["all"] += 1
    if fast is None:
        return
    ANSWERED["fast"] += 1
    ANSWERED["moved"] += case[3] is not None
    assert isinstance(fast, adm.Plan)
    assert isinstance(general, adm.Plan), general
    assert astuple(fast) == astuple(general)
    assert fast == general


def test_decide_one_of_row_plans_as_decide() -> None:
    """The hypothesis comparison, and the fast answer given often enough (earlier accepts
    moving it included) for it to mean something, counted in the same test."""
    ANSWERED.update(fast=0, all=0, moved=0)
    _plans_as_decide()
    assert ANSWERED["all"] >= 300, ANSWERED
    assert ANSWERED["fast"] >= ANSWERED["all"] // 10, ANSWERED
    assert ANSWERED["moved"] >= ANSWERED["fast"] // 10, ANSWERED


def test_the_usual_grouped_send_is_answered_by_the_row() -> None:
    """The bench's send, a later accept of its group: a cash charge after an earlier one's,
    to another number, the day's count moved; a low balance warned once."""
    rules = adm.Rules(
        sign_name="S",
        frequency=adm.FrequencyRule("raw", "S", None, Limits(0, 0, 50), "UTC", (NUMBER,)),
        charges=(adm.Priced("m1", 300, False),),
        billing=True,
    )
    day = adm.day_key(NOW, "UTC")
    one = adm.one_send(rules, NOW, day)
    assert one is not None
    cols = (["S"], ["approved"], None, [], None, None, None, 10, "prepaid", 1_000, False, 8,
            ["cash"], [1_500], [None], None, None)  # fmt: skip
    earlier = adm.Plan((("m0", Entry(EntryKind.CHARGE, -300, "cash", NOW, "m0")),), None, day)
    plan = rules_sql.decide_one_of_row(one, rules, cols, 0, (earlier, 1, (OTHER,)))
    assert plan is not None and plan.entries[0][1].amount == -300
    assert plan.low_balance == (1_200, 900)  # 1,500 - 300 before it: under 1,000 now
    assert plan == adm.decide(
        rules,
        adm.facts_after(
            rules_sql.facts_from_row(cols, rules, (NUMBER,))[0],
            earlier,
            1,
            (adm.Sent(OTHER, NOW, "S", None, None),),
            rules,
            NOW,
        ),
        NOW,
    )
    full = (*cols[:11], 10, *cols[12:])  # the quota's tenth already sent: decide refuses
    assert rules_sql.decide_one_of_row(one, rules, full, 0, None) is None
    nine = (*cols[:11], 9, *cols[12:])  # the earlier accept's is the tenth
    assert rules_sql.decide_one_of_row(one, rules, nine, 0, None) is not None
    assert rules_sql.decide_one_of_row(one, rules, nine, 0, (earlier, 1, (OTHER,))) is None
    # To the number the rule counts: its history grew (facts_after), decide answers.
    assert rules_sql.decide_one_of_row(one, rules, cols, 0, (earlier, 1, (NUMBER,))) is None


def test_the_earlier_accept_s_warning_is_carried() -> None:
    """Under the threshold and never warned, the first charge of the dip warns; after an
    earlier accept of the group that warned (its writes mark the account in the same
    statement, unseen by the row), the next is silent, as decide over facts_after's Facts."""
    rules = adm.Rules(charges=(adm.Priced("m1", 100, False),), billing=True)
    day = adm.day_key(NOW, "UTC")
    one = adm.one_send(rules, NOW, day)
    assert one is not None
    cols = (None, None, None, None, None, None, None, 0, "prepaid", 5_000, False, 1,
            ["cash"], [2_000], [None], None, None)  # fmt: skip
    earlier = adm.Plan(
        (("m0", Entry(EntryKind.CHARGE, -100, "cash", NOW, "m0")),), (2_100, 2_000), day
    )
    for before, low in [(None, (2_000, 1_900)), ((earlier, 1, (OTHER,)), None)]:
        plan = rules_sql.decide_one_of_row(one, rules, cols, 0, before)
        facts = rules_sql.facts_from_row(cols, rules, (NUMBER,))[0]
        if before is not None:
            facts = adm.facts_after(facts, earlier, 1, (), rules, NOW)
        assert plan is not None and plan == adm.decide(rules, facts, NOW)
        assert plan.low_balance == (low if before is None else None)
