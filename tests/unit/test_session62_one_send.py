"""Session 62 (h7): the keyed send's work before the write lock, cheaper and the same.

`admission.one_send` builds its cash charge's Entry without the Entry's checks (`fastinit.maker`
with `checked=False`) when every check is proved where it is built, and the Entry it builds must
be the one the checked class builds, or raise as that does; `OneSend` is a tuple `decide_one`
unpacks; `day_key` keeps its last answer beside its lru_cache, which must never answer for
another zone or minute. `tests/unit/test_admission_one.py` holds `decide_one` equal to `decide`
over wide rules and rows (the Plans field by field, so the entries too).
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.domain import admission as adm
from bridge.domain.ledger import CHARGE, Entry, LedgerError
from bridge.fastinit import maker

NOW = 1_780_000_000_000
ZONES = ("UTC", "Asia/Shanghai", "America/New_York", "Pacific/Kiritimati", "Asia/Kolkata")


def test_an_unchecked_maker_skips_post_init_only() -> None:
    checked = maker(Entry)
    unchecked = maker(Entry, checked=False)
    # A charge of a positive amount is refused by Entry's checks, built by the unchecked maker:
    # it runs no __post_init__ (the caller proves the values).
    with pytest.raises(LedgerError):
        checked(CHARGE, 1, "cash", NOW, "m")
    odd = unchecked(CHARGE, 1, "cash", NOW, "m")
    assert type(odd) is Entry and odd.amount == 1
    good = unchecked(CHARGE, -5, "cash", NOW, "m")
    assert good == Entry(CHARGE, -5, "cash", NOW, "m") == checked(CHARGE, -5, "cash", NOW, "m")
    assert type(good) is Entry and hash(good) == hash(Entry(CHARGE, -5, "cash", NOW, "m"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        good.amount = 3  # type: ignore[misc]


def _rules(amount: int, international: bool, billing: bool = True) -> adm.Rules:
    return adm.Rules(
        charges=(adm.Priced("msg_1", amount, international),),
        billing=billing,
        tz="UTC",
    )


@settings(max_examples=300, deadline=None)
@given(
    amount=st.one_of(st.integers(-3, 3), st.integers(1, 10**18)),
    international=st.booleans(),
    now=st.one_of(st.integers(0, 2**53), st.integers(-(2**40), -1)),
    billing=st.booleans(),
)
def test_one_sends_entry_is_the_checked_one(
    amount: int, international: bool, now: int, billing: bool
) -> None:
    one = adm.one_send(_rules(amount, international, billing), now, "2026-01-01")
    if billing and amount <= 0:
        assert one is None
        return
    assert one is not None
    sign, template, billed, charged, intl, plan = one
    assert (sign, template, billed) == (False, False, billing)
    assert plan.day == "2026-01-01" and plan.low_balance is None
    if not billing:
        assert (charged, intl, plan.entries) == (0, False, ())
        return
    assert (charged, intl) == (amount, international)
    ((ref, entry),) = plan.entries
    want = Entry(CHARGE, -amount, "cash", now, "msg_1")
    assert ref == "msg_1" and entry == want and type(entry) is Entry
    assert type(entry.kind) is type(want.kind) and type(entry.at) is int


@pytest.mark.parametrize("now", [float(NOW), True])
def test_one_send_with_a_now_not_an_int_raises_as_the_checked_entry(now: object) -> None:
    rules = _rules(100, False)
    try:
        want: object = Entry(CHARGE, -100, "cash", now, "msg_1")  # type: ignore[arg-type]
    except LedgerError as exc:
        want = type(exc)
    try:
        got: object = adm.one_send(rules, now, "2026-01-01")  # type: ignore[arg-type]
    except LedgerError as exc:
        got = type(exc)
    if isinstance(want, type):
        assert got is want
    else:
        assert got is not None and got[5].entries[0][1] == want  # type: ignore[index]


def _day(now_ms: int, tz: str) -> str:
    return datetime.fromtimestamp(now_ms // 60_000 * 60, ZoneInfo(tz)).strftime("%Y-%m-%d")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(ZONES),
            # around midnights in every zone: a minute either side of each hour's boundary
            st.integers(0, 200).map(lambda h: NOW - NOW % 3_600_000 + h * 1_800_000),
            st.integers(-90_000, 90_000),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_day_key_answers_each_zone_and_minute_in_any_order(
    calls: list[tuple[str, int, int]],
) -> None:
    for tz, at, step in calls:
        now = at + step
        assert adm.day_key(now, tz) == _day(now, tz)
        # the same minute asked again in another zone, then in this one
        other = ZONES[(ZONES.index(tz) + 1) % len(ZONES)]
        assert adm.day_key(now, other) == _day(now, other)
        assert adm.day_key(now, tz) == _day(now, tz)


@pytest.mark.parametrize("now", [-1, -60_000, 0, NOW])
def test_day_key_of_a_zone_no_zoneinfo_names_raises_in_a_fresh_process(now: int) -> None:
    """The memo as the module starts it must answer for no zone: "" is none, and its day is
    ZoneInfo's ValueError as the lru_cache gives it (r5: the memo began (-1, "", ""), so a
    fresh process answered "" for the last minute of 1969 in zone ""). A fresh interpreter:
    the memo of this one holds what earlier tests asked."""
    code = (
        "from bridge.domain import admission as adm\n"
        "try:\n"
        f"    print(repr(adm.day_key({now}, '')))\n"
        "except ValueError:\n"
        "    print('ValueError')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "ValueError"
