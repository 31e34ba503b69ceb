"""smscs[].receipts one_per_message, the pure core: a carrier's one final receipt for a long
message settles the message's other parts the same SMSC took, marked with the part it came from;
parts still queued are not settled by it until the SMSC takes them (infer_on_accept)."""

from __future__ import annotations

from dataclasses import dataclass

from bridge.domain import lifecycle as lc


@dataclass(frozen=True)
class R:
    smsc: str
    smsc_msg_id: str
    state: str
    stat: str | None = None
    err: str | None = None
    received_at: int = 1000


def _three(states: tuple[str, str, str]) -> dict[str, list[tuple[int, str, str | None, int]]]:
    return {"m1": [(i + 1, st, "c", 500) for i, st in enumerate(states)]}


def test_every_part_mode_settles_only_the_part_named() -> None:
    parts = {("c", "A"): [("m1", 1, "sent")]}
    updates, unmatched = lc.settle_receipts(
        [R("c", "A", "delivered")], parts, siblings=_three(("sent", "sent", "sent"))
    )
    assert updates == [("m1", 1, "delivered", 1000, None, None)] and unmatched == []


def test_one_receipt_settles_the_other_sent_parts_with_its_outcome_and_mark() -> None:
    parts = {("c", "C"): [("m1", 3, "sent")]}
    updates, _ = lc.settle_receipts(
        [R("c", "C", "undeliverable", "UNDELIV", "001")],
        parts,
        one_per_message={"c"},
        siblings=_three(("sent", "sent", "sent")),
    )
    assert updates == [
        ("m1", 3, "undeliverable", 1000, "UNDELIV:001", None),
        ("m1", 1, "undeliverable", 1000, "UNDELIV:001", 3),
        ("m1", 2, "undeliverable", 1000, "UNDELIV:001", 3),
    ]
    # The message shows the receipt's error; it fails once, with three parts.
    s = lc.summarize([(st, e) for _m, _q, st, _a, e, _i in sorted(updates, key=lambda u: u[1])])
    assert (s.state, s.failed, s.error) == (lc.MSG_FAILED, 3, "UNDELIV:001")


def test_queued_final_and_other_smsc_parts_are_left_alone() -> None:
    siblings = {
        "m1": [
            (1, "sent", "c", 500),
            (2, "rejected", "c", 500),
            (3, "queued", None, None),
            (4, "sent", "d", 500),
        ]
    }
    updates, _ = lc.settle_receipts(
        [R("c", "A", "delivered")],
        {("c", "A"): [("m1", 1, "sent")]},
        one_per_message={"c"},
        siblings=siblings,
    )
    assert updates == [("m1", 1, "delivered", 1000, None, None)]


def test_later_receipts_for_inferred_parts_change_nothing() -> None:
    parts = {("c", "A"): [("m1", 1, "sent")], ("c", "B"): [("m1", 2, "sent")]}
    updates, unmatched = lc.settle_receipts(
        [R("c", "A", "delivered"), R("c", "B", "undeliverable", "UNDELIV", "001", 2000)],
        parts,
        one_per_message={"c"},
        siblings=_three(("sent", "sent", "sent")),
    )
    assert updates == [
        ("m1", 1, "delivered", 1000, None, None),
        ("m1", 2, "delivered", 1000, None, 1),
        ("m1", 3, "delivered", 1000, None, 1),
    ]
    assert unmatched == []


def test_infer_on_accept_takes_the_outcome_of_the_receipted_part() -> None:
    parts = [(1, "delivered", None, "c", None), (2, "delivered", None, "c", 1),
             (3, "sent", None, "c", None)]  # fmt: skip
    assert lc.infer_on_accept(parts, {3}, 5000) == [(3, "delivered", 5000, None, 1)]
    failed = [(1, "expired", "EXPIRED:027", "c", None), (2, "sent", None, "c", None)]
    assert lc.infer_on_accept(failed, {2}, 7) == [(2, "expired", 7, "EXPIRED:027", 1)]
    # An inferred part is no source: the part whose own receipt it took is.
    later = [(1, "sent", None, "c", None), (2, "delivered", None, "c", 3),
             (3, "delivered", None, "c", None), (4, "sent", None, "c", None)]  # fmt: skip
    assert lc.infer_on_accept(later, {4}, 9) == [(4, "delivered", 9, None, 3)]


def test_infer_on_accept_needs_a_receipt_not_a_submit_error_or_timeout() -> None:
    for st, err in (("failed", "ESME_RINVDSTADR"), ("timeout", "NO_RECEIPT"), ("sent", None)):
        assert (
            lc.infer_on_accept([(1, st, err, "c", None), (2, "sent", None, "c", None)], {2}, 1)
            == []
        )
    # Another SMSC's part (a failover between parts) says nothing of this one.
    assert (
        lc.infer_on_accept(
            [(1, "delivered", None, "d", None), (2, "sent", None, "c", None)], {2}, 1
        )
        == []
    )


def test_count_inferred_counts_only_inferred_parts_by_the_smsc_that_took_them() -> None:
    updates = [
        ("m1", 1, "delivered", 1, None, None),
        ("m1", 2, "delivered", 1, None, 1),
        ("m2", 3, "expired", 1, "EXPIRED", 1),
        ("m3", 2, "delivered", 1, None, 1),
    ]
    siblings = {"m1": [(1, "sent", "c", 0), (2, "sent", "c", 0)], "m2": [(3, "sent", "d", 0)]}
    into = {"c": 4}
    lc.count_inferred(updates, siblings, into)
    assert into == {"c": 5, "d": 1}  # m3's parts were not read: not counted, not a KeyError


def test_a_part_taken_after_the_receipt_is_settled_as_of_its_submission() -> None:
    updates, _ = lc.settle_receipts(
        [R("c", "A", "delivered", received_at=1000)],
        {("c", "A"): [("m1", 1, "sent")]},
        one_per_message={"c"},
        siblings={"m1": [(1, "sent", "c", 900), (2, "sent", "c", 1200)]},
    )
    assert updates == [
        ("m1", 1, "delivered", 1000, None, None),
        ("m1", 2, "delivered", 1200, None, 1),
    ]


def test_the_setting_defaults_to_every_part_and_refuses_other_values() -> None:
    from tests.unit.test_config import errors_of, minimal, parse

    assert parse(minimal()).smscs[0].receipts == "every_part"
    data = minimal()
    data["smscs"][0]["receipts"] = "one_per_message"
    assert parse(data).smscs[0].receipts == "one_per_message"
    data["smscs"][0]["receipts"] = "first_part"
    assert errors_of(data) == [
        "smscs[0].receipts: must be one of 'every_part', 'one_per_message'; got 'first_part'"
    ]
    data = minimal(sim={"receipt_parts": "middle"})
    assert errors_of(data) == [
        "sim.receipt_parts: must be one of 'every', 'first', 'last'; got 'middle'"
    ]


def test_infer_earlier_settles_the_sent_parts_by_a_receipt_from_before_the_switch() -> None:
    # (seq, state, error, SMSC, receipt_inferred_from, submitted at, done at)
    parts = [
        (3, "sent", None, "c", None, 130, None),
        (1, "undeliverable", "UNDELIV:001", "c", None, 100, 500),
        (2, "sent", None, "c", None, 600, None),  # taken after the receipt: as of then
        (4, "sent", None, "d", None, 100, None),  # another SMSC's: not told by it
        (5, "queued", None, None, None, None, None),
    ]
    assert lc.infer_earlier(parts, {"c"}) == [
        (2, "undeliverable", 600, "UNDELIV:001", 1),
        (3, "undeliverable", 500, "UNDELIV:001", 1),
    ]
    assert lc.infer_earlier(parts, {"d"}) == []  # "d" has no receipt of its own here
    # An inferred part or a submit error is no source; neither is an SMSC not switched.
    assert (
        lc.infer_earlier(
            [(1, "delivered", None, "c", 2, 1, 2), (2, "sent", None, "c", None, 1, None)], {"c"}
        )
        == []
    )
    assert (
        lc.infer_earlier(
            [(1, "failed", "ESME_RSYSERR", "c", None, 1, 2), (2, "sent", None, "c", None, 1, None)],
            {"c"},
        )
        == []
    )
    assert (
        lc.infer_earlier(
            [(1, "delivered", None, "c", None, 1, 2), (2, "sent", None, "c", None, 1, None)], {"x"}
        )
        == []
    )
