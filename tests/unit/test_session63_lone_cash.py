"""`admission.lone_cash`, the "lone cash pocket beside pockets at 0" loop SQLite's accept calls
(session 63; PostgreSQL's keeps its own, cheaper over its two columns), gives what each engine's
own loop gives.

Until session 63 `sqlite_rules.decide_one_of` (over the statement's JSON rows: name, amount,
expiry) and `postgres_rules.decide_one_of_row` (over two array columns, names and amounts) each
wrote the loop, with a fast way for a lone pocket. Both are rebuilt here as they stood
(`_sqlite_before`, `_pg_before`) and compared with `lone_cash` over every list of pockets
hypothesis draws: names repeated (cash twice included), amounts at 0, negative, huge.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.domain import admission as adm

NAMES = ("cash", "voucher:v1", "card:c1", "voucher:v2")
amounts = st.one_of(st.sampled_from([0, 0, 1, -1, 10**15]), st.integers(-(10**16), 10**16))
expiries = st.one_of(st.none(), st.integers(0, 2 * 10**12))
pockets = st.lists(st.tuples(st.sampled_from(NAMES), amounts, expiries), max_size=6)


def _sqlite_before(rows: list[Any]) -> int | None:
    """sqlite_rules.decide_one_of's loop before session 63 (its rows parsed from the JSON)."""
    cash = None
    if rows:
        if len(rows) == 1:
            name, cash, _expires = rows[0]
            if name != "cash":
                cash = None
        else:
            for name, amount, _expires in rows:
                if name == "cash":
                    cash = amount
                elif amount != 0:
                    cash = None
                    break
    return cash


def _pg_before(pockets: list[str] | None, amounts: list[int] | None) -> int | None:
    """postgres_rules.decide_one_of_row's loop before session 63 (the columns' arrays; NULL
    when the account has no pocket)."""
    cash = None
    if pockets:
        assert amounts is not None
        if len(pockets) == 1:
            if pockets[0] == "cash":
                cash = amounts[0]
        else:
            for name, amount in zip(pockets, amounts, strict=True):
                if name == "cash":
                    cash = amount
                elif amount != 0:
                    cash = None
                    break
    return cash


@settings(max_examples=3000, deadline=None)
@given(pockets)
def test_lone_cash_is_each_engine_s_loop_before(rows: list[tuple[str, int, int | None]]) -> None:
    # As each engine calls it: SQLite's JSON rows (lists), PostgreSQL's columns zipped.
    json_rows = [list(r) for r in rows]
    sqlite_now = adm.lone_cash(json_rows) if json_rows else None
    names = [n for n, _a, _e in rows] or None
    sums = [a for _n, a, _e in rows] or None
    pg_now = adm.lone_cash(zip(names, sums, strict=True)) if names and sums else None
    assert sqlite_now == _sqlite_before(json_rows)
    assert pg_now == _pg_before(names, sums)


def test_the_cases_that_matter_by_name() -> None:
    """The comparison above, its answers spelled out (so a change to both the code and the
    rebuilt loops still has to keep these)."""
    assert adm.lone_cash([["cash", 500, None]]) == 500
    assert adm.lone_cash([["cash", -20, None]]) == -20  # owing: decide_one refuses it
    assert adm.lone_cash([["voucher:v1", 0, 1]]) is None  # no cash pocket
    assert adm.lone_cash([["voucher:v1", 0, 1], ["cash", 7, None], ["card:c1", 0, None]]) == 7
    assert adm.lone_cash([["cash", 7, None], ["voucher:v1", 1, 1]]) is None
    assert adm.lone_cash([["card:c1", -1, None], ["cash", 7, None]]) is None
    assert adm.lone_cash([["cash", 7, None], ["cash", 9, None]]) == 9  # the last
    assert adm.lone_cash([]) is None
