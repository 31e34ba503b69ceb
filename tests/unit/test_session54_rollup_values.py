"""The roll-up's and the receipts' pure steps without values built to be taken apart (session 54).

`lifecycle.row_update` (each roll-up, twice a message in the owner's write lock) built a frozen
`Summary` to read its five fields once, and worked it out afresh each time (~8.7 k
instructions a one-part message's); it now takes the fields as a tuple, kept by the parts'
states and error codes (`_summary`). `settle_receipts` took a one-part id's receipt through
the general case's set, sort and list comprehension (~10 k instructions a receipt); the usual
case now has its own path. These tests hold the values to the rules (every combination up to
three parts, through the kept answers and after they are emptied) and the receipts' updates
to the general case's, over random batches.
"""

from __future__ import annotations

import itertools
import random
import tracemalloc
from dataclasses import dataclass
from typing import Any

import pytest

from bridge.domain import lifecycle as lc
from tests.unit.test_lifecycle import SEGMENT_STATES, summarize_by_the_rules

_PART = [(s, e) for s in (*SEGMENT_STATES, "enroute") for e in (None, f"E_{s}")]


def _update(parts: list[tuple[str, str | None]], segments: int, old: str = lc.MSG_QUEUED) -> Any:
    return lc.row_update(
        parts,
        old_state=old,
        q_state="claimed",
        old_delivered=-1,  # never equal: row_update answers every time
        old_failed=0,
        old_error=None,
        release_when_dispatched=True,
        now=5,
        segments=segments,
    )


def test_row_update_builds_no_summary(monkeypatch: pytest.MonkeyPatch) -> None:
    class Unusable:
        def __init__(self, *args: Any, **kw: Any) -> None:
            raise AssertionError("a Summary built for row_update")

    monkeypatch.setattr(lc, "Summary", Unusable)
    u = _update([(lc.SEG_DELIVERED, None)], 1, old=lc.MSG_SENT)
    assert u is not None
    assert (u.state, u.delivered, u.failed, u.error, u.became_final, u.done_at) == (
        lc.MSG_DELIVERED,
        1,
        0,
        None,
        True,
        5,
    )


@pytest.mark.parametrize("kept", [4096, 3])  # 3: emptied again and again on the way
def test_row_update_takes_the_rules_values_kept_or_not(
    monkeypatch: pytest.MonkeyPatch, kept: int
) -> None:
    monkeypatch.setattr(lc, "_SUMMARIES", {})
    monkeypatch.setattr(lc, "_SUMMARIES_MAX", kept)
    for length in (1, 2, 3):
        for combo in itertools.product(_PART, repeat=length):
            parts = list(combo)
            for segments in (1, 3):
                want = summarize_by_the_rules(parts, segments)
                for _ in range(2):  # the second from what the first kept
                    u = _update(parts, segments)
                    assert u is not None
                    got = (u.state, u.delivered, u.failed, u.error)
                    assert got == (want.state, want.delivered, want.failed, want.error), parts
                    assert u.release == want.all_dispatched, parts
                    assert lc.summarize(parts, segments) == want, parts
    assert len(lc._SUMMARIES) <= kept


def test_long_messages_roll_ups_are_not_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kept answer holds its key, every part's (state, error code) tuple and strings as the
    store read them: 4,096 roll-ups of distinct 255-part messages (max_parts' default) held
    ~150 MB for good, for answers a message that long seldom asks twice. Only short messages'
    are kept (`_SUMMARY_PARTS_MAX`); a long one's values are the rules' all the same."""
    monkeypatch.setattr(lc, "_SUMMARIES", {})
    rnd = random.Random(5)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        messages = [
            [
                # a new string each, as the sqlite3 module and asyncpg hand a column's text back
                (s[:1] + s[1:], None if s == lc.SEG_DELIVERED else f"E_{rnd.randrange(99)}")
                for s in rnd.choices([lc.SEG_SENT, lc.SEG_DELIVERED, "undeliverable"], k=255)
            ]
            for _ in range(50)
        ]
        for parts in messages:
            want = summarize_by_the_rules(parts, 255)
            u = _update(parts, 255)
            assert u is not None
            assert (u.state, u.delivered, u.failed, u.error) == (
                want.state,
                want.delivered,
                want.failed,
                want.error,
            )
        messages.clear()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # Kept, ~36 KB a message (1.8 MB here); not kept, nothing.
    assert held < 200_000, held
    assert lc._SUMMARIES == {}
    short = [(lc.SEG_SENT, None)] * lc._SUMMARY_PARTS_MAX
    _update(short, 1)
    assert len(lc._SUMMARIES) == 1  # the usual lengths still kept


def test_parts_given_as_lists_are_summarized_too() -> None:
    parts: Any = [[lc.SEG_DELIVERED, None], ["undeliverable", "X"]]
    assert lc.summarize(parts) == summarize_by_the_rules(parts, 0)


@dataclass(frozen=True)
class _R:
    smsc: str
    smsc_msg_id: str
    state: str
    stat: str | None
    err: str | None
    received_at: int


def _general(
    receipts: list[_R],
    parts: dict[tuple[str, str], list[tuple[str, int, str]]],
    one_per_message: frozenset[str],
    siblings: dict[str, list[tuple[int, str, str | None, int | None]]] | None,
) -> tuple[list[Any], list[Any]]:
    """settle_receipts before session 54: every receipt through the general case."""
    updates: list[Any] = []
    unmatched: list[Any] = []
    now_final: dict[tuple[str, int], str] = {}
    for r in receipts:
        key = (r.smsc, r.smsc_msg_id)
        found = parts.get(key)
        if found is None:
            unmatched.append(r)
            continue
        if r.state == "enroute":
            continue
        if now_final:
            found = parts[key] = [(m, q, now_final.get((m, q), st)) for m, q, st in found]
        new_state = lc.SEG_DELIVERED if r.state == "delivered" else r.state
        error = lc.receipt_error_code(r.state, r.stat, r.err)
        if len(found) == 1:
            mid, seq, state = found[0]
            settled = {(mid, seq)} if state not in lc.SEG_FINAL else set()
        else:
            settled = set(lc.receipt_targets(found))
        for mid, seq in sorted(settled):
            updates.append((mid, seq, new_state, r.received_at, error, None))
        if settled:
            parts[key] = [(m, q, new_state if (m, q) in settled else st) for m, q, st in found]
        if settled and siblings is not None and r.smsc in one_per_message:
            for mid, seq, at, source in lc.infer_siblings(
                settled, siblings, r.smsc, new_state, r.received_at, now_final
            ):
                updates.append((mid, seq, new_state, at, error, source))
    return updates, unmatched


@pytest.mark.parametrize("seed", range(40))
def test_settle_receipts_as_the_general_case(seed: int) -> None:
    """Batches of receipts for one-part ids (most), ids two parts share, ids nobody has,
    repeats, finals, enroute and negative receipts, from a one-per-message SMSC or not: the
    same updates, in the same order, the same unmatched and the same parts left behind."""
    rng = random.Random(seed)
    smscs = ("a", "b")
    parts: dict[tuple[str, str], list[tuple[str, int, str]]] = {}
    siblings: dict[str, list[tuple[int, str, str | None, int | None]]] = {}
    for k in range(30):
        smsc = rng.choice(smscs)
        total = rng.choice((1, 1, 1, 2, 3))
        mid = f"m{k:03d}"
        rows = []
        for seq in range(1, total + 1):
            state = rng.choice((lc.SEG_SENT, lc.SEG_SENT, lc.SEG_SENT, lc.SEG_DELIVERED, "queued"))
            rows.append((seq, state, smsc, 100 + seq))
            key = (smsc, f"x{k}" if rng.random() < 0.8 else f"x{k}-{seq}")
            parts.setdefault(key, []).append((mid, seq, state))
        siblings[mid] = rows
    states = ("delivered", "delivered", "undeliverable", "expired", "rejected", "enroute")
    receipts = [
        _R(
            rng.choice(smscs),
            rng.choice([k[1] for k in parts] + ["nobody"]),
            rng.choice(states),
            rng.choice((None, "UNDELIV")),
            rng.choice((None, "000", "017")),
            1_000 + n,
        )
        for n in range(rng.randint(1, 40))
    ]
    one = frozenset(rng.sample(smscs, rng.randint(0, 2)))
    sib = siblings if one else None
    want_parts = {k: list(v) for k, v in parts.items()}
    want = _general(receipts, want_parts, one, sib)
    got = lc.settle_receipts(receipts, parts, one_per_message=one, siblings=sib)
    assert got == want
    assert parts == want_parts


def _after_timeout_by_the_rule(receipts: list[_R], parts: Any) -> dict[str, int]:
    """count_after_timeout before session 54: every id through all() and any()."""
    into: dict[str, int] = {}
    for r in receipts:
        found = parts.get((r.smsc, r.smsc_msg_id))
        if r.state == "enroute" or not found:
            continue
        if all(st in lc.SEG_FINAL for _m, _q, st in found) and any(
            st == lc.SEG_TIMEOUT for _m, _q, st in found
        ):
            into[r.smsc] = into.get(r.smsc, 0) + 1
    return into


@pytest.mark.parametrize("seed", range(20))
def test_count_after_timeout_and_whole_messages_as_before(seed: int) -> None:
    """The one-part case of count_after_timeout (its own path) and whole_messages with no
    one-per-message SMSC (no pass) against the rule as written before."""
    rng = random.Random(seed)
    states = (lc.SEG_SENT, lc.SEG_TIMEOUT, lc.SEG_DELIVERED, "undeliverable", "queued")
    parts: dict[tuple[str, str], list[tuple[str, int, str]]] = {}
    for k in range(30):
        total = rng.choice((1, 1, 2, 3))
        parts[("a", f"x{k}")] = [(f"m{k}", q, rng.choice(states)) for q in range(1, total + 1)]
    receipts = [
        _R("a", f"x{rng.randrange(35)}", rng.choice(("delivered", "enroute")), None, None, 1)
        for _ in range(40)
    ]
    into: dict[str, int] = {}
    lc.count_after_timeout(receipts, parts, into)
    assert into == _after_timeout_by_the_rule(receipts, parts)
    assert lc.whole_messages(parts, frozenset()) == []
    assert lc.whole_messages(parts, frozenset({"a"})) == sorted({f"m{k}" for k in range(30)})
