"""Roll-up of segment states to the message state, checked exhaustively and by property."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.domain import lifecycle as lc

NEGATIVE_RECEIPTS = ("undeliverable", "expired", "rejected", "unknown")
SEGMENT_STATES = (
    lc.SEG_QUEUED,
    lc.SEG_SENT,
    lc.SEG_DELIVERED,
    lc.SEG_FAILED,
    lc.SEG_TIMEOUT,
    lc.SEG_EXPIRED_UNSENT,
    *NEGATIVE_RECEIPTS,
)
FINAL = {
    lc.SEG_DELIVERED,
    lc.SEG_FAILED,
    lc.SEG_TIMEOUT,
    lc.SEG_EXPIRED_UNSENT,
    *NEGATIVE_RECEIPTS,
}
NEGATIVE = {lc.SEG_FAILED, *NEGATIVE_RECEIPTS}


def expected(states: list[str]) -> str:
    """The rule, written independently of the implementation."""
    if not states or lc.SEG_QUEUED in states:
        return lc.MSG_QUEUED
    if not all(s in FINAL for s in states):
        return lc.MSG_SENT
    if all(s == lc.SEG_DELIVERED for s in states):
        return lc.MSG_DELIVERED
    if any(s in NEGATIVE for s in states):
        return lc.MSG_FAILED
    if lc.SEG_EXPIRED_UNSENT in states:
        return lc.MSG_EXPIRED
    return lc.MSG_UNKNOWN


def test_state_sets_match_the_module() -> None:
    assert lc.SEG_FINAL == FINAL
    assert lc.SEG_NEGATIVE == NEGATIVE
    assert {lc.MSG_DELIVERED, lc.MSG_FAILED, lc.MSG_EXPIRED, lc.MSG_UNKNOWN} == lc.MSG_FINAL


@pytest.mark.parametrize("length", [1, 2, 3, 4])
def test_rollup_exhaustive_up_to_four_parts(length: int) -> None:
    for combo in itertools.product(SEGMENT_STATES, repeat=length):
        states = list(combo)
        assert lc.rollup(states) == expected(states), states


parts = st.lists(st.sampled_from(SEGMENT_STATES), min_size=1, max_size=12)


@settings(max_examples=400, deadline=None)
@given(parts)
def test_rollup_properties(states: list[str]) -> None:
    got = lc.rollup(states)
    assert got == expected(states)
    # Final only when every part is final: a long message is never reported on a guess.
    assert (got in lc.MSG_FINAL) == all(s in FINAL for s in states)
    assert (got == lc.MSG_DELIVERED) == all(s == lc.SEG_DELIVERED for s in states)
    if got in lc.MSG_FINAL and any(s in NEGATIVE for s in states):
        assert got == lc.MSG_FAILED
    # Takes an iterable once and ignores order.
    assert lc.rollup(iter(states)) == got
    assert lc.rollup(list(reversed(states))) == got


@settings(max_examples=200, deadline=None)
@given(parts, st.sampled_from(SEGMENT_STATES))
def test_one_queued_part_keeps_the_message_queued(states: list[str], extra: str) -> None:
    assert lc.rollup([*states, lc.SEG_QUEUED, extra]) == lc.MSG_QUEUED


@pytest.mark.parametrize(
    ("states", "message"),
    [
        ([], "queued"),
        (["queued"], "queued"),
        (["sent", "queued"], "queued"),  # released after part 1: part 2 still to go
        (["queued", "expired_unsent"], "queued"),  # expiry recorded for one part only so far
        (["sent"], "sent"),
        (["delivered", "sent", "delivered"], "sent"),
        (["delivered", "undeliverable", "sent"], "sent"),  # negative, but not all final
        (["delivered"] * 3, "delivered"),
        (["delivered", "rejected", "delivered"], "failed"),
        (["failed", "failed"], "failed"),
        (["delivered", "unknown"], "failed"),  # an 'unknown' receipt is a negative outcome
        (["delivered", "timeout"], "unknown"),
        (["timeout", "timeout"], "unknown"),
        (["expired_unsent"], "expired"),
        (["delivered", "expired_unsent"], "expired"),
        (["timeout", "expired_unsent"], "expired"),
        (["failed", "expired_unsent"], "failed"),
        (["expired", "expired_unsent"], "failed"),  # expired *receipt* is a delivery failure
    ],
)
def test_rollup_examples(states: list[str], message: str) -> None:
    assert lc.rollup(states) == message


@pytest.mark.parametrize(
    ("state", "stat", "err", "code"),
    [
        ("undeliverable", None, None, "UNDELIV"),
        ("undeliverable", "UNDELIV", "001", "UNDELIV:001"),
        ("undeliverable", "deleted", "000", "DELETED"),  # stat word kept, upper-cased
        ("rejected", "REJECTD", "0B", "REJECTD:0B"),
        ("expired", None, "", "EXPIRED"),
        ("unknown", None, "0", "UNKNOWN"),
        ("unknown", "UNKNOWN", "100", "UNKNOWN:100"),
        ("delivered", "DELIVRD", "000", None),
        ("delivered", None, "005", None),
        ("enroute", "ACCEPTD", None, None),
        ("failed", "X", "1", None),  # not a receipt state
    ],
)
def test_receipt_error_code(
    state: str, stat: str | None, err: str | None, code: str | None
) -> None:
    assert lc.receipt_error_code(state, stat, err) == code


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(NEGATIVE_RECEIPTS),
    st.one_of(st.none(), st.sampled_from(["UNDELIV", "rejectd", "EXPIRED"])),
    st.one_of(st.none(), st.text("0123456789ABCDEF", max_size=3)),
)
def test_negative_receipts_always_leave_a_code(
    state: str, stat: str | None, err: str | None
) -> None:
    code = lc.receipt_error_code(state, stat, err)
    assert code is not None
    word, colon, detail = code.partition(":")
    assert word == (stat or word).upper() and word.isupper()
    assert (colon, detail) == ((":", err) if err and err.strip("0") else ("", ""))


def summarize_by_the_rules(parts: list[tuple[str, str | None]], segments: int) -> lc.Summary:
    """What a message row shows of its parts, written as the rules read (one pass per rule):
    the oracle for lifecycle.summarize, which does it with set operations."""
    states = [s for s, _e in parts]
    scale = segments if len(parts) == 1 and segments > 1 else 1
    state = expected(states)
    error = next((e for s, e in parts if s in NEGATIVE or s == lc.SEG_EXPIRED_UNSENT), None)
    if error is None and state == lc.MSG_UNKNOWN:
        error = next((e for s, e in parts if s == lc.SEG_TIMEOUT), None)
    return lc.Summary(
        state=state,
        delivered=scale * sum(1 for s in states if s == lc.SEG_DELIVERED),
        failed=scale * sum(1 for s in states if s in NEGATIVE),
        error=error,
        all_dispatched=all(s != lc.SEG_QUEUED for s in states),
    )


@pytest.mark.parametrize("length", [0, 1, 2, 3])
def test_summarize_exhaustive_up_to_three_parts(length: int) -> None:
    # Each part with and without an error code, and a code on some parts only: the error shown
    # is the first negative or unsent part's (even when that one has none), else a timeout's.
    part = [(s, e) for s in (*SEGMENT_STATES, "enroute") for e in (None, f"E_{s}")]
    for combo in itertools.product(part, repeat=length):
        parts = list(combo)
        for segments in (0, 1, 3):
            want = summarize_by_the_rules(parts, segments)
            assert lc.summarize(parts, segments) == want, (parts, segments)


def test_row_update_none_when_nothing_changes():
    from bridge.domain.lifecycle import row_update

    assert (
        row_update(
            [("sent", None)],
            old_state="sent",
            q_state="done",
            old_delivered=0,
            old_failed=0,
            old_error=None,
            release_when_dispatched=True,
            now=5,
        )
        is None
    )


def test_row_update_sent_then_delivered():
    from bridge.domain.lifecycle import row_update

    u = row_update(
        [("sent", None), ("sent", None)],
        old_state="queued",
        q_state="claimed",
        old_delivered=0,
        old_failed=0,
        old_error=None,
        release_when_dispatched=True,
        now=7,
    )
    assert u is not None and u.state == "sent" and u.became_sent and u.sent_at == 7
    assert u.release and not u.became_final and u.done_at is None
    v = row_update(
        [("delivered", None), ("undeliverable", "UNDELIV")],
        old_state="sent",
        q_state="done",
        old_delivered=0,
        old_failed=0,
        old_error=None,
        release_when_dispatched=False,
        now=9,
    )
    assert v is not None and v.state == "failed" and v.became_final and v.done_at == 9
    assert (v.delivered, v.failed, v.error, v.release) == (1, 1, "UNDELIV", False)


def test_row_update_receipt_does_not_release_a_message_with_parts_left():
    from bridge.domain.lifecycle import row_update

    u = row_update(
        [("delivered", None), ("queued", None)],
        old_state="queued",
        q_state="queued",
        old_delivered=0,
        old_failed=0,
        old_error=None,
        release_when_dispatched=False,
        now=1,
    )
    assert u is not None and not u.release and u.delivered == 1 and u.state == "queued"


# -- on_air: segments on the air after a submit result ---------------------------------------------


@pytest.mark.parametrize(
    ("sent", "segments", "pdus", "one_pdu", "expected"),
    [
        (0, 1, 1, True, 1),  # a one-part message
        (0, 3, 1, False, 1),  # the first of three PDUs
        (2, 3, 1, False, 3),  # the last of three
        (0, 4, 1, True, 4),  # one message_payload PDU the SMSC splits into four
        (4, 4, 1, True, 4),  # that result repeated: capped
        (3, 3, 2, False, 3),  # more PDUs than parts left: capped
        (0, 3, 0, False, 0),  # nothing accepted now
    ],
)
def test_on_air_counts_segments_not_pdus(
    sent: int, segments: int, pdus: int, one_pdu: bool, expected: int
) -> None:
    assert lc.on_air(sent, segments, pdus, one_pdu) == expected


@given(
    sent=st.integers(0, 10),
    segments=st.integers(1, 10),
    pdus=st.integers(0, 10),
    one_pdu=st.booleans(),
)
def test_on_air_never_passes_the_message_nor_goes_back(
    sent: int, segments: int, pdus: int, one_pdu: bool
) -> None:
    sent = min(sent, segments)
    after = lc.on_air(sent, segments, pdus, one_pdu)
    assert sent <= after <= segments
    if segments > 1 and one_pdu:
        assert after == segments
    else:
        assert after == min(segments, sent + pdus)


# ---------------------------------------------------------------- receipt deadline (session 48)

H = 3_600_000
MARGIN = lc.VALIDITY_RECEIPT_MARGIN_MS


def test_the_receipt_deadline_is_the_later_of_the_timeout_and_the_validity() -> None:
    assert lc.receipt_deadline(0, 72 * H, None) == 72 * H
    assert lc.receipt_deadline(0, 72 * H, 5 * 24 * H) == 5 * 24 * H + MARGIN
    assert lc.receipt_deadline(0, 72 * H, 10 * 60_000) == 72 * H  # an OTP's 10 minutes
    # The SMSC's relative validity counts from the send, and only without the message's own.
    assert lc.receipt_deadline(H, 72 * H, None, 96 * H) == 97 * H + MARGIN
    assert lc.receipt_deadline(H, 72 * H, 2 * H, 96 * H) == 73 * H


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, 400) | st.none(),  # sent_at (h); None: never sent
            st.integers(0, 400) | st.none(),  # expires_at (h)
            st.sampled_from(["a", "b", "c", None]),  # the SMSC that took the last part
            st.sampled_from(["sent", "delivered", "unknown"]),
        ),
        max_size=12,
    ),
    now=st.integers(0, 500),
    timeout=st.integers(1, 200),
    validity=st.dictionaries(st.sampled_from(["a", "b"]), st.integers(1, 300), max_size=2),
    silent=st.sets(st.sampled_from(["a", "c"])),
)
def test_the_sweeps_sql_is_the_deadline_rule(
    rows: list[tuple[int | None, int | None, str | None, str]],
    now: int,
    timeout: int,
    validity: dict[str, int],
    silent: set[str],
) -> None:
    """Both engines find timed-out messages by timed_out_where: it selects exactly the open
    messages whose receipt_deadline has passed (run here on SQLite; PostgreSQL runs it in
    tests/integration/test_store.py)."""
    import sqlite3

    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE messages (id INTEGER, state TEXT, sent_at INT, expires_at INT, smsc)")
    db.executemany(
        "INSERT INTO messages VALUES (?, ?, ?, ?, ?)",
        [
            (i, state, at and at * H, ex and ex * H, smsc)
            for i, (at, ex, smsc, state) in enumerate(rows)
        ],
    )
    ms = {k: v * H for k, v in validity.items()}
    where, params = lc.timed_out_where(now * H, timeout * H, ms, lambda _i: "?", silent)
    got = {i for (i,) in db.execute(f"SELECT id FROM messages WHERE {where}", params)}
    want = {
        i
        for i, (at, ex, smsc, state) in enumerate(rows)
        if state == "sent"
        and at is not None
        and lc.receipt_deadline(
            at * H, timeout * H, ex and ex * H, ms.get(smsc or ""), smsc not in silent
        )
        <= now * H
    }
    assert got == want


def test_a_message_whose_smsc_was_asked_for_no_final_receipt_ends_at_the_timeout() -> None:
    """registered_delivery 0 (or intermediate only): no expiry receipt comes at the validity's
    end, so waiting for it only held the month's bill."""
    assert lc.receipt_deadline(0, 72 * H, 5 * 24 * H, None, final_receipts=False) == 72 * H
    assert lc.receipt_deadline(H, 72 * H, None, 96 * H, final_receipts=False) == 73 * H


def test_the_receipt_deadline_is_at_most_the_longest_receipt_timeout_after_sending() -> None:
    """A month's bill waits for its messages (billing.auto_settle's look-back counts on this):
    an SMSC's validity_minutes may be a year, a message's own validity past the bound too."""
    bound = 720 * H  # pipeline.receipt_timeout_hours' largest (lc.MAX_RECEIPT_WAIT_MS)
    assert lc.receipt_deadline(H, 72 * H, None, 365 * 24 * H) == H + bound
    assert lc.receipt_deadline(H, 72 * H, 60 * 24 * H) == H + bound
    assert lc.receipt_deadline(0, 72 * H, None, bound - MARGIN) == bound
    import sqlite3

    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE messages (id INTEGER, state TEXT, sent_at INT, expires_at INT, smsc)")
    db.executemany(
        "INSERT INTO messages VALUES (?, 'sent', ?, ?, ?)",
        [(1, H, None, "a"), (2, H, 60 * 24 * H, "b")],
    )
    for now, want in ((H + bound - 1, set()), (H + bound, {1, 2})):
        where, params = lc.timed_out_where(now, 72 * H, {"a": 365 * 24 * H}, lambda _i: "?")
        assert {i for (i,) in db.execute(f"SELECT id FROM messages WHERE {where}", params)} == want


_T0 = 1_700_000_000_000
_DAY = 86_400_000
_TIMEOUT = 72 * 3_600_000


def test_split_deadline_is_the_latest_of_the_awaiting_parts_smscs() -> None:
    """A message whose parts went out on several SMSCs (test_split_receipt_wait.py)."""
    validity = {"long": 5 * _DAY, "quiet": 9 * _DAY}
    silent = {"quiet"}

    def deadline(smscs: list[str], expires_at: int | None = None) -> int:
        return lc.split_deadline(_T0, _TIMEOUT, expires_at, smscs, validity, silent)

    assert deadline([]) == _T0 + _TIMEOUT
    assert deadline(["short"]) == _T0 + _TIMEOUT
    assert deadline(["quiet"]) == _T0 + _TIMEOUT  # asked for no final receipt: its validity aside
    assert deadline(["short", "long"]) == _T0 + 5 * _DAY + lc.VALIDITY_RECEIPT_MARGIN_MS
    assert deadline(["quiet", "long"]) == _T0 + 5 * _DAY + lc.VALIDITY_RECEIPT_MARGIN_MS
    assert (
        deadline(["quiet", "short"], _T0 + 7 * _DAY)
        == _T0 + 7 * _DAY + lc.VALIDITY_RECEIPT_MARGIN_MS
    )
    assert deadline(["quiet"], _T0 + 7 * _DAY) == _T0 + _TIMEOUT
    for smscs in (["short"], ["long"], ["quiet"]):  # one SMSC: receipt_deadline itself
        s = smscs[0]
        assert deadline(smscs) == lc.receipt_deadline(
            _T0, _TIMEOUT, None, validity.get(s), s not in silent
        )


def test_not_yet_timed_out_looks_only_at_split_messages() -> None:
    validity = {"long": 5 * _DAY}
    rows = [
        ("one", _T0, None, "long"),  # its own SMSC alone: the SQL was exact
        ("split", _T0, None, "short"),  # part 1 on "long" still waits: not yet
        ("over", _T0, None, "short"),  # part 1 on "long" already settled: due
    ]
    awaiting = {"one": ["long"], "split": ["long", "short"], "over": ["short"]}
    now = _T0 + _TIMEOUT + 1
    assert lc.not_yet_timed_out(rows, awaiting, now, _TIMEOUT, validity) == {"split"}
    end = _T0 + 5 * _DAY + lc.VALIDITY_RECEIPT_MARGIN_MS
    assert lc.not_yet_timed_out(rows, awaiting, end, _TIMEOUT, validity) == set()
    assert lc.waits_differ(_TIMEOUT, validity, ())
    assert lc.waits_differ(_TIMEOUT, {}, ("quiet",))
    assert not lc.waits_differ(_TIMEOUT, {"short": 3_600_000}, ())
