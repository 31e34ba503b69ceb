"""bridge/store/sqlite_rules.py: a one-recipient send's facts statement, its arguments and the
decoding of its row (the usual accept's; h11 gave the common values their own paths)."""

from __future__ import annotations

import pytest

from bridge.domain.admission import Facts, FrequencyRule, Pocket, Rules
from bridge.domain.frequency import Limits
from bridge.store import sqlite_rules

CN = "+8613800000001"
NOW = 1_700_000_000_000


def rule(numbers: tuple[str, ...], signs: tuple[str | None, ...] = ()) -> FrequencyRule:
    return FrequencyRule("verification", "Acme", None, Limits(1, 5, 10), "UTC", numbers, signs)


@pytest.mark.parametrize(
    ("fr", "sign"),
    [
        (rule((CN,)), "Acme"),
        (rule((CN,), ("Beta",)), "Beta"),
        (rule((CN,), (None,)), None),
    ],
)
def test_the_limited_numbers_sign_is_its_own(fr: FrequencyRule, sign: str | None) -> None:
    query = sqlite_rules.one_facts_query("acc", Rules(frequency=fr), (CN,), NOW)
    assert query is not None
    assert query[1]["fsign"] == sign
    assert query[1]["since"] == NOW - 86_400_000


def test_the_prefixes_are_spelled_in_sql_not_bound() -> None:
    """Session 50: the number's 12 prefixes were 12 named arguments bound per accept; the
    statement now makes them from :to (its probe runs only with a list loaded)."""
    query = sqlite_rules.one_facts_query("acc", Rules(billing=True), (CN,), NOW)
    assert query is not None
    cols, args = query
    assert set(args) == {"day", "sign", "tpl", "trev", "to", "acc", "pockets", "reads"}
    assert type(args["pockets"]) is int  # bound without the sqlite3 module's adapters
    assert "substr(:to, 1, 16)" in cols and "'=' || :to" in cols


def test_a_number_longer_than_e164_takes_the_general_path() -> None:
    assert sqlite_rules.one_facts_query("acc", Rules(), ("+1" + "2" * 15,), NOW) is None
    assert sqlite_rules.one_facts_query("acc", Rules(), ("+1" + "2" * 14,), NOW) is not None


def test_signs_that_do_not_pair_with_the_numbers_still_fail() -> None:
    with pytest.raises(ValueError):
        sqlite_rules.one_facts_query("acc", Rules(frequency=rule((CN,), ("A", "B"))), (CN,), NOW)


def test_a_row_decodes_to_the_facts_of_the_general_path() -> None:
    row = (5, "prepaid", 100, 1, 3, "approved", None, 0, 0, "[]", '[["cash", 70, null]]')
    facts = sqlite_rules.facts_of_row(CN, row)
    assert facts == Facts(
        recipients=(CN,),
        sign_status="approved",
        history={CN: []},
        day_count=3,
        daily_quota=5,
        low_balance_threshold=100,
        low_warned=True,
        pockets=[Pocket("cash", 70, None)],
    )
    assert facts.opted_out == frozenset() and facts.blocked == frozenset()
    sent = sqlite_rules.facts_of_row(
        CN, (0, "postpaid", 0, 0, None, None, None, 1, 1, "[7,8]", None)
    )
    assert (sent.opted_out, sent.blocked) == (frozenset((CN,)), frozenset((CN,)))
    assert (sent.history, sent.pockets, sent.day_count) == ({CN: [7, 8]}, [], 0)
    assert (
        sqlite_rules.facts_of_row(CN, (0, "prepaid", 0, 0, 0, None, None, 0, 0, None, None)).history
        == {}
    )
