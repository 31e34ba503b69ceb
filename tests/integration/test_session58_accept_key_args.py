"""SQLite: the accept's key statement, its arguments by position (session 58).

The key's statement of a keyed accept reads the send's facts too (`sqlite._authorize`). Its
arguments were a dict (`sqlite_rules.one_facts_query`'s, with the key's id and the account's
version joined) made positional by name at every accept (`sqlite_binds.positional_at`: a
frozenset of the Nones, a cached text looked up by it, each value picked by name), ~17 k
instructions before the write lock, and the dict ~11 k more. Now the facts' values come as a
tuple in a fixed order (`sqlite_rules.one_facts_values`) and a plan kept per pattern of Nones
(`sqlite._key_plan`) gives the same text and values. Held here: the text and values equal
`positional_at`'s for every pattern of the optional values (sign, template and revision, the
frequency rule's history with or without its sign and template, the account's version held or
not), and a keyed accept on a real store no longer calls `positional_at` (main: once an
accept), its answers and rows as before (`scripts/accept_differential.py` compares them all).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

_ROOT = str(Path(__file__).resolve().parents[2])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bridge.domain.admission import FrequencyRule, Priced, Rules  # noqa: E402
from bridge.domain.frequency import Limits  # noqa: E402
from bridge.store import sqlite as sqlite_store  # noqa: E402
from bridge.store import sqlite_binds, sqlite_rules  # noqa: E402
from bridge.store.sqlite import SqliteStore  # noqa: E402
from tests.integration.test_session57_accept_in_lock import counted  # noqa: E402
from tests.integration.test_sqlite_accept_cursor import NOW, send  # noqa: E402
from tests.integration.test_sqlite_accept_cursor import store as store  # noqa: E402
from tests.integration.test_sqlite_accept_held import cash, day_count, one_batch  # noqa: E402

CN = "+8613800000001"


def _rules(sign: str | None, template: str | None, revision: int | None, fr: object) -> Rules:
    return Rules(
        sign_name=sign,
        template_code=template,
        template_revision=revision,
        frequency=fr,  # type: ignore[arg-type]
        charges=(Priced("m1", 300, False),),
        billing=True,
        tz="Asia/Shanghai",
    )


FREQUENCIES = [
    None,
    FrequencyRule("verification", "Acme", None, Limits(1, 5, 10), "UTC", (CN,), ()),
    FrequencyRule("verification", None, None, Limits(1, 5, 10), "UTC", (CN,), (None,)),
    FrequencyRule("template", "Acme", "T1", Limits(1, 5, 10), "UTC", (CN,), ("Beta",)),
    FrequencyRule("raw", None, None, Limits(1, 5, 10), "UTC", (CN, "+8613800000002"), ()),
    # A rule that does not count this number: no history read.
    FrequencyRule("raw", "Acme", None, Limits(1, 5, 10), "UTC", ("+8613800000009",), ()),
]


@pytest.mark.parametrize(
    ("sign", "template", "revision", "fr", "aver", "idem"),
    list(
        itertools.product(
            (None, "Acme"),
            (None, "T1"),
            (None, 3),
            FREQUENCIES,
            (None, 8419031815942872041),
            (False, True),
        )
    ),
)
def test_the_key_statement_is_positional_at_s(
    sign: str | None,
    template: str | None,
    revision: int | None,
    fr: object,
    aver: int | None,
    idem: bool,
) -> None:
    rules = _rules(sign, template, revision, fr)
    values = sqlite_rules.one_facts_values("acc_a", rules, (CN,), NOW)
    query = sqlite_rules.one_facts_query("acc_a", rules, (CN,), NOW)
    assert values is not None and query is not None
    assert sqlite_rules.facts_query(values) == query
    cols, v = values
    plans = sqlite_store._key_plan(
        cols,
        (
            v[1] is None,
            v[2] is None,
            v[3] is None,
            v[8] is None,
            v[9] is None,
            v[10] is None,
            aver is None,
        ),
        True,
        idem,
    )
    # Session 62: two statements, reading today's count and the pockets or not, each with only
    # the columns `sqlite_rules.key_cols` keeps (no `:reads` bound); session 64: each with the
    # nonce's probe too, and the Idempotency-Key's when the send has one (`idem`), its arguments
    # the same with the nonce (and the key) after them.
    for (text, pick, _row), probed_text, reads in zip(
        plans[:2], plans[2:], (True, False), strict=True
    ):
        facts, _places = sqlite_rules.key_cols(
            cols, sign is not None, template is not None, reads, True
        )
        args = {**query[1], "key_id": "K1", "aver": aver}
        del args["reads"], args["pockets"]
        want = sqlite_binds.positional_at(sqlite_store._authorize_facts_sql(facts), args, "key_id")
        assert (text, pick((*v, "K1", aver))) == want[:2]
        # The probed text: the same statement, its head NULL only when neither probe finds a
        # row, its flags then "F N I" (`_authorize`'s reading).
        probes = ["EXISTS(SELECT 1 FROM nonces WHERE key_id=:key_id AND nonce=:nonce)"]
        if idem:
            probes.append("EXISTS(SELECT 1 FROM idempotency WHERE account_id=:acc AND key=:ikey)")
        named = sqlite_store._authorize_facts_sql(facts).replace(
            " THEN NULL ELSE (k.status IS NOT 'active')",
            "".join(f" AND NOT {p}" for p in probes)
            + " THEN NULL ELSE (k.status IS NOT 'active')"
            + "".join(f" || {p}" for p in probes),
        )
        probed_args = {**args, "nonce": "n1", "ikey": "i1"} if idem else {**args, "nonce": "n1"}
        text_by_name, values_by_name, _at = sqlite_binds.positional_at(named, probed_args, "key_id")
        # Numbered otherwise (the probes' values last), the same statement: the same values at
        # each parameter's place.
        got = pick((*v, "K1", aver)) + (("n1", "i1") if idem else ("n1",))
        assert _by_place(probed_text, got) == _by_place(text_by_name, values_by_name)


def _by_place(text: str, values: tuple[object, ...]) -> list[tuple[str, object]]:
    """The text with each `?N` read as its value: (the text between, the value) in order."""
    import re

    parts = re.split(r"\?(\d+)", text)
    return [(parts[i], values[int(parts[i + 1]) - 1]) for i in range(0, len(parts) - 1, 2)] + [
        (parts[-1], None)
    ]


def test_no_facts_statement_for_the_sends_read_otherwise() -> None:
    rules = _rules(None, None, None, None)
    for recipients in ((CN, "+8613800000002"), ("+1" + "2" * 15,)):
        assert sqlite_rules.one_facts_values("acc_a", rules, recipients, NOW) is None
        assert sqlite_rules.one_facts_query("acc_a", rules, recipients, NOW) is None
    with_more = Rules(sign_name="Acme", more_signs=("Beta",))
    assert sqlite_rules.one_facts_values("acc_a", with_more, (CN,), NOW) is None


async def test_a_keyed_accept_makes_its_statement_positional_without_names(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    with counted(monkeypatch, sqlite_binds, "positional_at") as named:
        outs = await one_batch(
            store, *(store.accept(send(n, f"n{n}", f"k{n}"), NOW) for n in range(1, 5))
        )
    assert named == []  # main: one a keyed accept
    # 1,000 of cash, 300 a send: the fourth is refused with the three charges' balance.
    assert [o.accepted for o in outs] == [True, True, True, False]
    assert [o.plan is not None for o in outs[:3]] == [True, True, True]
    assert outs[3].refusal is not None and outs[3].refusal.code == "INSUFFICIENT_BALANCE"
    assert cash(store) == 100
    assert day_count(store) == 3
    # A replay of the first key answers with its record, as before.
    (again,) = await one_batch(store, store.accept(send(9, "n9", "k1"), NOW))
    assert not again.accepted and again.existing is not None
