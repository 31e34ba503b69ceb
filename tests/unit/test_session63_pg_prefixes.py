"""Session 63 (h5): the usual accept's do-not-contact prefixes written by one printf-style format.

`_one_number_facts_args` writes a number's prefixes literal (every prefix from five characters,
then the exact entry, sorted) as `_PREFIXES_LITERAL[len] % ((number,) * k)`: "%.5s" of the
number is its first five characters. It must give session 60's general form's literal (and the
whole argument list) for a number of every length, of any characters but a quote or a backslash
(a "%" in the number included: it is an argument, not the format), and leave to the general form
what the format cannot write in order: a number sorting after the exact entry's "=", or longer
than the formats kept. A format one prefix short or long, or the order check dropped, fails here.
"""

from __future__ import annotations

import random

import pytest

from bridge.domain import admission as adm
from bridge.domain.frequency import Limits
from bridge.store import postgres_rules as rules_sql
from tests.unit.test_session61_pg_usual_writes import reference_facts_args

NOW = 1_796_622_213_290
CHARS = "0123456789+%{}, NaULéé汉=-xs"
FIRSTS = ["+", "0", "8", "%", "{", " ", "=", ">", "a", "é", "汉", ""]


def _rules(number: str, sign: str | None, rule_sign: str | None, ruled: bool) -> adm.Rules:
    fr = None
    if ruled:
        fr = adm.FrequencyRule(
            "verification", rule_sign, None, Limits(0, 0, 5), "UTC", (number,), ()
        )
    return adm.Rules(sign_name=sign, frequency=fr, billing=True, tz="UTC")


@pytest.mark.parametrize("seed", range(3))
def test_every_length_as_the_general_form(seed: int) -> None:
    rnd = random.Random(seed)
    direct = 0
    for size in range(rules_sql._PREFIX_FORMS + 8):
        for first in FIRSTS:
            number = (first + "".join(rnd.choice(CHARS) for _ in range(size)))[:size]
            sign = rnd.choice([None, "Acme", "示例", "a%s"])
            rules = _rules(number, sign, rnd.choice([None, sign, "Other"]), rnd.random() < 0.7)
            want = reference_facts_args("acc_1", rules, (number,), NOW, rate=False)
            got = rules_sql.facts_args("acc_1", rules, (number,), NOW, rate=False)
            assert got == want, (number, rules)
            one = rules_sql._one_number_facts_args("acc_1", rules, number, NOW, False)
            if one is not None:
                direct += 1
                assert one[4] == want[4], number
    assert direct > 200


def test_an_e164_number_of_any_length_is_written_directly() -> None:
    for size in range(1, rules_sql._PREFIX_FORMS):
        number = ("+8613800138000" * 4)[:size]
        rules = _rules(number, "Acme", "Acme", True)
        got = rules_sql._one_number_facts_args("acc_1", rules, number, NOW, True)
        assert got is not None, size
        assert got == reference_facts_args("acc_1", rules, (number,), NOW, rate=True)
        assert got[4].count('","') == max(size - 4, 0)  # its prefixes, then the exact entry
