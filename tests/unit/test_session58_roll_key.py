"""Session 58 review (r4): every value `rollup_rows.roll`'s memo key holds is one the row's
result depends on.

`roll` works a row out once per distinct key (the row's values `_roll_one` reads, its parts, its
submit results, its roll-up flag, whether it has a second part row) and hands the same result to
every later row with an equal key. `test_session58_roll_once.py` rolls batches together and each
row alone, but its rows that are not alike differ in many values at once, and its message rows
all hold 0, 0 and None as their old counts and error: a key without the old state, the queue
state, the old counts, the old error, the segments sent, the segments, the holder, the submit
results or the many-parts flag passed it (each counted, one dropped at a time). Here each row
is followed by two twins that differ from it in one of those values alone, and each batch must
roll as its rows alone, and group as the list does: each of the twelve dropped fails.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from bridge.domain import lifecycle as lc
from bridge.store import rollup_rows

NOW = 1_700_000_000_000

SEG_STATES = [lc.SEG_QUEUED, "sent", "delivered", "undeliverable", "timeout", "expired_unsent"]
MSG_STATES = ["queued", "sent", "delivered", "failed", "expired", "unknown"]


def _batch(rnd: random.Random, n: int) -> tuple[Any, ...]:
    """`n` message rows, each followed by two twins that differ from it in one value alone (one
    the memo's key must hold: the row is worked out first, its twins would take its result)."""
    ids: list[str] = []
    rows: dict[str, Any] = {}
    parts: dict[str, Any] = {}
    many: set[str] = set()
    touched: dict[str, bool] = {}
    air: dict[str, tuple[str, int]] = {}
    for k in range(n):
        nseg = rnd.choice([1, 2, 3])
        row = [
            3 * k,
            rnd.choice(["queued", "queued", "sent", "delivered"]),  # old state
            "a",  # account
            rnd.choice(["claimed", "claimed", "queued", "done"]),
            rnd.choice([0, 1]),  # old delivered
            rnd.choice([0, 1]),  # old failed
            rnd.choice([None, "E1"]),  # old error
            "D",  # price class
            rnd.choice([0, 1]),  # segments sent
            nseg,
            rnd.choice(["inst-1", "inst-2"]),  # holder
        ]
        nparts = rnd.choice([1, 1, 2, 3])
        its_parts = [(rnd.choice(SEG_STATES), rnd.choice([None, "E1"])) for _ in range(nparts)]
        one_of_many = nparts > 1
        release: bool | None = rnd.choice([True, False, None])
        on_air: tuple[str, int] | None = rnd.choice([("smsc-a", 1), ("smsc-a", 2), None])
        for twin in range(3):
            mid = f"m{k:03d}-{twin}"
            r, p, m, t, a = list(row), list(its_parts), one_of_many, release, on_air
            r[0] += twin
            if twin:  # one value changed
                what = rnd.randrange(12)
                if what == 0:
                    r[1] = "sent" if r[1] != "sent" else "queued"
                elif what == 1:
                    r[3] = "queued" if r[3] == "claimed" else "claimed"
                elif 2 <= what <= 4:  # old delivered, old failed, old error
                    r[what + 2] = (None if r[6] else "E2") if what == 4 else 1 - r[what + 2]
                elif what == 5:
                    r[8] = 1 - r[8]
                elif what == 6:
                    r[9] = 1 if r[9] > 1 else 3
                elif what == 7:
                    r[10] = "inst-2" if r[10] == "inst-1" else "inst-1"
                elif what == 8:
                    a = None if a is not None else ("smsc-b", 1)
                elif what == 9:
                    t = None if t is not None else True
                elif what == 10:
                    m = not m
                else:
                    p = p[:-1] or [("delivered", None)]
            ids.append(mid)
            rows[mid] = tuple(r)
            parts[mid] = p
            if m:
                many.add(mid)
            if t is not None:
                touched[mid] = t
            if a is not None:
                air[mid] = a
    return ids, rows, parts, many, touched, air


def _alone(batch: tuple[Any, ...], **kw: Any) -> tuple[list[Any], dict[str, list[Any]]]:
    """Each row rolled by a call of its own: nothing shared."""
    ids, rows, parts, many, touched, air = batch
    out: list[Any] = []
    f: dict[str, list[Any]] = {"finals": [], "billed": [], "sent": [], "unsent": []}
    for mid in ids:
        got, g = rollup_rows.roll([mid], rows, parts, many, touched, air, NOW, **kw)
        out += got
        for name, values in f.items():
            values.extend(getattr(g, name))
    return out, f


@pytest.mark.parametrize("seed", range(60))
@pytest.mark.parametrize(
    "kw", [{}, {"instance": "inst-1"}, {"intermediate": True, "instance": "inst-2"}]
)
def test_rows_that_differ_in_one_value_roll_as_alone(seed: int, kw: dict[str, Any]) -> None:
    batch = _batch(random.Random(seed), 40)
    together, f = rollup_rows.roll(*batch, NOW, **kw)
    alone, g = _alone(batch, **kw)
    assert together == alone
    assert vars(f) == g


@pytest.mark.parametrize("seed", range(60))
def test_grouped_holds_what_the_list_gives(seed: int) -> None:
    batch = _batch(random.Random(seed), 40)
    rows = batch[1]
    listed, f = rollup_rows.roll(*batch, NOW, instance="inst-1")
    want: dict[Any, list[Any]] = {}
    for mid, smsc, nsent, route, u in listed:
        want.setdefault((smsc, nsent, route, None if u is None else u[:7]), []).append(rows[mid][0])
    grouped: dict[Any, list[Any]] = {}
    assert rollup_rows.roll(*batch, NOW, instance="inst-1", grouped=grouped)[0] == []
    assert list(grouped.items()) == list(want.items())
    alone, g = _alone(batch, instance="inst-1")
    assert listed == alone and vars(f) == g
