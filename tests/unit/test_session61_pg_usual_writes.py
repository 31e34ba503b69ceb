"""Session 61: the PostgreSQL accept's usual arguments written directly, its writes' text kept.

- `facts_args` writes one recipient's literals (its number, its prefixes, its frequency
  rule's number and sign) directly (`_one_number_facts_args`): for every input it must give
  what the general form gives (session 60's, kept below as the reference), hostile texts, more
  signs, rules over other numbers and per-number signs included (those go the general way).
- `_usual_writes` gives an accept without a rate, with one ledger entry or none and no
  low-balance event, the statement text the general form (`Writes.add`, `add_plan`) made for
  the first accept of its shape, and the arguments in that form's order: text and arguments
  must be the general form's for every shape, entry and value; anything else is None (the
  caller builds it as before). After the first accept of a shape, no CTE is formatted again.
"""

from __future__ import annotations

import random
import subprocess
import sys
from typing import Any

import pytest

from bridge.domain import admission as adm
from bridge.domain.frequency import DAY_MS, Limits
from bridge.domain.ledger import Entry, EntryKind
from bridge.store import postgres as pg
from bridge.store import postgres_rules as rules_sql
from bridge.store.models import AcceptBatch, NewMessage, NewSegment
from bridge.store.postgres_arrays import text_array
from bridge.store.rules_rows import number_prefixes


def reference_facts_args(
    account_id: str, rules: adm.Rules, recipients: tuple[str, ...], now: int, *, rate: bool
) -> list[Any]:
    """Session 60's facts_args (the general form)."""
    fr = rules.frequency
    sign_of = dict(fr.sign_of()) if fr is not None else {}
    signs = [n for n in (rules.sign_name, *rules.more_signs) if n is not None]
    return [
        account_id,
        text_array(dict.fromkeys(signs)),
        rules.template_code,
        text_array(dict.fromkeys(recipients)),
        text_array(sorted({p for n in recipients for p in number_prefixes(n)})),
        adm.day_key(now, rules.tz),
        text_array(sign_of),
        now - DAY_MS,
        bool(rules.billing and rules.charges),
        rate,
        text_array(sign_of.values()),
        fr.kind if fr is not None else None,
        fr.template if fr is not None else None,
        rules.template_revision,
    ]


PIECES = ["+86", "1380000", "0", "9", '"', "\\", ",", "{", "}", " ", "NULL", "é", "汉", "", "="]


def _text(rnd: random.Random, hostile: float = 0.2) -> str:
    if rnd.random() > hostile:
        return "+86138" + str(rnd.randrange(10**8)).zfill(8)
    return "".join(rnd.choice(PIECES) for _ in range(rnd.randint(0, 5)))


def _sign(rnd: random.Random) -> str | None:
    r = rnd.random()
    if r < 0.4:
        return None
    if r < 0.8:
        return rnd.choice(["Acme", "示例", "a b", ""])
    return _text(rnd, hostile=1.0)


def _rules(rnd: random.Random, recipients: tuple[str, ...]) -> adm.Rules:
    fr = None
    if rnd.random() < 0.8:
        r = rnd.random()
        numbers = recipients if r < 0.7 else (() if r < 0.8 else (*recipients, _text(rnd)))
        signs: tuple[str | None, ...] = ()
        if rnd.random() < 0.3:
            signs = tuple(_sign(rnd) for _ in range(len(numbers) + (rnd.random() < 0.1)))
        fr = adm.FrequencyRule(
            rnd.choice(["raw", "verification", "template"]),
            _sign(rnd),
            rnd.choice([None, "T1", 'q"t']),
            Limits(per_minute=0, per_hour=0, per_day=50),
            "Asia/Shanghai",
            numbers,
            signs,
        )
    return adm.Rules(
        sign_name=_sign(rnd),
        more_signs=tuple(_sign(rnd) or "x" for _ in range(rnd.random() < 0.15)),
        template_code=rnd.choice([None, "T1"]),
        template_revision=rnd.choice([None, 3]),
        frequency=fr,
        charges=(),
        billing=rnd.random() < 0.5,
        tz=rnd.choice(["UTC", "Asia/Shanghai", "America/New_York"]),
    )


@pytest.mark.parametrize("seed", range(4))
def test_facts_args_as_the_general_form(seed: int) -> None:
    rnd = random.Random(seed)
    fast = 0
    for _ in range(3_000):
        recipients = tuple(_text(rnd) for _ in range(1 if rnd.random() < 0.85 else 2))
        rules = _rules(rnd, recipients)
        now = 1_796_622_213_290 + rnd.randrange(-(10**10), 10**10)
        rate = rnd.random() < 0.5
        try:
            want = reference_facts_args("acc_1", rules, recipients, now, rate=rate)
        except ValueError:  # a rule's signs not one a number: refused both ways
            with pytest.raises(ValueError):
                rules_sql.facts_args("acc_1", rules, recipients, now, rate=rate)
            continue
        got = rules_sql.facts_args("acc_1", rules, recipients, now, rate=rate)
        assert got == want, (rules, recipients)
        assert [type(v) for v in got] == [type(v) for v in want]
        if len(recipients) == 1:
            fast += (
                rules_sql._one_number_facts_args("acc_1", rules, recipients[0], now, rate)
                is not None
            )
    assert fast > 1_000  # the direct form was taken (and checked) that often


def _general_writes(batch: AcceptBatch, shape: int, plan: adm.Plan, n: int) -> rules_sql.Writes:
    """Session 60's writes of an accept without a rate (PostgresStore._accept_one)."""
    w = rules_sql.Writes(pg._message_arrays(batch, shape))
    w.add(pg._WRITE_MESSAGES[shape][0])
    w.add(pg._WRITE_MESSAGES[shape][1])
    rules_sql.add_plan(w, batch.account_id, plan, n)
    if plan.low_balance is not None:
        rules_sql.add_low_balance_event(w, batch.account_id, plan.low_balance, 1_000)
    return w


def _batch(rnd: random.Random, account_id: str) -> AcceptBatch:
    msgs = []
    for k in range(1 if rnd.random() < 0.7 else rnd.randint(0, 3)):
        parts = tuple(
            NewSegment(s + 1, 3, 0x40, bytes([rnd.randrange(256)]) * 3, b"" if s else b"\x00")
            for s in range(1 if rnd.random() < 0.6 else 3)
        )
        msgs.append(
            NewMessage(
                f"msg_{k}",
                account_id,
                "bat_1",
                _text(rnd),
                "gsm7",
                0,
                len(parts),
                parts,
                1_700_000_000_000 + k,
                text=_text(rnd, hostile=0.5),
                sign_name=_sign(rnd),
                price_class="D",
            )
        )
    return AcceptBatch(account_id, tuple(msgs), None, None)


def _plan(rnd: random.Random, account_id: str) -> adm.Plan:
    entries = tuple(
        (
            f"msg_{k}",
            Entry(
                *rnd.choice(
                    [
                        (EntryKind.CHARGE, -rnd.randrange(1, 2**62), "cash"),
                        (EntryKind.VOUCHER_SPEND, -rnd.randrange(1, 2**62), "voucher:v\\1"),
                        (EntryKind.CARD_SPEND, -rnd.randrange(1, 2**62), 'card:c"q'),
                    ]
                ),
                1_700_000_000_000 + k,
                rnd.choice([None, f"msg_{k}", "a,b"]),
                rnd.choice([None, 1_800_000_000_000]),
            ),
        )
        for k in range(rnd.choice([0, 1, 1, 1, 2]))
    )
    low = (100, 50) if rnd.random() < 0.1 else None
    return adm.Plan(entries, low, rnd.choice(["2026-12-07", "2026-12-08"]))


@pytest.mark.parametrize("seed", range(3))
def test_usual_writes_as_the_general_form(seed: int) -> None:
    rnd = random.Random(seed)
    pg._USUAL_WRITES.clear()  # the first of each shape made here, then kept
    usual = 0
    for _ in range(2_000):
        account_id = rnd.choice(["acc_1", "acc_2", 'a"c\\c'])
        batch = _batch(rnd, account_id)
        plan = _plan(rnd, account_id)
        n = len(batch.messages)
        shape = pg._shape(batch)
        want = _general_writes(batch, shape, plan, n)
        got = pg._usual_writes(batch, shape, plan, n)
        if plan.low_balance is not None or len(plan.entries) > 1:
            assert got is None
            continue
        assert got is not None
        usual += 1
        assert got.ctes() == want.ctes()
        assert got.sql() == want.sql()
        assert got.args == want.args
        assert [type(v) for v in got.args] == [type(v) for v in want.args]
    assert usual > 1_000


def test_usual_writes_format_nothing_after_the_first(monkeypatch: pytest.MonkeyPatch) -> None:
    """The usual accept's writes are made once a shape: the second accept of a shape adds no
    CTE and formats no plan (the general form did both at every accept), and its text is the
    first one's str object."""
    rnd = random.Random(7)
    pg._USUAL_WRITES.clear()
    batch = _batch(random.Random(1), "acc_1")
    while len(batch.messages) != 1 or len(batch.messages[0].segments) != 1:
        batch = _batch(rnd, "acc_1")
    plan = adm.Plan(
        (("msg_0", Entry(EntryKind.CHARGE, -45_000, "cash", 1_700_000_000_000, "msg_0")),),
        None,
        "2026-12-07",
    )
    shape = pg._shape(batch)
    first = pg._usual_writes(batch, shape, plan, 1)
    assert first is not None

    def refused(*_a: Any, **_k: Any) -> None:
        raise AssertionError("the usual writes built again")

    monkeypatch.setattr(rules_sql, "add_plan", refused)
    monkeypatch.setattr(rules_sql.Writes, "add", refused)
    second = pg._usual_writes(batch, shape, plan, 1)
    assert second is not None
    assert second.ctes() is first.ctes()
    assert second.args == first.args


def reference_facts_from_row(
    row: Any, rules: adm.Rules, recipients: tuple[str, ...]
) -> tuple[adm.Facts, tuple[float | None, float | None]]:
    """Session 60's facts_from_row (at 0)."""
    (sign_names, sign_statuses, template_status, opted, dnc, h_numbers, h_times, quota, kind,
     threshold, warned, day_count, pockets, amounts, expiries, tokens, at_) = row[:17]  # fmt: skip
    fr = rules.frequency
    if dnc:
        found = set(dnc)
        blocked = frozenset(n for n in recipients if any(p in found for p in number_prefixes(n)))
    else:
        blocked = frozenset()
    status = dict(zip(sign_names, sign_statuses, strict=True)) if sign_names else {}
    history: dict[str, list[int]] = {n: [] for n, _s in fr.sign_of()} if fr is not None else {}
    if h_numbers:
        for number, t in zip(h_numbers, h_times, strict=True):
            history[number].append(t)
    read = (
        [adm.Pocket(p, a, e) for p, a, e in zip(pockets, amounts, expiries, strict=True)]
        if pockets
        else []
    )
    facts = adm.Facts(
        recipients,
        status.get(rules.sign_name) if rules.sign_name is not None else None,
        {name: status.get(name) for name in rules.more_signs},
        template_status,
        frozenset(opted) if opted else frozenset(),
        blocked,
        history,
        day_count or 0,
        quota if quota is not None else 0,
        kind if kind is not None else "prepaid",
        threshold or 0,
        bool(warned),
        read,
    )
    return facts, (tokens, at_)


@pytest.mark.parametrize("seed", range(2))
def test_facts_from_row_as_before(seed: int) -> None:
    """facts_from_row's history keys from the rule's numbers (its pairs only with per-number
    signs) and no comprehension for no further signs: the same Facts as session 60's."""
    rnd = random.Random(seed)
    for _ in range(2_000):
        recipients = tuple(_text(rnd) for _ in range(rnd.randint(1, 3)))
        rules = _rules(rnd, recipients)
        fr = rules.frequency
        numbers = [] if fr is None else [n for n in fr.numbers if rnd.random() < 0.6]
        signs = [s for s in (rules.sign_name, *rules.more_signs) if s and rnd.random() < 0.7]
        row = (
            signs or None,
            [rnd.choice(["approved", "pending"]) for _ in signs] or None,
            rnd.choice([None, "approved"]),
            [r for r in recipients if rnd.random() < 0.2] or None,
            [p for r in recipients for p in number_prefixes(r) if rnd.random() < 0.05] or None,
            numbers or None,
            [rnd.randrange(10**12) for _ in numbers] or None,
            rnd.choice([None, 0, 50]),
            rnd.choice([None, "prepaid", "postpaid"]),
            rnd.choice([None, 0, 100]),
            rnd.choice([None, False, True]),
            rnd.choice([None, 3]),
            ["cash"] if rnd.random() < 0.5 else None,
            [100],
            [None],
            rnd.choice([None, 1.5]),
            rnd.choice([None, 2.5]),
        )
        try:
            want = reference_facts_from_row(row, rules, recipients)
        except ValueError:  # a rule's signs not one a number: refused both ways
            with pytest.raises(ValueError):
                rules_sql.facts_from_row(row, rules, recipients)
            continue
        got = rules_sql.facts_from_row(row, rules, recipients)
        assert got == want
        assert list(got[0].history) == list(want[0].history)


def test_a_fixed_writes_refuses_another_cte_even_without_asserts() -> None:
    """An `add` on Writes whose text is fixed raises whatever the interpreter's flags: an assert
    there would be gone under `python -O` and the CTE silently dropped (r2 noticed)."""
    w = rules_sql.Writes.fixed([1], "w0 AS (SELECT $1)")
    with pytest.raises(RuntimeError, match="no more CTEs"):
        w.add("SELECT 2")
    assert w.ctes() == "w0 AS (SELECT $1)"
    out = subprocess.run(
        [sys.executable, "-O", "-c", _UNDER_O],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0 and out.stdout.strip() == "refused", out.stdout + out.stderr


_UNDER_O = """
from bridge.store import postgres_rules as rules_sql
w = rules_sql.Writes.fixed([1], "w0 AS (SELECT $1)")
try:
    w.add("SELECT 2")
except RuntimeError:
    print("refused")
else:
    print("dropped")
"""
