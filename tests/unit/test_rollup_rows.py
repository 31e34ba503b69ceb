"""rollup_rows.roll: the roll-up's per-message decision both engines apply."""

from __future__ import annotations

from typing import Any

import pytest

from bridge.domain import lifecycle as lc
from bridge.store import rollup_rows
from bridge.store.rollup_rows import NO_PARTS, Followups, Rolled, named

NOW = 1_700_000_000_000


def roll(*args: Any, **kwargs: Any) -> tuple[list[Rolled], Followups]:
    """rollup_rows.roll, its rows read by field (named)."""
    rolled, f = rollup_rows.roll(*args, **kwargs)
    return [named(r) for r in rolled], f


def row(
    mid: str,
    *,
    state: str = "queued",
    q_state: str = "claimed",
    pclass: str | None = "intl",
    sent: int = 0,
    segments: int = 1,
    holder: str | None = "inst-1",
) -> tuple[object, ...]:
    """ROLLUP_COLS: id, state, account, q_state, delivered, failed, error, price class, sent,
    segments, claim holder."""
    holder = holder if q_state == "claimed" else None
    return (mid, state, "acc", q_state, 0, 0, None, pclass, sent, segments, holder)


def test_a_submit_result_and_its_roll_up_are_one_row_change() -> None:
    rolled, f = roll(
        ["m1"], {"m1": row("m1")}, {"m1": [("sent", None)]}, set(), {"m1": True},
        {"m1": ("smsc-a", 1)}, NOW,
    )  # fmt: skip
    [r] = rolled
    assert (r.id, r.smsc, r.segments_sent, r.route) == ("m1", "smsc-a", 1, "smsc-a")
    assert r.update is not None
    assert (r.update.state, r.update.release, r.update.sent_at) == ("sent", True, NOW)
    assert f.finals == [] and f.billed == [] and f.unsent == [] and f.sent == []


def test_intermediate_reports_name_the_messages_just_sent() -> None:
    _rolled, f = roll(
        ["m1"], {"m1": row("m1")}, {"m1": [("sent", None)]}, set(), {"m1": True},
        {"m1": ("smsc-a", 1)}, NOW, intermediate=True,
    )  # fmt: skip
    assert f.sent == [("acc", "m1")]


def test_a_message_payload_pdu_counts_every_segment_and_bills_them() -> None:
    """One part row for three segments: the SMSC splits it; a failure in the same batch is
    refunded against three segments on the air."""
    rolled, f = roll(
        ["m1"], {"m1": row("m1", segments=3)}, {"m1": [("undeliverable", "X")]}, set(),
        {"m1": True}, {"m1": ("smsc-a", 1)}, NOW,
    )  # fmt: skip
    assert rolled[0].segments_sent == 3
    assert f.finals == [("acc", "m1")]
    assert f.billed == [("acc", "m1", lc.MSG_FAILED, "intl", 3, 3)]


def test_the_first_of_three_parts_counts_one_and_keeps_the_claim() -> None:
    parts = [("sent", None), ("queued", None), ("queued", None)]
    rolled, _f = roll(
        ["m1"], {"m1": row("m1", segments=3)}, {"m1": parts}, {"m1"}, {"m1": True},
        {"m1": ("smsc-a", 1)}, NOW,
    )  # fmt: skip
    [r] = rolled
    assert r.segments_sent == 1
    assert r.update is None or not r.update.release


def test_a_released_message_writes_its_count_but_no_route_and_no_roll_up() -> None:
    """Given back to the queue in the same batch (not touched): only the count changes."""
    parts = [("sent", None), ("queued", None)]
    rolled, f = roll(
        ["m1"], {"m1": row("m1", q_state="queued", segments=2)}, {"m1": parts}, {"m1"}, {},
        {"m1": ("smsc-a", 1)}, NOW,
    )  # fmt: skip
    assert rolled == [Rolled("m1", "smsc-a", 1, None, None)]
    assert f.finals == []


def test_nothing_to_write_is_left_out() -> None:
    """A receipt that changes nothing (a repeat), and a message gone (erased) or without
    parts, make no row change."""
    sent_row = row("m1", state="sent", q_state="done", sent=1)
    rolled, f = roll(
        ["m1", "gone", "bare"], {"m1": sent_row, "bare": row("bare")},
        {"m1": [("sent", None)], "bare": []}, set(), {"m1": False, "gone": False, "bare": False},
        {}, NOW,
    )  # fmt: skip
    assert rolled == []
    assert f.finals == []


def test_an_expired_message_never_sent_gives_its_place_back() -> None:
    rolled, f = roll(
        ["m1"], {"m1": row("m1", q_state="queued")}, {"m1": [("expired_unsent", "VALIDITY")]},
        set(), {"m1": True}, {}, NOW,
    )  # fmt: skip
    assert rolled[0].update is not None and rolled[0].update.state == lc.MSG_EXPIRED
    assert f.unsent == ["m1"]
    assert f.billed == [("acc", "m1", lc.MSG_EXPIRED, "intl", 0, 1)]


def test_the_route_is_written_only_on_the_results_instances_own_claim() -> None:
    """A late accepted part of inst-A, whose lease ran out, while inst-B holds the message: its
    count is written (the part left), the claim's route stays inst-B's."""
    for instance, route in (("inst-A", None), ("inst-B", "smsc-a"), (None, "smsc-a")):
        rolled, _f = roll(
            ["m1"], {"m1": row("m1", segments=2, holder="inst-B")},
            {"m1": [("sent", None), ("queued", None)]}, {"m1"}, {"m1": True},
            {"m1": ("smsc-a", 1)}, NOW, instance=instance,
        )  # fmt: skip
        assert [(r.smsc, r.segments_sent, r.route) for r in rolled] == [("smsc-a", 1, route)]


def test_a_message_to_release_without_parts_ends_unsent() -> None:
    """Released (a claim's roll-up, a lease's end): expired NO_PARTS, refunded in full, its
    place given back. Only rolled up after a receipt (not to release), or already out of the
    queue, it is left alone."""
    rows = {
        "m1": row("m1"),
        "m2": row("m2", q_state="queued"),
        "kept": row("kept"),
        "done": row("done", state="failed", q_state="done"),
    }
    touched = {"m1": True, "m2": True, "kept": False, "done": True}
    rolled, f = roll(list(rows), rows, {}, set(), touched, {}, NOW)
    assert [(r.id, r.update and (r.update.state, r.update.error)) for r in rolled] == [
        ("m1", (lc.MSG_EXPIRED, NO_PARTS)),
        ("m2", (lc.MSG_EXPIRED, NO_PARTS)),
    ]
    assert all(r.update is not None and r.update.release for r in rolled)
    assert f.finals == [("acc", "m1"), ("acc", "m2")]
    assert f.unsent == ["m1", "m2"]
    assert f.billed == [("acc", mid, lc.MSG_EXPIRED, "intl", 0, 1) for mid in ("m1", "m2")]


def test_the_rows_are_plain_tuples_and_no_row_update_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Session 55: roll gives each row as a tuple in Rolled's order, its update as row_values'
    tuple in RowUpdate's order, building neither (each ~3-4 k instructions, read once by the
    engines, twice a message in the owner's write lock); the values are row_update's."""

    def refused(*_a: Any, **_k: Any) -> None:
        raise AssertionError("a RowUpdate or Rolled built by roll")

    rows = {"m1": row("m1"), "m2": row("m2", state="sent", q_state="done", sent=1)}
    parts = {"m1": [("sent", None)], "m2": [("undeliverable", "X")]}
    args: tuple[Any, ...] = (
        ["m1", "m2"], rows, parts, set(), {"m1": True, "m2": False}, {"m1": ("a", 1)}, NOW,
    )  # fmt: skip
    want = [named(r) for r in rollup_rows.roll(*args)[0]]
    monkeypatch.setattr(lc, "RowUpdate", refused)
    monkeypatch.setattr(rollup_rows, "Rolled", refused)
    rolled, f = rollup_rows.roll(*args)
    assert [type(r) for r in rolled] == [tuple, tuple]
    assert [type(r[4]) for r in rolled] == [tuple, tuple]
    monkeypatch.undo()
    assert [named(r) for r in rolled] == want
    assert want[0] == Rolled("m1", "a", 1, "a", lc.RowUpdate(
        "sent", 0, 0, None, NOW, None, True, True, False
    ))  # fmt: skip
    assert want[1].update == lc.RowUpdate("failed", 0, 1, "X", None, NOW, False, False, True)
    assert f.finals == [("acc", "m2")]
