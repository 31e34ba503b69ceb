"""Session 58 (h3): rollup_rows.roll works a row out once per distinct row values (a batch's
rows mostly share them: its one-part messages sent through one SMSC, or delivered), and with
`grouped` hands the SQLite roll-up its rows already grouped by the values their UPDATE writes
(the pass that built those groups from the list afterwards was a key a row).

Each result must be what the row gives alone: the memo's key holds every value the row's roll
reads, and counts written back (segments sent; delivered and failed scaled by the segments)
are shared only between ints (1 and 1.0, a REAL written by hand, are one key but not one value
written).
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from bridge.domain import lifecycle as lc
from bridge.store import rollup_rows

NOW = 1_700_000_000_000

STATES = ["queued", "sent", "delivered", "undeliverable", "expired_unsent", "timeout"]
MSG_STATES = ["queued", "sent", "delivered", "failed", "expired", "unknown"]


def _random_batch(rnd: random.Random, n: int) -> tuple[Any, ...]:
    """A batch as the roll-up gets it: many rows alike (the memo's hits), some not, odd values
    (a REAL count, a part given as a list, no part row, no message row)."""
    ids = [f"m{k:03d}" for k in range(n)]
    rows: dict[str, Any] = {}
    parts: dict[str, Any] = {}
    many: set[str] = set()
    touched: dict[str, bool] = {}
    air: dict[str, tuple[str, int]] = {}
    for k, mid in enumerate(ids):
        alike = rnd.random() < 0.6
        nseg = 1 if alike else rnd.choice([1, 2, 3])
        sent: Any = 0 if alike else rnd.choice([0, 1, 2, 1.0])
        if rnd.random() < 0.05:
            nseg = float(nseg)  # a REAL written by hand
        q_state = "claimed" if alike else rnd.choice(["claimed", "queued", "done"])
        holder = "inst-1" if q_state == "claimed" else None
        state = "queued" if alike else rnd.choice(MSG_STATES)
        if rnd.random() > 0.03:  # else: no such message
            rows[mid] = [k, state, rnd.choice(["a", "b"]), q_state, 0, 0, None,
                         rnd.choice([None, "intl"]), sent, nseg, holder]  # fmt: skip
        nparts = 1 if alike else rnd.choice([0, 1, 2, 3])
        got = [
            ("sent" if alike else rnd.choice(STATES), None if alike else rnd.choice([None, "E"]))
            for _ in range(nparts)
        ]
        if nparts and rnd.random() < 0.05:
            got = [list(p) for p in got]  # type: ignore[misc]  # unhashable: not kept
        if nparts or rnd.random() < 0.5:
            parts[mid] = got
        if nparts > 1:
            many.add(mid)
        if rnd.random() < 0.9:
            touched[mid] = alike or rnd.random() < 0.5
        if alike or rnd.random() < 0.5:
            air[mid] = ("smsc-a" if alike else rnd.choice(["smsc-a", "smsc-b"]), 1)
    return ids, rows, parts, many, touched, air


def _alone(batch: tuple[Any, ...], **kw: Any) -> tuple[list[Any], rollup_rows.Followups]:
    """Each row rolled by a call of its own: nothing to share."""
    ids, rows, parts, many, touched, air = batch
    out: list[Any] = []
    f = rollup_rows.Followups()
    for mid in ids:
        got, g = rollup_rows.roll([mid], rows, parts, many, touched, air, NOW, **kw)
        out += got
        for name in ("finals", "billed", "sent", "unsent"):
            getattr(f, name).extend(getattr(g, name))
    return out, f


def _typed(values: Any) -> Any:
    """A value with the type of each of its numbers: 1 and 1.0 differ here."""
    if isinstance(values, (tuple, list)):
        return tuple(_typed(v) for v in values)
    return (type(values).__name__, values)


@pytest.mark.parametrize("seed", range(100))
@pytest.mark.parametrize("kw", [{}, {"intermediate": True, "instance": "inst-1"}])
def test_a_batch_rolls_as_its_rows_alone(seed: int, kw: dict[str, Any]) -> None:
    batch = _random_batch(random.Random(seed), 30)
    together, f = rollup_rows.roll(*batch, NOW, **kw)
    alone, g = _alone(batch, **kw)
    assert _typed(together) == _typed(alone)
    assert _typed(vars(f)) == _typed(vars(g))


@pytest.mark.parametrize("seed", range(100))
def test_grouped_holds_the_rows_the_list_gives_by_their_written_values(seed: int) -> None:
    batch = _random_batch(random.Random(seed), 30)
    ids, rows = batch[0], batch[1]
    listed, f = rollup_rows.roll(*batch, NOW, instance="inst-1")
    want: dict[Any, list[Any]] = {}  # as rollup_messages grouped the list before session 58
    for mid, smsc, nsent, route, u in listed:
        want.setdefault((smsc, nsent, route, None if u is None else u[:7]), []).append(rows[mid][0])
    grouped: dict[Any, list[Any]] = {}
    nothing, g = rollup_rows.roll(*batch, NOW, instance="inst-1", grouped=grouped)
    assert nothing == []
    assert list(map(_typed, grouped)) == list(map(_typed, want))  # keys, in first-seen order
    assert list(grouped.values()) == list(want.values())
    assert _typed(vars(f)) == _typed(vars(g))
    assert ids  # the batch had rows


def test_a_batch_of_alike_rows_is_worked_out_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Any] = []
    real = lc.row_values

    def counted(*args: Any) -> Any:
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(lc, "row_values", counted)
    ids = [f"m{k:03d}" for k in range(50)]
    rows = {mid: [k, "queued", "a", "claimed", 0, 0, None, "intl", 0, 1, "i"] for k, mid in
            enumerate(ids)}  # fmt: skip
    parts = {mid: [("sent", None)] for mid in ids}
    grouped: dict[Any, list[Any]] = {}
    _nothing, f = rollup_rows.roll(
        ids, rows, parts, set(), dict.fromkeys(ids, True), dict.fromkeys(ids, ("s", 1)), NOW,
        instance="i", grouped=grouped,
    )  # fmt: skip
    assert len(calls) == 1  # one per row before session 58
    assert list(grouped.values()) == [list(range(50))]
    assert f.finals == []


def test_a_real_count_is_not_written_as_an_int() -> None:
    """1 and 1.0 are one dict key: a row holding a REAL (a hand edit) must not take the int
    row's values, nor the int row the REAL one's."""
    rows = {
        "m1": [1, "queued", "a", "claimed", 0, 0, None, None, 1, 3, "i"],
        "m2": [2, "queued", "a", "claimed", 0, 0, None, None, 1.0, 3, "i"],
        "m3": [3, "queued", "a", "claimed", 0, 0, None, None, 1, 3.0, "i"],
        "m4": [4, "queued", "a", "claimed", 0, 0, None, None, 1, 3, "i"],
    }
    ids = list(rows)
    parts = {mid: [("sent", None), ("sent", None), ("queued", None)] for mid in ids}
    out, _f = rollup_rows.roll(
        ids, rows, parts, set(ids), dict.fromkeys(ids, True), dict.fromkeys(ids, ("s", 1)), NOW
    )
    alone, _g = _alone((ids, rows, parts, set(ids), dict.fromkeys(ids, True),
                        dict.fromkeys(ids, ("s", 1))))  # fmt: skip
    assert _typed(out) == _typed(alone)
    assert [(r[0], type(r[2])) for r in out] == [
        ("m1", int), ("m2", float), ("m3", int), ("m4", int)
    ]  # fmt: skip
