"""SQLite: what an accept no longer does inside the write lock (session 57).

(a) Within one write batch an account's later accepts take today's count and the pockets from
what its first accept read (`HeldSums.base`, session 55); the pockets came as the JSON text of
the statement's column and every accept parsed it again. The base now keeps the rows parsed:
one parse a batch and account. (b) `admission.decide` computed the quota's day of the send
again; the accept computed it before the lock already and passes it.
Both on a real store, the accepts of one write batch, with the answers and the money rows
checked as well (each accept still sees the earlier ones' charges).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge import jsonio  # noqa: E402
from bridge.domain import admission as adm  # noqa: E402
from bridge.domain.ledger import format_micro  # noqa: E402
from bridge.store.sqlite import SqliteStore  # noqa: E402
from tests.integration.test_sqlite_accept_cursor import NOW, send  # noqa: E402
from tests.integration.test_sqlite_accept_cursor import store as store  # noqa: E402
from tests.integration.test_sqlite_accept_held import cash, day_count, one_batch  # noqa: E402


@contextmanager
def counted(mp: pytest.MonkeyPatch, owner: Any, name: str) -> Iterator[list[Any]]:
    """Each call of `owner.name` from now on, its first argument kept."""
    calls: list[Any] = []
    real: Callable[..., Any] = getattr(owner, name)

    def counting(*args: Any, **kw: Any) -> Any:
        calls.append(args[0] if args else None)
        return real(*args, **kw)

    mp.setattr(owner, name, counting)
    yield calls


async def test_a_batch_parses_an_accounts_pockets_once(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with counted(monkeypatch, jsonio, "loads") as parses:
        outs = await one_batch(
            store, *(store.accept(send(n, f"n{n}", f"k{n}"), NOW) for n in range(1, 5))
        )
    # 1,000 of cash, 300 a send: the fourth finds the three charges and is refused.
    assert [o.accepted for o in outs] == [True, True, True, False]
    assert outs[3].refusal is not None and outs[3].refusal.code == "INSUFFICIENT_BALANCE"
    assert f"{format_micro(100)} available" in outs[3].refusal.message
    assert cash(store) == 100
    assert day_count(store) == 3
    # The pockets' JSON (a cash pocket) parsed by the first accept alone; before, by all four.
    pockets = [p for p in parses if isinstance(p, str) and '"cash"' in p]
    assert len(pockets) == 1, parses


async def test_a_second_batch_reads_and_parses_again(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await one_batch(store, store.accept(send(1, "n1", "k1"), NOW))
    with counted(monkeypatch, jsonio, "loads") as parses:
        (out,) = await one_batch(store, store.accept(send(2, "n2", "k2"), NOW))
    assert out.accepted
    assert [p for p in parses if isinstance(p, str) and '"cash"' in p] == ['[["cash",700,null]]']
    assert cash(store) == 400


async def test_decide_takes_the_day_the_accept_computed(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with (
        counted(monkeypatch, adm, "decide") as decided,
        counted(monkeypatch, adm, "decide_one") as decided_one,
        counted(monkeypatch, adm, "day_key") as days,
    ):
        outs = await one_batch(
            store, *(store.accept(send(n, f"n{n}", f"k{n}"), NOW) for n in (1, 2))
        )
    assert [o.accepted for o in outs] == [True, True]
    # Each decided once: the usual send by `decide_one` (session 61), before by `decide`.
    assert len(decided) + len(decided_one) == 2
    # Before the lock: the facts' query's day, which the accept takes too (session 58; before:
    # the accept's and the query's, 2); `decide` adds none (session 57; before: 3).
    assert len(days) == 2, days
    assert {o.plan.day for o in outs if o.plan is not None} == {adm.day_key(NOW, "UTC")}


def test_decide_with_and_without_the_day_decides_alike() -> None:
    from tests.integration.test_store_rules import billed, message

    m = message("m1")
    rules = billed(m, amount=300)
    facts = adm.Facts(
        recipients=(m.recipient,),
        sign_status="approved",
        more_sign_status={},
        template_status=None,
        opted_out=frozenset(),
        blocked=frozenset(),
        history={},
        day_count=0,
        daily_quota=0,
        account_kind="prepaid",
        low_balance_threshold=0,
        low_warned=False,
        pockets=[adm.Pocket("cash", 1_000, None)],
    )
    assert adm.decide(rules, facts, NOW) == adm.decide(
        rules, facts, NOW, adm.day_key(NOW, rules.tz)
    )
